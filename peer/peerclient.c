/* The peer client (see peerclient.h). Each of max_downloads slots owns one curl easy handle
 * and a private multi handle that keeps its idle connections alive; a fetch takes a free slot
 * (preferring one whose last transfer went to the same peer, so its connection is reused)
 * and drives the transfer itself, waking at least when the stall or the deadline would
 * expire: a peer that stops sending is dropped after stall_ms, not at the next whole second
 * of curl's low-speed check (which stays as a backstop). The slots share one DNS cache (a
 * curl share with locks). The connection cache is not shared between threads: libcurl does
 * not support that (curl known bug "A shared connection cache is not thread-safe", curl
 * issues 4915 and 9404), hence the per-slot connections and the peer affinity.
 * Received bytes are copied into the caller's buffer and hashed (SHA-256) as they arrive;
 * the record is verified when the headers end, before any body byte is accepted. */
#include "peerclient.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "clock.h"

#define MAX_DOWNLOADS 1024         /* bound on max_downloads */
#define SLOT_CONNS    4            /* idle connections one slot keeps (to its recent peers) */
#define RECV_BUFFER   (256 * 1024) /* curl's receive buffer per transfer */
#define HDR_BYTES_MAX 16384        /* response header bytes accepted */
#define ERR_BODY_MAX  4096         /* body bytes of a non-200 answer read, then the rest cut */
#define WAKE_MAX_MS   1000         /* longest sleep between two checks of a transfer */
#define CHUNK_PATH    "/v1/peer/chunk"

struct slot {
    CURL *e;
    CURLM *m;                   /* private: holds this slot's kept-alive connections */
    EVP_MD_CTX *md;             /* reused for every transfer of the slot */
    char addr[BS_IDX_ADDR_MAX]; /* the peer of its last transfer */
    uint64_t used_ns;
    int busy;
};

struct bs_peerclient {
    struct bs_peerclient_opts o;
    char node[BS_IDX_NODE_MAX];
    CURLSH *share;
    pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
    pthread_mutex_t lock; /* slots' busy, addr, used_ns */
    pthread_cond_t cv;    /* a slot was freed */
    struct slot *slots;
    int nslots;
};

/* One transfer's state, on the fetching thread's stack; curl's callbacks update it. */
struct xfer {
    CURL *e;
    EVP_MD_CTX *md;
    const struct bs_peer_secret *secret;
    const struct bs_chunk_id *id;
    uint64_t want_len;
    unsigned char *buf;
    uint64_t got;      /* body bytes of a 200 copied into buf */
    uint64_t rx_bytes; /* any bytes received (headers and body) */
    size_t hdr_bytes;  /* header bytes of the response */
    size_t skipped;    /* body bytes of a non-200 answer */
    long status;       /* when headers_done */
    int headers_done;  /* the final response's headers ended */
    int record_seen, record_bad;
    char record[BS_PEER_HDR_MAX];
    uint64_t rec_len;
    unsigned char rec_sha[32];
    enum bs_peer_err verdict; /* set when a callback or the driver stops the transfer */
    char why[160];
    uint64_t sent_ns;    /* the request was about to be sent on a connection */
    uint64_t last_rx_ns; /* the last byte arrived */
    uint64_t wait_ns;    /* the wait the request asked the peer for: the first byte may come
                            that much later than the stall limit */
};

static const char *const err_names[] = {
    [BS_PEER_OK] = "ok",
    [BS_PEER_E_CONNECT] = "connect",
    [BS_PEER_E_TIMEOUT] = "timeout",
    [BS_PEER_E_NOTFOUND] = "notfound",
    [BS_PEER_E_BUSY] = "busy",
    [BS_PEER_E_AUTH] = "auth",
    [BS_PEER_E_RECORD] = "record",
    [BS_PEER_E_DIGEST] = "digest",
    [BS_PEER_E_HTTP] = "http",
    [BS_PEER_E_LIMIT] = "limit",
};

