/*
 * Integration tests of error translation: the 23505 errors that still reach
 * the server for a registered table (DEFERRABLE unique constraints, tables
 * with action = none, partitions) become the success "INSERT 0 0" where,
 * and only where, that is the truth (see the rules in translate.h).
 *
 * Run by tests/integration.sh (same environment and scratch cluster as
 * test_integration). Every test starts its own proxy with the [table]
 * sections it needs, creates its own tables directly on the server (names
 * tr_*), and checks afterwards, directly on the server, that what the client
 * was told is what the tables hold. Transaction status is checked with
 * PQtransactionStatus wherever a reply was replaced.
 *
 * Run one test: test_translation test_tr_cancel (a cmocka filter pattern,
 * also taken from IDEM_TEST_FILTER; every test here is named test_tr_*).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "itest.h"

/* ---- small helpers local to the tests --------------------------------- */

static const char *txn_name(PGTransactionStatusType s)
{
    switch (s) {
    case PQTRANS_IDLE: return "IDLE";
    case PQTRANS_ACTIVE: return "ACTIVE";
    case PQTRANS_INTRANS: return "INTRANS";
    case PQTRANS_INERROR: return "INERROR";
    default: return "UNKNOWN";
    }
}

static void assert_txn(PGconn *c, PGTransactionStatusType want, const char *what)
{
    PGTransactionStatusType got = PQtransactionStatus(c);
    if (got != want)
        fail_msg("%s: transaction status %s, want %s", what, txn_name(got), txn_name(want));
}

/* In a transaction block, sql (simple protocol) fails with sqlstate and the
 * block is failed, as the server says; then ROLLBACK. */
static void fails_in_block(PGconn *c, const char *sql, const char *sqlstate)
{
    char what[600];
    snprintf(what, sizeof what, "%s (in a transaction block)", sql);
    itest_exec_tag(c, "BEGIN", "BEGIN");
    PGresult *r = itest_exec(c, sql);
    itest_assert_sqlstate(r, sqlstate, what);
    PQclear(r);
    assert_txn(c, PQTRANS_INERROR, what);
    itest_exec_tag(c, "ROLLBACK", "ROLLBACK");
}

/* Status, SQLSTATE and tag of r, for the test's output (a static buffer). */
static const char *result_text(PGresult *r)
{
    static char text[160];
    if (r == NULL)
        return "(no result)";
    const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    snprintf(text, sizeof text, "%s %s \"%s\"", PQresStatus(PQresultStatus(r)), code ? code : "",
             PQcmdStatus(r));
    return text;
}

static void params_tag(PGconn *c, const char *sql, const char *val, const char *tag)
{
    const char *vals[1] = { val };
    PGresult *r = itest_exec_params(c, sql, val ? 1 : 0, vals);
    char what[600];
    snprintf(what, sizeof what, "%s [$1 = %s] (extended)", sql, val ? val : "-");
    itest_assert_tag(r, tag, what);
    PQclear(r);
}

static void params_sqlstate(PGconn *c, const char *sql, const char *val, const char *sqlstate)
{
    const char *vals[1] = { val };
    PGresult *r = itest_exec_params(c, sql, val ? 1 : 0, vals);
    char what[600];
    snprintf(what, sizeof what, "%s [$1 = %s] (extended)", sql, val ? val : "-");
    itest_assert_sqlstate(r, sqlstate, what);
    PQclear(r);
}

/* A table with a DEFERRABLE unique constraint on k: the catalog check
 * refuses ON CONFLICT there, so duplicates reach the server as 23505. */
static void create_defer_table(const char *table)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "DROP TABLE IF EXISTS %s CASCADE; "
             "CREATE TABLE %s (id bigserial PRIMARY KEY, k text NOT NULL, payload text, "
             "UNIQUE (k) DEFERRABLE INITIALLY IMMEDIATE)",
             table, table);
    itest_server_exec(sql);
}

static void server_insert(const char *table, const char *key, const char *payload)
{
    char sql[512];
    snprintf(sql, sizeof sql, "INSERT INTO %s (k, payload) VALUES ('%s', '%s')", table, key,
             payload);
    itest_server_exec(sql);
}

/* Rows of table with key k, counted directly on the server. */
static long long key_rows(const char *table, const char *key)
{
    return itest_server_ll("SELECT count(*) FROM %s WHERE k = '%s'", table, key);
}

static long long all_rows(const char *table)
{
    return itest_server_ll("SELECT count(*) FROM %s", table);
}

/* A proxy (logging at debug level) with one section [table public.<table>],
 * conflict = k. */
static struct itest_proxy *start_proxy_for(const char *table)
{
    return itest_proxy_start_table("debug", table, "k", "");
}

/* The usual setting: table t (see create_defer_table) holding the row
 * ('dup', 'orig'), and a proxy that registers it. */
static struct itest_proxy *start_with_dup(const char *t)
{
    create_defer_table(t);
    server_insert(t, "dup", "orig");
    return start_proxy_for(t);
}

/* Waits (bounded) for a line with a, b and c to appear in the log. */
static void wait_log_line(const struct itest_proxy *p, const char *a, const char *b,
                          const char *c, int timeout_ms)
{
    int64_t deadline = itest_now_ms() + timeout_ms;
    while (!itest_proxy_log_line_has(p, a, b, c) && itest_now_ms() < deadline)
        itest_sleep_ms(50);
    itest_assert_log_line(p, a, b, c);
}

/* ---- INSERTs in the three protocol flavours ---------------------------- */

enum proto { P_SIMPLE, P_EXTENDED, P_PREPARED };

static const char *const proto_names[] = { "simple", "extended", "prepared" };

/* Prepares "ins" (INSERT INTO table (k, payload) VALUES ($1, $2)) and
 * "ins_ret" (the same, RETURNING id) on c. */
static void prepare_inserts(PGconn *c, const char *table)
{
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (k, payload) VALUES ($1, $2)", table);
    PGresult *r = itest_prepare(c, "ins", sql, 2);
    itest_assert_result_ok(r, "PQprepare ins");
    PQclear(r);
    snprintf(sql, sizeof sql, "INSERT INTO %s (k, payload) VALUES ($1, $2) RETURNING id", table);
    r = itest_prepare(c, "ins_ret", sql, 2);
    itest_assert_result_ok(r, "PQprepare ins_ret");
    PQclear(r);
}

/* INSERT (k, payload) into table through c the given way; the result. */
static PGresult *insert_row(PGconn *c, enum proto mode, const char *table, const char *key,
                            bool returning)
{
    char sql[512];
    const char *vals[2] = { key, "p" };
    switch (mode) {
    case P_SIMPLE:
        snprintf(sql, sizeof sql, "INSERT INTO %s (k, payload) VALUES ('%s', 'p')%s", table, key,
                 returning ? " RETURNING id" : "");
        return itest_exec(c, sql);
    case P_EXTENDED:
        snprintf(sql, sizeof sql, "INSERT INTO %s (k, payload) VALUES ($1, $2)%s", table,
                 returning ? " RETURNING id" : "");
        return itest_exec_params(c, sql, 2, vals);
    case P_PREPARED:
        return itest_exec_prepared(c, returning ? "ins_ret" : "ins", 2, vals);
    }
    return NULL;
}

static void insert_tag(PGconn *c, enum proto mode, const char *table, const char *key,
                       const char *tag)
{
    char what[256];
    snprintf(what, sizeof what, "INSERT '%s' into %s (%s)", key, table, proto_names[mode]);
    PGresult *r = insert_row(c, mode, table, key, false);
    itest_assert_tag(r, tag, what);
    PQclear(r);
}

static void insert_sqlstate(PGconn *c, enum proto mode, const char *table, const char *key,
                            const char *sqlstate)
{
    char what[256];
    snprintf(what, sizeof what, "INSERT '%s' into %s (%s)", key, table, proto_names[mode]);
    PGresult *r = insert_row(c, mode, table, key, false);
    itest_assert_sqlstate(r, sqlstate, what);
    PQclear(r);
}

/* A command without parameters: simple Query, or extended (unnamed). */
static void cmd_tag(PGconn *c, enum proto mode, const char *sql, const char *tag)
{
    if (mode == P_SIMPLE)
        itest_exec_tag(c, sql, tag);
    else
        params_tag(c, sql, NULL, tag);
}

/* ---- 1. autocommit ------------------------------------------------------ */

static void test_tr_autocommit(void **state)
{
    (void)state;
    const char *t = "tr_auto";
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    prepare_inserts(c, t);

    for (int m = P_SIMPLE; m <= P_PREPARED; m++) {
        insert_tag(c, (enum proto)m, t, "dup", "INSERT 0 0");
        assert_txn(c, PQTRANS_IDLE, "after a translated duplicate");
        /* (RETURNING: test_tr_returning.) */
        char key[32];
        snprintf(key, sizeof key, "new-%s", proto_names[m]);
        insert_tag(c, (enum proto)m, t, key, "INSERT 0 1");
        /* The row just inserted is a duplicate now. */
        insert_tag(c, (enum proto)m, t, key, "INSERT 0 0");
        assert_int_equal(key_rows(t, key), 1);
    }
    /* A multi-row INSERT with one duplicate: the whole statement failed, so
     * none of its rows is there, which is what "INSERT 0 0" says. */
    itest_exec_tag(c, "INSERT INTO tr_auto (k, payload) VALUES ('m1', 'x'), ('dup', 'x')",
                   "INSERT 0 0");
    assert_txn(c, PQTRANS_IDLE, "after a translated multi-row duplicate");
    assert_int_equal(key_rows(t, "m1"), 0);

    assert_int_equal(itest_query_ll(c, "SELECT 7"), 7);
    assert_int_equal(all_rows(t), 4);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM tr_auto WHERE k = 'dup' AND "
                                     "payload = 'orig'"), 1);
    itest_assert_log_line(p, "public.tr_auto", "reported as INSERT 0 0", NULL);
    itest_pass();
}

/* ---- 2. explicit transactions -------------------------------------------- */

static void txn_scenarios(enum proto m, const char *t)
{
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    if (m == P_PREPARED)
        prepare_inserts(c, t);

    /* BEGIN; dup; new; COMMIT */
    cmd_tag(c, m, "BEGIN", "BEGIN");
    assert_txn(c, PQTRANS_INTRANS, "after BEGIN");
    insert_tag(c, m, t, "dup", "INSERT 0 0");
    assert_txn(c, PQTRANS_INTRANS, "after a translated duplicate in a transaction");
    insert_tag(c, m, t, "a1", "INSERT 0 1");
    assert_txn(c, PQTRANS_INTRANS, "after an INSERT after the duplicate");
    cmd_tag(c, m, "COMMIT", "COMMIT");
    assert_txn(c, PQTRANS_IDLE, "after COMMIT");
    assert_int_equal(key_rows(t, "a1"), 1);

    /* BEGIN; new1; dup; new2; COMMIT: both new rows. */
    cmd_tag(c, m, "BEGIN", "BEGIN");
    insert_tag(c, m, t, "b1", "INSERT 0 1");
    insert_tag(c, m, t, "dup", "INSERT 0 0");
    assert_txn(c, PQTRANS_INTRANS, "after the duplicate between two new rows");
    insert_tag(c, m, t, "b2", "INSERT 0 1");
    cmd_tag(c, m, "COMMIT", "COMMIT");
    assert_int_equal(key_rows(t, "b1"), 1);
    assert_int_equal(key_rows(t, "b2"), 1);

    /* Two duplicates in a row, then a new row. */
    cmd_tag(c, m, "BEGIN", "BEGIN");
    insert_tag(c, m, t, "dup", "INSERT 0 0");
    insert_tag(c, m, t, "a1", "INSERT 0 0");
    assert_txn(c, PQTRANS_INTRANS, "after two duplicates");
    insert_tag(c, m, t, "c1", "INSERT 0 1");
    cmd_tag(c, m, "COMMIT", "COMMIT");
    assert_int_equal(key_rows(t, "c1"), 1);

    /* A duplicate, a new row, then ROLLBACK: nothing committed. */
    cmd_tag(c, m, "BEGIN", "BEGIN");
    insert_tag(c, m, t, "dup", "INSERT 0 0");
    insert_tag(c, m, t, "d1", "INSERT 0 1");
    cmd_tag(c, m, "ROLLBACK", "ROLLBACK");
    assert_txn(c, PQTRANS_IDLE, "after ROLLBACK");
    assert_int_equal(key_rows(t, "d1"), 0);

    /* A duplicate of a row this same transaction inserted: the rollback to
     * the proxy's savepoint keeps the earlier row. */
    cmd_tag(c, m, "BEGIN", "BEGIN");
    insert_tag(c, m, t, "e1", "INSERT 0 1");
    insert_tag(c, m, t, "e1", "INSERT 0 0");
    insert_tag(c, m, t, "e2", "INSERT 0 1");
    cmd_tag(c, m, "COMMIT", "COMMIT");
    assert_int_equal(key_rows(t, "e1"), 1);
    assert_int_equal(key_rows(t, "e2"), 1);

    /* RETURNING id of a duplicate: no row, INSERT 0 0 (the simple protocol's
     * is test_tr_returning's); a new one: its id. */
    cmd_tag(c, m, "BEGIN", "BEGIN");
    PGresult *r;
    if (m != P_SIMPLE) {
        r = insert_row(c, m, t, "dup", true);
        itest_assert_tag(r, "INSERT 0 0", "duplicate INSERT ... RETURNING id in a transaction");
        assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
        assert_int_equal(PQntuples(r), 0);
        PQclear(r);
        assert_txn(c, PQTRANS_INTRANS, "after a translated duplicate RETURNING");
    }
    r = insert_row(c, m, t, "f1", true);
    itest_assert_tag(r, "INSERT 0 1", "new INSERT ... RETURNING id in a transaction");
    assert_int_equal(PQntuples(r), 1);
    long long f1_id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    cmd_tag(c, m, "COMMIT", "COMMIT");
    assert_int_equal(itest_server_ll("SELECT id FROM %s WHERE k = 'f1'", t), f1_id);

    /* dup, a1, b1, b2, c1, e1, e2, f1 */
    assert_int_equal(all_rows(t), 8);
    assert_int_equal(itest_server_ll("SELECT count(DISTINCT k) FROM %s", t), 8);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM %s WHERE k = 'dup' AND "
                                     "payload = 'orig'", t), 1);
    /* No savepoint of the proxy's is left in any session. */
    assert_int_equal(itest_query_ll(c, "SELECT 1"), 1);
    assert_txn(c, PQTRANS_IDLE, "at the end");
    itest_assert_log_line(p, t, "reported as INSERT 0 0", NULL);
}

static void test_tr_txn_simple(void **state)
{
    (void)state;
    txn_scenarios(P_SIMPLE, "tr_txn_simple");
    itest_pass();
}

static void test_tr_txn_extended(void **state)
{
    (void)state;
    txn_scenarios(P_EXTENDED, "tr_txn_extended");
    itest_pass();
}

static void test_tr_txn_prepared(void **state)
{
    (void)state;
    txn_scenarios(P_PREPARED, "tr_txn_named");
    itest_pass();
}

/* A client that prepares its unnamed statement once and runs it again and
 * again in a transaction block: the proxy's rollback to its savepoint
 * after a duplicate must leave the statement alone (a Query would drop
 * it, and the next Bind would fail with 26000, aborting the block). */
static void test_tr_txn_unnamed_kept(void **state)
{
    (void)state;
    const char *t = "tr_txn_unnamed";
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);

    itest_exec_tag(c, "BEGIN", "BEGIN");
    PGresult *r = itest_prepare(c, "", "INSERT INTO tr_txn_unnamed (k, payload) "
                                       "VALUES ($1, 'unnamed')", 1);
    itest_assert_result_ok(r, "PQprepare of the unnamed INSERT");
    PQclear(r);
    const char *const keys[] = { "u1", "dup", "u2", "dup", "u3" };
    const char *const tags[] = { "INSERT 0 1", "INSERT 0 0", "INSERT 0 1", "INSERT 0 0",
                                 "INSERT 0 1" };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        r = itest_exec_prepared(c, "", 1, &keys[i]);
        itest_assert_tag(r, tags[i], keys[i]);
        PQclear(r);
    }
    itest_exec_tag(c, "COMMIT", "COMMIT");
    assert_int_equal(all_rows(t), 4);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM %s WHERE payload = 'unnamed'", t), 3);
    itest_assert_log_line(p, t, "reported as INSERT 0 0", NULL);
    itest_pass();
}

