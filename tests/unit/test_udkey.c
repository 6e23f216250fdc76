/* Unit tests for common/udkey: the Get User Delegation Key response parser (untrusted input)
 * and the user-delegation SAS signature, against a vector computed independently (Python
 * hmac) from the service's string-to-sign for version 2020-12-06 and later. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "udkey.h"

#define RESPONSE                                                                                   \
    "\xEF\xBB\xBF<?xml version=\"1.0\" encoding=\"utf-8\"?><UserDelegationKey>"                    \
    "<SignedOid>00000000-0000-4000-8000-0000000000b5</SignedOid>"                                  \
    "<SignedTid>7396b9e2-d0c5-4ae8-86ba-0970d7622056</SignedTid>"                                  \
    "<SignedStart>2026-12-01T10:00:00Z</SignedStart>"                                              \
    "<SignedExpiry>2026-12-01T16:00:00Z</SignedExpiry>"                                            \
    "<SignedService>b</SignedService><SignedVersion>2021-12-02</SignedVersion>"                    \
    "<Value>a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=</Value></UserDelegationKey>"

static void test_parse(void **state)
{
    (void)state;
    struct bs_udkey k;
    assert_int_equal(bs_udkey_parse(RESPONSE, strlen(RESPONSE), &k), 0);
    assert_string_equal(k.oid, "00000000-0000-4000-8000-0000000000b5");
    assert_string_equal(k.expiry, "2026-12-01T16:00:00Z");
    assert_string_equal(k.service, "b");
    assert_string_equal(k.value, "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=");
    /* A value that could break out of the query, a missing element, an unclosed one. */
    const char *bad[] = {
        "<SignedOid>a&b=c</SignedOid>",
        "<UserDelegationKey><SignedOid>x</SignedOid></UserDelegationKey>",
        "<SignedOid>abc",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(bs_udkey_parse(bad[i], strlen(bad[i]), &k), -EINVAL);
    char evil[] = RESPONSE;
    char *v = strstr(evil, "2021-12-02</SignedVersion>");
    v[4] = '&';
    assert_int_equal(bs_udkey_parse(evil, strlen(evil), &k), -EINVAL);
}

static void test_sign(void **state)
{
    (void)state;
    struct bs_udkey k;
    assert_int_equal(bs_udkey_parse(RESPONSE, strlen(RESPONSE), &k), 0);
    struct tm st = {.tm_year = 126, .tm_mon = 11, .tm_mday = 1, .tm_hour = 10, .tm_min = 55};
    struct tm se = {.tm_year = 126, .tm_mon = 11, .tm_mday = 1, .tm_hour = 11, .tm_min = 20};
    char sas[2048];
    assert_int_equal(bs_udkey_sign(&k, "acct", "models", "llama/x y.bin", timegm(&st), timegm(&se),
                                   sas, sizeof(sas)),
                     0);
    assert_non_null(strstr(sas, "&sr=b&sp=r&"));
    assert_non_null(strstr(sas, "&skoid=00000000-0000-4000-8000-0000000000b5&"));
    assert_non_null(strstr(sas, "&ske=2026-12-01T16%3A00%3A00Z&"));
    assert_non_null(strstr(sas, "&sig=e6ndoqz4ksYC%2Bg1GvmOt2JiemZOJi2w%2BPaYIkszxIfE%3D"));
    /* Too small an output buffer is an error, never a truncated SAS. */
    assert_int_equal(bs_udkey_sign(&k, "acct", "models", "b", timegm(&st), timegm(&se), sas, 40),
                     -ENOSPC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_sign),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
