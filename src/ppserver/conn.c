/* conn.c — ppserver's client connections and the protocol they speak
 * (docs/protocol.md section 7): accepting, reading with bounded buffers,
 * the handshake (auth.h, server role), sealed frames in (FUNC, JOB, PING,
 * BYE) and out (HELLO, PONG, RESULT, BYE), writing and batching,
 * back-pressure, liveness deadlines and closing. Jobs go to feed.c; see
 * ppsrv_int.h for the objects. A connection is TLS or plain by its first
 * byte (docs/protocol.md 6.6): TLS bytes go through tls.h (conn_write is
 * the one place they are encrypted, tls_input the one where they are
 * decrypted into rbuf) and its frames carry no MAC. Main thread only. */
#include "ppsrv_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#if defined(__GLIBC__)
#include <malloc.h> /* malloc_trim */
#endif
#include <sys/ioctl.h>
#ifdef __linux__
#include <linux/sockios.h> /* SIOCOUTQ */
#endif

typedef struct wreq {
  uv_write_t req;
  pp_buf buf;
} wreq;

static void conn_close_handle(conn *c);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* ---- function map ----------------------------------------------------- */

static size_t fm_slot(const funcmap *m, const uint8_t *key) {
  uint64_t h = pp_get_u64(key); /* SHA-256 bytes: already uniform */
  return (size_t)h & (m->cap - 1);
}

/* fm_find: the slot of the function with this key (borrowed, valid until
 * the map next changes), or NULL. */
static fslot *fm_find(const funcmap *m, const uint8_t *key) {
  if (m->cap == 0)
    return NULL;
  for (size_t i = fm_slot(m, key);; i = (i + 1) & (m->cap - 1)) {
    fslot *e = &m->slots[i];
    if (e->f == NULL)
      return NULL;
    if (memcmp(e->f->key, key, PP_KEY_LEN) == 0)
      return e;
  }
}

/* fm_get: the function with this key, borrowed, or NULL. */
static pp_func *fm_get(const funcmap *m, const uint8_t *key) {
  fslot *e = fm_find(m, key);
  return e ? e->f : NULL;
}

/* ppsrv__func_slot (ppsrv_int.h): feed.c keeps its estimates there. */
fslot *ppsrv__func_slot(conn *c, const uint8_t *key) {
  return fm_find(&c->funcs, key);
}

/* fm_put: insert f (taking the caller's reference) with no run-time
 * estimate yet. The key must not be present. Returns 0 or PP_ENOMEM
 * (nothing taken). */
static int fm_put(funcmap *m, pp_func *f) {
  if ((m->len + 1) * 2 > m->cap) {
    size_t ncap = m->cap ? m->cap * 2 : 16;
    fslot *ns = calloc(ncap, sizeof *ns);
    if (ns == NULL)
      return PP_ENOMEM;
    funcmap nm = {ns, ncap, 0};
    for (size_t i = 0; i < m->cap; i++)
      if (m->slots[i].f != NULL) {
        size_t k = fm_slot(&nm, m->slots[i].f->key);
        while (ns[k].f != NULL)
          k = (k + 1) & (ncap - 1);
        ns[k] = m->slots[i];
        nm.len++;
      }
    free(m->slots);
    *m = nm;
  }
  size_t k = fm_slot(m, f->key);
  while (m->slots[k].f != NULL)
    k = (k + 1) & (m->cap - 1);
  m->slots[k] = (fslot){f, 0};
  m->len++;
  return PP_OK;
}

/* fm_clear: drop every function (jobs keep their own references). */
static void fm_clear(funcmap *m) {
  for (size_t i = 0; i < m->cap; i++)
    if (m->slots[i].f != NULL)
      pp_func_unref(m->slots[i].f);
  free(m->slots);
  memset(m, 0, sizeof *m);
}

/* ---- writing ---------------------------------------------------------- */

/* on_write: libuv's write callback: a write finished (or was cancelled by
 * a close). Frees the request and its bytes (the request owned them); a
 * failed write closes the connection; progress is liveness for the sweep
 * and may end a starvation or a back-pressure pause. Main thread. */
static void on_write(uv_write_t *req, int status) {
  wreq *w = (wreq *)req;
  conn *c = req->handle->data;
  pp_buf_free(&w->buf);
  free(w);
  if (status < 0) {
    if (status != UV_ECANCELED && c->state != C_CLOSING) {
      char why[96];
      snprintf(why, sizeof why, "write failed: %s", uv_strerror(status));
      ppsrv__conn_close(c, PP_LOG_INFO, why);
    }
    return;
  }
  c->write_ms = c->tx_ms = uv_now(&c->s->loop);
  if (c->state != C_READY)
    return;
  ppsrv__feed_write_progress(c);
  ppsrv__conn_maybe_resume(c);
}

/* conn_write_raw: write the bytes of *buf as they are. Its storage moves
 * into the write request and *buf is left empty, also on failure (the
 * bytes are sealed frames or TLS records of this session: nobody can send
 * them again). Returns 0, or a negative pp error after which the
 * connection is closing. */
static int conn_write_raw(conn *c, pp_buf *buf) {
  if (pp_buf_avail(buf) == 0) {
    pp_buf_free(buf);
    return PP_OK;
  }
  wreq *w = calloc(1, sizeof *w);
  if (w == NULL) {
    pp_buf_free(buf);
    ppsrv__conn_close(c, PP_LOG_ERROR, "out of memory");
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
    ppsrv__conn_close(c, PP_LOG_INFO, why);
    return pp_err_from_uv(rc);
  }
  return PP_OK;
}