/* INSERT ... RETURNING of a duplicate, translated: what a skipped row of
 * ON CONFLICT DO NOTHING RETURNING gives directly on the server, a row
 * description and no row (PGRES_TUPLES_OK, 0 tuples), tag INSERT 0 0. */
static void check_returning_dup(PGconn *c, enum proto m, const char *t, const char *what)
{
    PGresult *r = insert_row(c, m, t, "dup", true);
    char w[256];
    snprintf(w, sizeof w, "duplicate INSERT ... RETURNING id, %s (%s)", what, proto_names[m]);
    itest_assert_tag(r, "INSERT 0 0", w);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQnfields(r) != 1 || PQntuples(r) != 0) {
        char got[128];
        snprintf(got, sizeof got, "%s with %d fields, %d tuples", PQresStatus(PQresultStatus(r)),
                 PQnfields(r), PQntuples(r));
        PQclear(r);
        fail_msg("%s: got %s, want PGRES_TUPLES_OK with 1 field (id), 0 tuples", w, got);
    }
    PQclear(r);
}

static void test_tr_returning(void **state)
{
    (void)state;
    const char *t = "tr_ret";
    create_defer_table(t);
    server_insert(t, "dup", "orig");
    /* The reference, directly: a skipped row of DO NOTHING ... RETURNING. */
    itest_server_exec("DROP TABLE IF EXISTS tr_ret_ref; "
                      "CREATE TABLE tr_ret_ref (id bigserial PRIMARY KEY, k text UNIQUE); "
                      "INSERT INTO tr_ret_ref (k) VALUES ('dup')");
    PGconn *d = itest_connect_direct();
    PGresult *r = itest_exec(d, "INSERT INTO tr_ret_ref (k) VALUES ('dup') "
                                "ON CONFLICT DO NOTHING RETURNING id");
    itest_assert_tag(r, "INSERT 0 0", "reference: DO NOTHING RETURNING directly");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_int_equal(PQnfields(r), 1);
    assert_int_equal(PQntuples(r), 0);
    PQclear(r);
    itest_finish(d);

    struct itest_proxy *p = start_proxy_for(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    prepare_inserts(c, t);
    /* Extended clients have the RowDescription from their Describe: the
     * duplicate becomes what the reference says. */
    for (enum proto m = P_EXTENDED; m <= P_PREPARED; m++) {
        check_returning_dup(c, m, t, "autocommit");
        assert_txn(c, PQTRANS_IDLE, "after a translated duplicate RETURNING");
        itest_exec_tag(c, "BEGIN", "BEGIN");
        check_returning_dup(c, m, t, "in a transaction");
        assert_txn(c, PQTRANS_INTRANS, "after a translated duplicate RETURNING");
        itest_exec_tag(c, "COMMIT", "COMMIT");
    }
    /* In the simple protocol the server sends the RowDescription only after
     * the statement ran, so none came before the error and only the server
     * could give one: the error stays as it is, honestly. */
    const char *ret = "INSERT INTO tr_ret (k, payload) VALUES ('dup', 'p') RETURNING id";
    itest_exec_sqlstate(c, ret, "23505");
    assert_txn(c, PQTRANS_IDLE, "after the simple RETURNING duplicate");
    fails_in_block(c, ret, "23505");
    itest_assert_log_line(p, "public.tr_ret", "returning", NULL);
    assert_int_equal(all_rows(t), 1);
    itest_pass();
}

/* Named prepared statements stay known while the session's other texts
 * merely contain the words PREPARE, DEALLOCATE or DISCARD inside names or
 * literals (a column prepared_at, say): only those SQL commands redefine
 * statements behind the proxy's back. */
static void test_tr_prepared_words(void **state)
{
    (void)state;
    const char *t = "tr_words";
    itest_server_exec("DROP TABLE IF EXISTS tr_words; "
                      "CREATE TABLE tr_words (id bigserial PRIMARY KEY, k text NOT NULL, "
                      "payload text, prepared_at timestamptz NOT NULL DEFAULT now(), "
                      "UNIQUE (k) DEFERRABLE INITIALLY IMMEDIATE); "
                      "INSERT INTO tr_words (k, payload) VALUES ('dup', 'orig')");
    struct itest_proxy *p = start_proxy_for(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    prepare_inserts(c, t);

    itest_exec_tag(c, "BEGIN", "BEGIN");
    insert_tag(c, P_PREPARED, t, "dup", "INSERT 0 0");
    assert_txn(c, PQTRANS_INTRANS, "after the duplicate");
    /* A statement that reads the column prepared_at. */
    PGresult *r = itest_prepare(c, "recent",
                                "SELECT count(*) FROM tr_words WHERE prepared_at <= now()", 0);
    itest_assert_result_ok(r, "PQprepare recent");
    PQclear(r);
    insert_tag(c, P_PREPARED, t, "dup", "INSERT 0 0");
    assert_txn(c, PQTRANS_INTRANS, "after a duplicate after PQprepare(... prepared_at ...)");
    /* A simple Query with the word in a literal. */
    itest_exec_tag(c, "SELECT 'discard the draft' AS note", "SELECT 1");
    insert_tag(c, P_PREPARED, t, "dup", "INSERT 0 0");
    assert_txn(c, PQTRANS_INTRANS, "after a duplicate after a literal 'discard ...'");
    itest_exec_tag(c, "COMMIT", "COMMIT");
    assert_int_equal(all_rows(t), 1);
    itest_pass();
}

/* SQL-level PREPARE defines only its own name, and DEALLOCATE drops only
 * the names it gives, however written: the client's prepared INSERT stays
 * known, its duplicates translated. DEALLOCATE ALL drops it with the rest:
 * the server answers its Execute with 26000 and nothing is translated. */
static void test_tr_sql_prepare_others(void **state)
{
    (void)state;
    const char *t = "tr_sqlprep";
    create_defer_table(t);
    server_insert(t, "dup", "orig");
    struct itest_proxy *p = start_proxy_for(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    prepare_inserts(c, t);

    insert_tag(c, P_PREPARED, t, "dup", "INSERT 0 0");
    itest_exec_ok(c, "PREPARE tr_other AS SELECT 1");
    insert_tag(c, P_PREPARED, t, "dup", "INSERT 0 0");
    itest_exec_ok(c, "DEALLOCATE tr_other");
    insert_tag(c, P_PREPARED, t, "dup", "INSERT 0 0");
    itest_exec_ok(c, "PREPARE tr_a AS SELECT 1; PREPARE \"Tr_B\" AS SELECT 2");
    itest_exec_ok(c, "SELECT 1; DEALLOCATE tr_a; /* the other */ deallocate prepare \"Tr_B\"");
    insert_tag(c, P_PREPARED, t, "dup", "INSERT 0 0");
    PGresult *r = itest_exec_params(c, "DEALLOCATE tr_missing", 0, NULL);
    itest_assert_sqlstate(r, "26000", "DEALLOCATE of a name never prepared");
    PQclear(r);
    insert_tag(c, P_PREPARED, t, "dup", "INSERT 0 0");

    itest_exec_ok(c, "DEALLOCATE ALL");
    const char *vals[2] = { "dup", "p" };
    r = itest_exec_prepared(c, "ins", 2, vals);
    itest_assert_sqlstate(r, "26000", "the INSERT after DEALLOCATE ALL");
    PQclear(r);
    assert_int_equal(all_rows(t), 1);
    assert_int_equal(itest_proxy_log_count(p, "from the server"), 0);
    itest_pass();
}

/* ---- 3. several statements in one Query ---------------------------------- */

/* Runs a multi-statement Query expected to fail with 23505 as a whole. */
static void multi_fails(PGconn *c, const char *sql)
{
    itest_exec_sqlstate(c, sql, "23505");
}

static void test_tr_multi_statement(void **state)
{
    (void)state;
    const char *t = "tr_multi";
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);

#define INS(key) "INSERT INTO tr_multi (k, payload) VALUES ('" key "', 'p')"
    /* The duplicate first, in the middle, last: the implicit transaction is
     * rolled back, the error passes unchanged. */
    multi_fails(c, INS("dup") "; " INS("f1") "; " INS("f2"));
    assert_txn(c, PQTRANS_IDLE, "after a failed multi-statement Query");
    multi_fails(c, INS("m1") "; " INS("dup") "; " INS("m2"));
    assert_txn(c, PQTRANS_IDLE, "after a failed multi-statement Query");
    multi_fails(c, INS("l1") "; " INS("l2") "; " INS("dup"));
    assert_txn(c, PQTRANS_IDLE, "after a failed multi-statement Query");
    /* An INSERT and a SELECT. */
    multi_fails(c, INS("dup") "; SELECT 1");
    multi_fails(c, "SELECT 1; " INS("dup"));
    assert_int_equal(all_rows(t), 1);

    /* BEGIN in the same Query: the block is open and failed. */
    multi_fails(c, "BEGIN; " INS("b1") "; " INS("dup"));
    assert_txn(c, PQTRANS_INERROR, "after BEGIN; INSERT; INSERT dup");
    itest_exec_tag(c, "COMMIT", "ROLLBACK");
    multi_fails(c, "BEGIN; " INS("b2") "; " INS("dup") "; COMMIT");
    assert_txn(c, PQTRANS_INERROR, "after BEGIN; INSERT; INSERT dup; COMMIT");
    itest_exec_tag(c, "ROLLBACK", "ROLLBACK");

    /* Two INSERTs in one Query inside a transaction: the block fails, as the
     * server says. */
    itest_exec_tag(c, "BEGIN", "BEGIN");
    itest_exec_tag(c, INS("t1"), "INSERT 0 1");
    multi_fails(c, INS("t2") "; " INS("dup"));
    assert_txn(c, PQTRANS_INERROR, "after a multi-statement Query failed in a transaction");
    itest_exec_tag(c, "COMMIT", "ROLLBACK");
    assert_txn(c, PQTRANS_IDLE, "after COMMIT of a failed block");
#undef INS

    /* Single statements still translate on this session. */
    itest_exec_tag(c, "INSERT INTO tr_multi (k, payload) VALUES ('dup', 'p')", "INSERT 0 0");
    assert_int_equal(all_rows(t), 1);
    assert_int_equal(key_rows(t, "dup"), 1);
    itest_assert_log_line(p, "public.tr_multi", "not_alone", NULL);
    itest_pass();
}

/* ---- 4. libpq pipelines -------------------------------------------------- */

/* A pipeline's results arrive in well under this, or never: a hang. */
#define PIPE_TIMEOUT_MS 10000

/* What one pipelined query got. */
struct piped {
    ExecStatusType status;
    char sqlstate[6];
    char tag[32];
};

static void send_piped_insert(PGconn *c, const char *table, const char *key)
{
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (k, payload) VALUES ($1, 'p')", table);
    const char *vals[1] = { key };
    if (!PQsendQueryParams(c, sql, 1, NULL, vals, NULL, NULL, 0))
        fail_msg("PQsendQueryParams in a pipeline: %s", PQerrorMessage(c));
}

static void send_piped_cmd(PGconn *c, const char *sql)
{
    if (!PQsendQueryParams(c, sql, 0, NULL, NULL, NULL, NULL, 0))
        fail_msg("PQsendQueryParams in a pipeline: %s", PQerrorMessage(c));
}

/* The same, each followed by a Sync of its own: alone in its batch. */
static void send_synced_insert(PGconn *c, const char *table, const char *key)
{
    send_piped_insert(c, table, key);
    assert_int_equal(PQpipelineSync(c), 1);
}

static void send_synced_cmd(PGconn *c, const char *sql)
{
    send_piped_cmd(c, sql);
    assert_int_equal(PQpipelineSync(c), 1);
}

/* Collects n query results, then the sync's. */
static void collect_piped(PGconn *c, struct piped *out, int n, int64_t deadline)
{
    for (int i = 0; i < n; i++) {
        PGresult *r = itest_pipeline_result(c, deadline);
        out[i].status = PQresultStatus(r);
        const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        snprintf(out[i].sqlstate, sizeof out[i].sqlstate, "%s", code ? code : "");
        snprintf(out[i].tag, sizeof out[i].tag, "%s", PQcmdStatus(r));
        printf("  pipelined query %d: %s %s %s\n", i + 1, PQresStatus(out[i].status),
               out[i].sqlstate, out[i].tag);
        PQclear(r);
        itest_pipeline_end(c, deadline);
    }
    PGresult *r = itest_pipeline_result(c, deadline);
    ExecStatusType st = PQresultStatus(r);
    PQclear(r);
    if (st != PGRES_PIPELINE_SYNC)
        fail_msg("pipeline: %s where the sync's result was due", PQresStatus(st));
}

/* Collects the results of n queries sent with send_synced_*() (each query's,
 * then its Sync's) and leaves pipeline mode. */
static void collect_synced(PGconn *c, struct piped *out, int n)
{
    int64_t deadline = itest_now_ms() + PIPE_TIMEOUT_MS;
    for (int i = 0; i < n; i++)
        collect_piped(c, &out[i], 1, deadline);
    assert_int_equal(PQexitPipelineMode(c), 1);
}

/* Sends the INSERTs of keys (one Sync after them), collects the results. */
static void run_pipeline(PGconn *c, const char *table, const char *const *keys, int n,
                         struct piped *out)
{
    assert_int_equal(PQenterPipelineMode(c), 1);
    for (int i = 0; i < n; i++)
        send_piped_insert(c, table, keys[i]);
    assert_int_equal(PQpipelineSync(c), 1);
    collect_piped(c, out, n, itest_now_ms() + PIPE_TIMEOUT_MS);
    assert_int_equal(PQexitPipelineMode(c), 1);
}

static void expect_piped(const struct piped *got, ExecStatusType status, const char *detail,
                         const char *what)
{
    bool ok = got->status == status;
    if (ok && status == PGRES_FATAL_ERROR)
        ok = strcmp(got->sqlstate, detail) == 0;
    if (ok && status == PGRES_COMMAND_OK)
        ok = strcmp(got->tag, detail) == 0;
    if (!ok)
        fail_msg("%s: got %s %s \"%s\", want %s %s", what, PQresStatus(got->status),
                 got->sqlstate, got->tag, PQresStatus(status), detail ? detail : "");
}

static void test_tr_pipeline(void **state)
{
    (void)state;
    const char *t = "tr_pipe";
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    struct piped r[3];

    /* Alone before its Sync: translated. */
    printf("pipeline [dup] sync\n");
    const char *alone[] = { "dup" };
    run_pipeline(c, t, alone, 1, r);
    expect_piped(&r[0], PGRES_COMMAND_OK, "INSERT 0 0", "the duplicate alone in a pipeline");
    assert_txn(c, PQTRANS_IDLE, "after the pipeline");

    /* First of three: the error, the rest aborted. */
    printf("pipeline [dup, f1, f2] sync\n");
    const char *first[] = { "dup", "f1", "f2" };
    run_pipeline(c, t, first, 3, r);
    expect_piped(&r[0], PGRES_FATAL_ERROR, "23505", "the duplicate first in a pipeline");
    expect_piped(&r[1], PGRES_PIPELINE_ABORTED, NULL, "the 2nd query after it");
    expect_piped(&r[2], PGRES_PIPELINE_ABORTED, NULL, "the 3rd query after it");
    assert_txn(c, PQTRANS_IDLE, "after the pipeline");

    /* In the middle: the first was rolled back with it, the last skipped. */
    printf("pipeline [m1, dup, m2] sync\n");
    const char *middle[] = { "m1", "dup", "m2" };
    run_pipeline(c, t, middle, 3, r);
    expect_piped(&r[0], PGRES_COMMAND_OK, "INSERT 0 1", "the 1st query (rolled back later)");
    expect_piped(&r[1], PGRES_FATAL_ERROR, "23505", "the duplicate in the middle of a pipeline");
    expect_piped(&r[2], PGRES_PIPELINE_ABORTED, NULL, "the 3rd query");
    assert_txn(c, PQTRANS_IDLE, "after the pipeline");

    /* Last: the two before it were rolled back with it. */
    printf("pipeline [l1, l2, dup] sync\n");
    const char *last[] = { "l1", "l2", "dup" };
    run_pipeline(c, t, last, 3, r);
    expect_piped(&r[0], PGRES_COMMAND_OK, "INSERT 0 1", "the 1st query (rolled back later)");
    expect_piped(&r[1], PGRES_COMMAND_OK, "INSERT 0 1", "the 2nd query (rolled back later)");
    expect_piped(&r[2], PGRES_FATAL_ERROR, "23505", "the duplicate last in a pipeline");
    assert_txn(c, PQTRANS_IDLE, "after the pipeline");

    /* Each alone before its own Sync: translated, the next one runs. */
    printf("pipeline [dup] sync [s1] sync [dup] sync\n");
    assert_int_equal(PQenterPipelineMode(c), 1);
    send_synced_insert(c, t, "dup");
    send_synced_insert(c, t, "s1");
    send_synced_insert(c, t, "dup");
    collect_synced(c, r, 3);
    expect_piped(&r[0], PGRES_COMMAND_OK, "INSERT 0 0", "the 1st sync's duplicate");
    expect_piped(&r[1], PGRES_COMMAND_OK, "INSERT 0 1", "the 2nd sync's new row");
    expect_piped(&r[2], PGRES_COMMAND_OK, "INSERT 0 0", "the 3rd sync's duplicate");

    assert_int_equal(itest_query_ll(c, "SELECT 9"), 9);
    assert_int_equal(all_rows(t), 2);
    assert_int_equal(key_rows(t, "dup"), 1);
    assert_int_equal(key_rows(t, "s1"), 1);
    itest_pass();
}

/* Pipelines inside a transaction block, the duplicate alone before its Sync:
 * whatever the client is told must be what COMMIT then does. */
static void test_tr_pipeline_in_txn(void **state)
{
    (void)state;
    const char *t = "tr_pipe_txn";
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    struct piped r[3];

    /* BEGIN known; [dup] sync [a1] sync [COMMIT] sync: the duplicate is
     * alone in its batch, under the proxy's savepoint. */
    printf("BEGIN; pipeline [dup] sync [a1] sync [COMMIT] sync\n");
    itest_exec_tag(c, "BEGIN", "BEGIN");
    assert_int_equal(PQenterPipelineMode(c), 1);
    send_synced_insert(c, t, "dup");
    send_synced_insert(c, t, "a1");
    send_synced_cmd(c, "COMMIT");
    collect_synced(c, r, 3);
    expect_piped(&r[0], PGRES_COMMAND_OK, "INSERT 0 0", "the guarded duplicate");
    expect_piped(&r[1], PGRES_COMMAND_OK, "INSERT 0 1", "a1");
    expect_piped(&r[2], PGRES_COMMAND_OK, "COMMIT", "COMMIT");
    assert_txn(c, PQTRANS_IDLE, "after the pipeline");
    assert_int_equal(key_rows(t, "a1"), 1);

    /* From idle: [BEGIN] sync [dup] sync [b1] sync [COMMIT] sync. The proxy
     * cannot know the block is open when the duplicate runs. */
    printf("pipeline [BEGIN] sync [dup] sync [b1] sync [COMMIT] sync\n");
    assert_int_equal(PQenterPipelineMode(c), 1);
    struct piped q[4];
    send_synced_cmd(c, "BEGIN");
    send_synced_insert(c, t, "dup");
    send_synced_insert(c, t, "b1");
    send_synced_cmd(c, "COMMIT");
    collect_synced(c, q, 4);
    expect_piped(&q[0], PGRES_COMMAND_OK, "BEGIN", "BEGIN");
    if (q[1].status == PGRES_COMMAND_OK) {
        expect_piped(&q[1], PGRES_COMMAND_OK, "INSERT 0 0", "the duplicate");
        expect_piped(&q[2], PGRES_COMMAND_OK, "INSERT 0 1", "b1");
        expect_piped(&q[3], PGRES_COMMAND_OK, "COMMIT", "COMMIT after a translated duplicate");
        assert_int_equal(key_rows(t, "b1"), 1);
    } else {
        expect_piped(&q[1], PGRES_FATAL_ERROR, "23505", "the duplicate");
        expect_piped(&q[2], PGRES_FATAL_ERROR, "25P02", "b1 in the failed block");
        expect_piped(&q[3], PGRES_COMMAND_OK, "ROLLBACK", "COMMIT of the failed block");
        assert_int_equal(key_rows(t, "b1"), 0);
    }
    assert_txn(c, PQTRANS_IDLE, "after the pipeline");

    assert_int_equal(itest_query_ll(c, "SELECT 9"), 9);
    assert_int_equal(key_rows(t, "dup"), 1);
    assert_int_equal(itest_server_ll("SELECT count(DISTINCT k) FROM %s", t), all_rows(t));
    itest_pass();
}

/* BEGIN; then a pipeline [n1, dup, n2] sync: the duplicate shares its batch
 * with n2, which the server skips after the error. */
static void test_tr_pipeline_txn_dup(void **state)
{
    (void)state;
    const char *t = "tr_pipe_txn_dup";
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    struct piped r[3];

    printf("BEGIN; pipeline [n1, dup, n2] sync; COMMIT\n");
    itest_exec_tag(c, "BEGIN", "BEGIN");
    const char *three[] = { "n1", "dup", "n2" };
    run_pipeline(c, t, three, 3, r);
    expect_piped(&r[0], PGRES_COMMAND_OK, "INSERT 0 1", "n1");
    if (r[1].status == PGRES_COMMAND_OK) {
        /* Translated: then n2 must have run and the block be open. */
        expect_piped(&r[1], PGRES_COMMAND_OK, "INSERT 0 0", "the duplicate");
        expect_piped(&r[2], PGRES_COMMAND_OK, "INSERT 0 1", "n2 after a translated duplicate");
        assert_txn(c, PQTRANS_INTRANS, "after a translated duplicate in a pipeline");
        itest_exec_tag(c, "COMMIT", "COMMIT");
        assert_int_equal(key_rows(t, "n1"), 1);
        assert_int_equal(key_rows(t, "n2"), 1);
    } else {
        expect_piped(&r[1], PGRES_FATAL_ERROR, "23505", "the duplicate");
        expect_piped(&r[2], PGRES_PIPELINE_ABORTED, NULL, "n2 after the error");
        assert_txn(c, PQTRANS_INERROR, "after the error in a pipeline");
        itest_exec_tag(c, "COMMIT", "ROLLBACK");
        assert_int_equal(key_rows(t, "n1"), 0);
        assert_int_equal(key_rows(t, "n2"), 0);
    }
    assert_txn(c, PQTRANS_IDLE, "after COMMIT");
    assert_int_equal(all_rows(t) - key_rows(t, "n1") - key_rows(t, "n2"), 1);
    itest_pass();
}

/* BEGIN; then a pipeline [INSERT that fails otherwise (23502), n1] sync. */
static void test_tr_pipeline_txn_error(void **state)
{
    (void)state;
    const char *t = "tr_pipe_txn_err";
    create_defer_table(t);
    struct itest_proxy *p = start_proxy_for(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    struct piped r[2];

    printf("BEGIN; pipeline [INSERT NULL key, n1] sync; ROLLBACK\n");
    itest_exec_tag(c, "BEGIN", "BEGIN");
    assert_int_equal(PQenterPipelineMode(c), 1);
    send_piped_cmd(c, "INSERT INTO tr_pipe_txn_err (k, payload) VALUES (NULL, 'p')");
    send_piped_insert(c, t, "n1");
    assert_int_equal(PQpipelineSync(c), 1);
    collect_piped(c, r, 2, itest_now_ms() + PIPE_TIMEOUT_MS);
    assert_int_equal(PQexitPipelineMode(c), 1);
    expect_piped(&r[0], PGRES_FATAL_ERROR, "23502", "the NULL key");
    expect_piped(&r[1], PGRES_PIPELINE_ABORTED, NULL, "n1 after the error");
    assert_txn(c, PQTRANS_INERROR, "after the error in a pipeline");
    itest_exec_tag(c, "ROLLBACK", "ROLLBACK");
    assert_int_equal(all_rows(t), 0);
    itest_pass();
}

/* A pipeline that asks for the results with a flush request before its
 * Sync: the client waits for the outcome, which must come. */
static void test_tr_pipeline_flush(void **state)
{
    (void)state;
    const char *t = "tr_pipe_flush";
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);

    for (int in_txn = 1; in_txn >= 0; in_txn--) {
        printf("%spipeline [dup] flush ... sync\n", in_txn ? "BEGIN; " : "");
        if (in_txn)
            itest_exec_tag(c, "BEGIN", "BEGIN");
        assert_int_equal(PQenterPipelineMode(c), 1);
        send_piped_insert(c, t, "dup");
        assert_int_equal(PQsendFlushRequest(c), 1);
        assert_int_equal(PQflush(c), 0);
        int64_t deadline = itest_now_ms() + PIPE_TIMEOUT_MS;
        PGresult *r = itest_pipeline_result(c, deadline);
        printf("  result before the sync: %s\n", result_text(r));
        /* After a Flush the client may act on the outcome before it sends
         * Sync: the error must pass as it is. */
        itest_assert_sqlstate(r, "23505", "a duplicate followed by a flush request");
        PQclear(r);
        itest_pipeline_end(c, deadline);
        assert_int_equal(PQpipelineSync(c), 1);
        r = itest_pipeline_result(c, deadline);
        ExecStatusType st = PQresultStatus(r);
        PQclear(r);
        assert_int_equal(st, PGRES_PIPELINE_SYNC);
        assert_int_equal(PQexitPipelineMode(c), 1);
        if (in_txn) {
            assert_txn(c, PQTRANS_INERROR, "after the error in a transaction");
            itest_exec_tag(c, "COMMIT", "ROLLBACK");
        }
        assert_txn(c, PQTRANS_IDLE, "after the pipeline");
    }
    assert_int_equal(itest_query_ll(c, "SELECT 3"), 3);
    assert_int_equal(all_rows(t), 1);
    itest_pass();
}

/* ---- 5. pgbench ------------------------------------------------------------ */

#define BENCH_TRANSACTIONS 200 /* per client */

static void test_tr_pgbench(void **state)
{
    (void)state;
    itest_server_exec("DROP TABLE IF EXISTS tr_bench; "
                      "CREATE TABLE tr_bench (id bigserial PRIMARY KEY, k int NOT NULL UNIQUE)");
    const char *script = itest_write_file("tr_bench.sql", "\\set k random(1, 50)\n"
                                                          "INSERT INTO tr_bench (k) "
                                                          "VALUES (:k);\n");
    /* Translation alone, by `action = none`. (A DEFERRABLE index would do
     * the same, but there two INSERTs of one key can deadlock, each one's
     * recheck waiting for the other's transaction: PostgreSQL's 40P01
     * after deadlock_timeout, and pgbench's retries, made the runs slow
     * enough to time out under the sanitizers.) */
    struct itest_proxy *p = itest_proxy_start_table("info", "tr_bench", "k", "action = none\n");
    static const char *const modes[] = { "simple", "extended", "prepared" };
    for (int m = 0; m < 3; m++) {
        itest_pgbench_ok(script, p->port, modes[m], BENCH_TRANSACTIONS, 1);
        long long rows = all_rows("tr_bench");
        assert_int_equal(itest_server_ll("SELECT count(DISTINCT k) FROM tr_bench"), rows);
        assert_true(rows > 0 && rows <= 50);
    }
    /* 2400 INSERTs over 50 keys: every key is there by now. */
    assert_int_equal(all_rows("tr_bench"), 50);

    /* The same script directly on the server hits the duplicates: it must
     * fail, or this test could not. */
    itest_pgbench_fails_directly(script, "extended", BENCH_TRANSACTIONS);
    assert_int_equal(all_rows("tr_bench"), 50);
    assert_true(itest_proxy_alive(p));
    itest_pass();
}

/* ---- 6. a partitioned table ------------------------------------------------ */

static void test_tr_partitioned(void **state)
{
    (void)state;
    itest_server_exec("DROP TABLE IF EXISTS tr_part CASCADE; "
                      "CREATE TABLE tr_part (k text, region text, payload text, "
                      "PRIMARY KEY (k, region)) PARTITION BY LIST (region); "
                      "CREATE TABLE tr_part_eu PARTITION OF tr_part FOR VALUES IN ('eu'); "
                      "CREATE TABLE tr_part_us PARTITION OF tr_part FOR VALUES IN ('us'); "
                      "CREATE TABLE tr_part_as PARTITION OF tr_part FOR VALUES IN ('as') "
                      "PARTITION BY HASH (k); "
                      "CREATE TABLE tr_part_as0 PARTITION OF tr_part_as "
                      "FOR VALUES WITH (MODULUS 2, REMAINDER 0); "
                      "CREATE TABLE tr_part_as1 PARTITION OF tr_part_as "
                      "FOR VALUES WITH (MODULUS 2, REMAINDER 1); "
                      "INSERT INTO tr_part VALUES ('a', 'eu', 'orig'), ('a', 'as', 'orig')");
    /* Directly, the error names the leaf partition: what the proxy maps. */
    PGconn *d = itest_connect_direct();
    PGresult *r = itest_exec(d, "INSERT INTO tr_part VALUES ('a', 'eu', 'x')");
    itest_assert_sqlstate(r, "23505", "duplicate into tr_part directly");
    itest_assert_field(r, PG_DIAG_TABLE_NAME, "tr_part_eu", "TABLE_NAME");
    PQclear(r);
    itest_finish(d);

    struct itest_proxy *p = itest_proxy_start_with("debug", "[table public.tr_part]\n"
                                                            "conflict = k, region\n"
                                                            "action = none\n");
    PGconn *c = itest_connect_ok(p->port, NULL);

    itest_exec_tag(c, "INSERT INTO tr_part VALUES ('a', 'eu', 'x')", "INSERT 0 0");
    assert_txn(c, PQTRANS_IDLE, "after a translated duplicate into a partition");
    itest_exec_tag(c, "INSERT INTO tr_part VALUES ('a', 'as', 'x')", "INSERT 0 0");
    params_tag(c, "INSERT INTO tr_part VALUES ($1, 'eu', 'x')", "a", "INSERT 0 0");
    itest_exec_tag(c, "INSERT INTO tr_part VALUES ('a', 'us', 'new')", "INSERT 0 1");

    itest_exec_tag(c, "BEGIN", "BEGIN");
    itest_exec_tag(c, "INSERT INTO tr_part VALUES ('b', 'eu', 'new')", "INSERT 0 1");
    itest_exec_tag(c, "INSERT INTO tr_part VALUES ('a', 'eu', 'x')", "INSERT 0 0");
    assert_txn(c, PQTRANS_INTRANS, "after a translated duplicate into a partition");
    params_tag(c, "INSERT INTO tr_part VALUES ($1, 'as', 'x')", "a", "INSERT 0 0");
    assert_txn(c, PQTRANS_INTRANS, "after a translated duplicate into a sub-partition");
    itest_exec_tag(c, "INSERT INTO tr_part VALUES ('b', 'eu', 'x')", "INSERT 0 0");
    itest_exec_tag(c, "INSERT INTO tr_part VALUES ('c', 'as', 'new')", "INSERT 0 1");
    itest_exec_tag(c, "COMMIT", "COMMIT");

    /* a/eu, a/as, a/us, b/eu, c/as; the originals untouched. */
    assert_int_equal(all_rows("tr_part"), 5);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM tr_part WHERE payload = 'orig'"), 2);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM tr_part WHERE payload = 'new'"), 3);
    itest_assert_log_line(p, "public.tr_part", "reported as INSERT 0 0", NULL);
    itest_pass();
}

