/* conn_server: the server messages the proxy reads (see conn_int.h). */
#include "conn_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "params.h"
#include "rewrite.h"
#include "rules.h"

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
void settle_await(struct conn *c, char type)
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
void guard_next(struct conn *c, char type)
{
    if (type == 'S')
        return;
    struct sink k = { NULL, sock_output(c->client), 0 };
    release_error(c, &k, false, TR_NOT_SYNC);
    sock_flush(c->client);
    c->guard = GUARD_ABORT_AWAIT_SYNC;
}

/* Whether the client sent anything the server answers after the i-th
 * request in the queue (the proxy's own requests do not count). */
static bool client_sent_after(const struct conn *c, size_t i)
{
    const struct track_req *r;

    while ((r = track_at(&c->track, ++i)))
        if (!r->injected)
            return true;
    return false;
}

/* A guarded Execute failed and its error stands: once its batch is over,
 * the block must fail at the client's level (see TRANSLATE_SQL_FAIL).
 * Unless the client already sent more past the batch's Sync, which the
 * server runs first: then the block stays failed under the savepoint. */
static void abort_after_batch(struct conn *c)
{
    const struct track_req *r;
    size_t i = 1;

    while ((r = track_at(&c->track, i)) && (r->injected || r->kind != TRACK_SYNC))
        i++;
    if (!r)
        c->guard = GUARD_ABORT_AWAIT_SYNC;
    else if (!client_sent_after(c, i))
        c->guard = GUARD_ABORT_SYNCED;
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
    /* The rollback must reach the server before anything the client sent
     * after the Sync. */
    return r->kind == TRACK_SYNC && !client_sent_after(c, i) ? 'S' : 'H';
}

/* Whether request r (a Parse or Close) changed what the proxy knows of
 * statement name. */
static struct note *changes_statement(const struct track_req *r, const char *name)
{
    struct note *note = r->injected ? NULL : r->note;

    return note && note->chained && strcmp(note->defines, name) == 0 ? note : NULL;
}

/* The refused and skipped requests, the first n of the queue, changed
 * nothing on the server: each statement name they touched holds what it
 * held before the first of them, which that one displaced. The next change
 * of the name the queue still holds (a later batch, sent already) has
 * displaced what they made instead, and takes the truth in its place; with
 * none, the name itself does. A Parse of the unnamed statement that failed
 * itself (first) dropped the server's unnamed statement, which PostgreSQL
 * does before anything else. */
static void restore_statements(struct conn *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct track_req *r = track_at(&c->track, i);
        struct note *note = r->injected ? NULL : r->note;
        if (!note || !note->chained)
            continue;
        const char *name = note->defines;
        bool first = true;
        for (size_t k = 0; k < i && first; k++)
            first = !changes_statement(track_at(&c->track, k), name);
        if (!first)
            continue;
        struct session_entry *before = note->displaced;
        note->displaced = NULL;
        if (i == 0 && r->kind == TRACK_PARSE && name[0] == '\0' && before) {
            session_entry_free(&c->session, before);
            before = NULL;
        }
        const struct track_req *later_req;
        struct note *later = NULL;
        for (size_t k = n; !later && (later_req = track_at(&c->track, k)); k++)
            later = changes_statement(later_req, name);
        if (later) {
            if (later->displaced)
                session_entry_free(&c->session, later->displaced);
            later->displaced = before;
            continue;
        }
        session_close(&c->session, 'S', name);
        if (before)
            session_reattach(&c->session, before);
    }
}

/* Whether a request of the client's queued from i on may have given the
 * unnamed statement another meaning (a Query drops it; a Parse or a Close
 * may name it): what was displaced before it no longer stands, whatever
 * became of the batch before. */
static bool unnamed_redefined_from(const struct conn *c, size_t i)
{
    const struct track_req *r;

    for (; (r = track_at(&c->track, i)); i++)
        if (!r->injected &&
            (r->kind == TRACK_QUERY || r->kind == TRACK_PARSE || r->kind == TRACK_CLOSE))
            return true;
    return false;
}

/* Whether portal is bound again by a request queued after request k,
 * behind the Sync that ends k's batch: sent already, it is what the proxy
 * knows of the portal now. */
