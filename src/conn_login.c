/* conn_login: from the startup packet to an active session (see conn_int.h). */
#include "conn_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <openssl/ssl.h>

#include "admin.h"
#include "authfile.h"
#include "authquery.h"
#include "cancel.h"
#include "login.h"
#include "pool.h"
#include "proxy.h"
#include "rules.h"
#include "scram.h"
#include "tls.h"

/* SSLRequest and GSSENCRequest may each come once before the startup. */
#define MAX_NEGOTIATIONS 2

/* ---- connecting to the server ------------------------------------------ */

void send_startup(struct conn *c)
{
    c->state = CONN_LOGIN;
    sock_set_timeout(c->server, 0);
    evbuffer_add(sock_output(c->server), c->startup, c->startup_len);
    sock_flush(c->server);
    relay(c, FLOW_TO_SERVER);
}

void cannot_connect(struct conn *c, const char *why)
{
    char name[256], msg[512];

    snprintf(msg, sizeof(msg), "idemproxy: could not connect to server at %s: %s",
             server_name(c->worker->cfg, name, sizeof(name)), why);
    fail_client(c, "08001", msg, "server unreachable");
}

static void connect_to(struct conn *c, const struct sockaddr *addr, int len)
{
    if (!sock_connect(c->server, addr, len))
        cannot_connect(c, strerror(errno));
}

/* The lookup of server_host ended (result, ai); ai is freed here. */
static void resolve_done(struct conn *c, int result, struct evutil_addrinfo *ai)
{
    if (result)
        cannot_connect(c, evutil_gai_strerror(result));
    else
        connect_to(c, ai->ai_addr, (int)ai->ai_addrlen);
    if (ai)
        evutil_freeaddrinfo(ai);
}

static void resolved(int result, struct evutil_addrinfo *ai, void *arg)
{
    struct conn *c = arg;

    if (result == EVUTIL_EAI_CANCEL)
        return;
    if (!c->resolving) {
        /* Still inside evdns_getaddrinfo: connect_server takes it from
         * here, once the call has returned. */
        c->resolve_result = result;
        c->resolve_ai = ai;
        c->resolved_early = true;
        return;
    }
    c->resolving = NULL;
    resolve_done(c, result, ai);
}

static void connect_server(struct conn *c)
{
    struct worker *w = c->worker;
    const struct config *cfg = w->cfg;

    c->server = sock_new(w->base, -1, server_sock_cb, c);
    if (!c->server) {
        fail_client(c, "53200", "out of memory", "out of memory");
        return;
    }
    c->server_born = time(NULL);
    counter_add(&w->counters.server_connections, 1);
    c->generation = w->generation;
    sock_set_write_marks(c->server, OUT_LOW, OUT_HIGH);
    sock_set_timeout(c->server, cfg->server_connect_timeout);
    c->state = CONN_CONNECTING;
    if (cfg->server_host[0] == '/') {
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        int n = snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/.s.PGSQL.%d", cfg->server_host,
                         cfg->server_port);
        if (n < 0 || (size_t)n >= sizeof(sun.sun_path))
            cannot_connect(c, "socket path too long");
        else
            connect_to(c, (struct sockaddr *)&sun, sizeof(sun));
        return;
    }
    struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                     .ai_protocol = IPPROTO_TCP };
    char port[16];
    snprintf(port, sizeof(port), "%d", cfg->server_port);
    c->resolved_early = false;
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(w->dns, cfg->server_host, port, &hints, resolved, c);
    if (c->resolved_early)
        resolve_done(c, c->resolve_result, c->resolve_ai);
    else
        c->resolving = req;
}