/* ---- 7. an unregistered table ---------------------------------------------- */

static void test_tr_unregistered(void **state)
{
    (void)state;
    create_defer_table("tr_reg");
    create_defer_table("tr_unreg");
    server_insert("tr_reg", "a", "orig");
    server_insert("tr_unreg", "a", "orig");
    struct itest_proxy *p = start_proxy_for("tr_reg");
    PGconn *c = itest_connect_ok(p->port, NULL);

    for (int m = P_SIMPLE; m <= P_EXTENDED; m++) {
        PGresult *r = insert_row(c, (enum proto)m, "tr_unreg", "a", false);
        itest_assert_sqlstate(r, "23505", "duplicate into the unregistered table");
        itest_assert_field(r, PG_DIAG_SCHEMA_NAME, "public", "SCHEMA_NAME");
        itest_assert_field(r, PG_DIAG_TABLE_NAME, "tr_unreg", "TABLE_NAME");
        itest_assert_field(r, PG_DIAG_CONSTRAINT_NAME, "tr_unreg_k_key", "CONSTRAINT_NAME");
        assert_non_null(PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL));
        PQclear(r);
        assert_txn(c, PQTRANS_IDLE, "after the error");

        /* In a transaction: the block fails, as the server says. */
        cmd_tag(c, (enum proto)m, "BEGIN", "BEGIN");
        insert_tag(c, (enum proto)m, "tr_reg", "r1", "INSERT 0 1");
        r = insert_row(c, (enum proto)m, "tr_unreg", "a", false);
        itest_assert_sqlstate(r, "23505", "duplicate into the unregistered table in a transaction");
        itest_assert_field(r, PG_DIAG_TABLE_NAME, "tr_unreg", "TABLE_NAME");
        itest_assert_field(r, PG_DIAG_CONSTRAINT_NAME, "tr_unreg_k_key", "CONSTRAINT_NAME");
        PQclear(r);
        assert_txn(c, PQTRANS_INERROR, "after the error in a transaction");
        cmd_tag(c, (enum proto)m, "COMMIT", "ROLLBACK");
    }
    /* The registered table on the same session translates. */
    itest_exec_tag(c, "INSERT INTO tr_reg (k, payload) VALUES ('a', 'dup')", "INSERT 0 0");
    assert_int_equal(all_rows("tr_unreg"), 1);
    assert_int_equal(all_rows("tr_reg"), 1);
    itest_pass();
}

