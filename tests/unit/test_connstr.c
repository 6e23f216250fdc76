/* Unit tests for common/connstr: every connection-string form the Azure SDKs accept for the
 * blob service, the endpoint each implies, and the rejections, whose messages must never
 * quote an account key or a SAS. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "connstr.h"

/* A syntactically valid but made-up 64-byte key, and a made-up SAS. Tests search error
 * messages for distinctive parts of both. */
#define KEY                                                                                        \
    "U2VjcmV0S2V5Rm9yVW5pdFRlc3RzT25seS1Ob3RSZWFsLTAxMjM0NTY3ODlhYmNkZWZnaGlqa2xtbm9wcXJzdA=="
#define SAS_BODY "sv=2023-11-03&ss=b&srt=co&sp=rl&se=2030-01-01T00:00:00Z&sig=SAS%2BSECRET%2Fsig%3D"

struct want {
    const char *account, *account_key, *sas, *blob_endpoint;
};

static void expect_ok(const char *s, struct want w)
{
    struct bs_connstr cs;
    char err[256] = "";
    int rc = bs_connstr_parse(s, &cs, err, sizeof(err));
    if (rc != 0)
        fail_msg("parse(\"%s\") returned %d (%s), expected 0", s, rc, err);
#define CHECK_FIELD(field)                                                                         \
    do {                                                                                           \
        if (!w.field)                                                                              \
            assert_null(cs.field);                                                                 \
        else if (!cs.field || strcmp(cs.field, w.field) != 0)                                      \
            fail_msg("parse(\"%s\"): " #field " = \"%s\", expected \"%s\"", s,                     \
                     cs.field ? cs.field : "(null)", w.field);                                     \
    } while (0)
    CHECK_FIELD(account);
    CHECK_FIELD(account_key);
    CHECK_FIELD(sas);
    CHECK_FIELD(blob_endpoint);
#undef CHECK_FIELD
    bs_connstr_cleanup(&cs);
    assert_null(cs.account);
    assert_null(cs.blob_endpoint);
}

/* -EINVAL, `out` left empty, a message that quotes neither the key nor the SAS. */
static void expect_invalid(const char *s)
{
    struct bs_connstr cs;
    memset(&cs, 0x5a, sizeof(cs));
    char err[512] = "";
    int rc = bs_connstr_parse(s, &cs, err, sizeof(err));
    if (rc != -EINVAL)
        fail_msg("parse(\"%s\") returned %d, expected -EINVAL", s ? s : "(null)", rc);
    assert_null(cs.account);
    assert_null(cs.account_key);
    assert_null(cs.sas);
    assert_null(cs.blob_endpoint);
    if (err[0] == '\0')
        fail_msg("parse(\"%s\") wrote no error message", s ? s : "(null)");
    const char *secrets[] = {KEY, "U2VjcmV0S2V5", "SAS%2BSECRET", "SECRET", "sig=", "TOPSECRET"};
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
        if (strstr(err, secrets[i]))
            fail_msg("error for \"%s\" quotes a secret: %s", s, err);
    bs_connstr_cleanup(&cs); /* harmless on an empty struct */
}

static void test_account_key(void **state)
{
    (void)state;
    expect_ok("AccountName=myacct;AccountKey=" KEY,
              (struct want){"myacct", KEY, NULL, "https://myacct.blob.core.windows.net"});
    expect_ok("DefaultEndpointsProtocol=https;AccountName=myacct;AccountKey=" KEY
              ";EndpointSuffix=core.windows.net",
              (struct want){"myacct", KEY, NULL, "https://myacct.blob.core.windows.net"});
    /* Sovereign clouds through EndpointSuffix. */
    expect_ok("AccountName=cnacct;AccountKey=" KEY ";EndpointSuffix=core.chinacloudapi.cn",
              (struct want){"cnacct", KEY, NULL, "https://cnacct.blob.core.chinacloudapi.cn"});
    expect_ok("DefaultEndpointsProtocol=http;AccountName=myacct;AccountKey=" KEY,
              (struct want){"myacct", KEY, NULL, "http://myacct.blob.core.windows.net"});
    /* Keys in any order; the key's base64 padding '=' stays part of the value. */
    expect_ok("AccountKey=" KEY ";EndpointSuffix=core.usgovcloudapi.net;AccountName=gov",
              (struct want){"gov", KEY, NULL, "https://gov.blob.core.usgovcloudapi.net"});
}

