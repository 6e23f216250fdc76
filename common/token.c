/* Token sources of the default credential chain (see token.h). Each source fetches with a
 * short-lived curl easy handle of its own, outside the read engine, because token requests
 * are rare and must not wait behind bulk transfers. */
#include "token.h"

#include <errno.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "clock.h"
#include "log.h"
#include "sharedkey.h"

#define MAX_RESPONSE  (64 * 1024)
#define MAX_ASSERTION (16 * 1024)
/* After the second and later consecutive failed fetches nobody fetches again for a jittered
 * [step/2, step], step = base << (failures - 2), at most max (docs/shim.md). */
#define TOKEN_RETRY_BASE_MS 500u
#define TOKEN_RETRY_MAX_MS  30000u
/* A token closer than this to its expiry is not handed out. */
#define TOKEN_MIN_LEFT_S 10

struct bs_token_source {
    enum bs_token_kind kind;
    char name[96];
    char url[2048]; /* token endpoint */
    char tenant[128];
    char client_id[128];
    char *client_secret; /* client secret flow only */
    char assertion_file[1024];
    char identity_header[512];
    struct bs_token_opts opts;

    /* Cache, under lock. One fetch at a time runs outside the lock (fetching); callers without
     * a valid token wait on `done` for its result; after a failure nobody fetches again before
     * retry_at (jittered backoff) and callers get the last error at once. */
    pthread_mutex_t lock;
    pthread_cond_t done;
    char *token;
    time_t expires_on;
    time_t fetched_at;
    int fetching;
    uint64_t generation; /* completed fetches */
    int last_rc;         /* of the last completed fetch */
    char last_err[1536];
    int failures; /* consecutive */
    uint64_t retry_at_ns;
    pthread_t refresher; /* the last early refresh run in the background; joined later */
    int refresher_started;
};

static int parse_epoch(json_t *v, long long *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        *out = (long long)json_real_value(v);
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (errno || end == s || *end)
            return -EINVAL;
        *out = x;
        return 0;
    }
    return -EINVAL;
}

int bs_token_parse_json(const char *json, size_t len, time_t now, char **token, time_t *expires_on,
                        char *err, size_t errsz)
{
    *token = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root || !json_is_object(root)) {
        snprintf(err, errsz, "token response is not a JSON object");
        json_decref(root);
        return -EINVAL;
    }
    int rc = -EINVAL;
    json_t *at = json_object_get(root, "access_token");
    if (!json_is_string(at) || json_string_length(at) == 0) {
        snprintf(err, errsz, "token response has no access_token");
        goto out;
    }
    long long exp = 0;
    json_t *on = json_object_get(root, "expires_on");
    json_t *in = json_object_get(root, "expires_in");
    if (on && parse_epoch(on, &exp) == 0 && exp > 0) {
        /* epoch seconds */
    } else if (in && parse_epoch(in, &exp) == 0 && exp > 0 && exp < 10LL * 365 * 86400) {
        exp += (long long)now;
    } else {
        snprintf(err, errsz, "token response has no valid expires_on or expires_in");
        goto out;
    }
    *token = strdup(json_string_value(at));
    if (!*token) {
        snprintf(err, errsz, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    *expires_on = (time_t)exp;
    rc = 0;
out:
    json_decref(root);
    return rc;
}

static int copy_env(char *dst, size_t dstsz, const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v || strlen(v) >= dstsz)
        return 0;
    memcpy(dst, v, strlen(v) + 1);
    return 1;
}

static struct bs_token_source *source_new(enum bs_token_kind kind, const char *name,
                                          const struct bs_token_opts *opts)
{
    struct bs_token_source *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->kind = kind;
    snprintf(s->name, sizeof(s->name), "%s", name);
    if (opts)
        s->opts = *opts;
    if (s->opts.connect_timeout_ms <= 0)
        s->opts.connect_timeout_ms = 5000;
    if (s->opts.total_timeout_ms <= 0)
        s->opts.total_timeout_ms = 30000;
    pthread_mutex_init(&s->lock, NULL);
    bs_cond_init(&s->done);
    return s;
}

static void authority_url(struct bs_token_source *s)
{
    const char *host = getenv("AZURE_AUTHORITY_HOST");
    if (!host || !*host)
        host = "https://login.microsoftonline.com";
    size_t n = strlen(host);
    while (n && host[n - 1] == '/')
        n--;
    snprintf(s->url, sizeof(s->url), "%.*s/%s/oauth2/v2.0/token", (int)n, host, s->tenant);
}

