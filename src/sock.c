#include "sock.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <pthread.h>

#include <openssl/err.h>

#include "ring.h"

/* Bytes taken from the socket at once, and the input kept unless the
 * caller raises the limit for a message it must hold whole. */
#define READ_CHUNK (64 * 1024)
/* The most data one TLS record carries: what one SSL_write sends and one
 * SSL_read returns at most. */
#define TLS_RECORD 16384
/* Extents one sendmsg carries; write_plain sends any more with the next
 * (a relay pass rarely leaves more than a few). */
#define SEND_EXTENTS 64

enum sock_state {
    SOCK_OPEN,
    SOCK_CONNECTING, /* the TCP connect is under way */
    SOCK_HANDSHAKE,  /* the TLS handshake is under way */
    SOCK_CLOSING,    /* writing out what is left, then SOCK_CLOSED */
    SOCK_DEAD,       /* EOF, an error, or closed: nothing more moves */
};

struct sock {
    struct event_base *base;
    evutil_socket_t fd;
    struct event *rev, *wev, *timer;
    struct event *notify;  /* reports what a caller's call caused */
    unsigned pending;      /* those reports: bits by enum sock_event */
    struct evbuffer *in, *out;
    struct evbuffer_cb_entry *drained; /* watches the input while it is full */
    SSL *ssl;
    enum sock_state state;
    sock_cb cb;
    void *arg;

    bool paused;           /* the caller stopped reading */
    bool reading, writing; /* rev and wev are added */
    bool tls_held;         /* TLS: reading stopped with whole records in
                            * OpenSSL, which no read event will report */
    bool tls_ended;        /* TLS through the ring: the peer's stream ended */
    bool read_wants_write; /* TLS: SSL_read waits for writability */
    bool write_wants_read; /* TLS: SSL_write waits for readability */
    size_t read_limit;
    size_t low, high;
    bool above_high;
    int timeout;
    unsigned busy;         /* callbacks under way */
    bool dying;            /* sock_free came during a callback */
    char error[256];

    /* Through the worker's ring (sock_use_ring): */
    struct ring *ring;
    struct ring_op recv_op, send_op;
    bool receiving, sending; /* the operation is in flight */
    bool stopping;           /* the receive is being cancelled */
    bool leaving;            /* back to plain calls once nothing is in flight */
    bool unreported;         /* input arrived while reading was paused */
    bool orphaned;           /* freed while operations were in flight */
    struct evbuffer *flight; /* what the send in flight carries: the output
                              * may move its own bytes as it grows */
    struct evbuffer *sealed_in, *sealed_out; /* TLS: records received for
                              * OpenSSL, and records it wrote to send */
    struct iovec iov[SEND_EXTENTS];
    struct msghdr msg;
};

#define SOCK_OF(op, member) ((struct sock *)((char *)(op) - offsetof(struct sock, member)))

/* None of the sock's events calls back any more. */
static void silence(struct sock *s)
{
    if (s->rev)
        event_del(s->rev);
    if (s->wev)
        event_del(s->wev);
    event_del(s->timer);
    event_del(s->notify);
}

/* Through the ring, what OpenSSL wrote last (a close_notify, or the alert
 * that says why it failed) goes with one plain send, best effort: nothing
 * is in flight any more, and nothing half-sent that it would follow. */