/* conn_write: write the frames in *buf: encrypted on a TLS connection,
 * else as they are; *buf is left empty. Returns 0, or a negative pp error
 * after which the connection is closing. */
static int conn_write(conn *c, pp_buf *buf) {
  if (c->tls == NULL || pp_buf_avail(buf) == 0)
    return conn_write_raw(c, buf);
  pp_buf rec;
  pp_buf_init(&rec);
  int rc = pp_tls_write(c->tls, buf->data + buf->off, pp_buf_avail(buf), &rec);
  pp_buf_free(buf);
  if (rc != PP_OK) {
    char why[320];
    pp_buf_free(&rec);
    snprintf(why, sizeof why, "cannot encrypt: %s", rc == PP_ENOMEM
             ? "out of memory" : pp_tls_error(c->tls));
    ppsrv__conn_close(c, PP_LOG_ERROR, why);
    return rc;
  }
  return conn_write_raw(c, &rec);
}

int ppsrv__conn_send(conn *c, uint8_t type, uint32_t flags, uint64_t id,
                     uint32_t attempt, const pp_part *parts, size_t n) {
  pp_buf *out = &c->outq;
  size_t len = pp_frame_parts_len(parts, n);
  size_t mark = out->len;
  /* room for the MAC too, so sealing never moves a large frame again */
  int rc = len > UINT32_MAX
               ? PP_ETOOBIG
               : pp_buf_reserve(out, PP_FRAME_HDR + len + PP_AUTH_MAC_LEN);
  if (rc == PP_OK) {
    mark = out->len; /* reserve may have compacted the buffer */
    rc = pp_frame_build(out, type, flags, id, attempt, parts, n);
  }
  if (rc == PP_OK && c->tls == NULL) { /* inside TLS: no MAC */
    rc = pp_session_seal_tail(&c->sess, out, PP_FRAME_HDR + len);
    if (rc != PP_OK)
      out->len = mark; /* drop the unsealed frame */
  }
  if (rc != PP_OK) {
    char why[96];
    if (rc == PP_ETOOBIG)
      snprintf(why, sizeof why, "result too large for one frame");
    else
      snprintf(why, sizeof why, "cannot seal a frame: %s",
               pp_auth_strerror(rc));
    ppsrv__conn_close(c, PP_LOG_ERROR, why);
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

/* ppsrv__flush_batch (ppsrv_int.h): connections that closed meanwhile
 * drop what they queued. Main thread. */
void ppsrv__flush_batch(srv *s) {
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

int ppsrv__conn_backlogged(conn *c, size_t div) {
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

/* conn_resume: start reading again after a pause; the silence deadline
 * starts again from now. A failure closes c. */
static void conn_resume(conn *c) {
  if (!c->paused || c->state != C_READY)
    return;
  c->paused = 0;
  c->last_rx_ms = c->frame_ms = uv_now(&c->s->loop);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
    ppsrv__conn_close(c, PP_LOG_INFO, "cannot resume reading");
  else
    pp_log(PP_LOG_DEBUG, "%s: reading again", c->peer);
}

/* ppsrv__conn_maybe_resume (ppsrv_int.h). Main thread. */
void ppsrv__conn_maybe_resume(conn *c) {
  if (c->paused && conn_relaxed(c))
    conn_resume(c);
}

/* on_alloc: libuv's allocation callback: room for the next read, at the
 * end of c->rbuf (c owns it). Before authentication the buffer never
 * holds more than two maximal handshake frames. Afterwards it holds at most
 * the frame being received (whose header has been validated) plus 64 KiB,
 * growing with the bytes that actually arrive, never in one jump to the
 * size a header announces. */
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  /* TLS: ciphertext lands in one scratch buffer (one thread, and on_read
   * feeds it to TLS before the next read), plaintext in rbuf (tls_input) */
  static uint8_t net_scratch[65536];
  conn *c = h->data;
  size_t avail = pp_buf_avail(&c->rbuf);
  size_t room;
  PP_UNUSED(hint);
  if (c->tls != NULL) {
    *buf = uv_buf_init((char *)net_scratch, sizeof net_scratch);
    return;
  }
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
    *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS to on_read */
    return;
  }
  *buf = uv_buf_init((char *)c->rbuf.data + c->rbuf.len, (unsigned)room);
}

/* ---- frames from an authenticated client ------------------------------ */

/* proto_error: a well-formed frame that is wrong here. */
static int proto_error(conn *c, const char *what) {
  char why[160];
  snprintf(why, sizeof why, "protocol error: %s", what);
  ppsrv__conn_close(c, PP_LOG_WARNING, why);
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
  if (h->flags & PP_FUNCF_RESET) {
    fm_clear(&c->funcs);
    c->func_bytes = 0;
  }
  if (fm_get(&c->funcs, p) != NULL)
    return PP_OK; /* already known: identical by construction */
  if (c->funcs.len >= PPSRV_MAX_FUNCS)
    return proto_error(c, "too many functions (send FUNC with RESET)");
  size_t desc = h->length - PP_KEY_LEN;
  if (desc > PPSRV_FUNC_BYTES_MAX - c->func_bytes) {
    char what[128];
    snprintf(what, sizeof what,
             "functions over %u bytes on one connection (send FUNC with"
             " RESET)", PPSRV_FUNC_BYTES_MAX);
    return proto_error(c, what);
  }
  pp_func *f = pp_func_new(p + PP_KEY_LEN, h->length - PP_KEY_LEN);
  if (f == NULL) {
    ppsrv__conn_close(c, PP_LOG_ERROR, "out of memory");
    return PP_ENOMEM;
  }
  if (CRYPTO_memcmp(f->key, p, PP_KEY_LEN) != 0) {
    pp_func_unref(f);
    return proto_error(c, "FUNC key is not the SHA-256 of its descriptor");
  }
  if (fm_put(&c->funcs, f) != PP_OK) {
    pp_func_unref(f);
    ppsrv__conn_close(c, PP_LOG_ERROR, "out of memory");
    return PP_ENOMEM;
  }
  c->func_bytes += desc;
  return PP_OK;
}

/* ---- objects put once (docs/protocol.md 2.2, 7.7a) ----------------------- */

/* obj_index: the index of c's object with this key, or -1. */
static ssize_t obj_index(const conn *c, const uint8_t *key) {
  for (size_t i = 0; i < c->nobjs; i++)
    if (memcmp(c->objs[i]->key, key, PP_KEY_LEN) == 0)
      return (ssize_t)i;
  return -1;
}

/* obj_forget: remove c's object i and release it in the engine (workers
 * that hold it drop it; queued jobs keep their own references). */
static void obj_forget(conn *c, size_t i) {
  pp_obj *o = c->objs[i];
  c->objs[i] = c->objs[--c->nobjs];
  c->obj_bytes -= o->len;
  if (c->s->engine != NULL)
    pp_engine_obj_release(c->s->engine, o);
  pp_obj_unref(o);
}

/* objs_clear: the connection is closing: release every object it sent. */
static void objs_clear(conn *c) {
  while (c->nobjs > 0)
    obj_forget(c, c->nobjs - 1);
  free(c->objs);
  c->objs = NULL;
  c->capobjs = 0;
}

/* handle_obj: OBJ = key[32] + the object's bytes (the key MUST be their
 * SHA-256), or OBJ DROP = key[32]. The client decides what the node holds
 * but may not make it hold more than --object-store-limit bytes or
 * PP_OBJS_MAX objects (a protocol error). Returns 0, or an error after
 * which c is closing. */
static int handle_obj(conn *c, const pp_frame_hdr *h, const uint8_t *p) {
  if (h->length < PP_KEY_LEN)
    return proto_error(c, "OBJ frame shorter than its key");
  if (h->flags & ~(PP_OBJF_DROP | PP_OBJF_BUFS))
    return proto_error(c, "OBJ frame with unknown flags");
  ssize_t at = obj_index(c, p);
  if (h->flags & PP_OBJF_DROP) {
    if (h->length != PP_KEY_LEN)
      return proto_error(c, "OBJ DROP frame longer than its key");
    if (at >= 0) /* one it does not hold is ignored */
      obj_forget(c, (size_t)at);
    return PP_OK;
  }
  size_t len = h->length - PP_KEY_LEN;
  if (at >= 0)
    return proto_error(c, "OBJ for an object the connection holds");
  if (c->nobjs >= PP_OBJS_MAX || len > c->s->cfg->obj_limit ||
      c->obj_bytes + len > c->s->cfg->obj_limit) {
    char why[112];
    snprintf(why, sizeof why,
             "objects put would exceed the object store limit (%llu bytes,"
             " %u objects)", (unsigned long long)c->s->cfg->obj_limit,
             (unsigned)PP_OBJS_MAX);
    return proto_error(c, why);
  }
  if (c->nobjs == c->capobjs) {
    size_t cap = c->capobjs ? c->capobjs * 2 : 8;
    pp_obj **a = realloc(c->objs, cap * sizeof *a);
    if (a == NULL) {
      ppsrv__conn_close(c, PP_LOG_ERROR, "out of memory");
      return PP_ENOMEM;
    }
    c->objs = a;
    c->capobjs = cap;
  }
  /* out-of-band buffers go to the arena, so the node's workers read them
   * in place as a client's local workers do */
  pp_shm *shm = (h->flags & PP_OBJF_BUFS) && c->s->engine != NULL
                    ? pp_engine_shm(c->s->engine)
                    : NULL;
  pp_obj *o = pp_obj_alloc(shm, len, h->flags & PP_OBJF_BUFS);
  if (o == NULL) {
    ppsrv__conn_close(c, PP_LOG_ERROR, "out of memory");
    return PP_ENOMEM;
  }
  memcpy(o->data, p + PP_KEY_LEN, len);
  pp_obj_hash(o);
  if (memcmp(o->key, p, PP_KEY_LEN) != 0) {
    pp_obj_unref(o);
    return proto_error(c, "OBJ key is not the SHA-256 of its bytes");
  }
  c->objs[c->nobjs++] = o;
  c->obj_bytes += len;
  return PP_OK;
}

/* handle_job: JOB = key[32] + pickled arguments, for a function this
 * connection defined. Validates it and queues it on c (ppsrv__feed_job
 * copies the arguments); ppsrv__feed hands it to the engine later. Returns
 * 0, or an error after which c is closing. */
static int handle_job(conn *c, const pp_frame_hdr *h, const uint8_t *p) {
  size_t off = PP_KEY_LEN;
  uint64_t limits[2] = {0, 0};
  if (h->length < PP_KEY_LEN)
    return proto_error(c, "JOB frame shorter than its key");
  if (h->flags & ~PP_JOBF_KNOWN)
    return proto_error(c, "JOB frame with unknown flags");
  if (h->flags & PP_JOBF_LIMITS) {
    if (h->length < PP_KEY_LEN + PP_LIMITS_LEN)
      return proto_error(c, "JOB frame shorter than its key and limits");
    limits[0] = pp_get_u64(p + PP_KEY_LEN);     /* timeout ns */
    limits[1] = pp_get_u64(p + PP_KEY_LEN + 8); /* memory limit bytes */
    if (c->s->cfg->job_memory_limit &&
        (limits[1] == 0 || limits[1] > c->s->cfg->job_memory_limit))
      limits[1] = c->s->cfg->job_memory_limit; /* the node's cap */
    off += PP_LIMITS_LEN;
  } else if (c->s->cfg->job_memory_limit) {
    limits[1] = c->s->cfg->job_memory_limit;
  }
  pp_obj *objs[PP_JOB_OBJS_MAX];
  uint32_t nobjs = 0;
  if (h->flags & PP_JOBF_OBJS) {
    uint32_t n = h->length >= off + 8 ? pp_get_u32(p + off) : 0;
    if (n == 0 || n > PP_JOB_OBJS_MAX || pp_get_u32(p + off + 4) != 0 ||
        h->length - off - 8 < (size_t)n * PP_KEY_LEN)
      return proto_error(c, "JOB frame with a malformed object list");
    for (uint32_t i = 0; i < n; i++) {
      ssize_t at = obj_index(c, p + off + 8 + (size_t)i * PP_KEY_LEN);
      if (at < 0)
        return proto_error(c, "JOB names an object never sent in an OBJ");
      objs[nobjs++] = c->objs[at];
    }
    off += 8 + (size_t)n * PP_KEY_LEN;
  }
  pp_func *f = fm_get(&c->funcs, p);
  if (f == NULL)
    return proto_error(c, "JOB names a function key never sent in a FUNC");
  if (ppsrv__feed_job(c, f, objs, nobjs,
                      h->flags &
                          (PP_JOBF_CHUNK | PP_JOBF_BUFS | PP_JOBF_ONEARG),
                      h->id,
                      h->attempt, p + off, h->length - off, limits) != PP_OK) {
    ppsrv__conn_close(c, PP_LOG_ERROR, "out of memory");
    return PP_ENOMEM;
  }
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
  case PP_MSG_OBJ:
    return handle_obj(c, h, p);
  case PP_MSG_PING: {
    if (h->length > PPSRV_PING_MAX)
      return proto_error(c, "PING payload longer than 64 bytes");
    pp_part echo = {p, h->length};
    return ppsrv__conn_send(c, PP_MSG_PONG, 0, h->id, h->attempt, &echo, 1);
  }
  case PP_MSG_PONG:
    return PP_OK; /* we send no PINGs; a stray PONG is harmless */
  case PP_MSG_STOP:
    if (h->length != 4)
      return proto_error(c, "STOP payload is not 4 bytes");
    /* a job this connection does not hold is ignored */
    ppsrv__feed_stop(c, h->id, h->attempt,
                     (uint64_t)pp_get_u32(p) * 1000000u);
    return PP_OK;
  case PP_MSG_BYE:
    ppsrv__conn_close(c, PP_LOG_INFO, "client said BYE");
    return PP_ECLOSED;
  default: {
    char what[64];
    snprintf(what, sizeof what, "unexpected frame type %u", h->type);
    return proto_error(c, what);
  }
  }
}

/* process_session: open and handle every complete sealed frame in c->rbuf
 * (a bad one closes c), then feed the engine and pause reading when c's
 * queues are full. Main thread, from on_read. */
static void process_session(conn *c) {
  pp_frame_hdr h;
  const uint8_t *p;
  int rc = 0;
  for (;;) {
    size_t size;
    if (c->state != C_READY)
      break;
    if (c->tls == NULL) {
      rc = pp_session_next(&c->sess, &c->rbuf, c->s->cfg->max_frame, &h, &p);
      size = PP_SESSION_FRAME_SIZE(&h);
    } else { /* TLS records are authenticated: frames carry no MAC */
      rc = pp_frame_next(&c->rbuf, c->s->cfg->max_frame, &h, &p);
      if (rc == 1 && h.type >= PP_MSG_AUTH_FIRST && h.type <= PP_MSG_AUTH_LAST)
        rc = PP_EPROTO;
      size = PP_FRAME_HDR + (size_t)h.length;
    }
    if (rc != 1)
      break;
    if (handle_frame(c, &h, p) != PP_OK)
      return;
    pp_buf_consume(&c->rbuf, size);
    c->rx_frames++;
  }
  if (c->state != C_READY)
    return;
  if (rc < 0) {
    char why[128];
    snprintf(why, sizeof why, "bad frame: %s", pp_auth_strerror(rc));
    ppsrv__conn_close(c, PP_LOG_WARNING, why);
    return;
  }
  if (pp_buf_avail(&c->rbuf) == 0 && c->rbuf.cap > (1u << 20))
    pp_buf_free(&c->rbuf); /* do not keep a huge frame's buffer */
  if (c->in_rr)
    ppsrv__feed(c->s);
  if (c->state == C_READY && conn_overloaded(c))
    conn_pause(c);
}

/* ---- the handshake ---------------------------------------------------- */

/* leave_pending: c is leaving C_HANDSHAKE (authenticated or closing): it no
 * longer counts against the caps on pending handshakes. */
static void leave_pending(conn *c) {
  if (!c->pending_counted)
    return;
  c->pending_counted = 0;
  if (c->s->npending > 0)
    c->s->npending--;
  if (c->adm != NULL && c->adm->pending > 0)
    c->adm->pending--;
}

/* handshake_failed: c's handshake failed with err (why says how) and c
 * closes. A failed authentication (PP_EAUTH: a proof that did not verify,
 * i.e. a guess of the secret) counts against its address: a growing delay
 * before the address's next handshake, and its line logged at most once per
 * interval per address (admit.c). Malformed or slow handshakes cost no
 * secret-dependent work and are bounded by the caps on pending handshakes
 * instead. */
static void handshake_failed(conn *c, int err, const char *why) {
  c->s->auth_failed++;
  if (err != PP_EAUTH) {
    ppsrv__conn_close(c, PP_LOG_WARNING, why);
    return;
  }
  c->s->dropped++;
  ppsrv__admit_failed(c->s, c->adm, c->peer, why);
  ppsrv__conn_close(c, PP_LOG_DEBUG, why);
}

/* authenticated: the handshake finished: switch c to its session (the
 * handshake's key material is wiped), count the client, stop the idle-exit
 * timer and greet with a sealed HELLO (pid, worker count). */
static void authenticated(conn *c) {
  srv *s = c->s;
  int rc = pp_auth_session(&c->auth, &c->sess);
  pp_auth_clear(&c->auth);
  if (rc != PP_OK) {
    ppsrv__conn_close(c, PP_LOG_ERROR, "no session keys after the handshake");
    return;
  }
  leave_pending(c);
  ppsrv__admit_ok(c->adm);
  c->adm = NULL;
  c->state = C_READY;
  c->frame_ms = uv_now(&s->loop);
  s->auth_ok++;
  s->nclients++;
  if (s->nclients == 1 && s->cfg->timeout > 0)
    uv_timer_stop(&s->idle_exit);
  char how[96] = "plain: authenticated frames in clear";
  if (c->tls != NULL)
    pp_tls_describe(c->tls, how, sizeof how);
  pp_log(PP_LOG_INFO, "client %s authenticated (%zu connected, %s)", c->peer,
         s->nclients, how);
  uint8_t hello[16];
  pp_put_u32(hello, (uint32_t)getpid());
  pp_put_u32(hello + 4, (uint32_t)s->cfg->nworkers);
  pp_put_u64(hello + 8, s->cfg->obj_limit); /* its object store (2.2) */
  pp_part part = {hello, sizeof hello};
  ppsrv__conn_send(c, PP_MSG_HELLO, 0, 0, 0, &part, 1);
}

/* process_handshake: feed complete handshake frames in c->rbuf to the
 * auth machine and write its answers; a failure closes c; on success the
 * bytes after the last handshake frame are processed as sealed frames. */
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
      snprintf(why, sizeof why, "handshake failed: %s", pp_auth_strerror(rc));
      handshake_failed(c, rc, why);
      return;
    }
    c->hs_stage++;
    if (rc == 1) {
      authenticated(c);
      if (c->state == C_READY)
        process_session(c); /* bytes after the handshake are sealed frames */
      return;
    }
  }
  if (c->state == C_HANDSHAKE && rc < 0) {
    char why[128];
    snprintf(why, sizeof why, "bad handshake frame: %s", pp_auth_strerror(rc));
    handshake_failed(c, rc, why);
  }
}

