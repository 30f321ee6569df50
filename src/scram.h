/*
 * scram: SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, from
 * both ends. As a server, the proxy checks a client's proof against a stored
 * secret and so learns the client's ClientKey; as a client, it logs in to
 * PostgreSQL with that ClientKey, without ever knowing the password (as
 * PgBouncer does). Channel binding is tls-server-end-point: the binding data
 * is the hash of the server's certificate (tls_server_end_point in tls.h).
 *
 * Every primitive is OpenSSL's: HMAC, SHA-256, PBKDF2, RAND_bytes for the
 * nonces, CRYPTO_memcmp for every comparison of secrets. No I/O.
 */
#ifndef IDEM_SCRAM_H
#define IDEM_SCRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SCRAM_KEY_LEN 32 /* SHA-256 */
#define SCRAM_SALT_MAX 64
#define SCRAM_CB_MAX 64  /* the longest certificate hash (SHA-512) */

#define SCRAM_MECHANISM "SCRAM-SHA-256"
#define SCRAM_MECHANISM_PLUS "SCRAM-SHA-256-PLUS"

/* A stored secret as pg_authid.rolpassword holds it:
 *   SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey> */
struct scram_secret {
    int iterations;
    uint8_t salt[SCRAM_SALT_MAX];
    size_t salt_len;
    uint8_t stored_key[SCRAM_KEY_LEN];
    uint8_t server_key[SCRAM_KEY_LEN];
};

/* Parses text; false when it is not such a secret. */
bool scram_secret_parse(const char *text, struct scram_secret *out);

/* The secret PostgreSQL would store for password (SASLprep is not applied:
 * ASCII passwords are what it changes nothing for). For tests and tools. */
bool scram_secret_from_password(const char *password, const uint8_t *salt, size_t salt_len,
                                int iterations, struct scram_secret *out);

/* A secret for a user that does not exist, the same every time for the same
 * name (derived from key, a random value the caller keeps for the process),
 * so that an unknown user goes through the whole exchange and fails like a
 * wrong password, telling nothing about which users exist. */
void scram_mock_secret(const uint8_t key[SCRAM_KEY_LEN], const char *user,
                       struct scram_secret *out);

enum scram_status {
    SCRAM_CONTINUE, /* send *out, wait for the peer's next message */
    SCRAM_DONE,     /* send *out (if any); the exchange succeeded */
    SCRAM_FAIL,     /* the exchange failed: *why says why, for the log */
};

/* ---- the proxy as the server a client logs in to ---------------------- */

struct scram_server {
    int state;
    struct scram_secret secret;
    bool plus_offered;              /* SCRAM-SHA-256-PLUS was in the mechanism list */
    uint8_t cb_data[SCRAM_CB_MAX];  /* what a PLUS client must have bound to */
    size_t cb_len;
    bool plus;                      /* the client chose PLUS */
    char *gs2_header;
    char *client_first_bare;
    char *server_first;
    char *nonce;                    /* client nonce + server nonce */
    uint8_t client_key[SCRAM_KEY_LEN]; /* valid once SCRAM_DONE */
};

/* Starts an exchange against secret. cb_data (cb_len bytes) is the binding
 * data of the proxy's own certificate when the client connection is TLS,
 * NULL otherwise; plus_offered says PLUS was offered to the client. */
void scram_server_init(struct scram_server *s, const struct scram_secret *secret,
                       bool plus_offered, const uint8_t *cb_data, size_t cb_len);

/* The client's SASLInitialResponse: its mechanism and client-first-message.
 * On SCRAM_CONTINUE, *out is the server-first-message (malloc'ed). A client
 * that says "y" (it could bind, thinks the server cannot) while PLUS was
 * offered is refused: that is a downgrade. */
enum scram_status scram_server_first(struct scram_server *s, const char *mechanism,
                                     const char *msg, size_t len, char **out,
                                     const char **why);

/* The client's SASLResponse, the client-final-message: checks the channel
 * binding and the proof. On SCRAM_DONE, *out is the server-final-message
 * ("v=...", malloc'ed) and s->client_key holds the ClientKey. */
enum scram_status scram_server_final(struct scram_server *s, const char *msg, size_t len,
                                     char **out, const char **why);

void scram_server_free(struct scram_server *s);

/* ---- the proxy as the client of PostgreSQL ---------------------------- */

struct scram_client {
    int state;
    uint8_t client_key[SCRAM_KEY_LEN];
    struct scram_secret secret;     /* for StoredKey, ServerKey, salt, iterations */
    char *gs2_header;
    uint8_t cb_data[SCRAM_CB_MAX];
    size_t cb_len;
    char *client_first_bare;
    char *nonce;                    /* the client's part */
    uint8_t server_signature[SCRAM_KEY_LEN];
};

/* Which mechanism to ask for among those the server offers (its
 * AuthenticationSASL list, NUL-separated, ending with an empty name), given
 * whether the connection to it is TLS: PLUS when offered on TLS. NULL when
 * the list has no SCRAM-SHA-256. */
const char *scram_client_choose(const char *mechanisms, size_t len, bool tls);

/* Starts logging in with client_key (recovered from a client's proof) and
 * the secret it was checked against. mechanism is what scram_client_choose
 * said; cb_data the binding data of the server's certificate when on TLS
 * (NULL otherwise). *out is the client-first-message (malloc'ed). */
bool scram_client_init(struct scram_client *c, const uint8_t client_key[SCRAM_KEY_LEN],
                       const struct scram_secret *secret, const char *mechanism, bool tls,
                       const uint8_t *cb_data, size_t cb_len, char **out);

/* The server-first-message: on SCRAM_CONTINUE, *out is the
 * client-final-message. Fails when the server's salt or iterations differ
 * from the secret's (the ClientKey is then of no use). */
enum scram_status scram_client_final(struct scram_client *c, const char *msg, size_t len,
                                     char **out, const char **why);

/* The server-final-message: SCRAM_DONE when the server proved it knows the
 * secret too. */
enum scram_status scram_client_verify(struct scram_client *c, const char *msg, size_t len,
                                      const char **why);

void scram_client_free(struct scram_client *c);

#endif
