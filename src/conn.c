#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "authfile.h"
#include "admin.h"
#include "authquery.h"
#include "cancel.h"
#include "cancelkeys.h"
#include "log.h"
#include "login.h"
#include "params.h"
#include "pgproto.h"
#include "pool.h"
#include "proxy.h"
#include "rules.h"
#include "session.h"
#include "sock.h"
#include "stmtcache.h"
#include "tls.h"
#include "track.h"
#include "translate.h"
#include "welcome.h"
#include "worker.h"

/* Bytes a side may have queued for writing before the proxy stops reading
 * from the other side; reading resumes when half of it has drained. */
#define OUT_HIGH (256 * 1024)
#define OUT_LOW (OUT_HIGH / 2)
/* The input a side keeps unless a held message needs more. */
#define READ_CHUNK (64 * 1024)
/* How long a closing side may take to read what is left for it. */
#define CLOSE_FLUSH_SECONDS 5
/* SSLRequest and GSSENCRequest may each come once before the startup. */
#define MAX_NEGOTIATIONS 2
/* A session that logged in this recently and has not spoken when the
 * shutdown begins gets its first request served. */
#define FIRST_REQUEST_GRACE_NS 1000000000u
/* How much of a statement a log line quotes. */
#define LOG_TEXT_MAX 200

enum conn_state {
    CONN_STARTUP,    /* reading the client's startup-phase packets */
    CONN_AUTH,       /* auth_type = scram-sha-256: the proxy authenticates the client */
    CONN_CONNECTING, /* the client may log in; connecting to the server */
    CONN_SERVER_TLS, /* SSLRequest sent to the server, or the handshake under way */
    CONN_LOGIN,      /* relaying authentication until the first ReadyForQuery */
    CONN_ACTIVE,     /* relaying the session, tracking its requests */
    CONN_ADMIN,      /* the admin console: the proxy answers, no server */
    CONN_CLOSING,    /* flushing what each side still has to read */
};

/* What the proxy sent a request of its own for (track_req.tag). */
enum inject {
    INJECT_CATALOG = 1, /* the catalog query after login or reload */
    INJECT_SAVEPOINT,   /* opens the guard ahead of the client's INSERT */
    INJECT_RELEASE,     /* closes it after the INSERT succeeded */
    INJECT_ROLLBACK,    /* rolls back to it after a 23505 */
    INJECT_UNNAMED,     /* gives the server's unnamed statement the cached text,
                           ahead of a message the proxy cannot rename */
    INJECT_PREPARED,    /* the Close and Bind that run a Query's INSERT as a
                           cached statement (prepare_query) */
};

/* The proxy's savepoint around an INSERT in a transaction block (see
 * translate.h). SAVEPOINT, the statement and RELEASE go to the server
 * together, so a success costs no wait. An extended Execute needs no state
 * here until it fails; a simple Query holds the client's input until its
 * answer is settled, since a rollback may have to come before anything
 * else of the client's. */
enum guard {
    GUARD_NONE,
    GUARD_OPEN,       /* simple: the Query's outcome is awaited */
    GUARD_BROKEN,     /* simple: the SAVEPOINT failed and the client heard why;
                         the Query's own error adds nothing */
    GUARD_RELEASING,  /* simple: the Query succeeded; RELEASE's ReadyForQuery is
                         the client's, and so is RELEASE's error (a cancel) */
    GUARD_SPENT,      /* simple: the Query failed otherwise; RELEASE fails in the
                         aborted block, unheard; its ReadyForQuery is the client's */
    GUARD_FAILED,     /* simple: a 23505 is held; once RELEASE has failed in the
                         aborted block, the rollback goes */
    GUARD_AWAIT_SYNC, /* extended: a 23505 is held; the client's next message
                         must be Sync for the rollback to be honest */
    GUARD_SYNCED,     /* extended: that Sync went; its ReadyForQuery is the cue */
    GUARD_ROLLBACK,   /* ROLLBACK TO and RELEASE went; the client's answer waits */
};

/* The statement and portal name of the proxy's own extended statements. */
#define GUARD_NAME "idemproxy_guard"

struct conn {
    struct conn *prev, *next; /* the proxy's list */
    struct worker *worker;
    uint64_t id;
    time_t since;               /* accepted at */
    bool admin;                 /* logging in to the admin console */
    enum conn_state state;

    struct sock *client;
    struct sock *server;
    struct evdns_getaddrinfo_request *resolving; /* the server's name, being looked up */
    bool resolved_early;        /* the lookup ended inside evdns_getaddrinfo */
    int resolve_result;
    struct evutil_addrinfo *resolve_ai;
    uint8_t *startup;           /* the StartupMessage, as the server gets it */
    size_t startup_len;
    struct event *login_timer;

    /* Bytes of the current message still to stream through unread, per
     * direction: messages are streamed, never buffered whole, unless the
     * proxy must read them. stream_discard: drop them instead (the rest of
     * an oversized reply to the proxy's own query). */
    size_t stream_left[FLOW_COUNT];
    bool stream_discard[FLOW_COUNT];
    bool paused[FLOW_COUNT];             /* reading the source of this direction stopped */
    bool holding[FLOW_COUNT];            /* the source's read limit is raised for a held message */

    struct track track;
    struct ruleset *rules;      /* the rules the session runs under (a reference) */
    struct scope *scope;        /* its database and role's; NULL: never rewrite */
    struct catalog *catalog;    /* the proxy's catalog query is under way: client
                                   input waits until its answer is in */
    bool catalog_ok;            /* no row of that answer was refused */
    bool resume_client;         /* the catalog arrived: relay the client's input */
    bool replication;           /* a replication session: never rewrite */

    /* Translating unique violations. */
    struct session session;     /* the client's statements and portals */
    struct stmtcache stmts;     /* the proxy's prepared rewritten INSERTs */
    bool unnamed_closed;        /* the server holds no unnamed statement: the proxy
                                   closed it, and the client sent no Parse since */
    bool batch_open;            /* extended messages since the last Sync */
    bool batch_certain;         /* the block's status was known as the batch began,
                                   and everything it ran so far is known */
    size_t batch_executes;      /* Executes since the last Sync */
    bool batch_guarded;         /* a guarded Execute is in the batch */
    bool batch_ending;          /* a guarded batch's Sync went: the client's next
                                   messages wait for its ReadyForQuery, since a
                                   rollback may have to come first */
    enum guard guard;
    uint8_t *held_error;        /* a 23505 waiting to be sent or replaced */
    size_t held_error_len;
    int held_table;             /* the scope table it is about */
    bool await_next;            /* held_error waits for the client's next message */
    bool rollback_failed;       /* the rollback to the savepoint failed (a cancel) */

    /* Session settings that decide whether statement text may be scanned. */
    char client_encoding[32];
    char server_encoding[32];
    bool charset_ok;            /* rewrite_charset() accepts the encodings */
    bool charset_utf8;          /* the server counts error positions in UTF-8 */
    bool scs_off;               /* standard_conforming_strings = off */

    /* TLS and authentication. */
    bool client_tls;            /* the client connection is TLS */
    bool server_tls;            /* the server connection is TLS */
    uint8_t server_cb[EVP_MAX_MD_SIZE]; /* the server certificate's binding data */
    size_t server_cb_len;
    struct login *login;        /* the proxy's part of the login (auth_type = scram-sha-256) */
    struct authquery *lookup;   /* auth_query under way */

    /* server_reuse: the server may be kept for, or come from, a session
     * with the same StartupMessage; what its login said, as the next
     * client must hear it. */
    bool reusable;
    struct welcome welcome;
    uint64_t generation;        /* the worker's settings when the server came */
    uint8_t given_key[PG_BACKEND_KEY_MAX]; /* the BackendKeyData body the client got, */
    size_t given_key_len;       /* when it is the proxy's (0: none) */

    bool counted;               /* holds a max_client_conn slot */
    bool stop_when_idle;        /* the proxy is shutting down */
    bool spoke;                 /* the client sent a message since its login */
    uint64_t logged_in_ns;      /* when, on the monotonic clock */
    bool server_said_fatal;     /* the server explained its own goodbye */
    uint8_t negotiations;

    char peer[INET6_ADDRSTRLEN + 8];
    char *user;
    char *database;
};

#define conn_log(level, c, fmt, ...)                                               \
    do {                                                                            \
        if (log_enabled(level))                                                     \
            log_msg(level, "conn %llu %s %s/%s: " fmt, (unsigned long long)(c)->id, \
                    (c)->peer, (c)->user ? (c)->user : "-",                         \
                    (c)->database ? (c)->database : "-", ##__VA_ARGS__);            \
    } while (0)

static void client_read(struct conn *c);
static void server_read(struct conn *c);
static void client_sock_cb(struct sock *s, enum sock_event event, void *arg);
static void server_sock_cb(struct sock *s, enum sock_event event, void *arg);
static void close_pair(struct conn *c, const char *reason);
struct sink;
enum taken;
static enum taken take_auth_request(struct conn *c, const uint8_t *msg, size_t total,
                                    struct sink *k);

struct conn *conn_next(struct conn *c)
{
    return c->next;
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
static void send_to(struct sock *s, const void *data, size_t len)
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
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
        break;
    }
    default:
        snprintf(buf, len, "unix");
        break;
    }
}

