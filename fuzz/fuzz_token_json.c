/* libFuzzer target: token-service answers (untrusted: they come over the network): token
 * endpoint JSON, and the Get User Delegation Key XML the storage service answers a token
 * with. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "token.h"
#include "udkey.h"

static int in_alphabet(const char *s, const char *extra)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr(extra, *s)))
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *tok = NULL;
    time_t exp = 0;
    char err[256];
    if (bs_token_parse_json((const char *)data, size, 1700000000, &tok, &exp, err, sizeof(err)) ==
        0) {
        if (!tok || !tok[0])
            abort();
    }
    free(tok);
    /* A parsed key never carries characters that could leave its place in a SAS query. */
    struct bs_udkey k;
    if (bs_udkey_parse((const char *)data, size, &k) == 0 &&
        (!in_alphabet(k.oid, "-") || !in_alphabet(k.tid, "-") || !in_alphabet(k.value, "+/=") ||
         !in_alphabet(k.version, "-") || !in_alphabet(k.expiry, "-:.")))
        abort();
    return 0;
}
