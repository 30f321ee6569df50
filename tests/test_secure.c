/*
 * Integration tests of TLS and authentication: idemproxy between libpq (or
 * a raw socket) and a real PostgreSQL 15 that runs with ssl = on.
 *
 * Run by tests/integration.sh (same environment, same scratch cluster as
 * the other binaries). The script also makes the certificates, with
 * tests/tls/make-certs.sh, into $IDEM_TEST_CERTS:
 *   ca.crt                   the test CA
 *   server.crt               PostgreSQL's, subjectAltName DNS:localhost only
 *   proxy.crt/key            the proxy's: DNS:localhost, IP:127.0.0.1
 *   client.crt/key           a client certificate, CN = the cluster superuser
 *   other-ca.crt, rogue.crt/key   a second CA and a certificate it signed
 *                            (the same names as proxy.crt and client.crt)
 * and the roles md5_user (md5) and scram_user (SCRAM), which pg_hba makes
 * authenticate with their passwords over TLS and plaintext alike; everyone
 * else is trusted.
 *
 * Every test starts its own proxy with the tls/auth keys it needs, and
 * checks what PostgreSQL saw where that matters (pg_stat_ssl, through the
 * proxy or directly). What needs TLS goes through libpq, except TLS begun
 * without SSLRequest (sslnegotiation=direct), which the libpq of
 * PostgreSQL 15 cannot do: that test speaks it through OpenSSL on a raw
 * socket. Logins go through sec_connect(), which asks libpq
 * for verbose errors so that a refused login shows its SQLSTATE
 * ("FATAL:  28P01: ...") although libpq gives no PGresult for it.
 *
 * Run one test: test_secure test_sec_cancel   (a cmocka filter pattern,
 * also taken from IDEM_TEST_FILTER; every test here is named test_sec_*).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/ssl.h>

#include "itest.h"

/* Bound of one login through sec_connect (libpq's connect_timeout is
 * per address and coarse; this one is ours). */
#define SEC_CONNECT_MS 15000

/* ---- small helpers local to the tests --------------------------------- */

/* $IDEM_TEST_CERTS/name, in one of a few rotating static buffers (so that
 * several may appear in one snprintf). */
static const char *cert(const char *name)
{
    static char bufs[16][600];
    static unsigned next;
    char *b = bufs[next++ % 16];
    snprintf(b, sizeof bufs[0], "%s/%s", itest_env("IDEM_TEST_CERTS"), name);
    return b;
}

/* The config lines of the proxy's client leg: mode, proxy.crt/key and (for
 * the verify modes) ca as client_tls_ca_file. Rotating static buffers. */
static const char *client_tls(const char *mode, const char *ca)
{
    static char bufs[4][2048];
    static unsigned next;
    char *b = bufs[next++ % 4];
    int n = snprintf(b, sizeof bufs[0],
                     "client_tls_sslmode = %s\n"
                     "client_tls_cert_file = %s\n"
                     "client_tls_key_file = %s\n",
                     mode, cert("proxy.crt"), cert("proxy.key"));
    if (ca != NULL)
        snprintf(b + n, sizeof bufs[0] - (size_t)n, "client_tls_ca_file = %s\n", cert(ca));
    return b;
}

/* The config lines of the server leg: mode and (unless NULL) the CA. */
static const char *server_tls(const char *mode, const char *ca)
{
    static char bufs[4][1024];
    static unsigned next;
    char *b = bufs[next++ % 4];
    int n = snprintf(b, sizeof bufs[0], "server_tls_sslmode = %s\n", mode);
    if (ca != NULL)
        snprintf(b + n, sizeof bufs[0] - (size_t)n, "server_tls_ca_file = %s\n", cert(ca));
    return b;
}

/* Starts a proxy in front of the test cluster, reached as server_host
 * (NULL: IDEM_TEST_PGHOST, 127.0.0.1), with the extra config lines given
 * printf-style. */
static struct itest_proxy *sec_proxy(const char *server_host, const char *log_level,
                                     const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static struct itest_proxy *sec_proxy(const char *server_host, const char *log_level,
                                     const char *fmt, ...)
{
    char extra[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(extra, sizeof extra, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof extra);
    struct itest_proxy_opts opts = { .server_host = server_host, .log_level = log_level,
                                     .extra = extra };
    return itest_proxy_start(&opts);
}

/* Logs in to host:port as user (NULL: the cluster's superuser) with more
 * conninfo in extra, bounded by SEC_CONNECT_MS. Errors are verbose, so a
 * FATAL from the proxy or the server reads "FATAL:  SQLSTATE: message".
 * The connection is tracked for the teardown; it may be BAD. */
static PGconn *sec_connect_host(const char *host, int port, const char *user, const char *extra)
{
    char conninfo[2048];
    snprintf(conninfo, sizeof conninfo, "host=%s port=%d dbname=%s user=%s connect_timeout=10 %s",
             host, port, ITEST_DBNAME, user ? user : itest_pg_user(), extra ? extra : "");
    PGconn *conn = PQconnectStart(conninfo);
    assert_non_null(conn);
    itest_track_conn(conn);
    PQsetErrorVerbosity(conn, PQERRORS_VERBOSE);
    if (PQstatus(conn) == CONNECTION_BAD)
        return conn;
    int64_t deadline = itest_now_ms() + SEC_CONNECT_MS;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        int64_t left = deadline - itest_now_ms();
        if (left <= 0)
            fail_msg("login to %s:%d (%s) did not finish within %d ms", host, port, conninfo,
                     SEC_CONNECT_MS);
        struct pollfd pfd = { PQsocket(conn), st == PGRES_POLLING_READING ? POLLIN : POLLOUT,
                              0 };
        if (pfd.fd >= 0)
            poll(&pfd, 1, left > 200 ? 200 : (int)left);
        st = PQconnectPoll(conn);
    }
    return conn;
}

static PGconn *sec_connect(int port, const char *user, const char *extra)
{
    return sec_connect_host("127.0.0.1", port, user, extra);
}

/* Fails the test unless conn logged in. */
static void sec_assert_ok(PGconn *conn, const char *what)
{
    if (PQstatus(conn) != CONNECTION_OK)
        fail_msg("%s: login failed: %s", what, PQerrorMessage(conn));
}

/* Fails the test unless the login failed; with sqlstate, with that
 * SQLSTATE in a FATAL; with needle, with a message containing it. */
static void sec_assert_fails(PGconn *conn, const char *sqlstate, const char *needle,
                             const char *what)
{
    if (PQstatus(conn) == CONNECTION_OK)
        fail_msg("%s: login succeeded, but must fail%s%s", what, sqlstate ? " with " : "",
                 sqlstate ? sqlstate : "");
    const char *msg = PQerrorMessage(conn);
    char want[64];
    if (sqlstate != NULL) {
        snprintf(want, sizeof want, "FATAL:  %s:", sqlstate);
        if (strstr(msg, want) == NULL)
            fail_msg("%s: expected a FATAL %s, got: %s", what, sqlstate, msg);
    }
    if (needle != NULL && strstr(msg, needle) == NULL)
        fail_msg("%s: expected a message containing \"%s\", got: %s", what, needle, msg);
    printf("%s: refused as expected: %s", what, msg);
}

/* Whether the backend serving conn sees TLS (the proxy's leg to it). */
static bool backend_ssl(PGconn *conn)
{
    char v[16];
    itest_query_text(conn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", v, sizeof v);
    assert_true(strcmp(v, "t") == 0 || strcmp(v, "f") == 0);
    return strcmp(v, "t") == 0;
}

/* Configuration lines for TLS required on both legs. */
static const char *both_legs_tls(void)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s%s", client_tls("require", NULL), server_tls("require", NULL));
    return buf;
}

/* A client on TLS through a proxy with both_legs_tls(), conninfo added;
 * fails the test unless it logs in. */
static PGconn *connect_both_legs(int port, const char *conninfo)
{
    char all[512];
    snprintf(all, sizeof all, "sslmode=require %s", conninfo);
    PGconn *c = sec_connect(port, NULL, all);
    sec_assert_ok(c, "sslmode=require, server_tls_sslmode=require");
    return c;
}

/* Checks, on a direct connection, that exactly one backend has
 * application_name app and that its connection's TLS is ssl. */
static void assert_server_saw(const char *app, bool ssl)
{
    long long n = itest_server_ll("SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s "
                                  "USING (pid) WHERE a.application_name = '%s' AND s.ssl = %s",
                                  app, ssl ? "true" : "false");
    if (n != 1)
        fail_msg("the server has %lld backend(s) of %s with ssl = %s, want 1", n, app,
                 ssl ? "true" : "false");
}

/* Runs SELECT n through conn and checks the answer. */
static void select_n(PGconn *conn, int n)
{
    char sql[32];
    snprintf(sql, sizeof sql, "SELECT %d", n);
    assert_int_equal(itest_query_ll(conn, sql), n);
}

/* SSLRequest and GSSENCRequest packets. */
static const uint8_t SSL_REQUEST[8] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f };
static const uint8_t GSSENC_REQUEST[8] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30 };

