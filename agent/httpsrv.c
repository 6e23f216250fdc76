/* HTTP API (see httpsrv.h). Each request has a context from its first callback until MHD
 * reports it completed (its answer sent or abandoned): the drain counts those. Request bodies
 * are collected there up to BS_PROTO_MAX_FRAME. Each connection is tracked (MHD's connection
 * notifications) in a list that a reaper thread scans: it shuts down connections past their
 * request-read deadline or lifetime that are not sending an answer. The list's lock is held
 * from the lookup to the shutdown, and MHD closes a socket only after its CLOSED
 * notification, which takes the lock: a descriptor is never shut down after its close. */
#include "httpsrv.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "agentproto.h"
#include "clock.h"
#include "fetch.h"
#include "log.h"
#include "metrics.h"
#include "service.h"
#include "store.h"

#define REAP_MS 100 /* how often the reaper looks at the connections */

/* One open connection. */
struct hconn {
    struct hconn *prev, *next;
    int fd;
    uint32_t ip; /* IPv4, network order */
    uint64_t born_ns;
    uint64_t wait_since_ns; /* start of the wait for the next request */
    int sending;            /* an answer is queued and not yet completed */
    int over;               /* opened past the per-IP limit: its request gets 503 */
    int cut;                /* shut down by the reaper */
};

struct bs_httpsrv {
    struct MHD_Daemon *d;
    int port;
    struct bs_httpsrv_opts o;
    atomic_int ready;
    atomic_int busy;      /* requests from their first callback until completed */
    pthread_mutex_t lock; /* conns */
    struct hconn *conns;
    pthread_t reaper;
    int reaper_started;
    atomic_int stop;
    struct bs_service *svc;
    struct bs_metrics *metrics;
    struct bs_store *store;
    struct bs_metric *m_store_bytes, *m_store_budget, *m_store_chunks, *m_store_blobs,
        *m_evicted_chunks, *m_evicted_bytes, *m_dropped, *m_put_errors, *m_store_tenants,
        *m_protect_errors, *m_http, *m_inflight, *m_seconds, *m_refused;
};

/* One request's context (MHD's con_cls): the body of a chunk request. */
struct body {
    size_t len;
    int too_large;
    char data[];
};

static const double serve_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                       0.025,  0.05,    0.1,    0.25,  0.5,    1,     5};

static struct hconn *hconn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *i =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i ? i->socket_context : NULL;
}

/* Queues every answer: marks the connection as sending (the reaper leaves it alone) and,
 * past the connection's lifetime or opened over the per-IP limit, asks MHD to close it once
 * the answer is sent. */
static enum MHD_Result queue(struct bs_httpsrv *h, struct MHD_Connection *c, unsigned status,
                             struct MHD_Response *r)
{
    struct hconn *hc = hconn_of(c);
    int close_after = 0;
    if (hc) {
        pthread_mutex_lock(&h->lock);
        hc->sending = 1;
        close_after =
            hc->over || bs_now_ns() - hc->born_ns >= (uint64_t)h->o.lifetime_ms * 1000000ull;
        pthread_mutex_unlock(&h->lock);
    }
    if (close_after)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    return MHD_queue_response(c, status, r);
}

/* From here the request is being answered: the reaper leaves the connection alone. */
static void mark_answering(struct bs_httpsrv *h, struct MHD_Connection *c)
{
    struct hconn *hc = hconn_of(c);
    if (!hc)
        return;
    pthread_mutex_lock(&h->lock);
    hc->sending = 1;
    pthread_mutex_unlock(&h->lock);
}

