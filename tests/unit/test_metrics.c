/* Unit tests for agent/metrics: the exact exposition text of a small registry, escaping,
 * number formatting, rejected registrations, the series limit (dropped counter, no growth),
 * exact totals under 8-thread contention, and rendering while other threads update.
 * `unit_metrics --write-sample FILE` instead writes a sample exposition for promtool
 * (tests/tools/check-metrics.sh) and runs no cmocka test. */
#include <malloc.h>
#include <pthread.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "metrics.h"

#define DROPPED "blobswarm_metrics_dropped_series_total"
#define DROPPED_HEADER                                                                             \
    "# HELP blobswarm_metrics_dropped_series_total Metric updates dropped because their family "   \
    "already had its maximum number of series or their label values did not match the "            \
    "family's label names.\n"                                                                      \
    "# TYPE blobswarm_metrics_dropped_series_total counter\n"

static char *render(struct bs_metrics *m)
{
    size_t len = (size_t)-1;
    char *text = bs_metrics_render(m, &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    return text;
}

/* The value of the sample line `series` ("name{labels}") in `text`; fails if absent. */
static double sample_value(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; *line;) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        const char *nl = strchr(line, '\n');
        if (!nl)
            break;
        line = nl + 1;
    }
    fail_msg("no sample line \"%s\" in:\n%s", series, text);
    return 0;
}

/* Sum of the values of every sample line starting with `prefix`. */
static double sum_prefix(const char *text, const char *prefix)
{
    double sum = 0;
    size_t k = strlen(prefix);
    for (const char *line = text; *line;) {
        if (strncmp(line, prefix, k) == 0)
            sum += strtod(strchr(line, ' ') + 1, NULL);
        const char *nl = strchr(line, '\n');
        if (!nl)
            break;
        line = nl + 1;
    }
    return sum;
}

static int count_prefix(const char *text, const char *prefix)
{
    int n = 0;
    size_t k = strlen(prefix);
    for (const char *line = text; *line;) {
        n += strncmp(line, prefix, k) == 0;
        const char *nl = strchr(line, '\n');
        if (!nl)
            break;
        line = nl + 1;
    }
    return n;
}

