/* Unit tests for agent/store on real files in a fresh temporary directory: byte-exact round
 * trips through the descriptor, key derivation (file names recomputed here from the format's
 * definition), eviction order and watermarks, the restart scan, every kind of damaged file,
 * a full disk (a 1 MiB tmpfs when this process may mount one, a file size limit always),
 * and many threads sharing a small budget. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "crc32c.h"
#include "chunkio.h"
#include "store.h"

#define BLOCK 4096u
#define ETAG  "\"0x8DC0FFEE\""
#define OPTS(d, budget, high, low, bs)                                                             \
    {                                                                                              \
        .dir = (d), .budget_bytes = (budget), .high_watermark_pct = (high),                        \
        .low_watermark_pct = (low), .block_size = (bs)                                             \
    }

struct env {
    char dir[64]; /* /tmp/bs_store_test.XXXXXX */
    struct bs_store *s;
};

/* ---- helpers ---- */

/* Clears FS_IMMUTABLE_FL (set by the store where it can) and makes the file writable (0600)
 * so that a test can damage or remove a chunk file as a disk fault or an operator would. */
static void unprotect(const char *path)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return;
    int flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_IMMUTABLE_FL)) {
        flags &= ~FS_IMMUTABLE_FL;
        ioctl(fd, FS_IOC_SETFLAGS, &flags);
    }
    fchmod(fd, 0600);
    close(fd);
}

static bool immutable(const char *path)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    int flags = 0;
    bool on = fd >= 0 && ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_IMMUTABLE_FL);
    if (fd >= 0)
        close(fd);
    return on;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)ftw;
    if (flag == FTW_F && S_ISREG(st->st_mode))
        unprotect(path);
    remove(path);
    return 0;
}

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    if (!e)
        return -1;
    snprintf(e->dir, sizeof(e->dir), "/tmp/bs_store_test.XXXXXX");
    if (!mkdtemp(e->dir))
        return -1;
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    bs_store_destroy(e->s);
    nftw(e->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(e);
    return 0;
}

static struct bs_store *open_store(const char *dir, uint64_t budget, int high, int low)
{
    struct bs_store_opts o = OPTS(dir, budget, high, low, BLOCK);
    char err[256] = "";
    struct bs_store *s = bs_store_create(&o, err, sizeof(err));
    if (!s)
        fail_msg("bs_store_create(%s): %s", dir, err);
    return s;
}

static struct bs_chunk_key key_of(const char *blob, uint64_t index)
{
    return (struct bs_chunk_key){"acct", "models", blob, ETAG, index};
}

/* The bytes of a chunk: a function of its key, so any reader can check what it got. */
static void fill(unsigned char *buf, size_t n, const struct bs_chunk_key *k)
{
    uint64_t x = 1469598103934665603u;
    const char *f[4] = {k->account, k->container, k->blob, k->etag};
    for (int i = 0; i < 4; i++)
        for (const char *p = f[i]; *p; p++)
            x = (x ^ (unsigned char)*p) * 1099511628211u;
    x ^= k->index * 0x9e3779b97f4a7c15u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (unsigned char)x;
    }
}

static int put_len(struct bs_store *s, const struct bs_chunk_key *k, size_t len)
{
    unsigned char *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    fill(buf, len, k);
    char err[256] = "";
    int rc = bs_store_put(s, k, buf, len, err, sizeof(err));
    if (rc != 0 && rc != -EEXIST && err[0] == '\0')
        fail_msg("put failed (%d) without a message", rc);
    free(buf);
    return rc;
}

static void put_ok(struct bs_store *s, const struct bs_chunk_key *k, size_t len)
{
    int rc = put_len(s, k, len);
    if (rc != 0)
        fail_msg("put %s/%llu: %d", k->blob, (unsigned long long)k->index, rc);
}

static bool has(struct bs_store *s, const struct bs_chunk_key *k)
{
    struct bs_chunk_ref *r;
    int rc = bs_store_get(s, k, &r);
    bs_store_release(s, r);
    return rc == 0;
}

static unsigned char *read_all(int fd, size_t len)
{
    unsigned char *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, buf + got, len - got, (off_t)got);
        assert_true(n > 0);
        got += (size_t)n;
    }
    return buf;
}

/* Reads the chunk through a descriptor, byte-exact against fill() and against its CRCs. */
static void expect_chunk(struct bs_store *s, const struct bs_chunk_key *k, size_t len)
{
    struct bs_chunk_ref *r;
    int rc = bs_store_get(s, k, &r);
    if (rc != 0)
        fail_msg("get %s/%llu: %d", k->blob, (unsigned long long)k->index, rc);
    assert_int_equal(bs_chunk_ref_length(r), len);
    assert_int_equal(bs_chunk_ref_block_size(r), BLOCK);
    int fd = bs_chunk_ref_open(r);
    assert_true(fd >= 0);
    unsigned char *got = read_all(fd, len), *want = malloc(len ? len : 1);
    fill(want, len, k);
    assert_memory_equal(got, want, len);
    uint32_t n;
    const uint32_t *crcs = bs_chunk_ref_crcs(r, &n);
    assert_int_equal(n, (len + BLOCK - 1) / BLOCK);
    assert_int_equal(bs_chunk_verify(crcs, n, BLOCK, len, 0, got, len), 0);
    free(got);
    free(want);
    close(fd);
    bs_store_release(s, r);
}

/* The file of a chunk, from the format's definition: hex SHA-256 of the four key strings,
 * each as u16 little-endian length + bytes, then the index as u64 little-endian. */
static void chunk_path(const char *dir, const struct bs_chunk_key *k, char *out, size_t outsz)
{
    unsigned char enc[4 * (2 + 1024) + 8], md[32];
    size_t n = 0;
    const char *f[4] = {k->account, k->container, k->blob, k->etag};
    for (int i = 0; i < 4; i++) {
        size_t len = strlen(f[i]);
        enc[n] = (unsigned char)len;
        enc[n + 1] = (unsigned char)(len >> 8);
        memcpy(enc + n + 2, f[i], len);
        n += 2 + len;
    }
    for (int i = 0; i < 8; i++)
        enc[n++] = (unsigned char)(k->index >> (8 * i));
    assert_true(EVP_Digest(enc, n, md, NULL, EVP_sha256(), NULL));
    char hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    snprintf(out, outsz, "%s/%.2s/%s.chunk", dir, hex, hex);
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        fail_msg("stat %s: %s", path, strerror(errno));
    return (uint64_t)st.st_size;
}

static bool exists(const char *path)
{
    return access(path, F_OK) == 0;
}

static void write_file(const char *path, const void *data, size_t len)
{
    unprotect(path);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static unsigned char *slurp(const char *path, size_t *len)
{
    *len = file_size(path);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    unsigned char *b = read_all(fd, *len);
    close(fd);
    return b;
}

static uint64_t disk_bytes, disk_chunks, disk_tmp;

static int count_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)ftw;
    size_t n = strlen(path);
    if (flag == FTW_F && n > 6 && strcmp(path + n - 6, ".chunk") == 0) {
        disk_bytes += (uint64_t)st->st_size;
        disk_chunks++;
    }
    if (flag == FTW_F && n > 4 && strcmp(path + n - 4, ".tmp") == 0)
        disk_tmp++;
    return 0;
}

/* The index agrees with the directory: same chunk count and bytes, no temporary files, and
 * never more than the budget. */
static void expect_consistent(const char *dir, struct bs_store *s)
{
    disk_bytes = disk_chunks = disk_tmp = 0;
    nftw(dir, count_entry, 16, FTW_PHYS);
    struct bs_store_stats st;
    bs_store_get_stats(s, &st);
    assert_int_equal(st.chunks, disk_chunks);
    assert_int_equal(st.bytes, disk_bytes);
    assert_int_equal(disk_tmp, 0);
    assert_true(st.bytes <= st.budget_bytes);
}

/* Size of one chunk file of `len` bytes whose blob name has `blob_len` characters. */
static uint64_t file_bytes(size_t blob_len, size_t len)
{
    return len + 32 + (2 + 4) + (2 + 6) + (2 + blob_len) + (2 + strlen(ETAG)) +
           4 * ((len + BLOCK - 1) / BLOCK) + 32 + 12;
}

/* ---- round trips and keys ---- */

static void test_put_get_roundtrip(void **state)
{
    struct env *e = *state;
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    static const size_t lens[] = {0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17, 1 << 20};
    uint64_t total = 0;
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        struct bs_chunk_key k = key_of("blob", i);
        struct bs_chunk_ref *r;
        assert_int_equal(bs_store_get(e->s, &k, &r), -ENOENT);
        assert_null(r);
        put_ok(e->s, &k, lens[i]);
        expect_chunk(e->s, &k, lens[i]);
        char path[PATH_MAX];
        chunk_path(e->dir, &k, path, sizeof(path));
        assert_int_equal(file_size(path), file_bytes(4, lens[i]));
        total += file_bytes(4, lens[i]);
    }
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.chunks, 7);
    assert_int_equal(st.blobs, 1);
    assert_int_equal(st.bytes, total);
    assert_int_equal(st.budget_bytes, 64 << 20);
    assert_int_equal(st.put_errors, 0);
    expect_consistent(e->dir, e->s);
}

