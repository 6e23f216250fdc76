/* agent_herd: a thundering herd on one chunk. Loads a provider library as the streamer does
 * (dlopen RTLD_NOW|RTLD_LOCAL), starts N threads that wait on a barrier, then all call
 * blob_read at once, each for its own slice of [offset, offset+length), and checks every byte
 * against the deterministic test stream (gendata.h). It reports failures; it judges nothing
 * about the agent (the calling test reads the agent's metrics for that).
 *
 * usage: agent_herd LIB ACCOUNT CONTAINER BLOB THREADS OFFSET LENGTH SEED
 * Exit: 0 all reads byte-exact, 1 a read failed, 2 usage, 3 a byte mismatch. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_abi.h"
#include "gendata.h"

#define MAX_THREADS 1024

struct herd {
    bs_blob_read_fn blob_read;
    const char *account, *container, *blob;
    uint64_t offset, step, seed;
    pthread_barrier_t start;
    pthread_mutex_t lock;
    int failed, mismatched;
    char first_error[600];
};

struct caller {
    struct herd *h;
    unsigned index;
};

static void *caller_main(void *arg)
{
    struct caller *c = arg;
    struct herd *h = c->h;
    uint64_t off = h->offset + (uint64_t)c->index * h->step;
    char *got = malloc(h->step), *want = malloc(h->step);
    char err[512] = "";
    pthread_barrier_wait(&h->start);
    ssize_t n = got ? h->blob_read(h->account, h->container, h->blob, got, (size_t)off,
                                   (size_t)h->step, err, sizeof(err))
                    : -1;
    int bad = 0;
    if (n == (ssize_t)h->step && want) {
        bs_gen_fill(h->seed, off, want, (size_t)h->step);
        bad = memcmp(got, want, (size_t)h->step) != 0 ? 3 : 0;
    } else {
        bad = 1;
    }
    if (bad) {
        pthread_mutex_lock(&h->lock);
        if (bad == 1)
            h->failed++;
        else
            h->mismatched++;
        if (!h->first_error[0])
            snprintf(h->first_error, sizeof(h->first_error), "caller %u [%llu, +%llu): %s",
                     c->index, (unsigned long long)off, (unsigned long long)h->step,
                     bad == 1 ? err : "bytes differ from the test stream");
        pthread_mutex_unlock(&h->lock);
    }
    free(got);
    free(want);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 9) {
        fprintf(stderr,
                "usage: agent_herd LIB ACCOUNT CONTAINER BLOB THREADS OFFSET LENGTH SEED\n");
        return 2;
    }
    struct herd h = {.account = argv[2], .container = argv[3], .blob = argv[4]};
    unsigned long threads = strtoul(argv[5], NULL, 10);
    h.offset = strtoull(argv[6], NULL, 10);
    uint64_t length = strtoull(argv[7], NULL, 10);
    h.seed = strtoull(argv[8], NULL, 10);
    if (threads < 1 || threads > MAX_THREADS || length < threads) {
        fprintf(stderr, "agent_herd: need 1 <= THREADS <= %d and LENGTH >= THREADS\n", MAX_THREADS);
        return 2;
    }
    h.step = length / threads;
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "agent_herd: dlopen %s: %s\n", argv[1], dlerror());
        return 1;
    }
    h.blob_read = (bs_blob_read_fn)dlsym(lib, "blob_read");
    bs_shutdown_fn shutdown_fn = (bs_shutdown_fn)dlsym(lib, "shutdown");
    if (!h.blob_read) {
        fprintf(stderr, "agent_herd: %s does not export blob_read\n", argv[1]);
        return 1;
    }
    pthread_barrier_init(&h.start, NULL, (unsigned)threads);
    pthread_mutex_init(&h.lock, NULL);
    static pthread_t tids[MAX_THREADS];
    static struct caller callers[MAX_THREADS];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (unsigned i = 0; i < threads; i++) {
        callers[i] = (struct caller){&h, i};
        if (pthread_create(&tids[i], &attr, caller_main, &callers[i]) != 0) {
            fprintf(stderr, "agent_herd: cannot start thread %u\n", i);
            return 1; /* the others wait on the barrier forever: exit, do not join */
        }
    }
    for (unsigned i = 0; i < threads; i++)
        pthread_join(tids[i], NULL);
    pthread_attr_destroy(&attr);
    if (shutdown_fn)
        shutdown_fn();
    printf("agent_herd: %lu callers, %llu bytes each: %d failed, %d mismatched%s%s\n", threads,
           (unsigned long long)h.step, h.failed, h.mismatched, h.first_error[0] ? "; first: " : "",
           h.first_error);
    return h.failed ? 1 : h.mismatched ? 3 : 0;
}
