/* Integration test of peer/redisidx against a real redis-server (started by
 * tests/integration/redisidx.sh on a free loopback port) and against a hostile fake server
 * this program runs itself: leases raced by 16 agents, holders and their trim, lease expiry
 * and release, forget, a TTL on every key, FLUSHALL and restart noticed by the heartbeat
 * (re-announce), a frozen and a stopped Redis (bounded calls, then the breaker), passwords,
 * malformed data and replies. It also measures the round trip of DECIDE and ANNOUNCE on
 * loopback and redis-server's CPU per script call (INFO commandstats), printed as
 * "measure: ..." lines.
 *
 * Environment (set by redisidx.sh): BS_REDIS_URL (redis://127.0.0.1:PORT), BS_REDIS_SERVER
 * (redis-server, to restart it on the same port), BS_REDIS_DIR (its working directory).
 * Tests run in order and share the server; the stop/restart cases come last. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "clock.h"
#include "metrics.h"
#include "redisidx.h"

#define TIMEOUT_MS  200  /* the index's command timeout in every case */
#define NODE_TTL_MS 1500 /* heartbeat every 500 ms */
#define PERIOD_MS   (NODE_TTL_MS / 3)
#define UP_WAIT_MS  15000 /* bound for "the index is up": backoff (<= 10 s) + a heartbeat */
#define RACERS      16
#define MEASURE_N   2000

static const char *g_url, *g_server, *g_dir;
static int g_port;
static pid_t g_child;   /* the redis-server this program restarted, if any */
static pid_t g_stopped; /* a redis-server this program SIGSTOPped, to resume on failure */
static redisContext *g_admin;
static struct bs_metrics *g_metrics;

/* ---- helpers ---------------------------------------------------------------------------- */

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static double ms_since(uint64_t t0)
{
    return (double)(bs_now_ns() - t0) / 1e6;
}

static redisContext *admin_connect(void)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", g_port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

/* A command on the admin connection (reconnected when needed); the reply or NULL. */
static redisReply *admin(const char *fmt, ...)
{
    if (!g_admin)
        g_admin = admin_connect();
    if (!g_admin)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(g_admin, fmt, ap);
    va_end(ap);
    if (!r) {
        redisFree(g_admin);
        g_admin = NULL;
    }
    return r;
}

