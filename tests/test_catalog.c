/*
 * Unit tests for catalog: the text of the catalog query, the reading of its
 * DataRows, and the decision per table that follows from them.
 *
 * No server is needed: the catalogs here are synthetic, written as the rows
 * the query returns. Their shape was taken from the query's real answer on
 * PostgreSQL 15 for tables built to match each case (a DEFERRABLE unique
 * constraint, an identity column, a partial and an expression index, an
 * index left invalid by a failed CREATE INDEX CONCURRENTLY, row-level
 * security for a non-superuser, a partition tree, schema and table names
 * with quotes and backslashes), and the query itself was run there with
 * standard_conforming_strings both on and off. The clauses expected below
 * were run there on tables of the same shape; the refusals for deferrable,
 * partial, expression, invalid and wider indexes, identity columns and
 * missing privileges each stand for an error the server gave there.
 *
 * DataRow bodies are handed over in heap blocks of exactly their size, so
 * that AddressSanitizer or valgrind flags a read past the end; and every
 * catalog is freed, so that a leak on a rejected row shows.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "catalog.h"
#include "config.h"
#include "pgproto.h"
#include "rewrite.h"

/* ---- configurations ---------------------------------------------------- */

/* tables is the text after "[idemproxy]": one or more [table] sections. */
static struct config *parse_config(const char *tables)
{
    char err[CONFIG_ERR_LEN], text[4096];
    int n = snprintf(text, sizeof(text), "[idemproxy]\n%s", tables);
    assert_true(n > 0 && (size_t)n < sizeof(text));
    struct config *cfg = config_parse(text, (size_t)n, "test.ini", err);
    if (!cfg)
        fail_msg("config: %s\n--- text ---\n%s", err, text);
    return cfg;
}

static char *query_for(const struct config *cfg)
{
    const struct table_rule **rules = calloc(cfg->table_count, sizeof(*rules));
    assert_non_null(rules);
    for (size_t i = 0; i < cfg->table_count; i++)
        rules[i] = &cfg->tables[i];
    char *sql = catalog_query(rules, cfg->table_count, "app'user");
    free(rules);
    assert_non_null(sql);
    return sql;
}

#define assert_contains(haystack, needle)                                        \
    do {                                                                        \
        if (!strstr((haystack), (needle)))                                      \
            fail_msg("expected \"%s\" in:\n%s", (needle), (haystack));          \
    } while (0)

/* ---- DataRow bodies ---------------------------------------------------- */

struct body {
    uint8_t *data;
    size_t len, cap;
};

static void put(struct body *b, const void *bytes, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n)
            cap *= 2;
        b->data = realloc(b->data, cap);
        assert_non_null(b->data);
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, bytes, n);
    b->len += n;
}

static void put_u16(struct body *b, uint16_t v)
{
    uint8_t x[2] = { (uint8_t)(v >> 8), (uint8_t)v };
    put(b, x, 2);
}

static void put_u32(struct body *b, uint32_t v)
{
    uint8_t x[4];
    pg_put_u32(x, v);
    put(b, x, 4);
}

/* One column: its length and bytes, or -1 for NULL. */
static void put_col(struct body *b, const char *value)
{
    if (!value) {
        put_u32(b, UINT32_MAX);
        return;
    }
    put_u32(b, (uint32_t)strlen(value));
    put(b, value, strlen(value));
}

/* Feeds the body from a heap block of exactly its length. */
static bool feed(struct catalog *cat, struct body *b)
{
    uint8_t *exact = malloc(b->len ? b->len : 1);
    assert_non_null(exact);
    if (b->len)
        memcpy(exact, b->data, b->len);
    bool ok = catalog_add_row(cat, exact, b->len);
    free(exact);
    free(b->data);
    memset(b, 0, sizeof(*b));
    return ok;
}

/* A well-formed row of CATALOG_COLUMNS columns (missing ones are NULL). */
static bool add_row(struct catalog *cat, const char *const col[CATALOG_COLUMNS])
{
    struct body b = { 0 };
    put_u16(&b, CATALOG_COLUMNS);
    for (int i = 0; i < CATALOG_COLUMNS; i++)
        put_col(&b, col[i]);
    return feed(cat, &b);
}

#define ROW(cat, ...) add_row((cat), (const char *const[CATALOG_COLUMNS]){ __VA_ARGS__ })

/* Rows written one per line, columns separated by spaces: "~" is NULL and
 * "''" the empty string, trailing columns left out are NULL. Every line
 * must be accepted. */
static void load(struct catalog *cat, const char *rows)
{
    char *copy = strdup(rows);
    assert_non_null(copy);
    char *save_line = NULL;
    for (char *line = strtok_r(copy, "\n", &save_line); line;
         line = strtok_r(NULL, "\n", &save_line)) {
        const char *col[CATALOG_COLUMNS] = { NULL };
        char *save_col = NULL;
        int n = 0;
        for (char *tok = strtok_r(line, " ", &save_col); tok; tok = strtok_r(NULL, " ", &save_col)) {
            if (n == CATALOG_COLUMNS)
                fail_msg("too many columns in row \"%s\"", line);
            col[n++] = strcmp(tok, "~") == 0 ? NULL : strcmp(tok, "''") == 0 ? "" : tok;
        }
        if (n > 0 && !add_row(cat, col))
            fail_msg("row rejected: %s ...", col[0] ? col[0] : "~");
    }
    free(copy);
}

/* ---- catalog_query ----------------------------------------------------- */

