/* The node's chunk store (see store.h): one immutable file per chunk, [data][trailer] (format
 * in trailer.h), named by the SHA-256 of its key in a 256-way fan-out directory; an in-memory
 * index rebuilt at start from the trailers alone; byte accounting against a budget with
 * high/low watermarks; eviction from the tenant holding the most bytes, its least recently
 * used unpinned blob version whole, else a single unpinned chunk.
 * Every path it touches is relative to the store's directory descriptor, one component at a
 * time, never following a link (O_NOFOLLOW); files and directories are the agent's alone
 * (0400 / 0700) and, where the filesystem and capabilities allow, immutable once written.
 * It does not fetch, and does not check data CRCs itself: readers verify the blocks they read
 * with bs_chunk_verify and report bad chunks with bs_store_drop. */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "chunkio.h"
#include "crc32c.h"
#include "log.h"
#include "trailer.h"

/* Layout: DIR/ab/<hex SHA-256 of (key encoding, u64 index)>.chunk, "ab" its first two hex
 * digits; puts write DIR/tmp/ first; DIR/lock is held (flock) by the one store that uses DIR.
 * Modes are set with fchmod after creation, whatever the umask. */
#define ID_LEN        32                     /* SHA-256 */
#define HEX_LEN       (2 * ID_LEN)           /* a file name's digits */
#define SUB_SIZE      3                      /* "ab" */
#define FILE_SIZE     (HEX_LEN + 6 + 1)      /* "<64 hex>.chunk" */
#define TMP_NAME_SIZE (HEX_LEN + 1 + 20 + 5) /* "<64 hex>.<seq>.tmp" */
#define CHUNK_SUFFIX  ".chunk"
#define TMP_DIR       "tmp"
#define LOCK_FILE     "lock"
#define PROBE_FILE    "protection-probe.tmp"
#define DIR_MODE      0700
#define FILE_MODE     0400 /* chunk files once written */
#define TMP_MODE      0600 /* while being written */
#define LOCK_MODE     0600
#define MAP_BUCKETS0  1024
/* A put checksums its data in pieces of this many bytes, each CRC'd and hashed while it is
 * still in cache (one pass over memory, whatever the block size). */
#define SUM_PIECE (64u << 10)
/* bs_store_foreach copies this many keys (or key bytes) out under the lock at a time, whole
 * hash buckets at a time (a bigger bucket is copied alone). */
#define FOREACH_BATCH       256
#define FOREACH_BATCH_BYTES (64u << 10)
/* Opening an entry of the store: never through a link, never blocking on a FIFO or device
 * planted there, never becoming a controlling terminal. */
#define OPEN_ENTRY (O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
#define OPEN_DIR   (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

#define container_of(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

struct list {
    struct list *prev, *next;
};

struct hnode {
    struct hnode *next;
    unsigned char id[ID_LEN];
};

struct map {
    struct hnode **b;
    size_t mask, n;
};

/* Whose bytes these are: the key's account field up to its first '#' (the endpoint URL for
 * the agent, which appends "#grid=..."). Eviction takes from the tenant holding the most. */
struct tenant {
    struct hnode h;       /* SHA-256 of the name */
    struct list all;      /* in s->tenants */
    struct list versions; /* its versions, least recently used first */
    struct list chunks;   /* its live chunks, least recently used first */
    uint64_t bytes;       /* its live chunk files */
    uint64_t nversions;
    bool stuck; /* during one eviction: nothing of it can go */
};

/* All chunks of one blob version (account, container, blob, ETag). */
struct version {
    struct hnode h;     /* SHA-256 of the key encoding without the index */
    struct tenant *t;   /* its tenant */
    struct list lru;    /* in t->versions */
    struct list chunks; /* its live chunks */
    uint64_t nchunks, bytes;
    uint32_t refs;    /* references held on its live chunks */
    uint32_t pending; /* puts in flight */
};

enum chunk_state {
    CHUNK_PENDING,  /* being written by a put: invisible, blocks other puts of the key */
    CHUNK_LIVE,     /* indexed and counted */
    CHUNK_REMOVING, /* evicted or dropped, file being unlinked: invisible, puts wait */
};

/* One chunk of the index. A reference handed to readers is a pointer to it; the record lives
 * until it has left the index and the last reference is released. */
struct bs_chunk_ref {
    struct hnode h; /* SHA-256 of the whole key: names the file */
    struct bs_store *store;
    struct version *ver; /* NULL unless live */
    struct list lru;     /* in ver->t->chunks while live; in a victim list while removing */
    struct list in_ver;  /* in ver->chunks while live */
    enum chunk_state state;
    bool in_map;
    uint32_t refs;
    uint64_t data_len, file_bytes, index;
    uint32_t block_size, nblocks;
    unsigned char sha256[BS_CHUNK_SHA256];
    const char *key; /* account, container, blob, ETag, each NUL-terminated, after crcs */
    uint32_t crcs[];
};

struct bs_store {
    int dirfd, tmpfd, lockfd;
    uid_t uid; /* ours: every file and directory of the store belongs to it */
    enum bs_store_protection protection;
    uint64_t budget, high, low; /* bytes */
    uint32_t block_size;
    void (*on_evict)(void *arg, const struct bs_chunk_key *k);
    void *on_evict_arg;

    pthread_mutex_t lock;
    pthread_cond_t removed; /* broadcast when removing chunks leave the index */
    struct map chunks, versions, tenants;
    struct list tenant_list;
    uint64_t bytes, reserved; /* live files; puts in flight */
    uint64_t nchunks, nversions, ntenants, tmp_seq;
    uint64_t evicted_chunks, evicted_bytes, dropped_corrupt, put_errors, protect_errors;
    uint64_t stuck_immutable; /* at scan: immutable files this run cannot unflag */
};

/* ---- small containers ---- */

static void list_init(struct list *l)
{
    l->prev = l->next = l;
}

static bool list_empty(const struct list *l)
{
    return l->next == l;
}

static void list_del(struct list *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    list_init(e);
}

static void list_add_tail(struct list *head, struct list *e)
{
    e->prev = head->prev;
    e->next = head;
    head->prev->next = e;
    head->prev = e;
}

static void list_move_tail(struct list *head, struct list *e)
{
    list_del(e);
    list_add_tail(head, e);
}

static size_t bucket_of(const struct map *m, const unsigned char *id)
{
    uint64_t h;
    memcpy(&h, id, sizeof(h));
    return (size_t)h & m->mask;
}

static int map_init(struct map *m)
{
    m->b = calloc(MAP_BUCKETS0, sizeof(*m->b));
    m->mask = MAP_BUCKETS0 - 1;
    m->n = 0;
    return m->b ? 0 : -ENOMEM;
}

static struct hnode *map_find(const struct map *m, const unsigned char *id)
{
    for (struct hnode *h = m->b[bucket_of(m, id)]; h; h = h->next)
        if (memcmp(h->id, id, ID_LEN) == 0)
            return h;
    return NULL;
}

/* Doubles the table past one entry per bucket; without memory it keeps the chains longer. */
static void map_insert(struct map *m, struct hnode *h)
{
    if (m->n > m->mask) {
        size_t nb = (m->mask + 1) * 2;
        struct hnode **b = calloc(nb, sizeof(*b));
        if (b) {
            struct map bigger = {b, nb - 1, m->n};
            for (size_t i = 0; i <= m->mask; i++)
                for (struct hnode *e = m->b[i], *next; e; e = next) {
                    next = e->next;
                    size_t j = bucket_of(&bigger, e->id);
                    e->next = b[j];
                    b[j] = e;
                }
            free(m->b);
            *m = bigger;
        }
    }
    size_t i = bucket_of(m, h->id);
    h->next = m->b[i];
    m->b[i] = h;
    m->n++;
}

