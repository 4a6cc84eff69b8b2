/* disco.h — the auto-discovery datagram (docs/protocol.md section 8): a
 * ppserver started with -a announces "a node listens on port P" by UDP, and
 * a client looking for nodes sends a query that nodes answer at once. Every
 * datagram carries a timestamp and an HMAC under a key derived from the
 * shared secret, so only holders of the secret can make one, and an old one
 * replayed later is refused. An announcement is only a hint: the client then
 * connects and runs the full mutual handshake (auth.h) before any job moves.
 *
 * This file is the pure part: building and checking datagrams in memory. No
 * sockets, no clocks (the caller passes the time); any thread, no state. */
#ifndef PP_DISCO_H
#define PP_DISCO_H

#include "auth.h"

#include <stddef.h>
#include <stdint.h>

#define PP_DISCO_LEN 52u                /* every datagram, exactly */
#define PP_DISCO_VERSION 1u
#define PP_DISCO_WINDOW_MS 30000u       /* accepted clock difference, +/- */
#define PP_DISCO_INTERVAL_MS 2000u      /* ppserver's default announce period */
#define PP_DISCO_KEY_LABEL "pp-discovery-v1"

enum pp_disco_kind {
  PP_DISCO_ANNOUNCE = 1, /* node -> everyone: I serve on port P */
  PP_DISCO_QUERY = 2     /* client -> everyone: nodes, announce now */
};

/* One datagram, decoded. */
typedef struct pp_disco_msg {
  int kind;              /* enum pp_disco_kind */
  uint16_t port;         /* ANNOUNCE: the node's TCP port; QUERY: 0 */
  uint8_t addr[4];       /* ANNOUNCE: IPv4 to connect to; 0.0.0.0 = the
                            datagram's source address */
  uint32_t interval_ms;  /* ANNOUNCE: the node's announce period */
  uint32_t nworkers;     /* ANNOUNCE: informational */
  uint64_t time_ms;      /* sender's wall clock, ms since the Unix epoch */
} pp_disco_msg;

/* Verdicts of pp_disco_open, besides PP_OK. */
/* Verdicts of pp_disco_open are codes of the one error table (pp_common.h);
 * these names are kept for readability. */
enum {
  PP_DISCO_EFORMAT = PP_EDISCOFMT, /* not a pp discovery datagram of ours */
  PP_DISCO_EMAC = PP_EDISCOMAC,    /* MAC does not verify: another secret */
  PP_DISCO_ESTALE = PP_EDISCOSTALE /* outside the window: replayed, skewed */
};

/* pp_disco_key: the discovery key for a secret (1..PP_AUTH_SECRET_MAX
 * bytes): HKDF-Expand(K0, "pp-discovery-v1"). 0, PP_EINVAL or PP_EIO. */
int pp_disco_key(const uint8_t *secret, size_t len,
                 uint8_t key[PP_AUTH_KEY_LEN]);

/* pp_disco_seal: encode m into out[PP_DISCO_LEN] with a fresh random nonce
 * and the MAC. Returns 0, PP_EINVAL (bad kind) or PP_EIO. */
int pp_disco_seal(const uint8_t key[PP_AUTH_KEY_LEN], const pp_disco_msg *m,
                  uint8_t out[PP_DISCO_LEN]);

/* pp_disco_open: check and decode one received datagram of len bytes at
 * now_ms (wall clock, ms since the epoch). Returns PP_OK with *m filled, or
 * PP_DISCO_EFORMAT / PP_DISCO_EMAC / PP_DISCO_ESTALE (m untouched), or PP_EIO.
 * The MAC is compared in constant time. */
int pp_disco_open(const uint8_t key[PP_AUTH_KEY_LEN], const uint8_t *data,
                  size_t len, uint64_t now_ms, pp_disco_msg *m);

/* pp_disco_strerror: a short reason for a pp_disco_open verdict. */
const char *pp_disco_strerror(int verdict);

/* pp_wall_ms: the wall clock in ms since the Unix epoch. Any thread. */
uint64_t pp_wall_ms(void);

#endif