/* Reads whatever comes until the peer closes (true) or timeout_ms passes
 * (false); the bytes go to buf (at most cap, *len of them). */
static bool read_until_closed(int fd, uint8_t *buf, size_t cap, size_t *len, int timeout_ms)
{
    int64_t deadline = itest_now_ms() + timeout_ms;
    *len = 0;
    for (;;) {
        int64_t left = deadline - itest_now_ms();
        if (left <= 0)
            return false;
        uint8_t tmp[4096];
        ssize_t n = itest_raw_recv(fd, tmp, sizeof tmp, (int)left);
        if (n == -2)
            return false;
        if (n <= 0)
            return true;
        size_t take = (size_t)n < cap - *len ? (size_t)n : cap - *len;
        memcpy(buf + *len, tmp, take);
        *len += take;
    }
}

/* What a raw client may see after its SSLRequest when it then sends
 * plaintext: nothing, or 'S' followed by nothing or by TLS records (a TLS
 * alert: content type 21), never a plaintext protocol message. */
static void assert_no_plaintext_reply(const uint8_t *buf, size_t len, const char *what)
{
    size_t at = 0;
    if (len > 0) {
        if (buf[0] != 'S')
            fail_msg("%s: the first byte back is 0x%02x ('%c'), want 'S' or nothing", what,
                     buf[0], buf[0] >= 32 && buf[0] < 127 ? buf[0] : '?');
        at = 1;
    }
    if (at < len && buf[at] != 21)
        fail_msg("%s: after 'S' came %zu bytes starting with 0x%02x ('%c'), not a TLS alert",
                 what, len - at, buf[at], buf[at] >= 32 && buf[at] < 127 ? buf[at] : '?');
    printf("%s: %zu byte(s) back, then closed\n", what, len);
}

/* Reads one message and checks it is an ErrorResponse with severity
 * FATAL and SQLSTATE sqlstate (or one of several, space-separated);
 * returns its message in buf. */
static void read_fatal(int fd, const char *sqlstate, char *buf, size_t cap, const char *what)
{
    struct itest_msg m;
    enum itest_read r = itest_raw_read_msg(fd, &m, 10000);
    if (r != ITEST_READ_OK)
        fail_msg("%s: no message (read status %d), want an ErrorResponse", what, (int)r);
    if (m.type != 'E') {
        char t = m.type;
        itest_msg_free(&m);
        fail_msg("%s: message '%c', want an ErrorResponse", what, t);
    }
    char sev[32], code[8];
    const char *f = itest_msg_field(&m, 'S');
    snprintf(sev, sizeof sev, "%s", f ? f : "");
    f = itest_msg_field(&m, 'C');
    snprintf(code, sizeof code, "%s", f ? f : "");
    f = itest_msg_field(&m, 'M');
    snprintf(buf, cap, "%s", f ? f : "");
    itest_msg_free(&m);
    if (strcmp(sev, "FATAL") != 0 || strlen(code) != 5 || strstr(sqlstate, code) == NULL)
        fail_msg("%s: got %s %s \"%s\", want FATAL %s", what, sev, code, buf, sqlstate);
}

/* Copies src to dst (through a temporary file and rename, so that a reader
 * never sees half of it) with mode 0600. */
static void copy_file(const char *src, const char *dst)
{
    char *text = itest_read_file(src);
    assert_true(text[0] != '\0');
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        fail_msg("cannot write %s: %s", tmp, strerror(errno));
    fputs(text, f);
    free(text);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(tmp, 0600), 0);
    if (rename(tmp, dst) != 0)
        fail_msg("rename %s: %s", tmp, strerror(errno));
}

/* ---- a raw look at SCRAM's first steps ---------------------------------- */

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* What a raw, plaintext client learns of a SCRAM exchange before it must
 * prove anything: the mechanisms offered, and the salt and iteration count
 * of the server-first-message. */
struct sasl_first {
    char mechanisms[256]; /* comma-separated */
    char salt[128];
    char iterations[16];
};

/* Logs in as user on a raw plaintext connection up to the server-first-
 * message (sending "n,,n=,r=<nonce>"), then hangs up. Fails the test on
 * anything but AuthenticationSASL and AuthenticationSASLContinue. */
static void sasl_first(int port, const char *user, struct sasl_first *out)
{
    memset(out, 0, sizeof *out);
    int fd = itest_raw_connect(port);
    assert_true(fd >= 0);
    uint8_t pkt[512];
    size_t n = itest_build_startup(pkt, sizeof pkt, user, ITEST_DBNAME, "sec_sasl_raw");
    assert_true(itest_raw_send(fd, pkt, n));

    struct itest_msg m;
    if (itest_raw_read_msg(fd, &m, 10000) != ITEST_READ_OK)
        fail_msg("raw SCRAM as %s: no answer to the StartupMessage", user);
    if (m.type != 'R' || m.len < 4 || get32(m.body) != 10) {
        char t = m.type;
        uint32_t code = m.len >= 4 ? get32(m.body) : 0;
        itest_msg_free(&m);
        fail_msg("raw SCRAM as %s: got '%c' (code %u), want AuthenticationSASL", user, t, code);
    }
    size_t at = 4, len = 0;
    while (at < m.len && m.body[at] != 0) {
        const char *mech = (const char *)m.body + at;
        len += (size_t)snprintf(out->mechanisms + len, sizeof out->mechanisms - len, "%s%s",
                                len ? "," : "", mech);
        at += strlen(mech) + 1;
    }
    itest_msg_free(&m);

    static const char mech[] = "SCRAM-SHA-256";
    static const char first[] = "n,,n=,r=secSecSecSecSecSecSecSec";
    uint8_t body[128];
    size_t bl = 0;
    memcpy(body, mech, sizeof mech);
    bl += sizeof mech;
    body[bl++] = 0;
    body[bl++] = 0;
    body[bl++] = 0;
    body[bl++] = (uint8_t)(sizeof first - 1);
    memcpy(body + bl, first, sizeof first - 1);
    bl += sizeof first - 1;
    n = itest_build_msg(pkt, sizeof pkt, 'p', body, bl);
    assert_true(itest_raw_send(fd, pkt, n));

    if (itest_raw_read_msg(fd, &m, 10000) != ITEST_READ_OK)
        fail_msg("raw SCRAM as %s: no answer to the client-first-message", user);
    if (m.type != 'R' || m.len < 4 || get32(m.body) != 11) {
        char t = m.type;
        const char *msg = itest_msg_field(&m, 'M');
        char why[256];
        snprintf(why, sizeof why, "%s", msg ? msg : "");
        itest_msg_free(&m);
        fail_msg("raw SCRAM as %s: got '%c' %s, want AuthenticationSASLContinue", user, t, why);
    }
    char text[512];
    snprintf(text, sizeof text, "%.*s", (int)(m.len - 4), (const char *)m.body + 4);
    itest_msg_free(&m);
    /* r=<client nonce><server nonce>,s=<salt>,i=<iterations> */
    assert_true(strncmp(text, "r=secSecSecSecSecSecSecSec", 26) == 0);
    const char *sp = strstr(text, ",s="), *ip = strstr(text, ",i=");
    assert_non_null(sp);
    assert_non_null(ip);
    assert_true(ip > sp);
    snprintf(out->salt, sizeof out->salt, "%.*s", (int)(ip - sp - 3), sp + 3);
    snprintf(out->iterations, sizeof out->iterations, "%s", ip + 3);
    printf("raw SCRAM as %s: mechanisms %s, salt %s, iterations %s\n", user, out->mechanisms,
           out->salt, out->iterations);
    itest_raw_close(fd);
}

