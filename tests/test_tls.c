/*
 * Unit tests for tls: the two contexts built from the configuration, the
 * checks a handshake makes with them, and what is read from a finished one.
 *
 * The certificates come from tests/tls/make-certs.sh, which the integration
 * tests use too, run into a scratch directory once for the whole group. The
 * handshakes are real ones, between an SSL
 * from tls_client_context (the proxy's listening end, or PostgreSQL's part
 * when the server leg is under test) and one from tls_server_context, joined
 * by a BIO pair and driven in turns in this thread. Certificates that the
 * script has no reason to make (other signature digests, a common name with a
 * NUL in it, an encrypted key, an EC key) are made here.
 */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "tls.h"

#define BOTH (TLS_PROTO_V1_2 | TLS_PROTO_V1_3)

static char dir[256];

/* ---- the certificate directory ----------------------------------------- */

/* NAME inside the directory; NULL stays NULL. A few results live at once. */
static char *in_dir(const char *name)
{
    static char paths[8][300];
    static unsigned next;

    if (!name)
        return NULL;
    char *p = paths[next++ % 8];
    snprintf(p, sizeof(paths[0]), "%s/%s", dir, name);
    return p;
}

static int make_certs(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    int status;

    snprintf(dir, sizeof(dir), "%s/idem-tls-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", TLS_SCRIPT, dir, (char *)NULL);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        fprintf(stderr, "%s %s failed\n", TLS_SCRIPT, dir);
        return -1;
    }
    return 0;
}

static int remove_certs(void **state)
{
    (void)state;
    DIR *d = opendir(dir);
    struct dirent *e;

    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
    return rmdir(dir);
}

static X509 *read_cert(const char *name)
{
    FILE *f = fopen(in_dir(name), "r");
    assert_non_null(f);
    X509 *cert = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(cert);
    return cert;
}

static EVP_PKEY *read_key(const char *name)
{
    FILE *f = fopen(in_dir(name), "r");
    assert_non_null(f);
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(key);
    return key;
}

/* Writes cert, or else key, in PEM to NAME in the directory. */
static void write_pem(const char *name, X509 *cert, EVP_PKEY *key)
{
    FILE *f = fopen(in_dir(name), "w");

    assert_non_null(f);
    if (cert)
        assert_int_equal(PEM_write_X509(f, cert), 1);
    else
        assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    assert_int_equal(fclose(f), 0);
}

/* ---- configurations and contexts --------------------------------------- */

static struct tls_config leg(enum tls_mode mode, const char *cert, const char *key,
                             const char *ca)
{
    return (struct tls_config){
        .mode = mode,
        .cert_file = in_dir(cert),
        .key_file = in_dir(key),
        .ca_file = in_dir(ca),
        .protocols = BOTH,
    };
}

/* The context accepting clients, built from t; the test fails with its why
 * when there is none. */
static SSL_CTX *accepting(struct tls_config t)
{
    struct config cfg = { .client_tls = t };
    char why[512];

    SSL_CTX *ctx = tls_client_context(&cfg, why, sizeof(why));
    if (!ctx)
        fail_msg("tls_client_context: %s", why);
    assert_string_equal(why, "");
    return ctx;
}

/* The context connecting to the server, likewise. */
static SSL_CTX *connecting(struct tls_config t)
{
    struct config cfg = { .server_tls = t };
    char why[512];

    SSL_CTX *ctx = tls_server_context(&cfg, why, sizeof(why));
    if (!ctx)
        fail_msg("tls_server_context: %s", why);
    assert_string_equal(why, "");
    return ctx;
}

#define assert_contains(haystack, needle)                                        \
    do {                                                                        \
        if (!strstr((haystack), (needle)))                                      \
            fail_msg("expected \"%s\" in: %s", (needle), (haystack));           \
    } while (0)

/* Expects no context from t on the given leg, and a why that holds each of
 * the NULL-terminated strings. */
static void expect_no_context(bool client_leg, struct tls_config t, ...)
{
    struct config cfg = { .client_tls = t, .server_tls = t };
    char why[512];
    va_list ap;

    SSL_CTX *ctx = client_leg ? tls_client_context(&cfg, why, sizeof(why))
                              : tls_server_context(&cfg, why, sizeof(why));
    assert_null(ctx);
    va_start(ap, t);
    for (const char *s; (s = va_arg(ap, const char *)) != NULL;)
        assert_contains(why, s);
    va_end(ap);
    assert_int_equal(ERR_peek_error(), 0);
}

