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
 * A scope is what applies to one database and login role: the tables whose
 * rules cover that database, what the catalog check allows for each (the
 * catalog is learnt once per scope, see catalog.h), and a bounded cache of
 * decisions by statement text, so that a statement seen before costs one
 * hash lookup instead of a parse.
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
#include "rewrite.h"
#include "translate.h"

struct ruleset;
struct scope;

/* What happened to the INSERTs into one registered table and to the unique
 * violations on it. */
struct table_counters {
    struct counter rewrite[RR_COUNT];
    struct counter translation[TR_COUNT];
};

/* Takes ownership of cfg. counters, when not NULL, gives for each table of
 * cfg the counters to count in: the caller's, so that counts outlive the
 * ruleset (they must outlive it too). With NULL the ruleset counts in its
 * own. NULL when out of memory (cfg is then freed). */
struct ruleset *ruleset_new(struct config *cfg, struct table_counters *const *counters);
struct ruleset *ruleset_ref(struct ruleset *rs);
void ruleset_unref(struct ruleset *rs);
const struct config *ruleset_config(const struct ruleset *rs);

enum scope_state {
    SCOPE_PASSTHROUGH, /* no registered table applies: nothing to inspect */
    SCOPE_UNKNOWN,     /* the catalog must be learnt before the first statement */
    SCOPE_READY,
};

/* The scope for a database and login role, created on first use. NULL when
 * out of memory. It lives as long as its ruleset. */
struct scope *ruleset_scope(struct ruleset *rs, const char *database, const char *user);

enum scope_state scope_state(const struct scope *s);

/* The query that learns this scope's catalog; NULL when out of memory. */
const char *scope_catalog_query(struct scope *s);

/* Takes what the catalog says and decides per table; the scope becomes
 * READY. A scope already READY keeps what it has. False when out of memory
 * (the scope stays UNKNOWN). */
bool scope_learn(struct scope *s, const struct catalog *cat);

/* For the log after scope_learn: the i-th table of the scope, and why some
 * form of INSERT into it will not be rewritten ("" when nothing). */
size_t scope_table_count(const struct scope *s);
const struct table_rule *scope_table(const struct scope *s, size_t i);
const char *scope_table_problem(const struct scope *s, size_t i);

/* A decision about one statement text, shared by the cache and every
 * request it was made for. */
struct decision {
    unsigned refs;
    struct rewrite_result result;
};

void decision_unref(struct decision *d);

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
 * texts that concern no registered table. */
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
