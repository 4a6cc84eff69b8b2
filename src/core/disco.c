/* disco.c — encoding and checking auto-discovery datagrams (see disco.h and
 * docs/protocol.md section 8). Layout, little-endian, 52 bytes:
 *
 *   0  magic "ppDI"        4   version u8 (1)     5  kind u8
 *   6  port u16            8   addr[4] (IPv4, network order; 0 = source)
 *   12 interval_ms u32     16  nworkers u32       20 time_ms u64
 *   28 nonce[8]            36  mac[16] = HMAC-SHA256(K_d, bytes 0..36)[0..16)
 */
#include "disco.h"

#include "frame.h"

#include <string.h>
#include <time.h>

#define MAC_OFF 36u

static const uint8_t magic[4] = {'p', 'p', 'D', 'I'};

int pp_disco_key(const uint8_t *secret, size_t len,
                 uint8_t key[PP_AUTH_KEY_LEN]) {
  return pp_auth_derive_key(secret, len, PP_DISCO_KEY_LABEL, key);
}

/* mac: the 16-byte tag of the first MAC_OFF bytes of d. 0 or PP_EIO. */
static int mac(const uint8_t key[PP_AUTH_KEY_LEN], const uint8_t *d,
               uint8_t tag[PP_AUTH_MAC_LEN]) {
  uint8_t full[32];
  int rc = pp_auth_hmac(key, d, MAC_OFF, full);
  memcpy(tag, full, PP_AUTH_MAC_LEN);
  pp_auth_wipe(full, sizeof full);
  return rc;
}

int pp_disco_seal(const uint8_t key[PP_AUTH_KEY_LEN], const pp_disco_msg *m,
                  uint8_t out[PP_DISCO_LEN]) {
  if (m->kind != PP_DISCO_ANNOUNCE && m->kind != PP_DISCO_QUERY)
    return PP_EINVAL;
  memset(out, 0, PP_DISCO_LEN);
  memcpy(out, magic, 4);
  out[4] = PP_DISCO_VERSION;
  out[5] = (uint8_t)m->kind;
  out[6] = (uint8_t)(m->port & 0xff);
  out[7] = (uint8_t)(m->port >> 8);
  memcpy(out + 8, m->addr, 4);
  pp_put_u32(out + 12, m->interval_ms);
  pp_put_u32(out + 16, m->nworkers);
  pp_put_u64(out + 20, m->time_ms);
  if (pp_auth_random(out + 28, 8) != PP_OK)
    return PP_EIO;
  return mac(key, out, out + MAC_OFF);
}

int pp_disco_open(const uint8_t key[PP_AUTH_KEY_LEN], const uint8_t *data,
                  size_t len, uint64_t now_ms, pp_disco_msg *m) {
  uint8_t tag[PP_AUTH_MAC_LEN];
  if (len != PP_DISCO_LEN || memcmp(data, magic, 4) != 0 ||
      data[4] != PP_DISCO_VERSION ||
      (data[5] != PP_DISCO_ANNOUNCE && data[5] != PP_DISCO_QUERY))
    return PP_DISCO_EFORMAT;
  if (mac(key, data, tag) != PP_OK)
    return PP_EIO;
  if (!pp_auth_equal(tag, data + MAC_OFF, PP_AUTH_MAC_LEN))
    return PP_DISCO_EMAC;
  uint64_t t = pp_get_u64(data + 20);
  uint64_t skew = t > now_ms ? t - now_ms : now_ms - t;
  if (skew > PP_DISCO_WINDOW_MS)
    return PP_DISCO_ESTALE;
  uint16_t port = (uint16_t)(data[6] | data[7] << 8);
  /* every check before the first write: a refused datagram leaves m alone */
  if (data[5] == PP_DISCO_ANNOUNCE && port == 0)
    return PP_DISCO_EFORMAT;
  m->kind = data[5];
  m->port = port;
  memcpy(m->addr, data + 8, 4);
  m->interval_ms = pp_get_u32(data + 12);
  m->nworkers = pp_get_u32(data + 16);
  m->time_ms = t;
  return PP_OK;
}

const char *pp_disco_strerror(int verdict) {
  return verdict == PP_OK ? "ok" : pp_strerror(verdict);
}

uint64_t pp_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
