/* Chunk service (see service.h). Fills run on a fixed pool of workers fed by bounded
 * per-tenant FIFOs, taken round-robin; a tenant exists while it has fills queued or running.
 * A map of fills in progress makes concurrent requests for one chunk wait for one origin
 * fetch. A job is reference-counted by its worker and its waiters; the last one frees it. */
#include "service.h"

#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "azcred.h"
#include "blobreader.h"
#include "chunkio.h"
#include "clock.h"
#include "fetch.h"
#include "grants.h"
#include "log.h"
#include "metrics.h"
#include "names.h"
#include "peerclient.h"
#include "redisidx.h"
#include "store.h"

#define MAX_CHUNK_INDEX (1ull << 40)

struct tenant;

struct fill_job {
    struct fill_job *next; /* its tenant's queue */
    struct tenant *tenant;
    struct fill_job *hnext; /* in-progress map */
    char endpoint[1024], container[80], blob[1100], etag[128];
    uint64_t index, start, len;
    struct bs_azcred *cred;
    int refs;
    int done;
    int rc;
    char err[256];
    pthread_cond_t cv;
    uint64_t created_ns;
    struct ra_plan *plan; /* read-ahead job of this plan (NULL: a caller's) */
    _Atomic int prefetch; /* read-ahead nobody waits for: it skips chunks under a lease */
    int deferred;         /* a read-ahead that skipped its chunk (lease held elsewhere) */
    const char *source;   /* where the bytes came from: "origin" or "peer" */
};

/* Read-ahead of one blob version: chunks (start + pos) mod nchunks, two passes (the second
 * takes what the first skipped because another agent held its lease). */
struct ra_plan {
    struct ra_plan *next;
    char endpoint[1024], container[80], blob[1100], etag[128];
    struct bs_delegation auth; /* the first caller's delegated credential (grant checked) */
    int64_t cred_exp;          /* Unix seconds, 0: none */
    uint64_t size, nchunks, start, pos;
    int passes, running;
};

/* A storage endpoint with fills queued or running (freed when it has none). */
struct tenant {
    struct tenant *next;
    struct fill_job *qhead, *qtail;
    int queued, running;
    char endpoint[1024];
};

#define MAP_BUCKETS          256
#define MAX_PLANS            32 /* blob versions read ahead at once */
#define MAX_PLANS_PER_TENANT 8  /* of which one storage endpoint may have */
#define RA_PASSES            2
#define MAX_CHECKS           256 /* concurrent distinct access checks that are single-flighted */

struct bs_service {
    struct bs_service_opts o;
    char *patterns;
    struct bs_store *store;
    struct bs_blobreader *reader;
    struct bs_blobreader *check_reader;
    struct bs_grants *grants;

    struct bs_log_limit refused_log;
    pthread_mutex_t lock; /* queue, map, jobs' refs/done, stop */
    pthread_cond_t work_cv;
    struct tenant *tenants; /* with fills queued or running */
    struct tenant *turn;    /* the tenant whose turn is next (NULL: the first) */
    int queued;
    int running; /* fills a worker is doing */
    struct {
        unsigned char key[32];
        int used;
    } checking[MAX_CHECKS]; /* grants being verified right now */
    pthread_cond_t check_cv;
    pthread_mutex_t verify_lock; /* one corruption report verified at a time */
    struct fill_job *map[MAP_BUCKETS];
    struct bs_service_peers p;
    struct ra_plan *plans;
    int nplans, ra_running;
    uint64_t planned_bytes; /* sizes of the plans: at most half of the store budget */
    uint64_t last_fill_ns;  /* the last fill that ended well (monotonic) */
    int draining;           /* bs_service_stop: waits on other agents end; workers stay */
    int stop;
    pthread_t *workers;
    int nworkers;

    struct bs_metric *m_requests, *m_served, *m_origin_fetches, *m_origin_bytes, *m_errors,
        *m_fill_seconds, *m_lookups, *m_grants_checked, *m_fill_queue, *m_refusals, *m_peer_errors,
        *m_lease_waits, *m_peer_bytes_in, *m_readahead;
};

static const double fill_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

