/*
 * Integration tests of max_cached_statements: a rewritten INSERT that the
 * client parses as its unnamed statement is prepared once on the server,
 * as idemproxy_s<n>, and bound from then on.
 *
 * What must hold: the client cannot tell, except by speed. Its unnamed
 * statement means what it parsed last, across Syncs and Describes; a
 * Query drops it, as on the server; an error before the Parse in the same
 * pipeline leaves no stray answer; a refused Parse leaves nothing to bind;
 * the client's DEALLOCATE ALL or DISCARD ALL cannot leave the proxy binding
 * a statement that is gone; a Bind too large for the proxy to hold, or a
 * reload that drops the table's rule, still runs the statement the client
 * parsed. Where the answer is an error, it is the one PostgreSQL gives
 * directly.
 *
 * Run by tests/integration.sh (same scratch cluster as the other suites).
 * Every test starts its own proxy. Run one:
 * test_statements test_stmt_cached   (a cmocka filter, or IDEM_TEST_FILTER).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "itest.h"

static const char INSERT[] = "INSERT INTO stmt_t (k, payload) VALUES ($1, $2)";

/* ---- helpers ------------------------------------------------------------ */

static void create_table(void)
{
    itest_server_exec("DROP TABLE IF EXISTS stmt_t; "
                      "CREATE TABLE stmt_t (id bigserial PRIMARY KEY, k bigint NOT NULL UNIQUE, "
                      "payload text)");
}

static struct itest_proxy *proxy(const char *more_keys)
{
    return itest_proxy_start_table("debug", "stmt_t", "k", more_keys);
}

/* A proxy that reads no message over 1 kB: longer ones stream through. */
static struct itest_proxy *proxy_holding_1kb(void)
{
    return itest_proxy_start_with("debug", "max_held_message = 1kB\n"
                                           "[table public.stmt_t]\nconflict = k\n");
}

static void insert_tag(PGconn *c, const char *k, const char *payload, const char *tag)
{
    const char *vals[2] = { k, payload };
    PGresult *r = itest_exec_params(c, INSERT, 2, vals);
    itest_assert_tag(r, tag, "INSERT through the extended protocol");
    PQclear(r);
}

/* The session's statements named by the proxy. */
static long long cached_count(PGconn *c)
{
    return itest_query_ll(c, "SELECT count(*) FROM pg_prepared_statements "
                             "WHERE name LIKE 'idemproxy_s%'");
}

static void fails_with(PGresult *r, const char *sqlstate, const char *what)
{
    itest_assert_sqlstate(r, sqlstate, what);
    PQclear(r);
}

static void prepare_ok(PGconn *c, const char *name, const char *text, int params)
{
    PGresult *r = itest_prepare(c, name, text, params);
    itest_assert_result_ok(r, text);
    PQclear(r);
}

static void exec_prepared_tag(PGconn *c, const char *name, int n, const char *const *vals,
                              const char *tag)
{
    PGresult *r = itest_exec_prepared(c, name, n, vals);
    itest_assert_tag(r, tag, name[0] ? name : "the unnamed statement");
    PQclear(r);
}

static void prepare_unnamed_twice(PGconn *c, const char *text)
{
    /* The first Parse creates the cached copy, the second one maps to it. */
    prepare_ok(c, "", text, 2);
    prepare_ok(c, "", text, 2);
}

static void exec_unnamed(PGconn *c, const char *k, const char *payload, const char *tag)
{
    const char *vals[2] = { k, payload };
    exec_prepared_tag(c, "", 2, vals, tag);
}

/* ---- tests --------------------------------------------------------------- */

/* Whether two results carry the same error, field by field, but for where
 * in the server's sources it was raised. */
static void same_error(PGresult *a, PGresult *b, const char *what)
{
    static const struct {
        int code;
        const char *name;
    } fields[] = {
        { PG_DIAG_SEVERITY_NONLOCALIZED, "severity" },
        { PG_DIAG_SQLSTATE, "SQLSTATE" },
        { PG_DIAG_MESSAGE_PRIMARY, "message" },
        { PG_DIAG_MESSAGE_DETAIL, "detail" },
        { PG_DIAG_MESSAGE_HINT, "hint" },
        { PG_DIAG_STATEMENT_POSITION, "position" },
        { PG_DIAG_CONTEXT, "context" },
        { PG_DIAG_DATATYPE_NAME, "data type" },
        { PG_DIAG_CONSTRAINT_NAME, "constraint" },
    };
    if (PQresultStatus(a) != PGRES_FATAL_ERROR || PQresultStatus(b) != PGRES_FATAL_ERROR)
        fail_msg("%s: %s through the proxy, %s directly", what,
                 PQresStatus(PQresultStatus(a)), PQresStatus(PQresultStatus(b)));
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const char *x = PQresultErrorField(a, fields[i].code);
        const char *y = PQresultErrorField(b, fields[i].code);
        if ((x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0))
            fail_msg("%s: %s \"%s\" through the proxy, \"%s\" directly", what, fields[i].name,
                     x ? x : "(none)", y ? y : "(none)");
    }
}

/* Repeated INSERTs of one text run on one prepared statement, and do what
 * they did before: new keys insert, a repeated key is skipped. */
static void test_stmt_cached(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy("");
    PGconn *c = itest_connect_ok(p->port, NULL);

    insert_tag(c, "1", "one", "INSERT 0 1");
    insert_tag(c, "2", "two", "INSERT 0 1");
    insert_tag(c, "1", "again", "INSERT 0 0");
    assert_int_equal(cached_count(c), 1);
    char text[512];
    itest_query_text(c, "SELECT statement FROM pg_prepared_statements "
                        "WHERE name = 'idemproxy_s1'", text, sizeof text);
    assert_non_null(strstr(text, "ON CONFLICT"));
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 2);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t WHERE k = 1 AND "
                                     "payload = 'one'"), 1);

    /* With max_cached_statements = 0 the server parses each time. */
    create_table();
    struct itest_proxy *off = itest_proxy_start_with("debug", "max_cached_statements = 0\n"
                                          "[table public.stmt_t]\nconflict = k\n");
    PGconn *d = itest_connect_ok(off->port, NULL);
    insert_tag(d, "1", "one", "INSERT 0 1");
    insert_tag(d, "1", "one", "INSERT 0 0");
    assert_int_equal(cached_count(d), 0);
    itest_pass();
}

/* The unnamed statement keeps its meaning across Syncs and Describes,
 * until the client parses another or sends a Query. */
static void test_stmt_unnamed_semantics(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy("");
    PGconn *c = itest_connect_ok(p->port, NULL);
    PGconn *direct = itest_connect_direct();
    const char *vals[2] = { "10", "ten" };

    PGresult *r = itest_prepare(c, "", INSERT, 2);
    itest_assert_result_ok(r, "PQprepare of the unnamed statement");
    PQclear(r);
    r = itest_describe_prepared(c, "");
    itest_assert_result_ok(r, "Describe of the unnamed statement");
    assert_int_equal(PQnparams(r), 2);
    assert_int_equal(PQparamtype(r, 0), 20); /* bigint */
    PQclear(r);
    for (int i = 0; i < 2; i++) {
        r = itest_exec_prepared(c, "", 2, vals);
        itest_assert_tag(r, i == 0 ? "INSERT 0 1" : "INSERT 0 0", "Bind of the unnamed statement");
        PQclear(r);
    }

    /* Another text replaces it. */
    r = itest_prepare(c, "", "SELECT $1::int + 1", 1);
    itest_assert_result_ok(r, "PQprepare of a SELECT");
    PQclear(r);
    const char *seven[1] = { "7" };
    r = itest_exec_prepared(c, "", 1, seven);
    itest_assert_result_ok(r, "the SELECT");
    assert_string_equal(PQgetvalue(r, 0, 0), "8");
    PQclear(r);

    /* A Query drops it: the Bind fails as it does on the server. */
    r = itest_prepare(c, "", INSERT, 2);
    PQclear(r);
    itest_exec_ok(c, "SELECT 1");
    r = itest_prepare(direct, "", INSERT, 2);
    PQclear(r);
    itest_exec_ok(direct, "SELECT 1");
    fails_with(itest_exec_prepared(direct, "", 2, vals), "26000", "Bind after a Query, directly");
    fails_with(itest_exec_prepared(c, "", 2, vals), "26000", "Bind after a Query");

    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 1);
    itest_pass();
}

/* DEALLOCATE ALL and DISCARD ALL drop the proxy's statements too: the next
 * INSERT prepares it again, under a new name. */
static void test_stmt_deallocate(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy("");
    PGconn *c = itest_connect_ok(p->port, NULL);

    insert_tag(c, "1", "one", "INSERT 0 1");
    itest_exec_ok(c, "DEALLOCATE ALL");
    assert_int_equal(cached_count(c), 0);
    insert_tag(c, "2", "two", "INSERT 0 1");
    assert_int_equal(itest_query_ll(c, "SELECT count(*) FROM pg_prepared_statements "
                                       "WHERE name = 'idemproxy_s2'"), 1);
    itest_exec_ok(c, "DISCARD ALL");
    insert_tag(c, "2", "two", "INSERT 0 0");
    insert_tag(c, "3", "three", "INSERT 0 1");
    assert_int_equal(itest_query_ll(c, "SELECT count(*) FROM pg_prepared_statements "
                                       "WHERE name = 'idemproxy_s3'"), 1);

    /* Dropped where the proxy cannot read it: the INSERT after it fails
     * once, as a missing prepared statement, and the next one prepares
     * it again. */
    itest_exec_ok(c, "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$");
    const char *vals[2] = { "4", "four" };
    fails_with(itest_exec_params(c, INSERT, 2, vals), "26000", "the INSERT after it");
    insert_tag(c, "4", "four", "INSERT 0 1");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 4);
    itest_pass();
}

/* Errors: a refused Parse, an aborted transaction block, and an error
 * earlier in the same pipeline. */
