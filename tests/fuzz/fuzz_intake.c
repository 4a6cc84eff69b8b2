/* fuzz_intake.c — fuzz target: the engine's intake of frames from a peer
 * (what pool.c's process_frames does with a worker's pipe, and node.c with
 * a node's opened frames): frames are cut with pp_frame_next and RESULTs go
 * through pp__peer_result, which completes in-flight jobs. The peer is a
 * fake with no process behind it (as in tests/c/test_sched.c); its jobs are
 * real. The input chooses a local worker (strict: results in order, no
 * LOST/FAILED) or a node, the jobs in flight (ids, attempts), the frame
 * limit and how the bytes arrive. Checks, besides memory safety and leaks:
 * a job completes at most once and only while in flight on this peer; a
 * protocol error stops the intake and requeues every job left in flight
 * (the transport's loss path); no job is lost (every job ends completed or
 * back in the queue).
 *
 * Input: [flags][njobs][attempt seed][limit][chunk][stream bytes...] */
#include "fuzz.h"

#include "engine_int.h"

#include <stdlib.h>

#define MAXJ 16

static int completions[MAXJ + 1];

static int f_ready(const pp__peer *p) {
  PP_UNUSED(p);
  return 1;
}
static int f_emit(pp__peer *p, uint8_t type, uint32_t flags, uint64_t id,
                  uint32_t attempt, const pp_part *parts, size_t nparts,
                  pp_job *job) {
  PP_UNUSED(p); PP_UNUSED(type); PP_UNUSED(flags); PP_UNUSED(id);
  PP_UNUSED(attempt); PP_UNUSED(parts); PP_UNUSED(nparts); PP_UNUSED(job);
  return PP_OK;
}
static int f_flush(pp__peer *p) {
  PP_UNUSED(p);
  return PP_OK;
}
static void f_drop(pp__peer *p, const char *why) {
  PP_UNUSED(p);
  PP_UNUSED(why);
}
static const pp__peer_ops fake_ops = {
    .ready = f_ready, .emit = f_emit, .flush = f_flush, .drop = f_drop};

/* on_complete: the engine's completion hook: count per job id. */
static void on_complete(void *ctx, pp_job *j) {
  PP_UNUSED(ctx);
  if (j->id == 0 || j->id > MAXJ || ++completions[j->id] > 1)
    __builtin_trap(); /* a job completed twice, or one we never made */
}

static const uint32_t limits[] = {8, 64, 4096, 1u << 20};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  PP_UNUSED(argc);
  PP_UNUSED(argv);
  pp_log_set_level(PP_LOG_ERROR + 100); /* quiet: errors are expected */
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static pp_engine *e;
  fz f = {data, size};
  uint8_t flags = fz_u8(&f);
  size_t njobs = fz_u8(&f) % (MAXJ + 1);
  uint8_t aseed = fz_u8(&f);
  uint32_t max_frame = limits[fz_u8(&f) % 4];
  size_t chunk = (size_t)fz_u8(&f) + 1;

  if (e == NULL) {
    LLVMFuzzerInitialize(NULL, NULL);
    e = calloc(1, sizeof *e);
    uv_mutex_init(&e->mu);
    uv_cond_init(&e->done_cond);
    uv_cond_init(&e->ev_cond);
    e->on_complete = on_complete;
  }
  e->max_retries = 2;
  e->max_frame = max_frame;
  memset(completions, 0, sizeof completions);

  pp__peer peer;
  pp__peer_init(&peer, e, &fake_ops, flags & 1 ? PP__PEER_REMOTE
                                               : PP__PEER_LOCAL, 1);
  peer.strict = !(flags & 1);
  snprintf(peer.name, sizeof peer.name, "fuzz peer");
  pp__peer_link(&peer);
  pp_func *fn = pp_func_new("fn", 2);
  if (fn == NULL)
    __builtin_trap();
  for (size_t i = 0; i < njobs; i++) {
    uint8_t *args = malloc(1);
    if (args == NULL)
      __builtin_trap();
    args[0] = 'a';
    pp_job *j = pp_job_new(fn, args, 1, 0, 0);
    if (j == NULL)
      __builtin_trap();
    j->id = i + 1;
    j->attempt = 1 + (uint32_t)((aseed >> (i % 8)) & 1);
    j->est_ns = 1000;
    atomic_store(&j->state, PP_JOB_RUNNING);
    e->running++;
    e->total_pending++;
    pp__peer_assign(&peer, j);
  }

  /* the stream, as process_frames reads it */
  int lost = 0;
  while (f.n > 0 && !lost) {
    size_t got;
    const uint8_t *p = fz_take(&f, chunk, &got);
    if (pp_buf_append(&peer.rbuf, p, got) != PP_OK)
      break;
    pp_frame_hdr h;
    const uint8_t *payload;
    pp__credit credit = {&e->njobs, &e->time_ns, 0};
    int rc;
    while ((rc = pp_frame_next(&peer.rbuf, e->max_frame, &h, &payload)) == 1) {
      if (h.type == PP_MSG_HELLO) {
        /* a worker's HELLO: nothing to check here */
      } else if (h.type == PP_MSG_RESULT) {
        size_t before = peer.inflight.len;
        rc = pp__peer_result(&peer, &h, payload, &credit);
        if (rc < 0)
          break;
        if ((rc == 1) != (peer.inflight.len + 1 == before))
          __builtin_trap(); /* a completion that did not leave the list */
      } else {
        rc = PP_EPROTO;
        break;
      }
      pp_buf_consume(&peer.rbuf, PP_FRAME_HDR + h.length);
    }
    if (rc < 0)
      lost = 1;
  }
  /* the end of the stream, or a protocol error: the peer is lost */
  pp__peer_requeue(&peer, 0, 0, 0, NULL);
  if (peer.inflight.len != 0 || peer.inflight_est_ns != 0)
    __builtin_trap();
  size_t back = 0, done = 0;
  pp_job *j;
  while ((j = pp_jobq_pop(&e->pending)) != NULL) {
    if (j->id == 0 || j->id > MAXJ || completions[j->id] != 0)
      __builtin_trap(); /* requeued after it completed */
    back++;
    e->total_pending--;
    pp_job_unref(j);
  }
  for (size_t i = 1; i <= MAXJ; i++)
    done += (size_t)completions[i];
  if (back + done != njobs)
    __builtin_trap(); /* a job was lost */
  e->running = 0;
  e->total_pending = 0;
  e->njobs = e->time_ns = 0;
  pp__peer_unlink(&peer);
  pp__peer_clear(&peer);
  pp_func_unref(fn);
  return 0;
}