static void test_key_derivation(void **state)
{
    struct env *e = *state;
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    /* Each differs from the first in one field; the last two differ only in where the
     * account/container boundary falls. */
    const struct bs_chunk_key keys[] = {
        {"acct", "models", "m.safetensors", ETAG, 0},
        {"acct", "models", "m.safetensors", "\"0x8DC0FFEF\"", 0},
        {"acct", "models", "m.safetensors", ETAG, 1},
        {"acct", "models", "n.safetensors", ETAG, 0},
        {"acct", "other", "m.safetensors", ETAG, 0},
        {"acct2", "models", "m.safetensors", ETAG, 0},
        {"ab", "cmodels", "m.safetensors", ETAG, 0},
        {"abc", "models", "m.safetensors", ETAG, 0},
    };
    size_t n = sizeof(keys) / sizeof(keys[0]);
    for (size_t i = 0; i < n; i++) {
        put_ok(e->s, &keys[i], 5000 + i);
        char path[PATH_MAX];
        chunk_path(e->dir, &keys[i], path, sizeof(path));
        assert_true(exists(path));
    }
    for (size_t i = 0; i < n; i++)
        expect_chunk(e->s, &keys[i], 5000 + i);
    /* Same key again: -EEXIST, nothing counted twice. */
    struct bs_store_stats before, after;
    bs_store_get_stats(e->s, &before);
    assert_int_equal(put_len(e->s, &keys[0], 5000), -EEXIST);
    bs_store_get_stats(e->s, &after);
    assert_int_equal(after.bytes, before.bytes);
    assert_int_equal(after.chunks, n);
    assert_int_equal(after.blobs, n - 1); /* keys[0] and keys[2] are one version */
    assert_int_equal(after.put_errors, 0);
    /* A version never stored. */
    struct bs_chunk_key other = keys[0];
    other.etag = "\"0x8DC0FFF0\"";
    assert_false(has(e->s, &other));

    /* Bad keys: a clear -EINVAL, nothing stored. */
    char longer[1026];
    memset(longer, 'x', 1025);
    longer[1025] = '\0';
    const struct bs_chunk_key bad[] = {
        {NULL, "c", "b", ETAG, 0},   {"a", "", "b", ETAG, 0},    {"a", "c", "b", NULL, 0},
        {"a", "c", longer, ETAG, 0}, {"a", "c", "b", longer, 0},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[256] = "";
        assert_int_equal(bs_store_put(e->s, &bad[i], "x", 1, err, sizeof(err)), -EINVAL);
        assert_true(strstr(err, "chunk key") != NULL);
        struct bs_chunk_ref *r;
        assert_int_equal(bs_store_get(e->s, &bad[i], &r), -EINVAL);
        bs_store_drop(e->s, &bad[i]); /* harmless */
    }
    longer[1024] = '\0'; /* exactly at the limit: fine */
    struct bs_chunk_key at_limit = {"a", "c", longer, ETAG, 0};
    put_ok(e->s, &at_limit, 10);
    expect_chunk(e->s, &at_limit, 10);
    /* Too big a chunk. */
    char err[256] = "";
    assert_int_equal(bs_store_put(e->s, &keys[0], "x", (256u << 20) + 1, err, sizeof(err)),
                     -EINVAL);
    assert_true(strstr(err, "limit") != NULL);
    expect_consistent(e->dir, e->s);
}

/* ---- data digests ---- */

static void sha256_of(const void *data, size_t len, unsigned char md[32])
{
    assert_true(EVP_Digest(data, len, md, NULL, EVP_sha256(), NULL));
}

static void expect_digest(struct bs_store *s, const struct bs_chunk_key *k,
                          const unsigned char want[32])
{
    struct bs_chunk_ref *r;
    assert_int_equal(bs_store_get(s, k, &r), 0);
    assert_memory_equal(bs_chunk_ref_sha256(r), want, 32);
    bs_store_release(s, r);
}

/* bs_store_put records the SHA-256 of the data; it survives a restart (from the trailer). A
 * block bigger than the piece the store checksums at a time (64 KiB) gets the same CRCs. */
static void test_digest_roundtrip(void **state)
{
    struct env *e = *state;
    static const size_t lens[] = {0, 1, BLOCK - 1, BLOCK, 3 * BLOCK + 17, 1 << 20};
    const size_t n = sizeof(lens) / sizeof(lens[0]);
    unsigned char md[sizeof(lens) / sizeof(lens[0])][32];
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    for (size_t i = 0; i < n; i++) {
        struct bs_chunk_key k = key_of("digest", i);
        unsigned char *buf = malloc(lens[i] + 1);
        assert_non_null(buf);
        fill(buf, lens[i], &k);
        sha256_of(buf, lens[i], md[i]);
        free(buf);
        put_ok(e->s, &k, lens[i]);
        expect_digest(e->s, &k, md[i]);
    }
    bs_store_destroy(e->s);
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    for (size_t i = 0; i < n; i++) {
        struct bs_chunk_key k = key_of("digest", i);
        expect_digest(e->s, &k, md[i]);
        expect_chunk(e->s, &k, lens[i]);
    }

    /* 256 KiB blocks, checksummed in 64 KiB pieces. */
    char big[PATH_MAX];
    snprintf(big, sizeof(big), "%s/bigblocks", e->dir);
    const uint32_t bigblock = 256u << 10;
    struct bs_store_opts o = OPTS(big, 64 << 20, 90, 70, bigblock);
    char err[256] = "";
    struct bs_store *s2 = bs_store_create(&o, err, sizeof(err));
    assert_non_null(s2);
    size_t len = 2 * bigblock + 70000;
    struct bs_chunk_key k = key_of("bigblocks", 0);
    unsigned char *buf = malloc(len);
    assert_non_null(buf);
    fill(buf, len, &k);
    unsigned char want[32];
    sha256_of(buf, len, want);
    assert_int_equal(bs_store_put(s2, &k, buf, len, err, sizeof(err)), 0);
    struct bs_chunk_ref *r;
    assert_int_equal(bs_store_get(s2, &k, &r), 0);
    assert_memory_equal(bs_chunk_ref_sha256(r), want, 32);
    uint32_t nc;
    const uint32_t *crcs = bs_chunk_ref_crcs(r, &nc);
    assert_int_equal(nc, 3);
    for (uint32_t i = 0; i < nc; i++) {
        size_t off = (size_t)i * bigblock, blen = len - off < bigblock ? len - off : bigblock;
        assert_int_equal(crcs[i], bs_crc32c(0, buf + off, blen));
    }
    bs_store_release(s2, r);
    bs_store_destroy(s2);
    free(buf);
}

/* bs_store_put_digest stores the digest it is given (the caller verified it), as is, across
 * a restart; without one it is refused. */
static void test_put_digest(void **state)
{
    struct env *e = *state;
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    struct bs_chunk_key k = key_of("peer", 0), none = key_of("peer", 1);
    unsigned char buf[2 * BLOCK + 5], given[32];
    fill(buf, sizeof(buf), &k);
    sha256_of(buf, sizeof(buf), given);
    given[0] ^= 0xff; /* not the data's: shows it is stored, not recomputed */
    char err[256] = "";
    assert_int_equal(bs_store_put_digest(e->s, &k, buf, sizeof(buf), given, err, sizeof(err)), 0);
    expect_digest(e->s, &k, given);
    expect_chunk(e->s, &k, sizeof(buf));
    assert_int_equal(bs_store_put_digest(e->s, &k, buf, sizeof(buf), given, err, sizeof(err)),
                     -EEXIST);
    err[0] = '\0';
    assert_int_equal(bs_store_put_digest(e->s, &none, buf, sizeof(buf), NULL, err, sizeof(err)),
                     -EINVAL);
    assert_true(err[0] != '\0');
    assert_false(has(e->s, &none));
    bs_store_destroy(e->s);
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    expect_digest(e->s, &k, given);
}

/* ---- eviction ---- */

#define CHUNK_LEN (4 * BLOCK)

/* Budget 10 files; A, B, C with 3 chunks each (9 files: at the 90 % mark, no eviction). */
static uint64_t fill_abc(struct env *e, int high, int low)
{
    uint64_t one = file_bytes(1, CHUNK_LEN);
    e->s = open_store(e->dir, 10 * one, high, low);
    for (const char *b = "A"; *b <= 'C'; b = *b == 'A' ? "B" : *b == 'B' ? "C" : "D")
        for (int i = 0; i < 3; i++) {
            struct bs_chunk_key k = key_of(b, (uint64_t)i);
            put_ok(e->s, &k, CHUNK_LEN);
        }
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.bytes, 9 * one);
    assert_int_equal(st.evicted_chunks, 0);
    return one;
}

static void expect_present(struct bs_store *s, const char *blob, int index, bool want)
{
    struct bs_chunk_key k = key_of(blob, (uint64_t)index);
    if (has(s, &k) != want)
        fail_msg("chunk %s%d is %s", blob, index, want ? "missing" : "still there");
}

static void expect_blob(struct bs_store *s, const char *blob, bool want)
{
    for (int i = 0; i < 3; i++)
        expect_present(s, blob, i, want);
}

static struct bs_chunk_ref *pin(struct bs_store *s, const char *blob, int index)
{
    struct bs_chunk_key k = key_of(blob, (uint64_t)index);
    struct bs_chunk_ref *r;
    assert_int_equal(bs_store_get(s, &k, &r), 0);
    return r;
}

static void touch(struct bs_store *s, const char *blob, int index)
{
    bs_store_release(s, pin(s, blob, index));
}

/* The least recently used version goes first, and whole: only down to the low mark. */
static void test_evict_lru_whole_versions(void **state)
{
    struct env *e = *state;
    uint64_t one = fill_abc(e, 90, 70);
    touch(e->s, "A", 1); /* order now B, C, A */
    struct bs_chunk_key d = key_of("D", 0);
    put_ok(e->s, &d, CHUNK_LEN); /* 10 > 9: down to 7 including D: B goes */
    expect_blob(e->s, "B", false);
    expect_blob(e->s, "A", true);
    expect_blob(e->s, "C", true);
    expect_chunk(e->s, &d, CHUNK_LEN);
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.evicted_chunks, 3);
    assert_int_equal(st.evicted_bytes, 3 * one);
    assert_int_equal(st.bytes, 7 * one);
    assert_int_equal(st.blobs, 3);
    expect_consistent(e->dir, e->s);
}

