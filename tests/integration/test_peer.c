/* Integration test of the peer data plane: a real store in a temporary directory, the chunk
 * service, the peer server (agent/peersrv) on 127.0.0.1:0 and the peer client
 * (peer/peerclient) in one process, plus in-process TCP peers that misbehave: a relay that
 * counts connections, flips a body byte, alters the record header or stalls mid-body; a
 * fake peer that sends a longer or shorter body or a record for another length; a socket
 * that accepts and never answers; a closed port. Raw HTTP requests check what the server
 * refuses (401 unsigned, other secret, stale, replayed onto another query; 400, 404, 405,
 * 503 at the upload cap) and that a refusal carries no chunk bytes.
 * Waits (w > 0): a slow origin (an in-process HTTP server standing in for Azure, answering a
 * ranged GET after a set delay) makes the service run real fills; a request with a wait is
 * served once the fill ends, waiters hold no upload slot, a waiter that hangs up ends its wait
 * within a slice, and the client's stall limit does not cut a wait longer than it.
 * Finally it measures fetch throughput of 8 MiB chunks over loopback (MiB/s and the
 * process's CPU, server and client together) and prints it.
 *
 * usage: test_peer [--bench-only]   Needs nothing but loopback; every wait is bounded. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <openssl/evp.h>

#include "blobreader.h"
#include "clock.h"
#include "fetch.h"
#include "metrics.h"
#include "peerauth.h"
#include "peerclient.h"
#include "peersrv.h"
#include "service.h"
#include "store.h"

#define CHUNK       (8u << 20)
#define SMALL       (100000u) /* a short last chunk */
#define BLOCK       65536u
#define WINDOW_MS   30000L
#define STALL_MS    500L
#define UPLOADS     2
#define WAIT_S      10 /* bound of every wait in this test */
#define ENDPOINT    "http://127.0.0.1:10000/devstoreaccount1"
#define ACCOUNT     ENDPOINT "#grid=8388608"
#define CONTAINER   "models"
#define BLOB        "llama/model-00001.safetensors"
#define ETAG        "\"0x8DC1234ABCD\""
#define FLIP_AT     4096 /* body offset whose byte the relay flips */
#define STALL_FROM  (1u << 20)
#define HEAD_MAX    32768 /* response header bytes a relay buffers */
#define MAX_WAIT_MS 5000  /* the peer server's longest wait for a fill */
/* The slow origin: one blob version of ORIGIN_SIZE bytes under any name. */
#define ORIGIN_ACCOUNT "devstoreaccount1"
#define ORIGIN_ETAG    "\"0x8DC0000ABCDEF01\""
#define ORIGIN_SIZE    100000u
#define ORIGIN_CONNS   32 /* connections it serves in a run */
#define FILLERS_MAX    8  /* fills the cases start */
#define SLICE_MS                                                                                   \
    250 /* agent/peersrv.c WAIT_SLICE_MS: a waiter's hang-up is seen this                          \
           often */

struct env {
    char dir[64];
    struct bs_metrics *metrics;
    struct bs_fetch *fetch;
    struct bs_blobreader *reader, *check_reader;
    struct bs_store *store;
    struct bs_service *svc;
    struct bs_peersrv *srv;
    struct bs_peerclient *cli;
    struct bs_peer_secret secret, other;
    struct bs_peer peer;
    unsigned char *data;  /* the big chunk's bytes */
    unsigned char *small; /* the short chunk's bytes */
    unsigned char sha[32], small_sha[32];
};

static struct env E;

static const struct bs_chunk_id big_id = {ACCOUNT, CONTAINER, BLOB, ETAG, 0};
static const struct bs_chunk_id small_id = {ACCOUNT, CONTAINER, BLOB, ETAG, 1};
static const struct bs_chunk_id absent_id = {ACCOUNT, CONTAINER, BLOB, ETAG, 7};

static uint64_t deadline_in(long ms)
{
    return bs_now_ns() + (uint64_t)ms * BS_NS_PER_MS;
}

static double elapsed_ms(uint64_t t0)
{
    return (double)(bs_now_ns() - t0) / 1e6;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void fill_random(unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)x;
    }
}

static double metric(const char *series)
{
    size_t len;
    char *text = bs_metrics_render(E.metrics, &len);
    double v = -1;
    size_t n = strlen(series);
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            v = strtod(line + n + 1, NULL);
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    return v < 0 ? 0 : v;
}

/* Waits (bounded) until the series has the value. */
static int metric_becomes(const char *series, double want)
{
    uint64_t end = deadline_in(WAIT_S * 1000);
    while (bs_now_ns() < end) {
        if (metric(series) == want)
            return 1;
        sleep_ms(10);
    }
    return 0;
}

/* ---- raw HTTP ---------------------------------------------------------------------- */

