/* node.c — the remote transport: ppserver nodes seen from the client's
 * engine. Resolving and connecting, the mutual handshake (auth.h), sealed
 * frames out (ops->emit seals each frame built by the one frame builder)
 * and in, heartbeats and liveness (PING every timeout/4; the node is dead
 * when for the whole timeout nothing moved in either direction: no byte
 * received and none of ours acknowledged, so a long upload or download is
 * never mistaken for silence, while a SIGSTOPped node is still caught),
 * reconnects with exponential backoff. With TLS (the default, tls.h) the
 * connection starts with a TLS 1.3 handshake, pp's handshake runs inside
 * it, and frames are sent without the per-frame MAC (TLS records are
 * authenticated); node_write is the one place bytes are encrypted. A lost node's jobs go back through
 * the peer layer, uncharged. Node records come from the configuration at
 * start, or from discovery announcements at run time
 * (pp__node_discovered); discovered ones that stop announcing while
 * disconnected go dormant. Everything here runs on the engine thread. */
#include "auth.h"
#include "engine_int.h"
#include "spec.h"
#include "tls.h"

#include <netinet/in.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reconnect backoff: from BACKOFF_MIN_MS, doubling after every attempt
 * that does not end in a healthy connection, up to the larger of
 * BACKOFF_MAX_MS and twice the node timeout. Healthy (backoff reset): the
 * node returned a result, or served without a protocol error for a node
 * timeout; a node that answers every connection with a protocol error
 * (even after its HELLO) is therefore tried ever more rarely. */
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 10000

enum node_state {
  NODE_IDLE = 0,   /* not connected; reconnect at next_attempt_ns */
  NODE_RESOLVING,  /* getaddrinfo in flight */
  NODE_CONNECTING, /* TCP connect in flight */
  NODE_HANDSHAKE,  /* authenticating */
  NODE_AUTHED,     /* authenticated, waiting for the node's HELLO */
  NODE_READY,      /* serving jobs */
  NODE_CLOSING     /* TCP handle closing */
};

/* A remote ppserver, from the client's side. Engine thread unless noted. */
struct pp__node {
  pp__peer peer;         /* first: a node is a peer */
  char *host, *port;
  pp_node_stats st;      /* [mu] name is immutable */
  int state;
  uv_getaddrinfo_t gai;
  uv_connect_t creq;
  uv_tcp_t tcp;
  int tcp_open;          /* tcp handle initialised and not yet closed */
  int gai_busy;          /* getaddrinfo request outstanding */
  struct pp_auth *auth;  /* handshake state while HANDSHAKE */
  struct pp_session *sess;
  struct pp_tls *tls;    /* TLS state (engine in TLS mode), from connect */
  int tls_auth;          /* pp's HELLO sent inside TLS */
  pp_buf net;            /* TLS: ciphertext as read, before pp_tls_feed */
  pp_buf out;            /* sealed frames emitted, not yet flushed (with
                            TLS: records, already encrypted) */
  pp_buf plain;          /* TLS: small frame pieces emitted, not yet
                            encrypted (kept allocated across flushes) */
  uint64_t state_since_ns, last_rx_ns, last_tx_ns, last_ping_ns;
  uint64_t next_attempt_ns;
  uint64_t acked;        /* bytes of ours the node acknowledged (TCP_INFO) */
  size_t last_wq;        /* libuv write queue size at the last tick */
  size_t last_backlog;   /* ours not yet acknowledged, at the last tick */
  unsigned backoff_ms;
  int ever_ready;
  uint64_t ready_since_ns; /* NODE_READY since */
  int fault;             /* the connection broke the protocol */
  int faulted;           /* the last connection ended with a fault: an
                            announcement does not cut its backoff short */
  /* auto-discovery (discover.c); all 0 for configured nodes */
  int discovered;        /* the record was made from an announcement */
  int dormant;           /* stopped announcing while not connected: no
                            reconnect attempts until it announces again */
  uint64_t announced_ns; /* last announcement accepted */
  uint64_t announce_ms;  /* its timestamp: older or equal ones are replays */
  uint64_t interval_ns;  /* the node's announce period */
  struct pp__node *next;
};

static const pp__peer_ops node_ops;

/* ---- setup ---------------------------------------------------------------- */

/* node_new: a node record for host:port (both malloc'd, ownership moves to
 * the record), not linked. NULL when out of memory (host, port freed). */
