#include "conn_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "authquery.h"
#include "cancelkeys.h"
#include "catalog.h"
#include "login.h"
#include "pool.h"
#include "proxy.h"
#include "rules.h"

/* How long a closing side may take to read what is left for it. */
#define CLOSE_FLUSH_SECONDS 5

/* A session that logged in this recently and has not spoken when the
 * shutdown begins gets its first request served. */
#define FIRST_REQUEST_GRACE_NS 1000000000u

static void server_read(struct conn *c);
static void client_sock_cb(struct sock *s, enum sock_event event, void *arg);

struct conn *conn_next(struct conn *c)
{
    return c->next;
}

void conn_follow_ring(struct conn *c)
{
    struct ring *r = worker_session_ring(c->worker);
    struct sock *socks[] = { c->client, c->server };

    if (c->state != CONN_ACTIVE)
        return;
    /* A sock that cannot move (TLS leaving the ring) stays where it is. */
    for (size_t i = 0; i < sizeof(socks) / sizeof(socks[0]); i++) {
        if (!socks[i])
            continue;
        if (r)
            sock_use_ring(socks[i], r);
        else
            sock_leave_ring(socks[i]);
    }
}

static struct sock *source_of(struct conn *c, enum flow d)
{
    return d == FLOW_TO_SERVER ? c->client : c->server;
}

static struct sock *sink_of(struct conn *c, enum flow d)
{
    return d == FLOW_TO_SERVER ? c->server : c->client;
}

/* Sends bytes the proxy writes itself, at once. */
void send_to(struct sock *s, const void *data, size_t len)
{
    evbuffer_add(sock_output(s), data, len);
    sock_flush(s);
}

static void format_peer(char *buf, size_t len, const struct sockaddr *addr)
{
    char host[INET6_ADDRSTRLEN] = "?";

    switch (addr->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(buf, len, "%s:%u", host, ntohs(in->sin_port));
        break;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        /* An IPv4 client of the dual-stack socket reads as itself. */
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], host, sizeof(host));
            snprintf(buf, len, "%s:%u", host, ntohs(in6->sin6_port));
        } else {
            inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
            snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
        }
        break;
    }
    default:
        snprintf(buf, len, "unix");
        break;
    }
}

/* Sets a TCP option unless value is 0, the kernel's setting. */
static bool set_tcp_option(int fd, int option, int value)
{
    return value == 0 || setsockopt(fd, IPPROTO_TCP, option, &value, sizeof(value)) == 0;
}

/* A new socket of c, if TCP: no Nagle delay (the proxy writes whole
 * messages and batches them itself), and the keepalive settings. Failing
 * costs only the notice of a vanished peer: logged, not fatal. */
static void tune_tcp(struct conn *c, struct sock *s)
{
    const struct config *cfg = c->worker->cfg;
    int fd = sock_fd(s), one = 1, keepalive = cfg->tcp_keepalive;
    struct sockaddr_storage addr;
    socklen_t len = sizeof(addr);

    if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0 || addr.ss_family == AF_UNIX)
        return;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &keepalive, sizeof(keepalive)) != 0 ||
        (keepalive && !(set_tcp_option(fd, TCP_KEEPIDLE, cfg->tcp_keepidle) &&
                        set_tcp_option(fd, TCP_KEEPINTVL, cfg->tcp_keepintvl) &&
                        set_tcp_option(fd, TCP_KEEPCNT, cfg->tcp_keepcnt))) ||
        !set_tcp_option(fd, TCP_USER_TIMEOUT, cfg->tcp_user_timeout))
        conn_log(LOG_WARNING, c, "cannot set the TCP options of the %s socket: %s",
                 s == c->client ? "client" : "server", strerror(errno));
}

/* ---- messages the proxy writes itself ---------------------------------- */

/* Sends an ErrorResponse to the client. Only ever at a message boundary:
 * never into the middle of a message the server is streaming. */
static void send_client_error(struct conn *c, const char *severity,
                              const char *sqlstate, const char *message)
{
    uint8_t buf[512];
    size_t need = pg_error_build(buf, sizeof(buf), severity, sqlstate, message);

    if (!c->client || c->stream_left[FLOW_TO_CLIENT] != 0)
        return;
    if (need <= sizeof(buf)) {
        send_to(c->client, buf, need);
        return;
    }
    uint8_t *big = malloc(need);
    if (big && pg_error_build(big, need, severity, sqlstate, message) == need)
        send_to(c->client, big, need);
    free(big);
}

void fail_client(struct conn *c, const char *sqlstate, const char *message,
                 const char *reason)
{
    send_client_error(c, "FATAL", sqlstate, message);
    close_pair(c, reason);
}

void fail_oom(struct conn *c)
{
    fail_client(c, "53200", "out of memory", "out of memory");
}

/* ---- messages the proxy reads itself ----------------------------------- */

/* The client's next whole message while the proxy answers the client
 * itself (its authentication, the admin console), at most max bytes (no
 * more than READ_CHUNK, so it always fits the read limit). READY: *msg
 * points at it, type byte first; the caller drains head->len + 1 bytes. */
