/* test_sched.c — the scheduler and the peer layer with fake peers, no
 * processes and no sockets: jobs go out in FIFO order to peers with room
 * (local ones first), functions travel before their first job, and a send
 * that fails in the middle of a dispatch round (in emit or in flush) loses
 * no job and hands none out twice, the failed peer's jobs going back to the
 * queue and a new dispatch being asked for instead of run recursively.
 * Objects put once (docs/protocol.md 2.2) go before the first job naming
 * them, once per peer, least recently used out first under the peer's
 * bound, and released ones only for the jobs that still name them. */
#include "check.h"
#include "engine_int.h"

#include <stdlib.h>
#include <string.h>

enum { MAXJ = 2000, MAXLOG = 8192 };

typedef struct fake {
  pp__peer peer;
  int ready;
  int fail_flush;      /* next flush fails */
  int fail_emit_after; /* > 0: the emit after this many more fails */
  int dropped;
  int drops;
  /* frames emitted since the last flush, and those delivered */
  uint64_t staged[MAXLOG];
  int nstaged;
  uint64_t got[MAXLOG]; /* JOB ids, or 0 for a FUNC frame */
  int ngot;
  /* OBJ frames in emit order: 'S'end or 'D'rop, then the key's first byte */
  char objlog[256];
  int nobjlog;
} fake;

static int delivered[MAXJ + 1]; /* per job id: JOB frames that arrived */
static int completed[MAXJ + 1]; /* per job id: completions */
static int order_ok = 1;        /* a JOB's function arrived before it */

static int f_ready(const pp__peer *p) {
  const fake *f = (const fake *)p;
  return f->ready && !f->dropped;
}

static int f_emit(pp__peer *p, uint8_t type, uint32_t flags, uint64_t id,
                  uint32_t attempt, const pp_part *parts, size_t nparts,
                  pp_job *job) {
  fake *f = (fake *)p;
  PP_UNUSED(attempt);
  PP_UNUSED(nparts);
  PP_UNUSED(job);
  if (f->fail_emit_after > 0 && --f->fail_emit_after == 0)
    return PP_EIO;
  if (type == PP_MSG_OBJ) {
    if (f->nobjlog + 2 < (int)sizeof f->objlog) {
      f->objlog[f->nobjlog++] = (flags & PP_OBJF_DROP) ? 'D' : 'S';
      f->objlog[f->nobjlog++] = (char)((const uint8_t *)parts[0].p)[0];
    }
    return PP_OK;
  }
  if (type == PP_MSG_JOB && (flags & PP_JOBF_OBJS) && f->nobjlog + 1 <
      (int)sizeof f->objlog)
    f->objlog[f->nobjlog++] = 'J';
  if (f->nstaged < MAXLOG)
    f->staged[f->nstaged++] = type == PP_MSG_JOB ? id : 0;
  return PP_OK;
}

static int f_flush(pp__peer *p) {
  fake *f = (fake *)p;
  if (f->fail_flush) {
    f->fail_flush = 0;
    f->nstaged = 0; /* nothing of it arrives */
    return PP_EIO;
  }
  for (int i = 0; i < f->nstaged && f->ngot < MAXLOG; i++) {
    uint64_t id = f->staged[i];
    if (id != 0) {
      delivered[id]++;
      /* the function must have arrived on this connection before */
      int seen = 0;
      for (int k = 0; k < f->ngot; k++)
        seen |= f->got[k] == 0;
      order_ok &= seen;
    }
    f->got[f->ngot++] = id;
  }
  f->nstaged = 0;
  return PP_OK;
}

/* f_drop: like node.c's node_down, synchronously requeues (the harshest
 * case: it happens inside the dispatch round's send loop). */
static void f_drop(pp__peer *p, const char *why) {
  fake *f = (fake *)p;
  PP_UNUSED(why);
  f->dropped = 1;
  f->drops++;
  f->nstaged = 0;
  f->ngot = 0; /* a new connection starts without functions */
  pp__peer_requeue(p, 0, 0, 0, NULL);
}

