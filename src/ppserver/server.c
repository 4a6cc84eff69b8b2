/* server.c — ppserver's TCP server (see server.h). Everything here runs in
 * the main thread's libuv loop except on_job_complete, which the engine calls
 * from its own thread (or from ours inside pp_engine_cancel/shutdown) and
 * which only appends to a locked list and wakes the loop.
 *
 * Objects:
 *   srv     the server: listener, timers, signals, the engine, the
 *           round-robin queue of connections that have jobs waiting.
 *   conn    one TCP client: handshake state, then a session (keys and
 *           sequence numbers), its read buffer, its function map, a FIFO of
 *           tickets not yet handed to the engine and a list of tickets in
 *           the engine. Freed in its close callback.
 *   ticket  one client job: the pp_job (our reference) and the client's id
 *           and attempt. Lives until its job completes, even when its
 *           connection went away first (then t->c is NULL and the result is
 *           dropped).
 */
#include "server.h"

#include "announce.h"
#include "auth.h"
#include "engine.h"
#include "frame.h"
#include "job.h"
#include "pp_common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include <openssl/crypto.h>

typedef struct srv srv;
typedef struct conn conn;

typedef struct ticket {
  struct ticket *next, *prev; /* conn's queue or conn's engine list */
  struct ticket *dnext;       /* the done list */
  conn *c;                    /* NULL once the connection is gone */
  pp_job *job;                /* our reference */
  uint64_t client_id;
  uint32_t client_attempt;
  int in_engine;
} ticket;

typedef struct tlist {
  ticket *head, *tail;
  size_t len;
} tlist;

/* Open-addressing map: function key -> pp_func (a reference each). */
typedef struct funcmap {
  pp_func **slots;
  size_t cap, len;
} funcmap;

enum { C_HANDSHAKE = 0, C_READY = 1, C_CLOSING = 2 };

struct conn {
  uv_tcp_t tcp; /* first: the handle's data points back here too */
  srv *s;
  conn *next, *prev;       /* all connections */
  conn *rr_next, *rr_prev; /* the round-robin queue */
  int in_rr;
  int state;
  int handle_closing; /* uv_close called */
  int paused;         /* reading stopped for back-pressure */
  char peer[80];
  pp_auth auth;    /* C_HANDSHAKE */
  pp_session sess; /* C_READY */
  pp_buf rbuf;
  int starved;        /* out of the round robin until its writes drain */
  uint64_t accepted_ms, last_rx_ms, closing_ms;
  uint64_t write_ms;  /* last write completed or started on an empty queue */
  tlist queued;    /* not yet handed to the engine */
  size_t queued_bytes;
  tlist engine;    /* handed to the engine, no result yet */
  funcmap funcs;
  uint64_t jobs_received, jobs_done;
  uv_shutdown_t shutdown_req;
  pp_buf outq;        /* sealed frames waiting for the end of this batch */
  conn *fnext;        /* the flush list */
  int in_flush;
};

typedef struct wreq {
  uv_write_t req;
  pp_buf buf;
} wreq;

struct srv {
  const ppsrv_config *cfg;
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_timer_t sweep;
  uv_timer_t idle_exit;
  uv_signal_t sig_term, sig_int, sig_usr1;
  uv_async_t done_async;
  int listener_init;
  pp_engine *engine;
  uv_mutex_t done_mu;
  ticket *done_head, *done_tail; /* [done_mu] */
  conn *conns;
  size_t nconns, nclients;
  conn *rr_head, *rr_tail;
  size_t in_engine, nworkers;
  uint64_t ema_ns;    /* mean job run time seen (0 = none yet) */
  int batching;       /* conn_send queues instead of writing */
  conn *flush_head;
  uint64_t hs_timeout_ms, idle_timeout_ms;
  uint64_t started_ms;
  uint64_t accepted, auth_ok, auth_failed, dropped, jobs_done;
  int stopping;
  int exit_code;
  int pidfile_written;
  char listen_name[96];
  struct sockaddr_storage bound; /* the listener's address */
  ppsrv_announcer *announcer;    /* -a; NULL otherwise */
};

static void conn_close(conn *c, int level, const char *why);
static int conn_relaxed(conn *c);
static int write_backlogged(conn *c, size_t div);
static void conn_resume(conn *c);
static void feed_engine(srv *s);
static void maybe_finish(srv *s);
static int conn_write(conn *c, pp_buf *buf);

/* ---- small lists ------------------------------------------------------ */

static void tlist_push(tlist *l, ticket *t) {
  t->next = NULL;
  t->prev = l->tail;
  if (l->tail)
    l->tail->next = t;
  else
    l->head = t;
  l->tail = t;
  l->len++;
}

static void tlist_remove(tlist *l, ticket *t) {
  if (t->prev)
    t->prev->next = t->next;
  else
    l->head = t->next;
  if (t->next)
    t->next->prev = t->prev;
  else
    l->tail = t->prev;
  t->next = t->prev = NULL;
  l->len--;
}

static ticket *tlist_pop(tlist *l) {
  ticket *t = l->head;
  if (t)
    tlist_remove(l, t);
  return t;
}

static void ticket_free(ticket *t) {
  pp_job_unref(t->job);
  free(t);
}

/* rr_add / rr_remove: the queue of connections with tickets waiting. */
static void rr_add(srv *s, conn *c) {
  if (c->in_rr)
    return;
  c->in_rr = 1;
  c->rr_next = NULL;
  c->rr_prev = s->rr_tail;
  if (s->rr_tail)
    s->rr_tail->rr_next = c;
  else
    s->rr_head = c;
  s->rr_tail = c;
}

static void rr_remove(srv *s, conn *c) {
  if (!c->in_rr)
    return;
  if (c->rr_prev)
    c->rr_prev->rr_next = c->rr_next;
  else
    s->rr_head = c->rr_next;
  if (c->rr_next)
    c->rr_next->rr_prev = c->rr_prev;
  else
    s->rr_tail = c->rr_prev;
  c->rr_next = c->rr_prev = NULL;
  c->in_rr = 0;
}

/* ---- function map ----------------------------------------------------- */

static size_t fm_slot(const funcmap *m, const uint8_t *key) {
  uint64_t h = pp_get_u64(key); /* SHA-256 bytes: already uniform */
  return (size_t)h & (m->cap - 1);
}

