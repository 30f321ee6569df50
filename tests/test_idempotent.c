/*
 * Integration tests of the rewrite: INSERTs into registered tables become
 * their ON CONFLICT form, through a real idemproxy in front of a real
 * PostgreSQL 15.
 *
 * Run by tests/integration.sh after test_integration (same environment,
 * same scratch cluster). Every test starts its own proxy with the [table]
 * sections it needs, creates its own tables directly on the server (unique
 * names per test), and checks afterwards, again directly on the server, that
 * what the client was told is what the table holds. The teardown
 * (itest_teardown) stops the proxies and fails the test if one crashed or a
 * sanitizer complained.
 *
 * Run one test: test_idempotent test_idem_reload   (a cmocka filter pattern,
 * also taken from IDEM_TEST_FILTER; every test here is named test_idem_*).
 * `test_idempotent --free-port` prints a free TCP port, like test_integration.
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
#include <unistd.h>

#include <libpq-fe.h>
#include <libpq/libpq-fs.h>

#include "itest.h"

/* ---- small helpers local to the tests --------------------------------- */

/* Creates the usual idempotency-key table directly on the server. */
static void create_key_table(const char *table, const char *key_type)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "DROP TABLE IF EXISTS %s; "
             "CREATE TABLE %s (id bigserial PRIMARY KEY, "
             "idempotency_key %s NOT NULL UNIQUE, payload text)",
             table, table, key_type);
    itest_server_exec(sql);
}

/* 1-based position of needle in text, counted in UTF-8 characters, as
 * PostgreSQL reports a statement position to a UTF8 client. */
static int utf8_position(const char *text, const char *needle)
{
    const char *at = strstr(text, needle);
    assert_non_null(at);
    int chars = 0;
    for (const char *s = text; s < at; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            chars++;
    return chars + 1;
}

/* Prepares "SELECT $1::int" as c's unnamed statement, as libpq's
 * PQprepare(conn, "", ...) does: it must outlive the proxy's own catalog
 * queries between the client's requests. */
static void prepare_unnamed(PGconn *c)
{
    PGresult *r = itest_prepare(c, "", "SELECT $1::int", 1);
    itest_assert_result_ok(r, "PQprepare of the unnamed statement");
    PQclear(r);
}

static void expect_tag_of(PGconn *c, const char *statement, const char *const *vals,
                          const char *tag, const char *what)
{
    PGresult *r = itest_exec_prepared(c, statement, 1, vals);
    itest_assert_tag(r, tag, what);
    PQclear(r);
}

#define expect_prepared_tag(c, vals, tag, what) expect_tag_of((c), "ins", (vals), (tag), (what))
#define expect_unnamed_tag(c, vals, tag, what) expect_tag_of((c), "", (vals), (tag), (what))

/* Prepares an INSERT into idem_dropped as statement name on c and runs it
 * twice with key: the row, then the duplicate skipped by the rewrite. */
static void prepare_dropped_insert(PGconn *c, const char *name, const char *const *key)
{
    PGresult *r = itest_prepare(c, name, "INSERT INTO idem_dropped (idempotency_key, payload) "
                                         "VALUES ($1, 'p')", 1);
    itest_assert_result_ok(r, "PQprepare of the INSERT");
    PQclear(r);
    expect_tag_of(c, name, key, "INSERT 0 1", "the prepared INSERT before the change");
    expect_tag_of(c, name, key, "INSERT 0 0", "its duplicate before the change");
}

static void assert_unnamed_kept(PGconn *c, const char *after)
{
    const char *v[1] = { "7" };
    PGresult *r = itest_exec_prepared(c, "", 1, v);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("the unnamed statement after %s: %s", after, PQresultErrorMessage(r));
    assert_string_equal(PQgetvalue(r, 0, 0), "7");
    PQclear(r);
}

/* ---- 1. concurrency, per protocol mode --------------------------------- */

#define LOAD_CLIENTS 8
#define LOAD_INSERTS 2000 /* per client */
#define LOAD_KEYS 200
#define LOAD_TIMEOUT_MS 50000 /* per mode */

enum proto_mode { PROTO_SIMPLE, PROTO_EXTENDED, PROTO_PREPARED };

static const char *const proto_names[] = { "simple", "extended", "prepared" };

struct load_client {
    PGconn *conn;
    int id;
    unsigned seed;
    int sent;       /* INSERTs sent */
    bool in_flight; /* the last one's results are not all in */
    bool done;
    int inserted;   /* "INSERT 0 1" */
    int skipped;    /* "INSERT 0 0" */
    int errors;
    char first_error[512];
};

static void load_error(struct load_client *lc, const char *what, const char *msg)
{
    if (lc->errors++ == 0)
        snprintf(lc->first_error, sizeof lc->first_error, "client %d: %s: %s", lc->id, what, msg);
}

/* Sends the client's next INSERT of a random key from the set. */
static void load_send(struct load_client *lc, enum proto_mode mode, const char *table,
                      bool key_sent[LOAD_KEYS])
{
    int k = (int)(rand_r(&lc->seed) % LOAD_KEYS);
    char key[16], payload[32], sql[256];
    snprintf(key, sizeof key, "key-%03d", k);
    snprintf(payload, sizeof payload, "c%d-%d", lc->id, lc->sent);
    const char *vals[2] = { key, payload };
    key_sent[k] = true;
    int ok = 0;
    switch (mode) {
    case PROTO_SIMPLE:
        snprintf(sql, sizeof sql,
                 "INSERT INTO %s (idempotency_key, payload) VALUES ('%s', '%s')", table, key,
                 payload);
        ok = PQsendQuery(lc->conn, sql);
        break;
    case PROTO_EXTENDED:
        snprintf(sql, sizeof sql, "INSERT INTO %s (idempotency_key, payload) VALUES ($1, $2)",
                 table);
        ok = PQsendQueryParams(lc->conn, sql, 2, NULL, vals, NULL, NULL, 0);
        break;
    case PROTO_PREPARED:
        ok = PQsendQueryPrepared(lc->conn, "load_insert", 2, vals, NULL, NULL, 0);
        break;
    }
    lc->sent++;
    if (ok) {
        lc->in_flight = true;
    } else {
        load_error(lc, "send", PQerrorMessage(lc->conn));
        lc->done = true;
    }
}

/* Takes every result that is complete; sends the next INSERT when the last
 * one is finished. */
static void load_collect(struct load_client *lc, enum proto_mode mode, const char *table,
                         bool key_sent[LOAD_KEYS])
{
    if (!PQconsumeInput(lc->conn)) {
        load_error(lc, "connection", PQerrorMessage(lc->conn));
        lc->done = true;
        return;
    }
    while (lc->in_flight && !PQisBusy(lc->conn)) {
        PGresult *r = PQgetResult(lc->conn);
        if (r == NULL) {
            lc->in_flight = false;
            if (lc->sent < LOAD_INSERTS)
                load_send(lc, mode, table, key_sent);
            else
                lc->done = true;
            return;
        }
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            char msg[400];
            snprintf(msg, sizeof msg, "%s %s", PQresStatus(PQresultStatus(r)),
                     PQresultErrorMessage(r));
            load_error(lc, "INSERT", msg);
        } else if (strcmp(PQcmdStatus(r), "INSERT 0 1") == 0) {
            lc->inserted++;
        } else if (strcmp(PQcmdStatus(r), "INSERT 0 0") == 0) {
            lc->skipped++;
        } else {
            load_error(lc, "unexpected tag", PQcmdStatus(r));
        }
        PQclear(r);
    }
}

static void run_load(struct itest_proxy *p, enum proto_mode mode, const char *table)
{
    struct load_client clients[LOAD_CLIENTS];
    bool key_sent[LOAD_KEYS] = { false };
    char sql[256];

    memset(clients, 0, sizeof clients);
    for (int i = 0; i < LOAD_CLIENTS; i++) {
        struct load_client *lc = &clients[i];
        lc->id = i;
        lc->seed = 1000u * (unsigned)mode + (unsigned)i + 1;
        lc->conn = itest_connect_ok(p->port, "application_name=itest_load");
        if (mode == PROTO_PREPARED) {
            snprintf(sql, sizeof sql,
                     "INSERT INTO %s (idempotency_key, payload) VALUES ($1, $2)", table);
            PGresult *r = itest_prepare(lc->conn, "load_insert", sql, 2);
            itest_assert_result_ok(r, "PQprepare load_insert");
            PQclear(r);
        }
        assert_int_equal(PQsetnonblocking(lc->conn, 1), 0);
    }

    int64_t t0 = itest_now_ms(), deadline = t0 + LOAD_TIMEOUT_MS;
    for (int i = 0; i < LOAD_CLIENTS; i++)
        load_send(&clients[i], mode, table, key_sent);
    for (;;) {
        struct pollfd pfds[LOAD_CLIENTS];
        int active = 0;
        for (int i = 0; i < LOAD_CLIENTS; i++) {
            struct load_client *lc = &clients[i];
            pfds[i] = (struct pollfd){ -1, 0, 0 };
            if (lc->done)
                continue;
            active++;
            int flush = PQflush(lc->conn);
            if (flush < 0) {
                load_error(lc, "flush", PQerrorMessage(lc->conn));
                lc->done = true;
                continue;
            }
            pfds[i].fd = PQsocket(lc->conn);
            pfds[i].events = (short)(POLLIN | (flush == 1 ? POLLOUT : 0));
        }
        if (active == 0)
            break;
        if (itest_now_ms() > deadline) {
            int sent = 0;
            for (int i = 0; i < LOAD_CLIENTS; i++)
                sent += clients[i].sent;
            fail_msg("%s: %d of %d INSERTs sent after %d ms: hung", proto_names[mode], sent,
                     LOAD_CLIENTS * LOAD_INSERTS, LOAD_TIMEOUT_MS);
        }
        poll(pfds, LOAD_CLIENTS, 100);
        for (int i = 0; i < LOAD_CLIENTS; i++)
            if (!clients[i].done && pfds[i].revents != 0)
                load_collect(&clients[i], mode, table, key_sent);
    }

    int inserted = 0, skipped = 0, errors = 0, keys = 0;
    for (int i = 0; i < LOAD_CLIENTS; i++) {
        inserted += clients[i].inserted;
        skipped += clients[i].skipped;
        errors += clients[i].errors;
        if (clients[i].errors)
            printf("%s: %s\n", proto_names[mode], clients[i].first_error);
        itest_finish(clients[i].conn);
    }
    for (int k = 0; k < LOAD_KEYS; k++)
        keys += key_sent[k];
    long long rows = itest_server_ll("SELECT count(*) FROM %s", table);
    long long distinct = itest_server_ll("SELECT count(DISTINCT idempotency_key) FROM %s", table);
    printf("%s: %d INSERTs in %lld ms: %d inserted, %d skipped, %d errors; %d keys sent, "
           "%lld rows, %lld distinct\n",
           proto_names[mode], LOAD_CLIENTS * LOAD_INSERTS, (long long)(itest_now_ms() - t0),
           inserted, skipped, errors, keys, rows, distinct);
    assert_int_equal(errors, 0);
    assert_int_equal(inserted + skipped, LOAD_CLIENTS * LOAD_INSERTS);
    assert_true(keys <= LOAD_KEYS);
    assert_int_equal(rows, keys);
    assert_int_equal(distinct, keys);
    /* Each key was reported inserted exactly once. */
    assert_int_equal(inserted, keys);
}

static void test_idem_concurrency(void **state)
{
    (void)state;
    static const char *const tables[] = { "idem_load_simple", "idem_load_extended",
                                          "idem_load_prepared" };
    for (int m = 0; m < 3; m++)
        create_key_table(tables[m], "text");
    struct itest_proxy *p = itest_proxy_start_with("warning",
                                                   "[table public.idem_load_simple]\n"
                                                   "conflict = idempotency_key\n"
                                                   "[table public.idem_load_extended]\n"
                                                   "conflict = idempotency_key\n"
                                                   "[table public.idem_load_prepared]\n"
                                                   "conflict = idempotency_key\n");
    for (int m = 0; m < 3; m++)
        run_load(p, (enum proto_mode)m, tables[m]);
    assert_true(itest_proxy_alive(p));
    itest_pass();
}