/* ---- 8. a 23505 that no INSERT of the client's raised ---------------------- */

static void test_tr_not_insert(void **state)
{
    (void)state;
    const char *t = "tr_upd";
    create_defer_table(t);
    server_insert(t, "existing", "orig");
    server_insert(t, "other", "orig");
    itest_server_exec("CREATE OR REPLACE FUNCTION tr_upd_ins(key text) RETURNS int "
                      "LANGUAGE plpgsql AS $$ BEGIN "
                      "INSERT INTO tr_upd (k, payload) VALUES (key, 'fn'); RETURN 1; END $$");
    struct itest_proxy *p = start_proxy_for(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *upd = "UPDATE tr_upd SET k = 'existing' WHERE k = 'other'";

    /* UPDATE, autocommit, both protocols. */
    itest_exec_sqlstate(c, upd, "23505");
    assert_txn(c, PQTRANS_IDLE, "after a failed UPDATE");
    params_sqlstate(c, upd, NULL, "23505");
    /* In a transaction: INERROR, as the server says. */
    itest_exec_tag(c, "BEGIN", "BEGIN");
    itest_exec_tag(c, "INSERT INTO tr_upd (k, payload) VALUES ('t1', 'p')", "INSERT 0 1");
    itest_exec_sqlstate(c, upd, "23505");
    assert_txn(c, PQTRANS_INERROR, "after a failed UPDATE in a transaction");
    itest_exec_tag(c, "COMMIT", "ROLLBACK");
    params_tag(c, "BEGIN", NULL, "BEGIN");
    params_sqlstate(c, upd, NULL, "23505");
    assert_txn(c, PQTRANS_INERROR, "after a failed UPDATE in a transaction (extended)");
    params_tag(c, "ROLLBACK", NULL, "ROLLBACK");

    /* A function's INSERT. */
    itest_exec_sqlstate(c, "SELECT tr_upd_ins('existing')", "23505");
    params_sqlstate(c, "SELECT tr_upd_ins($1)", "existing", "23505");
    fails_in_block(c, "SELECT tr_upd_ins('existing')", "23505");

    /* An INSERT inside another statement: a data-modifying WITH, EXPLAIN
     * ANALYZE. The client did not ask for an INSERT's tag. */
    const char *with = "WITH x AS (INSERT INTO tr_upd (k, payload) VALUES ('existing', 'w') "
                       "RETURNING id) SELECT count(*) FROM x";
    itest_exec_sqlstate(c, with, "23505");
    itest_exec_sqlstate(c, "EXPLAIN ANALYZE INSERT INTO tr_upd (k, payload) "
                           "VALUES ('existing', 'e')", "23505");
    fails_in_block(c, with, "23505");

    /* COPY. */
    PGresult *r = itest_exec(c, "COPY tr_upd (k, payload) FROM STDIN");
    assert_non_null(r);
    assert_int_equal(PQresultStatus(r), PGRES_COPY_IN);
    PQclear(r);
    static const char rows[] = "c1\tcopy\nexisting\tcopy\n";
    assert_int_equal(PQputCopyData(c, rows, (int)strlen(rows)), 1);
    assert_int_equal(PQputCopyEnd(c, NULL), 1);
    r = itest_wait_result(c, ITEST_QUERY_TIMEOUT_MS);
    itest_assert_sqlstate(r, "23505", "COPY with a duplicate");
    PQclear(r);
    assert_txn(c, PQTRANS_IDLE, "after a failed COPY");

    /* The session still translates its own INSERTs. */
    itest_exec_tag(c, "INSERT INTO tr_upd (k, payload) VALUES ('existing', 'p')", "INSERT 0 0");
    assert_int_equal(all_rows(t), 2);
    assert_int_equal(key_rows(t, "existing"), 1);
    assert_int_equal(key_rows(t, "other"), 1);
    itest_assert_log_line(p, "public.tr_upd", "not_recognised", NULL);
    itest_pass();
}

/* ---- 9. translate_errors = off, mode = shadow -------------------------------- */

static void test_tr_disabled(void **state)
{
    (void)state;
    create_defer_table("tr_off");
    create_defer_table("tr_shadowed");
    server_insert("tr_off", "dup", "orig");
    server_insert("tr_shadowed", "dup", "orig");
    struct itest_proxy *p = itest_proxy_start_with("debug", "[table public.tr_off]\n"
                                                            "conflict = k\n"
                                                            "translate_errors = off\n"
                                                            "[table public.tr_shadowed]\n"
                                                            "conflict = k\n"
                                                            "mode = shadow\n");
    PGconn *c = itest_connect_ok(p->port, NULL);
    prepare_inserts(c, "tr_off");

    static const char *const tables[] = { "tr_off", "tr_shadowed" };
    for (int i = 0; i < 2; i++) {
        for (int m = P_SIMPLE; m <= P_EXTENDED; m++) {
            insert_sqlstate(c, (enum proto)m, tables[i], "dup", "23505");
            assert_txn(c, PQTRANS_IDLE, "after the error");
            cmd_tag(c, (enum proto)m, "BEGIN", "BEGIN");
            insert_sqlstate(c, (enum proto)m, tables[i], "dup", "23505");
            assert_txn(c, PQTRANS_INERROR, "after the error in a transaction");
            cmd_tag(c, (enum proto)m, "COMMIT", "ROLLBACK");
        }
    }
    insert_sqlstate(c, P_PREPARED, "tr_off", "dup", "23505");
    assert_int_equal(all_rows("tr_off"), 1);
    assert_int_equal(all_rows("tr_shadowed"), 1);
    itest_assert_log_line(p, "public.tr_off", "disabled", NULL);
    itest_pass();
}

/* ---- 10. a trigger's duplicate on another registered table ------------------- */

static void test_tr_trigger(void **state)
{
    (void)state;
    create_defer_table("tr_trig_a");
    create_defer_table("tr_trig_b");
    itest_server_exec("CREATE OR REPLACE FUNCTION tr_trig_copy() RETURNS trigger "
                      "LANGUAGE plpgsql AS $$ BEGIN "
                      "INSERT INTO tr_trig_b (k, payload) VALUES (NEW.k, 'trigger'); "
                      "RETURN NULL; END $$; "
                      "CREATE TRIGGER tr_trig_copy AFTER INSERT ON tr_trig_a "
                      "FOR EACH ROW EXECUTE FUNCTION tr_trig_copy(); "
                      "INSERT INTO tr_trig_b (k, payload) VALUES ('x', 'orig'), ('y', 'orig')");
    struct itest_proxy *p = itest_proxy_start_with("debug", "[table public.tr_trig_a]\n"
                                                            "conflict = k\n"
                                                            "[table public.tr_trig_b]\n"
                                                            "conflict = k\n");
    PGconn *c = itest_connect_ok(p->port, NULL);

    for (int m = P_SIMPLE; m <= P_EXTENDED; m++) {
        PGresult *r = insert_row(c, (enum proto)m, "tr_trig_a", "x", false);
        itest_assert_sqlstate(r, "23505", "a trigger's duplicate (autocommit)");
        itest_assert_field(r, PG_DIAG_TABLE_NAME, "tr_trig_b", "TABLE_NAME");
        PQclear(r);
        assert_txn(c, PQTRANS_IDLE, "after a trigger's duplicate");

        cmd_tag(c, (enum proto)m, "BEGIN", "BEGIN");
        insert_tag(c, (enum proto)m, "tr_trig_a", m == P_SIMPLE ? "n1" : "n2", "INSERT 0 1");
        r = insert_row(c, (enum proto)m, "tr_trig_a", "y", false);
        itest_assert_sqlstate(r, "23505", "a trigger's duplicate (in a transaction)");
        itest_assert_field(r, PG_DIAG_TABLE_NAME, "tr_trig_b", "TABLE_NAME");
        PQclear(r);
        assert_txn(c, PQTRANS_INERROR, "after a trigger's duplicate in a transaction");
        cmd_tag(c, (enum proto)m, "COMMIT", "ROLLBACK");
    }
    assert_int_equal(all_rows("tr_trig_a"), 0);
    assert_int_equal(all_rows("tr_trig_b"), 2);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM tr_trig_b WHERE payload = 'orig'"), 2);
    itest_assert_log_line(p, "public.tr_trig_b", "in_function_or_trigger", NULL);
    itest_pass();
}

/* A trigger on the registered table itself inserts a duplicate into it: the
 * violation names the statement's own table, but it is the trigger's. The
 * client's row is not a duplicate and is not there: "INSERT 0 0" would tell
 * the client it already existed. The server marks such an error with a
 * context (field W). */
static void test_tr_trigger_same_table(void **state)
{
    (void)state;
    const char *t = "tr_trig_self";
    create_defer_table(t);
    server_insert(t, "dup", "orig");
    itest_server_exec("CREATE OR REPLACE FUNCTION tr_trig_self() RETURNS trigger "
                      "LANGUAGE plpgsql AS $$ BEGIN "
                      "IF NEW.payload = 'trig' THEN "
                      "INSERT INTO tr_trig_self (k, payload) VALUES ('dup', 'trigger'); END IF; "
                      "RETURN NULL; END $$; "
                      "CREATE TRIGGER tr_trig_self AFTER INSERT ON tr_trig_self "
                      "FOR EACH ROW EXECUTE FUNCTION tr_trig_self()");
    const char *sql = "INSERT INTO tr_trig_self (k, payload) VALUES ('fresh', 'trig')";
    PGconn *d = itest_connect_direct();
    PGresult *r = itest_exec(d, sql);
    itest_assert_sqlstate(r, "23505", "the trigger's duplicate, directly");
    const char *ctx = PQresultErrorField(r, PG_DIAG_CONTEXT);
    printf("directly: 23505 on %s, context: %s\n", PQresultErrorField(r, PG_DIAG_TABLE_NAME),
           ctx ? ctx : "(none)");
    assert_non_null(ctx);
    PQclear(r);
    itest_finish(d);

    struct itest_proxy *p = start_proxy_for(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    r = itest_exec(c, sql);
    printf("through the proxy (autocommit): %s\n", result_text(r));
    itest_assert_sqlstate(r, "23505", "a trigger's duplicate on the statement's own table");
    PQclear(r);
    fails_in_block(c, sql, "23505");
    assert_int_equal(key_rows(t, "fresh"), 0);
    assert_int_equal(all_rows(t), 1);
    itest_pass();
}

/* A second unique constraint that is not the conflict target: the rewrite
 * (ON CONFLICT (k) DO NOTHING) cannot help, translation does. */
static void test_tr_second_constraint(void **state)
{
    (void)state;
    itest_server_exec("DROP TABLE IF EXISTS tr_second; "
                      "CREATE TABLE tr_second (id bigserial PRIMARY KEY, k text NOT NULL UNIQUE, "
                      "payload text UNIQUE); "
                      "INSERT INTO tr_second (k, payload) VALUES ('k1', 'taken')");
    struct itest_proxy *p = start_proxy_for("tr_second");
    PGconn *c = itest_connect_ok(p->port, NULL);

    /* The target's duplicate: the rewrite skips it. */
    itest_exec_tag(c, "INSERT INTO tr_second (k, payload) VALUES ('k1', 'x')", "INSERT 0 0");
    /* The other constraint's: translated. */
    itest_exec_tag(c, "INSERT INTO tr_second (k, payload) VALUES ('k2', 'taken')", "INSERT 0 0");
    params_tag(c, "INSERT INTO tr_second (k, payload) VALUES ($1, 'taken')", "k3", "INSERT 0 0");
    itest_exec_tag(c, "BEGIN", "BEGIN");
    itest_exec_tag(c, "INSERT INTO tr_second (k, payload) VALUES ('k4', 'new')", "INSERT 0 1");
    itest_exec_tag(c, "INSERT INTO tr_second (k, payload) VALUES ('k5', 'taken')", "INSERT 0 0");
    params_tag(c, "INSERT INTO tr_second (k, payload) VALUES ($1, 'taken')", "k6", "INSERT 0 0");
    assert_txn(c, PQTRANS_INTRANS, "after translated duplicates of the second constraint");
    itest_exec_tag(c, "INSERT INTO tr_second (k, payload) VALUES ('k7', 'new2')", "INSERT 0 1");
    itest_exec_tag(c, "COMMIT", "COMMIT");
    assert_int_equal(all_rows("tr_second"), 3);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM tr_second WHERE k IN ('k1', 'k4', 'k7')"),
                     3);
    itest_pass();
}

/* In a block, an INSERT under the proxy's savepoint that fails otherwise
 * (23502 here) leaves the block failed as PostgreSQL does without the
 * savepoint: at the error, what the block did is undone, not at its
 * ROLLBACK. Its row lock is released (another session takes it at once)
 * and a setting it changed is back, and reported so, before the client's
 * ReadyForQuery. */
static void test_tr_failed_block_state(void **state)
{
    (void)state;
    const char *t = "tr_failed_block";
    itest_server_exec("DROP TABLE IF EXISTS tr_locked; CREATE TABLE tr_locked (id int PRIMARY KEY); "
                      "INSERT INTO tr_locked VALUES (1)");
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, "application_name=before");
    PGconn *other = itest_connect_ok(itest_pg_port(), NULL);
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (k, payload) VALUES ($1, 'p')", t);
    PGresult *r = itest_prepare(c, "ins_null", sql, 1);
    itest_assert_result_ok(r, "PQprepare ins_null");
    PQclear(r);

    for (int m = P_SIMPLE; m <= P_PREPARED; m++) {
        itest_exec_tag(c, "BEGIN", "BEGIN");
        itest_exec_tag(c, "SET application_name = 'inside'", "SET");
        assert_string_equal(PQparameterStatus(c, "application_name"), "inside");
        itest_exec_tag(c, "SELECT 1 FROM tr_locked WHERE id = 1 FOR UPDATE", "SELECT 1");
        const char *null_key[1] = { NULL };
        if (m == P_SIMPLE) {
            char simple[256];
            snprintf(simple, sizeof simple, "INSERT INTO %s (k, payload) VALUES (NULL, 'p')", t);
            r = itest_exec(c, simple);
        } else if (m == P_EXTENDED) {
            r = itest_exec_params(c, sql, 1, null_key);
        } else {
            r = itest_exec_prepared(c, "ins_null", 1, null_key);
        }
        itest_assert_sqlstate(r, "23502", proto_names[m]);
        PQclear(r);
        assert_txn(c, PQTRANS_INERROR, proto_names[m]);
        assert_string_equal(PQparameterStatus(c, "application_name"), "before");
        r = itest_exec(other, "SELECT 1 FROM tr_locked WHERE id = 1 FOR UPDATE NOWAIT");
        itest_assert_result_ok(r, "the failed block's row lock is released");
        PQclear(r);
        itest_exec_tag(c, "ROLLBACK", "ROLLBACK");
    }
    /* The session goes on. */
    insert_tag(c, P_SIMPLE, t, "new", "INSERT 0 1");
    itest_finish(other);
    itest_pass();
}

/* Two transactions insert the same new key: the second waits for the first,
 * then either fails (first committed: translated) or succeeds (first rolled
 * back). */
