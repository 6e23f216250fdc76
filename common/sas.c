/* SAS query parsing (see sas.h). One pass splits on '&' and '=', decodes each name and value,
 * checks the name against the table of SAS fields and the value for control characters, and
 * appends the canonical re-encoding; st/se are parsed as Azure's time formats. */
#include "sas.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define FIELD_MAX 4096 /* one decoded value; a sig is 44 bytes, a user-delegation SAS < 1 KiB */

/* The query fields of account, service and user-delegation SAS (Azure Storage REST docs,
 * "Create a service SAS", "Create an account SAS", "Create a user delegation SAS", up to
 * version 2025-07-05). The response-header overrides (rscc, rscd, rsce, rscl, rsct) are SAS
 * fields too, but they change the answer that would be cached: refused like comp=. */
static const char *const sas_fields[] = {
    "sv",  "ss",  "srt", "sp",    "st",    "se",    "sip",    "spr",
    "sr",  "sig", "si",  "sdd",   "ses",   "skoid", "sktid",  "skt",
    "ske", "sks", "skv", "saoid", "suoid", "scid",  "sduoid", "skdutid",
};
#define N_FIELDS (sizeof(sas_fields) / sizeof(sas_fields[0]))

/* The bit of field f in a set of seen fields; f must be in the table. */
static unsigned field_bit(const char *f)
{
    for (size_t k = 0; k < N_FIELDS; k++)
        if (strcmp(sas_fields[k], f) == 0)
            return 1u << k;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes [s, s+n) into out (NUL-terminated). -EINVAL on a bad escape, a bare '+' (a form
 * decoder reads it as a space, others as '+': ambiguous), a control character (decoded or
 * not) or a NUL; -ENOSPC when it does not fit. Returns the decoded length. */
static int decode(const char *s, size_t n, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return -EINVAL;
            int h = hexval(s[i + 1]), l = hexval(s[i + 2]);
            if (h < 0 || l < 0)
                return -EINVAL;
            c = (unsigned char)(h * 16 + l);
            i += 2;
        } else if (c == '+') {
            return -EINVAL;
        }
        if (c < 0x20 || c == 0x7f)
            return -EINVAL;
        if (o + 1 >= outsz)
            return -ENOSPC;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return (int)o;
}

/* Appends the canonical encoding of v (RFC 3986 unreserved kept, the rest %XX) at *pos. */
static int encode_append(const char *v, char *out, size_t outsz, size_t *pos)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        int plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                    (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~';
        size_t need = plain ? 1 : 3;
        if (outsz && *pos + need >= outsz)
            return -ENOSPC;
        if (outsz) {
            if (plain) {
                out[*pos] = (char)*p;
            } else {
                out[*pos] = '%';
                out[*pos + 1] = hex[*p >> 4];
                out[*pos + 2] = hex[*p & 15];
            }
        }
        *pos += need;
    }
    return 0;
}

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int bs_sas_time(const char *s, int64_t *out)
{
    int y, mo, d, h = 0, mi = 0, sec = 0;
    size_t n = strlen(s);
    if (n < 10 || digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) || s[7] != '-' ||
        digits(s + 8, 2, &d))
        return -EINVAL;
    const char *p = s + 10;
    if (*p) {
        if (p[0] != 'T' || strlen(p) < 7 || digits(p + 1, 2, &h) || p[3] != ':' ||
            digits(p + 4, 2, &mi))
            return -EINVAL;
        p += 6;
        if (*p == ':') {
            if (digits(p + 1, 2, &sec))
                return -EINVAL;
            p += 3;
            if (*p == '.') {
                p++;
                int nd = 0;
                while (*p >= '0' && *p <= '9' && nd < 7)
                    p++, nd++;
                if (nd == 0)
                    return -EINVAL;
            }
        }
        if (p[0] != 'Z' || p[1] != '\0')
            return -EINVAL;
    }
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 2000 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 ||
        sec > 59)
        return -EINVAL;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = sec};
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -EINVAL;
    *out = (int64_t)t;
    return 0;
}

