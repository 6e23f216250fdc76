/* Integration test of libblobswarm.so reading Azurite directly, through the provider ABI only:
 * it dlopens the library as the model streamer does (RTLD_NOW | RTLD_LOCAL), configures it
 * through the environment for every supported identity, and checks every byte it returns
 * against the deterministic test stream (gendata.h). It also drives failures: Azure errors,
 * bad settings, faults injected by tests/tools/faultproxy.mjs, and an endpoint that dies or
 * hangs mid-read. It does not test the shim's internals (tests/unit does).
 *
 * usage: test_direct [LIB] [GROUP...]
 *   LIB    path of libblobswarm.so (else $BS_SHIM_LIB)
 *   GROUP  auth (all auth-* groups), auth-<mode>, errors, concurrency, lifecycle, tokencache,
 *          names, faults; default: all
 * Reads $BS_IT_DIR/env (export K='v' lines written by tests/tools/itenv.sh). The groups names
 * and faults also run node (PATH, or $BS_NODE) with tests/tools/azfixture.mjs, faultproxy.mjs
 * and node_modules/.bin/azurite-blob of the source tree (BS_SOURCE_DIR); every child process
 * is bounded in time and dies with this process. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cache_abi.h"
#include "gendata.h"

#ifndef BS_SOURCE_DIR
#define BS_SOURCE_DIR "."
#endif

#define ACCOUNT       "devstoreaccount1"
#define SMALL_BLOB    "small.bin"
#define SMALL_SEED    1
#define SMALL_SIZE    (1048576 + 123)
#define UNI_BLOB      "dir/\xc3\xbcmlaut name %.bin"
#define UNI_SEED      2
#define UNI_SIZE      (5 * 1048576 + 7)
#define BIG_BLOB      "big.bin"
#define BIG_SEED      3
#define BIG_SIZE      (1ull << 30) /* unless the env file says otherwise (BS_IT_BIG_*) */
#define TINY_BLOB     "tiny.bin"
#define TINY_SEED     4
#define EMPTY_BLOB    "empty.bin"
#define ERRBUF        512                  /* what the streamer passes */
#define DEAD_IMDS     "http://127.0.0.1:1" /* loopback, refused: never the real IMDS */
#define MAX_ENV       128
#define CHILD_WAIT_MS 20000

static struct {
    void *handle;
    bs_blob_read_fn read;
    bs_shutdown_fn shutdown;
    bs_cache_abi_version_fn version;
} g_shim;

/* ---- the harness's env file ------------------------------------------------------------ */

static struct {
    char *key[MAX_ENV], *val[MAX_ENV];
    int n;
} g_env;

static char g_src[1024];

/* Parses one shell word made of '...' and "..." pieces and backslash escapes. */
static char *shell_word(const char *p)
{
    size_t cap = strlen(p) + 1, n = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    while (*p && *p != '\n' && *p != ' ' && *p != '\t') {
        if (*p == '\'') {
            for (p++; *p && *p != '\''; p++)
                out[n++] = *p;
            if (*p)
                p++;
        } else if (*p == '"') {
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                out[n++] = *p;
            }
            if (*p)
                p++;
        } else if (*p == '\\' && p[1]) {
            out[n++] = p[1];
            p += 2;
        } else {
            out[n++] = *p++;
        }
    }
    out[n] = '\0';
    return out;
}

static int env_file_load(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    char line[16384];
    while (fgets(line, sizeof(line), f) && g_env.n < MAX_ENV) {
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (strncmp(p, "export ", 7) == 0)
            p += 7;
        char *eq = strchr(p, '=');
        if (*p == '#' || !eq)
            continue;
        *eq = '\0';
        g_env.key[g_env.n] = strdup(p);
        g_env.val[g_env.n] = shell_word(eq + 1);
        g_env.n++;
    }
    fclose(f);
    return 0;
}

/* A value of the env file, or NULL. */
static const char *it(const char *key)
{
    for (int i = 0; i < g_env.n; i++)
        if (strcmp(g_env.key[i], key) == 0)
            return g_env.val[i];
    return NULL;
}

/* A value the case cannot run without: skips the case when the harness did not provide it. */
static const char *need(const char *key)
{
    const char *v = it(key);
    if (!v || !*v) {
        print_message("env file lacks %s: skipping\n", key);
        skip();
    }
    return v;
}

/* The value of `name` inside a connection string ("AccountKey"), malloc'd, or NULL. */
static char *connstr_get(const char *cs, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = cs; p && *p;) {
        const char *end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=')
            return strndup(p + nl + 1, len - nl - 1);
        p = end ? end + 1 : NULL;
    }
    return NULL;
}

/* ---- secrets that must never appear in a message --------------------------------------- */

static char *g_secret[32];
static int g_nsecret;

static void secret_add(const char *s)
{
    if (s && strlen(s) >= 6 && g_nsecret < 32)
        g_secret[g_nsecret++] = strdup(s);
}

static void url_decode(const char *in, char *out, size_t outsz)
{
    size_t n = 0;
    for (; *in && n + 1 < outsz; in++) {
        unsigned v;
        if (*in == '%' && sscanf(in + 1, "%2x", &v) == 1) {
            out[n++] = (char)v;
            in += 2;
        } else {
            out[n++] = *in;
        }
    }
    out[n] = '\0';
}

static void secret_add_sas_sig(const char *sas)
{
    const char *p = sas ? strstr(sas, "sig=") : NULL;
    if (!p)
        return;
    p += 4;
    size_t len = strcspn(p, "&");
    char *enc = strndup(p, len), dec[512];
    url_decode(enc, dec, sizeof(dec));
    secret_add(enc);
    secret_add(dec);
    free(enc);
}

static void secrets_collect(void)
{
    const char *conns[] = {it("BS_IT_HTTPS_CONN"), it("BS_IT_HTTP_CONN")};
    for (size_t i = 0; i < 2; i++) {
        char *k = conns[i] ? connstr_get(conns[i], "AccountKey") : NULL;
        secret_add(k);
        free(k);
    }
    const char *sas[] = {"BS_IT_ACCOUNT_SAS_HTTPS", "BS_IT_ACCOUNT_SAS_HTTP",
                         "BS_IT_SERVICE_SAS_HTTPS", "BS_IT_SERVICE_SAS_HTTP",
                         "BS_IT_OTHER_SAS_HTTPS",   "BS_IT_EXPIRED_SAS_HTTPS"};
    for (size_t i = 0; i < sizeof(sas) / sizeof(sas[0]); i++)
        secret_add_sas_sig(it(sas[i]));
    secret_add(it("BS_IT_CLIENT_SECRET"));
    secret_add(it("BS_IT_IDENTITY_HEADER"));
}

static void assert_no_secrets(const char *msg)
{
    for (int i = 0; i < g_nsecret; i++)
        if (strstr(msg, g_secret[i]))
            fail_msg("message leaks a secret (#%d): %s", i, msg);
    /* JWTs (bearer tokens, federated assertions) start with base64url("{\"") */
    if (strstr(msg, "eyJ") || strstr(msg, "Bearer ") || strstr(msg, "sig="))
        fail_msg("message leaks a token or signature: %s", msg);
}

/* ---- configuring the shim -------------------------------------------------------------- */

/* Shuts the shim down and removes every variable it reads, so that the next blob_read starts
 * over from exactly what the case sets. Keeps the IMDS address on a refused loopback port. */
static void shim_reset(void)
{
    extern char **environ;
    g_shim.shutdown();
    char *names[256];
    int n = 0;
    for (char **e = environ; *e && n < 256; e++) {
        if (strncmp(*e, "AZURE_", 6) == 0 || strncmp(*e, "BLOBSWARM_", 10) == 0 ||
            strncmp(*e, "IDENTITY_", 9) == 0 || strncmp(*e, "MSI_", 4) == 0) {
            size_t len = strcspn(*e, "=");
            names[n++] = strndup(*e, len);
        }
    }
    for (int i = 0; i < n; i++) {
        unsetenv(names[i]);
        free(names[i]);
    }
    setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", DEAD_IMDS, 1);
    setenv("BLOBSWARM_TOKEN_TIMEOUT_MS", "1000", 1);
}

static const char *account_key(void)
{
    static char key[256];
    if (!key[0]) {
        char *k = connstr_get(need("BS_IT_HTTPS_CONN"), "AccountKey");
        assert_non_null(k);
        snprintf(key, sizeof(key), "%s", k);
        free(k);
    }
    return key;
}

static void https_endpoint(void)
{
    setenv("BLOBSWARM_BLOB_ENDPOINT", need("BS_IT_HTTPS_ENDPOINT"), 1);
    setenv("BLOBSWARM_CA_BUNDLE", need("BS_IT_CA_BUNDLE"), 1);
}

static void use_conn_https(void)
{
    setenv("AZURE_STORAGE_CONNECTION_STRING", need("BS_IT_HTTPS_CONN"), 1);
    setenv("BLOBSWARM_CA_BUNDLE", need("BS_IT_CA_BUNDLE"), 1);
}

static void use_conn_http(void)
{
    setenv("AZURE_STORAGE_CONNECTION_STRING", need("BS_IT_HTTP_CONN"), 1);
}