/* ---- 1. TLS from the client; the server leg as configured -------------- */

static void test_sec_client_tls_require(void **state)
{
    (void)state;
    /* Only the client leg. */
    struct itest_proxy *p = sec_proxy(NULL, NULL, "%s", client_tls("require", NULL));
    PGconn *c = sec_connect(p->port, NULL, "sslmode=require application_name=sec_req_plain");
    sec_assert_ok(c, "sslmode=require through client_tls_sslmode=require");
    assert_int_equal(PQsslInUse(c), 1);
    const char *proto = PQsslAttribute(c, "protocol");
    assert_non_null(proto);
    printf("client TLS: %s %s\n", proto, PQsslAttribute(c, "cipher"));
    assert_false(backend_ssl(c));
    assert_server_saw("sec_req_plain", false);
    select_n(c, 1);

    /* libpq's default (prefer) takes the TLS offered. */
    PGconn *pref = sec_connect(p->port, NULL, "sslmode=prefer");
    sec_assert_ok(pref, "sslmode=prefer");
    assert_int_equal(PQsslInUse(pref), 1);

    /* Both legs. */
    struct itest_proxy *q = sec_proxy(NULL, NULL, "%s", both_legs_tls());
    PGconn *b = connect_both_legs(q->port, "application_name=sec_req_tls");
    assert_int_equal(PQsslInUse(b), 1);
    assert_true(backend_ssl(b));
    assert_server_saw("sec_req_tls", true);
    select_n(b, 2);

    /* The first connection is unchanged. */
    select_n(c, 3);
    itest_pass();
}

/* ---- 2. the client verifies the proxy ---------------------------------- */

static void test_sec_client_verify_full(void **state)
{
    (void)state;
    struct itest_proxy *p = sec_proxy(NULL, NULL, "%s", client_tls("require", NULL));
    char extra[1024];

    snprintf(extra, sizeof extra, "sslmode=verify-full sslrootcert=%s", cert("ca.crt"));
    PGconn *byname = sec_connect_host("localhost", p->port, NULL, extra);
    sec_assert_ok(byname, "verify-full host=localhost");
    assert_int_equal(PQsslInUse(byname), 1);
    select_n(byname, 1);

    PGconn *byip = sec_connect_host("127.0.0.1", p->port, NULL, extra);
    sec_assert_ok(byip, "verify-full host=127.0.0.1 (iPAddress in subjectAltName)");
    select_n(byip, 2);

    snprintf(extra, sizeof extra, "sslmode=verify-full sslrootcert=%s", cert("other-ca.crt"));
    PGconn *other = sec_connect_host("localhost", p->port, NULL, extra);
    sec_assert_fails(other, NULL, "certificate verify failed", "verify-full trusting other-ca");

    snprintf(extra, sizeof extra, "sslmode=verify-ca sslrootcert=%s", cert("other-ca.crt"));
    PGconn *other_ca = sec_connect(p->port, NULL, extra);
    sec_assert_fails(other_ca, NULL, "certificate verify failed", "verify-ca trusting other-ca");

    /* The proxy goes on. */
    select_n(byip, 3);
    assert_true(itest_proxy_alive(p));
    itest_pass();
}

/* ---- 3. plaintext refused under require -------------------------------- */

static void test_sec_plaintext_refused(void **state)
{
    (void)state;
    struct itest_proxy *p = sec_proxy(NULL, NULL, "%s", client_tls("require", NULL));

    PGconn *c = sec_connect(p->port, NULL, "sslmode=disable");
    sec_assert_fails(c, "28000", "TLS is required", "sslmode=disable against require");

    /* Raw: a StartupMessage without SSLRequest gets FATAL 28000, then the
     * connection ends. */
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    uint8_t pkt[512];
    size_t n = itest_build_startup(pkt, sizeof pkt, itest_pg_user(), ITEST_DBNAME, "sec_raw");
    assert_true(itest_raw_send(fd, pkt, n));
    char msg[512];
    read_fatal(fd, "28000", msg, sizeof msg, "raw plaintext StartupMessage");
    assert_non_null(strstr(msg, "TLS is required"));
    char code[6];
    assert_true(itest_raw_wait_closed(fd, 5000, code));
    itest_raw_close(fd);

    /* verify-ca and verify-full refuse plaintext too. */
    struct itest_proxy *v = sec_proxy(NULL, NULL, "%s", client_tls("verify-ca", "ca.crt"));
    PGconn *vc = sec_connect(v->port, NULL, "sslmode=disable");
    sec_assert_fails(vc, "28000", "TLS is required", "sslmode=disable against verify-ca");

    /* TLS clients are served. */
    PGconn *ok = sec_connect(p->port, NULL, "sslmode=require");
    sec_assert_ok(ok, "sslmode=require");
    select_n(ok, 1);
    itest_pass();
}

/* ---- 4. client certificates -------------------------------------------- */

static void test_sec_client_certificates(void **state)
{
    (void)state;
    char good[1024], rogue[1024], none[1024], good_md5[1100];
    snprintf(good, sizeof good, "sslmode=require sslcert=%s sslkey=%s", cert("client.crt"),
             cert("client.key"));
    snprintf(rogue, sizeof rogue, "sslmode=require sslcert=%s sslkey=%s", cert("rogue.crt"),
             cert("rogue.key"));
    /* A certificate file that does not exist: libpq sends none (and does not
     * fall back to ~/.postgresql). */
    snprintf(none, sizeof none, "sslmode=require sslcert=%s/no-such.crt sslkey=%s/no-such.key",
             itest_env("IDEM_TEST_TMP"), itest_env("IDEM_TEST_TMP"));
    snprintf(good_md5, sizeof good_md5, "%s password=%s", good, ITEST_MD5_PASSWORD);

    /* verify-full: CA-signed, and the common name is the user. */
    struct itest_proxy *p = sec_proxy(NULL, NULL, "%s", client_tls("verify-full", "ca.crt"));
    PGconn *c = sec_connect(p->port, NULL, good);
    sec_assert_ok(c, "verify-full, client.crt as its CN");
    assert_int_equal(PQsslInUse(c), 1);
    select_n(c, 1);

    PGconn *n = sec_connect(p->port, NULL, none);
    sec_assert_fails(n, NULL, NULL, "verify-full without a certificate");
    PGconn *r = sec_connect(p->port, NULL, rogue);
    sec_assert_fails(r, NULL, NULL, "verify-full with rogue.crt (another CA)");
    PGconn *m = sec_connect(p->port, ITEST_MD5_USER, good_md5);
    sec_assert_fails(m, "28000", "does not name this user",
                     "verify-full, client.crt as md5_user (CN is someone else)");
    select_n(c, 2);

    /* verify-ca: any certificate the CA signed, whoever logs in. */
    struct itest_proxy *q = sec_proxy(NULL, NULL, "%s", client_tls("verify-ca", "ca.crt"));
    PGconn *qc = sec_connect(q->port, ITEST_MD5_USER, good_md5);
    sec_assert_ok(qc, "verify-ca, client.crt as md5_user");
    char who[64];
    assert_string_equal(itest_query_text(qc, "SELECT current_user", who, sizeof who), ITEST_MD5_USER);
    PGconn *qs = sec_connect(q->port, NULL, good);
    sec_assert_ok(qs, "verify-ca, client.crt as its CN");
    PGconn *qn = sec_connect(q->port, NULL, none);
    sec_assert_fails(qn, NULL, NULL, "verify-ca without a certificate");
    PGconn *qr = sec_connect(q->port, NULL, rogue);
    sec_assert_fails(qr, NULL, NULL, "verify-ca with rogue.crt (another CA)");
    select_n(qc, 3);

    /* require asks for no certificate: one that no CA here signed is
     * neither asked for nor checked. */
    struct itest_proxy *s = sec_proxy(NULL, NULL, "%s", client_tls("require", "ca.crt"));
    PGconn *sr = sec_connect(s->port, NULL, rogue);
    sec_assert_ok(sr, "require with rogue.crt");
    itest_pass();
}

/* ---- 5. plaintext after SSLRequest ------------------------------------- */

