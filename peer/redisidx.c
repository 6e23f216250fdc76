/* The cluster index in Redis (see redisidx.h): the key layout and Lua scripts, one hiredis
 * connection behind a gate with deadlines, a circuit breaker with jittered backoff, and the
 * heartbeat thread that (re)connects, keeps this node in the registry and asks for a
 * re-announce when Redis lost it. Replies are parsed as untrusted input. It does not follow
 * Redis Cluster redirects (MOVED/ASK end the call like any other failure) and does not know
 * what a chunk is beyond its number.
 *
 * Time: the scripts read Redis' own clock (TIME), never the agents' clocks, so "newest holder"
 * and "heartbeat older than node_ttl" mean the same thing on every node however skewed they
 * are. I/O: commands are formatted by hiredis (redisFormatCommandArgv) and sent with
 * send(MSG_NOSIGNAL) under poll() against a deadline; replies are read with recv() into the
 * hiredis reader. Bytes in and out are therefore counted exactly, no call blocks past its
 * deadline, and a dead socket never raises SIGPIPE. */
#include "redisidx.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "clock.h"
#include "log.h"
#include "metrics.h"

/* Limits. */
#define IDX_HOST_MAX         256     /* host name or address in the URL */
#define IDX_PASSWORD_MAX     512     /* bytes of the Redis password */
#define IDX_DB_MAX           65535   /* highest database number accepted in the URL */
#define IDX_PORT_DEFAULT     6379    /* when the URL names none */
#define IDX_TIMEOUT_MIN_MS   10      /* timeout_ms bounds */
#define IDX_TIMEOUT_MAX_MS   60000   /* */
#define IDX_NODE_TTL_MAX_MS  3600000 /* node_ttl_ms: at least 3 x timeout_ms, at most this */
#define IDX_HOLDER_TTL_MIN   1000    /* holder_ttl_ms bounds */
#define IDX_HOLDER_TTL_MAX   (30L * 24 * 3600 * 1000)
#define IDX_LEASE_MIN_MS     10 /* lease_ms bounds */
#define IDX_LEASE_MAX_MS     3600000
#define IDX_BACKOFF_FIRST_MS 500        /* breaker: first backoff, doubled per failure */
#define IDX_BACKOFF_MAX_MS   10000      /* ... up to this; each wait is jittered in [b/2, b] */
#define IDX_REPLY_BYTES_MAX  (1u << 20) /* bytes one round trip may receive */
#define IDX_ARRAY_MAX        4096       /* elements of any reply array */
#define IDX_BATCH            256        /* chunks per pipelined round trip (holders) */
#define IDX_PRUNE_MAX        "256"      /* dead registry entries removed per heartbeat */
#define IDX_KEY_MAX          128
#define IDX_MEMBER_MAX       (BS_IDX_NODE_MAX + BS_IDX_ADDR_MAX) /* "<node> <addr>" + NUL */
#define IDX_ARGS_MAX         10                                  /* words of one command */
#define IDX_LOG_EVERY_MS     10000

#define KEY_PREFIX "bs:v1:"

/* ---- scripts ---------------------------------------------------------------------------- */

/* A holder or lease member is "<node> <addr>"; the scripts skip members of any other shape
 * (the C side checks them again, strictly). ARGV numbers are decimal strings. */
#define LUA_MEMBER_OK(m) "#" m " <= 127 and string.find(" m ", '^[%w%._%-]+ [%w%.:%[%]]+$')"
#define LUA_NOW                                                                                    \
    "if redis.replicate_commands then redis.replicate_commands() end\n"                            \
    "local t = redis.call('TIME')\n"                                                               \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/* KEYS holders, lease; ARGV max_holders, node, member, lease_ms.
 * -> {0, {member...}} | {1} | {2, lessee, pttl}. A lease left by this node (an earlier run
 * under the same name) is this node's: renewed and won. */
static const char LUA_DECIDE[] =
    "local pfx = ARGV[2] .. ' '\n"
    "local out = {}\n"
    "for _, m in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do\n"
    "  if string.sub(m, 1, #pfx) ~= pfx and " LUA_MEMBER_OK(
        "m") " then out[#out + 1] = m end\n"
             "end\n"
             "if #out > 0 then return {0, out} end\n"
             "if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return {1} end\n"
             "local v = redis.call('GET', KEYS[2])\n"
             "if v and string.sub(v, 1, #pfx) == pfx then\n"
             "  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])\n"
             "  return {1}\n"
             "end\n"
             "local left = redis.call('PTTL', KEYS[2])\n"
             "if left < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[4]); left = tonumber(ARGV[4]) "
             "end\n"
             "return {2, v, left}\n";

/* KEYS holders, lease; ARGV member, max_holders, holder_ttl_ms, node. Adds this node as the
 * newest holder (dropping its entries under another address), keeps the newest max_holders,
 * refreshes the TTL and drops this node's lease. -> 1 */
static const char LUA_ANNOUNCE[] = LUA_NOW
    "local pfx = ARGV[4] .. ' '\n"
    "redis.call('ZADD', KEYS[1], now, ARGV[1])\n"
    "redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))\n"
    "for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do\n"
    "  if m ~= ARGV[1] and string.sub(m, 1, #pfx) == pfx then redis.call('ZREM', KEYS[1], m) end\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "local l = redis.call('GET', KEYS[2])\n"
    "if l and string.sub(l, 1, #pfx) == pfx then redis.call('DEL', KEYS[2]) end\n"
    "return 1\n";

