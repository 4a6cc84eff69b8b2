/* peer.c — what a local worker and a remote node share (see peer.h): the
 * pipelining rule, handing jobs over with their functions, completing jobs
 * from RESULT frames, requeueing a lost peer's jobs, and run-time
 * estimates. Engine thread only; the engine mutex is taken where noted. */
#include "engine_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- estimates ---------------------------------------------------------- */

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

static void holds_clear(pp__peer *p);

/* ---- the record ---------------------------------------------------------- */

void pp__peer_init(pp__peer *p, pp_engine *e, const pp__peer_ops *ops,
                   int tier, int slots) {
  memset(p, 0, sizeof *p);
  p->ops = ops;
  p->e = e;
  p->tier = tier;
  p->slots = slots > 0 ? slots : 1;
  pp_keyset_init(&p->known);
  pp_buf_init(&p->rbuf);
  p->obj_limit =
      e != NULL && e->obj_limit != 0 ? e->obj_limit : PP_OBJ_LIMIT_DEFAULT;
}

void pp__peer_clear(pp__peer *p) {
  pp__peer_objs_clear(p);
  holds_clear(p);
  pp_keyset_free(&p->known);
  pp_buf_free(&p->rbuf);
}

void pp__peer_link(pp__peer *p) {
  pp__peer **pp = &p->e->peers;
  if (p->tier != PP__PEER_LOCAL)
    while (*pp)
      pp = &(*pp)->pnext;
  p->pnext = *pp;
  *pp = p;
}

void pp__peer_unlink(pp__peer *p) {
  for (pp__peer **pp = &p->e->peers; *pp; pp = &(*pp)->pnext)
    if (*pp == p) {
      *pp = p->pnext;
      p->pnext = NULL;
      return;
    }
}

int pp__peer_can_take(const pp__peer *p) {
  if (!p->ops->ready(p))
    return 0;
  if (p->restart)
    return p->ndispatched == 0;
  if (p->tier == PP__PEER_REMOTE &&
      p->inflight.len >= PP__REMOTE_START_WINDOW + p->nreturned)
    return 0;
  uint64_t slots = (uint64_t)p->slots;
  if (p->inflight.len < slots)
    return 1;
  /* short jobs: keep a pipeline so the round trip is hidden */
  return p->inflight.len < slots * PP__PIPE_MAX_JOBS &&
         p->inflight_est_ns < PP__PIPE_BUDGET_NS * slots;
}

void pp__peer_assign(pp__peer *p, pp_job *j) {
  p->inflight_est_ns += j->est_ns;
  p->ndispatched++;
  pp_jobq_push_back(&p->inflight, j);
}

/* ---- objects put once (docs/protocol.md 2.2) ------------------------------
 * The peer decides what the other side holds: it keeps the list of the
 * objects it sent, least recently used first, and evicts (OBJ DROP) before
 * sending another that would not fit under obj_limit. The other side
 * handles frames in order, so a JOB always finds the objects it names. */

/* obj_find: p's entry for o (searched from the most recently used), or
 * NULL. */
static pp__objent *obj_find(const pp__peer *p, const pp_obj *o) {
  for (pp__objent *x = p->lru_tail; x; x = x->prev)
    if (x->o == o)
      return x;
  return NULL;
}

static void obj_unlink(pp__peer *p, pp__objent *x) {
  if (x->prev)
    x->prev->next = x->next;
  else
    p->lru_head = x->next;
  if (x->next)
    x->next->prev = x->prev;
  else
    p->lru_tail = x->prev;
  x->prev = x->next = NULL;
}

static void obj_push_tail(pp__peer *p, pp__objent *x) {
  x->prev = p->lru_tail;
  x->next = NULL;
  if (p->lru_tail)
    p->lru_tail->next = x;
  else
    p->lru_head = x;
  p->lru_tail = x;
}

/* obj_remove: forget x (no frame). */
static void obj_remove(pp__peer *p, pp__objent *x) {
  obj_unlink(p, x);
  p->nobjs--;
  p->obj_bytes -= x->o->len;
  pp_obj_unref(x->o);
  free(x);
}

