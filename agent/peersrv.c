/* The peer server (see peersrv.h). Order of checks for every request: method (405), path
 * (404), then the signature over the request line's path and query exactly as received (the
 * raw URI, captured by MHD's URI log callback before MHD decodes anything; 401 and a short
 * text on failure), and only then the query is parsed (one spelling: the fields a, c, b, e,
 * i, w in that order, each once, percent-encoded with unreserved characters only; 400
 * otherwise), an upload slot taken (503 at once when max_uploads are running) and the chunk
 * looked up (404). A chunk is sent from its file descriptor with its record header; its
 * store reference is held until MHD reports the request completed (body sent or abandoned),
 * which is also when the upload slot is given back and what the drain waits for.
 * It does not fill chunks, talk to Azure or know about grants. */
#include "peersrv.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "names.h"
#include "peerclient.h"
#include "service.h"
#include "store.h"

#define RAW_URI_MAX    8192 /* bytes of a request's path and query */
#define ACCOUNT_MAX    1024 /* the store's limit on a key field */
#define CONTAINER_MAX  63
#define ETAG_MAX       127
#define DEC_MAX        19 /* digits of i and w */
#define LOG_EVERY_MS   1000
#define DRAIN_POLL_MS  20
#define THREAD_STACK   (256 * 1024)
#define CHUNK_PATH     "/v1/peer/chunk"
#define GRID_SEPARATOR "#grid="

struct bs_peersrv {
    struct MHD_Daemon *d;
    int port;
    char dest[80]; /* this server as signatures name it: the advertise address */
    struct bs_peersrv_opts o;
    const struct bs_peer_secret *secret;
    struct bs_service *svc;
    uint64_t grid;
    atomic_int busy;    /* requests answered and not yet completed */
    atomic_int uploads; /* upload slots taken */
    struct bs_log_limit refused_log;
    struct bs_metric *m_bytes_out, *m_uploads, *m_errors;
};

/* One request, from the URI log callback (MHD's con_cls) until MHD reports it completed. */
struct req {
    struct bs_peersrv *p;
    struct bs_chunk_ref *ref; /* the chunk being sent, pinned until completed */
    uint64_t len;             /* its length */
    int headers_seen;         /* the access handler was called once */
    int answered;             /* counted in busy */
    int upload;               /* holds an upload slot */
    size_t urilen;            /* > RAW_URI_MAX: too long, not kept */
    char uri[];
};

/* The decoded query. */
struct fields {
    char a[ACCOUNT_MAX + 1], c[CONTAINER_MAX + 1], b[BS_NAME_BLOB_MAX + 1], e[ETAG_MAX + 1];
    uint64_t i, w;
};

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    (void)c;
    size_t n = strnlen(uri, RAW_URI_MAX + 1);
    struct req *r = calloc(1, sizeof(*r) + (n > RAW_URI_MAX ? 0 : n) + 1);
    if (!r)
        return NULL;
    r->p = cls;
    r->urilen = n;
    if (n <= RAW_URI_MAX)
        memcpy(r->uri, uri, n);
    return r;
}

static void client_ip(struct MHD_Connection *c, char *out, size_t outsz)
{
    const union MHD_ConnectionInfo *i =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(out, outsz, "?");
    if (i && i->client_addr && i->client_addr->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)i->client_addr)->sin_addr,
                  out, (socklen_t)outsz);
}

/* Counts a refusal (kind) and logs it, rate-limited: peers and strangers can send these at
 * will. `why` is a fixed word, never request data. */
