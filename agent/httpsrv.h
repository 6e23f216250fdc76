/* The agent's HTTP API on libmicrohttpd: POST /v1/chunk (the protocol of agentproto.h; the
 * chunk bytes are sent from the file with sendfile, the reply JSON in X-Blobswarm-Meta),
 * GET /metrics (Prometheus text), /healthz (alive) and /readyz (store open, not draining).
 * One thread per connection; connections are bounded in number (all, and per client IP), in
 * lifetime and in the time a request may take to arrive (slowloris). A drain waits for the
 * bodies being sent. It decides nothing (service.h does). */
#ifndef BS_HTTPSRV_H
#define BS_HTTPSRV_H

#include <stddef.h>

struct bs_httpsrv;
struct bs_service;
struct bs_metrics;
struct bs_store;

struct bs_httpsrv_opts {
    const char *listen;   /* "IPv4:port" (port 0 picks a free one) */
    int max_clients;      /* connections, all clients */
    int max_per_ip;       /* connections of one client IP; the next ones get 503 and are
                             closed; beyond twice this MHD closes them at once */
    long lifetime_ms;     /* a connection is closed this long after it opened, once the
                             answer in progress is sent */
    long request_read_ms; /* a request (headers and body) must arrive within this from the
                             connection's start or the previous answer */
};

struct bs_httpsrv *bs_httpsrv_create(const struct bs_httpsrv_opts *o, struct bs_service *svc,
                                     struct bs_metrics *metrics, struct bs_store *store, char *err,
                                     size_t errsz);
int bs_httpsrv_port(const struct bs_httpsrv *h);
void bs_httpsrv_set_ready(struct bs_httpsrv *h, int ready);
/* Stops accepting, waits up to drain_ms for requests in progress (their answers' bodies
 * sent), stops. Returns the number of requests still in progress when the time ran out: then the
 * server is left running and the caller must not free what it uses (the agent exits). Accepts NULL.
 */
int bs_httpsrv_destroy(struct bs_httpsrv *h, long drain_ms);

#endif
