/* pool.c — the local worker processes: spawning them with their frame pipe
 * on fd 3, writing jobs, reading results, and handling a process that exits
 * or dies (its jobs go back to the front of the queue, the job it was
 * running is charged one crash, a replacement is started). Engine thread. */
#include "engine_int.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define INLINE_MAX 8192 /* payloads up to this size are copied, larger ones referenced */

/* ---- bookkeeping ------------------------------------------------------ */

static void pids_add(pp_engine *e, int pid) {
  uv_mutex_lock(&e->mu);
  int *p = realloc(e->pids, (size_t)(e->npids + 1) * sizeof *p);
  if (p != NULL)
    e->pids = p;
  uint64_t *c = realloc(e->pid_jobs, (size_t)(e->npids + 1) * sizeof *c);
  if (c != NULL)
    e->pid_jobs = c;
  if (p != NULL && c != NULL) {
    e->pids[e->npids] = pid;
    e->pid_jobs[e->npids] = 0;
    e->npids++;
  }
  e->nlive++;
  uv_mutex_unlock(&e->mu);
}

static void pids_remove(pp_engine *e, int pid) {
  uv_mutex_lock(&e->mu);
  for (int i = 0; i < e->npids; i++)
    if (e->pids[i] == pid) {
      e->npids--;
      e->pids[i] = e->pids[e->npids];
      e->pid_jobs[i] = e->pid_jobs[e->npids];
      break;
    }
  e->nlive--;
  uv_mutex_unlock(&e->mu);
}

/* pids_count: credit n results to pid. Caller holds mu. */
static void pids_count(pp_engine *e, int pid, uint64_t n) {
  for (int i = 0; i < e->npids; i++)
    if (e->pids[i] == pid) {
      e->pid_jobs[i] += n;
      return;
    }
}

static void worker_unlink_free(pp__worker *w) {
  pp_engine *e = w->e;
  for (pp__worker **pw = &e->workers; *pw; pw = &(*pw)->next)
    if (*pw == w) {
      *pw = w->next;
      break;
    }
  pp_buf_free(&w->rbuf);
  pp_keyset_free(&w->known);
  free(w);
}

static void on_handle_closed(uv_handle_t *h) {
  pp__worker *w = h->data;
  if (--w->open_handles == 0)
    worker_unlink_free(w);
}

static void worker_close(pp__worker *w) {
  if (!uv_is_closing((uv_handle_t *)&w->pipe))
    uv_close((uv_handle_t *)&w->pipe, on_handle_closed);
  if (!uv_is_closing((uv_handle_t *)&w->proc))
    uv_close((uv_handle_t *)&w->proc, on_handle_closed);
}

static void worker_kill(pp__worker *w) {
  if (w->alive)
    uv_process_kill(&w->proc, SIGKILL);
}

int pp__worker_can_take(const pp__worker *w) {
  if (!w->alive || w->retiring)
    return 0;
  if (w->e->restart)
    return w->njobs == 0;
  if (w->inflight.len == 0)
    return 1;
  return w->inflight.len < PP__PIPE_MAX_JOBS &&
         w->inflight_est_ns < PP__PIPE_BUDGET_NS;
}

/* ---- writing ---------------------------------------------------------- */

typedef struct seg {
  const uint8_t *ext; /* NULL: inline at off */
  size_t off, len;
} seg;

typedef struct wreq {
  uv_write_t req;
  pp_buf inl;
  seg *segs;
  size_t nsegs, capsegs;
  pp_job **jobs;
  size_t njobs;
  uv_buf_t *bufs;
} wreq;

static void wreq_free(wreq *r) {
  for (size_t i = 0; i < r->njobs; i++)
    pp_job_unref(r->jobs[i]);
  pp_buf_free(&r->inl);
  free(r->segs);
  free(r->jobs);
  free(r->bufs);
  free(r);
}

