/* Storage name rules (see names.h). */
#include "names.h"

#include <string.h>

static int lower_or_digit(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

int bs_name_account_ok(const char *s)
{
    if (!s)
        return 0;
    size_t n = strlen(s);
    if (n < 3 || n > 24)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!lower_or_digit(s[i]))
            return 0;
    return 1;
}

int bs_name_container_ok(const char *s)
{
    if (!s)
        return 0;
    if (strcmp(s, "$root") == 0 || strcmp(s, "$web") == 0 || strcmp(s, "$logs") == 0)
        return 1;
    size_t n = strlen(s);
    if (n < 3 || n > 63 || !lower_or_digit(s[0]) || !lower_or_digit(s[n - 1]))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!lower_or_digit(s[i]) && !(s[i] == '-' && s[i + 1] != '-'))
            return 0;
    return 1;
}

const char *bs_name_blob_problem(const char *s)
{
    if (!s || !*s)
        return "empty blob name";
    size_t n = strlen(s);
    if (n > BS_NAME_BLOB_MAX)
        return "blob name longer than 1024 bytes";
    const char *seg = s;
    for (size_t i = 0; i <= n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '/' || c == '\0') {
            size_t len = (size_t)(s + i - seg);
            if ((len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
                return "blob name has a \".\" or \"..\" path segment";
            seg = s + i + 1;
            continue;
        }
        if (c < 0x20 || c == 0x7f)
            return "blob name has a control character";
        if (c == '\\')
            return "blob name has a backslash";
    }
    return NULL;
}

void bs_name_escape(const char *s, char *out, size_t outsz)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (outsz == 0)
        return;
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        int plain = *p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\';
        size_t need = plain ? 1 : 4;
        if (o + need + 4 > outsz) { /* room for "..." and the NUL */
            if (o + 4 <= outsz)
                memcpy(out + o, "...", 3), o += 3;
            break;
        }
        if (plain) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
}

int bs_name_endpoint_canonical(const char *endpoint)
{
    int https = strncmp(endpoint, "https://", 8) == 0;
    if (!https && strncmp(endpoint, "http://", 7) != 0)
        return 0;
    const char *h = endpoint + (https ? 8 : 7), *e = h;
    while ((*e >= 'a' && *e <= 'z') || (*e >= '0' && *e <= '9') || *e == '.' || *e == '-')
        e++;
    if (e == h || e[-1] == '.')
        return 0;
    if (*e == ':') {
        const char *d = ++e;
        unsigned long port = 0;
        while (*e >= '0' && *e <= '9' && e - d < 6)
            port = port * 10 + (unsigned long)(*e++ - '0');
        if (e == d || *d == '0' || port > 65535 || port == (https ? 443ul : 80ul))
            return 0;
    }
    return *e == '\0' || *e == '/';
}
