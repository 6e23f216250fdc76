/* libblobswarm.so: the streamer's cache-provider ABI (cache_abi.h). It owns the process-wide
 * reader state: created lazily on the first blob_read from the environment, torn down by
 * shutdown, created again by a later blob_read. A read asks the node agent first
 * (agentclient.h) and reads from Azure whatever the agent does not serve. It never prints
 * unless BLOBSWARM_LOG_LEVEL asks, and never exits the process. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agentclient.h"
#include "azcred.h"
#include "blobreader.h"
#include "cache_abi.h"
#include "clock.h"
#include "config.h"
#include "fetch.h"
#include "log.h"

struct shim_config {
    long long range_bytes;
    long long max_connections;
    long long io_threads;
    long long deadline_ms;
    long long connect_timeout_ms;
    long long stall_timeout_ms;
    long long max_retries;
    long long retry_base_ms;
    long long retry_max_ms;
    long long props_ttl_ms;
    long long props_max_entries;
    long long token_timeout_ms;
    char log_level[BS_CFG_STR_MAX];
    char ca_bundle[BS_CFG_STR_MAX];
    char blob_endpoint[BS_CFG_STR_MAX];
    char agent[BS_CFG_STR_MAX];
    long long agent_timeout_ms;
    long long agent_cooloff_ms;
    long long agent_max_idle;
    long long delegate_window_s;
    char agent_uid[BS_CFG_STR_MAX];
    char report_file[BS_CFG_STR_MAX];
};

#define DEFAULT_AGENT_HINT                                                                         \
    "/run/blobswarm/agent.sock if present, else the node-local Service inside Kubernetes"
#define F(field) offsetof(struct shim_config, field)
static const struct bs_cfg_entry shim_settings[] = {
    {"BLOBSWARM_RANGE_BYTES", BS_CFG_BYTES, 64 << 10, 256 << 20, "8M", F(range_bytes),
     "grid of the parallel ranged GETs a read is split into (edge slivers under a quarter "
     "merge into their neighbour)",
     0},
    {"BLOBSWARM_MAX_CONNECTIONS", BS_CFG_INT, 1, 1024, "64", F(max_connections),
     "HTTP transfers in flight per process (keep-alive connections kept)", 0},
    {"BLOBSWARM_IO_THREADS", BS_CFG_INT, 1, 16, "2", F(io_threads),
     "threads driving the HTTP transfers", 0},
    {"BLOBSWARM_DEADLINE_MS", BS_CFG_MS, 100, 3600000, "600000", F(deadline_ms),
     "overall time limit of one blob_read, retries included", 0},
    {"BLOBSWARM_CONNECT_TIMEOUT_MS", BS_CFG_MS, 100, 120000, "5000", F(connect_timeout_ms),
     "TCP+TLS connect limit per attempt", 0},
    {"BLOBSWARM_STALL_TIMEOUT_MS", BS_CFG_MS, 1000, 600000, "15000", F(stall_timeout_ms),
     "a transfer receiving nothing for this long is retried", 0},
    {"BLOBSWARM_MAX_RETRIES", BS_CFG_INT, 0, 100, "8", F(max_retries),
     "retries per request on 408/429/5xx/transport errors", 0},
    {"BLOBSWARM_RETRY_BASE_MS", BS_CFG_MS, 1, 60000, "100", F(retry_base_ms),
     "first backoff step (doubles per attempt, full jitter)", 0},
    {"BLOBSWARM_RETRY_MAX_MS", BS_CFG_MS, 1, 600000, "5000", F(retry_max_ms),
     "largest backoff step (Retry-After may ask for more)", 0},
    {"BLOBSWARM_PROPS_TTL_MS", BS_CFG_MS, 0, 86400000, "30000", F(props_ttl_ms),
     "a blob's ETag and size are kept this long after their last use", 0},
    {"BLOBSWARM_PROPS_MAX_ENTRIES", BS_CFG_INT, 1, 1000000, "4096", F(props_max_entries),
     "blobs whose properties are kept", 0},
    {"BLOBSWARM_TOKEN_TIMEOUT_MS", BS_CFG_MS, 100, 120000, "2000", F(token_timeout_ms),
     "connect limit for token endpoints (the IMDS probe of an unconfigured process)", 0},
    {"BLOBSWARM_LOG_LEVEL", BS_CFG_STR, 0, 16, "off", F(log_level),
     "off, error, warn, info or debug (to stderr)", 0},
    {"BLOBSWARM_CA_BUNDLE", BS_CFG_STR, 0, 1000, "", F(ca_bundle),
     "CA certificates file for HTTPS (default: the system store)", 0},
    {"BLOBSWARM_BLOB_ENDPOINT", BS_CFG_STR, 0, 1000, "", F(blob_endpoint),
     "blob endpoint base URL overriding https://<account>.<suffix>; {account} is replaced", 0},
    {"BLOBSWARM_AGENT", BS_CFG_STR, 0, 500, "", F(agent),
     "node agent: unix:/path, /path or http://host:port; empty: " DEFAULT_AGENT_HINT "; off: never",
     0},
    {"BLOBSWARM_AGENT_TIMEOUT_MS", BS_CFG_MS, 10, 600000, "5000", F(agent_timeout_ms),
     "limit for the agent's answer to one read, its fills included", 0},
    {"BLOBSWARM_AGENT_COOLOFF_MS", BS_CFG_MS, 0, 3600000, "30000", F(agent_cooloff_ms),
     "after an agent failure, reads go straight to Azure this long", 0},
    {"BLOBSWARM_AGENT_MAX_IDLE", BS_CFG_INT, 1, 4096, "64", F(agent_max_idle),
     "idle connections to the agent kept open", 0},
    {"BLOBSWARM_DELEGATE_WINDOW_S", BS_CFG_INT, 60, 86400, "600", F(delegate_window_s),
     "a SAS minted from the account key for the agent is valid for 1-2 windows", 0},
    {"BLOBSWARM_AGENT_UID", BS_CFG_STR, 0, 16, "0", F(agent_uid),
     "uid that must own the agent's Unix socket (SO_PEERCRED) before anything is sent on it; "
     "any: no check (an explicit opt-out)",
     0},
    {"BLOBSWARM_REPORT_FILE", BS_CFG_STR, 0, 1000, "", F(report_file),
     "at shutdown, append why reads did or did not use the agent (key=value counts) to this "
     "file (blobswarm-read sets it)",
     0},
};
#undef F

struct shim_state {
    struct shim_config cfg;
    struct bs_fetch *fetch;
    struct bs_azcred *cred;
    struct bs_blobreader *reader;
    struct bs_agentclient *agent; /* NULL: no agent */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_idle = PTHREAD_COND_INITIALIZER;
