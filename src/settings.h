/*
 * settings: what a reload replaces, as one immutable snapshot that every
 * worker thread shares: the configuration and the credentials built from it
 * (the TLS contexts of both legs and the auth_file).
 *
 * The main thread builds a snapshot at start and on each reload; workers
 * take a reference to it and drop the one they had. Nothing in a snapshot
 * changes after settings_build() returns, so readers need no lock; the last
 * reference frees it, on whichever thread drops it.
 */
#ifndef IDEM_SETTINGS_H
#define IDEM_SETTINGS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "authfile.h"
#include "config.h"

struct settings {
    atomic_uint refs;
    struct config *cfg;
    SSL_CTX *client_ssl_ctx;  /* NULL: clients are refused TLS */
    SSL_CTX *server_ssl_ctx;  /* NULL: plaintext to the server */
    uint8_t client_cb[EVP_MAX_MD_SIZE]; /* the proxy certificate's channel binding data */
    size_t client_cb_len;
    struct auth_file *auth_file; /* NULL when auth_file is unset */
};

/* Takes ownership of cfg and builds its credentials. With no previous
 * snapshot (the start) a credential that fails to load fails the whole
 * build: NULL. With one (a reload) a failing credential keeps previous's,
 * so that open and new connections go on. Each failure is logged once with
 * its reason. NULL also when memory runs out (cfg is then freed). */
struct settings *settings_build(struct config *cfg, const struct settings *previous);

struct settings *settings_ref(struct settings *s);
void settings_unref(struct settings *s);

#endif
