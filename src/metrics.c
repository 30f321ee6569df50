#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/listener.h>

#include "log.h"
#include "prom.h"
#include "proxy.h"

/* ---- summing ------------------------------------------------------------- */

static struct table_total *find_or_add(struct totals *t, const struct table_stats *ts,
                                       size_t *cap)
{
    for (size_t i = 0; i < t->table_count; i++) {
        if (strcmp(t->tables[i].schema, ts->schema) == 0 &&
            strcmp(t->tables[i].name, ts->name) == 0)
            return &t->tables[i];
    }
    if (t->table_count == *cap) {
        size_t grown = *cap ? *cap * 2 : 8;
        struct table_total *more = realloc(t->tables, grown * sizeof(*more));
        if (!more)
            return NULL;
        t->tables = more;
        *cap = grown;
    }
    struct table_total *tt = &t->tables[t->table_count++];
    memset(tt, 0, sizeof(*tt));
    tt->schema = ts->schema;
    tt->name = ts->name;
    return tt;
}

bool metrics_sum(struct proxy *p, struct totals *t)
{
    size_t cap = 0;

    memset(t, 0, sizeof(*t));
    for (int i = 0; i < p->worker_count; i++) {
        struct worker *w = &p->workers[i];
        const struct worker_counters *c = &w->counters;

        t->clients_total += counter_get(&c->clients_total);
        t->client_connections += counter_get(&c->client_connections);
        t->server_connections += counter_get(&c->server_connections);
        t->servers_idle += counter_get(&c->servers_idle);
        t->servers_reused += counter_get(&c->servers_reused);
        t->oversized_inspected += counter_get(&c->oversized_inspected);
        t->protocol_violations += counter_get(&c->protocol_violations);
        t->track_desyncs += counter_get(&c->track_desyncs);
        for (int r = 0; r < REFUSAL_COUNT; r++)
            t->refused[r] += counter_get(&c->refused[r]);
        t->catalog_queries_ok += counter_get(&c->catalog_queries_ok);
        t->catalog_queries_failed += counter_get(&c->catalog_queries_failed);
        t->catalog_doubts += counter_get(&c->catalog_doubts);
        t->workers_on_ring += counter_get(&c->on_ring);
        t->scopes += counter_get(&c->scopes);
        t->auth_query_idle += counter_get(&c->auth_query_idle);
        for (int pr = 0; pr < PROTOCOL_COUNT; pr++)
            t->statements[pr] += counter_get(&c->statements[pr]);
        for (int r = 0; r < RR_COUNT; r++)
            t->texts_of_no_table[r] += counter_get(&c->texts_of_no_table[r]);
        for (int f = 0; f < FLOW_COUNT; f++) {
            t->bytes[f] += counter_get(&c->bytes[f]);
            for (int b = 0; b < LATENCY_BUCKETS; b++)
                t->latency[f].bucket[b] += counter_get(&c->latency[f].bucket[b]);
            t->latency[f].sum_ns += counter_get(&c->latency[f].sum_ns);
            t->latency[f].count += counter_get(&c->latency[f].count);
        }
        const struct table_stats *ts = atomic_load_explicit(&w->tables, memory_order_acquire);
        for (; ts; ts = ts->next) {
            struct table_total *tt = find_or_add(t, ts, &cap);
            if (!tt) {
                metrics_totals_free(t);
                return false;
            }
            for (int r = 0; r < RR_COUNT; r++)
                tt->rewrite[r] += counter_get(&ts->counters.rewrite[r]);
            for (int r = 0; r < TR_COUNT; r++)
                tt->translation[r] += counter_get(&ts->counters.translation[r]);
        }
    }
    return true;
}

void metrics_totals_free(struct totals *t)
{
    free(t->tables);
    t->tables = NULL;
    t->table_count = 0;
}

/* ---- log lines ----------------------------------------------------------- */

/* " reason=count" for each non-zero count, into line. */
static size_t format_counts(char *line, size_t cap, const uint64_t *counts, int n,
                            const char *(*name)(int))
{
    size_t at = 0;

    line[0] = '\0';
    for (int r = 0; r < n && at < cap; r++) {
        if (counts[r])
            at += (size_t)snprintf(line + at, cap - at, " %s=%llu", name(r),
                                   (unsigned long long)counts[r]);
    }
    return at;
}