/* A version with a reader is skipped whole, even its unpinned chunks. */
static void test_evict_skips_versions_in_use(void **state)
{
    struct env *e = *state;
    fill_abc(e, 90, 70);
    struct bs_chunk_ref *b1 = pin(e->s, "B", 1); /* order A, C, B */
    touch(e->s, "C", 0);                         /* A, B, C */
    touch(e->s, "A", 0);                         /* B, C, A: B is oldest but in use */
    struct bs_chunk_key d = key_of("D", 0);
    put_ok(e->s, &d, CHUNK_LEN);
    expect_blob(e->s, "B", true);
    expect_blob(e->s, "C", false);
    expect_blob(e->s, "A", true);
    bs_store_release(e->s, b1);
    expect_consistent(e->dir, e->s);
}

/* Every version in use: single unpinned chunks go, least recently used first. */
static void test_evict_falls_back_to_chunks(void **state)
{
    struct env *e = *state;
    uint64_t one = fill_abc(e, 90, 70);
    struct bs_chunk_ref *pins[3] = {pin(e->s, "A", 0), pin(e->s, "B", 0), pin(e->s, "C", 0)};
    /* chunk order: A1 A2 B1 B2 C1 C2 A0 B0 C0 */
    struct bs_chunk_key d = key_of("D", 0);
    put_ok(e->s, &d, CHUNK_LEN);
    expect_present(e->s, "A", 1, false);
    expect_present(e->s, "A", 2, false);
    expect_present(e->s, "B", 1, false);
    expect_present(e->s, "B", 2, true);
    expect_present(e->s, "C", 1, true);
    expect_present(e->s, "C", 2, true);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(bs_chunk_ref_length(pins[i]), CHUNK_LEN);
        bs_store_release(e->s, pins[i]);
    }
    expect_present(e->s, "A", 0, true);
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.evicted_chunks, 3);
    assert_int_equal(st.bytes, 7 * one);
    expect_consistent(e->dir, e->s);
}

/* Everything pinned and the budget full: -ENOSPC, nothing lost, then room once released. */
static void test_evict_enospc_when_all_pinned(void **state)
{
    struct env *e = *state;
    uint64_t one = fill_abc(e, 90, 70);
    struct bs_chunk_ref *pins[10];
    int np = 0;
    for (const char *b = "A"; *b <= 'C'; b = *b == 'A' ? "B" : *b == 'B' ? "C" : "D")
        for (int i = 0; i < 3; i++)
            pins[np++] = pin(e->s, b, i);
    struct bs_chunk_key d0 = key_of("D", 0), d1 = key_of("D", 1);
    put_ok(e->s, &d0, CHUNK_LEN); /* 10 files: over the high mark, within the budget */
    pins[np++] = pin(e->s, "D", 0);
    char err[256] = "";
    unsigned char buf[CHUNK_LEN];
    fill(buf, sizeof(buf), &d1);
    assert_int_equal(bs_store_put(e->s, &d1, buf, sizeof(buf), err, sizeof(err)), -ENOSPC);
    assert_true(strstr(err, "no room") != NULL);
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.bytes, 10 * one);
    assert_int_equal(st.chunks, 10);
    assert_int_equal(st.evicted_chunks, 0);
    assert_int_equal(st.put_errors, 1);
    assert_false(has(e->s, &d1));
    for (int i = 0; i < np; i++)
        bs_store_release(e->s, pins[i]);
    put_ok(e->s, &d1, CHUNK_LEN);
    /* A chunk bigger than the whole budget never fits. */
    struct bs_chunk_key big = key_of("E", 0);
    unsigned char *huge = calloc(1, 11 * one);
    assert_non_null(huge);
    assert_int_equal(bs_store_put(e->s, &big, huge, 11 * one, err, sizeof(err)), -ENOSPC);
    free(huge);
    expect_consistent(e->dir, e->s);
}

/* Passing the high mark evicts down to the low mark, not just enough for the new chunk. */
static void test_watermarks(void **state)
{
    struct env *e = *state;
    uint64_t one = file_bytes(2, CHUNK_LEN);
    e->s = open_store(e->dir, 10 * one, 80, 50);
    char name[8][3];
    for (int i = 0; i < 8; i++) {
        snprintf(name[i], sizeof(name[i]), "V%d", i);
        struct bs_chunk_key k = key_of(name[i], 0);
        put_ok(e->s, &k, CHUNK_LEN); /* up to 8 files = the high mark exactly */
    }
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.evicted_chunks, 0);
    assert_int_equal(st.bytes, 8 * one);
    struct bs_chunk_key k8 = key_of("V8", 0);
    put_ok(e->s, &k8, CHUNK_LEN); /* 9 > 8: down to 5 including the new one */
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.evicted_chunks, 4);
    assert_int_equal(st.bytes, 5 * one);
    for (int i = 0; i < 8; i++) {
        struct bs_chunk_key k = key_of(name[i], 0);
        assert_int_equal(has(e->s, &k), i >= 4);
    }
    expect_consistent(e->dir, e->s);
}

/* ---- walking the store, the eviction hook ---- */

#define WALK_CHUNKS 1000 /* past the index's first 1024 buckets once the walk adds more */
#define WALK_ADDED  100
#define WALK_LONG   100 /* chunks with a 1000-byte blob name: more key bytes than one batch */

struct walk {
    struct bs_store *s;
    int seen[WALK_CHUNKS + WALK_ADDED];
    int calls, hits, foreign;
    char long_name[1001];
};

static struct bs_chunk_key walk_key(struct walk *w, uint64_t i)
{
    return key_of(i < WALK_LONG ? w->long_name : "walk", i);
}

/* Counts each chunk; calls the store (a held lock would deadlock here); on its first call
 * adds WALK_ADDED chunks, which makes the index's table double during the walk. */
static void walk_one(void *arg, const struct bs_chunk_key *k)
{
    struct walk *w = arg;
    if (w->calls++ == 0)
        for (uint64_t i = WALK_CHUNKS; i < WALK_CHUNKS + WALK_ADDED; i++) {
            struct bs_chunk_key add = walk_key(w, i);
            put_ok(w->s, &add, 10);
        }
    struct bs_chunk_key want = walk_key(w, k->index);
    if (k->index >= WALK_CHUNKS + WALK_ADDED || strcmp(k->account, want.account) ||
        strcmp(k->container, want.container) || strcmp(k->blob, want.blob) ||
        strcmp(k->etag, want.etag)) {
        w->foreign++;
        return;
    }
    w->seen[k->index]++;
    if (has(w->s, k))
        w->hits++;
}

/* Every chunk exactly once, the key intact, the lock not held during the callback; chunks
 * added during the walk at most once. */
static void test_foreach(void **state)
{
    struct env *e = *state;
    e->s = open_store(e->dir, 256 << 20, 90, 70);
    struct walk *w = calloc(1, sizeof(*w));
    assert_non_null(w);
    w->s = e->s;
    memset(w->long_name, 'L', 1000);
    for (uint64_t i = 0; i < WALK_CHUNKS; i++) {
        struct bs_chunk_key k = walk_key(w, i);
        put_ok(e->s, &k, 10);
    }
    assert_int_equal(bs_store_foreach(e->s, walk_one, w), 0);
    assert_int_equal(w->foreign, 0);
    int added = 0;
    for (int i = 0; i < WALK_CHUNKS; i++)
        if (w->seen[i] != 1)
            fail_msg("chunk %d seen %d times", i, w->seen[i]);
    for (int i = WALK_CHUNKS; i < WALK_CHUNKS + WALK_ADDED; i++) {
        assert_true(w->seen[i] <= 1);
        added += w->seen[i];
    }
    assert_int_equal(w->hits, WALK_CHUNKS + added);
    print_message("foreach: %d of %d chunks added during the walk seen\n", added, WALK_ADDED);
    /* Again, quiet: all of them once. */
    memset(w->seen, 0, sizeof(w->seen));
    w->calls = 1;
    assert_int_equal(bs_store_foreach(e->s, walk_one, w), 0);
    for (int i = 0; i < WALK_CHUNKS + WALK_ADDED; i++)
        assert_int_equal(w->seen[i], 1);
    free(w);
    /* An empty store: no call. */
    bs_store_destroy(e->s);
    char empty[PATH_MAX];
    snprintf(empty, sizeof(empty), "%s/empty", e->dir);
    e->s = open_store(empty, 1 << 20, 90, 70);
    struct walk none = {.s = e->s};
    assert_int_equal(bs_store_foreach(e->s, walk_one, &none), 0);
    assert_int_equal(none.calls, 0);
}

struct evictions {
    struct bs_store *s; /* NULL while the store is being created */
    char keys[16][32];  /* "<blob><index>" */
    int n, still_there;
};

/* Records the key; checks, through the store (no lock held), that it is gone. */
static void on_evict(void *arg, const struct bs_chunk_key *k)
{
    struct evictions *ev = arg;
    assert_string_equal(k->account, "acct");
    assert_string_equal(k->etag, ETAG);
    if (ev->n < 16)
        snprintf(ev->keys[ev->n], sizeof(ev->keys[0]), "%s%llu", k->blob,
                 (unsigned long long)k->index);
    ev->n++;
    if (ev->s && has(ev->s, k))
        ev->still_there++;
}

