/* announce.h — ppserver -a: announce this node by UDP so clients with
 * ppservers=("*",) find it, and answer their queries at once. Datagrams are
 * the signed ones of src/core/disco.h. Runs on the server's loop (main
 * thread). */
#ifndef PPSRV_ANNOUNCE_H
#define PPSRV_ANNOUNCE_H

#include "config.h"

#include <uv.h>

typedef struct ppsrv_announcer ppsrv_announcer;

/* ppsrv_announce_start: bind UDP 0.0.0.0:tcp_port (shared with other
 * programs of this host that listen there), announce now and every
 * cfg->announce_ms, answer queries. listen_addr is the bound TCP address:
 * a specific IPv4 address is put in the announcements (else clients use the
 * datagram's source address). Datagrams are signed with the discovery key
 * derived from `key` (the stretched secret, borrowed). Returns the
 * announcer, or NULL after logging why (the server then runs without
 * announcing). Main thread. */
ppsrv_announcer *ppsrv_announce_start(uv_loop_t *loop, const ppsrv_config *cfg,
                                      const uint8_t *key, size_t key_len,
                                      const struct sockaddr *listen_addr,
                                      int tcp_port);

/* ppsrv_announce_stop: stop announcing and close the handles; the announcer
 * frees itself when they are closed. NULL is fine. Main thread. */
void ppsrv_announce_stop(ppsrv_announcer *a);

#endif
