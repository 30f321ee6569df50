/*
 * conn_int.h: what the files of the conn module share, and nothing else
 * includes.
 *
 * A pair's work is split by job, each file over the one struct conn:
 *   conn.c         the pair's life, the relay loop that frames both
 *                  directions, the callbacks of both socks
 *   conn_client.c  client messages the proxy reads: statements decided,
 *                  rewritten and guarded; the proxy's own requests
 *   conn_server.c  server messages the proxy reads: errors translated,
 *                  replies to the proxy's requests, session settings
 *   conn_login.c   from the startup packet to an active session: TLS,
 *                  the server connection, authentication, kept servers
 *   conn_admin.c   the admin console
 * All of them run on the pair's worker thread only.
 */
#ifndef IDEM_CONN_INT_H
#define IDEM_CONN_INT_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/evp.h>

#include "conn.h"
#include "log.h"
#include "pgproto.h"
#include "rules.h"
#include "session.h"
#include "sock.h"
#include "stmtcache.h"
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
    INJECT_ABORT,       /* rolls back to it after another error, and fails the
                           block at the client's level (TRANSLATE_SQL_ABORT) */
    INJECT_UNNAMED,     /* gives the server's unnamed statement the cached text
                           (or closes it), ahead of a message the proxy cannot
                           rename */
    INJECT_PREPARED,    /* the Close and Bind that run a Query's INSERT as a
                           cached statement (prepare_query) */
    INJECT_REPREPARE,   /* the DEALLOCATE (or Close) and Parse that give a
                           client's statement the text the rules want now */
    INJECT_IDENTITY,    /* the question whether the catalog check holds for
                           this session (learn_identity) */
    INJECT_REFRESH,     /* the DEALLOCATE, Parse and Sync that give a
                           client's statement the text the rules want for the
                           session's identity now (reprepare_all) */
};

/* What the proxy knows of the session's identity: as whom it runs, and
 * where its table names without a schema lead. The catalog check decides
 * per role (the session's scope follows the role it runs as) and for each
 * section's search_path; a session whose names lead elsewhere (its own
 * search_path, a temporary table) has its INSERTs left alone, since a
 * rewrite could then change another table than the one registered, or
 * fail where the INSERT would not. The proxy cannot follow what SET does
 * to it, so it does not try: it asks the server, at the next idle moment
 * outside a transaction block, or inside one right before a statement
 * that may need the answer (ask_in_block). */
enum identity {
    IDENTITY_UNKNOWN, /* since login, or since a statement that may have
                         changed it: nothing is rewritten until it is asked */
    IDENTITY_ASKING,  /* the question is under way: client input waits */
    IDENTITY_KNOWN,   /* identity_fits says whether the scope's verdicts hold */
};

/* A question of the proxy's inside a transaction block (about the
 * identity, or the catalog of a role first met there) runs under a
 * savepoint of its own, rolled back to whatever the answer (the question
 * sets its settings LOCAL), so that the client's block is left as it was. */
enum block_question {
    BLOCK_QUESTION_NONE,
    BLOCK_QUESTION_SENT,      /* its SAVEPOINT is not confirmed yet */
    BLOCK_QUESTION_SAVEPOINT, /* the savepoint stands: a failure after it is
                                 undone by rolling back to it */
    BLOCK_QUESTION_UNDOING,   /* the question failed: the rollback is under way */
};

/* The identity a session has outside transactions, kept while one of its
 * transactions changes it LOCAL only (SET LOCAL ROLE, set_config(...,
 * true): PostgREST and PostGraphile do so for every request). When the
 * transaction ends the identity is the kept one again, without a question. */
struct identity_outside {
    bool kept;
    uint64_t until;             /* the serial of the request (track) that made
                                   the last LOCAL change: the transaction that
                                   ends it ends after its answer */
    struct scope *scope;
    bool fits;
    char *signature;            /* malloc'ed */
    size_t signature_len;
    uint64_t version, ns;       /* as identity_version and identity_ns */
};

