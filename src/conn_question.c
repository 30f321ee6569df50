/* conn_question: the proxy's own questions to the server about a session:
 * the registered tables' catalog and the session's identity, asked when
 * the session is idle or, inside a transaction block, under a savepoint
 * of the proxy's; and what the client's statements do to the answer (see
 * conn_int.h). */
#include "conn_int.h"

#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "rewrite.h"
#include "rules.h"

/* The statement and portal of the proxy's questions to the server (the
 * catalog, the session's identity). */
#define CATALOG_NAME "idemproxy_catalog"
/* ... and of the rollback after a question failed inside a block. */
#define UNDO_NAME "idemproxy_undo"

/* ---- runs of the proxy's own ------------------------------------------- */

static bool track_standalone_run(struct conn *c, size_t statements, enum inject tag)
{
    if (!track_inject(&c->track, PG_STANDALONE_RUN_FIRST, tag))
        return false;
    for (size_t i = 0; i < statements; i++)
        if (!track_extended_run(c, tag))
            return false;
    return track_inject(&c->track, PG_STANDALONE_RUN_LAST, tag);
}

/* The statements sql[0..n) as one request of the proxy's own
 * (pg_build_standalone_run) on name: in the extended protocol, since a
 * Query would drop the client's unnamed statement, which may still be
 * bound after a Sync. Malloc'ed; NULL when out of memory or a statement
 * is. */
static uint8_t *build_standalone(const char *name, const char *const *sql, size_t n,
                                 size_t *len)
{
    for (size_t i = 0; i < n; i++)
        if (!sql[i])
            return NULL;
    *len = pg_build_standalone_run(NULL, 0, name, sql, n);
    uint8_t *run = malloc(*len);
    if (run)
        pg_build_standalone_run(run, *len, name, sql, n);
    return run;
}

/* Sends a run of n statements and frees it. False when out of memory (the
 * pair is then failing). */
static bool send_standalone(struct conn *c, uint8_t *run, size_t len, size_t n,
                            enum inject tag)
{
    bool tracked = track_standalone_run(c, n, tag);

    if (tracked)
        send_to(c->server, run, len);
    else
        fail_oom(c);
    free(run);
    return tracked;
}

/* ---- the catalog ------------------------------------------------------- */

struct scope *login_scope(struct conn *c)
{
    return ruleset_scope(c->rules, c->database, c->user ? c->user : "");
}

void enter_scope(struct conn *c, struct scope *s)
{
    c->scope = s;
    if (s && scope_state(s) == SCOPE_UNKNOWN)
        learn_catalog(c);
}

/* A question of the proxy's, its settings first, as a run of its own: the
 * catalog query or the one about the session's identity. Inside a
 * transaction block it runs under a savepoint (enum block_question).
 * Malloc'ed, *n statements; NULL when out of memory. */
static uint8_t *build_question(const struct conn *c, const char *settings, const char *query,
                               size_t *n, size_t *len)
{
    const char *idle[] = { settings, query };
    const char *block[] = { QUESTION_SQL_SAVEPOINT, settings, query, QUESTION_SQL_ROLLBACK_TO,
                            QUESTION_SQL_RELEASE };

    if (c->track.txn_status == 'I') {
        *n = sizeof(idle) / sizeof(idle[0]);
        return build_standalone(CATALOG_NAME, idle, *n, len);
    }
    *n = sizeof(block) / sizeof(block[0]);
    return build_standalone(CATALOG_NAME, block, *n, len);
}

/* Sends a run build_question made. False when out of memory (the pair is
 * then failing). */
static bool send_question(struct conn *c, uint8_t *run, size_t len, size_t n, enum inject tag)
{
    c->block_question = c->track.txn_status == 'I' ? BLOCK_QUESTION_NONE : BLOCK_QUESTION_SENT;
    return send_standalone(c, run, len, n, tag);
}

/* The settings the query is read under go first, in the same run. */
void learn_catalog(struct conn *c)
{
    struct catalog *cat = malloc(sizeof(*cat));
    size_t n, len;
    uint8_t *run = build_question(c, CATALOG_SETTINGS_SQL, scope_catalog_query(c->scope), &n,
                                  &len);

    if (!cat || !run) {
        free(cat);
        free(run);
        conn_log(LOG_ERROR, c, "out of memory: INSERTs of this session are not rewritten");
        return;
    }
    catalog_init(cat);
    c->catalog = cat;
    c->catalog_ok = true;
    scope_asking(c->scope);
    if (send_question(c, run, len, n, INJECT_CATALOG))
        conn_log(LOG_DEBUG, c, "asking the server about the registered tables%s",
                 c->block_question != BLOCK_QUESTION_NONE ? " inside its transaction block" : "");
}

/* ---- the session's identity -------------------------------------------- */

/* Says what changed in how the session is served: the role it runs as,
 * and whether its names lead where the catalog check looked. The first
 * change of a session goes at info, later ones at debug: an application
 * that switches tenants per request (SET search_path, SET ROLE) would
 * otherwise log two lines per request. */