static void test_sec_plaintext_after_sslrequest(void **state)
{
    (void)state;
    struct itest_proxy *p = sec_proxy(NULL, NULL, "%s", client_tls("prefer", NULL));
    uint8_t pkt[600], got[8192];
    size_t len;

    /* SSLRequest and a StartupMessage in one write. */
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    memcpy(pkt, SSL_REQUEST, sizeof SSL_REQUEST);
    size_t n = sizeof SSL_REQUEST;
    n += itest_build_startup(pkt + n, sizeof pkt - n, itest_pg_user(), ITEST_DBNAME,
                             "sec_inject");
    assert_true(itest_raw_send(fd, pkt, n));
    if (!read_until_closed(fd, got, sizeof got, &len, 10000))
        fail_msg("SSLRequest + plaintext StartupMessage: still open after 10 s (%zu bytes)", len);
    assert_no_plaintext_reply(got, len, "SSLRequest + plaintext StartupMessage in one write");
    itest_raw_close(fd);

    /* SSLRequest, 'S', then plaintext instead of a handshake. */
    fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    assert_true(itest_raw_send(fd, SSL_REQUEST, sizeof SSL_REQUEST));
    assert_int_equal(itest_raw_read_byte(fd, 10000), 'S');
    n = itest_build_startup(pkt, sizeof pkt, itest_pg_user(), ITEST_DBNAME, "sec_inject2");
    assert_true(itest_raw_send(fd, pkt, n));
    if (!read_until_closed(fd, got + 1, sizeof got - 1, &len, 10000))
        fail_msg("'S' then a plaintext StartupMessage: still open after 10 s");
    got[0] = 'S';
    assert_no_plaintext_reply(got, len + 1, "'S' then a plaintext StartupMessage");
    itest_raw_close(fd);

    /* Nobody logged in with those. */
    assert_int_equal(itest_server_ll("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE application_name LIKE 'sec_inject%%'"), 0);
    /* The proxy keeps serving, TLS and plaintext. */
    PGconn *c = sec_connect(p->port, NULL, "sslmode=require");
    sec_assert_ok(c, "sslmode=require after the injection attempts");
    select_n(c, 1);
    PGconn *d = sec_connect(p->port, NULL, "sslmode=disable");
    sec_assert_ok(d, "sslmode=disable against prefer");
    assert_int_equal(PQsslInUse(d), 0);
    select_n(d, 2);
    itest_pass();
}

/* ---- 6. GSSENCRequest with TLS configured ------------------------------ */

static void test_sec_gssenc_request(void **state)
{
    (void)state;
    struct itest_proxy *p = sec_proxy(NULL, NULL, "%s", client_tls("prefer", NULL));

    /* GSSENCRequest: 'N'; then SSLRequest on the same connection: 'S'. */
    int fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    assert_true(itest_raw_send(fd, GSSENC_REQUEST, sizeof GSSENC_REQUEST));
    assert_int_equal(itest_raw_read_byte(fd, 10000), 'N');
    assert_true(itest_raw_send(fd, SSL_REQUEST, sizeof SSL_REQUEST));
    assert_int_equal(itest_raw_read_byte(fd, 10000), 'S');
    itest_raw_close(fd);

    /* GSSENCRequest: 'N'; then plaintext login (allowed under prefer). */
    fd = itest_raw_connect(p->port);
    assert_true(fd >= 0);
    assert_true(itest_raw_send(fd, GSSENC_REQUEST, sizeof GSSENC_REQUEST));
    assert_int_equal(itest_raw_read_byte(fd, 10000), 'N');
    itest_raw_login(fd, itest_pg_user(), "sec_gss_plain");
    itest_raw_close(fd);

    /* Under require: 'N' to GSSENCRequest, and a plaintext login after it
     * is refused. */
    struct itest_proxy *q = sec_proxy(NULL, NULL, "%s", client_tls("require", NULL));
    fd = itest_raw_connect(q->port);
    assert_true(fd >= 0);
    assert_true(itest_raw_send(fd, GSSENC_REQUEST, sizeof GSSENC_REQUEST));
    assert_int_equal(itest_raw_read_byte(fd, 10000), 'N');
    uint8_t pkt[512];
    size_t n = itest_build_startup(pkt, sizeof pkt, itest_pg_user(), ITEST_DBNAME, "sec_gss");
    assert_true(itest_raw_send(fd, pkt, n));
    char msg[512];
    read_fatal(fd, "28000", msg, sizeof msg, "plaintext login after GSSENCRequest, require");
    itest_raw_close(fd);

    /* libpq with gssencmode=prefer and sslmode=require still gets TLS. */
    PGconn *c = sec_connect(q->port, NULL, "gssencmode=prefer sslmode=require");
    sec_assert_ok(c, "gssencmode=prefer sslmode=require");
    assert_int_equal(PQsslInUse(c), 1);
    select_n(c, 1);
    itest_pass();
}

/* ---- 7. CancelRequest with TLS ------------------------------------------ */

/* Runs pg_sleep(20) through conn (application_name app), cancels it with
 * PQcancel once the server runs it, and checks it ends with 57014 soon. */
static void cancel_sleep(PGconn *conn, const char *app)
{
    assert_int_equal(PQsendQuery(conn, "SELECT pg_sleep(20)"), 1);
    if (!itest_server_wait_ll(1, 10000,
                              "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                              "'%s' AND state = 'active' AND query LIKE '%%pg_sleep%%'",
                              app))
        fail_msg("%s: pg_sleep is not running on the server", app);
    PGcancel *cancel = PQgetCancel(conn);
    assert_non_null(cancel);
    char err[256] = "";
    int64_t t0 = itest_now_ms();
    int sent = PQcancel(cancel, err, sizeof err);
    PQfreeCancel(cancel);
    if (!sent)
        fail_msg("%s: PQcancel failed: %s", app, err);
    PGresult *r = itest_wait_result(conn, 10000);
    int64_t took = itest_now_ms() - t0;
    itest_assert_sqlstate(r, "57014", "the cancelled pg_sleep(20)");
    PQclear(r);
    printf("%s: cancelled after %lld ms\n", app, (long long)took);
    assert_true(took < 10000);
    itest_cancel_settle();
    select_n(conn, 7);
}

static void test_sec_cancel(void **state)
{
    (void)state;
    /* Client TLS, server plaintext. */
    struct itest_proxy *p = sec_proxy(NULL, "debug", "%s", client_tls("require", NULL));
    PGconn *c = sec_connect(p->port, NULL, "sslmode=require application_name=sec_cancel_plain");
    sec_assert_ok(c, "sslmode=require");
    assert_int_equal(PQsslInUse(c), 1);
    cancel_sleep(c, "sec_cancel_plain");
    itest_assert_log_line(p, "cancel request for backend", "", NULL);

    /* Both legs TLS: the proxy forwards the cancel over TLS. */
    struct itest_proxy *q = sec_proxy(NULL, "debug", "%s", both_legs_tls());
    PGconn *b = connect_both_legs(q->port, "application_name=sec_cancel_tls");
    assert_true(backend_ssl(b));
    cancel_sleep(b, "sec_cancel_tls");

    /* And under verify-full to the server, by name. */
    struct itest_proxy *v = sec_proxy("localhost", "debug", "%s%s", client_tls("require", NULL),
                                      server_tls("verify-full", "ca.crt"));
    PGconn *vc = sec_connect(v->port, NULL, "sslmode=require application_name=sec_cancel_vf");
    sec_assert_ok(vc, "server_tls_sslmode=verify-full");
    assert_true(backend_ssl(vc));
    cancel_sleep(vc, "sec_cancel_vf");

    assert_false(itest_proxy_log_contains(p, "cancel request not delivered"));
    assert_false(itest_proxy_log_contains(q, "cancel request not delivered"));
    assert_false(itest_proxy_log_contains(v, "cancel request not delivered"));
    itest_pass();
}

/* ---- 8. auth_type = scram-sha-256 with auth_file, TLS on both legs ----- */

/* scram_user's secret as the server stores it. */
static void scram_secret(char *buf, size_t cap)
{
    PGconn *d = itest_connect_direct();
    itest_query_text(d, "SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_user'", buf, cap);
    itest_finish(d);
    assert_true(strncmp(buf, "SCRAM-SHA-256$", 14) == 0);
}

