#include "login.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "pgproto.h"

enum {
    AWAIT_CLIENT_FIRST,  /* AuthenticationSASL went to the client */
    AWAIT_CLIENT_FINAL,  /* AuthenticationSASLContinue went */
    AWAIT_SERVER,        /* the client is in; the server's first request is due */
    AWAIT_SERVER_FIRST,  /* SASLInitialResponse went to the server */
    AWAIT_SERVER_FINAL,  /* SASLResponse went */
    AWAIT_SERVER_OK,     /* the server proved it knows the secret */
    FINISHED,
};

static enum login_step fail(struct login *l, const char *reason, const char **why)
{
    l->state = FINISHED;
    *why = reason;
    return LOGIN_FAIL;
}

void login_start(struct login *l, const struct scram_secret *secret, const char *user,
                 const uint8_t mock_key[SCRAM_KEY_LEN], bool client_tls,
                 const uint8_t *cb_data, size_t cb_len, uint8_t out[LOGIN_MSG_MAX],
                 size_t *out_len)
{
    static const char plain[] = SCRAM_MECHANISM "\0";
    static const char both[] = SCRAM_MECHANISM_PLUS "\0" SCRAM_MECHANISM "\0";
    bool plus = client_tls && cb_len > 0;

    memset(l, 0, sizeof(*l));
    l->known = secret != NULL;
    if (secret)
        l->secret = *secret;
    else
        scram_mock_secret(mock_key, user, &l->secret);
    scram_server_init(&l->with_client, &l->secret, plus, plus ? cb_data : NULL, plus ? cb_len : 0);
    /* The list ends with an empty name; PostgreSQL offers PLUS first. */
    *out_len = plus ? pg_build_auth(out, LOGIN_MSG_MAX, PG_AUTH_SASL, both, sizeof(both))
                    : pg_build_auth(out, LOGIN_MSG_MAX, PG_AUTH_SASL, plain, sizeof(plain));
    l->state = AWAIT_CLIENT_FIRST;
}

/* Writes msg, the reply of a SCRAM step, as a message of the given code. */
static bool reply(uint32_t code, char *msg, uint8_t out[LOGIN_MSG_MAX], size_t *out_len)
{
    size_t need = pg_build_auth(out, LOGIN_MSG_MAX, code, msg, strlen(msg));

    free(msg);
    *out_len = need;
    return need <= LOGIN_MSG_MAX;
}

enum login_step login_client_msg(struct login *l, const uint8_t *body, size_t len,
                                 uint8_t out[LOGIN_MSG_MAX], size_t *out_len,
                                 const char **why)
{
    char *msg = NULL;
    enum scram_status st;

    switch (l->state) {
    case AWAIT_CLIENT_FIRST: {
        const char *mechanism;
        const uint8_t *data;
        size_t data_len;
        if (!pg_sasl_initial(body, len, &mechanism, &data, &data_len) || !data)
            return fail(l, "malformed SASLInitialResponse", why);
        st = scram_server_first(&l->with_client, mechanism, (const char *)data, data_len, &msg,
                                why);
        if (st != SCRAM_CONTINUE) {
            free(msg);
            l->state = FINISHED;
            return LOGIN_FAIL;
        }
        if (!reply(PG_AUTH_SASL_CONTINUE, msg, out, out_len))
            return fail(l, "SCRAM message too long", why);
        l->state = AWAIT_CLIENT_FINAL;
        return LOGIN_SEND;
    }
    case AWAIT_CLIENT_FINAL:
        st = scram_server_final(&l->with_client, (const char *)body, len, &msg, why);
        /* A mock secret can never be proven; the client hears the same
         * failure as for a wrong password, the log the truth. */
        if (st != SCRAM_DONE || !l->known) {
            free(msg);
            if (!l->known)
                *why = "no such user (neither auth_file nor auth_query knows it)";
            l->state = FINISHED;
            return LOGIN_FAIL;
        }
        if (!reply(PG_AUTH_SASL_FINAL, msg, out, out_len))
            return fail(l, "SCRAM message too long", why);
        l->state = AWAIT_SERVER;
        return LOGIN_CLIENT_OK;
    default:
        return fail(l, "unexpected message from the client during authentication", why);
    }
}

/* Why the proxy cannot answer a request for a password it never holds. */
static const char *unanswerable(uint32_t code)
{
    switch (code) {
    case PG_AUTH_CLEARTEXT:
        return "the server asks for a clear-text password, which idemproxy never holds: "
               "make pg_hba.conf use scram-sha-256 (or trust) for idemproxy's connections";
    case PG_AUTH_MD5:
        return "the server asks for md5, which needs the password idemproxy never holds: "
               "make pg_hba.conf use scram-sha-256 (or trust) for idemproxy's connections";
    default:
        return "the server asks for an authentication method idemproxy does not speak: "
               "make pg_hba.conf use scram-sha-256 (or trust) for idemproxy's connections";
    }
}