/* ---- handshakes -------------------------------------------------------- */

struct handshake {
    SSL *acceptor;  /* from tls_client_context: the TLS server */
    SSL *connector; /* from tls_server_context: the TLS client */
    bool accepted, connected;
    char accept_error[512], connect_error[512];
};

/* One turn of one end; an end that failed keeps its reasons. */
static void turn(SSL *ssl, bool *done, bool *failed, char *error, size_t cap)
{
    if (*done || *failed)
        return;
    int r = SSL_do_handshake(ssl);
    if (r == 1) {
        *done = true;
        return;
    }
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return;
    *failed = true;
    tls_error_text(error, cap);
}

/* A handshake between the two contexts, the connector set up for host under
 * mode. Runs until each end has finished or failed: with TLS 1.3 the client
 * finishes before the server has judged its certificate. */
static void handshake(struct handshake *h, SSL_CTX *accept_ctx, SSL_CTX *connect_ctx,
                      enum tls_mode mode, const char *host)
{
    BIO *a, *c;
    bool accept_failed = false, connect_failed = false;

    memset(h, 0, sizeof(*h));
    h->acceptor = SSL_new(accept_ctx);
    h->connector = SSL_new(connect_ctx);
    assert_non_null(h->acceptor);
    assert_non_null(h->connector);
    assert_int_equal(BIO_new_bio_pair(&a, 0, &c, 0), 1);
    SSL_set_bio(h->acceptor, a, a);
    SSL_set_bio(h->connector, c, c);
    SSL_set_accept_state(h->acceptor);
    SSL_set_connect_state(h->connector);
    assert_true(tls_server_ssl_setup(h->connector, mode, host));
    for (int i = 0; i < 20; i++) {
        turn(h->connector, &h->connected, &connect_failed, h->connect_error,
             sizeof(h->connect_error));
        turn(h->acceptor, &h->accepted, &accept_failed, h->accept_error,
             sizeof(h->accept_error));
        if ((h->connected || connect_failed) && (h->accepted || accept_failed))
            break;
    }
    assert_int_equal(ERR_peek_error(), 0);
}

static void handshake_end(struct handshake *h)
{
    SSL_free(h->acceptor);
    SSL_free(h->connector);
}

static void expect_success(const struct handshake *h)
{
    if (!h->connected || !h->accepted)
        fail_msg("handshake failed: client: %s; server: %s", h->connect_error,
                 h->accept_error);
}

/* The server's certificate, as the connector judges it under mode for host,
 * against the CA in ca_file. */
static void server_check(const char *server_cert, const char *server_key, enum tls_mode mode,
                         const char *ca_file, const char *host, struct handshake *h)
{
    SSL_CTX *actx = accepting(leg(TLS_PREFER, server_cert, server_key, NULL));
    SSL_CTX *cctx = connecting(leg(mode, NULL, NULL, ca_file));

    handshake(h, actx, cctx, mode, host);
    SSL_CTX_free(actx);
    SSL_CTX_free(cctx);
}

/* ---- contexts ---------------------------------------------------------- */

static void test_disabled(void **state)
{
    (void)state;
    struct config cfg = { .client_tls = leg(TLS_DISABLE, "proxy.crt", "proxy.key", NULL),
                          .server_tls = leg(TLS_DISABLE, NULL, NULL, NULL) };
    char why[64] = "stale";

    assert_null(tls_client_context(&cfg, why, sizeof(why)));
    assert_string_equal(why, "");
    strcpy(why, "stale");
    assert_null(tls_server_context(&cfg, why, sizeof(why)));
    assert_string_equal(why, "");
}