static void send_sealed_now(struct sock *s)
{
    size_t len = evbuffer_get_length(s->sealed_out);
    const unsigned char *data = evbuffer_pullup(s->sealed_out, -1);

    if (len > 0 && data && s->fd >= 0 && evbuffer_get_length(s->flight) == 0)
        (void)send(s->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void really_free(struct sock *s)
{
    if (s->receiving || s->sending) {
        /* The ring still holds them, and the memory they use: the sock
         * goes when they end, cancelled, and reports nothing more. */
        s->orphaned = true;
        if (s->receiving)
            ring_cancel(s->ring, &s->recv_op);
        if (s->sending)
            ring_cancel(s->ring, &s->send_op);
        silence(s);
        return;
    }
    if (s->ssl) {
        /* A best-effort close_notify; the peer may be gone. */
        if (s->state == SOCK_OPEN || s->state == SOCK_CLOSING)
            SSL_shutdown(s->ssl);
        if (s->ring)
            send_sealed_now(s);
        SSL_free(s->ssl);
    }
    if (s->rev)
        event_free(s->rev);
    if (s->wev)
        event_free(s->wev);
    if (s->timer)
        event_free(s->timer);
    if (s->notify)
        event_free(s->notify);
    if (s->in)
        evbuffer_free(s->in);
    if (s->out)
        evbuffer_free(s->out);
    if (s->flight)
        evbuffer_free(s->flight);
    if (s->sealed_in)
        evbuffer_free(s->sealed_in);
    if (s->sealed_out)
        evbuffer_free(s->sealed_out);
    if (s->fd >= 0)
        evutil_closesocket(s->fd);
    free(s);
}

/* Calls back; false when the callback freed the sock. */
static bool report(struct sock *s, enum sock_event event)
{
    s->busy++;
    s->cb(s, event, s->arg);
    s->busy--;
    if (s->dying && s->busy == 0) {
        really_free(s);
        return false;
    }
    return !s->dying;
}

/* A report caused by a call from the connection code waits for the loop:
 * callers never see their own callback run under them. */
static bool emit(struct sock *s, enum sock_event event, bool from_loop)
{
    if (from_loop)
        return report(s, event);
    s->pending |= 1u << event;
    event_active(s->notify, EV_TIMEOUT, 0);
    return true;
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
    struct sock *s = arg;
    (void)fd;
    (void)what;

    for (unsigned e = 0; s->pending; e++) {
        if (!(s->pending & (1u << e)))
            continue;
        s->pending &= ~(1u << e);
        if (!report(s, (enum sock_event)e))
            return;
    }
}

static void set_interest(struct event *ev, bool *added, bool want)
{
    if (want == *added)
        return;
    if (want)
        event_add(ev, NULL);
    else
        event_del(ev);
    *added = want;
}

static void resume_reading(struct sock *s);
static void receive(struct sock *s);

/* The caller took bytes from an input that was at its limit: reading goes
 * on, whichever event the caller was serving. */
static void input_drained(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg)
{
    struct sock *s = arg;

    if (info->n_deleted > 0 && evbuffer_get_length(in) < s->read_limit)
        resume_reading(s);
}

/* The read event is registered while reading can make progress; leaving
 * it registered otherwise would spin a level-triggered loop. While only a
 * full input stops it, draining the input starts it again. Under TLS
 * through the ring, a limit's worth of records received and not yet
 * decrypted stops it too: receiving more while they wait would only pile
 * them up. Not their sum with the input: part of a record that waits for
 * its rest must not stop the receive that brings it. */
static void update_reading(struct sock *s)
{
    bool want, full = false;
    size_t sealed = s->sealed_in ? evbuffer_get_length(s->sealed_in) : 0;

    switch (s->state) {
    case SOCK_OPEN:
        full = !s->paused &&
               (evbuffer_get_length(s->in) >= s->read_limit || sealed >= s->read_limit);
        want = (!s->paused && !full) || s->write_wants_read;
        break;
    case SOCK_HANDSHAKE:
        want = true;
        break;
    default:
        want = false;
        break;
    }
    if (s->ring) {
        /* The receive stays armed for every message until cancelled. */
        if (want && !s->receiving && !s->leaving) {
            receive(s);
        } else if ((!want || s->leaving) && s->receiving && !s->stopping) {
            ring_cancel(s->ring, &s->recv_op);
            s->stopping = true;
        }
    } else {
        set_interest(s->rev, &s->reading, want);
    }
    if (full)
        evbuffer_cb_set_flags(s->in, s->drained, EVBUFFER_CB_ENABLED);
    else
        evbuffer_cb_clear_flags(s->in, s->drained, EVBUFFER_CB_ENABLED);
}

/* Whether OpenSSL may give more without new bytes from the socket: records
 * it read ahead, or, through the ring, what was received for it (the end
 * of the stream included). */
static bool tls_has_more(const struct sock *s)
{
    return SSL_has_pending(s->ssl) ||
           (s->ring && (s->tls_ended || evbuffer_get_length(s->sealed_in) > 0));
}

/* Reading goes on where it can make progress. Records TLS already holds,
 * decrypted or read ahead, will not wake the read event, so they are read
 * on the next turn of the loop. Part of a record is not enough: only more
 * bytes from the socket can complete it, and reading for it again at once
 * would spin the loop until they come. */
static void resume_reading(struct sock *s)
{
    update_reading(s);
    if (s->unreported && !s->paused && s->state == SOCK_OPEN) {
        s->unreported = false;
        emit(s, SOCK_READ, false);
    }
    if (s->state == SOCK_OPEN && s->tls_held && !s->paused &&
        evbuffer_get_length(s->in) < s->read_limit)
        event_active(s->rev, EV_READ, 0);
}

/* Nothing moves any more, and no timeout follows. */
static void die(struct sock *s)
{
    s->state = SOCK_DEAD;
    set_interest(s->wev, &s->writing, false);
    update_reading(s);
    event_del(s->timer);
}

static bool fail_from(struct sock *s, bool from_loop, const char *prefix, const char *detail)
{
    snprintf(s->error, sizeof(s->error), "%s%s", prefix, detail);
    die(s);
    return emit(s, SOCK_ERROR, from_loop);
}

static bool fail(struct sock *s, const char *prefix, const char *detail)
{
    return fail_from(s, true, prefix, detail);
}

static void progress(struct sock *s)
{
    if (s->timeout > 0) {
        struct timeval tv = { s->timeout, 0 };
        event_add(s->timer, &tv);
    }
}

/* The text of the OpenSSL error queue (cleared), or of errno. */
static const char *tls_failure(char *buf, size_t cap, int saved_errno)
{
    unsigned long e = ERR_get_error();

    if (e)
        ERR_error_string_n(e, buf, cap);
    else
        snprintf(buf, cap, "%s", saved_errno ? strerror(saved_errno) : "connection closed");
    ERR_clear_error();
    return buf;
}

/* ---- reading ----------------------------------------------------------- */

/* One read into the input. Returns false when the sock is gone. */
static bool read_plain(struct sock *s, size_t room)
{
    struct evbuffer_iovec v[2];
    int n = evbuffer_reserve_space(s->in, (ev_ssize_t)room, v, 2);
    ssize_t got;

    if (n <= 0)
        return fail(s, "out of memory", "");
    if (v[0].iov_len > room)
        v[0].iov_len = room;
    if (n == 2 && v[0].iov_len + v[1].iov_len > room)
        v[1].iov_len = room - v[0].iov_len;
    /* recv when one extent will do: the kernel then has no iovec to
     * import, which is most of what a small read costs beyond the copy. */
    do
        got = n == 1 ? recv(s->fd, v[0].iov_base, v[0].iov_len, 0)
                     : readv(s->fd, (struct iovec *)v, n);
    while (got < 0 && errno == EINTR);
    if (got < 0) {
        evbuffer_commit_space(s->in, v, 0);
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return true;
        return fail(s, "", strerror(errno));
    }
    if (got == 0) {
        evbuffer_commit_space(s->in, v, 0);
        die(s);
        return report(s, SOCK_EOF);
    }
    for (int i = 0; i < n; i++) {
        size_t take = (size_t)got < v[i].iov_len ? (size_t)got : v[i].iov_len;
        v[i].iov_len = take;
        got -= (ssize_t)take;
    }
    evbuffer_commit_space(s->in, v, n);
    progress(s);
    return report(s, SOCK_READ);
}

/* Reads what TLS has, up to room. OpenSSL may hold decrypted bytes the
 * socket will never signal again, so it reads on while OpenSSL holds any;
 * what is still in the socket, the read event reports again. Stopped by
 * room, it leaves tls_held set for resume_reading; stopped for want of
 * bytes, whatever OpenSSL holds is part of a record.
 *
 * Records are decrypted into the thread's scratch and added to the input
 * at their size. Reserving room in the input instead allocated a chain of
 * READ_CHUNK for every read into an empty input, and freeing those made
 * the allocator hand its heap top back and fault it in again: 0.6 page
 * faults per transaction of pgbench -S. */
static bool read_tls(struct sock *s, size_t room)
{
    static _Thread_local unsigned char scratch[TLS_RECORD];
    size_t before = evbuffer_get_length(s->in);

    while (room > 0) {
        int want = room < sizeof(scratch) ? (int)room : (int)sizeof(scratch);
        ERR_clear_error();
        int got = SSL_read(s->ssl, scratch, want);
        if (got > 0) {
            if (evbuffer_add(s->in, scratch, (size_t)got) != 0)
                return fail(s, "out of memory", "");
            room -= (size_t)got;
            s->tls_held = tls_has_more(s);
            if (!s->tls_held)
                break;
            continue;
        }
        int saved = errno;
        s->tls_held = false;
        switch (SSL_get_error(s->ssl, got)) {
        case SSL_ERROR_WANT_READ:
            break;
        case SSL_ERROR_WANT_WRITE:
            s->read_wants_write = true;
            set_interest(s->wev, &s->writing, true);
            break;
        case SSL_ERROR_ZERO_RETURN:
            die(s);
            if (evbuffer_get_length(s->in) > before && !report(s, SOCK_READ))
                return false;
            return report(s, SOCK_EOF);
        default: {
            char buf[256];
            return fail(s, "", tls_failure(buf, sizeof(buf), saved));
        }
        }
        break;
    }
    if (evbuffer_get_length(s->in) == before)
        return true;
    progress(s);
    return report(s, SOCK_READ);
}

static bool read_some(struct sock *s)
{
    size_t have = evbuffer_get_length(s->in);
    size_t room = have < s->read_limit ? s->read_limit - have : 0;

    if (room > READ_CHUNK)
        room = READ_CHUNK;
    if (room == 0 || s->paused)
        return true;
    return s->ssl ? read_tls(s, room) : read_plain(s, room);
}

/* ---- writing ----------------------------------------------------------- */

/* One send for all the output: send when it is one extent (the kernel
 * then has no iovec to import), sendmsg over its extents when it is more,
 * as a rewritten message followed by the rest of the client's batch is.
 * evbuffer_iovec has struct iovec's layout on every Unix. */
static ssize_t send_out(struct sock *s)
{
    struct evbuffer_iovec v[SEND_EXTENTS];
    size_t len = evbuffer_get_length(s->out);
    int n = evbuffer_peek(s->out, (ev_ssize_t)len, NULL, v, SEND_EXTENTS);
    ssize_t sent;

    if (n == 1) {
        sent = send(s->fd, v[0].iov_base, v[0].iov_len, MSG_NOSIGNAL);
    } else {
        struct msghdr m = { .msg_iov = (struct iovec *)v,
                            .msg_iovlen = (size_t)(n < SEND_EXTENTS ? n : SEND_EXTENTS) };
        sent = sendmsg(s->fd, &m, MSG_NOSIGNAL);
    }
    if (sent > 0)
        evbuffer_drain(s->out, (size_t)sent);
    return sent;
}

static bool write_plain(struct sock *s, bool from_loop)
{
    while (evbuffer_get_length(s->out) > 0) {
        ssize_t n = send_out(s);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return true;
            if (errno == EINTR)
                continue;
            return fail_from(s, from_loop, "", strerror(errno));
        }
        progress(s);
    }
    return true;
}

static bool write_tls(struct sock *s, bool from_loop)
{
    while (evbuffer_get_length(s->out) > 0) {
        /* One record per write: chains of a few bytes each would each
         * become a record and a system call of their own. */
        size_t len = evbuffer_get_length(s->out);
        if (len > TLS_RECORD)
            len = TLS_RECORD;
        const unsigned char *data = evbuffer_pullup(s->out, (ev_ssize_t)len);
        if (!data)
            return fail_from(s, from_loop, "out of memory", "");
        ERR_clear_error();
        int n = SSL_write(s->ssl, data, (int)len);
        if (n > 0) {
            evbuffer_drain(s->out, (size_t)n);
            progress(s);
            continue;
        }
        int saved = errno;
        switch (SSL_get_error(s->ssl, n)) {
        case SSL_ERROR_WANT_WRITE:
            return true;
        case SSL_ERROR_WANT_READ:
            s->write_wants_read = true;
            update_reading(s);
            return true;
        default: {
            char buf[256];
            return fail_from(s, from_loop, "", tls_failure(buf, sizeof(buf), saved));
        }
        }
    }
    return true;
}

/* Reports SOCK_DRAINED and SOCK_CLOSED as the output empties. */
static bool written(struct sock *s, bool from_loop)
{
    size_t left = sock_unsent(s);

    if (s->above_high && left <= s->low) {
        s->above_high = false;
        if (!emit(s, SOCK_DRAINED, from_loop))
            return false;
    }
    if (s->state == SOCK_CLOSING && left == 0) {
        die(s);
        return emit(s, SOCK_CLOSED, from_loop);
    }
    return true;
}

static void send_output(struct sock *s);

/* Writes what it can; waits for writability for the rest. Through the
 * ring, the send goes with the loop's next submit. */
static bool write_some(struct sock *s, bool from_loop)
{
    if (s->ring) {
        send_output(s);
        return true;
    }
    if (!(s->ssl ? write_tls(s, from_loop) : write_plain(s, from_loop)))
        return false;
    if (s->state == SOCK_DEAD)
        return true;
    set_interest(s->wev, &s->writing, evbuffer_get_length(s->out) > 0 || s->read_wants_write);
    return written(s, from_loop);
}

/* ---- through the ring -------------------------------------------------- */

/* A sock freed with operations in flight goes when the last one ends. */
static bool orphan_done(struct sock *s)
{
    if (!s->orphaned)
        return false;
    if (!s->receiving && !s->sending)
        really_free(s);
    return true;
}

/* A sock leaving the ring goes on with plain calls once neither its
 * receive nor a send is in flight: the read event takes over, and what the
 * last send left, with the output that waited behind it, is written. */
static void leave_when_idle(struct sock *s, bool from_loop)
{
    if (!s->leaving || s->receiving || s->sending)
        return;
    s->leaving = false;
    if (s->state != SOCK_OPEN && s->state != SOCK_CLOSING)
        return;
    s->ring = NULL;
    evbuffer_prepend_buffer(s->out, s->flight);
    update_reading(s);
    write_some(s, from_loop);
}

static void receive(struct sock *s)
{
    struct io_uring_sqe *sqe = ring_sqe(s->ring, &s->recv_op);

    ring_prep_recv(s->ring, sqe, s->fd);
    s->receiving = true;
}

/* Received bytes go to the input, or under TLS to OpenSSL. */
static bool take_received(struct sock *s, const void *data, size_t len)
{
    if (!s->ssl)
        return evbuffer_add(s->in, data, len) == 0;
    s->tls_held = true;
    return evbuffer_add(s->sealed_in, data, len) == 0;
}

/* TLS through the ring: decrypts what arrived, as far as the input has
 * room (the rest waits in OpenSSL, tls_held set). The end of the stream is
 * reported once everything before it has been read. False when the sock
 * is gone. */
static bool open_received(struct sock *s)
{
    if (!s->paused && !read_some(s))
        return false;
    resume_reading(s);
    return true;
}

/* A receive's completion; false when the sock may be gone. */
static bool take_completion(struct sock *s, int res, unsigned flags)
{
    bool added = false;

    if (!(flags & IORING_CQE_F_MORE)) {
        s->receiving = false;
        s->stopping = false;
    }
    if (flags & IORING_CQE_F_BUFFER) {
        if (s->state == SOCK_OPEN && !s->orphaned && res > 0)
            added = take_received(s, ring_received(s->ring, flags), (size_t)res);
        ring_recycle(s->ring, flags);
    }
    if (orphan_done(s))
        return false;
    if (s->state != SOCK_OPEN)
        return true;
    if (res == -ENOBUFS || res == -ECANCELED) {
        /* Every buffer was taken in this turn (they are back now), or
         * reading stopped for a while: it goes on if it should. */
        update_reading(s);
        return true;
    }
    if (res < 0)
        return fail(s, "", strerror(-res));
    if (res == 0 && s->ssl) {
        /* OpenSSL reports the end after the records before it. */
        s->tls_ended = s->tls_held = true;
        return open_received(s);
    }
    if (res == 0) {
        die(s);
        return report(s, SOCK_EOF);
    }
    if (!added)
        return fail(s, "out of memory", "");
    progress(s);
    if (s->ssl)
        return open_received(s);
    if (s->paused) {
        s->unreported = true;
        return true;
    }
    if (!report(s, SOCK_READ))
        return false;
    update_reading(s);
    return true;
}

static void received(struct ring_op *op, int res, unsigned flags)
{
    struct sock *s = SOCK_OF(op, recv_op);

    if (take_completion(s, res, flags))
        leave_when_idle(s, true);
}

/* Moves what the next send carries to flight: the output, or under TLS
 * the records it becomes (which never block here) after whatever OpenSSL
 * wrote before them. */
static bool fill_flight(struct sock *s)
{
    struct evbuffer *from = s->out;

    if (s->ssl) {
        if (!write_tls(s, false) || s->state == SOCK_DEAD)
            return false;
        from = s->sealed_out;
    }
    if (evbuffer_add_buffer(s->flight, from) == 0)
        return true;
    fail_from(s, false, "out of memory", "");
    return false;
}

/* Sends the output, unless a send is in flight (its completion sends on)
 * or the sock is leaving the ring (the output then waits for plain calls). */
static void send_output(struct sock *s)
{
    if (s->sending || s->leaving || (s->state != SOCK_OPEN && s->state != SOCK_CLOSING))
        return;
    if (evbuffer_get_length(s->flight) == 0 && !fill_flight(s))
        return;
    size_t len = evbuffer_get_length(s->flight);
    if (len == 0)
        return;
    struct evbuffer_iovec *v = (struct evbuffer_iovec *)s->iov;
    int n = evbuffer_peek(s->flight, (ev_ssize_t)len, NULL, v, SEND_EXTENTS);
    struct io_uring_sqe *sqe = ring_sqe(s->ring, &s->send_op);
    if (n == 1) {
        io_uring_prep_send(sqe, s->fd, s->iov[0].iov_base, s->iov[0].iov_len, MSG_NOSIGNAL);
    } else {
        s->msg = (struct msghdr){ .msg_iov = s->iov,
                                  .msg_iovlen = (size_t)(n < SEND_EXTENTS ? n : SEND_EXTENTS) };
        io_uring_prep_sendmsg(sqe, s->fd, &s->msg, MSG_NOSIGNAL);
    }
    s->sending = true;
}

static void sent(struct ring_op *op, int res, unsigned flags)
{
    struct sock *s = SOCK_OF(op, send_op);
    (void)flags;

    s->sending = false;
    if (orphan_done(s) || s->state == SOCK_DEAD)
        return;
    if (res < 0) {
        fail(s, "", strerror(-res));
        return;
    }
    evbuffer_drain(s->flight, (size_t)res);
    progress(s);
    if (s->leaving && !s->receiving) {
        leave_when_idle(s, true);
        return;
    }
    send_output(s);
    written(s, true);
}

/* ---- the handshake ----------------------------------------------------- */

static bool handshake(struct sock *s)
{
    ERR_clear_error();
    int r = SSL_do_handshake(s->ssl);

    if (r == 1) {
        s->state = SOCK_OPEN;
        set_interest(s->wev, &s->writing, false);
        update_reading(s);
        progress(s);
        if (!report(s, SOCK_CONNECTED))
            return false;
        /* The peer may have sent data with its last handshake flight. */
        if (s->state == SOCK_OPEN && !read_some(s))
            return false;
        return s->state != SOCK_OPEN || evbuffer_get_length(s->out) == 0 || write_some(s, true);
    }
    int saved = errno;
    switch (SSL_get_error(s->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        set_interest(s->wev, &s->writing, false);
        return true;
    case SSL_ERROR_WANT_WRITE:
        set_interest(s->wev, &s->writing, true);
        return true;
    default: {
        char buf[256];
        return fail(s, "TLS handshake failed: ", tls_failure(buf, sizeof(buf), saved));
    }
    }
}

/* ---- events ------------------------------------------------------------ */

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct sock *s = arg;
    (void)fd;
    (void)what;

    switch (s->state) {
    case SOCK_HANDSHAKE:
        handshake(s);
        return;
    case SOCK_OPEN:
        if (s->write_wants_read) {
            s->write_wants_read = false;
            if (!write_some(s, true))
                return;
        }
        if (!read_some(s))
            return;
        break;
    default:
        break;
    }
    /* A TLS record may hold more than fit: read on once there is room. */
    resume_reading(s);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    struct sock *s = arg;
    (void)what;

    switch (s->state) {
    case SOCK_CONNECTING: {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err) {
            fail(s, "", strerror(err));
            return;
        }
        s->state = SOCK_OPEN;
        set_interest(s->wev, &s->writing, false);
        update_reading(s);
        progress(s);
        report(s, SOCK_CONNECTED);
        return;
    }
    case SOCK_HANDSHAKE:
        handshake(s);
        return;
    case SOCK_OPEN:
    case SOCK_CLOSING:
        if (s->read_wants_write) {
            s->read_wants_write = false;
            if (!read_some(s))
                return;
        }
        write_some(s, true);
        return;
    case SOCK_DEAD:
        set_interest(s->wev, &s->writing, false);
        return;
    }
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct sock *s = arg;
    (void)fd;
    (void)what;

    if (s->state == SOCK_CLOSING) {
        die(s);
        report(s, SOCK_CLOSED);
        return;
    }
    report(s, SOCK_TIMEOUT);
}

