/* Unit tests of the shim<->agent protocol codec (common/agentproto.c) and the agent's
 * endpoint allow-list (bs_endpoint_allowed): round trips, and rejection of what an untrusted
 * peer could send. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "agentproto.h"
#include "service.h"

static struct bs_chunk_req *sample_req(void)
{
    struct bs_chunk_req *r = calloc(1, sizeof(*r));
    snprintf(r->account, sizeof(r->account), "acct");
    snprintf(r->container, sizeof(r->container), "models");
    snprintf(r->blob, sizeof(r->blob), "dir/ü name %%.safetensors");
    snprintf(r->etag, sizeof(r->etag), "\"0x8DC1\"");
    r->chunk = 12;
    r->auth.kind = BS_AUTH_SAS;
    snprintf(r->auth.endpoint, sizeof(r->auth.endpoint), "https://acct.blob.core.windows.net");
    snprintf(r->auth.account, sizeof(r->auth.account), "acct");
    snprintf(r->auth.secret, sizeof(r->auth.secret), "sv=2021-12-02&sr=b&sp=r&sig=ab%%2Bc%%3D");
    return r;
}

static void test_request_round_trip(void **state)
{
    (void)state;
    struct bs_chunk_req *a = sample_req(), *b = calloc(1, sizeof(*b));
    a->sub_off = 65536;
    a->sub_len = 131072;
    char *json = bs_proto_encode_req(a), err[160], op[16];
    assert_non_null(json);
    assert_int_equal(bs_proto_decode_op(json, strlen(json), op, sizeof(op), err, sizeof(err)), 0);
    assert_string_equal(op, "chunk");
    assert_int_equal(bs_proto_decode_req(json, strlen(json), b, err, sizeof(err)), 0);
    assert_string_equal(b->blob, a->blob);
    assert_string_equal(b->etag, a->etag);
    assert_string_equal(b->auth.secret, a->auth.secret);
    assert_string_equal(b->auth.endpoint, a->auth.endpoint);
    assert_true(b->chunk == 12 && b->sub_off == 65536 && b->sub_len == 131072);
    assert_int_equal(b->auth.kind, BS_AUTH_SAS);
    free(json);
    free(a);
    free(b);
}

/* A secret that could start a header or a request is refused, whatever the kind. */
static void test_secret_alphabet(void **state)
{
    (void)state;
    static const char *const bad[] = {"abc\r\nHost: evil", "abc\ndef", "a b", "a\"b", "tok;x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        for (int kind = BS_AUTH_SAS; kind <= BS_AUTH_BEARER; kind++) {
            struct bs_chunk_req *a = sample_req(), *b = calloc(1, sizeof(*b));
            a->auth.kind = (enum bs_auth_kind)kind;
            snprintf(a->auth.secret, sizeof(a->auth.secret), "%s", bad[i]);
            char *json = bs_proto_encode_req(a), err[160];
            assert_int_equal(bs_proto_decode_req(json, strlen(json), b, err, sizeof(err)), -EINVAL);
            assert_non_null(strstr(err, "characters"));
            free(json);
            free(a);
            free(b);
        }
    }
    /* A JWT and a SAS as they really look pass. */
    struct bs_chunk_req *a = sample_req(), *b = calloc(1, sizeof(*b));
    a->auth.kind = BS_AUTH_BEARER;
    snprintf(a->auth.secret, sizeof(a->auth.secret), "eyJhbGci.eyJhdWQi-_x.c2ln_-");
    char *json = bs_proto_encode_req(a), err[160];
    assert_int_equal(bs_proto_decode_req(json, strlen(json), b, err, sizeof(err)), 0);
    free(json);
    free(a);
    free(b);
}