/* KEYS lease; ARGV member. -> 1 dropped, 0 not ours */
static const char LUA_RELEASE[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

/* KEYS node key, all (node -> last heartbeat), join (node -> join time); ARGV node, addr,
 * node_ttl_ms, prune_max. -> {existed (1 same address, 2 another address, 0 missing),
 * cluster size, rank by join order}. */
static const char LUA_HEARTBEAT[] = LUA_NOW
    "local ttl = tonumber(ARGV[3])\n"
    "local old = redis.call('GET', KEYS[1])\n"
    "local existed = 0\n"
    "if old == ARGV[2] then existed = 1 elseif old then existed = 2 end\n"
    "redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)\n"
    "local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - ttl), 'LIMIT', 0,"
    " tonumber(ARGV[4]))\n"
    "if #dead > 0 then\n"
    "  redis.call('ZREM', KEYS[2], unpack(dead))\n"
    "  redis.call('ZREM', KEYS[3], unpack(dead))\n"
    "end\n"
    "redis.call('ZADD', KEYS[2], now, ARGV[1])\n"
    "redis.call('ZADD', KEYS[3], 'NX', now, ARGV[1])\n"
    "redis.call('PEXPIRE', KEYS[2], ttl)\n"
    "redis.call('PEXPIRE', KEYS[3], ttl)\n"
    "return {existed, redis.call('ZCARD', KEYS[2]), redis.call('ZRANK', KEYS[3], ARGV[1])}\n";

enum script { S_DECIDE, S_ANNOUNCE, S_RELEASE, S_HEARTBEAT, S_COUNT };
static const char *const script_src[S_COUNT] = {LUA_DECIDE, LUA_ANNOUNCE, LUA_RELEASE,
                                                LUA_HEARTBEAT};

/* ---- the object ------------------------------------------------------------------------ */

/* How one exchange ended. IO_REPLY_ERR (a command error) and IO_NOMEM (nothing was sent)
 * keep the connection; the others close it and open the breaker. */
enum io { IO_OK = 0, IO_REPLY_ERR, IO_NOMEM, IO_FATAL_REPLY, IO_TIMEOUT, IO_LOST, IO_PROTO };

struct bs_redisidx {
    char host[IDX_HOST_MAX];
    int port, db;
    char password[IDX_PASSWORD_MAX];
    char node[BS_IDX_NODE_MAX];
    char addr[BS_IDX_ADDR_MAX];
    char member[IDX_MEMBER_MAX]; /* "<node> <addr>" */
    char node_key[IDX_KEY_MAX];
    char max_s[8], node_ttl_s[24], holder_ttl_s[24], lease_s[24];
    long timeout_ms, node_ttl_ms, lease_ms;
    int max_holders;
    char sha[S_COUNT][41];

    pthread_mutex_t lock; /* everything below */
    pthread_cond_t cv;    /* the gate was released, the state changed, or stop */
    redisContext *c;      /* NULL while down (or while the heartbeat reconnects) */
    int busy;             /* a call owns c */
    uint64_t down_until_ns;
    long backoff_ms; /* 0 after a success */
    int stop;
    int have_cluster, nodes, rank;
    int contacted;          /* a heartbeat succeeded once */
    int reannounce_pending; /* wanted, waiting for a callback to be set */
    void (*reannounce)(void *arg);
    void *reannounce_arg;
    int in_callback; /* the heartbeat thread is running reannounce (set_reannounce waits) */
    int passive;     /* a client (a tool), not an agent: no registry entry, no heartbeat */
    pthread_t hb;
    int hb_started;
    atomic_int up;
    struct bs_log_limit log_down, log_bad, log_conflict;

    struct bs_metric *m_commands, *m_bytes, *m_errors, *m_seconds, *m_nodes, *m_up;
};

/* ---- small rules ------------------------------------------------------------------------ */

static int node_ok(const char *s, size_t n)
{
    if (n < 1 || n >= BS_IDX_NODE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

/* "IPv4:port" or "[IPv6]:port", port 1..65535. */
static int addr_ok(const char *s, size_t n)
{
    char host[BS_IDX_ADDR_MAX];
    if (n < 3 || n >= BS_IDX_ADDR_MAX)
        return 0;
    const char *colon = memrchr(s, ':', n);
    if (!colon)
        return 0;
    size_t hl = (size_t)(colon - s), pl = n - hl - 1;
    if (pl < 1 || pl > 5)
        return 0;
    long port = 0;
    for (size_t i = 0; i < pl; i++) {
        if (colon[1 + i] < '0' || colon[1 + i] > '9')
            return 0;
        port = port * 10 + (colon[1 + i] - '0');
    }
    if (port < 1 || port > 65535)
        return 0;
    unsigned char buf[16];
    if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']') {
        memcpy(host, s + 1, hl - 2);
        host[hl - 2] = '\0';
        return inet_pton(AF_INET6, host, buf) == 1;
    }
    memcpy(host, s, hl);
    host[hl] = '\0';
    return inet_pton(AF_INET, host, buf) == 1;
}

/* "<node> <addr>" into p. 0 or -1. */
static int peer_parse(const char *s, size_t n, struct bs_peer *p)
{
    const char *sp = memchr(s, ' ', n);
    if (!sp)
        return -1;
    size_t nl = (size_t)(sp - s), al = n - nl - 1;
    if (!node_ok(s, nl) || !addr_ok(sp + 1, al))
        return -1;
    memcpy(p->node, s, nl);
    p->node[nl] = '\0';
    memcpy(p->addr, sp + 1, al);
    p->addr[al] = '\0';
    return 0;
}

static int tag_ok(const char *tag)
{
    if (!tag)
        return 0;
    for (int i = 0; i < BS_IDX_TAG_LEN; i++)
        if (!((tag[i] >= '0' && tag[i] <= '9') || (tag[i] >= 'a' && tag[i] <= 'f')))
            return 0;
    return tag[BS_IDX_TAG_LEN] == '\0';
}

static void chunk_key(char out[IDX_KEY_MAX], const char *tag, char kind, uint64_t chunk)
{
    snprintf(out, IDX_KEY_MAX, KEY_PREFIX "{%s}:%c:%" PRIu64, tag, kind, chunk);
}

void bs_redisidx_tag(const char *account, const char *container, const char *blob, const char *etag,
                     char tag[BS_IDX_TAG_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    const char *f[4] = {account, container, blob, etag};
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    for (int i = 0; ok && i < 4; i++) {
        const char *s = f[i] ? f[i] : "";
        ok = EVP_DigestUpdate(ctx, s, strlen(s)) && EVP_DigestUpdate(ctx, "\n", 1);
    }
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) && mdlen >= BS_IDX_TAG_LEN / 2;
    EVP_MD_CTX_free(ctx);
    if (!ok) /* allocation failure: a tag no blob version has (all zero) */
        memset(md, 0, sizeof(md));
    for (int i = 0; i < BS_IDX_TAG_LEN / 2; i++) {
        tag[2 * i] = hex[md[i] >> 4];
        tag[2 * i + 1] = hex[md[i] & 15];
    }
    tag[BS_IDX_TAG_LEN] = '\0';
}

static int sha1_hex(const char *s, char out[41])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_Digest(s, strlen(s), md, &n, EVP_sha1(), NULL) || n != 20)
        return -1;
    for (unsigned i = 0; i < 20; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[40] = '\0';
    return 0;
}

/* ---- URL and options -------------------------------------------------------------------- */

static int parse_uint(const char *s, size_t n, long max, long *out)
{
    long v = 0;
    if (n < 1 || n > 9)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

int bs_redis_url_parse(const char *url, char *host, size_t hostsz, int *port, char *password,
                       size_t pwsz, int *db, char *err, size_t errsz)
{
    static const char scheme[] = "redis://";
    const size_t sl = sizeof(scheme) - 1;
    if (!url || !*url) {
        snprintf(err, errsz, "redis URL: empty");
        return -1;
    }
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f) {
            snprintf(err, errsz, "redis URL: contains a space or a control character");
            return -1;
        }
    if (strncmp(url, "rediss://", 9) == 0) {
        snprintf(err, errsz, "redis URL: TLS (rediss://) is not supported");
        return -1;
    }
    if (strncmp(url, scheme, sl) != 0) {
        snprintf(err, errsz, "redis URL: must start with redis://");
        return -1;
    }
    const char *rest = url + sl;
    /* The password may hold ':' '@' '/': the host part starts after the last '@'. */
    const char *at = strrchr(rest, '@');
    password[0] = '\0';
    if (at) {
        if (rest[0] != ':') {
            snprintf(err, errsz,
                     "redis URL: a user name is not supported (use redis://:password@host:port)");
            return -1;
        }
        size_t pl = (size_t)(at - rest - 1);
        if (pl == 0) {
            snprintf(err, errsz, "redis URL: empty password");
            return -1;
        }
        if (pl >= pwsz) {
            snprintf(err, errsz, "redis URL: password longer than %zu bytes", pwsz - 1);
            return -1;
        }
        memcpy(password, rest + 1, pl);
        password[pl] = '\0';
        rest = at + 1;
    }
    const char *slash = strchr(rest, '/');
    size_t hpl = slash ? (size_t)(slash - rest) : strlen(rest);
    const char *hp = rest, *portp = NULL;
    size_t hl;
    if (hpl > 0 && hp[0] == '[') { /* [IPv6] */
        const char *close = memchr(hp, ']', hpl);
        if (!close) {
            snprintf(err, errsz, "redis URL: '[' without ']'");
            goto out_fail;
        }
        hp++;
        hl = (size_t)(close - hp);
        unsigned char buf[16];
        char tmp[64];
        if (hl == 0 || hl >= sizeof(tmp)) {
            snprintf(err, errsz, "redis URL: bad IPv6 address");
            goto out_fail;
        }
        memcpy(tmp, hp, hl);
        tmp[hl] = '\0';
        if (inet_pton(AF_INET6, tmp, buf) != 1) {
            snprintf(err, errsz, "redis URL: bad IPv6 address");
            goto out_fail;
        }
        const char *after = close + 1;
        if (after < rest + hpl) {
            if (*after != ':') {
                snprintf(err, errsz, "redis URL: junk after ']'");
                goto out_fail;
            }
            portp = after + 1;
        }
    } else {
        const char *colon = memchr(hp, ':', hpl);
        hl = colon ? (size_t)(colon - hp) : hpl;
        if (colon)
            portp = colon + 1;
        for (size_t i = 0; i < hl; i++) {
            char ch = hp[i];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_')) {
                snprintf(err, errsz, "redis URL: bad character in the host name");
                goto out_fail;
            }
        }
    }
    if (hl == 0) {
        snprintf(err, errsz, "redis URL: no host");
        goto out_fail;
    }
    if (hl >= hostsz) {
        snprintf(err, errsz, "redis URL: host longer than %zu bytes", hostsz - 1);
        goto out_fail;
    }
    memcpy(host, hp, hl);
    host[hl] = '\0';
    long v = IDX_PORT_DEFAULT;
    if (portp && (parse_uint(portp, (size_t)(rest + hpl - portp), 65535, &v) != 0 || v == 0)) {
        snprintf(err, errsz, "redis URL: the port must be a number in 1..65535");
        goto out_fail;
    }
    *port = (int)v;
    v = 0;
    if (slash && slash[1] && parse_uint(slash + 1, strlen(slash + 1), IDX_DB_MAX, &v) != 0) {
        snprintf(err, errsz, "redis URL: the database must be a number in 0..%d", IDX_DB_MAX);
        goto out_fail;
    }
    *db = (int)v;
    return 0;

out_fail:
    OPENSSL_cleanse(password, pwsz);
    return -1;
}