static void test_sec_scram_auth_file(void **state)
{
    (void)state;
    char secret[512], line[700], authfile[700], extra[1024];
    scram_secret(secret, sizeof secret);
    snprintf(line, sizeof line, "\"%s\" \"%s\"\n", ITEST_SCRAM_USER, secret);
    snprintf(authfile, sizeof authfile, "%s", itest_write_file("sec-userlist.txt", line));

    struct itest_proxy *p = sec_proxy("localhost", "debug",
                                      "auth_type = scram-sha-256\n"
                                      "auth_file = %s\n%s%s",
                                      authfile, client_tls("require", NULL),
                                      server_tls("verify-full", "ca.crt"));

    /* A wrong password, and a user nobody knows: the same 28P01, and the
     * server never hears of either. */
    PGconn *wrong = sec_connect(p->port, ITEST_SCRAM_USER,
                                "sslmode=require password=not_the_secret "
                                "application_name=sec_scram_wrong");
    sec_assert_fails(wrong, "28P01", "password authentication failed for user \"scram_user\"",
                     "scram_user with a wrong password");
    PGconn *unknown = sec_connect(p->port, "sec_nobody",
                                  "sslmode=require password=whatever "
                                  "application_name=sec_scram_unknown");
    sec_assert_fails(unknown, "28P01", "password authentication failed for user \"sec_nobody\"",
                     "an unknown user");
    /* The same text but for the name. */
    const char *a = strstr(PQerrorMessage(wrong), "FATAL:");
    const char *b = strstr(PQerrorMessage(unknown), "FATAL:");
    assert_non_null(a);
    assert_non_null(b);
    size_t la = strcspn(a, "\""), lb = strcspn(b, "\"");
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    /* Without channel binding the unknown user fails the same way. */
    PGconn *unknown2 = sec_connect(p->port, "sec_nobody",
                                   "sslmode=require channel_binding=disable password=whatever");
    sec_assert_fails(unknown2, "28P01", "password authentication failed for user \"sec_nobody\"",
                     "an unknown user without channel binding");
    assert_false(itest_proxy_log_contains(p, "server connected"));
    assert_int_equal(itest_server_ll("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE application_name LIKE 'sec_scram_%%'"), 0);

    /* The right password, with and without channel binding required. */
    PGconn *pref = sec_connect(p->port, ITEST_SCRAM_USER,
                               "sslmode=require channel_binding=prefer password=" ITEST_SCRAM_PASSWORD
                               " application_name=sec_scram_prefer");
    sec_assert_ok(pref, "scram_user, channel_binding=prefer");
    assert_int_equal(PQsslInUse(pref), 1);
    char who[64];
    assert_string_equal(itest_query_text(pref, "SELECT current_user", who, sizeof who),
                        ITEST_SCRAM_USER);
    assert_true(backend_ssl(pref));
    assert_server_saw("sec_scram_prefer", true);

    PGconn *req = sec_connect(p->port, ITEST_SCRAM_USER,
                              "sslmode=require channel_binding=require password="
                              ITEST_SCRAM_PASSWORD " application_name=sec_scram_require");
    sec_assert_ok(req, "scram_user, channel_binding=require (SCRAM-SHA-256-PLUS)");
    assert_true(backend_ssl(req));
    assert_server_saw("sec_scram_require", true);
    itest_assert_log_line(p, "client authenticated with channel binding", "", NULL);
    /* (So the absence of this line above meant something.) */
    assert_true(itest_proxy_log_contains(p, "server connected"));

    /* verify-full from the client as well. */
    snprintf(extra, sizeof extra,
             "sslmode=verify-full sslrootcert=%s channel_binding=require password=%s",
             cert("ca.crt"), ITEST_SCRAM_PASSWORD);
    PGconn *vf = sec_connect_host("localhost", p->port, ITEST_SCRAM_USER, extra);
    sec_assert_ok(vf, "scram_user, verify-full + channel_binding=require");
    select_n(vf, 1);

    /* md5_user is not in auth_file and there is no auth_user: refused like
     * an unknown user, although its password is right. */
    PGconn *md5 = sec_connect(p->port, ITEST_MD5_USER, "sslmode=require password="
                                                       ITEST_MD5_PASSWORD);
    sec_assert_fails(md5, "28P01", "password authentication failed", "md5_user, not in auth_file");

    select_n(pref, 2);
    select_n(req, 3);
    itest_pass();
}

/* ---- 9. auth_type = scram-sha-256 with auth_query ---------------------- */

static void test_sec_scram_auth_query(void **state)
{
    (void)state;
    /* The superuser is trusted by the server: no password for it. Plaintext
     * on both legs here (the TLS ones are above). */
    struct itest_proxy *p = sec_proxy(NULL, "debug",
                                      "auth_type = scram-sha-256\n"
                                      "auth_user = %s\n",
                                      itest_pg_user());

    PGconn *c = sec_connect(p->port, ITEST_SCRAM_USER,
                            "sslmode=disable password=" ITEST_SCRAM_PASSWORD
                            " application_name=sec_aq_ok");
    sec_assert_ok(c, "scram_user through auth_query");
    char who[64];
    assert_string_equal(itest_query_text(c, "SELECT current_user", who, sizeof who), ITEST_SCRAM_USER);
    assert_false(backend_ssl(c));

    PGconn *wrong = sec_connect(p->port, ITEST_SCRAM_USER,
                                "sslmode=disable password=not_the_secret");
    sec_assert_fails(wrong, "28P01", "password authentication failed for user \"scram_user\"",
                     "scram_user with a wrong password, auth_query");
    PGconn *unknown = sec_connect(p->port, "sec_nobody", "sslmode=disable password=whatever");
    sec_assert_fails(unknown, "28P01", "password authentication failed for user \"sec_nobody\"",
                     "a user that does not exist, auth_query");

    /* md5_user's stored secret is an MD5 hash: SCRAM cannot check it. */
    PGconn *md5 = sec_connect(p->port, ITEST_MD5_USER,
                              "sslmode=disable password=" ITEST_MD5_PASSWORD);
    sec_assert_fails(md5, "28P01", "password authentication failed", "md5_user, auth_query");

    /* The exchange does not tell who exists: a plaintext client is offered
     * SCRAM-SHA-256 alone, and an unknown user gets a salt as stable as a
     * real one, with the same iteration count. */
    struct sasl_first real, real2, ghost, ghost2, ghost_other;
    sasl_first(p->port, ITEST_SCRAM_USER, &real);
    sasl_first(p->port, ITEST_SCRAM_USER, &real2);
    sasl_first(p->port, "sec_nobody", &ghost);
    sasl_first(p->port, "sec_nobody", &ghost2);
    sasl_first(p->port, "sec_nobody_else", &ghost_other);
    assert_string_equal(real.mechanisms, "SCRAM-SHA-256");
    assert_string_equal(ghost.mechanisms, real.mechanisms);
    assert_string_equal(real.salt, real2.salt);
    assert_string_equal(ghost.salt, ghost2.salt);
    assert_string_not_equal(ghost.salt, real.salt);
    assert_string_not_equal(ghost.salt, ghost_other.salt);
    assert_string_equal(ghost.iterations, real.iterations);
    assert_int_equal(strlen(ghost.salt), strlen(real.salt));

    /* With TLS on both legs and channel binding too: auth_query then runs
     * over TLS to the server as well (verify-full, by name). */
    struct itest_proxy *q = sec_proxy("localhost", NULL,
                                      "auth_type = scram-sha-256\n"
                                      "auth_user = %s\n%s%s",
                                      itest_pg_user(), client_tls("require", NULL),
                                      server_tls("verify-full", "ca.crt"));
    PGconn *t = sec_connect(q->port, ITEST_SCRAM_USER,
                            "sslmode=require channel_binding=require password="
                            ITEST_SCRAM_PASSWORD);
    sec_assert_ok(t, "scram_user through auth_query, channel_binding=require");
    assert_true(backend_ssl(t));
    select_n(t, 1);
    PGconn *tu = sec_connect(q->port, "sec_nobody", "sslmode=require password=whatever");
    sec_assert_fails(tu, "28P01", "password authentication failed for user \"sec_nobody\"",
                     "a user that does not exist, auth_query over TLS");
    select_n(c, 2);
    itest_pass();
}

/* Backends of auth_user's lookups (the application name auth_query's
 * connections carry), waiting up to two seconds for there to be want. */