const char *bs_peer_err_name(enum bs_peer_err e)
{
    if ((unsigned)e >= sizeof(err_names) / sizeof(err_names[0]) || !err_names[e])
        return "unknown";
    return err_names[e];
}

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *ud)
{
    (void)h;
    (void)access;
    struct bs_peerclient *c = ud;
    if ((unsigned)data < CURL_LOCK_DATA_LAST)
        pthread_mutex_lock(&c->share_locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *ud)
{
    (void)h;
    struct bs_peerclient *c = ud;
    if ((unsigned)data < CURL_LOCK_DATA_LAST)
        pthread_mutex_unlock(&c->share_locks[data]);
}

/* A peer address as the index stores it ("IPv4:port", "[IPv6]:port" or "host:port"): only
 * characters that cannot leave the URL's authority (no '/', '@', '?', '#', '%'). */
static int addr_ok(const char *a)
{
    size_t n = strnlen(a, BS_IDX_ADDR_MAX);
    if (n == 0 || n >= BS_IDX_ADDR_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = a[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == ':' || ch == '[' || ch == ']'))
            return 0;
    }
    return 1;
}

static size_t on_header(char *data, size_t size, size_t nitems, void *ud)
{
    struct xfer *x = ud;
    size_t len = size * nitems;
    x->rx_bytes += len;
    x->last_rx_ns = bs_now_ns();
    x->hdr_bytes += len;
    if (x->hdr_bytes > HDR_BYTES_MAX) {
        x->verdict = BS_PEER_E_HTTP;
        snprintf(x->why, sizeof(x->why), "response headers over %d bytes", HDR_BYTES_MAX);
        return 0;
    }
    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) { /* a (new) response: 1xx come first */
        x->headers_done = 0;
        x->record_seen = x->record_bad = 0;
        x->record[0] = '\0';
        return len;
    }
    if ((len == 2 && data[0] == '\r' && data[1] == '\n') || (len == 1 && data[0] == '\n')) {
        long status = 0;
        curl_easy_getinfo(x->e, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 100 && status < 200)
            return len;
        x->status = status;
        x->headers_done = 1;
        if (status != 200)
            return len;
        /* Decided here, before a body byte is taken: a record that is missing, forged or for
         * another length stops the transfer. */
        char why[64];
        if (x->record_bad) {
            x->verdict = BS_PEER_E_RECORD;
            snprintf(x->why, sizeof(x->why), "record header repeated or too long");
        } else if (bs_peer_verify_record(x->secret, x->id, x->record_seen ? x->record : NULL,
                                         &x->rec_len, x->rec_sha, why, sizeof(why)) != 0) {
            x->verdict = BS_PEER_E_RECORD;
            snprintf(x->why, sizeof(x->why), "record %s", why);
        } else if (x->rec_len != x->want_len) {
            x->verdict = BS_PEER_E_RECORD;
            snprintf(x->why, sizeof(x->why), "record says %llu bytes, %llu expected",
                     (unsigned long long)x->rec_len, (unsigned long long)x->want_len);
        } else if (!EVP_DigestInit_ex(x->md, EVP_sha256(), NULL)) {
            x->verdict = BS_PEER_E_HTTP;
            snprintf(x->why, sizeof(x->why), "SHA-256 unavailable");
        }
        return x->verdict == BS_PEER_OK ? len : 0;
    }
    static const char name[] = BS_PEER_RECORD_HEADER ":";
    if (len > sizeof(name) - 1 && strncasecmp(data, name, sizeof(name) - 1) == 0) {
        const char *v = data + sizeof(name) - 1, *end = data + len;
        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
            end--;
        size_t n = (size_t)(end - v);
        if (x->record_seen || n >= sizeof(x->record) || memchr(v, '\0', n)) {
            x->record_bad = 1;
        } else {
            memcpy(x->record, v, n);
            x->record[n] = '\0';
        }
        x->record_seen = 1;
    }
    return len;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    struct xfer *x = ud;
    size_t len = size * nmemb;
    x->rx_bytes += len;
    x->last_rx_ns = bs_now_ns();
    if (!x->headers_done) {
        x->verdict = BS_PEER_E_HTTP;
        snprintf(x->why, sizeof(x->why), "body before the headers ended");
        return 0;
    }
    if (x->status != 200) { /* a short text at most; its status decides */
        x->skipped += len;
        return x->skipped > ERR_BODY_MAX ? 0 : len;
    }
    if (len > x->want_len - x->got) {
        x->verdict = BS_PEER_E_DIGEST;
        snprintf(x->why, sizeof(x->why), "body longer than the record's %llu bytes",
                 (unsigned long long)x->want_len);
        return 0;
    }
    memcpy(x->buf + x->got, data, len);
    if (!EVP_DigestUpdate(x->md, data, len)) {
        x->verdict = BS_PEER_E_HTTP;
        snprintf(x->why, sizeof(x->why), "SHA-256 failed");
        return 0;
    }
    x->got += len;
    return len;
}

