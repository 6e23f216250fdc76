/* Unit tests for common/names: the one account/container/blob rule of shim and agent, and the
 * escape that keeps a name from forging a log line. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include "names.h"

static void test_accounts(void **state)
{
    (void)state;
    assert_true(bs_name_account_ok("abc"));
    assert_true(bs_name_account_ok("devstoreaccount1"));
    assert_true(bs_name_account_ok("abcdefghijklmnopqrstuvwx"));
    assert_false(bs_name_account_ok("abcdefghijklmnopqrstuvwxy"));
    assert_false(bs_name_account_ok("ab"));
    assert_false(bs_name_account_ok("Abc"));
    assert_false(bs_name_account_ok("ab-c"));
    assert_false(bs_name_account_ok("abc/.."));
    assert_false(bs_name_account_ok(""));
    assert_false(bs_name_account_ok(NULL));
}

static void test_containers(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "abc",   "data",
        "a-b-c", "$root",
        "$web",  "$logs",
        "a1b",   "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk"};
    static const char *const bad[] = {
        "ab",     "-abc",  "abc-",
        "a--b",   "ABC",   "a_b",
        "a.b",    "a/b",   "..",
        "$other", "$ROOT", "",
        "abc\n",  "a b",   "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijkl",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (!bs_name_container_ok(ok[i]))
            fail_msg("container \"%s\" refused", ok[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (bs_name_container_ok(bad[i]))
            fail_msg("container \"%s\" accepted", bad[i]);
    assert_false(bs_name_container_ok(NULL));
}

static void test_blobs(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "x",      "a/b/c.bin", "a..b", "...",          "a/.../b",   ".x",    "x.",
        "a/.b/c", "a//b",      "a b",  "ünïcødé/名前", "a%2e%2e/x", "a?b#c", "/x",
    };
    static const char *const bad[] = {
        "",      ".",    "..",    "./x",  "../x", "a/./x", "a/../x", "a/.",      "a/..",
        "/../x", "a\\b", "..\\x", "a\nb", "a\rb", "a\tb",  "\x7f",   "a\x1b[0m",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (bs_name_blob_problem(ok[i]))
            fail_msg("blob \"%s\" refused: %s", ok[i], bs_name_blob_problem(ok[i]));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if ((bs_name_blob_problem(bad[i]) == NULL))
            fail_msg("blob \"%s\" accepted", bad[i]);
    assert_false((bs_name_blob_problem(NULL) == NULL));
    char longname[BS_NAME_BLOB_MAX + 2];
    memset(longname, 'a', sizeof(longname));
    longname[BS_NAME_BLOB_MAX] = '\0';
    assert_true((bs_name_blob_problem(longname) == NULL));
    longname[BS_NAME_BLOB_MAX] = 'a';
    longname[BS_NAME_BLOB_MAX + 1] = '\0';
    assert_false((bs_name_blob_problem(longname) == NULL));
}

static void test_escape(void **state)
{
    (void)state;
    char out[64];
    bs_name_escape("a/b.bin", out, sizeof(out));
    assert_string_equal(out, "a/b.bin");
    bs_name_escape("x\"\\\n\x7f\xc3\xa9 level=error", out, sizeof(out));
    assert_string_equal(out, "x\\x22\\x5c\\x0a\\x7f\\xc3\\xa9 level=error");
    bs_name_escape(NULL, out, sizeof(out));
    assert_string_equal(out, "");
    char small[8];
    bs_name_escape("abcdefghij", small, sizeof(small));
    assert_string_equal(small, "abcd...");
    bs_name_escape("\n\n\n", small, sizeof(small));
    assert_string_equal(small, "\\x0a...");
    bs_name_escape("abc", out, 0); /* nothing written */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accounts),
        cmocka_unit_test(test_containers),
        cmocka_unit_test(test_blobs),
        cmocka_unit_test(test_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
