/* Reads byte ranges of Azure blobs correctly and fast: blob properties (ETag, size) fetched
 * once per blob and kept while the blob is being read; each read split on an aligned grid
 * into parallel ranged GETs that all carry If-Match; retries with backoff and jitter that
 * honour Retry-After; one overall deadline per read. Bytes go straight into the caller's
 * buffer. Errors name the blob, the HTTP status, the Azure error code and the credential.
 * It does not cache blob content (that is the agent's job). */
#ifndef BS_BLOBREADER_H
#define BS_BLOBREADER_H

#include <stddef.h>
#include <stdint.h>

struct bs_blobreader;
struct bs_azcred;
struct bs_fetch;

struct bs_blobreader_opts {
    uint64_t range_bytes; /* grid of the parallel ranged GETs */
    long deadline_ms;     /* per read */
    int max_retries;      /* per piece */
    long retry_base_ms, retry_max_ms;
    long props_ttl_ms; /* properties kept this long after their last use */
    int props_max_entries;
};

struct bs_blob_props {
    char etag[128];
    uint64_t size;
};

/* Borrows fetch (it must outlive the reader). NULL on allocation failure.
 * Every call names the credential it reads with; the properties cache is keyed by blob
 * only, so a process that reads with several credentials uses bs_blobreader_head and
 * bs_blobreader_read_version, which bypass it. */
struct bs_blobreader *bs_blobreader_create(const struct bs_blobreader_opts *opts,
                                           struct bs_fetch *fetch);
void bs_blobreader_destroy(struct bs_blobreader *r);

/* Properties of a blob, from the cache or a HEAD request. Returns 0 or a negative code with
 * a message in err. */
int bs_blobreader_props(struct bs_blobreader *r, struct bs_azcred *cred, const char *account,
                        const char *container, const char *blob, struct bs_blob_props *out,
                        char *err, size_t errsz);

/* Properties from a HEAD request with cred, never from the cache. */
int bs_blobreader_head(struct bs_blobreader *r, struct bs_azcred *cred, const char *account,
                       const char *container, const char *blob, struct bs_blob_props *out,
                       char *err, size_t errsz);

/* Reads exactly len bytes at off into buf. Returns 0, or a negative code with a message in
 * err (-ENOENT missing, -EACCES denied, -ERANGE past the end, -ESTALE blob changed,
 * -ETIMEDOUT deadline, -EIO other). Never reports success on a short read. */
int bs_blobreader_read(struct bs_blobreader *r, struct bs_azcred *cred, const char *account,
                       const char *container, const char *blob, void *buf, uint64_t off, size_t len,
                       char *err, size_t errsz);

/* Reads [off, off+len) of the version `etag` (every GET carries If-Match: etag), without
 * fetching properties; the caller has checked the range. Same errors as bs_blobreader_read. */
int bs_blobreader_read_version(struct bs_blobreader *r, struct bs_azcred *cred, const char *account,
                               const char *container, const char *blob, const char *etag, void *buf,
                               uint64_t off, size_t len, char *err, size_t errsz);

/* Reads the n ranges (offset, length) of the version `etag` into buf, which holds the blob
 * from offset `base` (each range lands at buf + offset - base): all pieces of all ranges in
 * flight together, within the absolute CLOCK_MONOTONIC deadline_ns (0: deadline_ms from now).
 * Same errors as bs_blobreader_read. */
int bs_blobreader_read_ranges(struct bs_blobreader *r, struct bs_azcred *cred, const char *account,
                              const char *container, const char *blob, const char *etag, void *buf,
                              uint64_t base, const uint64_t (*ranges)[2], size_t n,
                              uint64_t deadline_ns, char *err, size_t errsz);

/* Forgets the cached properties of a blob (after it was found changed). */
void bs_blobreader_forget(struct bs_blobreader *r, const char *account, const char *container,
                          const char *blob);

/* Splits [off, off+len) on a grid of `grid` bytes. Writes up to max pieces as (start, len)
 * pairs; returns the number of pieces needed (may exceed max; then nothing beyond max is
 * written). len 0 gives 0 pieces. */
size_t bs_range_split(uint64_t off, uint64_t len, uint64_t grid, uint64_t (*pieces)[2], size_t max);

/* Merges a first or last piece shorter than min_len into its neighbour, so that an
 * unaligned read does not pay a whole request for a sliver. Returns the new count. */
size_t bs_range_merge_slivers(uint64_t (*pieces)[2], size_t n, uint64_t min_len);

#endif