/* fm_get: the function with this key, borrowed, or NULL. */
static pp_func *fm_get(const funcmap *m, const uint8_t *key) {
  if (m->cap == 0)
    return NULL;
  for (size_t i = fm_slot(m, key);; i = (i + 1) & (m->cap - 1)) {
    pp_func *f = m->slots[i];
    if (f == NULL)
      return NULL;
    if (memcmp(f->key, key, PP_KEY_LEN) == 0)
      return f;
  }
}

/* fm_put: insert f (taking the caller's reference). The key must not be
 * present. Returns 0 or PP_ENOMEM (nothing taken). */
static int fm_put(funcmap *m, pp_func *f) {
  if ((m->len + 1) * 2 > m->cap) {
    size_t ncap = m->cap ? m->cap * 2 : 16;
    pp_func **ns = calloc(ncap, sizeof *ns);
    if (ns == NULL)
      return PP_ENOMEM;
    funcmap nm = {ns, ncap, 0};
    for (size_t i = 0; i < m->cap; i++)
      if (m->slots[i] != NULL) {
        size_t k = fm_slot(&nm, m->slots[i]->key);
        while (ns[k] != NULL)
          k = (k + 1) & (ncap - 1);
        ns[k] = m->slots[i];
        nm.len++;
      }
    free(m->slots);
    *m = nm;
  }
  size_t k = fm_slot(m, f->key);
  while (m->slots[k] != NULL)
    k = (k + 1) & (m->cap - 1);
  m->slots[k] = f;
  m->len++;
  return PP_OK;
}

/* fm_clear: drop every function (jobs keep their own references). */
static void fm_clear(funcmap *m) {
  for (size_t i = 0; i < m->cap; i++)
    if (m->slots[i] != NULL)
      pp_func_unref(m->slots[i]);
  free(m->slots);
  memset(m, 0, sizeof *m);
}

/* ---- writing ---------------------------------------------------------- */

/* on_write: a write finished (or was cancelled by close). Frees the
 * request and its bytes; a failed write closes the connection; progress may
 * lift a back-pressure pause. Main thread. */
static void on_write(uv_write_t *req, int status) {
  wreq *w = (wreq *)req;
  conn *c = req->handle->data;
  pp_buf_free(&w->buf);
  free(w);
  if (status < 0) {
    if (status != UV_ECANCELED && c->state != C_CLOSING) {
      char why[96];
      snprintf(why, sizeof why, "write failed: %s", uv_strerror(status));
      conn_close(c, PP_LOG_INFO, why);
    }
    return;
  }
  c->write_ms = uv_now(&c->s->loop);
  if (c->state != C_READY)
    return;
  if (c->starved && !write_backlogged(c, 2)) {
    c->starved = 0;
    if (c->queued.len > 0) {
      rr_add(c->s, c);
      feed_engine(c->s);
    }
  }
  if (c->paused && conn_relaxed(c))
    conn_resume(c);
}

/* conn_write: write the bytes of *buf (its storage moves into the write
 * request; *buf is left empty). Returns 0, or a negative error after which
 * the connection has been closed. */
static int conn_write(conn *c, pp_buf *buf) {
  if (pp_buf_avail(buf) == 0) {
    pp_buf_free(buf);
    return PP_OK;
  }
  wreq *w = calloc(1, sizeof *w);
  if (w == NULL) {
    pp_buf_free(buf);
    conn_close(c, PP_LOG_ERROR, "out of memory");
    return PP_ENOMEM;
  }
  w->buf = *buf;
  pp_buf_init(buf);
  if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) == 0)
    c->write_ms = uv_now(&c->s->loop); /* a stall is timed from now */
  uv_buf_t b = uv_buf_init((char *)w->buf.data + w->buf.off,
                           (unsigned)pp_buf_avail(&w->buf));
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (rc != 0) {
    char why[96];
    pp_buf_free(&w->buf);
    free(w);
    snprintf(why, sizeof why, "write failed: %s", uv_strerror(rc));
    conn_close(c, PP_LOG_INFO, why);
    return PP_EIO;
  }
  return PP_OK;
}

/* conn_send: seal and write one frame whose payload is p1 followed by p2.
 * Returns 0, or a negative error after which the connection is closed. */
static int conn_send(conn *c, uint8_t type, uint32_t flags, uint64_t id,
                     uint32_t attempt, const void *p1, size_t n1,
                     const void *p2, size_t n2) {
  pp_buf *out = &c->outq;
  size_t len = n1 + n2;
  if (len > UINT32_MAX) {
    conn_close(c, PP_LOG_ERROR, "result too large for one frame");
    return PP_ETOOBIG;
  }
  size_t mark = out->len;
  int rc = pp_buf_reserve(out, PP_FRAME_HDR + len + PP_AUTH_MAC_LEN);
  if (rc == PP_OK) {
    mark = out->len; /* reserve may have compacted the buffer */
    pp_frame_hdr h = {PP_PROTO_VERSION, type, flags, (uint32_t)len, attempt,
                      id};
    pp_frame_encode_hdr(out->data + out->len, &h);
    out->len += PP_FRAME_HDR;
    if (n1)
      memcpy(out->data + out->len, p1, n1);
    out->len += n1;
    if (n2)
      memcpy(out->data + out->len, p2, n2);
    out->len += n2;
    rc = pp_session_seal_tail(&c->sess, out, PP_FRAME_HDR + len);
    if (rc != PP_OK)
      out->len = mark;
  }
  if (rc != PP_OK) {
    char why[96];
    snprintf(why, sizeof why, "cannot seal a frame: %s", pp_auth_strerror(rc));
    conn_close(c, PP_LOG_ERROR, why);
    return rc;
  }
  if (c->s->batching) { /* written once, at the end of the batch */
    if (!c->in_flush) {
      c->in_flush = 1;
      c->fnext = c->s->flush_head;
      c->s->flush_head = c;
    }
    return PP_OK;
  }
  return conn_write(c, out);
}

/* flush_batch: end a batch: write what conn_send queued, one write per
 * connection still serving. Main thread. */
static void flush_batch(srv *s) {
  conn *c = s->flush_head;
  s->flush_head = NULL;
  s->batching = 0;
  while (c != NULL) {
    conn *next = c->fnext;
    c->in_flush = 0;
    c->fnext = NULL;
    if (c->state == C_READY)
      conn_write(c, &c->outq);
    else
      pp_buf_free(&c->outq);
    c = next;
  }
}

