#include "proxy.h"

#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <event2/dns.h>
#include <event2/listener.h>

#include <openssl/rand.h>

#include "conn.h"
#include "log.h"
#include "tls.h"

#define LISTEN_BACKLOG 1024

static void apply_logging(const struct config *cfg)
{
    log_set_level(cfg->log_level);
    if (!log_set_file(cfg->log_file))
        log_error("cannot open log_file %s: keeping the current log destination", cfg->log_file);
}

const char *proxy_server_name(const struct proxy *p, char *buf, size_t len)
{
    if (p->cfg->server_host[0] == '/')
        snprintf(buf, len, "%s/.s.PGSQL.%d", p->cfg->server_host, p->cfg->server_port);
    else
        snprintf(buf, len, "%s:%d", p->cfg->server_host, p->cfg->server_port);
    return buf;
}

bool proxy_connect_server(struct proxy *p, struct bufferevent *bev, const char **why)
{
    const struct config *cfg = p->cfg;

    if (cfg->server_host[0] == '/') {
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        int n = snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/.s.PGSQL.%d",
                         cfg->server_host, cfg->server_port);
        if (n < 0 || (size_t)n >= sizeof(sun.sun_path)) {
            *why = "socket path too long";
            return false;
        }
        if (bufferevent_socket_connect(bev, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
            *why = evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR());
            return false;
        }
        return true;
    }
    if (bufferevent_socket_connect_hostname(bev, p->dns, AF_UNSPEC, cfg->server_host,
                                            cfg->server_port) != 0) {
        int dns_err = bufferevent_socket_get_dns_error(bev);
        *why = dns_err ? evutil_gai_strerror(dns_err)
                       : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR());
        return false;
    }
    return true;
}

void proxy_conn_gone(struct proxy *p)
{
    p->conn_count--;
    if (p->shutting_down && p->conn_count == 0)
        event_base_loopexit(p->base, NULL);
}

static void accept_cb(struct evconnlistener *listener, evutil_socket_t fd,
                      struct sockaddr *addr, int addrlen, void *arg)
{
    (void)listener;
    conn_accept(arg, fd, addr, addrlen);
}

static void accept_error_cb(struct evconnlistener *listener, void *arg)
{
    (void)listener;
    (void)arg;
    /* Typically EMFILE: the listener retries on the next event. */
    log_error("accept failed: %s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static bool open_listener(struct proxy *p)
{
    const struct config *cfg = p->cfg;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE };
    struct addrinfo *ai = NULL;
    char port[16];
    const char *host = strcmp(cfg->listen_addr, "*") == 0 ? NULL : cfg->listen_addr;

    snprintf(port, sizeof(port), "%d", cfg->listen_port);
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        log_error("listen_addr %s: %s", cfg->listen_addr, gai_strerror(rc));
        return false;
    }
    p->listener = evconnlistener_new_bind(p->base, accept_cb, p,
                                          LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                              LEV_OPT_CLOSE_ON_EXEC,
                                          LISTEN_BACKLOG, ai->ai_addr, (int)ai->ai_addrlen);
    freeaddrinfo(ai);
    if (!p->listener) {
        log_error("cannot listen on %s:%d: %s", cfg->listen_addr, cfg->listen_port,
                  evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        return false;
    }
    evconnlistener_set_error_cb(p->listener, accept_error_cb);
    return true;
}

static void close_listener(struct proxy *p)
{
    if (p->listener) {
        evconnlistener_free(p->listener);
        p->listener = NULL;
    }
}

static void shutdown_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy *p = arg;
    (void)fd;
    (void)what;
    log_warning("shutdown_timeout reached with %d connection(s) still busy: closing them",
                p->conn_count);
    for (struct conn *c = p->conns, *next; c; c = next) {
        next = conn_next(c);
        conn_terminate(c);
    }
    event_base_loopexit(p->base, NULL);
}

