#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>
#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "cancelkeys.h"
#include "log.h"
#include "worker.h"

#define LISTEN_BACKLOG 1024

static void apply_logging(const struct config *cfg)
{
    log_set_level(cfg->log_level);
    if (!log_set_file(cfg->log_file))
        log_error("cannot open log_file %s: keeping the current log destination", cfg->log_file);
}

/* Tells systemd (Type=notify) what the process is doing; nothing when
 * built without libsystemd or not started by it. */
static void notify_service(const char *state)
{
#ifdef HAVE_SYSTEMD
    sd_notify(0, state);
#else
    (void)state;
#endif
}

/* ---- what workers ask ---------------------------------------------------- */

struct settings *proxy_settings_newer(struct proxy *p, const struct settings *have)
{
    /* Comparing needs no lock: have stays allocated while the caller holds
     * it, so the current one can only equal it by being it. */
    if (atomic_load_explicit(&p->current, memory_order_acquire) == have)
        return NULL;
    pthread_mutex_lock(&p->settings_lock);
    struct settings *s = settings_ref(atomic_load_explicit(&p->current, memory_order_relaxed));
    pthread_mutex_unlock(&p->settings_lock);
    return s;
}

bool proxy_client_enter(struct proxy *p, int max)
{
    int n = atomic_load_explicit(&p->client_count, memory_order_relaxed);

    do {
        if (n >= max)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&p->client_count, &n, n + 1,
                                                    memory_order_relaxed, memory_order_relaxed));
    return true;
}

void proxy_client_leave(struct proxy *p)
{
    atomic_fetch_sub_explicit(&p->client_count, 1, memory_order_relaxed);
}

uint64_t proxy_next_conn_id(struct proxy *p)
{
    return atomic_fetch_add_explicit(&p->next_conn_id, 1, memory_order_relaxed) + 1;
}

enum proxy_stop proxy_stop_request(const struct proxy *p)
{
    return (enum proxy_stop)atomic_load_explicit(&p->stop, memory_order_acquire);
}

void proxy_worker_ended(struct proxy *p)
{
    uint64_t one = 1;

    if (write(p->exit_fd, &one, sizeof(one)) < 0)
        log_error("cannot report a worker's end: %s", strerror(errno));
}

/* ---- listening ----------------------------------------------------------- */

/* One address to listen on. */
struct listen_address {
    struct sockaddr_storage addr;
    socklen_t len;
    bool dual_stack; /* the IPv6 wildcard of "*", taking IPv4 clients too */
};

static int listen_socket(const struct listen_address *a, bool reuseport)
{
    int one = 1, zero = 0;
    int fd = socket(a->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
        (a->dual_stack && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) != 0) ||
        bind(fd, (const struct sockaddr *)&a->addr, a->len) != 0 ||
        listen(fd, LISTEN_BACKLOG) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* Adds ai's addresses to out (n of them so far) unless already there;
 * returns the new count, or -1 when more than out holds. */
static int add_addresses(const struct addrinfo *ai, bool dual_stack,
                         struct listen_address out[WORKER_MAX_LISTENERS], int n)
{
    for (; ai; ai = ai->ai_next) {
        bool seen = false;
        for (int i = 0; i < n && !seen; i++)
            seen = out[i].len == ai->ai_addrlen &&
                   memcmp(&out[i].addr, ai->ai_addr, out[i].len) == 0;
        if (seen)
            continue;
        if (n == WORKER_MAX_LISTENERS)
            return -1;
        memcpy(&out[n].addr, ai->ai_addr, ai->ai_addrlen);
        out[n].len = ai->ai_addrlen;
        out[n].dual_stack = dual_stack;
        n++;
    }
    return n;
}

/* Every address listen_addr names: each item's every address (a host name
 * may have one per family), and for "*" every address of both families,
 * through one IPv6 socket that takes IPv4 clients too (as PostgreSQL's
 * and PgBouncer's "*" do), or IPv4's alone on a machine without IPv6.
 * Returns how many, or -1 (logged). */
static int listen_addresses(const struct config *cfg,
                            struct listen_address out[WORKER_MAX_LISTENERS])
{
    const char *at = cfg->listen_addr;
    char item[CONFIG_ADDR_LEN], port[16];
    int n = 0;

    snprintf(port, sizeof(port), "%d", cfg->listen_port);
    while (config_listen_item(&at, item)) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                  .ai_flags = AI_PASSIVE };
        struct addrinfo *ai = NULL;
        bool wildcard = strcmp(item, "*") == 0, dual_stack = false;
        if (wildcard) {
            int probe = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
            dual_stack = probe >= 0;
            if (probe >= 0)
                close(probe);
            hints.ai_family = dual_stack ? AF_INET6 : AF_INET;
        }
        int rc = getaddrinfo(wildcard ? NULL : item, port, &hints, &ai);
        if (rc != 0) {
            log_error("listen_addr %s: %s", item, gai_strerror(rc));
            return -1;
        }
        n = add_addresses(ai, dual_stack, out, n);
        freeaddrinfo(ai);
        if (n < 0) {
            log_error("listen_addr %s: more than %d addresses", cfg->listen_addr,
                      WORKER_MAX_LISTENERS);
            return -1;
        }
    }
    return n;
}

