/*
 * itest: helpers for the integration tests. See itest.h.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>

#include "itest.h"

/* A test that runs longer than this (or IDEM_TEST_TIMEOUT_S seconds, for
 * longer runs such as IDEM_DIFF_SEQUENCES asks for) has hung: the alarm ends
 * the binary, and PR_SET_PDEATHSIG takes its proxies along. */
#define ITEST_TEST_TIMEOUT_S 180

static unsigned test_timeout_s(void)
{
    const char *s = getenv("IDEM_TEST_TIMEOUT_S");
    long n = s ? strtol(s, NULL, 10) : 0;
    return n > 0 ? (unsigned)n : ITEST_TEST_TIMEOUT_S;
}

#define MAX_PROXIES 16
#define MAX_CONNS 512
#define MAX_FDS 128

static struct itest_proxy g_proxies[MAX_PROXIES];
static PGconn *g_conns[MAX_CONNS];
static int g_fds[MAX_FDS];
static bool g_fds_init;
static bool g_passed;
static unsigned g_file_seq;

/* ---- environment ------------------------------------------------------- */

const char *itest_env(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        fail_msg("environment variable %s is not set (run tests/integration.sh)", name);
    return v;
}

const char *itest_pg_user(void)
{
    return itest_env("IDEM_TEST_PGUSER");
}

int itest_pg_port(void)
{
    return atoi(itest_env("IDEM_TEST_PGPORT"));
}

int64_t itest_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void itest_sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int itest_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = { 0 };
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t alen = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static bool listening_in(const char *path, int port, bool v6)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    char line[512];
    bool found = false;
    if (fgets(line, sizeof line, f) == NULL) { /* header */
        fclose(f);
        return false;
    }
    while (!found && fgets(line, sizeof line, f) != NULL) {
        char local[64];
        unsigned lport, st;
        if (sscanf(line, " %*d: %63[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x", local, &lport, &st) != 3)
            continue;
        if (st != 0x0A || (int)lport != port)
            continue;
        /* 127.0.0.1 or 0.0.0.0 (little-endian hex in /proc); any v6 address */
        if (v6 || strcmp(local, "0100007F") == 0 || strcmp(local, "00000000") == 0)
            found = true;
    }
    fclose(f);
    return found;
}

bool itest_port_listening(int port)
{
    return listening_in("/proc/net/tcp", port, false) ||
           listening_in("/proc/net/tcp6", port, true);
}

/* ---- files ------------------------------------------------------------- */

static bool write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return false;
    bool ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

/* Reads at most the last `max` bytes of a file; malloc'ed, NUL-terminated. */
static char *read_tail(const char *path, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return NULL;
    }
    off_t start = st.st_size > (off_t)max ? st.st_size - (off_t)max : 0;
    size_t want = (size_t)(st.st_size - start);
    char *buf = malloc(want + 1);
    size_t got = 0;
    if (buf != NULL && lseek(fd, start, SEEK_SET) == start) {
        while (got < want) {
            ssize_t n = read(fd, buf + got, want - got);
            if (n <= 0)
                break;
            got += (size_t)n;
        }
        buf[got] = '\0';
    }
    close(fd);
    return buf;
}

const char *itest_write_config(const char *name, const char *body)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/%s-%d-%u.ini", itest_env("IDEM_TEST_TMP"), name,
             (int)getpid(), ++g_file_seq);
    size_t len = strlen(body) + 32;
    char *text = malloc(len);
    assert_non_null(text);
    snprintf(text, len, "[idemproxy]\n%s", body);
    bool ok = write_file(path, text);
    free(text);
    if (!ok)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    return path;
}

const char *itest_write_file(const char *name, const char *text)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/%s", itest_env("IDEM_TEST_TMP"), name);
    if (!write_file(path, text))
        fail_msg("cannot write %s: %s", path, strerror(errno));
    return path;
}

char *itest_read_file(const char *path)
{
    /* Far more than any config file or program output a test reads. */
    char *text = read_tail(path, 64u << 20);
    if (text == NULL)
        text = strdup("");
    assert_non_null(text);
    return text;
}

/* ---- processes --------------------------------------------------------- */

/* In a forked child: die with the test binary, so that no proxy outlives a
 * crashed or killed test run; and start from default signal handling (a
 * shell runs background jobs with SIGINT ignored, and ignored signals
 * survive exec; we ignore SIGPIPE ourselves). */
static void die_with_parent(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
    const int sigs[] = { SIGINT, SIGQUIT, SIGTERM, SIGHUP, SIGPIPE, SIGALRM, SIGCHLD };
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        signal(sigs[i], SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

static void redirect_output(const char *path)
{
    int in = open("/dev/null", O_RDONLY);
    if (in >= 0) {
        dup2(in, 0);
        close(in);
    }
    if (path == NULL)
        return;
    int out = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out >= 0) {
        dup2(out, 1);
        dup2(out, 2);
        close(out);
    }
}

static bool reap(pid_t pid, int *status, int timeout_ms)
{
    int64_t deadline = itest_now_ms() + timeout_ms;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD))
            return true;
        if (itest_now_ms() >= deadline)
            return false;
        itest_sleep_ms(10);
    }
}

int itest_run(char *const argv[], const char *out_path, int timeout_ms)
{
    fflush(stdout);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        die_with_parent(parent);
        redirect_output(out_path);
        execvp(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status = 0;
    if (!reap(pid, &status, timeout_ms)) {
        kill(pid, SIGKILL);
        reap(pid, &status, 5000);
        return -1;
    }
    return status;
}

bool itest_pg_ctl(const char *const args[])
{
    char *argv[32];
    int n = 0;
    /* IDEM_TEST_AS is "runuser -u postgres --" when root, else empty. */
    char as[256];
    const char *as_env = getenv("IDEM_TEST_AS");
    snprintf(as, sizeof as, "%s", as_env != NULL ? as_env : "");
    for (char *save = NULL, *tok = strtok_r(as, " ", &save); tok != NULL && n < 8;
         tok = strtok_r(NULL, " ", &save))
        argv[n++] = tok;
    char pg_ctl[512];
    snprintf(pg_ctl, sizeof pg_ctl, "%s/pg_ctl", itest_env("IDEM_TEST_PGBIN"));
    argv[n++] = pg_ctl;
    for (int i = 0; args[i] != NULL && n < 26; i++)
        argv[n++] = (char *)args[i];
    argv[n++] = (char *)"-D";
    argv[n++] = (char *)itest_env("IDEM_TEST_PGDATA");
    argv[n] = NULL;

    char out[600];
    snprintf(out, sizeof out, "%s/pg_ctl-%d-%u.out", itest_env("IDEM_TEST_TMP"),
             (int)getpid(), ++g_file_seq);
    int status = itest_run(argv, out, 120000);
    bool ok = status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok) {
        char *text = read_tail(out, 8192);
        printf("pg_ctl %s failed (status %d):\n%s\n", args[0], status, text ? text : "");
        free(text);
    }
    return ok;
}

#define PGBENCH_TIMEOUT_MS 60000
#define COPY_LINE 1024 /* itest_copy_round_trip: 1023 characters and a newline */

