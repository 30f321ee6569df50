/*
 * rules: the registered tables at run time.
 *
 * A ruleset is built from one configuration snapshot, owns it, and lives as
 * long as someone uses it: it is reference counted, its worker holding the
 * current one and each connection the one its session runs under. Reload
 * builds a new ruleset; connections move to it when they are idle. A
 * ruleset belongs to one thread: the counters are the only part another
 * thread may read.
 *
 * A scope is what applies to one database and role: the tables whose rules
 * cover that database, what the catalog check allows for each as that role
 * (the catalog is learnt per scope, see catalog.h, and learnt again every
 * catalog_check_interval and when an error says it may have changed), and
 * a bounded cache of decisions by statement text, so that a statement seen
 * before costs one hash lookup instead of a parse. A session starts in its
 * login role's scope and moves to the scope of the role it runs as once
 * the server says it switched (SET ROLE).
 *
 * No I/O: the connection code runs the catalog query and hands over the
 * answer.
 */
#ifndef IDEM_RULES_H
#define IDEM_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "catalog.h"
#include "config.h"
#include "counter.h"
#include "params.h"
#include "rewrite.h"
#include "shape.h"
#include "translate.h"

struct ruleset;
struct scope;

/* What happened to the INSERTs into one registered table and to the unique
 * violations on it. */
struct table_counters {
    struct counter rewrite[RR_COUNT];
    struct counter translation[TR_COUNT];
};

/* The caller's counters a ruleset counts in, so that the counts outlive it
 * (they must outlive it too) and survive a reload. Each NULL: the ruleset
 * counts in its own (or, for the gauge, nowhere). */
struct ruleset_counters {
    struct table_counters *const *tables; /* one per table of the configuration */
    struct counter *others;               /* RR_COUNT: the texts counted for no
                                             table in particular, by reason */
    struct counter *scopes;               /* a gauge of the scopes it holds,
                                             given back when it is freed */
};

/* Takes ownership of cfg; counters may be NULL (all its own). NULL when out
 * of memory (cfg is then freed). */
struct ruleset *ruleset_new(struct config *cfg, const struct ruleset_counters *counters);
struct ruleset *ruleset_ref(struct ruleset *rs);
void ruleset_unref(struct ruleset *rs);
const struct config *ruleset_config(const struct ruleset *rs);

enum scope_state {
    SCOPE_PASSTHROUGH, /* no registered table applies: nothing to inspect */
    SCOPE_UNKNOWN,     /* the catalog must be learnt before the first statement */
    SCOPE_READY,
};

/* The scope for a database and login role, created on first use. NULL when
 * out of memory. It lives as long as its ruleset, as every scope does. */
struct scope *ruleset_scope(struct ruleset *rs, const char *database, const char *user);

enum scope_state scope_state(const struct scope *s);

/* The role whose scope s is (*len bytes). */
const char *scope_role(const struct scope *s, size_t *len);

/* Scopes a ruleset makes for the roles sessions switch to (SET ROLE),
 * beyond those of the roles they log in as: each learns its own catalog,
 * so a role per tenant must not grow them without bound. */
#define RULESET_ROLE_SCOPES_MAX 256

/* The query that learns this scope's catalog; NULL when out of memory. */
const char *scope_catalog_query(struct scope *s);

/* The query that asks a session of s whether the catalog check holds for
 * it (catalog_identity_query): its role, and where its names without a
 * schema lead. NULL when out of memory. */
const char *scope_identity_query(struct scope *s);

/* What the answer to that query says. */
struct identity_answer {
    /* The scope of the role the session runs as, in the same database: the
     * one asked, or another when the session switched roles (made on first
     * use, for at most RULESET_ROLE_SCOPES_MAX such roles per ruleset; NULL
     * past that, or when out of memory: nothing of the session is then
     * rewritten). */
    struct scope *scope;
    /* Each name the rewrite takes without a schema (a target's
     * unqualified_ok) means the registered table there too: the session's
     * INSERTs may be decided as the scope's. Never before that scope has
     * learnt its catalog. */
    bool fits;
    /* What PostgreSQL looks a prepared statement's names up by again
     * before running it (catalog_identity_answer): while it stays the
     * same, a statement prepared before still means the tables it meant,
     * whatever else changed. Points into the answer. */
    const char *signature;
    size_t signature_len;
};

/* Reads the answer (its DataRow body) to s's question into *out. False
 * when malformed. */
bool scope_identity_read(struct scope *s, const uint8_t *row, size_t len,
                         struct identity_answer *out);

/* Sessions of s that logged in with the same StartupMessage (the same
 * role, database and settings asked for) start with the same identity:
 * the role and search_path the server gives that login. What the last
 * question right after such a login answered is kept, so that the next
 * login need not ask: it holds as long as the verdicts do and the catalog
 * was not asked again since (a table created in a schema of the path;
 * ALTER ROLE ... SET). False when nothing current is kept; *answered says
 * when it was; out->signature points into what s keeps. */
bool scope_login_identity(struct scope *s, const uint8_t *startup, size_t len,
                          struct identity_answer *out, uint64_t *answered);

/* Keeps an answer for scope_login_identity (at most 64 StartupMessages
 * per scope; past that, the older ones go), also one that moved the
 * session to another role's scope (a role given at login): it holds as
 * long as that scope's verdicts do. Without memory, nothing is kept. */
void scope_keep_login_identity(struct scope *s, const uint8_t *startup, size_t len,
                               const struct identity_answer *answer, uint64_t now_ns);

/* A connection sends the catalog query for s: others need not while the
 * answer is under way (scope_due). */
