/* The shim's side of the node agent: asks the agent for the chunks a read covers, in
 * parallel, and copies what it serves into the caller's buffer after checking every block's
 * CRC-32C. Over the Unix socket the agent hands over the chunk file's descriptor and the
 * bytes are read from the page cache; over HTTP they arrive as the response body. Whatever
 * the agent does not serve (miss, denied, error, bad checksum, timeout) is returned as
 * ranges for the caller to read from Azure. A transport failure opens a circuit breaker: the
 * agent is skipped for cooloff_ms, so an absent agent costs nothing per call. */
#ifndef BS_AGENTCLIENT_H
#define BS_AGENTCLIENT_H

#include <stddef.h>
#include <stdint.h>

struct bs_agentclient;
struct bs_delegation;
struct bs_fetch;

struct bs_agentclient_opts {
    const char *address; /* "unix:/path", "/path", "http://host:port"; "" discover; "off" */
    long timeout_ms;     /* per agent request, fill waits included */
    long cooloff_ms;     /* breaker open time after a transport failure */
    int max_idle;        /* pooled Unix connections */
};

/* NULL when the agent is disabled or nothing was discovered (then reads go direct).
 * fetch (for the HTTP route) is borrowed. */
struct bs_agentclient *bs_agentclient_create(const struct bs_agentclient_opts *o,
                                             struct bs_fetch *fetch);
void bs_agentclient_destroy(struct bs_agentclient *c);
const char *bs_agentclient_address(const struct bs_agentclient *c);

/* Whether the breaker lets a request through now. */
int bs_agentclient_usable(struct bs_agentclient *c);

/* Serves what it can of [off, off+len) of blob version `etag` (size blob_size) into buf.
 * Writes the ranges not served, as (offset, length) pairs in ascending order, into missing
 * (room for max pairs; max >= number of chunks the range covers) and returns their count. */
size_t bs_agentclient_read(struct bs_agentclient *c, const struct bs_delegation *d,
                           const char *container, const char *blob, const char *etag,
                           uint64_t blob_size, void *buf, uint64_t off, size_t len,
                           uint64_t (*missing)[2], size_t max);

/* Whether the agent is the HTTP Service found by discovery (not configured explicitly). */
int bs_agentclient_discovered_http(const struct bs_agentclient *c);

#endif
