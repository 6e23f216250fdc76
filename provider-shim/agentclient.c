/* Agent client (see agentclient.h). Unix route: one pooled connection per chunk in flight;
 * all requests of a read are sent before any reply is awaited, so the agent works on them in
 * parallel. HTTP route: the shim's HTTP engine runs one POST per chunk, in parallel. Both end
 * in copy_verified, which is the only place agent bytes reach the caller's buffer. */
#include "agentclient.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/types.h>
#include <unistd.h>

#include <curl/curl.h>

#include "agentproto.h"
#include "azcred.h"
#include "chunkio.h"
#include "clock.h"
#include "fetch.h"
#include "log.h"

#define DEFAULT_SOCKET    "/run/blobswarm/agent.sock"
#define DEFAULT_SERVICE   "http://blobswarm-agent.blobswarm.svc.cluster.local:8787"
#define MIN_CHUNK         (1u << 20)
#define META_MAX          BS_PROTO_MAX_FRAME
#define HTTP_BUFFER_BYTES (256ull << 20) /* HTTP route: bodies in flight per process */

struct bs_agentclient {
    struct bs_agentclient_opts o;
    char address[512];
    int is_unix;
    int discovered_http; /* the well-known Service, not named by the user */
    char url[600];       /* HTTP route: .../v1/chunk */
    struct bs_fetch *fetch;
    pthread_mutex_t lock;
    int *idle;
    int nidle;
    atomic_uint_fast64_t chunk_size;
    atomic_uint block_size;
    atomic_uint_fast64_t open_until_ns; /* breaker */
    atomic_uint_fast64_t http_buffered; /* bytes of HTTP bounce buffers in use */
    atomic_uint answer_ms;              /* the agent's announced answer time (hello) */
    atomic_int uid_logged;              /* the refusal of a foreign socket owner was logged */
    /* counters (bs_agentclient_stats) */
    atomic_uint_fast64_t n_served, n_miss, n_pending, n_denied, n_error, n_bad_checksum, n_bypassed,
        n_uid_refused, n_unreachable, n_timeouts, n_busy;
    char last_reason[160]; /* under lock */
};

/* get_conn's failures: the agent is busy (not broken), or its socket belongs to another uid. */
#define CONN_BUSY    (-2)
#define CONN_REFUSED (-3)

/* One chunk of a read in flight. */
struct slot {
    uint64_t grid;                /* the chunk size the request was built on */
    uint64_t chunk, cstart, clen; /* the chunk's place in the blob */
    uint64_t want_lo, want_hi;    /* the part of it the caller wants (blob offsets) */
    int sock;
    int served;
    int pending; /* the agent answered BS_CHUNK_PENDING: ask again */
    int corrupt;
    /* HTTP route */
    struct bs_fetch_req req;
    char *body;
    char *meta;
    char *json;
};

static void count(atomic_uint_fast64_t *n)
{
    atomic_fetch_add_explicit(n, 1, memory_order_relaxed);
}

void bs_agentclient_stats(struct bs_agentclient *c, struct bs_agentclient_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!c)
        return;
    out->served = atomic_load(&c->n_served);
    out->miss = atomic_load(&c->n_miss);
    out->denied = atomic_load(&c->n_denied);
    out->error = atomic_load(&c->n_error);
    out->bad_checksum = atomic_load(&c->n_bad_checksum);
    out->bypassed = atomic_load(&c->n_bypassed);
    out->uid_refused = atomic_load(&c->n_uid_refused);
    out->unreachable = atomic_load(&c->n_unreachable);
    out->timeouts = atomic_load(&c->n_timeouts);
    out->busy = atomic_load(&c->n_busy);
    out->pending = atomic_load(&c->n_pending);
    pthread_mutex_lock(&c->lock);
    memcpy(out->last_reason, c->last_reason, sizeof(out->last_reason));
    pthread_mutex_unlock(&c->lock);
}

void bs_agentclient_count_bypass(struct bs_agentclient *c)
{
    if (c)
        count(&c->n_bypassed);
}

