/* pool.c — the local transport: worker processes with their frame pipe on
 * fd 3 and their status page (wstatus.h) on fd 4; starting them (forked by
 * the fork server, forksrv.c, or spawned as fresh interpreters), writing
 * frames without copying large payloads, reading HELLO and RESULT frames,
 * and a process that exits or dies (its jobs are requeued by the peer
 * layer, the job it was running — read from its status page — is charged
 * one crash, a replacement is started). Workers killed before they are
 * ready are respawned with a bounded backoff; only workers that cannot
 * start at all (missing command, an exit before ready) make queued jobs
 * fail.
 *
 * Direct hand-off: a thread submitting a job may write it to an idle
 * worker itself (pp__pool_handoff, under the engine mutex), so a round trip
 * skips the engine thread's wake-up. Who may write a worker's pipe is
 * decided under the mutex (docs/architecture.md, "Threads"): the submitting
 * thread only while the worker is on the hand-off list, has nothing in
 * flight and libuv has none of its bytes queued; the engine thread only
 * for jobs it put in flight itself (so never at the same time).
 *
 * Results read by the waiting caller: a thread waiting for a job in
 * flight on a worker of the hand-off list reads the worker's pipe itself
 * (pp__pool_direct_read), so the result reaches it without the engine
 * thread's wake-up on the way back. What reading touches (the read buffer,
 * a large result being read, process_frames) is under the worker's read
 * lock rd_mu: the engine thread holds it from each on_alloc to its on_read
 * (libuv pairs them), the caller while it reads. Lock order: rd_mu, then
 * mu; a thread holding mu only tries rd_mu (trylock). The caller completes
 * RESULT frames of jobs the worker holds and leaves everything else (other
 * frames, a partial or large result, a result with KEPT) in the buffer for
 * the engine thread, which it then wakes (direct_wake). Before a worker's
 * pipe is drained or closed, the engine takes it off the hand-off list and
 * waits for rd_mu once, so no caller still uses it. Everything else here
 * is engine thread only. */
#include "engine_int.h"
#include "fdpass.h"
#include "wstatus.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif

#define INLINE_MAX 8192 /* payloads up to this size are copied, larger ones referenced */
/* A RESULT frame this large is read straight into an arena block. */
#define BIG_MIN (1u << 20)
/* A hand-off writes at most this many bytes from the submitting thread
 * (with the engine mutex held): larger jobs go through the engine. */
#define HANDOFF_MAX (1u << 20)
/* A waiting caller reads at most this much of a worker's pipe at once. */
#define DIRECT_ROOM 65536u
#define BACKOFF_FIRST_MS 100u
#define BACKOFF_MAX_SHIFT 4 /* 100 ms .. 1.6 s between start attempts */
#define MAX_TPL_FAILS 3 /* templates lost in a row before none is used */

typedef struct wreq wreq;

/* A job a worker still references the shared memory of, as it named it. */
struct held {
  pp_job *j; /* a reference */
  uint64_t id;
  uint32_t attempt;
};

struct pp__worker {
  pp__peer peer; /* first: a worker is a peer */
  uv_process_t proc; /* spawned workers only */
  uv_pipe_t pipe;
  int pid;          /* 0 while a fork request is unanswered */
  int forked;       /* made by the fork server: no proc handle; its exit is
                       the template's EXITED report */
  uint64_t tag;     /* forked: its fork request */
  uint64_t tpl_gen; /* forked: the template that forks it */
  int pidfd;        /* forked: a pidfd of the process, or -1 */
  int answered;     /* forked: FORKED arrived (its pid may be known earlier,
                       from its HELLO, when the template is slow to say) */
  int kill_wanted;  /* forked: SIGKILL asked for before FORKED */
  int usr2_wanted;  /* forked: SIGUSR2 asked for before FORKED */
  int listed;       /* in e->pids */
  int alive;        /* process running */
  int retiring;     /* gets no new jobs; BYE once drained */
  int bye_sent;
  int hello;        /* HELLO received: the interpreter started */
  int stopping;     /* killed to stop a job (timeout, abort) */
  int broke;        /* killed for breaking the protocol: the oldest job in
                       flight (the one its bad frame was about) is charged */
  int killed;       /* SIGKILL sent, or the exit seen */
  int open_handles; /* proc and pipe handles not yet closed */
  int fd;           /* [mu] the pipe's descriptor (a socket); -1: no
                       hand-off */
  /* [mu] direct hand-off (see the top of this file): */
  int on_handoff;   /* on e->handoff, the list submitters pick from */
  pp__worker *hnext;
  int wq_busy;      /* writes libuv has not finished (or that the engine
                       still has to start: `rest`): no hand-off meanwhile */
  wreq *rest;       /* the unwritten end of a hand-off's frames, for the
                       engine thread to write before anything else */
  pp_wstatus *status; /* shared status page, or NULL */
  wreq *out;        /* frames emitted since the last flush */
  struct held *held; /* jobs whose shared arguments it still references
                        (RESULT with KEPT, until its RELEASE): a reference
                        each keeps the arena block alive */
  size_t nheld, capheld;
  /* a large RESULT being read straight into an arena block (big_start):
   * its header, the block (NULL: none), and how much of it has come */
  pp_frame_hdr big_hdr;
  uint8_t *big;
  uint64_t big_off;
  size_t big_have;
  /* the read lock (see the top of this file) over peer.rbuf, big* and
   * process_frames; rd_engine: the engine thread holds it (on_alloc ..
   * on_read), read by the engine thread only */
  uv_mutex_t rd_mu;
  int rd_engine;
  int rd_yielded; /* on_alloc found rd_mu taken (engine thread only) */
  /* the status page's result mailbox (wstatus.h): held by the one thread
   * that armed it or empties it; rd_barrier waits for it too */
  uv_mutex_t mb_mu;
  atomic_int mb_broke; /* a malformed frame came in it: kill the worker */
  pp__worker *next;
};

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

static void wreq_free(wreq *r);
static void worker_named(pp__worker *w, int pid);
static void handoff_off_locked(pp__worker *w);
static void mb_collect(pp__worker *w);
static int mb_take(pp__worker *w);

/* worker_free: release everything w owns (its handles are closed). */
static void worker_free(pp__worker *w) {
  if (w->out)
    wreq_free(w->out);
  if (w->rest)
    wreq_free(w->rest);
  /* whatever it still referenced is free now: the process is gone */
  for (size_t i = 0; i < w->nheld; i++)
    pp_job_unref(w->held[i].j);
  free(w->held);
  if (w->status)
    munmap(w->status, PP_WSTATUS_SIZE);
  if (w->pidfd >= 0)
    close(w->pidfd);
  if (w->big) /* it died in the middle of a large result */
    pp_shm_free(w->peer.e->shm, w->big_off, w->big_hdr.length);
  pp__peer_clear(&w->peer);
  uv_mutex_destroy(&w->rd_mu);
  uv_mutex_destroy(&w->mb_mu);
  free(w);
}

static void worker_unlink_free(pp__worker *w) {
  pp_engine *e = w->peer.e;
  for (pp__worker **pw = &e->workers; *pw; pw = &(*pw)->next)
    if (*pw == w) {
      *pw = w->next;
      break;
    }
  worker_free(w);
}

/* on_handle_closed: the close callback of both handles; the last one frees
 * the record (libuv owns the memory until then). */
static void on_handle_closed(uv_handle_t *h) {
  pp__worker *w = h->data;
  if (--w->open_handles == 0)
    worker_unlink_free(w);
}

/* rd_barrier: no caller reads w's pipe or waits on its mailbox from now
 * on: off the hand-off list (under mu), then the read lock and the mailbox
 * lock taken and released once, so a caller that found w before is done
 * with it. Engine thread, holding neither lock. */
static void rd_barrier(pp__worker *w) {
  uv_mutex_lock(&w->peer.e->mu);
  handoff_off_locked(w);
  uv_mutex_unlock(&w->peer.e->mu);
  if (!w->rd_engine) {
    uv_mutex_lock(&w->rd_mu);
    uv_mutex_unlock(&w->rd_mu);
  }
  uv_mutex_lock(&w->mb_mu);
  uv_mutex_unlock(&w->mb_mu);
}

static void worker_close(pp__worker *w) {
  rd_barrier(w); /* the pipe's descriptor closes below */
  if (!uv_is_closing((uv_handle_t *)&w->pipe))
    uv_close((uv_handle_t *)&w->pipe, on_handle_closed);
  if (!w->forked && !uv_is_closing((uv_handle_t *)&w->proc))
    uv_close((uv_handle_t *)&w->proc, on_handle_closed);
}

