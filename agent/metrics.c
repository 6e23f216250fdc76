/* A small Prometheus registry: counter, gauge and histogram families with fixed label names,
 * at most BS_METRICS_MAX_SERIES label-value series each, updated with C11 atomics once a
 * series exists, rendered in the text exposition format 0.0.4. It does not serve HTTP, log,
 * or expire series: a series lives as long as its registry. */
#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Limits that bound the memory of one family. Label values come from the caller's data
 * (sources, kinds, status codes): a values string longer than BS_METRICS_MAX_VALUES_LEN, or
 * not UTF-8, is dropped like a combination beyond the series limit. A label value cannot
 * contain a comma (the values string is split on commas); every other character is escaped
 * as the format requires. */
#define BS_METRICS_MAX_NAME       128 /* bytes of a family name, with the _total suffix */
#define BS_METRICS_MAX_HELP       1024
#define BS_METRICS_MAX_LABELS     8
#define BS_METRICS_MAX_BUCKETS    32 /* explicit bounds of a histogram, +Inf not counted */
#define BS_METRICS_MAX_VALUES_LEN 256

#define DROPPED_NAME "blobswarm_metrics_dropped_series_total"
#define DROPPED_HELP                                                                               \
    "Metric updates dropped because their family already had its maximum number of series "        \
    "or their label values did not match the family's label names."

enum kind { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM };

/* One label-value combination. `value` (counter, gauge) and `sum` (histogram) hold the bits
 * of a double; `counts[i]` counts observations in (bound[i-1], bound[i]], the last one those
 * above every bound. The render makes them cumulative and derives _count from them, so a
 * render racing an observe still shows a +Inf bucket equal to _count. */
struct series {
    const char *key; /* the values string as given; points into this allocation */
    _Atomic uint64_t value;
    _Atomic uint64_t sum;
    _Atomic uint64_t counts[]; /* nbuckets + 1 for histograms, none otherwise */
};

struct bs_metric {
    struct bs_metrics *reg;
    struct bs_metric *next;
    enum kind kind;
    char *name;
    char *help;
    size_t nlabels;
    char *label_names[BS_METRICS_MAX_LABELS];
    size_t nbuckets;
    double *buckets;
    /* Slots [0, nseries) are written once, under reg->lock, before nseries is raised with
     * release order; lock-free readers load nseries with acquire order and read only those. */
    _Atomic size_t nseries;
    struct series *series[BS_METRICS_MAX_SERIES];
};

struct bs_metrics {
    pthread_mutex_t lock; /* family list, series creation, render */
    struct bs_metric *first, *last;
    _Atomic uint64_t dropped;
    char bad[BS_METRICS_MAX_NAME + 64]; /* the first registration refused, for bs_metrics_error */
};

/* ---- atomic doubles ---- */