static void test_stmt_errors(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy("");
    PGconn *c = itest_connect_ok(p->port, NULL);
    PGconn *direct = itest_connect_direct();
    const char *vals[2] = { "1", "one" };
    const char *bad = "INSERT INTO stmt_t (k, no_such_column) VALUES ($1, $2)";

    /* Refused: nothing is left to bind. */
    fails_with(itest_exec_params(c, bad, 2, vals), "42703", "a Parse the server refuses");
    fails_with(itest_exec_params(direct, bad, 2, vals), "42703", "the same, directly");
    fails_with(itest_exec_prepared(direct, "", 2, vals), "26000", "its Bind, directly");
    fails_with(itest_exec_prepared(c, "", 2, vals), "26000", "its Bind");

    /* In a failed block: 25P02, then the block rolls back. */
    insert_tag(c, "1", "one", "INSERT 0 1");
    itest_exec_ok(c, "BEGIN");
    itest_exec_sqlstate(c, "SELECT 1/0", "22012");
    const char *two[2] = { "2", "two" };
    fails_with(itest_exec_params(c, INSERT, 2, two), "25P02", "the INSERT in a failed block");
    itest_exec_tag(c, "ROLLBACK", "ROLLBACK");
    insert_tag(c, "2", "two", "INSERT 0 1");

    /* An error ahead of the cached INSERT in one pipeline: the server skips
     * it, and the client hears nothing of it but that. */
    assert_int_equal(PQenterPipelineMode(c), 1);
    const char *three[2] = { "3", "three" };
    assert_int_equal(PQsendQueryParams(c, "SELECT 1/0", 0, NULL, NULL, NULL, NULL, 0), 1);
    assert_int_equal(PQsendQueryParams(c, INSERT, 2, NULL, three, NULL, NULL, 0), 1);
    assert_int_equal(PQpipelineSync(c), 1);
    itest_pipeline_after_error(c, "22012", itest_now_ms() + 10000);
    assert_int_equal(PQexitPipelineMode(c), 1);
    insert_tag(c, "4", "four", "INSERT 0 1");

    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 3);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t WHERE k = 3"), 0);
    itest_pass();
}

/* A Bind larger than max_held_message streams through unread, so it keeps
 * the unnamed statement's name: the server's unnamed statement gets the
 * INSERT first. */
static void test_stmt_large_bind(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy_holding_1kb();
    PGconn *c = itest_connect_ok(p->port, NULL);
    /* The server's own unnamed statement is a SELECT meanwhile. */
    PGresult *r = itest_exec_params(c, "SELECT 1", 0, NULL);
    PQclear(r);
    insert_tag(c, "1", "small", "INSERT 0 1");

    char *big = malloc(8192);
    assert_non_null(big);
    memset(big, 'x', 8191);
    big[8191] = '\0';
    insert_tag(c, "2", big, "INSERT 0 1");
    insert_tag(c, "2", big, "INSERT 0 0");
    free(big);
    insert_tag(c, "3", "small", "INSERT 0 1");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t WHERE k = 2 AND "
                                     "length(payload) = 8191"), 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 3);
    itest_pass();
}

/* A named Parse too large to read, while the unnamed statement stands for
 * the cached INSERT: whatever it names, the client's unnamed statement is
 * still the INSERT afterwards. */
static void test_stmt_large_parse(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy_holding_1kb();
    PGconn *c = itest_connect_ok(p->port, NULL);

    prepare_unnamed_twice(c, INSERT);
    exec_unnamed(c, "1", "one", "INSERT 0 1");
    char *big = malloc(8192);
    assert_non_null(big);
    memcpy(big, "SELECT '", 8);
    memset(big + 8, 'x', 8192 - 8 - 2);
    memcpy(big + 8190, "'", 2);
    prepare_ok(c, "big", big, 0);
    free(big);
    assert_true(itest_proxy_log_contains(p, "streamed unread"));
    /* After the large Parse; then a duplicate. */
    exec_unnamed(c, "2", "two", "INSERT 0 1");
    exec_unnamed(c, "1", "one", "INSERT 0 0");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 2);
    itest_pass();
}

/* An INSERT whose text holds "\xc3\xa9", é in UTF-8, as its unnamed
 * statement: under LATIN1 the same bytes are two characters, "Ã©". */
static const char ACCENTED[] = "INSERT INTO stmt_t (k, payload) VALUES ($1, '\xc3\xa9' || $2)";

/* A value over the 1 kB proxy_holding_1kb reads. */
static const char *large_value(void)
{
    static char big[2048];
    memset(big, 'y', sizeof big - 1);
    return big;
}

/* A text over 1 kB: opening (whole within the first bytes the proxy
 * looks at, or not) and a comment that makes it large. */
static const char *large_text(const char *opening)
{
    static char text[2048];
    size_t n = strlen(opening);

    memcpy(text, opening, n);
    memcpy(text + n, " /*", 3);
    memset(text + n + 3, 'c', sizeof text - n - 6);
    memcpy(text + sizeof text - 3, "*/", 3);
    return text;
}

/* The cache knows a statement by the bytes of its text, the server parsed
 * it under the client_encoding of its time: after the session changes
 * it, the same bytes are parsed anew, as PostgreSQL would, whether they
 * come in a Query (a column named été does not exist under LATIN1) or a
 * Parse (the literal is "Ã©"). */
static void test_stmt_cache_across_encodings(void **state)
{
    (void)state;
    create_table();
    itest_server_exec("ALTER TABLE stmt_t ADD COLUMN \"\xc3\xa9t\xc3\xa9\" text");
    struct itest_proxy *p = proxy("");
    PGconn *c = itest_connect_ok(p->port, NULL);
    static const char summer[] = "INSERT INTO stmt_t (k, \"\xc3\xa9t\xc3\xa9\") VALUES (%d, 'summer')";
    char sql[128];

    for (int k = 1; k <= 2; k++) {
        snprintf(sql, sizeof sql, summer, k);
        PGresult *r = itest_exec(c, sql);
        itest_assert_tag(r, "INSERT 0 1", "the Query under UTF8");
        PQclear(r);
    }
    prepare_unnamed_twice(c, ACCENTED);
    exec_unnamed(c, "3", "x", "INSERT 0 1");
    assert_int_equal(cached_count(c), 2);

    itest_exec_ok(c, "SET client_encoding = 'LATIN1'");
    snprintf(sql, sizeof sql, summer, 4);
    fails_with(itest_exec(c, sql), "42703", "the Query under LATIN1");
    prepare_unnamed_twice(c, ACCENTED);
    exec_unnamed(c, "5", "x", "INSERT 0 1");
    exec_unnamed(c, "5", "x", "INSERT 0 0");
    assert_int_equal(itest_server_ll("SELECT length(payload) FROM stmt_t WHERE k = 3"), 2);
    assert_int_equal(itest_server_ll("SELECT length(payload) FROM stmt_t WHERE k = 5"), 3);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 4);
    itest_pass();
}

/* A Bind too large to read, of the unnamed statement standing for the
 * cached INSERT, after the session changed its client_encoding: renamed
 * as it streams, it runs the statement as the server parsed it, "\xc3\xa9"
 * one character. Ahead of a Parse too large to follow, the cached text
 * parsed again would mean otherwise: the unnamed statement is closed, and
 * its Bind meets no statement (26000) rather than write "Ã©"; a text in
 * ASCII is given back to the unnamed statement as before. */
static void test_stmt_restored_across_encodings(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy_holding_1kb();
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *big = large_value();
    char opening[160];

    prepare_unnamed_twice(c, ACCENTED);
    exec_unnamed(c, "1", "x", "INSERT 0 1");
    /* A named statement changes the setting: the unnamed one stays. */
    prepare_ok(c, "latin1", "SET client_encoding = 'LATIN1'", 0);
    exec_prepared_tag(c, "latin1", 0, NULL, "SET");
    exec_unnamed(c, "2", big, "INSERT 0 1");
    exec_unnamed(c, "2", big, "INSERT 0 0");
    assert_true(itest_proxy_log_contains(p, "'B' message of"));
    assert_int_equal(itest_server_ll("SELECT length(payload) FROM stmt_t WHERE k = 2"),
                     1 + (long long)strlen(big));

    snprintf(opening, sizeof opening, "/* %.120s */ SELECT 1", big);
    prepare_ok(c, "s_cut", large_text(opening), 0);
    fails_with(itest_exec_prepared(c, "", 2, (const char *[]){ "3", "x" }), "26000",
               "the unnamed statement after a large Parse");
    assert_true(itest_proxy_log_contains(p, "closed before an unread message"));
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t WHERE k = 3"), 0);

    prepare_unnamed_twice(c, INSERT);
    exec_unnamed(c, "3", big, "INSERT 0 1");
    exec_unnamed(c, "3", big, "INSERT 0 0");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 3);
    itest_pass();
}

/* A Bind too large to read, of a statement the proxy read, is followed as
 * any Bind (a large value is what makes it large): the session's
 * statements stay known and are prepared again when the rules change.
 * Once a Parse too large to read went before whose opening the proxy
 * could not read, a statement the proxy never read may be the one bound:
 * what the session prepared is forgotten, and keeps its form. */
static void test_stmt_large_bind_followed(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy_holding_1kb();
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *big = large_value();
    const char *one[2] = { "1", big }, *two[2] = { "2", big };

    prepare_ok(c, "s_ins", INSERT, 2);
    exec_prepared_tag(c, "s_ins", 2, one, "INSERT 0 1");
    assert_true(itest_proxy_log_contains(p, "'B' message of"));
    itest_proxy_reload(p, "max_held_message = 1kB\n", 1);
    fails_with(itest_exec_prepared(c, "s_ins", 2, one), "23505",
               "s_ins prepared again without the rule's clause");
    assert_true(itest_proxy_log_contains(p, "statement \"s_ins\" prepared again"));

    itest_proxy_reload(p, "max_held_message = 1kB\n[table public.stmt_t]\nconflict = k\n", 2);
    char opening[160];
    snprintf(opening, sizeof opening, "/* %.120s */ SELECT 1", big);
    prepare_ok(c, "s_big", large_text(opening), 0);
    itest_exec_tag(c, "DEALLOCATE s_ins", "DEALLOCATE");
    prepare_ok(c, "s_ins", INSERT, 2);
    exec_prepared_tag(c, "s_ins", 2, two, "INSERT 0 1");
    itest_proxy_reload(p, "max_held_message = 1kB\n", 3);
    /* As it was prepared: with the clause. */
    exec_prepared_tag(c, "s_ins", 2, two, "INSERT 0 0");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 2);
    itest_pass();
}

