/* libFuzzer target: Shared Key canonicalization of arbitrary paths, queries and x-ms headers,
 * and blob-name URL encoding. Checks bounds (no overflow on a small buffer) and that the
 * encoded path only holds URL-safe bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sharedkey.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Split the input into path, query and one header at NUL bytes. */
    char *s = malloc(size + 3);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = s[size + 1] = s[size + 2] = '\0';
    const char *path = s;
    const char *query = s + strlen(s) + 1; /* within s: s has three NULs at the end */
    const char *hdr = query + strlen(query) + 1;
    if (hdr > s + size + 2 || !*hdr)
        hdr = "x-ms-a:b";
    const char *hs[1] = {hdr};
    struct bs_sk_request r = {
        .method = "GET", .url_path = path, .query = query, .ms_headers = hs, .n_ms_headers = 1};
    char out[512];
    int n = bs_sharedkey_string_to_sign("acct", &r, out, sizeof(out));
    if (n >= (int)sizeof(out))
        abort();
    char enc[256];
    n = bs_url_encode_path(path, enc, sizeof(enc));
    if (n >= 0) {
        for (int i = 0; i < n; i++)
            if ((unsigned char)enc[i] <= ' ' || (unsigned char)enc[i] >= 0x7f || enc[i] == '?' ||
                enc[i] == '#')
                abort();
    }
    free(s);
    return 0;
}