static void refused(struct bs_peersrv *p, struct MHD_Connection *c, const char *kind,
                    const char *why)
{
    bs_metric_add(p->m_errors, kind, 1);
    unsigned long long quiet;
    if (bs_log_threshold >= BS_LOG_WARN && bs_log_allow(&p->refused_log, LOG_EVERY_MS, &quiet)) {
        char ip[INET_ADDRSTRLEN];
        client_ip(c, ip, sizeof(ip));
        bs_log(BS_LOG_WARN, "peersrv",
               "event=peer_refused kind=%s reason=\"%s\" ip=%s "
               "not_logged_before=%llu",
               kind, why, ip, quiet);
    }
}

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *text)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "text/plain");
    if (status == 405)
        MHD_add_response_header(r, "Allow", "GET");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static int unreserved(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

/* Consumes "<key>=<value>" and the '&' after it (or the end, when last) at *q, decoding the
 * value into out (outsz bytes with the NUL). 0, or -1 when malformed, too long or holding a
 * NUL byte. */
static int take_field(const char **q, const char *key, int last, char *out, size_t outsz)
{
    const char *s = *q;
    size_t kl = strlen(key), o = 0;
    if (strncmp(s, key, kl) != 0 || s[kl] != '=')
        return -1;
    s += kl + 1;
    while (*s && *s != '&') {
        int ch;
        if (*s == '%') {
            int hi = hexval(s[1]), lo = hi < 0 ? -1 : hexval(s[2]);
            if (lo < 0)
                return -1;
            ch = hi << 4 | lo;
            s += 3;
        } else if (unreserved(*s)) {
            ch = (unsigned char)*s++;
        } else {
            return -1;
        }
        if (ch == 0 || o + 1 >= outsz)
            return -1;
        out[o++] = (char)ch;
    }
    out[o] = '\0';
    if (last ? *s != '\0' : *s != '&')
        return -1;
    *q = last ? s : s + 1;
    return 0;
}

/* A canonical decimal (no sign, no leading zero, at most DEC_MAX digits). 0 or -1. */
static int dec_parse(const char *s, uint64_t *v)
{
    uint64_t x = 0;
    size_t n = 0;
    for (; s[n]; n++) {
        if (s[n] < '0' || s[n] > '9' || n == DEC_MAX)
            return -1;
        x = x * 10 + (uint64_t)(s[n] - '0');
    }
    if (n == 0 || (n > 1 && s[0] == '0') || x > INT64_MAX)
        return -1;
    *v = x;
    return 0;
}

static int printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return 0;
    return 1;
}

/* Parses and checks the query (after the signature passed). NULL when good, else a fixed
 * reason. */
static const char *parse_query(const struct bs_peersrv *p, const char *q, struct fields *f)
{
    char dec[DEC_MAX + 2];
    if (take_field(&q, "a", 0, f->a, sizeof(f->a)) || take_field(&q, "c", 0, f->c, sizeof(f->c)) ||
        take_field(&q, "b", 0, f->b, sizeof(f->b)) || take_field(&q, "e", 0, f->e, sizeof(f->e)))
        return "malformed query";
    if (take_field(&q, "i", 0, dec, sizeof(dec)) || dec_parse(dec, &f->i))
        return "malformed chunk index";
    if (take_field(&q, "w", 1, dec, sizeof(dec)) || dec_parse(dec, &f->w))
        return "malformed wait";
    /* a = "<canonical endpoint>#grid=<this agent's chunk size>" */
    char *grid = NULL;
    for (char *s = strstr(f->a, GRID_SEPARATOR); s; s = strstr(s + 1, GRID_SEPARATOR))
        grid = s;
    uint64_t g;
    if (!grid || !printable(f->a) || dec_parse(grid + strlen(GRID_SEPARATOR), &g))
        return "malformed account";
    if (g != p->grid)
        return "another chunk grid";
    *grid = '\0';
    int canonical = bs_name_endpoint_canonical(f->a);
    *grid = '#';
    if (!canonical)
        return "endpoint not canonical";
    if (!bs_name_container_ok(f->c))
        return "bad container name";
    if (bs_name_blob_problem(f->b))
        return "bad blob name";
    if (!f->e[0] || !printable(f->e))
        return "bad etag";
    return NULL;
}

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    (void)kind;
    (void)value;
    if (key && strcasecmp(key, BS_PEER_AUTH_HEADER) == 0)
        (*(int *)cls)++;
    return MHD_YES;
}

