/*
 * Integration tests: libpq and raw sockets against a real PostgreSQL 15
 * through a real idemproxy process.
 *
 * Run by tests/integration.sh, which starts the scratch cluster and exports
 * IDEMPROXY and IDEM_TEST_*. Every test starts its own proxy with the config
 * it needs, so the tests do not depend on each other's order; the teardown
 * (itest_teardown) stops them and fails the test if a proxy crashed or a
 * sanitizer complained.
 *
 * Run one test: test_integration test_cancel   (a cmocka filter pattern,
 * also taken from IDEM_TEST_FILTER). `test_integration --free-port` prints a
 * free TCP port for integration.sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <libpq/libpq-fs.h>

#include "itest.h"

/* ---- small helpers local to the tests --------------------------------- */

/* A new libpq connection through the proxy runs SELECT 1, and the proxy
 * process is still there: the check after every abuse. */
static void assert_proxy_serves(struct itest_proxy *p, const char *after)
{
    if (!itest_proxy_alive(p))
        fail_msg("proxy died after %s (status 0x%x)", after, p->exit_status);
    PGconn *c = itest_connect(p->port, "application_name=itest_probe");
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("after %s a new connection fails: %s", after, PQerrorMessage(c));
    if (itest_query_ll(c, "SELECT 1") != 1)
        fail_msg("after %s SELECT 1 is wrong", after);
    itest_finish(c);
}

/* Connects raw, sends a StartupMessage unless the proxy already talks, and
 * returns the SQLSTATE of the ErrorResponse it answers with before closing
 * (copied into sqlstate; "" when it closed without one). */
static bool raw_startup_expect_close(int port, const char *user, char sqlstate[6])
{
    int fd = itest_raw_connect(port);
    if (fd < 0)
        fail_msg("raw connect to %d: %s", port, strerror(errno));
    /* A proxy may reject at accept time: read that first, so our startup
     * packet cannot provoke a reset that eats the error. */
    struct pollfd pfd = { fd, POLLIN, 0 };
    if (poll(&pfd, 1, 300) == 0) {
        uint8_t pkt[512];
        size_t n = itest_build_startup(pkt, sizeof pkt, user, ITEST_DBNAME, "itest_raw");
        itest_raw_send(fd, pkt, n); /* may fail if the proxy closed: fine */
    }
    bool closed = itest_raw_wait_closed(fd, 10000, sqlstate);
    itest_raw_close(fd);
    return closed;
}

/* ---- 1. simple and extended query ------------------------------------- */

static void test_simple_and_extended_query(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    PGconn *c = itest_connect_ok(p->port, NULL);

    /* Simple query: values, text with UTF-8, NULL. */
    PGresult *r = itest_exec(c, "SELECT 1 + 1 AS two, 'h\xc3\xa9llo'::text AS t, NULL::int AS n");
    itest_assert_result_ok(r, "simple SELECT");
    assert_int_equal(PQntuples(r), 1);
    assert_int_equal(PQnfields(r), 3);
    assert_string_equal(PQfname(r, 0), "two");
    assert_string_equal(PQgetvalue(r, 0, 0), "2");
    assert_string_equal(PQgetvalue(r, 0, 1), "h\xc3\xa9llo");
    assert_true(PQgetisnull(r, 0, 2));
    PQclear(r);

    /* Several statements in one Query message: the last result counts. */
    r = itest_exec(c, "SELECT 1; SELECT 2 AS second");
    itest_assert_result_ok(r, "two statements");
    assert_string_equal(PQgetvalue(r, 0, 0), "2");
    PQclear(r);

    /* Extended protocol, unnamed statement, text parameters. */
    const char *vals[2] = { "40", "2" };
    assert_int_equal(PQsendQueryParams(c, "SELECT $1::int + $2::int, $1::text || '-' || $2::text", 2,
                                       NULL, vals, NULL, NULL, 0), 1);
    r = itest_wait_result(c, ITEST_QUERY_TIMEOUT_MS);
    itest_assert_result_ok(r, "PQexecParams");
    assert_string_equal(PQgetvalue(r, 0, 0), "42");
    assert_string_equal(PQgetvalue(r, 0, 1), "40-2");
    PQclear(r);

    /* Binary result format. */
    const char *big[1] = { "305419896" }; /* 0x12345678 */
    assert_int_equal(PQsendQueryParams(c, "SELECT $1::int4", 1, NULL, big, NULL, NULL, 1), 1);
    r = itest_wait_result(c, ITEST_QUERY_TIMEOUT_MS);
    itest_assert_result_ok(r, "binary result");
    assert_int_equal(PQgetlength(r, 0, 0), 4);
    assert_memory_equal(PQgetvalue(r, 0, 0), "\x12\x34\x56\x78", 4);
    PQclear(r);

    /* Named prepared statement, executed several times, and described. */
    assert_int_equal(PQsendPrepare(c, "itest_double", "SELECT $1::bigint * 2", 1, NULL), 1);
    r = itest_wait_result(c, ITEST_QUERY_TIMEOUT_MS);
    itest_assert_result_ok(r, "PQprepare");
    PQclear(r);
    const char *inputs[] = { "0", "21", "-5", "1099511627776" };
    const char *outputs[] = { "0", "42", "-10", "2199023255552" };
    for (int i = 0; i < 4; i++) {
        const char *v[1] = { inputs[i] };
        assert_int_equal(PQsendQueryPrepared(c, "itest_double", 1, v, NULL, NULL, 0), 1);
        r = itest_wait_result(c, ITEST_QUERY_TIMEOUT_MS);
        itest_assert_result_ok(r, "PQexecPrepared");
        assert_string_equal(PQgetvalue(r, 0, 0), outputs[i]);
        PQclear(r);
    }
    assert_int_equal(PQsendDescribePrepared(c, "itest_double"), 1);
    r = itest_wait_result(c, ITEST_QUERY_TIMEOUT_MS);
    itest_assert_result_ok(r, "PQdescribePrepared");
    assert_int_equal(PQnparams(r), 1);
    assert_int_equal(PQnfields(r), 1);
    assert_int_equal(PQftype(r, 0), 20); /* int8 */
    PQclear(r);

    /* An error in the extended protocol, then the session works on. */
    const char *bad[1] = { "not a number" };
    assert_int_equal(PQsendQueryParams(c, "SELECT $1::int", 1, NULL, bad, NULL, NULL, 0), 1);
    r = itest_wait_result(c, ITEST_QUERY_TIMEOUT_MS);
    itest_assert_sqlstate(r, "22P02", "bad integer parameter");
    PQclear(r);
    assert_int_equal(itest_query_ll(c, "SELECT 7"), 7);
    itest_pass();
}

/* ---- 2. pipeline of 1000 queries with an error ------------------------ */

#define PIPE_QUERIES 1000
#define PIPE_SYNC_EVERY 100
/* In the segment 501..600: 501..549 succeed, 550 fails, 551..600 are skipped
 * by the server until the Sync after 600; 601.. succeed again. */
#define PIPE_ERROR_AT 550

