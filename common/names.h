/* The one rule for Azure storage names on both sides of the agent (shim and agent): which
 * account, container and blob names a request may carry. A name that passes is sent exactly
 * as it is (percent-encoded, never normalised) and keyed exactly as it is, so one blob has
 * one URL and one cache key. It does not build URLs (see azcred.h). */
#ifndef BS_NAMES_H
#define BS_NAMES_H

#include <stddef.h>

#define BS_NAME_BLOB_MAX 1024 /* bytes, Azure's limit */

/* Storage account: 3-24 of [a-z0-9]. */
int bs_name_account_ok(const char *s);
/* Container: $root, $web, $logs, or 3-63 of [a-z0-9-] starting and ending with a letter or
 * digit, no "--" (Azure's rule). */
int bs_name_container_ok(const char *s);
/* Blob: 1-BS_NAME_BLOB_MAX bytes, no control character (0x00-0x1f, 0x7f), no backslash, and
 * no "." or ".." path segment (HTTP stacks resolve those: "a/../x" would read "x"). Returns
 * NULL when valid, else a short reason (static string, no name in it). */
const char *bs_name_blob_problem(const char *s);

/* 1 if a blob endpoint is spelled the one way the agent accepts: lower-case http or https, a
 * lower-case host of [a-z0-9.-] not ending in '.', a port only when not the scheme's default
 * and without leading zeros, then nothing or a path. The endpoint keys chunks, grants and
 * tenants, so "host:0443" or "HOST" must not make another copy or share of one origin. */
int bs_name_endpoint_canonical(const char *endpoint);

/* Writes s for a log line or a message into out (always NUL-terminated when outsz > 0):
 * printable ASCII except '"' and '\\' as is, every other byte as \xNN, cut with "..." when
 * it does not fit. A name logged this way cannot forge a line or a key=value pair. */
void bs_name_escape(const char *s, char *out, size_t outsz);

#endif