static void map_remove(struct map *m, struct hnode *h)
{
    for (struct hnode **p = &m->b[bucket_of(m, h->id)]; *p; p = &(*p)->next)
        if (*p == h) {
            *p = h->next;
            m->n--;
            return;
        }
}

/* ---- keys and names ---- */

static uint32_t blocks_of(uint64_t len, uint32_t block_size)
{
    return (uint32_t)(len / block_size + (len % block_size != 0));
}

/* Writes the key's four strings as u16 length + bytes into enc (BS_KEY_ENC_MAX bytes);
 * *enclen gets the length. -EINVAL with a message for a missing, empty or too long field. */
static int encode_key(const struct bs_chunk_key *k, unsigned char *enc, size_t *enclen, char *err,
                      size_t errsz)
{
    if (!k) {
        snprintf(err, errsz, "no chunk key");
        return -EINVAL;
    }
    const char *fields[4] = {k->account, k->container, k->blob, k->etag};
    static const char *const names[4] = {"account", "container", "blob", "etag"};
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        size_t len = fields[i] ? strnlen(fields[i], BS_CHUNK_MAX_KEY_FIELD + 1) : 0;
        if (len == 0 || len > BS_CHUNK_MAX_KEY_FIELD) {
            snprintf(err, errsz, "chunk key: %s is %s", names[i],
                     len ? "longer than 1024 bytes" : "missing or empty");
            return -EINVAL;
        }
        bs_put_le16(enc + n, (uint16_t)len);
        memcpy(enc + n + 2, fields[i], len);
        n += 2 + len;
    }
    *enclen = n;
    return 0;
}

/* cid = SHA-256(key encoding, u64 index): names the chunk. vid (if not NULL) =
 * SHA-256(key encoding): names the blob version; tid (if not NULL) = SHA-256 of the account
 * field up to its first '#': names the tenant. enc must have 8 spare bytes after enclen. */
static int key_ids(unsigned char *enc, size_t enclen, uint64_t index, unsigned char *cid,
                   unsigned char *vid, unsigned char *tid)
{
    bs_put_le64(enc + enclen, index);
    if (!EVP_Digest(enc, enclen + 8, cid, NULL, EVP_sha256(), NULL))
        return -ENOMEM;
    if (vid && !EVP_Digest(enc, enclen, vid, NULL, EVP_sha256(), NULL))
        return -ENOMEM;
    if (tid) {
        size_t alen = bs_get_le16(enc);
        const unsigned char *hash = memchr(enc + 2, '#', alen);
        if (hash)
            alen = (size_t)(hash - (enc + 2));
        if (!EVP_Digest(enc + 2, alen, tid, NULL, EVP_sha256(), NULL))
            return -ENOMEM;
    }
    return 0;
}

/* The key whose four strings are `strings` (each NUL-terminated, one after another, as a
 * chunk record keeps them), pointing into them. */
static struct bs_chunk_key key_view(const char *strings, uint64_t index)
{
    struct bs_chunk_key k = {.account = strings, .index = index};
    k.container = k.account + strlen(k.account) + 1;
    k.blob = k.container + strlen(k.container) + 1;
    k.etag = k.blob + strlen(k.blob) + 1;
    return k;
}

/* sub = "ab", file = "abcdef....chunk" */
static void chunk_name(const unsigned char *id, char *sub, char *file)
{
    static const char hex[] = "0123456789abcdef";
    char *p = file;
    for (int i = 0; i < ID_LEN; i++) {
        *p++ = hex[id[i] >> 4];
        *p++ = hex[id[i] & 15];
    }
    memcpy(p, CHUNK_SUFFIX, sizeof(CHUNK_SUFFIX));
    if (sub) {
        sub[0] = file[0];
        sub[1] = file[1];
        sub[2] = '\0';
    }
}

/* ---- files: every access one component at a time from a directory descriptor ---- */

static int open_sub(const struct bs_store *s, const char *sub)
{
    int fd = openat(s->dirfd, sub, OPEN_DIR);
    return fd >= 0 ? fd : -errno;
}

/* Sets (on) or clears FS_IMMUTABLE_FL on the regular file fd. 0 or -errno. */
static int set_immutable(int fd, bool on)
{
    int flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) < 0)
        return -errno;
    int want = on ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
    if (want != flags && ioctl(fd, FS_IOC_SETFLAGS, &want) < 0)
        return -errno;
    return 0;
}

static bool is_immutable(int fd)
{
    int flags = 0;
    return ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_IMMUTABLE_FL);
}

/* Removes the entry `name` of the directory subfd: a regular file of ours loses its immutable
 * flag first; anything else (a link, a file planted there) is removed itself, never what it
 * points to. 0 or -errno (-ENOENT: nothing there). */
static int remove_entry(const struct bs_store *s, int subfd, const char *name)
{
    int fd = openat(subfd, name, OPEN_ENTRY);
    if (fd >= 0) {
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == s->uid)
            set_immutable(fd, false); /* fails harmlessly where it was never set */
        close(fd);
    }
    return unlinkat(subfd, name, 0) == 0 ? 0 : -errno;
}

/* What the store expects of one of its chunk files, given its descriptor: a regular file of
 * ours, not linked elsewhere, of `size` bytes (0: any). NULL, or what is wrong. */
static const char *check_file(const struct bs_store *s, int fd, uint64_t size, struct stat *st)
{
    if (fstat(fd, st) < 0)
        return "cannot be examined";
    if (!S_ISREG(st->st_mode))
        return "not a regular file";
    if (st->st_uid != s->uid)
        return "not owned by the agent's uid";
    if (st->st_nlink != 1)
        return "has other links";
    if (size && (uint64_t)st->st_size != size)
        return "not of the size the store wrote";
    return NULL;
}

/* ---- index (everything here runs under s->lock) ---- */

static void touch(struct bs_store *s, struct bs_chunk_ref *c)
{
    (void)s;
    list_move_tail(&c->ver->t->chunks, &c->lru);
    list_move_tail(&c->ver->t->versions, &c->ver->lru);
}

/* The spare records a put or a scan entry needs; version_get takes what it uses. */
struct spares {
    struct version *v;
    struct tenant *t;
};

static int spares_fill(struct spares *sp)
{
    if (!sp->v)
        sp->v = calloc(1, sizeof(*sp->v));
    if (!sp->t)
        sp->t = calloc(1, sizeof(*sp->t));
    return sp->v && sp->t ? 0 : -ENOMEM;
}

static void spares_free(struct spares *sp)
{
    free(sp->v);
    free(sp->t);
    sp->v = NULL;
    sp->t = NULL;
}

static struct tenant *tenant_get(struct bs_store *s, const unsigned char *tid, struct spares *sp)
{
    struct hnode *h = map_find(&s->tenants, tid);
    if (h)
        return container_of(h, struct tenant, h);
    struct tenant *t = sp->t;
    sp->t = NULL;
    memcpy(t->h.id, tid, ID_LEN);
    list_init(&t->versions);
    list_init(&t->chunks);
    list_add_tail(&s->tenant_list, &t->all);
    map_insert(&s->tenants, &t->h);
    s->ntenants++;
    return t;
}

/* The version `vid` of tenant `tid`, created from the spares if it does not exist. */
static struct version *version_get(struct bs_store *s, const unsigned char *vid,
                                   const unsigned char *tid, struct spares *sp)
{
    struct hnode *h = map_find(&s->versions, vid);
    if (h)
        return container_of(h, struct version, h);
    struct tenant *t = tenant_get(s, tid, sp);
    struct version *v = sp->v;
    sp->v = NULL;
    memcpy(v->h.id, vid, ID_LEN);
    v->t = t;
    list_init(&v->chunks);
    list_add_tail(&t->versions, &v->lru);
    t->nversions++;
    map_insert(&s->versions, &v->h);
    s->nversions++;
    return v;
}