/* refuse_mode: the client's first byte shows a mode this node does not
 * accept (--no-tls, --require-tls): answer FAIL(MODE) as a plain frame,
 * which either kind of client can read, and close with why. */
static void refuse_mode(conn *c, int err, const char *why) {
  pp_buf out;
  pp_buf_init(&out);
  if (pp_auth_append_fail(&out, PP_AUTH_FAIL_MODE) == PP_OK &&
      conn_write_raw(c, &out) != PP_OK)
    return;
  pp_buf_free(&out);
  handshake_failed(c, err, why);
}

/* choose_mode: the first bytes of c arrived in rbuf: a TLS handshake
 * record makes c a TLS connection (its bytes move to TLS), anything else a
 * plain one (pp's handshake checks the magic). A mode this node does not
 * accept is refused. Returns 0, or an error after which c is closing. */
static int choose_mode(conn *c) {
  srv *s = c->s;
  int tls = c->rbuf.data[c->rbuf.off] == PP_TLS_RECORD_HANDSHAKE;
  if (tls && s->tls_ctx == NULL) {
    refuse_mode(c, PP_ENOTLS, "TLS client refused: this node accepts plain"
                " connections only (--no-tls)");
    return PP_ENOTLS;
  }
  if (!tls && s->cfg->tls_mode == PPSRV_TLS_REQUIRE) {
    refuse_mode(c, PP_ETLSREQ, "plain client refused: this node requires TLS"
                " (--require-tls)");
    return PP_ETLSREQ;
  }
  c->mode = tls ? CM_TLS : CM_PLAIN;
  return PP_OK;
}