static void use_conn_sas(void)
{
    char cs[8192];
    snprintf(cs, sizeof(cs), "BlobEndpoint=%s;SharedAccessSignature=%s",
             need("BS_IT_HTTPS_ENDPOINT"), need("BS_IT_ACCOUNT_SAS_HTTPS"));
    setenv("AZURE_STORAGE_CONNECTION_STRING", cs, 1);
    setenv("BLOBSWARM_CA_BUNDLE", need("BS_IT_CA_BUNDLE"), 1);
}

static void use_sharedkey(void)
{
    setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT, 1);
    setenv("AZURE_STORAGE_ACCOUNT_KEY", account_key(), 1);
    https_endpoint();
}

static void use_sas(const char *var)
{
    const char *sas = need(var);
    char q[8192];
    /* the account SAS with the leading '?' the shim must strip */
    snprintf(q, sizeof(q), "%s%s", strcmp(var, "BS_IT_ACCOUNT_SAS_HTTPS") == 0 ? "?" : "", sas);
    setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT, 1);
    setenv("AZURE_STORAGE_SAS_TOKEN", q, 1);
    https_endpoint();
}

static void use_account_sas(void)
{
    use_sas("BS_IT_ACCOUNT_SAS_HTTPS");
}

static void use_service_sas(void)
{
    use_sas("BS_IT_SERVICE_SAS_HTTPS");
}

static void use_public(void)
{
    https_endpoint(); /* nothing configured: the IMDS probe fails (DEAD_IMDS), reads go out
                       * anonymously */
}

static void use_client_secret_with(const char *secret)
{
    setenv("AZURE_TENANT_ID", need("BS_IT_TENANT"), 1);
    setenv("AZURE_CLIENT_ID", need("BS_IT_CLIENT_ID"), 1);
    setenv("AZURE_CLIENT_SECRET", secret, 1);
    setenv("AZURE_AUTHORITY_HOST", need("BS_IT_TOKEN_URL"), 1);
    setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT, 1);
    https_endpoint();
}

static void use_client_secret(void)
{
    use_client_secret_with(need("BS_IT_CLIENT_SECRET"));
}

static void use_workload_identity(void)
{
    setenv("AZURE_TENANT_ID", need("BS_IT_TENANT"), 1);
    setenv("AZURE_CLIENT_ID", need("BS_IT_CLIENT_ID"), 1);
    setenv("AZURE_FEDERATED_TOKEN_FILE", need("BS_IT_FEDERATED_TOKEN_FILE"), 1);
    setenv("AZURE_AUTHORITY_HOST", need("BS_IT_TOKEN_URL"), 1);
    setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT, 1);
    https_endpoint();
}

static void use_imds(void)
{
    setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", need("BS_IT_TOKEN_URL"), 1);
    setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT, 1);
    https_endpoint();
}

static void use_imds_user(void)
{
    use_imds();
    setenv("AZURE_CLIENT_ID", need("BS_IT_CLIENT_ID"), 1); /* a user-assigned identity */
}

static void use_appservice(void)
{
    char url[2048];
    snprintf(url, sizeof(url), "%s/msi/token", need("BS_IT_TOKEN_URL"));
    setenv("IDENTITY_ENDPOINT", url, 1);
    setenv("IDENTITY_HEADER", need("BS_IT_IDENTITY_HEADER"), 1);
    setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT, 1);
    https_endpoint();
}

struct mode {
    const char *name;
    void (*apply)(void);
    const char *container;
};

static const struct mode g_modes[] = {
    {"conn-https", use_conn_https, "data"},
    {"conn-http", use_conn_http, "data"},
    {"conn-sas", use_conn_sas, "data"},
    {"sharedkey", use_sharedkey, "data"},
    {"account-sas", use_account_sas, "data"},
    {"service-sas", use_service_sas, "data"},
    {"public", use_public, "public"},
    {"client-secret", use_client_secret, "data"},
    {"workload-identity", use_workload_identity, "data"},
    {"imds", use_imds, "data"},
    {"imds-user", use_imds_user, "data"},
    {"appservice", use_appservice, "data"},
};
#define N_MODES (sizeof(g_modes) / sizeof(g_modes[0]))

static const struct mode *g_mode;

/* ---- reading and checking -------------------------------------------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *s, uint64_t n)
{
    return n ? rng_next(s) % n : 0;
}

/* Reads [off, off+len) and compares it with the stream `seed`. Returns 0, or -1 with a
 * description in why (the shim's message, or where the bytes differ). Thread-safe. */
static int read_check(const char *container, const char *blob, uint64_t seed, size_t off,
                      size_t len, char *why, size_t whysz)
{
    unsigned char *got = malloc(len ? len : 1), *want = malloc(len ? len : 1);
    char err[ERRBUF] = "";
    int rc = -1;
    if (!got || !want) {
        snprintf(why, whysz, "out of memory");
        goto out;
    }
    memset(got, 0xA5, len);
    ssize_t n = g_shim.read(ACCOUNT, container, blob, got, off, len, err, sizeof(err));
    if (n != (ssize_t)len) {
        snprintf(why, whysz, "read %s/%s [%zu, +%zu) returned %zd: %s", container, blob, off, len,
                 n, err);
        goto out;
    }
    bs_gen_fill(seed, off, want, len);
    if (memcmp(got, want, len) != 0) {
        size_t i = 0;
        while (got[i] == want[i])
            i++;
        snprintf(why, whysz, "read %s/%s [%zu, +%zu): first wrong byte at offset %zu", container,
                 blob, off, len, off + i);
        goto out;
    }
    rc = 0;
out:
    free(got);
    free(want);
    return rc;
}

#define assert_read_ok(container, blob, seed, off, len)                                            \
    do {                                                                                           \
        char why_[2 * ERRBUF];                                                                     \
        if (read_check((container), (blob), (seed), (off), (len), why_, sizeof(why_)) != 0)        \
            fail_msg("%s", why_);                                                                  \
    } while (0)

/* Reads expecting failure; returns the message (static buffer) after checking it is a
 * NUL-terminated "blobswarm: " message without secrets. */
static const char *read_fails(const char *container, const char *blob, size_t off, size_t len)
{
    static char err[ERRBUF];
    unsigned char *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    memset(err, 'X', sizeof(err));
    ssize_t n = g_shim.read(ACCOUNT, container, blob, buf, off, len, err, sizeof(err));
    free(buf);
    if (n != -1)
        fail_msg("read %s/%s [%zu, +%zu) returned %zd, expected -1", container, blob, off, len, n);
    assert_non_null(memchr(err, '\0', sizeof(err)));
    assert_true(strncmp(err, "blobswarm: ", 11) == 0);
    assert_no_secrets(err);
    print_message("    error: %s\n", err);
    return err;
}

#define assert_contains(hay, needle)                                                               \
    do {                                                                                           \
        if (!strstr((hay), (needle)))                                                              \
            fail_msg("expected \"%s\" in: %s", (needle), (hay));                                   \
    } while (0)

/* ---- auth-* groups: one per identity ---------------------------------------------------- */

static int g_mode_applied;

static int mode_setup(void **state)
{
    (void)state;
    shim_reset();
    g_mode_applied = 0;
    return 0;
}

/* Configures the group's identity on its first case (inside a case, so that a value missing
 * from the env file skips the cases instead of failing the group's setup). */
static void mode_apply(void)
{
    if (g_mode_applied)
        return;
    g_mode->apply();
    setenv("BLOBSWARM_RANGE_BYTES", "65536", 1); /* many grid cells per 1 MiB blob */
    g_mode_applied = 1;
}

static int mode_teardown(void **state)
{
    (void)state;
    shim_reset();
    return 0;
}

static void t_first_byte(void **state)
{
    (void)state;
    mode_apply();
    assert_read_ok(g_mode->container, SMALL_BLOB, SMALL_SEED, 0, 1);
}

static void t_last_byte(void **state)
{
    (void)state;
    mode_apply();
    assert_read_ok(g_mode->container, SMALL_BLOB, SMALL_SEED, SMALL_SIZE - 1, 1);
}

static void t_whole_small(void **state)
{
    (void)state;
    mode_apply();
    assert_read_ok(g_mode->container, SMALL_BLOB, SMALL_SEED, 0, SMALL_SIZE);
}

/* 300 reads at random places, a third of them straddling a 64 KiB grid line. */
static void t_random_reads(void **state)
{
    (void)state;
    mode_apply();
    uint64_t s = 20260301;
    for (int i = 0; i < 300; i++) {
        size_t off, len;
        switch (i % 3) {
        case 0: { /* across one or more grid lines */
            uint64_t line = 65536 * (1 + rng_below(&s, SMALL_SIZE / 65536));
            off = line - 1 - rng_below(&s, 4096);
            len = 2 + rng_below(&s, 3 * 65536);
            break;
        }
        case 1: /* small */
            off = rng_below(&s, SMALL_SIZE);
            len = 1 + rng_below(&s, 4096);
            break;
        default: /* anything */
            off = rng_below(&s, SMALL_SIZE);
            len = 1 + rng_below(&s, 300000);
            break;
        }
        if (off >= SMALL_SIZE)
            off = SMALL_SIZE - 1;
        if (len > SMALL_SIZE - off)
            len = SMALL_SIZE - off;
        assert_read_ok(g_mode->container, SMALL_BLOB, SMALL_SEED, off, len);
    }
}

static void t_unicode_name(void **state)
{
    (void)state;
    mode_apply();
    assert_read_ok(g_mode->container, UNI_BLOB, UNI_SEED, 0, UNI_SIZE);
    assert_read_ok(g_mode->container, UNI_BLOB, UNI_SEED, UNI_SIZE - 70000, 70000);
}