/* worker_signal: send sig to a live worker. A forked one is signalled
 * through its pidfd, which names that process even after it ended (its pid
 * may be reused once the template reaped it); without one (a kernel before
 * 5.3) by pid, which is only wrong if the template reaped it and the pid
 * was reused before its EXITED arrived. Before its FORKED (and pidfd)
 * arrived, the signal waits for it. */
static void worker_signal(pp__worker *w, int sig) {
  if (!w->alive)
    return;
  if (!w->forked) {
    uv_process_kill(&w->proc, sig);
    return;
  }
  if (!w->answered) {
    if (sig == SIGKILL)
      w->kill_wanted = 1;
    else if (sig == SIGUSR2)
      w->usr2_wanted = 1;
    return;
  }
#ifdef SYS_pidfd_send_signal
  /* sent, or it has ended already (then its pid may be reused: nothing
   * more); refused otherwise (ENOSYS under seccomp or valgrind): by pid */
  if (w->pidfd >= 0 &&
      (syscall(SYS_pidfd_send_signal, w->pidfd, sig, NULL, 0) == 0 ||
       errno == ESRCH))
    return;
#endif
  if (w->pid > 0)
    kill(w->pid, sig);
}

/* handoff_off_locked: take w off the hand-off list. Caller holds mu. */
static void handoff_off_locked(pp__worker *w) {
  pp_engine *e = w->peer.e;
  if (!w->on_handoff)
    return;
  for (pp__worker **pw = &e->handoff; *pw; pw = &(*pw)->hnext)
    if (*pw == w) {
      *pw = w->hnext;
      break;
    }
  w->hnext = NULL;
  w->on_handoff = 0;
}

/* handoff_update: put w on the engine's hand-off list, or take it off, as
 * it may now be written by submitting threads: started (its HELLO came),
 * alive and not being killed, not retiring, not one job per process, its
 * pipe a socket, the engine not stopping. Takes the mutex. Engine thread. */
static void handoff_update(pp__worker *w) {
  pp_engine *e = w->peer.e;
  uv_mutex_lock(&e->mu); /* fd may be cleared by a hand-off (ENOTSOCK) */
  int want = w->alive && w->hello && !w->killed && !w->retiring &&
             !w->stopping && !w->broke && !w->peer.restart && w->fd >= 0 &&
             !e->stopping;
  if (want && !w->on_handoff) {
    w->hnext = e->handoff;
    e->handoff = w;
    w->on_handoff = 1;
  } else if (!want) {
    handoff_off_locked(w);
  }
  uv_mutex_unlock(&e->mu);
}

static void worker_kill(pp__worker *w) {
  w->killed = 1;
  handoff_update(w);
  worker_signal(w, SIGKILL);
}

int pp__pool_live(const pp_engine *e) {
  int n = 0;
  for (const pp__worker *w = e->workers; w; w = w->next)
    n += w->alive && !w->retiring;
  return n;
}

/* ---- writing ---------------------------------------------------------- */

typedef struct seg {
  const uint8_t *ext; /* NULL: inline at off */
  size_t off, len;
} seg;

/* One uv_write: small pieces copied into `inl`, large payloads referenced
 * (the request holds a reference to each job they belong to). */
struct wreq {
  uv_write_t req;
  pp_buf inl;
  seg *segs;
  size_t nsegs, capsegs;
  pp_job **jobs;
  size_t njobs, capjobs;
  uv_buf_t *bufs;
  int counted;     /* counted in the worker's wq_busy until on_write */
};

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

/* hold_job: the request keeps j alive until the write completes. */
static int hold_job(wreq *r, pp_job *j) {
  if (r->njobs > 0 && r->jobs[r->njobs - 1] == j)
    return PP_OK;
  if (r->njobs == r->capjobs) {
    size_t cap = r->capjobs ? r->capjobs * 2 : 16;
    pp_job **p = realloc(r->jobs, cap * sizeof *p);
    if (p == NULL)
      return PP_ENOMEM;
    r->jobs = p;
    r->capjobs = cap;
  }
  pp_job_ref(j);
  r->jobs[r->njobs++] = j;
  return PP_OK;
}

/* add_bytes: append data, copied when small (or when nobody holds it),
 * referenced when large. */
static int add_bytes(wreq *r, const uint8_t *p, size_t len, int may_ref) {
  if (may_ref && len > INLINE_MAX)
    return add_seg(r, p, 0, len);
  size_t off = r->inl.len;
  int rc = pp_buf_append(&r->inl, p, len);
  return rc ? rc : add_seg(r, NULL, off, len);
}

/* w_emit: ops->emit for a worker: the frame's header, then its parts,
 * copied when small and referenced (holding the job) when large, so a big
 * argument is never copied on its way to the pipe. */
static int w_emit(pp__peer *p, uint8_t type, uint32_t flags, uint64_t id,
                  uint32_t attempt, const pp_part *parts, size_t nparts,
                  pp_job *job) {
  pp__worker *w = (pp__worker *)p;
  size_t len = pp_frame_parts_len(parts, nparts);
  if (len > p->e->max_frame)
    return PP_ETOOBIG;
  if (w->out == NULL && (w->out = calloc(1, sizeof *w->out)) == NULL)
    return PP_ENOMEM;
  wreq *r = w->out;
  uint8_t hdr[PP_FRAME_HDR];
  pp_frame_hdr h = {PP_PROTO_VERSION, type, flags, (uint32_t)len, attempt, id};
  pp_frame_encode_hdr(hdr, &h);
  int rc = add_bytes(r, hdr, sizeof hdr, 0);
  if (rc == PP_OK && job != NULL)
    rc = hold_job(r, job);
  for (size_t i = 0; rc == PP_OK && i < nparts; i++)
    rc = add_bytes(r, parts[i].p, parts[i].len, job != NULL);
  return rc;
}

/* wq_done: a counted request is finished with (written, failed or never
 * started): hand-offs may follow once none is left. */
static void wq_done(pp__worker *w, wreq *r) {
  if (!r->counted)
    return;
  r->counted = 0;
  uv_mutex_lock(&w->peer.e->mu);
  w->wq_busy--;
  uv_mutex_unlock(&w->peer.e->mu);
}

/* on_write: libuv is done with a request (written, or failed: the read
 * side then sees the worker go). Engine thread. */
static void on_write(uv_write_t *req, int status) {
  wreq *r = (wreq *)req;
  if (status < 0 && status != UV_ECANCELED)
    pp_log(PP_LOG_DEBUG, "write to worker failed: %s", uv_strerror(status));
  wq_done(req->handle->data, r);
  wreq_free(r);
}

/* seg_base: where segment i of r starts. */
static const uint8_t *seg_base(const wreq *r, size_t i) {
  return r->segs[i].ext ? r->segs[i].ext : r->inl.data + r->segs[i].off;
}

/* wreq_write: one uv_write of r (which it then owns, freeing it in
 * on_write or here on failure). A request libuv could not write at once
 * is counted in w->wq_busy until on_write, so no hand-off writes behind
 * its back. Returns 0 or a negative pp code. Engine thread. */
static int wreq_write(pp__worker *w, wreq *r) {
  r->bufs = calloc(r->nsegs ? r->nsegs : 1, sizeof *r->bufs);
  if (r->bufs == NULL) {
    wq_done(w, r);
    wreq_free(r);
    return PP_ENOMEM;
  }
  for (size_t i = 0; i < r->nsegs; i++)
    r->bufs[i] = uv_buf_init((char *)seg_base(r, i), (unsigned)r->segs[i].len);
  int urc = uv_write(&r->req, (uv_stream_t *)&w->pipe, r->bufs,
                     (unsigned)r->nsegs, on_write);
  if (urc != 0) {
    pp__log(w->peer.e, PP_LOG_WARNING, "cannot write to worker pid %d: %s",
            w->pid, uv_strerror(urc));
    wq_done(w, r);
    wreq_free(r);
    return pp_err_from_uv(urc);
  }
  if (!r->counted &&
      uv_stream_get_write_queue_size((uv_stream_t *)&w->pipe) > 0) {
    r->counted = 1; /* libuv goes on writing it when the pipe has room */
    uv_mutex_lock(&w->peer.e->mu);
    w->wq_busy++;
    uv_mutex_unlock(&w->peer.e->mu);
  }
  return PP_OK;
}

/* write_rest: start writing the end of a hand-off that the submitting
 * thread could not write at once. Before any other write to w. Returns 0
 * or a negative code (the worker is then killed: its jobs run again).
 * Engine thread. */