/* The server's answer to the proxy's SSLRequest. */
void read_tls_answer(struct conn *c)
{
    struct evbuffer *in = sock_input(c->server);
    enum tls_mode mode = c->worker->cfg->server_tls.mode;
    char name[256], msg[512];
    uint8_t answer;

    if (evbuffer_remove(in, &answer, 1) != 1)
        return;
    if (answer == 'N' && mode == TLS_PREFER) {
        send_startup(c);
        return;
    }
    server_name(c->worker->cfg, name, sizeof(name));
    if (answer == 'N') {
        snprintf(msg, sizeof(msg), "idemproxy: the server at %s does not accept TLS, and "
                 "server_tls_sslmode = %s", name, tls_mode_name(mode));
        fail_client(c, "08001", msg, "server refused TLS");
        return;
    }
    /* Bytes after 'S' would have come in plaintext: not from a server. */
    if (answer != 'S' || evbuffer_get_length(in) > 0) {
        snprintf(msg, sizeof(msg), "idemproxy: the server at %s gave an invalid answer to "
                 "SSLRequest", name);
        fail_client(c, "08P01", msg, "protocol violation by server");
        return;
    }
    SSL *ssl = SSL_new(c->worker->settings->server_ssl_ctx);
    if (!ssl || !tls_server_ssl_setup(ssl, mode, c->worker->cfg->server_host)) {
        SSL_free(ssl);
        fail_client(c, "53200", "out of memory", "out of memory");
        return;
    }
    if (!sock_start_tls(c->server, ssl, false)) {
        fail_client(c, "53200", "cannot start TLS with the server", "server TLS failed");
        return;
    }
    c->server_tls = true;
}

/* The handshake with the server is done (and its certificate checked as
 * server_tls_sslmode asks, by OpenSSL during it). */
void server_tls_ready(struct conn *c)
{
    SSL *ssl = sock_ssl(c->server);
    X509 *cert = SSL_get1_peer_certificate(ssl);

    c->server_cb_len = cert ? tls_server_end_point(cert, c->server_cb) : 0;
    X509_free(cert);
    conn_log(LOG_DEBUG, c, "TLS to the server: %s %s", SSL_get_version(ssl),
             SSL_get_cipher_name(ssl));
    send_startup(c);
}

/* Why the TLS handshake with the server failed, for the client. */
void server_tls_failed(struct conn *c)
{
    SSL *ssl = sock_ssl(c->server);
    const char *refused = ssl ? tls_verify_error(ssl) : NULL;
    char name[256], msg[512], err[256];

    if (refused)
        snprintf(err, sizeof(err), "certificate verify failed: %s", refused);
    else
        snprintf(err, sizeof(err), "%s", sock_error(c->server));
    snprintf(msg, sizeof(msg), "idemproxy: TLS with the server at %s failed (server_tls_sslmode "
             "= %s): %s", server_name(c->worker->cfg, name, sizeof(name)),
             tls_mode_name(c->worker->cfg->server_tls.mode), err);
    conn_log(LOG_WARNING, c, "%s", msg + strlen("idemproxy: "));
    fail_client(c, "08001", msg, "server TLS failed");
}

/* ---- the proxy authenticating the client ------------------------------- */

static void auth_failed(struct conn *c, const char *why)
{
    char msg[256];

    conn_log(LOG_INFO, c, "authentication failed: %s", why);
    snprintf(msg, sizeof(msg), "password authentication failed for user \"%s\"",
             c->user ? c->user : "");
    fail_client(c, "28P01", msg, "authentication failed");
}

/* Starts SCRAM with the client against secret_text (NULL: no such user). */
static void start_sasl(struct conn *c, const char *secret_text)
{
    struct worker *w = c->worker;
    struct scram_secret secret;
    bool known = secret_text && scram_secret_parse(secret_text, &secret);
    uint8_t out[LOGIN_MSG_MAX];
    size_t len;

    if (secret_text && !known)
        conn_log(LOG_WARNING, c, "the stored secret of this user is not a SCRAM-SHA-256 "
                 "secret, so SCRAM cannot check it");
    c->login = malloc(sizeof(*c->login));
    if (!c->login) {
        fail_client(c, "53200", "out of memory", "out of memory");
        return;
    }
    login_start(c->login, known ? &secret : NULL, c->user ? c->user : "", w->proxy->mock_key,
                c->client_tls, w->settings->client_cb, w->settings->client_cb_len, out, &len);
    OPENSSL_cleanse(&secret, sizeof(secret));
    send_to(c->client, out, len);
}

