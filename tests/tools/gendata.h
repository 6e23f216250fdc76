/* Deterministic test content: byte i of the stream for `seed` is a pure function of (seed, i),
 * so a test can check any (offset, length) read without keeping the blob. Each aligned 8-byte
 * word is splitmix64(seed * 2^40 + word index), little-endian. Test-only; header-only. */
#ifndef BS_GENDATA_H
#define BS_GENDATA_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t bs_gen_word(uint64_t seed, uint64_t index)
{
    uint64_t z = (seed << 40) + index + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Fills buf with bytes [off, off+len) of the stream for seed. */
static inline void bs_gen_fill(uint64_t seed, uint64_t off, void *buf, size_t len)
{
    unsigned char *p = (unsigned char *)buf;
    size_t i = 0;
    while (i < len) {
        uint64_t pos = off + i;
        uint64_t w = bs_gen_word(seed, pos >> 3);
        unsigned shift = (unsigned)(pos & 7);
        for (; shift < 8 && i < len; shift++, i++)
            p[i] = (unsigned char)(w >> (8 * shift));
    }
}

#endif