/* ---- 2. INSERT ... RETURNING of an existing key ------------------------ */

static void test_idem_returning(void **state)
{
    (void)state;
    create_key_table("idem_ret", "text");
    long long id1 = itest_server_ll("INSERT INTO idem_ret (idempotency_key, payload) "
                                    "VALUES ('k1', 'p1') RETURNING id");
    struct itest_proxy *p = itest_proxy_start_table(NULL, "idem_ret", "idempotency_key", "");
    PGconn *c = itest_connect_ok(p->port, NULL);

    /* The existing key, simple protocol: its id, "INSERT 0 1". */
    PGresult *r = itest_exec(c, "INSERT INTO idem_ret (idempotency_key, payload) "
                                "VALUES ('k1', 'again') RETURNING id");
    itest_assert_tag(r, "INSERT 0 1", "RETURNING id of k1 (simple)");
    assert_int_equal(PQntuples(r), 1);
    assert_int_equal(strtoll(PQgetvalue(r, 0, 0), NULL, 10), id1);
    PQclear(r);

    /* The existing key, extended protocol. */
    const char *sql = "INSERT INTO idem_ret (idempotency_key, payload) VALUES ($1, $2) "
                      "RETURNING id";
    const char *k1[2] = { "k1", "again2" };
    r = itest_exec_params(c, sql, 2, k1);
    itest_assert_tag(r, "INSERT 0 1", "RETURNING id of k1 (extended)");
    assert_int_equal(PQntuples(r), 1);
    assert_int_equal(strtoll(PQgetvalue(r, 0, 0), NULL, 10), id1);
    PQclear(r);

    /* New keys get new ids, both ways. */
    r = itest_exec(c, "INSERT INTO idem_ret (idempotency_key, payload) "
                      "VALUES ('k2', 'p2') RETURNING id");
    itest_assert_tag(r, "INSERT 0 1", "RETURNING id of new k2 (simple)");
    assert_int_equal(PQntuples(r), 1);
    long long id2 = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    const char *k3[2] = { "k3", "p3" };
    r = itest_exec_params(c, sql, 2, k3);
    itest_assert_tag(r, "INSERT 0 1", "RETURNING id of new k3 (extended)");
    assert_int_equal(PQntuples(r), 1);
    long long id3 = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    assert_true(id2 != id1 && id3 != id1 && id3 != id2);

    /* And a second RETURNING of k2 gives k2's id. */
    const char *k2[2] = { "k2", "p2 again" };
    r = itest_exec_params(c, sql, 2, k2);
    itest_assert_tag(r, "INSERT 0 1", "RETURNING id of k2 again");
    assert_int_equal(strtoll(PQgetvalue(r, 0, 0), NULL, 10), id2);
    PQclear(r);

    /* The table holds what the client was told, payloads untouched. */
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_ret"), 3);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_ret WHERE idempotency_key = 'k1' "
                                     "AND id = %lld AND payload = 'p1'", id1), 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_ret WHERE idempotency_key = 'k2' "
                                     "AND id = %lld AND payload = 'p2'", id2), 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_ret WHERE idempotency_key = 'k3' "
                                     "AND id = %lld AND payload = 'p3'", id3), 1);
    itest_pass();
}

/* ---- 3. multi-row INSERT with one duplicate ---------------------------- */

static void test_idem_multirow(void **state)
{
    (void)state;
    create_key_table("idem_multi", "text");
    itest_server_exec("INSERT INTO idem_multi (idempotency_key, payload) VALUES ('m2', 'old')");
    struct itest_proxy *p = itest_proxy_start_table(NULL, "idem_multi", "idempotency_key", "");
    PGconn *c = itest_connect_ok(p->port, NULL);

    itest_exec_tag(c, "INSERT INTO idem_multi (idempotency_key, payload) "
                      "VALUES ('m1', 'a'), ('m2', 'b'), ('m3', 'c')", "INSERT 0 2");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_multi"), 3);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_multi WHERE "
                                     "(idempotency_key, payload) IN "
                                     "(('m1', 'a'), ('m2', 'old'), ('m3', 'c'))"), 3);
    itest_pass();
}

/* ---- 4. a DEFERRABLE unique constraint is left alone ------------------- */

static void test_idem_deferrable(void **state)
{
    (void)state;
    itest_server_exec("DROP TABLE IF EXISTS idem_defer; "
                      "CREATE TABLE idem_defer (id bigserial PRIMARY KEY, k text NOT NULL, "
                      "payload text, UNIQUE (k) DEFERRABLE INITIALLY IMMEDIATE)");
    /* The rewrite leaves it alone; translation is off to see that. */
    struct itest_proxy *p = itest_proxy_start_table(NULL, "idem_defer", "k",
                                                    "translate_errors = off\n");
    PGconn *c = itest_connect_ok(p->port, NULL);

    itest_exec_tag(c, "INSERT INTO idem_defer (k, payload) VALUES ('d1', 'first')", "INSERT 0 1");
    /* Never 55000 (ON CONFLICT on a deferrable arbiter) or 42P10. */
    itest_exec_sqlstate(c, "INSERT INTO idem_defer (k, payload) VALUES ('d1', 'again')", "23505");
    itest_exec_sqlstate(c, "INSERT INTO idem_defer (k, payload) VALUES ('d1', 'again') "
                           "RETURNING id", "23505");
    const char *vals[1] = { "d1" };
    PGresult *r = itest_exec_params(c, "INSERT INTO idem_defer (k, payload) VALUES ($1, 'x')", 1,
                                    vals);
    itest_assert_sqlstate(r, "23505", "duplicate into idem_defer (extended)");
    PQclear(r);

    itest_assert_log_line(p, "warning", "public.idem_defer", "DEFERRABLE");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_defer"), 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_defer WHERE payload = 'first'"), 1);
    itest_pass();
}

/* ---- 5. conflict columns that match no unique index -------------------- */

static void test_idem_no_unique_index(void **state)
{
    (void)state;
    create_key_table("idem_nouniq", "text");
    struct itest_proxy *p = itest_proxy_start_table(NULL, "idem_nouniq", "payload",
                                                    "translate_errors = off\n");
    PGconn *c = itest_connect_ok(p->port, NULL);

    itest_exec_tag(c, "INSERT INTO idem_nouniq (idempotency_key, payload) VALUES ('u1', 'same')",
                   "INSERT 0 1");
    /* Duplicate payload: no unique index, so a second row, as without the proxy. */
    itest_exec_tag(c, "INSERT INTO idem_nouniq (idempotency_key, payload) VALUES ('u2', 'same')",
                   "INSERT 0 1");
    /* Duplicate real key: 23505, never 42P10. */
    itest_exec_sqlstate(c, "INSERT INTO idem_nouniq (idempotency_key, payload) VALUES ('u1', 'x')",
                        "23505");
    itest_exec_sqlstate(c, "INSERT INTO idem_nouniq (idempotency_key, payload) "
                           "VALUES ('u1', 'same') RETURNING id", "23505");

    itest_assert_log_line(p, "warning", "public.idem_nouniq", NULL);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_nouniq"), 2);
    itest_pass();
}

/* ---- 6. shadow mode ---------------------------------------------------- */

static void test_idem_shadow(void **state)
{
    (void)state;
    /* Not "shadow" in the name: the log check below must find the mode. */
    create_key_table("idem_observed", "text");
    itest_server_exec("INSERT INTO idem_observed (idempotency_key, payload) VALUES ('s1', 'orig')");
    struct itest_proxy *p = itest_proxy_start_table("info", "idem_observed", "idempotency_key",
                                                    "mode = shadow\n");
    PGconn *c = itest_connect_ok(p->port, NULL);

    itest_exec_sqlstate(c, "INSERT INTO idem_observed (idempotency_key, payload) "
                           "VALUES ('s1', 'dup')", "23505");
    /* The line about this statement says shadow. */
    itest_assert_log_line(p, "shadow", "public.idem_observed", "'s1', 'dup'");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_observed"), 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_observed WHERE payload = 'orig'"),
                     1);
    itest_pass();
}

/* ---- 7. pgbench with a custom script ----------------------------------- */

#define BENCH_TRANSACTIONS 300 /* per client */

static void test_idem_pgbench(void **state)
{
    (void)state;
    create_key_table("idem_bench", "bigint");
    const char *script = itest_write_file(
        "idem_bench.sql", "\\set k random(1, 500)\n"
                          "INSERT INTO idem_bench (idempotency_key, payload) VALUES (:k, 'x');\n");
    struct itest_proxy *p = itest_proxy_start_table("warning", "idem_bench", "idempotency_key", "");

    static const char *const modes[] = { "simple", "extended", "prepared" };
    for (int m = 0; m < 3; m++)
        itest_pgbench_ok(script, p->port, modes[m], BENCH_TRANSACTIONS, 1);
    long long rows = itest_server_ll("SELECT count(*) FROM idem_bench");
    assert_int_equal(itest_server_ll("SELECT count(DISTINCT idempotency_key) FROM idem_bench"), rows);
    assert_true(rows > 0 && rows <= 500);

    /* The same script directly on the server hits duplicates: it must fail,
     * or this test could not. */
    itest_pgbench_fails_directly(script, "simple", BENCH_TRANSACTIONS);
    assert_int_equal(itest_server_ll("SELECT count(DISTINCT idempotency_key) FROM idem_bench"),
                     itest_server_ll("SELECT count(*) FROM idem_bench"));
    itest_pass();
}

/* ---- 8. error positions in the client's text --------------------------- */

static void check_position(PGresult *r, const char *sql, const char *needle, const char *what)
{
    itest_assert_sqlstate(r, "42703", what);
    const char *pos = PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION);
    if (pos == NULL)
        fail_msg("%s: no statement position", what);
    int want = utf8_position(sql, needle);
    if (atoi(pos) != want)
        fail_msg("%s: position %s, want %d (the \"%s\" of: %s)", what, pos, want, needle, sql);
}

static void test_idem_error_position(void **state)
{
    (void)state;
    create_key_table("idem_pos", "text");
    struct itest_proxy *p = itest_proxy_start_table("debug", "idem_pos", "idempotency_key", "");
    PGconn *c = itest_connect_ok(p->port, "client_encoding=UTF8");
    PGconn *direct = itest_connect_direct();

    /* "é€" is 2 characters in 5 bytes: a byte count would be 3 too far. */
    const char *after = "INSERT INTO idem_pos (idempotency_key, payload) "
                        "VALUES ('\xc3\xa9\xe2\x82\xac', 'b') RETURNING id, nosuchcol";
    const char *before = "INSERT INTO idem_pos (idempotency_key, nosuchcol) "
                         "VALUES ('\xc3\xa9\xe2\x82\xac', 'b') RETURNING id";

    /* The computation agrees with the server on the original text. */
    PGresult *r = itest_exec(direct, after);
    check_position(r, after, "nosuchcol", "directly");
    PQclear(r);

    /* Simple protocol, after the splice point and before it. */
    r = itest_exec(c, after);
    check_position(r, after, "nosuchcol", "Query, after the clause");
    PQclear(r);
    r = itest_exec(c, before);
    check_position(r, before, "nosuchcol", "Query, before the clause");
    PQclear(r);

    /* Extended protocol: the error comes from Parse. */
    r = itest_prepare(c, "pos_after", after, 0);
    check_position(r, after, "nosuchcol", "Parse, after the clause");
    PQclear(r);
    r = itest_prepare(c, "pos_before", before, 0);
    check_position(r, before, "nosuchcol", "Parse, before the clause");
    PQclear(r);

    /* The same statement with other values has the same shape: its
     * decision is the first one's, the clause's offset carried across
     * constants of other lengths, and it is not decided (nor logged) anew. */
    const char *longer = "INSERT INTO idem_pos (idempotency_key, payload) "
                         "VALUES ('\xc3\xa9\xe2\x82\xac\xc3\xa9-longer', 'bbbb') RETURNING id, nosuchcol";
    r = itest_exec(c, longer);
    check_position(r, longer, "nosuchcol", "Query of the same shape, after the clause");
    PQclear(r);
    assert_false(itest_proxy_log_line_has(p, "rewritten", "-longer", NULL));

    /* The statement really was rewritten (the mapping was exercised). */
    itest_assert_log_line(p, "rewritten", "public.idem_pos", "nosuchcol");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_pos"), 0);
    /* The session goes on; a duplicate of the same shape is rewritten too. */
    itest_exec_tag(c, "INSERT INTO idem_pos (idempotency_key, payload) VALUES ('\xc3\xa9', 'b')",
                   "INSERT 0 1");
    itest_exec_tag(c, "INSERT INTO idem_pos (idempotency_key, payload) VALUES ('\xc3\xa9', 'other')",
                   "INSERT 0 0");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_pos"), 1);
    itest_pass();
}

