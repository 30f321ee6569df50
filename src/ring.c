#include "ring.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define RING_ENTRIES 4096
/* The receive buffers: one each for this many receives completing in one
 * turn (a receive that finds none is simply queued again), of the size one
 * read takes at most. */
#define RING_BUFFERS 64
#define RING_BUFFER_SIZE (32 * 1024)
#define RING_GROUP 0

struct ring {
    struct io_uring uring;
    struct event_base *base;
    int event_fd;
    struct event *ready;    /* the eventfd: completions are waiting */
    struct event *submit;   /* queued from outside a turn: submit soon */
    bool in_turn;
    bool deferred;          /* DEFER_TASKRUN: completions run when asked */
    bool submit_pending;
    unsigned inflight;
    struct io_uring_buf_ring *bufs;
    size_t bufs_len;
    unsigned char *memory; /* RING_BUFFERS of RING_BUFFER_SIZE */
};

/* Runs the completions there are; peeking also enters the kernel to run
 * the work it holds for this thread when the TASKRUN flag says so. */
static void run_completions(struct ring *r)
{
    struct io_uring_cqe *cqe;

    while (io_uring_peek_cqe(&r->uring, &cqe) == 0) {
        struct ring_op *op = io_uring_cqe_get_data(cqe);
        int res = cqe->res;
        unsigned flags = cqe->flags;
        io_uring_cqe_seen(&r->uring, cqe);
        if (!op)
            continue;
        if (!(flags & IORING_CQE_F_MORE))
            r->inflight--;
        op->done(op, res, flags);
    }
}

/* Whether an enter now would bring completions. */
static bool work_waiting(struct ring *r)
{
    unsigned sq_flags = __atomic_load_n(r->uring.sq.kflags, __ATOMIC_ACQUIRE);

    return (sq_flags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) ||
           io_uring_cq_ready(&r->uring) > 0;
}

/* Submits what is queued and runs what completed, until neither is left.
 * A completion's callback may queue more; those go in the same turn.
 *
 * The eventfd is off meanwhile: the sends a submit completes at once
 * would otherwise wake the loop again for a turn with nothing to do. The
 * kernel raises IORING_SQ_TASKRUN for work that arrives while it is off,
 * and the turn looks at that flag after turning the eventfd back on:
 * either the kernel sees it on, or the turn sees the flag. */
static void turn(struct ring *r)
{
    r->in_turn = true;
    r->submit_pending = false;
    io_uring_cq_eventfd_toggle(&r->uring, false);
    for (;;) {
        /* With nothing to submit, the peeks in run_completions enter the
         * kernel only if it holds work for this thread: a wake-up whose
         * completions are already posted costs no system call. */
        if (io_uring_sq_ready(&r->uring) > 0) {
            int rc;
            do
                rc = io_uring_submit_and_get_events(&r->uring);
            while (rc == -EINTR);
        }
        run_completions(r);
        if (io_uring_sq_ready(&r->uring) > 0)
            continue;
        io_uring_cq_eventfd_toggle(&r->uring, true);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (!work_waiting(r))
            break;
        io_uring_cq_eventfd_toggle(&r->uring, false);
    }
    r->in_turn = false;
}

static void on_ready(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    turn(arg);
}

bool ring_holds_data(struct ring *r, const struct ring_op *op)
{
    unsigned sq_flags = __atomic_load_n(r->uring.sq.kflags, __ATOMIC_ACQUIRE);
    struct io_uring_cqe *cqe;
    unsigned head;

    if (sq_flags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW))
        io_uring_get_events(&r->uring);
    io_uring_for_each_cqe(&r->uring, head, cqe) {
        if (io_uring_cqe_get_data(cqe) == op && cqe->res > 0)
            return true;
    }
    return false;
}

/* A turn submits what is queued; outside one, a turn follows soon. */
static void schedule(struct ring *r)
{
    if (!r->in_turn && !r->submit_pending) {
        r->submit_pending = true;
        event_active(r->submit, EV_TIMEOUT, 0);
    }
}