static pp__node *node_new(pp_engine *e, char *host, char *port) {
  pp__node *n = calloc(1, sizeof *n);
  if (n == NULL) {
    free(host);
    free(port);
    return NULL;
  }
  pp__peer_init(&n->peer, e, &node_ops, PP__PEER_REMOTE, 1);
  n->host = host;
  n->port = port;
  if (strchr(n->host, ':'))
    snprintf(n->st.name, sizeof n->st.name, "[%s]:%s", n->host, n->port);
  else
    snprintf(n->st.name, sizeof n->st.name, "%s:%s", n->host, n->port);
  snprintf(n->peer.name, sizeof n->peer.name, "node %.270s", n->st.name);
  snprintf(n->peer.where, sizeof n->peer.where, "%.63s", n->st.name);
  pp_buf_init(&n->out);
  pp_buf_init(&n->plain);
  n->backoff_ms = BACKOFF_MIN_MS;
  pp__peer_link(&n->peer);
  return n;
}

int pp__nodes_init(pp_engine *e, char *const *specs) {
  pp__node **tail = &e->nodes;
  for (size_t i = 0; specs && specs[i]; i++) {
    char *host, *port;
    int rc = pp_node_spec_parse(specs[i], &host, &port);
    if (rc != PP_OK)
      return rc;
    pp__node *n = node_new(e, host, port);
    if (n == NULL)
      return PP_ENOMEM;
    *tail = n;
    tail = &n->next;
  }
  return PP_OK;
}

void pp__nodes_free(pp_engine *e) {
  while (e->nodes) {
    pp__node *n = e->nodes;
    e->nodes = n->next;
    if (n->auth) {
      pp_auth_clear(n->auth);
      free(n->auth);
    }
    if (n->sess) {
      pp_session_clear(n->sess);
      free(n->sess);
    }
    pp_tls_free(n->tls);
    pp_buf_free(&n->net);
    pp_buf_free(&n->out);
    pp_buf_free(&n->plain);
    pp__peer_clear(&n->peer);
    free(n->host);
    free(n->port);
    free(n);
  }
}

/* ---- writing --------------------------------------------------------------- */

typedef struct nreq {
  uv_write_t req;
  pp__node *n;
  pp_buf buf;
} nreq;

/* on_node_write: a write finished (the kernel took our bytes: that alone
 * says nothing of the node, whose kernel acknowledges even while the
 * process is stopped). A failed write shows up as a read error or as
 * silence. */
static void on_node_write(uv_write_t *req, int status) {
  nreq *r = (nreq *)req;
  PP_UNUSED(status);
  pp_buf_free(&r->buf);
  free(r);
}

static void node_down(pp__node *n, const char *why);

/* node_write_raw: send out's bytes as they are; ownership of out's storage
 * moves to the write request only on success (out is then empty). 0 or a
 * pp code. */
static int node_write_raw(pp__node *n, pp_buf *out) {
  if (pp_buf_avail(out) == 0)
    return PP_OK;
  nreq *r = calloc(1, sizeof *r);
  if (r == NULL)
    return PP_ENOMEM;
  r->n = n;
  r->buf = *out;
  uv_buf_t b = uv_buf_init((char *)r->buf.data + r->buf.off,
                           (unsigned)pp_buf_avail(&r->buf));
  int rc = uv_write(&r->req, (uv_stream_t *)&n->tcp, &b, 1, on_node_write);
  if (rc != 0) {
    free(r);
    return pp_err_from_uv(rc);
  }
  pp_buf_init(out);
  return PP_OK;
}

/* node_write: send out's bytes (frames): through TLS when the connection
 * has it (out is emptied; the records go out), else as they are. 0 or a pp
 * code (out unchanged when plain). */
static int node_write(pp__node *n, pp_buf *out) {
  if (n->tls == NULL || pp_buf_avail(out) == 0)
    return node_write_raw(n, out);
  pp_buf rec;
  pp_buf_init(&rec);
  int rc = pp_tls_write(n->tls, out->data + out->off, pp_buf_avail(out), &rec);
  if (rc == PP_OK) {
    pp_buf_free(out);
    rc = node_write_raw(n, &rec);
  }
  pp_buf_free(&rec);
  return rc;
}

/* seal_frame: append one sealed frame (the one frame builder, then the
 * session MAC; inside TLS no MAC) to out. 0 or a pp code (out unchanged). */
static int seal_frame(pp__node *n, pp_buf *out, uint8_t type, uint32_t flags,
                      uint64_t id, uint32_t attempt, const pp_part *parts,
                      size_t nparts) {
  size_t off = out->len;
  if (n->sess == NULL)
    return PP_ESTATE;
  int rc = pp_frame_build(out, type, flags, id, attempt, parts, nparts);
  if (rc == PP_OK && n->tls == NULL) {
    rc = pp_session_seal_tail(n->sess, out, out->len - off);
    if (rc != PP_OK)
      out->len = off;
  }
  return rc;
}

/* node_send: seal one frame and write it at once (heartbeats, goodbye).
 * A failure takes the node down. */