static struct shim_state *g_state;
static int g_active;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

/* A forked child has none of the parent's I/O threads: it forgets the parent's state (left
 * allocated: its threads' memory is not the child's to free) and starts over lazily. */
static void atfork_child(void)
{
    pthread_mutex_init(&g_lock, NULL);
    pthread_cond_init(&g_idle, NULL);
    g_state = NULL;
    g_active = 0;
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
}

static void state_destroy(struct shim_state *s)
{
    if (!s)
        return;
    bs_agentclient_destroy(s->agent);
    bs_blobreader_destroy(s->reader);
    bs_fetch_destroy(s->fetch);
    bs_azcred_destroy(s->cred);
    free(s);
}

static struct shim_state *state_create(char *err, size_t errsz)
{
    struct shim_state *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    struct shim_config *c = &s->cfg;
    if (bs_cfg_load(shim_settings, sizeof(shim_settings) / sizeof(shim_settings[0]), c,
                    bs_cfg_getenv, NULL, err, errsz) != 0)
        goto out_fail;
    bs_log_set_level(bs_log_parse_level(c->log_level, BS_LOG_OFF));

    struct bs_azcred_opts copts = {
        .endpoint_override = c->blob_endpoint,
        .token = {.ca_bundle = c->ca_bundle,
                  .connect_timeout_ms = c->token_timeout_ms,
                  .total_timeout_ms = 30000},
    };
    s->cred = bs_azcred_from_env(&copts, err, errsz);
    if (!s->cred)
        goto out_fail;
    struct bs_fetch_opts fopts = {
        .io_threads = (int)c->io_threads,
        .max_connections = (int)c->max_connections,
        .connect_timeout_ms = c->connect_timeout_ms,
        .stall_timeout_ms = c->stall_timeout_ms,
        .ca_bundle = c->ca_bundle,
    };
    s->fetch = bs_fetch_create(&fopts, err, errsz);
    if (!s->fetch)
        goto out_fail;
    struct bs_blobreader_opts ropts = {
        .range_bytes = (uint64_t)c->range_bytes,
        .deadline_ms = c->deadline_ms,
        .max_retries = (int)c->max_retries,
        .retry_base_ms = c->retry_base_ms,
        .retry_max_ms = c->retry_max_ms,
        .props_ttl_ms = c->props_ttl_ms,
        .props_max_entries = (int)c->props_max_entries,
    };
    s->reader = bs_blobreader_create(&ropts, s->fetch);
    if (!s->reader) {
        snprintf(err, errsz, "out of memory");
        goto out_fail;
    }
    struct bs_agentclient_opts aopts = {
        .address = c->agent,
        .timeout_ms = c->agent_timeout_ms,
        .cooloff_ms = c->agent_cooloff_ms,
        .max_idle = (int)c->agent_max_idle,
        .peer_uid = -1,
    };
    if (strcmp(c->agent_uid, "any") != 0) {
        char *end;
        errno = 0;
        long long uid = strtoll(c->agent_uid, &end, 10);
        if (errno || end == c->agent_uid || *end || uid < 0 || uid > 4294967294LL) {
            snprintf(err, errsz,
                     "BLOBSWARM_AGENT_UID=\"%.16s\": expected a uid (0..4294967294) or any",
                     c->agent_uid);
            goto out_fail;
        }
        aopts.peer_uid = uid;
    }
    s->agent = bs_agentclient_create(&aopts, s->fetch);
    if (bs_log_threshold >= BS_LOG_INFO) {
        char line[1536];
        bs_cfg_format(shim_settings, sizeof(shim_settings) / sizeof(shim_settings[0]), c, line,
                      sizeof(line));
        bs_log(BS_LOG_INFO, "shim", "event=start credential=\"%s\" %s", bs_azcred_describe(s->cred),
               line);
    }
    return s;

out_fail:
    state_destroy(s);
    return NULL;
}

