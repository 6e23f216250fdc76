/* Unit tests for common/blobreader's pure part, bs_range_split: the grid arithmetic that
 * turns one read into aligned ranged GETs. The network paths (properties, retries, deadlines,
 * If-Match) need a server and are covered by the integration tests against Azurite. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "blobreader.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define TiB (UINT64_C(1) << 40)

#define SENTINEL UINT64_C(0xdeadbeefcafef00d)

/* Pieces needed, computed independently: grid cells touched by [off, off+len). */
static size_t cells(uint64_t off, uint64_t len, uint64_t grid)
{
    if (len == 0)
        return 0;
    return (size_t)((off + len - 1) / grid - off / grid + 1);
}

/* Splits and checks every property the header promises; returns the pieces (caller frees). */
static uint64_t (*split_checked(uint64_t off, uint64_t len, uint64_t grid, size_t *np))[2]
{
    size_t want = cells(off, len, grid);
    size_t cap = want + 2;
    uint64_t(*p)[2] = malloc(cap * sizeof(*p));
    assert_non_null(p);
    for (size_t i = 0; i < cap; i++)
        p[i][0] = p[i][1] = SENTINEL;

    size_t n = bs_range_split(off, len, grid, p, cap);
    if (n != want)
        fail_msg("split(off=%llu len=%llu grid=%llu) gave %zu pieces, expected %zu",
                 (unsigned long long)off, (unsigned long long)len, (unsigned long long)grid, n,
                 want);
    uint64_t pos = off;
    for (size_t i = 0; i < n; i++) {
        uint64_t s = p[i][0], l = p[i][1];
        if (s != pos)
            fail_msg("split(%llu, %llu, %llu): piece %zu starts at %llu, expected %llu",
                     (unsigned long long)off, (unsigned long long)len, (unsigned long long)grid, i,
                     (unsigned long long)s, (unsigned long long)pos);
        assert_true(l > 0);
        assert_true(l <= grid);
        /* No piece crosses a grid line. */
        assert_true(s / grid == (s + l - 1) / grid);
        if (i > 0)
            assert_true(s % grid == 0);
        if (i + 1 < n)
            assert_true((s + l) % grid == 0);
        if (i > 0 && i + 1 < n)
            assert_true(l == grid);
        pos = s + l;
    }
    assert_true(pos == off + len);
    /* Nothing written beyond the pieces needed. */
    for (size_t i = n; i < cap; i++)
        assert_true(p[i][0] == SENTINEL && p[i][1] == SENTINEL);
    *np = n;
    return p;
}

static void expect_pieces(uint64_t off, uint64_t len, uint64_t grid, size_t n,
                          const uint64_t want[][2])
{
    size_t got;
    uint64_t(*p)[2] = split_checked(off, len, grid, &got);
    assert_int_equal(got, n);
    for (size_t i = 0; i < n; i++) {
        if (p[i][0] != want[i][0] || p[i][1] != want[i][1])
            fail_msg("piece %zu = (%llu, %llu), expected (%llu, %llu)", i,
                     (unsigned long long)p[i][0], (unsigned long long)p[i][1],
                     (unsigned long long)want[i][0], (unsigned long long)want[i][1]);
    }
    free(p);
}

static void test_from_zero(void **state)
{
    (void)state;
    const uint64_t g = 8 * MiB;
    expect_pieces(0, 1, g, 1, (const uint64_t[][2]){{0, 1}});
    expect_pieces(0, 8, g, 1, (const uint64_t[][2]){{0, 8}});
    expect_pieces(0, g, g, 1, (const uint64_t[][2]){{0, g}});
    expect_pieces(0, 4 * g, g, 4, (const uint64_t[][2]){{0, g}, {g, g}, {2 * g, g}, {3 * g, g}});
    expect_pieces(0, 2 * g + 5, g, 3, (const uint64_t[][2]){{0, g}, {g, g}, {2 * g, 5}});
}

static void test_unaligned(void **state)
{
    (void)state;
    const uint64_t g = 8 * MiB;
    /* Unaligned start and end. */
    expect_pieces(100, 3 * g, g, 4,
                  (const uint64_t[][2]){{100, g - 100}, {g, g}, {2 * g, g}, {3 * g, 100}});
    /* Unaligned start, aligned end. */
    expect_pieces(g - 10, 10 + g, g, 2, (const uint64_t[][2]){{g - 10, 10}, {g, g}});
    /* Aligned start, unaligned end. */
    expect_pieces(2 * g, g + 1, g, 2, (const uint64_t[][2]){{2 * g, g}, {3 * g, 1}});
}

