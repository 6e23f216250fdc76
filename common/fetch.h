/* The HTTP engine: a fixed number of I/O threads, each driving one curl multi handle with a
 * bounded pool of keep-alive connections. Callers submit requests and wait for them; response
 * bodies go straight into caller memory, so the engine holds no body buffers of its own.
 * It does not retry, authorize or interpret Azure semantics (see blobreader.h). */
#ifndef BS_FETCH_H
#define BS_FETCH_H

#include <stddef.h>
#include <stdint.h>

struct bs_fetch;
struct curl_slist;

struct bs_fetch_opts {
    int io_threads;      /* >= 1 */
    int max_connections; /* transfers in flight, all threads together */
    long connect_timeout_ms;
    long stall_timeout_ms; /* a transfer that receives nothing for this long fails */
    const char *ca_bundle; /* or NULL for the system store */
};

/* One request. The caller owns it and keeps it alive until bs_fetch_wait returns. */
struct bs_fetch_req {
    /* in */
    const char *url;
    const struct curl_slist *headers;
    int head;  /* HEAD instead of GET */
    char *dst; /* body destination (GET), at most dst_cap bytes are accepted */
    size_t dst_cap;
    const char *post_body;      /* POST this NUL-terminated body instead of GET, or NULL */
    const char *capture_header; /* one more response header to keep (into capture), or NULL */
    char *capture;
    size_t capture_cap;
    /* out, valid after completion */
    int curl_code;           /* CURLcode; 0 when the exchange completed */
    long status;             /* HTTP status, 0 when none */
    size_t got;              /* body bytes written to dst */
    int overflow;            /* the server sent more than dst_cap */
    uint64_t content_length; /* from Content-Length, UINT64_MAX when absent */
    char etag[128];
    int has_content_range; /* a well-formed Content-Range: bytes first-last/total */
    uint64_t cr_first, cr_last, cr_total;
    char error_code[96]; /* x-ms-error-code */
    long retry_after_ms; /* from Retry-After, -1 when absent */
    /* private */
    struct bs_fetch_batch *batch_;
    void *handle_;
    struct bs_fetch_req *next_;
    int state_;
    uint64_t stall_ns_, last_rx_ns_; /* stall limit; when body bytes last arrived */
    long long last_dlnow_;
    int stalled_;
};

/* A set of requests one caller waits for together. */
struct bs_fetch_batch {
    int pending;
    void *sync_; /* private */
};

struct bs_fetch *bs_fetch_create(const struct bs_fetch_opts *opts, char *err, size_t errsz);
/* Cancels what is in flight, joins the threads, frees everything. Accepts NULL. */
void bs_fetch_destroy(struct bs_fetch *f);

int bs_fetch_batch_init(struct bs_fetch_batch *b);
void bs_fetch_batch_cleanup(struct bs_fetch_batch *b);
/* Queues req as part of batch b. Returns 0 or -ESHUTDOWN. */
int bs_fetch_submit(struct bs_fetch *f, struct bs_fetch_batch *b, struct bs_fetch_req *req);
/* Waits until every request of b completed or the absolute CLOCK_MONOTONIC deadline (ns)
 * passes; on the deadline, cancels the rest (they complete with curl_code
 * CURLE_OPERATION_TIMEDOUT) and waits for that. Never returns while the engine may still
 * write into a request's dst. Returns 0, or -ETIMEDOUT when it had to cancel. */
int bs_fetch_wait(struct bs_fetch *f, struct bs_fetch_batch *b, uint64_t deadline_ns);

/* Reads one response header line (as curl hands it over: "Name: value\r\n", or a status
 * line, which resets every captured field) into r's out fields. Any bytes are accepted; a
 * value that is malformed or too long leaves its field unset. Exposed for the fuzz target. */
void bs_fetch_header_line(struct bs_fetch_req *r, const char *line, size_t len);

#endif