/* Frees v if it has no chunk and no put in flight, and its tenant if that was its last. */
static void version_free_if_unused(struct bs_store *s, struct version *v)
{
    if (v->nchunks || v->pending)
        return;
    struct tenant *t = v->t;
    map_remove(&s->versions, &v->h);
    list_del(&v->lru);
    free(v);
    s->nversions--;
    if (--t->nversions)
        return;
    map_remove(&s->tenants, &t->h);
    list_del(&t->all);
    free(t);
    s->ntenants--;
}

/* A pending (or, at scan, new) chunk becomes live in version v, most recently used. */
static void chunk_go_live(struct bs_store *s, struct bs_chunk_ref *c, struct version *v)
{
    c->state = CHUNK_LIVE;
    c->ver = v;
    list_add_tail(&v->chunks, &c->in_ver);
    v->nchunks++;
    v->bytes += c->file_bytes;
    list_init(&c->lru);
    list_add_tail(&v->t->chunks, &c->lru);
    list_move_tail(&v->t->versions, &v->lru);
    v->t->bytes += c->file_bytes;
    s->bytes += c->file_bytes;
    s->nchunks++;
}

/* A live chunk leaves the LRU, its version and the byte count, and joins `victims`; it stays
 * in the map (invisible, blocking puts of its key) until remove_files() has unlinked it.
 * The caller frees the version if this emptied it. */
static void chunk_detach(struct bs_store *s, struct bs_chunk_ref *c, struct list *victims)
{
    struct version *v = c->ver;
    list_del(&c->lru);
    list_del(&c->in_ver);
    v->nchunks--;
    v->bytes -= c->file_bytes;
    v->refs -= c->refs;
    v->t->bytes -= c->file_bytes;
    c->ver = NULL;
    c->state = CHUNK_REMOVING;
    s->bytes -= c->file_bytes;
    s->nchunks--;
    list_add_tail(victims, &c->lru);
}

static bool over(const struct bs_store *s, uint64_t target)
{
    return s->bytes + s->reserved > target;
}

static void evict_one(struct bs_store *s, struct bs_chunk_ref *c, struct list *victims)
{
    s->evicted_chunks++;
    s->evicted_bytes += c->file_bytes;
    chunk_detach(s, c, victims);
}

/* Evicts from tenant t, without taking it below `floor` bytes, its least recently used blob
 * version that no reader holds and no put is filling, whole; else its least recently used
 * chunk no reader holds. May free t. false if nothing of t can go. */
static bool evict_from(struct bs_store *s, struct tenant *t, uint64_t floor, struct list *victims)
{
    for (struct list *e = t->versions.next; e != &t->versions; e = e->next) {
        struct version *v = container_of(e, struct version, lru);
        if (v->refs || v->pending || !v->nchunks || t->bytes - v->bytes < floor)
            continue;
        while (!list_empty(&v->chunks))
            evict_one(s, container_of(v->chunks.next, struct bs_chunk_ref, in_ver), victims);
        version_free_if_unused(s, v);
        return true;
    }
    for (struct list *e = t->chunks.next; e != &t->chunks; e = e->next) {
        struct bs_chunk_ref *c = container_of(e, struct bs_chunk_ref, lru);
        if (c->refs || t->bytes - c->file_bytes < floor)
            continue;
        struct version *v = c->ver;
        evict_one(s, c, victims);
        version_free_if_unused(s, v);
        return true;
    }
    return false;
}

/* Makes room for `need` more bytes down to the low watermark. Each victim comes from the
 * tenant that holds the most bytes: a tenant filling the store evicts itself first. A put
 * of tenant `putter` (NULL at start-up) never takes another tenant below an equal share of
 * the budget (budget / tenants present): past that the put finds no room. Victims are
 * detached into `victims` for remove_files(). */
static void evict(struct bs_store *s, uint64_t need, const struct tenant *putter,
                  struct list *victims)
{
    uint64_t target = s->low > need ? s->low - need : 0;
    for (struct list *e = s->tenant_list.next; e != &s->tenant_list; e = e->next)
        container_of(e, struct tenant, all)->stuck = false;
    while (over(s, target)) {
        uint64_t share = s->ntenants ? s->budget / s->ntenants : s->budget;
        struct tenant *best = NULL;
        for (struct list *e = s->tenant_list.next; e != &s->tenant_list; e = e->next) {
            struct tenant *t = container_of(e, struct tenant, all);
            if (t->stuck || (putter && t != putter && t->bytes <= share))
                continue;
            if (!best || t->bytes > best->bytes)
                best = t;
        }
        if (!best)
            return;
        if (!evict_from(s, best, putter && best != putter ? share : 0, victims))
            best->stuck = true;
    }
}

/* Unlinks the victims' files (without the lock: an unlink of a large file takes time), tells
 * the eviction hook of each, then takes them out of the index and wakes puts waiting for
 * their keys: a new put of a victim's key goes live only after the hook has returned. Called
 * without the lock; the victims (REMOVING, still in the map) are this call's alone. */
static void remove_files(struct bs_store *s, struct list *victims)
{
    if (list_empty(victims))
        return;
    for (struct list *e = victims->next; e != victims; e = e->next) {
        struct bs_chunk_ref *c = container_of(e, struct bs_chunk_ref, lru);
        char sub[SUB_SIZE], name[FILE_SIZE];
        chunk_name(c->h.id, sub, name);
        int subfd = open_sub(s, sub);
        int rc = subfd >= 0 ? remove_entry(s, subfd, name) : subfd;
        if (rc < 0 && rc != -ENOENT)
            bs_log(BS_LOG_WARN, "store", "event=unlink_failed file=%s/%s error=\"%s\"", sub, name,
                   strerror(-rc));
        if (subfd >= 0)
            close(subfd);
    }
    if (s->on_evict)
        for (struct list *e = victims->next; e != victims; e = e->next) {
            struct bs_chunk_ref *c = container_of(e, struct bs_chunk_ref, lru);
            struct bs_chunk_key k = key_view(c->key, c->index);
            s->on_evict(s->on_evict_arg, &k);
        }
    pthread_mutex_lock(&s->lock);
    for (struct list *e = victims->next, *next; e != victims; e = next) {
        next = e->next;
        struct bs_chunk_ref *c = container_of(e, struct bs_chunk_ref, lru);
        list_del(&c->lru);
        map_remove(&s->chunks, &c->h);
        c->in_map = false;
        if (!c->refs)
            free(c);
    }
    pthread_cond_broadcast(&s->removed);
    pthread_mutex_unlock(&s->lock);
}

/* A record with room for nblocks CRCs and a copy of its key, from the key's encoding (four
 * u16 length + bytes fields, checked): the strings that foreach and the eviction hook hand
 * out, stored after the CRCs. NULL without memory. */
static struct bs_chunk_ref *chunk_new(uint32_t nblocks, const unsigned char *enc, size_t enclen,
                                      uint64_t index)
{
    size_t keylen = enclen - 4; /* the four u16 lengths become four NULs */
    struct bs_chunk_ref *c =
        calloc(1, sizeof(struct bs_chunk_ref) + (size_t)nblocks * sizeof(uint32_t) + keylen);
    if (!c)
        return NULL;
    char *key = (char *)(c->crcs + nblocks);
    for (size_t n = 0, o = 0; n < enclen;) {
        size_t len = bs_get_le16(enc + n);
        memcpy(key + o, enc + n + 2, len);
        key[o + len] = '\0';
        n += 2 + len;
        o += len + 1;
    }
    c->key = key;
    c->index = index;
    return c;
}