/* ---- 9. Describe of a rewritten statement ------------------------------ */

static void test_idem_describe(void **state)
{
    (void)state;
    create_key_table("idem_desc", "text");
    struct itest_proxy *p = itest_proxy_start_table("debug", "idem_desc", "idempotency_key", "");
    PGconn *c = itest_connect_ok(p->port, NULL);
    PGconn *direct = itest_connect_direct();
    const char *sql = "INSERT INTO idem_desc (idempotency_key, payload) VALUES ($1, $2) "
                      "RETURNING id, payload";

    PGresult *r = itest_prepare(c, "desc_ins", sql, 0);
    itest_assert_result_ok(r, "PQprepare through the proxy");
    PQclear(r);
    r = itest_prepare(direct, "desc_ins", sql, 0);
    itest_assert_result_ok(r, "PQprepare directly");
    PQclear(r);

    PGresult *via = itest_describe_prepared(c, "desc_ins");
    itest_assert_result_ok(via, "PQdescribePrepared through the proxy");
    PGresult *want = itest_describe_prepared(direct, "desc_ins");
    itest_assert_result_ok(want, "PQdescribePrepared directly");
    assert_int_equal(PQnparams(via), PQnparams(want));
    assert_int_equal(PQnparams(via), 2);
    for (int i = 0; i < PQnparams(want); i++)
        assert_int_equal(PQparamtype(via, i), PQparamtype(want, i));
    assert_int_equal(PQnfields(via), PQnfields(want));
    assert_int_equal(PQnfields(via), 2);
    for (int i = 0; i < PQnfields(want); i++) {
        assert_string_equal(PQfname(via, i), PQfname(want, i));
        assert_int_equal(PQftype(via, i), PQftype(want, i));
        assert_int_equal(PQftable(via, i), PQftable(want, i));
        assert_int_equal(PQftablecol(via, i), PQftablecol(want, i));
    }
    PQclear(via);
    PQclear(want);

    /* It was rewritten, and it runs idempotently. */
    itest_assert_log_line(p, "rewritten", "public.idem_desc", NULL);
    const char *vals[2] = { "dk", "dp" };
    r = itest_exec_prepared(c, "desc_ins", 2, vals);
    itest_assert_tag(r, "INSERT 0 1", "desc_ins first");
    assert_int_equal(PQntuples(r), 1);
    char id[32];
    snprintf(id, sizeof id, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    r = itest_exec_prepared(c, "desc_ins", 2, vals);
    itest_assert_tag(r, "INSERT 0 1", "desc_ins again");
    assert_int_equal(PQntuples(r), 1);
    assert_string_equal(PQgetvalue(r, 0, 0), id);
    assert_string_equal(PQgetvalue(r, 0, 1), "dp");
    PQclear(r);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_desc"), 1);
    itest_pass();
}

/* ---- 10. a named prepared statement used many times --------------------- */

#define REUSE_EXECS 100
#define REUSE_KEYS 40
#define REUSE_PRESET 10 /* keys 0..9 exist before the test */

static void test_idem_prepared_reuse(void **state)
{
    (void)state;
    create_key_table("idem_reuse", "text");
    itest_server_exec("INSERT INTO idem_reuse (idempotency_key, payload) "
                      "SELECT 'r-' || g, 'preset' FROM generate_series(0, 9) g");
    struct itest_proxy *p = itest_proxy_start_table(NULL, "idem_reuse", "idempotency_key", "");
    PGconn *c = itest_connect_ok(p->port, NULL);

    PGresult *r = itest_prepare(
        c, "reuse_ins", "INSERT INTO idem_reuse (idempotency_key, payload) VALUES ($1, $2)", 2);
    itest_assert_result_ok(r, "PQprepare reuse_ins");
    PQclear(r);
    bool seen[REUSE_KEYS] = { false };
    for (int k = 0; k < REUSE_PRESET; k++)
        seen[k] = true;
    int inserted = 0;
    for (int i = 0; i < REUSE_EXECS; i++) {
        int k = (i * 7) % REUSE_KEYS;
        char key[16], payload[16], what[64];
        snprintf(key, sizeof key, "r-%d", k);
        snprintf(payload, sizeof payload, "exec %d", i);
        snprintf(what, sizeof what, "execution %d (key %s)", i, key);
        const char *vals[2] = { key, payload };
        r = itest_exec_prepared(c, "reuse_ins", 2, vals);
        itest_assert_tag(r, seen[k] ? "INSERT 0 0" : "INSERT 0 1", what);
        PQclear(r);
        inserted += !seen[k];
        seen[k] = true;
    }
    assert_int_equal(inserted, REUSE_KEYS - REUSE_PRESET);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_reuse"), REUSE_KEYS);
    assert_int_equal(itest_server_ll("SELECT count(DISTINCT idempotency_key) FROM idem_reuse"),
                     REUSE_KEYS);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_reuse WHERE payload = 'preset'"),
                     REUSE_PRESET);
    itest_pass();
}

/* ---- 11. sessions whose settings make scanning unsafe ------------------ */

static void test_idem_unsafe_session(void **state)
{
    (void)state;
    create_key_table("idem_unsafe", "text");
    itest_server_exec("INSERT INTO idem_unsafe (idempotency_key, payload) VALUES ('x1', 'orig')");
    struct itest_proxy *p = itest_proxy_start_table(NULL, "idem_unsafe", "idempotency_key", "");
    const char *dup = "INSERT INTO idem_unsafe (idempotency_key, payload) VALUES ('x1', 'dup')";

    /* standard_conforming_strings = off: passed unchanged. */
    PGconn *scs = itest_connect_ok(p->port, "options='-c standard_conforming_strings=off'");
    assert_string_equal(PQparameterStatus(scs, "standard_conforming_strings"), "off");
    itest_exec_sqlstate(scs, dup, "23505");
    itest_finish(scs);

    /* client_encoding = SJIS: passed unchanged. */
    PGconn *sjis = itest_connect_ok(p->port, "client_encoding=SJIS");
    assert_string_equal(PQparameterStatus(sjis, "client_encoding"), "SJIS");
    itest_exec_sqlstate(sjis, dup, "23505");
    itest_finish(sjis);

    /* An ordinary session on the same proxy is rewritten. */
    PGconn *c = itest_connect_ok(p->port, "client_encoding=UTF8");
    itest_exec_tag(c, dup, "INSERT 0 0");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_unsafe"), 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_unsafe WHERE payload = 'orig'"), 1);
    itest_pass();
}

/* ---- 12. database = other_db ------------------------------------------- */

static void test_idem_other_database(void **state)
{
    (void)state;
    create_key_table("idem_otherdb", "text");
    itest_server_exec("INSERT INTO idem_otherdb (idempotency_key, payload) VALUES ('o1', 'orig')");
    struct itest_proxy *p = itest_proxy_start_table(NULL, "idem_otherdb", "idempotency_key",
                                                    "database = other_db\n");
    PGconn *c = itest_connect_ok(p->port, NULL);
    itest_exec_sqlstate(c, "INSERT INTO idem_otherdb (idempotency_key, payload) "
                           "VALUES ('o1', 'dup')", "23505");
    itest_exec_tag(c, "INSERT INTO idem_otherdb (idempotency_key, payload) VALUES ('o2', 'new')",
                   "INSERT 0 1");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_otherdb"), 2);
    itest_pass();
}

/* ---- 13. an unregistered table is untouched ----------------------------- */

static void test_idem_unregistered_table(void **state)
{
    (void)state;
    create_key_table("idem_reg", "text");
    create_key_table("idem_unreg", "text");
    itest_server_exec("INSERT INTO idem_reg (idempotency_key, payload) VALUES ('a', 'orig'); "
                      "INSERT INTO idem_unreg (idempotency_key, payload) VALUES ('a', 'orig')");
    struct itest_proxy *p = itest_proxy_start_table(NULL, "idem_reg", "idempotency_key", "");
    PGconn *c = itest_connect_ok(p->port, NULL);

    PGresult *r = itest_exec(c, "INSERT INTO idem_unreg (idempotency_key, payload) "
                                "VALUES ('a', 'dup')");
    itest_assert_sqlstate(r, "23505", "duplicate into the unregistered table");
    itest_assert_field(r, PG_DIAG_SCHEMA_NAME, "public", "SCHEMA_NAME");
    itest_assert_field(r, PG_DIAG_TABLE_NAME, "idem_unreg", "TABLE_NAME");
    itest_assert_field(r, PG_DIAG_CONSTRAINT_NAME, "idem_unreg_idempotency_key_key",
                       "CONSTRAINT_NAME");
    assert_non_null(PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL));
    PQclear(r);

    /* Extended protocol too. */
    const char *vals[1] = { "a" };
    r = itest_exec_params(c, "INSERT INTO idem_unreg (idempotency_key, payload) VALUES ($1, 'dup')",
                          1, vals);
    itest_assert_sqlstate(r, "23505", "duplicate into the unregistered table (extended)");
    itest_assert_field(r, PG_DIAG_TABLE_NAME, "idem_unreg", "TABLE_NAME");
    itest_assert_field(r, PG_DIAG_CONSTRAINT_NAME, "idem_unreg_idempotency_key_key",
                       "CONSTRAINT_NAME");
    PQclear(r);

    /* The registered one, on the same session, is rewritten. */
    itest_exec_tag(c, "INSERT INTO idem_reg (idempotency_key, payload) VALUES ('a', 'dup')",
                   "INSERT 0 0");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_unreg"), 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_reg"), 1);
    itest_pass();
}

/* ---- 14. reload adds a table ------------------------------------------- */

static void test_idem_reload(void **state)
{
    (void)state;
    create_key_table("idem_reload", "text");
    struct itest_proxy *p = itest_proxy_start_with(NULL, NULL);
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *dup = "INSERT INTO idem_reload (idempotency_key, payload) VALUES ('r1', 'x')";

    itest_exec_tag(c, dup, "INSERT 0 1");
    itest_exec_sqlstate(c, dup, "23505");

    prepare_unnamed(c);
    itest_proxy_reload(p, "[table public.idem_reload]\nconflict = idempotency_key\n", 1);
    assert_true(itest_proxy_alive(p));

    /* The same, idle session follows the new rules, its unnamed statement
     * kept. */
    assert_unnamed_kept(c, "a reload");
    itest_exec_tag(c, dup, "INSERT 0 0");
    /* And a new one. */
    PGconn *n = itest_connect_ok(p->port, NULL);
    itest_exec_tag(n, dup, "INSERT 0 0");
    assert_int_equal(itest_query_ll(c, "SELECT 5"), 5);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_reload"), 1);
    itest_pass();
}

/* Appends message type with body (len bytes) to buf at *at. */
static void put_msg(uint8_t *buf, size_t cap, size_t *at, char type, const void *body,
                    size_t len)
{
    *at += itest_build_msg(buf + *at, cap - *at, type, body, len);
}

/* A Parse of name with text, no parameter types. */
static void put_parse_named(uint8_t *buf, size_t cap, size_t *at, const char *name,
                            const char *text)
{
    uint8_t body[512];
    size_t n = strlen(name) + 1, t = strlen(text) + 1;
    memcpy(body, name, n);
    memcpy(body + n, text, t);
    body[n + t] = body[n + t + 1] = 0;
    put_msg(buf, cap, at, 'P', body, n + t + 2);
}

/* Reads messages until the count-th ReadyForQuery; their types in order
 * must be want. */