struct bs_token_source *bs_token_source_from_env(const struct bs_token_opts *opts, int probe_imds,
                                                 char *err, size_t errsz)
{
    struct bs_token_source *s = NULL;
    char tenant[128] = "", client[128] = "";
    int have_tenant = copy_env(tenant, sizeof(tenant), "AZURE_TENANT_ID");
    int have_client = copy_env(client, sizeof(client), "AZURE_CLIENT_ID");
    const char *secret = getenv("AZURE_CLIENT_SECRET");
    const char *fed = getenv("AZURE_FEDERATED_TOKEN_FILE");
    if (err && errsz)
        err[0] = '\0';

    if (have_tenant && have_client && secret && *secret) {
        s = source_new(BS_TOKEN_CLIENT_SECRET, "client secret (AZURE_CLIENT_SECRET)", opts);
        if (!s || !(s->client_secret = strdup(secret)))
            goto out_nomem;
    } else if (have_tenant && have_client && fed && *fed) {
        s = source_new(BS_TOKEN_WORKLOAD_IDENTITY, "workload identity (AZURE_FEDERATED_TOKEN_FILE)",
                       opts);
        if (!s)
            goto out_nomem;
        snprintf(s->assertion_file, sizeof(s->assertion_file), "%s", fed);
    } else if (getenv("IDENTITY_ENDPOINT") && *getenv("IDENTITY_ENDPOINT") &&
               getenv("IDENTITY_HEADER") && *getenv("IDENTITY_HEADER")) {
        s = source_new(BS_TOKEN_APP_SERVICE, "managed identity (App Service IDENTITY_ENDPOINT)",
                       opts);
        if (!s)
            goto out_nomem;
        copy_env(s->identity_header, sizeof(s->identity_header), "IDENTITY_HEADER");
        char res[128];
        bs_url_encode_component(BS_STORAGE_RESOURCE, res, sizeof(res));
        snprintf(s->url, sizeof(s->url), "%s%sapi-version=2019-08-01&resource=%s",
                 getenv("IDENTITY_ENDPOINT"), strchr(getenv("IDENTITY_ENDPOINT"), '?') ? "&" : "?",
                 res);
    } else if (probe_imds) {
        s = source_new(BS_TOKEN_IMDS, "managed identity (IMDS)", opts);
        if (!s)
            goto out_nomem;
        const char *base = getenv("AZURE_POD_IDENTITY_AUTHORITY_HOST");
        if (!base || !*base)
            base = "http://169.254.169.254";
        size_t n = strlen(base);
        while (n && base[n - 1] == '/')
            n--;
        char res[128];
        bs_url_encode_component(BS_STORAGE_RESOURCE, res, sizeof(res));
        snprintf(s->url, sizeof(s->url),
                 "%.*s/metadata/identity/oauth2/token?api-version=2018-02-01&resource=%s", (int)n,
                 base, res);
    } else {
        return NULL;
    }
    memcpy(s->tenant, tenant, sizeof(tenant));
    memcpy(s->client_id, client, sizeof(client));
    if (s->kind == BS_TOKEN_CLIENT_SECRET || s->kind == BS_TOKEN_WORKLOAD_IDENTITY)
        authority_url(s);
    if ((s->kind == BS_TOKEN_APP_SERVICE || s->kind == BS_TOKEN_IMDS) && have_client) {
        char cid[400];
        bs_url_encode_component(client, cid, sizeof(cid));
        size_t used = strlen(s->url);
        snprintf(s->url + used, sizeof(s->url) - used, "&client_id=%s", cid);
    }
    return s;

out_nomem:
    snprintf(err, errsz, "out of memory");
    bs_token_source_destroy(s);
    return NULL;
}

void bs_token_source_destroy(struct bs_token_source *s)
{
    if (!s)
        return;
    if (s->refresher_started)
        pthread_join(s->refresher, NULL); /* at most one fetch's time limit */
    if (s->client_secret) {
        memset(s->client_secret, 0, strlen(s->client_secret));
        free(s->client_secret);
    }
    if (s->token) {
        memset(s->token, 0, strlen(s->token));
        free(s->token);
    }
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->done);
    free(s);
}

enum bs_token_kind bs_token_source_kind(const struct bs_token_source *s)
{
    return s->kind;
}

const char *bs_token_source_name(const struct bs_token_source *s)
{
    return s->name;
}

struct body {
    char *p;
    size_t len;
    int overflow;
};

static size_t body_write(char *data, size_t sz, size_t n, void *ud)
{
    struct body *b = ud;
    size_t len = sz * n;
    if (b->len + len > MAX_RESPONSE) {
        b->overflow = 1;
        return 0;
    }
    char *np = realloc(b->p, b->len + len + 1);
    if (!np)
        return 0;
    b->p = np;
    memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = '\0';
    return len;
}

