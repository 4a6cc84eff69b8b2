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

void pp__dispatch(pp_engine *e) {
  enum { MAXW = 1024 };
  pp__worker *ws[MAXW];
  pp_job *first[MAXW];
  int nw = 0;

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
  for (pp__worker *w = e->workers; w && nw < MAXW; w = w->next)
    if (pp__worker_can_take(w)) {
      ws[nw] = w;
      first[nw] = NULL;
      nw++;
    }
  int progress = nw > 0;
  while (progress && e->pending.head != NULL) {
    progress = 0;
    for (int i = 0; i < nw && e->pending.head != NULL; i++) {
      pp__worker *w = ws[i];
      if (!pp__worker_can_take(w))
        continue;
      pp_job *j = pp_jobq_pop(&e->pending);
      atomic_store_explicit(&j->state, PP_JOB_RUNNING, memory_order_relaxed);
      j->attempt++;
      j->est_ns = pp__estimate(j);
      e->running++;
      w->inflight_est_ns += j->est_ns;
      w->njobs++;
      pp_jobq_push_back(&w->inflight, j);
      if (first[i] == NULL)
        first[i] = j;
      progress = 1;
    }
  }
  uv_mutex_unlock(&e->mu);

  for (int i = 0; i < nw; i++)
    if (first[i] != NULL)
      pp__worker_send_jobs(ws[i], first[i]);
}
