/* Unit tests for peer/peerauth: request signatures (round trip, every signed field tampered,
 * the replay window both ways, malformed headers), chunk records (every field tampered) and
 * the checks on the cluster secret file (link, mode, size, trimming). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include "peerauth.h"

#define NOW    1764590000000LL /* a fixed "now" (ms) */
#define WINDOW 30000L
#define PQ     "/v1/peer/chunk?a=http%3A%2F%2Fh%23grid%3D8&c=data&b=x&e=%220x1%22&i=3&w=100"

static struct bs_peer_secret secret_a, secret_b;

static int setup(void **state)
{
    (void)state;
    memset(&secret_a, 0, sizeof(secret_a));
    memset(&secret_b, 0, sizeof(secret_b));
    memcpy(secret_a.key, "0123456789abcdef0123456789abcdef", 32);
    secret_a.len = 32;
    memcpy(secret_b.key, "0123456789abcdef0123456789abcdeF", 32);
    secret_b.len = 32;
    return 0;
}

static int verify(const struct bs_peer_secret *s, const char *hdr, const char *method,
                  const char *pq, int64_t now, char *why, size_t whysz)
{
    char node[64];
    return bs_peer_verify_request(s, hdr, method, pq, now, WINDOW, node, why, whysz);
}

static void test_request_round_trip(void **state)
{
    (void)state;
    char hdr[BS_PEER_HDR_MAX], node[64], why[64];
    bs_peer_sign_request(&secret_a, "node-1.a_b", "GET", PQ, NOW, hdr);
    assert_true(strncmp(hdr, "v1 node=node-1.a_b ts=1764590000000 mac=", 40) == 0);
    assert_int_equal(strlen(hdr), 40 + 64);
    assert_int_equal(
        bs_peer_verify_request(&secret_a, hdr, "GET", PQ, NOW, WINDOW, node, why, sizeof(why)), 0);
    assert_string_equal(node, "node-1.a_b");
    /* Deterministic: the same inputs sign the same. */
    char again[BS_PEER_HDR_MAX];
    bs_peer_sign_request(&secret_a, "node-1.a_b", "GET", PQ, NOW, again);
    assert_string_equal(hdr, again);
    /* Wall clock: something after 2020. */
    assert_true(bs_peer_wall_ms() > 1577836800000LL);
}

static void test_request_tampered(void **state)
{
    (void)state;
    char hdr[BS_PEER_HDR_MAX], bad[BS_PEER_HDR_MAX], why[64];
    bs_peer_sign_request(&secret_a, "n1", "GET", PQ, NOW, hdr);
    /* method */
    assert_int_equal(verify(&secret_a, hdr, "HEAD", PQ, NOW, why, sizeof(why)), -1);
    assert_string_equal(why, "bad mac");
    /* path */
    const char *other_path =
        "/v1/peer/chunK?a=http%3A%2F%2Fh%23grid%3D8&c=data&b=x&e=%220x1%22&i=3&w=100";
    assert_int_equal(verify(&secret_a, hdr, "GET", other_path, NOW, why, sizeof(why)), -1);
    assert_string_equal(why, "bad mac");
    /* query reordered (same fields) */
    const char *reordered =
        "/v1/peer/chunk?c=data&a=http%3A%2F%2Fh%23grid%3D8&b=x&e=%220x1%22&i=3&w=100";
    assert_int_equal(verify(&secret_a, hdr, "GET", reordered, NOW, why, sizeof(why)), -1);
    assert_string_equal(why, "bad mac");
    /* a value changed (another chunk) */
    const char *other_chunk =
        "/v1/peer/chunk?a=http%3A%2F%2Fh%23grid%3D8&c=data&b=x&e=%220x1%22&i=4&w=100";
    assert_int_equal(verify(&secret_a, hdr, "GET", other_chunk, NOW, why, sizeof(why)), -1);
    /* ts changed by one ms (within the window, but signed) */
    snprintf(bad, sizeof(bad), "%s", hdr);
    char *ts = strstr(bad, "ts=") + 3;
    ts[12] = ts[12] == '0' ? '1' : '0';
    assert_int_equal(verify(&secret_a, bad, "GET", PQ, NOW, why, sizeof(why)), -1);
    assert_string_equal(why, "bad mac");
    /* node renamed */
    char renamed[BS_PEER_HDR_MAX];
    snprintf(renamed, sizeof(renamed), "v1 node=n2%s", hdr + strlen("v1 node=n1"));
    assert_int_equal(verify(&secret_a, renamed, "GET", PQ, NOW, why, sizeof(why)), -1);
    assert_string_equal(why, "bad mac");
    /* each nibble of the mac */
    char *mac = strstr(hdr, "mac=") + 4;
    for (int i = 0; i < 64; i++) {
        snprintf(bad, sizeof(bad), "%s", hdr);
        char *m = bad + (mac - hdr) + i;
        *m = *m == 'f' ? 'e' : (*m == '9' ? 'a' : (char)(*m + 1));
        if (verify(&secret_a, bad, "GET", PQ, NOW, why, sizeof(why)) != -1)
            fail_msg("mac nibble %d changed and still accepted", i);
        assert_string_equal(why, "bad mac");
    }
    /* another secret */
    assert_int_equal(verify(&secret_b, hdr, "GET", PQ, NOW, why, sizeof(why)), -1);
    assert_string_equal(why, "bad mac");
}