static void test_client_leg_modes(void **state)
{
    (void)state;
    X509 *ca = read_cert("ca.crt");

    for (enum tls_mode mode = TLS_ALLOW; mode <= TLS_VERIFY_FULL; mode++) {
        /* A ca_file beside allow..require changes nothing: only the verify
         * modes ask for a certificate. */
        SSL_CTX *ctx = accepting(leg(mode, "proxy.crt", "proxy.key", "ca.crt"));
        STACK_OF(X509_NAME) *names = SSL_CTX_get_client_CA_list(ctx);
        if (mode >= TLS_VERIFY_CA) {
            assert_int_equal(SSL_CTX_get_verify_mode(ctx),
                             SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
            assert_int_equal(sk_X509_NAME_num(names), 1);
            assert_int_equal(X509_NAME_cmp(sk_X509_NAME_value(names, 0),
                                           X509_get_subject_name(ca)), 0);
        } else {
            assert_int_equal(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_NONE);
            assert_int_equal(sk_X509_NAME_num(names), 0);
        }
        assert_true(SSL_CTX_get_options(ctx) & SSL_OP_NO_TICKET);
        assert_true(SSL_CTX_get_options(ctx) & SSL_OP_NO_RENEGOTIATION);
        assert_int_equal(SSL_CTX_get_session_cache_mode(ctx), SSL_SESS_CACHE_OFF);
        SSL_CTX_free(ctx);
    }
    /* Without a ca_file for the modes that do not need one. */
    SSL_CTX_free(accepting(leg(TLS_REQUIRE, "proxy.crt", "proxy.key", NULL)));
    X509_free(ca);
}

static void test_server_leg_modes(void **state)
{
    (void)state;

    for (enum tls_mode mode = TLS_PREFER; mode <= TLS_VERIFY_FULL; mode++) {
        SSL_CTX *ctx = connecting(leg(mode, NULL, NULL, mode >= TLS_VERIFY_CA ? "ca.crt" : NULL));
        assert_int_equal(SSL_CTX_get_verify_mode(ctx),
                         mode >= TLS_VERIFY_CA ? SSL_VERIFY_PEER : SSL_VERIFY_NONE);
        assert_null(SSL_CTX_get0_certificate(ctx));
        SSL_CTX_free(ctx);
    }
    /* With a client certificate. */
    SSL_CTX *ctx = connecting(leg(TLS_VERIFY_FULL, "client.crt", "client.key", "ca.crt"));
    X509 *client = read_cert("client.crt");
    assert_int_equal(X509_cmp(SSL_CTX_get0_certificate(ctx), client), 0);
    X509_free(client);
    SSL_CTX_free(ctx);
}

static void test_bad_files(void **state)
{
    (void)state;
    struct tls_config t = leg(TLS_REQUIRE, "missing.crt", "proxy.key", NULL);
    expect_no_context(true, t, "client_tls_cert_file", in_dir("missing.crt"),
                      "No such file or directory", NULL);
    t = leg(TLS_REQUIRE, "proxy.crt", "missing.key", NULL);
    expect_no_context(true, t, "client_tls_key_file", in_dir("missing.key"), NULL);
    /* A certificate is not a key, and a key not a certificate. */
    t = leg(TLS_REQUIRE, "proxy.crt", "proxy.crt", NULL);
    expect_no_context(true, t, "client_tls_key_file", in_dir("proxy.crt"), NULL);
    t = leg(TLS_REQUIRE, "proxy.key", "proxy.key", NULL);
    expect_no_context(true, t, "client_tls_cert_file", in_dir("proxy.key"), NULL);
    /* Someone else's key, of the same type and of another. */
    t = leg(TLS_REQUIRE, "proxy.crt", "server.key", NULL);
    expect_no_context(true, t, "client_tls_key_file", in_dir("server.key"), "is not the key of",
                      in_dir("proxy.crt"), NULL);
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(ec);
    write_pem("ec.key", NULL, ec);
    EVP_PKEY_free(ec);
    t = leg(TLS_REQUIRE, "proxy.crt", "ec.key", NULL);
    expect_no_context(true, t, "client_tls_key_file", in_dir("ec.key"), "is not the key of", NULL);
    t = leg(TLS_VERIFY_CA, "proxy.crt", "proxy.key", "missing-ca.crt");
    expect_no_context(true, t, "client_tls_ca_file", in_dir("missing-ca.crt"), NULL);

    /* The server leg names its own keys. */
    t = leg(TLS_VERIFY_CA, NULL, NULL, "missing-ca.crt");
    expect_no_context(false, t, "server_tls_ca_file", in_dir("missing-ca.crt"), NULL);
    t = leg(TLS_PREFER, "client.crt", "rogue.key", NULL);
    expect_no_context(false, t, "server_tls_key_file", in_dir("rogue.key"),
                      "is not the key of server_tls_cert_file", NULL);
    t = leg(TLS_PREFER, "missing.crt", "client.key", NULL);
    expect_no_context(false, t, "server_tls_cert_file", in_dir("missing.crt"), NULL);

    /* A configuration that did not come through config_parse. */
    t = leg(TLS_VERIFY_FULL, "proxy.crt", "proxy.key", NULL);
    expect_no_context(true, t, "client_tls_ca_file is not set", NULL);
    t = leg(TLS_REQUIRE, NULL, NULL, NULL);
    expect_no_context(true, t, "client_tls_cert_file is not set", NULL);
    t = leg(TLS_REQUIRE, "proxy.crt", "proxy.key", NULL);
    t.protocols = 0;
    expect_no_context(true, t, "client_tls_protocols", NULL);
}

/* An encrypted key fails to load; it must not stop the proxy to ask for a
 * passphrase on the terminal. */
static void test_encrypted_key(void **state)
{
    (void)state;
    EVP_PKEY *key = read_key("proxy.key");
    FILE *f = fopen(in_dir("encrypted.key"), "w");

    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, key, EVP_aes_256_cbc(),
                                          (unsigned char *)"secret", 6, NULL, NULL), 1);
    fclose(f);
    EVP_PKEY_free(key);
    struct tls_config t = leg(TLS_REQUIRE, "proxy.crt", "encrypted.key", NULL);
    expect_no_context(true, t, "client_tls_key_file", in_dir("encrypted.key"), NULL);
}