static void test_render_exact(void **state)
{
    (void)state;
    struct bs_metrics *m = bs_metrics_create();
    assert_non_null(m);
    struct bs_metric *req = bs_metrics_counter(m, "bs_requests_total", "Requests served.", NULL);
    struct bs_metric *bytes =
        bs_metrics_counter(m, "bs_bytes", "Bytes served by source and kind.", "source,kind");
    struct bs_metric *infl = bs_metrics_gauge(m, "bs_inflight", "Requests in flight.", NULL);
    struct bs_metric *fill = bs_metrics_gauge(m, "bs_cache_fill_ratio", "Fill.", "tier");
    static const double bounds[] = {0.25, 1, 4};
    struct bs_metric *lat =
        bs_metrics_histogram(m, "bs_latency_seconds", "Latency.", "op", bounds, 3);
    struct bs_metric *size = bs_metrics_histogram(m, "bs_size_bytes", "Sizes.", NULL, bounds, 3);
    struct bs_metric *unused = bs_metrics_gauge(m, "bs_unused", "Never set.", "x");
    assert_non_null(req);
    assert_non_null(bytes);
    assert_non_null(infl);
    assert_non_null(fill);
    assert_non_null(lat);
    assert_non_null(size);
    assert_non_null(unused);

    bs_metric_add(req, NULL, 3);
    bs_metric_add(bytes, "peer,miss", 0.5);
    bs_metric_add(bytes, "local,hit", 1024);
    bs_metric_add(bytes, "local,hit", 1);
    bs_metric_set(infl, NULL, 5);
    bs_metric_add(infl, NULL, -2);
    bs_metric_set(fill, "ram", 1.5);
    bs_metric_add(fill, "ram", 0.25);
    bs_metric_set(fill, "disk", -3);
    bs_metric_observe(lat, "get", 0.25); /* equal to a bound: in that bucket */
    bs_metric_observe(lat, "get", 0.5);
    bs_metric_observe(lat, "get", 1); /* equal to a bound */
    bs_metric_observe(lat, "get", 8); /* above every bound: +Inf only */
    bs_metric_observe(lat, "put", 4);

    char *text = render(m);
    assert_string_equal(text, "# HELP bs_requests_total Requests served.\n"
                              "# TYPE bs_requests_total counter\n"
                              "bs_requests_total 3\n"
                              "# HELP bs_bytes_total Bytes served by source and kind.\n"
                              "# TYPE bs_bytes_total counter\n"
                              "bs_bytes_total{source=\"peer\",kind=\"miss\"} 0.5\n"
                              "bs_bytes_total{source=\"local\",kind=\"hit\"} 1025\n"
                              "# HELP bs_inflight Requests in flight.\n"
                              "# TYPE bs_inflight gauge\n"
                              "bs_inflight 3\n"
                              "# HELP bs_cache_fill_ratio Fill.\n"
                              "# TYPE bs_cache_fill_ratio gauge\n"
                              "bs_cache_fill_ratio{tier=\"ram\"} 1.75\n"
                              "bs_cache_fill_ratio{tier=\"disk\"} -3\n"
                              "# HELP bs_latency_seconds Latency.\n"
                              "# TYPE bs_latency_seconds histogram\n"
                              "bs_latency_seconds_bucket{op=\"get\",le=\"0.25\"} 1\n"
                              "bs_latency_seconds_bucket{op=\"get\",le=\"1\"} 3\n"
                              "bs_latency_seconds_bucket{op=\"get\",le=\"4\"} 3\n"
                              "bs_latency_seconds_bucket{op=\"get\",le=\"+Inf\"} 4\n"
                              "bs_latency_seconds_sum{op=\"get\"} 9.75\n"
                              "bs_latency_seconds_count{op=\"get\"} 4\n"
                              "bs_latency_seconds_bucket{op=\"put\",le=\"0.25\"} 0\n"
                              "bs_latency_seconds_bucket{op=\"put\",le=\"1\"} 0\n"
                              "bs_latency_seconds_bucket{op=\"put\",le=\"4\"} 1\n"
                              "bs_latency_seconds_bucket{op=\"put\",le=\"+Inf\"} 1\n"
                              "bs_latency_seconds_sum{op=\"put\"} 4\n"
                              "bs_latency_seconds_count{op=\"put\"} 1\n"
                              "# HELP bs_size_bytes Sizes.\n"
                              "# TYPE bs_size_bytes histogram\n"
                              "bs_size_bytes_bucket{le=\"0.25\"} 0\n"
                              "bs_size_bytes_bucket{le=\"1\"} 0\n"
                              "bs_size_bytes_bucket{le=\"4\"} 0\n"
                              "bs_size_bytes_bucket{le=\"+Inf\"} 0\n"
                              "bs_size_bytes_sum 0\n"
                              "bs_size_bytes_count 0\n" DROPPED_HEADER DROPPED " 0\n");
    free(text);
    bs_metrics_destroy(m);
}

