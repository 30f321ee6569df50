#include "scram.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#define SECRET_PREFIX "SCRAM-SHA-256$"
#define CBIND_NAME "tls-server-end-point"
#define GS2_PLUS "p=" CBIND_NAME ",,"

/* PostgreSQL's nonces are 18 random bytes in base64: 24 characters. */
#define RAW_NONCE_LEN 18
/* The mock salt is as long as the salt PostgreSQL generates. */
#define MOCK_SALT_LEN 16
#define DEFAULT_ITERATIONS 4096

/* Where each side stands. A failed exchange stays failed. */
enum { STEP_FIRST, STEP_FINAL, STEP_DONE, STEP_FAILED };

/* ---- primitives -------------------------------------------------------- */

static bool hmac(const uint8_t key[SCRAM_KEY_LEN], const void *data, size_t len,
                 uint8_t out[SCRAM_KEY_LEN])
{
    unsigned out_len = 0;

    return HMAC(EVP_sha256(), key, SCRAM_KEY_LEN, data, len, out, &out_len) &&
           out_len == SCRAM_KEY_LEN;
}

static bool sha256(const uint8_t in[SCRAM_KEY_LEN], uint8_t out[SCRAM_KEY_LEN])
{
    unsigned out_len = 0;

    return EVP_Digest(in, SCRAM_KEY_LEN, out, &out_len, EVP_sha256(), NULL) &&
           out_len == SCRAM_KEY_LEN;
}

static char *concat(const char *first, ...) __attribute__((sentinel));

/* The strings given, up to a NULL, joined in a fresh string. */
static char *concat(const char *first, ...)
{
    va_list ap;
    size_t len = 0;

    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *))
        len += strlen(s);
    va_end(ap);

    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    char *end = out;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *)) {
        size_t n = strlen(s);
        memcpy(end, s, n);
        end += n;
    }
    va_end(ap);
    *end = '\0';
    return out;
}

static char *b64_encode(const uint8_t *data, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);

    if (out)
        EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

static bool is_b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

/* Decodes exactly what base64 can be and nothing else: EVP_DecodeBlock
 * skips blanks, says nothing of misplaced '=' and counts the padding in its
 * length. The result must be from 1 to max bytes. */
static bool b64_decode(const char *text, size_t len, uint8_t *out, size_t max,
                       size_t *out_len)
{
    /* A salt is the longest thing decoded; DecodeBlock writes its padding
     * as bytes too, hence room for two more. */
    uint8_t buf[SCRAM_SALT_MAX + 2];
    size_t pad = 0;

    if (len == 0 || len % 4 != 0 || len / 4 * 3 > sizeof(buf))
        return false;
    while (pad < 2 && text[len - 1 - pad] == '=')
        pad++;
    for (size_t i = 0; i < len - pad; i++)
        if (!is_b64_char(text[i]))
            return false;
    size_t n = len / 4 * 3 - pad;
    if (n > max || EVP_DecodeBlock(buf, (const unsigned char *)text, (int)len) < 0) {
        OPENSSL_cleanse(buf, sizeof(buf));
        return false;
    }
    memcpy(out, buf, n);
    OPENSSL_cleanse(buf, sizeof(buf));
    *out_len = n;
    return true;
}

/* A decimal number from 1 to INT_MAX, digits only. */
static bool parse_count(const char *text, size_t len, int *out)
{
    long long n = 0;

    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return false;
        n = n * 10 + (text[i] - '0');
        if (n > INT_MAX)
            return false;
    }
    if (n == 0)
        return false;
    *out = (int)n;
    return true;
}

/* RFC 5802's "printable": ASCII from '!' to '~' except ','. */
static bool is_printable(const char *s)
{
    for (; *s; s++)
        if (*s < 0x21 || *s > 0x7E || *s == ',')
            return false;
    return true;
}

static char *new_nonce(void)
{
    uint8_t raw[RAW_NONCE_LEN];

    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return NULL;
    return b64_encode(raw, sizeof(raw));
}

/* A peer's message as a string to parse; NULL when empty or holding a NUL,
 * which no SCRAM message can. */
