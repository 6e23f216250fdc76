/* User delegation keys and the SAS they sign (see udkey.h). The response is a small flat XML
 * document of known elements; each is taken from between its own tags and checked against
 * the alphabet its value can have, so nothing else in the body is interpreted. */
#include "udkey.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "azcred.h" /* BS_AZ_API_VERSION */
#include "clock.h"
#include "log.h"
#include "sas.h"
#include "sharedkey.h"

#define UDK_MAX_RESPONSE (16 * 1024)
/* A key is requested for this long and replaced once it would not outlive a new SAS. */
#define UDK_LIFETIME_S     (6 * 3600)
#define UDK_MAX_LIFETIME_S (7 * 86400) /* Azure refuses a user delegation key beyond 7 days */
/* After a failed key request nobody asks again for a jittered [1/2, 1] of this; after a
 * refusal (401/403: the identity may not get keys) of UDK_DENIED_RETRY_MS. */
#define UDK_RETRY_MS        2000u
#define UDK_DENIED_RETRY_MS 300000u

struct bs_udkey_cache {
    struct bs_token_opts opts;
    pthread_mutex_t lock;
    pthread_cond_t done;
    int fetching;
    unsigned generation;
    int valid;
    char base_url[1024]; /* the endpoint the key is from */
    struct bs_udkey key;
    time_t key_expiry; /* key.expiry as epoch */
    int last_rc;
    char last_err[300];
    uint64_t retry_at_ns;
};

struct bs_udkey_cache *bs_udkey_cache_create(const struct bs_token_opts *opts)
{
    struct bs_udkey_cache *k = calloc(1, sizeof(*k));
    if (!k)
        return NULL;
    if (opts)
        k->opts = *opts;
    if (k->opts.connect_timeout_ms <= 0)
        k->opts.connect_timeout_ms = 5000;
    if (k->opts.total_timeout_ms <= 0)
        k->opts.total_timeout_ms = 30000;
    pthread_mutex_init(&k->lock, NULL);
    bs_cond_init(&k->done);
    return k;
}

void bs_udkey_cache_destroy(struct bs_udkey_cache *k)
{
    if (!k)
        return;
    memset(&k->key, 0, sizeof(k->key));
    pthread_mutex_destroy(&k->lock);
    pthread_cond_destroy(&k->done);
    free(k);
}

static int in_set(const char *s, const char *extra)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr(extra, c)))
            return 0;
    }
    return 1;
}

/* Copies the text of the first <tag>...</tag> in xml[0, len) into out; -EINVAL if absent,
 * empty, too long or outside `extra` + alphanumerics. */
static int element(const char *xml, size_t len, const char *tag, const char *extra, char *out,
                   size_t outsz)
{
    char open[40], close[40];
    snprintf(open, sizeof(open), "<%s>", tag);
    snprintf(close, sizeof(close), "</%s>", tag);
    size_t ol = strlen(open);
    for (size_t i = 0; i + ol <= len; i++) {
        if (memcmp(xml + i, open, ol) != 0)
            continue;
        const char *v = xml + i + ol;
        size_t rest = len - i - ol, cl = strlen(close);
        for (size_t n = 0; n + cl <= rest; n++) {
            if (memcmp(v + n, close, cl) != 0)
                continue;
            if (n == 0 || n >= outsz)
                return -EINVAL;
            memcpy(out, v, n);
            out[n] = '\0';
            return in_set(out, extra) ? 0 : -EINVAL;
        }
        return -EINVAL;
    }
    return -EINVAL;
}

int bs_udkey_parse(const char *xml, size_t len, struct bs_udkey *o)
{
    memset(o, 0, sizeof(*o));
    if (element(xml, len, "SignedOid", "-", o->oid, sizeof(o->oid)) ||
        element(xml, len, "SignedTid", "-", o->tid, sizeof(o->tid)) ||
        element(xml, len, "SignedStart", "-:.", o->start, sizeof(o->start)) ||
        element(xml, len, "SignedExpiry", "-:.", o->expiry, sizeof(o->expiry)) ||
        element(xml, len, "SignedService", "", o->service, sizeof(o->service)) ||
        element(xml, len, "SignedVersion", "-", o->version, sizeof(o->version)) ||
        element(xml, len, "Value", "+/=", o->value, sizeof(o->value))) {
        memset(o, 0, sizeof(*o));
        return -EINVAL;
    }
    return 0;
}

static void iso8601(time_t t, char *out, size_t outsz)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, outsz, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* "YYYY-MM-DDTHH:MM:SS[.fff]Z" to epoch seconds; -1 if malformed. */
/* A time as Azure writes it (common/sas.c's one rule for ISO 8601), as Unix seconds; -1 when
 * it is not one. */
static time_t parse_iso8601(const char *s)
{
    int64_t t;
    return bs_sas_time(s, &t) == 0 ? (time_t)t : -1;
}

struct body {
    char buf[UDK_MAX_RESPONSE + 1];
    size_t len;
    int overflow;
};