static void node_send(pp__node *n, uint8_t type, const void *p, size_t len) {
  pp_part part = {p, len};
  pp_buf out;
  pp_buf_init(&out);
  int rc = seal_frame(n, &out, type, 0, 0, 0, &part, 1);
  if (rc == PP_OK)
    rc = node_write(n, &out);
  pp_buf_free(&out);
  if (rc != PP_OK)
    node_down(n, pp_strerror(rc));
}

/* ops for the peer layer ------------------------------------------------ */

static int n_ready(const pp__peer *p) {
  return ((const pp__node *)p)->state == NODE_READY;
}

/* tls_stage_out: encrypt the staged plaintext (n->plain) onto the records
 * in n->out. 0 or a pp code. */
static int tls_stage_out(pp__node *n) {
  if (pp_buf_avail(&n->plain) == 0)
    return PP_OK;
  int rc = pp_tls_write(n->tls, n->plain.data + n->plain.off,
                        pp_buf_avail(&n->plain), &n->out);
  n->plain.off = n->plain.len = 0; /* its storage stays for the next */
  return rc;
}

/* tls_emit: one frame inside TLS, encrypted from where its parts are: the
 * header and small parts are staged (so a batch of small frames is one
 * record), a part of TLS_DIRECT_MIN bytes or more is encrypted straight
 * from the caller's memory (no copy into a frame buffer first: the cipher
 * reads it once). Order is kept: what is staged is encrypted before it.
 * 0 or a pp code. */
#define TLS_DIRECT_MIN 16384u
static int tls_emit(pp__node *n, uint8_t type, uint32_t flags, uint64_t id,
                    uint32_t attempt, const pp_part *parts, size_t nparts) {
  size_t len = pp_frame_parts_len(parts, nparts);
  if (len > UINT32_MAX)
    return PP_ETOOBIG;
  uint8_t hdr[PP_FRAME_HDR];
  pp_frame_hdr h = {PP_PROTO_VERSION, type, flags, (uint32_t)len, attempt, id};
  pp_frame_encode_hdr(hdr, &h);
  int rc = pp_buf_append(&n->plain, hdr, sizeof hdr);
  for (size_t i = 0; rc == PP_OK && i < nparts; i++) {
    if (parts[i].len < TLS_DIRECT_MIN) {
      rc = pp_buf_append(&n->plain, parts[i].p, parts[i].len);
    } else if ((rc = tls_stage_out(n)) == PP_OK) {
      rc = pp_tls_write(n->tls, parts[i].p, parts[i].len, &n->out);
    }
  }
  return rc;
}

static int n_emit(pp__peer *p, uint8_t type, uint32_t flags, uint64_t id,
                  uint32_t attempt, const pp_part *parts, size_t nparts,
                  pp_job *job) {
  PP_UNUSED(job); /* sealed frames are copied: the MAC covers them */
  pp__node *n = (pp__node *)p;
  if (n->tls != NULL && n->sess != NULL)
    return tls_emit(n, type, flags, id, attempt, parts, nparts);
  return seal_frame(n, &n->out, type, flags, id, attempt, parts, nparts);
}

/* n_flush: write what was emitted. With TLS the records are encrypted
 * already (emit order is record order; nothing else writes in between:
 * emits and their flush happen in one call of the peer layer). */
static int n_flush(pp__peer *p) {
  pp__node *n = (pp__node *)p;
  int rc = n->tls == NULL ? node_write(n, &n->out) : tls_stage_out(n);
  if (rc == PP_OK && n->tls != NULL)
    rc = node_write_raw(n, &n->out);
  pp_buf_free(&n->out);
  return rc;
}

static void n_drop(pp__peer *p, const char *why) {
  pp__node *n = (pp__node *)p;
  pp_buf_free(&n->out);
  pp_buf_free(&n->plain);
  node_down(n, why);
}

/* n_stop: ops->stop: ask the node to stop the job (STOP, with the grace in
 * ms); it answers with the job's RESULT (ABORTED, TIMEOUT or its real
 * outcome), which ends it with its stop status. */
static void n_stop(pp__peer *p, pp_job *j) {
  pp__node *n = (pp__node *)p;
  uint8_t g[4];
  uint64_t ms = j->stop_grace_ns / 1000000u;
  pp_put_u32(g, ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms);
  pp_part part = {g, 4};
  pp_buf out;
  pp_buf_init(&out);
  int rc = seal_frame(n, &out, PP_MSG_STOP, 0, j->id, j->attempt, &part, 1);
  if (rc == PP_OK)
    rc = node_write(n, &out);
  pp_buf_free(&out);
  if (rc != PP_OK)
    node_down(n, pp_strerror(rc));
}

static const pp__peer_ops node_ops = {n_ready, n_emit, n_flush, n_drop,
                                      n_stop};

