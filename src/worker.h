/*
 * worker: one event-loop thread and the connections it serves.
 *
 * A worker owns its event_base, its DNS resolver, its listener (its own
 * SO_REUSEPORT socket, or a share of the proxy's one), the connection
 * pairs it serves and their counters, and its own rules built from the
 * current settings (so that decision caches and catalog scopes need no
 * lock). A connection lives and dies on one worker; no two workers touch
 * the same object except the proxy's few atomics, the immutable settings
 * they both hold a reference to, and each other's load and inbox.
 *
 * Placement: whichever worker accepts a client, the client is served by
 * the worker with the fewest clients (the acceptor on a tie), handed over
 * through that worker's inbox. The kernel's spread of connections over
 * listeners, or over the workers woken on a shared one, is by chance: 8
 * clients could land 6 and 2, and the busier worker then limits them all.
 *
 * The main thread talks to a worker only through worker_wake(), after
 * changing what the proxy wants (new settings, or proxy_stop_request); the
 * worker looks at it on its own thread.
 */
#ifndef IDEM_WORKER_H
#define IDEM_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "counter.h"
#include "listener_rest.h"
#include "params.h"
#include "rules.h"
#include "settings.h"

/* The most sockets a worker accepts on: every address of every item of
 * listen_addr (a host name may have one per family). */
#define WORKER_MAX_LISTENERS (2 * CONFIG_MAX_LISTEN)

/* The listening sockets one worker accepts on. */
struct listen_set {
    int fd[WORKER_MAX_LISTENERS];
    int count;
};

struct ring;
struct handover; /* a client accepted by one worker for another to serve */

struct proxy;
struct conn;
struct pool;

/* The bounds, in microseconds, of the latency histogram's buckets; the
 * last bucket takes everything above. */
#define LATENCY_BUCKETS 12
extern const double latency_bucket_us[LATENCY_BUCKETS - 1];

/* How long the proxy held bytes it had read before writing them on. */
struct latency_histogram {
    struct counter bucket[LATENCY_BUCKETS]; /* per bucket, not cumulative */
    struct counter sum_ns;
    struct counter count;
};

/* Which way bytes go. */
enum flow {
    FLOW_TO_SERVER,
    FLOW_TO_CLIENT,
    FLOW_COUNT,
};

/* Statements by protocol: a Query message, or an Execute. */
enum protocol {
    PROTOCOL_SIMPLE,
    PROTOCOL_EXTENDED,
    PROTOCOL_COUNT,
};

/* Why a client was turned away before it could log in. */
enum refusal {
    REFUSED_MAX_CLIENT_CONN, /* max_client_conn clients were in */
    REFUSED_NO_DESCRIPTOR,   /* the process was out of file descriptors */
    REFUSAL_COUNT,
};

/* Counters only the worker's thread writes and any thread may read (see
 * counter.h). The connection gauges go up and down. */
struct worker_counters {
    struct counter clients_total;       /* clients past their StartupMessage */
    struct counter client_connections;  /* open client sockets, logged in or not */
    struct counter server_connections;  /* open server sockets serving a client */
    struct counter servers_idle;        /* server sockets kept for the next client */
    struct counter servers_reused;      /* logins served by a kept server */
    struct counter bytes[FLOW_COUNT];
    struct counter statements[PROTOCOL_COUNT];
    struct counter texts_of_no_table[RR_COUNT]; /* by reason: what the rules count
                                                   for no table in particular */
    struct counter oversized_inspected; /* inspected messages over max_held_message, streamed */
    struct counter protocol_violations;
    struct counter refused[REFUSAL_COUNT];
    struct counter track_desyncs;
    struct counter catalog_queries_ok;  /* the catalog check's answers taken */
    struct counter catalog_queries_failed;
    struct counter catalog_doubts;      /* errors taken as a sign the tables changed */
    struct counter on_ring;             /* 1 while the sessions use the worker's ring:
                                         * the worker's own record of its choice too */
    struct counter scopes;              /* (database, role) pairs its rules keep a
                                           catalog check for, old rules' included */
    struct counter auth_query_idle;     /* auth_user's connections kept for auth_query */
    struct latency_histogram latency[FLOW_COUNT];
};

/* One registered table's counters on one worker, kept across reloads (a
 * table that leaves the configuration keeps its counts). The list only
 * grows, and only at its head, published with a release store, so another
 * thread may walk it while the worker adds. */
struct table_stats {
    struct table_stats *next;
    char *schema, *name;
    struct table_counters counters;
};

struct worker {
    struct proxy *proxy;
    int index;                 /* 1-based, for log lines */
    pthread_t thread;
    bool running;              /* the thread was started and not yet joined */