/* A Parse too large to read whose name and opening are in its first bytes
 * is followed by its name: what the session prepared stays known (a
 * reload prepares it again), and each Execute of the large statement
 * counts as a change of the session's search_path or role, which its
 * unread text may make (here it does). One that opens with DEALLOCATE
 * makes the proxy forget the session's statements, which then keep their
 * form (README, Limitations). */
static void test_stmt_large_parse_followed(void **state)
{
    (void)state;
    create_table();
    itest_server_exec("DROP SCHEMA IF EXISTS stmt_loose CASCADE; CREATE SCHEMA stmt_loose; "
                      "CREATE TABLE stmt_loose.stmt_t (k bigint, payload text)");
    struct itest_proxy *p = proxy_holding_1kb();
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *one[2] = { "1", "one" }, *two[2] = { "2", "two" };

    prepare_ok(c, "s_ins", INSERT, 2);
    exec_prepared_tag(c, "s_ins", 2, one, "INSERT 0 1");
    prepare_ok(c, "s_path",
               large_text("SELECT pg_catalog.set_config('search_path', 'stmt_loose', false)"),
               0);
    assert_true(itest_proxy_log_contains(p, "'P' message of"));
    exec_prepared_tag(c, "s_ins", 2, one, "INSERT 0 0");

    /* On the path the large statement set, s_ins is the client's own: the
     * table there has no unique index for the rewrite's clause (42P10). */
    exec_prepared_tag(c, "s_path", 0, NULL, "SELECT 1");
    exec_prepared_tag(c, "s_ins", 2, one, "INSERT 0 1");
    exec_prepared_tag(c, "s_ins", 2, one, "INSERT 0 1");
    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (1, 'q')", "INSERT 0 1");
    itest_exec_ok(c, "RESET search_path");
    exec_prepared_tag(c, "s_ins", 2, one, "INSERT 0 0");

    /* A reload still finds s_ins: prepared again, without the clause. */
    itest_proxy_reload(p, "max_held_message = 1kB\n", 1);
    fails_with(itest_exec_prepared(c, "s_ins", 2, one), "23505", "s_ins after the reload");

    /* A large DEALLOCATE may drop anything: s_ins is forgotten and keeps
     * the form it has, without the clause, when the rule comes back. */
    prepare_ok(c, "s_drop", large_text("DEALLOCATE s_other"), 0);
    itest_proxy_reload(p, "max_held_message = 1kB\n[table public.stmt_t]\nconflict = k\n", 2);
    fails_with(itest_exec_prepared(c, "s_ins", 2, one), "23505", "s_ins after a large DEALLOCATE");
    exec_prepared_tag(c, "s_ins", 2, two, "INSERT 0 1");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 2);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_loose.stmt_t"), 3);
    assert_int_equal(itest_proxy_log_count(p, "from the server"), 0);
    itest_pass();
}

/* A reload that drops the table's rule while the unnamed statement stands
 * for the cached INSERT: the next Bind runs the client's text as the new
 * rules want it, without the clause, as a new Parse would. */
static void test_stmt_reload(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy("");
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *vals[2] = { "1", "one" };

    PGresult *r = itest_exec_params(c, "SELECT 1", 0, NULL);
    PQclear(r);
    r = itest_prepare(c, "", INSERT, 2);
    itest_assert_result_ok(r, "PQprepare of the INSERT");
    PQclear(r);

    itest_proxy_reload(p, "", 1);

    r = itest_exec_prepared(c, "", 2, vals);
    itest_assert_tag(r, "INSERT 0 1", "the INSERT after the reload");
    PQclear(r);
    fails_with(itest_exec_prepared(c, "", 2, vals), "23505",
               "prepared before the reload, without the rule's clause after it");
    assert_true(itest_proxy_log_contains(p, "prepared again for the rules now in force"));
    /* A new Parse is the client's own too. */
    fails_with(itest_exec_params(c, INSERT, 2, vals), "23505", "the client's own Parse");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 1);
    itest_pass();
}

/* A simple-protocol INSERT with its values in the text runs as one
 * prepared statement per shape, each Query binding its own values; what
 * the client sees is what a Query gets. */
static void test_stmt_query_prepared(void **state)
{
    (void)state;
    create_table();
    itest_server_exec("DROP TABLE IF EXISTS stmt_direct; "
                      "CREATE TABLE stmt_direct (id bigserial PRIMARY KEY, "
                      "k bigint NOT NULL UNIQUE, payload text)");
    struct itest_proxy *p = proxy("");
    PGconn *c = itest_connect_ok(p->port, NULL);

    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (1, 'one')", "INSERT 0 1");
    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (2, 'it''s')", "INSERT 0 1");
    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (1, 'again')", "INSERT 0 0");
    assert_int_equal(cached_count(c), 1);
    char text[512];
    itest_query_text(c, "SELECT statement FROM pg_prepared_statements "
                        "WHERE name LIKE 'idemproxy_s%'", text, sizeof text);
    assert_string_equal(text, "INSERT INTO stmt_t (k, payload) VALUES ($1, $2) "
                              "ON CONFLICT (\"k\") DO NOTHING");
    /* A minus sign is part of another statement's text. */
    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (-5, '')", "INSERT 0 1");
    assert_int_equal(cached_count(c), 2);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t WHERE (k, payload) IN "
                                     "((1, 'one'), (2, 'it''s'), (-5, ''))"), 3);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 3);

    /* Other types of the same shape (a number past int4, a fraction into
     * bigint) run as they are; a typed literal keeps its text. */
    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (3000000000, 'big')", "INSERT 0 1");
    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (6.5, 'round')", "INSERT 0 1");
    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (8, text 'typed')", "INSERT 0 1");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t WHERE (k, payload) IN "
                                     "((3000000000, 'big'), (7, 'round'), (8, 'typed'))"), 3);

    /* A document over 16 kB in a string constant: its shape is short, so
     * it runs as that shape's statement (the one above, executed twice
     * more), and the value is stored whole. */
    const size_t doc = 20000;
    char *big = malloc(doc + 128);
    assert_non_null(big);
    int head = snprintf(big, 128, "INSERT INTO stmt_t (k, payload) VALUES (9, 'it''s ");
    memset(big + head, 'd', doc);
    strcpy(big + (size_t)head + doc, "')");
    const char *runs = "SELECT sum(generic_plans + custom_plans) FROM pg_prepared_statements "
                       "WHERE statement = 'INSERT INTO stmt_t (k, payload) VALUES ($1, $2) "
                       "ON CONFLICT (\"k\") DO NOTHING'";
    long long ran = itest_query_ll(c, runs);
    itest_exec_tag(c, big, "INSERT 0 1");
    itest_exec_tag(c, big, "INSERT 0 0");
    assert_int_equal(itest_query_ll(c, runs), ran + 2);
    free(big);
    assert_int_equal(itest_server_ll("SELECT length(payload) FROM stmt_t WHERE k = 9 AND "
                                     "payload LIKE 'it''s ddd%%'"),
                     (long long)doc + 5);

    /* Errors are the Query's: bad input, a null into NOT NULL, a wrong
     * column count (each compared with a direct connection, where the
     * table has the same columns and no proxy). */
    PGconn *direct = itest_connect_direct();
    static const char *const bad[] = {
        "('x', 'bad input')",
        "(99999999999999999999, 'too big')",
        "(1, 'a', 'extra')",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char via[256], straight[256];
        snprintf(via, sizeof via, "INSERT INTO stmt_t (k, payload) VALUES %s", bad[i]);
        snprintf(straight, sizeof straight, "INSERT INTO stmt_direct (k, payload) VALUES %s",
                 bad[i]);
        PGresult *a = PQexec(c, via), *b = PQexec(direct, straight);
        const char *sa = PQresultErrorField(a, PG_DIAG_SQLSTATE);
        const char *sb = PQresultErrorField(b, PG_DIAG_SQLSTATE);
        if (!sa || !sb || strcmp(sa, sb) != 0)
            fail_msg("%s: %s through the proxy, %s directly", via, sa ? sa : "ok", sb ? sb : "ok");
        PQclear(a);
        PQclear(b);
    }

    /* An error the server places in the statement's text is placed in the
     * client's: the position of the unknown column, past constants that
     * are parameters on the server. */
    const char *unknown = "INSERT INTO stmt_t (k, payload) VALUES (123456, nosuchcol)";
    PGresult *e = PQexec(c, unknown);
    itest_assert_sqlstate(e, "42703", "an unknown column");
    const char *pos = PQresultErrorField(e, PG_DIAG_STATEMENT_POSITION);
    assert_non_null(pos);
    assert_int_equal(atoi(pos), (int)(strstr(unknown, "nosuchcol") - unknown) + 1);
    PQclear(e);

    /* The Query drops the unnamed statement, as it does on the server. */
    const char *vals[2] = { "40", "forty" };
    PGresult *r = itest_prepare(c, "", INSERT, 2);
    PQclear(r);
    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (41, 'x')", "INSERT 0 1");
    fails_with(itest_exec_prepared(c, "", 2, vals), "26000", "Bind after a prepared Query");

    /* In a transaction block the Query goes as it is, and commits with it. */
    long long before = cached_count(c);
    itest_exec_ok(c, "BEGIN");
    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (50, 'block')", "INSERT 0 1");
    itest_exec_ok(c, "ROLLBACK");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t WHERE k = 50"), 0);
    assert_int_equal(cached_count(c), before);

    /* Dropped where the proxy cannot read it: the Query after it fails
     * once, as a missing prepared statement, and the next one prepares it
     * again. */
    itest_server_exec("CREATE OR REPLACE FUNCTION stmt_drop_all() RETURNS void "
                      "LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$");
    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (69, 'x')", "INSERT 0 1");
    itest_exec_ok(c, "SELECT stmt_drop_all()");
    itest_exec_sqlstate(c, "INSERT INTO stmt_t (k, payload) VALUES (70, 'x')", "26000");
    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (70, 'x')", "INSERT 0 1");

    /* DISCARD ALL drops the statement; the next Query prepares it again. */
    itest_exec_ok(c, "DISCARD ALL");
    assert_int_equal(cached_count(c), 0);
    itest_exec_tag(c, "INSERT INTO stmt_t (k, payload) VALUES (60, 'after discard')", "INSERT 0 1");
    assert_int_equal(cached_count(c), 1);
    itest_finish(direct);
    itest_pass();
}