static void t_tiny(void **state)
{
    (void)state;
    mode_apply();
    assert_read_ok(g_mode->container, TINY_BLOB, TINY_SEED, 0, 8);
    assert_read_ok(g_mode->container, TINY_BLOB, TINY_SEED, 7, 1);
}

static void t_empty(void **state)
{
    (void)state;
    mode_apply();
    char buf[1] = {'z'}, err[ERRBUF] = "";
    ssize_t n = g_shim.read(ACCOUNT, g_mode->container, EMPTY_BLOB, buf, 0, 0, err, sizeof(err));
    if (n != 0)
        fail_msg("zero-length read of %s returned %zd: %s", EMPTY_BLOB, n, err);
    assert_int_equal(buf[0], 'z');
}

/* ---- errors ------------------------------------------------------------------------------ */

static int errors_setup(void **state)
{
    (void)state;
    shim_reset();
    return 0;
}

static void t_err_missing_blob(void **state)
{
    (void)state;
    use_sharedkey();
    const char *m = read_fails("data", "no/such/blob.bin", 0, 10);
    assert_contains(m, "BlobNotFound");
    assert_contains(m, "no/such/blob.bin");
}

static void t_err_missing_container(void **state)
{
    (void)state;
    use_sharedkey();
    const char *m = read_fails("nosuchcontainer", SMALL_BLOB, 0, 10);
    assert_contains(m, "ContainerNotFound");
}

/* A well-formed 64-byte key that is not the account's. */
static const char g_wrong_key[] =
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";

static void t_err_wrong_key(void **state)
{
    (void)state;
    /* On the plain Azurite, as on Azure: 403 AuthorizationFailure. */
    setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT, 1);
    setenv("AZURE_STORAGE_ACCOUNT_KEY", g_wrong_key, 1);
    setenv("BLOBSWARM_BLOB_ENDPOINT", need("BS_IT_HTTP_ENDPOINT"), 1);
    secret_add(g_wrong_key);
    const char *m = read_fails("data", SMALL_BLOB, 0, 10);
    assert_contains(m, "403");
    assert_contains(m, "shared key");
}

/* Azurite with --oauth basic hands a Shared Key it cannot verify to its bearer-token check,
 * which answers 400 InvalidAuthenticationInfo: the read must still fail cleanly. */
static void t_err_wrong_key_https(void **state)
{
    (void)state;
    setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT, 1);
    setenv("AZURE_STORAGE_ACCOUNT_KEY", g_wrong_key, 1);
    https_endpoint();
    secret_add(g_wrong_key);
    const char *m = read_fails("data", SMALL_BLOB, 0, 10);
    if (!strstr(m, "HTTP 403") && !strstr(m, "HTTP 400"))
        fail_msg("expected HTTP 400 or 403 in: %s", m);
}

static void t_err_sas_other_container(void **state)
{
    (void)state;
    use_sas("BS_IT_OTHER_SAS_HTTPS");
    const char *m = read_fails("data", SMALL_BLOB, 0, 10);
    assert_contains(m, "403");
    assert_contains(m, "SAS");
}

static void t_err_expired_sas(void **state)
{
    (void)state;
    use_sas("BS_IT_EXPIRED_SAS_HTTPS");
    const char *m = read_fails("data", SMALL_BLOB, 0, 10);
    assert_contains(m, "403");
    assert_contains(m, "SAS");
}

static void t_err_past_end(void **state)
{
    (void)state;
    use_sharedkey();
    assert_contains(read_fails("data", SMALL_BLOB, SMALL_SIZE - 10, 11), "past the end");
    assert_contains(read_fails("data", SMALL_BLOB, SMALL_SIZE, 1), "past the end");
    assert_contains(read_fails("data", SMALL_BLOB, SMALL_SIZE + 4096, 1), "past the end");
    assert_contains(read_fails("data", TINY_BLOB, 0, 9), "past the end");
    assert_contains(read_fails("data", EMPTY_BLOB, 0, 1), "past the end");
    /* the blob is still readable right up to its end */
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, SMALL_SIZE - 10, 10);
}

static void t_err_bad_client_secret(void **state)
{
    (void)state;
    static const char wrong[] = "wrong-secret-7f3e9a1c";
    secret_add(wrong);
    use_client_secret_with(wrong);
    const char *m = read_fails("data", SMALL_BLOB, 0, 10);
    assert_contains(m, "client secret");
    assert_contains(m, "az://data/" SMALL_BLOB); /* docs/shim.md: every error names the blob */
    const char *h = strstr(m, "HTTP ");
    if (!h || h[5] < '1' || h[5] > '5')
        fail_msg("expected the token endpoint's HTTP status in: %s", m);
}

static void t_err_bad_range_bytes(void **state)
{
    (void)state;
    static const char *const bad[] = {"12Q", "1K", "-5", "1T"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        shim_reset();
        use_sharedkey();
        setenv("BLOBSWARM_RANGE_BYTES", bad[i], 1);
        const char *m = read_fails("data", SMALL_BLOB, 0, 10);
        assert_contains(m, "BLOBSWARM_RANGE_BYTES");
    }
    /* fixed: the next initialisation succeeds */
    shim_reset();
    use_sharedkey();
    setenv("BLOBSWARM_RANGE_BYTES", "64K", 1);
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 65530, 20);
}

static void t_err_null_error_buf(void **state)
{
    (void)state;
    use_sharedkey();
    char buf[16];
    assert_int_equal(g_shim.read(ACCOUNT, "data", "no-such.bin", buf, 0, 10, NULL, 0), -1);
    assert_int_equal(g_shim.read(ACCOUNT, "data", SMALL_BLOB, buf, SMALL_SIZE, 1, NULL, 0), -1);
    assert_int_equal(g_shim.read(ACCOUNT, "data", SMALL_BLOB, NULL, 0, 10, NULL, 0), -1);
    /* and a success with no error buffer at all */
    assert_int_equal(g_shim.read(ACCOUNT, "data", TINY_BLOB, buf, 0, 8, NULL, 0), 8);
}

static void t_err_small_error_buf(void **state)
{
    (void)state;
    use_sharedkey();
    char area[64], buf[16];
    memset(area, 'X', sizeof(area));
    assert_int_equal(g_shim.read(ACCOUNT, "data", "no-such.bin", buf, 0, 10, area, 16), -1);
    assert_int_equal(area[15], '\0');
    assert_int_equal(strlen(area), 15);
    assert_memory_equal(area, "blobswarm: ", 11);
    for (size_t i = 16; i < sizeof(area); i++)
        assert_int_equal(area[i], 'X');
    /* size 1: just the terminator */
    memset(area, 'X', sizeof(area));
    assert_int_equal(g_shim.read(ACCOUNT, "data", "no-such.bin", buf, 0, 10, area, 1), -1);
    assert_int_equal(area[0], '\0');
    assert_int_equal(area[1], 'X');
}

/* ---- concurrency: 64 threads x 50 reads of the 1 GiB blob --------------------------------- */

#define CONC_THREADS 64
#define CONC_READS   50

static uint64_t g_big_size = BIG_SIZE, g_big_seed = BIG_SEED;
static atomic_int g_conc_failures;
static char g_conc_first[2 * ERRBUF];
static pthread_mutex_t g_conc_lock = PTHREAD_MUTEX_INITIALIZER;

static void *conc_worker(void *arg)
{
    uint64_t s = 0xB10B5EEDull + (uint64_t)(uintptr_t)arg * 7919;
    for (int i = 0; i < CONC_READS; i++) {
        uint64_t off, len;
        switch (rng_below(&s, 4)) {
        case 0: /* a 4 MiB line inside (a grid line of the default grid, or half of them) */
            off = (4ull << 20) * (1 + rng_below(&s, g_big_size / (4u << 20) - 1)) - 1 -
                  rng_below(&s, 65536);
            len = 2 + rng_below(&s, 1 << 20);
            break;
        case 1:
            off = rng_below(&s, g_big_size);
            len = 1 + rng_below(&s, 4096);
            break;
        default:
            off = rng_below(&s, g_big_size);
            len = 1 + rng_below(&s, 768 << 10);
            break;
        }
        if (off + len > g_big_size)
            len = g_big_size - off;
        char why[2 * ERRBUF];
        if (read_check("data", BIG_BLOB, g_big_seed, off, len, why, sizeof(why)) != 0) {
            pthread_mutex_lock(&g_conc_lock);
            if (atomic_fetch_add(&g_conc_failures, 1) == 0)
                snprintf(g_conc_first, sizeof(g_conc_first), "%s", why);
            pthread_mutex_unlock(&g_conc_lock);
        }
    }
    return NULL;
}

static void t_concurrent_big(void **state)
{
    (void)state;
    shim_reset();
    use_sharedkey();
    if (it("BS_IT_BIG_SIZE"))
        g_big_size = strtoull(it("BS_IT_BIG_SIZE"), NULL, 10);
    if (it("BS_IT_BIG_SEED"))
        g_big_seed = strtoull(it("BS_IT_BIG_SEED"), NULL, 10);
    if (g_big_size < (8u << 20))
        fail_msg("big.bin of %llu bytes is too small for this case",
                 (unsigned long long)g_big_size);
    atomic_store(&g_conc_failures, 0);
    pthread_t th[CONC_THREADS];
    uint64_t t0 = now_ms();
    for (uintptr_t i = 0; i < CONC_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, conc_worker, (void *)i), 0);
    for (int i = 0; i < CONC_THREADS; i++)
        pthread_join(th[i], NULL);
    print_message("    %d reads in %llu ms\n", CONC_THREADS * CONC_READS,
                  (unsigned long long)(now_ms() - t0));
    if (atomic_load(&g_conc_failures))
        fail_msg("%d of %d reads failed; first: %s", atomic_load(&g_conc_failures),
                 CONC_THREADS * CONC_READS, g_conc_first);
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