/* Runs pgbench (see itest_pgbench_ok); returns its waitpid status (-1: timed
 * out) and its output in *out (malloc'ed). */
static int pgbench(const char *script, int port, const char *mode, int transactions, int tries,
                   char **out)
{
    char bin[512], out_path[600], port_s[16], count[16], max_tries[32];
    snprintf(bin, sizeof bin, "%s/pgbench", itest_env("IDEM_TEST_PGBIN"));
    /* The binaries share IDEM_TEST_TMP, and itest_run appends. */
    snprintf(out_path, sizeof out_path, "%s/pgbench-%d-%u-%s-%d.out", itest_env("IDEM_TEST_TMP"),
             (int)getpid(), ++g_file_seq, mode, port);
    snprintf(port_s, sizeof port_s, "%d", port);
    snprintf(count, sizeof count, "%d", transactions);
    snprintf(max_tries, sizeof max_tries, "--max-tries=%d", tries);
    char *argv[] = { bin, (char *)"-n", max_tries, (char *)"-f", (char *)script, (char *)"-c",
                     (char *)"4", (char *)"-j", (char *)"2", (char *)"-t", count,
                     (char *)"-M", (char *)mode, (char *)"-h", (char *)"127.0.0.1",
                     (char *)"-p", port_s, (char *)"-U", (char *)itest_pg_user(),
                     (char *)ITEST_DBNAME, NULL };
    int status = itest_run(argv, out_path, PGBENCH_TIMEOUT_MS);
    *out = itest_read_file(out_path);
    return status;
}

void itest_pgbench_ok(const char *script, int port, const char *mode, int transactions,
                      int tries)
{
    char *out = NULL;
    int st = pgbench(script, port, mode, transactions, tries, &out);
    char processed[96];
    snprintf(processed, sizeof processed, "number of transactions actually processed: %d/%d",
             4 * transactions, 4 * transactions);
    bool ok = st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 &&
              strstr(out, "number of failed transactions: 0 (") != NULL &&
              strstr(out, processed) != NULL && strstr(out, "aborted") == NULL;
    if (!ok) {
        printf("pgbench -M %s through the proxy (status 0x%x):\n%s\n", mode, st, out);
        free(out);
        fail_msg("pgbench -M %s through the proxy failed", mode);
    }
    free(out);
    printf("pgbench -M %s through the proxy: ok\n", mode);
}

void itest_pgbench_fails_directly(const char *script, const char *mode, int transactions)
{
    char *out = NULL;
    int st = pgbench(script, itest_pg_port(), mode, transactions, 1, &out);
    bool failed = st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 ||
                  strstr(out, "aborted") != NULL;
    printf("pgbench directly on the server: status 0x%x, %s\n", st,
           failed ? "failed as it must" : "SUCCEEDED");
    if (!failed)
        printf("%s\n", out);
    free(out);
    assert_true(failed);
}

/* ---- proxies ----------------------------------------------------------- */

static struct itest_proxy *proxy_slot(void)
{
    for (int i = 0; i < MAX_PROXIES; i++)
        if (!g_proxies[i].in_use) {
            memset(&g_proxies[i], 0, sizeof g_proxies[i]);
            g_proxies[i].in_use = true;
            return &g_proxies[i];
        }
    fail_msg("too many proxies in one test");
    return NULL;
}

static pid_t spawn_proxy(struct itest_proxy *p, const char *asan_options)
{
    const char *bin = itest_env("IDEMPROXY");
    fflush(stdout);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    die_with_parent(parent);
    redirect_output(p->log_path);
    if (asan_options != NULL) {
        const char *old = getenv("ASAN_OPTIONS");
        char buf[1024];
        snprintf(buf, sizeof buf, "%s%s%s", old ? old : "", old && *old ? ":" : "", asan_options);
        setenv("ASAN_OPTIONS", buf, 1);
    }
    execl(bin, bin, "-c", p->conf_path, (char *)NULL);
    fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
    _exit(127);
}

/* On a port another process may already listen on, only the proxy's own
 * log tells that it is up. */
static bool proxy_listening(struct itest_proxy *p, const struct itest_proxy_opts *opts)
{
    if (opts->listen_port)
        return itest_proxy_log_contains(p, " listening on ");
    /* The port takes connections once the first worker listens; the line
     * comes when all do, at the levels that show it, unless it goes to a
     * log_file of the test's own. */
    bool says = (!opts->log_level || strcmp(opts->log_level, "info") == 0 ||
                 strcmp(opts->log_level, "debug") == 0) &&
                !(opts->extra && strstr(opts->extra, "log_file"));
    return itest_port_listening(p->port) && (!says || itest_proxy_log_contains(p, " listening on "));
}

struct itest_proxy *itest_proxy_start(const struct itest_proxy_opts *opts)
{
    static const struct itest_proxy_opts no_opts;
    if (opts == NULL)
        opts = &no_opts;
    struct itest_proxy *p = proxy_slot();
    /* Up to three ports: another process may grab a port between our probe
     * and the proxy's bind. */
    for (int attempt = 0; attempt < 3; attempt++) {
        p->port = opts->listen_port ? opts->listen_port : itest_free_port();
        assert_true(p->port > 0);
        char body[4096];
        const char *run_settings = getenv("IDEM_TEST_PROXY_SETTINGS");
        if (!run_settings || opts->own_settings)
            run_settings = "";
        int at = snprintf(body, sizeof body,
                 "listen_addr = %s\n"
                 "listen_port = %d\n"
                 "server_host = %s\n"
                 "server_port = %d\n"
                 "log_level = %s\n"
                 "%s\n"
                 "%s",
                 opts->listen_addr ? opts->listen_addr : "127.0.0.1", p->port,
                 opts->server_host ? opts->server_host : itest_env("IDEM_TEST_PGHOST"),
                 opts->server_port ? opts->server_port : itest_pg_port(),
                 opts->log_level ? opts->log_level : "info",
                 run_settings, opts->extra ? opts->extra : "");
        assert_true(at > 0 && (size_t)at < sizeof body);
        p->extra_at = strlen("[idemproxy]\n") + (size_t)at - strlen(opts->extra ? opts->extra : "");
        snprintf(p->conf_path, sizeof p->conf_path, "%s", itest_write_config("proxy", body));
        /* The test binaries share IDEM_TEST_TMP: a log of another binary's
         * proxy under the same name would answer for this one. */
        snprintf(p->log_path, sizeof p->log_path, "%s/proxy-%d-%u.log",
                 itest_env("IDEM_TEST_TMP"), (int)getpid(), ++g_file_seq);
        p->exited = false;
        p->pid = spawn_proxy(p, opts->asan_options);
        assert_true(p->pid > 0);

        /* Sanitizer builds start slower; 20 s is far beyond any sane start. */
        int64_t deadline = itest_now_ms() + 20000;
        while (itest_proxy_alive(p) && !proxy_listening(p, opts) && itest_now_ms() < deadline)
            itest_sleep_ms(10);
        if (itest_proxy_alive(p) && proxy_listening(p, opts))
            return p;
        if (itest_proxy_alive(p)) {
            itest_proxy_dump_log(p, 50);
            fail_msg("proxy (pid %d) did not listen on port %d within 20 s", (int)p->pid, p->port);
        }
        if (opts->listen_port || !itest_proxy_log_contains(p, "in use"))
            break;
    }
    itest_proxy_dump_log(p, 50);
    fail_msg("proxy exited at start (status 0x%x); config %s", p->exit_status, p->conf_path);
    return NULL;
}