static void test_pipeline_with_error(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    PGconn *c = itest_connect_ok(p->port, NULL);
    /* Non-blocking, so that sending 1000 queries cannot deadlock against
     * unread results; we flush while reading. */
    assert_int_equal(PQsetnonblocking(c, 1), 0);
    assert_int_equal(PQenterPipelineMode(c), 1);

    char val[16];
    const char *vals[1] = { val };
    for (int i = 1; i <= PIPE_QUERIES; i++) {
        int ok;
        if (i == PIPE_ERROR_AT) {
            ok = PQsendQueryParams(c, "SELECT 1/0", 0, NULL, NULL, NULL, NULL, 0);
        } else {
            snprintf(val, sizeof val, "%d", i);
            ok = PQsendQueryParams(c, "SELECT $1::int", 1, NULL, vals, NULL, NULL, 0);
        }
        if (ok != 1)
            fail_msg("queueing query %d: %s", i, PQerrorMessage(c));
        if (i % PIPE_SYNC_EVERY == 0)
            assert_int_equal(PQpipelineSync(c), 1);
    }

    int n_ok = 0, n_err = 0, n_aborted = 0, n_sync = 0;
    int next = 1; /* the query whose result comes next */
    int nulls = 0;
    int64_t deadline = itest_now_ms() + 60000;
    while (n_sync < PIPE_QUERIES / PIPE_SYNC_EVERY && itest_now_ms() < deadline) {
        int flush = PQflush(c);
        if (flush < 0)
            fail_msg("PQflush: %s", PQerrorMessage(c));
        if (!PQisBusy(c) && nulls < 2) {
            PGresult *r = PQgetResult(c);
            if (r == NULL) {
                nulls++; /* end of one query's results (twice: nothing ready) */
                continue;
            }
            nulls = 0;
            switch (PQresultStatus(r)) {
            case PGRES_TUPLES_OK:
                if (PQntuples(r) != 1 || atoi(PQgetvalue(r, 0, 0)) != next)
                    fail_msg("query %d returned %s", next,
                             PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "no row");
                n_ok++;
                next++;
                break;
            case PGRES_FATAL_ERROR:
                if (next != PIPE_ERROR_AT)
                    fail_msg("query %d failed: %s", next, PQresultErrorMessage(r));
                assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22012");
                n_err++;
                next++;
                break;
            case PGRES_PIPELINE_ABORTED:
                n_aborted++;
                next++;
                break;
            case PGRES_PIPELINE_SYNC:
                n_sync++;
                if (next - 1 != n_sync * PIPE_SYNC_EVERY)
                    fail_msg("Sync %d arrived after query %d", n_sync, next - 1);
                break;
            default:
                fail_msg("query %d: unexpected %s", next, PQresStatus(PQresultStatus(r)));
            }
            PQclear(r);
            continue;
        }
        struct pollfd pfd = { PQsocket(c), (short)(POLLIN | (flush == 1 ? POLLOUT : 0)), 0 };
        poll(&pfd, 1, 100);
        if (!PQconsumeInput(c))
            fail_msg("pipeline: connection lost: %s", PQerrorMessage(c));
        nulls = 0;
    }
    printf("pipeline: %d ok, %d errors, %d aborted, %d syncs\n", n_ok, n_err, n_aborted, n_sync);
    assert_int_equal(n_sync, PIPE_QUERIES / PIPE_SYNC_EVERY);
    assert_int_equal(n_err, 1);
    assert_int_equal(n_aborted, 600 - PIPE_ERROR_AT);
    assert_int_equal(n_ok, PIPE_QUERIES - 1 - (600 - PIPE_ERROR_AT));

    assert_int_equal(PQexitPipelineMode(c), 1);
    assert_int_equal(PQsetnonblocking(c, 0), 0);
    assert_int_equal(itest_query_ll(c, "SELECT 123"), 123);
    itest_pass();
}

/* ---- 3. single-row mode ------------------------------------------------ */

static void test_single_row_mode(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    PGconn *c = itest_connect_ok(p->port, NULL);
    const long long rows = 200000;

    assert_int_equal(PQsendQuery(c, "SELECT g::bigint FROM generate_series(1, 200000) g"), 1);
    assert_int_equal(PQsetSingleRowMode(c), 1);
    long long n = 0, sum = 0;
    int finals = 0;
    int64_t deadline = itest_now_ms() + 120000;
    for (;;) {
        bool timed_out;
        PGresult *r = itest_next_result(c, deadline, &timed_out);
        if (timed_out)
            fail_msg("single-row mode: timed out after %lld rows", n);
        if (r == NULL)
            break;
        switch (PQresultStatus(r)) {
        case PGRES_SINGLE_TUPLE:
            assert_int_equal(PQntuples(r), 1);
            n++;
            sum += atoll(PQgetvalue(r, 0, 0));
            break;
        case PGRES_TUPLES_OK:
            assert_int_equal(PQntuples(r), 0);
            finals++;
            break;
        default:
            fail_msg("single-row mode: %s: %s", PQresStatus(PQresultStatus(r)),
                     PQresultErrorMessage(r));
        }
        PQclear(r);
    }
    assert_int_equal(n, rows);
    assert_int_equal(sum, rows * (rows + 1) / 2);
    assert_int_equal(finals, 1);
    assert_int_equal(itest_query_ll(c, "SELECT 5"), 5);
    itest_pass();
}

/* ---- 4. COPY IN and COPY OUT of 50 MB ---------------------------------- */

static void test_copy_in_out_50mb(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    PGconn *c = itest_connect_ok(p->port, NULL);
    itest_copy_round_trip(c, 51200);
    itest_pass();
}

/* ---- 5. large objects (FunctionCall) ------------------------------------ */

static void test_large_objects(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    PGconn *c = itest_connect_ok(p->port, NULL);
    const int size = 1 << 20;
    char *data = malloc((size_t)size);
    char *back = malloc((size_t)size);
    assert_non_null(data);
    assert_non_null(back);
    uint32_t x = 2463534242u; /* xorshift: bytes that are not all alike */
    for (int i = 0; i < size; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data[i] = (char)x;
    }

    itest_exec_ok(c, "BEGIN");
    Oid oid = lo_creat(c, INV_READ | INV_WRITE);
    if (oid == InvalidOid)
        fail_msg("lo_creat: %s", PQerrorMessage(c));
    int fd = lo_open(c, oid, INV_READ | INV_WRITE);
    if (fd < 0)
        fail_msg("lo_open: %s", PQerrorMessage(c));
    /* One big FunctionCall message (768 kB) and a smaller one. */
    assert_int_equal(lo_write(c, fd, data, 786432), 786432);
    assert_int_equal(lo_write(c, fd, data + 786432, (size_t)size - 786432), size - 786432);
    assert_int_equal(lo_lseek(c, fd, 0, SEEK_SET), 0);
    int got = 0;
    while (got < size) {
        int n = lo_read(c, fd, back + got, 100000);
        if (n <= 0)
            fail_msg("lo_read at %d returned %d: %s", got, n, PQerrorMessage(c));
        got += n;
    }
    assert_int_equal(lo_read(c, fd, back, 1000), 0); /* end of object */
    assert_int_equal(lo_close(c, fd), 0);
    itest_exec_ok(c, "COMMIT");
    assert_int_equal(got, size);
    assert_memory_equal(data, back, (size_t)size);
    free(data);
    free(back);

    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_largeobject_metadata WHERE oid = %u", oid);
    assert_int_equal(itest_query_ll(c, sql), 1);
    assert_int_equal(lo_unlink(c, oid), 1);
    assert_int_equal(itest_query_ll(c, sql), 0);
    itest_pass();
}

/* ---- 6. LISTEN/NOTIFY --------------------------------------------------- */

static void test_listen_notify(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    PGconn *listener = itest_connect_ok(p->port, "application_name=itest_listener");
    PGconn *sender = itest_connect_ok(p->port, "application_name=itest_sender");
    itest_exec_ok(listener, "LISTEN itest_channel");

    long long sender_pid = itest_query_ll(sender, "SELECT pg_backend_pid()");
    /* BackendKeyData passes through unchanged: libpq knows the real PID. */
    assert_int_equal(PQbackendPID(sender), sender_pid);
    itest_exec_ok(sender, "NOTIFY itest_channel, 'first'");
    itest_exec_ok(sender, "SELECT pg_notify('itest_channel', 'second')");

    /* The listener is idle: the notifications arrive unsolicited. */
    const char *want[2] = { "first", "second" };
    int seen = 0;
    int64_t deadline = itest_now_ms() + 10000;
    while (seen < 2 && itest_now_ms() < deadline) {
        struct pollfd pfd = { PQsocket(listener), POLLIN, 0 };
        poll(&pfd, 1, 100);
        if (!PQconsumeInput(listener))
            fail_msg("listener: %s", PQerrorMessage(listener));
        PGnotify *n;
        while ((n = PQnotifies(listener)) != NULL) {
            if (seen >= 2)
                fail_msg("unexpected extra notification %s", n->extra);
            assert_string_equal(n->relname, "itest_channel");
            assert_string_equal(n->extra, want[seen]);
            assert_int_equal(n->be_pid, sender_pid);
            seen++;
            PQfreemem(n);
        }
    }
    assert_int_equal(seen, 2);
    /* The listener's session is still in step. */
    assert_int_equal(itest_query_ll(listener, "SELECT 8"), 8);
    itest_pass();
}

/* ---- 7. NoticeResponse and ParameterStatus ---------------------------- */

struct notices {
    int count;
    char severity[4][32];
    char sqlstate[4][8];
    char message[4][128];
};

static void collect_notice(void *arg, const PGresult *res)
{
    struct notices *n = arg;
    if (n->count >= 4) {
        n->count++;
        return;
    }
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    snprintf(n->severity[n->count], sizeof n->severity[0], "%s", sev ? sev : "");
    snprintf(n->sqlstate[n->count], sizeof n->sqlstate[0], "%s", code ? code : "");
    snprintf(n->message[n->count], sizeof n->message[0], "%s", msg ? msg : "");
    n->count++;
}