/* ---- the interface ----------------------------------------------------- */

static bool make_events(struct sock *s)
{
    if (s->rev)
        event_free(s->rev);
    if (s->wev)
        event_free(s->wev);
    s->reading = s->writing = false;
    s->rev = event_new(s->base, s->fd, EV_READ | EV_PERSIST, on_readable, s);
    s->wev = event_new(s->base, s->fd, EV_WRITE | EV_PERSIST, on_writable, s);
    return s->rev && s->wev;
}

struct sock *sock_new(struct event_base *base, evutil_socket_t fd, sock_cb cb, void *arg)
{
    struct sock *s = calloc(1, sizeof(*s));

    if (!s) {
        if (fd >= 0)
            evutil_closesocket(fd);
        return NULL;
    }
    s->base = base;
    s->fd = fd;
    s->cb = cb;
    s->arg = arg;
    s->read_limit = READ_CHUNK;
    s->high = SIZE_MAX;
    s->state = fd >= 0 ? SOCK_OPEN : SOCK_DEAD;
    s->in = evbuffer_new();
    s->out = evbuffer_new();
    s->timer = evtimer_new(base, on_timeout, s);
    s->notify = event_new(base, -1, 0, on_notify, s);
    s->flight = evbuffer_new();
    s->recv_op.done = received;
    s->send_op.done = sent;
    s->drained = s->in ? evbuffer_add_cb(s->in, input_drained, s) : NULL;
    if (!s->drained || !s->out || !s->flight || !s->timer || !s->notify || (fd >= 0 && !make_events(s))) {
        really_free(s);
        return NULL;
    }
    update_reading(s);
    return s;
}

