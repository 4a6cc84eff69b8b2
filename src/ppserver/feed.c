/* feed.c — ppserver feeding its engine: every client job becomes a ticket
 * queued on its connection; tickets go to the engine round-robin across
 * the connections that have jobs waiting, within each client's share of
 * the engine (docs/protocol.md 7.4); completed jobs come back through a
 * locked done list and go out as RESULT frames, one write per connection
 * per batch. Also starts the engine and its workers. See ppsrv_int.h for
 * the objects and threads. */
#include "ppsrv_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- small lists ------------------------------------------------------ */

/* tlist_push / tlist_remove / tlist_pop: a ticket list (queue or engine
 * list; a ticket is on at most one). */
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

/* ticket_free: drop our job reference and the ticket. */
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

/* ---- each client's share of the engine -------------------------------- */

/* The engine runs its queue in order, so a job waits behind everything
 * handed to the engine before it. To keep a newcomer's wait at about one
 * job, no client may have more jobs in the engine than its share: its fair
 * part of the workers, plus (for throughput) a pipeline of jobs whose
 * function was measured short, bounded in estimated time, not in count.
 * Estimates are per function and per connection; a function never measured
 * counts as long. A global average would not do: after many fast jobs it
 * lets a flood of slow ones in (a second client then waited 25 s behind
 * 1,000 sleep(0.1) jobs on two workers). */

/* fair_share: max(1, ceil(nworkers / connections with jobs)). */
static size_t fair_share(const srv *s) {
  size_t n = s->nactive ? s->nactive : 1;
  size_t share = (s->nworkers + n - 1) / n;
  return share ? share : 1;
}

/* uncap_all: the fair share may have grown: every connection held back by
 * its share gets another look. */
static void uncap_all(srv *s) {
  for (conn *c = s->conns; c; c = c->next)
    if (c->capped) {
      c->capped = 0;
      if (c->queued.len > 0 && !c->starved && c->state == C_READY)
        rr_add(s, c);
    }
}

/* update_active: recount c in s->nactive after its lists changed. */
static void update_active(conn *c) {
  srv *s = c->s;
  int active = c->queued.len + c->engine.len > 0;
  if (active == c->active)
    return;
  c->active = active;
  if (active) {
    s->nactive++;
  } else {
    s->nactive--;
    uncap_all(s);
  }
}

/* admit: whether c may hand t to the engine now; *est is the work t is
 * counted for (its function's estimate, or the pipeline budget of one
 * share slot when never measured). */
static int admit(const srv *s, conn *c, const ticket *t, uint64_t *est) {
  size_t share = fair_share(s);
  fslot *e = ppsrv__func_slot(c, t->job->func->key);
  uint64_t known = e ? e->est_ns : 0;
  *est = known ? known : PPSRV_PIPELINE_NS;
  if (c->engine.len < share)
    return 1;
  return known != 0 && c->engine.len < share * PPSRV_PIPELINE_MAX &&
         c->engine_est_ns + known <= (uint64_t)share * PPSRV_PIPELINE_NS;
}

/* learn: fold a finished job's run time into its function's estimate on c:
 * up quickly (half way to a longer run), down slowly (1/8 of the way), so
 * a function turning slow stops its pipeline at once. */
static void learn(conn *c, const pp_job *j) {
  if (j->status != PP_JOB_OK && j->status != PP_JOB_EXC &&
      j->status != PP_JOB_SERIAL)
    return;
  fslot *e = ppsrv__func_slot(c, j->func->key);
  if (e == NULL || e->f != j->func)
    return; /* forgotten (RESET) meanwhile */
  uint64_t rt = j->runtime_ns ? j->runtime_ns : 1;
  if (e->est_ns == 0)
    e->est_ns = rt;
  else if (rt > e->est_ns)
    e->est_ns = e->est_ns / 2 + rt / 2;
  else
    e->est_ns = e->est_ns - e->est_ns / 8 + rt / 8;
  if (e->est_ns == 0)
    e->est_ns = 1;
}

/* ---- tickets in and out ---------------------------------------------- */

