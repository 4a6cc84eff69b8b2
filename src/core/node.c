/* node.c — remote ppserver nodes seen from the client's engine: resolving
 * and connecting, the mutual handshake (auth.h), sealed FUNC/JOB frames out
 * and RESULT frames in, heartbeats (PING every timeout/4; silence for the
 * whole timeout means the node is dead, which also catches a SIGSTOPped
 * node), requeueing a lost node's jobs at the front of the queue, reconnects
 * with exponential backoff, and the "no capacity" warning and deadline.
 * Node records come from the configuration at start, or from discovery
 * announcements at run time (pp__node_discovered); discovered ones that stop
 * announcing while disconnected go dormant. Everything here runs on the
 * engine thread. */
#include "auth.h"
#include "engine_int.h"
#include "spec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TICK_MS 100
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 10000
#define STARVED_WARN_NS 5000000000ull

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
  n->e = e;
  n->host = host;
  n->port = port;
  if (strchr(n->host, ':'))
    snprintf(n->st.name, sizeof n->st.name, "[%s]:%s", n->host, n->port);
  else
    snprintf(n->st.name, sizeof n->st.name, "%s:%s", n->host, n->port);
  pp_buf_init(&n->rbuf);
  pp_keyset_init(&n->known);
  n->backoff_ms = BACKOFF_MIN_MS;
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
  pp__disco_free(e);
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
    pp_buf_free(&n->rbuf);
    pp_keyset_free(&n->known);
    free(n->host);
    free(n->port);
    free(n);
  }
}

int pp__node_can_take(const pp__node *n) {
  if (n->state != PP__NODE_READY)
    return 0;
  uint64_t cap = n->st.nworkers > 0 ? (uint64_t)n->st.nworkers : 1;
  if (n->inflight.len < cap)
    return 1;
  /* short jobs: keep a pipeline so network latency is hidden */
  return n->inflight.len < cap * PP__PIPE_MAX_JOBS &&
         n->inflight_est_ns < PP__PIPE_BUDGET_NS * cap;
}

/* ---- writing --------------------------------------------------------------- */

typedef struct nreq {
  uv_write_t req;
  pp_buf buf;
} nreq;

static void on_node_write(uv_write_t *req, int status) {
  nreq *r = (nreq *)req;
  PP_UNUSED(status); /* a failed write shows up as a read error or silence */
  pp_buf_free(&r->buf);
  free(r);
}

static void node_down(pp__node *n, const char *why);

/* node_write: send out's bytes (ownership of out's storage moves to the
 * write request; out is left empty). */
static void node_write(pp__node *n, pp_buf *out) {
  if (pp_buf_avail(out) == 0)
    return;
  nreq *r = calloc(1, sizeof *r);
  if (r == NULL) {
    pp_buf_free(out);
    node_down(n, "out of memory");
    return;
  }
  r->buf = *out;
  pp_buf_init(out);
  uv_buf_t b = uv_buf_init((char *)r->buf.data + r->buf.off,
                           (unsigned)pp_buf_avail(&r->buf));
  int rc = uv_write(&r->req, (uv_stream_t *)&n->tcp, &b, 1, on_node_write);
  if (rc != 0) {
    pp_buf_free(&r->buf);
    free(r);
    node_down(n, uv_strerror(rc));
  }
}

/* seal2: append one sealed frame whose payload is a[0..alen) + b[0..blen). */
static int seal2(pp__node *n, pp_buf *out, uint8_t type, uint32_t flags,
                 uint64_t id, uint32_t attempt, const void *a, size_t alen,
                 const void *b, size_t blen) {
  size_t len = alen + blen;
  if (len > UINT32_MAX)
    return PP_ETOOBIG;
  int rc = pp_buf_reserve(out, PP_FRAME_HDR + len + PP_AUTH_MAC_LEN);
  if (rc != PP_OK)
    return rc;
  size_t off = out->len;
  pp_frame_hdr h = {PP_PROTO_VERSION, type, flags, (uint32_t)len, attempt, id};
  pp_frame_encode_hdr(out->data + out->len, &h);
  out->len += PP_FRAME_HDR;
  pp_buf_append(out, a, alen); /* room reserved above */
  pp_buf_append(out, b, blen);
  rc = pp_session_seal_tail(n->sess, out, out->len - off);
  if (rc != PP_OK)
    out->len = off;
  return rc;
}