/* Reads through the agent, then from Azure (same ETag, all missing ranges in parallel)
 * whatever the agent did not serve, all within one deadline for the whole blob_read. */
static int read_via_agent(struct shim_state *s, const char *account, const char *container,
                          const char *blob, void *buf, uint64_t off, size_t len, char *err,
                          size_t errsz)
{
    uint64_t deadline_ns = bs_now_ns() + (uint64_t)s->cfg.deadline_ms * 1000000ull;
    struct bs_blob_props props;
    int rc = bs_blobreader_props(s->reader, s->cred, account, container, blob, &props, err, errsz);
    if (rc)
        return rc;
    if (off > props.size || len > props.size - off || len == 0)
        return bs_blobreader_read(s->reader, s->cred, account, container, blob, buf, off, len, err,
                                  errsz); /* the direct path words range errors */
    /* An agent found only by its well-known Service name (not named in BLOBSWARM_AGENT) gets
     * nothing broader than a one-blob SAS minted here: never the user's own SAS over plain
     * HTTP (a bearer identity's user-delegation SAS is one-blob too). */
    if (bs_agentclient_discovered_http(s->agent) && bs_azcred_kind(s->cred) == BS_AUTH_SAS)
        return bs_blobreader_read(s->reader, s->cred, account, container, blob, buf, off, len, err,
                                  errsz);
    struct bs_delegation *d = malloc(sizeof(*d));
    size_t max = len / (1u << 20) + 3; /* chunks are at least 1 MiB */
    uint64_t(*missing)[2] = malloc(max * sizeof(*missing));
    size_t nmiss = 1;
    if (!d || !missing) {
        rc = -ENOMEM;
        snprintf(err, errsz, "out of memory");
        goto out_free;
    }
    missing[0][0] = off;
    missing[0][1] = len;
    if (bs_azcred_delegate(s->cred, account, container, blob, s->cfg.delegate_window_s, d, err,
                           errsz) == 0) {
        /* The agent gets at most half of what is left, so Azure always has time for what it
         * does not serve: a slow agent never fails a read a direct read completes. */
        uint64_t now = bs_now_ns();
        uint64_t agent_deadline_ns = deadline_ns > now ? now + (deadline_ns - now) / 2 : now;
        nmiss = bs_agentclient_read(s->agent, d, container, blob, props.etag, props.size, buf, off,
                                    len, missing, max, agent_deadline_ns);
    } else {
        bs_log(BS_LOG_INFO, "shim", "event=not_delegated msg=\"%s\"", err);
    }
    if (nmiss)
        rc = bs_blobreader_read_ranges(s->reader, s->cred, account, container, blob, props.etag,
                                       buf, off, (const uint64_t(*)[2])missing, nmiss, deadline_ns,
                                       err, errsz);
    if (rc == -ESTALE)
        bs_blobreader_forget(s->reader, account, container, blob);
out_free:
    if (d)
        memset(d->secret, 0, sizeof(d->secret));
    free(d);
    free(missing);
    return rc;
}

