/* blobswarm-agent: the node's chunk cache. Reads its configuration (one table: flags, env,
 * optional JSON file), opens the store, starts the chunk service, the Unix socket and the
 * HTTP API, then waits for SIGTERM/SIGINT and drains: readiness off, no new connections,
 * requests in progress finish (bounded by BLOBSWARM_DRAIN_MS), exit 0. */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "agentproto.h"
#include "blobreader.h"
#include "clock.h"
#include "config.h"
#include "fetch.h"
#include "httpsrv.h"
#include "log.h"
#include "metrics.h"
#include "peerauth.h"
#include "peerclient.h"
#include "peersrv.h"
#include "redisidx.h"
#include "service.h"
#include "store.h"
#include "unixsrv.h"

struct agent_config {
    char socket_path[BS_CFG_STR_MAX];
    char socket_mode[BS_CFG_STR_MAX];
    char listen[BS_CFG_STR_MAX];
    char port_file[BS_CFG_STR_MAX];
    char store_dir[BS_CFG_STR_MAX];
    long long budget;
    long long high_pct, low_pct;
    long long chunk_bytes, block_bytes;
    long long fill_workers, fill_queue, fill_wait_ms;
    long long tenant_workers, tenant_queue;
    long long answer_ms, check_ms;
    char allowed[BS_CFG_STR_MAX];
    long long grant_ttl_ms, max_grants;
    long long max_clients, max_per_peer;
    long long conn_lifetime_ms, conn_idle_ms, request_read_ms;
    long long drain_ms;
    long long origin_connections, origin_deadline_ms;
    char ca_bundle[BS_CFG_STR_MAX];
    char log_level[BS_CFG_STR_MAX];
    long long fill_stall_ms;
    /* peer sharing */
    char redis_url[BS_CFG_STR_MAX], redis_password_file[BS_CFG_STR_MAX];
    long long redis_timeout_ms;
    char peer_listen[BS_CFG_STR_MAX], advertise[BS_CFG_STR_MAX];
    char secret_file[BS_CFG_STR_MAX], node_name[BS_CFG_STR_MAX];
    long long peer_uploads, peer_downloads, peer_timeout_ms, peer_window_ms, peer_max_wait_ms;
    long long lease_ms, lease_wait_ms, node_ttl_ms, holder_ttl_ms, max_holders;
    long long readahead, readahead_workers;
};

