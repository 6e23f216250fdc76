/* Unit tests for common/sharedkey: Shared Key strings-to-sign against known vectors, HMAC
 * signatures against independently computed values, and blob-name URL encoding.
 *
 * Provenance of the vectors:
 * - Strings-to-sign are written out by hand, field by field, from Microsoft's "Authorize with
 *   Shared Key" page (blob service, version 2015-02-21 and later: 12 standard header lines,
 *   canonicalized x-ms-* headers, canonicalized resource). The three marked "doc" are the
 *   page's own published examples (Get Container Metadata, Create Container with
 *   Content-Length 0, List Blobs with a repeated `include`).
 * - Signatures were computed outside this code, e.g.
 *     python3 -c 'import hmac,hashlib,base64,sys; k=base64.b64decode(KEY);
 *       print(base64.b64encode(hmac.new(k, MSG.encode(), hashlib.sha256).digest()).decode())'
 *   with the same string literal, and cross-checked with
 *     printf MSG | openssl dgst -sha256 -mac HMAC -macopt hexkey:HEX -binary | base64
 *   and, for the devstore vector, with Azurite's own computeHMACSHA256.
 * - URL encodings match python3 urllib.parse.quote(s, safe='/') (path) and safe='' (component).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sharedkey.h"

/* The storage emulator's documented account key (see connstr.h). */
#define DEV_KEY                                                                                    \
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
/* base64 of a made-up 64-byte key ("SecretKeyForUnitTestsOnly-NotReal-0123..."): "==" padding. */
#define K64                                                                                        \
    "U2VjcmV0S2V5Rm9yVW5pdFRlc3RzT25seS1Ob3RSZWFsLTAxMjM0NTY3ODlhYmNkZWZnaGlqa2xtbm9wcXJzdA=="
/* base64 of bytes 0..31: one '=' of padding. */
#define K32 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
/* base64 of bytes 100..147: no padding. */
#define K48 "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoOEhYaHiImKi4yNjo+QkZKT"

#define DOC_DATE "x-ms-date:Fri, 26 Jun 2015 23:39:12 GMT"
#define DATE     "x-ms-date:Mon, 01 Jan 2024 00:00:00 GMT"
#define VERSION  "x-ms-version:2023-11-03"

/* Empty standard header lines, for readability of the expected strings. */
#define EMPTY_CE_CL_LEN_MD5_CT "\n\n\n\n\n" /* Content-Encoding .. Content-Type */
#define EMPTY_DATE_IMS         "\n\n"       /* Date (x-ms-date is used), If-Modified-Since */
#define EMPTY_INM_IUS          "\n\n"       /* If-None-Match, If-Unmodified-Since */

static char *sts(const char *account, const struct bs_sk_request *r)
{
    static char out[4096];
    int n = bs_sharedkey_string_to_sign(account, r, out, sizeof(out));
    if (n < 0)
        fail_msg("bs_sharedkey_string_to_sign returned %d", n);
    assert_int_equal((size_t)n, strlen(out));
    return out;
}

static void test_doc_get_container_metadata(void **state)
{
    (void)state;
    /* doc: GET ...mycontainer?restype=container&comp=metadata&timeout=20 (headers given in
     * reverse order: the function sorts them). */
    const char *hdrs[] = {"x-ms-version:2015-02-21", DOC_DATE};
    struct bs_sk_request r = {.method = "GET",
                              .url_path = "/mycontainer",
                              .query = "restype=container&comp=metadata&timeout=20",
                              .ms_headers = hdrs,
                              .n_ms_headers = 2};
    const char *want = "GET\n\n\n\n\n\n\n\n\n\n\n\n" DOC_DATE "\nx-ms-version:2015-02-21\n"
                       "/myaccount/mycontainer\ncomp:metadata\nrestype:container\ntimeout:20";
    assert_string_equal(sts("myaccount", &r), want);

    /* Signature of the same string with K64. */
    char sig[64];
    assert_int_equal(bs_sharedkey_sign(K64, want, sig, sizeof(sig)), 0);
    assert_string_equal(sig, "6oEd364q5DuOpVlOC6odsG4mE7FhhVIR9iOHf+MyiTg=");
}

