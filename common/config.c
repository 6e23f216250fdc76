/* Table-driven configuration loader (see config.h). It parses and bounds-checks values;
 * it does not watch for changes or know where a component's table comes from. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char *bs_cfg_getenv(const char *name, void *ctx)
{
    (void)ctx;
    return getenv(name);
}

int bs_cfg_parse_number(enum bs_cfg_type type, const char *s, long long *out)
{
    if (!s)
        return -EINVAL;
    while (isspace((unsigned char)*s))
        s++;
    if (!isdigit((unsigned char)*s) && *s != '-')
        return -EINVAL;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno)
        return -ERANGE;
    long long mul = 1;
    if (type == BS_CFG_BYTES) {
        switch (toupper((unsigned char)*end)) {
        case 'K':
            mul = 1LL << 10;
            end++;
            break;
        case 'M':
            mul = 1LL << 20;
            end++;
            break;
        case 'G':
            mul = 1LL << 30;
            end++;
            break;
        case 'T':
            mul = 1LL << 40;
            end++;
            break;
        default:
            break;
        }
        if (mul > 1 && (*end == 'i' || *end == 'I'))
            end++;
        if (mul > 1 && (*end == 'B' || *end == 'b'))
            end++;
    } else if (type == BS_CFG_MS) {
        if (strncmp(end, "ms", 2) == 0)
            end += 2;
        else if (*end == 's')
            mul = 1000, end++;
        else if (*end == 'm')
            mul = 60000, end++;
    }
    while (isspace((unsigned char)*end))
        end++;
    if (*end)
        return -EINVAL;
    if (v != 0 && (v > __LONG_LONG_MAX__ / mul || v < -__LONG_LONG_MAX__ / mul))
        return -ERANGE;
    *out = v * mul;
    return 0;
}

static int set_one(const struct bs_cfg_entry *e, void *obj, const char *val, char *err,
                   size_t errsz)
{
    char *field = (char *)obj + e->offset;
    if (e->type == BS_CFG_STR) {
        size_t len = strlen(val);
        if ((long long)len > e->max || len >= BS_CFG_STR_MAX) {
            snprintf(err, errsz, "%s: value is %zu bytes, at most %lld allowed", e->name, len,
                     e->max);
            return -EINVAL;
        }
        memcpy(field, val, len + 1);
        return 0;
    }
    long long v;
    if (bs_cfg_parse_number(e->type, val, &v) != 0 || v < e->min || v > e->max) {
        snprintf(err, errsz, "%s: invalid value \"%.64s\" (expected %s in %lld..%lld)", e->name,
                 e->secret ? "***" : val,
                 e->type == BS_CFG_BYTES ? "bytes"
                 : e->type == BS_CFG_MS  ? "milliseconds"
                                         : "an integer",
                 e->min, e->max);
        return -EINVAL;
    }
    memcpy(field, &v, sizeof(v));
    return 0;
}

int bs_cfg_load(const struct bs_cfg_entry *table, size_t n, void *obj, bs_cfg_lookup_fn lookup,
                void *ctx, char *err, size_t errsz)
{
    for (size_t i = 0; i < n; i++) {
        const struct bs_cfg_entry *e = &table[i];
        int rc = set_one(e, obj, e->def, err, errsz);
        if (rc)
            return rc;
        const char *v = lookup ? lookup(e->name, ctx) : NULL;
        /* An empty value sets an empty string (e.g. "no socket"); for a number it means
         * "unset" and keeps the default. */
        if (v && (*v || e->type == BS_CFG_STR)) {
            rc = set_one(e, obj, v, err, errsz);
            if (rc)
                return rc;
        }
    }
    return 0;
}

void bs_cfg_print_help(const struct bs_cfg_entry *table, size_t n, FILE *out)
{
    for (size_t i = 0; i < n; i++) {
        const struct bs_cfg_entry *e = &table[i];
        if (e->type == BS_CFG_STR)
            fprintf(out, "  %-32s default \"%s\"\n      %s\n", e->name, e->def, e->help);
        else
            fprintf(out, "  %-32s default %s, range %lld..%lld\n      %s\n", e->name, e->def,
                    e->min, e->max, e->help);
    }
}

void bs_cfg_format(const struct bs_cfg_entry *table, size_t n, const void *obj, char *buf,
                   size_t bufsz)
{
    size_t used = 0;
    if (bufsz == 0)
        return;
    buf[0] = '\0';
    for (size_t i = 0; i < n && used < bufsz; i++) {
        const struct bs_cfg_entry *e = &table[i];
        const char *field = (const char *)obj + e->offset;
        int w;
        if (e->type == BS_CFG_STR)
            w = snprintf(buf + used, bufsz - used, "%s%s=\"%s\"", used ? " " : "", e->name,
                         e->secret && *field ? "***" : field);
        else if (e->secret)
            w = snprintf(buf + used, bufsz - used, "%s%s=***", used ? " " : "", e->name);
        else {
            long long v;
            memcpy(&v, field, sizeof(v));
            w = snprintf(buf + used, bufsz - used, "%s%s=%lld", used ? " " : "", e->name, v);
        }
        if (w < 0)
            break;
        used += (size_t)w;
    }
}