static bool bound_again_later(const struct conn *c, size_t k, const char *portal)
{
    const struct track_req *r;
    bool synced = false;

    while ((r = track_at(&c->track, ++k))) {
        const struct note *n = r->injected ? NULL : r->note;
        synced |= r->kind == TRACK_SYNC;
        if (synced && r->kind == TRACK_BIND && n && n->defines &&
            strcmp(n->defines, portal) == 0)
            return true;
    }
    return false;
}

/* The server refused an extended message and skips the rest up to Sync:
 * what the Binds among them defined never came to be, so their portals
 * are forgotten (unless a later batch, sent already, binds them again),
 * and the statements' names hold what they held before
 * (restore_statements). A redefinition of the unnamed statement among
 * them that displaced what the proxy kept of it gives that back, unless a
 * skipped or refused Parse of the unnamed statement came before it (the
 * proxy knew nothing of the statement then, or kept the refused text), or
 * the client has already sent what may redefine it after the batch. A
 * COPY from the client that failed took what came behind it up to its
 * CopyDone or CopyFail, a Sync among them too (track's end_copy_in): the
 * skipping begins after that. */
static void forget_refused(struct conn *c)
{
    const struct track_req *r;
    struct note *unsure = NULL;
    bool unnamed_parsed = false, restore = false, copied = c->track.copy_in;
    size_t i;

    if (!track_error_skips(&c->track))
        return;
    for (i = 0; (r = track_at(&c->track, i)); i++) {
        if (copied && i > 0) {
            copied = r->kind != TRACK_COPY_END;
            continue;
        }
        if (r->kind == TRACK_SYNC)
            break;
        struct note *n = r->injected ? NULL : r->note;
        if (!n)
            continue;
        /* Not the failing message itself: that one took place. */
        if (i > 0 && n->unsure && !unsure) {
            unsure = n;
            restore = !unnamed_parsed;
        }
        if (n->defines && r->kind == TRACK_BIND && !bound_again_later(c, i, n->defines))
            session_close(&c->session, 'P', n->defines);
        /* The server's unnamed statement is not the one whose Parse the
         * proxy kept: a skipped Parse of it left whatever came before, a
         * refused one (the failing message) none, since PostgreSQL drops
         * it before it parses. */
        if (r->kind == TRACK_PARSE && n->defines && n->defines[0] == '\0') {
            c->unnamed_parse_len = 0;
            unnamed_parsed = true;
        }
        /* The empty Parse that made the unnamed statement stand for a
         * cached one failed (a cancel): the server holds no unnamed
         * statement, as it would not have for the client's. */
        if (n->maps && c->stmts.unnamed == n->maps)
            c->stmts.unnamed = NULL;
    }
    restore_statements(c, i);
    if (unsure) {
        unsure->unsure = false;
        if (restore && !unnamed_redefined_from(c, i))
            unnamed_restore(c);
        else
            unnamed_settle(c);
    }
}

/* Whether request r ran a text the proxy rewrote, as far as it can tell.
 * Only such a text fails because a registered table changed after the
 * catalog check: where PostgreSQL analyses and plans it (a Query, a Parse,
 * a Bind of a portal running such an INSERT, of the cached statement the
 * unnamed one stands for, or the proxy's own Bind of a Query's cached
 * statement), or where the executor meets the table (the first Execute of
 * such a portal; a later one only fetches, or fails because the portal has
 * run: "portal cannot be run" is 55000 too). */
static bool ran_rewrite(const struct conn *c, const struct track_req *r)
{
    const char *schema, *table;

    if (!r)
        return false;
    if (r->injected)
        return r->tag == INJECT_PREPARED;
    const struct note *n = r->note;
    switch (r->kind) {
    case TRACK_QUERY:
        return n && (n->decision || n->req.table >= 0);
    case TRACK_PARSE:
        return n && (n->decision || n->creates);
    case TRACK_BIND:
        return n && (n->renamed ||
                     (n->defines && session_portal(&c->session, n->defines, &schema, &table)));
    case TRACK_EXECUTE:
        return n && n->first_run;
    default:
        return false;
    }
}