/* What the log last said of the session's identity (say_identity). */
enum identity_said {
    SAID_FITS,            /* nothing, or that it fits again */
    SAID_NAMES_ELSEWHERE, /* its table names lead elsewhere */
    SAID_ROLE_UNFOLLOWED, /* it runs as a role the proxy has no scope for */
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
    GUARD_SPENT,      /* simple: the SAVEPOINT had failed and so did the Query;
                         RELEASE fails in the aborted block, unheard; its
                         ReadyForQuery is the client's */
    GUARD_ABORT,      /* simple: the Query failed otherwise under the savepoint;
                         once RELEASE has failed, the abort goes */
    GUARD_FAILED,     /* simple: a 23505 is held; once RELEASE has failed in the
                         aborted block, the rollback goes */
    GUARD_AWAIT_SYNC, /* extended: a 23505 is held; the client's next message
                         must be Sync for the rollback to be honest */
    GUARD_SYNCED,     /* extended: that Sync went; its ReadyForQuery is the cue */
    GUARD_ROLLBACK,   /* ROLLBACK TO and RELEASE went; the client's answer waits */
    GUARD_ABORT_AWAIT_SYNC, /* extended: an Execute failed otherwise under the
                               savepoint; the batch's Sync is still to come */
    GUARD_ABORT_SYNCED,     /* extended: that Sync went; its ReadyForQuery is the
                               cue for the abort */
    GUARD_ABORTING,   /* the abort went; its ReadyForQuery is the client's */
};

struct conn {
    struct conn *prev, *next; /* the proxy's list */
    struct worker *worker;
    uint64_t id;
    time_t since;               /* accepted at */
    time_t server_born;         /* its server connected at (server_lifetime) */
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
    struct scope *scope;        /* its database's and the role's it runs as (its
                                   login role's until the server says otherwise);
                                   NULL: never rewrite */
    struct catalog *catalog;    /* the proxy's catalog query is under way: client
                                   input waits until its answer is in */
    bool catalog_ok;            /* no row of that answer was refused */
    bool resume_client;         /* the catalog arrived: relay the client's input */
    bool await_quiet;           /* a Bind waits in the client's input for all before
                                   it to be answered (awaits_identity) */
    bool replication;           /* a replication session: never rewrite */
    enum identity identity;
    bool identity_fits;         /* the last answer fit the scope's verdicts */
    bool identity_in_block;     /* it was learnt inside the transaction block
                                   under way: what ends the block's LOCAL
                                   settings unsettles it (follow_effects) */
    enum block_question block_question;
    struct identity_outside identity_outside;
    enum identity_said identity_said;
    bool identity_told;         /* a change of it was logged at info already */
    bool identity_at_login;     /* the question went before the client said
                                   anything (a message it sent meanwhile
                                   waits, but counts as said): its answer
                                   holds for the next login alike */
    char *identity_signature;   /* what the server looks names up by again
                                   (struct identity_answer); NULL: unknown */
    size_t identity_signature_len;
    char *identity_heard;       /* ... as the answer under way says it */
    size_t identity_heard_len;
    bool identity_heard_fits;
    struct scope *identity_heard_scope;
    uint64_t rules_epoch;       /* see rules_version */
    uint64_t epoch_scope_version;
    uint64_t identity_version;  /* the scope's version it was learnt under */
    uint64_t identity_ns;       /* when it was learnt */