static void test_doc_content_length_zero(void **state)
{
    (void)state;
    /* doc: PUT ...mycontainer?restype=container&timeout=30 with Content-Length: 0 signs an
     * empty Content-Length line from version 2015-02-21 on. NULL signs the same. */
    const char *hdrs[] = {DOC_DATE, "x-ms-version:2015-02-21"};
    struct bs_sk_request r = {.method = "PUT",
                              .url_path = "/mycontainer",
                              .query = "restype=container&timeout=30",
                              .content_length = "0",
                              .ms_headers = hdrs,
                              .n_ms_headers = 2};
    const char *want = "PUT\n\n\n\n\n\n\n\n\n\n\n\n" DOC_DATE "\nx-ms-version:2015-02-21\n"
                       "/myaccount/mycontainer\nrestype:container\ntimeout:30";
    assert_string_equal(sts("myaccount", &r), want);
    r.content_length = NULL;
    assert_string_equal(sts("myaccount", &r), want);
}

static void test_doc_list_blobs_repeated_param(void **state)
{
    (void)state;
    /* doc: ?restype=container&comp=list&include=snapshots&include=metadata&
     * include=uncommittedblobs -> values of a repeated name sorted and comma-joined. */
    const char *hdrs[] = {DOC_DATE, "x-ms-version:2015-02-21"};
    struct bs_sk_request r = {.method = "GET",
                              .url_path = "/mycontainer",
                              .query =
                                  "restype=container&comp=list&include=snapshots&include=metadata&"
                                  "include=uncommittedblobs",
                              .ms_headers = hdrs,
                              .n_ms_headers = 2};
    const char *want = "GET\n\n\n\n\n\n\n\n\n\n\n\n" DOC_DATE "\nx-ms-version:2015-02-21\n"
                       "/myaccount/mycontainer\ncomp:list\n"
                       "include:metadata,snapshots,uncommittedblobs\nrestype:container";
    assert_string_equal(sts("myaccount", &r), want);
}

static void test_get_with_xms_range_and_if_match(void **state)
{
    (void)state;
    /* The read engine's request: path-style emulator URL (the account appears twice, as the
     * page notes for the emulator), If-Match with the ETag, the range in x-ms-range. */
    const char *hdrs[] = {VERSION, "x-ms-range:bytes=33554432-67108863", DATE,
                          "x-ms-client-request-id:7f1c2a9e-0001"};
    struct bs_sk_request r = {
        .method = "GET",
        .url_path = "/devstoreaccount1/models/llama-3/model-00001-of-00004.safetensors",
        .if_match = "\"0x8DC2F2A5B6C7D8E\"",
        .ms_headers = hdrs,
        .n_ms_headers = 4};
    const char *want =
        "GET\n" EMPTY_CE_CL_LEN_MD5_CT EMPTY_DATE_IMS "\"0x8DC2F2A5B6C7D8E\"\n" /* If-Match */
        EMPTY_INM_IUS "\n"                                                      /* Range */
        "x-ms-client-request-id:7f1c2a9e-0001\n" DATE "\n"
        "x-ms-range:bytes=33554432-67108863\n" VERSION "\n"
        "/devstoreaccount1/devstoreaccount1/models/llama-3/"
        "model-00001-of-00004.safetensors";
    const char *got = sts("devstoreaccount1", &r);
    assert_string_equal(got, want);

    char sig[64];
    assert_int_equal(bs_sharedkey_sign(DEV_KEY, got, sig, sizeof(sig)), 0);
    assert_string_equal(sig, "Y732uMcb/VVrN3pH0A0e8EBngrt7dZO5J/aKllISEco=");
}

