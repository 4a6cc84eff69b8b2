/* test_auth.c — the TCP handshake and sealed frames (src/core/auth.[ch]):
 * successful handshakes, wrong secrets, malformed/oversized/truncated
 * handshake frames, replayed handshakes, version mismatches, and sealed
 * frames that are altered, replayed, reordered, reflected or spliced from
 * another connection. Everything runs in memory: the test moves the bytes. */
#include "check.h"

#include "auth.h"
#include "buf.h"
#include "frame.h"
#include "pp_common.h"
#include "stretch.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NEED_MORE 100 /* feed_one: no complete frame on the wire */

static const uint8_t SECRET[] = "correct horse battery staple";
static const uint8_t OTHER[] = "correct horse battery stapler";

/* copy_buf: append src's unread bytes to dst. */
static void copy_buf(pp_buf *dst, const pp_buf *src) {
  CHECK(pp_buf_append(dst, src->data + src->off, pp_buf_avail(src)) == 0);
}

/* raw_frame: append a handshake-style frame with every header field chosen
 * by the caller (so that wrong versions and nonzero fields can be sent). */
static void raw_frame(pp_buf *b, uint8_t version, uint8_t type,
                      uint32_t flags, uint32_t attempt, uint64_t id,
                      const void *p, uint32_t len) {
  uint8_t h[PP_FRAME_HDR];
  pp_frame_hdr fh = {PP_PROTO_VERSION, type, flags, len, attempt, id};
  pp_frame_encode_hdr(h, &fh);
  h[2] = version;
  CHECK(pp_buf_append(b, h, sizeof h) == 0);
  CHECK(pp_buf_append(b, p, len) == 0);
}

/* feed_one: cut one pre-auth frame off wire and feed it to a. Returns
 * pp_auth_feed's result, pp_auth_next's error, or NEED_MORE. */
static int feed_one(pp_auth *a, pp_buf *wire, pp_buf *out) {
  pp_frame_hdr h;
  const uint8_t *p = NULL;
  int rc = pp_auth_next(wire, &h, &p);
  if (rc != 1)
    return rc == 0 ? NEED_MORE : rc;
  rc = pp_auth_feed(a, &h, p, out);
  pp_buf_consume(wire, PP_FRAME_HDR + h.length);
  return rc;
}

/* fail_reason: the reason word of the AUTH_FAIL frame that is the whole of
 * b, or -1 when b is not exactly one AUTH_FAIL frame. */
static long fail_reason(const pp_buf *b) {
  const uint8_t *p = b->data + b->off;
  if (pp_buf_avail(b) != PP_FRAME_HDR + 8 || p[3] != PP_MSG_AUTH_FAIL ||
      pp_get_u32(p + 8) != 8)
    return -1;
  return (long)pp_get_u32(p + PP_FRAME_HDR);
}

/* The four handshake messages as they went over the wire. */
typedef struct msgs {
  pp_buf hello, chal, cproof, sproof;
} msgs;

static void msgs_init(msgs *m) {
  pp_buf_init(&m->hello);
  pp_buf_init(&m->chal);
  pp_buf_init(&m->cproof);
  pp_buf_init(&m->sproof);
}

static void msgs_free(msgs *m) {
  pp_buf_free(&m->hello);
  pp_buf_free(&m->chal);
  pp_buf_free(&m->cproof);
  pp_buf_free(&m->sproof);
}

/* run_hs: a full handshake between c (secret sc) and s (secret ss), the
 * messages recorded in m. *rcc / *rcs get each side's last feed result. */
static void run_hs(pp_auth *c, const uint8_t *sc, size_t lc, pp_auth *s,
                   const uint8_t *ss, size_t ls, int *rcc, int *rcs,
                   msgs *m) {
  pp_buf wire;
  pp_buf_init(&wire);
  *rcc = *rcs = NEED_MORE;
  CHECK(pp_auth_init(c, PP_AUTH_CLIENT, sc, lc) == 0);
  CHECK(pp_auth_init(s, PP_AUTH_SERVER, ss, ls) == 0);
  CHECK(pp_auth_start(c, &m->hello) == 0);
  copy_buf(&wire, &m->hello);
  *rcs = feed_one(s, &wire, &m->chal);
  CHECK(pp_buf_avail(&wire) == 0);
  if (*rcs != 0)
    goto exit;
  copy_buf(&wire, &m->chal);
  *rcc = feed_one(c, &wire, &m->cproof);
  if (*rcc != 0)
    goto exit;
  copy_buf(&wire, &m->cproof);
  *rcs = feed_one(s, &wire, &m->sproof);
  copy_buf(&wire, &m->sproof);
  *rcc = feed_one(c, &wire, &m->cproof); /* the client sends nothing more */
exit:
  pp_buf_free(&wire);
}

static int all_zero(const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i] != 0)
      return 0;
  return 1;
}

/* handshake: authenticate a fresh client/server pair and return their
 * sessions (both auth objects cleared). */
static void handshake(pp_session *cs, pp_session *ss) {
  pp_auth c, s;
  msgs m;
  int rcc, rcs;
  msgs_init(&m);
  run_hs(&c, SECRET, sizeof SECRET - 1, &s, SECRET, sizeof SECRET - 1, &rcc,
         &rcs, &m);
  CHECK(rcc == 1 && rcs == 1);
  CHECK(pp_auth_session(&c, cs) == 0);
  CHECK(pp_auth_session(&s, ss) == 0);
  pp_auth_clear(&c);
  pp_auth_clear(&s);
  msgs_free(&m);
}

/* ---- handshake ----------------------------------------------------------- */

