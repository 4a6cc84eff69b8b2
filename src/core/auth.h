/* auth.h — mutual authentication and per-frame MACs for pp's TCP transport
 * (client <-> ppserver). Both halves are pure state machines over byte
 * buffers: nothing here touches a socket, a loop or a clock, the caller moves
 * the bytes. docs/protocol.md section 6 is the normative description.
 *
 *   handshake (pp_auth)      client                          server
 *                            HELLO     (version, Nc)   ->
 *                                      <-  CHALLENGE (version, Ns)
 *                            PROOF     (proof_c)       ->
 *                                      <-  PROOF     (proof_s)
 *   afterwards (pp_session)  every frame is  header | payload | mac[16]
 *
 * Typical use on either side:
 *
 *   pp_auth a;  pp_auth_init(&a, PP_AUTH_CLIENT, secret, secret_len);
 *   pp_auth_start(&a, &out);                      (client only: HELLO)
 *   while handshake not done:                     (bytes arrive in `in`)
 *     rc = pp_auth_next(&in, &h, &p);             (cut one pre-auth frame)
 *     if (rc == 0) wait for more bytes;  if (rc < 0) close;
 *     rc = pp_auth_feed(&a, &h, p, &out);  pp_buf_consume(&in, PP_FRAME_HDR + h.length);
 *     write `out`;  if (rc < 0) close;  if (rc == 1) done;
 *   pp_auth_session(&a, &sess);  pp_auth_clear(&a);
 *   pp_session_seal(&sess, &out, ...) / pp_session_next(&sess, &in, ...)
 *
 * Bytes already in `in` after the frame that completed the handshake are
 * session (sealed) frames. `out` and `in` must be different buffers (the
 * payload pointer points into `in`).
 *
 * Threads: pp_auth and pp_session objects have one owner and no locks; any
 * thread may use them, one at a time. The functions share only process-wide
 * handles on libcrypto's HMAC and HKDF implementations, fetched once
 * (uv_once) and kept for the life of the process. */
#ifndef PP_AUTH_H
#define PP_AUTH_H

#include "buf.h"
#include "frame.h"
#include "pp_common.h"

#include <stddef.h>
#include <stdint.h>


/* Handshake frame types. They never collide with the pipe messages (1..5)
 * and appear only before authentication; flags, attempt and id are 0. */
enum pp_auth_msg_type {
  PP_MSG_AUTH_HELLO = 16,     /* client -> server: u32 version, nonce_c[32] */
  PP_MSG_AUTH_CHALLENGE = 17, /* server -> client: u32 version, nonce_s[32] */
  PP_MSG_AUTH_PROOF = 18,     /* both ways, client first: proof[32] */
  PP_MSG_AUTH_FAIL = 19       /* either way, then close: u32 reason, u32 version */
};

/* AUTH_FAIL reasons (payload word 0). */
enum pp_auth_fail_reason {
  PP_AUTH_FAIL_VERSION = 1, /* I do not speak your protocol version */
  PP_AUTH_FAIL_AUTH = 2,    /* your proof did not verify */
  PP_AUTH_FAIL_PROTO = 3,   /* malformed or unexpected handshake frame */
  PP_AUTH_FAIL_MODE = 4     /* TLS or plain: not the mode I accept (6.6);
                               sent in plain by a node to a plain client it
                               refuses (--require-tls) or to a TLS client
                               (--no-tls) */
};

#define PP_AUTH_VERSION PP_PROTO_VERSION /* version carried in HELLO/CHALLENGE */
#define PP_AUTH_NONCE_LEN 32u
#define PP_AUTH_PROOF_LEN 32u  /* full HMAC-SHA256 */
#define PP_AUTH_KEY_LEN 32u
#define PP_AUTH_MAC_LEN 16u    /* per-frame tag: HMAC-SHA256 truncated to 128 bits */
#define PP_AUTH_SECRET_MAX PP_SECRET_MAX
/* Largest payload a receiver accepts before the handshake has completed.
 * Every handshake payload is at most 36 bytes. */
#define PP_AUTH_MAX_PREAUTH_FRAME 256u

/* Bytes one sealed frame occupies on the wire, from its decoded header. */
#define PP_SESSION_FRAME_SIZE(h) \
  ((size_t)PP_FRAME_HDR + (size_t)(h)->length + PP_AUTH_MAC_LEN)