/* ---- reading and back-pressure --------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* write_backlogged: whether c has at least PPSRV_WRITE_MAX_BYTES / div
 * bytes of results not yet written to the socket. */
static int write_backlogged(conn *c, size_t div) {
  return uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) >=
         PPSRV_WRITE_MAX_BYTES / div;
}

/* conn_overloaded: whether c has so much waiting that we stop reading. */
static int conn_overloaded(conn *c) {
  return c->queued.len >= PPSRV_QUEUE_MAX_JOBS ||
         c->queued_bytes >= PPSRV_QUEUE_MAX_BYTES ||
         uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) >=
             PPSRV_WRITE_MAX_BYTES;
}

/* conn_relaxed: whether a paused c has drained enough (below half of every
 * limit) to read again; the gap avoids pausing at every other frame. */
static int conn_relaxed(conn *c) {
  return c->queued.len < PPSRV_QUEUE_MAX_JOBS / 2 &&
         c->queued_bytes < PPSRV_QUEUE_MAX_BYTES / 2 &&
         uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) <
             PPSRV_WRITE_MAX_BYTES / 2;
}

/* conn_pause: stop reading from c until its queues drain (back-pressure).
 * The socket timeout does not run while paused; see on_sweep. */
static void conn_pause(conn *c) {
  if (c->paused || c->state == C_CLOSING)
    return;
  c->paused = 1;
  uv_read_stop((uv_stream_t *)&c->tcp);
  pp_log(PP_LOG_DEBUG, "%s: pausing reads (%zu jobs queued, %zu bytes)",
         c->peer, c->queued.len, c->queued_bytes);
}

/* conn_resume: start reading again after a pause. */
static void conn_resume(conn *c) {
  if (!c->paused || c->state != C_READY)
    return;
  c->paused = 0;
  c->last_rx_ms = uv_now(&c->s->loop);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
    conn_close(c, PP_LOG_INFO, "cannot resume reading");
  else
    pp_log(PP_LOG_DEBUG, "%s: reading again", c->peer);
}

/* on_alloc: room for the next read. Before authentication the buffer never
 * holds more than two maximal handshake frames. Afterwards it holds at most
 * the frame being received (whose header has been validated) plus 64 KiB,
 * growing with the bytes that actually arrive, never in one jump to the
 * size a header announces. */
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  conn *c = h->data;
  size_t avail = pp_buf_avail(&c->rbuf);
  size_t room;
  PP_UNUSED(hint);
  if (c->state == C_HANDSHAKE) {
    size_t lim = 2 * (PP_FRAME_HDR + PP_AUTH_MAX_PREAUTH_FRAME);
    room = avail < lim ? lim - avail : 0;
  } else {
    room = 65536;
    if (avail >= PP_FRAME_HDR) {
      /* pp_session_next already validated this header */
      size_t need = PP_FRAME_HDR + pp_get_u32(c->rbuf.data + c->rbuf.off + 8) +
                    PP_AUTH_MAC_LEN;
      if (need > avail + room) {
        room = need - avail;
        if (room > 16u * 1024 * 1024)
          room = 16u * 1024 * 1024;
      }
    }
  }
  if (room == 0 || pp_buf_reserve(&c->rbuf, room) != PP_OK) {
    *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
    return;
  }
  *buf = uv_buf_init((char *)c->rbuf.data + c->rbuf.len, (unsigned)room);
}

/* ---- frames from an authenticated client ------------------------------ */

/* proto_error: a well-formed frame that is wrong here. */
static int proto_error(conn *c, const char *what) {
  char why[160];
  snprintf(why, sizeof why, "protocol error: %s", what);
  conn_close(c, PP_LOG_WARNING, why);
  return PP_EPROTO;
}

/* handle_func: FUNC = key[32] + descriptor. Verifies the key is the
 * descriptor's SHA-256 and remembers the function for this connection (RESET
 * forgets the others first). Returns 0, or an error after which c is
 * closing. */
static int handle_func(conn *c, const pp_frame_hdr *h, const uint8_t *p) {
  if (h->length < PP_KEY_LEN)
    return proto_error(c, "FUNC frame shorter than its key");
  if (h->flags & ~PP_FUNCF_RESET)
    return proto_error(c, "FUNC frame with unknown flags");
  if (h->flags & PP_FUNCF_RESET)
    fm_clear(&c->funcs);
  if (fm_get(&c->funcs, p) != NULL)
    return PP_OK; /* already known: identical by construction */
  if (c->funcs.len >= PPSRV_MAX_FUNCS)
    return proto_error(c, "too many functions (send FUNC with RESET)");
  pp_func *f = pp_func_new(p + PP_KEY_LEN, h->length - PP_KEY_LEN);
  if (f == NULL) {
    conn_close(c, PP_LOG_ERROR, "out of memory");
    return PP_ENOMEM;
  }
  if (CRYPTO_memcmp(f->key, p, PP_KEY_LEN) != 0) {
    pp_func_unref(f);
    return proto_error(c, "FUNC key is not the SHA-256 of its descriptor");
  }
  if (fm_put(&c->funcs, f) != PP_OK) {
    pp_func_unref(f);
    conn_close(c, PP_LOG_ERROR, "out of memory");
    return PP_ENOMEM;
  }
  return PP_OK;
}

/* handle_job: JOB = key[32] + pickled arguments. Makes a pp_job (owning a
 * copy of the arguments) and a ticket remembering the client's id and
 * attempt, and queues it on c; feed_engine hands it on later. Returns 0, or
 * an error after which c is closing. */
static int handle_job(conn *c, const pp_frame_hdr *h, const uint8_t *p) {
  srv *s = c->s;
  if (h->length < PP_KEY_LEN)
    return proto_error(c, "JOB frame shorter than its key");
  if (h->flags & ~PP_JOBF_CHUNK)
    return proto_error(c, "JOB frame with unknown flags");
  pp_func *f = fm_get(&c->funcs, p);
  if (f == NULL)
    return proto_error(c, "JOB names a function key never sent in a FUNC");
  size_t n = h->length - PP_KEY_LEN;
  uint8_t *args = malloc(n ? n : 1);
  ticket *t = calloc(1, sizeof *t);
  pp_job *j = NULL;
  if (args != NULL && t != NULL) {
    if (n)
      memcpy(args, p + PP_KEY_LEN, n);
    j = pp_job_new(f, args, n, h->flags & PP_JOBF_CHUNK, 0);
  }
  if (j == NULL) {
    free(args);
    free(t);
    conn_close(c, PP_LOG_ERROR, "out of memory");
    return PP_ENOMEM;
  }
  t->job = j;
  t->c = c;
  t->client_id = h->id;
  t->client_attempt = h->attempt;
  j->udata = t;
  tlist_push(&c->queued, t);
  c->queued_bytes += n;
  c->jobs_received++;
  if (!c->starved)
    rr_add(s, c);
  return PP_OK;
}

