/*
 * Unit tests for sock, over socket pairs in this process: a sock on one
 * end, the other end a plain descriptor the test reads and writes itself,
 * or a second sock for the TLS tests (a key and certificate made here).
 *
 * What the connection code relies on: a flush writes at once, reading
 * stops at the limit and while paused, a full output always reports
 * SOCK_DRAINED once it empties, a close writes out everything first, and
 * no callback ever runs under the call that caused it. The same again
 * through an io_uring (ring.h), where the kernel allows one.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "ring.h"
#include "sock.h"

struct seen {
    int count[SOCK_CLOSED + 1];
    bool in_call;         /* the test is inside a sock_ call */
    bool called_under;    /* a callback ran while it was */
    bool free_at_end;     /* the callback frees the sock at SOCK_EOF or SOCK_ERROR */
    struct sock *s;
};

static void record(struct sock *s, enum sock_event event, void *arg)
{
    struct seen *seen = arg;

    seen->count[event]++;
    if (seen->in_call)
        seen->called_under = true;
    if ((event == SOCK_EOF || event == SOCK_ERROR) && seen->free_at_end) {
        sock_free(s);
        seen->s = NULL;
    }
}

struct pair {
    struct event_base *base;
    struct ring *ring;
    struct sock *s;
    int peer;
    struct seen seen;
};

static int pair_of(int type, void **state)
{
    struct pair *p = calloc(1, sizeof(*p));
    int fds[2];

    if (!p || socketpair(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0)
        return -1;
    p->base = event_base_new();
    p->s = sock_new(p->base, fds[0], record, &p->seen);
    p->seen.s = p->s;
    p->peer = fds[1];
    *state = p;
    return p->base && p->s ? 0 : -1;
}

static int pair_up(void **state)
{
    return pair_of(SOCK_STREAM, state);
}

static int pair_down(void **state)
{
    struct pair *p = *state;

    sock_free(p->seen.s);
    /* Runs what a freed sock left in flight: the sanitizer build sees a
     * sock that is never freed. */
    ring_free(p->ring);
    if (p->peer >= 0)
        close(p->peer);
    event_base_free(p->base);
    free(p);
    return 0;
}

/* A ring on base, or NULL (and why on the output) where io_uring is not
 * allowed: the ring variants of the tests then run without one, or skip. */
static struct ring *try_ring(struct event_base *base)
{
    char why[160];
    struct ring *r = ring_new(base, why, sizeof(why));

    if (!r)
        print_message("io_uring not available: %s\n", why);
    return r;
}

/* The sock reads and writes through a ring. */
static int ring_pair_up(void **state)
{
    if (pair_up(state) != 0)
        return -1;
    struct pair *p = *state;
    p->ring = try_ring(p->base);
    return !p->ring || sock_use_ring(p->s, p->ring) ? 0 : -1;
}

#define NEED_RING(p)      \
    do {                  \
        if (!(p)->ring)   \
            skip();       \
    } while (0)

/* Through a ring, a completion may take one turn to be submitted and
 * another to be collected. */
static void turn(struct pair *p)
{
    for (int i = 0; i < (p->ring ? 3 : 1); i++)
        event_base_loop(p->base, EVLOOP_NONBLOCK);
}

/* Byte i of a long test stream, so order and loss both show. */
static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 7 + i / 251);
}

static void add_pattern(struct evbuffer *b, size_t from, size_t len)
{
    unsigned char chunk[4096];

    while (len > 0) {
        size_t n = len < sizeof(chunk) ? len : sizeof(chunk);
        for (size_t i = 0; i < n; i++)
            chunk[i] = pattern(from + i);
        evbuffer_add(b, chunk, n);
        from += n;
        len -= n;
    }
}

/* Checks len bytes against the pattern from *at, and moves *at past them. */
static void check_pattern(const unsigned char *bytes, size_t len, size_t *at)
{
    for (size_t i = 0; i < len; i++, (*at)++)
        if (bytes[i] != pattern(*at))
            fail_msg("byte %zu differs", *at);
}

/* Takes everything the input holds, checked against the pattern from *at. */
static size_t take_pattern(struct evbuffer *in, size_t *at)
{
    size_t n = evbuffer_get_length(in);

    check_pattern(evbuffer_pullup(in, -1), n, at);
    evbuffer_drain(in, n);
    return n;
}

/* Reads what the peer end has, up to most bytes; checks it against the
 * pattern from *at. */
static size_t drain_peer_most(int fd, size_t *at, size_t most)
{
    unsigned char buf[65536];
    size_t total = 0;
    ssize_t n;

    while (total < most) {
        size_t want = most - total < sizeof(buf) ? most - total : sizeof(buf);
        if ((n = read(fd, buf, want)) <= 0)
            break;
        check_pattern(buf, (size_t)n, at);
        total += (size_t)n;
    }
    return total;
}

static size_t drain_peer(int fd, size_t *at)
{
    return drain_peer_most(fd, at, SIZE_MAX);
}