/* tls_input: n bytes of ciphertext at p (or, with from_rbuf, the first
 * bytes, still in rbuf): decrypt what they complete into rbuf and send what
 * TLS answers. A failure closes c: in the handshake a wrong secret counts
 * as a failed authentication (admit.c), anything else as a bad handshake;
 * afterwards a record that does not authenticate closes the client.
 * Returns 0 or an error after which c is closing. */
static int tls_input(conn *c, const uint8_t *p, size_t n, int from_rbuf) {
  pp_buf in, out;
  pp_buf_init(&in);
  pp_buf_init(&out);
  if (from_rbuf) { /* the first bytes: rbuf becomes the plaintext buffer */
    in = c->rbuf;
    pp_buf_init(&c->rbuf);
    p = in.data + in.off;
    n = pp_buf_avail(&in);
  }
  int rc = c->tls != NULL ? PP_OK : pp_tls_new(c->s->tls_ctx, NULL, &c->tls);
  if (rc == PP_OK)
    rc = pp_tls_feed(c->tls, p, n, &c->rbuf, &out);
  pp_buf_free(&in);
  if (conn_write_raw(c, &out) != PP_OK) /* TLS's answer, or its alert */
    return PP_ECLOSED;
  if (rc == PP_OK)
    return PP_OK;
  char why[384];
  const char *detail = c->tls ? pp_tls_error(c->tls) : pp_strerror(rc);
  if (c->state == C_HANDSHAKE) {
    snprintf(why, sizeof why, "handshake failed: %s (TLS: %s)",
             rc == PP_EAUTH ? "authentication failed" : "TLS handshake failed",
             detail);
    handshake_failed(c, rc, why);
  } else {
    snprintf(why, sizeof why, "bad TLS record: %s", detail);
    ppsrv__conn_close(c, PP_LOG_WARNING, why);
  }
  return rc;
}