static void test_request_rejects(void **state)
{
    (void)state;
    struct bs_chunk_req *b = calloc(1, sizeof(*b));
    char err[160];
    static const char *const bad[] = {
        "not json",
        "[]",
        "{\"v\":1,\"op\":\"chunk\"}",
        "{\"v\":1,\"op\":\"chunk\",\"account\":\"a\",\"container\":\"c\",\"blob\":\"b\","
        "\"chunk\":-1,\"auth\":{\"kind\":\"none\",\"endpoint\":\"https://a\"}}",
        "{\"v\":1,\"op\":\"chunk\",\"account\":\"a\",\"container\":\"c\",\"blob\":\"b\","
        "\"chunk\":1,\"auth\":{\"kind\":\"sharedkey\",\"endpoint\":\"https://a\","
        "\"secret\":\"x\"}}",
        "{\"v\":1,\"op\":\"chunk\",\"account\":\"a\",\"container\":\"c\",\"blob\":\"b\","
        "\"chunk\":1,\"auth\":{\"kind\":\"sas\",\"endpoint\":\"https://a\"}}",
        "{\"v\":1,\"op\":\"chunk\",\"account\":\"a\\u0000b\",\"container\":\"c\",\"blob\":\"b\","
        "\"chunk\":1,\"auth\":{\"kind\":\"none\",\"endpoint\":\"https://a\"}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(bs_proto_decode_req(bad[i], strlen(bad[i]), b, err, sizeof(err)), -EINVAL);
    /* A field longer than its slot is refused, not truncated into another name. */
    char *big = malloc(3000);
    memset(big, 'x', 2999);
    big[2999] = '\0';
    char *json = malloc(4000);
    snprintf(json, 4000,
             "{\"v\":1,\"op\":\"chunk\",\"account\":\"a\",\"container\":\"c\",\"blob\":\"%s\","
             "\"chunk\":1,\"auth\":{\"kind\":\"none\",\"endpoint\":\"https://a\"}}",
             big);
    assert_int_equal(bs_proto_decode_req(json, strlen(json), b, err, sizeof(err)), -EINVAL);
    free(big);
    free(json);
    free(b);
}

static void test_reply_round_trip_and_checks(void **state)
{
    (void)state;
    struct bs_chunk_reply *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    a->status = BS_CHUNK_HIT;
    snprintf(a->etag, sizeof(a->etag), "\"0x1\"");
    a->blob_size = 20 << 20;
    a->chunk_size = 8 << 20;
    a->chunk = 2;
    a->length = 4 << 20;
    a->block_size = 1 << 20;
    a->ncrcs = 4;
    for (uint32_t i = 0; i < 4; i++)
        a->crcs[i] = 0xFFFFFFF0u + i;
    char *json = bs_proto_encode_reply(a), err[160];
    assert_int_equal(bs_proto_decode_reply(json, strlen(json), b, err, sizeof(err)), 0);
    assert_true(b->status == BS_CHUNK_HIT && b->ncrcs == 4 && b->crcs[3] == 0xFFFFFFF3u);
    assert_true(b->length == a->length && b->chunk == 2 && b->chunk_size == a->chunk_size);
    free(json);
    /* A checksum list that does not match the length is refused. */
    a->length = 5 << 20;
    json = bs_proto_encode_reply(a);
    assert_int_equal(bs_proto_decode_reply(json, strlen(json), b, err, sizeof(err)), -EINVAL);
    free(json);
    /* Misses carry no checksums and decode fine. */
    a->status = BS_CHUNK_MISS;
    snprintf(a->reason, sizeof(a->reason), "fill queue full");
    json = bs_proto_encode_reply(a);
    assert_int_equal(bs_proto_decode_reply(json, strlen(json), b, err, sizeof(err)), 0);
    assert_int_equal(b->status, BS_CHUNK_MISS);
    assert_string_equal(b->reason, "fill queue full");
    free(json);
    free(a);
    free(b);
}

/* Every geometry the agent accepts (up to BS_PROTO_MAX_CRCS blocks) encodes into a reply that
 * fits one HTTP header line (MHD's default pool is 32 KiB) and decodes to the same checksums;
 * a compact list of the wrong length or alphabet is refused. */
static void test_reply_compact_crcs(void **state)
{
    (void)state;
    struct bs_chunk_reply *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    char err[160];
    a->status = BS_CHUNK_FILLED;
    snprintf(a->etag, sizeof(a->etag), "\"0x8DC0123456789AB\"");
    a->blob_size = 1ull << 40;
    a->chunk_size = 64u << 20;
    a->chunk = 16383;
    a->block_size = 16384;
    a->length = a->chunk_size;
    a->ncrcs = BS_PROTO_MAX_CRCS;
    a->sub_len = a->length;
    snprintf(a->reason, sizeof(a->reason), "filled");
    for (uint32_t i = 0; i < a->ncrcs; i++)
        a->crcs[i] = 0x9E3779B9u * (i + 1);
    char *json = bs_proto_encode_reply(a);
    assert_non_null(json);
    assert_true(strlen(json) < 24 * 1024);
    assert_null(strstr(json, "\"crc\":"));
    assert_int_equal(bs_proto_decode_reply(json, strlen(json), b, err, sizeof(err)), 0);
    assert_int_equal(b->ncrcs, a->ncrcs);
    assert_memory_equal(b->crcs, a->crcs, sizeof(a->crcs[0]) * a->ncrcs);
    /* one block fewer than the length needs */
    a->length += a->block_size;
    free(json);
    json = bs_proto_encode_reply(a);
    assert_int_equal(bs_proto_decode_reply(json, strlen(json), b, err, sizeof(err)), -EINVAL);
    free(json);
    /* odd lengths round-trip too (1025 blocks: compact, with padding) */
    a->length = 1025ull * a->block_size - 7;
    a->ncrcs = 1025;
    json = bs_proto_encode_reply(a);
    assert_int_equal(bs_proto_decode_reply(json, strlen(json), b, err, sizeof(err)), 0);
    assert_int_equal(b->ncrcs, 1025);
    assert_int_equal(b->crcs[1024], a->crcs[1024]);
    free(json);
    const char *bad = "{\"status\":\"hit\",\"etag\":\"e\",\"blob_size\":65536,\"chunk_size\":"
                      "1048576,\"chunk\":0,\"length\":65536,\"sub_off\":0,\"sub_len\":0,"
                      "\"block_size\":16384,\"crc_b64\":\"AAAAAAAAAAAAAAAAAAAA!A==\"}";
    assert_int_equal(bs_proto_decode_reply(bad, strlen(bad), b, err, sizeof(err)), -EINVAL);
    free(a);
    free(b);
}

static void test_hello_geometry(void **state)
{
    (void)state;
    struct bs_hello h;
    char err[160];
    const char *ok = "{\"v\":1,\"chunk_size\":8388608,\"block_size\":65536}";
    assert_int_equal(bs_proto_decode_hello(ok, strlen(ok), &h, err, sizeof(err)), 0);
    assert_true(h.chunk_size == 8388608 && h.block_size == 65536);
    static const char *const bad[] = {
        "{\"v\":2,\"chunk_size\":8388608,\"block_size\":65536}",
        "{\"v\":1,\"chunk_size\":8388608,\"block_size\":65535}",
        "{\"v\":1,\"chunk_size\":1000000,\"block_size\":65536}",
        "{\"v\":1,\"chunk_size\":0,\"block_size\":65536}",
        "{\"v\":1,\"chunk_size\":67108864,\"block_size\":4096}", /* 16384 blocks > max */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(bs_proto_decode_hello(bad[i], strlen(bad[i]), &h, err, sizeof(err)),
                         -EINVAL);
}

/* Every frame is built by the codec: corrupt reports, busy frames, the hello's answer time;
 * a credential kind that is never delegated cannot be encoded at all. */
static void test_codec_frames(void **state)
{
    (void)state;
    struct bs_chunk_req *a = sample_req(), *b = calloc(1, sizeof(*b));
    char *json = bs_proto_encode_corrupt(a), err[160], op[16];
    assert_non_null(json);
    assert_int_equal(bs_proto_decode_op(json, strlen(json), op, sizeof(op), err, sizeof(err)), 0);
    assert_string_equal(op, "corrupt");
    assert_int_equal(bs_proto_decode_req(json, strlen(json), b, err, sizeof(err)), 0);
    assert_string_equal(b->blob, a->blob);
    free(json);

    a->auth.kind = BS_AUTH_SHARED_KEY;
    assert_null(bs_proto_encode_req(a));
    a->auth.kind = (enum bs_auth_kind)7;
    assert_null(bs_proto_encode_req(a));

    char *busy = bs_proto_encode_busy();
    assert_non_null(busy);
    assert_true(bs_proto_is_busy(busy, strlen(busy)));
    assert_false(bs_proto_is_busy("{\"status\":\"hit\"}", 16));
    assert_false(bs_proto_is_busy("not json", 8));
    free(busy);

    struct bs_hello h = {.chunk_size = 8 << 20,
                         .block_size = 65536,
                         .version = 1,
                         .answer_ms = 4000},
                    g;
    char *hj = bs_proto_encode_hello(&h);
    assert_int_equal(bs_proto_decode_hello(hj, strlen(hj), &g, err, sizeof(err)), 0);
    assert_int_equal(g.answer_ms, 4000);
    free(hj);
    const char *old = "{\"v\":1,\"chunk_size\":8388608,\"block_size\":65536}";
    assert_int_equal(bs_proto_decode_hello(old, strlen(old), &g, err, sizeof(err)), 0);
    assert_int_equal(g.answer_ms, 0);
    /* Whoever answers announces it: an hour is taken as the protocol's maximum. */
    const char *hour =
        "{\"v\":1,\"chunk_size\":8388608,\"block_size\":65536,\"answer_ms\":3599000}";
    assert_int_equal(bs_proto_decode_hello(hour, strlen(hour), &g, err, sizeof(err)), 0);
    assert_int_equal(g.answer_ms, BS_PROTO_MAX_ANSWER_MS);
    free(a);
    free(b);
}

static void test_endpoint_allow_list(void **state)
{
    (void)state;
    const char *def = "https://*.blob.core.windows.net, http://127.0.0.1:*/devstoreaccount1";
    assert_true(bs_endpoint_allowed(def, "https://acct.blob.core.windows.net", "acct"));
    assert_true(
        bs_endpoint_allowed(def, "http://127.0.0.1:10000/devstoreaccount1", "devstoreaccount1"));
    static const char *const bad[][2] = {
        {"https://other.blob.core.windows.net", "acct"},         /* names another account */
        {"https://acct.blob.core.windows.net.evil.com", "acct"}, /* suffix games */
        {"https://acct.evil.com/x.blob.core.windows.net", "acct"},
        {"http://acct.blob.core.windows.net", "acct"}, /* scheme */
        {"https://127.0.0.1:1@evil.com/acct", "acct"}, /* userinfo */
        {"http://127.0.0.1:10000/devstoreaccount1/../x", "devstoreaccount1"},
        {"http://127.0.0.1:10000/devstoreaccount1?x=1", "devstoreaccount1"},
        {"https://a.b.blob.core.windows.net", "a"}, /* '*' is one label */
        /* One spelling per origin: these name an allowed origin in another way, which would
         * key another cache copy, grant and tenant share of the same blob. */
        {"http://127.0.0.1:010000/devstoreaccount1", "devstoreaccount1"},
        {"http://127.0.0.1:0010000/devstoreaccount1", "devstoreaccount1"},
        {"http://127.0.0.1:80/devstoreaccount1", "devstoreaccount1"},
        {"https://acct.blob.core.windows.net:443", "acct"},
        {"https://ACCT.blob.core.windows.net", "acct"},
        {"https://acct.blob.core.windows.net.", "acct"},
        {"HTTPS://acct.blob.core.windows.net", "acct"},
        {"http://127.0.0.1:/devstoreaccount1", "devstoreaccount1"},
        {"http://127.0.0.1:99999/devstoreaccount1", "devstoreaccount1"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(bs_endpoint_allowed(def, bad[i][0], bad[i][1]));
    assert_false(bs_endpoint_allowed("", "https://acct.blob.core.windows.net", "acct"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_round_trip),
        cmocka_unit_test(test_secret_alphabet),
        cmocka_unit_test(test_request_rejects),
        cmocka_unit_test(test_reply_round_trip_and_checks),
        cmocka_unit_test(test_reply_compact_crcs),
        cmocka_unit_test(test_hello_geometry),
        cmocka_unit_test(test_codec_frames),
        cmocka_unit_test(test_endpoint_allow_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