static char *message_copy(const char *msg, size_t len)
{
    if (len == 0 || memchr(msg, '\0', len))
        return NULL;
    return strndup(msg, len);
}

/* ---- secrets ----------------------------------------------------------- */

bool scram_secret_parse(const char *text, struct scram_secret *out)
{
    static const size_t prefix_len = sizeof(SECRET_PREFIX) - 1;
    struct scram_secret s = {0};
    size_t key_len;
    bool ok = false;

    memset(out, 0, sizeof(*out));
    if (strncmp(text, SECRET_PREFIX, prefix_len) != 0)
        return false;
    const char *iter = text + prefix_len;
    const char *salt = strchr(iter, ':');
    const char *stored = salt ? strchr(salt + 1, '$') : NULL;
    const char *server = stored ? strchr(stored + 1, ':') : NULL;
    if (server && parse_count(iter, (size_t)(salt - iter), &s.iterations) &&
        b64_decode(salt + 1, (size_t)(stored - salt - 1), s.salt, SCRAM_SALT_MAX, &s.salt_len) &&
        b64_decode(stored + 1, (size_t)(server - stored - 1), s.stored_key, SCRAM_KEY_LEN,
                   &key_len) &&
        key_len == SCRAM_KEY_LEN &&
        b64_decode(server + 1, strlen(server + 1), s.server_key, SCRAM_KEY_LEN, &key_len) &&
        key_len == SCRAM_KEY_LEN) {
        *out = s;
        ok = true;
    }
    OPENSSL_cleanse(&s, sizeof(s));
    return ok;
}

bool scram_secret_from_password(const char *password, const uint8_t *salt, size_t salt_len,
                                int iterations, struct scram_secret *out)
{
    static const char client_key_name[] = "Client Key";
    static const char server_key_name[] = "Server Key";
    uint8_t salted[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN];
    bool ok;

    memset(out, 0, sizeof(*out));
    if (salt_len == 0 || salt_len > SCRAM_SALT_MAX || iterations <= 0)
        return false;
    ok = PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)salt_len, iterations,
                           EVP_sha256(), SCRAM_KEY_LEN, salted) == 1 &&
         hmac(salted, client_key_name, strlen(client_key_name), client_key) &&
         sha256(client_key, out->stored_key) &&
         hmac(salted, server_key_name, strlen(server_key_name), out->server_key);
    OPENSSL_cleanse(salted, sizeof(salted));
    OPENSSL_cleanse(client_key, sizeof(client_key));
    if (!ok) {
        OPENSSL_cleanse(out, sizeof(*out));
        return false;
    }
    out->iterations = iterations;
    memcpy(out->salt, salt, salt_len);
    out->salt_len = salt_len;
    return true;
}

/* HMAC(key, label + user): each part of a mock secret has its own label. */
static void mock_part(const uint8_t key[SCRAM_KEY_LEN], const char *label, const char *user,
                      uint8_t out[SCRAM_KEY_LEN])
{
    char *text = concat(label, user, NULL);

    /* Without memory or a working HMAC, random bytes fail just as well;
     * only the sameness from one attempt to the next is lost. */
    if (!text || !hmac(key, text, strlen(text), out))
        RAND_bytes(out, SCRAM_KEY_LEN);
    free(text);
}

void scram_mock_secret(const uint8_t key[SCRAM_KEY_LEN], const char *user,
                       struct scram_secret *out)
{
    uint8_t salt[SCRAM_KEY_LEN];

    memset(out, 0, sizeof(*out));
    mock_part(key, "salt:", user, salt);
    memcpy(out->salt, salt, MOCK_SALT_LEN);
    out->salt_len = MOCK_SALT_LEN;
    out->iterations = DEFAULT_ITERATIONS;
    mock_part(key, "stored:", user, out->stored_key);
    mock_part(key, "server:", user, out->server_key);
}

/* ---- messages ---------------------------------------------------------- */

/* Takes "X=value" from *p when X is attr, cutting it at the next ',' and
 * moving *p past it. NULL when the next attribute is another, or when a
 * comma ends the message: no attribute follows it. */
