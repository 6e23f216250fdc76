/* Unit tests for common/sas (SAS fields read as Azure reads them: decoded names and values,
 * the field table, canonical re-encoding, se/st times) and for the agent's credential expiry
 * (agent/grants: a SAS's se, a JWT's exp). Error messages must never quote a signature. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "azcred.h"
#include "grants.h"
#include "sas.h"

#define SIG      "sig=SECRETsig%2Bx%2Fy%3D"
#define SE       "se=2030-01-02T03%3A04%3A05Z"
#define SE_EPOCH 1893553445 /* 2030-01-02T03:04:05Z */
#define SVC      "sv=2021-12-02&sr=b&sp=r&st=2029-01-01T00%3A00%3A00Z&" SE "&spr=https&" SIG

static int parse(const char *sas, char *out, size_t outsz, struct bs_sas_info *info, char *err)
{
    return bs_sas_parse(sas, out, outsz, info, err, 200);
}

static void expect_refused(const char *sas, const char *why)
{
    char out[1024], err[200] = "";
    struct bs_sas_info info;
    assert_int_equal(parse(sas, out, sizeof(out), &info, err), -EINVAL);
    if (why && !strstr(err, why))
        fail_msg("SAS \"%s\": error \"%s\" lacks \"%s\"", sas, err, why);
    assert_null(strstr(err, "SECRET"));
    assert_string_equal(out, "");
}

static void test_valid_service_sas(void **state)
{
    (void)state;
    char out[1024], err[200] = "";
    struct bs_sas_info info;
    assert_int_equal(parse(SVC, out, sizeof(out), &info, err), 0);
    assert_int_equal(info.expiry, SE_EPOCH);
    assert_int_equal(info.has_si, 0);
    /* Canonical: unreserved as is, the rest %XX in upper case; order kept. */
    assert_string_equal(out, "sv=2021-12-02&sr=b&sp=r&st=2029-01-01T00%3A00%3A00Z&"
                             "se=2030-01-02T03%3A04%3A05Z&spr=https&sig=SECRETsig%2Bx%2Fy%3D");
}

static void test_canonical_encoding(void **state)
{
    (void)state;
    char out[1024], err[200] = "";
    /* Encoded names are decoded (as Azure does) and re-encoded canonically; lower-case hex,
     * an unencoded ':' and an encoded unreserved character all end up the same. */
    assert_int_equal(parse("s%76=2021-12-02&se=2030-01-02T03:04:05Z&sp=%72&sig=a%2fb", out,
                           sizeof(out), NULL, err),
                     0);
    assert_string_equal(out, "sv=2021-12-02&se=2030-01-02T03%3A04%3A05Z&sp=r&sig=a%2Fb");
    /* '=' in a value (unencoded base64 padding) is part of the value. */
    assert_int_equal(parse("se=2030-01-01&sig=ab==", out, sizeof(out), NULL, err), 0);
    assert_string_equal(out, "se=2030-01-01&sig=ab%3D%3D");
}

static void test_hidden_expiry(void **state)
{
    (void)state;
    struct bs_sas_info info;
    char err[200];
    /* s%65 is se to Azure: the expiry is found whatever the encoding. */
    assert_int_equal(parse("sv=1&s%65=2020-01-01T00%3A00%3A00Z&" SIG, NULL, 0, &info, err), 0);
    assert_int_equal(info.expiry, 1577836800);
    assert_int_equal(parse("%73%65=2020-01-01&" SIG, NULL, 0, &info, err), 0);
    assert_int_equal(info.expiry, 1577836800);
    assert_int_equal(parse("sv=1&%73e=2020-01-01&" SIG, NULL, 0, &info, err), 0);
    assert_int_equal(info.expiry, 1577836800);
}

static void test_operation_fields_refused(void **state)
{
    (void)state;
    static const char *const extra[] = {
        "comp=tags",     "c%6Fmp=tags",     "restype=container", "snapshot=2026-01-01",
        "versionid=1",   "rscd=attachment", "rsct=text%2Fhtml",  "rscc=x",
        "rsce=gzip",     "rscl=en",         "timeout=1",         "x-ms-version=1",
        "SE=2030-01-01", "Sig=x",           "api-version=1",
    };
    for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
        char a[600], b[600];
        snprintf(a, sizeof(a), "%s&%s", SVC, extra[i]);
        snprintf(b, sizeof(b), "%s&%s", extra[i], SVC);
        expect_refused(a, "not allowed");
        expect_refused(b, "not allowed");
    }
}

