/* Unit tests for common/token: parsing of token endpoint responses (Entra ID v2.0, IMDS and
 * App Service shapes), the expiry arithmetic, and rejection of malformed responses without
 * leaking memory or quoting the token. Fetching and the credential chain need endpoints and
 * are covered by integration tests, not here. Run under ASan to check the no-leak claims. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "token.h"

#define NOW   ((time_t)1700000000)
#define TOKEN "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJzdG9yYWdlIn0.c2lnbmF0dXJl"

static void expect_ok(const char *json, time_t want_exp)
{
    char *tok = (char *)0x1;
    time_t exp = 0;
    char err[256] = "";
    int rc = bs_token_parse_json(json, strlen(json), NOW, &tok, &exp, err, sizeof(err));
    if (rc != 0)
        fail_msg("parse(%s) returned %d (%s), expected 0", json, rc, err);
    assert_non_null(tok);
    assert_string_equal(tok, TOKEN);
    if (exp != want_exp)
        fail_msg("parse(%s): expires_on %lld, expected %lld", json, (long long)exp,
                 (long long)want_exp);
    free(tok);
}

/* -EINVAL, *token NULL, a message in err that does not quote the token. */
static void expect_invalid_len(const char *json, size_t len)
{
    char *tok = (char *)0x1;
    time_t exp = 0;
    char err[256] = "";
    int rc = bs_token_parse_json(json, len, NOW, &tok, &exp, err, sizeof(err));
    if (rc != -EINVAL)
        fail_msg("parse(%.200s) returned %d, expected -EINVAL", json, rc);
    assert_null(tok);
    if (err[0] == '\0')
        fail_msg("parse(%.200s) wrote no error message", json);
    if (strstr(err, "c2lnbmF0dXJl") || strstr(err, "eyJ0eXAi"))
        fail_msg("error quotes the access token: %s", err);
}

static void expect_invalid(const char *json)
{
    expect_invalid_len(json, strlen(json));
}

static void test_expires_in(void **state)
{
    (void)state;
    /* Entra ID v2.0 token endpoint: expires_in as a number. */
    expect_ok("{\"token_type\":\"Bearer\",\"expires_in\":3599,\"ext_expires_in\":3599,"
              "\"access_token\":\"" TOKEN "\"}",
              NOW + 3599);
    /* As a string of digits. */
    expect_ok("{\"access_token\":\"" TOKEN "\",\"expires_in\":\"86399\"}", NOW + 86399);
}

static void test_expires_on(void **state)
{
    (void)state;
    /* Epoch seconds as a number and as a string (App Service 2019-08-01 sends strings). */
    expect_ok("{\"access_token\":\"" TOKEN "\",\"expires_on\":1700003600}", 1700003600);
    expect_ok("{\"access_token\":\"" TOKEN "\",\"expires_on\":\"1700003600\","
              "\"resource\":\"https://storage.azure.com/\",\"token_type\":\"Bearer\"}",
              1700003600);
}

static void test_expires_on_wins(void **state)
{
    (void)state;
    /* IMDS sends both, as strings; expires_on is authoritative. */
    expect_ok("{\"access_token\":\"" TOKEN "\",\"client_id\":\"00000000-0000-0000-0000-"
              "000000000000\",\"expires_in\":\"100\",\"expires_on\":\"1700009999\","
              "\"ext_expires_in\":\"86399\",\"not_before\":\"1699913600\","
              "\"resource\":\"https://storage.azure.com/\",\"token_type\":\"Bearer\"}",
              1700009999);
    expect_ok("{\"expires_on\":1700009999,\"expires_in\":100,\"access_token\":\"" TOKEN "\"}",
              1700009999);
}

static void test_missing_or_bad_access_token(void **state)
{
    (void)state;
    expect_invalid("{\"expires_in\":3599}");
    expect_invalid("{\"access_token\":null,\"expires_in\":3599}");
    expect_invalid("{\"access_token\":12345,\"expires_in\":3599}");
    expect_invalid("{\"access_token\":[\"" TOKEN "\"],\"expires_in\":3599}");
    expect_invalid("{\"access_token\":\"\",\"expires_in\":3599}");
    /* An error response from the endpoint. */
    expect_invalid("{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: "
                   "Invalid client secret provided.\"}");
}

static void test_not_json(void **state)
{
    (void)state;
    expect_invalid("");
    expect_invalid("not json");
    expect_invalid("<html><body>502 Bad Gateway</body></html>");
    expect_invalid("null");
    expect_invalid("[1,2,3]");
    expect_invalid("\"" TOKEN "\"");
    expect_invalid("{\"access_token\":\"" TOKEN "\",\"expires_in\":3599"); /* truncated */
    expect_invalid("{\"access_token\":\"" TOKEN "\",\"expires_in\":3599}}");
    /* len is honoured: the bytes after it are not part of the input. */
    const char *j = "{\"access_token\":\"" TOKEN "\",\"expires_in\":3599}";
    expect_invalid_len(j, strlen(j) - 1);
    expect_invalid_len(j, 0);
}