bool sock_connect(struct sock *s, const struct sockaddr *addr, int addrlen)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return false;
    if (connect(fd, addr, (socklen_t)addrlen) != 0 && errno != EINPROGRESS) {
        int saved = errno;
        close(fd);
        errno = saved;
        return false;
    }
    if (s->fd >= 0)
        evutil_closesocket(s->fd);
    s->fd = fd;
    if (!make_events(s)) {
        errno = ENOMEM;
        return false;
    }
    /* Writable means connected, or failed: on_writable tells which. */
    s->state = SOCK_CONNECTING;
    set_interest(s->wev, &s->writing, true);
    progress(s);
    return true;
}

/* ---- TLS through the ring ---------------------------------------------- */

/* OpenSSL's side of a sock's TLS through the ring: it reads the records
 * the receives brought (sealed_in) and writes records to send (sealed_out).
 * Evbuffers rather than memory BIOs: their chains are freed as they are
 * drained, where a memory BIO keeps the size of the largest burst for the
 * rest of the session, and a record moves to flight without a copy. */
static int sealed_read(BIO *bio, char *data, int cap)
{
    struct sock *s = BIO_get_data(bio);
    int got = evbuffer_remove(s->sealed_in, data, (size_t)cap);

    BIO_clear_retry_flags(bio);
    if (got > 0 || s->tls_ended)
        return got > 0 ? got : 0;
    BIO_set_retry_read(bio);
    return -1;
}