static void test_ciphers(void **state)
{
    (void)state;
    struct tls_config t = leg(TLS_REQUIRE, "proxy.crt", "proxy.key", NULL);

    t.ciphers = "NO-SUCH-CIPHER";
    expect_no_context(true, t, "client_tls_ciphers", "NO-SUCH-CIPHER", NULL);
    expect_no_context(false, t, "server_tls_ciphers", "NO-SUCH-CIPHER", NULL);
    t.ciphers = "default";
    SSL_CTX_free(accepting(t));
    SSL_CTX_free(connecting(t));
}

static void test_protocols(void **state)
{
    (void)state;
    static const struct {
        unsigned protocols;
        int min, max;
    } cases[] = {
        { TLS_PROTO_V1_2, TLS1_2_VERSION, TLS1_2_VERSION },
        { TLS_PROTO_V1_3, TLS1_3_VERSION, TLS1_3_VERSION },
        { BOTH, TLS1_2_VERSION, TLS1_3_VERSION },
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tls_config t = leg(TLS_REQUIRE, "proxy.crt", "proxy.key", NULL);
        t.protocols = cases[i].protocols;
        SSL_CTX *a = accepting(t), *c = connecting(t);
        assert_int_equal(SSL_CTX_get_min_proto_version(a), cases[i].min);
        assert_int_equal(SSL_CTX_get_max_proto_version(a), cases[i].max);
        assert_int_equal(SSL_CTX_get_min_proto_version(c), cases[i].min);
        assert_int_equal(SSL_CTX_get_max_proto_version(c), cases[i].max);
        SSL_CTX_free(a);
        SSL_CTX_free(c);
    }
}

/* ---- handshakes: the server's certificate ------------------------------ */