static void test_notice_and_parameter_status(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    PGconn *c = itest_connect_ok(p->port, "application_name=itest_start");
    struct notices n;
    memset(&n, 0, sizeof n);
    PQsetNoticeReceiver(c, collect_notice, &n);

    itest_exec_ok(c, "DO $$ BEGIN RAISE NOTICE 'itest notice %', 42; "
                     "RAISE WARNING 'itest warning'; END $$");
    assert_int_equal(n.count, 2);
    assert_string_equal(n.severity[0], "NOTICE");
    assert_string_equal(n.sqlstate[0], "00000");
    assert_string_equal(n.message[0], "itest notice 42");
    assert_string_equal(n.severity[1], "WARNING");
    assert_string_equal(n.sqlstate[1], "01000");
    assert_string_equal(n.message[1], "itest warning");

    /* ParameterStatus from the startup and from SET, simple and extended. */
    const char *version = PQparameterStatus(c, "server_version");
    assert_non_null(version);
    assert_true(strncmp(version, "15", 2) == 0);
    assert_string_equal(PQparameterStatus(c, "application_name"), "itest_start");
    itest_exec_ok(c, "SET application_name = 'itest_ps'");
    assert_string_equal(PQparameterStatus(c, "application_name"), "itest_ps");
    itest_exec_ok(c, "SET TimeZone = 'Asia/Tokyo'");
    assert_string_equal(PQparameterStatus(c, "TimeZone"), "Asia/Tokyo");
    assert_int_equal(PQsendQueryParams(c, "SET application_name = 'itest_ext'", 0, NULL, NULL,
                                       NULL, NULL, 0), 1);
    PGresult *r = itest_wait_result(c, ITEST_QUERY_TIMEOUT_MS);
    itest_assert_result_ok(r, "SET via extended protocol");
    PQclear(r);
    assert_string_equal(PQparameterStatus(c, "application_name"), "itest_ext");
    itest_pass();
}

/* ---- 8. cancel ---------------------------------------------------------- */