void pp__peer_objs_clear(pp__peer *p) {
  while (p->lru_head)
    obj_remove(p, p->lru_head);
}

/* holds_clear: the other side is gone: nothing of the arena is read by it
 * any more. */
static void holds_clear(pp__peer *p) {
  pp__objent *x;
  while ((x = p->holds) != NULL) {
    p->holds = x->next;
    pp_obj_unref(x->o);
    free(x);
  }
}

int pp__peer_obj_done(pp__peer *p, const uint8_t *key) {
  for (pp__objent **pp = &p->holds; *pp; pp = &(*pp)->next)
    if (memcmp((*pp)->o->key, key, PP_KEY_LEN) == 0) {
      pp__objent *x = *pp;
      *pp = x->next;
      pp_obj_unref(x->o);
      free(x);
      return PP_OK;
    }
  return PP_EPROTO;
}

/* emit_drop: an OBJ DROP frame for key. */
static int emit_drop(pp__peer *p, const uint8_t *key) {
  pp_part part = {key, PP_KEY_LEN};
  atomic_fetch_add(&p->e->objs_dropped, 1);
  return p->ops->emit(p, PP_MSG_OBJ, PP_OBJF_DROP, 0, 0, &part, 1, NULL);
}

/* emit_obj: an OBJ frame carrying o (referenced, not copied, by a local
 * worker's write: j holds o), or naming its arena block when the other
 * side maps the arena (then p holds o until the other side's release). */
static int emit_obj(pp__peer *p, pp_obj *o, pp_job *j) {
  uint8_t desc[PP_SHM_DESC_LEN];
  pp_part parts[2] = {{o->key, PP_KEY_LEN}, {o->data, o->len}};
  uint32_t fl = o->flags & PP_OBJF_BUFS;
  pp__objent *hold = NULL;
  if (o->shm != NULL && o->shm == p->shm) {
    if ((hold = malloc(sizeof *hold)) == NULL)
      return PP_ENOMEM;
    pp_put_u64(desc, o->shm_off);
    pp_put_u64(desc + 8, o->len);
    parts[1] = (pp_part){desc, PP_SHM_DESC_LEN};
    fl |= PP_OBJF_SHM;
  }
  int rc = p->ops->emit(p, PP_MSG_OBJ, fl, 0, 0, parts, 2, j);
  if (rc != PP_OK) {
    free(hold);
    return rc;
  }
  if (hold != NULL) {
    pp_obj_ref(o);
    hold->o = o;
    hold->prev = NULL;
    hold->next = p->holds;
    p->holds = hold;
  }
  atomic_fetch_add(&p->e->objs_sent, 1);
  atomic_fetch_add(&p->e->obj_bytes_sent, o->len);
  return PP_OK;
}

/* job_names: whether j names o. */
static int job_names(const pp_job *j, const pp_obj *o) {
  for (uint32_t i = 0; i < j->nobjs; i++)
    if (j->objs[i] == o)
      return 1;
  return 0;
}

/* make_room: evict (OBJ DROP) the least recently used objects that j does
 * not name until `more` bytes and one more entry fit. 0, PP_ETOOBIG (they
 * cannot fit even so) or an emit error. */
static int make_room(pp__peer *p, const pp_job *j, uint64_t more,
                     uint32_t entries) {
  pp__objent *x = p->lru_head;
  while (x != NULL && (p->obj_bytes + more > p->obj_limit ||
                       p->nobjs + entries > PP_OBJS_MAX)) {
    pp__objent *nx = x->next;
    if (!job_names(j, x->o)) {
      int rc = emit_drop(p, x->o->key);
      if (rc != PP_OK)
        return rc;
      obj_remove(p, x);
    }
    x = nx;
  }
  return p->obj_bytes + more > p->obj_limit ? PP_ETOOBIG : PP_OK;
}

