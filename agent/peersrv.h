/* The agent's peer server: other agents of the cluster fetch chunks here (peerclient.h has
 * the request). A separate libmicrohttpd daemon on BLOBSWARM_PEER_LISTEN, distinct from the
 * node API: only requests signed with the cluster secret (peerauth.h) within the replay
 * window are served; anything else gets 401 and no bytes. A held chunk is sent from its file
 * descriptor (sendfile, no copy through user space) with its authenticated record; a chunk
 * this agent is filling right now is waited for (at most the request's w, at most
 * max_wait_ms); otherwise 404. It never starts a fill and never talks to Azure. Uploads are
 * capped (max_uploads running at once, 503 beyond) and so are connections per IP. */
#ifndef BS_PEERSRV_H
#define BS_PEERSRV_H

#include <stdint.h>

#include "peerauth.h"

struct bs_service;
struct bs_metrics;
struct bs_peersrv;

struct bs_peersrv_opts {
    const char *listen;    /* "IPv4:port" (port 0: any free one) */
    const char *advertise; /* the address peers dial (signatures name it); NULL: listen's
                              address with the port bound */
    const struct bs_peer_secret *secret; /* borrowed */
    long window_ms;                      /* replay window of signatures (+-) */
    int max_uploads;                     /* chunk bodies being sent at once; beyond: 503 */
    int max_clients;                     /* connections at once */
    int max_per_ip;                      /* connections per peer IP */
    long conn_idle_ms;                   /* an idle connection is closed after this */
    long max_wait_ms;                    /* longest wait for a fill in progress */
};

struct bs_peersrv *bs_peersrv_create(const struct bs_peersrv_opts *o, struct bs_service *svc,
                                     struct bs_metrics *metrics, char *err, size_t errsz);
int bs_peersrv_port(const struct bs_peersrv *p);
/* Stops accepting, lets transfers in progress finish (at most drain_ms), frees. Returns 0 when
 * all finished in time. NULL ok. */
int bs_peersrv_destroy(struct bs_peersrv *p, long drain_ms);

#endif
