/* bs-bench-checksum: what does it cost, per byte, to checksum or authenticate a chunk, with
 * each candidate for the digest peers verify (issue 7)?
 *
 * Fills one --buffer of pseudo-random bytes (default 8 MiB, one chunk of the default grid),
 * then, on one thread, digests it whole again and again until --total bytes (default 1 GiB)
 * have gone through each algorithm, each digest a fresh init/update/final over the buffer as
 * a receiver checks one chunk: CRC-32C (common/crc32c.h, the store's block check), SHA-256,
 * HMAC-SHA256, BLAKE2b-512, BLAKE2s-256, AES-128-GMAC (AES-128-GCM with the buffer as AAD,
 * a new nonce each time), SHA-512 and MD5 (reference only), all through OpenSSL's EVP; plus
 * two references: CRC-32C and SHA-256 in one pass of 64 KiB pieces (what bs_store_put does)
 * and AES-128-GCM encryption of the buffer (what TLS on the peer link would cost).
 * Prints wall GB/s, CPU seconds per GiB and GB per CPU second of each (medians of --runs),
 * and one RESULT line per algorithm. On a shared machine the CPU figures are the ones to
 * trust: wall time counts what other processes took. The buffer stays in the last-level cache on
 * the project machine, so this is compute cost, not memory bandwidth: a receiver hashes bytes it
 * has just written. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>

#include "crc32c.h"

#define MAX_RUNS   50
#define MAX_BUFFER (1ull << 30) /* EVP's int lengths */
#define MIN_BUFFER 4096ull
#define MAX_TOTAL  (64ull << 30)
#define MAX_OUT    64          /* bytes of the longest digest */
#define PIECE      (64u << 10) /* the store's checksum piece (agent/store.c SUM_PIECE) */

struct algo {
    const char *name; /* printed and in RESULT */
    const char *what; /* one phrase */
    /* One digest of buf into out; 0, or -1 if the library refused. */
    int (*run)(const unsigned char *buf, size_t len, unsigned char *out);
};

static const unsigned char key16[16] = "blobswarm-bench!";
static const unsigned char key32[32] = "blobswarm-bench-key-32-bytes-ok!";

static int run_crc32c(const unsigned char *buf, size_t len, unsigned char *out)
{
    uint32_t crc = bs_crc32c(0, buf, len);
    memcpy(out, &crc, sizeof(crc));
    return 0;
}

static int run_md(const EVP_MD *md, const unsigned char *buf, size_t len, unsigned char *out)
{
    return EVP_Digest(buf, len, out, NULL, md, NULL) ? 0 : -1;
}

static int run_sha256(const unsigned char *buf, size_t len, unsigned char *out)
{
    return run_md(EVP_sha256(), buf, len, out);
}

static int run_sha512(const unsigned char *buf, size_t len, unsigned char *out)
{
    return run_md(EVP_sha512(), buf, len, out);
}

static int run_blake2b(const unsigned char *buf, size_t len, unsigned char *out)
{
    return run_md(EVP_blake2b512(), buf, len, out);
}

static int run_blake2s(const unsigned char *buf, size_t len, unsigned char *out)
{
    return run_md(EVP_blake2s256(), buf, len, out);
}

static int run_md5(const unsigned char *buf, size_t len, unsigned char *out)
{
    return run_md(EVP_md5(), buf, len, out);
}

static EVP_MAC *hmac; /* fetched once */

static int run_hmac_sha256(const unsigned char *buf, size_t len, unsigned char *out)
{
    EVP_MAC_CTX *c = EVP_MAC_CTX_new(hmac);
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    size_t outl = 0;
    int ok = c && EVP_MAC_init(c, key32, sizeof(key32), params) && EVP_MAC_update(c, buf, len) &&
             EVP_MAC_final(c, out, &outl, MAX_OUT);
    EVP_MAC_CTX_free(c);
    return ok && outl == 32 ? 0 : -1;
}

/* AES-128-GCM with a 96-bit nonce that is new for every call (a counter): GMAC when the data
 * is all AAD, encryption when it is plaintext (ciphertext written to `ct`). */