static void test_query_one_table(void **state)
{
    (void)state;
    struct config *cfg = parse_config("[table public.webhook_events]\nconflict = idempotency_key\n");
    char *sql = query_for(cfg);

    assert_contains(sql, "want(nsp, rel) AS (VALUES ('public'::name, 'webhook_events'::name)),");
    assert_contains(sql, "path(nsp) AS (VALUES ('public'::name)),");
    /* Privileges and row-level security are the named role's, never the
     * asking session's. */
    assert_contains(sql, "who(role) AS (VALUES ('app''user'::name)),");
    assert_null(strstr(sql, "session_user"));
    assert_null(strstr(sql, "current_user"));
    /* One simple-protocol statement: nothing after the last row source. */
    assert_null(strchr(sql, ';'));
    free(sql);
    config_unref(cfg);
}

/* Whatever standard_conforming_strings says, '' is a quote, and inside E''
 * a doubled backslash is one backslash. */
static void test_query_quotes_names(void **state)
{
    (void)state;
    struct config *cfg = parse_config(
        "[table \"o'brien\".orders]\nconflict = id\nsearch_path = app, \"Sch'ema\", public\n"
        "[table \"back\\slash\".\"x\"]\nconflict = id\nsearch_path = \"back\\slash\"\n"
        "[table \"it's\\both\".\"it's\\both\"]\nconflict = id\nsearch_path = \"it's\\both\"\n");
    char *sql = query_for(cfg);

    assert_contains(sql, "VALUES ('o''brien'::name, 'orders'::name), "
                         "(E'back\\\\slash'::name, 'x'::name), "
                         "(E'it''s\\\\both'::name, E'it''s\\\\both'::name)),");
    /* Every rule's search_path, in order. */
    assert_contains(sql, "path(nsp) AS (VALUES ('app'::name), ('Sch''ema'::name), ('public'::name), "
                         "(E'back\\\\slash'::name), (E'it''s\\\\both'::name)),");
    /* No raw name leaks out unquoted. */
    assert_null(strstr(sql, "'o'b"));
    assert_null(strstr(sql, "'back\\slash'"));
    free(sql);
    config_unref(cfg);
}

/* ---- catalog_identity_query -------------------------------------------- */

/* The question names each table twice for to_regclass, without and with
 * its schema, as quoted identifiers inside literals, and asks for the
 * role; nothing is left to the session's search_path but the table names
 * themselves. The named schema is looked into only when the role may use
 * it, where to_regclass would raise. */
static void test_identity_query(void **state)
{
    (void)state;
    struct config *cfg = parse_config(
        "[table public.orders]\nconflict = id\n"
        "[table \"o'brien\".\"we\"\"ird\"]\nconflict = id\n"
        "[table \"back\\slash\".x]\nconflict = id\n");
    const struct table_rule *rules[3];
    for (size_t i = 0; i < 3; i++)
        rules[i] = &cfg->tables[i];
    char *sql = catalog_identity_query(rules, 3);

    assert_non_null(sql);
    assert_contains(sql, "SELECT current_user::pg_catalog.text,\n  ''\n  OPERATOR(pg_catalog.||) ");
    assert_contains(sql, "pg_catalog.to_regclass('\"orders\"') OPERATOR(pg_catalog.=) "
                         "CASE WHEN pg_catalog.has_schema_privilege(pg_catalog.to_regnamespace("
                         "'\"public\"'), 'USAGE') THEN "
                         "pg_catalog.to_regclass('\"public\".\"orders\"') END");
    assert_contains(sql, "pg_catalog.to_regclass('\"we\"\"ird\"') OPERATOR(pg_catalog.=) "
                         "CASE WHEN pg_catalog.has_schema_privilege(pg_catalog.to_regnamespace("
                         "'\"o''brien\"'), 'USAGE') THEN "
                         "pg_catalog.to_regclass('\"o''brien\".\"we\"\"ird\"') END");
    assert_contains(sql, "pg_catalog.to_regnamespace(E'\"back\\\\slash\"')");
    assert_contains(sql, "pg_catalog.to_regclass(E'\"back\\\\slash\".\"x\"')");
    assert_contains(sql, "pg_catalog.current_schemas(true)::pg_catalog.text");
    /* One flag per table, in order. */
    size_t cases = 0;
    for (const char *at = sql; (at = strstr(at, "THEN 't' ELSE 'f' END")); at++)
        cases++;
    assert_int_equal(cases, 3);
    assert_null(strchr(sql, ';'));
    free(sql);
    config_unref(cfg);
}

/* The answer is the role, a text column of 't' and 'f', one per table,
 * and the signature; anything else is refused. */
static void test_identity_answer(void **state)
{
    (void)state;
    static const uint8_t ok[] = { 0, 3, 0, 0, 0, 2, 'b', 'o', 0, 0, 0, 2, 't', 'f',
                                  0, 0, 0, 4, 'b', 'o', ' ', 'x' };
    static const uint8_t none[] = { 0, 3, 0, 0, 0, 1, 'r', 0, 0, 0, 0, 0, 0, 0, 1, 's' };
    static const uint8_t two[] = { 0, 2, 0, 0, 0, 2, 't', 'f', 0, 0, 0, 1, 'a' };
    static const uint8_t other[] = { 0, 3, 0, 0, 0, 1, 'r', 0, 0, 0, 2, 't', 'x',
                                     0, 0, 0, 1, 'a' };
    static const uint8_t null_role[] = { 0, 3, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
                                         0, 0, 0, 1, 's' };
    static const uint8_t nul_in_role[] = { 0, 3, 0, 0, 0, 2, 'r', 0, 0, 0, 0, 0,
                                           0, 0, 0, 1, 's' };
    static const uint8_t null_signature[] = { 0, 3, 0, 0, 0, 1, 'r', 0, 0, 0, 0,
                                              0xff, 0xff, 0xff, 0xff };
    static const uint8_t trailing[] = { 0, 3, 0, 0, 0, 1, 'r', 0, 0, 0, 0, 0, 0, 0, 1, 's', 0 };
    static const uint8_t cut[] = { 0, 3, 0, 0, 0, 1, 'r', 0, 0, 0, 0, 0, 0, 0, 2, 's' };
    struct identity_row r;

    assert_true(catalog_identity_answer(ok, sizeof(ok), 2, &r));
    assert_int_equal(r.role_len, 2);
    assert_memory_equal(r.role, "bo", 2);
    assert_memory_equal(r.flags, "tf", 2);
    assert_int_equal(r.signature_len, 4);
    assert_memory_equal(r.signature, "bo x", 4);
    assert_true(catalog_identity_answer(none, sizeof(none), 0, &r));
    assert_false(catalog_identity_answer(ok, sizeof(ok), 3, &r));
    assert_false(catalog_identity_answer(ok, sizeof(ok), 1, &r));
    assert_false(catalog_identity_answer(two, sizeof(two), 2, &r));
    assert_false(catalog_identity_answer(other, sizeof(other), 2, &r));
    assert_false(catalog_identity_answer(null_role, sizeof(null_role), 0, &r));
    assert_false(catalog_identity_answer(nul_in_role, sizeof(nul_in_role), 0, &r));
    assert_false(catalog_identity_answer(null_signature, sizeof(null_signature), 0, &r));
    assert_false(catalog_identity_answer(trailing, sizeof(trailing), 0, &r));
    assert_false(catalog_identity_answer(cut, sizeof(cut), 0, &r));
    assert_false(catalog_identity_answer(ok, 1, 2, &r));
    assert_false(catalog_identity_answer(ok, 3, 2, &r));
}

