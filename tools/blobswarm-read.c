/* blobswarm-read: loads a cache-provider library exactly as the model streamer does (dlopen
 * RTLD_NOW|RTLD_LOCAL, version check, blob_read from a pool of threads) and reads one whole
 * blob with the streamer's safetensors access pattern, timing it and optionally verifying the
 * bytes. It links no blobswarm code: it sees only the library's exported ABI, so what it
 * measures and checks is what the streamer would get. It does not write the blob anywhere.
 * With --local-file it loads no library and reads a local file with pread in exactly the same
 * pattern: the baseline the benchmarks compare a provider against. */

#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cache_abi.h"
#include "gendata.h"

#define PROG             "blobswarm-read"
#define ERROR_BUF_SIZE   512u /* what the streamer passes to blob_read */
#define MSG_SIZE         (ERROR_BUF_SIZE + 256u)
#define HEADER_LEN_BYTES 8u             /* safetensors: little-endian u64 header length */
#define MAX_HEADER_BYTES (100ull << 20) /* a longer "header" means: not safetensors */
#define MAX_THREADS      1024u
#define MAX_REPEAT       1000u
#define MAX_CHUNK_BYTES  (1ull << 30)
#define MAX_PROBE_SIZE   (1ull << 50) /* the size probe gives up past 1 PiB */
#define VERIFY_BLOCK     (1u << 20)
#define DEFAULT_ACCOUNT  "devstoreaccount1"
#define DEFAULT_THREADS  8u
#define DEFAULT_CHUNK    (8ull << 20) /* RUNAI_STREAMER_CHUNK_BYTESIZE default */

enum { EXIT_READ_ERROR = 1, EXIT_USAGE = 2, EXIT_MISMATCH = 3 };

struct options {
    const char *lib;
    const char *local_file; /* instead of lib: pread this file (baseline) */
    const char *account;
    const char *container;
    const char *blob;
    uint64_t size;
    int have_size;
    unsigned threads;
    uint64_t chunk_bytes;
    char sha256[65]; /* lower-case hex, empty when not given */
    uint64_t seed;
    int have_seed;
    unsigned repeat;
    int json;
};

struct provider {
    void *handle;
    bs_blob_read_fn blob_read;
    bs_shutdown_fn shutdown;
};

/* One whole-blob read: the pieces [start, size) are handed out to the workers by `next`. */
struct read_job {
    const struct provider *p;
    const struct options *o;
    unsigned char *base;
    uint64_t start;
    uint64_t size;
    uint64_t pieces;
    atomic_uint_fast64_t next;
    atomic_uint_fast64_t calls;
    atomic_int failed;
    pthread_mutex_t msg_lock;
    char msg[MSG_SIZE];
};

struct read_result {
    unsigned char *buf; /* mmap'd, `size` bytes; NULL when size is 0 */
    uint64_t size;
    double seconds;
    uint64_t calls;
    uint64_t header_bytes; /* 8 + H for safetensors, 0 otherwise */
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " --lib PATH --container C --blob B [options]\n"
            "       " PROG " --local-file PATH [options]\n"
            "\n"
            "Loads a streamer cache-provider library (dlopen RTLD_NOW|RTLD_LOCAL) and reads one\n"
            "blob through its blob_read() the way the model streamer reads safetensors.\n"
            "\n"
            "  --lib PATH          the provider library (required unless --local-file)\n"
            "  --local-file PATH   baseline: load no library, pread PATH instead, with the same\n"
            "                      pattern, threads and piece sizes (--container and --blob are\n"
            "                      then optional; --size defaults to the file's size)\n"
            "  --account A         storage account (default: $AZURE_STORAGE_ACCOUNT_NAME, else\n"
            "                      AccountName in $AZURE_STORAGE_CONNECTION_STRING, else\n"
            "                      " DEFAULT_ACCOUNT ")\n"
            "  --container C       container (required)\n"
            "  --blob B            blob name, not URL-encoded (required)\n"
            "  --size N            blob size in bytes (default: $BLOBSWARM_READ_SIZE, else probed\n"
            "                      with 1-byte reads)\n"
            "  --threads N         worker threads, 1..%u (default %u)\n"
            "  --chunk-bytes N     bytes per blob_read call, 1..%llu (default %llu)\n"
            "  --sha256 HEX        verify the SHA-256 of the whole blob\n"
            "  --expect-seed S     verify against the deterministic test generator (gendata.h)\n"
            "  --repeat N          read the blob N times, 1..%u (default 1)\n"
            "  --json              also print one JSON line per read on stdout (the human\n"
            "                      summary then goes to stderr)\n"
            "  -h, --help          this text\n"
            "\n"
            "After the reads it says on stderr why they did or did not use the node agent (the\n"
            "blobswarm shim's counts, from BLOBSWARM_REPORT_FILE; a temporary file if unset).\n"
            "\n"
            "Sizes accept a k, m or g suffix (binary: 8m = 8388608).\n"
            "Exit status: 0 ok, 1 load or read error, 2 usage error, 3 verification mismatch.\n",
            MAX_THREADS, DEFAULT_THREADS, (unsigned long long)MAX_CHUNK_BYTES,
            (unsigned long long)DEFAULT_CHUNK, MAX_REPEAT);
}

