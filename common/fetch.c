/* HTTP engine (see fetch.h). Each I/O thread owns one curl multi handle, its connection
 * cache and a FIFO of submitted requests; it runs at most `cap` transfers at once and starts
 * queued ones as others finish. Callers block on a per-batch condition variable. Bodies are
 * written straight into the request's destination, and only for 2xx responses. */
#include "fetch.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "clock.h"

enum { REQ_NEW, REQ_QUEUED, REQ_RUNNING, REQ_DONE };

#define RECV_BUFFER (256 * 1024)

struct batch_sync {
    pthread_mutex_t m;
    pthread_cond_t c;
    atomic_int cancelled;
};

struct io_thread {
    struct bs_fetch *f;
    pthread_t th;
    int started;
    CURLM *multi;
    pthread_mutex_t lock; /* queue, stop */
    struct bs_fetch_req *qhead, *qtail;
    int stop;
    int cap;
    struct bs_fetch_req **running; /* cap slots */
    int n_running;
    CURL **idle; /* reusable easy handles */
    int n_idle;
    unsigned seen_cancel_gen;
};

struct bs_fetch {
    struct bs_fetch_opts opts;
    char ca_bundle[1024];
    int n;
    struct io_thread *t;
    atomic_uint rr;
    atomic_uint cancel_gen;
};

int bs_fetch_batch_init(struct bs_fetch_batch *b)
{
    b->pending = 0;
    struct batch_sync *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->m, NULL);
    bs_cond_init(&s->c);
    b->sync_ = s;
    return 0;
}

void bs_fetch_batch_cleanup(struct bs_fetch_batch *b)
{
    struct batch_sync *s = b->sync_;
    if (!s)
        return;
    pthread_mutex_destroy(&s->m);
    pthread_cond_destroy(&s->c);
    free(s);
    b->sync_ = NULL;
}

static void complete(struct bs_fetch_req *r, int curl_code)
{
    r->curl_code = curl_code;
    struct bs_fetch_batch *b = r->batch_;
    struct batch_sync *s = b->sync_;
    pthread_mutex_lock(&s->m);
    r->state_ = REQ_DONE;
    if (--b->pending == 0)
        pthread_cond_broadcast(&s->c);
    pthread_mutex_unlock(&s->m);
}

/* Parses a decimal uint64 of exactly [s, s+n); -1 on anything else (sign, space, overflow). */
static int parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 20)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* "bytes first-last/total" with first <= last < total; else no range. */
static void parse_content_range(struct bs_fetch_req *r, const char *v, size_t vl)
{
    r->has_content_range = 0;
    if (vl < 6 || strncmp(v, "bytes ", 6) != 0)
        return;
    const char *p = v + 6, *e = v + vl;
    const char *dash = memchr(p, '-', (size_t)(e - p));
    const char *slash = dash ? memchr(dash, '/', (size_t)(e - dash)) : NULL;
    uint64_t a, b, t;
    if (!slash || parse_u64(p, (size_t)(dash - p), &a) ||
        parse_u64(dash + 1, (size_t)(slash - dash - 1), &b) ||
        parse_u64(slash + 1, (size_t)(e - slash - 1), &t) || a > b || b >= t)
        return;
    r->cr_first = a;
    r->cr_last = b;
    r->cr_total = t;
    r->has_content_range = 1;
}

static void reset_captured(struct bs_fetch_req *r)
{
    r->etag[0] = r->error_code[0] = '\0';
    r->retry_after_ms = -1;
    r->content_length = UINT64_MAX;
    r->has_content_range = 0;
    r->cr_first = r->cr_last = r->cr_total = 0;
    if (r->capture_cap)
        r->capture[0] = '\0';
}

void bs_fetch_header_line(struct bs_fetch_req *r, const char *data, size_t len)
{
    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        /* A new response (after 100-continue or a retry inside curl): reset. */
        reset_captured(r);
        return;
    }
    const char *colon = memchr(data, ':', len);
    if (!colon)
        return;
    size_t nl = (size_t)(colon - data);
    const char *v = colon + 1, *e = data + len;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' || e[-1] == '\t'))
        e--;
    size_t vl = (size_t)(e - v);
