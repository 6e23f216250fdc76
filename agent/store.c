/* The node's chunk store (see store.h): one immutable file per chunk, [data][trailer], named by
 * the SHA-256 of its key in a 256-way fan-out directory; an in-memory index rebuilt at start
 * from the trailers alone; byte accounting against a budget with high/low watermarks; LRU
 * eviction of whole unused blob versions first, then of single unpinned chunks.
 * It does not fetch, and does not check data CRCs itself: readers verify the blocks they read
 * with bs_chunk_verify and report bad chunks with bs_store_drop. */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "crc32c.h"
#include "log.h"

/* Limits, checked at create (options) and put (keys, sizes). */
#define MAX_KEY_FIELD   1024u        /* bytes of account, container, blob or ETag */
#define MAX_CHUNK_BYTES (256u << 20) /* data bytes of one chunk */
#define MIN_BLOCK_SIZE  4096u
#define MAX_BLOCK_SIZE  (16u << 20)
#define MAX_BLOCKS      (MAX_CHUNK_BYTES / MIN_BLOCK_SIZE)

/* Trailer, all integers little-endian:
 *   head  u32 magic "BSCK", u16 format version, u16 flags (0), u32 block_size, u32 nblocks,
 *         u64 data_len, u64 index                                             (32 bytes)
 *   key   account, container, blob, etag, each u16 length + bytes
 *   crcs  u32 CRC-32C of each block, the last block possibly short
 *   foot  u32 CRC-32C of everything above, u32 trailer length (all four parts),
 *         u32 end magic "BSCE"                                                (12 bytes)
 * A scan reads the foot from the end of the file, then the trailer, and checks both without
 * touching the data. The file is DIR/ab/<hex SHA-256 of (key encoding, u64 index)>.chunk,
 * "ab" its first two hex digits; puts write DIR/tmp/ first; DIR/lock is held (flock) by the
 * one store that uses DIR. */
#define TRAILER_MAGIC   0x4b435342u /* "BSCK" */
#define TRAILER_END     0x45435342u /* "BSCE" */
#define TRAILER_VERSION 1
#define TRAILER_HEAD    32
#define TRAILER_FOOT    12
#define KEY_ENC_MAX     (4 * (2 + MAX_KEY_FIELD))
#define TRAILER_MAX     (TRAILER_HEAD + KEY_ENC_MAX + 4 * MAX_BLOCKS + TRAILER_FOOT)

#define ID_LEN        32                        /* SHA-256 */
#define NAME_SIZE     (3 + 64 + 6 + 1)          /* "ab/<64 hex>.chunk" */
#define TMP_NAME_SIZE (4 + 64 + 1 + 20 + 4 + 1) /* "tmp/<64 hex>.<seq>.tmp" */
#define CHUNK_SUFFIX  ".chunk"
#define TMP_DIR       "tmp"
#define LOCK_FILE     "lock"
#define MAP_BUCKETS0  1024

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

/* All chunks of one blob version (account, container, blob, ETag). */
struct version {
    struct hnode h;     /* SHA-256 of the key encoding without the index */
    struct list lru;    /* in s->version_lru, least recently used first */
    struct list chunks; /* its live chunks */
    uint64_t nchunks;
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
    struct list lru;     /* in s->chunk_lru while live; in a victim list while removing */
    struct list in_ver;  /* in ver->chunks while live */
    enum chunk_state state;
    bool in_map;
    uint32_t refs;
    uint64_t data_len, file_bytes;
    uint32_t block_size, nblocks;
    uint32_t crcs[];
};

struct bs_store {
    int dirfd, lockfd;
    uint64_t budget, high, low; /* bytes */
    uint32_t block_size;

