/* Fetches chunks from other agents (libcurl): GET <peer>/v1/peer/chunk?... signed with the
 * cluster secret (peerauth.h), body into the caller's buffer, then checked: status 200, the
 * record authentic, the length and SHA-256 of the bytes equal the record's. Connections are
 * kept alive and shared between callers (a curl share of the connection cache); at most
 * max_downloads transfers run at once (others wait up to their timeout). Thread-safe.
 *
 * The request: GET /v1/peer/chunk?a=<account>&c=<container>&b=<blob>&e=<etag>&i=<index>
 * &w=<wait ms>, every value percent-encoded (curl_easy_escape), signed over exactly that
 * path and query. */
#ifndef BS_PEERCLIENT_H
#define BS_PEERCLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "peerauth.h"
#include "redisidx.h"

struct bs_peerclient;

struct bs_peerclient_opts {
    const struct bs_peer_secret *secret; /* borrowed; must outlive the client */
    const char *node;                    /* this agent's name, sent in the signature */
    int max_downloads;                   /* concurrent peer transfers of this node */
    long connect_ms;                     /* connect timeout */
    long stall_ms;                       /* abort when no byte arrives for this long */
};

/* What went wrong with a peer (for metrics "kind" and for what to do next). */
enum bs_peer_err {
    BS_PEER_OK = 0,
    BS_PEER_E_CONNECT,  /* refused, unreachable, reset before any byte: the peer is dead */
    BS_PEER_E_TIMEOUT,  /* stalled or past the deadline: hedge with another holder */
    BS_PEER_E_NOTFOUND, /* 404: the peer does not hold it (evicted): forget that holder */
    BS_PEER_E_BUSY,     /* 503: the peer is at its upload cap */
    BS_PEER_E_AUTH,     /* 401/403: secrets differ */
    BS_PEER_E_RECORD,   /* record missing, malformed or not authentic */
    BS_PEER_E_DIGEST,   /* bytes do not match the record (length or SHA-256): tampered */
    BS_PEER_E_HTTP,     /* any other status or transport failure */
    BS_PEER_E_LIMIT,    /* no download slot before the deadline */
};
const char *bs_peer_err_name(enum bs_peer_err e); /* "connect", "timeout", ... */

/* The one registration of the peer error counter, shared by the fetching side (label kind =
 * bs_peer_err_name) and the peer server (kind = auth_in, busy_in, notfound_in,
 * bad_request_in): a family registered twice must be registered identically (metrics.h). */
#define BS_PEER_ERRORS_METRIC "blobswarm_peer_errors_total"
#define BS_PEER_ERRORS_HELP                                                                        \
    "Peer transfers that failed, by kind: fetching (connect, timeout, notfound, busy, auth, "      \
    "record, digest, http, limit) or serving (auth_in, busy_in, notfound_in, bad_request_in)."
#define BS_PEER_ERRORS_LABELS "kind"

struct bs_peerclient *bs_peerclient_create(const struct bs_peerclient_opts *o, char *err,
                                           size_t errsz);
void bs_peerclient_destroy(struct bs_peerclient *c);

/* Fetches chunk id from peer p into buf (cap bytes; the chunk must be exactly want_len),
 * asking the peer to wait up to wait_ms for a fill it is doing; the whole call ends by
 * deadline_ns (monotonic, bs_now_ns). On BS_PEER_OK, sha256 holds the verified digest. */
enum bs_peer_err bs_peerclient_fetch(struct bs_peerclient *c, const struct bs_peer *p,
                                     const struct bs_chunk_id *id, uint64_t want_len, long wait_ms,
                                     uint64_t deadline_ns, void *buf, size_t cap,
                                     unsigned char sha256[32], char *err, size_t errsz);

#endif