/* The first line of the password file (without its line end) into pw. 0 or -1. */
static int password_load(const char *path, char *pw, size_t pwsz, char *err, size_t errsz)
{
    char buf[IDX_PASSWORD_MAX + 2];
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(err, errsz, "redis password file %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = -1;
    if (!fgets(buf, sizeof(buf), f)) {
        snprintf(err, errsz, "redis password file %s: empty or unreadable", path);
        goto out_close;
    }
    size_t n = strcspn(buf, "\r\n");
    if (n == 0 || n >= pwsz) {
        snprintf(err, errsz, "redis password file %s: the first line must hold 1..%zu bytes", path,
                 pwsz - 1);
        goto out_close;
    }
    memcpy(pw, buf, n);
    pw[n] = '\0';
    rc = 0;
out_close:
    OPENSSL_cleanse(buf, sizeof(buf));
    fclose(f);
    return rc;
}

/* ---- metrics and state ------------------------------------------------------------------ */

static void set_up(struct bs_redisidx *x, int up)
{
    atomic_store(&x->up, up);
    bs_metric_set(x->m_up, NULL, up);
}

static void count_error(struct bs_redisidx *x, const char *kind)
{
    bs_metric_add(x->m_errors, kind, 1);
}

/* A reply or member Redis should never send: counted, logged now and then, skipped. */
static void bad_reply(struct bs_redisidx *x, const char *what)
{
    unsigned long long quiet = 0;
    count_error(x, "reply");
    if (bs_log_allow(&x->log_bad, IDX_LOG_EVERY_MS, &quiet))
        bs_log(BS_LOG_WARN, "redisidx", "event=bad_reply what=\"%s\" suppressed=%llu", what, quiet);
}

/* Closes the connection and opens the breaker. Caller holds x->lock. */
static void mark_down_locked(struct bs_redisidx *x, const char *why)
{
    if (x->c) {
        redisFree(x->c);
        x->c = NULL;
    }
    x->backoff_ms = x->backoff_ms ? x->backoff_ms * 2 : IDX_BACKOFF_FIRST_MS;
    if (x->backoff_ms > IDX_BACKOFF_MAX_MS)
        x->backoff_ms = IDX_BACKOFF_MAX_MS;
    long wait_ms = x->backoff_ms / 2 + (long)(bs_random() % (uint64_t)(x->backoff_ms / 2 + 1));
    x->down_until_ns = bs_now_ns() + (uint64_t)wait_ms * BS_NS_PER_MS;
    int was_up = atomic_load(&x->up);
    set_up(x, 0);
    unsigned long long quiet = 0;
    if ((was_up || x->backoff_ms == IDX_BACKOFF_FIRST_MS) &&
        bs_log_allow(&x->log_down, IDX_LOG_EVERY_MS, &quiet))
        bs_log(BS_LOG_WARN, "redisidx",
               "event=redis_down host=%s port=%d reason=\"%s\" retry_ms=%ld", x->host, x->port, why,
               wait_ms);
    pthread_cond_broadcast(&x->cv); /* the heartbeat reconnects after the backoff */
}

/* ---- one exchange ----------------------------------------------------------------------- */

/* Milliseconds to poll before deadline_ns, or -1 when it has passed. */
static int ms_left(uint64_t deadline_ns)
{
    uint64_t now = bs_now_ns();
    if (now >= deadline_ns)
        return -1;
    uint64_t ms = (deadline_ns - now + BS_NS_PER_MS - 1) / BS_NS_PER_MS;
    return ms > 60000 ? 60000 : (int)ms;
}

/* Sends buf (n formatted commands) and reads n replies into rep by deadline_ns. On anything
 * but IO_OK the replies read so far are freed and rep[] is all NULL. An error reply is not a
 * failure here (the caller decides). */
static enum io exchange(struct bs_redisidx *x, redisContext *c, const char *buf, size_t len, int n,
                        redisReply **rep, uint64_t deadline_ns)
{
    uint64_t t0 = bs_now_ns();
    size_t off = 0, in = 0;
    enum io rc = IO_OK;
    int got = 0;
    char rbuf[16384];

    for (int i = 0; i < n; i++)
        rep[i] = NULL;
    /* Bytes left from the last exchange, buffered or on the socket, are replies nobody asked
     * for: the connection is out of step (or closed by the server). */
    struct pollfd idle = {.fd = c->fd, .events = POLLIN};
    if (c->reader->pos < c->reader->len) {
        rc = IO_PROTO;
        goto out;
    }
    if (poll(&idle, 1, 0) != 0) {
        char b;
        rc = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0 ? IO_PROTO : IO_LOST;
        goto out;
    }
    while (off < len) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
        int left = ms_left(deadline_ns);
        if (left < 0) {
            rc = IO_TIMEOUT;
            goto out;
        }
        int pr = poll(&pfd, 1, left);
        if (pr < 0 && errno != EINTR) {
            rc = IO_LOST;
            goto out;
        }
        if (pr <= 0)
            continue;
        ssize_t w = send(c->fd, buf + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
            rc = IO_LOST;
            goto out;
        }
        if (w > 0)
            off += (size_t)w;
    }
    while (got < n) {
        void *r = NULL;
        if (redisReaderGetReply(c->reader, &r) != REDIS_OK) {
            rc = IO_PROTO;
            goto out;
        }
        if (r) {
            rep[got++] = r;
            continue;
        }
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int left = ms_left(deadline_ns);
        if (left < 0) {
            rc = IO_TIMEOUT;
            goto out;
        }
        int pr = poll(&pfd, 1, left);
        if (pr < 0 && errno != EINTR) {
            rc = IO_LOST;
            goto out;
        }
        if (pr <= 0)
            continue;
        ssize_t k = recv(c->fd, rbuf, sizeof(rbuf), MSG_DONTWAIT);
        if (k == 0 || (k < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
            rc = IO_LOST;
            goto out;
        }
        if (k < 0)
            continue;
        in += (size_t)k;
        if (in > IDX_REPLY_BYTES_MAX) {
            rc = IO_PROTO;
            goto out;
        }
        if (redisReaderFeed(c->reader, rbuf, (size_t)k) != REDIS_OK) {
            rc = IO_PROTO;
            goto out;
        }
    }
out:
    bs_metric_add(x->m_commands, NULL, off == len ? n : 0);
    bs_metric_add(x->m_bytes, "out", (double)off);
    bs_metric_add(x->m_bytes, "in", (double)in);
    bs_metric_observe(x->m_seconds, NULL, (double)(bs_now_ns() - t0) / 1e9);
    if (rc != IO_OK)
        for (int i = 0; i < got; i++) {
            freeReplyObject(rep[i]);
            rep[i] = NULL;
        }
    return rc;
}

/* An error reply that says the server, not this call, is in trouble (loading, busy script,
 * redirect, read-only replica, lost authentication...): the connection is closed and the
 * breaker opens. Plain command errors (ERR, WRONGTYPE: bad data under one key) are not. */
static int error_is_fatal(const redisReply *r)
{
    static const char *const mild[] = {"ERR ", "WRONGTYPE ", "NOSCRIPT "};
    for (size_t i = 0; i < sizeof(mild) / sizeof(mild[0]); i++)
        if (r->len >= strlen(mild[i]) && strncmp(r->str, mild[i], strlen(mild[i])) == 0)
            return 0;
    return 1;
}

/* Appends one formatted command to *buf (malloc'd, grown). 0 or -1. */
static int append_cmd(char **buf, size_t *len, int argc, const char **argv, const size_t *lens)
{
    char *cmd = NULL;
    int n = redisFormatCommandArgv(&cmd, argc, argv, lens);
    if (n < 0 || !cmd)
        return -1;
    char *nb = realloc(*buf, *len + (size_t)n);
    if (!nb) {
        redisFreeCommand(cmd);
        return -1;
    }
    memcpy(nb + *len, cmd, (size_t)n);
    *buf = nb;
    *len += (size_t)n;
    redisFreeCommand(cmd);
    return 0;
}

/* Runs n commands (one pipeline) on c; rep[] gets n replies on IO_OK or IO_REPLY_ERR (the
 * first error reply decides), all NULL otherwise. Counts errors. */
static enum io run(struct bs_redisidx *x, redisContext *c, int n, const int *argc,
                   const char **const *argv, const size_t *const *lens, redisReply **rep,
                   uint64_t deadline_ns)
{
    char *buf = NULL;
    size_t len = 0;
    for (int i = 0; i < n; i++)
        if (append_cmd(&buf, &len, argc[i], argv[i], lens[i]) != 0) {
            free(buf);
            for (int j = 0; j < n; j++)
                rep[j] = NULL;
            return IO_NOMEM; /* this call fails, the link is fine */
        }
    enum io rc = exchange(x, c, buf, len, n, rep, deadline_ns);
    free(buf);
    if (rc == IO_TIMEOUT)
        count_error(x, "timeout");
    else if (rc == IO_LOST)
        count_error(x, "connect");
    else if (rc == IO_PROTO)
        bad_reply(x, "protocol error or oversized reply");
    if (rc != IO_OK)
        return rc;
    for (int i = 0; i < n; i++)
        if (rep[i]->type == REDIS_REPLY_ERROR) {
            int nos = rep[i]->len >= 8 && strncmp(rep[i]->str, "NOSCRIPT", 8) == 0;
            if (!nos)
                count_error(x, "reply");
            if (error_is_fatal(rep[i]))
                rc = IO_FATAL_REPLY;
            else if (rc == IO_OK)
                rc = IO_REPLY_ERR;
        }
    return rc;
}

static void free_replies(redisReply **rep, int n)
{
    for (int i = 0; i < n; i++)
        if (rep[i]) {
            freeReplyObject(rep[i]);
            rep[i] = NULL;
        }
}

/* One script call: EVALSHA, and EVAL when Redis does not know the script (restarted or
 * flushed with SCRIPT FLUSH). *out gets the reply on IO_OK (caller frees). */
static enum io eval(struct bs_redisidx *x, redisContext *c, enum script s, int nkeys,
                    const char *const *keys, int nargs, const char *const *args, redisReply **out,
                    uint64_t deadline_ns)
{
    const char *argv[IDX_ARGS_MAX];
    size_t lens[IDX_ARGS_MAX];
    char nk[4];
    int argc = 3 + nkeys + nargs;
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[0] = "EVALSHA";
    argv[1] = x->sha[s];
    argv[2] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[3 + i] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[3 + nkeys + i] = args[i];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    const char **pargv = argv;
    const size_t *plens = lens;
    *out = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        redisReply *r = NULL;
        enum io rc = run(x, c, 1, &argc, (const char **const *)&pargv, &plens, &r, deadline_ns);
        if (rc == IO_REPLY_ERR && attempt == 0 && r && r->len >= 8 &&
            strncmp(r->str, "NOSCRIPT", 8) == 0) {
            freeReplyObject(r);
            argv[0] = "EVAL";
            argv[1] = script_src[s];
            lens[0] = 4;
            lens[1] = strlen(script_src[s]);
            continue;
        }
        if (rc != IO_OK) {
            if (r)
                freeReplyObject(r);
            return rc;
        }
        *out = r;
        return IO_OK;
    }
    return IO_REPLY_ERR;
}