static int match_glob(const char *p, const char *s)
{
    for (; *p; p++, s++) {
        if (*p == '*') {
            const char *t = s;
            while ((*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z') ||
                   (*t >= '0' && *t <= '9') || *t == '-')
                t++;
            if (t == s)
                return 0;
            /* '*' is greedy over its class; the class never contains the next literal. */
            s = t - 1;
            continue;
        }
        if (*p != *s)
            return 0;
    }
    return *s == '\0';
}

int bs_endpoint_allowed(const char *patterns, const char *endpoint, const char *account)
{
    if (!patterns || !endpoint || !account || !*account || !bs_name_endpoint_canonical(endpoint))
        return 0;
    /* The endpoint must name the account: https://<account>.host or http://host/<account>. */
    const char *host = strstr(endpoint, "://");
    if (!host)
        return 0;
    host += 3;
    size_t alen = strlen(account);
    const char *slash = strchr(host, '/');
    int names = (strncmp(host, account, alen) == 0 && host[alen] == '.' && !slash) ||
                (slash && strncmp(slash + 1, account, alen) == 0 && slash[1 + alen] == '\0');
    if (!names)
        return 0;
    const char *p = patterns;
    while (*p) {
        size_t n = strcspn(p, ",");
        char pat[512];
        if (n > 0 && n < sizeof(pat)) {
            memcpy(pat, p, n);
            pat[n] = '\0';
            char *b = pat, *e = pat + n;
            while (*b == ' ')
                b++;
            while (e > b && e[-1] == ' ')
                *--e = '\0';
            if (*b && match_glob(b, endpoint))
                return 1;
        }
        p += n + (p[n] == ',');
    }
    return 0;
}

static size_t job_bucket(const char *endpoint, const char *container, const char *blob,
                         const char *etag, uint64_t index)
{
    uint64_t h = 1469598103934665603ull ^ index;
    const char *parts[4] = {endpoint, container, blob, etag};
    for (int i = 0; i < 4; i++)
        for (const char *c = parts[i]; *c; c++)
            h = (h ^ (unsigned char)*c) * 1099511628211ull;
    return (size_t)(h % MAP_BUCKETS);
}

static void job_unref_locked(struct fill_job *j)
{
    if (--j->refs > 0)
        return;
    bs_azcred_destroy(j->cred);
    pthread_cond_destroy(&j->cv);
    free(j);
}

#define KEY_ACCOUNT_MAX 1100

/* The store's "account" field is the endpoint URL, which names the account unambiguously,
 * and the grid: chunk i of an 8 MiB grid is other bytes than chunk i of a 4 MiB one, so a
 * store reused with another BLOBSWARM_CHUNK_BYTES never serves a chunk of the old grid. */
static void chunk_key(struct bs_chunk_key *k, char acct[KEY_ACCOUNT_MAX], uint64_t chunk_size,
                      const char *endpoint, const char *container, const char *blob,
                      const char *etag, uint64_t index)
{
    snprintf(acct, KEY_ACCOUNT_MAX, "%s#grid=%llu", endpoint, (unsigned long long)chunk_size);
    k->account = acct;
    k->container = container;
    k->blob = blob;
    k->etag = etag;
    k->index = index;
}

/* Reads the chunk from Azure into buf and stores it; `reason` labels the origin fetch. */
static int fill_origin(struct bs_service *s, struct fill_job *j, char *buf, const char *reason,
                       char *err, size_t errsz)
{
    uint64_t t0 = bs_now_ns();
    const char *account = strrchr(j->endpoint, '/'); /* only for messages */
    int rc =
        bs_blobreader_read_version(s->reader, j->cred, account ? account + 1 : "", j->container,
                                   j->blob, j->etag, buf, j->start, (size_t)j->len, err, errsz);
    if (rc == 0) {
        bs_metric_add(s->m_origin_fetches, reason, 1);
        bs_metric_add(s->m_origin_bytes, NULL, (double)j->len);
        struct bs_chunk_key k;
        char acct[KEY_ACCOUNT_MAX];
        chunk_key(&k, acct, s->o.chunk_size, j->endpoint, j->container, j->blob, j->etag, j->index);
        rc = bs_store_put(s->store, &k, buf, (size_t)j->len, err, errsz);
        if (rc == -EEXIST)
            rc = 0;
        if (rc)
            bs_metric_add(s->m_errors, "store_put", 1);
        j->source = "origin";
    } else {
        bs_metric_add(s->m_errors, "origin", 1);
    }
    bs_metric_observe(s->m_fill_seconds, NULL, (double)(bs_now_ns() - t0) / 1e9);
    return rc;
}

/* Fetches the chunk from peer p (asking it to wait up to wait_ms for a fill of its own) and
 * stores it with the digest the peer's authenticated record vouches for. */
static enum bs_peer_err fill_peer(struct bs_service *s, struct fill_job *j, const char *tag,
                                  const struct bs_peer *p, long wait_ms, uint64_t end_ns, char *buf,
                                  char *err, size_t errsz)
{
    struct bs_chunk_key k;
    char acct[KEY_ACCOUNT_MAX];
    chunk_key(&k, acct, s->o.chunk_size, j->endpoint, j->container, j->blob, j->etag, j->index);
    struct bs_chunk_id id = {acct, j->container, j->blob, j->etag, j->index};
    unsigned char digest[32];
    char perr[200];
    /* A fetch that moves may take until the fill's end: links are shared by many transfers
     * and a fixed limit cut slow but healthy ones (8 nodes over 200 Mbit/s links read 2x the
     * model from Azure). One that stops moving for half of PEER_TIMEOUT_MS (the client's
     * stall limit) is dropped and the next holder tried. */
    uint64_t deadline = end_ns;
    enum bs_peer_err e = bs_peerclient_fetch(s->p.client, p, &id, j->len, wait_ms, deadline, buf,
                                             s->o.chunk_size, digest, perr, sizeof(perr));
    if (e != BS_PEER_OK) {
        bs_metric_add(s->m_peer_errors, bs_peer_err_name(e), 1);
        char why[220];
        bs_name_escape(perr, why, sizeof(why));
        bs_log(BS_LOG_DEBUG, "service",
               "event=peer_failed peer=%s kind=%s chunk=%llu detail=\"%s\"", p->node,
               bs_peer_err_name(e), (unsigned long long)j->index, why);
        snprintf(err, errsz, "peer %s: %s", p->node, bs_peer_err_name(e));
        return e;
    }
    bs_metric_add(s->m_peer_bytes_in, NULL, (double)j->len);
    int rc = bs_store_put_digest(s->store, &k, buf, (size_t)j->len, digest, err, errsz);
    if (rc != 0 && rc != -EEXIST) {
        bs_metric_add(s->m_errors, "store_put", 1);
        return BS_PEER_E_HTTP; /* not the peer's fault, but nothing is stored */
    }
    j->source = "peer";
    bs_redisidx_announce(s->p.idx, tag, j->index);
    return BS_PEER_OK;
}

static int stopping(struct bs_service *s)
{
    pthread_mutex_lock(&s->lock);
    int stop = s->stop || s->draining;
    pthread_mutex_unlock(&s->lock);
    return stop;
}

/* Waits ms (bounded by end_ns) unless the service stops. */
static void pause_ms(struct bs_service *s, long ms, uint64_t end_ns)
{
    uint64_t until = bs_now_ns() + (uint64_t)ms * 1000000ull;
    if (until > end_ns)
        until = end_ns;
    pthread_mutex_lock(&s->lock);
    while (!s->stop && !s->draining && bs_cond_wait_until(&s->work_cv, &s->lock, until) == 0)
        ;
    pthread_mutex_unlock(&s->lock);
}

#define FILL_ROUNDS    64  /* decisions per fill before it reads Azure whatever Redis says */
#define BACKOFF_MS     50  /* first pause after a busy peer; doubles up to 1.6 s */
#define LEASE_SLACK_MS 250 /* a lessee is asked to wait this much past its lease */

/* Where a missing chunk comes from. Standalone: Azure. In a cluster, one decision in Redis:
 * a holder (tried in turn, starting at a place that differs per chunk, so that load spreads
 * over holders; a dead or empty one is forgotten), else the lease (won: read Azure, then
 * announce; held by another: ask that agent, which waits for its fill), else Azure. */
static int fill_one(struct bs_service *s, struct fill_job *j, char *buf, char *err, size_t errsz)
{
    if (!s->p.idx)
        return fill_origin(s, j, buf, "no_holder", err, errsz);
    struct bs_chunk_key k;
    char acct[KEY_ACCOUNT_MAX], tag[BS_IDX_TAG_LEN + 1];
    chunk_key(&k, acct, s->o.chunk_size, j->endpoint, j->container, j->blob, j->etag, j->index);
    bs_redisidx_tag(acct, j->container, j->blob, j->etag, tag);
    /* The fill's end: waits on others, then one last peer fetch's worth. */
    uint64_t end_ns =
        bs_now_ns() + (uint64_t)(s->p.lease_wait_ms + s->p.peer_timeout_ms) * 1000000ull;
    const char *reason = "lease_timeout";
    int busy_rounds = 0;
    for (int round = 0; round < FILL_ROUNDS && !stopping(s) && bs_now_ns() < end_ns; round++) {
        struct bs_idx_result r;
        enum bs_idx_decision d = bs_redisidx_decide(s->p.idx, tag, j->index, &r);
        if (d == BS_IDX_DOWN)
            return fill_origin(s, j, buf, "redis_down", err, errsz);
        if (d == BS_IDX_LEASE_WON) {
            int rc = fill_origin(s, j, buf, "lease_won", err, errsz);
            if (rc == 0)
                bs_redisidx_announce(s->p.idx, tag, j->index);
            else
                bs_redisidx_release(s->p.idx, tag, j->index);
            return rc;
        }
        /* A busy peer (at its upload cap) or download slots all taken here is not a reason
         * to read Azure again: pause (50 ms doubling) and decide again. */
        long backoff = BACKOFF_MS << (busy_rounds < 5 ? busy_rounds : 5);
        if (d == BS_IDX_HOLDERS) {
            int busy = 0;
            for (int h = 0; h < r.nholders; h++) {
                const struct bs_peer *p =
                    &r.holders[(h + (int)(j->index % (uint64_t)r.nholders)) % r.nholders];
                if (bs_now_ns() >= end_ns)
                    break;
                enum bs_peer_err e = fill_peer(s, j, tag, p, 0, end_ns, buf, err, errsz);
                if (e == BS_PEER_OK)
                    return 0;
                /* Gone, without the chunk, or serving bytes that are not it: not a holder. */
                if (e == BS_PEER_E_CONNECT || e == BS_PEER_E_NOTFOUND || e == BS_PEER_E_DIGEST ||
                    e == BS_PEER_E_RECORD)
                    bs_redisidx_forget(s->p.idx, tag, j->index, p);
                busy += e == BS_PEER_E_BUSY || e == BS_PEER_E_LIMIT;
            }
            if (!busy) {
                reason = "peer_failed";
                break;
            }
            busy_rounds++;
            pause_ms(s, backoff, end_ns);
            continue;
        }
        /* BS_IDX_LEASE_HELD: another agent is reading it from Azure. */
        if (atomic_load(&j->prefetch)) {
            j->deferred = 1;
            snprintf(err, errsz, "read-ahead skipped: another agent is filling it");
            return -EAGAIN;
        }
        uint64_t now = bs_now_ns();
        long left = now < end_ns ? (long)((end_ns - now) / 1000000ull) : 0;
        long wait =
            r.lease_left_ms + LEASE_SLACK_MS < left ? r.lease_left_ms + LEASE_SLACK_MS : left;
        enum bs_peer_err e = fill_peer(s, j, tag, &r.lessee, wait, end_ns, buf, err, errsz);
        bs_metric_add(s->m_lease_waits,
                      e == BS_PEER_OK           ? "served"
                      : e == BS_PEER_E_CONNECT  ? "lessee_gone"
                      : e == BS_PEER_E_NOTFOUND ? "lessee_failed"
                                                : "lessee_error",
                      1);
        if (e == BS_PEER_OK)
            return 0;
        if (e == BS_PEER_E_CONNECT) { /* the lessee is gone: break its lease, decide again */
            bs_redisidx_break_lease(s->p.idx, tag, j->index, &r.lessee);
        } else if (e != BS_PEER_E_NOTFOUND) {
            busy_rounds++;
            pause_ms(s, backoff, end_ns);
        }
    }
    if (stopping(s)) {
        snprintf(err, errsz, "agent stopping");
        return -ESHUTDOWN;
    }
    int rc = fill_origin(s, j, buf, reason, err, errsz);
    if (rc == 0)
        bs_redisidx_announce(s->p.idx, tag, j->index);
    return rc;
}

/* The next job to run: round-robin over the tenants from `turn`, skipping tenants at their
 * running cap. NULL when none may run now. Under s->lock. */
static struct fill_job *take_job_locked(struct bs_service *s)
{
    struct tenant *start = s->turn ? s->turn : s->tenants;
    struct tenant *t = start;
    if (!t)
        return NULL;
    do {
        if (t->qhead && t->running < s->o.tenant_workers) {
            struct fill_job *j = t->qhead;
            t->qhead = j->next;
            if (!t->qhead)
                t->qtail = NULL;
            t->queued--;
            t->running++;
            s->queued--;
            s->running++;
            s->turn = t->next; /* the next tenant goes first next time */
            return j;
        }
        t = t->next ? t->next : s->tenants;
    } while (t != start);
    return NULL;
}

/* The in-progress fill of a chunk, or NULL. Under s->lock. */
static struct fill_job *find_job_locked(struct bs_service *s, const char *endpoint,
                                        const char *container, const char *blob, const char *etag,
                                        uint64_t index)
{
    struct fill_job *j = s->map[job_bucket(endpoint, container, blob, etag, index)];
    while (j && !(j->index == index && strcmp(j->etag, etag) == 0 && strcmp(j->blob, blob) == 0 &&
                  strcmp(j->container, container) == 0 && strcmp(j->endpoint, endpoint) == 0))
        j = j->hnext;
    return j;
}

static void plan_free_locked(struct bs_service *s, struct ra_plan *pl)
{
    for (struct ra_plan **pp = &s->plans; *pp; pp = &(*pp)->next)
        if (*pp == pl) {
            *pp = pl->next;
            break;
        }
    s->nplans--;
    s->planned_bytes -= pl->size;
    explicit_bzero(&pl->auth, sizeof(pl->auth));
    free(pl);
}

/* The next read-ahead job: the first plan with a chunk neither held nor being filled, plans
 * taken in turn. NULL when there is none or read-ahead is at its share of the workers.
 * Under s->lock. */
static struct fill_job *take_readahead_locked(struct bs_service *s)
{
    if (!s->plans || s->ra_running >= s->p.readahead_workers || s->draining)
        return NULL;
    int64_t now_s = (int64_t)time(NULL);
    for (int tries = 0; tries < s->nplans && s->plans; tries++) {
        struct ra_plan *pl = s->plans;
        /* Round-robin: this plan goes to the back. */
        if (pl->next) {
            s->plans = pl->next;
            struct ra_plan *t = s->plans;
            while (t->next)
                t = t->next;
            t->next = pl;
            pl->next = NULL;
        }
        int expired = pl->cred_exp > 0 && pl->cred_exp <= now_s + 5;
        for (int scanned = 0; !expired && pl->passes < RA_PASSES && scanned < 64; scanned++) {
            uint64_t c = (pl->start + pl->pos) % pl->nchunks;
            if (++pl->pos == pl->nchunks) {
                pl->pos = 0;
                pl->passes++;
            }
            if (find_job_locked(s, pl->endpoint, pl->container, pl->blob, pl->etag, c))
                continue;
            struct bs_chunk_key k;
            char acct[KEY_ACCOUNT_MAX];
            chunk_key(&k, acct, s->o.chunk_size, pl->endpoint, pl->container, pl->blob, pl->etag,
                      c);
            struct bs_chunk_ref *ref;
            if (bs_store_get(s->store, &k, &ref) == 0) {
                bs_store_release(s->store, ref);
                continue;
            }
            struct fill_job *j = calloc(1, sizeof(*j));
            char cerr[160];
            if (j)
                j->cred = bs_azcred_from_delegation(&pl->auth, cerr, sizeof(cerr));
            if (!j || !j->cred) {
                free(j);
                return NULL;
            }
            snprintf(j->endpoint, sizeof(j->endpoint), "%s", pl->endpoint);
            snprintf(j->container, sizeof(j->container), "%s", pl->container);
            snprintf(j->blob, sizeof(j->blob), "%s", pl->blob);
            snprintf(j->etag, sizeof(j->etag), "%s", pl->etag);
            j->index = c;
            j->start = c * s->o.chunk_size;
            j->len = pl->size - j->start < s->o.chunk_size ? pl->size - j->start : s->o.chunk_size;
            j->refs = 1;
            j->plan = pl;
            /* The first pass skips chunks another agent is filling; the second waits. */
            atomic_store(&j->prefetch, pl->passes == 0 ? 1 : 0);
            j->created_ns = bs_now_ns();
            bs_cond_init(&j->cv);
            size_t b = job_bucket(j->endpoint, j->container, j->blob, j->etag, c);
            j->hnext = s->map[b];
            s->map[b] = j;
            pl->running++;
            s->ra_running++;
            s->running++;
            return j;
        }
        if ((expired || pl->passes >= RA_PASSES) && pl->running == 0)
            plan_free_locked(s, pl);
    }
    return NULL;
}

/* Frees a tenant without fills. Under s->lock. */
static void tenant_put_locked(struct bs_service *s, struct tenant *t)
{
    if (t->queued || t->running)
        return;
    for (struct tenant **pp = &s->tenants; *pp; pp = &(*pp)->next)
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    if (s->turn == t)
        s->turn = t->next;
    free(t);
}

static void *worker_main(void *arg)
{
    struct bs_service *s = arg;
    /* One chunk buffer per worker for its whole life: fill memory is bounded by workers x
     * chunk size, and a fill does not pay page faults on a fresh buffer. */
    char *buf = malloc(s->o.chunk_size);
    pthread_mutex_lock(&s->lock);
    for (;;) {
        struct fill_job *j = NULL;
        while (!s->stop && !(j = take_job_locked(s)) && !(j = take_readahead_locked(s)))
            pthread_cond_wait(&s->work_cv, &s->lock);
        if (s->stop)
            break; /* j is NULL: the queued jobs stay for destroy to fail */
        bs_metric_set(s->m_fill_queue, NULL, s->queued);
        pthread_mutex_unlock(&s->lock);

        char err[256] = "out of memory for a chunk buffer";
        int rc = buf ? fill_one(s, j, buf, err, sizeof(err)) : -ENOMEM;

        pthread_mutex_lock(&s->lock);
        s->running--;
        if (j->tenant) {
            j->tenant->running--;
            tenant_put_locked(s, j->tenant);
            j->tenant = NULL;
        }
        if (j->plan) {
            j->plan->running--;
            s->ra_running--;
            bs_metric_add(s->m_readahead,
                          rc == 0       ? "filled"
                          : j->deferred ? "deferred"
                                        : "failed",
                          1);
            j->plan = NULL;
        }
        if (rc == 0)
            s->last_fill_ns = bs_now_ns();
        /* A tenant at its cap may have work again, and another worker may be waiting. */
        pthread_cond_broadcast(&s->work_cv);
        j->rc = rc;
        snprintf(j->err, sizeof(j->err), "%s", err);
        j->done = 1;
        size_t b = job_bucket(j->endpoint, j->container, j->blob, j->etag, j->index);
        for (struct fill_job **pp = &s->map[b]; *pp; pp = &(*pp)->hnext)
            if (*pp == j) {
                *pp = j->hnext;
                break;
            }
        pthread_cond_broadcast(&j->cv);
        job_unref_locked(j);
    }
    pthread_mutex_unlock(&s->lock);
    free(buf);
    return NULL;
}

/* Starts (or joins) the fill of one chunk and waits for it until wait_end_ns (absolute,
 * monotonic). Returns 0 when the chunk is in the store, -ETIMEDOUT, -EAGAIN (queue full) or
 * the fill's error (message in err). The fill goes on after a timeout. */
static int fill_and_wait(struct bs_service *s, const struct bs_delegation *auth,
                         const struct bs_chunk_req *req, const char *etag, uint64_t start,
                         uint64_t len, uint64_t wait_end_ns, int *moving, const char **source,
                         char *err, size_t errsz)
{
    size_t b = job_bucket(auth->endpoint, req->container, req->blob, etag, req->chunk);
    *moving = 0;
    *source = "origin";
    pthread_mutex_lock(&s->lock);
    struct fill_job *j =
        find_job_locked(s, auth->endpoint, req->container, req->blob, etag, req->chunk);
    if (j && j->done == 0)
        atomic_store(&j->prefetch, 0); /* a caller waits for it now: it must not skip */
    if (!j) {
        struct tenant *t = s->tenants;
        while (t && strcmp(t->endpoint, auth->endpoint) != 0)
            t = t->next;
        const char *full = s->stop                               ? "agent stopping"
                           : s->queued >= s->o.fill_queue        ? "fill queue full"
                           : t && t->queued >= s->o.tenant_queue ? "tenant's fill queue full"
                                                                 : NULL;
        if (full) {
            pthread_mutex_unlock(&s->lock);
            snprintf(err, errsz, "%s", full);
            bs_metric_add(s->m_errors,
                          t && !s->stop && s->queued < s->o.fill_queue ? "tenant_queue_full"
                                                                       : "fill_queue_full",
                          1);
            return -EAGAIN;
        }
        int new_tenant = !t;
        if (new_tenant) {
            t = calloc(1, sizeof(*t));
            if (t)
                snprintf(t->endpoint, sizeof(t->endpoint), "%s", auth->endpoint);
        }
        j = t ? calloc(1, sizeof(*j)) : NULL;
        char cerr[160];
        if (j)
            j->cred = bs_azcred_from_delegation(auth, cerr, sizeof(cerr));
        if (!j || !j->cred) {
            free(j);
            if (new_tenant)
                free(t);
            pthread_mutex_unlock(&s->lock);
            snprintf(err, errsz, "out of memory");
            return -ENOMEM;
        }
        if (new_tenant) {
            t->next = s->tenants;
            s->tenants = t;
        }
        snprintf(j->endpoint, sizeof(j->endpoint), "%s", auth->endpoint);
        snprintf(j->container, sizeof(j->container), "%s", req->container);
        snprintf(j->blob, sizeof(j->blob), "%s", req->blob);
        snprintf(j->etag, sizeof(j->etag), "%s", etag);
        j->index = req->chunk;
        j->start = start;
        j->len = len;
        j->refs = 1; /* the worker's */
        j->tenant = t;
        j->created_ns = bs_now_ns();
        bs_cond_init(&j->cv);
        j->hnext = s->map[b];
        s->map[b] = j;
        if (t->qtail)
            t->qtail->next = j;
        else
            t->qhead = j;
        t->qtail = j;
        t->queued++;
        s->queued++;
        bs_metric_set(s->m_fill_queue, NULL, s->queued);
        pthread_cond_signal(&s->work_cv);
    }
    j->refs++;
    int rc = 0;
    while (!j->done && rc == 0)
        rc = bs_cond_wait_until(&j->cv, &s->lock, wait_end_ns);
    if (j->done) {
        rc = j->rc;
        if (rc)
            snprintf(err, errsz, "%s", j->err);
        else if (j->source)
            *source = j->source;
        if (rc && j->deferred)
            rc = -EINPROGRESS; /* a read-ahead skipped it before we came: the caller retries */
    } else {
        /* Moving: some fill ended well lately, or this one is young. */
        uint64_t now = bs_now_ns(), stall = (uint64_t)s->o.fill_stall_ms * 1000000ull;
        uint64_t last = s->last_fill_ns > j->created_ns ? s->last_fill_ns : j->created_ns;
        *moving = now - last < stall;
        rc = -ETIMEDOUT;
        snprintf(err, errsz, "fill did not finish in time (fill wait %ld ms, answer %ld ms)",
                 s->o.fill_wait_ms, s->o.answer_ms);
    }
    job_unref_locked(j);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static void reply(struct bs_chunk_reply *rep, enum bs_chunk_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void reply(struct bs_chunk_reply *rep, enum bs_chunk_status st, const char *fmt, ...)
{
    rep->status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->reason, sizeof(rep->reason), fmt, ap);
    va_end(ap);
}

/* Refuses a request: the reply, one warn line (names escaped, never a secret) and the count
 * by reason. */
static void refuse(struct bs_service *s, const struct bs_chunk_req *req, struct bs_chunk_reply *rep,
                   enum bs_chunk_status st, const char *reason, const char *detail)
{
    reply(rep, st, "%s", detail);
    bs_metric_add(s->m_refusals, reason, 1);
    /* Any caller can trigger refusals at will: at most one line a second (the metric counts
     * every one), formatted only when it is written. */
    unsigned long long quiet;
    if (bs_log_threshold < BS_LOG_WARN || !bs_log_allow(&s->refused_log, 1000, &quiet))
        return;
    char blob[300], container[100], account[40], why[200];
    bs_name_escape(req->blob, blob, sizeof(blob));
    bs_name_escape(req->container, container, sizeof(container));
    bs_name_escape(req->account, account, sizeof(account));
    bs_name_escape(detail, why, sizeof(why));
    bs_log(BS_LOG_WARN, "service",
           "event=refused reason=%s account=\"%s\" container=\"%s\" blob=\"%s\" detail=\"%s\" "
           "not_logged_before=%llu",
           reason, account, container, blob, why, quiet);
}

/* Everything that can be decided without Azure: names, endpoint, credential form and
 * expiry. Returns 0 with *cred_exp (Unix seconds, 0: none of its own), or 1 with rep filled. */
static int check_request(struct bs_service *s, const struct bs_chunk_req *req, int64_t *cred_exp,
                         struct bs_chunk_reply *rep)
{
    const struct bs_delegation *auth = &req->auth;
    char err[200];
    const char *bad = bs_name_blob_problem(req->blob);
    if (!bs_name_account_ok(req->account) || !bs_name_container_ok(req->container) || bad ||
        req->chunk > MAX_CHUNK_INDEX) {
        snprintf(err, sizeof(err), "invalid account, container, blob or chunk index%s%s",
                 bad ? ": " : "", bad ? bad : "");
        refuse(s, req, rep, BS_CHUNK_ERROR, "bad_name", err);
        return 1;
    }
    if (strcmp(auth->account, req->account) != 0 ||
        !bs_endpoint_allowed(s->patterns, auth->endpoint, req->account)) {
        snprintf(err, sizeof(err), "endpoint not allowed for account %s%s", req->account,
                 bs_name_endpoint_canonical(auth->endpoint)
                     ? ""
                     : " (not in canonical form: lower case, no default port, no leading zeros)");
        bs_metric_add(s->m_errors, "endpoint_not_allowed", 1);
        refuse(s, req, rep, BS_CHUNK_ERROR, "endpoint_not_allowed", err);
        return 1;
    }
    if (auth->kind != BS_AUTH_SAS && auth->kind != BS_AUTH_BEARER &&
        auth->kind != BS_AUTH_ANONYMOUS) {
        refuse(s, req, rep, BS_CHUNK_ERROR, "bad_credential", "credential kind not delegable");
        return 1;
    }
    if (bs_grants_cred_expiry(auth, cred_exp, err, sizeof(err)) != 0) {
        refuse(s, req, rep, BS_CHUNK_ERROR, "bad_credential", err);
        return 1;
    }
    if (*cred_exp > 0 && *cred_exp <= (int64_t)time(NULL)) {
        refuse(s, req, rep, BS_CHUNK_DENIED, "expired", "the credential has expired");
        return 1;
    }
    return 0;
}

/* Registers this thread as the one checking grant `key`, so concurrent requests with the same
 * credential wait for its answer (until end_ns) instead of each sending a HEAD. Returns the
 * slot, -1 when the table is full (check unregistered), or -2 after waiting for another
 * checker. */
static int begin_check(struct bs_service *s, const unsigned char key[32], uint64_t end_ns)
{
    pthread_mutex_lock(&s->lock);
    int free_slot = -1;
    for (int i = 0; i < MAX_CHECKS; i++) {
        if (s->checking[i].used && memcmp(s->checking[i].key, key, 32) == 0) {
            while (s->checking[i].used && memcmp(s->checking[i].key, key, 32) == 0)
                if (bs_cond_wait_until(&s->check_cv, &s->lock, end_ns) != 0)
                    break;
            pthread_mutex_unlock(&s->lock);
            return -2;
        }
        if (!s->checking[i].used && free_slot < 0)
            free_slot = i;
    }
    if (free_slot >= 0) {
        s->checking[free_slot].used = 1;
        memcpy(s->checking[free_slot].key, key, 32);
    }
    pthread_mutex_unlock(&s->lock);
    return free_slot;
}

static void end_check(struct bs_service *s, int slot)
{
    if (slot < 0)
        return;
    pthread_mutex_lock(&s->lock);
    s->checking[slot].used = 0;
    pthread_cond_broadcast(&s->check_cv);
    pthread_mutex_unlock(&s->lock);
}

/* Access: a live grant for this credential and blob, for the version the caller expects,
 * else a HEAD with the credential. Returns 0 with *grant, or 1 with rep filled. */
static int check_access(struct bs_service *s, const struct bs_chunk_req *req,
                        const unsigned char gkey[32], int64_t cred_exp, struct bs_grant *grant,
                        struct bs_chunk_reply *rep, uint64_t answer_end_ns)
{
    /* A HEAD takes up to check_ms: it starts only if it ends before the answer deadline, and
     * a wait for another request's check ends in time to start one. */
    uint64_t check_ns = (uint64_t)s->o.check_ms * 1000000ull;
    uint64_t last_start_ns = answer_end_ns > check_ns ? answer_end_ns - check_ns : 0;
    const struct bs_delegation *auth = &req->auth;
    char err[256];
    for (int attempt = 0; attempt < 2; attempt++) {
        if (bs_grants_find(s->grants, gkey, grant) == 0 &&
            (!req->etag[0] || strcmp(req->etag, grant->etag) == 0))
            return 0;
        int slot = attempt == 0 ? begin_check(s, gkey, last_start_ns) : -1;
        if (slot == -2)
            continue; /* another request just checked: look again */
        if (bs_now_ns() > last_start_ns) {
            end_check(s, slot);
            reply(rep, BS_CHUNK_MISS, "no time left for an access check (answer %ld ms)",
                  s->o.answer_ms);
            bs_metric_add(s->m_errors, "answer_deadline", 1);
            return 1;
        }
        struct bs_azcred *cred = bs_azcred_from_delegation(auth, err, sizeof(err));
        if (!cred) {
            end_check(s, slot);
            reply(rep, BS_CHUNK_ERROR, "%s", err);
            return 1;
        }
        struct bs_blob_props props;
        int rc = bs_blobreader_head(s->check_reader, cred, req->account, req->container, req->blob,
                                    &props, err, sizeof(err));
        bs_azcred_destroy(cred);
        bs_metric_add(s->m_grants_checked, rc == 0 ? "granted" : "refused", 1);
        if (rc == 0) {
            snprintf(grant->etag, sizeof(grant->etag), "%s", props.etag);
            grant->size = props.size;
            bs_grants_put(s->grants, gkey, cred_exp, grant);
        } else if (rc == -EACCES || rc == -ENOENT) {
            bs_grants_forget(s->grants, gkey);
            reply(rep, BS_CHUNK_DENIED, "the credential does not read this blob");
            char blob[300], why[300];
            bs_name_escape(req->blob, blob, sizeof(blob));
            bs_name_escape(err, why, sizeof(why));
            bs_log(BS_LOG_INFO, "service", "event=denied container=%s blob=\"%s\" detail=\"%s\"",
                   req->container, blob, why);
        } else {
            reply(rep, BS_CHUNK_MISS, "origin check failed");
            bs_metric_add(s->m_errors, "origin", 1);
        }
        end_check(s, slot);
        return rc == 0 ? 0 : 1;
    }
    reply(rep, BS_CHUNK_MISS, "access check did not settle");
    return 1;
}

/* Starts reading a blob version ahead for a caller that holds a grant for it (cluster mode,
 * read-ahead on, the blob at most a quarter of the store's budget, MAX_PLANS at once). The
 * first chunk is this agent's rank's share of the blob, so that agents starting together
 * fetch different chunks first. */
static void maybe_read_ahead(struct bs_service *s, const struct bs_chunk_req *req,
                             const struct bs_grant *g, int64_t cred_exp)
{
    if (!s->p.idx || !s->p.readahead || g->size == 0)
        return;
    struct bs_store_stats st;
    bs_store_get_stats(s->store, &st);
    if (g->size > st.budget_bytes / 4)
        return;
    uint64_t planned_max = st.budget_bytes / 2;
    uint64_t n = (g->size + s->o.chunk_size - 1) / s->o.chunk_size;
    pthread_mutex_lock(&s->lock);
    int known = s->nplans >= MAX_PLANS || s->stop || s->planned_bytes + g->size > planned_max;
    int of_tenant = 0;
    for (struct ra_plan *pl = s->plans; pl && !known; pl = pl->next) {
        of_tenant += strcmp(pl->endpoint, req->auth.endpoint) == 0;
        known = of_tenant >= MAX_PLANS_PER_TENANT ||
                (strcmp(pl->etag, g->etag) == 0 && strcmp(pl->blob, req->blob) == 0 &&
                 strcmp(pl->container, req->container) == 0 &&
                 strcmp(pl->endpoint, req->auth.endpoint) == 0);
    }
    pthread_mutex_unlock(&s->lock);
    if (known)
        return;
    int nodes = 0, rank = 0;
    uint64_t start = 0;
    if (bs_redisidx_cluster(s->p.idx, &nodes, &rank) == 0 && nodes > 0)
        start = n * (uint64_t)(rank % nodes) / (uint64_t)nodes;
    struct ra_plan *pl = calloc(1, sizeof(*pl));
    if (!pl)
        return;
    snprintf(pl->endpoint, sizeof(pl->endpoint), "%s", req->auth.endpoint);
    snprintf(pl->container, sizeof(pl->container), "%s", req->container);
    snprintf(pl->blob, sizeof(pl->blob), "%s", req->blob);
    snprintf(pl->etag, sizeof(pl->etag), "%s", g->etag);
    pl->auth = req->auth;
    pl->cred_exp = cred_exp;
    pl->size = g->size;
    pl->nchunks = n;
    pl->start = start;
    pthread_mutex_lock(&s->lock);
    /* Checked again: another request may have added it meanwhile. */
    int dup = s->nplans >= MAX_PLANS || s->stop || s->planned_bytes + pl->size > planned_max;
    for (struct ra_plan *q = s->plans; q && !dup; q = q->next)
        dup = strcmp(q->etag, pl->etag) == 0 && strcmp(q->blob, pl->blob) == 0 &&
              strcmp(q->container, pl->container) == 0 && strcmp(q->endpoint, pl->endpoint) == 0;
    if (!dup) {
        pl->next = s->plans;
        s->plans = pl;
        s->nplans++;
        s->planned_bytes += pl->size;
        pthread_cond_broadcast(&s->work_cv);
    }
    pthread_mutex_unlock(&s->lock);
    if (dup) {
        explicit_bzero(&pl->auth, sizeof(pl->auth));
        free(pl);
    } else {
        bs_metric_add(s->m_readahead, "planned", 1);
    }
}

void bs_service_chunk(struct bs_service *s, const struct bs_chunk_req *req,
                      struct bs_chunk_reply *rep, struct bs_chunk_ref **ref)
{
    *ref = NULL;
    memset(rep, 0, offsetof(struct bs_chunk_reply, crcs));
    rep->chunk = req->chunk;
    rep->chunk_size = s->o.chunk_size;
    rep->block_size = s->o.block_size;
    const struct bs_delegation *auth = &req->auth;
    char err[256];
    /* The one deadline of this request: every wait below ends by it. */
    uint64_t answer_end_ns = bs_now_ns() + (uint64_t)s->o.answer_ms * 1000000ull;

    int64_t cred_exp;
    if (check_request(s, req, &cred_exp, rep) != 0)
        goto out;

    /* Access: a live grant for this credential and blob, for the version the caller expects. */
    unsigned char gkey[32];
    struct bs_grant grant;
    bs_grants_key(auth, req->container, req->blob, gkey);
    if (check_access(s, req, gkey, cred_exp, &grant, rep, answer_end_ns) != 0)
        goto out;
    if (req->etag[0] && strcmp(req->etag, grant.etag) != 0) {
        reply(rep, BS_CHUNK_MISS, "blob version changed");
        goto out;
    }
    snprintf(rep->etag, sizeof(rep->etag), "%s", grant.etag);
    rep->blob_size = grant.size;
    if (grant.size == 0 || req->chunk > (grant.size - 1) / s->o.chunk_size) {
        reply(rep, BS_CHUNK_ERROR, "chunk %llu is past the end of the blob",
              (unsigned long long)req->chunk);
        goto out;
    }
    uint64_t start = req->chunk * s->o.chunk_size; /* < grant.size: cannot overflow */
    uint64_t len = grant.size - start < s->o.chunk_size ? grant.size - start : s->o.chunk_size;

    struct bs_chunk_key k;
    char acct[KEY_ACCOUNT_MAX];
    chunk_key(&k, acct, s->o.chunk_size, auth->endpoint, req->container, req->blob, grant.etag,
              req->chunk);
    enum bs_chunk_status st = BS_CHUNK_HIT;
    const char *fill_source = "origin";
    if (bs_store_get(s->store, &k, ref) != 0) {
        bs_metric_add(s->m_lookups, "miss", 1);
        maybe_read_ahead(s, req, &grant, cred_exp);
        uint64_t wait_end_ns = bs_now_ns() + (uint64_t)s->o.fill_wait_ms * 1000000ull;
        if (wait_end_ns > answer_end_ns)
            wait_end_ns = answer_end_ns;
        int moving = 0, rc = -EINPROGRESS;
        const char *source = "origin";
        for (int tries = 0; rc == -EINPROGRESS && tries < 3; tries++)
            rc = fill_and_wait(s, auth, req, grant.etag, start, len, wait_end_ns, &moving, &source,
                               err, sizeof(err));
        if (rc == -ETIMEDOUT)
            bs_metric_add(s->m_errors, "answer_deadline", 1);
        if (rc == 0 && bs_store_get(s->store, &k, ref) == 0) {
            st = BS_CHUNK_FILLED;
            fill_source = source;
        } else if (rc == -ETIMEDOUT && moving && req->accept_pending) {
            reply(rep, BS_CHUNK_PENDING, "fill in progress");
            goto out;
        } else {
            reply(rep, BS_CHUNK_MISS, "%s", rc ? err : "chunk evicted right after its fill");
            goto out;
        }
    } else {
        bs_metric_add(s->m_lookups, "hit", 1);
    }
    uint32_t n = 0;
    const uint32_t *crcs = bs_chunk_ref_crcs(*ref, &n);
    if (bs_chunk_ref_length(*ref) != len || n > BS_PROTO_MAX_CRCS ||
        bs_chunk_ref_block_size(*ref) != s->o.block_size) {
        bs_store_release(s->store, *ref);
        *ref = NULL;
        bs_store_drop(s->store, &k);
        reply(rep, BS_CHUNK_MISS, "stored chunk has an unexpected geometry; dropped");
        bs_metric_add(s->m_errors, "store_geometry", 1);
        goto out;
    }
    rep->length = len;
    rep->ncrcs = n;
    memcpy(rep->crcs, crcs, n * sizeof(*crcs));
    reply(rep, st, "%s", "");
    /* Count what the caller said it uses (sub_off/sub_len, both routes; an unaligned read
     * touches two chunks but uses a part of each), else the whole chunk. */
    uint64_t used = req->sub_len && req->sub_off < len && req->sub_len <= len - req->sub_off
                        ? req->sub_len
                        : len;
    bs_metric_add(s->m_served, st == BS_CHUNK_HIT ? "local" : fill_source, (double)used);
out:
    bs_metric_add(s->m_requests, bs_chunk_status_name(rep->status), 1);
}

void bs_service_release(struct bs_service *s, struct bs_chunk_ref *ref)
{
    if (ref)
        bs_store_release(s->store, ref);
}

void bs_service_report_corrupt(struct bs_service *s, const struct bs_chunk_req *req)
{
    unsigned char gkey[32];
    struct bs_grant grant;
    bs_grants_key(&req->auth, req->container, req->blob, gkey);
    if (bs_grants_find(s->grants, gkey, &grant) != 0)
        return; /* only a caller with access may make us look */
    struct bs_chunk_key k;
    char acct[KEY_ACCOUNT_MAX];
    chunk_key(&k, acct, s->o.chunk_size, req->auth.endpoint, req->container, req->blob, grant.etag,
              req->chunk);
    struct bs_chunk_ref *ref;
    if (bs_store_get(s->store, &k, &ref) != 0)
        return;
    /* A report is a hint, not proof: the chunk is dropped only if its own blocks fail their
     * checksums here. One verification at a time bounds the memory to one chunk. */
    pthread_mutex_lock(&s->verify_lock);
    uint64_t len = bs_chunk_ref_length(ref);
    uint32_t n = 0;
    const uint32_t *crcs = bs_chunk_ref_crcs(ref, &n);
    char *buf = malloc(len ? len : 1);
    int fd = bs_chunk_ref_open(ref);
    int bad = 0;
    if (buf && fd >= 0) {
        bad = bs_pread_full(fd, buf, len, 0) != 0 ||
              bs_chunk_verify(crcs, n, bs_chunk_ref_block_size(ref), len, 0, buf, len) != 0;
    }
    if (fd >= 0)
        close(fd);
    free(buf);
    pthread_mutex_unlock(&s->verify_lock);
    bs_store_release(s->store, ref);
    if (!bad)
        return;
    bs_store_drop(s->store, &k);
    bs_metric_add(s->m_errors, "corrupt_chunk", 1);
    bs_log(BS_LOG_WARN, "service", "event=chunk_corrupt container=%s chunk=%llu", req->container,
           (unsigned long long)req->chunk);
}

int bs_service_peer_get(struct bs_service *s, const struct bs_chunk_key *k, long wait_ms,
                        struct bs_chunk_ref **ref)
{
    *ref = NULL;
    if (bs_store_get(s->store, k, ref) == 0)
        return 0;
    /* k->account is "<endpoint>#grid=<bytes>" (the peer server checked the grid is ours). */
    const char *g = strstr(k->account, "#grid=");
    char endpoint[1024];
    if (!g || wait_ms <= 0 || (size_t)(g - k->account) >= sizeof(endpoint))
        return -ENOENT;
    memcpy(endpoint, k->account, (size_t)(g - k->account));
    endpoint[g - k->account] = '\0';
    uint64_t end_ns = bs_now_ns() + (uint64_t)wait_ms * 1000000ull;
    pthread_mutex_lock(&s->lock);
    struct fill_job *j = find_job_locked(s, endpoint, k->container, k->blob, k->etag, k->index);
    if (!j) {
        pthread_mutex_unlock(&s->lock);
        return -ENOENT;
    }
    j->refs++;
    while (!j->done && !s->stop && !s->draining &&
           bs_cond_wait_until(&j->cv, &s->lock, end_ns) == 0)
        ;
    int running = !j->done, stop = s->stop || s->draining;
    job_unref_locked(j);
    pthread_mutex_unlock(&s->lock);
    if (bs_store_get(s->store, k, ref) == 0)
        return 0;
    return stop ? -ESHUTDOWN : running ? -EINPROGRESS : -ENOENT;
}

void bs_service_stop(struct bs_service *s)
{
    pthread_mutex_lock(&s->lock);
    s->draining = 1; /* not stop: the workers stay (exiting, unjoined, they would leak) */
    pthread_cond_broadcast(&s->work_cv);
    for (size_t b = 0; b < MAP_BUCKETS; b++)
        for (struct fill_job *j = s->map[b]; j; j = j->hnext)
            pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&s->lock);
}

void bs_service_set_peers(struct bs_service *s, const struct bs_service_peers *p)
{
    pthread_mutex_lock(&s->lock);
    s->p = *p;
    if (s->p.readahead_workers < 1)
        s->p.readahead_workers = 1;
    pthread_mutex_unlock(&s->lock);
}

void bs_service_evicted(struct bs_service *s, const struct bs_chunk_key *k)
{
    if (!s || !s->p.idx)
        return;
    char tag[BS_IDX_TAG_LEN + 1];
    bs_redisidx_tag(k->account, k->container, k->blob, k->etag, tag);
    bs_redisidx_withdraw(s->p.idx, tag, k->index);
}

#define REANNOUNCE_BATCH 256 /* chunks per pipelined round trip */

struct reannounce_ctx {
    struct bs_service *s;
    unsigned long n, failed;
    int k;
    char tags[REANNOUNCE_BATCH][BS_IDX_TAG_LEN + 1];
    uint64_t chunks[REANNOUNCE_BATCH];
};

static void reannounce_flush(struct reannounce_ctx *c)
{
    if (c->k == 0)
        return;
    if (bs_redisidx_announce_many(c->s->p.idx, (const char(*)[BS_IDX_TAG_LEN + 1]) c->tags,
                                  c->chunks, c->k) == 0)
        c->n += (unsigned long)c->k;
    else
        c->failed += (unsigned long)c->k;
    c->k = 0;
}

static void reannounce_one(void *arg, const struct bs_chunk_key *k)
{
    struct reannounce_ctx *c = arg;
    bs_redisidx_tag(k->account, k->container, k->blob, k->etag, c->tags[c->k]);
    c->chunks[c->k++] = k->index;
    if (c->k == REANNOUNCE_BATCH)
        reannounce_flush(c);
}

void bs_service_reannounce(void *arg)
{
    struct bs_service *s = arg;
    if (!s->p.idx)
        return;
    struct reannounce_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->s = s;
    bs_store_foreach(s->store, reannounce_one, c);
    reannounce_flush(c);
    bs_log(BS_LOG_INFO, "service", "event=reannounced chunks=%lu failed=%lu", c->n, c->failed);
    free(c);
}

uint64_t bs_service_chunk_size(const struct bs_service *s)
{
    return s->o.chunk_size;
}

int bs_service_busy(struct bs_service *s)
{
    pthread_mutex_lock(&s->lock);
    int n = s->queued + s->running;
    pthread_mutex_unlock(&s->lock);
    return n;
}

void bs_service_hello(const struct bs_service *s, struct bs_hello *h)
{
    h->version = BS_PROTO_VERSION;
    h->chunk_size = s->o.chunk_size;
    h->block_size = s->o.block_size;
    h->answer_ms = (uint32_t)s->o.answer_ms;
}

struct bs_service *bs_service_create(const struct bs_service_opts *o, struct bs_store *store,
                                     struct bs_blobreader *reader,
                                     struct bs_blobreader *check_reader, struct bs_metrics *metrics,
                                     char *err, size_t errsz)
{
    struct bs_service *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    s->o = *o;
    s->store = store;
    s->reader = reader;
    s->check_reader = check_reader;
    s->patterns = strdup(o->allowed_endpoints ? o->allowed_endpoints : "");
    s->grants = bs_grants_create(o->max_grants, o->grant_ttl_ms);
    pthread_mutex_init(&s->lock, NULL);
    bs_cond_init(&s->work_cv); /* pause_ms waits on it with a monotonic deadline */
    bs_cond_init(&s->check_cv);
    pthread_mutex_init(&s->verify_lock, NULL);
    s->m_requests = bs_metrics_counter(metrics, "blobswarm_agent_chunk_requests_total",
                                       "Chunk requests answered, by status.", "status");
    s->m_served = bs_metrics_counter(
        metrics, "blobswarm_agent_served_bytes_total",
        "Chunk bytes served to callers (the part each said it uses), by where they came from.",
        "source");
    s->m_origin_fetches = bs_metrics_counter(metrics, "blobswarm_agent_origin_fetches_total",
                                             "Chunk fills from Azure, by reason.", "reason");
    s->m_origin_bytes = bs_metrics_counter(metrics, "blobswarm_agent_origin_bytes_total",
                                           "Bytes read from Azure to fill chunks.", NULL);
    s->m_errors =
        bs_metrics_counter(metrics, "blobswarm_agent_errors_total", "Errors, by kind.", "kind");
    s->m_fill_seconds = bs_metrics_histogram(
        metrics, "blobswarm_agent_fill_seconds", "Time to fill one chunk from the origin.", NULL,
        fill_buckets, sizeof(fill_buckets) / sizeof(fill_buckets[0]));
    s->m_lookups = bs_metrics_counter(metrics, "blobswarm_agent_store_lookups_total",
                                      "Chunk store lookups, by result.", "result");
    s->m_grants_checked = bs_metrics_counter(metrics, "blobswarm_agent_access_checks_total",
                                             "Access checks against Azure, by result.", "result");
    s->m_refusals =
        bs_metrics_counter(metrics, "blobswarm_agent_refusals_total",
                           "Requests refused before any origin access, by reason.", "reason");
    s->m_fill_queue = bs_metrics_gauge(metrics, "blobswarm_agent_fill_queue",
                                       "Fills waiting for a worker.", NULL);
    s->m_peer_errors = bs_metrics_counter(metrics, BS_PEER_ERRORS_METRIC, BS_PEER_ERRORS_HELP,
                                          BS_PEER_ERRORS_LABELS);
    s->m_lease_waits = bs_metrics_counter(
        metrics, "blobswarm_lease_waits_total",
        "Waits on another agent's fill of a chunk (its lease), by outcome.", "outcome");
    s->m_peer_bytes_in = bs_metrics_counter(metrics, "blobswarm_peer_bytes_in_total",
                                            "Chunk bytes fetched from peers and verified.", NULL);
    s->m_readahead = bs_metrics_counter(metrics, "blobswarm_readahead_total",
                                        "Read-ahead: blob versions planned and chunks filled, "
                                        "deferred (another agent held the lease) or failed.",
                                        "event");
    if (!s->patterns || !s->grants)
        goto out_fail;
    s->workers = calloc((size_t)o->fill_workers, sizeof(*s->workers));
    if (!s->workers)
        goto out_fail;
    for (int i = 0; i < o->fill_workers; i++) {
        if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0)
            goto out_fail;
        s->nworkers++;
    }
    return s;

out_fail:
    snprintf(err, errsz, "cannot start the chunk service (memory or threads)");
    bs_service_destroy(s);
    return NULL;
}

