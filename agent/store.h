/* The node's chunk store: immutable chunk files on local disk, each holding the bytes of one
 * grid cell of one blob *version* (account, container, blob, ETag, index) followed by a
 * trailer with its key and one CRC-32C per block. A chunk becomes visible only once written
 * whole and renamed into place. An in-memory index (rebuilt by scanning the directory at
 * start) tracks bytes against a budget with high/low watermarks; eviction drops the least
 * recently used blob version that no reader holds, whole, before single chunks.
 * It does not fetch anything: callers put bytes they obtained (from Azure, later from peers). */
#ifndef BS_STORE_H
#define BS_STORE_H

#include <stddef.h>
#include <stdint.h>

struct bs_store;
struct bs_chunk_ref;

struct bs_chunk_key {
    const char *account, *container, *blob, *etag; /* etag verbatim, with its quotes */
    uint64_t index;                                /* chunk number on the grid */
};

struct bs_store_opts {
    const char *dir;        /* created if missing */
    uint64_t budget_bytes;  /* counts chunk files (data + trailer) only */
    int high_watermark_pct; /* a put that would pass this evicts ... */
    int low_watermark_pct;  /* ... down to this */
    uint32_t block_size;    /* CRC block, power of two, e.g. 65536 */
};

struct bs_store_stats {
    uint64_t bytes, budget_bytes, chunks, blobs;
    uint64_t evicted_chunks, evicted_bytes;
    uint64_t dropped_corrupt; /* files found bad at scan or reported bad by a reader */
    uint64_t put_errors;
};

/* Opens (creating) the store and scans it: files with a valid trailer are indexed, partial
 * (temporary) and malformed files are deleted. NULL with a message on failure. */
struct bs_store *bs_store_create(const struct bs_store_opts *o, char *err, size_t errsz);
/* Every reference must have been released. */
void bs_store_destroy(struct bs_store *s);

/* Looks a chunk up. On a hit returns 0 and a reference that pins the chunk (and counts as a
 * reader of its blob version) until bs_store_release. -ENOENT on a miss. Thread-safe. */
int bs_store_get(struct bs_store *s, const struct bs_chunk_key *k, struct bs_chunk_ref **out);
void bs_store_release(struct bs_store *s, struct bs_chunk_ref *ref);

/* A new read-only descriptor of the chunk's file (caller closes). The data starts at file
 * offset 0. Returns the fd or -errno (-ENOENT when the chunk was dropped meanwhile). */
int bs_chunk_ref_open(const struct bs_chunk_ref *ref);
uint64_t bs_chunk_ref_length(const struct bs_chunk_ref *ref);
uint32_t bs_chunk_ref_block_size(const struct bs_chunk_ref *ref);
/* CRC-32C of each block (the last may be short); *n gets the count. Valid until release. */
const uint32_t *bs_chunk_ref_crcs(const struct bs_chunk_ref *ref, uint32_t *n);

/* Stores len bytes as the chunk k: computes the block CRCs, writes a temporary file, renames
 * it into place, evicts if the high watermark would be passed. Returns 0, -EEXIST (already
 * there, or being put; not an error for callers), -ENOSPC (no room even after eviction, or
 * disk full), -EINVAL (a key field empty or over 1024 bytes, a chunk over 256 MiB), -ENOMEM,
 * or -EIO, with a message. Never leaves a partial file visible. */
int bs_store_put(struct bs_store *s, const struct bs_chunk_key *k, const void *data, size_t len,
                 char *err, size_t errsz);

/* Removes a chunk a reader found corrupt (counted in dropped_corrupt). */
void bs_store_drop(struct bs_store *s, const struct bs_chunk_key *k);

void bs_store_get_stats(struct bs_store *s, struct bs_store_stats *out);

/* Verifies `len` bytes read from block-aligned offset `off` of a chunk against its CRCs;
 * len must be whole blocks except at the chunk's end (-EINVAL otherwise). Returns 0 or
 * -EBADMSG. */
int bs_chunk_verify(const uint32_t *crcs, uint32_t ncrcs, uint32_t block_size, uint64_t chunk_len,
                    uint64_t off, const void *data, size_t len);

#endif