/* handle_frame: act on one opened frame. Returns 0, or a negative error
 * after which the connection is closing. */
static int handle_frame(conn *c, const pp_frame_hdr *h, const uint8_t *p) {
  switch (h->type) {
  case PP_MSG_FUNC:
    return handle_func(c, h, p);
  case PP_MSG_JOB:
    return handle_job(c, h, p);
  case PP_MSG_PING:
    if (h->length > PPSRV_PING_MAX)
      return proto_error(c, "PING payload longer than 64 bytes");
    return conn_send(c, PP_MSG_PONG, 0, h->id, h->attempt, p, h->length,
                     NULL, 0);
  case PP_MSG_PONG:
    return PP_OK; /* we send no PINGs; a stray PONG is harmless */
  case PP_MSG_BYE:
    conn_close(c, PP_LOG_INFO, "client said BYE");
    return PP_ECLOSED;
  default: {
    char what[64];
    snprintf(what, sizeof what, "unexpected frame type %u", h->type);
    return proto_error(c, what);
  }
  }
}

/* process_session: handle every complete sealed frame in the buffer. */
static void process_session(conn *c) {
  pp_frame_hdr h;
  const uint8_t *p;
  int rc = 0;
  while (c->state == C_READY &&
         (rc = pp_session_next(&c->sess, &c->rbuf, PP_FRAME_MAX_DEFAULT, &h,
                               &p)) == 1) {
    if (handle_frame(c, &h, p) != PP_OK)
      return;
    pp_buf_consume(&c->rbuf, PP_SESSION_FRAME_SIZE(&h));
  }
  if (c->state != C_READY)
    return;
  if (rc < 0) {
    char why[128];
    snprintf(why, sizeof why, "bad frame: %s", pp_auth_strerror(rc));
    conn_close(c, PP_LOG_WARNING, why);
    return;
  }
  if (pp_buf_avail(&c->rbuf) == 0 && c->rbuf.cap > (1u << 20))
    pp_buf_free(&c->rbuf); /* do not keep a huge frame's buffer */
  if (c->in_rr)
    feed_engine(c->s);
  if (c->state == C_READY && conn_overloaded(c))
    conn_pause(c);
}

/* ---- the handshake ---------------------------------------------------- */

/* authenticated: the handshake finished. Switch to the session and greet. */
static void authenticated(conn *c) {
  srv *s = c->s;
  int rc = pp_auth_session(&c->auth, &c->sess);
  pp_auth_clear(&c->auth);
  if (rc != PP_OK) {
    conn_close(c, PP_LOG_ERROR, "no session keys after the handshake");
    return;
  }
  c->state = C_READY;
  s->auth_ok++;
  s->nclients++;
  if (s->nclients == 1 && s->cfg->timeout > 0)
    uv_timer_stop(&s->idle_exit);
  pp_log(PP_LOG_INFO, "client %s authenticated (%zu connected)", c->peer,
         s->nclients);
  uint8_t hello[8];
  pp_put_u32(hello, (uint32_t)getpid());
  pp_put_u32(hello + 4, (uint32_t)s->cfg->nworkers);
  conn_send(c, PP_MSG_HELLO, 0, 0, 0, hello, sizeof hello, NULL, 0);
}

/* process_handshake: feed complete handshake frames to the auth machine. */
static void process_handshake(conn *c) {
  pp_frame_hdr h;
  const uint8_t *p;
  int rc = 0;
  while (c->state == C_HANDSHAKE &&
         (rc = pp_auth_next(&c->rbuf, &h, &p)) == 1) {
    pp_buf out;
    pp_buf_init(&out);
    rc = pp_auth_feed(&c->auth, &h, p, &out);
    pp_buf_consume(&c->rbuf, PP_FRAME_HDR + h.length);
    if (conn_write(c, &out) != PP_OK)
      return;
    if (rc < 0) {
      char why[128];
      c->s->auth_failed++;
      snprintf(why, sizeof why, "handshake failed: %s", pp_auth_strerror(rc));
      conn_close(c, PP_LOG_WARNING, why);
      return;
    }
    if (rc == 1) {
      authenticated(c);
      if (c->state == C_READY)
        process_session(c); /* bytes after the handshake are sealed frames */
      return;
    }
  }
  if (c->state == C_HANDSHAKE && rc < 0) {
    char why[128];
    c->s->auth_failed++;
    snprintf(why, sizeof why, "bad handshake frame: %s", pp_auth_strerror(rc));
    conn_close(c, PP_LOG_WARNING, why);
  }
}

/* on_read: bytes arrived in c->rbuf (see on_alloc), or EOF / an error,
 * which close the connection. Main thread. */
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  conn *c = st->data;
  PP_UNUSED(buf);
  if (c->state == C_CLOSING)
    return;
  if (nread > 0) {
    c->rbuf.len += (size_t)nread;
    c->last_rx_ms = uv_now(&c->s->loop);
    if (c->state == C_HANDSHAKE)
      process_handshake(c);
    else
      process_session(c);
  } else if (nread == UV_EOF) {
    int mid = pp_buf_avail(&c->rbuf) > 0;
    conn_close(c, mid ? PP_LOG_WARNING : PP_LOG_INFO,
               mid ? "peer closed the connection mid-frame"
                   : c->state == C_READY ? "peer closed the connection"
                                         : "peer closed the connection before"
                                           " authenticating");
  } else if (nread == UV_ENOBUFS) {
    conn_close(c, PP_LOG_ERROR, "out of memory for the read buffer");
  } else if (nread < 0) {
    char why[96];
    snprintf(why, sizeof why, "read failed: %s", uv_strerror((int)nread));
    conn_close(c, PP_LOG_INFO, why);
  }
}

/* ---- connection lifetime ---------------------------------------------- */

