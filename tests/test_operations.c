/*
 * Integration tests of running idemproxy: the Prometheus endpoint and its
 * exact counts after a known workload, /healthz, reloads that add and
 * remove a table rule under an open connection, a broken config on reload,
 * the periodic stats line, which worker serves a new client, the TCP
 * keepalive settings of the proxy's sockets on both sides, and a proxy
 * out of file descriptors.
 *
 * Run by tests/integration.sh (same scratch cluster as the other suites).
 * Every test starts its own proxy and creates its own tables. Run one:
 * test_operations test_ops_metrics   (a cmocka filter, or IDEM_TEST_FILTER).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "itest.h"

/* ---- helpers ------------------------------------------------------------ */

static void assert_metric(const char *text, const char *series, unsigned long long want)
{
    unsigned long long got = itest_metric(text, series);
    if (got != want)
        fail_msg("%s is %llu, expected %llu", series, got, want);
}

static void create_key_table(const char *table)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "DROP TABLE IF EXISTS %s; CREATE TABLE %s (id bigserial PRIMARY KEY, "
             "k text NOT NULL UNIQUE, payload text)",
             table, table);
    itest_server_exec(sql);
}

/* Replaces the proxy's config file with text, atomically. */
static void rewrite_config(const struct itest_proxy *p, const char *text)
{
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.new", p->conf_path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    if (rename(tmp, p->conf_path) != 0)
        fail_msg("rename %s: %s", tmp, strerror(errno));
}

/* Sends SIGHUP and waits (bounded) for the n-th log line having what. */
static void reload_and_wait(struct itest_proxy *p, const char *what, int n)
{
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    int64_t deadline = itest_now_ms() + 10000;
    for (;;) {
        char *log = itest_read_file(p->log_path);
        int seen = 0;
        for (const char *at = log; (at = strstr(at, what)); at++)
            seen++;
        free(log);
        if (seen >= n)
            return;
        if (itest_now_ms() > deadline)
            fail_msg("no %d-th \"%s\" in the log within 10 s", n, what);
        itest_sleep_ms(50);
    }
}

static void assert_proxy_serves_port(int port)
{
    PGconn *c = itest_connect_ok(port, NULL);
    assert_int_equal(itest_query_ll(c, "SELECT 3"), 3);
    itest_finish(c);
}

/* ---- the metrics endpoint ----------------------------------------------- */