/* Keeps the agent's last reason, printable and without quotes (it ends up in a report line). */
static void note_reason(struct bs_agentclient *c, const char *reason)
{
    pthread_mutex_lock(&c->lock);
    size_t i = 0;
    for (; reason[i] && i + 1 < sizeof(c->last_reason); i++)
        c->last_reason[i] =
            reason[i] < 0x20 || reason[i] == 0x7f || reason[i] == '"' || reason[i] == '\\'
                ? '?'
                : reason[i];
    c->last_reason[i] = '\0';
    pthread_mutex_unlock(&c->lock);
}

/* The agent request's own limit: the configured timeout, or the agent's announced answer time
 * plus a margin when that is longer. */
static uint64_t agent_timeout_ns(const struct bs_agentclient *c)
{
    uint64_t ms = (uint64_t)c->o.timeout_ms, announced = atomic_load(&c->answer_ms);
    if (announced && announced + BS_AGENT_ANSWER_MARGIN_MS > ms)
        ms = announced + BS_AGENT_ANSWER_MARGIN_MS;
    return ms * 1000000ull;
}

/* When an agent request started at t0 gives up: its own limit or the caller's deadline
 * (0: none), whichever comes first. */
static uint64_t request_deadline(const struct bs_agentclient *c, uint64_t t0, uint64_t caller)
{
    uint64_t own = t0 + agent_timeout_ns(c);
    return caller && caller < own ? caller : own;
}

/* Checks the owner of the listening socket (SO_PEERCRED: the credentials of the process that
 * called listen) before anything is sent on it. 0 accepted, CONN_REFUSED otherwise. */
static int check_peer(struct bs_agentclient *c, int fd)
{
    if (c->o.peer_uid < 0)
        return 0;
    struct ucred cr;
    socklen_t n = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &n) == 0 && n == sizeof(cr) &&
        (long long)cr.uid == c->o.peer_uid)
        return 0;
    count(&c->n_uid_refused);
    if (atomic_exchange(&c->uid_logged, 1) == 0)
        bs_log(BS_LOG_WARN, "agentclient",
               "event=agent_refused reason=\"socket owner is not the agent's uid\" socket=\"%s\" "
               "uid=%ld expected_uid=%lld",
               c->address, n == sizeof(cr) ? (long)cr.uid : -1L, c->o.peer_uid);
    return CONN_REFUSED;
}

static void trip(struct bs_agentclient *c, const char *why)
{
    uint64_t until = bs_now_ns() + (uint64_t)c->o.cooloff_ms * 1000000ull;
    atomic_store(&c->open_until_ns, until);
    bs_log(BS_LOG_WARN, "agentclient", "event=agent_skipped reason=\"%s\" cooloff_ms=%ld", why,
           c->o.cooloff_ms);
}

int bs_agentclient_usable(struct bs_agentclient *c)
{
    return c && bs_now_ns() >= atomic_load(&c->open_until_ns);
}

int bs_agentclient_discovered_http(const struct bs_agentclient *c)
{
    return c->discovered_http;
}

const char *bs_agentclient_address(const struct bs_agentclient *c)
{
    return c->address;
}

