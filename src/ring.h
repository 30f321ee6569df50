/*
 * ring: one worker's io_uring, driven from its event loop.
 *
 * A proxy that forwards each message with a recv and a send of its own
 * spends much of its CPU entering and leaving the kernel: on a virtual
 * machine a system call costs about a microsecond before it does anything.
 * The ring batches those calls: the socks of logged-in sessions queue their
 * receives and sends here, and one io_uring_enter per turn of the loop
 * submits them all and collects what completed. The ring's eventfd is one
 * edge-triggered event of the worker's libevent loop, so listeners, timers,
 * TLS handshakes and the login phases stay on plain events.
 *
 * Where the kernel lets it, the ring runs completions only when its thread
 * asks for them (IORING_SETUP_DEFER_TASKRUN), so they come in batches at a
 * submit rather than as interruptions. Recent kernels no longer signal the
 * eventfd for such work; there, found by a probe at setup, the kernel runs
 * them at the thread's next system call instead (COOP_TASKRUN). It
 * must be created, used and freed by one thread. Receives take their memory
 * from the ring's shared buffers only when data arrives, so an idle
 * session holds none.
 *
 * Where io_uring is not available (an older kernel, a container profile
 * that blocks it, kernel.io_uring_disabled), ring_new fails and the socks
 * use plain system calls.
 */
#ifndef IDEM_RING_H
#define IDEM_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <liburing.h>

struct ring;

/* One operation in flight; embedded in its owner, which must stay
 * allocated until done has run for the last time: a multishot operation
 * calls it for each completion, with IORING_CQE_F_MORE in flags on all but
 * the last. res is the completion's result (a byte count or -errno). */
struct ring_op {
    void (*done)(struct ring_op *op, int res, unsigned flags);
};

/* NULL, with why filled in, when io_uring cannot be used here. */
struct ring *ring_new(struct event_base *base, char *why, size_t why_len);

/* How the kernel runs this ring's completions, in words for the log: the
 * setup probe's choice, which differs between kernels. */
const char *ring_mode(const struct ring *r);

/* A submission entry whose completion calls op->done. Everything queued
 * is submitted before the loop waits again. */
struct io_uring_sqe *ring_sqe(struct ring *r, struct ring_op *op);

/* Cancels op's operation: its completion comes soon, with -ECANCELED
 * unless it had already ended. */
void ring_cancel(struct ring *r, struct ring_op *op);

/* Whether a completion of op with data (a positive result) waits to be
 * run: what a receive has brought and its owner has not seen yet. Asks the
 * kernel to post the completions it holds for this thread first. */
bool ring_holds_data(struct ring *r, const struct ring_op *op);

/* Prepares sqe as a multishot receive: each message that arrives lands in
 * one of the ring's buffers, until the receive is cancelled, meets the
 * end of the stream or an error, or finds every buffer taken (-ENOBUFS). */
void ring_prep_recv(struct ring *r, struct io_uring_sqe *sqe, int fd);

/* The data of a completed receive (res bytes, flags from the completion),
 * valid until ring_recycle(r, flags), which must follow. */
const void *ring_received(struct ring *r, unsigned flags);
void ring_recycle(struct ring *r, unsigned flags);

/* For io_uring = auto: whether a worker's sessions should use its ring
 * over the next interval, given whether they use it now and, over the
 * last one, how many reads its sessions made and how many times its
 * thread went to sleep.
 *
 * The ring saves a system call per message only when a wake-up finds
 * several to batch. When each wake-up brings one message (one client, or a
 * few taking turns), the kernel interrupts the thread's wait to run the
 * receive it queued, which costs more than the ring saves. Reads per sleep
 * tell the two apart: about 1.5 at one client, 2.7 at two, 6 and more at
 * three. The sessions join the ring at 2.5 and leave it below 2, so a
 * load near either does not flap; an interval with too few reads to tell
 * changes nothing. */
bool ring_worth_using(bool in_use, uint64_t reads, uint64_t sleeps);

/* Cancels what is still in flight and waits for it to end (its done
 * callbacks run), then frees the ring. */
void ring_free(struct ring *r);

#endif