/* on_conn_closed: the socket is closed; unlink and free c (its jobs were
 * detached in conn_close). Ends the loop when stopping and it was the last. */
static void on_conn_closed(uv_handle_t *h) {
  conn *c = h->data;
  srv *s = c->s;
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  s->nconns--;
  pp_buf_free(&c->rbuf);
  pp_auth_clear(&c->auth);
  pp_session_clear(&c->sess);
  pp_buf_free(&c->outq);
  free(c);
  maybe_finish(s);
}

/* conn_close_handle: close c's socket now (once); pending writes are
 * cancelled. */
static void conn_close_handle(conn *c) {
  if (c->handle_closing)
    return;
  c->handle_closing = 1;
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

/* on_shutdown: pending writes are flushed (or failed): close the socket. */
static void on_shutdown(uv_shutdown_t *req, int status) {
  PP_UNUSED(status);
  conn_close_handle(req->handle->data);
}

/* detach_jobs: the connection is going. Drop its queued tickets; cancel its
 * tickets still queued in the engine (a running job finishes and its result
 * is dropped). Main thread. */
static void detach_jobs(conn *c) {
  srv *s = c->s;
  ticket *t;
  rr_remove(s, c);
  while ((t = tlist_pop(&c->queued)) != NULL)
    ticket_free(t);
  c->queued_bytes = 0;
  while ((t = tlist_pop(&c->engine)) != NULL) {
    t->c = NULL;
    /* On success the completion hook runs now, in this thread, and the
     * ticket reaches the done list like any other. */
    if (s->engine != NULL)
      pp_engine_cancel(s->engine, t->job);
  }
  fm_clear(&c->funcs);
}

/* conn_close: close c, once: log why at `level`, release its jobs, and shut
 * the socket down gracefully (pending writes are flushed first, bounded by
 * PPSRV_CLOSE_GRACE_MS). Main thread. */
static void conn_close(conn *c, int level, const char *why) {
  srv *s = c->s;
  if (c->state == C_CLOSING)
    return;
  pp_log(level, "%s %s: %s", c->state == C_READY ? "client" : "connection",
         c->peer, why);
  if (level >= PP_LOG_WARNING)
    s->dropped++;
  if (c->state == C_READY) {
    s->nclients--;
    if (s->nclients == 0 && s->cfg->timeout > 0 && !s->stopping)
      uv_timer_again(&s->idle_exit);
  }
  c->state = C_CLOSING;
  c->closing_ms = uv_now(&s->loop);
  pp_auth_clear(&c->auth);
  uv_read_stop((uv_stream_t *)&c->tcp);
  detach_jobs(c);
  pp_buf_free(&c->rbuf);
  if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
    conn_close_handle(c);
}

/* peer_name: "a.b.c.d:port" or "[v6]:port" of t's peer into out. */
static void peer_name(uv_tcp_t *t, char *out, size_t n) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char host[64] = "?";
  int port = 0;
  snprintf(out, n, "?");
  if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &len) != 0)
    return;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    uv_ip4_name(a, host, sizeof host);
    port = ntohs(a->sin_port);
    snprintf(out, n, "%s:%d", host, port);
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    uv_ip6_name(a, host, sizeof host);
    port = ntohs(a->sin6_port);
    snprintf(out, n, "[%s]:%d", host, port);
  }
}

/* on_connection: accept one client: a conn in the handshake state with
 * TCP_NODELAY set, reading. A failed accept (e.g. out of descriptors) is
 * logged at most once a second. Main thread. */
static void on_connection(uv_stream_t *server, int status) {
  srv *s = server->data;
  static uint64_t last_warn_ms;
  if (status < 0) {
    uint64_t now = uv_now(&s->loop);
    if (now - last_warn_ms > 1000) { /* e.g. EMFILE: do not flood the log */
      last_warn_ms = now;
      pp_log(PP_LOG_WARNING, "cannot accept a connection: %s",
             uv_strerror(status));
    }
    return;
  }
  conn *c = calloc(1, sizeof *c);
  if (c == NULL) {
    pp_log(PP_LOG_ERROR, "out of memory accepting a connection");
    return;
  }
  c->s = s;
  uv_tcp_init(&s->loop, &c->tcp);
  c->tcp.data = c;
  pp_buf_init(&c->rbuf);
  c->next = s->conns;
  if (s->conns)
    s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  c->accepted_ms = c->last_rx_ms = c->write_ms = uv_now(&s->loop);
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    c->state = C_CLOSING;
    conn_close_handle(c);
    return;
  }
  s->accepted++;
  peer_name(&c->tcp, c->peer, sizeof c->peer);
  uv_tcp_nodelay(&c->tcp, 1);
  uv_tcp_keepalive(&c->tcp, 1, 60);
  int rc = pp_auth_init(&c->auth, PP_AUTH_SERVER, s->cfg->secret,
                        s->cfg->secret_len);
  if (rc == PP_OK)
    rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0
             ? PP_OK
             : PP_EIO;
  if (rc != PP_OK) {
    conn_close(c, PP_LOG_ERROR, "cannot set up the connection");
    return;
  }
  pp_log(PP_LOG_DEBUG, "connection from %s (%zu open)", c->peer, s->nconns);
}

/* ---- the engine ------------------------------------------------------- */

/* on_job_complete: the engine's completion hook. Engine thread, or the
 * main thread inside pp_engine_cancel/shutdown; the engine mutex is held.
 * Moves the ticket to the done list and wakes the loop. */
static void on_job_complete(void *ctx, pp_job *j) {
  srv *s = ctx;
  ticket *t = j->udata;
  if (t == NULL)
    return;
  uv_mutex_lock(&s->done_mu);
  t->dnext = NULL;
  if (s->done_tail)
    s->done_tail->dnext = t;
  else
    s->done_head = t;
  s->done_tail = t;
  uv_mutex_unlock(&s->done_mu);
  uv_async_send(&s->done_async);
}

