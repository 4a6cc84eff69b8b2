/* auth.c — the TCP handshake (mutual HMAC-SHA256 proofs over fresh nonces)
 * and per-frame MACs of authenticated connections (see auth.h, and
 * docs/protocol.md section 6 for the normative description).
 *
 * Key schedule (all HKDF/HMAC with SHA-256):
 *   K0     = HKDF-Extract(salt = "pp-auth-v1", IKM = secret)   at init
 *   PRK    = HKDF-Extract(salt = Nc || Ns, IKM = K0)            per connection
 *   K_cp   = HKDF-Expand(PRK, "pp-auth-v1 client proof", 32)
 *   K_sp   = HKDF-Expand(PRK, "pp-auth-v1 server proof", 32)
 *   K_c2s  = HKDF-Expand(PRK, "pp-auth-v1 mac client->server", 32)
 *   K_s2c  = HKDF-Expand(PRK, "pp-auth-v1 mac server->client", 32)
 *   T       = HELLO frame (60 bytes) || CHALLENGE frame (60 bytes)
 *   proof_c = HMAC(K_cp, "client" || T)
 *   proof_s = HMAC(K_sp, "server" || T || proof_c)
 *   tag     = HMAC(K_dir, u64 seq || header[24] || payload)[0..16)
 *
 * No global state except the libcrypto algorithm handles, fetched once. */
#include "auth.h"
#include "pp_common.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <string.h>
#include <uv.h>

/* handshake states (pp_auth.state) */
enum {
  ST_DEAD = 0,          /* cleared, never initialised, or failed */
  ST_C_INIT,            /* client: HELLO not sent yet */
  ST_C_WAIT_CHALLENGE,  /* client: HELLO sent */
  ST_C_WAIT_PROOF,      /* client: PROOF sent, waiting for the server's */
  ST_S_WAIT_HELLO,      /* server: waiting for HELLO */
  ST_S_WAIT_PROOF,      /* server: CHALLENGE sent */
  ST_DONE               /* both proofs verified: keys available */
};

#define HELLO_PAYLOAD (4u + PP_AUTH_NONCE_LEN)     /* u32 version, nonce */
#define HELLO_FRAME (PP_FRAME_HDR + HELLO_PAYLOAD) /* 60 bytes */
#define FAIL_PAYLOAD 8u                            /* u32 reason, u32 version */
#define HMAC_LEN 32u

static const char salt_base[] = "pp-auth-v1";
static const char info_cproof[] = "pp-auth-v1 client proof";
static const char info_sproof[] = "pp-auth-v1 server proof";
static const char info_c2s[] = "pp-auth-v1 mac client->server";
static const char info_s2c[] = "pp-auth-v1 mac server->client";

/* ---- libcrypto primitives ------------------------------------------------ */

static uv_once_t crypto_once = UV_ONCE_INIT;
static EVP_MAC *g_hmac; /* process lifetime; NULL if the fetch failed */
static EVP_KDF *g_hkdf;

static void crypto_init(void) {
  g_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  g_hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
}

/* one piece of a MAC input */
typedef struct iov {
  const void *p;
  size_t n;
} iov;

/* hmac_sha256: out = HMAC-SHA256(key, parts[0] || ... || parts[n-1]).
 * Returns 0 or PP_EIO. Any thread. */
static int hmac_sha256(const uint8_t *key, size_t keylen, const iov *parts,
                       int n, uint8_t out[HMAC_LEN]) {
  char digest[] = "SHA256";
  OSSL_PARAM params[2];
  size_t outl = 0;
  int rc = PP_EIO;
  EVP_MAC_CTX *ctx;

  uv_once(&crypto_once, crypto_init);
  if (g_hmac == NULL)
    return PP_EIO;
  ctx = EVP_MAC_CTX_new(g_hmac);
  if (ctx == NULL)
    return PP_EIO;
  params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0);
  params[1] = OSSL_PARAM_construct_end();
  if (EVP_MAC_init(ctx, key, keylen, params) != 1)
    goto exit;
  for (int i = 0; i < n; i++)
    if (parts[i].n > 0 && EVP_MAC_update(ctx, parts[i].p, parts[i].n) != 1)
      goto exit;
  if (EVP_MAC_final(ctx, out, &outl, HMAC_LEN) != 1 || outl != HMAC_LEN)
    goto exit;
  rc = PP_OK;
