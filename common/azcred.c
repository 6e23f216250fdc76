/* Credential resolution and request preparation (see azcred.h). Secrets stay inside this
 * module: descriptions, errors and safe_url never contain a key, a SAS or a token. */
#include "azcred.h"

#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "connstr.h"
#include "log.h"
#include "names.h"
#include "sas.h"
#include "sharedkey.h"
#include "udkey.h"

#define TOKEN_MAX 16384

struct bs_azcred {
    /* kind changes once at most (an unconfigured process whose IMDS guess failed becomes
     * anonymous) while other threads read it: atomic. desc is written only before the
     * credential is shared; the fallback's description is a constant (anon_fallback). */
    _Atomic enum bs_auth_kind kind;
    atomic_int anon_fallback;
    char desc[160];
    char *endpoint;        /* base URL template ("{account}" replaced), or NULL */
    char suffix[256];      /* host suffix when there is no endpoint */
    char *fixed_account;   /* from the connection string: overrides the caller's account */
    char *env_account;     /* AZURE_STORAGE_ACCOUNT_NAME */
    char *key;             /* base64 account key */
    char *sas;             /* SAS query without '?' */
    char sas_problem[160]; /* why an agent would refuse this SAS (common/sas.c), or "" */
    struct bs_token_source *tok;
    char *static_token; /* a delegated bearer token */
    int imds_guess;     /* tok is the IMDS guess of an unconfigured process */
    int imds_settled;
    struct bs_udkey_cache *udk; /* bearer: user delegation keys for the agent's SAS */
    pthread_mutex_t lock;
};

/* Checked once, whatever the SAS came from: an agent takes only SAS fields it knows
 * (common/sas.c). A SAS it would refuse is still ours to use with Azure, but is not delegated
 * (no agent round trip and refusal per chunk). */
static void note_sas_problem(struct bs_azcred *c)
{
    if (c->kind == BS_AUTH_SAS && c->sas &&
        bs_sas_parse(c->sas, NULL, 0, NULL, c->sas_problem, sizeof(c->sas_problem)) == 0)
        c->sas_problem[0] = '\0';
}

#define ANON_FALLBACK_DESC "anonymous (no credential configured)"

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

enum bs_auth_kind bs_azcred_kind(const struct bs_azcred *c)
{
    return atomic_load(&c->kind);
}

const char *bs_azcred_describe(const struct bs_azcred *c)
{
    return atomic_load(&c->anon_fallback) ? ANON_FALLBACK_DESC : c->desc;
}