/* The server asks for the first SCRAM message. */
static enum login_step server_sasl(struct login *l, const uint8_t *data, size_t data_len,
                                   bool server_tls, const uint8_t *cb_data, size_t cb_len,
                                   uint8_t out[LOGIN_MSG_MAX], size_t *out_len, const char **why)
{
    const char *mechanism = scram_client_choose((const char *)data, data_len, server_tls);
    char *msg = NULL;

    if (!mechanism)
        return fail(l, "the server offers no SCRAM-SHA-256", why);
    if (!scram_client_init(&l->with_server, l->with_client.client_key, &l->secret, mechanism,
                           server_tls, cb_data, cb_len, &msg))
        return fail(l, cb_len == 0 && server_tls
                           ? "the server offers channel binding, but its certificate's hash "
                             "could not be had"
                           : "cannot start SCRAM with the server",
                    why);
    *out_len = pg_build_sasl_initial(out, LOGIN_MSG_MAX, mechanism, msg, strlen(msg));
    free(msg);
    if (*out_len > LOGIN_MSG_MAX)
        return fail(l, "SCRAM message too long", why);
    l->state = AWAIT_SERVER_FIRST;
    return LOGIN_SERVER_SEND;
}

enum login_step login_server_msg(struct login *l, const uint8_t *body, size_t len,
                                 bool server_tls, const uint8_t *cb_data, size_t cb_len,
                                 uint8_t out[LOGIN_MSG_MAX], size_t *out_len,
                                 const char **why)
{
    uint32_t code;
    const uint8_t *data;
    size_t data_len;
    char *msg = NULL;

    if (!pg_auth_request(body, len, &code, &data, &data_len))
        return fail(l, "malformed authentication request from the server", why);
    switch (code) {
    case PG_AUTH_OK:
        /* Trust, or the end of SCRAM; never before the server proved
         * itself once SCRAM began. */
        if (l->state != AWAIT_SERVER && l->state != AWAIT_SERVER_OK)
            return fail(l, "the server ended SCRAM before proving it knows the secret", why);
        l->state = FINISHED;
        return LOGIN_SERVER_OK;
    case PG_AUTH_SASL:
        if (l->state != AWAIT_SERVER)
            break;
        return server_sasl(l, data, data_len, server_tls, cb_data, cb_len, out, out_len, why);
    case PG_AUTH_SASL_CONTINUE:
        if (l->state != AWAIT_SERVER_FIRST)
            break;
        if (scram_client_final(&l->with_server, (const char *)data, data_len, &msg, why) !=
            SCRAM_CONTINUE) {
            free(msg);
            l->state = FINISHED;
            return LOGIN_FAIL;
        }
        *out_len = pg_build_sasl_response(out, LOGIN_MSG_MAX, msg, strlen(msg));
        free(msg);
        if (*out_len > LOGIN_MSG_MAX)
            return fail(l, "SCRAM message too long", why);
        l->state = AWAIT_SERVER_FINAL;
        return LOGIN_SERVER_SEND;
    case PG_AUTH_SASL_FINAL:
        if (l->state != AWAIT_SERVER_FINAL)
            break;
        if (scram_client_verify(&l->with_server, (const char *)data, data_len, why) !=
            SCRAM_DONE) {
            l->state = FINISHED;
            return LOGIN_FAIL;
        }
        l->state = AWAIT_SERVER_OK;
        return LOGIN_WAIT;
    default:
        /* The proxy holds no password to answer with. */
        return fail(l, unanswerable(code), why);
    }
    return fail(l, "unexpected authentication request from the server", why);
}

size_t login_relayable_mechanisms(const uint8_t *data, size_t len, uint8_t out[LOGIN_MSG_MAX])
{
    char kept[LOGIN_MSG_MAX];
    size_t at = 0, k = 0;
    bool dropped = false;

    /* NUL-terminated names, then an empty one. */
    while (at < len && data[at] != '\0') {
        const uint8_t *end = memchr(data + at, '\0', len - at);
        if (!end)
            return 0;
        size_t n = (size_t)(end - (data + at)) + 1;
        if (strcmp((const char *)data + at, SCRAM_MECHANISM_PLUS) == 0) {
            dropped = true;
        } else {
            if (k + n + 1 > sizeof(kept))
                return 0;
            memcpy(kept + k, data + at, n);
            k += n;
        }
        at += n;
    }
    if (!dropped || at >= len)
        return 0;
    kept[k++] = '\0';
    size_t need = pg_build_auth(out, LOGIN_MSG_MAX, PG_AUTH_SASL, kept, k);
    return need <= LOGIN_MSG_MAX ? need : 0;
}

void login_free(struct login *l)
{
    scram_server_free(&l->with_client);
    scram_client_free(&l->with_server);
    OPENSSL_cleanse(&l->secret, sizeof(l->secret));
}
