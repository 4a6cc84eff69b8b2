/* stretch.c — the shared secret stretched with scrypt, once per process
 * (see stretch.h). The cache holds the SHA-256 of the last secret and its
 * stretched key, behind a mutex initialised once. */
#include "stretch.h"
#include "pp_common.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static uv_once_t cache_once = UV_ONCE_INIT;
static uv_mutex_t cache_mu;
static int cache_full;                       /* [cache_mu] */
static uint8_t cache_id[32];                 /* [cache_mu] SHA-256 of it */
static uint8_t cache_key[PP_STRETCH_LEN];    /* [cache_mu] */

static void cache_init(void) {
  if (uv_mutex_init(&cache_mu) != 0)
    abort(); /* cannot happen on Linux; nothing sane to continue with */
}

int pp_secret_stretch(const uint8_t *secret, size_t len,
                      uint8_t out[PP_STRETCH_LEN]) {
  if (secret == NULL || len == 0 || len > PP_SECRET_MAX)
    return PP_EINVAL;
  uint8_t id[32];
  unsigned idlen = 0;
  if (EVP_Digest(secret, len, id, &idlen, EVP_sha256(), NULL) != 1)
    return PP_EIO;
  uv_once(&cache_once, cache_init);
  uv_mutex_lock(&cache_mu);
  int hit = cache_full && CRYPTO_memcmp(id, cache_id, sizeof id) == 0;
  if (hit)
    memcpy(out, cache_key, PP_STRETCH_LEN);
  uv_mutex_unlock(&cache_mu);
  if (hit) {
    OPENSSL_cleanse(id, sizeof id);
    return PP_OK;
  }
  /* outside the lock: another thread stretching another secret waits for
   * nothing; two threads with the same new secret both compute it */
  uint8_t key[PP_STRETCH_LEN];
  const uint64_t n = 1u << PP_STRETCH_LOG2N;
  if (EVP_PBE_scrypt((const char *)secret, len,
                     (const unsigned char *)PP_STRETCH_SALT,
                     sizeof PP_STRETCH_SALT - 1, n, PP_STRETCH_R,
                     PP_STRETCH_P, 64u << 20, key, sizeof key) != 1) {
    OPENSSL_cleanse(id, sizeof id);
    return PP_EIO;
  }
  memcpy(out, key, PP_STRETCH_LEN);
  uv_mutex_lock(&cache_mu);
  memcpy(cache_id, id, sizeof id);
  memcpy(cache_key, key, sizeof key);
  cache_full = 1;
  uv_mutex_unlock(&cache_mu);
  OPENSSL_cleanse(key, sizeof key);
  OPENSSL_cleanse(id, sizeof id);
  return PP_OK;
}
