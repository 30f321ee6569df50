/*
 * pool: server connections kept for the next client with the same login
 * (server_reuse = on), one pool per worker.
 *
 * A client that leaves an idle session (nothing outstanding, outside any
 * transaction block) leaves its server here instead of closing it. The pool
 * resets the session with DISCARD ALL, and only a server whose reset ended
 * cleanly (ReadyForQuery idle, no error) is handed out again: to a client
 * whose StartupMessage is byte for byte the one the server was logged in
 * with, so that the same user, database and startup options, and with
 * them the same reset values, hold. The newest kept server goes first.
 *
 * A kept server that says anything but a setting's new value, closes, or
 * waits longer than its idle timeout is closed (with a Terminate where it
 * can still hear one).
 *
 * Lives on its worker's thread; no other thread touches it.
 */
#ifndef IDEM_POOL_H
#define IDEM_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <event2/event.h>

#include "counter.h"
#include "sock.h"
#include "welcome.h"

/* What a server connection brings into the pool and takes out of it. */
struct pool_server {
    struct sock *sock;
    struct welcome welcome; /* the login's end, as its next client must hear it */
    time_t born;            /* when it connected */
};

struct pool;

/* A pool on base; idle counts its servers (a gauge it adds to and takes
 * from). NULL when out of memory. */
struct pool *pool_new(struct event_base *base, struct counter *idle);

/* Closes every kept server and frees the pool. */
void pool_free(struct pool *p);

/* Closes every kept server (of none when p is NULL, as before the worker
 * made its pool): after a reload, or on shutdown. */
void pool_close_all(struct pool *p);

/* Keeps server, logged in with the len bytes of startup, for at most
 * idle_timeout seconds and not past lifetime seconds from its birth,
 * unless the pool already holds max servers or the server is that old.
 * True: the pool owns the server's sock and welcome now. False: the caller
 * still does (and closes it). */
bool pool_park(struct pool *p, const uint8_t *startup, size_t len, struct pool_server *server,
               size_t max, int idle_timeout, int lifetime);

/* A kept server logged in with the len bytes of startup, reset and idle,
 * into *out (the caller owns it now, and points its sock's callback at
 * itself). False when there is none. */
bool pool_take(struct pool *p, const uint8_t *startup, size_t len, struct pool_server *out);

#endif
