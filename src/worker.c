#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/listener.h>

#include "authquery.h"
#include "conn.h"
#include "log.h"
#include "pgproto.h"
#include "pool.h"
#include "proxy.h"
#include "ring.h"

const char *server_name(const struct config *cfg, char *buf, size_t len)
{
    if (cfg->server_host[0] == '/')
        snprintf(buf, len, "%s/.s.PGSQL.%d", cfg->server_host, cfg->server_port);
    else
        snprintf(buf, len, "%s:%d", cfg->server_host, cfg->server_port);
    return buf;
}

bool worker_connect_server(struct worker *w, struct bufferevent *bev, const char **why)
{
    const struct config *cfg = w->cfg;

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
    if (bufferevent_socket_connect_hostname(bev, w->dns, AF_UNSPEC, cfg->server_host,
                                            cfg->server_port) != 0) {
        int dns_err = bufferevent_socket_get_dns_error(bev);
        *why = dns_err ? evutil_gai_strerror(dns_err)
                       : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR());
        return false;
    }
    return true;
}

/* ---- rules and settings ------------------------------------------------ */

const double latency_bucket_us[LATENCY_BUCKETS - 1] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000, 100000,
};

void worker_observe_latency(struct worker *w, enum flow flow, uint64_t ns)
{
    struct latency_histogram *h = &w->counters.latency[flow];
    double us = (double)ns / 1000.0;
    int b = 0;

    while (b < LATENCY_BUCKETS - 1 && us > latency_bucket_us[b])
        b++;
    counter_add(&h->bucket[b], 1);
    counter_add(&h->sum_ns, ns);
    counter_add(&h->count, 1);
}

/* The worker's counters for table t, made on first use. NULL when out of
 * memory. */
static struct table_counters *counters_for(struct worker *w, const struct table_rule *t)
{
    struct table_stats *head = atomic_load_explicit(&w->tables, memory_order_relaxed);

    for (struct table_stats *ts = head; ts; ts = ts->next) {
        if (strcmp(ts->schema, t->schema) == 0 && strcmp(ts->name, t->name) == 0)
            return &ts->counters;
    }
    struct table_stats *ts = calloc(1, sizeof(*ts));
    if (!ts || !(ts->schema = strdup(t->schema)) || !(ts->name = strdup(t->name))) {
        if (ts)
            free(ts->schema);
        free(ts);
        return NULL;
    }
    ts->next = head;
    atomic_store_explicit(&w->tables, ts, memory_order_release);
    return &ts->counters;
}

/* Rules for cfg counting in the worker's own per-table counters. */
static struct ruleset *worker_rules_for(struct worker *w, struct config *cfg)
{
    struct table_counters **counters = calloc(cfg->table_count + 1, sizeof(*counters));
    struct ruleset *rs = NULL;
    size_t i = 0;

    if (counters) {
        while (i < cfg->table_count && (counters[i] = counters_for(w, &cfg->tables[i])))
            i++;
        const struct ruleset_counters kept = { counters, w->counters.texts_of_no_table,
                                               &w->counters.scopes };
        if (i == cfg->table_count)
            rs = ruleset_new(config_ref(cfg), &kept);
    }
    free(counters);
    return rs;
}

/* Closes the server connections the worker keeps for reuse, and
 * auth_user's kept for auth_query; for_good: none is kept from now on. */
static void close_kept(struct worker *w, bool for_good)
{
    pool_close_all(w->pool);
    authquery_keep_close_all(w->auth_keep, for_good);
}

/* Makes s (a reference the worker takes over) the worker's settings, with
 * rules of its own. Connections move to the new rules when they are idle;
 * until then they keep a reference to the old ones. */