static long long auth_query_backends(long long want)
{
    int64_t deadline = itest_now_ms() + 2000;
    long long n;

    while ((n = itest_server_ll("SELECT count(*) FROM pg_stat_activity "
                                "WHERE application_name = 'idemproxy auth_query'")) != want &&
           itest_now_ms() < deadline)
        itest_sleep_ms(20);
    return n;
}

static void login_through_auth_query(int port, const char *what)
{
    PGconn *c = sec_connect(port, ITEST_SCRAM_USER,
                            "sslmode=disable password=" ITEST_SCRAM_PASSWORD);
    sec_assert_ok(c, what);
    select_n(c, 1);
    itest_finish(c);
}

/* auth_query's connection outlives its lookup: the logins after the first
 * use it, one backend for all; one the server ended is replaced for the
 * next login, which notices nothing; a reload closes it; with
 * server_lifetime = 0 none is kept. */
static void test_sec_auth_query_kept(void **state)
{
    (void)state;
    int mport = itest_free_port();
    struct itest_proxy *p = sec_proxy(NULL, NULL,
                                      "workers = 1\n"
                                      "metrics_port = %d\n"
                                      "auth_type = scram-sha-256\n"
                                      "auth_user = %s\n",
                                      mport, itest_pg_user());

    assert_int_equal(auth_query_backends(0), 0);
    login_through_auth_query(p->port, "the first login through auth_query");
    assert_int_equal(auth_query_backends(1), 1);
    char *text = itest_http_get(mport, "/metrics");
    if (itest_metric(text, "idemproxy_auth_query_connections_idle") != 1)
        fail_msg("one kept auth_query connection expected:\n%s", text);
    free(text);
    for (int i = 0; i < 5; i++)
        login_through_auth_query(p->port, "a later login through auth_query");
    assert_int_equal(auth_query_backends(1), 1);
    PGconn *wrong = sec_connect(p->port, ITEST_SCRAM_USER, "sslmode=disable password=wrong");
    sec_assert_fails(wrong, "28P01", "password authentication failed",
                     "a wrong password, on the kept connection");
    assert_int_equal(auth_query_backends(1), 1);

    /* The server ends it: the next login goes through all the same. */
    itest_server_exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'idemproxy auth_query'");
    login_through_auth_query(p->port, "a login after the kept connection was ended");
    assert_int_equal(auth_query_backends(1), 1);

    assert_int_equal(kill(p->pid, SIGHUP), 0);
    assert_int_equal(auth_query_backends(0), 0);
    text = itest_http_get(mport, "/metrics");
    if (itest_metric(text, "idemproxy_auth_query_connections_idle") != 0)
        fail_msg("no kept auth_query connection expected after the reload:\n%s", text);
    free(text);
    login_through_auth_query(p->port, "a login after a reload");
    assert_int_equal(auth_query_backends(1), 1);

    /* server_lifetime = 0: a connection serves one lookup, as a server
     * serves one client. */
    struct itest_proxy *once = sec_proxy(NULL, NULL,
                                         "workers = 1\n"
                                         "server_lifetime = 0\n"
                                         "auth_type = scram-sha-256\n"
                                         "auth_user = %s\n",
                                         itest_pg_user());
    login_through_auth_query(once->port, "a login with server_lifetime = 0");
    itest_sleep_ms(200);
    assert_int_equal(auth_query_backends(1), 1);
    itest_pass();
}

/* ---- 10. passthrough with TLS on one leg, and on both ------------------ */

static void passthrough_login(int port, const char *user, const char *password,
                              const char *sslmode, bool server_ssl, const char *what)
{
    char extra[256];
    snprintf(extra, sizeof extra, "sslmode=%s password=%s", sslmode, password);
    PGconn *c = sec_connect(port, user, extra);
    sec_assert_ok(c, what);
    assert_int_equal(PQsslInUse(c), strcmp(sslmode, "disable") != 0);
    char who[64];
    assert_string_equal(itest_query_text(c, "SELECT current_user", who, sizeof who), user);
    assert_int_equal(backend_ssl(c), server_ssl);
    itest_finish(c);
}

static void test_sec_passthrough_legs(void **state)
{
    (void)state;
    /* Client TLS, server plaintext. */
    struct itest_proxy *p = sec_proxy(NULL, NULL, "%s", client_tls("require", NULL));
    passthrough_login(p->port, ITEST_MD5_USER, ITEST_MD5_PASSWORD, "require", false,
                      "md5_user, client TLS, server plain");
    passthrough_login(p->port, ITEST_SCRAM_USER, ITEST_SCRAM_PASSWORD, "require", false,
                      "scram_user, client TLS, server plain");
    PGconn *bad = sec_connect(p->port, ITEST_SCRAM_USER, "sslmode=require password=wrong");
    sec_assert_fails(bad, "28P01", NULL, "scram_user, wrong password, passthrough");

    /* Client plaintext, server TLS: PLUS is not offered to the client. */
    struct itest_proxy *q = sec_proxy(NULL, NULL, "%s", server_tls("require", NULL));
    passthrough_login(q->port, ITEST_MD5_USER, ITEST_MD5_PASSWORD, "disable", true,
                      "md5_user, client plain, server TLS");
    passthrough_login(q->port, ITEST_SCRAM_USER, ITEST_SCRAM_PASSWORD, "disable", true,
                      "scram_user, client plain, server TLS");
    struct sasl_first sf;
    sasl_first(q->port, ITEST_SCRAM_USER, &sf);
    assert_string_equal(sf.mechanisms, "SCRAM-SHA-256");

    /* TLS on both legs: SCRAM cannot be relayed; md5 can. */
    struct itest_proxy *r = sec_proxy(NULL, NULL, "%s", both_legs_tls());
    PGconn *s = sec_connect(r->port, ITEST_SCRAM_USER,
                            "sslmode=require password=" ITEST_SCRAM_PASSWORD);
    sec_assert_fails(s, "28000", "auth_type = scram-sha-256",
                     "scram_user, TLS on both legs, passthrough");
    PGconn *s2 = sec_connect(r->port, ITEST_SCRAM_USER,
                             "sslmode=require channel_binding=disable password="
                             ITEST_SCRAM_PASSWORD);
    sec_assert_fails(s2, "28000", "auth_type = scram-sha-256",
                     "scram_user, TLS on both legs, channel_binding=disable");
    passthrough_login(r->port, ITEST_MD5_USER, ITEST_MD5_PASSWORD, "require", true,
                      "md5_user, TLS on both legs");
    /* Trust needs no relaying at all. */
    passthrough_login(r->port, itest_pg_user(), "unused", "require", true,
                      "the trusted superuser, TLS on both legs");
    itest_pass();
}

/* ---- 11. server_tls_sslmode = verify-full and the server's name -------- */

static void test_sec_server_verify_full(void **state)
{
    (void)state;
    /* server.crt names only localhost. */
    struct itest_proxy *p = sec_proxy("127.0.0.1", NULL, "%s", server_tls("verify-full", "ca.crt"));
    PGconn *c = sec_connect(p->port, NULL, "sslmode=disable application_name=sec_vf_ip");
    sec_assert_fails(c, "08001", "mismatch", "verify-full against 127.0.0.1");
    assert_int_equal(itest_server_ll("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE application_name = 'sec_vf_ip'"), 0);

    struct itest_proxy *q = sec_proxy("localhost", NULL, "%s", server_tls("verify-full", "ca.crt"));
    PGconn *ok = sec_connect(q->port, NULL, "sslmode=disable application_name=sec_vf_name");
    sec_assert_ok(ok, "verify-full against localhost");
    assert_true(backend_ssl(ok));
    assert_server_saw("sec_vf_name", true);

    /* verify-ca does not look at the name... */
    struct itest_proxy *v = sec_proxy("127.0.0.1", NULL, "%s", server_tls("verify-ca", "ca.crt"));
    PGconn *vc = sec_connect(v->port, NULL, "sslmode=disable");
    sec_assert_ok(vc, "verify-ca against 127.0.0.1");
    assert_true(backend_ssl(vc));

    /* ...but at the CA. */
    struct itest_proxy *w = sec_proxy("localhost", NULL, "%s",
                                      server_tls("verify-full", "other-ca.crt"));
    PGconn *wc = sec_connect(w->port, NULL, "sslmode=disable");
    sec_assert_fails(wc, "08001", "certificate verify failed",
                     "verify-full trusting other-ca.crt");

    /* The failing proxy still serves nothing but goes on. */
    assert_true(itest_proxy_alive(p));
    PGconn *again = sec_connect(p->port, NULL, "sslmode=disable");
    sec_assert_fails(again, "08001", "mismatch", "verify-full against 127.0.0.1, again");
    select_n(ok, 1);
    itest_pass();
}