enum own_msg next_own_msg(struct conn *c, size_t max, struct pg_msg_head *head,
                          const uint8_t **msg)
{
    struct evbuffer *in = sock_input(c->client);
    uint8_t raw[PG_HEAD_LEN];

    if (evbuffer_copyout(in, raw, sizeof(raw)) != (ev_ssize_t)sizeof(raw))
        return OWN_MSG_NONE;
    if (pg_msg_head(raw, sizeof(raw), head) != PG_NEXT_OK || (size_t)head->len + 1 > max)
        return OWN_MSG_BAD;
    if (evbuffer_get_length(in) < (size_t)head->len + 1)
        return OWN_MSG_NONE;
    *msg = evbuffer_pullup(in, (ev_ssize_t)head->len + 1);
    return *msg ? OWN_MSG_READY : OWN_MSG_BAD;
}

/* ---- cancel keys ------------------------------------------------------- */

/* server_reuse: a key of its own for the client, standing for the server's
 * real one (a BackendKeyData body); false when none could be made. */
bool give_key(struct conn *c, const uint8_t *real, size_t len)
{
    if (!cancel_keys_add(c->worker->proxy->cancel_keys, real, len, c->given_key))
        return false;
    c->given_key_len = len;
    return true;
}

/* The client's key stops cancelling anything: it left, or its server did. */
void forget_key(struct conn *c)
{
    if (!c->given_key_len)
        return;
    cancel_keys_remove(c->worker->proxy->cancel_keys, c->given_key, c->given_key_len);
    c->given_key_len = 0;
}

/* ---- closing ----------------------------------------------------------- */

/* Frees one side's sock (NULL: gone already) and takes it off the gauges. */
static void drop_sock(struct conn *c, struct sock *s)
{
    struct worker_counters *counters = &c->worker->counters;

    if (!s)
        return;
    sock_free(s);
    if (s == c->client) {
        c->client = NULL;
        counter_sub(&counters->client_connections, 1);
    } else {
        c->server = NULL;
        counter_sub(&counters->server_connections, 1);
    }
}

static void free_pair(struct conn *c)
{
    struct worker *w = c->worker;

    drop_sock(c, c->client);
    drop_sock(c, c->server);
    if (c->resolving)
        evdns_getaddrinfo_cancel(c->resolving);
    free(c->startup);
    free(c->identity_signature);
    free(c->identity_heard);
    forget_identity_outside(c);
    if (c->login_timer)
        event_free(c->login_timer);
    if (c->counted)
        proxy_client_leave(w->proxy);
    counter_add(&w->counters.track_desyncs, c->track.desyncs);
    track_free(&c->track); /* before the statements its notes point to */
    stmtcache_free(&c->stmts);
    session_free(&c->session);
    authquery_cancel(c->lookup);
    if (c->login) {
        login_free(c->login);
        free(c->login);
    }
    free(c->held_error);
    forget_key(c);
    welcome_free(&c->welcome);
    free(c->unnamed_parse);
    free(c->displaced_parse);
    if (c->catalog) {
        scope_learn(c->scope, NULL, now_ns());
        catalog_free(c->catalog);
        free(c->catalog);
    }
    ruleset_unref(c->rules);
    pthread_mutex_lock(&w->conns_lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&w->conns_lock);
    free(c->user);
    free(c->database);
    free(c);
    worker_conn_gone(w);
}

/* Frees one side now if it has nothing left to write, else once it has
 * written it (or after CLOSE_FLUSH_SECONDS): SOCK_CLOSED. */
static void close_side(struct conn *c, struct sock *s)
{
    if (!s)
        return;
    if (sock_unsent(s) == 0 || sock_fd(s) < 0) {
        drop_sock(c, s);
        return;
    }
    sock_close_flushed(s, CLOSE_FLUSH_SECONDS);
}

static void maybe_free(struct conn *c)
{
    if (c->state == CONN_CLOSING && !c->client && !c->server)
        free_pair(c);
}

void close_pair(struct conn *c, const char *reason)
{
    if (c->state == CONN_CLOSING)
        return;
    c->state = CONN_CLOSING;
    conn_log(LOG_INFO, c, "closed: %s", reason);
    if (c->login_timer) {
        event_free(c->login_timer);
        c->login_timer = NULL;
    }
    close_side(c, c->client);
    close_side(c, c->server);
    maybe_free(c);
}

/* A side's output drained below its low mark: the other side, paused for
 * it, may be read again. */
static void drained(struct conn *c, struct sock *s)
{
    enum flow d = s == c->server ? FLOW_TO_SERVER : FLOW_TO_CLIENT;

    if (!c->paused[d] || c->state == CONN_CLOSING)
        return;
    c->paused[d] = false;
    sock_pause_reading(source_of(c, d), false);
    /* Input may have waited while paused: relay it now. */
    if (d == FLOW_TO_SERVER)
        client_read(c);
    else
        server_read(c);
}