#define F(field) offsetof(struct agent_config, field)
static const struct bs_cfg_entry agent_settings[] = {
    {"BLOBSWARM_AGENT_SOCKET", BS_CFG_STR, 0, 107, "/run/blobswarm/agent.sock", F(socket_path),
     "Unix socket for the shims of this node (descriptor passing); empty: none", 0},
    {"BLOBSWARM_AGENT_SOCKET_MODE", BS_CFG_STR, 1, 4, "0660", F(socket_mode),
     "permissions of the socket file, octal (0600, 0660, 0666; root ignores them)", 0},
    {"BLOBSWARM_AGENT_LISTEN", BS_CFG_STR, 0, 64, "0.0.0.0:8787", F(listen),
     "HTTP API address IPv4:port (port 0: any free one); empty: none", 0},
    {"BLOBSWARM_AGENT_PORT_FILE", BS_CFG_STR, 0, 1000, "", F(port_file),
     "write the HTTP port here once listening (for tests and scripts)", 0},
    {"BLOBSWARM_STORE_DIR", BS_CFG_STR, 1, 1000, "/var/lib/blobswarm/chunks", F(store_dir),
     "directory of the chunk store", 0},
    {"BLOBSWARM_STORE_BUDGET", BS_CFG_BYTES, 64LL << 20, 1LL << 50, "50G", F(budget),
     "bytes the store may use on disk", 0},
    {"BLOBSWARM_STORE_HIGH_PCT", BS_CFG_INT, 10, 100, "95", F(high_pct),
     "a fill that would pass this share of the budget evicts ...", 0},
    {"BLOBSWARM_STORE_LOW_PCT", BS_CFG_INT, 1, 99, "85", F(low_pct), "... down to this share", 0},
    {"BLOBSWARM_CHUNK_BYTES", BS_CFG_BYTES, 1LL << 20, 64LL << 20, "8M", F(chunk_bytes),
     "chunk grid of the store (see docs/agent.md for the measurement behind the default)", 0},
    {"BLOBSWARM_BLOCK_BYTES", BS_CFG_BYTES, 4096, 1LL << 20, "64K", F(block_bytes),
     "checksum block within a chunk (power of two)", 0},
    {"BLOBSWARM_FILL_WORKERS", BS_CFG_INT, 1, 256, "16", F(fill_workers),
     "concurrent origin fills; each holds one chunk in memory", 0},
    {"BLOBSWARM_FILL_QUEUE", BS_CFG_INT, 1, 100000, "256", F(fill_queue),
     "fills waiting for a worker; beyond this requests get CACHEMISS", 0},
    {"BLOBSWARM_FILL_WAIT_MS", BS_CFG_MS, 10, 600000, "2000", F(fill_wait_ms),
     "a request waits at most this long for its fill (at most BLOBSWARM_ANSWER_MS)", 0},
    {"BLOBSWARM_FILL_WORKERS_PER_TENANT", BS_CFG_INT, 0, 256, "0", F(tenant_workers),
     "fill workers one storage endpoint may use at once; 0: three quarters of FILL_WORKERS", 0},
    {"BLOBSWARM_FILL_QUEUE_PER_TENANT", BS_CFG_INT, 1, 100000, "64", F(tenant_queue),
     "fills one storage endpoint may have waiting; beyond this its requests get CACHEMISS", 0},
    {"BLOBSWARM_ANSWER_MS", BS_CFG_MS, 100, BS_PROTO_MAX_ANSWER_MS, "4000", F(answer_ms),
     "every chunk request is answered within this (access check, HEAD and fill wait "
     "included), CACHEMISS past it; keep it under the shim's BLOBSWARM_AGENT_TIMEOUT_MS",
     0},
    {"BLOBSWARM_CHECK_MS", BS_CFG_MS, 50, 600000, "2000", F(check_ms),
     "limit of one access check (HEAD to Azure); must be below BLOBSWARM_ANSWER_MS", 0},
    {"BLOBSWARM_ALLOWED_ENDPOINTS", BS_CFG_STR, 1, 1000,
     "https://*.blob.core.windows.net,https://*.blob.core.chinacloudapi.cn,"
     "https://*.blob.core.usgovcloudapi.net",
     F(allowed), "blob endpoints delegated reads may go to ('*' = one name label or port)", 0},
    {"BLOBSWARM_GRANT_TTL_MS", BS_CFG_MS, 1000, 3600000, "60000", F(grant_ttl_ms),
     "how long a verified (credential, blob version) grant is trusted", 0},
    {"BLOBSWARM_MAX_GRANTS", BS_CFG_INT, 16, 10000000, "65536", F(max_grants), "grants kept", 0},
    {"BLOBSWARM_MAX_CLIENTS", BS_CFG_INT, 1, 65536, "1024", F(max_clients),
     "connections per listener (Unix socket, HTTP)", 0},
    {"BLOBSWARM_MAX_CLIENTS_PER_PEER", BS_CFG_INT, 1, 65536, "512", F(max_per_peer),
     "connections per peer and listener: Unix by uid + cgroup, HTTP by client IP", 0},
    {"BLOBSWARM_CONN_LIFETIME_MS", BS_CFG_MS, 1000, 86400000, "600000", F(conn_lifetime_ms),
     "a connection is closed this long after it was opened (after the request in progress)", 0},
    {"BLOBSWARM_CONN_IDLE_MS", BS_CFG_MS, 1000, 3600000, "120000", F(conn_idle_ms),
     "a Unix connection without a request for this long is closed", 0},
    {"BLOBSWARM_REQUEST_READ_MS", BS_CFG_MS, 100, 600000, "10000", F(request_read_ms),
     "a request must arrive whole within this: a Unix frame from its first byte, an HTTP "
     "request from the connection's start or the previous answer (also the HTTP idle limit)",
     0},
    {"BLOBSWARM_DRAIN_MS", BS_CFG_MS, 0, 600000, "10000", F(drain_ms),
     "on SIGTERM, time given to requests in progress", 0},
    {"BLOBSWARM_ORIGIN_CONNECTIONS", BS_CFG_INT, 1, 1024, "64", F(origin_connections),
     "HTTP transfers to Azure in flight", 0},
    {"BLOBSWARM_ORIGIN_DEADLINE_MS", BS_CFG_MS, 100, 3600000, "60000", F(origin_deadline_ms),
     "limit for one origin read, retries included", 0},
    {"BLOBSWARM_CA_BUNDLE", BS_CFG_STR, 0, 1000, "", F(ca_bundle),
     "CA certificates file for HTTPS to Azure (default: the system store)", 0},
    {"BLOBSWARM_LOG_LEVEL", BS_CFG_STR, 0, 16, "info", F(log_level), "error, warn, info or debug",
     0},
    {"BLOBSWARM_FILL_STALL_MS", BS_CFG_MS, 100, 600000, "10000", F(fill_stall_ms),
     "fills count as moving while one ended within this: a request whose wait ran out is then "
     "told PENDING (ask again) instead of CACHEMISS (read Azure)",
     0},
    /* Peer sharing: off unless BLOBSWARM_REDIS_URL is set (docs/protocol.md, "Peers"). */
    {"BLOBSWARM_REDIS_URL", BS_CFG_STR, 0, 1000, "", F(redis_url),
     "redis://[:password@]host:port[/db] of the cluster index; empty: no peer sharing", 1},
    {"BLOBSWARM_REDIS_PASSWORD_FILE", BS_CFG_STR, 0, 1000, "", F(redis_password_file),
     "file whose first line is the Redis password (overrides the URL's)", 0},
    {"BLOBSWARM_REDIS_TIMEOUT_MS", BS_CFG_MS, 10, 10000, "500", F(redis_timeout_ms),
     "connect and command limit for Redis; past it Redis counts as down for a backoff", 0},
    {"BLOBSWARM_PEER_LISTEN", BS_CFG_STR, 0, 64, "", F(peer_listen),
     "peer HTTP address IPv4:port (other agents fetch chunks here); required with REDIS_URL", 0},
    {"BLOBSWARM_ADVERTISE_ADDR", BS_CFG_STR, 0, 63, "", F(advertise),
     "IPv4:port other agents dial (in Kubernetes the pod IP); default: PEER_LISTEN's", 0},
    {"BLOBSWARM_CLUSTER_SECRET_FILE", BS_CFG_STR, 0, 1000, "", F(secret_file),
     "file with the cluster secret (>= 32 bytes, mode 0600 or stricter); required with "
     "REDIS_URL",
     0},
    {"BLOBSWARM_NODE_NAME", BS_CFG_STR, 0, 63, "", F(node_name),
     "this agent's name in the cluster ([A-Za-z0-9._-]); default: the host name", 0},
    {"BLOBSWARM_PEER_UPLOADS", BS_CFG_INT, 1, 1024, "64", F(peer_uploads),
     "chunk bodies sent to peers at once; beyond: 503", 0},
    {"BLOBSWARM_PEER_DOWNLOADS", BS_CFG_INT, 1, 1024, "8", F(peer_downloads),
     "chunk fetches from peers at once", 0},
    {"BLOBSWARM_PEER_TIMEOUT_MS", BS_CFG_MS, 100, 600000, "10000", F(peer_timeout_ms),
     "a fetch from a holder that receives no byte for half of this is dropped and the next "
     "holder tried; waits on other agents end this long after LEASE_WAIT_MS",
     0},
    {"BLOBSWARM_PEER_WINDOW_MS", BS_CFG_MS, 1000, 600000, "30000", F(peer_window_ms),
     "a signed peer request is accepted this long either side of its timestamp", 0},
    {"BLOBSWARM_PEER_MAX_WAIT_MS", BS_CFG_MS, 0, 600000, "30000", F(peer_max_wait_ms),
     "longest a peer request waits for a fill in progress here", 0},
    {"BLOBSWARM_LEASE_MS", BS_CFG_MS, 500, 600000, "90000", F(lease_ms),
     "a fill lease (one agent reads a chunk from Azure) expires after this if not released "
     "(must exceed ORIGIN_DEADLINE_MS; a lessee that refuses connections loses it at once)",
     0},
    {"BLOBSWARM_LEASE_WAIT_MS", BS_CFG_MS, 100, 600000, "60000", F(lease_wait_ms),
     "longest a fill waits on other agents (lease holders) before it reads Azure itself", 0},
    {"BLOBSWARM_NODE_TTL_MS", BS_CFG_MS, 1000, 600000, "15000", F(node_ttl_ms),
     "registry entry lifetime (heartbeat every third); also how soon a flushed Redis is noticed",
     0},
    {"BLOBSWARM_HOLDER_TTL_MS", BS_CFG_MS, 10000, 604800000, "21600000", F(holder_ttl_ms),
     "a chunk's holder set expires this long after its last announce", 0},
    {"BLOBSWARM_MAX_HOLDERS", BS_CFG_INT, 1, 8, "8", F(max_holders),
     "newest holders kept per chunk in Redis", 0},
    {"BLOBSWARM_READAHEAD", BS_CFG_INT, 0, 1, "1", F(readahead),
     "with peers: once a caller with a grant reads a blob version, fetch the rest of it in the "
     "background (blobs up to a quarter of the store budget)",
     0},
    {"BLOBSWARM_READAHEAD_WORKERS", BS_CFG_INT, 0, 256, "0", F(readahead_workers),
     "fill workers read-ahead may use at once; 0: half of FILL_WORKERS", 0},
};
#undef F
#define NSETTINGS (sizeof(agent_settings) / sizeof(agent_settings[0]))