static const char *rewrite_name(int r)
{
    return rewrite_reason_name((enum rewrite_reason)r);
}

static const char *translation_name(int r)
{
    return translate_reason_name((enum translate_reason)r);
}

void metrics_log_tables(const struct totals *t)
{
    char line[512];

    for (size_t i = 0; i < t->table_count; i++) {
        const struct table_total *tt = &t->tables[i];
        if (format_counts(line, sizeof(line), tt->rewrite, RR_COUNT, rewrite_name))
            log_info("[table %s.%s] INSERTs:%s", tt->schema, tt->name, line);
        if (format_counts(line, sizeof(line), tt->translation, TR_COUNT, translation_name))
            log_info("[table %s.%s] unique violations:%s", tt->schema, tt->name, line);
    }
}

bool metrics_is_skipped(enum rewrite_reason reason)
{
    return rewrite_reason_of_table(reason) && reason != RR_REWRITTEN && reason != RR_SHADOW;
}

bool metrics_is_unchecked(enum rewrite_reason reason)
{
    return reason == RR_TOO_LARGE || reason == RR_SESSION || reason == RR_PARSE_ERROR;
}

bool metrics_is_passed(enum translate_reason reason)
{
    return reason != TR_TRANSLATED && reason != TR_NOT_UNIQUE;
}

uint64_t metrics_rewritten(const struct totals *t)
{
    uint64_t sum = 0;

    for (size_t i = 0; i < t->table_count; i++)
        sum += t->tables[i].rewrite[RR_REWRITTEN];
    return sum;
}

uint64_t metrics_translated(const struct totals *t)
{
    uint64_t sum = 0;

    for (size_t i = 0; i < t->table_count; i++)
        sum += t->tables[i].translation[TR_TRANSLATED];
    return sum;
}

void metrics_latency(const struct totals *t, uint64_t *sum_ns, uint64_t *count)
{
    *sum_ns = *count = 0;
    for (int f = 0; f < FLOW_COUNT; f++) {
        *sum_ns += t->latency[f].sum_ns;
        *count += t->latency[f].count;
    }
}

void metrics_log_summary(const struct totals *now, const struct totals *before, double seconds)
{
    uint64_t statements = 0, ns_now, n_now, ns_before, n_before;

    for (int pr = 0; pr < PROTOCOL_COUNT; pr++)
        statements += now->statements[pr] - before->statements[pr];
    metrics_latency(now, &ns_now, &n_now);
    metrics_latency(before, &ns_before, &n_before);
    uint64_t latency_ns = ns_now - ns_before, latency_n = n_now - n_before;
    if (seconds <= 0)
        seconds = 1;
    log_info("stats: %llu clients open, %llu new; %.0f statements/s; in %.0f B/s, out %.0f B/s; "
             "proxy latency avg %.1f us; %llu INSERTs rewritten, %llu unique violations "
             "translated",
             (unsigned long long)now->client_connections,
             (unsigned long long)(now->clients_total - before->clients_total),
             (double)statements / seconds,
             (double)(now->bytes[FLOW_TO_SERVER] - before->bytes[FLOW_TO_SERVER]) / seconds,
             (double)(now->bytes[FLOW_TO_CLIENT] - before->bytes[FLOW_TO_CLIENT]) / seconds,
             latency_n ? (double)latency_ns / (double)latency_n / 1000.0 : 0.0,
             (unsigned long long)(metrics_rewritten(now) - metrics_rewritten(before)),
             (unsigned long long)(metrics_translated(now) - metrics_translated(before)));
}

/* ---- /metrics ------------------------------------------------------------ */

static const char *const flow_names[FLOW_COUNT] = { "to_server", "to_client" };
static const char *const protocol_names[PROTOCOL_COUNT] = { "simple", "extended" };
static const char *const refusal_names[REFUSAL_COUNT] = {
    [REFUSED_MAX_CLIENT_CONN] = "max_client_conn",
    [REFUSED_NO_DESCRIPTOR] = "file_descriptors",
};

