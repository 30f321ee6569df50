#include "admin.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conn.h"
#include "metrics.h"
#include "pgproto.h"
#include "proxy.h"
#include "worker.h"

/* ---- parsing (pure) ------------------------------------------------------ */

/* The next word of text (letters only), upper-cased into word. */
static const char *next_word(const char *p, const char *end, char *word, size_t cap)
{
    size_t n = 0;

    while (p < end && isspace((unsigned char)*p))
        p++;
    while (p < end && isalpha((unsigned char)*p)) {
        if (n + 1 < cap)
            word[n++] = (char)toupper((unsigned char)*p);
        p++;
    }
    word[n] = '\0';
    return p;
}

enum admin_cmd admin_parse(const char *text, size_t len)
{
    static const struct {
        const char *first, *second;
        enum admin_cmd cmd;
    } commands[] = {
        { "SHOW", "STATS", ADMIN_SHOW_STATS },     { "SHOW", "TABLES", ADMIN_SHOW_TABLES },
        { "SHOW", "CLIENTS", ADMIN_SHOW_CLIENTS }, { "SHOW", "CONFIG", ADMIN_SHOW_CONFIG },
        { "SHOW", "VERSION", ADMIN_SHOW_VERSION }, { "RELOAD", "", ADMIN_RELOAD },
        { "SHUTDOWN", "", ADMIN_SHUTDOWN },
    };
    const char *end = text + len;
    char first[16], second[16], third[16];
    const char *p = next_word(text, end, first, sizeof(first));

    p = next_word(p, end, second, sizeof(second));
    p = next_word(p, end, third, sizeof(third));
    /* Semicolons end a command; anything else left (a digit, a quote, a
     * word after a semicolon) is not ours. */
    while (p < end && (isspace((unsigned char)*p) || *p == ';'))
        p++;
    if (!first[0] && p == end)
        return ADMIN_EMPTY;
    if (third[0] || p != end)
        return ADMIN_UNKNOWN;
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(first, commands[i].first) == 0 && strcmp(second, commands[i].second) == 0)
            return commands[i].cmd;
    }
    return ADMIN_UNKNOWN;
}

bool admin_user_allowed(const struct config *cfg, const char *user)
{
    for (size_t i = 0; i < cfg->admin_users.count; i++) {
        if (strcmp(cfg->admin_users.names[i], user) == 0)
            return true;
    }
    return false;
}

/* ---- result sets --------------------------------------------------------- */

#define TEXT_OID 25

static void put_u16(struct evbuffer *out, uint16_t v)
{
    uint8_t b[2];
    pg_put_u16(b, v);
    evbuffer_add(out, b, 2);
}

static void put_u32(struct evbuffer *out, uint32_t v)
{
    uint8_t b[4];
    pg_put_u32(b, v);
    evbuffer_add(out, b, 4);
}

/* A RowDescription of n text columns. */
static void columns(struct evbuffer *out, const char *const *names, int n)
{
    size_t len = 4 + 2;
    for (int i = 0; i < n; i++)
        len += strlen(names[i]) + 1 + 18;
    evbuffer_add(out, "T", 1);
    put_u32(out, (uint32_t)len);
    put_u16(out, (uint16_t)n);
    for (int i = 0; i < n; i++) {
        evbuffer_add(out, names[i], strlen(names[i]) + 1);
        put_u32(out, 0);           /* table OID */
        put_u16(out, 0);           /* column number */
        put_u32(out, TEXT_OID);
        put_u16(out, 0xffff);      /* typlen -1 */
        put_u32(out, 0xffffffff);  /* typmod -1 */
        put_u16(out, 0);           /* text format */
    }
}

/* A DataRow; a NULL value is SQL NULL. */
static void row(struct evbuffer *out, const char *const *values, int n)
{
    size_t len = 4 + 2;
    for (int i = 0; i < n; i++)
        len += 4 + (values[i] ? strlen(values[i]) : 0);
    evbuffer_add(out, "D", 1);
    put_u32(out, (uint32_t)len);
    put_u16(out, (uint16_t)n);
    for (int i = 0; i < n; i++) {
        if (!values[i]) {
            put_u32(out, 0xffffffff);
            continue;
        }
        put_u32(out, (uint32_t)strlen(values[i]));
        evbuffer_add(out, values[i], strlen(values[i]));
    }
}

static void complete(struct evbuffer *out, const char *tag)
{
    uint8_t buf[64];
    evbuffer_add(out, buf, pg_build_command_complete(buf, sizeof(buf), tag));
}