static bool evicted(const struct evictions *ev, const char *key)
{
    for (int i = 0; i < ev->n && i < 16; i++)
        if (strcmp(ev->keys[i], key) == 0)
            return true;
    return false;
}

/* The hook hears of every chunk that leaves: evicted by a put, dropped by a reader, found
 * missing, evicted at start-up for a smaller budget. */
static void test_on_evict(void **state)
{
    struct env *e = *state;
    uint64_t one = file_bytes(1, CHUNK_LEN);
    struct evictions ev = {0};
    struct bs_store_opts o = OPTS(e->dir, 10 * one, 90, 70, BLOCK);
    o.on_evict = on_evict;
    o.on_evict_arg = &ev;
    char err[256] = "";
    e->s = bs_store_create(&o, err, sizeof(err));
    assert_non_null(e->s);
    ev.s = e->s;
    for (const char *b = "A"; *b <= 'C'; b = *b == 'A' ? "B" : *b == 'B' ? "C" : "D")
        for (int i = 0; i < 3; i++) {
            struct bs_chunk_key k = key_of(b, (uint64_t)i);
            put_ok(e->s, &k, CHUNK_LEN);
        }
    assert_int_equal(ev.n, 0);
    struct bs_chunk_key d = key_of("D", 0), d1 = key_of("D", 1);
    put_ok(e->s, &d, CHUNK_LEN); /* A goes, whole */
    assert_int_equal(ev.n, 3);
    assert_true(evicted(&ev, "A0") && evicted(&ev, "A1") && evicted(&ev, "A2"));
    bs_store_drop(e->s, &d);
    assert_int_equal(ev.n, 4);
    assert_true(evicted(&ev, "D0"));
    bs_store_drop(e->s, &d); /* not there: nothing */
    assert_int_equal(ev.n, 4);
    /* A file gone behind the store's back: the reader's open drops it. */
    put_ok(e->s, &d1, CHUNK_LEN);
    char p[PATH_MAX];
    chunk_path(e->dir, &d1, p, sizeof(p));
    unprotect(p);
    assert_int_equal(unlink(p), 0);
    struct bs_chunk_ref *r;
    assert_int_equal(bs_store_get(e->s, &d1, &r), 0);
    assert_int_equal(bs_chunk_ref_open(r), -ENOENT);
    bs_store_release(e->s, r);
    assert_int_equal(ev.n, 5);
    assert_true(evicted(&ev, "D1"));
    assert_int_equal(ev.still_there, 0);
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.evicted_chunks + st.dropped_corrupt, (uint64_t)ev.n);
    /* Restart with half the budget: what the scan evicts is told too. */
    bs_store_destroy(e->s);
    e->s = NULL;
    struct evictions ev2 = {0};
    o.budget_bytes = 5 * one;
    o.on_evict_arg = &ev2;
    e->s = bs_store_create(&o, err, sizeof(err));
    assert_non_null(e->s);
    bs_store_get_stats(e->s, &st);
    assert_true(st.evicted_chunks > 0);
    assert_int_equal(st.evicted_chunks, (uint64_t)ev2.n);
    expect_consistent(e->dir, e->s);
}

/* ---- restart ---- */

static void set_mtime(const char *dir, const struct bs_chunk_key *k, time_t when)
{
    char path[PATH_MAX];
    chunk_path(dir, k, path, sizeof(path));
    struct timespec ts[2] = {{when, 0}, {when, 0}};
    unprotect(path);
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static void test_restart_scan(void **state)
{
    struct env *e = *state;
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    for (int v = 0; v < 4; v++)
        for (int i = 0; i < 5; i++) {
            char blob[8];
            snprintf(blob, sizeof(blob), "b%d", v);
            struct bs_chunk_key k = key_of(blob, (uint64_t)i);
            put_ok(e->s, &k, (size_t)(1000 + 7919 * v * i));
        }
    struct bs_store_stats before, after;
    bs_store_get_stats(e->s, &before);
    bs_store_destroy(e->s);
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    bs_store_get_stats(e->s, &after);
    assert_int_equal(after.chunks, 20);
    assert_int_equal(after.blobs, 4);
    assert_int_equal(after.bytes, before.bytes);
    assert_int_equal(after.dropped_corrupt, 0);
    for (int v = 0; v < 4; v++)
        for (int i = 0; i < 5; i++) {
            char blob[8];
            snprintf(blob, sizeof(blob), "b%d", v);
            struct bs_chunk_key k = key_of(blob, (uint64_t)i);
            expect_chunk(e->s, &k, (size_t)(1000 + 7919 * v * i));
        }
    assert_int_equal(put_len(e->s, &(struct bs_chunk_key){"acct", "models", "b0", ETAG, 0}, 1000),
                     -EEXIST);
    expect_consistent(e->dir, e->s);
}

/* After a restart the LRU order is the files' modification order. */
static void test_restart_lru_from_mtime(void **state)
{
    struct env *e = *state;
    uint64_t one = fill_abc(e, 90, 70);
    bs_store_destroy(e->s);
    e->s = NULL;
    const char *order[3] = {"C", "A", "B"}; /* oldest first */
    for (int v = 0; v < 3; v++)
        for (int i = 0; i < 3; i++) {
            struct bs_chunk_key k = key_of(order[v], (uint64_t)i);
            set_mtime(e->dir, &k, 1000000 + 100 * v + i);
        }
    e->s = open_store(e->dir, 10 * one, 90, 70);
    struct bs_chunk_key d = key_of("D", 0);
    put_ok(e->s, &d, CHUNK_LEN);
    expect_blob(e->s, "C", false);
    expect_blob(e->s, "A", true);
    expect_blob(e->s, "B", true);
}

/* A smaller budget than the files on disk: the scan evicts down to the low mark. */
static void test_restart_with_smaller_budget(void **state)
{
    struct env *e = *state;
    uint64_t one = fill_abc(e, 90, 70);
    bs_store_destroy(e->s);
    e->s = open_store(e->dir, 5 * one, 100, 60); /* 9 files, room for 5, low mark 3 */
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_true(st.bytes <= 3 * one);
    assert_int_equal(st.evicted_chunks, 6); /* two whole versions */
    expect_consistent(e->dir, e->s);
}

/* ---- tenants ---- */

/* A chunk of tenant `acct` ("<endpoint>#grid=..." as the agent keys it: the tenant is the
 * part before '#'). */
static struct bs_chunk_key tkey(const char *acct, const char *blob, uint64_t index)
{
    return (struct bs_chunk_key){acct, "models", blob, ETAG, index};
}

static uint64_t tenant_chunks(struct bs_store *s, const char *acct, const char *blob, int n)
{
    uint64_t held = 0;
    for (int i = 0; i < n; i++) {
        struct bs_chunk_key k = tkey(acct, blob, (uint64_t)i);
        held += has(s, &k);
    }
    return held;
}

/* Tenant B filling the store far past its budget evicts itself, never tenant A, who holds
 * less than an equal share; the grid suffix does not make another tenant. */
static void test_tenant_cannot_evict_another(void **state)
{
    struct env *e = *state;
    const char *a = "https://a.example#grid=1", *a2 = "https://a.example#grid=2",
               *b = "https://b.example#grid=1";
    uint64_t one = file_bytes(1, CHUNK_LEN) + strlen(a) - 4; /* account of 4 in file_bytes */
    e->s = open_store(e->dir, 10 * one, 100, 100);
    for (int i = 0; i < 2; i++) {
        struct bs_chunk_key k = tkey(a, "A", (uint64_t)i), k2 = tkey(a2, "A", (uint64_t)i);
        put_ok(e->s, &k, CHUNK_LEN);
        put_ok(e->s, &k2, CHUNK_LEN);
    }
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.tenants, 1);
    for (int i = 0; i < 40; i++) {
        struct bs_chunk_key k = tkey(b, i % 2 ? "B1" : "B2", (uint64_t)i);
        put_ok(e->s, &k, CHUNK_LEN);
    }
    assert_int_equal(tenant_chunks(e->s, a, "A", 2) + tenant_chunks(e->s, a2, "A", 2), 4);
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.tenants, 2);
    assert_true(st.bytes <= 10 * one + 40); /* B's blob names are a byte longer */
    assert_true(st.evicted_chunks >= 34);
    expect_consistent(e->dir, e->s);
    /* The scan rebuilds the tenants from the trailers: the share still holds. */
    bs_store_destroy(e->s);
    e->s = open_store(e->dir, 10 * one, 100, 100);
    for (int i = 40; i < 50; i++) {
        struct bs_chunk_key k = tkey(b, "B3", (uint64_t)i);
        put_ok(e->s, &k, CHUNK_LEN);
    }
    assert_int_equal(tenant_chunks(e->s, a, "A", 2) + tenant_chunks(e->s, a2, "A", 2), 4);
}

/* A tenant holding more than an equal share is evicted by another's puts down to that share
 * (budget / tenants), not below; alone, a tenant behaves as before (all of the budget). */
