/* fuzz_auth.c — fuzz target: the TCP handshake of either role (auth.c)
 * and, once authenticated, sealed-frame intake (pp_session_next), fed what
 * a hostile or broken peer could send.
 *
 * The side under test talks to a real peer of the other role (same secret,
 * or a wrong one). The input is a script of operations: deliver the peer's
 * pending bytes verbatim, altered in one byte, cut short, or dropped;
 * deliver arbitrary bytes; replay an earlier delivery; let the peer read
 * what the side under test wrote; have the peer seal a frame. Whatever the
 * script does, the side under test must never:
 *   - authenticate a peer that holds another secret;
 *   - accept a sealed frame the peer did not seal, or out of order;
 *   - go on after an error (the connection is closed then).
 * Nonces come from the CSPRNG, so runs of one input differ in bytes, not in
 * the paths they can take.
 *
 * Input: [role][secret choice][op, args...]... */
#include "fuzz.h"

#include "auth.h"
#include "buf.h"
#include "frame.h"
#include "pp_common.h"

#include <stdlib.h>

#define MAX_SEALED 64   /* frames the peer seals, remembered for checking */
#define MAX_PAYLOAD 512 /* payload of a frame the peer seals */
#define RECV_LIMIT 4096 /* the side under test's payload limit */

static const uint8_t secret_ok[] = "fuzz-secret-0123456789";
static const uint8_t secret_bad[] = "fuzz-secret-0123456788";

/* One end of the conversation. */
typedef struct end {
  pp_auth auth;
  pp_session sess;
  int authed; /* handshake done, sess valid */
  int dead;   /* an error: this end closed the connection */
  pp_buf in;  /* bytes received, not yet consumed */
} end;

typedef struct sealed {
  uint8_t type;
  uint32_t flags, attempt;
  uint64_t id;
  size_t len;
  uint8_t payload[MAX_PAYLOAD];
} sealed;

typedef struct world {
  end t, peer;     /* the side under test and its peer */
  pp_buf to_t;     /* the peer's output not yet delivered to t */
  pp_buf to_peer;  /* t's output not yet read by the peer */
  pp_buf last;     /* the last bytes delivered to t (for a replay) */
  int wrong_secret;
  sealed log[MAX_SEALED]; /* frames the peer sealed, in order */
  size_t nsealed, nopened;
} world;

/* end_process: let e act on every complete frame in e->in; its answers go
 * to out. An error kills e. For the side under test (check = 1) every
 * opened sealed frame is compared with what the peer sealed. */
static void end_process(world *w, end *e, pp_buf *out, int check) {
  while (!e->dead) {
    pp_frame_hdr h;
    const uint8_t *p = NULL;
    int rc;
    if (!e->authed) {
      rc = pp_auth_next(&e->in, &h, &p);
      if (rc == 0)
        return;
      if (rc < 0) {
        e->dead = 1;
        return;
      }
      rc = pp_auth_feed(&e->auth, &h, p, out);
      pp_buf_consume(&e->in, PP_FRAME_HDR + h.length);
      if (rc < 0) {
        e->dead = 1;
        /* a dead handshake refuses everything from now on */
        if (pp_auth_feed(&e->auth, &h, NULL, out) != PP_ESTATE)
          __builtin_trap();
        return;
      }
      if (rc == 1) {
        if (check && w->wrong_secret)
          __builtin_trap(); /* authenticated without the secret */
        if (pp_auth_session(&e->auth, &e->sess) != PP_OK)
          __builtin_trap();
        pp_auth_clear(&e->auth);
        e->authed = 1;
      }
      continue;
    }
    rc = pp_session_next(&e->sess, &e->in, RECV_LIMIT, &h, &p);
    if (rc == 0)
      return;
    if (rc < 0) {
      e->dead = 1;
      if (pp_session_next(&e->sess, &e->in, RECV_LIMIT, &h, &p) >= 0)
        __builtin_trap(); /* a failed session stays failed */
      return;
    }
    if (check) {
      if (w->nopened >= w->nsealed)
        __builtin_trap(); /* opened a frame nobody sealed */
      const sealed *s = &w->log[w->nopened++];
      if (h.type != s->type || h.flags != s->flags || h.id != s->id ||
          h.attempt != s->attempt || h.length != s->len ||
          (s->len && memcmp(p, s->payload, s->len) != 0))
        __builtin_trap(); /* not the frame sealed next */
    }
    pp_buf_consume(&e->in, PP_SESSION_FRAME_SIZE(&h));
  }
}

/* deliver: n bytes at p arrive at the side under test. */
static void deliver(world *w, const uint8_t *p, size_t n) {
  if (w->t.dead || n == 0)
    return;
  pp_buf_free(&w->last);
  if (pp_buf_append(&w->last, p, n) != PP_OK ||
      pp_buf_append(&w->t.in, p, n) != PP_OK) {
    w->t.dead = 1;
    return;
  }
  end_process(w, &w->t, &w->to_peer, 1);
}