struct itest_proxy *itest_proxy_start_with(const char *log_level, const char *extra)
{
    struct itest_proxy_opts opts = { .log_level = log_level, .extra = extra };
    return itest_proxy_start(&opts);
}

struct itest_proxy *itest_proxy_start_table(const char *log_level, const char *table,
                                            const char *conflict, const char *more_keys)
{
    char extra[1024];
    snprintf(extra, sizeof extra, "[table public.%s]\nconflict = %s\n%s", table, conflict,
             more_keys);
    return itest_proxy_start_with(log_level, extra);
}

void itest_proxy_reload(struct itest_proxy *p, const char *extra, int nth)
{
    char *text = itest_read_file(p->conf_path), tmp[600];

    assert_true(strlen(text) >= p->extra_at);
    text[p->extra_at] = '\0';
    snprintf(tmp, sizeof tmp, "%s.new", p->conf_path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    fputs(extra, f);
    free(text);
    assert_int_equal(fclose(f), 0);
    /* Whole at once: a reload never reads half a file. */
    if (rename(tmp, p->conf_path) != 0)
        fail_msg("rename %s: %s", tmp, strerror(errno));
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    itest_proxy_wait_log_count(p, "configuration reloaded", nth);
}

bool itest_proxy_alive(struct itest_proxy *p)
{
    if (p->exited)
        return false;
    int status;
    pid_t r = waitpid(p->pid, &status, WNOHANG);
    if (r == p->pid) {
        p->exited = true;
        p->exit_status = status;
        return false;
    }
    return true;
}

bool itest_proxy_wait_exit(struct itest_proxy *p, int timeout_ms)
{
    int64_t deadline = itest_now_ms() + timeout_ms;
    while (itest_proxy_alive(p)) {
        if (itest_now_ms() >= deadline)
            return false;
        itest_sleep_ms(10);
    }
    return true;
}

bool itest_proxy_signal_wait(struct itest_proxy *p, int sig, int timeout_ms)
{
    if (!itest_proxy_alive(p))
        return true;
    kill(p->pid, sig);
    return itest_proxy_wait_exit(p, timeout_ms);
}

long itest_rss_kb(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

long itest_rss_peak(pid_t pid, long peak, int ms)
{
    for (int waited = 0; waited < ms; waited += 50) {
        itest_sleep_ms(50);
        long rss = itest_rss_kb(pid);
        if (rss > peak)
            peak = rss;
    }
    return peak;
}

void itest_assert_rss_bounded(long base, long peak, const char *while_what)
{
    if (peak >= base + ITEST_RSS_GROWTH_MAX_KB)
        fail_msg("proxy RSS grew by %ld kB %s", peak - base, while_what);
}

void itest_proxy_dump_log(const struct itest_proxy *p, int max_lines)
{
    char *text = read_tail(p->log_path, 64 * 1024);
    if (text == NULL) {
        printf("--- (no log %s)\n", p->log_path);
        return;
    }
    /* Find where the last max_lines lines start. */
    size_t len = strlen(text);
    const char *start = text;
    int lines = 0;
    for (size_t i = len; i > 0; i--)
        if (text[i - 1] == '\n' && i != len && ++lines >= max_lines) {
            start = text + i;
            break;
        }
    printf("--- last lines of proxy log %s (pid %d, port %d):\n%s%s---\n", p->log_path,
           (int)p->pid, p->port, start, len && text[len - 1] != '\n' ? "\n" : "");
    free(text);
}

bool itest_proxy_log_contains(const struct itest_proxy *p, const char *needle)
{
    char *text = read_tail(p->log_path, 16 * 1024 * 1024);
    bool found = text != NULL && strstr(text, needle) != NULL;
    free(text);
    return found;
}

int itest_proxy_log_count(const struct itest_proxy *p, const char *needle)
{
    char *text = itest_read_file(p->log_path);
    int n = 0;

    for (const char *at = text; (at = strstr(at, needle)) != NULL; at += strlen(needle))
        n++;
    free(text);
    return n;
}

void itest_proxy_wait_log_count(const struct itest_proxy *p, const char *needle, int n)
{
    int64_t deadline = itest_now_ms() + 15000;

    while (itest_proxy_log_count(p, needle) < n) {
        if (itest_now_ms() >= deadline)
            fail_msg("the proxy log has %d \"%s\", want %d within 15 s",
                     itest_proxy_log_count(p, needle), needle, n);
        itest_sleep_ms(20);
    }
}

bool itest_proxy_log_line_has(const struct itest_proxy *p, const char *a, const char *b,
                              const char *c)
{
    FILE *f = fopen(p->log_path, "r");
    if (f == NULL)
        return false;
    char *line = NULL;
    size_t cap = 0;
    bool found = false;
    while (!found && getline(&line, &cap, f) >= 0)
        found = strstr(line, a) != NULL && strstr(line, b) != NULL &&
                (c == NULL || strstr(line, c) != NULL);
    free(line);
    fclose(f);
    return found;
}

void itest_assert_log_line(const struct itest_proxy *p, const char *a, const char *b,
                           const char *c)
{
    if (!itest_proxy_log_line_has(p, a, b, c))
        fail_msg("no line of the proxy log has \"%s\", \"%s\"%s%s%s", a, b, c ? ", \"" : "",
                 c ? c : "", c ? "\"" : "");
}

/* ---- libpq ------------------------------------------------------------- */

void itest_track_conn(PGconn *conn)
{
    for (int i = 0; i < MAX_CONNS; i++)
        if (g_conns[i] == NULL) {
            g_conns[i] = conn;
            return;
        }
    fail_msg("too many tracked connections");
}

static PGconn *connect_to(const char *host, int port, const char *extra)
{
    char conninfo[2048];
    bool has_user = extra != NULL && strstr(extra, "user=") != NULL;
    snprintf(conninfo, sizeof conninfo,
             "host=%s port=%d dbname=%s connect_timeout=10 %s%s %s", host, port, ITEST_DBNAME,
             has_user ? "" : "user=", has_user ? "" : itest_pg_user(), extra ? extra : "");
    PGconn *conn = PQconnectdb(conninfo);
    assert_non_null(conn);
    itest_track_conn(conn);
    return conn;
}

PGconn *itest_connect(int port, const char *extra)
{
    return connect_to("127.0.0.1", port, extra);
}

PGconn *itest_connect_ok(int port, const char *extra)
{
    PGconn *conn = itest_connect(port, extra);
    if (PQstatus(conn) != CONNECTION_OK)
        fail_msg("connection to port %d (%s) failed: %s", port, extra ? extra : "",
                 PQerrorMessage(conn));
    return conn;
}

PGconn *itest_connect_direct(void)
{
    PGconn *conn = connect_to(itest_env("IDEM_TEST_PGHOST"), itest_pg_port(), NULL);
    if (PQstatus(conn) != CONNECTION_OK)
        fail_msg("direct connection to the test cluster failed: %s", PQerrorMessage(conn));
    return conn;
}

void itest_finish(PGconn *conn)
{
    if (conn == NULL)
        return;
    for (int i = 0; i < MAX_CONNS; i++)
        if (g_conns[i] == conn)
            g_conns[i] = NULL;
    PQfinish(conn);
}

PGresult *itest_next_result(PGconn *conn, int64_t deadline, bool *timed_out)
{
    *timed_out = false;
    while (PQisBusy(conn)) {
        int64_t left = deadline - itest_now_ms();
        if (left <= 0) {
            *timed_out = true;
            return NULL;
        }
        struct pollfd pfd = { PQsocket(conn), POLLIN, 0 };
        if (pfd.fd < 0)
            break;
        poll(&pfd, 1, left > 100 ? 100 : (int)left);
        if (!PQconsumeInput(conn))
            break; /* the connection is gone: PQgetResult reports it */
    }
    return PQgetResult(conn);
}

/* PostgreSQL signals a cancelled backend twice, the process and then its
 * process group, and the process that sends them may be preempted between
 * the two by the very backend the first one woke. A second signal that
 * lands while the backend waits for a command is ignored; one that lands
 * in the next statement cancels it too. */
void itest_cancel_settle(void)
{
    itest_sleep_ms(300);
}

PGresult *itest_wait_result(PGconn *conn, int timeout_ms)
{
    int64_t deadline = itest_now_ms() + timeout_ms;
    PGresult *last = NULL;
    for (;;) {
        bool timed_out;
        PGresult *r = itest_next_result(conn, deadline, &timed_out);
        if (timed_out) {
            PQclear(last);
            return NULL;
        }
        if (r == NULL)
            break;
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            PQclear(last);
            return r;
        }
        /* Keep the first error, like PQexec's error wins over later results. */
        if (last != NULL && PQresultStatus(last) == PGRES_FATAL_ERROR) {
            PQclear(r);
        } else {
            PQclear(last);
            last = r;
        }
    }
    return last;
}

PGresult *itest_exec(PGconn *conn, const char *sql)
{
    if (!PQsendQuery(conn, sql)) {
        printf("PQsendQuery(%s) failed: %s", sql, PQerrorMessage(conn));
        return NULL;
    }
    PGresult *res = itest_wait_result(conn, ITEST_QUERY_TIMEOUT_MS);
    if (res == NULL)
        printf("no result for %s within %d ms\n", sql, ITEST_QUERY_TIMEOUT_MS);
    return res;
}

void itest_exec_ok(PGconn *conn, const char *sql)
{
    PGresult *res = itest_exec(conn, sql);
    if (res == NULL)
        fail_msg("%s: no result: %s", sql, PQerrorMessage(conn));
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
        PQclear(res);
        fail_msg("%s: %s: %s", sql, PQresStatus(st), msg);
    }
    PQclear(res);
}