static int write_rest(pp__worker *w) {
  uv_mutex_lock(&w->peer.e->mu);
  wreq *r = w->rest;
  w->rest = NULL;
  uv_mutex_unlock(&w->peer.e->mu);
  if (r == NULL)
    return PP_OK;
  int rc = wreq_write(w, r);
  if (rc != PP_OK)
    worker_kill(w);
  return rc;
}

void pp__pool_flush_rests(pp_engine *e) {
  uv_mutex_lock(&e->mu);
  int want = e->rests_wanted;
  e->rests_wanted = 0;
  uv_mutex_unlock(&e->mu);
  if (want)
    for (pp__worker *w = e->workers; w; w = w->next)
      write_rest(w);
}

/* w_flush: ops->flush: one uv_write of everything emitted (after the end
 * of a hand-off, when one is waiting). */
static int w_flush(pp__peer *p) {
  pp__worker *w = (pp__worker *)p;
  int rc = write_rest(w);
  wreq *r = w->out;
  if (rc != PP_OK || r == NULL || r->nsegs == 0)
    return rc;
  w->out = NULL;
  return wreq_write(w, r);
}

/* wreq_skip: drop the first n bytes of r (a hand-off's partial write). */
static void wreq_skip(wreq *r, size_t n) {
  size_t k = 0;
  while (k < r->nsegs && n >= r->segs[k].len)
    n -= r->segs[k++].len;
  if (k < r->nsegs && n > 0) {
    if (r->segs[k].ext)
      r->segs[k].ext += n;
    else
      r->segs[k].off += n;
    r->segs[k].len -= n;
  }
  memmove(r->segs, r->segs + k, (r->nsegs - k) * sizeof *r->segs);
  r->nsegs -= k;
}

/* handoff_write: write what was emitted into w->out straight to the
 * worker's socket, without blocking. Returns 1 when all of it was
 * written, 2 when only a part was (the rest is w->rest now, counted in
 * wq_busy: the engine thread must be woken to write it before anything
 * else), 0 when nothing was (w->out is discarded; the caller undoes the
 * hand-off). Caller holds mu; any thread. */
static int handoff_write(pp__worker *w) {
  pp_engine *e = w->peer.e;
  wreq *r = w->out;
  struct iovec iov[32];
  w->out = NULL;
  if (r == NULL || r->nsegs == 0 || r->nsegs > 32) {
    if (r)
      wreq_free(r);
    return 0;
  }
  size_t total = 0;
  for (size_t i = 0; i < r->nsegs; i++) {
    iov[i].iov_base = (void *)seg_base(r, i);
    iov[i].iov_len = r->segs[i].len;
    total += r->segs[i].len;
  }
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = iov;
  mh.msg_iovlen = r->nsegs;
  ssize_t n;
  do /* MSG_NOSIGNAL: a dead worker is EPIPE, not SIGPIPE in this thread */
    n = sendmsg(w->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n <= 0) {
    if (n < 0 && errno == ENOTSOCK)
      w->fd = -1; /* not a socket: no more hand-offs to it */
    wreq_free(r);
    return 0;
  }
  if ((size_t)n == total) {
    wreq_free(r); /* the kernel has the bytes */
    return 1;
  }
  wreq_skip(r, (size_t)n);
  r->counted = 1;
  w->wq_busy++;
  w->rest = r;
  e->rests_wanted = 1;
  return 2;
}

int pp__pool_handoff(pp_engine *e, pp_job *j) {
  /* Only into an idle engine: a lone job (a round trip) gains a wake-up,
   * while the jobs of a burst go to the dispatcher, which batches them
   * (one write of many jobs per worker instead of a system call and a
   * wake-up per job in the submitting thread). */
  if (!e->pool_settled || e->running > 0 || e->pending.len > 0 ||
      e->handoff == NULL || j->nobjs > 0)
    return 0; /* (objects: the peer's store is the engine thread's) */
  pp__worker *w = e->handoff;
  while (w && (w->peer.inflight.len > 0 || w->wq_busy > 0 || w->rest ||
              w->peer.writing))
    w = w->hnext;
  if (w == NULL || j->args_len + j->func->blob_len > HANDOFF_MAX)
    return 0;
  pp__peer *p = &w->peer;
  int known = pp_keyset_has(&p->known, j->func->key);
  if (!known && p->known.len >= PP__KEYSET_MAX)
    return 0; /* the engine resets the worker's function cache */
  pp__peer_start(p, j);
  int rc = pp__peer_emit(p, j) == PP_OK ? handoff_write(w) : 0;
  if (rc == 0) {
    if (w->out) {
      wreq_free(w->out);
      w->out = NULL;
    }
    if (!known) /* it may not have the function: it will get it again */
      pp_keyset_clear(&p->known);
    pp__peer_unstart(p, j);
    return 0;
  }
  e->handoffs++;
  return rc;
}

static int w_ready(const pp__peer *p) {
  const pp__worker *w = (const pp__worker *)p;
  return w->alive && !w->retiring;
}

/* w_drop: ops->drop: kill the process; on_exit_cb requeues its jobs. */
static void w_drop(pp__peer *p, const char *why) {
  pp__worker *w = (pp__worker *)p;
  pp__log(p->e, PP_LOG_WARNING, "worker pid %d: %s; killing it", w->pid, why);
  if (w->out) {
    wreq_free(w->out);
    w->out = NULL;
  }
  worker_kill(w);
}

/* add_abort: put id on the worker's abort list. 0, or -1 when it is full. */
static int add_abort(pp__worker *w, uint64_t id) {
  if (w->status == NULL)
    return -1;
  if (pp_wstatus_aborting(w->status, id))
    return 0;
  for (unsigned i = 0; i < PP_WSTATUS_NABORT; i++) {
    uint64_t zero = 0;
    if (atomic_compare_exchange_strong(&w->status->abort_ids[i], &zero, id))
      return 0;
  }
  return -1;
}

/* clear_aborts: free the abort slots of jobs the worker no longer holds. */
static void clear_aborts(pp__worker *w) {
  if (w->status == NULL)
    return;
  for (unsigned i = 0; i < PP_WSTATUS_NABORT; i++) {
    uint64_t id = atomic_load(&w->status->abort_ids[i]);
    if (id == 0)
      continue;
    int held = 0;
    uv_mutex_lock(&w->peer.e->mu); /* inflight is [mu] */
    for (const pp_job *j = w->peer.inflight.head; j && !held; j = j->next)
      held = j->id == id;
    uv_mutex_unlock(&w->peer.e->mu);
    if (!held)
      atomic_store(&w->status->abort_ids[i], 0);
  }
}

/* running_now: the id of the job the worker is processing (0: none, or no
 * status page). */
static uint64_t running_now(const pp__worker *w) {
  return w->status ? atomic_load_explicit(&w->status->job_id,
                                          memory_order_acquire)
                   : 0;
}

/* w_stop: ops->stop. A timeout kills the worker at once (the job ends
 * TIMEOUT when the exit is seen). An abort puts the job on the worker's
 * abort list: not started yet, the worker skips it; running, SIGUSR2 makes
 * the worker raise KeyboardInterrupt inside it, and pp__pool_tick kills the
 * worker if it is still at it after the grace. */
static void w_stop(pp__peer *p, pp_job *j) {
  pp__worker *w = (pp__worker *)p;
  if (!w->alive)
    return;
  if (j->stop_reason == PP_JOB_TIMEOUT || add_abort(w, j->id) != 0) {
    pp__log(p->e, PP_LOG_INFO, "stopping job %llu: killing worker pid %d",
            (unsigned long long)j->id, w->pid);
    w->stopping = 1;
    worker_kill(w);
    return;
  }
  if (running_now(w) == j->id) {
    if (j->stop_grace_ns == 0) {
      w->stopping = 1;
      worker_kill(w);
    } else
      worker_signal(w, SIGUSR2);
  }
}

static const pp__peer_ops worker_ops = {w_ready, w_emit, w_flush, w_drop,
                                        w_stop};

