/*
 * itest: the harness of the integration tests (test_integration.c,
 * test_idempotent.c, test_translation.c).
 *
 * tests/integration.sh starts a scratch PostgreSQL 15 cluster and exports
 * where it is (IDEM_TEST_PG*), where the proxy binary is (IDEMPROXY) and a
 * scratch directory (IDEM_TEST_TMP). These helpers start proxies against that
 * cluster, talk to them with libpq or raw sockets, and clean up everything a
 * test leaves behind, also when an assertion fails half-way (cmocka jumps out
 * of the test; the teardown still runs).
 *
 * Every wait here is bounded: a hanging proxy must fail a test, never hang
 * the suite.
 */
#ifndef IDEM_ITEST_H
#define IDEM_ITEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libpq-fe.h>

/* Passwords of the roles integration.sh creates (it uses the same strings). */
#define ITEST_MD5_USER "md5_user"
#define ITEST_MD5_PASSWORD "md5_secret"
#define ITEST_SCRAM_USER "scram_user"
#define ITEST_SCRAM_PASSWORD "scram_secret"
#define ITEST_DBNAME "postgres"

/* Default bound for a single query through the proxy. */
#define ITEST_QUERY_TIMEOUT_MS 30000

/* ---- environment ------------------------------------------------------- */

/* The value of an environment variable integration.sh must set; fails the
 * test (with a message naming it) when it is missing. */
const char *itest_env(const char *name);
const char *itest_pg_user(void);
int itest_pg_port(void);

int64_t itest_now_ms(void);
void itest_sleep_ms(int ms);

/* A TCP port on 127.0.0.1 that nobody listens on right now: bind port 0,
 * read the port back, close. */
int itest_free_port(void);

/* True when some socket listens on 127.0.0.1:port (or the wildcard address),
 * read from /proc/net/tcp. Lets us wait for a proxy without connecting to it
 * (a probe connection would count as a client). */
bool itest_port_listening(int port);

/* ---- proxies ----------------------------------------------------------- */

struct itest_proxy_opts {
    const char *listen_addr; /* NULL: 127.0.0.1 */
    const char *server_host; /* NULL: the test cluster (IDEM_TEST_PGHOST) */
    int server_port;         /* 0: the test cluster (IDEM_TEST_PGPORT) */
    const char *log_level;   /* NULL: "info" */
    const char *extra;       /* more "key = value\n" lines, or NULL */
    const char *asan_options; /* appended to ASAN_OPTIONS in the proxy's env */
    int listen_port;          /* 0: a free port; else this one, which another
                               * proxy may already listen on (so_reuseport) */
    bool own_settings;        /* IDEM_TEST_PROXY_SETTINGS left out: extra sets
                               * what the run's settings would (io_uring) */
};

struct itest_proxy {
    bool in_use;
    pid_t pid;
    int port;
    bool exited;     /* reaped by waitpid */
    int exit_status; /* its waitpid status, once exited */
    char conf_path[512];
    size_t extra_at; /* where the start's extra begins in conf_path */
    char log_path[512];
};

/* Writes an INI file into IDEM_TEST_TMP and starts $IDEMPROXY -c on it, its
 * stderr going to a log file; waits (bounded) until it listens. Fails the
 * test when it does not come up. The proxy dies with the test binary
 * (PR_SET_PDEATHSIG), and the teardown stops it. */
struct itest_proxy *itest_proxy_start(const struct itest_proxy_opts *opts);

/* itest_proxy_start with a log level (NULL: "info") and extra config (main
 * keys first, then sections; or NULL). */
struct itest_proxy *itest_proxy_start_with(const char *log_level, const char *extra);

/* Writes p's configuration again with extra (as itest_proxy_start's) in
 * place of the one it started with, and reloads it (SIGHUP); waits for the
 * log to say so for the nth time. */
void itest_proxy_reload(struct itest_proxy *p, const char *extra, int nth);

/* A proxy with one section [table public.<table>], conflict = conflict, plus
 * more_keys ("key = value\n" lines, or "") in it. */