static bool adopt_settings(struct worker *w, struct settings *s)
{
    struct ruleset *rs = worker_rules_for(w, s->cfg);

    if (!rs) {
        log_error("[worker %d] out of memory applying the new configuration", w->index);
        settings_unref(s);
        return false;
    }
    ruleset_unref(w->rules);
    settings_unref(w->settings);
    w->settings = s;
    w->cfg = s->cfg;
    w->rules = rs;
    w->generation++;
    worker_publish_checks(w);
    /* The servers kept may be another server's, or logged in under rules
     * that changed; auth_user's too, or under another password. */
    close_kept(w, false);
    return true;
}

static void free_checks(char **checks, size_t n)
{
    for (size_t i = 0; checks && i < n; i++)
        free(checks[i]);
    free(checks);
}

void worker_publish_checks(struct worker *w)
{
    size_t n = w->cfg->table_count;
    char **checks = calloc(n ? n : 1, sizeof(*checks));

    for (size_t i = 0; checks && i < n; i++) {
        const char *check = ruleset_table_check(w->rules, i);
        if (check && !(checks[i] = strdup(check))) {
            free_checks(checks, n);
            checks = NULL;
        }
    }
    if (!checks)
        return;
    pthread_mutex_lock(&w->checks_lock);
    char **old = w->checks;
    size_t old_count = w->check_count;
    w->checks = checks;
    w->check_count = n;
    w->checks_of = w->settings;
    pthread_mutex_unlock(&w->checks_lock);
    free_checks(old, old_count);
}

bool worker_table_check(struct worker *w, const struct settings *settings, size_t table,
                        char *buf, size_t cap)
{
    bool known;

    pthread_mutex_lock(&w->checks_lock);
    known = w->checks_of == settings && table < w->check_count && w->checks[table];
    if (known)
        snprintf(buf, cap, "%s", w->checks[table]);
    pthread_mutex_unlock(&w->checks_lock);
    return known;
}

void worker_refresh(struct worker *w)
{
    struct settings *newer = proxy_settings_newer(w->proxy, w->settings);

    if (newer)
        adopt_settings(w, newer);
}

/* ---- accepting and placing clients ------------------------------------- */

struct handover {
    struct handover *next;
    evutil_socket_t fd;
    struct sockaddr_storage addr;
    int addrlen;
};

/* Starts serving a client whose place on w is already in w->load. */
static void serve_client(struct worker *w, evutil_socket_t fd, const struct sockaddr *addr,
                         int addrlen)
{
    if (!conn_accept(w, fd, addr, addrlen))
        atomic_fetch_sub_explicit(&w->load, 1, memory_order_relaxed);
}

/* The worker with the fewest clients; w itself on a tie, which saves a
 * hand-over. Two workers placing at once may pick the same one: the next
 * placements even it out. */
static struct worker *least_loaded(struct worker *w)
{
    struct proxy *p = w->proxy;
    struct worker *best = w;
    int best_load = atomic_load_explicit(&w->load, memory_order_relaxed);

    for (int i = 0; i < p->worker_count; i++) {
        int load = atomic_load_explicit(&p->workers[i].load, memory_order_relaxed);
        if (load < best_load) {
            best = &p->workers[i];
            best_load = load;
        }
    }
    return best;
}

/* Queues the client in to's inbox and wakes it. False when to takes no
 * more (it is stopping) or memory ran out: the caller keeps the client. */
static bool hand_over(struct worker *to, evutil_socket_t fd, const struct sockaddr *addr,
                      int addrlen)
{
    struct handover *h = malloc(sizeof(*h));

    if (!h || addrlen < 0 || (size_t)addrlen > sizeof(h->addr)) {
        free(h);
        return false;
    }
    h->next = NULL;
    h->fd = fd;
    memcpy(&h->addr, addr, (size_t)addrlen);
    h->addrlen = addrlen;
    pthread_mutex_lock(&to->inbox_lock);
    bool open = !to->inbox_closed;
    if (open) {
        *to->inbox_tail = h;
        to->inbox_tail = &h->next;
    }
    pthread_mutex_unlock(&to->inbox_lock);
    if (!open) {
        free(h);
        return false;
    }
    worker_wake(to);
    return true;
}