static long long admin_int(const char *fmt, const char *a1, const char *a2)
{
    redisReply *r = admin(fmt, a1, a2);
    assert_non_null(r);
    if (r->type != REDIS_REPLY_INTEGER)
        fail_msg("admin: %s: not an integer (type %d %s)", fmt, r->type,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static void admin_ok(const char *fmt, const char *a1, const char *a2)
{
    redisReply *r = admin(fmt, a1, a2);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("admin: %s: %s", fmt, r->str);
    freeReplyObject(r);
}

/* A field of INFO <section> as a number (-1 when missing). */
static double info_field(const char *section, const char *line_prefix, const char *field)
{
    redisReply *r = admin("INFO %s", section);
    double v = -1;
    if (r && r->type == REDIS_REPLY_STRING) {
        const char *p = strstr(r->str, line_prefix);
        if (p) {
            const char *f = strstr(p, field);
            const char *eol = strchr(p, '\n');
            if (f && (!eol || f < eol))
                v = strtod(f + strlen(field), NULL);
        }
    }
    if (r)
        freeReplyObject(r);
    return v;
}

static int admin_ping(void)
{
    redisReply *r = admin("PING");
    int ok = r && r->type == REDIS_REPLY_STATUS;
    if (r)
        freeReplyObject(r);
    return ok;
}

struct node {
    struct bs_redisidx *x;
    char name[BS_IDX_NODE_MAX], addr[BS_IDX_ADDR_MAX];
    atomic_int reannounced;
    _Atomic uint64_t last_reannounce_ns;
};

static void on_reannounce(void *arg)
{
    struct node *n = arg;
    atomic_store(&n->last_reannounce_ns, bs_now_ns());
    atomic_fetch_add(&n->reannounced, 1);
}

static struct bs_redisidx_opts opts(const char *url, const char *name, const char *addr,
                                    int max_holders, long lease_ms)
{
    struct bs_redisidx_opts o = {
        .url = url,
        .node = name,
        .advertise = addr,
        .timeout_ms = TIMEOUT_MS,
        .node_ttl_ms = NODE_TTL_MS,
        .holder_ttl_ms = 60000,
        .lease_ms = lease_ms,
        .max_holders = max_holders,
    };
    return o;
}

static void node_start(struct node *n, const struct bs_redisidx_opts *o, struct bs_metrics *m)
{
    char err[256];
    snprintf(n->name, sizeof(n->name), "%s", o->node);
    snprintf(n->addr, sizeof(n->addr), "%s", o->advertise);
    atomic_store(&n->reannounced, 0);
    n->x = bs_redisidx_create(o, m, err, sizeof(err));
    if (!n->x)
        fail_msg("create %s: %s", o->node, err);
    bs_redisidx_set_reannounce(n->x, on_reannounce, n);
}

static int wait_up(struct node *n, long ms)
{
    uint64_t end = bs_now_ns() + (uint64_t)ms * BS_NS_PER_MS;
    int nodes, rank;
    while (bs_now_ns() < end) {
        if (bs_redisidx_up(n->x) && bs_redisidx_cluster(n->x, &nodes, &rank) == 0)
            return 1;
        sleep_ms(10);
    }
    return 0;
}

static void start(struct node *n, const char *name, const char *addr, int max_holders,
                  long lease_ms, struct bs_metrics *m)
{
    struct bs_redisidx_opts o = opts(g_url, name, addr, max_holders, lease_ms);
    node_start(n, &o, m);
    if (!wait_up(n, UP_WAIT_MS))
        fail_msg("%s: not up after %d ms", name, UP_WAIT_MS);
}

static void stop(struct node *n)
{
    bs_redisidx_destroy(n->x);
    n->x = NULL;
}

static void tag_of(const char *blob, char tag[BS_IDX_TAG_LEN + 1])
{
    bs_redisidx_tag("http://127.0.0.1:10000/devstoreaccount1#grid=8388608", "data", blob, "\"0x1\"",
                    tag);
}

static void key_of(char *out, size_t n, const char *tag, char kind, uint64_t chunk)
{
    snprintf(out, n, "bs:v1:{%s}:%c:%" PRIu64, tag, kind, chunk);
}

static const char *dname(enum bs_idx_decision d)
{
    static const char *const n[] = {"HOLDERS", "LEASE_WON", "LEASE_HELD", "DOWN"};
    return d <= BS_IDX_DOWN ? n[d] : "?";
}

static void expect(struct node *n, const char *tag, uint64_t chunk, enum bs_idx_decision want,
                   struct bs_idx_result *r)
{
    enum bs_idx_decision d = bs_redisidx_decide(n->x, tag, chunk, r);
    if (d != want || r->d != d)
        fail_msg("%s decide chunk %" PRIu64 ": %s, expected %s", n->name, chunk, dname(d),
                 dname(want));
}

/* The value of one series in the Prometheus text ("name{labels}" exactly), or -1. */
static double metric(struct bs_metrics *m, const char *series)
{
    size_t len;
    char *text = bs_metrics_render(m, &len);
    double v = -1;
    size_t sl = strlen(series);
    for (char *p = text; p && *p;) {
        char *eol = strchr(p, '\n');
        if (strncmp(p, series, sl) == 0 && p[sl] == ' ')
            v = strtod(p + sl + 1, NULL);
        p = eol ? eol + 1 : p + strlen(p);
    }
    free(text);
    return v;
}

/* ---- shared nodes ----------------------------------------------------------------------- */

static struct node A, B; /* a: 10.0.0.1:7001, b: 10.0.0.2:7002 (B reports to g_metrics) */

static void test_cluster(void **state)
{
    (void)state;
    uint64_t t0 = bs_now_ns();
    start(&A, "a", "10.0.0.1:7001", 4, 30000, NULL);
    printf("measure: first heartbeat after create: %.1f ms\n", ms_since(t0));
    start(&B, "b", "10.0.0.2:7002", 4, 30000, g_metrics);
    int nodes = 0, rank = -1;
    assert_int_equal(bs_redisidx_cluster(B.x, &nodes, &rank), 0);
    assert_int_equal(nodes, 2);
    assert_int_equal(rank, 1);
    /* A sees B at its next heartbeat; its rank stays 0. */
    uint64_t end = bs_now_ns() + 3 * PERIOD_MS * BS_NS_PER_MS;
    while (bs_now_ns() < end && (bs_redisidx_cluster(A.x, &nodes, &rank) != 0 || nodes != 2))
        sleep_ms(10);
    assert_int_equal(nodes, 2);
    assert_int_equal(rank, 0);
    /* first contact: both asked for a re-announce */
    end = bs_now_ns() + 1000 * BS_NS_PER_MS;
    while (bs_now_ns() < end && (!atomic_load(&A.reannounced) || !atomic_load(&B.reannounced)))
        sleep_ms(5);
    assert_true(atomic_load(&A.reannounced) >= 1);
    assert_true(atomic_load(&B.reannounced) >= 1);
    redisReply *r = admin("GET bs:v1:{nodes}:n:a");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "10.0.0.1:7001");
    freeReplyObject(r);
}

/* ---- leases ----------------------------------------------------------------------------- */

static struct node racers[RACERS];
static pthread_barrier_t race_barrier;
static char race_tag[BS_IDX_TAG_LEN + 1];
static struct bs_idx_result race_res[RACERS];
static uint64_t race_ns[RACERS];

static void *racer(void *arg)
{
    int i = (int)(intptr_t)arg;
    pthread_barrier_wait(&race_barrier);
    uint64_t t0 = bs_now_ns();
    bs_redisidx_decide(racers[i].x, race_tag, 0, &race_res[i]);
    race_ns[i] = bs_now_ns() - t0;
    return NULL;
}

static void test_lease_race(void **state)
{
    (void)state;
    for (int i = 0; i < RACERS; i++) {
        char name[16], addr[32];
        snprintf(name, sizeof(name), "n%02d", i);
        snprintf(addr, sizeof(addr), "10.1.0.%d:7000", i + 1);
        struct bs_redisidx_opts o = opts(g_url, name, addr, 3, 2000);
        node_start(&racers[i], &o, NULL);
    }
    for (int i = 0; i < RACERS; i++)
        if (!wait_up(&racers[i], UP_WAIT_MS))
            fail_msg("racer %d not up", i);
    tag_of("race.bin", race_tag);
    pthread_t th[RACERS];
    pthread_barrier_init(&race_barrier, NULL, RACERS);
    for (int i = 0; i < RACERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, racer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < RACERS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&race_barrier);
    int won = 0, held = 0, winner = -1;
    for (int i = 0; i < RACERS; i++) {
        if (race_res[i].d == BS_IDX_LEASE_WON) {
            won++;
            winner = i;
        } else if (race_res[i].d == BS_IDX_LEASE_HELD) {
            held++;
        }
    }
    assert_int_equal(won, 1);
    assert_int_equal(held, RACERS - 1);
    for (int i = 0; i < RACERS; i++) {
        if (i == winner)
            continue;
        assert_string_equal(race_res[i].lessee.node, racers[winner].name);
        assert_string_equal(race_res[i].lessee.addr, racers[winner].addr);
        assert_true(race_res[i].lease_left_ms > 0 && race_res[i].lease_left_ms <= 2000);
        assert_int_equal(race_res[i].nholders, 0);
    }
    uint64_t worst = 0;
    for (int i = 0; i < RACERS; i++)
        worst = race_ns[i] > worst ? race_ns[i] : worst;
    printf("measure: 16 racing decides, slowest %.2f ms\n", (double)worst / 1e6);

    /* The winner announces: its lease is gone and everyone else sees it as the holder. */
    char lk[128];
    key_of(lk, sizeof(lk), race_tag, 'l', 0);
    assert_int_equal(admin_int("EXISTS %s", lk, NULL), 1);
    assert_int_equal(bs_redisidx_announce(racers[winner].x, race_tag, 0), 0);
    assert_int_equal(admin_int("EXISTS %s", lk, NULL), 0);
    struct bs_idx_result r;
    int other = (winner + 1) % RACERS;
    expect(&racers[other], race_tag, 0, BS_IDX_HOLDERS, &r);
    assert_int_equal(r.nholders, 1);
    assert_string_equal(r.holders[0].node, racers[winner].name);
    assert_string_equal(r.holders[0].addr, racers[winner].addr);
}

/* The newest max_holders (3) announcers are kept, newest first. */
static void test_trim(void **state)
{
    (void)state;
    char tag[BS_IDX_TAG_LEN + 1], hk[128];
    tag_of("trim.bin", tag);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(bs_redisidx_announce(racers[i].x, tag, 1), 0);
        sleep_ms(3); /* distinct announce times (ms) */
    }
    key_of(hk, sizeof(hk), tag, 'h', 1);
    assert_int_equal(admin_int("ZCARD %s", hk, NULL), 3);
    long long pttl = admin_int("PTTL %s", hk, NULL);
    assert_true(pttl > 50000 && pttl <= 60000);
    struct bs_idx_result r;
    expect(&racers[15], tag, 1, BS_IDX_HOLDERS, &r);
    assert_int_equal(r.nholders, 3);
    assert_string_equal(r.holders[0].node, "n09");
    assert_string_equal(r.holders[1].node, "n08");
    assert_string_equal(r.holders[2].node, "n07");
    /* A holder among the newest does not see itself: two others. */
    expect(&racers[9], tag, 1, BS_IDX_HOLDERS, &r);
    assert_int_equal(r.nholders, 2);
    assert_string_equal(r.holders[0].node, "n08");
    for (int i = 0; i < RACERS; i++)
        stop(&racers[i]);
}