/* take_pending: move up to n bytes of the peer's output into out. */
static void take_pending(world *w, size_t n, pp_buf *out) {
  size_t avail = pp_buf_avail(&w->to_t);
  if (n > avail)
    n = avail;
  pp_buf_init(out);
  if (n > 0 && pp_buf_append(out, w->to_t.data + w->to_t.off, n) == PP_OK)
    pp_buf_consume(&w->to_t, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static world w;
  fz f = {data, size};
  int t_role = fz_u8(&f) & 1 ? PP_AUTH_CLIENT : PP_AUTH_SERVER;
  int p_role = t_role == PP_AUTH_CLIENT ? PP_AUTH_SERVER : PP_AUTH_CLIENT;
  memset(&w, 0, sizeof w);
  w.wrong_secret = fz_u8(&f) % 4 == 3;
  const uint8_t *psec = w.wrong_secret ? secret_bad : secret_ok;
  if (pp_auth_init(&w.t.auth, t_role, secret_ok, sizeof secret_ok - 1) != 0 ||
      pp_auth_init(&w.peer.auth, p_role, psec, sizeof secret_ok - 1) != 0)
    __builtin_trap();
  if (t_role == PP_AUTH_CLIENT) {
    if (pp_auth_start(&w.t.auth, &w.to_peer) != PP_OK)
      __builtin_trap();
  } else if (pp_auth_start(&w.peer.auth, &w.to_t) != PP_OK) {
    __builtin_trap();
  }
  for (int ops = 0; f.n > 0 && ops < 256 && !w.t.dead; ops++) {
    uint8_t op = fz_u8(&f);
    pp_buf tmp;
    size_t got;
    switch (op % 8) {
    case 0: /* the peer's pending bytes, verbatim */
      take_pending(&w, SIZE_MAX, &tmp);
      deliver(&w, tmp.data, pp_buf_avail(&tmp));
      pp_buf_free(&tmp);
      break;
    case 1: { /* ... with one byte altered */
      size_t pos = fz_u16(&f);
      uint8_t x = fz_u8(&f) | 1;
      take_pending(&w, SIZE_MAX, &tmp);
      if (pp_buf_avail(&tmp) > 0)
        tmp.data[pos % pp_buf_avail(&tmp)] ^= x;
      deliver(&w, tmp.data, pp_buf_avail(&tmp));
      pp_buf_free(&tmp);
      break;
    }
    case 2: /* ... only the first k bytes (the rest stays pending) */
      take_pending(&w, fz_u8(&f), &tmp);
      deliver(&w, tmp.data, pp_buf_avail(&tmp));
      pp_buf_free(&tmp);
      break;
    case 3: /* the peer's pending bytes are lost */
      take_pending(&w, SIZE_MAX, &tmp);
      pp_buf_free(&tmp);
      break;
    case 4: { /* arbitrary bytes */
      const uint8_t *p = fz_take(&f, fz_u8(&f), &got);
      deliver(&w, p, got);
      break;
    }
    case 5: /* the peer reads what the side under test wrote */
      if (!w.peer.dead && pp_buf_avail(&w.to_peer) > 0 &&
          pp_buf_append(&w.peer.in, w.to_peer.data + w.to_peer.off,
                        pp_buf_avail(&w.to_peer)) == PP_OK)
        end_process(&w, &w.peer, &w.to_t, 0);
      pp_buf_free(&w.to_peer);
      break;
    case 6: { /* the peer seals one frame */
      if (!w.peer.authed || w.peer.dead || w.nsealed >= MAX_SEALED)
        break;
      sealed *s = &w.log[w.nsealed];
      s->type = fz_u8(&f);
      s->flags = fz_u8(&f);
      s->attempt = fz_u8(&f);
      s->id = fz_u16(&f);
      const uint8_t *p = fz_take(&f, fz_u16(&f) % MAX_PAYLOAD, &got);
      s->len = got;
      memcpy(s->payload, p, got);
      int rc = pp_session_seal(&w.peer.sess, &w.to_t, s->type, s->flags,
                               s->id, s->attempt, s->payload, s->len);
      if (rc == PP_OK)
        w.nsealed++;
      else if (rc != PP_EINVAL) /* only handshake types are refused */
        __builtin_trap();
      break;
    }
    case 7: /* the last delivery again (a replay) */
      if (pp_buf_avail(&w.last) > 0) {
        take_pending(&w, 0, &tmp);
        pp_buf_append(&tmp, w.last.data + w.last.off, pp_buf_avail(&w.last));
        deliver(&w, tmp.data, pp_buf_avail(&tmp));
        pp_buf_free(&tmp);
      }
      break;
    }
  }
  pp_auth_clear(&w.t.auth);
  pp_auth_clear(&w.peer.auth);
  pp_session_clear(&w.t.sess);
  pp_session_clear(&w.peer.sess);
  pp_buf_free(&w.t.in);
  pp_buf_free(&w.peer.in);
  pp_buf_free(&w.to_t);
  pp_buf_free(&w.to_peer);
  pp_buf_free(&w.last);
  return 0;
}