/* Appends a Parse of text as statement name (no parameter types). */
static size_t put_parse(uint8_t *buf, size_t cap, size_t at, const char *name, const char *text)
{
    uint8_t body[16384];
    size_t n = strlen(name) + 1, text_len = strlen(text) + 1;

    assert_true(n + text_len + 2 <= sizeof body);
    memcpy(body, name, n);
    memcpy(body + n, text, text_len);
    n += text_len;
    body[n++] = 0;
    body[n++] = 0;
    return at + itest_build_msg(buf + at, cap - at, 'P', body, n);
}

/* The same as the unnamed statement. */
static size_t put_parse_unnamed(uint8_t *buf, size_t cap, size_t at, const char *text)
{
    return put_parse(buf, cap, at, "", text);
}

/* Appends a Bind of statement to the unnamed portal with the n text
 * values (text results), and an Execute of it. */
static size_t put_bind_execute_values(uint8_t *buf, size_t cap, size_t at, const char *statement,
                                      const char *const *values, size_t n)
{
    static const uint8_t execute[] = { '\0', 0, 0, 0, 0 };
    uint8_t body[4096];
    size_t used = 0, name_len = strlen(statement) + 1;

    /* "", statement, text formats, the values, text results. */
    assert_true(1 + name_len + 4 <= sizeof body);
    body[used++] = '\0';
    memcpy(body + used, statement, name_len);
    used += name_len;
    body[used++] = 0;
    body[used++] = 0;
    body[used++] = (uint8_t)(n >> 8);
    body[used++] = (uint8_t)n;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(values[i]);
        assert_true(used + 4 + len + 2 <= sizeof body);
        body[used++] = (uint8_t)(len >> 24);
        body[used++] = (uint8_t)(len >> 16);
        body[used++] = (uint8_t)(len >> 8);
        body[used++] = (uint8_t)len;
        memcpy(body + used, values[i], len);
        used += len;
    }
    body[used++] = 0;
    body[used++] = 0;
    at += itest_build_msg(buf + at, cap - at, 'B', body, used);
    return at + itest_build_msg(buf + at, cap - at, 'E', execute, sizeof execute);
}

/* The same with the two values k and payload. */
static size_t put_bind_execute_of(uint8_t *buf, size_t cap, size_t at, const char *statement,
                                  const char *k, const char *payload)
{
    const char *values[2] = { k, payload };
    return put_bind_execute_values(buf, cap, at, statement, values, 2);
}

/* The same of the unnamed statement. */
static size_t put_bind_execute(uint8_t *buf, size_t cap, size_t at, const char *k,
                               const char *payload)
{
    return put_bind_execute_of(buf, cap, at, "", k, payload);
}

static size_t put_sync(uint8_t *buf, size_t cap, size_t at)
{
    return at + itest_build_msg(buf + at, cap - at, 'S', NULL, 0);
}

/* Appends one Parse of the unnamed statement, Bind, Execute and Sync that
 * insert (k, payload) with text. */
static size_t put_insert(uint8_t *buf, size_t cap, size_t at, const char *text, const char *k,
                         const char *payload)
{
    at = put_parse_unnamed(buf, cap, at, text);
    at = put_bind_execute(buf, cap, at, k, payload);
    return put_sync(buf, cap, at);
}

/* A raw session through p, logged in with application_name. */
static int raw_session(const struct itest_proxy *p, const char *application_name)
{
    int fd = itest_raw_connect(p->port);

    assert_true(fd >= 0);
    itest_raw_login(fd, itest_pg_user(), application_name);
    return fd;
}

/* Reads one message per type in types; an ErrorResponse ('E') must carry
 * sqlstate, a CommandComplete ('C') the tag. */
static void expect_replies(int fd, const char *types, const char *sqlstate, const char *tag,
                           const char *what)
{
    for (const char *t = types; *t; t++) {
        struct itest_msg m;
        assert_int_equal(itest_raw_read_msg(fd, &m, ITEST_QUERY_TIMEOUT_MS), ITEST_READ_OK);
        char type = m.type, code[6] = "", message[256] = "";
        /* itest_msg_field answers in one static buffer. */
        if (type == 'E') {
            snprintf(code, sizeof code, "%s", itest_msg_field(&m, 'C'));
            snprintf(message, sizeof message, "%s", itest_msg_field(&m, 'M'));
        }
        if (type != *t)
            fail_msg("%s: message %d is '%c' (%s), want '%c'", what, (int)(t - types), type,
                     message, *t);
        if (type == 'E' && strcmp(code, sqlstate) != 0)
            fail_msg("%s: SQLSTATE %s (%s), want %s", what, code, message, sqlstate);
        if (type == 'C')
            assert_string_equal((const char *)m.body, tag);
        itest_msg_free(&m);
    }
}

/* Sends count INSERTs of text in one pipeline, keys first_k.., and reads
 * their answers: each is ParseComplete, BindComplete, tag, ReadyForQuery. */
static void pipeline_inserts(int fd, const char *text, int first_k, int count, const char *tag)
{
    size_t cap = (size_t)count * (strlen(text) + 64), n = 0;
    uint8_t *pipeline = malloc(cap);
    assert_non_null(pipeline);
    for (int i = 0; i < count; i++) {
        char k[16];
        snprintf(k, sizeof k, "%d", first_k + i);
        n = put_insert(pipeline, cap, n, text, k, "split");
    }
    assert_true(itest_raw_send(fd, pipeline, n));
    free(pipeline);
    for (int i = 0; i < count; i++)
        expect_replies(fd, "12CZ", NULL, tag, "a pipelined INSERT");
}

/* A pipeline larger than the proxy reads at once: 1000 small INSERTs,
 * then 40 whose Parse is 8 kB, so that messages are cut where one read's
 * buffer ends (the large ones are joined from two buffers), and the client's
 * messages wait while a batch ends with the input at its limit. Every
 * INSERT is answered as it would be when sent alone. */
static void test_stmt_split_reads(void **state)
{
    (void)state;
    create_table();
    /* Without translation, a duplicate the proxy failed to rewrite would
     * come back as 23505. */
    struct itest_proxy *p = proxy("translate_errors = off\n");
    int fd = raw_session(p, "itest_split_reads");

    pipeline_inserts(fd, INSERT, 1, 1000, "INSERT 0 1");
    char text[8000];
    int len = snprintf(text, sizeof text, "%s /* ", INSERT);
    memset(text + len, 'x', sizeof text - (size_t)len - 4);
    memcpy(text + sizeof text - 4, " */", 4);
    pipeline_inserts(fd, text, 1, 40, "INSERT 0 0");
    itest_raw_close(fd);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t WHERE payload = 'split'"),
                     1000);
    itest_pass();
}

/* A value the server cannot convert for its column ('x' for an integer)
 * fails the Query run as the statement with parameters at its Bind, where
 * PostgreSQL names the parameter in the error's context; directly it fails
 * where the text is analysed, pointing at the constant. The client gets
 * the direct error, field for field (but for where in the server's sources
 * it was raised), in every row, in characters of UTF-8, under a context of
 * the value's own (JSON's), and for a domain whose CHECK the Query meets
 * only when planned; and for bytes not of the client's encoding (not
 * UTF-8, a byte WIN1252 leaves undefined), which PostgreSQL refuses as the
 * text arrives, pointing nowhere. */
static void test_stmt_value_errors(void **state)
{
    (void)state;
    /* The same text straight to PostgreSQL goes to a twin of the table,
     * of the same name in another schema. */
    itest_server_exec("DROP TABLE IF EXISTS stmt_v; DROP SCHEMA IF EXISTS stmt_twin CASCADE; "
                      "DROP DOMAIN IF EXISTS stmt_positive; "
                      "CREATE DOMAIN stmt_positive AS int CHECK (VALUE > 0); "
                      "CREATE TABLE stmt_v (k text NOT NULL UNIQUE, n int, d date, j jsonb, "
                      "p stmt_positive); "
                      "CREATE SCHEMA stmt_twin; "
                      "CREATE TABLE stmt_twin.stmt_v (LIKE public.stmt_v INCLUDING ALL)");
    struct itest_proxy *p = itest_proxy_start_table("debug", "stmt_v", "k", "");
    PGconn *c = itest_connect_ok(p->port, NULL);
    PGconn *direct = itest_connect_direct();
    itest_exec_ok(direct, "SET search_path = stmt_twin, public");
    static const char *const bad[] = {
        "(k, n) VALUES ('a', 'x')",
        "(k, n, d) VALUES ('a', 5, 'soon')",
        "(k, n) VALUES ('a', 1), ('b', 2), ('c', 'three')",
        "(k, n) VALUES ('\xc3\xa9t\xc3\xa9', '\xc3\xbc')",
        "(k, n)\n  VALUES ('a', E'x\\t')",
        "(k, j) VALUES ('a', '{\"bad')",
        "(k, p) VALUES ('a', 'q')",
        "(k, p) VALUES ('a', '-5')",
        "(k) VALUES ('caf\xe9')",
        "(k, n) VALUES ('a', 1), ('\x81', 2)",
        "SET client_encoding = 'WIN1252'",
        "(k) VALUES ('a\x81z')",
        "(k, d) VALUES ('caf\xe9', '\x81')",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char via[256];
        if (strncmp(bad[i], "SET", 3) == 0) {
            itest_exec_ok(c, bad[i]);
            itest_exec_ok(direct, bad[i]);
            continue;
        }
        snprintf(via, sizeof via, "INSERT INTO stmt_v %s", bad[i]);
        /* Twice: the first run prepares the statement, the second binds. */
        for (int run = 0; run < 2; run++) {
            PGresult *a = PQexec(c, via), *b = PQexec(direct, via);
            same_error(a, b, via);
            PQclear(a);
            PQclear(b);
        }
    }
    /* They did run as statements with parameters. */
    assert_true(itest_query_ll(c, "SELECT count(*) FROM pg_prepared_statements WHERE statement "
                                  "LIKE 'INSERT INTO stmt_v (k, n) VALUES ($1, $2)%%'") >= 1);
    itest_exec_tag(c, "INSERT INTO stmt_v (k, n) VALUES ('a', '7')", "INSERT 0 1");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_v"), 1);
    itest_finish(direct);
    itest_pass();
}

