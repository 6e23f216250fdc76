/* libFuzzer target: connection-string parsing (untrusted: it comes from the environment of
 * whatever process loads the shim). Checks that a parse never crashes or leaks, and that an
 * accepted string always yields an http(s) endpoint. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "connstr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    struct bs_connstr cs;
    char err[256];
    if (bs_connstr_parse(s, &cs, err, sizeof(err)) == 0) {
        if (!cs.blob_endpoint || (strncasecmp(cs.blob_endpoint, "http://", 7) != 0 &&
                                  strncasecmp(cs.blob_endpoint, "https://", 8) != 0))
            abort();
        bs_connstr_cleanup(&cs);
    }
    free(s);
    return 0;
}