static void expect_types(int fd, const char *want)
{
    for (size_t i = 0; want[i]; i++) {
        struct itest_msg m;
        assert_int_equal(itest_raw_read_msg(fd, &m, ITEST_QUERY_TIMEOUT_MS), ITEST_READ_OK);
        char got = m.type;
        itest_msg_free(&m);
        if (got != want[i])
            fail_msg("message %zu is '%c', expected '%c' (of \"%s\")", i, got, want[i], want);
    }
}

/* Reads until the n-th ReadyForQuery, writing what each CommandComplete
 * and ErrorResponse said to got ("C:tag" or "E:sqlstate", ';'-separated)
 * and each ReadyForQuery's status ("Z:T"). */
static void read_outcomes(int fd, int n, char *got, size_t cap)
{
    size_t at = 0;
    got[0] = '\0';
    while (n > 0) {
        struct itest_msg m;
        assert_int_equal(itest_raw_read_msg(fd, &m, ITEST_QUERY_TIMEOUT_MS), ITEST_READ_OK);
        const char *code = m.type == 'E' ? itest_msg_field(&m, 'C') : NULL;
        if (m.type == 'C')
            at += (size_t)snprintf(got + at, cap - at, "C:%s;", (const char *)m.body);
        else if (m.type == 'E')
            at += (size_t)snprintf(got + at, cap - at, "E:%s;", code ? code : "?");
        else if (m.type == 'Z')
            at += (size_t)snprintf(got + at, cap - at, "Z:%c;", m.len ? m.body[0] : '?');
        n -= m.type == 'Z';
        itest_msg_free(&m);
        assert_true(at < cap);
    }
}

/* A SET LOCAL of search_path that a client pipelines behind a request
 * outside any block (a BEGIN between them): the ReadyForQuery of that
 * request says the session is outside a block, but the transaction the
 * change lasts for has not even begun. The identity from before the
 * change must not come back with it: the INSERT behind, its text still
 * arriving then, leads to the other schema's table, where the rewrite
 * would fail with 42P10 (its table has no unique key). */
static void test_idem_local_change_behind_earlier_answer(void **state)
{
    (void)state;
    create_key_table("idem_late", "text");
    itest_server_exec("DROP SCHEMA IF EXISTS idem_late_other CASCADE; "
                      "CREATE SCHEMA idem_late_other; "
                      "CREATE TABLE idem_late_other.idem_late (idempotency_key text, "
                      "payload text); "
                      "INSERT INTO idem_late (idempotency_key) VALUES ('l1')");
    struct itest_proxy *p = itest_proxy_start_with(
        "debug", "workers = 1\ncatalog_check_interval = 0\n"
                 "[table public.idem_late]\nconflict = idempotency_key\n");
    int fd = itest_raw_connect(p->port);
    const char *insert = "INSERT INTO idem_late (idempotency_key) VALUES ('l1')";
    uint8_t buf[1024];
    size_t at = 0;
    char got[512];

    assert_true(fd >= 0);
    itest_raw_login(fd, itest_pg_user(), "itest_late_local");
    put_msg(buf, sizeof buf, &at, 'Q', insert, strlen(insert) + 1);
    assert_true(itest_raw_send(fd, buf, at));
    read_outcomes(fd, 1, got, sizeof got);
    assert_string_equal(got, "C:INSERT 0 0;Z:I;");

    /* The first ReadyForQuery comes alone, while the server sleeps. */
    static const char *const ahead[] = { "SELECT 1", "SELECT pg_sleep(0.3)", "BEGIN",
                                         "SET LOCAL search_path TO idem_late_other" };
    at = 0;
    for (size_t i = 0; i < sizeof ahead / sizeof ahead[0]; i++)
        put_msg(buf, sizeof buf, &at, 'Q', ahead[i], strlen(ahead[i]) + 1);
    size_t insert_at = at;
    put_msg(buf, sizeof buf, &at, 'Q', insert, strlen(insert) + 1);
    size_t half = insert_at + (at - insert_at) / 2;
    assert_true(itest_raw_send(fd, buf, half));
    itest_sleep_ms(800);
    assert_true(itest_raw_send(fd, buf + half, at - half));
    read_outcomes(fd, 5, got, sizeof got);
    assert_string_equal(got, "C:SELECT 1;Z:I;C:SELECT 1;Z:I;C:BEGIN;Z:T;C:SET;Z:T;"
                             "C:INSERT 0 1;Z:T;");
    /* Once the block is over, the identity from before it is back. */
    const char *const after[] = { "ROLLBACK", insert };
    for (size_t i = 0; i < 2; i++) {
        at = 0;
        put_msg(buf, sizeof buf, &at, 'Q', after[i], strlen(after[i]) + 1);
        assert_true(itest_raw_send(fd, buf, at));
        read_outcomes(fd, 1, got, sizeof got);
        assert_string_equal(got, i ? "C:INSERT 0 0;Z:I;" : "C:ROLLBACK;Z:I;");
    }
    itest_raw_close(fd);
    itest_pass();
}

/* A statement the client defines again while no rules apply (after a
 * reload without tables, the proxy reads no text), in a pipeline where the
 * server refuses the first new definition and a DEALLOCATE ALL follows,
 * is not brought back in its old text when rules return that would prepare
 * it otherwise: the Bind runs the statement the server holds, with its
 * RETURNING. */
static void test_idem_redefined_without_rules(void **state)
{
    (void)state;
    create_key_table("idem_redef", "text");
    const char *rules = "[table public.idem_redef]\nconflict = idempotency_key\n";
    struct itest_proxy *p = itest_proxy_start_with("debug", rules);
    int fd = itest_raw_connect(p->port);
    uint8_t buf[2048];
    size_t at = 0;

    assert_true(fd >= 0);
    itest_raw_login(fd, itest_pg_user(), "itest_redefined");
    put_parse_named(buf, sizeof buf, &at, "s2",
                    "INSERT INTO idem_redef (idempotency_key, payload) VALUES ($1, $2)");
    put_msg(buf, sizeof buf, &at, 'S', NULL, 0);
    assert_true(itest_raw_send(fd, buf, at));
    expect_types(fd, "1Z");

    itest_proxy_reload(p, "", 1);
    at = 0;
    put_parse_named(buf, sizeof buf, &at, "s2", "SELECT 1");
    put_msg(buf, sizeof buf, &at, 'C', "Ss2", 4);
    put_msg(buf, sizeof buf, &at, 'S', NULL, 0);
    put_msg(buf, sizeof buf, &at, 'Q', "DEALLOCATE ALL", 15);
    put_parse_named(buf, sizeof buf, &at, "s2",
                    "INSERT INTO idem_redef (idempotency_key, payload) VALUES ($1, $2) "
                    "RETURNING payload");
    put_msg(buf, sizeof buf, &at, 'S', NULL, 0);
    assert_true(itest_raw_send(fd, buf, at));
    expect_types(fd, "EZCZ1Z");

    /* Rules under which the old text would be prepared otherwise. */
    itest_proxy_reload(p, "[table public.idem_redef]\nconflict = idempotency_key\naction = none\n", 2);
    static const uint8_t bind[] = { 0, 's', '2', 0, 0, 0, 0, 2, 0, 0, 0, 2, 'k', '1',
                                    0, 0, 0, 1, 'x', 0, 0 };
    static const uint8_t execute[] = { 0, 0, 0, 0, 0 };
    at = 0;
    put_msg(buf, sizeof buf, &at, 'B', bind, sizeof bind);
    put_msg(buf, sizeof buf, &at, 'E', execute, sizeof execute);
    put_msg(buf, sizeof buf, &at, 'S', NULL, 0);
    assert_true(itest_raw_send(fd, buf, at));
    expect_types(fd, "2DCZ");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_redef"), 1);
    itest_pass();
}

/* ---- 15. several statements in one Query ------------------------------- */

static void test_idem_multi_statement(void **state)
{
    (void)state;
    create_key_table("idem_multistmt", "text");
    itest_server_exec("INSERT INTO idem_multistmt (idempotency_key, payload) "
                      "VALUES ('dup', 'orig')");
    struct itest_proxy *p = itest_proxy_start_table(NULL, "idem_multistmt", "idempotency_key", "");
    PGconn *c = itest_connect_ok(p->port, NULL);

    const char *sql = "INSERT INTO idem_multistmt (idempotency_key, payload) VALUES ('dup', 'a'); "
                      "INSERT INTO idem_multistmt (idempotency_key, payload) VALUES ('new', 'b'); "
                      "SELECT 1";
    assert_int_equal(PQsendQuery(c, sql), 1);
    int64_t deadline = itest_now_ms() + ITEST_QUERY_TIMEOUT_MS;
    const char *tags[3] = { "INSERT 0 0", "INSERT 0 1", "SELECT 1" };
    int n = 0;
    for (;;) {
        bool timed_out;
        PGresult *r = itest_next_result(c, deadline, &timed_out);
        if (timed_out)
            fail_msg("multi-statement Query: no result %d within %d ms", n, ITEST_QUERY_TIMEOUT_MS);
        if (r == NULL)
            break;
        char what[64];
        snprintf(what, sizeof what, "statement %d of the Query", n + 1);
        if (n < 3)
            itest_assert_tag(r, tags[n], what);
        else
            fail_msg("more than 3 results: %s", PQcmdStatus(r));
        if (n == 2)
            assert_string_equal(PQgetvalue(r, 0, 0), "1");
        PQclear(r);
        n++;
    }
    assert_int_equal(n, 3);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_multistmt"), 2);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_multistmt WHERE "
                                     "(idempotency_key, payload) IN (('dup', 'orig'), ('new', 'b'))"),
                     2);
    itest_pass();
}

/* ---- 16. a quoted, mixed-case table name ------------------------------- */

static void test_idem_quoted_table(void **state)
{
    (void)state;
    itest_server_exec("DROP SCHEMA IF EXISTS \"Billing\" CASCADE; "
                      "CREATE SCHEMA \"Billing\"; "
                      "CREATE TABLE \"Billing\".\"Payments\" (id bigserial PRIMARY KEY, "
                      "idempotency_key text NOT NULL UNIQUE, payload text)");
    struct itest_proxy *p = itest_proxy_start_with("debug", "[table \"Billing\".\"Payments\"]\n"
                                                         "conflict = idempotency_key\n");
    PGconn *c = itest_connect_ok(p->port, NULL);

    itest_exec_tag(c, "INSERT INTO \"Billing\".\"Payments\" (idempotency_key, payload) "
                      "VALUES ('b1', 'first')", "INSERT 0 1");
    itest_exec_tag(c, "INSERT INTO \"Billing\".\"Payments\" (idempotency_key, payload) "
                      "VALUES ('b1', 'again')", "INSERT 0 0");
    /* The folded name is another relation, which does not exist. */
    itest_exec_sqlstate(c, "INSERT INTO billing.payments (idempotency_key, payload) "
                           "VALUES ('b1', 'x')", "42P01");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM \"Billing\".\"Payments\""), 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM \"Billing\".\"Payments\" "
                                     "WHERE payload = 'first'"), 1);
    itest_pass();
}

/* ---- 17. the proxy's catalog query never reaches the client ------------- */

static int g_notices;

static void count_notice(void *arg, const char *message)
{
    (void)arg;
    g_notices++;
    printf("unexpected notice: %s", message);
}

/* The catalog's answer holds for every session of a database and login
 * role, so it must not depend on the settings of the session that happens
 * to ask: its search_path (here with an "=" on oids that is never true
 * ahead of pg_catalog, which made the catalog look empty) or its
 * client_encoding (a LATIN1 session got the table's name in LATIN1, which
 * matched no rule). The asker keeps its own settings afterwards. */
