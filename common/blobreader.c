/* Blob range reader (see blobreader.h). A read is: properties (cached, single-flight), then
 * the range split on the grid, every piece submitted to the HTTP engine at once, completed
 * pieces checked (status, exact length, If-Match), failed pieces resumed from the byte where
 * they stopped after a backoff, all within one deadline. */
#include "blobreader.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "azcred.h"
#include "clock.h"
#include "fetch.h"
#include "log.h"
#include "names.h"

struct props_entry {
    struct props_entry *next;
    char *key; /* account \0 container \0 blob */
    size_t keylen;
    struct bs_blob_props props;
    uint64_t last_used_ns;
    int fetching;
    int valid;
};

struct bs_blobreader {
    struct bs_blobreader_opts o;
    struct bs_fetch *fetch;
    pthread_mutex_t lock;
    pthread_cond_t props_cond;
    struct props_entry **buckets;
    size_t nbuckets, nentries;
};

struct piece {
    struct bs_fetch_req req;
    struct bs_azreq az;
    uint64_t start, len, done;
    int attempts;
    uint64_t not_before_ns;
    int finished;
};

/* What a read is about, for messages. */
struct target {
    const char *account, *container, *blob;
    struct bs_azcred *cred;
};

size_t bs_range_split(uint64_t off, uint64_t len, uint64_t grid, uint64_t (*pieces)[2], size_t max)
{
    if (len == 0 || grid == 0)
        return 0;
    size_t n = 0;
    uint64_t pos = off, end = off + len;
    while (pos < end) {
        uint64_t cell_end = (pos / grid + 1) * grid;
        uint64_t stop = cell_end < end ? cell_end : end;
        if (n < max) {
            pieces[n][0] = pos;
            pieces[n][1] = stop - pos;
        }
        n++;
        pos = stop;
    }
    return n;
}

size_t bs_range_merge_slivers(uint64_t (*pieces)[2], size_t n, uint64_t min_len)
{
    if (n >= 2 && pieces[n - 1][1] < min_len) {
        pieces[n - 2][1] += pieces[n - 1][1];
        n--;
    }
    if (n >= 2 && pieces[0][1] < min_len) {
        pieces[1][0] = pieces[0][0];
        pieces[1][1] += pieces[0][1];
        memmove(pieces, pieces + 1, (n - 1) * sizeof(*pieces));
        n--;
    }
    return n;
}

static void fail(char *err, size_t errsz, const struct target *t, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(char *err, size_t errsz, const struct target *t, const char *fmt, ...)
{
    if (!err || !errsz)
        return;
    /* The cause first: a long blob name is what gets cut, never the reason. */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, errsz, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= errsz)
        return;
    snprintf(err + n, errsz - (size_t)n, " [az://%s/%s (account %s)]", t->container, t->blob,
             t->account && *t->account ? t->account : "-");
}

static uint64_t backoff_ms(const struct bs_blobreader *r, int attempt, long retry_after_ms)
{
    uint64_t cap = (uint64_t)r->o.retry_base_ms << (attempt < 20 ? attempt : 20);
    if (cap > (uint64_t)r->o.retry_max_ms)
        cap = (uint64_t)r->o.retry_max_ms;
    uint64_t d = cap ? bs_random() % (cap + 1) : 0; /* full jitter */
    if (retry_after_ms >= 0 && (uint64_t)retry_after_ms > d)
        d = (uint64_t)retry_after_ms;
    return d;
}

static int retryable(const struct bs_fetch_req *q)
{
    if (q->curl_code != CURLE_OK)
        return q->curl_code != CURLE_WRITE_ERROR; /* overflow is a protocol error */
    switch (q->status) {
    case 408:
    case 429:
    case 500:
    case 502:
    case 503:
    case 504:
        return 1;
    default:
        return 0;
    }
}

static const char *code_or_dash(const struct bs_fetch_req *q)
{
    return q->error_code[0] ? q->error_code : "no error code";
}