/* Appends "&name=urlencoded(value)" to a malloc'd form body. */
static int form_add(char **form, const char *name, const char *value)
{
    size_t vlen = strlen(value);
    char *enc = malloc(vlen * 3 + 1);
    if (!enc)
        return -ENOMEM;
    bs_url_encode_component(value, enc, vlen * 3 + 1);
    size_t old = *form ? strlen(*form) : 0;
    size_t need = old + strlen(name) + strlen(enc) + 3;
    char *nf = realloc(*form, need);
    if (!nf) {
        free(enc);
        return -ENOMEM;
    }
    snprintf(nf + old, need - old, "%s%s=%s", old ? "&" : "", name, enc);
    *form = nf;
    free(enc);
    return 0;
}

static char *read_assertion(const char *path, char *err, size_t errsz)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(err, errsz, "cannot open AZURE_FEDERATED_TOKEN_FILE %s: %s", path,
                 strerror(errno));
        return NULL;
    }
    char *buf = malloc(MAX_ASSERTION + 1);
    size_t n = buf ? fread(buf, 1, MAX_ASSERTION + 1, f) : 0;
    fclose(f);
    if (!buf)
        return NULL;
    if (n == 0 || n > MAX_ASSERTION) {
        snprintf(err, errsz, "AZURE_FEDERATED_TOKEN_FILE %s is empty or larger than %d bytes", path,
                 MAX_ASSERTION);
        free(buf);
        return NULL;
    }
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    buf[n] = '\0';
    return buf;
}

/* Fetches a new token (without the lock: it reads only what never changes after creation).
 * On success *tok_out is malloc'd and *exp_out set. */
static int fetch_token(struct bs_token_source *s, char **tok_out, time_t *exp_out, char *err,
                       size_t errsz)
{
    int rc = -EIO;
    char *form = NULL, *assertion = NULL;
    struct body body = {0};
    struct curl_slist *hdrs = NULL;
    CURL *h = curl_easy_init();
    if (!h) {
        snprintf(err, errsz, "%s: cannot create HTTP handle", s->name);
        return -ENOMEM;
    }
    switch (s->kind) {
    case BS_TOKEN_WORKLOAD_IDENTITY:
        assertion = read_assertion(s->assertion_file, err, errsz);
        if (!assertion)
            goto out;
        /* fallthrough */
    case BS_TOKEN_CLIENT_SECRET:
        if (form_add(&form, "grant_type", "client_credentials") ||
            form_add(&form, "client_id", s->client_id) ||
            form_add(&form, "scope", BS_STORAGE_SCOPE) ||
            (s->client_secret && form_add(&form, "client_secret", s->client_secret)) ||
            (assertion && (form_add(&form, "client_assertion_type",
                                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer") ||
                           form_add(&form, "client_assertion", assertion)))) {
            snprintf(err, errsz, "%s: out of memory", s->name);
            rc = -ENOMEM;
            goto out;
        }
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, form);
        hdrs = curl_slist_append(hdrs, "Content-Type: application/x-www-form-urlencoded");
        break;
    case BS_TOKEN_APP_SERVICE: {
        char line[600];
        snprintf(line, sizeof(line), "X-IDENTITY-HEADER: %s", s->identity_header);
        hdrs = curl_slist_append(hdrs, line);
        break;
    }
    case BS_TOKEN_IMDS:
        hdrs = curl_slist_append(hdrs, "Metadata: true");
        break;
    }
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    curl_easy_setopt(h, CURLOPT_URL, s->url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, body_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, s->opts.connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, s->opts.total_timeout_ms);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOPROXY, s->kind == BS_TOKEN_IMDS ? "*" : NULL);
    if (s->opts.ca_bundle && *s->opts.ca_bundle)
        curl_easy_setopt(h, CURLOPT_CAINFO, s->opts.ca_bundle);
    CURLcode cc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (cc != CURLE_OK) {
        /* Unreachable (no connection was ever made) means "this source is absent"; a failure
         * after connecting (slow or broken answer) is an error of a present source. */
        curl_off_t connect_us = 0;
        curl_easy_getinfo(h, CURLINFO_CONNECT_TIME_T, &connect_us);
        int unreachable = cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST ||
                          (cc == CURLE_OPERATION_TIMEDOUT && connect_us == 0);
        snprintf(err, errsz, "%s: token endpoint %s: %s", s->name,
                 unreachable ? "unreachable" : "failed", curl_easy_strerror(cc));
        rc = unreachable ? -EHOSTUNREACH : -EIO;
        goto out;
    }
    if (status != 200) {
        char code[96] = "";
        json_t *j = body.p ? json_loadb(body.p, body.len, 0, NULL) : NULL;
        json_t *e = j ? json_object_get(j, "error") : NULL;
        if (json_is_string(e))
            snprintf(code, sizeof(code), " (%s)", json_string_value(e));
        json_decref(j);
        snprintf(err, errsz, "%s: token endpoint answered HTTP %ld%s", s->name, status, code);
        /* IMDS answers 400 when the machine has no (such) identity: the source is absent.
         * Anything else (429, 5xx, ...) is an error of a present source, maybe transient. */
        if (status == 400 && s->kind == BS_TOKEN_IMDS)
            rc = -ENOENT;
        goto out;
    }
    char *tok = NULL;
    time_t exp = 0, now = time(NULL);
    char perr[160];
    if (body.overflow || bs_token_parse_json(body.p ? body.p : "", body.len, now, &tok, &exp, perr,
                                             sizeof(perr)) != 0) {
        snprintf(err, errsz, "%s: %s", s->name, body.overflow ? "token response too large" : perr);
        goto out;
    }
    *tok_out = tok;
    *exp_out = exp;
    bs_log(BS_LOG_DEBUG, "token", "event=token_fetched source=\"%s\" expires_in_s=%lld", s->name,
           (long long)(exp - now));
    rc = 0;