/* The versions and the TLS 1.2 cipher list are what the handshake uses. */
static void test_handshake_versions(void **state)
{
    (void)state;
    struct tls_config a = leg(TLS_REQUIRE, "server.crt", "server.key", NULL);
    struct tls_config c = leg(TLS_REQUIRE, NULL, NULL, NULL);
    struct handshake h;

    SSL_CTX *actx = accepting(a), *cctx = connecting(c);
    handshake(&h, actx, cctx, TLS_REQUIRE, "localhost");
    expect_success(&h);
    assert_int_equal(SSL_version(h.connector), TLS1_3_VERSION);
    handshake_end(&h);
    SSL_CTX_free(cctx);

    c.protocols = TLS_PROTO_V1_2;
    c.ciphers = "ECDHE-RSA-AES256-GCM-SHA384";
    cctx = connecting(c);
    handshake(&h, actx, cctx, TLS_REQUIRE, "localhost");
    expect_success(&h);
    assert_int_equal(SSL_version(h.acceptor), TLS1_2_VERSION);
    assert_string_equal(SSL_get_cipher_name(h.acceptor), "ECDHE-RSA-AES256-GCM-SHA384");
    handshake_end(&h);
    SSL_CTX_free(actx);

    /* No version in common. */
    a.protocols = TLS_PROTO_V1_3;
    actx = accepting(a);
    handshake(&h, actx, cctx, TLS_REQUIRE, "localhost");
    assert_false(h.connected);
    assert_false(h.accepted);
    assert_contains(h.accept_error, "unsupported protocol");
    handshake_end(&h);
    SSL_CTX_free(actx);
    SSL_CTX_free(cctx);
}

/* prefer and require encrypt to whoever answers, as libpq does. */
static void test_handshake_unverified(void **state)
{
    (void)state;
    struct handshake h;

    for (enum tls_mode mode = TLS_PREFER; mode <= TLS_REQUIRE; mode++) {
        server_check("rogue.crt", "rogue.key", mode, NULL, "elsewhere.example", &h);
        expect_success(&h);
        /* OpenSSL judged the certificate and went on regardless: nothing
         * to report, and it names nobody. */
        assert_int_not_equal(SSL_get_verify_result(h.connector), X509_V_OK);
        assert_null(tls_verify_error(h.connector));
        char cn[64];
        assert_false(tls_peer_common_name(h.connector, cn, sizeof(cn)));
        handshake_end(&h);
    }
}