/* A side finished closing: it goes, and the pair with the last one. */
static void side_closed(struct conn *c, struct sock *s)
{
    drop_sock(c, s);
    maybe_free(c);
}

/* The session is quiet outside a transaction block: between requests. */
static bool between_requests(const struct conn *c)
{
    return conn_quiet(c) && c->track.txn_status == 'I';
}

/* server_reuse: the client left an idle session, so its server can serve
 * the next client with the same login; it goes to the worker's pool
 * instead of closing. True when it did. */
bool keep_server(struct conn *c)
{
    struct worker *w = c->worker;

    worker_refresh(w);
    if (!c->reusable || !w->cfg->server_reuse || w->shutting_down ||
        c->generation != w->generation || c->state != CONN_ACTIVE || !c->server ||
        !between_requests(c) || c->catalog || c->guard != GUARD_NONE || c->held_error ||
        evbuffer_get_length(sock_input(c->server)) > 0 ||
        sock_unsent(c->server) > 0)
        return false;
    forget_key(c);
    struct pool_server kept = { .sock = c->server, .welcome = c->welcome,
                                .born = c->server_born };
    if (!pool_park(w->pool, c->startup, c->startup_len, &kept, worker_pool_max(w),
                   w->cfg->server_idle_timeout, w->cfg->server_lifetime))
        return false;
    welcome_init(&c->welcome);
    c->server = NULL;
    counter_sub(&w->counters.server_connections, 1);
    return true;
}

/* ---- relaying ---------------------------------------------------------- */

/* Raises the source's read limit so that a held message of total bytes fits
 * whole into its input buffer. */
void hold_for(struct conn *c, enum flow d, size_t total)
{
    if (total <= READ_CHUNK)
        return;
    sock_set_read_limit(source_of(c, d), total);
    c->holding[d] = true;
}

void hold_done(struct conn *c, enum flow d)
{
    if (!c->holding[d])
        return;
    sock_set_read_limit(source_of(c, d), READ_CHUNK);
    c->holding[d] = false;
}

/* A FATAL or PANIC ends the session; the server explained why, and the
 * client hears it. Returns whether err is one. */
bool note_fatal(struct conn *c, const struct pg_error *err)
{
    const char *s = err->severity;

    if (!s || (strcmp(s, "FATAL") != 0 && strcmp(s, "PANIC") != 0))
        return false;
    c->server_said_fatal = true;
    conn_log(LOG_INFO, c, "server: %s %s: %s", s, err->code ? err->code : "?",
             err->message ? err->message : "");
    return true;
}

/* Reads the status byte of the ReadyForQuery at pos in in. */
static char ready_status_at(struct evbuffer *in, struct evbuffer_ptr *pos)
{
    struct evbuffer_ptr body = *pos;
    uint8_t status = 0;

    if (evbuffer_ptr_set(in, &body, PG_HEAD_LEN, EVBUFFER_PTR_ADD) == 0)
        evbuffer_copyout_from(in, &body, &status, 1);
    return pg_ready_status(&status, 1);
}

/* What relay() does with one message. */
enum handling {
    HANDLE_STREAM, /* moves on as its bytes arrive, never held */
    HANDLE_PEEK,   /* held whole and read where it lies, then moved on */
    HANDLE_TAKE,   /* held whole and handed to a handler: may be replaced or dropped */
};

/* Messages up to this size are copied out to be read; longer ones are made
 * contiguous in place. */
#define SMALL_MSG 512

/* The bytes of a message too large to read, after its head, in which a
 * Bind's portal and statement names are looked for, or a Parse's name and
 * its text's opening keyword: two of the longest names PostgreSQL tells
 * apart (63 bytes) with their NULs. */
#define UNREAD_PEEK (2 * 64)

/* Messages that name or redefine the unnamed statement. */
static bool names_statements(char type)
{
    return type == 'Q' || type == 'P' || type == 'B' || type == 'D' || type == 'C';
}

/* Statements the client prepared that the proxy knows of (the unnamed one
 * standing for a cached one, Parses kept to prepare again, also one a
 * request under way displaced, the proxy's own cached ones): what SQL
 * could drop or redefine them is read, rules or not. */
static bool knows_statements(const struct conn *c)
{
    return c->stmts.unnamed || c->unnamed_parse_len || !session_empty(&c->session) ||
           stmtcache_holds_any(&c->stmts);
}

static enum handling client_handling(const struct conn *c, char type)
{
    if (type == 'X' && c->reusable)
        return HANDLE_TAKE;
    if (!rewriting(c))
        return names_statements(type) && knows_statements(c) ? HANDLE_TAKE : HANDLE_STREAM;
    switch (type) {
    case 'Q': /* Query */
    case 'P': /* Parse */
    case 'B': /* Bind */
    case 'E': /* Execute */
    case 'C': /* Close */
    case 'S': /* Sync */
    case 'H': /* Flush */
    case 'F': /* FunctionCall */
        return HANDLE_TAKE;
    case 'D': /* Describe: of a statement the proxy may prepare again
                 first, or that stands for a cached one (take_describe) */
        return knows_statements(c) ? HANDLE_TAKE : HANDLE_STREAM;
    default:
        return HANDLE_STREAM;
    }
}