static int connect_port(int port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct timeval tv = {WAIT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The path and query peerclient sends for id, with wait w. Caller frees. */
static char *chunk_pq(const struct bs_chunk_id *id, const char *container, long w)
{
    char *a = curl_easy_escape(NULL, id->account, 0), *c = curl_easy_escape(NULL, container, 0);
    char *b = curl_easy_escape(NULL, id->blob, 0), *e = curl_easy_escape(NULL, id->etag, 0);
    char *out = malloc(8192);
    snprintf(out, 8192, "/v1/peer/chunk?a=%s&c=%s&b=%s&e=%s&i=%llu&w=%ld", a, c, b, e,
             (unsigned long long)id->index, w);
    curl_free(a);
    curl_free(c);
    curl_free(b);
    curl_free(e);
    return out;
}

/* "/v1/peer/chunk?a=..&c=..&b=..&e=..&" + tail (tail as is). Caller frees. */
static char *pq_fields(const char *account, const char *container, const char *blob,
                       const char *etag, const char *tail)
{
    char *a = curl_easy_escape(NULL, account, 0), *c = curl_easy_escape(NULL, container, 0);
    char *b = curl_easy_escape(NULL, blob, 0), *e = curl_easy_escape(NULL, etag, 0);
    char *out = malloc(8192);
    snprintf(out, 8192, "/v1/peer/chunk?a=%s&c=%s&b=%s&e=%s&%s", a, c, b, e, tail);
    curl_free(a);
    curl_free(c);
    curl_free(b);
    curl_free(e);
    return out;
}

struct raw_reply {
    int status;
    size_t body_len;
    char head[4096];
};

/* One request on a new connection ("Connection: close"), reply read to the end. auth: the
 * X-Blobswarm-Peer value or NULL. 0 or -1 (transport). */
static int raw_request(const char *method, const char *pq, const char *auth, struct raw_reply *r)
{
    memset(r, 0, sizeof(*r));
    int fd = connect_port(bs_peersrv_port(E.srv), 0);
    if (fd < 0)
        return -1;
    char *req = malloc(16384);
    int n = snprintf(req, 16384,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s%s\r\n", method,
                     pq, auth ? "X-Blobswarm-Peer: " : "", auth ? auth : "", auth ? "\r\n" : "");
    int rc = send_all(fd, req, (size_t)n);
    free(req);
    size_t cap = CHUNK + 65536, got = 0;
    char *buf = malloc(cap);
    while (rc == 0 && got < cap) {
        ssize_t k = recv(fd, buf + got, cap - got, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            rc = -1;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(fd);
    char *end = got ? memmem(buf, got, "\r\n\r\n", 4) : NULL;
    if (rc == 0 && end && sscanf(buf, "HTTP/1.1 %d", &r->status) == 1) {
        size_t hl = (size_t)(end - buf);
        memcpy(r->head, buf, hl < sizeof(r->head) - 1 ? hl : sizeof(r->head) - 1);
        r->body_len = got - hl - 4;
    } else {
        rc = -1;
    }
    free(buf);
    return rc;
}

/* ---- misbehaving peers ------------------------------------------------------------- */

enum relay_mode { RELAY_PASS, RELAY_FLIP_BODY, RELAY_ALTER_RECORD, RELAY_STALL_BODY };

struct relay {
    enum relay_mode mode;
    int lfd, port, upstream;
    struct bs_peersrv *srv; /* the server behind the relay (NULL: the main one) */
    atomic_int stop, connections;
    pthread_t acceptor;
    pthread_mutex_t lock;
    int nconn;
    pthread_t conn_threads[32];
    int conn_fds[32];
};

struct relay_conn {
    struct relay *r;
    int cfd;
};

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof(sa);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 16) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(sa.sin_port);
    return fd;
}

/* Server-to-client bytes, tampered with as the mode says (first response only). */
struct tamper {
    enum relay_mode mode;
    int in_head;
    size_t hlen;
    uint64_t body_off;
    char head[2 * 65536]; /* headers (at most HEAD_MAX) and the rest of the read */
};

static void tamper_head(struct tamper *t)
{
    if (t->mode != RELAY_ALTER_RECORD)
        return;
    char *rec = memmem(t->head, t->hlen, "X-Blobswarm-Record: ", 20);
    char *sha = rec ? memmem(rec, t->hlen - (size_t)(rec - t->head), "sha256=", 7) : NULL;
    if (sha)
        sha[7 + 10] = sha[7 + 10] == '0' ? '1' : '0';
}

/* Forwards n bytes from the server to the client. -1 when the client is gone. */
static int relay_down(struct relay *r, struct tamper *t, int cfd, char *p, size_t n)
{
    if (t->in_head) {
        if (t->hlen > HEAD_MAX || t->hlen + n > sizeof(t->head))
            return -1;
        memcpy(t->head + t->hlen, p, n);
        t->hlen += n;
        char *end = memmem(t->head, t->hlen, "\r\n\r\n", 4);
        if (!end)
            return 0;
        size_t hl = (size_t)(end - t->head) + 4;
        t->in_head = 0;
        tamper_head(t);
        if (send_all(cfd, t->head, hl) != 0)
            return -1;
        return relay_down(r, t, cfd, t->head + hl, t->hlen - hl);
    }
    if (t->mode == RELAY_FLIP_BODY && t->body_off <= FLIP_AT && FLIP_AT < t->body_off + n)
        p[FLIP_AT - t->body_off] ^= 0x01;
    if (t->mode == RELAY_STALL_BODY && t->body_off + n > STALL_FROM) {
        size_t keep = t->body_off < STALL_FROM ? (size_t)(STALL_FROM - t->body_off) : 0;
        t->body_off += n;
        if (keep && send_all(cfd, p, keep) != 0)
            return -1;
        return 0; /* the rest is held back: the client sees a stall */
    }
    t->body_off += n;
    return send_all(cfd, p, n);
}

static void *relay_conn_main(void *arg)
{
    struct relay_conn *rc = arg;
    struct relay *r = rc->r;
    int cfd = rc->cfd;
    free(rc);
    int ufd = connect_port(r->upstream, 0);
    struct tamper *t = calloc(1, sizeof(*t));
    char *buf = malloc(65536);
    t->mode = r->mode;
    t->in_head = r->mode != RELAY_PASS;
    while (ufd >= 0 && !atomic_load(&r->stop)) {
        struct pollfd pf[2] = {{cfd, POLLIN, 0}, {ufd, POLLIN, 0}};
        if (poll(pf, 2, 100) <= 0)
            continue;
        if (pf[0].revents) {
            ssize_t n = recv(cfd, buf, 65536, 0);
            if (n <= 0 || send_all(ufd, buf, (size_t)n) != 0)
                break;
        }
        if (pf[1].revents) {
            ssize_t n = recv(ufd, buf, 65536, 0);
            if (n <= 0 || relay_down(r, t, cfd, buf, (size_t)n) != 0)
                break;
        }
    }
    free(buf);
    free(t);
    if (ufd >= 0)
        close(ufd);
    shutdown(cfd, SHUT_RDWR);
    return NULL;
}

static void *relay_accept_main(void *arg)
{
    struct relay *r = arg;
    while (!atomic_load(&r->stop)) {
        struct pollfd pf = {r->lfd, POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        int cfd = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (cfd < 0)
            continue;
        pthread_mutex_lock(&r->lock);
        if (r->nconn == 32) {
            pthread_mutex_unlock(&r->lock);
            close(cfd);
            continue;
        }
        atomic_fetch_add(&r->connections, 1);
        struct relay_conn *rc = malloc(sizeof(*rc));
        rc->r = r;
        rc->cfd = cfd;
        r->conn_fds[r->nconn] = cfd;
        pthread_create(&r->conn_threads[r->nconn++], NULL, relay_conn_main, rc);
        pthread_mutex_unlock(&r->lock);
    }
    return NULL;
}

/* A relay on the path to a peer server that advertises the relay's own address, as an
 * on-path attacker sits between an agent and the address it dials: requests are signed for
 * that address and verify. With to_main, the relay forwards to the main server instead, which
 * advertises another address: a relayed request must fail its signature there. */
static struct relay *relay_start_to(enum relay_mode mode, int to_main)
{
    struct relay *r = calloc(1, sizeof(*r));
    r->mode = mode;
    r->lfd = listen_any(&r->port);
    assert_true(r->lfd >= 0);
    if (to_main) {
        r->upstream = bs_peersrv_port(E.srv);
    } else {
        char adv[64], err[256];
        snprintf(adv, sizeof(adv), "127.0.0.1:%d", r->port);
        struct bs_peersrv_opts po = {
            .listen = "127.0.0.1:0",
            .advertise = adv,
            .secret = &E.secret,
            .window_ms = WINDOW_MS,
            .max_uploads = UPLOADS,
            .max_clients = 64,
            .max_per_ip = 32,
            .conn_idle_ms = 20000,
            .max_wait_ms = MAX_WAIT_MS,
        };
        r->srv = bs_peersrv_create(&po, E.svc, E.metrics, err, sizeof(err));
        if (!r->srv)
            fail_msg("relay's peer server: %s", err);
        r->upstream = bs_peersrv_port(r->srv);
    }
    pthread_mutex_init(&r->lock, NULL);
    assert_int_equal(pthread_create(&r->acceptor, NULL, relay_accept_main, r), 0);
    return r;
}

static void relay_stop(struct relay *r)
{
    atomic_store(&r->stop, 1);
    pthread_join(r->acceptor, NULL);
    for (int i = 0; i < r->nconn; i++) {
        pthread_join(r->conn_threads[i], NULL);
        close(r->conn_fds[i]);
    }
    close(r->lfd);
    bs_peersrv_destroy(r->srv, 1000);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static struct relay *relay_start(enum relay_mode mode)
{
    return relay_start_to(mode, 0);
}

static struct bs_peer relay_peer(const struct relay *r)
{
    struct bs_peer p = {"relay", ""};
    snprintf(p.addr, sizeof(p.addr), "127.0.0.1:%d", r->port);
    return p;
}

/* A fake peer answering one request with a crafted 200. */
enum fake_mode { FAKE_LONGER, FAKE_SHORTER, FAKE_NO_RECORD, FAKE_RECORD_LEN, FAKE_TWO_RECORDS };

struct fake {
    enum fake_mode mode;
    int lfd, port;
    pthread_t t;
};

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    struct pollfd pf = {f->lfd, POLLIN, 0};
    if (poll(&pf, 1, WAIT_S * 1000) <= 0)
        return NULL;
    int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return NULL;
    char req[16384];
    size_t got = 0;
    while (got < sizeof(req) && !memmem(req, got, "\r\n\r\n", 4)) {
        ssize_t n = recv(fd, req + got, sizeof(req) - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    uint64_t len = SMALL, rec_len = SMALL, body = SMALL;
    if (f->mode == FAKE_LONGER)
        body = SMALL + 4096;
    if (f->mode == FAKE_SHORTER)
        body = SMALL - 10;
    if (f->mode == FAKE_RECORD_LEN)
        rec_len = body = SMALL + 1;
    unsigned char *bytes = calloc(1, body);
    memcpy(bytes, E.small, body < len ? body : len);
    char record[BS_PEER_HDR_MAX], head[2048];
    bs_peer_sign_record(&E.secret, &small_id, rec_len, E.small_sha, record);
    int hl = snprintf(
        head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Length: %llu\r\n%s%s%s%s%s%s\r\n",
        (unsigned long long)body, f->mode == FAKE_NO_RECORD ? "" : "X-Blobswarm-Record: ",
        f->mode == FAKE_NO_RECORD ? "" : record, f->mode == FAKE_NO_RECORD ? "" : "\r\n",
        f->mode == FAKE_TWO_RECORDS ? "X-Blobswarm-Record: " : "",
        f->mode == FAKE_TWO_RECORDS ? record : "", f->mode == FAKE_TWO_RECORDS ? "\r\n" : "");
    if (send_all(fd, head, (size_t)hl) == 0)
        send_all(fd, bytes, body);
    free(bytes);
    /* Wait for the client to hang up (bounded), then close. */
    struct timeval tv = {WAIT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (recv(fd, req, sizeof(req), 0) > 0)
        ;
    close(fd);
    return NULL;
}

static struct fake *fake_start(enum fake_mode mode)
{
    struct fake *f = calloc(1, sizeof(*f));
    f->mode = mode;
    f->lfd = listen_any(&f->port);
    assert_true(f->lfd >= 0);
    assert_int_equal(pthread_create(&f->t, NULL, fake_main, f), 0);
    return f;
}

static void fake_stop(struct fake *f)
{
    pthread_join(f->t, NULL);
    close(f->lfd);
    free(f);
}

/* ---- a slow origin ---------------------------------------------------------------- */

/* A tiny HTTP server in Azure's place, so that the service runs real fills: a HEAD gives the
 * blob's ETag and size, a ranged GET is answered origin.delay_ms after it arrived (the fill in
 * progress that a peer request's wait is about). Every blob name has the same bytes. */
struct origin {
    int lfd, port;
    atomic_int stop;
    atomic_int gets;     /* GETs received */
    atomic_int answered; /* GETs answered */
    atomic_long delay_ms;
    _Atomic uint64_t get_ns; /* when the last GET arrived */
    pthread_t acceptor;
    pthread_mutex_t lock;
    int nconn;
    pthread_t conn_threads[ORIGIN_CONNS];
    unsigned char *data;
    unsigned char sha[32];
    char endpoint[64];
    char account[96]; /* the chunk key's account: endpoint#grid=CHUNK */
};

static struct origin O;

/* "bytes=<first>-<last>" of the request's x-ms-range, or the whole blob. */
static void origin_range(const char *req, uint64_t *first, uint64_t *last)
{
    *first = 0;
    *last = ORIGIN_SIZE - 1;
    const char *h = strcasestr(req, "\r\nx-ms-range: bytes=");
    unsigned long long a, b;
    if (h && sscanf(h + strlen("\r\nx-ms-range: bytes="), "%llu-%llu", &a, &b) == 2 && a <= b &&
        b < ORIGIN_SIZE) {
        *first = a;
        *last = b;
    }
}

/* Sleeps ms unless the origin stops. */
static void origin_sleep(long ms)
{
    for (long t = 0; t < ms && !atomic_load(&O.stop); t += 10)
        sleep_ms(ms - t < 10 ? ms - t : 10);
}

static void *origin_conn_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char req[8192];
    size_t got = 0;
    while (!atomic_load(&O.stop)) {
        char *end = memmem(req, got, "\r\n\r\n", 4);
        if (!end) {
            struct pollfd pf = {fd, POLLIN, 0};
            if (poll(&pf, 1, 100) <= 0)
                continue;
            ssize_t n = got < sizeof(req) - 1 ? recv(fd, req + got, sizeof(req) - 1 - got, 0) : 0;
            if (n <= 0)
                break;
            got += (size_t)n;
            continue;
        }
        size_t hl = (size_t)(end - req) + 4;
        char head[1024];
        req[hl - 2] = '\0'; /* the request's head as a string (ends in one CRLF) */
        int n;
        if (strncmp(req, "HEAD ", 5) == 0) {
            n = snprintf(head, sizeof(head),
                         "HTTP/1.1 200 OK\r\nContent-Length: %u\r\nETag: %s\r\n"
                         "x-ms-blob-type: BlockBlob\r\n\r\n",
                         ORIGIN_SIZE, ORIGIN_ETAG);
            if (send_all(fd, head, (size_t)n) != 0)
                break;
        } else if (strncmp(req, "GET ", 4) == 0) {
            uint64_t first, last;
            origin_range(req, &first, &last);
            atomic_store(&O.get_ns, bs_now_ns());
            atomic_fetch_add(&O.gets, 1);
            origin_sleep(atomic_load(&O.delay_ms));
            n = snprintf(head, sizeof(head),
                         "HTTP/1.1 206 Partial Content\r\nContent-Length: %llu\r\n"
                         "Content-Range: bytes %llu-%llu/%u\r\nETag: %s\r\n\r\n",
                         (unsigned long long)(last - first + 1), (unsigned long long)first,
                         (unsigned long long)last, ORIGIN_SIZE, ORIGIN_ETAG);
            atomic_fetch_add(&O.answered, 1);
            if (send_all(fd, head, (size_t)n) != 0 ||
                send_all(fd, O.data + first, (size_t)(last - first + 1)) != 0)
                break;
        } else {
            break;
        }
        memmove(req, req + hl, got - hl);
        got -= hl;
    }
    close(fd);
    return NULL;
}

static void *origin_accept_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&O.stop)) {
        struct pollfd pf = {O.lfd, POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        int fd = accept4(O.lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        pthread_mutex_lock(&O.lock);
        if (O.nconn == ORIGIN_CONNS ||
            pthread_create(&O.conn_threads[O.nconn], NULL, origin_conn_main, (void *)(intptr_t)fd))
            close(fd);
        else
            O.nconn++;
        pthread_mutex_unlock(&O.lock);
    }
    return NULL;
}

static int origin_start(void)
{
    O.data = malloc(ORIGIN_SIZE);
    fill_random(O.data, ORIGIN_SIZE, 3);
    EVP_Digest(O.data, ORIGIN_SIZE, O.sha, NULL, EVP_sha256(), NULL);
    pthread_mutex_init(&O.lock, NULL);
    O.lfd = listen_any(&O.port);
    if (O.lfd < 0 || pthread_create(&O.acceptor, NULL, origin_accept_main, NULL) != 0)
        return -1;
    snprintf(O.endpoint, sizeof(O.endpoint), "http://127.0.0.1:%d/" ORIGIN_ACCOUNT, O.port);
    snprintf(O.account, sizeof(O.account), "%s#grid=%u", O.endpoint, CHUNK);
    return 0;
}

static void origin_stop(void)
{
    atomic_store(&O.stop, 1);
    pthread_join(O.acceptor, NULL);
    for (int i = 0; i < O.nconn; i++)
        pthread_join(O.conn_threads[i], NULL);
    close(O.lfd);
    pthread_mutex_destroy(&O.lock);
    free(O.data);
}

/* A caller of the service whose request starts the fill of chunk 0 of `blob` (it waits the
 * service's fill_wait_ms, the fill goes on after that). Joined by fill_join, or by the
 * teardown when a case failed before it did. */
struct filler {
    char blob[64];
    pthread_t t;
    int joined;
    struct bs_chunk_reply rep;
};

static struct filler fillers[FILLERS_MAX];
static int nfillers;

static void *filler_main(void *arg)
{
    struct filler *f = arg;
    struct bs_chunk_req *req = calloc(1, sizeof(*req));
    snprintf(req->account, sizeof(req->account), ORIGIN_ACCOUNT);
    snprintf(req->container, sizeof(req->container), CONTAINER);
    snprintf(req->blob, sizeof(req->blob), "%s", f->blob);
    req->auth.kind = BS_AUTH_ANONYMOUS;
    snprintf(req->auth.endpoint, sizeof(req->auth.endpoint), "%s", O.endpoint);
    snprintf(req->auth.account, sizeof(req->auth.account), ORIGIN_ACCOUNT);
    struct bs_chunk_ref *ref = NULL;
    bs_service_chunk(E.svc, req, &f->rep, &ref);
    bs_service_release(E.svc, ref);
    free(req);
    return NULL;
}

/* Starts the fill of `blob` with the origin answering after delay_ms; returns once the
 * origin has the fill's GET (the fill is in progress). */
static struct filler *fill_start(const char *blob, long delay_ms)
{
    assert_true(nfillers < FILLERS_MAX);
    struct filler *f = &fillers[nfillers];
    snprintf(f->blob, sizeof(f->blob), "%s", blob);
    int gets = atomic_load(&O.gets);
    atomic_store(&O.delay_ms, delay_ms);
    assert_int_equal(pthread_create(&f->t, NULL, filler_main, f), 0);
    nfillers++;
    uint64_t end = deadline_in(WAIT_S * 1000);
    while (atomic_load(&O.gets) == gets && bs_now_ns() < end)
        sleep_ms(1);
    if (atomic_load(&O.gets) == gets)
        fail_msg("the fill of %s did not reach the origin within %d s", blob, WAIT_S);
    return f;
}

static enum bs_chunk_status fill_join(struct filler *f)
{
    if (!f->joined)
        pthread_join(f->t, NULL);
    f->joined = 1;
    return f->rep.status;
}

static struct bs_chunk_id origin_id(const char *blob)
{
    struct bs_chunk_id id = {O.account, CONTAINER, blob, ORIGIN_ETAG, 0};
    return id;
}

/* Removes one entry of the test directory; chunk files are made removable first (the store
 * makes them 0400 and, where it can, immutable). */
static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)ftw;
    if (flag == FTW_F && S_ISREG(st->st_mode)) {
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        int flags = 0;
        if (fd >= 0 && ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_IMMUTABLE_FL)) {
            flags &= ~FS_IMMUTABLE_FL;
            ioctl(fd, FS_IOC_SETFLAGS, &flags);
        }
        if (fd >= 0)
            close(fd);
    }
    remove(path);
    return 0;
}

/* ---- setup ------------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    char err[256];
    snprintf(E.dir, sizeof(E.dir), "/tmp/bs_peer_test.XXXXXX");
    if (!mkdtemp(E.dir))
        return -1;
    memcpy(E.secret.key, "the cluster secret of this test, 40 bytes", 40);
    E.secret.len = 40;
    memcpy(E.other.key, "another cluster's secret, also 40 bytes!", 40);
    E.other.len = 40;
    E.metrics = bs_metrics_create();
    char sdir[128];
    snprintf(sdir, sizeof(sdir), "%s/store", E.dir);
    struct bs_store_opts so = {
        .dir = sdir,
        .budget_bytes = 256ull << 20,
        .high_watermark_pct = 90,
        .low_watermark_pct = 80,
        .block_size = BLOCK,
    };
    E.store = bs_store_create(&so, err, sizeof(err));
    if (!E.store) {
        fprintf(stderr, "store: %s\n", err);
        return -1;
    }
    struct bs_service_opts vo = {
        .chunk_size = CHUNK,
        .block_size = BLOCK,
        .fill_wait_ms = 1000,
        .fill_workers = 1,
        .fill_queue = 4,
        .tenant_workers = 1,
        .tenant_queue = 4,
        .answer_ms = 5000,
        .check_ms = 1000,
        .allowed_endpoints = "http://127.0.0.1:*/" ORIGIN_ACCOUNT,
        .grant_ttl_ms = 60000,
        .max_grants = 16,
    };
    /* The origin is the slow one above: the fills the peer server's waits are about. */
    struct bs_fetch_opts fo = {
        .io_threads = 1,
        .max_connections = 8,
        .connect_timeout_ms = 2000,
        .stall_timeout_ms = WAIT_S * 1000,
    };
    struct bs_blobreader_opts ro = {
        .range_bytes = CHUNK,
        .deadline_ms = WAIT_S * 1000,
        .max_retries = 1,
        .retry_base_ms = 100,
        .retry_max_ms = 1000,
        .props_ttl_ms = 0,
        .props_max_entries = 1,
    };
    if (origin_start() != 0)
        return -1;
    E.fetch = bs_fetch_create(&fo, err, sizeof(err));
    E.reader = E.fetch ? bs_blobreader_create(&ro, E.fetch) : NULL;
    ro.deadline_ms = vo.check_ms;
    E.check_reader = E.fetch ? bs_blobreader_create(&ro, E.fetch) : NULL;
    if (!E.reader || !E.check_reader) {
        fprintf(stderr, "origin reader: %s\n", E.fetch ? "out of memory" : err);
        return -1;
    }
    E.svc = bs_service_create(&vo, E.store, E.reader, E.check_reader, E.metrics, err, sizeof(err));
    if (!E.svc)
        return -1;
    E.data = malloc(CHUNK);
    E.small = malloc(SMALL);
    fill_random(E.data, CHUNK, 1);
    fill_random(E.small, SMALL, 2);
    EVP_Digest(E.data, CHUNK, E.sha, NULL, EVP_sha256(), NULL);
    EVP_Digest(E.small, SMALL, E.small_sha, NULL, EVP_sha256(), NULL);
    struct bs_chunk_key k0 = {ACCOUNT, CONTAINER, BLOB, ETAG, 0};
    struct bs_chunk_key k1 = {ACCOUNT, CONTAINER, BLOB, ETAG, 1};
    if (bs_store_put(E.store, &k0, E.data, CHUNK, err, sizeof(err)) != 0 ||
        bs_store_put(E.store, &k1, E.small, SMALL, err, sizeof(err)) != 0) {
        fprintf(stderr, "put: %s\n", err);
        return -1;
    }
    struct bs_peersrv_opts po = {
        .listen = "127.0.0.1:0",
        .secret = &E.secret,
        .window_ms = WINDOW_MS,
        .max_uploads = UPLOADS,
        .max_clients = 64,
        .max_per_ip = 32,
        .conn_idle_ms = 20000,
        .max_wait_ms = MAX_WAIT_MS,
    };
    E.srv = bs_peersrv_create(&po, E.svc, E.metrics, err, sizeof(err));
    if (!E.srv) {
        fprintf(stderr, "peersrv: %s\n", err);
        return -1;
    }
    struct bs_peerclient_opts co = {&E.secret, "node-a", 4, 1000, STALL_MS};
    E.cli = bs_peerclient_create(&co, err, sizeof(err));
    if (!E.cli) {
        fprintf(stderr, "peerclient: %s\n", err);
        return -1;
    }
    snprintf(E.peer.node, sizeof(E.peer.node), "node-b");
    snprintf(E.peer.addr, sizeof(E.peer.addr), "127.0.0.1:%d", bs_peersrv_port(E.srv));
    if (bs_metrics_error(E.metrics, err, sizeof(err)) != 0) {
        fprintf(stderr, "metrics: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < nfillers; i++)
        fill_join(&fillers[i]);
    bs_peerclient_destroy(E.cli);
    int drained = bs_peersrv_destroy(E.srv, 5000);
    bs_service_destroy(E.svc);
    bs_blobreader_destroy(E.reader);
    bs_blobreader_destroy(E.check_reader);
    bs_fetch_destroy(E.fetch);
    origin_stop();
    bs_store_destroy(E.store);
    bs_metrics_destroy(E.metrics);
    free(E.data);
    free(E.small);
    nftw(E.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return drained == 0 ? 0 : -1;
}

/* ---- cases ------------------------------------------------------------------------- */

static enum bs_peer_err fetch_with(struct bs_peerclient *c, const struct bs_peer *p,
                                   const struct bs_chunk_id *id, uint64_t want, long ms, void *buf,
                                   size_t cap, unsigned char sha[32], char *err, size_t errsz)
{
    return bs_peerclient_fetch(c, p, id, want, 0, deadline_in(ms), buf, cap, sha, err, errsz);
}

static void test_fetch(void **state)
{
    (void)state;
    char err[256];
    unsigned char sha[32];
    size_t cap = CHUNK + 8192;
    unsigned char *buf = malloc(cap);
    memset(buf, 0xA5, cap);
    double out0 = metric("blobswarm_peer_bytes_out_total");
    enum bs_peer_err rc =
        fetch_with(E.cli, &E.peer, &big_id, CHUNK, 5000, buf, cap, sha, err, sizeof(err));
    if (rc != BS_PEER_OK)
        fail_msg("fetch: %s: %s", bs_peer_err_name(rc), err);
    assert_memory_equal(buf, E.data, CHUNK);
    assert_memory_equal(sha, E.sha, 32);
    for (size_t i = CHUNK; i < cap; i++)
        assert_int_equal(buf[i], 0xA5);
    rc = fetch_with(E.cli, &E.peer, &small_id, SMALL, 5000, buf, SMALL, sha, err, sizeof(err));
    if (rc != BS_PEER_OK)
        fail_msg("fetch small: %s: %s", bs_peer_err_name(rc), err);
    assert_memory_equal(buf, E.small, SMALL);
    assert_memory_equal(sha, E.small_sha, 32);
    char series[64];
    snprintf(series, sizeof(series), "blobswarm_peer_bytes_out_total");
    assert_true(metric_becomes(series, out0 + CHUNK + SMALL));
    assert_true(metric_becomes("blobswarm_peer_uploads", 0));

    /* Keep-alive: five fetches through a counting relay use one connection. */
    struct relay *r = relay_start(RELAY_PASS);
    struct bs_peer rp = relay_peer(r);
    for (int i = 0; i < 5; i++) {
        rc = fetch_with(E.cli, &rp, i % 2 ? &small_id : &big_id, i % 2 ? SMALL : CHUNK, 5000, buf,
                        cap, sha, err, sizeof(err));
        if (rc != BS_PEER_OK)
            fail_msg("fetch %d through the relay: %s: %s", i, bs_peer_err_name(rc), err);
    }
    assert_int_equal(atomic_load(&r->connections), 1);
    relay_stop(r);

    /* A request signed for one address and relayed to an agent advertising another (a Redis
     * entry pointing at an attacker's relay, a replay to another agent) is refused. */
    r = relay_start_to(RELAY_PASS, 1);
    rp = relay_peer(r);
    rc = fetch_with(E.cli, &rp, &big_id, CHUNK, 5000, buf, cap, sha, err, sizeof(err));
    if (rc != BS_PEER_E_AUTH)
        fail_msg("relayed to another agent: %s (%s), auth expected", bs_peer_err_name(rc), err);
    relay_stop(r);

    /* Wrong expectations: a buffer smaller than the chunk, or another length expected. */
    assert_int_equal(
        fetch_with(E.cli, &E.peer, &big_id, CHUNK, 5000, buf, CHUNK - 1, sha, err, sizeof(err)),
        BS_PEER_E_HTTP);
    assert_int_equal(
        fetch_with(E.cli, &E.peer, &small_id, SMALL + 1, 5000, buf, cap, sha, err, sizeof(err)),
        BS_PEER_E_RECORD);
    struct bs_peer bad = {"x", "127.0.0.1:1/evil"};
    assert_int_equal(
        fetch_with(E.cli, &bad, &small_id, SMALL, 5000, buf, cap, sha, err, sizeof(err)),
        BS_PEER_E_HTTP);
    free(buf);
}

static void sign_pq(const struct bs_peer_secret *s, const char *method, const char *pq, int64_t ts,
                    char out[BS_PEER_HDR_MAX])
{
    /* Signed for the server dialed (its address as the test's server reports it). */
    char target[4096];
    snprintf(target, sizeof(target), "127.0.0.1:%d%s", bs_peersrv_port(E.srv), pq);
    bs_peer_sign_request(s, "raw-client", method, target, ts, out);
}

static void test_auth_refused(void **state)
{
    (void)state;
    struct raw_reply r;
    char hdr[BS_PEER_HDR_MAX], two[2 * BS_PEER_HDR_MAX + 64];
    char *pq = chunk_pq(&big_id, CONTAINER, 0), *pq_small = chunk_pq(&small_id, CONTAINER, 0);
    const char *auth_in = "blobswarm_peer_errors_total{kind=\"auth_in\"}";
    /* The raw client works: a signed request gets the chunk. */
    sign_pq(&E.secret, "GET", pq, bs_peer_wall_ms(), hdr);
    assert_int_equal(raw_request("GET", pq, hdr, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, CHUNK);
    assert_non_null(strstr(r.head, "X-Blobswarm-Record: v1 len=8388608 sha256="));
    double before = metric(auth_in);

    struct {
        const char *what, *auth;
    } cases[7];
    int n = 0;
    cases[n].what = "unsigned";
    cases[n++].auth = NULL;
    static char other[BS_PEER_HDR_MAX], stale[BS_PEER_HDR_MAX], ahead[BS_PEER_HDR_MAX],
        replay[BS_PEER_HDR_MAX];
    sign_pq(&E.other, "GET", pq, bs_peer_wall_ms(), other);
    cases[n].what = "another secret";
    cases[n++].auth = other;
    sign_pq(&E.secret, "GET", pq, bs_peer_wall_ms() - WINDOW_MS - 5000, stale);
    cases[n].what = "stale";
    cases[n++].auth = stale;
    sign_pq(&E.secret, "GET", pq, bs_peer_wall_ms() + WINDOW_MS + 5000, ahead);
    cases[n].what = "ahead";
    cases[n++].auth = ahead;
    sign_pq(&E.secret, "GET", pq_small, bs_peer_wall_ms(), replay);
    cases[n].what = "signature of another query";
    cases[n++].auth = replay;
    cases[n].what = "malformed";
    cases[n++].auth = "v1 node=x ts=1 mac=00";
    snprintf(two, sizeof(two), "%s\r\nX-Blobswarm-Peer: %s", hdr, hdr);
    cases[n].what = "two signature headers";
    cases[n++].auth = two;
    for (int i = 0; i < n; i++) {
        assert_int_equal(raw_request("GET", pq, cases[i].auth, &r), 0);
        if (r.status != 401)
            fail_msg("%s: status %d, 401 expected", cases[i].what, r.status);
        /* No chunk byte, no record: a short text. */
        if (r.body_len > 32 || strstr(r.head, "X-Blobswarm-Record"))
            fail_msg("%s: %zu body bytes or a record with the 401", cases[i].what, r.body_len);
    }
    assert_true(metric(auth_in) == before + n);

    /* The client with another cluster's secret. */
    char err[256];
    unsigned char sha[32], *buf = malloc(SMALL);
    struct bs_peerclient_opts co = {&E.other, "node-x", 1, 1000, STALL_MS};
    struct bs_peerclient *c = bs_peerclient_create(&co, err, sizeof(err));
    assert_non_null(c);
    assert_int_equal(
        fetch_with(c, &E.peer, &small_id, SMALL, 5000, buf, SMALL, sha, err, sizeof(err)),
        BS_PEER_E_AUTH);
    bs_peerclient_destroy(c);
    free(buf);
    free(pq);
    free(pq_small);
}

static void test_bad_requests(void **state)
{
    (void)state;
    struct raw_reply r;
    char hdr[BS_PEER_HDR_MAX];
    const char *bad_in = "blobswarm_peer_errors_total{kind=\"bad_request_in\"}";
    char *pq = chunk_pq(&small_id, CONTAINER, 0);
    sign_pq(&E.secret, "POST", pq, bs_peer_wall_ms(), hdr);
    assert_int_equal(raw_request("POST", pq, hdr, &r), 0);
    assert_int_equal(r.status, 405);
    sign_pq(&E.secret, "HEAD", pq, bs_peer_wall_ms(), hdr);
    assert_int_equal(raw_request("HEAD", pq, hdr, &r), 0);
    assert_int_equal(r.status, 405);
    sign_pq(&E.secret, "GET", "/v1/chunk", bs_peer_wall_ms(), hdr);
    assert_int_equal(raw_request("GET", "/v1/chunk", hdr, &r), 0);
    assert_int_equal(r.status, 404);
    sign_pq(&E.secret, "GET", "/v1/peer/chunk", bs_peer_wall_ms(), hdr);
    assert_int_equal(raw_request("GET", "/v1/peer/chunk", hdr, &r), 0);
    assert_int_equal(r.status, 400);
    free(pq);

    /* Signed (authentic) but not what the server accepts: 400, never a lookup. */
    struct bs_chunk_id other_grid = small_id, not_canonical = small_id;
    other_grid.account = ENDPOINT "#grid=4194304";
    not_canonical.account = "HTTP://127.0.0.1:10000/devstoreaccount1#grid=8388608";
    char *bad[12];
    int n = 0;
    bad[n++] = chunk_pq(&small_id, "Models", 0);
    bad[n++] = chunk_pq(&other_grid, CONTAINER, 0);
    bad[n++] = chunk_pq(&not_canonical, CONTAINER, 0);
    bad[n++] = pq_fields(ACCOUNT, CONTAINER, BLOB, ETAG, "i=1&w=0&x=1"); /* an extra field */
    bad[n++] = pq_fields(ACCOUNT, CONTAINER, BLOB, ETAG, "i=01&w=0");    /* leading zero */
    bad[n++] = pq_fields(ACCOUNT, CONTAINER, BLOB, ETAG, "w=0&i=1");     /* order */
    bad[n++] = pq_fields(ACCOUNT, CONTAINER, BLOB, ETAG, "i=1&i=1&w=0"); /* repeated */
    bad[n++] = pq_fields(ACCOUNT, CONTAINER, "a\x01b", ETAG, "i=1&w=0"); /* control char */
    bad[n] = pq_fields(ACCOUNT, CONTAINER, BLOB, ETAG, "i=1&w=0");
    memcpy(strstr(bad[n++], "&e=") + 3, "%00", 3); /* a NUL byte */
    bad[n] = pq_fields(ACCOUNT, CONTAINER, BLOB, ETAG, "i=1&w=0");
    memcpy(strstr(bad[n++], "&c=") + 3, "+", 1); /* not percent-encoded */
    double before = metric(bad_in);
    for (int i = 0; i < n; i++) {
        sign_pq(&E.secret, "GET", bad[i], bs_peer_wall_ms(), hdr);
        assert_int_equal(raw_request("GET", bad[i], hdr, &r), 0);
        if (r.status != 400)
            fail_msg("%s: status %d, 400 expected", bad[i], r.status);
        free(bad[i]);
    }
    assert_true(metric(bad_in) == before + n);
}

static void test_notfound(void **state)
{
    (void)state;
    char err[256];
    unsigned char sha[32], *buf = malloc(CHUNK);
    const char *nf = "blobswarm_peer_errors_total{kind=\"notfound_in\"}";
    double before = metric(nf);
    assert_int_equal(
        fetch_with(E.cli, &E.peer, &absent_id, CHUNK, 5000, buf, CHUNK, sha, err, sizeof(err)),
        BS_PEER_E_NOTFOUND);
    assert_true(metric(nf) == before + 1);
    /* Another version of the blob is another chunk. */
    struct bs_chunk_id v2 = small_id;
    v2.etag = "\"0x8DC1234ABCE\"";
    assert_int_equal(
        fetch_with(E.cli, &E.peer, &v2, SMALL, 5000, buf, CHUNK, sha, err, sizeof(err)),
        BS_PEER_E_NOTFOUND);
    free(buf);
}

static void test_upload_cap(void **state)
{
    (void)state;
    char hdr[BS_PEER_HDR_MAX], req[8192], err[256];
    unsigned char sha[32], *buf = malloc(SMALL);
    char *pq = chunk_pq(&big_id, CONTAINER, 0);
    int slow[UPLOADS];
    /* Readers that ask for the 8 MiB chunk and read nothing hold the upload slots. */
    for (int i = 0; i < UPLOADS; i++) {
        slow[i] = connect_port(bs_peersrv_port(E.srv), 4096);
        assert_true(slow[i] >= 0);
        sign_pq(&E.secret, "GET", pq, bs_peer_wall_ms(), hdr);
        int n = snprintf(req, sizeof(req),
                         "GET %s HTTP/1.1\r\nHost: x\r\nX-Blobswarm-Peer: %s\r\n\r\n", pq, hdr);
        assert_int_equal(send_all(slow[i], req, (size_t)n), 0);
    }
    assert_true(metric_becomes("blobswarm_peer_uploads", UPLOADS));
    const char *busy = "blobswarm_peer_errors_total{kind=\"busy_in\"}";
    double before = metric(busy);
    uint64_t t0 = bs_now_ns();
    enum bs_peer_err rc =
        fetch_with(E.cli, &E.peer, &small_id, SMALL, 5000, buf, SMALL, sha, err, sizeof(err));
    assert_int_equal(rc, BS_PEER_E_BUSY);
    assert_true(elapsed_ms(t0) < 1000); /* at once, not after a wait */
    assert_true(metric(busy) == before + 1);
    /* The readers hang up: their slots come back. */
    for (int i = 0; i < UPLOADS; i++)
        close(slow[i]);
    assert_true(metric_becomes("blobswarm_peer_uploads", 0));
    rc = fetch_with(E.cli, &E.peer, &small_id, SMALL, 5000, buf, SMALL, sha, err, sizeof(err));
    if (rc != BS_PEER_OK)
        fail_msg("after the cap: %s: %s", bs_peer_err_name(rc), err);
    free(pq);
    free(buf);
}

static void test_tampering(void **state)
{
    (void)state;
    char err[256];
    unsigned char sha[32], *buf = malloc(CHUNK);
    struct {
        enum relay_mode mode;
        enum bs_peer_err want;
    } cases[] = {{RELAY_FLIP_BODY, BS_PEER_E_DIGEST}, {RELAY_ALTER_RECORD, BS_PEER_E_RECORD}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct relay *r = relay_start(cases[i].mode);
        struct bs_peer rp = relay_peer(r);
        enum bs_peer_err rc =
            fetch_with(E.cli, &rp, &big_id, CHUNK, 5000, buf, CHUNK, sha, err, sizeof(err));
        if (rc != cases[i].want)
            fail_msg("relay mode %d: %s (%s), %s expected", cases[i].mode, bs_peer_err_name(rc),
                     err, bs_peer_err_name(cases[i].want));
        relay_stop(r);
    }
    free(buf);
}

static void test_fake_peers(void **state)
{
    (void)state;
    char err[256];
    unsigned char sha[32];
    size_t cap = SMALL + 16384;
    unsigned char *buf = malloc(cap);
    struct {
        enum fake_mode mode;
        enum bs_peer_err want;
    } cases[] = {{FAKE_LONGER, BS_PEER_E_DIGEST},
                 {FAKE_SHORTER, BS_PEER_E_DIGEST},
                 {FAKE_NO_RECORD, BS_PEER_E_RECORD},
                 {FAKE_RECORD_LEN, BS_PEER_E_RECORD},
                 {FAKE_TWO_RECORDS, BS_PEER_E_RECORD}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(buf, 0x5A, cap);
        struct fake *f = fake_start(cases[i].mode);
        struct bs_peer fp = {"fake", ""};
        snprintf(fp.addr, sizeof(fp.addr), "127.0.0.1:%d", f->port);
        enum bs_peer_err rc =
            fetch_with(E.cli, &fp, &small_id, SMALL, 5000, buf, cap, sha, err, sizeof(err));
        if (rc != cases[i].want)
            fail_msg("fake mode %d: %s (%s), %s expected", cases[i].mode, bs_peer_err_name(rc), err,
                     bs_peer_err_name(cases[i].want));
        /* Nothing written past the chunk's length, whatever the peer sent. */
        for (size_t k = SMALL; k < cap; k++)
            if (buf[k] != 0x5A)
                fail_msg("fake mode %d: byte %zu past the chunk was written", cases[i].mode, k);
        fake_stop(f);
    }
    free(buf);
}

struct holder {
    struct bs_peerclient *c;
    const struct bs_peer *p;
    enum bs_peer_err rc;
};

static void *hold_slot(void *arg)
{
    struct holder *h = arg;
    char err[256];
    unsigned char sha[32], *buf = malloc(SMALL);
    h->rc = fetch_with(h->c, h->p, &small_id, SMALL, 1000, buf, SMALL, sha, err, sizeof(err));
    free(buf);
    return NULL;
}

static void test_dead_and_silent_peers(void **state)
{
    (void)state;
    char err[256];
    unsigned char sha[32], *buf = malloc(CHUNK);
    /* Accepts (the kernel's backlog) and never answers: dropped after the stall time. */
    int port, lfd = listen_any(&port);
    struct bs_peer silent = {"silent", ""};
    snprintf(silent.addr, sizeof(silent.addr), "127.0.0.1:%d", port);
    uint64_t t0 = bs_now_ns();
    enum bs_peer_err rc =
        fetch_with(E.cli, &silent, &small_id, SMALL, 5000, buf, SMALL, sha, err, sizeof(err));
    double ms = elapsed_ms(t0);
    printf("# silent peer: %s after %.0f ms (stall %ld ms)\n", bs_peer_err_name(rc), ms, STALL_MS);
    assert_int_equal(rc, BS_PEER_E_TIMEOUT);
    assert_true(ms >= STALL_MS && ms < STALL_MS + 500);
    /* The caller's deadline comes first. */
    t0 = bs_now_ns();
    rc = fetch_with(E.cli, &silent, &small_id, SMALL, 200, buf, SMALL, sha, err, sizeof(err));
    ms = elapsed_ms(t0);
    assert_int_equal(rc, BS_PEER_E_TIMEOUT);
    assert_true(ms >= 190 && ms < 700);

    /* Stalls mid-body (1 MiB sent, then nothing). */
    struct relay *r = relay_start(RELAY_STALL_BODY);
    struct bs_peer rp = relay_peer(r);
    t0 = bs_now_ns();
    rc = fetch_with(E.cli, &rp, &big_id, CHUNK, 5000, buf, CHUNK, sha, err, sizeof(err));
    ms = elapsed_ms(t0);
    printf("# stalled mid-body: %s after %.0f ms (%s)\n", bs_peer_err_name(rc), ms, err);
    assert_int_equal(rc, BS_PEER_E_TIMEOUT);
    assert_true(ms >= STALL_MS && ms < STALL_MS + 500);
    relay_stop(r);

    /* A download slot: with the only slot held by a fetch from the silent peer, another
     * fetch gets none before its deadline. */
    struct bs_peerclient_opts co = {&E.secret, "node-c", 1, 1000, 3000};
    struct holder h = {NULL, &silent, BS_PEER_OK};
    h.c = bs_peerclient_create(&co, err, sizeof(err));
    assert_non_null(h.c);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, hold_slot, &h), 0);
    sleep_ms(200);
    t0 = bs_now_ns();
    rc = fetch_with(h.c, &E.peer, &small_id, SMALL, 300, buf, SMALL, sha, err, sizeof(err));
    ms = elapsed_ms(t0);
    assert_int_equal(rc, BS_PEER_E_LIMIT);
    assert_true(ms >= 290 && ms < 800);
    pthread_join(th, NULL);
    assert_int_equal(h.rc, BS_PEER_E_TIMEOUT);
    /* Freed: the slot serves the next fetch. */
    rc = fetch_with(h.c, &E.peer, &small_id, SMALL, 5000, buf, SMALL, sha, err, sizeof(err));
    assert_int_equal(rc, BS_PEER_OK);
    bs_peerclient_destroy(h.c);
    close(lfd);

    /* A closed port: refused at once. */
    lfd = listen_any(&port);
    close(lfd);
    struct bs_peer dead = {"dead", ""};
    snprintf(dead.addr, sizeof(dead.addr), "127.0.0.1:%d", port);
    t0 = bs_now_ns();
    rc = fetch_with(E.cli, &dead, &small_id, SMALL, 5000, buf, SMALL, sha, err, sizeof(err));
    assert_int_equal(rc, BS_PEER_E_CONNECT);
    assert_true(elapsed_ms(t0) < 1000);
    free(buf);
}

/* ---- waits for a fill (w > 0) ----------------------------------------------------- */

static enum bs_peer_err fetch_wait(struct bs_peerclient *c, const struct bs_chunk_id *id,
                                   long wait_ms, long ms, unsigned char *buf, unsigned char sha[32],
                                   char *err, size_t errsz)
{
    return bs_peerclient_fetch(c, &E.peer, id, ORIGIN_SIZE, wait_ms, deadline_in(ms), buf,
                               ORIGIN_SIZE, sha, err, errsz);
}

/* A chunk being filled here: a request without a wait is told "not held" at once; one with a
 * wait gets the chunk once the fill ends. */
static void test_wait_for_fill(void **state)
{
    (void)state;
    char err[256];
    unsigned char sha[32], *buf = malloc(ORIGIN_SIZE);
    const long delay = 800;
    struct bs_chunk_id id = origin_id("wait/served.bin");
    struct filler *f = fill_start(id.blob, delay);
    uint64_t t_get = atomic_load(&O.get_ns);
    uint64_t t0 = bs_now_ns();
    enum bs_peer_err rc = fetch_wait(E.cli, &id, 0, 5000, buf, sha, err, sizeof(err));
    double ms = elapsed_ms(t0);
    if (rc != BS_PEER_E_NOTFOUND || ms > delay / 2)
        fail_msg("w=0 during the fill: %s after %.0f ms, notfound at once expected",
                 bs_peer_err_name(rc), ms);
    memset(buf, 0, ORIGIN_SIZE);
    rc = fetch_wait(E.cli, &id, 3000, 3000 + 5000, buf, sha, err, sizeof(err));
    ms = elapsed_ms(t_get);
    printf("# w=3000 on a fill answered by the origin after %ld ms: %s %.0f ms after its GET\n",
           delay, bs_peer_err_name(rc), ms);
    if (rc != BS_PEER_OK)
        fail_msg("w=3000 during the fill: %s: %s", bs_peer_err_name(rc), err);
    assert_memory_equal(buf, O.data, ORIGIN_SIZE);
    assert_memory_equal(sha, O.sha, 32);
    assert_true(ms >= delay && ms < 3000); /* after the fill, not after the wait */
    assert_int_equal(atomic_load(&O.gets), atomic_load(&O.answered));
    assert_true(metric_becomes("blobswarm_peer_uploads", 0));
    assert_int_equal(fill_join(f), BS_CHUNK_FILLED);
    free(buf);
}

/* Waiters hold no upload slot (more of them than slots, and a fetch still gets one), and a
 * waiter that hangs up ends its wait within a slice, long before the fill ends. */
static void test_wait_hangup(void **state)
{
    (void)state;
    char hdr[BS_PEER_HDR_MAX], req[8192], err[256];
    unsigned char sha[32], *buf = malloc(ORIGIN_SIZE);
    const long delay = 3000;
    const int waiters = UPLOADS + 1;
    const char *nf = "blobswarm_peer_errors_total{kind=\"notfound_in\"}";
    struct bs_chunk_id id = origin_id("wait/hangup.bin");
    struct filler *f = fill_start(id.blob, delay);
    uint64_t t_get = atomic_load(&O.get_ns);
    int answered = atomic_load(&O.answered);
    double nf0 = metric(nf);
    char *pq = chunk_pq(&id, CONTAINER, MAX_WAIT_MS);
    int fd[UPLOADS + 1];
    for (int i = 0; i < waiters; i++) {
        fd[i] = connect_port(bs_peersrv_port(E.srv), 0);
        assert_true(fd[i] >= 0);
        sign_pq(&E.secret, "GET", pq, bs_peer_wall_ms(), hdr);
        int n = snprintf(req, sizeof(req),
                         "GET %s HTTP/1.1\r\nHost: x\r\nX-Blobswarm-Peer: %s\r\n\r\n", pq, hdr);
        assert_int_equal(send_all(fd[i], req, (size_t)n), 0);
    }
    sleep_ms(2 * SLICE_MS);
    /* Waiting, and holding no slot: a held chunk is still served at once. */
    assert_true(metric(nf) == nf0);
    assert_true(metric("blobswarm_peer_uploads") == 0);
    enum bs_peer_err rc =
        fetch_with(E.cli, &E.peer, &small_id, SMALL, 1000, buf, SMALL, sha, err, sizeof(err));
    if (rc != BS_PEER_OK)
        fail_msg("with %d waiters (%d upload slots): %s: %s", waiters, UPLOADS,
                 bs_peer_err_name(rc), err);
    for (int i = 0; i < waiters; i++)
        close(fd[i]);
    uint64_t t_hang = bs_now_ns();
    while (metric(nf) < nf0 + waiters && elapsed_ms(t_hang) < WAIT_S * 1000)
        sleep_ms(5);
    double ms = elapsed_ms(t_hang);
    printf("# %d waiters hung up: their waits ended %.0f ms later (slice %d ms), %.0f ms into a "
           "%ld ms fill\n",
           waiters, ms, SLICE_MS, elapsed_ms(t_get), delay);
    assert_true(metric(nf) == nf0 + waiters);
    assert_true(ms < SLICE_MS + 200);
    assert_int_equal(atomic_load(&O.answered), answered); /* the fill is still running */
    assert_true(metric("blobswarm_peer_uploads") == 0);
    /* The fill ends later and its chunk is served. */
    uint64_t end = deadline_in(WAIT_S * 1000);
    while (atomic_load(&O.answered) == answered && bs_now_ns() < end)
        sleep_ms(10);
    fill_join(f);
    rc = fetch_wait(E.cli, &id, 500, 5000, buf, sha, err, sizeof(err));
    if (rc != BS_PEER_OK)
        fail_msg("after the fill: %s: %s", bs_peer_err_name(rc), err);
    assert_memory_equal(buf, O.data, ORIGIN_SIZE);
    free(pq);
    free(buf);
}

/* The client's stall limit does not cut a wait: stall 500 ms, w=2000, the fill ends 1.5 s
 * after the request. A client of its own: its connection has carried no bytes before (a
 * transfer's history must not decide whether a wait survives). */
static void test_wait_longer_than_stall(void **state)
{
    (void)state;
    char err[256];
    unsigned char sha[32], *buf = malloc(ORIGIN_SIZE);
    const long delay = 1500, wait = 2000;
    struct bs_peerclient_opts co = {&E.secret, "node-w", 1, 1000, STALL_MS};
    struct bs_peerclient *c = bs_peerclient_create(&co, err, sizeof(err));
    assert_non_null(c);
    struct bs_chunk_id id = origin_id("wait/stall.bin");
    struct filler *f = fill_start(id.blob, delay);
    uint64_t t_get = atomic_load(&O.get_ns);
    enum bs_peer_err rc = fetch_wait(c, &id, wait, wait + 5000, buf, sha, err, sizeof(err));
    bs_peerclient_destroy(c);
    double ms = elapsed_ms(t_get);
    printf("# w=%ld, stall %ld ms, fill %ld ms: %s %.0f ms after the fill's GET (%s)\n", wait,
           STALL_MS, delay, bs_peer_err_name(rc), ms, rc == BS_PEER_OK ? "" : err);
    if (rc != BS_PEER_OK)
        fail_msg("w=%ld with stall %ld ms on a %ld ms fill: %s: %s", wait, STALL_MS, delay,
                 bs_peer_err_name(rc), err);
    assert_memory_equal(buf, O.data, ORIGIN_SIZE);
    assert_true(ms >= delay);
    fill_join(f);
    free(buf);
}

/* ---- throughput -------------------------------------------------------------------- */

struct bench_thread {
    int fetches;
    int failed;
    unsigned char *buf;
};

static void *bench_main(void *arg)
{
    struct bench_thread *b = arg;
    char err[256];
    unsigned char sha[32];
    for (int i = 0; i < b->fetches; i++) {
        enum bs_peer_err rc =
            fetch_with(E.cli, &E.peer, &big_id, CHUNK, 10000, b->buf, CHUNK, sha, err, sizeof(err));
        if (rc != BS_PEER_OK) {
            fprintf(stderr, "bench fetch: %s: %s\n", bs_peer_err_name(rc), err);
            b->failed++;
        }
    }
    return NULL;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Fetches of the 8 MiB chunk over loopback by `threads` threads; prints MiB/s and the CPU of
 * this process (server and client). Every fetch is verified (record, length, SHA-256). */
static void bench(int threads, int per_thread)
{
    struct bench_thread b[4];
    pthread_t t[4];
    for (int i = 0; i < threads; i++) {
        b[i].fetches = per_thread;
        b[i].failed = 0;
        b[i].buf = malloc(CHUNK);
    }
    double c0 = cpu_s();
    uint64_t t0 = bs_now_ns();
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, bench_main, &b[i]);
    int failed = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        failed += b[i].failed;
    }
    double wall = (double)(bs_now_ns() - t0) / 1e9, cpu = cpu_s() - c0;
    double mib = (double)threads * per_thread * CHUNK / (1 << 20);
    printf("# peer_fetch chunk=8MiB threads=%d fetches=%d MiB/s=%.0f cpu%%=%.0f "
           "cpu_s_per_GiB=%.3f\n",
           threads, threads * per_thread, mib / wall, 100 * cpu / wall, cpu / (mib / 1024));
    for (int i = 0; i < threads; i++) {
        assert_memory_equal(b[i].buf, E.data, CHUNK);
        free(b[i].buf);
    }
    assert_int_equal(failed, 0);
}

