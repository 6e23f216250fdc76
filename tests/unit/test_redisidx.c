/* Unit tests for peer/redisidx without a Redis server: the URL parser (good and bad URLs,
 * passwords holding ':' '@' '/', databases), the blob-version tag (fixed vectors computed with
 * `printf 'a\nc\nb\ne\n' | sha256sum | cut -c1-32`), option checks at create, and the calls'
 * answers when there is no index or no reachable Redis. tests/integration/test_redisidx.c
 * covers the behaviour against a real redis-server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "clock.h"
#include "redisidx.h"

struct url {
    char host[256];
    int port, db;
    char pw[512];
    char err[256];
};

static int parse(const char *s, struct url *u)
{
    memset(u, 0, sizeof(*u));
    u->port = u->db = -1;
    return bs_redis_url_parse(s, u->host, sizeof(u->host), &u->port, u->pw, sizeof(u->pw), &u->db,
                              u->err, sizeof(u->err));
}

static void test_url_good(void **state)
{
    (void)state;
    static const struct {
        const char *url, *host;
        int port;
        const char *pw;
        int db;
    } ok[] = {
        {"redis://127.0.0.1:6379", "127.0.0.1", 6379, "", 0},
        {"redis://redis", "redis", 6379, "", 0},
        {"redis://redis.ns.svc.cluster.local:7000/3", "redis.ns.svc.cluster.local", 7000, "", 3},
        {"redis://h:1/", "h", 1, "", 0},
        {"redis://h:65535/65535", "h", 65535, "", 65535},
        {"redis://:secret@h:6380/2", "h", 6380, "secret", 2},
        {"redis://:p:a@ss@w/rd@10.0.0.5:6379/1", "10.0.0.5", 6379, "p:a@ss@w/rd", 1},
        {"redis://:@@h:1", "h", 1, "@", 0},
        {"redis://[::1]:6390/4", "::1", 6390, "", 4},
        {"redis://[fe80::1]", "fe80::1", 6379, "", 0},
        {"redis://my_redis-1:6379", "my_redis-1", 6379, "", 0},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct url u;
        if (parse(ok[i].url, &u) != 0)
            fail_msg("%s refused: %s", ok[i].url, u.err);
        assert_string_equal(u.host, ok[i].host);
        assert_int_equal(u.port, ok[i].port);
        assert_string_equal(u.pw, ok[i].pw);
        assert_int_equal(u.db, ok[i].db);
    }
}

static void test_url_bad(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "127.0.0.1:6379", /* no scheme */
        "http://h:6379",
        "rediss://h:6379", /* TLS: not supported */
        "REDIS://h",
        "redis://",
        "redis://:6379",
        "redis://h:",
        "redis://h:0",
        "redis://h:65536",
        "redis://h:63a9",
        "redis://h:-1",
        "redis://h:1234567890",
        "redis://h:6379/x",
        "redis://h:6379/65536",
        "redis://h:6379/1/2",
        "redis://h:6379/-1",
        "redis://h:6379?db=1",
        "redis://h o:6379",
        "redis://h\n:6379",
        "redis://user:pw@h:6379", /* user names: not supported */
        "redis://pw@h:6379",
        "redis://:@h:6379", /* empty password */
        "redis://:pw@",
        "redis://[::1",
        "redis://[zz::1]:6379",
        "redis://[::1]x:6379",
        "redis://h/ost:6379",
        "redis://ho$t:6379",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct url u;
        if (parse(bad[i], &u) == 0)
            fail_msg("\"%s\" accepted (host %s port %d db %d)", bad[i], u.host, u.port, u.db);
        assert_true(strlen(u.err) > 0);
        assert_non_null(strstr(u.err, "redis URL"));
    }
    struct url u;
    assert_int_equal(bs_redis_url_parse(NULL, u.host, sizeof(u.host), &u.port, u.pw, sizeof(u.pw),
                                        &u.db, u.err, sizeof(u.err)),
                     -1);
}

/* A password never shows in a message, even when the URL is refused after it was read. */
static void test_url_password_not_in_errors(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "redis://:Sup3rS3cret@h:99999",
        "redis://:Sup3rS3cret@h:6379/x",
        "redis://:Sup3rS3cret@h$:6379",
        "redis://:Sup3rS3cret@",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct url u;
        assert_int_equal(parse(bad[i], &u), -1);
        assert_null(strstr(u.err, "Sup3r"));
        assert_null(strstr(u.pw, "Sup3r")); /* wiped */
    }
    char host[8], pw[4], err[128];
    int port, db;
    assert_int_equal(bs_redis_url_parse("redis://:toolong@h:1", host, sizeof(host), &port, pw,
                                        sizeof(pw), &db, err, sizeof(err)),
                     -1);
    assert_null(strstr(err, "toolong"));
    assert_int_equal(bs_redis_url_parse("redis://averyveryverylonghost:1", host, sizeof(host),
                                        &port, pw, sizeof(pw), &db, err, sizeof(err)),
                     -1);
}