static void test_malformed_refused(void **state)
{
    (void)state;
    expect_refused("", "empty");
    expect_refused(SVC "&sp=rw", "twice");
    expect_refused(SVC "&s%70=rw", "twice");
    expect_refused(SVC "&=x", "empty");
    expect_refused(SVC "&x", "without '='");
    expect_refused(SVC "&", "without '='");
    expect_refused("&" SVC, "without '='");
    expect_refused(SVC "?comp=tags", "'?'");
    expect_refused("?" SVC, "'?'");
    expect_refused(SVC "#x", "'#'");
    expect_refused(SVC "&comp+=tags", NULL);
    expect_refused("sv=a+b&" SE "&" SIG, "bad value");
    expect_refused("sv=%0a&" SE "&" SIG, "bad value");
    expect_refused("sv=%00&" SE "&" SIG, "bad value");
    expect_refused("sv=%4&" SE "&" SIG, "bad value");
    expect_refused("sv=%&" SE "&" SIG, "bad value");
    expect_refused("sv=%zz&" SE "&" SIG, "bad value");
    expect_refused("s%0Av=1&" SE "&" SIG, "badly encoded");
    expect_refused("averyveryverylongname=1&" SE "&" SIG, "unknown field");
    expect_refused("sv=1&" SE, "no signature");
    expect_refused("sv=1&" SIG, "neither an expiry");
}