static void test_idem_catalog_session_settings(void **state)
{
    (void)state;
    itest_server_exec("DROP SCHEMA IF EXISTS idem_evil CASCADE; CREATE SCHEMA idem_evil; "
                      "CREATE FUNCTION idem_evil.never(oid, oid) RETURNS bool "
                      "LANGUAGE sql IMMUTABLE AS 'SELECT false'; "
                      "CREATE OPERATOR idem_evil.= (LEFTARG = oid, RIGHTARG = oid, "
                      "FUNCTION = idem_evil.never)");
    itest_server_exec("DROP TABLE IF EXISTS \"idem_caf\u00e9\"; "
                      "CREATE TABLE \"idem_caf\u00e9\" (id bigserial PRIMARY KEY, "
                      "idempotency_key text NOT NULL UNIQUE, payload text)");
    long long id1 = itest_server_ll("INSERT INTO \"idem_caf\u00e9\" (idempotency_key, payload) "
                                    "VALUES ('k1', 'p1') RETURNING id");
    static const char *const askers[] = {
        "options='-csearch_path=idem_evil,pg_catalog,public'",
        "client_encoding=LATIN1",
    };

    for (size_t i = 0; i < sizeof askers / sizeof askers[0]; i++) {
        struct itest_proxy *p = itest_proxy_start_table(NULL, "\"idem_caf\u00e9\"",
                                                        "idempotency_key", "");
        PGconn *asker = itest_connect_ok(p->port, askers[i]);
        char path[128], encoding[32];
        itest_query_text(asker, "SHOW search_path", path, sizeof path);
        itest_query_text(asker, "SHOW client_encoding", encoding, sizeof encoding);
        /* The first request is held until the answer is in: it is. */
        assert_int_equal(itest_query_ll(asker, "SELECT 1"), 1);

        PGconn *c = itest_connect_ok(p->port, NULL);
        PGresult *r = itest_exec(c, "INSERT INTO \"idem_caf\u00e9\" (idempotency_key, payload) "
                                    "VALUES ('k1', 'again') RETURNING id");
        itest_assert_tag(r, "INSERT 0 1", askers[i]);
        assert_int_equal(PQntuples(r), 1);
        assert_int_equal(strtoll(PQgetvalue(r, 0, 0), NULL, 10), id1);
        PQclear(r);
        assert_false(itest_proxy_log_contains(p, " warning: "));

        char now[128];
        assert_string_equal(itest_query_text(asker, "SHOW search_path", now, sizeof now), path);
        assert_string_equal(itest_query_text(asker, "SHOW client_encoding", now, sizeof now),
                            encoding);
        assert_string_equal(PQparameterStatus(asker, "client_encoding"), encoding);
        itest_finish(c);
        itest_finish(asker);
    }
    assert_int_equal(itest_server_ll("SELECT count(*) FROM \"idem_caf\u00e9\""), 1);
}