static void say_identity(struct conn *c, struct scope *scope, bool fits)
{
    enum identity_said said = c->identity_said;
    bool moved = scope && scope != c->scope;

    if (!scope)
        said = SAID_ROLE_UNFOLLOWED;
    else if (scope_state(scope) == SCOPE_READY)
        said = fits ? SAID_FITS : SAID_NAMES_ELSEWHERE;
    if (!moved && said == c->identity_said)
        return;
    enum log_level level = c->identity_told ? LOG_DEBUG : LOG_INFO;
    const char *later = c->identity_told ? "" : " (later changes are logged at debug)";
    c->identity_told = true;
    if (moved) {
        size_t role_len;
        const char *role = scope_role(scope, &role_len);
        conn_log(level, c, "this session runs as role \"%.*s\" now: its INSERTs are "
                 "rewritten as the catalog check allows that role%s", (int)role_len, role,
                 later);
        later = "";
    }
    if (said == c->identity_said)
        return;
    c->identity_said = said;
    switch (said) {
    case SAID_FITS:
        conn_log(level, c, "this session's role and table names are as checked again: its "
                 "INSERTs are rewritten%s", later);
        break;
    case SAID_NAMES_ELSEWHERE:
        conn_log(level, c, "this session's table names lead elsewhere (search_path, a "
                 "temporary table): its INSERTs pass unchanged%s", later);
        break;
    case SAID_ROLE_UNFOLLOWED:
        conn_log(LOG_WARNING, c, "this session runs as a role beyond the %d whose catalog "
                 "the proxy learns: its INSERTs pass unchanged", RULESET_ROLE_SCOPES_MAX);
        break;
    }
}

bool identity_known(struct conn *c, struct scope *scope, bool fits, char *signature,
                    size_t signature_len, uint64_t answered)
{
    /* Outside a transaction the answer is what would be kept. */
    if (c->track.txn_status == 'I')
        forget_identity_outside(c);
    if (c->identity == IDENTITY_ASKING && c->identity_at_login && signature) {
        struct identity_answer answer = { scope, fits, signature, signature_len };
        scope_keep_login_identity(c->scope, c->startup, c->startup_len, &answer, answered);
    }
    say_identity(c, scope, fits);
    if (scope && scope != c->scope)
        enter_scope(c, scope);
    /* The server will look the names of what the session prepared up
     * anew: the rules' version for its statements moves on. */
    if (!signature || !c->identity_signature || signature_len != c->identity_signature_len ||
        memcmp(signature, c->identity_signature, signature_len) != 0)
        c->rules_epoch++;
    free(c->identity_signature);
    c->identity_signature = signature;
    c->identity_signature_len = signature_len;
    c->identity = IDENTITY_KNOWN;
    c->identity_fits = fits && scope;
    c->identity_in_block = c->track.txn_status != 'I';
    c->identity_version = scope_version(c->scope);
    c->identity_ns = answered;
    /* The session is idle: what it prepared under the other answer is
     * brought in line before the client's next message, which a later
     * Bind could only do with nothing outstanding. (While a catalog is
     * learnt, the question is asked again after it, and that answer does
     * it.) Not inside a block, where a statement that no longer parses
     * would fail it: the statement's next Bind does it (reprepare), if
     * the client binds it at all. */
    return c->identity_in_block || reprepare_all(c);
}

/* The transaction whose changes of identity were all LOCAL is over: the
 * identity kept from before it is the session's again. */
static bool identity_restore(struct conn *c)
{
    struct identity_outside o = c->identity_outside;

    c->identity_outside = (struct identity_outside){ 0 };
    if (!identity_known(c, o.scope, o.fits, o.signature, o.signature_len, o.ns))
        return false;
    c->identity_version = o.version;
    return true;
}

void learn_identity(struct conn *c)
{
    bool block = c->track.txn_status != 'I';
    struct identity_answer kept;
    uint64_t answered;
    size_t n, len;

    /* Right after its login, before the client said anything, the session
     * is as every session of the same login: one of them may have asked. */
    c->identity_at_login = c->identity_ns == 0 && !c->spoke;
    if (c->identity_at_login &&
        scope_login_identity(c->scope, c->startup, c->startup_len, &kept, &answered)) {
        char *signature = malloc(kept.signature_len + 1);
        if (signature)
            memcpy(signature, kept.signature, kept.signature_len + 1);
        if (!identity_known(c, kept.scope, kept.fits && signature, signature,
                            signature ? kept.signature_len : 0, answered))
            fail_oom(c);
        return;
    }
    uint8_t *run = build_question(c, IDENTITY_SETTINGS_SQL, scope_identity_query(c->scope), &n,
                                  &len);
    if (!run) {
        /* Nothing is rewritten in this session until it is asked again. */
        c->identity = IDENTITY_KNOWN;
        c->identity_fits = false;
        c->identity_in_block = block;
        c->identity_version = scope_version(c->scope);
        c->identity_ns = now_ns();
        conn_log(LOG_ERROR, c, "out of memory: INSERTs of this session are not rewritten");
        return;
    }
    c->identity = IDENTITY_ASKING;
    if (send_question(c, run, len, n, INJECT_IDENTITY))
        conn_log(LOG_DEBUG, c, "asking the server about the session's role and search_path%s",
                 block ? " inside its transaction block" : "");
}