void pp__node_send_jobs(pp__node *n, pp_job *first) {
  pp_buf out;
  pp_buf_init(&out);
  for (pp_job *j = first; j; j = j->next) {
    pp_func *f = j->func;
    if (!pp_keyset_has(&n->known, f->key)) {
      uint32_t fl = 0;
      if (n->known.len >= PP__KEYSET_MAX) {
        pp_keyset_clear(&n->known);
        fl = PP_FUNCF_RESET;
      }
      if (pp_keyset_add(&n->known, f->key) != PP_OK ||
          seal2(n, &out, PP_MSG_FUNC, fl, 0, 0, f->key, PP_KEY_LEN, f->blob,
                f->blob_len) != PP_OK)
        goto fail;
    }
    if (seal2(n, &out, PP_MSG_JOB, j->flags, j->id, j->attempt, f->key,
              PP_KEY_LEN, j->args, j->args_len) != PP_OK)
      goto fail;
  }
  node_write(n, &out);
  return;
fail:
  pp_buf_free(&out);
  node_down(n, "cannot encode a job");
}

/* ---- losing a node ------------------------------------------------------- */

static void set_connected(pp__node *n, int connected, int nworkers) {
  pp_engine *e = n->e;
  uv_mutex_lock(&e->mu);
  n->st.connected = connected;
  if (nworkers >= 0)
    n->st.nworkers = nworkers;
  uv_mutex_unlock(&e->mu);
}

/* requeue: the node is gone; its jobs go back to the front of the queue in
 * their order, to run elsewhere. Not charged as crashes: the job did not
 * necessarily cause it. */
static void requeue(pp__node *n) {
  pp_engine *e = n->e;
  pp_job *j;
  if (n->inflight.len == 0)
    return;
  uv_mutex_lock(&e->mu);
  while ((j = n->inflight.tail) != NULL) {
    pp_jobq_remove(&n->inflight, j);
    atomic_store(&j->state, PP_JOB_QUEUED);
    e->running--;
    pp_jobq_push_front(&e->pending, j);
  }
  n->inflight_est_ns = 0;
  uv_mutex_unlock(&e->mu);
}

/* schedule_retry: back to IDLE; the tick reconnects after the backoff. */
static void schedule_retry(pp__node *n) {
  n->state = PP__NODE_IDLE;
  n->state_since_ns = pp_now_ns();
  n->next_attempt_ns = n->state_since_ns + (uint64_t)n->backoff_ms * 1000000u;
  n->backoff_ms = n->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
                                                     : n->backoff_ms * 2;
}

static void on_tcp_closed(uv_handle_t *h) {
  pp__node *n = h->data;
  n->tcp_open = 0;
  schedule_retry(n);
}

/* node_down: close the connection (if any), requeue its jobs and schedule a
 * reconnect. Safe to call in any state. */
static void node_down(pp__node *n, const char *why) {
  pp_engine *e = n->e;
  int was_ready = n->state == PP__NODE_READY;
  if (n->state == PP__NODE_IDLE || n->state == PP__NODE_CLOSING)
    return;
  if (was_ready)
    pp__log(e, PP_LOG_WARNING,
            "lost node %s (%s); its %zu jobs go to other workers",
            n->st.name, why, n->inflight.len);
  else
    pp__log(e, n->ever_ready ? PP_LOG_INFO : PP_LOG_WARNING,
            "cannot use node %s: %s", n->st.name, why);
  set_connected(n, 0, -1);
  requeue(n);
  pp_keyset_clear(&n->known);
  pp_buf_free(&n->rbuf);
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
  if (n->state == PP__NODE_RESOLVING) {
    /* the getaddrinfo callback will see the state and just return */
    uv_cancel((uv_req_t *)&n->gai);
    schedule_retry(n);
    return;
  }
  n->state = PP__NODE_CLOSING;
  if (n->tcp_open && !uv_is_closing((uv_handle_t *)&n->tcp))
    uv_close((uv_handle_t *)&n->tcp, on_tcp_closed);
  else if (!n->tcp_open)
    schedule_retry(n);
  if (!e->stopping)
    pp__dispatch(e);
}

/* ---- reading ------------------------------------------------------------- */

/* find_inflight: the job dispatched as (id, attempt), searched from the
 * oldest (results come back nearly in order). */
static pp_job *find_inflight(pp__node *n, uint64_t id, uint32_t attempt) {
  for (pp_job *j = n->inflight.head; j; j = j->next)
    if (j->id == id)
      return j->attempt == attempt ? j : NULL;
  return NULL;
}

