/* CRC-32C (Castagnoli) of byte strings. On x86-64 CPUs with SSE4.2 the crc32 instruction runs
 * on three interleaved streams (its latency is three times its issue rate) whose CRCs are
 * combined with precomputed "append n zero bytes" tables; elsewhere slicing-by-8 tables.
 * Everything is set up on first use under pthread_once, nothing runs at load time, so the
 * code is safe in a dlopen'ed library. It knows nothing of chunks or blocks. */
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_SSE42_PATH 1
#include <nmmintrin.h>
#endif

#define POLY 0x82f63b78u /* Castagnoli polynomial, bit-reflected */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static uint32_t table[8][256]; /* slicing-by-8: table[k][b] = CRC of b followed by k zeros */
static int use_hw;

static inline uint64_t load_le64(const unsigned char *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

static uint32_t crc_table(uint32_t crc, const unsigned char *p, size_t n)
{
    crc = ~crc;
    while (n && ((uintptr_t)p & 7)) {
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        n--;
    }
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w = load_le64(p) ^ crc;
        crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
              table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
              table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
    }
    while (n--)
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#ifdef HAVE_SSE42_PATH
/* The three streams are LONG bytes each while at least 3 * LONG remain, then SHORT bytes. */
#define LONG  4096
#define SHORT 256

/* shift_long[k][b] applies LONG zero bytes to byte k of a CRC register; same for SHORT. */
static uint32_t shift_long[4][256], shift_short[4][256];

/* GF(2) 32x32 matrix (one column per bit) times vector. */
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1)
            sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat)
{
    for (int i = 0; i < 32; i++)
        square[i] = gf2_times(mat, mat[i]);
}

/* Builds the tables that advance a CRC register over len zero bytes (len a power of two). */
static void build_shift(uint32_t shift[4][256], size_t len)
{
    uint32_t a[32], b[32]; /* operators for 2^k zero bits */
    a[0] = POLY;           /* one zero bit */
    for (int i = 1; i < 32; i++)
        a[i] = 1u << (i - 1);
    uint32_t *op = a, *tmp = b;
    for (size_t bits = 1; bits < len * 8; bits <<= 1) {
        gf2_square(tmp, op);
        uint32_t *t = op;
        op = tmp;
        tmp = t;
    }
    for (uint32_t v = 0; v < 256; v++)
        for (int k = 0; k < 4; k++)
            shift[k][v] = gf2_times(op, v << (8 * k));
}

static inline uint32_t shift_crc(uint32_t shift[4][256], uint32_t crc)
{
    return shift[0][crc & 0xff] ^ shift[1][(crc >> 8) & 0xff] ^ shift[2][(crc >> 16) & 0xff] ^
           shift[3][crc >> 24];
}

static inline uint64_t load64(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const unsigned char *p,
                                                         size_t n)
{
    uint64_t c0 = (uint32_t)~crc;
    while (n && ((uintptr_t)p & 7)) {
        c0 = _mm_crc32_u8((uint32_t)c0, *p++);
        n--;
    }
    while (n >= 3 * LONG) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *end = p + LONG;
        do {
            c0 = _mm_crc32_u64(c0, load64(p));
            c1 = _mm_crc32_u64(c1, load64(p + LONG));
            c2 = _mm_crc32_u64(c2, load64(p + 2 * LONG));
            p += 8;
        } while (p < end);
        c0 = shift_crc(shift_long, (uint32_t)c0) ^ c1;
        c0 = shift_crc(shift_long, (uint32_t)c0) ^ c2;
        p += 2 * LONG;
        n -= 3 * LONG;
    }
    while (n >= 3 * SHORT) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *end = p + SHORT;
        do {
            c0 = _mm_crc32_u64(c0, load64(p));
            c1 = _mm_crc32_u64(c1, load64(p + SHORT));
            c2 = _mm_crc32_u64(c2, load64(p + 2 * SHORT));
            p += 8;
        } while (p < end);
        c0 = shift_crc(shift_short, (uint32_t)c0) ^ c1;
        c0 = shift_crc(shift_short, (uint32_t)c0) ^ c2;
        p += 2 * SHORT;
        n -= 3 * SHORT;
    }
    for (; n >= 8; p += 8, n -= 8)
        c0 = _mm_crc32_u64(c0, load64(p));
    while (n--)
        c0 = _mm_crc32_u8((uint32_t)c0, *p++);
    return ~(uint32_t)c0;
}
#endif

static void init(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
        table[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++)
        for (int k = 1; k < 8; k++)
            table[k][b] = (table[k - 1][b] >> 8) ^ table[0][table[k - 1][b] & 0xff];
#ifdef HAVE_SSE42_PATH
    /* __builtin_cpu_init: no constructor is guaranteed to have run before us. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) {
        build_shift(shift_long, LONG);
        build_shift(shift_short, SHORT);
        use_hw = 1;
    }
#endif
}

uint32_t bs_crc32c(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&once, init);
#ifdef HAVE_SSE42_PATH
    if (use_hw)
        return crc_hw(crc, data, n);
#endif
    return crc_table(crc, data, n);
}

uint32_t bs_crc32c_sw(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&once, init);
    return crc_table(crc, data, n);
}

int bs_crc32c_hw(void)
{
    pthread_once(&once, init);
    return use_hw;
}