exit:
  EVP_MAC_CTX_free(ctx);
  return rc;
}

/* hkdf: one HKDF-SHA256 step. mode EVP_KDF_HKDF_MODE_EXTRACT_ONLY:
 * out[32] = Extract(salt, ikm) (info ignored); EXPAND_ONLY: out[outlen] =
 * Expand(prk = ikm, info). Returns 0 or PP_EIO. Any thread. */
static int hkdf(int mode, const uint8_t *salt, size_t saltlen,
                const uint8_t *ikm, size_t ikmlen, const char *info,
                uint8_t *out, size_t outlen) {
  char digest[] = "SHA256";
  OSSL_PARAM params[6], *p = params;
  int rc = PP_EIO;
  EVP_KDF_CTX *ctx;

  uv_once(&crypto_once, crypto_init);
  if (g_hkdf == NULL)
    return PP_EIO;
  ctx = EVP_KDF_CTX_new(g_hkdf);
  if (ctx == NULL)
    return PP_EIO;
  *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  *p++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
  *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm,
                                           ikmlen);
  if (salt != NULL)
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt,
                                             saltlen);
  if (info != NULL)
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info,
                                             strlen(info));
  *p = OSSL_PARAM_construct_end();
  if (EVP_KDF_derive(ctx, out, outlen, params) == 1)
    rc = PP_OK;
  EVP_KDF_CTX_free(ctx);
  return rc;
}

/* ---- handshake ----------------------------------------------------------- */

/* auth_kill: wipe every key and nonce and mark the handshake dead. */
static void auth_kill(pp_auth *a) {
  int role = a->role;
  OPENSSL_cleanse(a, sizeof *a);
  a->role = role;
  a->state = ST_DEAD;
}

int pp_auth_init(pp_auth *a, int role, const uint8_t *secret, size_t len) {
  int rc;
  memset(a, 0, sizeof *a);
  if ((role != PP_AUTH_CLIENT && role != PP_AUTH_SERVER) || secret == NULL ||
      len == 0 || len > PP_AUTH_SECRET_MAX)
    return PP_EINVAL;
  rc = hkdf(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, (const uint8_t *)salt_base,
            sizeof salt_base - 1, secret, len, NULL, a->base_key,
            sizeof a->base_key);
  if (rc != PP_OK) {
    pp_auth_clear(a);
    return rc;
  }
  a->role = role;
  a->state = role == PP_AUTH_CLIENT ? ST_C_INIT : ST_S_WAIT_HELLO;
  return PP_OK;
}

void pp_auth_clear(pp_auth *a) { OPENSSL_cleanse(a, sizeof *a); }

/* hs_frame: the 60 bytes of a HELLO or CHALLENGE frame carrying nonce. */
static void hs_frame(uint8_t out[HELLO_FRAME], uint8_t type,
                     const uint8_t nonce[PP_AUTH_NONCE_LEN]) {
  pp_frame_hdr h = {PP_PROTO_VERSION, type, 0, HELLO_PAYLOAD, 0, 0};
  pp_frame_encode_hdr(out, &h);
  pp_put_u32(out + PP_FRAME_HDR, PP_AUTH_VERSION);
  memcpy(out + PP_FRAME_HDR + 4, nonce, PP_AUTH_NONCE_LEN);
}

/* derive_keys: from K0 and both nonces, the two proof keys and the two
 * direction keys (PRK is wiped). Returns 0 or PP_EIO. */