/* on_result: complete a job from a RESULT frame. Returns 0 or PP_EPROTO. */
static int on_result(pp__node *n, const pp_frame_hdr *h, const uint8_t *p) {
  pp_engine *e = n->e;
  unsigned status = PP_RES_STATUS(h->flags);
  if (h->length < 8 || status > PP_RES_MAX)
    return PP_EPROTO;
  pp_job *j = find_inflight(n, h->id, h->attempt);
  if (j == NULL) { /* a late answer to an attempt we gave up on: drop it */
    pp__log(e, PP_LOG_DEBUG, "node %s: dropped result for job %llu/%u",
            n->st.name, (unsigned long long)h->id, h->attempt);
    return PP_OK;
  }
  size_t len = h->length - 8;
  const uint8_t *data = p + 8;
  int jstatus = (int)status;
  uint8_t *copy = NULL;
  char *msg = NULL;
  int exitstatus = -1, termsignal = 0;
  if (status == PP_RES_LOST || status == PP_RES_FAILED) {
    size_t skip = status == PP_RES_LOST ? 8 : 0;
    if (len < skip)
      return PP_EPROTO;
    if (status == PP_RES_LOST) {
      exitstatus = (int32_t)pp_get_u32(data);
      termsignal = (int32_t)pp_get_u32(data + 4);
    }
    size_t ml = len - skip > 400 ? 400 : len - skip;
    msg = malloc(ml + 300);
    if (msg == NULL)
      return PP_ENOMEM;
    snprintf(msg, ml + 300, "on node %s: %.*s", n->st.name, (int)ml,
             (const char *)data + skip);
    jstatus = status == PP_RES_LOST ? PP_JOB_LOST : PP_JOB_FAILED;
  } else {
    copy = malloc(len ? len : 1);
    if (copy == NULL)
      return PP_ENOMEM;
    memcpy(copy, data, len);
  }
  j->runtime_ns = pp_get_u64(p);
  pp__observe(j->func, j->runtime_ns);
  uv_mutex_lock(&e->mu);
  pp_jobq_remove(&n->inflight, j);
  n->inflight_est_ns -= j->est_ns;
  j->exitstatus = exitstatus;
  j->termsignal = termsignal;
  n->st.njobs++;
  n->st.time_ns += j->runtime_ns;
  pp__complete(e, j, jstatus, copy, copy ? len : 0, msg);
  uv_mutex_unlock(&e->mu);
  return PP_OK;
}

/* session_frames: handle every complete sealed frame. 0 or an error. */
static int session_frames(pp__node *n) {
  pp_frame_hdr h;
  const uint8_t *p;
  int rc = PP_ECLOSED;
  while (n->sess != NULL &&
         (rc = pp_session_next(n->sess, &n->rbuf, PP_FRAME_MAX_DEFAULT, &h,
                               &p)) == 1) {
    size_t size = PP_SESSION_FRAME_SIZE(&h);
    switch (h.type) {
    case PP_MSG_HELLO:
      if (h.length < 8 || n->state != PP__NODE_AUTHED)
        return PP_EPROTO;
      {
        uint32_t nw = pp_get_u32(p + 4);
        if (nw == 0 || nw > 65536)
          return PP_EPROTO;
        n->state = PP__NODE_READY;
        n->ever_ready = 1;
        n->backoff_ms = BACKOFF_MIN_MS;
        set_connected(n, 1, (int)nw);
        pp__log(n->e, PP_LOG_INFO, "connected to node %s (%u workers)",
                n->st.name, nw);
      }
      break;
    case PP_MSG_RESULT:
      if (n->state != PP__NODE_READY)
        return PP_EPROTO;
      rc = on_result(n, &h, p);
      if (rc != PP_OK)
        return rc;
      break;
    case PP_MSG_PING: {
      pp_buf out;
      pp_buf_init(&out);
      if (h.length > 64)
        return PP_EPROTO;
      if (pp_session_seal(n->sess, &out, PP_MSG_PONG, 0, 0, 0, p, h.length) !=
          PP_OK) {
        pp_buf_free(&out);
        return PP_ENOMEM;
      }
      node_write(n, &out);
      break;
    }
    case PP_MSG_PONG:
      break;
    case PP_MSG_BYE:
      return PP_ECLOSED;
    default:
      return PP_EPROTO;
    }
    pp_buf_consume(&n->rbuf, size);
  }
  return n->sess == NULL ? PP_ECLOSED : rc;
}

/* handshake_frames: feed handshake frames until authenticated. Returns 0
 * (need more), 1 (authenticated) or an error. */