static void test_tag(void **state)
{
    (void)state;
    char tag[BS_IDX_TAG_LEN + 1];
    /* printf 'a\nc\nb\ne\n' | sha256sum | cut -c1-32 */
    bs_redisidx_tag("a", "c", "b", "e", tag);
    assert_string_equal(tag, "8e0e2605f0002c27876af18ae2176924");
    bs_redisidx_tag("https://acct.blob.core.windows.net#grid=8388608", "models",
                    "llama/model-00001.safetensors", "\"0x8DC1234\"", tag);
    assert_string_equal(tag, "d01b51ff94d856287ffeb672d26302ae");
    bs_redisidx_tag("", "", "", "", tag); /* printf '\n\n\n\n' | sha256sum */
    assert_string_equal(tag, "545c38b0922de19734fbffde62792c37");
    /* The separators matter: moving a character from one field to the next changes the tag. */
    char other[BS_IDX_TAG_LEN + 1];
    bs_redisidx_tag("a", "cb", "", "e", other);
    assert_string_not_equal(tag, other);
    bs_redisidx_tag("a", "c", "b", "e", other);
    assert_string_equal(other, "8e0e2605f0002c27876af18ae2176924");
}

static struct bs_redisidx_opts good_opts(void)
{
    struct bs_redisidx_opts o = {
        .url = "redis://127.0.0.1:1", /* nothing listens on port 1 */
        .node = "node-1.a_b",
        .advertise = "10.0.0.1:7070",
        .timeout_ms = 200,
        .node_ttl_ms = 3000,
        .holder_ttl_ms = 3600000,
        .lease_ms = 30000,
        .max_holders = 4,
    };
    return o;
}

static void expect_refused(const struct bs_redisidx_opts *o, const char *what)
{
    char err[256] = "";
    struct bs_redisidx *x = bs_redisidx_create(o, NULL, err, sizeof(err));
    if (x) {
        bs_redisidx_destroy(x);
        fail_msg("options accepted: %s", what);
    }
    if (!err[0])
        fail_msg("no message for: %s", what);
}

static void test_options(void **state)
{
    (void)state;
    char err[256] = "";
    struct bs_redisidx_opts o = good_opts();
    struct bs_redisidx *x = bs_redisidx_create(&o, NULL, err, sizeof(err));
    if (!x)
        fail_msg("good options refused: %s", err);
    bs_redisidx_destroy(x);

    static const char *const bad_nodes[] = {
        "",
        "a b",
        "a/b",
        "a:b",
        "caf\xc3\xa9",
        "x\n",
        "0123456789012345678901234567890123456789012345678901234567890123", /* 64 */
    };
    for (size_t i = 0; i < sizeof(bad_nodes) / sizeof(bad_nodes[0]); i++) {
        o = good_opts();
        o.node = bad_nodes[i];
        expect_refused(&o, bad_nodes[i]);
    }
    o = good_opts();
    o.node = "012345678901234567890123456789012345678901234567890123456789012"; /* 63 */
    x = bs_redisidx_create(&o, NULL, err, sizeof(err));
    assert_non_null(x);
    bs_redisidx_destroy(x);
    o.node = NULL;
    expect_refused(&o, "no node");

    static const char *const bad_addrs[] = {
        "",
        "10.0.0.1",
        "10.0.0.1:",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.256:80",
        "host:80",
        "::1:80",
        "[::1]",
        "[::1]80",
        "[zz]:80",
        "10.0.0.1:80 ",
        " 10.0.0.1:80",
        "10.0.0.1:8a",
    };
    for (size_t i = 0; i < sizeof(bad_addrs) / sizeof(bad_addrs[0]); i++) {
        o = good_opts();
        o.advertise = bad_addrs[i];
        expect_refused(&o, bad_addrs[i]);
    }
    o = good_opts();
    o.advertise = "[fd00::5]:7070";
    x = bs_redisidx_create(&o, NULL, err, sizeof(err));
    assert_non_null(x);
    bs_redisidx_destroy(x);

    o = good_opts();
    o.url = "127.0.0.1:6379";
    expect_refused(&o, "URL without scheme");
    o = good_opts();
    o.timeout_ms = 0;
    expect_refused(&o, "timeout 0");
    o = good_opts();
    o.node_ttl_ms = 500; /* < 3 x timeout */
    expect_refused(&o, "node TTL below 3 x timeout");
    o = good_opts();
    o.holder_ttl_ms = 0;
    expect_refused(&o, "holder TTL 0");
    o = good_opts();
    o.lease_ms = 0;
    expect_refused(&o, "lease 0");
    o = good_opts();
    o.max_holders = 0;
    expect_refused(&o, "max holders 0");
    o.max_holders = BS_IDX_MAX_HOLDERS + 1;
    expect_refused(&o, "max holders 9");
    o = good_opts();
    o.password_file = "/nonexistent/redis-password";
    expect_refused(&o, "missing password file");
    assert_null(bs_redisidx_create(NULL, NULL, err, sizeof(err)));
}