static int derive_keys(pp_auth *a) {
  uint8_t salt[2 * PP_AUTH_NONCE_LEN], prk[HMAC_LEN];
  int rc;
  memcpy(salt, a->nonce_c, PP_AUTH_NONCE_LEN);
  memcpy(salt + PP_AUTH_NONCE_LEN, a->nonce_s, PP_AUTH_NONCE_LEN);
  rc = hkdf(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, salt, sizeof salt, a->base_key,
            sizeof a->base_key, NULL, prk, sizeof prk);
  if (rc == PP_OK)
    rc = hkdf(EVP_KDF_HKDF_MODE_EXPAND_ONLY, NULL, 0, prk, sizeof prk,
              info_cproof, a->key_cproof, PP_AUTH_KEY_LEN);
  if (rc == PP_OK)
    rc = hkdf(EVP_KDF_HKDF_MODE_EXPAND_ONLY, NULL, 0, prk, sizeof prk,
              info_sproof, a->key_sproof, PP_AUTH_KEY_LEN);
  if (rc == PP_OK)
    rc = hkdf(EVP_KDF_HKDF_MODE_EXPAND_ONLY, NULL, 0, prk, sizeof prk,
              info_c2s, a->key_c2s, PP_AUTH_KEY_LEN);
  if (rc == PP_OK)
    rc = hkdf(EVP_KDF_HKDF_MODE_EXPAND_ONLY, NULL, 0, prk, sizeof prk,
              info_s2c, a->key_s2c, PP_AUTH_KEY_LEN);
  OPENSSL_cleanse(prk, sizeof prk);
  return rc;
}

/* compute_proof: this role's proof over the transcript, into out.
 * client: HMAC(K_cp, "client" || T); server: HMAC(K_sp, "server" || T ||
 * proof_c). Returns 0 or PP_EIO. */
static int compute_proof(const pp_auth *a, int role,
                         uint8_t out[PP_AUTH_PROOF_LEN]) {
  uint8_t hello[HELLO_FRAME], chal[HELLO_FRAME];
  hs_frame(hello, PP_MSG_AUTH_HELLO, a->nonce_c);
  hs_frame(chal, PP_MSG_AUTH_CHALLENGE, a->nonce_s);
  iov parts[4] = {{role == PP_AUTH_CLIENT ? "client" : "server", 6},
                  {hello, sizeof hello},
                  {chal, sizeof chal},
                  {a->proof_c, PP_AUTH_PROOF_LEN}};
  if (role == PP_AUTH_CLIENT)
    return hmac_sha256(a->key_cproof, PP_AUTH_KEY_LEN, parts, 3, out);
  return hmac_sha256(a->key_sproof, PP_AUTH_KEY_LEN, parts, 4, out);
}

/* append_fail: append an AUTH_FAIL frame for reason. Best effort (an
 * allocation failure just loses the courtesy frame). */
static void append_fail(pp_buf *out, uint32_t reason) {
  (void)pp_auth_append_fail(out, reason);
}

int pp_auth_append_fail(pp_buf *out, uint32_t reason) {
  uint8_t p[FAIL_PAYLOAD];
  pp_put_u32(p, reason);
  pp_put_u32(p + 4, PP_AUTH_VERSION);
  return pp_frame_append(out, PP_MSG_AUTH_FAIL, 0, 0, 0, p, sizeof p);
}

/* fail: end the handshake with err; for errors detected here (not reported
 * by the peer) tell the peer why with an AUTH_FAIL frame. Returns err. */
static int fail(pp_auth *a, pp_buf *out, int err, int tell_peer) {
  auth_kill(a);
  if (tell_peer) {
    uint32_t reason = err == PP_EAUTH      ? PP_AUTH_FAIL_AUTH
                      : err == PP_EVERSION ? PP_AUTH_FAIL_VERSION
                                           : PP_AUTH_FAIL_PROTO;
    if (err == PP_EAUTH || err == PP_EVERSION || err == PP_EPROTO)
      append_fail(out, reason);
  }
  return err;
}

