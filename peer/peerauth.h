/* Authentication between agents with the cluster secret (HMAC-SHA256, OpenSSL):
 *  - a peer request carries "X-Blobswarm-Peer: v1 node=<name> ts=<unix ms> mac=<64 hex>",
 *    mac = HMAC(secret, "bs-peer-req-v1\n" method "\n" path-and-query "\n" ts "\n" node);
 *    callers pass as path-and-query the address dialed followed by the path and query
 *    ("10.0.3.7:7070/v1/peer/chunk?..."), so that a signature is good at one agent only;
 *    the server accepts ts within +-window_ms of its clock (replay window) and nothing else;
 *  - a chunk record travels with the bytes: "X-Blobswarm-Record: v1 len=<n> sha256=<64 hex>
 *    mac=<64 hex>", mac = HMAC(secret, "bs-chunk-rec-v1\n" account "\n" container "\n" blob
 *    "\n" etag "\n" index "\n" len "\n" sha256hex). The SHA-256 is the one the node that
 *    filled the chunk from Azure computed over Azure's bytes; every receiver recomputes it.
 * The secret is read from a file (at least 32 bytes; surrounding whitespace trimmed).
 * Comparisons are constant-time (CRYPTO_memcmp). */
#ifndef BS_PEERAUTH_H
#define BS_PEERAUTH_H

#include <stddef.h>
#include <stdint.h>

#define BS_PEER_AUTH_HEADER   "X-Blobswarm-Peer"
#define BS_PEER_RECORD_HEADER "X-Blobswarm-Record"
#define BS_PEER_SECRET_MIN    32
#define BS_PEER_SECRET_MAX    1024
#define BS_PEER_HDR_MAX       256

struct bs_peer_secret {
    unsigned char key[BS_PEER_SECRET_MAX];
    size_t len;
};

/* Reads the secret file: regular file, not a link, not readable by group or others (else
 * refused with a message), 32..1024 bytes after trimming. 0 or -1. */
int bs_peer_secret_load(const char *path, struct bs_peer_secret *s, char *err, size_t errsz);

/* Wall-clock time in ms since the epoch: what signatures carry and are checked against (the
 * nodes' clocks must agree within the replay window; monotonic time is node-local). */
int64_t bs_peer_wall_ms(void);

/* The request header value (without the name) for method + path-and-query at ts_ms; empty
 * when the node name is not [A-Za-z0-9._-]{1,63} or an input holds a newline. */
void bs_peer_sign_request(const struct bs_peer_secret *s, const char *node, const char *method,
                          const char *path_query, int64_t ts_ms, char out[BS_PEER_HDR_MAX]);
/* 0 when `hdr` is a valid signature of method + path-and-query within window_ms of now_ms;
 * -1 otherwise (reason in err: "missing", "malformed", "stale", "bad mac"). *node gets the
 * signer's name on success. */
int bs_peer_verify_request(const struct bs_peer_secret *s, const char *hdr, const char *method,
                           const char *path_query, int64_t now_ms, long window_ms, char node[64],
                           char *err, size_t errsz);

struct bs_chunk_id {
    const char *account, *container, *blob, *etag; /* as the store keys them */
    uint64_t index;
};
/* The record header value for a chunk of len bytes whose SHA-256 is sha256; empty when a
 * field of id is missing or holds a newline. */
void bs_peer_sign_record(const struct bs_peer_secret *s, const struct bs_chunk_id *id, uint64_t len,
                         const unsigned char sha256[32], char out[BS_PEER_HDR_MAX]);
/* 0 when `hdr` is an authentic record for chunk id; *len and sha256 get its values. -1 else. */
int bs_peer_verify_record(const struct bs_peer_secret *s, const struct bs_chunk_id *id,
                          const char *hdr, uint64_t *len, unsigned char sha256[32], char *err,
                          size_t errsz);

#endif