/* Parses a decimal u64 with an optional binary k/m/g suffix; rejects signs, blanks, junk and
 * overflow. Returns 0 or -1. */
static int parse_u64(const char *s, int allow_suffix, uint64_t *out)
{
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    static const char suffixes[] = "kmg"; /* KiB, MiB, GiB */
    const char *sfx = *end != '\0' ? strchr(suffixes, *end | 0x20) : NULL;
    unsigned shift = 0;
    if (allow_suffix && sfx != NULL && end[1] == '\0') {
        shift = 10u * (unsigned)(sfx - suffixes + 1);
        end++;
    }
    if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints a usage error and returns EXIT_USAGE. */
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, PROG ": ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '" PROG " --help'.\n");
    return EXIT_USAGE;
}

/* Returns the AccountName value of a connection string in `out`, or -1 when absent. */
static int connstr_account(const char *conn, char *out, size_t out_size)
{
    const char *p = conn;
    while (p != NULL && *p != '\0') {
        const char *end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        static const char key[] = "AccountName=";
        if (len > sizeof key - 1 && strncasecmp(p, key, sizeof key - 1) == 0 &&
            len - (sizeof key - 1) < out_size) {
            memcpy(out, p + sizeof key - 1, len - (sizeof key - 1));
            out[len - (sizeof key - 1)] = '\0';
            return 0;
        }
        p = end ? end + 1 : NULL;
    }
    return -1;
}

