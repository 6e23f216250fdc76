/* OAuth tokens for Azure Storage from the default credential chain, as the Azure SDKs'
 * DefaultAzureCredential finds them: client secret (AZURE_TENANT_ID, AZURE_CLIENT_ID,
 * AZURE_CLIENT_SECRET), workload identity (AZURE_FEDERATED_TOKEN_FILE, re-read at every
 * refresh), managed identity (App Service IDENTITY_ENDPOINT/IDENTITY_HEADER, else IMDS).
 * Tokens are cached per source and refreshed before expiry, one fetch at a time.
 * It does not implement certificate, username/password or Azure CLI credentials. */
#ifndef BS_TOKEN_H
#define BS_TOKEN_H

#include <stddef.h>
#include <time.h>

#define BS_STORAGE_SCOPE    "https://storage.azure.com/.default"
#define BS_STORAGE_RESOURCE "https://storage.azure.com/"

enum bs_token_kind {
    BS_TOKEN_CLIENT_SECRET,
    BS_TOKEN_WORKLOAD_IDENTITY,
    BS_TOKEN_APP_SERVICE,
    BS_TOKEN_IMDS,
};

struct bs_token_source;

struct bs_token_opts {
    const char *ca_bundle;   /* extra CA file for HTTPS token endpoints, or NULL */
    long connect_timeout_ms; /* per token request */
    long total_timeout_ms;
};

/* Picks the first source of the chain that the environment configures. Returns NULL and
 * sets *found=0 when none is (IMDS is returned only as `probe_imds` allows). Caller owns the
 * result (bs_token_source_destroy). */
struct bs_token_source *bs_token_source_from_env(const struct bs_token_opts *opts, int probe_imds,
                                                 char *err, size_t errsz);
void bs_token_source_destroy(struct bs_token_source *s);
enum bs_token_kind bs_token_source_kind(const struct bs_token_source *s);
/* Human name of the source, e.g. "workload identity (AZURE_FEDERATED_TOKEN_FILE)". */
const char *bs_token_source_name(const struct bs_token_source *s);

/* Copies a valid access token into out. Fetches or refreshes when fewer than
 * min(5 minutes, half its lifetime) remain. Returns 0, -EHOSTUNREACH (endpoint unreachable),
 * -ENOENT (IMDS: no such identity), -EIO (the endpoint failed otherwise), -ENOSPC (out too
 * small); err says why without secrets. Thread-safe. */
int bs_token_get(struct bs_token_source *s, char *out, size_t outsz, char *err, size_t errsz);

/* Forgets the cached token (after the service rejected it). */
void bs_token_source_invalidate(struct bs_token_source *s);

/* Parses a token endpoint response: access_token plus expires_on (epoch seconds) or
 * expires_in (seconds from `now`), each a JSON number or a string of digits.
 * On success *token is malloc'd (caller frees). Returns 0 or -EINVAL. */
int bs_token_parse_json(const char *json, size_t len, time_t now, char **token, time_t *expires_on,
                        char *err, size_t errsz);

#endif