/* ---- 12. certificates reloaded on SIGHUP -------------------------------- */

static void test_sec_reload_certificates(void **state)
{
    (void)state;
    char crt[600], key[600], ca_extra[1024], other_extra[1024];
    snprintf(crt, sizeof crt, "%s/sec-reload-%d.crt", itest_env("IDEM_TEST_TMP"), (int)getpid());
    snprintf(key, sizeof key, "%s/sec-reload-%d.key", itest_env("IDEM_TEST_TMP"), (int)getpid());
    copy_file(cert("proxy.crt"), crt);
    copy_file(cert("proxy.key"), key);
    snprintf(ca_extra, sizeof ca_extra, "sslmode=verify-ca sslrootcert=%s", cert("ca.crt"));
    snprintf(other_extra, sizeof other_extra, "sslmode=verify-ca sslrootcert=%s",
             cert("other-ca.crt"));

    struct itest_proxy *p = sec_proxy(NULL, NULL,
                                      "client_tls_sslmode = require\n"
                                      "client_tls_cert_file = %s\n"
                                      "client_tls_key_file = %s\n",
                                      crt, key);
    PGconn *a = sec_connect(p->port, NULL, "sslmode=require application_name=sec_reload_a");
    sec_assert_ok(a, "client A");
    select_n(a, 1);
    PGconn *before = sec_connect(p->port, NULL, ca_extra);
    sec_assert_ok(before, "verify-ca against ca.crt, before the reload");
    itest_finish(before);

    /* The rogue certificate replaces the proxy's. */
    copy_file(cert("rogue.crt"), crt);
    copy_file(cert("rogue.key"), key);
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    itest_proxy_wait_log_count(p, "configuration reloaded", 1);
    assert_false(itest_proxy_log_contains(p, "client TLS:"));

    select_n(a, 2);
    PGconn *trusting_ca = sec_connect(p->port, NULL, ca_extra);
    sec_assert_fails(trusting_ca, NULL, "certificate verify failed",
                     "verify-ca against ca.crt after the reload");
    PGconn *trusting_other = sec_connect(p->port, NULL, other_extra);
    sec_assert_ok(trusting_other, "verify-ca against other-ca.crt after the reload");
    select_n(trusting_other, 3);

    /* A broken key: the log says why, and the rogue context stays. */
    FILE *f = fopen(key, "w");
    assert_non_null(f);
    fputs("-----BEGIN PRIVATE KEY-----\nthis is no key\n-----END PRIVATE KEY-----\n", f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    itest_proxy_wait_log_count(p, "configuration reloaded", 2);
    itest_assert_log_line(p, "client TLS:", "keeping the current context", NULL);
    itest_assert_log_line(p, "client TLS:", key, NULL);
    assert_true(itest_proxy_alive(p));

    select_n(a, 4);
    select_n(trusting_other, 5);
    PGconn *still_other = sec_connect(p->port, NULL, other_extra);
    sec_assert_ok(still_other, "verify-ca against other-ca.crt after the broken reload");
    select_n(still_other, 6);
    PGconn *still_not_ca = sec_connect(p->port, NULL, ca_extra);
    sec_assert_fails(still_not_ca, NULL, "certificate verify failed",
                     "verify-ca against ca.crt after the broken reload");
    assert_int_equal(PQsslInUse(a), 1);
    itest_pass();
}

/* ---- 13. --check-config loads the certificates -------------------------- */

/* Runs $IDEMPROXY --check-config -c conf; returns its exit status (-1 when
 * it did not exit normally) and its output in *out (malloc'ed). */
static int check_config(const char *conf, char **out)
{
    static unsigned seq;
    char out_path[600];
    snprintf(out_path, sizeof out_path, "%s/sec-check-%d-%u.out", itest_env("IDEM_TEST_TMP"),
             (int)getpid(), ++seq);
    char *argv[] = { (char *)itest_env("IDEMPROXY"), (char *)"--check-config", (char *)"-c",
                     (char *)conf, NULL };
    int st = itest_run(argv, out_path, 30000);
    *out = itest_read_file(out_path);
    printf("--check-config %s: status 0x%x:\n%s", conf, st, *out);
    return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_sec_check_config(void **state)
{
    (void)state;
    char missing[600], body[2048], conf[600];
    char *out;
    snprintf(missing, sizeof missing, "%s/sec-no-such-cert.crt", itest_env("IDEM_TEST_TMP"));
    unlink(missing);

    snprintf(body, sizeof body,
             "listen_addr = 127.0.0.1\nlisten_port = %d\nserver_host = 127.0.0.1\n"
             "server_port = %d\n"
             "client_tls_sslmode = require\n"
             "client_tls_cert_file = %s\n"
             "client_tls_key_file = %s\n",
             itest_free_port(), itest_pg_port(), missing, cert("proxy.key"));
    snprintf(conf, sizeof conf, "%s", itest_write_config("sec-check-missing", body));
    assert_int_equal(check_config(conf, &out), 1);
    if (strstr(out, missing) == NULL) {
        free(out);
        fail_msg("--check-config does not name %s", missing);
    }
    assert_non_null(strstr(out, "client_tls_cert_file"));
    free(out);

    /* A key that is not the certificate's. */
    snprintf(body, sizeof body,
             "listen_addr = 127.0.0.1\nlisten_port = %d\nserver_host = 127.0.0.1\n"
             "server_port = %d\n"
             "client_tls_sslmode = require\n"
             "client_tls_cert_file = %s\n"
             "client_tls_key_file = %s\n",
             itest_free_port(), itest_pg_port(), cert("proxy.crt"), cert("rogue.key"));
    snprintf(conf, sizeof conf, "%s", itest_write_config("sec-check-mismatch", body));
    assert_int_equal(check_config(conf, &out), 1);
    assert_non_null(strstr(out, "is not the key of"));
    free(out);

    /* Everything in place: valid. */
    snprintf(body, sizeof body,
             "listen_addr = 127.0.0.1\nlisten_port = %d\nserver_host = localhost\n"
             "server_port = %d\n%s%s",
             itest_free_port(), itest_pg_port(), client_tls("verify-full", "ca.crt"),
             server_tls("verify-full", "ca.crt"));
    snprintf(conf, sizeof conf, "%s", itest_write_config("sec-check-ok", body));
    assert_int_equal(check_config(conf, &out), 0);
    assert_non_null(strstr(out, "configuration is valid"));
    free(out);

    /* A proxy started on the missing file does not start, and says why. */
    snprintf(body, sizeof body,
             "listen_addr = 127.0.0.1\nlisten_port = %d\nserver_host = 127.0.0.1\n"
             "server_port = %d\n"
             "client_tls_sslmode = require\n"
             "client_tls_cert_file = %s\n"
             "client_tls_key_file = %s\n",
             itest_free_port(), itest_pg_port(), missing, cert("proxy.key"));
    snprintf(conf, sizeof conf, "%s", itest_write_config("sec-start-missing", body));
    char out_path[600];
    snprintf(out_path, sizeof out_path, "%s/sec-start-%d.out", itest_env("IDEM_TEST_TMP"),
             (int)getpid());
    char *argv[] = { (char *)itest_env("IDEMPROXY"), (char *)"-c", conf, NULL };
    int st = itest_run(argv, out_path, 20000);
    out = itest_read_file(out_path);
    printf("idemproxy -c %s: status 0x%x:\n%s", conf, st, out);
    bool refused = st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) != 0 && strstr(out, missing);
    free(out);
    assert_true(refused);
    itest_pass();
}

/* ---- bulk data through TLS on both legs --------------------------------- */

/* Megabytes each way through TLS sessions on the ring, where a record can
 * span receives and the output outgrows the write marks. */
static void test_sec_tls_copy(void **state)
{
    (void)state;
    struct itest_proxy *p = sec_proxy(NULL, NULL, "%s", both_legs_tls());
    PGconn *c = connect_both_legs(p->port, "");
    assert_true(backend_ssl(c));
    itest_copy_round_trip(c, 10240);
    select_n(c, 1);
    itest_pass();
}

/* A TLS client that vanishes without a word (no Terminate, no
 * close_notify): the end of its stream comes through the ring and OpenSSL,
 * and the proxy ends the session; the next client is served as usual. */
static void test_sec_tls_client_vanishes(void **state)
{
    (void)state;
    struct itest_proxy *p = sec_proxy(NULL, "info", "%s", both_legs_tls());
    PGconn *c = connect_both_legs(p->port, "");
    select_n(c, 1);
    assert_int_equal(shutdown(PQsocket(c), SHUT_RDWR), 0);
    itest_proxy_wait_log_count(p, "closed: client disconnected", 1);
    PGconn *next = sec_connect(p->port, NULL, "sslmode=require");
    sec_assert_ok(next, "the next client");
    select_n(next, 2);
    itest_pass();
}

/* A client over TLS that stops reading a large result: the proxy stops
 * reading the server (TLS too) instead of buffering the result, and all of
 * it arrives once the client reads again. */
static void test_sec_tls_backpressure(void **state)
{
    (void)state;
    /* Under AddressSanitizer freed memory stays resident in its quarantine. */
    struct itest_proxy_opts opts = { .extra = both_legs_tls(),
                                     .asan_options = "quarantine_size_mb=0" };
    struct itest_proxy *p = itest_proxy_start(&opts);
    PGconn *c = connect_both_legs(p->port, "");
    long base = itest_rss_kb(p->pid);
    assert_true(base > 0);

    const int rows = 300, width = 1000000; /* 300 MB */
    assert_int_equal(PQsendQuery(c, "SELECT repeat('x', 1000000) FROM generate_series(1, 300)"), 1);
    assert_int_equal(PQsetSingleRowMode(c), 1);
    long peak = itest_rss_peak(p->pid, base, 2000);
    printf("TLS backpressure: RSS %ld kB, peak while the client stalls %ld kB\n", base, peak);
    itest_assert_rss_bounded(base, peak, "while the client did not read");

    int got = 0;
    bool timed_out = false;
    int64_t deadline = itest_now_ms() + 120000;
    PGresult *r;
    while ((r = itest_next_result(c, deadline, &timed_out)) != NULL) {
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_SINGLE_TUPLE) {
            assert_int_equal(PQgetlength(r, 0, 0), width);
            got++;
            if (got % 50 == 0) {
                long rss = itest_rss_kb(p->pid);
                peak = rss > peak ? rss : peak;
            }
        } else {
            itest_assert_result_ok(r, "the large result");
        }
        PQclear(r);
    }
    assert_false(timed_out);
    printf("TLS backpressure: %d rows, peak RSS %ld kB\n", got, peak);
    assert_int_equal(got, rows);
    itest_assert_rss_bounded(base, peak, "while streaming");
    select_n(c, 1);
    itest_pass();
}