struct bs_agentclient *bs_agentclient_create(const struct bs_agentclient_opts *o,
                                             struct bs_fetch *fetch)
{
    const char *a = o->address ? o->address : "";
    if (strcmp(a, "off") == 0 || strcmp(a, "none") == 0)
        return NULL;
    char addr[512];
    struct stat st;
    int discovered_http = 0;
    if (!*a) {
        if (stat(DEFAULT_SOCKET, &st) == 0 && S_ISSOCK(st.st_mode))
            a = DEFAULT_SOCKET;
        else if (getenv("KUBERNETES_SERVICE_HOST"))
            a = DEFAULT_SERVICE, discovered_http = 1; /* in a pod: the node-local Service */
        else
            return NULL;
    }
    if (strncmp(a, "unix:", 5) == 0)
        a += 5;
    if (strlen(a) >= sizeof(addr))
        return NULL;
    snprintf(addr, sizeof(addr), "%s", a);
    struct bs_agentclient *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->o = *o;
    c->o.max_idle = o->max_idle > 0 ? o->max_idle : 1;
    memcpy(c->address, addr, sizeof(addr));
    c->is_unix = addr[0] == '/';
    c->discovered_http = discovered_http;
    if (!c->is_unix) {
        if (strncmp(addr, "http://", 7) != 0 || !fetch) {
            free(c);
            return NULL;
        }
        size_t n = strlen(addr);
        while (n && addr[n - 1] == '/')
            addr[--n] = '\0';
        snprintf(c->url, sizeof(c->url), "%s/v1/chunk", addr);
        atomic_store(&c->chunk_size, 0);
    }
    c->fetch = fetch;
    c->idle = calloc((size_t)c->o.max_idle, sizeof(int));
    if (!c->idle) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void bs_agentclient_destroy(struct bs_agentclient *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->nidle; i++)
        close(c->idle[i]);
    free(c->idle);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* A connected socket whose agent geometry is known; -1 on failure. */
static int get_conn(struct bs_agentclient *c, uint64_t deadline_ns, int fresh, int *pooled)
{
    int fd = -1;
    if (!fresh) {
        pthread_mutex_lock(&c->lock);
        fd = c->nidle ? c->idle[--c->nidle] : -1;
        pthread_mutex_unlock(&c->lock);
    }
    if (pooled)
        *pooled = fd >= 0;
    if (fd >= 0)
        return fd;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(c->address) >= sizeof(sa.sun_path))
        return -1;
    memcpy(sa.sun_path, c->address, strlen(c->address) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int busy = errno == EAGAIN; /* listen backlog full: busy, not broken */
        close(fd);
        return busy ? CONN_BUSY : -1;
    }
    /* Nothing, not even hello, goes to a socket that is not the agent's. */
    if (check_peer(c, fd) != 0) {
        close(fd);
        return CONN_REFUSED;
    }
    /* Learn (or confirm) the agent's grid on every new connection: it may have restarted. */
    char *hello = bs_proto_encode_hello_req(), *msg = NULL;
    size_t len;
    int rfd = -1;
    struct bs_hello h;
    char err[128];
    int ok = hello && bs_proto_send(fd, hello, -1, deadline_ns) == 0 &&
             bs_proto_recv(fd, &msg, &len, &rfd, deadline_ns) == 0 &&
             bs_proto_decode_hello(msg, len, &h, err, sizeof(err)) == 0 &&
             h.chunk_size >= MIN_CHUNK;
    int busy = !ok && msg && bs_proto_is_busy(msg, len);
    if (ok)
        atomic_store(&c->answer_ms, h.answer_ms);
    free(hello);
    free(msg);
    if (rfd >= 0)
        close(rfd);
    if (!ok) {
        close(fd);
        return busy ? CONN_BUSY : -1; /* at its connection limit, not broken */
    }
    atomic_store(&c->chunk_size, h.chunk_size);
    atomic_store(&c->block_size, h.block_size);
    return fd;
}

static void put_conn(struct bs_agentclient *c, int fd)
{
    pthread_mutex_lock(&c->lock);
    if (c->nidle < c->o.max_idle) {
        c->idle[c->nidle++] = fd;
        fd = -1;
    }
    pthread_mutex_unlock(&c->lock);
    if (fd >= 0)
        close(fd);
}

/* Checks the reply describes the chunk we asked for, of the version we expect. */
static int reply_matches(const struct bs_chunk_reply *r, const struct slot *s, const char *etag,
                         uint64_t blob_size)
{
    return (r->status == BS_CHUNK_HIT || r->status == BS_CHUNK_FILLED) && r->chunk == s->chunk &&
           r->chunk_size == s->grid && r->chunk * r->chunk_size == s->cstart &&
           r->length == s->clen && r->blob_size == blob_size && strcmp(r->etag, etag) == 0 &&
           r->ncrcs == (r->length + r->block_size - 1) / r->block_size;
}

/* Copies the wanted part of a chunk into buf, block by block, each block checked against its
 * CRC before a byte of it counts. Source: descriptor (fd >= 0, chunk data at offset 0) or
 * memory `mem` holding the chunk's bytes from mem_off. Whole blocks are read straight into
 * buf in runs of up to RUN_BYTES (checked while still in cache); the partial blocks at either
 * end go through a bounce buffer. Returns 0 or -EBADMSG / -EIO / -ENOMEM. */