int pp_auth_start(pp_auth *a, pp_buf *out) {
  uint8_t frame[HELLO_FRAME];
  int rc;
  if (a->role != PP_AUTH_CLIENT || a->state != ST_C_INIT)
    return PP_ESTATE;
  if (RAND_bytes(a->nonce_c, PP_AUTH_NONCE_LEN) != 1)
    return PP_EIO;
  hs_frame(frame, PP_MSG_AUTH_HELLO, a->nonce_c);
  rc = pp_buf_append(out, frame, sizeof frame);
  if (rc != PP_OK)
    return rc;
  a->state = ST_C_WAIT_CHALLENGE;
  return PP_OK;
}

int pp_auth_next(pp_buf *in, pp_frame_hdr *h, const uint8_t **payload) {
  size_t avail = pp_buf_avail(in);
  const uint8_t *p = in->data + in->off;
  if (avail >= 2 && (uint32_t)(p[0] | p[1] << 8) != PP_FRAME_MAGIC)
    return PP_EMAGIC;
  if (avail < PP_FRAME_HDR)
    return 0;
  h->version = p[2];
  h->type = p[3];
  h->flags = pp_get_u32(p + 4);
  h->length = pp_get_u32(p + 8);
  h->attempt = pp_get_u32(p + 12);
  h->id = pp_get_u64(p + 16);
  if (h->length > PP_AUTH_MAX_PREAUTH_FRAME)
    return PP_ETOOBIG;
  if (avail - PP_FRAME_HDR < h->length)
    return 0;
  *payload = p + PP_FRAME_HDR;
  return 1;
}

/* peer_failed: the peer sent AUTH_FAIL: map its reason to our error. */
static int peer_failed(pp_auth *a, const pp_frame_hdr *h,
                       const uint8_t *payload) {
  uint32_t reason = h->length == FAIL_PAYLOAD ? pp_get_u32(payload) : 0;
  auth_kill(a);
  switch (reason) {
  case PP_AUTH_FAIL_VERSION: return PP_EVERSION;
  case PP_AUTH_FAIL_AUTH: return PP_EAUTH;
  case PP_AUTH_FAIL_MODE: return PP_ETLSREQ; /* we are plain: it wants TLS */
  default: return PP_EPROTO;
  }
}

/* feed_hello: server side of HELLO (the caller checked type, version, zero
 * fields). Draws Ns, derives keys, answers CHALLENGE. */
static int feed_hello(pp_auth *a, const pp_frame_hdr *h, const uint8_t *payload,
                      pp_buf *out) {
  uint8_t frame[HELLO_FRAME];
  int rc;
  if (h->length != HELLO_PAYLOAD)
    return fail(a, out, PP_EPROTO, 1);
  if (pp_get_u32(payload) != PP_AUTH_VERSION)
    return fail(a, out, PP_EVERSION, 1);
  memcpy(a->nonce_c, payload + 4, PP_AUTH_NONCE_LEN);
  if (RAND_bytes(a->nonce_s, PP_AUTH_NONCE_LEN) != 1)
    return fail(a, out, PP_EIO, 0);
  if ((rc = derive_keys(a)) != PP_OK)
    return fail(a, out, rc, 0);
  hs_frame(frame, PP_MSG_AUTH_CHALLENGE, a->nonce_s);
  if ((rc = pp_buf_append(out, frame, sizeof frame)) != PP_OK)
    return fail(a, out, rc, 0);
  a->state = ST_S_WAIT_PROOF;
  return 0;
}

/* feed_challenge: client side of CHALLENGE: derives keys, sends proof_c. */
static int feed_challenge(pp_auth *a, const pp_frame_hdr *h,
                          const uint8_t *payload, pp_buf *out) {
  int rc;
  if (h->length != HELLO_PAYLOAD)
    return fail(a, out, PP_EPROTO, 1);
  if (pp_get_u32(payload) != PP_AUTH_VERSION)
    return fail(a, out, PP_EVERSION, 1);
  memcpy(a->nonce_s, payload + 4, PP_AUTH_NONCE_LEN);
  /* a peer echoing our own nonce is reflecting us */
  if (CRYPTO_memcmp(a->nonce_s, a->nonce_c, PP_AUTH_NONCE_LEN) == 0)
    return fail(a, out, PP_EPROTO, 1);
  if ((rc = derive_keys(a)) != PP_OK || (rc = compute_proof(a, PP_AUTH_CLIENT,
                                                            a->proof_c)) != PP_OK)
    return fail(a, out, rc, 0);
  rc = pp_frame_append(out, PP_MSG_AUTH_PROOF, 0, 0, 0, a->proof_c,
                       PP_AUTH_PROOF_LEN);
  if (rc != PP_OK)
    return fail(a, out, rc, 0);
  a->state = ST_C_WAIT_PROOF;
  return 0;
}

