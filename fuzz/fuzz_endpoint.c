/* libFuzzer target: the agent's endpoint allow-list (patterns with '*' globs, an endpoint
 * URL and an account, all from the request but the patterns) and the name rules of
 * common/names.c. Input: patterns \n endpoint \n account \n container \n blob. Checks that
 * nothing crashes, that an allowed endpoint names the account as its first host label or
 * its only path segment, and that an escaped name holds only printable ASCII without '"'. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"
#include "service.h"

static char *field(char **p)
{
    char *s = *p, *nl = strchr(s, '\n');
    if (nl) {
        *nl = '\0';
        *p = nl + 1;
    } else {
        *p = s + strlen(s);
    }
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *p = buf;
    char *patterns = field(&p), *endpoint = field(&p), *account = field(&p);
    char *container = field(&p), *blob = field(&p);
    if (bs_endpoint_allowed(patterns, endpoint, account)) {
        const char *host = strstr(endpoint, "://");
        size_t alen = strlen(account);
        if (!host || !*account)
            abort();
        host += 3;
        const char *slash = strchr(host, '/');
        int names = (strncmp(host, account, alen) == 0 && host[alen] == '.' && !slash) ||
                    (slash && strcmp(slash + 1, account) == 0);
        if (!names)
            abort();
    }
    (void)bs_name_account_ok(account);
    (void)bs_name_container_ok(container);
    if ((bs_name_blob_problem(blob) == NULL)) {
        if (!*blob || strlen(blob) > BS_NAME_BLOB_MAX || strstr(blob, "/../") ||
            strncmp(blob, "../", 3) == 0 || strcmp(blob, "..") == 0 || strchr(blob, '\\'))
            abort();
    }
    char esc[64];
    bs_name_escape(blob, esc, sizeof(esc));
    for (const char *c = esc; *c; c++)
        if (*c < 0x20 || *c > 0x7e || *c == '"')
            abort();
    free(buf);
    return 0;
}