    pthread_mutex_t lock;
    pthread_cond_t removed; /* broadcast when removing chunks leave the index */
    struct map chunks, versions;
    struct list chunk_lru, version_lru;
    uint64_t bytes, reserved; /* live files; puts in flight */
    uint64_t nchunks, nversions, tmp_seq;
    uint64_t evicted_chunks, evicted_bytes, dropped_corrupt, put_errors;
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

/* ---- encodings ---- */

static void put_le16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint16_t get_le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_le64(const unsigned char *p)
{
    return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

static uint32_t blocks_of(uint64_t len, uint32_t block_size)
{
    return (uint32_t)(len / block_size + (len % block_size != 0));
}

/* Writes the key's four strings as u16 length + bytes into enc (KEY_ENC_MAX bytes);
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
        size_t len = fields[i] ? strnlen(fields[i], MAX_KEY_FIELD + 1) : 0;
        if (len == 0 || len > MAX_KEY_FIELD) {
            snprintf(err, errsz, "chunk key: %s is %s", names[i],
                     len ? "longer than 1024 bytes" : "missing or empty");
            return -EINVAL;
        }
        put_le16(enc + n, (uint16_t)len);
        memcpy(enc + n + 2, fields[i], len);
        n += 2 + len;
    }
    *enclen = n;
    return 0;
}

/* cid = SHA-256(key encoding, u64 index): names the chunk. vid (if not NULL) =
 * SHA-256(key encoding): names the blob version. enc must have 8 spare bytes after enclen. */
static int key_ids(unsigned char *enc, size_t enclen, uint64_t index, unsigned char *cid,
                   unsigned char *vid)
{
    put_le64(enc + enclen, index);
    if (!EVP_Digest(enc, enclen + 8, cid, NULL, EVP_sha256(), NULL))
        return -ENOMEM;
    if (vid && !EVP_Digest(enc, enclen, vid, NULL, EVP_sha256(), NULL))
        return -ENOMEM;
    return 0;
}

/* "ab/abcdef....chunk" */
static void chunk_name(const unsigned char *id, char *name)
{
    static const char hex[] = "0123456789abcdef";
    char *p = name;
    *p++ = hex[id[0] >> 4];
    *p++ = hex[id[0] & 15];
    *p++ = '/';
    for (int i = 0; i < ID_LEN; i++) {
        *p++ = hex[id[i] >> 4];
        *p++ = hex[id[i] & 15];
    }
    memcpy(p, CHUNK_SUFFIX, sizeof(CHUNK_SUFFIX));
}

static size_t trailer_len(size_t enclen, uint32_t nblocks)
{
    return TRAILER_HEAD + enclen + 4 * (size_t)nblocks + TRAILER_FOOT;
}

static void build_trailer(unsigned char *t, const struct bs_chunk_ref *c, uint64_t index,
                          const unsigned char *enc, size_t enclen)
{
    size_t tlen = trailer_len(enclen, c->nblocks);
    put_le32(t, TRAILER_MAGIC);
    put_le16(t + 4, TRAILER_VERSION);
    put_le16(t + 6, 0);
    put_le32(t + 8, c->block_size);
    put_le32(t + 12, c->nblocks);
    put_le64(t + 16, c->data_len);
    put_le64(t + 24, index);
    memcpy(t + TRAILER_HEAD, enc, enclen);
    unsigned char *p = t + TRAILER_HEAD + enclen;
    for (uint32_t i = 0; i < c->nblocks; i++, p += 4)
        put_le32(p, c->crcs[i]);
    put_le32(p, bs_crc32c(0, t, tlen - TRAILER_FOOT));
    put_le32(p + 4, (uint32_t)tlen);
    put_le32(p + 8, TRAILER_END);
}

struct trailer {
    uint32_t block_size, nblocks;
    uint64_t data_len, index;
    const unsigned char *enc, *crcs;
    size_t enclen;
};

/* Parses a whole trailer whose own CRC has been checked. NULL, or what is wrong. */
static const char *parse_trailer(const unsigned char *t, size_t tlen, struct trailer *out)
{
    if (get_le32(t) != TRAILER_MAGIC)
        return "bad trailer magic";
    if (get_le16(t + 4) != TRAILER_VERSION || get_le16(t + 6) != 0)
        return "unknown trailer version";
    out->block_size = get_le32(t + 8);
    out->nblocks = get_le32(t + 12);
    out->data_len = get_le64(t + 16);
    out->index = get_le64(t + 24);
    uint32_t bs = out->block_size;
    if (bs < MIN_BLOCK_SIZE || bs > MAX_BLOCK_SIZE || (bs & (bs - 1)))
        return "block size out of range";
    if (out->data_len > MAX_CHUNK_BYTES || out->nblocks != blocks_of(out->data_len, bs))
        return "data length and block count disagree";
    size_t n = TRAILER_HEAD;
    for (int i = 0; i < 4; i++) {
        if (n + 2 > tlen)
            return "key runs past the trailer";
        size_t len = get_le16(t + n);
        if (len == 0 || len > MAX_KEY_FIELD || n + 2 + len > tlen)
            return "bad key field length";
        if (memchr(t + n + 2, 0, len))
            return "NUL byte in a key field";
        n += 2 + len;
    }
    out->enc = t + TRAILER_HEAD;
    out->enclen = n - TRAILER_HEAD;
    out->crcs = t + n;
    if (trailer_len(out->enclen, out->nblocks) != tlen)
        return "trailer length disagrees with its contents";
    return NULL;
}

/* ---- index (everything here runs under s->lock) ---- */

static void touch(struct bs_store *s, struct bs_chunk_ref *c)
{
    list_move_tail(&s->chunk_lru, &c->lru);
    list_move_tail(&s->version_lru, &c->ver->lru);
}

/* The version `vid`, created from *spare (taken: set to NULL) if it does not exist. */
static struct version *version_get(struct bs_store *s, const unsigned char *vid,
                                   struct version **spare)
{
    struct hnode *h = map_find(&s->versions, vid);
    if (h)
        return container_of(h, struct version, h);
    struct version *v = *spare;
    *spare = NULL;
    memcpy(v->h.id, vid, ID_LEN);
    list_init(&v->chunks);
    list_add_tail(&s->version_lru, &v->lru);
    map_insert(&s->versions, &v->h);
    s->nversions++;
    return v;
}

static void version_free_if_unused(struct bs_store *s, struct version *v)
{
    if (v->nchunks || v->pending)
        return;
    map_remove(&s->versions, &v->h);
    list_del(&v->lru);
    free(v);
    s->nversions--;
}

/* A pending (or, at scan, new) chunk becomes live in version v, most recently used. */
static void chunk_go_live(struct bs_store *s, struct bs_chunk_ref *c, struct version *v)
{
    c->state = CHUNK_LIVE;
    c->ver = v;
    list_add_tail(&v->chunks, &c->in_ver);
    v->nchunks++;
    list_init(&c->lru);
    list_add_tail(&s->chunk_lru, &c->lru);
    list_move_tail(&s->version_lru, &v->lru);
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
    v->refs -= c->refs;
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

/* Makes room for `need` more bytes down to the low watermark, least recently used first:
 * whole blob versions that no reader holds and no put is filling, then single chunks that no
 * reader holds. Victims are detached into `victims` for remove_files(). */
static void evict(struct bs_store *s, uint64_t need, struct list *victims)
{
    uint64_t target = s->low > need ? s->low - need : 0;
    for (struct list *e = s->version_lru.next, *next; e != &s->version_lru && over(s, target);
         e = next) {
        next = e->next;
        struct version *v = container_of(e, struct version, lru);
        if (v->refs || v->pending)
            continue;
        while (!list_empty(&v->chunks))
            evict_one(s, container_of(v->chunks.next, struct bs_chunk_ref, in_ver), victims);
        version_free_if_unused(s, v);
    }
    for (struct list *e = s->chunk_lru.next, *next; e != &s->chunk_lru && over(s, target);
         e = next) {
        next = e->next;
        struct bs_chunk_ref *c = container_of(e, struct bs_chunk_ref, lru);
        if (c->refs)
            continue;
        struct version *v = c->ver;
        evict_one(s, c, victims);
        version_free_if_unused(s, v);
    }
}

/* Unlinks the victims' files (without the lock: an unlink of a large file takes time), then
 * takes them out of the index and wakes puts waiting for their keys. Called without the lock. */
static void remove_files(struct bs_store *s, struct list *victims)
{
    if (list_empty(victims))
        return;
    for (struct list *e = victims->next; e != victims; e = e->next) {
        struct bs_chunk_ref *c = container_of(e, struct bs_chunk_ref, lru);
        char name[NAME_SIZE];
        chunk_name(c->h.id, name);
        if (unlinkat(s->dirfd, name, 0) < 0 && errno != ENOENT)
            bs_log(BS_LOG_WARN, "store", "event=unlink_failed file=%s error=\"%s\"", name,
                   strerror(errno));
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

static struct bs_chunk_ref *chunk_new(uint32_t nblocks)
{
    return calloc(1, sizeof(struct bs_chunk_ref) + (size_t)nblocks * sizeof(uint32_t));
}

/* ---- start-up: options, directories, scan ---- */

static int mkdir_p(const char *path)
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
    if (mkdir(buf, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* Deletes what puts interrupted by a crash left in tmp/. */
static void clean_tmp(struct bs_store *s)
{
    int fd = openat(s->dirfd, TMP_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    unsigned removed = 0;
    for (struct dirent *de; (de = readdir(d));) {
        size_t n = strlen(de->d_name);
        if (n > 4 && strcmp(de->d_name + n - 4, ".tmp") == 0 && unlinkat(fd, de->d_name, 0) == 0)
            removed++;
    }
    closedir(d);
    if (removed)
        bs_log(BS_LOG_INFO, "store", "event=tmp_removed files=%u", removed);
}

static bool is_lower_hex(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return false;
    return true;
}

static ssize_t pread_all(int fd, void *buf, size_t n, off_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

struct scanned {
    struct bs_chunk_ref *c;
    unsigned char vid[ID_LEN];
    struct timespec mtime;
};

/* Reads and checks the trailer of the chunk file `name` (in the fan-out directory `sub`,
 * already checked to be 64 hex digits + ".chunk"). 0 and *out filled; 1 with *why if the file
 * is not a valid chunk; -ENOMEM. */
static int load_chunk(int subfd, const char *sub, const char *name, struct scanned *out,
                      const char **why)
{
    int rc = 1;
    unsigned char *t = NULL;
    int fd = openat(subfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOMEM))
        return -errno; /* the file may be fine: stop rather than delete it */
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        *why = "cannot be opened as a regular file";
        goto out_close;
    }
    unsigned char foot[TRAILER_FOOT];
    if (st.st_size < TRAILER_HEAD + TRAILER_FOOT ||
        pread_all(fd, foot, sizeof(foot), st.st_size - TRAILER_FOOT) != TRAILER_FOOT) {
        *why = "shorter than a trailer";
        goto out_close;
    }
    uint32_t tlen = get_le32(foot + 4);
    if (get_le32(foot + 8) != TRAILER_END) {
        *why = "no end magic (truncated or not a chunk)";
        goto out_close;
    }
    if (tlen < TRAILER_HEAD + TRAILER_FOOT || tlen > TRAILER_MAX || tlen > st.st_size) {
        *why = "trailer length out of range";
        goto out_close;
    }
    t = malloc(tlen);
    if (!t) {
        rc = -ENOMEM;
        goto out_close;
    }
    if (pread_all(fd, t, tlen, st.st_size - tlen) != (ssize_t)tlen) {
        *why = "trailer unreadable";
        goto out_free;
    }
    if (bs_crc32c(0, t, tlen - TRAILER_FOOT) != get_le32(t + tlen - TRAILER_FOOT)) {
        *why = "trailer checksum mismatch";
        goto out_free;
    }
    struct trailer tr;
    if ((*why = parse_trailer(t, tlen, &tr)))
        goto out_free;
    if (tr.data_len + tlen != (uint64_t)st.st_size) {
        *why = "file size disagrees with the trailer";
        goto out_free;
    }
    unsigned char enc[KEY_ENC_MAX + 8], cid[ID_LEN];
    char expect[NAME_SIZE];
    memcpy(enc, tr.enc, tr.enclen);
    if (key_ids(enc, tr.enclen, tr.index, cid, out->vid) < 0) {
        rc = -ENOMEM;
        goto out_free;
    }
    chunk_name(cid, expect);
    if (memcmp(expect, sub, 2) != 0 || strcmp(expect + 3, name) != 0) {
        *why = "file name is not the hash of the key in its trailer";
        goto out_free;
    }
    struct bs_chunk_ref *c = chunk_new(tr.nblocks);
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
        c->crcs[i] = get_le32(tr.crcs + 4 * (size_t)i);
    out->c = c;
    out->mtime = st.st_mtim;
    rc = 0;
out_free:
    free(t);
out_close:
    if (fd >= 0)
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

/* Scans one fan-out directory, appending valid chunks to *list and deleting bad ones. */
static int scan_dir(struct bs_store *s, const char *sub, struct scanned **list, size_t *n,
                    size_t *cap, char *err, size_t errsz)
{
    int subfd = openat(s->dirfd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = subfd >= 0 ? fdopendir(subfd) : NULL;
    if (!d) {
        snprintf(err, errsz, "cannot open %s: %s", sub, strerror(errno));
        if (subfd >= 0)
            close(subfd);
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
        if (len == 64 + suffix && is_lower_hex(name, 64))
            lc = load_chunk(subfd, sub, name, &(*list)[*n], &why);
        if (lc < 0) {
            rc = lc;
            break;
        }
        if (lc == 0) {
            (*n)++;
            continue;
        }
        unlinkat(subfd, name, 0);
        s->dropped_corrupt++;
        bs_log(BS_LOG_WARN, "store", "event=dropped_corrupt file=%s/%s reason=\"%s\"", sub, name,
               why);
    }
    closedir(d);
    if (rc < 0)
        snprintf(err, errsz, "store: scanning %s: %s", sub, strerror(-rc));
    return rc;
}

/* Indexes every valid chunk file, least recently written first (the LRU order until reads
 * reorder it), and deletes the malformed ones. */
static int scan(struct bs_store *s, char *err, size_t errsz)
{
    struct scanned *list = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (int i = 0; i < 256 && rc == 0; i++) {
        char sub[3];
        snprintf(sub, sizeof(sub), "%02x", i);
        rc = scan_dir(s, sub, &list, &n, &cap, err, errsz);
    }
    if (rc == 0 && n > 1)
        qsort(list, n, sizeof(*list), by_mtime);
    size_t i = 0;
    for (; i < n && rc == 0; i++) {
        struct version *spare = NULL;
        if (!map_find(&s->versions, list[i].vid) && !(spare = calloc(1, sizeof(*spare)))) {
            snprintf(err, errsz, "out of memory while scanning");
            rc = -ENOMEM;
            break;
        }
        struct bs_chunk_ref *c = list[i].c;
        c->store = s;
        c->in_map = true;
        map_insert(&s->chunks, &c->h);
        chunk_go_live(s, c, version_get(s, list[i].vid, &spare));
    }
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
    if (bs < MIN_BLOCK_SIZE || bs > MAX_BLOCK_SIZE || (bs & (bs - 1))) {
        snprintf(err, errsz, "store: block size %u is not a power of two in %u..%u", bs,
                 MIN_BLOCK_SIZE, MAX_BLOCK_SIZE);
        return -EINVAL;
    }
    return 0;
}

static int make_dirs(struct bs_store *s, const char *dir, char *err, size_t errsz)
{
    int rc = mkdir_p(dir);
    if (rc < 0) {
        snprintf(err, errsz, "store: cannot create %s: %s", dir, strerror(-rc));
        return rc;
    }
    s->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dirfd < 0) {
        snprintf(err, errsz, "store: cannot open %s: %s", dir, strerror(errno));
        return -errno;
    }
    s->lockfd = openat(s->dirfd, LOCK_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->lockfd < 0 || flock(s->lockfd, LOCK_EX | LOCK_NB) < 0) {
        rc = -errno;
        snprintf(err, errsz, "store: %s: %s", dir,
                 rc == -EWOULDBLOCK ? "in use by another store" : strerror(-rc));
        return rc;
    }
    for (int i = -1; i < 256; i++) {
        char sub[4] = TMP_DIR;
        if (i >= 0)
            snprintf(sub, sizeof(sub), "%02x", i);
        if (mkdirat(s->dirfd, sub, 0755) < 0 && errno != EEXIST) {
            rc = -errno;
            snprintf(err, errsz, "store: cannot create %s/%s: %s", dir, sub, strerror(-rc));
            return rc;
        }
    }
    return 0;
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
    s->dirfd = s->lockfd = -1;
    s->budget = o->budget_bytes;
    s->high = pct_of(o->budget_bytes, o->high_watermark_pct);
    s->low = pct_of(o->budget_bytes, o->low_watermark_pct);
    s->block_size = o->block_size;
    list_init(&s->chunk_lru);
    list_init(&s->version_lru);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->removed, NULL);
    if (map_init(&s->chunks) < 0 || map_init(&s->versions) < 0) {
        snprintf(err, errsz, "store: out of memory");
        goto out_destroy;
    }
    if (make_dirs(s, o->dir, err, errsz) < 0)
        goto out_destroy;
    clean_tmp(s);
    if (scan(s, err, errsz) < 0)
        goto out_destroy;
    if (s->bytes > s->high) { /* the budget was lowered since the last run */
        struct list victims;
        list_init(&victims);
        evict(s, 0, &victims);
        remove_files(s, &victims);
    }
    bs_log(BS_LOG_INFO, "store",
           "event=open dir=%s chunks=%llu blobs=%llu bytes=%llu budget=%llu dropped_corrupt=%llu",
           o->dir, (unsigned long long)s->nchunks, (unsigned long long)s->nversions,
           (unsigned long long)s->bytes, (unsigned long long)s->budget,
           (unsigned long long)s->dropped_corrupt);
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
    free(s->chunks.b);
    free(s->versions.b);
    if (s->lockfd >= 0)
        close(s->lockfd); /* releases the flock */
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
    unsigned char enc[KEY_ENC_MAX + 8], cid[ID_LEN];
    size_t enclen;
    char err[1];
    if (encode_key(k, enc, &enclen, err, sizeof(err)) < 0)
        return -EINVAL;
    if (key_ids(enc, enclen, k->index, cid, NULL) < 0)
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
    char name[NAME_SIZE];
    chunk_name(c->h.id, name);
    int fd = openat(c->store->dirfd, name, O_RDONLY | O_CLOEXEC);
    return fd >= 0 ? fd : -errno;
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

/* Writes data + trailer to tmp/, then renames it to `name`. On failure nothing is left
 * behind; -ENOSPC for a full disk (or quota, or file size limit), -EIO otherwise. */
static int write_chunk_file(struct bs_store *s, const char *tmp, const char *name, const void *data,
                            size_t len, const unsigned char *trailer, size_t tlen, char *err,
                            size_t errsz)
{
    const char *what = "create";
    int rc = 0;
    int fd = openat(s->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    what = "write";
    rc = write_all(fd, data, len);
    if (rc == 0)
        rc = write_all(fd, trailer, tlen);
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0) {
        what = "rename";
        if (renameat(s->dirfd, tmp, s->dirfd, name) < 0)
            rc = -errno;
    }
    if (rc < 0)
        unlinkat(s->dirfd, tmp, 0);
out:
    if (rc == 0)
        return 0;
    snprintf(err, errsz, "store: chunk file %s: %s: %s", name, what, strerror(-rc));
    return rc == -ENOSPC || rc == -EDQUOT || rc == -EFBIG ? -ENOSPC : -EIO;
}

int bs_store_put(struct bs_store *s, const struct bs_chunk_key *k, const void *data, size_t len,
                 char *err, size_t errsz)
{
    unsigned char enc[KEY_ENC_MAX + 8], cid[ID_LEN], vid[ID_LEN];
    size_t enclen;
    int rc = encode_key(k, enc, &enclen, err, errsz);
    if (rc == 0 && len > MAX_CHUNK_BYTES) {
        snprintf(err, errsz, "store: chunk of %zu bytes is over the limit of %u", len,
                 MAX_CHUNK_BYTES);
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

    /* Everything that needs no lock: ids, block CRCs, trailer, memory. */
    uint32_t bs = s->block_size, nblocks = blocks_of(len, bs);
    size_t tlen = trailer_len(enclen, nblocks);
    struct bs_chunk_ref *c = chunk_new(nblocks);
    unsigned char *trailer = malloc(tlen);
    struct version *spare = calloc(1, sizeof(*spare));
    if (!c || !trailer || !spare || key_ids(enc, enclen, k->index, cid, vid) < 0) {
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
    for (uint32_t i = 0; i < nblocks; i++) {
        size_t off = (size_t)i * bs;
        c->crcs[i] =
            bs_crc32c(0, (const unsigned char *)data + off, len - off < bs ? len - off : bs);
    }
    build_trailer(trailer, c, k->index, enc, enclen);

    /* Reserve: the key must be absent, and the bytes must fit (evicting if needed). */
    struct list victims;
    list_init(&victims);
    char name[NAME_SIZE], tmp[TMP_NAME_SIZE];
    chunk_name(cid, name);
    pthread_mutex_lock(&s->lock);
    struct hnode *h;
    while ((h = map_find(&s->chunks, cid)) &&
           container_of(h, struct bs_chunk_ref, h)->state == CHUNK_REMOVING)
        pthread_cond_wait(&s->removed, &s->lock);
    if (h) {
        rc = -EEXIST;
    } else if (c->file_bytes > s->budget) {
        snprintf(err, errsz, "store: chunk needs %llu bytes, the budget is %llu",
                 (unsigned long long)c->file_bytes, (unsigned long long)s->budget);
        rc = -ENOSPC;
    } else {
        if (s->bytes + s->reserved + c->file_bytes > s->high)
            evict(s, c->file_bytes, &victims);
        if (s->bytes + s->reserved + c->file_bytes > s->budget) {
            snprintf(err, errsz,
                     "store: no room for %llu bytes: %llu of %llu held by readers or fills",
                     (unsigned long long)c->file_bytes,
                     (unsigned long long)(s->bytes + s->reserved), (unsigned long long)s->budget);
            rc = -ENOSPC;
        }
    }
    if (rc == 0) {
        struct version *v = version_get(s, vid, &spare);
        v->pending++;
        c->ver = v;
        c->in_map = true;
        map_insert(&s->chunks, &c->h);
        s->reserved += c->file_bytes;
        snprintf(tmp, sizeof(tmp), TMP_DIR "/%.64s.%llu.tmp", name + 3,
                 (unsigned long long)++s->tmp_seq);
    } else if (rc != -EEXIST) {
        s->put_errors++;
    }
    pthread_mutex_unlock(&s->lock);
    remove_files(s, &victims);
    if (rc < 0)
        goto out_free;

    rc = write_chunk_file(s, tmp, name, data, len, trailer, tlen, err, errsz);

    pthread_mutex_lock(&s->lock);
    struct version *v = c->ver;
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
    free(spare);
    free(trailer);
    free(c);
    return rc;
}

void bs_store_drop(struct bs_store *s, const struct bs_chunk_key *k)
{
    unsigned char enc[KEY_ENC_MAX + 8], cid[ID_LEN];
    size_t enclen;
    char err[1];
    if (encode_key(k, enc, &enclen, err, sizeof(err)) < 0 ||
        key_ids(enc, enclen, k->index, cid, NULL) < 0)
        return;
    struct list victims;
    list_init(&victims);
    pthread_mutex_lock(&s->lock);
    struct hnode *h = map_find(&s->chunks, cid);
    struct bs_chunk_ref *c = h ? container_of(h, struct bs_chunk_ref, h) : NULL;
    if (c && c->state == CHUNK_LIVE) {
        struct version *v = c->ver;
        chunk_detach(s, c, &victims);
        version_free_if_unused(s, v);
        s->dropped_corrupt++;
    }
    pthread_mutex_unlock(&s->lock);
    if (!list_empty(&victims)) {
        char name[NAME_SIZE];
        chunk_name(cid, name);
        bs_log(BS_LOG_WARN, "store", "event=dropped_corrupt file=%s reason=\"reported by reader\"",
               name);
    }
    remove_files(s, &victims);
}

void bs_store_get_stats(struct bs_store *s, struct bs_store_stats *out)
{
    pthread_mutex_lock(&s->lock);
    *out = (struct bs_store_stats){
        .bytes = s->bytes,
        .budget_bytes = s->budget,
        .chunks = s->nchunks,
        .blobs = s->nversions,
        .evicted_chunks = s->evicted_chunks,
        .evicted_bytes = s->evicted_bytes,
        .dropped_corrupt = s->dropped_corrupt,
        .put_errors = s->put_errors,
    };
    pthread_mutex_unlock(&s->lock);
}

int bs_chunk_verify(const uint32_t *crcs, uint32_t ncrcs, uint32_t block_size, uint64_t chunk_len,
                    uint64_t off, const void *data, size_t len)
{
    if (block_size == 0 || (block_size & (block_size - 1)) || (!crcs && ncrcs) || (!data && len) ||
        ncrcs != chunk_len / block_size + (chunk_len % block_size != 0))
        return -EINVAL;
    if (off > chunk_len || len > chunk_len - off || off % block_size ||
        ((off + len) % block_size && off + len != chunk_len))
        return -EINVAL;
    const unsigned char *p = data;
    for (uint64_t i = off / block_size; len; i++) {
        size_t n = len < block_size ? len : block_size;
        if (bs_crc32c(0, p, n) != crcs[i])
            return -EBADMSG;
        p += n;
        len -= n;
    }
    return 0;
}