struct itest_proxy *itest_proxy_start_table(const char *log_level, const char *table,
                                            const char *conflict, const char *more_keys);

/* Writes "[idemproxy]\n" + body to a fresh file in IDEM_TEST_TMP; returns
 * its path in a static buffer. */
const char *itest_write_config(const char *name, const char *body);

/* Writes text to IDEM_TEST_TMP/name; returns the path in a static buffer
 * (valid until the next call). Fails the test when it cannot. */
const char *itest_write_file(const char *name, const char *text);

/* The whole file, malloc'ed and NUL-terminated ("" when unreadable). */
char *itest_read_file(const char *path);

/* True while the proxy process has not exited. */
bool itest_proxy_alive(struct itest_proxy *p);

/* Sends sig and waits up to timeout_ms for the process to exit. Returns true
 * when it exited (status in p->exit_status); false when it is still running
 * (the caller decides what then; the teardown SIGKILLs it). */
bool itest_proxy_signal_wait(struct itest_proxy *p, int sig, int timeout_ms);

/* Waits up to timeout_ms for an exit without sending anything. */
bool itest_proxy_wait_exit(struct itest_proxy *p, int timeout_ms);

/* The VmRSS of a process in kB, or -1. */
long itest_rss_kb(pid_t pid);

/* The highest of peak and the VmRSS of pid sampled every 50 ms for ms. */
long itest_rss_peak(pid_t pid, long peak, int ms);

/* What backpressure allows a proxy to hold for a client that does not read,
 * or reads slowly: its RSS may grow by less than this many kB (of a 1 GB
 * stream, say). Built with AddressSanitizer (the tests and the proxy are
 * built alike), the same buffers take more: its allocator keeps freed
 * chunks per size class and adds redzones and shadow memory, and a stream
 * that moves a worker onto io_uring measured up to 16.6 MB there against
 * 5 MB without it. */
#ifdef __SANITIZE_ADDRESS__
#define ITEST_RSS_GROWTH_MAX_KB (32 * 1024)
#else
#define ITEST_RSS_GROWTH_MAX_KB (16 * 1024)
#endif

/* Fails the test when peak is ITEST_RSS_GROWTH_MAX_KB or more above base,
 * saying what was going on (`while`). */
void itest_assert_rss_bounded(long base, long peak, const char *while_what);

/* Prints the last max_lines lines of the proxy's log to stdout. */
void itest_proxy_dump_log(const struct itest_proxy *p, int max_lines);

/* True when the log contains needle. */
bool itest_proxy_log_contains(const struct itest_proxy *p, const char *needle);

/* How many times needle occurs in the proxy's log. */
int itest_proxy_log_count(const struct itest_proxy *p, const char *needle);

/* Waits (15 s at most; fails the test after that) until needle occurs at
 * least n times in the proxy's log. */
void itest_proxy_wait_log_count(const struct itest_proxy *p, const char *needle, int n);

/* True when a single line of the log contains a, b and (unless NULL) c. */
bool itest_proxy_log_line_has(const struct itest_proxy *p, const char *a, const char *b,
                              const char *c);

/* Fails the test unless a single line of the log contains a, b and (unless
 * NULL) c. (The teardown shows the log's tail for a failed test.) */
void itest_assert_log_line(const struct itest_proxy *p, const char *a, const char *b,
                           const char *c);

/* Runs argv (argv[0] searched in PATH) with stdout+stderr appended to
 * out_path (or inherited when NULL); returns the waitpid status, or -1 when
 * it did not finish within timeout_ms (it is then killed). */
int itest_run(char *const argv[], const char *out_path, int timeout_ms);

/* Runs $IDEM_TEST_PGBIN/pg_ctl with the given arguments as the cluster's
 * owner (prefix $IDEM_TEST_AS), adding -D $IDEM_TEST_PGDATA. Returns true when
 * it exited 0. */
bool itest_pg_ctl(const char *const args[]);