int ppsrv__feed_job(conn *c, pp_func *f, pp_obj *const *objs, uint32_t nobjs,
                    uint32_t flags, uint64_t id,
                    uint32_t attempt, const uint8_t *args, size_t n,
                    const uint64_t limits[2]) {
  uint8_t *copy = NULL;
  ticket *t = calloc(1, sizeof *t);
  pp_job *j = NULL;
  pp_shm *shm = pp_engine_shm(c->s->engine);
  if (t != NULL && (flags & PP_JOBF_BUFS) && shm != NULL && n >= PP_SHM_MIN &&
      (j = pp_job_new_shm(f, shm, n, flags, 0)) != NULL)
    /* out-of-band buffers: into the arena, so the node's workers read
     * them in place as a client's local workers do */
    memcpy(j->args, args, n);
  else if (t != NULL && (copy = malloc(n ? n : 1)) != NULL) {
    if (n)
      memcpy(copy, args, n);
    j = pp_job_new(f, copy, n, flags, 0); /* owns copy on success */
  }
  if (j == NULL) {
    free(copy);
    free(t);
    return PP_ENOMEM;
  }
  if (pp_job_set_objs(j, objs, nobjs) != PP_OK) {
    pp_job_unref(j);
    free(t);
    return PP_ENOMEM;
  }
  j->timeout_ns = limits[0];
  j->mem_limit = limits[1];
  t->job = j;
  t->c = c;
  t->client_id = id;
  t->client_attempt = attempt;
  j->udata = t;
  tlist_push(&c->queued, t);
  c->queued_bytes += n;
  c->jobs_received++;
  update_active(c);
  if (!c->starved && !c->capped)
    rr_add(c->s, c);
  return PP_OK;
}

/* ppsrv__feed_stop (ppsrv_int.h): main thread; a queued ticket is answered
 * and freed here, one in the engine is aborted and ends through
 * drain_done like any other. */
void ppsrv__feed_stop(conn *c, uint64_t id, uint32_t attempt,
                      uint64_t grace_ns) {
  ticket *t;
  for (t = c->queued.head; t; t = t->next)
    if (t->client_id == id && t->client_attempt == attempt) {
      /* not in the engine yet: it ends here, reported as aborted */
      tlist_remove(&c->queued, t);
      c->queued_bytes -= t->job->args_len;
      update_active(c);
      static const char msg[] = "aborted before it started";
      uint8_t pre[8];
      pp_put_u64(pre, 0);
      pp_part parts[2] = {{pre, 8}, {msg, sizeof msg - 1}};
      ppsrv__conn_send(c, PP_MSG_RESULT, PP_RES_ABORTED, id, attempt, parts,
                       2);
      ticket_free(t);
      return;
    }
  for (t = c->engine.head; t; t = t->next)
    if (t->client_id == id && t->client_attempt == attempt) {
      if (c->s->engine != NULL)
        pp_engine_abort(c->s->engine, t->job, grace_ns);
      return;
    }
}

/* ppsrv__feed_detach (ppsrv_int.h): tickets in the engine stay alive,
 * detached (t->c = NULL), until their completion reaches drain_done. */
void ppsrv__feed_detach(conn *c) {
  srv *s = c->s;
  ticket *t;
  rr_remove(s, c);
  while ((t = tlist_pop(&c->queued)) != NULL)
    ticket_free(t);
  c->queued_bytes = 0;
  while ((t = tlist_pop(&c->engine)) != NULL) {
    t->c = NULL;
    /* The client is gone: its queued jobs are dropped and its running ones
     * stopped (as an abort with a short grace), so other clients never
     * wait behind a departed client's work. The completion hook moves the
     * ticket to the done list like any other. */
    if (s->engine != NULL)
      pp_engine_abort(s->engine, t->job, PPSRV_DEPARTED_GRACE_NS);
  }
  c->engine_est_ns = 0;
  c->capped = 0;
  update_active(c);
}

/* ---- the engine ------------------------------------------------------- */