static void test_escaping(void **state)
{
    (void)state;
    struct bs_metrics *m = bs_metrics_create();
    struct bs_metric *c =
        bs_metrics_counter(m, "bs_esc_total", "Back\\slash, \"quotes\" and\nnewline.", "a,b");
    assert_non_null(c);
    bs_metric_add(c, "say \"hi\",C:\\dir\\", 1);
    bs_metric_add(c, "line1\nline2,", 2); /* the second value is empty */
    bs_metric_add(c, "z\xc3\xbcrich,\xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x90\x9d",
                  3); /* UTF-8 as is */
    /* Not UTF-8: a stray byte, a truncated sequence, an overlong '/', a surrogate, past
     * U+10FFFF. Dropped, as promtool would refuse the whole exposition. */
    static const char *const bad[] = {"\xff,x", "x,\xc3", "\xc0\xaf,x", "\xed\xa0\x80,x",
                                      "\xf4\x90\x80\x80,x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        bs_metric_add(c, bad[i], 1);
    assert_null(bs_metrics_gauge(m, "bs_bad_help", "caf\xe9", NULL)); /* Latin-1 */
    char *text = render(m);
    assert_non_null(strstr(text, "# HELP bs_esc_total Back\\\\slash, \"quotes\" and\\nnewline.\n"));
    assert_non_null(strstr(text, "\nbs_esc_total{a=\"say \\\"hi\\\"\",b=\"C:\\\\dir\\\\\"} 1\n"));
    assert_non_null(strstr(text, "\nbs_esc_total{a=\"line1\\nline2\",b=\"\"} 2\n"));
    assert_non_null(strstr(
        text,
        "\nbs_esc_total{a=\"z\xc3\xbcrich\",b=\"\xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x90\x9d\"} 3\n"));
    assert_int_equal(count_prefix(text, "bs_esc_total{"), 3);
    assert_true(sample_value(text, DROPPED) == 5);
    free(text);
    bs_metrics_destroy(m);
}

static void test_number_format(void **state)
{
    (void)state;
    struct bs_metrics *m = bs_metrics_create();
    struct bs_metric *g = bs_metrics_gauge(m, "bs_num", "Numbers.", "case");
    static const struct {
        const char *label;
        double v;
        const char *want;
    } cases[] = {
        {"tenth", 0.1, "0.1"},
        {"sum", 0.1 + 0.2, "0.30000000000000004"},
        {"nan", NAN, "NaN"},
        {"pinf", INFINITY, "+Inf"},
        {"ninf", -INFINITY, "-Inf"},
        {"bytes", 1234567890123456.0, "1234567890123456"},
        {"two53", 9007199254740993.0, "9007199254740992"},
        {"huge", 1e20, "1e+20"},
        {"tiny", 1e-300, "1e-300"},
        {"neg", -2.5, "-2.5"},
        {"zero", 0, "0"},
    };
    char line[128];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        bs_metric_set(g, cases[i].label, cases[i].v);
    char *text = render(m);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(line, sizeof(line), "\nbs_num{case=\"%s\"} %s\n", cases[i].label, cases[i].want);
        if (!strstr(text, line))
            fail_msg("missing %s in:\n%s", line + 1, text);
    }
    free(text);
    bs_metrics_destroy(m);
}

