/* The agent's decision for one chunk request, independent of transport: is the endpoint
 * allowed, has this credential shown read access to this blob version (else verify it with
 * a HEAD to Azure and record a grant), is the chunk in the store, else fill it from the
 * origin once however many callers ask (waiting at most fill_wait_ms, then answering MISS so
 * the caller reads Azure itself). Every wait of a request ends by one answer deadline
 * (answer_ms). Fill workers are shared fairly between tenants (storage endpoints): one FIFO
 * per tenant, served round-robin, each tenant capped in queued and running fills. Where a
 * missing chunk comes from is one step (fill_one) that a peer source can precede. It does
 * not speak HTTP or sockets. */
#ifndef BS_SERVICE_H
#define BS_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "agentproto.h"

struct bs_service;
struct bs_store;
struct bs_chunk_ref;
struct bs_blobreader;
struct bs_metrics;

struct bs_service_opts {
    uint64_t chunk_size;
    uint32_t block_size;
    long fill_wait_ms;             /* a request waits this long for a fill, then gets MISS */
    int fill_workers;              /* concurrent origin fills (each holds one chunk buffer) */
    int fill_queue;                /* fills waiting for a worker; beyond: MISS */
    int tenant_workers;            /* workers one tenant (storage endpoint) may hold at once */
    int tenant_queue;              /* fills one tenant may have waiting; beyond: MISS */
    long answer_ms;                /* every request is answered within this (MISS past it) */
    long check_ms;                 /* the check_reader's deadline: a HEAD starts only if this
                                      much of the answer time is left */
    const char *allowed_endpoints; /* comma-separated patterns, '*' = [A-Za-z0-9-]+ */
    long grant_ttl_ms;
    size_t max_grants;
    long fill_stall_ms; /* a fill counts as moving while some fill ended within this: a
                           request that saw its wait run out then gets PENDING, not MISS */
};

struct bs_redisidx;
struct bs_peerclient;
struct bs_chunk_key;

/* Peer sharing (all optional: idx NULL is a standalone agent). Borrowed; they must outlive the
 * service. Where a missing chunk comes from, in order: a holder (another agent, over the peer
 * client), the agent filling it now (asked to wait for its fill), else Azure under a fill
 * lease so that one agent of the cluster reads it from Azure at a time. */
struct bs_service_peers {
    struct bs_redisidx *idx;
    struct bs_peerclient *client;
    long peer_timeout_ms;  /* one fetch from a holder; past it the next holder is tried (hedge) */
    long lease_wait_ms;    /* longest wait on another agent's fill of a chunk */
    int readahead;         /* once a caller with a grant asks for a blob version, fetch the
                              rest of it in the background, starting at a place rotated by
                              this agent's rank so that agents fetch different chunks first */
    int readahead_workers; /* fill workers read-ahead may use at once */
};
/* Call once, before any request. */
void bs_service_set_peers(struct bs_service *s, const struct bs_service_peers *p);
/* The store dropped chunk k (eviction, corruption): this agent leaves its holder set. For the
 * store's on_evict hook; no-op without peers. */
void bs_service_evicted(struct bs_service *s, const struct bs_chunk_key *k);
/* Re-announces every chunk of the store to the index (the index calls it after Redis lost
 * this agent's entries: restart, FLUSHALL, expiry). arg is the service. */
void bs_service_reannounce(void *arg);

/* Borrows store, the readers and metrics (they must outlive the service). `reader` fills
 * chunks; `check_reader` verifies access and must have a deadline of at most check_ms (a
 * request must be answered before the shim gives up on the agent). */
struct bs_service *bs_service_create(const struct bs_service_opts *o, struct bs_store *store,
                                     struct bs_blobreader *reader,
                                     struct bs_blobreader *check_reader, struct bs_metrics *metrics,
                                     char *err, size_t errsz);
/* Stops the fill workers (pending fills fail) and frees. Accepts NULL. */
void bs_service_destroy(struct bs_service *s);

/* Answers one request. rep is always filled; on BS_CHUNK_HIT/FILLED *ref is a pinned chunk
 * the caller serves and then releases with bs_service_release. */
void bs_service_chunk(struct bs_service *s, const struct bs_chunk_req *req,
                      struct bs_chunk_reply *rep, struct bs_chunk_ref **ref);
void bs_service_release(struct bs_service *s, struct bs_chunk_ref *ref);
/* A transport found a chunk file bad while serving: drop it so the next request refills. */
void bs_service_report_corrupt(struct bs_service *s, const struct bs_chunk_req *req);

/* For the peer server (no caller credential: peers are authenticated by the cluster secret):
 * the chunk k if the store holds it, or once a fill of it running here ends (waiting at most
 * wait_ms). 0 with a pinned reference (release with bs_service_release); -EINPROGRESS when
 * the wait ended with the fill still running (the caller may wait again); -ESHUTDOWN when the
 * service is stopping; -ENOENT otherwise. It never starts a fill. */
struct bs_chunk_key;
int bs_service_peer_get(struct bs_service *s, const struct bs_chunk_key *k, long wait_ms,
                        struct bs_chunk_ref **ref);
/* Stopping: fills end at their next decision, waits of the peer server end now. Requests
 * still work (they get MISS for anything not held). Before destroying the servers. */
void bs_service_stop(struct bs_service *s);
/* The chunk grid (bytes), which peers must share. */
uint64_t bs_service_chunk_size(const struct bs_service *s);
/* Fills queued or running. */
int bs_service_busy(struct bs_service *s);

/* The agent's geometry and answer time (answer_ms) for the hello reply. */
void bs_service_hello(const struct bs_service *s, struct bs_hello *h);

/* Whether endpoint matches one of the comma-separated patterns and names `account` (as the
 * first host label, or the first path segment for path-style endpoints). Exposed for tests. */
int bs_endpoint_allowed(const char *patterns, const char *endpoint, const char *account);

#endif