static void test_get_with_standard_range(void **state)
{
    (void)state;
    /* The standard Range header is a positional line; the path is signed as sent (encoded). */
    const char *hdrs[] = {DATE, VERSION};
    struct bs_sk_request r = {.method = "GET",
                              .url_path = "/ctr/dir%20one/%C3%A9t%C3%A9.bin",
                              .if_match = "\"0x1\"",
                              .range = "bytes=0-7",
                              .ms_headers = hdrs,
                              .n_ms_headers = 2};
    const char *want = "GET\n" EMPTY_CE_CL_LEN_MD5_CT EMPTY_DATE_IMS "\"0x1\"\n" EMPTY_INM_IUS
                       "bytes=0-7\n" DATE "\n" VERSION "\n"
                       "/myaccount/ctr/dir%20one/%C3%A9t%C3%A9.bin";
    assert_string_equal(sts("myaccount", &r), want);
}

static void test_head(void **state)
{
    (void)state;
    /* Header names in any case are lower-cased before sorting. */
    const char *hdrs[] = {"X-MS-Version:2023-11-03", "X-Ms-Date:Mon, 01 Jan 2024 00:00:00 GMT",
                          "x-MS-client-request-id:abc"};
    struct bs_sk_request r = {
        .method = "HEAD", .url_path = "/ctr/blob.bin", .ms_headers = hdrs, .n_ms_headers = 3};
    const char *want = "HEAD\n\n\n\n\n\n\n\n\n\n\n\n"
                       "x-ms-client-request-id:abc\n" DATE "\n" VERSION "\n"
                       "/myaccount/ctr/blob.bin";
    assert_string_equal(sts("myaccount", &r), want);
}

static void test_put_with_body_headers(void **state)
{
    (void)state;
    const char *hdrs[] = {VERSION, "x-ms-blob-type:BlockBlob", DATE};
    struct bs_sk_request r = {.method = "PUT",
                              .url_path = "/ctr/new.bin",
                              .content_length = "1024",
                              .content_type = "application/octet-stream",
                              .ms_headers = hdrs,
                              .n_ms_headers = 3};
    const char *want = "PUT\n"
                       "\n"                         /* Content-Encoding */
                       "\n"                         /* Content-Language */
                       "1024\n"                     /* Content-Length */
                       "\n"                         /* Content-MD5 */
                       "application/octet-stream\n" /* Content-Type */
                       "\n\n\n\n\n\n"               /* Date .. Range */
                       "x-ms-blob-type:BlockBlob\n" DATE "\n" VERSION "\n"
                       "/myaccount/ctr/new.bin";
    assert_string_equal(sts("myaccount", &r), want);
}

static void test_query_canonicalization(void **state)
{
    (void)state;
    /* Names lower-cased and sorted; names and values URL-decoded; a name repeated in another
     * case is the same parameter; empty segments ignored. */
    const char *hdrs[] = {DATE, VERSION};
    struct bs_sk_request r = {
        .method = "GET",
        .url_path = "/ctr",
        .query = "restype=container&Comp=list&prefix=dir%2Fsub%20dir%2F&maxresults=10&"
                 "marker=a%2Bb%3Dc&include=metadata&INCLUDE=deleted&&Timeout=30",
        .ms_headers = hdrs,
        .n_ms_headers = 2};
    const char *want = "GET\n\n\n\n\n\n\n\n\n\n\n\n" DATE "\n" VERSION "\n"
                       "/myaccount/ctr"
                       "\ncomp:list"
                       "\ninclude:deleted,metadata"
                       "\nmarker:a+b=c"
                       "\nmaxresults:10"
                       "\nprefix:dir/sub dir/"
                       "\nrestype:container"
                       "\ntimeout:30";
    assert_string_equal(sts("myaccount", &r), want);

    /* '+' in a query value is a space, as the emulator's validator decodes it. */
    r.query = "comp=list&prefix=a+b";
    const char *want2 = "GET\n\n\n\n\n\n\n\n\n\n\n\n" DATE "\n" VERSION "\n"
                        "/myaccount/ctr\ncomp:list\nprefix:a b";
    assert_string_equal(sts("myaccount", &r), want2);

    /* Repeated values sort by their decoded bytes ("%41" is 'A', before 'B'). */
    r.query = "include=B&include=%41&include=c";
    const char *want3 = "GET\n\n\n\n\n\n\n\n\n\n\n\n" DATE "\n" VERSION "\n"
                        "/myaccount/ctr\ninclude:A,B,c";
    assert_string_equal(sts("myaccount", &r), want3);

    /* An empty query is no query. */
    r.query = "";
    const char *want4 = "GET\n\n\n\n\n\n\n\n\n\n\n\n" DATE "\n" VERSION "\n/myaccount/ctr";
    assert_string_equal(sts("myaccount", &r), want4);
}