static int lifecycle_setup(void **state)
{
    (void)state;
    shim_reset();
    use_sharedkey();
    return 0;
}

static void t_shutdown_idle_then_reuse(void **state)
{
    (void)state;
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 100, 1000);
    g_shim.shutdown();
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 200, 1000);
}

static void t_shutdown_twice(void **state)
{
    (void)state;
    assert_read_ok("data", TINY_BLOB, TINY_SEED, 0, 8);
    g_shim.shutdown();
    g_shim.shutdown();
    assert_read_ok("data", TINY_BLOB, TINY_SEED, 0, 8);
}

static void t_three_cycles(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        assert_read_ok("data", UNI_BLOB, UNI_SEED, (size_t)i * 100003, 4 << 20);
        g_shim.shutdown();
    }
}

struct reader_arg {
    atomic_int *stop;
    atomic_int failures;
    char first[2 * ERRBUF];
    int reads;
};

static void *loop_reader(void *p)
{
    struct reader_arg *a = p;
    uint64_t s = (uint64_t)(uintptr_t)p;
    for (int i = 0; i < 400 && !atomic_load(a->stop); i++) {
        size_t off = rng_below(&s, SMALL_SIZE - 70000);
        char why[2 * ERRBUF];
        if (read_check("data", SMALL_BLOB, SMALL_SEED, off, 70000, why, sizeof(why)) != 0 &&
            atomic_fetch_add(&a->failures, 1) == 0)
            snprintf(a->first, sizeof(a->first), "%s", why);
        a->reads++;
    }
    return NULL;
}

/* The streamer calls shutdown only when idle, but the docs promise it waits for calls in
 * flight: readers running through repeated shutdowns must all succeed. */
static void t_shutdown_during_reads(void **state)
{
    (void)state;
    atomic_int stop = 0;
    struct reader_arg a[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        memset(&a[i], 0, sizeof(a[i]));
        a[i].stop = &stop;
        assert_int_equal(pthread_create(&th[i], NULL, loop_reader, &a[i]), 0);
    }
    for (int i = 0; i < 5; i++) {
        struct timespec ts = {0, 150 * 1000000L};
        nanosleep(&ts, NULL);
        g_shim.shutdown();
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++)
        if (atomic_load(&a[i].failures))
            fail_msg("reader %d: %d of %d reads failed; first: %s", i, atomic_load(&a[i].failures),
                     a[i].reads, a[i].first);
}

/* ---- token caching ------------------------------------------------------------------------- */

struct membuf {
    char data[65536];
    size_t len;
};

static size_t membuf_write(char *p, size_t sz, size_t n, void *ud)
{
    struct membuf *m = ud;
    size_t len = sz * n;
    if (m->len + len >= sizeof(m->data))
        return 0;
    memcpy(m->data + m->len, p, len);
    m->len += len;
    m->data[m->len] = '\0';
    return len;
}

/* GETs url into out (NUL-terminated). Returns the HTTP status, or -1. */
static long http_get(const char *url, struct membuf *out)
{
    CURL *h = curl_easy_init();
    if (!h)
        return -1;
    out->len = 0;
    out->data[0] = '\0';
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, membuf_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    const char *ca = it("BS_IT_CA_BUNDLE");
    if (ca && *ca)
        curl_easy_setopt(h, CURLOPT_CAINFO, ca);
    long status = -1;
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    return status;
}

/* POSTs a JSON body to url. Returns the HTTP status, or -1. */
static long http_post_json(const char *url, const char *body)
{
    CURL *h = curl_easy_init();
    struct membuf *out = calloc(1, sizeof(*out));
    if (!h || !out) {
        curl_easy_cleanup(h);
        free(out);
        return -1;
    }
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, membuf_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    long status = -1;
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    free(out);
    return status;
}

/* The integer value of "key": in a flat or nested JSON text (first occurrence), or -1. */
static long long json_int(const char *json, const char *key)
{
    char pat[128];
    snprintf(pat, sizeof(pat), "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p)
        return -1;
    p += strlen(pat);
    while (*p == ' ' || *p == ':' || *p == '\t' || *p == '\n')
        p++;
    if (*p < '0' || *p > '9')
        return -1;
    return strtoll(p, NULL, 10);
}

/* Tokens the token server issued for the client-secret flow so far (its GET /stats). */
static long long tokens_issued_client_secret(void)
{
    char url[2048];
    snprintf(url, sizeof(url), "%s/stats", need("BS_IT_TOKEN_URL"));
    struct membuf *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    long st = http_get(url, m);
    if (st != 200)
        fail_msg("GET %s answered %ld", url, st);
    long long n = json_int(m->data, "client_secret");
    if (n < 0)
        n = json_int(m->data, "clientSecret");
    if (n < 0)
        fail_msg("no client-secret count in /stats: %s", m->data);
    free(m);
    return n;
}

static void *token_reader(void *p)
{
    struct reader_arg *a = p;
    uint64_t s = 77 + (uint64_t)(uintptr_t)p;
    for (int i = 0; i < 25; i++) {
        size_t off = rng_below(&s, SMALL_SIZE - 200000);
        char why[2 * ERRBUF];
        if (read_check("data", SMALL_BLOB, SMALL_SEED, off, 1 + rng_below(&s, 200000), why,
                       sizeof(why)) != 0 &&
            atomic_fetch_add(&a->failures, 1) == 0)
            snprintf(a->first, sizeof(a->first), "%s", why);
    }
    return NULL;
}

static void t_token_cached(void **state)
{
    (void)state;
    shim_reset();
    use_client_secret();
    setenv("BLOBSWARM_RANGE_BYTES", "64K", 1);
    long long before = tokens_issued_client_secret();
    for (int i = 0; i < 50; i++)
        assert_read_ok("data", SMALL_BLOB, SMALL_SEED, (size_t)i * 18000, 100000);
    /* and from 8 threads at once: still one token */
    struct reader_arg a[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
        memset(&a[i], 0, sizeof(a[i]));
        assert_int_equal(pthread_create(&th[i], NULL, token_reader, &a[i]), 0);
    }
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 8; i++)
        if (atomic_load(&a[i].failures))
            fail_msg("thread %d: %s", i, a[i].first);
    long long after = tokens_issued_client_secret();
    if (after - before != 1)
        fail_msg("the token server issued %lld client-secret tokens during 250 reads, expected 1",
                 after - before);
    shim_reset();
}

static void token_control(const char *json)
{
    char url[2048];
    snprintf(url, sizeof(url), "%s/control", need("BS_IT_TOKEN_URL"));
    long st = http_post_json(url, json);
    if (st != 200)
        fail_msg("POST %s %s answered %ld", url, json, st);
}

/* Tokens living 6 s are refreshed once fewer than min(5 min, half the lifetime) = 3 s remain:
 * after 3.5 s the next read fetches a new one, the read after that does not. */
static void t_token_refreshed(void **state)
{
    (void)state;
    shim_reset();
    use_client_secret();
    token_control("{\"expires_in\":6}");
    long long n0 = tokens_issued_client_secret();
    assert_read_ok("data", TINY_BLOB, TINY_SEED, 0, 8);
    assert_read_ok("data", TINY_BLOB, TINY_SEED, 0, 8);
    long long n1 = tokens_issued_client_secret();
    struct timespec ts = {3, 500 * 1000000L};
    nanosleep(&ts, NULL);
    assert_read_ok("data", TINY_BLOB, TINY_SEED, 0, 8);
    assert_read_ok("data", TINY_BLOB, TINY_SEED, 0, 8);
    long long n2 = tokens_issued_client_secret();
    token_control("{\"reset\":true}");
    shim_reset();
    if (n1 - n0 != 1 || n2 - n1 != 1)
        fail_msg("tokens issued: %lld at the start, %lld after 3.5 s (expected 1 and 1)", n1 - n0,
                 n2 - n1);
}

/* A refresh that is only early runs in the background: with a slow token endpoint (2 s) and
 * tokens living 6 s, a read 3.5 s after the first (refresh due, token still valid) does not
 * wait for the new token; the new one arrives anyway and no second fetch starts. */
static void t_token_early_refresh_no_wait(void **state)
{
    (void)state;
    shim_reset();
    use_client_secret();
    token_control("{\"expires_in\":6,\"delay_ms\":{\"client_secret\":2000}}");
    long long n0 = tokens_issued_client_secret();
    assert_read_ok("data", TINY_BLOB, TINY_SEED, 0, 8); /* fetches: 2 s */
    struct timespec ts = {3, 500 * 1000000L};
    nanosleep(&ts, NULL);
    uint64_t t0 = now_ms();
    assert_read_ok("data", TINY_BLOB, TINY_SEED, 0, 8);
    assert_read_ok("data", TINY_BLOB, TINY_SEED, 0, 8);
    uint64_t waited = now_ms() - t0;
    struct timespec settle = {2, 500 * 1000000L};
    nanosleep(&settle, NULL);
    long long n1 = tokens_issued_client_secret();
    token_control("{\"reset\":true}");
    shim_reset();
    print_message("    two reads during the early refresh took %llu ms\n",
                  (unsigned long long)waited);
    if (waited >= 1500)
        fail_msg("reads holding a valid token waited %llu ms for an early refresh",
                 (unsigned long long)waited);
    if (n1 - n0 != 2)
        fail_msg("tokens issued: %lld, expected 2 (the first, one background refresh)", n1 - n0);
}