static void test_cancel(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    PGconn *c = itest_connect_ok(p->port, "application_name=itest_cancel");
    assert_int_equal(PQsendQuery(c, "SELECT pg_sleep(20)"), 1);
    assert_true(itest_server_wait_ll(1, 10000,
                                     "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                     "'itest_cancel' AND state = 'active'"));

    int64_t t0 = itest_now_ms();
    PGcancel *cancel = PQgetCancel(c);
    assert_non_null(cancel);
    char err[256] = "";
    int sent = PQcancel(cancel, err, sizeof err);
    PQfreeCancel(cancel);
    if (!sent)
        fail_msg("PQcancel: %s", err);
    PGresult *r = itest_wait_result(c, 15000);
    int64_t elapsed = itest_now_ms() - t0;
    printf("cancel: result after %lld ms\n", (long long)elapsed);
    itest_assert_sqlstate(r, "57014", "cancelled pg_sleep");
    PQclear(r);
    assert_true(elapsed < 5000);
    /* The connection survives its cancelled query. */
    itest_cancel_settle();
    assert_int_equal(itest_query_ll(c, "SELECT 9"), 9);
    itest_pass();
}

/* ---- 9. md5 and SCRAM logins ------------------------------------------- */

static uint32_t get32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* Reads one message and checks it is an authentication request of `code`. */
static struct itest_msg expect_auth(int fd, uint32_t code)
{
    struct itest_msg m;
    enum itest_read rr = itest_raw_read_msg(fd, &m, 10000);
    if (rr != ITEST_READ_OK)
        fail_msg("waiting for authentication request %u: read status %d", code, (int)rr);
    if (m.type != 'R' || m.len < 4 || get32(m.body) != code) {
        const char *msg = itest_msg_field(&m, 'M');
        fail_msg("expected authentication request %u, got '%c' %u %s", code, m.type,
                 m.len >= 4 ? get32(m.body) : 0, msg ? msg : "");
    }
    return m;
}

static void expect_error_code(int fd, const char *sqlstate)
{
    struct itest_msg m;
    enum itest_read rr = itest_raw_read_msg(fd, &m, 10000);
    if (rr != ITEST_READ_OK)
        fail_msg("waiting for ErrorResponse %s: read status %d", sqlstate, (int)rr);
    if (m.type != 'E')
        fail_msg("expected ErrorResponse %s, got '%c'", sqlstate, m.type);
    const char *code = itest_msg_field(&m, 'C');
    if (code == NULL || strcmp(code, sqlstate) != 0)
        fail_msg("expected SQLSTATE %s, got %s", sqlstate, code ? code : "none");
    itest_msg_free(&m);
}

static void test_md5_and_scram_login(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);

    PGconn *c = itest_connect_ok(p->port, "user=" ITEST_MD5_USER " password=" ITEST_MD5_PASSWORD);
    assert_true(PQconnectionUsedPassword(c));
    PGresult *r = itest_exec(c, "SELECT current_user");
    itest_assert_result_ok(r, "current_user (md5)");
    assert_string_equal(PQgetvalue(r, 0, 0), ITEST_MD5_USER);
    PQclear(r);
    itest_finish(c);

    c = itest_connect_ok(p->port, "user=" ITEST_SCRAM_USER " password=" ITEST_SCRAM_PASSWORD);
    assert_true(PQconnectionUsedPassword(c));
    r = itest_exec(c, "SELECT current_user");
    itest_assert_result_ok(r, "current_user (scram)");
    assert_string_equal(PQgetvalue(r, 0, 0), ITEST_SCRAM_USER);
    PQclear(r);
    itest_finish(c);

    /* Wrong passwords through libpq: the server's message arrives. */
    const char *wrong[] = { "user=" ITEST_MD5_USER " password=wrong",
                            "user=" ITEST_SCRAM_USER " password=wrong" };
    for (int i = 0; i < 2; i++) {
        c = itest_connect(p->port, wrong[i]);
        assert_int_equal(PQstatus(c), CONNECTION_BAD);
        if (strstr(PQerrorMessage(c), "password authentication failed") == NULL)
            fail_msg("%s: unexpected message: %s", wrong[i], PQerrorMessage(c));
        itest_finish(c);
    }

    /* The same on raw sockets, to see the SQLSTATE: md5 with a wrong hash. */
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    uint8_t pkt[512];
    size_t n = itest_build_startup(pkt, sizeof pkt, ITEST_MD5_USER, ITEST_DBNAME, NULL);
    assert_true(itest_raw_send(fd, pkt, n));
    struct itest_msg m = expect_auth(fd, 5); /* AuthenticationMD5Password */
    assert_int_equal(m.len, 8);
    itest_msg_free(&m);
    const char md5_reply[] = "md500000000000000000000000000000000";
    n = itest_build_msg(pkt, sizeof pkt, 'p', md5_reply, sizeof md5_reply);
    assert_true(itest_raw_send(fd, pkt, n));
    expect_error_code(fd, "28P01");
    itest_raw_close(fd);

    /* SCRAM with a wrong proof. */
    fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    n = itest_build_startup(pkt, sizeof pkt, ITEST_SCRAM_USER, ITEST_DBNAME, NULL);
    assert_true(itest_raw_send(fd, pkt, n));
    m = expect_auth(fd, 10); /* AuthenticationSASL */
    assert_non_null(memmem(m.body, m.len, "SCRAM-SHA-256", 13));
    itest_msg_free(&m);
    const char mech[] = "SCRAM-SHA-256";
    const char first[] = "n,,n=,r=itestclientnonce0123456789";
    uint8_t body[256];
    size_t bl = 0;
    memcpy(body, mech, sizeof mech);
    bl += sizeof mech;
    uint32_t flen = (uint32_t)strlen(first);
    body[bl++] = (uint8_t)(flen >> 24);
    body[bl++] = (uint8_t)(flen >> 16);
    body[bl++] = (uint8_t)(flen >> 8);
    body[bl++] = (uint8_t)flen;
    memcpy(body + bl, first, flen);
    bl += flen;
    n = itest_build_msg(pkt, sizeof pkt, 'p', body, bl);
    assert_true(itest_raw_send(fd, pkt, n));
    m = expect_auth(fd, 11); /* AuthenticationSASLContinue: r=...,s=...,i=... */
    char server_first[256];
    snprintf(server_first, sizeof server_first, "%.*s", (int)(m.len - 4), (const char *)m.body + 4);
    itest_msg_free(&m);
    assert_true(strncmp(server_first, "r=itestclientnonce0123456789", 28) == 0);
    char *comma = strchr(server_first, ',');
    assert_non_null(comma);
    *comma = '\0';
    char final[512];
    /* 32 zero bytes as the proof: certainly wrong. */
    int fl = snprintf(final, sizeof final, "c=biws,%s,p=%s", server_first,
                      "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    n = itest_build_msg(pkt, sizeof pkt, 'p', final, (size_t)fl);
    assert_true(itest_raw_send(fd, pkt, n));
    expect_error_code(fd, "28P01");
    itest_raw_close(fd);
    assert_proxy_serves(p, "failed logins");
    itest_pass();
}

/* ---- 10. 200 concurrent connections ------------------------------------ */

#define MANY 200

static void test_200_concurrent_connections(void **state)
{
    (void)state;
    struct itest_proxy_opts opts = { .extra = "max_client_conn = 300\n" };
    struct itest_proxy *p = itest_proxy_start(&opts);
    PGconn *conns[MANY];
    PostgresPollingStatusType st[MANY];
    char conninfo[512];
    snprintf(conninfo, sizeof conninfo,
             "host=127.0.0.1 port=%d user=%s dbname=%s application_name=itest_many", p->port,
             itest_pg_user(), ITEST_DBNAME);
    for (int i = 0; i < MANY; i++) {
        conns[i] = PQconnectStart(conninfo);
        assert_non_null(conns[i]);
        itest_track_conn(conns[i]);
        if (PQstatus(conns[i]) == CONNECTION_BAD)
            fail_msg("PQconnectStart %d: %s", i, PQerrorMessage(conns[i]));
        st[i] = PGRES_POLLING_WRITING;
    }
    /* Drive all 200 handshakes at once. */
    int64_t deadline = itest_now_ms() + 90000;
    int done = 0;
    while (done < MANY) {
        if (itest_now_ms() > deadline)
            fail_msg("only %d of %d connections completed in 90 s", done, MANY);
        struct pollfd pfds[MANY];
        int idx[MANY], np = 0;
        for (int i = 0; i < MANY; i++) {
            if (st[i] == PGRES_POLLING_OK)
                continue;
            pfds[np].fd = PQsocket(conns[i]);
            pfds[np].events = st[i] == PGRES_POLLING_READING ? POLLIN : POLLOUT;
            pfds[np].revents = 0;
            idx[np++] = i;
        }
        poll(pfds, (nfds_t)np, 100);
        for (int k = 0; k < np; k++) {
            if (pfds[k].revents == 0)
                continue;
            int i = idx[k];
            st[i] = PQconnectPoll(conns[i]);
            if (st[i] == PGRES_POLLING_FAILED)
                fail_msg("connection %d failed: %s", i, PQerrorMessage(conns[i]));
            if (st[i] == PGRES_POLLING_OK)
                done++;
        }
    }
    /* All run a query at the same time. */
    for (int i = 0; i < MANY; i++)
        assert_int_equal(PQsendQuery(conns[i], "SELECT 1"), 1);
    for (int i = 0; i < MANY; i++) {
        PGresult *r = itest_wait_result(conns[i], ITEST_QUERY_TIMEOUT_MS);
        itest_assert_result_ok(r, "SELECT 1 on one of 200");
        assert_string_equal(PQgetvalue(r, 0, 0), "1");
        PQclear(r);
    }
    assert_int_equal(itest_server_ll("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE application_name = 'itest_many'"), MANY);
    for (int i = 0; i < MANY; i++)
        itest_finish(conns[i]);
    /* Closing the clients closes their server connections. */
    assert_true(itest_server_wait_ll(0, 15000, "SELECT count(*) FROM pg_stat_activity "
                                                "WHERE application_name = 'itest_many'"));
    assert_proxy_serves(p, "200 connections");
    itest_pass();
}

/* ---- 11. a client killed mid-query ------------------------------------- */

static void test_client_killed_mid_query(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    char conninfo[512];
    snprintf(conninfo, sizeof conninfo,
             "host=127.0.0.1 port=%d user=%s dbname=%s application_name=itest_killed "
             "connect_timeout=10", p->port, itest_pg_user(), ITEST_DBNAME);
    fflush(stdout);
    pid_t parent = getpid();
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        PGconn *c = PQconnectdb(conninfo);
        if (PQstatus(c) != CONNECTION_OK)
            _exit(3);
        PGresult *r = PQexec(c, "SELECT pg_sleep(3)");
        (void)r;
        _exit(0);
    }
    bool running = itest_server_wait_ll(1, 10000, "SELECT count(*) FROM pg_stat_activity WHERE "
                                                  "application_name = 'itest_killed' AND "
                                                  "state = 'active'");
    itest_sleep_ms(500);
    kill(child, SIGKILL);
    int status = 0;
    waitpid(child, &status, 0); /* SIGKILL: immediate */
    if (!running)
        fail_msg("the child's query never showed up as active");
    assert_true(WIFSIGNALED(status));

    assert_proxy_serves(p, "a client was killed");
    /* pg_sleep(3) ends; the server connection must not linger after it. */
    assert_true(itest_server_wait_ll(0, 10000, "SELECT count(*) FROM pg_stat_activity "
                                               "WHERE application_name = 'itest_killed'"));
    assert_proxy_serves(p, "the killed client's backend ended");
    itest_pass();
}

/* A client that says Terminate and waits for the proxy to close (as
 * psycopg and pgjdbc close): the server's close after the goodbye is the
 * session's end, not a lost server; the client is told nothing more. */
static void test_terminate_then_wait(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    itest_raw_login(fd, itest_pg_user(), "itest_goodbye");
    static const uint8_t terminate[5] = { 'X', 0, 0, 0, 4 };
    assert_true(itest_raw_send(fd, terminate, sizeof terminate));
    uint8_t extra[64];
    ssize_t got = itest_raw_recv(fd, extra, sizeof extra, 10000);
    if (got != 0)
        fail_msg("after Terminate the proxy sent %zd bytes (first %c) instead of closing", got,
                 got > 0 ? extra[0] : '?');
    itest_raw_close(fd);
    itest_proxy_wait_log_count(p, "closed: client left", 1);
    if (itest_proxy_log_contains(p, "server connection lost"))
        fail_msg("the server's close after Terminate was logged as a lost server");
    itest_pass();
}

/* ---- 12. PostgreSQL restarted under the proxy --------------------------- */

static void test_server_restart(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    PGconn *c = itest_connect_ok(p->port, "application_name=itest_restart");
    assert_int_equal(itest_query_ll(c, "SELECT 1"), 1);

    const char *log = getenv("IDEM_TEST_PGLOG");
    const char *args[] = { "restart", "-m", "fast", "-w", "-t", "60", log ? "-l" : NULL, log, NULL };
    assert_true(itest_pg_ctl(args));

    /* The old session is gone: its next query must fail promptly. */
    if (PQsendQuery(c, "SELECT 1")) {
        PGresult *r = itest_wait_result(c, 15000);
        if (r == NULL && PQstatus(c) == CONNECTION_OK)
            fail_msg("query on a connection whose server restarted: no answer in 15 s (hang)");
        if (r != NULL && PQresultStatus(r) == PGRES_TUPLES_OK)
            fail_msg("query on a connection whose server restarted succeeded");
        PQclear(r);
    }
    printf("after restart the old connection reports: %s", PQerrorMessage(c));
    assert_true(PQstatus(c) == CONNECTION_BAD || strlen(PQerrorMessage(c)) > 0);
    assert_true(strlen(PQerrorMessage(c)) > 0);
    itest_finish(c);

    /* New connections work again. */
    int64_t deadline = itest_now_ms() + 20000;
    for (;;) {
        PGconn *n = itest_connect(p->port, NULL);
        if (PQstatus(n) == CONNECTION_OK) {
            assert_int_equal(itest_query_ll(n, "SELECT 2"), 2);
            itest_finish(n);
            break;
        }
        if (itest_now_ms() > deadline)
            fail_msg("no new connection through the proxy after the restart: %s",
                     PQerrorMessage(n));
        itest_finish(n);
        itest_sleep_ms(200);
    }
    assert_true(itest_proxy_alive(p));
    itest_pass();
}

/* ---- 13. every field of a 23505 ---------------------------------------- */

static void check_23505(PGresult *r)
{
    itest_assert_sqlstate(r, "23505", "duplicate insert");
    itest_assert_field(r, PG_DIAG_SEVERITY, "ERROR", "SEVERITY");
    itest_assert_field(r, PG_DIAG_SEVERITY_NONLOCALIZED, "ERROR", "SEVERITY_NONLOCALIZED");
    itest_assert_field(r, PG_DIAG_MESSAGE_PRIMARY,
                       "duplicate key value violates unique constraint \"itest_unique_id_key\"",
                       "MESSAGE");
    itest_assert_field(r, PG_DIAG_MESSAGE_DETAIL, "Key (id)=(1) already exists.", "DETAIL");
    itest_assert_field(r, PG_DIAG_SCHEMA_NAME, "public", "SCHEMA_NAME");
    itest_assert_field(r, PG_DIAG_TABLE_NAME, "itest_unique", "TABLE_NAME");
    itest_assert_field(r, PG_DIAG_CONSTRAINT_NAME, "itest_unique_id_key", "CONSTRAINT_NAME");
    itest_assert_field(r, PG_DIAG_SOURCE_FILE, "nbtinsert.c", "SOURCE_FILE");
    itest_assert_field(r, PG_DIAG_SOURCE_FUNCTION, "_bt_check_unique", "SOURCE_FUNCTION");
    assert_non_null(PQresultErrorField(r, PG_DIAG_SOURCE_LINE));
    assert_true(atoi(PQresultErrorField(r, PG_DIAG_SOURCE_LINE)) > 0);
}

static void test_unique_violation_fields(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    PGconn *c = itest_connect_ok(p->port, NULL);
    itest_exec_ok(c, "DROP TABLE IF EXISTS public.itest_unique");
    itest_exec_ok(c, "CREATE TABLE public.itest_unique "
                     "(id int CONSTRAINT itest_unique_id_key UNIQUE, note text)");
    itest_exec_ok(c, "INSERT INTO public.itest_unique VALUES (1, 'first')");

    PGresult *r = itest_exec(c, "INSERT INTO public.itest_unique VALUES (1, 'again')");
    check_23505(r);
    PQclear(r);

    const char *vals[2] = { "1", "again" };
    assert_int_equal(PQsendQueryParams(c, "INSERT INTO public.itest_unique VALUES ($1, $2)", 2,
                                       NULL, vals, NULL, NULL, 0), 1);
    r = itest_wait_result(c, ITEST_QUERY_TIMEOUT_MS);
    check_23505(r);
    PQclear(r);

    assert_int_equal(itest_query_ll(c, "SELECT count(*) FROM public.itest_unique"), 1);
    itest_exec_ok(c, "DROP TABLE public.itest_unique");
    itest_pass();
}

/* ---- 14. server unreachable -------------------------------------------- */

static void test_server_unreachable(void **state)
{
    (void)state;
    int dead_port = itest_free_port(); /* nobody listens there */
    struct itest_proxy_opts opts = { .server_port = dead_port,
                                     .extra = "server_connect_timeout = 3\n" };
    struct itest_proxy *p = itest_proxy_start(&opts);
    char where[64];
    snprintf(where, sizeof where, "127.0.0.1:%d", dead_port);

    PGconn *c = itest_connect(p->port, NULL);
    assert_int_equal(PQstatus(c), CONNECTION_BAD);
    printf("libpq says: %s", PQerrorMessage(c));
    if (strstr(PQerrorMessage(c), where) == NULL)
        fail_msg("the error does not name %s: %s", where, PQerrorMessage(c));
    itest_finish(c);

    /* The ErrorResponse itself: code 08001, message naming host:port. */
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    uint8_t pkt[512];
    size_t n = itest_build_startup(pkt, sizeof pkt, itest_pg_user(), ITEST_DBNAME, NULL);
    assert_true(itest_raw_send(fd, pkt, n));
    struct itest_msg m;
    assert_int_equal(itest_raw_read_msg(fd, &m, 15000), ITEST_READ_OK);
    assert_int_equal(m.type, 'E');
    const char *code = itest_msg_field(&m, 'C');
    assert_non_null(code);
    assert_string_equal(code, "08001");
    const char *msg = itest_msg_field(&m, 'M');
    assert_non_null(msg);
    assert_non_null(strstr(msg, where));
    itest_msg_free(&m);
    char sqlstate[6];
    assert_true(itest_raw_wait_closed(fd, 5000, sqlstate));
    itest_raw_close(fd);
    assert_true(itest_proxy_alive(p));
    itest_pass();
}

/* ---- 15. max_client_conn ------------------------------------------------ */

static void test_max_client_conn(void **state)
{
    (void)state;
    int mport = itest_free_port();
    char extra[96];
    snprintf(extra, sizeof extra, "max_client_conn = 2\nmetrics_port = %d\n", mport);
    struct itest_proxy_opts opts = { .extra = extra };
    struct itest_proxy *p = itest_proxy_start(&opts);
    PGconn *c1 = itest_connect_ok(p->port, NULL);
    PGconn *c2 = itest_connect_ok(p->port, NULL);
    assert_int_equal(itest_query_ll(c1, "SELECT 1"), 1);
    assert_int_equal(itest_query_ll(c2, "SELECT 2"), 2);

    PGconn *c3 = itest_connect(p->port, NULL);
    assert_int_equal(PQstatus(c3), CONNECTION_BAD);
    printf("third connection: %s", PQerrorMessage(c3));
    itest_finish(c3);

    char sqlstate[6];
    assert_true(raw_startup_expect_close(p->port, itest_pg_user(), sqlstate));
    assert_string_equal(sqlstate, "53300");

    /* Each turned away is counted, by its reason (before the
     * retries below, which may meet the slot not yet free). */
    char *text = itest_http_get(mport, "/metrics");
    assert_int_equal(itest_metric(text, "idemproxy_clients_refused_total{reason=\"max_client_conn\"}"),
                     2);
    assert_int_equal(itest_metric(text, "idemproxy_clients_refused_total{reason=\"file_descriptors\"}"),
                     0);
    free(text);
    /* The first two still work; after one leaves, a new one gets in. */
    assert_int_equal(itest_query_ll(c2, "SELECT 3"), 3);
    itest_finish(c1);
    int64_t deadline = itest_now_ms() + 5000;
    PGconn *c4;
    for (;;) {
        c4 = itest_connect(p->port, NULL);
        if (PQstatus(c4) == CONNECTION_OK)
            break;
        if (itest_now_ms() > deadline)
            fail_msg("no slot after closing a client: %s", PQerrorMessage(c4));
        itest_finish(c4);
        itest_sleep_ms(100);
    }
    assert_int_equal(itest_query_ll(c4, "SELECT 4"), 4);
    itest_pass();
}

/* ---- 16. malformed input on raw sockets --------------------------------- */

static void expect_rejected(struct itest_proxy *p, const void *bytes, size_t len, const char *what)
{
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    itest_raw_send(fd, bytes, len);
    char sqlstate[6];
    if (!itest_raw_wait_closed(fd, 10000, sqlstate))
        fail_msg("%s: the proxy kept the connection open for 10 s", what);
    printf("%s: closed, SQLSTATE '%s'\n", what, sqlstate);
    if (sqlstate[0] != '\0')
        assert_string_equal(sqlstate, "08P01");
    itest_raw_close(fd);
    assert_proxy_serves(p, what);
}

static void test_malformed_input(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);

    const uint8_t len3[] = { 0, 0, 0, 3 };
    expect_rejected(p, len3, sizeof len3, "startup length 3");

    /* Only the head of a 20000-byte startup packet: the proxy must not
     * wait for the rest. */
    uint8_t len20000[64] = { 0, 0, 0x4e, 0x20, 0, 3, 0, 0 };
    memcpy(len20000 + 8, "user", 5);
    expect_rejected(p, len20000, sizeof len20000, "startup length 20000");

    const char http[] = "GET / HTTP/1.1\r\nHost: idemproxy\r\n\r\n";
    expect_rejected(p, http, sizeof http - 1, "HTTP request");

    uint8_t garbage[256];
    for (size_t i = 0; i < sizeof garbage; i++)
        garbage[i] = (uint8_t)(0xff - i * 7);
    expect_rejected(p, garbage, sizeof garbage, "garbage bytes");

    /* After login: a Query whose length field (2) is below 4. */
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    itest_raw_login(fd, itest_pg_user(), "itest_badlen");
    const uint8_t bad_query[] = { 'Q', 0, 0, 0, 2 };
    assert_true(itest_raw_send(fd, bad_query, sizeof bad_query));
    char sqlstate[6];
    if (!itest_raw_wait_closed(fd, 10000, sqlstate))
        fail_msg("message length 2: the proxy kept the connection open for 10 s");
    printf("message length 2: closed, SQLSTATE '%s'\n", sqlstate);
    if (sqlstate[0] != '\0')
        assert_string_equal(sqlstate, "08P01");
    itest_raw_close(fd);
    assert_true(itest_server_wait_ll(0, 10000, "SELECT count(*) FROM pg_stat_activity "
                                               "WHERE application_name = 'itest_badlen'"));
    assert_proxy_serves(p, "message length 2");

    /* A client vanishing in the middle of a message. */
    fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    itest_raw_login(fd, itest_pg_user(), "itest_halfmsg");
    const uint8_t half[] = { 'Q', 0, 0, 0, 100, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '1' };
    assert_true(itest_raw_send(fd, half, sizeof half));
    itest_sleep_ms(100);
    itest_raw_close(fd);
    assert_true(itest_server_wait_ll(0, 10000, "SELECT count(*) FROM pg_stat_activity "
                                               "WHERE application_name = 'itest_halfmsg'"));
    assert_proxy_serves(p, "a client vanished mid-message");

    /* A startup packet cut short by the client closing. */
    fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    const uint8_t short_startup[] = { 0, 0, 0, 40, 0, 3, 0, 0, 'u', 's' };
    assert_true(itest_raw_send(fd, short_startup, sizeof short_startup));
    itest_raw_close(fd);
    assert_proxy_serves(p, "a client vanished mid-startup");
    itest_pass();
}

