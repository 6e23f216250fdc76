/* Unit tests for common/crc32c: the published check vectors, the dispatched implementation
 * (the CPU instruction where there is one) against the table one and against a bit-at-a-time
 * reference on every length and alignment that reaches each code path, incremental use, and
 * first use from many threads at once. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "crc32c.h"

#define BUF_SIZE (256 * 1024)

/* Bit at a time, straight from the definition: reflected polynomial 0x82F63B78. */
static uint32_t crc_reference(uint32_t crc, const unsigned char *p, size_t n)
{
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = crc & 1 ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
    }
    return ~crc;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static unsigned char *random_buffer(void)
{
    unsigned char *b = malloc(BUF_SIZE);
    assert_non_null(b);
    for (size_t i = 0; i < BUF_SIZE; i++)
        b[i] = (unsigned char)rnd();
    return b;
}

struct first_use {
    pthread_barrier_t *start;
    uint32_t got;
};

static void *first_use_thread(void *arg)
{
    struct first_use *f = arg;
    pthread_barrier_wait(f->start);
    f->got = bs_crc32c(0, "123456789", 9);
    return NULL;
}

/* Runs first: the lazy set-up must be safe when its first callers race. */
static void test_first_use_from_threads(void **state)
{
    (void)state;
    enum { N = 8 };
    pthread_t t[N];
    struct first_use f[N];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, N);
    for (int i = 0; i < N; i++) {
        f[i] = (struct first_use){&start, 0};
        assert_int_equal(pthread_create(&t[i], NULL, first_use_thread, &f[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(f[i].got, 0xE3069283u);
    }
    pthread_barrier_destroy(&start);
}

static void test_vectors(void **state)
{
    (void)state;
    unsigned char zeros[32], ones[32], inc[32];
    memset(zeros, 0, sizeof(zeros));
    memset(ones, 0xff, sizeof(ones));
    for (int i = 0; i < 32; i++)
        inc[i] = (unsigned char)i;
    uint32_t (*const impls[])(uint32_t, const void *, size_t) = {bs_crc32c, bs_crc32c_sw};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(impls[i](0, "123456789", 9), 0xE3069283u);
        assert_int_equal(impls[i](0, zeros, 32), 0x8A9136AAu);
        assert_int_equal(impls[i](0, ones, 32), 0x62A8AB43u);
        assert_int_equal(impls[i](0, inc, 32), 0x46DD794Eu);
        assert_int_equal(impls[i](0, "", 0), 0);
        assert_int_equal(impls[i](0x12345678u, NULL, 0), 0x12345678u);
    }
    print_message("crc32c: bs_crc32c uses %s\n",
                  bs_crc32c_hw() ? "the SSE4.2 crc32 instruction" : "tables (no SSE4.2)");
}

/* Every length up to 3 * 256 + 64 and around every stream boundary of the instruction path
 * (3 x 256 and 3 x 4096 bytes), at each of the 8 alignments, against both other versions. */
static void test_paths_agree(void **state)
{
    (void)state;
    unsigned char *b = random_buffer();
    size_t lens[2048], n = 0;
    for (size_t len = 0; len <= 3 * 256 + 64; len++)
        lens[n++] = len;
    static const size_t edges[] = {3 * 4096, 2 * 3 * 4096, 3 * 4096 + 3 * 256, 65536, 200000};
    for (size_t e = 0; e < sizeof(edges) / sizeof(edges[0]); e++)
        for (size_t d = 0; d < 20; d++)
            lens[n++] = edges[e] - 9 + d;
    for (size_t i = 0; i < n; i++)
        for (size_t align = 0; align < 8; align++) {
            const unsigned char *p = b + align;
            uint32_t seed = (uint32_t)rnd();
            uint32_t want = bs_crc32c_sw(seed, p, lens[i]);
            if (lens[i] <= 4096 + 64 || align == 3)
                assert_int_equal(crc_reference(seed, p, lens[i]), want);
            if (bs_crc32c(seed, p, lens[i]) != want)
                fail_msg("len %zu align %zu: dispatched 0x%08x, table 0x%08x", lens[i], align,
                         bs_crc32c(seed, p, lens[i]), want);
        }
    free(b);
}

static void test_random_lengths_and_offsets(void **state)
{
    (void)state;
    unsigned char *b = random_buffer();
    for (int i = 0; i < 3000; i++) {
        size_t off = rnd() % 4096, len = rnd() % (BUF_SIZE - 4096);
        if (i % 2)
            len %= 2048;
        uint32_t seed = (uint32_t)rnd();
        uint32_t want = bs_crc32c_sw(seed, b + off, len);
        if (bs_crc32c(seed, b + off, len) != want)
            fail_msg("off %zu len %zu: dispatched and table differ", off, len);
    }
    free(b);
}

/* Extending over consecutive pieces gives the one-shot value, wherever the cuts fall. */
static void test_incremental(void **state)
{
    (void)state;
    unsigned char *b = random_buffer();
    uint32_t whole = bs_crc32c(0, b, BUF_SIZE);
    assert_int_equal(whole, bs_crc32c_sw(0, b, BUF_SIZE));
    for (int round = 0; round < 200; round++) {
        uint32_t crc = 0, crc_sw = 0;
        size_t pos = 0;
        while (pos < BUF_SIZE) {
            size_t n = rnd() % (round % 2 ? 100 : 40000);
            if (n > BUF_SIZE - pos)
                n = BUF_SIZE - pos;
            crc = bs_crc32c(crc, b + pos, n);
            crc_sw = bs_crc32c_sw(crc_sw, b + pos, n);
            pos += n;
        }
        assert_int_equal(crc, whole);
        assert_int_equal(crc_sw, whole);
    }
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_use_from_threads),
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_paths_agree),
        cmocka_unit_test(test_random_lengths_and_offsets),
        cmocka_unit_test(test_incremental),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
