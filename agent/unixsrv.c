/* Unix socket server (see unixsrv.h). Connection threads are detached and counted; a stop
 * flag ends each one between requests, and destroy waits for the count to reach zero. */
#include "unixsrv.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agentproto.h"
#include "fetch.h"
#include "log.h"
#include "metrics.h"
#include "service.h"
#include "store.h"

#define IO_TIMEOUT_NS (10ull * 1000000000ull) /* one frame must arrive within this */
#define IDLE_LIMIT_MS 120000                  /* an idle connection is closed after this */

struct bs_unixsrv {
    int lfd;
    char path[108];
    int max_clients;
    struct bs_service *svc;
    pthread_t acceptor;
    int acceptor_started;
    atomic_int stop;
    pthread_mutex_t lock;
    pthread_cond_t idle;
    int conns; /* connection threads alive */
    int busy;  /* requests being answered */
    struct bs_metric *m_conns, *m_seconds, *m_inflight;
};

struct conn {
    struct bs_unixsrv *u;
    int fd;
};

static const double serve_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                       0.025,  0.05,    0.1,    0.25,  0.5,    1,     5};

static int handle_chunk(struct bs_unixsrv *u, int fd, const char *msg, size_t len)
{
    struct bs_chunk_req *req = malloc(sizeof(*req));
    struct bs_chunk_reply *rep = malloc(sizeof(*rep));
    int rc = -ENOMEM;
    if (!req || !rep)
        goto out;
    char err[150];
    struct bs_chunk_ref *ref = NULL;
    int cfd = -1;
    if (bs_proto_decode_req(msg, len, req, err, sizeof(err)) != 0) {
        memset(rep, 0, sizeof(*rep) - sizeof(rep->crcs));
        rep->status = BS_CHUNK_ERROR;
        snprintf(rep->reason, sizeof(rep->reason), "%s", err);
    } else {
        bs_service_chunk(u->svc, req, rep, &ref);
        if (ref) {
            cfd = bs_chunk_ref_open(ref);
            bs_service_release(u->svc, ref); /* the descriptor keeps the bytes alive */
            if (cfd < 0) {
                rep->status = BS_CHUNK_MISS;
                snprintf(rep->reason, sizeof(rep->reason), "chunk file unavailable");
            }
        }
    }
    char *json = bs_proto_encode_reply(rep);
    rc = json ? bs_proto_send(fd, json, cfd, bs_now_ns() + IO_TIMEOUT_NS) : -ENOMEM;
    free(json);
    if (cfd >= 0)
        close(cfd);
out:
    free(req);
    free(rep);
    return rc;
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    struct bs_unixsrv *u = c->u;
    int idle_ms = 0;
    for (;;) {
        /* Between requests: wake up regularly to notice a stop, and close connections idle
         * for IDLE_LIMIT_MS so that idle clients cannot hold every slot. */
        struct pollfd p = {c->fd, POLLIN, 0};
        int n = poll(&p, 1, 200);
        if (atomic_load(&u->stop))
            break;
        if (n <= 0) {
            if ((idle_ms += 200) >= IDLE_LIMIT_MS)
                break;
            continue;
        }
        idle_ms = 0;
        char *msg = NULL;
        size_t len = 0;
        int rfd = -1;
        if (bs_proto_recv(c->fd, &msg, &len, &rfd, bs_now_ns() + IO_TIMEOUT_NS) != 0)
            break;
        if (rfd >= 0)
            close(rfd); /* clients never send descriptors */
        pthread_mutex_lock(&u->lock);
        u->busy++;
        pthread_mutex_unlock(&u->lock);
        bs_metric_add(u->m_inflight, "unix", 1);
        uint64_t t0 = bs_now_ns();
        char op[16], err[160];
        int rc = bs_proto_decode_op(msg, len, op, sizeof(op), err, sizeof(err));
        if (rc == 0 && strcmp(op, "hello") == 0) {
            struct bs_hello h;
            bs_service_hello(u->svc, &h);
            char *json = bs_proto_encode_hello(&h);
            rc = json ? bs_proto_send(c->fd, json, -1, bs_now_ns() + IO_TIMEOUT_NS) : -ENOMEM;
            free(json);
        } else if (rc == 0 && strcmp(op, "chunk") == 0) {
            rc = handle_chunk(u, c->fd, msg, len);
            bs_metric_observe(u->m_seconds, "unix", (double)(bs_now_ns() - t0) / 1e9);
        } else if (rc == 0 && strcmp(op, "corrupt") == 0) {
            struct bs_chunk_req *req = malloc(sizeof(*req));
            if (req && bs_proto_decode_req(msg, len, req, err, sizeof(err)) == 0)
                bs_service_report_corrupt(u->svc, req);
            free(req);
        } else {
            rc = -EPROTO;
        }
        bs_metric_add(u->m_inflight, "unix", -1);
        free(msg);
        pthread_mutex_lock(&u->lock);
        u->busy--;
        pthread_cond_broadcast(&u->idle);
        pthread_mutex_unlock(&u->lock);
        if (rc)
            break;
    }
    close(c->fd);
    free(c);
    pthread_mutex_lock(&u->lock);
    u->conns--;
    pthread_cond_broadcast(&u->idle);
    pthread_mutex_unlock(&u->lock);
    bs_metric_add(u->m_conns, NULL, -1);
    return NULL;
}

