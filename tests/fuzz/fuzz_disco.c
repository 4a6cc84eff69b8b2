/* fuzz_disco.c — fuzz target: the auto-discovery datagram parser
 * (disco.c, pp_disco_open). A random datagram almost never carries a valid
 * MAC, so the input may ask the harness to sign it (as a holder of the
 * secret would) and to set the receiver's clock near the datagram's time:
 * then the checks after the MAC (time window, kind, port) are reached too.
 * Checks, besides memory safety: only a 52-byte datagram of the right
 * magic, version and kind, signed with the key, within the window, is
 * accepted; an accepted one decodes to its fields, and sealing those fields
 * again gives a datagram that opens to the same message; a rejected one
 * leaves the output untouched.
 *
 * Input: [mode][clock offset][datagram bytes...]
 *   mode bit 0: sign the datagram; bit 1: clock = its time_ms + offset s. */
#include "fuzz.h"

#include "disco.h"
#include "frame.h"
#include "pp_common.h"

#include <stdlib.h>

static const uint8_t secret[] = "fuzz-secret-0123456789";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static uint8_t key[PP_AUTH_KEY_LEN];
  static int have_key;
  if (!have_key) {
    if (pp_disco_key(secret, sizeof secret - 1, key) != PP_OK)
      __builtin_trap();
    have_key = 1;
  }
  fz f = {data, size};
  uint8_t mode = fz_u8(&f);
  int8_t offset_s = (int8_t)fz_u8(&f);
  size_t len = f.n;
  uint8_t *d = malloc(len ? len : 1);
  if (d == NULL)
    return 0;
  if (len)
    memcpy(d, f.p, len);
  if ((mode & 1) && len >= PP_DISCO_LEN) {
    uint8_t full[32];
    if (pp_auth_hmac(key, d, 36, full) != PP_OK)
      __builtin_trap();
    memcpy(d + 36, full, PP_AUTH_MAC_LEN);
  }
  uint64_t now = 1700000000000ull;
  if ((mode & 2) && len >= 28)
    now = pp_get_u64(d + 20) + (uint64_t)((int64_t)offset_s * 1000);
  pp_disco_msg m, untouched;
  memset(&m, 0xa5, sizeof m);
  memcpy(&untouched, &m, sizeof m);
  int rc = pp_disco_open(key, d, len, now, &m);
  if (rc == PP_OK) {
    uint8_t tag[32];
    uint64_t t = pp_get_u64(d + 20);
    uint64_t skew = t > now ? t - now : now - t;
    if (len != PP_DISCO_LEN || memcmp(d, "ppDI", 4) != 0 || d[4] != 1 ||
        (d[5] != PP_DISCO_ANNOUNCE && d[5] != PP_DISCO_QUERY) ||
        skew > PP_DISCO_WINDOW_MS || m.time_ms != t || m.kind != d[5] ||
        (m.kind == PP_DISCO_ANNOUNCE && m.port == 0))
      __builtin_trap();
    if (pp_auth_hmac(key, d, 36, tag) != PP_OK ||
        memcmp(tag, d + 36, PP_AUTH_MAC_LEN) != 0)
      __builtin_trap(); /* accepted without a valid MAC */
    uint8_t again[PP_DISCO_LEN];
    pp_disco_msg m2;
    if (pp_disco_seal(key, &m, again) != PP_OK ||
        pp_disco_open(key, again, sizeof again, now, &m2) != PP_OK ||
        m2.kind != m.kind || m2.port != m.port ||
        memcmp(m2.addr, m.addr, 4) != 0 || m2.interval_ms != m.interval_ms ||
        m2.nworkers != m.nworkers || m2.time_ms != m.time_ms)
      __builtin_trap();
  } else {
    if (rc != PP_DISCO_EFORMAT && rc != PP_DISCO_EMAC &&
        rc != PP_DISCO_ESTALE)
      __builtin_trap();
    if (memcmp(&m, &untouched, sizeof m) != 0)
      __builtin_trap(); /* a refused datagram wrote the output */
    (void)pp_disco_strerror(rc);
  }
  free(d);
  return 0;
}