static char *take_attr(char **p, char attr)
{
    if ((*p)[0] != attr || (*p)[1] != '=')
        return NULL;
    char *value = *p + 2;
    char *comma = strchr(value, ',');
    if (comma && comma[1] == '\0')
        return NULL;
    if (comma) {
        *comma = '\0';
        *p = comma + 1;
    } else {
        *p = value + strlen(value);
    }
    return value;
}

/* Takes any attribute (ALPHA "=" value), as take_attr does. */
static char *take_any_attr(char **p, char *attr)
{
    char c = **p;

    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
        return NULL;
    *attr = c;
    return take_attr(p, c);
}

/* The c= of a client-final-message: the gs2 header, and for PLUS the
 * binding data after it, in base64. */
static char *cbind_input(const char *gs2_header, const uint8_t *cb_data, size_t cb_len)
{
    size_t header_len = strlen(gs2_header);
    uint8_t *raw = malloc(header_len + cb_len);

    if (!raw)
        return NULL;
    memcpy(raw, gs2_header, header_len);
    if (cb_len > 0)
        memcpy(raw + header_len, cb_data, cb_len);
    char *b64 = b64_encode(raw, header_len + cb_len);
    free(raw);
    return b64;
}

/* HMAC(key, AuthMessage): the client's and the server's signature. */
static bool sign(const uint8_t key[SCRAM_KEY_LEN], const char *client_first_bare,
                 const char *server_first, const char *client_final_without_proof,
                 uint8_t out[SCRAM_KEY_LEN])
{
    char *auth_message =
        concat(client_first_bare, ",", server_first, ",", client_final_without_proof,
               NULL);

    if (!auth_message)
        return false;
    bool ok = hmac(key, auth_message, strlen(auth_message), out);
    free(auth_message);
    return ok;
}

/* ---- the server side --------------------------------------------------- */

void scram_server_init(struct scram_server *s, const struct scram_secret *secret,
                       bool plus_offered, const uint8_t *cb_data, size_t cb_len)
{
    memset(s, 0, sizeof(*s));
    s->state = STEP_FIRST;
    s->secret = *secret;
    s->plus_offered = plus_offered;
    /* Binding data that does not fit is no binding data: PLUS then fails. */
    if (cb_data && cb_len > 0 && cb_len <= SCRAM_CB_MAX) {
        memcpy(s->cb_data, cb_data, cb_len);
        s->cb_len = cb_len;
    }
}

static enum scram_status server_fail(struct scram_server *s, char *copy, const char *reason,
                                     const char **why)
{
    free(copy);
    s->state = STEP_FAILED;
    *why = reason;
    return SCRAM_FAIL;
}

/* Reads the gs2 header at the start of msg against the mechanism chosen;
 * on success *end is where client-first-message-bare starts. */
static const char *check_gs2_header(const struct scram_server *s, char *msg, char **end)
{
    char *p;

    switch (msg[0]) {
    case 'n':
    case 'y':
        if (s->plus)
            return "the client chose SCRAM-SHA-256-PLUS but sent no channel binding";
        if (msg[0] == 'y' && s->plus_offered)
            return "the client can bind the channel but thinks the server cannot: "
                   "SCRAM-SHA-256-PLUS was offered, so this is a downgrade";
        if (msg[1] != ',')
            return "malformed client-first-message (gs2 header)";
        p = msg + 2;
        break;
    case 'p':
        if (!s->plus)
            return "the client chose SCRAM-SHA-256 but sent channel binding";
        if (strncmp(msg, "p=" CBIND_NAME ",", strlen("p=" CBIND_NAME ",")) != 0)
            return "unsupported channel binding type; expected " CBIND_NAME;
        p = msg + strlen("p=" CBIND_NAME ",");
        break;
    default:
        return "malformed client-first-message (channel binding flag)";
    }
    if (*p == 'a')
        return "the client uses an authorization identity, which is not supported";
    if (*p != ',')
        return "malformed client-first-message (gs2 header)";
    *end = p + 1;
    return NULL;
}