/* BLOBSWARM_REPORT_FILE: one line of counts saying why reads did or did not use the agent. */
static void write_report(const struct shim_state *s)
{
    if (!s->cfg.report_file[0])
        return;
    struct bs_agentclient_stats st;
    bs_agentclient_stats(s->agent, &st);
    FILE *f = fopen(s->cfg.report_file, "ae");
    if (!f)
        return;
    fprintf(f,
            "agent=%s credential=\"%s\" served=%llu miss=%llu denied=%llu error=%llu "
            "bad_checksum=%llu bypassed=%llu uid_refused=%llu unreachable=%llu timeouts=%llu "
            "busy=%llu pending=%llu last_reason=\"%s\"\n",
            s->agent ? bs_agentclient_address(s->agent) : "none", bs_azcred_describe(s->cred),
            (unsigned long long)st.served, (unsigned long long)st.miss,
            (unsigned long long)st.denied, (unsigned long long)st.error,
            (unsigned long long)st.bad_checksum, (unsigned long long)st.bypassed,
            (unsigned long long)st.uid_refused, (unsigned long long)st.unreachable,
            (unsigned long long)st.timeouts, (unsigned long long)st.busy,
            (unsigned long long)st.pending, st.last_reason);
    fclose(f);
}

static void set_error(char *error_buf, size_t error_buf_size, const char *msg)
{
    if (error_buf && error_buf_size)
        snprintf(error_buf, error_buf_size, "blobswarm: %s", msg);
}

BS_ABI_EXPORT uint32_t cache_abi_version(void)
{
    return BS_CACHE_ABI_VERSION;
}

BS_ABI_EXPORT uint32_t runai_cache_abi_version(void)
{
    return BS_CACHE_ABI_VERSION;
}

BS_ABI_EXPORT ssize_t blob_read(const char *account, const char *container, const char *blob,
                                void *buf, size_t offset, size_t length, char *error_buf,
                                size_t error_buf_size)
{
    char err[512];
    if (!container || !blob || (!buf && length > 0)) {
        set_error(error_buf, error_buf_size, "blob_read: container, blob and buf are required");
        return -1;
    }
    if (length > (size_t)SSIZE_MAX || offset > UINT64_MAX - length) {
        set_error(error_buf, error_buf_size, "blob_read: offset/length out of range");
        return -1;
    }

    pthread_once(&g_atfork_once, register_atfork);
    pthread_mutex_lock(&g_lock);
    if (!g_state)
        g_state = state_create(err, sizeof(err));
    struct shim_state *s = g_state;
    if (s)
        g_active++;
    pthread_mutex_unlock(&g_lock);
    if (!s) {
        set_error(error_buf, error_buf_size, err);
        return -1;
    }

    int rc;
    if (s->agent && bs_agentclient_usable(s->agent)) {
        rc = read_via_agent(s, account, container, blob, buf, offset, length, err, sizeof(err));
    } else {
        bs_agentclient_count_bypass(s->agent);
        rc = bs_blobreader_read(s->reader, s->cred, account, container, blob, buf, offset, length,
                                err, sizeof(err));
    }

    pthread_mutex_lock(&g_lock);
    if (--g_active == 0)
        pthread_cond_broadcast(&g_idle);
    pthread_mutex_unlock(&g_lock);
    if (rc != 0) {
        bs_log(BS_LOG_WARN, "shim", "event=read_failed rc=%d msg=\"%s\"", rc, err);
        set_error(error_buf, error_buf_size, err);
        return -1;
    }
    return (ssize_t)length;
}

BS_ABI_EXPORT void shutdown(void)
{
    pthread_mutex_lock(&g_lock);
    while (g_active > 0)
        pthread_cond_wait(&g_idle, &g_lock);
    struct shim_state *s = g_state;
    g_state = NULL;
    pthread_mutex_unlock(&g_lock);
    if (s)
        write_report(s);
    state_destroy(s);
}