/* 200 with the chunk and its record, or the reason it cannot be sent. */
/* Whether the client closed its side (a waiter that gave up): a peek finds end of file. */
static int client_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    char b;
    return ci && recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

#define WAIT_SLICE_MS 250 /* a wait for a fill checks this often that its client is still there */

static enum MHD_Result serve(struct bs_peersrv *p, struct MHD_Connection *c, struct req *r,
                             const struct fields *f)
{
    struct bs_chunk_key k = {f->a, f->c, f->b, f->e, f->i};
    long wait = f->w > (uint64_t)p->o.max_wait_ms ? p->o.max_wait_ms : (long)f->w;
    uint64_t wait_end = bs_now_ns() + (uint64_t)wait * BS_NS_PER_MS;
    struct bs_chunk_ref *ref = NULL;
    /* Waiting for a fill holds no upload slot; it ends when the fill does, the wait is over,
     * the client hangs up or the agent stops. */
    int rc = bs_service_peer_get(p->svc, &k, 0, &ref);
    while (rc == -ENOENT || rc == -EINPROGRESS) {
        uint64_t now = bs_now_ns();
        if (wait <= 0 || now >= wait_end)
            break;
        long slice = (long)((wait_end - now) / BS_NS_PER_MS);
        rc = bs_service_peer_get(p->svc, &k, slice < WAIT_SLICE_MS ? slice : WAIT_SLICE_MS, &ref);
        if (rc == -ENOENT || client_gone(c))
            break; /* no fill of it here (any more), or nobody to send it to */
    }
    if (rc != 0 || !ref) {
        if (ref)
            bs_service_release(p->svc, ref);
        bs_metric_add(p->m_errors, "notfound_in", 1);
        return send_text(c, 404, "not held\n");
    }
    if (atomic_fetch_add(&p->uploads, 1) >= p->o.max_uploads) {
        atomic_fetch_sub(&p->uploads, 1);
        bs_service_release(p->svc, ref);
        refused(p, c, "busy_in", "at the upload cap");
        return send_text(c, 503, "busy\n");
    }
    r->upload = 1;
    bs_metric_add(p->m_uploads, NULL, 1);
    int fd = bs_chunk_ref_open(ref);
    if (fd < 0) {
        bs_service_release(p->svc, ref);
        bs_metric_add(p->m_errors, "notfound_in", 1);
        return send_text(c, 404, "not held\n");
    }
    uint64_t len = bs_chunk_ref_length(ref);
    struct bs_chunk_id id = {f->a, f->c, f->b, f->e, f->i};
    char record[BS_PEER_HDR_MAX];
    bs_peer_sign_record(p->secret, &id, len, bs_chunk_ref_sha256(ref), record);
    struct MHD_Response *resp = MHD_create_response_from_fd_at_offset64(len, fd, 0);
    if (!resp) {
        close(fd);
        bs_service_release(p->svc, ref);
        return MHD_NO;
    }
    /* From here MHD owns fd; the reference is released when the request completes. */
    r->ref = ref;
    r->len = len;
    MHD_add_response_header(resp, BS_PEER_RECORD_HEADER, record);
    MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
    enum MHD_Result ret = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result handle(struct bs_peersrv *p, struct MHD_Connection *c, struct req *r,
                              const char *method)
{
    if (strcmp(method, "GET") != 0)
        return send_text(c, 405, "method not allowed\n");
    const char *q = r->urilen <= RAW_URI_MAX ? strchr(r->uri, '?') : NULL;
    size_t plen = q ? (size_t)(q - r->uri) : strnlen(r->uri, RAW_URI_MAX + 1);
    if (r->urilen > RAW_URI_MAX) {
        refused(p, c, "bad_request_in", "request line too long");
        return send_text(c, 414, "request too long\n");
    }
    if (plen != strlen(CHUNK_PATH) || strncmp(r->uri, CHUNK_PATH, plen) != 0)
        return send_text(c, 404, "not found\n");
    /* The signature first: nothing else of an unauthenticated request is looked at. */
    int nauth = 0;
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_header, &nauth);
    const char *hdr = MHD_lookup_connection_value(c, MHD_HEADER_KIND, BS_PEER_AUTH_HEADER);
    char node[64], why[64];
    if (nauth > 1) {
        refused(p, c, "auth_in", "repeated signature header");
        return send_text(c, 401, "unauthorized\n");
    }
    /* Signed for this server: a request relayed or replayed to another agent fails. */
    char target[sizeof(p->dest) + RAW_URI_MAX + 1];
    snprintf(target, sizeof(target), "%s%s", p->dest, r->uri);
    if (bs_peer_verify_request(p->secret, hdr, "GET", target, bs_peer_wall_ms(), p->o.window_ms,
                               node, why, sizeof(why)) != 0) {
        refused(p, c, "auth_in", why);
        return send_text(c, 401, "unauthorized\n");
    }
    struct fields *f = malloc(sizeof(*f));
    if (!f)
        return send_text(c, 503, "busy\n");
    const char *bad = q ? parse_query(p, q + 1, f) : "no query";
    enum MHD_Result ret;
    if (bad) {
        refused(p, c, "bad_request_in", bad);
        ret = send_text(c, 400, "bad request\n");
    } else {
        ret = serve(p, c, r, f);
    }
    free(f);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)url; /* decoded by MHD: the raw URI in the request context is what counts */
    (void)version;
    (void)upload_data;
    struct bs_peersrv *p = cls;
    struct req *r = *con_cls;
    if (!r)
        return MHD_NO; /* no context (out of memory): drop the connection */
    if (r->answered)
        return MHD_YES;
    /* The first call comes when the headers are in: answering in it makes MHD close the
     * connection after the answer (libmicrohttpd 0.9.75 discards the rest of a request
     * answered early), so the answer waits for the next call, once MHD has read the
     * (empty) body, and the connection stays open for the peer's next request. */
    if (!r->headers_seen) {
        r->headers_seen = 1;
        return MHD_YES;
    }
    r->answered = 1;
    atomic_fetch_add(&p->busy, 1);
    if (*upload_data_size) { /* a GET has no body: refused, and the connection closed */
        *upload_data_size = 0;
        refused(p, c, "bad_request_in", "request body");
        return send_text(c, 400, "bad request\n");
    }
    return handle(p, c, r, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c;
    struct bs_peersrv *p = cls;
    struct req *r = *con_cls;
    if (!r)
        return;
    if (r->ref) {
        if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
            bs_metric_add(p->m_bytes_out, NULL, (double)r->len);
        bs_service_release(p->svc, r->ref);
    }
    if (r->upload) {
        atomic_fetch_sub(&p->uploads, 1);
        bs_metric_add(p->m_uploads, NULL, -1);
    }
    if (r->answered)
        atomic_fetch_sub(&p->busy, 1);
    free(r);
    *con_cls = NULL;
}

