/* conn_client: the client messages the proxy reads (see conn_int.h). */
#include "conn_int.h"

#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "catalog.h"
#include "params.h"
#include "rewrite.h"
#include "rules.h"

/* The statement and portal name of the proxy's own extended statements. */
#define GUARD_NAME "idemproxy_guard"
/* ... of the DEALLOCATE of a client's statement (drop_statement), apart:
 * one that failed leaves its statement behind. */
#define DROP_NAME "idemproxy_drop"

/* ---- notes on requests ------------------------------------------------- */

void free_note(void *owner, void *note)
{
    struct conn *c = owner;
    struct note *n = note;

    /* Gone from the queue without ParseComplete (refused, or skipped after
     * an error): nothing was created. */
    if (n->creates)
        stmtcache_created(n->creates, n->number, false);
    /* Answered, not skipped: the redefinition took place. */
    if (n->unsure)
        unnamed_settle(c);
    if (n->displaced)
        session_entry_free(&c->session, n->displaced);
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

/* Marks note as a message that changes what statement name holds (a Parse
 * or Close of it), and has it take what the session kept of the name
 * until the message is answered: refused or skipped, it comes back
 * (restore_statements). Not the unnamed statement's when nothing before
 * the message can make the server skip it: PostgreSQL drops that one
 * before it parses, even a text it then refuses. */
static void note_displace(struct conn *c, struct note *note, const char *name)
{
    note->chained = true;
    if (name[0] != '\0' || track_pending(&c->track) > 0)
        note->displaced = session_detach(&c->session, name);
}

/* A note of its own for such a message; NULL when out of memory. */
static struct note *note_displacing(struct conn *c, const char *name)
{
    struct note *note = note_new(NULL, name);

    if (note)
        note_displace(c, note, name);
    return note;
}

const struct note *note_of(const struct track_req *r)
{
    return r && !r->injected ? r->note : NULL;
}

bool answers_creation(const struct conn *c)
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
static struct decision *decide_statement(struct conn *c, bool parse, const char *text,
                                         size_t len)
{
    if (!c->charset_ok || c->scs_off || !identity_holds(c)) {
        /* Left unread only if it may have concerned a registered table. */
        scope_count_reason(c->scope, scope_may_decide(c->scope, text, len) ? RR_SESSION
                                                                           : RR_NOT_INSERT);
        return NULL;
    }
    bool fresh;
    struct decision *d = scope_decide(c->scope, text, len, parse, &fresh);
    if (d && d->not_utf8 && c->charset_utf8) {
        /* The server refuses it and shows the bytes from the first bad
         * one on: the client's own, not a spliced text or values. */
        decision_unref(d);
        scope_count_reason(c->scope, RR_PARSE_ERROR);
        return NULL;
    }
    scope_count(c->scope, d);
    if (d && fresh)
        log_decision(c, d, text, len);
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
    unsigned effects;     /* its effects on the identity (follow_effects) */
};

static bool drops_name(const struct rewrite_drops *drops, const char *name)
{
    for (size_t i = 0; !drops->all && i < drops->names.count; i++)
        if (strcmp(drops->names.names[i], name) == 0)
            return true;
    return drops->all;
}

/* SQL that drops prepared statements (DEALLOCATE, DISCARD ALL): what it
 * names is forgotten as it goes, all of them for ALL. One of the proxy's
 * own (its name is the client's to use too: README) goes with every
 * other the cache holds, to be created again under new names. */
static void forget_dropped(struct conn *c, unsigned effects, const char *text)
{
    struct rewrite_drops drops;
    const struct track_req *r;

    if (!(effects & REWRITE_DROPS_STATEMENTS))
        return;
    rewrite_dropped_statements(text, &drops);
    if (drops.all) {
        session_clear(&c->session);
        stmtcache_forget_all(&c->stmts);
    }
    for (size_t i = 0; !drops.all && i < drops.names.count; i++) {
        const char *name = drops.names.names[i];
        session_forget(&c->session, name);
        if (strncmp(name, STMTCACHE_PREFIX, strlen(STMTCACHE_PREFIX)) == 0)
            stmtcache_forget_all(&c->stmts);
    }
    /* What a request still under way displaced comes back if the server
     * refuses or skips that request (restore_statements): the drop comes
     * after it, so what it drops does not come back. */
    for (size_t i = 0; (r = track_at(&c->track, i)); i++) {
        struct note *n = r->injected ? NULL : r->note;
        if (n && n->chained && n->displaced && drops_name(&drops, n->defines)) {
            session_entry_free(&c->session, n->displaced);
            n->displaced = NULL;
        }
    }
    rewrite_drops_free(&drops);
}

/* A Query that may change the session's identity (or undo the LOCAL
 * settings its answer was given under) does so before its own INSERTs
 * run: they are decided with the identity unsettled. A Parse runs
 * nothing; its statement's Executes will. */
static void decide_message(struct conn *c, const uint8_t *msg, size_t total,
                           struct statement *st)
{
    char type = (char)msg[0];

    memset(st, 0, sizeof(*st));
    st->body = msg + PG_HEAD_LEN;
    st->len = total - PG_HEAD_LEN;
    st->table = -1;
    if (!pg_statement_text(type, st->body, st->len, &st->at, &st->text_len))
        return; /* malformed: the server will say so */
    const char *text = (const char *)st->body + st->at;
    unsigned effects = rewrite_effects(text, st->text_len);
    st->effects = effects & (REWRITE_CHANGES_IDENTITY | REWRITE_ENDS_LOCAL |
                             REWRITE_IDENTITY_LOCAL | REWRITE_BEGINS_BLOCK);
    if (type == 'Q')
        follow_effects(c, st->effects);
    st->d = decide_statement(c, type == 'P', text, st->text_len);
    for (size_t i = 0; st->d && i < st->d->result.nstmts && !st->insert; i++) {
        if (st->d->result.stmts[i].reason != RR_NESTED) {
            st->insert = &st->d->result.stmts[i];
            st->table = (int)st->insert->target;
        }
    }
    st->replaced = st->d && st->d->result.text;
    forget_dropped(c, effects, text);
}

/* The hash of the text a Parse of st sends: the rewritten one, or the
 * client's. Never 0, which session_sent keeps for unknown. */
static uint64_t sent_text_hash(const struct statement *st)
{
    const struct rewrite_result *r = st->replaced ? &st->d->result : NULL;
    uint64_t h = r ? XXH3_64bits(r->text, r->text_len)
                   : XXH3_64bits(st->body + st->at, st->text_len);

    return h ? h : 1;
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

/* Writes a Describe ('D') or a Close ('C') of statement name. */
static void write_on_statement(struct sink *k, char type, const char *name)
{
    size_t name_len = strlen(name) + 1;
    uint8_t head[PG_HEAD_LEN + 1] = { (uint8_t)type, 0, 0, 0, 0, 'S' };

    pg_put_u32(head + 1, (uint32_t)(4 + 1 + name_len));
    sink_write(k, head, sizeof(head));
    evbuffer_add(k->out, name, name_len);
}

/* Writes the client's message of total bytes, of which msg holds the
 * first len (all of them, or the first bytes of one too large to read,
 * whose rest then follows as it is), with the cached statement's name in
 * place of the unnamed statement's "" at body offset at; the request's
 * note remembers whose name, which the server's errors about it will
 * use. */
static void write_renamed(struct conn *c, struct sink *k, const uint8_t *msg, size_t len,
                          size_t total, size_t at, struct note *note)
{
    const char *name = stmtcache_name(c->stmts.unnamed);
    uint8_t head[PG_HEAD_LEN] = { msg[0] };
    size_t name_len = strlen(name);

    pg_put_u32(head + 1, (uint32_t)(total - 1 + name_len));
    sink_write(k, head, sizeof(head));
    evbuffer_add(k->out, msg + PG_HEAD_LEN, at);
    evbuffer_add(k->out, name, name_len);
    evbuffer_add(k->out, msg + PG_HEAD_LEN + at, len - PG_HEAD_LEN - at);
    note->renamed = stmtcache_number(c->stmts.unnamed);
}

/* Whether a Parse body's name and text mean the same whatever the
 * session's client_encoding and standard_conforming_strings. */
static bool parse_neutral(const uint8_t *body, size_t len)
{
    size_t at, text_len;

    return pg_statement_text('P', body, len, &at, &text_len) &&
           rewrite_text_neutral(body, at + text_len);
}

/* The cache's entry for a statement text and its parameter types; NULL
 * when the cache cannot hold it. The cache knows a text by its bytes, but
 * the server parsed it under the client_encoding and
 * standard_conforming_strings of its time: while they are not the
 * login's (text_settings_moved), a text with a byte beyond ASCII or a
 * backslash is neither found (the entry may mean otherwise now) nor
 * cached. */
static struct stmt_entry *cache_entry_for(struct conn *c, const char *text, size_t text_len,
                                          const uint8_t *types, size_t types_len)
{
    if (text_settings_moved(c) && !rewrite_text_neutral((const uint8_t *)text, text_len))
        return NULL;
    return stmtcache_get(&c->stmts, text, text_len, types, types_len);
}

/* The cache's entry for a Parse's rewritten text and parameter types. */
static struct stmt_entry *cached_entry(struct conn *c, const struct statement *st)
{
    const struct rewrite_result *r = &st->d->result;
    size_t types_at = st->at + st->text_len + 1;

    return cache_entry_for(c, r->text, r->text_len, st->body + types_at, st->len - types_at);
}

/* Prepares entry e on the server under a new name, as a request the queue
 * follows with the client's: its ParseComplete is the proxy's, its error
 * stands for the client's statement (positions mapped through d, whose
 * reference it takes, onto the Query with constants whose statement with
 * parameters e is; NULL for none). False when out of memory. */
static bool send_creation(struct conn *c, struct sink *k, struct stmt_entry *e,
                          struct decision *d)
{
    struct note *creating = note_new(d, NULL);

    if (!creating)
        return false;
    creating->silent = true;
    creating->parameterised = d != NULL;
    creating->creates = e;
    creating->number = stmtcache_create(&c->stmts, e);
    write_parse(k, stmtcache_name(e), e);
    return track_client_msg(&c->track, 'P', creating);
}

/* The client parses a rewritten INSERT as its unnamed statement. Once the
 * server holds the cached copy, the Parse that goes is of the empty text:
 * its ParseComplete is what the client's own would have been, and the
 * client's Binds name the copy. Only with nothing outstanding, so that the
 * empty Parse is neither skipped nor refused, and whatever the client sends
 * next, past a Sync too, finds its unnamed statement where the proxy says.
 * Not in a failed block either: the empty text parses there, the client's
 * would not. False when the Parse must go as it is. */
static bool parse_cached(struct conn *c, struct sink *k, const struct statement *st,
                         struct note *note)
{
    static const uint8_t empty_parse[] = { 'P', 0, 0, 0, 8, 0, 0, 0, 0 };

    if (track_pending(&c->track) != 0 || c->track.txn_status == 'E')
        return false;
    struct stmt_entry *e = cached_entry(c, st);
    if (!e || stmtcache_state(e) != STMT_READY)
        return false;
    sink_write(k, empty_parse, sizeof(empty_parse));
    note->maps = e;
    c->stmts.unnamed = e;
    return true;
}

/* Behind a client's Parse of a rewritten INSERT that went as it is, the
 * proxy prepares the same text as a cached statement of its own, for the
 * next Parse of it (parse_cached). Behind, not ahead: a text that fails
 * fails the client's Parse, with all its effects (the unnamed statement
 * is gone), and the server skips the proxy's. False when out of memory. */
static bool create_cached(struct conn *c, struct sink *k, const struct statement *st)
{
    struct stmt_entry *e = cached_entry(c, st);

    return !e || stmtcache_state(e) != STMT_ABSENT || send_creation(c, k, e, NULL);
}

/* The client's Parse of an INSERT into a registered table as its unnamed
 * statement: kept, with the rules' version that decided its text, to be
 * prepared again when that changes (see reprepare); without memory, not. */
static void keep_unnamed_parse(struct conn *c, const struct statement *st)
{
    if (st->len > c->unnamed_parse_cap) {
        uint8_t *grown = realloc(c->unnamed_parse, st->len);
        if (!grown) {
            c->unnamed_parse_len = 0;
            return;
        }
        c->unnamed_parse = grown;
        c->unnamed_parse_cap = st->len;
    }
    memcpy(c->unnamed_parse, st->body, st->len);
    c->unnamed_parse_len = st->len;
    c->unnamed_version = rules_version(c);
}

/* The kept Parse and the displaced one trade places (and buffers). */
static void swap_unnamed_parse(struct conn *c)
{
    uint8_t *buf = c->unnamed_parse;
    size_t len = c->unnamed_parse_len, cap = c->unnamed_parse_cap;
    uint64_t version = c->unnamed_version;

    c->unnamed_parse = c->displaced_parse;
    c->unnamed_parse_len = c->displaced_parse_len;
    c->unnamed_parse_cap = c->displaced_parse_cap;
    c->unnamed_version = c->displaced_version;
    c->displaced_parse = buf;
    c->displaced_parse_len = len;
    c->displaced_parse_cap = cap;
    c->displaced_version = version;
}

/* A Query, a Parse or a Close of the unnamed statement: it is the server's
 * own again, and no longer the kept Parse's (unless the server skips the
 * message, which it does after an error before the batch's Sync). */
bool unnamed_redefined(struct conn *c, struct note **note)
{
    if (c->track.skip_to_sync || (!c->stmts.unnamed && !c->unnamed_parse_len))
        return true;
    /* Nothing ahead of it in its batch is unanswered, or it has no note to
     * tell when it is answered, or an earlier one is unsure already (a
     * skip would take both): what was kept goes. */
    if (!note || !c->track.batch_open || track_pending(&c->track) == 0 || unnamed_unsure(c)) {
        c->stmts.unnamed = NULL;
        c->unnamed_parse_len = 0;
        return true;
    }
    if (!*note && !(*note = note_new(NULL, NULL)))
        return false;
    (*note)->unsure = true;
    c->displaced_unnamed = c->stmts.unnamed;
    c->stmts.unnamed = NULL;
    swap_unnamed_parse(c);
    c->unnamed_parse_len = 0;
    return true;
}

void unnamed_settle(struct conn *c)
{
    c->displaced_unnamed = NULL;
    c->displaced_parse_len = 0;
}

void unnamed_restore(struct conn *c)
{
    c->stmts.unnamed = c->displaced_unnamed;
    swap_unnamed_parse(c);
    unnamed_settle(c);
}

/* The server is to read a message the proxy cannot rename (too large to
 * hold): its unnamed statement gets the cached text first, so that the
 * message means what the client meant either way. Unless the text could
 * mean otherwise parsed again (text_settings_moved): the unnamed statement
 * is closed instead, and a Bind of it fails (26000) rather than write
 * other values than the client's. */
void restore_unnamed(struct conn *c, struct sink *k)
{
    size_t text_len;
    const char *text = stmtcache_text(c->stmts.unnamed, &text_len);
    bool same_meaning =
        !text_settings_moved(c) || rewrite_text_neutral((const uint8_t *)text, text_len);

    if (c->track.copy_in || !track_inject(&c->track, same_meaning ? 'P' : 'C', INJECT_UNNAMED)) {
        conn_log(LOG_ERROR, c, "could not restore the unnamed statement before an unread "
                 "message");
    } else if (same_meaning) {
        write_parse(k, "", c->stmts.unnamed);
    } else {
        write_on_statement(k, 'C', "");
        conn_log(LOG_WARNING, c, "the unnamed statement is closed before an unread message: "
                 "its text may mean otherwise since the session changed client_encoding or "
                 "standard_conforming_strings");
    }
    c->stmts.unnamed = NULL;
}

/* ---- the proxy's own statements ---------------------------------------- */

/* A request of the proxy's own goes into k when given, behind what the
 * relay pass has not moved yet, else straight to the server. */
static void write_own(struct conn *c, struct sink *k, const uint8_t *buf, size_t len)
{
    if (k)
        sink_write(k, buf, len);
    else
        send_to(c->server, buf, len);
}

/* Sends sql as a Query of the proxy's own. Only between the client's
 * requests at the simple-protocol level. */
bool inject_query(struct conn *c, struct sink *k, const char *sql, enum inject tag)
{
    uint8_t buf[256];
    size_t need = pg_build_query(buf, sizeof(buf), sql);

    if (need > sizeof(buf) || !track_inject(&c->track, 'Q', tag))
        return false;
    write_own(c, k, buf, need);
    return true;
}

/* The requests of one extended run of the proxy's (pg_build_extended_run). */
bool track_extended_run(struct conn *c, enum inject tag)
{
    for (const char *m = PG_EXTENDED_RUN_MESSAGES; *m; m++)
        if (!track_inject(&c->track, *m, tag))
            return false;
    return true;
}

/* Runs sql inside the client's extended batch, on name, a statement and
 * portal name of the proxy's own. */
static bool inject_extended_on(struct conn *c, struct sink *k, const char *name,
                               const char *sql, enum inject tag)
{
    uint8_t buf[512];
    size_t need = pg_build_extended_run(buf, sizeof(buf), name, sql);

    if (need > sizeof(buf) || !track_extended_run(c, tag))
        return false;
    write_own(c, k, buf, need);
    return true;
}

/* The same on the guard's name. */
static bool inject_extended(struct conn *c, struct sink *k, const char *sql, enum inject tag)
{
    return inject_extended_on(c, k, GUARD_NAME, sql, tag);
}

/* Rolls the block back to the proxy's savepoint and releases it, between
 * the client's requests, and with fail runs the failing statement behind
 * (TRANSLATE_SQL_FAIL). After an extended batch the client's unnamed
 * statement may still be bound by its next one, so there the statements go
 * as runs of the proxy's own and a Sync: a Query would drop it. After the
 * client's Query it is gone anyway, and one Query does. */
static bool inject_undo(struct conn *c, bool after_batch, bool fail, enum inject tag)
{
    static const uint8_t sync[] = { 'S', 0, 0, 0, 4 };

    if (!after_batch)
        return inject_query(c, NULL, fail ? TRANSLATE_SQL_ABORT : TRANSLATE_SQL_ROLLBACK, tag);
    if (!inject_extended(c, NULL, TRANSLATE_SQL_ROLLBACK_TO, tag) ||
        !inject_extended(c, NULL, TRANSLATE_SQL_RELEASE, tag) ||
        (fail && !inject_extended(c, NULL, TRANSLATE_SQL_FAIL, tag)) ||
        !track_inject(&c->track, 'S', tag))
        return false;
    write_own(c, NULL, sync, sizeof(sync));
    return true;
}

bool inject_rollback(struct conn *c, bool after_batch)
{
    return inject_undo(c, after_batch, false, INJECT_ROLLBACK);
}

bool inject_abort(struct conn *c, bool after_batch)
{
    return inject_undo(c, after_batch, true, INJECT_ABORT);
}

/* ---- client messages the proxy reads ----------------------------------- */

const char *read_name(const uint8_t *body, size_t len, size_t *at)
{
    const uint8_t *end = *at < len ? memchr(body + *at, '\0', len - *at) : NULL;

    if (!end)
        return NULL;
    const char *name = (const char *)body + *at;
    *at = (size_t)(end - body) + 1;
    return name;
}

const char *named_statement(const uint8_t *msg, size_t total)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN, at = 0;

    if (msg[0] == 'B')
        return read_name(body, len, &at) ? read_name(body, len, &at) : NULL;
    if (msg[0] == 'D' && len > 0 && body[0] == 'S') {
        at = 1;
        return read_name(body, len, &at);
    }
    return NULL;
}

/* The block's status once everything sent to the server is answered: as
 * the server last said, when nothing is outstanding; else as the last
 * request says (note->status_after), if it is the client's Query or Sync;
 * 0 when that cannot be known. */
static char status_after_pending(const struct conn *c)
{
    size_t n = track_pending(&c->track);

    if (n == 0)
        return c->track.txn_status;
    const struct note *note = note_of(track_at(&c->track, n - 1));
    return note ? note->status_after : 0;
}

/* The extended batch begins with its first message after a Sync: what the
 * session's transaction status is then is only certain when nothing is
 * outstanding, or what is outstanding says it (status_after_pending). */
static void batch_message(struct conn *c)
{
    if (!c->batch_open) {
        c->batch_open = true;
        c->batch_status = c->batch_from = status_after_pending(c);
        c->batch_executes = 0;
        c->bound_stays = false;
    }
}

/* What a Query leaves the session in, as far as can be told before it is
 * answered, the status ahead of it being before: in a block, when it
 * surely opens one (it parses: a text that does not runs nothing), or when
 * one was open and none of its statements may end it (an error only fails
 * it). */
static char query_status_after(char before, const struct statement *st)
{
    if (before == 'T')
        return st->effects & REWRITE_ENDS_LOCAL ? 0 : 'T';
    return before == 'I' && (st->effects & REWRITE_BEGINS_BLOCK) &&
                   rewrite_opens_block((const char *)st->body + st->at, st->text_len)
               ? 'T'
               : 0;
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
        free_note(c, note);
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
 * unnamed portal goes with the commit. Not while the server skips to the
 * client's Sync after an error: it skips the Query, and the proxy's Sync
 * would end the skipping early. */
static enum prepared prepare_query(struct conn *c, struct sink *k, const struct statement *st,
                                   struct note *note)
{
    static const uint8_t execute_sync[] = { 'E', 0, 0, 0, 9, 0, 0, 0, 0, 0, 'S', 0, 0, 0, 4 };
    const struct params_stmt *ps = decision_params(st->d);
    struct params *p = &c->worker->query_params;

    /* The server converts a statement's text and its values apart: a
     * character it cannot convert outside the constants would be met
     * before one inside them, not in the order of the Query's text. */
    if (c->stmts.max == 0 || !ps || (!ps->ascii && c->charset_converts) || !st->insert ||
        st->insert->returning || c->track.txn_status != 'I' || track_pending(&c->track) != 0 ||
        c->track.skip_to_sync ||
        !params_bind(ps, st->d->consts, st->d->nconsts, (const char *)st->body + st->at,
                     st->text_len, p))
        return PREPARED_NOT;
    struct stmt_entry *e = cache_entry_for(c, ps->text, ps->text_len, p->types, p->types_len);
    if (!e || stmtcache_state(e) == STMT_PENDING)
        return PREPARED_NOT;

    if (!c->unnamed_closed) {
        if (!track_inject(&c->track, 'C', INJECT_PREPARED))
            goto failed;
        write_on_statement(k, 'C', "");
        c->unnamed_closed = true;
    }
    if (stmtcache_state(e) == STMT_ABSENT) {
        /* Its errors' positions are mapped back through the decision. */
        st->d->refs++;
        if (!send_creation(c, k, e, st->d))
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
    note->parameterised = true;
    note->req.extended = true;
    note->first_run = true;
    if (!track_client_msg(&c->track, 'E', note) || !track_client_msg(&c->track, 'S', NULL)) {
        fail_oom(c);
        return PREPARED_FAILED;
    }
    return PREPARED_SENT;
failed:
    free_note(c, note);
    fail_oom(c);
    return PREPARED_FAILED;
}

static enum taken take_query(struct conn *c, const uint8_t *msg, size_t total, struct sink *k)
{
    struct statement st;
    struct note *note = NULL;

    if (ask_in_block(c, msg, total))
        return TAKEN_HELD;
    char before = c->batch_open ? c->batch_status : status_after_pending(c);
    decide_message(c, msg, total, &st);
    char after = query_status_after(before, &st);
    /* A Query in the middle of a batch ends its implicit transaction, and
     * drops the unnamed statement. After an error earlier in the batch the
     * server skips it with the rest of the batch, so the rest of the batch
     * may take the status it leaves (pgjdbc's autosave sends its SAVEPOINT
     * so, behind the BEGIN); the batch's Sync still says it only for a
     * batch begun in the block (take_sync). */
    if (c->batch_open) {
        c->batch_status = after;
        after = 0;
    }
    if (!unnamed_redefined(c, &note)) {
        decision_unref(st.d);
        fail_oom(c);
        return TAKEN_CLOSED;
    }
    /* A batch sent behind it knows its status: Npgsql sends a BEGIN so
     * ahead of a block's first batch, a pipelining client its statements
     * inside one. */
    if (after) {
        if (!note && !(note = note_new(NULL, NULL))) {
            decision_unref(st.d);
            fail_oom(c);
            return TAKEN_CLOSED;
        }
        note->status_after = after;
    }
    if (st.table < 0 && !st.replaced) {
        decision_unref(st.d);
        return track_client(c, 'Q', note) ? TAKEN_FORWARD : TAKEN_CLOSED;
    }
    if (note)
        note->decision = st.d;
    else if (!(note = note_new(st.d, NULL))) {
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
    /* The status is certain when nothing is outstanding and no batch is
     * open: after an extended message failed, the server skips the Query
     * with the rest of the batch, and the proxy's SAVEPOINT with it. */
    if (translate_guard(&note->req, track_quiet(&c->track))) {
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

    if (ask_in_block(c, msg, total))
        return TAKEN_HELD;
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
    /* A named statement's Parse is kept: the rules' verdict on its text
     * may change while the statement lives (see reprepare). One the
     * server is skipping leaves the name as it was; so does one it may
     * yet refuse (a named statement not closed first) or skip (behind
     * requests of its batch that may fail), if that happens. */
    bool keep = rule && name && name[0] != '\0';
    if (note && name && !c->track.skip_to_sync)
        note_displace(c, note, name);
    if (!note || (name && !c->track.skip_to_sync &&
                  !session_parse(&c->session, name, rule ? rule->schema : NULL,
                                 rule ? rule->name : NULL, st.effects,
                                 keep ? st.body : NULL, st.len, keep ? rules_version(c) : 0))) {
        if (note)
            free_note(c, note);
        fail_oom(c);
        return TAKEN_CLOSED;
    }
    if (keep)
        session_sent(&c->session, name, sent_text_hash(&st));
    bool unnamed = name && name[0] == '\0';
    /* Kept under other settings than the login's: from now on, no kept
     * text that could mean otherwise is parsed again. */
    if ((keep || (unnamed && rule)) && c->settings_apart && !parse_neutral(st.body, st.len))
        c->parsed_apart = true;
    if (unnamed && !unnamed_redefined(c, &note)) {
        fail_oom(c);
        return TAKEN_CLOSED;
    }
    bool cacheable = st.replaced && unnamed && rule;
    bool cached = cacheable && parse_cached(c, k, &st, note);
    if (!cached && st.replaced)
        write_rewritten(k, 'P', &st);
    if (unnamed && rule)
        keep_unnamed_parse(c, &st);
    if (!track_client(c, 'P', note))
        return TAKEN_CLOSED;
    if (cacheable && !cached && !create_cached(c, k, &st)) {
        fail_oom(c);
        return TAKEN_CLOSED;
    }
    return st.replaced ? TAKEN_REPLACED : TAKEN_FORWARD;
}

/* Drops the client's statement name, ahead of its Parse again. A named
 * one by SQL DEALLOCATE: the server refuses it, and skips the rest up to
 * the Sync, when the statement is gone (SQL the proxy could not read
 * dropped it, in a function say), so that it is not brought back, as the
 * client's Bind would have failed; a Describe would do the same, but
 * analyses a statement that returns rows again, which fails where the
 * text it was prepared with no longer analyses (on another search_path).
 * The proxy's run that fails leaves its own statement: it is closed first.
 * The unnamed statement, which only messages the proxy reads can drop, and
 * a name SQL cannot spell as the protocol does, are closed instead. False
 * when out of memory. */
static bool drop_statement(struct conn *c, struct sink *k, const char *name, enum inject tag)
{
    char sql[160];

    if (!track_inject(&c->track, 'C', tag))
        return false;
    if (!rewrite_build_deallocate(sql, sizeof(sql), name, !c->charset_ok)) {
        write_on_statement(k, 'C', name);
        return true;
    }
    write_on_statement(k, 'C', DROP_NAME);
    return inject_extended_on(c, k, DROP_NAME, sql, tag);
}

/* Drops statement name and prepares it again from the client's Parse
 * body, its text decided by the rules in force now. Ahead of a Bind (tag
 * INJECT_REPREPARE) the Bind's batch carries it; on its own
 * (INJECT_REFRESH) a Sync of the proxy's ends it, so that a failure skips
 * nothing of the client's. False when out of memory. */
static bool prepare_again(struct conn *c, struct sink *k, const char *name, const uint8_t *body,
                          size_t len, enum inject tag)
{
    static const uint8_t sync[] = { 'S', 0, 0, 0, 4 };
    size_t total = PG_HEAD_LEN + len;
    struct statement st;

    /* The server parsed the client's text under the settings of its time;
     * parsed again under others, a string with a backslash, or a byte
     * beyond ASCII, may mean otherwise. */
    if (text_settings_moved(c) && !parse_neutral(body, len)) {
        conn_log(LOG_DEBUG, c, "statement \"%s\" stays as prepared: its text may mean "
                 "otherwise since the session changed client_encoding or "
                 "standard_conforming_strings", name);
        return true;
    }
    uint8_t *parse = malloc(total);
    if (!parse)
        return false;
    parse[0] = 'P';
    pg_put_u32(parse + 1, (uint32_t)(4 + len));
    memcpy(parse + PG_HEAD_LEN, body, len);
    decide_message(c, parse, total, &st);
    /* The server revalidates a statement's names itself: the same text
     * again would change nothing. The unnamed one's text is not kept. */
    bool named = name[0] != '\0';
    uint64_t sent = named ? sent_text_hash(&st) : 0;
    if (named && session_holds(&c->session, name, sent)) {
        conn_log(LOG_DEBUG, c, "statement \"%s\" stays as prepared: the rules now in force "
                 "send the same text", name);
        decision_unref(st.d);
        free(parse);
        return true;
    }
    bool ok = drop_statement(c, k, name, tag) && track_inject(&c->track, 'P', tag) &&
              (tag != INJECT_REFRESH || track_inject(&c->track, 'S', tag));
    if (ok) {
        if (st.replaced)
            write_rewritten(k, 'P', &st);
        else
            evbuffer_add(k->out, parse, total);
        if (tag == INJECT_REFRESH)
            evbuffer_add(k->out, sync, sizeof(sync));
        conn_log(LOG_DEBUG, c, "statement \"%s\" prepared again for the rules now in force",
                 name);
        if (named)
            session_sent(&c->session, name, sent);
    }
    decision_unref(st.d);
    free(parse);
    return ok;
}

/* A statement of the client's prepared under rules that have changed since
 * (the catalog check withdrew or granted the rewrite, a reload, or an
 * answer about the session's identity) holds a text those rules would not
 * send: the proxy drops it and prepares the client's text again,
 * rewritten or not as the rules say now, ahead of its next Bind or
 * Describe or as soon as the identity is known (reprepare_all). A named
 * statement's Parse is kept by the session, the unnamed one's by the
 * connection (keep_unnamed_parse). Only when nothing is outstanding (nor
 * skipped to a Sync still to come) and no failed block is open, so that
 * nothing before it can make the server skip the Parse after the drop;
 * otherwise a later Bind or Describe does it. False when out of memory. */
static bool may_prepare_again(const struct conn *c)
{
    return c->scope && track_pending(&c->track) == 0 && !c->track.skip_to_sync &&
           c->track.txn_status != 'E';
}

static bool reprepare(struct conn *c, struct sink *k, const char *statement, enum inject tag)
{
    const uint8_t *body;
    size_t len;

    if (!may_prepare_again(c))
        return true;
    uint64_t version = rules_version(c);
    if (statement[0] != '\0') {
        body = session_outdated(&c->session, statement, version, &len);
        return !body || prepare_again(c, k, statement, body, len, tag);
    }
    if (!c->unnamed_parse_len || c->unnamed_version == version)
        return true;
    if (!prepare_again(c, k, "", c->unnamed_parse, c->unnamed_parse_len, tag))
        return false;
    c->stmts.unnamed = NULL;
    c->unnamed_version = version;
    return true;
}

bool reprepare_all(struct conn *c)
{
    struct sink k = { NULL, sock_output(c->server), 0 };
    const uint8_t *body;
    const char *name;
    size_t len;

    if (!may_prepare_again(c))
        return true;
    uint64_t version = rules_version(c);
    while ((body = session_next_outdated(&c->session, version, &name, &len)))
        if (!prepare_again(c, &k, name, body, len, INJECT_REFRESH))
            return false;
    return reprepare(c, &k, "", INJECT_REFRESH);
}

/* Whether statement may hold an INSERT into a registered table, now or
 * once the requests under way are answered: a redefinition of it the
 * server may yet refuse or skip gives back what it displaced
 * (restore_statements, unnamed_restore). */
static bool may_insert(const struct conn *c, const char *statement)
{
    const struct track_req *r;

    if (statement[0] == '\0')
        return c->unnamed_parse_len > 0 || c->stmts.unnamed || unnamed_unsure(c);
    if (session_inserts(&c->session, statement))
        return true;
    for (size_t i = 0; (r = track_at(&c->track, i)); i++) {
        const struct note *note = r->injected ? NULL : r->note;
        if (note && note->displaced && note->defines && strcmp(note->defines, statement) == 0)
            return true;
    }
    return false;
}

/* Whether a Bind or Describe of statement waits for the requests before
 * it to be answered: the statement inserts into a registered table (the
 * proxy may have rewritten it), behind a change of the session's role or
 * search_path the server has not answered yet. Taken now, it would run or
 * be described in the form decided before the change, on the new path;
 * once all before it is answered, the session is asked (follow_identity,
 * or ask_in_block) and the statement prepared again if its text differs
 * now (reprepare), in the client's own text where the session's
 * client_encoding or standard_conforming_strings keep the rewrite away.
 * Only a message that begins a batch waits, so that what waits is whole
 * requests; and not while the server copies what the client has yet to
 * send, which would never come. */
static bool awaits_identity(struct conn *c, const char *statement)
{
    c->await_quiet = c->identity == IDENTITY_UNKNOWN && !conn_quiet(c) &&
                     !c->track.batch_open && !track_copy_awaits_client(&c->track) &&
                     may_insert(c, statement);
    return c->await_quiet;
}

/* Whether a Bind or Describe (msg) of statement waits for an answer about
 * the session's identity: asked now inside a block, or behind a change. */
static bool held_for_identity(struct conn *c, const uint8_t *msg, size_t total,
                              const char *statement)
{
    return statement && (ask_in_block(c, msg, total) || awaits_identity(c, statement));
}

/* A Bind, of which msg holds the first len of its total bytes: all of
 * them, or the first bytes of one too large to read, its names among
 * them. *renamed: those bytes went out anew (write_renamed), for the
 * unnamed statement standing for a cached one. */
static enum taken follow_bind(struct conn *c, struct sink *k, const uint8_t *msg, size_t len,
                              size_t total, bool *renamed)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t body_len = len - PG_HEAD_LEN, at = 0;
    const char *portal = read_name(body, body_len, &at);
    size_t statement_at = at;
    const char *statement = portal ? read_name(body, body_len, &at) : NULL;

    *renamed = false;
    if (held_for_identity(c, msg, len, statement))
        return TAKEN_HELD;
    batch_message(c);
    if (!statement)
        return track_client(c, 'B', NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
    /* A Bind the server skips (it is skipping to Sync after an error)
     * leaves the portal as it was, which the proxy cannot know. */
    if (c->track.skip_to_sync) {
        session_close(&c->session, 'P', portal);
        return track_client(c, 'B', NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
    }
    /* Only inside a block is it asked (take_execute): outside one, the
     * Bind of every autocommitted statement looks nothing up. */
    unsigned effects;
    c->bound_stays = c->batch_status == 'T' && strlen(portal) < sizeof(c->bound_portal) &&
                     session_effects(&c->session, statement, &effects) &&
                     !(effects & REWRITE_ENDS_LOCAL);
    if (c->bound_stays)
        strcpy(c->bound_portal, portal);
    struct note *note = note_new(NULL, portal);
    if (!note || !session_bind(&c->session, portal, statement) ||
        !reprepare(c, k, statement, INJECT_REPREPARE)) {
        if (note)
            free_note(c, note);
        fail_oom(c);
        return TAKEN_CLOSED;
    }
    *renamed = statement[0] == '\0' && c->stmts.unnamed;
    if (*renamed)
        write_renamed(c, k, msg, len, total, statement_at, note);
    return track_client(c, 'B', note) ? TAKEN_FORWARD : TAKEN_CLOSED;
}

enum taken take_unread_bind(struct conn *c, struct sink *k, const uint8_t *first, size_t len,
                            size_t total, size_t *consumed)
{
    bool renamed;
    enum taken taken = follow_bind(c, k, first, len, total, &renamed);

    *consumed = renamed ? len : 0;
    return taken;
}

static enum taken take_bind(struct conn *c, const uint8_t *msg, size_t total, struct sink *k)
{
    bool renamed;
    enum taken taken = follow_bind(c, k, msg, total, total, &renamed);

    return taken == TAKEN_FORWARD && renamed ? TAKEN_REPLACED : taken;
}

const char *unread_parse_name(const uint8_t *first, size_t len, unsigned *effects)
{
    const uint8_t *body = first + PG_HEAD_LEN;
    size_t body_len = len - PG_HEAD_LEN, at = 0;
    const char *name = read_name(body, body_len, &at);

    if (!name)
        return NULL;
    const char *text = (const char *)body + at;
    const char *end = memchr(text, '\0', body_len - at);
    *effects = end ? rewrite_effects(text, (size_t)(end - text))
                   : rewrite_unread_effects(text, body_len - at);
    return *effects & REWRITE_DROPS_STATEMENTS ? NULL : name;
}

/* Kept for its effects, the statement's Executes are noticed: each may
 * change the session's identity, as a Query too large to read would. */
enum taken take_unread_parse(struct conn *c, const char *name, unsigned effects)
{
    struct note *note = NULL;
    bool keep = rewriting(c) && !c->track.skip_to_sync;

    if (rewriting(c))
        batch_message(c);
    if (!c->track.skip_to_sync && !(note = note_displacing(c, name)))
        goto out_of_memory;
    if (keep && !session_parse(&c->session, name, NULL, NULL, effects, NULL, 0, 0))
        goto out_of_memory;
    if (name[0] == '\0' && !unnamed_redefined(c, &note))
        goto out_of_memory;
    return track_client(c, 'P', note) ? TAKEN_FORWARD : TAKEN_CLOSED;

out_of_memory:
    if (note)
        free_note(c, note);
    fail_oom(c);
    return TAKEN_CLOSED;
}

/* A Describe of a statement describes it in the form the rules now in
 * force give it, as a Bind runs it; of the unnamed statement while it
 * stands for a cached one, it describes that one. */
static enum taken take_describe(struct conn *c, const uint8_t *msg, size_t total,
                                struct sink *k)
{
    const char *statement = named_statement(msg, total);
    struct note *note = NULL;

    if (held_for_identity(c, msg, total, statement))
        return TAKEN_HELD;
    batch_message(c);
    if (statement && !reprepare(c, k, statement, INJECT_REPREPARE)) {
        fail_oom(c);
        return TAKEN_CLOSED;
    }
    bool renamed = statement && statement[0] == '\0' && c->stmts.unnamed;
    if (renamed) {
        note = note_new(NULL, NULL);
        if (!note) {
            fail_oom(c);
            return TAKEN_CLOSED;
        }
        write_renamed(c, k, msg, total, total, 1, note);
    }
    if (!track_client(c, 'D', note))
        return TAKEN_CLOSED;
    return renamed ? TAKEN_REPLACED : TAKEN_FORWARD;
}

static enum taken take_close(struct conn *c, const uint8_t *msg, size_t total)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN, at = 1;
    const char *name = len > 1 ? read_name(body, len, &at) : NULL;
    struct note *note = NULL;

    batch_message(c);
    /* A Close behind requests of its batch that may fail may be skipped,
     * and the statement then stays (restore_statements). */
    if (name && body[0] == 'S' && name[0] != '\0' && track_pending(&c->track) > 0 &&
        !c->track.skip_to_sync) {
        if (!(note = note_displacing(c, name))) {
            fail_oom(c);
            return TAKEN_CLOSED;
        }
    } else if (name && !c->track.skip_to_sync) {
        session_close(&c->session, (char)body[0], name);
    }
    /* It closes the server's own unnamed statement, as the client meant. */
    if (name && body[0] == 'S' && name[0] == '\0' && !unnamed_redefined(c, &note)) {
        fail_oom(c);
        return TAKEN_CLOSED;
    }
    return track_client(c, 'C', note) ? TAKEN_FORWARD : TAKEN_CLOSED;
}

/* An Execute of a recognised INSERT carries what translation needs; in a
 * transaction block it runs under the proxy's savepoint. */
static enum taken take_execute(struct conn *c, const uint8_t *msg, size_t total, struct sink *k)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN, at = 0;
    const char *portal = read_name(body, len, &at);
    const char *schema, *name;
    bool first_run = false;
    unsigned effects = 0;
    int table = -1;

    batch_message(c);
    c->batch_executes++;
    if (portal &&
        session_execute(&c->session, portal, &schema, &name, &first_run, &effects) &&
        identity_holds(c))
        table = scope_find_table(c->scope, schema, name);
    follow_effects(c, effects);
    if (table < 0) {
        /* Later Executes of the batch run in a block after a BEGIN (what
         * pgjdbc sends ahead of a block's first statement, in the same
         * batch), and in the block that was open after a statement that
         * cannot end it, bound in this batch (so that the proxy knows what
         * the portal runs, if it runs at all). Else they cannot know. */
        bool opens = (effects & REWRITE_BEGINS_BLOCK) && c->batch_status == 'I';
        bool stays = c->batch_status == 'T' &&
                     ((effects & REWRITE_BEGINS_BLOCK) ||
                      (c->bound_stays && portal && strcmp(portal, c->bound_portal) == 0));
        c->batch_status = opens || stays ? 'T' : 0;
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
        .txn_status = c->batch_status ? c->batch_status : c->track.txn_status,
    };
    note->first_run = first_run;
    if (!translate_guard(&note->req, c->batch_status != 0))
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
    /* A batch that began in a block and ran nothing that may end it
     * leaves the session in the block (a failed one, should a statement
     * fail): the next batch knows its status without waiting. Not one
     * that a BEGIN opened, which may not have run. */
    char after = !c->batch_open                                  ? status_after_pending(c)
                 : c->batch_from == 'T' && c->batch_status == 'T' ? 'T'
                                                                  : 0;
    struct note *note = NULL;

    if (after == 'T') {
        if (!(note = note_new(NULL, NULL))) {
            fail_oom(c);
            return TAKEN_CLOSED;
        }
        note->status_after = 'T';
    }
    c->batch_open = false;
    c->batch_ending = c->batch_guarded || unnamed_unsure(c);
    c->batch_guarded = false;
    if (c->guard == GUARD_AWAIT_SYNC)
        c->guard = GUARD_SYNCED;
    else if (c->guard == GUARD_ABORT_AWAIT_SYNC)
        c->guard = GUARD_ABORT_SYNCED;
    return track_client(c, 'S', note) ? TAKEN_FORWARD : TAKEN_CLOSED;
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

/* Nothing is rewritten (no rules apply, or the catalog is in doubt) while
 * the proxy still knows statements the client prepared: their names are
 * followed, and a text that may drop them is read, so that
 * nothing stale is prepared again or translated later. */
static enum taken take_unrewritten(struct conn *c, const uint8_t *msg, size_t total,
                                   struct sink *k)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t len = total - PG_HEAD_LEN, at = 0;
    char type = (char)msg[0];
    struct note *note = NULL;

    switch (type) {
    case 'B': return take_bind(c, msg, total, k);
    case 'D': return take_describe(c, msg, total, k);
    case 'C': return take_close(c, msg, total);
    case 'Q':
    case 'P': {
        const char *name = type == 'P' ? read_name(body, len, &at) : "";
        const uint8_t *text = name ? body + at : NULL;
        const uint8_t *end = text ? memchr(text, '\0', len - at) : NULL;
        if (end)
            forget_dropped(c, rewrite_effects((const char *)text, (size_t)(end - text)),
                           (const char *)text);
        /* A named statement the session knew holds a text unread once
         * the Parse takes place: it is forgotten then, and kept if the
         * server refuses or skips the Parse (restore_statements), as a
         * Close of it is. */
        if (type == 'P' && name && name[0] != '\0' && !c->track.skip_to_sync &&
            !(note = note_displacing(c, name))) {
            fail_oom(c);
            return TAKEN_CLOSED;
        }
        if (name && name[0] == '\0' && !unnamed_redefined(c, &note)) {
            fail_oom(c);
            return TAKEN_CLOSED;
        }
        break;
    }
    default:
        break;
    }
    return track_client(c, type, note) ? TAKEN_FORWARD : TAKEN_CLOSED;
}

enum taken take_client_msg(struct conn *c, const uint8_t *msg, size_t total,
                           struct sink *k)
{
    char type = (char)msg[0];

    if (type == 'X')
        return take_terminate(c, k);
    if (!rewriting(c))
        return take_unrewritten(c, msg, total, k);
    switch (type) {
    case 'Q': return take_query(c, msg, total, k);
    case 'P': return take_parse(c, msg, total, k);
    case 'B': return take_bind(c, msg, total, k);
    case 'D': return take_describe(c, msg, total, k);
    case 'E': return take_execute(c, msg, total, k);
    case 'C': return take_close(c, msg, total);
    case 'S': return take_sync(c);
    case 'H': return take_flush(c);
    case 'F':
        if (total < PG_HEAD_LEN + 4 ||
            rewrite_call_effects(pg_get_u32(msg + PG_HEAD_LEN)) & REWRITE_CHANGES_IDENTITY)
            unsettle_identity(c);
        return track_client(c, type, NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
    default:
        return track_client(c, type, NULL) ? TAKEN_FORWARD : TAKEN_CLOSED;
    }
}