static void test_tenant_equal_share(void **state)
{
    struct env *e = *state;
    const char *a = "https://a.example#g", *b = "https://b.example#g", *c = "https://c.example#g";
    uint64_t one = file_bytes(1, CHUNK_LEN) + strlen(a) - 4;
    e->s = open_store(e->dir, 12 * one, 100, 100);
    for (int i = 0; i < 12; i++) {
        struct bs_chunk_key k = tkey(a, "A", (uint64_t)i);
        put_ok(e->s, &k, CHUNK_LEN); /* one version of 12 chunks: the whole budget */
    }
    assert_int_equal(tenant_chunks(e->s, a, "A", 12), 12);
    for (int i = 0; i < 30; i++) {
        struct bs_chunk_key k = tkey(b, "B", (uint64_t)i);
        put_ok(e->s, &k, CHUNK_LEN);
    }
    /* A's version is not taken whole: single chunks, down to 12 / 2. */
    assert_int_equal(tenant_chunks(e->s, a, "A", 12), 6);
    assert_int_equal(tenant_chunks(e->s, b, "B", 30), 6);
    /* The oldest of A went first. */
    struct bs_chunk_key old = tkey(a, "A", 0), recent = tkey(a, "A", 11);
    assert_false(has(e->s, &old));
    assert_true(has(e->s, &recent));
    for (int i = 0; i < 30; i++) {
        struct bs_chunk_key k = tkey(c, "C", (uint64_t)i);
        put_ok(e->s, &k, CHUNK_LEN);
    }
    assert_int_equal(tenant_chunks(e->s, a, "A", 12), 4);
    assert_int_equal(tenant_chunks(e->s, b, "B", 30), 4);
    assert_int_equal(tenant_chunks(e->s, c, "C", 30), 4);
    expect_consistent(e->dir, e->s);
}

/* ---- exposure, tampering and planted links ---- */

static unsigned mode_of(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        fail_msg("lstat %s: %s", path, strerror(errno));
    assert_int_equal(st.st_uid, geteuid());
    return (unsigned)(st.st_mode & 07777);
}

static void expect_modes(const char *dir, const char *chunk)
{
    char p[PATH_MAX];
    assert_int_equal(mode_of(dir), 0700);
    for (int i = 0; i < 256; i += 51) {
        snprintf(p, sizeof(p), "%s/%02x", dir, i);
        assert_int_equal(mode_of(p), 0700);
    }
    snprintf(p, sizeof(p), "%s/tmp", dir);
    assert_int_equal(mode_of(p), 0700);
    snprintf(p, sizeof(p), "%s/lock", dir);
    assert_int_equal(mode_of(p), 0600);
    assert_int_equal(mode_of(chunk), 0400);
    char *slash = strrchr(chunk, '/');
    snprintf(p, sizeof(p), "%.*s", (int)(slash - chunk), chunk);
    assert_int_equal(mode_of(p), 0700);
}

/* Directories 0700 and files 0400 whatever the umask; wider modes of an existing store are
 * tightened at start; chunk files are immutable where the store says it protects them, so
 * that even root without CAP_LINUX_IMMUTABLE cannot open them for writing. */
