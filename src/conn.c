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

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>

#include "cancel.h"
#include "log.h"
#include "pgproto.h"
#include "proxy.h"
#include "rules.h"
#include "track.h"

/* Bytes a side may have queued for writing before the proxy stops reading
 * from the other side; reading resumes when half of it has drained. */
#define OUT_HIGH (256 * 1024)
#define OUT_LOW (OUT_HIGH / 2)
/* Bytes read from a socket at once, and the input kept unless a held
 * message needs more. */
#define READ_CHUNK (64 * 1024)
/* How long a closing side may take to read what is left for it. */
#define CLOSE_FLUSH_SECONDS 5
/* SSLRequest and GSSENCRequest may each come once before the startup. */
#define MAX_NEGOTIATIONS 2
/* How much of a statement a log line quotes. */
#define LOG_TEXT_MAX 200

enum conn_state {
    CONN_STARTUP,    /* reading the client's startup-phase packets */
    CONN_CONNECTING, /* StartupMessage read; connecting to the server */
    CONN_LOGIN,      /* relaying authentication until the first ReadyForQuery */
    CONN_ACTIVE,     /* relaying the session, tracking its requests */
    CONN_CLOSING,    /* flushing what each side still has to read */
};

enum direction {
    TO_SERVER,
    TO_CLIENT,
};

struct conn {
    struct conn *prev, *next; /* the proxy's list */
    struct proxy *proxy;
    uint64_t id;
    enum conn_state state;

    struct bufferevent *client;
    struct bufferevent *server;
    struct evbuffer *startup;   /* the StartupMessage, until the server is there */
    struct event *login_timer;

    /* Bytes of the current message still to stream through unread, per
     * direction: messages are streamed, never buffered whole, unless the
     * proxy must read them. stream_discard: drop them instead (the rest of
     * an oversized reply to the proxy's own query). */
    size_t stream_left[2];
    bool stream_discard[2];
    bool paused[2];             /* reading the source of this direction stopped */
    bool holding[2];            /* the source's read limit is raised for a held message */

    struct track track;
    struct ruleset *rules;      /* the rules the session runs under (a reference) */
    struct scope *scope;        /* its database and role's; NULL: never rewrite */
    struct catalog *catalog;    /* the proxy's catalog query is under way: client
                                   input waits until its answer is in */
    bool catalog_ok;            /* no row of that answer was refused */
    bool resume_client;         /* the catalog arrived: relay the client's input */
    bool replication;           /* a replication session: never rewrite */

    /* Session settings that decide whether statement text may be scanned. */
    char client_encoding[32];
    char server_encoding[32];
    bool charset_ok;            /* rewrite_charset() accepts the encodings */
    bool charset_utf8;          /* the server counts error positions in UTF-8 */
    bool scs_off;               /* standard_conforming_strings = off */