/* ---- catalog_add_row --------------------------------------------------- */

static void test_rows_of_each_kind(void **state)
{
    (void)state;
    struct catalog cat;
    catalog_init(&cat);

    assert_true(ROW(&cat, "r", "public", "t", "r", "true", "false", "true"));
    assert_true(ROW(&cat, "r", "app", "t", "v", "false", "true", "false"));
    assert_true(ROW(&cat, "i", "public", "t", "t_a_b_key", "true", "false", "true", "false", "true"));
    /* Key columns come in any order; the server's does not follow position. */
    assert_true(ROW(&cat, "k", "public", "t", "t_a_b_key", "2", "b"));
    assert_true(ROW(&cat, "k", "public", "t", "t_a_b_key", "1", "a"));
    assert_true(ROW(&cat, "i", "public", "t", "t_lower_idx", "true", "true", "false", "true", "true"));
    assert_true(ROW(&cat, "k", "public", "t", "t_lower_idx", "1", NULL));
    assert_true(ROW(&cat, "a", "public", "t", "gid", "false", "true", "false"));
    assert_true(ROW(&cat, "p", "public", "t_2024", "", "public", "t"));

    assert_int_equal(cat.nrels, 2);
    assert_string_equal(cat.rels[0].schema, "public");
    assert_string_equal(cat.rels[0].name, "t");
    assert_int_equal(cat.rels[0].relkind, 'r');
    assert_true(cat.rels[0].registered);
    assert_false(cat.rels[0].has_rules);
    assert_true(cat.rels[0].row_security);
    assert_int_equal(cat.rels[1].relkind, 'v');
    assert_false(cat.rels[1].registered);
    assert_true(cat.rels[1].has_rules);
    assert_false(cat.rels[1].row_security);

    assert_int_equal(cat.nindexes, 2);
    const struct catalog_index *x = &cat.indexes[0];
    assert_string_equal(x->schema, "public");
    assert_string_equal(x->table, "t");
    assert_string_equal(x->name, "t_a_b_key");
    assert_true(x->unique);
    assert_false(x->immediate);
    assert_true(x->partial);
    assert_false(x->valid);
    assert_true(x->ready);
    assert_false(x->has_expression);
    assert_int_equal(x->columns.count, 2);
    assert_string_equal(x->columns.names[0], "a");
    assert_string_equal(x->columns.names[1], "b");
    assert_true(cat.indexes[1].has_expression);
    assert_int_equal(cat.indexes[1].columns.count, 0);

    assert_int_equal(cat.nattrs, 1);
    assert_string_equal(cat.attrs[0].name, "gid");
    assert_false(cat.attrs[0].updatable);
    assert_true(cat.attrs[0].can_select);
    assert_false(cat.attrs[0].can_update);

    assert_int_equal(cat.nparts, 1);
    assert_string_equal(cat.parts[0].schema, "public");
    assert_string_equal(cat.parts[0].name, "t_2024");
    assert_string_equal(cat.parts[0].root_schema, "public");
    assert_string_equal(cat.parts[0].root_name, "t");

    catalog_free(&cat);
    assert_int_equal(cat.nrels + cat.nindexes + cat.nattrs + cat.nparts, 0);
    /* Freed twice is harmless: catalog_free leaves an empty catalog. */
    catalog_free(&cat);
}

/* A malformed row is refused whole: nothing of it is kept, and nothing of
 * it leaks. The catalog is left as it was. */
#define assert_refused(cat, expr)                                               \
    do {                                                                        \
        size_t before_ = (cat)->nrels + (cat)->nindexes + (cat)->nattrs + (cat)->nparts; \
        assert_false(expr);                                                     \
        assert_int_equal((cat)->nrels + (cat)->nindexes + (cat)->nattrs + (cat)->nparts, \
                         before_);                                              \
    } while (0)

/* A row of n columns, all "x" except the first, which is kind. */
static bool row_with_count(struct catalog *cat, uint16_t n, const char *kind)
{
    struct body b = { 0 };
    put_u16(&b, n);
    for (uint16_t i = 0; i < n; i++)
        put_col(&b, i == 0 ? kind : "x");
    return feed(cat, &b);
}