/* send_result: write t's outcome to its client as a sealed RESULT. */
static void send_result(conn *c, ticket *t) {
  pp_job *j = t->job;
  uint8_t pre[16];
  const char *msg = j->errmsg ? j->errmsg : "";
  switch (j->status) {
  case PP_JOB_OK:
  case PP_JOB_EXC:
  case PP_JOB_SERIAL:
    pp_put_u64(pre, j->runtime_ns);
    conn_send(c, PP_MSG_RESULT, (uint32_t)j->status, t->client_id,
              t->client_attempt, pre, 8, j->result, j->result_len);
    break;
  case PP_JOB_LOST:
    pp_put_u64(pre, 0);
    pp_put_u32(pre + 8, (uint32_t)(int32_t)j->exitstatus);
    pp_put_u32(pre + 12, (uint32_t)(int32_t)j->termsignal);
    conn_send(c, PP_MSG_RESULT, PP_RES_LOST, t->client_id, t->client_attempt,
              pre, 16, msg, strlen(msg));
    break;
  default: /* FAILED, DESTROYED, CANCELLED */
    if (j->errmsg == NULL)
      msg = j->status == PP_JOB_CANCELLED ? "the job was cancelled on the node"
                                          : "the node could not run the job";
    pp_put_u64(pre, 0);
    conn_send(c, PP_MSG_RESULT, PP_RES_FAILED, t->client_id,
              t->client_attempt, pre, 8, msg, strlen(msg));
    break;
  }
}

/* drain_done: deliver every completed ticket, then refill the engine. */
static void drain_done(srv *s) {
  uv_mutex_lock(&s->done_mu);
  ticket *t = s->done_head;
  s->done_head = s->done_tail = NULL;
  uv_mutex_unlock(&s->done_mu);
  s->batching = 1;
  while (t != NULL) {
    ticket *next = t->dnext;
    conn *c = t->c;
    uint64_t rt = t->job->runtime_ns ? t->job->runtime_ns : 1;
    s->ema_ns = s->ema_ns ? s->ema_ns - s->ema_ns / 8 + rt / 8 : rt;
    s->in_engine--;
    if (c != NULL) {
      tlist_remove(&c->engine, t);
      c->jobs_done++;
      s->jobs_done++;
      if (c->state == C_READY)
        send_result(c, t);
    }
    ticket_free(t);
    t = next;
  }
  flush_batch(s);
  feed_engine(s); /* resumes connections whose queue drained */
}

/* engine_cap: how many jobs to keep inside the engine. Long jobs: two per
 * worker, so a new client waits at most about one job. Short jobs (by the
 * mean run time seen): up to 256 per worker, about 2 ms of work, so the
 * engine can batch them to its workers. */
static size_t engine_cap(const srv *s) {
  size_t per = 2;
  if (s->ema_ns > 0) {
    uint64_t k = 2000000u / s->ema_ns;
    per = k < 2 ? 2 : k > 256 ? 256 : (size_t)k;
  }
  return s->nworkers * per;
}

/* on_done_async: the engine completed jobs (on_job_complete woke us). */
static void on_done_async(uv_async_t *a) { drain_done(a->data); }

/* feed_engine: hand waiting tickets to the engine, one per connection in
 * turn, keeping at most engine_cap() jobs inside it. */
static void feed_engine(srv *s) {
  if (s->stopping || s->engine == NULL)
    return;
  size_t cap = engine_cap(s);
  while (s->in_engine < cap && s->rr_head != NULL) {
    conn *c = s->rr_head;
    rr_remove(s, c);
    if (write_backlogged(c, 1)) {
      /* it is not reading its results: run nothing more for it until its
       * writes drain (on_write puts it back) */
      if (!c->starved)
        c->write_ms = uv_now(&s->loop);
      c->starved = 1;
      continue;
    }
    ticket *t = tlist_pop(&c->queued);
    if (t == NULL)
      continue;
    c->queued_bytes -= t->job->args_len;
    if (c->queued.len > 0)
      rr_add(s, c); /* back of the line */
    if (pp_engine_submit(s->engine, t->job) != PP_OK) {
      ticket_free(t);
      continue;
    }
    t->in_engine = 1;
    tlist_push(&c->engine, t);
    s->in_engine++;
    if (c->paused && conn_relaxed(c))
      conn_resume(c);
  }
}

/* ---- timers, signals, stop -------------------------------------------- */

/* on_sweep: every 250 ms, close connections past their deadline: the
 * handshake deadline; the socket timeout (-k) since the last byte received
 * (not while reading is paused for back-pressure); the socket timeout since
 * the last write progress while results wait to be written (a client that
 * does not read); and the grace period of a closing connection. */
static void on_sweep(uv_timer_t *t) {
  srv *s = t->data;
  uint64_t now = uv_now(&s->loop);
  conn *next;
  for (conn *c = s->conns; c; c = next) {
    next = c->next;
    if (c->state == C_HANDSHAKE) {
      if (now - c->accepted_ms >= s->hs_timeout_ms)
        conn_close(c, PP_LOG_WARNING,
                   pp_buf_avail(&c->rbuf)
                       ? "handshake not completed in time (partial frame)"
                       : "handshake not completed in time");
    } else if (c->state == C_READY) {
      if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > 0 &&
          now - c->write_ms >= s->idle_timeout_ms) {
        conn_close(c, PP_LOG_WARNING, "client stopped reading its results");
      } else if (c->paused) {
        /* waiting for its own jobs to drain: not the client's silence */
      } else if (now - c->last_rx_ms >= s->idle_timeout_ms) {
        conn_close(c, PP_LOG_WARNING,
                   pp_buf_avail(&c->rbuf)
                       ? "socket timeout in the middle of a frame"
                       : "socket timeout (no PING or other frame)");
      }
    } else if (!c->handle_closing &&
               now - c->closing_ms >= PPSRV_CLOSE_GRACE_MS) {
      conn_close_handle(c);
    }
  }
}

/* close_handle: close one of the server's own handles (not a conn). */
static void close_handle(srv *s, uv_handle_t *h) {
  if (!uv_is_closing(h)) {
    h->data = s;
    uv_close(h, NULL);
  }
}

/* maybe_finish: once stopping and every connection is closed, close the
 * remaining handles so uv_run returns. */
static void maybe_finish(srv *s) {
  if (!s->stopping || s->conns != NULL)
    return;
  close_handle(s, (uv_handle_t *)&s->sweep);
  close_handle(s, (uv_handle_t *)&s->idle_exit);
  close_handle(s, (uv_handle_t *)&s->sig_term);
  close_handle(s, (uv_handle_t *)&s->sig_int);
  close_handle(s, (uv_handle_t *)&s->sig_usr1);
  close_handle(s, (uv_handle_t *)&s->done_async);
}

/* server_stop: stop listening, say BYE to every client, close every
 * connection, shut the engine down (its workers are killed and reaped) and
 * let the loop end. Idempotent. */