static size_t body_write(char *data, size_t sz, size_t n, void *ud)
{
    struct body *b = ud;
    size_t len = sz * n;
    if (b->len + len > UDK_MAX_RESPONSE) {
        b->overflow = 1;
        return 0;
    }
    memcpy(b->buf + b->len, data, len);
    b->len += len;
    b->buf[b->len] = '\0';
    return len;
}

/* Requests a key valid from now - 5 min for UDK_LIFETIME_S, or longer when a SAS must live
 * until `need` (a long BLOBSWARM_DELEGATE_WINDOW_S), up to Azure's 7 days (no lock held). */
static int fetch_key(const struct bs_udkey_cache *k, const char *base_url, const char *token,
                     time_t need, struct bs_udkey *out, char *err, size_t errsz)
{
    char url[1200], st[64], se[64], xml[256], date[64];
    time_t now = time(NULL), until = now + UDK_LIFETIME_S;
    if (until < need + UDK_LIFETIME_S / 6)
        until = need + UDK_LIFETIME_S / 6;
    if (until > now + UDK_MAX_LIFETIME_S)
        until = now + UDK_MAX_LIFETIME_S;
    iso8601(now - 300, st, sizeof(st));
    iso8601(until, se, sizeof(se));
    snprintf(xml, sizeof(xml),
             "<?xml version=\"1.0\" encoding=\"utf-8\"?><KeyInfo><Start>%s</Start>"
             "<Expiry>%s</Expiry></KeyInfo>",
             st, se);
    snprintf(url, sizeof(url), "%s/?restype=service&comp=userdelegationkey", base_url);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "x-ms-date: %a, %d %b %Y %H:%M:%S GMT", &tm);
    size_t tlen = strlen(token);
    char *auth = malloc(tlen + 32);
    struct body *body = calloc(1, sizeof(*body));
    CURL *h = curl_easy_init();
    struct curl_slist *hdrs = NULL;
    int rc = -ENOMEM;
    if (!auth || !body || !h) {
        snprintf(err, errsz, "user delegation key: out of memory");
        goto out;
    }
    snprintf(auth, tlen + 32, "Authorization: Bearer %s", token);
    hdrs = curl_slist_append(hdrs, auth);
    hdrs = curl_slist_append(hdrs, "x-ms-version: " BS_AZ_API_VERSION);
    hdrs = curl_slist_append(hdrs, date);
    hdrs = curl_slist_append(hdrs, "Content-Type: application/xml");
    hdrs = curl_slist_append(hdrs, "Expect:");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, xml);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, body_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, k->opts.connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, k->opts.total_timeout_ms);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (k->opts.ca_bundle && *k->opts.ca_bundle)
        curl_easy_setopt(h, CURLOPT_CAINFO, k->opts.ca_bundle);
    CURLcode cc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (cc != CURLE_OK) {
        snprintf(err, errsz, "user delegation key request failed: %s", curl_easy_strerror(cc));
        rc = cc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EIO;
    } else if (status != 200) {
        snprintf(err, errsz, "user delegation key request answered HTTP %ld", status);
        rc = status == 401 || status == 403 ? -EACCES : -EIO;
    } else if (body->overflow || bs_udkey_parse(body->buf, body->len, out) != 0 ||
               strcmp(out->service, "b") != 0 || parse_iso8601(out->expiry) < 0) {
        snprintf(err, errsz, "user delegation key response is malformed");
        rc = -EIO;
    } else {
        rc = 0;
    }
out:
    if (auth) {
        memset(auth, 0, tlen + 32);
        free(auth);
    }
    if (body) {
        memset(body, 0, sizeof(*body));
        free(body);
    }
    curl_slist_free_all(hdrs);
    if (h)
        curl_easy_cleanup(h);
    return rc;
}

/* The string-to-sign is that of service version 2020-12-06 and later. */
int bs_udkey_sign(const struct bs_udkey *key, const char *account, const char *container,
                  const char *blob, time_t start, time_t expiry, char *out, size_t outsz)
{
    char st[64], se[64], sig[64];
    iso8601(start, st, sizeof(st));
    iso8601(expiry, se, sizeof(se));
    size_t stsz = strlen(account) + strlen(container) + strlen(blob) + 1024;
    char *sts = malloc(stsz);
    if (!sts)
        return -ENOMEM;
    int n =
        snprintf(sts, stsz,
                 "r\n%s\n%s\n/blob/%s/%s/%s\n%s\n%s\n%s\n%s\n%s\n%s\n\n\n\n\nhttps,http\n%s\nb\n"
                 "\n\n\n\n\n\n",
                 st, se, account, container, blob, key->oid, key->tid, key->start, key->expiry,
                 key->service, key->version, BS_SAS_VERSION);
    int rc =
        n < 0 || (size_t)n >= stsz ? -ENOSPC : bs_sharedkey_sign(key->value, sts, sig, sizeof(sig));
    free(sts);
    if (rc)
        return rc;
    char e_st[64], e_se[64], e_sig[200], e_skt[96], e_ske[96];
    bs_url_encode_component(st, e_st, sizeof(e_st));
    bs_url_encode_component(se, e_se, sizeof(e_se));
    bs_url_encode_component(sig, e_sig, sizeof(e_sig));
    bs_url_encode_component(key->start, e_skt, sizeof(e_skt));
    bs_url_encode_component(key->expiry, e_ske, sizeof(e_ske));
    n = snprintf(out, outsz,
                 "sv=%s&spr=https%%2Chttp&st=%s&se=%s&skoid=%s&sktid=%s&skt=%s&ske=%s&sks=%s"
                 "&skv=%s&sr=b&sp=r&sig=%s",
                 BS_SAS_VERSION, e_st, e_se, key->oid, key->tid, e_skt, e_ske, key->service,
                 key->version, e_sig);
    return n < 0 || (size_t)n >= outsz ? -ENOSPC : 0;
}