/* Configuration sources, highest precedence first: flags, environment, JSON file. */
struct sources {
    int argc;
    char **argv;
    json_t *file;
    char buf[BS_CFG_STR_MAX];
};

/* "BLOBSWARM_STORE_DIR" -> "store-dir" (flag) or "store_dir" (file key). */
static void short_name(const char *name, char sep, char *out, size_t outsz)
{
    const char *p = strncmp(name, "BLOBSWARM_", 10) == 0 ? name + 10 : name;
    size_t i = 0;
    for (; *p && i + 1 < outsz; p++)
        out[i++] = *p == '_' ? sep : (char)tolower((unsigned char)*p);
    out[i] = '\0';
}

static const char *lookup(const char *name, void *ctx)
{
    struct sources *s = ctx;
    char flag[96];
    short_name(name, '-', flag, sizeof(flag));
    size_t fl = strlen(flag);
    for (int i = s->argc - 1; i >= 1; i--) { /* the last occurrence wins */
        const char *a = s->argv[i];
        if (strncmp(a, "--", 2) != 0 || strncmp(a + 2, flag, fl) != 0)
            continue;
        if (a[2 + fl] == '=')
            return a + 3 + fl;
        if (a[2 + fl] == '\0' && i + 1 < s->argc)
            return s->argv[i + 1];
    }
    const char *env = getenv(name);
    if (env)
        return env;
    if (s->file) {
        char key[96];
        short_name(name, '_', key, sizeof(key));
        json_t *v = json_object_get(s->file, key);
        if (!v)
            v = json_object_get(s->file, name);
        if (json_is_string(v))
            return json_string_value(v);
        if (json_is_integer(v)) {
            snprintf(s->buf, sizeof(s->buf), "%lld", (long long)json_integer_value(v));
            return s->buf;
        }
    }
    return NULL;
}