/* A free entry, made by submitting what is queued when there is none. */
static struct io_uring_sqe *take_sqe(struct ring *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);

    if (!sqe) {
        io_uring_submit(&r->uring);
        sqe = io_uring_get_sqe(&r->uring);
    }
    if (!sqe)
        abort(); /* a submit always empties the queue */
    return sqe;
}

struct io_uring_sqe *ring_sqe(struct ring *r, struct ring_op *op)
{
    struct io_uring_sqe *sqe = take_sqe(r);

    io_uring_sqe_set_data(sqe, op);
    r->inflight++;
    schedule(r);
    return sqe;
}

void ring_cancel(struct ring *r, struct ring_op *op)
{
    struct io_uring_sqe *sqe = take_sqe(r);

    io_uring_prep_cancel(sqe, op, 0);
    /* Its own completion says only whether it found op: nothing to run. */
    io_uring_sqe_set_data(sqe, NULL);
    schedule(r);
}

void ring_prep_recv(struct ring *r, struct io_uring_sqe *sqe, int fd)
{
    (void)r;
    /* Multishot: one entry receives every message until it is cancelled,
     * or ends for want of a buffer. Not IORING_RECVSEND_POLL_FIRST: data
     * already waiting when it is armed would then wait for more. */
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = RING_GROUP;
}

const void *ring_received(struct ring *r, unsigned flags)
{
    return r->memory + (size_t)(flags >> IORING_CQE_BUFFER_SHIFT) * RING_BUFFER_SIZE;
}

void ring_recycle(struct ring *r, unsigned flags)
{
    unsigned id = flags >> IORING_CQE_BUFFER_SHIFT;

    io_uring_buf_ring_add(r->bufs, r->memory + (size_t)id * RING_BUFFER_SIZE, RING_BUFFER_SIZE,
                          (unsigned short)id, io_uring_buf_ring_mask(RING_BUFFERS), 0);
    io_uring_buf_ring_advance(r->bufs, 1);
}

static bool setup_buffers(struct ring *r)
{
    r->bufs_len = RING_BUFFERS * sizeof(struct io_uring_buf);
    void *bufs = NULL;
    if (posix_memalign(&bufs, (size_t)sysconf(_SC_PAGESIZE), r->bufs_len) != 0)
        return false;
    r->bufs = bufs;
    r->memory = malloc((size_t)RING_BUFFERS * RING_BUFFER_SIZE);
    if (!r->memory)
        return false;
    io_uring_buf_ring_init(r->bufs);
    struct io_uring_buf_reg reg = {
        .ring_addr = (uintptr_t)r->bufs,
        .ring_entries = RING_BUFFERS,
        .bgid = RING_GROUP,
    };
    if (io_uring_register_buf_ring(&r->uring, &reg, 0) != 0)
        return false;
    for (unsigned i = 0; i < RING_BUFFERS; i++)
        io_uring_buf_ring_add(r->bufs, r->memory + (size_t)i * RING_BUFFER_SIZE,
                              RING_BUFFER_SIZE, (unsigned short)i,
                              io_uring_buf_ring_mask(RING_BUFFERS), (int)i);
    io_uring_buf_ring_advance(r->bufs, RING_BUFFERS);
    return true;
}

/* Whether work the kernel defers to this thread signals the eventfd when
 * it arrives. Linux 6.1 did; recent kernels (6.18 here) signal only once
 * the work has run, and an event loop waiting on the eventfd would then
 * wait for ever. A receive the thread's own write completes tells. */
static bool deferred_work_signals(struct ring *r)
{
    int pair[2];
    char byte;
    uint64_t count = 0;
    bool signals = false;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0)
        return false;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);
    io_uring_prep_recv(sqe, pair[0], &byte, 1, 0);
    io_uring_sqe_set_data(sqe, NULL);
    if (io_uring_submit(&r->uring) == 1 && write(pair[1], "x", 1) == 1) {
        signals = read(r->event_fd, &count, sizeof(count)) == sizeof(count) && count > 0;
        struct io_uring_cqe *cqe;
        if (io_uring_wait_cqe(&r->uring, &cqe) == 0)
            io_uring_cqe_seen(&r->uring, cqe);
    }
    close(pair[0]);
    close(pair[1]);
    return signals;
}

