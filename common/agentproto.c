/* Protocol encoding and framing (see agentproto.h). Decoders copy into fixed-size fields and
 * reject anything that does not fit rather than truncating: a truncated blob name or ETag
 * would name a different object. */
#include "agentproto.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "clock.h"

#define NSTATUS 6
static const char *const status_names[NSTATUS] = {"hit",    "filled", "miss",
                                                  "denied", "error",  "pending"};
/* The wire name of a delegated credential kind; NULL for a kind that is never delegated
 * (Shared Key becomes a SAS before it leaves the shim). */
static const char *auth_name(enum bs_auth_kind k)
{
    switch (k) {
    case BS_AUTH_SAS:
        return "sas";
    case BS_AUTH_BEARER:
        return "bearer";
    case BS_AUTH_ANONYMOUS:
        return "none";
    case BS_AUTH_SHARED_KEY:
        break;
    }
    return NULL;
}

const char *bs_chunk_status_name(enum bs_chunk_status s)
{
    return (unsigned)s < NSTATUS ? status_names[s] : "error";
}

static char *dump(json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

char *bs_proto_encode_hello_req(void)
{
    return dump(json_pack("{s:i,s:s}", "v", BS_PROTO_VERSION, "op", "hello"));
}

char *bs_proto_encode_hello(const struct bs_hello *h)
{
    return dump(json_pack("{s:i,s:I,s:i,s:I}", "v", h->version, "chunk_size",
                          (json_int_t)h->chunk_size, "block_size", (int)h->block_size, "answer_ms",
                          (json_int_t)h->answer_ms));
}

char *bs_proto_encode_busy(void)
{
    return dump(json_pack("{s:i,s:s}", "v", BS_PROTO_VERSION, "status", "busy"));
}

int bs_proto_is_busy(const char *json, size_t len)
{
    json_t *j = json_loadb(json, len, 0, NULL);
    json_t *st = json_object_get(j, "status");
    int busy = json_is_string(st) && strcmp(json_string_value(st), "busy") == 0;
    json_decref(j);
    return busy;
}

static char *encode_req_op(const struct bs_chunk_req *r, const char *op)
{
    const char *kind = auth_name(r->auth.kind);
    if (!kind)
        return NULL;
    json_t *j =
        json_pack("{s:i,s:s,s:s,s:s,s:s,s:s,s:I,s:{s:s,s:s,s:s,s:s}}", "v", BS_PROTO_VERSION, "op",
                  op, "account", r->account, "container", r->container, "blob", r->blob, "etag",
                  r->etag, "chunk", (json_int_t)r->chunk, "auth", "kind", kind, "endpoint",
                  r->auth.endpoint, "account", r->auth.account, "secret", r->auth.secret);
    if (j && r->sub_len) {
        json_object_set_new(j, "sub_off", json_integer((json_int_t)r->sub_off));
        json_object_set_new(j, "sub_len", json_integer((json_int_t)r->sub_len));
    }
    if (j && r->accept_pending)
        json_object_set_new(j, "pending_ok", json_true());
    return dump(j);
}

char *bs_proto_encode_req(const struct bs_chunk_req *r)
{
    return encode_req_op(r, "chunk");
}

char *bs_proto_encode_corrupt(const struct bs_chunk_req *r)
{
    return encode_req_op(r, "corrupt");
}

char *bs_proto_encode_reply(const struct bs_chunk_reply *r)
{
    json_t *j = json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:i}", "status",
                          bs_chunk_status_name(r->status), "reason", r->reason, "etag", r->etag,
                          "blob_size", (json_int_t)r->blob_size, "chunk_size",
                          (json_int_t)r->chunk_size, "chunk", (json_int_t)r->chunk, "length",
                          (json_int_t)r->length, "sub_off", (json_int_t)r->sub_off, "sub_len",
                          (json_int_t)r->sub_len, "block_size", (int)r->block_size);
    if (!j)
        return NULL;
    if ((r->status == BS_CHUNK_HIT || r->status == BS_CHUNK_FILLED) &&
        r->ncrcs > BS_PROTO_ARRAY_CRCS) {
        /* Compact: the reply must fit one HTTP header line for every geometry. */
        unsigned char raw[4 * BS_PROTO_MAX_CRCS];
        char b64[4 * ((4 * BS_PROTO_MAX_CRCS + 2) / 3) + 1];
        uint32_t n = r->ncrcs < BS_PROTO_MAX_CRCS ? r->ncrcs : BS_PROTO_MAX_CRCS;
        for (uint32_t i = 0; i < n; i++) {
            raw[4 * i] = (unsigned char)r->crcs[i];
            raw[4 * i + 1] = (unsigned char)(r->crcs[i] >> 8);
            raw[4 * i + 2] = (unsigned char)(r->crcs[i] >> 16);
            raw[4 * i + 3] = (unsigned char)(r->crcs[i] >> 24);
        }
        EVP_EncodeBlock((unsigned char *)b64, raw, (int)(4 * n));
        json_object_set_new(j, "crc_b64", json_string(b64));
    } else if (r->status == BS_CHUNK_HIT || r->status == BS_CHUNK_FILLED) {
        json_t *a = json_array();
        for (uint32_t i = 0; a && i < r->ncrcs; i++)
            json_array_append_new(a, json_integer(r->crcs[i]));
        json_object_set_new(j, "crc", a);
    }
    return dump(j);
}