/* MHD's own messages (a peer that hung up mid-body, a malformed request): debug lines, since
 * any client can cause them at will and a hedging peer aborts transfers as a matter of
 * course. */
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    if (bs_log_threshold < BS_LOG_DEBUG)
        return;
    char msg[256];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\r\n")] = '\0';
    char esc[300];
    bs_name_escape(msg, esc, sizeof(esc));
    bs_log(BS_LOG_DEBUG, "peersrv", "event=mhd msg=\"%s\"", esc);
}

/* "IPv4:port" into sa. 0 or -1. */
static int parse_listen(const char *listen, struct sockaddr_in *sa)
{
    char host[INET_ADDRSTRLEN];
    const char *colon = listen ? strrchr(listen, ':') : NULL;
    uint64_t port;
    if (!colon || (size_t)(colon - listen) >= sizeof(host) || dec_parse(colon + 1, &port) != 0 ||
        port > 65535)
        return -1;
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

struct bs_peersrv *bs_peersrv_create(const struct bs_peersrv_opts *o, struct bs_service *svc,
                                     struct bs_metrics *metrics, char *err, size_t errsz)
{
    struct sockaddr_in sa;
    if (parse_listen(o->listen, &sa) != 0) {
        snprintf(err, errsz, "peer listen address must be IPv4:port, got \"%s\"",
                 o->listen ? o->listen : "");
        return NULL;
    }
    if (!o->secret || o->secret->len < BS_PEER_SECRET_MIN) {
        snprintf(err, errsz, "peer server: no cluster secret");
        return NULL;
    }
    if (o->window_ms < 0 || o->max_uploads < 1 || o->max_clients < 1 || o->max_per_ip < 1 ||
        o->conn_idle_ms < 1 || o->max_wait_ms < 0) {
        snprintf(err, errsz, "peer server: limits must be positive");
        return NULL;
    }
    struct bs_peersrv *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    p->o = *o;
    p->o.listen = NULL;
    p->secret = o->secret;
    p->svc = svc;
    p->grid = bs_service_chunk_size(svc);
    p->m_bytes_out =
        bs_metrics_counter(metrics, "blobswarm_peer_bytes_out_total",
                           "Chunk bytes sent to other agents (whole bodies sent).", NULL);
    p->m_uploads = bs_metrics_gauge(metrics, "blobswarm_peer_uploads",
                                    "Chunk requests of other agents being answered now (each "
                                    "holds an upload slot).",
                                    NULL);
    p->m_errors = bs_metrics_counter(metrics, BS_PEER_ERRORS_METRIC, BS_PEER_ERRORS_HELP,
                                     BS_PEER_ERRORS_LABELS);
    unsigned per_ip = (unsigned)(o->max_per_ip < o->max_clients ? o->max_per_ip : o->max_clients);
    unsigned idle_s = (unsigned)((o->conn_idle_ms + 999) / 1000);
    p->d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
            MHD_USE_ERROR_LOG,
        ntohs(sa.sin_port), NULL, NULL, on_request, p, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_clients, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        per_ip, MHD_OPTION_CONNECTION_TIMEOUT, idle_s, MHD_OPTION_URI_LOG_CALLBACK, on_uri, p,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, p, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
        MHD_OPTION_THREAD_STACK_SIZE, (size_t)THREAD_STACK, MHD_OPTION_END);
    if (!p->d) {
        snprintf(err, errsz, "peer server cannot listen on %s: %s", o->listen, strerror(errno));
        free(p);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(p->d, MHD_DAEMON_INFO_BIND_PORT);
    p->port = info ? info->port : (int)ntohs(sa.sin_port);
    if (o->advertise && *o->advertise) {
        snprintf(p->dest, sizeof(p->dest), "%s", o->advertise);
    } else {
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof(ip));
        snprintf(p->dest, sizeof(p->dest), "%s:%d", ip, p->port);
    }
    return p;
}

int bs_peersrv_port(const struct bs_peersrv *p)
{
    return p->port;
}

int bs_peersrv_destroy(struct bs_peersrv *p, long drain_ms)
{
    if (!p)
        return 0;
    MHD_socket s = MHD_quiesce_daemon(p->d);
    if (s != MHD_INVALID_SOCKET)
        close(s);
    /* Idle keep-alive connections do not hold the drain back; answers being sent do. */
    uint64_t deadline = bs_now_ns() + (uint64_t)(drain_ms > 0 ? drain_ms : 0) * BS_NS_PER_MS;
    int busy;
    while ((busy = atomic_load(&p->busy)) > 0 && bs_now_ns() < deadline) {
        struct timespec ts = {0, DRAIN_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (busy > 0)
        bs_log(BS_LOG_WARN, "peersrv", "event=drain_timeout uploads=%d", busy);
    /* Cuts what is left; every request's completion runs (references released) before it
     * returns. */
    MHD_stop_daemon(p->d);
    free(p);
    return busy > 0 ? -1 : 0;
}