/* Announce makes HOLDERS for others, never for the node itself; a node's own lease is its. */
static void test_announce_self(void **state)
{
    (void)state;
    char tag[BS_IDX_TAG_LEN + 1], lk[128];
    tag_of("announce.bin", tag);
    struct bs_idx_result r;
    assert_int_equal(bs_redisidx_announce(A.x, tag, 5), 0);
    expect(&A, tag, 5, BS_IDX_LEASE_WON, &r); /* only itself holds it */
    assert_int_equal(r.nholders, 0);
    expect(&B, tag, 5, BS_IDX_HOLDERS, &r);
    assert_int_equal(r.nholders, 1);
    assert_string_equal(r.holders[0].node, "a");
    assert_string_equal(r.holders[0].addr, "10.0.0.1:7001");
    /* A's lease from its decide is dropped by its next announce. */
    key_of(lk, sizeof(lk), tag, 'l', 5);
    assert_int_equal(admin_int("EXISTS %s", lk, NULL), 1);
    assert_int_equal(bs_redisidx_announce(A.x, tag, 5), 0);
    assert_int_equal(admin_int("EXISTS %s", lk, NULL), 0);
    /* Deciding again on its own lease: still won (renewed); B sees it held by A. */
    expect(&A, tag, 6, BS_IDX_LEASE_WON, &r);
    expect(&A, tag, 6, BS_IDX_LEASE_WON, &r);
    expect(&B, tag, 6, BS_IDX_LEASE_HELD, &r);
    assert_string_equal(r.lessee.node, "a");
    /* B announcing does not drop A's lease on another chunk, nor A's holder entry. */
    assert_int_equal(bs_redisidx_announce(B.x, tag, 6), 0);
    key_of(lk, sizeof(lk), tag, 'l', 6);
    assert_int_equal(admin_int("EXISTS %s", lk, NULL), 1);
    expect(&A, tag, 6, BS_IDX_HOLDERS, &r);
    assert_string_equal(r.holders[0].node, "b");
}

static void test_lease_expiry_release(void **state)
{
    (void)state;
    struct node x, y;
    start(&x, "x", "10.0.0.8:7008", 4, 300, NULL);
    start(&y, "y", "[fd00::9]:7009", 4, 300, NULL); /* an IPv6 member passes the scripts */
    char tag[BS_IDX_TAG_LEN + 1];
    tag_of("lease.bin", tag);
    struct bs_idx_result r;
    /* expiry: the lessee dies (never announces nor releases) */
    expect(&x, tag, 1, BS_IDX_LEASE_WON, &r);
    expect(&y, tag, 1, BS_IDX_LEASE_HELD, &r);
    assert_string_equal(r.lessee.node, "x");
    assert_true(r.lease_left_ms > 0 && r.lease_left_ms <= 300);
    sleep_ms(r.lease_left_ms + 30);
    expect(&y, tag, 1, BS_IDX_LEASE_WON, &r);
    expect(&x, tag, 1, BS_IDX_LEASE_HELD, &r);
    assert_string_equal(r.lessee.node, "y");
    /* release: a waiter wins at once; releasing a lease of another does nothing */
    expect(&x, tag, 2, BS_IDX_LEASE_WON, &r);
    expect(&y, tag, 2, BS_IDX_LEASE_HELD, &r);
    assert_int_equal(bs_redisidx_release(y.x, tag, 2), 0);
    expect(&y, tag, 2, BS_IDX_LEASE_HELD, &r);
    assert_int_equal(bs_redisidx_release(x.x, tag, 2), 0);
    expect(&y, tag, 2, BS_IDX_LEASE_WON, &r);
    /* forget: a dead holder entry is removed */
    assert_int_equal(bs_redisidx_announce(x.x, tag, 3), 0);
    sleep_ms(2);
    assert_int_equal(bs_redisidx_announce(y.x, tag, 3), 0);
    expect(&A, tag, 3, BS_IDX_HOLDERS, &r);
    assert_int_equal(r.nholders, 2);
    assert_string_equal(r.holders[0].node, "y");
    assert_string_equal(r.holders[1].node, "x");
    struct bs_peer dead = r.holders[0];
    assert_int_equal(bs_redisidx_forget(A.x, tag, 3, &dead), 0);
    expect(&A, tag, 3, BS_IDX_HOLDERS, &r);
    assert_int_equal(r.nholders, 1);
    assert_string_equal(r.holders[0].node, "x");
    assert_int_equal(bs_redisidx_forget(A.x, tag, 3, &r.holders[0]), 0);
    expect(&A, tag, 3, BS_IDX_LEASE_WON, &r);
    stop(&x);
    stop(&y);
    /* destroy left the registry */
    assert_int_equal(admin_int("EXISTS bs:v1:{nodes}:n:x", NULL, NULL), 0);
}

/* Data no agent wrote: garbage members, wrong key types, a lease without TTL. */
struct seen {
    int calls;
    int n[600];
    struct bs_peer first[600];
};

static void on_holders(void *arg, uint64_t chunk, const struct bs_peer *h, int n)
{
    struct seen *s = arg;
    s->calls++;
    if (chunk < 600) {
        s->n[chunk] = n;
        if (n > 0)
            s->first[chunk] = h[0];
    }
}