static void test_exactly_aligned(void **state)
{
    (void)state;
    const uint64_t g = 32 * MiB;
    expect_pieces(2 * g, 2 * g, g, 2, (const uint64_t[][2]){{2 * g, g}, {3 * g, g}});
    expect_pieces(5 * g, g, g, 1, (const uint64_t[][2]){{5 * g, g}});
}

static void test_inside_one_cell(void **state)
{
    (void)state;
    const uint64_t g = 8 * MiB;
    /* The safetensors header reads: 8 bytes at 0, then the JSON header. */
    expect_pieces(0, 8, g, 1, (const uint64_t[][2]){{0, 8}});
    expect_pieces(8, 70000, g, 1, (const uint64_t[][2]){{8, 70000}});
    expect_pieces(g + 10, 100, g, 1, (const uint64_t[][2]){{g + 10, 100}});
    /* Ends exactly on the next grid line. */
    expect_pieces(g + 10, g - 10, g, 1, (const uint64_t[][2]){{g + 10, g - 10}});
    expect_pieces(3 * g - 1, 1, g, 1, (const uint64_t[][2]){{3 * g - 1, 1}});
}

static void test_boundary_by_one_byte(void **state)
{
    (void)state;
    const uint64_t g = 8 * MiB;
    expect_pieces(g - 1, 2, g, 2, (const uint64_t[][2]){{g - 1, 1}, {g, 1}});
    expect_pieces(0, g + 1, g, 2, (const uint64_t[][2]){{0, g}, {g, 1}});
    expect_pieces(g - 1, g + 1, g, 2, (const uint64_t[][2]){{g - 1, 1}, {g, g}});
    expect_pieces(g - 1, g + 2, g, 3, (const uint64_t[][2]){{g - 1, 1}, {g, g}, {2 * g, 1}});
}

static void test_large_blobs(void **state)
{
    (void)state;
    const uint64_t g = 8 * MiB;
    const uint64_t four_g = UINT64_C(1) << 32;
    /* Across 2^32: offsets and lengths must not be truncated to 32 bits. */
    expect_pieces(four_g - 5, 10, g, 2, (const uint64_t[][2]){{four_g - 5, 5}, {four_g, 5}});
    expect_pieces(four_g + 3, 2 * g, g, 3,
                  (const uint64_t[][2]){{four_g + 3, g - 3}, {four_g + g, g}, {four_g + 2 * g, 3}});
    /* Near 2^40 with a 32 MiB grid. */
    const uint64_t G = 32 * MiB;
    expect_pieces(TiB + 3, 64 * MiB, G, 3,
                  (const uint64_t[][2]){{TiB + 3, G - 3}, {TiB + G, G}, {TiB + 2 * G, 3}});
    expect_pieces(TiB - 1, 2, G, 2, (const uint64_t[][2]){{TiB - 1, 1}, {TiB, 1}});
    /* A single call longer than 4 GiB (older streamers read whole tensors). */
    size_t n;
    free(split_checked(0, 5 * GiB, GiB, &n));
    assert_int_equal(n, 5);
    free(split_checked(123, 5 * GiB, g, &n));
    assert_int_equal(n, 641);
    free(split_checked(3 * TiB + 17, 6 * GiB + 1, 32 * MiB, &n));
    assert_int_equal(n, cells(3 * TiB + 17, 6 * GiB + 1, 32 * MiB));
}

static void test_max_smaller_than_needed(void **state)
{
    (void)state;
    const uint64_t g = 4 * MiB;
    uint64_t p[6][2];
    for (size_t i = 0; i < 6; i++)
        p[i][0] = p[i][1] = SENTINEL;
    /* [100, 10g+100) touches 11 cells; only 3 pieces may be written. */
    size_t n = bs_range_split(100, 10 * g, g, p, 3);
    assert_int_equal(n, 11);
    assert_true(p[0][0] == 100 && p[0][1] == g - 100);
    assert_true(p[1][0] == g && p[1][1] == g);
    assert_true(p[2][0] == 2 * g && p[2][1] == g);
    for (size_t i = 3; i < 6; i++)
        assert_true(p[i][0] == SENTINEL && p[i][1] == SENTINEL);

    /* max 0 counts only, so no array is needed. */
    assert_int_equal(bs_range_split(100, 10 * g, g, NULL, 0), 11);
    assert_int_equal(bs_range_split(0, 1, g, NULL, 0), 1);
    /* max == needed writes all of them. */
    for (size_t i = 0; i < 6; i++)
        p[i][0] = p[i][1] = SENTINEL;
    assert_int_equal(bs_range_split(0, 2 * g, g, p, 2), 2);
    assert_true(p[1][0] == g && p[1][1] == g);
    assert_true(p[2][0] == SENTINEL);
}