static void test_password_file(void **state)
{
    (void)state;
    char path[] = "/tmp/bs-redisidx-pw.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    char err[256] = "";
    struct bs_redisidx_opts o = good_opts();
    o.password_file = path;
    /* empty file, empty first line: refused */
    expect_refused(&o, "empty password file");
    assert_int_equal(write(fd, "\nsecond\n", 8), 8);
    expect_refused(&o, "empty first line");
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(pwrite(fd, "pw-from-file\r\nignored\n", 22, 0), 22);
    struct bs_redisidx *x = bs_redisidx_create(&o, NULL, err, sizeof(err));
    if (!x)
        fail_msg("password file refused: %s", err);
    bs_redisidx_destroy(x);
    /* a first line longer than the limit */
    char big[700];
    memset(big, 'p', sizeof(big));
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(pwrite(fd, big, sizeof(big), 0), (ssize_t)sizeof(big));
    expect_refused(&o, "password too long");
    close(fd);
    unlink(path);
}

static void test_no_index(void **state)
{
    (void)state;
    struct bs_idx_result r;
    memset(&r, 0x5a, sizeof(r));
    assert_int_equal(bs_redisidx_decide(NULL, "8e0e2605f0002c27876af18ae2176924", 1, &r),
                     BS_IDX_DOWN);
    assert_int_equal(r.d, BS_IDX_DOWN);
    assert_int_equal(r.nholders, 0);
    assert_int_equal(bs_redisidx_announce(NULL, "8e0e2605f0002c27876af18ae2176924", 1), -1);
    assert_int_equal(bs_redisidx_release(NULL, "8e0e2605f0002c27876af18ae2176924", 1), -1);
    int n, k;
    assert_int_equal(bs_redisidx_cluster(NULL, &n, &k), -1);
    assert_int_equal(bs_redisidx_up(NULL), 0);
    bs_redisidx_destroy(NULL);
    bs_redisidx_set_reannounce(NULL, NULL, NULL);
}

/* Nothing listens: every call answers DOWN at once, bad tags and peers are refused. */
static void test_unreachable(void **state)
{
    (void)state;
    char err[256] = "";
    struct bs_redisidx_opts o = good_opts();
    struct bs_redisidx *x = bs_redisidx_create(&o, NULL, err, sizeof(err));
    assert_non_null(x);
    struct bs_idx_result r;
    for (int i = 0; i < 50; i++) {
        uint64_t t0 = bs_now_ns();
        assert_int_equal(bs_redisidx_decide(x, "8e0e2605f0002c27876af18ae2176924", 7, &r),
                         BS_IDX_DOWN);
        assert_true(bs_now_ns() - t0 < 2 * (uint64_t)o.timeout_ms * BS_NS_PER_MS);
    }
    assert_int_equal(bs_redisidx_up(x), 0);
    int n, k;
    assert_int_equal(bs_redisidx_cluster(x, &n, &k), -1);
    static const char *const bad_tags[] = {"", "8E0E2605F0002C27876AF18AE2176924",
                                           "8e0e2605f0002c27876af18ae217692",
                                           "8e0e2605f0002c27876af18ae21769245", "}{nodes}"};
    for (size_t i = 0; i < sizeof(bad_tags) / sizeof(bad_tags[0]); i++) {
        assert_int_equal(bs_redisidx_decide(x, bad_tags[i], 1, &r), BS_IDX_DOWN);
        assert_int_equal(bs_redisidx_announce(x, bad_tags[i], 1), -1);
    }
    assert_int_equal(bs_redisidx_decide(x, NULL, 1, &r), BS_IDX_DOWN);
    struct bs_peer p = {"bad node", "10.0.0.1:1"};
    assert_int_equal(bs_redisidx_forget(x, "8e0e2605f0002c27876af18ae2176924", 1, &p), -1);
    bs_redisidx_destroy(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_good),
        cmocka_unit_test(test_url_bad),
        cmocka_unit_test(test_url_password_not_in_errors),
        cmocka_unit_test(test_tag),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_password_file),
        cmocka_unit_test(test_no_index),
        cmocka_unit_test(test_unreachable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