/* Runs $IDEM_TEST_PGBIN/pgbench -n -f script -c 4 -j 2 -t transactions
 * -M mode --max-tries=tries against 127.0.0.1:port, bounded; fails the test
 * (showing pgbench's output) unless it exited 0 having processed all
 * 4 * transactions, none failed or aborted. pgbench tries a transaction
 * again only after a deadlock or a serialization failure. */
void itest_pgbench_ok(const char *script, int port, const char *mode, int transactions,
                      int tries);

/* The same run directly on the test cluster, where the script's duplicates
 * must make it fail (exit non-zero or abort a client): else a run through
 * the proxy could not fail either. Fails the test when it succeeds. */
void itest_pgbench_fails_directly(const char *script, const char *mode, int transactions);

/* ---- libpq ------------------------------------------------------------- */

/* Connects to 127.0.0.1:port as the cluster's superuser to ITEST_DBNAME;
 * extra is appended to the conninfo ("application_name=x password=y"...).
 * The connection is tracked and closed by the teardown; may be BAD. */
PGconn *itest_connect(int port, const char *extra);

/* Same, and fails the test with libpq's message unless it is OK. */
PGconn *itest_connect_ok(int port, const char *extra);

/* A direct connection to the test cluster, bypassing any proxy. */
PGconn *itest_connect_direct(void);

/* Closes a connection that itest_connect() made and stops tracking it. */
void itest_finish(PGconn *conn);

/* Tracks a connection made elsewhere (PQconnectStart) for the teardown. */
void itest_track_conn(PGconn *conn);

/* Waits until the next result is complete (or the deadline, in
 * itest_now_ms() time, passes: then *timed_out is set and NULL returned) and
 * returns PQgetResult(). */
PGresult *itest_next_result(PGconn *conn, int64_t deadline, bool *timed_out);

/* Waits (bounded) for the results of a query already sent with PQsend*():
 * returns the last result like PQexec() does (a COPY result at once), or
 * NULL on timeout or when the connection produced nothing at all. */
PGresult *itest_wait_result(PGconn *conn, int timeout_ms);

/* Call once a statement has ended cancelled (57014), before the session
 * runs another: waits until PostgreSQL's second signal for that cancel has
 * surely landed, so that it cannot cancel the next statement too. */
void itest_cancel_settle(void);

/* PQsendQuery + itest_wait_result. NULL when sending failed or timed out. */
PGresult *itest_exec(PGconn *conn, const char *sql);

/* Runs sql and fails the test unless it returns COMMAND_OK or TUPLES_OK. */
void itest_exec_ok(PGconn *conn, const char *sql);

/* Runs a one-value query and returns the value as a number; fails the test
 * on error. */
long long itest_query_ll(PGconn *conn, const char *sql);

/* The value of a one-row, one-column query, copied into buf (and
 * returned); fails the test on error or another shape. */
const char *itest_query_text(PGconn *conn, const char *sql, char *buf, size_t cap);

/* In a result of name/value rows (the admin console's SHOW answers): the
 * value in column col of the row whose first column is key; NULL when no
 * row has it. */
const char *itest_row_value(PGresult *r, const char *key, int col);