/* "crc_b64": the CRCs as little-endian uint32s, base64; exactly n of them. */
static int decode_crc_b64(json_t *v, struct bs_chunk_reply *r, uint64_t n)
{
    size_t len = json_string_length(v);
    if (n > BS_PROTO_MAX_CRCS || len != 4 * ((4 * n + 2) / 3))
        return -EINVAL;
    unsigned char raw[4 * BS_PROTO_MAX_CRCS + 3];
    int got = EVP_DecodeBlock(raw, (const unsigned char *)json_string_value(v), (int)len);
    /* DecodeBlock counts padding as zero bytes: at least 4n and at most 4n + 2. */
    if (got < 0 || (uint64_t)got < 4 * n || (uint64_t)got > 4 * n + 2)
        return -EINVAL;
    for (uint64_t i = 0; i < n; i++)
        r->crcs[i] = (uint32_t)raw[4 * i] | (uint32_t)raw[4 * i + 1] << 8 |
                     (uint32_t)raw[4 * i + 2] << 16 | (uint32_t)raw[4 * i + 3] << 24;
    r->ncrcs = (uint32_t)n;
    return 0;
}

static json_t *load(const char *json, size_t len, char *err, size_t errsz)
{
    json_error_t je;
    json_t *j = json_loadb(json, len, 0, &je);
    if (!j || !json_is_object(j)) {
        snprintf(err, errsz, "malformed message: %s", j ? "not an object" : je.text);
        json_decref(j);
        return NULL;
    }
    return j;
}

/* Copies string member `name` into dst; -EINVAL if missing (unless optional) or too long. */
static int get_str(json_t *obj, const char *name, char *dst, size_t dstsz, int optional, char *err,
                   size_t errsz)
{
    json_t *v = json_object_get(obj, name);
    if (!v && optional) {
        dst[0] = '\0';
        return 0;
    }
    if (!json_is_string(v)) {
        snprintf(err, errsz, "field \"%s\" missing or not a string", name);
        return -EINVAL;
    }
    size_t n = json_string_length(v);
    if (n >= dstsz || strlen(json_string_value(v)) != n) {
        snprintf(err, errsz, "field \"%s\" too long or contains NUL", name);
        return -EINVAL;
    }
    memcpy(dst, json_string_value(v), n + 1);
    return 0;
}

static int get_u64(json_t *obj, const char *name, uint64_t *out, char *err, size_t errsz)
{
    json_t *v = json_object_get(obj, name);
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        snprintf(err, errsz, "field \"%s\" missing or not a non-negative integer", name);
        return -EINVAL;
    }
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

int bs_proto_decode_op(const char *json, size_t len, char *op, size_t opsz, char *err, size_t errsz)
{
    json_t *j = load(json, len, err, errsz);
    if (!j)
        return -EINVAL;
    json_t *v = json_object_get(j, "v");
    int rc = -EINVAL;
    if (!json_is_integer(v) || json_integer_value(v) != BS_PROTO_VERSION)
        snprintf(err, errsz, "unsupported protocol version");
    else
        rc = get_str(j, "op", op, opsz, 0, err, errsz);
    json_decref(j);
    return rc;
}