/* ---- the gate --------------------------------------------------------------------------- */

/* Takes the connection for a call that started at t0: waits for another call to finish until
 * t0 + timeout. NULL when the index is down (at once) or the wait timed out (both counted). */
static redisContext *acquire(struct bs_redisidx *x, uint64_t t0)
{
    uint64_t until = t0 + (uint64_t)x->timeout_ms * BS_NS_PER_MS;
    pthread_mutex_lock(&x->lock);
    while (x->c && x->busy && !x->stop)
        if (bs_cond_wait_until(&x->cv, &x->lock, until) == ETIMEDOUT)
            break;
    redisContext *c = NULL;
    const char *fail = NULL;
    if (!x->c || x->stop)
        fail = "down";
    else if (x->busy)
        fail = "timeout";
    else {
        x->busy = 1;
        c = x->c;
    }
    pthread_mutex_unlock(&x->lock);
    if (fail)
        count_error(x, fail);
    return c;
}

/* Gives the connection back; any failure but a mild error reply closes it. */
static void release(struct bs_redisidx *x, enum io rc)
{
    static const char *const why[] = {
        "", "", "", "error reply", "timeout", "connection lost", "protocol error"};
    pthread_mutex_lock(&x->lock);
    x->busy = 0;
    if (rc == IO_NOMEM) {
        /* nothing was sent: the connection is as it was */
    } else if (rc != IO_OK && rc != IO_REPLY_ERR) {
        mark_down_locked(x, why[rc]);
    } else {
        x->backoff_ms = 0;
        if (!atomic_load(&x->up))
            set_up(x, 1);
    }
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->lock);
}

