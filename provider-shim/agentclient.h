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
    long timeout_ms;     /* per agent request, fill waits included; raised to the agent's announced
                            answer time + BS_AGENT_ANSWER_MARGIN_MS */
    long cooloff_ms;     /* breaker open time after a transport failure */
    int max_idle;        /* pooled Unix connections */
    long long peer_uid;  /* Unix route: the uid the agent's socket must belong to (SO_PEERCRED of
                            the listener); -1 accepts any (an explicit opt-out) */
};

/* Added to the answer time an agent announces in hello: by construction a slow but correct
 * agent answers before the shim gives up on it. */
#define BS_AGENT_ANSWER_MARGIN_MS 1000

/* Why reads did or did not use the agent, counted per process (blobswarm-read prints them). */
struct bs_agentclient_stats {
    uint64_t served;       /* chunks served (hit or filled) and verified */
    uint64_t miss;         /* agent answered miss */
    uint64_t denied;       /* agent answered denied */
    uint64_t error;        /* agent answered error */
    uint64_t bad_checksum; /* served bytes failed their CRC-32C */
    uint64_t bypassed;     /* reads that skipped the agent: breaker open */
    uint64_t uid_refused;  /* connections refused: the socket's owner is not the agent's uid */
    uint64_t unreachable;  /* connect or transport failures */
    uint64_t timeouts;     /* no answer within the agent timeout */
    uint64_t busy;         /* the agent was at its connection limit */
    uint64_t pending;      /* answers "a fill is in progress, ask again" (asked again) */
    char last_reason[160]; /* the agent's last miss/denied/error reason */
};

/* NULL when the agent is disabled or nothing was discovered (then reads go direct).
 * fetch (for the HTTP route) is borrowed. */
struct bs_agentclient *bs_agentclient_create(const struct bs_agentclient_opts *o,
                                             struct bs_fetch *fetch);
void bs_agentclient_destroy(struct bs_agentclient *c);
const char *bs_agentclient_address(const struct bs_agentclient *c);

/* Whether the breaker lets a request through now. */
int bs_agentclient_usable(struct bs_agentclient *c);

/* Serves what it can of [off, off+len) of blob version `etag` (size blob_size) into buf,
 * giving up at the absolute CLOCK_MONOTONIC deadline_ns (the caller's whole read) or after the
 * agent timeout, whichever comes first. Writes the ranges not served, as (offset, length)
 * pairs in ascending order, into missing (room for max pairs; max >= number of chunks the
 * range covers) and returns their count. */
size_t bs_agentclient_read(struct bs_agentclient *c, const struct bs_delegation *d,
                           const char *container, const char *blob, const char *etag,
                           uint64_t blob_size, void *buf, uint64_t off, size_t len,
                           uint64_t (*missing)[2], size_t max, uint64_t deadline_ns);

/* A snapshot of the counters. */
void bs_agentclient_stats(struct bs_agentclient *c, struct bs_agentclient_stats *out);
/* Counts a read that skipped the agent (breaker open). */
void bs_agentclient_count_bypass(struct bs_agentclient *c);

/* Whether the agent is the HTTP Service found by discovery (not configured explicitly). */
int bs_agentclient_discovered_http(const struct bs_agentclient *c);

#endif