/* Bearer tokens (JWT): base64url and '.'; SAS: a URL query of percent-encoded values. */
static int secret_chars_ok(const char *s, enum bs_auth_kind kind)
{
    const char *extra = kind == BS_AUTH_SAS ? "%&=._~+/:-" : "._~+/=-";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c && strchr(extra, c))))
            return 0;
    }
    return 1;
}

int bs_proto_decode_req(const char *json, size_t len, struct bs_chunk_req *r, char *err,
                        size_t errsz)
{
    json_t *j = load(json, len, err, errsz);
    if (!j)
        return -EINVAL;
    int rc;
    char kind[16];
    json_t *auth = json_object_get(j, "auth");
    if ((rc = get_str(j, "account", r->account, sizeof(r->account), 0, err, errsz)) ||
        (rc = get_str(j, "container", r->container, sizeof(r->container), 0, err, errsz)) ||
        (rc = get_str(j, "blob", r->blob, sizeof(r->blob), 0, err, errsz)) ||
        (rc = get_str(j, "etag", r->etag, sizeof(r->etag), 1, err, errsz)) ||
        (rc = get_u64(j, "chunk", &r->chunk, err, errsz)))
        goto out;
    r->sub_off = r->sub_len = 0;
    r->accept_pending = json_is_true(json_object_get(j, "pending_ok"));
    if (json_object_get(j, "sub_len") && ((rc = get_u64(j, "sub_off", &r->sub_off, err, errsz)) ||
                                          (rc = get_u64(j, "sub_len", &r->sub_len, err, errsz))))
        goto out;
    if (!json_is_object(auth)) {
        snprintf(err, errsz, "field \"auth\" missing");
        rc = -EINVAL;
        goto out;
    }
    if ((rc = get_str(auth, "kind", kind, sizeof(kind), 0, err, errsz)) ||
        (rc = get_str(auth, "endpoint", r->auth.endpoint, sizeof(r->auth.endpoint), 0, err,
                      errsz)) ||
        (rc = get_str(auth, "account", r->auth.account, sizeof(r->auth.account), 1, err, errsz)) ||
        (rc = get_str(auth, "secret", r->auth.secret, sizeof(r->auth.secret), 1, err, errsz)))
        goto out;
    if (strcmp(kind, "sas") == 0)
        r->auth.kind = BS_AUTH_SAS;
    else if (strcmp(kind, "bearer") == 0)
        r->auth.kind = BS_AUTH_BEARER;
    else if (strcmp(kind, "none") == 0)
        r->auth.kind = BS_AUTH_ANONYMOUS;
    else {
        snprintf(err, errsz, "auth kind must be sas, bearer or none");
        rc = -EINVAL;
        goto out;
    }
    if (r->auth.kind != BS_AUTH_ANONYMOUS && !r->auth.secret[0]) {
        snprintf(err, errsz, "auth secret missing");
        rc = -EINVAL;
    } else if (!secret_chars_ok(r->auth.secret, r->auth.kind)) {
        /* The secret goes into a URL or an Authorization header: anything outside the
         * token/query alphabet could inject headers or requests. */
        snprintf(err, errsz, "auth secret has characters a SAS or bearer token cannot have");
        rc = -EINVAL;
    }
out:
    json_decref(j);
    return rc;
}

