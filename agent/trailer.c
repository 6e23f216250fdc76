/* The chunk file's trailer (see trailer.h): encoding and a parser that trusts nothing it
 * reads. No I/O. */
#include "trailer.h"

#include <string.h>

#include "crc32c.h"

#define TRAILER_MAGIC   0x4b435342u /* "BSCK" */
#define TRAILER_END     0x45435342u /* "BSCE" */
#define TRAILER_VERSION 2           /* 1: no SHA-256, refused */

void bs_put_le16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

void bs_put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

void bs_put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

uint16_t bs_get_le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

uint32_t bs_get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint64_t bs_get_le64(const unsigned char *p)
{
    return (uint64_t)bs_get_le32(p) | (uint64_t)bs_get_le32(p + 4) << 32;
}

size_t bs_trailer_len(size_t enclen, uint32_t nblocks)
{
    return BS_TRAILER_HEAD + enclen + 4 * (size_t)nblocks + BS_CHUNK_SHA256 + BS_TRAILER_FOOT;
}

void bs_trailer_build(unsigned char *t, uint32_t block_size, uint64_t data_len, uint64_t index,
                      const unsigned char *enc, size_t enclen, const uint32_t *crcs,
                      uint32_t nblocks, const unsigned char *sha256)
{
    size_t tlen = bs_trailer_len(enclen, nblocks);
    bs_put_le32(t, TRAILER_MAGIC);
    bs_put_le16(t + 4, TRAILER_VERSION);
    bs_put_le16(t + 6, 0);
    bs_put_le32(t + 8, block_size);
    bs_put_le32(t + 12, nblocks);
    bs_put_le64(t + 16, data_len);
    bs_put_le64(t + 24, index);
    memcpy(t + BS_TRAILER_HEAD, enc, enclen);
    unsigned char *p = t + BS_TRAILER_HEAD + enclen;
    for (uint32_t i = 0; i < nblocks; i++, p += 4)
        bs_put_le32(p, crcs[i]);
    memcpy(p, sha256, BS_CHUNK_SHA256);
    p += BS_CHUNK_SHA256;
    bs_put_le32(p, bs_crc32c(0, t, tlen - BS_TRAILER_FOOT));
    bs_put_le32(p + 4, (uint32_t)tlen);
    bs_put_le32(p + 8, TRAILER_END);
}

const char *bs_trailer_foot(const unsigned char *foot, uint64_t file_size, uint32_t *tlen)
{
    if (file_size < BS_TRAILER_HEAD + BS_TRAILER_FOOT)
        return "shorter than a trailer";
    if (bs_get_le32(foot + 8) != TRAILER_END)
        return "no end magic (truncated or not a chunk)";
    *tlen = bs_get_le32(foot + 4);
    if (*tlen < BS_TRAILER_HEAD + BS_TRAILER_FOOT || *tlen > BS_TRAILER_MAX || *tlen > file_size)
        return "trailer length out of range";
    return NULL;
}

static uint32_t blocks_of(uint64_t len, uint32_t block_size)
{
    return (uint32_t)(len / block_size + (len % block_size != 0));
}

const char *bs_trailer_parse(const unsigned char *t, size_t tlen, uint64_t file_size,
                             struct bs_trailer *out)
{
    if (tlen < BS_TRAILER_HEAD + BS_TRAILER_FOOT || tlen > BS_TRAILER_MAX)
        return "trailer length out of range";
    if (bs_crc32c(0, t, tlen - BS_TRAILER_FOOT) != bs_get_le32(t + tlen - BS_TRAILER_FOOT))
        return "trailer checksum mismatch";
    if (bs_get_le32(t + tlen - 4) != TRAILER_END || bs_get_le32(t + tlen - 8) != tlen)
        return "trailer foot disagrees with its length";
    if (bs_get_le32(t) != TRAILER_MAGIC)
        return "bad trailer magic";
    if (bs_get_le16(t + 4) == 1)
        return "trailer format version 1 (no SHA-256 of the data)";
    if (bs_get_le16(t + 4) != TRAILER_VERSION || bs_get_le16(t + 6) != 0)
        return "unknown trailer version";
    out->block_size = bs_get_le32(t + 8);
    out->nblocks = bs_get_le32(t + 12);
    out->data_len = bs_get_le64(t + 16);
    out->index = bs_get_le64(t + 24);
    uint32_t bs = out->block_size;
    if (bs < BS_CHUNK_MIN_BLOCK || bs > BS_CHUNK_MAX_BLOCK || (bs & (bs - 1)))
        return "block size out of range";
    if (out->data_len > BS_CHUNK_MAX_BYTES || out->nblocks != blocks_of(out->data_len, bs))
        return "data length and block count disagree";
    size_t n = BS_TRAILER_HEAD;
    for (int i = 0; i < 4; i++) {
        if (n + 2 > tlen - BS_TRAILER_FOOT)
            return "key runs past the trailer";
        size_t len = bs_get_le16(t + n);
        if (len == 0 || len > BS_CHUNK_MAX_KEY_FIELD || n + 2 + len > tlen - BS_TRAILER_FOOT)
            return "bad key field length";
        if (memchr(t + n + 2, 0, len))
            return "NUL byte in a key field";
        n += 2 + len;
    }
    out->enc = t + BS_TRAILER_HEAD;
    out->enclen = n - BS_TRAILER_HEAD;
    out->crcs = t + n;
    if (bs_trailer_len(out->enclen, out->nblocks) != tlen)
        return "trailer length disagrees with its contents";
    out->sha256 = out->crcs + 4 * (size_t)out->nblocks;
    if (out->data_len + tlen != file_size)
        return "file size disagrees with the trailer";
    return NULL;
}