static uint64_t cmd_deadline(const struct bs_redisidx *x)
{
    return bs_now_ns() + (uint64_t)x->timeout_ms * BS_NS_PER_MS;
}

/* ---- connect and heartbeat -------------------------------------------------------------- */

/* The default reply functions, with arrays capped at IDX_ARRAY_MAX elements: a hostile
 * "*2000000000" header must not make hiredis allocate 16 GB. */
static redisReplyObjectFunctions capped_fns;
static void *(*default_array)(const redisReadTask *, int);
static pthread_once_t fns_once = PTHREAD_ONCE_INIT;

static void *capped_array(const redisReadTask *t, int n)
{
    if (n > IDX_ARRAY_MAX)
        return NULL; /* hiredis reports it as an error of the reader */
    return default_array(t, n);
}

static void fns_init(void)
{
    redisReader *r = redisReaderCreate();
    if (!r)
        return;
    capped_fns = *r->fn;
    default_array = capped_fns.createArray;
    capped_fns.createArray = capped_array;
    redisReaderFree(r);
}

/* A new connection: connect, AUTH, SELECT. 0 with x->c set, or -1 (counted, breaker open). */
static int connect_redis(struct bs_redisidx *x)
{
    struct timeval tv = {.tv_sec = x->timeout_ms / 1000, .tv_usec = (x->timeout_ms % 1000) * 1000};
    const char *why = NULL;
    redisContext *c = redisConnectWithTimeout(x->host, x->port, tv);
    if (!c || c->err) {
        why = "connect failed";
        goto out_fail;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        why = "cannot set the socket timeout";
        goto out_fail;
    }
    pthread_once(&fns_once, fns_init);
    if (default_array)
        c->reader->fn = &capped_fns;
    int n = 0, argc[2];
    const char *auth[2] = {"AUTH", x->password}, *sel[2] = {"SELECT", NULL};
    size_t auth_l[2] = {4, strlen(x->password)}, sel_l[2] = {6, 0};
    const char **argv[2];
    const size_t *lens[2];
    char db[16];
    if (x->password[0]) {
        argc[n] = 2, argv[n] = auth, lens[n] = auth_l;
        n++;
    }
    if (x->db) {
        snprintf(db, sizeof(db), "%d", x->db);
        sel[1] = db;
        sel_l[1] = strlen(db);
        argc[n] = 2, argv[n] = sel, lens[n] = sel_l;
        n++;
    }
    if (n) {
        redisReply *rep[2] = {NULL, NULL};
        enum io rc = run(x, c, n, argc, (const char **const *)argv, lens, rep, cmd_deadline(x));
        int ok = rc == IO_OK;
        for (int i = 0; ok && i < n; i++)
            ok = rep[i]->type == REDIS_REPLY_STATUS;
        free_replies(rep, n);
        if (!ok) {
            /* The reply text is not logged: it might echo what was sent. */
            why = x->password[0] ? "AUTH or SELECT refused" : "SELECT refused";
            goto out_fail;
        }
    }
    pthread_mutex_lock(&x->lock);
    x->c = c;
    pthread_mutex_unlock(&x->lock);
    return 0;

out_fail:
    count_error(x, "connect");
    if (c)
        redisFree(c);
    pthread_mutex_lock(&x->lock);
    mark_down_locked(x, why);
    pthread_mutex_unlock(&x->lock);
    return -1;
}

/* One heartbeat. 0 with *existed (0, 1, 2 as the script says), or -1. */
static int heartbeat(struct bs_redisidx *x, int *existed)
{
    char all[IDX_KEY_MAX], join[IDX_KEY_MAX];
    snprintf(all, sizeof(all), KEY_PREFIX "{nodes}:all");
    snprintf(join, sizeof(join), KEY_PREFIX "{nodes}:join");
    const char *keys[3] = {x->node_key, all, join};
    const char *args[4] = {x->node, x->addr, x->node_ttl_s, IDX_PRUNE_MAX};
    redisContext *c = acquire(x, bs_now_ns());
    if (!c)
        return -1;
    redisReply *r = NULL;
    enum io rc = eval(x, c, S_HEARTBEAT, 3, keys, 4, args, &r, cmd_deadline(x));
    release(x, rc);
    if (rc != IO_OK)
        return -1;
    int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 3;
    for (size_t i = 0; ok && i < 3; i++)
        ok = r->element[i]->type == REDIS_REPLY_INTEGER;
    long long e = ok ? r->element[0]->integer : -1, n = ok ? r->element[1]->integer : 0,
              k = ok ? r->element[2]->integer : -1;
    freeReplyObject(r);
    if (!ok || e < 0 || e > 2 || n < 1 || n > 1000000000 || k < 0 || k >= n) {
        bad_reply(x, "heartbeat reply");
        return -1;
    }
    *existed = (int)e;
    pthread_mutex_lock(&x->lock);
    x->have_cluster = 1;
    x->nodes = (int)n;
    x->rank = (int)k;
    pthread_mutex_unlock(&x->lock);
    bs_metric_set(x->m_nodes, NULL, (double)n);
    return 0;
}

static void *hb_main(void *arg)
{
    struct bs_redisidx *x = arg;
    const uint64_t period = (uint64_t)(x->node_ttl_ms / 3) * BS_NS_PER_MS;
    uint64_t next_hb = 0; /* right away */
    pthread_mutex_lock(&x->lock);
    for (;;) {
        int connect = 0, beat = 0;
        void (*fn)(void *) = NULL;
        void *fn_arg = NULL;
        while (!x->stop) {
            uint64_t now = bs_now_ns();
            connect = !x->c && !x->busy && now >= x->down_until_ns;
            beat = connect || (x->c && now >= next_hb);
            if (beat || (x->reannounce_pending && x->reannounce))
                break;
            bs_cond_wait_until(&x->cv, &x->lock, x->c ? next_hb : x->down_until_ns);
        }
        if (x->stop)
            break;
        pthread_mutex_unlock(&x->lock);

        int existed = 1, ok = 0;
        if (beat && (!connect || connect_redis(x) == 0)) {
            ok = x->passive || heartbeat(x, &existed) == 0;
            next_hb = bs_now_ns() + period;
        }
        pthread_mutex_lock(&x->lock);
        if (ok) {
            const char *why = !x->contacted  ? "first_contact"
                              : existed == 0 ? "entry_missing"
                                             : NULL;
            unsigned long long quiet = 0;
            if (existed == 2 && bs_log_allow(&x->log_conflict, IDX_LOG_EVERY_MS, &quiet))
                bs_log(BS_LOG_WARN, "redisidx",
                       "event=node_name_conflict node=%s what=\"another address was registered "
                       "under this node name\" suppressed=%llu",
                       x->node, quiet);
            if (connect)
                bs_log(BS_LOG_INFO, "redisidx", "event=redis_up host=%s port=%d nodes=%d rank=%d",
                       x->host, x->port, x->nodes, x->rank);
            set_up(x, 1);
            if (why && !x->passive) {
                bs_log(BS_LOG_INFO, "redisidx", "event=reannounce reason=%s", why);
                x->reannounce_pending = 1;
            }
            x->contacted = 1;
        }
        if (x->reannounce_pending && x->reannounce && !x->stop) {
            x->reannounce_pending = 0;
            fn = x->reannounce;
            fn_arg = x->reannounce_arg;
        }
        if (fn) {
            x->in_callback = 1;
            pthread_mutex_unlock(&x->lock);
            fn(fn_arg);
            pthread_mutex_lock(&x->lock);
            x->in_callback = 0;
            pthread_cond_broadcast(&x->cv);
        }
    }
    pthread_mutex_unlock(&x->lock);
    return NULL;
}

