/* Monotonic time, condition variables on it, jitter (see clock.h). */
#include "clock.h"

#include <errno.h>
#include <stdint.h>
#include <time.h>

uint64_t bs_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int bs_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    int rc = pthread_condattr_init(&ca);
    if (rc)
        return rc;
    rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
    return rc;
}

int bs_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *m, uint64_t deadline_ns)
{
    if (bs_now_ns() >= deadline_ns) /* 0 included: a deadline always passes */
        return ETIMEDOUT;
    struct timespec ts = {(time_t)(deadline_ns / 1000000000ull),
                          (long)(deadline_ns % 1000000000ull)};
    int rc = pthread_cond_timedwait(cv, m, &ts);
    return rc == ETIMEDOUT ? ETIMEDOUT : 0;
}

uint64_t bs_random(void)
{
    static __thread uint64_t x;
    if (!x)
        x = bs_now_ns() ^ (uint64_t)(uintptr_t)&x;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}