/* Takes the live chunk `cid` out of the index and its file off the disk, counted in
 * dropped_corrupt; only if it is still the record `only` when that is not NULL. */
static void drop_chunk(struct bs_store *s, const unsigned char *cid,
                       const struct bs_chunk_ref *only, const char *reason)
{
    struct list victims;
    list_init(&victims);
    pthread_mutex_lock(&s->lock);
    struct hnode *h = map_find(&s->chunks, cid);
    struct bs_chunk_ref *c = h ? container_of(h, struct bs_chunk_ref, h) : NULL;
    if (c && c->state == CHUNK_LIVE && (!only || c == only)) {
        struct version *v = c->ver;
        chunk_detach(s, c, &victims);
        version_free_if_unused(s, v);
        s->dropped_corrupt++;
    }
    pthread_mutex_unlock(&s->lock);
    if (!list_empty(&victims)) {
        char sub[SUB_SIZE], name[FILE_SIZE];
        chunk_name(cid, sub, name);
        bs_log(BS_LOG_WARN, "store", "event=dropped_corrupt file=%s/%s reason=\"%s\"", sub, name,
               reason);
    }
    remove_files(s, &victims);
}

/* ---- start-up: options, directories, protection, scan ---- */

/* Creates the parents of the store directory (mode 0755: they are not the store's). */
static int mkdir_parents(const char *path)
{
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(buf))
        return -ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    return 0;
}

/* Opens the directory `name` of parent (AT_FDCWD: a path), creating it 0700. Something else
 * in its place inside the store (a link, a file) is removed, never followed; a directory of
 * another uid is refused; a wider mode is tightened to 0700. The fd, or -errno with a message. */
static int ensure_dir(struct bs_store *s, int parent, const char *name, char *err, size_t errsz)
{
    for (int attempt = 0;; attempt++) {
        if (mkdirat(parent, name, DIR_MODE) < 0 && errno != EEXIST) {
            int rc = -errno;
            snprintf(err, errsz, "store: cannot create %s: %s", name, strerror(-rc));
            return rc;
        }
        int fd = openat(parent, name, OPEN_DIR);
        if (fd < 0 && (errno == ELOOP || errno == ENOTDIR) && parent != AT_FDCWD && attempt == 0) {
            int rc = unlinkat(parent, name, 0) == 0 ? 0 : -errno;
            bs_log(BS_LOG_WARN, "store", "event=foreign_entry_removed entry=%s what=\"%s\"%s%s",
                   name, "not a directory (a link?) in place of a store directory",
                   rc ? " error=" : "", rc ? strerror(-rc) : "");
            continue;
        }
        if (fd < 0) {
            int rc = -errno;
            snprintf(err, errsz, "store: cannot open %s%s: %s", name,
                     rc == -ELOOP || rc == -ENOTDIR ? " as a directory (not following links)" : "",
                     strerror(-rc));
            return rc;
        }
        struct stat st;
        if (fstat(fd, &st) < 0 || st.st_uid != s->uid) {
            snprintf(err, errsz, "store: %s is owned by uid %u, not the agent's uid %u", name,
                     (unsigned)st.st_uid, (unsigned)s->uid);
            close(fd);
            return -EPERM;
        }
        if ((st.st_mode & 07777) != DIR_MODE) {
            if (fchmod(fd, DIR_MODE) < 0) {
                int rc = -errno;
                snprintf(err, errsz, "store: cannot restrict %s to mode 0700: %s", name,
                         strerror(-rc));
                close(fd);
                return rc;
            }
            bs_log(BS_LOG_INFO, "store", "event=mode_tightened entry=%s from=%04o to=%04o", name,
                   (unsigned)(st.st_mode & 07777), DIR_MODE);
        }
        return fd;
    }
}

/* Deletes what puts interrupted by a crash left in tmp/ (links themselves, never targets). */
static void clean_tmp(struct bs_store *s)
{
    int fd = dup(s->tmpfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    unsigned removed = 0;
    for (struct dirent *de; (de = readdir(d));) {
        size_t n = strlen(de->d_name);
        if (n > 4 && strcmp(de->d_name + n - 4, ".tmp") == 0 &&
            remove_entry(s, s->tmpfd, de->d_name) == 0)
            removed++;
    }
    closedir(d);
    if (removed)
        bs_log(BS_LOG_INFO, "store", "event=tmp_removed files=%u", removed);
}

const char *bs_store_protection_name(enum bs_store_protection p)
{
    return p == BS_STORE_PROTECT_IMMUTABLE ? "immutable" : "none";
}

/* Can chunk files be made immutable here? Tried on a file in tmp/: the filesystem must have
 * FS_IMMUTABLE_FL and the agent CAP_LINUX_IMMUTABLE. Says so once when not. */
static void probe_protection(struct bs_store *s, const char *dir)
{
    unlinkat(s->tmpfd, PROBE_FILE, 0);
    int fd = openat(s->tmpfd, PROBE_FILE, O_RDONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    TMP_MODE);
    int rc = fd >= 0 ? set_immutable(fd, true) : -errno;
    if (rc == 0) {
        rc = is_immutable(fd) ? 0 : -EOPNOTSUPP;
        set_immutable(fd, false);
    }
    if (fd >= 0) {
        close(fd);
        unlinkat(s->tmpfd, PROBE_FILE, 0);
    }
    s->protection = rc == 0 ? BS_STORE_PROTECT_IMMUTABLE : BS_STORE_PROTECT_NONE;
    if (rc != 0)
        bs_log(BS_LOG_WARN, "store",
               "event=tamper_protection mode=none dir=%s error=\"%s\" msg=\"chunk files cannot "
               "be made immutable (%s): a client running as root can rewrite cached chunks\"",
               dir, strerror(-rc),
               rc == -EPERM ? "the agent lacks CAP_LINUX_IMMUTABLE"
                            : "the filesystem has no FS_IMMUTABLE_FL");
}

struct scanned {
    struct bs_chunk_ref *c;
    unsigned char vid[ID_LEN], tid[ID_LEN];
    struct timespec mtime;
};

/* Brings a valid chunk file to what the store writes: mode 0400, immutable when protection is
 * on (files of older versions or of a run without protection). */
static void settle_file(struct bs_store *s, int fd, const struct stat *st, const char *sub,
                        const char *name)
{
    bool imm = is_immutable(fd);
    if ((st->st_mode & 07777) != FILE_MODE) {
        if (imm)
            set_immutable(fd, false);
        if (fchmod(fd, FILE_MODE) == 0)
            bs_log(BS_LOG_DEBUG, "store", "event=mode_tightened entry=%s/%s from=%04o to=%04o", sub,
                   name, (unsigned)(st->st_mode & 07777), FILE_MODE);
        imm = imm && set_immutable(fd, true) == 0;
    }
    if (s->protection == BS_STORE_PROTECT_IMMUTABLE && !imm && set_immutable(fd, true) < 0)
        s->protect_errors++;
    if (s->protection == BS_STORE_PROTECT_NONE && imm)
        s->stuck_immutable++;
}

/* Reads and checks the trailer of the chunk file `name` (in the fan-out directory `sub`,
 * already checked to be 64 hex digits + ".chunk"). 0 and *out filled; 1 with *why if the file
 * is not a valid chunk; -ENOMEM, -EMFILE... (the file may be fine: the scan stops). */
static int load_chunk(struct bs_store *s, int subfd, const char *sub, const char *name,
                      struct scanned *out, const char **why)
{
    int rc = 1;
    unsigned char *t = NULL;
    struct stat lst, st;
    if (fstatat(subfd, name, &lst, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(lst.st_mode)) {
        *why = "not a regular file (a link?)";
        return 1;
    }
    int fd = openat(subfd, name, OPEN_ENTRY);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOMEM))
        return -errno;
    if (fd < 0) {
        *why = "cannot be opened as a regular file";
        return 1;
    }
    if ((*why = check_file(s, fd, 0, &st)))
        goto out_close;
    if (st.st_ino != lst.st_ino || st.st_dev != lst.st_dev) {
        *why = "replaced while being scanned";
        goto out_close;
    }
    unsigned char foot[BS_TRAILER_FOOT];
    uint32_t tlen = 0;
    if (st.st_size < BS_TRAILER_HEAD + BS_TRAILER_FOOT ||
        bs_pread_full(fd, foot, sizeof(foot), (uint64_t)(st.st_size - BS_TRAILER_FOOT)) != 0) {
        *why = "shorter than a trailer";
        goto out_close;
    }
    if ((*why = bs_trailer_foot(foot, (uint64_t)st.st_size, &tlen)))
        goto out_close;
    t = malloc(tlen);
    if (!t) {
        rc = -ENOMEM;
        goto out_close;
    }
    if (bs_pread_full(fd, t, tlen, (uint64_t)(st.st_size - (off_t)tlen)) != 0) {
        *why = "trailer unreadable";
        goto out_free;
    }
    struct bs_trailer tr;
    if ((*why = bs_trailer_parse(t, tlen, (uint64_t)st.st_size, &tr)))
        goto out_free;
    unsigned char enc[BS_KEY_ENC_MAX + 8], cid[ID_LEN];
    char esub[SUB_SIZE], expect[FILE_SIZE];
    memcpy(enc, tr.enc, tr.enclen);
    if (key_ids(enc, tr.enclen, tr.index, cid, out->vid, out->tid) < 0) {
        rc = -ENOMEM;
        goto out_free;
    }
    chunk_name(cid, esub, expect);
    if (strcmp(esub, sub) != 0 || strcmp(expect, name) != 0) {
        *why = "file name is not the hash of the key in its trailer";
        goto out_free;
    }
    struct bs_chunk_ref *c = chunk_new(tr.nblocks, tr.enc, tr.enclen, tr.index);
    if (!c) {
        rc = -ENOMEM;
        goto out_free;
    }
    memcpy(c->h.id, cid, ID_LEN);
    c->data_len = tr.data_len;
    c->file_bytes = (uint64_t)st.st_size;
    c->block_size = tr.block_size;
    c->nblocks = tr.nblocks;
    for (uint32_t i = 0; i < tr.nblocks; i++)
        c->crcs[i] = bs_get_le32(tr.crcs + 4 * (size_t)i);
    memcpy(c->sha256, tr.sha256, BS_CHUNK_SHA256);
    settle_file(s, fd, &st, sub, name);
    out->c = c;
    out->mtime = st.st_mtim;
    rc = 0;
out_free:
    free(t);
out_close:
    close(fd);
    return rc;
}