static void test_header_canonicalization(void **state)
{
    (void)state;
    /* Sorted by lower-cased name; linear whitespace folded to one space outside quoted
     * strings; whitespace around the colon trimmed; an empty value keeps its line (service
     * version 2016-05-31 and later). */
    const char *hdrs[] = {
        "x-ms-meta-q: a  \"b   c\"  d",
        "x-ms-meta-b:",
        VERSION,
        "x-ms-meta-a:  hello   \t world  ",
        "X-MS-DATE :  Mon, 01 Jan 2024 00:00:00 GMT",
    };
    struct bs_sk_request r = {
        .method = "GET", .url_path = "/ctr/b", .ms_headers = hdrs, .n_ms_headers = 5};
    const char *want = "GET\n\n\n\n\n\n\n\n\n\n\n\n" DATE "\n"
                       "x-ms-meta-a:hello world\n"
                       "x-ms-meta-b:\n"
                       "x-ms-meta-q:a \"b   c\" d\n" VERSION "\n"
                       "/myaccount/ctr/b";
    assert_string_equal(sts("myaccount", &r), want);
}

static void test_string_to_sign_errors(void **state)
{
    (void)state;
    char out[8192];
    /* A header without a colon. */
    const char *bad[] = {DATE, "x-ms-version"};
    struct bs_sk_request r = {
        .method = "GET", .url_path = "/c/b", .ms_headers = bad, .n_ms_headers = 2};
    assert_int_equal(bs_sharedkey_string_to_sign("a", &r, out, sizeof(out)), -EINVAL);

    /* 32 x-ms headers are accepted, 33 are not. */
    static char names[33][40];
    const char *many[33];
    for (int i = 0; i < 33; i++) {
        snprintf(names[i], sizeof(names[i]), "x-ms-meta-h%02d:v", i);
        many[i] = names[i];
    }
    r.ms_headers = many;
    r.n_ms_headers = 32;
    assert_true(bs_sharedkey_string_to_sign("a", &r, out, sizeof(out)) > 0);
    r.n_ms_headers = 33;
    assert_int_equal(bs_sharedkey_string_to_sign("a", &r, out, sizeof(out)), -EINVAL);

    /* 32 query parameters are accepted, 33 are not. */
    char q[33 * 8 + 1] = "";
    size_t qlen = 0;
    for (int i = 0; i < 32; i++)
        qlen += (size_t)snprintf(q + qlen, sizeof(q) - qlen, "%sp%02d=v", i ? "&" : "", i);
    r.ms_headers = NULL;
    r.n_ms_headers = 0;
    r.query = q;
    assert_true(bs_sharedkey_string_to_sign("a", &r, out, sizeof(out)) > 0);
    snprintf(q + qlen, sizeof(q) - qlen, "&p32=v");
    assert_int_equal(bs_sharedkey_string_to_sign("a", &r, out, sizeof(out)), -EINVAL);
}