static void test_handshake_ok(void) {
  static uint8_t big[PP_AUTH_SECRET_MAX];
  static const uint8_t one[1] = {0};
  const struct {
    const uint8_t *p;
    size_t n;
  } secrets[] = {{SECRET, sizeof SECRET - 1}, {one, 1}, {big, sizeof big}};
  for (size_t i = 0; i < sizeof big; i++)
    big[i] = (uint8_t)(i * 7 + 1);
  uint8_t prev_key[PP_AUTH_KEY_LEN] = {0};

  for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++) {
    pp_auth c, s;
    pp_session cs, ss;
    msgs m;
    int rcc, rcs;
    msgs_init(&m);
    run_hs(&c, secrets[i].p, secrets[i].n, &s, secrets[i].p, secrets[i].n,
           &rcc, &rcs, &m);
    CHECKF(rcc == 1 && rcs == 1, "secret %zu: client %d server %d", i, rcc,
           rcs);
    /* message sizes: tiny, and what the protocol document says */
    CHECK(pp_buf_avail(&m.hello) == PP_FRAME_HDR + 36);
    CHECK(pp_buf_avail(&m.chal) == PP_FRAME_HDR + 36);
    CHECK(pp_buf_avail(&m.cproof) == PP_FRAME_HDR + 32);
    CHECK(pp_buf_avail(&m.sproof) == PP_FRAME_HDR + 32);
    CHECK(m.hello.data[3] == PP_MSG_AUTH_HELLO);
    CHECK(m.chal.data[3] == PP_MSG_AUTH_CHALLENGE);
    CHECK(m.cproof.data[3] == PP_MSG_AUTH_PROOF);
    CHECK(m.sproof.data[3] == PP_MSG_AUTH_PROOF);
    /* nonces are fresh: client and server nonce differ */
    CHECK(memcmp(m.hello.data + 28, m.chal.data + 28, 32) != 0);
    /* proofs differ by role */
    CHECK(memcmp(m.cproof.data + 24, m.sproof.data + 24, 32) != 0);

    CHECK(pp_auth_session(&c, &cs) == 0);
    CHECK(pp_auth_session(&s, &ss) == 0);
    CHECK(memcmp(cs.send_key, ss.recv_key, PP_AUTH_KEY_LEN) == 0);
    CHECK(memcmp(cs.recv_key, ss.send_key, PP_AUTH_KEY_LEN) == 0);
    /* keys differ per direction */
    CHECK(memcmp(cs.send_key, cs.recv_key, PP_AUTH_KEY_LEN) != 0);
    CHECK(!all_zero(cs.send_key, PP_AUTH_KEY_LEN));
    CHECK(cs.send_seq == 0 && cs.recv_seq == 0 && !cs.failed);
    /* and per connection */
    CHECK(memcmp(prev_key, cs.send_key, PP_AUTH_KEY_LEN) != 0);
    memcpy(prev_key, cs.send_key, PP_AUTH_KEY_LEN);

    /* a finished handshake takes no more frames */
    pp_buf out;
    pp_buf_init(&out);
    pp_buf wire;
    pp_buf_init(&wire);
    copy_buf(&wire, &m.cproof);
    CHECK(feed_one(&s, &wire, &out) == PP_ESTATE);
    CHECK(pp_buf_avail(&out) == 0);
    CHECK(pp_auth_session(&s, &ss) == 0); /* still usable */
    pp_buf_free(&wire);
    pp_buf_free(&out);

    pp_session_clear(&cs);
    pp_session_clear(&ss);
    pp_auth_clear(&c);
    pp_auth_clear(&s);
    msgs_free(&m);
  }

  /* same secret, two connections: different session keys */
  pp_session a1, b1, a2, b2;
  handshake(&a1, &b1);
  handshake(&a2, &b2);
  CHECK(memcmp(a1.send_key, a2.send_key, PP_AUTH_KEY_LEN) != 0);
  CHECK(memcmp(a1.recv_key, a2.recv_key, PP_AUTH_KEY_LEN) != 0);
}

/* The whole handshake through one stream per direction, bytes arriving one at
 * a time, and session frames already queued behind the last handshake frame. */
static void test_handshake_stream(void) {
  pp_auth c, s;
  pp_buf c2s, s2c, cin, sin;
  int rcc = 0, rcs = 0;
  pp_buf_init(&c2s);
  pp_buf_init(&s2c);
  pp_buf_init(&cin);
  pp_buf_init(&sin);
  CHECK(pp_auth_init(&c, PP_AUTH_CLIENT, SECRET, sizeof SECRET - 1) == 0);
  CHECK(pp_auth_init(&s, PP_AUTH_SERVER, SECRET, sizeof SECRET - 1) == 0);
  CHECK(pp_auth_start(&c, &c2s) == 0);
  for (int round = 0; round < 1000 && (rcc != 1 || rcs != 1); round++) {
    if (pp_buf_avail(&c2s) > 0 && rcs == 0) { /* one byte client -> server */
      CHECK(pp_buf_append(&sin, c2s.data + c2s.off, 1) == 0);
      pp_buf_consume(&c2s, 1);
      int rc = feed_one(&s, &sin, &s2c);
      if (rc != NEED_MORE)
        rcs = rc;
      if (rcs == 1) { /* the server may talk at once: queue a sealed frame */
        pp_session ss;
        CHECK(pp_auth_session(&s, &ss) == 0);
        CHECK(pp_session_seal(&ss, &s2c, PP_MSG_RESULT, 0, 0, 0, "hi", 2) == 0);
        pp_session_clear(&ss);
      }
    }
    if (pp_buf_avail(&s2c) > 0 && rcc == 0) { /* one byte server -> client */
      CHECK(pp_buf_append(&cin, s2c.data + s2c.off, 1) == 0);
      pp_buf_consume(&s2c, 1);
      int rc = feed_one(&c, &cin, &c2s);
      if (rc != NEED_MORE)
        rcc = rc;
    }
  }
  CHECK(rcc == 1 && rcs == 1);
  /* the rest of that frame arrives; the client opens it */
  copy_buf(&cin, &s2c);
  pp_session cs;
  pp_frame_hdr h;
  const uint8_t *p;
  CHECK(pp_auth_session(&c, &cs) == 0);
  CHECK(pp_session_next(&cs, &cin, 1024, &h, &p) == 1);
  CHECK(h.type == PP_MSG_RESULT && h.length == 2 && memcmp(p, "hi", 2) == 0);
  pp_buf_consume(&cin, PP_SESSION_FRAME_SIZE(&h));
  CHECK(pp_buf_avail(&cin) == 0);
  pp_session_clear(&cs);
  pp_auth_clear(&c);
  pp_auth_clear(&s);
  pp_buf_free(&c2s);
  pp_buf_free(&s2c);
  pp_buf_free(&cin);
  pp_buf_free(&sin);
}

