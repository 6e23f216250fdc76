/* Peer authentication (see peerauth.h): the cluster secret file, request signatures and chunk
 * records, HMAC-SHA256 through OpenSSL's EVP_MAC. Header values are parsed strictly, one
 * spelling only: fields in their order, separated by one space, decimals without sign, space
 * or leading zero, digests as 64 lower-case hex digits, nothing before or after. It sends and
 * receives nothing and keeps no state but the MAC algorithm it fetched once. */
#include "peerauth.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#define SECRET_FILE_MAX 4096 /* bytes of the file, whitespace included */
#define NODE_MAX        63   /* node names: [A-Za-z0-9._-]{1,63}, as in the Redis index */
#define DEC_MAX         19   /* digits of a decimal field (int64 ms, uint64 lengths) */
#define MAC_HEX         64
#define REQ_CONTEXT     "bs-peer-req-v1\n"
#define REC_CONTEXT     "bs-chunk-rec-v1\n"

static EVP_MAC *hmac_alg;
static pthread_once_t hmac_once = PTHREAD_ONCE_INIT;

static void hmac_fetch(void)
{
    hmac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

/* HMAC-SHA256 of the concatenation of n parts under the secret. 0 or -1 (OpenSSL failed:
 * callers then produce nothing that verifies). */
static int hmac_parts(const struct bs_peer_secret *s, const char *const *parts, size_t n,
                      unsigned char out[32])
{
    pthread_once(&hmac_once, hmac_fetch);
    if (!hmac_alg || !s || s->len == 0)
        return -1;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(hmac_alg);
    if (!ctx)
        return -1;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    size_t outlen = 0;
    int ok = EVP_MAC_init(ctx, s->key, s->len, params);
    for (size_t i = 0; ok && i < n; i++)
        ok = EVP_MAC_update(ctx, (const unsigned char *)parts[i], strlen(parts[i]));
    ok = ok && EVP_MAC_final(ctx, out, &outlen, 32) && outlen == 32;
    EVP_MAC_CTX_free(ctx);
    return ok ? 0 : -1;
}

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* upper case is not the one spelling */
}

/* Decodes exactly 2n lower-case hex digits. 0 or -1. */
static int hex_decode(const char *in, size_t n, unsigned char *out)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hex_digit(in[2 * i]), lo = hex_digit(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

static int node_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static int node_ok(const char *node)
{
    size_t n = node ? strlen(node) : 0;
    if (n == 0 || n > NODE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!node_char(node[i]))
            return 0;
    return 1;
}

/* Consumes `lit` at *p. 1 if it was there. */
static int take(const char **p, const char *lit)
{
    size_t n = strlen(lit);
    if (strncmp(*p, lit, n) != 0)
        return 0;
    *p += n;
    return 1;
}

/* Consumes a canonical decimal (no sign, no leading zero, at most DEC_MAX digits, at most
 * max). 0 or -1. */
static int take_dec(const char **p, uint64_t max, uint64_t *v)
{
    const char *s = *p;
    uint64_t x = 0;
    size_t n = 0;
    while (s[n] >= '0' && s[n] <= '9') {
        if (n == DEC_MAX)
            return -1;
        unsigned d = (unsigned)(s[n] - '0');
        if (x > (max - d) / 10)
            return -1;
        x = x * 10 + d;
        n++;
    }
    if (n == 0 || (n > 1 && s[0] == '0'))
        return -1;
    *v = x;
    *p = s + n;
    return 0;
}

/* Consumes exactly 64 lower-case hex digits into 32 bytes. 0 or -1. */
static int take_hex32(const char **p, unsigned char out[32])
{
    if (strnlen(*p, MAC_HEX) < MAC_HEX || hex_decode(*p, 32, out) != 0)
        return -1;
    *p += MAC_HEX;
    return 0;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int bs_peer_secret_load(const char *path, struct bs_peer_secret *s, char *err, size_t errsz)
{
    unsigned char buf[SECRET_FILE_MAX + 1]; /* cleansed before return */
    struct stat st, fst;
    int rc = -1;
    memset(s, 0, sizeof(*s));
    if (!path || !*path) {
        snprintf(err, errsz, "cluster secret file: no path given");
        return -1;
    }
    if (lstat(path, &st) != 0) {
        snprintf(err, errsz, "cluster secret file %s: %s", path, strerror(errno));
        return -1;
    }
    if (S_ISLNK(st.st_mode)) {
        snprintf(err, errsz, "cluster secret file %s is a symbolic link (refused)", path);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errsz, "cluster secret file %s is not a regular file", path);
        return -1;
    }
    if (st.st_mode & 077) {
        snprintf(err, errsz,
                 "cluster secret file %s has mode %04o: group or others may read it "
                 "(chmod 0600)",
                 path, (unsigned)(st.st_mode & 0777));
        return -1;
    }
    if (st.st_size < BS_PEER_SECRET_MIN || st.st_size > SECRET_FILE_MAX) {
        snprintf(err, errsz,
                 "cluster secret file %s has %lld bytes; a secret of %d to %d bytes expected", path,
                 (long long)st.st_size, BS_PEER_SECRET_MIN, BS_PEER_SECRET_MAX);
        return -1;
    }
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errsz, "cluster secret file %s: %s", path, strerror(errno));
        return -1;
    }
    /* The file opened is the one checked (not swapped for another between the two calls). */
    if (fstat(fd, &fst) != 0 || fst.st_dev != st.st_dev || fst.st_ino != st.st_ino ||
        !S_ISREG(fst.st_mode) || (fst.st_mode & 077)) {
        snprintf(err, errsz, "cluster secret file %s changed while it was read", path);
        close(fd);
        return -1;
    }
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errsz, "cluster secret file %s: %s", path, strerror(errno));
            goto out_cleanse;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == sizeof(buf)) {
            snprintf(err, errsz, "cluster secret file %s is larger than %d bytes", path,
                     SECRET_FILE_MAX);
            goto out_cleanse;
        }
    }
    size_t a = 0, b = len;
    while (a < b && is_space((char)buf[a]))
        a++;
    while (b > a && is_space((char)buf[b - 1]))
        b--;
    if (b - a < BS_PEER_SECRET_MIN || b - a > BS_PEER_SECRET_MAX) {
        snprintf(err, errsz, "cluster secret in %s has %zu bytes after trimming; %d to %d expected",
                 path, b - a, BS_PEER_SECRET_MIN, BS_PEER_SECRET_MAX);
        goto out_cleanse;
    }
    memcpy(s->key, buf + a, b - a);
    s->len = b - a;
    rc = 0;