static int gcm(const unsigned char *buf, size_t len, unsigned char *out, unsigned char *ct)
{
    static uint64_t counter;
    unsigned char iv[12] = {0};
    uint64_t n = ++counter;
    memcpy(iv + 4, &n, sizeof(n));
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int outl = 0;
    unsigned char tail[16];
    int ok = c && EVP_EncryptInit_ex(c, EVP_aes_128_gcm(), NULL, key16, iv) &&
             EVP_EncryptUpdate(c, ct, &outl, buf, (int)len) &&
             EVP_EncryptFinal_ex(c, tail, &outl) &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, out);
    EVP_CIPHER_CTX_free(c);
    return ok ? 0 : -1;
}

static int run_gmac(const unsigned char *buf, size_t len, unsigned char *out)
{
    return gcm(buf, len, out, NULL);
}

static unsigned char *ciphertext; /* --buffer bytes, for the encryption reference */

static int run_gcm_encrypt(const unsigned char *buf, size_t len, unsigned char *out)
{
    return gcm(buf, len, out, ciphertext);
}

/* What bs_store_put does: per 64 KiB piece, CRC-32C then SHA-256 while it is in cache. */
static int run_store_put(const unsigned char *buf, size_t len, unsigned char *out)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    uint32_t crc = 0;
    for (size_t off = 0; ok && off < len; off += PIECE) {
        size_t n = len - off < PIECE ? len - off : PIECE;
        crc ^= bs_crc32c(0, buf + off, n);
        ok = EVP_DigestUpdate(md, buf + off, n);
    }
    ok = ok && EVP_DigestFinal_ex(md, out, NULL);
    EVP_MD_CTX_free(md);
    out[0] ^= (unsigned char)crc;
    return ok ? 0 : -1;
}

static const struct algo algos[] = {
    {"crc32c", "CRC-32C (the store's block check)", run_crc32c},
    {"sha256", "SHA-256 (EVP)", run_sha256},
    {"hmac_sha256", "HMAC-SHA256 (EVP_MAC)", run_hmac_sha256},
    {"blake2b512", "BLAKE2b-512 (EVP)", run_blake2b},
    {"blake2s256", "BLAKE2s-256 (EVP)", run_blake2s},
    {"aes128_gmac", "AES-128-GMAC (GCM, data as AAD)", run_gmac},
    {"sha512", "SHA-512 (EVP)", run_sha512},
    {"md5", "MD5 (reference only)", run_md5},
    {"crc32c_sha256_64k", "CRC-32C + SHA-256 per 64 KiB (bs_store_put)", run_store_put},
    {"aes128_gcm_encrypt", "AES-128-GCM encryption (TLS-like)", run_gcm_encrypt},
};
#define NALGOS (sizeof(algos) / sizeof(algos[0]))

static double seconds(clockid_t clk)
{
    struct timespec t;
    clock_gettime(clk, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* "8M", "1G", "65536": bytes, or 0 if malformed. */
static uint64_t parse_size(const char *s)
{
    char *end;
    uint64_t v = strtoull(s, &end, 10);
    switch (*end) {
    case 'K':
        v <<= 10, end++;
        break;
    case 'M':
        v <<= 20, end++;
        break;
    case 'G':
        v <<= 30, end++;
        break;
    default:
        break;
    }
    return *end || end == s ? 0 : v;
}

/* Whether /proc/cpuinfo lists the CPU flag `flag` ("?" when unreadable). */
static const char *cpu_flag(const char *flag)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return "?";
    char line[8192];
    const char *found = "no";
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "flags", 5) == 0) {
            for (char *p = strtok(strchr(line, ':') + 1, " \n"); p; p = strtok(NULL, " \n"))
                if (strcmp(p, flag) == 0)
                    found = "yes";
            break;
        }
    fclose(f);
    return found;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bs-bench-checksum [--buffer 8M] [--total 1G] [--runs 1] [--algos a,b,...]\n"
            "  --buffer  bytes digested at a time (one chunk), 4K..1G\n"
            "  --total   bytes through each algorithm per run, buffer..64G\n"
            "  --runs    rounds, 1..%d, median reported\n"
            "  --algos   comma-separated subset of:",
            MAX_RUNS);
    for (size_t i = 0; i < NALGOS; i++)
        fprintf(stderr, " %s", algos[i].name);
    fprintf(stderr, "\n");
}