void pp__pool_tick(pp_engine *e, uint64_t now) {
  for (pp__worker *w = e->workers; w; w = w->next) {
    if (w->alive)
      mb_collect(w); /* a result no caller took (the backstop) */
    uint64_t id = running_now(w);
    if (!w->alive || id == 0)
      continue;
    pp_job *j = NULL;
    uv_mutex_lock(&e->mu); /* inflight is [mu] */
    for (pp_job *k = w->peer.inflight.head; k; k = k->next)
      if (k->id == id) {
        j = k;
        break;
      }
    if (j == NULL) {
      uv_mutex_unlock(&e->mu);
      continue;
    }
    uint64_t started = atomic_load(&w->status->started_ns);
    int act = 0;
    if (j->stop_reason == 0 && j->timeout_ns != 0 &&
        now > started && now - started >= j->timeout_ns) {
      j->stop_reason = PP_JOB_TIMEOUT;
      j->stop_acted = 1;
      act = 1;
    } else if (j->stop_reason != 0 && j->stop_acted &&
               now >= j->stop_deadline_ns) {
      act = 2; /* the grace is over */
    }
    if (act)
      /* it ends without a result: its run time is what the status page
       * says (job.start_time = end - run time) */
      j->runtime_ns = now > started ? now - started : 0;
    uv_mutex_unlock(&e->mu);
    if (act)
      w->stopping = 1;
    if (act == 1) {
      pp__log(e, PP_LOG_INFO,
              "job %llu ran longer than its timeout of %.3f s; killing worker"
              " pid %d", (unsigned long long)id, j->timeout_ns / 1e9, w->pid);
      worker_kill(w);
    } else if (act == 2) {
      pp__log(e, PP_LOG_INFO,
              "job %llu did not stop within its grace; killing worker pid %d",
              (unsigned long long)id, w->pid);
      worker_kill(w);
    }
  }
}

/* send_bye: ask an idle retiring worker to exit. */
static void send_bye(pp__worker *w) {
  if (w->bye_sent || !w->alive)
    return;
  w->bye_sent = 1;
  if (w_emit(&w->peer, PP_MSG_BYE, 0, 0, 0, NULL, 0, NULL) != PP_OK ||
      w_flush(&w->peer) != PP_OK) {
    if (w->out) {
      wreq_free(w->out);
      w->out = NULL;
    }
    worker_kill(w);
  }
}

/* ---- reading ---------------------------------------------------------- */

/* keep_held: a RESULT with KEPT: the worker goes on referencing the shared
 * arguments of that JOB after answering it; hold the job (and so its
 * block) until the worker's RELEASE or its end. 0, PP_EPROTO (not a JOB it
 * holds, or not one sent in shared memory) or PP_ENOMEM. */
static int keep_held(pp__worker *w, const pp_frame_hdr *h) {
  pp_job *j = NULL;
  uv_mutex_lock(&w->peer.e->mu); /* inflight is [mu] */
  for (pp_job *k = w->peer.inflight.head; k; k = k->next)
    if (k->id == h->id && k->attempt == h->attempt) {
      j = k;
      break;
    }
  uv_mutex_unlock(&w->peer.e->mu); /* only this thread removes it */
  if (j == NULL || j->shm == NULL || j->shm != w->peer.shm)
    return PP_EPROTO;
  if (w->nheld == w->capheld) {
    size_t cap = w->capheld ? w->capheld * 2 : 8;
    struct held *g = realloc(w->held, cap * sizeof *g);
    if (g == NULL)
      return PP_ENOMEM;
    w->held = g;
    w->capheld = cap;
  }
  pp_job_ref(j);
  w->held[w->nheld++] = (struct held){j, h->id, h->attempt};
  return PP_OK;
}

/* release_held: the worker's RELEASE for (id, attempt): drop that hold.
 * 0, or -1 when it holds no such job (a protocol error). */
static int release_held(pp__worker *w, uint64_t id, uint32_t attempt) {
  for (size_t i = 0; i < w->nheld; i++)
    if (w->held[i].id == id && w->held[i].attempt == attempt) {
      pp_job_unref(w->held[i].j);
      w->held[i] = w->held[--w->nheld];
      return 0;
    }
  return -1;
}

/* on_result: a RESULT frame (its payload p in the read buffer). 1, or a
 * negative error. */
static int on_result(pp__worker *w, const pp_frame_hdr *h, const uint8_t *p,
                     const pp__credit *credit) {
  int rc;
  if ((h->flags & PP_RESF_KEPT) && (rc = keep_held(w, h)) < 0)
    return rc;
  return pp__peer_result(&w->peer, h, p, credit);
}

/* big_done: the large RESULT read into w->big is complete: the job gets
 * the block (or it is freed). 1, or a negative error. */
static int big_done(pp__worker *w, const pp__credit *credit) {
  pp_engine *e = w->peer.e;
  pp_frame_hdr h = w->big_hdr;
  uint8_t *blk = w->big;
  int rc = 1;
  w->big = NULL;
  if ((h.flags & PP_RESF_KEPT) && (rc = keep_held(w, &h)) < 0) {
    pp_shm_free(e->shm, w->big_off, h.length);
    return rc;
  }
  rc = pp__peer_result_in(&w->peer, &h, blk, credit, e->shm, w->big_off);
  if (rc < 0)
    pp_shm_free(e->shm, w->big_off, h.length);
  return rc;
}

/* process_frames: act on every complete frame in the read buffer (first
 * on a large result read into the arena, once all of it came). Returns
 * 0, or a negative error after which the worker must be killed. */
static int process_frames(pp__worker *w) {
  pp_engine *e = w->peer.e;
  pp_frame_hdr h;
  const uint8_t *p;
  int rc = 1;
  uint64_t nresults = 0;
  pp__credit credit = {&e->njobs, &e->time_ns, w->pid};
  if (w->big != NULL) {
    if (w->big_have < w->big_hdr.length)
      return PP_OK; /* more of it to come (nothing else is read meanwhile) */
    if ((rc = big_done(w, &credit)) > 0)
      nresults++;
  }
  while (rc >= 0 &&
         (rc = pp_frame_next(&w->peer.rbuf, e->max_frame, &h, &p)) == 1) {
    if (h.type == PP_MSG_HELLO) {
      if (w->forked && w->pid == 0 && h.length == 4 && pp_get_u32(p) > 0) {
        worker_named(w, (int)pp_get_u32(p)); /* before FORKED: credit it */
        credit.pid = w->pid;
      }
      w->hello = 1;
      e->spawn_fails = 0;
      e->early_deaths = 0;
      if (w->forked)
        e->tpl_failures = 0;
      handoff_update(w); /* submitting threads may write it from now on */
    } else if (h.type == PP_MSG_SHM) {
      /* the worker's answer to the arena we passed at its start */
      if (h.length != 4) {
        rc = PP_EPROTO;
        break;
      }
      if (pp_get_u32(p) == 1) {
        uv_mutex_lock(&e->mu); /* a hand-off reads it under mu */
        w->peer.shm = e->shm;
        uv_mutex_unlock(&e->mu);
        pp__log(e, PP_LOG_DEBUG, "worker pid %d mapped the shared memory",
                w->pid);
      } else
        pp__log(e, PP_LOG_WARNING, "worker pid %d could not map the shared "
                "memory; its buffers travel through the pipe", w->pid);
    } else if (h.type == PP_MSG_OBJ) {
      /* it no longer reads the arena block of an object (2.2) */
      if (h.length != PP_KEY_LEN || h.flags != 0 ||
          pp__peer_obj_done(&w->peer, p) != PP_OK) {
        rc = PP_EPROTO;
        break;
      }
    } else if (h.type == PP_MSG_RELEASE) {
      if (h.length != 0 || release_held(w, h.id, h.attempt) != 0) {
        rc = PP_EPROTO;
        break;
      }
    } else if (h.type == PP_MSG_RESULT) {
      if ((rc = on_result(w, &h, p, &credit)) < 0)
        break;
      nresults++;
    } else {
      rc = PP_EPROTO;
      break;
    }
    pp_buf_consume(&w->peer.rbuf, PP_FRAME_HDR + h.length);
  }
  if (nresults > 0) {
    clear_aborts(w);
    pp__want_dispatch(e);
  }
  if (rc < 0) {
    pp__log(e, PP_LOG_ERROR,
            "worker pid %d sent a malformed frame (%s); killing it", w->pid,
            pp_strerror(rc));
    w->broke = 1;
    return rc;
  }
  if (w->peer.restart && w->peer.ndispatched > 0 && w->peer.inflight.len == 0)
    w->retiring = 1; /* one job per process: a fresh one replaces it */
  if (w->retiring && w->peer.inflight.len == 0)
    send_bye(w);
  return PP_OK;
}

/* big_start: the read buffer begins a RESULT frame of BIG_MIN bytes or
 * more whose value the client will read from the arena: take an arena
 * block for its payload and move what came of it there, so the rest is
 * read straight into the block (no fresh buffer to fault in, no copy).
 * Nothing happens when the arena has no room (the frame is read into the
 * buffer as any other). */