/* ---- losing a node ------------------------------------------------------- */

static void set_connected(pp__node *n, int connected, int nworkers) {
  pp_engine *e = n->peer.e;
  uv_mutex_lock(&e->mu);
  n->st.connected = connected;
  if (nworkers >= 0)
    n->st.nworkers = nworkers;
  uv_mutex_unlock(&e->mu);
}

/* schedule_retry: back to IDLE; the tick reconnects after the backoff. */
static void schedule_retry(pp__node *n) {
  uint64_t max_ms = 2 * (n->peer.e->node_timeout_ns / 1000000u);
  if (max_ms < BACKOFF_MAX_MS)
    max_ms = BACKOFF_MAX_MS;
  n->state = NODE_IDLE;
  n->state_since_ns = pp_now_ns();
  n->next_attempt_ns = n->state_since_ns + (uint64_t)n->backoff_ms * 1000000u;
  n->backoff_ms = (uint64_t)n->backoff_ms * 2 > max_ms ? (unsigned)max_ms
                                                       : n->backoff_ms * 2;
}

/* on_tcp_closed: the handle's memory is ours again. */
static void on_tcp_closed(uv_handle_t *h) {
  pp__node *n = h->data;
  n->tcp_open = 0;
  schedule_retry(n);
}

/* node_down: close the connection (if any), requeue its jobs through the
 * peer layer (not charged: the jobs did not necessarily cause it) and
 * schedule a reconnect. Safe to call in any state, also from inside a
 * dispatch round's send: it only asks for the next dispatch. */
static void node_down(pp__node *n, const char *why) {
  pp_engine *e = n->peer.e;
  int was_ready = n->state == NODE_READY;
  if (n->state == NODE_IDLE || n->state == NODE_CLOSING)
    return;
  if (was_ready && !n->fault &&
      (n->peer.nreturned > 0 ||
       pp_now_ns() - n->ready_since_ns >= e->node_timeout_ns))
    n->backoff_ms = BACKOFF_MIN_MS; /* it was a healthy connection */
  n->faulted = n->fault;
  n->fault = 0;
  if (was_ready)
    pp__log(e, PP_LOG_WARNING,
            "lost node %s (%s); its %zu jobs go to other workers",
            n->st.name, why, n->peer.inflight.len);
  else
    pp__log(e, n->ever_ready ? PP_LOG_INFO : PP_LOG_WARNING,
            "cannot use node %s: %s", n->st.name, why);
  set_connected(n, 0, -1);
  n->state = NODE_CLOSING; /* not ready: the peer layer sends it nothing */
  pp__peer_requeue(&n->peer, 0, 0, 0, NULL);
  pp_buf_free(&n->out);
  pp_buf_free(&n->plain);
  if (n->auth) {
    pp_auth_clear(n->auth);
    free(n->auth);
    n->auth = NULL;
  }
  if (n->sess) {
    pp_session_clear(n->sess);
    free(n->sess);
    n->sess = NULL;
  }
  pp_tls_free(n->tls);
  n->tls = NULL;
  n->tls_auth = 0;
  pp_buf_free(&n->net);
  if (n->gai_busy) {
    /* the getaddrinfo callback will see the state and just return */
    uv_cancel((uv_req_t *)&n->gai);
    schedule_retry(n);
    return;
  }
  if (n->tcp_open && !uv_is_closing((uv_handle_t *)&n->tcp))
    uv_close((uv_handle_t *)&n->tcp, on_tcp_closed);
  else if (!n->tcp_open)
    schedule_retry(n);
}

/* ---- reading ------------------------------------------------------------- */

/* next_frame: cut the next frame after authentication: a sealed frame, or
 * inside TLS a plain one (no MAC; handshake types are a protocol error).
 * Returns 1 with *h, *p and *size (bytes to consume), 0 (need more) or an
 * error. */
static int next_frame(pp__node *n, pp_frame_hdr *h, const uint8_t **p,
                      size_t *size) {
  if (n->tls == NULL) {
    int rc = pp_session_next(n->sess, &n->peer.rbuf, PP_FRAME_MAX_DEFAULT, h, p);
    *size = rc == 1 ? PP_SESSION_FRAME_SIZE(h) : 0;
    return rc;
  }
  int rc = pp_frame_next(&n->peer.rbuf, PP_FRAME_MAX_DEFAULT, h, p);
  if (rc == 1 && h->type >= PP_MSG_AUTH_FIRST && h->type <= PP_MSG_AUTH_LAST)
    return PP_EPROTO;
  *size = rc == 1 ? PP_FRAME_HDR + (size_t)h->length : 0;
  return rc;
}

/* session_frames: handle every complete frame after authentication. 0 or
 * an error. */