/* Fills `o` from argv and the environment. Returns 0, or an exit status after printing. */
static int parse_args(int argc, char **argv, struct options *o, char *account, size_t acc_size)
{
    enum {
        O_LIB = 256,
        O_LOCAL,
        O_ACCOUNT,
        O_CONTAINER,
        O_BLOB,
        O_SIZE,
        O_THREADS,
        O_CHUNK,
        O_SHA,
        O_SEED,
        O_REPEAT,
        O_JSON
    };
    static const struct option longopts[] = {
        {"lib", required_argument, NULL, O_LIB},
        {"local-file", required_argument, NULL, O_LOCAL},
        {"account", required_argument, NULL, O_ACCOUNT},
        {"container", required_argument, NULL, O_CONTAINER},
        {"blob", required_argument, NULL, O_BLOB},
        {"size", required_argument, NULL, O_SIZE},
        {"threads", required_argument, NULL, O_THREADS},
        {"chunk-bytes", required_argument, NULL, O_CHUNK},
        {"sha256", required_argument, NULL, O_SHA},
        {"expect-seed", required_argument, NULL, O_SEED},
        {"repeat", required_argument, NULL, O_REPEAT},
        {"json", no_argument, NULL, O_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    uint64_t v;
    int c;

    *o = (struct options){.threads = DEFAULT_THREADS, .chunk_bytes = DEFAULT_CHUNK, .repeat = 1};
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case O_LIB:
            o->lib = optarg;
            break;
        case O_LOCAL:
            o->local_file = optarg;
            break;
        case O_ACCOUNT:
            o->account = optarg;
            break;
        case O_CONTAINER:
            o->container = optarg;
            break;
        case O_BLOB:
            o->blob = optarg;
            break;
        case O_SIZE:
            if (parse_u64(optarg, 1, &o->size) != 0)
                return usage_error("--size: '%s' is not a byte count", optarg);
            o->have_size = 1;
            break;
        case O_THREADS:
            if (parse_u64(optarg, 0, &v) != 0 || v < 1 || v > MAX_THREADS)
                return usage_error("--threads: '%s' is not in 1..1024", optarg);
            o->threads = (unsigned)v;
            break;
        case O_CHUNK:
            if (parse_u64(optarg, 1, &v) != 0 || v < 1 || v > MAX_CHUNK_BYTES)
                return usage_error("--chunk-bytes: '%s' is not in 1..1073741824", optarg);
            o->chunk_bytes = v;
            break;
        case O_SHA: {
            size_t n = strlen(optarg);
            if (n != 64 || strspn(optarg, "0123456789abcdefABCDEF") != 64)
                return usage_error("--sha256: '%s' is not 64 hex digits", optarg);
            for (size_t i = 0; i < n; i++)
                o->sha256[i] = (char)(optarg[i] | 0x20); /* lower-case; digits unchanged */
            o->sha256[n] = '\0';
            break;
        }
        case O_SEED:
            if (parse_u64(optarg, 0, &o->seed) != 0)
                return usage_error("--expect-seed: '%s' is not an unsigned integer", optarg);
            o->have_seed = 1;
            break;
        case O_REPEAT:
            if (parse_u64(optarg, 0, &v) != 0 || v < 1 || v > MAX_REPEAT)
                return usage_error("--repeat: '%s' is not in 1..1000", optarg);
            o->repeat = (unsigned)v;
            break;
        case O_JSON:
            o->json = 1;
            break;
        case 'h':
            usage(stdout);
            return -1;
        default: /* getopt_long has named the bad option */
            fprintf(stderr, "Try '" PROG " --help'.\n");
            return EXIT_USAGE;
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (o->local_file != NULL) {
        if (*o->local_file == '\0')
            return usage_error("%s", "--local-file: empty path");
        if (o->lib != NULL)
            return usage_error("%s", "--lib and --local-file exclude each other");
        if (o->container == NULL)
            o->container = "";
        if (o->blob == NULL)
            o->blob = "";
    } else {
        if (o->lib == NULL || *o->lib == '\0')
            return usage_error("%s", "--lib PATH is required");
        if (o->container == NULL || *o->container == '\0')
            return usage_error("%s", "--container is required");
        if (o->blob == NULL || *o->blob == '\0')
            return usage_error("%s", "--blob is required");
    }

    if (!o->have_size) {
        const char *env = getenv("BLOBSWARM_READ_SIZE");
        if (env != NULL && *env != '\0') {
            if (parse_u64(env, 1, &o->size) != 0)
                return usage_error("BLOBSWARM_READ_SIZE: '%s' is not a byte count", env);
            o->have_size = 1;
        }
    }
    if (o->account == NULL || *o->account == '\0') {
        const char *name = getenv("AZURE_STORAGE_ACCOUNT_NAME");
        const char *conn = getenv("AZURE_STORAGE_CONNECTION_STRING");
        if (name != NULL && *name != '\0')
            o->account = name;
        else if (conn != NULL && connstr_account(conn, account, acc_size) == 0 && *account)
            o->account = account;
        else
            o->account = DEFAULT_ACCOUNT;
    }
    return 0;
}

/* Loads the provider as the streamer does. Every version symbol present must return 1 and at
 * least one must be present. Returns 0, or -1 with a message. */
static int provider_load(struct provider *p, const char *path, char *msg, size_t msg_size)
{
    static const char *const version_syms[] = {"cache_abi_version", "runai_cache_abi_version"};
    int found = 0;

    *p = (struct provider){0};
    p->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (p->handle == NULL) {
        snprintf(msg, msg_size, "dlopen %s: %s", path, dlerror());
        return -1;
    }
    for (size_t i = 0; i < sizeof version_syms / sizeof version_syms[0]; i++) {
        bs_cache_abi_version_fn fn;
        *(void **)&fn = dlsym(p->handle, version_syms[i]);
        if (fn == NULL) {
            fprintf(stderr, PROG ": note: %s does not export %s\n", path, version_syms[i]);
            continue;
        }
        uint32_t v = fn();
        if (v != BS_CACHE_ABI_VERSION) {
            snprintf(msg, msg_size, "%s: %s() returned %" PRIu32 ", expected %u", path,
                     version_syms[i], v, BS_CACHE_ABI_VERSION);
            return -1;
        }
        found++;
    }
    if (found == 0) {
        snprintf(msg, msg_size,
                 "%s: exports neither cache_abi_version nor "
                 "runai_cache_abi_version",
                 path);
        return -1;
    }
    *(void **)&p->blob_read = dlsym(p->handle, "blob_read");
    if (p->blob_read == NULL) {
        snprintf(msg, msg_size, "%s: does not export blob_read", path);
        return -1;
    }
    *(void **)&p->shutdown = dlsym(p->handle, "shutdown");
    return 0;
}

/* The --local-file "provider": the file opened by local_open. blob_read has no context
 * argument, so the descriptor is process-wide; it is set before any reader thread starts. */
static int g_local_fd = -1;

/* blob_read's contract over pread of g_local_fd: exactly `length` bytes or -1 with a message
 * (a short file is an error, as a range past a blob's end is). */
static ssize_t local_blob_read(const char *account, const char *container, const char *blob,
                               void *buf, size_t offset, size_t length, char *error_buf,
                               size_t error_buf_size)
{
    (void)account;
    (void)container;
    (void)blob;
    size_t got = 0;
    while (got < length) {
        ssize_t n = pread(g_local_fd, (char *)buf + got, length - got, (off_t)(offset + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(error_buf, error_buf_size, "pread at %zu: %s", offset + got,
                     n < 0 ? strerror(errno) : "end of file");
            return -1;
        }
        got += (size_t)n;
    }
    return (ssize_t)length;
}

/* Opens the --local-file baseline as a provider; its size goes to *size. Returns 0, or -1
 * with a message. */
static int local_open(struct provider *p, const char *path, uint64_t *size, char *msg,
                      size_t msg_size)
{
    struct stat st;
    *p = (struct provider){.blob_read = local_blob_read};
    g_local_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (g_local_fd < 0 || fstat(g_local_fd, &st) != 0) {
        snprintf(msg, msg_size, "%s: %s", path, strerror(errno));
        return -1;
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

/* One blob_read call into buf. Returns 0 when it returned exactly `len`; otherwise -1 with a
 * message that carries the provider's error_buf. */
static int call_read(const struct provider *p, const struct options *o, void *buf, uint64_t off,
                     size_t len, char *msg, size_t msg_size)
{
    char err[ERROR_BUF_SIZE];
    memset(err, 0, sizeof err);
    ssize_t r =
        p->blob_read(o->account, o->container, o->blob, buf, (size_t)off, len, err, sizeof err);
    if (r >= 0 && (size_t)r == len)
        return 0;
    const char *what = err;
    if (memchr(err, '\0', sizeof err) == NULL) {
        err[sizeof err - 1] = '\0';
        what = "(error_buf was not NUL-terminated)";
    } else if (err[0] == '\0') {
        what = "(empty error_buf)";
    }
    if (r == -1)
        snprintf(msg, msg_size, "blob_read(offset=%" PRIu64 ", length=%zu) failed: %s", off, len,
                 what);
    else
        snprintf(msg, msg_size,
                 "blob_read(offset=%" PRIu64 ", length=%zu) returned %zd (must be the length "
                 "or -1); error_buf: %s",
                 off, len, r, what);
    return -1;
}

/* Finds the blob size with 1-byte reads: doubling offsets until one fails, then bisection.
 * A failing read is taken to mean "past the end", so byte 0 must be readable. */
static int probe_size(const struct provider *p, const struct options *o, uint64_t *size,
                      unsigned *calls, char *msg, size_t msg_size)
{
    unsigned char byte;
    char ignored[MSG_SIZE];
    uint64_t lo = 0, hi = 1; /* lo is readable, hi is not yet known */

    *calls = 1;
    if (call_read(p, o, &byte, 0, 1, msg, msg_size) != 0)
        return -1; /* missing, empty or unreadable: say why */
    for (;;) {
        (*calls)++;
        if (call_read(p, o, &byte, hi, 1, ignored, sizeof ignored) != 0)
            break;
        lo = hi;
        if (hi >= MAX_PROBE_SIZE) {
            snprintf(msg, msg_size, "size probe: byte %" PRIu64 " is still readable", hi);
            return -1;
        }
        hi <<= 1;
    }
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        (*calls)++;
        if (call_read(p, o, &byte, mid, 1, ignored, sizeof ignored) == 0)
            lo = mid;
        else
            hi = mid;
    }
    *size = hi;
    return 0;
}

static void job_fail(struct read_job *j, const char *msg)
{
    pthread_mutex_lock(&j->msg_lock);
    if (!atomic_load(&j->failed)) {
        snprintf(j->msg, sizeof j->msg, "%s", msg);
        atomic_store(&j->failed, 1);
    }
    pthread_mutex_unlock(&j->msg_lock);
}

static void *worker_main(void *arg)
{
    struct read_job *j = arg;
    char msg[MSG_SIZE];

    while (!atomic_load_explicit(&j->failed, memory_order_relaxed)) {
        uint64_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->pieces)
            break;
        uint64_t off = j->start + i * j->o->chunk_bytes;
        uint64_t left = j->size - off;
        size_t len = (size_t)(left < j->o->chunk_bytes ? left : j->o->chunk_bytes);
        atomic_fetch_add(&j->calls, 1);
        if (call_read(j->p, j->o, j->base + off, off, len, msg, sizeof msg) != 0) {
            job_fail(j, msg);
            break;
        }
    }
    return NULL;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void result_release(struct read_result *r)
{
    if (r->buf != NULL)
        munmap(r->buf, r->size);
    r->buf = NULL;
}

/* Reads [0, size) into a fresh mapping in r->buf (the caller releases it with
 * result_release, also on failure). Safetensors: the 8-byte length, the JSON header in one
 * call, then the rest from right after the header in chunk_bytes pieces; anything else: the
 * whole blob in pieces from 0. Returns 0 or -1 with a message. */
static int read_blob(const struct provider *p, const struct options *o, uint64_t size,
                     struct read_result *r, char *msg, size_t msg_size)
{
    pthread_t tids[MAX_THREADS];
    unsigned started = 0;
    int rc = -1;

    *r = (struct read_result){.size = size};
    if (size > SIZE_MAX) {
        snprintf(msg, msg_size, "size %" PRIu64 " does not fit in memory", size);
        return -1;
    }
    if (size > 0) {
        void *m = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            snprintf(msg, msg_size, "mmap %" PRIu64 " bytes: %s", size, strerror(errno));
            return -1;
        }
        r->buf = m;
    }

    struct read_job *j = calloc(1, sizeof *j);
    if (j == NULL) {
        snprintf(msg, msg_size, "out of memory");
        return -1;
    }
    j->p = p; /* calloc: the counters and the failure flag start at 0 */
    j->o = o;
    j->base = r->buf;
    j->size = size;
    pthread_mutex_init(&j->msg_lock, NULL);

    double t0 = now_seconds();
    if (size >= HEADER_LEN_BYTES) {
        r->calls++;
        if (call_read(p, o, r->buf, 0, HEADER_LEN_BYTES, msg, msg_size) != 0)
            goto out_free_job;
        uint64_t h = 0;
        for (unsigned i = 0; i < HEADER_LEN_BYTES; i++)
            h |= (uint64_t)r->buf[i] << (8 * i);
        if (h >= 2 && h < MAX_HEADER_BYTES && h <= size - HEADER_LEN_BYTES) {
            r->calls++;
            if (call_read(p, o, r->buf + HEADER_LEN_BYTES, HEADER_LEN_BYTES, (size_t)h, msg,
                          msg_size) != 0)
                goto out_free_job;
            r->header_bytes = HEADER_LEN_BYTES + h;
        }
    }
    j->start = r->header_bytes;
    j->pieces = (size - j->start + o->chunk_bytes - 1) / o->chunk_bytes;

    unsigned nthreads = o->threads;
    if (j->pieces < nthreads)
        nthreads = (unsigned)j->pieces;
    for (; started < nthreads; started++) {
        int e = pthread_create(&tids[started], NULL, worker_main, j);
        if (e != 0) {
            char m[128];
            snprintf(m, sizeof m, "pthread_create: %s", strerror(e));
            job_fail(j, m);
            break;
        }
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    r->seconds = now_seconds() - t0;
    r->calls += atomic_load(&j->calls);
    if (atomic_load(&j->failed)) {
        snprintf(msg, msg_size, "%s", j->msg);
        goto out_free_job;
    }
    rc = 0;
out_free_job:
    pthread_mutex_destroy(&j->msg_lock);
    free(j);
    return rc;
}

/* SHA-256 of buf as lower-case hex into out[65]. Returns 0 or -1. */
static int sha256_hex(const unsigned char *buf, uint64_t size, char out[65])
{
    unsigned char md[32];
    unsigned int md_len = 0;
    int rc = -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return -1;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        goto out_free_ctx;
    if (size > 0 && EVP_DigestUpdate(ctx, buf, (size_t)size) != 1)
        goto out_free_ctx;
    if (EVP_DigestFinal_ex(ctx, md, &md_len) != 1 || md_len != sizeof md)
        goto out_free_ctx;
    for (unsigned i = 0; i < sizeof md; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    rc = 0;
out_free_ctx:
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* Compares buf with the generator stream for seed. Returns 0 on a match, 1 on a mismatch
 * (with a message naming the first bad offset), -1 on an internal error. */
static int compare_seed(const unsigned char *buf, uint64_t size, uint64_t seed, char *msg,
                        size_t msg_size)
{
    unsigned char *want = malloc(VERIFY_BLOCK);
    if (want == NULL) {
        snprintf(msg, msg_size, "out of memory");
        return -1;
    }
    int rc = 0;
    for (uint64_t off = 0; off < size && rc == 0; off += VERIFY_BLOCK) {
        size_t n = (size_t)(size - off < VERIFY_BLOCK ? size - off : VERIFY_BLOCK);
        bs_gen_fill(seed, off, want, n);
        if (memcmp(buf + off, want, n) == 0)
            continue;
        size_t i = 0;
        while (buf[off + i] == want[i])
            i++;
        snprintf(msg, msg_size,
                 "content mismatch vs seed %" PRIu64 " at offset %" PRIu64
                 ": got 0x%02x, expected 0x%02x",
                 seed, off + i, buf[off + i], want[i]);
        rc = 1;
    }
    free(want);
    return rc;
}

/* Verifies and reports one completed read. Returns 0, EXIT_MISMATCH or EXIT_READ_ERROR. */
static int report(const struct options *o, const struct read_result *r, unsigned run)
{
    char sha[65] = "";
    char msg[MSG_SIZE];
    int rc = 0;

    if (o->json || o->sha256[0] != '\0') {
        if (sha256_hex(r->buf, r->size, sha) != 0) {
            fprintf(stderr, PROG ": SHA-256 computation failed\n");
            return EXIT_READ_ERROR;
        }
        if (o->sha256[0] != '\0' && strcmp(sha, o->sha256) != 0) {
            fprintf(stderr, PROG ": run %u: SHA-256 mismatch: got %s, expected %s\n", run, sha,
                    o->sha256);
            rc = EXIT_MISMATCH;
        }
    }
    if (o->have_seed) {
        int c = compare_seed(r->buf, r->size, o->seed, msg, sizeof msg);
        if (c != 0) {
            fprintf(stderr, PROG ": run %u: %s\n", run, msg);
            rc = c > 0 ? EXIT_MISMATCH : EXIT_READ_ERROR;
        }
    }

    const char *verdict = rc != 0                                  ? ", MISMATCH"
                          : (o->sha256[0] != '\0' || o->have_seed) ? ", verified"
                                                                   : "";
    double mibs = r->seconds > 0 ? (double)r->size / r->seconds / (1024.0 * 1024.0) : 0.0;
    FILE *human = o->json ? stderr : stdout;
    fprintf(human,
            PROG ": run %u/%u: %" PRIu64 " bytes in %.3f s = %.1f MiB/s, %" PRIu64
                 " calls, %u threads, chunk %" PRIu64 ", %s%s%s%s\n",
            run, o->repeat, r->size, r->seconds, mibs, r->calls, o->threads, o->chunk_bytes,
            r->header_bytes ? "safetensors" : "not safetensors", verdict, sha[0] ? ", sha256 " : "",
            sha);
    if (o->json) {
        printf("{\"run\":%u,\"bytes\":%" PRIu64 ",\"seconds\":%.6f,\"mib_per_s\":%.2f,"
               "\"calls\":%" PRIu64 ",\"threads\":%u,\"chunk_bytes\":%" PRIu64
               ",\"header_bytes\":%" PRIu64 ",\"sha256\":\"%s\",\"verified\":%s}\n",
               run, r->size, r->seconds, mibs, r->calls, o->threads, o->chunk_bytes,
               r->header_bytes, sha, strcmp(verdict, ", verified") == 0 ? "true" : "false");
    }
    fflush(stdout);
    return rc;
}

/* The shim's report (BLOBSWARM_REPORT_FILE, written at shutdown): one line of key=value
 * counts. Prints to stderr why reads did or did not use the node agent. The library is only
 * asked through its environment: another provider simply writes no report. */
static char g_report[4096];

static void report_prepare(void)
{
    const char *set = getenv("BLOBSWARM_REPORT_FILE");
    if (set && *set) {
        snprintf(g_report, sizeof g_report, "%s", set);
        return;
    }
    const char *dir = getenv("TMPDIR");
    snprintf(g_report, sizeof g_report, "%s/blobswarm-read-report.XXXXXX",
             dir && *dir ? dir : "/tmp");
    int fd = mkstemp(g_report);
    if (fd < 0) {
        g_report[0] = '\0';
        return;
    }
    close(fd);
    setenv("BLOBSWARM_REPORT_FILE", g_report, 1);
}

/* The value of key in a "k=v k=\"v v\"" line, into out; "" if absent. */
static void report_value(const char *line, const char *key, char *out, size_t outsz)
{
    out[0] = '\0';
    size_t kl = strlen(key);
    for (const char *p = line; (p = strstr(p, key)) != NULL; p += kl) {
        if ((p != line && p[-1] != ' ') || p[kl] != '=')
            continue;
        const char *v = p + kl + 1;
        size_t n = *v == '"' ? strcspn(++v, "\"") : strcspn(v, " \n");
        snprintf(out, outsz, "%.*s", (int)n, v);
        return;
    }
}

static void report_explain(int remove_file)
{
    if (!g_report[0])
        return;
    char line[2048] = "";
    FILE *f = fopen(g_report, "re");
    if (f) {
        while (fgets(line, sizeof line, f)) /* the last line: this process's shutdown */
            ;
        fclose(f);
    }
    if (remove_file)
        unlink(g_report);
    if (!line[0])
        return;
    char agent[600], v[200], reason[200];
    report_value(line, "agent", agent, sizeof agent);
    if (strcmp(agent, "none") == 0) {
        fprintf(stderr, PROG ": agent: none (BLOBSWARM_AGENT off, or nothing found to ask): "
                             "every read went to Azure\n");
        return;
    }
    static const struct {
        const char *key, *what;
    } why[] = {
        {"served", "chunk(s) served by the agent"},
        {"miss", "miss answer(s): the agent did not serve now"},
        {"denied", "denied answer(s): the agent's access check failed for this credential"},
        {"error", "error answer(s): request refused (endpoint not allowed, bad request...)"},
        {"bad_checksum", "chunk(s) failed their checksum here (reported, read from Azure)"},
        {"uid_refused", "connection(s) refused: the socket's owner is not BLOBSWARM_AGENT_UID"},
        {"unreachable", "transport failure(s): agent absent or connection lost"},
        {"timeouts", "agent timeout(s)"},
        {"busy", "time(s) the agent was at its connection limit"},
        {"bypassed", "read(s) skipped the agent: breaker open after a failure"},
    };
    fprintf(stderr, PROG ": agent %s:", agent);
    int any = 0;
    for (size_t i = 0; i < sizeof why / sizeof why[0]; i++) {
        report_value(line, why[i].key, v, sizeof v);
        if (v[0] && strcmp(v, "0") != 0) {
            fprintf(stderr, "%s %s %s", any ? ";" : "", v, why[i].what);
            any = 1;
        }
    }
    report_value(line, "last_reason", reason, sizeof reason);
    if (reason[0])
        fprintf(stderr, "; last reason: \"%s\"", reason);
    fprintf(stderr, "%s\n", any ? "" : " never asked");
}

int main(int argc, char **argv)
{
    struct options o;
    struct provider p;
    char account[256];
    char msg[MSG_SIZE];
    int rc = parse_args(argc, argv, &o, account, sizeof account);
    if (rc != 0)
        return rc < 0 ? 0 : rc; /* -1: --help was printed */

    uint64_t size = o.size, file_size = 0;
    int own_report = o.local_file == NULL &&
                     !(getenv("BLOBSWARM_REPORT_FILE") && *getenv("BLOBSWARM_REPORT_FILE"));
    if (o.local_file == NULL)
        report_prepare();
    if (o.local_file != NULL ? local_open(&p, o.local_file, &file_size, msg, sizeof msg) != 0
                             : provider_load(&p, o.lib, msg, sizeof msg) != 0) {
        fprintf(stderr, PROG ": %s\n", msg);
        if (own_report && g_report[0])
            unlink(g_report);
        return EXIT_READ_ERROR; /* the streamer never dlcloses; neither do we */
    }

    if (!o.have_size && o.local_file != NULL) {
        size = file_size;
    } else if (!o.have_size) {
        unsigned calls;
        if (probe_size(&p, &o, &size, &calls, msg, sizeof msg) != 0) {
            fprintf(stderr, PROG ": size probe failed: %s\n", msg);
            rc = EXIT_READ_ERROR;
            goto out_shutdown;
        }
        fprintf(stderr,
                PROG ": no --size: probed %" PRIu64 " bytes with %u one-byte blob_read calls\n",
                size, calls);
    }

    for (unsigned run = 1; run <= o.repeat && rc == 0; run++) {
        struct read_result r;
        if (read_blob(&p, &o, size, &r, msg, sizeof msg) != 0) {
            fprintf(stderr, PROG ": run %u: read failed: %s\n", run, msg);
            rc = EXIT_READ_ERROR;
        } else {
            rc = report(&o, &r, run);
        }
        result_release(&r);
    }

out_shutdown:
    if (p.shutdown != NULL)
        p.shutdown();
    if (o.local_file == NULL)
        report_explain(own_report);
    if (g_local_fd >= 0)
        close(g_local_fd);
    return rc;
}