static void test_wrong_secret(void) {
  for (int which = 0; which < 2; which++) {
    pp_auth c, s;
    pp_session sess;
    msgs m;
    int rcc, rcs;
    msgs_init(&m);
    if (which == 0) /* the client has the wrong secret */
      run_hs(&c, OTHER, sizeof OTHER - 1, &s, SECRET, sizeof SECRET - 1, &rcc,
             &rcs, &m);
    else /* the server has */
      run_hs(&c, SECRET, sizeof SECRET - 1, &s, OTHER, 3, &rcc, &rcs, &m);
    CHECKF(rcs == PP_EAUTH, "server %d", rcs);
    CHECKF(rcc == PP_EAUTH, "client %d", rcc); /* told by AUTH_FAIL */
    CHECK(fail_reason(&m.sproof) == PP_AUTH_FAIL_AUTH);
    /* neither side has keys; the server never sent its proof */
    CHECK(pp_auth_session(&s, &sess) == PP_ESTATE);
    CHECK(pp_auth_session(&c, &sess) == PP_ESTATE);
    /* key material is gone already */
    CHECK(all_zero(s.key_c2s, PP_AUTH_KEY_LEN) &&
          all_zero(s.base_key, PP_AUTH_KEY_LEN));
    CHECK(all_zero(c.key_c2s, PP_AUTH_KEY_LEN) &&
          all_zero(c.nonce_c, PP_AUTH_NONCE_LEN));
    /* and dead objects stay dead */
    pp_buf wire, out;
    pp_buf_init(&wire);
    pp_buf_init(&out);
    copy_buf(&wire, &m.cproof);
    CHECK(feed_one(&s, &wire, &out) == PP_ESTATE);
    CHECK(pp_buf_avail(&out) == 0);
    pp_buf_free(&wire);
    pp_buf_free(&out);
    pp_auth_clear(&c);
    pp_auth_clear(&s);
    msgs_free(&m);
  }

  /* an impostor server that does not know the secret: whatever it sends as
   * its proof, the client refuses it and never gets keys */
  pp_auth c, s;
  pp_session sess;
  msgs m;
  int rcc, rcs;
  msgs_init(&m);
  run_hs(&c, SECRET, sizeof SECRET - 1, &s, SECRET, sizeof SECRET - 1, &rcc,
         &rcs, &m);
  CHECK(rcc == 1 && rcs == 1);
  pp_auth_clear(&c);
  pp_auth_clear(&s);
  pp_buf wire, out, fake;
  pp_buf_init(&wire);
  pp_buf_init(&out);
  pp_buf_init(&fake);
  uint8_t chal[36], proof[32];
  pp_put_u32(chal, PP_AUTH_VERSION);
  memset(chal + 4, 0x5a, 32);
  memset(proof, 0xa5, sizeof proof);
  CHECK(pp_auth_init(&c, PP_AUTH_CLIENT, SECRET, sizeof SECRET - 1) == 0);
  CHECK(pp_auth_start(&c, &out) == 0);
  raw_frame(&wire, 1, PP_MSG_AUTH_CHALLENGE, 0, 0, 0, chal, sizeof chal);
  CHECK(feed_one(&c, &wire, &out) == 0);
  /* the impostor reflects the client's own proof back at it */
  raw_frame(&fake, 1, PP_MSG_AUTH_PROOF, 0, 0, 0,
            out.data + out.len - PP_AUTH_PROOF_LEN, PP_AUTH_PROOF_LEN);
  pp_auth c2 = c; /* try twice from the same state */
  pp_buf_consume(&out, pp_buf_avail(&out));
  CHECK(feed_one(&c, &fake, &out) == PP_EAUTH);
  CHECK(fail_reason(&out) == PP_AUTH_FAIL_AUTH);
  CHECK(pp_auth_session(&c, &sess) == PP_ESTATE);
  raw_frame(&wire, 1, PP_MSG_AUTH_PROOF, 0, 0, 0, proof, sizeof proof);
  CHECK(feed_one(&c2, &wire, &out) == PP_EAUTH);
  CHECK(pp_auth_session(&c2, &sess) == PP_ESTATE);
  pp_auth_clear(&c);
  pp_auth_clear(&c2);
  pp_buf_free(&wire);
  pp_buf_free(&out);
  pp_buf_free(&fake);
  msgs_free(&m);
}

static void test_bad_args_and_states(void) {
  pp_auth a;
  pp_buf out;
  pp_session sess;
  pp_buf_init(&out);
  CHECK(pp_auth_init(&a, 0, SECRET, 4) == PP_EINVAL);
  CHECK(pp_auth_init(&a, 3, SECRET, 4) == PP_EINVAL);
  CHECK(pp_auth_init(&a, PP_AUTH_CLIENT, SECRET, 0) == PP_EINVAL);
  CHECK(pp_auth_init(&a, PP_AUTH_CLIENT, NULL, 4) == PP_EINVAL);
  CHECK(pp_auth_init(&a, PP_AUTH_SERVER, SECRET, PP_AUTH_SECRET_MAX + 1) ==
        PP_EINVAL);
  CHECK(all_zero(&a, sizeof a));
  /* a server never starts; a client starts once and not before feed */
  CHECK(pp_auth_init(&a, PP_AUTH_SERVER, SECRET, 4) == 0);
  CHECK(pp_auth_start(&a, &out) == PP_ESTATE);
  CHECK(pp_buf_avail(&out) == 0);
  pp_auth_clear(&a);
  CHECK(pp_auth_init(&a, PP_AUTH_CLIENT, SECRET, 4) == 0);
  pp_frame_hdr h = {1, PP_MSG_AUTH_CHALLENGE, 0, 0, 0, 0};
  CHECK(pp_auth_feed(&a, &h, NULL, &out) == PP_ESTATE);
  CHECK(pp_auth_start(&a, &out) == 0);
  CHECK(pp_auth_start(&a, &out) == PP_ESTATE);
  CHECK(pp_auth_session(&a, &sess) == PP_ESTATE);
  pp_auth_clear(&a);
  pp_buf_free(&out);
  CHECK(strcmp(pp_auth_strerror(PP_EAUTH), "authentication failed") == 0);
  CHECK(strcmp(pp_auth_strerror(PP_EPROTO), pp_strerror(PP_EPROTO)) == 0);
}

/* pp_auth_next on garbage, partial, and oversized input. */
static void test_preauth_framing(void) {
  pp_buf in;
  pp_frame_hdr h;
  const uint8_t *p;
  pp_buf_init(&in);
  CHECK(pp_auth_next(&in, &h, &p) == 0);
  CHECK(pp_buf_append(&in, "G", 1) == 0);
  CHECK(pp_auth_next(&in, &h, &p) == 0);
  CHECK(pp_buf_append(&in, "ET / HTTP/1.1\r\nHost: x\r\n\r\n", 26) == 0);
  CHECK(pp_auth_next(&in, &h, &p) == PP_EMAGIC);
  pp_buf_free(&in);

  /* a header announcing more than the pre-auth limit: refused at once */
  uint8_t big[PP_AUTH_MAX_PREAUTH_FRAME + 1];
  memset(big, 0, sizeof big);
  raw_frame(&in, 1, PP_MSG_AUTH_HELLO, 0, 0, 0, big, sizeof big);
  in.len = in.off + PP_FRAME_HDR; /* only the header has arrived */
  CHECK(pp_auth_next(&in, &h, &p) == PP_ETOOBIG);
  pp_buf_free(&in);
  raw_frame(&in, 1, PP_MSG_JOB, 0, 0, 0, big, 0);
  pp_put_u32(in.data + 8, 0x40000000u); /* a 1 GiB JOB before auth */
  CHECK(pp_auth_next(&in, &h, &p) == PP_ETOOBIG);
  pp_buf_free(&in);
  /* the limit itself is fine; incomplete is "need more" */
  raw_frame(&in, 1, PP_MSG_AUTH_HELLO, 0, 0, 0, big, PP_AUTH_MAX_PREAUTH_FRAME);
  size_t full = in.len;
  in.len -= 1;
  CHECK(pp_auth_next(&in, &h, &p) == 0);
  in.len = full;
  CHECK(pp_auth_next(&in, &h, &p) == 1);
  CHECK(h.length == PP_AUTH_MAX_PREAUTH_FRAME && p == in.data + PP_FRAME_HDR);
  pp_buf_free(&in);
  /* pp_auth_next leaves version and type to pp_auth_feed */
  raw_frame(&in, 7, 200, 0, 0, 0, big, 3);
  CHECK(pp_auth_next(&in, &h, &p) == 1);
  CHECK(h.version == 7 && h.type == 200 && h.length == 3);
  pp_buf_free(&in);
}