static void close_sets(struct listen_set sets[], int count)
{
    for (int i = 0; i < count; i++)
        for (int j = 0; j < sets[i].count; j++)
            close(sets[i].fd[j]);
}

/* The sockets of each worker, one per address: with so_reuseport each
 * worker's are its own, and the kernel spreads new connections over them
 * (and over another idemproxy on the same port, for a rolling restart);
 * without, the workers share them and whichever is free first accepts. */
static bool open_listen_sockets(const struct config *cfg, int count, struct listen_set sets[])
{
    struct listen_address addrs[WORKER_MAX_LISTENERS];
    int n = listen_addresses(cfg, addrs);

    if (n < 0)
        return false;
    for (int i = 0; i < count; i++) {
        sets[i].count = 0;
        for (int j = 0; j < n; j++) {
            int fd = i == 0 || cfg->so_reuseport ? listen_socket(&addrs[j], cfg->so_reuseport)
                                                 : fcntl(sets[0].fd[j], F_DUPFD_CLOEXEC, 0);
            if (fd < 0) {
                char host[NI_MAXHOST] = "?";
                getnameinfo((const struct sockaddr *)&addrs[j].addr, addrs[j].len, host,
                            sizeof(host), NULL, 0, NI_NUMERICHOST);
                log_error("cannot listen on %s port %d: %s", host, cfg->listen_port,
                          strerror(errno));
                close_sets(sets, i + 1);
                return false;
            }
            sets[i].fd[sets[i].count++] = fd;
        }
    }
    return true;
}

/* ---- signals ------------------------------------------------------------- */

void proxy_request_stop(struct proxy *p, enum proxy_stop how)
{
    notify_service("STOPPING=1");
    atomic_store_explicit(&p->stop, how, memory_order_release);
    for (int i = 0; i < p->worker_count; i++)
        worker_wake(&p->workers[i]);
}

/* The per-table lines, summed over the workers: the counts so far. */
static void log_table_totals(struct proxy *p)
{
    struct totals t;

    if (!metrics_sum(p, &t))
        return;
    metrics_log_tables(&t);
    metrics_totals_free(&t);
}

