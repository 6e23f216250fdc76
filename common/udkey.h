/* User delegation SAS for bearer (Entra ID) identities: fetches a user delegation key with the
 * identity's token (POST ?restype=service&comp=userdelegationkey), keeps it until shortly
 * before it expires (one fetch in flight at a time; a failure is shared by the callers waiting
 * for it and not retried for a jittered backoff), and signs read-only SAS for one blob with it.
 * So the node agent receives read access to one blob for minutes, never the identity's token.
 * It does not get tokens (azcred.c does) and sends nothing but the key request. */
#ifndef BS_UDKEY_H
#define BS_UDKEY_H

#include <stddef.h>
#include <time.h>

#include "token.h" /* struct bs_token_opts */

struct bs_udkey_cache;

/* HTTPS settings of the key request come from opts (CA bundle, time limits). NULL on
 * allocation failure. */
struct bs_udkey_cache *bs_udkey_cache_create(const struct bs_token_opts *opts);
void bs_udkey_cache_destroy(struct bs_udkey_cache *k);

/* Writes into out a SAS query (no '?') reading exactly container/blob of `account` (sr=b,
 * sp=r), valid from window_start - 5 min to window_start + 2 * window_s, signed with a user
 * delegation key of the identity that `token` (a bearer token for Storage) belongs to, fetched
 * from base_url (the account's blob endpoint) when none is cached that outlives the SAS.
 * token may be NULL when a key is cached: the function then returns -EAGAIN if it would need
 * one. Returns 0, -EAGAIN, -EACCES (the service refused the key request), -EIO, -ENOSPC,
 * -ETIMEDOUT (the fetch in progress did not finish in time); err says why, without secrets. */
int bs_udkey_blob_sas(struct bs_udkey_cache *k, const char *base_url, const char *account,
                      const char *container, const char *blob, const char *token,
                      time_t window_start, long window_s, char *out, size_t outsz, char *err,
                      size_t errsz);

/* Parses a Get User Delegation Key response body into its fields (each a NUL-terminated string
 * of the sizes given in udkey.c). Exposed for tests and the fuzzer. 0 or -EINVAL. */
struct bs_udkey {
    char oid[64], tid[64], start[32], expiry[32], service[8], version[16], value[128];
};
int bs_udkey_parse(const char *xml, size_t len, struct bs_udkey *out);

/* Signs with key a SAS reading container/blob of account (sr=b, sp=r, spr=https,http) valid
 * [start, expiry], into out as a query without '?'. 0, -EINVAL (bad key), -ENOSPC, -ENOMEM. */
int bs_udkey_sign(const struct bs_udkey *key, const char *account, const char *container,
                  const char *blob, time_t start, time_t expiry, char *out, size_t outsz);

#endif