enum scram_status scram_server_first(struct scram_server *s, const char *mechanism,
                                     const char *msg, size_t len, char **out,
                                     const char **why)
{
    *out = NULL;
    if (s->state != STEP_FIRST)
        return server_fail(s, NULL, "client-first-message out of order", why);
    if (strcmp(mechanism, SCRAM_MECHANISM_PLUS) == 0) {
        if (!s->plus_offered || s->cb_len == 0)
            return server_fail(s, NULL, "the client chose SCRAM-SHA-256-PLUS, "
                                        "which was not offered or has no binding data", why);
        s->plus = true;
    } else if (strcmp(mechanism, SCRAM_MECHANISM) != 0) {
        return server_fail(s, NULL, "the client chose an unknown SASL mechanism", why);
    }

    char *copy = message_copy(msg, len);
    if (!copy)
        return server_fail(s, NULL, "malformed client-first-message (empty or with a NUL)", why);
    char *p;
    const char *reason = check_gs2_header(s, copy, &p);
    if (reason)
        return server_fail(s, copy, reason, why);
    s->gs2_header = strndup(copy, (size_t)(p - copy));
    s->client_first_bare = strdup(p);
    if (!s->gs2_header || !s->client_first_bare)
        return server_fail(s, copy, "out of memory", why);

    /* PostgreSQL takes the user name from the startup packet: n= is read
     * and ignored. */
    if (*p == 'm')
        return server_fail(s, copy, "the client requires an unsupported SCRAM extension", why);
    if (!take_attr(&p, 'n'))
        return server_fail(s, copy, "malformed client-first-message (n= expected)", why);
    char *client_nonce = take_attr(&p, 'r');
    if (!client_nonce || !*client_nonce || !is_printable(client_nonce))
        return server_fail(s, copy, "malformed client-first-message (bad nonce)", why);
    /* Optional extensions, none of which is understood. */
    char attr;
    while (*p)
        if (!take_any_attr(&p, &attr))
            return server_fail(s, copy, "malformed client-first-message (extension)", why);

    char *server_nonce = new_nonce();
    char *salt = b64_encode(s->secret.salt, s->secret.salt_len);
    char iterations[16];
    snprintf(iterations, sizeof(iterations), "%d", s->secret.iterations);
    if (server_nonce)
        s->nonce = concat(client_nonce, server_nonce, NULL);
    if (s->nonce && salt)
        s->server_first = concat("r=", s->nonce, ",s=", salt, ",i=", iterations,
                                 NULL);
    free(server_nonce);
    free(salt);
    if (!s->server_first || !(*out = strdup(s->server_first)))
        return server_fail(s, copy, "out of memory or no random numbers", why);
    free(copy);
    s->state = STEP_FINAL;
    return SCRAM_CONTINUE;
}

/* Checks the proof against StoredKey and keeps the ClientKey it reveals. */
static bool check_proof(struct scram_server *s, const uint8_t proof[SCRAM_KEY_LEN],
                        const char *without_proof)
{
    uint8_t signature[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN], stored_key[SCRAM_KEY_LEN];

    if (!sign(s->secret.stored_key, s->client_first_bare, s->server_first, without_proof,
              signature))
        return false;
    for (size_t i = 0; i < SCRAM_KEY_LEN; i++)
        client_key[i] = proof[i] ^ signature[i];
    bool ok = sha256(client_key, stored_key) &&
              CRYPTO_memcmp(stored_key, s->secret.stored_key, SCRAM_KEY_LEN) == 0;
    if (ok)
        memcpy(s->client_key, client_key, SCRAM_KEY_LEN);
    OPENSSL_cleanse(client_key, sizeof(client_key));
    OPENSSL_cleanse(signature, sizeof(signature));
    return ok;
}

/* Reads the client-final-message (in copy, which it cuts up): its c=, its
 * nonce and its proof. *signed_len is the length of the part the proof
 * signs, up to the comma before p=. NULL when all is well, else why not. */