    struct event_base *base;
    struct evdns_base *dns;
    struct listener_rest listeners[WORKER_MAX_LISTENERS]; /* one per address listened
                                * on, each resting when accept fails for want of a
                                * resource (its evconnlistener in .listener) */
    int listener_count;
    int spare_fd;              /* /dev/null, given up to refuse a client when the
                                * process is out of descriptors; -1: none */
    int wake_fd;               /* eventfd the main thread writes to */
    struct event *wake;

    struct settings *settings; /* the snapshot this worker runs on */
    const struct config *cfg;  /* settings->cfg */
    struct ruleset *rules;     /* this worker's rules for settings->cfg */
    uint64_t generation;       /* counts the settings adopted: a server connected
                                * under older ones is not kept */
    struct pool *pool;         /* servers kept for reuse */
    struct authquery_keep *auth_keep; /* auth_query's connections between lookups */
    struct ring *ring;         /* io_uring of the thread; NULL: plain system calls */
    uint64_t reads_seen, sleeps_seen; /* relayed reads, and the thread's sleeps, at the
                                       * last look (io_uring = auto) */
    struct event *ring_timer;  /* io_uring = auto: the look, every RING_LOOK_MS */

    pthread_mutex_t conns_lock; /* the list, and what SHOW CLIENTS reads of a pair,
                                 * for readers on other threads */
    struct conn *conns;        /* every open connection pair of this worker */
    int conn_count;
    atomic_int load;           /* clients placed here and not yet gone, those still
                                * in the inbox too; any thread adds when it places
                                * one, the worker takes away */
    pthread_mutex_t inbox_lock;
    struct handover *inbox, **inbox_tail; /* placed here by other workers */
    bool inbox_closed;         /* stopping: acceptors keep their clients */
    bool shutting_down;
    struct event *shutdown_timer;

    struct worker_counters counters;
    struct table_stats *_Atomic tables;

    pthread_mutex_t checks_lock; /* what other threads read of the next three */
    const struct settings *checks_of; /* the settings checks are about: the worker's */
    char **checks;             /* per table of their configuration, what the catalog
                                * check said over this worker's scopes, copied
                                * (ruleset_table_check); NULL: nothing yet */
    size_t check_count;

    /* The types and values prepare_query (conn_client.c) binds a Query's
     * INSERT with, kept from one Query of this thread to the next. */
    struct params query_params;
};

/* Publishes what w's catalog checks have said so far, for the admin
 * console on any worker: on w's thread, after its rules learnt a catalog
 * or were replaced. Out of memory, the last publication stays. */
void worker_publish_checks(struct worker *w);

/* What w's catalog checks said about the table-th table of settings's
 * configuration: true with "" (allowed) or the problem in buf (cap
 * bytes), false when w learnt nothing about it under those settings. Any
 * thread. */
bool worker_table_check(struct worker *w, const struct settings *settings, size_t table,
                        char *buf, size_t cap);

/* Adds how long (ns) the proxy held bytes flowing one way. */
void worker_observe_latency(struct worker *w, enum flow flow, uint64_t ns);

/* Sets w up to accept on the sockets of listens (it takes them) under
 * settings (it takes a reference). False, logged, when it cannot; then
 * worker_free() still cleans up. */
bool worker_init(struct worker *w, struct proxy *p, int index, struct settings *settings,
                 const struct listen_set *listens);

/* Starts the thread. False, logged, when it cannot. */
bool worker_start(struct worker *w);

/* Tells the worker to look at what the proxy wants, and at its inbox (from
 * any thread). */
void worker_wake(struct worker *w);

/* Waits for the thread to end (after the proxy asked it to stop). */
void worker_join(struct worker *w);

/* Frees everything, joining first; connections still open are dropped
 * without a word: the process is exiting. */
void worker_free(struct worker *w);

/* Moves the worker to the proxy's current settings if a reload changed
 * them; cheap when nothing changed. New connections and idle sessions call
 * it before they decide anything; on the worker's thread, or on the main
 * thread once the worker has ended. */
void worker_refresh(struct worker *w);

/* Starts connecting bev (created without a socket) to the configured
 * server. False when the attempt could not even start; *why says why. */
bool worker_connect_server(struct worker *w, struct bufferevent *bev, const char **why);

/* "host:port" or the socket path, for messages. */
const char *server_name(const struct config *cfg, char *buf, size_t len);

/* How many kept servers this worker may hold: its share of
 * max_idle_servers. */
size_t worker_pool_max(const struct worker *w);

/* The ring a logged-in session of w reads and writes through now, or NULL
 * for plain system calls (conn_follow_ring). */
struct ring *worker_session_ring(const struct worker *w);

/* A connection pair of w has been freed. */
void worker_conn_gone(struct worker *w);

#endif