/* ---- create and destroy ----------------------------------------------------------------- */

static const double redis_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                       0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};

static void metrics_init(struct bs_redisidx *x, struct bs_metrics *m)
{
    if (!m)
        return;
    x->m_commands =
        bs_metrics_counter(m, "blobswarm_redis_commands_total",
                           "Commands sent to Redis (each command of a pipeline).", NULL);
    x->m_bytes = bs_metrics_counter(m, "blobswarm_redis_bytes_total",
                                    "Bytes sent to (out) and received from (in) Redis.", "dir");
    x->m_errors = bs_metrics_counter(
        m, "blobswarm_redis_errors_total",
        "Redis failures by kind: connect (connect, AUTH, SELECT, connection lost), timeout, "
        "reply (error or malformed replies, skipped members), down (calls answered at once "
        "while the index is down).",
        "kind");
    x->m_seconds =
        bs_metrics_histogram(m, "blobswarm_redis_seconds",
                             "Round-trip time of one Redis exchange (command or pipeline).", NULL,
                             redis_buckets, sizeof(redis_buckets) / sizeof(redis_buckets[0]));
    x->m_nodes = bs_metrics_gauge(m, "blobswarm_cluster_nodes",
                                  "Agents in the cluster registry at the last heartbeat.", NULL);
    x->m_up = bs_metrics_gauge(m, "blobswarm_redis_up",
                               "1 when the last Redis command reached Redis, else 0.", NULL);
}

static int opts_check(const struct bs_redisidx_opts *o, char *err, size_t errsz)
{
    if (!o->node || !node_ok(o->node, strlen(o->node))) {
        snprintf(err, errsz, "node name must match [A-Za-z0-9._-]{1,%d}", BS_IDX_NODE_MAX - 1);
        return -1;
    }
    if (o->advertise && !addr_ok(o->advertise, strlen(o->advertise))) {
        snprintf(err, errsz, "advertise address must be IPv4:port or [IPv6]:port");
        return -1;
    }
    if (o->timeout_ms < IDX_TIMEOUT_MIN_MS || o->timeout_ms > IDX_TIMEOUT_MAX_MS) {
        snprintf(err, errsz, "redis timeout must be %d..%d ms", IDX_TIMEOUT_MIN_MS,
                 IDX_TIMEOUT_MAX_MS);
        return -1;
    }
    if (o->node_ttl_ms < 3 * o->timeout_ms || o->node_ttl_ms > IDX_NODE_TTL_MAX_MS) {
        snprintf(err, errsz, "node TTL must be 3 x the redis timeout (%ld) .. %d ms",
                 3 * o->timeout_ms, IDX_NODE_TTL_MAX_MS);
        return -1;
    }
    if (o->holder_ttl_ms < IDX_HOLDER_TTL_MIN || o->holder_ttl_ms > IDX_HOLDER_TTL_MAX) {
        snprintf(err, errsz, "holder TTL must be %d..%ld ms", IDX_HOLDER_TTL_MIN,
                 IDX_HOLDER_TTL_MAX);
        return -1;
    }
    if (o->lease_ms < IDX_LEASE_MIN_MS || o->lease_ms > IDX_LEASE_MAX_MS) {
        snprintf(err, errsz, "lease must be %d..%d ms", IDX_LEASE_MIN_MS, IDX_LEASE_MAX_MS);
        return -1;
    }
    if (o->max_holders < 1 || o->max_holders > BS_IDX_MAX_HOLDERS) {
        snprintf(err, errsz, "max holders must be 1..%d", BS_IDX_MAX_HOLDERS);
        return -1;
    }
    return 0;
}

struct bs_redisidx *bs_redisidx_create(const struct bs_redisidx_opts *o, struct bs_metrics *metrics,
                                       char *err, size_t errsz)
{
    if (!o) {
        snprintf(err, errsz, "no options");
        return NULL;
    }
    if (opts_check(o, err, errsz) != 0)
        return NULL;
    struct bs_redisidx *x = calloc(1, sizeof(*x));
    if (!x) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    if (bs_redis_url_parse(o->url, x->host, sizeof(x->host), &x->port, x->password,
                           sizeof(x->password), &x->db, err, errsz) != 0)
        goto out_free;
    if (o->password_file && *o->password_file &&
        password_load(o->password_file, x->password, sizeof(x->password), err, errsz) != 0)
        goto out_free;
    snprintf(x->node, sizeof(x->node), "%s", o->node);
    x->passive = !o->advertise;
    snprintf(x->addr, sizeof(x->addr), "%s", o->advertise ? o->advertise : "0.0.0.0:0");
    snprintf(x->member, sizeof(x->member), "%s %s", x->node, x->addr);
    snprintf(x->node_key, sizeof(x->node_key), KEY_PREFIX "{nodes}:n:%s", x->node);
    snprintf(x->max_s, sizeof(x->max_s), "%d", o->max_holders);
    snprintf(x->node_ttl_s, sizeof(x->node_ttl_s), "%ld", o->node_ttl_ms);
    snprintf(x->holder_ttl_s, sizeof(x->holder_ttl_s), "%ld", o->holder_ttl_ms);
    snprintf(x->lease_s, sizeof(x->lease_s), "%ld", o->lease_ms);
    x->timeout_ms = o->timeout_ms;
    x->node_ttl_ms = o->node_ttl_ms;
    x->lease_ms = o->lease_ms;
    x->max_holders = o->max_holders;
    for (int i = 0; i < S_COUNT; i++)
        if (sha1_hex(script_src[i], x->sha[i]) != 0) {
            snprintf(err, errsz, "cannot compute SHA-1 (OpenSSL)");
            goto out_free;
        }
    metrics_init(x, metrics);
    set_up(x, 0);
    pthread_mutex_init(&x->lock, NULL);
    bs_cond_init(&x->cv);
    if (pthread_create(&x->hb, NULL, hb_main, x) != 0) {
        snprintf(err, errsz, "cannot start the heartbeat thread");
        pthread_cond_destroy(&x->cv);
        pthread_mutex_destroy(&x->lock);
        goto out_free;
    }
    x->hb_started = 1;
    return x;

out_free:
    OPENSSL_cleanse(x->password, sizeof(x->password));
    free(x);
    return NULL;
}

void bs_redisidx_destroy(struct bs_redisidx *x)
{
    if (!x)
        return;
    pthread_mutex_lock(&x->lock);
    x->stop = 1;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->lock);
    if (x->hb_started)
        pthread_join(x->hb, NULL);
    /* Leave the registry (best effort, one round trip, only when connected). */
    pthread_mutex_lock(&x->lock);
    redisContext *c = x->busy || x->passive ? NULL : x->c;
    pthread_mutex_unlock(&x->lock);
    if (c) {
        const char *del[2] = {"DEL", x->node_key};
        const char *zrem_all[3] = {"ZREM", KEY_PREFIX "{nodes}:all", x->node};
        const char *zrem_join[3] = {"ZREM", KEY_PREFIX "{nodes}:join", x->node};
        size_t del_l[2], all_l[3], join_l[3];
        for (int i = 0; i < 3; i++) {
            if (i < 2)
                del_l[i] = strlen(del[i]);
            all_l[i] = strlen(zrem_all[i]);
            join_l[i] = strlen(zrem_join[i]);
        }
        int argc[3] = {2, 3, 3};
        const char **argv[3] = {del, zrem_all, zrem_join};
        const size_t *lens[3] = {del_l, all_l, join_l};
        redisReply *rep[3] = {NULL, NULL, NULL};
        run(x, c, 3, argc, (const char **const *)argv, lens, rep, cmd_deadline(x));
        free_replies(rep, 3);
    }
    if (x->c)
        redisFree(x->c);
    OPENSSL_cleanse(x->password, sizeof(x->password));
    pthread_cond_destroy(&x->cv);
    pthread_mutex_destroy(&x->lock);
    free(x);
}