static void test_registration(void **state)
{
    (void)state;
    struct bs_metrics *m = bs_metrics_create();
    static const double asc[] = {1, 2}, desc[] = {2, 1}, dup[] = {1, 1}, nan[] = {NAN};
    static const double with_inf[] = {1, INFINITY};

    char err[200];
    assert_null(bs_metrics_counter(NULL, "a_total", "h", NULL));
    assert_int_equal(bs_metrics_error(m, err, sizeof(err)), 0);
    assert_null(bs_metrics_counter(m, "", "h", NULL));
    /* A refused registration is remembered: the agent refuses to start rather than run with a
     * metric that silently never counts. The first refusal is the one named. */
    assert_int_equal(bs_metrics_error(m, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "(unnamed)"));
    assert_null(bs_metrics_counter(m, "1abc_total", "h", NULL));
    assert_null(bs_metrics_counter(m, "a-b_total", "h", NULL));
    assert_null(bs_metrics_gauge(m, "bs_g", NULL, NULL));
    assert_null(bs_metrics_gauge(m, "bs_g", "", NULL));
    assert_null(bs_metrics_gauge(m, "bs_g", "h", "a,,b"));
    assert_null(bs_metrics_gauge(m, "bs_g", "h", "a,a"));
    assert_null(bs_metrics_gauge(m, "bs_g", "h", "__x"));
    assert_null(bs_metrics_gauge(m, "bs_g", "h", "a:b"));
    assert_null(bs_metrics_gauge(m, "bs_g", "h", "a,b,c,d,e,f,g,h,i")); /* 9 labels */
    assert_null(bs_metrics_histogram(m, "bs_h", "h", "le", asc, 2));
    assert_null(bs_metrics_histogram(m, "bs_h", "h", NULL, desc, 2));
    assert_null(bs_metrics_histogram(m, "bs_h", "h", NULL, dup, 2));
    assert_null(bs_metrics_histogram(m, "bs_h", "h", NULL, nan, 1));
    assert_null(bs_metrics_histogram(m, "bs_h", "h", NULL, NULL, 2));
    assert_null(bs_metrics_counter(m, DROPPED, "h", NULL));

    /* A counter without the suffix gets it, and then owns that name: the same definition
     * again gives the same family, any other is refused. */
    struct bs_metric *hits = bs_metrics_counter(m, "bs_hits", "Hits.", NULL);
    assert_non_null(hits);
    assert_ptr_equal(bs_metrics_counter(m, "bs_hits_total", "Hits.", NULL), hits);
    assert_null(bs_metrics_gauge(m, "bs_hits_total", "Hits.", NULL));
    assert_null(bs_metrics_counter(m, "bs_hits_total", "Other help.", NULL));
    struct bs_metrics *m2 = bs_metrics_create();
    assert_non_null(bs_metrics_counter(m2, "bs_hits", "Hits.", NULL));
    assert_non_null(bs_metrics_counter(m2, "bs_hits_total", "Hits.", NULL));
    assert_int_equal(bs_metrics_error(m2, err, sizeof(err)), 0);
    assert_null(bs_metrics_counter(m2, "bs_hits_total", "Other help.", NULL));
    assert_int_equal(bs_metrics_error(m2, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "bs_hits_total"));
    bs_metrics_destroy(m2);
    assert_null(bs_metrics_counter(m, "bs_hits_total", "Hits.", "a"));
    assert_non_null(bs_metrics_gauge(m, "ns:bs_g", "Colons are allowed in names.", "a,b"));
    assert_non_null(bs_metrics_histogram(m, "bs_h", "h", "op", with_inf, 2)); /* +Inf dropped */
    assert_non_null(bs_metrics_histogram(m, "bs_h0", "Only +Inf.", NULL, NULL, 0));

    bs_metric_add(hits, NULL, 2);
    char *text = render(m);
    assert_non_null(strstr(text, "# TYPE bs_hits_total counter\nbs_hits_total 2\n"));
    assert_int_equal(count_prefix(text, "# TYPE bs_hits_total"), 1);
    assert_null(strstr(text, "ns:bs_g")); /* labelled, no series yet */
    assert_string_equal(strstr(text, "# HELP bs_h0"),
                        "# HELP bs_h0 Only +Inf.\n"
                        "# TYPE bs_h0 histogram\n"
                        "bs_h0_bucket{le=\"+Inf\"} 0\n"
                        "bs_h0_sum 0\n"
                        "bs_h0_count 0\n" DROPPED_HEADER DROPPED " 0\n");
    free(text);

    static const double with_inf_copy[] = {1, INFINITY}, other[] = {2};
    struct bs_metric *h = bs_metrics_histogram(m, "bs_h2", "h", "op", with_inf, 2);
    assert_ptr_equal(bs_metrics_histogram(m, "bs_h2", "h", "op", with_inf_copy, 2), h);
    assert_ptr_equal(bs_metrics_histogram(m, "bs_h2", "h", "op", with_inf_copy, 1), h);
    assert_null(bs_metrics_histogram(m, "bs_h2", "h", "op", other, 1));
    assert_null(bs_metrics_histogram(m, "bs_h2", "h", "op,x", with_inf, 2));
    assert_null(bs_metrics_histogram(m, "bs_h2", "h", "x", with_inf, 2));
    bs_metric_observe(h, "x", 3);
    text = render(m);
    assert_int_equal(count_prefix(text, "bs_h2_bucket{"), 2);
    assert_int_equal(sample_value(text, "bs_h2_bucket{op=\"x\",le=\"+Inf\"}"), 1);
    free(text);
    bs_metrics_destroy(m);
}

/* Updates that cannot land anywhere are dropped and counted; the wrong kind of update and
 * negative counter increments are ignored without counting. */
