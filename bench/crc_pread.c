/* bs-bench-crc-pread: can a local hit, read from a page-cache-hot chunk file with pread and
 * checked with CRC-32C per block, keep up with a plain pread of the same bytes?
 *
 * Creates a file (default 1 GiB of pseudo-random bytes, its block CRCs noted while writing),
 * flushes and reads it once so it is in the page cache, then alternates, for --runs rounds:
 *   pread     the file in --piece-byte pieces starting at an unaligned --offset, as the model
 *             streamer asks, straight into one destination buffer the size of the file;
 *   two-pass  the same pieces, each read with one pread of its whole blocks into the
 *             destination, then every block CRC-checked there;
 *   fused     the same, but --fuse bytes (default one block) at a time: pread them into the
 *             destination and check their blocks while they are still in the CPU cache.
 * In both verifying modes the partial blocks at a piece's ends are read whole into a small
 * bounce buffer, checked, and the wanted part copied, as a reader of the store must.
 * Prints the median GB/s of each mode, the ratios to pread, the raw CRC-32C speed on a
 * cache-hot block, and one machine-readable RESULT line. Every block is checked: a mismatch
 * fails the run. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"

#define MAX_RUNS    50
#define MAX_THREADS 64

enum mode { MODE_PREAD, MODE_TWO_PASS, MODE_FUSED, NMODES };
static const char *const mode_names[NMODES] = {"pread", "two-pass", "fused"};

struct opts {
    const char *path;
    uint64_t size, piece, offset, fuse;
    uint32_t block;
    int runs, threads, keep;
};

struct job {
    const struct opts *o;
    enum mode mode;
    int fd;
    unsigned char *dest;
    const uint32_t *crcs;
    atomic_uint_fast64_t next_piece;
    atomic_uint_fast64_t bad_blocks, io_errors;
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int pread_full(int fd, unsigned char *buf, uint64_t n, uint64_t off)
{
    while (n) {
        ssize_t r = pread(fd, buf, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        buf += r;
        n -= (uint64_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

/* Reads and checks the whole block holding [from, to) into bounce, copies [from, to) out. */
static void edge_block(struct job *j, unsigned char *bounce, uint64_t from, uint64_t to)
{
    uint64_t bs = j->o->block, b = from / bs, start = b * bs;
    uint64_t len = start + bs <= j->o->size ? bs : j->o->size - start;
    if (pread_full(j->fd, bounce, len, start) < 0) {
        atomic_fetch_add(&j->io_errors, 1);
        return;
    }
    if (bs_crc32c(0, bounce, len) != j->crcs[b])
        atomic_fetch_add(&j->bad_blocks, 1);
    memcpy(j->dest + from, bounce + (from - start), to - from);
}

/* One streamer-sized piece [off, end) of the destination. */
static void read_piece(struct job *j, unsigned char *bounce, uint64_t off, uint64_t end)
{
    const struct opts *o = j->o;
    uint64_t bs = o->block;
    if (j->mode == MODE_PREAD) {
        if (pread_full(j->fd, j->dest + off, end - off, off) < 0)
            atomic_fetch_add(&j->io_errors, 1);
        return;
    }
    /* Whole blocks [a0, a1); the file's last block counts as whole when the piece ends there. */
    uint64_t a0 = (off + bs - 1) / bs * bs, a1 = end == o->size ? end : end / bs * bs;
    if (a0 >= a1) { /* the piece lies inside one or two blocks */
        for (uint64_t p = off; p < end;) {
            uint64_t stop = (p / bs + 1) * bs < end ? (p / bs + 1) * bs : end;
            edge_block(j, bounce, p, stop);
            p = stop;
        }
        return;
    }
    if (off < a0)
        edge_block(j, bounce, off, a0);
    if (a1 < end)
        edge_block(j, bounce, a1, end);
    /* Two-pass: one pread of all whole blocks, then the checks. Fused: --fuse bytes at a
     * time, checked right after their pread. */
    uint64_t step = j->mode == MODE_TWO_PASS ? a1 - a0 : o->fuse;
    for (uint64_t p = a0; p < a1; p += step) {
        uint64_t n = a1 - p < step ? a1 - p : step;
        if (pread_full(j->fd, j->dest + p, n, p) < 0) {
            atomic_fetch_add(&j->io_errors, 1);
            return;
        }
        for (uint64_t b = p; b < p + n; b += bs)
            if (bs_crc32c(0, j->dest + b, p + n - b < bs ? p + n - b : bs) != j->crcs[b / bs])
                atomic_fetch_add(&j->bad_blocks, 1);
    }
}

