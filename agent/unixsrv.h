/* The agent's local fast path: a Unix stream socket speaking the framed protocol of
 * agentproto.h. A chunk reply carries a read-only descriptor of the chunk file (SCM_RIGHTS),
 * so the shim reads the bytes straight from the page cache. One thread per connection, at
 * most max_clients connections. It does not decide anything (service.h does). */
#ifndef BS_UNIXSRV_H
#define BS_UNIXSRV_H

#include <stddef.h>

struct bs_unixsrv;
struct bs_service;
struct bs_metrics;

/* Binds `path` (replacing a stale socket file), mode 0666, and starts accepting. */
struct bs_unixsrv *bs_unixsrv_create(const char *path, int max_clients, struct bs_service *svc,
                                     struct bs_metrics *metrics, char *err, size_t errsz);
/* Stops accepting, lets requests in progress finish for at most drain_ms, then closes every
 * connection and frees. Returns the number of connections still inside a request when the
 * time ran out: then nothing was freed and the caller must not free what they use (the
 * agent exits). Accepts NULL. */
int bs_unixsrv_destroy(struct bs_unixsrv *u, long drain_ms);

#endif