static void test_bad_updates(void **state)
{
    (void)state;
    struct bs_metrics *m = bs_metrics_create();
    struct bs_metric *c = bs_metrics_counter(m, "bs_c_total", "c", "a,b");
    struct bs_metric *plain = bs_metrics_counter(m, "bs_p_total", "p", NULL);
    struct bs_metric *h = bs_metrics_histogram(m, "bs_h", "h", NULL, NULL, 0);

    bs_metric_add(c, "x", 1);       /* one value for two labels */
    bs_metric_add(c, "x,y,z", 1);   /* three: a comma inside a value */
    bs_metric_add(c, NULL, 1);      /* none */
    bs_metric_add(plain, "x", 1);   /* a value for no label */
    bs_metric_add(plain, "", 1);    /* "" is the same as NULL without labels */
    bs_metric_add(plain, NULL, -1); /* counters never go down */
    bs_metric_add(plain, NULL, NAN);
    bs_metric_observe(plain, NULL, 1);
    bs_metric_add(h, NULL, 1);
    bs_metric_set(h, NULL, 1);
    bs_metric_add(NULL, "x", 1);
    bs_metric_set(NULL, "x", 1);
    bs_metric_observe(NULL, "x", 1);

    char *text = render(m);
    assert_true(sample_value(text, "bs_p_total") == 1);
    free(text);
    bs_metric_set(plain, NULL, 7); /* a counter mirroring an external total */
    text = render(m);
    assert_null(strstr(text, "bs_c_total{"));
    assert_true(sample_value(text, "bs_p_total") == 7);
    assert_int_equal(sample_value(text, "bs_h_count"), 0);
    assert_int_equal(sample_value(text, DROPPED), 4);
    free(text);
    bs_metrics_destroy(m);
}

/* Bytes the allocator has handed out and not taken back: the sanitizer's count when built
 * with one (its allocator replaces glibc's), else glibc's. */
size_t __sanitizer_get_current_allocated_bytes(void) __attribute__((weak));
static size_t heap_in_use(void)
{
    if (__sanitizer_get_current_allocated_bytes)
        return __sanitizer_get_current_allocated_bytes();
    return mallinfo2().uordblks;
}

static void test_series_limit(void **state)
{
    (void)state;
    struct bs_metrics *m = bs_metrics_create();
    struct bs_metric *c = bs_metrics_counter(m, "bs_lim_total", "Limited.", "id");
    struct bs_metric *h = bs_metrics_histogram(m, "bs_limh", "Limited.", "id", NULL, 0);
    char values[64];
    for (int i = 0; i < BS_METRICS_MAX_SERIES; i++) {
        snprintf(values, sizeof(values), "s%d", i);
        bs_metric_add(c, values, 1);
        bs_metric_observe(h, values, 1);
    }

    size_t before = heap_in_use();
    for (int i = BS_METRICS_MAX_SERIES; i < 10000 + BS_METRICS_MAX_SERIES; i++) {
        snprintf(values, sizeof(values), "s%d", i);
        bs_metric_add(c, values, 1);
        bs_metric_observe(h, values, 1);
    }
    bs_metric_add(c, "s0", 1); /* existing series still update */
    bs_metric_observe(h, "s63", 2);
    size_t after = heap_in_use();
    assert_int_equal(after, before);

    /* Values strings longer than 256 bytes are dropped, however much room the family has. */
    struct bs_metric *g = bs_metrics_gauge(m, "bs_long", "Long values.", "v");
    char longval[300];
    memset(longval, 'x', sizeof(longval) - 1);
    longval[sizeof(longval) - 1] = '\0';
    bs_metric_set(g, longval, 1);
    longval[256] = '\0';
    bs_metric_set(g, longval, 2); /* 256 bytes: accepted */

    char *text = render(m);
    assert_int_equal(count_prefix(text, "bs_lim_total{"), BS_METRICS_MAX_SERIES);
    assert_int_equal(count_prefix(text, "bs_limh_count{"), BS_METRICS_MAX_SERIES);
    assert_int_equal(count_prefix(text, "bs_long{"), 1);
    assert_int_equal(sample_value(text, "bs_lim_total{id=\"s0\"}"), 2);
    assert_int_equal(sample_value(text, "bs_limh_sum{id=\"s63\"}"), 3);
    assert_int_equal(sample_value(text, DROPPED), 2 * 10000 + 1);
    free(text);
    bs_metrics_destroy(m);
}

/* ---- concurrency ---- */