/* An unconfigured process (managed identity through IMDS) whose first token request meets a
 * transient IMDS error (HTTP 500: IMDS answers 429/5xx under load; the Azure SDKs retry
 * them) must not be switched to anonymous for good: once IMDS answers again, reads work. */
static void t_imds_transient_failure(void **state)
{
    (void)state;
    shim_reset();
    use_imds();
    token_control("{\"fail\":{\"imds\":{\"count\":1,\"status\":500}}}");
    char buf[8], err[ERRBUF] = "";
    ssize_t n = g_shim.read(ACCOUNT, "data", TINY_BLOB, buf, 0, 8, err, sizeof(err));
    print_message("    read during the IMDS failure: %zd %s\n", n, err);
    token_control("{\"reset\":true}");
    char why[2 * ERRBUF];
    int rc = read_check("data", TINY_BLOB, TINY_SEED, 0, 8, why, sizeof(why));
    shim_reset();
    if (rc != 0)
        fail_msg("after one IMDS error the shim stays broken: %s", why);
}

/* ---- child processes (the fault proxy, a private Azurite, azfixture) ---------------------- */

struct child {
    pid_t pid;
    int out_fd; /* its stdout, kept open so that it never writes into a closed pipe */
};

/* Starts argv with stdout on a pipe; the child dies with this process (PDEATHSIG). Waits up
 * to timeout_ms for a stdout line containing `marker` and copies that line into line. */
static int child_start(struct child *c, char *const argv[], const char *marker, char *line,
                       size_t linesz, int timeout_ms)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -errno;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -errno;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(fds[1], STDOUT_FILENO);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    c->pid = pid;
    c->out_fd = fds[0];
    char acc[4096];
    size_t n = 0;
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    while (now_ms() < end && n + 1 < sizeof(acc)) {
        struct pollfd pfd = {fds[0], POLLIN, 0};
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        ssize_t r = read(fds[0], acc + n, sizeof(acc) - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        acc[n] = '\0';
        char *m = strstr(acc, marker);
        if (m) {
            char *eol = strchr(m, '\n');
            if (!eol)
                continue;
            char *bol = m;
            while (bol > acc && bol[-1] != '\n')
                bol--;
            snprintf(line, linesz, "%.*s", (int)(eol - bol), bol);
            return 0;
        }
    }
    acc[n] = '\0';
    print_message("child %s did not print \"%s\" within %d ms; output: %s\n", argv[0], marker,
                  timeout_ms, acc);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(fds[0]);
    c->pid = 0;
    return -ETIMEDOUT;
}

/* Waits for pid up to ms; returns its wait status, or -1 after killing it. */
static int wait_bounded(pid_t pid, int ms)
{
    int st;
    uint64_t end = now_ms() + (uint64_t)ms;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        if (r < 0)
            return -1;
        if (now_ms() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static void child_stop(struct child *c)
{
    if (c->pid <= 0)
        return;
    kill(c->pid, SIGCONT);
    kill(c->pid, SIGTERM);
    if (wait_bounded(c->pid, 3000) < 0)
        print_message("child %d needed SIGKILL\n", (int)c->pid);
    close(c->out_fd);
    c->pid = 0;
}

/* Runs argv to completion (bounded), stdin from stdin_path (or /dev/null); returns 0 when it
 * exited with status 0. */
static int run_cmd_in(char *const argv[], const char *stdin_path, int timeout_ms)
{
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int devnull = open("/dev/null", O_RDWR);
        int in = stdin_path ? open(stdin_path, O_RDONLY) : devnull;
        if (in < 0 || devnull < 0)
            _exit(126);
        dup2(in, STDIN_FILENO);
        dup2(devnull, STDOUT_FILENO);
        execvp(argv[0], argv);
        _exit(127);
    }
    int st = wait_bounded(pid, timeout_ms);
    if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        print_message("command %s %s failed (status %d)\n", argv[0], argv[1] ? argv[1] : "", st);
        return -EIO;
    }
    return 0;
}

static int run_cmd(char *const argv[], int timeout_ms)
{
    return run_cmd_in(argv, NULL, timeout_ms);
}

static const char *node_bin(void)
{
    const char *n = getenv("BS_NODE");
    return n && *n ? n : "node";
}

/* Writes bytes [0, size) of stream seed into a new file at path. */
static int write_stream_file(const char *path, uint64_t seed, size_t size)
{
    FILE *f = fopen(path, "we");
    if (!f)
        return -errno;
    size_t chunk = 1 << 20;
    unsigned char *buf = malloc(chunk);
    int rc = buf ? 0 : -ENOMEM;
    for (size_t off = 0; rc == 0 && off < size; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        bs_gen_fill(seed, off, buf, n);
        if (fwrite(buf, 1, n, f) != n)
            rc = -EIO;
    }
    free(buf);
    if (fclose(f) != 0 && rc == 0)
        rc = -EIO;
    return rc;
}

/* Uploads stream seed (size bytes) as container/blob with azfixture over conn. */
static int upload_stream(const char *conn, const char *container, const char *blob, uint64_t seed,
                         size_t size, const char *tmpdir)
{
    char file[1200], fixture[1200];
    snprintf(file, sizeof(file), "%s/upload-%d.bin", tmpdir, (int)getpid());
    snprintf(fixture, sizeof(fixture), "%s/tests/tools/azfixture.mjs", g_src);
    int rc = write_stream_file(file, seed, size);
    if (rc == 0) {
        char *argv[] = {
            (char *)node_bin(), fixture,  "upload",     "--conn", (char *)conn, "--container",
            (char *)container,  "--blob", (char *)blob, "--file", file,         NULL};
        rc = run_cmd(argv, 60000);
    }
    unlink(file);
    return rc;
}

static int fixture_cmd(const char *conn, const char *cmd, const char *container, const char *blob)
{
    char fixture[1200];
    snprintf(fixture, sizeof(fixture), "%s/tests/tools/azfixture.mjs", g_src);
    char *argv[] = {(char *)node_bin(), fixture,       (char *)cmd,       "--conn",
                    (char *)conn,       "--container", (char *)container, blob ? "--blob" : NULL,
                    (char *)blob,       NULL};
    return run_cmd(argv, 30000);
}

/* Writes s as a JSON string literal (our names hold no control characters). */
static void json_put_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

/* Runs `azfixture.mjs batch` over n commands "CMD --conn C --container N --blob B [--file F]"
 * in one node process (the SDK start-up dominates single commands). files may be NULL. */
static int fixture_batch(const char *cmd, const char *conn, const char *container,
                         const char *const *blobs, const char *const *files, size_t n,
                         const char *tmpdir)
{
    char list[1200], fixture[1200];
    snprintf(list, sizeof(list), "%s/batch-%d.jsonl", tmpdir, (int)getpid());
    snprintf(fixture, sizeof(fixture), "%s/tests/tools/azfixture.mjs", g_src);
    FILE *f = fopen(list, "we");
    if (!f)
        return -errno;
    for (size_t i = 0; i < n; i++) {
        fprintf(f, "[\"%s\",\"--conn\",", cmd);
        json_put_str(f, conn);
        fputs(",\"--container\",", f);
        json_put_str(f, container);
        fputs(",\"--blob\",", f);
        json_put_str(f, blobs[i]);
        if (files) {
            fputs(",\"--file\",", f);
            json_put_str(f, files[i]);
        }
        fputs("]\n", f);
    }
    if (fclose(f) != 0)
        return -EIO;
    char *argv[] = {(char *)node_bin(), fixture, "batch", NULL};
    int rc = run_cmd_in(argv, list, 120000);
    unlink(list);
    return rc;
}

/* ---- faults: through tests/tools/faultproxy.mjs, and a private Azurite ------------------- */

static struct {
    struct child proxy;
    char url[256];      /* http://127.0.0.1:P */
    char endpoint[300]; /* url + /devstoreaccount1 */
    struct child azurite;
    char az_conn[1024];
    char az_endpoint[300];
    char tmpdir[512];
} g_f;

#define OVERWRITE_SIZE 300000
#define OUTAGE_SIZE    (64u << 20)
#define OUTAGE_SEED    21

/* A scratch directory of this process under $BS_IT_DIR, removed by tmpdir_remove. */
static int tmpdir_make(void)
{
    if (g_f.tmpdir[0])
        return 0;
    snprintf(g_f.tmpdir, sizeof(g_f.tmpdir), "%s/direct-%d",
             getenv("BS_IT_DIR") ? getenv("BS_IT_DIR") : "/tmp", (int)getpid());
    if (mkdir(g_f.tmpdir, 0700) != 0 && errno != EEXIST) {
        g_f.tmpdir[0] = '\0';
        return -1;
    }
    return 0;
}

static void rm_rf(const char *dir)
{
    if (!dir[0])
        return;
    char *argv[] = {"rm", "-rf", (char *)dir, NULL};
    run_cmd(argv, 60000);
}

