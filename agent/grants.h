/* Who has shown read access to which blob version. A grant is recorded when a delegated
 * credential read the blob's properties from Azure; it names the version (ETag) and size the
 * credential saw, and lasts `ttl_ms` or until the SAS's own expiry (se=) if sooner. Keyed by
 * a SHA-256 of (credential, endpoint, account, container, blob), so a credential's grant is
 * never used for another credential or another blob. Bounded: at most max_entries grants.
 * It does not talk to Azure; the caller verifies and then records. */
#ifndef BS_GRANTS_H
#define BS_GRANTS_H

#include <stddef.h>
#include <stdint.h>

struct bs_grants;
struct bs_delegation;

struct bs_grant {
    char etag[128];
    uint64_t size;
};

struct bs_grants *bs_grants_create(size_t max_entries, long ttl_ms);
void bs_grants_destroy(struct bs_grants *g);

/* The grant id of a request (32 bytes). */
void bs_grants_key(const struct bs_delegation *d, const char *container, const char *blob,
                   unsigned char key[32]);

/* 0 and *out when a live grant exists, -ENOENT otherwise. */
int bs_grants_find(struct bs_grants *g, const unsigned char key[32], struct bs_grant *out);
/* Records (or replaces) a grant; expiry is min(now + ttl, SAS se= of d). */
void bs_grants_put(struct bs_grants *g, const unsigned char key[32], const struct bs_delegation *d,
                   const struct bs_grant *grant);
void bs_grants_forget(struct bs_grants *g, const unsigned char key[32]);

/* Parses the se= (signed expiry) of a SAS query as epoch seconds; 0 when absent/invalid. */
int64_t bs_sas_expiry(const char *sas);

#endif