static void error(struct evbuffer *out, const char *sqlstate, const char *message)
{
    uint8_t buf[1024];
    size_t n = pg_error_build(buf, sizeof(buf), "ERROR", sqlstate, message);
    if (n <= sizeof(buf))
        evbuffer_add(out, buf, n);
}

/* A two-column (name, value) row. */
static void text_row(struct evbuffer *out, const char *name, const char *value)
{
    row(out, (const char *[]){ name, value }, 2);
}

/* The same with a number. */
static void stat_row(struct evbuffer *out, const char *name, uint64_t value)
{
    char v[32];
    snprintf(v, sizeof(v), "%" PRIu64, value);
    text_row(out, name, v);
}

/* ---- commands ------------------------------------------------------------ */

static void show_stats(struct worker *w, struct evbuffer *out)
{
    struct proxy *p = w->proxy;
    struct totals t;
    uint64_t latency_ns, latency_n;

    if (!metrics_sum(p, &t)) {
        error(out, "53200", "out of memory");
        return;
    }
    metrics_latency(&t, &latency_ns, &latency_n);
    columns(out, (const char *[]){ "name", "value" }, 2);
    stat_row(out, "client_connections", t.client_connections);
    stat_row(out, "server_connections", t.server_connections);
    stat_row(out, "server_connections_idle", t.servers_idle);
    stat_row(out, "server_reuses", t.servers_reused);
    stat_row(out, "clients_total", t.clients_total);
    stat_row(out, "statements_simple", t.statements[PROTOCOL_SIMPLE]);
    stat_row(out, "statements_extended", t.statements[PROTOCOL_EXTENDED]);
    stat_row(out, "bytes_to_server", t.bytes[FLOW_TO_SERVER]);
    stat_row(out, "bytes_to_client", t.bytes[FLOW_TO_CLIENT]);
    stat_row(out, "proxy_latency_avg_ns", latency_n ? latency_ns / latency_n : 0);
    stat_row(out, "inserts_rewritten", metrics_rewritten(&t));
    stat_row(out, "errors_translated", metrics_translated(&t));
    for (int r = 0; r < RR_COUNT; r++) {
        if (!metrics_is_unchecked((enum rewrite_reason)r))
            continue;
        char name[64];
        snprintf(name, sizeof(name), "statements_unchecked_%s",
                 rewrite_reason_name((enum rewrite_reason)r));
        stat_row(out, name, t.texts_of_no_table[r]);
    }
    stat_row(out, "protocol_violations", t.protocol_violations);
    stat_row(out, "clients_refused_max_client_conn", t.refused[REFUSED_MAX_CLIENT_CONN]);
    stat_row(out, "clients_refused_file_descriptors", t.refused[REFUSED_NO_DESCRIPTOR]);
    stat_row(out, "catalog_queries_ok", t.catalog_queries_ok);
    stat_row(out, "catalog_queries_failed", t.catalog_queries_failed);
    stat_row(out, "catalog_doubts", t.catalog_doubts);
    stat_row(out, "config_reloads_ok", atomic_load(&p->reloads_ok));
    stat_row(out, "config_reloads_failed", atomic_load(&p->reloads_failed));
    stat_row(out, "workers", (uint64_t)p->worker_count);
    stat_row(out, "workers_on_ring", t.workers_on_ring);
    stat_row(out, "catalog_scopes", t.scopes);
    stat_row(out, "auth_query_connections_idle", t.auth_query_idle);
    complete(out, "SHOW");
    metrics_totals_free(&t);
}

static const struct table_total *total_of(const struct totals *t, const struct table_rule *rule)
{
    for (size_t i = 0; i < t->table_count; i++) {
        if (strcmp(t->tables[i].schema, rule->schema) == 0 &&
            strcmp(t->tables[i].name, rule->name) == 0)
            return &t->tables[i];
    }
    return NULL;
}

/* What the catalog check said about the table-th table over every
 * worker's scopes: the first problem any of them found, "allowed" when
 * one learnt it and none did. */
static void table_check(struct worker *w, size_t table, char *out, size_t cap)
{
    struct proxy *p = w->proxy;
    char got[256];
    bool known = false;

    snprintf(out, cap, "not checked yet");
    for (int i = 0; i < p->worker_count; i++) {
        if (!worker_table_check(&p->workers[i], w->settings, table, got, sizeof(got)))
            continue;
        if (got[0]) {
            snprintf(out, cap, "refused: %s", got);
            return;
        }
        if (!known)
            snprintf(out, cap, "allowed");
        known = true;
    }
}