static enum handling server_handling(const struct conn *c, char type)
{
    if (answers_injected(c, type))
        return HANDLE_TAKE;
    /* How the client's statement ended decides what the proxy does next;
     * a copy from the client begun in a batch that holds its messages
     * lets the data waiting among them go. */
    if ((translating(c) && (type == 'C' || type == 's')) ||
        ((translating(c) || c->batch_ending) && type == 'Z') || (c->batch_ending && type == 'G'))
        return HANDLE_TAKE;
    switch (type) {
    case 'E':
    case 'S':
        return HANDLE_TAKE;
    case '1':
        return answers_creation(c) ? HANDLE_TAKE : HANDLE_STREAM;
    case 'R':
        return c->state == CONN_LOGIN ? HANDLE_TAKE : HANDLE_STREAM;
    case 'K':
    case 'v': /* NegotiateProtocolVersion */
    case 'N':
        return c->state == CONN_LOGIN && c->reusable ? HANDLE_TAKE : HANDLE_STREAM;
    case 'Z':
        return c->state == CONN_LOGIN ? HANDLE_TAKE : HANDLE_PEEK;
    default:
        return HANDLE_STREAM;
    }
}

uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the relay loop ---------------------------------------------------- */

/* A message over max_held_message, of which first holds the first
 * first_len bytes (its head among them). TAKEN_FORWARD: it streams on
 * (*tracked: its request is in the queue already; *consumed: so many of
 * its first bytes went out rewritten, for the rest to follow); TAKEN_HELD:
 * a Bind waits, as take_bind's do; TAKEN_CLOSED. */
static enum taken note_oversized(struct conn *c, enum flow d, char type, size_t total,
                                 struct sink *k, const uint8_t *first, size_t first_len,
                                 bool *tracked, size_t *consumed)
{
    /* A large value, most likely: unless a Parse too large to read went
     * before, every statement it may bind was read (or prepared by SQL,
     * which cannot drop others), so its Execute does what the proxy
     * knows. */
    bool bind_followed = d == FLOW_TO_SERVER && type == 'B' && !c->parsed_unread &&
                         named_statement(first, first_len);
    /* A large statement, whose opening says it drops no other. */
    unsigned effects = 0;
    const char *parsed = d == FLOW_TO_SERVER && type == 'P'
                             ? unread_parse_name(first, first_len, &effects)
                             : NULL;
    enum taken taken = bind_followed ? take_unread_bind(c, k, first, first_len, total, consumed)
                       : parsed      ? take_unread_parse(c, parsed, effects)
                                     : TAKEN_FORWARD;

    *tracked = bind_followed || parsed;
    if (taken != TAKEN_FORWARD)
        return taken;
    counter_add(&c->worker->counters.oversized_inspected, 1);
    if (d == FLOW_TO_SERVER && rewriting(c))
        scope_count_reason(c->scope, RR_TOO_LARGE);
    if (d == FLOW_TO_SERVER && !bind_followed && !parsed &&
        (type == 'P' || type == 'B' || type == 'Q')) {
        /* Its names cannot be read, nor its text (or, for a Bind, its
         * statement's), which may drop and define statements again by
         * SQL: what the session prepared is forgotten, rules or not, lest
         * it be prepared again in a text the name no longer holds. The
         * text may also change the identity (a Parse's later Executes
         * cannot be told apart). A message that may name the unnamed
         * statement gives the server's the cached text first. */
        session_clear(&c->session);
        c->parsed_unread |= type == 'P';
        if (type != 'B') {
            stmtcache_forget_all(&c->stmts);
            unsettle_identity(c);
        }
        if (c->stmts.unnamed && type != 'Q')
            restore_unnamed(c, k);
    } else if (d == FLOW_TO_SERVER && c->stmts.unnamed && (type == 'D' || type == 'C')) {
        restore_unnamed(c, k);
    }
    /* One that may redefine the unnamed statement (a Query does; a Parse
     * of some name might): nothing kept of it holds. */
    if (d == FLOW_TO_SERVER && !parsed && (type == 'Q' || type == 'P'))
        unnamed_redefined(c, NULL);
    if (d == FLOW_TO_CLIENT && answers_injected(c, type))
        c->catalog_ok = false;
    conn_log(LOG_DEBUG, c, "'%c' message of %zu bytes streamed unread", type, total);
    return TAKEN_FORWARD;
}

/* The stream is corrupt: nothing after this can be framed. */
static void protocol_violation(struct conn *c, enum flow d, const uint8_t *raw)
{
    counter_add(&c->worker->counters.protocol_violations, 1);
    conn_log(LOG_WARNING, c, "%s sent a message with length %u (type 0x%02x): closing",
             d == FLOW_TO_SERVER ? "client" : "server", pg_get_u32(raw + 1), raw[0]);
    if (d == FLOW_TO_SERVER)
        fail_client(c, "08P01", "invalid message length", "protocol violation by client");
    else
        fail_client(c, "08P01", "idemproxy: server sent an invalid message",
                    "protocol violation by server");
}