    /* Translating unique violations. */
    struct session session;     /* the client's statements and portals */
    struct stmtcache stmts;     /* the proxy's prepared rewritten INSERTs */
    uint8_t *unnamed_parse;     /* the client's Parse of its unnamed statement when
                                   that is an INSERT into a registered table,
                                   kept to prepare it again when the rules
                                   change (see reprepare); its buffer is reused */
    size_t unnamed_parse_len, unnamed_parse_cap;
    uint64_t unnamed_version;   /* the rules' version that decided its text */
    /* A Query, Parse or Close of the unnamed statement went while the proxy
     * kept something of it (the cached statement it stands for, its Parse),
     * behind messages of the same batch that may yet fail and have the
     * server skip it. Until it is answered or skipped, what it displaced
     * waits here to be put back (unnamed_unsure), and the Sync ending its
     * batch holds the client's next messages, whose meaning depends on
     * which. */
    struct stmt_entry *displaced_unnamed;
    uint8_t *displaced_parse;   /* the other buffer of unnamed_parse */
    size_t displaced_parse_len, displaced_parse_cap;
    uint64_t displaced_version;
    bool unnamed_closed;        /* the server holds no unnamed statement: the proxy
                                   closed it, and the client sent no Parse since */
    bool batch_open;            /* extended messages since the last Sync */
    char batch_status;          /* the block's status now, 'I', 'T' or 'E', where
                                   it was known as the batch began and all
                                   the batch ran since is known; else 0 */
    char batch_from;            /* batch_status as the batch began */
    char bound_portal[64];      /* the portal the batch's last Bind defined, */
    bool bound_stays;           /* ... if its statement is known not to end a
                                   block (and the name fits) */
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
    bool charset_converts;      /* the server converts the client's text */
    bool scs_off;               /* standard_conforming_strings = off */
    char login_client_encoding[32]; /* as the session logged in: the */
    bool login_scs_off;         /* settings its texts are kept under */
    bool settings_apart;        /* client_encoding or standard_conforming_strings
                                   differ from the login's */
    bool parsed_apart;          /* a text kept was parsed while they did */
    bool parsed_unread;         /* a Parse too large to read, and not
                                   followed (unread_parse_name), went to the
                                   server: a statement whose text the proxy
                                   never saw may drop or define others */