/* ---- 17. SSLRequest and GSSENCRequest ---------------------------------- */

static void raw_select_42(int fd)
{
    uint8_t pkt[128];
    const char sql[] = "SELECT 41 + 1";
    size_t n = itest_build_msg(pkt, sizeof pkt, 'Q', sql, sizeof sql);
    assert_true(itest_raw_send(fd, pkt, n));
    bool saw_row = false;
    for (int i = 0; i < 20; i++) {
        struct itest_msg m;
        assert_int_equal(itest_raw_read_msg(fd, &m, 10000), ITEST_READ_OK);
        char type = m.type;
        if (type == 'D') {
            /* DataRow: int16 count, int32 length, bytes */
            assert_true(m.len >= 8);
            assert_int_equal(get32(m.body + 2), 2);
            assert_memory_equal(m.body + 6, "42", 2);
            saw_row = true;
        }
        if (type == 'E')
            fail_msg("SELECT on raw socket failed");
        itest_msg_free(&m);
        if (type == 'Z')
            break;
    }
    assert_true(saw_row);
    const uint8_t terminate[] = { 'X', 0, 0, 0, 4 };
    itest_raw_send(fd, terminate, sizeof terminate);
}

static void test_ssl_and_gssenc_request(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    const uint8_t ssl_request[] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f };    /* 80877103 */
    const uint8_t gssenc_request[] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30 }; /* 80877104 */

    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    assert_true(itest_raw_send(fd, ssl_request, sizeof ssl_request));
    assert_int_equal(itest_raw_read_byte(fd, 10000), 'N');
    itest_raw_login(fd, itest_pg_user(), "itest_after_ssl_n");
    raw_select_42(fd);
    itest_raw_close(fd);

    fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    assert_true(itest_raw_send(fd, gssenc_request, sizeof gssenc_request));
    assert_int_equal(itest_raw_read_byte(fd, 10000), 'N');
    itest_raw_login(fd, itest_pg_user(), "itest_after_gss_n");
    raw_select_42(fd);
    itest_raw_close(fd);

    /* Both in a row, as a client that tries GSS first and then SSL does. */
    fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    assert_true(itest_raw_send(fd, gssenc_request, sizeof gssenc_request));
    assert_int_equal(itest_raw_read_byte(fd, 10000), 'N');
    assert_true(itest_raw_send(fd, ssl_request, sizeof ssl_request));
    assert_int_equal(itest_raw_read_byte(fd, 10000), 'N');
    itest_raw_login(fd, itest_pg_user(), "itest_after_both_n");
    raw_select_42(fd);
    itest_raw_close(fd);

    /* libpq: prefer and disable work, require fails the libpq way. */
    PGconn *c = itest_connect_ok(p->port, "sslmode=prefer");
    assert_int_equal(PQsslInUse(c), 0);
    itest_finish(c);
    c = itest_connect_ok(p->port, "sslmode=disable gssencmode=disable");
    itest_finish(c);
    c = itest_connect(p->port, "sslmode=require");
    assert_int_equal(PQstatus(c), CONNECTION_BAD);
    if (strstr(PQerrorMessage(c), "server does not support SSL") == NULL)
        fail_msg("sslmode=require: unexpected message: %s", PQerrorMessage(c));
    itest_finish(c);
    assert_proxy_serves(p, "SSL/GSS requests");
    itest_pass();
}

