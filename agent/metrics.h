/* A small Prometheus registry: counters, gauges and histograms, each a family with fixed
 * label names and a bounded number of label-value series, updated lock-free on the hot path
 * after the series exists, rendered in the text exposition format (version 0.0.4).
 * It does not serve HTTP; the agent's server calls bs_metrics_render. */
#ifndef BS_METRICS_H
#define BS_METRICS_H

#include <stddef.h>

struct bs_metrics;
struct bs_metric;

#define BS_METRICS_MAX_SERIES 64 /* per family; further label combinations are dropped */

struct bs_metrics *bs_metrics_create(void);
void bs_metrics_destroy(struct bs_metrics *m);

/* Families. `labels` is a comma-separated list of label names ("source,kind") or NULL.
 * Names must be valid Prometheus names; counters should end in _total. NULL on error. */
struct bs_metric *bs_metrics_counter(struct bs_metrics *m, const char *name, const char *help,
                                     const char *labels);
struct bs_metric *bs_metrics_gauge(struct bs_metrics *m, const char *name, const char *help,
                                   const char *labels);
/* buckets: ascending upper bounds (+Inf is implicit). */
struct bs_metric *bs_metrics_histogram(struct bs_metrics *m, const char *name, const char *help,
                                       const char *labels, const double *buckets, size_t n);

/* `values` are the label values in order, comma-separated ("local,hit"), or NULL for none.
 * Values are escaped on output. Thread-safe. */
void bs_metric_add(struct bs_metric *f, const char *values, double v);
void bs_metric_set(struct bs_metric *f, const char *values, double v);
void bs_metric_observe(struct bs_metric *f, const char *values, double v);

/* -EINVAL with the name of the first family whose registration was refused (an invalid name,
 * or a name registered again with another type, help, labels or buckets: that caller got NULL
 * and its updates would silently be lost), else 0. The agent checks it once at start. */
int bs_metrics_error(struct bs_metrics *m, char *err, size_t errsz);

/* Renders every family into a malloc'd NUL-terminated string (caller frees); *len gets its
 * length. NULL on allocation failure. */
char *bs_metrics_render(struct bs_metrics *m, size_t *len);

#endif