static int sealed_write(BIO *bio, const char *data, int len)
{
    struct sock *s = BIO_get_data(bio);

    BIO_clear_retry_flags(bio);
    return evbuffer_add(s->sealed_out, data, (size_t)len) == 0 ? len : -1;
}

/* Of the controls, TLS over a stream asks for a flush after its writes,
 * which have all gone to sealed_out already, and whether a read of nothing
 * is the end of the stream (else it is an error). */
static long sealed_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    struct sock *s = BIO_get_data(bio);
    (void)num;
    (void)ptr;

    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_EOF:
        return s->tls_ended && evbuffer_get_length(s->sealed_in) == 0;
    default:
        return 0;
    }
}

/* A BIO method of type (a source/sink or a filter) with these callbacks
 * (destroy may be NULL); NULL when out of memory. Made once per process. */
static BIO_METHOD *new_bio_method(int type, const char *name,
                                  int (*read)(BIO *, char *, int),
                                  int (*write)(BIO *, const char *, int),
                                  long (*ctrl)(BIO *, int, long, void *),
                                  int (*destroy)(BIO *))
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | type, name);

    if (m && BIO_meth_set_read(m, read) && BIO_meth_set_write(m, write) &&
        BIO_meth_set_ctrl(m, ctrl) && (!destroy || BIO_meth_set_destroy(m, destroy)))
        return m;
    BIO_meth_free(m);
    return NULL;
}