static int by_mtime(const void *a, const void *b)
{
    const struct scanned *x = a, *y = b;
    if (x->mtime.tv_sec != y->mtime.tv_sec)
        return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
    if (x->mtime.tv_nsec != y->mtime.tv_nsec)
        return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
    return memcmp(x->c->h.id, y->c->h.id, ID_LEN);
}

static bool is_lower_hex(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return false;
    return true;
}

/* Scans one fan-out directory (subfd, checked by ensure_dir), appending valid chunks to
 * *list and deleting bad ones: links and foreign files in the store are removed themselves,
 * what they point to is never touched. */
static int scan_dir(struct bs_store *s, int subfd, const char *sub, struct scanned **list,
                    size_t *n, size_t *cap, char *err, size_t errsz)
{
    int dfd = dup(subfd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        snprintf(err, errsz, "store: cannot read %s: %s", sub, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        return -EIO;
    }
    int rc = 0;
    const size_t suffix = strlen(CHUNK_SUFFIX);
    for (struct dirent *de; (de = readdir(d));) {
        const char *name = de->d_name;
        size_t len = strlen(name);
        if (len < suffix || strcmp(name + len - suffix, CHUNK_SUFFIX) != 0)
            continue; /* not ours: left alone, not counted */
        if (*n == *cap) {
            size_t ncap = *cap ? *cap * 2 : 1024;
            struct scanned *bigger = realloc(*list, ncap * sizeof(**list));
            if (!bigger) {
                rc = -ENOMEM;
                break;
            }
            *list = bigger;
            *cap = ncap;
        }
        const char *why = "file name is not 64 hex digits";
        int lc = 1;
        if (len == HEX_LEN + suffix && is_lower_hex(name, HEX_LEN))
            lc = load_chunk(s, subfd, sub, name, &(*list)[*n], &why);
        if (lc < 0) {
            rc = lc;
            break;
        }
        if (lc == 0) {
            (*n)++;
            continue;
        }
        int ur = remove_entry(s, subfd, name);
        s->dropped_corrupt++;
        bs_log(BS_LOG_WARN, "store", "event=dropped_corrupt file=%s/%s reason=\"%s\"%s%s", sub,
               name, why, ur ? " unlink_error=" : "", ur ? strerror(-ur) : "");
    }
    closedir(d);
    if (rc < 0)
        snprintf(err, errsz, "store: scanning %s: %s", sub, strerror(-rc));
    return rc;
}

/* Checks (creating, fixing) every fan-out directory and indexes every valid chunk file,
 * least recently written first (the LRU order until reads reorder it); deletes the
 * malformed ones. */
static int scan(struct bs_store *s, char *err, size_t errsz)
{
    struct scanned *list = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (int i = 0; i < 256 && rc == 0; i++) {
        char sub[SUB_SIZE];
        snprintf(sub, sizeof(sub), "%02x", i);
        int subfd = ensure_dir(s, s->dirfd, sub, err, errsz);
        if (subfd < 0) {
            rc = subfd;
            break;
        }
        rc = scan_dir(s, subfd, sub, &list, &n, &cap, err, errsz);
        close(subfd);
    }
    if (rc == 0 && n > 1)
        qsort(list, n, sizeof(*list), by_mtime);
    size_t i = 0;
    struct spares sp = {NULL, NULL};
    for (; i < n && rc == 0; i++) {
        if (spares_fill(&sp) < 0) {
            snprintf(err, errsz, "store: out of memory while scanning");
            rc = -ENOMEM;
            break;
        }
        struct bs_chunk_ref *c = list[i].c;
        c->store = s;
        c->in_map = true;
        map_insert(&s->chunks, &c->h);
        chunk_go_live(s, c, version_get(s, list[i].vid, list[i].tid, &sp));
    }
    spares_free(&sp);
    for (; i < n; i++)
        free(list[i].c);
    free(list);
    return rc;
}

static uint64_t pct_of(uint64_t budget, int pct)
{
    return budget / 100 * (uint64_t)pct + budget % 100 * (uint64_t)pct / 100;
}

static int check_opts(const struct bs_store_opts *o, char *err, size_t errsz)
{
    if (!o || !o->dir || !o->dir[0]) {
        snprintf(err, errsz, "store: no directory");
        return -EINVAL;
    }
    if (o->budget_bytes == 0) {
        snprintf(err, errsz, "store: budget must be more than 0 bytes");
        return -EINVAL;
    }
    if (o->low_watermark_pct < 1 || o->high_watermark_pct > 100 ||
        o->low_watermark_pct > o->high_watermark_pct) {
        snprintf(err, errsz, "store: watermarks must satisfy 1 <= low (%d) <= high (%d) <= 100",
                 o->low_watermark_pct, o->high_watermark_pct);
        return -EINVAL;
    }
    uint32_t bs = o->block_size;
    if (bs < BS_CHUNK_MIN_BLOCK || bs > BS_CHUNK_MAX_BLOCK || (bs & (bs - 1))) {
        snprintf(err, errsz, "store: block size %u is not a power of two in %u..%u", bs,
                 BS_CHUNK_MIN_BLOCK, BS_CHUNK_MAX_BLOCK);
        return -EINVAL;
    }
    return 0;
}

/* The lock file: ours, 0600, never through a link. */
static int open_lock(struct bs_store *s)
{
    for (int attempt = 0;; attempt++) {
        int fd = openat(s->dirfd, LOCK_FILE, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                        LOCK_MODE);
        if (fd < 0 && errno == ELOOP && attempt == 0 && unlinkat(s->dirfd, LOCK_FILE, 0) == 0)
            continue;
        if (fd < 0)
            return -errno;
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != s->uid) {
            close(fd);
            return -EPERM;
        }
        if ((st.st_mode & 07777) != LOCK_MODE)
            fchmod(fd, LOCK_MODE);
        return fd;
    }
}