/* Rejects flags that name no setting, so a typo is an error, not a silent default. */
static int check_flags(int argc, char **argv, char *err, size_t errsz)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errsz, "unexpected argument \"%s\"", a);
            return -EINVAL;
        }
        if (strcmp(a, "--check-config") == 0 || strcmp(a, "--settings-json") == 0)
            continue;
        if (strncmp(a, "--config", 8) == 0 && (a[8] == '=' || a[8] == '\0')) {
            i += a[8] == '\0';
            continue;
        }
        int known = 0;
        for (size_t k = 0; k < NSETTINGS && !known; k++) {
            char flag[96];
            short_name(agent_settings[k].name, '-', flag, sizeof(flag));
            size_t fl = strlen(flag);
            if (strncmp(a + 2, flag, fl) == 0 && (a[2 + fl] == '=' || a[2 + fl] == '\0')) {
                known = 1;
                i += a[2 + fl] == '\0';
            }
        }
        if (!known) {
            snprintf(err, errsz, "unknown option \"%s\" (see --help)", a);
            return -EINVAL;
        }
    }
    return 0;
}

/* Settings that bound one another: the answer deadline holds every wait of a request (an
 * error otherwise); a per-peer or per-tenant share is at most the whole (lowered to it).
 * Returns 0 or -EINVAL with a message. */
static int check_consistent(struct agent_config *c, unsigned *mode, char *err, size_t errsz)
{
    char *end = NULL;
    unsigned long m = strtoul(c->socket_mode, &end, 8);
    if (!*c->socket_mode || *end || m > 0777) {
        snprintf(err, errsz, "BLOBSWARM_AGENT_SOCKET_MODE=%.8s is not an octal mode (e.g. 0660)",
                 c->socket_mode);
        return -EINVAL;
    }
    *mode = (unsigned)m;
    if (c->low_pct >= c->high_pct || (c->block_bytes & (c->block_bytes - 1)) ||
        c->chunk_bytes % c->block_bytes || c->chunk_bytes / c->block_bytes > BS_PROTO_MAX_CRCS) {
        snprintf(err, errsz,
                 "need STORE_LOW_PCT < STORE_HIGH_PCT, and BLOCK_BYTES a power of two dividing "
                 "CHUNK_BYTES into at most %d blocks",
                 BS_PROTO_MAX_CRCS);
        return -EINVAL;
    }
    if (c->fill_wait_ms > c->answer_ms || c->check_ms >= c->answer_ms) {
        snprintf(err, errsz,
                 "need FILL_WAIT_MS (%lld) <= ANSWER_MS (%lld) and CHECK_MS (%lld) < ANSWER_MS",
                 c->fill_wait_ms, c->answer_ms, c->check_ms);
        return -EINVAL;
    }
    /* A share larger than the whole is the whole. */
    if (c->tenant_workers == 0)
        c->tenant_workers = c->fill_workers * 3 / 4 > 0 ? c->fill_workers * 3 / 4 : 1;
    if (c->tenant_workers > c->fill_workers)
        c->tenant_workers = c->fill_workers;
    if (c->tenant_queue > c->fill_queue)
        c->tenant_queue = c->fill_queue;
    if (c->max_per_peer > c->max_clients)
        c->max_per_peer = c->max_clients;
    if (!c->socket_path[0] && !c->listen[0]) {
        snprintf(err, errsz, "neither a socket nor a listen address configured");
        return -EINVAL;
    }
    if (c->readahead_workers == 0 || c->readahead_workers > c->fill_workers)
        c->readahead_workers = c->fill_workers / 2 > 0 ? c->fill_workers / 2 : 1;
    if (c->redis_url[0]) {
        if (!c->peer_listen[0] || !c->secret_file[0]) {
            snprintf(err, errsz,
                     "BLOBSWARM_REDIS_URL needs BLOBSWARM_PEER_LISTEN and "
                     "BLOBSWARM_CLUSTER_SECRET_FILE");
            return -EINVAL;
        }
        if (c->lease_ms <= c->origin_deadline_ms) {
            /* A fill that outlives its lease lets a second agent read the chunk from Azure. */
            snprintf(err, errsz, "need LEASE_MS (%lld) > ORIGIN_DEADLINE_MS (%lld)", c->lease_ms,
                     c->origin_deadline_ms);
            return -EINVAL;
        }
        if (c->max_per_peer < c->peer_downloads) {
            /* A peer keeps up to PEER_DOWNLOADS connections to us; beyond the per-IP limit
             * they would be dropped unanswered and read as "peer dead". */
            snprintf(err, errsz, "need MAX_CLIENTS_PER_PEER (%lld) >= PEER_DOWNLOADS (%lld)",
                     c->max_per_peer, c->peer_downloads);
            return -EINVAL;
        }
        if (!c->advertise[0]) {
            if (strncmp(c->peer_listen, "0.0.0.0:", 8) == 0) {
                snprintf(err, errsz,
                         "BLOBSWARM_PEER_LISTEN is 0.0.0.0: set "
                         "BLOBSWARM_ADVERTISE_ADDR (in Kubernetes the pod IP)");
                return -EINVAL;
            }
            snprintf(c->advertise, sizeof(c->advertise), "%s", c->peer_listen);
        }
        if (!c->node_name[0] && gethostname(c->node_name, 63) != 0) {
            snprintf(err, errsz, "no BLOBSWARM_NODE_NAME and no host name");
            return -EINVAL;
        }
        c->node_name[63] = '\0';
    }
    return 0;
}

