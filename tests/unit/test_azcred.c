/* Unit tests for common/azcred's request building: the URL comes only from names that pass
 * common/names, percent-encoded, with the SAS query rebuilt from its parsed fields; a
 * delegated SAS with a field that is not a SAS field is refused without quoting the secret. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "azcred.h"

/* azcred: the URL comes from validated parts only, the SAS query rebuilt canonically. */
static int prepare(const char *container, const char *blob, struct bs_azreq *r, char *err)
{
    struct bs_delegation d;
    memset(&d, 0, sizeof(d));
    d.kind = BS_AUTH_SAS;
    snprintf(d.endpoint, sizeof(d.endpoint), "http://127.0.0.1:1/devstoreaccount1");
    snprintf(d.account, sizeof(d.account), "devstoreaccount1");
    snprintf(d.secret, sizeof(d.secret), "sv=2021-12-02&se=2030-01-01T00:00:00Z&sp=r&sig=a%%2bb");
    struct bs_azcred *c = bs_azcred_from_delegation(&d, err, 200);
    assert_non_null(c);
    memset(r, 0, sizeof(*r));
    r->method = "GET";
    r->container = container;
    r->blob = blob;
    int rc = bs_azcred_prepare(c, r, err, 200);
    curl_slist_free_all(r->headers);
    bs_azcred_destroy(c);
    return rc;
}

static void test_urls(void **state)
{
    (void)state;
    struct bs_azreq r;
    char err[200];
    assert_int_equal(prepare("data", "a b/c%.bin", &r, err), 0);
    assert_string_equal(r.url, "http://127.0.0.1:1/devstoreaccount1/data/a%20b/c%25.bin"
                               "?sv=2021-12-02&se=2030-01-01T00%3A00%3A00Z&sp=r&sig=a%2Bb");
    assert_string_equal(r.safe_url, "http://127.0.0.1:1/devstoreaccount1/data/a%20b/c%25.bin");
    /* A name cannot add to the query: '?', '#', '&' and '=' are encoded in the path. */
    assert_int_equal(prepare("data", "x?comp=tags#f&restype=container", &r, err), 0);
    assert_string_equal(r.safe_url, "http://127.0.0.1:1/devstoreaccount1/data/"
                                    "x%3Fcomp%3Dtags%23f%26restype%3Dcontainer");
    assert_int_equal(strchr(r.url, '?') - r.url, (long)strlen(r.safe_url));
    assert_int_equal(prepare("data", "a/../x", &r, err), -EINVAL);
    assert_non_null(strstr(err, "segment"));
    assert_int_equal(prepare("data", "", &r, err), -EINVAL);
    assert_int_equal(prepare("a--b", "x", &r, err), -EINVAL);
    assert_int_equal(prepare("../x", "x", &r, err), -EINVAL);
}

static void test_delegated_sas_refused(void **state)
{
    (void)state;
    struct bs_delegation d;
    char err[200] = "";
    memset(&d, 0, sizeof(d));
    d.kind = BS_AUTH_SAS;
    snprintf(d.endpoint, sizeof(d.endpoint), "http://127.0.0.1:1/devstoreaccount1");
    snprintf(d.account, sizeof(d.account), "devstoreaccount1");
    snprintf(d.secret, sizeof(d.secret), "se=2030-01-01&sig=SECRET&comp=tags");
    assert_null(bs_azcred_from_delegation(&d, err, sizeof(err)));
    assert_non_null(strstr(err, "comp"));
    assert_null(strstr(err, "SECRET"));
}

/* The process's own SAS goes to Azure exactly as the user gave it (as the streamer's own
 * Azure path sends it): a SAS Azure accepts must never make a shim read fail. */
static void test_own_sas_verbatim(void **state)
{
    (void)state;
    char err[200] = "";
    const char *own = "sv=2021-12-02&SE=2030-01-01&newfield=1&sp=r&sig=a+b";
    setenv("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1", 1);
    setenv("AZURE_STORAGE_SAS_TOKEN", own, 1);
    unsetenv("AZURE_STORAGE_CONNECTION_STRING");
    struct bs_azcred_opts o;
    memset(&o, 0, sizeof(o));
    o.endpoint_override = "http://127.0.0.1:1/{account}";
    struct bs_azcred *c = bs_azcred_from_env(&o, err, sizeof(err));
    assert_non_null(c);
    struct bs_azreq r;
    memset(&r, 0, sizeof(r));
    r.method = "GET";
    r.container = "data";
    r.blob = "x";
    assert_int_equal(bs_azcred_prepare(c, &r, err, sizeof(err)), 0);
    assert_string_equal(r.url, "http://127.0.0.1:1/devstoreaccount1/data/x?"
                               "sv=2021-12-02&SE=2030-01-01&newfield=1&sp=r&sig=a+b");
    curl_slist_free_all(r.headers);
    /* An agent would refuse it (unknown field, upper-case name): it is not delegated. */
    struct bs_delegation d;
    assert_int_equal(
        bs_azcred_delegate(c, "devstoreaccount1", "data", "x", 600, &d, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "cannot be delegated"));
    assert_null(strstr(err, "sig="));
    bs_azcred_destroy(c);
    unsetenv("AZURE_STORAGE_SAS_TOKEN");

    /* The same SAS from a connection string: also not delegated. */
    setenv("AZURE_STORAGE_CONNECTION_STRING",
           "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;"
           "SharedAccessSignature=sv=2021-12-02&SE=2030-01-01&newfield=1&sp=r&sig=a+b",
           1);
    c = bs_azcred_from_env(&o, err, sizeof(err));
    assert_non_null(c);
    assert_int_equal(
        bs_azcred_delegate(c, "devstoreaccount1", "data", "x", 600, &d, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "cannot be delegated"));
    bs_azcred_destroy(c);

    /* A valid SAS at an endpoint the agent would refuse as not canonical: not delegated. */
    o.endpoint_override = NULL; /* the connection string's BlobEndpoint, as written */
    setenv("AZURE_STORAGE_CONNECTION_STRING",
           "BlobEndpoint=http://127.0.0.1:01/devstoreaccount1;"
           "SharedAccessSignature=sv=2021-12-02&se=2030-01-01&sp=r&sig=ab",
           1);
    c = bs_azcred_from_env(&o, err, sizeof(err));
    assert_non_null(c);
    assert_int_equal(
        bs_azcred_delegate(c, "devstoreaccount1", "data", "x", 600, &d, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "canonical"));
    bs_azcred_destroy(c);
    unsetenv("AZURE_STORAGE_CONNECTION_STRING");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_delegated_sas_refused),
        cmocka_unit_test(test_own_sas_verbatim),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
