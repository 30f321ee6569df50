/*
 * counter: a statistic one thread writes and any thread may read.
 *
 * Each worker counts in counters of its own, so counting is a plain load
 * and store (no locked instruction, no shared cache line); a reader (the
 * metrics endpoint, the exit summary) loads each worker's value and sums.
 * Relaxed atomics make those reads well-defined without costing the writer
 * anything on x86-64 or arm64.
 */
#ifndef IDEM_COUNTER_H
#define IDEM_COUNTER_H

#include <stdatomic.h>
#include <stdint.h>

struct counter {
    _Atomic uint64_t value;
};

/* Only the owning thread may call these two. */
static inline void counter_add(struct counter *c, uint64_t n)
{
    uint64_t v = atomic_load_explicit(&c->value, memory_order_relaxed);
    atomic_store_explicit(&c->value, v + n, memory_order_relaxed);
}

/* For gauges: what counter_add added, taken back. */
static inline void counter_sub(struct counter *c, uint64_t n)
{
    uint64_t v = atomic_load_explicit(&c->value, memory_order_relaxed);
    atomic_store_explicit(&c->value, v - n, memory_order_relaxed);
}

static inline uint64_t counter_get(const struct counter *c)
{
    return atomic_load_explicit(&c->value, memory_order_relaxed);
}

#endif