#define THREADS 8
#define ADDS    100000

struct shared {
    struct bs_metric *counter, *labelled, *hist, *gauge;
    struct bs_metrics *m;
    int id;
    pthread_barrier_t *start;
    atomic_int stop;
    int renders, bad_renders; /* written by the render thread only, read after joining it */
};

#define SHARED_SERIES 32 /* divides ADDS */

/* All threads start together and create the same SHARED_SERIES series in the same order. */
static void *adder(void *arg)
{
    struct shared *sh = arg;
    char values[32];
    pthread_barrier_wait(sh->start);
    for (int i = 0; i < ADDS; i++) {
        snprintf(values, sizeof(values), "same,%d", i % SHARED_SERIES);
        bs_metric_add(sh->counter, NULL, 1);
        bs_metric_add(sh->labelled, values, 0.5);
        bs_metric_add(sh->gauge, NULL, (i & 1) ? 1 : -1);
        bs_metric_observe(sh->hist, "x", (double)(i % 3)); /* 0, 1, 2 */
    }
    return NULL;
}

static void test_concurrent_totals(void **state)
{
    (void)state;
    struct bs_metrics *m = bs_metrics_create();
    static const double bounds[] = {0, 1};
    pthread_barrier_t start;
    assert_int_equal(pthread_barrier_init(&start, NULL, THREADS), 0);
    struct shared sh = {
        .start = &start,
        .counter = bs_metrics_counter(m, "bs_ops_total", "Ops.", NULL),
        .labelled = bs_metrics_counter(m, "bs_lab_total", "Ops.", "a,b"),
        .gauge = bs_metrics_gauge(m, "bs_level", "Level.", NULL),
        .hist = bs_metrics_histogram(m, "bs_val", "Values.", "k", bounds, 2),
    };
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, adder, &sh), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);

    char *text = render(m);
    const double total = (double)THREADS * ADDS;
    /* i % 3 over [0, ADDS): ADDS = 3q + 1, so 0 occurs q + 1 times, 1 and 2 q times. */
    const double q = ADDS / 3;
    assert_true(sample_value(text, "bs_ops_total") == total);
    assert_int_equal(count_prefix(text, "bs_lab_total{"), SHARED_SERIES);
    for (int i = 0; i < SHARED_SERIES; i++) {
        char series[64];
        snprintf(series, sizeof(series), "bs_lab_total{a=\"same\",b=\"%d\"}", i);
        assert_true(sample_value(text, series) == total / 2 / SHARED_SERIES);
    }
    assert_true(sample_value(text, "bs_level") == 0);
    assert_true(sample_value(text, "bs_val_bucket{k=\"x\",le=\"0\"}") == THREADS * (q + 1));
    assert_true(sample_value(text, "bs_val_bucket{k=\"x\",le=\"1\"}") == THREADS * (2 * q + 1));
    assert_true(sample_value(text, "bs_val_bucket{k=\"x\",le=\"+Inf\"}") == total);
    assert_true(sample_value(text, "bs_val_count{k=\"x\"}") == total);
    assert_true(sample_value(text, "bs_val_sum{k=\"x\"}") == THREADS * 3 * q);
    assert_int_equal(count_prefix(text, "bs_val_count{"), 1);
    free(text);
    bs_metrics_destroy(m);
}

#define CHURNERS  4
#define CHURN_OPS 20000

#define RACE_ROUNDS 200

/* Every thread adds 1 to each of the same BS_METRICS_MAX_SERIES new series, in order. */
static void *creator(void *arg)
{
    struct shared *sh = arg;
    char values[16];
    pthread_barrier_wait(sh->start);
    for (int i = 0; i < BS_METRICS_MAX_SERIES; i++) {
        snprintf(values, sizeof(values), "c%d", i);
        bs_metric_add(sh->labelled, values, 1);
    }
    return NULL;
}

