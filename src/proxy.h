/*
 * proxy: the process around the workers.
 *
 * The main thread owns the signals, the current settings (swapped whole on
 * reload), the listening sockets it hands to the workers, and the workers
 * themselves. It serves no connection: workers do, each on its own thread
 * and event loop (see worker.h). What workers share lives here and is
 * either immutable after start or atomic: the current settings pointer,
 * the count of clients for max_client_conn, connection ids, and what the
 * process wants of them (stop gracefully, stop now).
 */
#ifndef IDEM_PROXY_H
#define IDEM_PROXY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "config.h"
#include "listener_rest.h"
#include "metrics.h"
#include "scram.h"
#include "settings.h"

struct worker;

enum proxy_stop {
    PROXY_RUNNING,
    PROXY_STOP_GRACEFUL, /* SIGTERM: no new clients, close each when idle */
    PROXY_STOP_NOW,      /* SIGINT, or shutdown_timeout reached */
};

struct proxy {
    struct event_base *base; /* the main thread's: signals and worker exits */
    struct event *sig_term, *sig_int, *sig_hup;
    int exit_fd;             /* eventfd: each worker adds 1 when its loop ends */
    struct event *worker_exit;

    pthread_mutex_t settings_lock;   /* held while swapping or taking current */
    struct settings *_Atomic current;

    struct worker *workers;
    int worker_count;
    int workers_running;

    pthread_mutex_t reload_lock;      /* one reload at a time: SIGHUP or RELOAD */
    atomic_uint_fast64_t reloads_ok, reloads_failed;

    /* Main thread only. */
    struct evhttp *http;             /* metrics_port: /metrics and /healthz */
    struct listener_rest http_rest;  /* its listener's, when accept fails */
    struct event *stats_timer;       /* log_stats_interval */
    struct totals stats_before;      /* the sums at the last stats line */
    struct timeval stats_at;

    atomic_int stop;                  /* enum proxy_stop */
    atomic_int client_count;          /* across workers, for max_client_conn */
    atomic_uint_fast64_t next_conn_id;
    uint8_t mock_key[SCRAM_KEY_LEN];  /* for the mock secrets of unknown users */
    struct cancel_keys *cancel_keys;  /* the keys given to clients of kept servers */
};

/* Takes ownership of cfg. Builds the settings, binds the listening
 * sockets and starts the workers; false (logged) on failure, after which
 * proxy_free() still cleans up. */
bool proxy_init(struct proxy *p, struct config *cfg);

/* Runs the main thread's loop until every worker has ended; returns the
 * process exit code. */
int proxy_run(struct proxy *p);

void proxy_free(struct proxy *p);

/* For workers. A new reference to the current settings when they are not
 * have, else NULL. */
struct settings *proxy_settings_newer(struct proxy *p, const struct settings *have);

/* Counts a client in if fewer than max are in; false when full. */
bool proxy_client_enter(struct proxy *p, int max);
void proxy_client_leave(struct proxy *p);

uint64_t proxy_next_conn_id(struct proxy *p);

enum proxy_stop proxy_stop_request(const struct proxy *p);

/* A worker's loop has ended (called on its thread, last thing). */
void proxy_worker_ended(struct proxy *p);

/* Re-reads the configuration file (SIGHUP, or the console's RELOAD; from
 * any thread). False when the new file is rejected: why then says why
 * ("FILE:LINE: why"), and the current configuration stays. */
bool proxy_reload(struct proxy *p, char *why, size_t cap);

/* Stops the process as SIGTERM (PROXY_STOP_GRACEFUL) or SIGINT does; from
 * any thread. */
void proxy_request_stop(struct proxy *p, enum proxy_stop how);

#endif
