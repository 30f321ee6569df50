/*
 * Integration tests of server_reuse: a client that leaves an idle session
 * leaves its server to the next client with the same login.
 *
 * What must hold: the next client gets the same backend only after the
 * reset, and finds nothing of the session before it (settings, prepared
 * statements, temporary tables, advisory locks, LISTEN), hears the
 * server's real settings (so PQparameterStatus is right) and a cancel key
 * of its own that cancels its queries and no one else's;
 * a server is never shared across users or startup options, never kept
 * when its client left with work under way or a transaction open, and a
 * kept server that dies, times out or outlives a reload is not handed
 * out. A client of a kept server hears the server's answer to its
 * StartupMessage's protocol version and options and the warnings of its
 * login, as on a fresh login.
 *
 * Run by tests/integration.sh (same scratch cluster as the other suites).
 * Every test starts its own proxy. Run one:
 * test_reuse test_reuse_reset   (a cmocka filter, or IDEM_TEST_FILTER).
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
#include <sys/socket.h>

#include <libpq-fe.h>

#include "itest.h"

#define READY "reset: ready for the next client"

/* ---- helpers ------------------------------------------------------------ */

/* A proxy that authenticates clients itself (auth_query as the trusted
 * superuser) and keeps their servers; more: further "key = value" lines.
 * One worker: each worker keeps its own servers, and with two a client
 * may land on the other one. */
static struct itest_proxy *reuse_proxy(const char *more)
{
    char extra[2048];

    snprintf(extra, sizeof extra,
             "auth_type = scram-sha-256\nauth_user = %s\nserver_reuse = on\n"
             "workers = 1\n%s", itest_pg_user(),
             more ? more : "");
    return itest_proxy_start_with("debug", extra);
}

static PGconn *login_as(int port, const char *user, const char *password, const char *app)
{
    char extra[256];

    snprintf(extra, sizeof extra, "user=%s password=%s application_name=%s sslmode=disable", user,
             password, app);
    return itest_connect_ok(port, extra);
}

static PGconn *scram_login(int port, const char *app)
{
    return login_as(port, ITEST_SCRAM_USER, ITEST_SCRAM_PASSWORD, app);
}

static long long backend_pid(PGconn *conn)
{
    return itest_query_ll(conn, "SELECT pg_backend_pid()");
}

/* A client of p (application app) that logs in and leaves; returns its
 * backend's process ID once its server is kept, the n-th time. */
static long long visit(struct itest_proxy *p, const char *app, int n)
{
    PGconn *c = scram_login(p->port, app);
    long long pid = backend_pid(c);
    itest_finish(c);
    itest_proxy_wait_log_count(p, READY, n);
    return pid;
}

/* The value in the name/value row called name of an admin console
 * command's answer (in a static buffer). */
static const char *console_value(PGconn *admin, const char *command, const char *name)
{
    static char value[64];
    PGresult *res = PQexec(admin, command);

    itest_assert_result_ok(res, command);
    const char *found = itest_row_value(res, name, 1);
    if (!found) {
        PQclear(res);
        fail_msg("%s has no row %s", command, name);
    }
    snprintf(value, sizeof value, "%s", found);
    PQclear(res);
    return value;
}

/* A client of p that logs in with the StartupMessage pkt (the SCRAM user's
 * password), keeps the message types and the first message of type want,
 * and leaves; then waits until its server is kept (the n-th time). */
static void raw_visit(struct itest_proxy *p, const uint8_t *pkt, size_t len, char *types,
                      size_t cap, char want, struct itest_msg *wanted, int n)
{
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    itest_raw_scram_login(fd, pkt, len, ITEST_SCRAM_PASSWORD, types, cap, want, wanted);
    assert_true(itest_raw_send(fd, "X\0\0\0\4", 5));
    itest_raw_close(fd);
    itest_proxy_wait_log_count(p, READY, n);
}

/* ---- tests -------------------------------------------------------------- */

