/* stretch.h — the shared secret stretched once per process with scrypt.
 *
 * Everything pp derives from the shared secret (the handshake's keys, the
 * discovery key, the TLS pre-shared key) is derived from
 *
 *   S = scrypt(secret, salt = "pp-secret-v1", N = 2^14, r = 8, p = 1, 32)
 *
 * instead of the secret itself (docs/protocol.md 6.1), so that one offline
 * guess of the secret from a captured handshake or announcement costs a
 * scrypt run (16 MiB of memory, tens of milliseconds of a core) rather than
 * two HMACs. The result is cached for the last secret stretched, so several
 * engines in one process with the same secret pay for it once. */
#ifndef PP_STRETCH_H
#define PP_STRETCH_H

#include <stddef.h>
#include <stdint.h>

#define PP_STRETCH_LEN 32u          /* bytes of S */
#define PP_STRETCH_SALT "pp-secret-v1"
#define PP_STRETCH_LOG2N 14         /* N = 2^14 */
#define PP_STRETCH_R 8
#define PP_STRETCH_P 1

/* pp_secret_stretch: S for the secret (1..PP_SECRET_MAX bytes, borrowed)
 * into out. Returns 0, PP_EINVAL (length) or PP_EIO (libcrypto failed).
 * Blocks for the scrypt run unless the same secret was the last one
 * stretched in this process. Any thread (the cache has its own lock). */
int pp_secret_stretch(const uint8_t *secret, size_t len,
                      uint8_t out[PP_STRETCH_LEN]);

#endif