static void test_tr_concurrent_txn(void **state)
{
    (void)state;
    const char *t = "tr_conc";
    create_defer_table(t);
    struct itest_proxy *p = start_proxy_for(t);
    PGconn *a = itest_connect_ok(p->port, NULL);
    PGconn *b = itest_connect_ok(p->port, NULL);

    for (int commit = 1; commit >= 0; commit--) {
        const char *key = commit ? "c1" : "c2";
        char sql[256];
        snprintf(sql, sizeof sql, "INSERT INTO tr_conc (k, payload) VALUES ('%s', 'p')", key);
        itest_exec_tag(a, "BEGIN", "BEGIN");
        itest_exec_tag(b, "BEGIN", "BEGIN");
        itest_exec_tag(a, sql, "INSERT 0 1");
        assert_int_equal(PQsendQuery(b, sql), 1);
        /* b waits for a's row lock. */
        itest_sleep_ms(300);
        assert_int_equal(PQconsumeInput(b), 1);
        assert_int_equal(PQisBusy(b), 1);
        itest_exec_tag(a, commit ? "COMMIT" : "ROLLBACK", commit ? "COMMIT" : "ROLLBACK");
        PGresult *r = itest_wait_result(b, ITEST_QUERY_TIMEOUT_MS);
        itest_assert_tag(r, commit ? "INSERT 0 0" : "INSERT 0 1", "the waiting INSERT");
        PQclear(r);
        assert_txn(b, PQTRANS_INTRANS, "after the waiting INSERT");
        itest_exec_tag(b, "INSERT INTO tr_conc (k, payload) VALUES ('dup-check', 'p') ",
                       "INSERT 0 1");
        itest_exec_tag(b, "ROLLBACK", "ROLLBACK");
        itest_exec_tag(b, "BEGIN", "BEGIN");
        r = itest_exec(b, sql);
        if (commit) {
            itest_assert_tag(r, "INSERT 0 0", "the key again");
        } else {
            /* a rolled back, b's own insert was rolled back too. */
            itest_assert_tag(r, "INSERT 0 1", "the key again");
        }
        PQclear(r);
        itest_exec_tag(b, "COMMIT", "COMMIT");
    }
    assert_int_equal(all_rows(t), 2);
    assert_int_equal(key_rows(t, "c1"), 1);
    assert_int_equal(key_rows(t, "c2"), 1);
    itest_pass();
}

/* ---- 11. cancel ------------------------------------------------------------- */

/* Sends sql, cancels it after delay_ms, returns its result (bounded) and the
 * time from sending to the result in *elapsed_ms, ready for the next
 * statement (itest_cancel_settle). */
static PGresult *send_and_cancel(PGconn *c, const char *sql, int delay_ms, int64_t *elapsed_ms)
{
    int64_t t0 = itest_now_ms();
    if (!PQsendQuery(c, sql))
        fail_msg("PQsendQuery(%s): %s", sql, PQerrorMessage(c));
    itest_sleep_ms(delay_ms);
    PGcancel *cancel = PQgetCancel(c);
    assert_non_null(cancel);
    char err[256] = "";
    int ok = PQcancel(cancel, err, sizeof err);
    PQfreeCancel(cancel);
    if (!ok)
        fail_msg("PQcancel: %s", err);
    PGresult *r = itest_wait_result(c, 15000);
    *elapsed_ms = itest_now_ms() - t0;
    itest_cancel_settle();
    return r;
}

static void test_tr_cancel(void **state)
{
    (void)state;
    const char *t = "tr_cancel";
    create_defer_table(t);
    itest_server_exec("CREATE OR REPLACE FUNCTION tr_cancel_slow() RETURNS trigger "
                      "LANGUAGE plpgsql AS $$ BEGIN "
                      "IF NEW.payload = 'sleep' THEN PERFORM pg_sleep(2); END IF; "
                      "RETURN NEW; END $$; "
                      "CREATE TRIGGER tr_cancel_slow BEFORE INSERT ON tr_cancel "
                      "FOR EACH ROW EXECUTE FUNCTION tr_cancel_slow(); "
                      "INSERT INTO tr_cancel (k, payload) VALUES ('slowdup', 'orig')");
    struct itest_proxy *p = start_proxy_for(t);
    PGconn *c = itest_connect_ok(p->port, NULL);

    /* A guarded INSERT that is slow, cancelled. */
    itest_exec_tag(c, "BEGIN", "BEGIN");
    itest_exec_tag(c, "INSERT INTO tr_cancel (k, payload) VALUES ('before', 'p')", "INSERT 0 1");
    int64_t elapsed;
    PGresult *r = send_and_cancel(c, "INSERT INTO tr_cancel (k, payload) VALUES ('slow', 'sleep')",
                                  300, &elapsed);
    printf("cancelled slow INSERT: %s after %lld ms\n", result_text(r), (long long)elapsed);
    itest_assert_sqlstate(r, "57014", "cancelled slow INSERT in a transaction");
    PQclear(r);
    assert_true(elapsed < 1800);
    assert_txn(c, PQTRANS_INERROR, "after the cancel");
    /* The proxy serves a new connection meanwhile. */
    PGconn *n = itest_connect_ok(p->port, NULL);
    assert_int_equal(itest_query_ll(n, "SELECT 11"), 11);
    itest_exec_tag(c, "ROLLBACK", "ROLLBACK");
    assert_txn(c, PQTRANS_IDLE, "after ROLLBACK");
    assert_int_equal(itest_query_ll(c, "SELECT 12"), 12);

    /* A duplicate that is slow: the cancel lands during the sleep, before
     * the unique check: 57014, never INSERT 0 0. */
    itest_exec_tag(c, "BEGIN", "BEGIN");
    itest_exec_tag(c, "INSERT INTO tr_cancel (k, payload) VALUES ('before2', 'p')", "INSERT 0 1");
    r = send_and_cancel(c, "INSERT INTO tr_cancel (k, payload) VALUES ('slowdup', 'sleep')", 300,
                        &elapsed);
    printf("cancelled slow duplicate: %s after %lld ms\n", result_text(r), (long long)elapsed);
    itest_assert_sqlstate(r, "57014", "cancelled slow duplicate in a transaction");
    PQclear(r);
    assert_txn(c, PQTRANS_INERROR, "after the cancel of a duplicate");
    itest_exec_tag(c, "COMMIT", "ROLLBACK");
    assert_txn(c, PQTRANS_IDLE, "after COMMIT of the failed block");

    /* The same slow duplicate, not cancelled: translated after the sleep. */
    itest_exec_tag(c, "BEGIN", "BEGIN");
    itest_exec_tag(c, "INSERT INTO tr_cancel (k, payload) VALUES ('slowdup', 'sleep')",
                   "INSERT 0 0");
    assert_txn(c, PQTRANS_INTRANS, "after a slow translated duplicate");
    itest_exec_tag(c, "INSERT INTO tr_cancel (k, payload) VALUES ('after', 'p')", "INSERT 0 1");
    itest_exec_tag(c, "COMMIT", "COMMIT");

    /* Autocommit, cancelled slow duplicate: 57014 too. */
    r = send_and_cancel(c, "INSERT INTO tr_cancel (k, payload) VALUES ('slowdup', 'sleep')", 300,
                        &elapsed);
    itest_assert_sqlstate(r, "57014", "cancelled slow duplicate in autocommit");
    PQclear(r);
    assert_txn(c, PQTRANS_IDLE, "after the cancel in autocommit");

    assert_int_equal(itest_query_ll(n, "SELECT 13"), 13);
    assert_int_equal(all_rows(t), 2);
    assert_int_equal(key_rows(t, "slowdup"), 1);
    assert_int_equal(key_rows(t, "after"), 1);
    itest_pass();
}

/* ---- 12. notices still arrive ------------------------------------------------ */

struct notices {
    int hello;
    int other;
};

static void on_notice(void *arg, const PGresult *res)
{
    struct notices *n = arg;
    const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (m != NULL && strcmp(m, "hello") == 0)
        n->hello++;
    else
        n->other++;
}

static void test_tr_notices(void **state)
{
    (void)state;
    const char *t = "tr_notice";
    create_defer_table(t);
    server_insert(t, "dup", "orig");
    itest_server_exec("CREATE OR REPLACE FUNCTION tr_notice_hello() RETURNS trigger "
                      "LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'hello'; RETURN NEW; END $$; "
                      "CREATE TRIGGER tr_notice_hello BEFORE INSERT ON tr_notice "
                      "FOR EACH ROW EXECUTE FUNCTION tr_notice_hello()");
    struct itest_proxy *p = start_proxy_for(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    struct notices got = { 0, 0 };
    PQsetNoticeReceiver(c, on_notice, &got);

    for (int m = P_SIMPLE; m <= P_EXTENDED; m++) {
        itest_exec_tag(c, "BEGIN", "BEGIN");
        int before = got.hello;
        insert_tag(c, (enum proto)m, t, "dup", "INSERT 0 0");
        assert_int_equal(got.hello, before + 1);
        assert_txn(c, PQTRANS_INTRANS, "after a translated duplicate with a notice");
        before = got.hello;
        insert_tag(c, (enum proto)m, t, m == P_SIMPLE ? "n1" : "n2", "INSERT 0 1");
        assert_int_equal(got.hello, before + 1);
        itest_exec_tag(c, "COMMIT", "COMMIT");
        /* Autocommit too. */
        before = got.hello;
        insert_tag(c, (enum proto)m, t, "dup", "INSERT 0 0");
        assert_int_equal(got.hello, before + 1);
    }
    assert_int_equal(got.other, 0);
    assert_int_equal(all_rows(t), 3);
    itest_pass();
}

/* ---- 13. the session after translated duplicates ----------------------------- */

static void test_tr_session_usable(void **state)
{
    (void)state;
    const char *t = "tr_usable";
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);

    for (int m = P_SIMPLE; m <= P_EXTENDED; m++) {
        enum proto mode = (enum proto)m;
        cmd_tag(c, mode, "BEGIN", "BEGIN");
        insert_tag(c, mode, t, "dup", "INSERT 0 0");
        assert_int_equal(itest_query_ll(c, "SELECT 1"), 1);
        /* The client's own savepoint around a translated duplicate. */
        cmd_tag(c, mode, "SAVEPOINT s1", "SAVEPOINT");
        insert_tag(c, mode, t, m == P_SIMPLE ? "s1-a" : "s1-b", "INSERT 0 1");
        insert_tag(c, mode, t, "dup", "INSERT 0 0");
        cmd_tag(c, mode, "ROLLBACK TO SAVEPOINT s1", "ROLLBACK");
        cmd_tag(c, mode, "RELEASE s1", "RELEASE");
        assert_txn(c, PQTRANS_INTRANS, "after the client's own savepoint");
        /* The client's savepoint, released after a translated duplicate. */
        cmd_tag(c, mode, "SAVEPOINT s2", "SAVEPOINT");
        insert_tag(c, mode, t, "dup", "INSERT 0 0");
        insert_tag(c, mode, t, m == P_SIMPLE ? "s2-a" : "s2-b", "INSERT 0 1");
        cmd_tag(c, mode, "RELEASE SAVEPOINT s2", "RELEASE");
        assert_true(itest_query_ll(c, "SELECT count(*) FROM pg_catalog.pg_stat_activity") >= 1);
        assert_int_equal(itest_query_ll(c, "SELECT count(*) FROM pg_catalog.pg_locks "
                                           "WHERE pid = pg_backend_pid()") > 0, 1);
        /* No savepoint of the proxy's is left open in the block. */
        cmd_tag(c, mode, "SAVEPOINT probe", "SAVEPOINT");
        PGresult *r = itest_exec(c, "RELEASE SAVEPOINT idemproxy_guard");
        itest_assert_sqlstate(r, "3B001", "RELEASE of a leaked proxy savepoint");
        PQclear(r);
        cmd_tag(c, mode, "ROLLBACK TO SAVEPOINT probe", "ROLLBACK");
        assert_txn(c, PQTRANS_INTRANS, "after the probe");
        cmd_tag(c, mode, "COMMIT", "COMMIT");
        assert_txn(c, PQTRANS_IDLE, "after COMMIT");
    }
    assert_int_equal(key_rows(t, "s1-a"), 0);
    assert_int_equal(key_rows(t, "s1-b"), 0);
    assert_int_equal(key_rows(t, "s2-a"), 1);
    assert_int_equal(key_rows(t, "s2-b"), 1);
    assert_int_equal(all_rows(t), 3);
    itest_pass();
}

#define MANY_SIMPLE 500
#define MANY_EXTENDED 200

/* Hundreds of translated duplicates in one transaction: no savepoint
 * piles up, the subtransaction cache overflowing breaks nothing. */
static void test_tr_many_in_txn(void **state)
{
    (void)state;
    const char *t = "tr_many";
    create_defer_table(t);
    server_insert(t, "dup", "orig");
    server_insert(t, "dup2", "orig");
    struct itest_proxy *p = start_proxy_for(t);
    PGconn *c = itest_connect_ok(p->port, NULL);

    int64_t t0 = itest_now_ms();
    itest_exec_tag(c, "BEGIN", "BEGIN");
    int fresh = 0;
    for (int i = 0; i < MANY_SIMPLE; i++) {
        char key[32];
        if (i % 10 == 9) {
            snprintf(key, sizeof key, "s%d", i);
            fresh++;
            insert_tag(c, P_SIMPLE, t, key, "INSERT 0 1");
        } else {
            insert_tag(c, P_SIMPLE, t, i % 2 ? "dup" : (i > 10 ? "s9" : "dup2"), "INSERT 0 0");
        }
    }
    assert_txn(c, PQTRANS_INTRANS, "after the simple duplicates");
    for (int i = 0; i < MANY_EXTENDED; i++) {
        char key[32];
        if (i % 10 == 9) {
            snprintf(key, sizeof key, "e%d", i);
            fresh++;
            insert_tag(c, P_EXTENDED, t, key, "INSERT 0 1");
        } else {
            insert_tag(c, P_EXTENDED, t, i % 2 ? "dup" : (i > 10 ? "e9" : "s19"), "INSERT 0 0");
        }
    }
    assert_txn(c, PQTRANS_INTRANS, "after the extended duplicates");
    assert_int_equal(itest_query_ll(c, "SELECT count(*) FROM tr_many"), fresh + 2);
    itest_exec_tag(c, "COMMIT", "COMMIT");
    printf("%d INSERTs in one transaction through the proxy: %lld ms\n",
           MANY_SIMPLE + MANY_EXTENDED, (long long)(itest_now_ms() - t0));
    assert_txn(c, PQTRANS_IDLE, "after COMMIT");
    assert_int_equal(all_rows(t), fresh + 2);
    assert_int_equal(itest_server_ll("SELECT count(DISTINCT k) FROM tr_many"), fresh + 2);
    itest_pass();
}

/* ---- 14. counters and log lines ---------------------------------------------- */

static void test_tr_counters(void **state)
{
    (void)state;
    const char *t = "tr_count";
    create_defer_table(t);
    server_insert(t, "dup", "orig");
    server_insert(t, "other", "orig");
    struct itest_proxy *p = start_proxy_for(t);
    PGconn *c = itest_connect_ok(p->port, NULL);

    /* translated: 3 */
    itest_exec_tag(c, "INSERT INTO tr_count (k, payload) VALUES ('dup', 'p')", "INSERT 0 0");
    params_tag(c, "INSERT INTO tr_count (k, payload) VALUES ($1, 'p')", "dup", "INSERT 0 0");
    itest_exec_tag(c, "BEGIN", "BEGIN");
    itest_exec_tag(c, "INSERT INTO tr_count (k, payload) VALUES ('dup', 'p')", "INSERT 0 0");
    itest_exec_tag(c, "COMMIT", "COMMIT");
    /* not_alone: 2 */
    itest_exec_sqlstate(c, "INSERT INTO tr_count (k, payload) VALUES ('n1', 'p'); "
                           "INSERT INTO tr_count (k, payload) VALUES ('dup', 'p')", "23505");
    itest_exec_sqlstate(c, "INSERT INTO tr_count (k, payload) VALUES ('dup', 'p'); SELECT 1",
                        "23505");
    /* not_recognised: 1 */
    itest_exec_sqlstate(c, "UPDATE tr_count SET k = 'dup' WHERE k = 'other'", "23505");
    itest_assert_log_line(p, "public.tr_count", "reported as INSERT 0 0", NULL);
    itest_assert_log_line(p, "public.tr_count", "not_alone", NULL);
    itest_assert_log_line(p, "public.tr_count", "not_recognised", NULL);

    /* A reload logs the counts so far. */
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    wait_log_line(p, "[table public.tr_count] unique violations:", "translated=3",
                  "not_alone=2", 10000);
    itest_assert_log_line(p, "[table public.tr_count] unique violations:", "not_recognised=1",
                          NULL);
    assert_true(itest_proxy_alive(p));

    /* The exit logs the counts since the start: counters outlive reloads. */
    PGconn *n = itest_connect_ok(p->port, NULL);
    itest_exec_tag(n, "INSERT INTO tr_count (k, payload) VALUES ('dup', 'p')", "INSERT 0 0");
    itest_exec_tag(n, "BEGIN", "BEGIN");
    params_tag(n, "INSERT INTO tr_count (k, payload) VALUES ($1, 'p')", "dup", "INSERT 0 0");
    itest_exec_tag(n, "ROLLBACK", "ROLLBACK");
    itest_finish(n);
    itest_finish(c);
    assert_true(itest_proxy_signal_wait(p, SIGINT, 10000));
    assert_true(WIFEXITED(p->exit_status) && WEXITSTATUS(p->exit_status) == 0);
    itest_assert_log_line(p, "[table public.tr_count] unique violations: translated=5",
                          "not_recognised=1 not_alone=2\n", NULL);
    assert_int_equal(all_rows(t), 2);
    itest_pass();
}