static int on_prereq(void *ud, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
    (void)primary_ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    struct xfer *x = ud;
    x->sent_ns = x->last_rx_ns = bs_now_ns();
    return CURL_PREREQFUNC_OK;
}

/* Options that stay the same for every transfer of a slot. */
static int slot_init(struct bs_peerclient *c, struct slot *s)
{
    s->e = curl_easy_init();
    s->m = curl_multi_init();
    s->md = EVP_MD_CTX_new();
    if (!s->e || !s->m || !s->md)
        return -1;
    long stall_s = (c->o.stall_ms + 999) / 1000;
    CURL *e = s->e;
    curl_easy_setopt(e, CURLOPT_SHARE, c->share);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)RECV_BUFFER);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, stall_s);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
    curl_multi_setopt(s->m, CURLMOPT_MAXCONNECTS, (long)SLOT_CONNS);
    return 0;
}

static void slot_cleanup(struct slot *s)
{
    if (s->m)
        curl_multi_cleanup(s->m); /* closes its connections */
    if (s->e)
        curl_easy_cleanup(s->e);
    EVP_MD_CTX_free(s->md);
    memset(s, 0, sizeof(*s));
}

struct bs_peerclient *bs_peerclient_create(const struct bs_peerclient_opts *o, char *err,
                                           size_t errsz)
{
    static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
    char probe[BS_PEER_HDR_MAX];
    if (!o->secret || o->secret->len < BS_PEER_SECRET_MIN) {
        snprintf(err, errsz, "peer client: no cluster secret");
        return NULL;
    }
    /* The node name rule is the signer's: a name it cannot sign is refused here. */
    if (o->node)
        bs_peer_sign_request(o->secret, o->node, "GET", CHUNK_PATH, 0, probe);
    if (!o->node || !probe[0] || strlen(o->node) >= BS_IDX_NODE_MAX) {
        snprintf(err, errsz, "peer client: node name must be 1-63 of [A-Za-z0-9._-]");
        return NULL;
    }
    if (o->max_downloads < 1 || o->max_downloads > MAX_DOWNLOADS || o->connect_ms < 1 ||
        o->stall_ms < 1) {
        snprintf(err, errsz,
                 "peer client: max_downloads must be 1-%d, connect and stall times positive",
                 MAX_DOWNLOADS);
        return NULL;
    }
    pthread_once(&curl_once, curl_init_once);
    struct bs_peerclient *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    c->o = *o;
    snprintf(c->node, sizeof(c->node), "%s", o->node);
    c->o.node = c->node;
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&c->share_locks[i], NULL);
    pthread_mutex_init(&c->lock, NULL);
    bs_cond_init(&c->cv);
    c->slots = calloc((size_t)o->max_downloads, sizeof(*c->slots));
    c->nslots = o->max_downloads;
    c->share = curl_share_init();
    if (!c->slots || !c->share ||
        curl_share_setopt(c->share, CURLSHOPT_LOCKFUNC, share_lock) != CURLSHE_OK ||
        curl_share_setopt(c->share, CURLSHOPT_UNLOCKFUNC, share_unlock) != CURLSHE_OK ||
        curl_share_setopt(c->share, CURLSHOPT_USERDATA, c) != CURLSHE_OK ||
        curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) != CURLSHE_OK) {
        snprintf(err, errsz, "peer client: cannot set up libcurl");
        bs_peerclient_destroy(c);
        return NULL;
    }
    return c;
}

