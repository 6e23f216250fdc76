/* The agent's local fast path: a Unix stream socket speaking the framed protocol of
 * agentproto.h. A chunk reply carries a read-only descriptor of the chunk file (SCM_RIGHTS),
 * so the shim reads the bytes straight from the page cache. One thread per connection; the
 * connections are bounded in number (all peers, and per peer), in lifetime and in idle time.
 * It does not decide anything (service.h does). */
#ifndef BS_UNIXSRV_H
#define BS_UNIXSRV_H

#include <stddef.h>

struct bs_unixsrv;
struct bs_service;
struct bs_metrics;

struct bs_unixsrv_opts {
    const char *path;
    unsigned mode;    /* permissions of the socket file (e.g. 0660) */
    int max_clients;  /* connections, all peers together */
    int max_per_peer; /* connections of one peer (uid + cgroup, see docs/agent.md) */
    long lifetime_ms; /* a connection is closed this long after it was accepted, between
                         requests (a request in progress is answered first) */
    long idle_ms;     /* ... or after this long without a request */
    long frame_ms;    /* one frame must arrive (or leave) within this once started */
};

/* Binds o->path (replacing a stale socket file) with exactly o->mode, never wider, and
 * starts accepting. */
struct bs_unixsrv *bs_unixsrv_create(const struct bs_unixsrv_opts *o, struct bs_service *svc,
                                     struct bs_metrics *metrics, char *err, size_t errsz);
/* Stops accepting, lets requests in progress finish for at most drain_ms, then closes every
 * connection and frees. Returns the number of connections still inside a request when the
 * time ran out: then nothing was freed and the caller must not free what they use (the
 * agent exits). Accepts NULL. */
int bs_unixsrv_destroy(struct bs_unixsrv *u, long drain_ms);

#endif
