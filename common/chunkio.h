/* Reading and checking chunk bytes, the same for every receiver (the shim, the agent when a
 * reader reports a bad block, and peers later): a pread that reads everything or fails, and
 * the check of a chunk's bytes against the CRC-32C of each block recorded when the chunk was
 * filled from Azure's bytes. It does not know where chunks are stored or how they travel. */
#ifndef BS_CHUNKIO_H
#define BS_CHUNKIO_H

#include <stddef.h>
#include <stdint.h>

/* Reads exactly n bytes at off (retrying short reads and EINTR). 0, -EIO at end of file,
 * or -errno. */
int bs_pread_full(int fd, void *buf, size_t n, uint64_t off);

/* Verifies `len` bytes read from block-aligned offset `off` of a chunk of chunk_len bytes
 * against its CRCs (one per block_size block, the last may be short); len must be whole
 * blocks except at the chunk's end (-EINVAL otherwise). Returns 0 or -EBADMSG. */
int bs_chunk_verify(const uint32_t *crcs, uint32_t ncrcs, uint32_t block_size, uint64_t chunk_len,
                    uint64_t off, const void *data, size_t len);

#endif