/* Feed one malformed frame to a fresh server (or, with chal, to a client
 * that has sent HELLO) and expect err plus an AUTH_FAIL with reason. */
static void expect_reject(int client, uint8_t version, uint8_t type,
                          uint32_t flags, uint32_t attempt, uint64_t id,
                          const void *p, uint32_t len, int err, long reason,
                          int line) {
  pp_auth a;
  pp_buf wire, out;
  pp_session sess;
  pp_buf_init(&wire);
  pp_buf_init(&out);
  CHECK(pp_auth_init(&a, client ? PP_AUTH_CLIENT : PP_AUTH_SERVER, SECRET,
                     sizeof SECRET - 1) == 0);
  if (client) {
    CHECK(pp_auth_start(&a, &out) == 0);
    pp_buf_consume(&out, pp_buf_avail(&out));
  }
  raw_frame(&wire, version, type, flags, attempt, id, p, len);
  int rc = feed_one(&a, &wire, &out);
  CHECKF(rc == err, "line %d: got %d want %d", line, rc, err);
  CHECKF(fail_reason(&out) == reason, "line %d: reason %ld want %ld", line,
         fail_reason(&out), reason);
  CHECK(pp_auth_session(&a, &sess) == PP_ESTATE);
  pp_auth_clear(&a);
  pp_buf_free(&wire);
  pp_buf_free(&out);
}

static void test_malformed_handshake(void) {
  uint8_t hello[64];
  memset(hello, 0x11, sizeof hello);
  pp_put_u32(hello, PP_AUTH_VERSION);
  const long P = PP_AUTH_FAIL_PROTO;
  /* server: truncated, overlong, empty HELLO */
  expect_reject(0, 1, PP_MSG_AUTH_HELLO, 0, 0, 0, hello, 35, PP_EPROTO, P, __LINE__);
  expect_reject(0, 1, PP_MSG_AUTH_HELLO, 0, 0, 0, hello, 37, PP_EPROTO, P, __LINE__);
  expect_reject(0, 1, PP_MSG_AUTH_HELLO, 0, 0, 0, hello, 0, PP_EPROTO, P, __LINE__);
  /* header fields that must be zero */
  expect_reject(0, 1, PP_MSG_AUTH_HELLO, 1, 0, 0, hello, 36, PP_EPROTO, P, __LINE__);
  expect_reject(0, 1, PP_MSG_AUTH_HELLO, 0, 1, 0, hello, 36, PP_EPROTO, P, __LINE__);
  expect_reject(0, 1, PP_MSG_AUTH_HELLO, 0, 0, 1, hello, 36, PP_EPROTO, P, __LINE__);
  /* anything but HELLO first: a proof, a challenge, a job, garbage type */
  expect_reject(0, 1, PP_MSG_AUTH_PROOF, 0, 0, 0, hello, 32, PP_EPROTO, P, __LINE__);
  expect_reject(0, 1, PP_MSG_AUTH_CHALLENGE, 0, 0, 0, hello, 36, PP_EPROTO, P, __LINE__);
  expect_reject(0, 1, PP_MSG_JOB, 0, 0, 0, hello, 36, PP_EPROTO, P, __LINE__);
  expect_reject(0, 1, 0, 0, 0, 0, hello, 36, PP_EPROTO, P, __LINE__);
  expect_reject(0, 1, 255, 0, 0, 0, hello, 36, PP_EPROTO, P, __LINE__);
  /* client: truncated challenge, a HELLO instead of a challenge, a proof
   * before the challenge */
  expect_reject(1, 1, PP_MSG_AUTH_CHALLENGE, 0, 0, 0, hello, 20, PP_EPROTO, P, __LINE__);
  expect_reject(1, 1, PP_MSG_AUTH_HELLO, 0, 0, 0, hello, 36, PP_EPROTO, P, __LINE__);
  expect_reject(1, 1, PP_MSG_AUTH_PROOF, 0, 0, 0, hello, 32, PP_EPROTO, P, __LINE__);
  /* an AUTH_FAIL from the peer is never answered; its reason is mapped */
  uint8_t f[8];
  pp_put_u32(f, 99);
  pp_put_u32(f + 4, 1);
  expect_reject(1, 1, PP_MSG_AUTH_FAIL, 0, 0, 0, f, 8, PP_EPROTO, -1, __LINE__);
  expect_reject(1, 1, PP_MSG_AUTH_FAIL, 0, 0, 0, f, 3, PP_EPROTO, -1, __LINE__);
  pp_put_u32(f, PP_AUTH_FAIL_AUTH);
  expect_reject(1, 1, PP_MSG_AUTH_FAIL, 0, 0, 0, f, 8, PP_EAUTH, -1, __LINE__);
  expect_reject(0, 1, PP_MSG_AUTH_FAIL, 0, 0, 0, f, 8, PP_EAUTH, -1, __LINE__);

  /* truncated proofs, on both sides, after a good start */
  for (int side = 0; side < 2; side++) {
    pp_auth c, s;
    pp_buf c2s, s2c, out;
    pp_buf_init(&c2s);
    pp_buf_init(&s2c);
    pp_buf_init(&out);
    CHECK(pp_auth_init(&c, PP_AUTH_CLIENT, SECRET, sizeof SECRET - 1) == 0);
    CHECK(pp_auth_init(&s, PP_AUTH_SERVER, SECRET, sizeof SECRET - 1) == 0);
    CHECK(pp_auth_start(&c, &c2s) == 0);
    CHECK(feed_one(&s, &c2s, &s2c) == 0); /* the challenge */
    CHECK(feed_one(&c, &s2c, &c2s) == 0); /* the client proof */
    if (side == 0) { /* server gets 31 bytes of proof */
      pp_put_u32(c2s.data + c2s.off + 8, 31);
      c2s.len--;
      CHECK(feed_one(&s, &c2s, &out) == PP_EPROTO);
    } else { /* client gets a 33-byte server proof */
      CHECK(feed_one(&s, &c2s, &s2c) == 1);
      pp_put_u32(s2c.data + s2c.off + 8, 33);
      CHECK(pp_buf_append(&s2c, "x", 1) == 0);
      CHECK(feed_one(&c, &s2c, &out) == PP_EPROTO);
    }
    CHECK(fail_reason(&out) == PP_AUTH_FAIL_PROTO);
    pp_auth_clear(&c);
    pp_auth_clear(&s);
    pp_buf_free(&c2s);
    pp_buf_free(&s2c);
    pp_buf_free(&out);
  }

  /* a "server" that echoes the client's nonce as its own */
  pp_auth c;
  pp_buf hello_b, out;
  pp_buf_init(&hello_b);
  pp_buf_init(&out);
  CHECK(pp_auth_init(&c, PP_AUTH_CLIENT, SECRET, sizeof SECRET - 1) == 0);
  CHECK(pp_auth_start(&c, &hello_b) == 0);
  hello_b.data[3] = PP_MSG_AUTH_CHALLENGE;
  CHECK(feed_one(&c, &hello_b, &out) == PP_EPROTO);
  CHECK(fail_reason(&out) == PP_AUTH_FAIL_PROTO);
  pp_auth_clear(&c);
  pp_buf_free(&hello_b);
  pp_buf_free(&out);
}