static void *accept_main(void *arg)
{
    struct bs_unixsrv *u = arg;
    while (!atomic_load(&u->stop)) {
        struct pollfd p = {u->lfd, POLLIN, 0};
        if (poll(&p, 1, 200) <= 0)
            continue;
        int fd = accept4(u->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        pthread_mutex_lock(&u->lock);
        int full = u->conns >= u->max_clients;
        if (!full)
            u->conns++;
        pthread_mutex_unlock(&u->lock);
        struct conn *c = full ? NULL : malloc(sizeof(*c));
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        if (c) {
            c->u = u;
            c->fd = fd;
        }
        if (!c || pthread_create(&th, &attr, conn_main, c) != 0) {
            bs_log(BS_LOG_WARN, "unixsrv", "event=connection_refused reason=%s",
                   full ? "max_clients" : "no_thread");
            /* Say so, so the shim reads Azure for now without deeming the agent broken. */
            char *busy = bs_proto_encode_busy();
            if (busy)
                bs_proto_send(fd, busy, -1, bs_now_ns() + 100 * 1000000ull);
            free(busy);
            close(fd);
            free(c);
            if (!full) {
                pthread_mutex_lock(&u->lock);
                u->conns--;
                pthread_mutex_unlock(&u->lock);
            }
        } else {
            bs_metric_add(u->m_conns, NULL, 1);
        }
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

struct bs_unixsrv *bs_unixsrv_create(const char *path, int max_clients, struct bs_service *svc,
                                     struct bs_metrics *metrics, char *err, size_t errsz)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errsz, "socket path too long: %s", path);
        return NULL;
    }
    struct bs_unixsrv *u = calloc(1, sizeof(*u));
    if (!u) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    u->lfd = -1;
    u->max_clients = max_clients;
    u->svc = svc;
    snprintf(u->path, sizeof(u->path), "%s", path);
    pthread_mutex_init(&u->lock, NULL);
    pthread_cond_init(&u->idle, NULL);
    u->m_conns = bs_metrics_gauge(metrics, "blobswarm_agent_unix_connections",
                                  "Open connections on the Unix socket.", NULL);
    u->m_inflight = bs_metrics_gauge(metrics, "blobswarm_agent_inflight_requests",
                                     "Requests being answered, by transport.", "transport");
    u->m_seconds = bs_metrics_histogram(
        metrics, "blobswarm_agent_serve_seconds", "Time to answer one chunk request, by transport.",
        "transport", serve_buckets, sizeof(serve_buckets) / sizeof(serve_buckets[0]));
    memcpy(sa.sun_path, path, strlen(path) + 1);
    u->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (u->lfd < 0)
        goto out_errno;
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path); /* a previous agent's socket */
    if (bind(u->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        goto out_errno;
    chmod(path, 0666);
    if (listen(u->lfd, 512) != 0)
        goto out_errno;
    if (pthread_create(&u->acceptor, NULL, accept_main, u) != 0)
        goto out_errno;
    u->acceptor_started = 1;
    return u;

out_errno:
    snprintf(err, errsz, "unix socket %s: %s", path, strerror(errno));
    bs_unixsrv_destroy(u, 0);
    return NULL;
}

int bs_unixsrv_destroy(struct bs_unixsrv *u, long drain_ms)
{
    if (!u)
        return 0;
    /* Stop taking new connections, let requests in progress finish. */
    if (u->acceptor_started) {
        atomic_store(&u->stop, 1);
        pthread_join(u->acceptor, NULL);
    }
    if (u->lfd >= 0) {
        close(u->lfd);
        unlink(u->path);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)drain_ms * 1000000ull;
    ts.tv_sec += (time_t)(ns / 1000000000ull);
    ts.tv_nsec = (long)(ns % 1000000000ull);
    pthread_mutex_lock(&u->lock);
    atomic_store(&u->stop, 1);
    while (u->conns > 0)
        if (pthread_cond_timedwait(&u->idle, &u->lock, &ts) == ETIMEDOUT)
            break;
    int left = u->conns;
    pthread_mutex_unlock(&u->lock);
    if (left) {
        /* Connections stuck in a request past the drain time: leak rather than free under
         * them; the process is exiting. */
        bs_log(BS_LOG_WARN, "unixsrv", "event=drain_timeout connections=%d", left);
        return left;
    }
    pthread_mutex_destroy(&u->lock);
    pthread_cond_destroy(&u->idle);
    free(u);
    return 0;
}