/* on_read: libuv's read callback: nread bytes arrived at the end of
 * c->rbuf (see on_alloc), or EOF / an error, which close the connection.
 * Arrival is liveness for the sweep. Main thread. */
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  conn *c = st->data;
  PP_UNUSED(buf);
  if (c->state == C_CLOSING)
    return;
  if (nread > 0) {
    size_t before = pp_buf_avail(&c->rbuf);
    uint64_t consumed = c->rx_frames;
    c->last_rx_ms = uv_now(&c->s->loop);
    if (c->tls != NULL) {
      if (tls_input(c, (const uint8_t *)buf->base, (size_t)nread, 0) != PP_OK)
        return;
    } else {
      c->rbuf.len += (size_t)nread;
      if (c->mode == CM_UNKNOWN) {
        if (choose_mode(c) != PP_OK)
          return;
        if (c->mode == CM_TLS && tls_input(c, NULL, 0, 1) != PP_OK)
          return;
      }
    }
    if (c->state == C_HANDSHAKE) {
      process_handshake(c);
    } else {
      process_session(c);
      /* a frame began in this read: the frame deadline runs from now */
      if (before == 0 || c->rx_frames != consumed)
        c->frame_ms = c->last_rx_ms;
    }
  } else if (nread == UV_EOF) {
    int mid = pp_buf_avail(&c->rbuf) > 0;
    ppsrv__conn_close(c, mid ? PP_LOG_WARNING : PP_LOG_INFO,
                      mid ? "peer closed the connection mid-frame"
                      : c->state == C_READY
                          ? "peer closed the connection"
                          : "peer closed the connection before"
                            " authenticating");
  } else if (nread == UV_ENOBUFS) {
    ppsrv__conn_close(c, PP_LOG_ERROR, "out of memory for the read buffer");
  } else if (nread < 0) {
    char why[96];
    snprintf(why, sizeof why, "read failed: %s", uv_strerror((int)nread));
    ppsrv__conn_close(c, PP_LOG_INFO, why);
  }
}