static void lookup_done(void *arg, const char *secret, const char *error)
{
    struct conn *c = arg;

    c->lookup = NULL;
    if (error) {
        conn_log(LOG_WARNING, c, "%s", error);
        fail_client(c, "28000", "idemproxy: cannot look the user up (auth_query failed; "
                    "see idemproxy's log)", "auth_query failed");
        return;
    }
    start_sasl(c, secret);
    client_read(c);
}

/* auth_type = scram-sha-256: the secret comes from auth_file, else from
 * auth_query; a user found nowhere goes through a mock exchange. */
static void begin_auth(struct conn *c)
{
    struct worker *w = c->worker;
    const struct config *cfg = w->cfg;
    const char *user = c->user ? c->user : "";
    const struct auth_file *file = w->settings->auth_file;
    enum auth_secret_kind kind;
    const char *secret = file ? authfile_secret(file, user, &kind) : NULL;

    c->state = CONN_AUTH;
    if (secret || !cfg->auth_user) {
        start_sasl(c, secret);
        return;
    }
    const char *auth_password = file ? authfile_secret(file, cfg->auth_user, &kind) : NULL;
    if (auth_password && kind != AUTH_SECRET_PLAIN)
        auth_password = NULL;
    c->lookup = authquery_start(w->auth_keep, cfg, auth_password, c->database, user,
                                lookup_done, c);
    if (!c->lookup)
        fail_client(c, "53200", "out of memory", "out of memory");
}

/* server_reuse: a kept server logged in with the same StartupMessage
 * serves the client; the client hears the end of that login as if it
 * had just happened. False when there is none. */
static bool reuse_server(struct conn *c)
{
    static const char *const scanning[] = { "client_encoding", "server_encoding",
                                            "standard_conforming_strings" };
    struct worker *w = c->worker;
    struct pool_server kept;

    if (!c->reusable || !pool_take(w->pool, c->startup, c->startup_len, &kept))
        return false;
    const uint8_t *key = give_key(c, kept.welcome.key, kept.welcome.key_len) ? c->given_key : NULL;
    size_t len = welcome_build(&kept.welcome, key, NULL, 0);
    uint8_t *said = malloc(len);
    if (!said) {
        forget_key(c);
        sock_free(kept.sock);
        welcome_free(&kept.welcome);
        return false;
    }
    welcome_build(&kept.welcome, key, said, len);
    c->server = kept.sock;
    c->server_born = kept.born;
    sock_set_callback(c->server, server_sock_cb, c);
    c->welcome = kept.welcome;
    c->generation = w->generation;
    counter_add(&w->counters.server_connections, 1);
    counter_add(&w->counters.servers_reused, 1);
    for (size_t i = 0; i < sizeof(scanning) / sizeof(scanning[0]); i++) {
        const char *value = welcome_value(&c->welcome, scanning[i]);
        if (value)
            note_setting(c, scanning[i], value);
    }
    login_free(c->login);
    free(c->login);
    c->login = NULL;
    send_to(c->client, said, len);
    free(said);
    conn_log(LOG_DEBUG, c, "logged in on a kept server");
    login_done(c);
    client_read(c);
    return true;
}

/* The client's SASL messages while the proxy authenticates it. */
void read_auth(struct conn *c)
{
    uint8_t out[LOGIN_MSG_MAX];
    struct pg_msg_head head;
    const uint8_t *msg;
    const char *why = NULL;
    size_t len;

    while (c->state == CONN_AUTH && c->login) {
        enum own_msg got = next_own_msg(c, LOGIN_MSG_MAX + 1, &head, &msg);
        if (got == OWN_MSG_NONE)
            return;
        if (got == OWN_MSG_BAD || (head.type != 'p' && head.type != 'X')) {
            fail_client(c, "08P01", "invalid authentication message",
                        "protocol violation by client");
            return;
        }
        if (head.type == 'X') {
            close_pair(c, "client left during authentication");
            return;
        }
        enum login_step step = login_client_msg(c->login, msg + PG_HEAD_LEN, head.len - 4, out,
                                                &len, &why);
        evbuffer_drain(sock_input(c->client), (size_t)head.len + 1);
        switch (step) {
        case LOGIN_SEND:
            send_to(c->client, out, len);
            break;
        case LOGIN_CLIENT_OK:
            send_to(c->client, out, len);
            conn_log(LOG_DEBUG, c, "client authenticated%s",
                     c->login->with_client.plus ? " with channel binding" : "");
            if (c->admin)
                admin_begin(c);
            else if (!reuse_server(c))
                connect_server(c);
            return;
        default:
            auth_failed(c, why);
            return;
        }
    }
}