static void test_version_mismatch(void) {
  uint8_t hello[36];
  memset(hello, 0x22, sizeof hello);
  const long V = PP_AUTH_FAIL_VERSION;
  /* a client of version 2 (header and payload), or with only one of them */
  pp_put_u32(hello, 2);
  expect_reject(0, 2, PP_MSG_AUTH_HELLO, 0, 0, 0, hello, 36, PP_EVERSION, V, __LINE__);
  expect_reject(0, 1, PP_MSG_AUTH_HELLO, 0, 0, 0, hello, 36, PP_EVERSION, V, __LINE__);
  pp_put_u32(hello, 1);
  expect_reject(0, 2, PP_MSG_AUTH_HELLO, 0, 0, 0, hello, 36, PP_EVERSION, V, __LINE__);
  /* a future version may change the payload: version wins over length */
  expect_reject(0, 2, PP_MSG_AUTH_HELLO, 0, 0, 0, hello, 20, PP_EVERSION, V, __LINE__);
  /* a server answering with another version */
  pp_put_u32(hello, 2);
  expect_reject(1, 1, PP_MSG_AUTH_CHALLENGE, 0, 0, 0, hello, 36, PP_EVERSION, V, __LINE__);
  expect_reject(1, 2, PP_MSG_AUTH_CHALLENGE, 0, 0, 0, hello, 36, PP_EVERSION, V, __LINE__);

  /* both sides see PP_EVERSION: server rejects a v2 HELLO, its AUTH_FAIL
   * reaches a real client */
  pp_auth c, s;
  pp_buf wire, out;
  pp_buf_init(&wire);
  pp_buf_init(&out);
  CHECK(pp_auth_init(&c, PP_AUTH_CLIENT, SECRET, sizeof SECRET - 1) == 0);
  CHECK(pp_auth_init(&s, PP_AUTH_SERVER, SECRET, sizeof SECRET - 1) == 0);
  CHECK(pp_auth_start(&c, &wire) == 0);
  wire.data[wire.off + 2] = 2; /* as if the client spoke version 2 */
  CHECK(feed_one(&s, &wire, &out) == PP_EVERSION);
  CHECK(fail_reason(&out) == PP_AUTH_FAIL_VERSION);
  CHECK(feed_one(&c, &out, &wire) == PP_EVERSION);
  CHECK(pp_buf_avail(&wire) == 0); /* no answer to an AUTH_FAIL */
  pp_auth_clear(&c);
  pp_auth_clear(&s);

  /* ... and the other way: the client rejects a v2 CHALLENGE, its AUTH_FAIL
   * reaches the server waiting for the proof */
  CHECK(pp_auth_init(&c, PP_AUTH_CLIENT, SECRET, sizeof SECRET - 1) == 0);
  CHECK(pp_auth_init(&s, PP_AUTH_SERVER, SECRET, sizeof SECRET - 1) == 0);
  CHECK(pp_auth_start(&c, &wire) == 0);
  CHECK(feed_one(&s, &wire, &out) == 0);
  pp_put_u32(out.data + out.off + PP_FRAME_HDR, 2); /* challenge says v2 */
  CHECK(feed_one(&c, &out, &wire) == PP_EVERSION);
  CHECK(fail_reason(&wire) == PP_AUTH_FAIL_VERSION);
  CHECK(feed_one(&s, &wire, &out) == PP_EVERSION);
  pp_session sess;
  CHECK(pp_auth_session(&s, &sess) == PP_ESTATE);
  pp_auth_clear(&c);
  pp_auth_clear(&s);
  pp_buf_free(&wire);
  pp_buf_free(&out);
}

/* Replaying a recorded handshake: fresh nonces make old proofs useless. */
static void test_replay_handshake(void) {
  pp_auth c, s;
  pp_session sess;
  msgs m;
  int rcc, rcs;
  pp_buf wire, out;
  msgs_init(&m);
  pp_buf_init(&wire);
  pp_buf_init(&out);
  run_hs(&c, SECRET, sizeof SECRET - 1, &s, SECRET, sizeof SECRET - 1, &rcc,
         &rcs, &m);
  CHECK(rcc == 1 && rcs == 1);
  pp_auth_clear(&c);
  pp_auth_clear(&s);

  /* replayed client: a new server sees the old HELLO and old PROOF */
  CHECK(pp_auth_init(&s, PP_AUTH_SERVER, SECRET, sizeof SECRET - 1) == 0);
  copy_buf(&wire, &m.hello);
  CHECK(feed_one(&s, &wire, &out) == 0);
  CHECK(pp_buf_avail(&out) == pp_buf_avail(&m.chal));
  CHECK(memcmp(out.data + out.off + 28, m.chal.data + 28, 32) != 0);
  pp_buf_consume(&out, pp_buf_avail(&out));
  copy_buf(&wire, &m.cproof);
  CHECK(feed_one(&s, &wire, &out) == PP_EAUTH);
  CHECK(fail_reason(&out) == PP_AUTH_FAIL_AUTH);
  CHECK(pp_auth_session(&s, &sess) == PP_ESTATE);
  pp_auth_clear(&s);
  pp_buf_consume(&out, pp_buf_avail(&out));

  /* replayed server: a new client sees the old CHALLENGE and old PROOF */
  CHECK(pp_auth_init(&c, PP_AUTH_CLIENT, SECRET, sizeof SECRET - 1) == 0);
  CHECK(pp_auth_start(&c, &out) == 0);
  pp_buf_consume(&out, pp_buf_avail(&out));
  copy_buf(&wire, &m.chal);
  CHECK(feed_one(&c, &wire, &out) == 0);
  copy_buf(&wire, &m.sproof);
  CHECK(feed_one(&c, &wire, &out) == PP_EAUTH);
  CHECK(pp_auth_session(&c, &sess) == PP_ESTATE);
  pp_auth_clear(&c);

  pp_buf_free(&wire);
  pp_buf_free(&out);
  msgs_free(&m);
}

