/* The node's chunk store: immutable chunk files on local disk, each holding the bytes of one
 * grid cell of one blob *version* (account, container, blob, ETag, index) followed by a
 * trailer with its key, one CRC-32C per block and the SHA-256 of the data (trailer.h). A chunk
 * becomes visible only once written whole, fsynced and renamed into place. An in-memory index
 * (rebuilt by scanning the directory at start) tracks bytes against a budget with high/low
 * watermarks; eviction takes from the tenant holding the most bytes its least recently used blob
 * version that no reader holds, whole, before single chunks. The store's directory is 0700 and its
 * files 0400, of the agent's uid, and immutable (FS_IMMUTABLE_FL) where possible; nothing in it is
 * reached through a link. Readers get descriptors, never paths. It does not fetch anything: callers
 * put bytes they obtained (from Azure, later from peers). */
#ifndef BS_STORE_H
#define BS_STORE_H

#include <stddef.h>
#include <stdint.h>

struct bs_store;
struct bs_chunk_ref;

/* The tenant of a chunk, whose share of the store eviction protects, is its account field up
 * to the first '#' (the agent stores "<endpoint URL>#grid=<bytes>": the tenant is the
 * storage account's endpoint). */
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
    /* Optional: told of every chunk that leaves the store (evicted, or dropped as corrupt or
     * missing), after its file is gone and before a new put of its key can go live; never
     * under the store's lock (it may call the store). k is valid during the call only. */
    void (*on_evict)(void *arg, const struct bs_chunk_key *k);
    void *on_evict_arg;
};

/* How chunk files are kept from being rewritten by whoever holds a descriptor or reaches the
 * directory (root in a container included): decided once at create. */
enum bs_store_protection {
    BS_STORE_PROTECT_NONE,      /* modes only: root (CAP_DAC_OVERRIDE) can rewrite a chunk */
    BS_STORE_PROTECT_IMMUTABLE, /* FS_IMMUTABLE_FL: only CAP_LINUX_IMMUTABLE can undo it */
};

struct bs_store_stats {
    uint64_t bytes, budget_bytes, chunks, blobs, tenants;
    uint64_t evicted_chunks, evicted_bytes;
    uint64_t dropped_corrupt; /* files found bad at scan, at serve or reported by a reader */
    uint64_t put_errors;
    uint64_t protect_errors; /* chunk files that could not be made immutable */
    enum bs_store_protection protection;
};

/* "immutable" or "none" (a static string). */
const char *bs_store_protection_name(enum bs_store_protection p);

/* Opens (creating) the store and scans it: files with a valid trailer are indexed, partial
 * (temporary) and malformed files are deleted, links and files not of the agent's uid are
 * removed themselves (never what they point to), wider modes are tightened, and chunk files
 * are made immutable when the filesystem and CAP_LINUX_IMMUTABLE allow (else one warning;
 * see stats.protection). The directory must not be a link and must belong to the agent's
 * uid. NULL with a message on failure. */
struct bs_store *bs_store_create(const struct bs_store_opts *o, char *err, size_t errsz);
/* Every reference must have been released. */
void bs_store_destroy(struct bs_store *s);

/* Looks a chunk up. On a hit returns 0 and a reference that pins the chunk (and counts as a
 * reader of its blob version) until bs_store_release. -ENOENT on a miss. Thread-safe. */
int bs_store_get(struct bs_store *s, const struct bs_chunk_key *k, struct bs_chunk_ref **out);
void bs_store_release(struct bs_store *s, struct bs_chunk_ref *ref);

/* A new read-only descriptor of the chunk's file (caller closes). The data starts at file
 * offset 0. The file is checked first (a regular file of the agent's uid, one link, the size
 * written); one that is not, or is missing, is dropped from the index and -ENOENT returned:
 * nothing but the store's own file is ever handed out. Returns the fd or -errno. */
int bs_chunk_ref_open(const struct bs_chunk_ref *ref);
uint64_t bs_chunk_ref_length(const struct bs_chunk_ref *ref);
uint32_t bs_chunk_ref_block_size(const struct bs_chunk_ref *ref);
/* CRC-32C of each block (the last may be short); *n gets the count. Valid until release. */
const uint32_t *bs_chunk_ref_crcs(const struct bs_chunk_ref *ref, uint32_t *n);
/* The SHA-256 (32 bytes) of the chunk's data, as computed over Azure's bytes by the node that
 * filled it (see bs_store_put_digest). From the trailer, not recomputed. Valid until release. */
const unsigned char *bs_chunk_ref_sha256(const struct bs_chunk_ref *ref);

/* Stores len bytes as the chunk k: computes the block CRCs and the SHA-256 of the data (one
 * pass), writes a temporary file, flushes it (fdatasync) and renames it into place (the
 * rename is not made durable: a chunk lost in a crash is a miss), evicts if the high
 * watermark would be passed (from the biggest tenant; never taking another tenant below budget /
 * tenants). Returns 0, -EEXIST (already there, or being put; not an error for callers), -ENOSPC (no
 * room even after eviction, or disk full), -EINVAL (a key field empty or over 1024 bytes, a
 * chunk over 256 MiB), -ENOMEM, or -EIO, with a message. Never leaves a partial file
 * visible. */
int bs_store_put(struct bs_store *s, const struct bs_chunk_key *k, const void *data, size_t len,
                 char *err, size_t errsz);
/* bs_store_put for bytes whose SHA-256 the caller has already checked against the one their
 * filler computed (a chunk from a peer): stores that digest as given (CRCs still computed).
 * -EINVAL also for a NULL sha256. */
int bs_store_put_digest(struct bs_store *s, const struct bs_chunk_key *k, const void *data,
                        size_t len, const unsigned char sha256[32], char *err, size_t errsz);

/* Removes a chunk a reader found corrupt (counted in dropped_corrupt). */
void bs_store_drop(struct bs_store *s, const struct bs_chunk_key *k);

/* Calls fn for every chunk live in the store, once each (one that is put or evicted during
 * the walk may or may not be seen), without holding the store's lock during fn (it may call
 * the store): keys are copied out a bounded batch at a time. k is valid during the call only.
 * 0, or -ENOMEM (the walk stopped). */
int bs_store_foreach(struct bs_store *s, void (*fn)(void *arg, const struct bs_chunk_key *k),
                     void *arg);

void bs_store_get_stats(struct bs_store *s, struct bs_store_stats *out);

#endif