static int wanted(const char *list, const char *name)
{
    if (!list)
        return 1;
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return 1;
        p += len + (comma != NULL);
    }
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t buffer = 8u << 20, total = 1u << 30;
    int runs = 1;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        i++;
        if (!strcmp(a, "--buffer"))
            buffer = parse_size(v);
        else if (!strcmp(a, "--total"))
            total = parse_size(v);
        else if (!strcmp(a, "--runs"))
            runs = atoi(v);
        else if (!strcmp(a, "--algos"))
            only = v;
        else {
            usage();
            return 2;
        }
    }
    if (buffer < MIN_BUFFER || buffer > MAX_BUFFER || total < buffer || total > MAX_TOTAL ||
        runs < 1 || runs > MAX_RUNS) {
        usage();
        return 2;
    }
    size_t chosen = 0;
    for (size_t i = 0; i < NALGOS; i++)
        chosen += (size_t)wanted(only, algos[i].name);
    if (!chosen) {
        fprintf(stderr, "checksum: no known algorithm in --algos %s\n", only);
        usage();
        return 2;
    }

    uint64_t iters = total / buffer, bytes = iters * buffer;
    unsigned char *buf = malloc(buffer);
    ciphertext = malloc(buffer + 16);
    hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!buf || !ciphertext || !hmac) {
        fprintf(stderr, "checksum: out of memory, or no HMAC in this OpenSSL\n");
        return 1;
    }
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (uint64_t i = 0; i < buffer; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (unsigned char)x;
    }
    memset(ciphertext, 0, buffer + 16);
    printf("checksum: %" PRIu64 " KiB buffer, %" PRIu64 " MiB per algorithm, 1 thread, median of "
           "%d; crc32c uses %s; CPU sha_ni=%s vaes=%s vpclmulqdq=%s avx512f=%s; %s\n",
           buffer >> 10, bytes >> 20, runs, bs_crc32c_hw() ? "SSE4.2" : "tables",
           cpu_flag("sha_ni"), cpu_flag("vaes"), cpu_flag("vpclmulqdq"), cpu_flag("avx512f"),
           OpenSSL_version(OPENSSL_VERSION));

    unsigned char out[MAX_OUT];
    for (size_t a = 0; a < NALGOS; a++) {
        if (!wanted(only, algos[a].name))
            continue;
        double wall[MAX_RUNS], cpu[MAX_RUNS];
        if (algos[a].run(buf, (size_t)buffer, out) < 0) { /* warm-up, and can it run here? */
            fprintf(stderr, "checksum: %s failed (not in this OpenSSL?)\n", algos[a].name);
            return 1;
        }
        for (int r = 0; r < runs; r++) {
            double w0 = seconds(CLOCK_MONOTONIC), c0 = seconds(CLOCK_THREAD_CPUTIME_ID);
            for (uint64_t i = 0; i < iters; i++) {
                if (algos[a].run(buf, (size_t)buffer, out) < 0) {
                    fprintf(stderr, "checksum: %s failed\n", algos[a].name);
                    return 1;
                }
            }
            wall[r] = seconds(CLOCK_MONOTONIC) - w0;
            cpu[r] = seconds(CLOCK_THREAD_CPUTIME_ID) - c0;
        }
        qsort(wall, (size_t)runs, sizeof(double), cmp_double);
        qsort(cpu, (size_t)runs, sizeof(double), cmp_double);
        double gbs = (double)bytes / wall[runs / 2] / 1e9;
        double cpu_per_gib = cpu[runs / 2] / ((double)bytes / (double)(1u << 30));
        double gb_per_cpu_s = (double)bytes / cpu[runs / 2] / 1e9;
        printf("  %-19s %7.2f GB/s  %6.3f CPU s/GiB  %7.2f GB per CPU s  %s\n", algos[a].name, gbs,
               cpu_per_gib, gb_per_cpu_s, algos[a].what);
        printf("RESULT {\"bench\":\"checksum\",\"algo\":\"%s\",\"buffer\":%" PRIu64
               ",\"bytes\":%" PRIu64 ",\"runs\":%d,\"gb_per_s\":%.3f,\"cpu_s_per_gib\":%.4f,"
               "\"gb_per_cpu_s\":%.3f}\n",
               algos[a].name, buffer, bytes, runs, gbs, cpu_per_gib, gb_per_cpu_s);
        fflush(stdout);
    }
    EVP_MAC_free(hmac);
    free(ciphertext);
    free(buf);
    return 0;
}