/* A client w accepted goes to the worker with the fewest clients. While w
 * shuts down it keeps what it accepts: those clients only get to finish. */
static void place_client(struct worker *w, evutil_socket_t fd, const struct sockaddr *addr,
                         int addrlen)
{
    struct worker *to = w->shutting_down ? w : least_loaded(w);

    if (to != w) {
        /* Counted before it is queued, so the next placement sees it. */
        atomic_fetch_add_explicit(&to->load, 1, memory_order_relaxed);
        if (hand_over(to, fd, addr, addrlen)) {
            log_debug("[worker %d] client handed to worker %d", w->index, to->index);
            return;
        }
        atomic_fetch_sub_explicit(&to->load, 1, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&w->load, 1, memory_order_relaxed);
    serve_client(w, fd, addr, addrlen);
}

/* Serves the clients other workers placed here. With close_inbox none
 * come after: the worker is stopping. */
static void take_inbox(struct worker *w, bool close_inbox)
{
    pthread_mutex_lock(&w->inbox_lock);
    struct handover *h = w->inbox;
    w->inbox = NULL;
    w->inbox_tail = &w->inbox;
    if (close_inbox)
        w->inbox_closed = true;
    pthread_mutex_unlock(&w->inbox_lock);
    for (struct handover *next; h; h = next) {
        next = h->next;
        serve_client(w, h->fd, (struct sockaddr *)&h->addr, h->addrlen);
        free(h);
    }
}

static void accept_cb(struct evconnlistener *listener, evutil_socket_t fd,
                      struct sockaddr *addr, int addrlen, void *arg)
{
    struct worker *w = arg;
    (void)listener;

    worker_refresh(w);
    place_client(w, fd, addr, addrlen);
}

/* Out of descriptors, accept fails and leaves the client queued. Gives up
 * the spare to take each client queued on lfd in turn and tell it why, as
 * PostgreSQL tells one client too many. */
static void refuse_queued(struct worker *w, evutil_socket_t lfd)
{
    static const char why[] = "sorry, too many clients already: idemproxy is out of file "
                              "descriptors";
    uint8_t msg[160];
    size_t len = pg_error_build(msg, sizeof(msg), "FATAL", "53300", why);

    if (w->spare_fd < 0 && (w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
        return;
    close(w->spare_fd);
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break;
        if (len <= sizeof(msg))
            (void)!send(fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        close(fd);
        counter_add(&w->counters.refused[REFUSED_NO_DESCRIPTOR], 1);
    }
    w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* accept failed for want of a resource (libevent retries EINTR and
 * EAGAIN itself): refuses the queued clients while a spare descriptor
 * allows, else rests (listener_rest.h). */
static void accept_error_cb(struct evconnlistener *listener, void *arg)
{
    struct worker *w = arg;
    int err = EVUTIL_SOCKET_ERROR();
    bool out_of_fds = err == EMFILE || err == ENFILE;
    struct listener_rest *rest = w->listeners, *end = w->listeners + w->listener_count;

    while (rest < end && rest->listener != listener)
        rest++;
    if (rest == end)
        return;
    if (out_of_fds)
        refuse_queued(w, evconnlistener_get_fd(listener));
    if (!out_of_fds || w->spare_fd < 0)
        listener_rest_pause(rest);
    if (!listener_rest_log_due(rest))
        return;
    if (out_of_fds)
        log_error("[worker %d] accept failed: %s: refusing clients (53300) until descriptors "
                  "are free; raise the limit on open files (ulimit -n, LimitNOFILE) or lower "
                  "max_client_conn", w->index, evutil_socket_error_to_string(err));
    else
        log_error("[worker %d] accept failed: %s; retrying every %d ms", w->index,
                  evutil_socket_error_to_string(err), LISTENER_REST_MS);
}

static void close_listeners(struct worker *w)
{
    for (int i = 0; i < w->listener_count; i++) {
        struct evconnlistener *listener = w->listeners[i].listener;
        listener_rest_free(&w->listeners[i]);
        evconnlistener_free(listener);
    }
    w->listener_count = 0;
}

/* ---- stopping ---------------------------------------------------------- */

static void stop_now(struct worker *w)
{
    take_inbox(w, true);
    close_kept(w, true);
    if (w->conn_count)
        log_warning("[worker %d] closing %d connection(s) still busy", w->index, w->conn_count);
    for (struct conn *c = w->conns, *next; c; c = next) {
        next = conn_next(c);
        conn_terminate(c);
    }
    event_base_loopexit(w->base, NULL);
}

static void shutdown_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    log_warning("[worker %d] shutdown_timeout reached", w->index);
    stop_now(w);
}

/* Takes in every connection the kernel has queued on a listener before
 * it closes: closing would reset them, and with so_reuseport they came to
 * this process rather than to the one that goes on. */
static void drain_accept_queue(struct worker *w, evutil_socket_t lfd)
{
    for (;;) {
        struct sockaddr_storage addr;
        socklen_t len = sizeof(addr);
        int fd = accept4(lfd, (struct sockaddr *)&addr, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;
        }
        place_client(w, fd, (struct sockaddr *)&addr, (int)len);
    }
}

/* SIGTERM: no new clients; each open one is closed once it is idle. */
static void begin_shutdown(struct worker *w)
{
    if (w->shutting_down)
        return;
    w->shutting_down = true;
    close_kept(w, true);
    take_inbox(w, true);
    for (int i = 0; i < w->listener_count; i++)
        drain_accept_queue(w, evconnlistener_get_fd(w->listeners[i].listener));
    close_listeners(w);
    if (w->conn_count == 0) {
        event_base_loopexit(w->base, NULL);
        return;
    }
    log_info("[worker %d] waiting for %d connection(s) to become idle (at most %d s)", w->index,
             w->conn_count, w->cfg->shutdown_timeout);
    for (struct conn *c = w->conns, *next; c; c = next) {
        next = conn_next(c);
        conn_shutdown(c);
    }
    struct timeval timeout = { w->cfg->shutdown_timeout, 0 };
    w->shutdown_timer = evtimer_new(w->base, shutdown_timeout_cb, w);
    if (w->shutdown_timer)
        evtimer_add(w->shutdown_timer, &timeout);
}

size_t worker_pool_max(const struct worker *w)
{
    size_t workers = (size_t)w->proxy->worker_count;
    size_t max = (size_t)w->cfg->max_idle_servers;

    return workers ? (max + workers - 1) / workers : max;
}

void worker_conn_gone(struct worker *w)
{
    w->conn_count--;
    atomic_fetch_sub_explicit(&w->load, 1, memory_order_relaxed);
    if (w->shutting_down && w->conn_count == 0)
        event_base_loopexit(w->base, NULL);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    uint64_t n;
    (void)what;

    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        log_error("[worker %d] wake-up read failed: %s", w->index, strerror(errno));
    worker_refresh(w);
    take_inbox(w, false);
    switch (proxy_stop_request(w->proxy)) {
    case PROXY_RUNNING:
        break;
    case PROXY_STOP_GRACEFUL:
        begin_shutdown(w);
        break;
    case PROXY_STOP_NOW:
        stop_now(w);
        break;
    }
}

void worker_wake(struct worker *w)
{
    uint64_t one = 1;

    /* Fails only when the counter is saturated: the worker is awake anyway. */
    if (write(w->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        log_error("[worker %d] cannot wake: %s", w->index, strerror(errno));
}

/* ---- the ring ---------------------------------------------------------- */

/* How often io_uring = auto weighs the ring: often enough to follow a
 * load that changes, seldom enough that each look sees thousands of reads
 * under load and costs nothing. */
#define RING_LOOK_MS 200

/* The on_ring gauge is the one record of the choice: this thread reads
 * it as the other threads do. */
static bool ring_in_use(const struct worker *w)
{
    return counter_get(&w->counters.on_ring) != 0;
}

struct ring *worker_session_ring(const struct worker *w)
{
    return ring_in_use(w) ? w->ring : NULL;
}

static void set_ring_in_use(struct worker *w, bool use)
{
    if (use)
        counter_add(&w->counters.on_ring, 1);
    else
        counter_sub(&w->counters.on_ring, 1);
    for (struct conn *c = w->conns; c; c = conn_next(c))
        conn_follow_ring(c);
}

/* The sessions' reads that moved bytes on: each is one relay pass, which
 * the latency histograms already count. */
static uint64_t relayed_reads(const struct worker *w)
{
    return counter_get(&w->counters.latency[FLOW_TO_SERVER].count) +
           counter_get(&w->counters.latency[FLOW_TO_CLIENT].count);
}

/* io_uring = auto: the sessions follow what the last interval says pays. */
static void look_at_ring(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct rusage ru;
    (void)fd;
    (void)what;

    if (getrusage(RUSAGE_THREAD, &ru) != 0)
        return;
    uint64_t total = relayed_reads(w), sleeps = (uint64_t)ru.ru_nvcsw;
    uint64_t reads = total - w->reads_seen, slept = sleeps - w->sleeps_seen;
    bool use = ring_worth_using(ring_in_use(w), reads, slept);
    w->reads_seen = total;
    w->sleeps_seen = sleeps;
    if (use == ring_in_use(w))
        return;
    log_debug("[worker %d] sessions %s io_uring: %llu reads, %llu sleeps in %d ms", w->index,
              use ? "move to" : "leave", (unsigned long long)reads, (unsigned long long)slept,
              RING_LOOK_MS);
    set_ring_in_use(w, use);
}

/* The ring belongs to the thread that submits to it. With io_uring = auto
 * the sessions start on plain calls, and a timer weighs the ring. */
static void start_ring(struct worker *w)
{
    char why[160];

    if (w->cfg->io_uring == RING_OFF)
        return;
    w->ring = ring_new(w->base, why, sizeof(why));
    if (!w->ring) {
        log_info("[worker %d] io_uring not in use, plain system calls instead: %s", w->index,
                 why);
        return;
    }
    log_info("[worker %d] io_uring %s: %s", w->index,
             w->cfg->io_uring == RING_AUTO ? "in use while the load makes it pay" : "in use",
             ring_mode(w->ring));
    if (w->cfg->io_uring == RING_ON) {
        set_ring_in_use(w, true);
        return;
    }
    struct timeval every = { 0, RING_LOOK_MS * 1000 };
    w->ring_timer = event_new(w->base, -1, EV_PERSIST, look_at_ring, w);
    if (!w->ring_timer || event_add(w->ring_timer, &every) != 0)
        log_warning("[worker %d] cannot weigh io_uring: its sessions use plain system calls",
                    w->index);
}

/* ---- the thread -------------------------------------------------------- */

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    start_ring(w);
    event_base_dispatch(w->base);
    /* The sockets that use the ring go before it. */
    while (w->conns)
        conn_destroy(w->conns);
    close_kept(w, true);
    if (w->ring_timer)
        event_free(w->ring_timer);
    w->ring_timer = NULL;
    ring_free(w->ring);
    w->ring = NULL;
    proxy_worker_ended(w->proxy);
    return NULL;
}

static void close_from(const struct listen_set *listens, int from)
{
    for (int i = from; i < listens->count; i++)
        close(listens->fd[i]);
}

/* A listener on each socket of listens, which it takes (closing those left
 * when it fails). */
static bool listen_on(struct worker *w, const struct listen_set *listens)
{
    for (int i = 0; i < listens->count; i++) {
        struct evconnlistener *listener =
            evconnlistener_new(w->base, accept_cb, w, LEV_OPT_CLOSE_ON_FREE, -1, listens->fd[i]);
        if (!listener) {
            log_error("[worker %d] cannot accept: %s", w->index, strerror(errno));
            close_from(listens, i);
            return false;
        }
        evconnlistener_set_error_cb(listener, accept_error_cb);
        struct listener_rest *rest = &w->listeners[w->listener_count++];
        if (!listener_rest_init(rest, w->base, listener)) {
            log_error("[worker %d] out of memory", w->index);
            close_from(listens, i + 1);
            return false;
        }
    }
    return true;
}

bool worker_init(struct worker *w, struct proxy *p, int index, struct settings *settings,
                 const struct listen_set *listens)
{
    memset(w, 0, sizeof(*w));
    w->proxy = p;
    w->index = index;
    w->wake_fd = -1;
    w->spare_fd = -1;
    pthread_mutex_init(&w->conns_lock, NULL);
    pthread_mutex_init(&w->inbox_lock, NULL);
    pthread_mutex_init(&w->checks_lock, NULL);
    w->inbox_tail = &w->inbox;
    if (!adopt_settings(w, settings_ref(settings))) {
        close_from(listens, 0);
        return false;
    }
    w->base = event_base_new();
    if (!w->base) {
        close_from(listens, 0);
        log_error("[worker %d] cannot create an event loop", index);
        return false;
    }
    if (!listen_on(w, listens))
        return false;
    w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    w->dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                         EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!w->dns) {
        /* No resolv.conf: addresses and /etc/hosts names still work. */
        w->dns = evdns_base_new(w->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    }
    w->pool = pool_new(w->base, &w->counters.servers_idle);
    w->auth_keep = authquery_keep_new(w->base, &w->counters.auth_query_idle);
    w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->wake_fd >= 0)
        w->wake = event_new(w->base, w->wake_fd, EV_READ | EV_PERSIST, wake_cb, w);
    if (!w->dns || !w->pool || !w->auth_keep || !w->wake || w->spare_fd < 0 ||
        event_add(w->wake, NULL) != 0) {
        log_error("[worker %d] cannot set up its event loop", index);
        return false;
    }
    return true;
}

bool worker_start(struct worker *w)
{
    int rc = pthread_create(&w->thread, NULL, worker_main, w);

    if (rc != 0) {
        log_error("[worker %d] cannot start its thread: %s", w->index, strerror(rc));
        return false;
    }
    w->running = true;
    return true;
}

void worker_join(struct worker *w)
{
    if (w->running)
        pthread_join(w->thread, NULL);
    w->running = false;
}

void worker_free(struct worker *w)
{
    worker_join(w);
    while (w->conns)
        conn_destroy(w->conns);
    /* Placed here by a worker that ran on after this one failed to start. */
    for (struct handover *h = w->inbox, *next; h; h = next) {
        next = h->next;
        evutil_closesocket(h->fd);
        free(h);
    }
    close_listeners(w);
    if (w->spare_fd >= 0)
        close(w->spare_fd);
    pool_free(w->pool);
    authquery_keep_free(w->auth_keep);
    if (w->shutdown_timer)
        event_free(w->shutdown_timer);
    if (w->wake)
        event_free(w->wake);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    if (w->dns)
        evdns_base_free(w->dns, 0);
    if (w->base)
        event_base_free(w->base);
    ruleset_unref(w->rules);
    settings_unref(w->settings);
    params_free(&w->query_params);
    pthread_mutex_destroy(&w->conns_lock);
    pthread_mutex_destroy(&w->inbox_lock);
    pthread_mutex_destroy(&w->checks_lock);
    free_checks(w->checks, w->check_count);
    for (struct table_stats *ts = atomic_load(&w->tables), *next; ts; ts = next) {
        next = ts->next;
        free(ts->schema);
        free(ts->name);
        free(ts);
    }
    memset(w, 0, sizeof(*w));
}