static void tmpdir_remove(void)
{
    rm_rf(g_f.tmpdir);
    g_f.tmpdir[0] = '\0';
}

static int faults_setup(void **state)
{
    (void)state;
    const char *http = it("BS_IT_HTTP_ENDPOINT");
    if (!http || !it("BS_IT_HTTP_CONN")) {
        print_message("env file lacks BS_IT_HTTP_ENDPOINT or BS_IT_HTTP_CONN\n");
        return -1;
    }
    /* the proxy forwards to the origin; the path keeps /devstoreaccount1 */
    char origin[256];
    const char *slash = strchr(strstr(http, "://") ? strstr(http, "://") + 3 : http, '/');
    snprintf(origin, sizeof(origin), "%.*s", slash ? (int)(slash - http) : (int)strlen(http), http);
    char script[1200], line[256];
    snprintf(script, sizeof(script), "%s/tests/tools/faultproxy.mjs", g_src);
    char *argv[] = {(char *)node_bin(), script, "--target", origin,
                    "--max-lifetime-s", "900",  NULL};
    if (child_start(&g_f.proxy, argv, "listening ", line, sizeof(line), CHILD_WAIT_MS) != 0)
        return -1;
    int port = atoi(strchr(line, ' ') + 1);
    snprintf(g_f.url, sizeof(g_f.url), "http://127.0.0.1:%d", port);
    snprintf(g_f.endpoint, sizeof(g_f.endpoint), "%s/devstoreaccount1", g_f.url);
    return tmpdir_make();
}

static int faults_teardown(void **state)
{
    (void)state;
    shim_reset();
    child_stop(&g_f.proxy);
    child_stop(&g_f.azurite);
    tmpdir_remove();
    return 0;
}

/* Shim on the proxy: shared key, fast retries. */
static void use_proxy(void)
{
    shim_reset();
    setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT, 1);
    char *k = connstr_get(it("BS_IT_HTTP_CONN"), "AccountKey");
    assert_non_null(k);
    setenv("AZURE_STORAGE_ACCOUNT_KEY", k, 1);
    free(k);
    setenv("BLOBSWARM_BLOB_ENDPOINT", g_f.endpoint, 1);
    setenv("BLOBSWARM_RETRY_BASE_MS", "20", 1);
    setenv("BLOBSWARM_RETRY_MAX_MS", "200", 1);
    /* the cases count GETs: small.bin is one piece, the 5 MiB blob three (2M, 2M, 1M+7) */
    setenv("BLOBSWARM_RANGE_BYTES", "2M", 1);
}

static void proxy_rule(const char *json)
{
    char url[300];
    snprintf(url, sizeof(url), "%s/__fault", g_f.url);
    long st = http_post_json(url, json);
    if (st != 200)
        fail_msg("POST %s %s answered %ld", url, json, st);
}

struct proxy_stats {
    long long requests, gets, ranged, heads, status, reset, truncate, stall;
};

static struct proxy_stats proxy_stats(void)
{
    char url[300];
    snprintf(url, sizeof(url), "%s/__stats", g_f.url);
    struct membuf *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    long st = http_get(url, m);
    if (st != 200)
        fail_msg("GET %s answered %ld", url, st);
    struct proxy_stats s = {
        json_int(m->data, "requests"),   json_int(m->data, "blobGets"),
        json_int(m->data, "rangedGets"), json_int(m->data, "heads"),
        json_int(m->data, "status"),     json_int(m->data, "reset"),
        json_int(m->data, "truncate"),   json_int(m->data, "stall"),
    };
    free(m);
    return s;
}

static void t_fault_passthrough(void **state)
{
    (void)state;
    use_proxy();
    proxy_rule("{\"kind\":\"none\"}");
    struct proxy_stats a = proxy_stats();
    assert_read_ok("data", UNI_BLOB, UNI_SEED, 0, UNI_SIZE);
    struct proxy_stats b = proxy_stats();
    assert_int_equal(b.gets - a.gets, 3);
    assert_int_equal(b.heads - a.heads, 1);
}

static void t_fault_503_retry_after(void **state)
{
    (void)state;
    use_proxy();
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 0, 10); /* properties cached */
    struct proxy_stats a = proxy_stats();
    proxy_rule("{\"kind\":\"status\",\"status\":503,\"count\":3,\"retryAfter\":1}");
    uint64_t t0 = now_ms();
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 0, SMALL_SIZE);
    uint64_t took = now_ms() - t0;
    struct proxy_stats b = proxy_stats();
    assert_int_equal(b.status - a.status, 3);
    assert_int_equal(b.gets - a.gets, 4); /* one piece: 3 refused + 1 served */
    /* three Retry-After: 1 waits, although the backoff itself is at most 200 ms */
    if (took < 2900)
        fail_msg("read took %llu ms: Retry-After (3 x 1 s) not honoured", (unsigned long long)took);
}

static void t_fault_reset_mid_body(void **state)
{
    (void)state;
    use_proxy();
    assert_read_ok("data", UNI_BLOB, UNI_SEED, 0, 10);
    struct proxy_stats a = proxy_stats();
    proxy_rule("{\"kind\":\"reset\",\"count\":2,\"afterBytes\":100000}");
    assert_read_ok("data", UNI_BLOB, UNI_SEED, 0, UNI_SIZE);
    struct proxy_stats b = proxy_stats();
    proxy_rule("{\"kind\":\"none\"}");
    assert_int_equal(b.reset - a.reset, 2);
    assert_int_equal(b.gets - a.gets, 5); /* 3 pieces + 2 resumed */
}

static void t_fault_truncated_body(void **state)
{
    (void)state;
    use_proxy();
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 0, 10);
    struct proxy_stats a = proxy_stats();
    proxy_rule("{\"kind\":\"truncate\",\"count\":1,\"afterBytes\":333333}");
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 5, SMALL_SIZE - 5);
    struct proxy_stats b = proxy_stats();
    proxy_rule("{\"kind\":\"none\"}");
    assert_int_equal(b.truncate - a.truncate, 1);
    assert_int_equal(b.gets - a.gets, 2);
}

static void t_fault_persistent_500(void **state)
{
    (void)state;
    use_proxy();
    setenv("BLOBSWARM_MAX_RETRIES", "2", 1);
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 0, 10);
    struct proxy_stats a = proxy_stats();
    proxy_rule("{\"kind\":\"status\",\"status\":500,\"count\":1000}");
    uint64_t t0 = now_ms();
    const char *m = read_fails("data", SMALL_BLOB, 0, SMALL_SIZE);
    uint64_t took = now_ms() - t0;
    struct proxy_stats b = proxy_stats();
    proxy_rule("{\"kind\":\"none\"}");
    assert_contains(m, "HTTP 500");
    assert_int_equal(b.gets - a.gets, 3); /* the first try and 2 retries */
    assert_true(took < 5000);
    /* the fault is gone: the next read works */
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 0, SMALL_SIZE);
}

static void t_fault_stall(void **state)
{
    (void)state;
    use_proxy();
    setenv("BLOBSWARM_STALL_TIMEOUT_MS", "1000", 1);
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 0, 10);
    struct proxy_stats a = proxy_stats();
    proxy_rule("{\"kind\":\"stall\",\"count\":1,\"ms\":6000}");
    uint64_t t0 = now_ms();
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 0, SMALL_SIZE);
    uint64_t took = now_ms() - t0;
    struct proxy_stats b = proxy_stats();
    assert_int_equal(b.stall - a.stall, 1);
    assert_true(b.gets - a.gets >= 2);
    print_message("    stalled read took %llu ms\n", (unsigned long long)took);
    if (took >= 5000)
        fail_msg("read took %llu ms: the 1 s stall timeout did not cut the 6 s stall",
                 (unsigned long long)took);
}

/* A transfer that stops after a burst of body bytes must be cut after the stall timeout too
 * (plus about a second of polling). curl's LOW_SPEED check alone averages the speed over
 * about five seconds, so it notices such a stall only ~5 s late. */
static void t_fault_stall_mid_body(void **state)
{
    (void)state;
    use_proxy();
    setenv("BLOBSWARM_STALL_TIMEOUT_MS", "1000", 1);
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 0, 10);
    struct proxy_stats a = proxy_stats();
    proxy_rule("{\"kind\":\"stall\",\"count\":1,\"ms\":12000,\"afterBytes\":200000}");
    uint64_t t0 = now_ms();
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 0, SMALL_SIZE);
    uint64_t took = now_ms() - t0;
    struct proxy_stats b = proxy_stats();
    proxy_rule("{\"kind\":\"none\"}");
    print_message("    read stalled mid-body took %llu ms, %lld GETs\n", (unsigned long long)took,
                  b.gets - a.gets);
    assert_int_equal(b.stall - a.stall, 1);
    if (took >= 5000)
        fail_msg("read took %llu ms: the 1 s stall timeout did not cut the 12 s stall",
                 (unsigned long long)took);
}

/* The properties request (HEAD) is retried like the GETs. */
static void t_fault_head_503(void **state)
{
    (void)state;
    use_proxy();
    struct proxy_stats a = proxy_stats();
    proxy_rule("{\"kind\":\"status\",\"status\":503,\"count\":2,\"retryAfter\":0,"
               "\"methods\":[\"HEAD\"]}");
    assert_read_ok("data", TINY_BLOB, TINY_SEED, 0, 8);
    struct proxy_stats b = proxy_stats();
    proxy_rule("{\"kind\":\"none\"}");
    assert_int_equal(b.status - a.status, 2);
    assert_int_equal(b.heads - a.heads, 3);
}