void bs_azcred_destroy(struct bs_azcred *c)
{
    if (!c)
        return;
    if (c->key)
        memset(c->key, 0, strlen(c->key));
    if (c->sas)
        memset(c->sas, 0, strlen(c->sas));
    free(c->key);
    free(c->sas);
    free(c->endpoint);
    free(c->fixed_account);
    free(c->env_account);
    if (c->static_token) {
        memset(c->static_token, 0, strlen(c->static_token));
        free(c->static_token);
    }
    bs_token_source_destroy(c->tok);
    bs_udkey_cache_destroy(c->udk);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static int key_is_valid(const char *key)
{
    char sig[64];
    return bs_sharedkey_sign(key, "", sig, sizeof(sig)) == 0;
}

struct bs_azcred *bs_azcred_from_env(const struct bs_azcred_opts *opts, char *err, size_t errsz)
{
    struct bs_azcred *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    const char *sfx = getenv("AZURE_STORAGE_ENDPOINT_SUFFIX");
    snprintf(c->suffix, sizeof(c->suffix), "%s", sfx && *sfx ? sfx : "blob.core.windows.net");
    if (opts && opts->endpoint_override && *opts->endpoint_override)
        c->endpoint = strdup(opts->endpoint_override);

    const char *cs = getenv("AZURE_STORAGE_CONNECTION_STRING");
    if (cs && *cs) {
        struct bs_connstr parsed;
        char perr[200];
        if (bs_connstr_parse(cs, &parsed, perr, sizeof(perr)) != 0) {
            snprintf(err, errsz, "AZURE_STORAGE_CONNECTION_STRING: %s", perr);
            goto out_fail;
        }
        if (!c->endpoint) {
            c->endpoint = parsed.blob_endpoint;
            parsed.blob_endpoint = NULL;
        }
        c->fixed_account = parsed.account;
        parsed.account = NULL;
        if (parsed.account_key) {
            c->kind = BS_AUTH_SHARED_KEY;
            c->key = parsed.account_key;
            parsed.account_key = NULL;
            snprintf(c->desc, sizeof(c->desc), "shared key (AZURE_STORAGE_CONNECTION_STRING)");
        } else if (parsed.sas) {
            c->kind = BS_AUTH_SAS;
            c->sas = parsed.sas;
            parsed.sas = NULL;
            snprintf(c->desc, sizeof(c->desc), "SAS (AZURE_STORAGE_CONNECTION_STRING)");
        } else {
            c->kind = BS_AUTH_ANONYMOUS;
            snprintf(c->desc, sizeof(c->desc), "anonymous (AZURE_STORAGE_CONNECTION_STRING)");
        }
        bs_connstr_cleanup(&parsed);
        if (c->kind == BS_AUTH_SHARED_KEY && !key_is_valid(c->key)) {
            snprintf(err, errsz, "AZURE_STORAGE_CONNECTION_STRING: AccountKey is not valid base64");
            goto out_fail;
        }
        note_sas_problem(c);
        return c;
    }

    c->env_account = dup_or_null(getenv("AZURE_STORAGE_ACCOUNT_NAME"));
    const char *sas = getenv("AZURE_STORAGE_SAS_TOKEN");
    const char *key = getenv("AZURE_STORAGE_ACCOUNT_KEY");
    if (sas && *sas) {
        c->kind = BS_AUTH_SAS;
        c->sas = strdup(sas[0] == '?' ? sas + 1 : sas);
        snprintf(c->desc, sizeof(c->desc), "SAS (AZURE_STORAGE_SAS_TOKEN)");
    } else if (key && *key) {
        c->kind = BS_AUTH_SHARED_KEY;
        c->key = strdup(key);
        snprintf(c->desc, sizeof(c->desc), "shared key (AZURE_STORAGE_ACCOUNT_KEY)");
        if (c->key && !key_is_valid(c->key)) {
            snprintf(err, errsz, "AZURE_STORAGE_ACCOUNT_KEY is not valid base64");
            goto out_fail;
        }
    } else {
        char terr[200] = "";
        c->tok = bs_token_source_from_env(opts ? &opts->token : NULL, 1, terr, sizeof(terr));
        if (!c->tok) {
            snprintf(err, errsz, "credential chain: %s", terr[0] ? terr : "no source");
            goto out_fail;
        }
        c->kind = BS_AUTH_BEARER;
        c->imds_guess = bs_token_source_kind(c->tok) == BS_TOKEN_IMDS;
        c->udk = bs_udkey_cache_create(opts ? &opts->token : NULL);
        if (!c->udk) {
            snprintf(err, errsz, "out of memory");
            goto out_fail;
        }
        snprintf(c->desc, sizeof(c->desc), "bearer token from %s", bs_token_source_name(c->tok));
    }
    if ((c->kind == BS_AUTH_SAS && !c->sas) || (c->kind == BS_AUTH_SHARED_KEY && !c->key)) {
        snprintf(err, errsz, "out of memory");
        goto out_fail;
    }
    note_sas_problem(c);
    return c;

out_fail:
    bs_azcred_destroy(c);
    return NULL;
}

void bs_azcred_invalidate(struct bs_azcred *c)
{
    if (c->kind == BS_AUTH_BEARER && c->tok)
        bs_token_source_invalidate(c->tok);
}

/* The one name rule (names.h), shared with the agent. */
static int valid_account(const char *a)
{
    return bs_name_account_ok(a);
}

static int valid_container(const char *s)
{
    return bs_name_container_ok(s);
}

static void http_date(char *out, size_t outsz)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    snprintf(out, outsz, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* Builds "<endpoint>" for the account into out; returns 0 or -ENOSPC. */
static int base_url(const struct bs_azcred *c, const char *account, char *out, size_t outsz)
{
    int n;
    if (c->endpoint) {
        const char *ph = strstr(c->endpoint, "{account}");
        if (ph)
            n = snprintf(out, outsz, "%.*s%s%s", (int)(ph - c->endpoint), c->endpoint, account,
                         ph + 9);
        else
            n = snprintf(out, outsz, "%s", c->endpoint);
        size_t len = strlen(out);
        while (len && out[len - 1] == '/')
            out[--len] = '\0';
    } else {
        n = snprintf(out, outsz, "https://%s.%s", account, c->suffix);
    }
    return n < 0 || (size_t)n >= outsz ? -ENOSPC : 0;
}

static int add_header(struct curl_slist **list, const char *name, const char *value)
{
    if (strpbrk(value, "\r\n"))
        return -EINVAL; /* never let a value start another header or request */
    char line[TOKEN_MAX + 64];
    snprintf(line, sizeof(line), "%s: %s", name, value);
    struct curl_slist *n = curl_slist_append(*list, line);
    if (!n)
        return -ENOMEM;
    *list = n;
    return 0;
}

/* Returns the token into tok, or falls back to anonymous for an unconfigured process whose
 * managed-identity guess failed. Returns 0 (tok may be empty: anonymous) or -EACCES. */
static int bearer_token(struct bs_azcred *c, char *tok, size_t toksz, char *err, size_t errsz)
{
    tok[0] = '\0';
    if (atomic_load(&c->kind) == BS_AUTH_ANONYMOUS)
        return 0;
    if (c->static_token) {
        size_t n = strlen(c->static_token);
        if (n >= toksz)
            return -EACCES;
        memcpy(tok, c->static_token, n + 1);
        return 0;
    }
    char terr[300];
    int rc = bs_token_get(c->tok, tok, toksz, terr, sizeof(terr));
    pthread_mutex_lock(&c->lock);
    if (rc == 0) {
        c->imds_settled = 1;
    } else if (c->imds_guess && !c->imds_settled && (rc == -EHOSTUNREACH || rc == -ENOENT)) {
        /* No IMDS, or no identity: anonymous for good. A failing IMDS (429, 5xx) is not
         * proof of absence: the read fails and the next one asks again. */
        atomic_store(&c->anon_fallback, 1);
        atomic_store(&c->kind, BS_AUTH_ANONYMOUS);
        bs_log(BS_LOG_INFO, "azcred", "event=anonymous reason=\"%s\"", terr);
        tok[0] = '\0';
        rc = 0;
    }
    pthread_mutex_unlock(&c->lock);
    if (rc) {
        snprintf(err, errsz, "%s", terr);
        return -EACCES;
    }
    return 0;
}

/* The account a request goes to: the connection string's, else the caller's, else the
 * environment's. NULL with a message when there is none or it is not a valid name. */
static const char *resolve_account(const struct bs_azcred *c, const char *requested, char *err,
                                   size_t errsz)
{
    const char *account = c->fixed_account          ? c->fixed_account
                          : requested && *requested ? requested
                                                    : c->env_account;
    if (!account || !*account) {
        snprintf(err, errsz, "no storage account: pass one or set AZURE_STORAGE_ACCOUNT_NAME");
        return NULL;
    }
    if (!valid_account(account)) {
        char esc[72];
        bs_name_escape(account, esc, sizeof(esc));
        snprintf(err, errsz, "invalid storage account name \"%s\"", esc);
        return NULL;
    }
    return account;
}

int bs_azcred_prepare(struct bs_azcred *c, struct bs_azreq *r, char *err, size_t errsz)
{
    r->headers = NULL;
    r->url[0] = r->safe_url[0] = '\0';
    const char *account = resolve_account(c, r->account, err, errsz);
    if (!account)
        return -EINVAL;
    if (!r->container || !valid_container(r->container)) {
        char esc[80];
        bs_name_escape(r->container, esc, sizeof(esc));
        snprintf(err, errsz, "invalid container name \"%s\"", esc);
        return -EINVAL;
    }
    const char *bad = bs_name_blob_problem(r->blob);
    if (bad) {
        snprintf(err, errsz, "invalid blob name: %s", bad);
        return -EINVAL;
    }
    char base[1024], path[3 * 1024 + 80];
    if (base_url(c, account, base, sizeof(base)) != 0) {
        snprintf(err, errsz, "blob endpoint URL too long");
        return -EINVAL;
    }
    int plen = snprintf(path, sizeof(path), "/%s/", r->container);
    if (bs_url_encode_path(r->blob, path + plen, sizeof(path) - (size_t)plen) < 0) {
        snprintf(err, errsz, "blob name too long");
        return -EINVAL;
    }
    int n = snprintf(r->safe_url, sizeof(r->safe_url), "%s%s", base, path);
    if (n < 0 || (size_t)n >= sizeof(r->safe_url)) {
        snprintf(err, errsz, "blob URL too long");
        return -EINVAL;
    }
    enum bs_auth_kind kind = c->kind;
    if (kind == BS_AUTH_SAS) {
        /* A delegated SAS was rebuilt from its checked fields when the agent took it
         * (bs_azcred_from_delegation). The process's own SAS goes to Azure as the user gave
         * it, as the streamer's own Azure path sends it: refusing a SAS that Azure accepts
         * would fail a load that a direct read completes. */
        n = snprintf(r->url, sizeof(r->url), "%s?%s", r->safe_url, c->sas);
    } else {
        n = snprintf(r->url, sizeof(r->url), "%s", r->safe_url);
    }
    if (n < 0 || (size_t)n >= sizeof(r->url)) {
        snprintf(err, errsz, "blob URL with SAS too long");
        return -EINVAL;
    }

    int rc = -ENOMEM;
    char date[64], range[80] = "";
    http_date(date, sizeof(date));
    if (r->range_len)
        snprintf(range, sizeof(range), "bytes=%llu-%llu", (unsigned long long)r->range_start,
                 (unsigned long long)(r->range_start + r->range_len - 1));
    if (add_header(&r->headers, "x-ms-version", BS_AZ_API_VERSION) ||
        add_header(&r->headers, "x-ms-date", date) ||
        (range[0] && add_header(&r->headers, "x-ms-range", range)) ||
        (r->if_match && add_header(&r->headers, "If-Match", r->if_match)))
        goto out_free;
    /* A HEAD or GET has no body: suppress curl's defaults that would change the signature. */
    if (add_header(&r->headers, "Accept", "") != 0)
        goto out_free;

    if (kind == BS_AUTH_SHARED_KEY) {
        /* The signed path is the URL's path: it includes the account for path-style
         * (emulator) endpoints, as the service canonicalizes it. */
        const char *scheme_end = strstr(r->safe_url, "://");
        const char *url_path = scheme_end ? strchr(scheme_end + 3, '/') : NULL;
        char h_ver[64], h_date[96], h_range[100];
        snprintf(h_ver, sizeof(h_ver), "x-ms-version:%s", BS_AZ_API_VERSION);
        snprintf(h_date, sizeof(h_date), "x-ms-date:%s", date);
        snprintf(h_range, sizeof(h_range), "x-ms-range:%s", range);
        const char *ms[3] = {h_ver, h_date, h_range};
        struct bs_sk_request sk = {
            .method = r->method,
            .url_path = url_path ? url_path : "/",
            .if_match = r->if_match,
            .ms_headers = ms,
            .n_ms_headers = range[0] ? 3 : 2,
        };
        char sts[4096 + 512], sig[64], auth[200];
        if (bs_sharedkey_string_to_sign(account, &sk, sts, sizeof(sts)) < 0 ||
            bs_sharedkey_sign(c->key, sts, sig, sizeof(sig)) != 0) {
            snprintf(err, errsz, "cannot sign the request with the account key");
            rc = -EINVAL;
            goto out_free;
        }
        snprintf(auth, sizeof(auth), "SharedKey %s:%s", account, sig);
        if (add_header(&r->headers, "Authorization", auth))
            goto out_free;
    } else if (kind == BS_AUTH_BEARER) {
        char *tok = malloc(TOKEN_MAX);
        if (!tok)
            goto out_free;
        rc = bearer_token(c, tok, TOKEN_MAX, err, errsz);
        if (rc == 0 && tok[0]) {
            char *auth = malloc(TOKEN_MAX + 16);
            rc = -ENOMEM;
            if (auth) {
                snprintf(auth, TOKEN_MAX + 16, "Bearer %s", tok);
                rc = add_header(&r->headers, "Authorization", auth);
                memset(auth, 0, TOKEN_MAX + 16);
                free(auth);
            }
        }
        memset(tok, 0, TOKEN_MAX);
        free(tok);
        if (rc)
            goto out_free;
    }
    return 0;

out_free:
    if (rc == -ENOMEM)
        snprintf(err, errsz, "out of memory");
    curl_slist_free_all(r->headers);
    r->headers = NULL;
    return rc;
}

int bs_azcred_delegate(struct bs_azcred *c, const char *account, const char *container,
                       const char *blob, long ttl_s, struct bs_delegation *d, char *err,
                       size_t errsz)
{
    memset(d, 0, offsetof(struct bs_delegation, secret) + 1);
    const char *acct = resolve_account(c, account, err, errsz);
    if (!acct)
        return -EINVAL;
    if (!container || !valid_container(container) || !blob || !*blob) {
        snprintf(err, errsz, "invalid container or blob name");
        return -EINVAL;
    }
    snprintf(d->account, sizeof(d->account), "%s", acct);
    if (base_url(c, acct, d->endpoint, sizeof(d->endpoint)) != 0) {
        snprintf(err, errsz, "blob endpoint URL too long");
        return -EINVAL;
    }
    /* The agent takes an endpoint spelled one way only (it keys chunks and tenants): one it
     * would refuse is read from Azure directly instead of costing a refusal per chunk. */
    if (!bs_name_endpoint_canonical(d->endpoint)) {
        snprintf(err, errsz,
                 "the blob endpoint is not delegated: not in canonical form (lower case, no "
                 "default port, no trailing dot)");
        return -EINVAL;
    }
    enum bs_auth_kind kind = atomic_load(&c->kind);
    time_t w = ttl_s > 0 ? (time_t)ttl_s : 600, now = time(NULL);
    switch (kind) {
    case BS_AUTH_SHARED_KEY:
        d->kind = BS_AUTH_SAS;
        /* Minted for a fixed window, so every call (and every process) in the window hands
         * over the same SAS and the agent's grant for it keeps serving. */
        if (bs_sharedkey_blob_sas(acct, c->key, container, blob, now - now % w, 2 * w, d->secret,
                                  sizeof(d->secret)) != 0) {
            snprintf(err, errsz, "cannot mint a SAS with the account key");
            return -EINVAL;
        }
        return 0;
    case BS_AUTH_SAS:
        /* The user's own SAS cannot be narrowed without a key: it is handed over as it is,
         * and only to an agent whose socket owner was verified (or one named explicitly). */
        d->kind = BS_AUTH_SAS;
        if (c->sas_problem[0]) {
            snprintf(err, errsz, "the SAS cannot be delegated: %s", c->sas_problem);
            return -EINVAL;
        }
        if (strlen(c->sas) >= sizeof(d->secret)) {
            snprintf(err, errsz, "SAS token too long to delegate");
            return -EINVAL;
        }
        strcpy(d->secret, c->sas);
        return 0;
    case BS_AUTH_BEARER: {
        /* Never the token itself: a user-delegation SAS for the one blob (sr=b, sp=r), signed
         * with a user delegation key fetched with the token and kept until near its expiry,
         * minted per window like the Shared Key SAS. If no key can be had, nothing is
         * delegated and the read goes to Azure directly. */
        char *tok = malloc(TOKEN_MAX);
        if (!tok) {
            snprintf(err, errsz, "out of memory");
            return -ENOMEM;
        }
        int rc = bearer_token(c, tok, TOKEN_MAX, err, errsz);
        if (rc == 0 && !tok[0]) {
            d->kind = BS_AUTH_ANONYMOUS; /* the IMDS guess failed: anonymous for good */
        } else if (rc == 0) {
            d->kind = BS_AUTH_SAS;
            rc = bs_udkey_blob_sas(c->udk, d->endpoint, acct, container, blob, tok, now - now % w,
                                   (long)w, d->secret, sizeof(d->secret), err, errsz);
            if (rc) {
                d->kind = BS_AUTH_ANONYMOUS;
                d->secret[0] = '\0';
            }
        }
        memset(tok, 0, TOKEN_MAX);
        free(tok);
        return rc;
    }
    case BS_AUTH_ANONYMOUS:
        d->kind = BS_AUTH_ANONYMOUS;
        return 0;
    }
    return -EINVAL;
}

struct bs_azcred *bs_azcred_from_delegation(const struct bs_delegation *d, char *err, size_t errsz)
{
    struct bs_azcred *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->kind = d->kind;
    c->endpoint = strdup(d->endpoint);
    c->fixed_account = strdup(d->account);
    if (d->kind == BS_AUTH_SAS) {
        /* What the agent sends is the SAS's canonical encoding, rebuilt from the checked SAS
         * fields, never the caller's text: a field that is not part of a SAS (comp=,
         * snapshot=, ...) would change the operation. */
        char serr[160], canon[BS_SECRET_MAX];
        int qrc = bs_sas_parse(d->secret, canon, sizeof(canon), NULL, serr, sizeof(serr));
        if (qrc != 0) {
            snprintf(err, errsz, "delegated %s", qrc == -ENOSPC ? "SAS too long" : serr);
            goto out_fail;
        }
        c->sas = strdup(canon);
        snprintf(c->desc, sizeof(c->desc), "delegated SAS");
    } else if (d->kind == BS_AUTH_BEARER) {
        c->static_token = strdup(d->secret);
        snprintf(c->desc, sizeof(c->desc), "delegated bearer token");
    } else {
        c->kind = BS_AUTH_ANONYMOUS;
        snprintf(c->desc, sizeof(c->desc), "anonymous");
    }
    if (!c->endpoint || !c->fixed_account || (d->kind == BS_AUTH_SAS && !c->sas) ||
        (d->kind == BS_AUTH_BEARER && !c->static_token)) {
        snprintf(err, errsz, "out of memory");
        goto out_fail;
    }
    return c;

out_fail:
    bs_azcred_destroy(c);
    return NULL;
}