out:
    if (assertion) {
        memset(assertion, 0, strlen(assertion));
        free(assertion);
    }
    if (form) {
        memset(form, 0, strlen(form));
        free(form);
    }
    free(body.p);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    return rc;
}

static int needs_refresh(const struct bs_token_source *s, time_t now)
{
    if (!s->token)
        return 1;
    time_t life = s->expires_on - s->fetched_at;
    time_t margin = life / 2 < 300 ? life / 2 : 300;
    return now >= s->expires_on - margin;
}

/* Lock held. A token still usable for a request now (not about to expire mid-request). */
static int usable(const struct bs_token_source *s, time_t now)
{
    time_t quarter = (s->expires_on - s->fetched_at) / 4;
    return s->token &&
           now < s->expires_on - (quarter < TOKEN_MIN_LEFT_S ? quarter : TOKEN_MIN_LEFT_S);
}

/* Lock held: records the outcome of a fetch and wakes the callers waiting for it. */
static void fetch_done(struct bs_token_source *s, int rc, char *tok, time_t exp, time_t now,
                       const char *err)
{
    if (rc == 0) {
        if (s->token) {
            memset(s->token, 0, strlen(s->token));
            free(s->token);
        }
        s->token = tok;
        s->expires_on = exp;
        s->fetched_at = now;
        s->failures = 0;
        s->retry_at_ns = 0;
        s->last_err[0] = '\0';
    } else {
        /* The next caller may try once more at once (a transient error, as the SDKs retry);
         * after that, a jittered exponential backoff: a failing endpoint sees one attempt per
         * step from the whole process, not one per caller. */
        int f = s->failures < 16 ? s->failures : 16;
        uint64_t cap = f == 0 ? 0 : (uint64_t)TOKEN_RETRY_BASE_MS << (f - 1);
        if (cap > TOKEN_RETRY_MAX_MS)
            cap = TOKEN_RETRY_MAX_MS;
        uint64_t wait_ms = cap / 2 + bs_random() % (cap / 2 + 1);
        s->failures++;
        s->retry_at_ns = bs_now_ns() + wait_ms * 1000000ull;
        snprintf(s->last_err, sizeof(s->last_err), "%s", err);
    }
    s->last_rc = rc;
    s->generation++;
    s->fetching = 0;
    pthread_cond_broadcast(&s->done);
}

/* Lock held: copies the cached token out. */
static int copy_token(struct bs_token_source *s, char *out, size_t outsz, char *err, size_t errsz)
{
    size_t n = strlen(s->token);
    if (n >= outsz) {
        snprintf(err, errsz, "%s: token longer than %zu bytes", s->name, outsz);
        return -ENOSPC;
    }
    memcpy(out, s->token, n + 1);
    return 0;
}

static int public_rc(int rc)
{
    return rc == -ENOMEM || rc == -EHOSTUNREACH || rc == -ENOENT || rc == -ETIMEDOUT ? rc : -EIO;
}

