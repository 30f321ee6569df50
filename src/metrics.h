/*
 * metrics: what the proxy has done, summed over the workers' counters.
 *
 * Runs on the main thread. Workers only count, each in counters of its own
 * (counter.h, worker.h); this module reads and sums them when asked: for
 * the Prometheus endpoint (metrics_addr:metrics_port, /metrics and
 * /healthz, served by evhttp on the main loop, so it answers however busy
 * the workers are and until the process exits), for the summary line every
 * log_stats_interval, and for the per-table lines at reload and exit.
 */
#ifndef IDEM_METRICS_H
#define IDEM_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rewrite.h"
#include "translate.h"
#include "worker.h"

struct proxy;

/* One registered table's counts, summed over the workers. */
struct table_total {
    const char *schema, *name; /* the workers' copies, alive until they are freed */
    uint64_t rewrite[RR_COUNT];
    uint64_t translation[TR_COUNT];
};

struct totals {
    uint64_t clients_total, client_connections, server_connections;
    uint64_t servers_idle, servers_reused;
    uint64_t bytes[FLOW_COUNT];
    uint64_t statements[PROTOCOL_COUNT];
    uint64_t texts_of_no_table[RR_COUNT];
    uint64_t oversized_inspected, protocol_violations, track_desyncs;
    uint64_t refused[REFUSAL_COUNT];
    uint64_t catalog_queries_ok, catalog_queries_failed, catalog_doubts;
    uint64_t workers_on_ring, scopes, auth_query_idle;
    struct {
        uint64_t bucket[LATENCY_BUCKETS];
        uint64_t sum_ns, count;
    } latency[FLOW_COUNT];
    struct table_total *tables;
    size_t table_count;
};

/* Sums every worker's counters into t (its tables malloc'ed: free with
 * metrics_totals_free). False when out of memory. */
bool metrics_sum(struct proxy *p, struct totals *t);
void metrics_totals_free(struct totals *t);

/* Which outcomes are "skipped" INSERTs (neither rewritten nor shadow) and
 * which unique violations were "passed" on as errors (not translated, and
 * a unique violation at all): what /metrics and SHOW TABLES count. */
bool metrics_is_skipped(enum rewrite_reason reason);
/* And which of the reasons counted for no table in particular say that a
 * text that may have inserted into a registered table went unread. */
bool metrics_is_unchecked(enum rewrite_reason reason);
bool metrics_is_passed(enum translate_reason reason);

/* Sums over every table, and over both directions of the latency. */
uint64_t metrics_rewritten(const struct totals *t);
uint64_t metrics_translated(const struct totals *t);
void metrics_latency(const struct totals *t, uint64_t *sum_ns, uint64_t *count);

/* One log line per table with anything counted, by outcome. */
void metrics_log_tables(const struct totals *t);

/* The log_stats_interval line: what happened since before, seconds ago. */
void metrics_log_summary(const struct totals *now, const struct totals *before, double seconds);

/* Starts the HTTP endpoint when metrics_port is set. False (logged) when it
 * cannot listen. */
bool metrics_http_start(struct proxy *p);
void metrics_http_free(struct proxy *p);

#endif