static int make_dirs(struct bs_store *s, const char *dir, char *err, size_t errsz)
{
    int rc = mkdir_parents(dir);
    if (rc < 0) {
        snprintf(err, errsz, "store: cannot create the parents of %s: %s", dir, strerror(-rc));
        return rc;
    }
    s->dirfd = ensure_dir(s, AT_FDCWD, dir, err, errsz);
    if (s->dirfd < 0)
        return s->dirfd;
    s->lockfd = open_lock(s);
    if (s->lockfd < 0 || flock(s->lockfd, LOCK_EX | LOCK_NB) < 0) {
        rc = s->lockfd < 0 ? s->lockfd : -errno;
        snprintf(err, errsz, "store: %s: %s", dir,
                 rc == -EWOULDBLOCK ? "in use by another store" : strerror(-rc));
        return rc;
    }
    s->tmpfd = ensure_dir(s, s->dirfd, TMP_DIR, err, errsz);
    return s->tmpfd < 0 ? s->tmpfd : 0;
}

struct bs_store *bs_store_create(const struct bs_store_opts *o, char *err, size_t errsz)
{
    if (check_opts(o, err, errsz) < 0)
        return NULL;
    struct bs_store *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errsz, "store: out of memory");
        return NULL;
    }
    s->dirfd = s->tmpfd = s->lockfd = -1;
    s->uid = geteuid();
    s->budget = o->budget_bytes;
    s->high = pct_of(o->budget_bytes, o->high_watermark_pct);
    s->low = pct_of(o->budget_bytes, o->low_watermark_pct);
    s->block_size = o->block_size;
    s->on_evict = o->on_evict;
    s->on_evict_arg = o->on_evict_arg;
    list_init(&s->tenant_list);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->removed, NULL);
    if (map_init(&s->chunks) < 0 || map_init(&s->versions) < 0 || map_init(&s->tenants) < 0) {
        snprintf(err, errsz, "store: out of memory");
        goto out_destroy;
    }
    if (make_dirs(s, o->dir, err, errsz) < 0)
        goto out_destroy;
    clean_tmp(s);
    probe_protection(s, o->dir);
    if (scan(s, err, errsz) < 0)
        goto out_destroy;
    if (s->stuck_immutable)
        bs_log(BS_LOG_WARN, "store",
               "event=immutable_files files=%llu msg=\"chunk files made immutable by an earlier "
               "run cannot be evicted without CAP_LINUX_IMMUTABLE: run chattr -R -i on the "
               "store, or give the agent the capability\"",
               (unsigned long long)s->stuck_immutable);
    if (s->bytes > s->high) { /* the budget was lowered since the last run */
        struct list victims;
        list_init(&victims);
        evict(s, 0, NULL, &victims);
        remove_files(s, &victims);
    }
    bs_log(BS_LOG_INFO, "store",
           "event=open dir=%s chunks=%llu blobs=%llu tenants=%llu bytes=%llu budget=%llu "
           "dropped_corrupt=%llu tamper_protection=%s",
           o->dir, (unsigned long long)s->nchunks, (unsigned long long)s->nversions,
           (unsigned long long)s->ntenants, (unsigned long long)s->bytes,
           (unsigned long long)s->budget, (unsigned long long)s->dropped_corrupt,
           bs_store_protection_name(s->protection));
    return s;
out_destroy:
    bs_store_destroy(s);
    return NULL;
}

void bs_store_destroy(struct bs_store *s)
{
    if (!s)
        return;
    if (s->chunks.b)
        for (size_t i = 0; i <= s->chunks.mask; i++)
            for (struct hnode *h = s->chunks.b[i], *next; h; h = next) {
                next = h->next;
                free(container_of(h, struct bs_chunk_ref, h));
            }
    if (s->versions.b)
        for (size_t i = 0; i <= s->versions.mask; i++)
            for (struct hnode *h = s->versions.b[i], *next; h; h = next) {
                next = h->next;
                free(container_of(h, struct version, h));
            }
    if (s->tenants.b)
        for (size_t i = 0; i <= s->tenants.mask; i++)
            for (struct hnode *h = s->tenants.b[i], *next; h; h = next) {
                next = h->next;
                free(container_of(h, struct tenant, h));
            }
    free(s->chunks.b);
    free(s->versions.b);
    free(s->tenants.b);
    if (s->lockfd >= 0)
        close(s->lockfd); /* releases the flock */
    if (s->tmpfd >= 0)
        close(s->tmpfd);
    if (s->dirfd >= 0)
        close(s->dirfd);
    pthread_cond_destroy(&s->removed);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ---- lookups and references ---- */

int bs_store_get(struct bs_store *s, const struct bs_chunk_key *k, struct bs_chunk_ref **out)
{
    *out = NULL;
    unsigned char enc[BS_KEY_ENC_MAX + 8], cid[ID_LEN];
    size_t enclen;
    char err[1];
    if (encode_key(k, enc, &enclen, err, sizeof(err)) < 0)
        return -EINVAL;
    if (key_ids(enc, enclen, k->index, cid, NULL, NULL) < 0)
        return -ENOMEM;
    pthread_mutex_lock(&s->lock);
    struct hnode *h = map_find(&s->chunks, cid);
    struct bs_chunk_ref *c = h ? container_of(h, struct bs_chunk_ref, h) : NULL;
    if (c && c->state == CHUNK_LIVE) {
        c->refs++;
        c->ver->refs++;
        touch(s, c);
        *out = c;
    }
    pthread_mutex_unlock(&s->lock);
    return *out ? 0 : -ENOENT;
}

void bs_store_release(struct bs_store *s, struct bs_chunk_ref *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&s->lock);
    c->refs--;
    if (c->ver)
        c->ver->refs--;
    bool gone = !c->refs && !c->in_map;
    pthread_mutex_unlock(&s->lock);
    if (gone)
        free(c);
}

int bs_chunk_ref_open(const struct bs_chunk_ref *c)
{
    struct bs_store *s = c->store;
    char sub[SUB_SIZE], name[FILE_SIZE];
    chunk_name(c->h.id, sub, name);
    int subfd = open_sub(s, sub);
    int fd = subfd >= 0 ? openat(subfd, name, OPEN_ENTRY) : -1;
    int rc = fd >= 0 ? 0 : subfd >= 0 ? -errno : subfd;
    if (subfd >= 0)
        close(subfd);
    const char *why = NULL;
    if (rc == -EMFILE || rc == -ENFILE || rc == -ENOMEM)
        return rc; /* the file may be fine */
    if (rc < 0) {
        why = rc == -ENOENT ? "file missing" : "not a file the store wrote (a link?)";
    } else {
        struct stat st;
        if (!(why = check_file(s, fd, c->file_bytes, &st)))
            return fd;
        close(fd);
    }
    /* The index named a file that is not there, or not ours: it goes, the reader gets a miss
     * and the next request refills it. Nothing of what may be there is handed out. */
    drop_chunk(s, c->h.id, c, why);
    return -ENOENT;
}