/* While the unnamed statement stands for the cached INSERT, the client
 * redefines it (a Parse, a Close, a Query) behind a message that fails in
 * the same batch, then binds it after the Sync. The server skipped the
 * redefinition, so the Bind runs the INSERT, as it does straight on
 * PostgreSQL (the proxy must not take the redefinition as done before it
 * knows the server did it). */
static void test_stmt_skipped_redefinition(void **state)
{
    (void)state;
    create_table();
    int fd = raw_session(proxy(""), "itest_skipped_redefinition");

    /* The first Parse creates the cached copy, the second one maps to it. */
    pipeline_inserts(fd, INSERT, 1, 1, "INSERT 0 1");
    pipeline_inserts(fd, INSERT, 2, 1, "INSERT 0 1");

    static const uint8_t parse[] = "\0SELECT 1\0\0"; /* and the array's NUL: no types */
    static const uint8_t close[] = "S";
    static const uint8_t query[] = "SELECT 1";
    const struct {
        char type;
        const uint8_t *body;
        size_t len;
        const char *what;
    } redefinitions[] = {
        { 'P', parse, sizeof parse, "a skipped Parse of the unnamed statement" },
        { 'C', close, sizeof close, "a skipped Close of the unnamed statement" },
        { 'Q', query, sizeof query, "a skipped Query" },
    };
    for (int i = 0; i < 3; i++) {
        static const uint8_t describe_missing[] = "Pno_such_portal";
        uint8_t buf[1024];
        size_t n = itest_build_msg(buf, sizeof buf, 'D', describe_missing,
                                   sizeof describe_missing);
        n += itest_build_msg(buf + n, sizeof buf - n, redefinitions[i].type,
                             redefinitions[i].body, redefinitions[i].len);
        n = put_sync(buf, sizeof buf, n);
        char k[8];
        snprintf(k, sizeof k, "%d", 10 + i);
        n = put_sync(buf, sizeof buf, put_bind_execute(buf, sizeof buf, n, k, "kept"));
        assert_true(itest_raw_send(fd, buf, n));
        expect_replies(fd, "EZ", "34000", NULL, redefinitions[i].what);
        expect_replies(fd, "2CZ", NULL, "INSERT 0 1", redefinitions[i].what);
    }
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t WHERE payload = 'kept'"), 3);

    /* In a failed block the client's Parse fails, as PostgreSQL's does:
     * not the proxy's empty one in its place, which would parse. */
    static const uint8_t begin_fail[] = "BEGIN; SELECT 1/0";
    uint8_t buf[1024];
    size_t n = itest_build_msg(buf, sizeof buf, 'Q', begin_fail, sizeof begin_fail);
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "CEZ", "22012", "BEGIN", "BEGIN and a division by zero");
    n = put_insert(buf, sizeof buf, 0, INSERT, "20", "in a failed block");
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "EZ", "25P02", NULL, "the INSERT's Parse in a failed block");
    itest_raw_close(fd);
    itest_pass();
}

/* The client's messages behind a batch whose redefinition of the unnamed
 * statement the server may skip wait for that batch's own ReadyForQuery,
 * not an earlier batch's. Here the earlier batch makes the unnamed
 * statement stand for the cached INSERT; the next one fails (after a
 * sleep, so that the earlier answer comes well before) and the server
 * skips its Parse of the unnamed statement; a Query behind it then drops
 * the unnamed statement for good. The skip, answered after that Query was
 * taken, must not bring back the cached INSERT: a Bind once all is
 * answered fails as on PostgreSQL (26000), rather than inserting. */
static void test_stmt_redefinition_behind_two_syncs(void **state)
{
    (void)state;
    create_table();
    int fd = raw_session(proxy(""), "itest_two_syncs");

    pipeline_inserts(fd, INSERT, 1, 1, "INSERT 0 1");
    static const uint8_t parse_sleep[] = "sleep\0SELECT pg_sleep(0.3)\0\0";
    static const uint8_t bind_sleep[] = "\0sleep\0\0\0\0\0\0";
    static const uint8_t execute[] = "\0\0\0\0";
    static const uint8_t describe_missing[] = "Pno_such_portal";
    static const uint8_t parse_unnamed[] = "\0SELECT 1\0\0";
    static const uint8_t query[] = "SELECT 2";
    uint8_t buf[2048];
    size_t n = put_insert(buf, sizeof buf, 0, INSERT, "2", "before");
    n += itest_build_msg(buf + n, sizeof buf - n, 'P', parse_sleep, sizeof parse_sleep);
    n += itest_build_msg(buf + n, sizeof buf - n, 'B', bind_sleep, sizeof bind_sleep);
    n += itest_build_msg(buf + n, sizeof buf - n, 'E', execute, sizeof execute);
    n += itest_build_msg(buf + n, sizeof buf - n, 'D', describe_missing, sizeof describe_missing);
    n += itest_build_msg(buf + n, sizeof buf - n, 'P', parse_unnamed, sizeof parse_unnamed);
    n = put_sync(buf, sizeof buf, n);
    n += itest_build_msg(buf + n, sizeof buf - n, 'Q', query, sizeof query);
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "12CZ", NULL, "INSERT 0 1", "the batch that maps the unnamed statement");
    expect_replies(fd, "12DCEZ", "34000", "SELECT 1", "the batch that fails after a sleep");
    expect_replies(fd, "TDCZ", NULL, "SELECT 1", "the Query");
    n = put_sync(buf, sizeof buf, put_bind_execute(buf, sizeof buf, 0, "3", "gone"));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "EZ", "26000", NULL, "a Bind of the unnamed statement the Query dropped");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t WHERE payload = 'gone'"), 0);
    itest_raw_close(fd);
    itest_pass();
}

/* A Parse behind an extended COPY FROM STDIN that the client fails is
 * skipped by the server, with the Sync the client sent behind the COPY
 * going to the copy: the statement's name keeps what it held (here a
 * SELECT), and a reload, after which the proxy prepares again what it
 * knows as INSERTs, leaves it as it is. */
static void test_stmt_parse_skipped_after_copy_failed(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy("");
    int fd = raw_session(p, "itest_copy_failed");
    static const uint8_t copy[] = "\0COPY stmt_t (k, payload) FROM STDIN\0\0";
    static const uint8_t bind_copy[] = "\0\0\0\0\0\0\0";
    static const uint8_t execute[] = "\0\0\0\0";
    static const uint8_t copy_fail[] = "stopped by the client";
    uint8_t buf[1024];
    size_t n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, 0, "s_sel", "SELECT 1"));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "1Z", NULL, NULL, "the Parse of s_sel");

    n = itest_build_msg(buf, sizeof buf, 'P', copy, sizeof copy);
    n += itest_build_msg(buf + n, sizeof buf - n, 'B', bind_copy, sizeof bind_copy);
    n += itest_build_msg(buf + n, sizeof buf - n, 'E', execute, sizeof execute);
    n = put_sync(buf, sizeof buf, n);
    n += itest_build_msg(buf + n, sizeof buf - n, 'f', copy_fail, sizeof copy_fail);
    n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, n, "s_sel", INSERT));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "12GEZ", "57014", NULL, "the COPY failed, the Parse behind it skipped");

    itest_proxy_reload(p, "[table public.stmt_t]\nconflict = k\naction = none\n", 1);

    n = put_bind_execute_values(buf, sizeof buf, 0, "s_sel", NULL, 0);
    assert_true(itest_raw_send(fd, buf, put_sync(buf, sizeof buf, n)));
    expect_replies(fd, "2DCZ", NULL, "SELECT 1", "s_sel after the reload");
    itest_raw_close(fd);
    itest_pass();
}

/* A Parse of the unnamed statement that the server refuses drops the
 * statement the name held, and a Query behind it in the same batch, which
 * the server then skips, must not bring the refused text back into the
 * proxy's books: after a reload, a Bind of the unnamed statement fails as
 * on PostgreSQL (26000), and one defined after the batch runs, rather
 * than the proxy's attempt to prepare the refused text again (22P02). */
static void test_stmt_refused_unnamed_stays_gone(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy("");
    int fd = raw_session(p, "itest_refused_unnamed");
    static const uint8_t query[] = "SELECT 1";
    uint8_t buf[1024];
    size_t n = put_parse_unnamed(buf, sizeof buf, 0,
                                 "INSERT INTO stmt_t (k, payload) VALUES ($1, 'x'::int)");
    n += itest_build_msg(buf + n, sizeof buf - n, 'Q', query, sizeof query);
    assert_true(itest_raw_send(fd, buf, put_sync(buf, sizeof buf, n)));
    expect_replies(fd, "EZ", "22P02", NULL, "the refused Parse, the Query skipped");

    itest_proxy_reload(p, "[table public.stmt_t]\nconflict = k\naction = none\n", 1);
    n = put_sync(buf, sizeof buf, put_bind_execute(buf, sizeof buf, 0, "1", "x"));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "EZ", "26000", NULL, "a Bind of the unnamed statement");

    /* The same while the server copies from the client, which lets the
     * messages after the batch go before its answer: the unnamed
     * statement defined there is the one a Bind then runs. */
    static const char copy[] = "COPY stmt_t (k, payload) FROM STDIN";
    n = itest_build_msg(buf, sizeof buf, 'Q', copy, sizeof copy);
    n += itest_build_msg(buf + n, sizeof buf - n, 'c', NULL, 0);
    n = put_parse_unnamed(buf, sizeof buf, n,
                          "INSERT INTO stmt_t (k, payload) VALUES ($1, 'x'::int)");
    n += itest_build_msg(buf + n, sizeof buf - n, 'Q', query, sizeof query);
    n = put_sync(buf, sizeof buf, n);
    n = put_sync(buf, sizeof buf, put_parse_unnamed(buf, sizeof buf, n, "SELECT 2"));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "GCZ", NULL, "COPY 0", "the COPY");
    expect_replies(fd, "EZ", "22P02", NULL, "the refused Parse, the Query skipped");
    expect_replies(fd, "1Z", NULL, NULL, "the unnamed statement defined again");
    itest_proxy_reload(p, "[table public.stmt_t]\nconflict = k\n", 2);
    n = put_bind_execute_values(buf, sizeof buf, 0, "", NULL, 0);
    assert_true(itest_raw_send(fd, buf, put_sync(buf, sizeof buf, n)));
    expect_replies(fd, "2DCZ", NULL, "SELECT 1", "the unnamed statement after the reload");
    itest_raw_close(fd);
    itest_pass();
}

