/* Unix socket server (see unixsrv.h). Connection threads are detached and counted; a stop
 * flag ends each one between requests, and destroy waits for the count to reach zero. Each
 * connection is charged to its peer (SO_PEERCRED uid, and the peer's cgroup when the agent
 * sees its pid) in a table of at most max_clients peers. */
#include "unixsrv.h"

#include <errno.h>
#include <fcntl.h>
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
#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "service.h"
#include "store.h"

#define BUSY_SEND_MS          100  /* the busy frame fits any fresh socket buffer: never waits */
#define ACCEPT_BACKOFF_MS     50   /* out of descriptors: first pause of the accept loop ... */
#define ACCEPT_BACKOFF_MAX_MS 1000 /* ... doubling up to this */
#define LOG_EVERY_MS          1000 /* refused connections: one log line per this */
#define POLL_MS               200  /* how often an idle connection looks at the clock and stop */

struct peer {
    uint64_t key; /* uid and cgroup, hashed */
    int conns;    /* 0: free entry */
};

struct bs_unixsrv {
    int lfd;
    char path[108];
    struct bs_unixsrv_opts o;
    struct peer *peers; /* o.max_clients entries, under lock */
    struct bs_service *svc;
    pthread_t acceptor;
    int acceptor_started;
    atomic_int stop;
    pthread_mutex_t lock;
    pthread_cond_t idle;
    int conns; /* connection threads alive */
    int busy;  /* requests being answered */
    struct bs_log_limit refused_log;
    struct bs_metric *m_conns, *m_seconds, *m_inflight, *m_refused;
};

struct conn {
    struct bs_unixsrv *u;
    int fd;
    uint64_t peer;
    uint64_t born_ns;
};

static const double serve_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                       0.025,  0.05,    0.1,    0.25,  0.5,    1,     5};

static uint64_t frame_ns(const struct bs_unixsrv *u)
{
    return (uint64_t)u->o.frame_ms * 1000000ull;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ ((const unsigned char *)p)[i]) * 1099511628211ull;
    return h;
}

/* The peer a connection is charged to: its uid, which the peer cannot choose, and, when the
 * agent sees the peer's pid (hostPID), the peer's cgroup, which is its pod: root pods all
 * share uid 0 but not a cgroup. Forking more processes gives neither a new uid nor a new
 * cgroup. Returns 0 or -errno. */
static int peer_key(int fd, uint64_t *key, unsigned *uid_out, int *pid_out)
{
    struct ucred cr;
    socklen_t len = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0)
        return -errno;
    uint64_t h = fnv1a(1469598103934665603ull, &cr.uid, sizeof(cr.uid));
    if (cr.pid > 0) {
        char path[48], buf[1024];
        snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)cr.pid);
        int cfd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (cfd >= 0) {
            ssize_t n = read(cfd, buf, sizeof(buf));
            if (n > 0)
                h = fnv1a(h, buf, (size_t)n);
            close(cfd);
        }
    }
    *key = h;
    *uid_out = (unsigned)cr.uid;
    *pid_out = (int)cr.pid;
    return 0;
}

/* Charges one connection to `key`. Returns 0, or -EBUSY when the peer or the listener is at
 * its limit (reason set). Called under u->lock. */
static int peer_charge_locked(struct bs_unixsrv *u, uint64_t key, const char **reason)
{
    if (u->conns >= u->o.max_clients) {
        *reason = "max_clients";
        return -EBUSY;
    }
    struct peer *mine = NULL, *empty = NULL;
    for (int i = 0; i < u->o.max_clients && !mine; i++) {
        if (u->peers[i].conns > 0 && u->peers[i].key == key)
            mine = &u->peers[i];
        else if (u->peers[i].conns == 0 && !empty)
            empty = &u->peers[i];
    }
    if (mine && mine->conns >= u->o.max_per_peer) {
        *reason = "max_per_peer";
        return -EBUSY;
    }
    if (!mine) { /* conns < max_clients: some entry is free */
        mine = empty;
        mine->key = key;
    }
    mine->conns++;
    u->conns++;
    return 0;
}

