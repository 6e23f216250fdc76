/* The agent's HTTP API on libmicrohttpd: POST /v1/chunk (the protocol of agentproto.h; the
 * chunk bytes are sent from the file with sendfile, the reply JSON in X-Blobswarm-Meta),
 * GET /metrics (Prometheus text), /healthz (alive) and /readyz (store open, not draining).
 * One thread per connection, at most max_conns. It decides nothing (service.h does). */
#ifndef BS_HTTPSRV_H
#define BS_HTTPSRV_H

#include <stddef.h>

struct bs_httpsrv;
struct bs_service;
struct bs_metrics;
struct bs_store;

/* listen: "IPv4:port" (port 0 picks a free one). */
struct bs_httpsrv *bs_httpsrv_create(const char *listen, int max_conns, struct bs_service *svc,
                                     struct bs_metrics *metrics, struct bs_store *store, char *err,
                                     size_t errsz);
int bs_httpsrv_port(const struct bs_httpsrv *h);
void bs_httpsrv_set_ready(struct bs_httpsrv *h, int ready);
/* Stops accepting, waits up to drain_ms for requests in progress, stops. Returns the number
 * of requests still in progress when the time ran out: then the server is left running and
 * the caller must not free what it uses (the agent exits). Accepts NULL. */
int bs_httpsrv_destroy(struct bs_httpsrv *h, long drain_ms);

#endif