static void show_tables(struct worker *w, struct evbuffer *out)
{
    static const char *const names[] = {
        "table", "database", "action", "mode", "translate_errors", "rewrite_check",
        "rewritten", "skipped", "shadow", "translated", "violations_passed",
    };
    const struct config *cfg = w->cfg;
    struct totals t;

    if (!metrics_sum(w->proxy, &t)) {
        error(out, "53200", "out of memory");
        return;
    }
    columns(out, names, 11);
    for (size_t i = 0; i < cfg->table_count; i++) {
        const struct table_rule *rule = &cfg->tables[i];
        const struct table_total *tt = total_of(&t, rule);
        uint64_t skipped = 0, passed = 0;
        char table[200], counts[5][24], check[300];

        for (int r = 0; tt && r < RR_COUNT; r++)
            skipped += metrics_is_skipped((enum rewrite_reason)r) ? tt->rewrite[r] : 0;
        for (int r = 0; tt && r < TR_COUNT; r++)
            passed += metrics_is_passed((enum translate_reason)r) ? tt->translation[r] : 0;
        snprintf(table, sizeof(table), "%s.%s", rule->schema, rule->name);
        table_check(w, i, check, sizeof(check));
        snprintf(counts[0], sizeof(counts[0]), "%" PRIu64, tt ? tt->rewrite[RR_REWRITTEN] : 0);
        snprintf(counts[1], sizeof(counts[1]), "%" PRIu64, skipped);
        snprintf(counts[2], sizeof(counts[2]), "%" PRIu64, tt ? tt->rewrite[RR_SHADOW] : 0);
        snprintf(counts[3], sizeof(counts[3]), "%" PRIu64,
                 tt ? tt->translation[TR_TRANSLATED] : 0);
        snprintf(counts[4], sizeof(counts[4]), "%" PRIu64, passed);
        row(out,
            (const char *[]){ table, rule->database ? rule->database : "(all)",
                              table_action_name(rule->action), table_mode_name(rule->mode),
                              rule->translate_errors ? "on" : "off", check, counts[0], counts[1],
                              counts[2], counts[3], counts[4] },
            11);
    }
    complete(out, "SHOW");
    metrics_totals_free(&t);
}

static void show_clients(struct worker *w, struct evbuffer *out)
{
    struct proxy *p = w->proxy;
    time_t now = time(NULL);

    columns(out, (const char *[]){ "id", "worker", "address", "user", "database", "seconds" }, 6);
    for (int i = 0; i < p->worker_count; i++) {
        struct worker *other = &p->workers[i];
        pthread_mutex_lock(&other->conns_lock);
        for (struct conn *c = other->conns; c; c = conn_next(c)) {
            struct conn_info info;
            char id[24], worker[12], seconds[24];
            conn_describe(c, &info);
            snprintf(id, sizeof(id), "%" PRIu64, info.id);
            snprintf(worker, sizeof(worker), "%d", other->index);
            snprintf(seconds, sizeof(seconds), "%lld", (long long)(now - info.since));
            row(out, (const char *[]){ id, worker, info.peer, info.user, info.database, seconds },
                6);
        }
        pthread_mutex_unlock(&other->conns_lock);
    }
    complete(out, "SHOW");
}

static const char *on_off(bool on)
{
    return on ? "on" : "off";
}

/* The rows of one TLS leg's settings, prefix "client" or "server". */
static void tls_rows(struct evbuffer *out, const char *prefix, const struct tls_config *t)
{
    static const char *const protocols[] = { "", "tlsv1.2", "tlsv1.3", "tlsv1.2,tlsv1.3" };
    const char *values[][2] = {
        { "sslmode", tls_mode_name(t->mode) },
        { "cert_file", t->cert_file ? t->cert_file : "" },
        { "key_file", t->key_file ? t->key_file : "" },
        { "ca_file", t->ca_file ? t->ca_file : "" },
        { "protocols", protocols[t->protocols & 3] },
        { "ciphers", t->ciphers ? t->ciphers : "(OpenSSL's)" },
    };
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        char key[48];
        snprintf(key, sizeof(key), "%s_tls_%s", prefix, values[i][0]);
        text_row(out, key, values[i][1]);
    }
}