static void peer_release_locked(struct bs_unixsrv *u, uint64_t key)
{
    for (int i = 0; i < u->o.max_clients; i++)
        if (u->peers[i].conns > 0 && u->peers[i].key == key) {
            u->peers[i].conns--;
            break;
        }
    u->conns--;
}

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
    rc = json ? bs_proto_send(fd, json, cfd, bs_now_ns() + frame_ns(u)) : -ENOMEM;
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
    uint64_t end_ns = c->born_ns + (uint64_t)u->o.lifetime_ms * 1000000ull;
    uint64_t idle_ns = (uint64_t)u->o.idle_ms * 1000000ull;
    uint64_t last_ns = c->born_ns;
    for (;;) {
        /* Between requests: wake up regularly to notice a stop, and close the connection at
         * the end of its lifetime or after idle_ms without a request, so that no client
         * holds a slot for ever (hellos do not extend the lifetime). */
        uint64_t now = bs_now_ns();
        if (now >= end_ns || now - last_ns >= idle_ns)
            break;
        struct pollfd p = {c->fd, POLLIN, 0};
        int n = poll(&p, 1, POLL_MS);
        if (atomic_load(&u->stop))
            break;
        if (n <= 0)
            continue;
        char *msg = NULL;
        size_t len = 0;
        int rfd = -1;
        if (bs_proto_recv(c->fd, &msg, &len, &rfd, bs_now_ns() + frame_ns(u)) != 0)
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
            rc = json ? bs_proto_send(c->fd, json, -1, bs_now_ns() + frame_ns(u)) : -ENOMEM;
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
        last_ns = bs_now_ns();
    }
    close(c->fd);
    /* Last use of u: once the count drops, bs_unixsrv_destroy may free it. */
    bs_metric_add(u->m_conns, NULL, -1);
    pthread_mutex_lock(&u->lock);
    peer_release_locked(u, c->peer);
    pthread_cond_broadcast(&u->idle);
    pthread_mutex_unlock(&u->lock);
    free(c);
    return NULL;
}

/* Refuses a connection: the codec's busy frame (the shim reads Azure for now without deeming
 * the agent broken), then close. */
static void refuse(struct bs_unixsrv *u, int fd, const char *reason, unsigned uid, int pid)
{
    unsigned long long quiet;
    if (bs_log_threshold >= BS_LOG_WARN && bs_log_allow(&u->refused_log, LOG_EVERY_MS, &quiet))
        bs_log(BS_LOG_WARN, "unixsrv",
               "event=connection_refused reason=%s uid=%u pid=%d not_logged_before=%llu", reason,
               uid, pid, quiet);
    bs_metric_add(u->m_refused, reason, 1);
    char *busy = bs_proto_encode_busy();
    if (busy)
        bs_proto_send(fd, busy, -1, bs_now_ns() + BUSY_SEND_MS * 1000000ull);
    free(busy);
    close(fd);
}