static void test_ops_metrics(void **state)
{
    static const char on_conflict_skips[] = "idemproxy_statements_skipped_total"
                                            "{table=\"public.ops_events\",reason=\"has_on_conflict\"}";
    (void)state;
    create_key_table("ops_events");
    int mport = itest_free_port();
    char extra[256];
    snprintf(extra, sizeof extra,
             "metrics_port = %d\nworkers = 2\n[table public.ops_events]\nconflict = k\n", mport);
    struct itest_proxy *p = itest_proxy_start_with(NULL, extra);
    PGconn *c = itest_connect_ok(p->port, "application_name=itest_metrics");

    /* Known work: 3 Query messages, 2 Executes, 2 INSERTs by Query (both
     * rewritten, the second a duplicate skipped by ON CONFLICT), and a third
     * that fails. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(itest_query_ll(c, "SELECT 1"), 1);
    for (int i = 0; i < 2; i++) {
        PGresult *r = PQexecParams(c, "SELECT $1::int", 1, NULL, (const char *[]){ "4" }, NULL,
                                   NULL, 0);
        itest_assert_result_ok(r, "extended SELECT");
        PQclear(r);
    }
    itest_exec_tag(c, "INSERT INTO ops_events (k, payload) VALUES ('a', 'x')", "INSERT 0 1");
    itest_exec_tag(c, "INSERT INTO ops_events (k, payload) VALUES ('a', 'y')", "INSERT 0 0");
    /* An error the rewrite meets once a table changed (55000: the unique
     * constraint made DEFERRABLE after the catalog check) is taken as a
     * sign to ask the catalog again, which the next statement does: the
     * login's answer and that one. */
    itest_server_exec("ALTER TABLE ops_events DROP CONSTRAINT ops_events_k_key, "
                      "ADD CONSTRAINT ops_events_k_key UNIQUE (k) DEFERRABLE");
    itest_exec_sqlstate(c, "INSERT INTO ops_events (k, payload) VALUES ('b', 'z')", "55000");
    assert_int_equal(itest_query_ll(c, "SELECT 1"), 1);

    char *text = itest_http_get(mport, "/metrics");
    if (!strstr(text, "HTTP/1.0 200") && !strstr(text, "HTTP/1.1 200"))
        fail_msg("/metrics: %s", text);
    assert_non_null(strstr(text, "Content-Type: text/plain; version=0.0.4"));
    assert_non_null(strstr(text, "# TYPE idemproxy_statements_total counter"));
    assert_metric(text, "idemproxy_statements_total{protocol=\"simple\"}", 7);
    assert_metric(text, "idemproxy_statements_total{protocol=\"extended\"}", 2);
    assert_metric(text, "idemproxy_client_connections", 1);
    assert_metric(text, "idemproxy_server_connections", 1);
    assert_metric(text, "idemproxy_client_connections_total", 1);
    assert_metric(text,
                  "idemproxy_statements_rewritten_total{table=\"public.ops_events\",action=\"auto\"}",
                  3);
    assert_metric(text, on_conflict_skips, 0);
    assert_metric(text, "idemproxy_shadow_matches_total{table=\"public.ops_events\"}", 0);
    assert_metric(text, "idemproxy_errors_translated_total{table=\"public.ops_events\"}", 0);
    assert_metric(text, "idemproxy_build_info{version=\"" PACKAGE_VERSION "\"}", 1);
    assert_metric(text, "idemproxy_config_reloads_total{result=\"ok\"}", 0);
    assert_metric(text, "idemproxy_catalog_queries_total{result=\"ok\"}", 2);
    assert_metric(text, "idemproxy_catalog_queries_total{result=\"failed\"}", 0);
    assert_metric(text, "idemproxy_catalog_doubts_total", 1);
    assert_true(itest_metric(text, "idemproxy_bytes_total{direction=\"to_server\"}") > 0);
    assert_true(itest_metric(text, "idemproxy_bytes_total{direction=\"to_client\"}") > 0);
    /* Every pass that moved bytes is in the histogram; +Inf holds them all. */
    unsigned long long n =
        itest_metric(text, "idemproxy_proxy_latency_seconds_count{direction=\"to_server\"}");
    assert_true(n >= 7);
    assert_metric(text,
                  "idemproxy_proxy_latency_seconds_bucket{direction=\"to_server\",le=\"+Inf\"}", n);
    /* The finite buckets, at the README's bounds, each holding at least
     * the one below it. */
    static const char *const bounds[] = { "5e-06", "1e-05", "2.5e-05", "5e-05", "0.0001",
                                          "0.00025", "0.0005", "0.001", "0.0025", "0.01", "0.1" };
    unsigned long long below = 0;
    for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++) {
        char series[128];
        snprintf(series, sizeof series,
                 "idemproxy_proxy_latency_seconds_bucket{direction=\"to_server\",le=\"%s\"}",
                 bounds[i]);
        unsigned long long in = itest_metric(text, series);
        assert_true(in >= below && in <= n);
        below = in;
    }
    /* One database and role, on the worker the session is on; no
     * auth_query here. */
    assert_metric(text, "idemproxy_catalog_scopes", 1);
    assert_metric(text, "idemproxy_auth_query_connections_idle", 0);
    free(text);

    /* A session running as another role adds that role's. */
    itest_server_exec("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ops_role') "
                      "THEN CREATE ROLE ops_role; END IF; END$$; "
                      "GRANT SELECT, INSERT ON ops_events TO ops_role");
    itest_exec_ok(c, "SET ROLE ops_role");
    itest_exec_ok(c, "SELECT 1");
    itest_exec_ok(c, "RESET ROLE");
    text = itest_http_get(mport, "/metrics");
    assert_metric(text, "idemproxy_catalog_scopes", 2);
    free(text);

    /* What passes unrewritten says why: an INSERT into the table by its
     * own reason, a message the proxy could not read for INSERTs by one
     * of its own, not per table. */
    itest_exec_ok(c, "ALTER TABLE ops_events DROP CONSTRAINT ops_events_k_key, "
                     "ADD CONSTRAINT ops_events_k_key UNIQUE (k)");
    itest_exec_tag(c, "INSERT INTO ops_events (k, payload) VALUES ('c', 'x') "
                      "ON CONFLICT (k) DO NOTHING", "INSERT 0 1");
    itest_exec_sqlstate(c, "INSERT INTO ops_events (k, payload) VALUES (", "42601");
    size_t big_len = 1100 * 1000;
    char *big = malloc(big_len + 32);
    assert_non_null(big);
    strcpy(big, "SELECT length('");
    memset(big + strlen(big), 'x', big_len);
    strcpy(big + 15 + big_len, "')");
    assert_int_equal(itest_query_ll(c, big), (long long)big_len);
    free(big);
    itest_exec_ok(c, "SET standard_conforming_strings = off");
    itest_exec_ok(c, "SELECT 1");
    itest_exec_tag(c, "INSERT INTO ops_events (k, payload) VALUES ('d', 'x')", "INSERT 0 1");
    itest_exec_ok(c, "RESET standard_conforming_strings");
    text = itest_http_get(mport, "/metrics");
    assert_metric(text, on_conflict_skips, 1);
    assert_metric(text, "idemproxy_statements_unchecked_total{reason=\"parse_error\"}", 1);
    assert_metric(text, "idemproxy_statements_unchecked_total{reason=\"too_large\"}", 1);
    /* The INSERT sent while the setting was off; not the statements that
     * could not have inserted into the table, then or while the session's
     * role was unsettled. */
    assert_metric(text, "idemproxy_statements_unchecked_total{reason=\"session_settings\"}", 1);
    assert_null(strstr(text, "idemproxy_statements_skipped_total{table=\"public.ops_events\","
                             "reason=\"too_large\"}"));
    free(text);

    /* A unique violation an UPDATE raises passes on as it is, counted by
     * why; a message of an impossible length ends its session, counted. */
    itest_exec_sqlstate(c, "UPDATE ops_events SET k = 'a' WHERE k = 'c'", "23505");
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    itest_raw_login(fd, itest_pg_user(), "itest_metrics_badlen");
    static const uint8_t bad_query[] = { 'Q', 0, 0, 0, 2 };
    assert_true(itest_raw_send(fd, bad_query, sizeof bad_query));
    char sqlstate[6];
    assert_true(itest_raw_wait_closed(fd, 10000, sqlstate));
    itest_raw_close(fd);
    text = itest_http_get(mport, "/metrics");
    assert_metric(text,
                  "idemproxy_unique_violations_passed_total{table=\"public.ops_events\","
                  "reason=\"not_recognised\"}",
                  1);
    assert_metric(text, "idemproxy_protocol_violations_total", 1);
    free(text);

    text = itest_http_get(mport, "/healthz");
    assert_non_null(strstr(text, " 200 "));
    assert_non_null(strstr(text, "\r\n\r\nok\n"));
    free(text);

    /* The connection gone, the gauges come down; the totals stay. The
     * worker drops the client's side and then the server's (which may
     * still be sending its Terminate), and the endpoint can read between. */
    itest_finish(c);
    int64_t deadline = itest_now_ms() + 5000;
    for (;;) {
        text = itest_http_get(mport, "/metrics");
        if ((itest_metric(text, "idemproxy_client_connections") == 0 &&
             itest_metric(text, "idemproxy_server_connections") == 0) ||
            itest_now_ms() > deadline)
            break;
        free(text);
        itest_sleep_ms(20);
    }
    assert_metric(text, "idemproxy_client_connections", 0);
    assert_metric(text, "idemproxy_server_connections", 0);
    assert_metric(text, "idemproxy_client_connections_total", 2); /* c and the raw one */
    free(text);

    /* During a shutdown the endpoint still answers: /healthz says 503 so
     * that a load balancer looks elsewhere, /metrics goes on. */
    PGconn *busy = itest_connect_ok(p->port, NULL);
    assert_int_equal(PQsendQuery(busy, "SELECT pg_sleep(1.5)"), 1);
    itest_sleep_ms(300);
    assert_int_equal(kill(p->pid, SIGTERM), 0);
    itest_sleep_ms(300);
    text = itest_http_get(mport, "/healthz");
    if (!strstr(text, " 503 ") || !strstr(text, "stopping"))
        fail_msg("/healthz during the shutdown: %s", text);
    free(text);
    text = itest_http_get(mport, "/metrics");
    assert_metric(text, "idemproxy_client_connections", 1);
    free(text);
    PGresult *r = itest_wait_result(busy, 10000);
    itest_assert_result_ok(r, "pg_sleep across SIGTERM");
    PQclear(r);
    assert_true(itest_proxy_wait_exit(p, 15000));
    itest_pass();
}

/* ---- reloads -------------------------------------------------------------- */

/* A rule added, then removed, under one open connection; then a broken file
 * that changes nothing and is counted as a failed reload. */