static const char *read_client_final(const struct scram_server *s, char *copy,
                                     size_t *signed_len, uint8_t proof[SCRAM_KEY_LEN])
{
    char *p = copy;
    char *cbind = take_attr(&p, 'c');
    if (!cbind)
        return "malformed client-final-message (c= expected)";
    char *expected = cbind_input(s->gs2_header, s->cb_data, s->plus ? s->cb_len : 0);
    if (!expected)
        return "out of memory";
    bool bound = strlen(cbind) == strlen(expected) &&
                 CRYPTO_memcmp(cbind, expected, strlen(expected)) == 0;
    free(expected);
    if (!bound)
        return s->plus ? "channel binding check failed" : "c= does not repeat the gs2 header";
    char *nonce = take_attr(&p, 'r');
    if (!nonce)
        return "malformed client-final-message (r= expected)";
    if (strcmp(nonce, s->nonce) != 0)
        return "the nonce does not match";
    /* Extensions before the proof are ignored, as PostgreSQL does. */
    char *proof_at, *value, attr;
    do {
        proof_at = p;
        value = take_any_attr(&p, &attr);
        if (!value)
            return "malformed client-final-message (p= expected)";
    } while (attr != 'p');
    size_t proof_len;
    if (*p || !b64_decode(value, strlen(value), proof, SCRAM_KEY_LEN, &proof_len) ||
        proof_len != SCRAM_KEY_LEN)
        return "malformed client-final-message (proof)";
    *signed_len = (size_t)(proof_at - copy - 1);
    return NULL;
}

enum scram_status scram_server_final(struct scram_server *s, const char *msg, size_t len,
                                     char **out, const char **why)
{
    uint8_t proof[SCRAM_KEY_LEN], signature[SCRAM_KEY_LEN];
    size_t signed_len;

    *out = NULL;
    if (s->state != STEP_FINAL)
        return server_fail(s, NULL, "client-final-message out of order", why);
    char *copy = message_copy(msg, len);
    if (!copy)
        return server_fail(s, NULL, "malformed client-final-message (empty or with a NUL)", why);
    const char *reason = read_client_final(s, copy, &signed_len, proof);
    if (reason)
        return server_fail(s, copy, reason, why);
    free(copy);

    char *without_proof = strndup(msg, signed_len);
    if (!without_proof)
        return server_fail(s, NULL, "out of memory", why);
    bool proven = check_proof(s, proof, without_proof);
    bool signed_ok = proven && sign(s->secret.server_key, s->client_first_bare, s->server_first,
                                    without_proof, signature);
    free(without_proof);
    if (!proven)
        return server_fail(s, NULL, "wrong password (the proof does not match)", why);
    char *b64 = signed_ok ? b64_encode(signature, sizeof(signature)) : NULL;
    *out = b64 ? concat("v=", b64, NULL) : NULL;
    free(b64);
    if (!*out) {
        OPENSSL_cleanse(s->client_key, sizeof(s->client_key));
        return server_fail(s, NULL, "out of memory", why);
    }
    s->state = STEP_DONE;
    return SCRAM_DONE;
}

void scram_server_free(struct scram_server *s)
{
    free(s->gs2_header);
    free(s->client_first_bare);
    free(s->server_first);
    free(s->nonce);
    OPENSSL_cleanse(s, sizeof(*s));
}

/* ---- the client side --------------------------------------------------- */

const char *scram_client_choose(const char *mechanisms, size_t len, bool tls)
{
    bool plain = false, plus = false;
    const char *p = mechanisms, *end = mechanisms + len;

    while (p < end && *p) {
        const char *nul = memchr(p, '\0', (size_t)(end - p));
        size_t n = nul ? (size_t)(nul - p) : (size_t)(end - p);
        if (n == strlen(SCRAM_MECHANISM) && memcmp(p, SCRAM_MECHANISM, n) == 0)
            plain = true;
        else if (n == strlen(SCRAM_MECHANISM_PLUS) && memcmp(p, SCRAM_MECHANISM_PLUS, n) == 0)
            plus = true;
        p += n + 1;
    }
    if (tls && plus)
        return SCRAM_MECHANISM_PLUS;
    return plain ? SCRAM_MECHANISM : NULL;
}