/* A Retry-After longer than what is left of the deadline fails the read at once instead of
 * sleeping into the deadline. */
static void t_fault_retry_after_past_deadline(void **state)
{
    (void)state;
    use_proxy();
    setenv("BLOBSWARM_DEADLINE_MS", "3000", 1);
    assert_read_ok("data", SMALL_BLOB, SMALL_SEED, 0, 10);
    struct proxy_stats a = proxy_stats();
    proxy_rule("{\"kind\":\"status\",\"status\":503,\"count\":1000,\"retryAfter\":30}");
    uint64_t t0 = now_ms();
    const char *m = read_fails("data", SMALL_BLOB, 0, 1000);
    uint64_t took = now_ms() - t0;
    struct proxy_stats b = proxy_stats();
    proxy_rule("{\"kind\":\"none\"}");
    assert_contains(m, "HTTP 503");
    assert_int_equal(b.gets - a.gets, 1);
    if (took > 1500)
        fail_msg("read took %llu ms to give up on a 30 s Retry-After with a 3 s deadline",
                 (unsigned long long)took);
}

static void t_fault_blob_overwritten(void **state)
{
    (void)state;
    const char *conn = it("BS_IT_HTTP_CONN");
    char blob[128];
    snprintf(blob, sizeof(blob), "it-direct/overwrite-%d.bin", (int)getpid());
    assert_int_equal(upload_stream(conn, "data", blob, 11, OVERWRITE_SIZE, g_f.tmpdir), 0);
    use_proxy();
    assert_read_ok("data", blob, 11, 0, 100000); /* first read of the "load" */
    assert_int_equal(upload_stream(conn, "data", blob, 12, OVERWRITE_SIZE, g_f.tmpdir), 0);
    const char *m = read_fails("data", blob, 100000, 100000);
    assert_contains(m, "412");
    assert_contains(m, "changed");
    /* the shim forgot the ETag: a reload reads the new version whole */
    assert_read_ok("data", blob, 12, 0, OVERWRITE_SIZE);
    /* and again after a shutdown */
    g_shim.shutdown();
    assert_read_ok("data", blob, 12, 0, OVERWRITE_SIZE);
    fixture_cmd(conn, "delete", "data", blob);
}

/* A private Azurite holding one 64 MiB blob, for the cases that kill or freeze it. */
static void outage_azurite_start(void)
{
    if (g_f.azurite.pid > 0)
        return;
    char bin[1200], line[512];
    snprintf(bin, sizeof(bin), "%s/node_modules/.bin/azurite-blob", g_src);
    char *argv[] = {bin,
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    "0",
                    "--inMemoryPersistence",
                    "--silent",
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    NULL};
    if (child_start(&g_f.azurite, argv, "listens on", line, sizeof(line), CHILD_WAIT_MS) != 0)
        fail_msg("cannot start a private Azurite (%s)", bin);
    const char *p = strstr(line, "127.0.0.1:");
    assert_non_null(p);
    int port = atoi(p + 10);
    snprintf(g_f.az_endpoint, sizeof(g_f.az_endpoint), "http://127.0.0.1:%d/devstoreaccount1",
             port);
    snprintf(g_f.az_conn, sizeof(g_f.az_conn),
             "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=%s;"
             "BlobEndpoint=%s;",
             account_key(), g_f.az_endpoint);
    assert_int_equal(fixture_cmd(g_f.az_conn, "container", "data", NULL), 0);
    assert_int_equal(
        upload_stream(g_f.az_conn, "data", "outage.bin", OUTAGE_SEED, OUTAGE_SIZE, g_f.tmpdir), 0);
}

static void use_private_azurite(void)
{
    shim_reset();
    setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT, 1);
    setenv("AZURE_STORAGE_ACCOUNT_KEY", account_key(), 1);
    setenv("BLOBSWARM_BLOB_ENDPOINT", g_f.az_endpoint, 1);
    setenv("BLOBSWARM_DEADLINE_MS", "4000", 1);
    setenv("BLOBSWARM_RANGE_BYTES", "1M", 1);
}

struct outage_read {
    unsigned char *buf;
    ssize_t rc;
    char err[ERRBUF];
    uint64_t took_ms;
    atomic_int done;
};

static void *outage_reader(void *p)
{
    struct outage_read *o = p;
    uint64_t t0 = now_ms();
    o->rc =
        g_shim.read(ACCOUNT, "data", "outage.bin", o->buf, 0, OUTAGE_SIZE, o->err, sizeof(o->err));
    o->took_ms = now_ms() - t0;
    atomic_store(&o->done, 1);
    return NULL;
}

/* Starts the 64 MiB read, then sends sig to Azurite 100 ms later (less if the read was
 * faster than that: up to three tries). The read must fail, and within deadline + 3 s. */
static void outage_case(int sig)
{
    outage_azurite_start();
    use_private_azurite();
    struct outage_read *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    o->buf = malloc(OUTAGE_SIZE);
    assert_non_null(o->buf);
    assert_read_ok("data", "outage.bin", OUTAGE_SEED, OUTAGE_SIZE - 5, 5); /* properties */
    static const long delays_ms[] = {100, 40, 10};
    int signalled = 0;
    for (size_t attempt = 0; attempt < 3 && !signalled; attempt++) {
        pthread_t th;
        atomic_store(&o->done, 0);
        assert_int_equal(pthread_create(&th, NULL, outage_reader, o), 0);
        struct timespec ts = {0, delays_ms[attempt] * 1000000L};
        nanosleep(&ts, NULL);
        if (!atomic_load(&o->done)) {
            kill(g_f.azurite.pid, sig);
            signalled = 1;
        }
        struct timespec limit;
        clock_gettime(CLOCK_REALTIME, &limit);
        limit.tv_sec += 4 + 3 + 5; /* deadline + 3 s, plus slack before declaring a hang */
        if (pthread_timedjoin_np(th, NULL, &limit) != 0) {
            kill(g_f.azurite.pid, SIGKILL);
            print_message("blob_read still blocked %d s after %s: the shim hangs\n", 12,
                          strsignal(sig));
            fflush(NULL);
            _exit(1); /* the thread is stuck inside the library: nothing safe is left */
        }
        if (!signalled)
            print_message("    the read finished within %ld ms; retrying with less delay\n",
                          delays_ms[attempt]);
    }
    if (!signalled)
        fail_msg("64 MiB read always finished before the signal: case inconclusive");
    print_message("    after %s: rc=%zd in %llu ms: %s\n", strsignal(sig), o->rc,
                  (unsigned long long)o->took_ms, o->err);
    if (sig == SIGSTOP)
        kill(g_f.azurite.pid, SIGCONT);
    ssize_t rc = o->rc;
    uint64_t took = o->took_ms;
    char err[ERRBUF];
    snprintf(err, sizeof(err), "%s", o->err);
    free(o->buf);
    free(o);
    assert_int_equal(rc, -1);
    assert_no_secrets(err);
    if (took > 4000 + 3000)
        fail_msg("blob_read took %llu ms (deadline 4000 ms + 3 s)", (unsigned long long)took);
}

static void t_outage_sigstop(void **state)
{
    (void)state;
    outage_case(SIGSTOP);
    /* Azurite runs again: the same shim state (no shutdown) reads the blob */
    assert_read_ok("data", "outage.bin", OUTAGE_SEED, 12345, 3 << 20);
}

static void t_outage_sigkill(void **state)
{
    (void)state;
    outage_case(SIGKILL);
    wait_bounded(g_f.azurite.pid, 5000);
    close(g_f.azurite.out_fd);
    g_f.azurite.pid = 0;
    /* nothing listens any more: a new read fails promptly, not at the deadline */
    uint64_t t0 = now_ms();
    setenv("BLOBSWARM_MAX_RETRIES", "1", 1);
    g_shim.shutdown();
    const char *m = read_fails("data", "outage.bin", 0, 100);
    assert_contains(m, "transport error");
    assert_true(now_ms() - t0 < 4000 + 3000);
}

/* ---- names: blob names that need care in URLs and in the Shared Key signature --------- */

static const char *const g_odd_names[] = {
    "odd/a+b#c?d&e=f;g@h'i(j)~k,l$m!n*o.bin",
    "sp  ace/x%20y%2Fz%.bin",
    "emoji/\xf0\x9f\x98\x80 \xc3\xbc \xce\xa9.bin",
    "trail/dots..bin",
    "deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z.bin",
};
#define N_ODD       (sizeof(g_odd_names) / sizeof(g_odd_names[0]))
#define ODD_SEED(i) (31 + (i))
#define ODD_SIZE    70000

static int names_setup(void **state)
{
    (void)state;
    const char *conn = it("BS_IT_HTTP_CONN");
    if (!conn || tmpdir_make() != 0)
        return -1;
    char paths[N_ODD][1200] = {{0}};
    const char *files[N_ODD];
    int rc = 0;
    for (size_t i = 0; i < N_ODD && rc == 0; i++) {
        snprintf(paths[i], sizeof(paths[i]), "%s/odd-%zu.bin", g_f.tmpdir, i);
        files[i] = paths[i];
        rc = write_stream_file(paths[i], ODD_SEED(i), ODD_SIZE);
    }
    if (rc == 0)
        rc = fixture_batch("upload", conn, "data", g_odd_names, files, N_ODD, g_f.tmpdir);
    for (size_t i = 0; i < N_ODD; i++)
        if (paths[i][0])
            unlink(paths[i]);
    return rc == 0 ? 0 : -1;
}