static void test_string_to_sign_enospc(void **state)
{
    (void)state;
    const char *hdrs[] = {DATE, VERSION};
    struct bs_sk_request r = {.method = "GET",
                              .url_path = "/ctr/b",
                              .query = "comp=list",
                              .ms_headers = hdrs,
                              .n_ms_headers = 2};
    char full[1024];
    int n = bs_sharedkey_string_to_sign("myaccount", &r, full, sizeof(full));
    assert_true(n > 0);

    /* Exactly n+1 bytes fit; n bytes (no room for the NUL) and smaller do not, and nothing is
     * written past the size given. */
    char *buf = malloc((size_t)n + 8);
    assert_non_null(buf);
    memset(buf, 'Z', (size_t)n + 8);
    assert_int_equal(bs_sharedkey_string_to_sign("myaccount", &r, buf, (size_t)n + 1), n);
    assert_string_equal(buf, full);
    memset(buf, 'Z', (size_t)n + 8);
    assert_int_equal(bs_sharedkey_string_to_sign("myaccount", &r, buf, (size_t)n), -ENOSPC);
    assert_int_equal(buf[n], 'Z');
    memset(buf, 'Z', (size_t)n + 8);
    assert_int_equal(bs_sharedkey_string_to_sign("myaccount", &r, buf, 10), -ENOSPC);
    assert_int_equal(buf[10], 'Z');
    free(buf);
}

static void test_sign_vectors(void **state)
{
    (void)state;
    char sig[64];
    /* 32-byte key (one '=' of padding), empty message. */
    assert_int_equal(bs_sharedkey_sign(K32, "", sig, sizeof(sig)), 0);
    assert_string_equal(sig, "04tCCW2A9F+Ca0Sp1WB95ySWpBXT9KGoyI47udqNwcs=");
    /* 48-byte key (no padding). */
    assert_int_equal(bs_sharedkey_sign(K48, "hello\n", sig, sizeof(sig)), 0);
    assert_string_equal(sig, "wsQymqq/vjST/Ey84Rmf/frbSn0y0lQbdb4TfM10PGA=");
    /* The minimum output size is 45 (44 base64 characters and the NUL). */
    char exact[45];
    assert_int_equal(bs_sharedkey_sign(K48, "hello\n", exact, sizeof(exact)), 0);
    assert_string_equal(exact, "wsQymqq/vjST/Ey84Rmf/frbSn0y0lQbdb4TfM10PGA=");
}

static void test_sign_invalid_key(void **state)
{
    (void)state;
    const char *const bad[] = {
        "",           /* empty */
        "abc",        /* length not a multiple of 4 */
        "YWJjZA=",    /* length not a multiple of 4 */
        "ab$d",       /* outside the alphabet */
        "ab-_",       /* URL-safe alphabet is not the key alphabet */
        "A=BC",       /* padding in the middle */
        "AB=C",       /* padding before a data character */
        "====",       /* only padding */
        "YWJj\nZA==", /* embedded newline */
        "Zm9v YmFy",  /* embedded space */
        K64 "!",      /* trailing garbage */
    };
    char sig[64];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(sig, 'Z', sizeof(sig));
        int rc = bs_sharedkey_sign(bad[i], "msg", sig, sizeof(sig));
        if (rc != -EINVAL)
            fail_msg("sign with key \"%s\" returned %d, expected -EINVAL", bad[i], rc);
    }
    /* An output buffer below 45 bytes is refused, not overrun. */
    char small[60];
    memset(small, 'Z', sizeof(small));
    assert_true(bs_sharedkey_sign(K64, "msg", small, 44) < 0);
    for (size_t i = 44; i < sizeof(small); i++)
        assert_int_equal(small[i], 'Z');
}

/* ---- URL encoding ---- */

static void expect_encoded(int path, const char *in, const char *want)
{
    char out[512];
    int n = path ? bs_url_encode_path(in, out, sizeof(out))
                 : bs_url_encode_component(in, out, sizeof(out));
    if (n < 0)
        fail_msg("encode(%s, \"%s\") returned %d", path ? "path" : "component", in, n);
    if (strcmp(out, want) != 0)
        fail_msg("encode(%s, \"%s\") = \"%s\", expected \"%s\"", path ? "path" : "component", in,
                 out, want);
    assert_int_equal((size_t)n, strlen(want));
}