void scope_asking(struct scope *s);

/* The answer to a query scope_asking announced: cat, or NULL when it failed
 * or never came. Decides every table anew and the scope becomes READY; what
 * changed is said by scope_table_changed, and decisions cached under other
 * verdicts are dropped. A failed answer leaves the scope as it was. False
 * when out of memory (the scope is then as it was too). */
bool scope_learn(struct scope *s, const struct catalog *cat, uint64_t now_ns);

/* Whether the last answer changed what the i-th table's problem is (on the
 * first answer: whether it has one), for the log. */
bool scope_table_changed(const struct scope *s, size_t i);

/* Whether a session of s that is idle outside a transaction block should
 * ask the catalog now, nobody else asking: s was put in doubt after its
 * last answer (scope_distrust), or that answer failed a second ago or
 * more, or catalog_check_interval has passed since it came. */
bool scope_due(const struct scope *s, uint64_t now_ns);

/* The server answered with an error a rewrite can cause when the tables
 * changed after the check (a dropped index: 42P10): the scope stops
 * rewriting until the catalog is asked again. False, and nothing changes,
 * when s is not READY, rewrites nothing (the error cannot be a rewrite's)
 * or was put in doubt less than a second ago. */
bool scope_distrust(struct scope *s, uint64_t now_ns);

/* When what s rewrites last changed (a new answer that changed a verdict,
 * or a doubt), on the clock scope_learn and scope_distrust were given: a
 * statement prepared under another version may hold a text the scope
 * would not send now. 0 before the first answer. */
uint64_t scope_version(const struct scope *s);

/* Whether an answer about a session's identity given under scope version
 * version, at answered (on scope_learn's clock), still holds: the
 * verdicts are the same, and the catalog was not asked again since (a
 * table may have been created in a schema of the session's path). */
bool scope_identity_current(const struct scope *s, uint64_t version, uint64_t answered);

/* For the log after scope_learn: the i-th table of the scope, and why some
 * form of INSERT into it will not be rewritten ("" when nothing). */
size_t scope_table_count(const struct scope *s);
const struct table_rule *scope_table(const struct scope *s, size_t i);
const char *scope_table_problem(const struct scope *s, size_t i);

/* A decision about one statement text, shared by the cache and every
 * request it was made for. A text with constants is decided through its
 * shape: its decision then holds the shape's, and where its constants are,
 * so that it can run as the shape's statement with parameters (params.h)
 * without being masked again. */
struct decision {
    unsigned refs;
    struct rewrite_result result;
    struct decision *shape;     /* the shape's decision, or NULL */
    struct params_stmt *params; /* a shape's: its rewritten single statement
                                   with parameters, or NULL */
    bool not_utf8;              /* rewritten, but the text is not UTF-8 as
                                   PostgreSQL takes it (rewrite_utf8_valid):
                                   where the server checks that, the client's
                                   own text must go */
    size_t nconsts;
    struct shape_const consts[]; /* the text's constants, as shape_of says */
};

/* The statement with parameters that runs d's text as rewritten, binding
 * d->consts; NULL when there is none. */
const struct params_stmt *decision_params(const struct decision *d);

void decision_unref(struct decision *d);

/* Whether scope_decide could find an INSERT into a registered table in
 * text at all: the scope is READY and the pre-filter lets text through.
 * False positives are possible; a false answer is certain. */
bool scope_may_decide(const struct scope *s, const char *text, size_t len);

/* Decides about text (len bytes, NUL at text[len]) in a READY scope, from
 * the cache when it can. Returns a reference the caller must drop, or NULL
 * when the text is of no interest (the pre-filter said so, or memory ran
 * out: either way it passes unchanged). repeats says the same text is
 * likely to come again (a Parse's, whose values come as parameters).
 * *fresh says the decision was made just now rather than found in the
 * cache. */
struct decision *scope_decide(struct scope *s, const char *text, size_t len, bool repeats,
                              bool *fresh);

/* Counts a decision (or, for NULL, a text the pre-filter let pass) in the
 * ruleset's counters. */
void scope_count(struct scope *s, const struct decision *d);

/* Counts a text left alone before any decision (RR_SESSION, RR_TOO_LARGE). */
void scope_count_reason(struct scope *s, enum rewrite_reason reason);

/* The counters of a ruleset: per table and reason, and per reason for the
 * texts counted for no table in particular (rewrite_reason_of_table). */
uint64_t ruleset_table_count(const struct ruleset *rs, size_t table, enum rewrite_reason reason);
uint64_t ruleset_other_count(const struct ruleset *rs, enum rewrite_reason reason);

/* What the catalog check said about the table-th table of rs's
 * configuration, over the scopes learnt so far: "" when it allowed the
 * rewrite in every one, the first problem found otherwise, NULL when no
 * scope that covers the table has been learnt yet. */
const char *ruleset_table_check(const struct ruleset *rs, size_t table);

/* Counts what happened to a unique violation on the scope's i-th table. */
void scope_count_translation(struct scope *s, size_t i, enum translate_reason reason);
uint64_t ruleset_translation_count(const struct ruleset *rs, size_t table,
                                   enum translate_reason reason);

/* Whether errors on the scope's i-th table may be reported as success:
 * translate_errors is on and the rule is not in shadow mode (which changes
 * nothing the client sees). */
bool scope_translates(const struct scope *s, size_t i);

/* Which registered table of the scope schema.name is, directly or as one of
 * its partitions; -1 when none. */
int scope_find_table(const struct scope *s, const char *schema, const char *name);

#endif