void bs_redisidx_set_reannounce(struct bs_redisidx *x, void (*fn)(void *arg), void *arg)
{
    if (!x)
        return;
    pthread_mutex_lock(&x->lock);
    while (x->in_callback) /* the old callback's owner may be about to go away */
        pthread_cond_wait(&x->cv, &x->lock);
    x->reannounce = fn;
    x->reannounce_arg = arg;
    pthread_cond_broadcast(&x->cv); /* a re-announce may be pending */
    pthread_mutex_unlock(&x->lock);
}

/* ---- the calls -------------------------------------------------------------------------- */

enum bs_idx_decision bs_redisidx_decide(struct bs_redisidx *x, const char *tag, uint64_t chunk,
                                        struct bs_idx_result *r)
{
    memset(r, 0, sizeof(*r));
    r->d = BS_IDX_DOWN;
    if (!x || !tag_ok(tag))
        return r->d;
    char hk[IDX_KEY_MAX], lk[IDX_KEY_MAX];
    chunk_key(hk, tag, 'h', chunk);
    chunk_key(lk, tag, 'l', chunk);
    const char *keys[2] = {hk, lk};
    const char *args[4] = {x->max_s, x->node, x->member, x->lease_s};
    uint64_t t0 = bs_now_ns();
    redisContext *c = acquire(x, t0);
    if (!c)
        return r->d;
    redisReply *rep = NULL;
    enum io rc = eval(x, c, S_DECIDE, 2, keys, 4, args, &rep, cmd_deadline(x));
    release(x, rc);
    if (rc != IO_OK)
        return r->d;

    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER) {
        bad_reply(x, "decide reply shape");
        goto out;
    }
    long long kind = rep->element[0]->integer;
    if (kind == 0 && rep->elements == 2 && rep->element[1]->type == REDIS_REPLY_ARRAY) {
        const redisReply *h = rep->element[1];
        for (size_t i = 0; i < h->elements && r->nholders < x->max_holders; i++) {
            const redisReply *m = h->element[i];
            struct bs_peer *p = &r->holders[r->nholders];
            if (m->type != REDIS_REPLY_STRING || peer_parse(m->str, m->len, p) != 0) {
                bad_reply(x, "holder member");
                continue;
            }
            if (strcmp(p->node, x->node) != 0)
                r->nholders++;
        }
        if (r->nholders > 0)
            r->d = BS_IDX_HOLDERS;
        else
            memset(r->holders, 0, sizeof(r->holders));
    } else if (kind == 1 && rep->elements == 1) {
        r->d = BS_IDX_LEASE_WON;
    } else if (kind == 2 && rep->elements == 3 && rep->element[1]->type == REDIS_REPLY_STRING &&
               rep->element[2]->type == REDIS_REPLY_INTEGER &&
               peer_parse(rep->element[1]->str, rep->element[1]->len, &r->lessee) == 0) {
        long long left = rep->element[2]->integer;
        r->lease_left_ms = left < 0 ? 0 : left > x->lease_ms ? x->lease_ms : (long)left;
        r->d = BS_IDX_LEASE_HELD;
    } else {
        bad_reply(x, "decide reply");
        memset(&r->lessee, 0, sizeof(r->lessee));
    }
out:
    freeReplyObject(rep);
    return r->d;
}

/* A script call on one chunk whose integer reply does not matter. 0 or -1. */
static int chunk_call(struct bs_redisidx *x, enum script s, int nkeys, const char *const *keys,
                      int nargs, const char *const *args)
{
    if (!x)
        return -1;
    redisContext *c = acquire(x, bs_now_ns());
    if (!c)
        return -1;
    redisReply *rep = NULL;
    enum io rc = eval(x, c, s, nkeys, keys, nargs, args, &rep, cmd_deadline(x));
    release(x, rc);
    if (rc != IO_OK)
        return -1;
    int ok = rep->type == REDIS_REPLY_INTEGER;
    freeReplyObject(rep);
    if (!ok)
        bad_reply(x, "integer expected");
    return ok ? 0 : -1;
}

int bs_redisidx_announce(struct bs_redisidx *x, const char *tag, uint64_t chunk)
{
    if (!x || !tag_ok(tag))
        return -1;
    char hk[IDX_KEY_MAX], lk[IDX_KEY_MAX];
    chunk_key(hk, tag, 'h', chunk);
    chunk_key(lk, tag, 'l', chunk);
    const char *keys[2] = {hk, lk};
    const char *args[4] = {x->member, x->max_s, x->holder_ttl_s, x->node};
    return chunk_call(x, S_ANNOUNCE, 2, keys, 4, args);
}

int bs_redisidx_announce_many(struct bs_redisidx *x, const char (*tags)[BS_IDX_TAG_LEN + 1],
                              const uint64_t *chunks, int n)
{
    if (!x || n < 0 || n > IDX_BATCH)
        return -1;
    if (n == 0)
        return 0;
    /* The first alone (it loads the script after a Redis restart), the rest in one pipeline. */
    if (bs_redisidx_announce(x, tags[0], chunks[0]) != 0)
        return -1;
    static const int words = 9; /* EVALSHA sha 2 hk lk member max ttl node */
    char(*keys)[2][IDX_KEY_MAX] = calloc((size_t)n, sizeof(*keys));
    const char **argv = calloc((size_t)n * (size_t)words, sizeof(*argv));
    size_t *lens = calloc((size_t)n * (size_t)words, sizeof(*lens));
    const char ***pargv = calloc((size_t)n, sizeof(*pargv));
    const size_t **plens = calloc((size_t)n, sizeof(*plens));
    int *argc = calloc((size_t)n, sizeof(*argc));
    redisReply **rep = calloc((size_t)n, sizeof(*rep));
    int rc = -1, m = 0;
    if (!keys || !argv || !lens || !pargv || !plens || !argc || !rep)
        goto out;
    for (int i = 1; i < n; i++) {
        if (!tag_ok(tags[i]))
            continue;
        chunk_key(keys[m][0], tags[i], 'h', chunks[i]);
        chunk_key(keys[m][1], tags[i], 'l', chunks[i]);
        const char **a = argv + (size_t)m * (size_t)words;
        const char *w[9] = {"EVALSHA",  x->sha[S_ANNOUNCE], "2",
                            keys[m][0], keys[m][1],         x->member,
                            x->max_s,   x->holder_ttl_s,    x->node};
        for (int k = 0; k < words; k++) {
            a[k] = w[k];
            lens[(size_t)m * (size_t)words + (size_t)k] = strlen(w[k]);
        }
        pargv[m] = a;
        plens[m] = lens + (size_t)m * (size_t)words;
        argc[m] = words;
        m++;
    }
    if (m == 0) {
        rc = 0;
        goto out;
    }
    redisContext *c = acquire(x, bs_now_ns());
    if (!c)
        goto out;
    enum io io = run(x, c, m, argc, (const char **const *)pargv, plens, rep, cmd_deadline(x));
    release(x, io);
    rc = io == IO_OK ? 0 : -1;
    for (int i = 0; i < m; i++)
        if (rep[i])
            freeReplyObject(rep[i]);
out:
    free(keys);
    free(argv);
    free(lens);
    free(pargv);
    free(plens);
    free(argc);
    free(rep);
    return rc;
}

