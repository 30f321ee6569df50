/*
 * conn: one client connection and its server connection.
 *
 * A struct conn owns both socks, the queue of the session's outstanding
 * requests and the connection's state; nothing outside the module's files
 * (conn*.c, which share conn_int.h) reaches into it. It moves bytes with
 * libevent and asks the pure core (pgproto, track) what they mean. It
 * lives and dies on the thread of the worker that accepted it.
 *
 * Life: conn_accept() -> startup packets -> connect to the server -> relay
 * authentication -> relay the session -> close. A conn frees itself when
 * either side goes away, after flushing what the other side still has to
 * read, and then tells its worker (worker_conn_gone).
 */
#ifndef IDEM_CONN_H
#define IDEM_CONN_H

#include <stdint.h>
#include <time.h>

#include <event2/util.h>

struct worker;
struct conn;

/* Adopts an accepted client socket. Returns NULL (socket closed, logged)
 * when memory runs out. */
struct conn *conn_accept(struct worker *w, evutil_socket_t fd,
                         const struct sockaddr *addr, int addrlen);

/* The proxy is stopping: close the pair as soon as the session is idle
 * (nothing outstanding), at once if it already is. A client still logging
 * in finishes its login and its first request first; conn_accept() applies
 * the same to a client accepted during the shutdown. */
void conn_shutdown(struct conn *c);

/* Closes the pair now, telling the client why with a FATAL 57P01. */
void conn_terminate(struct conn *c);

/* Frees the pair at once, flushing nothing: for process exit. */
void conn_destroy(struct conn *c);

/* A logged-in session's two sockets go through the worker's ring, or back
 * to plain system calls, as worker_session_ring now says; before the login
 * is done they stay on plain calls, and login_done asks. */
void conn_follow_ring(struct conn *c);

/* The next pair in the worker's list, for walking it. */
struct conn *conn_next(struct conn *c);

/* What SHOW CLIENTS shows of a pair. */
struct conn_info {
    uint64_t id;
    char peer[64];
    char user[64];     /* "" before the StartupMessage */
    char database[64];
    time_t since;      /* when it was accepted */
};

/* Fills out; another thread may call it while holding the worker's
 * conns_lock. */
void conn_describe(const struct conn *c, struct conn_info *out);

#endif