void bs_service_destroy(struct bs_service *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = 1;
    pthread_cond_broadcast(&s->work_cv);
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < s->nworkers; i++)
        pthread_join(s->workers[i], NULL);
    /* Queued jobs that never ran: complete them as failed for any waiter, then drop. */
    pthread_mutex_lock(&s->lock);
    while (s->tenants) {
        struct tenant *t = s->tenants;
        struct fill_job *j = t->qhead;
        if (!j) { /* only running fills, whose workers have ended */
            s->tenants = t->next;
            free(t);
            continue;
        }
        t->qhead = j->next;
        if (!t->qhead) {
            s->tenants = t->next;
            free(t);
        }
        j->tenant = NULL;
        j->done = 1;
        j->rc = -ESHUTDOWN;
        snprintf(j->err, sizeof(j->err), "agent shutting down");
        pthread_cond_broadcast(&j->cv);
        job_unref_locked(j);
    }
    while (s->plans)
        plan_free_locked(s, s->plans);
    pthread_mutex_unlock(&s->lock);
    free(s->workers);
    bs_grants_destroy(s->grants);
    free(s->patterns);
    pthread_cond_destroy(&s->work_cv);
    pthread_cond_destroy(&s->check_cv);
    pthread_mutex_destroy(&s->verify_lock);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