/* Moves the first n bytes of in on, or drops them when they belong to the
 * proxy. */
static void pass_bytes(struct conn *c, enum flow d, struct evbuffer *in,
                       struct evbuffer *out, size_t n)
{
    if (c->stream_discard[d])
        evbuffer_drain(in, n);
    else
        evbuffer_remove_buffer(in, out, n);
}

/* A client's Query or Execute, once, as the relay passes it on. */
static void count_statement(struct conn *c, enum flow d, char type)
{
    if (d == FLOW_TO_SERVER && (type == 'Q' || type == 'E'))
        counter_add(&c->worker->counters.statements[type == 'Q' ? PROTOCOL_SIMPLE
                                                                : PROTOCOL_EXTENDED], 1);
}

/* The len bytes at pos where they lie when one chain of the buffer holds
 * them all, as it does for most of what one read brought; otherwise copied
 * into copy (len bytes of room), or NULL when copy is NULL. */
static const uint8_t *bytes_at(struct evbuffer *in, struct evbuffer_ptr *pos, size_t len,
                               uint8_t *copy)
{
    struct evbuffer_iovec v;

    if (evbuffer_peek(in, (ev_ssize_t)len, pos, &v, 1) >= 1 && v.iov_len >= len)
        return v.iov_base;
    if (copy)
        evbuffer_copyout_from(in, pos, copy, len);
    return copy;
}

/* Hands one whole message at pos to its handler. */
static enum taken take(struct conn *c, enum flow d, struct sink *k,
                       struct evbuffer_ptr *pos, size_t total)
{
    uint8_t small[SMALL_MSG];
    const uint8_t *msg = bytes_at(k->in, pos, total, total <= sizeof(small) ? small : NULL);

    if (!msg) {
        sink_flush(k);
        msg = evbuffer_pullup(k->in, (ev_ssize_t)total);
        if (!msg) {
            fail_oom(c);
            return TAKEN_CLOSED;
        }
    }
    return d == FLOW_TO_SERVER ? take_client_msg(c, msg, total, k)
                               : take_server_msg(c, msg, total, k);
}

/* Moves every whole message it can from one side to the other. Messages the
 * proxy needs to read are held until whole (up to max_held_message); all
 * others stream through as their bytes arrive. Consecutive messages move in
 * one evbuffer_remove_buffer, which hands over whole chains without copying.
 * Returns false when the pair was closed. */