/* SIGTERM: no new clients; each open one is closed once it is idle. */
static void begin_shutdown(struct proxy *p)
{
    if (p->shutting_down)
        return;
    p->shutting_down = true;
    close_listener(p);
    log_info("shutting down: waiting for %d connection(s) to become idle (at most %d s)",
             p->conn_count, p->cfg->shutdown_timeout);
    if (p->conn_count == 0) {
        event_base_loopexit(p->base, NULL);
        return;
    }
    for (struct conn *c = p->conns, *next; c; c = next) {
        next = conn_next(c);
        conn_shutdown(c);
    }
    struct timeval timeout = { p->cfg->shutdown_timeout, 0 };
    p->shutdown_timer = evtimer_new(p->base, shutdown_timeout_cb, p);
    if (p->shutdown_timer)
        evtimer_add(p->shutdown_timer, &timeout);
}

/* " name=count" for each non-zero count(rs, table, reason), into line. */
static size_t format_counts(char *line, size_t cap, const struct ruleset *rs, size_t table,
                            int reasons, uint64_t (*count)(const struct ruleset *, size_t, int),
                            const char *(*name)(int))
{
    size_t at = 0;

    for (int r = 0; r < reasons && at < cap; r++) {
        uint64_t n = count(rs, table, r);
        if (n)
            at += (size_t)snprintf(line + at, cap - at, " %s=%llu", name(r),
                                   (unsigned long long)n);
    }
    return at;
}

static uint64_t rewrite_count(const struct ruleset *rs, size_t table, int reason)
{
    return ruleset_table_count(rs, table, (enum rewrite_reason)reason);
}

static const char *rewrite_name(int reason)
{
    return rewrite_reason_name((enum rewrite_reason)reason);
}

static uint64_t translation_count(const struct ruleset *rs, size_t table, int reason)
{
    return ruleset_translation_count(rs, table, (enum translate_reason)reason);
}

static const char *translation_name(int reason)
{
    return translate_reason_name((enum translate_reason)reason);
}

static void log_rule_counters(const struct ruleset *rs)
{
    const struct config *cfg = ruleset_config(rs);
    char line[512];

    for (size_t i = 0; i < cfg->table_count; i++) {
        const struct table_rule *t = &cfg->tables[i];
        if (format_counts(line, sizeof(line), rs, i, RR_COUNT, rewrite_count, rewrite_name))
            log_info("[table %s.%s] INSERTs:%s", t->schema, t->name, line);
        if (format_counts(line, sizeof(line), rs, i, TR_COUNT, translation_count,
                          translation_name))
            log_info("[table %s.%s] unique violations:%s", t->schema, t->name, line);
    }
}

/* Builds the TLS contexts and loads auth_file for cfg. At start a failure
 * stops the proxy; on reload it keeps what it had, so that open and new
 * connections go on, and says why. */
static bool load_credentials(struct proxy *p, const struct config *cfg, bool starting)
{
    char why[512], err[CONFIG_ERR_LEN];
    SSL_CTX *client = tls_client_context(cfg, why, sizeof(why));
    bool ok = true;

    if (!client && cfg->client_tls.mode != TLS_DISABLE) {
        log_error("client TLS: %s%s", why, starting ? "" : "; keeping the current context");
        ok = false;
    }
    SSL_CTX *server = tls_server_context(cfg, why, sizeof(why));
    if (!server && cfg->server_tls.mode != TLS_DISABLE) {
        log_error("server TLS: %s%s", why, starting ? "" : "; keeping the current context");
        ok = false;
    }
    struct auth_file *auth = NULL;
    if (cfg->auth_file && !(auth = authfile_load(cfg->auth_file, err))) {
        log_error("%s%s", err, starting ? "" : "; keeping the current auth_file");
        ok = false;
    }
    if (!ok && starting) {
        SSL_CTX_free(client);
        SSL_CTX_free(server);
        authfile_free(auth);
        return false;
    }
    if (client || cfg->client_tls.mode == TLS_DISABLE) {
        X509 *cert = client ? SSL_CTX_get0_certificate(client) : NULL;
        SSL_CTX_free(p->client_ssl_ctx);
        p->client_ssl_ctx = client;
        p->client_cb_len = cert ? tls_server_end_point(cert, p->client_cb) : 0;
    }
    if (server || cfg->server_tls.mode == TLS_DISABLE) {
        SSL_CTX_free(p->server_ssl_ctx);
        p->server_ssl_ctx = server;
    }
    if (auth || !cfg->auth_file) {
        authfile_free(p->auth_file);
        p->auth_file = auth;
    }
    return ok;
}