/* A good 'r' row cut to its first keep bytes, or (keep 0) one byte short. */
static bool truncated_row(struct catalog *cat, size_t keep)
{
    struct body b = { 0 };
    put_u16(&b, CATALOG_COLUMNS);
    const char *col[CATALOG_COLUMNS] = { "r", "public", "t", "r", "true", "false", "false" };
    for (int i = 0; i < CATALOG_COLUMNS; i++)
        put_col(&b, col[i]);
    assert_true(keep < b.len);
    b.len = keep ? keep : b.len - 1;
    return feed(cat, &b);
}

static void test_rows_malformed(void **state)
{
    (void)state;
    struct catalog cat;
    catalog_init(&cat);
    load(&cat, "r public t r true false false\n"
               "i public t t_k_key true true false true true\n");

    /* Framing. */
    struct body b = { 0 };
    assert_refused(&cat, feed(&cat, &b));
    put(&b, "\0", 1);
    assert_refused(&cat, feed(&cat, &b));
    assert_refused(&cat, row_with_count(&cat, CATALOG_COLUMNS - 1, "r"));
    assert_refused(&cat, row_with_count(&cat, CATALOG_COLUMNS + 1, "r"));
    assert_refused(&cat, row_with_count(&cat, 0, "r"));
    /* Cut inside the count, a length, a value, and just before the end. */
    assert_refused(&cat, truncated_row(&cat, 1));
    assert_refused(&cat, truncated_row(&cat, 4));
    assert_refused(&cat, truncated_row(&cat, 2 + 4 + 1 + 4 + 3));
    assert_refused(&cat, truncated_row(&cat, 0));

    /* A length beyond the body, or any negative one but -1. */
    const uint32_t lens[] = { 100, 0x7fffffff, 0x80000000, UINT32_MAX - 1 };
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        put_u16(&b, CATALOG_COLUMNS);
        put_col(&b, "r");
        put_u32(&b, lens[i]);
        put(&b, "public", 6);
        for (int c = 2; c < CATALOG_COLUMNS; c++)
            put_col(&b, "x");
        assert_refused(&cat, feed(&cat, &b));
    }

    /* Bytes after the last column. */
    put_u16(&b, CATALOG_COLUMNS);
    put_col(&b, "r");
    put_col(&b, "public");
    put_col(&b, "t2");
    for (int c = 3; c < CATALOG_COLUMNS; c++)
        put_col(&b, NULL);
    put(&b, "!", 1);
    assert_refused(&cat, feed(&cat, &b));

    /* Well-formed rows that say nothing the catalog can use. */
    assert_refused(&cat, ROW(&cat, "x", "public", "t"));
    assert_refused(&cat, ROW(&cat, "", "public", "t"));
    assert_refused(&cat, ROW(&cat, "rr", "public", "t", "r", "true", "false", "false"));
    assert_refused(&cat, ROW(&cat, NULL, "public", "t", "r", "true", "false", "false"));
    assert_refused(&cat, ROW(&cat, "r", NULL, "t", "r", "true", "false", "false"));
    assert_refused(&cat, ROW(&cat, "r", "public", NULL, "r", "true", "false", "false"));
    assert_refused(&cat, ROW(&cat, "i", "public", "t", NULL, "true", "true", "false", "true", "true"));
    assert_refused(&cat, ROW(&cat, "a", "public", "t", NULL, "true", "true", "true"));
    assert_refused(&cat, ROW(&cat, "p", "public", "t_1", "", NULL, "t"));
    assert_refused(&cat, ROW(&cat, "p", "public", "t_1", "", "public", NULL));
    /* A key column of an index that has not been seen, here or elsewhere. */
    assert_refused(&cat, ROW(&cat, "k", "public", "t", "t_nope", "1", "k"));
    assert_refused(&cat, ROW(&cat, "k", "app", "t", "t_k_key", "1", "k"));
    assert_refused(&cat, ROW(&cat, "k", "public", "t", "t_k_key", NULL, "k"));
    /* Positions outside what an index can have. */
    assert_refused(&cat, ROW(&cat, "k", "public", "t", "t_k_key", "0", "k"));
    assert_refused(&cat, ROW(&cat, "k", "public", "t", "t_k_key", "33", "k"));
    assert_refused(&cat, ROW(&cat, "k", "public", "t", "t_k_key", "-1", "k"));
    assert_int_equal(cat.indexes[0].columns.count, 0);

    /* After all that, the catalog still takes good rows. */
    assert_true(ROW(&cat, "k", "public", "t", "t_k_key", "1", "k"));
    assert_int_equal(cat.indexes[0].columns.count, 1);
    assert_int_equal(cat.nrels, 1);
    catalog_free(&cat);
}

/* ---- catalog_decide ---------------------------------------------------- */

/* public.t as most cases have it: id (primary key), k, a, b, v, w. */
#define REL_T "r public t r true false false\n"
#define ATTRS_T                                                                 \
    "a public t id true true true\n"                                            \
    "a public t k true true true\n"                                             \
    "a public t a true true true\n"                                             \
    "a public t b true true true\n"                                             \
    "a public t v true true true\n"                                             \
    "a public t w true true true\n"
#define PKEY_T "i public t t_pkey true true false true true\nk public t t_pkey 1 id\n"
#define KEY_K "i public t t_k_key true true false true true\nk public t t_k_key 1 k\n"
#define BASE_T REL_T ATTRS_T PKEY_T

#define CONF_T "[table public.t]\n"

#define K_NOTHING " ON CONFLICT (\"k\") DO NOTHING"
#define K_SELF " ON CONFLICT (\"k\") DO UPDATE SET \"k\" = EXCLUDED.\"k\""
#define ANY_NOTHING " ON CONFLICT DO NOTHING"

#define RW RR_REWRITTEN
#define NO RR_FORBIDDEN

struct decide_case {
    const char *name;
    const char *conf;    /* [table] sections: the first one is decided */
    const char *rows;    /* the catalog, as for load() */
    bool exists, unqualified_ok;
    const char *plain, *returning; /* exact clauses; NULL: refused */
    enum rewrite_reason why_plain, why_returning;
    const char *problem; /* part of the problem; NULL: none expected */
};