uint64_t bs_chunk_ref_length(const struct bs_chunk_ref *c)
{
    return c->data_len;
}

uint32_t bs_chunk_ref_block_size(const struct bs_chunk_ref *c)
{
    return c->block_size;
}

const uint32_t *bs_chunk_ref_crcs(const struct bs_chunk_ref *c, uint32_t *n)
{
    *n = c->nblocks;
    return c->crcs;
}

const unsigned char *bs_chunk_ref_sha256(const struct bs_chunk_ref *c)
{
    return c->sha256;
}

/* ---- puts ---- */

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n < (1u << 30) ? n : (1u << 30));
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        if (w == 0)
            return -EIO;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes data + trailer to tmp/ (0600), makes it 0400, flushes it (fdatasync) and only then
 * renames it to sub/name and makes it immutable (when protection is on): after a crash a
 * visible chunk file is whole. The rename itself is not made durable (no directory fsync): a
 * chunk lost in a crash is only a miss that refills, and the fsync cost every cold fill. On
 * failure nothing is left behind; -ENOSPC for a full disk (or quota, or file size limit),
 * -EIO otherwise. */
static int write_chunk_file(struct bs_store *s, const char *tmp, const char *sub, const char *name,
                            const void *data, size_t len, const unsigned char *trailer, size_t tlen,
                            char *err, size_t errsz)
{
    const char *what = "create";
    int subfd = -1, rc = 0;
    int fd = openat(s->tmpfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, TMP_MODE);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    what = "write";
    rc = write_all(fd, data, len);
    if (rc == 0)
        rc = write_all(fd, trailer, tlen);
    if (rc == 0 && (fchmod(fd, FILE_MODE) < 0 || fdatasync(fd) < 0)) {
        what = "fdatasync";
        rc = -errno;
    }
    if (rc == 0) {
        what = "rename";
        subfd = open_sub(s, sub);
        rc = subfd < 0 ? subfd : renameat(s->tmpfd, tmp, subfd, name) < 0 ? -errno : 0;
    }
    if (rc < 0) {
        close(fd);
        unlinkat(s->tmpfd, tmp, 0);
        goto out;
    }
    if (s->protection == BS_STORE_PROTECT_IMMUTABLE && set_immutable(fd, true) < 0) {
        pthread_mutex_lock(&s->lock);
        s->protect_errors++;
        pthread_mutex_unlock(&s->lock);
    }
    if (close(fd) < 0) {
        rc = -errno;
        what = "close";
        remove_entry(s, subfd, name);
    }
out:
    if (subfd >= 0)
        close(subfd);
    if (rc == 0)
        return 0;
    snprintf(err, errsz, "store: chunk file %s/%s: %s: %s", sub, name, what, strerror(-rc));
    return rc == -ENOSPC || rc == -EDQUOT || rc == -EFBIG ? -ENOSPC : -EIO;
}

/* c->crcs of data (c->data_len bytes in c->nblocks blocks) and, unless `given`, its SHA-256
 * in c->sha256, in one pass (SUM_PIECE at a time). 0 or -ENOMEM. */