static void test_idem_catalog_query_hidden(void **state)
{
    (void)state;
    create_key_table("idem_hidden", "text");
    itest_server_exec("INSERT INTO idem_hidden (idempotency_key, payload) VALUES ('h1', 'orig')");
    struct itest_proxy *p = itest_proxy_start_table(NULL, "idem_hidden", "idempotency_key", "");

    /* libpq: the first result is the client's own, and nothing else came. */
    g_notices = 0;
    PGconn *c = itest_connect_ok(p->port, NULL);
    PQsetNoticeProcessor(c, count_notice, NULL);
    assert_int_equal(itest_query_ll(c, "SELECT 42"), 42);
    assert_null(PQnotifies(c));
    itest_exec_tag(c, "INSERT INTO idem_hidden (idempotency_key, payload) VALUES ('h1', 'dup')",
                   "INSERT 0 0");
    assert_int_equal(itest_query_ll(c, "SELECT 43"), 43);
    assert_null(PQnotifies(c));
    assert_int_equal(g_notices, 0);

    /* Pipelined first queries, sent before the catalog can have arrived. */
    PGconn *pc = itest_connect_ok(p->port, NULL);
    PQsetNoticeProcessor(pc, count_notice, NULL);
    assert_int_equal(PQenterPipelineMode(pc), 1);
    const char *one[1] = { "1" };
    const char *key[1] = { "h1" };
    assert_int_equal(PQsendQueryParams(pc, "SELECT $1::int", 1, NULL, one, NULL, NULL, 0), 1);
    assert_int_equal(PQsendQueryParams(pc, "INSERT INTO idem_hidden (idempotency_key, payload) "
                                           "VALUES ($1, 'dup')", 1, NULL, key, NULL, NULL, 0), 1);
    assert_int_equal(PQsendQueryParams(pc, "SELECT 3", 0, NULL, NULL, NULL, NULL, 0), 1);
    assert_int_equal(PQpipelineSync(pc), 1);
    assert_int_equal(PQflush(pc), 0);
    int64_t deadline = itest_now_ms() + ITEST_QUERY_TIMEOUT_MS;

    PGresult *r = itest_pipeline_result(pc, deadline);
    itest_assert_result_ok(r, "pipelined SELECT $1");
    assert_string_equal(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    itest_pipeline_end(pc, deadline);
    r = itest_pipeline_result(pc, deadline);
    itest_assert_tag(r, "INSERT 0 0", "pipelined duplicate INSERT");
    PQclear(r);
    itest_pipeline_end(pc, deadline);
    r = itest_pipeline_result(pc, deadline);
    itest_assert_result_ok(r, "pipelined SELECT 3");
    assert_string_equal(PQgetvalue(r, 0, 0), "3");
    PQclear(r);
    itest_pipeline_end(pc, deadline);
    r = itest_pipeline_result(pc, deadline);
    assert_int_equal(PQresultStatus(r), PGRES_PIPELINE_SYNC);
    PQclear(r);
    assert_int_equal(PQexitPipelineMode(pc), 1);
    assert_int_equal(itest_query_ll(pc, "SELECT 44"), 44);
    assert_null(PQnotifies(pc));
    assert_int_equal(g_notices, 0);

    /* Raw protocol: after login, a Query gets exactly its own answer. */
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    itest_raw_login(fd, itest_pg_user(), "itest_hidden_raw");
    uint8_t msg[64];
    static const char q[] = "SELECT 42";
    size_t n = itest_build_msg(msg, sizeof msg, 'Q', q, sizeof q);
    assert_true(itest_raw_send(fd, msg, n));
    const char want[] = "TDCZ";
    for (int i = 0; i < 4; i++) {
        struct itest_msg m;
        assert_int_equal(itest_raw_read_msg(fd, &m, ITEST_QUERY_TIMEOUT_MS), ITEST_READ_OK);
        if (m.type != want[i]) {
            char t = m.type;
            itest_msg_free(&m);
            fail_msg("raw: message %d is '%c', want '%c'", i, t, want[i]);
        }
        if (m.type == 'D') /* one column, length 2, "42" */
            assert_memory_equal(m.body, "\0\1\0\0\0\2" "42", 8);
        itest_msg_free(&m);
    }
    uint8_t extra[16];
    assert_int_equal(itest_raw_recv(fd, extra, sizeof extra, 300), -2);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_hidden"), 1);
    itest_pass();
}

/* ---- 18. the tables change under a running proxy ---------------------- */

/* Starts a proxy for table (conflict idempotency_key) with
 * catalog_check_interval. One worker: each worker asks the catalog and
 * logs what it learns on its own, and the tests count log lines. */
static struct itest_proxy *start_checking(const char *table, int interval)
{
    char extra[256];
    snprintf(extra, sizeof extra,
             "workers = 1\ncatalog_check_interval = %d\n"
             "[table public.%s]\nconflict = idempotency_key\n",
             interval, table);
    return itest_proxy_start_with(NULL, extra);
}

/* The unique constraint goes while sessions are open (a migration that
 * rebuilds it, say): the INSERT that meets the change first fails with the
 * server's 42P10, which the rewrite caused; from then on INSERTs pass as
 * they would without the proxy, in that session, a new one and through
 * the extended protocol, until the catalog allows the rewrite again. */
static void test_idem_index_dropped(void **state)
{
    (void)state;
    create_key_table("idem_dropped", "text");
    struct itest_proxy *p = start_checking("idem_dropped", 0);
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *dup = "INSERT INTO idem_dropped (idempotency_key, payload) VALUES ('d1', 'x')";
    const char *key[1] = { "d2" };
    const char *by_param = "INSERT INTO idem_dropped (idempotency_key, payload) VALUES ($1, 'y')";

    itest_exec_tag(c, dup, "INSERT 0 1");
    itest_exec_tag(c, dup, "INSERT 0 0");
    PGresult *r = itest_exec_params(c, by_param, 1, key);
    itest_assert_tag(r, "INSERT 0 1", "extended INSERT before the change");
    PQclear(r);
    /* A statement the client prepared by name holds the rewritten text on
     * the server; and so does one that prepares its unnamed statement once
     * and binds it again and again (which the proxy runs as a cached
     * statement of its own). */
    const char *named[1] = { "n1" };
    prepare_dropped_insert(c, "ins", named);
    PGconn *u = itest_connect_ok(p->port, NULL);
    const char *unnamed_key[1] = { "u1" };
    prepare_dropped_insert(u, "", unnamed_key);

    /* An application's own 55000 (no currval yet in this session) ran no
     * rewritten text: it says nothing of the tables, and the rewrite goes
     * on. */
    PGconn *early = itest_connect_ok(p->port, NULL);
    itest_exec_sqlstate(early, "SELECT currval('idem_dropped_id_seq')", "55000");
    itest_exec_tag(early, dup, "INSERT 0 0");
    assert_int_equal(itest_proxy_log_count(p, "55000 from the server"), 0);
    assert_int_equal(itest_proxy_log_count(p, "not rewritten"), 0);

    itest_server_exec("ALTER TABLE idem_dropped DROP CONSTRAINT idem_dropped_idempotency_key_key");
    itest_exec_sqlstate(c, dup, "42P10");
    itest_assert_log_line(p, "warning", "42P10 from the server", NULL);
    /* The failing session asked again at its next request. */
    itest_exec_tag(c, dup, "INSERT 0 1");
    itest_assert_log_line(p, "warning", "public.idem_dropped",
                          "no valid, non-partial unique index");
    r = itest_exec_params(c, by_param, 1, key);
    itest_assert_tag(r, "INSERT 0 1", "extended INSERT after the change");
    PQclear(r);
    /* The named statement is prepared again, as the client wrote it, and
     * so is the unnamed one. */
    expect_prepared_tag(c, named, "INSERT 0 1", "ins after the change");
    expect_unnamed_tag(u, unnamed_key, "INSERT 0 1", "unnamed after the change");
    PGconn *n = itest_connect_ok(p->port, NULL);
    itest_exec_tag(n, dup, "INSERT 0 1");
    r = itest_exec_params(n, by_param, 1, key);
    itest_assert_tag(r, "INSERT 0 1", "extended INSERT in a new session");
    PQclear(r);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_dropped"), 10);
    assert_int_equal(itest_proxy_log_count(p, "42P10 from the server"), 1);

    /* Nor once nothing is rewritten. */
    PGconn *fresh = itest_connect_ok(p->port, NULL);
    itest_exec_sqlstate(fresh, "SELECT currval('idem_dropped_id_seq')", "55000");
    itest_exec_tag(fresh, dup, "INSERT 0 1");
    assert_int_equal(itest_proxy_log_count(p, "55000 from the server"), 0);
    assert_int_equal(itest_proxy_log_count(p, "some INSERTs are not rewritten"), 1);

    /* The constraint is back: a reload makes the rewrite return. */
    itest_server_exec("DELETE FROM idem_dropped; ALTER TABLE idem_dropped ADD CONSTRAINT "
                      "idem_dropped_idempotency_key_key UNIQUE (idempotency_key)");
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    itest_proxy_wait_log_count(p, "configuration reloaded", 1);
    itest_exec_tag(c, dup, "INSERT 0 1");
    itest_exec_tag(c, dup, "INSERT 0 0");
    expect_prepared_tag(c, named, "INSERT 0 1", "ins after the reload");
    expect_prepared_tag(c, named, "INSERT 0 0", "ins again after the reload");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_dropped"), 2);
    itest_pass();
}

/* catalog_check_interval: an index created after the proxy started makes
 * the rewrite begin, and one dropped makes it stop before any INSERT
 * fails, in a session that stayed open throughout. The catalog query
 * leaves the client's unnamed statement alone. */
static void test_idem_catalog_interval(void **state)
{
    (void)state;
    itest_server_exec("DROP TABLE IF EXISTS idem_later; CREATE TABLE idem_later "
                      "(id bigserial PRIMARY KEY, idempotency_key text NOT NULL, payload text)");
    struct itest_proxy *p = start_checking("idem_later", 1);
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *dup = "INSERT INTO idem_later (idempotency_key, payload) VALUES ('l1', 'x')";

    itest_exec_tag(c, dup, "INSERT 0 1");
    itest_exec_tag(c, dup, "INSERT 0 1");
    itest_assert_log_line(p, "warning", "public.idem_later", "no valid, non-partial unique index");

    itest_server_exec("DELETE FROM idem_later; "
                      "CREATE UNIQUE INDEX idem_later_key ON idem_later (idempotency_key)");
    prepare_unnamed(c);
    itest_sleep_ms(1300);
    /* The catalog is asked again ahead of this Bind. */
    assert_unnamed_kept(c, "the catalog was asked again");
    itest_assert_log_line(p, "info", "public.idem_later", "rewritten again");
    itest_exec_tag(c, dup, "INSERT 0 1");
    itest_exec_tag(c, dup, "INSERT 0 0");

    itest_server_exec("DROP INDEX idem_later_key");
    itest_sleep_ms(1300);
    itest_exec_tag(c, dup, "INSERT 0 1");
    assert_int_equal(itest_proxy_log_count(p, "from the server"), 0);
    assert_int_equal(itest_proxy_log_count(p, "some INSERTs are not rewritten"), 2);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_later"), 2);

    /* Unchanged answers are not logged again. */
    itest_sleep_ms(1300);
    assert_int_equal(itest_query_ll(c, "SELECT 2"), 2);
    itest_sleep_ms(1300);
    assert_int_equal(itest_query_ll(c, "SELECT 3"), 3);
    assert_int_equal(itest_proxy_log_count(p, "some INSERTs are not rewritten"), 2);
    itest_pass();
}

/* What the login role may do decides the DO UPDATE form of INSERT ...
 * RETURNING, checked against the real server: without UPDATE privilege, or
 * with row-level security applying to it, that form is not rewritten and a
 * duplicate gets the server's 23505; the check follows GRANT and ENABLE ROW
 * LEVEL SECURITY within catalog_check_interval. A session of another login
 * that runs as the role (SET ROLE) learns for the role, not for its login
 * role. */
static void test_idem_login_role_privileges(void **state)
{
    (void)state;
    create_key_table("idem_priv", "text");
    itest_server_exec("GRANT SELECT, INSERT ON idem_priv TO " ITEST_SCRAM_USER "; "
                      "GRANT USAGE ON SEQUENCE idem_priv_id_seq TO " ITEST_SCRAM_USER);
    itest_server_exec("INSERT INTO idem_priv (idempotency_key, payload) VALUES ('p1', 'first')");
    struct itest_proxy *p = start_checking("idem_priv", 1);
    PGconn *user = itest_connect_ok(p->port, "user=" ITEST_SCRAM_USER
                                             " password=" ITEST_SCRAM_PASSWORD);
    PGconn *super = itest_connect_ok(p->port, NULL);
    const char *plain = "INSERT INTO idem_priv (idempotency_key, payload) VALUES ('p1', 'x')";
    const char *returning = "INSERT INTO idem_priv (idempotency_key, payload) "
                            "VALUES ('p1', 'x') RETURNING payload";
    char text[64];

    /* No UPDATE privilege: DO NOTHING still goes, DO UPDATE does not. */
    itest_exec_tag(user, plain, "INSERT 0 0");
    itest_exec_sqlstate(user, returning, "23505");
    itest_assert_log_line(p, "warning", "public.idem_priv", "may not UPDATE");
    assert_string_equal(itest_query_text(super, returning, text, sizeof text), "first");

    /* Granted: the next check after the interval sees it. */
    itest_server_exec("GRANT UPDATE ON idem_priv TO " ITEST_SCRAM_USER);
    itest_sleep_ms(1300);
    assert_string_equal(itest_query_text(user, returning, text, sizeof text), "first");

    /* A superuser's session acting as the user asks the next check: for
     * the user, and the superuser's own answer stands. */
    itest_server_exec("REVOKE UPDATE ON idem_priv FROM " ITEST_SCRAM_USER);
    itest_exec_ok(super, "SET ROLE " ITEST_SCRAM_USER);
    itest_sleep_ms(1300);
    assert_int_equal(itest_query_ll(super, "SELECT 1"), 1);
    itest_exec_ok(super, "RESET ROLE");
    assert_string_equal(itest_query_text(super, returning, text, sizeof text), "first");
    itest_exec_sqlstate(user, returning, "23505");

    /* Row-level security applies to the user (not the table's owner), not
     * to the superuser. */
    itest_server_exec("GRANT UPDATE ON idem_priv TO " ITEST_SCRAM_USER "; "
                      "ALTER TABLE idem_priv ENABLE ROW LEVEL SECURITY; "
                      "CREATE POLICY idem_priv_all ON idem_priv USING (true) WITH CHECK (true)");
    itest_sleep_ms(1300);
    itest_exec_sqlstate(user, returning, "23505");
    itest_assert_log_line(p, "warning", "public.idem_priv", "row-level security");
    itest_exec_tag(user, plain, "INSERT 0 0");
    assert_string_equal(itest_query_text(super, returning, text, sizeof text), "first");
    assert_int_equal(itest_proxy_log_count(p, "from the server"), 0);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_priv"), 1);
    itest_pass();
}

/* ---- the session's role and search_path -------------------------------- */

#define WHO_INSERT(key) \
    "INSERT INTO idem_who (idempotency_key, payload) VALUES ('" key "', 'x')"

/* A session whose table names lead elsewhere than the catalog check
 * assumed (its own search_path, set in any way, a temporary table of the
 * same name) has its INSERTs left exactly as it sent them, as a direct
 * connection would run them: a duplicate in a tenant's table is the
 * server's 23505, and a table without the unique index takes both rows
 * (the rewrite would have failed with 42P10). Once the session is back
 * (RESET, the end of the block with SET LOCAL, the temporary table
 * dropped), its INSERTs are rewritten again. A session that runs as
 * another role is decided by what that role may do: without UPDATE
 * privilege, the duplicate's 23505 rather than the DO UPDATE form's
 * 42501. */
static void test_idem_session_identity(void **state)
{
    (void)state;
    create_key_table("idem_who", "text");
    itest_server_exec("DROP SCHEMA IF EXISTS idem_tenant CASCADE; "
                      "DROP SCHEMA IF EXISTS idem_loose CASCADE; "
                      "CREATE SCHEMA idem_tenant; CREATE SCHEMA idem_loose; "
                      "CREATE TABLE idem_tenant.idem_who (id bigserial PRIMARY KEY, "
                      "idempotency_key text NOT NULL UNIQUE, payload text); "
                      "CREATE TABLE idem_loose.idem_who (idempotency_key text, payload text); "
                      "GRANT USAGE ON SCHEMA idem_loose TO PUBLIC; "
                      "GRANT SELECT, INSERT ON idem_who TO " ITEST_SCRAM_USER "; "
                      "GRANT USAGE ON SEQUENCE idem_who_id_seq TO " ITEST_SCRAM_USER);
    struct itest_proxy *p = itest_proxy_start_with(
        "debug", "workers = 1\ncatalog_check_interval = 0\n"
                 "[table public.idem_who]\nconflict = idempotency_key\n");
    PGconn *c = itest_connect_ok(p->port, NULL);
    char text[64];

    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 1");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 0");

    /* A tenant's schema first: its own table, its own duplicates. */
    itest_exec_ok(c, "SET search_path TO idem_tenant");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 1");
    itest_exec_sqlstate(c, WHO_INSERT("w1"), "23505");
    itest_assert_log_line(p, "info", "table names lead elsewhere", "pass unchanged");
    /* Even the registered table, named with its schema, is left alone. */
    itest_exec_sqlstate(c, "INSERT INTO public.idem_who (idempotency_key) VALUES ('w1')",
                        "23505");
    itest_exec_ok(c, "SET search_path TO idem_loose");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 1");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 1");
    itest_exec_ok(c, "RESET search_path");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 0");
    itest_assert_log_line(p, "debug", "as checked again", "rewritten");

    /* SET LOCAL holds to the end of its block, and so does the change. */
    itest_exec_ok(c, "BEGIN");
    itest_exec_ok(c, "SET LOCAL search_path TO idem_tenant");
    itest_exec_sqlstate(c, WHO_INSERT("w1"), "23505");
    itest_exec_ok(c, "ROLLBACK");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 0");

    /* The change and the INSERT in one Query. */
    itest_exec_tag(c, "SET search_path TO idem_loose; " WHO_INSERT("w1"), "INSERT 0 1");
    itest_exec_ok(c, "RESET search_path");

    /* set_config through a prepared statement, with an INSERT prepared
     * (and rewritten) before: it is prepared again as the client sent it
     * while the path differs, and rewritten again once it is back. */
    PGresult *r = itest_prepare(c, "ins", "INSERT INTO idem_who (idempotency_key, payload) "
                                          "VALUES ($1, 'p')", 1);
    itest_assert_result_ok(r, "PQprepare of the INSERT");
    PQclear(r);
    r = itest_prepare(c, "path", "SELECT pg_catalog.set_config('search_path', $1, false)", 1);
    itest_assert_result_ok(r, "PQprepare of set_config");
    PQclear(r);
    const char *w1[1] = { "w1" }, *loose[1] = { "idem_loose" }, *public[1] = { "public" };
    expect_prepared_tag(c, w1, "INSERT 0 0", "the prepared INSERT, rewritten");
    PQclear(itest_exec_prepared(c, "path", 1, loose));
    expect_prepared_tag(c, w1, "INSERT 0 1", "the prepared INSERT, its path changed");
    expect_prepared_tag(c, w1, "INSERT 0 1", "the prepared INSERT, its path changed, again");
    PQclear(itest_exec_prepared(c, "path", 1, public));
    expect_prepared_tag(c, w1, "INSERT 0 0", "the prepared INSERT, its path back");

    /* Bound behind another request of a pipeline, the statement cannot be
     * prepared again ahead of its Bind: it was, as soon as the session
     * was known to have changed. */
    PQclear(itest_exec_prepared(c, "path", 1, loose));
    int64_t deadline = itest_now_ms() + 10000;
    assert_int_equal(PQenterPipelineMode(c), 1);
    assert_int_equal(PQsendQueryParams(c, "SELECT 1", 0, NULL, NULL, NULL, NULL, 0), 1);
    assert_int_equal(PQsendQueryPrepared(c, "ins", 1, w1, NULL, NULL, 0), 1);
    assert_int_equal(PQpipelineSync(c), 1);
    PGresult *pr = itest_pipeline_result(c, deadline);
    itest_assert_result_ok(pr, "SELECT 1 in the pipeline");
    PQclear(pr);
    itest_pipeline_end(c, deadline);
    pr = itest_pipeline_result(c, deadline);
    itest_assert_tag(pr, "INSERT 0 1", "the prepared INSERT behind it, its path changed");
    PQclear(pr);
    itest_pipeline_end(c, deadline);
    pr = itest_pipeline_result(c, deadline);
    assert_int_equal(PQresultStatus(pr), PGRES_PIPELINE_SYNC);
    PQclear(pr);
    assert_int_equal(PQexitPipelineMode(c), 1);
    PQclear(itest_exec_prepared(c, "path", 1, public));
    expect_prepared_tag(c, w1, "INSERT 0 0", "the prepared INSERT, its path back again");

    /* A temporary table of the same name comes first on any path. */
    itest_exec_ok(c, "CREATE TEMP TABLE idem_who (idempotency_key text, payload text)");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 1");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 1");
    itest_exec_ok(c, "DROP TABLE idem_who");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 0");

    /* Another role: the DO UPDATE form for RETURNING was allowed for the
     * login role (a superuser), not for this one; DO NOTHING is. */
    const char *returning = "INSERT INTO idem_who (idempotency_key, payload) "
                            "VALUES ('w1', 'r') RETURNING payload";
    itest_exec_ok(c, "SET ROLE " ITEST_SCRAM_USER);
    itest_exec_sqlstate(c, returning, "23505");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 0");
    itest_exec_ok(c, "RESET ROLE");
    assert_string_equal(itest_query_text(c, returning, text, sizeof text), "x");

    /* A custom setting (what row-level security policies read) changes
     * nothing the rewrite depends on: no question, and in a block the
     * INSERTs after it are rewritten. */
    const char *asked_before = "asking the server about the session's role and search_path";
    int questions = itest_proxy_log_count(p, asked_before);
    itest_exec_ok(c, "SELECT set_config('app.tenant_id', '7', false)");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 0");
    itest_exec_ok(c, "BEGIN");
    itest_exec_ok(c, "SELECT set_config('app.tenant_id', '8', true)");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 0");
    itest_exec_ok(c, "COMMIT");
    assert_int_equal(itest_proxy_log_count(p, asked_before), questions);

    /* A path given at login (pgjdbc's currentSchema sends it so). */
    PGconn *t = itest_connect_ok(p->port, "options='-csearch_path=idem_loose'");
    itest_exec_tag(t, WHO_INSERT("w1"), "INSERT 0 1");
    itest_exec_tag(t, WHO_INSERT("w1"), "INSERT 0 1");
    itest_exec_tag(c, WHO_INSERT("w1"), "INSERT 0 0");

    /* The next logins like these two are answered without asking, each as
     * its own kind. */
    const char *asking = "asking the server about the session's role and search_path";
    int asked = itest_proxy_log_count(p, asking);
    PGconn *c2 = itest_connect_ok(p->port, NULL);
    PGconn *t2 = itest_connect_ok(p->port, "options='-csearch_path=idem_loose'");
    itest_exec_tag(c2, WHO_INSERT("w1"), "INSERT 0 0");
    itest_exec_tag(t2, WHO_INSERT("w1"), "INSERT 0 1");
    assert_int_equal(itest_proxy_log_count(p, asking), asked);

    assert_int_equal(itest_server_ll("SELECT count(*) FROM public.idem_who"), 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_tenant.idem_who"), 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_loose.idem_who"), 9);
    assert_int_equal(itest_proxy_log_count(p, "from the server"), 0);
    itest_pass();
}