static void test_ops_reload_live(void **state)
{
    (void)state;
    create_key_table("ops_live");
    int mport = itest_free_port();
    char base[512];
    struct itest_proxy *p;
    {
        char extra[128];
        snprintf(extra, sizeof extra, "metrics_port = %d\n", mport);
        p = itest_proxy_start_with(NULL, extra);
    }
    char *original = itest_read_file(p->conf_path);
    snprintf(base, sizeof base, "%s", original);
    free(original);
    PGconn *c = itest_connect_ok(p->port, NULL);
    const char *dup = "INSERT INTO ops_live (k, payload) VALUES ('r', 'x')";
    itest_exec_tag(c, dup, "INSERT 0 1");
    itest_exec_sqlstate(c, dup, "23505");

    char with_rule[700];
    snprintf(with_rule, sizeof with_rule, "%s[table public.ops_live]\nconflict = k\n", base);
    rewrite_config(p, with_rule);
    reload_and_wait(p, "configuration reloaded", 1);
    itest_exec_tag(c, dup, "INSERT 0 0");

    rewrite_config(p, base);
    reload_and_wait(p, "configuration reloaded", 2);
    itest_exec_sqlstate(c, dup, "23505");

    /* A broken file: rejected whole, FILE:LINE in the log, nothing changes. */
    char broken[700];
    snprintf(broken, sizeof broken, "%s[table public.ops_live]\nconflict = k\nactoin = do_nothing\n",
             base);
    rewrite_config(p, broken);
    reload_and_wait(p, "reload failed", 1);
    char where[600];
    snprintf(where, sizeof where, "%s:", p->conf_path);
    itest_assert_log_line(p, "reload failed", where, "actoin");
    itest_exec_sqlstate(c, dup, "23505");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM ops_live"), 1);

    char *text = itest_http_get(mport, "/metrics");
    assert_metric(text, "idemproxy_config_reloads_total{result=\"ok\"}", 2);
    assert_metric(text, "idemproxy_config_reloads_total{result=\"failed\"}", 1);
    free(text);
    itest_pass();
}

/* Waits (bounded) until the file at path exists and contains what. */
static void wait_file_contains(const char *path, const char *what)
{
    int64_t deadline = itest_now_ms() + 10000;
    for (;;) {
        FILE *f = fopen(path, "r");
        if (f) {
            char line[1024];
            bool found = false;
            while (!found && fgets(line, sizeof line, f))
                found = strstr(line, what) != NULL;
            fclose(f);
            if (found)
                return;
        }
        if (itest_now_ms() > deadline)
            fail_msg("%s never said \"%s\"", path, what);
        itest_sleep_ms(20);
    }
}

/* Log rotation moves log_file away and sends SIGHUP: the proxy writes to a
 * new file at the configured path, also when the reload itself fails. */
static void test_ops_log_reopen(void **state)
{
    (void)state;
    char path[600], moved[620], extra[700];
    snprintf(path, sizeof path, "%s/rotated.log", itest_env("IDEM_TEST_TMP"));
    snprintf(moved, sizeof moved, "%s.1", path);
    snprintf(extra, sizeof extra, "log_file = %s\n", path);
    struct itest_proxy *p = itest_proxy_start_with(NULL, extra);
    PGconn *c = itest_connect_ok(p->port, NULL);
    wait_file_contains(path, "accepted");

    assert_int_equal(rename(path, moved), 0);
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    wait_file_contains(path, "configuration reloaded");

    char *good = itest_read_file(p->conf_path);
    char broken[4200];
    snprintf(broken, sizeof broken, "%sno_such_key = 1\n", good);
    free(good);
    rewrite_config(p, broken);
    assert_int_equal(rename(path, moved), 0);
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    wait_file_contains(path, "reload failed");
    assert_int_equal(itest_query_ll(c, "SELECT 1"), 1);
    itest_pass();
}

/* ---- the stats line --------------------------------------------------------- */

static void test_ops_stats_line(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start_with(NULL, "log_stats_interval = 1\n");
    PGconn *c = itest_connect_ok(p->port, NULL);
    for (int i = 0; i < 10; i++)
        assert_int_equal(itest_query_ll(c, "SELECT 1"), 1);
    int64_t deadline = itest_now_ms() + 10000;
    while (!itest_proxy_log_line_has(p, "stats:", "statements/s", "proxy latency avg") &&
           itest_now_ms() < deadline)
        itest_sleep_ms(100);
    itest_assert_log_line(p, "stats: 1 clients open", "statements/s", "proxy latency avg");
    itest_pass();
}

/* ---- rolling restart ----------------------------------------------------- */

/* pgbench reconnecting for every transaction (-C) runs against the port
 * while a second idemproxy starts on it and the first gets SIGTERM: not one
 * connection may be refused and not one transaction fail. */
static void test_ops_rolling_restart(void **state)
{
    (void)state;
    struct itest_proxy_opts a_opts = { .extra = "so_reuseport = on\nworkers = 2\n" };
    struct itest_proxy *a = itest_proxy_start(&a_opts);
    const char *script = itest_write_file("rolling.sql", "SELECT 1;\n");
    char script_path[600], out_path[600], bin[512], port_s[16];
    snprintf(script_path, sizeof script_path, "%s", script);
    snprintf(out_path, sizeof out_path, "%s/rolling-%d.out", itest_env("IDEM_TEST_TMP"),
             (int)getpid());
    snprintf(bin, sizeof bin, "%s/pgbench", itest_env("IDEM_TEST_PGBIN"));
    snprintf(port_s, sizeof port_s, "%d", a->port);

    pid_t bench = fork();
    assert_true(bench >= 0);
    if (bench == 0) {
        FILE *out = freopen(out_path, "w", stdout);
        if (!out || dup2(fileno(stdout), 2) < 0)
            _exit(127);
        execl(bin, bin, "-n", "-C", "-f", script_path, "-c", "4", "-j", "2", "-T", "6", "-h",
              "127.0.0.1", "-p", port_s, "-U", itest_pg_user(), ITEST_DBNAME, (char *)NULL);
        _exit(127);
    }
    itest_sleep_ms(1500);
    struct itest_proxy_opts b_opts = { .extra = "so_reuseport = on\nworkers = 2\n",
                                       .listen_port = a->port };
    struct itest_proxy *b = itest_proxy_start(&b_opts);
    itest_sleep_ms(1000);
    assert_true(itest_proxy_signal_wait(a, SIGTERM, 15000));
    assert_true(WIFEXITED(a->exit_status) && WEXITSTATUS(a->exit_status) == 0);

    int status;
    assert_int_equal(waitpid(bench, &status, 0), bench);
    char *out = itest_read_file(out_path);
    printf("%s", out);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
        !strstr(out, "number of failed transactions: 0 (") || strstr(out, "aborted"))
        fail_msg("pgbench across the rolling restart (status 0x%x):\n%s", status, out);
    free(out);
    /* Both processes served clients. */
    assert_true(itest_proxy_log_contains(b, "accepted"));
    assert_proxy_serves_port(b->port);
    itest_pass();
}

/* ---- the admin console ----------------------------------------------------- */

/* Creates role (LOGIN, password) on the server and returns its SCRAM secret
 * as auth_file wants it (static buffer). */
