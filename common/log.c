/* Structured log sink (see log.h). Writes whole lines with one write(2) so that lines from
 * concurrent threads never interleave, and escapes every control byte so that no value (a
 * blob name, a reason from Azure) can start a line of its own. Does not rotate, buffer or
 * filter by component. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

int bs_log_threshold = BS_LOG_OFF;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int bs_log_parse_level(const char *s, int fallback)
{
    if (!s || !*s)
        return fallback;
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    if (strcasecmp(s, "off") == 0 || strcasecmp(s, "none") == 0)
        return BS_LOG_OFF;
    return fallback;
}

void bs_log_set_level(int level)
{
    bs_log_threshold = level;
}

int bs_log_allow(struct bs_log_limit *l, unsigned every_ms, unsigned long long *quiet)
{
    unsigned long long now = bs_now_ns(), next = atomic_load(&l->next_ns);
    if (now < next || !atomic_compare_exchange_strong(
                          &l->next_ns, &next, now + (unsigned long long)every_ms * 1000000ull)) {
        atomic_fetch_add(&l->quiet, 1);
        return 0;
    }
    *quiet = atomic_exchange(&l->quiet, 0);
    return 1;
}

void bs_log_emit(int level, const char *component, const char *fmt, ...)
{
    char line[2048], text[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n =
        snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s comp=%s ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 ts.tv_nsec / 1000000, level_names[level < 0 ? 0 : level & 3], component);
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    /* Control bytes become \xNN; quotes are the caller's (bs_name_escape for values). */
    static const char hex[] = "0123456789abcdef";
    size_t len = (size_t)n;
    for (const unsigned char *p = (const unsigned char *)text; *p && len + 5 < sizeof(line); p++) {
        if (*p < 0x20 || *p == 0x7f) {
            line[len++] = '\\';
            line[len++] = 'x';
            line[len++] = hex[*p >> 4];
            line[len++] = hex[*p & 15];
        } else {
            line[len++] = (char)*p;
        }
    }
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