static int session_frames(pp__node *n) {
  pp_frame_hdr h;
  const uint8_t *p;
  size_t size;
  int rc = PP_ECLOSED;
  while (n->sess != NULL && (rc = next_frame(n, &h, &p, &size)) == 1) {
    switch (h.type) {
    case PP_MSG_HELLO:
      if (h.length < 8 || n->state != NODE_AUTHED)
        return PP_EPROTO;
      {
        pp_engine *e = n->peer.e;
        uint32_t nw = pp_get_u32(p + 4);
        if (nw == 0 || nw > 65536)
          return PP_EPROTO;
        if (nw > e->max_node_workers) {
          pp__log(e, PP_LOG_WARNING,
                  "node %s announces %u workers; using %u (max_node_workers)",
                  n->st.name, nw, e->max_node_workers);
          nw = e->max_node_workers;
        }
        /* a node that says how many bytes of objects it holds per
         * client (16-byte HELLO) gets at most that */
        n->peer.obj_limit = e->obj_limit;
        if (h.length >= 16 && pp_get_u64(p + 8) < e->obj_limit)
          n->peer.obj_limit = pp_get_u64(p + 8);
        n->state = NODE_READY;
        n->peer.slots = (int)nw;
        n->peer.nreturned = 0; /* its in-flight window starts again */
        n->last_tx_ns = n->ready_since_ns = pp_now_ns();
        n->ever_ready = 1;
        set_connected(n, 1, (int)nw);
        char how[96] = "no TLS: authenticated frames in clear";
        if (n->tls)
          pp_tls_describe(n->tls, how, sizeof how);
        pp__log(e, PP_LOG_INFO, "connected to node %s (%u workers, %s)",
                n->st.name, nw, how);
        pp__want_dispatch(n->peer.e);
      }
      break;
    case PP_MSG_RESULT:
      if (n->state != NODE_READY)
        return PP_EPROTO;
      pp__credit c = {&n->st.njobs, &n->st.time_ns, 0};
      rc = pp__peer_result(&n->peer, &h, p, &c);
      if (rc < 0)
        return rc;
      break;
    case PP_MSG_PING:
      if (h.length > 64)
        return PP_EPROTO;
      node_send(n, PP_MSG_PONG, p, h.length);
      if (n->sess == NULL)
        return PP_ECLOSED; /* the answer could not be sent */
      break;
    case PP_MSG_PONG:
      break;
    case PP_MSG_BYE:
      return PP_ECLOSED;
    default:
      return PP_EPROTO;
    }
    pp_buf_consume(&n->peer.rbuf, size);
  }
  return n->sess == NULL ? PP_ECLOSED : rc;
}

/* handshake_frames: feed handshake frames until authenticated. Returns 0
 * (need more), 1 (authenticated) or an error. */
static int handshake_frames(pp__node *n) {
  pp_frame_hdr h;
  const uint8_t *p;
  int rc;
  while ((rc = pp_auth_next(&n->peer.rbuf, &h, &p)) == 1) {
    pp_buf out;
    pp_buf_init(&out);
    int frc = pp_auth_feed(n->auth, &h, p, &out);
    pp_buf_consume(&n->peer.rbuf, PP_FRAME_HDR + h.length);
    int wrc = node_write(n, &out);
    pp_buf_free(&out);
    if (frc < 0)
      return frc;
    if (wrc < 0)
      return wrc;
    if (frc == 1) {
      n->sess = calloc(1, sizeof *n->sess);
      if (n->sess == NULL)
        return PP_ENOMEM;
      if (pp_auth_session(n->auth, n->sess) != PP_OK)
        return PP_EAUTH;
      pp_auth_clear(n->auth);
      free(n->auth);
      n->auth = NULL;
      n->state = NODE_AUTHED;
      return 1;
    }
  }
  return rc;
}

/* tls_input: n bytes of ciphertext arrived: decrypt them into the read
 * buffer, send what TLS answers, and once the TLS handshake is done start
 * pp's handshake inside it. A node that answers our ClientHello with a pp
 * frame (70 70: its FAIL(MODE), or an old node) does not speak TLS.
 * Returns 0 or an error (the caller takes the node down). */
static int tls_input(pp__node *n, const uint8_t *p, size_t len) {
  if (!pp_tls_done(n->tls) && n->state == NODE_HANDSHAKE && len > 0 &&
      p[0] == (PP_FRAME_MAGIC & 0xff))
    return PP_ENOTLS;
  pp_buf out;
  pp_buf_init(&out);
  int rc = pp_tls_feed(n->tls, p, len, &n->peer.rbuf, &out);
  int wrc = node_write_raw(n, &out); /* an alert, after a failure too */
  pp_buf_free(&out);
  if (rc != PP_OK)
    return rc;
  if (wrc != PP_OK)
    return wrc;
  if (pp_tls_done(n->tls) && !n->tls_auth && n->state == NODE_HANDSHAKE) {
    n->tls_auth = 1;
    if (pp_auth_start(n->auth, &out) != PP_OK)
      rc = PP_ENOMEM;
    else
      rc = node_write(n, &out);
    pp_buf_free(&out);
  }
  return rc;
}