static const char *scram_role(const char *role, const char *password)
{
    static char secret[512];
    char sql[512];
    snprintf(sql, sizeof sql,
             "SET password_encryption = 'scram-sha-256'; DROP ROLE IF EXISTS %s; "
             "CREATE ROLE %s LOGIN PASSWORD '%s'",
             role, role, password);
    itest_server_exec(sql);
    PGconn *c = itest_connect_ok(itest_pg_port(), NULL);
    snprintf(sql, sizeof sql, "SELECT rolpassword FROM pg_authid WHERE rolname = '%s'", role);
    PGresult *r = PQexec(c, sql);
    itest_assert_result_ok(r, "the role's secret");
    snprintf(secret, sizeof secret, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    itest_finish(c);
    return secret;
}

/* The config lines that make role (created here, with password) the
 * console's admin, its secret in an auth file of its own (static buffer). */
static const char *console_admin(const char *role, const char *password)
{
    static char lines[1200];
    char auth[600], file[64];
    snprintf(auth, sizeof auth, "\"%s\" \"%s\"\n", role, scram_role(role, password));
    snprintf(file, sizeof file, "%s-userlist.txt", role);
    snprintf(lines, sizeof lines, "admin_users = %s\nauth_file = %s\n", role,
             itest_write_file(file, auth));
    return lines;
}

/* Runs sql on the console and returns its result (the caller clears it). */
static PGresult *console(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    assert_non_null(r);
    return r;
}

/* Every number SHOW STATS gives is the one /metrics gives for it, read
 * while nothing moves (the console's own traffic counts in neither). */
static void assert_stats_match_metrics(PGconn *console_conn, int mport)
{
    static const struct {
        const char *row, *series;
    } same[] = {
        { "client_connections", "idemproxy_client_connections" },
        { "server_connections", "idemproxy_server_connections" },
        { "server_connections_idle", "idemproxy_server_connections_idle" },
        { "server_reuses", "idemproxy_server_reuses_total" },
        { "clients_total", "idemproxy_client_connections_total" },
        { "statements_simple", "idemproxy_statements_total{protocol=\"simple\"}" },
        { "statements_extended", "idemproxy_statements_total{protocol=\"extended\"}" },
        { "bytes_to_server", "idemproxy_bytes_total{direction=\"to_server\"}" },
        { "bytes_to_client", "idemproxy_bytes_total{direction=\"to_client\"}" },
        { "statements_unchecked_too_large",
          "idemproxy_statements_unchecked_total{reason=\"too_large\"}" },
        { "protocol_violations", "idemproxy_protocol_violations_total" },
        { "clients_refused_max_client_conn",
          "idemproxy_clients_refused_total{reason=\"max_client_conn\"}" },
        { "clients_refused_file_descriptors",
          "idemproxy_clients_refused_total{reason=\"file_descriptors\"}" },
        { "catalog_queries_ok", "idemproxy_catalog_queries_total{result=\"ok\"}" },
        { "catalog_queries_failed", "idemproxy_catalog_queries_total{result=\"failed\"}" },
        { "catalog_doubts", "idemproxy_catalog_doubts_total" },
        { "config_reloads_ok", "idemproxy_config_reloads_total{result=\"ok\"}" },
        { "workers_on_ring", "idemproxy_workers_on_ring" },
        { "catalog_scopes", "idemproxy_catalog_scopes" },
        { "auth_query_connections_idle", "idemproxy_auth_query_connections_idle" },
    };
    PGresult *r = console(console_conn, "SHOW STATS");
    itest_assert_result_ok(r, "SHOW STATS");
    char *text = itest_http_get(mport, "/metrics");
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
        assert_metric(text, same[i].series, strtoull(itest_row_value(r, same[i].row, 1), NULL, 10));
    free(text);
    PQclear(r);
}

static void test_ops_admin_console(void **state)
{
    (void)state;
    char auth[1200], extra[1600];
    snprintf(auth, sizeof auth, "\"ops_admin\" \"%s\"\n", scram_role("ops_admin", "adminpw"));
    snprintf(auth + strlen(auth), sizeof auth - strlen(auth), "\"ops_other\" \"%s\"\n",
             scram_role("ops_other", "otherpw"));
    const char *auth_path = itest_write_file("ops-userlist.txt", auth);
    int mport = itest_free_port();
    snprintf(extra, sizeof extra,
             "admin_users = ops_admin\nauth_file = %s\nmetrics_port = %d\n"
             "[table public.ops_console]\nconflict = k\naction = do_nothing\n",
             auth_path, mport);
    struct itest_proxy *p = itest_proxy_start_with(NULL, extra);
    PGconn *app = itest_connect_ok(p->port, "application_name=itest_app");
    assert_int_equal(itest_query_ll(app, "SELECT 1"), 1);

    PGconn *c = itest_connect_ok(p->port, "user=ops_admin password=adminpw dbname=idemproxy");
    PGresult *r = console(c, "SHOW VERSION");
    itest_assert_result_ok(r, "SHOW VERSION");
    assert_string_equal(PQgetvalue(r, 0, 0), "idemproxy " PACKAGE_VERSION);
    PQclear(r);

    r = console(c, "show stats;");
    itest_assert_result_ok(r, "SHOW STATS");
    assert_string_equal(itest_row_value(r, "client_connections", 1), "2");
    assert_string_equal(itest_row_value(r, "statements_simple", 1), "1");
    assert_string_equal(itest_row_value(r, "statements_unchecked_too_large", 1), "0");
    assert_string_equal(itest_row_value(r, "statements_unchecked_session_settings", 1), "0");
    assert_string_equal(itest_row_value(r, "statements_unchecked_parse_error", 1), "0");
    assert_true(atoll(itest_row_value(r, "bytes_to_server", 1)) > 0);
    assert_true(atoll(itest_row_value(r, "bytes_to_client", 1)) > 0);
    PQclear(r);
    assert_stats_match_metrics(c, mport);

    /* One command per Query, semicolons after it; nothing is nothing. */
    r = console(c, " \n show\tconfig ;; ");
    itest_assert_result_ok(r, "SHOW CONFIG with spaces and semicolons");
    PQclear(r);
    r = console(c, " ; ");
    assert_int_equal(PQresultStatus(r), PGRES_EMPTY_QUERY);
    PQclear(r);
    const char *not_one[] = { "SHOW;STATS", "SHOW STATS; SHOW TABLES", "SHOW STATS 1", "RELOAD;x" };
    for (size_t i = 0; i < sizeof not_one / sizeof not_one[0]; i++) {
        r = console(c, not_one[i]);
        if (PQresultStatus(r) != PGRES_FATAL_ERROR ||
            strcmp(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42601") != 0)
            fail_msg("\"%s\" on the console: %s", not_one[i], PQresStatus(PQresultStatus(r)));
        PQclear(r);
    }

    r = console(c, "SHOW CLIENTS");
    itest_assert_result_ok(r, "SHOW CLIENTS");
    assert_int_equal(PQntuples(r), 2);
    int admin_worker = 0, app_worker = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        if (strcmp(PQgetvalue(r, i, 3), "ops_admin") == 0 &&
            strcmp(PQgetvalue(r, i, 4), "idemproxy") == 0)
            admin_worker = atoi(PQgetvalue(r, i, 1));
        if (strcmp(PQgetvalue(r, i, 4), ITEST_DBNAME) == 0)
            app_worker = atoi(PQgetvalue(r, i, 1));
    }
    assert_true(admin_worker > 0 && app_worker > 0);
    PQclear(r);

    /* The console runs on the other worker (each client goes to the one
     * with fewer), which has learnt no catalog: it reports what the app's
     * worker learnt, that the table is not there. */
    assert_int_not_equal(admin_worker, app_worker);
    r = console(c, "SHOW TABLES");
    itest_assert_result_ok(r, "SHOW TABLES");
    assert_int_equal(PQntuples(r), 1);
    assert_string_equal(PQgetvalue(r, 0, 0), "public.ops_console");
    assert_string_equal(PQgetvalue(r, 0, 2), "do_nothing");
    if (strncmp(PQgetvalue(r, 0, 5), "refused: ", 9) != 0 ||
        !strstr(PQgetvalue(r, 0, 5), "does not exist"))
        fail_msg("SHOW TABLES on another worker than the app's: %s", PQgetvalue(r, 0, 5));
    PQclear(r);

    r = console(c, "SHOW CONFIG");
    itest_assert_result_ok(r, "SHOW CONFIG");
    assert_string_equal(itest_row_value(r, "admin_users", 1), "ops_admin");
    assert_string_equal(itest_row_value(r, "catalog_check_interval", 1), "60");
    /* Every key of the file has its row, each TLS leg's included. */
    assert_string_equal(itest_row_value(r, "server_connect_timeout", 1), "10");
    assert_string_equal(itest_row_value(r, "auth_user", 1), "");
    assert_string_equal(itest_row_value(r, "client_tls_sslmode", 1), "disable");
    assert_string_equal(itest_row_value(r, "client_tls_protocols", 1), "tlsv1.2,tlsv1.3");
    assert_string_equal(itest_row_value(r, "server_tls_ciphers", 1), "(OpenSSL's)");
    assert_string_equal(itest_row_value(r, "server_tls_cert_file", 1), "");
    PQclear(r);

    r = console(c, "DROP TABLE ops_console");
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42601");
    PQclear(r);

    r = console(c, "RELOAD");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    itest_assert_log_line(p, "configuration reloaded", "from", NULL);

    /* A file with an error: RELOAD answers where and why, and the
     * configuration in force stays. */
    FILE *conf = fopen(p->conf_path, "a");
    assert_non_null(conf);
    fputs("max_client_conn = many\n", conf);
    fclose(conf);
    r = console(c, "RELOAD");
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "F0000");
    const char *why = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    if (!strstr(why, p->conf_path) || !strstr(why, "max_client_conn"))
        fail_msg("RELOAD of a broken file: %s", why);
    PQclear(r);
    r = console(c, "SHOW CONFIG");
    assert_string_equal(itest_row_value(r, "max_client_conn", 1), "1000");
    PQclear(r);

    /* Not in admin_users: 42501, whatever the password. */
    PGconn *other = itest_connect(p->port, "user=ops_other password=otherpw dbname=idemproxy");
    assert_int_equal(PQstatus(other), CONNECTION_BAD);
    if (!strstr(PQerrorMessage(other), "admin_users"))
        fail_msg("ops_other on the console: %s", PQerrorMessage(other));
    itest_finish(other);
    /* A wrong password: 28P01. */
    PGconn *wrong = itest_connect(p->port, "user=ops_admin password=nope dbname=idemproxy");
    assert_int_equal(PQstatus(wrong), CONNECTION_BAD);
    assert_non_null(strstr(PQerrorMessage(wrong), "password authentication failed"));
    itest_finish(wrong);
    /* The extended protocol is refused with a clear message. */
    PGconn *ext = itest_connect_ok(p->port, "user=ops_admin password=adminpw dbname=idemproxy");
    r = PQexecParams(ext, "SHOW VERSION", 0, NULL, NULL, NULL, NULL, 0);
    assert_int_not_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_non_null(strstr(PQerrorMessage(ext), "simple query protocol"));
    PQclear(r);
    itest_finish(ext);

    /* SHUTDOWN: as SIGTERM, the busy-free application client is closed
     * and the process exits 0. */
    r = console(c, "SHUTDOWN");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    assert_true(itest_proxy_wait_exit(p, 15000));
    assert_true(WIFEXITED(p->exit_status) && WEXITSTATUS(p->exit_status) == 0);
    itest_pass();
}

/* ---- placing clients on workers -------------------------------------------- */

/* The worker SHOW CLIENTS gives for the client whose socket is c's; 0 when
 * it is not listed. */
static int worker_of(PGresult *clients, PGconn *c)
{
    struct sockaddr_in local;
    socklen_t len = sizeof local;
    char peer[64];

    assert_int_equal(getsockname(PQsocket(c), (struct sockaddr *)&local, &len), 0);
    snprintf(peer, sizeof peer, "127.0.0.1:%u", ntohs(local.sin_port));
    for (int i = 0; i < PQntuples(clients); i++) {
        if (strcmp(PQgetvalue(clients, i, 2), peer) == 0)
            return atoi(PQgetvalue(clients, i, 1));
    }
    return 0;
}

/* How many of the listed clients worker serves. */
static int clients_on(PGresult *clients, int worker)
{
    int n = 0;
    for (int i = 0; i < PQntuples(clients); i++)
        n += atoi(PQgetvalue(clients, i, 1)) == worker;
    return n;
}

#define PLACED_APPS 9

/* Whichever worker the kernel gives a connection to, the worker with the
 * fewest clients serves it: 10 clients sit 5 and 5, and after three of one
 * worker's leave, the next three all go to that worker. */
static void test_ops_workers_balanced(void **state)
{
    (void)state;
    char extra[1300];
    snprintf(extra, sizeof extra, "workers = 2\n%s", console_admin("ops_admin", "adminpw"));
    struct itest_proxy *p = itest_proxy_start_with(NULL, extra);
    PGconn *console_conn =
        itest_connect_ok(p->port, "user=ops_admin password=adminpw dbname=idemproxy");
    PGconn *apps[PLACED_APPS];
    for (int i = 0; i < PLACED_APPS; i++)
        apps[i] = itest_connect_ok(p->port, NULL);

    PGresult *r = console(console_conn, "SHOW CLIENTS");
    itest_assert_result_ok(r, "SHOW CLIENTS");
    assert_int_equal(PQntuples(r), PLACED_APPS + 1);
    assert_int_equal(clients_on(r, 1), 5);
    assert_int_equal(clients_on(r, 2), 5);
    int left = 0, on[PLACED_APPS];
    for (int i = 0; i < PLACED_APPS; i++) {
        on[i] = worker_of(r, apps[i]);
        assert_true(on[i] == 1 || on[i] == 2);
    }
    PQclear(r);

    /* Three clients of worker 1 leave. */
    for (int i = 0; i < PLACED_APPS && left < 3; i++) {
        if (on[i] == 1) {
            itest_finish(apps[i]);
            apps[i] = NULL;
            left++;
        }
    }
    int64_t deadline = itest_now_ms() + 5000;
    for (;;) {
        r = console(console_conn, "SHOW CLIENTS");
        itest_assert_result_ok(r, "SHOW CLIENTS");
        if (PQntuples(r) == PLACED_APPS + 1 - 3)
            break;
        assert_true(itest_now_ms() < deadline);
        PQclear(r);
        itest_sleep_ms(20);
    }
    PQclear(r);

    PGconn *later[3];
    for (int i = 0; i < 3; i++) {
        later[i] = itest_connect_ok(p->port, NULL);
        assert_int_equal(itest_query_ll(later[i], "SELECT 7"), 7);
    }
    r = console(console_conn, "SHOW CLIENTS");
    itest_assert_result_ok(r, "SHOW CLIENTS");
    for (int i = 0; i < 3; i++)
        assert_int_equal(worker_of(r, later[i]), 1);
    assert_int_equal(clients_on(r, 1), 5);
    assert_int_equal(clients_on(r, 2), 5);
    PQclear(r);
    for (int i = 0; i < PLACED_APPS; i++) {
        if (apps[i])
            assert_int_equal(itest_query_ll(apps[i], "SELECT 1"), 1);
    }
    itest_pass();
}

/* ---- io_uring = auto ------------------------------------------------------- */

#define RING_APPS 8
#define RING_BATCH 32

/* workers_on_ring from SHOW STATS. */
static long long workers_on_ring(PGconn *console_conn)
{
    PGresult *r = console(console_conn, "SHOW STATS");
    itest_assert_result_ok(r, "SHOW STATS");
    long long n = atoll(itest_row_value(r, "workers_on_ring", 1));
    PQclear(r);
    return n;
}

/* Every app sends a pipeline of RING_BATCH queries before any result is
 * read, so the worker serves them all at once; each answer is checked. */
static void ring_busy_round(PGconn **apps, int round)
{
    char text[16];
    const char *vals[1] = { text };
    int64_t deadline = itest_now_ms() + 20000;

    for (int a = 0; a < RING_APPS; a++) {
        assert_int_equal(PQenterPipelineMode(apps[a]), 1);
        for (int q = 0; q < RING_BATCH; q++) {
            snprintf(text, sizeof text, "%d", round * 100000 + a * 1000 + q);
            assert_int_equal(PQsendQueryParams(apps[a], "SELECT $1::int", 1, NULL, vals, NULL,
                                               NULL, 0),
                             1);
        }
        assert_int_equal(PQpipelineSync(apps[a]), 1);
    }
    for (int a = 0; a < RING_APPS; a++) {
        for (int q = 0; q < RING_BATCH; q++) {
            PGresult *r = itest_pipeline_result(apps[a], deadline);
            itest_assert_result_ok(r, "a pipelined SELECT");
            assert_int_equal(atoi(PQgetvalue(r, 0, 0)), round * 100000 + a * 1000 + q);
            PQclear(r);
            itest_pipeline_end(apps[a], deadline);
        }
        PGresult *sync = itest_pipeline_result(apps[a], deadline);
        assert_int_equal(PQresultStatus(sync), PGRES_PIPELINE_SYNC);
        PQclear(sync);
        assert_int_equal(PQexitPipelineMode(apps[a]), 1);
    }
}

/* io_uring = auto: the worker's sessions start on plain system calls, move
 * onto its ring while eight of them speak at once, and leave it again when
 * one is left taking turns with the server. The same sessions stay open
 * throughout, and every answer across the moves is right. */
static void test_ops_ring_follows_load(void **state)
{
    (void)state;
    char extra[1400];
    int mport = itest_free_port();
    snprintf(extra, sizeof extra, "workers = 1\nio_uring = auto\nmetrics_port = %d\n%s", mport,
             console_admin("ops_admin", "adminpw"));
    struct itest_proxy_opts opts = { .log_level = "debug", .extra = extra, .own_settings = true };
    struct itest_proxy *p = itest_proxy_start(&opts);
    if (itest_proxy_log_contains(p, "io_uring not in use")) {
        printf("io_uring is not allowed here: test skipped\n");
        skip();
    }
    PGconn *console_conn =
        itest_connect_ok(p->port, "user=ops_admin password=adminpw dbname=idemproxy");
    PGconn *apps[RING_APPS];
    for (int a = 0; a < RING_APPS; a++)
        apps[a] = itest_connect_ok(p->port, NULL);
    assert_int_equal(workers_on_ring(console_conn), 0);

    int round = 0;
    int64_t deadline = itest_now_ms() + 30000;
    while (workers_on_ring(console_conn) == 0) {
        if (itest_now_ms() > deadline)
            fail_msg("eight busy sessions did not move onto the ring");
        for (int64_t until = itest_now_ms() + 100; itest_now_ms() < until;)
            ring_busy_round(apps, round++);
    }
    itest_assert_log_line(p, "sessions move to io_uring", "[worker 1]", NULL);
    char *text = itest_http_get(mport, "/metrics");
    assert_metric(text, "idemproxy_workers_on_ring", 1);
    free(text);

    deadline = itest_now_ms() + 30000;
    long long n = 0;
    while (workers_on_ring(console_conn) == 1) {
        if (itest_now_ms() > deadline)
            fail_msg("one session taking turns did not leave the ring");
        for (int64_t until = itest_now_ms() + 100; itest_now_ms() < until; n++) {
            char sql[48];
            snprintf(sql, sizeof sql, "SELECT %lld", n);
            assert_int_equal(itest_query_ll(apps[0], sql), n);
        }
    }
    itest_assert_log_line(p, "sessions leave io_uring", "[worker 1]", NULL);
    text = itest_http_get(mport, "/metrics");
    assert_metric(text, "idemproxy_workers_on_ring", 0);
    free(text);

    ring_busy_round(apps, round);
    for (int a = 0; a < RING_APPS; a++)
        itest_finish(apps[a]);
    itest_pass();
}

/* ---- systemd notifications ------------------------------------------------ */

/* The next datagram on fd within 20 s, into buf; fails the test without. */
static void next_notification(int fd, char *buf, size_t cap, const char *waiting_for)
{
    struct timeval tv = { 20, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ssize_t n = recv(fd, buf, cap - 1, 0);
    if (n < 0)
        fail_msg("no notification (waiting for %s): %s", waiting_for, strerror(errno));
    buf[n] = '\0';
}

static void test_ops_sd_notify(void **state)
{
    (void)state;
#ifdef HAVE_SYSTEMD
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s/notify-%d.sock", itest_env("IDEM_TEST_TMP"),
             (int)getpid());
    unlink(sun.sun_path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    setenv("NOTIFY_SOCKET", sun.sun_path, 1);
    struct itest_proxy *p = itest_proxy_start(NULL);
    unsetenv("NOTIFY_SOCKET");
    char msg[256];

    next_notification(fd, msg, sizeof msg, "READY=1");
    assert_string_equal(msg, "READY=1");
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    next_notification(fd, msg, sizeof msg, "RELOADING=1");
    if (strncmp(msg, "RELOADING=1\nMONOTONIC_USEC=", 27) != 0)
        fail_msg("on reload: %s", msg);
    next_notification(fd, msg, sizeof msg, "READY=1 after the reload");
    assert_string_equal(msg, "READY=1");
    assert_int_equal(kill(p->pid, SIGTERM), 0);
    next_notification(fd, msg, sizeof msg, "STOPPING=1");
    assert_string_equal(msg, "STOPPING=1");
    assert_true(itest_proxy_wait_exit(p, 15000));
    close(fd);
    unlink(sun.sun_path);
#else
    printf("built without libsystemd: no notifications to test\n");
#endif
    itest_pass();
}

/* The console is the proxy's own end of the protocol: a StartupMessage that
 * asks for more than it speaks hears NegotiateProtocolVersion first, as
 * PostgreSQL says it, and one that asks for nothing new hears none. */
static void test_ops_console_negotiation(void **state)
{
    (void)state;
    struct itest_proxy *p = itest_proxy_start_with(NULL, console_admin("ops_nego", "negopw"));
    static const char *const asks[] = { "user", "ops_nego", "database", "idemproxy",
                                        "_pq_.idem_test", "on", NULL };
    static const char *const plain[] = { "user", "ops_nego", "database", "idemproxy", NULL };
    static const uint8_t expected[] = { 0, 3, 0, 2, 0, 0, 0, 1, '_', 'p', 'q', '_', '.',
                                        'i', 'd', 'e', 'm', '_', 't', 'e', 's', 't', 0 };
    uint8_t pkt[256];
    char types[64];
    struct itest_msg v;

    /* Protocol 3.5 and an option: the console speaks 3.2, knows no option. */
    size_t len = itest_build_startup_params(pkt, sizeof pkt, 3u << 16 | 5, asks);
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    itest_raw_scram_login(fd, pkt, len, "negopw", types, sizeof types, 'v', &v);
    assert_true(strncmp(types, "v***R", 5) == 0);
    assert_int_equal(v.len, sizeof expected);
    assert_memory_equal(v.body, expected, sizeof expected);
    itest_msg_free(&v);
    itest_raw_close(fd);

    /* 3.2 without options is the console's own. */
    len = itest_build_startup_params(pkt, sizeof pkt, 3u << 16 | 2, plain);
    fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    itest_raw_scram_login(fd, pkt, len, "negopw", types, sizeof types, 'v', &v);
    assert_null(v.body);
    assert_true(strncmp(types, "***R", 4) == 0);
    itest_raw_close(fd);
    itest_pass();
}

/* ---- listen_addr = * --------------------------------------------------------- */

/* Whether this machine has IPv6 on its loopback. */
static bool have_ipv6_loopback(void)
{
    struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* "*" is every address of both families, as in PostgreSQL and PgBouncer:
 * clients come over IPv4 and IPv6 alike, and an IPv4 client is logged as
 * itself, not as an IPv4-mapped IPv6 address. A list, as PgBouncer takes
 * it, is each of its addresses, for every worker. */
static void test_ops_listen_everywhere(void **state)
{
    (void)state;
    if (!have_ipv6_loopback()) {
        printf("no IPv6 on the loopback here: test skipped\n");
        skip();
    }
    static const struct itest_proxy_opts everywhere = { .listen_addr = "*" };
    static const struct itest_proxy_opts listed = { .listen_addr = "127.0.0.1 , ::1",
                                                    .extra = "workers = 2\n" };
    const struct itest_proxy_opts *const opts[] = { &everywhere, &listed };
    for (size_t i = 0; i < 2; i++) {
        struct itest_proxy *p = itest_proxy_start(opts[i]);
        PGconn *v4 = itest_connect_ok(p->port, "application_name=over_v4");
        PGconn *v6 = itest_connect_ok(p->port, "host=::1 application_name=over_v6");
        assert_int_equal(itest_query_ll(v4, "SELECT 4"), 4);
        assert_int_equal(itest_query_ll(v6, "SELECT 6"), 6);
        itest_assert_log_line(p, "127.0.0.1:", "accepted", NULL);
        itest_assert_log_line(p, "[::1]:", "accepted", NULL);
        assert_false(itest_proxy_log_contains(p, "::ffff:"));
        itest_finish(v4);
        itest_finish(v6);
    }
    itest_pass();
}

/* ---- TCP keepalive -------------------------------------------------------- */

struct tcp_settings {
    int keepalive, idle, intvl, cnt, user_timeout;
};

static int sockaddr_port(const struct sockaddr_storage *a)
{
    return a->ss_family == AF_INET ? ntohs(((const struct sockaddr_in *)a)->sin_port) : -1;
}

/* The settings of the proxy's TCP socket from local_port to peer_port, read
 * on a copy of its descriptor (pidfd_getfd: the proxy is this process's
 * child). */
static struct tcp_settings proxy_socket(const struct itest_proxy *p, int local_port,
                                        int peer_port)
{
    struct tcp_settings got = { -1, -1, -1, -1, -1 };
    int pidfd = (int)syscall(SYS_pidfd_open, p->pid, 0);
    char dir[64];
    bool found = false;

    assert_true(pidfd >= 0);
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)p->pid);
    DIR *d = opendir(dir);
    assert_non_null(d);
    for (struct dirent *e; !found && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        int fd = (int)syscall(SYS_pidfd_getfd, pidfd, atoi(e->d_name), 0);
        if (fd < 0)
            continue;
        struct sockaddr_storage local, peer;
        socklen_t local_len = sizeof local, peer_len = sizeof peer;
        if (getsockname(fd, (struct sockaddr *)&local, &local_len) == 0 &&
            getpeername(fd, (struct sockaddr *)&peer, &peer_len) == 0 &&
            sockaddr_port(&local) == local_port && sockaddr_port(&peer) == peer_port) {
            socklen_t len = sizeof(int);
            assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &got.keepalive, &len), 0);
            assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &got.idle, &len), 0);
            assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &got.intvl, &len), 0);
            assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &got.cnt, &len), 0);
            assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &got.user_timeout,
                                        &len), 0);
            found = true;
        }
        close(fd);
    }
    closedir(d);
    close(pidfd);
    if (!found)
        fail_msg("the proxy has no socket from port %d to port %d", local_port, peer_port);
    return got;
}