/* A statement the client prepared and dropped where the proxy could not
 * see (in a function) is not brought back when a reload has the proxy
 * prepare it again: its Bind fails as on PostgreSQL (26000), and inserts
 * nothing. */
static void test_stmt_dropped_unseen_stays_dropped(void **state)
{
    (void)state;
    create_table();
    itest_server_exec("CREATE OR REPLACE FUNCTION stmt_drop(name text) RETURNS void "
                      "LANGUAGE plpgsql AS $$ BEGIN EXECUTE format('DEALLOCATE %I', name); END $$");
    struct itest_proxy *p = proxy("");
    int fd = raw_session(p, "itest_dropped_unseen");
    static const char drop[] = "SELECT stmt_drop('s_gone')";
    uint8_t buf[1024];
    size_t n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, 0, "s_gone", INSERT));
    n += itest_build_msg(buf + n, sizeof buf - n, 'Q', drop, sizeof drop);
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "1Z", NULL, NULL, "the Parse of s_gone");
    expect_replies(fd, "TDCZ", NULL, "SELECT 1", "its drop in a function");

    itest_proxy_reload(p, "[table public.stmt_t]\nconflict = k\naction = none\n", 1);
    n = put_sync(buf, sizeof buf, put_bind_execute_of(buf, sizeof buf, 0, "s_gone", "1", "x"));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "EZ", "26000", NULL, "s_gone bound after the reload");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 0);
    assert_true(itest_proxy_log_contains(p, "prepared again for the rules now in force"));
    itest_raw_close(fd);
    itest_pass();
}

/* Redefines statement s_big in a message over max_held_message (1 kB),
 * which the proxy streams through unread: with define_by_sql, an SQL
 * DEALLOCATE and PREPARE in one Query; otherwise a Query that drops it
 * and a Parse that defines it again. */
static void redefine_unread(int fd, bool define_by_sql)
{
    char pad[1500], sql[1700];
    uint8_t buf[4096];

    memset(pad, 'p', sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    snprintf(sql, sizeof sql, "DEALLOCATE s_big; %s'%s'",
             define_by_sql ? "PREPARE s_big AS SELECT " : "SELECT ", pad);
    size_t n = itest_build_msg(buf, sizeof buf, 'Q', sql, strlen(sql) + 1);
    assert_true(itest_raw_send(fd, buf, n));
    if (define_by_sql) {
        expect_replies(fd, "C", NULL, "DEALLOCATE", "a long Query that redefines s_big");
        expect_replies(fd, "CZ", NULL, "PREPARE", "a long Query that redefines s_big");
        return;
    }
    expect_replies(fd, "C", NULL, "DEALLOCATE", "a long Query that drops s_big");
    expect_replies(fd, "TDCZ", NULL, "SELECT 1", "a long Query that drops s_big");
    snprintf(sql, sizeof sql, "SELECT '%s'", pad);
    n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, 0, "s_big", sql));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "1Z", NULL, NULL, "a long Parse of s_big");
}

/* A statement the proxy knew as an INSERT and the client redefined in a
 * message too long for the proxy to read is not prepared again in its old
 * text when the rules change: its Bind runs what the client defined.
 * While no rules apply (a reload without tables), then while they do. */
static void test_stmt_redefined_unread(void **state)
{
    (void)state;
    /* Each turn's rules after: s_big's INSERT prepared otherwise than by
     * the rules it was prepared under (the default action, then none). */
    static const char *const rules_after[] = {
        "max_held_message = 1kB\n[table public.stmt_t]\nconflict = k\naction = none\n",
        "max_held_message = 1kB\n[table public.stmt_t]\nconflict = k\n",
    };
    create_table();
    struct itest_proxy *p = proxy_holding_1kb();
    int reloads = 0;

    for (int with_rules = 0; with_rules < 2; with_rules++) {
        int fd = raw_session(p, "itest_redefined_unread");
        uint8_t buf[1024];
        size_t n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, 0, "s_big", INSERT));
        assert_true(itest_raw_send(fd, buf, n));
        expect_replies(fd, "1Z", NULL, NULL, "the Parse of s_big");
        if (!with_rules)
            itest_proxy_reload(p, "max_held_message = 1kB\n", ++reloads);
        redefine_unread(fd, with_rules);
        itest_proxy_reload(p, rules_after[with_rules], ++reloads);

        n = put_bind_execute_values(buf, sizeof buf, 0, "s_big", NULL, 0);
        assert_true(itest_raw_send(fd, buf, put_sync(buf, sizeof buf, n)));
        expect_replies(fd, "2DCZ", NULL, "SELECT 1", "s_big after the reload");
        itest_raw_close(fd);
    }
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 0);
    itest_pass();
}

/* Sends sql as a Query and reads its CommandComplete (tag) and
 * ReadyForQuery. */
/* Sends sql as a Query and expects types (see expect_replies) back. */
static void query_replies(int fd, const char *sql, const char *types, const char *tag)
{
    uint8_t buf[1024];
    size_t n = itest_build_msg(buf, sizeof buf, 'Q', sql, strlen(sql) + 1);

    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, types, NULL, tag, sql);
}

static void query_tag(int fd, const char *sql, const char *tag)
{
    query_replies(fd, sql, "CZ", tag);
}

/* A Query that changes a setting the server reports (ParameterStatus). */
static void query_setting(int fd, const char *sql, const char *tag)
{
    query_replies(fd, sql, "CSZ", tag);
}

#define PATH_CHANGES 3

/* The i-th of PATH_CHANGES changes of where stmt_t leads (to schema, back,
 * and to schema LOCAL in a block it begins first) as a Query, with then
 * bytes (the extended messages right behind it) in the same write; reads
 * the change's answer. */
static void send_behind_path_change(int fd, size_t i, const char *schema, const uint8_t *then,
                                    size_t then_len)
{
    char sql[128];
    uint8_t buf[1024];
    const char *tag = i == 1 ? "RESET" : "SET";

    if (i == 1)
        snprintf(sql, sizeof sql, "RESET search_path");
    else
        snprintf(sql, sizeof sql, "SET %ssearch_path TO %s, public", i == 2 ? "LOCAL " : "",
                 schema);
    if (i == 2)
        query_tag(fd, "BEGIN", "BEGIN");
    size_t n = itest_build_msg(buf, sizeof buf, 'Q', sql, strlen(sql) + 1);
    assert_true(n + then_len <= sizeof buf);
    memcpy(buf + n, then, then_len);
    assert_true(itest_raw_send(fd, buf, n + then_len));
    expect_replies(fd, "CZ", NULL, tag, sql);
}

/* A statement the proxy rewrote, bound right behind a change of where its
 * table leads (a Query of SET search_path, then the Bind, in one write),
 * waits for the change to be answered and the session asked, and runs as
 * the client wrote it on the new path, as it does straight on PostgreSQL:
 * there the table of the name has no unique index, which the rewritten
 * form would fail on (42P10). Outside a block, inside one with SET LOCAL,
 * and back. */
static void test_stmt_bound_behind_path_change(void **state)
{
    (void)state;
    create_table();
    itest_server_exec("DROP SCHEMA IF EXISTS stmt_elsewhere CASCADE; CREATE SCHEMA stmt_elsewhere; "
                      "CREATE TABLE stmt_elsewhere.stmt_t (k bigint, payload text)");
    int fd = raw_session(proxy(""), "itest_path_change");
    uint8_t buf[1024];
    size_t n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, 0, "s_ins", INSERT));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "1Z", NULL, NULL, "the Parse of s_ins");

    static const char *const keys[PATH_CHANGES] = { "1", "1", "2" };
    for (size_t i = 0; i < PATH_CHANGES; i++) {
        n = put_sync(buf, sizeof buf, put_bind_execute_of(buf, sizeof buf, 0, "s_ins", keys[i],
                                                          "behind"));
        send_behind_path_change(fd, i, "stmt_elsewhere", buf, n);
        expect_replies(fd, "2CZ", NULL, "INSERT 0 1", "s_ins bound right behind it");
    }
    query_tag(fd, "COMMIT", "COMMIT");
    query_tag(fd, "RESET search_path", "RESET");

    /* The server copying what came before the change does not let the
     * Bind go early. */
    static const char copy[] = "COPY stmt_t (k, payload) FROM STDIN";
    static const char row[] = "3\tcopied\n";
    static const char change[] = "SET search_path TO stmt_elsewhere, public";
    n = itest_build_msg(buf, sizeof buf, 'Q', copy, sizeof copy);
    n += itest_build_msg(buf + n, sizeof buf - n, 'd', row, sizeof row - 1);
    n += itest_build_msg(buf + n, sizeof buf - n, 'c', NULL, 0);
    n += itest_build_msg(buf + n, sizeof buf - n, 'Q', change, sizeof change);
    n = put_sync(buf, sizeof buf, put_bind_execute_of(buf, sizeof buf, n, "s_ins", "4", "behind"));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "GCZ", NULL, "COPY 1", "the COPY before the change");
    expect_replies(fd, "CZ", NULL, "SET", change);
    expect_replies(fd, "2CZ", NULL, "INSERT 0 1", "s_ins bound right behind the change");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_elsewhere.stmt_t"), 3);
    query_tag(fd, "RESET search_path", "RESET");

    /* Nor does a redefinition of the statement the server has yet to
     * refuse (it exists), which leaves the proxy unsure what it holds
     * until then. */
    n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, 0, "s_ins", "SELECT 1"));
    n += itest_build_msg(buf + n, sizeof buf - n, 'Q', change, sizeof change);
    n = put_sync(buf, sizeof buf, put_bind_execute_of(buf, sizeof buf, n, "s_ins", "5", "behind"));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "EZ", "42P05", NULL, "s_ins defined again");
    expect_replies(fd, "CZ", NULL, "SET", change);
    expect_replies(fd, "2CZ", NULL, "INSERT 0 1", "s_ins bound right behind the change");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_elsewhere.stmt_t"), 4);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t WHERE payload = 'behind'"), 1);
    itest_raw_close(fd);
    itest_pass();
}