static void show_config(struct worker *w, struct evbuffer *out)
{
    const struct config *cfg = w->cfg;
    char admins[512] = "";

    for (size_t i = 0, at = 0; i < cfg->admin_users.count && at < sizeof(admins); i++)
        at += (size_t)snprintf(admins + at, sizeof(admins) - at, "%s%s", i ? ", " : "",
                               cfg->admin_users.names[i]);
    columns(out, (const char *[]){ "key", "value" }, 2);
    text_row(out, "config_file", cfg->path);
    text_row(out, "listen_addr", cfg->listen_addr);
    stat_row(out, "listen_port", (uint64_t)cfg->listen_port);
    text_row(out, "server_host", cfg->server_host);
    stat_row(out, "server_port", (uint64_t)cfg->server_port);
    stat_row(out, "max_client_conn", (uint64_t)cfg->max_client_conn);
    text_row(out, "log_level", log_level_name(cfg->log_level));
    text_row(out, "log_file", cfg->log_file ? cfg->log_file : "(stderr)");
    stat_row(out, "max_held_message", cfg->max_held_message);
    stat_row(out, "client_login_timeout", (uint64_t)cfg->client_login_timeout);
    stat_row(out, "server_connect_timeout", (uint64_t)cfg->server_connect_timeout);
    stat_row(out, "shutdown_timeout", (uint64_t)cfg->shutdown_timeout);
    text_row(out, "tcp_keepalive", on_off(cfg->tcp_keepalive));
    stat_row(out, "tcp_keepidle", (uint64_t)cfg->tcp_keepidle);
    stat_row(out, "tcp_keepintvl", (uint64_t)cfg->tcp_keepintvl);
    stat_row(out, "tcp_keepcnt", (uint64_t)cfg->tcp_keepcnt);
    stat_row(out, "tcp_user_timeout", (uint64_t)cfg->tcp_user_timeout);
    stat_row(out, "workers", (uint64_t)w->proxy->worker_count);
    text_row(out, "so_reuseport", on_off(cfg->so_reuseport));
    text_row(out, "io_uring", ring_use_name(cfg->io_uring));
    text_row(out, "metrics_addr", cfg->metrics_addr);
    stat_row(out, "metrics_port", (uint64_t)cfg->metrics_port);
    stat_row(out, "log_stats_interval", (uint64_t)cfg->log_stats_interval);
    text_row(out, "auth_type", cfg->auth_type == AUTH_SCRAM ? "scram-sha-256" : "passthrough");
    text_row(out, "auth_file", cfg->auth_file ? cfg->auth_file : "");
    text_row(out, "auth_user", cfg->auth_user ? cfg->auth_user : "");
    text_row(out, "auth_query", cfg->auth_query ? cfg->auth_query : "");
    text_row(out, "server_reuse", on_off(cfg->server_reuse));
    stat_row(out, "server_idle_timeout", (uint64_t)cfg->server_idle_timeout);
    stat_row(out, "server_lifetime", (uint64_t)cfg->server_lifetime);
    stat_row(out, "max_idle_servers", (uint64_t)cfg->max_idle_servers);
    stat_row(out, "max_cached_statements", (uint64_t)cfg->max_cached_statements);
    stat_row(out, "catalog_check_interval", (uint64_t)cfg->catalog_check_interval);
    text_row(out, "admin_users", admins);
    tls_rows(out, "client", &cfg->client_tls);
    tls_rows(out, "server", &cfg->server_tls);
    complete(out, "SHOW");
}

void admin_run(struct worker *w, enum admin_cmd cmd, struct evbuffer *out)
{
    char why[CONFIG_ERR_LEN + 32];

    worker_refresh(w);
    switch (cmd) {
    case ADMIN_EMPTY:
        evbuffer_add(out, "I\0\0\0\4", 5); /* EmptyQueryResponse */
        return;
    case ADMIN_SHOW_STATS:
        show_stats(w, out);
        return;
    case ADMIN_SHOW_TABLES:
        show_tables(w, out);
        return;
    case ADMIN_SHOW_CLIENTS:
        show_clients(w, out);
        return;
    case ADMIN_SHOW_CONFIG:
        show_config(w, out);
        return;
    case ADMIN_SHOW_VERSION:
        columns(out, (const char *[]){ "version" }, 1);
        row(out, (const char *[]){ "idemproxy " PACKAGE_VERSION }, 1);
        complete(out, "SHOW");
        return;
    case ADMIN_RELOAD: {
        char err[CONFIG_ERR_LEN];
        if (proxy_reload(w->proxy, err, sizeof(err))) {
            complete(out, "RELOAD");
        } else {
            snprintf(why, sizeof(why), "reload failed: %s", err);
            error(out, "F0000", why);
        }
        return;
    }
    case ADMIN_SHUTDOWN:
        complete(out, "SHUTDOWN");
        proxy_request_stop(w->proxy, PROXY_STOP_GRACEFUL);
        return;
    case ADMIN_UNKNOWN:
        error(out, "42601", "idemproxy admin console: unknown command; try SHOW STATS, "
                            "SHOW TABLES, SHOW CLIENTS, SHOW CONFIG, SHOW VERSION, RELOAD or "
                            "SHUTDOWN");
        return;
    }
}