static int stops_seen;

static void f_stop(pp__peer *p, pp_job *j) {
  PP_UNUSED(p);
  PP_UNUSED(j);
  stops_seen++;
}

static const pp__peer_ops fake_ops = {f_ready, f_emit, f_flush, f_drop,
                                      f_stop};

static void on_complete(void *ctx, pp_job *j) {
  PP_UNUSED(ctx);
  if (j->id <= MAXJ)
    completed[j->id]++;
}

static pp_engine *new_engine(void) {
  pp_engine *e = calloc(1, sizeof *e);
  uv_mutex_init(&e->mu);
  uv_cond_init(&e->done_cond);
  uv_cond_init(&e->ev_cond);
  e->on_complete = on_complete;
  e->max_retries = 2;
  memset(delivered, 0, sizeof delivered);
  memset(completed, 0, sizeof completed);
  order_ok = 1;
  return e;
}

static void free_engine(pp_engine *e) {
  pp_job *j;
  while ((j = pp_jobq_pop(&e->pending)) != NULL)
    pp_job_unref(j);
  uv_cond_destroy(&e->ev_cond);
  uv_cond_destroy(&e->done_cond);
  uv_mutex_destroy(&e->mu);
  free(e);
}

static void add_peer(pp_engine *e, fake *f, int tier, int slots) {
  memset(f, 0, sizeof *f);
  pp__peer_init(&f->peer, e, &fake_ops, tier, slots);
  f->ready = 1;
  pp__peer_link(&f->peer);
}

static void queue_jobs(pp_engine *e, pp_func *fn, int n) {
  for (int i = 0; i < n; i++) {
    uint8_t *args = malloc(4);
    memcpy(args, "args", 4);
    pp_job *j = pp_job_new(fn, args, 4, 0, 0);
    j->id = ++e->next_id;
    e->total_pending++;
    pp_jobq_push_back(&e->pending, j);
  }
}

/* dispatch: one round, as the engine's dispatcher runs it. */
static void dispatch(pp_engine *e) {
  e->dispatch_wanted = 0;
  uv_mutex_lock(&e->mu);
  pp__dispatch(e);
}

/* answer_all: every peer returns a result for each job it holds. */
static void answer_all(pp_engine *e) {
  for (pp__peer *p = e->peers; p; p = p->pnext) {
    pp_job *j;
    while ((j = p->inflight.head) != NULL) {
      uint8_t payload[8 + 2];
      pp_put_u64(payload, 100000); /* 100 us: short, pipelining kicks in */
      memcpy(payload + 8, "ok", 2);
      pp_frame_hdr h = {PP_PROTO_VERSION, PP_MSG_RESULT, PP_RES_OK,
                        sizeof payload, j->attempt, j->id};
      CHECK(pp__peer_result(p, &h, payload, NULL) == 1);
    }
  }
}

static int all_done_once(int n) {
  for (int i = 1; i <= n; i++)
    if (completed[i] != 1)
      return 0;
  return 1;
}

static int none_twice(int n) {
  for (int i = 1; i <= n; i++)
    if (delivered[i] > 1)
      return 0;
  return 1;
}

/* Round robin, local first, FIFO. */
static void test_order_and_local_first(void) {
  pp_engine *e = new_engine();
  pp_func *fn = pp_func_new("f", 1);
  fake remote, local;
  add_peer(e, &remote, PP__PEER_REMOTE, 1);
  add_peer(e, &local, PP__PEER_LOCAL, 1);
  CHECK(e->peers == &local.peer); /* local peers are tried first */
  queue_jobs(e, fn, 3);
  dispatch(e);
  /* unknown run time: one job per slot */
  CHECK(local.ngot == 2 && local.got[0] == 0 && local.got[1] == 1);
  CHECK(remote.ngot == 2 && remote.got[0] == 0 && remote.got[1] == 2);
  CHECK(e->pending.len == 1 && e->pending.head->id == 3);
  answer_all(e);
  dispatch(e);
  /* the function is known now: the next job goes without it */
  CHECK(local.ngot == 3 && local.got[2] == 3);
  answer_all(e);
  CHECK(all_done_once(3));
  CHECK(order_ok);
  pp__peer_unlink(&local.peer);
  pp__peer_unlink(&remote.peer);
  pp__peer_clear(&local.peer);
  pp__peer_clear(&remote.peer);
  pp_func_unref(fn);
  free_engine(e);
}