/* A Describe of a statement the proxy rewrote, sent right behind a change
 * of where its table leads, describes the client's own text on the new
 * path, as PostgreSQL does: there the table of the name has no column k,
 * which the rewritten form names as its conflict target (42703 at the
 * Describe, where PostgreSQL analyses a statement with a result again),
 * and a Bind of it then inserts there. Outside a block, and inside one
 * with SET LOCAL. */
static void test_stmt_described_behind_path_change(void **state)
{
    (void)state;
    create_table();
    itest_server_exec("DROP SCHEMA IF EXISTS stmt_nokey CASCADE; CREATE SCHEMA stmt_nokey; "
                      "CREATE TABLE stmt_nokey.stmt_t (payload text)");
    int fd = raw_session(proxy(""), "itest_describe_path");
    static const char text[] = "INSERT INTO stmt_t (payload) VALUES ($1) RETURNING payload";
    static const uint8_t describe[] = "Ss_pay";
    static const char *const there[] = { "there" };
    uint8_t buf[1024];
    size_t n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, 0, "s_pay", text));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "1Z", NULL, NULL, "the Parse of s_pay");

    for (size_t i = 0; i < PATH_CHANGES; i++) {
        n = itest_build_msg(buf, sizeof buf, 'D', describe, sizeof describe);
        send_behind_path_change(fd, i, "stmt_nokey", buf, put_sync(buf, sizeof buf, n));
        expect_replies(fd, "tTZ", NULL, NULL, "s_pay described right behind it");
        if (i == 1)
            continue;
        n = put_bind_execute_values(buf, sizeof buf, 0, "s_pay", there, 1);
        assert_true(itest_raw_send(fd, buf, put_sync(buf, sizeof buf, n)));
        expect_replies(fd, "2DCZ", NULL, "INSERT 0 1", "s_pay run where it leads");
    }
    query_tag(fd, "COMMIT", "COMMIT");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_nokey.stmt_t"), 2);
    itest_raw_close(fd);
    itest_pass();
}

/* In a session that turned standard_conforming_strings off, which keeps
 * the rewrite away from its texts, a statement the proxy rewrote before
 * and binds right behind a change of where its table leads runs as the
 * client wrote it there, as on PostgreSQL (the table of the name has no
 * unique index, which the rewritten form fails on). But one whose text
 * has a backslash in a string is not prepared again, not even for new
 * rules after a reload: parsed under the setting now in force, 'a\nb'
 * would be three characters where the client meant four. */
static void test_stmt_prepared_before_strings_setting(void **state)
{
    (void)state;
    create_table();
    itest_server_exec("DROP SCHEMA IF EXISTS stmt_elsewhere CASCADE; CREATE SCHEMA stmt_elsewhere; "
                      "CREATE TABLE stmt_elsewhere.stmt_t (k bigint, payload text)");
    struct itest_proxy *p = proxy("");
    int fd = raw_session(p, "itest_strings_setting");
    static const char backslash[] = "INSERT INTO stmt_t (k, payload) VALUES ($1, 'a\\nb')";
    uint8_t buf[1024];
    size_t n = put_parse(buf, sizeof buf, 0, "s_ins", INSERT);
    n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, n, "s_bs", backslash));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "11Z", NULL, NULL, "the Parses of s_ins and s_bs");
    query_setting(fd, "SET standard_conforming_strings = off", "SET");

    n = put_sync(buf, sizeof buf, put_bind_execute_of(buf, sizeof buf, 0, "s_ins", "1", "there"));
    send_behind_path_change(fd, 0, "stmt_elsewhere", buf, n);
    expect_replies(fd, "2CZ", NULL, "INSERT 0 1", "s_ins bound right behind it");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_elsewhere.stmt_t"), 1);
    query_tag(fd, "RESET search_path", "RESET");

    itest_proxy_reload(p, "[table public.stmt_t]\nconflict = k\naction = none\n", 1);
    static const char *const two[] = { "2" };
    n = put_bind_execute_values(buf, sizeof buf, 0, "s_bs", two, 1);
    assert_true(itest_raw_send(fd, buf, put_sync(buf, sizeof buf, n)));
    expect_replies(fd, "2CZ", NULL, "INSERT 0 1", "s_bs after the reload");
    assert_int_equal(itest_server_ll("SELECT length(payload) FROM stmt_t WHERE k = 2"), 4);
    assert_true(itest_proxy_log_contains(p, "\"s_bs\" stays as prepared"));
    itest_raw_close(fd);
    itest_pass();
}

/* A Bind too large to read, of a statement the proxy rewrote, right
 * behind a change of where its table leads, waits as a Bind it reads
 * does, and runs as the client wrote it on the new path. */
static void test_stmt_large_bind_behind_path_change(void **state)
{
    (void)state;
    create_table();
    itest_server_exec("DROP SCHEMA IF EXISTS stmt_elsewhere CASCADE; CREATE SCHEMA stmt_elsewhere; "
                      "CREATE TABLE stmt_elsewhere.stmt_t (k bigint, payload text)");
    struct itest_proxy *p = proxy_holding_1kb();
    int fd = raw_session(p, "itest_large_bind_path");
    uint8_t buf[8192];
    size_t n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, 0, "s_ins", INSERT));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "1Z", NULL, NULL, "the Parse of s_ins");

    static const char set[] = "SET search_path TO stmt_elsewhere, public";
    const char *values[2] = { "1", large_value() };
    n = itest_build_msg(buf, sizeof buf, 'Q', set, sizeof set);
    n = put_sync(buf, sizeof buf, put_bind_execute_values(buf, sizeof buf, n, "s_ins", values, 2));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "CZ", NULL, "SET", set);
    expect_replies(fd, "2CZ", NULL, "INSERT 0 1", "the large Bind of s_ins behind it");
    assert_true(itest_proxy_log_contains(p, "'B' message of"));
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_elsewhere.stmt_t"), 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 0);
    itest_raw_close(fd);
    itest_pass();
}

/* A Parse too large to read that the server refuses (its name is in use)
 * leaves the name what it was: s_ins is still the INSERT, prepared again
 * after a reload. One of the unnamed statement, while that stands for the
 * cached INSERT, makes it the server's own again: its Bind runs the large
 * statement. */
static void test_stmt_large_parse_refused(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy_holding_1kb();
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *one[2] = { "1", "one" };
    const char *select = large_text("SELECT 1");

    prepare_ok(c, "s_ins", INSERT, 2);
    exec_prepared_tag(c, "s_ins", 2, one, "INSERT 0 1");
    fails_with(itest_prepare(c, "s_ins", select, 0), "42P05", "the large Parse of s_ins");
    exec_prepared_tag(c, "s_ins", 2, one, "INSERT 0 0");
    itest_proxy_reload(p, "max_held_message = 1kB\n", 1);
    fails_with(itest_exec_prepared(c, "s_ins", 2, one), "23505", "s_ins after the reload");

    itest_proxy_reload(p, "max_held_message = 1kB\n[table public.stmt_t]\nconflict = k\n", 2);
    prepare_unnamed_twice(c, INSERT);
    exec_unnamed(c, "2", "two", "INSERT 0 1");
    prepare_ok(c, "", select, 0);
    exec_prepared_tag(c, "", 0, NULL, "SELECT 1");
    assert_int_equal(itest_proxy_log_count(p, "'P' message of"), 2);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 2);
    itest_pass();
}

/* A Bind too large to read that arrives in parts, the first ending inside
 * its statement's name: the proxy waits for its first bytes before it
 * decides, and follows it as it follows one that came at once. s_ins
 * stays known, and a reload that drops the rule prepares it again without
 * the clause. */
static void test_stmt_large_bind_in_parts(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy_holding_1kb();
    int fd = raw_session(p, "itest_large_bind_in_parts");
    static const char *const k1[] = { "1", "one" };
    const char *k2[] = { "2", large_value() };
    uint8_t buf[8192];

    size_t n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, 0, "s_ins", INSERT));
    n = put_sync(buf, sizeof buf, put_bind_execute_values(buf, sizeof buf, n, "s_ins", k1, 2));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "1Z", NULL, NULL, "the Parse");
    expect_replies(fd, "2CZ", NULL, "INSERT 0 1", "the INSERT");

    /* The Bind's head, its portal's name and one byte of its statement's. */
    n = put_sync(buf, sizeof buf, put_bind_execute_values(buf, sizeof buf, 0, "s_ins", k2, 2));
    assert_true(itest_raw_send(fd, buf, 7));
    usleep(100 * 1000);
    assert_true(itest_raw_send(fd, buf + 7, n - 7));
    expect_replies(fd, "2CZ", NULL, "INSERT 0 1", "the large Bind");
    assert_true(itest_proxy_log_contains(p, "'B' message of"));

    itest_proxy_reload(p, "max_held_message = 1kB\n", 1);
    n = put_sync(buf, sizeof buf, put_bind_execute_values(buf, sizeof buf, 0, "s_ins", k1, 2));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "2E", "23505", NULL, "s_ins after the reload");
    expect_replies(fd, "Z", NULL, NULL, "the Sync");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 2);
    itest_raw_close(fd);
    itest_pass();
}