static void *worker(void *arg)
{
    struct job *j = arg;
    const struct opts *o = j->o;
    unsigned char *bounce = malloc(o->block);
    if (!bounce) {
        atomic_fetch_add(&j->io_errors, 1);
        return NULL;
    }
    uint64_t npieces = (o->size - o->offset + o->piece - 1) / o->piece;
    for (uint64_t i; (i = atomic_fetch_add(&j->next_piece, 1)) < npieces;) {
        uint64_t off = o->offset + i * o->piece;
        uint64_t end = off + o->piece < o->size ? off + o->piece : o->size;
        read_piece(j, bounce, off, end);
    }
    free(bounce);
    return NULL;
}

/* One pass of `mode` over [offset, size); returns seconds, or -1 on an error. */
static double run_pass(struct job *j, enum mode mode)
{
    j->mode = mode;
    atomic_store(&j->next_piece, 0);
    pthread_t t[MAX_THREADS];
    double t0 = now();
    int started = 0;
    for (; started < j->o->threads; started++)
        if (pthread_create(&t[started], NULL, worker, j) != 0)
            break;
    for (int i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    double dt = now() - t0;
    if (started != j->o->threads || atomic_load(&j->io_errors) || atomic_load(&j->bad_blocks))
        return -1;
    return dt;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Writes the test file, noting each block's CRC, flushes it, and reads it once. */
static int make_file(const struct opts *o, uint32_t *crcs)
{
    int fd = open(o->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "crc_pread: %s: %s\n", o->path, strerror(errno));
        return -1;
    }
    const size_t chunk = o->block > (8u << 20) ? o->block : 8u << 20; /* whole blocks */
    uint64_t *buf = malloc(chunk), x = 0x9e3779b97f4a7c15u;
    int rc = buf ? 0 : -1;
    for (uint64_t off = 0; rc == 0 && off < o->size; off += chunk) {
        size_t n = o->size - off < chunk ? (size_t)(o->size - off) : chunk;
        for (size_t i = 0; i < chunk / 8; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[i] = x;
        }
        for (size_t p = 0; p < n; p += o->block)
            crcs[(off + p) / o->block] =
                bs_crc32c(0, (unsigned char *)buf + p, n - p < o->block ? n - p : o->block);
        if (write(fd, buf, n) != (ssize_t)n)
            rc = -1;
    }
    if (rc == 0 && fdatasync(fd) < 0)
        rc = -1;
    for (uint64_t off = 0; rc == 0 && off < o->size; off += chunk) /* into the page cache */
        if (pread(fd, buf, chunk, (off_t)off) < 0)
            rc = -1;
    free(buf);
    if (rc < 0) {
        fprintf(stderr, "crc_pread: writing %s: %s\n", o->path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Fraction of the file's pages in the page cache. */
static double resident(int fd, uint64_t size)
{
    long page = sysconf(_SC_PAGESIZE);
    void *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return -1;
    size_t pages = (size + (uint64_t)page - 1) / (uint64_t)page, in = 0;
    unsigned char *vec = malloc(pages);
    if (vec && mincore(m, size, vec) == 0)
        for (size_t i = 0; i < pages; i++)
            in += vec[i] & 1;
    free(vec);
    munmap(m, size);
    return (double)in / (double)pages;
}

/* GB/s of CRC-32C over a cache-hot block. */
static double crc_speed(uint32_t (*fn)(uint32_t, const void *, size_t), uint32_t block)
{
    unsigned char *b = malloc(block);
    if (!b)
        return 0;
    memset(b, 0x5a, block);
    uint32_t sink = 0;
    double best = 0;
    for (int r = 0; r < 5; r++) {
        int reps = (int)((256u << 20) / block);
        double t0 = now();
        for (int i = 0; i < reps; i++)
            sink ^= fn(sink, b, block);
        double gbs = (double)reps * block / (now() - t0) / 1e9;
        best = gbs > best ? gbs : best;
    }
    free(b);
    return sink == 1 ? best + 1e-12 : best; /* keep the loop */
}

static uint64_t parse_size(const char *s)
{
    char *end;
    uint64_t v = strtoull(s, &end, 10);
    switch (*end) {
    case 'k':
    case 'K':
        v <<= 10;
        end++;
        break;
    case 'm':
    case 'M':
        v <<= 20;
        end++;
        break;
    case 'g':
    case 'G':
        v <<= 30;
        end++;
        break;
    default:
        break;
    }
    return *end ? 0 : v;
}

static void usage(void)
{
    fprintf(
        stderr,
        "usage: bs-bench-crc-pread [--file PATH] [--size 1G] [--piece 8M] [--offset 1234]\n"
        "                          [--block 64K] [--fuse 64K] [--runs 7] [--threads 1] [--keep]\n"
        "  --file     test file, created and deleted (default $TMPDIR or /tmp/"
        "bs-crc-pread.<pid>)\n"
        "  --size     file bytes, 1M..64G         --piece  bytes per pread call, 4K..1G\n"
        "  --offset   first byte read (unaligned, like the streamer after the header)\n"
        "  --block    CRC block, power of two 4K..16M\n"
        "  --fuse     bytes per pread in the fused mode, whole blocks (default one block)\n"
        "  --runs     rounds of each mode, 1..%d, median reported\n"
        "  --threads  readers sharing the pieces, 1..%d\n"
        "  --keep     leave the file\n",
        MAX_RUNS, MAX_THREADS);
}

int main(int argc, char **argv)
{
    char path[4096];
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof(path), "%s/bs-crc-pread.%d", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    struct opts o = {path, 1u << 30, 8u << 20, 1234, 0, 64u << 10, 7, 1, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--keep")) {
            o.keep = 1;
            continue;
        }
        if (!v) {
            usage();
            return 2;
        }
        i++;
        if (!strcmp(a, "--file"))
            o.path = v;
        else if (!strcmp(a, "--size"))
            o.size = parse_size(v);
        else if (!strcmp(a, "--piece"))
            o.piece = parse_size(v);
        else if (!strcmp(a, "--offset"))
            o.offset = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--fuse"))
            o.fuse = parse_size(v);
        else if (!strcmp(a, "--block"))
            o.block = (uint32_t)parse_size(v);
        else if (!strcmp(a, "--runs"))
            o.runs = atoi(v);
        else if (!strcmp(a, "--threads"))
            o.threads = atoi(v);
        else {
            usage();
            return 2;
        }
    }
    if (o.size < (1u << 20) || o.size > (64ull << 30) || o.piece < 4096 || o.piece > (1u << 30) ||
        o.block < 4096 || o.block > (16u << 20) || (o.block & (o.block - 1)) ||
        o.offset >= o.size || o.runs < 1 || o.runs > MAX_RUNS || o.threads < 1 ||
        o.threads > MAX_THREADS || o.fuse % o.block || o.fuse > o.piece) {
        usage();
        return 2;
    }

    if (!o.fuse)
        o.fuse = o.block;
    uint64_t nblocks = (o.size + o.block - 1) / o.block;
    uint32_t *crcs = malloc(nblocks * sizeof(*crcs));
    unsigned char *dest = malloc(o.size);
    if (!crcs || !dest) {
        fprintf(stderr, "crc_pread: out of memory for %" PRIu64 " bytes\n", o.size);
        return 1;
    }
    memset(dest, 0, o.size); /* fault the destination in before timing */
    printf("crc_pread: creating %s (%" PRIu64 " MiB)\n", o.path, o.size >> 20);
    int fd = make_file(&o, crcs);
    if (fd < 0)
        return 1;
    printf("crc_pread: %.1f%% of the file in the page cache; CRC-32C uses %s\n",
           100 * resident(fd, o.size), bs_crc32c_hw() ? "SSE4.2" : "tables");

    struct job j = {.o = &o, .fd = fd, .dest = dest, .crcs = crcs};
    double secs[NMODES][MAX_RUNS];
    int rc = 0;
    run_pass(&j, MODE_PREAD); /* warm-up */
    for (int r = 0; r < o.runs && rc == 0; r++)
        for (int m = 0; m < NMODES && rc == 0; m++)
            if ((secs[m][r] = run_pass(&j, (enum mode)m)) < 0)
                rc = 1;
    if (!o.keep)
        unlink(o.path);
    close(fd);
    if (rc) {
        fprintf(stderr, "crc_pread: %" PRIu64 " read errors, %" PRIu64 " blocks mismatched\n",
                (uint64_t)atomic_load(&j.io_errors), (uint64_t)atomic_load(&j.bad_blocks));
        return 1;
    }

    double gbs[NMODES];
    uint64_t bytes = o.size - o.offset;
    for (int m = 0; m < NMODES; m++) {
        qsort(secs[m], (size_t)o.runs, sizeof(double), cmp_double);
        gbs[m] = (double)bytes / secs[m][o.runs / 2] / 1e9;
    }
    double hw = crc_speed(bs_crc32c, o.block), sw = crc_speed(bs_crc32c_sw, o.block);
    printf("crc_pread: %" PRIu64 " MiB from offset %" PRIu64 " in %" PRIu64 " KiB pieces, %" PRIu64
           " KiB blocks, fused %" PRIu64 " KiB at a time, %d thread(s), median of %d\n",
           o.size >> 20, o.offset, o.piece >> 10, (uint64_t)o.block >> 10, o.fuse >> 10, o.threads,
           o.runs);
    for (int m = 0; m < NMODES; m++)
        printf("  %-9s %6.2f GB/s  %.2fx pread\n", mode_names[m], gbs[m], gbs[m] / gbs[MODE_PREAD]);
    printf("  crc32c on a hot %u KiB block: %.2f GB/s (%s), tables %.2f GB/s\n", o.block >> 10, hw,
           bs_crc32c_hw() ? "SSE4.2" : "tables", sw);
    printf("RESULT {\"bench\":\"crc_pread\",\"size\":%" PRIu64 ",\"piece\":%" PRIu64
           ",\"block\":%u,\"fuse\":%" PRIu64
           ",\"threads\":%d,\"pread_gb_per_s\":%.3f,\"two_pass_gb_per_s\":%.3f,"
           "\"fused_gb_per_s\":%.3f,\"ratio_two_pass\":%.3f,\"ratio_fused\":%.3f,"
           "\"crc_hw\":%s,\"crc_gb_per_s\":%.3f,\"crc_table_gb_per_s\":%.3f}\n",
           o.size, o.piece, o.block, o.fuse, o.threads, gbs[MODE_PREAD], gbs[MODE_TWO_PASS],
           gbs[MODE_FUSED], gbs[MODE_TWO_PASS] / gbs[MODE_PREAD], gbs[MODE_FUSED] / gbs[MODE_PREAD],
           bs_crc32c_hw() ? "true" : "false", hw, sw);
    free(crcs);
    free(dest);
    return 0;
}
