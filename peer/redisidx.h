/* The cluster index in Redis (hiredis): which agents are alive, which hold which chunk of a
 * blob version, and who is filling a chunk from Azure right now (a lease). Redis is a hint:
 * every call returns within the command timeout, and after a failure the index is "down" for
 * a backoff (calls return BS_IDX_DOWN at once) while one caller at a time tries to reconnect.
 *
 * Keys (all under "bs:v1:", hash-tagged so each blob version's keys share one Redis Cluster
 * slot; every key has a TTL):
 *   bs:v1:{nodes}:n:<node>      STRING advertise address, PX node_ttl (heartbeat every third)
 *   bs:v1:{nodes}:all           ZSET node -> last heartbeat (ms); entries older than node_ttl
 *                               are pruned by each heartbeat; ZCARD = cluster size seen
 *   bs:v1:{nodes}:join          ZSET node -> join time (ms), pruned with :all; rank = ZRANK
 *   bs:v1:{<tag>}:h:<chunk>     ZSET "<node> <addr>" -> announce time (ms): the newest
 *                               max_holders holders of that chunk, PX holder_ttl
 *   bs:v1:{<tag>}:l:<chunk>     STRING "<node> <addr>": the fill lease, SET NX PX lease_ms
 * <tag> is bs_redisidx_tag(): 32 hex digits naming one blob version on one chunk grid.
 * Each decision is one round trip (a Lua script, EVALSHA, falling back to EVAL after a Redis
 * restart). Thread-safe: one connection behind a mutex. */
#ifndef BS_REDISIDX_H
#define BS_REDISIDX_H

#include <stddef.h>
#include <stdint.h>

struct bs_metrics;
struct bs_redisidx;

#define BS_IDX_MAX_HOLDERS 8
#define BS_IDX_NODE_MAX    64 /* node names: [A-Za-z0-9._-]{1,63} */
#define BS_IDX_ADDR_MAX    64 /* advertise address "IPv4:port" or "[IPv6]:port" */
#define BS_IDX_TAG_LEN     32

struct bs_redisidx_opts {
    const char *url;           /* redis://[:password@]host:port[/db] */
    const char *password_file; /* optional; its first line overrides the URL's password */
    const char *node;          /* this agent's name (BLOBSWARM_NODE_NAME) */
    const char *advertise;     /* where peers reach this agent (BLOBSWARM_ADVERTISE_ADDR);
                                  NULL: a client such as a tool, never registered */
    long timeout_ms;           /* connect and each command */
    long node_ttl_ms;          /* registry entry lifetime; heartbeat every node_ttl_ms/3 */
    long holder_ttl_ms;        /* a chunk's holder set lives this long after its last announce */
    long lease_ms;             /* a fill lease expires after this unless released */
    int max_holders;           /* newest holders kept per chunk, 1..BS_IDX_MAX_HOLDERS */
};

struct bs_peer {
    char node[BS_IDX_NODE_MAX];
    char addr[BS_IDX_ADDR_MAX];
};

enum bs_idx_decision {
    BS_IDX_HOLDERS,    /* holders[0..nholders) hold the chunk (this node excluded), newest first */
    BS_IDX_LEASE_WON,  /* nobody holds it and this node now holds the fill lease */
    BS_IDX_LEASE_HELD, /* nobody holds it; `lessee` is filling it (lease_left_ms left) */
    BS_IDX_DOWN,       /* Redis unreachable, slow or not configured: decide alone */
};

struct bs_idx_result {
    enum bs_idx_decision d;
    int nholders;
    struct bs_peer holders[BS_IDX_MAX_HOLDERS];
    struct bs_peer lessee;
    long lease_left_ms;
};

/* Checks the options (URL, node name, address) and starts the heartbeat thread; the first
 * connection is made by the heartbeat, so a Redis that is down at start is not an error.
 * NULL with a message on bad options. `metrics` may be NULL. */