static void test_modes_and_protection(void **state)
{
    struct env *e = *state;
    char dir[PATH_MAX], p[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/store", e->dir);
    mode_t old = umask(0277); /* would make a mkdir 0700 into 0500 */
    e->s = open_store(dir, 64 << 20, 90, 70);
    struct bs_chunk_key k = key_of("blob", 3);
    put_ok(e->s, &k, 2 * BLOCK + 1);
    umask(0);
    struct bs_chunk_key k2 = key_of("blob", 4);
    put_ok(e->s, &k2, 2 * BLOCK);
    umask(old);
    chunk_path(dir, &k, p, sizeof(p));
    expect_modes(dir, p);
    chunk_path(dir, &k2, p, sizeof(p));
    expect_modes(dir, p);
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    print_message("tamper protection here: %s\n", bs_store_protection_name(st.protection));
    assert_int_equal(st.protect_errors, 0);
    if (st.protection == BS_STORE_PROTECT_IMMUTABLE) {
        assert_true(immutable(p));
        assert_int_equal(open(p, O_RDWR), -1);
        assert_int_equal(errno, EPERM);
    } else {
        assert_false(immutable(p));
    }
    /* An older store: 0755 directories, 0444 files, not immutable. Tightened at start. */
    bs_store_destroy(e->s);
    e->s = NULL;
    unprotect(p);
    assert_int_equal(chmod(p, 0444), 0);
    assert_int_equal(chmod(dir, 0755), 0);
    char sub[PATH_MAX];
    snprintf(sub, sizeof(sub), "%.*s", (int)(strrchr(p, '/') - p), p);
    assert_int_equal(chmod(sub, 0755), 0);
    e->s = open_store(dir, 64 << 20, 90, 70);
    expect_modes(dir, p);
    assert_int_equal(immutable(p), st.protection == BS_STORE_PROTECT_IMMUTABLE);
    expect_chunk(e->s, &k2, 2 * BLOCK);
    /* Eviction and drops remove immutable files. */
    bs_store_drop(e->s, &k2);
    assert_false(exists(p));
    expect_consistent(dir, e->s);
}

/* A chunk file replaced by a link to another file while the store runs: never opened
 * through it; the chunk is dropped (the link removed, its target untouched) and refillable. */
static void test_planted_chunk_link(void **state)
{
    struct env *e = *state;
    char dir[PATH_MAX], p[PATH_MAX], secret[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/store", e->dir);
    snprintf(secret, sizeof(secret), "%s/secret", e->dir);
    e->s = open_store(dir, 64 << 20, 90, 70);
    struct bs_chunk_key k = key_of("blob", 0);
    size_t len = 2 * BLOCK;
    put_ok(e->s, &k, len);
    chunk_path(dir, &k, p, sizeof(p));
    /* Same size as the chunk file, so only the link itself can give it away. */
    size_t flen = file_size(p);
    unsigned char *junk = malloc(flen);
    memset(junk, 'S', flen);
    write_file(secret, junk, flen);
    assert_int_equal(chmod(secret, 0600), 0);
    unprotect(p);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(symlink(secret, p), 0);
    struct bs_chunk_ref *r;
    assert_int_equal(bs_store_get(e->s, &k, &r), 0);
    assert_int_equal(bs_chunk_ref_open(r), -ENOENT);
    bs_store_release(e->s, r);
    assert_false(has(e->s, &k));
    struct stat st;
    assert_int_equal(lstat(p, &st), -1); /* the link is gone ... */
    size_t slen;
    unsigned char *b = slurp(secret, &slen); /* ... what it pointed to is not */
    assert_int_equal(slen, flen);
    assert_memory_equal(b, junk, flen);
    free(b);
    /* A copy of a chunk file (another uid's, or hard-linked elsewhere) is not served either. */
    put_ok(e->s, &k, len);
    unprotect(p);
    char hl[PATH_MAX];
    snprintf(hl, sizeof(hl), "%s/hardlink", e->dir);
    assert_int_equal(link(p, hl), 0);
    assert_int_equal(bs_store_get(e->s, &k, &r), 0);
    assert_int_equal(bs_chunk_ref_open(r), -ENOENT);
    bs_store_release(e->s, r);
    assert_true(exists(hl));
    put_ok(e->s, &k, len);
    expect_chunk(e->s, &k, len);
    free(junk);
    struct bs_store_stats ss;
    bs_store_get_stats(e->s, &ss);
    assert_int_equal(ss.dropped_corrupt, 2);
    expect_consistent(dir, e->s);
}

/* Links planted while the store was closed: a fan-out directory and tmp/ replaced by links
 * to directories holding decoys, the lock file and a chunk file by links to files. The scan
 * removes the links themselves; every decoy survives; the store works. */
static void test_planted_links_at_scan(void **state)
{
    struct env *e = *state;
    char dir[128], p[PATH_MAX], q[PATH_MAX], victim[128], decoy[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/store", e->dir);
    snprintf(victim, sizeof(victim), "%s/victim", e->dir);
    assert_int_equal(mkdir(victim, 0700), 0);
    e->s = open_store(dir, 64 << 20, 90, 70);
    struct bs_chunk_key k = key_of("blob", 0), k2 = key_of("blob", 1);
    put_ok(e->s, &k, 2 * BLOCK);
    put_ok(e->s, &k2, 2 * BLOCK);
    bs_store_destroy(e->s);
    e->s = NULL;
    /* The fan-out directory of k: moved away, a link to victim/ in its place, and a decoy
     * there that looks like a damaged chunk (the scan deletes those). */
    chunk_path(dir, &k, p, sizeof(p));
    char *slash = strrchr(p, '/');
    snprintf(q, sizeof(q), "%.*s", (int)(slash - p), p);
    snprintf(decoy, sizeof(decoy), "%s%s", victim, slash);
    unsigned char junk[3 * BLOCK];
    memset(junk, 0x5a, sizeof(junk));
    write_file(decoy, junk, sizeof(junk));
    unprotect(p);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(rmdir(q), 0);
    assert_int_equal(symlink(victim, q), 0);
    /* tmp/ -> a directory with a decoy "partial" file. */
    char tmpdecoy[PATH_MAX];
    snprintf(tmpdecoy, sizeof(tmpdecoy), "%s/x.tmp", victim);
    write_file(tmpdecoy, "keep", 4);
    snprintf(q, sizeof(q), "%s/tmp", dir);
    assert_int_equal(rmdir(q), 0);
    assert_int_equal(symlink(victim, q), 0);
    /* lock -> a file; k2's chunk file -> a file. */
    char lockdecoy[PATH_MAX], chunkdecoy[PATH_MAX];
    snprintf(lockdecoy, sizeof(lockdecoy), "%s/lockdecoy", victim);
    write_file(lockdecoy, "keep", 4);
    snprintf(q, sizeof(q), "%s/lock", dir);
    assert_int_equal(unlink(q), 0);
    assert_int_equal(symlink(lockdecoy, q), 0);
    chunk_path(dir, &k2, p, sizeof(p));
    snprintf(chunkdecoy, sizeof(chunkdecoy), "%s/chunkdecoy", victim);
    write_file(chunkdecoy, junk, sizeof(junk));
    unprotect(p);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(symlink(chunkdecoy, p), 0);

    e->s = open_store(dir, 64 << 20, 90, 70);
    assert_true(exists(decoy));
    assert_true(exists(tmpdecoy));
    assert_true(exists(lockdecoy));
    assert_true(exists(chunkdecoy));
    size_t n;
    unsigned char *b = slurp(lockdecoy, &n);
    assert_int_equal(n, 4);
    free(b);
    struct stat st;
    chunk_path(dir, &k, p, sizeof(p));
    snprintf(q, sizeof(q), "%.*s", (int)(strrchr(p, '/') - p), p);
    assert_int_equal(lstat(q, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    chunk_path(dir, &k2, p, sizeof(p));
    assert_int_equal(lstat(p, &st), -1);
    assert_false(has(e->s, &k));
    assert_false(has(e->s, &k2));
    put_ok(e->s, &k, 2 * BLOCK);
    put_ok(e->s, &k2, 2 * BLOCK);
    expect_chunk(e->s, &k, 2 * BLOCK);
    expect_chunk(e->s, &k2, 2 * BLOCK);
    expect_consistent(dir, e->s);
    /* The store directory itself must not be a link. */
    bs_store_destroy(e->s);
    e->s = NULL;
    snprintf(q, sizeof(q), "%s/store-link", e->dir);
    assert_int_equal(symlink(dir, q), 0);
    struct bs_store_opts o = OPTS(q, 64 << 20, 90, 70, BLOCK);
    char err[256] = "";
    assert_null(bs_store_create(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "link"));
}

/* ---- damaged files ---- */

static void test_corrupt_truncated(void **state)
{
    struct env *e = *state;
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    struct bs_chunk_key k = key_of("blob", 0), k2 = key_of("blob", 1), k3 = key_of("blob", 2);
    put_ok(e->s, &k, 3 * BLOCK + 5);
    put_ok(e->s, &k2, 3 * BLOCK);
    put_ok(e->s, &k3, 3 * BLOCK);
    bs_store_destroy(e->s);
    e->s = NULL;
    char path[PATH_MAX], path2[PATH_MAX], path3[PATH_MAX];
    chunk_path(e->dir, &k, path, sizeof(path));
    chunk_path(e->dir, &k2, path2, sizeof(path2));
    chunk_path(e->dir, &k3, path3, sizeof(path3));
    unprotect(path);
    unprotect(path2);
    unprotect(path3);
    assert_int_equal(truncate(path, (off_t)(file_size(path) - 1)), 0); /* loses the end magic */
    assert_int_equal(truncate(path2, 2 * BLOCK), 0);                   /* loses the trailer */
    assert_int_equal(truncate(path3, 0), 0);
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.dropped_corrupt, 3);
    assert_int_equal(st.chunks, 0);
    assert_int_equal(st.bytes, 0);
    assert_false(exists(path));
    assert_false(exists(path2));
    assert_false(exists(path3));
    assert_false(has(e->s, &k));
    put_ok(e->s, &k, 3 * BLOCK + 5); /* and it can be filled again */
    expect_chunk(e->s, &k, 3 * BLOCK + 5);
}

/* A flipped data byte passes the scan (data is not read there), fails bs_chunk_verify on its
 * block only, and bs_store_drop removes the chunk. */
static void test_corrupt_data_byte(void **state)
{
    struct env *e = *state;
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    struct bs_chunk_key k = key_of("blob", 7);
    size_t len = 3 * BLOCK + 100;
    put_ok(e->s, &k, len);
    bs_store_destroy(e->s);
    e->s = NULL;
    char path[PATH_MAX];
    chunk_path(e->dir, &k, path, sizeof(path));
    size_t flen;
    unsigned char *b = slurp(path, &flen);
    b[BLOCK + 10] ^= 0x01;
    write_file(path, b, flen);
    free(b);

    e->s = open_store(e->dir, 64 << 20, 90, 70);
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.chunks, 1);
    assert_int_equal(st.dropped_corrupt, 0);
    struct bs_chunk_ref *r;
    assert_int_equal(bs_store_get(e->s, &k, &r), 0);
    int fd = bs_chunk_ref_open(r);
    assert_true(fd >= 0);
    unsigned char *got = read_all(fd, len);
    close(fd);
    uint32_t n;
    const uint32_t *crcs = bs_chunk_ref_crcs(r, &n);
    assert_int_equal(n, 4);
    assert_int_equal(bs_chunk_verify(crcs, n, BLOCK, len, 0, got, len), -EBADMSG);
    assert_int_equal(bs_chunk_verify(crcs, n, BLOCK, len, 0, got, BLOCK), 0);
    assert_int_equal(bs_chunk_verify(crcs, n, BLOCK, len, BLOCK, got + BLOCK, BLOCK), -EBADMSG);
    assert_int_equal(
        bs_chunk_verify(crcs, n, BLOCK, len, 2 * BLOCK, got + 2 * BLOCK, len - 2 * BLOCK), 0);
    free(got);

    /* Dropped while this reader still holds it: gone for everyone else at once; the
     * reference stays usable until released. */
    bs_store_drop(e->s, &k);
    assert_false(exists(path));
    assert_false(has(e->s, &k));
    assert_int_equal(bs_chunk_ref_length(r), len);
    assert_int_equal(bs_chunk_ref_crcs(r, &n)[0], crcs[0]);
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.dropped_corrupt, 1);
    assert_int_equal(st.chunks, 0);
    assert_int_equal(st.blobs, 0);
    assert_int_equal(st.bytes, 0);
    bs_store_release(e->s, r);
    bs_store_drop(e->s, &k); /* already gone: nothing */
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.dropped_corrupt, 1);
    put_ok(e->s, &k, len);
    expect_chunk(e->s, &k, len);
}

/* Files that are not chunks of their names: each one dropped at scan, the good one kept,
 * files that are not ours (no .chunk suffix) left alone. */
static void test_corrupt_trailers_and_names(void **state)
{
    struct env *e = *state;
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    struct bs_chunk_key good = key_of("good", 0), flip = key_of("flip", 0),
                        moved = key_of("move", 0), renamed = key_of("name", 0),
                        garbage = key_of("junk", 0);
    put_ok(e->s, &good, 2 * BLOCK);
    put_ok(e->s, &flip, 2 * BLOCK);
    put_ok(e->s, &moved, 2 * BLOCK);
    put_ok(e->s, &renamed, 2 * BLOCK);
    struct bs_store_stats before;
    bs_store_get_stats(e->s, &before);
    bs_store_destroy(e->s);
    e->s = NULL;
    char p[PATH_MAX], q[PATH_MAX];

    /* A bit of the first block CRC in the trailer (after the 32-byte head and the 34-byte
     * key): only the trailer's own CRC can tell. */
    chunk_path(e->dir, &flip, p, sizeof(p));
    size_t flen;
    unsigned char *b = slurp(p, &flen);
    b[2 * BLOCK + 32 + 34] ^= 0x01;
    write_file(p, b, flen);
    free(b);
    /* A valid chunk under another key's name. */
    chunk_path(e->dir, &renamed, p, sizeof(p));
    chunk_path(e->dir, &garbage, q, sizeof(q));
    unprotect(p);
    assert_int_equal(rename(p, q), 0);
    /* A valid chunk in the wrong fan-out directory. */
    chunk_path(e->dir, &moved, p, sizeof(p));
    char *slash = strrchr(p, '/');
    snprintf(q, sizeof(q), "%s/%s%s", e->dir, strncmp(slash - 2, "00", 2) ? "00" : "01", slash);
    unprotect(p);
    assert_int_equal(rename(p, q), 0);
    /* Garbage under a well-formed name, and a short file; a name that is not 64 hex digits. */
    unsigned char junk[3 * BLOCK];
    memset(junk, 0xa5, sizeof(junk));
    snprintf(p, sizeof(p), "%s/ab/ab%062d.chunk", e->dir, 0);
    write_file(p, junk, sizeof(junk));
    snprintf(p, sizeof(p), "%s/cd/cd%062d.chunk", e->dir, 1);
    write_file(p, junk, 5);
    snprintf(p, sizeof(p), "%s/ef/not-a-hash.chunk", e->dir);
    write_file(p, junk, sizeof(junk));
    /* Not ours: kept. */
    char foreign[PATH_MAX];
    snprintf(foreign, sizeof(foreign), "%s/ab/README", e->dir);
    write_file(foreign, "hi", 2);

    e->s = open_store(e->dir, 64 << 20, 90, 70);
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.dropped_corrupt, 6);
    assert_int_equal(st.chunks, 1);
    assert_int_equal(st.bytes, before.bytes / 4);
    expect_chunk(e->s, &good, 2 * BLOCK);
    assert_false(has(e->s, &flip));
    assert_false(has(e->s, &moved));
    assert_false(has(e->s, &renamed));
    assert_false(has(e->s, &garbage));
    assert_true(exists(foreign));
    expect_consistent(e->dir, e->s);
}

/* The trailer of the chunk file at path rewritten with format version `version` and a
 * SHA-256 field of sha_len bytes (32 is right; shorter drops its end, longer repeats its last
 * byte), its own CRC and length kept consistent: only the version or the digest's length is
 * wrong. */