/* send_objs: make sure the other side has every object j names before its
 * JOB: the ones it has become the most recently used, the others are sent
 * (after evicting what must go). A released object is sent for j alone:
 * it goes to trans[] and is dropped right after the JOB. Returns 0,
 * PP_ETOOBIG (j's objects do not fit under p's limit at all) or an emit
 * error. */
static int send_objs(pp__peer *p, pp_job *j, pp_obj **trans,
                     uint32_t *ntrans) {
  uint64_t trans_bytes = 0;
  *ntrans = 0;
  if (j->objs_bytes > p->obj_limit)
    return PP_ETOOBIG;
  for (uint32_t i = 0; i < j->nobjs; i++) {
    pp__objent *x = obj_find(p, j->objs[i]);
    if (x != NULL) {
      obj_unlink(p, x);
      obj_push_tail(p, x);
    }
  }
  for (uint32_t i = 0; i < j->nobjs; i++) {
    pp_obj *o = j->objs[i];
    if (obj_find(p, o) != NULL)
      continue;
    int transient = atomic_load(&o->released) != 0;
    int rc = make_room(p, j, trans_bytes + o->len, transient ? 0 : 1);
    if (rc == PP_OK)
      rc = emit_obj(p, o, j);
    if (rc != PP_OK)
      return rc;
    if (transient) {
      trans[(*ntrans)++] = o;
      trans_bytes += o->len;
      continue;
    }
    pp__objent *x = malloc(sizeof *x);
    if (x == NULL)
      return PP_ENOMEM;
    pp_obj_ref(o);
    x->o = o;
    obj_push_tail(p, x);
    p->nobjs++;
    p->obj_bytes += o->len;
  }
  return PP_OK;
}

int pp__peer_forget(pp__peer *p, pp_obj *o) {
  pp__objent *x = obj_find(p, o);
  if (x == NULL)
    return 0;
  int rc = emit_drop(p, o->key);
  obj_remove(p, x);
  return rc == PP_OK ? 1 : rc;
}

/* fail_unfit: j names objects that p's other side cannot hold at all (a
 * node that announced a smaller object store): it fails here rather than
 * waiting forever. Engine thread, without the mutex. */
static void fail_unfit(pp__peer *p, pp_job *j) {
  pp_engine *e = p->e;
  char *msg = malloc(400);
  if (msg)
    snprintf(msg, 400,
             "job %llu names objects of %llu bytes, more than the object "
             "store of %s holds (%llu bytes)",
             (unsigned long long)j->id, (unsigned long long)j->objs_bytes,
             p->name, (unsigned long long)p->obj_limit);
  uv_mutex_lock(&e->mu);
  pp_jobq_remove(&p->inflight, j);
  p->inflight_est_ns -= j->est_ns;
  pp__complete(e, j, PP_JOB_FAILED, NULL, 0, msg);
  uv_mutex_unlock(&e->mu);
}

void pp__peer_start(pp__peer *p, pp_job *j) {
  pp_engine *e = p->e;
  atomic_store_explicit(&j->state, PP_JOB_RUNNING, memory_order_relaxed);
  j->attempt++;
  j->est_ns = pp__estimate(j);
  e->running++;
  pp__peer_assign(p, j);
}

void pp__peer_unstart(pp__peer *p, pp_job *j) {
  pp_engine *e = p->e;
  pp_jobq_remove(&p->inflight, j);
  p->inflight_est_ns -= j->est_ns;
  p->ndispatched--;
  if (e->running > 0)
    e->running--;
  j->attempt--;
  atomic_store_explicit(&j->state, PP_JOB_QUEUED, memory_order_relaxed);
}

/* ---- sending ------------------------------------------------------------- */