static void test_blob_endpoint(void **state)
{
    (void)state;
    expect_ok("AccountName=myacct;AccountKey=" KEY ";BlobEndpoint=https://blobs.example.com/",
              (struct want){"myacct", KEY, NULL, "https://blobs.example.com"});
    expect_ok("BlobEndpoint=https://blobs.example.com;AccountName=myacct;AccountKey=" KEY,
              (struct want){"myacct", KEY, NULL, "https://blobs.example.com"});
    /* The Azurite form the SDK samples use. BlobEndpoint wins over the account's default. */
    expect_ok(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" KEY
        ";BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;",
        (struct want){"devstoreaccount1", KEY, NULL, "http://127.0.0.1:10000/devstoreaccount1"});
    /* The scheme is matched case-insensitively. */
    expect_ok("BlobEndpoint=HTTPS://Blobs.Example.com/;SharedAccessSignature=" SAS_BODY,
              (struct want){"blobs", NULL, SAS_BODY, "HTTPS://Blobs.Example.com"});
}

/* Without AccountName the account comes from the endpoint, as the Azure SDKs derive it: the
 * host's first label, or the first path segment of a path-style (IP or dot-less) endpoint. */
static void test_account_from_endpoint(void **state)
{
    (void)state;
    expect_ok("BlobEndpoint=https://myacct.blob.core.windows.net/;SharedAccessSignature=" SAS_BODY,
              (struct want){"myacct", NULL, SAS_BODY, "https://myacct.blob.core.windows.net"});
    expect_ok(
        "BlobEndpoint=https://127.0.0.1:10000/devstoreaccount1;SharedAccessSignature=" SAS_BODY,
        (struct want){"devstoreaccount1", NULL, SAS_BODY,
                      "https://127.0.0.1:10000/devstoreaccount1"});
    expect_ok("BlobEndpoint=http://localhost:10000/DevAcct/;SharedAccessSignature=" SAS_BODY,
              (struct want){"devacct", NULL, SAS_BODY, "http://localhost:10000/DevAcct"});
    expect_ok("BlobEndpoint=http://[::1]:10000/acct1;SharedAccessSignature=" SAS_BODY,
              (struct want){"acct1", NULL, SAS_BODY, "http://[::1]:10000/acct1"});
    /* A path-style endpoint without a path names no account. */
    expect_ok("BlobEndpoint=http://127.0.0.1:10000;SharedAccessSignature=" SAS_BODY,
              (struct want){NULL, NULL, SAS_BODY, "http://127.0.0.1:10000"});
    /* AccountName wins over the endpoint. */
    expect_ok("BlobEndpoint=https://other.blob.core.windows.net;AccountName=mine;"
              "SharedAccessSignature=" SAS_BODY,
              (struct want){"mine", NULL, SAS_BODY, "https://other.blob.core.windows.net"});
}

static void test_sas(void **state)
{
    (void)state;
    expect_ok("BlobEndpoint=https://myacct.blob.core.windows.net/;SharedAccessSignature=?" SAS_BODY,
              (struct want){"myacct", NULL, SAS_BODY, "https://myacct.blob.core.windows.net"});
    expect_ok("BlobEndpoint=https://myacct.blob.core.windows.net;SharedAccessSignature=" SAS_BODY,
              (struct want){"myacct", NULL, SAS_BODY, "https://myacct.blob.core.windows.net"});
    /* SAS with an account name instead of an endpoint. */
    expect_ok("AccountName=myacct;SharedAccessSignature=?" SAS_BODY,
              (struct want){"myacct", NULL, SAS_BODY, "https://myacct.blob.core.windows.net"});
}

static void test_development_storage(void **state)
{
    (void)state;
    const struct want dev = {BS_DEVSTORE_ACCOUNT, BS_DEVSTORE_KEY, NULL,
                             "http://127.0.0.1:10000/devstoreaccount1"};
    expect_ok("UseDevelopmentStorage=true", dev);
    expect_ok("UseDevelopmentStorage=true;", dev);
    expect_ok("usedevelopmentstorage=TRUE", dev);
    /* The documented emulator key itself. */
    assert_string_equal(BS_DEVSTORE_KEY,
                        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6"
                        "tq/K1SZFPTOtr/KBHBeksoGMGw==");
    /* "false" is not development storage: then the string has no account at all. */
    expect_invalid("UseDevelopmentStorage=false");
}