bool scram_client_init(struct scram_client *c, const uint8_t client_key[SCRAM_KEY_LEN],
                       const struct scram_secret *secret, const char *mechanism, bool tls,
                       const uint8_t *cb_data, size_t cb_len, char **out)
{
    const char *header;

    memset(c, 0, sizeof(*c));
    *out = NULL;
    c->state = STEP_FAILED;
    if (strcmp(mechanism, SCRAM_MECHANISM_PLUS) == 0) {
        if (!cb_data || cb_len == 0 || cb_len > SCRAM_CB_MAX)
            return false;
        memcpy(c->cb_data, cb_data, cb_len);
        c->cb_len = cb_len;
        header = GS2_PLUS;
    } else if (strcmp(mechanism, SCRAM_MECHANISM) == 0) {
        /* On TLS, "y" tells a server that offered PLUS that the offer was
         * lost on the way: it then refuses, as it should. */
        header = tls ? "y,," : "n,,";
    } else {
        return false;
    }
    memcpy(c->client_key, client_key, SCRAM_KEY_LEN);
    c->secret = *secret;
    c->gs2_header = strdup(header);
    c->nonce = new_nonce();
    if (c->nonce)
        c->client_first_bare = concat("n=,r=", c->nonce, NULL);
    if (c->gs2_header && c->client_first_bare)
        *out = concat(c->gs2_header, c->client_first_bare, NULL);
    if (!*out)
        return false;
    c->state = STEP_FIRST;
    return true;
}

static enum scram_status client_fail(struct scram_client *c, char *copy, const char *reason,
                                     const char **why)
{
    free(copy);
    c->state = STEP_FAILED;
    *why = reason;
    return SCRAM_FAIL;
}

/* The proof for the ClientKey given: ClientKey XOR ClientSignature. Also
 * keeps the ServerSignature the server must answer with. */
static bool client_prove(struct scram_client *c, const char *server_first,
                         const char *without_proof, uint8_t proof[SCRAM_KEY_LEN])
{
    uint8_t signature[SCRAM_KEY_LEN];

    if (!sign(c->secret.stored_key, c->client_first_bare, server_first, without_proof,
              signature) ||
        !sign(c->secret.server_key, c->client_first_bare, server_first, without_proof,
              c->server_signature))
        return false;
    for (size_t i = 0; i < SCRAM_KEY_LEN; i++)
        proof[i] = c->client_key[i] ^ signature[i];
    OPENSSL_cleanse(signature, sizeof(signature));
    return true;
}

/* Builds the client-final-message for server_first, whose nonce, salt and
 * iterations have been checked. */
static char *client_final_message(struct scram_client *c, const char *server_first,
                                  const char *nonce)
{
    char *cbind = cbind_input(c->gs2_header, c->cb_data, c->cb_len);
    char *without_proof = cbind ? concat("c=", cbind, ",r=", nonce, NULL) : NULL;
    uint8_t proof[SCRAM_KEY_LEN];
    char *proof_b64 = NULL, *out = NULL;

    if (without_proof && client_prove(c, server_first, without_proof, proof))
        proof_b64 = b64_encode(proof, sizeof(proof));
    if (proof_b64)
        out = concat(without_proof, ",p=", proof_b64, NULL);
    OPENSSL_cleanse(proof, sizeof(proof));
    free(proof_b64);
    free(without_proof);
    free(cbind);
    return out;
}