static void test_request_window(void **state)
{
    (void)state;
    char hdr[BS_PEER_HDR_MAX], why[64];
    bs_peer_sign_request(&secret_a, "n1", "GET", PQ, NOW, hdr);
    /* At the edges of the window: accepted. */
    assert_int_equal(verify(&secret_a, hdr, "GET", PQ, NOW + WINDOW, why, sizeof(why)), 0);
    assert_int_equal(verify(&secret_a, hdr, "GET", PQ, NOW - WINDOW, why, sizeof(why)), 0);
    /* Past it, either way (an old replay; a signer's clock ahead). */
    assert_int_equal(verify(&secret_a, hdr, "GET", PQ, NOW + WINDOW + 1, why, sizeof(why)), -1);
    assert_string_equal(why, "stale");
    assert_int_equal(verify(&secret_a, hdr, "GET", PQ, NOW - WINDOW - 1, why, sizeof(why)), -1);
    assert_string_equal(why, "stale");
    /* Far apart clocks do not overflow into acceptance. */
    assert_int_equal(verify(&secret_a, hdr, "GET", PQ, INT64_MIN, why, sizeof(why)), -1);
    assert_int_equal(verify(&secret_a, hdr, "GET", PQ, INT64_MAX, why, sizeof(why)), -1);
    char old[BS_PEER_HDR_MAX];
    bs_peer_sign_request(&secret_a, "n1", "GET", PQ, 0, old);
    assert_int_equal(verify(&secret_a, old, "GET", PQ, NOW, why, sizeof(why)), -1);
    assert_string_equal(why, "stale");
    /* A negative window accepts nothing. */
    char node[64];
    assert_int_equal(
        bs_peer_verify_request(&secret_a, hdr, "GET", PQ, NOW, -1, node, why, sizeof(why)), -1);
}

/* Writes tmpl into out with "{MAC}" and "{SHA}" replaced by mac and sha (64 hex digits each),
 * "{MAC63}" and "{SHA63}" by their first 63 digits. */
static void expand(char *out, size_t outsz, const char *tmpl, const char *mac, const char *sha)
{
    size_t o = 0;
    for (const char *t = tmpl; *t && o + 1 < outsz;) {
        const char *put = NULL;
        size_t n = 0, skip = 0;
        if (strncmp(t, "{MAC63}", 7) == 0)
            put = mac, n = 63, skip = 7;
        else if (strncmp(t, "{MAC}", 5) == 0)
            put = mac, n = 64, skip = 5;
        else if (strncmp(t, "{SHA63}", 7) == 0)
            put = sha, n = 63, skip = 7;
        else if (strncmp(t, "{SHA}", 5) == 0)
            put = sha, n = 64, skip = 5;
        if (!put) {
            out[o++] = *t++;
            continue;
        }
        for (size_t i = 0; i < n && o + 1 < outsz; i++)
            out[o++] = put[i];
        t += skip;
    }
    out[o] = '\0';
}

