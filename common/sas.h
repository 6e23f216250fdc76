/* Shared access signature (SAS) query strings, read as Azure reads them: field names and
 * values percent-decoded, then checked against the fields a SAS may carry. A SAS that adds
 * anything else (comp=, restype=, snapshot=, versionid=, the response-header overrides rscc/
 * rscd/rsce/rscl/rsct, an unknown or duplicated field, an empty name, '?', '#', a bare '+')
 * is refused: appended to a blob URL it would change the operation or the answer. A valid
 * SAS is re-encoded canonically, so what is sent is exactly what was checked. It does not
 * verify signatures (only Azure can). */
#ifndef BS_SAS_H
#define BS_SAS_H

#include <stddef.h>
#include <stdint.h>

struct bs_sas_info {
    int64_t expiry; /* se as Unix seconds; 0 when there is no se (then has_si is set) */
    int has_si;     /* a stored access policy (si=) whose expiry Azure keeps */
};

/* Parses the SAS query `sas` (no leading '?'). On success writes its canonical encoding
 * into out (NUL-terminated; pass outsz 0 to skip) and, when info is not NULL, its expiry,
 * and returns 0. A SAS must have sig and either a parseable se or an si. Returns -EINVAL
 * with a reason in err (no secret in it) or -ENOSPC when out is too small. */
int bs_sas_parse(const char *sas, char *out, size_t outsz, struct bs_sas_info *info, char *err,
                 size_t errsz);

/* An ISO 8601 UTC time as Azure accepts it in se/st: YYYY-MM-DD, YYYY-MM-DDThh:mmZ,
 * YYYY-MM-DDThh:mm:ssZ or YYYY-MM-DDThh:mm:ss.fffffffZ. 0 and *out, or -EINVAL. */
int bs_sas_time(const char *s, int64_t *out);

#endif