/* feed_proof: either side receives the peer's proof and checks it in
 * constant time; the server then answers with its own proof. */
static int feed_proof(pp_auth *a, const pp_frame_hdr *h, const uint8_t *payload,
                      pp_buf *out) {
  uint8_t want[PP_AUTH_PROOF_LEN];
  int rc;
  if (h->length != PP_AUTH_PROOF_LEN)
    return fail(a, out, PP_EPROTO, 1);
  if (a->role == PP_AUTH_SERVER) {
    if ((rc = compute_proof(a, PP_AUTH_CLIENT, want)) != PP_OK)
      return fail(a, out, rc, 0);
    if (CRYPTO_memcmp(want, payload, PP_AUTH_PROOF_LEN) != 0) {
      OPENSSL_cleanse(want, sizeof want);
      return fail(a, out, PP_EAUTH, 1);
    }
    memcpy(a->proof_c, payload, PP_AUTH_PROOF_LEN);
    if ((rc = compute_proof(a, PP_AUTH_SERVER, want)) != PP_OK ||
        (rc = pp_frame_append(out, PP_MSG_AUTH_PROOF, 0, 0, 0, want,
                              PP_AUTH_PROOF_LEN)) != PP_OK) {
      OPENSSL_cleanse(want, sizeof want);
      return fail(a, out, rc, 0);
    }
  } else {
    if ((rc = compute_proof(a, PP_AUTH_SERVER, want)) != PP_OK)
      return fail(a, out, rc, 0);
    if (CRYPTO_memcmp(want, payload, PP_AUTH_PROOF_LEN) != 0) {
      OPENSSL_cleanse(want, sizeof want);
      return fail(a, out, PP_EAUTH, 1);
    }
  }
  OPENSSL_cleanse(want, sizeof want);
  /* what is left is what pp_auth_session needs */
  OPENSSL_cleanse(a->base_key, sizeof a->base_key);
  OPENSSL_cleanse(a->key_cproof, sizeof a->key_cproof);
  OPENSSL_cleanse(a->key_sproof, sizeof a->key_sproof);
  a->state = ST_DONE;
  return 1;
}

int pp_auth_feed(pp_auth *a, const pp_frame_hdr *h, const uint8_t *payload,
                 pp_buf *out) {
  int expect;
  switch (a->state) {
  case ST_C_WAIT_CHALLENGE: expect = PP_MSG_AUTH_CHALLENGE; break;
  case ST_S_WAIT_HELLO: expect = PP_MSG_AUTH_HELLO; break;
  case ST_C_WAIT_PROOF:
  case ST_S_WAIT_PROOF: expect = PP_MSG_AUTH_PROOF; break;
  default: return PP_ESTATE; /* not started, done, or dead */
  }
  if (h->length > PP_AUTH_MAX_PREAUTH_FRAME || (h->length > 0 && !payload))
    return fail(a, out, PP_EPROTO, 1);
  /* the peer gave up: never answer an AUTH_FAIL with another */
  if (h->type == PP_MSG_AUTH_FAIL)
    return peer_failed(a, h, payload);
  /* a peer of another version may lay out everything after the first 12
   * header bytes differently: version first */
  if (h->version != PP_PROTO_VERSION)
    return fail(a, out, PP_EVERSION, 1);
  if (h->type != expect || h->flags != 0 || h->attempt != 0 || h->id != 0)
    return fail(a, out, PP_EPROTO, 1);
  switch (a->state) {
  case ST_S_WAIT_HELLO: return feed_hello(a, h, payload, out);
  case ST_C_WAIT_CHALLENGE: return feed_challenge(a, h, payload, out);
  default: return feed_proof(a, h, payload, out);
  }
}