/* ---- 18. backpressure --------------------------------------------------- */

/* Follows the framing of a RowDescription + DataRow stream chunk by chunk. */
struct frame_check {
    uint8_t head[5];
    int head_have;
    size_t body_left;
    long rows;
    bool done; /* the ReadyForQuery after the CommandComplete arrived */
    bool bad;
    char why[128];
};

static void frame_feed(struct frame_check *f, const uint8_t *p, size_t n)
{
    while (n > 0 && !f->bad) {
        if (f->body_left > 0) {
            size_t k = n < f->body_left ? n : f->body_left;
            f->body_left -= k;
            p += k;
            n -= k;
            continue;
        }
        f->head[f->head_have++] = *p++;
        n--;
        if (f->head_have < 5)
            continue;
        f->head_have = 0;
        uint32_t len = get32(f->head + 1);
        char type = (char)f->head[0];
        bool first = f->rows == 0 && type == 'T';
        if (first) {
            f->rows = -1; /* RowDescription seen */
        } else if (type == 'D' && f->rows != 0 && len == 4 + 2 + 4 + 1000000) {
            f->rows = f->rows < 0 ? 1 : f->rows + 1;
        } else if (type == 'C' && f->rows > 0) {
            /* "SELECT n": ReadyForQuery must follow. */
        } else if (type == 'Z' && f->rows > 0 && len == 5) {
            f->done = true;
        } else {
            f->bad = true;
            snprintf(f->why, sizeof f->why, "unexpected message '%c' length %u after %ld rows",
                     type, len, f->rows);
        }
        f->body_left = len - 4;
    }
}

static void test_backpressure(void **state)
{
    (void)state;
    /* Under AddressSanitizer freed memory sits in a 256 MB quarantine and
     * stays resident; that would measure ASan, not the proxy. */
    struct itest_proxy_opts opts = { .asan_options = "quarantine_size_mb=0" };
    struct itest_proxy *p = itest_proxy_start(&opts);
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    itest_raw_login(fd, itest_pg_user(), "itest_backpressure");
    long base = itest_rss_kb(p->pid);
    assert_true(base > 0);

    uint8_t pkt[256];
    const char sql[] = "SELECT repeat('x', 1000000) FROM generate_series(1, 1000)"; /* 1 GB */
    size_t n = itest_build_msg(pkt, sizeof pkt, 'Q', sql, sizeof sql);
    assert_true(itest_raw_send(fd, pkt, n));

    /* Not reading: the proxy must stop reading from the server. */
    long peak = itest_rss_peak(p->pid, base, 2000);
    printf("backpressure: RSS baseline %ld kB, peak while the client stalls %ld kB\n", base, peak);
    itest_assert_rss_bounded(base, peak, "while the client did not read");

    /* Now read all of it, slowly, and check the stream's framing. */
    const long rows = 1000;
    size_t got = 0, since_sample = 0;
    static uint8_t buf[256 * 1024];
    struct frame_check fc;
    memset(&fc, 0, sizeof fc);
    int64_t deadline = itest_now_ms() + 150000;
    while (!fc.done) {
        if (itest_now_ms() > deadline)
            fail_msg("read only %zu bytes in 150 s", got);
        ssize_t r = itest_raw_recv(fd, buf, sizeof buf, 10000);
        if (r <= 0)
            fail_msg("stream ended or stalled after %zu bytes (%zd)", got, r);
        frame_feed(&fc, buf, (size_t)r);
        if (fc.bad)
            fail_msg("corrupt stream after %zu bytes: %s", got, fc.why);
        got += (size_t)r;
        since_sample += (size_t)r;
        if (since_sample >= (8u << 20)) {
            since_sample = 0;
            long rss = itest_rss_kb(p->pid);
            if (rss > peak)
                peak = rss;
            itest_sleep_ms(5);
        }
    }
    printf("backpressure: read %zu bytes (%ld rows), peak RSS %ld kB\n", got, fc.rows, peak);
    assert_int_equal(fc.rows, rows);
    itest_assert_rss_bounded(base, peak, "while streaming");

    itest_raw_close(fd);
    assert_proxy_serves(p, "a client read a 1 GB result slowly");
    assert_true(itest_server_wait_ll(0, 30000, "SELECT count(*) FROM pg_stat_activity "
                                               "WHERE application_name = 'itest_backpressure'"));
    itest_pass();
}