static int local_port_of(int fd)
{
    struct sockaddr_storage a;
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    return sockaddr_port(&a);
}

static void assert_tcp(struct tcp_settings got, struct tcp_settings want, const char *which)
{
    if (got.keepalive != want.keepalive || got.idle != want.idle || got.intvl != want.intvl ||
        got.cnt != want.cnt || got.user_timeout != want.user_timeout)
        fail_msg("%s socket: keepalive %d idle %d intvl %d cnt %d user_timeout %d, expected "
                 "%d %d %d %d %d", which, got.keepalive, got.idle, got.intvl, got.cnt,
                 got.user_timeout, want.keepalive, want.idle, want.intvl, want.cnt,
                 want.user_timeout);
}

/* Both of a session's sockets, the client's and the server's. */
static void assert_session_tcp(const struct itest_proxy *p, PGconn *c, struct tcp_settings want)
{
    int server_side = (int)itest_query_ll(c, "SELECT client_port FROM pg_stat_activity "
                                             "WHERE pid = pg_backend_pid()");
    assert_tcp(proxy_socket(p, p->port, local_port_of(PQsocket(c))), want, "client");
    assert_tcp(proxy_socket(p, server_side, itest_pg_port()), want, "server");
}

static int kernel_setting(const char *name)
{
    char path[128];
    snprintf(path, sizeof path, "/proc/sys/net/ipv4/%s", name);
    FILE *f = fopen(path, "r");
    int value = -1;
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%d", &value), 1);
    fclose(f);
    return value;
}

