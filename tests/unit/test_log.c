/* Unit tests of the log sink (common/log.c): no value can forge a line or a key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

/* Runs one bs_log_emit with stderr redirected to a pipe; returns what was written. */
static char *capture(const char *value)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    int saved = dup(STDERR_FILENO);
    dup2(p[1], STDERR_FILENO);
    bs_log_set_level(BS_LOG_DEBUG);
    bs_log(BS_LOG_DEBUG, "test", "event=x blob=\"%s\" end=1", value);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(p[1]);
    char *buf = calloc(1, 8192);
    ssize_t n = read(p[0], buf, 8191);
    close(p[0]);
    assert_true(n > 0);
    return buf;
}

static void test_sink_escapes_control_bytes(void **state)
{
    (void)state;
    char *line = capture("a\nts=1999 level=error comp=agent event=forged\r\x1b[2J\x7f");
    /* One line, the newline only at the end. */
    assert_ptr_equal(strchr(line, '\n'), line + strlen(line) - 1);
    assert_null(strchr(line, '\r'));
    assert_null(strchr(line, '\x1b'));
    assert_non_null(strstr(line, "blob=\"a\\x0ats=1999"));
    assert_non_null(strstr(line, "\\x0d\\x1b[2J\\x7f\" end=1\n"));
    free(line);

    /* A long value is cut, but the line still ends with exactly one newline. */
    char big[5000];
    memset(big, '\n', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    line = capture(big);
    assert_ptr_equal(strchr(line, '\n'), line + strlen(line) - 1);
    free(line);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sink_escapes_control_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