void bs_peerclient_destroy(struct bs_peerclient *c)
{
    if (!c)
        return;
    for (int i = 0; c->slots && i < c->nslots; i++)
        slot_cleanup(&c->slots[i]);
    free(c->slots);
    if (c->share)
        curl_share_cleanup(c->share);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&c->share_locks[i]);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* A free slot by deadline_ns, preferring the one whose last peer was addr, else the least
 * recently used. NULL when none freed up in time. */
static struct slot *slot_take(struct bs_peerclient *c, const char *addr, uint64_t deadline_ns)
{
    struct slot *pick = NULL;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        for (int i = 0; i < c->nslots; i++) {
            struct slot *s = &c->slots[i];
            if (s->busy)
                continue;
            if (strcmp(s->addr, addr) == 0) {
                pick = s;
                break;
            }
            if (!pick || s->used_ns < pick->used_ns)
                pick = s;
        }
        if (pick || bs_cond_wait_until(&c->cv, &c->lock, deadline_ns) == ETIMEDOUT)
            break;
    }
    if (!pick) { /* a slot may have been freed as the wait timed out */
        for (int i = 0; i < c->nslots && !pick; i++)
            if (!c->slots[i].busy)
                pick = &c->slots[i];
    }
    if (pick)
        pick->busy = 1;
    pthread_mutex_unlock(&c->lock);
    return pick;
}

static void slot_give(struct bs_peerclient *c, struct slot *s, const char *addr)
{
    pthread_mutex_lock(&c->lock);
    snprintf(s->addr, sizeof(s->addr), "%s", addr);
    s->used_ns = bs_now_ns();
    s->busy = 0;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->lock);
}

/* "/v1/peer/chunk?a=..&c=..&b=..&e=..&i=..&w=..", malloc'd; NULL on allocation failure. */
static char *chunk_path(CURL *e, const struct bs_chunk_id *id, long wait_ms)
{
    char *a = curl_easy_escape(e, id->account, 0), *ct = curl_easy_escape(e, id->container, 0);
    char *b = curl_easy_escape(e, id->blob, 0), *et = curl_easy_escape(e, id->etag, 0);
    char *out = NULL;
    if (a && ct && b && et) {
#define CHUNK_QUERY CHUNK_PATH "?a=%s&c=%s&b=%s&e=%s&i=%llu&w=%ld"
        unsigned long long i = (unsigned long long)id->index;
        int n = snprintf(NULL, 0, CHUNK_QUERY, a, ct, b, et, i, wait_ms);
        out = n > 0 ? malloc((size_t)n + 1) : NULL;
        if (out)
            snprintf(out, (size_t)n + 1, CHUNK_QUERY, a, ct, b, et, i, wait_ms);
#undef CHUNK_QUERY
    }
    curl_free(a);
    curl_free(ct);
    curl_free(b);
    curl_free(et);
    return out;
}

static long ms_until(uint64_t t_ns, uint64_t now_ns)
{
    if (t_ns <= now_ns)
        return 0;
    uint64_t ms = (t_ns - now_ns + BS_NS_PER_MS - 1) / BS_NS_PER_MS;
    return ms > (uint64_t)WAKE_MAX_MS ? WAKE_MAX_MS : (long)ms;
}

/* Runs the transfer on the slot's private multi handle until it ends, stalls or passes the
 * deadline. Returns curl's result (CURLE_OK when the driver itself stopped it: see
 * x->verdict). */