    bool counted;               /* holds a max_client_conn slot */
    bool stop_when_idle;        /* the proxy is shutting down */
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

static void client_read_cb(struct bufferevent *bev, void *arg);
static void server_read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void client_event_cb(struct bufferevent *bev, short what, void *arg);
static void server_event_cb(struct bufferevent *bev, short what, void *arg);
static void close_pair(struct conn *c, const char *reason);

struct conn *conn_next(struct conn *c)
{
    return c->next;
}

static struct bufferevent *source_of(struct conn *c, enum direction d)
{
    return d == TO_SERVER ? c->client : c->server;
}

static struct bufferevent *sink_of(struct conn *c, enum direction d)
{
    return d == TO_SERVER ? c->server : c->client;
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

static void set_nodelay(struct bufferevent *bev)
{
    int one = 1;
    evutil_socket_t fd = bufferevent_getfd(bev);

    /* Fails harmlessly on Unix sockets, which have no Nagle delay. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void setup_bufferevent(struct bufferevent *bev, struct conn *c,
                              bufferevent_data_cb read_cb, bufferevent_event_cb event_cb)
{
    bufferevent_setcb(bev, read_cb, write_cb, event_cb, c);
    bufferevent_setwatermark(bev, EV_READ, 0, READ_CHUNK);
    bufferevent_setwatermark(bev, EV_WRITE, OUT_LOW, 0);
    bufferevent_set_max_single_read(bev, READ_CHUNK);
}

/* ---- messages the proxy writes itself ---------------------------------- */

/* Sends an ErrorResponse to the client. Only ever at a message boundary:
 * never into the middle of a message the server is streaming. */
static void send_client_error(struct conn *c, const char *severity,
                              const char *sqlstate, const char *message)
{
    uint8_t buf[512];
    size_t need = pg_error_build(buf, sizeof(buf), severity, sqlstate, message);

    if (!c->client || c->stream_left[TO_CLIENT] != 0)
        return;
    if (need <= sizeof(buf)) {
        bufferevent_write(c->client, buf, need);
        return;
    }
    uint8_t *big = malloc(need);
    if (big && pg_error_build(big, need, severity, sqlstate, message) == need)
        bufferevent_write(c->client, big, need);
    free(big);
}

static void fail_client(struct conn *c, const char *sqlstate, const char *message,
                        const char *reason)
{
    send_client_error(c, "FATAL", sqlstate, message);
    close_pair(c, reason);
}

/* ---- closing ----------------------------------------------------------- */

static void free_pair(struct conn *c)
{
    struct proxy *p = c->proxy;

    if (c->client)
        bufferevent_free(c->client);
    if (c->server)
        bufferevent_free(c->server);
    if (c->startup)
        evbuffer_free(c->startup);
    if (c->login_timer)
        event_free(c->login_timer);
    if (c->counted)
        p->client_count--;
    p->stats.track_desyncs += c->track.desyncs;
    track_free(&c->track);
    if (c->catalog) {
        catalog_free(c->catalog);
        free(c->catalog);
    }
    ruleset_unref(c->rules);
    if (c->prev)
        c->prev->next = c->next;
    else
        p->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->user);
    free(c->database);
    free(c);
    proxy_conn_gone(p);
}

/* Frees one side now if it has nothing left to write, else once it has
 * written it (or after CLOSE_FLUSH_SECONDS). */
static void close_side(struct bufferevent **side)
{
    struct bufferevent *bev = *side;

    if (!bev)
        return;
    bufferevent_disable(bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0 ||
        bufferevent_getfd(bev) < 0) {
        bufferevent_free(bev);
        *side = NULL;
        return;
    }
    struct timeval flush = { CLOSE_FLUSH_SECONDS, 0 };
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    bufferevent_set_timeouts(bev, NULL, &flush);
    bufferevent_enable(bev, EV_WRITE);
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
    close_side(&c->client);
    close_side(&c->server);
    maybe_free(c);
}

/* A side's output drained. While closing, that side is done; otherwise the
 * other side may be read again. */
static void write_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;

    if (c->state == CONN_CLOSING) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) != 0)
            return;
        bufferevent_free(bev);
        if (bev == c->client)
            c->client = NULL;
        else
            c->server = NULL;
        maybe_free(c);
        return;
    }
    enum direction d = bev == c->server ? TO_SERVER : TO_CLIENT;
    if (c->paused[d]) {
        c->paused[d] = false;
        bufferevent_enable(source_of(c, d), EV_READ);
        /* Input may have waited while paused: relay it now. */
        if (d == TO_SERVER)
            client_read_cb(c->client, c);
        else
            server_read_cb(c->server, c);
    }
}

/* ---- relaying ---------------------------------------------------------- */

/* Raises the source's read limit so that a held message of total bytes fits
 * whole into its input buffer. */
static void hold_for(struct conn *c, enum direction d, size_t total)
{
    if (total <= READ_CHUNK)
        return;
    bufferevent_setwatermark(source_of(c, d), EV_READ, 0, total);
    c->holding[d] = true;
}

static void hold_done(struct conn *c, enum direction d)
{
    if (!c->holding[d])
        return;
    bufferevent_setwatermark(source_of(c, d), EV_READ, 0, READ_CHUNK);
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
    HANDLE_PEEK, /* held whole and read where it lies, then moved on */
    HANDLE_TAKE, /* held whole at the front of the input: may be replaced or dropped */
};