static void test_zero_length(void **state)
{
    (void)state;
    uint64_t p[2][2] = {{SENTINEL, SENTINEL}, {SENTINEL, SENTINEL}};
    assert_int_equal(bs_range_split(0, 0, 8 * MiB, p, 2), 0);
    assert_int_equal(bs_range_split(12345, 0, 8 * MiB, p, 2), 0);
    assert_int_equal(bs_range_split(UINT64_C(1) << 41, 0, 8 * MiB, p, 2), 0);
    assert_true(p[0][0] == SENTINEL && p[0][1] == SENTINEL);
    assert_int_equal(bs_range_split(0, 0, 8 * MiB, NULL, 0), 0);
}

static void test_grid_not_power_of_two(void **state)
{
    (void)state;
    /* The grid is any positive size, e.g. a configured 3000-byte or 5 MB (decimal) range. */
    expect_pieces(1500, 2000, 1000, 3,
                  (const uint64_t[][2]){{1500, 500}, {2000, 1000}, {3000, 500}});
    const uint64_t g = 5000000;
    expect_pieces(4999999, 2, g, 2, (const uint64_t[][2]){{4999999, 1}, {5000000, 1}});
    expect_pieces(3, 3, 1, 3, (const uint64_t[][2]){{3, 1}, {4, 1}, {5, 1}});
}

static void test_randomised(void **state)
{
    (void)state;
    /* Property check over many shapes, with a fixed-seed generator for reproducibility. */
    uint64_t x = UINT64_C(0x9e3779b97f4a7c15);
    const uint64_t grids[] = {1, 7, 4 * KiB, 1 * MiB, 5 * MiB, 8 * MiB, 32 * MiB, 64 * MiB};
    for (int it = 0; it < 3000; it++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t grid = grids[x % (sizeof(grids) / sizeof(grids[0]))];
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t off = x % (2 * TiB);
        if (it % 3 == 0)
            off -= off % grid; /* aligned starts too */
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t maxlen = grid <= 7 ? 200 : 40 * grid;
        uint64_t len = x % (maxlen + 1);
        size_t n;
        free(split_checked(off, len, grid, &n));
    }
}

/* Slivers at either end join their neighbour; interior pieces and large edges stay. */
static void test_merge_slivers(void **state)
{
    (void)state;
    const uint64_t M = 1 << 20;
    uint64_t p[8][2];
    /* [7M+1, 15M+1) on an 8M grid: 1M-1 then 7M+1 pieces -> first is a sliver. */
    size_t n = bs_range_split(7 * M + 1, 8 * M, 8 * M, p, 8);
    assert_int_equal(n, 2);
    n = bs_range_merge_slivers(p, n, 2 * M);
    assert_int_equal(n, 1);
    assert_true(p[0][0] == 7 * M + 1 && p[0][1] == 8 * M);
    /* [1M, 17M+5): 7M, 8M, 1M+5 -> last joins the middle. */
    n = bs_range_split(M, 16 * M + 5, 8 * M, p, 8);
    assert_int_equal(n, 3);
    n = bs_range_merge_slivers(p, n, 2 * M);
    assert_int_equal(n, 2);
    assert_true(p[0][0] == M && p[0][1] == 7 * M);
    assert_true(p[1][0] == 8 * M && p[1][1] == 9 * M + 5);
    /* Both ends slivers, one interior piece. */
    n = bs_range_split(8 * M - 10, 8 * M + 20, 8 * M, p, 8);
    assert_int_equal(n, 3);
    n = bs_range_merge_slivers(p, n, 2 * M);
    assert_int_equal(n, 1);
    assert_true(p[0][0] == 8 * M - 10 && p[0][1] == 8 * M + 20);
    /* A single piece is never touched; no sliver, no change. */
    n = bs_range_split(0, 100, 8 * M, p, 8);
    assert_int_equal(bs_range_merge_slivers(p, n, 2 * M), 1);
    n = bs_range_split(4 * M, 8 * M, 8 * M, p, 8);
    assert_int_equal(bs_range_merge_slivers(p, n, 2 * M), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_from_zero),
        cmocka_unit_test(test_unaligned),
        cmocka_unit_test(test_exactly_aligned),
        cmocka_unit_test(test_inside_one_cell),
        cmocka_unit_test(test_boundary_by_one_byte),
        cmocka_unit_test(test_large_blobs),
        cmocka_unit_test(test_max_smaller_than_needed),
        cmocka_unit_test(test_zero_length),
        cmocka_unit_test(test_grid_not_power_of_two),
        cmocka_unit_test(test_randomised),
        cmocka_unit_test(test_merge_slivers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