/* Threads racing to create one series create it once: no duplicate, no lost update. */
static void test_creation_race(void **state)
{
    (void)state;
    pthread_barrier_t start;
    assert_int_equal(pthread_barrier_init(&start, NULL, THREADS), 0);
    for (int round = 0; round < RACE_ROUNDS; round++) {
        struct bs_metrics *m = bs_metrics_create();
        struct shared sh = {
            .start = &start,
            .labelled = bs_metrics_counter(m, "bs_race_total", "Race.", "id"),
        };
        pthread_t t[THREADS];
        for (int i = 0; i < THREADS; i++)
            assert_int_equal(pthread_create(&t[i], NULL, creator, &sh), 0);
        for (int i = 0; i < THREADS; i++)
            pthread_join(t[i], NULL);
        char *text = render(m);
        assert_int_equal(count_prefix(text, "bs_race_total{"), BS_METRICS_MAX_SERIES);
        assert_true(sum_prefix(text, "bs_race_total{") == THREADS * BS_METRICS_MAX_SERIES);
        assert_true(sample_value(text, DROPPED) == 0);
        free(text);
        bs_metrics_destroy(m);
    }
    pthread_barrier_destroy(&start);
}

/* Creates series (past the limit) and updates them while another thread renders. */
static void *churner(void *arg)
{
    struct shared *sh = arg;
    char values[32];
    for (int i = 0; i < CHURN_OPS; i++) {
        snprintf(values, sizeof(values), "t%d,%d", sh->id, i % 50);
        bs_metric_add(sh->labelled, values, 1);
        bs_metric_observe(sh->hist, values, i % 7);
        bs_metric_set(sh->gauge, NULL, i);
    }
    return NULL;
}

/* 1 if every histogram series in `text` has its +Inf bucket equal to its _count. */
static int histograms_consistent(const char *text)
{
    for (const char *p = text; (p = strstr(p, "le=\"+Inf\"} ")) != NULL;) {
        double inf = strtod(p + strlen("le=\"+Inf\"} "), NULL);
        const char *count = strstr(p, "_count{");
        const char *val = count ? strchr(count, ' ') : NULL;
        if (!val || strtod(val + 1, NULL) != inf)
            return 0;
        p = val;
    }
    return 1;
}

/* Renders until told to stop; cmocka cannot fail from this thread, so it counts bad renders. */
static void *renderer(void *arg)
{
    struct shared *sh = arg;
    while (!atomic_load(&sh->stop) || sh->renders == 0) {
        size_t len = 0;
        char *text = bs_metrics_render(sh->m, &len);
        if (!text || len != strlen(text) || len == 0 || text[len - 1] != '\n' ||
            !histograms_consistent(text))
            sh->bad_renders++;
        free(text);
        sh->renders++;
    }
    return NULL;
}

static void test_render_while_updating(void **state)
{
    (void)state;
    struct bs_metrics *m = bs_metrics_create();
    static const double bounds[] = {1, 2, 5};
    struct shared base = {
        .m = m,
        .labelled = bs_metrics_counter(m, "bs_churn_total", "Churn.", "t,i"),
        .gauge = bs_metrics_gauge(m, "bs_churn_last", "Last.", NULL),
        .hist = bs_metrics_histogram(m, "bs_churn_seconds", "Churn.", "t,i", bounds, 3),
    };
    struct shared per[CHURNERS];
    pthread_t t[CHURNERS], r;
    assert_int_equal(pthread_create(&r, NULL, renderer, &base), 0);
    for (int i = 0; i < CHURNERS; i++) {
        per[i] = (struct shared){
            .labelled = base.labelled, .gauge = base.gauge, .hist = base.hist, .id = i};
        assert_int_equal(pthread_create(&t[i], NULL, churner, &per[i]), 0);
    }
    for (int i = 0; i < CHURNERS; i++)
        pthread_join(t[i], NULL);
    atomic_store(&base.stop, 1);
    pthread_join(r, NULL);
    assert_true(base.renders > 0);
    assert_int_equal(base.bad_renders, 0);

    char *text = render(m);
    assert_int_equal(count_prefix(text, "bs_churn_total{"), BS_METRICS_MAX_SERIES);
    assert_int_equal(count_prefix(text, "bs_churn_seconds_count{"), BS_METRICS_MAX_SERIES);
    /* CHURNERS x 50 combinations, 64 kept per family (not necessarily the same 64 in both):
     * every update of the others was dropped. */
    const double updates = (double)CHURNERS * CHURN_OPS;
    double kept = sum_prefix(text, "bs_churn_total{") + sum_prefix(text, "bs_churn_seconds_count{");
    assert_true(sample_value(text, DROPPED) == 2 * updates - kept);
    assert_true(histograms_consistent(text));
    free(text);
    bs_metrics_destroy(m);
}