static void test_hostile_data(void **state)
{
    (void)state;
    char tag[BS_IDX_TAG_LEN + 1], hk[128], hk2[128], lk[128], lk4[128], hk5[128];
    tag_of("hostile.bin", tag);
    key_of(hk, sizeof(hk), tag, 'h', 1);
    /* garbage, and one good member newest */
    static const char *const junk[] = {"garbage",          "x 1.2.3.4:5 y",  "bad!name 10.0.0.1:80",
                                       "n 10.0.0.1:99999", "n 999.0.0.1:80", "n 10.0.0.1",
                                       " 10.0.0.1:80",     "n  10.0.0.1:80"};
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
        redisReply *r = admin("ZADD %s %d %s", hk, 100 + (int)i, junk[i]);
        assert_non_null(r);
        freeReplyObject(r);
    }
    char *big = malloc(100001);
    memset(big, 'z', 100000);
    memcpy(big, "n ", 2);
    big[100000] = '\0';
    redisReply *r = admin("ZADD %s 200 %s", hk, big);
    assert_non_null(r);
    freeReplyObject(r);
    r = admin("ZADD %s 201 %b", hk, "n\0b 1.2.3.4:5", (size_t)13);
    assert_non_null(r);
    freeReplyObject(r);
    struct bs_idx_result res;
    /* top 4 by score: all garbage -> nobody holds it -> the lease */
    expect(&B, tag, 1, BS_IDX_LEASE_WON, &res);
    r = admin("ZADD %s 300 %s", hk, "good 10.9.9.9:99");
    freeReplyObject(r);
    expect(&B, tag, 1, BS_IDX_HOLDERS, &res);
    assert_int_equal(res.nholders, 1);
    assert_string_equal(res.holders[0].node, "good");
    assert_string_equal(res.holders[0].addr, "10.9.9.9:99");

    /* wrong types: DOWN for that call, the index stays up */
    key_of(hk2, sizeof(hk2), tag, 'h', 2);
    admin_ok("SET %s notazset", hk2, NULL);
    expect(&B, tag, 2, BS_IDX_DOWN, &res);
    assert_int_equal(bs_redisidx_announce(B.x, tag, 2), -1);
    assert_int_equal(bs_redisidx_up(B.x), 1);
    key_of(lk, sizeof(lk), tag, 'l', 3);
    admin_ok("HSET %s f v", lk, NULL);
    expect(&B, tag, 3, BS_IDX_DOWN, &res);
    expect(&B, tag, 7, BS_IDX_LEASE_WON, &res);
    /* a lease without TTL (and of a foreign shape) gets one */
    key_of(lk4, sizeof(lk4), tag, 'l', 4);
    admin_ok("SET %s %s", lk4, "zed 10.0.0.99:1");
    expect(&B, tag, 4, BS_IDX_LEASE_HELD, &res);
    assert_string_equal(res.lessee.node, "zed");
    assert_int_equal(res.lease_left_ms, 30000);
    assert_true(admin_int("PTTL %s", lk4, NULL) > 0);
    admin_ok("SET %s %s", lk4, "not a member");
    expect(&B, tag, 4, BS_IDX_DOWN, &res); /* a lessee that does not parse */

    /* holders() for tools: 600 chunks in 3 pipelined batches */
    key_of(hk5, sizeof(hk5), tag, 'h', 599);
    assert_int_equal(bs_redisidx_announce(A.x, tag, 599), 0);
    assert_int_equal(bs_redisidx_announce(B.x, tag, 300), 0);
    struct seen *s = calloc(1, sizeof(*s));
    assert_int_equal(bs_redisidx_holders(A.x, tag, 600, on_holders, s), 0);
    assert_int_equal(s->calls, 600);
    assert_int_equal(s->n[599], 1);
    assert_string_equal(s->first[599].node, "a");
    assert_int_equal(s->n[300], 1);
    assert_string_equal(s->first[300].node, "b");
    assert_true(s->n[1] >= 1); /* "good" (garbage skipped, counted) */
    assert_string_equal(s->first[1].node, "good");
    assert_int_equal(s->n[2], 0); /* wrong type: reported as no holders */
    assert_int_equal(s->n[0], 0);
    free(s);
    double reply_errors = metric(g_metrics, "blobswarm_redis_errors_total{kind=\"reply\"}");
    assert_true(reply_errors >= 3);
    free(big);
    admin_ok("DEL %s %s", hk, hk2);
    admin_ok("DEL %s", lk, NULL);
}

/* After SCRIPT FLUSH the scripts are sent again (EVALSHA -> NOSCRIPT -> EVAL). */
static void test_script_flush(void **state)
{
    (void)state;
    char tag[BS_IDX_TAG_LEN + 1];
    tag_of("flush-scripts.bin", tag);
    admin_ok("SCRIPT FLUSH", NULL, NULL);
    struct bs_idx_result r;
    expect(&A, tag, 1, BS_IDX_LEASE_WON, &r);
    assert_int_equal(bs_redisidx_announce(A.x, tag, 1), 0);
    expect(&B, tag, 1, BS_IDX_HOLDERS, &r);
}

static void test_every_key_has_ttl(void **state)
{
    (void)state;
    char cursor[32] = "0";
    int keys = 0, bad = 0;
    do {
        redisReply *r = admin("SCAN %s COUNT 1000", cursor);
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_ARRAY);
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            const char *k = r->element[1]->element[i]->str;
            long long t = admin_int("PTTL %s", k, NULL);
            keys++;
            if (t <= 0) {
                printf("no TTL: %s (%lld)\n", k, t);
                bad++;
            }
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    printf("measure: %d keys, all with a TTL: %s\n", keys, bad ? "no" : "yes");
    assert_true(keys > 10);
    assert_int_equal(bad, 0);
}

/* ---- measurements ----------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* redis-server's CPU time so far (user + system, seconds): its whole cost per call, network
 * I/O and event loop included, where commandstats counts the command alone. */
static double redis_cpu(void)
{
    return info_field("cpu", "used_cpu_user:", "used_cpu_user:") +
           info_field("cpu", "used_cpu_sys:", "used_cpu_sys:");
}

static void report(const char *what, uint64_t *ns, int n, double out0, double in0, double cmd0,
                   double cpu0)
{
    double cpu = redis_cpu() - cpu0;
    qsort(ns, (size_t)n, sizeof(*ns), cmp_u64);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += (double)ns[i];
    double calls = info_field("commandstats", "cmdstat_evalsha:", "calls=");
    double usec = info_field("commandstats", "cmdstat_evalsha:", "usec_per_call=");
    double out = metric(g_metrics, "blobswarm_redis_bytes_total{dir=\"out\"}") - out0;
    double in = metric(g_metrics, "blobswarm_redis_bytes_total{dir=\"in\"}") - in0;
    double cmds = metric(g_metrics, "blobswarm_redis_commands_total") - cmd0;
    printf("measure: %-22s n=%d mean=%.1f us p50=%.1f us p99=%.1f us max=%.1f us | "
           "redis evalsha calls=%.0f usec_per_call=%.2f, redis cpu/call=%.1f us | client "
           "bytes/call out=%.0f in=%.0f commands/call=%.2f\n",
           what, n, sum / n / 1e3, (double)ns[n / 2] / 1e3, (double)ns[n * 99 / 100] / 1e3,
           (double)ns[n - 1] / 1e3, calls, usec, cpu / n * 1e6, out / n, in / n, cmds / n);
}