/* A client whose host vanishes never says so: only keepalive probes let
 * the proxy notice and free the backend it holds. On by default with the
 * kernel's timings; set, on both sides of a session; off; and a reload
 * changes the sockets made afterwards. */
static void test_ops_tcp_keepalive(void **state)
{
    (void)state;
    const struct tcp_settings kernel = { 1, kernel_setting("tcp_keepalive_time"),
                                         kernel_setting("tcp_keepalive_intvl"),
                                         kernel_setting("tcp_keepalive_probes"), 0 };
    struct itest_proxy *p = itest_proxy_start_with(NULL, NULL);
    PGconn *c = itest_connect_ok(p->port, NULL);
    assert_session_tcp(p, c, kernel);
    itest_finish(c);

    p = itest_proxy_start_with(NULL, "tcp_keepalive = off\n");
    c = itest_connect_ok(p->port, NULL);
    struct tcp_settings off = kernel;
    off.keepalive = 0;
    assert_session_tcp(p, c, off);
    itest_finish(c);

    const char *set = "tcp_keepidle = 7\ntcp_keepintvl = 3\ntcp_keepcnt = 4\n"
                      "tcp_user_timeout = 9000\n";
    p = itest_proxy_start_with(NULL, set);
    PGconn *before = itest_connect_ok(p->port, NULL);
    assert_session_tcp(p, before, (struct tcp_settings){ 1, 7, 3, 4, 9000 });

    char *text = itest_read_file(p->conf_path);
    char *idle = strstr(text, "tcp_keepidle = 7\n");
    assert_non_null(idle);
    char changed[4096];
    snprintf(changed, sizeof changed, "%.*stcp_keepidle = 11\n%s", (int)(idle - text), text,
             idle + strlen("tcp_keepidle = 7\n"));
    free(text);
    rewrite_config(p, changed);
    reload_and_wait(p, "configuration reloaded", 1);
    PGconn *after = itest_connect_ok(p->port, NULL);
    assert_session_tcp(p, after, (struct tcp_settings){ 1, 11, 3, 4, 9000 });
    assert_session_tcp(p, before, (struct tcp_settings){ 1, 7, 3, 4, 9000 });
    itest_finish(before);
    itest_finish(after);
    itest_pass();
}

