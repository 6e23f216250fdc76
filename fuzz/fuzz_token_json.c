/* libFuzzer target: token endpoint responses (untrusted: they come over the network). */
#include <stdint.h>
#include <stdlib.h>

#include "token.h"

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
    return 0;
}