    /* TLS and authentication. */
    bool client_tls;            /* the client connection is TLS */
    bool direct_tls;            /* ... begun without SSLRequest */
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
    bool client_said_goodbye;   /* a Terminate went on to the server, which
                                   closes the connection after it */
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

/* What a taken message became. */
enum taken {
    TAKEN_FORWARD,  /* moves on unchanged */
    TAKEN_REPLACED, /* the handler wrote something else in its place */
    TAKEN_DROPPED,  /* it goes nowhere */
    TAKEN_HELD,     /* not yet: it waits in the input for the proxy's own
                       request to be answered, and is taken again then */
    TAKEN_CLOSED,   /* the pair was closed */
};

/* Where a relay pass puts bytes. The messages it has passed over but not
 * moved yet (span, at the front of in) go out before anything a handler
 * writes, so that order is kept without moving every message on its own. */
struct sink {
    struct evbuffer *in, *out;
    size_t span;
};

static inline void sink_flush(struct sink *k)
{
    if (k->span) {
        evbuffer_remove_buffer(k->in, k->out, k->span);
        k->span = 0;
    }
}

static inline void sink_write(struct sink *k, const void *data, size_t len)
{
    sink_flush(k);
    evbuffer_add(k->out, data, len);
}

/* What the proxy knows about one of the client's requests. */
struct note {
    struct decision *decision;   /* a rewritten text: error positions map through it */
    struct translate_request req; /* a Query or Execute of a recognised INSERT */
    const char *defines;         /* a Parse's statement or a Bind's portal name */
    bool chained;                /* a Parse or Close that changed what the
                                    proxy knows of statement defines */
    struct session_entry *displaced; /* ... and what it held before
                                        (session_detach), for when the
                                        server refuses or skips it */
    bool flushed;                /* an Execute the client sent a Flush after */
    struct stmt_entry *maps;     /* a Parse that made the unnamed statement stand for
                                    this cached one */
    struct stmt_entry *creates;  /* ... and created it on the server, */
    uint64_t number;             /* under this number */
    bool silent;                 /* a Parse of the proxy's own (creates):
                                    its ParseComplete is the proxy's */
    bool parameterised;          /* a Query's INSERT run as the statement
                                    with parameters (params.h), or that
                                    statement's Parse: the server's error
                                    positions are in its text */
    uint64_t renamed;            /* a Bind or Describe of the unnamed
                                    statement sent under the name of the
                                    cached one created as this number;
                                    0 when not */
    bool first_run;              /* an Execute of a portal's statement, not a
                                    fetch from it (session_execute) */
    bool unsure;                 /* a redefinition of the unnamed statement
                                    the server may yet skip (unnamed_settle
                                    when it is answered instead) */
    char status_after;           /* a Query's or Sync's: 'T' when the session
                                    is surely in a transaction block once it
                                    is answered, though perhaps a failed one,
                                    where a guard fails as the statement it
                                    guards would (status_after_pending); else 0 */
    char defined[];              /* where defines points */
};

enum own_msg {
    OWN_MSG_NONE,  /* not all of it is in yet */
    OWN_MSG_READY, /* whole */
    OWN_MSG_BAD,   /* invalid header, longer than allowed, or no memory */
};

/* ---- conn.c ------------------------------------------------------------ */

/* Sends bytes the proxy writes itself to s, at once. */
void send_to(struct sock *s, const void *data, size_t len);
/* Tells the client why with a FATAL (sqlstate, message), then closes the
 * pair, logging reason. */
void fail_client(struct conn *c, const char *sqlstate, const char *message,
                 const char *reason);
void fail_oom(struct conn *c);
/* Ends the pair: logs why once, lets each side flush what it still has to
 * read, then frees everything. Safe to call more than once. */
void close_pair(struct conn *c, const char *reason);

/* The client's next whole message while the proxy answers the client
 * itself, at most max bytes (no more than READ_CHUNK). READY: *msg points
 * at it, type byte first; the caller drains head->len + 1 bytes. */
enum own_msg next_own_msg(struct conn *c, size_t max, struct pg_msg_head *head,
                          const uint8_t **msg);

/* server_reuse: a key of the proxy's for the client, standing for the
 * server's real one (a BackendKeyData body); false when none could be
 * made. forget_key: the client's key stops cancelling anything. */
bool give_key(struct conn *c, const uint8_t *real, size_t len);
void forget_key(struct conn *c);
/* server_reuse: parks the server of an idle session in the worker's pool
 * for the next client with the same login. True when it did. */
bool keep_server(struct conn *c);

/* Raises the read limit of direction d's source so that a held message of
 * total bytes fits; hold_done puts it back. */
void hold_for(struct conn *c, enum flow d, size_t total);
void hold_done(struct conn *c, enum flow d);
/* Notes a FATAL or PANIC from the server; returns whether err is one. */
bool note_fatal(struct conn *c, const struct pg_error *err);
/* The monotonic clock, in nanoseconds. */
uint64_t now_ns(void);

/* Moves every whole message it can in direction d; false when the pair was
 * closed. */
bool relay(struct conn *c, enum flow d);
/* The client's input, whatever the state. */
void client_read(struct conn *c);
void server_sock_cb(struct sock *s, enum sock_event event, void *arg);

/* ---- conn_client.c ----------------------------------------------------- */

/* Handles a client message relay() takes (client_handling says which),
 * writing what replaces it into k. */
enum taken take_client_msg(struct conn *c, const uint8_t *msg, size_t total, struct sink *k);
/* The request queue's destructor of notes (owner: the connection). */
void free_note(void *owner, void *note);
/* The note of a request of the client's (NULL for the proxy's own). */
const struct note *note_of(const struct track_req *r);
/* The server answers a Parse that created a cached statement. */
bool answers_creation(const struct conn *c);
/* Sends sql as a Query of the proxy's own, into k when given (keeping the
 * relay pass's order), else straight to the server. */
bool inject_query(struct conn *c, struct sink *k, const char *sql, enum inject tag);
/* Rolls back to the proxy's savepoint and releases it (INJECT_ROLLBACK),
 * after the client's Query or, after_batch, after its extended batch. */
bool inject_rollback(struct conn *c, bool after_batch);
/* The same, then fails the block at the client's level (INJECT_ABORT). */
bool inject_abort(struct conn *c, bool after_batch);
/* The proxy's own extended run of a statement (PG_EXTENDED_RUN_MESSAGES),
 * in the request queue. False when out of memory. */
bool track_extended_run(struct conn *c, enum inject tag);
/* Reads the NUL-terminated name at *at in body; advances *at past it.
 * NULL when there is none. */
const char *read_name(const uint8_t *body, size_t len, size_t *at);
/* The statement a Bind binds or a Describe of a statement describes. NULL
 * for any other message, or one whose name is cut short. */
const char *named_statement(const uint8_t *msg, size_t total);
/* Prepares again, at once, every statement of the client's that the rules
 * now in force would prepare otherwise (see reprepare), when nothing is
 * outstanding: after the session's identity changed, which makes the
 * rules apply to it or not. False when out of memory. */
bool reprepare_all(struct conn *c);
/* A Query, a Parse or a Close of the unnamed statement goes to the server:
 * it is no longer what the proxy kept of it. When the server may yet skip
 * the message (see displaced_unnamed), *note (made when NULL) is marked to
 * settle that when it is answered; note NULL: the message has none, and
 * what was kept is dropped. False when out of memory. */
bool unnamed_redefined(struct conn *c, struct note **note);
/* Such a redefinition is still unanswered (it displaced something: see
 * unnamed_redefined). */
static inline bool unnamed_unsure(const struct conn *c)
{
    return c->displaced_unnamed || c->displaced_parse_len;
}
/* The server skipped that redefinition: the unnamed statement is what it
 * was before it. */
void unnamed_restore(struct conn *c);
/* It took place (or what it displaced is stale): that is dropped. */
void unnamed_settle(struct conn *c);
/* The server is to read a message naming the unnamed statement that the
 * proxy cannot rename: the statement gets the cached text first. */
void restore_unnamed(struct conn *c, struct sink *k);

/* Whether a text the session prepared may mean otherwise parsed again
 * now: its client_encoding or standard_conforming_strings differ from
 * those it logged in with, or a text kept was parsed while they did. A
 * text in ASCII without a backslash means the same either way. */
static inline bool text_settings_moved(const struct conn *c)
{
    return c->settings_apart || c->parsed_apart;
}

/* A Bind too large to read whole (total bytes), of which first holds the
 * first len, its head and names among them (named_statement finds them):
 * followed as one the proxy reads, and tracked. TAKEN_FORWARD (*consumed:
 * so many of its first bytes went out renamed, for the rest to follow),
 * TAKEN_HELD (it waits for an answer about the session's identity, as
 * take_bind's do) or TAKEN_CLOSED (out of memory). */
enum taken take_unread_bind(struct conn *c, struct sink *k, const uint8_t *first, size_t len,
                            size_t total, size_t *consumed);

/* The name of a Parse too large to read whole, of which first holds the
 * first len bytes, when its name is among them and its text's opening
 * says it drops no statement; *effects then are those its text may have
 * (rewrite_unread_effects). NULL otherwise. */
const char *unread_parse_name(const uint8_t *first, size_t len, unsigned *effects);

/* Such a Parse of statement name, followed as take_parse follows a
 * statement it keeps nothing of but its effects, and tracked.
 * TAKEN_FORWARD, or TAKEN_CLOSED (out of memory). */
enum taken take_unread_parse(struct conn *c, const char *name, unsigned effects);

/* ---- conn_question.c ---------------------------------------------------- */

/* A client's statement with these effects (rewrite_effects) goes to the
 * server: one that may change the identity unsettles it (keeping the one
 * from before when the change is LOCAL: struct identity_outside), and so
 * does one that may undo the LOCAL settings an answer was given under. */
void follow_effects(struct conn *c, unsigned effects);
/* Inside a transaction block whose statements may have changed the
 * identity, asks about it before a Query or Parse (msg, total bytes) that
 * may insert into a registered table, or a Bind or Describe of a statement
 * that does, when that message starts a request with nothing of the
 * client's under way. True when it asked: the message waits for the
 * answer (TAKEN_HELD). */
bool ask_in_block(struct conn *c, const uint8_t *msg, size_t total);
/* Asks the server about the registered tables; client input waits until
 * the answer is in. Only with nothing of the client's under way, where the
 * query joins none of its work: idle outside a transaction block, or
 * inside one under a savepoint (enum block_question), for a role first met
 * there. Inside a block it reads the block's snapshot, which under
 * REPEATABLE READ may be older than the tables: a constraint dropped since
 * makes the rewrite fail with 42P10, and the doubt that raises asks
 * again. */
void learn_catalog(struct conn *c);
/* The scope of the session's database and login role; NULL when out of
 * memory. */
struct scope *login_scope(struct conn *c);
/* The session's statements are decided in s from now on (NULL: never
 * rewritten). One that has not learnt its catalog (a login's first, a
 * role's first session since a reload) learns it on this session before
 * anything of its client's is decided, whoever else is asking: the
 * client's next statement would otherwise pass undecided. Only where
 * learn_catalog may run. */
void enter_scope(struct conn *c, struct scope *s);
/* Asks the server about the session's identity (scope_identity_query);
 * client input waits until the answer is in. Only with nothing under way:
 * idle outside a transaction block, or inside one under a savepoint (enum
 * block_question). Right after login, what the question answered for the
 * same login before is taken instead. */
void learn_identity(struct conn *c);
/* A question inside a block (tag: the catalog's or the identity's) failed
 * after its savepoint: rolls back to it, as a request of the proxy's own
 * whose ReadyForQuery brings the answer (none). False when out of memory:
 * the pair is failing. */
bool undo_block_question(struct conn *c, enum inject tag);
/* The answer about the session's identity is in (answered at that time):
 * the scope of the role it runs as (NULL: none to be had), whether it fits
 * that scope's verdicts, and its signature (malloc'ed, taken over; NULL
 * when the question failed). The session moves to that scope. A change of
 * role or of fit is said once, at info: it is the session's doing, not a
 * fault. False when out of memory (the pair is then to be failed). */
bool identity_known(struct conn *c, struct scope *scope, bool fits, char *signature,
                    size_t signature_len, uint64_t answered);
/* Called with each read: once a transaction is over, what it set LOCAL is
 * too. The identity kept from before it (struct identity_outside) is the
 * session's again when all its changes were LOCAL; one learnt inside it is
 * unknown otherwise. False when out of memory. */
bool identity_after_transaction(struct conn *c);
/* ---- conn_server.c ----------------------------------------------------- */

/* Handles a server message relay() takes (server_handling says which). */
enum taken take_server_msg(struct conn *c, const uint8_t *msg, size_t total, struct sink *k);
/* The client's next message (of type) settles a 23505 held for it:
 * settle_await outside the proxy's savepoint, guard_next under it. */
void settle_await(struct conn *c, char type);
void guard_next(struct conn *c, char type);
/* A ParameterStatus: the settings that decide whether text may be read. */
void note_setting(struct conn *c, const char *name, const char *value);

/* ---- conn_login.c ------------------------------------------------------ */

void login_timeout_cb(evutil_socket_t fd, short what, void *arg);
/* The client's startup-phase packets, and its SASL messages while the
 * proxy authenticates it. */
void read_startup(struct conn *c);
void read_auth(struct conn *c);
/* The server connection: connected, then its TLS, then the startup. */
void send_startup(struct conn *c);
void read_tls_answer(struct conn *c);
void server_tls_ready(struct conn *c);
void server_tls_failed(struct conn *c);
void cannot_connect(struct conn *c, const char *why);
/* An Authentication request from the server during its login. */
enum taken take_auth_request(struct conn *c, const uint8_t *msg, size_t total, struct sink *k);
/* The server's first ReadyForQuery (or a kept server's): the session is
 * active. */
void login_done(struct conn *c);

/* ---- conn_admin.c ------------------------------------------------------ */

/* The client logged in to the admin console: the proxy greets it. */
void admin_begin(struct conn *c);
/* Commands to the console, each answered before the next is read. */
void admin_read(struct conn *c);

/* ---- what every file asks of a pair ------------------------------------ */

/* Notices, parameter changes and notifications can come at any time and
 * always belong to the client, even amid the answer to the proxy's query. */
static inline bool is_async(char type)
{
    return type == 'N' || type == 'S' || type == 'A';
}

/* The session's statements are decided by its rules: it is active, and
 * its scope knows the catalog. */
static inline bool rewriting(const struct conn *c)
{
    return c->state == CONN_ACTIVE && c->scope && scope_state(c->scope) == SCOPE_READY;
}

/* The scope's verdicts hold for the session (see enum identity): its
 * INSERTs may be decided as the scope's. */
static inline bool identity_holds(const struct conn *c)
{
    return c->identity == IDENTITY_KNOWN && c->identity_fits &&
           c->identity_version == scope_version(c->scope);
}

static inline void forget_identity_outside(struct conn *c)
{
    free(c->identity_outside.signature);
    c->identity_outside = (struct identity_outside){ 0 };
}

/* A statement that may change the identity for the session goes to the
 * server: nothing is rewritten until the server has been asked again. (A
 * question under way was sent before it.) */
static inline void unsettle_identity(struct conn *c)
{
    if (c->identity == IDENTITY_KNOWN)
        c->identity = IDENTITY_UNKNOWN;
    c->identity_in_block = false;
    forget_identity_outside(c);
}

/* Nothing is outstanding on the session and no message is half-relayed
 * either way, whatever its transaction status. */
static inline bool conn_quiet(const struct conn *c)
{
    return track_quiet(&c->track) && c->stream_left[FLOW_TO_SERVER] == 0 &&
           c->stream_left[FLOW_TO_CLIENT] == 0;
}

/* The version of the rules a statement of the session was decided under,
 * kept with it so that it is prepared again (reprepare) once they change:
 * a new one whenever the scope's verdicts change, and whenever the server
 * will look the session's names up anew before running a statement
 * prepared before (its search_path or role changed: identity_known).
 * Not when only the identity's fit changed (a table created or dropped
 * on the path): PostgreSQL keeps a prepared statement on the table it
 * meant, and so does the proxy. */
static inline uint64_t rules_version(struct conn *c)
{
    uint64_t version = scope_version(c->scope);

    if (version != c->epoch_scope_version) {
        c->epoch_scope_version = version;
        c->rules_epoch++;
    }
    return c->rules_epoch;
}

/* The request the server is answering, when the proxy tracks one. */
static inline const struct track_req *answering(const struct conn *c)
{
    return c->state == CONN_ACTIVE ? track_head(&c->track) : NULL;
}

static inline bool answers_injected(const struct conn *c, char type)
{
    const struct track_req *head = answering(c);
    return head && head->injected && !is_async(type);
}

/* While the proxy holds a savepoint or an error, it follows every reply. */
static inline bool translating(const struct conn *c)
{
    return c->guard != GUARD_NONE || c->held_error;
}

/* Client input waits while the proxy needs to see what the server says
 * before the client's next message may go: the catalog, the session's
 * identity, or how a guarded Query ended, or a rollback to come. (While a
 * 23505 awaits the client's next message, that message is what settles
 * it.) Not for the end of a batch while the server copies from the
 * client: it ignores the batch's Sync then, and waits for the data. */
static inline bool client_held(const struct conn *c)
{
    return c->catalog || c->identity == IDENTITY_ASKING ||
           (c->batch_ending && !c->track.copy_in) ||
           (c->guard != GUARD_NONE && c->guard != GUARD_AWAIT_SYNC &&
            c->guard != GUARD_ABORT_AWAIT_SYNC);
}

/* Records a client message in the request queue. */
static inline bool track_client(struct conn *c, char type, struct note *note)
{
    if (track_client_msg(&c->track, type, note))
        return true;
    fail_oom(c);
    return false;
}

/* Records a server reply in the request queue. A ReadyForQuery that finds
 * the queue wrong means the proxy misread the client's requests: said the
 * first time on a connection (the rest are counted). */
static inline void track_reply(struct conn *c, char type, char status)
{
    uint64_t before = c->track.desyncs;
    bool copying = c->track.copy_in;

    track_server_msg(&c->track, type, status);
    /* A copy from the client read the Sync that ended its batch (the
     * server ignores Sync then): the batch now ends at the Sync the client
     * sends behind the copy, which must not wait for the swallowed one's
     * ReadyForQuery. */
    if (copying && !c->track.copy_in && !track_sync_pending(&c->track))
        c->batch_ending = false;
    if (before == 0 && c->track.desyncs != 0)
        conn_log(LOG_WARNING, c, "the request queue was out of step with the server's "
                 "replies at a ReadyForQuery: resynchronised (further ones are counted)");
}

/* Records a message the proxy does not take. */
static inline bool track_plain(struct conn *c, enum flow d, char type, char status)
{
    if (c->state != CONN_ACTIVE)
        return true;
    if (d == FLOW_TO_SERVER)
        return track_client(c, type, NULL);
    track_reply(c, type, status);
    return true;
}

#endif
