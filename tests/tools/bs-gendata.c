/* bs-gendata: writes bytes [offset, offset+size) of the deterministic test stream `seed`
 * (gendata.h) to stdout, so the integration harness can create test blobs and tests can
 * compare downloads without keeping copies. It generates whole words into a large buffer and
 * writes it in big chunks; it does not verify anything itself.
 *
 * usage: bs-gendata --seed S --size N [--offset O] */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gendata.h"

#define BS_GENDATA_BUF_BYTES (4u << 20) /* bytes per write(2); a multiple of 8 */

static int parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;

    if (s == NULL || *s == '\0' || *s == '-')
        return -EINVAL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno != 0 || *end != '\0')
        return -EINVAL;
    *out = (uint64_t)v;
    return 0;
}

static int write_all(const unsigned char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDOUT_FILENO, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Fills buf with bytes [off, off+len) of the stream; off must be a multiple of 8. Same bytes
 * as bs_gen_fill, a word at a time. */
static void fill_aligned(uint64_t seed, uint64_t off, unsigned char *buf, size_t len)
{
    uint64_t index = off >> 3;
    size_t i = 0;

    for (; i + 8 <= len; i += 8, index++) {
        uint64_t w = bs_gen_word(seed, index);
        for (unsigned b = 0; b < 8; b++)
            buf[i + b] = (unsigned char)(w >> (8 * b));
    }
    if (i < len)
        bs_gen_fill(seed, off + i, buf + i, len - i);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bs-gendata --seed S --size N [--offset O]\n"
               "writes bytes [O, O+N) of the deterministic test stream S (tests/tools/gendata.h)"
               " to stdout\n");
}

int main(int argc, char **argv)
{
    uint64_t seed = 0, size = 0, offset = 0;
    int have_seed = 0, have_size = 0;

    for (int i = 1; i < argc; i++) {
        uint64_t *dst = NULL;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--seed") == 0) {
            dst = &seed;
            have_seed = 1;
        } else if (strcmp(argv[i], "--size") == 0) {
            dst = &size;
            have_size = 1;
        } else if (strcmp(argv[i], "--offset") == 0) {
            dst = &offset;
        } else {
            fprintf(stderr, "bs-gendata: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
        if (i + 1 >= argc || parse_u64(argv[i + 1], dst) != 0) {
            fprintf(stderr, "bs-gendata: %s needs a non-negative integer\n", argv[i]);
            return 2;
        }
        i++;
    }
    if (!have_seed || !have_size) {
        usage(stderr);
        return 2;
    }
    if (offset > UINT64_MAX - size) {
        fprintf(stderr, "bs-gendata: offset + size overflows\n");
        return 2;
    }

    unsigned char *buf = malloc(BS_GENDATA_BUF_BYTES);
    if (buf == NULL) {
        fprintf(stderr, "bs-gendata: out of memory\n");
        return 1;
    }

    int rc = 0;
    uint64_t pos = offset, end = offset + size;
    /* An unaligned start is written on its own so that every later buffer starts on a word. */
    if (pos < end && (pos & 7) != 0) {
        size_t head = (size_t)(8 - (pos & 7));
        if (head > end - pos)
            head = (size_t)(end - pos);
        bs_gen_fill(seed, pos, buf, head);
        rc = write_all(buf, head);
        if (rc == 0)
            pos += head;
    }
    while (rc == 0 && pos < end) {
        size_t n = end - pos < BS_GENDATA_BUF_BYTES ? (size_t)(end - pos) : BS_GENDATA_BUF_BYTES;
        fill_aligned(seed, pos, buf, n);
        rc = write_all(buf, n);
        if (rc == 0)
            pos += n;
    }
    free(buf);
    if (rc != 0) {
        fprintf(stderr, "bs-gendata: write failed at offset %" PRIu64 ": %s\n", pos, strerror(-rc));
        return 1;
    }
    return 0;
}