/* Makes rs the current rules; connections move over when they are idle. */
static void install_rules(struct proxy *p, struct ruleset *rs)
{
    if (p->rules) {
        log_rule_counters(p->rules);
        ruleset_unref(p->rules);
    }
    p->rules = rs;
    p->cfg = ruleset_config(rs);
}

static void reload(struct proxy *p)
{
    char err[CONFIG_ERR_LEN], changed[128];
    struct config *next = config_load(p->cfg->path, err);

    if (!next) {
        log_error("reload failed, keeping the current configuration: %s", err);
        return;
    }
    if (config_restart_needed(p->cfg, next, changed, sizeof(changed)))
        log_warning("reload: %s changed but only take effect on restart", changed);
    struct ruleset *rs = ruleset_new(next);
    if (!rs) {
        log_error("reload failed, keeping the current configuration: out of memory");
        return;
    }
    apply_logging(ruleset_config(rs));
    install_rules(p, rs);
    load_credentials(p, p->cfg, false);
    log_info("configuration reloaded from %s", p->cfg->path);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct proxy *p = arg;
    (void)what;

    switch (sig) {
    case SIGTERM:
        log_info("SIGTERM received");
        begin_shutdown(p);
        break;
    case SIGINT:
        log_info("SIGINT received: exiting at once");
        event_base_loopexit(p->base, NULL);
        break;
    case SIGHUP:
        reload(p);
        break;
    default:
        break;
    }
}

bool proxy_init(struct proxy *p, struct config *cfg)
{
    memset(p, 0, sizeof(*p));
    struct ruleset *rs = ruleset_new(cfg);
    if (!rs) {
        log_error("out of memory");
        return false;
    }
    install_rules(p, rs);
    apply_logging(cfg);
    if (RAND_bytes(p->mock_key, sizeof(p->mock_key)) != 1 || !load_credentials(p, cfg, true))
        return false;
    p->base = event_base_new();
    if (!p->base) {
        log_error("cannot create the event loop");
        return false;
    }
    p->dns = evdns_base_new(p->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                         EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!p->dns) {
        /* No resolv.conf: addresses and /etc/hosts names still work. */
        p->dns = evdns_base_new(p->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    }
    p->sig_term = evsignal_new(p->base, SIGTERM, signal_cb, p);
    p->sig_int = evsignal_new(p->base, SIGINT, signal_cb, p);
    p->sig_hup = evsignal_new(p->base, SIGHUP, signal_cb, p);
    if (!p->dns || !p->sig_term || !p->sig_int || !p->sig_hup ||
        evsignal_add(p->sig_term, NULL) || evsignal_add(p->sig_int, NULL) ||
        evsignal_add(p->sig_hup, NULL)) {
        log_error("cannot set up the event loop");
        return false;
    }
    if (!open_listener(p))
        return false;
    char name[256];
    log_info("idemproxy %s listening on %s:%d, server %s", PACKAGE_VERSION, cfg->listen_addr,
             cfg->listen_port, proxy_server_name(p, name, sizeof(name)));
    return true;
}

int proxy_run(struct proxy *p)
{
    event_base_dispatch(p->base);
    log_rule_counters(p->rules);
    log_info("exiting: %llu clients served, %llu oversized messages streamed unread, "
             "%llu protocol violations, %llu request-queue resyncs",
             (unsigned long long)p->stats.clients_total,
             (unsigned long long)p->stats.oversized_inspected,
             (unsigned long long)p->stats.protocol_violations,
             (unsigned long long)p->stats.track_desyncs);
    return 0;
}

void proxy_free(struct proxy *p)
{
    while (p->conns)
        conn_destroy(p->conns);
    close_listener(p);
    if (p->shutdown_timer)
        event_free(p->shutdown_timer);
    if (p->sig_term)
        event_free(p->sig_term);
    if (p->sig_int)
        event_free(p->sig_int);
    if (p->sig_hup)
        event_free(p->sig_hup);
    if (p->dns)
        evdns_base_free(p->dns, 0);
    if (p->base)
        event_base_free(p->base);
    ruleset_unref(p->rules);
    SSL_CTX_free(p->client_ssl_ctx);
    SSL_CTX_free(p->server_ssl_ctx);
    authfile_free(p->auth_file);
    memset(p, 0, sizeof(*p));
}