static void set_nodelay(struct sock *s)
{
    int one = 1;

    /* Fails harmlessly on Unix sockets, which have no Nagle delay. */
    setsockopt(sock_fd(s), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
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

static void fail_client(struct conn *c, const char *sqlstate, const char *message,
                        const char *reason)
{
    send_client_error(c, "FATAL", sqlstate, message);
    close_pair(c, reason);
}

/* ---- cancel keys ------------------------------------------------------- */

/* server_reuse: a key of its own for the client, standing for the server's
 * real one (a BackendKeyData body); false when none could be made. */
static bool give_key(struct conn *c, const uint8_t *real, size_t len)
{
    if (!cancel_keys_add(c->worker->proxy->cancel_keys, real, len, c->given_key))
        return false;
    c->given_key_len = len;
    return true;
}

/* The client's key stops cancelling anything: it left, or its server did. */
static void forget_key(struct conn *c)
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
    if (c->catalog) {
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

/* Ends the pair: logs why once, lets each side flush what it still has to
 * read, then frees everything. Safe to call more than once. */
static void close_pair(struct conn *c, const char *reason)
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

/* ---- relaying ---------------------------------------------------------- */

/* Raises the source's read limit so that a held message of total bytes fits
 * whole into its input buffer. */
static void hold_for(struct conn *c, enum flow d, size_t total)
{
    if (total <= READ_CHUNK)
        return;
    sock_set_read_limit(source_of(c, d), total);
    c->holding[d] = true;
}

static void hold_done(struct conn *c, enum flow d)
{
    if (!c->holding[d])
        return;
    sock_set_read_limit(source_of(c, d), READ_CHUNK);
    c->holding[d] = false;
}

/* A FATAL or PANIC ends the session; the server explained why, and the
 * client hears it. Returns whether err is one. */
static bool note_fatal(struct conn *c, const struct pg_error *err)
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

/* What a taken message became. */
enum taken {
    TAKEN_FORWARD,  /* moves on unchanged */
    TAKEN_REPLACED, /* the handler wrote something else in its place */
    TAKEN_DROPPED,  /* it goes nowhere */
    TAKEN_CLOSED,   /* the pair was closed */
};

/* Messages up to this size are copied out to be read; longer ones are made
 * contiguous in place. */
#define SMALL_MSG 512

/* Where a relay pass puts bytes. The messages it has passed over but not
 * moved yet (span, at the front of in) go out before anything a handler
 * writes, so that order is kept without moving every message on its own. */
struct sink {
    struct evbuffer *in, *out;
    size_t span;
};

static void sink_flush(struct sink *k)
{
    if (k->span) {
        evbuffer_remove_buffer(k->in, k->out, k->span);
        k->span = 0;
    }
}

static void sink_write(struct sink *k, const void *data, size_t len)
{
    sink_flush(k);
    evbuffer_add(k->out, data, len);
}

/* Notices, parameter changes and notifications can come at any time and
 * always belong to the client, even amid the answer to the proxy's query. */
static bool is_async(char type)
{
    return type == 'N' || type == 'S' || type == 'A';
}

static bool rewriting(const struct conn *c)
{
    return c->state == CONN_ACTIVE && c->scope && scope_state(c->scope) == SCOPE_READY;
}

/* The request the server is answering, when the proxy tracks one. */
static const struct track_req *answering(const struct conn *c)
{
    return c->state == CONN_ACTIVE ? track_head(&c->track) : NULL;
}

static bool answers_injected(const struct conn *c, char type)
{
    const struct track_req *head = answering(c);
    return head && head->injected && !is_async(type);
}

/* While the proxy holds a savepoint or an error, it follows every reply. */
static bool translating(const struct conn *c)
{
    return c->guard != GUARD_NONE || c->held_error;
}

/* Messages that name or redefine the unnamed statement. */
static bool names_statements(char type)
{
    return type == 'Q' || type == 'P' || type == 'B' || type == 'D' || type == 'C';
}

static enum handling client_handling(const struct conn *c, char type)
{
    if (type == 'X' && c->reusable)
        return HANDLE_TAKE;
    /* While the unnamed statement stands for a cached one, every message
     * naming it is read, rules or not. */
    if (!rewriting(c))
        return c->stmts.unnamed && names_statements(type) ? HANDLE_TAKE : HANDLE_STREAM;
    switch (type) {
    case 'Q': /* Query */
    case 'P': /* Parse */
    case 'B': /* Bind */
    case 'E': /* Execute */
    case 'C': /* Close */
    case 'S': /* Sync */
    case 'H': /* Flush */
        return HANDLE_TAKE;
    case 'D': /* Describe */
        return c->stmts.unnamed ? HANDLE_TAKE : HANDLE_STREAM;
    default:
        return HANDLE_STREAM;
    }
}

static bool answers_creation(const struct conn *c);

static enum handling server_handling(const struct conn *c, char type)
{
    if (answers_injected(c, type))
        return HANDLE_TAKE;
    /* How the client's statement ended decides what the proxy does next. */
    if ((translating(c) && (type == 'C' || type == 's')) ||
        ((translating(c) || c->batch_ending) && type == 'Z'))
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
        return c->state == CONN_LOGIN && c->reusable ? HANDLE_TAKE : HANDLE_STREAM;
    case 'Z':
        return c->state == CONN_LOGIN ? HANDLE_TAKE : HANDLE_PEEK;
    default:
        return HANDLE_STREAM;
    }
}

/* Client input waits while the proxy needs to see what the server says
 * before the client's next message may go: the catalog, or how a guarded
 * Query ended, or a rollback to come. (While a 23505 awaits the client's
 * next message, that message is what settles it.) */
static bool client_held(const struct conn *c)
{
    return c->catalog || c->batch_ending ||
           (c->guard != GUARD_NONE && c->guard != GUARD_AWAIT_SYNC);
}

static void fail_oom(struct conn *c)
{
    fail_client(c, "53200", "out of memory", "out of memory");
}

struct note;

/* Records a client message in the request queue. */
static bool track_client(struct conn *c, char type, struct note *note)
{
    if (track_client_msg(&c->track, type, note))
        return true;
    fail_oom(c);
    return false;
}

/* Records a message the proxy does not take. */
static bool track_plain(struct conn *c, enum flow d, char type, char status)
{
    if (c->state != CONN_ACTIVE)
        return true;
    if (d == FLOW_TO_SERVER)
        return track_client(c, type, NULL);
    track_server_msg(&c->track, type, status);
    return true;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- notes on requests ------------------------------------------------- */

/* What the proxy knows about one of the client's requests. */
struct note {
    struct decision *decision;   /* a rewritten text: error positions map through it */
    struct translate_request req; /* a Query or Execute of a recognised INSERT */
    const char *defines;         /* a Parse's statement or a Bind's portal name */
    bool flushed;                /* an Execute the client sent a Flush after */
    struct stmt_entry *maps;     /* a Parse that made the unnamed statement stand for
                                    this cached one */
    struct stmt_entry *creates;  /* ... and created it on the server, */
    uint64_t number;             /* under this number */
    bool silent;                 /* the proxy's Parse for a Query: its
                                    ParseComplete is the proxy's, and
                                    its text has parameters (params.h) */
    char defined[];              /* where defines points */
};

static void free_note(void *arg)
{
    struct note *n = arg;

    /* Gone from the queue without ParseComplete (refused, or skipped after
     * an error): nothing was created. The unnamed statement may still
     * stand for it, so that a Bind of it fails as it would have. */
    if (n->creates)
        stmtcache_created(n->creates, n->number, false);
    decision_unref(n->decision);
    free(n);
}

/* A note taking over a reference to d (which may be NULL), for a message
 * that defines a name (or NULL). */
static struct note *note_new(struct decision *d, const char *defines)
{
    size_t len = defines ? strlen(defines) + 1 : 0;
    struct note *n = calloc(1, sizeof(*n) + len);

    if (!n) {
        decision_unref(d);
        return NULL;
    }
    n->decision = d;
    n->req.table = -1;
    if (defines)
        n->defines = memcpy(n->defined, defines, len);
    return n;
}

static const struct note *note_of(const struct track_req *r)
{
    return r && !r->injected ? r->note : NULL;
}

/* The server answers a Parse that created a cached statement. */
static bool answers_creation(const struct conn *c)
{
    const struct note *n = note_of(answering(c));
    return n && n->creates;
}

/* ---- statements -------------------------------------------------------- */

/* One line per registered table's INSERT in a newly decided text; for a
 * rewrite it quotes what the server receives. */
static void log_decision(struct conn *c, const struct decision *d, const char *text, size_t len)
{
    const struct rewrite_result *r = &d->result;

    if (r->text) {
        text = r->text;
        len = r->text_len;
    }
    int shown = len > LOG_TEXT_MAX ? LOG_TEXT_MAX : (int)len;
    for (size_t i = 0; i < r->nstmts; i++) {
        const struct rewrite_stmt *st = &r->stmts[i];
        const struct table_rule *rule = scope_table(c->scope, st->target);
        enum log_level level = st->reason == RR_SHADOW ? LOG_INFO : LOG_DEBUG;
        if (!log_enabled(level))
            continue;
        conn_log(level, c, "%s: INSERT into %s.%s (%s): %.*s%s",
                 st->reason == RR_SHADOW ? "shadow mode, would rewrite"
                                         : rewrite_reason_name(st->reason),
                 rule->schema, rule->name, table_action_name(rule->action), shown, text,
                 (size_t)shown < len ? "..." : "");
    }
}

/* The decision about a Query's or Parse's text; NULL when there is nothing
 * to do with it. */
static struct decision *decide_statement(struct conn *c, char type, const uint8_t *body,
                                         size_t len, size_t *at, size_t *text_len)
{
    if (!pg_statement_text(type, body, len, at, text_len))
        return NULL; /* malformed: the server will say so */
    if (!c->charset_ok || c->scs_off) {
        scope_count_reason(c->scope, RR_SESSION);
        return NULL;
    }
    const char *text = (const char *)body + *at;
    bool fresh;
    struct decision *d = scope_decide(c->scope, text, *text_len, type == 'P', &fresh);
    scope_count(c->scope, d);
    if (d && fresh)
        log_decision(c, d, text, *text_len);
    return d;
}

/* A Query's or Parse's text and what was decided about it. */
struct statement {
    const uint8_t *body;
    size_t len;
    size_t at, text_len;  /* where the text is in body */
    struct decision *d;   /* a reference, or NULL */
    const struct rewrite_stmt *insert; /* its own INSERT into a registered
                                          table (not one nested in another
                                          statement), or NULL */
    int table;            /* that INSERT's scope table, or -1 */
    bool replaced;        /* the text was rewritten */
};

static void decide_message(struct conn *c, const uint8_t *msg, size_t total,
                           struct statement *st)
{
    memset(st, 0, sizeof(*st));
    st->body = msg + PG_HEAD_LEN;
    st->len = total - PG_HEAD_LEN;
    st->d = decide_statement(c, (char)msg[0], st->body, st->len, &st->at, &st->text_len);
    st->table = -1;
    for (size_t i = 0; st->d && i < st->d->result.nstmts && !st->insert; i++) {
        if (st->d->result.stmts[i].reason != RR_NESTED) {
            st->insert = &st->d->result.stmts[i];
            st->table = (int)st->insert->target;
        }
    }
    st->replaced = st->d && st->d->result.text;
    if (st->text_len &&
        rewrite_redefines_statements((const char *)st->body + st->at, st->text_len)) {
        session_clear(&c->session);
        stmtcache_forget_all(&c->stmts);
    }
}

/* Writes the message with the rewritten text in place of the original's
 * (a Parse keeps its name and parameter types around it). */
static void write_rewritten(struct sink *k, char type, const struct statement *st)
{
    const struct rewrite_result *r = &st->d->result;
    size_t rest = st->len - st->at - st->text_len; /* the text's NUL, a Parse's types */
    uint8_t head[PG_HEAD_LEN];

    head[0] = (uint8_t)type;
    pg_put_u32(head + 1, (uint32_t)(4 + st->at + r->text_len + rest));
    sink_write(k, head, sizeof(head));
    evbuffer_add(k->out, st->body, st->at);
    evbuffer_add(k->out, r->text, r->text_len);
    evbuffer_add(k->out, st->body + st->at + st->text_len, rest);
}

/* ---- cached statements (stmtcache.h) ----------------------------------- */

/* Parse of the cached text under name. */
static void write_parse(struct sink *k, const char *name, const struct stmt_entry *e)
{
    size_t name_len = strlen(name) + 1, text_len, types_len;
    const char *text = stmtcache_text(e, &text_len);
    const uint8_t *types = stmtcache_types(e, &types_len);
    uint8_t head[PG_HEAD_LEN] = { 'P' };

    pg_put_u32(head + 1, (uint32_t)(4 + name_len + text_len + 1 + types_len));
    sink_write(k, head, sizeof(head));
    evbuffer_add(k->out, name, name_len);
    evbuffer_add(k->out, text, text_len + 1);
    evbuffer_add(k->out, types, types_len);
}

/* Writes the client's message with the cached statement's name in place
 * of the unnamed statement's "" at body offset at. */
static void write_renamed(struct conn *c, struct sink *k, const uint8_t *msg, size_t total,
                          size_t at)
{
    const char *name = stmtcache_name(c->stmts.unnamed);
    uint8_t head[PG_HEAD_LEN] = { msg[0] };
    size_t name_len = strlen(name);

    pg_put_u32(head + 1, (uint32_t)(total - 1 + name_len));
    sink_write(k, head, sizeof(head));
    evbuffer_add(k->out, msg + PG_HEAD_LEN, at);
    evbuffer_add(k->out, name, name_len);
    evbuffer_add(k->out, msg + PG_HEAD_LEN + at, total - PG_HEAD_LEN - at);
}

/* The client parses a rewritten INSERT as its unnamed statement. Once the
 * server holds the cached copy, the Parse that goes is of the empty text:
 * its ParseComplete, or its silence after an error earlier in the batch,
 * is what the client's own would have been, and the client's Binds name
 * the copy. False when the Parse must go as it is. */
static bool parse_cached(struct conn *c, struct sink *k, const struct statement *st,
                         struct note *note)
{
    static const uint8_t empty_parse[] = { 'P', 0, 0, 0, 8, 0, 0, 0, 0 };
    const struct rewrite_result *r = &st->d->result;
    size_t types_at = st->at + st->text_len + 1;
    struct stmt_entry *e = stmtcache_get(&c->stmts, r->text, r->text_len,
                                         st->body + types_at, st->len - types_at);

    if (!e)
        return false;
    switch (stmtcache_state(e)) {
    case STMT_READY:
        sink_write(k, empty_parse, sizeof(empty_parse));
        break;
    case STMT_ABSENT:
        note->number = stmtcache_create(&c->stmts, e);
        note->creates = e;
        write_parse(k, stmtcache_name(e), e);
        break;
    case STMT_PENDING:
        return false; /* until its ParseComplete, it may never come to be */
    }
    note->maps = e;
    c->stmts.unnamed = e;
    return true;
}

/* A Query, a Parse or a Close of the unnamed statement: it is the server's
 * own again (unless the server skips the message). */
static void unnamed_redefined(struct conn *c)
{
    if (!c->track.skip_to_sync)
        c->stmts.unnamed = NULL;
}

/* The server is to read a message the proxy cannot rename (too large to
 * hold): its unnamed statement gets the cached text first, so that the
 * message means what the client meant either way. */
static void restore_unnamed(struct conn *c, struct sink *k)
{
    if (!c->track.copy_in && track_inject(&c->track, 'P', INJECT_UNNAMED))
        write_parse(k, "", c->stmts.unnamed);
    else
        conn_log(LOG_ERROR, c, "could not restore the unnamed statement before an unread "
                 "message");
    c->stmts.unnamed = NULL;
}

/* ---- the proxy's own statements ---------------------------------------- */

/* Sends sql as a Query of the proxy's own. Only between the client's
 * requests at the simple-protocol level; k (when given) keeps the order of
 * what the relay pass has not moved yet. */
static bool inject_query(struct conn *c, struct sink *k, const char *sql, enum inject tag)
{
    uint8_t buf[256];
    size_t need = pg_build_query(buf, sizeof(buf), sql);

    if (need > sizeof(buf) || !track_inject(&c->track, 'Q', tag))
        return false;
    if (k)
        sink_write(k, buf, need);
    else
        send_to(c->server, buf, need);
    return true;
}

/* Runs sql inside the client's extended batch, on the proxy's own statement
 * and portal names. */
static bool inject_extended(struct conn *c, struct sink *k, const char *sql, enum inject tag)
{
    uint8_t buf[512];
    size_t need = pg_build_extended_run(buf, sizeof(buf), GUARD_NAME, sql);

    if (need > sizeof(buf))
        return false;
    for (const char *m = "PBECC"; *m; m++)
        if (!track_inject(&c->track, *m, tag))
            return false;
    if (k)
        sink_write(k, buf, need);
    else
        send_to(c->server, buf, need);
    return true;
}

/* Asks the server about the registered tables before the session's first
 * statement; client input waits until the answer is in. Only while the
 * session is idle: anywhere else the query would join the client's work. */
static void learn_catalog(struct conn *c)
{
    const char *sql = scope_catalog_query(c->scope);
    struct catalog *cat = malloc(sizeof(*cat));

    if (!sql || !cat || !track_inject(&c->track, 'Q', INJECT_CATALOG)) {
        free(cat);
        conn_log(LOG_ERROR, c, "out of memory: INSERTs of this session are not rewritten");
        return;
    }
    size_t len = strlen(sql) + 1;
    uint8_t head[PG_HEAD_LEN] = { 'Q' };
    pg_put_u32(head + 1, (uint32_t)(4 + len));
    evbuffer_add(sock_output(c->server), head, sizeof(head));
    send_to(c->server, sql, len);
    catalog_init(cat);
    c->catalog = cat;
    c->catalog_ok = true;
    conn_log(LOG_DEBUG, c, "asking the server about the registered tables");
}

static void catalog_arrived(struct conn *c)
{
    bool was_unknown = scope_state(c->scope) == SCOPE_UNKNOWN;

    if (!c->catalog_ok)
        conn_log(LOG_WARNING, c, "the catalog query failed: INSERTs of this session are not "
                 "rewritten; the next session tries again");
    else if (!scope_learn(c->scope, c->catalog))
        conn_log(LOG_ERROR, c, "out of memory: INSERTs of this session are not rewritten");
    else if (was_unknown) {
        for (size_t i = 0; i < scope_table_count(c->scope); i++) {
            const struct table_rule *rule = scope_table(c->scope, i);
            const char *problem = scope_table_problem(c->scope, i);
            if (problem[0])
                conn_log(LOG_WARNING, c, "[table %s.%s]: some INSERTs are not rewritten: %s",
                         rule->schema, rule->name, problem);
        }
    }
    catalog_free(c->catalog);
    free(c->catalog);
    c->catalog = NULL;
    c->resume_client = true;
}

/* ---- client messages the proxy reads ----------------------------------- */

/* The extended batch begins with its first message after a Sync: what the
 * session's transaction status is then is only certain when nothing is
 * outstanding. */
static void batch_message(struct conn *c)
{
    if (!c->batch_open) {
        c->batch_open = true;
        c->batch_certain = track_pending(&c->track) == 0;
        c->batch_executes = 0;
    }
}

/* Writes a guarded request: the proxy's SAVEPOINT, the client's message
 * (msg, or the rewritten one), the proxy's RELEASE. */
static bool write_guarded(struct conn *c, struct sink *k, const uint8_t *msg, size_t total,
                          const struct statement *st, struct note *note)
{
    char type = (char)msg[0];
    bool (*inject)(struct conn *, struct sink *, const char *, enum inject) =
        type == 'Q' ? inject_query : inject_extended;

    if (!inject(c, k, TRANSLATE_SQL_SAVEPOINT, INJECT_SAVEPOINT)) {
        free_note(note);
        return false;
    }
    if (st && st->replaced)
        write_rewritten(k, type, st);
    else
        sink_write(k, msg, total);
    return track_client_msg(&c->track, type, note) &&
           inject(c, k, TRANSLATE_SQL_RELEASE, INJECT_RELEASE);
}

enum prepared {
    PREPARED_NOT,    /* nothing written: the Query goes as it is */
    PREPARED_SENT,   /* the note is the queue's */
    PREPARED_FAILED, /* out of memory: the pair is failing, the note freed */
};

/* Runs a Query's rewritten INSERT as the cached statement of its text
 * with the constants as parameters (params.h), bound to this Query's
 * values: the server parses and plans it once per session, not at every
 * Query. The server's answer reads as the Query's: the proxy drops the
 * replies to its own Close, Parse and Bind (and forwards their errors,
 * which stand for the client's statement), and the client's request is
 * the Execute and the Sync. The Close drops the unnamed statement, as the
 * Query would have (once, until the client parses again). Only for one
 * INSERT without RETURNING outside a transaction block, with nothing
 * outstanding: the Sync then commits as the Query would have, and the
 * unnamed portal goes with the commit. */
static enum prepared prepare_query(struct conn *c, struct sink *k, const struct statement *st,
                                   struct note *note)
{
    static const uint8_t close_unnamed[] = { 'C', 0, 0, 0, 6, 'S', 0 };
    static const uint8_t execute_sync[] = { 'E', 0, 0, 0, 9, 0, 0, 0, 0, 0, 'S', 0, 0, 0, 4 };
    const struct rewrite_result *r = &st->d->result;
    struct shape *sh = &c->worker->query_shape;
    struct params *p = &c->worker->query_params;

    if (c->stmts.max == 0 || r->stmt_count != 1 || !st->insert || st->insert->returning ||
        c->track.txn_status != 'I' || track_pending(&c->track) != 0 ||
        !shape_of(r->text, r->text_len, sh) || !params_of(sh, r->text, r->text_len, p))
        return PREPARED_NOT;
    struct stmt_entry *e = stmtcache_get(&c->stmts, p->text, p->text_len, p->types,
                                         p->types_len);
    if (!e || stmtcache_state(e) == STMT_PENDING)
        return PREPARED_NOT;

    if (!c->unnamed_closed) {
        if (!track_inject(&c->track, 'C', INJECT_PREPARED))
            goto failed;
        sink_write(k, close_unnamed, sizeof(close_unnamed));
        c->unnamed_closed = true;
    }
    if (stmtcache_state(e) == STMT_ABSENT) {
        /* Its errors' positions are mapped back through the decision. */
        st->d->refs++;
        struct note *creating = note_new(st->d, NULL);
        if (!creating)
            goto failed;
        creating->silent = true;
        creating->creates = e;
        creating->number = stmtcache_create(&c->stmts, e);
        write_parse(k, stmtcache_name(e), e);
        if (!track_client_msg(&c->track, 'P', creating))
            goto failed;
    }
    const char *name = stmtcache_name(e);
    size_t name_len = strlen(name) + 1;
    uint8_t head[PG_HEAD_LEN + 1] = { 'B' }; /* and the unnamed portal */
    uint8_t no_formats[2] = { 0, 0 };
    pg_put_u32(head + 1, (uint32_t)(4 + 1 + name_len + 2 + p->values_len + 2));
    sink_write(k, head, sizeof(head));
    evbuffer_add(k->out, name, name_len);
    evbuffer_add(k->out, no_formats, sizeof(no_formats));
    evbuffer_add(k->out, p->values, p->values_len);
    evbuffer_add(k->out, no_formats, sizeof(no_formats));
    if (!track_inject(&c->track, 'B', INJECT_PREPARED))
        goto failed;
    sink_write(k, execute_sync, sizeof(execute_sync));
    /* Positions in the server's errors are in the statement's text now. */
    decision_unref(note->decision);
    note->decision = NULL;
    note->req.extended = true;
    if (!track_client_msg(&c->track, 'E', note) || !track_client_msg(&c->track, 'S', NULL)) {
        fail_oom(c);
        return PREPARED_FAILED;
    }
    return PREPARED_SENT;
failed:
    free_note(note);
    fail_oom(c);
    return PREPARED_FAILED;
}

static enum taken take_query(struct conn *c, const uint8_t *msg, size_t total, struct sink *k)
{
    struct statement st;
    struct note *note = NULL;

    decide_message(c, msg, total, &st);
    /* A Query in the middle of a batch ends its implicit transaction, and
     * drops the unnamed statement. */
    c->batch_certain = false;
    unnamed_redefined(c);
    if (st.table < 0 && !st.replaced) {
        decision_unref(st.d);
        return track_client(c, 'Q', NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
    }
    note = note_new(st.d, NULL);
    if (!note) {
        fail_oom(c);
        return TAKEN_CLOSED;
    }
    note->req = (struct translate_request){
        .table = st.table,
        .enabled = st.table >= 0 && scope_translates(c->scope, (size_t)st.table),
        .statements = st.d->result.stmt_count,
        .txn_status = c->track.txn_status,
        .returning = st.insert && st.insert->returning,
    };
    /* The status is certain when nothing is outstanding. */
    if (translate_guard(&note->req, track_pending(&c->track) == 0)) {
        note->req.guarded = true;
        if (!write_guarded(c, k, msg, total, &st, note)) {
            fail_oom(c);
            return TAKEN_CLOSED;
        }
        c->guard = GUARD_OPEN;
        return TAKEN_REPLACED;
    }
    if (st.replaced) {
        switch (prepare_query(c, k, &st, note)) {
        case PREPARED_SENT:
            return TAKEN_REPLACED;
        case PREPARED_FAILED:
            return TAKEN_CLOSED;
        case PREPARED_NOT:
            write_rewritten(k, 'Q', &st);
            break;
        }
    }
    if (!track_client(c, 'Q', note))
        return TAKEN_CLOSED;
    return st.replaced ? TAKEN_REPLACED : TAKEN_FORWARD;
}

static enum taken take_parse(struct conn *c, const uint8_t *msg, size_t total, struct sink *k)
{
    struct statement st;

    decide_message(c, msg, total, &st);
    batch_message(c);
    /* Only a single INSERT can be prepared: the name now means it, unless
     * the server refuses the Parse (see forget_refused) or is skipping
     * everything to the next Sync anyway. */
    const struct table_rule *rule = st.table >= 0 && st.d->result.stmt_count == 1 &&
                                            !c->track.skip_to_sync
                                        ? scope_table(c->scope, (size_t)st.table)
                                        : NULL;
    /* A rewritten text's decision stays with the request: an error's
     * position is mapped back through it. */
    const char *name = st.at > 0 ? (const char *)st.body : NULL;
    struct note *note = note_new(st.replaced ? st.d : NULL, name);
    if (!st.replaced)
        decision_unref(st.d);
    if (!note || (name && !session_parse(&c->session, name, rule ? rule->schema : NULL,
                                         rule ? rule->name : NULL))) {
        if (note)
            free_note(note);
        fail_oom(c);
        return TAKEN_CLOSED;
    }
    bool unnamed = name && name[0] == '\0';
    if (unnamed)
        unnamed_redefined(c);
    if (st.replaced && !(unnamed && rule && parse_cached(c, k, &st, note)))
        write_rewritten(k, 'P', &st);
    if (!track_client(c, 'P', note))
        return TAKEN_CLOSED;
    return st.replaced ? TAKEN_REPLACED : TAKEN_FORWARD;
}

/* Reads the NUL-terminated name at *at in body; advances *at past it. */
static const char *read_name(const uint8_t *body, size_t len, size_t *at)
{
    const uint8_t *end = *at < len ? memchr(body + *at, '\0', len - *at) : NULL;

    if (!end)
        return NULL;
    const char *name = (const char *)body + *at;
    *at = (size_t)(end - body) + 1;
    return name;
}

static enum taken take_bind(struct conn *c, const uint8_t *msg, size_t total, struct sink *k)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN, at = 0;
    const char *portal = read_name(body, len, &at);
    size_t statement_at = at;
    const char *statement = portal ? read_name(body, len, &at) : NULL;

    batch_message(c);
    if (!statement)
        return track_client(c, 'B', NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
    /* A Bind the server skips (it is skipping to Sync after an error)
     * leaves the portal as it was, which the proxy cannot know. */
    if (c->track.skip_to_sync) {
        session_close(&c->session, 'P', portal);
        return track_client(c, 'B', NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
    }
    struct note *note = note_new(NULL, portal);
    if (!note || !session_bind(&c->session, portal, statement)) {
        if (note)
            free_note(note);
        fail_oom(c);
        return TAKEN_CLOSED;
    }
    bool renamed = statement[0] == '\0' && c->stmts.unnamed;
    if (renamed)
        write_renamed(c, k, msg, total, statement_at);
    if (!track_client(c, 'B', note))
        return TAKEN_CLOSED;
    return renamed ? TAKEN_REPLACED : TAKEN_FORWARD;
}

/* Taken only while the unnamed statement stands for a cached one. */
static enum taken take_describe(struct conn *c, const uint8_t *msg, size_t total,
                                struct sink *k)
{
    bool renamed = total >= PG_HEAD_LEN + 2 && msg[PG_HEAD_LEN] == 'S' &&
                   msg[PG_HEAD_LEN + 1] == '\0' && c->stmts.unnamed;

    batch_message(c);
    if (renamed)
        write_renamed(c, k, msg, total, 1);
    if (!track_client(c, 'D', NULL))
        return TAKEN_CLOSED;
    return renamed ? TAKEN_REPLACED : TAKEN_FORWARD;
}

static enum taken take_close(struct conn *c, const uint8_t *msg, size_t total)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN, at = 1;
    const char *name = len > 1 ? read_name(body, len, &at) : NULL;

    batch_message(c);
    if (name)
        session_close(&c->session, (char)body[0], name);
    /* It closes the server's own unnamed statement, as the client meant. */
    if (name && body[0] == 'S' && name[0] == '\0')
        unnamed_redefined(c);
    return track_client(c, 'C', NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
}

/* An Execute of a recognised INSERT carries what translation needs; in a
 * transaction block it runs under the proxy's savepoint. */
static enum taken take_execute(struct conn *c, const uint8_t *msg, size_t total, struct sink *k)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN, at = 0;
    const char *portal = read_name(body, len, &at);
    const char *schema, *name;
    int table = -1;

    batch_message(c);
    c->batch_executes++;
    if (portal && session_portal(&c->session, portal, &schema, &name))
        table = scope_find_table(c->scope, schema, name);
    if (table < 0) {
        /* What it runs is unknown: later Executes of the batch cannot know
         * whether the transaction block is still open. */
        c->batch_certain = false;
        return track_client(c, 'E', NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
    }
    struct note *note = note_new(NULL, NULL);
    if (!note) {
        fail_oom(c);
        return TAKEN_CLOSED;
    }
    note->req = (struct translate_request){
        .extended = true,
        .table = table,
        .enabled = scope_translates(c->scope, (size_t)table),
        .statements = c->batch_executes,
        .txn_status = c->track.txn_status,
    };
    if (!translate_guard(&note->req, c->batch_certain))
        return track_client(c, 'E', note) ? TAKEN_FORWARD : TAKEN_CLOSED;
    note->req.guarded = true;
    if (!write_guarded(c, k, msg, total, NULL, note)) {
        fail_oom(c);
        return TAKEN_CLOSED;
    }
    c->batch_guarded = true;
    return TAKEN_REPLACED;
}

static enum taken take_sync(struct conn *c)
{
    c->batch_open = false;
    c->batch_ending = c->batch_guarded;
    c->batch_guarded = false;
    if (c->guard == GUARD_AWAIT_SYNC)
        c->guard = GUARD_SYNCED;
    return track_client(c, 'S', NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
}

/* A Flush after an Execute: the client may wait for its outcome before it
 * sends anything more, so an error must not wait for its next message. */
static enum taken take_flush(struct conn *c)
{
    const struct track_req *last = NULL;

    /* The client's last request; the proxy's RELEASE may follow it. */
    for (size_t n = track_pending(&c->track); n > 0 && !last; n--) {
        const struct track_req *r = track_at(&c->track, n - 1);
        if (!r->injected)
            last = r;
    }
    if (last && last->kind == TRACK_EXECUTE && last->note)
        ((struct note *)last->note)->flushed = true;
    return track_client(c, 'H', NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
}

/* server_reuse: the client left an idle session, so its server can serve
 * the next client with the same login; it goes to the worker's pool
 * instead of closing. True when it did. */
static bool keep_server(struct conn *c)
{
    struct worker *w = c->worker;

    worker_refresh(w);
    if (!c->reusable || !w->cfg->server_reuse || w->shutting_down ||
        c->generation != w->generation || c->state != CONN_ACTIVE || !c->server ||
        !track_idle(&c->track) || c->catalog || c->guard != GUARD_NONE || c->held_error ||
        c->stream_left[FLOW_TO_SERVER] || c->stream_left[FLOW_TO_CLIENT] ||
        evbuffer_get_length(sock_input(c->server)) > 0 ||
        sock_unsent(c->server) > 0)
        return false;
    forget_key(c);
    struct pool_server kept = { .sock = c->server, .welcome = c->welcome };
    if (!pool_park(w->pool, c->startup, c->startup_len, &kept, worker_pool_max(w),
                   w->cfg->server_idle_timeout))
        return false;
    welcome_init(&c->welcome);
    c->server = NULL;
    counter_sub(&w->counters.server_connections, 1);
    return true;
}

/* Terminate: the server goes on to the next client when it can (nothing
 * of this pass may be on its way to it), else hears the goodbye. */
static enum taken take_terminate(struct conn *c, struct sink *k)
{
    if (k->span == 0 && keep_server(c)) {
        close_pair(c, "client left; server kept for reuse");
        return TAKEN_CLOSED;
    }
    return track_client(c, 'X', NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
}

/* The session's rules went (a reload) while its unnamed statement stood
 * for a cached one: its names are followed until the client redefines it. */
static enum taken take_named(struct conn *c, const uint8_t *msg, size_t total, struct sink *k)
{
    char type = (char)msg[0];

    switch (type) {
    case 'B': return take_bind(c, msg, total, k);
    case 'D': return take_describe(c, msg, total, k);
    case 'C': return take_close(c, msg, total);
    default:
        if (type == 'Q' || (total > PG_HEAD_LEN && msg[PG_HEAD_LEN] == '\0'))
            unnamed_redefined(c);
        return track_client(c, type, NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
    }
}

static enum taken take_client_msg(struct conn *c, const uint8_t *msg, size_t total,
                                  struct sink *k)
{
    char type = (char)msg[0];

    if (type == 'X')
        return take_terminate(c, k);
    if (!rewriting(c))
        return take_named(c, msg, total, k);
    switch (type) {
    case 'Q': return take_query(c, msg, total, k);
    case 'P': return take_parse(c, msg, total, k);
    case 'B': return take_bind(c, msg, total, k);
    case 'D': return take_describe(c, msg, total, k);
    case 'E': return take_execute(c, msg, total, k);
    case 'C': return take_close(c, msg, total);
    case 'S': return take_sync(c);
    case 'H': return take_flush(c);
    default:
        return track_client(c, type, NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
    }
}

/* ---- translating unique violations ------------------------------------- */

static void send_complete(struct sink *k)
{
    uint8_t buf[32];
    size_t need = pg_build_command_complete(buf, sizeof(buf), TRANSLATE_TAG);
    sink_write(k, buf, need);
}

static void count_translation(struct conn *c, int table, enum translate_reason why)
{
    const struct table_rule *rule = scope_table(c->scope, (size_t)table);

    scope_count_translation(c->scope, (size_t)table, why);
    conn_log(LOG_DEBUG, c, "unique violation on %s.%s: %s", rule->schema, rule->name,
             why == TR_TRANSLATED ? "reported as INSERT 0 0" : translate_reason_name(why));
}

/* Keeps an error to send (or replace) once the proxy knows which. */
static bool hold_error(struct conn *c, const uint8_t *msg, size_t total, int table)
{
    c->held_error = malloc(total);
    if (!c->held_error)
        return false;
    memcpy(c->held_error, msg, total);
    c->held_error_len = total;
    c->held_table = table;
    return true;
}

/* Sends the held error on (translated or not), and forgets it. */
static void release_error(struct conn *c, struct sink *k, bool translated,
                          enum translate_reason why)
{
    if (translated)
        send_complete(k);
    else
        sink_write(k, c->held_error, c->held_error_len);
    count_translation(c, c->held_table, why);
    free(c->held_error);
    c->held_error = NULL;
    c->await_next = false;
}

/* The client's next message after an Execute whose 23505 waits: a Sync
 * means nothing else shared the failed implicit transaction. Anything else
 * settles it too: a Flush says the client may be waiting for the outcome.
 * The held error goes to the client before anything the server says next. */
static void settle_await(struct conn *c, char type)
{
    enum translate_reason why;
    bool translated = translate_await(type, &why) == TRANSLATE_COMPLETE;
    struct sink k = { NULL, sock_output(c->client), 0 };
    release_error(c, &k, translated, why);
    sock_flush(c->client);
}

/* The client's next message after an Execute whose 23505 waits under the
 * proxy's savepoint: only a Sync lets the rollback happen honestly. Anything
 * else is skipped by the server, and a Flush says the client may be waiting
 * for the outcome: the client hears the error as it is. */
static void guard_next(struct conn *c, char type)
{
    if (type == 'S')
        return;
    struct sink k = { NULL, sock_output(c->client), 0 };
    release_error(c, &k, false, TR_NOT_SYNC);
    sock_flush(c->client);
    c->guard = GUARD_NONE;
}

/* The client's next message after a guarded Execute that failed, as far
 * as it was sent: 'S' for Sync, 'H' for anything else (a Flush too, after
 * which the client may be waiting), 0 when nothing came yet. The proxy's
 * own RELEASE behind the Execute does not count. */
static char guarded_next(const struct conn *c, const struct note *note)
{
    const struct track_req *r;
    size_t i = 1;

    while ((r = track_at(&c->track, i)) && r->injected)
        i++;
    if (!r)
        return note && note->flushed ? 'H' : 0;
    if (r->kind != TRACK_SYNC)
        return 'H';
    /* The rollback must reach the server before anything the client sent
     * after the Sync. */
    while ((r = track_at(&c->track, ++i)))
        if (!r->injected)
            return 'H';
    return 'S';
}

/* The server refused an extended message and skips the rest up to Sync:
 * what the Parses and Binds among them defined never came to be, so their
 * names are forgotten (the server may still hold an older meaning, which
 * the proxy does not know). */
static void forget_refused(struct conn *c)
{
    const struct track_req *r;

    for (size_t i = 0; (r = track_at(&c->track, i)) && r->kind != TRACK_SYNC; i++) {
        const struct note *n = note_of(r);
        if (r->kind == TRACK_QUERY || r->kind == TRACK_FUNCALL || r->kind == TRACK_COPY_END)
            break;
        if (n && n->defines)
            session_close(&c->session, r->kind == TRACK_PARSE ? 'S' : 'P', n->defines);
        /* Skipped, so the unnamed statement is what it was before. */
        if (i > 0 && n && n->maps && c->stmts.unnamed == n->maps)
            c->stmts.unnamed = NULL;
    }
}

/* A statement the server says does not exist (the client's SQL dropped it
 * where the proxy could not see) is created again next time. */
static void note_statement_gone(struct conn *c, const struct pg_error *err)
{
    if (err->code && strcmp(err->code, "26000") == 0)
        stmtcache_forget_all(&c->stmts);
}

/* An error about one of the client's requests: its position is mapped back
 * onto the client's text, and a unique violation on a registered table may
 * be reported as success. */
static enum taken take_error(struct conn *c, const uint8_t *msg, size_t total, struct sink *k)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN;
    const struct note *note = note_of(answering(c));
    struct pg_error err;

    if (!pg_error_parse(body, len, &err))
        return TAKEN_FORWARD;
    note_fatal(c, &err);
    note_statement_gone(c, &err);
    forget_refused(c);
    if (c->guard == GUARD_BROKEN) {
        /* The proxy's savepoint failed and said so; this is the client's
         * statement failing in the aborted block, which adds nothing. */
        c->guard = GUARD_SPENT;
        return TAKEN_DROPPED;
    }

    int error_table = -1;
    if (c->scope && err.schema && err.table)
        error_table = scope_find_table(c->scope, err.schema, err.table);
    if (error_table >= 0 && err.code && strcmp(err.code, "23505") == 0) {
        struct translate_request req = { .table = -1 };
        if (note)
            req = note->req;
        /* What the block was when this request began is what the last
         * ReadyForQuery said; a savepoint was placed knowing it already. */
        if (!req.guarded)
            req.txn_status = c->track.txn_status;
        struct translate_error error = { err.code, error_table, err.where != NULL };
        enum translate_reason why;
        enum translate_verdict verdict = translate_decide(&req, &error, &why);
        const struct track_req *next = track_at(&c->track, 1);
        switch (verdict) {
        case TRANSLATE_COMPLETE:
            count_translation(c, error_table, why);
            send_complete(k);
            return TAKEN_REPLACED;
        case TRANSLATE_AWAIT:
            /* What the client sent after the Execute settles it now, if it
             * sent anything: the next request the proxy tracks, else a
             * Flush, after which the client may be waiting for the outcome. */
            if ((next && !next->injected) || note->flushed) {
                char next_type = next && !next->injected
                                     ? (next->kind == TRACK_SYNC ? 'S' : '?')
                                     : 'H';
                verdict = translate_await(next_type, &why);
                count_translation(c, error_table, why);
                if (verdict == TRANSLATE_COMPLETE) {
                    send_complete(k);
                    return TAKEN_REPLACED;
                }
                return TAKEN_FORWARD;
            }
            if (!hold_error(c, msg, total, error_table)) {
                fail_oom(c);
                return TAKEN_CLOSED;
            }
            c->await_next = true;
            return TAKEN_DROPPED;
        case TRANSLATE_ROLLBACK: {
            /* Extended: the server now skips to the client's Sync, which
             * must be the client's next message for the rollback to be
             * honest; anything else it sent is lost, so the error stands. */
            char after = req.extended ? guarded_next(c, note) : 0;
            if (after == 'H') {
                count_translation(c, error_table, TR_NOT_SYNC);
                return TAKEN_FORWARD;
            }
            if (!hold_error(c, msg, total, error_table)) {
                fail_oom(c);
                return TAKEN_CLOSED;
            }
            /* Simple: the rollback follows RELEASE's failure in the aborted
             * block. Extended: it follows the Sync's ReadyForQuery. */
            c->guard = !req.extended ? GUARD_FAILED
                                     : after == 'S' ? GUARD_SYNCED : GUARD_AWAIT_SYNC;
            return TAKEN_DROPPED;
        }
        case TRANSLATE_PASS:
            count_translation(c, error_table, why);
            break;
        }
    }
    if (c->guard == GUARD_OPEN) {
        /* The guarded Query failed otherwise: the block is aborted as the
         * client will see; the savepoint goes with whatever it does next. */
        c->guard = GUARD_SPENT;
    }

    if (note && note->decision && note->decision->result.text && err.position) {
        const struct rewrite_result *r = &note->decision->result;
        size_t pos = strtoul(err.position, NULL, 10);
        /* The proxy's Parse for a Query: first from its statement onto the
         * rewritten text. */
        if (note->silent)
            pos = params_position(r->text, r->text_len, pos, c->charset_utf8);
        size_t mapped = rewrite_map_position(r, pos, c->charset_utf8);
        char value[24];
        uint8_t buf[1024];
        snprintf(value, sizeof(value), "%zu", mapped);
        size_t need = pg_fields_replace(buf, sizeof(buf), 'E', body, len, 'P', value);
        uint8_t *big = need > sizeof(buf) && need != SIZE_MAX ? malloc(need) : NULL;
        if (big)
            pg_fields_replace(big, need, 'E', body, len, 'P', value);
        if (need <= sizeof(buf) || big) {
            sink_write(k, big ? big : buf, need);
            free(big);
            return TAKEN_REPLACED;
        }
    }
    return TAKEN_FORWARD;
}

/* A reply to the proxy's own request. The client never sees it, except an
 * error that stands for the client's statement or ends the session. */
static enum taken take_injected_reply(struct conn *c, enum inject tag, char type,
                                      const uint8_t *msg, size_t total, struct sink *k)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN;
    enum taken taken = TAKEN_DROPPED;
    struct pg_error err;
    bool error = type == 'E' && pg_error_parse(body, len, &err);
    char status = type == 'Z' ? pg_ready_status(body, len) : 0;

    if (error) {
        if (note_fatal(c, &err))
            taken = TAKEN_FORWARD;
        note_statement_gone(c, &err);
    }
    if (type == 'E')
        forget_refused(c);
    switch (tag) {
    case INJECT_CATALOG:
        if (type == 'D' && c->catalog && !catalog_add_row(c->catalog, body, len))
            c->catalog_ok = false;
        if (type == 'E') {
            c->catalog_ok = false;
            if (error)
                conn_log(LOG_WARNING, c, "catalog query: %s %s", err.code ? err.code : "?",
                         err.message ? err.message : "");
        }
        break;
    case INJECT_SAVEPOINT:
        if (type == 'E') {
            /* The statement cannot run as planned (a cancel, say): the
             * client hears this error for it. A Query's own error then adds
             * nothing; an Execute is skipped by the server anyway. */
            taken = TAKEN_FORWARD;
            if (c->guard == GUARD_OPEN)
                c->guard = GUARD_BROKEN;
        }
        break;
    case INJECT_RELEASE:
        if (type == 'E' && (c->guard == GUARD_RELEASING || c->guard == GUARD_NONE)) {
            /* After the client was told its INSERT succeeded: the block
             * failed now (a cancel), which the client must hear. */
            taken = TAKEN_FORWARD;
        }
        if (type == 'Z') {
            if (c->guard == GUARD_FAILED) {
                /* The 23505 aborted the block: roll back to the savepoint,
                 * then tell the client. */
                if (!inject_query(c, NULL, TRANSLATE_SQL_ROLLBACK, INJECT_ROLLBACK)) {
                    fail_oom(c);
                    return TAKEN_CLOSED;
                }
                c->guard = GUARD_ROLLBACK;
            } else {
                /* It tells the truth about the block: the client's. */
                taken = TAKEN_FORWARD;
                c->guard = GUARD_NONE;
            }
        }
        break;
    case INJECT_UNNAMED:
    case INJECT_PREPARED:
        /* Why the client's message is skipped. */
        if (type == 'E')
            taken = TAKEN_FORWARD;
        break;
    case INJECT_ROLLBACK:
        if (type == 'E')
            c->rollback_failed = true;
        if (type == 'Z') {
            /* The client's answer: the INSERT changed nothing, the block
             * goes on; or, if a cancel stopped the rollback, its error. */
            release_error(c, k, !c->rollback_failed,
                          c->rollback_failed ? TR_ROLLBACK_FAILED : TR_TRANSLATED);
            if (c->rollback_failed)
                conn_log(LOG_INFO, c, "the rollback to the proxy's savepoint failed: the "
                         "unique violation is reported as it was");
            c->rollback_failed = false;
            c->guard = GUARD_NONE;
            taken = TAKEN_FORWARD;
        }
        break;
    }
    track_server_msg(&c->track, type, status);
    if (type == 'Z' && tag == INJECT_CATALOG && c->catalog)
        catalog_arrived(c);
    if (!client_held(c))
        c->resume_client = true;
    return taken;
}

/* CommandComplete of a guarded Query: it succeeded. */
static void guard_reply(struct conn *c, char type, const struct note *note)
{
    if (c->guard == GUARD_OPEN && note && note->req.guarded && type == 'C')
        c->guard = GUARD_RELEASING;
}

/* ReadyForQuery for the client's request while the proxy translates. */
static enum taken guard_ready(struct conn *c)
{
    switch (c->guard) {
    case GUARD_RELEASING:
    case GUARD_SPENT:
    case GUARD_FAILED:
        /* RELEASE's own ReadyForQuery comes next and tells the truth. */
        return TAKEN_DROPPED;
    case GUARD_SYNCED:
        /* The Execute's 23505 aborted the block and the batch is over:
         * roll back to the savepoint, then tell the client. */
        if (!inject_query(c, NULL, TRANSLATE_SQL_ROLLBACK, INJECT_ROLLBACK)) {
            fail_oom(c);
            return TAKEN_CLOSED;
        }
        c->guard = GUARD_ROLLBACK;
        return TAKEN_DROPPED;
    default:
        return TAKEN_FORWARD;
    }
}

/* ---- server messages the proxy reads ----------------------------------- */

static void copy_setting(char *dst, size_t cap, const char *value)
{
    snprintf(dst, cap, "%s", value);
}

/* The settings that decide whether text may be scanned. */
static void note_setting(struct conn *c, const char *name, const char *value)
{
    if (strcmp(name, "client_encoding") == 0)
        copy_setting(c->client_encoding, sizeof(c->client_encoding), value);
    else if (strcmp(name, "server_encoding") == 0)
        copy_setting(c->server_encoding, sizeof(c->server_encoding), value);
    else if (strcmp(name, "standard_conforming_strings") == 0)
        c->scs_off = strcmp(value, "on") != 0;
    else
        return;
    c->charset_ok = rewrite_charset(c->client_encoding, c->server_encoding, &c->charset_utf8);
}

static void note_parameter(struct conn *c, const uint8_t *body, size_t len)
{
    const char *name, *value;

    if (c->reusable)
        welcome_note(&c->welcome, 'S', body, len);
    if (pg_param_status(body, len, &name, &value))
        note_setting(c, name, value);
}

static void login_done(struct conn *c)
{
    c->state = CONN_ACTIVE;
    c->logged_in_ns = now_ns();
    event_free(c->login_timer);
    c->login_timer = NULL;
    conn_log(LOG_DEBUG, c, "logged in");
    /* From here on the traffic is the session's: batched through the ring. */
    sock_use_ring(c->client, c->worker->ring);
    if (c->server)
        sock_use_ring(c->server, c->worker->ring);
    if (!c->replication)
        c->scope = ruleset_scope(c->rules, c->database, c->user ? c->user : "");
    if (c->scope && scope_state(c->scope) == SCOPE_UNKNOWN)
        learn_catalog(c);
}

static enum taken take_server_msg(struct conn *c, const uint8_t *msg, size_t total,
                                  struct sink *k)
{
    char type = (char)msg[0];
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN;
    const struct track_req *head = answering(c);
    enum taken taken = TAKEN_FORWARD;

    if (answers_injected(c, type))
        return take_injected_reply(c, (enum inject)head->tag, type, msg, total, k);
    switch (type) {
    case 'R':
        return take_auth_request(c, msg, total, k);
    case 'S':
        note_parameter(c, body, len);
        break;
    case 'K':
        welcome_note(&c->welcome, 'K', body, len);
        if (give_key(c, body, len)) {
            sink_write(k, msg, PG_HEAD_LEN);
            sink_write(k, c->given_key, c->given_key_len);
            taken = TAKEN_REPLACED;
        }
        break;
    case 'E':
        taken = take_error(c, msg, total, k);
        break;
    case '1': /* taken only when it confirms a cached statement */
        stmtcache_created(note_of(head)->creates, note_of(head)->number, true);
        if (note_of(head)->silent)
            taken = TAKEN_DROPPED;
        break;
    case 'Z':
        if (c->state == CONN_LOGIN) {
            login_done(c);
            return TAKEN_FORWARD;
        }
        if (head && head->kind == TRACK_SYNC)
            c->batch_ending = false;
        if (translating(c))
            taken = guard_ready(c);
        break;
    default:
        if (translating(c))
            guard_reply(c, type, note_of(head));
        break;
    }
    if (taken != TAKEN_CLOSED)
        track_plain(c, FLOW_TO_CLIENT, type, type == 'Z' ? pg_ready_status(body, len) : 0);
    if (!client_held(c))
        c->resume_client = true;
    return taken;
}

/* ---- the relay loop ---------------------------------------------------- */

static void note_oversized(struct conn *c, enum flow d, char type, size_t total,
                           struct sink *k)
{
    counter_add(&c->worker->counters.oversized_inspected, 1);
    if (d == FLOW_TO_SERVER && rewriting(c)) {
        scope_count_reason(c->scope, RR_TOO_LARGE);
        /* Its names cannot be read: they are forgotten. */
        if (type == 'P' || type == 'B')
            session_clear(&c->session);
        /* Nor its text: it may drop statements. */
        if (type == 'P' || type == 'Q')
            stmtcache_forget_all(&c->stmts);
    }
    if (d == FLOW_TO_SERVER && c->stmts.unnamed) {
        if (type == 'B' || type == 'D' || type == 'C')
            restore_unnamed(c, k);
        else if (type == 'Q' || type == 'P')
            c->stmts.unnamed = NULL;
    }
    if (d == FLOW_TO_CLIENT && answers_injected(c, type))
        c->catalog_ok = false;
    conn_log(LOG_DEBUG, c, "'%c' message of %zu bytes streamed unread", type, total);
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
static bool relay(struct conn *c, enum flow d)
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
        if (h != HANDLE_STREAM && total > max_held) {
            note_oversized(c, d, head.type, total, &k);
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
        if (!track_plain(c, d, head.type, status))
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
    if (c->stop_when_idle && c->spoke && c->state == CONN_ACTIVE && track_idle(&c->track) &&
        c->stream_left[FLOW_TO_CLIENT] == 0 && c->stream_left[FLOW_TO_SERVER] == 0 &&
        !sock_has_arrived(c->client))
        conn_terminate(c);
}

/* ---- the startup phase ------------------------------------------------- */

static void login_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd;
    (void)what;
    fail_client(c, "08006", "idemproxy: client_login_timeout reached before login completed",
                "login timeout");
}

/* SSLRequest answered 'S': the rest of the connection is TLS. */
static bool accept_tls(struct conn *c)
{
    SSL *ssl = SSL_new(c->worker->settings->client_ssl_ctx);

    /* Anything already here came in plaintext after the SSLRequest, where
     * only the TLS handshake may follow: someone is injecting. */
    if (evbuffer_get_length(sock_input(c->client)) > 0) {
        SSL_free(ssl);
        counter_add(&c->worker->counters.protocol_violations, 1);
        close_pair(c, "unencrypted data after SSLRequest");
        return false;
    }
    /* 'S' must be on the wire before the handshake: one byte on a fresh
     * socket goes at once. */
    send_to(c->client, "S", 1);
    if (!ssl || sock_unsent(c->client) > 0 ||
        !sock_start_tls(c->client, ssl, true)) {
        close_pair(c, "cannot start TLS");
        return false;
    }
    c->client_tls = true;
    return true;
}

static void send_startup(struct conn *c)
{
    c->state = CONN_LOGIN;
    sock_set_timeout(c->server, 0);
    evbuffer_add(sock_output(c->server), c->startup, c->startup_len);
    sock_flush(c->server);
    relay(c, FLOW_TO_SERVER);
}

static void cannot_connect(struct conn *c, const char *why)
{
    char name[256], msg[512];

    snprintf(msg, sizeof(msg), "idemproxy: could not connect to server at %s: %s",
             server_name(c->worker->cfg, name, sizeof(name)), why);
    fail_client(c, "08001", msg, "server unreachable");
}

static void connect_to(struct conn *c, const struct sockaddr *addr, int len)
{
    if (!sock_connect(c->server, addr, len))
        cannot_connect(c, strerror(errno));
}

/* The lookup of server_host ended (result, ai); ai is freed here. */
static void resolve_done(struct conn *c, int result, struct evutil_addrinfo *ai)
{
    if (result)
        cannot_connect(c, evutil_gai_strerror(result));
    else
        connect_to(c, ai->ai_addr, (int)ai->ai_addrlen);
    if (ai)
        evutil_freeaddrinfo(ai);
}

static void resolved(int result, struct evutil_addrinfo *ai, void *arg)
{
    struct conn *c = arg;

    if (result == EVUTIL_EAI_CANCEL)
        return;
    if (!c->resolving) {
        /* Still inside evdns_getaddrinfo: connect_server takes it from
         * here, once the call has returned. */
        c->resolve_result = result;
        c->resolve_ai = ai;
        c->resolved_early = true;
        return;
    }
    c->resolving = NULL;
    resolve_done(c, result, ai);
}

static void connect_server(struct conn *c)
{
    struct worker *w = c->worker;
    const struct config *cfg = w->cfg;

    c->server = sock_new(w->base, -1, server_sock_cb, c);
    if (!c->server) {
        fail_client(c, "53200", "out of memory", "out of memory");
        return;
    }
    counter_add(&w->counters.server_connections, 1);
    c->generation = w->generation;
    sock_set_write_marks(c->server, OUT_LOW, OUT_HIGH);
    sock_set_timeout(c->server, cfg->server_connect_timeout);
    c->state = CONN_CONNECTING;
    if (cfg->server_host[0] == '/') {
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        int n = snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/.s.PGSQL.%d", cfg->server_host,
                         cfg->server_port);
        if (n < 0 || (size_t)n >= sizeof(sun.sun_path))
            cannot_connect(c, "socket path too long");
        else
            connect_to(c, (struct sockaddr *)&sun, sizeof(sun));
        return;
    }
    struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                     .ai_protocol = IPPROTO_TCP };
    char port[16];
    snprintf(port, sizeof(port), "%d", cfg->server_port);
    c->resolved_early = false;
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(w->dns, cfg->server_host, port, &hints, resolved, c);
    if (c->resolved_early)
        resolve_done(c, c->resolve_result, c->resolve_ai);
    else
        c->resolving = req;
}

/* The server's answer to the proxy's SSLRequest. */
static void read_tls_answer(struct conn *c)
{
    struct evbuffer *in = sock_input(c->server);
    enum tls_mode mode = c->worker->cfg->server_tls.mode;
    char name[256], msg[512];
    uint8_t answer;

    if (evbuffer_remove(in, &answer, 1) != 1)
        return;
    if (answer == 'N' && mode == TLS_PREFER) {
        send_startup(c);
        return;
    }
    server_name(c->worker->cfg, name, sizeof(name));
    if (answer == 'N') {
        snprintf(msg, sizeof(msg), "idemproxy: the server at %s does not accept TLS, and "
                 "server_tls_sslmode = %s", name, tls_mode_name(mode));
        fail_client(c, "08001", msg, "server refused TLS");
        return;
    }
    /* Bytes after 'S' would have come in plaintext: not from a server. */
    if (answer != 'S' || evbuffer_get_length(in) > 0) {
        snprintf(msg, sizeof(msg), "idemproxy: the server at %s gave an invalid answer to "
                 "SSLRequest", name);
        fail_client(c, "08P01", msg, "protocol violation by server");
        return;
    }
    SSL *ssl = SSL_new(c->worker->settings->server_ssl_ctx);
    if (!ssl || !tls_server_ssl_setup(ssl, mode, c->worker->cfg->server_host)) {
        SSL_free(ssl);
        fail_client(c, "53200", "out of memory", "out of memory");
        return;
    }
    if (!sock_start_tls(c->server, ssl, false)) {
        fail_client(c, "53200", "cannot start TLS with the server", "server TLS failed");
        return;
    }
    c->server_tls = true;
}

/* The handshake with the server is done (and its certificate checked as
 * server_tls_sslmode asks, by OpenSSL during it). */
static void server_tls_ready(struct conn *c)
{
    SSL *ssl = sock_ssl(c->server);
    X509 *cert = SSL_get1_peer_certificate(ssl);

    c->server_cb_len = cert ? tls_server_end_point(cert, c->server_cb) : 0;
    X509_free(cert);
    conn_log(LOG_DEBUG, c, "TLS to the server: %s %s", SSL_get_version(ssl),
             SSL_get_cipher_name(ssl));
    send_startup(c);
}

/* Why the TLS handshake with the server failed, for the client. */
static void server_tls_failed(struct conn *c)
{
    SSL *ssl = sock_ssl(c->server);
    const char *refused = ssl ? tls_verify_error(ssl) : NULL;
    char name[256], msg[512], err[256];

    if (refused)
        snprintf(err, sizeof(err), "certificate verify failed: %s", refused);
    else
        snprintf(err, sizeof(err), "%s", sock_error(c->server));
    snprintf(msg, sizeof(msg), "idemproxy: TLS with the server at %s failed (server_tls_sslmode "
             "= %s): %s", server_name(c->worker->cfg, name, sizeof(name)),
             tls_mode_name(c->worker->cfg->server_tls.mode), err);
    conn_log(LOG_WARNING, c, "%s", msg + strlen("idemproxy: "));
    fail_client(c, "08001", msg, "server TLS failed");
}

/* ---- the proxy authenticating the client -------------------------------- */

static void auth_failed(struct conn *c, const char *why)
{
    char msg[256];

    conn_log(LOG_INFO, c, "authentication failed: %s", why);
    snprintf(msg, sizeof(msg), "password authentication failed for user \"%s\"",
             c->user ? c->user : "");
    fail_client(c, "28P01", msg, "authentication failed");
}

/* Starts SCRAM with the client against secret_text (NULL: no such user). */
static void start_sasl(struct conn *c, const char *secret_text)
{
    struct worker *w = c->worker;
    struct scram_secret secret;
    bool known = secret_text && scram_secret_parse(secret_text, &secret);
    uint8_t out[LOGIN_MSG_MAX];
    size_t len;

    if (secret_text && !known)
        conn_log(LOG_WARNING, c, "the stored secret of this user is not a SCRAM-SHA-256 "
                 "secret, so SCRAM cannot check it");
    c->login = malloc(sizeof(*c->login));
    if (!c->login) {
        fail_client(c, "53200", "out of memory", "out of memory");
        return;
    }
    login_start(c->login, known ? &secret : NULL, c->user ? c->user : "", w->proxy->mock_key,
                c->client_tls, w->settings->client_cb, w->settings->client_cb_len, out, &len);
    OPENSSL_cleanse(&secret, sizeof(secret));
    send_to(c->client, out, len);
}

static void lookup_done(void *arg, const char *secret, const char *error)
{
    struct conn *c = arg;

    c->lookup = NULL;
    if (error) {
        conn_log(LOG_WARNING, c, "%s", error);
        fail_client(c, "28000", "idemproxy: cannot look the user up (auth_query failed; "
                    "see idemproxy's log)", "auth_query failed");
        return;
    }
    start_sasl(c, secret);
    client_read(c);
}

/* auth_type = scram-sha-256: the secret comes from auth_file, else from
 * auth_query; a user found nowhere goes through a mock exchange. */
static void begin_auth(struct conn *c)
{
    struct worker *w = c->worker;
    const struct config *cfg = w->cfg;
    const char *user = c->user ? c->user : "";
    const struct auth_file *file = w->settings->auth_file;
    enum auth_secret_kind kind;
    const char *secret = file ? authfile_secret(file, user, &kind) : NULL;

    c->state = CONN_AUTH;
    if (secret || !cfg->auth_user) {
        start_sasl(c, secret);
        return;
    }
    const char *auth_password = file ? authfile_secret(file, cfg->auth_user, &kind) : NULL;
    if (auth_password && kind != AUTH_SECRET_PLAIN)
        auth_password = NULL;
    c->lookup = authquery_start(w->base, cfg, auth_password, c->database, user, lookup_done, c);
    if (!c->lookup)
        fail_client(c, "53200", "out of memory", "out of memory");
}

/* ---- the admin console ------------------------------------------------- */

/* The largest command the console reads: within the usual read limit. */
#define ADMIN_QUERY_MAX READ_CHUNK

enum own_msg {
    OWN_MSG_NONE,  /* not all of it is in yet */
    OWN_MSG_READY, /* whole */
    OWN_MSG_BAD,   /* invalid header, longer than allowed, or no memory */
};

/* The client's next whole message while the proxy answers the client
 * itself (its authentication, the admin console), at most max bytes (no
 * more than READ_CHUNK, so it always fits the read limit). READY: *msg
 * points at it, type byte first; the caller drains head->len + 1 bytes. */
static enum own_msg next_own_msg(struct conn *c, size_t max, struct pg_msg_head *head,
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

/* The client authenticated to the admin console: the proxy finishes the
 * login itself, with what a PostgreSQL client expects to be told. */
static void admin_begin(struct conn *c)
{
    static const char *const params[][2] = {
        { "server_version", "15.0 (idemproxy " PACKAGE_VERSION ")" },
        { "server_encoding", "UTF8" },
        { "client_encoding", "UTF8" },
        { "DateStyle", "ISO, MDY" },
        { "integer_datetimes", "on" },
        { "standard_conforming_strings", "on" },
        { "application_name", "" },
    };
    struct evbuffer *out = sock_output(c->client);
    uint8_t msg[128];

    evbuffer_add(out, msg, pg_build_auth(msg, sizeof(msg), 0, NULL, 0));
    for (size_t i = 0; i < sizeof(params) / sizeof(params[0]); i++) {
        size_t body = strlen(params[i][0]) + strlen(params[i][1]) + 2;
        uint8_t head[PG_HEAD_LEN] = { 'S' };
        pg_put_u32(head + 1, (uint32_t)body + 4);
        evbuffer_add(out, head, sizeof(head));
        evbuffer_add(out, params[i][0], strlen(params[i][0]) + 1);
        evbuffer_add(out, params[i][1], strlen(params[i][1]) + 1);
    }
    evbuffer_add(out, "Z\0\0\0\5I", 6);
    sock_flush(c->client);
    c->state = CONN_ADMIN;
    if (c->login_timer) {
        event_free(c->login_timer);
        c->login_timer = NULL;
    }
    conn_log(LOG_INFO, c, "admin console");
}

/* Commands to the console, each answered before the next is read. */
static void admin_read(struct conn *c)
{
    struct pg_msg_head head;
    const uint8_t *msg;

    while (c->state == CONN_ADMIN) {
        enum own_msg got = next_own_msg(c, ADMIN_QUERY_MAX, &head, &msg);
        if (got == OWN_MSG_NONE)
            return;
        if (got == OWN_MSG_BAD) {
            fail_client(c, "08P01", "invalid message to the admin console",
                        "protocol violation by client");
            return;
        }
        if (head.type == 'X') {
            close_pair(c, "client disconnected");
            return;
        }
        if (head.type != 'Q') {
            fail_client(c, "08P01", "the admin console speaks the simple query protocol only",
                        "protocol violation by client");
            return;
        }
        size_t at = 0, len = 0;
        enum admin_cmd cmd = ADMIN_UNKNOWN;
        if (pg_statement_text('Q', msg + PG_HEAD_LEN, head.len - 4, &at, &len)) {
            const char *text = (const char *)msg + PG_HEAD_LEN + at;
            cmd = admin_parse(text, len);
            conn_log(LOG_INFO, c, "admin: %.*s", len > LOG_TEXT_MAX ? LOG_TEXT_MAX : (int)len,
                     text);
        }
        evbuffer_drain(sock_input(c->client), (size_t)head.len + 1);
        admin_run(c->worker, cmd, sock_output(c->client));
        evbuffer_add(sock_output(c->client), "Z\0\0\0\5I", 6);
        sock_flush(c->client);
    }
}

/* server_reuse: a kept server logged in with the same StartupMessage
 * serves the client; the client hears the end of that login as if it
 * had just happened. False when there is none. */
static bool reuse_server(struct conn *c)
{
    static const char *const scanning[] = { "client_encoding", "server_encoding",
                                            "standard_conforming_strings" };
    struct worker *w = c->worker;
    struct pool_server kept;

    if (!c->reusable || !pool_take(w->pool, c->startup, c->startup_len, &kept))
        return false;
    const uint8_t *key = give_key(c, kept.welcome.key, kept.welcome.key_len) ? c->given_key : NULL;
    size_t len = welcome_build(&kept.welcome, key, NULL, 0);
    uint8_t *said = malloc(len);
    if (!said) {
        forget_key(c);
        sock_free(kept.sock);
        welcome_free(&kept.welcome);
        return false;
    }
    welcome_build(&kept.welcome, key, said, len);
    c->server = kept.sock;
    sock_set_callback(c->server, server_sock_cb, c);
    c->welcome = kept.welcome;
    c->generation = w->generation;
    counter_add(&w->counters.server_connections, 1);
    counter_add(&w->counters.servers_reused, 1);
    for (size_t i = 0; i < sizeof(scanning) / sizeof(scanning[0]); i++) {
        const char *value = welcome_value(&c->welcome, scanning[i]);
        if (value)
            note_setting(c, scanning[i], value);
    }
    login_free(c->login);
    free(c->login);
    c->login = NULL;
    send_to(c->client, said, len);
    free(said);
    conn_log(LOG_DEBUG, c, "logged in on a kept server");
    login_done(c);
    client_read(c);
    return true;
}

/* The client's SASL messages while the proxy authenticates it. */
static void read_auth(struct conn *c)
{
    uint8_t out[LOGIN_MSG_MAX];
    struct pg_msg_head head;
    const uint8_t *msg;
    const char *why = NULL;
    size_t len;

    while (c->state == CONN_AUTH && c->login) {
        enum own_msg got = next_own_msg(c, LOGIN_MSG_MAX + 1, &head, &msg);
        if (got == OWN_MSG_NONE)
            return;
        if (got == OWN_MSG_BAD || (head.type != 'p' && head.type != 'X')) {
            fail_client(c, "08P01", "invalid authentication message",
                        "protocol violation by client");
            return;
        }
        if (head.type == 'X') {
            close_pair(c, "client left during authentication");
            return;
        }
        enum login_step step = login_client_msg(c->login, msg + PG_HEAD_LEN, head.len - 4, out,
                                                &len, &why);
        evbuffer_drain(sock_input(c->client), (size_t)head.len + 1);
        switch (step) {
        case LOGIN_SEND:
            send_to(c->client, out, len);
            break;
        case LOGIN_CLIENT_OK:
            send_to(c->client, out, len);
            conn_log(LOG_DEBUG, c, "client authenticated%s",
                     c->login->with_client.plus ? " with channel binding" : "");
            if (c->admin)
                admin_begin(c);
            else if (!reuse_server(c))
                connect_server(c);
            return;
        default:
            auth_failed(c, why);
            return;
        }
    }
}

/* An Authentication request from the server during login. With
 * auth_type = scram-sha-256 the proxy answers it with the client's
 * ClientKey; when relaying, it keeps SCRAM relayable. */
static enum taken take_auth_request(struct conn *c, const uint8_t *msg, size_t total,
                                    struct sink *k)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN, out_len = 0;
    uint8_t out[LOGIN_MSG_MAX];
    const char *why = NULL;

    if (c->login) {
        switch (login_server_msg(c->login, body, len, c->server_tls, c->server_cb,
                                 c->server_cb_len, out, &out_len, &why)) {
        case LOGIN_SERVER_SEND:
            send_to(c->server, out, out_len);
            return TAKEN_DROPPED;
        case LOGIN_WAIT:
            return TAKEN_DROPPED;
        case LOGIN_SERVER_OK:
            login_free(c->login);
            free(c->login);
            c->login = NULL;
            return TAKEN_FORWARD;
        default: {
            char text[512];
            snprintf(text, sizeof(text), "idemproxy: could not log in to the server as \"%s\": %s",
                     c->user ? c->user : "", why);
            conn_log(LOG_WARNING, c, "%s", text + strlen("idemproxy: "));
            fail_client(c, "28000", text, "server login failed");
            return TAKEN_CLOSED;
        }
        }
    }
    uint32_t code;
    const uint8_t *data;
    size_t data_len;
    if (!pg_auth_request(body, len, &code, &data, &data_len) || code != PG_AUTH_SASL ||
        !c->server_tls)
        return TAKEN_FORWARD;
    /* SCRAM over the proxy's TLS to the server: a client binding to its
     * own TLS would bind to the proxy's certificate, not the server's. */
    if (c->client_tls) {
        fail_client(c, "28000", "idemproxy cannot relay SCRAM authentication when both the "
                    "client's and the server's connections to it use TLS (channel binding ties "
                    "SCRAM to one TLS connection): set auth_type = scram-sha-256 in idemproxy's "
                    "configuration, or turn TLS off on one of the two legs",
                    "SCRAM not relayable over TLS on both legs");
        return TAKEN_CLOSED;
    }
    /* A plaintext client cannot bind: it must not be offered PLUS. */
    out_len = login_relayable_mechanisms(data, data_len, out);
    if (!out_len)
        return TAKEN_FORWARD;
    sink_write(k, out, out_len);
    return TAKEN_REPLACED;
}

/* The client's certificate must name the user under verify-full. */
static bool client_cert_matches(struct conn *c)
{
    char cn[256];
    SSL *ssl = sock_ssl(c->client);

    return ssl && tls_peer_common_name(ssl, cn, sizeof(cn)) && c->user &&
           strcmp(cn, c->user) == 0;
}

/* Handles one whole startup-phase packet (len bytes at the front of in).
 * Returns false when the client connection is finished with. */
static bool handle_startup_packet(struct conn *c, struct evbuffer *in, size_t len)
{
    struct worker *w = c->worker;
    const uint8_t *pkt = evbuffer_pullup(in, (ev_ssize_t)len);
    struct pg_startup su;
    const char *why;

    if (!pkt) {
        fail_client(c, "53200", "out of memory", "out of memory");
        return false;
    }
    switch (pg_startup_parse(pkt, len, &su, &why)) {
    case PG_STARTUP_SSL_REQUEST:
    case PG_STARTUP_GSSENC_REQUEST:
        if (++c->negotiations > MAX_NEGOTIATIONS) {
            fail_client(c, "08P01", "too many encryption requests", "protocol violation by client");
            return false;
        }
        evbuffer_drain(in, len);
        if (su.kind == PG_STARTUP_SSL_REQUEST && w->settings->client_ssl_ctx && !c->client_tls)
            return accept_tls(c);
        /* No GSS encryption, and TLS only once: the client may go on in
         * plaintext (or as it is) on the same connection. */
        send_to(c->client, "N", 1);
        return true;

    case PG_STARTUP_CANCEL:
        conn_log(LOG_DEBUG, c, "cancel request for backend %u", su.cancel_pid);
        cancel_forward(w, pkt, len);
        close_pair(c, "cancel request forwarded");
        return false;

    case PG_STARTUP_INVALID:
        counter_add(&w->counters.protocol_violations, 1);
        conn_log(LOG_WARNING, c, "invalid startup packet: %s", why);
        fail_client(c, "08P01", why, "invalid startup packet");
        return false;

    case PG_STARTUP_MESSAGE:
        break;
    }

    pthread_mutex_lock(&w->conns_lock);
    c->user = su.user ? strdup(su.user) : NULL;
    c->database = strdup(su.database ? su.database : su.user ? su.user : "");
    pthread_mutex_unlock(&w->conns_lock);
    c->replication = su.replication;
    c->rules = ruleset_ref(w->rules);
    enum tls_mode tls = w->cfg->client_tls.mode;
    if (tls >= TLS_REQUIRE && !c->client_tls) {
        fail_client(c, "28000", "idemproxy: TLS is required (client_tls_sslmode = require): "
                    "connect with sslmode=require", "refused: plaintext");
        return false;
    }
    if (tls == TLS_VERIFY_FULL && c->client_tls && !client_cert_matches(c)) {
        fail_client(c, "28000", "idemproxy: the client certificate does not name this user "
                    "(client_tls_sslmode = verify-full)", "refused: certificate user");
        return false;
    }
    if (!proxy_client_enter(w->proxy, w->cfg->max_client_conn)) {
        char msg[128];
        snprintf(msg, sizeof(msg), "sorry, too many clients already (max_client_conn = %d)",
                 w->cfg->max_client_conn);
        fail_client(c, "53300", msg, "refused: max_client_conn reached");
        return false;
    }
    c->counted = true;
    counter_add(&w->counters.clients_total, 1);
    conn_log(LOG_DEBUG, c, "login%s%s%s", c->client_tls ? " over TLS" : "",
             su.application_name ? " application_name=" : "",
             su.application_name ? su.application_name : "");

    c->startup = malloc(len);
    if (!c->startup) {
        fail_client(c, "53200", "out of memory", "out of memory");
        return false;
    }
    memcpy(c->startup, pkt, len);
    c->startup_len = len;
    evbuffer_drain(in, len);
    c->admin = !c->replication && c->database && strcmp(c->database, ADMIN_DATABASE) == 0;
    c->reusable = w->cfg->server_reuse && !c->replication && !c->admin;
    if (c->admin && !admin_user_allowed(w->cfg, c->user ? c->user : "")) {
        char msg[200];
        snprintf(msg, sizeof(msg), "idemproxy: user \"%.64s\" may not use the admin console "
                 "(admin_users)", c->user ? c->user : "");
        fail_client(c, "42501", msg, "refused: not in admin_users");
        return false;
    }
    if (w->cfg->auth_type == AUTH_SCRAM || c->admin)
        begin_auth(c);
    else
        connect_server(c);
    return c->state == CONN_CONNECTING || c->state == CONN_AUTH;
}

static void read_startup(struct conn *c)
{
    while (c->state == CONN_STARTUP) {
        /* The buffer changes when the connection turns to TLS. */
        struct evbuffer *in = sock_input(c->client);
        uint8_t raw[4];
        if (evbuffer_copyout(in, raw, sizeof(raw)) < (ev_ssize_t)sizeof(raw))
            return;
        uint32_t len = pg_get_u32(raw);
        if (!pg_startup_len_ok(len)) {
            counter_add(&c->worker->counters.protocol_violations, 1);
            conn_log(LOG_WARNING, c, "invalid startup packet length %u", len);
            fail_client(c, "08P01", "invalid length of startup packet", "invalid startup packet");
            return;
        }
        if (evbuffer_get_length(in) < len) {
            hold_for(c, FLOW_TO_SERVER, len);
            return;
        }
        if (!handle_startup_packet(c, in, len))
            return;
        hold_done(c, FLOW_TO_SERVER);
    }
    if (c->state == CONN_AUTH)
        read_auth(c);
}

/* ---- callbacks --------------------------------------------------------- */

/* After a reload, an idle session moves to the new rules; its next
 * statement is decided by them. */
static void follow_reload(struct conn *c)
{
    worker_refresh(c->worker);
    struct ruleset *current = c->worker->rules;

    if (c->rules == current || c->catalog || !track_idle(&c->track) ||
        c->stream_left[FLOW_TO_SERVER] || c->stream_left[FLOW_TO_CLIENT])
        return;
    ruleset_unref(c->rules);
    c->rules = ruleset_ref(current);
    c->scope = NULL;
    if (!c->replication)
        c->scope = ruleset_scope(c->rules, c->database, c->user ? c->user : "");
    /* Without rules no text is read: a DEALLOCATE would go unseen. */
    if (!c->scope)
        stmtcache_forget_all(&c->stmts);
    if (c->scope && scope_state(c->scope) == SCOPE_UNKNOWN)
        learn_catalog(c);
}

static void client_read(struct conn *c)
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
        /* Until the catalog is in, the client's statements cannot be
         * decided: they wait in the input buffer, within its limit. */
        if (c->catalog)
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

/* The server went away without explaining itself first. */
static void server_lost(struct conn *c, const char *why)
{
    if (!c->server_said_fatal) {
        conn_log(LOG_WARNING, c, "server connection lost: %s", why);
        send_client_error(c, "FATAL", "08006",
                          "idemproxy: server closed the connection unexpectedly");
    }
    close_pair(c, "server disconnected");
}

static void server_sock_cb(struct sock *s, enum sock_event event, void *arg)
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
        set_nodelay(s);
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
    track_init(&c->track, free_note);
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
    set_nodelay(c->client);
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