static void test_measure(void **state)
{
    (void)state;
    uint64_t *ns = calloc(MEASURE_N, sizeof(*ns));
    char tag[BS_IDX_TAG_LEN + 1], tag2[BS_IDX_TAG_LEN + 1], tag3[BS_IDX_TAG_LEN + 1];
    tag_of("measure.bin", tag);
    tag_of("measure-won.bin", tag2);
    tag_of("measure-held.bin", tag3);
    struct bs_idx_result r;
    assert_int_equal(bs_redisidx_announce(A.x, tag, 0), 0);
    assert_int_equal(bs_redisidx_announce(A.x, tag, 1), 0);
    sleep_ms(1);
    assert_int_equal(bs_redisidx_announce(B.x, tag, 1), 0);
    const struct {
        const char *name;
        int kind; /* 0 holders, 2 lease won, 3 lease held, 4 announce */
    } runs[] = {{"DECIDE->HOLDERS(1)", 0},
                {"DECIDE->LEASE_WON", 2},
                {"DECIDE->LEASE_HELD", 3},
                {"ANNOUNCE", 4}};
    for (size_t k = 0; k < sizeof(runs) / sizeof(runs[0]); k++) {
        if (runs[k].kind == 3) /* leases for B to find held */
            for (int i = 0; i < MEASURE_N; i++)
                expect(&A, tag3, (uint64_t)i, BS_IDX_LEASE_WON, &r);
        double out0 = metric(g_metrics, "blobswarm_redis_bytes_total{dir=\"out\"}");
        double in0 = metric(g_metrics, "blobswarm_redis_bytes_total{dir=\"in\"}");
        double cmd0 = metric(g_metrics, "blobswarm_redis_commands_total");
        admin_ok("CONFIG RESETSTAT", NULL, NULL);
        double cpu0 = redis_cpu();
        for (int i = 0; i < MEASURE_N; i++) {
            uint64_t t0 = bs_now_ns();
            switch (runs[k].kind) {
            case 0:
                expect(&B, tag, 0, BS_IDX_HOLDERS, &r);
                break;
            case 2:
                expect(&B, tag2, 1000 + (uint64_t)i, BS_IDX_LEASE_WON, &r);
                break;
            case 3:
                expect(&B, tag3, (uint64_t)i, BS_IDX_LEASE_HELD, &r);
                break;
            case 4:
                assert_int_equal(bs_redisidx_announce(B.x, tag2, 1000 + (uint64_t)i), 0);
                break;
            }
            ns[i] = bs_now_ns() - t0;
        }
        /* The heartbeats of A and B (every 500 ms) are in the Redis figures too: a few
         * calls in 2,000. */
        report(runs[k].name, ns, MEASURE_N, out0, in0, cmd0, cpu0);
    }
    free(ns);
    /* holders() for tools: 2,000 chunks of which B holds all (announced above) */
    struct seen *s = calloc(1, sizeof(*s));
    admin_ok("CONFIG RESETSTAT", NULL, NULL);
    uint64_t t0 = bs_now_ns();
    assert_int_equal(bs_redisidx_holders(A.x, tag2, MEASURE_N, on_holders, s), 0);
    double t = ms_since(t0);
    assert_int_equal(s->calls, MEASURE_N);
    printf("measure: holders() over %d chunks: %.2f ms (%d pipelined round trips), redis "
           "zrevrange usec_per_call=%.2f\n",
           MEASURE_N, t, (MEASURE_N + 255) / 256,
           info_field("commandstats", "cmdstat_zrevrange:", "usec_per_call="));
    free(s);
}

/* ---- passwords -------------------------------------------------------------------------- */

static void test_password(void **state)
{
    (void)state;
    static const char pw[] = "p:a@ss/w rd";
    admin_ok("CONFIG SET requirepass %s", pw, NULL);
    char url[256], path[] = "/tmp/bs-redisidx-it-pw.XXXXXX",
                   bad_path[] = "/tmp/bs-redisidx-it-bad.XXXXXX";
    int fd = mkstemp(path), bfd = mkstemp(bad_path);
    assert_true(fd >= 0 && bfd >= 0);
    assert_int_equal(write(fd, pw, strlen(pw)), (ssize_t)strlen(pw));
    assert_int_equal(write(fd, "\n", 1), 1);
    assert_int_equal(write(bfd, "wrong\n", 6), 6);
    close(fd);
    close(bfd);

    struct node p1, p2, p3;
    /* password in the URL: ':' '@' '/' in it (a space is not allowed in a URL: file only) */
    admin_ok("CONFIG SET requirepass %s", "p:a@ss/wrd", NULL);
    snprintf(url, sizeof(url), "redis://:p:a@ss/wrd@127.0.0.1:%d", g_port);
    struct bs_redisidx_opts o = opts(url, "p1", "10.0.3.1:7000", 4, 1000);
    node_start(&p1, &o, NULL);
    assert_true(wait_up(&p1, 5000));
    stop(&p1);

    admin_ok("CONFIG SET requirepass %s", pw, NULL);
    o = opts(g_url, "p2", "10.0.3.2:7000", 4, 1000);
    o.password_file = path;
    node_start(&p2, &o, NULL);
    assert_true(wait_up(&p2, 5000));
    char tag[BS_IDX_TAG_LEN + 1];
    tag_of("pw.bin", tag);
    struct bs_idx_result r;
    expect(&p2, tag, 1, BS_IDX_LEASE_WON, &r);

    struct bs_metrics *m = bs_metrics_create();
    o = opts(g_url, "p3", "10.0.3.3:7000", 4, 1000);
    o.password_file = bad_path;
    node_start(&p3, &o, m);
    sleep_ms(1500);
    assert_int_equal(bs_redisidx_up(p3.x), 0);
    expect(&p3, tag, 2, BS_IDX_DOWN, &r);
    assert_true(metric(m, "blobswarm_redis_errors_total{kind=\"connect\"}") >= 1);
    assert_true(metric(m, "blobswarm_redis_errors_total{kind=\"down\"}") >= 1);
    assert_true(metric(m, "blobswarm_redis_up") == 0);
    /* the password never reaches the metrics text */
    size_t len;
    char *text = bs_metrics_render(m, &len);
    assert_null(strstr(text, "wrong"));
    free(text);
    stop(&p3);
    bs_metrics_destroy(m);
    stop(&p2);
    admin_ok("CONFIG SET requirepass %s", "", NULL);
    unlink(path);
    unlink(bad_path);
}