static void *accept_main(void *arg)
{
    struct bs_unixsrv *u = arg;
    long backoff_ms = 0;
    while (!atomic_load(&u->stop)) {
        struct pollfd p = {u->lfd, POLLIN, 0};
        if (poll(&p, 1, POLL_MS) <= 0)
            continue;
        int fd = accept4(u->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors or memory: the pending connection stays in the backlog
                 * and poll would report it at once again. Pause instead of spinning; the
                 * pause doubles while the condition lasts. */
                int e = errno;
                backoff_ms = backoff_ms ? backoff_ms * 2 : ACCEPT_BACKOFF_MS;
                if (backoff_ms > ACCEPT_BACKOFF_MAX_MS)
                    backoff_ms = ACCEPT_BACKOFF_MAX_MS;
                if (backoff_ms == ACCEPT_BACKOFF_MS)
                    bs_log(BS_LOG_WARN, "unixsrv", "event=accept_failed errno=%d msg=\"%s\"", e,
                           strerror(e));
                bs_metric_add(u->m_refused, "no_descriptor", 1);
                struct timespec ts = {backoff_ms / 1000, (backoff_ms % 1000) * 1000000L};
                nanosleep(&ts, NULL);
            }
            continue;
        }
        backoff_ms = 0;
        uint64_t key = 0;
        unsigned uid = 0;
        int pid = 0;
        const char *reason = "no_credentials";
        int rc = peer_key(fd, &key, &uid, &pid);
        if (rc == 0) {
            pthread_mutex_lock(&u->lock);
            rc = peer_charge_locked(u, key, &reason);
            pthread_mutex_unlock(&u->lock);
        }
        if (rc != 0) {
            refuse(u, fd, reason, uid, pid);
            continue;
        }
        struct conn *c = malloc(sizeof(*c));
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        if (c) {
            c->u = u;
            c->fd = fd;
            c->peer = key;
            c->born_ns = bs_now_ns();
        }
        bs_metric_add(u->m_conns, NULL, 1); /* before the thread can take it back */
        if (!c || pthread_create(&th, &attr, conn_main, c) != 0) {
            bs_metric_add(u->m_conns, NULL, -1);
            free(c);
            pthread_mutex_lock(&u->lock);
            peer_release_locked(u, key);
            pthread_mutex_unlock(&u->lock);
            refuse(u, fd, "no_thread", uid, pid);
        }
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

/* Binds the listening socket at u->path with exactly `mode`: bound in a fresh private
 * directory (0700) beside it, chmod'ed there, then renamed into place, so the socket is
 * never reachable with wider permissions. Returns 0 or -errno (message in err). */
static int bind_private(struct bs_unixsrv *u, unsigned mode, char *err, size_t errsz)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char dir[sizeof(sa.sun_path)];
    const char *slash = strrchr(u->path, '/');
    size_t dlen = slash ? (size_t)(slash - u->path) : 0;
    int n = slash ? snprintf(dir, sizeof(dir), "%.*s/.bind.XXXXXX", (int)dlen, u->path)
                  : snprintf(dir, sizeof(dir), ".bind.XXXXXX");
    if (n < 0 || (size_t)n + 3 > sizeof(sa.sun_path)) {
        snprintf(err, errsz, "socket path too long (at most %zu bytes): %s",
                 sizeof(sa.sun_path) - 16, u->path);
        return -ENAMETOOLONG;
    }
    struct stat st;
    if (lstat(u->path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
        snprintf(err, errsz, "%s exists and is not a socket", u->path);
        return -EEXIST;
    }
    if (!mkdtemp(dir)) {
        int e = errno;
        snprintf(err, errsz, "cannot create a private directory beside %s: %s", u->path,
                 strerror(e));
        return -e;
    }
    size_t dl = strlen(dir); /* + "/s" fits: checked above */
    memcpy(sa.sun_path, dir, dl);
    memcpy(sa.sun_path + dl, "/s", 3);
    int rc = 0;
    if (bind(u->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || chmod(sa.sun_path, mode) != 0 ||
        rename(sa.sun_path, u->path) != 0) {
        rc = -errno;
        snprintf(err, errsz, "unix socket %s: %s", u->path, strerror(errno));
        unlink(sa.sun_path);
    }
    rmdir(dir);
    return rc;
}

struct bs_unixsrv *bs_unixsrv_create(const struct bs_unixsrv_opts *o, struct bs_service *svc,
                                     struct bs_metrics *metrics, char *err, size_t errsz)
{
    if (strlen(o->path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(err, errsz, "socket path too long: %s", o->path);
        return NULL;
    }
    struct bs_unixsrv *u = calloc(1, sizeof(*u));
    if (!u) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    u->lfd = -1;
    u->o = *o;
    u->o.path = NULL; /* kept in u->path */
    u->svc = svc;
    snprintf(u->path, sizeof(u->path), "%s", o->path);
    pthread_mutex_init(&u->lock, NULL);
    bs_cond_init(&u->idle);
    u->m_conns = bs_metrics_gauge(metrics, "blobswarm_agent_unix_connections",
                                  "Open connections on the Unix socket.", NULL);
    u->m_inflight = bs_metrics_gauge(metrics, "blobswarm_agent_inflight_requests",
                                     "Requests being answered, by transport.", "transport");
    u->m_seconds = bs_metrics_histogram(
        metrics, "blobswarm_agent_serve_seconds", "Time to answer one chunk request, by transport.",
        "transport", serve_buckets, sizeof(serve_buckets) / sizeof(serve_buckets[0]));
    u->m_refused =
        bs_metrics_counter(metrics, "blobswarm_agent_unix_refused_total",
                           "Unix socket connections refused or not accepted, by reason.", "reason");
    u->peers = calloc((size_t)o->max_clients, sizeof(*u->peers));
    if (!u->peers) {
        snprintf(err, errsz, "out of memory");
        goto out_free;
    }
    u->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (u->lfd < 0) {
        snprintf(err, errsz, "unix socket: %s", strerror(errno));
        goto out_free;
    }
    if (bind_private(u, o->mode, err, errsz) != 0)
        goto out_free;
    if (listen(u->lfd, 512) != 0 || pthread_create(&u->acceptor, NULL, accept_main, u) != 0) {
        snprintf(err, errsz, "unix socket %s: %s", u->path, strerror(errno));
        goto out_unlink;
    }
    u->acceptor_started = 1;
    return u;

out_unlink:
    unlink(u->path);
out_free:
    if (u->lfd >= 0)
        close(u->lfd);
    pthread_mutex_destroy(&u->lock);
    pthread_cond_destroy(&u->idle);
    free(u->peers);
    free(u);
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
    uint64_t end_ns = bs_now_ns() + (uint64_t)drain_ms * BS_NS_PER_MS;
    pthread_mutex_lock(&u->lock);
    atomic_store(&u->stop, 1);
    while (u->conns > 0)
        if (bs_cond_wait_until(&u->idle, &u->lock, end_ns) == ETIMEDOUT)
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
    free(u->peers);
    free(u);
    return 0;
}