/* Maps a final failed response to an error; returns the negative code. */
static int describe_failure(const struct bs_fetch_req *q, const struct target *t, char *err,
                            size_t errsz)
{
    if (q->curl_code != CURLE_OK) {
        fail(err, errsz, t, "transport error: %s", curl_easy_strerror(q->curl_code));
        return q->curl_code == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EIO;
    }
    switch (q->status) {
    case 404:
        if (strcmp(q->error_code, "ContainerNotFound") == 0)
            fail(err, errsz, t, "container not found (HTTP 404 ContainerNotFound)");
        else if (strcmp(q->error_code, "BlobNotFound") == 0)
            fail(err, errsz, t, "blob not found (HTTP 404 BlobNotFound)");
        else
            fail(err, errsz, t, "blob or container not found (HTTP 404 %s)", code_or_dash(q));
        return -ENOENT;
    case 401:
    case 403:
        fail(err, errsz, t, "access denied (HTTP %ld %s) using %s", q->status, code_or_dash(q),
             bs_azcred_describe(t->cred));
        return -EACCES;
    case 412:
        fail(err, errsz, t,
             "blob changed while it was being read (HTTP 412 %s: ETag no longer matches); "
             "reload to read the new version",
             code_or_dash(q));
        return -ESTALE;
    case 416:
        fail(err, errsz, t, "range not satisfiable (HTTP 416 %s): read past the end of the blob",
             code_or_dash(q));
        return -ERANGE;
    default:
        fail(err, errsz, t, "HTTP %ld %s", q->status, code_or_dash(q));
        return -EIO;
    }
}

struct bs_blobreader *bs_blobreader_create(const struct bs_blobreader_opts *opts,
                                           struct bs_fetch *fetch)
{
    struct bs_blobreader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->o = *opts;
    if (r->o.range_bytes == 0)
        r->o.range_bytes = 8u << 20;
    if (r->o.props_max_entries < 1)
        r->o.props_max_entries = 1;
    r->fetch = fetch;
    r->nbuckets = 64;
    while (r->nbuckets < (size_t)r->o.props_max_entries)
        r->nbuckets <<= 1;
    r->buckets = calloc(r->nbuckets, sizeof(*r->buckets));
    if (!r->buckets) {
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->props_cond, NULL);
    return r;
}

void bs_blobreader_destroy(struct bs_blobreader *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nbuckets; i++) {
        struct props_entry *e = r->buckets[i];
        while (e) {
            struct props_entry *n = e->next;
            free(e->key);
            free(e);
            e = n;
        }
    }
    free(r->buckets);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->props_cond);
    free(r);
}

static size_t hash_key(const char *k, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 1099511628211ull;
    return (size_t)h;
}

/* Lock held. Removes the least recently used entry that no one is fetching. */
static void evict_one(struct bs_blobreader *r)
{
    struct props_entry **victim = NULL;
    for (size_t i = 0; i < r->nbuckets; i++)
        for (struct props_entry **pp = &r->buckets[i]; *pp; pp = &(*pp)->next)
            if (!(*pp)->fetching && (!victim || (*pp)->last_used_ns < (*victim)->last_used_ns))
                victim = pp;
    if (!victim)
        return;
    struct props_entry *e = *victim;
    *victim = e->next;
    free(e->key);
    free(e);
    r->nentries--;
}

/* Lock held. Finds or inserts the entry for key. */
static struct props_entry *entry_get(struct bs_blobreader *r, const char *key, size_t keylen)
{
    size_t b = hash_key(key, keylen) & (r->nbuckets - 1);
    for (struct props_entry *e = r->buckets[b]; e; e = e->next)
        if (e->keylen == keylen && memcmp(e->key, key, keylen) == 0)
            return e;
    if (r->nentries >= (size_t)r->o.props_max_entries)
        evict_one(r);
    struct props_entry *e = calloc(1, sizeof(*e));
    if (!e || !(e->key = malloc(keylen))) {
        free(e);
        return NULL;
    }
    memcpy(e->key, key, keylen);
    e->keylen = keylen;
    e->next = r->buckets[b];
    r->buckets[b] = e;
    r->nentries++;
    return e;
}

static size_t make_key(char *key, size_t keysz, const char *a, const char *c, const char *b)
{
    int n = snprintf(key, keysz, "%s%c%s%c%s", a ? a : "", 0, c, 0, b);
    return n < 0 || (size_t)n >= keysz ? 0 : (size_t)n;
}

/* Builds the URL and headers of p's request; errors carry the blob's name. */
static int prepare(struct piece *p, const struct target *t, char *err, size_t errsz)
{
    char inner[400];
    int rc = bs_azcred_prepare(t->cred, &p->az, inner, sizeof(inner));
    if (rc)
        fail(err, errsz, t, "%s", inner);
    return rc;
}

/* Sends one request with retries until it succeeds, fails for good or the deadline passes.
 * Success means a 2xx status. */