static void big_start(pp__worker *w) {
  pp_engine *e = w->peer.e;
  pp_buf *b = &w->peer.rbuf;
  pp_frame_hdr h;
  size_t avail = pp_buf_avail(b);
  if (e->shm == NULL || avail < PP_FRAME_HDR ||
      pp_frame_decode_hdr(b->data + b->off, e->max_frame, &h) != PP_OK ||
      h.type != PP_MSG_RESULT || h.length < BIG_MIN ||
      PP_RES_STATUS(h.flags) > PP_RES_SERIAL)
    return;
  size_t have = avail - PP_FRAME_HDR;
  if (have >= h.length) /* all here already: process_frames takes it */
    return;
  uint64_t off;
  uint8_t *blk = pp_shm_alloc(e->shm, h.length, &off);
  if (blk == NULL)
    return;
  memcpy(blk, b->data + b->off + PP_FRAME_HDR, have);
  pp_buf_consume(b, avail);
  w->big_hdr = h;
  w->big = blk;
  w->big_off = off;
  w->big_have = have;
}

/* read_room: where the next bytes from the worker go: the rest of a large
 * result's block, or the read buffer (room for a whole large frame at
 * once). NULL length 0 when out of memory. */
static uv_buf_t read_room(pp__worker *w) {
  if (w->big == NULL)
    big_start(w);
  if (w->big != NULL)
    return uv_buf_init((char *)w->big + w->big_have,
                       (unsigned)(w->big_hdr.length - w->big_have));
  pp_buf *b = &w->peer.rbuf;
  size_t want = 65536;
  if (pp_buf_avail(b) >= PP_FRAME_HDR) {
    /* a large frame: room for all of it at once, instead of doubling (the
     * length is validated when the frame is cut, not trusted here beyond
     * the limit) */
    uint64_t flen = PP_FRAME_HDR + (uint64_t)pp_get_u32(b->data + b->off + 8);
    if (flen <= PP_FRAME_HDR + (uint64_t)w->peer.e->max_frame &&
        flen > pp_buf_avail(b) + want)
      want = (size_t)(flen - pp_buf_avail(b));
  }
  if (pp_buf_reserve(b, want) != PP_OK)
    return uv_buf_init(NULL, 0);
  return uv_buf_init((char *)b->data + b->len, (unsigned)(b->cap - b->len));
}

/* took: n bytes arrived where read_room said. */
static void took(pp__worker *w, size_t n) {
  if (w->big != NULL)
    w->big_have += n;
  else
    w->peer.rbuf.len += n;
}

/* on_alloc: libuv is about to read w's pipe: take the read lock (on_read,
 * which libuv calls after every on_alloc, releases it) and say where the
 * bytes go. When a waiting caller holds the lock, it is reading this pipe:
 * no room (libuv reports UV_ENOBUFS, which on_read ignores then; the poll
 * reports the pipe again while bytes are left), so the caller's unlock
 * never has a sleeping engine thread to wake. */
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  pp__worker *w = h->data;
  PP_UNUSED(hint);
  if (uv_mutex_trylock(&w->rd_mu) != 0) {
    w->rd_yielded = 1;
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  w->rd_engine = 1;
  *buf = read_room(w); /* length 0: libuv reports UV_ENOBUFS */
}

/* on_read: bytes from the worker's pipe. A malformed frame, EOF or a read
 * error kills the process; on_exit_cb does the rest. */
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  pp__worker *w = s->data;
  PP_UNUSED(buf);
  if (w->rd_yielded) { /* on_alloc left the pipe to a waiting caller */
    w->rd_yielded = 0;
    if (nread == UV_ENOBUFS)
      return;
  }
  if (nread > 0) {
    took(w, (size_t)nread);
    if (process_frames(w) != PP_OK) {
      uv_read_stop(s);
      worker_kill(w);
    }
  } else if (nread < 0) {
    /* EOF or error: the process is going; exit handling requeues its jobs */
    uv_read_stop(s);
    worker_kill(w);
  }
  if (w->rd_engine) {
    w->rd_engine = 0;
    uv_mutex_unlock(&w->rd_mu);
  }
}

static void drain_locked(pp__worker *w, uv_os_fd_t fd);

/* drain_pipe: read whatever the exited process left in the pipe, so a
 * result written just before exit is not mistaken for a crash. */
static void drain_pipe(pp__worker *w) {
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&w->pipe, &fd) != 0)
    return;
  /* (it is off the hand-off list already: taking the lock waits for a
   * caller still reading it) */
  uv_mutex_lock(&w->rd_mu);
  drain_locked(w, fd);
  uv_mutex_unlock(&w->rd_mu);
}