static void test_flush_writes_at_once(void **state)
{
    struct pair *p = *state;
    char buf[16];

    evbuffer_add(sock_output(p->s), "hello", 5);
    p->seen.in_call = true;
    sock_flush(p->s);
    p->seen.in_call = false;
    /* No turn of the loop: the bytes are in the kernel already. */
    assert_int_equal(read(p->peer, buf, sizeof(buf)), 5);
    assert_memory_equal(buf, "hello", 5);
    assert_int_equal(evbuffer_get_length(sock_output(p->s)), 0);
    assert_false(p->seen.called_under);
}

/* A datagram-like pair shows each send as one record: an output of many
 * extents (a rewritten message and the rest of a batch) must leave in one
 * system call, and past the extents one call carries, in order. */
static int seqpacket_up(void **state)
{
    return pair_of(SOCK_SEQPACKET, state);
}

static void test_extents_go_in_one_send(void **state)
{
    struct pair *p = *state;
    static const char *const parts[] = { "Parse", "+Bind", "+Execute", "+Sync" };
    char buf[64];

    for (size_t i = 0; i < 4; i++)
        evbuffer_add_reference(sock_output(p->s), parts[i], strlen(parts[i]), NULL, NULL);
    assert_int_equal(evbuffer_peek(sock_output(p->s), -1, NULL, NULL, 0), 4);
    sock_flush(p->s);
    ssize_t n = recv(p->peer, buf, sizeof(buf), 0);
    assert_int_equal(n, 23);
    assert_memory_equal(buf, "Parse+Bind+Execute+Sync", 23);
    assert_int_equal(recv(p->peer, buf, sizeof(buf), 0), -1);
}

static void test_many_extents_all_go(void **state)
{
    struct pair *p = *state;
    static char bytes[200];
    char buf[256];
    size_t at = 0;
    int records = 0;

    for (size_t i = 0; i < sizeof(bytes); i++) {
        bytes[i] = (char)pattern(i);
        evbuffer_add_reference(sock_output(p->s), bytes + i, 1, NULL, NULL);
    }
    sock_flush(p->s);
    assert_int_equal(evbuffer_get_length(sock_output(p->s)), 0);
    ssize_t n;
    while ((n = recv(p->peer, buf, sizeof(buf), 0)) > 0) {
        assert_memory_equal(buf, bytes + at, (size_t)n);
        at += (size_t)n;
        records++;
    }
    assert_int_equal(at, sizeof(bytes));
    /* 64 extents a call: 200 one-byte extents take four. */
    assert_int_equal(records, 4);
}

static void test_read_reports(void **state)
{
    struct pair *p = *state;

    assert_int_equal(write(p->peer, "abc", 3), 3);
    turn(p);
    assert_int_equal(p->seen.count[SOCK_READ], 1);
    assert_int_equal(evbuffer_get_length(sock_input(p->s)), 3);
    /* Nothing new: no second report. */
    turn(p);
    assert_int_equal(p->seen.count[SOCK_READ], 1);
}

/* Bytes the peer sent count as arrived wherever they wait: in the socket,
 * in a receive's completion not yet run, in the input; and no longer once
 * the caller has taken them. */
static void test_has_arrived(void **state)
{
    struct pair *p = *state;

    turn(p);
    assert_false(sock_has_arrived(p->s));
    assert_int_equal(write(p->peer, "abc", 3), 3);
    assert_true(sock_has_arrived(p->s));
    turn(p);
    assert_int_equal(evbuffer_get_length(sock_input(p->s)), 3);
    assert_true(sock_has_arrived(p->s));
    evbuffer_drain(sock_input(p->s), 3);
    assert_false(sock_has_arrived(p->s));
}

static void test_pause_holds_input(void **state)
{
    struct pair *p = *state;

    sock_pause_reading(p->s, true);
    assert_int_equal(write(p->peer, "abc", 3), 3);
    turn(p);
    assert_int_equal(p->seen.count[SOCK_READ], 0);
    sock_pause_reading(p->s, false);
    turn(p);
    assert_int_equal(p->seen.count[SOCK_READ], 1);
    assert_int_equal(evbuffer_get_length(sock_input(p->s)), 3);
}

/* Reading stops at the limit while the caller leaves the input alone; a
 * higher limit (a message the caller must hold whole) lets more in. */
static void test_read_limit(void **state)
{
    struct pair *p = *state;
    struct evbuffer *out = evbuffer_new();
    size_t limit = 64 * 1024, total = 160 * 1024, at = 0;

    add_pattern(out, 0, total);
    for (int i = 0; i < 50; i++) {
        evbuffer_write(out, p->peer);
        turn(p);
    }
    assert_int_equal(evbuffer_get_length(sock_input(p->s)), limit);
    sock_set_read_limit(p->s, 4 * limit);
    for (int i = 0; i < 50; i++) {
        evbuffer_write(out, p->peer);
        turn(p);
    }
    assert_int_equal(take_pattern(sock_input(p->s), &at), total);
    evbuffer_free(out);
}

/* A caller that pauses when sock_output_full says so is told when to
 * resume, however the output empties: here the kernel takes all of it in
 * the flush itself, with no write event ever needed. */
