#include "pool.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "hashtable.h"
#include "log.h"
#include "pgproto.h"

/* How long the reset may take before the server is given up. */
#define RESET_SECONDS 10
/* A kept server's messages are small; a bigger one ends it. */
#define KEPT_MSG_MAX (64 * 1024)

#define RESET_QUERY "DISCARD ALL"

enum kept_state {
    KEPT_RESETTING, /* DISCARD ALL went; its ReadyForQuery is awaited */
    KEPT_IDLE,      /* ready for the next client */
};

struct bucket;

struct kept {
    struct kept *prev, *next; /* in its bucket, newest first */
    struct bucket *bucket;
    struct pool *pool;
    enum kept_state state;
    bool reset_failed;        /* the reset answered with an error */
    int idle_timeout;         /* seconds */
    time_t ends;              /* its server_lifetime ends */
    struct pool_server server;
    struct event *timer;
};

/* The servers kept for one StartupMessage. */
struct bucket {
    UT_hash_handle hh;
    struct kept *servers;
    size_t key_len;
    uint8_t key[];
};

struct pool {
    struct event_base *base;
    struct counter *idle;
    struct bucket *buckets;
    size_t size;
};

struct pool *pool_new(struct event_base *base, struct counter *idle)
{
    struct pool *p = calloc(1, sizeof(*p));

    if (!p)
        return NULL;
    p->base = base;
    p->idle = idle;
    return p;
}

/* A bucket goes once it keeps no server. */
static void drop_if_empty(struct pool *p, struct bucket *b)
{
    if (!b->servers) {
        HASH_DELETE(hh, p->buckets, b);
        free(b);
    }
}

/* Takes k out of its bucket (and the bucket out of the pool once empty). */
static void unlink_kept(struct kept *k)
{
    struct bucket *b = k->bucket;
    struct pool *p = k->pool;

    if (k->prev)
        k->prev->next = k->next;
    else
        b->servers = k->next;
    if (k->next)
        k->next->prev = k->prev;
    drop_if_empty(p, b);
    event_free(k->timer);
    p->size--;
    counter_sub(p->idle, 1);
    free(k);
}

/* The backend's process ID, for log lines. */
static unsigned backend_pid(const struct pool_server *server)
{
    return pg_get_u32(server->welcome.key);
}

/* Ends a kept server: a Terminate first when it can still hear one, so
 * the backend ends as after any client's goodbye. */
static void close_kept(struct kept *k, bool terminate, const char *why)
{
    struct sock *s = k->server.sock;

    log_debug("kept server (backend %u) closed: %s", backend_pid(&k->server), why);
    if (terminate) {
        evbuffer_add(sock_output(s), PG_TERMINATE, sizeof(PG_TERMINATE));
        sock_flush(s);
    }
    sock_free(s);
    welcome_free(&k->server.welcome);
    unlink_kept(k);
}

/* Seconds until an idle kept server goes: server_idle_timeout, or less
 * when its lifetime ends first. */
static int idle_seconds(const struct kept *k)
{
    time_t left = k->ends - time(NULL);

    return left < k->idle_timeout ? (left > 0 ? (int)left : 0) : k->idle_timeout;
}

static void arm(struct kept *k, int seconds)
{
    struct timeval tv = { seconds, 0 };
    evtimer_add(k->timer, &tv);
}

/* One whole message from a kept server. False when the server must go. */
static bool kept_msg(struct kept *k, const struct pg_msg *m)
{
    switch (m->type) {
    case 'S':
        welcome_note(&k->server.welcome, m->type, m->body, m->body_len);
        return true;
    case 'N': /* a notice of the reset, or of the server's own */
    case 'A': /* a notification sent before UNLISTEN * took effect */
        return true;
    }
    if (k->state != KEPT_RESETTING)
        return false;
    switch (m->type) {
    case 'C':
        return true;
    case 'E':
        k->reset_failed = true;
        return true;
    case 'Z':
        if (k->reset_failed || pg_ready_status(m->body, m->body_len) != 'I')
            return false;
        k->state = KEPT_IDLE;
        return true;
    default:
        return false;
    }
}