#define IS(name) (nl == sizeof(name) - 1 && strncasecmp(data, name, nl) == 0)
    if (IS("etag")) {
        if (vl < sizeof(r->etag) && !memchr(v, '\0', vl)) {
            memcpy(r->etag, v, vl);
            r->etag[vl] = '\0';
        }
    } else if (IS("x-ms-error-code")) {
        if (vl >= sizeof(r->error_code))
            vl = sizeof(r->error_code) - 1;
        memcpy(r->error_code, v, vl);
        r->error_code[vl] = '\0';
    } else if (IS("retry-after")) {
        uint64_t secs;
        if (parse_u64(v, vl, &secs) == 0 && secs < 3600)
            r->retry_after_ms = (long)secs * 1000;
    } else if (IS("content-length")) {
        uint64_t cl;
        if (parse_u64(v, vl, &cl) == 0)
            r->content_length = cl;
    } else if (IS("content-range")) {
        parse_content_range(r, v, vl);
    } else if (r->capture_header && r->capture_cap && nl == strlen(r->capture_header) &&
               strncasecmp(data, r->capture_header, nl) == 0) {
        if (vl >= r->capture_cap)
            vl = r->capture_cap - 1;
        memcpy(r->capture, v, vl);
        r->capture[vl] = '\0';
    }
#undef IS
}

static size_t on_header(char *data, size_t sz, size_t n, void *ud)
{
    bs_fetch_header_line(ud, data, sz * n);
    return sz * n;
}

static size_t on_body(char *data, size_t sz, size_t n, void *ud)
{
    struct bs_fetch_req *r = ud;
    size_t len = sz * n;
    long status = 0;
    curl_easy_getinfo((CURL *)r->handle_, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status > 299)
        return len; /* error bodies are discarded; the status and x-ms-error-code tell */
    if (len > r->dst_cap - r->got) {
        r->overflow = 1;
        return 0; /* makes curl fail the transfer with CURLE_WRITE_ERROR */
    }
    memcpy(r->dst + r->got, data, len);
    r->got += len;
    return len;
}

/* Stall detection, the only one: fails a transfer once no body byte has arrived for
 * stall_timeout_ms, waiting for the first byte included (curl calls this at least once a
 * second). curl's LOW_SPEED check is not used: it averages over several seconds and notices a
 * stop after a burst of bytes about five seconds late. */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal, (void)ultotal, (void)ulnow;
    struct bs_fetch_req *r = ud;
    uint64_t now = bs_now_ns();
    if ((long long)dlnow != r->last_dlnow_) {
        r->last_dlnow_ = (long long)dlnow;
        r->last_rx_ns_ = now;
        return 0;
    }
    if (now - r->last_rx_ns_ <= r->stall_ns_)
        return 0;
    r->stalled_ = 1;
    return 1; /* CURLE_ABORTED_BY_CALLBACK, reported as a timeout */
}

static int start_transfer(struct io_thread *t, struct bs_fetch_req *r)
{
    const struct bs_fetch_opts *o = &t->f->opts;
    CURL *h = t->n_idle ? t->idle[--t->n_idle] : curl_easy_init();
    if (!h)
        return -ENOMEM;
    curl_easy_reset(h);
    r->handle_ = h;
    r->status = 0;
    r->overflow = 0;
    reset_captured(r);
    r->stall_ns_ = (uint64_t)o->stall_timeout_ms * 1000000ull;
    r->last_rx_ns_ = bs_now_ns();
    r->last_dlnow_ = 0;
    r->stalled_ = 0;
    curl_easy_setopt(h, CURLOPT_URL, r->url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(h, CURLOPT_PRIVATE, r);
    curl_easy_setopt(h, CURLOPT_NOBODY, r->head ? 1L : 0L);
    if (r->post_body)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, r->post_body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, (long)RECV_BUFFER);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, r);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    /* The URL goes out exactly as built: no dot-segment resolution behind our back. */
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
    if (t->f->ca_bundle[0])
        curl_easy_setopt(h, CURLOPT_CAINFO, t->f->ca_bundle);
    if (curl_multi_add_handle(t->multi, h) != CURLM_OK) {
        t->idle[t->n_idle++] = h;
        return -EIO;
    }
    r->state_ = REQ_RUNNING;
    t->running[t->n_running++] = r;
    return 0;
}

