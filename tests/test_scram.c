/*
 * Unit tests for scram: the secret, the proof arithmetic and both ends of
 * the exchange, driven against each other and with hand-made messages.
 *
 * The known answers are RFC 7677's example (password "pencil") and a secret
 * PostgreSQL 15 stored for CREATE ROLE x PASSWORD 'pw' under
 * password_encryption = 'scram-sha-256'. Expected proofs and signatures are
 * computed here with OpenSSL directly, from the RFC's formulas, so that the
 * test does not take scram.c's word for its own arithmetic.
 *
 * Every message reaches scram.c in a heap block of exactly its length,
 * without a terminating NUL, so that AddressSanitizer flags a read past the
 * end; every exchange is freed, so that a leak on a failure path shows.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "scram.h"

/* ---- helpers ----------------------------------------------------------- */

/* base64 of a known-good value (never malformed input: that is scram.c's). */
static size_t b64d(const char *text, uint8_t *out, size_t max)
{
    size_t len = strlen(text), pad = 0;
    uint8_t buf[256];

    assert_true(len % 4 == 0 && len / 4 * 3 <= sizeof(buf));
    while (pad < 2 && len > pad && text[len - 1 - pad] == '=')
        pad++;
    assert_true(EVP_DecodeBlock(buf, (const unsigned char *)text, (int)len) >= 0);
    size_t n = len / 4 * 3 - pad;
    assert_true(n <= max);
    memcpy(out, buf, n);
    return n;
}