static int request_with_retries(struct bs_blobreader *r, struct piece *p, const struct target *t,
                                uint64_t deadline_ns, char *err, size_t errsz)
{
    struct bs_fetch_batch batch;
    if (bs_fetch_batch_init(&batch) != 0) {
        fail(err, errsz, t, "out of memory");
        return -ENOMEM;
    }
    int rc;
    for (;;) {
        rc = prepare(p, t, err, errsz);
        if (rc)
            break;
        p->req.url = p->az.url;
        p->req.headers = p->az.headers;
        bs_fetch_submit(r->fetch, &batch, &p->req);
        rc = bs_fetch_wait(r->fetch, &batch, deadline_ns);
        curl_slist_free_all(p->az.headers);
        p->az.headers = NULL;
        if (rc == -ETIMEDOUT) {
            fail(err, errsz, t, "no answer from %s within the deadline", p->az.safe_url);
            break;
        }
        if (p->req.curl_code == CURLE_OK && p->req.status >= 200 && p->req.status < 300) {
            rc = 0;
            break;
        }
        if ((p->req.status == 401 || p->req.status == 403) && p->attempts == 0 &&
            bs_azcred_kind(t->cred) == BS_AUTH_BEARER) {
            bs_azcred_invalidate(t->cred); /* a revoked or rotated token: fetch a new one once */
        } else if (!retryable(&p->req) || p->attempts >= r->o.max_retries) {
            rc = describe_failure(&p->req, t, err, errsz);
            break;
        }
        uint64_t wait_ns = backoff_ms(r, p->attempts++, p->req.retry_after_ms) * 1000000ull;
        if (bs_now_ns() + wait_ns >= deadline_ns) {
            rc = describe_failure(&p->req, t, err, errsz);
            break;
        }
        struct timespec ts = {(time_t)(wait_ns / 1000000000ull), (long)(wait_ns % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
    bs_fetch_batch_cleanup(&batch);
    return rc;
}

static int fetch_props(struct bs_blobreader *r, const struct target *t, struct bs_blob_props *out,
                       uint64_t deadline_ns, char *err, size_t errsz)
{
    struct piece *p = calloc(1, sizeof(*p));
    if (!p) {
        fail(err, errsz, t, "out of memory");
        return -ENOMEM;
    }
    p->az.method = "HEAD";
    p->az.account = t->account;
    p->az.container = t->container;
    p->az.blob = t->blob;
    p->req.head = 1;
    int rc = request_with_retries(r, p, t, deadline_ns, err, errsz);
    if (rc == 0) {
        if (p->req.status != 200 || !p->req.etag[0] || p->req.content_length == UINT64_MAX) {
            fail(err, errsz, t, "blob properties lack ETag or Content-Length (HTTP %ld)",
                 p->req.status);
            rc = -EIO;
        } else {
            snprintf(out->etag, sizeof(out->etag), "%s", p->req.etag);
            out->size = p->req.content_length;
        }
    }
    free(p);
    return rc;
}

static int props_deadline(struct bs_blobreader *r, const struct target *t,
                          struct bs_blob_props *out, uint64_t deadline_ns, char *err, size_t errsz)
{
    char key[2048];
    size_t keylen = make_key(key, sizeof(key), t->account, t->container, t->blob);
    if (!keylen) {
        fail(err, errsz, t, "names too long");
        return -EINVAL;
    }
    pthread_mutex_lock(&r->lock);
    struct props_entry *e = entry_get(r, key, keylen);
    if (!e) {
        pthread_mutex_unlock(&r->lock);
        fail(err, errsz, t, "out of memory");
        return -ENOMEM;
    }
    for (;;) {
        uint64_t now = bs_now_ns();
        if (e->valid && now - e->last_used_ns < (uint64_t)r->o.props_ttl_ms * 1000000ull) {
            e->last_used_ns = now;
            *out = e->props;
            pthread_mutex_unlock(&r->lock);
            return 0;
        }
        if (!e->fetching)
            break;
        pthread_cond_wait(&r->props_cond, &r->lock);
        /* The entry may have been evicted meanwhile: look it up again. */
        e = entry_get(r, key, keylen);
        if (!e) {
            pthread_mutex_unlock(&r->lock);
            fail(err, errsz, t, "out of memory");
            return -ENOMEM;
        }
    }
    e->fetching = 1;
    e->valid = 0;
    pthread_mutex_unlock(&r->lock);

    struct bs_blob_props p;
    int rc = fetch_props(r, t, &p, deadline_ns, err, errsz);

    pthread_mutex_lock(&r->lock);
    e->fetching = 0;
    if (rc == 0) {
        e->props = p;
        e->valid = 1;
        e->last_used_ns = bs_now_ns();
        *out = p;
    }
    pthread_cond_broadcast(&r->props_cond);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int bs_blobreader_props(struct bs_blobreader *r, struct bs_azcred *cred, const char *account,
                        const char *container, const char *blob, struct bs_blob_props *out,
                        char *err, size_t errsz)
{
    struct target t = {account, container, blob, cred};
    return props_deadline(r, &t, out, bs_now_ns() + (uint64_t)r->o.deadline_ms * 1000000ull, err,
                          errsz);
}

/* Forgets the properties of a blob whose ETag no longer matches. */
static void props_forget(struct bs_blobreader *r, const struct target *t)
{
    char key[2048];
    size_t keylen = make_key(key, sizeof(key), t->account, t->container, t->blob);
    pthread_mutex_lock(&r->lock);
    struct props_entry *e = keylen ? entry_get(r, key, keylen) : NULL;
    if (e && !e->fetching)
        e->valid = 0;
    pthread_mutex_unlock(&r->lock);
}

/* What may be stored: a 206 for exactly the range asked for, or a 200 that is the whole blob
 * and is exactly that range, and in both cases the version asked for (If-Match). Anything
 * else (another operation's answer, another version, another range) is an error, never
 * retried into the buffer. Returns 0 or a negative code with a message. */
static int check_answer(const struct piece *p, const struct bs_fetch_req *q, const struct target *t,
                        char *err, size_t errsz)
{
    uint64_t first = p->az.range_start, len = p->az.range_len;
    if (q->status != 206 && q->status != 200) {
        fail(err, errsz, t, "unexpected answer to a ranged read (HTTP %ld)", q->status);
        return -EIO;
    }
    if (p->az.if_match && !q->etag[0]) {
        fail(err, errsz, t, "the answer has no ETag (HTTP %ld): not blob content", q->status);
        return -EIO;
    }
    if (p->az.if_match && strcmp(q->etag, p->az.if_match) != 0) {
        /* If-Match was sent: a body of any other version is never accepted. */
        fail(err, errsz, t, "the service answered with version %s, not %s", q->etag,
             p->az.if_match);
        return -ESTALE;
    }
    if (q->status == 206) {
        if (!q->has_content_range || q->cr_first != first || q->cr_last != first + len - 1 ||
            (q->content_length != UINT64_MAX && q->content_length != len)) {
            fail(err, errsz, t,
                 "the answer is not the range asked for (bytes %llu-%llu; Content-Range %s, "
                 "Content-Length %lld)",
                 (unsigned long long)first, (unsigned long long)(first + len - 1),
                 q->has_content_range ? "mismatched" : "missing",
                 q->content_length == UINT64_MAX ? -1ll : (long long)q->content_length);
            return -EIO;
        }
    } else if (first != 0 || q->content_length != len) {
        fail(err, errsz, t,
             "a 200 answer to a ranged read is not the whole range (bytes %llu-%llu, "
             "Content-Length %lld)",
             (unsigned long long)first, (unsigned long long)(first + len - 1),
             q->content_length == UINT64_MAX ? -1ll : (long long)q->content_length);
        return -EIO;
    }
    return 0;
}

/* Checks a completed piece. Returns 0 when it is complete, 1 when it should be retried
 * (p->not_before_ns set), or a negative error. */
static int check_piece(struct bs_blobreader *r, struct piece *p, const struct target *t,
                       uint64_t deadline_ns, char *err, size_t errsz)
{
    struct bs_fetch_req *q = &p->req;
    uint64_t want = p->len - p->done;
    if (q->status >= 200 && q->status < 300) { /* headers arrived, maybe not the whole body */
        int rc = check_answer(p, q, t, err, errsz);
        if (rc)
            return rc;
    }
    if (q->curl_code == CURLE_OK && q->got == want && !q->overflow &&
        (q->status == 206 || q->status == 200)) {
        p->done = p->len;
        p->finished = 1;
        return 0;
    }
    if (q->overflow || (q->curl_code == CURLE_OK && q->status == 200)) {
        fail(err, errsz, t, "the service returned %s bytes than the range asked for (HTTP %ld)",
             q->overflow ? "more" : "fewer", q->status);
        return -EIO;
    }
    /* Keep what arrived intact and resume after it: every attempt carries If-Match. */
    if (q->status == 206)
        p->done += q->got;
    int transient = retryable(q) || (q->curl_code == CURLE_OK && q->status == 206);
    if (!transient && (q->status == 401 || q->status == 403) && p->attempts == 0 &&
        bs_azcred_kind(t->cred) == BS_AUTH_BEARER) {
        bs_azcred_invalidate(t->cred);
        transient = 1;
    }
    if (!transient || p->attempts >= r->o.max_retries) {
        if (q->curl_code == CURLE_OK && q->status == 206)
            fail(err, errsz, t, "short read: %llu of %llu bytes after %d attempts",
                 (unsigned long long)p->done, (unsigned long long)p->len, p->attempts + 1);
        else
            return describe_failure(q, t, err, errsz);
        return -EIO;
    }
    uint64_t wait_ns = backoff_ms(r, p->attempts++, q->retry_after_ms) * 1000000ull;
    p->not_before_ns = bs_now_ns() + wait_ns;
    if (p->not_before_ns >= deadline_ns)
        return describe_failure(q, t, err, errsz);
    if (BS_LOG_DEBUG <= bs_log_threshold) {
        char blob[300];
        bs_name_escape(t->blob, blob, sizeof(blob));
        bs_log(BS_LOG_DEBUG, "reader", "event=retry blob=\"%s\" attempt=%d status=%ld curl=%d",
               blob, p->attempts, q->status, q->curl_code);
    }
    return 1;
}

int bs_blobreader_head(struct bs_blobreader *r, struct bs_azcred *cred, const char *account,
                       const char *container, const char *blob, struct bs_blob_props *out,
                       char *err, size_t errsz)
{
    struct target t = {account, container, blob, cred};
    return fetch_props(r, &t, out, bs_now_ns() + (uint64_t)r->o.deadline_ms * 1000000ull, err,
                       errsz);
}

static int read_pieces(struct bs_blobreader *r, const struct target *tp, const char *etag,
                       void *buf, uint64_t base, const uint64_t (*want)[2], size_t nwant,
                       uint64_t deadline_ns, char *err, size_t errsz);
static void props_forget(struct bs_blobreader *r, const struct target *t);

int bs_blobreader_read(struct bs_blobreader *r, struct bs_azcred *cred, const char *account,
                       const char *container, const char *blob, void *buf, uint64_t off, size_t len,
                       char *err, size_t errsz)
{
    struct target t = {account, container, blob, cred};
    uint64_t deadline_ns = bs_now_ns() + (uint64_t)r->o.deadline_ms * 1000000ull;
    struct bs_blob_props props;
    int rc = props_deadline(r, &t, &props, deadline_ns, err, errsz);
    if (rc)
        return rc;
    if (off > props.size || len > props.size - off) {
        fail(err, errsz, &t, "range [%llu, %llu) is past the end of the blob (size %llu)",
             (unsigned long long)off, (unsigned long long)(off + len),
             (unsigned long long)props.size);
        return -ERANGE;
    }
    const uint64_t want[1][2] = {{off, len}};
    rc = read_pieces(r, &t, props.etag, buf, off, want, 1, deadline_ns, err, errsz);
    if (rc == -ESTALE)
        props_forget(r, &t);
    return rc;
}

int bs_blobreader_read_version(struct bs_blobreader *r, struct bs_azcred *cred, const char *account,
                               const char *container, const char *blob, const char *etag, void *buf,
                               uint64_t off, size_t len, char *err, size_t errsz)
{
    struct target t = {account, container, blob, cred};
    uint64_t deadline_ns = bs_now_ns() + (uint64_t)r->o.deadline_ms * 1000000ull;
    const uint64_t want[1][2] = {{off, len}};
    return read_pieces(r, &t, etag, buf, off, want, 1, deadline_ns, err, errsz);
}

int bs_blobreader_read_ranges(struct bs_blobreader *r, struct bs_azcred *cred, const char *account,
                              const char *container, const char *blob, const char *etag, void *buf,
                              uint64_t base, const uint64_t (*ranges)[2], size_t n,
                              uint64_t deadline_ns, char *err, size_t errsz)
{
    struct target t = {account, container, blob, cred};
    if (!deadline_ns)
        deadline_ns = bs_now_ns() + (uint64_t)r->o.deadline_ms * 1000000ull;
    return read_pieces(r, &t, etag, buf, base, ranges, n, deadline_ns, err, errsz);
}

/* Reads the ranges `want` (blob offsets; buf holds the blob from `base`) of the version `etag`
 * in parallel pieces: every range is split on the grid and all pieces are in flight at once. */
static int read_pieces(struct bs_blobreader *r, const struct target *tp, const char *etag,
                       void *buf, uint64_t base, const uint64_t (*want)[2], size_t nwant,
                       uint64_t deadline_ns, char *err, size_t errsz)
{
    struct target t = *tp;
    int rc;
    uint64_t len = 0;
    size_t n = 0;
    for (size_t w = 0; w < nwant; w++) {
        n += bs_range_split(want[w][0], want[w][1], r->o.range_bytes, NULL, 0);
        len += want[w][1];
    }
    if (n == 0)
        return 0;
    uint64_t off = want[0][0];

    struct piece *ps = calloc(n, sizeof(*ps));
    uint64_t(*ranges)[2] = malloc(n * sizeof(*ranges));
    struct bs_fetch_batch batch;
    if (!ps || !ranges || bs_fetch_batch_init(&batch) != 0) {
        free(ps);
        free(ranges);
        fail(err, errsz, &t, "out of memory for %zu pieces", n);
        return -ENOMEM;
    }
    size_t used = 0;
    for (size_t w = 0; w < nwant; w++) {
        size_t k =
            bs_range_split(want[w][0], want[w][1], r->o.range_bytes, ranges + used, n - used);
        used += bs_range_merge_slivers(ranges + used, k, r->o.range_bytes / 4);
    }
    n = used;
    for (size_t i = 0; i < n; i++) {
        ps[i].start = ranges[i][0];
        ps[i].len = ranges[i][1];
        ps[i].az.method = "GET";
        ps[i].az.account = t.account;
        ps[i].az.container = t.container;
        ps[i].az.blob = t.blob;
        ps[i].az.if_match = etag;
    }
    free(ranges);

    size_t remaining = n;
    rc = 0;
    while (remaining > 0 && rc == 0) {
        uint64_t now = bs_now_ns(), earliest = UINT64_MAX;
        int submitted = 0;
        for (size_t i = 0; i < n && rc == 0; i++) {
            struct piece *p = &ps[i];
            if (p->finished)
                continue;
            if (p->not_before_ns > now) {
                if (p->not_before_ns < earliest)
                    earliest = p->not_before_ns;
                continue;
            }
            p->az.range_start = p->start + p->done;
            p->az.range_len = p->len - p->done;
            rc = prepare(p, &t, err, errsz);
            if (rc)
                break;
            p->req.url = p->az.url;
            p->req.headers = p->az.headers;
            p->req.head = 0;
            p->req.dst = (char *)buf + (p->start - base) + p->done;
            p->req.dst_cap = p->len - p->done;
            bs_fetch_submit(r->fetch, &batch, &p->req);
            p->not_before_ns = UINT64_MAX; /* in flight */
            submitted++;
        }
        if (submitted) {
            int wrc = bs_fetch_wait(r->fetch, &batch, deadline_ns);
            for (size_t i = 0; i < n; i++) {
                struct piece *p = &ps[i];
                if (p->finished || p->not_before_ns != UINT64_MAX)
                    continue;
                curl_slist_free_all(p->az.headers);
                p->az.headers = NULL;
                p->not_before_ns = 0;
                if (rc || wrc)
                    continue;
                int c = check_piece(r, p, &t, deadline_ns, err, errsz);
                if (c == 0)
                    remaining--;
                else if (c < 0)
                    rc = c;
            }
            if (wrc && !rc) {
                fail(err, errsz, &t, "read of %llu bytes at %llu did not finish within %ld ms",
                     (unsigned long long)len, (unsigned long long)off, r->o.deadline_ms);
                rc = -ETIMEDOUT;
            }
        } else if (earliest != UINT64_MAX && rc == 0) {
            if (earliest >= deadline_ns) {
                fail(err, errsz, &t, "read did not finish within %ld ms", r->o.deadline_ms);
                rc = -ETIMEDOUT;
                break;
            }
            uint64_t wait = earliest - now;
            struct timespec ts = {(time_t)(wait / 1000000000ull), (long)(wait % 1000000000ull)};
            nanosleep(&ts, NULL);
        }
    }
    bs_fetch_batch_cleanup(&batch);
    free(ps);
    return rc;
}

void bs_blobreader_forget(struct bs_blobreader *r, const char *account, const char *container,
                          const char *blob)
{
    struct target t = {account, container, blob, NULL};
    props_forget(r, &t);
}