bool relay(struct conn *c, enum flow d)
{
    struct sock *src = source_of(c, d), *dst = sink_of(c, d);
    struct sink k = { sock_input(src), sock_output(dst), 0 };
    size_t max_held = c->worker->cfg->max_held_message;
    size_t had = evbuffer_get_length(k.in);
    uint64_t start = now_ns();
    struct evbuffer_ptr pos;

    if (c->stream_left[d]) {
        size_t avail = evbuffer_get_length(k.in);
        size_t n = c->stream_left[d] < avail ? c->stream_left[d] : avail;
        pass_bytes(c, d, k.in, k.out, n);
        c->stream_left[d] -= n;
        if (c->stream_left[d])
            goto moved;
        c->stream_discard[d] = false;
    }
    evbuffer_ptr_set(k.in, &pos, 0, EVBUFFER_PTR_SET);

    for (;;) {
        size_t avail = evbuffer_get_length(k.in);
        uint8_t copy[PG_HEAD_LEN];
        struct pg_msg_head head;

        if (avail - k.span < PG_HEAD_LEN)
            break;
        const uint8_t *raw = bytes_at(k.in, &pos, PG_HEAD_LEN, copy);
        if (pg_msg_head(raw, PG_HEAD_LEN, &head) != PG_NEXT_OK) {
            sink_flush(&k);
            protocol_violation(c, d, raw);
            return false;
        }
        if (d == FLOW_TO_SERVER) {
            c->spoke = c->state == CONN_ACTIVE;
            if (head.type == 'P')
                c->unnamed_closed = false;
            if (head.type == 'X')
                c->client_said_goodbye = true;
            if (c->await_next)
                settle_await(c, head.type);
            if (c->guard == GUARD_AWAIT_SYNC)
                guard_next(c, head.type);
            /* In a guard, the client's messages wait; only the Sync that
             * lets a rollback happen may pass. */
            if (client_held(c) && !(c->guard == GUARD_AWAIT_SYNC && head.type == 'S'))
                break;
        }
        size_t total = (size_t)head.len + 1;
        enum handling h = d == FLOW_TO_SERVER ? client_handling(c, head.type)
                                         : server_handling(c, head.type);
        bool tracked = false;
        size_t consumed = 0;
        if (h != HANDLE_STREAM && total > max_held) {
            /* A Bind's names are in its first bytes, and so are a Parse's
             * name and opening: they are waited for, so that what the
             * proxy makes of the message does not depend on where a read
             * happened to end. */
            uint8_t copy_first[PG_HEAD_LEN + UNREAD_PEEK];
            size_t first_len = total < sizeof(copy_first) ? total : sizeof(copy_first);
            if (avail - k.span < first_len)
                break;
            const uint8_t *first = bytes_at(k.in, &pos, first_len, copy_first);
            enum taken taken = note_oversized(c, d, head.type, total, &k, first, first_len,
                                              &tracked, &consumed);
            if (taken == TAKEN_CLOSED)
                return false;
            if (taken == TAKEN_HELD)
                break;
            /* What it wrote ahead of the message moved the messages passed
             * over before it out of the input: the message now starts at
             * the span's end, and less is at hand. What it wrote in place
             * of the message's first bytes stands for them. */
            evbuffer_drain(k.in, consumed);
            total -= consumed;
            avail = evbuffer_get_length(k.in);
            evbuffer_ptr_set(k.in, &pos, k.span, EVBUFFER_PTR_SET);
            /* The proxy's own answer too big to read is dropped unread. */
            if (d == FLOW_TO_CLIENT && answers_injected(c, head.type)) {
                sink_flush(&k);
                c->stream_discard[d] = true;
            }
            h = HANDLE_STREAM;
        }
        if (h != HANDLE_STREAM && avail - k.span < total) {
            hold_for(c, d, total);
            break;
        }

        if (h == HANDLE_TAKE) {
            enum taken taken = take(c, d, &k, &pos, total);
            if (taken == TAKEN_CLOSED)
                return false;
            if (taken == TAKEN_HELD)
                break;
            count_statement(c, d, head.type);
            if (taken == TAKEN_FORWARD) {
                k.span += total;
            } else {
                sink_flush(&k);
                evbuffer_drain(k.in, total);
            }
            evbuffer_ptr_set(k.in, &pos, k.span, EVBUFFER_PTR_SET);
            continue;
        }

        char status = h == HANDLE_PEEK && head.type == 'Z' ? ready_status_at(k.in, &pos) : 0;
        if (!tracked && !track_plain(c, d, head.type, status))
            return false;
        count_statement(c, d, head.type);
        if (avail - k.span < total) {
            /* Streams on as its bytes arrive. */
            c->stream_left[d] = total - (avail - k.span);
            sink_flush(&k);
            pass_bytes(c, d, k.in, k.out, evbuffer_get_length(k.in));
            goto moved;
        }
        if (c->stream_discard[d]) {
            evbuffer_drain(k.in, total);
            c->stream_discard[d] = false;
            evbuffer_ptr_set(k.in, &pos, k.span, EVBUFFER_PTR_SET);
            continue;
        }
        k.span += total;
        if (k.span < avail)
            evbuffer_ptr_set(k.in, &pos, total, EVBUFFER_PTR_ADD);
    }
    sink_flush(&k);
moved:
    if (evbuffer_get_length(k.in) < READ_CHUNK)
        hold_done(c, d);
    /* One write for all that this pass moved, and whatever the proxy wrote
     * to either side on the way; then what is still queued decides. */
    sock_flush(dst);
    sock_flush(src);
    size_t moved = had - evbuffer_get_length(k.in);
    if (moved) {
        counter_add(&c->worker->counters.bytes[d], moved);
        worker_observe_latency(c->worker, d, now_ns() - start);
    }
    if (!c->paused[d] && sock_output_full(dst)) {
        c->paused[d] = true;
        sock_pause_reading(src, true);
    }
    return true;
}

/* During a shutdown a session goes once it is idle; one that logged in
 * as the shutdown began first gets its first request served, since closing
 * it then would be refusing it in all but name. Idle means the client's
 * next request has not reached the proxy either: closing then would refuse
 * a request the client sent before it could know. */
static void close_if_idle(struct conn *c)
{
    if (c->stop_when_idle && c->spoke && c->state == CONN_ACTIVE && between_requests(c) &&
        !sock_has_arrived(c->client))
        conn_terminate(c);
}

/* ---- callbacks --------------------------------------------------------- */

/* The catalog query may go now: nothing is outstanding, and no
 * transaction block is open, whose snapshot may be older than the tables
 * and which the query would otherwise join. */
static bool may_learn(const struct conn *c)
{
    return !c->catalog && between_requests(c) && c->track.txn_status == 'I';
}

/* After a reload, an idle session moves to the new rules; its next
 * statement is decided by them. */
static void follow_reload(struct conn *c)
{
    worker_refresh(c->worker);
    struct ruleset *current = c->worker->rules;

    if (c->rules == current || !may_learn(c))
        return;
    ruleset_unref(c->rules);
    c->rules = ruleset_ref(current);
    c->identity = IDENTITY_UNKNOWN;
    forget_identity_outside(c);
    enter_scope(c, c->replication ? NULL : login_scope(c));
    /* Without rules no text is read unless the session knows statements
     * (knows_statements): its cached ones may go unseen. */
    if (!c->scope)
        stmtcache_forget_all(&c->stmts);
}