static int add_seg(wreq *r, const uint8_t *ext, size_t off, size_t len) {
  if (len == 0)
    return PP_OK;
  if (ext == NULL && r->nsegs > 0 && r->segs[r->nsegs - 1].ext == NULL &&
      r->segs[r->nsegs - 1].off + r->segs[r->nsegs - 1].len == off) {
    r->segs[r->nsegs - 1].len += len;
    return PP_OK;
  }
  if (r->nsegs == r->capsegs) {
    size_t cap = r->capsegs ? r->capsegs * 2 : 16;
    seg *s = realloc(r->segs, cap * sizeof *s);
    if (s == NULL)
      return PP_ENOMEM;
    r->segs = s;
    r->capsegs = cap;
  }
  r->segs[r->nsegs++] = (seg){ext, off, len};
  return PP_OK;
}

/* add_bytes: append data, copied when small, referenced when large (the
 * wreq holds a reference to the job that owns it). */
static int add_bytes(wreq *r, const uint8_t *p, size_t len) {
  if (len > INLINE_MAX)
    return add_seg(r, p, 0, len);
  size_t off = r->inl.len;
  int rc = pp_buf_append(&r->inl, p, len);
  return rc ? rc : add_seg(r, NULL, off, len);
}

static int add_header(wreq *r, uint8_t type, uint32_t flags, uint64_t id,
                      uint32_t attempt, size_t len, const uint8_t *key) {
  uint8_t hdr[PP_FRAME_HDR + PP_KEY_LEN];
  pp_frame_hdr h = {PP_PROTO_VERSION, type, flags, (uint32_t)len, attempt, id};
  pp_frame_encode_hdr(hdr, &h);
  memcpy(hdr + PP_FRAME_HDR, key, PP_KEY_LEN);
  return add_bytes(r, hdr, sizeof hdr);
}

static void on_write(uv_write_t *req, int status) {
  wreq *r = (wreq *)req;
  if (status < 0 && status != UV_ECANCELED)
    pp_log(PP_LOG_DEBUG, "write to worker failed: %s", uv_strerror(status));
  wreq_free(r);
}

int pp__worker_send_jobs(pp__worker *w, pp_job *first) {
  pp_engine *e = w->e;
  int rc = PP_ENOMEM;
  wreq *r = calloc(1, sizeof *r);
  size_t n = 0;
  if (r == NULL)
    goto fail;
  for (pp_job *j = first; j; j = j->next)
    n++;
  r->jobs = calloc(n, sizeof *r->jobs);
  if (r->jobs == NULL)
    goto fail;
  for (pp_job *j = first; j; j = j->next) {
    pp_job_ref(j);
    r->jobs[r->njobs++] = j;
    pp_func *f = j->func;
    if (!pp_keyset_has(&w->known, f->key)) {
      uint32_t fl = 0;
      if (w->known.len >= PP__KEYSET_MAX) {
        pp_keyset_clear(&w->known);
        fl = PP_FUNCF_RESET;
      }
      if (pp_keyset_add(&w->known, f->key) != PP_OK ||
          add_header(r, PP_MSG_FUNC, fl, 0, 0, PP_KEY_LEN + f->blob_len,
                     f->key) != PP_OK ||
          add_bytes(r, f->blob, f->blob_len) != PP_OK)
        goto fail;
    }
    if (add_header(r, PP_MSG_JOB, j->flags, j->id, j->attempt,
                   PP_KEY_LEN + j->args_len, f->key) != PP_OK ||
        add_bytes(r, j->args, j->args_len) != PP_OK)
      goto fail;
  }
  r->bufs = calloc(r->nsegs ? r->nsegs : 1, sizeof *r->bufs);
  if (r->bufs == NULL)
    goto fail;
  for (size_t i = 0; i < r->nsegs; i++) {
    const uint8_t *base = r->segs[i].ext ? r->segs[i].ext : r->inl.data + r->segs[i].off;
    r->bufs[i] = uv_buf_init((char *)base, (unsigned)r->segs[i].len);
  }
  int urc = uv_write(&r->req, (uv_stream_t *)&w->pipe, r->bufs,
                     (unsigned)r->nsegs, on_write);
  if (urc != 0) {
    rc = PP_EIO;
    pp__log(e, PP_LOG_WARNING, "cannot write to worker pid %d: %s", w->pid,
            uv_strerror(urc));
    goto fail;
  }
  return PP_OK;

fail:
  if (r)
    wreq_free(r);
  /* The jobs stay on w->inflight; killing the worker requeues them. */
  pp_keyset_clear(&w->known);
  worker_kill(w);
  return rc;
}

