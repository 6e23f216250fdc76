/* blobswarmctl: looks into the cluster index in Redis. `holders` prints, for one blob version,
 * which agents hold which chunks (as recorded in Redis: a hint, see docs/protocol.md), and how
 * many chunks each agent holds. It reads only; it never registers itself as an agent.
 *
 * usage: blobswarmctl holders --redis URL [--password-file F] --endpoint URL --container C
 *                             --blob B --etag ETAG --size BYTES [--chunk-bytes N] [--quiet]
 * Exit: 0 printed, 1 Redis unreachable or error, 2 usage. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "names.h"
#include "redisidx.h"

#define PROG       "blobswarmctl"
#define MAX_NODES  1024 /* distinct agents counted in the summary */
#define MAX_CHUNKS (1ull << 24)

struct tally {
    int quiet;
    uint64_t chunks_held, chunks_none;
    int nnodes;
    struct {
        char node[BS_IDX_NODE_MAX];
        uint64_t chunks;
    } nodes[MAX_NODES];
};

static void on_chunk(void *arg, uint64_t chunk, const struct bs_peer *h, int n)
{
    struct tally *t = arg;
    if (n == 0)
        t->chunks_none++;
    else
        t->chunks_held++;
    if (!t->quiet) {
        printf("chunk %" PRIu64 ":", chunk);
        for (int i = 0; i < n; i++)
            printf(" %s(%s)", h[i].node, h[i].addr);
        printf("%s\n", n ? "" : " -");
    }
    for (int i = 0; i < n; i++) {
        int k = 0;
        while (k < t->nnodes && strcmp(t->nodes[k].node, h[i].node) != 0)
            k++;
        if (k == t->nnodes && t->nnodes < MAX_NODES)
            snprintf(t->nodes[t->nnodes++].node, BS_IDX_NODE_MAX, "%s", h[i].node);
        if (k < t->nnodes)
            t->nodes[k].chunks++;
    }
}

static int usage(FILE *f, int rc)
{
    fprintf(f, "usage: " PROG " holders --redis URL [--password-file F] --endpoint URL "
               "--container C --blob B --etag ETAG --size BYTES [--chunk-bytes N] [--quiet]\n");
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "holders") != 0)
        return usage(stderr, 2);
    static const struct option opts[] = {
        {"redis", required_argument, NULL, 'r'},
        {"password-file", required_argument, NULL, 'p'},
        {"endpoint", required_argument, NULL, 'e'},
        {"container", required_argument, NULL, 'c'},
        {"blob", required_argument, NULL, 'b'},
        {"etag", required_argument, NULL, 't'},
        {"size", required_argument, NULL, 's'},
        {"chunk-bytes", required_argument, NULL, 'k'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *url = NULL, *pwfile = NULL, *endpoint = NULL, *container = NULL, *blob = NULL,
               *etag = NULL;
    uint64_t size = 0, chunk = 8u << 20;
    static struct tally t;
    int c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'r':
            url = optarg;
            break;
        case 'p':
            pwfile = optarg;
            break;
        case 'e':
            endpoint = optarg;
            break;
        case 'c':
            container = optarg;
            break;
        case 'b':
            blob = optarg;
            break;
        case 't':
            etag = optarg;
            break;
        case 's':
            size = strtoull(optarg, &end, 10);
            if (!*optarg || *end)
                return usage(stderr, 2);
            break;
        case 'k':
            chunk = strtoull(optarg, &end, 10);
            if (!*optarg || *end || chunk == 0)
                return usage(stderr, 2);
            break;
        case 'q':
            t.quiet = 1;
            break;
        case 'h':
            return usage(stdout, 0);
        default:
            return usage(stderr, 2);
        }
    }
    if (!url || !endpoint || !container || !blob || !etag || size == 0 || optind != argc)
        return usage(stderr, 2);
    size_t elen = strlen(endpoint);
    if (!bs_name_endpoint_canonical(endpoint) || (elen && endpoint[elen - 1] == '/')) {
        /* The agents key chunks by the canonical spelling: another finds nothing. */
        fprintf(stderr, PROG ": --endpoint must be canonical (lower case, no default port, no "
                             "trailing slash), as the agents key it\n");
        return 2;
    }
    uint64_t nchunks = (size + chunk - 1) / chunk;
    if (nchunks > MAX_CHUNKS) {
        fprintf(stderr, PROG ": more than %llu chunks\n", (unsigned long long)MAX_CHUNKS);
        return 2;
    }
    bs_log_set_level(BS_LOG_ERROR);
    /* No advertise address: a client of the index, not an agent (no heartbeat). */
    struct bs_redisidx_opts o = {
        .url = url,
        .password_file = pwfile,
        .node = "blobswarmctl",
        .advertise = NULL,
        .timeout_ms = 2000,
        .node_ttl_ms = 15000,
        .holder_ttl_ms = 3600000,
        .lease_ms = 1000,
        .max_holders = BS_IDX_MAX_HOLDERS,
    };
    char err[256];
    struct bs_redisidx *x = bs_redisidx_create(&o, NULL, err, sizeof(err));
    if (!x) {
        fprintf(stderr, PROG ": %s\n", err);
        return 2;
    }
    char account[1200], tag[BS_IDX_TAG_LEN + 1];
    snprintf(account, sizeof(account), "%s#grid=%llu", endpoint, (unsigned long long)chunk);
    bs_redisidx_tag(account, container, blob, etag, tag);
    /* The index connects in the background: give it the command timeout to come up. */
    for (int i = 0; i < 40 && !bs_redisidx_up(x); i++)
        usleep(50000);
    int rc = bs_redisidx_holders(x, tag, nchunks, on_chunk, &t);
    bs_redisidx_destroy(x);
    if (rc != 0) {
        fprintf(stderr, PROG ": Redis did not answer\n"); /* the URL may hold a password */
        return 1;
    }
    printf("blob version %s: %" PRIu64 " chunks, %" PRIu64 " with a holder, %" PRIu64 " without\n",
           tag, nchunks, t.chunks_held, t.chunks_none);
    for (int i = 0; i < t.nnodes; i++)
        printf("  %-24s %" PRIu64 " chunks\n", t.nodes[i].node, t.nodes[i].chunks);
    return 0;
}