/* ---- more: deferred constraints, raw extended protocol ------------------------ */

/* A deferred constraint fails at COMMIT: never translated. */
static void test_tr_deferred_commit(void **state)
{
    (void)state;
    const char *t = "tr_deferred";
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);

    for (int m = P_SIMPLE; m <= P_EXTENDED; m++) {
        cmd_tag(c, (enum proto)m, "BEGIN", "BEGIN");
        cmd_tag(c, (enum proto)m, "SET CONSTRAINTS ALL DEFERRED", "SET CONSTRAINTS");
        insert_tag(c, (enum proto)m, t, "n1", "INSERT 0 1");
        insert_tag(c, (enum proto)m, t, "dup", "INSERT 0 1");
        assert_txn(c, PQTRANS_INTRANS, "after a deferred duplicate");
        if (m == P_SIMPLE)
            itest_exec_sqlstate(c, "COMMIT", "23505");
        else
            params_sqlstate(c, "COMMIT", NULL, "23505");
        assert_txn(c, PQTRANS_IDLE, "after the failed COMMIT");
    }
    assert_int_equal(all_rows(t), 1);
    assert_int_equal(key_rows(t, "n1"), 0);
    itest_pass();
}

/* Raw protocol helpers: Parse/Bind/Execute of the unnamed statement. */
static size_t put_msg(uint8_t *buf, size_t at, size_t cap, char type, const void *body,
                      size_t len)
{
    return at + itest_build_msg(buf + at, cap - at, type, body, len);
}

static void raw_send_pbe(int fd, const char *sql)
{
    uint8_t body[512], buf[1024];
    size_t n = 0, at = 0;
    body[n++] = 0; /* unnamed statement */
    size_t l = strlen(sql) + 1;
    assert_true(l + 8 < sizeof body);
    memcpy(body + n, sql, l);
    n += l;
    body[n++] = 0; /* no parameter types */
    body[n++] = 0;
    at = put_msg(buf, at, sizeof buf, 'P', body, n);
    static const uint8_t bind[] = { 0, 0, 0, 0, 0, 0, 0, 0 }; /* portal, statement, 0, 0, 0 */
    at = put_msg(buf, at, sizeof buf, 'B', bind, sizeof bind);
    static const uint8_t exec[] = { 0, 0, 0, 0, 0 }; /* portal, no row limit */
    at = put_msg(buf, at, sizeof buf, 'E', exec, sizeof exec);
    assert_true(itest_raw_send(fd, buf, at));
}

static void raw_send_msg(int fd, char type)
{
    uint8_t m[8];
    size_t n = itest_build_msg(m, sizeof m, type, NULL, 0);
    assert_true(itest_raw_send(fd, m, n));
}

static void raw_query(int fd, const char *sql)
{
    uint8_t m[512];
    size_t n = itest_build_msg(m, sizeof m, 'Q', sql, strlen(sql) + 1);
    assert_true(itest_raw_send(fd, m, n));
}

/* Reads the next message; it must be of the type, and for 'E' have the
 * SQLSTATE detail, for 'C' the tag detail, for 'Z' the status detail[0]. */
static void raw_expect(int fd, char type, const char *detail)
{
    struct itest_msg m;
    enum itest_read rd = itest_raw_read_msg(fd, &m, 10000);
    if (rd != ITEST_READ_OK)
        fail_msg("raw: no '%c' message (read result %d)", type, (int)rd);
    char got = m.type;
    char info[256] = "";
    if (got == 'E' || got == 'N')
        snprintf(info, sizeof info, "%s %s", itest_msg_field(&m, 'C') ? itest_msg_field(&m, 'C') : "",
                 itest_msg_field(&m, 'M') ? itest_msg_field(&m, 'M') : "");
    else if (got == 'C')
        snprintf(info, sizeof info, "%s", (const char *)m.body);
    else if (got == 'Z' && m.len >= 1)
        snprintf(info, sizeof info, "%c", m.body[0]);
    itest_msg_free(&m);
    if (got != type || (detail && strncmp(info, detail, strlen(detail)) != 0))
        fail_msg("raw: got '%c' %s, want '%c' %s", got, info, type, detail ? detail : "");
}

/* Nothing more arrives within ms. */
/* The next replies, each as raw_expect reads it. */
struct raw_reply {
    char type;
    const char *detail;
};

static void raw_expect_all(int fd, const struct raw_reply *replies, size_t n)
{
    for (size_t i = 0; i < n; i++)
        raw_expect(fd, replies[i].type, replies[i].detail);
}

#define RAW_EXPECT(fd, ...)                                                                  \
    raw_expect_all((fd), (const struct raw_reply[]){ __VA_ARGS__ },                         \
                   sizeof((const struct raw_reply[]){ __VA_ARGS__ }) / sizeof(struct raw_reply))

static void raw_expect_nothing(int fd, int ms)
{
    uint8_t b[64];
    ssize_t n = itest_raw_recv(fd, b, sizeof b, ms);
    if (n != -2)
        fail_msg("raw: expected nothing for %d ms, got %zd bytes (first '%c')", ms, n,
                 n > 0 ? (char)b[0] : '?');
}

/* A raw session through a new proxy for table t (and its row 'dup'),
 * logged in as application itest_<t>; in a transaction block when block. */
static int raw_session_for(const char *t, bool block)
{
    struct itest_proxy *p = start_with_dup(t);
    int fd = itest_raw_connect(p->port);
    char application[64];

    assert_true(fd >= 0);
    snprintf(application, sizeof application, "itest_%s", t);
    itest_raw_login(fd, itest_pg_user(), application);
    if (block) {
        raw_query(fd, "BEGIN");
        raw_expect(fd, 'C', "BEGIN");
        raw_expect(fd, 'Z', "T");
    }
    return fd;
}

/* P/B/E of a duplicate INSERT, a pause, then Sync: translated. The server
 * flushes an error at once (and what came before it); the proxy holds the
 * error until it knows the client's next message. status: the
 * ReadyForQuery's. */
static void raw_dup_then_sync(int fd, const char *sql, const char *status)
{
    raw_send_pbe(fd, sql);
    raw_expect(fd, '1', NULL);
    raw_expect(fd, '2', NULL);
    raw_expect_nothing(fd, 300);
    raw_send_msg(fd, 'S');
    raw_expect(fd, 'C', "INSERT 0 0");
    raw_expect(fd, 'Z', status);
}

/* P/B/E of a duplicate INSERT, then Flush: the client may be waiting for the
 * outcome before it sends Sync, so the error must pass, and at once. */
static void raw_dup_then_flush(int fd, const char *sql, const char *status)
{
    raw_send_pbe(fd, sql);
    raw_send_msg(fd, 'H');
    raw_expect(fd, '1', NULL);
    raw_expect(fd, '2', NULL);
    raw_expect(fd, 'E', "23505");
    raw_send_msg(fd, 'S');
    raw_expect(fd, 'Z', status);
}

/* Autocommit: P/B/E, then Flush. */
static void test_tr_raw_flush(void **state)
{
    (void)state;
    const char *t = "tr_raw_flush";
    int fd = raw_session_for(t, false);
    raw_dup_then_flush(fd, "INSERT INTO tr_raw_flush (k, payload) VALUES ('dup', 'raw1')", "I");
    raw_expect_nothing(fd, 200);
    assert_int_equal(all_rows(t), 1);
    itest_pass();
}

static void test_tr_raw_extended(void **state)
{
    (void)state;
    const char *t = "tr_raw";
    int fd = raw_session_for(t, false);

    /* Autocommit: P/B/E, a pause, then Sync: translated. */
    raw_dup_then_sync(fd, "INSERT INTO tr_raw (k, payload) VALUES ('dup', 'raw2')", "I");

    /* In a block: P/B/E, a pause, then Sync: the proxy's savepoint. */
    raw_query(fd, "BEGIN");
    raw_expect(fd, 'C', "BEGIN");
    raw_expect(fd, 'Z', "T");
    raw_dup_then_sync(fd, "INSERT INTO tr_raw (k, payload) VALUES ('dup', 'raw3')", "T");
    raw_send_pbe(fd, "INSERT INTO tr_raw (k, payload) VALUES ('r1', 'raw4')");
    raw_send_msg(fd, 'S');
    raw_expect(fd, '1', NULL);
    raw_expect(fd, '2', NULL);
    raw_expect(fd, 'C', "INSERT 0 1");
    raw_expect(fd, 'Z', "T");

    /* In a block: P/B/E then Flush: the error as it is, the block failed. */
    raw_dup_then_flush(fd, "INSERT INTO tr_raw (k, payload) VALUES ('dup', 'raw5')", "E");
    raw_query(fd, "COMMIT");
    raw_expect(fd, 'C', "ROLLBACK");
    raw_expect(fd, 'Z', "I");

    /* Nothing else arrived, and the session goes on. */
    raw_expect_nothing(fd, 200);
    raw_query(fd, "SELECT 1");
    raw_expect(fd, 'T', NULL);
    raw_expect(fd, 'D', NULL);
    raw_expect(fd, 'C', "SELECT 1");
    raw_expect(fd, 'Z', "I");
    assert_int_equal(all_rows(t), 1);
    assert_int_equal(key_rows(t, "r1"), 0);
    itest_pass();
}

/* In a block, an extended message fails and the client, once it has the
 * error, sends a duplicate INSERT as a Query, then the Sync. The server
 * skips the Query with the rest of the batch, so the proxy must not put
 * its savepoint around it (the savepoint would be skipped too, and its
 * answer awaited for ever): the client hears what PostgreSQL says, the
 * Sync's ReadyForQuery with the block failed, and the row is not there. */
static void test_tr_raw_query_in_skipped_batch(void **state)
{
    (void)state;
    const char *t = "tr_raw_skip";
    int fd = raw_session_for(t, true);
    static const uint8_t describe_missing[] = "Sno_such_statement";
    uint8_t m[64];
    size_t n = itest_build_msg(m, sizeof m, 'D', describe_missing, sizeof describe_missing);
    assert_true(itest_raw_send(fd, m, n));
    raw_expect(fd, 'E', "26000");
    raw_query(fd, "INSERT INTO tr_raw_skip (k, payload) VALUES ('dup', 'skipped')");
    raw_send_msg(fd, 'S');
    raw_expect(fd, 'Z', "E");
    raw_query(fd, "ROLLBACK");
    raw_expect(fd, 'C', "ROLLBACK");
    raw_expect(fd, 'Z', "I");
    raw_expect_nothing(fd, 200);
    assert_int_equal(key_rows(t, "dup"), 1);
    assert_int_equal(all_rows(t), 1);
    itest_pass();
}

/* Appends a Parse of the unnamed statement, a Bind and an Execute of sql
 * (no parameters) to buf at at. */
/* Appends the strings of strs (n of them, each with its NUL) to body at
 * at, within cap. */
static size_t put_strings(uint8_t *body, size_t at, size_t cap, const char *const *strs, int n)
{
    for (int i = 0; i < n; i++) {
        size_t l = strlen(strs[i]) + 1;
        assert_true(at + l <= cap);
        memcpy(body + at, strs[i], l);
        at += l;
    }
    return at;
}

/* Parse of sql as statement name, no parameter types. */
static size_t put_parse(uint8_t *buf, size_t at, size_t cap, const char *name, const char *sql)
{
    uint8_t body[512];
    size_t n = put_strings(body, 0, sizeof body - 2, (const char *[]){ name, sql }, 2);

    body[n++] = 0;
    body[n++] = 0;
    return put_msg(buf, at, cap, 'P', body, n);
}

/* Bind of statement to portal, no parameters, results in text. */
static size_t put_bind(uint8_t *buf, size_t at, size_t cap, const char *portal,
                       const char *statement)
{
    uint8_t body[160];
    size_t n = put_strings(body, 0, sizeof body - 6, (const char *[]){ portal, statement }, 2);

    memset(body + n, 0, 6);
    return put_msg(buf, at, cap, 'B', body, n + 6);
}

/* Execute of portal, no row limit. */
static size_t put_execute(uint8_t *buf, size_t at, size_t cap, const char *portal)
{
    uint8_t body[80];
    size_t n = put_strings(body, 0, sizeof body - 4, &portal, 1);

    memset(body + n, 0, 4);
    return put_msg(buf, at, cap, 'E', body, n + 4);
}

static size_t put_pbe(uint8_t *buf, size_t at, size_t cap, const char *sql)
{
    at = put_parse(buf, at, cap, "", sql);
    at = put_bind(buf, at, cap, "", "");
    return put_execute(buf, at, cap, "");
}

/* The answers to an INSERT's and a COPY FROM STDIN's Parse, Bind and
 * Execute, up to CopyInResponse. */
static void raw_expect_insert_then_copy(int fd)
{
    raw_expect(fd, '1', NULL);
    raw_expect(fd, '2', NULL);
    raw_expect(fd, 'C', "INSERT 0 1");
    raw_expect(fd, '1', NULL);
    raw_expect(fd, '2', NULL);
    raw_expect(fd, 'G', NULL);
}

/* In a block, one batch runs a guarded INSERT, then a COPY from the client,
 * then its Sync, which the server ignores while it copies. The client's
 * messages behind a guarded batch's Sync wait for its ReadyForQuery, but
 * not the copy's data: PostgreSQL waits for that, and the ReadyForQuery
 * comes only after the Sync the client sends behind the copy's end. Every
 * way a client sends them: once CopyInResponse is in (libpq), pipelined
 * right behind the Sync, and that last Sync only once the server has said
 * how the copy ended, after a CopyDone (and a Flush) and after a CopyFail
 * (which fails the block). */
static void test_tr_raw_copy_in_guarded_batch(void **state)
{
    (void)state;
    const char *t = "tr_raw_copy";
    itest_server_exec("DROP TABLE IF EXISTS tr_raw_copied; CREATE TABLE tr_raw_copied (v text)");
    int fd = raw_session_for(t, true);
    enum { AFTER_COPY_IN, PIPELINED, SYNC_AFTER_DONE, SYNC_AFTER_FAIL };

    static const uint8_t row[] = "copied\n";
    for (int how = AFTER_COPY_IN; how <= SYNC_AFTER_FAIL; how++) {
        uint8_t buf[1024];
        char insert[128];
        snprintf(insert, sizeof insert, "INSERT INTO tr_raw_copy (k, payload) VALUES ('c%d', 'x')",
                 how);
        if (how == SYNC_AFTER_FAIL) {
            raw_query(fd, "COMMIT; BEGIN");
            RAW_EXPECT(fd, { 'C', "COMMIT" }, { 'C', "BEGIN" }, { 'Z', "T" });
        }
        size_t n = put_pbe(buf, 0, sizeof buf, insert);
        n = put_pbe(buf, n, sizeof buf, "COPY tr_raw_copied (v) FROM STDIN");
        n = put_msg(buf, n, sizeof buf, 'S', NULL, 0);
        if (how != PIPELINED) {
            assert_true(itest_raw_send(fd, buf, n));
            raw_expect_insert_then_copy(fd);
            n = 0;
        }
        n = put_msg(buf, n, sizeof buf, 'd', row, sizeof row - 1);
        n = how == SYNC_AFTER_FAIL ? put_msg(buf, n, sizeof buf, 'f', "stop", 5)
                                   : put_msg(buf, n, sizeof buf, 'c', NULL, 0);
        if (how == SYNC_AFTER_DONE || how == SYNC_AFTER_FAIL) {
            /* An error goes out at once; the copy's CommandComplete on a
             * Flush. */
            if (how == SYNC_AFTER_DONE)
                n = put_msg(buf, n, sizeof buf, 'H', NULL, 0);
            assert_true(itest_raw_send(fd, buf, n));
            if (how == SYNC_AFTER_DONE)
                raw_expect(fd, 'C', "COPY 1");
            else
                raw_expect(fd, 'E', "57014");
            n = 0;
        }
        n = put_msg(buf, n, sizeof buf, 'S', NULL, 0);
        assert_true(itest_raw_send(fd, buf, n));
        if (how == PIPELINED)
            raw_expect_insert_then_copy(fd);
        if (how == SYNC_AFTER_FAIL) {
            raw_expect(fd, 'Z', "E");
            continue;
        }
        if (how != SYNC_AFTER_DONE)
            raw_expect(fd, 'C', "COPY 1");
        raw_expect(fd, 'Z', "T");
    }
    raw_query(fd, "ROLLBACK");
    RAW_EXPECT(fd, { 'C', "ROLLBACK" }, { 'Z', "I" });
    raw_expect_nothing(fd, 200);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM tr_raw_copied"), 3);
    assert_int_equal(all_rows(t), 4);
    itest_pass();
}

