/*
 * tls: the OpenSSL side of the proxy's two legs.
 *
 * Builds the SSL_CTX for clients (the proxy as TLS server) and for the
 * connections to PostgreSQL (the proxy as TLS client) from the
 * configuration; a context is replaced whole on reload, and SSL objects
 * already made from the old one keep it alive. Also what the rest of the
 * proxy needs to know about a finished handshake: the certificate hash for
 * tls-server-end-point channel binding and the peer's name. No sockets:
 * libevent's bufferevent_openssl moves the bytes.
 */
#ifndef IDEM_TLS_H
#define IDEM_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "config.h"

/* The context clients connect to, from cfg->client_tls; NULL when the
 * client leg is disabled or when it cannot be built (*why, for the log and
 * for --check-config: a missing or unreadable file, a key that does not
 * match its certificate, an unknown cipher list...). */
SSL_CTX *tls_client_context(const struct config *cfg, char *why, size_t cap);

/* The first byte of a TLS handshake record, as a ClientHello starts. */
#define TLS_HANDSHAKE_RECORD 0x16

/* Whether a client connection's handshake agreed on ALPN "postgresql"
 * (the context offers nothing else). A client that starts TLS without
 * SSLRequest must have: that is how PostgreSQL knows it will speak its
 * protocol inside. */
bool tls_alpn_agreed(SSL *ssl);

/* The context for connecting to the server, from cfg->server_tls; NULL as
 * above. verify-ca and verify-full check the server's certificate against
 * server_tls_ca_file. */
SSL_CTX *tls_server_context(const struct config *cfg, char *why, size_t cap);

/* Prepares ssl (from tls_server_context) for connecting to host: SNI when
 * host is a name, and under verify-full the check that the certificate
 * names host (a DNS name or an IP address in subjectAltName). */
bool tls_server_ssl_setup(SSL *ssl, enum tls_mode mode, const char *host);

/* tls-server-end-point channel binding data (RFC 5929): the hash of cert,
 * with SHA-256 when its signature uses MD5 or SHA-1, else with the
 * signature's own hash. Returns its length, 0 when it cannot be had. */
size_t tls_server_end_point(X509 *cert, uint8_t out[EVP_MAX_MD_SIZE]);

/* Why verification refused the peer's certificate ("hostname mismatch",
 * "unable to get local issuer certificate"...), to add to the message of a
 * failed handshake: OpenSSL's errors only say "certificate verify failed".
 * NULL when ssl does not verify its peer, or the certificate passed. */
const char *tls_verify_error(const SSL *ssl);

/* The common name of the peer's certificate, for client_tls_sslmode =
 * verify-full (it must be the user name). False when there is none. */
bool tls_peer_common_name(SSL *ssl, char *buf, size_t cap);

/* The last OpenSSL error of this thread as one line, and the queue cleared. */
const char *tls_error_text(char *buf, size_t cap);

#endif