enum { PP_AUTH_CLIENT = 1, PP_AUTH_SERVER = 2 };

/* Handshake state. Embed it anywhere; every field is private. It holds key
 * material: always end with pp_auth_clear(). */
typedef struct pp_auth {
  int role;  /* PP_AUTH_CLIENT or PP_AUTH_SERVER */
  int state; /* private, see auth.c */
  uint8_t base_key[PP_AUTH_KEY_LEN]; /* HKDF-Extract of the secret */
  uint8_t nonce_c[PP_AUTH_NONCE_LEN];
  uint8_t nonce_s[PP_AUTH_NONCE_LEN];
  uint8_t key_cproof[PP_AUTH_KEY_LEN];
  uint8_t key_sproof[PP_AUTH_KEY_LEN];
  uint8_t key_c2s[PP_AUTH_KEY_LEN];
  uint8_t key_s2c[PP_AUTH_KEY_LEN];
  uint8_t proof_c[PP_AUTH_PROOF_LEN];
} pp_auth;

/* Keys and sequence numbers of one authenticated connection, one direction
 * each. Plain data (copyable); holds key material: end with
 * pp_session_clear(). */
typedef struct pp_session {
  uint8_t send_key[PP_AUTH_KEY_LEN];
  uint8_t recv_key[PP_AUTH_KEY_LEN];
  uint64_t send_seq; /* sequence number of the next frame sealed */
  uint64_t recv_seq; /* sequence number the next opened frame must carry */
  int failed;        /* a frame failed to open: the session is dead */
} pp_session;

/* pp_auth_init: prepare a handshake for `role` with the shared secret
 * (1..PP_AUTH_SECRET_MAX bytes, copied into a derived key; the caller keeps
 * ownership of `secret`). Returns 0, PP_EINVAL (bad role or length) or
 * PP_EIO (libcrypto failed). On failure *a is cleared. */
int pp_auth_init(pp_auth *a, int role, const uint8_t *secret, size_t len);

/* pp_auth_start: client only. Draw the client nonce and append the HELLO
 * frame to out. Returns 0, PP_ESTATE (server, or already started),
 * PP_ENOMEM (out unchanged) or PP_EIO (no random bytes). */
int pp_auth_start(pp_auth *a, pp_buf *out);

/* pp_auth_next: cut one pre-authentication frame off the front of `in`.
 * Checks the magic and that the payload is at most PP_AUTH_MAX_PREAUTH_FRAME
 * bytes; version and type are left to pp_auth_feed (so a version mismatch is
 * reported as such). Returns 1 with *h and *payload filled (payload points
 * into `in`; consume PP_FRAME_HDR + h->length when done), 0 when more bytes
 * are needed, or PP_EMAGIC / PP_ETOOBIG: close the connection. */
int pp_auth_next(pp_buf *in, pp_frame_hdr *h, const uint8_t **payload);

/* pp_auth_feed: process one handshake frame from the peer (h->length bytes
 * at payload). May append this side's reply to `out`.
 * Returns 0 (continue: write out, wait for the next frame), 1 (authenticated:
 * write out, then call pp_auth_session), or a negative error:
 *   PP_EAUTH     the peer did not prove the secret, or told us ours was wrong
 *   PP_EVERSION  protocol version mismatch (detected here or reported by peer)
 *   PP_EPROTO    unexpected type, bad length, nonzero header fields, a peer
 *                that echoed our nonce, or an AUTH_FAIL with an unknown reason
 *   PP_ESTATE    called after the handshake finished or failed
 *   PP_ENOMEM / PP_EIO   out of memory, libcrypto failed
 * After an error the object is dead (key material already wiped) and `out`
 * may hold a final AUTH_FAIL frame: write it, then close. */
int pp_auth_feed(pp_auth *a, const pp_frame_hdr *h, const uint8_t *payload,
                 pp_buf *out);

/* pp_auth_session: after pp_auth_feed returned 1, fill *s with this side's
 * send/receive keys and sequence numbers 0. Returns 0 or PP_ESTATE (the peer
 * has not proved the secret: no keys). */
int pp_auth_session(const pp_auth *a, pp_session *s);

/* pp_auth_append_fail: append an AUTH_FAIL frame with reason (enum
 * pp_auth_fail_reason) and this side's version to out. 0 or PP_ENOMEM. */
int pp_auth_append_fail(pp_buf *out, uint32_t reason);

