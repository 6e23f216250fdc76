/* Configuration as data: a table of (name, type, bounds, default, field) that fills a
 * caller-owned struct from a key lookup function (environment, flags, a JSON file), validates
 * every value against its bounds, and prints itself for --help and start-up logs.
 * It does not know any component's settings; each component owns its table. */
#ifndef BS_CONFIG_H
#define BS_CONFIG_H

#include <stddef.h>
#include <stdio.h>

enum bs_cfg_type {
    BS_CFG_INT,   /* long long, plain integer */
    BS_CFG_BYTES, /* long long, integer with optional K/M/G/T suffix (powers of 1024) */
    BS_CFG_MS,    /* long long, milliseconds; optional suffix ms/s/m */
    BS_CFG_STR,   /* char[BS_CFG_STR_MAX], copied */
};

#define BS_CFG_STR_MAX 1024

struct bs_cfg_entry {
    const char *name; /* e.g. "BLOBSWARM_RANGE_BYTES" */
    enum bs_cfg_type type;
    long long min, max; /* inclusive bounds for numbers; max length for strings */
    const char *def;    /* default, as text */
    size_t offset;      /* offsetof(struct, field) */
    const char *help;
    int secret; /* never printed */
};

/* Returns the raw value for a name, or NULL when unset. */
typedef const char *(*bs_cfg_lookup_fn)(const char *name, void *ctx);

/* Fills `obj` from defaults then `lookup`. An empty value sets an empty string, and leaves a
 * number at its default. Returns 0, or -EINVAL with a message naming the key, the value and
 * the accepted range in `err`. */
int bs_cfg_load(const struct bs_cfg_entry *table, size_t n, void *obj, bs_cfg_lookup_fn lookup,
                void *ctx, char *err, size_t errsz);

/* Parses one value of `type` (used by bs_cfg_load, exposed for tests). */
int bs_cfg_parse_number(enum bs_cfg_type type, const char *s, long long *out);

/* Environment lookup for bs_cfg_load. */
const char *bs_cfg_getenv(const char *name, void *ctx);

/* Prints "name  default  [min..max]  help" lines (for --help). */
void bs_cfg_print_help(const struct bs_cfg_entry *table, size_t n, FILE *out);
/* Writes "name=value name=value ..." of the effective values into buf (secrets masked). */
void bs_cfg_format(const struct bs_cfg_entry *table, size_t n, const void *obj, char *buf,
                   size_t bufsz);

#endif