static void test_len_bounds_input(void **state)
{
    (void)state;
    /* A buffer that is not NUL-terminated where len ends. */
    const char *j = "{\"access_token\":\"" TOKEN "\",\"expires_in\":60}GARBAGE";
    char *tok = NULL;
    time_t exp = 0;
    char err[128];
    size_t len = strlen(j) - strlen("GARBAGE");
    assert_int_equal(bs_token_parse_json(j, len, NOW, &tok, &exp, err, sizeof(err)), 0);
    assert_string_equal(tok, TOKEN);
    assert_int_equal(exp, NOW + 60);
    free(tok);
}

static void test_bad_expiry(void **state)
{
    (void)state;
    const char *const bad[] = {
        "{\"access_token\":\"" TOKEN "\"}",
        "{\"access_token\":\"" TOKEN "\",\"expires_in\":\"abc\"}",
        "{\"access_token\":\"" TOKEN "\",\"expires_in\":\"\"}",
        "{\"access_token\":\"" TOKEN "\",\"expires_in\":\"12abc\"}",
        "{\"access_token\":\"" TOKEN "\",\"expires_in\":-5}",
        "{\"access_token\":\"" TOKEN "\",\"expires_in\":\"-5\"}",
        "{\"access_token\":\"" TOKEN "\",\"expires_in\":null}",
        "{\"access_token\":\"" TOKEN "\",\"expires_in\":true}",
        "{\"access_token\":\"" TOKEN "\",\"expires_in\":{}}",
        "{\"access_token\":\"" TOKEN "\",\"expires_on\":\"abc\"}",
        "{\"access_token\":\"" TOKEN "\",\"expires_on\":-1}",
        "{\"access_token\":\"" TOKEN "\",\"expires_on\":\"-1700003600\"}",
        "{\"access_token\":\"" TOKEN "\",\"expires_on\":\"99999999999999999999999\"}",
        "{\"access_token\":\"" TOKEN "\",\"expires_in\":\"abc\",\"expires_on\":\"xyz\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_invalid(bad[i]);
}

static void test_huge_input(void **state)
{
    (void)state;
    /* A 4 MiB token: parsed whole, or refused; never truncated, never leaked. */
    size_t big = 4u << 20;
    const char *head = "{\"access_token\":\"", *tail = "\",\"expires_in\":3599}";
    size_t n = strlen(head) + big + strlen(tail);
    char *j = malloc(n + 1);
    assert_non_null(j);
    memcpy(j, head, strlen(head));
    memset(j + strlen(head), 'A', big);
    memcpy(j + strlen(head) + big, tail, strlen(tail) + 1);
    char *tok = NULL;
    time_t exp = 0;
    char err[256];
    int rc = bs_token_parse_json(j, n, NOW, &tok, &exp, err, sizeof(err));
    if (rc == 0) {
        assert_non_null(tok);
        assert_int_equal(strlen(tok), big);
        assert_int_equal(exp, NOW + 3599);
        free(tok);
    } else {
        assert_int_equal(rc, -EINVAL);
        assert_null(tok);
    }

    /* 4 MiB of whitespace, then garbage. */
    memset(j, ' ', n);
    j[n - 1] = 'x';
    j[n] = '\0';
    expect_invalid_len(j, n);

    /* Nesting far deeper than any parser should follow. */
    size_t depth = 1u << 20;
    char *deep = malloc(2 * depth + 1);
    assert_non_null(deep);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    deep[2 * depth] = '\0';
    expect_invalid_len(deep, 2 * depth);
    free(deep);
    free(j);
}

static void test_repeated_parses_do_not_leak(void **state)
{
    (void)state;
    /* Under ASan/LSan any leak in the success or failure paths shows up here. */
    for (int i = 0; i < 200; i++) {
        expect_ok("{\"access_token\":\"" TOKEN "\",\"expires_in\":3599}", NOW + 3599);
        expect_invalid("{\"access_token\":\"" TOKEN "\",\"expires_in\":\"abc\"}");
        expect_invalid("{\"access_token\":\"" TOKEN "\"");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expires_in),
        cmocka_unit_test(test_expires_on),
        cmocka_unit_test(test_expires_on_wins),
        cmocka_unit_test(test_missing_or_bad_access_token),
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_len_bounds_input),
        cmocka_unit_test(test_bad_expiry),
        cmocka_unit_test(test_huge_input),
        cmocka_unit_test(test_repeated_parses_do_not_leak),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