static void send_bye(pp__worker *w) {
  wreq *r = calloc(1, sizeof *r);
  uint8_t hdr[PP_FRAME_HDR];
  if (w->bye_sent || !w->alive)
    return;
  w->bye_sent = 1;
  pp_frame_hdr h = {PP_PROTO_VERSION, PP_MSG_BYE, 0, 0, 0, 0};
  pp_frame_encode_hdr(hdr, &h);
  if (r == NULL || add_bytes(r, hdr, sizeof hdr) != PP_OK) {
    if (r)
      wreq_free(r);
    worker_kill(w);
    return;
  }
  r->bufs = calloc(1, sizeof *r->bufs);
  if (r->bufs == NULL) {
    wreq_free(r);
    worker_kill(w);
    return;
  }
  r->bufs[0] = uv_buf_init((char *)r->inl.data, (unsigned)r->inl.len);
  if (uv_write(&r->req, (uv_stream_t *)&w->pipe, r->bufs, 1, on_write) != 0) {
    wreq_free(r);
    worker_kill(w);
  }
}

/* ---- reading ---------------------------------------------------------- */

/* process_frames: act on every complete frame in w->rbuf. Returns 0, or a
 * negative error after which the worker must be killed. */
static int process_frames(pp__worker *w) {
  pp_engine *e = w->e;
  pp_frame_hdr h;
  const uint8_t *p;
  int rc, locked = 0;
  uint64_t nresults = 0;
  while ((rc = pp_frame_next(&w->rbuf, e->max_frame, &h, &p)) == 1) {
    if (h.type == PP_MSG_HELLO) {
      w->hello = 1;
      e->spawn_fails = 0;
    } else if (h.type == PP_MSG_RESULT) {
      pp_job *j = w->inflight.head;
      unsigned status = PP_RES_STATUS(h.flags);
      if (j == NULL || j->id != h.id || j->attempt != h.attempt ||
          h.length < 8 || status > PP_RES_SERIAL) {
        rc = PP_EPROTO;
        break;
      }
      size_t n = h.length - 8;
      uint8_t *copy = malloc(n ? n : 1);
      if (copy == NULL) {
        rc = PP_ENOMEM;
        break;
      }
      memcpy(copy, p + 8, n);
      j->runtime_ns = pp_get_u64(p);
      pp__observe(j->func, j->runtime_ns);
      if (!locked) {
        uv_mutex_lock(&e->mu);
        locked = 1;
      }
      pp_jobq_remove(&w->inflight, j);
      w->inflight_est_ns -= j->est_ns;
      pp__complete(e, j, (int)status, copy, n, NULL);
      nresults++;
    } else {
      rc = PP_EPROTO;
      break;
    }
    pp_buf_consume(&w->rbuf, PP_FRAME_HDR + h.length);
  }
  if (locked) {
    pids_count(e, w->pid, nresults);
    uv_mutex_unlock(&e->mu);
  }
  if (rc < 0) {
    pp__log(e, PP_LOG_ERROR,
            "worker pid %d sent a malformed frame (%s); killing it", w->pid,
            pp_strerror(rc));
    return rc;
  }
  if (e->restart && w->njobs > 0 && w->inflight.len == 0)
    w->retiring = 1; /* one job per process: a fresh one replaces it */
  if (w->retiring && w->inflight.len == 0)
    send_bye(w);
  return PP_OK;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  pp__worker *w = h->data;
  PP_UNUSED(hint);
  if (pp_buf_reserve(&w->rbuf, 65536) != PP_OK) {
    *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
    return;
  }
  *buf = uv_buf_init((char *)w->rbuf.data + w->rbuf.len,
                     (unsigned)(w->rbuf.cap - w->rbuf.len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  pp__worker *w = s->data;
  PP_UNUSED(buf);
  if (nread > 0) {
    w->rbuf.len += (size_t)nread;
    if (process_frames(w) != PP_OK) {
      uv_read_stop(s);
      worker_kill(w);
      return;
    }
    pp__dispatch(w->e);
  } else if (nread < 0) {
    /* EOF or error: the process is going; exit handling requeues its jobs */
    uv_read_stop(s);
    worker_kill(w);
  }
}

/* drain_pipe: read whatever the exited process left in the pipe, so a
 * result written just before exit is not mistaken for a crash. */
static void drain_pipe(pp__worker *w) {
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&w->pipe, &fd) != 0)
    return;
  for (int rounds = 0; rounds < 100000; rounds++) {
    if (pp_buf_reserve(&w->rbuf, 65536) != PP_OK)
      return;
    ssize_t n = read(fd, w->rbuf.data + w->rbuf.len, w->rbuf.cap - w->rbuf.len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    w->rbuf.len += (size_t)n;
    if (process_frames(w) != PP_OK)
      break;
  }
}

/* ---- process lifetime ------------------------------------------------- */

static void describe_exit(char *out, size_t n, int64_t status, int sig) {
  if (sig)
    snprintf(out, n, "signal %d (%s)", sig, strsignal(sig));
  else
    snprintf(out, n, "exit status %lld", (long long)status);
}

/* requeue_inflight: the worker is gone. Put its jobs back at the front of the
 * queue in order; the job it was running is charged one crash and fails
 * once it has crashed more than max_retries times. */
static void requeue_inflight(pp__worker *w, int64_t status, int sig) {
  pp_engine *e = w->e;
  char how[128];
  pp_job *head, *j;
  describe_exit(how, sizeof how, status, sig);
  uv_mutex_lock(&e->mu);
  head = pp_jobq_pop(&w->inflight);
  while ((j = w->inflight.tail) != NULL) {
    pp_jobq_remove(&w->inflight, j);
    atomic_store(&j->state, PP_JOB_QUEUED);
    e->running--;
    pp_jobq_push_front(&e->pending, j);
  }
  w->inflight_est_ns = 0;
  if (head != NULL) {
    if (w->hello)
      head->crashes++;
    head->exitstatus = (int)status;
    head->termsignal = sig;
    if (head->crashes > (uint32_t)e->max_retries) {
      char *msg = malloc(256);
      if (msg)
        snprintf(msg, 256,
                 "worker process (pid %d) died with %s while running job %llu"
                 " (%u attempts)",
                 w->pid, how, (unsigned long long)head->id, head->attempt);
      pp__complete(e, head, PP_JOB_LOST, NULL, 0, msg);
      head = NULL;
    } else {
      atomic_store(&head->state, PP_JOB_QUEUED);
      e->running--;
      pp_jobq_push_front(&e->pending, head);
    }
  }
  uv_mutex_unlock(&e->mu);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  pp__worker *w = p->data;
  pp_engine *e = w->e;
  char how[128];
  int had_jobs;
  if (!e->stopping) /* when stopping, its jobs were already failed */
    drain_pipe(w);
  w->alive = 0;
  pids_remove(e, w->pid);
  had_jobs = w->inflight.len > 0;
  describe_exit(how, sizeof how, status, sig);
  if (!e->stopping) {
    if (!w->hello) {
      e->spawn_fails++;
      pp__log(e, PP_LOG_WARNING,
              "worker pid %d exited with %s before it was ready", w->pid, how);
    } else if (had_jobs) {
      pp__log(e, PP_LOG_WARNING,
              "worker pid %d died with %s while running job %llu; "
              "starting a replacement", w->pid, how,
              (unsigned long long)w->inflight.head->id);
    } else if (!w->retiring && !e->restart) {
      pp__log(e, PP_LOG_WARNING, "idle worker pid %d exited with %s", w->pid,
              how);
    }
    requeue_inflight(w, status, sig);
  }
  worker_close(w);
  if (!e->stopping) {
    pp__dispatch(e);
  }
}

static int spawn_worker(pp_engine *e) {
  pp__worker *w = calloc(1, sizeof *w);
  uv_process_options_t o;
  uv_stdio_container_t io[4];
  if (w == NULL)
    return PP_ENOMEM;
  w->e = e;
  pp_buf_init(&w->rbuf);
  pp_keyset_init(&w->known);
  uv_pipe_init(&e->loop, &w->pipe, 0);
  w->pipe.data = w;
  w->proc.data = w;
  w->open_handles = 2;
  w->next = e->workers;
  e->workers = w;

  memset(&o, 0, sizeof o);
  memset(io, 0, sizeof io);
  io[0].flags = UV_IGNORE;
  io[1].flags = UV_INHERIT_FD;
  io[1].data.fd = 1;
  io[2].flags = UV_INHERIT_FD;
  io[2].data.fd = 2;
  io[3].flags = UV_CREATE_PIPE | UV_READABLE_PIPE | UV_WRITABLE_PIPE;
  io[3].data.stream = (uv_stream_t *)&w->pipe;
  o.file = e->argv[0];
  o.args = e->argv;
  o.env = e->env;
  o.cwd = e->cwd;
  o.exit_cb = on_exit_cb;
  o.stdio = io;
  o.stdio_count = 4;
  int rc = uv_spawn(&e->loop, &w->proc, &o);
  if (rc != 0) {
    pp__log(e, PP_LOG_ERROR, "cannot start worker '%s': %s", e->argv[0],
            uv_strerror(rc));
    e->spawn_fails++;
    worker_close(w);
    return PP_ESPAWN;
  }
  w->pid = w->proc.pid;
  w->alive = 1;
  pids_add(e, w->pid);
  uv_read_start((uv_stream_t *)&w->pipe, on_alloc, on_read);
  pp__log(e, PP_LOG_DEBUG, "started worker pid %d", w->pid);
  return PP_OK;
}

/* fail_pending: workers cannot be started; rather than let jobs wait
 * forever, fail the queued ones with the reason. */
static void fail_pending(pp_engine *e) {
  pp_job *j;
  uv_mutex_lock(&e->mu);
  while ((j = pp_jobq_pop(&e->pending)) != NULL) {
    char *msg = malloc(256);
    if (msg)
      snprintf(msg, 256,
               "no worker process could be started (%d attempts in a row "
               "failed; see the log)", e->spawn_fails);
    pp__complete(e, j, PP_JOB_FAILED, NULL, 0, msg);
  }
  uv_mutex_unlock(&e->mu);
}

static void on_respawn_timer(uv_timer_t *t) {
  pp_engine *e = t->data;
  e->respawn_due = 1; /* allow one spawn round despite recent failures */
  pp__dispatch(e);    /* adjusts the pool first */
  e->respawn_due = 0;
}

void pp__pool_adjust(pp_engine *e) {
  int live = 0, target;
  if (e->stopping)
    return;
  uv_mutex_lock(&e->mu);
  target = e->target;
  uv_mutex_unlock(&e->mu);
  for (pp__worker *w = e->workers; w; w = w->next)
    if (w->alive && !w->retiring)
      live++;
  while (live < target) {
    if (e->spawn_fails > 0 && !e->respawn_due) {
      /* workers are dying at start: back off instead of spinning */
      if (e->spawn_fails >= PP__MAX_SPAWN_FAILS && live == 0)
        fail_pending(e);
      if (!uv_is_active((uv_handle_t *)&e->respawn_timer)) {
        int f = e->spawn_fails < 6 ? e->spawn_fails : 6;
        uv_timer_start(&e->respawn_timer, on_respawn_timer,
                       (uint64_t)50 << f, 0);
      }
      break;
    }
    e->respawn_due = 0; /* one attempt per timer round */
    if (spawn_worker(e) != PP_OK)
      continue; /* spawn_fails is now > 0: the loop backs off */
    live++;
  }
  while (live > target) {
    pp__worker *pick = NULL;
    for (pp__worker *w = e->workers; w; w = w->next)
      if (w->alive && !w->retiring &&
          (pick == NULL || w->inflight.len < pick->inflight.len))
        pick = w;
    if (pick == NULL)
      break;
    pick->retiring = 1;
    live--;
    if (pick->inflight.len == 0)
      send_bye(pick);
  }
}

void pp__pool_kill_all(pp_engine *e) {
  for (pp__worker *w = e->workers; w; w = w->next) {
    if (w->alive) {
      uv_read_stop((uv_stream_t *)&w->pipe);
      worker_kill(w);
    }
  }
}