/* What an error says of the server's state the proxy keeps a picture of.
 * A statement the server says does not exist (26000: the client's SQL
 * dropped it where the proxy could not see) is created again next time.
 * An error a rewrite causes once a registered table changed after the
 * catalog check (an index dropped: 42P10, made DEFERRABLE: 55000, a rule
 * added: 0A000, a privilege revoked: 42501), answering a request that ran
 * a rewritten text, puts the scope in doubt: it stops rewriting until the
 * catalog is asked again (at most once a second). The same codes from
 * anything else say nothing of the tables. */
static void note_server_state(struct conn *c, const struct pg_error *err,
                              const struct track_req *r)
{
    static const char *const doubts[] = { "42P10", "55000", "0A000", "42809", "42501" };

    if (!err->code)
        return;
    if (strcmp(err->code, "26000") == 0) {
        stmtcache_forget_all(&c->stmts);
        return;
    }
    if (!c->scope || !ran_rewrite(c, r))
        return;
    for (size_t i = 0; i < sizeof(doubts) / sizeof(doubts[0]); i++) {
        if (strcmp(err->code, doubts[i]) == 0) {
            if (!scope_distrust(c->scope, now_ns()))
                return;
            counter_add(&c->worker->counters.catalog_doubts, 1);
            conn_log(LOG_WARNING, c, "%s from the server (%s): the registered tables may have "
                     "changed; INSERTs pass unchanged until the catalog is asked again",
                     err->code, err->message ? err->message : "");
            return;
        }
    }
}

/* Writes the ErrorResponse whose fields are body's with field's taken out
 * and n others in its place (pg_fields_splice). False when that cannot be
 * done (out of memory): the caller forwards the error as it came. */
static bool write_error_spliced(struct sink *k, const uint8_t *body, size_t len, char field,
                                const char *types, const char *const values[], size_t n)
{
    uint8_t buf[1024];
    size_t need = pg_fields_splice(buf, sizeof(buf), 'E', body, len, field, types, values, n);
    uint8_t *big = need > sizeof(buf) && need != SIZE_MAX ? malloc(need) : NULL;

    if (big)
        pg_fields_splice(big, need, 'E', body, len, field, types, values, n);
    else if (need > sizeof(buf))
        return false;
    sink_write(k, big ? big : buf, need);
    free(big);
    return true;
}

/* The same with field's value replaced. */
static bool write_error_with(struct sink *k, const uint8_t *body, size_t len, char field,
                             const char *value)
{
    return write_error_spliced(k, body, len, field, &field, &value, 1);
}

/* message with each mention of name (not followed by more of a number)
 * taken out, malloc'ed; NULL when it has none, or out of memory. */
static char *without_name(const char *message, const char *name)
{
    size_t name_len = strlen(name);
    char *out = malloc(strlen(message) + 1), *o = out;
    bool found = false;

    if (!out)
        return NULL;
    for (const char *m = message; *m;) {
        if (strncmp(m, name, name_len) == 0 && (m[name_len] < '0' || m[name_len] > '9')) {
            m += name_len;
            found = true;
        } else {
            *o++ = *m++;
        }
    }
    *o = '\0';
    if (!found) {
        free(out);
        return NULL;
    }
    return out;
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
    note_server_state(c, &err, answering(c));
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
                abort_after_batch(c);
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
    /* The guarded statement failed otherwise: the block is failed under
     * the savepoint, and must fail at the client's level. */
    if (c->guard == GUARD_OPEN)
        c->guard = GUARD_ABORT;
    else if (c->guard == GUARD_NONE && note && note->req.guarded && note->req.extended)
        abort_after_batch(c);

    if (note && note->decision && note->decision->result.text && err.position) {
        const struct rewrite_result *r = &note->decision->result;
        size_t pos = strtoul(err.position, NULL, 10);
        /* The proxy's Parse for a Query: first from its statement onto the
         * rewritten text. */
        if (note->parameterised)
            pos = params_position(r->text, r->text_len, pos, c->charset_utf8);
        size_t mapped = rewrite_map_position(r, pos, c->charset_utf8);
        char value[24];
        snprintf(value, sizeof(value), "%zu", mapped);
        if (write_error_with(k, body, len, 'P', value))
            return TAKEN_REPLACED;
    }
    if (note && note->renamed && err.message) {
        /* "bind message supplies 0 parameters, but prepared statement
         * "idemproxy_s4" requires 1": the client named "". */
        char name[STMTCACHE_NAME_MAX];
        stmtcache_name_of(note->renamed, name);
        char *message = without_name(err.message, name);
        bool written = message && write_error_with(k, body, len, 'M', message);
        free(message);
        if (written)
            return TAKEN_REPLACED;
    }
    return TAKEN_FORWARD;
}