/* The same backend, and nothing of the session before it. */
static void test_reuse_reset(void **state)
{
    (void)state;
    struct itest_proxy *p = reuse_proxy(NULL);
    char text[128];

    PGconn *a = scram_login(p->port, "reuse_reset");
    long long pid = backend_pid(a);
    itest_exec_ok(a, "SET work_mem = '7MB'");
    itest_exec_ok(a, "SET application_name = 'reuse_changed'");
    itest_exec_ok(a, "PREPARE reuse_stmt AS SELECT 1");
    itest_exec_ok(a, "CREATE TEMP TABLE reuse_tmp (x int)");
    itest_exec_ok(a, "SELECT pg_advisory_lock(4242)");
    itest_exec_ok(a, "LISTEN reuse_channel");
    assert_string_equal(PQparameterStatus(a, "application_name"), "reuse_changed");
    itest_finish(a);
    itest_proxy_wait_log_count(p, READY, 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
                     0);

    PGconn *b = scram_login(p->port, "reuse_reset");
    assert_int_equal(backend_pid(b), pid);
    /* The key the client holds names this backend. */
    assert_int_equal(PQbackendPID(b), pid);
    itest_assert_log_line(p, "logged in on a kept server", "scram_user", NULL);
    itest_query_text(b, "SHOW work_mem", text, sizeof text);
    assert_string_equal(text, "4MB");
    itest_query_text(b, "SHOW application_name", text, sizeof text);
    assert_string_equal(text, "reuse_reset");
    /* What the client heard at login is what the server holds now. */
    assert_string_equal(PQparameterStatus(b, "application_name"), "reuse_reset");
    PGconn *direct = itest_connect_direct();
    assert_string_equal(PQparameterStatus(b, "client_encoding"),
                        PQparameterStatus(direct, "client_encoding"));
    assert_string_equal(PQparameterStatus(b, "TimeZone"), PQparameterStatus(direct, "TimeZone"));
    assert_non_null(PQparameterStatus(b, "server_version"));
    assert_int_equal(itest_query_ll(b, "SELECT count(*) FROM pg_prepared_statements"), 0);
    assert_int_equal(itest_query_ll(b, "SELECT count(*) FROM pg_listening_channels()"), 0);
    assert_int_equal(itest_query_ll(b, "SELECT count(*) FROM pg_class "
                                       "WHERE relname = 'reuse_tmp'"), 0);
    itest_exec_ok(b, "PREPARE reuse_stmt AS SELECT 2");

    /* A cancel with the key the client got reaches this backend. */
    assert_int_equal(PQsendQuery(b, "SELECT pg_sleep(30)"), 1);
    itest_sleep_ms(200);
    PGcancel *cancel = PQgetCancel(b);
    char err[256];
    assert_int_equal(PQcancel(cancel, err, sizeof err), 1);
    PQfreeCancel(cancel);
    PGresult *res = itest_wait_result(b, 10000);
    itest_assert_sqlstate(res, "57014", "pg_sleep cancelled on a kept server");
    PQclear(res);
    itest_cancel_settle();
    assert_int_equal(itest_query_ll(b, "SELECT 5"), 5);
    itest_pass();
}

/* A client's cancel key is its own: once it has left, a CancelRequest
 * with it cancels nothing of the next client on the same backend, and the
 * next client's own key works. */
static void test_reuse_cancel_keys(void **state)
{
    (void)state;
    struct itest_proxy *p = reuse_proxy(NULL);
    char err[256];

    PGconn *a = scram_login(p->port, "reuse_cancel");
    long long pid = backend_pid(a);
    assert_int_equal(PQbackendPID(a), pid);
    PGcancel *stale = PQgetCancel(a);
    assert_non_null(stale);
    itest_finish(a);
    itest_proxy_wait_log_count(p, READY, 1);

    PGconn *b = scram_login(p->port, "reuse_cancel");
    assert_int_equal(backend_pid(b), pid);
    assert_int_equal(PQsendQuery(b, "SELECT pg_sleep(1.5)"), 1);
    itest_sleep_ms(200);
    assert_int_equal(PQcancel(stale, err, sizeof err), 1);
    PQfreeCancel(stale);
    PGresult *res = itest_wait_result(b, 10000);
    itest_assert_result_ok(res, "pg_sleep after a stale cancel request");
    PQclear(res);

    PGcancel *own = PQgetCancel(b);
    assert_int_equal(PQsendQuery(b, "SELECT pg_sleep(30)"), 1);
    itest_sleep_ms(200);
    assert_int_equal(PQcancel(own, err, sizeof err), 1);
    PQfreeCancel(own);
    res = itest_wait_result(b, 10000);
    itest_assert_sqlstate(res, "57014", "pg_sleep cancelled with the client's own key");
    PQclear(res);
    itest_pass();
}