static void rewrite_trailer(const char *path, uint16_t version, size_t sha_len)
{
    size_t flen;
    unsigned char *b = slurp(path, &flen);
    uint32_t tlen = (uint32_t)b[flen - 8] | (uint32_t)b[flen - 7] << 8 |
                    (uint32_t)b[flen - 6] << 16 | (uint32_t)b[flen - 5] << 24;
    size_t t = flen - tlen, sha = flen - 12 - 32, n = sha;
    unsigned char *out = malloc(flen + 64);
    assert_non_null(out);
    memcpy(out, b, sha);
    out[t + 4] = (unsigned char)version;
    out[t + 5] = (unsigned char)(version >> 8);
    for (size_t i = 0; i < sha_len; i++)
        out[n++] = b[sha + (i < 32 ? i : 31)];
    uint32_t crc = bs_crc32c(0, out + t, n - t), ntlen = (uint32_t)(n + 12 - t);
    for (int i = 0; i < 4; i++) {
        out[n + (size_t)i] = (unsigned char)(crc >> (8 * i));
        out[n + 4 + (size_t)i] = (unsigned char)(ntlen >> (8 * i));
    }
    memcpy(out + n + 8, "BSCE", 4);
    write_file(path, out, n + 12);
    free(out);
    free(b);
}

/* The scan keeps format-2 files with their digest; it deletes format-1 files (no digest: the
 * cache refills them), and format-2 files whose digest is short, long, or altered. */
static void test_scan_trailer_versions(void **state)
{
    struct env *e = *state;
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    struct bs_chunk_key good = key_of("good", 0), v1 = key_of("v1", 0),
                        v1long = key_of("v1long", 0), shortsha = key_of("short", 0),
                        longsha = key_of("long", 0), flipped = key_of("flip", 0);
    const struct bs_chunk_key *bad[] = {&v1, &v1long, &shortsha, &longsha, &flipped};
    put_ok(e->s, &good, 2 * BLOCK + 3);
    for (size_t i = 0; i < 5; i++)
        put_ok(e->s, bad[i], 2 * BLOCK + 3);
    unsigned char want[32], buf[2 * BLOCK + 3];
    fill(buf, sizeof(buf), &good);
    sha256_of(buf, sizeof(buf), want);
    bs_store_destroy(e->s);
    e->s = NULL;
    char p[PATH_MAX];
    chunk_path(e->dir, &v1, p, sizeof(p));
    rewrite_trailer(p, 1, 0); /* exactly what format 1 wrote */
    chunk_path(e->dir, &v1long, p, sizeof(p));
    rewrite_trailer(p, 1, 32); /* format 1 with a digest it did not have */
    chunk_path(e->dir, &shortsha, p, sizeof(p));
    rewrite_trailer(p, 2, 31);
    chunk_path(e->dir, &longsha, p, sizeof(p));
    rewrite_trailer(p, 2, 33);
    chunk_path(e->dir, &flipped, p, sizeof(p)); /* a digest bit, trailer CRC not fixed */
    size_t flen;
    unsigned char *b = slurp(p, &flen);
    b[flen - 12 - 32] ^= 0x01;
    write_file(p, b, flen);
    free(b);
    /* The untouched rewrite is a no-op: the helper itself keeps a file valid. */
    chunk_path(e->dir, &good, p, sizeof(p));
    rewrite_trailer(p, 2, 32);

    e->s = open_store(e->dir, 64 << 20, 90, 70);
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.dropped_corrupt, 5);
    assert_int_equal(st.chunks, 1);
    expect_chunk(e->s, &good, sizeof(buf));
    expect_digest(e->s, &good, want);
    for (size_t i = 0; i < 5; i++) {
        assert_false(has(e->s, bad[i]));
        chunk_path(e->dir, bad[i], p, sizeof(p));
        assert_false(exists(p));
    }
    expect_consistent(e->dir, e->s);
}

static void test_leftover_tmp_removed(void **state)
{
    struct env *e = *state;
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    bs_store_destroy(e->s);
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/tmp/%064d.1.tmp", e->dir, 0);
    write_file(p, "partial", 7);
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    assert_false(exists(p));
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.chunks, 0);
    assert_int_equal(st.dropped_corrupt, 0);
}

static void test_verify_misuse(void **state)
{
    (void)state;
    unsigned char data[3 * BLOCK + 10];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (unsigned char)(i * 31 + i / 251);
    uint64_t len = sizeof(data);
    uint32_t crcs[4];
    for (int i = 0; i < 4; i++)
        crcs[i] = bs_crc32c(0, data + i * BLOCK, i < 3 ? BLOCK : 10);

    assert_int_equal(bs_chunk_verify(crcs, 4, BLOCK, len, 0, data, len), 0);
    assert_int_equal(bs_chunk_verify(crcs, 4, BLOCK, len, 3 * BLOCK, data + 3 * BLOCK, 10), 0);
    assert_int_equal(bs_chunk_verify(crcs, 4, BLOCK, len, BLOCK, data + BLOCK, 2 * BLOCK), 0);
    assert_int_equal(bs_chunk_verify(crcs, 4, BLOCK, len, BLOCK, data + BLOCK, 0), 0);
    assert_int_equal(bs_chunk_verify(crcs, 4, BLOCK, len, BLOCK, data, BLOCK), -EBADMSG);
    /* misuse */
    assert_int_equal(bs_chunk_verify(crcs, 4, BLOCK, len, 1, data, BLOCK), -EINVAL);
    assert_int_equal(bs_chunk_verify(crcs, 4, BLOCK, len, 0, data, BLOCK + 1), -EINVAL);
    assert_int_equal(bs_chunk_verify(crcs, 4, BLOCK, len, 3 * BLOCK, data, 11), -EINVAL);
    assert_int_equal(bs_chunk_verify(crcs, 4, BLOCK, len, 4 * BLOCK, data, 0), -EINVAL);
    assert_int_equal(bs_chunk_verify(crcs, 3, BLOCK, len, 0, data, BLOCK), -EINVAL);
    assert_int_equal(bs_chunk_verify(crcs, 4, BLOCK + 1, len, 0, data, BLOCK), -EINVAL);
    assert_int_equal(bs_chunk_verify(crcs, 4, 0, len, 0, data, BLOCK), -EINVAL);
    assert_int_equal(bs_chunk_verify(NULL, 4, BLOCK, len, 0, data, BLOCK), -EINVAL);
    assert_int_equal(bs_chunk_verify(crcs, 4, BLOCK, len, 0, NULL, BLOCK), -EINVAL);
    /* mismatch: the last block checked against the short tail */
    data[3 * BLOCK + 9] ^= 1;
    assert_int_equal(bs_chunk_verify(crcs, 4, BLOCK, len, 3 * BLOCK, data + 3 * BLOCK, 10),
                     -EBADMSG);
}

/* ---- options, sharing, disk full ---- */

static void test_bad_options_and_second_store(void **state)
{
    struct env *e = *state;
    const struct bs_store_opts bad[] = {
        OPTS(e->dir, 1 << 20, 90, 70, 1000),     OPTS(e->dir, 1 << 20, 90, 70, 2048),
        OPTS(e->dir, 1 << 20, 90, 70, 1u << 25), OPTS(e->dir, 1 << 20, 70, 90, 65536),
        OPTS(e->dir, 1 << 20, 101, 70, 65536),   OPTS(e->dir, 1 << 20, 90, 0, 65536),
        OPTS(e->dir, 0, 90, 70, 65536),          OPTS(NULL, 1 << 20, 90, 70, 65536),
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[256] = "";
        assert_null(bs_store_create(&bad[i], err, sizeof(err)));
        assert_true(err[0] != '\0');
    }
    char nested[PATH_MAX];
    snprintf(nested, sizeof(nested), "%s/a/b/c", e->dir);
    e->s = open_store(nested, 1 << 20, 90, 70); /* parents created */
    struct bs_store_opts o = OPTS(nested, 1 << 20, 90, 70, BLOCK);
    char err[256] = "";
    assert_null(bs_store_create(&o, err, sizeof(err)));
    assert_true(strstr(err, "in use") != NULL);
    bs_store_destroy(e->s);
    e->s = open_store(nested, 1 << 20, 90, 70); /* free again */
    bs_store_destroy(NULL);
    bs_store_release(e->s, NULL);
}

/* A write that hits the file size limit (EFBIG, as a full disk would give ENOSPC): -ENOSPC
 * with a message, no temporary file, the index unchanged, later puts fine. */
static void test_disk_full_file_size_limit(void **state)
{
    struct env *e = *state;
    e->s = open_store(e->dir, 64 << 20, 90, 70);
    struct bs_chunk_key small = key_of("small", 0), big = key_of("big", 0);
    put_ok(e->s, &small, 1000);
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 8192;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    unsigned char *buf = malloc(64 * 1024);
    assert_non_null(buf);
    fill(buf, 64 * 1024, &big);
    char err[256] = "";
    int rc = bs_store_put(e->s, &big, buf, 64 * 1024, err, sizeof(err));
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    free(buf);
    assert_int_equal(rc, -ENOSPC);
    assert_true(strstr(err, "write") != NULL);
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.put_errors, 1);
    assert_int_equal(st.chunks, 1);
    assert_int_equal(st.blobs, 1);
    assert_false(has(e->s, &big));
    expect_consistent(e->dir, e->s);
    put_ok(e->s, &big, 64 * 1024);
    expect_chunk(e->s, &big, 64 * 1024);
    expect_chunk(e->s, &small, 1000);
}

/* A real full disk: a 1 MiB tmpfs in a mount namespace of this process (needs
 * CAP_SYS_ADMIN; skipped without it). The budget is far larger than the disk. */