bool undo_block_question(struct conn *c, enum inject tag)
{
    const char *sql[] = { QUESTION_SQL_ROLLBACK_TO, QUESTION_SQL_RELEASE };
    const size_t n = sizeof(sql) / sizeof(sql[0]);
    size_t len;
    /* The failed question's portal lives on until the rollback. */
    uint8_t *run = build_standalone(UNDO_NAME, sql, n, &len);

    c->block_question = BLOCK_QUESTION_UNDOING;
    if (!run) {
        fail_oom(c);
        return false;
    }
    return send_standalone(c, run, len, n, tag);
}

/* ---- what the client's statements do to the answer --------------------- */

/* A change of identity that lasts to the end of the transaction: the
 * identity from before it is kept for then, if the session had one from
 * outside a transaction and none is kept already. */
static void unsettle_locally(struct conn *c)
{
    struct identity_outside *o = &c->identity_outside;

    if (!o->kept && c->identity == IDENTITY_KNOWN && !c->identity_in_block &&
        c->identity_signature) {
        char *copy = malloc(c->identity_signature_len + 1);
        if (copy) {
            memcpy(copy, c->identity_signature, c->identity_signature_len + 1);
            *o = (struct identity_outside){ true, 0, c->scope, c->identity_fits, copy,
                                            c->identity_signature_len, c->identity_version,
                                            c->identity_ns };
        }
    }
    /* A ReadyForQuery outside a block that answers what went before the
     * change (the client pipelined BEGIN and SET LOCAL behind it) ends
     * another transaction than the change's. */
    o->until = track_next_serial(&c->track);
    if (c->identity == IDENTITY_KNOWN)
        c->identity = IDENTITY_UNKNOWN;
    c->identity_in_block = false;
}

/* A client's statement with these effects (rewrite_effects) goes to the
 * server: one that may change the identity unsettles it (keeping the one
 * from before when the change is LOCAL), and so does one that may undo the
 * LOCAL settings an answer was given under. */
void follow_effects(struct conn *c, unsigned effects)
{
    if (!(effects & REWRITE_CHANGES_IDENTITY)) {
        if ((effects & REWRITE_ENDS_LOCAL) && c->identity_in_block)
            unsettle_locally(c);
    } else if (effects & REWRITE_IDENTITY_LOCAL) {
        unsettle_locally(c);
    } else {
        unsettle_identity(c);
    }
}

/* Whether a Query's or Parse's text may need the identity: it may insert
 * into a registered table, and does not change the identity itself (its
 * INSERTs are then decided without one anyway). */
static bool text_needs_identity(const struct conn *c, const uint8_t *msg, size_t total)
{
    const uint8_t *body = msg + PG_HEAD_LEN;
    size_t at, len;

    if (!pg_statement_text((char)msg[0], body, total - PG_HEAD_LEN, &at, &len))
        return false;
    const char *text = (const char *)body + at;
    return scope_may_decide(c->scope, text, len) &&
           !(rewrite_effects(text, len) & (REWRITE_CHANGES_IDENTITY | REWRITE_ENDS_LOCAL));
}

/* Inside a transaction block the identity is asked right before the first
 * Query or Parse that may insert into a registered table, or Bind or
 * Describe of a statement that does, once something in the block may have
 * changed it (SET LOCAL ROLE, set_config of role or search_path with
 * is_local: what PostGraphile and row-level security setups do per
 * request); waiting for the block's end would leave its INSERTs as they
 * are. Only at the start of a request with nothing of the client's under
 * way, so that the question joins nothing of its. True when the message
 * waits for the answer. */
bool ask_in_block(struct conn *c, const uint8_t *msg, size_t total)
{
    /* An answer given in the block before its scope's catalog was learnt
     * is asked again, as outside a block (follow_identity). */
    bool stale = c->identity == IDENTITY_KNOWN && c->identity_in_block &&
                 !scope_identity_current(c->scope, c->identity_version, c->identity_ns);
    if ((c->identity != IDENTITY_UNKNOWN && !stale) || c->track.txn_status != 'T' ||
        !conn_quiet(c) || c->catalog || c->guard != GUARD_NONE)
        return false;
    if (msg[0] == 'B' || msg[0] == 'D') {
        const char *statement = named_statement(msg, total);
        if (!statement || !session_inserts(&c->session, statement))
            return false;
    } else if (!c->charset_ok || c->scs_off || !text_needs_identity(c, msg, total)) {
        /* A text the session's settings keep from the rewrite needs no
         * answer: it goes as it is. */
        return false;
    }
    learn_identity(c);
    return c->identity == IDENTITY_ASKING;
}

bool identity_after_transaction(struct conn *c)
{
    if (c->identity != IDENTITY_ASKING && c->track.txn_status == 'I' &&
        c->identity_outside.kept &&
        track_answered_through(&c->track, c->identity_outside.until))
        return identity_restore(c);
    if (c->identity_in_block && c->track.txn_status != 'T')
        unsettle_locally(c);
    return true;
}