/* A server on TLS is kept and handed on as well, and a client that just
 * closes its socket (no Terminate) leaves its server too. */
static void test_reuse_tls_and_eof(void **state)
{
    (void)state;
    struct itest_proxy *p = reuse_proxy("server_tls_sslmode = require\n");
    const char *on_tls = "SELECT count(*) FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl";

    PGconn *a = scram_login(p->port, "reuse_tls");
    long long pid = backend_pid(a);
    assert_int_equal(itest_query_ll(a, on_tls), 1);
    assert_int_equal(shutdown(PQsocket(a), SHUT_RDWR), 0);
    itest_finish(a);
    itest_proxy_wait_log_count(p, READY, 1);
    itest_assert_log_line(p, "client disconnected; server kept for reuse", "reuse", NULL);

    PGconn *b = scram_login(p->port, "reuse_tls");
    assert_int_equal(backend_pid(b), pid);
    assert_int_equal(itest_query_ll(b, on_tls), 1);
    assert_int_equal(itest_query_ll(b, "SELECT 7"), 7);
    itest_pass();
}

/* Another user, or other startup options: never the same server. */
static void test_reuse_not_shared(void **state)
{
    (void)state;
    itest_server_exec("DROP ROLE IF EXISTS reuse_other");
    itest_server_exec("CREATE ROLE reuse_other LOGIN PASSWORD 'reuse_other_pw'");
    struct itest_proxy *p = reuse_proxy(NULL);

    long long pid = visit(p, "reuse_shared", 1);

    PGconn *other_user = login_as(p->port, "reuse_other", "reuse_other_pw", "reuse_shared");
    assert_true(backend_pid(other_user) != pid);
    char who[64];
    itest_query_text(other_user, "SELECT current_user", who, sizeof who);
    assert_string_equal(who, "reuse_other");
    PGconn *other_app = scram_login(p->port, "reuse_shared_too");
    assert_true(backend_pid(other_app) != pid);
    /* A wrong password gets nothing, kept server or not. */
    PGconn *wrong = itest_connect(p->port, "user=scram_user password=wrong "
                                           "application_name=reuse_shared sslmode=disable");
    assert_int_equal(PQstatus(wrong), CONNECTION_BAD);
    assert_non_null(strstr(PQerrorMessage(wrong), "password authentication failed"));
    /* The right login still finds it. */
    PGconn *same = scram_login(p->port, "reuse_shared");
    assert_int_equal(backend_pid(same), pid);
    itest_finish(other_user);
    itest_finish(other_app);
    itest_finish(same);
    itest_server_exec("DROP ROLE reuse_other");
    itest_pass();
}

/* A client that leaves with a transaction open or a request under way
 * takes its backend with it: what it did is rolled back, as without the
 * proxy. */