static void server_stop(srv *s, const char *why) {
  if (s->stopping)
    return;
  pp_log(PP_LOG_INFO, "stopping: %s", why);
  s->stopping = 1;
  ppsrv_announce_stop(s->announcer);
  s->announcer = NULL;
  for (conn *c = s->conns, *next; c; c = next) {
    next = c->next;
    if (c->state == C_READY)
      conn_send(c, PP_MSG_BYE, 0, 0, 0, NULL, 0, NULL, 0);
    conn_close(c, PP_LOG_INFO, "server stopping");
  }
  if (s->listener_init)
    close_handle(s, (uv_handle_t *)&s->listener);
  if (s->engine != NULL)
    pp_engine_shutdown(s->engine); /* fails what is left; workers reaped */
  drain_done(s);
  maybe_finish(s);
}

/* log_stats: SIGUSR1. */
static void log_stats(srv *s) {
  pp_engine_stats es;
  int pids[1024];
  uint64_t pj[1024];
  char line[900];
  size_t n = 0;
  size_t queued = 0;
  pp_engine_get_stats(s->engine, &es);
  int np = pp_engine_worker_pids(s->engine, pids, pj, 1024);
  for (conn *c = s->conns; c; c = c->next)
    queued += c->queued.len;
  pp_log(PP_LOG_INFO,
         "stats: %zu clients connected, %zu connections open, %llu accepted,"
         " %llu authenticated, %llu failed the handshake, %llu dropped for"
         " errors; up %.0f s",
         s->nclients, s->nconns, (unsigned long long)s->accepted,
         (unsigned long long)s->auth_ok, (unsigned long long)s->auth_failed,
         (unsigned long long)s->dropped,
         (double)(uv_now(&s->loop) - s->started_ms) / 1000.0);
  pp_log(PP_LOG_INFO,
         "stats: jobs done %llu (worker time %.3f s); %zu in the engine"
         " (%llu queued, %llu running); %zu waiting in client queues",
         (unsigned long long)s->jobs_done, (double)es.time_ns / 1e9,
         s->in_engine, (unsigned long long)es.queued,
         (unsigned long long)es.running, queued);
  n = (size_t)snprintf(line, sizeof line, "stats: workers %d live of %d:",
                       es.nlive, es.nworkers);
  for (int i = 0; i < np && n < sizeof line - 40; i++)
    n += (size_t)snprintf(line + n, sizeof line - n, " pid %d (%llu jobs)%s",
                          pids[i], (unsigned long long)pj[i],
                          i + 1 < np ? "," : "");
  pp_log(PP_LOG_INFO, "%s", line);
  for (conn *c = s->conns; c; c = c->next)
    if (c->state == C_READY)
      pp_log(PP_LOG_INFO,
             "stats: client %s: jobs done %llu, received %llu, queued %zu,"
             " in the engine %zu, connected %.0f s%s",
             c->peer, (unsigned long long)c->jobs_done,
             (unsigned long long)c->jobs_received, c->queued.len,
             c->engine.len,
             (double)(uv_now(&s->loop) - c->accepted_ms) / 1000.0,
             c->paused ? ", paused" : "");
}

/* on_signal: SIGUSR1 logs statistics; SIGTERM and SIGINT stop the server. */
static void on_signal(uv_signal_t *h, int signum) {
  srv *s = h->data;
  if (signum == SIGUSR1) {
    log_stats(s);
    return;
  }
  char why[64];
  snprintf(why, sizeof why, "received %s", signum == SIGINT ? "SIGINT" : "SIGTERM");
  server_stop(s, why);
}

/* on_idle_exit: -t: no authenticated client for that long: stop (but not
 * in the middle of someone's handshake). The timer is stopped while clients
 * are connected and re-armed when the last goes. */
static void on_idle_exit(uv_timer_t *t) {
  srv *s = t->data;
  if (s->nclients > 0)
    return;
  for (conn *c = s->conns; c; c = c->next)
    if (c->state == C_HANDSHAKE) {
      /* someone is authenticating right now: look again shortly (each
       * handshake ends within its deadline) */
      uv_timer_start(&s->idle_exit, on_idle_exit, 250,
                     (uint64_t)s->cfg->timeout * 1000u);
      return;
    }
  char why[96];
  snprintf(why, sizeof why, "no clients for %d s (-t)", s->cfg->timeout);
  server_stop(s, why);
}

/* ---- start-up --------------------------------------------------------- */

/* resolve_listen: the address to bind: a numeric IPv4 or IPv6 address, or
 * a host name resolved with getaddrinfo. Returns 0 or a libuv error. */
static int resolve_listen(srv *s, struct sockaddr_storage *ss) {
  const char *iface = s->cfg->interface;
  int port = s->cfg->port;
  memset(ss, 0, sizeof *ss);
  if (uv_ip4_addr(iface, port, (struct sockaddr_in *)ss) == 0)
    return 0;
  const char *v6 = iface;
  char buf[96];
  size_t n = strlen(iface);
  if (n > 2 && iface[0] == '[' && iface[n - 1] == ']' && n - 2 < sizeof buf) {
    memcpy(buf, iface + 1, n - 2);
    buf[n - 2] = '\0';
    v6 = buf;
  }
  if (uv_ip6_addr(v6, port, (struct sockaddr_in6 *)ss) == 0)
    return 0;
  uv_getaddrinfo_t req;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = uv_getaddrinfo(&s->loop, &req, NULL, iface, NULL, &hints);
  if (rc != 0)
    return rc;
  if (req.addrinfo == NULL) {
    return UV_EAI_NONAME;
  }
  memcpy(ss, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
  if (ss->ss_family == AF_INET)
    ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
  else
    ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
  uv_freeaddrinfo(req.addrinfo);
  return 0;
}

/* start_listening: bind and listen; records the bound address (port 0 picks
 * one). Returns 0 or -1 after logging why. */
static int start_listening(srv *s) {
  struct sockaddr_storage ss;
  int rc = resolve_listen(s, &ss);
  if (rc != 0) {
    pp_log(PP_LOG_ERROR, "cannot resolve interface '%s': %s",
           s->cfg->interface, uv_strerror(rc));
    return -1;
  }
  uv_tcp_init(&s->loop, &s->listener);
  s->listener.data = s;
  s->listener_init = 1;
  rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
  if (rc != 0) {
    pp_log(PP_LOG_ERROR, "cannot listen on %s port %d: %s", s->cfg->interface,
           s->cfg->port, uv_strerror(rc));
    return -1;
  }
  int len = sizeof ss;
  uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
  s->bound = ss;
  char host[64] = "?";
  if (ss.ss_family == AF_INET) {
    uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof host);
    snprintf(s->listen_name, sizeof s->listen_name, "%s:%d", host,
             ntohs(((struct sockaddr_in *)&ss)->sin_port));
  } else {
    uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof host);
    snprintf(s->listen_name, sizeof s->listen_name, "[%s]:%d", host,
             ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
  }
  return 0;
}