int pp__peer_emit(pp__peer *p, pp_job *first) {
  int rc = PP_OK;
  size_t unflushed = 0; /* argument bytes emitted since the last flush */
  pp_job *next;
  for (pp_job *j = first; j && rc == PP_OK; j = next) {
    next = j->next;
    pp_obj *trans[PP_JOB_OBJS_MAX];
    uint32_t ntrans = 0;
    if (j->nobjs > 0 && (rc = send_objs(p, j, trans, &ntrans)) == PP_ETOOBIG) {
      fail_unfit(p, j);
      rc = PP_OK;
      continue;
    }
    pp_func *f = j->func;
    if (rc == PP_OK && !pp_keyset_has(&p->known, f->key)) {
      uint32_t fl = 0;
      if (p->known.len >= PP__KEYSET_MAX) {
        pp_keyset_clear(&p->known);
        fl = PP_FUNCF_RESET;
      }
      pp_part fparts[2] = {{f->key, PP_KEY_LEN}, {f->blob, f->blob_len}};
      rc = pp_keyset_add(&p->known, f->key);
      if (rc == PP_OK)
        rc = p->ops->emit(p, PP_MSG_FUNC, fl, 0, 0, fparts, 2, j);
    }
    uint8_t lim[PP_LIMITS_LEN], desc[PP_SHM_DESC_LEN];
    uint32_t jf = j->flags & ~(PP_JOBF_LIMITS | PP_JOBF_OBJS);
    pp_part jparts[4] = {{f->key, PP_KEY_LEN},
                         {lim, 0},
                         {j->objs_part, 0},
                         {j->args, j->args_len}};
    if (j->nobjs > 0) {
      jparts[2].len = 8 + (size_t)j->nobjs * PP_KEY_LEN;
      jf |= PP_JOBF_OBJS;
    }
    if (j->shm != NULL && j->shm == p->shm) {
      /* the other side maps the arena: name the block, send no bytes */
      pp_put_u64(desc, j->shm_off);
      pp_put_u64(desc + 8, j->args_len);
      jparts[3] = (pp_part){desc, PP_SHM_DESC_LEN};
      jf |= PP_JOBF_SHM;
    }
    if (j->timeout_ns || j->mem_limit) {
      /* the node enforces them with its workers; a local worker applies
       * the memory limit (the engine itself watches the time) */
      pp_put_u64(lim, j->timeout_ns);
      pp_put_u64(lim + 8, j->mem_limit);
      jparts[1].len = PP_LIMITS_LEN;
      jf |= PP_JOBF_LIMITS;
    }
    if (rc == PP_OK)
      rc = p->ops->emit(p, PP_MSG_JOB, jf, j->id, j->attempt, jparts, 4, j);
    /* released objects were sent for this job alone */
    for (uint32_t i = 0; rc == PP_OK && i < ntrans; i++)
      rc = emit_drop(p, trans[i]->key);
    /* a long run of large jobs goes out as it is built: the first bytes
     * leave (and the other side starts working) before the last job of
     * the round is framed, and no round's frames pile up in one buffer */
    unflushed += j->args_len;
    if (rc == PP_OK && unflushed >= PP__FLUSH_BYTES && next != NULL) {
      rc = p->ops->flush(p);
      unflushed = 0;
    }
  }
  return rc;
}

int pp__peer_send(pp__peer *p, pp_job *first) {
  int rc = pp__peer_emit(p, first);
  if (rc == PP_OK)
    rc = p->ops->flush(p);
  if (rc != PP_OK) {
    char why[160];
    snprintf(why, sizeof why, "cannot send jobs: %s", pp_strerror(rc));
    /* the other side may have any prefix of it: it must learn every
     * function and object again */
    pp_keyset_clear(&p->known);
    pp__peer_objs_clear(p);
    p->ops->drop(p, why);
  }
  return rc;
}

/* ---- results ------------------------------------------------------------- */

/* find_inflight: the job dispatched as (id, attempt), searched from the
 * oldest (results come back nearly in order). NULL when unknown. */
static pp_job *find_inflight(pp__peer *p, uint64_t id, uint32_t attempt) {
  for (pp_job *j = p->inflight.head; j; j = j->next)
    if (j->id == id)
      return j->attempt == attempt ? j : NULL;
  return NULL;
}

int pp__peer_result(pp__peer *peer, const pp_frame_hdr *h,
                    const uint8_t *payload, const pp__credit *c) {
  return pp__peer_result_in(peer, h, (uint8_t *)payload, c, NULL, 0);
}