static void test_drained_after_full_flush(void **state)
{
    struct pair *p = *state;
    size_t at = 0;

    sock_set_write_marks(p->s, 1024, 16 * 1024);
    add_pattern(sock_output(p->s), 0, 32 * 1024);
    assert_true(sock_output_full(p->s));
    p->seen.in_call = true;
    sock_flush(p->s);
    p->seen.in_call = false;
    assert_int_equal(evbuffer_get_length(sock_output(p->s)), 0);
    assert_int_equal(p->seen.count[SOCK_DRAINED], 0);
    turn(p);
    assert_int_equal(p->seen.count[SOCK_DRAINED], 1);
    assert_int_equal(drain_peer(p->peer, &at), 32 * 1024);
    assert_false(p->seen.called_under);
}

/* The output grows past high while a write is blocked; the peer's reads
 * let it go out (through write events, or a ring's sends), and
 * SOCK_DRAINED comes once. */
static void test_drained_after_blocked_writes(void **state)
{
    struct pair *p = *state;
    size_t total = 4 * 1024 * 1024, at = 0;

    sock_set_write_marks(p->s, 64 * 1024, 256 * 1024);
    add_pattern(sock_output(p->s), 0, total / 2);
    sock_flush(p->s);
    turn(p);
    assert_true(sock_unsent(p->s) > 0);
    add_pattern(sock_output(p->s), total / 2, total / 2);
    sock_flush(p->s);
    assert_true(sock_output_full(p->s));
    for (int i = 0; i < 10000 && at < total; i++) {
        drain_peer(p->peer, &at);
        turn(p);
    }
    assert_int_equal(at, total);
    assert_int_equal(p->seen.count[SOCK_DRAINED], 1);
    assert_false(sock_output_full(p->s));
    assert_int_equal(sock_unsent(p->s), 0);
}

static void test_eof(void **state)
{
    struct pair *p = *state;

    assert_int_equal(write(p->peer, "xy", 2), 2);
    close(p->peer);
    p->peer = -1;
    turn(p);
    assert_int_equal(p->seen.count[SOCK_READ], 1);
    assert_int_equal(p->seen.count[SOCK_EOF], 1);
    assert_int_equal(evbuffer_get_length(sock_input(p->s)), 2);
}

/* Freeing the sock from its own callback is safe (the sanitizer build
 * would see a use after free). */
static void test_free_in_callback(void **state)
{
    struct pair *p = *state;

    p->seen.free_at_end = true;
    close(p->peer);
    p->peer = -1;
    turn(p);
    assert_int_equal(p->seen.count[SOCK_EOF], 1);
    assert_null(p->seen.s);
}

/* A close writes out all that is queued before SOCK_CLOSED, and never
 * reports under the caller, even with nothing left to write. */
static void test_close_flushed(void **state)
{
    struct pair *p = *state;
    size_t total = 2 * 1024 * 1024, at = 0;

    add_pattern(sock_output(p->s), 0, total);
    p->seen.in_call = true;
    sock_close_flushed(p->s, 10);
    p->seen.in_call = false;
    for (int i = 0; i < 10000 && !p->seen.count[SOCK_CLOSED]; i++) {
        drain_peer(p->peer, &at);
        turn(p);
    }
    drain_peer(p->peer, &at);
    assert_int_equal(at, total);
    assert_int_equal(p->seen.count[SOCK_CLOSED], 1);
    assert_false(p->seen.called_under);
}

static void test_close_with_nothing_left(void **state)
{
    struct pair *p = *state;

    p->seen.in_call = true;
    sock_close_flushed(p->s, 10);
    p->seen.in_call = false;
    assert_int_equal(p->seen.count[SOCK_CLOSED], 0);
    turn(p);
    assert_int_equal(p->seen.count[SOCK_CLOSED], 1);
    assert_false(p->seen.called_under);
}

/* A write to a peer that is gone fails from the loop, not in the flush. */
static void test_write_error_reported_from_loop(void **state)
{
    struct pair *p = *state;

    close(p->peer);
    p->peer = -1;
    sock_pause_reading(p->s, true);
    evbuffer_add(sock_output(p->s), "lost", 4);
    p->seen.in_call = true;
    sock_flush(p->s);
    p->seen.in_call = false;
    assert_int_equal(p->seen.count[SOCK_ERROR], 0);
    turn(p);
    assert_int_equal(p->seen.count[SOCK_ERROR], 1);
    assert_false(p->seen.called_under);
    assert_non_null(strstr(sock_error(p->s), "pipe"));
}

/* ---- through a ring ---------------------------------------------------- */

/* A flush queues the send; the loop's next turn submits it, together with
 * the receive that is already waiting. */
static void test_ring_both_ways(void **state)
{
    struct pair *p = *state;
    char buf[16];

    NEED_RING(p);
    assert_int_equal(write(p->peer, "abc", 3), 3);
    evbuffer_add(sock_output(p->s), "hello", 5);
    p->seen.in_call = true;
    sock_flush(p->s);
    p->seen.in_call = false;
    assert_int_equal(sock_unsent(p->s), 5);
    turn(p);
    assert_int_equal(p->seen.count[SOCK_READ], 1);
    assert_int_equal(evbuffer_get_length(sock_input(p->s)), 3);
    assert_int_equal(read(p->peer, buf, sizeof(buf)), 5);
    assert_memory_equal(buf, "hello", 5);
    assert_int_equal(sock_unsent(p->s), 0);
    assert_false(p->seen.called_under);
}