static void on_node_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  pp__node *n = h->data;
  PP_UNUSED(hint);
  if (n->tls != NULL) { /* ciphertext: a scratch buffer, fed at once */
    n->net.off = n->net.len = 0;
    if (pp_buf_reserve(&n->net, 65536) != PP_OK) {
      *buf = uv_buf_init(NULL, 0);
      return;
    }
    *buf = uv_buf_init((char *)n->net.data, (unsigned)n->net.cap);
    return;
  }
  if (pp_buf_reserve(&n->peer.rbuf, 65536) != PP_OK) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  *buf = uv_buf_init((char *)n->peer.rbuf.data + n->peer.rbuf.len,
                     (unsigned)(n->peer.rbuf.cap - n->peer.rbuf.len));
}

static void on_node_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  pp__node *n = s->data;
  int rc = PP_OK;
  PP_UNUSED(buf);
  if (nread < 0) {
    node_down(n, nread != UV_EOF ? uv_strerror((int)nread)
                 : n->tls && !pp_tls_done(n->tls)
                     ? "connection closed during the TLS handshake (a node"
                       " without TLS?)"
                     : "connection closed");
    return;
  }
  if (nread == 0)
    return;
  n->last_rx_ns = pp_now_ns();
  if (n->tls != NULL)
    rc = tls_input(n, (const uint8_t *)buf->base, (size_t)nread);
  else
    n->peer.rbuf.len += (size_t)nread;
  if (rc == 0 && n->state == NODE_HANDSHAKE && n->tls != NULL && !n->tls_auth)
    return; /* TLS handshake still running */
  if (rc == 0 && n->state == NODE_HANDSHAKE) {
    rc = handshake_frames(n);
    if (rc == 0)
      return;
  }
  if (rc >= 0)
    rc = session_frames(n);
  if (rc < 0) {
    char why[384];
    const char *detail = n->tls ? pp_tls_error(n->tls) : "";
    n->fault = rc != PP_ECLOSED;
    if (rc == PP_EAUTH)
      snprintf(why, sizeof why,
               "authentication failed (is the secret the same on both"
               " sides?)%s%s", detail[0] ? ": TLS: " : "", detail);
    else if (rc == PP_ETLS)
      snprintf(why, sizeof why, "TLS failed: %s", detail[0] ? detail : "?");
    else if (rc == PP_ENOTLS)
      snprintf(why, sizeof why,
               "the node does not accept TLS (ppserver --no-tls, or an older"
               " ppserver); pp.Server(..., tls=False) connects without"
               " encryption");
    else if (rc == PP_ETLSREQ)
      snprintf(why, sizeof why,
               "the node requires TLS (ppserver --require-tls) and this"
               " client has tls=False");
    else if (rc == PP_EVERSION)
      snprintf(why, sizeof why, "protocol version mismatch");
    else if (rc == PP_ECLOSED)
      snprintf(why, sizeof why, "the node said goodbye");
    else
      snprintf(why, sizeof why, "%s", pp_auth_strerror(rc));
    node_down(n, why);
    return;
  }
  pp__want_dispatch(n->peer.e); /* results may have freed room */
}

/* ---- connecting ------------------------------------------------------------ */