static int handshake_frames(pp__node *n) {
  pp_frame_hdr h;
  const uint8_t *p;
  int rc;
  while ((rc = pp_auth_next(&n->rbuf, &h, &p)) == 1) {
    pp_buf out;
    pp_buf_init(&out);
    int frc = pp_auth_feed(n->auth, &h, p, &out);
    pp_buf_consume(&n->rbuf, PP_FRAME_HDR + h.length);
    node_write(n, &out);
    if (frc < 0)
      return frc;
    if (frc == 1) {
      n->sess = calloc(1, sizeof *n->sess);
      if (n->sess == NULL)
        return PP_ENOMEM;
      if (pp_auth_session(n->auth, n->sess) != PP_OK)
        return PP_EAUTH;
      pp_auth_clear(n->auth);
      free(n->auth);
      n->auth = NULL;
      n->state = PP__NODE_AUTHED;
      return 1;
    }
  }
  return rc;
}

static void on_node_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  pp__node *n = h->data;
  PP_UNUSED(hint);
  if (pp_buf_reserve(&n->rbuf, 65536) != PP_OK) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  *buf = uv_buf_init((char *)n->rbuf.data + n->rbuf.len,
                     (unsigned)(n->rbuf.cap - n->rbuf.len));
}

static void on_node_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  pp__node *n = s->data;
  int rc = PP_OK;
  PP_UNUSED(buf);
  if (nread < 0) {
    node_down(n, nread == UV_EOF ? "connection closed" : uv_strerror((int)nread));
    return;
  }
  if (nread == 0)
    return;
  n->rbuf.len += (size_t)nread;
  n->last_rx_ns = pp_now_ns();
  if (n->state == PP__NODE_HANDSHAKE) {
    rc = handshake_frames(n);
    if (rc == 0)
      return;
  }
  if (rc >= 0)
    rc = session_frames(n);
  if (rc < 0) {
    char why[128];
    if (rc == PP_EAUTH)
      snprintf(why, sizeof why,
               "authentication failed (is the secret the same on both sides?)");
    else if (rc == PP_EVERSION)
      snprintf(why, sizeof why, "protocol version mismatch");
    else if (rc == PP_ECLOSED)
      snprintf(why, sizeof why, "the node said goodbye");
    else
      snprintf(why, sizeof why, "%s", pp_auth_strerror(rc));
    node_down(n, why);
    return;
  }
  pp__dispatch(n->e);
}

/* ---- connecting ------------------------------------------------------------ */

