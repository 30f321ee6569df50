#include "listener_rest.h"

static void rested(evutil_socket_t fd, short what, void *arg)
{
    struct listener_rest *r = arg;
    (void)fd;
    (void)what;
    evconnlistener_enable(r->listener);
}

bool listener_rest_init(struct listener_rest *r, struct event_base *base,
                        struct evconnlistener *listener)
{
    r->listener = listener;
    r->logged = 0;
    r->timer = evtimer_new(base, rested, r);
    return r->timer != NULL;
}

void listener_rest_pause(struct listener_rest *r)
{
    struct timeval rest = { 0, LISTENER_REST_MS * 1000 };

    evconnlistener_disable(r->listener);
    evtimer_add(r->timer, &rest);
}

bool listener_rest_log_due(struct listener_rest *r)
{
    time_t now = time(NULL);

    if (now == r->logged)
        return false;
    r->logged = now;
    return true;
}

void listener_rest_free(struct listener_rest *r)
{
    if (r->timer)
        event_free(r->timer);
    r->timer = NULL;
    r->listener = NULL;
}