static void on_connect(uv_connect_t *req, int status) {
  pp__node *n = req->data;
  pp_engine *e = n->peer.e;
  if (n->state != NODE_CONNECTING)
    return; /* cancelled by node_down/stop; the close callback handles it */
  if (status < 0) {
    node_down(n, uv_strerror(status));
    return;
  }
  uv_tcp_nodelay(&n->tcp, 1);
  uv_tcp_keepalive(&n->tcp, 1, 30);
  n->auth = calloc(1, sizeof *n->auth);
  pp_buf out;
  pp_buf_init(&out);
  /* TLS first (its ClientHello); pp's HELLO follows inside it */
  if (n->auth == NULL ||
      pp_auth_init(n->auth, PP_AUTH_CLIENT, e->key, sizeof e->key) != PP_OK ||
      (e->tls_ctx != NULL
           ? pp_tls_new(e->tls_ctx, n->host, &n->tls) != PP_OK ||
                 pp_tls_start(n->tls, &out) != PP_OK
           : pp_auth_start(n->auth, &out) != PP_OK)) {
    pp_buf_free(&out);
    node_down(n, "cannot start the handshake");
    return;
  }
  n->state = NODE_HANDSHAKE;
  n->state_since_ns = n->last_rx_ns = pp_now_ns();
  uv_read_start((uv_stream_t *)&n->tcp, on_node_alloc, on_node_read);
  int rc = node_write_raw(n, &out);
  pp_buf_free(&out);
  if (rc != PP_OK)
    node_down(n, pp_strerror(rc));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *ai) {
  pp__node *n = req->data;
  n->gai_busy = 0;
  if (n->state != NODE_RESOLVING || n->peer.e->stopping) {
    if (ai)
      uv_freeaddrinfo(ai);
    return;
  }
  if (status < 0 || ai == NULL) {
    if (ai)
      uv_freeaddrinfo(ai);
    node_down(n, status < 0 ? uv_strerror(status) : "no address");
    return;
  }
  uv_tcp_init(n->peer.e->loop, &n->tcp);
  n->tcp.data = n;
  n->tcp_open = 1;
  n->creq.data = n;
  n->state = NODE_CONNECTING;
  n->state_since_ns = pp_now_ns();
  int rc = uv_tcp_connect(&n->creq, &n->tcp, ai->ai_addr, on_connect);
  uv_freeaddrinfo(ai);
  if (rc != 0)
    node_down(n, uv_strerror(rc));
}

static void node_connect(pp__node *n) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  n->gai.data = n;
  n->state = NODE_RESOLVING;
  n->state_since_ns = pp_now_ns();
  n->gai_busy = 1;
  int rc = uv_getaddrinfo(n->peer.e->loop, &n->gai, on_resolved, n->host, n->port,
                          &hints);
  if (rc != 0) {
    n->gai_busy = 0;
    n->state = NODE_CONNECTING; /* so node_down schedules a retry */
    node_down(n, uv_strerror(rc));
  }
}

/* ---- the tick: heartbeats, liveness, reconnects ------------------------------ */

static void send_ping(pp__node *n, uint64_t now) {
  uint8_t t[8];
  pp_put_u64(t, now);
  n->last_ping_ns = now;
  node_send(n, PP_MSG_PING, t, 8);
}

/* note_tx_progress: whether a transfer of ours moved since the last tick:
 * with a backlog of unacknowledged bytes (more than heartbeats), the node
 * acknowledged more of them (TCP_INFO), or libuv's write queue shrank.
 * Either counts as a sign of life, so an upload that moves at any speed
 * keeps its connection; a stopped or unplugged node acknowledges nothing
 * once its receive window is full, and is caught. Heartbeats alone do not
 * count: a stopped process's kernel still acknowledges them. */
static void note_tx_progress(pp__node *n, uint64_t now) {
  enum { BACKLOG_MIN = 4096 };
  size_t wq = uv_stream_get_write_queue_size((uv_stream_t *)&n->tcp);
  size_t backlog = wq;
  if (wq < n->last_wq)
    n->last_tx_ns = now;
  n->last_wq = wq;
#if defined(__linux__) && defined(TCP_INFO) && defined(TIOCOUTQ)
  /* glibc's struct tcp_info predates tcpi_bytes_acked (Linux 4.2), and
   * <linux/tcp.h> clashes with <netinet/tcp.h> (which uv.h includes), so
   * the field is read at its place in the kernel's ABI: a u64 at byte 120. */
  enum { BYTES_ACKED_OFF = 120 };
  uv_os_fd_t fd;
  uint8_t ti[256];
  socklen_t len = sizeof ti;
  int outq = 0;
  if (uv_fileno((uv_handle_t *)&n->tcp, &fd) == 0) {
    if (ioctl(fd, TIOCOUTQ, &outq) == 0 && outq > 0)
      backlog += (size_t)outq;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &len) == 0 &&
        len >= BYTES_ACKED_OFF + 8) {
      uint64_t acked;
      memcpy(&acked, ti + BYTES_ACKED_OFF, 8);
      if (acked > n->acked && n->last_backlog > BACKLOG_MIN)
        n->last_tx_ns = now;
      n->acked = acked;
    }
  }
#endif
  n->last_backlog = backlog;
}