/* What a taken message became. */
enum taken {
    TAKEN_FORWARD,  /* moves on unchanged */
    TAKEN_REPLACED, /* something else went out in its place */
    TAKEN_DROPPED,  /* it was the proxy's: nothing goes out */
    TAKEN_CLOSED,   /* the pair was closed */
};

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

static enum handling client_handling(const struct conn *c, char type)
{
    if ((type == 'Q' || type == 'P') && rewriting(c))
        return HANDLE_TAKE;
    return HANDLE_STREAM;
}

static enum handling server_handling(const struct conn *c, char type)
{
    if (answers_injected(c, type))
        return HANDLE_TAKE;
    switch (type) {
    case 'E':
    case 'S':
        return HANDLE_TAKE;
    case 'Z':
        return c->state == CONN_LOGIN ? HANDLE_TAKE : HANDLE_PEEK;
    default:
        return HANDLE_STREAM;
    }
}

/* Records a message the proxy does not take in the request queue. */
static bool track_plain(struct conn *c, enum direction d, char type, char status)
{
    if (c->state != CONN_ACTIVE)
        return true;
    if (d == TO_CLIENT) {
        track_server_msg(&c->track, type, status);
        return true;
    }
    if (track_client_msg(&c->track, type, NULL))
        return true;
    fail_client(c, "53200", "out of memory", "out of memory");
    return false;
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
    struct decision *d = scope_decide(c->scope, text, *text_len, &fresh);
    scope_count(c->scope, d);
    if (d && fresh)
        log_decision(c, d, text, *text_len);
    return d;
}

/* Writes the message with the rewritten text in place of the original's
 * (a Parse keeps its name and parameter types around it). */
static void write_rewritten(struct evbuffer *out, char type, const uint8_t *body, size_t len,
                            size_t at, size_t text_len, const struct rewrite_result *r)
{
    size_t rest = len - at - text_len; /* the text's NUL, then a Parse's types */
    uint8_t head[PG_HEAD_LEN];

    head[0] = (uint8_t)type;
    pg_put_u32(head + 1, (uint32_t)(4 + at + r->text_len + rest));
    evbuffer_add(out, head, sizeof(head));
    evbuffer_add(out, body, at);
    evbuffer_add(out, r->text, r->text_len);
    evbuffer_add(out, body + at + text_len, rest);
}

static void free_note(void *note)
{
    decision_unref(note);
}

static enum taken take_client_msg(struct conn *c, const uint8_t *msg, size_t total,
                                  struct evbuffer *out)
{
    char type = (char)msg[0];
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN, at = 0, text_len = 0;
    struct decision *d = decide_statement(c, type, body, len, &at, &text_len);
    bool replaced = d && d->result.text;

    if (replaced)
        write_rewritten(out, type, body, len, at, text_len, &d->result);
    /* The decision stays with the request: an error's position is mapped
     * back through it. */
    if (d && !replaced) {
        decision_unref(d);
        d = NULL;
    }
    if (!track_client_msg(&c->track, type, d)) {
        fail_client(c, "53200", "out of memory", "out of memory");
        return TAKEN_CLOSED;
    }
    return replaced ? TAKEN_REPLACED : TAKEN_FORWARD;
}

/* ---- the proxy's catalog query ----------------------------------------- */

/* Asks the server about the registered tables before the session's first
 * statement; client input waits until the answer is in. Only while the
 * session is idle: anywhere else the query would join the client's work. */