/* Sets the ring up in the cheapest mode that wakes the event loop:
 * completions run only when this thread asks (DEFER_TASKRUN, Linux 6.1)
 * where the kernel signals the eventfd for them, else at its next system
 * call without interrupting it (COOP_TASKRUN). SINGLE_ISSUER in both makes
 * Linux 6.0 the oldest kernel that takes either, which is also the oldest
 * with the multishot receives the socks rely on. */
static int setup_uring(struct ring *r)
{
    static const unsigned modes[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    };

    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        int rc = io_uring_queue_init(RING_ENTRIES, &r->uring, modes[i]);
        if (rc == -EINVAL)
            continue; /* a flag this kernel does not know */
        if (rc < 0)
            return rc;
        rc = io_uring_register_eventfd(&r->uring, r->event_fd);
        if (rc < 0) {
            io_uring_queue_exit(&r->uring);
            return rc;
        }
        r->deferred = modes[i] & IORING_SETUP_DEFER_TASKRUN;
        if (!r->deferred || deferred_work_signals(r))
            return 0;
        io_uring_queue_exit(&r->uring);
    }
    return -EINVAL;
}

struct ring *ring_new(struct event_base *base, char *why, size_t why_len)
{
    struct ring *r = calloc(1, sizeof(*r));
    int rc;

    if (!r) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    r->base = base;
    if (!(event_base_get_features(base) & EV_FEATURE_ET)) {
        snprintf(why, why_len, "the event loop has no edge-triggered events");
        free(r);
        return NULL;
    }
    r->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->event_fd < 0) {
        snprintf(why, why_len, "eventfd: %s", strerror(errno));
        free(r);
        return NULL;
    }
    rc = setup_uring(r);
    if (rc < 0) {
        snprintf(why, why_len, "io_uring_setup: %s", strerror(-rc));
        close(r->event_fd);
        free(r);
        return NULL;
    }
    /* Edge-triggered: every completion signals anew, so the counter is
     * never read back. */
    if (!setup_buffers(r) ||
        !(r->ready = event_new(base, r->event_fd, EV_READ | EV_PERSIST | EV_ET, on_ready, r)) ||
        !(r->submit = event_new(base, -1, 0, on_ready, r)) || event_add(r->ready, NULL) != 0) {
        snprintf(why, why_len, "cannot set up io_uring: %s", strerror(errno));
        ring_free(r);
        return NULL;
    }
    return r;
}

const char *ring_mode(const struct ring *r)
{
    return r->deferred ? "completions run when the worker asks (DEFER_TASKRUN)"
                       : "completions run at the worker's next system call (COOP_TASKRUN)";
}

void ring_free(struct ring *r)
{
    if (!r)
        return;
    if (r->inflight > 0) {
        struct io_uring_sqe *sqe = take_sqe(r);
        io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
        io_uring_sqe_set_data(sqe, NULL);
        r->in_turn = true; /* no turn scheduled from here on */
        while (r->inflight > 0) {
            int rc = io_uring_submit_and_wait(&r->uring, 1);
            if (rc < 0 && rc != -EINTR)
                break;
            run_completions(r);
        }
    }
    if (r->ready)
        event_free(r->ready);
    if (r->submit)
        event_free(r->submit);
    io_uring_queue_exit(&r->uring);
    if (r->event_fd >= 0)
        close(r->event_fd);
    free(r->bufs);
    free(r->memory);
    free(r);
}

/* Reads per sleep, in tenths, at which sessions join the ring, and below
 * which they leave it; and the fewest reads in an interval that say
 * anything: fewer come from a load too light for the choice to matter, or
 * from the last clients of a burst saying goodbye, which should not send
 * the sessions of the next burst back to plain calls. */
#define RING_JOIN_TENTHS 25
#define RING_LEAVE_TENTHS 20
#define RING_MIN_READS 256

bool ring_worth_using(bool in_use, uint64_t reads, uint64_t sleeps)
{
    if (reads < RING_MIN_READS)
        return in_use;
    return reads * 10 >= (in_use ? RING_LEAVE_TENTHS : RING_JOIN_TENTHS) * sleeps;
}