static BIO_METHOD *sealed_method;

static void make_sealed_method(void)
{
    sealed_method = new_bio_method(BIO_TYPE_SOURCE_SINK, "idemproxy ring", sealed_read,
                                   sealed_write, sealed_ctrl, NULL);
}

/* OpenSSL goes on through the sealed buffers. What it read ahead stays in
 * OpenSSL, not in the BIO it replaces, and is read on the next turn. */
static bool tls_to_ring(struct sock *s)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    BIO *bio;

    pthread_once(&once, make_sealed_method);
    if (!sealed_method || !(bio = BIO_new(sealed_method)))
        return false;
    s->sealed_in = evbuffer_new();
    s->sealed_out = evbuffer_new();
    if (!s->sealed_in || !s->sealed_out) {
        BIO_free(bio);
        if (s->sealed_in)
            evbuffer_free(s->sealed_in);
        if (s->sealed_out)
            evbuffer_free(s->sealed_out);
        s->sealed_in = s->sealed_out = NULL;
        return false;
    }
    BIO_set_data(bio, s);
    BIO_set_init(bio, 1);
    SSL_set_bio(s->ssl, bio, bio);
    s->tls_held = SSL_has_pending(s->ssl);
    return true;
}

bool sock_use_ring(struct sock *s, struct ring *r)
{
    if (s->ring && !s->leaving)
        return true;
    if (!s->ring) {
        if (!r || s->state != SOCK_OPEN)
            return false;
        /* OpenSSL must be asked again with the write it could not finish. */
        if (s->ssl && (s->writing || s->write_wants_read || !tls_to_ring(s)))
            return false;
        set_interest(s->rev, &s->reading, false);
        set_interest(s->wev, &s->writing, false);
        s->ring = r;
    }
    /* A sock still leaving stays: its receive is armed again once its
     * cancel ends, and the output that waited goes now. */
    s->leaving = false;
    resume_reading(s);
    send_output(s);
    return true;
}