/* (payload is only written to, or kept, when in_shm is not NULL) */
int pp__peer_result_in(pp__peer *peer, const pp_frame_hdr *h,
                       uint8_t *payload, const pp__credit *c, pp_shm *in_shm,
                       uint64_t in_off) {
  pp_engine *e = peer->e;
  unsigned status = PP_RES_STATUS(h->flags);
  if (h->length < 8 || status > PP_RES_MAX ||
      (peer->strict && status > PP_RES_SERIAL && status != PP_RES_ABORTED))
    return PP_EPROTO;
  /* the in-flight list is [mu]: a submitting thread may add to it (direct
   * hand-off, pool.c); only this thread removes from it, so j stays */
  uv_mutex_lock(&e->mu);
  pp_job *j = find_inflight(peer, h->id, h->attempt);
  uv_mutex_unlock(&e->mu);
  if (j == NULL) {
    /* every job sent on a connection stays in flight on it until its
     * result: an unknown (id, attempt) is not late, it is made up */
    if (!peer->strict)
      pp__log(e, PP_LOG_WARNING,
              "%s sent a result for job %llu attempt %u, which it does not"
              " hold: closing the connection", peer->name,
              (unsigned long long)h->id, h->attempt);
    return PP_EPROTO;
  }
  size_t len = h->length - 8;
  const uint8_t *data = payload + 8;
  int jstatus = (int)status;
  uint8_t *out = NULL, *err = NULL;
  uint32_t out_len = 0, err_len = 0;
  if (h->flags & PP_RESF_OUTPUT) {
    /* the job's captured output comes first */
    if (len < 8)
      return PP_EPROTO;
    out_len = pp_get_u32(data);
    err_len = pp_get_u32(data + 4);
    if ((uint64_t)out_len + err_len > len - 8)
      return PP_EPROTO;
    out = out_len ? malloc(out_len) : NULL;
    err = err_len ? malloc(err_len) : NULL;
    if ((out_len && out == NULL) || (err_len && err == NULL)) {
      free(out);
      free(err);
      return PP_ENOMEM;
    }
    if (out_len)
      memcpy(out, data + 8, out_len);
    if (err_len)
      memcpy(err, data + 8 + out_len, err_len);
    data += 8 + (size_t)out_len + err_len;
    len -= 8 + (size_t)out_len + err_len;
  }
  uint8_t *copy = NULL;
  pp_shm *rshm = NULL;
  uint64_t rshm_off = 0;
  size_t rshm_len = 0; /* the block's length as allocated */
  char *msg = NULL;
  int exitstatus = -1, termsignal = 0;
  if (status == PP_RES_LOST || status == PP_RES_FAILED ||
      status == PP_RES_TIMEOUT || status == PP_RES_ABORTED) {
    /* the node's own engine gave up on the job, or stopped it */
    size_t skip = status == PP_RES_LOST ? 8 : 0;
    if (len < skip) {
      free(out);
      free(err);
      return PP_EPROTO;
    }
    if (status == PP_RES_LOST) {
      exitstatus = (int32_t)pp_get_u32(data);
      termsignal = (int32_t)pp_get_u32(data + 4);
    }
    size_t ml = len - skip > 400 ? 400 : len - skip;
    msg = malloc(ml + 300);
    if (msg == NULL) {
      free(out);
      free(err);
      return PP_ENOMEM;
    }
    if (status == PP_RES_TIMEOUT)
      /* say it with the client's job id, not the node's */
      snprintf(msg, ml + 300,
               "job %llu ran longer than its timeout of %.3f s and was "
               "stopped on %s", (unsigned long long)j->id,
               j->timeout_ns / 1e9, peer->name);
    else if (status == PP_RES_ABORTED)
      snprintf(msg, ml + 300, "job %llu was aborted on %s (%.*s)",
               (unsigned long long)j->id, peer->name, (int)ml,
               (const char *)data + skip);
    else
      snprintf(msg, ml + 300, "on %s: %.*s", peer->name, (int)ml,
               (const char *)data + skip);
    jstatus = status == PP_RES_LOST      ? PP_JOB_LOST
              : status == PP_RES_FAILED  ? PP_JOB_FAILED
              : status == PP_RES_TIMEOUT ? PP_JOB_TIMEOUT
                                         : PP_JOB_ABORTED;
  } else {
    if (h->flags & PP_RESF_BUFS) {
      /* out-of-band buffers: only a value has them; the table must add up
       * before anyone (the caller's unpickler) trusts it */
      pp_bufs_view *v = malloc(sizeof *v);
      int brc = v == NULL ? PP_ENOMEM
                : status != PP_RES_OK ? PP_EPROTO
                                      : pp_bufs_parse(data, len, v);
      free(v);
      if (brc != PP_OK) {
        free(out);
        free(err);
        return brc;
      }
    }
    if (in_shm != NULL) {
      /* read into the arena already (pool.c): the value stays there */
      copy = payload + (data - payload);
      rshm = in_shm;
      rshm_off = in_off;
      rshm_len = h->length;
    } else {
      /* a large value goes to the arena, whose pages stay warm: no page
       * faults on a fresh allocation for every result */
      if (len >= PP_SHM_MIN && e->shm != NULL &&
          (copy = pp_shm_alloc(e->shm, len, &rshm_off)) != NULL) {
        rshm = e->shm;
        rshm_len = len;
      } else {
        copy = malloc(len ? len : 1);
      }
      if (copy == NULL) {
        free(out);
        free(err);
        return PP_ENOMEM;
      }
      memcpy(copy, data, len);
    }
  }
  j->runtime_ns = pp_get_u64(payload);
  if (in_shm != NULL && rshm == NULL) /* a message: the block is not kept */
    pp_shm_free(in_shm, in_off, h->length);
  uv_mutex_lock(&e->mu);
  if (jstatus <= PP_JOB_SERIAL) /* estimates are read under mu (dispatch) */
    pp__observe(j->func, j->runtime_ns);
  pp_jobq_remove(&peer->inflight, j);
  peer->inflight_est_ns -= j->est_ns;
  peer->nreturned++;
  j->exitstatus = exitstatus;
  j->termsignal = termsignal;
  j->end_ns = pp_now_ns();
  j->worker_pid = peer->pid;
  snprintf(j->where, sizeof j->where, "%s", peer->where);
  free(j->out); /* an earlier run's (retries) */
  free(j->err);
  j->out = out;
  j->out_len = out_len;
  j->err = err;
  j->err_len = err_len;
  if (j->stop_reason != 0) {
    /* stopped: it ends so, whatever it managed to return */
    pp_job_free_result(copy, rshm_len, rshm, rshm_off);
    copy = NULL;
    rshm = NULL;
    free(msg);
    msg = pp__stop_message(j);
    jstatus = j->stop_reason;
  } else if (jstatus == PP_JOB_EXC && j->retries > 0) {
    /* its function raised: run it again (retries=) */
    j->retries--;
    j->avoid = peer; /* run it again elsewhere when there is room */
    pp_job_free_result(copy, rshm_len, rshm, rshm_off);
    atomic_store(&j->state, PP_JOB_QUEUED);
    if (e->running > 0)
      e->running--;
    pp_jobq_push_front(&e->pending, j);
    uv_mutex_unlock(&e->mu);
    pp__want_dispatch(e);
    return 1;
  }
  if (jstatus == PP_JOB_OK || jstatus == PP_JOB_EXC ||
      jstatus == PP_JOB_SERIAL) {
    if (c && c->njobs)
      (*c->njobs)++;
    if (c && c->time_ns)
      *c->time_ns += j->runtime_ns;
    if (c && c->pid > 0)
      for (int i = 0; i < e->npids; i++)
        if (e->pids[i] == c->pid) {
          e->pid_jobs[i]++;
          break;
        }
  }
  j->result_flags = copy ? (h->flags & PP_RESF_BUFS) : 0;
  j->rshm = rshm; /* where the result below lives (pp_job_unref frees it) */
  j->rshm_off = rshm_off;
  j->rshm_len = rshm_len;
  pp__complete(e, j, jstatus, copy, copy ? len : 0, msg);
  uv_mutex_unlock(&e->mu);
  return 1;
}

