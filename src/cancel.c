#include "cancel.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>

#include "cancelkeys.h"
#include "log.h"
#include "pgproto.h"
#include "proxy.h"
#include "settings.h"
#include "tls.h"
#include "worker.h"

#define CANCEL_TIMEOUT_SECONDS 10

/* One CancelRequest on its way, over TLS when the proxy speaks TLS to the
 * server: the key must not cross the network in clear where the session
 * did not. */
struct cancel {
    struct event_base *base;
    struct settings *settings; /* those it started under, whatever a reload does */
    struct bufferevent *bev;
    uint8_t pkt[12 + PG_CANCEL_KEY_MAX];
    size_t len;
    bool asked_tls;  /* SSLRequest sent, answer awaited */
};

static void cancel_free(struct cancel *k)
{
    if (k->bev)
        bufferevent_free(k->bev);
    settings_unref(k->settings);
    free(k);
}

static void give_up(struct cancel *k, const char *why)
{
    log_warning("cancel request not delivered: %s", why);
    cancel_free(k);
}

static void written_cb(struct bufferevent *bev, void *arg)
{
    struct cancel *k = arg;

    /* The server reads the request and closes without a reply; closing our
     * end now loses nothing already handed to the kernel. */
    if (!k->asked_tls && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        cancel_free(k);
}

static void event_cb(struct bufferevent *bev, short what, void *arg);

static void send_request(struct cancel *k)
{
    bufferevent_setcb(k->bev, NULL, written_cb, event_cb, k);
    bufferevent_enable(k->bev, EV_WRITE);
    bufferevent_write(k->bev, k->pkt, k->len);
}

/* The server's answer to SSLRequest: 'S' goes on under TLS, 'N' in
 * plaintext when server_tls_sslmode allows it. */
static void answer_cb(struct bufferevent *bev, void *arg)
{
    struct cancel *k = arg;
    const struct config *cfg = k->settings->cfg;
    uint8_t answer;

    if (!k->asked_tls || evbuffer_remove(bufferevent_get_input(bev), &answer, 1) != 1)
        return;
    k->asked_tls = false;
    if (answer == 'N' && cfg->server_tls.mode == TLS_PREFER) {
        send_request(k);
        return;
    }
    SSL *ssl = answer == 'S' ? SSL_new(k->settings->server_ssl_ctx) : NULL;
    if (!ssl || !tls_server_ssl_setup(ssl, cfg->server_tls.mode, cfg->server_host)) {
        SSL_free(ssl);
        give_up(k, answer == 'S' ? "out of memory" : "the server does not accept TLS");
        return;
    }
    evutil_socket_t fd = bufferevent_getfd(bev);
    bufferevent_setfd(bev, -1);
    bufferevent_free(bev);
    k->bev = bufferevent_openssl_socket_new(k->base, fd, ssl,
                                            BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    if (!k->bev) {
        SSL_free(ssl);
        evutil_closesocket(fd);
        give_up(k, "out of memory");
        return;
    }
    struct timeval timeout = { CANCEL_TIMEOUT_SECONDS, 0 };
    bufferevent_set_timeouts(k->bev, &timeout, &timeout);
    bufferevent_setcb(k->bev, NULL, NULL, event_cb, k);
    bufferevent_enable(k->bev, EV_READ | EV_WRITE);
    /* The request goes when the handshake is done (event_cb). */
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct cancel *k = arg;

    if (what & BEV_EVENT_CONNECTED) {
        if (bufferevent_openssl_get_ssl(bev)) {
            send_request(k);
        } else if (k->settings->server_ssl_ctx) {
            static const uint8_t ssl_request[8] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f };
            k->asked_tls = true;
            bufferevent_setcb(bev, answer_cb, NULL, event_cb, k);
            bufferevent_enable(bev, EV_READ);
            bufferevent_write(bev, ssl_request, sizeof(ssl_request));
        } else {
            send_request(k);
        }
        return;
    }
    give_up(k, (what & BEV_EVENT_TIMEOUT) ? "timed out"
                                          : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

void cancel_forward(struct worker *w, const uint8_t *pkt, size_t len)
{
    struct cancel *k = calloc(1, sizeof(*k));
    const char *why = NULL;

    if (!k || len > sizeof(k->pkt)) {
        free(k);
        log_error("cancel request not delivered: out of memory");
        return;
    }
    k->base = w->base;
    k->settings = settings_ref(w->settings);
    memcpy(k->pkt, pkt, len);
    k->len = len;
    /* A key the proxy gave out stands for its server's real one. */
    cancel_keys_translate(w->proxy->cancel_keys, k->pkt + PG_STARTUP_MIN_LEN,
                          len - PG_STARTUP_MIN_LEN);
    k->bev = bufferevent_socket_new(w->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!k->bev) {
        give_up(k, "out of memory");
        return;
    }
    struct timeval timeout = { CANCEL_TIMEOUT_SECONDS, 0 };
    bufferevent_set_timeouts(k->bev, &timeout, &timeout);
    bufferevent_setcb(k->bev, NULL, NULL, event_cb, k);
    if (!worker_connect_server(w, k->bev, &why)) {
        give_up(k, why ? why : "cannot connect");
        return;
    }
    bufferevent_enable(k->bev, EV_WRITE);
}