static void test_handshake_verify_ca(void **state)
{
    (void)state;
    struct handshake h;

    /* The right CA; the name is not looked at. */
    server_check("server.crt", "server.key", TLS_VERIFY_CA, "ca.crt", "127.0.0.1", &h);
    expect_success(&h);
    assert_null(tls_verify_error(h.connector));
    char cn[64];
    assert_true(tls_peer_common_name(h.connector, cn, sizeof(cn)));
    assert_string_equal(cn, "localhost");
    handshake_end(&h);

    /* Trusting the other CA. */
    server_check("server.crt", "server.key", TLS_VERIFY_CA, "other-ca.crt", "localhost", &h);
    assert_false(h.connected);
    assert_false(h.accepted);
    assert_int_equal(SSL_get_verify_result(h.connector),
                     X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
    assert_contains(h.connect_error, "certificate verify failed");
    assert_string_equal(tls_verify_error(h.connector), "unable to get local issuer certificate");
    handshake_end(&h);

    /* A certificate from the other CA. */
    server_check("rogue.crt", "rogue.key", TLS_VERIFY_CA, "ca.crt", "localhost", &h);
    assert_false(h.connected);
    assert_contains(h.connect_error, "certificate verify failed");
    handshake_end(&h);
}

static void test_handshake_verify_full(void **state)
{
    (void)state;
    struct handshake h;

    /* server.crt names localhost only. */
    server_check("server.crt", "server.key", TLS_VERIFY_FULL, "ca.crt", "localhost", &h);
    expect_success(&h);
    assert_string_equal(SSL_get_servername(h.acceptor, TLSEXT_NAMETYPE_host_name), "localhost");
    handshake_end(&h);

    server_check("server.crt", "server.key", TLS_VERIFY_FULL, "ca.crt", "LocalHost", &h);
    expect_success(&h);
    handshake_end(&h);

    server_check("server.crt", "server.key", TLS_VERIFY_FULL, "ca.crt", "127.0.0.1", &h);
    assert_false(h.connected);
    assert_false(h.accepted);
    assert_int_equal(SSL_get_verify_result(h.connector), X509_V_ERR_IP_ADDRESS_MISMATCH);
    assert_contains(h.connect_error, "certificate verify failed");
    assert_string_equal(tls_verify_error(h.connector), "IP address mismatch");
    /* No SNI for an address. */
    assert_null(SSL_get_servername(h.acceptor, TLSEXT_NAMETYPE_host_name));
    handshake_end(&h);

    server_check("server.crt", "server.key", TLS_VERIFY_FULL, "ca.crt", "db.example", &h);
    assert_false(h.connected);
    assert_int_equal(SSL_get_verify_result(h.connector), X509_V_ERR_HOSTNAME_MISMATCH);
    assert_string_equal(tls_verify_error(h.connector), "hostname mismatch");
    handshake_end(&h);

    /* proxy.crt has IP:127.0.0.1 too, but no IPv6 address. */
    server_check("proxy.crt", "proxy.key", TLS_VERIFY_FULL, "ca.crt", "127.0.0.1", &h);
    expect_success(&h);
    handshake_end(&h);
    server_check("proxy.crt", "proxy.key", TLS_VERIFY_FULL, "ca.crt", "::1", &h);
    assert_false(h.connected);
    assert_int_equal(SSL_get_verify_result(h.connector), X509_V_ERR_IP_ADDRESS_MISMATCH);
    handshake_end(&h);

    /* Right names, wrong CA. */
    server_check("rogue.crt", "rogue.key", TLS_VERIFY_FULL, "ca.crt", "localhost", &h);
    assert_false(h.connected);
    handshake_end(&h);
}

/* A socket directory is no name: no SNI, and nothing verify-full could
 * check the certificate against. */
static void test_setup_socket_path(void **state)
{
    (void)state;
    SSL_CTX *ctx = connecting(leg(TLS_VERIFY_FULL, NULL, NULL, "ca.crt"));
    SSL *ssl = SSL_new(ctx);
    char text[256];

    assert_true(tls_server_ssl_setup(ssl, TLS_REQUIRE, "/var/run/postgresql"));
    assert_null(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
    assert_false(tls_server_ssl_setup(ssl, TLS_VERIFY_FULL, "/var/run/postgresql"));
    assert_contains(tls_error_text(text, sizeof(text)), "socket");
    assert_int_equal(ERR_peek_error(), 0);
    SSL_free(ssl);

    ssl = SSL_new(ctx);
    assert_true(tls_server_ssl_setup(ssl, TLS_REQUIRE, "db.example"));
    assert_string_equal(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name), "db.example");
    SSL_free(ssl);
    SSL_CTX_free(ctx);
}

/* ---- handshakes: the client's certificate ------------------------------ */

/* The proxy's listening end under client_tls_sslmode = mode, and a client
 * with cert/key (NULL: none) that trusts the test CA. */
static void client_check(enum tls_mode mode, const char *cert, const char *key,
                         struct handshake *h)
{
    SSL_CTX *actx = accepting(leg(mode, "proxy.crt", "proxy.key", "ca.crt"));
    SSL_CTX *cctx = connecting(leg(TLS_VERIFY_FULL, cert, key, "ca.crt"));

    handshake(h, actx, cctx, TLS_VERIFY_FULL, "localhost");
    SSL_CTX_free(actx);
    SSL_CTX_free(cctx);
}

static void test_client_certificate(void **state)
{
    (void)state;
    struct handshake h;
    char cn[64];

    /* Required under verify-ca. */
    client_check(TLS_VERIFY_CA, NULL, NULL, &h);
    assert_false(h.accepted);
    assert_contains(h.accept_error, "peer did not return a certificate");
    assert_null(tls_verify_error(h.acceptor));
    handshake_end(&h);

    client_check(TLS_VERIFY_CA, "client.crt", "client.key", &h);
    expect_success(&h);
    assert_true(tls_peer_common_name(h.acceptor, cn, sizeof(cn)));
    assert_string_equal(cn, "postgres");
    /* The client was told which CA to pick a certificate for. */
    STACK_OF(X509_NAME) *names = SSL_get_client_CA_list(h.connector);
    assert_int_equal(sk_X509_NAME_num(names), 1);
    X509 *ca = read_cert("ca.crt");
    assert_int_equal(X509_NAME_cmp(sk_X509_NAME_value(names, 0), X509_get_subject_name(ca)), 0);
    X509_free(ca);
    /* Too small a buffer gives no name rather than part of one. */
    assert_false(tls_peer_common_name(h.acceptor, cn, 8));
    assert_true(tls_peer_common_name(h.acceptor, cn, 9));
    handshake_end(&h);

    /* Signed by the other CA. */
    client_check(TLS_VERIFY_FULL, "rogue.crt", "rogue.key", &h);
    assert_false(h.accepted);
    assert_contains(h.accept_error, "certificate verify failed");
    assert_string_equal(tls_verify_error(h.acceptor), "unable to get local issuer certificate");
    handshake_end(&h);

    /* Not asked for below verify-ca, though the client has one. */
    client_check(TLS_REQUIRE, "client.crt", "client.key", &h);
    expect_success(&h);
    assert_null(SSL_get0_peer_certificate(h.acceptor));
    assert_false(tls_peer_common_name(h.acceptor, cn, sizeof(cn)));
    handshake_end(&h);
}

/* A certificate signed by issuer/issuer_key (itself when NULL) with md,
 * whose common name is cn (cn_len bytes). */
static X509 *make_cert(EVP_PKEY *key, const char *cn, int cn_len, X509 *issuer,
                       EVP_PKEY *issuer_key, const EVP_MD *md)
{
    X509 *cert = X509_new();
    X509_NAME *name = X509_NAME_new();

    assert_non_null(cert);
    assert_non_null(name);
    assert_int_equal(X509_set_version(cert, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(cert), 4242), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(cert), -3600));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(cert), 3600));
    assert_int_equal(X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                                                (const unsigned char *)cn, cn_len, -1, 0), 1);
    assert_int_equal(X509_set_subject_name(cert, name), 1);
    assert_int_equal(X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : name), 1);
    assert_int_equal(X509_set_pubkey(cert, key), 1);
    assert_true(X509_sign(cert, issuer_key ? issuer_key : key, md) > 0);
    X509_NAME_free(name);
    return cert;
}

