/* sched.c — the dispatch policy: FIFO queue, round robin over workers with
 * room, and pipelining by estimated run time, so a stream of tiny jobs is
 * batched while long jobs go out one per worker. Engine thread only. */
#include "engine_int.h"

uint64_t pp__estimate(const pp_job *j) {
  /* Unknown functions count as long until their first result comes back. */
  uint64_t est = j->func->ema_ns ? j->func->ema_ns : PP__PIPE_BUDGET_NS;
  return est ? est : 1;
}

void pp__observe(pp_func *f, uint64_t runtime_ns) {
  if (runtime_ns == 0)
    runtime_ns = 1;
  if (f->ema_ns == 0)
    f->ema_ns = runtime_ns;
  else /* exponential moving average, weight 1/8 */
    f->ema_ns = f->ema_ns - f->ema_ns / 8 + runtime_ns / 8;
}

static int count_live(const pp_engine *e) {
  int n = 0;
  for (const pp__worker *w = e->workers; w; w = w->next)
    n += w->alive && !w->retiring;
  return n;
}

/* A place a job can go: a local worker or a remote node. */
typedef struct slot {
  pp__worker *w; /* exactly one of w, n */
  pp__node *n;
  pp_job *first; /* first job handed to it in this round */
} slot;

static int slot_can_take(const slot *s) {
  return s->w ? pp__worker_can_take(s->w) : pp__node_can_take(s->n);
}

static void slot_assign(slot *s, pp_job *j) {
  pp_jobq *q = s->w ? &s->w->inflight : &s->n->inflight;
  if (s->w) {
    s->w->inflight_est_ns += j->est_ns;
    s->w->njobs++;
  } else {
    s->n->inflight_est_ns += j->est_ns;
  }
  pp_jobq_push_back(q, j);
  if (s->first == NULL)
    s->first = j;
}

void pp__dispatch(pp_engine *e) {
  enum { MAXS = 1024 };
  slot ss[MAXS];
  int ns = 0;

  if (e->stopping)
    return;
  /* Apply a pool-size change made by another thread before handing out
   * work. The target is checked again under the lock that also guards the
   * queue: a job queued after set_nworkers() returned never sees the old
   * pool. */
  for (int tries = 0;; tries++) {
    pp__pool_adjust(e);
    uv_mutex_lock(&e->mu);
    if (count_live(e) <= e->target || tries >= 8)
      break; /* keep mu */
    uv_mutex_unlock(&e->mu);
  }
  /* local workers first, then remote nodes */
  for (pp__worker *w = e->workers; w && ns < MAXS; w = w->next)
    if (pp__worker_can_take(w))
      ss[ns++] = (slot){w, NULL, NULL};
  for (pp__node *n = e->nodes; n && ns < MAXS; n = n->next)
    if (pp__node_can_take(n))
      ss[ns++] = (slot){NULL, n, NULL};
  int progress = ns > 0;
  while (progress && e->pending.head != NULL) {
    progress = 0;
    for (int i = 0; i < ns && e->pending.head != NULL; i++) {
      if (!slot_can_take(&ss[i]))
        continue;
      pp_job *j = pp_jobq_pop(&e->pending);
      atomic_store_explicit(&j->state, PP_JOB_RUNNING, memory_order_relaxed);
      j->attempt++;
      j->est_ns = pp__estimate(j);
      e->running++;
      slot_assign(&ss[i], j);
      progress = 1;
    }
  }
  uv_mutex_unlock(&e->mu);

  for (int i = 0; i < ns; i++) {
    if (ss[i].first == NULL)
      continue;
    if (ss[i].w)
      pp__worker_send_jobs(ss[i].w, ss[i].first);
    else
      pp__node_send_jobs(ss[i].n, ss[i].first);
  }
}