/* What arrives before the receive is cancelled still lands, so the input
 * may pass the limit; then reading stops, and the writer is left blocked,
 * until the caller takes from the input. */
static void test_ring_read_limit(void **state)
{
    struct pair *p = *state;
    struct evbuffer *out = evbuffer_new();
    size_t limit = 64 * 1024, total = 4 * 1024 * 1024, at = 0;

    NEED_RING(p);
    add_pattern(out, 0, total);
    for (int i = 0; i < 50; i++) {
        evbuffer_write(out, p->peer);
        turn(p);
    }
    size_t held = evbuffer_get_length(sock_input(p->s));
    assert_true(held >= limit && held < 1024 * 1024);
    assert_true(evbuffer_get_length(out) > total / 2);
    for (int i = 0; i < 10000 && at < total; i++) {
        take_pattern(sock_input(p->s), &at);
        evbuffer_write(out, p->peer);
        turn(p);
    }
    assert_int_equal(at, total);
    evbuffer_free(out);
}

/* More sockets than the ring has receive buffers, all with data waiting:
 * the receives that find no buffer end and are armed again, so every sock
 * reads all its peer sent, in that turn and in the next round. */
static void test_ring_more_sockets_than_buffers(void **state)
{
    struct pair *p = *state;
    enum { SOCKS = 200, CHUNK = 1000 };
    struct sock *socks[SOCKS];
    struct seen seen[SOCKS];
    int peers[SOCKS];
    unsigned char chunk[CHUNK];

    NEED_RING(p);
    memset(seen, 0, sizeof(seen));
    for (int i = 0; i < SOCKS; i++) {
        int fds[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
        socks[i] = sock_new(p->base, fds[0], record, &seen[i]);
        assert_non_null(socks[i]);
        assert_true(sock_use_ring(socks[i], p->ring));
        peers[i] = fds[1];
    }
    turn(p);
    for (int round = 1; round <= 2; round++) {
        for (int i = 0; i < SOCKS; i++) {
            memset(chunk, i + round, sizeof(chunk));
            assert_int_equal(write(peers[i], chunk, sizeof(chunk)), CHUNK);
        }
        for (int t = 0; t < 20; t++)
            turn(p);
        for (int i = 0; i < SOCKS; i++) {
            struct evbuffer *in = sock_input(socks[i]);
            assert_int_equal(evbuffer_get_length(in), CHUNK);
            assert_int_equal(evbuffer_pullup(in, -1)[CHUNK - 1], (unsigned char)(i + round));
            assert_true(seen[i].count[SOCK_READ] >= round);
            evbuffer_drain(in, CHUNK);
        }
    }
    for (int i = 0; i < SOCKS; i++) {
        sock_free(socks[i]);
        close(peers[i]);
    }
}

/* Freed with a receive and a blocked send in flight: both are cancelled,
 * the peer sees the socket close, and the memory goes with the last
 * completion. */
static void test_ring_free_in_flight(void **state)
{
    struct pair *p = *state;
    size_t at = 0;
    char buf[4096];

    NEED_RING(p);
    add_pattern(sock_output(p->s), 0, 4 * 1024 * 1024);
    sock_flush(p->s);
    turn(p);
    assert_true(sock_unsent(p->s) > 0);
    sock_free(p->s);
    p->seen.s = NULL;
    turn(p);
    drain_peer(p->peer, &at);
    assert_true(at > 0);
    assert_int_equal(read(p->peer, buf, sizeof(buf)), 0);
}

/* Off the ring and on again: a flush through plain calls writes at once,
 * through the ring it waits for the loop's submit. What arrives after the
 * receive was cancelled is read by the read event. */
static void test_ring_leave_and_return(void **state)
{
    struct pair *p = *state;
    char buf[16];

    NEED_RING(p);
    turn(p);
    assert_true(sock_leave_ring(p->s));
    turn(p);
    assert_int_equal(write(p->peer, "abc", 3), 3);
    turn(p);
    assert_int_equal(p->seen.count[SOCK_READ], 1);
    assert_int_equal(evbuffer_get_length(sock_input(p->s)), 3);
    evbuffer_add(sock_output(p->s), "plain", 5);
    sock_flush(p->s);
    assert_int_equal(sock_unsent(p->s), 0);
    assert_int_equal(read(p->peer, buf, sizeof(buf)), 5);

    assert_true(sock_use_ring(p->s, p->ring));
    evbuffer_add(sock_output(p->s), "ring", 4);
    sock_flush(p->s);
    assert_int_equal(sock_unsent(p->s), 4);
    assert_int_equal(write(p->peer, "de", 2), 2);
    turn(p);
    assert_int_equal(sock_unsent(p->s), 0);
    assert_int_equal(read(p->peer, buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "ring", 4);
    assert_int_equal(evbuffer_get_length(sock_input(p->s)), 5);
    assert_false(p->seen.called_under);
}

/* Megabytes both ways while the sock leaves the ring and comes back at
 * every turn, with receives and sends in flight, or a plain write waiting
 * for writability, at each move: nothing is lost, repeated or reordered. */
static void test_ring_moves_under_load(void **state)
{
    struct pair *p = *state;
    struct evbuffer *to_sock = evbuffer_new();
    enum { STEP = 16 * 1024 };
    size_t total = 4 * 1024 * 1024, got = 0, sent = 0;
    int moves = 0;

    NEED_RING(p);
    add_pattern(to_sock, 0, total);
    add_pattern(sock_output(p->s), 0, total);
    sock_flush(p->s);
    for (int i = 0; i < 20000 && (got < total || sent < total); i++) {
        evbuffer_write_atmost(to_sock, p->peer, STEP);
        /* Back at once, while leaving, and back after turns, once left. */
        if (i % 6 == 0 || i % 6 == 2) {
            assert_true(sock_leave_ring(p->s));
            moves++;
        } else if (i % 6 == 1 || i % 6 == 5) {
            assert_true(sock_use_ring(p->s, p->ring));
            moves++;
        }
        event_base_loop(p->base, EVLOOP_NONBLOCK);
        take_pattern(sock_input(p->s), &got);
        drain_peer_most(p->peer, &sent, STEP);
    }
    assert_int_equal(got, total);
    assert_int_equal(sent, total);
    assert_int_equal(sock_unsent(p->s), 0);
    assert_true(moves >= (int)(total / STEP) / 2);
    assert_false(p->seen.called_under);
    evbuffer_free(to_sock);
}

/* The moves mixed at random with what the connection code does meanwhile:
 * pausing and resuming (backpressure), read limits, flushes, partial reads
 * on both sides. A fixed seed, so a failure repeats. Everything arrives,
 * once and in order, and once the moves stop and reading resumes the rest
 * follows. */
static void test_ring_moves_at_random(void **state)
{
    struct pair *p = *state;
    struct evbuffer *to_sock = evbuffer_new();
    size_t total = 2 * 1024 * 1024, got = 0, sent = 0, queued = 0;
    unsigned seed = 12345;
    bool paused = false;

    NEED_RING(p);
    add_pattern(to_sock, 0, total);
    for (int i = 0; i < 20000 && (got < total || sent < total); i++) {
        seed = seed * 1103515245u + 12345u;
        unsigned r = (seed >> 16) & 0x7fff;
        switch (r % 8) {
        case 0:
            assert_true(sock_leave_ring(p->s));
            break;
        case 1:
            assert_true(sock_use_ring(p->s, p->ring));
            break;
        case 2:
            paused = !paused;
            sock_pause_reading(p->s, paused);
            break;
        case 3:
            sock_set_read_limit(p->s, 1024 + (r % 64) * 4096);
            break;
        default:
            break;
        }
        if (queued < total && r % 3 == 0) {
            size_t n = total - queued < 6000 ? total - queued : 6000;
            add_pattern(sock_output(p->s), queued, n);
            queued += n;
            sock_flush(p->s);
        }
        evbuffer_write_atmost(to_sock, p->peer, (ev_ssize_t)(r % 3) * 2048);
        event_base_loop(p->base, EVLOOP_NONBLOCK);
        if (r % 2)
            take_pattern(sock_input(p->s), &got);
        drain_peer_most(p->peer, &sent, (r % 4) * 2048);
        if (i > 15000 && paused) {
            paused = false;
            sock_pause_reading(p->s, false);
        }
    }
    assert_int_equal(got, total);
    assert_int_equal(sent, total);
    assert_int_equal(sock_unsent(p->s), 0);
    assert_false(p->seen.called_under);
    evbuffer_free(to_sock);
}

/* io_uring = auto's rule: join at 2.5 reads per sleep, leave below 2,
 * hold between, and hold when too few reads say anything. */
static void test_ring_worth_using(void **state)
{
    (void)state;
    assert_false(ring_worth_using(false, 300, 200)); /* one client: 1.5 */
    assert_false(ring_worth_using(false, 499, 200));
    assert_true(ring_worth_using(false, 500, 200));
    assert_true(ring_worth_using(false, 540, 200));  /* two: 2.7 */
    assert_true(ring_worth_using(false, 5000, 0));   /* never slept */
    assert_false(ring_worth_using(true, 300, 200));
    assert_false(ring_worth_using(true, 256, 200));
    assert_true(ring_worth_using(true, 600, 200));
    assert_true(ring_worth_using(true, 400, 200));
    assert_false(ring_worth_using(true, 399, 200));
    assert_true(ring_worth_using(true, 10, 10));     /* idle: as it was */
    assert_true(ring_worth_using(true, 200, 190));   /* a burst's goodbyes */
    assert_false(ring_worth_using(false, 10, 0));
}

/* ---- TLS -------------------------------------------------------------- */

struct tls_pair {
    struct event_base *base;
    struct ring *ring;
    struct sock *server, *client;
    struct seen server_seen, client_seen;
    SSL_CTX *server_ctx, *client_ctx;
};

/* Runs the pair's loop until cond holds (bounded: a test that never gets
 * there fails on what it asserts next). */
#define RUN_UNTIL(t, cond)                                       \
    for (int pass_ = 0; pass_ < 100000 && !(cond); pass_++)      \
        event_base_loop((t)->base, EVLOOP_NONBLOCK)

/* A hundred passes more, for whatever should, or should not, follow. */
static void settle(struct tls_pair *t)
{
    for (int i = 0; i < 100; i++)
        event_base_loop(t->base, EVLOOP_NONBLOCK);
}

/* A record's header and 8 bytes of its 64-byte body, straight into the
 * client's socket: part of a record, with no more coming. */
static void send_partial_record(struct tls_pair *t)
{
    const unsigned char part[] = { 0x17, 0x03, 0x03, 0x00, 0x40, 1, 2, 3, 4, 5, 6, 7, 8 };

    assert_int_equal(write(sock_fd(t->client), part, sizeof(part)), (ssize_t)sizeof(part));
}

/* A loop that runs a few callbacks per pass: an event that keeps making
 * itself active shows as still active after the pass, instead of keeping
 * the pass from ever ending. */
static struct event_base *limited_base(void)
{
    struct event_config *cfg = event_config_new();
    struct event_base *base = NULL;

    if (cfg && event_config_set_max_dispatch_interval(cfg, NULL, 16, 0) == 0)
        base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return base;
}

static SSL_CTX *server_context(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (!key || !cert || !ctx)
        return NULL;
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_set_pubkey(cert, key);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC,
                               (const unsigned char *)"localhost", -1, -1, 0);
    X509_set_issuer_name(cert, X509_get_subject_name(cert));
    if (!X509_sign(cert, key, EVP_sha256()) || SSL_CTX_use_certificate(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey(ctx, key) != 1)
        return NULL;
    X509_free(cert);
    EVP_PKEY_free(key);
    return ctx;
}

static int tls_pair_up(void **state)
{
    struct tls_pair *t = calloc(1, sizeof(*t));
    int fds[2];

    if (!t || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0)
        return -1;
    t->base = limited_base();
    t->server_ctx = server_context();
    t->client_ctx = SSL_CTX_new(TLS_client_method());
    t->server = sock_new(t->base, fds[0], record, &t->server_seen);
    t->client = sock_new(t->base, fds[1], record, &t->client_seen);
    if (!t->base || !t->server_ctx || !t->client_ctx || !t->server || !t->client)
        return -1;
    *state = t;
    if (!sock_start_tls(t->server, SSL_new(t->server_ctx), true) ||
        !sock_start_tls(t->client, SSL_new(t->client_ctx), false))
        return -1;
    RUN_UNTIL(t, t->server_seen.count[SOCK_CONNECTED] && t->client_seen.count[SOCK_CONNECTED]);
    return t->server_seen.count[SOCK_CONNECTED] == 1 && t->client_seen.count[SOCK_CONNECTED] == 1
               ? 0
               : -1;
}

/* Both ends go on through a ring once the handshake is done, as a
 * session's do once it has logged in. */
static int tls_ring_pair_up(void **state)
{
    if (tls_pair_up(state) != 0)
        return -1;
    struct tls_pair *t = *state;
    t->ring = try_ring(t->base);
    return !t->ring || (sock_use_ring(t->server, t->ring) && sock_use_ring(t->client, t->ring))
               ? 0
               : -1;
}

static int tls_pair_down(void **state)
{
    struct tls_pair *t = *state;

    sock_free(t->server);
    sock_free(t->client);
    ring_free(t->ring);
    SSL_CTX_free(t->server_ctx);
    SSL_CTX_free(t->client_ctx);
    event_base_free(t->base);
    free(t);
    return 0;
}

/* Megabytes both ways at once through TLS, each side reading at its own
 * limit: everything arrives, in order. */
static void test_tls_both_ways(void **state)
{
    struct tls_pair *t = *state;
    size_t total = 3 * 1024 * 1024;

    assert_non_null(sock_ssl(t->server));
    add_pattern(sock_output(t->server), 0, total);
    add_pattern(sock_output(t->client), 0, total);
    sock_flush(t->server);
    sock_flush(t->client);
    for (int i = 0; i < 100000 && (evbuffer_get_length(sock_input(t->server)) < total ||
                                   evbuffer_get_length(sock_input(t->client)) < total); i++) {
        sock_set_read_limit(t->server, evbuffer_get_length(sock_input(t->server)) + 65536);
        sock_set_read_limit(t->client, evbuffer_get_length(sock_input(t->client)) + 65536);
        event_base_loop(t->base, EVLOOP_NONBLOCK);
    }
    struct sock *ends[2] = { t->server, t->client };
    for (int e = 0; e < 2; e++) {
        size_t at = 0;
        assert_int_equal(take_pattern(sock_input(ends[e]), &at), total);
    }
}

/* Reading through TLS stops with the input at its limit and goes on once
 * the caller takes from it, whether what follows waits in the socket or
 * was read ahead by OpenSSL, where no read event would report it. */
static void test_tls_read_limit_resumes(void **state)
{
    struct tls_pair *t = *state;
    struct evbuffer *in = sock_input(t->server);
    size_t limit = 64 * 1024, record = 4096, total = limit + 2 * record, at = 0;

    /* Records that end where the limit does. OpenSSL reads the last two
     * ahead with the one before them: at the limit they wait in OpenSSL,
     * none of it decrypted (SSL_pending says 0), and the socket is empty. */
    for (size_t from = 0; from < total; from += record) {
        add_pattern(sock_output(t->client), from, record);
        sock_flush(t->client);
    }
    RUN_UNTIL(t, evbuffer_get_length(in) >= limit);
    settle(t);
    assert_int_equal(evbuffer_get_length(sock_output(t->client)), 0);
    assert_int_equal(evbuffer_get_length(in), limit);
    while (at < total) {
        take_pattern(in, &at);
        for (int i = 0; i < 10 && evbuffer_get_length(in) == 0; i++)
            event_base_loop(t->base, EVLOOP_NONBLOCK);
        if (at < total && evbuffer_get_length(in) == 0)
            fail_msg("%zu of %zu bytes arrived", at, total);
    }
}

/* A header and part of a body, and nothing more for a while: the sock
 * waits for the rest without spinning. OpenSSL counts the part as pending,
 * yet no read can make progress until more arrives; a spinning sock would
 * keep its event active, and keep its whole worker from every other. */
static void test_tls_partial_record_waits(void **state)
{
    struct tls_pair *t = *state;
    bool quiet = false;

    send_partial_record(t);
    for (int i = 0; i < 100 && !quiet; i++) {
        /* A pass that ends even while an event keeps itself active. */
        event_base_loopexit(t->base, &(struct timeval){ 0, 0 });
        event_base_loop(t->base, EVLOOP_NONBLOCK);
        quiet = event_base_get_num_events(t->base, EVENT_BASE_COUNT_ACTIVE) == 0;
    }
    assert_true(quiet);
    assert_int_equal(evbuffer_get_length(sock_input(t->server)), 0);
    assert_int_equal(t->server_seen.count[SOCK_ERROR], 0);
}

/* Part of a record has arrived too: whether it waits in the socket or, through
 * the ring, for OpenSSL, a request is under way. */
static void test_tls_has_arrived(void **state)
{
    struct tls_pair *t = *state;
    event_base_loop(t->base, EVLOOP_NONBLOCK);
    assert_false(sock_has_arrived(t->server));
    send_partial_record(t);
    assert_true(sock_has_arrived(t->server));
    assert_int_equal(evbuffer_get_length(sock_input(t->server)), 0);
}

/* TLS stays on the ring once there: OpenSSL holds records the ring
 * received, which a plain read would never see. Refused, the sock goes on
 * as before. */
static void test_tls_stays_on_ring(void **state)
{
    struct tls_pair *t = *state;

    assert_true(sock_leave_ring(t->server) == (t->ring == NULL));
    evbuffer_add(sock_output(t->client), "after", 5);
    sock_flush(t->client);
    RUN_UNTIL(t, evbuffer_get_length(sock_input(t->server)) == 5);
    assert_memory_equal(evbuffer_pullup(sock_input(t->server), -1), "after", 5);
}

/* A TLS close writes out what is queued; once the sock is freed the peer
 * sees SOCK_EOF after those bytes. */
static void test_tls_close(void **state)
{
    struct tls_pair *t = *state;

    evbuffer_add(sock_output(t->client), "bye", 3);
    sock_close_flushed(t->client, 10);
    RUN_UNTIL(t, t->client_seen.count[SOCK_CLOSED]);
    assert_int_equal(t->client_seen.count[SOCK_CLOSED], 1);
    sock_free(t->client);
    t->client = NULL;
    RUN_UNTIL(t, t->server_seen.count[SOCK_EOF]);
    assert_int_equal(t->server_seen.count[SOCK_EOF], 1);
    assert_int_equal(evbuffer_get_length(sock_input(t->server)), 3);
}

/* A sock freed by its callback as the peer's stream ends, with or without
 * a close_notify, is not touched again (the sanitizer build sees it). */
static void test_tls_free_at_end(void **state)
{
    struct tls_pair *t = *state;

    t->server_seen.free_at_end = true;
    sock_free(t->client);
    t->client = NULL;
    RUN_UNTIL(t, t->server_seen.count[SOCK_EOF]);
    assert_int_equal(t->server_seen.count[SOCK_EOF], 1);
    t->server = NULL;
}

static void test_tls_free_at_vanished_peer(void **state)
{
    struct tls_pair *t = *state;

    t->client_seen.free_at_end = true;
    assert_int_equal(shutdown(sock_fd(t->server), SHUT_RDWR), 0);
    RUN_UNTIL(t, t->client_seen.count[SOCK_EOF] + t->client_seen.count[SOCK_ERROR]);
    assert_int_equal(t->client_seen.count[SOCK_EOF] + t->client_seen.count[SOCK_ERROR], 1);
    t->client = NULL;
}

/* The peer's last words and the end of its stream, while reading is
 * paused: nothing is reported until reading resumes, then the words, then
 * the end. */
static void test_tls_end_after_data_while_paused(void **state)
{
    struct tls_pair *t = *state;

    sock_pause_reading(t->server, true);
    evbuffer_add(sock_output(t->client), "last words", 10);
    sock_close_flushed(t->client, 10);
    RUN_UNTIL(t, t->client_seen.count[SOCK_CLOSED]);
    sock_free(t->client);
    t->client = NULL;
    settle(t);
    assert_int_equal(t->server_seen.count[SOCK_READ], 0);
    assert_int_equal(t->server_seen.count[SOCK_EOF], 0);
    sock_pause_reading(t->server, false);
    RUN_UNTIL(t, t->server_seen.count[SOCK_EOF]);
    assert_int_equal(t->server_seen.count[SOCK_EOF], 1);
    assert_int_equal(t->server_seen.count[SOCK_ERROR], 0);
    assert_int_equal(evbuffer_get_length(sock_input(t->server)), 10);
    assert_memory_equal(evbuffer_pullup(sock_input(t->server), -1), "last words", 10);
}

/* After a TLS 1.3 key update that asks the other end for one too, both
 * directions go on under new keys. */
static void test_tls_key_update(void **state)
{
    struct tls_pair *t = *state;

    assert_int_equal(SSL_version(sock_ssl(t->client)), TLS1_3_VERSION);
    assert_int_equal(SSL_key_update(sock_ssl(t->client), SSL_KEY_UPDATE_REQUESTED), 1);
    evbuffer_add(sock_output(t->client), "ping", 4);
    sock_flush(t->client);
    RUN_UNTIL(t, evbuffer_get_length(sock_input(t->server)) >= 4);
    settle(t);
    assert_int_equal(evbuffer_get_length(sock_input(t->server)), 4);
    evbuffer_add(sock_output(t->server), "pong", 4);
    sock_flush(t->server);
    RUN_UNTIL(t, evbuffer_get_length(sock_input(t->client)) >= 4);
    assert_memory_equal(evbuffer_pullup(sock_input(t->client), -1), "pong", 4);
    assert_int_equal(t->server_seen.count[SOCK_ERROR] + t->client_seen.count[SOCK_ERROR], 0);
}

/* Each TLS test over the socket, and again through a ring. */
#define TLS_TESTS(setup)                                                                      \
    cmocka_unit_test_setup_teardown(test_tls_both_ways, setup, tls_pair_down),                \
        cmocka_unit_test_setup_teardown(test_tls_read_limit_resumes, setup, tls_pair_down),   \
        cmocka_unit_test_setup_teardown(test_tls_partial_record_waits, setup, tls_pair_down), \
        cmocka_unit_test_setup_teardown(test_tls_close, setup, tls_pair_down),                \
        cmocka_unit_test_setup_teardown(test_tls_free_at_end, setup, tls_pair_down),          \
        cmocka_unit_test_setup_teardown(test_tls_free_at_vanished_peer, setup, tls_pair_down),\
        cmocka_unit_test_setup_teardown(test_tls_end_after_data_while_paused, setup,          \
                                        tls_pair_down),                                       \
        cmocka_unit_test_setup_teardown(test_tls_key_update, setup, tls_pair_down),           \
        cmocka_unit_test_setup_teardown(test_tls_has_arrived, setup, tls_pair_down),         \
        cmocka_unit_test_setup_teardown(test_tls_stays_on_ring, setup, tls_pair_down)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ring_worth_using),
        cmocka_unit_test_setup_teardown(test_flush_writes_at_once, pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_extents_go_in_one_send, seqpacket_up, pair_down),
        cmocka_unit_test_setup_teardown(test_many_extents_all_go, seqpacket_up, pair_down),
        cmocka_unit_test_setup_teardown(test_read_reports, pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_has_arrived, pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_pause_holds_input, pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_read_limit, pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_drained_after_full_flush, pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_drained_after_blocked_writes, pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_eof, pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_free_in_callback, pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_close_flushed, pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_close_with_nothing_left, pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_write_error_reported_from_loop, pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_ring_both_ways, ring_pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_has_arrived, ring_pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_pause_holds_input, ring_pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_ring_read_limit, ring_pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_drained_after_blocked_writes, ring_pair_up,
                                        pair_down),
        cmocka_unit_test_setup_teardown(test_eof, ring_pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_free_in_callback, ring_pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_close_flushed, ring_pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_close_with_nothing_left, ring_pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_ring_more_sockets_than_buffers, ring_pair_up,
                                        pair_down),
        cmocka_unit_test_setup_teardown(test_ring_free_in_flight, ring_pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_ring_leave_and_return, ring_pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_ring_moves_under_load, ring_pair_up, pair_down),
        cmocka_unit_test_setup_teardown(test_ring_moves_at_random, ring_pair_up, pair_down),
        TLS_TESTS(tls_pair_up),
        TLS_TESTS(tls_ring_pair_up),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