/* A flush that fails in the middle of a round (the middle peer of three),
 * with short jobs pipelined, then an emit that fails half-way through a
 * batch: every job is delivered once and completed once. */
static void test_failed_send_mid_round(void) {
  enum { N = 1500 };
  pp_engine *e = new_engine();
  pp_func *fn = pp_func_new("g", 1);
  fn->ema_ns = 1000; /* short: many jobs per peer in one round */
  fake f[3];
  for (int i = 0; i < 3; i++)
    add_peer(e, &f[i], PP__PEER_REMOTE, 2);
  queue_jobs(e, fn, N);
  f[1].fail_flush = 1;
  dispatch(e);
  CHECK(f[1].drops == 1);
  CHECK(f[1].peer.inflight.len == 0);      /* its jobs went back ... */
  CHECK(e->dispatch_wanted == 1);          /* ... and a dispatch was asked */
  CHECK(f[0].ngot > 2 && f[2].ngot > 2);   /* the others got theirs */
  CHECK(none_twice(N));
  /* the failed peer's jobs are at the front of the queue, in order */
  CHECK(e->pending.head != NULL && e->pending.head->attempt == 1);
  size_t held = f[0].peer.inflight.len + f[2].peer.inflight.len;
  CHECKF(held + e->pending.len == N, "held %zu + pending %zu", held,
         e->pending.len);
  /* the peer comes back (a reconnect); the next batch fails half-way */
  f[1].dropped = 0;
  f[2].fail_emit_after = 7;
  for (int round = 0; round < 200 && !all_done_once(N); round++) {
    answer_all(e);
    dispatch(e);
    f[2].dropped = 0;
  }
  answer_all(e);
  CHECK(f[2].drops == 1);
  CHECK(all_done_once(N));
  CHECK(none_twice(N));
  CHECK(order_ok); /* after each drop the function was sent again first */
  CHECK(e->running == 0 && e->pending.len == 0);
  for (int i = 0; i < 3; i++) {
    pp__peer_unlink(&f[i].peer);
    pp__peer_clear(&f[i].peer);
  }
  pp_func_unref(fn);
  free_engine(e);
}

/* A lost peer charges only the job it was running. */
static void test_requeue_charges_running_only(void) {
  pp_engine *e = new_engine();
  pp_func *fn = pp_func_new("h", 1);
  fn->ema_ns = 1000;
  fake f;
  add_peer(e, &f, PP__PEER_LOCAL, 1);
  queue_jobs(e, fn, 5);
  dispatch(e);
  CHECK(f.peer.inflight.len == 5);
  for (int crash = 1; crash <= 3; crash++) {
    pp__peer_requeue(&f.peer, 3, 0, 9, "signal 9");
    dispatch(e);
  }
  /* job 3 crashed 3 times > max_retries 2: lost; the others never charged */
  CHECK(completed[3] == 1);
  int others = 0;
  for (pp_job *j = f.peer.inflight.head; j; j = j->next)
    others += j->crashes == 0 && j->id != 3;
  CHECK(others == 4);
  answer_all(e);
  CHECK(all_done_once(5));
  pp__peer_unlink(&f.peer);
  pp__peer_clear(&f.peer);
  pp_func_unref(fn);
  free_engine(e);
}

/* obj: a 1000-byte object whose key starts with the byte c (a test
 * stand-in: peer.c only compares records and copies keys). */
static pp_obj *obj(char c) {
  uint8_t *d = malloc(1000);
  memset(d, c, 1000);
  pp_obj *o = pp_obj_new(d, 1000, 0);
  o->key[0] = (uint8_t)c;
  return o;
}