/* ---- sample for promtool ---- */

static int write_sample(const char *path)
{
    struct bs_metrics *m = bs_metrics_create();
    static const double bounds[] = {0.005, 0.01, 0.1, 1, 10};
    struct bs_metric *req = bs_metrics_counter(m, "bs_agent_requests", "Requests served.", NULL);
    struct bs_metric *bytes = bs_metrics_counter(
        m, "bs_agent_bytes_total", "Bytes served, by source and kind.", "source,kind");
    struct bs_metric *infl = bs_metrics_gauge(m, "bs_agent_inflight_requests",
                                              "Requests in flight.\nSecond \\ line.", NULL);
    struct bs_metric *odd = bs_metrics_gauge(m, "bs_agent_sample_values",
                                             "Values that exercise the number format.", "case");
    struct bs_metric *lat = bs_metrics_histogram(m, "bs_agent_request_duration_seconds",
                                                 "Request latency.", "route", bounds, 5);
    struct bs_metric *lim = bs_metrics_counter(m, "bs_agent_limited_total",
                                               "A family that reaches its series limit.", "id");
    if (!req || !bytes || !infl || !odd || !lat || !lim)
        goto out_fail;
    bs_metric_add(req, NULL, 42);
    bs_metric_add(bytes, "peer,hit", 1048576);
    bs_metric_add(bytes, "azure,miss", 123.5);
    bs_metric_add(bytes, "quote\"back\\slash\nnewline,{weird}=label", 1);
    bs_metric_add(bytes, "z\xc3\xbcrich,\xe6\x9d\xb1\xe4\xba\xac", 2); /* UTF-8 */
    bs_metric_add(bytes, "\xff,latin1", 2);                            /* dropped: not UTF-8 */
    bs_metric_set(infl, NULL, 3);
    bs_metric_set(odd, "nan", NAN);
    bs_metric_set(odd, "pinf", INFINITY);
    bs_metric_set(odd, "ninf", -INFINITY);
    bs_metric_set(odd, "tenth", 0.1);
    bs_metric_set(odd, "big", 1e300);
    bs_metric_set(odd, "negative", -12.25);
    static const double obs[] = {0.001, 0.005, 0.05, 0.5, 1, 3, 100};
    for (size_t i = 0; i < sizeof(obs) / sizeof(obs[0]); i++) {
        bs_metric_observe(lat, "/blob", obs[i]);
        bs_metric_observe(lat, "/health", obs[i] / 10);
    }
    char values[32];
    for (int i = 0; i < BS_METRICS_MAX_SERIES + 3; i++) {
        snprintf(values, sizeof(values), "%d", i);
        bs_metric_add(lim, values, 1);
    }

    size_t len;
    char *text = bs_metrics_render(m, &len);
    if (!text)
        goto out_fail;
    FILE *out = fopen(path, "w");
    int ok = out && fwrite(text, 1, len, out) == len;
    if (out && fclose(out) != 0)
        ok = 0;
    free(text);
    bs_metrics_destroy(m);
    if (!ok)
        fprintf(stderr, "unit_metrics: cannot write %s\n", path);
    return ok ? 0 : 1;

out_fail:
    bs_metrics_destroy(m);
    fprintf(stderr, "unit_metrics: building the sample registry failed\n");
    return 1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-sample") == 0)
        return write_sample(argv[2]);
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--write-sample FILE]\n", argv[0]);
        return 2;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_exact),          cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_number_format),         cmocka_unit_test(test_registration),
        cmocka_unit_test(test_bad_updates),           cmocka_unit_test(test_series_limit),
        cmocka_unit_test(test_concurrent_totals),     cmocka_unit_test(test_creation_race),
        cmocka_unit_test(test_render_while_updating),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