static const struct decide_case decide_cases[] = {
    /* The actions, on a table that allows everything. */
    { "auto", CONF_T "conflict = k\n", BASE_T KEY_K,
      true, true, K_NOTHING, K_SELF, RW, RW, NULL },
    { "do_nothing", CONF_T "conflict = k\naction = do_nothing\n", BASE_T KEY_K,
      true, true, K_NOTHING, K_NOTHING, RW, RW, NULL },
    { "return_existing", CONF_T "conflict = k\naction = return_existing\n", BASE_T KEY_K,
      true, true, K_SELF, K_SELF, RW, RW, NULL },
    { "do_update", CONF_T "conflict = k\naction = do_update\nupdate_columns = v, w\n", BASE_T KEY_K,
      true, true,
      " ON CONFLICT (\"k\") DO UPDATE SET \"v\" = EXCLUDED.\"v\", \"w\" = EXCLUDED.\"w\"",
      " ON CONFLICT (\"k\") DO UPDATE SET \"v\" = EXCLUDED.\"v\", \"w\" = EXCLUDED.\"w\"",
      RW, RW, NULL },
    /* action = none is a choice, not a refusal: no problem to log. */
    { "none", CONF_T "conflict = k\naction = none\n", BASE_T KEY_K,
      true, true, NULL, NULL, RR_ACTION_NONE, RR_ACTION_NONE, NULL },
    { "none, missing table", CONF_T "action = none\n", "",
      false, false, NULL, NULL, RR_ACTION_NONE, RR_ACTION_NONE, NULL },

    /* The relation itself. */
    { "missing table", CONF_T "conflict = k\n", "r public other r true false false\n",
      false, false, NULL, NULL, NO, NO, "does not exist" },
    { "view", CONF_T "conflict = k\n", "r public t v true false false\n" ATTRS_T,
      true, true, NULL, NULL, NO, NO, "relkind 'v'" },
    { "partitioned table", CONF_T "conflict = k\n",
      "r public t p true false false\n" ATTRS_T KEY_K,
      true, true, K_NOTHING, K_SELF, RW, RW, NULL },
    /* A partition's own DEFERRABLE constraint is an arbiter of the
     * untargeted form (each leaf checks all of its unique indexes), but not
     * of ON CONFLICT (k), whose arbiters are the parent's. */
    { "partition's deferrable, untargeted", CONF_T "action = do_nothing\n",
      "r public t p true false false\n" ATTRS_T KEY_K
      "i public t_2024 t_2024_v_key true false false true true\nk public t_2024 t_2024_v_key 1 v\n"
      "p public t_2024 '' public t\n",
      true, true, NULL, NULL, NO, NO, "t_2024_v_key is DEFERRABLE" },
    { "partition's deferrable, targeted", CONF_T "conflict = k\n",
      "r public t p true false false\n" ATTRS_T KEY_K
      "i public t_2024 t_2024_v_key true false false true true\nk public t_2024 t_2024_v_key 1 v\n"
      "p public t_2024 '' public t\n",
      true, true, K_NOTHING, K_SELF, RW, RW, NULL },
    { "insert rules", CONF_T "conflict = k\n", "r public t r true true false\n" ATTRS_T KEY_K,
      true, true, NULL, NULL, NO, NO, "rules" },

    /* Which index ON CONFLICT (target) infers. */
    { "column order irrelevant", CONF_T "conflict = b, a\n",
      BASE_T "i public t t_a_b_key true true false true true\n"
             "k public t t_a_b_key 2 b\nk public t t_a_b_key 1 a\n",
      true, true, " ON CONFLICT (\"b\", \"a\") DO NOTHING",
      " ON CONFLICT (\"b\", \"a\") DO UPDATE SET \"b\" = EXCLUDED.\"b\"", RW, RW, NULL },
    { "deferrable only", CONF_T "conflict = k\n",
      BASE_T "i public t t_k_key true false false true true\nk public t t_k_key 1 k\n",
      true, true, NULL, NULL, NO, NO, "t_k_key on (k) is DEFERRABLE" },
    /* Inference takes every matching index, so the deferrable one is an
     * arbiter too, whatever order the rows come in. */
    { "immediate and deferrable", CONF_T "conflict = k\n",
      BASE_T KEY_K "i public t t_k_def true false false true true\nk public t t_k_def 1 k\n",
      true, true, NULL, NULL, NO, NO, "t_k_def on (k) is DEFERRABLE" },
    { "deferrable and immediate", CONF_T "conflict = k\n",
      BASE_T "i public t t_k_def true false false true true\nk public t t_k_def 1 k\n" KEY_K,
      true, true, NULL, NULL, NO, NO, "t_k_def on (k) is DEFERRABLE" },
    { "partial only", CONF_T "conflict = k\n",
      BASE_T "i public t t_k_idx true true true true true\nk public t t_k_idx 1 k\n",
      true, true, NULL, NULL, NO, NO, "no valid, non-partial unique index has exactly the columns (k)" },
    { "expression only", CONF_T "conflict = k\n",
      BASE_T "i public t t_lower_idx true true false true true\nk public t t_lower_idx 1 ~\n",
      true, true, NULL, NULL, NO, NO, "no valid" },
    { "column and expression", CONF_T "conflict = k\n",
      BASE_T "i public t t_k_lower_idx true true false true true\n"
             "k public t t_k_lower_idx 1 k\nk public t t_k_lower_idx 2 ~\n",
      true, true, NULL, NULL, NO, NO, "no valid" },
    { "invalid only", CONF_T "conflict = k\n",
      BASE_T "i public t t_k_idx true true false false false\nk public t t_k_idx 1 k\n",
      true, true, NULL, NULL, NO, NO, "no valid" },
    { "not unique", CONF_T "conflict = k\n",
      BASE_T "i public t t_k_excl false true false true true\nk public t t_k_excl 1 k\n",
      true, true, NULL, NULL, NO, NO, "no valid" },
    { "wider index", CONF_T "conflict = k\n",
      BASE_T "i public t t_k_a_key true true false true true\n"
             "k public t t_k_a_key 1 k\nk public t t_k_a_key 2 a\n",
      true, true, NULL, NULL, NO, NO, "no valid" },
    { "narrower index", CONF_T "conflict = k, a\n", BASE_T KEY_K,
      true, true, NULL, NULL, NO, NO, "exactly the columns (k, a)" },
    { "index of a namesake", CONF_T "conflict = k\n",
      BASE_T "r app t r true false false\n"
             "i app t t_k_key true true false true true\nk app t t_k_key 1 k\n",
      true, true, NULL, NULL, NO, NO, "no valid" },

    /* Without a target every unique or exclusion index that takes inserts
     * is an arbiter. */
    { "untargeted, all immediate", CONF_T "action = do_nothing\n",
      BASE_T KEY_K "i public t t_a_key true true false true true\nk public t t_a_key 1 a\n",
      true, true, ANY_NOTHING, ANY_NOTHING, RW, RW, NULL },
    { "untargeted, no index", CONF_T "action = do_nothing\n", REL_T ATTRS_T,
      true, true, ANY_NOTHING, ANY_NOTHING, RW, RW, NULL },
    { "untargeted, deferrable unique", CONF_T "action = do_nothing\n",
      BASE_T KEY_K "i public t t_a_key true false false true true\nk public t t_a_key 1 a\n",
      true, true, NULL, NULL, NO, NO, "t_a_key is DEFERRABLE" },
    { "untargeted, deferrable exclusion", CONF_T "action = do_nothing\n",
      BASE_T "i public t t_excl false false false true true\nk public t t_excl 1 a\n",
      true, true, NULL, NULL, NO, NO, "t_excl is DEFERRABLE" },
    /* An index still being built takes no inserts yet: the executor skips it. */
    { "untargeted, deferrable not ready", CONF_T "action = do_nothing\n",
      BASE_T "i public t t_a_key true false false false false\nk public t t_a_key 1 a\n",
      true, true, ANY_NOTHING, ANY_NOTHING, RW, RW, NULL },

    /* What DO UPDATE may set. */
    { "identity first", CONF_T "conflict = gid, k\naction = return_existing\n",
      BASE_T "a public t gid false true true\n"
             "i public t t_gid_k_key true true false true true\n"
             "k public t t_gid_k_key 1 gid\nk public t t_gid_k_key 2 k\n",
      true, true, " ON CONFLICT (\"gid\", \"k\") DO UPDATE SET \"k\" = EXCLUDED.\"k\"",
      " ON CONFLICT (\"gid\", \"k\") DO UPDATE SET \"k\" = EXCLUDED.\"k\"", RW, RW, NULL },
    { "none updatable", CONF_T "conflict = gid, g\naction = return_existing\n",
      BASE_T "a public t gid false true true\na public t g false true true\n"
             "i public t t_gid_g_key true true false true true\n"
             "k public t t_gid_g_key 1 gid\nk public t t_gid_g_key 2 g\n",
      true, true, NULL, NULL, NO, NO, "column g is generated" },
    { "none updatable, auto", CONF_T "conflict = gid\n",
      BASE_T "a public t gid false true true\n"
             "i public t t_gid_key true true false true true\nk public t t_gid_key 1 gid\n",
      true, true, " ON CONFLICT (\"gid\") DO NOTHING", NULL, RW, NO,
      "INSERT ... RETURNING: column gid is generated" },
    { "do_update, missing column", CONF_T "conflict = k\naction = do_update\nupdate_columns = v, nope\n",
      BASE_T KEY_K, true, true, NULL, NULL, NO, NO, "it has no column nope" },
    { "do_update, generated column", CONF_T "conflict = k\naction = do_update\nupdate_columns = g\n",
      BASE_T KEY_K "a public t g false true true\n", true, true, NULL, NULL, NO, NO,
      "column g is generated" },

    /* Privileges of the login role. */
    { "no SELECT on a conflict column", CONF_T "conflict = k\naction = do_nothing\n",
      REL_T PKEY_T KEY_K "a public t k true false true\n",
      true, true, NULL, NULL, NO, NO, "may not SELECT column k" },
    { "conflict column unknown", CONF_T "conflict = k\naction = do_nothing\n",
      REL_T PKEY_T KEY_K, true, true, NULL, NULL, NO, NO, "may not SELECT column k" },
    { "no UPDATE, return_existing", CONF_T "conflict = k\naction = return_existing\n",
      REL_T PKEY_T KEY_K "a public t k true true false\n",
      true, true, NULL, NULL, NO, NO, "may not UPDATE column k" },
    { "no UPDATE, do_nothing", CONF_T "conflict = k\naction = do_nothing\n",
      REL_T PKEY_T KEY_K "a public t k true true false\n",
      true, true, K_NOTHING, K_NOTHING, RW, RW, NULL },
    { "no UPDATE, auto", CONF_T "conflict = k\n",
      REL_T PKEY_T KEY_K "a public t k true true false\n",
      true, true, K_NOTHING, NULL, RW, NO, "INSERT ... RETURNING: the role may not UPDATE column k" },
    { "no UPDATE, do_update", CONF_T "conflict = k\naction = do_update\nupdate_columns = v\n",
      REL_T PKEY_T KEY_K "a public t k true true true\na public t v true true false\n",
      true, true, NULL, NULL, NO, NO, "may not UPDATE column v" },

    /* Row-level security could refuse the UPDATE of DO UPDATE. */
    { "row security, auto", CONF_T "conflict = k\n",
      "r public t r true false true\n" ATTRS_T PKEY_T KEY_K,
      true, true, K_NOTHING, NULL, RW, NO, "INSERT ... RETURNING: row-level security" },
    { "row security, do_nothing", CONF_T "conflict = k\naction = do_nothing\n",
      "r public t r true false true\n" ATTRS_T PKEY_T KEY_K,
      true, true, K_NOTHING, K_NOTHING, RW, RW, NULL },
    { "row security, return_existing", CONF_T "conflict = k\naction = return_existing\n",
      "r public t r true false true\n" ATTRS_T PKEY_T KEY_K,
      true, true, NULL, NULL, NO, NO, "row-level security" },
    { "row security, do_update", CONF_T "conflict = k\naction = do_update\nupdate_columns = v\n",
      "r public t r true false true\n" ATTRS_T PKEY_T KEY_K,
      true, true, NULL, NULL, NO, NO, "row-level security" },

    /* What an unqualified name means: the first schema on the rule's
     * search_path that has a relation of that name, of whatever kind. */
    { "unqualified, shadowed", CONF_T "conflict = k\nsearch_path = app, public\n",
      BASE_T KEY_K "r app t r false false false\n",
      true, false, K_NOTHING, K_SELF, RW, RW, NULL },
    { "unqualified, shadowed by a view", CONF_T "conflict = k\nsearch_path = app, public\n",
      BASE_T KEY_K "r app t v false false false\n",
      true, false, K_NOTHING, K_SELF, RW, RW, NULL },
    { "unqualified, first on the path", CONF_T "conflict = k\nsearch_path = app, public\n",
      BASE_T KEY_K, true, true, K_NOTHING, K_SELF, RW, RW, NULL },
    { "unqualified, shadows public", "[table app.t]\nconflict = k\nsearch_path = app, public\n",
      "r app t r true false false\na app t k true true true\n"
      "i app t t_k_key true true false true true\nk app t t_k_key 1 k\n"
      "r public t r false false false\n",
      true, true, K_NOTHING, K_SELF, RW, RW, NULL },
    { "unqualified, not on the path", "[table app.t]\nconflict = k\n",
      "r app t r true false false\na app t k true true true\n"
      "i app t t_k_key true true false true true\nk app t t_k_key 1 k\n",
      true, false, K_NOTHING, K_SELF, RW, RW, NULL },

    /* Names are quoted in clauses and compared exactly in the catalog. */
    { "quoted names", "[table \"back\\slash\".\"o'q\"]\nconflict = \"we\"\"ird\"\n"
                      "search_path = \"back\\slash\"\n",
      "r back\\slash o'q r true false false\na back\\slash o'q we\"ird true true true\n"
      "i back\\slash o'q o'q_we\"ird_key true true false true true\n"
      "k back\\slash o'q o'q_we\"ird_key 1 we\"ird\n",
      true, true, " ON CONFLICT (\"we\"\"ird\") DO NOTHING",
      " ON CONFLICT (\"we\"\"ird\") DO UPDATE SET \"we\"\"ird\" = EXCLUDED.\"we\"\"ird\"", RW, RW, NULL },
    { "case matters", "[table public.\"T\"]\nconflict = \"K\"\n", BASE_T KEY_K,
      false, false, NULL, NULL, NO, NO, "does not exist" },
};

