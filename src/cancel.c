#include "cancel.h"

#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "log.h"
#include "proxy.h"

#define CANCEL_TIMEOUT_SECONDS 10

static void cancel_written_cb(struct bufferevent *bev, void *arg)
{
    (void)arg;
    /* The server reads the request and closes without a reply; closing our
     * end now loses nothing already handed to the kernel. */
    bufferevent_free(bev);
}

static void cancel_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)arg;
    if (what & BEV_EVENT_CONNECTED)
        return;
    log_warning("cancel request not delivered: %s",
                (what & BEV_EVENT_TIMEOUT) ? "timed out"
                                           : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    bufferevent_free(bev);
}

void cancel_forward(struct proxy *p, const uint8_t *pkt, size_t len)
{
    struct bufferevent *bev = bufferevent_socket_new(p->base, -1, BEV_OPT_CLOSE_ON_FREE);
    const char *why = NULL;

    if (!bev) {
        log_error("cancel request not delivered: out of memory");
        return;
    }
    struct timeval timeout = { CANCEL_TIMEOUT_SECONDS, 0 };
    bufferevent_setcb(bev, NULL, cancel_written_cb, cancel_event_cb, NULL);
    bufferevent_set_timeouts(bev, NULL, &timeout);
    if (bufferevent_write(bev, pkt, len) != 0 || !proxy_connect_server(p, bev, &why)) {
        log_warning("cancel request not delivered: %s", why ? why : "out of memory");
        bufferevent_free(bev);
        return;
    }
    bufferevent_enable(bev, EV_WRITE);
}