#define RUN_BYTES (512u << 10)
static int copy_verified(const struct bs_chunk_reply *r, const struct slot *s, int fd,
                         const char *mem, uint64_t mem_off, uint64_t mem_len, char *buf,
                         uint64_t off)
{
    uint64_t bs = r->block_size;
    uint64_t lo = s->want_lo - s->cstart, hi = s->want_hi - s->cstart; /* chunk-relative */
    char *bounce = NULL;
    int rc = 0;
    for (uint64_t b = lo / bs * bs; b < hi && rc == 0;) {
        uint64_t blen = b + bs <= r->length ? bs : r->length - b;
        uint64_t cut_lo = lo > b ? lo : b, cut_hi = hi < b + blen ? hi : b + blen;
        int whole = cut_lo == b && cut_hi == b + blen;
        char *dst = buf + (s->cstart + b - off);
        if (fd >= 0 && whole) {
            uint64_t end = b + blen;
            while (end < hi && end - b < RUN_BYTES) {
                uint64_t next = end + bs <= r->length ? bs : r->length - end;
                if (end + next > hi)
                    break;
                end += next;
            }
            rc = bs_pread_full(fd, dst, end - b, b) != 0
                     ? -EIO
                     : bs_chunk_verify(r->crcs, r->ncrcs, (uint32_t)bs, r->length, b, dst, end - b);
            b = end;
            continue;
        }
        const char *src;
        if (fd >= 0) {
            if (!bounce && !(bounce = malloc(bs)))
                return -ENOMEM;
            rc = bs_pread_full(fd, bounce, blen, b) != 0 ? -EIO : 0;
            src = bounce;
        } else if (b < mem_off || b + blen > mem_off + mem_len) {
            rc = -EIO;
            src = NULL;
        } else {
            src = mem + (b - mem_off);
        }
        if (rc == 0)
            rc = bs_chunk_verify(r->crcs, r->ncrcs, (uint32_t)bs, r->length, b, src, blen);
        if (rc == 0)
            memcpy(buf + (s->cstart + cut_lo - off), src + (cut_lo - b), cut_hi - cut_lo);
        b += bs;
    }
    free(bounce);
    return rc;
}

static void fill_req(struct bs_chunk_req *q, const struct bs_delegation *d, const char *container,
                     const char *blob, const char *etag, uint64_t chunk)
{
    snprintf(q->account, sizeof(q->account), "%s", d->account);
    snprintf(q->container, sizeof(q->container), "%s", container);
    snprintf(q->blob, sizeof(q->blob), "%s", blob);
    snprintf(q->etag, sizeof(q->etag), "%s", etag);
    q->chunk = chunk;
    q->sub_off = q->sub_len = 0;
    q->accept_pending = 1;
    q->auth = *d;
}

/* Counts an agent answer by status and keeps the reason of one that serves nothing. */
static void tally(struct bs_agentclient *c, const struct bs_chunk_reply *r)
{
    switch (r->status) {
    case BS_CHUNK_HIT:
    case BS_CHUNK_FILLED:
        return; /* counted once its bytes verified */
    case BS_CHUNK_MISS:
        count(&c->n_miss);
        break;
    case BS_CHUNK_DENIED:
        count(&c->n_denied);
        break;
    case BS_CHUNK_ERROR:
        count(&c->n_error);
        break;
    case BS_CHUNK_PENDING:
        count(&c->n_pending);
        return;
    }
    note_reason(c, r->reason);
}

/* The agent's block size, or a guess until hello or a reply tells. */
static uint64_t block_guess(struct bs_agentclient *c)
{
    uint64_t bs = atomic_load(&c->block_size);
    return bs ? bs : 65536; /* until hello or a reply tells; a wrong guess only costs a miss */
}

/* The block-aligned part of slot s's chunk the caller will use, as q->sub_off/sub_len: over
 * HTTP the part sent; over the Unix route (the descriptor covers the whole chunk) what the
 * agent counts as served. */
static void set_wanted(struct bs_chunk_req *q, const struct slot *s, uint64_t bs)
{
    q->sub_off = (s->want_lo - s->cstart) / bs * bs;
    uint64_t end = (s->want_hi - s->cstart + bs - 1) / bs * bs;
    q->sub_len = (end < s->clen ? end : s->clen) - q->sub_off;
}