/* drain_locked: drain_pipe's reading, with the read lock held. */
static void drain_locked(pp__worker *w, uv_os_fd_t fd) {
  for (int rounds = 0; rounds < 100000; rounds++) {
    uv_buf_t room = read_room(w);
    if (room.len == 0)
      return;
    ssize_t n = read(fd, room.base, room.len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    took(w, (size_t)n);
    if (process_frames(w) != PP_OK)
      break;
  }
}

/* ---- results read by the waiting caller --------------------------------- */

/* holds: whether (h->id, h->attempt) is in flight on w. Takes mu. */
static int holds(pp__worker *w, const pp_frame_hdr *h) {
  int found = 0;
  uv_mutex_lock(&w->peer.e->mu);
  for (const pp_job *j = w->peer.inflight.head; j && !found; j = j->next)
    found = j->id == h->id && j->attempt == h->attempt;
  uv_mutex_unlock(&w->peer.e->mu);
  return found;
}

/* after_direct: n results were completed outside the engine thread's
 * reading (a waiting caller, the mailbox): count them, free the abort
 * slots of finished jobs, and say whether the engine thread has work now
 * (left: frames are left in the read buffer; jobs queued for the freed
 * worker; a retry; a worker leaving the hand-off list meanwhile). Takes
 * mu. */
static int after_direct(pp__worker *w, int n, int left) {
  pp_engine *e = w->peer.e;
  if (n > 0)
    clear_aborts(w);
  uv_mutex_lock(&e->mu);
  e->direct_results += (uint64_t)n;
  int wake = left || e->pending.len > 0 || !w->on_handoff ||
             atomic_load(&e->dispatch_wanted);
  uv_mutex_unlock(&e->mu);
  return wake;
}

/* wake_engine: after_direct said so: the engine thread runs
 * pp__pool_direct_done on its next turn. Any thread. */
static void wake_engine(pp_engine *e) {
  atomic_store(&e->direct_wake, 1);
  uv_async_send(&e->async);
}

/* direct_frames: complete the RESULT frames at the front of w's read
 * buffer that a caller may complete (a job w holds, no KEPT, all of it in
 * the buffer); stop at anything else, which stays for the engine thread.
 * Returns how many completed; *wake: the engine thread has work now (a
 * frame left, jobs queued for the freed worker, a retry, a worker leaving
 * the hand-off list meanwhile). Read lock held; takes mu. */
static int direct_frames(pp__worker *w, int *wake) {
  pp_engine *e = w->peer.e;
  pp__credit credit = {&e->njobs, &e->time_ns, w->pid};
  pp_frame_hdr h;
  const uint8_t *p;
  int n = 0;
  while (pp_frame_next(&w->peer.rbuf, e->max_frame, &h, &p) == 1 &&
         h.type == PP_MSG_RESULT && !(h.flags & PP_RESF_KEPT) &&
         holds(w, &h) && pp__peer_result(&w->peer, &h, p, &credit) > 0) {
    pp_buf_consume(&w->peer.rbuf, PP_FRAME_HDR + h.length);
    n++;
  }
  *wake = after_direct(w, n, pp_buf_avail(&w->peer.rbuf) > 0);
  return n;
}

int pp__pool_direct_read(pp_engine *e, pp_job *j) {
  pp__worker *w;
  uv_mutex_lock(&e->mu);
  for (w = e->handoff; w != NULL; w = w->hnext)
    if (w->peer.inflight.head == j)
      break;
  /* on the list (under mu) it is alive and open; holding its read lock,
   * it stays so (rd_barrier) */
  if (w == NULL || w->fd < 0 || uv_mutex_trylock(&w->rd_mu) != 0) {
    uv_mutex_unlock(&e->mu);
    return 0;
  }
  int fd = w->fd;
  uv_mutex_unlock(&e->mu);
  int n = 0, wake = 0;
  pp_buf *b = &w->peer.rbuf;
  /* only at a frame boundary, never into a large result (the engine reads
   * that into the arena): one read of what is there */
  if (w->big == NULL && pp_buf_avail(b) == 0 &&
      pp_buf_reserve(b, DIRECT_ROOM) == PP_OK) {
    ssize_t got;
    do
      got = recv(fd, b->data + b->len, b->cap - b->len, MSG_DONTWAIT);
    while (got < 0 && errno == EINTR);
    if (got > 0) { /* (EOF and errors are the engine thread's to see) */
      b->len += (size_t)got;
      n = direct_frames(w, &wake);
    }
  }
  uv_mutex_unlock(&w->rd_mu);
  if (wake)
    wake_engine(e);
  return n;
}

/* ---- the result mailbox (wstatus.h, protocol 4.1) ---- */

/* mb_take: the mailbox of w is FULL: copy the frame out, empty it, and
 * complete the result as the engine thread would. A frame that is not a
 * whole RESULT (without KEPT) marks the worker broken (the engine thread
 * kills it); a result of a job w no longer holds (requeued meanwhile) is
 * dropped. Returns 1 when a job completed. mb_mu held; any thread. */
static int mb_take(pp__worker *w) {
  pp_engine *e = w->peer.e;
  pp_wstatus *s = w->status;
  uint8_t frame[PP_WSTATUS_MB_MAX];
  uint32_t len = s->mb_len;
  if (len <= PP_WSTATUS_MB_MAX)
    memcpy(frame, s->mb_frame, len);
  atomic_store_explicit(&s->mb_state, PP_MB_EMPTY, memory_order_release);
  pp_frame_hdr h;
  int rc = 0;
  if (len < PP_FRAME_HDR || len > PP_WSTATUS_MB_MAX ||
      pp_frame_decode_hdr(frame, e->max_frame, &h) != PP_OK ||
      h.type != PP_MSG_RESULT || (h.flags & PP_RESF_KEPT) ||
      PP_FRAME_HDR + (size_t)h.length != len) {
    rc = -1;
  } else if (holds(w, &h)) {
    pp__credit credit = {&e->njobs, &e->time_ns, w->pid};
    rc = pp__peer_result(&w->peer, &h, frame + PP_FRAME_HDR, &credit);
  }
  if (rc < 0) {
    atomic_store(&w->mb_broke, 1);
    wake_engine(e);
    return 0;
  }
  if (after_direct(w, rc > 0, 0))
    wake_engine(e);
  return rc > 0;
}

/* mb_set: arm w's mailbox (EMPTY) for j. Caller holds mu and mb_mu. */
static void mb_set(pp__worker *w, const pp_job *j) {
  pp_wstatus *s = w->status;
  atomic_store_explicit(&s->mb_id, j->id, memory_order_relaxed);
  atomic_store_explicit(&s->mb_attempt, j->attempt, memory_order_relaxed);
  atomic_store_explicit(&s->mb_state, PP_MB_WAITING, memory_order_release);
}

pp__worker *pp__pool_mb_arm(pp_engine *e, pp_job *j) {
  pp__worker *w;
  uv_mutex_lock(&e->mu);
  for (w = e->handoff; w != NULL; w = w->hnext)
    if (w->peer.inflight.head == j)
      break;
  if (w == NULL || w->status == NULL || uv_mutex_trylock(&w->mb_mu) != 0) {
    uv_mutex_unlock(&e->mu);
    return NULL;
  }
  if (atomic_load(&w->status->mb_state) != PP_MB_EMPTY) {
    uv_mutex_unlock(&w->mb_mu); /* (left by a worker that stopped mid-way) */
    uv_mutex_unlock(&e->mu);
    return NULL;
  }
  mb_set(w, j);
  uv_mutex_unlock(&e->mu);
  return w;
}

int pp__pool_mb_poll(pp_engine *e, pp__worker *w, pp_job *j) {
  pp_wstatus *s = w->status;
  if (atomic_load_explicit(&s->mb_state, memory_order_acquire) != PP_MB_FULL)
    return 0;
  int n = mb_take(w);
  if (!pp_job_done(j)) { /* another job's result: wait on for j's */
    uv_mutex_lock(&e->mu);
    if (w->on_handoff && w->peer.inflight.head == j)
      mb_set(w, j);
    uv_mutex_unlock(&e->mu);
  }
  return n;
}

/* (how long a withdrawing caller waits for a mailbox the worker is
 * writing; after that the engine thread's tick empties it) */
#define MB_FINISH_NS 1000000u

void pp__pool_mb_disarm(pp_engine *e, pp__worker *w) {
  pp_wstatus *s = w->status;
  uint32_t st = PP_MB_WAITING;
  PP_UNUSED(e);
  if (!atomic_compare_exchange_strong(&s->mb_state, &st, PP_MB_EMPTY) &&
      st != PP_MB_EMPTY) {
    /* the worker took it: its frame is (about to be) there */
    uint64_t t0 = pp_now_ns();
    while ((st = atomic_load_explicit(&s->mb_state, memory_order_acquire)) ==
               PP_MB_WRITING &&
           pp_now_ns() - t0 < MB_FINISH_NS)
      sched_yield();
    if (st == PP_MB_FULL)
      mb_take(w);
  }
  uv_mutex_unlock(&w->mb_mu);
}

/* mb_collect: empty w's mailbox when it is FULL and no caller holds it (a
 * caller that gave up waiting while the worker was still writing, or the
 * worker's last result before it ended). Engine thread. */
static void mb_collect(pp__worker *w) {
  if (w->status == NULL ||
      atomic_load_explicit(&w->status->mb_state, memory_order_acquire) !=
          PP_MB_FULL ||
      uv_mutex_trylock(&w->mb_mu) != 0)
    return;
  if (atomic_load_explicit(&w->status->mb_state, memory_order_acquire) ==
      PP_MB_FULL)
    mb_take(w);
  uv_mutex_unlock(&w->mb_mu);
}

void pp__pool_direct_done(pp_engine *e) {
  for (pp__worker *w = e->workers; w; w = w->next) {
    if (!w->alive || uv_is_closing((uv_handle_t *)&w->pipe))
      continue;
    if (atomic_exchange(&w->mb_broke, 0)) {
      pp__log(e, PP_LOG_ERROR, "worker pid %d put a malformed result in its "
              "mailbox; killing it", w->pid);
      w->broke = 1;
      worker_kill(w);
      continue;
    }
    uv_mutex_lock(&w->rd_mu);
    w->rd_engine = 1;
    int rc = process_frames(w);
    w->rd_engine = 0;
    uv_mutex_unlock(&w->rd_mu);
    if (rc != PP_OK) {
      uv_read_stop((uv_stream_t *)&w->pipe);
      worker_kill(w);
    }
  }
}

/* ---- process lifetime ------------------------------------------------- */

static void describe_exit(char *out, size_t n, int64_t status, int sig) {
  if (sig)
    snprintf(out, n, "signal %d (%s)", sig, strsignal(sig));
  else
    snprintf(out, n, "exit status %lld", (long long)status);
}

/* running_job: the id of the job the worker was processing when it died:
 * from its status page, or — without one — the oldest in flight. 0 when
 * it was between jobs (its finished results may have been held back: they
 * run again, uncharged). */
static uint64_t running_job(const pp__worker *w) {
  if (!w->hello || w->peer.inflight.head == NULL)
    return 0;
  if (w->status == NULL || w->broke)
    return w->peer.inflight.head->id;
  uint64_t id = atomic_load_explicit(&w->status->job_id, memory_order_acquire);
  uint32_t att = atomic_load_explicit(&w->status->attempt, memory_order_relaxed);
  for (const pp_job *j = w->peer.inflight.head; j; j = j->next)
    if (j->id == id)
      return j->attempt == att ? id : 0;
  return 0;
}

/* worker_ended: the process ended (or, forked, was never made: cause says
 * why). Read its last results, requeue the rest (charging the job it was
 * running, unless it went down with its template: innocent), classify an
 * early death, close. */
static void worker_ended(pp__worker *w, int64_t status, int sig,
                         int innocent, const char *cause) {
  pp_engine *e = w->peer.e;
  char how[128];
  /* first of all no more hand-offs: from here on its in-flight list is
   * this thread's to requeue */
  w->killed = 1;
  handoff_update(w);
  if (!e->stopping) /* when stopping, its jobs were already failed */
    drain_pipe(w);
  if (!e->stopping && w->status != NULL) {
    /* and its mailbox: a result put there just before the end counts */
    uv_mutex_lock(&w->mb_mu);
    if (atomic_load(&w->status->mb_state) == PP_MB_FULL)
      mb_take(w);
    uv_mutex_unlock(&w->mb_mu);
  }
  w->alive = 0;
  if (w->listed)
    pids_remove(e, w->pid);
  w->listed = 0;
  if (cause != NULL)
    snprintf(how, sizeof how, "%s", cause);
  else
    describe_exit(how, sizeof how, status, sig);
  if (!e->stopping) {
    uint64_t running = innocent ? 0 : running_job(w);
    if (cause != NULL) {
      e->spawn_fails++;
    } else if (innocent && w->hello) {
      pp__log(e, PP_LOG_WARNING, "worker pid %d ended with the fork server "
              "(%s); its %zu jobs run again", w->pid, how,
              w->peer.inflight.len);
    } else if (!w->hello) {
      if (sig != 0) {
        /* killed from outside while starting: not the command's fault */
        e->early_deaths++;
        pp__log(e, PP_LOG_WARNING,
                "worker pid %d was killed by %s before it was ready; "
                "starting another", w->pid, how);
      } else {
        e->spawn_fails++;
        pp__log(e, PP_LOG_WARNING,
                "worker pid %d exited with %s before it was ready", w->pid,
                how);
      }
    } else if (running != 0 && w->stopping) {
      pp__log(e, PP_LOG_INFO, "worker pid %d (%s) was stopped with job %llu; "
              "starting a replacement", w->pid, how,
              (unsigned long long)running);
    } else if (running != 0) {
      pp__log(e, PP_LOG_WARNING,
              "worker pid %d died with %s while running job %llu; "
              "starting a replacement", w->pid, how,
              (unsigned long long)running);
    } else if (w->peer.inflight.len > 0) {
      pp__log(e, PP_LOG_WARNING,
              "worker pid %d died with %s between jobs; its %zu jobs run "
              "again", w->pid, how, w->peer.inflight.len);
    } else if (!w->retiring && !e->restart) {
      pp__log(e, PP_LOG_WARNING, "idle worker pid %d exited with %s", w->pid,
              how);
    }
    pp__peer_requeue(&w->peer, running, status, sig, how);
  }
  pp__peer_unlink(&w->peer);
  worker_close(w);
  pp__want_dispatch(e);
}

/* on_exit_cb: a spawned worker's process ended. */
static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  worker_ended(p->data, status, sig, 0, NULL);
}