enum scram_status scram_client_final(struct scram_client *c, const char *msg, size_t len,
                                     char **out, const char **why)
{
    *out = NULL;
    if (c->state != STEP_FIRST)
        return client_fail(c, NULL, "server-first-message out of order", why);
    char *copy = message_copy(msg, len);
    if (!copy)
        return client_fail(c, NULL, "malformed server-first-message (empty or with a NUL)", why);

    char *p = copy;
    char *nonce = take_attr(&p, 'r');
    size_t ours = strlen(c->nonce);
    if (!nonce || strlen(nonce) <= ours || strncmp(nonce, c->nonce, ours) != 0 ||
        !is_printable(nonce))
        return client_fail(c, copy, "the server's nonce does not extend idemproxy's", why);
    char *salt_b64 = take_attr(&p, 's');
    uint8_t salt[SCRAM_SALT_MAX];
    size_t salt_len;
    if (!salt_b64 || !b64_decode(salt_b64, strlen(salt_b64), salt, sizeof(salt), &salt_len))
        return client_fail(c, copy, "malformed server-first-message (salt)", why);
    char *iterations_text = take_attr(&p, 'i');
    int iterations;
    if (!iterations_text || !parse_count(iterations_text, strlen(iterations_text), &iterations))
        return client_fail(c, copy, "malformed server-first-message (iteration count)", why);
    if (*p)
        return client_fail(c, copy, "malformed server-first-message (trailing data)", why);
    /* The ClientKey proves only the password of the secret it was checked
     * against; a server that salts differently holds another secret. */
    if (iterations != c->secret.iterations || salt_len != c->secret.salt_len ||
        memcmp(salt, c->secret.salt, salt_len) != 0)
        return client_fail(c, copy, "the server's SCRAM secret for this user differs from "
                                    "idemproxy's (another salt or iteration count): "
                                    "was the password changed?", why);

    /* The server-first-message goes into the AuthMessage as it came. */
    char *server_first = strndup(msg, len);
    if (server_first)
        *out = client_final_message(c, server_first, nonce);
    free(server_first);
    if (!*out)
        return client_fail(c, copy, "out of memory", why);
    free(copy);
    c->state = STEP_FINAL;
    return SCRAM_CONTINUE;
}

/* RFC 5802's server-error-values, to report what a server-final "e=" says
 * without logging whatever else a server might send. */
static const char *server_error(const char *value)
{
    static const char *const known[][2] = {
        {"invalid-encoding", "the server says: invalid-encoding"},
        {"extensions-not-supported", "the server says: extensions-not-supported"},
        {"invalid-proof", "the server says: invalid-proof (wrong password)"},
        {"channel-bindings-dont-match", "the server says: channel-bindings-dont-match"},
        {"server-does-support-channel-binding",
         "the server says: server-does-support-channel-binding"},
        {"channel-binding-not-supported", "the server says: channel-binding-not-supported"},
        {"unsupported-channel-binding-type", "the server says: unsupported-channel-binding-type"},
        {"unknown-user", "the server says: unknown-user"},
        {"invalid-username-encoding", "the server says: invalid-username-encoding"},
        {"no-resources", "the server says: no-resources"},
        {"other-error", "the server says: other-error"},
    };

    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(value, known[i][0]) == 0)
            return known[i][1];
    return "the server ended SCRAM with an error RFC 5802 does not name";
}

enum scram_status scram_client_verify(struct scram_client *c, const char *msg, size_t len,
                                      const char **why)
{
    if (c->state != STEP_FINAL)
        return client_fail(c, NULL, "server-final-message out of order", why);
    char *copy = message_copy(msg, len);
    if (!copy)
        return client_fail(c, NULL, "malformed server-final-message (empty or with a NUL)", why);

    char *p = copy;
    char *error = take_attr(&p, 'e');
    if (error)
        return client_fail(c, copy, server_error(error), why);
    char *verifier = take_attr(&p, 'v');
    uint8_t signature[SCRAM_KEY_LEN];
    size_t signature_len;
    if (!verifier || *p ||
        !b64_decode(verifier, strlen(verifier), signature, sizeof(signature), &signature_len) ||
        signature_len != SCRAM_KEY_LEN)
        return client_fail(c, copy, "malformed server-final-message", why);
    free(copy);
    if (CRYPTO_memcmp(signature, c->server_signature, SCRAM_KEY_LEN) != 0)
        return client_fail(c, NULL, "the server's signature is wrong: "
                                    "it does not know the secret", why);
    c->state = STEP_DONE;
    return SCRAM_DONE;
}

void scram_client_free(struct scram_client *c)
{
    free(c->gs2_header);
    free(c->client_first_bare);
    free(c->nonce);
    OPENSSL_cleanse(c, sizeof(*c));
}
