/* Grant table (see grants.h): an open hash of fixed-size entries. A full table first drops
 * expired grants, then the oldest; both are O(n) scans, paid only when the table is full. */
#include "grants.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "azcred.h"
#include "clock.h"
#include "sas.h"

#define JWT_PAYLOAD_MAX 8192 /* base64url characters of a token's payload */

struct entry {
    unsigned char key[32];
    int used;
    uint64_t expires_ns, created_ns;
    struct bs_grant grant;
};

struct bs_grants {
    pthread_mutex_t lock;
    struct entry *e;
    size_t cap, n;
    long ttl_ms;
};

struct bs_grants *bs_grants_create(size_t max_entries, long ttl_ms)
{
    struct bs_grants *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->cap = max_entries < 16 ? 16 : max_entries;
    g->e = calloc(g->cap, sizeof(*g->e));
    if (!g->e) {
        free(g);
        return NULL;
    }
    g->ttl_ms = ttl_ms;
    pthread_mutex_init(&g->lock, NULL);
    return g;
}

void bs_grants_destroy(struct bs_grants *g)
{
    if (!g)
        return;
    pthread_mutex_destroy(&g->lock);
    free(g->e);
    free(g);
}

void bs_grants_key(const struct bs_delegation *d, const char *container, const char *blob,
                   unsigned char key[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 32;
    char kind = (char)('0' + d->kind);
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, &kind, 1);
    EVP_DigestUpdate(ctx, d->secret, strlen(d->secret) + 1);
    EVP_DigestUpdate(ctx, d->endpoint, strlen(d->endpoint) + 1);
    EVP_DigestUpdate(ctx, d->account, strlen(d->account) + 1);
    EVP_DigestUpdate(ctx, container, strlen(container) + 1);
    EVP_DigestUpdate(ctx, blob, strlen(blob) + 1);
    EVP_DigestFinal_ex(ctx, key, &n);
    EVP_MD_CTX_free(ctx);
}

static size_t slot_of(const struct bs_grants *g, const unsigned char key[32])
{
    uint64_t h;
    memcpy(&h, key, sizeof(h));
    return (size_t)(h % g->cap);
}

/* Lock held. Index of key, or of the free slot where it would go, or cap when full. */
static size_t probe(const struct bs_grants *g, const unsigned char key[32], int *found)
{
    size_t i = slot_of(g, key);
    for (size_t k = 0; k < g->cap; k++, i = (i + 1) % g->cap) {
        if (!g->e[i].used) {
            *found = 0;
            return i;
        }
        if (memcmp(g->e[i].key, key, 32) == 0) {
            *found = 1;
            return i;
        }
    }
    *found = 0;
    return g->cap;
}

/* Lock held. Rebuilds the table without expired entries (and, when none expired, without
 * the older half), so probe chains stay valid. */
static void compact(struct bs_grants *g, uint64_t now)
{
    struct entry *old = g->e;
    struct entry *fresh = calloc(g->cap, sizeof(*fresh));
    if (!fresh)
        return;
    uint64_t cutoff = 0;
    size_t live = 0;
    for (size_t i = 0; i < g->cap; i++)
        if (old[i].used && old[i].expires_ns > now)
            live++;
    if (live > g->cap * 3 / 4) {
        /* Keep the newer half: find the median creation time by a coarse scan. */
        uint64_t lo = UINT64_MAX, hi = 0;
        for (size_t i = 0; i < g->cap; i++)
            if (old[i].used) {
                lo = old[i].created_ns < lo ? old[i].created_ns : lo;
                hi = old[i].created_ns > hi ? old[i].created_ns : hi;
            }
        cutoff = lo + (hi - lo) / 2;
    }
    g->e = fresh;
    g->n = 0;
    for (size_t i = 0; i < g->cap; i++) {
        if (!old[i].used || old[i].expires_ns <= now || old[i].created_ns < cutoff)
            continue;
        int found;
        size_t j = probe(g, old[i].key, &found);
        if (j < g->cap) {
            g->e[j] = old[i];
            g->n++;
        }
    }
    free(old);
}

