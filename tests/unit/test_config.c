/* Unit tests for common/config: number parsing with unit suffixes, table loading with
 * defaults, overrides and bounds, and the secret masking of errors and formatted output.
 * They do not test bs_cfg_getenv beyond one lookup (it is getenv). */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"

/* ---- bs_cfg_parse_number ---- */

static void expect_number(enum bs_cfg_type type, const char *s, long long want)
{
    long long v = -12345;
    int rc = bs_cfg_parse_number(type, s, &v);
    if (rc != 0)
        fail_msg("parse(%d, \"%s\") returned %d, expected 0", (int)type, s, rc);
    if (v != want)
        fail_msg("parse(%d, \"%s\") = %lld, expected %lld", (int)type, s, v, want);
}

/* Garbage: -EINVAL and the output left alone. */
static void expect_invalid(enum bs_cfg_type type, const char *s)
{
    long long v = 777;
    int rc = bs_cfg_parse_number(type, s, &v);
    if (rc != -EINVAL)
        fail_msg("parse(%d, \"%s\") returned %d, expected -EINVAL", (int)type, s ? s : "(null)",
                 rc);
    assert_int_equal(v, 777);
}

/* Out of the long long range: an error (-ERANGE or -EINVAL), output left alone. */
static void expect_overflow(enum bs_cfg_type type, const char *s)
{
    long long v = 777;
    int rc = bs_cfg_parse_number(type, s, &v);
    if (rc != -ERANGE && rc != -EINVAL)
        fail_msg("parse(%d, \"%s\") returned %d, expected an overflow error", (int)type, s, rc);
    assert_int_equal(v, 777);
}

static void test_parse_int(void **state)
{
    (void)state;
    expect_number(BS_CFG_INT, "0", 0);
    expect_number(BS_CFG_INT, "42", 42);
    expect_number(BS_CFG_INT, "007", 7);
    expect_number(BS_CFG_INT, "-5", -5);
    expect_number(BS_CFG_INT, "9223372036854775807", LLONG_MAX);
    /* A plain integer takes no unit. */
    expect_invalid(BS_CFG_INT, "10K");
    expect_invalid(BS_CFG_INT, "10ms");
    expect_invalid(BS_CFG_INT, "10s");
}

static void test_parse_bytes_suffixes(void **state)
{
    (void)state;
    expect_number(BS_CFG_BYTES, "512", 512);
    expect_number(BS_CFG_BYTES, "1K", 1024);
    expect_number(BS_CFG_BYTES, "1k", 1024);
    expect_number(BS_CFG_BYTES, "1KiB", 1024);
    expect_number(BS_CFG_BYTES, "64KiB", 64 * 1024);
    expect_number(BS_CFG_BYTES, "8M", 8LL << 20);
    expect_number(BS_CFG_BYTES, "8m", 8LL << 20);
    expect_number(BS_CFG_BYTES, "32MiB", 32LL << 20);
    expect_number(BS_CFG_BYTES, "3G", 3LL << 30);
    expect_number(BS_CFG_BYTES, "5GiB", 5LL << 30);
    expect_number(BS_CFG_BYTES, "1T", 1LL << 40);
    expect_number(BS_CFG_BYTES, "2TiB", 2LL << 40);
    expect_number(BS_CFG_BYTES, "0K", 0);
    /* Largest value that fits with a T suffix: floor(LLONG_MAX / 2^40). */
    expect_number(BS_CFG_BYTES, "8388607T", 8388607LL << 40);
}

static void test_parse_ms_suffixes(void **state)
{
    (void)state;
    expect_number(BS_CFG_MS, "250", 250);
    expect_number(BS_CFG_MS, "250ms", 250);
    expect_number(BS_CFG_MS, "0ms", 0);
    expect_number(BS_CFG_MS, "5s", 5000);
    expect_number(BS_CFG_MS, "2m", 120000);
    expect_number(BS_CFG_MS, "90m", 90LL * 60000);
    /* Largest minute and second counts that fit. */
    expect_number(BS_CFG_MS, "153722867280912m", 153722867280912LL * 60000);
    expect_number(BS_CFG_MS, "9223372036854775s", 9223372036854775LL * 1000);
}