int pp_auth_session(const pp_auth *a, pp_session *s) {
  if (a->state != ST_DONE)
    return PP_ESTATE;
  memset(s, 0, sizeof *s);
  if (a->role == PP_AUTH_CLIENT) {
    memcpy(s->send_key, a->key_c2s, PP_AUTH_KEY_LEN);
    memcpy(s->recv_key, a->key_s2c, PP_AUTH_KEY_LEN);
  } else {
    memcpy(s->send_key, a->key_s2c, PP_AUTH_KEY_LEN);
    memcpy(s->recv_key, a->key_c2s, PP_AUTH_KEY_LEN);
  }
  return PP_OK;
}

/* ---- sealed frames ------------------------------------------------------- */

/* frame_tag: the 16-byte tag of a frame: HMAC-SHA256(key, u64le seq ||
 * hdr[24] || payload) truncated. Returns 0 or PP_EIO. */
static int frame_tag(const uint8_t key[PP_AUTH_KEY_LEN], uint64_t seq,
                     const uint8_t hdr[PP_FRAME_HDR], const uint8_t *payload,
                     size_t len, uint8_t tag[PP_AUTH_MAC_LEN]) {
  uint8_t seqb[8], full[HMAC_LEN];
  pp_put_u64(seqb, seq);
  iov parts[3] = {{seqb, 8}, {hdr, PP_FRAME_HDR}, {payload, len}};
  int rc = hmac_sha256(key, PP_AUTH_KEY_LEN, parts, 3, full);
  if (rc == PP_OK)
    memcpy(tag, full, PP_AUTH_MAC_LEN);
  OPENSSL_cleanse(full, sizeof full);
  return rc;
}

static int is_auth_type(unsigned t) {
  return t >= PP_MSG_AUTH_HELLO && t <= PP_MSG_AUTH_FAIL;
}

int pp_session_seal_tail(pp_session *s, pp_buf *out, size_t frame_len) {
  uint8_t tag[PP_AUTH_MAC_LEN];
  const uint8_t *f;
  int rc;
  if (s->failed || s->send_seq == UINT64_MAX)
    return PP_ESTATE;
  if (frame_len < PP_FRAME_HDR || frame_len > pp_buf_avail(out))
    return PP_EINVAL;
  f = out->data + out->len - frame_len;
  if ((uint32_t)(f[0] | f[1] << 8) != PP_FRAME_MAGIC ||
      f[2] != PP_PROTO_VERSION || is_auth_type(f[3]) ||
      pp_get_u32(f + 8) != frame_len - PP_FRAME_HDR)
    return PP_EINVAL;
  /* tag first: the append below may move the buffer's contents */
  rc = frame_tag(s->send_key, s->send_seq, f, f + PP_FRAME_HDR,
                 frame_len - PP_FRAME_HDR, tag);
  if (rc == PP_OK)
    rc = pp_buf_append(out, tag, sizeof tag);
  if (rc == PP_OK)
    s->send_seq++;
  return rc;
}

int pp_session_seal(pp_session *s, pp_buf *out, uint8_t type, uint32_t flags,
                    uint64_t id, uint32_t attempt, const void *payload,
                    size_t len) {
  size_t mark;
  int rc;
  if (s->failed || s->send_seq == UINT64_MAX)
    return PP_ESTATE;
  if (is_auth_type(type))
    return PP_EINVAL;
  if (len > UINT32_MAX)
    return PP_ETOOBIG;
  /* room for everything up front, so nothing moves between the appends */
  if ((rc = pp_buf_reserve(out, PP_FRAME_HDR + len + PP_AUTH_MAC_LEN)) != PP_OK)
    return rc;
  mark = out->len;
  if ((rc = pp_frame_append(out, type, flags, id, attempt, payload, len)) != PP_OK)
    return rc;
  rc = pp_session_seal_tail(s, out, PP_FRAME_HDR + len);
  if (rc != PP_OK)
    out->len = mark; /* drop the unsealed frame */
  return rc;
}