/* Runs a one-value query on a fresh direct connection to the cluster. */
long long itest_server_ll(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Runs a statement on a fresh direct connection; fails the test on error. */
void itest_server_exec(const char *sql);

/* Polls (every 50 ms, at most timeout_ms) until the direct query returns
 * want; returns true when it did. For "the backend is gone" checks. */
bool itest_server_wait_ll(long long want, int timeout_ms, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The extended protocol, bounded like itest_exec (NULL on timeout); text
 * parameters and results. Fail the test when libpq cannot send. */
PGresult *itest_exec_params(PGconn *conn, const char *sql, int n, const char *const *vals);
PGresult *itest_prepare(PGconn *conn, const char *name, const char *sql, int n);
PGresult *itest_exec_prepared(PGconn *conn, const char *name, int n, const char *const *vals);
PGresult *itest_describe_prepared(PGconn *conn, const char *name);

/* The next result of a pipeline; fails the test when none comes before the
 * deadline (itest_now_ms() time: a hang) or there is none. */
PGresult *itest_pipeline_result(PGconn *conn, int64_t deadline);

/* Takes the NULL that ends one pipelined query's results; fails the test on
 * a timeout or an extra result. */
void itest_pipeline_end(PGconn *conn, int64_t deadline);

/* Reads the answers to a pipeline of [a query that fails, one more query,
 * Sync]: the failure with sqlstate, the next query skipped
 * (PGRES_PIPELINE_ABORTED), then the Sync; fails the test otherwise. */
void itest_pipeline_after_error(PGconn *conn, const char *sqlstate, int64_t deadline);

/* COPY FROM STDIN of rows lines of 1 kB into a temporary table, in chunks
 * that do not match the lines, then COPY TO STDOUT: every row and byte
 * must come back. Fails the test otherwise. */
void itest_copy_round_trip(PGconn *c, int rows);

/* ---- assertions on results --------------------------------------------- */

/* These fail the test naming `what` and what came instead. res may be NULL
 * (no result: a timeout or a lost connection), which fails them. They free
 * res before failing, so that a failed test does not add a leak report to
 * its output; on success res stays the caller's. */

/* res is COMMAND_OK or TUPLES_OK. */
void itest_assert_result_ok(PGresult *res, const char *what);

/* res succeeded and its CommandComplete tag is tag. */
void itest_assert_tag(PGresult *res, const char *tag, const char *what);

/* res is an error with SQLSTATE sqlstate. */
void itest_assert_sqlstate(PGresult *res, const char *sqlstate, const char *what);

/* The error field `field` (PG_DIAG_*) of res is want; name is the field's
 * name for the message. */
void itest_assert_field(PGresult *res, int field, const char *want, const char *name);

/* Runs sql (simple protocol, itest_exec) and checks its tag. */
void itest_exec_tag(PGconn *conn, const char *sql, const char *tag);

/* Runs sql (simple protocol, itest_exec) and checks it fails with sqlstate. */
void itest_exec_sqlstate(PGconn *conn, const char *sql, const char *sqlstate);

/* ---- raw sockets ------------------------------------------------------- */

/* A blocking TCP socket connected to 127.0.0.1:port, or -1 with errno. It is
 * tracked and closed by the teardown. */
int itest_raw_connect(int port);
void itest_raw_close(int fd);

/* Sends all len bytes (MSG_NOSIGNAL); false when the peer is gone. */
bool itest_raw_send(int fd, const void *buf, size_t len);

/* Waits up to timeout_ms for data: returns the byte count, 0 on EOF, -1 on
 * error (ECONNRESET counts as EOF: returns 0), -2 on timeout. */
ssize_t itest_raw_recv(int fd, void *buf, size_t len, int timeout_ms);

/* A backend message read from a raw socket. body is malloc'ed. */
struct itest_msg {
    char type;
    uint32_t len; /* body length (the length field minus 4) */
    uint8_t *body;
};

enum itest_read {
    ITEST_READ_OK,
    ITEST_READ_EOF,
    ITEST_READ_TIMEOUT,
    ITEST_READ_BAD, /* length field < 4 or absurd */
};

/* Reads one whole message within timeout_ms. */
enum itest_read itest_raw_read_msg(int fd, struct itest_msg *msg, int timeout_ms);
void itest_msg_free(struct itest_msg *msg);

/* Reads exactly one byte (the answer to SSLRequest/GSSENCRequest). Returns
 * the byte, -1 on EOF/error, -2 on timeout. */
int itest_raw_read_byte(int fd, int timeout_ms);

/* Reads exactly len bytes from a TLS connection; false on EOF, an error or
 * the socket's receive timeout. */
struct ssl_st;
bool itest_ssl_read_all(struct ssl_st *ssl, uint8_t *buf, size_t len);

/* A TLS client handshake on fd (given a 10 s receive timeout), checking
 * the peer's certificate against the test CA ($IDEM_TEST_CERTS/ca.crt) and
 * offering the ALPN protocol alpn (NULL: none). NULL when it failed. */
struct ssl_st *itest_ssl_connect(int fd, const char *alpn);

/* Field `code` (e.g. 'C' for SQLSTATE) of an ErrorResponse/NoticeResponse,
 * in a static buffer; NULL when absent. */
const char *itest_msg_field(const struct itest_msg *msg, char code);

/* Builds a protocol 3.0 StartupMessage; returns its length. */
size_t itest_build_startup(uint8_t *buf, size_t cap, const char *user,
                           const char *database, const char *application_name);

/* Builds a regular message of type `type` with the given body. */
size_t itest_build_msg(uint8_t *buf, size_t cap, char type, const void *body, size_t body_len);

/* A StartupMessage of version (e.g. 3u << 16 | 2) with the name/value
 * pairs of pairs (NULL-ended), for what itest_build_startup cannot say:
 * protocol 3.2, _pq_ options. Returns its length. */
size_t itest_build_startup_params(uint8_t *buf, size_t cap, uint32_t version,
                                  const char *const *pairs);

/* Sends the StartupMessage pkt and logs in with SCRAM-SHA-256 (no channel
 * binding) with password, as libpq would but for a StartupMessage libpq
 * cannot send. Writes the type of every message up to ReadyForQuery to
 * types, each step of the SASL exchange (AuthenticationSASL, SASLContinue,
 * SASLFinal) as '*'; the first message of type want (if any) goes to
 * *wanted (free it with itest_msg_free). Fails the test on an
 * ErrorResponse. */
void itest_raw_scram_login(int fd, const uint8_t *pkt, size_t len, const char *password,
                           char *types, size_t cap, char want, struct itest_msg *wanted);

/* Sends a StartupMessage and reads until ReadyForQuery. For users that the
 * cluster trusts; fails the test on anything else. */
void itest_raw_login(int fd, const char *user, const char *application_name);
void itest_raw_login_db(int fd, const char *user, const char *database,
                        const char *application_name);

/* Reads until the proxy closes the socket (EOF/reset) or timeout_ms passes.
 * Returns true when it closed. When the bytes form backend messages and one
 * of them is an ErrorResponse, its SQLSTATE is copied to sqlstate (6 bytes,
 * "" when none). */
bool itest_raw_wait_closed(int fd, int timeout_ms, char sqlstate[6]);

/* ---- fixtures ---------------------------------------------------------- */

/* cmocka setup/teardown: the teardown closes every tracked connection and
 * socket and stops every proxy (SIGINT), failing the test when a proxy
 * crashed or a sanitizer reported an error in its log. A per-test alarm
 * ends the binary (and its proxies) when a test hangs. */
int itest_setup(void **state);
int itest_teardown(void **state);

/* Marks the running test as having reached its end; the teardown prints the
 * proxy logs for tests that did not. */
void itest_pass(void);

/* Kills (SIGKILL) every proxy still running; for atexit. */
void itest_kill_all(void);

/* An entry of a test binary's test array. */
#define ITEST(f) cmocka_unit_test_setup_teardown(f, itest_setup, itest_teardown)

struct CMUnitTest;

/* main() of a test binary: `--free-port` prints a free TCP port (for
 * integration.sh) and exits; otherwise runs the count tests as the cmocka
 * group `group`, those matching the filter argv[1] (or IDEM_TEST_FILTER)
 * when one is given, and kills any proxy left at exit. */
int itest_main(int argc, char **argv, const char *group, const struct CMUnitTest *tests,
               size_t count);

/* GET path from 127.0.0.1:port over HTTP/1.0; returns the whole response
 * (status line, headers, body), malloc'ed. Fails the test when it cannot. */
char *itest_http_get(int port, const char *path);

/* The value of the sample whose line starts with series (name and labels
 * exactly as rendered) in a /metrics response; fails the test when there
 * is none. */
unsigned long long itest_metric(const char *text, const char *series);

#endif