#define FN_INSERT(key) \
    "INSERT INTO idem_fn (idempotency_key, payload) VALUES ('" key "', 'x')"

/* set_config called by a FunctionCall (PQfn), setting search_path: the
 * session's INSERTs then lead elsewhere and are left as they are, as
 * after the SQL; back, they are rewritten again. Large-object calls
 * (libpq's lo_* functions are FunctionCalls too) change nothing: in a
 * block they cost no question before the INSERT after them. */
static void test_idem_session_funcall(void **state)
{
    (void)state;
    create_key_table("idem_fn", "text");
    itest_server_exec("DROP SCHEMA IF EXISTS idem_fn_loose CASCADE; "
                      "CREATE SCHEMA idem_fn_loose; "
                      "CREATE TABLE idem_fn_loose.idem_fn (idempotency_key text, payload text)");
    struct itest_proxy *p = itest_proxy_start_with(
        "debug", "workers = 1\ncatalog_check_interval = 0\n"
                 "[table public.idem_fn]\nconflict = idempotency_key\n");
    PGconn *c = itest_connect_ok(p->port, NULL);
    const Oid set_config = 2078;
    char result[64];
    int result_len = 0;

    itest_exec_tag(c, FN_INSERT("f1"), "INSERT 0 1");
    itest_exec_tag(c, FN_INSERT("f1"), "INSERT 0 0");

    /* PQfn sends its arguments in binary: text as it is, false as a 0. */
    const char *paths[] = { "idem_fn_loose", "public" }, *setting = "search_path";
    static char is_local = 0;
    for (int i = 0; i < 2; i++) {
        PQArgBlock args[3] = {
            { .len = (int)strlen(setting), .u.ptr = (int *)(uintptr_t)setting },
            { .len = (int)strlen(paths[i]), .u.ptr = (int *)(uintptr_t)paths[i] },
            { .len = 1, .u.ptr = (int *)(uintptr_t)&is_local },
        };
        PGresult *r = PQfn(c, set_config, (int *)result, &result_len, 0, args, 3);
        itest_assert_result_ok(r, "set_config by FunctionCall");
        PQclear(r);
        if (i == 0) {
            /* The loose table has no unique index: both rows go in,
             * where the rewrite would have failed with 42P10. */
            itest_exec_tag(c, FN_INSERT("f1"), "INSERT 0 1");
            itest_exec_tag(c, FN_INSERT("f1"), "INSERT 0 1");
        }
    }
    itest_exec_tag(c, FN_INSERT("f1"), "INSERT 0 0");

    const char *asking = "asking the server about the session's role and search_path";
    int asked = itest_proxy_log_count(p, asking);
    itest_exec_ok(c, "BEGIN");
    Oid lo = lo_creat(c, INV_READ | INV_WRITE);
    int fd = lo_open(c, lo, INV_READ | INV_WRITE);
    assert_true(lo != InvalidOid && fd >= 0);
    assert_int_equal(lo_write(c, fd, "large", 5), 5);
    itest_exec_tag(c, FN_INSERT("f1"), "INSERT 0 0");
    assert_int_equal(lo_close(c, fd), 0);
    itest_exec_tag(c, FN_INSERT("f2"), "INSERT 0 1");
    itest_exec_tag(c, FN_INSERT("f2"), "INSERT 0 0");
    itest_exec_ok(c, "COMMIT");
    assert_int_equal(lo_unlink(c, lo), 1);
    itest_exec_tag(c, FN_INSERT("f2"), "INSERT 0 0");
    assert_int_equal(itest_proxy_log_count(p, asking), asked);

    assert_int_equal(itest_server_ll("SELECT count(*) FROM public.idem_fn"), 2);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_fn_loose.idem_fn"), 2);
    assert_int_equal(itest_proxy_log_count(p, "from the server"), 0);
    itest_pass();
}

#define ROLE_INSERT(key) \
    "INSERT INTO idem_role (idempotency_key, payload) VALUES ('" key "', 'x')"
#define ROLE_RETURNING(key) \
    "INSERT INTO idem_role (idempotency_key, payload) VALUES ('" key "', 'r') RETURNING payload"

/* A session that switches roles (SET ROLE, or a role given at login) is
 * decided by what the role it runs as may do, learnt once per role (and
 * a login like one before is answered from it): a
 * role with UPDATE privilege gets the DO UPDATE form of INSERT ...
 * RETURNING, one without gets the duplicate's 23505 (not 42501), and
 * both get DO NOTHING; back to its login role, a session is decided as
 * before. */
static void test_idem_session_role(void **state)
{
    (void)state;
    create_key_table("idem_role", "text");
    itest_server_exec(
        "DO $$BEGIN "
        "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'idem_writer') THEN "
        "CREATE ROLE idem_writer; END IF; "
        "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'idem_inserter') THEN "
        "CREATE ROLE idem_inserter; END IF; END$$; "
        "GRANT SELECT, INSERT, UPDATE ON idem_role TO idem_writer; "
        "GRANT SELECT, INSERT ON idem_role TO idem_inserter; "
        "GRANT USAGE ON SEQUENCE idem_role_id_seq TO idem_writer, idem_inserter");
    itest_server_exec("INSERT INTO idem_role (idempotency_key, payload) VALUES ('r1', 'first')");
    struct itest_proxy *p = itest_proxy_start_with(
        "debug", "workers = 1\ncatalog_check_interval = 0\n"
                 "[table public.idem_role]\nconflict = idempotency_key\n");
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *learning = "asking the server about the registered tables";
    char text[64];

    itest_exec_tag(c, ROLE_INSERT("r1"), "INSERT 0 0");
    assert_int_equal(itest_proxy_log_count(p, learning), 1);

    itest_exec_ok(c, "SET ROLE idem_writer");
    itest_exec_tag(c, ROLE_INSERT("r1"), "INSERT 0 0");
    assert_string_equal(itest_query_text(c, ROLE_RETURNING("r1"), text, sizeof text), "first");
    itest_assert_log_line(p, "info", "runs as role \"idem_writer\" now", "catalog check");
    assert_int_equal(itest_proxy_log_count(p, learning), 2);

    itest_exec_ok(c, "SET ROLE idem_inserter");
    itest_exec_tag(c, ROLE_INSERT("r1"), "INSERT 0 0");
    itest_exec_sqlstate(c, ROLE_RETURNING("r1"), "23505");
    itest_assert_log_line(p, "warning", "as role \"idem_inserter\"", "may not UPDATE");
    itest_exec_ok(c, "RESET ROLE");
    assert_string_equal(itest_query_text(c, ROLE_RETURNING("r1"), text, sizeof text), "first");

    /* Each role's catalog was learnt once: another session, and a login
     * that runs as a role from the start, ask no more of it. */
    PGconn *d = itest_connect_ok(p->port, NULL);
    itest_exec_ok(d, "SET ROLE idem_inserter");
    itest_exec_tag(d, ROLE_INSERT("r1"), "INSERT 0 0");
    itest_exec_sqlstate(d, ROLE_RETURNING("r1"), "23505");
    PGconn *w = itest_connect_ok(p->port, "options='-crole=idem_writer'");
    assert_string_equal(itest_query_text(w, ROLE_RETURNING("r1"), text, sizeof text), "first");
    itest_exec_tag(w, ROLE_INSERT("r1"), "INSERT 0 0");
    assert_int_equal(itest_proxy_log_count(p, learning), 3);
    /* The next such login is answered as the first was, without asking. */
    const char *asking = "asking the server about the session's role and search_path";
    int asked = itest_proxy_log_count(p, asking);
    PGconn *w2 = itest_connect_ok(p->port, "options='-crole=idem_writer'");
    assert_string_equal(itest_query_text(w2, ROLE_RETURNING("r1"), text, sizeof text), "first");
    assert_int_equal(itest_proxy_log_count(p, asking), asked);

    /* A new key as each role: one row each, as directly. */
    itest_exec_tag(w, ROLE_INSERT("r2"), "INSERT 0 1");
    itest_exec_tag(d, ROLE_INSERT("r3"), "INSERT 0 1");

    /* After a reload the role's catalog is learnt anew; sessions that
     * switch to it at the same moment each wait for an answer before
     * their INSERT is decided, whoever asked first. */
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    itest_sleep_ms(300);
    enum { SWITCHERS = 8 };
    PGconn *s[SWITCHERS];
    for (int i = 0; i < SWITCHERS; i++)
        s[i] = itest_connect_ok(p->port, NULL);
    for (int i = 0; i < SWITCHERS; i++)
        assert_int_equal(PQsendQuery(s[i], "SET ROLE idem_writer"), 1);
    for (int i = 0; i < SWITCHERS; i++) {
        PGresult *r = itest_wait_result(s[i], 10000);
        itest_assert_result_ok(r, "SET ROLE after the reload");
        PQclear(r);
    }
    for (int i = 0; i < SWITCHERS; i++)
        assert_int_equal(PQsendQuery(s[i], ROLE_INSERT("r1")), 1);
    for (int i = 0; i < SWITCHERS; i++) {
        PGresult *r = itest_wait_result(s[i], 10000);
        itest_assert_tag(r, "INSERT 0 0", "the INSERT right after switching");
        PQclear(r);
    }
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_role"), 3);
    assert_int_equal(itest_proxy_log_count(p, "from the server"), 0);
    itest_pass();
}

#define BLK_INSERT(key) \
    "INSERT INTO idem_blk (idempotency_key, payload) VALUES ('" key "', 'x')"
#define BLK_RETURNING(key) \
    "INSERT INTO idem_blk (idempotency_key, payload) VALUES ('" key "', 'r') RETURNING payload"

/* How often the proxy asked about a session's identity outside a
 * transaction block. */
static int outside_questions(const struct itest_proxy *p)
{
    return itest_proxy_log_count(p, "about the session's role and search_path") -
           itest_proxy_log_count(p, "about the session's role and search_path inside");
}

/* A block as role, with function revoked from PUBLIC meanwhile, inserts a
 * new key: whatever of the proxy's fails for want of the function, the
 * block goes on as the client left it and its INSERT is made. */