/* Descriptors the agent keeps besides its listeners' connections: the store, logs, the
 * listening sockets, curl's and the threads' internals. */
#define FD_RESERVE 64
/* The smallest connection limit the agent runs with when it must lower the limits. */
#define MIN_CLIENTS 16

/* Raises RLIMIT_NOFILE's soft limit to the hard limit, then makes sure the listeners'
 * limits fit under it: each connection may hold two descriptors (its socket and a chunk file
 * being sent), each origin connection one, plus FD_RESERVE. If they do not fit, max_clients
 * (and the per-peer limit with it) is lowered to what fits, and said so; below MIN_CLIENTS
 * the agent refuses to start. Returns 0 or -EMFILE with a message. */
static int fit_descriptors(struct agent_config *c, char *err, size_t errsz)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        snprintf(err, errsz, "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        return -errno;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t old = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            rl.rlim_cur = old;
    }
    long long listeners = (c->socket_path[0] ? 1 : 0) + (c->listen[0] ? 1 : 0);
    long long fixed = c->origin_connections + c->fill_workers + FD_RESERVE;
    long long need = fixed + 2 * listeners * c->max_clients;
    long long have = rl.rlim_cur == RLIM_INFINITY ? (1LL << 40) : (long long)rl.rlim_cur;
    if (need <= have) {
        bs_log(BS_LOG_INFO, "agent", "event=descriptors limit=%lld need=%lld", have, need);
        return 0;
    }
    long long fit = (have - fixed) / (2 * listeners);
    if (fit < MIN_CLIENTS) {
        snprintf(err, errsz,
                 "RLIMIT_NOFILE is %lld: too low for %d connections per listener, %lld origin "
                 "connections and %d spare descriptors; raise it (ulimit -n) or lower "
                 "BLOBSWARM_ORIGIN_CONNECTIONS",
                 have, MIN_CLIENTS, c->origin_connections, FD_RESERVE);
        return -EMFILE;
    }
    bs_log(BS_LOG_WARN, "agent",
           "event=limits_lowered reason=descriptors rlimit_nofile=%lld max_clients=%lld->%lld",
           have, c->max_clients, fit);
    c->max_clients = fit;
    if (c->max_per_peer > fit)
        c->max_per_peer = fit;
    return 0;
}

/* The settings table as JSON (name, flag, file key, type, bounds, default, help, secret):
 * what the Helm chart's values and schema are checked against, so they cannot drift. */
static int print_settings_json(FILE *out)
{
    static const char *const types[] = {"int", "bytes", "ms", "string"};
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < NSETTINGS; i++) {
        const struct bs_cfg_entry *e = &agent_settings[i];
        char flag[96], key[96];
        short_name(e->name, '-', flag, sizeof(flag));
        short_name(e->name, '_', key, sizeof(key));
        json_t *o =
            json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:s,s:s,s:b}", "env", e->name, "flag", flag, "key",
                      key, "type", types[e->type], "min", (json_int_t)e->min, "max",
                      (json_int_t)e->max, "default", e->def, "help", e->help, "secret", e->secret);
        if (!o || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            return 1;
        }
    }
    int rc = arr && json_dumpf(arr, out, JSON_INDENT(1)) == 0 && fputc('\n', out) != EOF ? 0 : 1;
    json_decref(arr);
    return rc;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: blobswarm-agent [--config FILE.json] [--<setting>=VALUE ...]\n"
                 "       blobswarm-agent --check-config [...]   validate the settings, exit 0/2\n"
                 "       blobswarm-agent --settings-json        the settings table as JSON\n\n"
                 "Each setting is a flag (--store-dir), an environment variable\n"
                 "(BLOBSWARM_STORE_DIR) or a key of the JSON file (store_dir), in that order "
                 "of precedence.\n\n");
    bs_cfg_print_help(agent_settings, NSETTINGS, out);
}

