/* Azure Storage Shared Key authorization: builds the string-to-sign of a blob-service request
 * (version 2015-02-21 and later rules) and signs it with HMAC-SHA256 of the account key.
 * Also the URL path encoding of blob names that the signature covers. Sends nothing. */
#ifndef BS_SHAREDKEY_H
#define BS_SHAREDKEY_H

#include <stddef.h>
#include <time.h>

#define BS_SAS_VERSION "2021-12-02"

struct bs_sk_request {
    const char *method;            /* "GET", "HEAD", ... */
    const char *url_path;          /* encoded path as sent, starting with '/' */
    const char *query;             /* raw query without '?', or NULL */
    const char *content_length;    /* NULL or "0" sign as empty */
    const char *content_type;      /* or NULL */
    const char *if_match;          /* or NULL */
    const char *range;             /* standard Range header value, or NULL */
    const char *const *ms_headers; /* "x-ms-name:value" strings, any order and case of name */
    size_t n_ms_headers;
};

/* Writes the string-to-sign for `account` into `out`. Returns its length, or -ENOSPC /
 * -EINVAL (more than 32 x-ms headers or query parameters, malformed header). */
int bs_sharedkey_string_to_sign(const char *account, const struct bs_sk_request *r, char *out,
                                size_t outsz);

/* HMAC-SHA256(base64-decoded key_b64, msg), base64 into out (at least 45 bytes).
 * Returns 0, or -EINVAL when the key is not valid base64. */
int bs_sharedkey_sign(const char *key_b64, const char *msg, char *out, size_t outsz);

/* Percent-encodes a blob name for a URL path: keeps unreserved characters and '/', encodes
 * everything else byte by byte (UTF-8 stays UTF-8). Returns the length, or -ENOSPC. */
int bs_url_encode_path(const char *in, char *out, size_t outsz);

/* Percent-encodes a form/query value (also encodes '/'). Returns the length, or -ENOSPC. */
int bs_url_encode_component(const char *in, char *out, size_t outsz);

/* Mints a read-only service SAS for one blob (sr=b, sp=r), valid from now-5min to
 * now+ttl_s, as a query string without '?'. Lets a holder of the account key hand another
 * party access to exactly one blob for minutes. Returns 0, -EINVAL (bad key), -ENOSPC. */
int bs_sharedkey_blob_sas(const char *account, const char *key_b64, const char *container,
                          const char *blob, time_t now, long ttl_s, char *out, size_t outsz);

#endif