/* ---- Redis loses everything, freezes, stops, comes back ---------------------------------- */

static void test_flushall(void **state)
{
    (void)state;
    int a0 = atomic_load(&A.reannounced), b0 = atomic_load(&B.reannounced);
    admin_ok("FLUSHALL", NULL, NULL);
    uint64_t t0 = bs_now_ns();
    uint64_t end = t0 + (PERIOD_MS + 2 * TIMEOUT_MS + 200) * BS_NS_PER_MS;
    while (bs_now_ns() < end &&
           (atomic_load(&A.reannounced) == a0 || atomic_load(&B.reannounced) == b0))
        sleep_ms(5);
    assert_true(atomic_load(&A.reannounced) > a0);
    assert_true(atomic_load(&B.reannounced) > b0);
    printf("measure: FLUSHALL -> reannounce after %.0f ms (heartbeat period %d ms)\n",
           (double)(atomic_load(&A.last_reannounce_ns) - t0) / 1e6, PERIOD_MS);
    assert_int_equal(admin_int("EXISTS bs:v1:{nodes}:n:a", NULL, NULL), 1);
    int nodes, rank;
    sleep_ms(PERIOD_MS + 100);
    assert_int_equal(bs_redisidx_cluster(A.x, &nodes, &rank), 0);
    assert_int_equal(nodes, 2);
}

static pid_t redis_pid(void)
{
    return (pid_t)info_field("server", "process_id:", "process_id:");
}

/* A calls that runs into a dead or frozen Redis ends within 2 x timeout; then the breaker
 * answers at once. */
static void check_breaker(struct node *n, const char *what)
{
    char tag[BS_IDX_TAG_LEN + 1];
    tag_of("breaker.bin", tag);
    struct bs_idx_result r;
    uint64_t t0 = bs_now_ns();
    enum bs_idx_decision d = bs_redisidx_decide(n->x, tag, 1, &r);
    double first = ms_since(t0);
    /* the heartbeat may have hit it first: then this call is already a breaker answer */
    assert_int_equal(d, BS_IDX_DOWN);
    assert_true(first <= 2 * TIMEOUT_MS + 50);
    double worst = 0;
    for (int i = 0; i < 100; i++) {
        t0 = bs_now_ns();
        assert_int_equal(bs_redisidx_decide(n->x, tag, 1, &r), BS_IDX_DOWN);
        assert_int_equal(bs_redisidx_announce(n->x, tag, 1), -1);
        double t = ms_since(t0);
        worst = t > worst ? t : worst;
    }
    assert_true(worst < 20); /* at once: no network (20 ms leaves room for a busy CI runner) */
    assert_int_equal(bs_redisidx_up(n->x), 0);
    printf("measure: %s: first call DOWN after %.1f ms (timeout %d ms), then breaker calls "
           "<= %.3f ms\n",
           what, first, TIMEOUT_MS, worst);
}

static void test_frozen(void **state)
{
    (void)state;
    pid_t pid = redis_pid();
    assert_true(pid > 1);
    redisFree(g_admin); /* it would block on the frozen server */
    g_admin = NULL;
    assert_int_equal(kill(pid, SIGSTOP), 0);
    g_stopped = pid;
    check_breaker(&B, "frozen redis (SIGSTOP)");
    kill(pid, SIGCONT);
    g_stopped = 0;
    uint64_t t0 = bs_now_ns();
    assert_true(wait_up(&B, UP_WAIT_MS));
    printf("measure: frozen redis resumed -> up again after %.0f ms\n", ms_since(t0));
}

static void test_stopped_and_back(void **state)
{
    (void)state;
    int a0 = atomic_load(&A.reannounced);
    redisReply *r = admin("SHUTDOWN NOSAVE");
    if (r)
        freeReplyObject(r);
    redisFree(g_admin);
    g_admin = NULL;
    uint64_t end = bs_now_ns() + 5000 * BS_NS_PER_MS;
    redisContext *c;
    while (bs_now_ns() < end && (c = admin_connect()) != NULL) {
        redisFree(c);
        sleep_ms(20);
    }
    assert_null(admin_connect());
    check_breaker(&B, "stopped redis (SHUTDOWN)");

    /* redis-server again, same port, empty */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        char port[16];
        snprintf(port, sizeof(port), "%d", g_port);
        execl(g_server, g_server, "--port", port, "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "no", "--dir", g_dir, "--logfile", "redis-restarted.log",
              (char *)NULL);
        _exit(127);
    }
    g_child = pid;
    uint64_t t0 = bs_now_ns();
    end = t0 + 5000 * BS_NS_PER_MS;
    while (bs_now_ns() < end && !admin_ping())
        sleep_ms(20);
    assert_true(admin_ping());
    assert_true(wait_up(&A, UP_WAIT_MS));
    assert_true(wait_up(&B, UP_WAIT_MS));
    end = bs_now_ns() + 2000 * BS_NS_PER_MS;
    while (bs_now_ns() < end && atomic_load(&A.reannounced) == a0)
        sleep_ms(5);
    assert_true(atomic_load(&A.reannounced) > a0);
    printf("measure: redis restarted -> A up and re-announce after %.0f ms\n", ms_since(t0));
    char tag[BS_IDX_TAG_LEN + 1];
    tag_of("after-restart.bin", tag);
    struct bs_idx_result res;
    expect(&A, tag, 1, BS_IDX_LEASE_WON, &res);
    assert_int_equal(bs_redisidx_announce(A.x, tag, 1), 0);
    expect(&B, tag, 1, BS_IDX_HOLDERS, &res);
    /* the metrics saw all of it */
    assert_true(metric(g_metrics, "blobswarm_redis_errors_total{kind=\"timeout\"}") >= 1);
    assert_true(metric(g_metrics, "blobswarm_redis_errors_total{kind=\"down\"}") >= 100);
    assert_true(metric(g_metrics, "blobswarm_redis_up") == 1);
    end = bs_now_ns() + 3 * PERIOD_MS * BS_NS_PER_MS; /* B's next heartbeat sees A */
    while (bs_now_ns() < end && metric(g_metrics, "blobswarm_cluster_nodes") != 2)
        sleep_ms(10);
    assert_true(metric(g_metrics, "blobswarm_cluster_nodes") == 2);
    assert_true(metric(g_metrics, "blobswarm_redis_seconds_count") > 8000);
    stop(&A);
    stop(&B);
}

/* ---- a hostile server ------------------------------------------------------------------- */

static pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *fake_reply; /* for the next script call that is not a heartbeat */
static size_t fake_len;
static int fake_fd = -1, fake_port;
static atomic_int fake_conns;