static void test_parse_garbage(void **state)
{
    (void)state;
    const enum bs_cfg_type numeric[] = {BS_CFG_INT, BS_CFG_BYTES, BS_CFG_MS};
    const char *const garbage[] = {
        "", "abc", "one", "-", "--1", "1.5", "1,000", "0x10", "12abc", "1 2", "\t",
    };
    for (size_t t = 0; t < sizeof(numeric) / sizeof(numeric[0]); t++) {
        expect_invalid(numeric[t], NULL);
        for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++)
            expect_invalid(numeric[t], garbage[i]);
    }
    /* Suffixes without digits, unknown or doubled suffixes, suffixes of the other type. */
    expect_invalid(BS_CFG_BYTES, "K");
    expect_invalid(BS_CFG_BYTES, "KiB");
    expect_invalid(BS_CFG_BYTES, "1X");
    expect_invalid(BS_CFG_BYTES, "1P");
    expect_invalid(BS_CFG_BYTES, "1KK");
    expect_invalid(BS_CFG_BYTES, "1iB");
    expect_invalid(BS_CFG_BYTES, "1.5M");
    expect_invalid(BS_CFG_BYTES, "1s");
    expect_invalid(BS_CFG_BYTES, "1KiBx");
    expect_invalid(BS_CFG_MS, "ms");
    expect_invalid(BS_CFG_MS, "s");
    expect_invalid(BS_CFG_MS, "5h");
    expect_invalid(BS_CFG_MS, "5sec");
    expect_invalid(BS_CFG_MS, "5mss");
    expect_invalid(BS_CFG_MS, "5K");
    expect_invalid(BS_CFG_MS, "1.5s");
}

static void test_parse_overflow(void **state)
{
    (void)state;
    expect_overflow(BS_CFG_INT, "9223372036854775808");
    expect_overflow(BS_CFG_INT, "99999999999999999999999");
    expect_overflow(BS_CFG_INT, "-99999999999999999999999");
    expect_overflow(BS_CFG_BYTES, "8388608T");          /* 2^23 * 2^40 = 2^63 */
    expect_overflow(BS_CFG_BYTES, "9007199254740992K"); /* 2^53 * 2^10 = 2^63 */
    expect_overflow(BS_CFG_BYTES, "9223372036854775807K");
    expect_overflow(BS_CFG_MS, "153722867280913m");
    expect_overflow(BS_CFG_MS, "9223372036854776s");
}

/* ---- bs_cfg_load / bs_cfg_format ---- */

struct tcfg {
    long long range_bytes;
    long long timeout_ms;
    long long workers;
    long long pin; /* a secret number */
    char endpoint[BS_CFG_STR_MAX];
    char account_key[BS_CFG_STR_MAX];
};

static const struct bs_cfg_entry table[] = {
    {"T_RANGE_BYTES", BS_CFG_BYTES, 4096, 1LL << 30, "8M", offsetof(struct tcfg, range_bytes),
     "grid of ranged GETs", 0},
    {"T_TIMEOUT_MS", BS_CFG_MS, 1, 600000, "30s", offsetof(struct tcfg, timeout_ms),
     "per-read deadline", 0},
    {"T_WORKERS", BS_CFG_INT, 1, 256, "8", offsetof(struct tcfg, workers), "I/O threads", 0},
    {"T_PIN", BS_CFG_INT, 0, 9999, "1234", offsetof(struct tcfg, pin), "a secret number", 1},
    {"T_ENDPOINT", BS_CFG_STR, 0, 64, "http://localhost", offsetof(struct tcfg, endpoint),
     "endpoint", 0},
    {"T_ACCOUNT_KEY", BS_CFG_STR, 0, 128, "", offsetof(struct tcfg, account_key), "secret key", 1},
};
#define NTABLE (sizeof(table) / sizeof(table[0]))

/* Lookup context: NULL-terminated name/value pairs. */
struct kv {
    const char *name, *value;
};

static const char *kv_lookup(const char *name, void *ctx)
{
    for (const struct kv *p = ctx; p && p->name; p++)
        if (strcmp(p->name, name) == 0)
            return p->value;
    return NULL;
}

static int load(const struct kv *env, struct tcfg *c, char *err, size_t errsz)
{
    memset(c, 0x5a, sizeof(*c));
    err[0] = '\0';
    return bs_cfg_load(table, NTABLE, c, kv_lookup, (void *)env, err, errsz);
}