/* An early refresh, run in the background so that callers holding a valid token never wait. */
static void *refresh_thread(void *arg)
{
    struct bs_token_source *s = arg;
    char *tok = NULL, ferr[1536] = "";
    time_t exp = 0;
    int rc = fetch_token(s, &tok, &exp, ferr, sizeof(ferr));
    pthread_mutex_lock(&s->lock);
    fetch_done(s, rc, tok, exp, time(NULL), ferr);
    if (rc != 0)
        bs_log(BS_LOG_WARN, "token", "event=token_refresh_failed source=\"%s\"", s->name);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Lock held, s->fetching just set: starts the background refresh. 0, or -1 if no thread. */
static int start_refresh(struct bs_token_source *s)
{
    if (s->refresher_started)
        pthread_join(s->refresher, NULL); /* finished: it cleared `fetching` before exiting */
    s->refresher_started = pthread_create(&s->refresher, NULL, refresh_thread, s) == 0;
    return s->refresher_started ? 0 : -1;
}

int bs_token_get(struct bs_token_source *s, char *out, size_t outsz, char *err, size_t errsz)
{
    /* A caller waits for someone else's fetch at most as long as a fetch may take. */
    uint64_t wait_until =
        bs_now_ns() +
        (uint64_t)(s->opts.connect_timeout_ms + s->opts.total_timeout_ms) * 1000000ull;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        time_t now = time(NULL);
        int valid = usable(s, now);
        if (valid && !needs_refresh(s, now)) {
            int rc = copy_token(s, out, outsz, err, errsz);
            pthread_mutex_unlock(&s->lock);
            return rc;
        }
        int may_fetch = !s->fetching && bs_now_ns() >= s->retry_at_ns;
        if (valid && !may_fetch) {
            /* Only an early refresh is due and someone runs it (or it failed recently): the
             * valid token serves without waiting. */
            int rc = copy_token(s, out, outsz, err, errsz);
            pthread_mutex_unlock(&s->lock);
            return rc;
        }
        if (valid && may_fetch) {
            s->fetching = 1;
            if (start_refresh(s) == 0) {
                int rc = copy_token(s, out, outsz, err, errsz);
                pthread_mutex_unlock(&s->lock);
                return rc;
            }
            s->fetching = 0; /* no thread: refresh inline below */
        }
        if (may_fetch) {
            s->fetching = 1;
            pthread_mutex_unlock(&s->lock);
            char *tok = NULL, ferr[1536] = "";
            time_t exp = 0;
            int rc = fetch_token(s, &tok, &exp, ferr, sizeof(ferr));
            pthread_mutex_lock(&s->lock);
            fetch_done(s, rc, tok, exp, time(NULL), ferr);
            if (rc != 0 && usable(s, time(NULL))) {
                /* A refresh that fails while the old token is still valid is not an error. */
                bs_log(BS_LOG_WARN, "token", "event=token_refresh_failed source=\"%s\"", s->name);
                rc = copy_token(s, out, outsz, err, errsz);
            } else if (rc == 0) {
                rc = copy_token(s, out, outsz, err, errsz);
            } else {
                snprintf(err, errsz, "%s", ferr);
                rc = public_rc(rc);
            }
            pthread_mutex_unlock(&s->lock);
            return rc;
        }
        if (!s->fetching) {
            /* No valid token and fetches failed repeatedly moments ago: their error at once,
             * until the backoff lets one caller try again. */
            snprintf(err, errsz, "%s", s->last_err[0] ? s->last_err : "token fetch failed");
            int rc = public_rc(s->last_rc ? s->last_rc : -EIO);
            pthread_mutex_unlock(&s->lock);
            return rc;
        }
        /* Someone fetches: wait for that result, bounded. */
        uint64_t gen = s->generation;
        while (s->fetching && s->generation == gen) {
            if (bs_cond_wait_until(&s->done, &s->lock, wait_until) == ETIMEDOUT)
                break;
        }
        if (s->generation == gen) {
            snprintf(err, errsz, "%s: no token: the fetch in progress did not finish in time",
                     s->name);
            pthread_mutex_unlock(&s->lock);
            return -ETIMEDOUT;
        }
        if (s->last_rc != 0 && !usable(s, time(NULL))) {
            snprintf(err, errsz, "%s", s->last_err);
            int rc = public_rc(s->last_rc);
            pthread_mutex_unlock(&s->lock);
            return rc;
        }
        /* loop: the token it fetched is now cached */
    }
}

void bs_token_source_invalidate(struct bs_token_source *s)
{
    pthread_mutex_lock(&s->lock);
    if (s->token) {
        memset(s->token, 0, strlen(s->token));
        free(s->token);
        s->token = NULL;
    }
    s->retry_at_ns = 0; /* the service rejected it: fetching a new one is due now */
    pthread_mutex_unlock(&s->lock);
}