static void block_without_function(PGconn *c, const char *function, const char *role,
                                   const char *insert)
{
    char sql[256], text[64];

    snprintf(sql, sizeof sql, "REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC", function);
    itest_server_exec(sql);
    itest_exec_ok(c, "BEGIN");
    snprintf(sql, sizeof sql, "SET LOCAL ROLE %s", role);
    itest_exec_ok(c, sql);
    itest_exec_tag(c, insert, "INSERT 0 1");
    assert_string_equal(itest_query_text(c, "SELECT current_user", text, sizeof text), role);
    itest_exec_ok(c, "COMMIT");
    snprintf(sql, sizeof sql, "GRANT EXECUTE ON FUNCTION %s TO PUBLIC", function);
    itest_server_exec(sql);
}

/* A role taken for one transaction block (SET LOCAL ROLE, set_config of
 * role with is_local, as PostGraphile sends per request) is asked about
 * inside the block, under the proxy's savepoint, right before the first
 * INSERT that needs it: the block's INSERTs are rewritten as that role's.
 * A statement prepared before is prepared again as the role's before its
 * Bind. What ends the LOCAL setting (ROLLBACK TO, COMMIT) ends the answer
 * too. A role whose catalog is unknown is learnt inside the block, under
 * a savepoint as well. A question that fails is rolled back to its
 * savepoint and leaves the client's block as it was. The question never
 * fails on a schema the role may not use. */
static void test_idem_identity_in_block(void **state)
{
    (void)state;
    create_key_table("idem_blk", "text");
    itest_server_exec(
        "DO $$BEGIN "
        "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'idem_blk_writer') THEN "
        "CREATE ROLE idem_blk_writer; END IF; "
        "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'idem_blk_inserter') THEN "
        "CREATE ROLE idem_blk_inserter; END IF; "
        "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'idem_blk_reader') THEN "
        "CREATE ROLE idem_blk_reader; END IF; END$$; "
        "GRANT SELECT, INSERT, UPDATE ON idem_blk TO idem_blk_writer; "
        "GRANT SELECT, INSERT ON idem_blk TO idem_blk_inserter, idem_blk_reader; "
        "GRANT USAGE ON SEQUENCE idem_blk_id_seq TO idem_blk_writer, idem_blk_inserter, "
        "idem_blk_reader; "
        "DROP SCHEMA IF EXISTS idem_blk_private CASCADE; CREATE SCHEMA idem_blk_private; "
        "CREATE TABLE idem_blk_private.hidden (k text PRIMARY KEY)");
    itest_server_exec("INSERT INTO idem_blk (idempotency_key, payload) VALUES ('b1', 'first')");
    struct itest_proxy *p = itest_proxy_start_with(
        "debug", "workers = 1\ncatalog_check_interval = 0\n"
                 "[table public.idem_blk]\nconflict = idempotency_key\n"
                 "[table idem_blk_private.hidden]\nconflict = k\n");
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *in_block = "search_path inside its transaction block";
    const char *learning = "asking the server about the registered tables";
    const char *failed = "the question about the session's role and search_path failed";
    char text[64];

    /* The roles may not use the schema of the second table: the question
     * answers all the same. */
    itest_exec_ok(c, "SET ROLE idem_blk_writer");
    itest_exec_tag(c, BLK_INSERT("b1"), "INSERT 0 0");
    itest_exec_ok(c, "RESET ROLE");
    assert_int_equal(itest_proxy_log_count(p, failed), 0);

    /* The writer's catalog is known: one question inside the block serves
     * both of its INSERTs, and the role ends with the block, after which
     * the session is as before without a question. */
    int outside = outside_questions(p);
    itest_exec_ok(c, "BEGIN");
    itest_exec_ok(c, "SELECT set_config('role', 'idem_blk_writer', true)");
    itest_exec_tag(c, BLK_INSERT("b1"), "INSERT 0 0");
    assert_string_equal(itest_query_text(c, BLK_RETURNING("b1"), text, sizeof text), "first");
    assert_string_equal(itest_query_text(c, "SELECT current_user", text, sizeof text),
                        "idem_blk_writer");
    itest_exec_ok(c, "COMMIT");
    assert_int_equal(itest_proxy_log_count(p, in_block), 1);
    assert_string_not_equal(itest_query_text(c, "SELECT current_user", text, sizeof text),
                            "idem_blk_writer");
    itest_exec_tag(c, BLK_INSERT("b1"), "INSERT 0 0");
    assert_string_equal(itest_query_text(c, BLK_RETURNING("b1"), text, sizeof text), "first");
    assert_int_equal(outside_questions(p), outside);
    /* A block that also changes the role for the session is asked about
     * after it; so is one that rolls back such a change. */
    itest_exec_ok(c, "BEGIN");
    itest_exec_ok(c, "SET LOCAL search_path TO public");
    itest_exec_ok(c, "SET ROLE idem_blk_writer");
    itest_exec_ok(c, "COMMIT");
    itest_exec_tag(c, BLK_INSERT("b1"), "INSERT 0 0");
    assert_int_equal(outside_questions(p), outside + 1);
    itest_exec_ok(c, "BEGIN");
    itest_exec_ok(c, "RESET ROLE");
    itest_exec_ok(c, "ROLLBACK");
    assert_string_equal(itest_query_text(c, "SELECT current_user", text, sizeof text),
                        "idem_blk_writer");
    assert_int_equal(outside_questions(p), outside + 2);
    itest_exec_ok(c, "RESET ROLE");
    itest_exec_tag(c, BLK_INSERT("b1"), "INSERT 0 0");
    outside = outside_questions(p);

    /* The same in the extended protocol, the role given as a parameter. */
    const char *writer[1] = { "idem_blk_writer" };
    const char *key[1] = { "b1" };
    itest_exec_ok(c, "BEGIN");
    PGresult *r = itest_exec_params(c, "SELECT set_config('role', $1, true)", 1, writer);
    itest_assert_result_ok(r, "set_config of role");
    PQclear(r);
    r = itest_exec_params(c, "INSERT INTO idem_blk (idempotency_key, payload) VALUES ($1, 'x')",
                          1, key);
    itest_assert_tag(r, "INSERT 0 0", "the extended INSERT after set_config");
    PQclear(r);
    itest_exec_ok(c, "COMMIT");
    assert_int_equal(itest_proxy_log_count(p, in_block), 2);
    assert_string_equal(itest_query_text(c, BLK_RETURNING("b1"), text, sizeof text), "first");
    assert_int_equal(outside_questions(p), outside);

    /* A role never seen: its catalog is learnt inside the block, under a
     * savepoint too, before the INSERT is decided. */
    int learnt = itest_proxy_log_count(p, learning);
    itest_exec_ok(c, "BEGIN");
    itest_exec_ok(c, "SET LOCAL ROLE idem_blk_inserter");
    itest_exec_tag(c, BLK_INSERT("b1"), "INSERT 0 0");
    itest_exec_ok(c, "COMMIT");
    assert_int_equal(itest_proxy_log_count(p, learning), learnt + 1);
    assert_int_equal(itest_proxy_log_count(p, "registered tables inside its transaction block"),
                     1);

    /* A rollback to a savepoint undoes SET LOCAL after it: the next INSERT
     * is asked about again and decided as the login role's, which may
     * return the existing row (the inserter's form would fail with 23505
     * and fail the block). */
    int asked = itest_proxy_log_count(p, in_block);
    itest_exec_ok(c, "BEGIN");
    itest_exec_ok(c, "SAVEPOINT a");
    itest_exec_ok(c, "SET LOCAL ROLE idem_blk_inserter");
    itest_exec_tag(c, BLK_INSERT("b1"), "INSERT 0 0");
    itest_exec_ok(c, "ROLLBACK TO SAVEPOINT a");
    assert_string_equal(itest_query_text(c, BLK_RETURNING("b1"), text, sizeof text), "first");
    itest_exec_ok(c, "COMMIT");
    assert_int_equal(itest_proxy_log_count(p, in_block), asked + 2);

    /* A statement prepared before the block and bound inside it after the
     * role changed: asked about before its Bind, and prepared again as the
     * role may run it (the login role's form of an INSERT with RETURNING
     * updates on a conflict, which the inserter may not do: 42501). */
    r = itest_prepare(c, "blk_ins",
                      "INSERT INTO idem_blk (idempotency_key, payload) VALUES ($1, 'p') "
                      "RETURNING payload", 1);
    itest_assert_result_ok(r, "PREPARE blk_ins");
    PQclear(r);
    const char *fresh[1] = { "b3" };
    itest_exec_ok(c, "BEGIN");
    itest_exec_ok(c, "SET LOCAL ROLE idem_blk_inserter");
    r = itest_exec_prepared(c, "blk_ins", 1, fresh);
    itest_assert_tag(r, "INSERT 0 1", "the prepared INSERT bound as the inserter");
    PQclear(r);
    itest_exec_ok(c, "COMMIT");

    /* The writer's form of it is the login role's: nothing is prepared
     * again on the way in or out, since the server would get the same
     * text. */
    const char *again = "prepared again for the rules now in force";
    int prepared_again = itest_proxy_log_count(p, again);
    r = itest_prepare(c, "blk_w",
                      "INSERT INTO idem_blk (idempotency_key, payload) VALUES ($1, 'w') "
                      "RETURNING payload", 1);
    itest_assert_result_ok(r, "PREPARE blk_w");
    PQclear(r);
    itest_exec_ok(c, "BEGIN");
    itest_exec_ok(c, "SET LOCAL ROLE idem_blk_writer");
    r = itest_exec_prepared(c, "blk_w", 1, key);
    itest_assert_result_ok(r, "the prepared INSERT bound as the writer");
    assert_string_equal(PQgetvalue(r, 0, 0), "first");
    PQclear(r);
    itest_exec_ok(c, "COMMIT");
    r = itest_exec_prepared(c, "blk_w", 1, key);
    itest_assert_result_ok(r, "the prepared INSERT after the block");
    assert_string_equal(PQgetvalue(r, 0, 0), "first");
    PQclear(r);
    assert_int_equal(itest_proxy_log_count(p, again), prepared_again);
    assert_true(itest_proxy_log_count(p, "stays as prepared") >= 2);

    /* The question about the identity fails (the role may not call a
     * function it uses): the proxy rolls back to its savepoint, the block
     * goes on as the client left it, and its INSERTs pass unchanged. */
    block_without_function(c, "pg_catalog.to_regnamespace(text)", "idem_blk_writer",
                           BLK_INSERT("b2"));
    itest_assert_log_line(p, "warning", failed, "42501");
    /* So does the catalog query of a role never seen. */
    block_without_function(c, "pg_catalog.has_column_privilege(name, oid, smallint, text)",
                           "idem_blk_reader", BLK_INSERT("b4"));
    itest_assert_log_line(p, "warning", "catalog query", "42501");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM idem_blk"), 4);
    assert_int_equal(itest_proxy_log_count(p, "from the server"), 0);
    itest_pass();
}

/* ---- main ----------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        ITEST(test_idem_concurrency),
        ITEST(test_idem_returning),
        ITEST(test_idem_multirow),
        ITEST(test_idem_deferrable),
        ITEST(test_idem_no_unique_index),
        ITEST(test_idem_shadow),
        ITEST(test_idem_pgbench),
        ITEST(test_idem_error_position),
        ITEST(test_idem_describe),
        ITEST(test_idem_prepared_reuse),
        ITEST(test_idem_unsafe_session),
        ITEST(test_idem_other_database),
        ITEST(test_idem_unregistered_table),
        ITEST(test_idem_reload),
        ITEST(test_idem_redefined_without_rules),
        ITEST(test_idem_multi_statement),
        ITEST(test_idem_quoted_table),
        ITEST(test_idem_catalog_query_hidden),
        ITEST(test_idem_catalog_session_settings),
        ITEST(test_idem_index_dropped),
        ITEST(test_idem_catalog_interval),
        ITEST(test_idem_login_role_privileges),
        ITEST(test_idem_session_identity),
        ITEST(test_idem_local_change_behind_earlier_answer),
        ITEST(test_idem_session_funcall),
        ITEST(test_idem_session_role),
        ITEST(test_idem_identity_in_block),
    };
    return itest_main(argc, argv, "idemproxy idempotent inserts", tests,
                      sizeof tests / sizeof tests[0]);
}