/* ---- loss ----------------------------------------------------------------- */

/* back_to_queue: j goes back to the front of the queue. Caller holds mu. */
static void back_to_queue(pp_engine *e, pp_job *j) {
  atomic_store(&j->state, PP_JOB_QUEUED);
  if (e->running > 0)
    e->running--;
  pp_jobq_push_front(&e->pending, j);
}

void pp__peer_requeue(pp__peer *p, uint64_t running_id, int64_t status,
                      int sig, const char *how) {
  pp_engine *e = p->e;
  pp_job *j;
  uv_mutex_lock(&e->mu);
  /* from the tail, each to the front: the queue keeps their order */
  while ((j = p->inflight.tail) != NULL) {
    pp_jobq_remove(&p->inflight, j);
    if (j->stop_reason != 0) { /* it was being stopped: that is how it ends */
      j->end_ns = pp_now_ns();
      j->worker_pid = p->pid;
      snprintf(j->where, sizeof j->where, "%s", p->where);
      pp__complete(e, j, j->stop_reason, NULL, 0, pp__stop_message(j));
      continue;
    }
    if (running_id == 0 || j->id != running_id) {
      back_to_queue(e, j);
      continue;
    }
    j->crashes++;
    j->exitstatus = (int)status;
    j->termsignal = sig;
    if (j->crashes > (uint32_t)e->max_retries) {
      char *msg = malloc(640);
      if (msg) {
        int k = snprintf(msg, 640,
                 "%.280s died with %.150s while running job %llu (%u attempts)",
                 p->name, how ? how : "an unknown cause",
                 (unsigned long long)j->id, j->attempt);
        if (j->mem_limit && k > 0 && k < 500)
          snprintf(msg + k, 640 - (size_t)k,
                   "; it ran with a memory limit of %llu bytes",
                   (unsigned long long)j->mem_limit);
      }
      pp__complete(e, j, PP_JOB_LOST, NULL, 0, msg);
    } else {
      back_to_queue(e, j);
    }
  }
  p->inflight_est_ns = 0;
  uv_mutex_unlock(&e->mu);
  pp_keyset_clear(&p->known);
  pp__peer_objs_clear(p);
  holds_clear(p); /* it is gone: it reads no block any more */
  pp_buf_free(&p->rbuf);
  pp__want_dispatch(e);
}