static void test_reuse_not_when_busy(void **state)
{
    (void)state;
    itest_server_exec("DROP TABLE IF EXISTS reuse_busy");
    itest_server_exec("CREATE TABLE reuse_busy (x int)");
    itest_server_exec("GRANT ALL ON reuse_busy TO scram_user");
    struct itest_proxy *p = reuse_proxy(NULL);

    PGconn *a = scram_login(p->port, "reuse_busy");
    long long in_txn = backend_pid(a);
    itest_exec_ok(a, "BEGIN");
    itest_exec_ok(a, "INSERT INTO reuse_busy VALUES (1)");
    itest_finish(a);
    assert_true(itest_server_wait_ll(0, 10000, "SELECT count(*) FROM pg_stat_activity "
                                               "WHERE pid = %lld", in_txn));

    PGconn *b = scram_login(p->port, "reuse_busy");
    long long mid_query = backend_pid(b);
    assert_int_equal(PQsendQuery(b, "SELECT pg_sleep(1)"), 1);
    itest_finish(b);
    assert_true(itest_server_wait_ll(0, 10000, "SELECT count(*) FROM pg_stat_activity "
                                               "WHERE pid = %lld", mid_query));
    assert_int_equal(itest_server_ll("SELECT count(*) FROM reuse_busy"), 0);
    assert_int_equal(itest_proxy_log_count(p, READY), 0);
    assert_int_equal(itest_proxy_log_count(p, "server kept for reuse"), 0);

    /* An idle session after a committed transaction is kept. */
    PGconn *c = scram_login(p->port, "reuse_busy");
    long long committed = backend_pid(c);
    itest_exec_ok(c, "BEGIN");
    itest_exec_ok(c, "INSERT INTO reuse_busy VALUES (2)");
    itest_exec_ok(c, "COMMIT");
    itest_finish(c);
    itest_proxy_wait_log_count(p, READY, 1);
    PGconn *d = scram_login(p->port, "reuse_busy");
    assert_int_equal(backend_pid(d), committed);
    assert_int_equal(itest_query_ll(d, "SELECT count(*) FROM reuse_busy"), 1);
    itest_finish(d);
    itest_server_exec("DROP TABLE reuse_busy");
    itest_pass();
}

/* A kept server that dies, outlives server_idle_timeout or a reload is
 * closed, and the next client gets a fresh one without noticing. */
static void test_reuse_kept_server_goes(void **state)
{
    (void)state;
    struct itest_proxy *p = reuse_proxy("server_idle_timeout = 2\n");

    /* Killed while kept. */
    long long killed = visit(p, "reuse_goes", 1);
    assert_int_equal(itest_server_ll("SELECT count(*) FROM pg_terminate_backend(%lld) AS t "
                                     "WHERE t", killed), 1);
    char gone[64];
    snprintf(gone, sizeof gone, "(backend %lld) closed", killed);
    itest_proxy_wait_log_count(p, gone, 1);
    PGconn *b = scram_login(p->port, "reuse_goes");
    long long fresh = backend_pid(b);
    assert_true(fresh != killed);
    assert_int_equal(itest_query_ll(b, "SELECT 1"), 1);

    /* Timed out: the backend ends cleanly, after a Terminate. */
    itest_finish(b);
    itest_proxy_wait_log_count(p, READY, 2);
    itest_proxy_wait_log_count(p, "closed: server_idle_timeout reached", 1);
    assert_true(itest_server_wait_ll(0, 5000, "SELECT count(*) FROM pg_stat_activity "
                                              "WHERE pid = %lld", fresh));

    /* A reload closes what is kept: it may name another server now. */
    long long before_reload = visit(p, "reuse_goes", 3);
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    itest_proxy_wait_log_count(p, "closed: closing every kept server", 1);
    PGconn *d = scram_login(p->port, "reuse_goes");
    assert_true(backend_pid(d) != before_reload);
    itest_pass();
}

/* max_idle_servers bounds what is kept; a loop of short sessions runs on
 * the servers kept. */