/* ---- the startup phase ------------------------------------------------- */

void login_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd;
    (void)what;
    fail_client(c, "08006", "idemproxy: client_login_timeout reached before login completed",
                "login timeout");
}

/* The client's certificate must name the user under verify-full. */
static bool client_cert_matches(struct conn *c)
{
    char cn[256];
    SSL *ssl = sock_ssl(c->client);

    return ssl && tls_peer_common_name(ssl, cn, sizeof(cn)) && c->user &&
           strcmp(cn, c->user) == 0;
}

/* SSLRequest answered 'S': the rest of the connection is TLS. */
static bool accept_tls(struct conn *c)
{
    SSL *ssl = SSL_new(c->worker->settings->client_ssl_ctx);

    /* Anything already here came in plaintext after the SSLRequest, where
     * only the TLS handshake may follow: someone is injecting. */
    if (evbuffer_get_length(sock_input(c->client)) > 0) {
        SSL_free(ssl);
        counter_add(&c->worker->counters.protocol_violations, 1);
        close_pair(c, "unencrypted data after SSLRequest");
        return false;
    }
    /* 'S' must be on the wire before the handshake: one byte on a fresh
     * socket goes at once. */
    send_to(c->client, "S", 1);
    if (!ssl || sock_unsent(c->client) > 0 ||
        !sock_start_tls(c->client, ssl, true)) {
        close_pair(c, "cannot start TLS");
        return false;
    }
    c->client_tls = true;
    return true;
}

/* A client that opened with its TLS handshake instead of a packet
 * (sslnegotiation=direct, PostgreSQL 17): the bytes here are its start.
 * Without TLS for clients nothing can answer it in a form it reads: the
 * connection closes, as PostgreSQL closes it. */
static bool accept_direct_tls(struct conn *c)
{
    SSL_CTX *ctx = c->worker->settings->client_ssl_ctx;
    SSL *ssl;

    if (!ctx) {
        close_pair(c, "refused: TLS without SSLRequest (sslnegotiation=direct), but "
                      "client_tls_sslmode = disable");
        return false;
    }
    if (!(ssl = SSL_new(ctx)) || !sock_start_tls(c->client, ssl, true)) {
        close_pair(c, "cannot start TLS");
        return false;
    }
    c->client_tls = true;
    c->direct_tls = true;
    return true;
}

/* The admin console is the proxy's own end of the protocol: like
 * PostgreSQL, it answers a StartupMessage that asks for more than it
 * speaks, before anything else. It speaks 3.0 and 3.2 (which differ only
 * in BackendKeyData, which the console never sends). */
static bool negotiate_console_protocol(struct conn *c)
{
    size_t len = pg_build_negotiation(NULL, 0, c->startup, 2);
    uint8_t *msg = len ? malloc(len) : NULL;

    if (len && !msg) {
        fail_client(c, "53200", "out of memory", "out of memory");
        return false;
    }
    if (len) {
        pg_build_negotiation(msg, len, c->startup, 2);
        send_to(c->client, msg, len);
        free(msg);
    }
    return true;
}

/* Handles one whole startup-phase packet (len bytes at the front of in).
 * Returns false when the client connection is finished with. */