static enum MHD_Result send_text(struct bs_httpsrv *h, struct MHD_Connection *c, unsigned status,
                                 const char *type, const char *text)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = queue(h, c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* 503 with the codec's busy frame as the meta header: the shim tells the agent's own "at its
 * limit" from any other 503 (a proxy in front of a dead agent) and keeps its breaker closed
 * only for this one. */
static enum MHD_Result send_busy(struct bs_httpsrv *h, struct MHD_Connection *c)
{
    static const char text[] = "too many connections from this address\n";
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    char *busy = bs_proto_encode_busy();
    MHD_add_response_header(r, "Content-Type", "text/plain");
    if (busy)
        MHD_add_response_header(r, BS_PROTO_META_HDR, busy);
    free(busy);
    enum MHD_Result ret = queue(h, c, 503, r);
    MHD_destroy_response(r);
    return ret;
}

static void refresh_store_gauges(struct bs_httpsrv *h)
{
    struct bs_store_stats st;
    bs_store_get_stats(h->store, &st);
    bs_metric_set(h->m_store_bytes, NULL, (double)st.bytes);
    bs_metric_set(h->m_store_budget, NULL, (double)st.budget_bytes);
    bs_metric_set(h->m_store_chunks, NULL, (double)st.chunks);
    bs_metric_set(h->m_store_blobs, NULL, (double)st.blobs);
    bs_metric_set(h->m_evicted_chunks, NULL, (double)st.evicted_chunks);
    bs_metric_set(h->m_evicted_bytes, NULL, (double)st.evicted_bytes);
    bs_metric_set(h->m_dropped, NULL, (double)st.dropped_corrupt);
    bs_metric_set(h->m_put_errors, NULL, (double)st.put_errors);
    bs_metric_set(h->m_store_tenants, NULL, (double)st.tenants);
    bs_metric_set(h->m_protect_errors, NULL, (double)st.protect_errors);
}

static enum MHD_Result serve_metrics(struct bs_httpsrv *h, struct MHD_Connection *c)
{
    refresh_store_gauges(h);
    size_t len = 0;
    char *text = bs_metrics_render(h->metrics, &len);
    if (!text)
        return send_text(h, c, 500, "text/plain", "out of memory\n");
    struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result ret = queue(h, c, 200, r);
    MHD_destroy_response(r);
    return ret;
}

/* Answers POST /v1/chunk with the meta header and, for a served chunk, the wanted blocks of
 * the chunk file as the body. */
static enum MHD_Result serve_chunk(struct bs_httpsrv *h, struct MHD_Connection *c,
                                   const struct body *b)
{
    uint64_t t0 = bs_now_ns();
    struct bs_chunk_req *req = malloc(sizeof(*req));
    struct bs_chunk_reply *rep = malloc(sizeof(*rep));
    enum MHD_Result ret = MHD_NO;
    char err[150];
    int fd = -1;
    if (!req || !rep)
        goto out;
    memset(rep, 0, sizeof(*rep) - sizeof(rep->crcs));
    if (bs_proto_decode_req(b->data, b->len, req, err, sizeof(err)) != 0) {
        rep->status = BS_CHUNK_ERROR;
        snprintf(rep->reason, sizeof(rep->reason), "%s", err);
    } else {
        struct bs_chunk_ref *ref = NULL;
        bs_service_chunk(h->svc, req, rep, &ref);
        if (ref) {
            fd = bs_chunk_ref_open(ref);
            bs_service_release(h->svc, ref);
            uint64_t bs = rep->block_size;
            uint64_t so = req->sub_off, sl = req->sub_len ? req->sub_len : rep->length;
            int bad_range = so % bs || so > rep->length || sl > rep->length - so ||
                            ((so + sl) % bs && so + sl != rep->length);
            if (fd < 0 || bad_range) {
                if (fd >= 0)
                    close(fd);
                fd = -1;
                rep->status = bad_range ? BS_CHUNK_ERROR : BS_CHUNK_MISS;
                snprintf(rep->reason, sizeof(rep->reason), "%s",
                         bad_range ? "sub-range is not block-aligned within the chunk"
                                   : "chunk file unavailable");
            } else {
                rep->sub_off = so;
                rep->sub_len = sl;
            }
        }
    }
    char *json = bs_proto_encode_reply(rep);
    if (!json)
        goto out;
    struct MHD_Response *r;
    if (fd >= 0) {
        r = MHD_create_response_from_fd_at_offset64(rep->sub_len, fd, rep->sub_off);
        if (r)
            fd = -1; /* MHD closes it */
    } else {
        r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    }
    if (r) {
        MHD_add_response_header(r, BS_PROTO_META_HDR, json);
        MHD_add_response_header(r, "Content-Type", "application/octet-stream");
        ret = queue(h, c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
    }
    free(json);
    bs_metric_observe(h->m_seconds, "http", (double)(bs_now_ns() - t0) / 1e9);
out:
    if (fd >= 0)
        close(fd);
    free(req);
    free(rep);
    return ret;
}

static enum MHD_Result handle(struct bs_httpsrv *h, struct MHD_Connection *c, const char *url,
                              const char *method, const char *upload_data, size_t *upload_data_size,
                              void **con_cls)
{
    int is_chunk = strcmp(method, "POST") == 0 && strcmp(url, "/v1/chunk") == 0;
    struct body *b = *con_cls;
    if (!b) {
        /* The request's first callback: its context lives until MHD reports it completed,
         * answer sent or abandoned, and the drain waits for that. */
        b = calloc(1, sizeof(*b) + (is_chunk ? BS_PROTO_MAX_FRAME + 1 : 0));
        if (!b)
            return MHD_NO;
        *con_cls = b;
        atomic_fetch_add(&h->busy, 1);
        struct hconn *hc = hconn_of(c);
        int over = 0;
        if (hc) {
            pthread_mutex_lock(&h->lock);
            over = hc->over;
            pthread_mutex_unlock(&h->lock);
        }
        if (over) {
            bs_metric_add(h->m_refused, "max_per_ip", 1);
            return send_busy(h, c);
        }
        if (is_chunk)
            return MHD_YES;
    }
    if (is_chunk) {
        if (*upload_data_size) {
            if (b->len + *upload_data_size > BS_PROTO_MAX_FRAME)
                b->too_large = 1;
            else
                memcpy(b->data + b->len, upload_data, *upload_data_size);
            b->len += b->too_large ? 0 : *upload_data_size;
            *upload_data_size = 0;
            return MHD_YES;
        }
        bs_metric_add(h->m_http, "chunk", 1);
        mark_answering(h, c);
        if (b->too_large)
            return send_text(h, c, 413, "text/plain", "request too large\n");
        char op[16], err[128];
        if (bs_proto_decode_op(b->data, b->len, op, sizeof(op), err, sizeof(err)) == 0 &&
            strcmp(op, "corrupt") == 0) {
            struct bs_chunk_req *req = malloc(sizeof(*req));
            if (req && bs_proto_decode_req(b->data, b->len, req, err, sizeof(err)) == 0)
                bs_service_report_corrupt(h->svc, req);
            free(req);
            return send_text(h, c, 200, "text/plain", "noted\n");
        }
        bs_metric_add(h->m_inflight, "http", 1);
        enum MHD_Result ret = serve_chunk(h, c, b);
        bs_metric_add(h->m_inflight, "http", -1);
        return ret;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        bs_metric_add(h->m_http, "other", 1);
        return send_text(h, c, 405, "text/plain", "method not allowed\n");
    }
    if (strcmp(url, "/metrics") == 0) {
        bs_metric_add(h->m_http, "metrics", 1);
        return serve_metrics(h, c);
    }
    if (strcmp(url, "/healthz") == 0) {
        bs_metric_add(h->m_http, "healthz", 1);
        return send_text(h, c, 200, "text/plain", "ok\n");
    }
    if (strcmp(url, "/readyz") == 0) {
        bs_metric_add(h->m_http, "readyz", 1);
        return atomic_load(&h->ready) ? send_text(h, c, 200, "text/plain", "ready\n")
                                      : send_text(h, c, 503, "text/plain", "not ready\n");
    }
    bs_metric_add(h->m_http, "other", 1);
    return send_text(h, c, 404, "text/plain", "not found\n");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    return handle(cls, c, url, method, upload_data, upload_data_size, con_cls);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct bs_httpsrv *h = cls;
    (void)toe;
    struct hconn *hc = hconn_of(c);
    if (hc) {
        pthread_mutex_lock(&h->lock);
        hc->sending = 0;
        hc->wait_since_ns = bs_now_ns();
        pthread_mutex_unlock(&h->lock);
    }
    if (*con_cls) {
        free(*con_cls);
        *con_cls = NULL;
        atomic_fetch_sub(&h->busy, 1);
    }
}

/* Tracks connections: a struct hconn from STARTED to CLOSED, charged to its client IP. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct bs_httpsrv *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        struct hconn *hc = calloc(1, sizeof(*hc));
        *socket_context = hc;
        if (!hc)
            return; /* untracked: MHD's idle timeout and limits still apply */
        const union MHD_ConnectionInfo *i =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        hc->fd = i ? i->connect_fd : -1;
        i = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (i && i->client_addr && i->client_addr->sa_family == AF_INET)
            hc->ip = ((const struct sockaddr_in *)(const void *)i->client_addr)->sin_addr.s_addr;
        hc->born_ns = hc->wait_since_ns = bs_now_ns();
        pthread_mutex_lock(&h->lock);
        int same = 0;
        for (struct hconn *o = h->conns; o; o = o->next)
            same += o->ip == hc->ip;
        hc->over = same >= h->o.max_per_ip;
        hc->next = h->conns;
        if (h->conns)
            h->conns->prev = hc;
        h->conns = hc;
        pthread_mutex_unlock(&h->lock);
        return;
    }
    struct hconn *hc = *socket_context;
    if (toe != MHD_CONNECTION_NOTIFY_CLOSED || !hc)
        return;
    pthread_mutex_lock(&h->lock);
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        h->conns = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    pthread_mutex_unlock(&h->lock);
    free(hc);
    *socket_context = NULL;
}