static void learn_catalog(struct conn *c)
{
    const char *sql = scope_catalog_query(c->scope);
    struct catalog *cat = malloc(sizeof(*cat));

    if (!sql || !cat || !track_inject(&c->track, 'Q', NULL)) {
        free(cat);
        conn_log(LOG_ERROR, c, "out of memory: INSERTs of this session are not rewritten");
        return;
    }
    size_t len = strlen(sql) + 1;
    uint8_t head[PG_HEAD_LEN] = { 'Q' };
    pg_put_u32(head + 1, (uint32_t)(4 + len));
    bufferevent_write(c->server, head, sizeof(head));
    bufferevent_write(c->server, sql, len);
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

/* A reply to the proxy's own query: it never reaches the client. */
static enum taken take_injected_reply(struct conn *c, char type, const uint8_t *body, size_t len)
{
    char status = 0;

    switch (type) {
    case 'D':
        if (c->catalog && !catalog_add_row(c->catalog, body, len))
            c->catalog_ok = false;
        break;
    case 'E': {
        struct pg_error err;
        c->catalog_ok = false;
        if (!pg_error_parse(body, len, &err))
            break;
        if (note_fatal(c, &err)) {
            track_server_msg(&c->track, type, 0);
            return TAKEN_FORWARD;
        }
        conn_log(LOG_WARNING, c, "catalog query: %s %s", err.code ? err.code : "?",
                 err.message ? err.message : "");
        break;
    }
    case 'Z':
        status = pg_ready_status(body, len);
        break;
    default:
        break;
    }
    track_server_msg(&c->track, type, status);
    if (type == 'Z' && c->catalog)
        catalog_arrived(c);
    return TAKEN_DROPPED;
}

/* ---- server messages the proxy reads ----------------------------------- */

static void copy_setting(char *dst, size_t cap, const char *value)
{
    snprintf(dst, cap, "%s", value);
}

/* ParameterStatus: the settings that decide whether text may be scanned. */
static void note_parameter(struct conn *c, const uint8_t *body, size_t len)
{
    const char *name, *value;

    if (!pg_param_status(body, len, &name, &value))
        return;
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

/* An error about a rewritten statement points into the client's text. */
static enum taken take_error(struct conn *c, const uint8_t *msg, size_t total,
                             struct evbuffer *out)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN;
    const struct track_req *head = answering(c);
    const struct decision *d = head ? head->note : NULL;
    struct pg_error err;
    enum taken taken = TAKEN_FORWARD;

    if (!pg_error_parse(body, len, &err))
        return TAKEN_FORWARD;
    note_fatal(c, &err);
    if (d && d->result.text && err.position) {
        size_t pos = strtoul(err.position, NULL, 10);
        size_t mapped = rewrite_map_position(&d->result, pos, c->charset_utf8);
        char value[24];
        uint8_t buf[1024];
        snprintf(value, sizeof(value), "%zu", mapped);
        size_t need = pg_fields_replace(buf, sizeof(buf), 'E', body, len, 'P', value);
        uint8_t *big = need > sizeof(buf) && need != SIZE_MAX ? malloc(need) : NULL;
        if (big)
            pg_fields_replace(big, need, 'E', body, len, 'P', value);
        if (need <= sizeof(buf) || big) {
            evbuffer_add(out, big ? big : buf, need);
            taken = TAKEN_REPLACED;
        }
        free(big);
    }
    return taken;
}

static void login_done(struct conn *c)
{
    c->state = CONN_ACTIVE;
    event_free(c->login_timer);
    c->login_timer = NULL;
    conn_log(LOG_DEBUG, c, "logged in");
    if (!c->replication)
        c->scope = ruleset_scope(c->rules, c->database, c->user ? c->user : "");
    if (c->scope && scope_state(c->scope) == SCOPE_UNKNOWN)
        learn_catalog(c);
}

static enum taken take_server_msg(struct conn *c, const uint8_t *msg, size_t total,
                                  struct evbuffer *out)
{
    char type = (char)msg[0];
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN;
    enum taken taken = TAKEN_FORWARD;

    if (answers_injected(c, type))
        return take_injected_reply(c, type, body, len);
    switch (type) {
    case 'S':
        note_parameter(c, body, len);
        break;
    case 'E':
        taken = take_error(c, msg, total, out);
        break;
    case 'Z':
        if (c->state == CONN_LOGIN) {
            login_done(c);
            return TAKEN_FORWARD;
        }
        break;
    default:
        break;
    }
    track_plain(c, TO_CLIENT, type, type == 'Z' ? pg_ready_status(body, len) : 0);
    return taken;
}

/* ---- the relay loop ---------------------------------------------------- */

static void note_oversized(struct conn *c, enum direction d, char type, size_t total)
{
    c->proxy->stats.oversized_inspected++;
    if (d == TO_SERVER && rewriting(c))
        scope_count_reason(c->scope, RR_TOO_LARGE);
    if (d == TO_CLIENT && answers_injected(c, type))
        c->catalog_ok = false;
    conn_log(LOG_DEBUG, c, "'%c' message of %zu bytes streamed unread", type, total);
}

/* The stream is corrupt: nothing after this can be framed. */
static void protocol_violation(struct conn *c, enum direction d, const uint8_t *raw)
{
    c->proxy->stats.protocol_violations++;
    conn_log(LOG_WARNING, c, "%s sent a message with length %u (type 0x%02x): closing",
             d == TO_SERVER ? "client" : "server", pg_get_u32(raw + 1), raw[0]);
    if (d == TO_SERVER)
        fail_client(c, "08P01", "invalid message length", "protocol violation by client");
    else
        fail_client(c, "08P01", "idemproxy: server sent an invalid message",
                    "protocol violation by server");
}

/* Moves the first n bytes of in on, or drops them when they belong to the
 * proxy. */
static void pass_bytes(struct conn *c, enum direction d, struct evbuffer *in,
                       struct evbuffer *out, size_t n)
{
    if (c->stream_discard[d])
        evbuffer_drain(in, n);
    else
        evbuffer_remove_buffer(in, out, n);
}

/* Moves every whole message it can from one side to the other. Messages the
 * proxy needs to read are held until whole (up to max_held_message); all
 * others stream through as their bytes arrive. Consecutive messages move in
 * one evbuffer_remove_buffer, which hands over whole chains without copying.
 * Returns false when the pair was closed. */
static bool relay(struct conn *c, enum direction d)
{
    struct bufferevent *src = source_of(c, d), *dst = sink_of(c, d);
    struct evbuffer *in = bufferevent_get_input(src), *out = bufferevent_get_output(dst);
    size_t max_held = c->proxy->cfg->max_held_message;
    size_t span = 0; /* bytes at the front of in that are ready to move */
    struct evbuffer_ptr pos;

    if (c->stream_left[d]) {
        size_t avail = evbuffer_get_length(in);
        size_t n = c->stream_left[d] < avail ? c->stream_left[d] : avail;
        pass_bytes(c, d, in, out, n);
        c->stream_left[d] -= n;
        if (c->stream_left[d])
            goto moved;
        c->stream_discard[d] = false;
    }
    evbuffer_ptr_set(in, &pos, 0, EVBUFFER_PTR_SET);

    for (;;) {
        size_t avail = evbuffer_get_length(in);
        uint8_t raw[PG_HEAD_LEN];
        struct pg_msg_head head;

        if (avail - span < PG_HEAD_LEN)
            break;
        evbuffer_copyout_from(in, &pos, raw, PG_HEAD_LEN);
        if (pg_msg_head(raw, PG_HEAD_LEN, &head) != PG_NEXT_OK) {
            evbuffer_remove_buffer(in, out, span);
            protocol_violation(c, d, raw);
            return false;
        }
        size_t total = (size_t)head.len + 1;
        enum handling h = d == TO_SERVER ? client_handling(c, head.type)
                                         : server_handling(c, head.type);
        if (h != HANDLE_STREAM && total > max_held) {
            note_oversized(c, d, head.type, total);
            /* The proxy's own answer too big to read is dropped unread. */
            if (d == TO_CLIENT && answers_injected(c, head.type)) {
                evbuffer_remove_buffer(in, out, span);
                span = 0;
                c->stream_discard[d] = true;
            }
            h = HANDLE_STREAM;
        }
        if (h != HANDLE_STREAM && avail - span < total) {
            hold_for(c, d, total);
            break;
        }

        if (h == HANDLE_TAKE) {
            evbuffer_remove_buffer(in, out, span);
            span = 0;
            const uint8_t *msg = evbuffer_pullup(in, (ev_ssize_t)total);
            if (!msg) {
                fail_client(c, "53200", "out of memory", "out of memory");
                return false;
            }
            enum taken taken = d == TO_SERVER ? take_client_msg(c, msg, total, out)
                                              : take_server_msg(c, msg, total, out);
            if (taken == TAKEN_CLOSED)
                return false;
            if (taken == TAKEN_FORWARD)
                span = total;
            else
                evbuffer_drain(in, total);
            evbuffer_ptr_set(in, &pos, span, EVBUFFER_PTR_SET);
            continue;
        }

        char status = h == HANDLE_PEEK && head.type == 'Z' ? ready_status_at(in, &pos) : 0;
        if (!track_plain(c, d, head.type, status))
            return false;
        if (avail - span < total) {
            /* Streams on as its bytes arrive. */
            c->stream_left[d] = total - (avail - span);
            pass_bytes(c, d, in, out, avail);
            span = 0;
            goto moved;
        }
        if (c->stream_discard[d]) {
            evbuffer_drain(in, total);
            c->stream_discard[d] = false;
            evbuffer_ptr_set(in, &pos, span, EVBUFFER_PTR_SET);
            continue;
        }
        span += total;
        if (span < avail)
            evbuffer_ptr_set(in, &pos, total, EVBUFFER_PTR_ADD);
    }
    if (span)
        evbuffer_remove_buffer(in, out, span);
moved:
    if (evbuffer_get_length(in) < READ_CHUNK)
        hold_done(c, d);
    if (evbuffer_get_length(out) >= OUT_HIGH && !c->paused[d]) {
        c->paused[d] = true;
        bufferevent_disable(src, EV_READ);
    }
    return true;
}

static void close_if_idle(struct conn *c)
{
    if (c->stop_when_idle && c->state == CONN_ACTIVE && track_idle(&c->track) &&
        c->stream_left[TO_CLIENT] == 0 && c->stream_left[TO_SERVER] == 0)
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

static void connect_server(struct conn *c)
{
    struct proxy *p = c->proxy;
    const char *why = NULL;

    c->server = bufferevent_socket_new(p->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!c->server) {
        fail_client(c, "53200", "out of memory", "out of memory");
        return;
    }
    setup_bufferevent(c->server, c, server_read_cb, server_event_cb);
    struct timeval timeout = { p->cfg->server_connect_timeout, 0 };
    bufferevent_set_timeouts(c->server, NULL, &timeout);
    c->state = CONN_CONNECTING;
    if (!proxy_connect_server(p, c->server, &why)) {
        char name[256], msg[512];
        snprintf(msg, sizeof(msg), "idemproxy: could not connect to server at %s: %s",
                 proxy_server_name(p, name, sizeof(name)), why);
        fail_client(c, "08001", msg, "server unreachable");
    }
}

/* Handles one whole startup-phase packet (len bytes at the front of in).
 * Returns false when the client connection is finished with. */
static bool handle_startup_packet(struct conn *c, struct evbuffer *in, size_t len)
{
    struct proxy *p = c->proxy;
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
        /* Neither TLS nor GSS encryption here: the client may go on in
         * plaintext on the same connection. */
        bufferevent_write(c->client, "N", 1);
        return true;

    case PG_STARTUP_CANCEL:
        conn_log(LOG_DEBUG, c, "cancel request for backend %u", su.cancel_pid);
        cancel_forward(p, pkt, len);
        close_pair(c, "cancel request forwarded");
        return false;

    case PG_STARTUP_INVALID:
        p->stats.protocol_violations++;
        conn_log(LOG_WARNING, c, "invalid startup packet: %s", why);
        fail_client(c, "08P01", why, "invalid startup packet");
        return false;

    case PG_STARTUP_MESSAGE:
        break;
    }

    c->user = su.user ? strdup(su.user) : NULL;
    c->database = strdup(su.database ? su.database : su.user ? su.user : "");
    c->replication = su.replication;
    c->rules = ruleset_ref(p->rules);
    if (p->shutting_down) {
        fail_client(c, "57P03", "idemproxy is shutting down", "refused: shutting down");
        return false;
    }
    if (p->client_count >= p->cfg->max_client_conn) {
        char msg[128];
        snprintf(msg, sizeof(msg), "sorry, too many clients already (max_client_conn = %d)",
                 p->cfg->max_client_conn);
        fail_client(c, "53300", msg, "refused: max_client_conn reached");
        return false;
    }
    c->counted = true;
    p->client_count++;
    p->stats.clients_total++;
    conn_log(LOG_DEBUG, c, "login%s%s", su.application_name ? " application_name=" : "",
             su.application_name ? su.application_name : "");

    c->startup = evbuffer_new();
    if (!c->startup || evbuffer_remove_buffer(in, c->startup, len) != (int)len) {
        fail_client(c, "53200", "out of memory", "out of memory");
        return false;
    }
    connect_server(c);
    return c->state == CONN_CONNECTING;
}

static void read_startup(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->client);

    while (c->state == CONN_STARTUP) {
        uint8_t raw[4];
        if (evbuffer_copyout(in, raw, sizeof(raw)) < (ev_ssize_t)sizeof(raw))
            return;
        uint32_t len = pg_get_u32(raw);
        if (!pg_startup_len_ok(len)) {
            c->proxy->stats.protocol_violations++;
            conn_log(LOG_WARNING, c, "invalid startup packet length %u", len);
            fail_client(c, "08P01", "invalid length of startup packet", "invalid startup packet");
            return;
        }
        if (evbuffer_get_length(in) < len) {
            hold_for(c, TO_SERVER, len);
            return;
        }
        if (!handle_startup_packet(c, in, len))
            return;
        hold_done(c, TO_SERVER);
    }
}

