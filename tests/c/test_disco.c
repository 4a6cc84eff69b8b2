/* test_disco.c — auto-discovery datagrams (src/core/disco.[ch]): round
 * trips, every byte of a datagram altered, a wrong secret, truncated and
 * padded datagrams, timestamps just inside and outside the replay window,
 * and nonces that differ between two datagrams of the same content; and
 * the interface helpers of netif.h (local addresses, broadcast addresses). */
#include "check.h"

#include "disco.h"
#include "netif.h"
#include "pp_common.h"

#include <arpa/inet.h>
#include <string.h>

static const uint8_t SECRET[] = "discovery secret";
static const uint8_t OTHER[] = "discovery secreT";

int main(void) {
  uint8_t key[PP_AUTH_KEY_LEN], other[PP_AUTH_KEY_LEN], d[PP_DISCO_LEN],
      d2[PP_DISCO_LEN], big[PP_DISCO_LEN + 1];
  pp_disco_msg m, out;
  const uint64_t now = 1790000000000ull;

  CHECK(pp_disco_key(SECRET, sizeof SECRET - 1, key) == PP_OK);
  CHECK(pp_disco_key(OTHER, sizeof OTHER - 1, other) == PP_OK);
  CHECK(memcmp(key, other, sizeof key) != 0);
  CHECK(pp_disco_key(SECRET, 0, key + 0) == PP_EINVAL);
  CHECK(pp_disco_key(SECRET, sizeof SECRET - 1, key) == PP_OK);

  /* round trip of an announcement */
  memset(&m, 0, sizeof m);
  m.kind = PP_DISCO_ANNOUNCE;
  m.port = 60123;
  m.addr[0] = 10, m.addr[1] = 77, m.addr[2] = 0, m.addr[3] = 12;
  m.interval_ms = 1500;
  m.nworkers = 3;
  m.time_ms = now;
  CHECK(pp_disco_seal(key, &m, d) == PP_OK);
  memset(&out, 0, sizeof out);
  CHECK(pp_disco_open(key, d, sizeof d, now, &out) == PP_OK);
  CHECK(out.kind == PP_DISCO_ANNOUNCE && out.port == 60123 &&
        out.interval_ms == 1500 && out.nworkers == 3 && out.time_ms == now &&
        memcmp(out.addr, m.addr, 4) == 0);

  /* a second seal of the same content differs (fresh nonce) */
  CHECK(pp_disco_seal(key, &m, d2) == PP_OK);
  CHECK(memcmp(d, d2, sizeof d) != 0);

  /* wrong secret */
  CHECK(pp_disco_open(other, d, sizeof d, now, &out) == PP_DISCO_EMAC);

  /* every byte flipped: refused (format for the header, MAC otherwise) */
  for (size_t i = 0; i < PP_DISCO_LEN; i++) {
    for (int bit = 0; bit < 8; bit++) {
      memcpy(d2, d, sizeof d);
      d2[i] ^= (uint8_t)(1u << bit);
      int rc = pp_disco_open(key, d2, sizeof d2, now, &out);
      CHECKF(rc == PP_DISCO_EFORMAT || rc == PP_DISCO_EMAC,
             "byte %zu bit %d accepted (rc %d)", i, bit, rc);
    }
  }

  /* lengths: every truncation, and one byte of padding */
  for (size_t n = 0; n < PP_DISCO_LEN; n++)
    CHECK(pp_disco_open(key, d, n, now, &out) == PP_DISCO_EFORMAT);
  memcpy(big, d, sizeof d);
  big[PP_DISCO_LEN] = 0;
  CHECK(pp_disco_open(key, big, sizeof big, now, &out) == PP_DISCO_EFORMAT);

  /* the replay window, both directions */
  CHECK(pp_disco_open(key, d, sizeof d, now + PP_DISCO_WINDOW_MS, &out) == PP_OK);
  CHECK(pp_disco_open(key, d, sizeof d, now - PP_DISCO_WINDOW_MS, &out) == PP_OK);
  CHECK(pp_disco_open(key, d, sizeof d, now + PP_DISCO_WINDOW_MS + 1, &out) ==
        PP_DISCO_ESTALE);
  CHECK(pp_disco_open(key, d, sizeof d, now - PP_DISCO_WINDOW_MS - 1, &out) ==
        PP_DISCO_ESTALE);

  /* queries; an announcement without a port is malformed; bad kinds */
  memset(&m, 0, sizeof m);
  m.kind = PP_DISCO_QUERY;
  m.time_ms = now;
  CHECK(pp_disco_seal(key, &m, d) == PP_OK);
  CHECK(pp_disco_open(key, d, sizeof d, now, &out) == PP_OK);
  CHECK(out.kind == PP_DISCO_QUERY && out.port == 0);
  m.kind = PP_DISCO_ANNOUNCE;
  CHECK(pp_disco_seal(key, &m, d) == PP_OK);
  CHECK(pp_disco_open(key, d, sizeof d, now, &out) == PP_DISCO_EFORMAT);
  m.kind = 3;
  CHECK(pp_disco_seal(key, &m, d) == PP_EINVAL);

  CHECK(strlen(pp_disco_strerror(PP_DISCO_EMAC)) > 0);
  CHECK(pp_wall_ms() > 1600000000000ull);

  /* netif: every 127/8 address is this host's, its broadcast the loopback
   * one; a documentation address (TEST-NET-3) is not; the broadcast list
   * never holds loopback's, and each entry is a broadcast of a local
   * interface */
  struct in_addr a, bc, list[16];
  inet_pton(AF_INET, "127.0.0.1", &a);
  CHECK(pp_netif_local(a, &bc) == 1);
  CHECK(bc.s_addr == htonl(PP_NETIF_LOOPBACK_BCAST));
  inet_pton(AF_INET, "127.9.8.7", &a);
  CHECK(pp_netif_local(a, NULL) == 1);
  inet_pton(AF_INET, "203.0.113.77", &a);
  CHECK(pp_netif_local(a, &bc) == 0);
  int nb = pp_netif_broadcasts(list, 16);
  CHECK(nb >= 0 && nb <= 16);
  for (int i = 0; i < nb; i++)
    CHECK((ntohl(list[i].s_addr) >> 24) != 127);
  return check_summary();
}
