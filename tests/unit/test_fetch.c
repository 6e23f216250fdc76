/* Unit tests for common/fetch's response-header parser (bs_fetch_header_line): the values a
 * fill decides on (ETag, Content-Length, Content-Range) are kept only when well-formed, and a
 * new status line resets them. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "fetch.h"

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
        cmocka_unit_test(test_header_parser),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
