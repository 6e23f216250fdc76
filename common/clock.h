/* Time for deadlines: one monotonic clock (nanoseconds) that wall-clock changes never move,
 * condition variables that wait on it, and the jitter source for retry backoff. Every
 * deadline and timeout in the shim and the agent is a bs_now_ns() value. Wall-clock time is
 * used only for what Azure states in it (SAS and token expiry, HTTP dates). */
#ifndef BS_CLOCK_H
#define BS_CLOCK_H

#include <pthread.h>
#include <stdint.h>

#define BS_NS_PER_MS 1000000ull

/* CLOCK_MONOTONIC, in nanoseconds. */
uint64_t bs_now_ns(void);

/* Initialises cv to wait on CLOCK_MONOTONIC (for bs_cond_wait_until). 0 or an errno; with
 * glibc on Linux it cannot fail (the attribute calls only set fields), which is why callers
 * that initialise during construction do not check it. */
int bs_cond_init(pthread_cond_t *cv);
/* pthread_cond_timedwait until the absolute bs_now_ns() value deadline_ns (0 has passed: an
 * unset deadline never means "forever"). Returns 0 (woken) or ETIMEDOUT. */
int bs_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *m, uint64_t deadline_ns);

/* A pseudo-random number for jitter (per-thread xorshift; not for secrets). */
uint64_t bs_random(void);

#endif