int bs_proto_decode_reply(const char *json, size_t len, struct bs_chunk_reply *r, char *err,
                          size_t errsz)
{
    json_t *j = load(json, len, err, errsz);
    if (!j)
        return -EINVAL;
    int rc;
    char status[16];
    uint64_t bs = 0;
    memset(r, 0, offsetof(struct bs_chunk_reply, crcs));
    if ((rc = get_str(j, "status", status, sizeof(status), 0, err, errsz)) ||
        (rc = get_str(j, "reason", r->reason, sizeof(r->reason), 1, err, errsz)))
        goto out;
    rc = -EINVAL;
    r->status = BS_CHUNK_ERROR;
    for (int i = 0; i < NSTATUS; i++)
        if (strcmp(status, status_names[i]) == 0) {
            r->status = (enum bs_chunk_status)i;
            rc = 0;
        }
    if (rc) {
        snprintf(err, errsz, "unknown status \"%s\"", status);
        goto out;
    }
    if (r->status != BS_CHUNK_HIT && r->status != BS_CHUNK_FILLED)
        goto out;
    json_t *crc = json_object_get(j, "crc");
    if ((rc = get_str(j, "etag", r->etag, sizeof(r->etag), 0, err, errsz)) ||
        (rc = get_u64(j, "blob_size", &r->blob_size, err, errsz)) ||
        (rc = get_u64(j, "chunk_size", &r->chunk_size, err, errsz)) ||
        (rc = get_u64(j, "chunk", &r->chunk, err, errsz)) ||
        (rc = get_u64(j, "length", &r->length, err, errsz)) ||
        (rc = get_u64(j, "sub_off", &r->sub_off, err, errsz)) ||
        (rc = get_u64(j, "sub_len", &r->sub_len, err, errsz)) ||
        (rc = get_u64(j, "block_size", &bs, err, errsz)))
        goto out;
    rc = -EINVAL;
    json_t *crc64 = json_object_get(j, "crc_b64");
    if (bs == 0 || bs > (1u << 30) || (bs & (bs - 1)) || r->length > BS_PROTO_MAX_CRCS * bs) {
        snprintf(err, errsz, "reply has an inconsistent block size or checksum list");
        goto out;
    }
    uint64_t nblocks = (r->length + bs - 1) / bs;
    if (crc64 && !crc) {
        if (!json_is_string(crc64) || decode_crc_b64(crc64, r, nblocks) != 0) {
            snprintf(err, errsz, "reply has a malformed compact checksum list");
            goto out;
        }
        r->block_size = (uint32_t)bs;
        rc = 0;
        goto out;
    }
    if (crc64 || !json_is_array(crc) || json_array_size(crc) != nblocks) {
        snprintf(err, errsz, "reply has an inconsistent block size or checksum list");
        goto out;
    }
    r->block_size = (uint32_t)bs;
    r->ncrcs = (uint32_t)json_array_size(crc);
    for (uint32_t i = 0; i < r->ncrcs; i++) {
        json_t *v = json_array_get(crc, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > 0xFFFFFFFFll) {
            snprintf(err, errsz, "reply checksum %u is not a 32-bit value", i);
            goto out;
        }
        r->crcs[i] = (uint32_t)json_integer_value(v);
    }
    rc = 0;
out:
    json_decref(j);
    return rc;
}

int bs_proto_decode_hello(const char *json, size_t len, struct bs_hello *h, char *err, size_t errsz)
{
    json_t *j = load(json, len, err, errsz);
    if (!j)
        return -EINVAL;
    uint64_t bs = 0, v = 0;
    int rc;
    if ((rc = get_u64(j, "v", &v, err, errsz)) ||
        (rc = get_u64(j, "chunk_size", &h->chunk_size, err, errsz)) ||
        (rc = get_u64(j, "block_size", &bs, err, errsz)))
        goto out;
    if (v != BS_PROTO_VERSION || h->chunk_size == 0 || bs == 0 || (bs & (bs - 1)) ||
        h->chunk_size % bs || h->chunk_size / bs > BS_PROTO_MAX_CRCS) {
        snprintf(err, errsz, "agent announced an unusable geometry or version");
        rc = -EINVAL;
        goto out;
    }
    h->block_size = (uint32_t)bs;
    h->version = (int)v;
    json_t *am = json_object_get(j, "answer_ms"); /* optional: older agents do not send it */
    json_int_t a = json_is_integer(am) ? json_integer_value(am) : 0;
    h->answer_ms = a <= 0 ? 0 : a > BS_PROTO_MAX_ANSWER_MS ? BS_PROTO_MAX_ANSWER_MS : (uint32_t)a;
out:
    json_decref(j);
    return rc;
}