static void test_load_defaults(void **state)
{
    (void)state;
    struct tcfg c;
    char err[256];
    const struct kv none[] = {{NULL, NULL}};
    assert_int_equal(load(none, &c, err, sizeof(err)), 0);
    assert_int_equal(c.range_bytes, 8LL << 20);
    assert_int_equal(c.timeout_ms, 30000);
    assert_int_equal(c.workers, 8);
    assert_int_equal(c.pin, 1234);
    assert_string_equal(c.endpoint, "http://localhost");
    assert_string_equal(c.account_key, "");

    /* A NULL lookup function means defaults only. */
    memset(&c, 0x5a, sizeof(c));
    assert_int_equal(bs_cfg_load(table, NTABLE, &c, NULL, NULL, err, sizeof(err)), 0);
    assert_int_equal(c.workers, 8);
    assert_string_equal(c.endpoint, "http://localhost");
}

static void test_load_overrides(void **state)
{
    (void)state;
    struct tcfg c;
    char err[256];
    const struct kv env[] = {
        {"T_RANGE_BYTES", "32MiB"},    {"T_TIMEOUT_MS", "2m"},
        {"T_WORKERS", "256"},          {"T_PIN", "0"},
        {"T_ENDPOINT", "https://x.y"}, {"T_ACCOUNT_KEY", "c2VjcmV0"},
        {"T_UNRELATED", "zzz"},        {NULL, NULL},
    };
    assert_int_equal(load(env, &c, err, sizeof(err)), 0);
    assert_int_equal(c.range_bytes, 32LL << 20);
    assert_int_equal(c.timeout_ms, 120000);
    assert_int_equal(c.workers, 256);
    assert_int_equal(c.pin, 0);
    assert_string_equal(c.endpoint, "https://x.y");
    assert_string_equal(c.account_key, "c2VjcmV0");

    /* Bounds are inclusive at both ends; a string of exactly max bytes fits. */
    char s64[65];
    memset(s64, 'e', 64);
    s64[64] = '\0';
    const struct kv edge[] = {{"T_RANGE_BYTES", "4096"},
                              {"T_TIMEOUT_MS", "1ms"},
                              {"T_WORKERS", "1"},
                              {"T_ENDPOINT", s64},
                              {NULL, NULL}};
    assert_int_equal(load(edge, &c, err, sizeof(err)), 0);
    assert_int_equal(c.range_bytes, 4096);
    assert_int_equal(c.timeout_ms, 1);
    assert_int_equal(c.workers, 1);
    assert_string_equal(c.endpoint, s64);
}

/* One bad value: -EINVAL, and err names the key and, for non-secrets, the value. */
static void expect_load_error(const char *name, const char *value, int secret)
{
    struct tcfg c;
    char err[256];
    const struct kv env[] = {{name, value}, {NULL, NULL}};
    int rc = load(env, &c, err, sizeof(err));
    if (rc != -EINVAL)
        fail_msg("%s=%s: bs_cfg_load returned %d, expected -EINVAL", name, value, rc);
    if (!strstr(err, name))
        fail_msg("%s=%s: error \"%s\" does not name the key", name, value, err);
    if (secret && strstr(err, value))
        fail_msg("%s: error \"%s\" quotes the secret value", name, err);
    if (!secret && strlen(value) <= 64 && !strstr(err, value))
        fail_msg("%s=%s: error \"%s\" does not show the value", name, value, err);
}

static void test_load_out_of_range(void **state)
{
    (void)state;
    expect_load_error("T_WORKERS", "0", 0);
    expect_load_error("T_WORKERS", "257", 0);
    expect_load_error("T_WORKERS", "-3", 0);
    expect_load_error("T_WORKERS", "eight", 0);
    expect_load_error("T_WORKERS", "8K", 0);
    expect_load_error("T_RANGE_BYTES", "4095", 0);
    expect_load_error("T_RANGE_BYTES", "2G", 0);
    expect_load_error("T_RANGE_BYTES", "-1K", 0);
    expect_load_error("T_RANGE_BYTES", "8388608T", 0);
    expect_load_error("T_TIMEOUT_MS", "0", 0);
    expect_load_error("T_TIMEOUT_MS", "11m", 0);
    expect_load_error("T_TIMEOUT_MS", "5h", 0);

    /* The message states the accepted range. */
    struct tcfg c;
    char err[256];
    const struct kv env[] = {{"T_WORKERS", "1000"}, {NULL, NULL}};
    assert_int_equal(load(env, &c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "256"));
}

