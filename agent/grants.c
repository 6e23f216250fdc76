/* Grant table (see grants.h): an open hash of fixed-size entries. A full table first drops
 * expired grants, then the oldest; both are O(n) scans, paid only when the table is full. */
#include "grants.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "azcred.h"
#include "fetch.h"

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

int64_t bs_sas_expiry(const char *sas)
{
    const char *p = sas;
    while (p && *p) {
        if (strncmp(p, "se=", 3) == 0) {
            char v[40];
            size_t n = strcspn(p + 3, "&");
            if (n >= sizeof(v))
                return 0;
            /* Decode %3A (':') which SAS producers commonly escape. */
            size_t o = 0;
            for (size_t i = 0; i < n && o + 1 < sizeof(v); i++) {
                if (p[3 + i] == '%' && i + 2 < n) {
                    unsigned x;
                    if (sscanf(p + 3 + i + 1, "%2x", &x) != 1)
                        return 0;
                    v[o++] = (char)x;
                    i += 2;
                } else {
                    v[o++] = p[3 + i];
                }
            }
            v[o] = '\0';
            struct tm tm = {0};
            int y, mo, d, h = 0, mi = 0, s = 0;
            if (sscanf(v, "%4d-%2d-%2dT%2d:%2d:%2d", &y, &mo, &d, &h, &mi, &s) < 3)
                return 0;
            tm.tm_year = y - 1900;
            tm.tm_mon = mo - 1;
            tm.tm_mday = d;
            tm.tm_hour = h;
            tm.tm_min = mi;
            tm.tm_sec = s;
            return (int64_t)timegm(&tm);
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return 0;
}

void bs_grants_put(struct bs_grants *g, const unsigned char key[32], const struct bs_delegation *d,
                   const struct bs_grant *grant)
{
    uint64_t now = bs_now_ns();
    uint64_t expires = now + (uint64_t)g->ttl_ms * 1000000ull;
    if (d->kind == BS_AUTH_SAS) {
        int64_t se = bs_sas_expiry(d->secret);
        int64_t left = se - (int64_t)time(NULL);
        if (se > 0 && left <= 0)
            return;
        if (se > 0 && (uint64_t)left * 1000000000ull < expires - now)
            expires = now + (uint64_t)left * 1000000000ull;
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