bool proxy_reload(struct proxy *p, char *why, size_t cap)
{
    char err[CONFIG_ERR_LEN], changed[128];
    struct timespec now;

    pthread_mutex_lock(&p->reload_lock);
    clock_gettime(CLOCK_MONOTONIC, &now);
    char state[64];
    snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)now.tv_sec * 1000000ull + (unsigned long long)now.tv_nsec / 1000);
    notify_service(state);

    struct settings *old = atomic_load_explicit(&p->current, memory_order_relaxed);
    struct config *cfg = config_load(old->cfg->path, err);
    struct settings *next = NULL;
    if (cfg) {
        if (config_restart_needed(old->cfg, cfg, changed, sizeof(changed)))
            log_warning("reload: %s changed, which only a restart applies", changed);
        next = settings_build(cfg, old);
        if (!next)
            snprintf(err, sizeof(err), "out of memory");
    }
    /* Reopened whatever the outcome: log rotation may have moved it away. */
    apply_logging(next ? cfg : old->cfg);
    if (!next) {
        atomic_fetch_add(&p->reloads_failed, 1);
        log_error("reload failed, keeping the current configuration: %s", err);
        snprintf(why, cap, "%s", err);
    } else {
        log_table_totals(p);
        pthread_mutex_lock(&p->settings_lock);
        atomic_store_explicit(&p->current, next, memory_order_release);
        pthread_mutex_unlock(&p->settings_lock);
        settings_unref(old);
        atomic_fetch_add(&p->reloads_ok, 1);
        log_info("configuration reloaded from %s", next->cfg->path);
        /* Each worker moves over now rather than at its next connection. */
        for (int i = 0; i < p->worker_count; i++)
            worker_wake(&p->workers[i]);
    }
    notify_service("READY=1");
    pthread_mutex_unlock(&p->reload_lock);
    return next != NULL;
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct proxy *p = arg;
    (void)what;

    switch (sig) {
    case SIGTERM:
        log_info("SIGTERM received: no new clients; each open one is closed when idle "
                 "(at most shutdown_timeout)");
        proxy_request_stop(p, PROXY_STOP_GRACEFUL);
        break;
    case SIGINT:
        log_info("SIGINT received: exiting at once");
        proxy_request_stop(p, PROXY_STOP_NOW);
        break;
    case SIGHUP: {
        char why[CONFIG_ERR_LEN];
        proxy_reload(p, why, sizeof(why));
        break;
    }
    default:
        break;
    }
}

static void stats_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy *p = arg;
    struct totals now;
    struct timeval at, elapsed;
    (void)fd;
    (void)what;

    gettimeofday(&at, NULL);
    if (!metrics_sum(p, &now))
        return;
    timersub(&at, &p->stats_at, &elapsed);
    metrics_log_summary(&now, &p->stats_before, (double)elapsed.tv_sec + elapsed.tv_usec / 1e6);
    metrics_totals_free(&p->stats_before);
    p->stats_before = now;
    p->stats_at = at;
}

static bool start_stats_timer(struct proxy *p, int seconds)
{
    struct timeval every = { seconds, 0 };

    if (seconds == 0)
        return true;
    gettimeofday(&p->stats_at, NULL);
    p->stats_timer = event_new(p->base, -1, EV_PERSIST, stats_cb, p);
    return p->stats_timer && event_add(p->stats_timer, &every) == 0;
}

static void worker_exit_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy *p = arg;
    uint64_t n = 0;
    (void)what;

    if (read(fd, &n, sizeof(n)) != sizeof(n))
        return;
    p->workers_running -= (int)n;
    if (p->workers_running <= 0)
        event_base_loopexit(p->base, NULL);
}

/* ---- life ---------------------------------------------------------------- */

static int worker_count(const struct config *cfg)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);

    if (cfg->workers > 0)
        return cfg->workers;
    if (cores < 1)
        return 1;
    return cores > CONFIG_MAX_WORKERS ? CONFIG_MAX_WORKERS : (int)cores;
}

/* Workers run with the process signals blocked, so that the kernel
 * delivers them to the main thread's loop. */
