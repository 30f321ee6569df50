#include "tls.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

/* ---- errors ------------------------------------------------------------ */

/* Appends to buf (holding len bytes of text), truncating at cap. */
static void __attribute__((format(printf, 4, 5)))
append(char *buf, size_t cap, size_t *len, const char *fmt, ...)
{
    va_list ap;

    if (*len + 1 >= cap)
        return;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n > 0)
        *len += (size_t)n < cap - *len ? (size_t)n : cap - *len - 1;
}

/* "PEM lib", "system lib": a layer saying that the error came from below,
 * which the reasons before it have already told. */
static bool came_from_below(unsigned long e)
{
    int reason = ERR_GET_REASON(e) & ~(ERR_RFLAGS_MASK << ERR_RFLAGS_OFFSET);

    return ERR_COMMON_ERROR(e) && reason > 0 && reason < 256;
}

const char *tls_error_text(char *buf, size_t cap)
{
    const char *seen[16];
    size_t len = 0, nseen = 0;
    const char *data;
    int flags;
    unsigned long e;
    char sys[128];

    if (cap == 0)
        return buf;
    buf[0] = '\0';
    /* Oldest first: the cause, then what each layer above made of it. */
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        const char *reason = ERR_SYSTEM_ERROR(e) ? strerror_r(ERR_GET_REASON(e), sys, sizeof(sys))
                                                : ERR_reason_error_string(e);
        if (len && came_from_below(e))
            continue;
        /* Layers often repeat a reason from below: say it once. */
        bool repeated = false;
        for (size_t i = 0; reason && i < nseen; i++)
            repeated |= strcmp(seen[i], reason) == 0;
        if (repeated)
            continue;
        if (len)
            append(buf, cap, &len, ": ");
        if (reason)
            append(buf, cap, &len, "%s", reason);
        else
            append(buf, cap, &len, "error %lx", e);
        /* The detail OpenSSL attaches, such as the file it could not open. */
        if ((flags & ERR_TXT_STRING) && data && *data)
            append(buf, cap, &len, " (%s)", data);
        if (reason && nseen < sizeof(seen) / sizeof(seen[0]) && reason != sys)
            seen[nseen++] = reason;
    }
    if (!len)
        append(buf, cap, &len, "no OpenSSL error reported");
    return buf;
}

/* ---- contexts ---------------------------------------------------------- */

/* One leg's settings, the prefix of its keys in messages, and where its
 * failure is told. */
struct leg {
    const struct tls_config *tls;
    const char *prefix; /* "client_tls" or "server_tls" */
    char *why;
    size_t cap;
};

/* Fills leg->why with the message and, after ": ", OpenSSL's reasons. */
static void __attribute__((format(printf, 2, 3)))
fail(const struct leg *leg, const char *fmt, ...)
{
    char detail[512];
    size_t len = 0;
    va_list ap;

    tls_error_text(detail, sizeof(detail));
    va_start(ap, fmt);
    int n = vsnprintf(leg->why, leg->cap, fmt, ap);
    va_end(ap);
    if (n > 0)
        len = (size_t)n;
    append(leg->why, leg->cap, &len, ": %s", detail);
}

/* A daemon must never stop to ask for a passphrase on its terminal (OpenSSL's
 * default): an encrypted key fails to load instead. */
static int no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)userdata;
    return -1;
}

/* min is the lowest version set, max the highest: a gap cannot be expressed
 * and with two versions there is none. */
static bool set_protocols(SSL_CTX *ctx, const struct leg *leg)
{
    unsigned protocols = leg->tls->protocols;

    if (!(protocols & (TLS_PROTO_V1_2 | TLS_PROTO_V1_3))) {
        snprintf(leg->why, leg->cap, "%s_protocols: no TLS version is enabled", leg->prefix);
        return false;
    }
    int min = protocols & TLS_PROTO_V1_2 ? TLS1_2_VERSION : TLS1_3_VERSION;
    int max = protocols & TLS_PROTO_V1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
    if (!SSL_CTX_set_min_proto_version(ctx, min) || !SSL_CTX_set_max_proto_version(ctx, max)) {
        fail(leg, "%s_protocols: cannot be set", leg->prefix);
        return false;
    }
    return true;
}

/* The cipher list applies to TLS 1.2; TLS 1.3 keeps OpenSSL's suites, which
 * are all strong. "default", as PgBouncer spells it, keeps OpenSSL's list. */