static void test_request_malformed(void **state)
{
    (void)state;
    char hdr[BS_PEER_HDR_MAX], bad[2 * BS_PEER_HDR_MAX], why[64];
    bs_peer_sign_request(&secret_a, "n1", "GET", PQ, NOW, hdr);
    const char *mac = strstr(hdr, "mac=") + 4;
    assert_int_equal(verify(&secret_a, NULL, "GET", PQ, NOW, why, sizeof(why)), -1);
    assert_string_equal(why, "missing");
    assert_int_equal(verify(&secret_a, "", "GET", PQ, NOW, why, sizeof(why)), -1);
    assert_string_equal(why, "missing");
    const char *fmts[] = {
        "v1 node=n1 ts=1764590000000",                   /* mac missing */
        "v1 node=n1 mac={MAC}",                          /* ts missing */
        "v1 ts=1764590000000 mac={MAC}",                 /* node missing */
        "node=n1 ts=1764590000000 mac={MAC}",            /* version missing */
        "v2 node=n1 ts=1764590000000 mac={MAC}",         /* other version */
        "v1 ts=1764590000000 node=n1 mac={MAC}",         /* order */
        "v1 node=n1 ts=1764590000000 mac={MAC} x=1",     /* extra field */
        "v1 node=n1 ts=1764590000000 mac={MAC} ",        /* trailing space */
        " v1 node=n1 ts=1764590000000 mac={MAC}",        /* leading space */
        "v1  node=n1 ts=1764590000000 mac={MAC}",        /* double space */
        "v1 node=n1 node=n1 ts=1764590000000 mac={MAC}", /* duplicate */
        "v1 node=n1 ts=1764590000000 ts=1764590000000 mac={MAC}",
        "v1 node=n1 ts=+1764590000000 mac={MAC}", /* sign */
        "v1 node=n1 ts=-1764590000000 mac={MAC}",
        "v1 node=n1 ts= 1764590000000 mac={MAC}",       /* space */
        "v1 node=n1 ts=01764590000000 mac={MAC}",       /* leading zero */
        "v1 node=n1 ts=99999999999999999999 mac={MAC}", /* overflow */
        "v1 node=n1 ts=1764590000000.0 mac={MAC}",
        "v1 node=n1 ts=0x1 mac={MAC}",
        "v1 node= ts=1764590000000 mac={MAC}",    /* empty node */
        "v1 node=n/1 ts=1764590000000 mac={MAC}", /* node alphabet */
        "v1 node=n1\t ts=1764590000000 mac={MAC}",
        "v1 node=n1 ts=1764590000000 mac={MAC}0",  /* 65 hex */
        "v1 node=n1 ts=1764590000000 mac={MAC63}", /* 63 hex */
        "V1 node=n1 ts=1764590000000 mac={MAC}",
        "v1 Node=n1 ts=1764590000000 mac={MAC}",
    };
    for (size_t i = 0; i < sizeof(fmts) / sizeof(fmts[0]); i++) {
        expand(bad, sizeof(bad), fmts[i], mac, NULL);
        if (verify(&secret_a, bad, "GET", PQ, NOW, why, sizeof(why)) != -1)
            fail_msg("malformed header %zu accepted: {MAC}", i, bad);
        if (strcmp(why, "malformed") != 0)
            fail_msg("header %zu: \"{MAC}\" gave \"{MAC}\", not malformed", i, bad, why);
    }
    /* Non-hex and upper-case hex in the mac. */
    snprintf(bad, sizeof(bad), "%s", hdr);
    bad[strlen(bad) - 1] = 'g';
    assert_int_equal(verify(&secret_a, bad, "GET", PQ, NOW, why, sizeof(why)), -1);
    assert_string_equal(why, "malformed");
    snprintf(bad, sizeof(bad), "%s", hdr);
    for (char *m = strstr(bad, "mac=") + 4; *m; m++)
        if (*m >= 'a' && *m <= 'f')
            *m = (char)(*m - 'a' + 'A');
    if (strcmp(bad, hdr) != 0) {
        assert_int_equal(verify(&secret_a, bad, "GET", PQ, NOW, why, sizeof(why)), -1);
        assert_string_equal(why, "malformed");
    }
    /* A node name of 64 characters; a header as long as the limit. */
    char longnode[65];
    memset(longnode, 'n', 64);
    longnode[64] = '\0';
    snprintf(bad, sizeof(bad), "v1 node=%s ts=1764590000000 mac=%s", longnode, mac);
    assert_int_equal(verify(&secret_a, bad, "GET", PQ, NOW, why, sizeof(why)), -1);
    assert_string_equal(why, "malformed");
    memset(bad, 'a', sizeof(bad) - 1);
    bad[sizeof(bad) - 1] = '\0';
    memcpy(bad, hdr, strlen(hdr));
    assert_int_equal(verify(&secret_a, bad, "GET", PQ, NOW, why, sizeof(why)), -1);
    assert_string_equal(why, "malformed");
    /* Signing refuses what it cannot sign unambiguously. */
    bs_peer_sign_request(&secret_a, longnode, "GET", PQ, NOW, hdr);
    assert_string_equal(hdr, "");
    bs_peer_sign_request(&secret_a, "a b", "GET", PQ, NOW, hdr);
    assert_string_equal(hdr, "");
    bs_peer_sign_request(&secret_a, "n1", "GET", "/x\n", NOW, hdr);
    assert_string_equal(hdr, "");
    bs_peer_sign_request(&secret_a, "n1", "GET", PQ, -1, hdr);
    assert_string_equal(hdr, "");
    /* The 63-character node name is the longest accepted. */
    longnode[63] = '\0';
    bs_peer_sign_request(&secret_a, longnode, "GET", PQ, NOW, hdr);
    assert_int_equal(verify(&secret_a, hdr, "GET", PQ, NOW, why, sizeof(why)), 0);
}