static bool start_workers(struct proxy *p)
{
    sigset_t all, old;

    sigemptyset(&all);
    sigaddset(&all, SIGTERM);
    sigaddset(&all, SIGINT);
    sigaddset(&all, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    bool ok = true;
    for (int i = 0; i < p->worker_count && ok; i++) {
        ok = worker_start(&p->workers[i]);
        if (ok)
            p->workers_running++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return ok;
}

bool proxy_init(struct proxy *p, struct config *cfg)
{
    memset(p, 0, sizeof(*p));
    p->exit_fd = -1;
    pthread_mutex_init(&p->settings_lock, NULL);
    pthread_mutex_init(&p->reload_lock, NULL);
    apply_logging(cfg);
    struct settings *s = settings_build(cfg, NULL);
    if (!s)
        return false;
    atomic_store(&p->current, s);
    p->cancel_keys = cancel_keys_new();
    if (!p->cancel_keys) {
        log_error("out of memory");
        return false;
    }
    if (RAND_bytes(p->mock_key, sizeof(p->mock_key)) != 1) {
        log_error("no random bytes for the mock secrets");
        return false;
    }
    p->base = event_base_new();
    p->exit_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!p->base || p->exit_fd < 0) {
        log_error("cannot create the event loop");
        return false;
    }
    p->sig_term = evsignal_new(p->base, SIGTERM, signal_cb, p);
    p->sig_int = evsignal_new(p->base, SIGINT, signal_cb, p);
    p->sig_hup = evsignal_new(p->base, SIGHUP, signal_cb, p);
    p->worker_exit = event_new(p->base, p->exit_fd, EV_READ | EV_PERSIST, worker_exit_cb, p);
    if (!p->sig_term || !p->sig_int || !p->sig_hup || !p->worker_exit ||
        evsignal_add(p->sig_term, NULL) || evsignal_add(p->sig_int, NULL) ||
        evsignal_add(p->sig_hup, NULL) || event_add(p->worker_exit, NULL)) {
        log_error("cannot set up the event loop");
        return false;
    }

    int count = worker_count(cfg);
    struct listen_set sets[CONFIG_MAX_WORKERS];
    p->workers = calloc((size_t)count, sizeof(*p->workers));
    if (!p->workers) {
        log_error("out of memory");
        return false;
    }
    if (!open_listen_sockets(cfg, count, sets))
        return false;
    for (int i = 0; i < count; i++) {
        p->worker_count++;
        if (!worker_init(&p->workers[i], p, i + 1, s, &sets[i])) {
            close_sets(sets + i + 1, count - i - 1);
            return false;
        }
    }
    if (!start_workers(p)) {
        proxy_request_stop(p, PROXY_STOP_NOW);
        return false;
    }
    if (!metrics_http_start(p) || !start_stats_timer(p, cfg->log_stats_interval)) {
        proxy_request_stop(p, PROXY_STOP_NOW);
        return false;
    }
    notify_service("READY=1");
    char name[256];
    log_info("idemproxy %s listening on %s:%d (%d worker%s%s), server %s", PACKAGE_VERSION,
             cfg->listen_addr, cfg->listen_port, count, count == 1 ? "" : "s",
             cfg->so_reuseport ? ", so_reuseport" : "", server_name(cfg, name, sizeof(name)));
    return true;
}

int proxy_run(struct proxy *p)
{
    struct totals t;

    event_base_dispatch(p->base);
    for (int i = 0; i < p->worker_count; i++)
        worker_join(&p->workers[i]);
    if (!metrics_sum(p, &t)) {
        log_info("exiting");
        return 0;
    }
    metrics_log_tables(&t);
    log_info("exiting: %llu clients served, %llu oversized messages streamed unread, "
             "%llu protocol violations, %llu request-queue resyncs",
             (unsigned long long)t.clients_total, (unsigned long long)t.oversized_inspected,
             (unsigned long long)t.protocol_violations, (unsigned long long)t.track_desyncs);
    metrics_totals_free(&t);
    return 0;
}

void proxy_free(struct proxy *p)
{
    metrics_http_free(p);
    if (p->stats_timer)
        event_free(p->stats_timer);
    metrics_totals_free(&p->stats_before);
    for (int i = 0; i < p->worker_count; i++)
        worker_free(&p->workers[i]);
    free(p->workers);
    if (p->sig_term)
        event_free(p->sig_term);
    if (p->sig_int)
        event_free(p->sig_int);
    if (p->sig_hup)
        event_free(p->sig_hup);
    if (p->worker_exit)
        event_free(p->worker_exit);
    if (p->exit_fd >= 0)
        close(p->exit_fd);
    if (p->base)
        event_base_free(p->base);
    settings_unref(atomic_load(&p->current));
    cancel_keys_free(p->cancel_keys);
    pthread_mutex_destroy(&p->settings_lock);
    pthread_mutex_destroy(&p->reload_lock);
    memset(p, 0, sizeof(*p));
}
