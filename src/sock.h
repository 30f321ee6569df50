/*
 * sock: one socket of a connection pair, plaintext or TLS, on the event
 * loop, moving bytes with as few system calls as the bytes allow.
 *
 * libevent's socket bufferevents ask the kernel how much is readable before
 * every read (FIONREAD) and add and remove write interest around every
 * write (two epoll_ctl calls): six system calls per request and answer that
 * carry no bytes. Here a read goes straight into the input evbuffer, and a
 * write is tried at once (sock_flush): only what the kernel does not take
 * waits for a write event. The read event stays registered unless reading
 * is paused for backpressure.
 *
 * The sock of a logged-in session can move to the worker's io_uring
 * instead (sock_use_ring): its reads and writes are then queued and
 * submitted in one batch per turn of the loop. A plaintext sock can go
 * back to plain calls (sock_leave_ring) and onto the ring again, as the
 * worker's load changes.
 *
 * TLS runs over the same socket with OpenSSL (SSL_read into the input,
 * SSL_write from the output), so both kinds of socket behave the same to
 * the connection code. The handshake reads and writes the socket itself;
 * through the ring, OpenSSL reads the records the receives bring and
 * writes records for the sends, both through evbuffers of the sock.
 *
 * A sock reports to one callback, and only from the event loop: no call
 * runs the callback under its caller. It never frees itself.
 */
#ifndef IDEM_SOCK_H
#define IDEM_SOCK_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/ssl.h>

struct sock;

enum sock_event {
    SOCK_READ,      /* new bytes in the input */
    SOCK_DRAINED,   /* the output fell to the low mark after reaching the high one */
    SOCK_CONNECTED, /* the connect, or the TLS handshake, is done */
    SOCK_EOF,       /* the peer closed its side */
    SOCK_ERROR,     /* the socket or TLS failed: sock_error() says why */
    SOCK_TIMEOUT,   /* no progress within the timeout */
    SOCK_CLOSED,    /* sock_close_flushed: everything went out (or the time ran out) */
};

typedef void (*sock_cb)(struct sock *s, enum sock_event event, void *arg);

/* Takes fd (nonblocking; the sock closes it), or -1 for sock_connect. */
struct sock *sock_new(struct event_base *base, evutil_socket_t fd, sock_cb cb, void *arg);

/* Hands the sock to a new owner: reports go to cb with arg from now on,
 * including any not yet delivered. */
void sock_set_callback(struct sock *s, sock_cb cb, void *arg);

/* Starts a nonblocking connect; SOCK_CONNECTED or SOCK_ERROR follows.
 * False (with errno) when it cannot even start. */
bool sock_connect(struct sock *s, const struct sockaddr *addr, int addrlen);

/* The socket goes on under TLS, as the server (accept) or the client of
 * the handshake; SOCK_CONNECTED follows it. The sock owns ssl. Only with
 * nothing buffered in either direction, except, as the server, the start
 * of the client's handshake (a client that opened with TLS at once, without
 * SSLRequest): the input is then handed to OpenSSL to read first. */
bool sock_start_tls(struct sock *s, SSL *ssl, bool accept);

/* The TLS session, or NULL for plaintext. */
SSL *sock_ssl(const struct sock *s);

struct evbuffer *sock_input(struct sock *s);
struct evbuffer *sock_output(struct sock *s);
evutil_socket_t sock_fd(const struct sock *s);

/* The bytes given to the output and not yet taken by the kernel. */
size_t sock_unsent(const struct sock *s);

struct ring;

/* From now on the sock reads and writes through the worker's ring
 * (ring.h): only an open socket, and under TLS only after the handshake
 * with no write waiting for writability (OpenSSL must be asked again with
 * the same write). False, and nothing changes, otherwise. */
bool sock_use_ring(struct sock *s, struct ring *r);

/* The sock goes back to plain system calls, as soon as the ring's
 * operations in flight end: its receive is cancelled (what that receive
 * brings meanwhile is reported as usual), and output waits for plain calls
 * rather than a new send. sock_use_ring before then keeps it on the ring.
 * False, and nothing changes, for TLS (OpenSSL holds records the ring
 * received) or a sock that is not open; true when it is not on a ring. */
bool sock_leave_ring(struct sock *s);

/* Writes what the output holds, as much as the socket takes now; the rest
 * goes when it becomes writable. Call it after adding to the output. */
void sock_flush(struct sock *s);

/* Whether the peer has sent bytes the caller has not taken, wherever they
 * wait: in the input, held for TLS, in a receive's completion not yet run,
 * or still in the socket (under TLS through the ring, the end of its
 * stream counts too, until it is reported). */
bool sock_has_arrived(const struct sock *s);

/* Reading stops while the input holds limit bytes or more (a held message
 * may need more than the usual chunk), and goes on as soon as the caller
 * takes bytes from it, from whichever callback. Through a ring the input
 * may pass the limit by what arrives before the receive is cancelled. */
void sock_set_read_limit(struct sock *s, size_t limit);

/* Stops or resumes reading (backpressure from the other socket). */
void sock_pause_reading(struct sock *s, bool paused);

/* The marks for sock_output_full and SOCK_DRAINED. */
void sock_set_write_marks(struct sock *s, size_t low, size_t high);

/* True when the output holds high bytes or more; SOCK_DRAINED follows once
 * it falls to low. Asking is what arms the report, so a caller that pauses
 * on true is always told when to resume. */
bool sock_output_full(struct sock *s);

/* SOCK_TIMEOUT after seconds without a connect, handshake, read or write
 * completing; 0 turns it off. */
void sock_set_timeout(struct sock *s, int seconds);

/* Why the last SOCK_ERROR happened, for a log line or an error message. */
const char *sock_error(const struct sock *s);

/* Stops reading, writes out what is left, then reports SOCK_CLOSED (also
 * after seconds, or at once when nothing is left). */
void sock_close_flushed(struct sock *s, int seconds);

void sock_free(struct sock *s);

#endif
