/* Connection-string parser (see connstr.h). Keys are matched case-insensitively, values are
 * taken verbatim; unknown keys (QueueEndpoint, ...) are ignored as the Azure SDKs do. */
#include "connstr.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void bs_connstr_cleanup(struct bs_connstr *cs)
{
    if (!cs)
        return;
    free(cs->account);
    free(cs->account_key);
    free(cs->sas);
    free(cs->blob_endpoint);
    memset(cs, 0, sizeof(*cs));
}

static char *dup_range(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static int replace(char **slot, const char *v, size_t n)
{
    char *p = dup_range(v, n);
    if (!p)
        return -ENOMEM;
    free(*slot);
    *slot = p;
    return 0;
}

/* The account a blob endpoint names, as the Azure SDKs derive it when a connection string has
 * no AccountName: the first path segment of a path-style endpoint (an IP address or a
 * dot-less host such as localhost: emulators), else the host's first label; lower-cased.
 * NULL when there is none (the caller then needs an account from elsewhere). */
static char *account_from_endpoint(const char *ep)
{
    const char *host = strstr(ep, "://");
    if (!host)
        return NULL;
    host += 3;
    size_t hlen = strcspn(host, ":/");
    const char *path = host + strcspn(host, "/");
    int ip = host[0] == '[' || hlen == 0;
    if (!ip) {
        ip = 1;
        for (size_t i = 0; i < hlen; i++)
            if (!((host[i] >= '0' && host[i] <= '9') || host[i] == '.'))
                ip = 0;
    }
    int dotless = memchr(host, '.', hlen) == NULL;
    const char *name;
    size_t n;
    if (ip || dotless) {
        if (*path != '/')
            return NULL;
        name = path + 1;
        n = strcspn(name, "/?#");
    } else {
        name = host;
        n = strcspn(host, ".:/");
    }
    if (n == 0 || n > 63)
        return NULL;
    char *a = dup_range(name, n);
    for (size_t i = 0; a && a[i]; i++)
        if (a[i] >= 'A' && a[i] <= 'Z')
            a[i] = (char)(a[i] - 'A' + 'a');
    return a;
}

int bs_connstr_parse(const char *s, struct bs_connstr *out, char *err, size_t errsz)
{
    memset(out, 0, sizeof(*out));
    char *protocol = NULL, *suffix = NULL, *endpoint = NULL;
    int devstore = 0, rc = 0;
    if (!s || !*s) {
        snprintf(err, errsz, "connection string is empty");
        return -EINVAL;
    }
    const char *p = s;
    while (*p) {
        const char *semi = strchr(p, ';');
        size_t seglen = semi ? (size_t)(semi - p) : strlen(p);
        while (seglen && (*p == ' ' || *p == '\t'))
            p++, seglen--;
        if (seglen == 0) {
            p = semi ? semi + 1 : p + strlen(p);
            continue;
        }
        const char *eq = memchr(p, '=', seglen);
        if (!eq || eq == p) {
            snprintf(err, errsz, "connection string: segment %zu has no Key=Value form",
                     (size_t)(p - s));
            rc = -EINVAL;
            goto out_fail;
        }
        size_t klen = (size_t)(eq - p);
        const char *v = eq + 1;
        size_t vlen = seglen - klen - 1;
#define KEY_IS(name) (klen == strlen(name) && strncasecmp(p, name, klen) == 0)
        if (KEY_IS("AccountName"))
            rc = replace(&out->account, v, vlen);
        else if (KEY_IS("AccountKey"))
            rc = replace(&out->account_key, v, vlen);
        else if (KEY_IS("SharedAccessSignature")) {
            if (vlen && *v == '?')
                v++, vlen--;
            rc = replace(&out->sas, v, vlen);
        } else if (KEY_IS("BlobEndpoint"))
            rc = replace(&endpoint, v, vlen);
        else if (KEY_IS("EndpointSuffix"))
            rc = replace(&suffix, v, vlen);
        else if (KEY_IS("DefaultEndpointsProtocol"))
            rc = replace(&protocol, v, vlen);
        else if (KEY_IS("UseDevelopmentStorage"))
            devstore = (vlen == 4 && strncasecmp(v, "true", 4) == 0);
#undef KEY_IS
        if (rc)
            goto out_fail;
        p = semi ? semi + 1 : p + seglen;
    }

    if (devstore) {
        if (!out->account &&
            (rc = replace(&out->account, BS_DEVSTORE_ACCOUNT, strlen(BS_DEVSTORE_ACCOUNT))))
            goto out_fail;
        if (!out->account_key && !out->sas &&
            (rc = replace(&out->account_key, BS_DEVSTORE_KEY, strlen(BS_DEVSTORE_KEY))))
            goto out_fail;
        if (!endpoint) {
            const char *dev = "http://127.0.0.1:10000/devstoreaccount1";
            if ((rc = replace(&endpoint, dev, strlen(dev))))
                goto out_fail;
        }
    }
    if (endpoint) {
        size_t n = strlen(endpoint);
        while (n && endpoint[n - 1] == '/')
            endpoint[--n] = '\0';
        if (strncasecmp(endpoint, "http://", 7) != 0 && strncasecmp(endpoint, "https://", 8) != 0) {
            snprintf(err, errsz,
                     "connection string: BlobEndpoint must start with http:// or https://");
            rc = -EINVAL;
            goto out_fail;
        }
        out->blob_endpoint = endpoint;
        endpoint = NULL;
        /* A key signs for a named account: only key-less strings take it from the URL. */
        if (!out->account && !out->account_key)
            out->account = account_from_endpoint(out->blob_endpoint);
    } else {
        if (!out->account || !*out->account) {
            snprintf(err, errsz, "connection string has neither AccountName nor BlobEndpoint");
            rc = -EINVAL;
            goto out_fail;
        }
        const char *proto = protocol && *protocol ? protocol : "https";
        if (strcasecmp(proto, "http") != 0 && strcasecmp(proto, "https") != 0) {
            snprintf(err, errsz,
                     "connection string: DefaultEndpointsProtocol must be http or https");
            rc = -EINVAL;
            goto out_fail;
        }
        const char *sfx = suffix && *suffix ? suffix : "core.windows.net";
        size_t n = strlen(proto) + strlen(out->account) + strlen(sfx) + 16;
        out->blob_endpoint = malloc(n);
        if (!out->blob_endpoint) {
            rc = -ENOMEM;
            goto out_fail;
        }
        snprintf(out->blob_endpoint, n, "%s://%s.blob.%s", proto, out->account, sfx);
    }
    if (out->account_key && !*out->account_key) {
        snprintf(err, errsz, "connection string: AccountKey is empty");
        rc = -EINVAL;
        goto out_fail;
    }
    if (out->account_key && (!out->account || !*out->account)) {
        snprintf(err, errsz, "connection string: AccountKey given without AccountName");
        rc = -EINVAL;
        goto out_fail;
    }
    free(protocol);
    free(suffix);
    return 0;

out_fail:
    if (rc == -ENOMEM)
        snprintf(err, errsz, "connection string: out of memory");
    free(protocol);
    free(suffix);
    free(endpoint);
    bs_connstr_cleanup(out);
    return rc;
}