bool sock_leave_ring(struct sock *s)
{
    if (!s->ring || s->leaving)
        return true;
    if (s->ssl || s->state != SOCK_OPEN)
        return false;
    s->leaving = true;
    update_reading(s);
    leave_when_idle(s, false);
    return true;
}

/* ---- direct TLS ------------------------------------------------------- */

/* A client that opens with its TLS handshake, without SSLRequest, has had
 * the first bytes of it read as plaintext. A filter in front of the
 * socket's BIO gives OpenSSL those first, then passes everything through. */
static int early_read(BIO *bio, char *data, int cap)
{
    struct evbuffer *early = BIO_get_data(bio);

    BIO_clear_retry_flags(bio);
    if (evbuffer_get_length(early) > 0)
        return evbuffer_remove(early, data, (size_t)cap);
    int got = BIO_read(BIO_next(bio), data, cap);
    BIO_copy_next_retry(bio);
    return got;
}

static int early_write(BIO *bio, const char *data, int len)
{
    BIO_clear_retry_flags(bio);
    int put = BIO_write(BIO_next(bio), data, len);
    BIO_copy_next_retry(bio);
    return put;
}

static long early_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    struct evbuffer *early = BIO_get_data(bio);

    if (cmd == BIO_CTRL_PENDING && evbuffer_get_length(early) > 0)
        return (long)evbuffer_get_length(early);
    return BIO_ctrl(BIO_next(bio), cmd, num, ptr);
}

static int early_destroy(BIO *bio)
{
    struct evbuffer *early = BIO_get_data(bio);

    if (early)
        evbuffer_free(early);
    BIO_set_data(bio, NULL);
    return 1;
}

static BIO_METHOD *early_method;