long long itest_query_ll(PGconn *conn, const char *sql)
{
    PGresult *res = itest_exec(conn, sql);
    if (res == NULL)
        fail_msg("%s: no result: %s", sql, PQerrorMessage(conn));
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) < 1 ||
        PQgetisnull(res, 0, 0)) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s (%d rows) %s", PQresStatus(PQresultStatus(res)),
                 PQntuples(res), PQresultErrorMessage(res));
        PQclear(res);
        fail_msg("%s: expected one value, got %s", sql, msg);
    }
    long long v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

const char *itest_query_text(PGconn *conn, const char *sql, char *buf, size_t cap)
{
    PGresult *r = itest_exec(conn, sql);

    itest_assert_result_ok(r, sql);
    if (PQntuples(r) != 1 || PQnfields(r) != 1) {
        int rows = PQntuples(r);
        PQclear(r);
        fail_msg("%s: %d rows, want 1", sql, rows);
    }
    snprintf(buf, cap, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return buf;
}

const char *itest_row_value(PGresult *r, const char *key, int col)
{
    for (int i = 0; i < PQntuples(r); i++)
        if (strcmp(PQgetvalue(r, i, 0), key) == 0)
            return PQgetvalue(r, i, col);
    return NULL;
}

long long itest_server_ll(const char *fmt, ...)
{
    char sql[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    PGconn *conn = itest_connect_direct();
    long long v = itest_query_ll(conn, sql);
    itest_finish(conn);
    return v;
}

void itest_server_exec(const char *sql)
{
    PGconn *conn = itest_connect_direct();
    itest_exec_ok(conn, sql);
    itest_finish(conn);
}

bool itest_server_wait_ll(long long want, int timeout_ms, const char *fmt, ...)
{
    char sql[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    PGconn *conn = itest_connect_direct();
    int64_t deadline = itest_now_ms() + timeout_ms;
    long long v;
    /* Each autocommit statement takes a fresh pg_stat_activity snapshot. */
    while ((v = itest_query_ll(conn, sql)) != want && itest_now_ms() < deadline)
        itest_sleep_ms(50);
    itest_finish(conn);
    if (v != want)
        printf("%s: still %lld (want %lld) after %d ms\n", sql, v, want, timeout_ms);
    return v == want;
}

PGresult *itest_exec_params(PGconn *conn, const char *sql, int n, const char *const *vals)
{
    if (!PQsendQueryParams(conn, sql, n, NULL, vals, NULL, NULL, 0))
        fail_msg("PQsendQueryParams(%s): %s", sql, PQerrorMessage(conn));
    return itest_wait_result(conn, ITEST_QUERY_TIMEOUT_MS);
}

PGresult *itest_prepare(PGconn *conn, const char *name, const char *sql, int n)
{
    if (!PQsendPrepare(conn, name, sql, n, NULL))
        fail_msg("PQsendPrepare(%s): %s", sql, PQerrorMessage(conn));
    return itest_wait_result(conn, ITEST_QUERY_TIMEOUT_MS);
}

PGresult *itest_exec_prepared(PGconn *conn, const char *name, int n, const char *const *vals)
{
    if (!PQsendQueryPrepared(conn, name, n, vals, NULL, NULL, 0))
        fail_msg("PQsendQueryPrepared(%s): %s", name, PQerrorMessage(conn));
    return itest_wait_result(conn, ITEST_QUERY_TIMEOUT_MS);
}

PGresult *itest_describe_prepared(PGconn *conn, const char *name)
{
    if (!PQsendDescribePrepared(conn, name))
        fail_msg("PQsendDescribePrepared(%s): %s", name, PQerrorMessage(conn));
    return itest_wait_result(conn, ITEST_QUERY_TIMEOUT_MS);
}

PGresult *itest_pipeline_result(PGconn *conn, int64_t deadline)
{
    bool timed_out;
    PGresult *r = itest_next_result(conn, deadline, &timed_out);
    if (timed_out || r == NULL)
        fail_msg("pipeline: %s", timed_out ? "timed out (hang)" : "no result");
    return r;
}

void itest_pipeline_end(PGconn *conn, int64_t deadline)
{
    bool timed_out;
    PGresult *r = itest_next_result(conn, deadline, &timed_out);
    if (timed_out)
        fail_msg("pipeline: timed out (hang)");
    if (r != NULL) {
        char st[64];
        snprintf(st, sizeof st, "%s", PQresStatus(PQresultStatus(r)));
        PQclear(r);
        fail_msg("pipeline: an extra result %s", st);
    }
}

void itest_pipeline_after_error(PGconn *conn, const char *sqlstate, int64_t deadline)
{
    PGresult *r = itest_pipeline_result(conn, deadline);
    itest_assert_sqlstate(r, sqlstate, "the pipeline's failing query");
    PQclear(r);
    itest_pipeline_end(conn, deadline);
    r = itest_pipeline_result(conn, deadline);
    assert_int_equal(PQresultStatus(r), PGRES_PIPELINE_ABORTED);
    PQclear(r);
    itest_pipeline_end(conn, deadline);
    r = itest_pipeline_result(conn, deadline);
    assert_int_equal(PQresultStatus(r), PGRES_PIPELINE_SYNC);
    PQclear(r);
}

/* ---- assertions on results --------------------------------------------- */

void itest_assert_result_ok(PGresult *res, const char *what)
{
    if (res == NULL)
        fail_msg("%s: no result (timeout or lost connection)", what);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        char msg[1024];
        snprintf(msg, sizeof msg, "%s %s: %s", PQresStatus(st), code ? code : "",
                 PQresultErrorMessage(res));
        PQclear(res);
        fail_msg("%s: %s", what, msg);
    }
}

void itest_assert_tag(PGresult *res, const char *tag, const char *what)
{
    itest_assert_result_ok(res, what);
    if (strcmp(PQcmdStatus(res), tag) != 0) {
        char got[128];
        snprintf(got, sizeof got, "%s", PQcmdStatus(res));
        PQclear(res);
        fail_msg("%s: command tag \"%s\", want \"%s\"", what, got, tag);
    }
}

void itest_assert_sqlstate(PGresult *res, const char *sqlstate, const char *what)
{
    if (res == NULL)
        fail_msg("%s: no result, expected SQLSTATE %s", what, sqlstate);
    const char *got = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (PQresultStatus(res) != PGRES_FATAL_ERROR || got == NULL || strcmp(got, sqlstate) != 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s %s: %s (tag \"%s\")", PQresStatus(PQresultStatus(res)),
                 got ? got : "(no SQLSTATE)", PQresultErrorMessage(res), PQcmdStatus(res));
        PQclear(res);
        fail_msg("%s: expected error %s, got %s", what, sqlstate, msg);
    }
}

void itest_assert_field(PGresult *res, int field, const char *want, const char *name)
{
    const char *got = PQresultErrorField(res, field);
    if (got != NULL && strcmp(got, want) == 0)
        return;
    char msg[1024];
    if (got == NULL)
        snprintf(msg, sizeof msg, "error field %s is missing (want \"%s\")", name, want);
    else
        snprintf(msg, sizeof msg, "error field %s: got \"%s\", want \"%s\"", name, got, want);
    PQclear(res);
    fail_msg("%s", msg);
}

void itest_exec_tag(PGconn *conn, const char *sql, const char *tag)
{
    PGresult *r = itest_exec(conn, sql);
    itest_assert_tag(r, tag, sql);
    PQclear(r);
}

void itest_exec_sqlstate(PGconn *conn, const char *sql, const char *sqlstate)
{
    PGresult *r = itest_exec(conn, sql);
    itest_assert_sqlstate(r, sqlstate, sql);
    PQclear(r);
}

/* ---- raw sockets ------------------------------------------------------- */

static void fds_init(void)
{
    if (!g_fds_init) {
        for (int i = 0; i < MAX_FDS; i++)
            g_fds[i] = -1;
        g_fds_init = true;
    }
}

int itest_raw_connect(int port)
{
    fds_init();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = { 0 };
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (int i = 0; i < MAX_FDS; i++)
        if (g_fds[i] < 0) {
            g_fds[i] = fd;
            break;
        }
    return fd;
}

void itest_raw_close(int fd)
{
    if (fd < 0)
        return;
    fds_init();
    for (int i = 0; i < MAX_FDS; i++)
        if (g_fds[i] == fd)
            g_fds[i] = -1;
    close(fd);
}

bool itest_raw_send(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

ssize_t itest_raw_recv(int fd, void *buf, size_t len, int timeout_ms)
{
    struct pollfd pfd = { fd, POLLIN, 0 };
    int r;
    do
        r = poll(&pfd, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r == 0)
        return -2;
    if (r < 0)
        return -1;
    ssize_t n;
    do
        n = recv(fd, buf, len, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == ECONNRESET || errno == EPIPE))
        return 0;
    return n;
}

static enum itest_read read_exact(int fd, void *buf, size_t len, int64_t deadline)
{
    uint8_t *p = buf;
    while (len > 0) {
        int64_t left = deadline - itest_now_ms();
        if (left <= 0)
            return ITEST_READ_TIMEOUT;
        ssize_t n = itest_raw_recv(fd, p, len, (int)left);
        if (n == -2)
            return ITEST_READ_TIMEOUT;
        if (n <= 0)
            return ITEST_READ_EOF;
        p += n;
        len -= (size_t)n;
    }
    return ITEST_READ_OK;
}

enum itest_read itest_raw_read_msg(int fd, struct itest_msg *msg, int timeout_ms)
{
    int64_t deadline = itest_now_ms() + timeout_ms;
    uint8_t head[5];
    memset(msg, 0, sizeof *msg);
    enum itest_read r = read_exact(fd, head, sizeof head, deadline);
    if (r != ITEST_READ_OK)
        return r;
    uint32_t len = ((uint32_t)head[1] << 24) | ((uint32_t)head[2] << 16) |
                   ((uint32_t)head[3] << 8) | head[4];
    if (len < 4 || len > (64u << 20))
        return ITEST_READ_BAD;
    msg->type = (char)head[0];
    msg->len = len - 4;
    msg->body = malloc(msg->len + 1);
    assert_non_null(msg->body);
    r = read_exact(fd, msg->body, msg->len, deadline);
    msg->body[msg->len] = 0;
    if (r != ITEST_READ_OK)
        itest_msg_free(msg);
    return r;
}

void itest_msg_free(struct itest_msg *msg)
{
    free(msg->body);
    msg->body = NULL;
}

bool itest_ssl_read_all(SSL *ssl, uint8_t *buf, size_t len)
{
    for (size_t got = 0; got < len;) {
        int n = SSL_read(ssl, buf + got, (int)(len - got));
        if (n <= 0)
            return false;
        got += (size_t)n;
    }
    return true;
}

SSL *itest_ssl_connect(int fd, const char *alpn)
{
    struct timeval limit = { 10, 0 };
    char ca[600];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    assert_non_null(ctx);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    snprintf(ca, sizeof ca, "%s/ca.crt", itest_env("IDEM_TEST_CERTS"));
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, ca, NULL), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL *ssl = SSL_new(ctx);
    SSL_CTX_free(ctx);
    assert_non_null(ssl);
    if (alpn) {
        unsigned char list[64];
        size_t len = strlen(alpn);
        assert_true(len + 1 <= sizeof list);
        list[0] = (unsigned char)len;
        memcpy(list + 1, alpn, len);
        assert_int_equal(SSL_set_alpn_protos(ssl, list, (unsigned)len + 1), 0);
    }
    assert_int_equal(SSL_set_fd(ssl, fd), 1);
    if (SSL_connect(ssl) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

int itest_raw_read_byte(int fd, int timeout_ms)
{
    uint8_t b;
    ssize_t n = itest_raw_recv(fd, &b, 1, timeout_ms);
    if (n == -2)
        return -2;
    return n == 1 ? b : -1;
}

static const char *fields_find(const uint8_t *body, size_t len, char code)
{
    static char value[1024];
    size_t i = 0;
    while (i < len && body[i] != 0) {
        char c = (char)body[i++];
        const char *s = (const char *)body + i;
        size_t slen = strnlen(s, len - i);
        if (c == code) {
            snprintf(value, sizeof value, "%.*s", (int)slen, s);
            return value;
        }
        i += slen + 1;
    }
    return NULL;
}

const char *itest_msg_field(const struct itest_msg *msg, char code)
{
    if (msg->body == NULL || (msg->type != 'E' && msg->type != 'N'))
        return NULL;
    return fields_find(msg->body, msg->len, code);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

size_t itest_build_startup(uint8_t *buf, size_t cap, const char *user, const char *database,
                           const char *application_name)
{
    size_t n = 8;
    const char *kv[] = { "user", user, "database", database, "application_name", application_name };
    for (int i = 0; i < 6; i += 2) {
        if (kv[i + 1] == NULL)
            continue;
        size_t kl = strlen(kv[i]) + 1, vl = strlen(kv[i + 1]) + 1;
        assert_true(n + kl + vl + 1 <= cap);
        memcpy(buf + n, kv[i], kl);
        n += kl;
        memcpy(buf + n, kv[i + 1], vl);
        n += vl;
    }
    buf[n++] = 0;
    put32(buf, (uint32_t)n);
    put32(buf + 4, 196608); /* protocol 3.0 */
    return n;
}

size_t itest_build_msg(uint8_t *buf, size_t cap, char type, const void *body, size_t body_len)
{
    assert_true(body_len + 5 <= cap);
    buf[0] = (uint8_t)type;
    put32(buf + 1, (uint32_t)(body_len + 4));
    if (body_len > 0)
        memcpy(buf + 5, body, body_len);
    return body_len + 5;
}

/* ---- a client that speaks SCRAM itself ---------------------------------- */

size_t itest_build_startup_params(uint8_t *buf, size_t cap, uint32_t version,
                                  const char *const *pairs)
{
    size_t n = 8;

    for (const char *const *kv = pairs; *kv; kv++) {
        size_t len = strlen(*kv) + 1;
        assert_true(n + len + 1 <= cap);
        memcpy(buf + n, *kv, len);
        n += len;
    }
    buf[n++] = 0;
    put32(buf, (uint32_t)n);
    put32(buf + 4, version);
    return n;
}

static uint32_t msg_u32(const struct itest_msg *m)
{
    assert_true(m->len >= 4);
    return (uint32_t)m->body[0] << 24 | (uint32_t)m->body[1] << 16 |
           (uint32_t)m->body[2] << 8 | m->body[3];
}

/* The value of attribute name ("r=", "s=", "i=") in a SCRAM message. */
static void scram_attr(const char *msg, const char *name, char *out, size_t cap)
{
    const char *at = strstr(msg, name);
    assert_non_null(at);
    at += strlen(name);
    size_t len = strcspn(at, ",");
    assert_true(len < cap);
    memcpy(out, at, len);
    out[len] = '\0';
}

/* What the client keeps from one step of its SCRAM exchange to the next. */
struct scram_client_state {
    const char *password;
    char first_bare[128];
};

static void send_sasl(int fd, const void *body, size_t len)
{
    uint8_t buf[512];
    size_t n = itest_build_msg(buf, sizeof buf, 'p', body, len);
    assert_true(itest_raw_send(fd, buf, n));
}

/* Answers the server's AuthenticationSASL or SASLContinue (m). */
static void sasl_step(int fd, struct scram_client_state *st, const struct itest_msg *m)
{
    static const char mechanism[] = "SCRAM-SHA-256";
    uint32_t code = msg_u32(m);

    if (code == 10) {
        uint8_t raw_nonce[18], initial[256];
        char nonce[32];
        assert_int_equal(RAND_bytes(raw_nonce, sizeof raw_nonce), 1);
        EVP_EncodeBlock((uint8_t *)nonce, raw_nonce, sizeof raw_nonce);
        int n = snprintf(st->first_bare, sizeof st->first_bare, "n=,r=%s", nonce);
        size_t first_len = (size_t)n + 3;
        memcpy(initial, mechanism, sizeof mechanism);
        put32(initial + sizeof mechanism, (uint32_t)first_len);
        memcpy(initial + sizeof mechanism + 4, "n,,", 3);
        memcpy(initial + sizeof mechanism + 7, st->first_bare, (size_t)n);
        send_sasl(fd, initial, sizeof mechanism + 4 + first_len);
        return;
    }
    if (code != 11)
        return; /* 12, SASLFinal: the server's proof, taken on trust here */
    char server_first[256], r[128], s[128], i[16], without_proof[160], auth[512], final[512];
    char proof_b64[64];
    uint8_t salt[96], salted[32], client_key[32], stored_key[32], signature[32], proof[32];
    unsigned int len;
    assert_true(m->len - 4 < sizeof server_first);
    memcpy(server_first, m->body + 4, m->len - 4);
    server_first[m->len - 4] = '\0';
    scram_attr(server_first, "r=", r, sizeof r);
    scram_attr(server_first, "s=", s, sizeof s);
    scram_attr(server_first, "i=", i, sizeof i);
    int salt_len = EVP_DecodeBlock(salt, (const uint8_t *)s, (int)strlen(s));
    assert_true(salt_len > 0);
    salt_len -= (int)(strlen(s) - strcspn(s, "=")); /* padding decodes to zeros */
    assert_int_equal(PKCS5_PBKDF2_HMAC(st->password, (int)strlen(st->password), salt, salt_len,
                                       atoi(i), EVP_sha256(), sizeof salted, salted), 1);
    HMAC(EVP_sha256(), salted, sizeof salted, (const uint8_t *)"Client Key", 10, client_key, &len);
    SHA256(client_key, sizeof client_key, stored_key);
    snprintf(without_proof, sizeof without_proof, "c=biws,r=%s", r);
    int n = snprintf(auth, sizeof auth, "%s,%s,%s", st->first_bare, server_first, without_proof);
    HMAC(EVP_sha256(), stored_key, sizeof stored_key, (const uint8_t *)auth, (size_t)n, signature,
         &len);
    for (size_t b = 0; b < sizeof proof; b++)
        proof[b] = client_key[b] ^ signature[b];
    EVP_EncodeBlock((uint8_t *)proof_b64, proof, sizeof proof);
    n = snprintf(final, sizeof final, "%s,p=%s", without_proof, proof_b64);
    send_sasl(fd, final, (size_t)n);
}

void itest_raw_scram_login(int fd, const uint8_t *pkt, size_t len, const char *password,
                           char *types, size_t cap, char want, struct itest_msg *wanted)
{
    struct scram_client_state st = { .password = password };
    size_t got = 0;
    struct itest_msg m;

    memset(wanted, 0, sizeof(*wanted));
    assert_true(itest_raw_send(fd, pkt, len));
    do {
        assert_int_equal(itest_raw_read_msg(fd, &m, 10000), ITEST_READ_OK);
        if (m.type == 'E')
            fail_msg("login failed: %s", itest_msg_field(&m, 'M'));
        assert_true(got + 1 < cap);
        bool sasl = m.type == 'R' && msg_u32(&m) != 0;
        types[got++] = sasl ? '*' : m.type;
        if (sasl)
            sasl_step(fd, &st, &m);
        if (m.type == want && !wanted->body)
            *wanted = m;
        else
            itest_msg_free(&m);
    } while (types[got - 1] != 'Z');
    types[got] = '\0';
}

void itest_raw_login(int fd, const char *user, const char *application_name)
{
    itest_raw_login_db(fd, user, ITEST_DBNAME, application_name);
}

void itest_raw_login_db(int fd, const char *user, const char *database,
                        const char *application_name)
{
    uint8_t pkt[512];
    size_t n = itest_build_startup(pkt, sizeof pkt, user, database, application_name);
    assert_true(itest_raw_send(fd, pkt, n));
    for (int i = 0; i < 200; i++) {
        struct itest_msg m;
        enum itest_read r = itest_raw_read_msg(fd, &m, 10000);
        if (r != ITEST_READ_OK)
            fail_msg("raw login as %s: read failed (%d) before ReadyForQuery", user, (int)r);
        char type = m.type;
        if (type == 'E') {
            char why[512];
            const char *mm = itest_msg_field(&m, 'M');
            snprintf(why, sizeof why, "%s", mm ? mm : "?");
            itest_msg_free(&m);
            fail_msg("raw login as %s: ErrorResponse: %s", user, why);
        }
        if (type == 'R') {
            uint32_t code = m.len >= 4 ? ((uint32_t)m.body[0] << 24 | (uint32_t)m.body[1] << 16 |
                                          (uint32_t)m.body[2] << 8 | m.body[3])
                                       : 99;
            itest_msg_free(&m);
            if (code != 0)
                fail_msg("raw login as %s: authentication request %u, expected trust", user, code);
            continue;
        }
        itest_msg_free(&m);
        if (type == 'Z')
            return;
    }
    fail_msg("raw login as %s: no ReadyForQuery", user);
}

bool itest_raw_wait_closed(int fd, int timeout_ms, char sqlstate[6])
{
    int64_t deadline = itest_now_ms() + timeout_ms;
    uint8_t keep[65536];
    size_t kept = 0;
    bool closed = false;
    sqlstate[0] = '\0';
    for (;;) {
        int64_t left = deadline - itest_now_ms();
        if (left <= 0)
            break;
        uint8_t buf[16384];
        ssize_t n = itest_raw_recv(fd, buf, sizeof buf, (int)left);
        if (n == -2)
            break;
        if (n <= 0) {
            closed = true;
            break;
        }
        size_t take = (size_t)n < sizeof keep - kept ? (size_t)n : sizeof keep - kept;
        memcpy(keep + kept, buf, take);
        kept += take;
    }
    /* Walk whatever arrived as backend messages; remember the first error. */
    size_t off = 0;
    while (off + 5 <= kept) {
        uint32_t len = ((uint32_t)keep[off + 1] << 24) | ((uint32_t)keep[off + 2] << 16) |
                       ((uint32_t)keep[off + 3] << 8) | keep[off + 4];
        if (len < 4 || off + 1 + len > kept)
            break;
        if (keep[off] == 'E' && sqlstate[0] == '\0') {
            const char *c = fields_find(keep + off + 5, len - 4, 'C');
            if (c != NULL)
                snprintf(sqlstate, 6, "%s", c);
        }
        off += 1 + len;
    }
    return closed;
}

/* ---- fixtures ---------------------------------------------------------- */

static void write_str(const char *s)
{
    ssize_t r = write(1, s, strlen(s));
    (void)r;
}

/* The alarm fired: a test hung. Only async-signal-safe calls from here. */
static void on_alarm(int sig)
{
    (void)sig;
    write_str("\nitest: TEST TIMED OUT (hung); proxy log tails follow\n");
    for (int i = 0; i < MAX_PROXIES; i++) {
        if (!g_proxies[i].in_use)
            continue;
        write_str("--- ");
        write_str(g_proxies[i].log_path);
        write_str(":\n");
        int fd = open(g_proxies[i].log_path, O_RDONLY);
        if (fd >= 0) {
            off_t end = lseek(fd, 0, SEEK_END);
            lseek(fd, end > 8192 ? end - 8192 : 0, SEEK_SET);
            char buf[4096];
            ssize_t n;
            while ((n = read(fd, buf, sizeof buf)) > 0) {
                ssize_t w = write(1, buf, (size_t)n);
                (void)w;
            }
            close(fd);
        }
        if (!g_proxies[i].exited)
            kill(g_proxies[i].pid, SIGKILL);
    }
    _exit(2);
}

int itest_setup(void **state)
{
    (void)state;
    g_passed = false;
    signal(SIGALRM, on_alarm);
    alarm(test_timeout_s());
    return 0;
}

void itest_pass(void)
{
    g_passed = true;
}

static const char *const sanitizer_marks[] = {
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "ThreadSanitizer",
};

int itest_teardown(void **state)
{
    (void)state;
    int rc = 0;
    for (int i = 0; i < MAX_CONNS; i++)
        if (g_conns[i] != NULL) {
            PQfinish(g_conns[i]);
            g_conns[i] = NULL;
        }
    fds_init();
    for (int i = 0; i < MAX_FDS; i++)
        if (g_fds[i] >= 0) {
            close(g_fds[i]);
            g_fds[i] = -1;
        }
    for (int i = 0; i < MAX_PROXIES; i++) {
        struct itest_proxy *p = &g_proxies[i];
        if (!p->in_use)
            continue;
        bool problem = false;
        bool was_running = !p->exited && itest_proxy_alive(p);
        if (was_running && !itest_proxy_signal_wait(p, SIGINT, 10000)) {
            printf("itest: proxy pid %d ignored SIGINT for 10 s; killing it\n", (int)p->pid);
            kill(p->pid, SIGKILL);
            itest_proxy_wait_exit(p, 5000);
            problem = true;
        }
        if (p->exited && WIFSIGNALED(p->exit_status)) {
            int sig = WTERMSIG(p->exit_status);
            if (!(was_running && (sig == SIGINT || sig == SIGKILL))) {
                printf("itest: proxy pid %d died of signal %d (%s)\n", (int)p->pid, sig,
                       strsignal(sig));
                problem = true;
            }
        } else if (p->exited && WIFEXITED(p->exit_status) && WEXITSTATUS(p->exit_status) != 0) {
            printf("itest: note: proxy pid %d exited with status %d\n", (int)p->pid,
                   WEXITSTATUS(p->exit_status));
        }
        for (size_t k = 0; k < sizeof sanitizer_marks / sizeof sanitizer_marks[0]; k++)
            if (itest_proxy_log_contains(p, sanitizer_marks[k])) {
                printf("itest: sanitizer report in %s\n", p->log_path);
                problem = true;
            }
        if (problem || !g_passed)
            itest_proxy_dump_log(p, problem ? 200 : 60);
        if (problem)
            rc = -1;
        p->in_use = false;
    }
    alarm(0);
    return rc;
}

int itest_main(int argc, char **argv, const char *group, const struct CMUnitTest *tests,
               size_t count)
{
    /* Line-buffered, so a hung or crashed test's last words reach the log. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && strcmp(argv[1], "--free-port") == 0) {
        int port = itest_free_port();
        printf("%d\n", port);
        return port > 0 ? 0 : 1;
    }
    atexit(itest_kill_all);
    const char *filter = argc > 1 ? argv[1] : getenv("IDEM_TEST_FILTER");
    if (filter != NULL && *filter != '\0')
        cmocka_set_test_filter(filter);
    /* What cmocka_run_group_tests_name() expands to, for an array passed in. */
    return _cmocka_run_group_tests(group, tests, count, NULL, NULL);
}

void itest_kill_all(void)
{
    for (int i = 0; i < MAX_PROXIES; i++)
        if (g_proxies[i].in_use && !g_proxies[i].exited) {
            kill(g_proxies[i].pid, SIGKILL);
            int status;
            reap(g_proxies[i].pid, &status, 5000);
            g_proxies[i].exited = true;
        }
}

void itest_copy_round_trip(PGconn *c, int rows)
{
    itest_exec_ok(c, "CREATE TEMP TABLE itest_copy (payload text)");

    size_t total = (size_t)rows * COPY_LINE;
    char *data = malloc(total);
    assert_non_null(data);
    uint64_t byte_sum = 0;
    long long ascii_sum = 0;
    for (int i = 0; i < rows; i++) {
        char ch = (char)('a' + i % 26);
        memset(data + (size_t)i * COPY_LINE, ch, COPY_LINE - 1);
        data[(size_t)i * COPY_LINE + COPY_LINE - 1] = '\n';
        ascii_sum += ch;
    }
    for (size_t i = 0; i < total; i++)
        byte_sum += (uint8_t)data[i];

    PGresult *r = itest_exec(c, "COPY itest_copy FROM STDIN");
    assert_non_null(r);
    assert_int_equal(PQresultStatus(r), PGRES_COPY_IN);
    PQclear(r);
    /* Odd chunk size: CopyData boundaries do not match lines. */
    const size_t chunk = 65521;
    for (size_t off = 0; off < total; off += chunk) {
        size_t n = total - off < chunk ? total - off : chunk;
        if (PQputCopyData(c, data + off, (int)n) != 1)
            fail_msg("PQputCopyData at %zu: %s", off, PQerrorMessage(c));
    }
    free(data);
    assert_int_equal(PQputCopyEnd(c, NULL), 1);
    r = itest_wait_result(c, 120000);
    itest_assert_result_ok(r, "COPY FROM STDIN");
    assert_int_equal(atoi(PQcmdTuples(r)), rows);
    PQclear(r);

    assert_int_equal(itest_query_ll(c, "SELECT count(*) FROM itest_copy"), rows);
    assert_int_equal(itest_query_ll(c, "SELECT sum(length(payload)) FROM itest_copy"),
                     (long long)rows * (COPY_LINE - 1));
    assert_int_equal(itest_query_ll(c, "SELECT sum(ascii(payload)) FROM itest_copy"), ascii_sum);

    r = itest_exec(c, "COPY itest_copy TO STDOUT");
    assert_non_null(r);
    assert_int_equal(PQresultStatus(r), PGRES_COPY_OUT);
    PQclear(r);
    size_t got = 0;
    uint64_t got_sum = 0;
    long copied_rows = 0;
    int64_t deadline = itest_now_ms() + 120000;
    for (;;) {
        char *buf = NULL;
        int n = PQgetCopyData(c, &buf, 1);
        if (n > 0) {
            got += (size_t)n;
            copied_rows++;
            for (int i = 0; i < n; i++)
                got_sum += (uint8_t)buf[i];
            PQfreemem(buf);
            continue;
        }
        if (n == -1)
            break;
        if (n == -2)
            fail_msg("PQgetCopyData: %s", PQerrorMessage(c));
        if (itest_now_ms() > deadline)
            fail_msg("COPY OUT timed out after %zu bytes", got);
        struct pollfd pfd = { PQsocket(c), POLLIN, 0 };
        poll(&pfd, 1, 100);
        if (!PQconsumeInput(c))
            fail_msg("COPY OUT: %s", PQerrorMessage(c));
    }
    r = itest_wait_result(c, 30000);
    itest_assert_result_ok(r, "COPY TO STDOUT");
    assert_int_equal(atoi(PQcmdTuples(r)), rows);
    PQclear(r);
    assert_int_equal(got, total);
    assert_int_equal(copied_rows, rows);
    assert_true(got_sum == byte_sum);
    itest_exec_ok(c, "DROP TABLE itest_copy");
}

/* ---- the metrics endpoint ----------------------------------------------- */

/* GET path from 127.0.0.1:port over HTTP/1.0; returns the whole response
 * (status line, headers, body), malloc'ed. Fails the test when it cannot. */
char *itest_http_get(int port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    char req[256];
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap);

    assert_true(fd >= 0);
    assert_non_null(buf);
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0)
        fail_msg("connect to the metrics port %d: %s", port, strerror(errno));
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    for (;;) {
        if (len + 1 == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        ssize_t got = read(fd, buf + len, cap - len - 1);
        if (got < 0 && errno == EINTR)
            continue;
        assert_true(got >= 0);
        if (got == 0)
            break;
        len += (size_t)got;
    }
    buf[len] = '\0';
    close(fd);
    return buf;
}

/* The value of the sample whose line starts with series (name and labels
 * exactly as rendered); fails the test when there is none. */
unsigned long long itest_metric(const char *text, const char *series)
{
    char needle[512];
    snprintf(needle, sizeof needle, "\n%s ", series);
    const char *at = strstr(text, needle);
    if (!at)
        fail_msg("no sample %s in:\n%s", series, text);
    return strtoull(at + strlen(needle), NULL, 10);
}