/* An idle session asks the catalog again when its scope is due: the
 * tables may have changed since it was last asked; or for the first time,
 * when the session entered it inside a transaction block. A session
 * without registered tables does not even read the clock. */
static void follow_catalog(struct conn *c)
{
    if (c->scope && scope_state(c->scope) != SCOPE_PASSTHROUGH && may_learn(c) &&
        scope_due(c->scope, now_ns()))
        learn_catalog(c);
}

/* An idle session outside a transaction block asks about its identity
 * when it may have changed, when its scope's verdicts changed since, or
 * when the scope asked the catalog again since (every
 * catalog_check_interval): a table may have been created in a schema of
 * the session's search_path, which the catalog check does not look at.
 * Called after every read: the common case costs a few comparisons. */
static void follow_identity(struct conn *c)
{
    if (!identity_after_transaction(c)) {
        fail_oom(c);
        return;
    }
    if (c->identity == IDENTITY_ASKING || c->state != CONN_ACTIVE || !c->scope ||
        scope_state(c->scope) != SCOPE_READY)
        return;
    if (c->identity == IDENTITY_KNOWN &&
        scope_identity_current(c->scope, c->identity_version, c->identity_ns))
        return;
    if (may_learn(c))
        learn_identity(c);
}

void client_read(struct conn *c)
{
    switch (c->state) {
    case CONN_STARTUP:
        read_startup(c);
        break;
    case CONN_AUTH:
        read_auth(c);
        break;
    case CONN_CONNECTING:
    case CONN_SERVER_TLS:
        /* The client has nothing to say before the server asks; what it
         * sends anyway waits in the input buffer, within its limit. */
        break;
    case CONN_ACTIVE:
        follow_reload(c);
        follow_catalog(c);
        follow_identity(c);
        /* Until the catalog and the identity are in, the client's
         * statements cannot be decided: they wait in the input buffer,
         * within its limit. */
        if (c->catalog || c->identity == IDENTITY_ASKING)
            break;
        relay(c, FLOW_TO_SERVER);
        break;
    case CONN_LOGIN:
        relay(c, FLOW_TO_SERVER);
        break;
    case CONN_ADMIN:
        admin_read(c);
        break;
    case CONN_CLOSING:
        break;
    }
}

static void server_read(struct conn *c)
{
    switch (c->state) {
    case CONN_LOGIN:
    case CONN_ACTIVE:
        if (!relay(c, FLOW_TO_CLIENT))
            break;
        /* At once, rather than when the client speaks next: the answer is
         * then likely in before the client's next message. */
        follow_identity(c);
        if (c->await_quiet && (conn_quiet(c) || track_copy_awaits_client(&c->track))) {
            c->await_quiet = false;
            c->resume_client = true;
        }
        if (c->resume_client) {
            c->resume_client = false;
            if (!relay(c, FLOW_TO_SERVER))
                break;
        }
        close_if_idle(c);
        break;
    case CONN_SERVER_TLS:
        if (!c->server_tls)
            read_tls_answer(c);
        break;
    case CONN_STARTUP:
    case CONN_AUTH:
    case CONN_CONNECTING:
    case CONN_ADMIN:
    case CONN_CLOSING:
        break;
    }
}

static void client_sock_cb(struct sock *s, enum sock_event event, void *arg)
{
    struct conn *c = arg;

    switch (event) {
    case SOCK_READ:
        client_read(c);
        return;
    case SOCK_DRAINED:
        drained(c, s);
        return;
    case SOCK_CLOSED:
        side_closed(c, s);
        return;
    case SOCK_CONNECTED:
        conn_log(LOG_DEBUG, c, "TLS with the client: %s %s", SSL_get_version(sock_ssl(s)),
                 SSL_get_cipher_name(sock_ssl(s)));
        return;
    case SOCK_EOF:
        if (c->state == CONN_CLOSING)
            return;
        if (c->stream_left[FLOW_TO_SERVER] || evbuffer_get_length(sock_input(s)))
            close_pair(c, "client vanished mid-message");
        else if (keep_server(c))
            close_pair(c, "client disconnected; server kept for reuse");
        else
            close_pair(c, "client disconnected");
        return;
    case SOCK_ERROR:
    case SOCK_TIMEOUT:
        if (c->state == CONN_CLOSING)
            return;
        conn_log(LOG_DEBUG, c, "client socket: %s",
                 event == SOCK_TIMEOUT ? "timed out" : sock_error(s));
        close_pair(c, "client connection error");
        return;
    }
}

/* The server went away: after the client's Terminate as it should, else
 * without explaining itself first. */
static void server_lost(struct conn *c, const char *why)
{
    if (c->client_said_goodbye) {
        close_pair(c, "client left");
        return;
    }
    if (!c->server_said_fatal) {
        conn_log(LOG_WARNING, c, "server connection lost: %s", why);
        send_client_error(c, "FATAL", "08006",
                          "idemproxy: server closed the connection unexpectedly");
    }
    close_pair(c, "server disconnected");
}