/* ---- TLS without SSLRequest ------------------------------------------------ */

/* A TLS connection to the proxy on port begun at once, without SSLRequest
 * (libpq 17's sslnegotiation=direct), offering the ALPN protocol alpn
 * (NULL: no ALPN) and checking the proxy's certificate. NULL when the
 * handshake failed; *fd is the socket either way. */
static SSL *direct_tls(int port, const char *alpn, int *fd)
{
    *fd = itest_raw_connect(port);
    assert_true(*fd >= 0);
    return itest_ssl_connect(*fd, alpn);
}

/* Reads one message; false at the end of the stream. The body, cut to cap
 * bytes, goes to body. */
static bool ssl_read_msg(SSL *ssl, char *type, uint8_t *body, size_t cap)
{
    uint8_t head[5];
    if (!itest_ssl_read_all(ssl, head, sizeof head))
        return false;
    *type = (char)head[0];
    uint32_t len = get32(head + 1) - 4;
    assert_true(len < 1 << 20);
    uint8_t *all = malloc(len + 1);
    assert_non_null(all);
    bool ok = itest_ssl_read_all(ssl, all, len);
    memcpy(body, all, len < cap ? len : cap);
    free(all);
    return ok;
}

static void ssl_send_startup(SSL *ssl)
{
    uint8_t pkt[256];
    size_t n = itest_build_startup(pkt, sizeof pkt, itest_pg_user(), ITEST_DBNAME,
                                   "sec_direct");
    assert_int_equal(SSL_write(ssl, pkt, (int)n), (int)n);
}

/* libpq 17's sslnegotiation=direct: with ALPN "postgresql" the client is
 * served as after SSLRequest; without ALPN, or with another protocol only,
 * it is refused as PostgreSQL 17 refuses it; a proxy without TLS for
 * clients closes the connection rather than answer a handshake in
 * plaintext. */
static void test_sec_direct_tls(void **state)
{
    (void)state;
    struct itest_proxy *p = sec_proxy(NULL, "debug", "%s", client_tls("require", NULL));
    int fd;
    char type;
    uint8_t body[256];

    SSL *ssl = direct_tls(p->port, "postgresql", &fd);
    assert_non_null(ssl);
    const unsigned char *chosen;
    unsigned chosen_len;
    SSL_get0_alpn_selected(ssl, &chosen, &chosen_len);
    assert_int_equal(chosen_len, 10);
    assert_memory_equal(chosen, "postgresql", 10);
    ssl_send_startup(ssl);
    do
        assert_true(ssl_read_msg(ssl, &type, body, sizeof body));
    while (type != 'Z' && type != 'E');
    assert_int_equal(type, 'Z');
    static const char query[] = "SELECT 'direct ' || 6 * 7";
    uint8_t q[64];
    size_t qlen = itest_build_msg(q, sizeof q, 'Q', query, sizeof query);
    assert_int_equal(SSL_write(ssl, q, (int)qlen), (int)qlen);
    assert_true(ssl_read_msg(ssl, &type, body, sizeof body));
    assert_int_equal(type, 'T');
    assert_true(ssl_read_msg(ssl, &type, body, sizeof body));
    assert_int_equal(type, 'D');
    assert_memory_equal(body + 6, "direct 42", 9);
    SSL_free(ssl);
    itest_raw_close(fd);

    /* No ALPN: the handshake completes, then nothing is served. */
    ssl = direct_tls(p->port, NULL, &fd);
    assert_non_null(ssl);
    ssl_send_startup(ssl);
    assert_false(ssl_read_msg(ssl, &type, body, sizeof body));
    SSL_free(ssl);
    itest_raw_close(fd);
    itest_proxy_wait_log_count(p, "without ALPN \"postgresql\"", 1);

    /* Another protocol only: refused in the handshake. */
    assert_null(direct_tls(p->port, "h2", &fd));
    itest_raw_close(fd);
    itest_proxy_wait_log_count(p, "no application protocol", 1);

    /* The SSLRequest way is unchanged. */
    PGconn *c = sec_connect(p->port, NULL, "sslmode=require");
    sec_assert_ok(c, "sslmode=require beside direct TLS");
    select_n(c, 1);

    struct itest_proxy *plain = sec_proxy(NULL, NULL, "%s", "");
    assert_null(direct_tls(plain->port, "postgresql", &fd));
    itest_raw_close(fd);
    itest_proxy_wait_log_count(plain, "client_tls_sslmode = disable", 1);
    itest_pass();
}

/* ---- main ----------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        ITEST(test_sec_client_tls_require),
        ITEST(test_sec_client_verify_full),
        ITEST(test_sec_plaintext_refused),
        ITEST(test_sec_client_certificates),
        ITEST(test_sec_plaintext_after_sslrequest),
        ITEST(test_sec_gssenc_request),
        ITEST(test_sec_cancel),
        ITEST(test_sec_scram_auth_file),
        ITEST(test_sec_scram_auth_query),
        ITEST(test_sec_auth_query_kept),
        ITEST(test_sec_passthrough_legs),
        ITEST(test_sec_server_verify_full),
        ITEST(test_sec_reload_certificates),
        ITEST(test_sec_check_config),
        ITEST(test_sec_tls_copy),
        ITEST(test_sec_tls_backpressure),
        ITEST(test_sec_tls_client_vanishes),
        ITEST(test_sec_direct_tls),
    };
    return itest_main(argc, argv, "idemproxy TLS and authentication", tests,
                      sizeof tests / sizeof tests[0]);
}
