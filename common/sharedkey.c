/* Shared Key string-to-sign and HMAC signing (see sharedkey.h). The canonicalization follows
 * the published "Authorize with Shared Key" rules for the blob service; it does not implement
 * the older 2009 format or Shared Key Lite. */
#include "sharedkey.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#define MAX_PARTS 32

static int ascii_alnum(int c);

struct buf {
    char *p;
    size_t cap, len;
    int overflow;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->overflow || b->len + n >= b->cap) {
        b->overflow = 1;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(struct buf *b, const char *s)
{
    if (s)
        put(b, s, strlen(s));
}

static void line(struct buf *b, const char *s)
{
    puts_(b, s);
    put(b, "\n", 1);
}

struct kv {
    char name[128];
    const char *val;
    size_t vlen;
};

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* The percent-decoded byte of s[0..n) at *i ('+' is a space), advancing *i past it. */
static unsigned char next_decoded(const char *s, size_t n, size_t *i)
{
    unsigned char c = (unsigned char)s[*i];
    if (c == '%' && *i + 2 < n && hexval(s[*i + 1]) >= 0 && hexval(s[*i + 2]) >= 0) {
        c = (unsigned char)(hexval(s[*i + 1]) * 16 + hexval(s[*i + 2]));
        *i += 2;
    } else if (c == '+') {
        c = ' ';
    }
    (*i)++;
    return c;
}

/* Appends the percent-decoded value. */
static void put_decoded(struct buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        char c = (char)next_decoded(s, n, &i);
        put(b, &c, 1);
    }
}

/* Orders by name, then by decoded value: a repeated query parameter signs its values sorted. */
static int kv_cmp(const void *a, const void *b)
{
    const struct kv *x = a, *y = b;
    int d = strcmp(x->name, y->name);
    if (d)
        return d;
    size_t i = 0, j = 0;
    while (i < x->vlen && j < y->vlen) {
        unsigned char cx = next_decoded(x->val, x->vlen, &i);
        unsigned char cy = next_decoded(y->val, y->vlen, &j);
        if (cx != cy)
            return cx < cy ? -1 : 1;
    }
    return (i < x->vlen) - (j < y->vlen);
}

int bs_sharedkey_string_to_sign(const char *account, const struct bs_sk_request *r, char *out,
                                size_t outsz)
{
    struct buf b = {out, outsz, 0, 0};
    if (outsz)
        out[0] = '\0';
    line(&b, r->method);
    line(&b, ""); /* Content-Encoding */
    line(&b, ""); /* Content-Language */
    line(&b, r->content_length && strcmp(r->content_length, "0") ? r->content_length : "");
    line(&b, ""); /* Content-MD5 */
    line(&b, r->content_type ? r->content_type : "");
    line(&b, ""); /* Date: x-ms-date is used instead */
    line(&b, ""); /* If-Modified-Since */
    line(&b, r->if_match ? r->if_match : "");
    line(&b, ""); /* If-None-Match */
    line(&b, ""); /* If-Unmodified-Since */
    line(&b, r->range ? r->range : "");

    /* Canonicalized headers: x-ms-* lower-cased, sorted, value with whitespace folded outside
     * quoted strings. */
    struct kv hs[MAX_PARTS];
    if (r->n_ms_headers > MAX_PARTS)
        return -EINVAL;
    size_t nh = 0;
    for (size_t i = 0; i < r->n_ms_headers; i++) {
        const char *h = r->ms_headers[i];
        const char *colon = strchr(h, ':');
        if (!colon || (size_t)(colon - h) >= sizeof(hs[0].name))
            return -EINVAL;
        size_t nl = (size_t)(colon - h);
        while (nl && isspace((unsigned char)h[nl - 1]))
            nl--;
        for (size_t k = 0; k < nl; k++)
            hs[nh].name[k] = (char)tolower((unsigned char)h[k]);
        hs[nh].name[nl] = '\0';
        if (strncmp(hs[nh].name, "x-ms-", 5) != 0)
            continue;
        hs[nh].val = colon + 1;
        hs[nh].vlen = strlen(colon + 1);
        nh++;
    }
    qsort(hs, nh, sizeof(hs[0]), kv_cmp);
    for (size_t i = 0; i < nh; i++) {
        puts_(&b, hs[i].name);
        put(&b, ":", 1);
        const char *v = hs[i].val, *e = v + hs[i].vlen;
        while (v < e && isspace((unsigned char)*v))
            v++;
        while (e > v && isspace((unsigned char)e[-1]))
            e--;
        int space = 0, quoted = 0;
        for (; v < e; v++) {
            if (!quoted && isspace((unsigned char)*v)) {
                space = 1;
                continue;
            }
            if (space)
                put(&b, " ", 1);
            space = 0;
            if (*v == '"')
                quoted = !quoted;
            put(&b, v, 1);
        }
        put(&b, "\n", 1);
    }

    /* Canonicalized resource: /account/path, then sorted query parameters. */
    put(&b, "/", 1);
    puts_(&b, account);
    puts_(&b, r->url_path);
    if (r->query && *r->query) {
        struct kv qs[MAX_PARTS];
        size_t nq = 0;
        const char *q = r->query;
        while (*q) {
            const char *amp = strchr(q, '&');
            size_t seg = amp ? (size_t)(amp - q) : strlen(q);
            if (seg) {
                if (nq == MAX_PARTS)
                    return -EINVAL;
                const char *eq = memchr(q, '=', seg);
                size_t nl = eq ? (size_t)(eq - q) : seg;
                if (nl >= sizeof(qs[0].name))
                    return -EINVAL;
                struct buf nb = {qs[nq].name, sizeof(qs[nq].name), 0, 0};
                qs[nq].name[0] = '\0';
                put_decoded(&nb, q, nl);
                for (char *c = qs[nq].name; *c; c++)
                    *c = (char)tolower((unsigned char)*c);
                qs[nq].val = eq ? eq + 1 : "";
                qs[nq].vlen = eq ? seg - nl - 1 : 0;
                nq++;
            }
            q += seg + (amp ? 1 : 0);
        }
        qsort(qs, nq, sizeof(qs[0]), kv_cmp);
        for (size_t i = 0; i < nq; i++) {
            if (i > 0 && strcmp(qs[i].name, qs[i - 1].name) == 0) {
                put(&b, ",", 1);
            } else {
                put(&b, "\n", 1);
                puts_(&b, qs[i].name);
                put(&b, ":", 1);
            }
            put_decoded(&b, qs[i].val, qs[i].vlen);
        }
    }
    if (b.overflow)
        return -ENOSPC;
    return (int)b.len;
}