int bs_udkey_blob_sas(struct bs_udkey_cache *k, const char *base_url, const char *account,
                      const char *container, const char *blob, const char *token,
                      time_t window_start, long window_s, char *out, size_t outsz, char *err,
                      size_t errsz)
{
    time_t start = window_start - 300, expiry = window_start + 2 * (time_t)window_s;
    uint64_t wait_until =
        bs_now_ns() +
        (uint64_t)(k->opts.connect_timeout_ms + k->opts.total_timeout_ms) * 1000000ull;
    if (strlen(base_url) >= sizeof(k->base_url)) {
        snprintf(err, errsz, "blob endpoint URL too long");
        return -EINVAL;
    }
    pthread_mutex_lock(&k->lock);
    for (;;) {
        if (k->valid && strcmp(k->base_url, base_url) == 0 && k->key_expiry >= expiry) {
            struct bs_udkey key = k->key;
            pthread_mutex_unlock(&k->lock);
            int rc = bs_udkey_sign(&key, account, container, blob, start, expiry, out, outsz);
            memset(&key, 0, sizeof(key));
            if (rc)
                snprintf(err, errsz, "cannot sign a user delegation SAS");
            return rc;
        }
        if (k->fetching) {
            unsigned gen = k->generation;
            while (k->fetching && k->generation == gen)
                if (bs_cond_wait_until(&k->done, &k->lock, wait_until) == ETIMEDOUT)
                    break;
            if (k->generation == gen) {
                pthread_mutex_unlock(&k->lock);
                snprintf(err, errsz, "user delegation key: the request in progress did not finish");
                return -ETIMEDOUT;
            }
            if (k->last_rc) {
                snprintf(err, errsz, "%s", k->last_err);
                int rc = k->last_rc;
                pthread_mutex_unlock(&k->lock);
                return rc;
            }
            continue;
        }
        if (bs_now_ns() < k->retry_at_ns) {
            snprintf(err, errsz, "%s", k->last_err);
            int rc = k->last_rc ? k->last_rc : -EIO;
            pthread_mutex_unlock(&k->lock);
            return rc;
        }
        break;
    }
    k->fetching = 1;
    pthread_mutex_unlock(&k->lock);

    struct bs_udkey key;
    char ferr[300] = "";
    int rc = fetch_key(k, base_url, token, expiry, &key, ferr, sizeof(ferr));
    time_t kexp = rc == 0 ? parse_iso8601(key.expiry) : 0;
    if (rc == 0 && kexp < expiry) {
        snprintf(ferr, sizeof(ferr), "user delegation key expires before the SAS would");
        rc = -EIO;
    }

    pthread_mutex_lock(&k->lock);
    k->fetching = 0;
    k->generation++;
    k->last_rc = rc;
    if (rc == 0) {
        k->key = key;
        k->key_expiry = kexp;
        k->valid = 1;
        memcpy(k->base_url, base_url, strlen(base_url) + 1);
        k->retry_at_ns = 0;
        bs_log(BS_LOG_DEBUG, "udkey", "event=key_fetched expires_in_s=%lld",
               (long long)(kexp - time(NULL)));
    } else {
        snprintf(k->last_err, sizeof(k->last_err), "%s", ferr);
        uint64_t step = rc == -EACCES ? UDK_DENIED_RETRY_MS : UDK_RETRY_MS;
        k->retry_at_ns = bs_now_ns() + (step / 2 + bs_random() % (step / 2 + 1)) * 1000000ull;
        bs_log(BS_LOG_WARN, "udkey", "event=key_failed msg=\"%s\"", ferr);
    }
    pthread_cond_broadcast(&k->done);
    pthread_mutex_unlock(&k->lock);
    if (rc) {
        snprintf(err, errsz, "%s", ferr);
        return rc;
    }
    rc = bs_udkey_sign(&key, account, container, blob, start, expiry, out, outsz);
    memset(&key, 0, sizeof(key));
    if (rc)
        snprintf(err, errsz, "cannot sign a user delegation SAS");
    return rc;
}
