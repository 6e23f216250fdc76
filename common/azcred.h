/* Which identity reads Azure, resolved once from the environment with the precedence of the
 * model streamer's own Azure path: AZURE_STORAGE_CONNECTION_STRING; else with an account
 * name: AZURE_STORAGE_SAS_TOKEN, AZURE_STORAGE_ACCOUNT_KEY, the default credential chain
 * (token.h); else anonymous. Turns a blob request into a URL plus headers (version, date,
 * range, If-Match, authorization). It does not send requests. */
#ifndef BS_AZCRED_H
#define BS_AZCRED_H

#include <stddef.h>
#include <stdint.h>

#include "token.h"

#define BS_AZ_API_VERSION "2021-12-02"
#define BS_URL_MAX        4096

enum bs_auth_kind { BS_AUTH_SHARED_KEY, BS_AUTH_SAS, BS_AUTH_BEARER, BS_AUTH_ANONYMOUS };

struct bs_azcred;
struct curl_slist;

struct bs_azcred_opts {
    const char *endpoint_override; /* BLOBSWARM_BLOB_ENDPOINT: base URL, "{account}" replaced */
    struct bs_token_opts token;
};

/* Resolves the credential. Returns NULL with a message in err on a malformed configuration
 * (bad connection string, key not base64, ...). Caller owns the result. */
struct bs_azcred *bs_azcred_from_env(const struct bs_azcred_opts *opts, char *err, size_t errsz);
void bs_azcred_destroy(struct bs_azcred *c);
enum bs_auth_kind bs_azcred_kind(const struct bs_azcred *c);
/* e.g. "shared key (AZURE_STORAGE_CONNECTION_STRING)"; never contains a secret. */
const char *bs_azcred_describe(const struct bs_azcred *c);

struct bs_azreq {
    const char *method; /* "GET" or "HEAD" */
    const char *account, *container, *blob;
    const char *if_match;            /* ETag with quotes, or NULL */
    uint64_t range_start, range_len; /* range_len 0: no range */
    /* out */
    char url[BS_URL_MAX];
    char safe_url[BS_URL_MAX];  /* url without query (no SAS), for messages */
    struct curl_slist *headers; /* caller frees with curl_slist_free_all */
};

/* Fills url and headers. Validates account ([a-z0-9]{3,24}) and container names so that a
 * request can only go to the configured endpoint. Returns 0, -EINVAL (bad name), -EACCES
 * (token fetch failed), -ENOMEM. */
int bs_azcred_prepare(struct bs_azcred *c, struct bs_azreq *r, char *err, size_t errsz);

/* Read access to one blob handed to the node agent: what it needs to read that blob on the
 * caller's behalf and nothing more. Shared Key never leaves the process: it is turned into a
 * read-only SAS for the one blob, minted per window of `ttl_s` seconds and valid for at least
 * one more window. A bearer identity never hands over its token: it mints a user-delegation
 * SAS for the one blob the same way (udkey.h). A user's own SAS passes as it is (it cannot be
 * narrowed without a key). */
#define BS_SECRET_MAX 16384
struct bs_delegation {
    enum bs_auth_kind kind; /* BS_AUTH_SAS, BS_AUTH_BEARER or BS_AUTH_ANONYMOUS */
    char endpoint[1024];    /* base URL, e.g. https://acct.blob.core.windows.net */
    char account[32];
    char secret[BS_SECRET_MAX]; /* SAS query (no '?') or bearer token; empty if anonymous */
};

/* Fills d for reading container/blob. Returns 0 or a negative code with a message. */
int bs_azcred_delegate(struct bs_azcred *c, const char *account, const char *container,
                       const char *blob, long ttl_s, struct bs_delegation *d, char *err,
                       size_t errsz);
/* The agent's side: a credential that reads with exactly what was delegated, at d->endpoint.
 * The caller must have checked d->endpoint against its allow-list. */
struct bs_azcred *bs_azcred_from_delegation(const struct bs_delegation *d, char *err, size_t errsz);

/* Drops a cached token after a 401/403 so the next request fetches a fresh one. */
void bs_azcred_invalidate(struct bs_azcred *c);

#endif