/* send_shm: pass the engine's arena to a just started worker: one SHM
 * frame (u64 size) with a read-only descriptor of the memfd attached
 * (SCM_RIGHTS), written straight to the fresh socket before anything else
 * is queued on it. The worker maps it privately and answers SHM (4.2);
 * until then, and when this fails, its jobs' buffers go through the pipe. */
static void send_shm(pp__worker *w) {
  pp_shm *s = w->peer.e->shm;
  uv_os_fd_t sock;
  if (s == NULL || uv_fileno((uv_handle_t *)&w->pipe, &sock) != 0)
    return;
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", pp_shm_fd(s));
  int ro = open(path, O_RDONLY | O_CLOEXEC); /* the worker cannot write it */
  int fd = ro >= 0 ? ro : pp_shm_fd(s);
  uint8_t msg[PP_FRAME_HDR + 8];
  pp_frame_hdr h = {PP_PROTO_VERSION, PP_MSG_SHM, 0, 8, 0, 0};
  pp_frame_encode_hdr(msg, &h);
  pp_put_u64(msg + PP_FRAME_HDR, pp_shm_size(s));
  ssize_t n = pp_fd_send(sock, msg, sizeof msg, fd);
  if (ro >= 0)
    close(ro);
  if (n != (ssize_t)sizeof msg) {
    pp__log(w->peer.e, PP_LOG_WARNING,
            "cannot pass the shared memory to worker pid %d: %s", w->pid,
            n < 0 ? strerror(errno) : "short write");
    if (n > 0) /* part of a frame is on the stream: it is unusable */
      worker_kill(w);
  }
}

/* status_page: a shared page for a new worker, its descriptor in *fd (the
 * caller closes it once the child has it). NULL when unavailable: the
 * worker then runs without one (crashes are charged to the oldest job). */
static pp_wstatus *status_page(pp_engine *e, int *fd) {
  *fd = memfd_create("pp-worker-status", MFD_CLOEXEC);
  if (*fd < 0)
    return NULL;
  if (ftruncate(*fd, PP_WSTATUS_SIZE) != 0) {
    close(*fd);
    *fd = -1;
    return NULL;
  }
  void *m = mmap(NULL, PP_WSTATUS_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                 *fd, 0);
  if (m == MAP_FAILED) {
    close(*fd);
    *fd = -1;
    return NULL;
  }
  pp_wstatus *s = m;
  s->magic = PP_WSTATUS_MAGIC;
  s->version = PP_WSTATUS_VERSION;
  s->max_frame = e->max_frame;
  s->capture = e->capture_output ? 1 : 0;
  s->max_output = e->max_output;
  return s;
}

/* worker_new: a worker record with its status page (descriptor in *sfd,
 * -1 without one) and an initialised pipe handle, on e->workers. NULL when
 * out of memory. */
static pp__worker *worker_new(pp_engine *e, int *sfd) {
  pp__worker *w = calloc(1, sizeof *w);
  *sfd = -1;
  if (w == NULL)
    return NULL;
  if (uv_mutex_init(&w->rd_mu) != 0) {
    free(w);
    return NULL;
  }
  if (uv_mutex_init(&w->mb_mu) != 0) {
    uv_mutex_destroy(&w->rd_mu);
    free(w);
    return NULL;
  }
  pp__peer_init(&w->peer, e, &worker_ops, PP__PEER_LOCAL, 1);
  w->fd = -1;
  w->peer.strict = 1;
  w->peer.restart = e->restart;
  w->pidfd = -1;
  w->status = status_page(e, sfd);
  uv_pipe_init(e->loop, &w->pipe, 0);
  w->pipe.data = w;
  w->proc.data = w;
  w->open_handles = 1;
  w->next = e->workers;
  e->workers = w;
  return w;
}

/* worker_named: the pid of w is known: name it, list it. */
static void worker_named(pp__worker *w, int pid) {
  w->pid = pid;
  snprintf(w->peer.name, sizeof w->peer.name, "worker process (pid %d)",
           w->pid);
  w->peer.pid = w->pid;
  pids_add(w->peer.e, w->pid);
  w->listed = 1;
}

/* worker_go: a started worker (its socket open in w->pipe): pass it the
 * arena, make it a peer, read it. */
static void worker_go(pp__worker *w) {
  uv_os_fd_t fd;
  w->alive = 1;
  w->fd = uv_fileno((uv_handle_t *)&w->pipe, &fd) == 0 ? fd : -1;
  snprintf(w->peer.where, sizeof w->peer.where, "local");
  send_shm(w);
  pp__peer_link(&w->peer);
  uv_read_start((uv_stream_t *)&w->pipe, on_alloc, on_read);
}

/* fork_worker: a worker forked by the fork server: a socket pair whose
 * other end, with the status page, goes with the request. The worker is a
 * peer at once (its SHM frame and jobs wait in the socket until the child
 * reads them); its pid comes with FORKED (pool_forked). 0 or PP_ESPAWN /
 * PP_ENOMEM after logging. */
static int fork_worker(pp_engine *e) {
  int sfd, sv[2];
  pp__worker *w = worker_new(e, &sfd);
  if (w == NULL)
    return PP_ENOMEM;
  w->forked = 1;
  w->tag = ++e->tpl_tags;
  snprintf(w->peer.name, sizeof w->peer.name, "worker process (starting)");
  int rc = PP_ESPAWN;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    pp__log(e, PP_LOG_ERROR, "cannot start a worker: socketpair: %s",
            strerror(errno));
  } else if (uv_pipe_open(&w->pipe, sv[0]) != 0) {
    close(sv[0]);
    close(sv[1]);
  } else {
    rc = pp__tpl_fork(e, w->tag, sv[1], sfd, &w->tpl_gen);
    close(sv[1]);
  }
  if (sfd >= 0)
    close(sfd);
  if (rc != PP_OK) {
    e->spawn_fails++;
    worker_close(w);
    return PP_ESPAWN;
  }
  worker_go(w);
  return PP_OK;
}

/* find_forked: the live forked worker of template gen waiting for the
 * FORKED of that tag, or (tag 0) the one answered with that pid, or NULL. */
static pp__worker *find_forked(pp_engine *e, uint64_t gen, uint64_t tag,
                               int pid) {
  for (pp__worker *w = e->workers; w; w = w->next)
    if (w->forked && w->alive && w->tpl_gen == gen &&
        (tag ? !w->answered && w->tag == tag
             : w->answered && w->pid == pid))
      return w;
  return NULL;
}