static CURLcode drive(struct bs_peerclient *c, struct slot *s, struct xfer *x, uint64_t deadline_ns)
{
    uint64_t stall_ns = (uint64_t)c->o.stall_ms * BS_NS_PER_MS;
    CURLcode res = CURLE_OK;
    if (curl_multi_add_handle(s->m, s->e) != CURLM_OK)
        return CURLE_FAILED_INIT;
    for (;;) {
        int running = 0;
        if (curl_multi_perform(s->m, &running) != CURLM_OK) {
            res = CURLE_FAILED_INIT;
            break;
        }
        if (!running) {
            int left;
            CURLMsg *msg;
            res = CURLE_RECV_ERROR;
            while ((msg = curl_multi_info_read(s->m, &left)))
                if (msg->msg == CURLMSG_DONE)
                    res = msg->data.result;
            break;
        }
        uint64_t now = bs_now_ns();
        if (now >= deadline_ns) {
            x->verdict = BS_PEER_E_TIMEOUT;
            snprintf(x->why, sizeof(x->why), "past the deadline (%llu bytes received)",
                     (unsigned long long)x->got);
            break;
        }
        uint64_t grace = x->rx_bytes ? 0 : x->wait_ns;
        uint64_t stall_at = x->sent_ns ? x->last_rx_ns + stall_ns + grace : UINT64_MAX;
        if (now >= stall_at) {
            x->verdict = BS_PEER_E_TIMEOUT;
            snprintf(x->why, sizeof(x->why), "no byte for %ld ms (%llu bytes received)",
                     c->o.stall_ms, (unsigned long long)x->got);
            break;
        }
        long wait = ms_until(deadline_ns < stall_at ? deadline_ns : stall_at, now), t = -1;
        curl_multi_timeout(s->m, &t);
        if (t >= 0 && t < wait)
            wait = t;
        if (wait > 0)
            curl_multi_poll(s->m, NULL, 0, (int)wait, NULL);
    }
    /* Removing a transfer that did not end closes its connection; an ended one's connection
     * stays in the slot's cache. */
    curl_multi_remove_handle(s->m, s->e);
    return res;
}

static enum bs_peer_err status_err(long status)
{
    switch (status) {
    case 404:
        return BS_PEER_E_NOTFOUND;
    case 503:
        return BS_PEER_E_BUSY;
    case 401:
    case 403:
        return BS_PEER_E_AUTH;
    default:
        return BS_PEER_E_HTTP;
    }
}

/* What went wrong, from curl's result and what the callbacks saw. */
static enum bs_peer_err transport_err(CURLcode res, const struct xfer *x, uint64_t deadline_ns)
{
    switch (res) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
        return BS_PEER_E_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        /* Not connected within connect_ms: the peer is unreachable, unless it was the
         * caller's deadline that ran out first. */
        if (!x->sent_ns && bs_now_ns() < deadline_ns)
            return BS_PEER_E_CONNECT;
        return BS_PEER_E_TIMEOUT;
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
        return x->rx_bytes == 0 ? BS_PEER_E_CONNECT : BS_PEER_E_HTTP;
    default:
        return BS_PEER_E_HTTP;
    }
}