/* A message too large to read, in the same read as messages the proxy let
 * pass before it: what the proxy writes ahead of it (the cached text, for
 * the unnamed statement standing for a cached INSERT) sends those first,
 * and the large message is still framed where it lies. A Parse and, on
 * its own, a Bind. */
static void test_stmt_large_behind_passed(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy_holding_1kb();
    int fd = raw_session(p, "itest_large_behind_passed");
    char long_text[1400];
    snprintf(long_text, sizeof long_text, "%s /* %s */", INSERT, large_value() + 1000);
    static const char *const k1[] = { "1", "one" }, *const k2[] = { "2", "two" };
    static const char *const k3[] = { "3", "three" };
    const char *k4[] = { "4", large_value() };
    uint8_t buf[8192];

    /* The cached copy, for the Parses below to stand for. */
    pipeline_inserts(fd, INSERT, 100, 1, "INSERT 0 1");
    for (int round = 0; round < 2; round++) {
        size_t n = put_parse_unnamed(buf, sizeof buf, 0, INSERT);
        n = put_sync(buf, sizeof buf, put_bind_execute_values(buf, sizeof buf, n, "",
                                                              round ? k3 : k1, 2));
        if (round == 0)
            n = put_parse_unnamed(buf, sizeof buf, n, long_text);
        n = put_sync(buf, sizeof buf, put_bind_execute_values(buf, sizeof buf, n, "",
                                                              round ? k4 : k2, 2));
        assert_true(itest_raw_send(fd, buf, n));
        expect_replies(fd, "12CZ", NULL, "INSERT 0 1", "the INSERT");
        expect_replies(fd, round ? "2CZ" : "12CZ", NULL, "INSERT 0 1",
                       round ? "the large Bind" : "the large Parse");
    }
    assert_int_equal(itest_proxy_log_count(p, "streamed unread"), 2);
    assert_false(itest_proxy_log_contains(p, "out of step"));
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_t"), 5);
    itest_raw_close(fd);
    itest_pass();
}

/* Settings changed and changed back: a text kept under the login's is
 * prepared again once they are the login's again; one kept while they
 * were not keeps its form, and so, from then on, does every other that
 * could mean otherwise. */
static void test_stmt_settings_back(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy("");
    int fd = raw_session(p, "itest_settings_back");
    static const char backslash[] = "INSERT INTO stmt_t (k, payload) VALUES ($1, 'a\\nb')";
    static const char accented[] = "INSERT INTO stmt_t (k, payload) VALUES ($1, '\xc3\xa9')";
    static const char *const one[] = { "1" }, *const two[] = { "2" }, *const three[] = { "3" };
    uint8_t buf[1024];
    size_t n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, 0, "s_bs", backslash));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "1Z", NULL, NULL, "the Parse of s_bs");
    query_setting(fd, "SET standard_conforming_strings = off", "SET");
    query_setting(fd, "RESET standard_conforming_strings", "RESET");

    itest_proxy_reload(p, "[table public.stmt_t]\nconflict = k\naction = none\n", 1);
    n = put_bind_execute_values(buf, sizeof buf, 0, "s_bs", one, 1);
    assert_true(itest_raw_send(fd, buf, put_sync(buf, sizeof buf, n)));
    expect_replies(fd, "2CZ", NULL, "INSERT 0 1", "s_bs after the reload");
    assert_true(itest_proxy_log_contains(p, "statement \"s_bs\" prepared again"));
    assert_int_equal(itest_server_ll("SELECT length(payload) FROM stmt_t WHERE k = 1"), 4);

    query_setting(fd, "SET client_encoding = 'LATIN1'", "SET");
    n = put_sync(buf, sizeof buf, put_parse(buf, sizeof buf, 0, "s_acc", accented));
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "1Z", NULL, NULL, "the Parse of s_acc under LATIN1");
    query_setting(fd, "RESET client_encoding", "RESET");
    itest_proxy_reload(p, "[table public.stmt_t]\nconflict = k\n", 2);
    n = put_bind_execute_values(buf, sizeof buf, 0, "s_acc", two, 1);
    assert_true(itest_raw_send(fd, buf, put_sync(buf, sizeof buf, n)));
    expect_replies(fd, "2CZ", NULL, "INSERT 0 1", "s_acc after the second reload");
    n = put_bind_execute_values(buf, sizeof buf, 0, "s_bs", three, 1);
    assert_true(itest_raw_send(fd, buf, put_sync(buf, sizeof buf, n)));
    expect_replies(fd, "2CZ", NULL, "INSERT 0 1", "s_bs after the second reload");
    assert_true(itest_proxy_log_contains(p, "\"s_acc\" stays as prepared"));
    assert_true(itest_proxy_log_contains(p, "\"s_bs\" stays as prepared"));
    /* As parsed under LATIN1: two characters. */
    assert_int_equal(itest_server_ll("SELECT length(payload) FROM stmt_t WHERE k = 2"), 2);
    itest_raw_close(fd);
    itest_pass();
}

/* An Execute of the INSERT's portal after it ran fails as on PostgreSQL
 * (55000, portal "" cannot be run), and is no sign that the table changed:
 * the rewrite goes on. */
static void test_stmt_portal_run_twice(void **state)
{
    (void)state;
    create_table();
    struct itest_proxy *p = proxy("");
    int fd = raw_session(p, "itest_portal_run_twice");

    static const uint8_t execute[] = { '\0', 0, 0, 0, 0 };
    uint8_t buf[1024];
    size_t n = put_parse_unnamed(buf, sizeof buf, 0, INSERT);
    n = put_bind_execute(buf, sizeof buf, n, "1", "twice");
    n += itest_build_msg(buf + n, sizeof buf - n, 'E', execute, sizeof execute);
    n = put_sync(buf, sizeof buf, n);
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "12C", NULL, "INSERT 0 1", "the INSERT");
    expect_replies(fd, "EZ", "55000", NULL, "its portal run again");
    /* The error rolled the batch's implicit transaction back. */
    pipeline_inserts(fd, INSERT, 1, 1, "INSERT 0 1");
    pipeline_inserts(fd, INSERT, 1, 1, "INSERT 0 0");
    assert_int_equal(itest_proxy_log_count(p, "from the server"), 0);
    itest_raw_close(fd);
    itest_pass();
}

/* A Bind the server refuses makes the proxy forget its portal, which it
 * no longer knows; not when a later batch, sent before the refusal came
 * back, bound that portal again: a SET search_path bound so and run once
 * the refusal is in changes where stmt_t leads, and the INSERT behind it
 * runs as the client wrote it on the new path, as it does straight on
 * PostgreSQL (the rewritten form would fail there, 42P10). */
static void test_stmt_portal_bound_behind_refused_bind(void **state)
{
    (void)state;
    create_table();
    itest_server_exec("DROP SCHEMA IF EXISTS stmt_rebound CASCADE; CREATE SCHEMA stmt_rebound; "
                      "CREATE TABLE stmt_rebound.stmt_t (k bigint, payload text)");
    int fd = raw_session(proxy(""), "itest_rebound_portal");
    static const uint8_t bind_unnamed[] = { '\0', '\0', 0, 0, 0, 0, 0, 0 };
    static const uint8_t execute[] = { '\0', 0, 0, 0, 0 };
    uint8_t buf[1024];

    size_t n = put_sync(buf, sizeof buf,
                        put_bind_execute_values(buf, sizeof buf, 0, "no_such", NULL, 0));
    n = put_parse_unnamed(buf, sizeof buf, n, "SET search_path TO stmt_rebound, public");
    n += itest_build_msg(buf + n, sizeof buf - n, 'B', bind_unnamed, sizeof bind_unnamed);
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "EZ", "26000", NULL, "the Bind of a statement that does not exist");
    n = itest_build_msg(buf, sizeof buf, 'E', execute, sizeof execute);
    n = put_sync(buf, sizeof buf, n);
    assert_true(itest_raw_send(fd, buf, n));
    expect_replies(fd, "12CZ", NULL, "SET", "the portal bound behind it, run");
    query_tag(fd, "INSERT INTO stmt_t (k, payload) VALUES (1, 'on the new path')", "INSERT 0 1");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM stmt_rebound.stmt_t"), 1);
    itest_raw_close(fd);
    itest_pass();
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        ITEST(test_stmt_cached),
        ITEST(test_stmt_unnamed_semantics),
        ITEST(test_stmt_deallocate),
        ITEST(test_stmt_errors),
        ITEST(test_stmt_large_bind),
        ITEST(test_stmt_large_parse),
        ITEST(test_stmt_large_bind_followed),
        ITEST(test_stmt_large_parse_followed),
        ITEST(test_stmt_large_bind_in_parts),
        ITEST(test_stmt_large_parse_refused),
        ITEST(test_stmt_cache_across_encodings),
        ITEST(test_stmt_restored_across_encodings),
        ITEST(test_stmt_reload),
        ITEST(test_stmt_split_reads),
        ITEST(test_stmt_query_prepared),
        ITEST(test_stmt_value_errors),
        ITEST(test_stmt_skipped_redefinition),
        ITEST(test_stmt_redefinition_behind_two_syncs),
        ITEST(test_stmt_parse_skipped_after_copy_failed),
        ITEST(test_stmt_dropped_unseen_stays_dropped),
        ITEST(test_stmt_refused_unnamed_stays_gone),
        ITEST(test_stmt_redefined_unread),
        ITEST(test_stmt_bound_behind_path_change),
        ITEST(test_stmt_described_behind_path_change),
        ITEST(test_stmt_prepared_before_strings_setting),
        ITEST(test_stmt_settings_back),
        ITEST(test_stmt_large_behind_passed),
        ITEST(test_stmt_large_bind_behind_path_change),
        ITEST(test_stmt_portal_run_twice),
        ITEST(test_stmt_portal_bound_behind_refused_bind),
    };
    return itest_main(argc, argv, "idemproxy cached statements", tests,
                      sizeof tests / sizeof tests[0]);
}