static void test_clear(void) {
  pp_auth c, s;
  pp_session cs;
  msgs m;
  int rcc, rcs;
  msgs_init(&m);
  run_hs(&c, SECRET, sizeof SECRET - 1, &s, SECRET, sizeof SECRET - 1, &rcc,
         &rcs, &m);
  CHECK(rcc == 1 && rcs == 1);
  /* once done, only the direction keys remain */
  CHECK(all_zero(c.base_key, PP_AUTH_KEY_LEN));
  CHECK(all_zero(s.key_cproof, PP_AUTH_KEY_LEN));
  CHECK(!all_zero(s.key_s2c, PP_AUTH_KEY_LEN));
  CHECK(pp_auth_session(&c, &cs) == 0);
  pp_auth_clear(&c);
  pp_auth_clear(&s);
  CHECK(all_zero(&c, sizeof c));
  CHECK(all_zero(&s, sizeof s));
  CHECK(pp_auth_session(&c, &cs) == PP_ESTATE);
  pp_auth_clear(&c); /* twice is fine */
  CHECK(!all_zero(&cs, sizeof cs));
  pp_session_clear(&cs);
  CHECK(all_zero(&cs, sizeof cs));
  /* a freshly initialised object already holds only derived material */
  CHECK(pp_auth_init(&c, PP_AUTH_CLIENT, SECRET, sizeof SECRET - 1) == 0);
  CHECK(memmem(&c, sizeof c, SECRET, 8) == NULL);
  pp_auth_clear(&c);
  CHECK(all_zero(&c, sizeof c));
  msgs_free(&m);
}

/* ---- sealed frames ------------------------------------------------------- */

/* Many frames both ways, of many sizes, through pp_session_next, some of
 * them arriving a byte at a time. */
static void test_seal_open_many(void) {
  pp_session cs, ss;
  pp_buf c2s, s2c;
  uint8_t *payload = malloc(70000);
  if (!CHECK(payload != NULL))
    return;
  for (size_t i = 0; i < 70000; i++)
    payload[i] = (uint8_t)(i * 31 + 7);
  pp_buf_init(&c2s);
  pp_buf_init(&s2c);
  handshake(&cs, &ss);
  int bad = 0;
  for (uint32_t i = 0; i < 2000; i++) {
    size_t len = (i * 37u) % 3000u;
    if (i % 500 == 499)
      len = 65536 + i; /* a few big ones */
    pp_session *tx = i % 3 == 0 ? &ss : &cs, *rx = i % 3 == 0 ? &cs : &ss;
    pp_buf *wire = i % 3 == 0 ? &s2c : &c2s;
    if (pp_session_seal(tx, wire, PP_MSG_JOB, i, 1000u + i, i * 2u, payload,
                        len) != 0)
      bad++;
    pp_frame_hdr h;
    const uint8_t *p;
    int rc;
    if (i % 101 == 0) { /* byte by byte */
      pp_buf in;
      pp_buf_init(&in);
      size_t n = pp_buf_avail(wire);
      for (size_t k = 0; k + 1 < n; k++) {
        CHECK(pp_buf_append(&in, wire->data + wire->off + k, 1) == 0);
        if (pp_session_next(rx, &in, 1u << 20, &h, &p) != 0)
          bad++;
      }
      CHECK(pp_buf_append(&in, wire->data + wire->off + n - 1, 1) == 0);
      rc = pp_session_next(rx, &in, 1u << 20, &h, &p);
      if (rc != 1 || h.length != len || memcmp(p, payload, len) != 0 ||
          PP_SESSION_FRAME_SIZE(&h) != n)
        bad++;
      pp_buf_free(&in);
      pp_buf_consume(wire, n);
      continue;
    }
    rc = pp_session_next(rx, wire, 1u << 20, &h, &p);
    if (rc != 1 || h.type != PP_MSG_JOB || h.flags != i ||
        h.id != 1000u + i || h.attempt != i * 2u || h.length != len ||
        memcmp(p, payload, len) != 0) {
      bad++;
      continue;
    }
    pp_buf_consume(wire, PP_SESSION_FRAME_SIZE(&h));
  }
  CHECKF(bad == 0, "%d bad frames", bad);
  CHECK(pp_buf_avail(&c2s) == 0 && pp_buf_avail(&s2c) == 0);
  CHECK(cs.send_seq == ss.recv_seq && ss.send_seq == cs.recv_seq);
  CHECK(cs.send_seq + ss.send_seq == 2000);

  /* several frames queued before any is read, then read in order */
  for (int i = 0; i < 50; i++)
    CHECK(pp_session_seal(&cs, &c2s, PP_MSG_RESULT, 0, (uint64_t)i, 0, payload,
                          (size_t)i) == 0);
  for (int i = 0; i < 50; i++) {
    pp_frame_hdr h;
    const uint8_t *p;
    CHECK(pp_session_next(&ss, &c2s, 100, &h, &p) == 1 && h.id == (uint64_t)i);
    pp_buf_consume(&c2s, PP_SESSION_FRAME_SIZE(&h));
  }
  CHECK(pp_session_next(&ss, &c2s, 100, &(pp_frame_hdr){0}, &(const uint8_t *){0}) == 0);

  /* seal_tail: a frame built in pieces seals to the same bytes */
  pp_session a = cs, b = cs;
  pp_buf one, two;
  pp_buf_init(&one);
  pp_buf_init(&two);
  CHECK(pp_session_seal(&a, &one, PP_MSG_FUNC, 1, 2, 3, payload, 100) == 0);
  uint8_t hdr[PP_FRAME_HDR];
  pp_frame_encode_hdr(hdr, &(pp_frame_hdr){1, PP_MSG_FUNC, 1, 100, 3, 2});
  CHECK(pp_buf_append(&two, "junk!", 5) == 0); /* bytes before the frame */
  pp_buf_consume(&two, 1);                      /* ... and a read cursor */
  size_t off = two.len;
  CHECK(pp_buf_append(&two, hdr, sizeof hdr) == 0);
  CHECK(pp_buf_append(&two, payload, 32) == 0);
  CHECK(pp_buf_append(&two, payload + 32, 68) == 0);
  CHECK(pp_session_seal_tail(&b, &two, PP_FRAME_HDR + 100) == 0);
  CHECK(two.len - off == one.len &&
        memcmp(two.data + off, one.data, one.len) == 0);
  CHECK(a.send_seq == b.send_seq);
  /* seal_tail refuses bytes that are not exactly one frame */
  size_t before = two.len;
  CHECK(pp_session_seal_tail(&b, &two, PP_FRAME_HDR + 99) == PP_EINVAL);
  CHECK(pp_session_seal_tail(&b, &two, PP_FRAME_HDR + 100) == PP_EINVAL);
  CHECK(pp_session_seal_tail(&b, &two, 10) == PP_EINVAL);
  CHECK(pp_session_seal_tail(&b, &two, 0) == PP_EINVAL);
  CHECK(pp_session_seal_tail(&b, &two, pp_buf_avail(&two) + 1) == PP_EINVAL);
  CHECK(two.len == before && b.send_seq == a.send_seq);
  /* a frame in a buffer that is compacted between the pieces */
  pp_buf three;
  pp_buf_init(&three);
  CHECK(pp_buf_append(&three, payload, 4000) == 0);
  pp_buf_consume(&three, 3990); /* 10 unread bytes, offset 3990 */
  CHECK(pp_buf_append(&three, hdr, sizeof hdr) == 0);
  CHECK(pp_buf_append(&three, payload, 100) == 0); /* compacts */
  pp_session c3 = cs;
  CHECK(pp_session_seal_tail(&c3, &three, PP_FRAME_HDR + 100) == 0);
  CHECK(pp_buf_avail(&three) == 10 + one.len &&
        memcmp(three.data + three.off + 10, one.data, one.len) == 0);
  pp_buf_free(&three);
  pp_session_clear(&c3);
  /* handshake types are never sealed */
  CHECK(pp_session_seal(&b, &two, PP_MSG_AUTH_PROOF, 0, 0, 0, NULL, 0) ==
        PP_EINVAL);
  CHECK(two.len == before && b.send_seq == a.send_seq);
  pp_buf_free(&one);
  pp_buf_free(&two);

  pp_session_clear(&cs);
  pp_session_clear(&ss);
  pp_buf_free(&c2s);
  pp_buf_free(&s2c);
  free(payload);
}