static void test_throughput(void **state)
{
    (void)state;
    /* SHA-256 alone (OpenSSL, SHA-NI where the CPU has it): the receiver's check. */
    double c0 = cpu_s();
    unsigned char sha[32];
    for (int i = 0; i < 32; i++)
        EVP_Digest(E.data, CHUNK, sha, NULL, EVP_sha256(), NULL);
    double s = cpu_s() - c0;
    printf("# sha256 alone: %.0f MiB/s, %.3f cpu s per GiB\n", 256 / s, s / 0.25);
    bench(1, 32);
    bench(2, 16);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_fetch),
        cmocka_unit_test(test_auth_refused),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_notfound),
        cmocka_unit_test(test_upload_cap),
        cmocka_unit_test(test_tampering),
        cmocka_unit_test(test_fake_peers),
        cmocka_unit_test(test_dead_and_silent_peers),
        cmocka_unit_test(test_wait_for_fill),
        cmocka_unit_test(test_wait_hangup),
        cmocka_unit_test(test_wait_longer_than_stall),
        cmocka_unit_test(test_throughput),
    };
    const struct CMUnitTest bench_only[] = {cmocka_unit_test(test_throughput)};
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "--bench-only") == 0)
        return cmocka_run_group_tests(bench_only, setup, teardown);
    return cmocka_run_group_tests(all, setup, teardown);
}