/* ---- connection lifetime ---------------------------------------------- */

/* TLS connections freed since the heap was last trimmed (main thread). A
 * flood of TLS handshakes that are shed leaves glibc's heap holding tens of
 * MiB of free memory (libssl's many allocations per connection fragment
 * it: 1000 shed ClientHellos took the node from 8 to about 30 MiB RSS, all
 * of it free), so the sweep gives it back after every TLS_TRIM_AFTER. */
#define TLS_TRIM_AFTER 64
static unsigned tls_freed;

/* on_conn_closed: libuv's close callback, the one place c is freed: unlink
 * c and free it with everything it still owns (its jobs were detached in
 * ppsrv__conn_close). Ends the loop when stopping and it was the last.
 * Main thread. */
static void on_conn_closed(uv_handle_t *h) {
  conn *c = h->data;
  srv *s = c->s;
  if (c->tls != NULL)
    tls_freed++;
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
  pp_tls_free(c->tls);
  pp_buf_free(&c->outq);
  free(c);
  ppsrv__maybe_finish(s);
}

/* conn_close_handle: close c's socket now (once); pending writes are
 * cancelled. */
static void conn_close_handle(conn *c) {
  if (c->handle_closing)
    return;
  c->handle_closing = 1;
  if (c->s->nopen > 0)
    c->s->nopen--; /* uv_close closes the socket now, the callback comes later */
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

/* on_shutdown: libuv's shutdown callback: pending writes are flushed (or
 * failed, status ignored): close the socket. Main thread. */
static void on_shutdown(uv_shutdown_t *req, int status) {
  PP_UNUSED(status);
  conn_close_handle(req->handle->data);
}

/* ppsrv__conn_close (ppsrv_int.h): pending writes are flushed first,
 * bounded by PPSRV_CLOSE_GRACE_MS (the sweep closes the socket then). A
 * connection still in its handshake with nothing left to write (shed, timed
 * out, or its peer gone) closes its socket at once: a burst of accepts that
 * sheds hundreds of them in one loop turn must not hold their descriptors
 * and slots (ppsrv__on_connection counts open sockets) until the next. */
void ppsrv__conn_close(conn *c, int level, const char *why) {
  srv *s = c->s;
  if (c->state == C_CLOSING)
    return;
  int hs_idle = c->state == C_HANDSHAKE &&
                uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) == 0;
  pp_log(level, "%s %s: %s", c->state == C_READY ? "client" : "connection",
         c->peer, why);
  if (level >= PP_LOG_WARNING)
    s->dropped++;
  if (c->state == C_READY) {
    s->nclients--;
    if (s->nclients == 0 && s->cfg->timeout > 0 && !s->stopping)
      uv_timer_again(&s->idle_exit);
  }
  leave_pending(c);
  c->state = C_CLOSING;
  c->closing_ms = uv_now(&s->loop);
  pp_auth_clear(&c->auth);
  uv_read_stop((uv_stream_t *)&c->tcp);
  ppsrv__feed_detach(c);
  fm_clear(&c->funcs);
  objs_clear(c);
  pp_buf_free(&c->rbuf);
  if (hs_idle ||
      uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
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

/* start_reading: serve c's handshake: read, and process what the client
 * already sent (usually its HELLO, which arrives with the connection) at
 * once, so that a connection accepted in a burst has made progress before
 * the next one may shed it. The handshake deadline runs from now. Returns
 * 0, or an error after which c is closing. */
static int start_reading(conn *c) {
  c->held = 0;
  c->accepted_ms = c->last_rx_ms = uv_now(&c->s->loop);
  int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rc != 0) {
    ppsrv__conn_close(c, PP_LOG_ERROR, "cannot set up the connection");
    return pp_err_from_uv(rc);
  }
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0)
    return PP_OK;
  uv_buf_t b;
  on_alloc((uv_handle_t *)&c->tcp, 0, &b);
  if (b.base == NULL)
    return PP_OK; /* libuv's own read reports it */
  ssize_t n = recv(fd, b.base, b.len, MSG_DONTWAIT);
  if (n > 0)
    on_read((uv_stream_t *)&c->tcp, n, &b);
  /* EOF, errors and EAGAIN: libuv's read will see them */
  return c->state == C_CLOSING ? PP_ECLOSED : PP_OK;
}