struct bs_redisidx *bs_redisidx_create(const struct bs_redisidx_opts *o, struct bs_metrics *metrics,
                                       char *err, size_t errsz);
/* Stops the heartbeat, removes this node's registry entry (best effort) and frees. NULL ok. */
void bs_redisidx_destroy(struct bs_redisidx *x);

/* Called from the heartbeat thread when this node's registry entry was missing (first
 * contact, Redis restarted or flushed, or the entry expired): it should announce every chunk
 * the node holds. Set before the first heartbeat can matter (right after create). */
void bs_redisidx_set_reannounce(struct bs_redisidx *x, void (*fn)(void *arg), void *arg);

/* The tag of one blob version on one grid: the first 16 bytes of SHA-256 over the four
 * fields, each followed by '\n', as 32 lower-case hex digits plus NUL. `account` is the
 * store's account field ("<endpoint>#grid=<chunk bytes>"), so the grid is part of it. */
void bs_redisidx_tag(const char *account, const char *container, const char *blob, const char *etag,
                     char tag[BS_IDX_TAG_LEN + 1]);

/* One round trip: the holders of the chunk if any (this node excluded); else the lease, won
 * or held. Always fills *r (d = BS_IDX_DOWN on any failure) and returns r->d. */
enum bs_idx_decision bs_redisidx_decide(struct bs_redisidx *x, const char *tag, uint64_t chunk,
                                        struct bs_idx_result *r);
/* This node holds the chunk now: adds it as the newest holder (trimming to max_holders,
 * refreshing the TTL) and drops this node's lease on it, in one round trip. 0 or -1. */
int bs_redisidx_announce(struct bs_redisidx *x, const char *tag, uint64_t chunk);
/* The same for n (at most 256) chunks in one pipelined round trip (re-announcing a store). */
int bs_redisidx_announce_many(struct bs_redisidx *x, const char (*tags)[BS_IDX_TAG_LEN + 1],
                              const uint64_t *chunks, int n);
/* Drops this node's lease (its fill failed) so a waiter can take it at once. 0 or -1. */
int bs_redisidx_release(struct bs_redisidx *x, const char *tag, uint64_t chunk);
/* This node no longer holds the chunk (evicted or dropped): removes its own entry. 0 or -1. */
int bs_redisidx_withdraw(struct bs_redisidx *x, const char *tag, uint64_t chunk);
/* Drops another agent's lease on the chunk if it is still theirs: that agent refused the
 * connection (it is gone), so a waiter need not wait for the lease to expire. 0 or -1. */
int bs_redisidx_break_lease(struct bs_redisidx *x, const char *tag, uint64_t chunk,
                            const struct bs_peer *lessee);
/* Removes one holder entry found dead or without the chunk. 0 or -1. */
int bs_redisidx_forget(struct bs_redisidx *x, const char *tag, uint64_t chunk,
                       const struct bs_peer *p);
/* Cluster size seen at the last heartbeat and this node's rank in it (0-based, by join order;
 * stable while the node stays). 0, or -1 before any successful heartbeat. */
int bs_redisidx_cluster(struct bs_redisidx *x, int *nodes, int *rank);
/* 1 when the last command reached Redis, 0 when the index is down. */
int bs_redisidx_up(struct bs_redisidx *x);
/* For tools: calls fn for each chunk in [0, nchunks) with its holders (pipelined). 0 or -1. */
int bs_redisidx_holders(struct bs_redisidx *x, const char *tag, uint64_t nchunks,
                        void (*fn)(void *arg, uint64_t chunk, const struct bs_peer *holders, int n),
                        void *arg);

/* Parses "redis://[:password@]host:port[/db]" (exposed for tests). 0 or -1 with a message. */
int bs_redis_url_parse(const char *url, char *host, size_t hostsz, int *port, char *password,
                       size_t pwsz, int *db, char *err, size_t errsz);

#endif