void pp__nodes_tick(pp_engine *e, uint64_t now) {
  if (!e->key_ready)
    return; /* no node can be connected before the secret is stretched */
  for (pp__node *n = e->nodes; n; n = n->next) {
    switch (n->state) {
    case NODE_IDLE:
      if (n->discovered && !n->dormant &&
          now - n->announced_ns > 3 * n->interval_ns) {
        n->dormant = 1;
        pp__log(e, PP_LOG_INFO,
                "node %s stopped announcing itself; not reconnecting until it"
                " announces again", n->st.name);
      }
      if (!n->dormant && now >= n->next_attempt_ns && !n->gai_busy)
        node_connect(n);
      break;
    case NODE_RESOLVING:
    case NODE_CONNECTING:
    case NODE_HANDSHAKE:
    case NODE_AUTHED:
      if (now - n->state_since_ns > e->node_timeout_ns)
        node_down(n, "timed out while connecting");
      break;
    case NODE_READY: {
      note_tx_progress(n, now);
      uint64_t last = n->last_rx_ns > n->last_tx_ns ? n->last_rx_ns
                                                    : n->last_tx_ns;
      if (now - n->last_rx_ns > e->node_timeout_ns &&
          now - last > e->node_timeout_ns)
        node_down(n, "no answer to heartbeats");
      else if (now - n->last_ping_ns > e->node_timeout_ns / 4)
        send_ping(n, now);
      break;
    }
    default:
      break;
    }
  }
}

void pp__nodes_names(const pp_engine *e, char *out, size_t size) {
  size_t off = 0;
  if (size == 0)
    return;
  out[0] = '\0';
  for (const pp__node *n = e->nodes; n && off < size - 1; n = n->next) {
    int k = snprintf(out + off, size - off, "%s%s", off ? ", " : "",
                     n->st.name);
    if (k < 0)
      break;
    off += (size_t)k;
  }
}

/* ---- discovered nodes ------------------------------------------------------ */

void pp__node_discovered(pp_engine *e, const char *ip, unsigned port,
                         uint32_t interval_ms, uint64_t time_ms) {
  char portstr[8];
  uint64_t now = pp_now_ns();
  pp__node *n, **tail = &e->nodes;
  snprintf(portstr, sizeof portstr, "%u", port);
  for (n = e->nodes; n; tail = &n->next, n = n->next)
    if (strcmp(n->host, ip) == 0 && strcmp(n->port, portstr) == 0)
      break;
  if (interval_ms < 100) /* ppserver accepts 0.1 s .. 1 h */
    interval_ms = 100;
  if (interval_ms > 3600000)
    interval_ms = 3600000;
  if (n != NULL) {
    if (!n->discovered)
      return; /* configured explicitly: already looked after */
    if (time_ms <= n->announce_ms)
      return; /* a replay, or an old datagram overtaken by a newer one */
    n->announce_ms = time_ms;
    n->announced_ns = now;
    n->interval_ns = (uint64_t)interval_ms * 1000000u;
    if (n->dormant) {
      n->dormant = 0;
      n->backoff_ms = BACKOFF_MIN_MS;
      pp__log(e, PP_LOG_INFO, "node %s announces itself again", n->st.name);
    }
    /* it says it is there: try now rather than at the end of a backoff */
    if (n->state == NODE_IDLE && !n->gai_busy && !n->faulted)
      n->next_attempt_ns = now;
    return;
  }
  if (e->ndiscovered >= PP__MAX_DISCOVERED) {
    if (e->ndiscovered++ == PP__MAX_DISCOVERED)
      pp__log(e, PP_LOG_WARNING,
              "discovery: %d nodes found already; ignoring more (first"
              " ignored: %s:%u)", PP__MAX_DISCOVERED, ip, port);
    return;
  }
  char *h = strdup(ip), *p = strdup(portstr);
  if (h == NULL || p == NULL) {
    free(h);
    free(p);
    return;
  }
  n = node_new(e, h, p);
  if (n == NULL)
    return;
  n->discovered = 1;
  n->announce_ms = time_ms;
  n->announced_ns = now;
  n->interval_ns = (uint64_t)interval_ms * 1000000u;
  e->ndiscovered++;
  uv_mutex_lock(&e->mu); /* pp_engine_node_stats walks the list */
  *tail = n;
  uv_mutex_unlock(&e->mu);
  pp__log(e, PP_LOG_INFO, "discovered node %s", n->st.name);
  node_connect(n);
}

void pp__nodes_stop(pp_engine *e) {
  for (pp__node *n = e->nodes; n; n = n->next) {
    if (n->state == NODE_READY && n->sess)
      node_send(n, PP_MSG_BYE, NULL, 0);
    if (n->gai_busy)
      uv_cancel((uv_req_t *)&n->gai);
    n->state = NODE_CLOSING;
    if (n->tcp_open && !uv_is_closing((uv_handle_t *)&n->tcp))
      uv_close((uv_handle_t *)&n->tcp, on_tcp_closed);
  }
}

int pp_engine_node_stats(pp_engine *e, pp_node_stats *out, int max) {
  int k = 0;
  uv_mutex_lock(&e->mu);
  for (pp__node *n = e->nodes; n; n = n->next, k++)
    if (k < max)
      out[k] = n->st;
  uv_mutex_unlock(&e->mu);
  return k;
}
