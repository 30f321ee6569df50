/*
 * login: the proxy's part in a login when it authenticates clients itself
 * (auth_type = scram-sha-256).
 *
 * First the client: the proxy offers SCRAM-SHA-256 (and SCRAM-SHA-256-PLUS
 * on TLS, bound to the proxy's own certificate) and checks the client's
 * proof against the user's stored secret, which reveals the client's
 * ClientKey. Then the server: the proxy logs in as that user with the
 * ClientKey (SCRAM, with channel binding when the server is on TLS and
 * offers it), or with nothing when the server trusts it. The password is
 * never known to the proxy.
 *
 * Pure: message bodies in, whole messages out (into the caller's buffer).
 * No I/O; the secret comes from the caller (auth_file or auth_query).
 */
#ifndef IDEM_LOGIN_H
#define IDEM_LOGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "scram.h"

/* Room enough for any message login writes. */
#define LOGIN_MSG_MAX 1024

enum login_step {
    LOGIN_SEND,        /* send the message in out; the peer answers */
    LOGIN_CLIENT_OK,   /* send the message in out (SASL final) to the client;
                          the client is who it says: connect to the server */
    LOGIN_SERVER_SEND, /* send the message in out to the server */
    LOGIN_SERVER_OK,   /* the server accepted: relay its AuthenticationOk on */
    LOGIN_WAIT,        /* nothing to send; the server goes on */
    LOGIN_FAIL,        /* *why says why, for the log */
};

struct login {
    int state;
    bool known;             /* the user has a secret (else the exchange is a mock) */
    struct scram_secret secret;
    struct scram_server with_client;
    struct scram_client with_server;
};

/* Starts with the user's secret (NULL: no such user; the exchange then
 * runs against a mock secret derived from mock_key and fails like a wrong
 * password). client_tls says the client connection is TLS; cb_data is the
 * proxy certificate's binding data then. Writes AuthenticationSASL. */
void login_start(struct login *l, const struct scram_secret *secret, const char *user,
                 const uint8_t mock_key[SCRAM_KEY_LEN], bool client_tls,
                 const uint8_t *cb_data, size_t cb_len, uint8_t out[LOGIN_MSG_MAX],
                 size_t *out_len);

/* A SASLInitialResponse or SASLResponse ('p') body from the client:
 * LOGIN_SEND (AuthenticationSASLContinue), LOGIN_CLIENT_OK
 * (AuthenticationSASLFinal), or LOGIN_FAIL. */
enum login_step login_client_msg(struct login *l, const uint8_t *body, size_t len,
                                 uint8_t out[LOGIN_MSG_MAX], size_t *out_len,
                                 const char **why);

/* An Authentication ('R') body from the server. server_tls says the
 * server connection is TLS and cb_data is then the binding data of the
 * server's certificate. LOGIN_SERVER_SEND (a SASL message for the server),
 * LOGIN_WAIT, LOGIN_SERVER_OK (AuthenticationOk: relay it to the client),
 * or LOGIN_FAIL (also when the server asks for a password the proxy does not
 * have: md5 or clear text). */
enum login_step login_server_msg(struct login *l, const uint8_t *body, size_t len,
                                 bool server_tls, const uint8_t *cb_data, size_t cb_len,
                                 uint8_t out[LOGIN_MSG_MAX], size_t *out_len,
                                 const char **why);

/* When relaying the server's AuthenticationSASL (data: its mechanism list)
 * to a client that cannot bind to the server's TLS: the same message
 * without SCRAM-SHA-256-PLUS, into out. 0 when there is nothing to take
 * out (relay the original). */
size_t login_relayable_mechanisms(const uint8_t *data, size_t len, uint8_t out[LOGIN_MSG_MAX]);

void login_free(struct login *l);

#endif