/* pp_auth_clear: wipe every byte of *a (OPENSSL_cleanse). Safe on a
 * zeroed or already cleared object. */
void pp_auth_clear(pp_auth *a);

/* pp_session_seal: append one sealed frame (header, payload, MAC) for
 * (type, flags, id, attempt) to out and advance the send sequence number.
 * Returns 0, PP_EINVAL (a handshake type, 16..19), PP_ETOOBIG (len >
 * UINT32_MAX), PP_ENOMEM, PP_ESTATE (session failed or sequence space
 * exhausted) or PP_EIO. On failure out and the sequence number are
 * unchanged. */
int pp_session_seal(pp_session *s, pp_buf *out, uint8_t type, uint32_t flags,
                    uint64_t id, uint32_t attempt, const void *payload,
                    size_t len);

/* pp_session_seal_tail: seal a frame the caller has just built in pieces
 * (pp_frame_encode_hdr, then payload appends): it is the LAST frame_len
 * bytes of out, header first (frame_len = PP_FRAME_HDR + payload length; not
 * an offset, so a compaction of out between the pieces does not matter).
 * Appends the MAC and advances the send sequence number. Returns 0, PP_EINVAL
 * (those bytes are not one pp frame of a non-handshake type whose header
 * length covers exactly the rest), PP_ENOMEM, PP_ESTATE or PP_EIO; on failure
 * out and the sequence number are unchanged. */
int pp_session_seal_tail(pp_session *s, pp_buf *out, size_t frame_len);

/* pp_session_open: verify one received sealed frame: h is its decoded
 * header, payload_and_mac the avail bytes after the header (at least
 * h->length + PP_AUTH_MAC_LEN). Verifies the MAC in constant time against
 * the expected receive sequence number and advances it. Returns 0, PP_EAUTH
 * (altered, replayed, reordered, reflected or forged), PP_EINVAL (avail too
 * short), PP_ESTATE (an earlier frame failed: the session is dead) or PP_EIO.
 * Any failure kills the session; the caller must close the connection. */
int pp_session_open(pp_session *s, const pp_frame_hdr *h,
                    const uint8_t *payload_and_mac, size_t avail);

/* pp_session_next: pp_frame_next for sealed frames. Validates the header
 * (magic, version, type, payload <= max_len) before waiting for the payload,
 * then opens the frame. Returns 1 with *h and *payload filled (pointing into
 * `in`; consume PP_SESSION_FRAME_SIZE(h) bytes when done), 0 when more bytes
 * are needed, or a negative error (PP_EMAGIC, PP_EVERSION, PP_ETYPE,
 * PP_ETOOBIG, PP_EPROTO for a handshake type, PP_EAUTH, PP_ESTATE, PP_EIO):
 * close the connection; the session is dead. */
int pp_session_next(pp_session *s, pp_buf *in, uint32_t max_len,
                    pp_frame_hdr *h, const uint8_t **payload);

/* pp_session_clear: wipe every byte of *s (OPENSSL_cleanse). */
void pp_session_clear(pp_session *s);

/* pp_auth_derive_key: a 32-byte key for a purpose other than the TCP
 * handshake: HKDF-Expand(K0, label) where K0 = HKDF-Extract("pp-auth-v1",
 * secret) as in the handshake. Returns 0, PP_EINVAL (secret length not
 * 1..PP_AUTH_SECRET_MAX, or no label) or PP_EIO. Any thread. */
int pp_auth_derive_key(const uint8_t *secret, size_t len, const char *label,
                       uint8_t out[PP_AUTH_KEY_LEN]);

/* pp_auth_hmac: out = HMAC-SHA256(key[32], data[0..len)). 0 or PP_EIO. Any
 * thread. */
int pp_auth_hmac(const uint8_t key[PP_AUTH_KEY_LEN], const void *data,
                 size_t len, uint8_t out[32]);

/* pp_auth_equal: constant-time comparison of n bytes: 1 if equal, else 0. */
int pp_auth_equal(const void *a, const void *b, size_t n);

/* pp_auth_random: n bytes from the CSPRNG. 0 or PP_EIO. Any thread. */
int pp_auth_random(void *p, size_t n);

/* pp_auth_wipe: overwrite n bytes of key material (not optimised away). */
void pp_auth_wipe(void *p, size_t n);

/* pp_auth_strerror: pp_strerror() that also names PP_EAUTH. Static string. */
const char *pp_auth_strerror(int err);

#endif