static char *b64e(const uint8_t *data, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    assert_non_null(out);
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

static void hmac(const uint8_t key[SCRAM_KEY_LEN], const char *text, uint8_t out[SCRAM_KEY_LEN])
{
    unsigned len = 0;
    assert_non_null(HMAC(EVP_sha256(), key, SCRAM_KEY_LEN, (const unsigned char *)text,
                         strlen(text), out, &len));
    assert_int_equal(len, SCRAM_KEY_LEN);
}

static void sha256(const uint8_t in[SCRAM_KEY_LEN], uint8_t out[SCRAM_KEY_LEN])
{
    unsigned len = 0;
    assert_true(EVP_Digest(in, SCRAM_KEY_LEN, out, &len, EVP_sha256(), NULL));
}

/* The ClientKey a client derives from its password (RFC 5802, 3). */
static void client_key_for(const char *password, const struct scram_secret *secret,
                           uint8_t out[SCRAM_KEY_LEN])
{
    uint8_t salted[SCRAM_KEY_LEN];
    assert_int_equal(PKCS5_PBKDF2_HMAC(password, (int)strlen(password), secret->salt,
                                       (int)secret->salt_len, secret->iterations, EVP_sha256(),
                                       SCRAM_KEY_LEN, salted),
                     1);
    hmac(salted, "Client Key", out);
}

static char *join3(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(n);
    assert_non_null(s);
    snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

/* HMAC(key, AuthMessage). */
static void sign(const uint8_t key[SCRAM_KEY_LEN], const char *client_first_bare,
                 const char *server_first, const char *without_proof, uint8_t out[SCRAM_KEY_LEN])
{
    char *head = join3(client_first_bare, ",", server_first);
    char *auth_message = join3(head, ",", without_proof);
    hmac(key, auth_message, out);
    free(auth_message);
    free(head);
}

/* without_proof + ",p=" + the proof of client_key for this AuthMessage. */
static char *client_final(const struct scram_secret *secret, const uint8_t client_key[SCRAM_KEY_LEN],
                          const char *client_first_bare, const char *server_first,
                          const char *without_proof)
{
    uint8_t proof[SCRAM_KEY_LEN];
    sign(secret->stored_key, client_first_bare, server_first, without_proof, proof);
    for (size_t i = 0; i < SCRAM_KEY_LEN; i++)
        proof[i] ^= client_key[i];
    char *p = b64e(proof, sizeof(proof));
    char *msg = join3(without_proof, ",p=", p);
    free(p);
    return msg;
}

/* The server's nonce: the r= of its server-first-message. */
static char *nonce_of(const char *server_first)
{
    assert_true(strncmp(server_first, "r=", 2) == 0);
    const char *comma = strchr(server_first, ',');
    assert_non_null(comma);
    return strndup(server_first + 2, (size_t)(comma - server_first - 2));
}

/* msg in a heap block of exactly len bytes, as a socket would hand it over. */
static char *exact(const char *msg, size_t len)
{
    char *block = malloc(len ? len : 1);
    assert_non_null(block);
    memcpy(block, msg, len);
    return block;
}

/* tmpl with <n> replaced by n, <s> by s and <s-> by s without its last
 * character. */
static void fill(char *out, size_t size, const char *tmpl, const char *n, const char *s)
{
    size_t len = 0;

    while (*tmpl) {
        const char *with = NULL;
        size_t with_len = 0, skip = 1;
        if (strncmp(tmpl, "<n>", 3) == 0)
            with = n, with_len = strlen(n), skip = 3;
        else if (strncmp(tmpl, "<s>", 3) == 0)
            with = s, with_len = strlen(s), skip = 3;
        else if (strncmp(tmpl, "<s->", 4) == 0)
            with = s, with_len = strlen(s) - 1, skip = 4;
        else
            with = tmpl, with_len = 1;
        assert_true(len + with_len < size);
        memcpy(out + len, with, with_len);
        len += with_len;
        tmpl += skip;
    }
    out[len] = '\0';
}

static enum scram_status srv_first(struct scram_server *s, const char *mechanism,
                                   const char *msg, size_t len, char **out, const char **why)
{
    char *block = exact(msg, len);
    enum scram_status st = scram_server_first(s, mechanism, block, len, out, why);
    free(block);
    return st;
}

static enum scram_status srv_final(struct scram_server *s, const char *msg, size_t len,
                                   char **out, const char **why)
{
    char *block = exact(msg, len);
    enum scram_status st = scram_server_final(s, block, len, out, why);
    free(block);
    return st;
}

static enum scram_status cli_final(struct scram_client *c, const char *msg, size_t len,
                                   char **out, const char **why)
{
    char *block = exact(msg, len);
    enum scram_status st = scram_client_final(c, block, len, out, why);
    free(block);
    return st;
}

static enum scram_status cli_verify(struct scram_client *c, const char *msg, size_t len,
                                    const char **why)
{
    char *block = exact(msg, len);
    enum scram_status st = scram_client_verify(c, block, len, why);
    free(block);
    return st;
}

#define assert_contains(haystack, needle)                                        \
    do {                                                                        \
        if (!strstr((haystack), (needle)))                                      \
            fail_msg("expected \"%s\" in \"%s\"", (needle), (haystack));        \
    } while (0)

static const char pg15_secret[] =
    "SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk="
    ":Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=";

static struct scram_secret secret_of(const char *password)
{
    static const uint8_t salt[16] = "0123456789abcdef";
    struct scram_secret s;
    assert_true(scram_secret_from_password(password, salt, sizeof(salt), 4096, &s));
    return s;
}

/* ---- a whole exchange --------------------------------------------------- */

/* Both legs of one login: the proxy's client side against its server side. */
struct exchange {
    struct scram_secret server_secret; /* what the server checks against */
    struct scram_secret client_secret; /* what the client believes it is */
    uint8_t client_key[SCRAM_KEY_LEN];
    bool plus_offered;
    const uint8_t *server_cb;
    size_t server_cb_len;
    const char *mechanisms; /* the list the client chooses from */
    size_t mechanisms_len;
    bool client_tls;
    const uint8_t *client_cb;
    size_t client_cb_len;

    /* results */
    const char *why;
    int failed_step; /* 0: none; 1..4: server first, client final, server final, verify */
    uint8_t recovered[SCRAM_KEY_LEN];
};

static const char both_mechanisms[] = SCRAM_MECHANISM_PLUS "\0" SCRAM_MECHANISM "\0";
static const char plain_mechanism[] = SCRAM_MECHANISM "\0";

static void run(struct exchange *x)
{
    struct scram_server srv;
    struct scram_client cli;
    char *first = NULL, *server_first = NULL, *final = NULL, *server_final = NULL;

    scram_server_init(&srv, &x->server_secret, x->plus_offered, x->server_cb, x->server_cb_len);
    const char *mechanism = scram_client_choose(x->mechanisms, x->mechanisms_len, x->client_tls);
    assert_non_null(mechanism);
    assert_true(scram_client_init(&cli, x->client_key, &x->client_secret, mechanism,
                                  x->client_tls, x->client_cb, x->client_cb_len, &first));
    x->why = NULL;
    x->failed_step = 0;
    if (srv_first(&srv, mechanism, first, strlen(first), &server_first, &x->why) !=
        SCRAM_CONTINUE)
        x->failed_step = 1;
    else if (cli_final(&cli, server_first, strlen(server_first), &final, &x->why) !=
             SCRAM_CONTINUE)
        x->failed_step = 2;
    else if (srv_final(&srv, final, strlen(final), &server_final, &x->why) != SCRAM_DONE)
        x->failed_step = 3;
    else if (cli_verify(&cli, server_final, strlen(server_final), &x->why) != SCRAM_DONE)
        x->failed_step = 4;
    if (x->failed_step) {
        assert_non_null(x->why);
        assert_true(x->why[0] != '\0');
    }
    if (x->failed_step == 0 || x->failed_step == 4)
        memcpy(x->recovered, srv.client_key, SCRAM_KEY_LEN);
    free(first);
    free(server_first);
    free(final);
    free(server_final);
    scram_server_free(&srv);
    scram_client_free(&cli);
}

static struct exchange plain_exchange(const char *password)
{
    struct exchange x = {
        .server_secret = secret_of("pencil"),
        .mechanisms = plain_mechanism,
        .mechanisms_len = sizeof(plain_mechanism),
    };
    x.client_secret = x.server_secret;
    client_key_for(password, &x.client_secret, x.client_key);
    return x;
}

static const uint8_t cert_hash[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                      17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
                                      31, 32};
static const uint8_t other_hash[32] = {2};

/* ---- RFC 7677 ---------------------------------------------------------- */

#define RFC_CLIENT_FIRST_BARE "n=user,r=rOprNGfwEbeRWgbNEkqO"
#define RFC_NONCE "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_SALT "W22ZaJ0SNY7soEsUEjb6gQ=="
#define RFC_SERVER_FIRST "r=" RFC_NONCE ",s=" RFC_SALT ",i=4096"
#define RFC_WITHOUT_PROOF "c=biws,r=" RFC_NONCE
#define RFC_PROOF "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_SERVER_SIGNATURE "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

static struct scram_secret rfc_secret(void)
{
    uint8_t salt[SCRAM_SALT_MAX];
    size_t salt_len = b64d(RFC_SALT, salt, sizeof(salt));
    struct scram_secret s;
    assert_true(scram_secret_from_password("pencil", salt, salt_len, 4096, &s));
    return s;
}

/* The RFC's proof and signature hold for the secret derived from "pencil":
 * the ClientKey the proof reveals hashes to StoredKey, and ServerKey signs
 * the AuthMessage as the RFC's server did. */
static void test_rfc7677_vector(void **state)
{
    (void)state;
    struct scram_secret s = rfc_secret();
    uint8_t signature[SCRAM_KEY_LEN], proof[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN],
        stored[SCRAM_KEY_LEN], expected[SCRAM_KEY_LEN];

    assert_int_equal(s.iterations, 4096);
    assert_int_equal(s.salt_len, 16);
    sign(s.stored_key, RFC_CLIENT_FIRST_BARE, RFC_SERVER_FIRST, RFC_WITHOUT_PROOF, signature);
    assert_int_equal(b64d(RFC_PROOF, proof, sizeof(proof)), SCRAM_KEY_LEN);
    for (size_t i = 0; i < SCRAM_KEY_LEN; i++)
        client_key[i] = proof[i] ^ signature[i];
    sha256(client_key, stored);
    assert_memory_equal(stored, s.stored_key, SCRAM_KEY_LEN);
    /* And the ClientKey is the one "pencil" gives. */
    uint8_t from_password[SCRAM_KEY_LEN];
    client_key_for("pencil", &s, from_password);
    assert_memory_equal(client_key, from_password, SCRAM_KEY_LEN);

    sign(s.server_key, RFC_CLIENT_FIRST_BARE, RFC_SERVER_FIRST, RFC_WITHOUT_PROOF, signature);
    assert_int_equal(b64d(RFC_SERVER_SIGNATURE, expected, sizeof(expected)), SCRAM_KEY_LEN);
    assert_memory_equal(signature, expected, SCRAM_KEY_LEN);
}

/* scram_server_* fed the RFC's client messages: its nonce differs from the
 * RFC's, so the final message is re-proven for it with the RFC's ClientKey. */
static void test_rfc7677_server(void **state)
{
    (void)state;
    static const char first[] = "n,," RFC_CLIENT_FIRST_BARE;
    struct scram_secret s = rfc_secret();
    struct scram_server srv;
    char *server_first, *server_final;
    const char *why;
    uint8_t client_key[SCRAM_KEY_LEN];

    client_key_for("pencil", &s, client_key);
    scram_server_init(&srv, &s, false, NULL, 0);
    assert_int_equal(srv_first(&srv, SCRAM_MECHANISM, first, strlen(first), &server_first, &why),
                     SCRAM_CONTINUE);
    /* r=<client nonce><24 characters>,s=<salt>,i=4096 */
    char *nonce = nonce_of(server_first);
    assert_int_equal(strlen(nonce), strlen("rOprNGfwEbeRWgbNEkqO") + 24);
    assert_true(strncmp(nonce, "rOprNGfwEbeRWgbNEkqO", 20) == 0);
    char *tail = join3(",s=", RFC_SALT, ",i=4096");
    assert_string_equal(server_first + 2 + strlen(nonce), tail);
    free(tail);

    char *without_proof = join3("c=biws,r=", nonce, "");
    char *final = client_final(&s, client_key, RFC_CLIENT_FIRST_BARE, server_first, without_proof);
    assert_int_equal(srv_final(&srv, final, strlen(final), &server_final, &why), SCRAM_DONE);
    assert_memory_equal(srv.client_key, client_key, SCRAM_KEY_LEN);

    uint8_t signature[SCRAM_KEY_LEN];
    sign(s.server_key, RFC_CLIENT_FIRST_BARE, server_first, without_proof, signature);
    char *v = b64e(signature, sizeof(signature));
    char *expected = join3("v=", v, "");
    assert_string_equal(server_final, expected);
    free(expected);
    free(v);
    free(final);
    free(without_proof);
    free(nonce);
    free(server_first);
    free(server_final);
    scram_server_free(&srv);

    /* The RFC's own final message carries the RFC server's nonce. */
    static const char rfc_final[] = RFC_WITHOUT_PROOF ",p=" RFC_PROOF;
    scram_server_init(&srv, &s, false, NULL, 0);
    assert_int_equal(srv_first(&srv, SCRAM_MECHANISM, first, strlen(first), &server_first, &why),
                     SCRAM_CONTINUE);
    assert_int_equal(srv_final(&srv, rfc_final, strlen(rfc_final), &server_final, &why),
                     SCRAM_FAIL);
    assert_null(server_final);
    assert_contains(why, "nonce");
    free(server_first);
    scram_server_free(&srv);
}

/* ---- round trips -------------------------------------------------------- */

static void test_round_trip_plain(void **state)
{
    (void)state;
    struct exchange x = plain_exchange("pencil");

    run(&x);
    assert_int_equal(x.failed_step, 0);
    assert_memory_equal(x.recovered, x.client_key, SCRAM_KEY_LEN);

    /* On TLS without PLUS on offer the client says "y", which is fine. */
    x.client_tls = true;
    run(&x);
    assert_int_equal(x.failed_step, 0);
    assert_memory_equal(x.recovered, x.client_key, SCRAM_KEY_LEN);
}

static void test_round_trip_plus(void **state)
{
    (void)state;
    struct exchange x = plain_exchange("pencil");
    x.plus_offered = true;
    x.server_cb = x.client_cb = cert_hash;
    x.server_cb_len = x.client_cb_len = sizeof(cert_hash);
    x.mechanisms = both_mechanisms;
    x.mechanisms_len = sizeof(both_mechanisms);
    x.client_tls = true;

    run(&x);
    assert_int_equal(x.failed_step, 0);
    assert_memory_equal(x.recovered, x.client_key, SCRAM_KEY_LEN);

    /* Bound to another certificate: a man in the middle. */
    x.client_cb = other_hash;
    run(&x);
    assert_int_equal(x.failed_step, 3);
    assert_contains(x.why, "channel binding");

    /* Binding data of another length (a SHA-384 certificate hash). */
    static const uint8_t longer[48] = {1, 2, 3};
    x.client_cb = longer;
    x.client_cb_len = sizeof(longer);
    run(&x);
    assert_int_equal(x.failed_step, 3);
}

/* A TLS client that was not shown PLUS answers "y"; when PLUS was offered,
 * someone removed it on the way. */
static void test_downgrade(void **state)
{
    (void)state;
    struct exchange x = plain_exchange("pencil");
    x.plus_offered = true;
    x.server_cb = cert_hash;
    x.server_cb_len = sizeof(cert_hash);
    x.client_tls = true; /* but it chooses from the plain list */

    run(&x);
    assert_int_equal(x.failed_step, 1);
    assert_contains(x.why, "downgrade");

    /* Without TLS on its side the client says "n": no downgrade to see. */
    x.client_tls = false;
    run(&x);
    assert_int_equal(x.failed_step, 0);
}

static void test_wrong_password(void **state)
{
    (void)state;
    struct exchange x = plain_exchange("pencil2");

    run(&x);
    assert_int_equal(x.failed_step, 3);
    assert_contains(x.why, "wrong password");
}

static void test_server_secret_differs(void **state)
{
    (void)state;
    struct exchange x = plain_exchange("pencil");
    static const uint8_t salt[16] = "another salt....";

    /* Same password, but PostgreSQL salted it anew (ALTER ROLE ... PASSWORD). */
    assert_true(scram_secret_from_password("pencil", salt, sizeof(salt), 4096, &x.server_secret));
    run(&x);
    assert_int_equal(x.failed_step, 2);
    assert_contains(x.why, "differs");

    assert_true(scram_secret_from_password("pencil", x.client_secret.salt,
                                           x.client_secret.salt_len, 4097, &x.server_secret));
    run(&x);
    assert_int_equal(x.failed_step, 2);
    assert_contains(x.why, "differs");
}

/* A server that knows the salt but not ServerKey cannot sign. */
static void test_server_cannot_sign(void **state)
{
    (void)state;
    struct exchange x = plain_exchange("pencil");

    x.server_secret.server_key[0] ^= 1;
    run(&x);
    assert_int_equal(x.failed_step, 4);
    assert_contains(x.why, "signature");
}

/* ---- the server side by hand ------------------------------------------ */

/* A server past its first step with client-first "n,,n=,r=abc"; returns
 * the server-first-message. */
static char *started(struct scram_server *srv, const struct scram_secret *s)
{
    static const char first[] = "n,,n=,r=abc";
    char *server_first;
    const char *why;

    scram_server_init(srv, s, false, NULL, 0);
    assert_int_equal(srv_first(srv, SCRAM_MECHANISM, first, strlen(first), &server_first, &why),
                     SCRAM_CONTINUE);
    return server_first;
}

static enum scram_status final_for(const struct scram_secret *s, const uint8_t key[SCRAM_KEY_LEN],
                                   const char *prefix, const char *nonce_tail,
                                   const char *extension, const char **why)
{
    struct scram_server srv;
    char *server_first = started(&srv, s);
    char *nonce = nonce_of(server_first);
    char *n2 = join3(nonce, nonce_tail, "");
    char *head = join3(prefix, ",r=", n2);
    char *without_proof = join3(head, extension, "");
    char *final = client_final(s, key, "n=,r=abc", server_first, without_proof);
    char *out = NULL;

    enum scram_status st = srv_final(&srv, final, strlen(final), &out, why);
    if (st == SCRAM_DONE)
        assert_memory_equal(srv.client_key, key, SCRAM_KEY_LEN);
    else
        assert_null(out);
    free(out);
    free(final);
    free(without_proof);
    free(head);
    free(n2);
    free(nonce);
    free(server_first);
    scram_server_free(&srv);
    return st;
}

static void test_tampered(void **state)
{
    (void)state;
    struct scram_secret s = secret_of("pencil");
    uint8_t key[SCRAM_KEY_LEN];
    const char *why;

    client_key_for("pencil", &s, key);
    assert_int_equal(final_for(&s, key, "c=biws", "", "", &why), SCRAM_DONE);
    /* Extensions before the proof are ignored, but signed. */
    assert_int_equal(final_for(&s, key, "c=biws", "", ",x=ext", &why), SCRAM_DONE);

    assert_int_equal(final_for(&s, key, "c=biws", "X", "", &why), SCRAM_FAIL);
    assert_contains(why, "nonce");
    /* "y,," where "n,," was said, and binding data where none was. */
    assert_int_equal(final_for(&s, key, "c=eSws", "", "", &why), SCRAM_FAIL);
    assert_int_equal(final_for(&s, key, "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsAQID", "", "", &why),
                     SCRAM_FAIL);
    assert_int_equal(final_for(&s, key, "c=biwsAA==", "", "", &why), SCRAM_FAIL);

    /* A proof with one bit changed. */
    key[7] ^= 0x10;
    assert_int_equal(final_for(&s, key, "c=biws", "", "", &why), SCRAM_FAIL);
    assert_contains(why, "wrong password");
}

static void expect_first_fails(const struct scram_secret *s, bool plus_offered,
                               const uint8_t *cb, size_t cb_len, const char *mechanism,
                               const char *msg, size_t len)
{
    struct scram_server srv;
    char *out = (char *)"unset";
    const char *why = NULL;

    scram_server_init(&srv, s, plus_offered, cb, cb_len);
    if (srv_first(&srv, mechanism, msg, len, &out, &why) != SCRAM_FAIL)
        fail_msg("accepted %s \"%.*s\"", mechanism, (int)len, msg);
    assert_null(out);
    assert_non_null(why);
    /* A failed exchange stays failed. */
    assert_int_equal(srv_final(&srv, "c=biws,r=x,p=AAAA", 17, &out, &why), SCRAM_FAIL);
    scram_server_free(&srv);
}

#define FIRST_FAILS(s, msg) expect_first_fails(s, false, NULL, 0, SCRAM_MECHANISM, msg, strlen(msg))

static void test_client_first_malformed(void **state)
{
    (void)state;
    struct scram_secret s = secret_of("pencil");
    static const char *const bad[] = {
        "", "n", "n,", "n,,", "n,,n", "n,,n=", "n,,n=u", "n,,n=u,", "n,,r=abc", "n,,n=u,r=",
        "n,,n=u,r=a b", "n,,n=u,r=ab\x7f", "n,,n=u,r=\xc3\xa9", "n,,n=u,x=1,r=abc",
        "x,,n=,r=abc", "nn,,n=,r=abc", "n,a=admin,n=,r=abc", "n,x,n=,r=abc", "n,,m=ext,n=,r=abc",
        "n,,n=,r=abc,", "n,,n=,r=abc,1=x", "n,,n=,r=abc,x", "n,,n=,r=abc,x:y",
        "y,n=,r=abc", "p,,n=,r=abc",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        FIRST_FAILS(&s, bad[i]);
    /* A NUL inside: the lengths disagree. */
    expect_first_fails(&s, false, NULL, 0, SCRAM_MECHANISM, "n,,n=,r=abc\0def", 15);

    /* An unknown extension after the nonce is ignored. */
    struct scram_server srv;
    char *out;
    const char *why;
    static const char ext[] = "n,,n=someone,r=abc,x=y";
    scram_server_init(&srv, &s, false, NULL, 0);
    assert_int_equal(srv_first(&srv, SCRAM_MECHANISM, ext, strlen(ext), &out, &why),
                     SCRAM_CONTINUE);
    free(out);
    scram_server_free(&srv);
}

/* PLUS is chosen with "p=", and only then; and only when it was offered. */
static void test_mechanism_and_flag(void **state)
{
    (void)state;
    struct scram_secret s = secret_of("pencil");
    static const char n[] = "n,,n=,r=abc", y[] = "y,,n=,r=abc",
                      p[] = "p=tls-server-end-point,,n=,r=abc", unique[] = "p=tls-unique,,n=,r=abc";
    const uint8_t *cb = cert_hash;
    size_t cb_len = sizeof(cert_hash);

    expect_first_fails(&s, true, cb, cb_len, SCRAM_MECHANISM_PLUS, n, strlen(n));
    expect_first_fails(&s, true, cb, cb_len, SCRAM_MECHANISM_PLUS, y, strlen(y));
    expect_first_fails(&s, true, cb, cb_len, SCRAM_MECHANISM, p, strlen(p));
    expect_first_fails(&s, true, cb, cb_len, SCRAM_MECHANISM_PLUS, unique, strlen(unique));
    expect_first_fails(&s, false, NULL, 0, SCRAM_MECHANISM_PLUS, p, strlen(p));
    expect_first_fails(&s, true, NULL, 0, SCRAM_MECHANISM_PLUS, p, strlen(p));
    expect_first_fails(&s, false, cb, cb_len, SCRAM_MECHANISM_PLUS, p, strlen(p));
    expect_first_fails(&s, true, cb, cb_len, "SCRAM-SHA-1", n, strlen(n));
    expect_first_fails(&s, true, cb, cb_len, "", n, strlen(n));

    /* The good pairs, for contrast. */
    struct scram_server srv;
    char *out;
    const char *why;
    scram_server_init(&srv, &s, true, cb, cb_len);
    assert_int_equal(srv_first(&srv, SCRAM_MECHANISM_PLUS, p, strlen(p), &out, &why),
                     SCRAM_CONTINUE);
    free(out);
    scram_server_free(&srv);
    scram_server_init(&srv, &s, true, cb, cb_len);
    assert_int_equal(srv_first(&srv, SCRAM_MECHANISM, n, strlen(n), &out, &why), SCRAM_CONTINUE);
    free(out);
    scram_server_free(&srv);
}

static void test_client_final_malformed(void **state)
{
    (void)state;
    struct scram_secret s = secret_of("pencil");
    static const char *const bad[] = {
        "", "c=biws", "c=biws,", "c=biws,r=", "r=<n>,c=biws,p=<s>", "c=biws,r=<n>",
        "c=biws,r=<n>,", "c=biws,r=<n>,p=", "c=biws,r=<n>,p=!!!!", "c=biws,r=<n>,p=AAAA",
        "c=biws,r=<n>,p=<s>=", "c=biws,r=<n>,p=<s>,x=y", "c=biws,r=<n>,p=<s>AAAA",
        "c=biws,r=<n>,1=x,p=<s>", "c=biws,r=<n>,p=<s->", "c=biws,r=<n>,p=<s>\n",
        "c=biws,r=<n>,p=<s->*", "c=biws,r=<n>,r=<n>", "c=biws,r=<n>,x=y",
    };
    static const char some_proof[] = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct scram_server srv;
        char *server_first = started(&srv, &s);
        char *nonce = nonce_of(server_first);
        char msg[512], *out = (char *)"unset";
        const char *why = NULL;
        fill(msg, sizeof(msg), bad[i], nonce, some_proof);
        if (srv_final(&srv, msg, strlen(msg), &out, &why) != SCRAM_FAIL)
            fail_msg("accepted \"%s\"", msg);
        assert_null(out);
        assert_non_null(why);
        free(nonce);
        free(server_first);
        scram_server_free(&srv);
    }
}

static void test_out_of_order(void **state)
{
    (void)state;
    struct scram_secret s = secret_of("pencil");
    struct scram_server srv;
    struct scram_client cli;
    char *out;
    const char *why;
    uint8_t key[SCRAM_KEY_LEN] = {0};

    scram_server_init(&srv, &s, false, NULL, 0);
    assert_int_equal(srv_final(&srv, "c=biws,r=x,p=AAAA", 17, &out, &why), SCRAM_FAIL);
    scram_server_free(&srv);

    assert_true(scram_client_init(&cli, key, &s, SCRAM_MECHANISM, false, NULL, 0, &out));
    free(out);
    assert_int_equal(cli_verify(&cli, "v=AAAA", 6, &why), SCRAM_FAIL);
    assert_int_equal(cli_final(&cli, "r=x,s=AAAA,i=1", 14, &out, &why), SCRAM_FAIL);
    scram_client_free(&cli);
}

/* ---- the client side by hand ------------------------------------------ */

static void test_client_choose(void **state)
{
    (void)state;
    static const char plus_only[] = SCRAM_MECHANISM_PLUS "\0";
    static const char others[] = "SCRAM-SHA-1\0SCRAM-SHA-256-PLUSX\0SCRAM-SHA-25\0";
    static const char after_end[] = "SCRAM-SHA-1\0\0SCRAM-SHA-256\0";

    assert_string_equal(scram_client_choose(both_mechanisms, sizeof(both_mechanisms), true),
                        SCRAM_MECHANISM_PLUS);
    assert_string_equal(scram_client_choose(both_mechanisms, sizeof(both_mechanisms), false),
                        SCRAM_MECHANISM);
    assert_string_equal(scram_client_choose(plain_mechanism, sizeof(plain_mechanism), true),
                        SCRAM_MECHANISM);
    assert_string_equal(scram_client_choose(plus_only, sizeof(plus_only), true),
                        SCRAM_MECHANISM_PLUS);
    assert_null(scram_client_choose(plus_only, sizeof(plus_only), false));
    assert_null(scram_client_choose(others, sizeof(others), true));
    assert_null(scram_client_choose(after_end, sizeof(after_end), true));
    assert_null(scram_client_choose("", 0, true));
    /* A list cut short of its terminators. */
    char *cut = exact(SCRAM_MECHANISM, strlen(SCRAM_MECHANISM));
    assert_string_equal(scram_client_choose(cut, strlen(SCRAM_MECHANISM), false),
                        SCRAM_MECHANISM);
    free(cut);
}

static void expect_header(const char *mechanism, bool tls, const uint8_t *cb, size_t cb_len,
                          const char *header)
{
    struct scram_secret s = secret_of("pencil");
    struct scram_client cli;
    uint8_t key[SCRAM_KEY_LEN] = {0};
    char *out;

    assert_true(scram_client_init(&cli, key, &s, mechanism, tls, cb, cb_len, &out));
    char *prefix = join3(header, "n=,r=", "");
    assert_true(strncmp(out, prefix, strlen(prefix)) == 0);
    const char *nonce = out + strlen(prefix);
    assert_int_equal(strlen(nonce), 24);
    for (const char *c = nonce; *c; c++)
        assert_true(*c > 0x20 && *c < 0x7f && *c != ',');
    free(prefix);
    free(out);
    scram_client_free(&cli);
}

static void test_client_first(void **state)
{
    (void)state;
    struct scram_secret s = secret_of("pencil");
    struct scram_client cli;
    uint8_t key[SCRAM_KEY_LEN] = {0};
    uint8_t too_long[SCRAM_CB_MAX + 1] = {0};
    char *out;

    expect_header(SCRAM_MECHANISM, false, NULL, 0, "n,,");
    expect_header(SCRAM_MECHANISM, true, NULL, 0, "y,,");
    expect_header(SCRAM_MECHANISM_PLUS, true, cert_hash, sizeof(cert_hash),
                  "p=tls-server-end-point,,");

    /* PLUS needs binding data; unknown mechanisms are refused. */
    assert_false(scram_client_init(&cli, key, &s, SCRAM_MECHANISM_PLUS, true, NULL, 0, &out));
    assert_null(out);
    scram_client_free(&cli);
    assert_false(scram_client_init(&cli, key, &s, SCRAM_MECHANISM_PLUS, true, too_long,
                                   sizeof(too_long), &out));
    scram_client_free(&cli);
    assert_false(scram_client_init(&cli, key, &s, "SCRAM-SHA-1", false, NULL, 0, &out));
    assert_null(out);
    scram_client_free(&cli);
}

/* A client past its first step; *nonce is its nonce. */
static void client_started(struct scram_client *cli, const struct scram_secret *s, char **nonce)
{
    uint8_t key[SCRAM_KEY_LEN];
    char *out;

    client_key_for("pencil", s, key);
    assert_true(scram_client_init(cli, key, s, SCRAM_MECHANISM, false, NULL, 0, &out));
    *nonce = strdup(strstr(out, "r=") + 2);
    free(out);
}

static void test_server_first_malformed(void **state)
{
    (void)state;
    struct scram_secret s = secret_of("pencil");
    char *salt = b64e(s.salt, s.salt_len);
    static const char *const bad[] = {
        "", "r=", "r=<n>", "r=<n>,s=<s>,i=4096", "r=<n>X", "r=<n>X,s=<s>", "r=<n>X,s=<s>,i=",
        "r=<n>X,s=,i=4096", "r=<n>X,s=!!!!,i=4096", "r=<n>X,s=AAA,i=4096", "r=<n>X,s=<s->,i=4096",
        "r=<n>X,s=<s>,i=0", "r=<n>X,s=<s>,i=-1", "r=<n>X,s=<s>,i=+4096", "r=<n>X,s=<s>,i=4096x",
        "r=<n>X,s=<s>,i= 4096", "r=<n>X,s=<s>,i=99999999999999999999",
        "r=<n>X,s=<s>,i=2147483648", "r=<n>X,s=<s>,i=2147483647", "r=<n>X,s=<s>,i=4096,x=y",
        "r=<n>X,s=<s>,i=4096,", "m=ext,r=<n>X,s=<s>,i=4096", "s=<s>,r=<n>X,i=4096",
        "r=<n>X,i=4096,s=<s>", "r=<n>\x01,s=<s>,i=4096", "r=<n> ,s=<s>,i=4096",
        "r=Y<n>,s=<s>,i=4096", "r=<s>,s=<s>,i=4096",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct scram_client cli;
        char *nonce, msg[512], *out = (char *)"unset";
        const char *why = NULL;
        client_started(&cli, &s, &nonce);
        fill(msg, sizeof(msg), bad[i], nonce, salt);
        if (cli_final(&cli, msg, strlen(msg), &out, &why) != SCRAM_FAIL)
            fail_msg("accepted \"%s\"", msg);
        assert_null(out);
        assert_non_null(why);
        /* A failed exchange stays failed. */
        assert_int_equal(cli_verify(&cli, "v=AAAA", 6, &why), SCRAM_FAIL);
        free(nonce);
        scram_client_free(&cli);
    }
    free(salt);
}

/* A client that has sent its final message to a server holding s; *v is
 * the signature that server would answer with. */
static void client_awaiting_final(struct scram_client *cli, const struct scram_secret *s,
                                  char **v)
{
    char *nonce, *final;
    const char *why;

    client_started(cli, s, &nonce);
    char *salt = b64e(s->salt, s->salt_len);
    char *head = join3("r=", nonce, "SRV,s=");
    char *server_first = join3(head, salt, ",i=4096");
    assert_int_equal(cli_final(cli, server_first, strlen(server_first), &final, &why),
                     SCRAM_CONTINUE);
    char *without_proof = strndup(final, (size_t)(strstr(final, ",p=") - final));
    char *bare = join3("n=,r=", nonce, "");
    uint8_t signature[SCRAM_KEY_LEN];
    sign(s->server_key, bare, server_first, without_proof, signature);
    *v = b64e(signature, sizeof(signature));
    free(bare);
    free(without_proof);
    free(final);
    free(server_first);
    free(head);
    free(salt);
    free(nonce);
}

static void test_server_final_malformed(void **state)
{
    (void)state;
    struct scram_secret s = secret_of("pencil");
    struct scram_client cli;
    const char *why = NULL;
    char *v, msg[512];
    static const char *const bad[] = {
        "", "v=", "v=AAAA", "v=!!!!", "x=1", "v=<s>,x=y", "v=<s>,", "v=<s->", "V=<s>",
        "v=<s>\n", "e=", "e=something-else",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        client_awaiting_final(&cli, &s, &v);
        fill(msg, sizeof(msg), bad[i], "", v);
        if (cli_verify(&cli, msg, strlen(msg), &why) != SCRAM_FAIL)
            fail_msg("accepted \"%s\"", msg);
        assert_non_null(why);
        free(v);
        scram_client_free(&cli);
    }

    /* A server-final "e=" fails with its text. */
    client_awaiting_final(&cli, &s, &v);
    assert_int_equal(cli_verify(&cli, "e=invalid-proof", 15, &why), SCRAM_FAIL);
    assert_contains(why, "invalid-proof");
    free(v);
    scram_client_free(&cli);

    /* The right signature, for contrast. */
    client_awaiting_final(&cli, &s, &v);
    fill(msg, sizeof(msg), "v=<s>", "", v);
    assert_int_equal(cli_verify(&cli, msg, strlen(msg), &why), SCRAM_DONE);
    free(v);
    scram_client_free(&cli);
}

/* ---- secrets ------------------------------------------------------------ */

static void test_secret_parse(void **state)
{
    (void)state;
    struct scram_secret s;

    assert_true(scram_secret_parse(pg15_secret, &s));
    assert_int_equal(s.iterations, 4096);
    assert_int_equal(s.salt_len, 16);

    static const char *const bad[] = {
        "",
        "SCRAM-SHA-256$",
        "scram-sha-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-1$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$0:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$-1:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$4096x:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$2147483648:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$99999999999999999999:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$4096:$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w=$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$4096:Rv*SXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$4096:R=vSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QA==:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHkAAAA:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbz=",
        "SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=:",
        "SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs= ",
        "SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=",
        "SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==:OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        " SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$4096:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "md5a3556571e93b0d20722ba62be61e8c2d",
        "pw",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&s, 0xAA, sizeof(s));
        if (scram_secret_parse(bad[i], &s))
            fail_msg("accepted \"%s\"", bad[i]);
    }

    /* Salts of 1 and of 64 bytes are fine; so is 1 iteration. */
    static const char one[] =
        "SCRAM-SHA-256$1:AQ==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk="
        ":Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=";
    assert_true(scram_secret_parse(one, &s));
    assert_int_equal(s.iterations, 1);
    assert_int_equal(s.salt_len, 1);
    assert_int_equal(s.salt[0], 1);
    static const char sixty_four[] =
        "SCRAM-SHA-256$4096:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==$"
        "OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=:Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=";
    assert_true(scram_secret_parse(sixty_four, &s));
    assert_int_equal(s.salt_len, 64);
}

/* What PostgreSQL 15 stored for PASSWORD 'pw' is what scram.c derives. */
static void test_secret_pg15(void **state)
{
    (void)state;
    struct scram_secret stored, derived;

    assert_true(scram_secret_parse(pg15_secret, &stored));
    assert_true(scram_secret_from_password("pw", stored.salt, stored.salt_len, stored.iterations,
                                           &derived));
    assert_int_equal(derived.iterations, stored.iterations);
    assert_int_equal(derived.salt_len, stored.salt_len);
    assert_memory_equal(derived.salt, stored.salt, stored.salt_len);
    assert_memory_equal(derived.stored_key, stored.stored_key, SCRAM_KEY_LEN);
    assert_memory_equal(derived.server_key, stored.server_key, SCRAM_KEY_LEN);

    assert_true(scram_secret_from_password("pW", stored.salt, stored.salt_len, stored.iterations,
                                           &derived));
    assert_memory_not_equal(derived.stored_key, stored.stored_key, SCRAM_KEY_LEN);

    /* And a client with that password logs in against the stored secret. */
    struct exchange x = {
        .server_secret = stored,
        .client_secret = stored,
        .mechanisms = plain_mechanism,
        .mechanisms_len = sizeof(plain_mechanism),
    };
    client_key_for("pw", &stored, x.client_key);
    run(&x);
    assert_int_equal(x.failed_step, 0);
}

static void test_secret_from_password_bad(void **state)
{
    (void)state;
    uint8_t salt[SCRAM_SALT_MAX + 1] = {0};
    struct scram_secret s;

    assert_false(scram_secret_from_password("pw", salt, 0, 4096, &s));
    assert_false(scram_secret_from_password("pw", salt, sizeof(salt), 4096, &s));
    assert_false(scram_secret_from_password("pw", salt, 16, 0, &s));
    assert_false(scram_secret_from_password("pw", salt, 16, -1, &s));
    assert_true(scram_secret_from_password("", salt, SCRAM_SALT_MAX, 1, &s));
}

static void test_mock_secret(void **state)
{
    (void)state;
    uint8_t key[SCRAM_KEY_LEN] = {7}, other_key[SCRAM_KEY_LEN] = {8};
    struct scram_secret a, a2, b, c;

    scram_mock_secret(key, "alice", &a);
    scram_mock_secret(key, "alice", &a2);
    scram_mock_secret(key, "bob", &b);
    scram_mock_secret(other_key, "alice", &c);
    assert_int_equal(a.iterations, 4096);
    assert_int_equal(a.salt_len, 16);
    assert_memory_equal(&a, &a2, sizeof(a));
    assert_memory_not_equal(a.salt, b.salt, a.salt_len);
    assert_memory_not_equal(a.stored_key, b.stored_key, SCRAM_KEY_LEN);
    assert_memory_not_equal(a.server_key, b.server_key, SCRAM_KEY_LEN);
    assert_memory_not_equal(a.salt, c.salt, a.salt_len);
    assert_memory_not_equal(a.stored_key, c.stored_key, SCRAM_KEY_LEN);
    assert_memory_not_equal(a.stored_key, a.server_key, SCRAM_KEY_LEN);

    /* The salt is HMAC-SHA256(key, "salt:" + user), cut to 16 bytes. */
    uint8_t expected[SCRAM_KEY_LEN];
    hmac(key, "salt:alice", expected);
    assert_memory_equal(a.salt, expected, 16);

    /* An unknown user goes through the whole exchange and fails at the
     * proof, like a wrong password. */
    struct exchange x = {
        .server_secret = a,
        .client_secret = a,
        .mechanisms = plain_mechanism,
        .mechanisms_len = sizeof(plain_mechanism),
    };
    client_key_for("anything", &a, x.client_key);
    run(&x);
    assert_int_equal(x.failed_step, 3);
    assert_contains(x.why, "wrong password");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc7677_vector),
        cmocka_unit_test(test_rfc7677_server),
        cmocka_unit_test(test_round_trip_plain),
        cmocka_unit_test(test_round_trip_plus),
        cmocka_unit_test(test_downgrade),
        cmocka_unit_test(test_wrong_password),
        cmocka_unit_test(test_server_secret_differs),
        cmocka_unit_test(test_server_cannot_sign),
        cmocka_unit_test(test_tampered),
        cmocka_unit_test(test_client_first_malformed),
        cmocka_unit_test(test_mechanism_and_flag),
        cmocka_unit_test(test_client_final_malformed),
        cmocka_unit_test(test_out_of_order),
        cmocka_unit_test(test_client_choose),
        cmocka_unit_test(test_client_first),
        cmocka_unit_test(test_server_first_malformed),
        cmocka_unit_test(test_server_final_malformed),
        cmocka_unit_test(test_secret_parse),
        cmocka_unit_test(test_secret_pg15),
        cmocka_unit_test(test_secret_from_password_bad),
        cmocka_unit_test(test_mock_secret),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