void server_sock_cb(struct sock *s, enum sock_event event, void *arg)
{
    struct conn *c = arg;

    switch (event) {
    case SOCK_READ:
        server_read(c);
        return;
    case SOCK_DRAINED:
        drained(c, s);
        return;
    case SOCK_CLOSED:
        side_closed(c, s);
        return;
    case SOCK_CONNECTED:
        if (c->state == CONN_SERVER_TLS) {
            server_tls_ready(c);
            return;
        }
        tune_tcp(c, s);
        conn_log(LOG_DEBUG, c, "server connected");
        if (!c->worker->settings->server_ssl_ctx) {
            send_startup(c);
            return;
        }
        static const uint8_t ssl_request[8] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f };
        c->state = CONN_SERVER_TLS;
        send_to(s, ssl_request, sizeof(ssl_request));
        return;
    case SOCK_EOF:
    case SOCK_ERROR:
    case SOCK_TIMEOUT:
        break;
    }
    const char *why = event == SOCK_TIMEOUT ? "timed out"
                      : event == SOCK_EOF   ? "connection closed"
                                            : sock_error(s);
    switch (c->state) {
    case CONN_CLOSING:
        return;
    case CONN_SERVER_TLS:
        if (c->server_tls && event != SOCK_EOF) {
            server_tls_failed(c);
            return;
        }
        cannot_connect(c, why);
        return;
    case CONN_CONNECTING:
        cannot_connect(c, why);
        return;
    default:
        /* Whatever whole messages came with the goodbye go on first. */
        if (event == SOCK_EOF)
            server_read(c);
        if (c->state != CONN_CLOSING)
            server_lost(c, why);
        return;
    }
}

/* ---- public ------------------------------------------------------------ */

struct conn *conn_accept(struct worker *w, evutil_socket_t fd,
                         const struct sockaddr *addr, int addrlen)
{
    struct conn *c = calloc(1, sizeof(*c));
    (void)addrlen;

    if (!c) {
        evutil_closesocket(fd);
        log_error("out of memory accepting a client");
        return NULL;
    }
    c->worker = w;
    c->id = proxy_next_conn_id(w->proxy);
    c->state = CONN_STARTUP;
    c->stop_when_idle = w->shutting_down;
    track_init(&c->track, free_note, c);
    session_init(&c->session);
    stmtcache_init(&c->stmts, (size_t)w->cfg->max_cached_statements);
    welcome_init(&c->welcome);
    format_peer(c->peer, sizeof(c->peer), addr);
    c->client = sock_new(w->base, fd, client_sock_cb, c);
    c->login_timer = evtimer_new(w->base, login_timeout_cb, c);
    if (!c->client || !c->login_timer) {
        sock_free(c->client);
        if (c->login_timer)
            event_free(c->login_timer);
        free(c);
        log_error("out of memory accepting a client");
        return NULL;
    }
    c->since = time(NULL);
    pthread_mutex_lock(&w->conns_lock);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    pthread_mutex_unlock(&w->conns_lock);
    w->conn_count++;
    counter_add(&w->counters.client_connections, 1);

    sock_set_write_marks(c->client, OUT_LOW, OUT_HIGH);
    tune_tcp(c, c->client);
    struct timeval login = { w->cfg->client_login_timeout, 0 };
    evtimer_add(c->login_timer, &login);
    conn_log(LOG_INFO, c, "accepted");
    return c;
}

void conn_destroy(struct conn *c)
{
    free_pair(c);
}

void conn_terminate(struct conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    /* Leave the server as a client would, so the backend ends cleanly. */
    if (c->server && c->state == CONN_ACTIVE && c->stream_left[FLOW_TO_SERVER] == 0) {
        send_to(c->server, PG_TERMINATE, sizeof(PG_TERMINATE));
    }
    fail_client(c, "57P01", "terminating connection because idemproxy is shutting down",
                "proxy shutdown");
}

void conn_describe(const struct conn *c, struct conn_info *out)
{
    out->id = c->id;
    out->since = c->since;
    snprintf(out->peer, sizeof(out->peer), "%s", c->peer);
    snprintf(out->user, sizeof(out->user), "%s", c->user ? c->user : "");
    snprintf(out->database, sizeof(out->database), "%s", c->database ? c->database : "");
}

void conn_shutdown(struct conn *c)
{
    c->stop_when_idle = true;
    if (c->state == CONN_ADMIN) {
        close_pair(c, "proxy shutdown");
        return;
    }
    /* A session already open goes when idle, now if it is; one still
     * logging in finishes that and one request first. So does one that
     * logged in a moment ago and has not spoken: its first request may be
     * on the wire, and closing it would refuse it as surely. */
    if (c->state == CONN_ACTIVE) {
        if (now_ns() - c->logged_in_ns >= FIRST_REQUEST_GRACE_NS)
            c->spoke = true;
        close_if_idle(c);
    }
}