static bool handle_startup_packet(struct conn *c, struct evbuffer *in, size_t len)
{
    struct worker *w = c->worker;
    const uint8_t *pkt = evbuffer_pullup(in, (ev_ssize_t)len);
    struct pg_startup su;
    const char *why;

    if (!pkt) {
        fail_client(c, "53200", "out of memory", "out of memory");
        return false;
    }
    /* PostgreSQL's rule: only ALPN tells that a client which skipped
     * SSLRequest speaks this protocol inside TLS. */
    if (c->direct_tls && !tls_alpn_agreed(sock_ssl(c->client))) {
        counter_add(&w->counters.protocol_violations, 1);
        close_pair(c, "refused: TLS without SSLRequest and without ALPN \"postgresql\"");
        return false;
    }
    switch (pg_startup_parse(pkt, len, &su, &why)) {
    case PG_STARTUP_SSL_REQUEST:
    case PG_STARTUP_GSSENC_REQUEST:
        if (++c->negotiations > MAX_NEGOTIATIONS) {
            fail_client(c, "08P01", "too many encryption requests", "protocol violation by client");
            return false;
        }
        evbuffer_drain(in, len);
        if (su.kind == PG_STARTUP_SSL_REQUEST && w->settings->client_ssl_ctx && !c->client_tls)
            return accept_tls(c);
        /* No GSS encryption, and TLS only once: the client may go on in
         * plaintext (or as it is) on the same connection. */
        send_to(c->client, "N", 1);
        return true;

    case PG_STARTUP_CANCEL:
        conn_log(LOG_DEBUG, c, "cancel request for backend %u", su.cancel_pid);
        cancel_forward(w, pkt, len);
        close_pair(c, "cancel request forwarded");
        return false;

    case PG_STARTUP_INVALID:
        counter_add(&w->counters.protocol_violations, 1);
        conn_log(LOG_WARNING, c, "invalid startup packet: %s", why);
        fail_client(c, "08P01", why, "invalid startup packet");
        return false;

    case PG_STARTUP_MESSAGE:
        break;
    }

    pthread_mutex_lock(&w->conns_lock);
    c->user = su.user ? strdup(su.user) : NULL;
    c->database = strdup(su.database ? su.database : su.user ? su.user : "");
    pthread_mutex_unlock(&w->conns_lock);
    c->replication = su.replication;
    c->rules = ruleset_ref(w->rules);
    enum tls_mode tls = w->cfg->client_tls.mode;
    if (tls >= TLS_REQUIRE && !c->client_tls) {
        fail_client(c, "28000", "idemproxy: TLS is required (client_tls_sslmode = require): "
                    "connect with sslmode=require", "refused: plaintext");
        return false;
    }
    if (tls == TLS_VERIFY_FULL && c->client_tls && !client_cert_matches(c)) {
        fail_client(c, "28000", "idemproxy: the client certificate does not name this user "
                    "(client_tls_sslmode = verify-full)", "refused: certificate user");
        return false;
    }
    if (!proxy_client_enter(w->proxy, w->cfg->max_client_conn)) {
        char msg[128];
        snprintf(msg, sizeof(msg), "sorry, too many clients already (max_client_conn = %d)",
                 w->cfg->max_client_conn);
        counter_add(&w->counters.refused[REFUSED_MAX_CLIENT_CONN], 1);
        fail_client(c, "53300", msg, "refused: max_client_conn reached");
        return false;
    }
    c->counted = true;
    counter_add(&w->counters.clients_total, 1);
    conn_log(LOG_DEBUG, c, "login%s%s%s", c->client_tls ? " over TLS" : "",
             su.application_name ? " application_name=" : "",
             su.application_name ? su.application_name : "");

    c->startup = malloc(len);
    if (!c->startup) {
        fail_client(c, "53200", "out of memory", "out of memory");
        return false;
    }
    memcpy(c->startup, pkt, len);
    c->startup_len = len;
    evbuffer_drain(in, len);
    c->admin = !c->replication && c->database && strcmp(c->database, ADMIN_DATABASE) == 0;
    c->reusable = w->cfg->server_reuse && !c->replication && !c->admin;
    if (c->admin && !admin_user_allowed(w->cfg, c->user ? c->user : "")) {
        char msg[200];
        snprintf(msg, sizeof(msg), "idemproxy: user \"%.64s\" may not use the admin console "
                 "(admin_users)", c->user ? c->user : "");
        fail_client(c, "42501", msg, "refused: not in admin_users");
        return false;
    }
    if (c->admin && !negotiate_console_protocol(c))
        return false;
    if (w->cfg->auth_type == AUTH_SCRAM || c->admin)
        begin_auth(c);
    else
        connect_server(c);
    return c->state == CONN_CONNECTING || c->state == CONN_AUTH;
}