static void test_disk_full_tmpfs(void **state)
{
    struct env *e = *state;
    char mnt[PATH_MAX];
    snprintf(mnt, sizeof(mnt), "%s/small", e->dir);
    assert_int_equal(mkdir(mnt, 0755), 0);
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("tmpfs", mnt, "tmpfs", 0, "size=1m") < 0) {
        print_message("disk full on tmpfs: cannot mount (%s), skipped\n", strerror(errno));
        skip();
    }
    e->s = open_store(mnt, 64 << 20, 90, 70);
    int ok = 0, rc = 0;
    for (int i = 0; i < 16 && rc == 0; i++) {
        struct bs_chunk_key k = key_of("blob", (uint64_t)i);
        if ((rc = put_len(e->s, &k, 256 * 1024)) == 0)
            ok++;
    }
    assert_int_equal(rc, -ENOSPC);
    assert_true(ok >= 2 && ok <= 4);
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    assert_int_equal(st.put_errors, 1);
    assert_int_equal(st.chunks, (uint64_t)ok);
    expect_consistent(mnt, e->s);
    for (int i = 0; i < ok; i++) {
        struct bs_chunk_key k = key_of("blob", (uint64_t)i);
        expect_chunk(e->s, &k, 256 * 1024);
    }
    /* Room made by a drop is usable again. */
    struct bs_chunk_key k0 = key_of("blob", 0), kn = key_of("blob", (uint64_t)ok);
    bs_store_drop(e->s, &k0);
    put_ok(e->s, &kn, 256 * 1024);
    /* And the scan of a full disk finds it all. */
    bs_store_get_stats(e->s, &st);
    bs_store_destroy(e->s);
    e->s = open_store(mnt, 64 << 20, 90, 70);
    struct bs_store_stats again;
    bs_store_get_stats(e->s, &again);
    assert_int_equal(again.bytes, st.bytes);
    assert_int_equal(again.chunks, st.chunks);
    bs_store_destroy(e->s);
    e->s = NULL;
    assert_int_equal(umount2(mnt, MNT_DETACH), 0);
}

/* ---- threads ---- */

#define T_THREADS 8
#define T_OPS     1000
#define T_BLOBS   4
#define T_INDEXES 8

struct worker {
    struct bs_store *s;
    unsigned seed;
    int hits, puts, full, errors;
};

static size_t t_len(uint64_t index)
{
    return BLOCK * (1 + index % 3) + (size_t)(index * 37 % BLOCK);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    static const char *blobs[T_BLOBS] = {"w0", "w1", "w2", "w3"};
    struct bs_chunk_ref *held[2] = {NULL, NULL};
    unsigned char *buf = malloc(4 * BLOCK), *want = malloc(4 * BLOCK);
    for (int op = 0; op < T_OPS; op++) {
        unsigned r = (unsigned)rand_r(&w->seed);
        struct bs_chunk_key k = key_of(blobs[r % T_BLOBS], (r / T_BLOBS) % T_INDEXES);
        size_t len = t_len(k.index);
        unsigned what = (r >> 16) % 16;
        struct bs_chunk_ref *ref = NULL;
        if (what < 10 && bs_store_get(w->s, &k, &ref) == 0) {
            w->hits++;
            /* Eviction never takes a pinned chunk, but another thread may drop it. */
            int fd = bs_chunk_ref_open(ref);
            if (fd == -ENOENT)
                ;
            else if (fd < 0 || pread(fd, buf, len, 0) != (ssize_t)len)
                w->errors++;
            else {
                uint32_t n;
                const uint32_t *crcs = bs_chunk_ref_crcs(ref, &n);
                unsigned char md[32];
                fill(want, len, &k);
                if (memcmp(buf, want, len) != 0 ||
                    bs_chunk_verify(crcs, n, BLOCK, len, 0, buf, len) != 0 ||
                    !EVP_Digest(buf, len, md, NULL, EVP_sha256(), NULL) ||
                    memcmp(md, bs_chunk_ref_sha256(ref), 32) != 0)
                    w->errors++;
            }
            if (fd >= 0)
                close(fd);
            int slot = (int)(r >> 24) % 4;
            if (slot < 2 && !held[slot]) {
                held[slot] = ref; /* keep it pinned for a while */
                continue;
            }
            bs_store_release(w->s, ref);
        } else if (what < 15) {
            fill(buf, len, &k);
            char err[256];
            int rc = bs_store_put(w->s, &k, buf, len, err, sizeof(err));
            if (rc == 0)
                w->puts++;
            else if (rc == -ENOSPC)
                w->full++;
            else if (rc != -EEXIST)
                w->errors++;
        } else {
            bs_store_drop(w->s, &k);
        }
        if ((r & 0xff) < 16)
            for (int i = 0; i < 2; i++) {
                bs_store_release(w->s, held[i]);
                held[i] = NULL;
            }
    }
    for (int i = 0; i < 2; i++)
        bs_store_release(w->s, held[i]);
    free(buf);
    free(want);
    return NULL;
}

/* Beside the workers: walks the store again and again until told to stop, and hears of
 * every chunk that leaves. Counters are atomic: the hook runs on the workers' threads. */
struct watcher {
    struct bs_store *s;
    atomic_int stop;
    atomic_ulong walks, visits, evicted, bad_keys;
};

static bool worker_key(const struct bs_chunk_key *k)
{
    return strcmp(k->account, "acct") == 0 && strcmp(k->container, "models") == 0 &&
           strlen(k->blob) == 2 && k->blob[0] == 'w' && k->blob[1] >= '0' &&
           k->blob[1] < '0' + T_BLOBS && strcmp(k->etag, ETAG) == 0 && k->index < T_INDEXES;
}

static void watch_visit(void *arg, const struct bs_chunk_key *k)
{
    struct watcher *wt = arg;
    atomic_fetch_add(&wt->visits, 1);
    if (!worker_key(k))
        atomic_fetch_add(&wt->bad_keys, 1);
}

static void watch_evict(void *arg, const struct bs_chunk_key *k)
{
    struct watcher *wt = arg;
    atomic_fetch_add(&wt->evicted, 1);
    if (!worker_key(k))
        atomic_fetch_add(&wt->bad_keys, 1);
}

static void *watcher_main(void *arg)
{
    struct watcher *wt = arg;
    while (!atomic_load(&wt->stop)) {
        if (bs_store_foreach(wt->s, watch_visit, wt) != 0)
            atomic_fetch_add(&wt->bad_keys, 1);
        atomic_fetch_add(&wt->walks, 1);
        /* A breath between walks: back to back, the walker holds the store's lock so often
         * that the workers crawl (minutes on a loaded 2-core runner). */
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    return NULL;
}

static void test_threads(void **state)
{
    struct env *e = *state;
    uint64_t budget = 14 * file_bytes(2, 2 * BLOCK); /* fewer than the pins can hold */
    struct watcher wt = {0};
    struct bs_store_opts o = OPTS(e->dir, budget, 90, 60, BLOCK);
    o.on_evict = watch_evict;
    o.on_evict_arg = &wt;
    char err[256] = "";
    e->s = bs_store_create(&o, err, sizeof(err));
    assert_non_null(e->s);
    wt.s = e->s;
    pthread_t t[T_THREADS], watch;
    struct worker w[T_THREADS];
    assert_int_equal(pthread_create(&watch, NULL, watcher_main, &wt), 0);
    for (int i = 0; i < T_THREADS; i++) {
        w[i] = (struct worker){e->s, 1234u + (unsigned)i, 0, 0, 0, 0};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    int hits = 0, puts = 0, full = 0;
    for (int i = 0; i < T_THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].errors, 0);
        hits += w[i].hits;
        puts += w[i].puts;
        full += w[i].full;
    }
    atomic_store(&wt.stop, 1);
    pthread_join(watch, NULL);
    struct bs_store_stats st;
    bs_store_get_stats(e->s, &st);
    print_message("threads: %d hits, %d puts, %d full, %llu evicted, %llu dropped; %lu walks "
                  "visited %lu chunks\n",
                  hits, puts, full, (unsigned long long)st.evicted_chunks,
                  (unsigned long long)st.dropped_corrupt, atomic_load(&wt.walks),
                  atomic_load(&wt.visits));
    assert_true(hits > 0 && puts > 0 && st.evicted_chunks > 0);
    assert_true(atomic_load(&wt.walks) > 0);
    assert_int_equal(atomic_load(&wt.bad_keys), 0);
    assert_int_equal(atomic_load(&wt.evicted), st.evicted_chunks + st.dropped_corrupt);
    expect_consistent(e->dir, e->s);
    bs_store_destroy(e->s);
    e->s = open_store(e->dir, budget, 90, 60);
    struct bs_store_stats again;
    bs_store_get_stats(e->s, &again);
    assert_int_equal(again.bytes, st.bytes);
    assert_int_equal(again.chunks, st.chunks);
    assert_int_equal(again.dropped_corrupt, 0);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_put_get_roundtrip),
        T(test_key_derivation),
        T(test_digest_roundtrip),
        T(test_put_digest),
        T(test_evict_lru_whole_versions),
        T(test_evict_skips_versions_in_use),
        T(test_evict_falls_back_to_chunks),
        T(test_evict_enospc_when_all_pinned),
        T(test_watermarks),
        T(test_restart_scan),
        T(test_restart_lru_from_mtime),
        T(test_restart_with_smaller_budget),
        T(test_tenant_cannot_evict_another),
        T(test_tenant_equal_share),
        T(test_foreach),
        T(test_on_evict),
        T(test_modes_and_protection),
        T(test_planted_chunk_link),
        T(test_planted_links_at_scan),
        T(test_corrupt_truncated),
        T(test_corrupt_data_byte),
        T(test_corrupt_trailers_and_names),
        T(test_scan_trailer_versions),
        T(test_leftover_tmp_removed),
        cmocka_unit_test(test_verify_misuse),
        T(test_bad_options_and_second_store),
        T(test_disk_full_file_size_limit),
        T(test_threads),
        T(test_disk_full_tmpfs), /* last: it moves the process into its own mount namespace */
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