static void test_case_insensitive_keys(void **state)
{
    (void)state;
    /* Keys are case-insensitive; values, including the account name, are verbatim. */
    expect_ok("accountname=MyAcct;ACCOUNTKEY=" KEY ";endpointsuffix=core.windows.net;"
              "defaultendpointsprotocol=http",
              (struct want){"MyAcct", KEY, NULL, "http://MyAcct.blob.core.windows.net"});
    expect_ok("blobendpoint=http://h:1/x;sharedaccesssignature=" SAS_BODY,
              (struct want){"x", NULL, SAS_BODY, "http://h:1/x"});
}

static void test_empty_segments_and_unknown_keys(void **state)
{
    (void)state;
    const struct want w = {"myacct", KEY, NULL, "https://myacct.blob.core.windows.net"};
    expect_ok("AccountName=myacct;AccountKey=" KEY ";", w);
    expect_ok(";;AccountName=myacct;;;AccountKey=" KEY ";;", w);
    expect_ok("AccountName=myacct;QueueEndpoint=https://q.example.com;AccountKey=" KEY
              ";TableEndpoint=https://t.example.com;FileEndpoint=https://f.example.com",
              w);
}

static void test_malformed(void **state)
{
    (void)state;
    expect_invalid(NULL);
    expect_invalid("");
    expect_invalid(";");
    expect_invalid(";;;");
    /* A segment without '=' (here a key pasted without its name) must not be echoed. */
    expect_invalid("AccountName");
    expect_invalid("AccountName=myacct;TOPSECRET");
    expect_invalid("=myacct");
    expect_invalid("AccountName=myacct;=" KEY);
    /* A key without an account to sign for. */
    expect_invalid("AccountKey=" KEY);
    expect_invalid("AccountKey=" KEY ";BlobEndpoint=https://blobs.example.com/");
    expect_invalid("AccountName=;AccountKey=" KEY);
    /* An empty key. */
    expect_invalid("AccountName=myacct;AccountKey=");
    /* Endpoints other than http(s). */
    expect_invalid("AccountName=myacct;AccountKey=" KEY ";BlobEndpoint=ftp://blobs.example.com/");
    expect_invalid("BlobEndpoint=blobs.example.com;SharedAccessSignature=" SAS_BODY);
    expect_invalid("AccountName=myacct;AccountKey=" KEY ";DefaultEndpointsProtocol=ftp");
    /* Neither AccountName nor BlobEndpoint: nowhere to send requests. */
    expect_invalid("SharedAccessSignature=" SAS_BODY);
    expect_invalid("SharedAccessSignature=?" SAS_BODY ";EndpointSuffix=core.windows.net");
    expect_invalid("DefaultEndpointsProtocol=https;EndpointSuffix=core.windows.net");
}

static void test_small_error_buffer(void **state)
{
    (void)state;
    struct bs_connstr cs;
    char err[16];
    memset(err, 'x', sizeof(err));
    assert_int_equal(bs_connstr_parse("AccountKey=" KEY, &cs, err, 8), -EINVAL);
    assert_true(memchr(err, '\0', 8) != NULL);
    assert_int_equal(err[8], 'x');
}

static void test_cleanup_null(void **state)
{
    (void)state;
    bs_connstr_cleanup(NULL);
    struct bs_connstr cs;
    char err[128];
    assert_int_equal(bs_connstr_parse("UseDevelopmentStorage=true", &cs, err, sizeof(err)), 0);
    bs_connstr_cleanup(&cs);
    bs_connstr_cleanup(&cs); /* a second cleanup of the emptied struct is harmless */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_account_key),
        cmocka_unit_test(test_blob_endpoint),
        cmocka_unit_test(test_account_from_endpoint),
        cmocka_unit_test(test_sas),
        cmocka_unit_test(test_development_storage),
        cmocka_unit_test(test_case_insensitive_keys),
        cmocka_unit_test(test_empty_segments_and_unknown_keys),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_small_error_buffer),
        cmocka_unit_test(test_cleanup_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