/* ppsrv__on_connection: the listener's callback: accept one client.
 * Beyond --max-clients open sockets the connection is closed at once
 * (logged at most once a second). Otherwise it becomes a conn in the handshake state
 * (TCP_NODELAY, keepalive), after room was made among the pending
 * handshakes (admit.c), read at once unless its address must wait after
 * failed handshakes (then the sweep starts it). The conn belongs to the
 * server's list until its close callback. A failed accept (e.g. out of
 * descriptors; libuv then drops the connection itself, never spinning) is
 * logged at most once a second. Main thread. */
void ppsrv__on_connection(uv_stream_t *server, int status) {
  srv *s = server->data;
  if (status < 0) {
    ppsrv__ratelog(s, &s->accept_log, PP_LOG_WARNING, PPSRV_RATELOG_MS,
                   "cannot accept a connection: %s", uv_strerror(status));
    return;
  }
  if (s->accepts_this_turn >= PPSRV_ACCEPT_BATCH) {
    /* libuv accepts for as long as connections come: a flood reopening
     * every connection shed would keep this loop turn going forever, the
     * shed ones never reaching their close callbacks (the list of
     * connections growing without end, each new one scanning it) and the
     * real clients waiting in the kernel's queue. Not accepting now makes
     * libuv stop watching the listener; on_accept_turn (server.c) accepts
     * this one in the next turn, after the closes. */
    s->accept_deferred = 1;
    return;
  }
  s->accepts_this_turn++;
  conn *c = calloc(1, sizeof *c);
  if (c == NULL) {
    pp_log(PP_LOG_ERROR, "out of memory accepting a connection");
    return;
  }
  c->s = s;
  uv_tcp_init(&s->loop, &c->tcp);
  c->tcp.data = c;
  pp_buf_init(&c->rbuf);
  size_t open_before = s->nopen;
  c->next = s->conns;
  if (s->conns)
    s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  s->nopen++;
  c->accepted_ms = c->last_rx_ms = c->write_ms = uv_now(&s->loop);
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    c->state = C_CLOSING;
    conn_close_handle(c);
    return;
  }
  s->accepted++;
  peer_name(&c->tcp, c->peer, sizeof c->peer);
  if (open_before >= s->max_clients) {
    s->refused++;
    ppsrv__ratelog(s, &s->refuse_log, PP_LOG_WARNING, PPSRV_RATELOG_MS,
                   "connection %s refused: %zu connections open"
                   " (--max-clients %zu)", c->peer, open_before,
                   s->max_clients);
    c->state = C_CLOSING;
    conn_close_handle(c);
    return;
  }
  struct sockaddr_storage ss;
  int sslen = sizeof ss;
  ppsrv_admit *adm = NULL;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen) == 0)
    adm = ppsrv__admit_get(s, (struct sockaddr *)&ss, c->peer);
  ppsrv__admit_make_room(s, adm);
  c->adm = adm;
  c->pending_counted = 1;
  s->npending++;
  if (adm != NULL)
    adm->pending++;
  uv_tcp_nodelay(&c->tcp, 1);
  uv_tcp_keepalive(&c->tcp, 1, 60);
  if (pp_auth_init(&c->auth, PP_AUTH_SERVER, s->key, sizeof s->key) !=
      PP_OK) {
    ppsrv__conn_close(c, PP_LOG_ERROR, "cannot set up the connection");
    return;
  }
  pp_log(PP_LOG_DEBUG, "connection from %s (%zu open)", c->peer, s->nconns);
  uint64_t wait = ppsrv__admit_delay_ms(adm, uv_now(&s->loop));
  if (wait > 0) {
    c->held = 1;
    c->hold_until_ms = uv_now(&s->loop) + wait;
    pp_log(PP_LOG_DEBUG, "connection %s: handshake waits %llu ms (failed"
           " handshakes from its address)", c->peer, (unsigned long long)wait);
    return;
  }
  start_reading(c);
}

