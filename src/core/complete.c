/* complete.c — the bottom of the engine's layers: finishing a job (status,
 * result, statistics, waking waiters, the callback queue and the embedder's
 * completion hook) and logging through the engine. Every layer above may
 * call these; they call nothing above them. */
#include "engine_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pp__log(pp_engine *e, int level, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  if (!pp_log_enabled(level) && !e->queue_logs)
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (!e->queue_logs) {
    pp_log(level, "%s", msg);
    return;
  }
  uv_mutex_lock(&e->mu);
  if (e->logq_len >= PP__LOGQ_MAX) {
    e->logq_dropped++;
  } else {
    pp__logline *l = malloc(sizeof *l);
    char *m = strdup(msg);
    if (l && m) {
      l->next = NULL;
      l->level = level;
      l->msg = m;
      if (e->logq_tail)
        e->logq_tail->next = l;
      else
        e->logq_head = l;
      e->logq_tail = l;
      e->logq_len++;
      uv_cond_signal(&e->ev_cond);
    } else {
      free(l);
      free(m);
      e->logq_dropped++;
    }
  }
  uv_mutex_unlock(&e->mu);
}

void pp__group_finished(pp_engine *e, pp_job *j) {
  if (j->group < e->ngroups && e->group_pending[j->group] > 0)
    e->group_pending[j->group]--;
  if (e->total_pending > 0)
    e->total_pending--;
}

void pp__complete(pp_engine *e, pp_job *j, int status, uint8_t *result,
                  size_t len, char *errmsg) {
  int prev = atomic_load_explicit(&j->state, memory_order_relaxed);
  if (prev == PP_JOB_RUNNING && e->running > 0)
    e->running--;
  j->status = status;
  j->result = result;
  j->result_len = len;
  j->errmsg = errmsg;
  atomic_store_explicit(&j->state, PP_JOB_DONE, memory_order_release);
  e->generation++;
  if (e->on_complete != NULL)
    e->on_complete(e->on_complete_ctx, j);
  if (j->want_callback) {
    /* the engine's reference moves to the event queue */
    pp_jobq_push_back(&e->evq, j);
    uv_cond_signal(&e->ev_cond);
  } else {
    pp__group_finished(e, j);
    pp_job_unref(j);
  }
  if (e->waiters > 0)
    uv_cond_broadcast(&e->done_cond);
}

void pp__fail_pending(pp_engine *e, int status, const char *msg) {
  pp_job *j;
  while ((j = pp_jobq_pop(&e->pending)) != NULL)
    pp__complete(e, j, status, NULL, 0, msg ? strdup(msg) : NULL);
}