static void test_url_encode(void **state)
{
    (void)state;
    /* Unreserved characters pass unchanged in both. */
    expect_encoded(1, "AZaz09-._~", "AZaz09-._~");
    expect_encoded(0, "AZaz09-._~", "AZaz09-._~");
    expect_encoded(1, "", "");
    expect_encoded(0, "", "");
    expect_encoded(1, "model.safetensors", "model.safetensors");
    /* Spaces; '/' kept in paths, encoded in components. */
    expect_encoded(1, "dir/sub dir/file name.bin", "dir/sub%20dir/file%20name.bin");
    expect_encoded(0, "dir/sub dir/file name.bin", "dir%2Fsub%20dir%2Ffile%20name.bin");
    /* UTF-8 stays UTF-8, byte by byte, upper-case hex. */
    expect_encoded(1,
                   "\xd0\xbc\xd0\xbe\xd0\xb4\xd0\xb5\xd0\xbb\xd1\x8c/\xe6\x97\xa5\xe6\x9c\xac.bin",
                   "%D0%BC%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C/%E6%97%A5%E6%9C%AC.bin");
    expect_encoded(0, "\xc3\xa9", "%C3%A9");
    expect_encoded(1, "\xff", "%FF");
    /* '%' itself and the reserved characters. */
    expect_encoded(1, "100%done", "100%25done");
    expect_encoded(1, "%2F", "%252F");
    expect_encoded(1, "a+b&c=d?e#f", "a%2Bb%26c%3Dd%3Fe%23f");
    expect_encoded(0, "sig=a+b/c==", "sig%3Da%2Bb%2Fc%3D%3D");
    expect_encoded(1, "//lead/and/trail//", "//lead/and/trail//");
}

static void test_url_encode_enospc(void **state)
{
    (void)state;
    char out[16];
    /* "abc" needs 4 bytes with the NUL. */
    memset(out, 'Z', sizeof(out));
    assert_int_equal(bs_url_encode_path("abc", out, 3), -ENOSPC);
    assert_int_equal(out[3], 'Z');
    assert_int_equal(bs_url_encode_path("abc", out, 4), 3);
    assert_string_equal(out, "abc");
    /* " " becomes "%20": 4 bytes with the NUL. */
    memset(out, 'Z', sizeof(out));
    assert_int_equal(bs_url_encode_component(" ", out, 3), -ENOSPC);
    assert_int_equal(out[3], 'Z');
    assert_int_equal(bs_url_encode_component(" ", out, 4), 3);
    assert_string_equal(out, "%20");
    /* An escape that would be split by the end of the buffer ("ab%20c" needs 7 bytes). */
    memset(out, 'Z', sizeof(out));
    assert_int_equal(bs_url_encode_path("ab c", out, 4), -ENOSPC);
    assert_int_equal(out[4], 'Z');
    assert_int_equal(bs_url_encode_path("ab c", out, 6), -ENOSPC);
    assert_int_equal(out[6], 'Z');
    assert_int_equal(bs_url_encode_path("ab c", out, 7), 6);
    assert_string_equal(out, "ab%20c");
    /* Nothing fits in zero bytes, not even "". */
    assert_int_equal(bs_url_encode_path("", out, 0), -ENOSPC);
    assert_int_equal(bs_url_encode_component("x", out, 0), -ENOSPC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_doc_get_container_metadata),
        cmocka_unit_test(test_doc_content_length_zero),
        cmocka_unit_test(test_doc_list_blobs_repeated_param),
        cmocka_unit_test(test_get_with_xms_range_and_if_match),
        cmocka_unit_test(test_get_with_standard_range),
        cmocka_unit_test(test_head),
        cmocka_unit_test(test_put_with_body_headers),
        cmocka_unit_test(test_query_canonicalization),
        cmocka_unit_test(test_header_canonicalization),
        cmocka_unit_test(test_string_to_sign_errors),
        cmocka_unit_test(test_string_to_sign_enospc),
        cmocka_unit_test(test_sign_vectors),
        cmocka_unit_test(test_sign_invalid_key),
        cmocka_unit_test(test_url_encode),
        cmocka_unit_test(test_url_encode_enospc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