int bs_sharedkey_sign(const char *key_b64, const char *msg, char *out, size_t outsz)
{
    unsigned char key[128], mac[EVP_MAX_MD_SIZE];
    size_t klen = strlen(key_b64);
    if (klen == 0 || klen % 4 != 0 || klen / 4 * 3 > sizeof(key) || outsz < 45)
        return -EINVAL;
    /* Standard alphabet; '=' only as one or two final padding characters ("AB=C" is not). */
    for (size_t i = 0; i < klen; i++) {
        unsigned char c = (unsigned char)key_b64[i];
        int pad = c == '=' && i >= klen - 2 && key_b64[klen - 1] == '=';
        if (!(ascii_alnum(c) || c == '+' || c == '/' || pad))
            return -EINVAL;
    }
    int n = EVP_DecodeBlock(key, (const unsigned char *)key_b64, (int)klen);
    if (n < 0)
        return -EINVAL;
    if (key_b64[klen - 1] == '=')
        n--;
    if (key_b64[klen - 2] == '=')
        n--;
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha256(), key, n, (const unsigned char *)msg, strlen(msg), mac, &maclen))
        return -EINVAL;
    EVP_EncodeBlock((unsigned char *)out, mac, (int)maclen);
    OPENSSL_cleanse(key, sizeof(key));
    return 0;
}

static int ascii_alnum(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int encode(const char *in, char *out, size_t outsz, int keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        int keep = ascii_alnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~' ||
                   (keep_slash && *p == '/');
        if (o + (keep ? 1 : 3) >= outsz)
            return -ENOSPC;
        if (keep) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    if (o >= outsz)
        return -ENOSPC;
    out[o] = '\0';
    return (int)o;
}

int bs_url_encode_path(const char *in, char *out, size_t outsz)
{
    return encode(in, out, outsz, 1);
}

int bs_url_encode_component(const char *in, char *out, size_t outsz)
{
    return encode(in, out, outsz, 0);
}

static void iso8601(time_t t, char *out, size_t outsz)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, outsz, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

int bs_sharedkey_blob_sas(const char *account, const char *key_b64, const char *container,
                          const char *blob, time_t now, long ttl_s, char *out, size_t outsz)
{
    char st[64], se[64], sts[4096], sig[64], esig[200], est[64], ese[64];
    iso8601(now - 300, st, sizeof(st)); /* tolerate clock skew between hosts */
    iso8601(now + ttl_s, se, sizeof(se));
    int n =
        snprintf(sts, sizeof(sts), "r\n%s\n%s\n/blob/%s/%s/%s\n\n\nhttps,http\n%s\nb\n\n\n\n\n\n\n",
                 st, se, account, container, blob, BS_SAS_VERSION);
    if (n < 0 || (size_t)n >= sizeof(sts))
        return -ENOSPC;
    if (bs_sharedkey_sign(key_b64, sts, sig, sizeof(sig)) != 0)
        return -EINVAL;
    bs_url_encode_component(sig, esig, sizeof(esig));
    bs_url_encode_component(st, est, sizeof(est));
    bs_url_encode_component(se, ese, sizeof(ese));
    n = snprintf(out, outsz, "sv=%s&spr=https%%2Chttp&st=%s&se=%s&sr=b&sp=r&sig=%s", BS_SAS_VERSION,
                 est, ese, esig);
    return n < 0 || (size_t)n >= outsz ? -ENOSPC : 0;
}
