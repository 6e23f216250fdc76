/* Level-checked structured logging: one line per event, key=value, to stderr.
 * Nothing is formatted below the configured level. The provider shim sets the level
 * from BLOBSWARM_LOG_LEVEL and is silent by default; daemons default to info. */
#ifndef BS_LOG_H
#define BS_LOG_H

enum bs_log_level { BS_LOG_ERROR = 0, BS_LOG_WARN, BS_LOG_INFO, BS_LOG_DEBUG, BS_LOG_OFF = -1 };

extern int bs_log_threshold;

/* Parses "error|warn|info|debug|off" (NULL/empty gives `fallback`). */
int bs_log_parse_level(const char *s, int fallback);
void bs_log_set_level(int level);

/* A rate limit for one kind of log line an outsider can trigger at will (refusals): a flood
 * must not become a log flood; metrics count every event. Zero-initialise. */
struct bs_log_limit {
    _Atomic unsigned long long next_ns, quiet;
};
/* 1 when a line may be written now (and *quiet gets how many were held back since the last
 * one), at most one per every_ms; 0 otherwise (counted). Thread-safe. */
int bs_log_allow(struct bs_log_limit *l, unsigned every_ms, unsigned long long *quiet);
void bs_log_emit(int level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define bs_log(level, component, ...)                                                              \
    do {                                                                                           \
        if ((level) <= bs_log_threshold)                                                           \
            bs_log_emit((level), (component), __VA_ARGS__);                                        \
    } while (0)

#endif