/* on_job_complete: the engine's completion hook (pp_engine_opts). Main
 * thread (the engine runs on the server's loop), with the engine mutex
 * held: it must be quick and call no pp_engine_* function, so it moves the
 * ticket (still ours; j is borrowed) to the done list and asks the loop for
 * on_done_async (a wake-up of this same loop, no other thread). done_mu
 * stays: it costs nothing uncontended and keeps the hook safe should the
 * engine run on a thread of its own again. */
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

/* send_result: queue t's outcome to its client as a sealed RESULT (inside
 * a batch: written by ppsrv__flush_batch). The result bytes are copied; t
 * stays the caller's. A failure closes c. */
static void send_result(conn *c, ticket *t) {
  pp_job *j = t->job;
  uint8_t runtime[8], lens[8], lost[8];
  const char *msg = j->errmsg ? j->errmsg : "";
  uint32_t status;
  /* u64 runtime, [OUTPUT: u32 lens x2, stdout, stderr], [LOST: i32 exit
   * status, i32 signal], then the data or message (protocol 7.3) */
  pp_part parts[6] = {{runtime, 8}, {lens, 0}, {j->out, 0}, {j->err, 0},
                      {lost, 0}, {msg, strlen(msg)}};
  pp_put_u64(runtime, j->runtime_ns);
  switch (j->status) {
  case PP_JOB_OK:
  case PP_JOB_EXC:
  case PP_JOB_SERIAL:
    status = (uint32_t)j->status;
    /* a value with out-of-band buffers keeps its buffer section as is */
    status |= j->status == PP_JOB_OK ? (j->result_flags & PP_RESF_BUFS) : 0;
    parts[5] = (pp_part){j->result, j->result_len};
    break;
  case PP_JOB_LOST:
    status = PP_RES_LOST;
    pp_put_u64(runtime, 0);
    pp_put_u32(lost, (uint32_t)(int32_t)j->exitstatus);
    pp_put_u32(lost + 4, (uint32_t)(int32_t)j->termsignal);
    parts[4].len = 8;
    break;
  case PP_JOB_TIMEOUT:
    status = PP_RES_TIMEOUT;
    break;
  case PP_JOB_ABORTED:
    status = PP_RES_ABORTED;
    break;
  default: /* FAILED, DESTROYED, CANCELLED */
    status = PP_RES_FAILED;
    if (j->errmsg == NULL)
      msg = j->status == PP_JOB_CANCELLED ? "the job was cancelled on the node"
                                          : "the node could not run the job";
    pp_put_u64(runtime, 0);
    parts[5] = (pp_part){msg, strlen(msg)};
    break;
  }
  if (j->out_len || j->err_len) { /* the job's captured output */
    status |= PP_RESF_OUTPUT;
    pp_put_u32(lens, j->out_len);
    pp_put_u32(lens + 4, j->err_len);
    parts[1].len = 8;
    parts[2].len = j->out_len;
    parts[3].len = j->err_len;
  }
  ppsrv__conn_send(c, PP_MSG_RESULT, status, t->client_id, t->client_attempt,
                   parts, 6);
}

/* ppsrv__drain_done (ppsrv_int.h): takes the whole done list under
 * done_mu, then works without the lock; learns run times, frees each
 * ticket. Main thread (on_done_async, or at stop). */
void ppsrv__drain_done(srv *s) {
  uv_mutex_lock(&s->done_mu);
  ticket *t = s->done_head;
  s->done_head = s->done_tail = NULL;
  uv_mutex_unlock(&s->done_mu);
  s->batching = 1;
  while (t != NULL) {
    ticket *next = t->dnext;
    conn *c = t->c;
    s->in_engine--;
    if (c != NULL) {
      tlist_remove(&c->engine, t);
      c->engine_est_ns -= t->est_ns;
      c->jobs_done++;
      s->jobs_done++;
      learn(c, t->job);
      if (c->capped) { /* room in its share again */
        c->capped = 0;
        if (c->queued.len > 0 && !c->starved)
          rr_add(s, c);
      }
      update_active(c);
      if (c->state == C_READY)
        send_result(c, t);
    }
    ticket_free(t);
    t = next;
  }
  ppsrv__flush_batch(s);
  ppsrv__feed(s); /* resumes connections whose queue drained */
}