static int wait_fd(int sock, short events, uint64_t deadline_ns)
{
    for (;;) {
        int timeout = -1;
        if (deadline_ns) {
            uint64_t now = bs_now_ns();
            if (now >= deadline_ns)
                return -ETIMEDOUT;
            timeout = (int)((deadline_ns - now + 999999) / 1000000);
        }
        struct pollfd p = {sock, events, 0};
        int n = poll(&p, 1, timeout);
        if (n > 0)
            return 0;
        if (n == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

int bs_proto_send(int sock, const char *json, int fd, uint64_t deadline_ns)
{
    size_t len = strlen(json);
    if (len > BS_PROTO_MAX_FRAME)
        return -EPROTO;
    unsigned char hdr[4] = {(unsigned char)len, (unsigned char)(len >> 8),
                            (unsigned char)(len >> 16), (unsigned char)(len >> 24)};
    struct iovec iov[2] = {{hdr, 4}, {(void *)json, len}};
    size_t total = 4 + len, sent = 0;
    int first = 1;
    while (sent < total) {
        int rc = wait_fd(sock, POLLOUT, deadline_ns);
        if (rc)
            return rc;
        /* Skip what was already sent. */
        struct iovec v[2];
        int nv = 0;
        size_t skip = sent;
        for (int i = 0; i < 2; i++) {
            if (skip >= iov[i].iov_len) {
                skip -= iov[i].iov_len;
                continue;
            }
            v[nv].iov_base = (char *)iov[i].iov_base + skip;
            v[nv].iov_len = iov[i].iov_len - skip;
            skip = 0;
            nv++;
        }
        struct msghdr m = {0};
        m.msg_iov = v;
        m.msg_iovlen = (size_t)nv;
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        if (first && fd >= 0) {
            memset(&ctl, 0, sizeof(ctl));
            m.msg_control = ctl.buf;
            m.msg_controllen = sizeof(ctl.buf);
            struct cmsghdr *c = CMSG_FIRSTHDR(&m);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &fd, sizeof(int));
        }
        ssize_t n = sendmsg(sock, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            return errno == EPIPE || errno == ECONNRESET ? -EPIPE : -errno;
        }
        first = 0;
        sent += (size_t)n;
    }
    return 0;
}

/* Reads exactly n bytes; collects a descriptor if one arrives. */
static int recv_all(int sock, void *buf, size_t n, int *fd, uint64_t deadline_ns)
{
    size_t got = 0;
    while (got < n) {
        int rc = wait_fd(sock, POLLIN, deadline_ns);
        if (rc)
            return rc;
        struct iovec v = {(char *)buf + got, n - got};
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(int) * 4)];
        } ctl;
        struct msghdr m = {0};
        m.msg_iov = &v;
        m.msg_iovlen = 1;
        m.msg_control = ctl.buf;
        m.msg_controllen = sizeof(ctl.buf);
        ssize_t r = recvmsg(sock, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            return errno == ECONNRESET ? -EPIPE : -errno;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < nfd; i++) {
                int f;
                memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                if (*fd < 0)
                    *fd = f;
                else
                    close(f); /* one descriptor per frame; extras are dropped */
            }
        }
        if (r == 0)
            return -EPIPE;
        got += (size_t)r;
    }
    return 0;
}

int bs_proto_recv(int sock, char **out, size_t *len, int *fd, uint64_t deadline_ns)
{
    *out = NULL;
    *len = 0;
    *fd = -1;
    unsigned char hdr[4];
    int rc = recv_all(sock, hdr, 4, fd, deadline_ns);
    if (rc)
        goto out_fail;
    size_t n = (size_t)hdr[0] | (size_t)hdr[1] << 8 | (size_t)hdr[2] << 16 | (size_t)hdr[3] << 24;
    if (n > BS_PROTO_MAX_FRAME) {
        rc = -EPROTO;
        goto out_fail;
    }
    char *buf = malloc(n + 1);
    if (!buf) {
        rc = -ENOMEM;
        goto out_fail;
    }
    rc = recv_all(sock, buf, n, fd, deadline_ns);
    if (rc) {
        free(buf);
        goto out_fail;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;

out_fail:
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
    return rc;
}