/* Tells the agent chunk q->chunk failed its checksums here: it re-checks access and the
 * chunk itself, and drops it so the next reader refills it. */
static void report_corrupt(int sock, const struct bs_chunk_req *q, uint64_t deadline_ns)
{
    char *j = bs_proto_encode_corrupt(q);
    if (j)
        bs_proto_send(sock, j, -1, deadline_ns);
    free(j);
}

static void read_unix(struct bs_agentclient *c, struct slot *sl, size_t n, struct bs_chunk_req *q,
                      const struct bs_delegation *d, const char *container, const char *blob,
                      const char *etag, uint64_t blob_size, char *buf, uint64_t off,
                      uint64_t deadline_ns, int own_deadline)
{
    struct bs_chunk_reply *r = malloc(sizeof(*r));
    if (!r)
        return;
    int failed = 0;
    for (size_t i = 0; i < n && !failed; i++) {
        fill_req(q, d, container, blob, etag, sl[i].chunk);
        set_wanted(q, &sl[i], block_guess(c));
        sl[i].json = bs_proto_encode_req(q);
        int pooled = 0;
        sl[i].sock = sl[i].json ? get_conn(c, deadline_ns, 0, &pooled) : -1;
        if (sl[i].sock >= 0 && pooled &&
            bs_proto_send(sl[i].sock, sl[i].json, -1, deadline_ns) != 0) {
            /* An idle pooled connection the agent closed (idle limit, restart): once more on
             * a new one before deeming the agent broken. */
            close(sl[i].sock);
            sl[i].sock = get_conn(c, deadline_ns, 1, NULL);
            pooled = 0;
        } else if (sl[i].sock >= 0 && pooled) {
            continue; /* sent */
        }
        if (sl[i].sock == CONN_BUSY) {
            count(&c->n_busy);
            sl[i].sock = -1;
            continue;
        }
        if (sl[i].sock == CONN_REFUSED) {
            sl[i].sock = -1;
            failed = 1;
            trip(c, "the agent socket's owner is not the agent's uid");
            continue;
        }
        if (sl[i].sock < 0 || bs_proto_send(sl[i].sock, sl[i].json, -1, deadline_ns) != 0) {
            if (sl[i].sock >= 0)
                close(sl[i].sock);
            sl[i].sock = -1;
            failed = 1;
            count(&c->n_unreachable);
            trip(c, "cannot reach the agent");
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (sl[i].sock < 0)
            continue;
        char *msg = NULL, err[128] = "";
        size_t len = 0;
        int fd = -1;
        int rc = bs_proto_recv(sl[i].sock, &msg, &len, &fd, deadline_ns);
        if (rc == 0)
            rc = bs_proto_decode_reply(msg, len, r, err, sizeof(err));
        free(msg);
        if (rc != 0) {
            close(sl[i].sock);
            sl[i].sock = -1;
            if (fd >= 0)
                close(fd);
            if (rc == -EINVAL)
                bs_log(BS_LOG_WARN, "agentclient", "event=bad_reply msg=\"%s\"", err);
            count(rc == -ETIMEDOUT ? &c->n_timeouts : &c->n_unreachable);
            /* The caller's own deadline running out is not the agent's failure. */
            if (rc != -ETIMEDOUT || own_deadline)
                trip(c, rc == -ETIMEDOUT ? "agent timed out" : "agent connection failed");
            continue;
        }
        tally(c, r);
        sl[i].pending = r->status == BS_CHUNK_PENDING;
        if (fd >= 0 && reply_matches(r, &sl[i], etag, blob_size)) {
            int crc = copy_verified(r, &sl[i], fd, NULL, 0, 0, buf, off);
            sl[i].served = crc == 0;
            count(crc == 0 ? &c->n_served : &c->n_bad_checksum);
            if (crc == -EBADMSG) {
                bs_log(BS_LOG_WARN, "agentclient", "event=bad_checksum blob=\"%s\" chunk=%llu",
                       blob, (unsigned long long)sl[i].chunk);
                fill_req(q, d, container, blob, etag, sl[i].chunk);
                report_corrupt(sl[i].sock, q, deadline_ns);
            }
        } else if (r->status == BS_CHUNK_ERROR) {
            bs_log(BS_LOG_DEBUG, "agentclient", "event=agent_error reason=\"%s\"", r->reason);
        }
        if (fd >= 0)
            close(fd);
        put_conn(c, sl[i].sock);
        sl[i].sock = -1;
    }
    free(r);
}

/* Tells the agent, over HTTP, about chunks whose blocks did not verify (best effort, 1 s). */
static void report_corrupt_http(struct bs_agentclient *c, struct slot *sl, size_t n,
                                struct bs_chunk_req *q, struct curl_slist *headers,
                                uint64_t deadline_ns)
{
    struct bs_fetch_batch batch;
    int any = 0;
    if (bs_fetch_batch_init(&batch) != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (!sl[i].corrupt)
            continue;
        q->chunk = sl[i].chunk; /* the rest of q is this read's */
        q->sub_off = q->sub_len = 0;
        char *j = bs_proto_encode_corrupt(q);
        if (!j)
            continue;
        free(sl[i].json);
        sl[i].json = j;
        memset(&sl[i].req, 0, sizeof(sl[i].req));
        sl[i].req.url = c->url;
        sl[i].req.headers = headers;
        sl[i].req.post_body = sl[i].json;
        bs_fetch_submit(c->fetch, &batch, &sl[i].req);
        any = 1;
    }
    if (any) {
        uint64_t soon = bs_now_ns() + 1000000000ull;
        bs_fetch_wait(c->fetch, &batch, soon < deadline_ns ? soon : deadline_ns);
    }
    bs_fetch_batch_cleanup(&batch);
}

static void read_http(struct bs_agentclient *c, struct slot *sl, size_t n, struct bs_chunk_req *q,
                      const struct bs_delegation *d, const char *container, const char *blob,
                      const char *etag, uint64_t blob_size, char *buf, uint64_t off,
                      uint64_t deadline_ns, int own_deadline)
{
    /* Bodies land in bounce buffers about the size of the read: bounded per process by
     * HTTP_BUFFER_BYTES; a read that does not fit goes to Azure instead (not a failure). */
    uint64_t need = (uint64_t)(sl[n - 1].want_hi - sl[0].want_lo) + n * 2 * (1u << 20);
    if (atomic_fetch_add(&c->http_buffered, need) + need > HTTP_BUFFER_BYTES) {
        atomic_fetch_sub(&c->http_buffered, need);
        return;
    }
    struct bs_fetch_batch batch;
    struct bs_chunk_reply *r = malloc(sizeof(*r));
    if (!r || bs_fetch_batch_init(&batch) != 0) {
        free(r);
        atomic_fetch_sub(&c->http_buffered, need);
        return;
    }
    uint64_t bs = block_guess(c);
    static const char *const hdrs[] = {"Content-Type: application/json", "Accept:", "Expect:"};
    struct curl_slist *headers = NULL;
    for (size_t i = 0; i < sizeof(hdrs) / sizeof(hdrs[0]); i++)
        headers = curl_slist_append(headers, hdrs[i]);
    for (size_t i = 0; i < n; i++) {
        fill_req(q, d, container, blob, etag, sl[i].chunk);
        set_wanted(q, &sl[i], bs);
        sl[i].json = bs_proto_encode_req(q);
        sl[i].body = malloc(q->sub_len ? q->sub_len : 1);
        sl[i].meta = malloc(META_MAX);
        if (!sl[i].json || !sl[i].body || !sl[i].meta)
            continue;
        memset(&sl[i].req, 0, sizeof(sl[i].req));
        sl[i].req.url = c->url;
        sl[i].req.headers = headers;
        sl[i].req.post_body = sl[i].json;
        sl[i].req.dst = sl[i].body;
        sl[i].req.dst_cap = q->sub_len;
        sl[i].req.capture_header = BS_PROTO_META_HDR;
        sl[i].req.capture = sl[i].meta;
        sl[i].req.capture_cap = META_MAX;
        bs_fetch_submit(c->fetch, &batch, &sl[i].req);
        sl[i].sock = 1; /* submitted */
    }
    int wrc = bs_fetch_wait(c->fetch, &batch, deadline_ns);
    int transport_failed = wrc != 0;
    for (size_t i = 0; i < n; i++) {
        if (sl[i].sock != 1)
            continue;
        sl[i].sock = -1;
        char err[128];
        struct bs_fetch_req *f = &sl[i].req;
        if (f->curl_code == CURLE_OK && f->status == 503 &&
            bs_proto_is_busy(f->capture, strlen(f->capture))) {
            /* The agent's own "at my per-client limit" (its busy frame in the meta header; a
             * proxy's 503 in front of a dead agent is a failure): Azure serves this range and
             * the breaker stays closed, as for the Unix route's busy frame. */
            count(&c->n_busy);
            continue;
        }
        if (f->curl_code != CURLE_OK || f->status != 200) {
            count(f->curl_code == CURLE_OPERATION_TIMEDOUT ? &c->n_timeouts : &c->n_unreachable);
            transport_failed = 1;
            continue;
        }
        if (bs_proto_decode_reply(f->capture, strlen(f->capture), r, err, sizeof(err)) != 0) {
            bs_log(BS_LOG_WARN, "agentclient", "event=bad_reply msg=\"%s\"", err);
            count(&c->n_error);
            note_reason(c, err);
            continue;
        }
        tally(c, r);
        sl[i].pending = r->status == BS_CHUNK_PENDING;
        if (r->status == BS_CHUNK_HIT || r->status == BS_CHUNK_FILLED) {
            /* The grid guessed before the first reply: learn it for the next call. */
            atomic_store(&c->block_size, r->block_size);
            if (r->chunk_size >= MIN_CHUNK)
                atomic_store(&c->chunk_size, r->chunk_size);
        }
        if (!reply_matches(r, &sl[i], etag, blob_size) || r->sub_len != f->got ||
            r->block_size != bs || r->sub_off != (sl[i].want_lo - sl[i].cstart) / bs * bs)
            continue;
        int crc = copy_verified(r, &sl[i], -1, sl[i].body, r->sub_off, r->sub_len, buf, off);
        sl[i].served = crc == 0;
        count(crc == 0 ? &c->n_served : &c->n_bad_checksum);
        if (crc == -EBADMSG) {
            bs_log(BS_LOG_WARN, "agentclient", "event=bad_checksum blob=\"%s\" chunk=%llu", blob,
                   (unsigned long long)sl[i].chunk);
            sl[i].corrupt = 1;
        }
    }
    report_corrupt_http(c, sl, n, q, headers, deadline_ns);
    for (size_t i = 0; i < n; i++) {
        free(sl[i].body);
        sl[i].body = NULL;
    }
    atomic_fetch_sub(&c->http_buffered, need);
    if (transport_failed && (!wrc || own_deadline))
        trip(c, wrc ? "agent timed out" : "agent HTTP request failed");
    curl_slist_free_all(headers);
    bs_fetch_batch_cleanup(&batch);
    free(r);
}

static void read_slots(struct bs_agentclient *c, struct slot *sl, size_t n, struct bs_chunk_req *q,
                       const struct bs_delegation *d, const char *container, const char *blob,
                       const char *etag, uint64_t blob_size, char *buf, uint64_t off,
                       uint64_t deadline_ns, int own_deadline)
{
    if (c->is_unix)
        read_unix(c, sl, n, q, d, container, blob, etag, blob_size, buf, off, deadline_ns,
                  own_deadline);
    else
        read_http(c, sl, n, q, d, container, blob, etag, blob_size, buf, off, deadline_ns,
                  own_deadline);
}

#define MAX_PENDING_ROUNDS 1000 /* x the agent's answer time: far past any caller deadline */

size_t bs_agentclient_read(struct bs_agentclient *c, const struct bs_delegation *d,
                           const char *container, const char *blob, const char *etag,
                           uint64_t blob_size, void *buf, uint64_t off, size_t len,
                           uint64_t (*missing)[2], size_t max, uint64_t deadline_ns)
{
    size_t nmiss = 0;
    uint64_t t0 = bs_now_ns(), caller_deadline = deadline_ns;
    deadline_ns = request_deadline(c, t0, caller_deadline);
    uint64_t cs = atomic_load(&c->chunk_size);
    if (c->is_unix && !cs) {
        int fd = get_conn(c, deadline_ns, 0, NULL); /* learns the grid and answer time */
        if (fd < 0) {
            if (fd == -1) {
                count(&c->n_unreachable);
                trip(c, "cannot reach the agent");
            } else if (fd == CONN_REFUSED) {
                trip(c, "the agent socket's owner is not the agent's uid");
            } else {
                count(&c->n_busy);
            }
            goto all_missing;
        }
        put_conn(c, fd);
        cs = atomic_load(&c->chunk_size);
        /* The first hello may have announced a longer answer time than assumed so far. */
        deadline_ns = request_deadline(c, t0, caller_deadline);
    }
    if (!c->is_unix && !cs) {
        cs = 8u << 20; /* the agent's default grid; replies confirm or correct it */
        atomic_store(&c->chunk_size, cs);
    }
    if (len == 0)
        return 0;
    uint64_t first = off / cs, last = (off + len - 1) / cs;
    size_t n = (size_t)(last - first + 1);
    struct slot *sl = calloc(n, sizeof(*sl));
    struct bs_chunk_req *q = malloc(sizeof(*q));
    if (!sl || !q || n > max) {
        free(sl);
        free(q);
        goto all_missing;
    }
    for (size_t i = 0; i < n; i++) {
        sl[i].grid = cs;
        sl[i].chunk = first + i;
        sl[i].cstart = sl[i].chunk * cs;
        sl[i].clen = blob_size - sl[i].cstart < cs ? blob_size - sl[i].cstart : cs;
        sl[i].want_lo = off > sl[i].cstart ? off : sl[i].cstart;
        sl[i].want_hi =
            off + len < sl[i].cstart + sl[i].clen ? off + len : sl[i].cstart + sl[i].clen;
        sl[i].sock = -1;
    }
    read_slots(c, sl, n, q, d, container, blob, etag, blob_size, buf, off, deadline_ns,
               deadline_ns != caller_deadline);
    /* Chunks the agent is still filling (it answered "pending": a fill is in progress and
     * moving) are asked for again, each time with a fresh answer time, until the caller's
     * deadline for the agent: waiting for that fill beats reading the chunk from Azure a
     * second time. MAX_PENDING_ROUNDS bounds the loop whatever the agent answers. */
    for (int round = 0; round < MAX_PENDING_ROUNDS; round++) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            k += sl[i].pending && !sl[i].served;
        uint64_t now = bs_now_ns();
        if (k == 0 || (caller_deadline && now >= caller_deadline))
            break;
        struct slot *again = calloc(k, sizeof(*again));
        if (!again)
            break;
        k = 0;
        for (size_t i = 0; i < n; i++)
            if (sl[i].pending && !sl[i].served) {
                again[k] = sl[i];
                again[k].json = again[k].body = again[k].meta = NULL;
                again[k].sock = -1;
                again[k].pending = 0;
                k++;
            }
        uint64_t dl = request_deadline(c, now, caller_deadline);
        read_slots(c, again, k, q, d, container, blob, etag, blob_size, buf, off, dl,
                   dl != caller_deadline);
        k = 0;
        for (size_t i = 0; i < n; i++)
            if (sl[i].pending && !sl[i].served) {
                sl[i].served = again[k].served;
                sl[i].pending = again[k].pending;
                free(again[k].json);
                free(again[k].body);
                free(again[k].meta);
                k++;
            }
        free(again);
    }
    for (size_t i = 0; i < n; i++) {
        if (!sl[i].served) {
            uint64_t lo = sl[i].want_lo, l = sl[i].want_hi - sl[i].want_lo;
            if (nmiss && missing[nmiss - 1][0] + missing[nmiss - 1][1] == lo)
                missing[nmiss - 1][1] += l;
            else {
                missing[nmiss][0] = lo;
                missing[nmiss][1] = l;
                nmiss++;
            }
        }
        free(sl[i].json);
        free(sl[i].body);
        free(sl[i].meta);
    }
    free(sl);
    free(q);
    return nmiss;

all_missing:
    if (max == 0)
        return 0;
    missing[0][0] = off;
    missing[0][1] = len;
    return len ? 1 : 0;
}