/* ---- 19. SIGTERM -------------------------------------------------------- */

/* Whether the proxy closes conn within timeout_ms. */
static bool closed_within(PGconn *conn, int timeout_ms)
{
    int64_t deadline = itest_now_ms() + timeout_ms;

    while (itest_now_ms() < deadline) {
        struct pollfd pfd = { PQsocket(conn), POLLIN, 0 };
        poll(&pfd, 1, 100);
        if ((pfd.revents != 0 && !PQconsumeInput(conn)) || PQstatus(conn) == CONNECTION_BAD)
            return true;
    }
    return false;
}

static void test_sigterm_graceful(void **state)
{
    (void)state;
    struct itest_proxy_opts opts = { .extra = "shutdown_timeout = 30\n" };
    struct itest_proxy *p = itest_proxy_start(&opts);
    PGconn *busy = itest_connect_ok(p->port, "application_name=itest_term_busy");
    PGconn *idle = itest_connect_ok(p->port, "application_name=itest_term_idle");
    assert_int_equal(itest_query_ll(busy, "SELECT 1"), 1);
    assert_int_equal(itest_query_ll(idle, "SELECT 1"), 1);

    assert_int_equal(PQsendQuery(busy, "SELECT pg_sleep(2)"), 1);
    assert_true(itest_server_wait_ll(1, 10000, "SELECT count(*) FROM pg_stat_activity WHERE "
                                               "application_name = 'itest_term_busy' AND "
                                               "state = 'active'"));
    int64_t t0 = itest_now_ms();
    assert_int_equal(kill(p->pid, SIGTERM), 0);

    /* It stops listening at once. */
    while (itest_port_listening(p->port) && itest_now_ms() - t0 < 3000)
        itest_sleep_ms(10);
    assert_false(itest_port_listening(p->port));
    int fd = itest_raw_connect(p->port);
    int err = errno;
    if (fd >= 0)
        fail_msg("a new connection after SIGTERM was accepted");
    assert_int_equal(err, ECONNREFUSED);
    PGconn *late = itest_connect(p->port, NULL);
    assert_int_equal(PQstatus(late), CONNECTION_BAD);
    itest_finish(late);

    /* The idle client is closed. */
    bool idle_closed = closed_within(idle, 10000 - (int)(itest_now_ms() - t0));
    printf("SIGTERM: idle client closed after %lld ms (%s)\n", (long long)(itest_now_ms() - t0),
           PQerrorMessage(idle));
    assert_true(idle_closed);

    /* The busy one gets its result. */
    PGresult *r = itest_wait_result(busy, 15000);
    itest_assert_result_ok(r, "pg_sleep(2) across SIGTERM");
    assert_int_equal(PQntuples(r), 1);
    PQclear(r);
    int64_t t_result = itest_now_ms();

    /* Then the proxy exits 0. */
    if (!itest_proxy_wait_exit(p, 10000))
        fail_msg("proxy still running 10 s after the last query finished");
    printf("SIGTERM: proxy exited %lld ms after the last result\n",
           (long long)(itest_now_ms() - t_result));
    assert_true(WIFEXITED(p->exit_status));
    assert_int_equal(WEXITSTATUS(p->exit_status), 0);
    /* And the busy client was closed too. */
    PGresult *after = itest_exec(busy, "SELECT 1");
    assert_true(after == NULL || PQresultStatus(after) != PGRES_TUPLES_OK);
    PQclear(after);
    itest_pass();
}

/* The proxy exits, with status 0, within 10 s. */
static void assert_exits_cleanly(struct itest_proxy *p)
{
    assert_true(itest_proxy_wait_exit(p, 10000));
    assert_true(WIFEXITED(p->exit_status));
    assert_int_equal(WEXITSTATUS(p->exit_status), 0);
}

/* A client that logged in a moment before SIGTERM and has not sent its
 * first request yet, which may be on the wire, gets it served and is
 * closed after; one that has sat silent for longer goes at once, as an
 * idle client does. */
static void test_sigterm_first_request(void **state)
{
    (void)state;
    struct itest_proxy_opts opts = { .extra = "shutdown_timeout = 30\n" };
    struct itest_proxy *p = itest_proxy_start(&opts);
    PGconn *silent = itest_connect_ok(p->port, "application_name=itest_term_silent");
    itest_sleep_ms(1500);
    PGconn *fresh = itest_connect_ok(p->port, "application_name=itest_term_fresh");
    assert_int_equal(kill(p->pid, SIGTERM), 0);

    assert_true(closed_within(silent, 5000));
    assert_int_equal(itest_query_ll(fresh, "SELECT 4"), 4);
    assert_true(closed_within(fresh, 5000));
    assert_exits_cleanly(p);
    itest_finish(silent);
    itest_finish(fresh);
    itest_pass();
}

/* Stops every thread of pid but its main one (the workers) with ptrace, so
 * that what reaches them meanwhile waits in the kernel; returns how many
 * tids it stopped. Skips the test where ptrace is not allowed (a container
 * profile): nothing else holds a worker between two of its events. */
static int hold_workers(pid_t pid, pid_t *tids, int cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *dir = opendir(path);
    int n = 0;

    assert_non_null(dir);
    for (struct dirent *e; (e = readdir(dir)) != NULL && n < cap;) {
        pid_t tid = (pid_t)atoi(e->d_name);
        if (tid <= 0 || tid == pid)
            continue;
        if (ptrace(PTRACE_SEIZE, tid, NULL, NULL) != 0) {
            if (n == 0 && (errno == EPERM || errno == ENOSYS)) {
                printf("ptrace is not allowed here (%s): test skipped\n", strerror(errno));
                closedir(dir);
                skip();
            }
            fail_msg("ptrace thread %d: %s", (int)tid, strerror(errno));
        }
        if (ptrace(PTRACE_INTERRUPT, tid, NULL, NULL) != 0)
            fail_msg("ptrace thread %d: %s", (int)tid, strerror(errno));
        int status;
        if (waitpid(tid, &status, __WALL) != tid || !WIFSTOPPED(status))
            fail_msg("thread %d did not stop", (int)tid);
        tids[n++] = tid;
    }
    closedir(dir);
    assert_true(n > 0);
    return n;
}

static void release_workers(const pid_t *tids, int n)
{
    for (int i = 0; i < n; i++)
        if (ptrace(PTRACE_DETACH, tids[i], NULL, NULL) != 0)
            fail_msg("ptrace detach %d: %s", (int)tids[i], strerror(errno));
}

/* The value a query sent with send_piped returns, and its Sync's answer;
 * fails the test on an error or on nothing within 10 s. */
static int next_piped_value(PGconn *c)
{
    int64_t deadline = itest_now_ms() + 10000;
    PGresult *r = itest_pipeline_result(c, deadline);

    itest_assert_result_ok(r, "a pipelined query");
    int value = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    itest_pipeline_end(c, deadline);
    r = itest_pipeline_result(c, deadline);
    assert_int_equal(PQresultStatus(r), PGRES_PIPELINE_SYNC);
    PQclear(r);
    return value;
}

static void send_piped(PGconn *c, const char *sql)
{
    assert_int_equal(PQsendQueryParams(c, sql, 0, NULL, NULL, NULL, NULL, 0), 1);
    assert_int_equal(PQpipelineSync(c), 1);
}

/* A request that has reached the proxy when its worker would close the
 * session as idle is served, not answered with 57P01: the client sent it
 * before it could know. The worker is held with ptrace while SIGTERM
 * reaches the main thread and the requests arrive, so that when it runs
 * again the wake-up that begins the shutdown comes first, before the
 * ring's receives or the sockets' read events. Four idle sessions have a
 * request waiting when the shutdown begins; a fifth, pipelining, has its
 * next request waiting behind the answer that makes it idle. Through the
 * ring and (in the suite's second pass) with plain system calls. */
