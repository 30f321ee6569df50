/*
 * catalog: what the server's catalogs say about the registered tables, and
 * therefore what the rewrite may do to each.
 *
 * A rewrite must never cause an error the application would not have had:
 * a conflict target that matches no unique index fails with 42P10, a
 * DEFERRABLE arbiter with 55000, DO UPDATE without UPDATE privilege with
 * 42501. The proxy learns the facts with one query of its own per database
 * and role (catalog_query), feeds the rows of its answer to
 * catalog_add_row, and asks catalog_decide for each rule.
 *
 * Pure: text and bytes in, decisions out.
 */
#ifndef IDEM_CATALOG_H
#define IDEM_CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "rewrite.h"

struct catalog_rel {
    char *schema, *name;
    char relkind;     /* 'r' table, 'p' partitioned table, ... */
    bool registered;  /* named by a rule (not just found on a search_path) */
    bool has_rules;   /* INSERT or UPDATE rules: ON CONFLICT is not supported */
    bool row_security; /* row-level security applies to the role */
};

struct catalog_index {
    char *schema, *table, *name;
    bool unique, immediate, partial, valid, ready;
    bool has_expression; /* some key column is an expression */
    struct name_list columns; /* key columns, in index order */
};

struct catalog_attr {
    char *schema, *table, *name;
    bool updatable;   /* neither GENERATED ALWAYS AS IDENTITY nor generated */
    bool can_select, can_update; /* the role's column privileges */
};

/* A partition (at any depth) of a registered table. */
struct catalog_partition {
    char *schema, *name;
    char *root_schema, *root_name;
};

struct catalog {
    struct catalog_rel *rels;
    size_t nrels;
    struct catalog_index *indexes;
    size_t nindexes;
    struct catalog_attr *attrs;
    size_t nattrs;
    struct catalog_partition *parts;
    size_t nparts;
};

/* Runs just before catalog_query, in the same implicit transaction, so
 * that the answer is the same whichever session of the scope asks: names
 * resolve in pg_catalog first and the session's temporary schema last (a
 * search_path could put a schema with an "=" or an unnest() of its own
 * ahead of pg_catalog, and a temporary type named text shadows the real
 * one), and the answer is in UTF-8, as the configuration's names are (a
 * LATIN1 session's would not match them). Both settings end with the
 * transaction, before the client's next request; it returns no row. */
#define CATALOG_SETTINGS_SQL                                                              \
    "/* idemproxy: the settings its catalog query is read under */\n"                     \
    "SELECT FROM (VALUES (pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true), " \
    "pg_catalog.set_config('client_encoding', 'UTF8', true))) AS s(path, encoding) "      \
    "WHERE path IS NULL"

/* Inside a transaction block either query and its settings run between
 * these: the savepoint first, then a rollback to it and its release
 * whatever the answer, which undo the LOCAL settings; after a failure the
 * rollback and the release go alone. */
#define QUESTION_SQL_SAVEPOINT "SAVEPOINT idemproxy_question"
#define QUESTION_SQL_ROLLBACK_TO "ROLLBACK TO SAVEPOINT idemproxy_question"
#define QUESTION_SQL_RELEASE "RELEASE SAVEPOINT idemproxy_question"

/* The query that learns everything about the tables of rules[0..n), as one
 * statement, to run after CATALOG_SETTINGS_SQL: privileges and row-level
 * security as they are for a session running as role, whichever role the
 * session that asks runs as. Its rows have CATALOG_COLUMNS text columns.
 * Returns a malloc'ed string, or NULL when out of memory. */
#define CATALOG_COLUMNS 9
char *catalog_query(const struct table_rule *const *rules, size_t n, const char *role);

/* Runs just before catalog_identity_query, in the same implicit
 * transaction, so that its literals are read in UTF-8, as the
 * configuration's names are. The setting ends with the transaction; it
 * returns no row. */
#define IDENTITY_SETTINGS_SQL                                                         \
    "/* idemproxy: the settings its question about the session is read under */\n"    \
    "SELECT FROM (VALUES (pg_catalog.set_config('client_encoding', 'UTF8', true))) " \
    "AS s(encoding) WHERE encoding IS NULL"

/* The query that asks a session what the catalog check cannot know for
 * it: the role it runs as (current_user), whose privileges its statements
 * are checked against; for each of rules[0..n) whether the rule's name
 * without a schema means the rule's table there, under the session's own
 * search_path (temporary tables included); and what PostgreSQL looks names
 * up by again before it runs a prepared statement (its role, and the
 * schemas it searches: current_schemas(true), the temporary schema once
 * there is one). Unlike the catalog query it runs under that path, which
 * is the point: every function and operator in it is named with its
 * schema, so that none of the session's schemas can stand in for them. Its
 * answer is one row (catalog_identity_answer). Returns a malloc'ed string,
 * or NULL when out of memory. */
char *catalog_identity_query(const struct table_rule *const *rules, size_t n);

/* The answer's row, pointing into its DataRow body. */
struct identity_row {
    const char *role;      /* role_len bytes, no NUL among them */
    size_t role_len;
    const char *flags;     /* n characters, 't' or 'f', one per rule in order */
    const char *signature; /* the role and the schemas searched */
    size_t signature_len;
};

/* Reads the answer's DataRow body for n rules. False when malformed. */
bool catalog_identity_answer(const uint8_t *body, size_t len, size_t n,
                             struct identity_row *out);

void catalog_init(struct catalog *cat);
void catalog_free(struct catalog *cat);

/* Takes one DataRow body of the query's answer. False when the row is
 * malformed or memory ran out (the caller then trusts nothing). */
bool catalog_add_row(struct catalog *cat, const uint8_t *body, size_t len);

/* What the rewrite may do to one table. */
struct table_verdict {
    bool exists;
    bool unqualified_ok;
    char *clause_plain, *clause_returning; /* malloc'ed; NULL when refused */
    enum rewrite_reason why_plain, why_returning;
    char problem[256]; /* why a form was refused, for the log; "" when none */
};

/* Decides for rule from the facts in cat. False only on out of memory. */
bool catalog_decide(const struct catalog *cat, const struct table_rule *rule,
                    struct table_verdict *out);

void table_verdict_free(struct table_verdict *v);

/* The registered table a partition belongs to (schema and name of the
 * root), or false when schema.name is not a partition of one. */
bool catalog_partition_root(const struct catalog *cat, const char *schema, const char *name,
                            const char **root_schema, const char **root_name);

#endif