/* ---- callbacks --------------------------------------------------------- */

/* After a reload, an idle session moves to the new rules; its next
 * statement is decided by them. */
static void follow_reload(struct conn *c)
{
    struct ruleset *current = c->proxy->rules;

    if (c->rules == current || c->catalog || !track_idle(&c->track) ||
        c->stream_left[TO_SERVER] || c->stream_left[TO_CLIENT])
        return;
    ruleset_unref(c->rules);
    c->rules = ruleset_ref(current);
    c->scope = NULL;
    if (!c->replication)
        c->scope = ruleset_scope(c->rules, c->database, c->user ? c->user : "");
    if (c->scope && scope_state(c->scope) == SCOPE_UNKNOWN)
        learn_catalog(c);
}

static void client_read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    (void)bev;

    switch (c->state) {
    case CONN_STARTUP:
        read_startup(c);
        break;
    case CONN_CONNECTING:
        /* The client has nothing to say before the server asks; what it
         * sends anyway waits in the input buffer, within its limit. */
        break;
    case CONN_ACTIVE:
        follow_reload(c);
        /* Until the catalog is in, the client's statements cannot be
         * decided: they wait in the input buffer, within its limit. */
        if (c->catalog)
            break;
        relay(c, TO_SERVER);
        break;
    case CONN_LOGIN:
        relay(c, TO_SERVER);
        break;
    case CONN_CLOSING:
        break;
    }
}