/* "postgres\0.evil" must not be taken for "postgres", even from a
 * certificate the CA signed. */
static void test_common_name_with_nul(void **state)
{
    (void)state;
    static const char cn[] = "postgres\0.evil";
    X509 *ca = read_cert("ca.crt");
    EVP_PKEY *ca_key = read_key("ca.key"), *key = read_key("client.key");
    X509 *cert = make_cert(key, cn, (int)sizeof(cn) - 1, ca, ca_key, EVP_sha256());
    struct handshake h;
    char name[64];

    write_pem("nul.crt", cert, NULL);
    write_pem("nul.key", NULL, key);
    client_check(TLS_VERIFY_CA, "nul.crt", "nul.key", &h);
    expect_success(&h);
    assert_false(tls_peer_common_name(h.acceptor, name, sizeof(name)));
    handshake_end(&h);
    X509_free(cert);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(key);
}

/* ---- tls-server-end-point ---------------------------------------------- */

static void expect_end_point(X509 *cert, const EVP_MD *md)
{
    uint8_t got[EVP_MAX_MD_SIZE], want[EVP_MAX_MD_SIZE];
    unsigned char *der = NULL;
    unsigned want_len;

    int der_len = i2d_X509(cert, &der);
    assert_true(der_len > 0);
    assert_int_equal(EVP_Digest(der, (size_t)der_len, want, &want_len, md, NULL), 1);
    OPENSSL_free(der);
    assert_int_equal(tls_server_end_point(cert, got), want_len);
    assert_memory_equal(got, want, want_len);
}

/* proxy.crt is RSA with SHA-256: the hash is SHA-256 of its DER. */
static void test_end_point_file(void **state)
{
    (void)state;
    X509 *cert = read_cert("proxy.crt");

    assert_int_equal(X509_get_signature_nid(cert), NID_sha256WithRSAEncryption);
    expect_end_point(cert, EVP_sha256());
    assert_int_equal(tls_server_end_point(NULL, (uint8_t[EVP_MAX_MD_SIZE]){ 0 }), 0);
    X509_free(cert);
}

/* The signature's digest, except MD5 and SHA-1 (RFC 5929 §4.1); none when
 * the signature names no digest, as with PostgreSQL. */