int pp_session_open(pp_session *s, const pp_frame_hdr *h,
                    const uint8_t *payload_and_mac, size_t avail) {
  uint8_t hdr[PP_FRAME_HDR], tag[PP_AUTH_MAC_LEN];
  int rc;
  if (s->failed || s->recv_seq == UINT64_MAX)
    return PP_ESTATE;
  if (avail < (size_t)h->length + PP_AUTH_MAC_LEN)
    return PP_EINVAL;
  pp_frame_encode_hdr(hdr, h);
  rc = frame_tag(s->recv_key, s->recv_seq, hdr, payload_and_mac, h->length,
                 tag);
  if (rc == PP_OK &&
      (h->version != PP_PROTO_VERSION ||
       CRYPTO_memcmp(tag, payload_and_mac + h->length, PP_AUTH_MAC_LEN) != 0))
    rc = PP_EAUTH;
  if (rc != PP_OK) {
    s->failed = 1;
    return rc;
  }
  s->recv_seq++;
  return PP_OK;
}

int pp_session_next(pp_session *s, pp_buf *in, uint32_t max_len,
                    pp_frame_hdr *h, const uint8_t **payload) {
  size_t avail = pp_buf_avail(in);
  const uint8_t *p = in->data + in->off;
  int rc;
  if (s->failed)
    return PP_ESTATE;
  if (avail < PP_FRAME_HDR) {
    if (avail >= 2 && (uint32_t)(p[0] | p[1] << 8) != PP_FRAME_MAGIC)
      rc = PP_EMAGIC;
    else
      return 0;
  } else if ((rc = pp_frame_decode_hdr(p, max_len, h)) == PP_OK) {
    if (is_auth_type(h->type))
      rc = PP_EPROTO; /* handshake frames are over */
    else if (avail - PP_FRAME_HDR < (size_t)h->length + PP_AUTH_MAC_LEN)
      return 0;
    else
      rc = pp_session_open(s, h, p + PP_FRAME_HDR, avail - PP_FRAME_HDR);
  }
  if (rc != PP_OK) {
    s->failed = 1;
    return rc;
  }
  *payload = p + PP_FRAME_HDR;
  return 1;
}

void pp_session_clear(pp_session *s) { OPENSSL_cleanse(s, sizeof *s); }

/* ---- keys for other purposes (discovery) ------------------------------- */

int pp_auth_derive_key(const uint8_t *secret, size_t len, const char *label,
                       uint8_t out[PP_AUTH_KEY_LEN]) {
  uint8_t k0[PP_AUTH_KEY_LEN];
  if (secret == NULL || len == 0 || len > PP_AUTH_SECRET_MAX || label == NULL)
    return PP_EINVAL;
  int rc = hkdf(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, (const uint8_t *)salt_base,
                sizeof salt_base - 1, secret, len, NULL, k0, sizeof k0);
  if (rc == PP_OK)
    rc = hkdf(EVP_KDF_HKDF_MODE_EXPAND_ONLY, NULL, 0, k0, sizeof k0, label, out,
              PP_AUTH_KEY_LEN);
  OPENSSL_cleanse(k0, sizeof k0);
  return rc;
}

int pp_auth_hmac(const uint8_t key[PP_AUTH_KEY_LEN], const void *data,
                 size_t len, uint8_t out[HMAC_LEN]) {
  iov part = {data, len};
  return hmac_sha256(key, PP_AUTH_KEY_LEN, &part, 1, out);
}

int pp_auth_equal(const void *a, const void *b, size_t n) {
  return CRYPTO_memcmp(a, b, n) == 0;
}

void pp_auth_wipe(void *p, size_t n) { OPENSSL_cleanse(p, n); }

int pp_auth_random(void *p, size_t n) {
  return n > INT32_MAX || RAND_bytes(p, (int)n) != 1 ? PP_EIO : PP_OK;
}

const char *pp_auth_strerror(int err) { return pp_strerror(err); }