/* The configured action of schema.name now, for a label. */
static const char *action_of(const struct config *cfg, const char *schema, const char *name)
{
    for (size_t i = 0; i < cfg->table_count; i++) {
        if (strcmp(cfg->tables[i].schema, schema) == 0 && strcmp(cfg->tables[i].name, name) == 0)
            return table_action_name(cfg->tables[i].action);
    }
    return "unregistered";
}

static void render_tables(struct evbuffer *out, const struct totals *t, const struct config *cfg)
{
    char table[256];

    prom_family(out, "idemproxy_statements_rewritten_total", "counter",
                "INSERTs rewritten to their ON CONFLICT form");
    for (size_t i = 0; i < t->table_count; i++) {
        const struct table_total *tt = &t->tables[i];
        snprintf(table, sizeof(table), "%s.%s", tt->schema, tt->name);
        prom_sample(out, "idemproxy_statements_rewritten_total",
                    (const char *[]){ "table", table, "action",
                                      action_of(cfg, tt->schema, tt->name), NULL },
                    tt->rewrite[RR_REWRITTEN]);
    }
    prom_family(out, "idemproxy_statements_skipped_total", "counter",
                "INSERTs into a registered table left as they were, by reason");
    for (size_t i = 0; i < t->table_count; i++) {
        const struct table_total *tt = &t->tables[i];
        snprintf(table, sizeof(table), "%s.%s", tt->schema, tt->name);
        for (int r = 0; r < RR_COUNT; r++) {
            if (!metrics_is_skipped((enum rewrite_reason)r))
                continue;
            prom_sample(out, "idemproxy_statements_skipped_total",
                        (const char *[]){ "table", table, "reason", rewrite_name(r), NULL },
                        tt->rewrite[r]);
        }
    }
    prom_family(out, "idemproxy_statements_unchecked_total", "counter",
                "client messages that may have inserted into a registered table, passed "
                "on unread, by reason");
    for (int r = 0; r < RR_COUNT; r++) {
        if (metrics_is_unchecked((enum rewrite_reason)r))
            prom_sample(out, "idemproxy_statements_unchecked_total",
                        (const char *[]){ "reason", rewrite_name(r), NULL },
                        t->texts_of_no_table[r]);
    }
    prom_family(out, "idemproxy_shadow_matches_total", "counter",
                "INSERTs a table in shadow mode would have rewritten");
    for (size_t i = 0; i < t->table_count; i++) {
        const struct table_total *tt = &t->tables[i];
        snprintf(table, sizeof(table), "%s.%s", tt->schema, tt->name);
        prom_sample(out, "idemproxy_shadow_matches_total",
                    (const char *[]){ "table", table, NULL }, tt->rewrite[RR_SHADOW]);
    }
    prom_family(out, "idemproxy_errors_translated_total", "counter",
                "unique violations reported to the client as success");
    for (size_t i = 0; i < t->table_count; i++) {
        const struct table_total *tt = &t->tables[i];
        snprintf(table, sizeof(table), "%s.%s", tt->schema, tt->name);
        prom_sample(out, "idemproxy_errors_translated_total",
                    (const char *[]){ "table", table, NULL }, tt->translation[TR_TRANSLATED]);
    }
    prom_family(out, "idemproxy_unique_violations_passed_total", "counter",
                "unique violations passed to the client as errors, by reason");
    for (size_t i = 0; i < t->table_count; i++) {
        const struct table_total *tt = &t->tables[i];
        snprintf(table, sizeof(table), "%s.%s", tt->schema, tt->name);
        for (int r = 0; r < TR_COUNT; r++) {
            if (!metrics_is_passed((enum translate_reason)r))
                continue;
            prom_sample(out, "idemproxy_unique_violations_passed_total",
                        (const char *[]){ "table", table, "reason", translation_name(r), NULL },
                        tt->translation[r]);
        }
    }
}