/* Fills err with "SAS field \"name\" what" (or "SAS what") and returns -EINVAL. */
static int refuse(char *err, size_t errsz, const char *name, const char *what)
{
    if (err && errsz && name)
        snprintf(err, errsz, "SAS field \"%s\" %s", name, what);
    else if (err && errsz)
        snprintf(err, errsz, "SAS %s", what);
    return -EINVAL;
}

static int parse_into(const char *sas, char *out, size_t outsz, struct bs_sas_info *info, char *err,
                      size_t errsz)
{
    char name[16], value[FIELD_MAX];
    unsigned seen = 0; /* bit i: sas_fields[i] */
    int64_t se = 0;
    size_t pos = 0;
    if (outsz)
        out[0] = '\0';
    if (!sas || !*sas)
        return refuse(err, errsz, NULL, "is empty");
    if (strpbrk(sas, "?#"))
        return refuse(err, errsz, NULL, "has a '?' or '#'");
    const char *p = sas;
    for (;;) {
        size_t flen = strcspn(p, "&");
        const char *eq = memchr(p, '=', flen);
        if (!eq)
            return refuse(err, errsz, NULL, "has a field without '='");
        int nl = decode(p, (size_t)(eq - p), name, sizeof(name));
        if (nl == -ENOSPC)
            return refuse(err, errsz, NULL, "has an unknown field (long name)");
        if (nl <= 0)
            return refuse(err, errsz, NULL, "has an empty or badly encoded field name");
        size_t k = 0;
        while (k < N_FIELDS && strcmp(sas_fields[k], name) != 0)
            k++;
        /* name is printable (decode refused control characters) and at most 15 bytes. */
        if (k == N_FIELDS)
            return refuse(err, errsz, name, "is not allowed");
        if (seen & (1u << k))
            return refuse(err, errsz, name, "appears twice");
        seen |= 1u << k;
        int vl = decode(eq + 1, flen - (size_t)(eq + 1 - p), value, sizeof(value));
        if (vl < 0)
            return refuse(err, errsz, name, "has a bad value");
        if (strcmp(name, "se") == 0 && bs_sas_time(value, &se) != 0)
            return refuse(err, errsz, name, "is not a time");
        if (strcmp(name, "st") == 0) {
            int64_t st;
            if (bs_sas_time(value, &st) != 0)
                return refuse(err, errsz, name, "is not a time");
        }
        if (pos) {
            if (outsz && pos + 1 >= outsz)
                return -ENOSPC;
            if (outsz)
                out[pos] = '&';
            pos++;
        }
        if (encode_append(name, out, outsz, &pos) != 0)
            return -ENOSPC;
        if (outsz && pos + 1 >= outsz)
            return -ENOSPC;
        if (outsz)
            out[pos] = '=';
        pos++;
        if (encode_append(value, out, outsz, &pos) != 0)
            return -ENOSPC;
        if (outsz)
            out[pos] = '\0';
        if (p[flen] == '\0')
            break;
        p += flen + 1;
    }
    int has_si = (seen & field_bit("si")) != 0, has_sig = (seen & field_bit("sig")) != 0;
    if (!has_sig)
        return refuse(err, errsz, NULL, "has no signature (sig)");
    if (!se && !has_si)
        return refuse(err, errsz, NULL, "has neither an expiry (se) nor a policy (si)");
    if (info) {
        info->expiry = se;
        info->has_si = has_si;
    }
    return 0;
}

int bs_sas_parse(const char *sas, char *out, size_t outsz, struct bs_sas_info *info, char *err,
                 size_t errsz)
{
    int rc = parse_into(sas, out, outsz, info, err, errsz);
    if (rc && outsz)
        out[0] = '\0'; /* never half a query */
    return rc;
}