/* The catalog query's answer is in: what it said goes to the scope, and
 * the client's input may go on. */
static void catalog_arrived(struct conn *c)
{
    struct scope *s = c->scope;
    size_t role_len;
    const char *role = scope_role(s, &role_len);

    counter_add(c->catalog_ok ? &c->worker->counters.catalog_queries_ok
                              : &c->worker->counters.catalog_queries_failed, 1);
    if (!scope_learn(s, c->catalog_ok ? c->catalog : NULL, now_ns()))
        conn_log(LOG_ERROR, c, "out of memory: the catalog's answer is not taken");
    else if (!c->catalog_ok)
        conn_log(LOG_WARNING, c, "the catalog query failed: %s", scope_state(s) == SCOPE_READY
                 ? "the last answer stands" : "INSERTs are not rewritten until it is asked again");
    worker_publish_checks(c->worker);
    for (size_t i = 0; i < scope_table_count(s); i++) {
        const struct table_rule *rule = scope_table(s, i);
        const char *problem = scope_table_problem(s, i);
        if (!scope_table_changed(s, i))
            continue;
        if (problem[0])
            conn_log(LOG_WARNING, c, "[table %s.%s] as role \"%.*s\": some INSERTs are not "
                     "rewritten: %s", rule->schema, rule->name, (int)role_len, role, problem);
        else
            conn_log(LOG_INFO, c, "[table %s.%s] as role \"%.*s\": INSERTs are rewritten "
                     "again: the catalog check allows every form now", rule->schema,
                     rule->name, (int)role_len, role);
    }
    catalog_free(c->catalog);
    free(c->catalog);
    c->catalog = NULL;
    c->resume_client = true;
}

/* The row of the answer about the session's identity: its signature is
 * kept until the answer is over. A malformed one counts as none. */
static void hear_identity(struct conn *c, const uint8_t *body, size_t len)
{
    struct identity_answer answer;

    free(c->identity_heard);
    c->identity_heard = NULL;
    if (!scope_identity_read(c->scope, body, len, &answer) ||
        !(c->identity_heard = malloc(answer.signature_len + 1)))
        return;
    memcpy(c->identity_heard, answer.signature, answer.signature_len);
    c->identity_heard[answer.signature_len] = '\0';
    c->identity_heard_len = answer.signature_len;
    c->identity_heard_fits = answer.fits;
    c->identity_heard_scope = answer.scope;
}

static bool identity_answered(struct conn *c)
{
    char *signature = c->identity_heard;

    c->identity_heard = NULL;
    return identity_known(c, signature ? c->identity_heard_scope : c->scope,
                          signature && c->identity_heard_fits, signature,
                          signature ? c->identity_heard_len : 0, now_ns());
}

/* The ReadyForQuery (status) of a question of the proxy's (tag). Inside a
 * block, one that failed after its savepoint (the SAVEPOINT is the first
 * command it completes) is rolled back to it first, and the answer (none)
 * waits for that rollback's. False when the pair was closed. */
static bool question_ready(struct conn *c, enum inject tag, char status)
{
    if (c->block_question == BLOCK_QUESTION_SAVEPOINT && status == 'E')
        return undo_block_question(c, tag);
    if (c->block_question != BLOCK_QUESTION_NONE && status == 'E')
        conn_log(LOG_WARNING, c, "the transaction block failed on the proxy's question; the "
                 "client's statements in it fail until it ends");
    c->block_question = BLOCK_QUESTION_NONE;
    if (tag == INJECT_CATALOG) {
        if (c->catalog)
            catalog_arrived(c);
        return true;
    }
    if (!identity_answered(c)) {
        fail_oom(c);
        return false;
    }
    return true;
}

/* The guarded statement failed and is over: roll back to the savepoint,
 * after a translated 23505 to tell the client its INSERT changed nothing
 * (GUARD_ROLLBACK), after anything else to fail the block at the client's
 * level (GUARD_ABORTING). False when out of memory. */