static void kept_read(struct kept *k)
{
    struct evbuffer *in = sock_input(k->server.sock);
    size_t len = evbuffer_get_length(in);
    const uint8_t *buf = len ? evbuffer_pullup(in, -1) : NULL;
    size_t at = 0;
    struct pg_msg m;
    size_t used;
    enum kept_state was = k->state;

    while (buf) {
        enum pg_next next = pg_msg_next(buf + at, len - at, &m, &used);
        if (next == PG_NEXT_MORE)
            break;
        if (next == PG_NEXT_BAD || !kept_msg(k, &m)) {
            close_kept(k, next != PG_NEXT_BAD, "an unexpected message");
            return;
        }
        at += used;
    }
    evbuffer_drain(in, at);
    if (len - at > KEPT_MSG_MAX || !welcome_complete(&k->server.welcome)) {
        close_kept(k, true, "an oversized message or a lost setting");
        return;
    }
    if (was == KEPT_RESETTING && k->state == KEPT_IDLE) {
        log_debug("kept server (backend %u) reset: ready for the next client",
                  backend_pid(&k->server));
        arm(k, idle_seconds(k));
    }
}

static void kept_cb(struct sock *s, enum sock_event event, void *arg)
{
    struct kept *k = arg;
    (void)s;

    switch (event) {
    case SOCK_READ:
        kept_read(k);
        return;
    case SOCK_DRAINED:
    case SOCK_CONNECTED:
        return;
    case SOCK_EOF:
        close_kept(k, false, "the server closed the connection");
        return;
    case SOCK_ERROR:
    case SOCK_TIMEOUT:
    case SOCK_CLOSED:
        close_kept(k, false, sock_error(k->server.sock));
        return;
    }
}

static void kept_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct kept *k = arg;
    (void)fd;
    (void)what;

    close_kept(k, true, k->state == KEPT_RESETTING ? "the reset took too long"
                        : time(NULL) >= k->ends  ? "server_lifetime reached"
                                                 : "server_idle_timeout reached");
}

static struct bucket *find_bucket(const struct pool *p, const uint8_t *key, size_t len)
{
    struct bucket *b;

    HASH_FIND(hh, p->buckets, key, len, b);
    return b;
}

static struct bucket *bucket_for(struct pool *p, const uint8_t *key, size_t len)
{
    struct bucket *b = find_bucket(p, key, len);

    if (b)
        return b;
    b = calloc(1, sizeof(*b) + len);
    if (!b)
        return NULL;
    b->key_len = len;
    memcpy(b->key, key, len);
    HASH_ADD(hh, p->buckets, key, len, b);
    return b;
}

bool pool_park(struct pool *p, const uint8_t *startup, size_t len, struct pool_server *server,
               size_t max, int idle_timeout, int lifetime)
{
    uint8_t reset[32];
    size_t reset_len = pg_build_query(reset, sizeof(reset), RESET_QUERY);
    time_t ends = server->born + lifetime;

    if (p->size >= max || !welcome_complete(&server->welcome))
        return false;
    if (time(NULL) >= ends) {
        log_debug("server (backend %u) not kept: server_lifetime reached", backend_pid(server));
        return false;
    }
    struct kept *k = calloc(1, sizeof(*k));
    struct bucket *b = k ? bucket_for(p, startup, len) : NULL;
    if (k && b)
        k->timer = evtimer_new(p->base, kept_timer_cb, k);
    if (!k || !b || !k->timer) {
        if (b)
            drop_if_empty(p, b);
        free(k);
        return false;
    }
    k->pool = p;
    k->bucket = b;
    k->state = KEPT_RESETTING;
    k->idle_timeout = idle_timeout;
    k->ends = ends;
    k->server = *server;
    k->next = b->servers;
    if (b->servers)
        b->servers->prev = k;
    b->servers = k;
    p->size++;
    counter_add(p->idle, 1);

    struct sock *s = server->sock;
    sock_set_callback(s, kept_cb, k);
    sock_pause_reading(s, false);
    evbuffer_add(sock_output(s), reset, reset_len);
    sock_flush(s);
    arm(k, idle_timeout < RESET_SECONDS ? idle_timeout : RESET_SECONDS);
    return true;
}

bool pool_take(struct pool *p, const uint8_t *startup, size_t len, struct pool_server *out)
{
    struct bucket *b = find_bucket(p, startup, len);

    if (!b)
        return false;
    for (struct kept *k = b->servers; k; k = k->next) {
        if (k->state != KEPT_IDLE)
            continue;
        *out = k->server;
        unlink_kept(k);
        return true;
    }
    return false;
}

void pool_close_all(struct pool *p)
{
    struct bucket *b, *tmp;

    if (!p)
        return;
    /* Closing a bucket's last server frees the bucket. */
    HASH_ITER(hh, p->buckets, b, tmp) {
        for (struct kept *k = b->servers, *next; k; k = next) {
            next = k->next;
            close_kept(k, true, "closing every kept server");
        }
    }
}

void pool_free(struct pool *p)
{
    if (!p)
        return;
    pool_close_all(p);
    free(p);
}