static const char *why_name(enum rewrite_reason r)
{
    return (unsigned)r < RR_COUNT ? rewrite_reason_name(r) : "(out of range)";
}

static bool same(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static int failures;

#define mismatch(c, ...)                                                       \
    do {                                                                        \
        print_error("case \"%s\": ", (c)->name);                                \
        print_error(__VA_ARGS__);                                               \
        print_error("\n");                                                      \
        failures++;                                                             \
    } while (0)

static void check_decide(const struct decide_case *c)
{
    struct config *cfg = parse_config(c->conf);
    struct catalog cat;
    struct table_verdict v;

    catalog_init(&cat);
    load(&cat, c->rows);
    memset(&v, 0x5a, sizeof(v));
    assert_true(catalog_decide(&cat, &cfg->tables[0], &v));

    if (v.exists != c->exists)
        mismatch(c, "exists: expected %d, got %d", c->exists, v.exists);
    if (v.unqualified_ok != c->unqualified_ok)
        mismatch(c, "unqualified_ok: expected %d, got %d", c->unqualified_ok, v.unqualified_ok);
    if (!same(v.clause_plain, c->plain))
        mismatch(c, "clause_plain: expected \"%s\", got \"%s\"", c->plain ? c->plain : "NULL",
                 v.clause_plain ? v.clause_plain : "NULL");
    if (!same(v.clause_returning, c->returning))
        mismatch(c, "clause_returning: expected \"%s\", got \"%s\"",
                 c->returning ? c->returning : "NULL",
                 v.clause_returning ? v.clause_returning : "NULL");
    if (v.why_plain != c->why_plain)
        mismatch(c, "why_plain: expected %s, got %s", why_name(c->why_plain), why_name(v.why_plain));
    if (v.why_returning != c->why_returning)
        mismatch(c, "why_returning: expected %s, got %s", why_name(c->why_returning),
                 why_name(v.why_returning));
    if (!memchr(v.problem, '\0', sizeof(v.problem))) {
        mismatch(c, "problem is not terminated");
    } else {
        /* Something to log exactly when a form is refused. */
        bool refused = v.why_plain == RR_FORBIDDEN || v.why_returning == RR_FORBIDDEN;
        if (refused != (v.problem[0] != '\0'))
            mismatch(c, "problem \"%s\" for why %s/%s", v.problem, why_name(v.why_plain),
                     why_name(v.why_returning));
        if (c->problem && !strstr(v.problem, c->problem))
            mismatch(c, "problem: expected \"%s\" in \"%s\"", c->problem, v.problem);
        if (!c->problem && v.problem[0])
            mismatch(c, "problem: expected none, got \"%s\"", v.problem);
    }
    table_verdict_free(&v);
    assert_null(v.clause_plain);
    assert_null(v.clause_returning);
    catalog_free(&cat);
    config_unref(cfg);
}

static void test_decide_table(void **state)
{
    (void)state;
    failures = 0;
    for (size_t i = 0; i < sizeof(decide_cases) / sizeof(decide_cases[0]); i++)
        check_decide(&decide_cases[i]);
    if (failures)
        fail_msg("%d mismatches in %zu cases", failures,
                 sizeof(decide_cases) / sizeof(decide_cases[0]));
}

/* The problem goes into a fixed buffer: long names are cut, never overrun.
 * (The configuration's lines are limited, the catalog's names are not.) */
static void test_decide_long_names(void **state)
{
    (void)state;
    char conf[512], rows[2048], col[3][64], index[200];
    struct config *cfg;
    struct catalog cat;
    struct table_verdict v;

    for (int i = 0; i < 3; i++) {
        memset(col[i], 'a' + i, 58);
        col[i][58] = '\0';
    }
    memset(index, 'x', sizeof(index) - 1);
    index[sizeof(index) - 1] = '\0';
    snprintf(conf, sizeof(conf), CONF_T "conflict = %s, %s, %s\n", col[0], col[1], col[2]);
    snprintf(rows, sizeof(rows), "i public t %s true false false true true\n"
             "k public t %s 1 %s\nk public t %s 2 %s\nk public t %s 3 %s\n",
             index, index, col[0], index, col[1], index, col[2]);
    cfg = parse_config(conf);

    catalog_init(&cat);
    load(&cat, BASE_T);
    assert_true(catalog_decide(&cat, &cfg->tables[0], &v));
    assert_null(v.clause_plain);
    assert_non_null(memchr(v.problem, '\0', sizeof(v.problem)));
    assert_non_null(strstr(v.problem, "no valid"));
    table_verdict_free(&v);

    load(&cat, rows);
    assert_true(catalog_decide(&cat, &cfg->tables[0], &v));
    assert_null(v.clause_plain);
    assert_non_null(memchr(v.problem, '\0', sizeof(v.problem)));
    assert_non_null(strstr(v.problem, "its unique index xxx"));
    table_verdict_free(&v);
    catalog_free(&cat);
    config_unref(cfg);
}

/* Several rules decided from one catalog, as scope_learn does. */
static void test_decide_shared_catalog(void **state)
{
    (void)state;
    struct config *cfg = parse_config(CONF_T "conflict = k\n"
                                      "[table app.t]\nconflict = k\naction = do_nothing\n");
    struct catalog cat;
    struct table_verdict v;

    catalog_init(&cat);
    load(&cat, BASE_T KEY_K "r app t r true false false\n"
                              "i app t t_k_key true false false true true\nk app t t_k_key 1 k\n"
                              "a app t k true true true\n");
    assert_true(catalog_decide(&cat, &cfg->tables[0], &v));
    assert_string_equal(v.clause_plain, K_NOTHING);
    assert_string_equal(v.clause_returning, K_SELF);
    table_verdict_free(&v);
    /* app.t's index of the same name is deferrable; public.t's is not. */
    assert_true(catalog_decide(&cat, &cfg->tables[1], &v));
    assert_null(v.clause_plain);
    assert_int_equal(v.why_plain, RR_FORBIDDEN);
    assert_false(v.unqualified_ok);
    table_verdict_free(&v);
    catalog_free(&cat);
    config_unref(cfg);
}

/* ---- catalog_partition_root -------------------------------------------- */

static void test_partition_root(void **state)
{
    (void)state;
    struct catalog cat;
    const char *schema = "unset", *name = "unset";

    catalog_init(&cat);
    assert_false(catalog_partition_root(&cat, "public", "events_2024", &schema, &name));
    load(&cat, "r public events p true false false\n"
               "p public events_2024 '' public events\n"
               "p public events_2024_01 '' public events\n"
               "p archive events_old '' public events\n"
               "p \"X\" y'z '' we'ird ta\\ble\n");

    assert_true(catalog_partition_root(&cat, "public", "events_2024", &schema, &name));
    assert_string_equal(schema, "public");
    assert_string_equal(name, "events");
    /* At any depth, and in another schema than its root's. */
    assert_true(catalog_partition_root(&cat, "public", "events_2024_01", &schema, &name));
    assert_string_equal(name, "events");
    assert_true(catalog_partition_root(&cat, "archive", "events_old", &schema, &name));
    assert_string_equal(schema, "public");
    assert_true(catalog_partition_root(&cat, "\"X\"", "y'z", &schema, &name));
    assert_string_equal(schema, "we'ird");
    assert_string_equal(name, "ta\\ble");

    schema = name = "unset";
    /* The root is not a partition of itself; names match exactly. */
    assert_false(catalog_partition_root(&cat, "public", "events", &schema, &name));
    assert_false(catalog_partition_root(&cat, "archive", "events_2024", &schema, &name));
    assert_false(catalog_partition_root(&cat, "public", "Events_2024", &schema, &name));
    assert_string_equal(schema, "unset");
    assert_string_equal(name, "unset");
    catalog_free(&cat);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_one_table),
        cmocka_unit_test(test_query_quotes_names),
        cmocka_unit_test(test_identity_query),
        cmocka_unit_test(test_identity_answer),
        cmocka_unit_test(test_rows_of_each_kind),
        cmocka_unit_test(test_rows_malformed),
        cmocka_unit_test(test_decide_table),
        cmocka_unit_test(test_decide_long_names),
        cmocka_unit_test(test_decide_shared_catalog),
        cmocka_unit_test(test_partition_root),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