static void fake_send(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void *fake_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    redisReader *rd = redisReaderCreate();
    char buf[4096];
    for (;;) {
        ssize_t k = recv(fd, buf, sizeof(buf), 0);
        if (k <= 0)
            break;
        redisReaderFeed(rd, buf, (size_t)k);
        void *obj;
        while (redisReaderGetReply(rd, &obj) == REDIS_OK && obj) {
            redisReply *req = obj;
            int heartbeat = 0, evalsha = 0, leave = 0;
            for (size_t i = 0; req->type == REDIS_REPLY_ARRAY && i < req->elements; i++)
                if (req->element[i]->type == REDIS_REPLY_STRING) {
                    if (strstr(req->element[i]->str, "{nodes}"))
                        heartbeat = 1;
                    if (i == 0 && strcmp(req->element[i]->str, "EVALSHA") == 0)
                        evalsha = 1;
                    if (i == 0 && (strcmp(req->element[i]->str, "DEL") == 0 ||
                                   strcmp(req->element[i]->str, "ZREM") == 0))
                        leave = 1;
                }
            freeReplyObject(obj);
            if (leave) {
                fake_send(fd, ":1\r\n", 4);
                continue;
            }
            if (heartbeat) {
                fake_send(fd, "*3\r\n:1\r\n:3\r\n:2\r\n", 16);
                continue;
            }
            pthread_mutex_lock(&fake_lock); /* a copy: the test frees its buffers */
            char *rep = fake_reply ? malloc(fake_len + 1) : NULL;
            size_t len = fake_len;
            if (rep) {
                memcpy(rep, fake_reply, len);
                rep[len] = '\0';
            }
            pthread_mutex_unlock(&fake_lock);
            if (rep && strcmp(rep, "HANG") == 0) {
            } else if (rep && strcmp(rep, "NOSCRIPT") == 0) {
                if (evalsha)
                    fake_send(fd, "-NOSCRIPT No matching script.\r\n", 31);
                else
                    fake_send(fd, "*1\r\n:1\r\n", 8);
            } else if (rep) {
                fake_send(fd, rep, len);
            }
            free(rep);
        }
    }
    redisReaderFree(rd);
    close(fd);
    return NULL;
}

static void *fake_accept(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(fake_fd, NULL, NULL);
        if (fd < 0)
            return NULL;
        atomic_fetch_add(&fake_conns, 1);
        pthread_t t;
        if (pthread_create(&t, NULL, fake_conn, (void *)(intptr_t)fd) == 0)
            pthread_detach(t);
        else
            close(fd);
    }
}

static void fake_set(const char *s, size_t n)
{
    pthread_mutex_lock(&fake_lock);
    fake_reply = s;
    fake_len = n;
    pthread_mutex_unlock(&fake_lock);
}