/* try_open: a copy of rx opens a copy of frame bytes; returns the result. */
static int try_open(const pp_session *rx, const uint8_t *frame, size_t n,
                    uint32_t max_len) {
  pp_session r = *rx;
  pp_buf in;
  pp_frame_hdr h;
  const uint8_t *p;
  pp_buf_init(&in);
  CHECK(pp_buf_append(&in, frame, n) == 0);
  int rc = pp_session_next(&r, &in, max_len, &h, &p);
  pp_buf_free(&in);
  pp_session_clear(&r);
  return rc;
}

static void test_tamper(void) {
  pp_session cs, ss;
  pp_buf w;
  pp_buf_init(&w);
  handshake(&cs, &ss);
  const char msg[] = "the payload of a job";
  CHECK(pp_session_seal(&cs, &w, PP_MSG_JOB, 0, 42, 1, msg, sizeof msg) == 0);
  size_t n = pp_buf_avail(&w);
  CHECK(n == PP_FRAME_HDR + sizeof msg + PP_AUTH_MAC_LEN);
  CHECK(try_open(&ss, w.data, n, 1024) == 1);
  int bad = 0, not_eauth = 0;
  for (size_t i = 0; i < n; i++) {
    for (int bit = 0; bit < 8; bit++) {
      w.data[i] ^= (uint8_t)(1u << bit);
      int rc = try_open(&ss, w.data, n, 1024);
      w.data[i] ^= (uint8_t)(1u << bit);
      if (rc == 1)
        bad++;
      /* outside magic, version, type and length, it is the MAC that fails */
      if ((i >= 12 || (i >= 4 && i < 8)) && rc != PP_EAUTH)
        not_eauth++;
    }
  }
  CHECKF(bad == 0, "%d altered frames accepted", bad);
  CHECKF(not_eauth == 0, "%d altered frames not PP_EAUTH", not_eauth);
  /* a truncated MAC is just "need more"; a dropped payload byte fails */
  CHECK(try_open(&ss, w.data, n - 1, 1024) == 0);
  uint8_t cut[256];
  memcpy(cut, w.data, n);
  memmove(cut + 30, cut + 31, n - 31);
  pp_put_u32(cut + 8, (uint32_t)sizeof msg - 1);
  CHECK(try_open(&ss, cut, n - 1, 1024) == PP_EAUTH);
  /* a limit below the length fails on the header alone */
  CHECK(try_open(&ss, w.data, PP_FRAME_HDR, 8) == PP_ETOOBIG);
  /* a forged frame (no key) and an unsealed frame */
  pp_buf f;
  pp_buf_init(&f);
  CHECK(pp_frame_append(&f, PP_MSG_JOB, 0, 42, 1, msg, sizeof msg) == 0);
  CHECK(pp_buf_append(&f, "0123456789abcdef", 16) == 0);
  CHECK(try_open(&ss, f.data, f.len, 1024) == PP_EAUTH);
  pp_buf_free(&f);
  /* a handshake frame after authentication */
  uint8_t af[8] = {2, 0, 0, 0, 1, 0, 0, 0};
  raw_frame(&f, 1, PP_MSG_AUTH_FAIL, 0, 0, 0, af, 8);
  CHECK(pp_buf_append(&f, "0123456789abcdef", 16) == 0);
  CHECK(try_open(&ss, f.data, f.len, 1024) == PP_EPROTO);
  pp_buf_free(&f);
  /* garbage */
  CHECK(try_open(&ss, (const uint8_t *)"HTTP/1.1 200 OK", 15, 1024) == PP_EMAGIC);

  /* pp_session_open directly: too few bytes is a caller error */
  pp_frame_hdr h;
  CHECK(pp_frame_decode_hdr(w.data, 1024, &h) == 0);
  pp_session r = ss;
  CHECK(pp_session_open(&r, &h, w.data + PP_FRAME_HDR, n - PP_FRAME_HDR - 1) ==
        PP_EINVAL);
  CHECK(pp_session_open(&r, &h, w.data + PP_FRAME_HDR, n - PP_FRAME_HDR) == 0);
  CHECK(r.recv_seq == 1);

  /* after a failure the session is dead, even for a good frame */
  r = ss;
  w.data[PP_FRAME_HDR] ^= 1;
  CHECK(try_open(&r, w.data, n, 1024) == PP_EAUTH);
  pp_frame_hdr h2;
  const uint8_t *p2;
  CHECK(pp_session_next(&r, &w, 1024, &h2, &p2) == PP_EAUTH);
  w.data[PP_FRAME_HDR] ^= 1;
  CHECK(r.failed && r.recv_seq == 0);
  CHECK(pp_session_next(&r, &w, 1024, &h2, &p2) == PP_ESTATE);
  CHECK(pp_session_open(&r, &h, w.data + PP_FRAME_HDR, n - PP_FRAME_HDR) ==
        PP_ESTATE);
  CHECK(pp_session_seal(&r, &f, PP_MSG_BYE, 0, 0, 0, NULL, 0) == PP_ESTATE);
  CHECK(pp_buf_avail(&f) == 0);
  pp_session_clear(&r);
  pp_session_clear(&cs);
  pp_session_clear(&ss);
  pp_buf_free(&w);
  pp_buf_free(&f);
}

