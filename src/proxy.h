/*
 * proxy: the process around the connections.
 *
 * Owns the event loop, the listener, the current rules (which own the
 * configuration snapshot they were built from), the list of connection
 * pairs, the counters and the signals. Connections ask it for the
 * configuration, the rules and a socket to the server; they never see each
 * other.
 */
#ifndef IDEM_PROXY_H
#define IDEM_PROXY_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "authfile.h"
#include "config.h"
#include "rules.h"
#include "scram.h"

struct conn;

struct proxy_stats {
    uint64_t clients_total;
    uint64_t oversized_inspected; /* inspected messages over max_held_message, streamed */
    uint64_t protocol_violations;
    uint64_t track_desyncs;
};

struct proxy {
    struct event_base *base;
    struct evdns_base *dns;
    struct ruleset *rules;    /* the current rules; replaced whole on reload */
    const struct config *cfg; /* the snapshot they were built from */

    /* Credentials, rebuilt on reload; a broken new one leaves the old. */
    SSL_CTX *client_ssl_ctx;  /* NULL: clients are refused TLS */
    SSL_CTX *server_ssl_ctx;  /* NULL: plaintext to the server */
    uint8_t client_cb[EVP_MAX_MD_SIZE]; /* the proxy certificate's channel binding data */
    size_t client_cb_len;
    struct auth_file *auth_file;
    uint8_t mock_key[SCRAM_KEY_LEN]; /* for the mock secrets of unknown users */
    struct evconnlistener *listener;
    struct event *sig_term, *sig_int, *sig_hup;
    struct event *shutdown_timer;

    struct conn *conns;   /* every open connection pair */
    int conn_count;
    int client_count;     /* pairs past their StartupMessage: max_client_conn counts these */
    uint64_t next_conn_id;
    bool shutting_down;

    struct proxy_stats stats;
};

/* Takes ownership of cfg. Binds the listener; false (logged) on failure
 * (cfg is freed by proxy_free then). */
bool proxy_init(struct proxy *p, struct config *cfg);

/* Runs until shutdown; returns the process exit code. */
int proxy_run(struct proxy *p);

void proxy_free(struct proxy *p);

/* Starts connecting bev (created without a socket) to the configured server.
 * Completion or failure arrives through bev's event callback. False when
 * the attempt could not even start; *why then says why. */
bool proxy_connect_server(struct proxy *p, struct bufferevent *bev, const char **why);

/* "host:port" or the socket path, for messages. */
const char *proxy_server_name(const struct proxy *p, char *buf, size_t len);

/* A connection pair has been freed. */
void proxy_conn_gone(struct proxy *p);

#endif
