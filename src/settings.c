#include "settings.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "tls.h"

/* One leg's context: the new one, or on reload when it cannot be built,
 * the previous one (another reference to it). */
static SSL_CTX *pick_context(SSL_CTX *built, const struct config *cfg,
                             const struct tls_config *tls, const char *leg, const char *why,
                             SSL_CTX *previous, bool *ok)
{
    if (built || tls->mode == TLS_DISABLE)
        return built;
    *ok = false;
    log_error("%s: %s TLS: %s%s", cfg->path, leg, why,
              previous ? "; keeping the current context" : "");
    if (previous && SSL_CTX_up_ref(previous) == 1)
        return previous;
    return NULL;
}

struct settings *settings_build(struct config *cfg, const struct settings *previous)
{
    struct settings *s = calloc(1, sizeof(*s));
    char why[512], err[CONFIG_ERR_LEN];
    bool ok = true;

    if (!s) {
        log_error("out of memory");
        config_unref(cfg);
        return NULL;
    }
    atomic_init(&s->refs, 1);
    s->cfg = cfg;

    SSL_CTX *client = tls_client_context(cfg, why, sizeof(why));
    s->client_ssl_ctx = pick_context(client, cfg, &cfg->client_tls, "client", why,
                                     previous ? previous->client_ssl_ctx : NULL, &ok);
    SSL_CTX *server = tls_server_context(cfg, why, sizeof(why));
    s->server_ssl_ctx = pick_context(server, cfg, &cfg->server_tls, "server", why,
                                     previous ? previous->server_ssl_ctx : NULL, &ok);
    if (cfg->auth_file) {
        s->auth_file = authfile_load(cfg->auth_file, err);
        if (!s->auth_file) {
            ok = false;
            log_error("%s%s", err, previous ? "; keeping the current auth_file" : "");
            if (previous && previous->auth_file)
                s->auth_file = authfile_ref(previous->auth_file);
        }
    }
    if (!ok && !previous) {
        settings_unref(s);
        return NULL;
    }
    if (s->client_ssl_ctx) {
        X509 *cert = SSL_CTX_get0_certificate(s->client_ssl_ctx);
        s->client_cb_len = cert ? tls_server_end_point(cert, s->client_cb) : 0;
    }
    return s;
}

struct settings *settings_ref(struct settings *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void settings_unref(struct settings *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    SSL_CTX_free(s->client_ssl_ctx);
    SSL_CTX_free(s->server_ssl_ctx);
    authfile_unref(s->auth_file);
    config_unref(s->cfg);
    free(s);
}