static bool undo_guard(struct conn *c, bool after_batch)
{
    bool abort = c->guard == GUARD_ABORT || c->guard == GUARD_ABORT_SYNCED;

    if (!(abort ? inject_abort(c, after_batch) : inject_rollback(c, after_batch)))
        return false;
    c->guard = abort ? GUARD_ABORTING : GUARD_ROLLBACK;
    return true;
}

/* An error of the proxy's Bind that runs a Query's INSERT as the
 * statement with parameters, about one of the values (a 'x' for an
 * integer column): PostgreSQL, running the Query itself, meets it where it
 * analyses the text, and points at the constant rather than naming a
 * parameter in the context (field W): the client gets the error so. A
 * domain's CHECK is the exception: the Query meets that only when it is
 * planned, and points nowhere. */
static enum taken take_value_error(struct conn *c, const uint8_t *body, size_t len,
                                   const struct pg_error *err, struct sink *k)
{
    const struct note *note = note_of(track_at(&c->track, 1));
    size_t kept;

    if (!note || !note->parameterised || !note->decision || !note->decision->result.text ||
        !err->where || err->position)
        return TAKEN_FORWARD;
    /* A value the server cannot convert to its encoding: PostgreSQL
     * converts the Query's whole text as it arrives, and points nowhere.
     * (One that is not UTF-8 where the server checks that is never bound:
     * decide_statement leaves its text alone.) */
    if (err->code && strcmp(err->code, "22P05") == 0)
        return write_error_spliced(k, body, len, 'W', NULL, NULL, 0) ? TAKEN_REPLACED
                                                                     : TAKEN_FORWARD;
    const struct rewrite_result *r = &note->decision->result;
    size_t pos = params_const_position(r->text, r->text_len, pg_context_param(err->where, &kept),
                                       c->charset_utf8);
    if (pos == 0)
        return TAKEN_FORWARD;
    char position[24], *context = kept > 0 ? strndup(err->where, kept) : NULL;
    char types[2];
    const char *values[2];
    size_t n = 0;
    if (kept > 0 && !context)
        return TAKEN_FORWARD;
    if (!(err->datatype && err->code && strcmp(err->code, "23514") == 0)) {
        snprintf(position, sizeof(position), "%zu",
                 rewrite_map_position(r, pos, c->charset_utf8));
        types[n] = 'P';
        values[n++] = position;
    }
    if (context) {
        types[n] = 'W';
        values[n++] = context;
    }
    bool written = write_error_spliced(k, body, len, 'W', types, values, n);
    free(context);
    return written ? TAKEN_REPLACED : TAKEN_FORWARD;
}

/* Whether a Sync is queued behind the request at the head. The client's
 * messages wait behind the Sync that ended a batch whose outcome decides
 * what they mean (batch_ending); the ReadyForQuery of a Sync before it
 * must not let them go. */
