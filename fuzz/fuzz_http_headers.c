/* libFuzzer target: the HTTP engine's response-header parser (bs_fetch_header_line; the
 * origin, or anything between it and the agent, is untrusted). Input: header lines split on
 * '\n'. Checks that nothing crashes or overruns, that strings stay NUL-terminated within
 * their buffers, and that a kept Content-Range is ordered (first <= last < total). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fetch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct bs_fetch_req r;
    char cap[32];
    memset(&r, 0, sizeof(r));
    r.capture = cap;
    r.capture_cap = sizeof(cap);
    r.capture_header = "x-ms-blob-type";
    bs_fetch_header_line(&r, "HTTP/1.1 200 OK\r\n", 17);
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        /* An exact-size heap copy: ASan sees any read past the line. */
        char *line = malloc(len ? len : 1);
        if (!line)
            return 0;
        memcpy(line, p, len);
        bs_fetch_header_line(&r, line, len);
        free(line);
        p += len;
    }
    if (!memchr(r.etag, '\0', sizeof(r.etag)) ||
        !memchr(r.error_code, '\0', sizeof(r.error_code)) || !memchr(cap, '\0', sizeof(cap)))
        abort();
    if (r.has_content_range && (r.cr_first > r.cr_last || r.cr_last >= r.cr_total))
        abort();
    if (r.retry_after_ms < -1 || r.retry_after_ms >= 3600 * 1000)
        abort();
    return 0;
}