out_cleanse:
    OPENSSL_cleanse(buf, sizeof(buf));
    close(fd);
    return rc;
}

int64_t bs_peer_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The MAC of a request; -1 when an input cannot be signed unambiguously. */
static int request_mac(const struct bs_peer_secret *s, const char *node, const char *method,
                       const char *path_query, const char *ts, unsigned char mac[32])
{
    if (!method || !path_query || strchr(method, '\n') || strchr(path_query, '\n'))
        return -1;
    const char *parts[] = {REQ_CONTEXT, method, "\n", path_query, "\n", ts, "\n", node};
    return hmac_parts(s, parts, sizeof(parts) / sizeof(parts[0]), mac);
}

void bs_peer_sign_request(const struct bs_peer_secret *s, const char *node, const char *method,
                          const char *path_query, int64_t ts_ms, char out[BS_PEER_HDR_MAX])
{
    char ts[DEC_MAX + 2], hex[2 * 32 + 1];
    unsigned char mac[32];
    out[0] = '\0';
    if (!node_ok(node) || ts_ms < 0)
        return;
    snprintf(ts, sizeof(ts), "%lld", (long long)ts_ms);
    if (request_mac(s, node, method, path_query, ts, mac) != 0)
        return;
    hex_encode(mac, 32, hex);
    snprintf(out, BS_PEER_HDR_MAX, "v1 node=%s ts=%s mac=%s", node, ts, hex);
}