int bs_redisidx_release(struct bs_redisidx *x, const char *tag, uint64_t chunk)
{
    if (!x || !tag_ok(tag))
        return -1;
    char lk[IDX_KEY_MAX];
    chunk_key(lk, tag, 'l', chunk);
    const char *keys[1] = {lk};
    const char *args[1] = {x->member};
    return chunk_call(x, S_RELEASE, 1, keys, 1, args);
}

int bs_redisidx_withdraw(struct bs_redisidx *x, const char *tag, uint64_t chunk)
{
    if (!x || x->passive)
        return -1;
    struct bs_peer self;
    snprintf(self.node, sizeof(self.node), "%s", x->node);
    snprintf(self.addr, sizeof(self.addr), "%s", x->addr);
    return bs_redisidx_forget(x, tag, chunk, &self);
}

int bs_redisidx_break_lease(struct bs_redisidx *x, const char *tag, uint64_t chunk,
                            const struct bs_peer *lessee)
{
    if (!x || !tag_ok(tag) || !lessee)
        return -1;
    size_t nl = strnlen(lessee->node, sizeof(lessee->node));
    size_t al = strnlen(lessee->addr, sizeof(lessee->addr));
    if (!node_ok(lessee->node, nl) || !addr_ok(lessee->addr, al))
        return -1;
    char lk[IDX_KEY_MAX], member[IDX_MEMBER_MAX];
    chunk_key(lk, tag, 'l', chunk);
    snprintf(member, sizeof(member), "%s %s", lessee->node, lessee->addr);
    const char *keys[1] = {lk};
    const char *args[1] = {member};
    return chunk_call(x, S_RELEASE, 1, keys, 1, args); /* deletes it only if still theirs */
}

/* A plain ZREM: one command, no script needed. */
int bs_redisidx_forget(struct bs_redisidx *x, const char *tag, uint64_t chunk,
                       const struct bs_peer *p)
{
    if (!x || !tag_ok(tag) || !p)
        return -1;
    size_t nl = strnlen(p->node, sizeof(p->node)), al = strnlen(p->addr, sizeof(p->addr));
    if (!node_ok(p->node, nl) || !addr_ok(p->addr, al))
        return -1;
    char hk[IDX_KEY_MAX], member[IDX_MEMBER_MAX];
    chunk_key(hk, tag, 'h', chunk);
    snprintf(member, sizeof(member), "%s %s", p->node, p->addr);
    const char *argv[3] = {"ZREM", hk, member};
    size_t lens[3] = {4, strlen(hk), strlen(member)};
    const char **pargv = argv;
    const size_t *plens = lens;
    int argc = 3;
    redisContext *c = acquire(x, bs_now_ns());
    if (!c)
        return -1;
    redisReply *rep = NULL;
    enum io rc = run(x, c, 1, &argc, (const char **const *)&pargv, &plens, &rep, cmd_deadline(x));
    release(x, rc);
    int ok = rc == IO_OK && rep->type == REDIS_REPLY_INTEGER;
    if (rc == IO_OK && !ok)
        bad_reply(x, "integer expected");
    free_replies(&rep, 1);
    return ok ? 0 : -1;
}

int bs_redisidx_cluster(struct bs_redisidx *x, int *nodes, int *rank)
{
    if (!x)
        return -1;
    pthread_mutex_lock(&x->lock);
    int ok = x->have_cluster;
    if (ok) {
        *nodes = x->nodes;
        *rank = x->rank;
    }
    pthread_mutex_unlock(&x->lock);
    return ok ? 0 : -1;
}

int bs_redisidx_up(struct bs_redisidx *x)
{
    return x ? atomic_load(&x->up) : 0;
}

int bs_redisidx_holders(struct bs_redisidx *x, const char *tag, uint64_t nchunks,
                        void (*fn)(void *arg, uint64_t chunk, const struct bs_peer *holders, int n),
                        void *arg)
{
    if (!x || !tag_ok(tag) || !fn)
        return -1;
    char maxs[8];
    snprintf(maxs, sizeof(maxs), "%d", BS_IDX_MAX_HOLDERS - 1);
    char(*keys)[IDX_KEY_MAX] = malloc(IDX_BATCH * sizeof(*keys));
    redisReply **rep = calloc(IDX_BATCH, sizeof(*rep));
    const char *(*argvs)[4] = malloc(IDX_BATCH * sizeof(*argvs));
    size_t(*lenss)[4] = malloc(IDX_BATCH * sizeof(*lenss));
    const char ***pargv = malloc(IDX_BATCH * sizeof(*pargv));
    const size_t **plens = malloc(IDX_BATCH * sizeof(*plens));
    int *argc = malloc(IDX_BATCH * sizeof(*argc));
    int rc = -1;
    if (!keys || !rep || !argvs || !lenss || !pargv || !plens || !argc)
        goto out_free;
    for (uint64_t base = 0; base < nchunks; base += IDX_BATCH) {
        int n = nchunks - base < IDX_BATCH ? (int)(nchunks - base) : IDX_BATCH;
        for (int i = 0; i < n; i++) {
            chunk_key(keys[i], tag, 'h', base + (uint64_t)i);
            argvs[i][0] = "ZREVRANGE";
            argvs[i][1] = keys[i];
            argvs[i][2] = "0";
            argvs[i][3] = maxs;
            for (int k = 0; k < 4; k++)
                lenss[i][k] = strlen(argvs[i][k]);
            pargv[i] = argvs[i];
            plens[i] = lenss[i];
            argc[i] = 4;
        }
        redisContext *c = acquire(x, bs_now_ns());
        if (!c)
            goto out_free;
        enum io io = run(x, c, n, argc, (const char **const *)pargv, plens, rep, cmd_deadline(x));
        release(x, io);
        if (io != IO_OK && io != IO_REPLY_ERR) { /* error replies: those chunks are skipped */
            free_replies(rep, n);
            goto out_free;
        }
        for (int i = 0; i < n; i++) {
            struct bs_peer peers[BS_IDX_MAX_HOLDERS];
            int np = 0;
            if (rep[i]->type != REDIS_REPLY_ARRAY) { /* counted; reported as no holders */
                if (rep[i]->type != REDIS_REPLY_ERROR)
                    bad_reply(x, "holders reply");
            }
            for (size_t k = 0; rep[i]->type == REDIS_REPLY_ARRAY && k < rep[i]->elements &&
                               np < BS_IDX_MAX_HOLDERS;
                 k++) {
                const redisReply *m = rep[i]->element[k];
                if (m->type != REDIS_REPLY_STRING || peer_parse(m->str, m->len, &peers[np]) != 0)
                    bad_reply(x, "holder member");
                else
                    np++;
            }
            fn(arg, base + (uint64_t)i, peers, np);
        }
        free_replies(rep, n);
    }
    rc = 0;
out_free:
    free(argc);
    free(plens);
    free(pargv);
    free(lenss);
    free(argvs);
    free(rep);
    free(keys);
    return rc;
}