static void test_times(void **state)
{
    (void)state;
    int64_t t;
    assert_int_equal(bs_sas_time("2030-01-02", &t), 0);
    assert_int_equal(t, 1893542400);
    assert_int_equal(bs_sas_time("2030-01-02T03:04Z", &t), 0);
    assert_int_equal(t, 1893553440);
    assert_int_equal(bs_sas_time("2030-01-02T03:04:05Z", &t), 0);
    assert_int_equal(t, SE_EPOCH);
    assert_int_equal(bs_sas_time("2030-01-02T03:04:05.1234567Z", &t), 0);
    assert_int_equal(t, SE_EPOCH);
    static const char *const bad[] = {
        "",
        "tomorrow",
        "2030-13-01",
        "2030-02-30",
        "2030-1-01",
        "2030-01-02T03:04:05",
        "2030-01-02T03:04:05+01:00",
        "2030-01-02T24:00Z",
        "2030-01-02T03:60Z",
        "2030-01-02T03:04:61Z",
        "2030-01-02 03:04:05Z",
        "1999-12-31",
        "2030-01-02T03:04:05.Z",
        "2030-01-02T03:04:05.12345678Z",
        "2030-01-02Z",
        "+030-01-02",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (bs_sas_time(bad[i], &t) != -EINVAL)
            fail_msg("time \"%s\" accepted", bad[i]);
    expect_refused("sv=1&se=tomorrow&" SIG, "not a time");
    expect_refused("sv=1&st=yesterday&" SE "&" SIG, "not a time");
}

static void test_policy_without_se(void **state)
{
    (void)state;
    struct bs_sas_info info;
    char err[200];
    assert_int_equal(parse("sv=1&si=policy1&sr=c&" SIG, NULL, 0, &info, err), 0);
    assert_int_equal(info.expiry, 0);
    assert_int_equal(info.has_si, 1);
    /* With si, an se that is not a time is still refused. */
    expect_refused("sv=1&si=p&se=never&" SIG, "not a time");
}

static void test_user_delegation_fields(void **state)
{
    (void)state;
    char out[2048], err[200];
    const char *ud = "sv=2025-07-05&sr=b&sp=r&" SE "&skoid=o&sktid=t&skt=2030-01-01T00%3A00%3A00Z"
                     "&ske=2030-01-03T00%3A00%3A00Z&sks=b&skv=2025-07-05&saoid=a&suoid=u&scid=c"
                     "&sduoid=d&skdutid=k&ses=scope&sdd=1&sip=127.0.0.1&ss=b&srt=o&" SIG;
    assert_int_equal(parse(ud, out, sizeof(out), NULL, err), 0);
}

static void test_small_output(void **state)
{
    (void)state;
    char out[16], err[200];
    assert_int_equal(parse(SVC, out, sizeof(out), NULL, err), -ENOSPC);
    char exact[200];
    assert_int_equal(parse(SVC, exact, sizeof(exact), NULL, err), 0);
    size_t n = strlen(exact);
    char fit[200];
    assert_int_equal(parse(SVC, fit, n + 1, NULL, err), 0);
    assert_int_equal(parse(SVC, fit, n, NULL, err), -ENOSPC);
}

/* JWT helpers: header.payload.signature with a base64url payload. */
static void jwt(const char *payload_b64, char *out, size_t outsz)
{
    snprintf(out, outsz, "eyJhbGciOiJIUzI1NiJ9.%s.c2ln", payload_b64);
}

static void test_jwt_expiry(void **state)
{
    (void)state;
    char tok[512];
    int64_t exp = 0;
    jwt("eyJleHAiOjE4OTM1NTM0NDV9", tok, sizeof(tok)); /* {"exp":1893553445} */
    assert_int_equal(bs_jwt_expiry(tok, &exp), 0);
    assert_int_equal(exp, SE_EPOCH);
    jwt("eyJzdWIiOiJ4In0", tok, sizeof(tok)); /* {"sub":"x"}: no exp */
    assert_int_equal(bs_jwt_expiry(tok, &exp), -EINVAL);
    jwt("eyJleHAiOiIxODkzNTUzNDQ1In0", tok, sizeof(tok)); /* {"exp":"1893553445"} */
    assert_int_equal(bs_jwt_expiry(tok, &exp), -EINVAL);
    jwt("eyJleHAiOjEsImV4cCI6Mn0", tok, sizeof(tok)); /* {"exp":1,"exp":2} */
    assert_int_equal(bs_jwt_expiry(tok, &exp), -EINVAL);
    jwt("e30=", tok, sizeof(tok)); /* padding is not base64url */
    assert_int_equal(bs_jwt_expiry(tok, &exp), -EINVAL);
    assert_int_equal(bs_jwt_expiry("opaque", &exp), -EINVAL);
    assert_int_equal(bs_jwt_expiry("a.b", &exp), -EINVAL);
    assert_int_equal(bs_jwt_expiry("a.eyJleHAiOjE4OTM1NTM0NDV9.c.d", &exp), -EINVAL);
    assert_int_equal(bs_jwt_expiry(NULL, &exp), -EINVAL);
}

static void test_cred_expiry(void **state)
{
    (void)state;
    struct bs_delegation d;
    int64_t exp = -1;
    char err[200];
    memset(&d, 0, sizeof(d));
    d.kind = BS_AUTH_SAS;
    snprintf(d.secret, sizeof(d.secret), "%s", SVC);
    assert_int_equal(bs_grants_cred_expiry(&d, &exp, err, sizeof(err)), 0);
    assert_int_equal(exp, SE_EPOCH);
    snprintf(d.secret, sizeof(d.secret), "%s&comp=tags", SVC);
    assert_int_equal(bs_grants_cred_expiry(&d, &exp, err, sizeof(err)), -EINVAL);
    d.kind = BS_AUTH_BEARER;
    jwt("eyJleHAiOjE4OTM1NTM0NDV9", d.secret, sizeof(d.secret));
    assert_int_equal(bs_grants_cred_expiry(&d, &exp, err, sizeof(err)), 0);
    assert_int_equal(exp, SE_EPOCH);
    snprintf(d.secret, sizeof(d.secret), "opaque");
    assert_int_equal(bs_grants_cred_expiry(&d, &exp, err, sizeof(err)), -EINVAL);
    d.kind = BS_AUTH_ANONYMOUS;
    d.secret[0] = '\0';
    assert_int_equal(bs_grants_cred_expiry(&d, &exp, err, sizeof(err)), 0);
    assert_int_equal(exp, 0);
}

static void test_grant_capped_by_expiry(void **state)
{
    (void)state;
    struct bs_grants *g = bs_grants_create(16, 60000);
    unsigned char k1[32] = {1}, k2[32] = {2}, k3[32] = {3};
    struct bs_grant gr = {.etag = "\"e\"", .size = 1}, out;
    int64_t now = (int64_t)time(NULL);
    bs_grants_put(g, k1, now - 1, &gr); /* already expired: not recorded */
    assert_int_equal(bs_grants_find(g, k1, &out), -ENOENT);
    bs_grants_put(g, k2, now + 3600, &gr);
    assert_int_equal(bs_grants_find(g, k2, &out), 0);
    bs_grants_put(g, k3, 0, &gr);
    assert_int_equal(bs_grants_find(g, k3, &out), 0);
    bs_grants_destroy(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_service_sas), cmocka_unit_test(test_canonical_encoding),
        cmocka_unit_test(test_hidden_expiry),     cmocka_unit_test(test_operation_fields_refused),
        cmocka_unit_test(test_malformed_refused), cmocka_unit_test(test_times),
        cmocka_unit_test(test_policy_without_se), cmocka_unit_test(test_user_delegation_fields),
        cmocka_unit_test(test_small_output),      cmocka_unit_test(test_jwt_expiry),
        cmocka_unit_test(test_cred_expiry),       cmocka_unit_test(test_grant_capped_by_expiry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