static int names_teardown(void **state)
{
    (void)state;
    shim_reset();
    const char *conn = it("BS_IT_HTTP_CONN");
    if (conn)
        fixture_batch("delete", conn, "data", g_odd_names, NULL, N_ODD, g_f.tmpdir);
    tmpdir_remove();
    return 0;
}

static void check_odd_names(void)
{
    setenv("BLOBSWARM_RANGE_BYTES", "64K", 1); /* two pieces each */
    for (size_t i = 0; i < N_ODD; i++) {
        assert_read_ok("data", g_odd_names[i], ODD_SEED(i), 0, ODD_SIZE);
        assert_read_ok("data", g_odd_names[i], ODD_SEED(i), ODD_SIZE - 1, 1);
    }
}

static void t_names_sharedkey(void **state)
{
    (void)state;
    shim_reset();
    use_conn_http();
    check_odd_names();
}

static void t_names_sas(void **state)
{
    (void)state;
    shim_reset();
    setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT, 1);
    setenv("AZURE_STORAGE_SAS_TOKEN", need("BS_IT_ACCOUNT_SAS_HTTP"), 1);
    setenv("BLOBSWARM_BLOB_ENDPOINT", need("BS_IT_HTTP_ENDPOINT"), 1);
    check_odd_names();
}

/* ---- main ---------------------------------------------------------------------------------- */

static int selected(int argc, char **argv, int first, const char *group)
{
    if (first >= argc)
        return 1;
    for (int i = first; i < argc; i++) {
        size_t n = strlen(argv[i]);
        if (strcmp(argv[i], group) == 0 ||
            (strncmp(argv[i], group, n) == 0 && group[n] == '-')) /* "auth" selects auth-* */
            return 1;
    }
    return 0;
}

static int shim_load(const char *path)
{
    g_shim.handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!g_shim.handle) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        return -1;
    }
    *(void **)&g_shim.version = dlsym(g_shim.handle, "cache_abi_version");
    *(void **)&g_shim.read = dlsym(g_shim.handle, "blob_read");
    *(void **)&g_shim.shutdown = dlsym(g_shim.handle, "shutdown");
    if (!g_shim.version || !g_shim.read || !g_shim.shutdown) {
        fprintf(stderr, "%s lacks cache_abi_version, blob_read or shutdown\n", path);
        return -1;
    }
    if (g_shim.version() != BS_CACHE_ABI_VERSION) {
        fprintf(stderr, "%s: ABI version %u\n", path, g_shim.version());
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int first = 1;
    const char *lib = getenv("BS_SHIM_LIB");
    if (argc > 1 && (strchr(argv[1], '/') || strstr(argv[1], ".so"))) {
        lib = argv[1];
        first = 2;
    }
    if (!lib) {
        fprintf(stderr, "usage: %s LIB [GROUP...] (or set BS_SHIM_LIB)\n", argv[0]);
        return 2;
    }
    const char *dir = getenv("BS_IT_DIR");
    char envpath[1024];
    snprintf(envpath, sizeof(envpath), "%s/env", dir ? dir : ".");
    int erc = env_file_load(envpath);
    if (erc != 0) {
        fprintf(stderr, "cannot read %s: %s (set BS_IT_DIR to the harness directory)\n", envpath,
                strerror(-erc));
        return 2;
    }
    const char *src = getenv("BS_SOURCE_DIR");
    snprintf(g_src, sizeof(g_src), "%s", src && *src ? src : BS_SOURCE_DIR);
    signal(SIGPIPE, SIG_IGN);
    /* everything here is on 127.0.0.1: no proxy of the caller's environment may intervene */
    static const char *const proxies[] = {"http_proxy",  "https_proxy", "HTTP_PROXY",
                                          "HTTPS_PROXY", "ALL_PROXY",   "all_proxy"};
    for (size_t i = 0; i < sizeof(proxies) / sizeof(proxies[0]); i++)
        unsetenv(proxies[i]);
    setenv("NO_PROXY", "127.0.0.1,localhost", 1);
    setenv("no_proxy", "127.0.0.1,localhost", 1);
    curl_global_init(CURL_GLOBAL_ALL);
    if (shim_load(lib) != 0)
        return 2;
    secrets_collect();
    g_shim.shutdown(); /* before any initialisation: must be harmless */
    shim_reset();

    int failed = 0;
    static const struct CMUnitTest auth_tests[] = {
        cmocka_unit_test(t_first_byte),   cmocka_unit_test(t_last_byte),
        cmocka_unit_test(t_whole_small),  cmocka_unit_test(t_random_reads),
        cmocka_unit_test(t_unicode_name), cmocka_unit_test(t_tiny),
        cmocka_unit_test(t_empty),
    };
    for (size_t i = 0; i < N_MODES; i++) {
        char name[64];
        snprintf(name, sizeof(name), "auth-%s", g_modes[i].name);
        if (!selected(argc, argv, first, name))
            continue;
        g_mode = &g_modes[i];
        print_message("[ GROUP    ] %s\n", name);
        failed +=
            _cmocka_run_group_tests(name, auth_tests, sizeof(auth_tests) / sizeof(auth_tests[0]),
                                    mode_setup, mode_teardown);
    }

    static const struct CMUnitTest error_tests[] = {
        cmocka_unit_test_setup(t_err_missing_blob, errors_setup),
        cmocka_unit_test_setup(t_err_missing_container, errors_setup),
        cmocka_unit_test_setup(t_err_wrong_key, errors_setup),
        cmocka_unit_test_setup(t_err_wrong_key_https, errors_setup),
        cmocka_unit_test_setup(t_err_sas_other_container, errors_setup),
        cmocka_unit_test_setup(t_err_expired_sas, errors_setup),
        cmocka_unit_test_setup(t_err_past_end, errors_setup),
        cmocka_unit_test_setup(t_err_bad_client_secret, errors_setup),
        cmocka_unit_test_setup(t_err_bad_range_bytes, errors_setup),
        cmocka_unit_test_setup(t_err_null_error_buf, errors_setup),
        cmocka_unit_test_setup(t_err_small_error_buf, errors_setup),
    };
    if (selected(argc, argv, first, "errors")) {
        print_message("[ GROUP    ] errors\n");
        failed += cmocka_run_group_tests_name("errors", error_tests, NULL, mode_teardown);
    }

    static const struct CMUnitTest concurrency_tests[] = {
        cmocka_unit_test(t_concurrent_big),
    };
    if (selected(argc, argv, first, "concurrency")) {
        print_message("[ GROUP    ] concurrency\n");
        failed +=
            cmocka_run_group_tests_name("concurrency", concurrency_tests, NULL, mode_teardown);
    }

    static const struct CMUnitTest lifecycle_tests[] = {
        cmocka_unit_test(t_shutdown_idle_then_reuse),
        cmocka_unit_test(t_shutdown_twice),
        cmocka_unit_test(t_three_cycles),
        cmocka_unit_test(t_shutdown_during_reads),
    };
    if (selected(argc, argv, first, "lifecycle")) {
        print_message("[ GROUP    ] lifecycle\n");
        failed += cmocka_run_group_tests_name("lifecycle", lifecycle_tests, lifecycle_setup,
                                              mode_teardown);
    }

    static const struct CMUnitTest token_tests[] = {
        cmocka_unit_test(t_token_cached),
        cmocka_unit_test(t_token_refreshed),
        cmocka_unit_test(t_token_early_refresh_no_wait),
        cmocka_unit_test(t_imds_transient_failure),
    };
    if (selected(argc, argv, first, "tokencache")) {
        print_message("[ GROUP    ] tokencache\n");
        failed += cmocka_run_group_tests_name("tokencache", token_tests, NULL, mode_teardown);
    }

    static const struct CMUnitTest name_tests[] = {
        cmocka_unit_test(t_names_sharedkey),
        cmocka_unit_test(t_names_sas),
    };
    if (selected(argc, argv, first, "names")) {
        print_message("[ GROUP    ] names\n");
        failed += cmocka_run_group_tests_name("names", name_tests, names_setup, names_teardown);
    }

    static const struct CMUnitTest fault_tests[] = {
        cmocka_unit_test(t_fault_passthrough),
        cmocka_unit_test(t_fault_503_retry_after),
        cmocka_unit_test(t_fault_reset_mid_body),
        cmocka_unit_test(t_fault_truncated_body),
        cmocka_unit_test(t_fault_persistent_500),
        cmocka_unit_test(t_fault_stall),
        cmocka_unit_test(t_fault_stall_mid_body),
        cmocka_unit_test(t_fault_head_503),
        cmocka_unit_test(t_fault_retry_after_past_deadline),
        cmocka_unit_test(t_fault_blob_overwritten),
        cmocka_unit_test(t_outage_sigstop),
        cmocka_unit_test(t_outage_sigkill),
    };
    if (selected(argc, argv, first, "faults")) {
        print_message("[ GROUP    ] faults\n");
        failed += cmocka_run_group_tests_name("faults", fault_tests, faults_setup, faults_teardown);
    }

    g_shim.shutdown();
    curl_global_cleanup();
    return failed ? 1 : 0;
}