/* ---- out of file descriptors ---------------------------------------------- */

/* How many of pid's descriptors are below limit (all of them when limit
 * is 0): the limit on open files bounds the numbers, not the count. */
static int open_fds(pid_t pid, int limit)
{
    char dir[64];
    int n = 0;
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dir);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.' && (limit == 0 || atoi(e->d_name) < limit);
    closedir(d);
    return n;
}

/* With its descriptors used up, the proxy cannot accept: the clients that
 * come get FATAL 53300 at once instead of hanging in the kernel's queue,
 * the proxy does not spin on its listener (a busy loop wrote a log line
 * per turn), the session it has goes on, and once descriptors are free
 * again new clients are served. */
static void test_ops_out_of_descriptors(void **state)
{
    (void)state;
    enum { CLIENTS = 10 };
    int mport = itest_free_port();
    char extra[128];
    snprintf(extra, sizeof extra, "metrics_port = %d\nworkers = 1\n", mport);
    struct itest_proxy *p = itest_proxy_start_with(NULL, extra);
    PGconn *c = itest_connect_ok(p->port, NULL);

    struct rlimit before, tight;
    assert_int_equal(prlimit(p->pid, RLIMIT_NOFILE, NULL, &before), 0);
    int limit = open_fds(p->pid, 0) + 3;
    /* The soft limit only: raising a hard one again takes privileges. */
    tight.rlim_cur = (rlim_t)limit;
    tight.rlim_max = before.rlim_max;
    assert_int_equal(prlimit(p->pid, RLIMIT_NOFILE, &tight, NULL), 0);
    int room = limit - open_fds(p->pid, limit);
    int64_t start = itest_now_ms();
    int fds[CLIENTS], refused = 0;
    for (int i = 0; i < CLIENTS; i++) {
        fds[i] = itest_raw_connect(p->port);
        assert_true(fds[i] >= 0);
    }
    for (int i = 0; i < CLIENTS; i++) {
        struct itest_msg m;
        if (itest_raw_read_msg(fds[i], &m, i < room ? 300 : 3000) != ITEST_READ_OK)
            continue;
        assert_int_equal(m.type, 'E');
        assert_string_equal(itest_msg_field(&m, 'C'), "53300");
        assert_non_null(strstr(itest_msg_field(&m, 'M'), "out of file descriptors"));
        itest_msg_free(&m);
        refused++;
    }
    /* The first ones took the room left; every other one was told. */
    assert_true(room >= 3 && room < CLIENTS);
    assert_int_equal(refused, CLIENTS - room);
    assert_int_equal(itest_query_ll(c, "SELECT 41 + 1"), 42);
    int seconds = (int)((itest_now_ms() - start) / 1000);
    int lines = itest_proxy_log_count(p, "accept failed");
    if (lines < 1 || lines > seconds + 2)
        fail_msg("%d 'accept failed' log lines in about %d s", lines, seconds);

    for (int i = 0; i < CLIENTS; i++)
        itest_raw_close(fds[i]);
    assert_int_equal(prlimit(p->pid, RLIMIT_NOFILE, &before, NULL), 0);
    PGconn *after = itest_connect_ok(p->port, NULL);
    assert_int_equal(itest_query_ll(after, "SELECT 1"), 1);
    char *text = itest_http_get(mport, "/metrics");
    assert_metric(text, "idemproxy_clients_refused_total{reason=\"file_descriptors\"}",
                  (unsigned long long)refused);
    assert_metric(text, "idemproxy_clients_refused_total{reason=\"max_client_conn\"}", 0);
    free(text);
    itest_finish(after);
    itest_pass();
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        ITEST(test_ops_metrics),
        ITEST(test_ops_reload_live),
        ITEST(test_ops_log_reopen),
        ITEST(test_ops_stats_line),
        ITEST(test_ops_rolling_restart),
        ITEST(test_ops_sd_notify),
        ITEST(test_ops_admin_console),
        ITEST(test_ops_workers_balanced),
        ITEST(test_ops_ring_follows_load),
        ITEST(test_ops_console_negotiation),
        ITEST(test_ops_listen_everywhere),
        ITEST(test_ops_tcp_keepalive),
        ITEST(test_ops_out_of_descriptors),
    };
    return itest_main(argc, argv, "idemproxy operations", tests, sizeof tests / sizeof tests[0]);
}