/* ---- deadlines -------------------------------------------------------- */

/* unsent: bytes of ours c's client has not taken yet: libuv's write queue
 * plus, on Linux, what the kernel holds unacknowledged (SIOCOUTQ; several
 * MiB of a result can sit there while a slow client drains them). */
static size_t unsent(conn *c) {
  size_t n = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
#ifdef SIOCOUTQ
  uv_os_fd_t fd;
  int k = 0;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 &&
      ioctl(fd, SIOCOUTQ, &k) == 0 && k > 0)
    n += (size_t)k;
#endif
  return n;
}

/* frame_deadline_ms: how long c's partial frame may take to arrive whole:
 * the socket timeout, plus one second per PPSRV_FRAME_MIN_RATE bytes the
 * header announces (once the header is in). */
static uint64_t frame_deadline_ms(const conn *c) {
  uint64_t d = c->s->idle_timeout_ms;
  if (pp_buf_avail(&c->rbuf) >= PP_FRAME_HDR) {
    uint64_t len = pp_get_u32(c->rbuf.data + c->rbuf.off + 8);
    d += len * 1000u / PPSRV_FRAME_MIN_RATE;
  }
  return d;
}

/* ppsrv__conn_sweep: close connections past their deadline: the handshake
 * deadline; the socket timeout (-k) without progress in either direction
 * (a byte received, or the client taking bytes of ours: the unsent count
 * falling), not while reading is paused for back-pressure; the socket
 * timeout without write progress while bytes of ours wait (a client that
 * does not read); and the grace period of a closing connection. A large
 * upload or download that moves is progress: on_write's completion alone
 * would come too late (one result can take longer than -k to cross a slow
 * link, and its tail drains from the kernel after the write completed). */
void ppsrv__conn_sweep(srv *s) {
  uint64_t now = uv_now(&s->loop);
  conn *next;
  for (conn *c = s->conns; c; c = next) {
    next = c->next;
    if (c->state == C_HANDSHAKE) {
      if (c->held) {
        if (now >= c->hold_until_ms)
          start_reading(c);
      } else if (now - c->accepted_ms >= s->hs_timeout_ms) {
        handshake_failed(c, PP_ETIMEDOUT, pp_buf_avail(&c->rbuf)
                                ? "handshake not completed in time (partial"
                                  " frame)"
                                : "handshake not completed in time");
      }
    } else if (c->state == C_READY) {
      size_t wq = unsent(c);
      if (wq < c->wq_seen) /* the client took bytes since the last sweep */
        c->write_ms = c->tx_ms = now;
      c->wq_seen = wq;
      uint64_t heard = c->last_rx_ms > c->tx_ms ? c->last_rx_ms : c->tx_ms;
      if (wq > 0 && now - c->write_ms >= s->idle_timeout_ms) {
        ppsrv__conn_close(c, PP_LOG_WARNING,
                          "client stopped reading its results");
      } else if (c->paused) {
        /* waiting for its own jobs to drain: not the client's silence */
      } else if (now - heard >= s->idle_timeout_ms) {
        ppsrv__conn_close(c, PP_LOG_WARNING,
                          pp_buf_avail(&c->rbuf)
                              ? "socket timeout in the middle of a frame"
                              : "socket timeout (no PING or other frame)");
      } else if (pp_buf_avail(&c->rbuf) > 0 &&
                 now - c->frame_ms >= frame_deadline_ms(c)) {
        ppsrv__conn_close(c, PP_LOG_WARNING,
                          "frame not completed in time (a frame must arrive"
                          " whole within the socket timeout, plus 1 s per"
                          " MiB)");
      }
    } else if (!c->handle_closing &&
               now - c->closing_ms >= PPSRV_CLOSE_GRACE_MS) {
      conn_close_handle(c);
    }
  }
#if defined(__GLIBC__)
  if (tls_freed >= TLS_TRIM_AFTER) { /* see tls_freed */
    tls_freed = 0;
    malloc_trim(0);
  }
#endif
}