static void on_connect(uv_connect_t *req, int status) {
  pp__node *n = req->data;
  pp_engine *e = n->e;
  if (n->state != PP__NODE_CONNECTING)
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
  if (n->auth == NULL ||
      pp_auth_init(n->auth, PP_AUTH_CLIENT, e->secret, e->secret_len) != PP_OK ||
      pp_auth_start(n->auth, &out) != PP_OK) {
    pp_buf_free(&out);
    node_down(n, "cannot start the handshake");
    return;
  }
  n->state = PP__NODE_HANDSHAKE;
  n->state_since_ns = n->last_rx_ns = pp_now_ns();
  uv_read_start((uv_stream_t *)&n->tcp, on_node_alloc, on_node_read);
  node_write(n, &out);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *ai) {
  pp__node *n = req->data;
  n->gai_busy = 0;
  if (n->state != PP__NODE_RESOLVING || n->e->stopping) {
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
  uv_tcp_init(&n->e->loop, &n->tcp);
  n->tcp.data = n;
  n->tcp_open = 1;
  n->creq.data = n;
  n->state = PP__NODE_CONNECTING;
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
  n->state = PP__NODE_RESOLVING;
  n->state_since_ns = pp_now_ns();
  n->gai_busy = 1;
  int rc = uv_getaddrinfo(&n->e->loop, &n->gai, on_resolved, n->host, n->port,
                          &hints);
  if (rc != 0) {
    n->gai_busy = 0;
    n->state = PP__NODE_CONNECTING; /* so node_down schedules a retry */
    node_down(n, uv_strerror(rc));
  }
}

/* ---- the tick: heartbeats, reconnects, capacity ---------------------------- */

static void send_ping(pp__node *n, uint64_t now) {
  pp_buf out;
  uint8_t t[8];
  pp_put_u64(t, now);
  pp_buf_init(&out);
  if (pp_session_seal(n->sess, &out, PP_MSG_PING, 0, 0, 0, t, 8) == PP_OK)
    node_write(n, &out);
  else
    pp_buf_free(&out);
  n->last_ping_ns = now;
}

/* check_capacity: jobs are waiting and nothing can run them: warn every few
 * seconds naming the unreachable nodes, and fail them after the deadline. */
static void check_capacity(pp_engine *e, uint64_t now) {
  int capacity = 0;
  for (pp__worker *w = e->workers; w; w = w->next)
    capacity |= w->alive && !w->retiring;
  for (pp__node *n = e->nodes; n; n = n->next)
    capacity |= n->state == PP__NODE_READY;
  uv_mutex_lock(&e->mu);
  size_t waiting = e->pending.len;
  uv_mutex_unlock(&e->mu);
  if (capacity || waiting == 0) {
    e->starved_since_ns = 0;
    return;
  }
  if (e->starved_since_ns == 0) {
    e->starved_since_ns = now;
    e->starved_warned_ns = 0;
  }
  if (now - e->starved_since_ns >= 1000000000ull &&
      now - e->starved_warned_ns >= STARVED_WARN_NS) {
    char names[512] = "";
    size_t off = 0;
    for (pp__node *n = e->nodes; n && off < sizeof names - 1; n = n->next) {
      int k = snprintf(names + off, sizeof names - off, "%s%s",
                       off ? ", " : "", n->st.name);
      if (k < 0)
        break;
      off += (size_t)k;
    }
    pp__log(e, PP_LOG_WARNING,
            "%zu jobs are waiting but there is no local worker and no "
            "reachable node%s%s%s", waiting, e->nodes ? " (unreachable: " : "",
            e->nodes ? names : "", e->nodes ? ")" : "");
    e->starved_warned_ns = now;
  }
  if (e->no_capacity_ns > 0 && now - e->starved_since_ns >= e->no_capacity_ns) {
    pp_job *j;
    uv_mutex_lock(&e->mu);
    while ((j = pp_jobq_pop(&e->pending)) != NULL) {
      char *msg = malloc(160);
      if (msg)
        snprintf(msg, 160,
                 "no local worker and no reachable node for %.1f s "
                 "(no_capacity_timeout)", e->no_capacity_ns / 1e9);
      pp__complete(e, j, PP_JOB_FAILED, NULL, 0, msg);
    }
    uv_mutex_unlock(&e->mu);
    e->starved_since_ns = 0;
  }
}

static void on_tick(uv_timer_t *t) {
  pp_engine *e = t->data;
  uint64_t now = pp_now_ns();
  if (e->stopping)
    return;
  for (pp__node *n = e->nodes; n; n = n->next) {
    switch (n->state) {
    case PP__NODE_IDLE:
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
    case PP__NODE_RESOLVING:
    case PP__NODE_CONNECTING:
    case PP__NODE_HANDSHAKE:
    case PP__NODE_AUTHED:
      if (now - n->state_since_ns > e->node_timeout_ns)
        node_down(n, "timed out while connecting");
      break;
    case PP__NODE_READY:
      if (now - n->last_rx_ns > e->node_timeout_ns)
        node_down(n, "no answer to heartbeats");
      else if (now - n->last_ping_ns > e->node_timeout_ns / 4)
        send_ping(n, now);
      break;
    default:
      break;
    }
  }
  pp__disco_tick(e, now);
  check_capacity(e, now);
}

void pp__nodes_start(pp_engine *e) {
  uv_timer_init(&e->loop, &e->tick);
  e->tick.data = e;
  uv_timer_start(&e->tick, on_tick, 0, TICK_MS);
  if (e->ndisco > 0)
    pp__disco_start(e);
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
    if (n->state == PP__NODE_IDLE && !n->gai_busy)
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
  pp_job *j;
  pp__disco_stop(e);
  uv_timer_stop(&e->tick);
  uv_close((uv_handle_t *)&e->tick, NULL);
  uv_mutex_lock(&e->mu);
  for (pp__node *n = e->nodes; n; n = n->next)
    while ((j = pp_jobq_pop(&n->inflight)) != NULL)
      pp__complete(e, j, PP_JOB_DESTROYED, NULL, 0,
                   strdup("the pp Server was destroyed while the job ran"));
  uv_mutex_unlock(&e->mu);
  for (pp__node *n = e->nodes; n; n = n->next) {
    if (n->state == PP__NODE_READY && n->sess) {
      pp_buf out;
      pp_buf_init(&out);
      if (pp_session_seal(n->sess, &out, PP_MSG_BYE, 0, 0, 0, NULL, 0) == PP_OK)
        node_write(n, &out);
      else
        pp_buf_free(&out);
    }
    if (n->gai_busy)
      uv_cancel((uv_req_t *)&n->gai);
    n->state = PP__NODE_CLOSING;
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