static int checksum(struct bs_chunk_ref *c, const unsigned char *data, const unsigned char *given)
{
    EVP_MD_CTX *md = NULL;
    if (given)
        memcpy(c->sha256, given, BS_CHUNK_SHA256);
    else if (!(md = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(md, EVP_sha256(), NULL))
        goto out_fail;
    for (uint32_t i = 0; i < c->nblocks; i++) {
        uint64_t off = (uint64_t)i * c->block_size, end = off + c->block_size;
        if (end > c->data_len)
            end = c->data_len;
        uint32_t crc = 0;
        for (uint64_t p = off; p < end; p += SUM_PIECE) {
            size_t n = end - p < SUM_PIECE ? (size_t)(end - p) : SUM_PIECE;
            crc = bs_crc32c(crc, data + p, n);
            if (md && !EVP_DigestUpdate(md, data + p, n))
                goto out_fail;
        }
        c->crcs[i] = crc;
    }
    if (md && !EVP_DigestFinal_ex(md, c->sha256, NULL))
        goto out_fail;
    EVP_MD_CTX_free(md);
    return 0;
out_fail:
    EVP_MD_CTX_free(md);
    return -ENOMEM;
}

/* bs_store_put, with the data's SHA-256 given (NULL: computed here). */
static int put_chunk(struct bs_store *s, const struct bs_chunk_key *k, const void *data, size_t len,
                     const unsigned char *sha256, char *err, size_t errsz)
{
    unsigned char enc[BS_KEY_ENC_MAX + 8], cid[ID_LEN], vid[ID_LEN], tid[ID_LEN];
    size_t enclen;
    int rc = encode_key(k, enc, &enclen, err, errsz);
    if (rc == 0 && len > BS_CHUNK_MAX_BYTES) {
        snprintf(err, errsz, "store: chunk of %zu bytes is over the limit of %u", len,
                 BS_CHUNK_MAX_BYTES);
        rc = -EINVAL;
    }
    if (rc == 0 && !data && len) {
        snprintf(err, errsz, "store: no data");
        rc = -EINVAL;
    }
    if (rc < 0) {
        pthread_mutex_lock(&s->lock);
        s->put_errors++;
        pthread_mutex_unlock(&s->lock);
        return rc;
    }

    /* Everything that needs no lock: ids, block CRCs, SHA-256, trailer, memory. */
    uint32_t bs = s->block_size, nblocks = blocks_of(len, bs);
    size_t tlen = bs_trailer_len(enclen, nblocks);
    struct bs_chunk_ref *c = chunk_new(nblocks, enc, enclen, k->index);
    unsigned char *trailer = malloc(tlen);
    struct spares sp = {NULL, NULL};
    if (!c || !trailer || spares_fill(&sp) < 0 ||
        key_ids(enc, enclen, k->index, cid, vid, tid) < 0) {
        snprintf(err, errsz, "store: out of memory");
        rc = -ENOMEM;
        goto out_free;
    }
    memcpy(c->h.id, cid, ID_LEN);
    c->store = s;
    c->state = CHUNK_PENDING;
    c->data_len = len;
    c->block_size = bs;
    c->nblocks = nblocks;
    c->file_bytes = len + tlen;
    if (checksum(c, data, sha256) < 0) {
        snprintf(err, errsz, "store: out of memory (SHA-256)");
        rc = -ENOMEM;
        goto out_free;
    }
    bs_trailer_build(trailer, bs, len, k->index, enc, enclen, c->crcs, nblocks, c->sha256);

    /* Reserve: the key must be absent, and the bytes must fit (evicting if needed). The
     * version (and tenant) exist from here, pending, so that eviction counts this tenant. */
    struct list victims;
    list_init(&victims);
    char sub[SUB_SIZE], name[FILE_SIZE], tmp[TMP_NAME_SIZE];
    chunk_name(cid, sub, name);
    pthread_mutex_lock(&s->lock);
    struct hnode *h;
    while ((h = map_find(&s->chunks, cid)) &&
           container_of(h, struct bs_chunk_ref, h)->state == CHUNK_REMOVING)
        pthread_cond_wait(&s->removed, &s->lock);
    struct version *v = NULL;
    if (h) {
        rc = -EEXIST;
    } else if (c->file_bytes > s->budget) {
        snprintf(err, errsz, "store: chunk needs %llu bytes, the budget is %llu",
                 (unsigned long long)c->file_bytes, (unsigned long long)s->budget);
        rc = -ENOSPC;
    } else {
        v = version_get(s, vid, tid, &sp);
        v->pending++;
        if (s->bytes + s->reserved + c->file_bytes > s->high)
            evict(s, c->file_bytes, v->t, &victims);
        if (s->bytes + s->reserved + c->file_bytes > s->budget) {
            snprintf(err, errsz,
                     "store: no room for %llu bytes: %llu of %llu held by readers, fills or "
                     "other tenants' shares",
                     (unsigned long long)c->file_bytes,
                     (unsigned long long)(s->bytes + s->reserved), (unsigned long long)s->budget);
            rc = -ENOSPC;
            v->pending--;
            version_free_if_unused(s, v);
        }
    }
    if (rc == 0) {
        c->ver = v;
        c->in_map = true;
        map_insert(&s->chunks, &c->h);
        s->reserved += c->file_bytes;
        snprintf(tmp, sizeof(tmp), "%.64s.%llu.tmp", name, (unsigned long long)++s->tmp_seq);
    } else if (rc != -EEXIST) {
        s->put_errors++;
    }
    pthread_mutex_unlock(&s->lock);
    remove_files(s, &victims);
    if (rc < 0)
        goto out_free;

    rc = write_chunk_file(s, tmp, sub, name, data, len, trailer, tlen, err, errsz);

    pthread_mutex_lock(&s->lock);
    v = c->ver;
    v->pending--;
    s->reserved -= c->file_bytes;
    if (rc == 0) {
        chunk_go_live(s, c, v);
        c = NULL;
    } else {
        map_remove(&s->chunks, &c->h);
        version_free_if_unused(s, v);
        s->put_errors++;
    }
    pthread_mutex_unlock(&s->lock);
out_free:
    spares_free(&sp);
    free(trailer);
    free(c);
    return rc;
}

int bs_store_put(struct bs_store *s, const struct bs_chunk_key *k, const void *data, size_t len,
                 char *err, size_t errsz)
{
    return put_chunk(s, k, data, len, NULL, err, errsz);
}

int bs_store_put_digest(struct bs_store *s, const struct bs_chunk_key *k, const void *data,
                        size_t len, const unsigned char sha256[32], char *err, size_t errsz)
{
    if (!sha256) {
        snprintf(err, errsz, "store: no SHA-256 given");
        pthread_mutex_lock(&s->lock);
        s->put_errors++;
        pthread_mutex_unlock(&s->lock);
        return -EINVAL;
    }
    return put_chunk(s, k, data, len, sha256, err, errsz);
}

void bs_store_drop(struct bs_store *s, const struct bs_chunk_key *k)
{
    unsigned char enc[BS_KEY_ENC_MAX + 8], cid[ID_LEN];
    size_t enclen;
    char err[1];
    if (encode_key(k, enc, &enclen, err, sizeof(err)) < 0 ||
        key_ids(enc, enclen, k->index, cid, NULL, NULL) < 0)
        return;
    drop_chunk(s, cid, NULL, "reported by reader");
}

/* ---- walking the index ---- */

static size_t reverse_bits(size_t v)
{
    size_t r = 0;
    for (size_t i = 0; i < sizeof(v) * 8; i++, v >>= 1)
        r = r << 1 | (v & 1);
    return r;
}

/* The bucket after `cursor` in reverse binary order (Redis's SCAN): a walk of a table that
 * doubles between two steps neither misses nor repeats an entry that stays in it. 0: the
 * walk is over. */
static size_t next_bucket(size_t cursor, size_t mask)
{
    return reverse_bits(reverse_bits(cursor | ~mask) + 1);
}

/* Keys copied out of the index: `n` records of where a key's strings start in `keys`, and
 * its chunk index. */
struct key_ent {
    size_t off;
    uint64_t index;
};

struct key_batch {
    struct key_ent *ent;
    char *keys;
    size_t n, cap, used, bytes;
};

/* Makes room for `n` more records and `bytes` more key bytes. 0 or -ENOMEM. */
static int batch_reserve(struct key_batch *b, size_t n, size_t bytes)
{
    if (b->n + n > b->cap) {
        void *p = realloc(b->ent, (b->n + n) * sizeof(*b->ent));
        if (!p)
            return -ENOMEM;
        b->ent = p;
        b->cap = b->n + n;
    }
    if (b->used + bytes > b->bytes) {
        char *p = realloc(b->keys, b->used + bytes);
        if (!p)
            return -ENOMEM;
        b->keys = p;
        b->bytes = b->used + bytes;
    }
    return 0;
}

/* Bytes of a record's key strings (with their NULs). */
static size_t key_bytes(const struct bs_chunk_ref *c)
{
    const char *p = c->key;
    for (int i = 0; i < 4; i++)
        p += strlen(p) + 1;
    return (size_t)(p - c->key);
}

/* Copies the live chunks of bucket `i` into b if they fit in a batch (or b is empty, which
 * then grows). Under s->lock. 1 copied, 0 full, -ENOMEM. */
static int copy_bucket(struct bs_store *s, size_t i, struct key_batch *b)
{
    size_t n = 0, bytes = 0;
    for (struct hnode *h = s->chunks.b[i]; h; h = h->next) {
        struct bs_chunk_ref *c = container_of(h, struct bs_chunk_ref, h);
        if (c->state == CHUNK_LIVE) {
            n++;
            bytes += key_bytes(c);
        }
    }
    if (b->n && (b->n + n > FOREACH_BATCH || b->used + bytes > FOREACH_BATCH_BYTES))
        return 0;
    if (batch_reserve(b, n, bytes) < 0)
        return -ENOMEM;
    for (struct hnode *h = s->chunks.b[i]; h; h = h->next) {
        struct bs_chunk_ref *c = container_of(h, struct bs_chunk_ref, h);
        if (c->state != CHUNK_LIVE)
            continue;
        size_t kb = key_bytes(c);
        memcpy(b->keys + b->used, c->key, kb);
        b->ent[b->n].off = b->used;
        b->ent[b->n].index = c->index;
        b->n++;
        b->used += kb;
    }
    return 1;
}

int bs_store_foreach(struct bs_store *s, void (*fn)(void *arg, const struct bs_chunk_key *k),
                     void *arg)
{
    struct key_batch b = {0};
    int rc = batch_reserve(&b, FOREACH_BATCH, FOREACH_BATCH_BYTES);
    size_t cursor = 0;
    while (rc == 0) {
        b.n = b.used = 0;
        pthread_mutex_lock(&s->lock);
        do {
            int got = copy_bucket(s, cursor & s->chunks.mask, &b);
            if (got <= 0) {
                rc = got;
                break;
            }
            cursor = next_bucket(cursor, s->chunks.mask);
        } while (cursor != 0);
        pthread_mutex_unlock(&s->lock);
        for (size_t i = 0; i < b.n; i++) {
            struct bs_chunk_key k = key_view(b.keys + b.ent[i].off, b.ent[i].index);
            fn(arg, &k);
        }
        if (cursor == 0)
            break;
    }
    free(b.ent);
    free(b.keys);
    return rc;
}

void bs_store_get_stats(struct bs_store *s, struct bs_store_stats *out)
{
    pthread_mutex_lock(&s->lock);
    *out = (struct bs_store_stats){
        .bytes = s->bytes,
        .budget_bytes = s->budget,
        .chunks = s->nchunks,
        .blobs = s->nversions,
        .tenants = s->ntenants,
        .evicted_chunks = s->evicted_chunks,
        .evicted_bytes = s->evicted_bytes,
        .dropped_corrupt = s->dropped_corrupt,
        .put_errors = s->put_errors,
        .protect_errors = s->protect_errors,
        .protection = s->protection,
    };
    pthread_mutex_unlock(&s->lock);
}