static void test_reuse_bounds(void **state)
{
    (void)state;
    /* The console's users need their secret in auth_file. */
    char secret[512], line[700], more[1024];
    PGconn *direct = itest_connect_direct();
    itest_query_text(direct, "SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_user'", secret,
               sizeof secret);
    itest_finish(direct);
    snprintf(line, sizeof line, "\"%s\" \"%s\"\n", ITEST_SCRAM_USER, secret);
    int mport = itest_free_port();
    snprintf(more, sizeof more,
             "max_idle_servers = 1\nadmin_users = scram_user\nauth_file = %s\nmetrics_port = %d\n",
             itest_write_file("reuse-userlist.txt", line), mport);
    struct itest_proxy *p = reuse_proxy(more);

    PGconn *a = scram_login(p->port, "reuse_bounds");
    PGconn *b = scram_login(p->port, "reuse_bounds");
    long long pa = backend_pid(a), pb = backend_pid(b);
    itest_finish(a);
    itest_proxy_wait_log_count(p, READY, 1);
    itest_finish(b);
    /* Only one is kept: the other backend ends. */
    assert_true(itest_server_wait_ll(1, 10000, "SELECT count(*) FROM pg_stat_activity "
                                               "WHERE pid IN (%lld, %lld)", pa, pb));

    long long pids[20];
    for (int i = 0; i < 20; i++)
        pids[i] = visit(p, "reuse_bounds", i + 2);
    for (int i = 1; i < 20; i++)
        assert_int_equal(pids[i], pids[0]);
    assert_int_equal(pids[0], pa);
    assert_int_equal(itest_proxy_log_count(p, "logged in on a kept server"), 20);

    /* The console counts them. */
    PGconn *admin = login_as(p->port, ITEST_SCRAM_USER, ITEST_SCRAM_PASSWORD,
                             "reuse_admin dbname=idemproxy");
    assert_string_equal(console_value(admin, "SHOW STATS", "server_reuses"), "20");
    assert_string_equal(console_value(admin, "SHOW STATS", "server_connections_idle"), "1");
    assert_string_equal(console_value(admin, "SHOW STATS", "server_connections"), "0");
    assert_string_equal(console_value(admin, "SHOW CONFIG", "server_reuse"), "on");
    assert_string_equal(console_value(admin, "SHOW CONFIG", "max_idle_servers"), "1");
    /* And so does /metrics. */
    char *text = itest_http_get(mport, "/metrics");
    assert_int_equal(itest_metric(text, "idemproxy_server_reuses_total"), 20);
    assert_int_equal(itest_metric(text, "idemproxy_server_connections_idle"), 1);
    free(text);
    itest_pass();
}

/* A StartupMessage asking for protocol 3.2 and an option PostgreSQL 15 does
 * not know is answered with NegotiateProtocolVersion (3.0, the option
 * unknown), and so is the next client with the same StartupMessage when it
 * gets the kept server: else it would believe both were granted. */
static void test_reuse_negotiation(void **state)
{
    (void)state;
    struct itest_proxy *p = reuse_proxy(NULL);
    static const char *const pairs[] = { "user", ITEST_SCRAM_USER, "database", ITEST_DBNAME,
                                         "application_name", "reuse_negotiation",
                                         "_pq_.idem_test", "on", NULL };
    static const uint8_t expected[] = { 0, 3, 0, 0, 0, 0, 0, 1, '_', 'p', 'q', '_', '.',
                                        'i', 'd', 'e', 'm', '_', 't', 'e', 's', 't', 0 };
    uint8_t pkt[256];
    size_t len = itest_build_startup_params(pkt, sizeof pkt, 3u << 16 | 2, pairs);
    char types[64];
    struct itest_msg negotiation;

    for (int round = 1; round <= 2; round++) {
        raw_visit(p, pkt, len, types, sizeof types, 'v', &negotiation, round);
        /* Right before AuthenticationOk, as on a fresh login. */
        assert_true(strncmp(types, "***vR", 5) == 0);
        assert_int_equal(strchr(types + 4, 'v'), NULL);
        assert_int_equal(negotiation.len, sizeof expected);
        assert_memory_equal(negotiation.body, expected, sizeof expected);
        itest_msg_free(&negotiation);
    }
    assert_int_equal(itest_proxy_log_count(p, "logged in on a kept server"), 1);

    /* Plain 3.0 asks for nothing new: no answer, on a server of its own. */
    static const char *const plain[] = { "user", ITEST_SCRAM_USER, "database", ITEST_DBNAME,
                                         "application_name", "reuse_negotiation", NULL };
    len = itest_build_startup_params(pkt, sizeof pkt, 3u << 16, plain);
    raw_visit(p, pkt, len, types, sizeof types, 'v', &negotiation, 3);
    assert_int_equal(strchr(types, 'v'), NULL);
    assert_null(negotiation.body);
    assert_int_equal(itest_proxy_log_count(p, "logged in on a kept server"), 1);
    itest_pass();
}