static uint64_t dbl_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static double bits_dbl(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static void atomic_add_dbl(_Atomic uint64_t *p, double v)
{
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(p, &old, dbl_bits(bits_dbl(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/* ---- registration ---- */

static int valid_name(const char *s, int allow_colon)
{
    if (!s || !*s)
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (allow_colon && c == ':') || (p != s && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

/* 1 if s is valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF): the
 * exposition has no escape for other bytes, and one invalid label value fails the scrape. */
static int utf8_valid(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        unsigned c = *s++, cp, min;
        int more;
        if (c < 0x80)
            continue;
        if ((c & 0xe0) == 0xc0) {
            more = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            more = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            more = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        for (; more > 0; more--, s++) {
            if ((*s & 0xc0) != 0x80) /* also stops at the terminating NUL */
                return 0;
            cp = cp << 6 | (*s & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
    }
    return 1;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

static void family_free(struct bs_metric *f)
{
    if (!f)
        return;
    size_t n = atomic_load_explicit(&f->nseries, memory_order_relaxed);
    for (size_t i = 0; i < n; i++)
        free(f->series[i]);
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->label_names[i]);
    free(f->buckets);
    free(f->help);
    free(f->name);
    free(f);
}

/* Splits the comma-separated `labels` into f->label_names. 0 or -EINVAL/-ENOMEM. */
static int parse_label_names(struct bs_metric *f, const char *labels)
{
    if (!labels || !*labels)
        return 0;
    const char *p = labels;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (f->nlabels == BS_METRICS_MAX_LABELS || n == 0 || n >= BS_METRICS_MAX_NAME)
            return -EINVAL;
        char *name = strndup(p, n);
        if (!name)
            return -ENOMEM;
        f->label_names[f->nlabels++] = name;
        if (!valid_name(name, 0) || strncmp(name, "__", 2) == 0 ||
            (f->kind == KIND_HISTOGRAM && strcmp(name, "le") == 0))
            return -EINVAL;
        for (size_t i = 0; i + 1 < f->nlabels; i++)
            if (strcmp(f->label_names[i], name) == 0)
                return -EINVAL;
        if (!end)
            return 0;
        p = end + 1;
    }
}

static struct series *series_new(const struct bs_metric *f, const char *values)
{
    size_t ncounts = f->kind == KIND_HISTOGRAM ? f->nbuckets + 1 : 0;
    size_t head = sizeof(struct series) + ncounts * sizeof(_Atomic uint64_t);
    size_t keylen = strlen(values);
    struct series *s = malloc(head + keylen + 1);
    if (!s)
        return NULL;
    char *key = (char *)s + head;
    memcpy(key, values, keylen + 1);
    s->key = key;
    atomic_init(&s->value, dbl_bits(0.0));
    atomic_init(&s->sum, dbl_bits(0.0));
    for (size_t i = 0; i < ncounts; i++)
        atomic_init(&s->counts[i], 0);
    return s;
}

static struct bs_metric *family_find(struct bs_metrics *m, const char *name)
{
    for (struct bs_metric *f = m->first; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

/* 1 if `a` and `b` describe the same family: kind, help, label names and bounds. */
static int same_definition(const struct bs_metric *a, const struct bs_metric *b)
{
    if (a->kind != b->kind || strcmp(a->help, b->help) != 0 || a->nlabels != b->nlabels ||
        a->nbuckets != b->nbuckets)
        return 0;
    for (size_t i = 0; i < a->nlabels; i++)
        if (strcmp(a->label_names[i], b->label_names[i]) != 0)
            return 0;
    for (size_t i = 0; i < a->nbuckets; i++)
        if (a->buckets[i] != b->buckets[i])
            return 0;
    return 1;
}

/* Builds and links a family. Counter names get "_total" appended unless they end in it.
 * A family without labels gets its one series now, so it renders 0 before any update.
 * Registering a name again returns the existing family if the definition is the same (two
 * modules may share one, each with its own label values), NULL if it differs. */
static struct bs_metric *family_add_(struct bs_metrics *m, enum kind kind, const char *name,
                                     const char *help, const char *labels, const double *buckets,
                                     size_t nbuckets);

/* Every refused registration is remembered (the first one by name), so that a metric that
 * would silently never count stops the agent at start instead (bs_metrics_error). */
static struct bs_metric *family_add(struct bs_metrics *m, enum kind kind, const char *name,
                                    const char *help, const char *labels, const double *buckets,
                                    size_t nbuckets)
{
    struct bs_metric *f = family_add_(m, kind, name, help, labels, buckets, nbuckets);
    if (!f && m) {
        pthread_mutex_lock(&m->lock);
        if (!m->bad[0])
            snprintf(m->bad, sizeof(m->bad), "%.*s", BS_METRICS_MAX_NAME,
                     name && *name ? name : "(unnamed)");
        pthread_mutex_unlock(&m->lock);
    }
    return f;
}

int bs_metrics_error(struct bs_metrics *m, char *err, size_t errsz)
{
    pthread_mutex_lock(&m->lock);
    int rc = m->bad[0] ? -EINVAL : 0;
    if (rc)
        snprintf(err, errsz,
                 "metric %s could not be registered (invalid, or registered twice with another "
                 "definition)",
                 m->bad);
    pthread_mutex_unlock(&m->lock);
    return rc;
}

static struct bs_metric *family_add_(struct bs_metrics *m, enum kind kind, const char *name,
                                     const char *help, const char *labels, const double *buckets,
                                     size_t nbuckets)
{
    if (!m || !valid_name(name, 1) || !help || !*help || strlen(help) > BS_METRICS_MAX_HELP ||
        !utf8_valid(help))
        return NULL;
    const char *suffix = kind == KIND_COUNTER && !ends_with(name, "_total") ? "_total" : "";
    if (strlen(name) + strlen(suffix) > BS_METRICS_MAX_NAME)
        return NULL;
    if (kind == KIND_HISTOGRAM) {
        if (nbuckets > 0 && !buckets)
            return NULL;
        if (nbuckets > 0 && buckets[nbuckets - 1] == INFINITY)
            nbuckets--; /* +Inf is implicit */
        if (nbuckets > BS_METRICS_MAX_BUCKETS)
            return NULL;
        for (size_t i = 0; i < nbuckets; i++)
            if (!isfinite(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1])))
                return NULL;
    }

    struct bs_metric *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->reg = m;
    f->kind = kind;
    atomic_init(&f->nseries, 0);
    size_t namelen = strlen(name) + strlen(suffix) + 1;
    f->name = malloc(namelen);
    f->help = strdup(help);
    if (!f->name || !f->help)
        goto out_free;
    snprintf(f->name, namelen, "%s%s", name, suffix);
    if (parse_label_names(f, labels) != 0)
        goto out_free;
    if (kind == KIND_HISTOGRAM && nbuckets > 0) {
        f->buckets = malloc(nbuckets * sizeof(double));
        if (!f->buckets)
            goto out_free;
        memcpy(f->buckets, buckets, nbuckets * sizeof(double));
        f->nbuckets = nbuckets;
    }
    if (f->nlabels == 0) {
        f->series[0] = series_new(f, "");
        if (!f->series[0])
            goto out_free;
        atomic_store_explicit(&f->nseries, 1, memory_order_relaxed);
    }

    pthread_mutex_lock(&m->lock);
    struct bs_metric *existing = family_find(m, f->name);
    if (existing || strcmp(f->name, DROPPED_NAME) == 0) {
        pthread_mutex_unlock(&m->lock);
        if (existing && !same_definition(existing, f))
            existing = NULL;
        family_free(f);
        return existing;
    }
    if (m->last)
        m->last->next = f;
    else
        m->first = f;
    m->last = f;
    pthread_mutex_unlock(&m->lock);
    return f;

out_free:
    family_free(f);
    return NULL;
}

struct bs_metric *bs_metrics_counter(struct bs_metrics *m, const char *name, const char *help,
                                     const char *labels)
{
    return family_add(m, KIND_COUNTER, name, help, labels, NULL, 0);
}

struct bs_metric *bs_metrics_gauge(struct bs_metrics *m, const char *name, const char *help,
                                   const char *labels)
{
    return family_add(m, KIND_GAUGE, name, help, labels, NULL, 0);
}

struct bs_metric *bs_metrics_histogram(struct bs_metrics *m, const char *name, const char *help,
                                       const char *labels, const double *buckets, size_t n)
{
    return family_add(m, KIND_HISTOGRAM, name, help, labels, buckets, n);
}

struct bs_metrics *bs_metrics_create(void)
{
    struct bs_metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m);
        return NULL;
    }
    atomic_init(&m->dropped, 0);
    return m;
}

void bs_metrics_destroy(struct bs_metrics *m)
{
    if (!m)
        return;
    struct bs_metric *f = m->first;
    while (f) {
        struct bs_metric *next = f->next;
        family_free(f);
        f = next;
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* ---- updates ---- */

static struct series *scan(struct bs_metric *f, const char *values, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(f->series[i]->key, values) == 0)
            return f->series[i];
    return NULL;
}

/* 1 if `values` may become a series of f: one value per label name, bounded, UTF-8. */
static int values_match_labels(const struct bs_metric *f, const char *values)
{
    if (strlen(values) > BS_METRICS_MAX_VALUES_LEN || !utf8_valid(values))
        return 0;
    if (f->nlabels == 0)
        return *values == '\0';
    size_t n = 1;
    for (const char *p = values; *p; p++)
        n += *p == ',';
    return n == f->nlabels;
}

/* The series for `values`, created if the family has room; NULL (and one dropped update
 * counted) otherwise. Lock-free when the series exists or the family is full. */
static struct series *series_get(struct bs_metric *f, const char *values)
{
    if (!values)
        values = "";
    size_t n = atomic_load_explicit(&f->nseries, memory_order_acquire);
    struct series *s = scan(f, values, n);
    if (s)
        return s;
    if (n == BS_METRICS_MAX_SERIES || !values_match_labels(f, values))
        goto out_dropped;

    pthread_mutex_lock(&f->reg->lock);
    size_t now = atomic_load_explicit(&f->nseries, memory_order_relaxed);
    s = now > n ? scan(f, values, now) : NULL; /* [0, n) was scanned already */
    if (!s && now < BS_METRICS_MAX_SERIES) {
        s = series_new(f, values);
        if (s) {
            f->series[now] = s;
            atomic_store_explicit(&f->nseries, now + 1, memory_order_release);
        }
    }
    pthread_mutex_unlock(&f->reg->lock);
    if (s)
        return s;
out_dropped:
    atomic_fetch_add_explicit(&f->reg->dropped, 1, memory_order_relaxed);
    return NULL;
}

/* Counters ignore negative and NaN increments; histograms ignore add and set. */
void bs_metric_add(struct bs_metric *f, const char *values, double v)
{
    if (!f || f->kind == KIND_HISTOGRAM || (f->kind == KIND_COUNTER && !(v >= 0)))
        return;
    struct series *s = series_get(f, values);
    if (s)
        atomic_add_dbl(&s->value, v);
}

/* On a counter, the caller mirrors a total kept elsewhere and keeps it monotonic. */
void bs_metric_set(struct bs_metric *f, const char *values, double v)
{
    if (!f || f->kind == KIND_HISTOGRAM)
        return;
    struct series *s = series_get(f, values);
    if (s)
        atomic_store_explicit(&s->value, dbl_bits(v), memory_order_relaxed);
}

/* v lands in the first bucket whose bound is >= v; NaN and values above every bound in +Inf. */
void bs_metric_observe(struct bs_metric *f, const char *values, double v)
{
    if (!f || f->kind != KIND_HISTOGRAM)
        return;
    struct series *s = series_get(f, values);
    if (!s)
        return;
    size_t i = 0;
    while (i < f->nbuckets && !(v <= f->buckets[i]))
        i++;
    atomic_fetch_add_explicit(&s->counts[i], 1, memory_order_relaxed);
    atomic_add_dbl(&s->sum, v);
}

/* ---- render ---- */

struct buf {
    char *p;
    size_t len, cap;
    int oom;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Backslash and newline always; the double quote too inside a label value. */
static void put_escaped(struct buf *b, const char *s, size_t n, int quote)
{
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        const char *esc = s[i] == '\\'           ? "\\\\"
                          : s[i] == '\n'         ? "\\n"
                          : quote && s[i] == '"' ? "\\\""
                                                 : NULL;
        if (!esc)
            continue;
        put(b, s + run, i - run);
        puts_(b, esc);
        run = i + 1;
    }
    put(b, s + run, n - run);
}

/* Writes v into tmp: integral values as integers, others in the shortest %g form that reads
 * back exactly, NaN and infinities as the exposition format spells them. Returns tmp. */
static const char *fmt_double(char tmp[40], double v)
{
    if (isnan(v))
        return "NaN";
    if (isinf(v))
        return v > 0 ? "+Inf" : "-Inf";
    if (v >= -9.0e18 && v <= 9.0e18 && v == (double)(int64_t)v) {
        snprintf(tmp, 40, "%" PRId64, (int64_t)v);
        return tmp;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, 40, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    return tmp;
}

static void put_double(struct buf *b, double v)
{
    char tmp[40];
    puts_(b, fmt_double(tmp, v));
}

static void put_u64(struct buf *b, uint64_t v)
{
    char tmp[24];
    snprintf(tmp, sizeof(tmp), "%" PRIu64, v);
    puts_(b, tmp);
}

static void put_header(struct buf *b, const char *name, const char *help, const char *type)
{
    puts_(b, "# HELP ");
    puts_(b, name);
    puts_(b, " ");
    put_escaped(b, help, strlen(help), 0);
    puts_(b, "\n# TYPE ");
    puts_(b, name);
    puts_(b, " ");
    puts_(b, type);
    puts_(b, "\n");
}

/* `name{l1="v1",...,le="bound"}` with the braces omitted when there is nothing inside. */
static void put_series_name(struct buf *b, const struct bs_metric *f, const char *suffix,
                            const char *key, const char *le)
{
    puts_(b, f->name);
    puts_(b, suffix);
    if (f->nlabels == 0 && !le)
        return;
    puts_(b, "{");
    const char *p = key;
    for (size_t i = 0; i < f->nlabels; i++) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (i)
            puts_(b, ",");
        puts_(b, f->label_names[i]);
        puts_(b, "=\"");
        put_escaped(b, p, n, 1);
        puts_(b, "\"");
        p = end ? end + 1 : p + n;
    }
    if (le) {
        puts_(b, f->nlabels ? ",le=\"" : "le=\"");
        puts_(b, le);
        puts_(b, "\"");
    }
    puts_(b, "}");
}

static void put_histogram(struct buf *b, const struct bs_metric *f, const struct series *s)
{
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= f->nbuckets; i++) {
        char tmp[40];
        const char *le = i < f->nbuckets ? fmt_double(tmp, f->buckets[i]) : "+Inf";
        cumulative += atomic_load_explicit(&s->counts[i], memory_order_relaxed);
        put_series_name(b, f, "_bucket", s->key, le);
        puts_(b, " ");
        put_u64(b, cumulative);
        puts_(b, "\n");
    }
    put_series_name(b, f, "_sum", s->key, NULL);
    puts_(b, " ");
    put_double(b, bits_dbl(atomic_load_explicit(&s->sum, memory_order_relaxed)));
    puts_(b, "\n");
    put_series_name(b, f, "_count", s->key, NULL);
    puts_(b, " ");
    put_u64(b, cumulative);
    puts_(b, "\n");
}

/* Families without any series yet are left out (nothing to expose). */
char *bs_metrics_render(struct bs_metrics *m, size_t *len)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    struct buf b = {0};
    if (!m)
        return NULL;
    pthread_mutex_lock(&m->lock);
    for (const struct bs_metric *f = m->first; f; f = f->next) {
        size_t n = atomic_load_explicit(&f->nseries, memory_order_relaxed);
        if (n == 0)
            continue;
        put_header(&b, f->name, f->help, type_names[f->kind]);
        for (size_t i = 0; i < n; i++) {
            const struct series *s = f->series[i];
            if (f->kind == KIND_HISTOGRAM) {
                put_histogram(&b, f, s);
                continue;
            }
            put_series_name(&b, f, "", s->key, NULL);
            puts_(&b, " ");
            put_double(&b, bits_dbl(atomic_load_explicit(&s->value, memory_order_relaxed)));
            puts_(&b, "\n");
        }
    }
    pthread_mutex_unlock(&m->lock);
    put_header(&b, DROPPED_NAME, DROPPED_HELP, "counter");
    puts_(&b, DROPPED_NAME " ");
    put_u64(&b, atomic_load_explicit(&m->dropped, memory_order_relaxed));
    puts_(&b, "\n");
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.p;
}