static void make_early_method(void)
{
    early_method = new_bio_method(BIO_TYPE_FILTER, "idemproxy early", early_read, early_write,
                                  early_ctrl, early_destroy);
}

/* ssl reads the bytes in s->in (moved out of it) before the socket's. */
static bool read_early_first(struct sock *s, SSL *ssl)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    BIO *filter = NULL, *reader = NULL, *writer = NULL;
    struct evbuffer *early = NULL;

    pthread_once(&once, make_early_method);
    if (!early_method || !(filter = BIO_new(early_method)) ||
        !(reader = BIO_new_socket((int)s->fd, BIO_NOCLOSE)) ||
        !(writer = BIO_new_socket((int)s->fd, BIO_NOCLOSE)) || !(early = evbuffer_new()) ||
        evbuffer_add_buffer(early, s->in) != 0) {
        if (early)
            evbuffer_free(early);
        BIO_free(filter);
        BIO_free(reader);
        BIO_free(writer);
        return false;
    }
    BIO_set_data(filter, early);
    BIO_set_init(filter, 1);
    SSL_set_bio(ssl, BIO_push(filter, reader), writer);
    return true;
}

bool sock_start_tls(struct sock *s, SSL *ssl, bool accept)
{
    bool direct = accept && evbuffer_get_length(s->in) > 0;

    if (s->ring || s->ssl || s->state != SOCK_OPEN ||
        !(direct ? read_early_first(s, ssl) : SSL_set_fd(ssl, (int)s->fd))) {
        SSL_free(ssl);
        return false;
    }
    s->ssl = ssl;
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* One read takes whole records, and the next ones already here:
     * without, OpenSSL reads each record's header and body apart. */
    SSL_set_read_ahead(ssl, 1);
    /* A peer that closes without close_notify ends the stream, nothing worse. */
    SSL_set_options(ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (accept)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    s->state = SOCK_HANDSHAKE;
    update_reading(s);
    /* The first step from the loop, not from under the caller. */
    event_active(accept ? s->rev : s->wev, accept ? EV_READ : EV_WRITE, 0);
    progress(s);
    return true;
}

SSL *sock_ssl(const struct sock *s)
{
    return s->ssl;
}

struct evbuffer *sock_input(struct sock *s)
{
    return s->in;
}

struct evbuffer *sock_output(struct sock *s)
{
    return s->out;
}

evutil_socket_t sock_fd(const struct sock *s)
{
    return s->fd;
}

size_t sock_unsent(const struct sock *s)
{
    size_t sealed = s->sealed_out ? evbuffer_get_length(s->sealed_out) : 0;

    return evbuffer_get_length(s->out) + evbuffer_get_length(s->flight) + sealed;
}

bool sock_has_arrived(const struct sock *s)
{
    int queued = 0;

    if (evbuffer_get_length(s->in) > 0 || (s->ssl && tls_has_more(s)))
        return true;
    if (s->ring && s->receiving && ring_holds_data(s->ring, &s->recv_op))
        return true;
    return s->fd >= 0 && ioctl(s->fd, FIONREAD, &queued) == 0 && queued > 0;
}

void sock_flush(struct sock *s)
{
    /* Blocked: the write event carries on. Connecting or handshaking: the
     * output waits for the end of it. */
    if (!s->writing && (s->state == SOCK_OPEN || s->state == SOCK_CLOSING))
        write_some(s, false);
}

void sock_set_read_limit(struct sock *s, size_t limit)
{
    s->read_limit = limit < READ_CHUNK ? READ_CHUNK : limit;
    resume_reading(s);
}

void sock_pause_reading(struct sock *s, bool paused)
{
    s->paused = paused;
    resume_reading(s);
}

void sock_set_write_marks(struct sock *s, size_t low, size_t high)
{
    s->low = low;
    s->high = high;
}

bool sock_output_full(struct sock *s)
{
    if (sock_unsent(s) < s->high)
        return false;
    s->above_high = true;
    return true;
}

void sock_set_timeout(struct sock *s, int seconds)
{
    s->timeout = seconds;
    if (seconds > 0)
        progress(s);
    else
        event_del(s->timer);
}

const char *sock_error(const struct sock *s)
{
    return s->error[0] ? s->error : "connection closed";
}

void sock_close_flushed(struct sock *s, int seconds)
{
    s->paused = true;
    if (s->state == SOCK_OPEN)
        s->state = SOCK_CLOSING;
    update_reading(s);
    s->timeout = seconds;
    progress(s);
    if (s->state != SOCK_CLOSING || sock_unsent(s) == 0) {
        die(s);
        emit(s, SOCK_CLOSED, false);
        return;
    }
    write_some(s, false);
}

void sock_set_callback(struct sock *s, sock_cb cb, void *arg)
{
    s->cb = cb;
    s->arg = arg;
}

void sock_free(struct sock *s)
{
    if (!s)
        return;
    if (s->busy) {
        s->dying = true;
        silence(s);
        return;
    }
    really_free(s);
}