/* pool_forked: tpl_ops->forked: a fork request was answered. */
static void pool_forked(pp_engine *e, uint64_t gen, uint64_t tag, int pid,
                        int pidfd, int err) {
  pp__worker *w = find_forked(e, gen, tag, 0);
  if (w == NULL) { /* nobody waits for it (cannot happen): end it */
    if (pidfd >= 0) {
#ifdef SYS_pidfd_send_signal
      if (syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0) != 0 &&
          errno != ESRCH)
#endif
        kill(pid, SIGKILL);
      close(pidfd);
    } else if (pid > 0) {
      kill(pid, SIGKILL);
    }
    return;
  }
  if (pid == 0) {
    char why[160];
    snprintf(why, sizeof why, "the fork server cannot fork a worker: %s",
             strerror(err));
    pp__log(e, PP_LOG_ERROR, "%s", why);
    worker_ended(w, 0, 0, 0, why);
    return;
  }
  w->answered = 1;
  w->pidfd = pidfd;
  if (w->pid == 0)
    worker_named(w, pid);
  else if (w->pid != pid) { /* its HELLO said otherwise: FORKED is right */
    pp__log(e, PP_LOG_WARNING, "worker pid %d said its pid was %d", pid,
            w->pid);
    pids_remove(e, w->pid);
    worker_named(w, pid);
  }
  pp__log(e, PP_LOG_DEBUG, "forked worker pid %d", pid);
  if (w->usr2_wanted)
    worker_signal(w, SIGUSR2);
  if (w->kill_wanted)
    worker_kill(w);
}

/* pool_exited: tpl_ops->exited: a forked worker ended. */
static void pool_exited(pp_engine *e, uint64_t gen, int pid, int64_t status,
                        int sig) {
  pp__worker *w = find_forked(e, gen, 0, pid);
  if (w != NULL)
    worker_ended(w, status, sig, 0, NULL);
}

/* pool_lost: tpl_ops->lost: template gen ended. Its children die with it
 * (PR_SET_PDEATHSIG; killed here too, to be sure): their jobs run again,
 * uncharged. Requests it never answered end as workers that exited before
 * they were ready, with the template's status. A template that dies
 * before any worker of its own was ready counts as a failure; after
 * MAX_TPL_FAILS in a row workers are spawned instead. */
static void pool_lost(pp_engine *e, uint64_t gen, int64_t status, int sig) {
  int any_ready = 0;
  for (pp__worker *w = e->workers; w; w = w->next) {
    if (!w->forked || w->tpl_gen != gen)
      continue;
    any_ready |= w->hello;
    if (!w->alive)
      continue;
    if (w->answered) {
      worker_kill(w);
      worker_ended(w, 0, SIGKILL, 1, NULL);
    } else {
      worker_ended(w, status, sig, 1, NULL);
    }
  }
  if (e->stopping || any_ready)
    return;
  if (++e->tpl_failures >= MAX_TPL_FAILS && !e->tpl_off) {
    pp__log(e, PP_LOG_WARNING, "the fork server failed %d times in a row; "
            "workers start as fresh interpreters from now on",
            e->tpl_failures);
    e->tpl_off = 1;
  }
}

static const pp__tpl_ops pool_tpl_ops = {pool_forked, pool_exited, pool_lost};

/* spawn_worker: a worker started as a fresh process (uv_spawn). 0 or
 * PP_ESPAWN / PP_ENOMEM after logging. */
static int spawn_worker(pp_engine *e) {
  uv_process_options_t o;
  uv_stdio_container_t io[5];
  int sfd;
  pp__worker *w = worker_new(e, &sfd);
  if (w == NULL)
    return PP_ENOMEM;
  w->open_handles = 2;

  memset(&o, 0, sizeof o);
  memset(io, 0, sizeof io);
  io[0].flags = UV_IGNORE;
  io[1].flags = UV_INHERIT_FD;
  io[1].data.fd = 1;
  io[2].flags = UV_INHERIT_FD;
  io[2].data.fd = 2;
  io[3].flags = UV_CREATE_PIPE | UV_READABLE_PIPE | UV_WRITABLE_PIPE;
  io[3].data.stream = (uv_stream_t *)&w->pipe;
  if (sfd >= 0) {
    io[4].flags = UV_INHERIT_FD;
    io[4].data.fd = sfd;
  } else {
    io[4].flags = UV_IGNORE;
  }
  o.file = e->argv[0];
  o.args = e->argv;
  o.env = e->env;
  o.cwd = e->cwd;
  o.exit_cb = on_exit_cb;
  o.stdio = io;
  o.stdio_count = 5;
  int rc = uv_spawn(e->loop, &w->proc, &o);
  if (sfd >= 0)
    close(sfd); /* the child has its copy; the mapping stays */
  if (rc != 0) {
    pp__log(e, PP_LOG_ERROR, "cannot start worker '%s': %s", e->argv[0],
            uv_strerror(rc));
    e->spawn_fails++;
    worker_close(w);
    return PP_ESPAWN;
  }
  worker_named(w, w->proc.pid);
  worker_go(w);
  pp__log(e, PP_LOG_DEBUG, "started worker pid %d", w->pid);
  return PP_OK;
}

/* start_worker: fork one from the template, or spawn one. */
static int start_worker(pp_engine *e) {
  return e->tpl_argv != NULL && !e->tpl_off ? fork_worker(e)
                                            : spawn_worker(e);
}

/* on_respawn_timer: the backoff is over: allow one start attempt. */
static void on_respawn_timer(uv_timer_t *t) {
  pp_engine *e = t->data;
  e->respawn_due = 1;
  pp__want_dispatch(e); /* the dispatcher adjusts the pool first */
}

int pp__pool_init(pp_engine *e) {
  e->tpl_ops = &pool_tpl_ops;
  int rc = uv_timer_init(e->loop, &e->respawn_timer);
  e->respawn_timer.data = e;
  return pp_err_from_uv(rc);
}

void pp__pool_adjust(pp_engine *e) {
  int live = pp__pool_live(e), target;
  if (e->stopping)
    return;
  uv_mutex_lock(&e->mu);
  target = e->target;
  uv_mutex_unlock(&e->mu);
  while (live < target) {
    int fails = e->spawn_fails + e->early_deaths;
    if (fails > 0 && !e->respawn_due) {
      /* workers are dying at start: back off instead of spinning. Only
       * workers that could not start at all fail the queued jobs. */
      if (e->spawn_fails >= PP__MAX_SPAWN_FAILS && live == 0) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "no worker process could be started (%d attempts in a row "
                 "failed; see the log)", e->spawn_fails);
        uv_mutex_lock(&e->mu);
        pp__fail_pending(e, PP_JOB_FAILED, msg);
        uv_mutex_unlock(&e->mu);
      }
      if (!uv_is_active((uv_handle_t *)&e->respawn_timer)) {
        int f = fails < BACKOFF_MAX_SHIFT ? fails : BACKOFF_MAX_SHIFT;
        uv_timer_start(&e->respawn_timer, on_respawn_timer,
                       (uint64_t)BACKOFF_FIRST_MS << (f - 1), 0);
      }
      break;
    }
    e->respawn_due = 0; /* one attempt per timer round */
    if (start_worker(e) != PP_OK)
      continue; /* spawn_fails is now > 0: the loop backs off */
    live++;
  }
  e->respawn_due = 0;
  while (live > target) {
    pp__worker *pick = NULL;
    uv_mutex_lock(&e->mu); /* in-flight lengths and the hand-off list */
    for (pp__worker *w = e->workers; w; w = w->next)
      if (w->alive && !w->retiring &&
          (pick == NULL || w->peer.inflight.len < pick->peer.inflight.len))
        pick = w;
    int idle = 0;
    if (pick != NULL) {
      pick->retiring = 1;
      handoff_off_locked(pick);
      idle = pick->peer.inflight.len == 0;
    }
    uv_mutex_unlock(&e->mu);
    if (pick == NULL)
      break;
    live--;
    if (idle)
      send_bye(pick);
  }
}

void pp__pool_stop(pp_engine *e) {
  for (pp__worker *w = e->workers; w; w = w->next) {
    if (w->alive) {
      uv_read_stop((uv_stream_t *)&w->pipe);
      worker_kill(w);
    }
  }
  pp__tpl_stop(e);
  uv_timer_stop(&e->respawn_timer);
  uv_close((uv_handle_t *)&e->respawn_timer, NULL);
}

void pp__pool_free(pp_engine *e) {
  while (e->workers) { /* all handles are closed once the loop ended */
    pp__worker *w = e->workers;
    e->workers = w->next;
    worker_free(w);
  }
  pp__tpl_free(e);
}
