/* The shim <-> agent protocol (docs/protocol.md): messages as JSON, framed on a Unix stream
 * socket as a 4-byte little-endian length and the JSON text, with an optional file
 * descriptor attached (SCM_RIGHTS) to a reply that serves a chunk from local disk. Over HTTP
 * the same request JSON is the body of POST /v1/chunk and the reply JSON travels in the
 * X-Blobswarm-Meta header with the chunk bytes as the body. This module encodes, decodes and
 * frames; it decides nothing. */
#ifndef BS_AGENTPROTO_H
#define BS_AGENTPROTO_H

#include <stddef.h>
#include <stdint.h>

#include "azcred.h"

#define BS_PROTO_VERSION   1
#define BS_PROTO_MAX_FRAME (64 * 1024)
#define BS_PROTO_MAX_CRCS  4096
#define BS_PROTO_META_HDR  "X-Blobswarm-Meta"
/* The most an agent may announce as its answer time (hello.answer_ms): whoever answers on
 * the socket announces it, so a shim never waits longer than this (plus a margin) for one
 * answer, whatever it is told. */
#define BS_PROTO_MAX_ANSWER_MS 60000
/* Replies with at most this many block checksums list them as a JSON array ("crc"); longer
 * lists travel as base64 of little-endian uint32s ("crc_b64", 21,848 characters for 4,096),
 * so that the reply fits one HTTP header for every geometry the agent accepts. Decoders take
 * either. */
#define BS_PROTO_ARRAY_CRCS 1024

enum bs_chunk_status {
    BS_CHUNK_HIT,     /* served from the store */
    BS_CHUNK_FILLED,  /* fetched from the origin for this request, then served */
    BS_CHUNK_MISS,    /* not served: the caller reads Azure itself (reason says why) */
    BS_CHUNK_DENIED,  /* the delegated credential does not read this blob version */
    BS_CHUNK_ERROR,   /* bad request or agent failure */
    BS_CHUNK_PENDING, /* a fill of this chunk is in progress and moving: ask again rather than
                         reading Azure a second time (sent only to a request with
                         "pending_ok": an older shim would not know it) */
};

struct bs_chunk_req {
    char account[32];
    char container[80];
    char blob[1100];
    char etag[128]; /* the version the caller expects; empty: whatever the credential reads */
    uint64_t chunk;
    /* The block-aligned part of the chunk the caller will use, [sub_off, sub_off+sub_len);
     * sub_len 0 means the whole chunk. HTTP: the part sent. Unix: what the agent counts as
     * served; a descriptor reply always covers the whole chunk. */
    uint64_t sub_off, sub_len;
    int accept_pending;        /* "pending_ok": the caller asks again on BS_CHUNK_PENDING */
    struct bs_delegation auth; /* kind, endpoint, account, secret */
};

struct bs_chunk_reply {
    enum bs_chunk_status status;
    char reason[160];
    char etag[128];
    uint64_t blob_size;
    uint64_t chunk_size; /* the agent's grid */
    uint64_t chunk;
    uint64_t length;           /* bytes of this chunk */
    uint64_t sub_off, sub_len; /* HTTP: the part of the chunk in the body (whole blocks) */
    uint32_t block_size;
    uint32_t ncrcs;
    uint32_t crcs[BS_PROTO_MAX_CRCS];
};

struct bs_hello {
    uint64_t chunk_size;
    uint32_t block_size;
    int version;
    /* The longest the agent takes to answer one chunk request, access check and fill wait
     * included (0: not announced). The shim waits at least this long before it gives up. */
    uint32_t answer_ms;
};

const char *bs_chunk_status_name(enum bs_chunk_status s);

/* JSON encoding into a malloc'd string (caller frees); NULL on allocation failure. */
char *bs_proto_encode_hello_req(void);
char *bs_proto_encode_hello(const struct bs_hello *h);
char *bs_proto_encode_req(const struct bs_chunk_req *r);
/* The same request as op "corrupt": the caller found a block of that chunk bad. */
char *bs_proto_encode_corrupt(const struct bs_chunk_req *r);
/* The frame an agent at its connection limit sends before closing: {"v":1,"status":"busy"}. */
char *bs_proto_encode_busy(void);
/* 1 if json is a busy frame, 0 otherwise. */
int bs_proto_is_busy(const char *json, size_t len);
char *bs_proto_encode_reply(const struct bs_chunk_reply *r);

/* Decoding. Returns 0 or -EINVAL with a message. op receives "hello" or "chunk". */
int bs_proto_decode_op(const char *json, size_t len, char *op, size_t opsz, char *err,
                       size_t errsz);
int bs_proto_decode_req(const char *json, size_t len, struct bs_chunk_req *r, char *err,
                        size_t errsz);
int bs_proto_decode_reply(const char *json, size_t len, struct bs_chunk_reply *r, char *err,
                          size_t errsz);
int bs_proto_decode_hello(const char *json, size_t len, struct bs_hello *h, char *err,
                          size_t errsz);

/* Framing on a connected Unix stream socket. send: one sendmsg with `fd` attached when
 * fd >= 0. recv: reads one frame into a malloc'd NUL-terminated buffer (*out, *len) and the
 * attached descriptor into *fd (-1 if none; caller closes). Both honour an absolute
 * CLOCK_MONOTONIC deadline (0: none). Return 0, -ETIMEDOUT, -EPIPE (peer closed), -EPROTO
 * (frame too large or malformed), or -errno. */
int bs_proto_send(int sock, const char *json, int fd, uint64_t deadline_ns);
int bs_proto_recv(int sock, char **out, size_t *len, int *fd, uint64_t deadline_ns);

#endif