char *pp__stop_message(const pp_job *j) {
  char *m = malloc(200);
  if (m == NULL)
    return NULL;
  if (j->stop_reason == PP_JOB_TIMEOUT)
    snprintf(m, 200,
             "job %llu ran longer than its timeout of %.3f s and was stopped",
             (unsigned long long)j->id, j->timeout_ns / 1e9);
  else
    snprintf(m, 200, "job %llu was aborted", (unsigned long long)j->id);
  return m;
}

void pp__peer_stop_pending(pp__peer *p) {
  enum { MAX = 64 };
  pp_job *todo[MAX];
  int n = 0;
  pp_engine *e = p->e;
  uv_mutex_lock(&e->mu);
  for (pp_job *j = p->inflight.head; j && n < MAX; j = j->next)
    if (j->stop_reason != 0 && !j->stop_acted) {
      j->stop_acted = 1;
      j->stop_deadline_ns = pp_now_ns() + j->stop_grace_ns;
      pp_job_ref(j);
      todo[n++] = j;
    }
  uv_mutex_unlock(&e->mu);
  for (int i = 0; i < n; i++) {
    p->ops->stop(p, todo[i]);
    pp_job_unref(todo[i]);
  }
}

void pp__peer_fail_all(pp__peer *p, int status, const char *msg) {
  pp_job *j;
  while ((j = pp_jobq_pop(&p->inflight)) != NULL)
    pp__complete(p->e, j, status, NULL, 0, msg ? strdup(msg) : NULL);
  p->inflight_est_ns = 0;
}
