/* Structured log sink (see log.h). Writes whole lines with one write(2) so that lines from
 * concurrent threads never interleave. Does not rotate, buffer or filter by component. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

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

void bs_log_emit(int level, const char *component, const char *fmt, ...)
{
    char line[2048];
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
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
