/* Azure Storage connection strings: parses "Key=Value;..." into an account, a secret (account
 * key or SAS) and the blob endpoint the string implies. It does not sign or send anything. */
#ifndef BS_CONNSTR_H
#define BS_CONNSTR_H

#include <stddef.h>

/* The well-known Azurite / storage-emulator account (public, documented by Microsoft). */
#define BS_DEVSTORE_ACCOUNT "devstoreaccount1"
#define BS_DEVSTORE_KEY                                                                            \
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

struct bs_connstr {
    char *account;       /* AccountName; else the account the BlobEndpoint names (its first
                            path segment when path-style, else its host's first label); or NULL */
    char *account_key;   /* AccountKey (base64), or NULL */
    char *sas;           /* SharedAccessSignature without leading '?', or NULL */
    char *blob_endpoint; /* base URL without trailing '/', always set on success */
};

/* Parses `s`. On success returns 0 and the caller owns `out` (free with bs_connstr_cleanup).
 * On failure returns -EINVAL, leaves `out` empty, and writes a message that never quotes a
 * secret into `err`. */
int bs_connstr_parse(const char *s, struct bs_connstr *out, char *err, size_t errsz);
void bs_connstr_cleanup(struct bs_connstr *cs);

#endif