/* one_job: queue a job naming n objects, dispatch it to the only peer and
 * answer it. */
static void one_job(pp_engine *e, pp_func *fn, pp_obj *const *objs,
                    uint32_t n) {
  uint8_t *args = malloc(4);
  memcpy(args, "args", 4);
  pp_job *j = pp_job_new(fn, args, 4, 0, 0);
  CHECK(pp_job_set_objs(j, objs, n) == PP_OK);
  j->id = ++e->next_id;
  e->total_pending++;
  pp_jobq_push_back(&e->pending, j);
  dispatch(e);
  answer_all(e);
}

#define LOG_IS(f, want)                                                      \
  CHECKF((f).nobjlog == (int)strlen(want) &&                                 \
             memcmp((f).objlog, want, strlen(want)) == 0,                    \
         "object frames %.*s, want %s", (f).nobjlog, (f).objlog, want)

/* Objects: sent once, LRU eviction under the bound (never one the job
 * names), released ones sent for their job alone, a job that cannot fit
 * fails, and a lost peer starts empty. */
static void test_objects(void) {
  pp_engine *e = new_engine();
  e->obj_limit = 3000; /* three of them */
  pp_func *fn = pp_func_new("o", 1);
  fn->ema_ns = 1000;
  fake f;
  add_peer(e, &f, PP__PEER_LOCAL, 1);
  CHECK(f.peer.obj_limit == 3000);
  pp_obj *a = obj('a'), *b = obj('b'), *c = obj('c'), *d = obj('d');
  one_job(e, fn, &a, 1);
  one_job(e, fn, &a, 1); /* held: not sent again */
  one_job(e, fn, &b, 1);
  one_job(e, fn, &c, 1);
  LOG_IS(f, "SaJJSbJScJ");
  f.nobjlog = 0;
  one_job(e, fn, &a, 1); /* a becomes the most recently used */
  one_job(e, fn, &d, 1); /* so b, the least, goes */
  LOG_IS(f, "JDbSdJ");
  CHECK(f.peer.nobjs == 3 && f.peer.obj_bytes == 3000);
  f.nobjlog = 0;
  pp_obj *cb[2] = {c, b}; /* c is held, b comes back: a goes, not c */
  one_job(e, fn, cb, 2);
  LOG_IS(f, "DaSbJ");
  f.nobjlog = 0;
  /* released: dropped from the peer, still sent for a job naming it */
  atomic_store(&d->released, 1);
  CHECK(pp__peer_forget(&f.peer, d) == 1);
  CHECK(pp__peer_forget(&f.peer, d) == 0);
  one_job(e, fn, &d, 1);
  LOG_IS(f, "DdSdJDd");
  CHECK(f.peer.nobjs == 2 && f.peer.obj_bytes == 2000);
  /* four at once cannot fit in three: the job fails, the peer lives */
  pp_obj *all[4] = {a, b, c, d};
  uint64_t id = e->next_id + 1;
  one_job(e, fn, all, 4);
  CHECK(completed[id] == 1 && f.drops == 0);
  /* a lost peer holds nothing: everything is sent again */
  pp__peer_requeue(&f.peer, 0, 0, 0, NULL);
  CHECK(f.peer.nobjs == 0 && f.peer.obj_bytes == 0);
  f.nobjlog = 0;
  one_job(e, fn, &c, 1);
  LOG_IS(f, "ScJ");
  CHECK(all_done_once((int)e->next_id));
  pp__peer_unlink(&f.peer);
  pp__peer_clear(&f.peer);
  pp_obj_unref(a);
  pp_obj_unref(b);
  pp_obj_unref(c);
  pp_obj_unref(d);
  pp_func_unref(fn);
  free_engine(e);
}

int main(void) {
  test_objects();
  test_order_and_local_first();
  test_failed_send_mid_round();
  test_requeue_charges_running_only();
  return check_summary();
}