static void render_latency(struct evbuffer *out, const struct totals *t)
{
    const char *name = "idemproxy_proxy_latency_seconds";

    prom_family(out, name, "histogram",
                "time the proxy held bytes between reading them and writing them on");
    for (int f = 0; f < FLOW_COUNT; f++) {
        uint64_t cumulative = 0;
        char le[32];
        for (int b = 0; b < LATENCY_BUCKETS; b++) {
            cumulative += t->latency[f].bucket[b];
            if (b < LATENCY_BUCKETS - 1)
                snprintf(le, sizeof(le), "%g", latency_bucket_us[b] / 1e6);
            else
                snprintf(le, sizeof(le), "+Inf");
            prom_sample(out, "idemproxy_proxy_latency_seconds_bucket",
                        (const char *[]){ "direction", flow_names[f], "le", le, NULL }, cumulative);
        }
        prom_sample_double(out, "idemproxy_proxy_latency_seconds_sum",
                           (const char *[]){ "direction", flow_names[f], NULL },
                           (double)t->latency[f].sum_ns / 1e9);
        prom_sample(out, "idemproxy_proxy_latency_seconds_count",
                    (const char *[]){ "direction", flow_names[f], NULL }, t->latency[f].count);
    }
}

static bool render(struct proxy *p, struct evbuffer *out)
{
    struct totals t;

    if (!metrics_sum(p, &t))
        return false;
    const struct config *cfg = atomic_load(&p->current)->cfg;
    prom_family(out, "idemproxy_build_info", "gauge", "the running version");
    prom_sample(out, "idemproxy_build_info", (const char *[]){ "version", PACKAGE_VERSION, NULL },
                1);
    prom_family(out, "idemproxy_client_connections", "gauge", "client connections open now");
    prom_sample(out, "idemproxy_client_connections", NULL, t.client_connections);
    prom_family(out, "idemproxy_server_connections", "gauge",
                "server connections serving a client now");
    prom_sample(out, "idemproxy_server_connections", NULL, t.server_connections);
    prom_family(out, "idemproxy_server_connections_idle", "gauge",
                "server connections kept for the next client (server_reuse)");
    prom_sample(out, "idemproxy_server_connections_idle", NULL, t.servers_idle);
    prom_family(out, "idemproxy_server_reuses_total", "counter",
                "logins served by a kept server connection");
    prom_sample(out, "idemproxy_server_reuses_total", NULL, t.servers_reused);
    prom_family(out, "idemproxy_workers_on_ring", "gauge",
                "workers whose sessions use io_uring now (io_uring = auto or on)");
    prom_sample(out, "idemproxy_workers_on_ring", NULL, t.workers_on_ring);
    prom_family(out, "idemproxy_catalog_scopes", "gauge",
                "database and role pairs whose catalog check the workers keep, summed over "
                "workers");
    prom_sample(out, "idemproxy_catalog_scopes", NULL, t.scopes);
    prom_family(out, "idemproxy_auth_query_connections_idle", "gauge",
                "auth_user's connections kept for the next auth_query lookup");
    prom_sample(out, "idemproxy_auth_query_connections_idle", NULL, t.auth_query_idle);
    prom_family(out, "idemproxy_client_connections_total", "counter",
                "clients that sent a StartupMessage");
    prom_sample(out, "idemproxy_client_connections_total", NULL, t.clients_total);
    prom_family(out, "idemproxy_bytes_total", "counter", "bytes relayed, by direction");
    for (int f = 0; f < FLOW_COUNT; f++)
        prom_sample(out, "idemproxy_bytes_total",
                    (const char *[]){ "direction", flow_names[f], NULL }, t.bytes[f]);
    prom_family(out, "idemproxy_statements_total", "counter",
                "client statements: Query messages (simple) and Executes (extended)");
    for (int pr = 0; pr < PROTOCOL_COUNT; pr++)
        prom_sample(out, "idemproxy_statements_total",
                    (const char *[]){ "protocol", protocol_names[pr], NULL }, t.statements[pr]);
    render_tables(out, &t, cfg);
    render_latency(out, &t);
    prom_family(out, "idemproxy_config_reloads_total", "counter", "reloads, by result");
    prom_sample(out, "idemproxy_config_reloads_total", (const char *[]){ "result", "ok", NULL },
                atomic_load(&p->reloads_ok));
    prom_sample(out, "idemproxy_config_reloads_total",
                (const char *[]){ "result", "failed", NULL },
                atomic_load(&p->reloads_failed));
    prom_family(out, "idemproxy_protocol_violations_total", "counter",
                "connections closed for an invalid message");
    prom_sample(out, "idemproxy_protocol_violations_total", NULL, t.protocol_violations);
    prom_family(out, "idemproxy_clients_refused_total", "counter",
                "clients turned away with 53300 before their login, by reason");
    for (int r = 0; r < REFUSAL_COUNT; r++)
        prom_sample(out, "idemproxy_clients_refused_total",
                    (const char *[]){ "reason", refusal_names[r], NULL }, t.refused[r]);
    prom_family(out, "idemproxy_catalog_queries_total", "counter",
                "the catalog check's queries about the registered tables, by result");
    prom_sample(out, "idemproxy_catalog_queries_total", (const char *[]){ "result", "ok", NULL },
                t.catalog_queries_ok);
    prom_sample(out, "idemproxy_catalog_queries_total",
                (const char *[]){ "result", "failed", NULL }, t.catalog_queries_failed);
    prom_family(out, "idemproxy_catalog_doubts_total", "counter",
                "server errors a rewrite can cause once a table changed, taken as a sign "
                "to check the catalog again");
    prom_sample(out, "idemproxy_catalog_doubts_total", NULL, t.catalog_doubts);
    metrics_totals_free(&t);
    return true;
}