static void server_read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    (void)bev;

    switch (c->state) {
    case CONN_LOGIN:
    case CONN_ACTIVE:
        if (!relay(c, TO_CLIENT))
            break;
        if (c->resume_client) {
            c->resume_client = false;
            if (!relay(c, TO_SERVER))
                break;
        }
        close_if_idle(c);
        break;
    case CONN_STARTUP:
    case CONN_CONNECTING:
    case CONN_CLOSING:
        break;
    }
}

static const char *socket_error_text(struct bufferevent *bev, short what)
{
    int dns_err = bufferevent_socket_get_dns_error(bev);

    if (dns_err)
        return evutil_gai_strerror(dns_err);
    if (what & BEV_EVENT_TIMEOUT)
        return "timed out";
    int err = EVUTIL_SOCKET_ERROR();
    return err ? evutil_socket_error_to_string(err) : "connection closed";
}

static void client_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;

    if (c->state == CONN_CLOSING) {
        bufferevent_free(c->client);
        c->client = NULL;
        maybe_free(c);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        /* Relay whatever whole messages arrived with the goodbye. */
        client_read_cb(bev, c);
        if (c->stream_left[TO_SERVER] || evbuffer_get_length(bufferevent_get_input(bev)))
            close_pair(c, "client vanished mid-message");
        else
            close_pair(c, "client disconnected");
    } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        conn_log(LOG_DEBUG, c, "client socket: %s", socket_error_text(bev, what));
        close_pair(c, "client connection error");
    }
}