/* Replayed, reordered, dropped, reflected, and cross-connection frames. */
static void test_replay_reorder_reflect(void) {
  pp_session cs, ss, cs2, ss2;
  pp_buf f0, f1, f2;
  pp_buf_init(&f0);
  pp_buf_init(&f1);
  pp_buf_init(&f2);
  handshake(&cs, &ss);
  handshake(&cs2, &ss2);
  /* identical content, so only the sequence number tells them apart */
  CHECK(pp_session_seal(&cs, &f0, PP_MSG_JOB, 0, 7, 1, "same", 4) == 0);
  CHECK(pp_session_seal(&cs, &f1, PP_MSG_JOB, 0, 7, 1, "same", 4) == 0);
  CHECK(pp_session_seal(&cs, &f2, PP_MSG_JOB, 0, 7, 1, "same", 4) == 0);
  CHECK(memcmp(f0.data, f1.data, PP_FRAME_HDR + 4) == 0);
  CHECK(memcmp(f0.data + PP_FRAME_HDR + 4, f1.data + PP_FRAME_HDR + 4,
               PP_AUTH_MAC_LEN) != 0);

  pp_session r = ss;
  CHECK(try_open(&r, f0.data, f0.len, 100) == 1);
  /* reordered: f1 before f0, or f0 dropped */
  CHECK(try_open(&r, f1.data, f1.len, 100) == PP_EAUTH);
  CHECK(try_open(&r, f2.data, f2.len, 100) == PP_EAUTH);
  /* in order */
  pp_frame_hdr h;
  const uint8_t *p;
  CHECK(pp_session_next(&r, &f0, 100, &h, &p) == 1);
  /* replayed */
  CHECK(try_open(&r, f0.data, f0.len, 100) == PP_EAUTH);
  CHECK(pp_session_next(&r, &f1, 100, &h, &p) == 1);
  CHECK(try_open(&r, f0.data, f0.len, 100) == PP_EAUTH);
  CHECK(try_open(&r, f1.data, f1.len, 100) == PP_EAUTH);
  CHECK(pp_session_next(&r, &f2, 100, &h, &p) == 1);
  CHECK(r.recv_seq == 3);

  /* reflected: the client's own frame 0 sent back to the client, whose
   * receive sequence number is also 0 */
  CHECK(cs.recv_seq == 0);
  CHECK(try_open(&cs, f0.data, f0.len, 100) == PP_EAUTH);
  /* and a server frame reflected to the server */
  pp_buf sf;
  pp_buf_init(&sf);
  pp_session tx = ss;
  CHECK(pp_session_seal(&tx, &sf, PP_MSG_RESULT, 0, 7, 1, "r", 1) == 0);
  CHECK(try_open(&ss, sf.data, sf.len, 100) == PP_EAUTH);
  CHECK(try_open(&cs, sf.data, sf.len, 100) == 1);
  /* spliced from another connection with the same secret */
  CHECK(try_open(&ss2, f0.data, f0.len, 100) == PP_EAUTH);
  CHECK(try_open(&cs2, sf.data, sf.len, 100) == PP_EAUTH);

  pp_session_clear(&r);
  pp_session_clear(&tx);
  pp_session_clear(&cs);
  pp_session_clear(&ss);
  pp_session_clear(&cs2);
  pp_session_clear(&ss2);
  pp_buf_free(&f0);
  pp_buf_free(&f1);
  pp_buf_free(&f2);
  pp_buf_free(&sf);
}

/* The sequence number space ends: no frame is sealed twice with one number. */
static void test_seq_exhausted(void) {
  pp_session cs, ss;
  pp_buf w;
  pp_buf_init(&w);
  handshake(&cs, &ss);
  cs.send_seq = ss.recv_seq = UINT64_MAX - 1;
  CHECK(pp_session_seal(&cs, &w, PP_MSG_BYE, 0, 0, 0, NULL, 0) == 0);
  CHECK(pp_session_seal(&cs, &w, PP_MSG_BYE, 0, 0, 0, NULL, 0) == PP_ESTATE);
  CHECK(pp_buf_avail(&w) == PP_FRAME_HDR + PP_AUTH_MAC_LEN);
  CHECK(try_open(&ss, w.data, w.len, 0) == 1);
  ss.recv_seq = UINT64_MAX;
  CHECK(try_open(&ss, w.data, w.len, 0) == PP_ESTATE);
  pp_session_clear(&cs);
  pp_session_clear(&ss);
  pp_buf_free(&w);
}

/* the stretched secret: scrypt with pp's parameters (known answer computed
 * with Python's hashlib.scrypt), cached per process, length errors */
static void test_stretch(void) {
  static const uint8_t want[PP_STRETCH_LEN] = {
      0x2a, 0xbe, 0x35, 0x13, 0xae, 0xfd, 0x61, 0x1a, 0x74, 0x02, 0xbf,
      0x9c, 0x23, 0x3b, 0xfe, 0x8b, 0xcf, 0x63, 0xa3, 0x1b, 0x73, 0x0a,
      0xbf, 0xb6, 0x62, 0x61, 0x9f, 0xf6, 0x93, 0x6d, 0x14, 0xcb};
  uint8_t a[PP_STRETCH_LEN], b[PP_STRETCH_LEN], c[PP_STRETCH_LEN];
  CHECK(pp_secret_stretch((const uint8_t *)"sunshine42", 10, a) == PP_OK);
  CHECK(memcmp(a, want, sizeof want) == 0);
  CHECK(pp_secret_stretch((const uint8_t *)"sunshine43", 10, b) == PP_OK);
  CHECK(memcmp(a, b, sizeof a) != 0);
  /* the cache holds the last one: the first again is recomputed, right */
  CHECK(pp_secret_stretch((const uint8_t *)"sunshine42", 10, c) == PP_OK);
  CHECK(memcmp(c, want, sizeof want) == 0);
  CHECK(pp_secret_stretch((const uint8_t *)"sunshine42", 10, c) == PP_OK);
  CHECK(memcmp(c, want, sizeof want) == 0);
  CHECK(pp_secret_stretch((const uint8_t *)"x", 0, c) == PP_EINVAL);
  CHECK(pp_secret_stretch(NULL, 3, c) == PP_EINVAL);
  uint8_t *big = calloc(1, PP_SECRET_MAX + 1);
  CHECK(big != NULL && pp_secret_stretch(big, PP_SECRET_MAX + 1, c) == PP_EINVAL);
  CHECK(big != NULL && pp_secret_stretch(big, PP_SECRET_MAX, c) == PP_OK);
  free(big);
}

int main(void) {
  test_stretch();
  test_handshake_ok();
  test_handshake_stream();
  test_wrong_secret();
  test_bad_args_and_states();
  test_preauth_framing();
  test_malformed_handshake();
  test_version_mismatch();
  test_replay_handshake();
  test_clear();
  test_seal_open_many();
  test_tamper();
  test_replay_reorder_reflect();
  test_seq_exhausted();
  return check_summary();
}