static void send_text(struct evhttp_request *req, int code, const char *reason,
                      struct evbuffer *body)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, code, reason, body);
}

static void metrics_cb(struct evhttp_request *req, void *arg)
{
    struct evbuffer *body = evbuffer_new();

    if (!body) {
        evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
        return;
    }
    if (render(arg, body))
        send_text(req, HTTP_OK, "OK", body);
    else
        evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
    evbuffer_free(body);
}

/* A load balancer's question: 200 while serving, 503 once stopping, so
 * that it sends new clients elsewhere. */
static void healthz_cb(struct evhttp_request *req, void *arg)
{
    struct proxy *p = arg;
    struct evbuffer *body = evbuffer_new();
    bool serving = proxy_stop_request(p) == PROXY_RUNNING;

    if (!body) {
        evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
        return;
    }
    evbuffer_add_printf(body, serving ? "ok\n" : "stopping\n");
    send_text(req, serving ? HTTP_OK : 503, serving ? "OK" : "Service Unavailable", body);
    evbuffer_free(body);
}

/* evhttp keeps its listener's callback argument for itself, so the error
 * callback finds the endpoint's rest here (one endpoint per process). */
static struct listener_rest *http_rest;

/* accept failed (out of descriptors, most likely, as the workers are). */
static void http_accept_error(struct evconnlistener *listener, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    (void)listener;
    (void)arg;

    listener_rest_pause(http_rest);
    if (listener_rest_log_due(http_rest))
        log_error("metrics endpoint: accept failed: %s; retrying every %d ms",
                  evutil_socket_error_to_string(err), LISTENER_REST_MS);
}

bool metrics_http_start(struct proxy *p)
{
    const struct config *cfg = atomic_load(&p->current)->cfg;

    if (cfg->metrics_port == 0)
        return true;
    p->http = evhttp_new(p->base);
    if (!p->http || evhttp_set_cb(p->http, "/metrics", metrics_cb, p) != 0 ||
        evhttp_set_cb(p->http, "/healthz", healthz_cb, p) != 0) {
        log_error("cannot set up the metrics endpoint: out of memory");
        return false;
    }
    evhttp_set_allowed_methods(p->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    struct evhttp_bound_socket *bound =
        evhttp_bind_socket_with_handle(p->http, cfg->metrics_addr, (ev_uint16_t)cfg->metrics_port);
    if (!bound) {
        log_error("cannot serve metrics on %s:%d: %s", cfg->metrics_addr, cfg->metrics_port,
                  evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        return false;
    }
    struct evconnlistener *listener = evhttp_bound_socket_get_listener(bound);
    if (!listener_rest_init(&p->http_rest, p->base, listener)) {
        log_error("cannot set up the metrics endpoint: out of memory");
        return false;
    }
    http_rest = &p->http_rest;
    evconnlistener_set_error_cb(listener, http_accept_error);
    log_info("metrics on http://%s:%d/metrics", cfg->metrics_addr, cfg->metrics_port);
    return true;
}

void metrics_http_free(struct proxy *p)
{
    listener_rest_free(&p->http_rest);
    if (p->http)
        evhttp_free(p->http);
    p->http = NULL;
}