static void server_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;

    if (what & BEV_EVENT_CONNECTED) {
        bufferevent_set_timeouts(bev, NULL, NULL);
        set_nodelay(bev);
        c->state = CONN_LOGIN;
        bufferevent_write_buffer(bev, c->startup);
        evbuffer_free(c->startup);
        c->startup = NULL;
        bufferevent_enable(bev, EV_READ | EV_WRITE);
        conn_log(LOG_DEBUG, c, "server connected");
        relay(c, TO_SERVER);
        return;
    }
    if (c->state == CONN_CLOSING) {
        bufferevent_free(c->server);
        c->server = NULL;
        maybe_free(c);
        return;
    }
    if (c->state == CONN_CONNECTING) {
        char name[256], msg[512];
        snprintf(msg, sizeof(msg), "idemproxy: could not connect to server at %s: %s",
                 proxy_server_name(c->proxy, name, sizeof(name)), socket_error_text(bev, what));
        fail_client(c, "08001", msg, "server unreachable");
        return;
    }
    if (what & BEV_EVENT_EOF)
        server_read_cb(bev, c);
    if (c->state == CONN_CLOSING)
        return;
    if (!c->server_said_fatal) {
        conn_log(LOG_WARNING, c, "server connection lost: %s", socket_error_text(bev, what));
        send_client_error(c, "FATAL", "08006",
                          "idemproxy: server closed the connection unexpectedly");
    }
    close_pair(c, "server disconnected");
}