/* Removes r's transfer from the multi handle and completes it. */
static void finish_transfer(struct io_thread *t, struct bs_fetch_req *r, int curl_code)
{
    CURL *h = r->handle_;
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    r->status = status;
    if (r->stalled_ && curl_code == CURLE_ABORTED_BY_CALLBACK)
        curl_code = CURLE_OPERATION_TIMEDOUT;
    curl_multi_remove_handle(t->multi, h);
    r->handle_ = NULL;
    t->idle[t->n_idle++] = h;
    for (int i = 0; i < t->n_running; i++)
        if (t->running[i] == r) {
            t->running[i] = t->running[--t->n_running];
            break;
        }
    complete(r, curl_code);
}

static int batch_cancelled(const struct bs_fetch_req *r)
{
    return atomic_load(&((struct batch_sync *)r->batch_->sync_)->cancelled);
}

static void *io_main(void *arg)
{
    struct io_thread *t = arg;
    for (;;) {
        pthread_mutex_lock(&t->lock);
        int stop = t->stop;
        unsigned gen = atomic_load(&t->f->cancel_gen);
        int scan = stop || gen != t->seen_cancel_gen;
        t->seen_cancel_gen = gen;
        /* Cancelled or stopping: drop queued requests. */
        struct bs_fetch_req **pp = &t->qhead, *prev = NULL;
        while (scan && *pp) {
            struct bs_fetch_req *r = *pp;
            if (stop || batch_cancelled(r)) {
                *pp = r->next_;
                if (t->qtail == r)
                    t->qtail = prev;
                complete(r, CURLE_OPERATION_TIMEDOUT);
            } else {
                prev = r;
                pp = &r->next_;
            }
        }
        while (!stop && t->qhead && t->n_running < t->cap) {
            struct bs_fetch_req *r = t->qhead;
            t->qhead = r->next_;
            if (!t->qhead)
                t->qtail = NULL;
            if (start_transfer(t, r) != 0)
                complete(r, CURLE_OUT_OF_MEMORY);
        }
        pthread_mutex_unlock(&t->lock);

        if (scan)
            for (int i = t->n_running - 1; i >= 0; i--)
                if (stop || batch_cancelled(t->running[i]))
                    finish_transfer(t, t->running[i], CURLE_OPERATION_TIMEDOUT);
        if (stop)
            break;

        int still = 0;
        curl_multi_perform(t->multi, &still);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(t->multi, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            struct bs_fetch_req *r = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
            if (r)
                finish_transfer(t, r, msg->data.result);
        }
        curl_multi_poll(t->multi, NULL, 0, 1000, NULL);
    }
    return NULL;
}

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
}