static void test_end_point_digests(void **state)
{
    (void)state;
    EVP_PKEY *rsa = read_key("proxy.key");
    static const struct {
        const char *sig;
        int sig_nid;
        const char *hash;
    } cases[] = {
        { "SHA1", NID_sha1WithRSAEncryption, "SHA256" },
        { "SHA256", NID_sha256WithRSAEncryption, "SHA256" },
        { "SHA384", NID_sha384WithRSAEncryption, "SHA384" },
        { "SHA512", NID_sha512WithRSAEncryption, "SHA512" },
        { "SHA224", NID_sha224WithRSAEncryption, "SHA224" },
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        X509 *cert = make_cert(rsa, "x", 1, NULL, NULL, EVP_get_digestbyname(cases[i].sig));
        assert_int_equal(X509_get_signature_nid(cert), cases[i].sig_nid);
        expect_end_point(cert, EVP_get_digestbyname(cases[i].hash));
        X509_free(cert);
    }

    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ed);
    X509 *cert = make_cert(ed, "x", 1, NULL, NULL, NULL);
    uint8_t out[EVP_MAX_MD_SIZE];
    assert_int_equal(tls_server_end_point(cert, out), 0);
    X509_free(cert);
    EVP_PKEY_free(ed);
    EVP_PKEY_free(rsa);
}

/* Both ends of a handshake compute the same binding: the proxy from the
 * certificate PostgreSQL sent, PostgreSQL from its own. */
static void test_end_point_both_ends(void **state)
{
    (void)state;
    uint8_t server_side[EVP_MAX_MD_SIZE], client_side[EVP_MAX_MD_SIZE];
    struct handshake h;

    server_check("server.crt", "server.key", TLS_VERIFY_FULL, "ca.crt", "localhost", &h);
    expect_success(&h);
    size_t n = tls_server_end_point(SSL_get_certificate(h.acceptor), server_side);
    assert_int_equal(n, 32);
    assert_int_equal(tls_server_end_point(SSL_get0_peer_certificate(h.connector), client_side), n);
    assert_memory_equal(server_side, client_side, n);
    handshake_end(&h);

    X509 *cert = read_cert("server.crt");
    expect_end_point(cert, EVP_sha256());
    uint8_t file[EVP_MAX_MD_SIZE];
    assert_int_equal(tls_server_end_point(cert, file), n);
    assert_memory_equal(file, server_side, n);
    X509_free(cert);
}

/* ---- tls_error_text ---------------------------------------------------- */

static void test_error_text(void **state)
{
    (void)state;
    char text[256], tiny[8];

    assert_string_equal(tls_error_text(text, sizeof(text)), "no OpenSSL error reported");

    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_set_cipher_list(ctx, "NO-SUCH-CIPHER"), 0);
    assert_string_equal(tls_error_text(text, sizeof(text)), "no cipher match");
    assert_int_equal(ERR_peek_error(), 0);

    /* The cause first, each reason once, on one line; the system's error
     * by name, and "system lib" left out. */
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, in_dir("missing.crt"), NULL), 0);
    tls_error_text(text, sizeof(text));
    assert_int_equal(strncmp(text, "No such file or directory (calling fopen(", 41), 0);
    assert_contains(text, "): no such file");
    assert_null(strstr(text, "system lib"));
    assert_null(strchr(text, '\n'));
    /* Cut to fit. */
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, in_dir("missing.crt"), NULL), 0);
    assert_int_equal(strlen(tls_error_text(tiny, sizeof(tiny))), sizeof(tiny) - 1);
    assert_int_equal(strncmp(tiny, text, sizeof(tiny) - 1), 0);
    assert_int_equal(ERR_peek_error(), 0);
    SSL_CTX_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_client_leg_modes),
        cmocka_unit_test(test_server_leg_modes),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_encrypted_key),
        cmocka_unit_test(test_ciphers),
        cmocka_unit_test(test_protocols),
        cmocka_unit_test(test_handshake_versions),
        cmocka_unit_test(test_handshake_unverified),
        cmocka_unit_test(test_handshake_verify_ca),
        cmocka_unit_test(test_handshake_verify_full),
        cmocka_unit_test(test_setup_socket_path),
        cmocka_unit_test(test_client_certificate),
        cmocka_unit_test(test_common_name_with_nul),
        cmocka_unit_test(test_end_point_file),
        cmocka_unit_test(test_end_point_digests),
        cmocka_unit_test(test_end_point_both_ends),
        cmocka_unit_test(test_error_text),
    };
    return cmocka_run_group_tests(tests, make_certs, remove_certs);
}