static const unsigned char digest[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                                         12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                         23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static void test_record(void **state)
{
    (void)state;
    struct bs_chunk_id id = {"http://127.0.0.1:10000/devstoreaccount1#grid=8388608", "data",
                             "llama/x.safetensors", "\"0x8DC1\"", 12};
    char hdr[BS_PEER_HDR_MAX], bad[BS_PEER_HDR_MAX], why[64];
    unsigned char sha[32];
    uint64_t len = 0;
    bs_peer_sign_record(&secret_a, &id, 8388608, digest, hdr);
    assert_true(strncmp(hdr, "v1 len=8388608 sha256=0102030405", 32) == 0);
    assert_int_equal(bs_peer_verify_record(&secret_a, &id, hdr, &len, sha, why, sizeof(why)), 0);
    assert_int_equal(len, 8388608);
    assert_memory_equal(sha, digest, 32);

    /* Each id field changed: the record is for another chunk. */
    struct bs_chunk_id t = id;
    t.account = "http://127.0.0.1:10000/devstoreaccount1#grid=4194304";
    assert_int_equal(bs_peer_verify_record(&secret_a, &t, hdr, &len, sha, why, sizeof(why)), -1);
    assert_string_equal(why, "bad mac");
    t = id;
    t.container = "date";
    assert_int_equal(bs_peer_verify_record(&secret_a, &t, hdr, &len, sha, why, sizeof(why)), -1);
    t = id;
    t.blob = "llama/y.safetensors";
    assert_int_equal(bs_peer_verify_record(&secret_a, &t, hdr, &len, sha, why, sizeof(why)), -1);
    t = id;
    t.etag = "\"0x8DC2\"";
    assert_int_equal(bs_peer_verify_record(&secret_a, &t, hdr, &len, sha, why, sizeof(why)), -1);
    t = id;
    t.index = 13;
    assert_int_equal(bs_peer_verify_record(&secret_a, &t, hdr, &len, sha, why, sizeof(why)), -1);
    /* Field boundaries are part of the MAC: moving a character between fields fails. */
    t = id;
    t.container = "dat";
    t.blob = "allama/x.safetensors";
    assert_int_equal(bs_peer_verify_record(&secret_a, &t, hdr, &len, sha, why, sizeof(why)), -1);
    /* Another secret. */
    assert_int_equal(bs_peer_verify_record(&secret_b, &id, hdr, &len, sha, why, sizeof(why)), -1);

    /* len changed. */
    snprintf(bad, sizeof(bad), "v1 len=8388607%s", hdr + strlen("v1 len=8388608"));
    assert_int_equal(bs_peer_verify_record(&secret_a, &id, bad, &len, sha, why, sizeof(why)), -1);
    assert_string_equal(why, "bad mac");
    /* Each nibble of the digest, then of the mac. */
    size_t sha_at = (size_t)(strstr(hdr, "sha256=") + 7 - hdr);
    size_t mac_at = (size_t)(strstr(hdr, "mac=") + 4 - hdr);
    for (int i = 0; i < 128; i++) {
        size_t at = i < 64 ? sha_at + (size_t)i : mac_at + (size_t)(i - 64);
        snprintf(bad, sizeof(bad), "%s", hdr);
        bad[at] = bad[at] == '0' ? '1' : '0';
        if (bs_peer_verify_record(&secret_a, &id, bad, &len, sha, why, sizeof(why)) != -1)
            fail_msg("record nibble %d changed and still accepted", i);
        assert_string_equal(why, "bad mac");
    }
    /* Malformed records. */
    const char *mal[] = {
        "",
        "v1 len=8388608",
        "v1 sha256=0102 mac=00",
        "v1 len=08388608 sha256=" /* completed below */,
    };
    for (size_t i = 0; i < sizeof(mal) / sizeof(mal[0]); i++)
        assert_int_equal(bs_peer_verify_record(&secret_a, &id, mal[i], &len, sha, why, sizeof(why)),
                         -1);
    const char *shahex = hdr + sha_at, *machex = hdr + mac_at;
    const char *fmts[] = {
        "v1 len=08388608 sha256={SHA} mac={MAC}",  "v1 len=+8388608 sha256={SHA} mac={MAC}",
        "v1 len= 8388608 sha256={SHA} mac={MAC}",  "v1 sha256={SHA} len=8388608 mac={MAC}",
        "v1 len=8388608 sha256={SHA} mac={MAC} ",  "v1 len=8388608 sha256={SHA63} mac={MAC}",
        "v1 len=8388608 sha256={SHA} mac={MAC} x", "v2 len=8388608 sha256={SHA} mac={MAC}",
        "v1 len=8388608  sha256={SHA} mac={MAC}",  "v1 len=-1 sha256={SHA} mac={MAC}",
    };
    for (size_t i = 0; i < sizeof(fmts) / sizeof(fmts[0]); i++) {
        char m[2 * BS_PEER_HDR_MAX];
        expand(m, sizeof(m), fmts[i], machex, shahex);
        if (bs_peer_verify_record(&secret_a, &id, m, &len, sha, why, sizeof(why)) != -1)
            fail_msg("malformed record %zu accepted: %s", i, m);
        assert_string_equal(why, "malformed");
    }
    assert_int_equal(bs_peer_verify_record(&secret_a, &id, NULL, &len, sha, why, sizeof(why)), -1);
    assert_string_equal(why, "missing");
    /* An id with a newline (ambiguous) is neither signed nor verified. */
    t = id;
    t.etag = "\"a\"\n";
    bs_peer_sign_record(&secret_a, &t, 1, digest, bad);
    assert_string_equal(bad, "");
    assert_int_equal(bs_peer_verify_record(&secret_a, &t, hdr, &len, sha, why, sizeof(why)), -1);
}

/* The secret file: written in a temporary directory with the given mode. */
static char tmpdir[64];

static void write_file(const char *name, const char *text, mode_t mode, char *path, size_t pathsz)
{
    snprintf(path, pathsz, "%s/%s", tmpdir, name);
    unlink(path);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
}

static void test_secret_file(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/bs_peerauth_test.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    char path[128], link[128], err[256];
    struct bs_peer_secret s;
    const char *good = "  0123456789abcdef0123456789abcdef-xyz\n\n";

    write_file("ok", good, 0600, path, sizeof(path));
    assert_int_equal(bs_peer_secret_load(path, &s, err, sizeof(err)), 0);
    assert_int_equal(s.len, 36); /* surrounding whitespace trimmed */
    assert_memory_equal(s.key, "0123456789abcdef0123456789abcdef-xyz", 36);
    write_file("ok400", good, 0400, path, sizeof(path));
    assert_int_equal(bs_peer_secret_load(path, &s, err, sizeof(err)), 0);

    /* A link to a good file is refused. */
    snprintf(link, sizeof(link), "%s/link", tmpdir);
    snprintf(path, sizeof(path), "%s/ok", tmpdir);
    assert_int_equal(symlink(path, link), 0);
    assert_int_equal(bs_peer_secret_load(link, &s, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "link"));
    assert_int_equal(s.len, 0);

    /* Readable by group or others. */
    write_file("wide", good, 0644, path, sizeof(path));
    assert_int_equal(bs_peer_secret_load(path, &s, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "0644"));
    write_file("group", good, 0640, path, sizeof(path));
    assert_int_equal(bs_peer_secret_load(path, &s, err, sizeof(err)), -1);
    write_file("otherw", good, 0602, path, sizeof(path));
    assert_int_equal(bs_peer_secret_load(path, &s, err, sizeof(err)), -1);

    /* Too short, also once trimmed; the message never holds the secret. */
    write_file("short", "0123456789abcdef0123456789abcde", 0600, path, sizeof(path));
    assert_int_equal(bs_peer_secret_load(path, &s, err, sizeof(err)), -1);
    assert_null(strstr(err, "0123456789"));
    write_file("shorttrim", "   0123456789abcdef0123456789abcde   \n", 0600, path, sizeof(path));
    assert_int_equal(bs_peer_secret_load(path, &s, err, sizeof(err)), -1);
    assert_null(strstr(err, "0123456789"));
    write_file("exact", "0123456789abcdef0123456789abcdef", 0600, path, sizeof(path));
    assert_int_equal(bs_peer_secret_load(path, &s, err, sizeof(err)), 0);
    assert_int_equal(s.len, 32);

    /* Too long: 1025 bytes of secret; and 1024 accepted. */
    char *big = malloc(2000);
    assert_non_null(big);
    memset(big, 'k', 1025);
    big[1025] = '\0';
    write_file("long", big, 0600, path, sizeof(path));
    assert_int_equal(bs_peer_secret_load(path, &s, err, sizeof(err)), -1);
    big[1024] = '\0';
    write_file("max", big, 0600, path, sizeof(path));
    assert_int_equal(bs_peer_secret_load(path, &s, err, sizeof(err)), 0);
    assert_int_equal(s.len, 1024);
    free(big);

    /* Not a regular file; missing; no path. */
    assert_int_equal(bs_peer_secret_load(tmpdir, &s, err, sizeof(err)), -1);
    snprintf(path, sizeof(path), "%s/missing", tmpdir);
    assert_int_equal(bs_peer_secret_load(path, &s, err, sizeof(err)), -1);
    assert_int_equal(bs_peer_secret_load("", &s, err, sizeof(err)), -1);

    const char *names[] = {"ok",    "ok400",     "link",  "wide", "group", "otherw",
                           "short", "shorttrim", "exact", "long", "max"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", tmpdir, names[i]);
        unlink(path);
    }
    rmdir(tmpdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_round_trip),
        cmocka_unit_test(test_request_tampered),
        cmocka_unit_test(test_request_window),
        cmocka_unit_test(test_request_malformed),
        cmocka_unit_test(test_record),
        cmocka_unit_test(test_secret_file),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