struct bs_fetch *bs_fetch_create(const struct bs_fetch_opts *opts, char *err, size_t errsz)
{
    static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
    pthread_once(&curl_once, curl_init_once);
    struct bs_fetch *f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    f->opts = *opts;
    if (f->opts.io_threads < 1)
        f->opts.io_threads = 1;
    if (f->opts.max_connections < f->opts.io_threads)
        f->opts.max_connections = f->opts.io_threads;
    if (opts->ca_bundle)
        snprintf(f->ca_bundle, sizeof(f->ca_bundle), "%s", opts->ca_bundle);
    f->opts.ca_bundle = NULL;
    f->n = f->opts.io_threads;
    f->t = calloc((size_t)f->n, sizeof(*f->t));
    if (!f->t)
        goto out_fail;
    int cap = (f->opts.max_connections + f->n - 1) / f->n;
    for (int i = 0; i < f->n; i++) {
        struct io_thread *t = &f->t[i];
        t->f = f;
        t->cap = cap;
        pthread_mutex_init(&t->lock, NULL);
        t->running = calloc((size_t)cap, sizeof(*t->running));
        t->idle = calloc((size_t)cap, sizeof(*t->idle));
        t->multi = curl_multi_init();
        if (!t->running || !t->idle || !t->multi)
            goto out_fail;
        curl_multi_setopt(t->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)cap);
        curl_multi_setopt(t->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)cap);
        curl_multi_setopt(t->multi, CURLMOPT_MAXCONNECTS, (long)cap);
        if (pthread_create(&t->th, NULL, io_main, t) != 0)
            goto out_fail;
        t->started = 1;
    }
    return f;

out_fail:
    snprintf(err, errsz, "cannot start the HTTP engine (out of memory or threads)");
    bs_fetch_destroy(f);
    return NULL;
}

void bs_fetch_destroy(struct bs_fetch *f)
{
    if (!f)
        return;
    for (int i = 0; f->t && i < f->n; i++) {
        struct io_thread *t = &f->t[i];
        if (!t->started)
            continue;
        pthread_mutex_lock(&t->lock);
        t->stop = 1;
        pthread_mutex_unlock(&t->lock);
        curl_multi_wakeup(t->multi);
        pthread_join(t->th, NULL);
    }
    for (int i = 0; f->t && i < f->n; i++) {
        struct io_thread *t = &f->t[i];
        for (int k = 0; k < t->n_idle; k++)
            curl_easy_cleanup(t->idle[k]);
        if (t->multi)
            curl_multi_cleanup(t->multi);
        free(t->running);
        free(t->idle);
        if (t->f)
            pthread_mutex_destroy(&t->lock);
    }
    free(f->t);
    free(f);
}

int bs_fetch_submit(struct bs_fetch *f, struct bs_fetch_batch *b, struct bs_fetch_req *req)
{
    struct io_thread *t = &f->t[atomic_fetch_add(&f->rr, 1) % (unsigned)f->n];
    struct batch_sync *s = b->sync_;
    req->batch_ = b;
    req->next_ = NULL;
    req->got = 0;
    req->curl_code = 0;
    req->status = 0;
    pthread_mutex_lock(&s->m);
    b->pending++;
    req->state_ = REQ_QUEUED;
    pthread_mutex_unlock(&s->m);
    pthread_mutex_lock(&t->lock);
    if (t->stop) {
        pthread_mutex_unlock(&t->lock);
        complete(req, CURLE_ABORTED_BY_CALLBACK);
        return -ESHUTDOWN;
    }
    if (t->qtail)
        t->qtail->next_ = req;
    else
        t->qhead = req;
    t->qtail = req;
    pthread_mutex_unlock(&t->lock);
    curl_multi_wakeup(t->multi);
    return 0;
}

int bs_fetch_wait(struct bs_fetch *f, struct bs_fetch_batch *b, uint64_t deadline_ns)
{
    struct batch_sync *s = b->sync_;
    int rc = 0;
    pthread_mutex_lock(&s->m);
    while (b->pending > 0) {
        if (bs_cond_wait_until(&s->c, &s->m, deadline_ns) == ETIMEDOUT && b->pending > 0) {
            rc = -ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&s->m);
    if (rc == 0)
        return 0;
    atomic_store(&s->cancelled, 1);
    atomic_fetch_add(&f->cancel_gen, 1);
    for (int i = 0; i < f->n; i++)
        curl_multi_wakeup(f->t[i].multi);
    pthread_mutex_lock(&s->m);
    while (b->pending > 0)
        pthread_cond_wait(&s->c, &s->m);
    pthread_mutex_unlock(&s->m);
    atomic_store(&s->cancelled, 0);
    return rc;
}