static void test_sigterm_request_in_kernel(void **state)
{
    (void)state;
    struct itest_proxy_opts opts = { .extra = "shutdown_timeout = 30\nworkers = 1\n" };
    struct itest_proxy *p = itest_proxy_start(&opts);
    PGconn *c[4];
    for (int i = 0; i < 4; i++) {
        c[i] = itest_connect_ok(p->port, NULL);
        assert_int_equal(itest_query_ll(c[i], "SELECT 1"), 1);
    }
    PGconn *piped = itest_connect_ok(p->port, "application_name=itest_term_piped");
    assert_int_equal(itest_query_ll(piped, "SELECT 1"), 1);
    assert_int_equal(PQenterPipelineMode(piped), 1);
    send_piped(piped, "SELECT 20 FROM pg_sleep(0.5)");
    assert_true(itest_server_wait_ll(1, 10000, "SELECT count(*) FROM pg_stat_activity WHERE "
                                               "application_name = 'itest_term_piped' AND "
                                               "state = 'active'"));

    pid_t tids[16];
    int held = hold_workers(p->pid, tids, 16);
    assert_int_equal(kill(p->pid, SIGTERM), 0);
    itest_proxy_wait_log_count(p, "SIGTERM received", 1);
    itest_sleep_ms(100); /* the main thread wakes the workers right after */
    for (int i = 0; i < 4; i++) {
        char sql[32];
        snprintf(sql, sizeof sql, "SELECT %d", 10 + i);
        assert_int_equal(PQsendQuery(c[i], sql), 1);
    }
    /* The sleep ends while the worker is held: its answer waits, and the
     * next request arrives behind it. */
    itest_sleep_ms(800);
    send_piped(piped, "SELECT 21");
    itest_sleep_ms(100);
    release_workers(tids, held);

    for (int i = 0; i < 4; i++) {
        PGresult *r = itest_wait_result(c[i], 10000);
        itest_assert_result_ok(r, "a request sent before the worker saw SIGTERM");
        assert_int_equal(atoi(PQgetvalue(r, 0, 0)), 10 + i);
        PQclear(r);
        assert_true(closed_within(c[i], 5000));
        itest_finish(c[i]);
    }
    assert_int_equal(next_piped_value(piped), 20);
    assert_int_equal(next_piped_value(piped), 21);
    assert_true(closed_within(piped, 5000));
    itest_finish(piped);
    assert_exits_cleanly(p);
    itest_pass();
}

/* ---- 20. --check-config and --version ----------------------------------- */

static int run_proxy_cmd(const char *arg1, const char *conf, char *out_text, size_t out_cap)
{
    char out[600];
    snprintf(out, sizeof out, "%s/cmd-%d-%lld.out", itest_env("IDEM_TEST_TMP"), (int)getpid(),
             (long long)itest_now_ms());
    char *argv[] = { (char *)itest_env("IDEMPROXY"), (char *)arg1, conf ? (char *)"-c" : NULL,
                     (char *)conf, NULL };
    int status = itest_run(argv, out, 30000);
    FILE *f = fopen(out, "r");
    size_t len = 0;
    if (f != NULL) {
        len = fread(out_text, 1, out_cap - 1, f);
        fclose(f);
    }
    out_text[len] = '\0';
    return status;
}

static void test_check_config(void **state)
{
    (void)state;
    char text[8192];
    const char *valid = itest_write_config("valid",
                                           "listen_addr = 127.0.0.1\n"
                                           "listen_port = 6999\n"
                                           "server_host = 127.0.0.1\n"
                                           "server_port = 5432\n"
                                           "max_client_conn = 10\n"
                                           "log_level = warning\n"
                                           "max_held_message = 64kB\n"
                                           "client_login_timeout = 5\n"
                                           "server_connect_timeout = 5\n"
                                           "shutdown_timeout = 5\n");
    char valid_path[600];
    snprintf(valid_path, sizeof valid_path, "%s", valid);
    int st = run_proxy_cmd("--check-config", valid_path, text, sizeof text);
    if (!(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0))
        fail_msg("--check-config on a valid file: status 0x%x, output: %s", st, text);

    /* Line 1 is "[idemproxy]", so the unknown key is on line 4. */
    const char *bad = itest_write_config("unknown-key",
                                         "listen_addr = 127.0.0.1\n"
                                         "listen_port = 6999\n"
                                         "no_such_key = 1\n"
                                         "server_port = 5432\n");
    char bad_path[600], where[640];
    snprintf(bad_path, sizeof bad_path, "%s", bad);
    snprintf(where, sizeof where, "%s:4", bad_path);
    st = run_proxy_cmd("--check-config", bad_path, text, sizeof text);
    printf("--check-config on an unknown key: %s", text);
    if (!(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 1))
        fail_msg("--check-config on an unknown key: status 0x%x (want exit 1), output: %s", st,
                 text);
    if (strstr(text, where) == NULL)
        fail_msg("--check-config output does not name %s: %s", where, text);

    st = run_proxy_cmd("--version", NULL, text, sizeof text);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(strlen(text) > 0);
    itest_pass();
}

/* ---- extra: SIGHUP keeps serving ---------------------------------------- */

static void test_sighup_reload_keeps_serving(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start(NULL);
    PGconn *c = itest_connect_ok(p->port, NULL);
    assert_int_equal(itest_query_ll(c, "SELECT 1"), 1);
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    itest_sleep_ms(300);
    assert_true(itest_proxy_alive(p));
    assert_int_equal(itest_query_ll(c, "SELECT 2"), 2);
    assert_proxy_serves(p, "SIGHUP");
    itest_pass();
}

/* ---- workers: threads, and processes, sharing one port ------------------- */

/* Connects n clients one after the other, each running a query, and keeps
 * them open (so that the kernel spreads them over the listeners). */
static void connect_many(int port, PGconn **conns, int n)
{
    for (int i = 0; i < n; i++) {
        conns[i] = itest_connect_ok(port, "application_name=itest_workers");
        assert_int_equal(itest_query_ll(conns[i], "SELECT 7"), 7);
    }
}

static void test_workers_and_reuseport(void **state)
{
    (void)state;
    enum { N = 40 };
    PGconn *conns[N];
    struct itest_proxy_opts a_opts = { .extra = "workers = 3\nso_reuseport = on\n" };
    struct itest_proxy *a = itest_proxy_start(&a_opts);
    itest_assert_log_line(a, "listening on", "(3 workers, so_reuseport)", NULL);
    connect_many(a->port, conns, N);
    for (int i = 0; i < N; i++)
        itest_finish(conns[i]);

    /* A second process on the same port, as in a rolling restart: the
     * kernel sends new clients to both. */
    struct itest_proxy_opts b_opts = { .extra = "workers = 1\nso_reuseport = on\n",
                                       .listen_port = a->port };
    struct itest_proxy *b = itest_proxy_start(&b_opts);
    connect_many(a->port, conns, N);
    if (!itest_proxy_log_contains(b, "accepted"))
        fail_msg("%d clients on the shared port and none reached the second process", N);
    for (int i = 0; i < N; i++)
        itest_finish(conns[i]);

    /* The old one leaves; the port goes on serving through the new one. */
    assert_true(itest_proxy_signal_wait(a, SIGTERM, 20000));
    assert_proxy_serves(b, "the first process exited");

    /* Without so_reuseport the port is not shared: a third process is
     * refused the port and says so. */
    char conf[256];
    snprintf(conf, sizeof conf, "listen_addr = 127.0.0.1\nlisten_port = %d\n", b->port);
    const char *path = itest_write_config("no-reuseport", conf);
    char *const argv[] = { (char *)itest_env("IDEMPROXY"), "-c", (char *)path, NULL };
    char out[600];
    snprintf(out, sizeof out, "%s/no-reuseport.out", itest_env("IDEM_TEST_TMP"));
    int status = itest_run(argv, out, 20000);
    assert_true(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 1);
    char *text = itest_read_file(out);
    if (!strstr(text, "cannot listen on") || !strstr(text, "in use"))
        fail_msg("a second process without so_reuseport: %s", text);
    free(text);
    assert_proxy_serves(b, "a refused third process");
    itest_pass();
}

/* ---- main ----------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        ITEST(test_simple_and_extended_query),
        ITEST(test_pipeline_with_error),
        ITEST(test_single_row_mode),
        ITEST(test_copy_in_out_50mb),
        ITEST(test_large_objects),
        ITEST(test_listen_notify),
        ITEST(test_notice_and_parameter_status),
        ITEST(test_cancel),
        ITEST(test_md5_and_scram_login),
        ITEST(test_200_concurrent_connections),
        ITEST(test_client_killed_mid_query),
        ITEST(test_terminate_then_wait),
        ITEST(test_server_restart),
        ITEST(test_unique_violation_fields),
        ITEST(test_server_unreachable),
        ITEST(test_max_client_conn),
        ITEST(test_malformed_input),
        ITEST(test_ssl_and_gssenc_request),
        ITEST(test_backpressure),
        ITEST(test_sigterm_graceful),
        ITEST(test_sigterm_first_request),
        ITEST(test_sigterm_request_in_kernel),
        ITEST(test_check_config),
        ITEST(test_sighup_reload_keeps_serving),
        ITEST(test_workers_and_reuseport),
    };
    return itest_main(argc, argv, "idemproxy integration", tests, sizeof tests / sizeof tests[0]);
}