int bs_peer_verify_request(const struct bs_peer_secret *s, const char *hdr, const char *method,
                           const char *path_query, int64_t now_ms, long window_ms, char node[64],
                           char *err, size_t errsz)
{
    node[0] = '\0';
    if (!hdr || !*hdr) {
        snprintf(err, errsz, "missing");
        return -1;
    }
    /* v1 node=<name> ts=<ms> mac=<64 hex> */
    const char *p = hdr;
    char who[NODE_MAX + 1], ts[DEC_MAX + 1];
    unsigned char got[32], want[32];
    uint64_t ts_v;
    size_t n = 0;
    if (strnlen(hdr, BS_PEER_HDR_MAX) >= BS_PEER_HDR_MAX || !take(&p, "v1 node="))
        goto out_malformed;
    while (node_char(p[n]) && n < NODE_MAX)
        n++;
    if (n == 0 || p[n] != ' ')
        goto out_malformed;
    memcpy(who, p, n);
    who[n] = '\0';
    p += n;
    if (!take(&p, " ts="))
        goto out_malformed;
    const char *ts_start = p;
    if (take_dec(&p, INT64_MAX, &ts_v) != 0)
        goto out_malformed;
    memcpy(ts, ts_start, (size_t)(p - ts_start));
    ts[p - ts_start] = '\0';
    if (!take(&p, " mac=") || take_hex32(&p, got) != 0 || *p != '\0')
        goto out_malformed;
    /* The clocks of two nodes differ by at most the window, in either direction. */
    int64_t t = (int64_t)ts_v;
    uint64_t skew = t >= now_ms ? (uint64_t)t - (uint64_t)now_ms : (uint64_t)now_ms - (uint64_t)t;
    if (window_ms < 0 || skew > (uint64_t)window_ms) {
        snprintf(err, errsz, "stale");
        return -1;
    }
    if (request_mac(s, who, method, path_query, ts, want) != 0 ||
        CRYPTO_memcmp(got, want, 32) != 0) {
        snprintf(err, errsz, "bad mac");
        return -1;
    }
    memcpy(node, who, n + 1);
    return 0;
out_malformed:
    snprintf(err, errsz, "malformed");
    return -1;
}

/* The MAC of a record; -1 when the id cannot be signed unambiguously (a field missing or
 * holding a newline, which separates the fields). */
static int record_mac(const struct bs_peer_secret *s, const struct bs_chunk_id *id, uint64_t len,
                      const char sha_hex[2 * 32 + 1], unsigned char mac[32])
{
    const char *f[] = {id->account, id->container, id->blob, id->etag};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        if (!f[i] || strchr(f[i], '\n'))
            return -1;
    char index[DEC_MAX + 2], length[DEC_MAX + 2];
    snprintf(index, sizeof(index), "%llu", (unsigned long long)id->index);
    snprintf(length, sizeof(length), "%llu", (unsigned long long)len);
    const char *parts[] = {REC_CONTEXT, id->account, "\n",     id->container, "\n",
                           id->blob,    "\n",        id->etag, "\n",          index,
                           "\n",        length,      "\n",     sha_hex};
    return hmac_parts(s, parts, sizeof(parts) / sizeof(parts[0]), mac);
}

void bs_peer_sign_record(const struct bs_peer_secret *s, const struct bs_chunk_id *id, uint64_t len,
                         const unsigned char sha256[32], char out[BS_PEER_HDR_MAX])
{
    char sha_hex[2 * 32 + 1], mac_hex[2 * 32 + 1];
    unsigned char mac[32];
    out[0] = '\0';
    if (len > INT64_MAX)
        return;
    hex_encode(sha256, 32, sha_hex);
    if (record_mac(s, id, len, sha_hex, mac) != 0)
        return;
    hex_encode(mac, 32, mac_hex);
    snprintf(out, BS_PEER_HDR_MAX, "v1 len=%llu sha256=%s mac=%s", (unsigned long long)len, sha_hex,
             mac_hex);
}

int bs_peer_verify_record(const struct bs_peer_secret *s, const struct bs_chunk_id *id,
                          const char *hdr, uint64_t *len, unsigned char sha256[32], char *err,
                          size_t errsz)
{
    if (!hdr || !*hdr) {
        snprintf(err, errsz, "missing");
        return -1;
    }
    /* v1 len=<n> sha256=<64 hex> mac=<64 hex> */
    const char *p = hdr, *sha_start;
    char sha_hex[2 * 32 + 1];
    unsigned char sha[32], got[32], want[32];
    uint64_t n;
    if (strnlen(hdr, BS_PEER_HDR_MAX) >= BS_PEER_HDR_MAX || !take(&p, "v1 len=") ||
        take_dec(&p, INT64_MAX, &n) != 0 || !take(&p, " sha256="))
        goto out_malformed;
    sha_start = p;
    if (take_hex32(&p, sha) != 0 || !take(&p, " mac=") || take_hex32(&p, got) != 0 || *p != '\0')
        goto out_malformed;
    memcpy(sha_hex, sha_start, 2 * 32);
    sha_hex[2 * 32] = '\0';
    if (record_mac(s, id, n, sha_hex, want) != 0 || CRYPTO_memcmp(got, want, 32) != 0) {
        snprintf(err, errsz, "bad mac");
        return -1;
    }
    *len = n;
    memcpy(sha256, sha, 32);
    return 0;
out_malformed:
    snprintf(err, errsz, "malformed");
    return -1;
}