/* Shuts down the connections that wait too long for their request (slowloris) or outlived
 * their lifetime, unless they are sending an answer (those close after it, see queue). */
static void *reaper_main(void *arg)
{
    struct bs_httpsrv *h = arg;
    uint64_t read_ns = (uint64_t)h->o.request_read_ms * 1000000ull;
    uint64_t life_ns = (uint64_t)h->o.lifetime_ms * 1000000ull;
    while (!atomic_load(&h->stop)) {
        struct timespec ts = {0, REAP_MS * 1000000L};
        nanosleep(&ts, NULL);
        uint64_t now = bs_now_ns();
        pthread_mutex_lock(&h->lock);
        for (struct hconn *hc = h->conns; hc; hc = hc->next) {
            if (hc->sending || hc->cut || hc->fd < 0)
                continue;
            int slow = now - hc->wait_since_ns >= read_ns;
            if (slow || now - hc->born_ns >= life_ns) {
                shutdown(hc->fd, SHUT_RDWR);
                hc->cut = 1;
                bs_metric_add(h->m_refused, slow ? "request_read_timeout" : "lifetime", 1);
            }
        }
        pthread_mutex_unlock(&h->lock);
    }
    return NULL;
}

struct bs_httpsrv *bs_httpsrv_create(const struct bs_httpsrv_opts *o, struct bs_service *svc,
                                     struct bs_metrics *metrics, struct bs_store *store, char *err,
                                     size_t errsz)
{
    const char *listen = o->listen;
    char host[64];
    unsigned port;
    const char *colon = strrchr(listen, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET};
    if (!colon || (size_t)(colon - listen) >= sizeof(host) || sscanf(colon + 1, "%u", &port) != 1 ||
        port > 65535) {
        snprintf(err, errsz, "listen address must be IPv4:port, got \"%s\"", listen);
        return NULL;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        snprintf(err, errsz, "listen address must be IPv4:port, got \"%s\"", listen);
        return NULL;
    }
    sa.sin_port = htons((uint16_t)port);
    struct bs_httpsrv *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    h->o = *o;
    h->o.listen = NULL;
    pthread_mutex_init(&h->lock, NULL);
    h->svc = svc;
    h->metrics = metrics;
    h->store = store;
#define G(field, name, help) h->field = bs_metrics_gauge(metrics, name, help, NULL)
    G(m_store_bytes, "blobswarm_store_bytes", "Bytes of chunk files in the store.");
    G(m_store_budget, "blobswarm_store_budget_bytes", "The store's byte budget.");
    G(m_store_chunks, "blobswarm_store_chunks", "Chunks in the store.");
    G(m_store_blobs, "blobswarm_store_blob_versions", "Blob versions with chunks in the store.");
    G(m_store_tenants, "blobswarm_store_tenants",
      "Storage endpoints (tenants) with chunks in the store; each is owed an equal share.");
#undef G
    h->m_evicted_chunks = bs_metrics_counter(metrics, "blobswarm_store_evicted_chunks_total",
                                             "Chunks evicted to stay within the budget.", NULL);
    h->m_evicted_bytes = bs_metrics_counter(metrics, "blobswarm_store_evicted_bytes_total",
                                            "Bytes evicted to stay within the budget.", NULL);
    h->m_dropped = bs_metrics_counter(metrics, "blobswarm_store_dropped_corrupt_total",
                                      "Chunk files found truncated or corrupt and deleted.", NULL);
    h->m_put_errors = bs_metrics_counter(metrics, "blobswarm_store_put_errors_total",
                                         "Chunk writes that failed (disk full, I/O).", NULL);
    h->m_protect_errors = bs_metrics_counter(
        metrics, "blobswarm_store_protect_errors_total",
        "Chunk files that could not be made immutable (served, but a root client could alter "
        "them).",
        NULL);
    h->m_http = bs_metrics_counter(metrics, "blobswarm_agent_http_requests_total",
                                   "HTTP requests, by endpoint.", "endpoint");
    h->m_inflight = bs_metrics_gauge(metrics, "blobswarm_agent_inflight_requests",
                                     "Requests being answered, by transport.", "transport");
    h->m_seconds = bs_metrics_histogram(
        metrics, "blobswarm_agent_serve_seconds", "Time to answer one chunk request, by transport.",
        "transport", serve_buckets, sizeof(serve_buckets) / sizeof(serve_buckets[0]));
    h->m_refused = bs_metrics_counter(metrics, "blobswarm_agent_http_refused_total",
                                      "HTTP connections refused or cut, by reason.", "reason");
    /* MHD closes connections past twice the per-IP limit at once, without an answer; those
     * between the limit and twice it are answered 503 (see on_connection). MHD's idle timeout
     * backs the reaper up for answers a client stops reading. */
    unsigned hard_per_ip = (unsigned)(2 * o->max_per_ip);
    if (hard_per_ip > (unsigned)o->max_clients)
        hard_per_ip = (unsigned)o->max_clients;
    unsigned idle_s = (unsigned)((o->request_read_ms + 999) / 1000);
    if (pthread_create(&h->reaper, NULL, reaper_main, h) != 0) {
        snprintf(err, errsz, "cannot start a thread");
        pthread_mutex_destroy(&h->lock);
        free(h);
        return NULL;
    }
    h->reaper_started = 1;
    h->d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
            MHD_USE_ERROR_LOG,
        (uint16_t)port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_clients, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        hard_per_ip, MHD_OPTION_CONNECTION_TIMEOUT, idle_s, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, h, MHD_OPTION_NOTIFY_CONNECTION, on_connection, h,
        MHD_OPTION_THREAD_STACK_SIZE, (size_t)(256 * 1024), MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, errsz, "cannot listen on %s: %s", listen, strerror(errno));
        atomic_store(&h->stop, 1);
        pthread_join(h->reaper, NULL);
        pthread_mutex_destroy(&h->lock);
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : (int)port;
    atomic_store(&h->ready, 1);
    return h;
}

int bs_httpsrv_port(const struct bs_httpsrv *h)
{
    return h->port;
}

void bs_httpsrv_set_ready(struct bs_httpsrv *h, int ready)
{
    atomic_store(&h->ready, ready);
}

int bs_httpsrv_destroy(struct bs_httpsrv *h, long drain_ms)
{
    if (!h)
        return 0;
    atomic_store(&h->ready, 0);
    MHD_socket s = MHD_quiesce_daemon(h->d);
    if (s != MHD_INVALID_SOCKET)
        close(s);
    /* Idle keep-alive connections do not hold a drain back; requests in progress do, until
     * their answers are sent. */
    uint64_t deadline = bs_now_ns() + (uint64_t)drain_ms * 1000000ull;
    int busy;
    while ((busy = atomic_load(&h->busy)) > 0 && bs_now_ns() < deadline) {
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
    if (busy > 0) {
        bs_log(BS_LOG_WARN, "httpsrv", "event=drain_timeout requests=%d", busy);
        return busy;
    }
    MHD_stop_daemon(h->d);
    atomic_store(&h->stop, 1);
    pthread_join(h->reaper, NULL);
    pthread_mutex_destroy(&h->lock);
    free(h);
    return 0;
}