/* engine_cap: how many jobs to keep inside the engine in all: every
 * worker's pipeline full (the clients' shares bound it first). */
static size_t engine_cap(const srv *s) {
  return s->nworkers * PPSRV_PIPELINE_MAX;
}

/* on_done_async: the async handle's callback: the engine completed jobs
 * (on_job_complete woke us). Main thread. */
static void on_done_async(uv_async_t *a) { ppsrv__drain_done(a->data); }

/* ppsrv__feed (ppsrv_int.h): keeps at most engine_cap() jobs inside it,
 * and no more of one client's than admit() allows; a client at its share
 * leaves the round robin (capped) until one of its jobs completes or the
 * share grows. */
void ppsrv__feed(srv *s) {
  if (s->stopping || s->engine == NULL)
    return;
  size_t cap = engine_cap(s);
  while (s->in_engine < cap && s->rr_head != NULL) {
    conn *c = s->rr_head;
    rr_remove(s, c);
    if (ppsrv__conn_backlogged(c, 1)) {
      /* it is not reading its results: run nothing more for it until its
       * writes drain (on_write puts it back) */
      if (!c->starved)
        c->write_ms = uv_now(&s->loop);
      c->starved = 1;
      continue;
    }
    ticket *t = c->queued.head;
    uint64_t est;
    if (t == NULL)
      continue;
    if (!admit(s, c, t, &est)) {
      c->capped = 1;
      continue;
    }
    c->capped = 0;
    tlist_remove(&c->queued, t);
    c->queued_bytes -= t->job->args_len;
    if (c->queued.len > 0)
      rr_add(s, c); /* back of the line */
    if (pp_engine_submit(s->engine, t->job) != PP_OK) {
      ticket_free(t); /* shutting down: nobody will answer it */
      update_active(c);
      continue;
    }
    t->in_engine = 1;
    t->est_ns = est;
    tlist_push(&c->engine, t);
    c->engine_est_ns += est;
    s->in_engine++;
    ppsrv__conn_maybe_resume(c);
  }
}

/* ppsrv__feed_write_progress (ppsrv_int.h). Main thread, from on_write. */
void ppsrv__feed_write_progress(conn *c) {
  if (c->starved && !ppsrv__conn_backlogged(c, 2)) {
    c->starved = 0;
    if (c->queued.len > 0 && !c->capped) {
      rr_add(c->s, c);
      ppsrv__feed(c->s);
    }
  }
}

/* ppsrv__feed_init (ppsrv_int.h). */
void ppsrv__feed_init(srv *s) {
  uv_async_init(&s->loop, &s->done_async, on_done_async);
  s->done_async.data = s;
}

/* ---- start-up --------------------------------------------------------- */

int ppsrv__start_engine(srv *s) {
  const ppsrv_config *cfg = s->cfg;
  ppsrv_wcmd w;
  if (ppsrv__wcmd_init(&w, cfg) != PP_OK)
    return -1;
  pp_engine_opts o;
  memset(&o, 0, sizeof o);
  o.worker_argv = w.argv; /* copied by the engine, like env */
  o.template_argv = w.tboot ? w.targv : NULL;
  o.worker_env = w.env;
  o.nworkers = cfg->nworkers;
  o.restart = cfg->restart;
  o.max_retries = 2;
  o.max_frame = cfg->max_frame;
  o.obj_limit = cfg->obj_limit;
  o.capture_output = 1; /* a job's output goes back to its client */
  o.on_complete = on_job_complete;
  o.on_complete_ctx = s;
  /* one loop for the connections and the engine: a job goes from its
   * client's socket to a worker (handed off by pp_engine_submit) and its
   * result back to the socket without crossing a thread */
  o.loop = &s->loop;
  int rc = pp_engine_new(&o, &s->engine);
  ppsrv__wcmd_free(&w);
  if (rc != PP_OK) {
    pp_log(PP_LOG_ERROR, "cannot start the engine: %s", pp_strerror(rc));
    s->engine = NULL;
    return -1;
  }
  return 0;
}