/* The service the store's eviction hook reports to (set once the service exists, cleared
 * before it is destroyed; the hook runs on threads the service and servers own). */
static _Atomic(struct bs_service *) evict_svc;

static void on_evict(void *arg, const struct bs_chunk_key *k)
{
    (void)arg;
    struct bs_service *s = atomic_load(&evict_svc);
    if (s)
        bs_service_evicted(s, k);
}

int main(int argc, char **argv)
{
    char err[512];
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    int check_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--settings-json") == 0)
            return print_settings_json(stdout);
        check_only |= strcmp(argv[i], "--check-config") == 0;
    }
    struct sources src = {argc, argv, NULL, ""};
    const char *cfgfile = getenv("BLOBSWARM_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--config=", 9) == 0)
            cfgfile = argv[i] + 9;
        else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            cfgfile = argv[i + 1];
    }
    if (check_flags(argc, argv, err, sizeof(err)) != 0) {
        fprintf(stderr, "blobswarm-agent: %s\n", err);
        return 2;
    }
    if (cfgfile && *cfgfile) {
        json_error_t je;
        src.file = json_load_file(cfgfile, 0, &je);
        if (!json_is_object(src.file)) {
            fprintf(stderr, "blobswarm-agent: config file %s: %s\n", cfgfile,
                    src.file ? "not a JSON object" : je.text);
            return 2;
        }
    }
    struct agent_config cfg;
    if (bs_cfg_load(agent_settings, NSETTINGS, &cfg, lookup, &src, err, sizeof(err)) != 0) {
        fprintf(stderr, "blobswarm-agent: %s\n", err);
        json_decref(src.file);
        return 2;
    }
    json_decref(src.file);
    unsigned socket_mode = 0;
    if (check_consistent(&cfg, &socket_mode, err, sizeof(err)) != 0) {
        fprintf(stderr, "blobswarm-agent: %s\n", err);
        return 2;
    }
    if (check_only) {
        /* What a start would refuse, short of opening the store or files. */
        printf("blobswarm-agent: configuration ok\n");
        return 0;
    }
    bs_log_set_level(bs_log_parse_level(cfg.log_level, BS_LOG_INFO));
    char line[4096];
    bs_cfg_format(agent_settings, NSETTINGS, &cfg, line, sizeof(line));
    bs_log(BS_LOG_INFO, "agent", "event=config %s", line);
    if (fit_descriptors(&cfg, err, sizeof(err)) != 0) {
        bs_log(BS_LOG_ERROR, "agent", "event=start_failed msg=\"%s\"", err);
        fprintf(stderr, "blobswarm-agent: %s\n", err);
        return 2;
    }

    /* Signals are taken by sigwait below; every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_ALL);

    int rc = 1;
    struct bs_metrics *metrics = bs_metrics_create();
    struct bs_store *store = NULL;
    struct bs_fetch *fetch = NULL;
    struct bs_blobreader *reader = NULL, *check_reader = NULL;
    struct bs_service *svc = NULL;
    struct bs_unixsrv *usrv = NULL;
    struct bs_httpsrv *hsrv = NULL;
    struct bs_peersrv *psrv = NULL;
    struct bs_peerclient *pclient = NULL;
    struct bs_redisidx *idx = NULL;
    static struct bs_peer_secret secret; /* static: large, and the peer modules borrow it */
    if (!metrics)
        goto out;

    struct bs_store_opts so = {
        .dir = cfg.store_dir,
        .budget_bytes = (uint64_t)cfg.budget,
        .high_watermark_pct = (int)cfg.high_pct,
        .low_watermark_pct = (int)cfg.low_pct,
        .block_size = (uint32_t)cfg.block_bytes,
        .on_evict = on_evict,
    };
    store = bs_store_create(&so, err, sizeof(err));
    if (!store) {
        bs_log(BS_LOG_ERROR, "agent", "event=store_failed msg=\"%s\"", err);
        goto out;
    }
    struct bs_store_stats st;
    bs_store_get_stats(store, &st);
    bs_log(BS_LOG_INFO, "agent",
           "event=store_open dir=\"%s\" chunks=%llu bytes=%llu dropped=%llu tamper_protection=%s",
           cfg.store_dir, (unsigned long long)st.chunks, (unsigned long long)st.bytes,
           (unsigned long long)st.dropped_corrupt, bs_store_protection_name(st.protection));
    /* Decided once at start (store.h): 1 on the series of the mode in use. */
    bs_metric_set(bs_metrics_gauge(metrics, "blobswarm_store_tamper_protection",
                                   "How chunk files are kept from being rewritten: 1 for the "
                                   "mode in use (immutable, none).",
                                   "mode"),
                  bs_store_protection_name(st.protection), 1);

    struct bs_fetch_opts fo = {
        .io_threads = 2,
        .max_connections = (int)cfg.origin_connections,
        .connect_timeout_ms = 5000,
        .stall_timeout_ms = 15000,
        .ca_bundle = cfg.ca_bundle,
    };
    fetch = bs_fetch_create(&fo, err, sizeof(err));
    struct bs_blobreader_opts ro = {
        .range_bytes = (uint64_t)cfg.chunk_bytes,
        .deadline_ms = cfg.origin_deadline_ms,
        .max_retries = 8,
        .retry_base_ms = 100,
        .retry_max_ms = 5000,
        .props_ttl_ms = 0,
        .props_max_entries = 1,
    };
    reader = fetch ? bs_blobreader_create(&ro, fetch) : NULL;
    /* Access checks answer a waiting request: one retry, within BLOBSWARM_CHECK_MS. */
    struct bs_blobreader_opts co = ro;
    co.deadline_ms = cfg.check_ms;
    co.max_retries = 1;
    check_reader = fetch ? bs_blobreader_create(&co, fetch) : NULL;
    if (!reader || !check_reader) {
        bs_log(BS_LOG_ERROR, "agent", "event=origin_failed msg=\"%s\"", err);
        goto out;
    }
    struct bs_service_opts vo = {
        .chunk_size = (uint64_t)cfg.chunk_bytes,
        .block_size = (uint32_t)cfg.block_bytes,
        .fill_wait_ms = cfg.fill_wait_ms,
        .fill_workers = (int)cfg.fill_workers,
        .fill_queue = (int)cfg.fill_queue,
        .tenant_workers = (int)cfg.tenant_workers,
        .tenant_queue = (int)cfg.tenant_queue,
        .answer_ms = cfg.answer_ms,
        .check_ms = cfg.check_ms,
        .allowed_endpoints = cfg.allowed,
        .grant_ttl_ms = cfg.grant_ttl_ms,
        .max_grants = (size_t)cfg.max_grants,
        .fill_stall_ms = cfg.fill_stall_ms,
    };
    svc = bs_service_create(&vo, store, reader, check_reader, metrics, err, sizeof(err));
    if (!svc)
        goto out_err;
    if (cfg.redis_url[0]) {
        /* Peer sharing: the secret, the client, the index (its heartbeat re-announces the
         * store), then the peer server. Redis being down is not an error: it is a hint. */
        if (bs_peer_secret_load(cfg.secret_file, &secret, err, sizeof(err)) != 0)
            goto out_err;
        struct bs_peerclient_opts pco = {
            .secret = &secret,
            .node = cfg.node_name,
            .max_downloads = (int)cfg.peer_downloads,
            .connect_ms = 1000,
            .stall_ms = cfg.peer_timeout_ms / 2,
        };
        pclient = bs_peerclient_create(&pco, err, sizeof(err));
        if (!pclient)
            goto out_err;
        struct bs_redisidx_opts io = {
            .url = cfg.redis_url,
            .password_file = cfg.redis_password_file[0] ? cfg.redis_password_file : NULL,
            .node = cfg.node_name,
            .advertise = cfg.advertise,
            .timeout_ms = cfg.redis_timeout_ms,
            .node_ttl_ms = cfg.node_ttl_ms,
            .holder_ttl_ms = cfg.holder_ttl_ms,
            .lease_ms = cfg.lease_ms,
            .max_holders = (int)cfg.max_holders,
        };
        idx = bs_redisidx_create(&io, metrics, err, sizeof(err));
        if (!idx)
            goto out_err;
        struct bs_service_peers sp = {
            .idx = idx,
            .client = pclient,
            .peer_timeout_ms = cfg.peer_timeout_ms,
            .lease_wait_ms = cfg.lease_wait_ms,
            .readahead = (int)cfg.readahead,
            .readahead_workers = (int)cfg.readahead_workers,
        };
        bs_service_set_peers(svc, &sp);
        atomic_store(&evict_svc, svc);
        bs_redisidx_set_reannounce(idx, bs_service_reannounce, svc);
        struct bs_peersrv_opts po = {
            .listen = cfg.peer_listen,
            .advertise = cfg.advertise,
            .secret = &secret,
            .window_ms = cfg.peer_window_ms,
            .max_uploads = (int)cfg.peer_uploads,
            .max_clients = (int)cfg.max_clients,
            /* A peer keeps at most 4 connections per download slot; more from one address
             * is a flood (a pod without the secret), not an agent. */
            .max_per_ip = (int)(4 * cfg.peer_downloads < cfg.max_per_peer ? 4 * cfg.peer_downloads
                                                                          : cfg.max_per_peer),
            .conn_idle_ms = cfg.request_read_ms,
            .max_wait_ms = cfg.peer_max_wait_ms,
        };
        psrv = bs_peersrv_create(&po, svc, metrics, err, sizeof(err));
        if (!psrv)
            goto out_err;
        bs_log(BS_LOG_INFO, "agent", "event=peers node=%s advertise=%s peer_port=%d", cfg.node_name,
               cfg.advertise, bs_peersrv_port(psrv));
    }
    if (cfg.socket_path[0]) {
        char dir[BS_CFG_STR_MAX];
        snprintf(dir, sizeof(dir), "%s", cfg.socket_path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            mkdir(dir, 0755);
        }
        struct bs_unixsrv_opts uo = {
            .path = cfg.socket_path,
            .mode = socket_mode,
            .max_clients = (int)cfg.max_clients,
            .max_per_peer = (int)cfg.max_per_peer,
            .lifetime_ms = cfg.conn_lifetime_ms,
            .idle_ms = cfg.conn_idle_ms,
            .frame_ms = cfg.request_read_ms,
        };
        usrv = bs_unixsrv_create(&uo, svc, metrics, err, sizeof(err));
        if (!usrv)
            goto out_err;
    }
    if (cfg.listen[0]) {
        struct bs_httpsrv_opts ho = {
            .listen = cfg.listen,
            .max_clients = (int)cfg.max_clients,
            .max_per_ip = (int)cfg.max_per_peer,
            .lifetime_ms = cfg.conn_lifetime_ms,
            .request_read_ms = cfg.request_read_ms,
        };
        hsrv = bs_httpsrv_create(&ho, svc, metrics, store, err, sizeof(err));
        if (!hsrv)
            goto out_err;
        if (cfg.port_file[0]) {
            char tmp[BS_CFG_STR_MAX + 8];
            snprintf(tmp, sizeof(tmp), "%s.tmp", cfg.port_file);
            FILE *f = fopen(tmp, "w");
            if (!f || fprintf(f, "%d\n", bs_httpsrv_port(hsrv)) < 0 || fclose(f) != 0 ||
                rename(tmp, cfg.port_file) != 0) {
                snprintf(err, sizeof(err), "cannot write %.400s", cfg.port_file);
                goto out_err;
            }
        }
    }
    if (bs_metrics_error(metrics, err, sizeof(err)) != 0)
        goto out_err;
    bs_log(BS_LOG_INFO, "agent", "event=ready socket=\"%s\" http_port=%d", cfg.socket_path,
           hsrv ? bs_httpsrv_port(hsrv) : 0);

    int sig = 0;
    sigwait(&sigs, &sig);
    bs_log(BS_LOG_INFO, "agent", "event=draining signal=%d drain_ms=%lld", sig, cfg.drain_ms);
    /* Drain: readiness off, no new connections, requests in progress may finish, all within
     * one drain period. What is still running then (a request stuck on Azure, a fill) is
     * not waited for: the agent exits at once, without freeing what those threads use. The
     * store needs no shutdown: chunks are renamed into place only when complete. */
    uint64_t drain_end = bs_now_ns() + (uint64_t)cfg.drain_ms * 1000000ull;
    if (hsrv)
        bs_httpsrv_set_ready(hsrv, 0);
    int left = bs_unixsrv_destroy(usrv, cfg.drain_ms);
    usrv = NULL;
    uint64_t now = bs_now_ns();
    long rest = now < drain_end ? (long)((drain_end - now) / 1000000ull) : 0;
    left += bs_httpsrv_destroy(hsrv, rest);
    hsrv = NULL;
    /* Then peers: waits for fills end now (404), bodies being sent may finish. */
    bs_service_stop(svc);
    now = bs_now_ns();
    rest = now < drain_end ? (long)((drain_end - now) / 1000000ull) : 0;
    left += bs_peersrv_destroy(psrv, rest);
    psrv = NULL;
    if (left > 0 || bs_service_busy(svc) > 0) {
        bs_log(BS_LOG_WARN, "agent",
               "event=exit rc=0 drained=partial requests_left=%d fills_left=%d", left,
               bs_service_busy(svc));
        _exit(0);
    }
    rc = 0;
    goto out;

out_err:
    bs_log(BS_LOG_ERROR, "agent", "event=start_failed msg=\"%s\"", err);
out:
    bs_unixsrv_destroy(usrv, 0);
    bs_httpsrv_destroy(hsrv, 0);
    bs_peersrv_destroy(psrv, 0);
    if (idx) /* no re-announce into a service being destroyed (waits for one running) */
        bs_redisidx_set_reannounce(idx, NULL, NULL);
    atomic_store(&evict_svc, NULL);
    bs_service_destroy(svc);
    bs_redisidx_destroy(idx);
    bs_peerclient_destroy(pclient);
    explicit_bzero(&secret, sizeof(secret));
    bs_blobreader_destroy(check_reader);
    bs_blobreader_destroy(reader);
    bs_fetch_destroy(fetch);
    bs_store_destroy(store);
    bs_metrics_destroy(metrics);
    bs_log(BS_LOG_INFO, "agent", "event=exit rc=%d", rc);
    return rc;
}