/* ---- stale names -------------------------------------------------------- */

/* The proxy knows a prepared statement is an INSERT only while the server
 * holds that meaning. Each way the server can keep (or regain) another
 * meaning under the same name must leave the proxy knowing less, never
 * more: here the name really holds an UPDATE whose 23505 (no context, on a
 * registered table) must pass unchanged. */
static void expect_update_violation(PGconn *c, const char *name, const char *what)
{
    PGresult *r = itest_exec_prepared(c, name, 0, NULL);
    itest_assert_sqlstate(r, "23505", what);
    PQclear(r);
}

static void test_tr_stale_names(void **state)
{
    (void)state;
    const char *t = "tr_stale";
    create_defer_table(t);
    server_insert(t, "dup", "orig");
    server_insert(t, "other", "orig");
    struct itest_proxy *p = start_proxy_for(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *update = "UPDATE tr_stale SET k = 'dup' WHERE k = 'other'";
    const char *insert = "INSERT INTO tr_stale (k) VALUES ('dup')";
    PGresult *r;

    /* A re-Parse the server refuses (42P05) leaves the old statement. */
    r = itest_prepare(c, "a1", update, 0);
    itest_assert_result_ok(r, "prepare a1 as the UPDATE");
    PQclear(r);
    r = itest_prepare(c, "a1", insert, 0);
    itest_assert_sqlstate(r, "42P05", "prepare a1 again as the INSERT");
    PQclear(r);
    expect_update_violation(c, "a1", "a1 after a refused re-Parse");

    /* SQL-level DEALLOCATE and PREPARE, through either protocol. */
    for (int extended = 0; extended < 2; extended++) {
        const char *name = extended ? "b2" : "b1";
        char sql[256];
        r = itest_prepare(c, name, insert, 0);
        itest_assert_result_ok(r, "prepare the INSERT");
        PQclear(r);
        snprintf(sql, sizeof sql, "DEALLOCATE %s", name);
        r = extended ? itest_exec_params(c, sql, 0, NULL) : itest_exec(c, sql);
        itest_assert_result_ok(r, sql);
        PQclear(r);
        snprintf(sql, sizeof sql, "PREPARE %s AS %s", name, update);
        r = extended ? itest_exec_params(c, sql, 0, NULL) : itest_exec(c, sql);
        itest_assert_result_ok(r, sql);
        PQclear(r);
        expect_update_violation(c, name, extended ? "b2 redefined through Parse"
                                                  : "b1 redefined through Query");
    }

    /* A Parse the server skips after an earlier error of its pipeline. */
    r = itest_prepare(c, "c1", update, 0);
    itest_assert_result_ok(r, "prepare c1 as the UPDATE");
    PQclear(r);
    assert_int_equal(PQenterPipelineMode(c), 1);
    assert_int_equal(PQsendQueryParams(c, "SELECT 1/0", 0, NULL, NULL, NULL, NULL, 0), 1);
    assert_int_equal(PQsendPrepare(c, "c1", insert, 0, NULL), 1);
    assert_int_equal(PQpipelineSync(c), 1);
    itest_pipeline_after_error(c, "22012", itest_now_ms() + PIPE_TIMEOUT_MS);
    assert_int_equal(PQexitPipelineMode(c), 1);
    expect_update_violation(c, "c1", "c1 after its re-Parse was skipped");

    assert_int_equal(all_rows(t), 2);
    itest_pass();
}

/* ---- a batch that fails before its guarded Execute ------------------------ */

/* Inside a block the proxy holds the client's Sync until the guarded
 * Execute's outcome is in. When an earlier message of the same batch fails
 * (here the Bind, with a parameter its type cannot take), the server skips
 * the savepoint and the Execute: the client must get the Bind's error at
 * once, not wait for an outcome that never comes. */
static void test_tr_guarded_batch_fails_early(void **state)
{
    (void)state;
    const char *t = "tr_early";
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *bad[1] = { "not a number" };

    for (int round = 0; round < 2; round++) {
        itest_exec_tag(c, "BEGIN", "BEGIN");
        PGresult *r = itest_exec_params(c, "INSERT INTO tr_early (k, payload) "
                                           "VALUES ('dup', ($1::int)::text)", 1, bad);
        itest_assert_sqlstate(r, "22P02", "a guarded INSERT whose Bind fails");
        PQclear(r);
        assert_txn(c, PQTRANS_INERROR, "after the Bind failed");
        itest_exec_tag(c, "ROLLBACK", "ROLLBACK");
    }
    /* The session goes on, and a duplicate in a block is still translated. */
    itest_exec_tag(c, "BEGIN", "BEGIN");
    const char *dup[1] = { "dup" };
    PGresult *r = itest_exec_params(c, "INSERT INTO tr_early (k, payload) VALUES ($1, 'x')", 1,
                                    dup);
    itest_assert_tag(r, "INSERT 0 0", "a duplicate after the failed batches");
    PQclear(r);
    assert_txn(c, PQTRANS_INTRANS, "after the translated duplicate");
    itest_exec_tag(c, "COMMIT", "COMMIT");
    assert_int_equal(all_rows(t), 1);
    itest_pass();
}

/* ---- several guarded INSERTs in one batch --------------------------------- */

/* Inside a block, each INSERT of a batch runs under a savepoint of its own
 * (what a JDBC batch sends: Bind/Execute after Bind/Execute, one Sync). A
 * duplicate last in the batch is rolled back alone and the rest commits; a
 * duplicate in the middle makes the server skip the rest, so its error
 * stands and the block is aborted, as the client then sees. */
static void test_tr_batch_in_txn(void **state)
{
    (void)state;
    const char *t = "tr_batch";
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    struct piped r[3];

    itest_exec_tag(c, "BEGIN", "BEGIN");
    const char *last[] = { "n1", "n2", "dup" };
    run_pipeline(c, t, last, 3, r);
    expect_piped(&r[0], PGRES_COMMAND_OK, "INSERT 0 1", "n1");
    expect_piped(&r[1], PGRES_COMMAND_OK, "INSERT 0 1", "n2");
    expect_piped(&r[2], PGRES_COMMAND_OK, "INSERT 0 0", "the duplicate last in the batch");
    assert_txn(c, PQTRANS_INTRANS, "after the batch");
    itest_exec_tag(c, "COMMIT", "COMMIT");
    assert_int_equal(key_rows(t, "n1") + key_rows(t, "n2"), 2);

    itest_exec_tag(c, "BEGIN", "BEGIN");
    const char *middle[] = { "m1", "dup", "m2" };
    run_pipeline(c, t, middle, 3, r);
    expect_piped(&r[0], PGRES_COMMAND_OK, "INSERT 0 1", "m1");
    expect_piped(&r[1], PGRES_FATAL_ERROR, "23505", "the duplicate in the middle");
    expect_piped(&r[2], PGRES_PIPELINE_ABORTED, NULL, "m2, skipped by the server");
    assert_txn(c, PQTRANS_INERROR, "after the batch");
    itest_exec_tag(c, "COMMIT", "ROLLBACK");
    assert_int_equal(key_rows(t, "m1") + key_rows(t, "m2"), 0);
    assert_int_equal(all_rows(t), 3);
    itest_pass();
}

/* A block opened in the batch of its first INSERT, as pgjdbc opens one
 * (BEGIN by Parse, Bind and Execute, then the INSERT, then one Sync): the
 * INSERT runs in the block and is guarded as in one opened before, so its
 * duplicate is rolled back alone and the block goes on. A text that only
 * holds a BEGIN in a string opens nothing: after it the duplicate is an
 * implicit transaction's second statement, whose error stands. */
static void test_tr_begin_in_batch(void **state)
{
    (void)state;
    const char *t = "tr_begin_batch";
    struct itest_proxy *p = start_with_dup(t);
    PGconn *c = itest_connect_ok(p->port, NULL);
    static const char *const opening[] = { "BEGIN", "START TRANSACTION" };
    struct piped r[2];

    for (int i = 0; i < 2; i++) {
        assert_int_equal(PQenterPipelineMode(c), 1);
        send_piped_cmd(c, opening[i]);
        send_piped_insert(c, t, "dup");
        assert_int_equal(PQpipelineSync(c), 1);
        collect_piped(c, r, 2, itest_now_ms() + PIPE_TIMEOUT_MS);
        assert_int_equal(PQexitPipelineMode(c), 1);
        expect_piped(&r[0], PGRES_COMMAND_OK, opening[i], opening[i]);
        expect_piped(&r[1], PGRES_COMMAND_OK, "INSERT 0 0", "the duplicate after it");
        assert_txn(c, PQTRANS_INTRANS, "after the batch");
        itest_exec_tag(c, i ? "INSERT INTO tr_begin_batch (k, payload) VALUES ('b2', 'x')"
                            : "INSERT INTO tr_begin_batch (k, payload) VALUES ('b1', 'x')",
                       "INSERT 0 1");
        itest_exec_tag(c, "COMMIT", "COMMIT");
    }
    assert_int_equal(key_rows(t, "b1") + key_rows(t, "b2"), 2);

    assert_int_equal(PQenterPipelineMode(c), 1);
    send_piped_cmd(c, "SELECT 'x; BEGIN'");
    send_piped_insert(c, t, "dup");
    assert_int_equal(PQpipelineSync(c), 1);
    collect_piped(c, r, 2, itest_now_ms() + PIPE_TIMEOUT_MS);
    assert_int_equal(PQexitPipelineMode(c), 1);
    expect_piped(&r[0], PGRES_TUPLES_OK, NULL, "the SELECT");
    expect_piped(&r[1], PGRES_FATAL_ERROR, "23505", "the duplicate after it");
    assert_txn(c, PQTRANS_IDLE, "after the implicit transaction");
    assert_int_equal(all_rows(t), 3);
    assert_int_equal(itest_proxy_log_count(p, "25P01"), 0);
    itest_pass();
}

/* A block opened by a Query sent in one write with the batch of its first
 * INSERT, as Npgsql sends one: the batch runs in the block, its duplicate
 * rolled back alone. When a statement of that Query fails, the block is
 * failed, and the INSERT's Parse meets 25P02 there, as it does directly.
 * A Query that does not parse runs nothing, its BEGIN neither: the batch
 * is autocommitted, and its lone duplicate reported as skipped. */
static void test_tr_raw_begin_query_ahead(void **state)
{
    (void)state;
    const char *t = "tr_raw_begin";
    int fd = raw_session_for(t, false);
    const char *dup = "INSERT INTO tr_raw_begin (k, payload) VALUES ('dup', 'again')";
    enum { OPENS, FAILS, UNPARSED };
    static const char *const opening[] = {
        [OPENS] = "BEGIN; SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        [FAILS] = "BEGIN; SELECT 1/0",
        [UNPARSED] = "BEGIN; SELEC 1",
    };
    uint8_t buf[1024];

    for (int q = OPENS; q <= UNPARSED; q++) {
        size_t n = put_msg(buf, 0, sizeof buf, 'Q', opening[q], strlen(opening[q]) + 1);
        n = put_pbe(buf, n, sizeof buf, dup);
        n = put_msg(buf, n, sizeof buf, 'S', NULL, 0);
        assert_true(itest_raw_send(fd, buf, n));
        switch (q) {
        case OPENS:
            RAW_EXPECT(fd, { 'C', "BEGIN" }, { 'C', "SET" }, { 'Z', "T" },
                       { '1', NULL }, { '2', NULL }, { 'C', "INSERT 0 0" }, { 'Z', "T" });
            break;
        case FAILS:
            RAW_EXPECT(fd, { 'C', "BEGIN" }, { 'E', "22012" }, { 'Z', "E" },
                       { 'E', "25P02" }, { 'Z', "E" });
            break;
        default:
            RAW_EXPECT(fd, { 'E', "42601" }, { 'Z', "I" },
                       { '1', NULL }, { '2', NULL }, { 'C', "INSERT 0 0" }, { 'Z', "I" });
            continue;
        }
        raw_query(fd, "COMMIT");
        RAW_EXPECT(fd, { 'C', q == FAILS ? "ROLLBACK" : "COMMIT" }, { 'Z', "I" });
    }
    raw_expect_nothing(fd, 200);
    assert_int_equal(all_rows(t), 1);
    itest_pass();
}

/* A Query in the middle of the batch that opens a block, as pgjdbc with
 * autosave sends its SAVEPOINT behind the BEGIN and ahead of the block's
 * first statement: the INSERT after it runs in the block, its duplicate
 * rolled back alone. A BEGIN that fails (a Bind with a parameter its
 * statement lacks) has the server skip the Query and everything up to the
 * Sync, the proxy's savepoint with them; a Query that fails leaves the
 * block failed, and the INSERT's Parse meets 25P02; one that commits
 * leaves the INSERT autocommitted behind it, its duplicate standing as
 * PostgreSQL reports it. */
static void test_tr_raw_query_in_opening_batch(void **state)
{
    (void)state;
    const char *t = "tr_raw_autosave";
    int fd = raw_session_for(t, false);
    const char *dup = "INSERT INTO tr_raw_autosave (k, payload) VALUES ('dup', 'again')";
    enum { OPENS, BEGIN_FAILS, QUERY_FAILS, QUERY_COMMITS };
    static const char *const query[] = {
        [OPENS] = "SAVEPOINT autosave",
        [BEGIN_FAILS] = "SAVEPOINT autosave",
        [QUERY_FAILS] = "SAVEPOINT autosave; SELECT 1/0",
        [QUERY_COMMITS] = "SAVEPOINT autosave; COMMIT",
    };
    /* Portal, statement, no formats, one parameter "x", no result formats. */
    static const uint8_t bind_one[] = { 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 'x', 0, 0 };
    uint8_t buf[1024];

    for (int q = OPENS; q <= QUERY_COMMITS; q++) {
        size_t n = put_parse(buf, 0, sizeof buf, "", "BEGIN");
        n = q == BEGIN_FAILS ? put_msg(buf, n, sizeof buf, 'B', bind_one, sizeof bind_one)
                             : put_bind(buf, n, sizeof buf, "", "");
        n = put_execute(buf, n, sizeof buf, "");
        n = put_msg(buf, n, sizeof buf, 'Q', query[q], strlen(query[q]) + 1);
        n = put_pbe(buf, n, sizeof buf, dup);
        n = put_msg(buf, n, sizeof buf, 'S', NULL, 0);
        assert_true(itest_raw_send(fd, buf, n));
        switch (q) {
        case OPENS:
            RAW_EXPECT(fd, { '1', NULL }, { '2', NULL }, { 'C', "BEGIN" }, { 'C', "SAVEPOINT" },
                       { 'Z', "T" }, { '1', NULL }, { '2', NULL }, { 'C', "INSERT 0 0" },
                       { 'Z', "T" });
            break;
        case BEGIN_FAILS:
            RAW_EXPECT(fd, { '1', NULL }, { 'E', "08P01" }, { 'Z', "I" });
            continue;
        case QUERY_FAILS:
            RAW_EXPECT(fd, { '1', NULL }, { '2', NULL }, { 'C', "BEGIN" }, { 'C', "SAVEPOINT" },
                       { 'E', "22012" }, { 'Z', "E" }, { 'E', "25P02" }, { 'Z', "E" });
            break;
        default:
            RAW_EXPECT(fd, { '1', NULL }, { '2', NULL }, { 'C', "BEGIN" }, { 'C', "SAVEPOINT" },
                       { 'C', "COMMIT" }, { 'Z', "I" }, { '1', NULL }, { '2', NULL },
                       { 'E', "23505" }, { 'Z', "I" });
            continue;
        }
        raw_query(fd, "COMMIT");
        RAW_EXPECT(fd, { 'C', q == QUERY_FAILS ? "ROLLBACK" : "COMMIT" }, { 'Z', "I" });
    }
    raw_expect_nothing(fd, 200);
    assert_int_equal(all_rows(t), 1);
    itest_pass();
}

/* Inside a block, batches sent in one write, each behind one the server
 * has not answered yet: a batch (or a Query) that cannot end the block
 * leaves it open, or failed, and the duplicate behind it is guarded and
 * rolled back alone. Behind a COMMIT the block may be over: the duplicate
 * goes unguarded (a savepoint would fail there with 25P01), and is told
 * skipped once the server says that it ran alone outside a block. So it
 * does behind a COMMIT that the proxy knows less of: a portal bound in
 * an earlier batch, a statement it forgot at a DEALLOCATE the server
 * skipped. */
static void test_tr_raw_pipeline_in_block(void **state)
{
    (void)state;
    const char *t = "tr_raw_pipe_block";
    int fd = raw_session_for(t, true);
    const char *dup = "INSERT INTO tr_raw_pipe_block (k, payload) VALUES ('dup', 'again')";
    const char *fresh = "INSERT INTO tr_raw_pipe_block (k, payload) VALUES ('f1', 'new')";
    uint8_t buf[2048];
    size_t n;

    printf("BEGIN; [SELECT 1] sync [dup] sync [f1] sync, in one write\n");
    n = put_msg(buf, put_pbe(buf, 0, sizeof buf, "SELECT 1"), sizeof buf, 'S', NULL, 0);
    n = put_msg(buf, put_pbe(buf, n, sizeof buf, dup), sizeof buf, 'S', NULL, 0);
    n = put_msg(buf, put_pbe(buf, n, sizeof buf, fresh), sizeof buf, 'S', NULL, 0);
    assert_true(itest_raw_send(fd, buf, n));
    RAW_EXPECT(fd, { '1', NULL }, { '2', NULL }, { 'D', NULL }, { 'C', "SELECT 1" }, { 'Z', "T" },
               { '1', NULL }, { '2', NULL }, { 'C', "INSERT 0 0" }, { 'Z', "T" },
               { '1', NULL }, { '2', NULL }, { 'C', "INSERT 0 1" }, { 'Z', "T" });

    printf("a Query in the block, then [dup] sync, in one write\n");
    n = put_msg(buf, 0, sizeof buf, 'Q', "SELECT 2", sizeof "SELECT 2");
    n = put_msg(buf, put_pbe(buf, n, sizeof buf, dup), sizeof buf, 'S', NULL, 0);
    assert_true(itest_raw_send(fd, buf, n));
    RAW_EXPECT(fd, { 'T', NULL }, { 'D', NULL }, { 'C', "SELECT 1" }, { 'Z', "T" },
               { '1', NULL }, { '2', NULL }, { 'C', "INSERT 0 0" }, { 'Z', "T" });

    printf("[COMMIT] sync [dup] sync, in one write\n");
    n = put_msg(buf, put_pbe(buf, 0, sizeof buf, "COMMIT"), sizeof buf, 'S', NULL, 0);
    n = put_msg(buf, put_pbe(buf, n, sizeof buf, dup), sizeof buf, 'S', NULL, 0);
    assert_true(itest_raw_send(fd, buf, n));
    RAW_EXPECT(fd, { '1', NULL }, { '2', NULL }, { 'C', "COMMIT" }, { 'Z', "I" },
               { '1', NULL }, { '2', NULL }, { 'C', "INSERT 0 0" }, { 'Z', "I" });

    printf("BEGIN; [portal pc: COMMIT] sync [SELECT 1 bound, pc run] sync [dup] sync\n");
    raw_query(fd, "BEGIN");
    RAW_EXPECT(fd, { 'C', "BEGIN" }, { 'Z', "T" });
    n = put_bind(buf, put_parse(buf, 0, sizeof buf, "sc", "COMMIT"), sizeof buf, "pc", "sc");
    n = put_msg(buf, n, sizeof buf, 'S', NULL, 0);
    n = put_bind(buf, put_parse(buf, n, sizeof buf, "", "SELECT 1"), sizeof buf, "", "");
    n = put_msg(buf, put_execute(buf, n, sizeof buf, "pc"), sizeof buf, 'S', NULL, 0);
    n = put_msg(buf, put_pbe(buf, n, sizeof buf, dup), sizeof buf, 'S', NULL, 0);
    assert_true(itest_raw_send(fd, buf, n));
    RAW_EXPECT(fd, { '1', NULL }, { '2', NULL }, { 'Z', "T" },
               { '1', NULL }, { '2', NULL }, { 'C', "COMMIT" }, { 'Z', "I" },
               { '1', NULL }, { '2', NULL }, { 'C', "INSERT 0 0" }, { 'Z', "I" });

    printf("BEGIN; DEALLOCATE of a COMMIT skipped; BEGIN; [COMMIT bound, run] sync [dup] sync\n");
    n = put_msg(buf, put_parse(buf, 0, sizeof buf, "sc2", "COMMIT"), sizeof buf, 'S', NULL, 0);
    assert_true(itest_raw_send(fd, buf, n));
    RAW_EXPECT(fd, { '1', NULL }, { 'Z', "I" });
    raw_query(fd, "BEGIN");
    RAW_EXPECT(fd, { 'C', "BEGIN" }, { 'Z', "T" });
    raw_query(fd, "SELECT 1/0; DEALLOCATE sc2");
    RAW_EXPECT(fd, { 'E', "22012" }, { 'Z', "E" });
    raw_query(fd, "ROLLBACK; BEGIN");
    RAW_EXPECT(fd, { 'C', "ROLLBACK" }, { 'C', "BEGIN" }, { 'Z', "T" });
    n = put_execute(buf, put_bind(buf, 0, sizeof buf, "", "sc2"), sizeof buf, "");
    n = put_msg(buf, n, sizeof buf, 'S', NULL, 0);
    n = put_msg(buf, put_pbe(buf, n, sizeof buf, dup), sizeof buf, 'S', NULL, 0);
    assert_true(itest_raw_send(fd, buf, n));
    RAW_EXPECT(fd, { '2', NULL }, { 'C', "COMMIT" }, { 'Z', "I" },
               { '1', NULL }, { '2', NULL }, { 'C', "INSERT 0 0" }, { 'Z', "I" });
    raw_expect_nothing(fd, 200);
    assert_int_equal(key_rows(t, "f1"), 1);
    assert_int_equal(all_rows(t), 2);
    itest_pass();
}

/* An Execute whose portal name has no end, behind a Bind in a block's
 * batch: the server refuses it (08P01) and skips to the Sync, and the
 * session goes on, its block failed. */
static void test_tr_raw_execute_without_name(void **state)
{
    (void)state;
    const char *t = "tr_raw_no_name";
    int fd = raw_session_for(t, true);
    uint8_t buf[512];

    size_t n = put_parse(buf, 0, sizeof buf, "", "SELECT 1");
    n = put_bind(buf, n, sizeof buf, "", "");
    n = put_msg(buf, n, sizeof buf, 'E', "x", 1);
    n = put_msg(buf, n, sizeof buf, 'S', NULL, 0);
    assert_true(itest_raw_send(fd, buf, n));
    RAW_EXPECT(fd, { '1', NULL }, { '2', NULL }, { 'E', "08P01" }, { 'Z', "E" });
    raw_query(fd, "ROLLBACK");
    RAW_EXPECT(fd, { 'C', "ROLLBACK" }, { 'Z', "I" });
    itest_pass();
}

/* A raw session through p, logged in. */
static int raw_login_to(const struct itest_proxy *p)
{
    int fd = itest_raw_connect(p->port);

    assert_true(fd >= 0);
    itest_raw_login(fd, itest_pg_user(), "itest_tr_malformed");
    return fd;
}

enum fenced { FENCED, CLOSED_SAYING_WHY, CLOSED_SILENTLY };

/* Reads up to the row of fence and its ReadyForQuery, or to the end of a
 * session closed on the way (the proxy or the server refused something
 * outright), saying whether an ErrorResponse came before that end. */
static enum fenced read_to_fence(int fd, const char *fence)
{
    size_t n = strlen(fence);
    bool fenced = false, said = false;

    for (;;) {
        struct itest_msg m;
        enum itest_read rd = itest_raw_read_msg(fd, &m, 10000);
        if (rd == ITEST_READ_EOF)
            return said ? CLOSED_SAYING_WHY : CLOSED_SILENTLY;
        if (rd != ITEST_READ_OK)
            fail_msg("no answer up to \"%s\" (read result %d)", fence, (int)rd);
        bool row = m.type == 'D' && m.len == 2 + 4 + n && memcmp(m.body + 6, fence, n) == 0;
        char type = m.type;
        itest_msg_free(&m);
        said |= type == 'E';
        if (row)
            fenced = true;
        else if (fenced && type == 'Z')
            return FENCED;
    }
}

/* Every frontend message the proxy reads, cut short at each of its bytes
 * (names and strings without their end, counts without what they count)
 * and with a byte too many, sent through p where a batch begins, behind a
 * Parse and Bind of an INSERT into registered table t, both inside a
 * block, and in a COPY into t: the server refuses each (or ignores it),
 * the proxy passes it on or closes that session with 08P01, and it goes
 * on serving. */
static void send_malformed(struct itest_proxy *p, const char *t)
{
    static const uint8_t bind[] = { 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 'k', '1',
                                    0, 0, 0, 1, 'x', 0, 1, 0, 0 };
    static const uint8_t funcall[] = { 0, 0, 0, 177, 0, 1, 0, 0, 0, 2, 0, 0, 0,
                                       1,   '1', 0, 0, 0, 1, '2', 0, 0 };
    static const uint8_t text_types[] = { 0, 2, 0, 0, 0, 25, 0, 0, 0, 25 };
    char copy[96];
    snprintf(copy, sizeof copy, "COPY %s (k, payload) FROM STDIN", t);
    uint8_t parse[160];
    int parse_len = snprintf((char *)parse + 1, sizeof parse - 1 - sizeof text_types,
                             "INSERT INTO %s (k, payload) VALUES ($1, $2)", t);
    parse[0] = 0;
    memcpy(parse + 2 + parse_len, text_types, sizeof text_types);
    parse_len += 2 + (int)sizeof text_types;
    const struct {
        char type;
        const void *body;
        size_t len;
    } messages[] = {
        { 'P', parse, (size_t)parse_len }, { 'B', bind, sizeof bind }, { 'D', "P", 2 },
        { 'C', "S", 2 },                   { 'E', "\0\0\0\0", 5 },    { 'Q', "SELECT 1", 9 },
        { 'F', funcall, sizeof funcall },  { 'H', "", 0 },            { 'S', "", 0 },
        { 'd', "row\n", 4 },               { 'c', "", 0 },            { 'f', "why", 4 },
    };
    int fd = raw_login_to(p), cases = 0, closed = 0;
    uint8_t body[192], buf[1024];

    for (size_t i = 0; i < sizeof messages / sizeof messages[0]; i++) {
        for (size_t cut = 0; cut <= messages[i].len; cut++) {
            /* A cut at the whole length is the message with a byte too many. */
            size_t len = cut < messages[i].len ? cut : cut + 1;
            memcpy(body, messages[i].body, messages[i].len);
            body[messages[i].len] = 'x';
            for (int context = 0; context < 5; context++) {
                char fence[32], fence_sql[48];
                size_t n = 0;
                if (context == 4)
                    n = put_msg(buf, n, sizeof buf, 'Q', copy, strlen(copy) + 1);
                else if (context & 1)
                    n = put_msg(buf, n, sizeof buf, 'Q', "BEGIN", sizeof "BEGIN");
                if (context == 2 || context == 3) {
                    n = put_msg(buf, n, sizeof buf, 'P', parse, (size_t)parse_len);
                    n = put_msg(buf, n, sizeof buf, 'B', bind, sizeof bind);
                }
                n = put_msg(buf, n, sizeof buf, messages[i].type, body, len);
                n = put_msg(buf, n, sizeof buf, 'S', NULL, 0);
                n = put_msg(buf, n, sizeof buf, 'Q', "ROLLBACK", sizeof "ROLLBACK");
                snprintf(fence, sizeof fence, "end %d", ++cases);
                snprintf(fence_sql, sizeof fence_sql, "SELECT '%s'", fence);
                n = put_msg(buf, n, sizeof buf, 'Q', fence_sql, strlen(fence_sql) + 1);
                enum fenced end = itest_raw_send(fd, buf, n) ? read_to_fence(fd, fence)
                                                             : CLOSED_SILENTLY;
                if (end == FENCED)
                    continue;
                if (!itest_proxy_alive(p))
                    fail_msg("the proxy died on '%c' of %zu bytes, context %d",
                             messages[i].type, len, context);
                if (end == CLOSED_SILENTLY)
                    fail_msg("a session ended without a word on '%c' of %zu bytes, context %d",
                             messages[i].type, len, context);
                closed++;
                itest_raw_close(fd);
                fd = raw_login_to(p);
            }
        }
    }
    printf("%s: %d malformed messages, %d of them ended their session\n", t, cases, closed);
    itest_raw_close(fd);
    assert_int_equal(key_rows(t, "k1"), 0);
}

/* Through translation (a DEFERRABLE unique key) and through the rewrite. */
static void test_tr_raw_malformed_messages(void **state)
{
    (void)state;
    send_malformed(start_with_dup("tr_raw_malformed"), "tr_raw_malformed");
    itest_server_exec("DROP TABLE IF EXISTS tr_raw_malformed_rw; "
                      "CREATE TABLE tr_raw_malformed_rw (k text UNIQUE, payload text)");
    send_malformed(start_proxy_for("tr_raw_malformed_rw"), "tr_raw_malformed_rw");
    itest_pass();
}

/* ---- main ------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        ITEST(test_tr_autocommit),
        ITEST(test_tr_txn_simple),
        ITEST(test_tr_txn_extended),
        ITEST(test_tr_txn_prepared),
        ITEST(test_tr_txn_unnamed_kept),
        ITEST(test_tr_returning),
        ITEST(test_tr_prepared_words),
        ITEST(test_tr_sql_prepare_others),
        ITEST(test_tr_multi_statement),
        ITEST(test_tr_pipeline),
        ITEST(test_tr_pipeline_in_txn),
        ITEST(test_tr_pipeline_txn_dup),
        ITEST(test_tr_pipeline_txn_error),
        ITEST(test_tr_pipeline_flush),
        ITEST(test_tr_pgbench),
        ITEST(test_tr_partitioned),
        ITEST(test_tr_unregistered),
        ITEST(test_tr_not_insert),
        ITEST(test_tr_disabled),
        ITEST(test_tr_trigger),
        ITEST(test_tr_trigger_same_table),
        ITEST(test_tr_second_constraint),
        ITEST(test_tr_failed_block_state),
        ITEST(test_tr_concurrent_txn),
        ITEST(test_tr_cancel),
        ITEST(test_tr_notices),
        ITEST(test_tr_session_usable),
        ITEST(test_tr_many_in_txn),
        ITEST(test_tr_counters),
        ITEST(test_tr_deferred_commit),
        ITEST(test_tr_raw_flush),
        ITEST(test_tr_raw_extended),
        ITEST(test_tr_raw_query_in_skipped_batch),
        ITEST(test_tr_raw_copy_in_guarded_batch),
        ITEST(test_tr_stale_names),
        ITEST(test_tr_guarded_batch_fails_early),
        ITEST(test_tr_batch_in_txn),
        ITEST(test_tr_begin_in_batch),
        ITEST(test_tr_raw_begin_query_ahead),
        ITEST(test_tr_raw_query_in_opening_batch),
        ITEST(test_tr_raw_pipeline_in_block),
        ITEST(test_tr_raw_execute_without_name),
        ITEST(test_tr_raw_malformed_messages),
    };
    return itest_main(argc, argv, "idemproxy error translation", tests,
                      sizeof tests / sizeof tests[0]);
}