int bs_grants_find(struct bs_grants *g, const unsigned char key[32], struct bs_grant *out)
{
    int found, rc = -ENOENT;
    pthread_mutex_lock(&g->lock);
    size_t i = probe(g, key, &found);
    if (found && g->e[i].expires_ns > bs_now_ns()) {
        *out = g->e[i].grant;
        rc = 0;
    }
    pthread_mutex_unlock(&g->lock);
    return rc;
}

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

int bs_jwt_expiry(const char *token, int64_t *exp_s)
{
    const char *p = token ? strchr(token, '.') : NULL;
    const char *e = p ? strchr(p + 1, '.') : NULL;
    if (!e || e - p - 1 > JWT_PAYLOAD_MAX || strchr(e + 1, '.'))
        return -EINVAL;
    size_t n = (size_t)(e - p - 1), o = 0;
    char *json = malloc(n + 1);
    if (!json)
        return -EINVAL;
    uint32_t acc = 0;
    int bits = 0, rc = -EINVAL;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_val((unsigned char)p[1 + i]);
        if (v < 0)
            goto out_free;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            json[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    json_error_t jerr;
    json_t *root = json_loadb(json, o, JSON_REJECT_DUPLICATES, &jerr);
    json_t *exp = root ? json_object_get(root, "exp") : NULL;
    if (exp && json_is_integer(exp) && json_integer_value(exp) > 0) {
        *exp_s = (int64_t)json_integer_value(exp);
        rc = 0;
    } else if (exp && json_is_real(exp) && json_real_value(exp) > 0 &&
               json_real_value(exp) < 1e15) {
        *exp_s = (int64_t)json_real_value(exp);
        rc = 0;
    }
    json_decref(root);
out_free:
    free(json);
    return rc;
}

int bs_grants_cred_expiry(const struct bs_delegation *d, int64_t *exp_s, char *err, size_t errsz)
{
    *exp_s = 0;
    if (d->kind == BS_AUTH_SAS) {
        struct bs_sas_info info;
        if (bs_sas_parse(d->secret, NULL, 0, &info, err, errsz) != 0)
            return -EINVAL;
        *exp_s = info.expiry;
    } else if (d->kind == BS_AUTH_BEARER) {
        /* Azure reads exp; a token without one is not what Entra ID issues: refused rather
         * than trusted for the whole grant TTL. */
        if (bs_jwt_expiry(d->secret, exp_s) != 0) {
            snprintf(err, errsz, "bearer token has no readable exp claim");
            return -EINVAL;
        }
    }
    return 0;
}

void bs_grants_put(struct bs_grants *g, const unsigned char key[32], int64_t cred_expiry_s,
                   const struct bs_grant *grant)
{
    uint64_t now = bs_now_ns();
    uint64_t expires = now + (uint64_t)g->ttl_ms * 1000000ull;
    if (cred_expiry_s > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t left_ns = (cred_expiry_s - (int64_t)ts.tv_sec) * 1000000000ll - ts.tv_nsec;
        if (left_ns <= 0)
            return;
        if ((uint64_t)left_ns < expires - now)
            expires = now + (uint64_t)left_ns;
    }
    pthread_mutex_lock(&g->lock);
    if (g->n >= g->cap * 7 / 8)
        compact(g, now);
    int found;
    size_t i = probe(g, key, &found);
    if (i < g->cap) {
        if (!found)
            g->n++;
        memcpy(g->e[i].key, key, 32);
        g->e[i].used = 1;
        g->e[i].created_ns = now;
        g->e[i].expires_ns = expires;
        g->e[i].grant = *grant;
    }
    pthread_mutex_unlock(&g->lock);
}

void bs_grants_forget(struct bs_grants *g, const unsigned char key[32])
{
    pthread_mutex_lock(&g->lock);
    int found;
    size_t i = probe(g, key, &found);
    if (found)
        g->e[i].expires_ns = 0; /* stays as a tombstone until the next compaction */
    pthread_mutex_unlock(&g->lock);
}
