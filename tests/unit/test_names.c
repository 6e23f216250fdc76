/* Unit tests for common/names (the one account/container/blob rule of shim and agent, and the
 * escape for logs), and for the URL it leads to: common/azcred builds the request path only
 * from names that pass, with the SAS query rebuilt from its parsed fields. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "azcred.h"
#include "fetch.h"
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
        if (bs_name_blob_ok(bad[i]))
            fail_msg("blob \"%s\" accepted", bad[i]);
    assert_false(bs_name_blob_ok(NULL));
    char longname[BS_NAME_BLOB_MAX + 2];
    memset(longname, 'a', sizeof(longname));
    longname[BS_NAME_BLOB_MAX] = '\0';
    assert_true(bs_name_blob_ok(longname));
    longname[BS_NAME_BLOB_MAX] = 'a';
    longname[BS_NAME_BLOB_MAX + 1] = '\0';
    assert_false(bs_name_blob_ok(longname));
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

/* azcred: the URL comes from validated parts only, the SAS query rebuilt canonically. */
static int prepare(const char *container, const char *blob, struct bs_azreq *r, char *err)
{
    struct bs_delegation d;
    memset(&d, 0, sizeof(d));
    d.kind = BS_AUTH_SAS;
    snprintf(d.endpoint, sizeof(d.endpoint), "http://127.0.0.1:1/devstoreaccount1");
    snprintf(d.account, sizeof(d.account), "devstoreaccount1");
    snprintf(d.secret, sizeof(d.secret), "sv=2021-12-02&se=2030-01-01T00:00:00Z&sp=r&sig=a%%2bb");
    struct bs_azcred *c = bs_azcred_from_delegation(&d, err, 200);
    assert_non_null(c);
    memset(r, 0, sizeof(*r));
    r->method = "GET";
    r->container = container;
    r->blob = blob;
    int rc = bs_azcred_prepare(c, r, err, 200);
    curl_slist_free_all(r->headers);
    bs_azcred_destroy(c);
    return rc;
}

static void test_urls(void **state)
{
    (void)state;
    struct bs_azreq r;
    char err[200];
    assert_int_equal(prepare("data", "a b/c%.bin", &r, err), 0);
    assert_string_equal(r.url, "http://127.0.0.1:1/devstoreaccount1/data/a%20b/c%25.bin"
                               "?sv=2021-12-02&se=2030-01-01T00%3A00%3A00Z&sp=r&sig=a%2Bb");
    assert_string_equal(r.safe_url, "http://127.0.0.1:1/devstoreaccount1/data/a%20b/c%25.bin");
    assert_int_equal(prepare("data", "a/../x", &r, err), -EINVAL);
    assert_non_null(strstr(err, "segment"));
    assert_int_equal(prepare("data", "", &r, err), -EINVAL);
    assert_int_equal(prepare("a--b", "x", &r, err), -EINVAL);
    assert_int_equal(prepare("../x", "x", &r, err), -EINVAL);
}

static void test_delegated_sas_refused(void **state)
{
    (void)state;
    struct bs_delegation d;
    char err[200] = "";
    memset(&d, 0, sizeof(d));
    d.kind = BS_AUTH_SAS;
    snprintf(d.endpoint, sizeof(d.endpoint), "http://127.0.0.1:1/devstoreaccount1");
    snprintf(d.account, sizeof(d.account), "devstoreaccount1");
    snprintf(d.secret, sizeof(d.secret), "se=2030-01-01&sig=SECRET&comp=tags");
    assert_null(bs_azcred_from_delegation(&d, err, sizeof(err)));
    assert_non_null(strstr(err, "comp"));
    assert_null(strstr(err, "SECRET"));
}

/* fetch: the response header parser keeps only well-formed values. */
static void feed(struct bs_fetch_req *r, const char *line)
{
    bs_fetch_header_line(r, line, strlen(line));
}

static void test_header_parser(void **state)
{
    (void)state;
    struct bs_fetch_req r;
    char cap[16];
    memset(&r, 0, sizeof(r));
    r.capture = cap;
    r.capture_cap = sizeof(cap);
    r.capture_header = "x-ms-blob-type";
    feed(&r, "HTTP/1.1 206 Partial Content\r\n");
    assert_int_equal(r.content_length, UINT64_MAX);
    feed(&r, "ETag: \"0x8D1\"\r\n");
    feed(&r, "Content-Length: 100\r\n");
    feed(&r, "content-range: bytes 100-199/1000\r\n");
    feed(&r, "Retry-After: 2\r\n");
    feed(&r, "x-ms-error-code: ServerBusy\r\n");
    feed(&r, "X-Ms-Blob-Type: BlockBlob-and-more-than-fits\r\n");
    assert_string_equal(r.etag, "\"0x8D1\"");
    assert_int_equal(r.content_length, 100);
    assert_true(r.has_content_range);
    assert_int_equal(r.cr_first, 100);
    assert_int_equal(r.cr_last, 199);
    assert_int_equal(r.cr_total, 1000);
    assert_int_equal(r.retry_after_ms, 2000);
    assert_string_equal(r.error_code, "ServerBusy");
    assert_string_equal(cap, "BlockBlob-and-m");
    static const char *const bad_ranges[] = {
        "Content-Range: bytes 5-4/10\r\n",   "Content-Range: bytes 0-10/10\r\n",
        "Content-Range: bytes */10\r\n",     "Content-Range: bytes 0-1/*\r\n",
        "Content-Range: items 0-1/10\r\n",   "Content-Range: bytes -1-2/10\r\n",
        "Content-Range: bytes 0-1/10 x\r\n", "Content-Range: bytes 0-99999999999999999999/1\r\n",
        "Content-Range: bytes 1-2\r\n",
    };
    for (size_t i = 0; i < sizeof(bad_ranges) / sizeof(bad_ranges[0]); i++) {
        feed(&r, bad_ranges[i]);
        if (r.has_content_range)
            fail_msg("accepted %s", bad_ranges[i]);
    }
    feed(&r, "Content-Length: +5\r\n");
    assert_int_equal(r.content_length, 100); /* unchanged */
    feed(&r, "Content-Length: 18446744073709551616\r\n");
    assert_int_equal(r.content_length, 100);
    feed(&r, "Retry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n");
    feed(&r, "no colon here\r\n");
    feed(&r, "HTTP/1.1 200 OK\r\n"); /* a new response resets everything */
    assert_string_equal(r.etag, "");
    assert_false(r.has_content_range);
    assert_int_equal(r.retry_after_ms, -1);
    assert_string_equal(cap, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accounts),      cmocka_unit_test(test_containers),
        cmocka_unit_test(test_blobs),         cmocka_unit_test(test_escape),
        cmocka_unit_test(test_urls),          cmocka_unit_test(test_delegated_sas_refused),
        cmocka_unit_test(test_header_parser),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
