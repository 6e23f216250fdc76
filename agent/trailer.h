/* The chunk file's trailer, the on-disk format of agent/store.c: its encoding, and a checked
 * parser of a file's last bytes (untrusted: anything with write access to the disk may have
 * changed them). It does no I/O and knows nothing of the index.
 *
 * A chunk file is [data][trailer]; the trailer, all integers little-endian:
 *   head  u32 magic "BSCK", u16 format version (2), u16 flags (0), u32 block_size, u32 nblocks,
 *         u64 data_len, u64 index                                             (32 bytes)
 *   key   account, container, blob, etag, each u16 length + bytes (1..1024, no NUL)
 *   crcs  u32 CRC-32C of each block, the last block possibly short
 *   sha   SHA-256 of the data (32 bytes): computed over Azure's bytes by the node that filled
 *         the chunk from Azure, and checked by every peer that received it since
 *   foot  u32 CRC-32C of everything above, u32 trailer length (all four parts),
 *         u32 end magic "BSCE"                                                (12 bytes)
 * Version 1 had no SHA-256: the parser refuses it like any other malformed trailer (the
 * store deletes such files at scan and the cache refills). */
#ifndef BS_TRAILER_H
#define BS_TRAILER_H

#include <stddef.h>
#include <stdint.h>

/* Limits of the format (a parser refuses anything beyond them). */
#define BS_CHUNK_MAX_KEY_FIELD 1024u        /* bytes of account, container, blob or ETag */
#define BS_CHUNK_MAX_BYTES     (256u << 20) /* data bytes of one chunk */
#define BS_CHUNK_MIN_BLOCK     4096u
#define BS_CHUNK_MAX_BLOCK     (16u << 20)
#define BS_CHUNK_MAX_BLOCKS    (BS_CHUNK_MAX_BYTES / BS_CHUNK_MIN_BLOCK)
#define BS_TRAILER_HEAD        32
#define BS_TRAILER_FOOT        12
#define BS_CHUNK_SHA256        32 /* bytes of the data's SHA-256 */
#define BS_KEY_ENC_MAX         (4 * (2 + BS_CHUNK_MAX_KEY_FIELD))
#define BS_TRAILER_MAX                                                                             \
    (BS_TRAILER_HEAD + BS_KEY_ENC_MAX + 4 * BS_CHUNK_MAX_BLOCKS + BS_CHUNK_SHA256 + BS_TRAILER_FOOT)

/* A parsed trailer; the pointers point into the buffer given to bs_trailer_parse. */
struct bs_trailer {
    uint32_t block_size, nblocks;
    uint64_t data_len, index;
    const unsigned char *enc; /* the key's four fields, as encoded */
    size_t enclen;
    const unsigned char *crcs;   /* nblocks little-endian u32 */
    const unsigned char *sha256; /* BS_CHUNK_SHA256 bytes */
};

/* Bytes of a trailer whose key encoding has enclen bytes. */
size_t bs_trailer_len(size_t enclen, uint32_t nblocks);

/* Writes the trailer into t (bs_trailer_len bytes); sha256 is BS_CHUNK_SHA256 bytes. */
void bs_trailer_build(unsigned char *t, uint32_t block_size, uint64_t data_len, uint64_t index,
                      const unsigned char *enc, size_t enclen, const uint32_t *crcs,
                      uint32_t nblocks, const unsigned char *sha256);

/* From the last BS_TRAILER_FOOT bytes of a file of file_size bytes: the trailer's length in
 * *tlen. NULL, or what is wrong. */
const char *bs_trailer_foot(const unsigned char *foot, uint64_t file_size, uint32_t *tlen);

/* Checks and parses the whole trailer t (tlen bytes, the end of a file of file_size bytes):
 * its own CRC, magics, version, block geometry, key fields and that the data plus the
 * trailer make the file. NULL and *out filled, or what is wrong. */
const char *bs_trailer_parse(const unsigned char *t, size_t tlen, uint64_t file_size,
                             struct bs_trailer *out);

/* Little-endian helpers shared with the store's key encoding. */
void bs_put_le16(unsigned char *p, uint16_t v);
void bs_put_le32(unsigned char *p, uint32_t v);
void bs_put_le64(unsigned char *p, uint64_t v);
uint16_t bs_get_le16(const unsigned char *p);
uint32_t bs_get_le32(const unsigned char *p);
uint64_t bs_get_le64(const unsigned char *p);

#endif