static bool set_ciphers(SSL_CTX *ctx, const struct leg *leg)
{
    const char *ciphers = leg->tls->ciphers;

    if (!ciphers || strcasecmp(ciphers, "default") == 0)
        return true;
    if (!SSL_CTX_set_cipher_list(ctx, ciphers)) {
        fail(leg, "%s_ciphers \"%s\": no usable cipher", leg->prefix, ciphers);
        return false;
    }
    return true;
}

/* A context with what both legs share. */
static SSL_CTX *new_context(const struct leg *leg, const SSL_METHOD *method)
{
    SSL_CTX *ctx = SSL_CTX_new(method);

    if (!ctx) {
        fail(leg, "%s: cannot create a TLS context", leg->prefix);
        return NULL;
    }
    /* Renegotiation only ever served attacks on this kind of connection;
     * PostgreSQL has refused it since 9.5. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (!set_protocols(ctx, leg) || !set_ciphers(ctx, leg)) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Config guarantees the files a mode needs; this says so when a caller's
 * configuration did not come through it. */
static bool file_set(const struct leg *leg, const char *file, const char *key)
{
    if (file)
        return true;
    snprintf(leg->why, leg->cap, "%s_%s is not set", leg->prefix, key);
    return false;
}

/* Whether OpenSSL's last error is a key that is not the certificate's. */
static bool key_mismatch(void)
{
    unsigned long e = ERR_peek_last_error();

    return ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
}

/* The certificate (with the intermediates that follow it in the file) and
 * its private key. */
static bool load_cert_and_key(SSL_CTX *ctx, const struct leg *leg)
{
    const char *cert = leg->tls->cert_file, *key = leg->tls->key_file;

    if (!file_set(leg, cert, "cert_file") || !file_set(leg, key, "key_file"))
        return false;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        fail(leg, "%s_cert_file \"%s\": cannot load the certificate", leg->prefix, cert);
        return false;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 && !key_mismatch()) {
        fail(leg, "%s_key_file \"%s\": cannot load the private key", leg->prefix, key);
        return false;
    }
    /* A key of the certificate's type is compared with it on loading, one of
     * another type only here; OpenSSL's words for either ("key values
     * mismatch", "no certificate assigned") say less than these. */
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(leg->why, leg->cap, "%s_key_file \"%s\" is not the key of %s_cert_file \"%s\"",
                 leg->prefix, key, leg->prefix, cert);
        return false;
    }
    return true;
}

/* The CAs a peer's certificate must chain to. On the client leg their names
 * also go into the CertificateRequest, so that a client holding several
 * certificates offers one this CA signed. */
static bool load_ca(SSL_CTX *ctx, const struct leg *leg, bool send_names)
{
    const char *ca = leg->tls->ca_file;

    if (!file_set(leg, ca, "ca_file"))
        return false;
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        fail(leg, "%s_ca_file \"%s\": cannot load the CA certificates", leg->prefix, ca);
        return false;
    }
    if (send_names) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
        if (!names) {
            fail(leg, "%s_ca_file \"%s\": cannot read the CA names", leg->prefix, ca);
            return false;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
    }
    return true;
}