static bool sync_behind_head(const struct conn *c)
{
    const struct track_req *r;

    for (size_t i = 1; (r = track_at(&c->track, i)); i++) {
        if (r->kind == TRACK_SYNC)
            return true;
    }
    return false;
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
        note_server_state(c, &err, answering(c));
    }
    if (type == 'E')
        forget_refused(c);
    /* The first command a question inside a block completes is its
     * SAVEPOINT. */
    if (type == 'C' && (tag == INJECT_CATALOG || tag == INJECT_IDENTITY) &&
        c->block_question == BLOCK_QUESTION_SENT)
        c->block_question = BLOCK_QUESTION_SAVEPOINT;
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
    case INJECT_IDENTITY:
        if (type == 'D')
            hear_identity(c, body, len);
        if (type == 'E') {
            free(c->identity_heard);
            c->identity_heard = NULL;
            if (error)
                conn_log(LOG_WARNING, c, "%s failed: %s %s; its INSERTs are not rewritten%s",
                         c->block_question == BLOCK_QUESTION_UNDOING
                             ? "the rollback after the question about the session's identity"
                             : "the question about the session's role and search_path",
                         err.code ? err.code : "?", err.message ? err.message : "",
                         c->block_question != BLOCK_QUESTION_NONE ? " in this transaction block"
                                                                  : "");
        }
        break;
    case INJECT_REFRESH:
        /* The client meets the same when it binds the statement: it is
         * gone (dropped where the proxy could not see), or its text does
         * not parse in the session as it is now. */
        if (type == 'E' && error)
            conn_log(LOG_DEBUG, c, "a statement could not be prepared again: %s %s",
                     err.code ? err.code : "?", err.message ? err.message : "");
        if (type == 'E')
            session_unsent_all(&c->session);
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
            if (c->guard == GUARD_FAILED || c->guard == GUARD_ABORT) {
                /* The Query failed under the savepoint, and so did RELEASE. */
                if (!undo_guard(c, false)) {
                    fail_oom(c);
                    return TAKEN_CLOSED;
                }
            } else {
                /* It tells the truth about the block: the client's. */
                taken = TAKEN_FORWARD;
                c->guard = GUARD_NONE;
            }
        }
        break;
    case INJECT_UNNAMED:
    case INJECT_PREPARED:
    case INJECT_REPREPARE:
        /* Why the client's message is skipped. */
        if (type == 'E')
            taken = error && tag == INJECT_PREPARED && answering(c)->kind == TRACK_BIND
                        ? take_value_error(c, body, len, &err, k)
                        : TAKEN_FORWARD;
        if (type == 'E' && tag == INJECT_REPREPARE)
            session_unsent_all(&c->session);
        break;
    case INJECT_ABORT:
        /* Its own error is the point; its ReadyForQuery, and the settings
         * the server reports undone before it, are the client's. */
        if (type == 'Z') {
            c->guard = GUARD_NONE;
            taken = TAKEN_FORWARD;
        }
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
    track_reply(c, type, status);
    if (type == 'Z' && (tag == INJECT_CATALOG || tag == INJECT_IDENTITY) &&
        !question_ready(c, tag, status))
        return TAKEN_CLOSED;
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
    case GUARD_ABORT:
        /* RELEASE's own ReadyForQuery comes next and tells the truth, or
         * leads to the rollback or the abort. */
        return TAKEN_DROPPED;
    case GUARD_SYNCED:
    case GUARD_ABORT_SYNCED:
        /* The batch whose Execute failed under the savepoint is over. */
        if (!undo_guard(c, true)) {
            fail_oom(c);
            return TAKEN_CLOSED;
        }
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

/* The settings that decide whether text may be scanned, and what a text
 * means; until the login ends, those the session's kept texts are parsed
 * under. */
void note_setting(struct conn *c, const char *name, const char *value)
{
    if (strcmp(name, "client_encoding") == 0) {
        copy_setting(c->client_encoding, sizeof(c->client_encoding), value);
    } else if (strcmp(name, "server_encoding") == 0) {
        copy_setting(c->server_encoding, sizeof(c->server_encoding), value);
    } else if (strcmp(name, "standard_conforming_strings") == 0) {
        c->scs_off = strcmp(value, "on") != 0;
    } else {
        return;
    }
    if (c->state != CONN_ACTIVE) {
        copy_setting(c->login_client_encoding, sizeof(c->login_client_encoding),
                     c->client_encoding);
        c->login_scs_off = c->scs_off;
    }
    c->charset_ok = rewrite_charset(c->client_encoding, c->server_encoding, &c->charset_utf8);
    c->charset_converts = strcmp(c->client_encoding, c->server_encoding) != 0 &&
                          strcmp(c->client_encoding, "SQL_ASCII") != 0 &&
                          strcmp(c->server_encoding, "SQL_ASCII") != 0;
    c->settings_apart = c->scs_off != c->login_scs_off ||
                        strcmp(c->client_encoding, c->login_client_encoding) != 0;
}

static void note_parameter(struct conn *c, const uint8_t *body, size_t len)
{
    const char *name, *value;

    if (c->reusable)
        welcome_note(&c->welcome, 'S', body, len);
    if (pg_param_status(body, len, &name, &value))
        note_setting(c, name, value);
}

enum taken take_server_msg(struct conn *c, const uint8_t *msg, size_t total,
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
    case 'v':
        welcome_note(&c->welcome, 'v', body, len);
        break;
    case 'N': /* taken only during the login of a reusable session */
        welcome_note(&c->welcome, 'N', body, len);
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
        if (c->batch_ending && head && head->kind == TRACK_SYNC && !sync_behind_head(c))
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