/* ---- public ------------------------------------------------------------ */

struct conn *conn_accept(struct proxy *p, evutil_socket_t fd,
                         const struct sockaddr *addr, int addrlen)
{
    struct conn *c = calloc(1, sizeof(*c));
    (void)addrlen;

    if (!c) {
        evutil_closesocket(fd);
        log_error("out of memory accepting a client");
        return NULL;
    }
    c->proxy = p;
    c->id = ++p->next_conn_id;
    c->state = CONN_STARTUP;
    track_init(&c->track, free_note);
    format_peer(c->peer, sizeof(c->peer), addr);
    c->client = bufferevent_socket_new(p->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->login_timer = evtimer_new(p->base, login_timeout_cb, c);
    if (!c->client || !c->login_timer) {
        if (c->client)
            bufferevent_free(c->client);
        else
            evutil_closesocket(fd);
        if (c->login_timer)
            event_free(c->login_timer);
        free(c);
        log_error("out of memory accepting a client");
        return NULL;
    }
    c->next = p->conns;
    if (p->conns)
        p->conns->prev = c;
    p->conns = c;
    p->conn_count++;

    setup_bufferevent(c->client, c, client_read_cb, client_event_cb);
    set_nodelay(c->client);
    struct timeval login = { p->cfg->client_login_timeout, 0 };
    evtimer_add(c->login_timer, &login);
    bufferevent_enable(c->client, EV_READ | EV_WRITE);
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
    if (c->server && c->state == CONN_ACTIVE && c->stream_left[TO_SERVER] == 0) {
        static const uint8_t terminate[] = { 'X', 0, 0, 0, 4 };
        bufferevent_write(c->server, terminate, sizeof(terminate));
    }
    fail_client(c, "57P01", "terminating connection because idemproxy is shutting down",
                "proxy shutdown");
}

void conn_shutdown(struct conn *c)
{
    c->stop_when_idle = true;
    if (c->state == CONN_STARTUP)
        close_pair(c, "proxy shutdown before login");
    else
        close_if_idle(c);
}
