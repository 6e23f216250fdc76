/* Who has shown read access to which blob version. A grant is recorded when a delegated
 * credential read the blob's properties from Azure; it names the version (ETag) and size the
 * credential saw, and lasts `ttl_ms` or until the credential's own expiry if sooner (a SAS's
 * decoded se=, a bearer token's exp claim). Keyed by
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
/* Records (or replaces) a grant; it expires at min(now + ttl, cred_expiry_s) (Unix seconds;
 * 0: no expiry of its own). Nothing is recorded for an already expired credential. */
void bs_grants_put(struct bs_grants *g, const unsigned char key[32], int64_t cred_expiry_s,
                   const struct bs_grant *grant);
void bs_grants_forget(struct bs_grants *g, const unsigned char key[32]);

/* The expiry of a delegated credential as Azure reads it, in Unix seconds: a SAS's se=
 * (decoded, sas.h), a bearer token's "exp" claim (its JWT payload). *exp_s is 0 when it has
 * none we can see: anonymous, or a SAS bound only by a stored access policy (si=), whose
 * expiry Azure keeps: then the grant TTL bounds the grant. Returns 0, or -EINVAL with a
 * reason in err (no secret) for a SAS that is not valid or a token without a readable exp:
 * such a credential is refused, never trusted for the whole TTL. */
int bs_grants_cred_expiry(const struct bs_delegation *d, int64_t *exp_s, char *err, size_t errsz);

/* The "exp" claim of a JWT (header.payload.signature, base64url), signature not checked.
 * 0 and *exp_s, or -EINVAL. Exposed for tests. */
int bs_jwt_expiry(const char *token, int64_t *exp_s);

#endif