static void test_load_secret_masked_in_errors(void **state)
{
    (void)state;
    expect_load_error("T_PIN", "31337", 1);
    expect_load_error("T_PIN", "not-a-pin-31337", 1);
    char big[200];
    memset(big, 'K', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    expect_load_error("T_ACCOUNT_KEY", big, 1);
    /* A non-secret string over its bound is rejected too. */
    char long_ep[100];
    memset(long_ep, 'h', sizeof(long_ep) - 1);
    long_ep[sizeof(long_ep) - 1] = '\0';
    expect_load_error("T_ENDPOINT", long_ep, 0);
}

static void test_load_bad_default(void **state)
{
    (void)state;
    struct tcfg c;
    char err[256] = "";
    const struct bs_cfg_entry bad[] = {
        {"T_BAD_DEFAULT", BS_CFG_INT, 1, 10, "11", offsetof(struct tcfg, workers), "", 0},
    };
    assert_int_equal(bs_cfg_load(bad, 1, &c, NULL, NULL, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "T_BAD_DEFAULT"));
}

static void test_load_small_err_buffer(void **state)
{
    (void)state;
    struct tcfg c;
    char err[12];
    memset(err, 'x', sizeof(err));
    const struct kv env[] = {{"T_WORKERS", "0"}, {NULL, NULL}};
    assert_int_equal(bs_cfg_load(table, NTABLE, &c, kv_lookup, (void *)env, err, 8), -EINVAL);
    assert_true(memchr(err, '\0', 8) != NULL);
    assert_int_equal(err[8], 'x');
}

static void test_getenv_lookup(void **state)
{
    (void)state;
    struct tcfg c;
    char err[256];
    setenv("T_WORKERS", "17", 1);
    unsetenv("T_TIMEOUT_MS");
    assert_int_equal(bs_cfg_load(table, NTABLE, &c, bs_cfg_getenv, NULL, err, sizeof(err)), 0);
    assert_int_equal(c.workers, 17);
    assert_int_equal(c.timeout_ms, 30000);
    unsetenv("T_WORKERS");
}

static void test_format_masks_secrets(void **state)
{
    (void)state;
    struct tcfg c;
    char err[256], out[1024];
    const struct kv env[] = {{"T_PIN", "4711"},
                             {"T_ACCOUNT_KEY", "c3VwZXJzZWNyZXRrZXk="},
                             {"T_WORKERS", "12"},
                             {NULL, NULL}};
    assert_int_equal(load(env, &c, err, sizeof(err)), 0);
    bs_cfg_format(table, NTABLE, &c, out, sizeof(out));
    for (size_t i = 0; i < NTABLE; i++)
        if (!strstr(out, table[i].name))
            fail_msg("format output \"%s\" lacks %s", out, table[i].name);
    assert_non_null(strstr(out, "T_WORKERS=12"));
    assert_non_null(strstr(out, "T_RANGE_BYTES=8388608"));
    assert_non_null(strstr(out, "http://localhost"));
    if (strstr(out, "c3VwZXJzZWNyZXRrZXk="))
        fail_msg("format output quotes the secret key: %s", out);
    if (strstr(out, "4711"))
        fail_msg("format output quotes the secret number: %s", out);
}

static void test_format_truncates(void **state)
{
    (void)state;
    struct tcfg c;
    char err[256], out[32];
    const struct kv none[] = {{NULL, NULL}};
    assert_int_equal(load(none, &c, err, sizeof(err)), 0);
    memset(out, 'x', sizeof(out));
    bs_cfg_format(table, NTABLE, &c, out, 20);
    assert_true(memchr(out, '\0', 20) != NULL);
    for (size_t i = 20; i < sizeof(out); i++)
        assert_int_equal(out[i], 'x');
}

static void test_print_help(void **state)
{
    (void)state;
    char *text = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&text, &n);
    assert_non_null(f);
    bs_cfg_print_help(table, NTABLE, f);
    fclose(f);
    for (size_t i = 0; i < NTABLE; i++)
        assert_non_null(strstr(text, table[i].name));
    assert_non_null(strstr(text, "I/O threads"));
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_int),
        cmocka_unit_test(test_parse_bytes_suffixes),
        cmocka_unit_test(test_parse_ms_suffixes),
        cmocka_unit_test(test_parse_garbage),
        cmocka_unit_test(test_parse_overflow),
        cmocka_unit_test(test_load_defaults),
        cmocka_unit_test(test_load_overrides),
        cmocka_unit_test(test_load_out_of_range),
        cmocka_unit_test(test_load_secret_masked_in_errors),
        cmocka_unit_test(test_load_bad_default),
        cmocka_unit_test(test_load_small_err_buffer),
        cmocka_unit_test(test_getenv_lookup),
        cmocka_unit_test(test_format_masks_secrets),
        cmocka_unit_test(test_format_truncates),
        cmocka_unit_test(test_print_help),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
