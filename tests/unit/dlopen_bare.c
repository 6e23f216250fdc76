/* Loads the cache provider the way the model streamer does, from a host linked with nothing
 * but libc and libdl: dlopen(argv[1], RTLD_NOW | RTLD_LOCAL), looks up the four ABI symbols,
 * checks that each comes from the library itself (libc also defines `shutdown`), that both
 * version functions return 1, and that shutdown() without any prior read does not crash.
 * Exits 0 on success, 1 with a message on stderr otherwise. It reads no blobs. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr, dlinfo */
#endif
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint32_t (*version_fn)(void);
typedef void (*shutdown_fn)(void);

static void *lookup(void *h, const char *lib_name, const char *sym)
{
    dlerror();
    void *p = dlsym(h, sym);
    const char *e = dlerror();
    if (e || !p) {
        fprintf(stderr, "dlopen_bare: dlsym(%s): %s\n", sym, e ? e : "NULL");
        return NULL;
    }
    /* dlsym on a handle also searches the library's dependencies: make sure the symbol is
     * the library's own, not libc's shutdown(2). */
    Dl_info info;
    if (!dladdr(p, &info) || !info.dli_fname || strcmp(info.dli_fname, lib_name) != 0) {
        fprintf(stderr, "dlopen_bare: %s resolves to %s, not to the library %s\n", sym,
                info.dli_fname ? info.dli_fname : "(unknown)", lib_name);
        return NULL;
    }
    return p;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s LIB\n", argv[0]);
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen_bare: dlopen(%s): %s\n", argv[1], dlerror());
        return 1;
    }
    struct link_map *lm = NULL;
    if (dlinfo(h, RTLD_DI_LINKMAP, &lm) != 0 || !lm) {
        fprintf(stderr, "dlopen_bare: dlinfo: %s\n", dlerror());
        return 1;
    }

    version_fn v1 = (version_fn)(uintptr_t)lookup(h, lm->l_name, "cache_abi_version");
    version_fn v2 = (version_fn)(uintptr_t)lookup(h, lm->l_name, "runai_cache_abi_version");
    void *read = lookup(h, lm->l_name, "blob_read");
    shutdown_fn sd = (shutdown_fn)(uintptr_t)lookup(h, lm->l_name, "shutdown");
    if (!v1 || !v2 || !read || !sd)
        return 1;

    uint32_t a = v1(), b = v2();
    if (a != 1 || b != 1) {
        fprintf(stderr,
                "dlopen_bare: cache_abi_version()=%u runai_cache_abi_version()=%u, "
                "expected 1 and 1\n",
                a, b);
        return 1;
    }
    sd(); /* no read happened: nothing was initialised */

    /* The streamer never dlcloses the provider; neither do we. */
    printf("dlopen_bare: %s loads with RTLD_NOW|RTLD_LOCAL, ABI version 1, shutdown ok\n", argv[1]);
    return 0;
}
