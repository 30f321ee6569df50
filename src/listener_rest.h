/*
 * listener_rest: a listener that rests, instead of spinning, when accept
 * fails for want of a resource.
 *
 * When accept fails with EMFILE, ENFILE, ENOBUFS or ENOMEM, the client
 * stays in the kernel's queue and the listener reports it again at once:
 * its owner's error callback would run in a busy loop, one log line per
 * turn. The owner's callback pauses the listener here instead; a timer
 * enables it again after LISTENER_REST_MS, and the owner logs the failure
 * only when listener_rest_log_due says so, once a second at most.
 *
 * Lives on the thread of the event loop it was made on.
 */
#ifndef IDEM_LISTENER_REST_H
#define IDEM_LISTENER_REST_H

#include <stdbool.h>
#include <time.h>

#include <event2/event.h>
#include <event2/listener.h>

#define LISTENER_REST_MS 100

struct listener_rest {
    struct evconnlistener *listener;
    struct event *timer; /* enables the listener again */
    time_t logged;       /* when the owner last logged a failure */
};

/* Prepares r for listener, on base. False when out of memory. */
bool listener_rest_init(struct listener_rest *r, struct event_base *base,
                        struct evconnlistener *listener);

/* Stops accepting for LISTENER_REST_MS. */
void listener_rest_pause(struct listener_rest *r);

/* True at most once a second: whether to log this failure. */
bool listener_rest_log_due(struct listener_rest *r);

/* Frees the timer; the listener stays its owner's. Safe on a zeroed r. */
void listener_rest_free(struct listener_rest *r);

#endif