/* write_pid_file: write "<pid>\n" to the configured path. 0 or -1. */
static int write_pid_file(srv *s) {
  const char *path = s->cfg->pid_file;
  char text[32];
  if (path == NULL)
    return 0;
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    pp_log(PP_LOG_ERROR, "cannot write pid file %s: %s", path,
           strerror(errno));
    return -1;
  }
  int n = snprintf(text, sizeof text, "%d\n", (int)getpid());
  ssize_t w = write(fd, text, (size_t)n);
  close(fd);
  if (w != n) {
    pp_log(PP_LOG_ERROR, "cannot write pid file %s", path);
    unlink(path);
    return -1;
  }
  s->pidfile_written = 1;
  return 0;
}

/* start_engine: the worker pool. Returns 0 or -1 after logging why. */
static int start_engine(srv *s) {
  const ppsrv_config *cfg = s->cfg;
  char pid[24], proto[16];
  snprintf(pid, sizeof pid, "%d", (int)getpid());
  snprintf(proto, sizeof proto, "%d", cfg->proto >= 0 ? cfg->proto : 4);
  char *argv[] = {cfg->python, "-c", "import pp._worker as w; w.main()", pid,
                  proto, cfg->restart ? "1" : "0", NULL};
  pp_engine_opts o;
  memset(&o, 0, sizeof o);
  o.worker_argv = argv;
  o.nworkers = cfg->nworkers;
  o.restart = cfg->restart;
  o.max_retries = 2;
  o.on_complete = on_job_complete;
  o.on_complete_ctx = s;
  int rc = pp_engine_new(&o, &s->engine);
  if (rc != PP_OK) {
    pp_log(PP_LOG_ERROR, "cannot start the engine: %s", pp_strerror(rc));
    s->engine = NULL;
    return -1;
  }
  return 0;
}

int ppsrv_run(const ppsrv_config *cfg) {
  srv *s = calloc(1, sizeof *s);
  int rc = 1;
  if (s == NULL) {
    pp_log(PP_LOG_ERROR, "out of memory");
    return 1;
  }
  s->cfg = cfg;
  s->nworkers = (size_t)cfg->nworkers;
  s->idle_timeout_ms = (uint64_t)cfg->socket_timeout * 1000u;
  s->hs_timeout_ms = s->idle_timeout_ms < PPSRV_HANDSHAKE_TIMEOUT_MS
                         ? s->idle_timeout_ms
                         : PPSRV_HANDSHAKE_TIMEOUT_MS;
  if (uv_loop_init(&s->loop) != 0 || uv_mutex_init(&s->done_mu) != 0) {
    pp_log(PP_LOG_ERROR, "cannot initialise the event loop");
    free(s);
    return 1;
  }
  s->started_ms = uv_now(&s->loop);
  uv_async_init(&s->loop, &s->done_async, on_done_async);
  s->done_async.data = s;
  uv_timer_init(&s->loop, &s->sweep);
  s->sweep.data = s;
  uv_timer_init(&s->loop, &s->idle_exit);
  s->idle_exit.data = s;
  uv_signal_init(&s->loop, &s->sig_term);
  uv_signal_init(&s->loop, &s->sig_int);
  uv_signal_init(&s->loop, &s->sig_usr1);
  s->sig_term.data = s->sig_int.data = s->sig_usr1.data = s;

  if (start_listening(s) != 0)
    goto stop;
  if (start_engine(s) != 0)
    goto stop;
  if (write_pid_file(s) != 0)
    goto stop;
  if (cfg->autodiscovery) {
    int port = s->bound.ss_family == AF_INET
                   ? ntohs(((struct sockaddr_in *)&s->bound)->sin_port)
                   : ntohs(((struct sockaddr_in6 *)&s->bound)->sin6_port);
    s->announcer = ppsrv_announce_start(&s->loop, cfg,
                                        (struct sockaddr *)&s->bound, port);
  }
  uv_signal_start(&s->sig_term, on_signal, SIGTERM);
  uv_signal_start(&s->sig_int, on_signal, SIGINT);
  uv_signal_start(&s->sig_usr1, on_signal, SIGUSR1);
  uv_timer_start(&s->sweep, on_sweep, 250, 250);
  if (cfg->timeout > 0) {
    uv_timer_start(&s->idle_exit, on_idle_exit, (uint64_t)cfg->timeout * 1000u,
                   (uint64_t)cfg->timeout * 1000u);
  }
  char idle[48] = "";
  if (cfg->timeout > 0)
    snprintf(idle, sizeof idle, ", exits after %d s without clients",
             cfg->timeout);
  pp_log(PP_LOG_INFO,
         "ppserver pid %d listening on %s with %d workers (%s, pickle"
         " protocol %d, socket timeout %d s%s)",
         (int)getpid(), s->listen_name, cfg->nworkers,
         cfg->restart ? "restart after each job" : "persistent workers",
         cfg->proto >= 0 ? cfg->proto : 4, cfg->socket_timeout, idle);
  rc = 0;

stop:
  if (rc != 0)
    server_stop(s, "start-up failed");
  uv_run(&s->loop, UV_RUN_DEFAULT);
  /* every handle is closed: the loop ended */
  if (s->engine != NULL) {
    pp_engine_free(s->engine);
    s->engine = NULL;
  }
  drain_done(s); /* nothing should be left; frees it if there is */
  if (s->pidfile_written)
    unlink(cfg->pid_file);
  if (uv_loop_close(&s->loop) != 0)
    pp_log(PP_LOG_DEBUG, "event loop closed with handles still open");
  uv_mutex_destroy(&s->done_mu);
  if (rc == 0)
    pp_log(PP_LOG_INFO, "ppserver stopped");
  free(s);
  return rc;
}