static void test_hostile_server(void **state)
{
    (void)state;
    fake_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fake_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fake_fd, 16), 0);
    socklen_t sl = sizeof(sa);
    getsockname(fake_fd, (struct sockaddr *)&sa, &sl);
    fake_port = ntohs(sa.sin_port);
    pthread_t acc;
    assert_int_equal(pthread_create(&acc, NULL, fake_accept, NULL), 0);
    pthread_detach(acc);

    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", fake_port);
    struct bs_metrics *m = bs_metrics_create();
    struct node h;
    struct bs_redisidx_opts o = opts(url, "h", "10.0.4.1:7000", 4, 1000);
    node_start(&h, &o, m);
    assert_true(wait_up(&h, 5000));
    int nodes, rank;
    assert_int_equal(bs_redisidx_cluster(h.x, &nodes, &rank), 0);
    assert_int_equal(nodes, 3);
    assert_int_equal(rank, 2);

    char *huge_member = malloc(100100), *huge_bulk = malloc(2100000);
    int hm = snprintf(huge_member, 100100, "*2\r\n:0\r\n*1\r\n$100000\r\n");
    memset(huge_member + hm, 'q', 100000);
    memcpy(huge_member + hm + 100000, "\r\n", 2);
    int hb = snprintf(huge_bulk, 2100000, "$2000000\r\n");
    memset(huge_bulk + hb, 'q', 2000000);
    memcpy(huge_bulk + hb + 2000000, "\r\n", 2);
    static const char nine[] = "*2\r\n:0\r\n*9\r\n"
                               "$13\r\nm1 10.0.0.1:1\r\n$13\r\nm2 10.0.0.1:2\r\n"
                               "$13\r\nm3 10.0.0.1:3\r\n$13\r\nm4 10.0.0.1:4\r\n"
                               "$13\r\nm5 10.0.0.1:5\r\n$13\r\nm6 10.0.0.1:6\r\n"
                               "$13\r\nm7 10.0.0.1:7\r\n$13\r\nm8 10.0.0.1:8\r\n"
                               "$13\r\nm9 10.0.0.1:9\r\n";
    static const char mixed[] = "*2\r\n:0\r\n*6\r\n$7\r\ngarbage\r\n$16\r\nbad!! 1.2.3.4:55\r\n"
                                ":5\r\n*1\r\n:1\r\n$-1\r\n$14\r\nn1 10.0.0.1:80\r\n";
    const struct {
        const char *name, *reply;
        size_t len;
        enum bs_idx_decision want;
        int nholders;
        int closes; /* the connection is dropped: wait for the index to come back */
    } cases[] = {
        {"a string", "$5\r\nhello\r\n", 0, BS_IDX_DOWN, 0, 0},
        {"an empty array", "*0\r\n", 0, BS_IDX_DOWN, 0, 0},
        {"nil", "$-1\r\n", 0, BS_IDX_DOWN, 0, 0},
        {"holders with junk", mixed, sizeof(mixed) - 1, BS_IDX_HOLDERS, 1, 0},
        {"holders not an array", "*2\r\n:0\r\n:7\r\n", 0, BS_IDX_DOWN, 0, 0},
        {"nine holders", nine, sizeof(nine) - 1, BS_IDX_HOLDERS, 4, 0},
        {"only this node", "*2\r\n:0\r\n*1\r\n$13\r\nh 10.0.4.1:70\r\n", 0, BS_IDX_DOWN, 0, 0},
        {"100 kB member", huge_member, (size_t)hm + 100002, BS_IDX_DOWN, 0, 0},
        {"bad lessee", "*3\r\n:2\r\n$3\r\nfoo\r\n:5\r\n", 0, BS_IDX_DOWN, 0, 0},
        {"lessee nil", "*3\r\n:2\r\n$-1\r\n:5\r\n", 0, BS_IDX_DOWN, 0, 0},
        {"huge lease left", "*3\r\n:2\r\n$12\r\nz 10.0.0.2:1\r\n:999999999999\r\n", 0,
         BS_IDX_LEASE_HELD, 0, 0},
        {"unknown decision", "*1\r\n:9\r\n", 0, BS_IDX_DOWN, 0, 0},
        {"won with extras", "*2\r\n:1\r\n:1\r\n", 0, BS_IDX_DOWN, 0, 0},
        {"ERR reply", "-ERR nope\r\n", 0, BS_IDX_DOWN, 0, 0},
        {"two replies for one", "*1\r\n:1\r\n*1\r\n:1\r\n", 0, BS_IDX_LEASE_WON, 0, 0},
        {"... out of step", "*1\r\n:1\r\n", 0, BS_IDX_DOWN, 0, 1},
        {"NOSCRIPT then EVAL", "NOSCRIPT", 0, BS_IDX_LEASE_WON, 0, 0},
        {"LOADING reply", "-LOADING loading\r\n", 0, BS_IDX_DOWN, 0, 1},
        {"MOVED reply", "-MOVED 3999 127.0.0.1:6381\r\n", 0, BS_IDX_DOWN, 0, 1},
        {"2e9 elements", "*2000000000\r\n", 0, BS_IDX_DOWN, 0, 1},
        {"nesting", "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", 0, BS_IDX_DOWN,
         0, 1},
        {"not RESP", "hello world\r\n", 0, BS_IDX_DOWN, 0, 1},
        {"2 MB bulk", huge_bulk, (size_t)hb + 2000002, BS_IDX_DOWN, 0, 1},
        {"no answer", "HANG", 0, BS_IDX_DOWN, 0, 1},
    };
    char tag[BS_IDX_TAG_LEN + 1];
    tag_of("hostile-server.bin", tag);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fake_set(cases[i].reply, cases[i].len ? cases[i].len : strlen(cases[i].reply));
        struct bs_idx_result r;
        memset(&r, 0x77, sizeof(r));
        uint64_t t0 = bs_now_ns();
        enum bs_idx_decision d = bs_redisidx_decide(h.x, tag, i, &r);
        double t = ms_since(t0);
        if (d != cases[i].want || r.d != d)
            fail_msg("%s: %s, expected %s", cases[i].name, dname(d), dname(cases[i].want));
        if (r.nholders != cases[i].nholders)
            fail_msg("%s: %d holders, expected %d", cases[i].name, r.nholders, cases[i].nholders);
        assert_true(t <= 2 * TIMEOUT_MS + 50);
        for (int k = 0; k < r.nholders; k++) {
            assert_true(strlen(r.holders[k].node) < BS_IDX_NODE_MAX);
            assert_true(strlen(r.holders[k].addr) < BS_IDX_ADDR_MAX);
        }
        if (d == BS_IDX_HOLDERS && cases[i].nholders == 1)
            assert_string_equal(r.holders[0].node, "n1");
        if (d == BS_IDX_LEASE_HELD) {
            assert_int_equal(r.lease_left_ms, 1000);
            assert_string_equal(r.lessee.node, "z");
        }
        if (d == BS_IDX_DOWN) {
            assert_int_equal(r.nholders, 0);
            assert_string_equal(r.lessee.node, "");
        }
        if (cases[i].closes) {
            assert_int_equal(bs_redisidx_up(h.x), 0);
            fake_set(NULL, 0);
            if (!wait_up(&h, UP_WAIT_MS))
                fail_msg("%s: not up again", cases[i].name);
        } else if (!bs_redisidx_up(h.x)) {
            fail_msg("%s: the connection was dropped", cases[i].name);
        }
    }
    assert_true(metric(m, "blobswarm_redis_errors_total{kind=\"reply\"}") >= 15);
    assert_true(metric(m, "blobswarm_redis_errors_total{kind=\"timeout\"}") >= 1);
    printf("measure: hostile server: %d connections for %zu cases\n", atomic_load(&fake_conns),
           sizeof(cases) / sizeof(cases[0]));
    fake_set(NULL, 0);
    stop(&h);
    shutdown(fake_fd, SHUT_RDWR); /* ends the accept thread */
    close(fake_fd);
    bs_metrics_destroy(m);
    free(huge_member);
    free(huge_bulk);
}

/* ---- main ------------------------------------------------------------------------------- */

static int teardown(void **state)
{
    (void)state;
    if (g_stopped > 0)
        kill(g_stopped, SIGCONT);
    if (g_admin) {
        redisFree(g_admin);
        g_admin = NULL;
    }
    if (g_child > 0) {
        redisContext *c = admin_connect();
        if (c) {
            redisReply *r = redisCommand(c, "SHUTDOWN NOSAVE");
            if (r)
                freeReplyObject(r);
            redisFree(c);
        }
        uint64_t end = bs_now_ns() + 5000 * BS_NS_PER_MS;
        while (waitpid(g_child, NULL, WNOHANG) == 0 && bs_now_ns() < end)
            sleep_ms(20);
        kill(g_child, SIGKILL);
        waitpid(g_child, NULL, 0);
    }
    return 0;
}

int main(void)
{
    g_url = getenv("BS_REDIS_URL");
    g_server = getenv("BS_REDIS_SERVER");
    g_dir = getenv("BS_REDIS_DIR");
    const char *p = g_url ? strrchr(g_url, ':') : NULL;
    if (!g_url || !g_server || !g_dir || !p) {
        fprintf(stderr, "test_redisidx: set BS_REDIS_URL, BS_REDIS_SERVER and BS_REDIS_DIR "
                        "(tests/integration/redisidx.sh does)\n");
        return 2;
    }
    g_port = atoi(p + 1);
    setvbuf(stdout, NULL, _IOLBF, 0);
    g_metrics = bs_metrics_create();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cluster),
        cmocka_unit_test(test_lease_race),
        cmocka_unit_test(test_trim),
        cmocka_unit_test(test_announce_self),
        cmocka_unit_test(test_lease_expiry_release),
        cmocka_unit_test(test_hostile_data),
        cmocka_unit_test(test_script_flush),
        cmocka_unit_test(test_every_key_has_ttl),
        cmocka_unit_test(test_measure),
        cmocka_unit_test(test_password),
        cmocka_unit_test(test_flushall),
        cmocka_unit_test(test_frozen),
        cmocka_unit_test(test_stopped_and_back),
        cmocka_unit_test(test_hostile_server),
    };
    int rc = cmocka_run_group_tests(tests, NULL, teardown);
    bs_metrics_destroy(g_metrics);
    return rc;
}