/* PostgreSQL warns at every login to a database whose collation version
 * changed (after an operating system upgrade): the client of a kept
 * server is warned as well, where a fresh login warns. */
static void test_reuse_login_notice(void **state)
{
    (void)state;
    itest_server_exec("DROP DATABASE IF EXISTS reuse_collation WITH (FORCE)");
    itest_server_exec("CREATE DATABASE reuse_collation");
    itest_server_exec("UPDATE pg_database SET datcollversion = '0.1' "
                      "WHERE datname = 'reuse_collation'");
    struct itest_proxy *p = reuse_proxy(NULL);
    static const char *const pairs[] = { "user", ITEST_SCRAM_USER, "database", "reuse_collation",
                                         NULL };
    uint8_t pkt[256];
    size_t len = itest_build_startup_params(pkt, sizeof pkt, 3u << 16, pairs);
    char types[64];
    struct itest_msg notice;

    for (int round = 1; round <= 2; round++) {
        raw_visit(p, pkt, len, types, sizeof types, 'N', &notice, round);
        /* Right after AuthenticationOk, as PostgreSQL says it. */
        assert_true(strncmp(types, "***RN", 5) == 0);
        assert_int_equal(strchr(types + 5, 'N'), NULL);
        assert_string_equal(itest_msg_field(&notice, 'C'), "01000");
        assert_non_null(strstr(itest_msg_field(&notice, 'M'), "collation version"));
        itest_msg_free(&notice);
    }
    assert_int_equal(itest_proxy_log_count(p, "logged in on a kept server"), 1);
    itest_server_exec("DROP DATABASE reuse_collation WITH (FORCE)");
    itest_pass();
}

/* server_lifetime, as PgBouncer's: a kept server goes when its lifetime
 * ends, long before server_idle_timeout; a server that old when its client
 * leaves is not kept; 0 keeps none. It bounds how long a kept server
 * carries its login's role settings. */
static void test_reuse_lifetime(void **state)
{
    (void)state;
    struct itest_proxy *p = reuse_proxy("server_lifetime = 2\n");
    long long first = visit(p, "reuse_life", 1);
    itest_proxy_wait_log_count(p, "closed: server_lifetime reached", 1);

    PGconn *b = scram_login(p->port, "reuse_life");
    assert_true(backend_pid(b) != first);
    itest_sleep_ms(2200);
    itest_finish(b);
    itest_proxy_wait_log_count(p, "not kept: server_lifetime reached", 1);
    assert_int_equal(itest_proxy_log_count(p, READY), 1);

    struct itest_proxy *once = reuse_proxy("server_lifetime = 0\n");
    PGconn *c = scram_login(once->port, "reuse_once");
    long long pid = backend_pid(c);
    itest_finish(c);
    itest_proxy_wait_log_count(once, "not kept: server_lifetime reached", 1);
    PGconn *d = scram_login(once->port, "reuse_once");
    assert_true(backend_pid(d) != pid);
    assert_int_equal(itest_proxy_log_count(once, "logged in on a kept server"), 0);
    itest_pass();
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        ITEST(test_reuse_reset),
        ITEST(test_reuse_cancel_keys),
        ITEST(test_reuse_tls_and_eof),
        ITEST(test_reuse_not_shared),
        ITEST(test_reuse_not_when_busy),
        ITEST(test_reuse_kept_server_goes),
        ITEST(test_reuse_bounds),
        ITEST(test_reuse_negotiation),
        ITEST(test_reuse_login_notice),
        ITEST(test_reuse_lifetime),
    };
    return itest_main(argc, argv, "idemproxy server reuse", tests, sizeof tests / sizeof tests[0]);
}