enum bs_peer_err bs_peerclient_fetch(struct bs_peerclient *c, const struct bs_peer *p,
                                     const struct bs_chunk_id *id, uint64_t want_len, long wait_ms,
                                     uint64_t deadline_ns, void *buf, size_t cap,
                                     unsigned char sha256[32], char *err, size_t errsz)
{
    const char *node = p && p->node[0] ? p->node : "?";
    if (!p || !addr_ok(p->addr) || !id || !id->account || !id->container || !id->blob ||
        !id->etag || !buf || want_len > cap || want_len > INT64_MAX) {
        snprintf(err, errsz, "peer fetch: bad arguments (peer address, chunk id or buffer)");
        return BS_PEER_E_HTTP;
    }
    if (bs_now_ns() >= deadline_ns) {
        snprintf(err, errsz, "peer %s (%s): deadline passed before the request", node, p->addr);
        return BS_PEER_E_TIMEOUT;
    }
    struct slot *s = slot_take(c, p->addr, deadline_ns);
    if (!s) {
        snprintf(err, errsz, "peer %s (%s): no download slot free before the deadline (%d busy)",
                 node, p->addr, c->nslots);
        return BS_PEER_E_LIMIT;
    }
    enum bs_peer_err rc = BS_PEER_E_HTTP;
    char *path = NULL, *url = NULL;
    struct curl_slist *hdrs = NULL;
    struct xfer x = {.secret = c->o.secret, .id = id, .want_len = want_len, .buf = buf};
    if (!s->e && slot_init(c, s) != 0) {
        slot_cleanup(s);
        snprintf(err, errsz, "peer fetch: cannot set up a libcurl handle");
        goto out_slot;
    }
    x.e = s->e;
    x.md = s->md;
    path = chunk_path(s->e, id, wait_ms < 0 ? 0 : wait_ms);
    x.wait_ns = wait_ms > 0 ? (uint64_t)wait_ms * BS_NS_PER_MS : 0;
    /* curl's own low-speed check (a backstop to drive()'s) must allow the wait as well. */
    curl_easy_setopt(s->e, CURLOPT_LOW_SPEED_TIME,
                     (c->o.stall_ms + 999) / 1000 + (wait_ms > 0 ? (wait_ms + 999) / 1000 : 0));
    size_t urlsz = path ? strlen(path) + strlen(p->addr) + sizeof("http://") : 0;
    url = path ? malloc(urlsz) : NULL;
    char auth[sizeof(BS_PEER_AUTH_HEADER ": ") + BS_PEER_HDR_MAX];
    int hl = snprintf(auth, sizeof(auth), "%s: ", BS_PEER_AUTH_HEADER);
    if (path) {
        /* The signature names the peer dialed: relayed or replayed elsewhere, it fails. */
        size_t tsz = strlen(p->addr) + strlen(path) + 1;
        char *target = malloc(tsz);
        if (target) {
            snprintf(target, tsz, "%s%s", p->addr, path);
            bs_peer_sign_request(c->o.secret, c->node, "GET", target, bs_peer_wall_ms(), auth + hl);
            free(target);
        } else {
            auth[hl] = '\0';
        }
    }
    struct curl_slist *h1 = url ? curl_slist_append(NULL, auth) : NULL;
    hdrs = h1 ? curl_slist_append(h1, "Accept:") : NULL;
    if (!hdrs) {
        curl_slist_free_all(h1);
        snprintf(err, errsz, "peer fetch: out of memory");
        goto out_free;
    }
    snprintf(url, urlsz, "http://%s%s", p->addr, path);
    uint64_t now = bs_now_ns();
    long left_ms = (long)((deadline_ns - now + BS_NS_PER_MS - 1) / BS_NS_PER_MS);
    CURL *e = s->e;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &x);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, &x);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     c->o.connect_ms < left_ms ? c->o.connect_ms : left_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, left_ms);

    CURLcode res = drive(c, s, &x, deadline_ns);
    if (x.verdict != BS_PEER_OK) {
        rc = x.verdict;
        snprintf(err, errsz, "peer %s (%s): %s", node, p->addr, x.why);
    } else if (x.headers_done && x.status != 200) {
        rc = status_err(x.status);
        snprintf(err, errsz, "peer %s (%s): HTTP %ld", node, p->addr, x.status);
    } else if (res != CURLE_OK) {
        rc = transport_err(res, &x, deadline_ns);
        snprintf(err, errsz, "peer %s (%s): %s", node, p->addr, curl_easy_strerror(res));
    } else if (!x.headers_done) {
        snprintf(err, errsz, "peer %s (%s): no response", node, p->addr);
    } else if (x.got != x.rec_len) {
        rc = BS_PEER_E_DIGEST;
        snprintf(err, errsz, "peer %s (%s): %llu bytes received, the record says %llu", node,
                 p->addr, (unsigned long long)x.got, (unsigned long long)x.rec_len);
    } else {
        unsigned char sha[32];
        unsigned int shalen = 0;
        if (!EVP_DigestFinal_ex(x.md, sha, &shalen) || shalen != 32) {
            snprintf(err, errsz, "peer fetch: SHA-256 failed");
        } else if (CRYPTO_memcmp(sha, x.rec_sha, 32) != 0) {
            rc = BS_PEER_E_DIGEST;
            snprintf(err, errsz, "peer %s (%s): SHA-256 of the bytes differs from the record", node,
                     p->addr);
        } else {
            memcpy(sha256, sha, 32);
            rc = BS_PEER_OK;
        }
    }
out_free:
    curl_easy_setopt(s->e, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(hdrs);
    free(url);
    free(path);
out_slot:
    slot_give(c, s, p->addr);
    return rc;
}