void read_startup(struct conn *c)
{
    while (c->state == CONN_STARTUP) {
        /* The buffer changes when the connection turns to TLS. */
        struct evbuffer *in = sock_input(c->client);
        uint8_t raw[4];
        if (evbuffer_copyout(in, raw, sizeof(raw)) < (ev_ssize_t)sizeof(raw))
            return;
        /* A TLS handshake record: no startup packet is that long. */
        if (raw[0] == TLS_HANDSHAKE_RECORD && !c->client_tls) {
            if (!accept_direct_tls(c))
                return;
            continue;
        }
        uint32_t len = pg_get_u32(raw);
        if (!pg_startup_len_ok(len)) {
            counter_add(&c->worker->counters.protocol_violations, 1);
            conn_log(LOG_WARNING, c, "invalid startup packet length %u", len);
            fail_client(c, "08P01", "invalid length of startup packet", "invalid startup packet");
            return;
        }
        if (evbuffer_get_length(in) < len) {
            hold_for(c, FLOW_TO_SERVER, len);
            return;
        }
        if (!handle_startup_packet(c, in, len))
            return;
        hold_done(c, FLOW_TO_SERVER);
    }
    if (c->state == CONN_AUTH)
        read_auth(c);
}

/* ---- the server's login ------------------------------------------------ */

/* An Authentication request from the server during login. With
 * auth_type = scram-sha-256 the proxy answers it with the client's
 * ClientKey; when relaying, it keeps SCRAM relayable. */
enum taken take_auth_request(struct conn *c, const uint8_t *msg, size_t total,
                             struct sink *k)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN, out_len = 0;
    uint8_t out[LOGIN_MSG_MAX];
    const char *why = NULL;

    if (c->login) {
        switch (login_server_msg(c->login, body, len, c->server_tls, c->server_cb,
                                 c->server_cb_len, out, &out_len, &why)) {
        case LOGIN_SERVER_SEND:
            send_to(c->server, out, out_len);
            return TAKEN_DROPPED;
        case LOGIN_WAIT:
            return TAKEN_DROPPED;
        case LOGIN_SERVER_OK:
            login_free(c->login);
            free(c->login);
            c->login = NULL;
            return TAKEN_FORWARD;
        default: {
            char text[512];
            snprintf(text, sizeof(text), "idemproxy: could not log in to the server as \"%s\": %s",
                     c->user ? c->user : "", why);
            conn_log(LOG_WARNING, c, "%s", text + strlen("idemproxy: "));
            fail_client(c, "28000", text, "server login failed");
            return TAKEN_CLOSED;
        }
        }
    }
    uint32_t code;
    const uint8_t *data;
    size_t data_len;
    if (!pg_auth_request(body, len, &code, &data, &data_len) || code != PG_AUTH_SASL ||
        !c->server_tls)
        return TAKEN_FORWARD;
    /* SCRAM over the proxy's TLS to the server: a client binding to its
     * own TLS would bind to the proxy's certificate, not the server's. */
    if (c->client_tls) {
        fail_client(c, "28000", "idemproxy cannot relay SCRAM authentication when both the "
                    "client's and the server's connections to it use TLS (channel binding ties "
                    "SCRAM to one TLS connection): set auth_type = scram-sha-256 in idemproxy's "
                    "configuration, or turn TLS off on one of the two legs",
                    "SCRAM not relayable over TLS on both legs");
        return TAKEN_CLOSED;
    }
    /* A plaintext client cannot bind: it must not be offered PLUS. */
    out_len = login_relayable_mechanisms(data, data_len, out);
    if (!out_len)
        return TAKEN_FORWARD;
    sink_write(k, out, out_len);
    return TAKEN_REPLACED;
}

void login_done(struct conn *c)
{
    c->state = CONN_ACTIVE;
    c->logged_in_ns = now_ns();
    event_free(c->login_timer);
    c->login_timer = NULL;
    conn_log(LOG_DEBUG, c, "logged in");
    /* From here on the traffic is the session's: batched through the ring
     * while the worker's load makes that pay. */
    conn_follow_ring(c);
    enter_scope(c, c->replication ? NULL : login_scope(c));
}