/* ALPN as PostgreSQL 17 answers it: "postgresql" when the client offers
 * it; a client that offers only other protocols is refused in the
 * handshake (no_application_protocol, RFC 7301); one that offers none may
 * go on, unless it came without SSLRequest (tls_alpn_agreed). */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    /* PostgreSQL 17's protocol list: "postgresql", length first. */
    static const unsigned char ours[] = "\x0apostgresql";
    unsigned char *chosen;
    (void)ssl;
    (void)arg;

    if (SSL_select_next_proto(&chosen, outlen, ours, sizeof(ours) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

bool tls_alpn_agreed(SSL *ssl)
{
    const unsigned char *chosen;
    unsigned int len;

    SSL_get0_alpn_selected(ssl, &chosen, &len);
    return len > 0;
}

SSL_CTX *tls_client_context(const struct config *cfg, char *why, size_t cap)
{
    struct leg leg = { &cfg->client_tls, "client_tls", why, cap };
    enum tls_mode mode = leg.tls->mode;

    snprintf(why, cap, "%s", "");
    if (mode == TLS_DISABLE)
        return NULL;
    ERR_clear_error();
    SSL_CTX *ctx = new_context(&leg, TLS_server_method());
    if (!ctx)
        return NULL;
    /* No resumption, neither by session id nor by ticket: every connection
     * is one full handshake, and nothing outlives it (PostgreSQL does the
     * same). Without it, a client certificate is checked on each connection
     * and no ticket key needs rotating. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    /* The order of client_tls_ciphers decides, not the client's: PostgreSQL's
     * ssl_prefer_server_ciphers, on by default. */
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    if (!load_cert_and_key(ctx, &leg))
        goto fail;
    /* As PgBouncer: only the verify modes ask for a certificate, and then
     * insist on one. A certificate that is asked for but not checked would
     * only make clients with the wrong one fail for nothing. */
    if (mode >= TLS_VERIFY_CA) {
        if (!load_ca(ctx, &leg, true))
            goto fail;
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    return ctx;

fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *tls_server_context(const struct config *cfg, char *why, size_t cap)
{
    struct leg leg = { &cfg->server_tls, "server_tls", why, cap };
    const struct tls_config *tls = leg.tls;

    snprintf(why, cap, "%s", "");
    if (tls->mode == TLS_DISABLE)
        return NULL;
    ERR_clear_error();
    SSL_CTX *ctx = new_context(&leg, TLS_client_method());
    if (!ctx)
        return NULL;
    /* Each connection to the server is a full handshake too: a session is
     * never offered again, so do not ask for tickets. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    if ((tls->cert_file || tls->key_file) && !load_cert_and_key(ctx, &leg))
        goto fail;
    /* prefer and require encrypt without checking whom to, as libpq does. */
    if (tls->mode >= TLS_VERIFY_CA) {
        if (!load_ca(ctx, &leg, false))
            goto fail;
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    return ctx;

fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* ---- connections ------------------------------------------------------- */

static bool is_ip_literal(const char *host)
{
    struct in6_addr addr;

    return inet_pton(AF_INET, host, &addr) == 1 || inet_pton(AF_INET6, host, &addr) == 1;
}

bool tls_server_ssl_setup(SSL *ssl, enum tls_mode mode, const char *host)
{
    bool unix_socket = !host || !*host || host[0] == '/';
    bool ip = !unix_socket && is_ip_literal(host);

    /* SNI carries host names only (RFC 6066 §3). */
    if (!unix_socket && !ip && SSL_set_tlsext_host_name(ssl, host) != 1)
        return false;
    if (mode != TLS_VERIFY_FULL)
        return true;
    if (unix_socket) {
        ERR_raise_data(ERR_LIB_SSL, ERR_R_PASSED_INVALID_ARGUMENT,
                       "verify-full needs a host name or address, not a socket");
        return false;
    }
    /* The handshake itself then fails on a mismatch. An address is matched
     * only against the iPAddress entries of subjectAltName, never against
     * a DNS name or the common name. */
    if (ip)
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1;
    /* "*" may stand for a whole leftmost label only, as libpq allows. */
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    return SSL_set1_host(ssl, host) == 1;
}

const char *tls_verify_error(const SSL *ssl)
{
    /* Without SSL_VERIFY_PEER, OpenSSL still records a result it then
     * ignores; it would only mislead about a failure with another cause. */
    if (!(SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER))
        return NULL;
    long result = SSL_get_verify_result(ssl);
    return result == X509_V_OK ? NULL : X509_verify_cert_error_string(result);
}

/* ---- the finished handshake -------------------------------------------- */

size_t tls_server_end_point(X509 *cert, uint8_t out[EVP_MAX_MD_SIZE])
{
    int md_nid;
    const EVP_MD *md;
    unsigned len;

    /* The digest of the signature algorithm, found the way PostgreSQL's
     * be_tls_get_certificate_hash and libpq find it, so that both ends of a
     * channel binding agree. Algorithms whose OID names no digest (RSA-PSS,
     * Ed25519) get none: PostgreSQL cannot compute one for them either. */
    if (!cert || !OBJ_find_sigid_algs(X509_get_signature_nid(cert), &md_nid, NULL))
        return 0;
    /* RFC 5929 §4.1: MD5 and SHA-1 are replaced by SHA-256. */
    if (md_nid == NID_md5 || md_nid == NID_sha1)
        md = EVP_sha256();
    else if (!(md = EVP_get_digestbynid(md_nid)))
        return 0;
    if (X509_digest(cert, md, out, &len) != 1)
        return 0;
    return len;
}

bool tls_peer_common_name(SSL *ssl, char *buf, size_t cap)
{
    X509 *peer = SSL_get0_peer_certificate(ssl);

    /* A name from a certificate that did not verify names nobody. */
    if (!peer || SSL_get_verify_result(ssl) != X509_V_OK)
        return false;
    X509_NAME *subject = X509_get_subject_name(peer);
    int len = X509_NAME_get_text_by_NID(subject, NID_commonName, NULL, 0);
    if (len <= 0 || (size_t)len >= cap)
        return false;
    X509_NAME_get_text_by_NID(subject, NID_commonName, buf, len + 1);
    /* "admin\0.example" must not pass for "admin". */
    return strlen(buf) == (size_t)len;
}
