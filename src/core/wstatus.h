/* wstatus.h — the worker status page: one page of shared memory per local
 * worker process (a memfd the engine passes to the worker as file
 * descriptor 4), through which the worker says which job it is processing
 * and the engine tells the worker its limits, without a system call on
 * either side. Results are batched in the worker, so a crash can leave
 * finished jobs unreported: the page is how the engine charges a death to
 * the job that was running and requeues the others uncharged.
 * docs/protocol.md section 4.1 is the normative layout. Pure definitions,
 * no Python.h: the engine and the worker (src/ext/worker.c) both use it. */
#ifndef PP_WSTATUS_H
#define PP_WSTATUS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PP_WSTATUS_FD 4
#define PP_WSTATUS_SIZE 4096u
#define PP_WSTATUS_MAGIC 0x74737070u /* "ppst" */
#define PP_WSTATUS_VERSION 2u
#define PP_WSTATUS_NABORT 16u /* jobs one worker can be told to abort at once */
#define PP_WSTATUS_MB_MAX 3072u /* bytes of the one frame the mailbox holds */

/* The result mailbox's states (mb_state, protocol 4.1). */
enum {
  PP_MB_EMPTY = 0,   /* nobody waits */
  PP_MB_WAITING = 1, /* a caller spins for (mb_id, mb_attempt); it may
                        withdraw (WAITING -> EMPTY) */
  PP_MB_WRITING = 2, /* the worker took it (WAITING -> WRITING) */
  PP_MB_FULL = 3     /* mb_frame holds that job's RESULT frame, mb_len
                        bytes; the caller empties it */
};

typedef struct pp_wstatus {
  /* written by the engine before the worker starts, read-only after */
  uint32_t magic;     /* PP_WSTATUS_MAGIC */
  uint32_t version;   /* PP_WSTATUS_VERSION */
  uint32_t max_frame; /* payload limit of the frames the worker may send */
  uint32_t reserved;
  /* written by the worker, read by the engine at any time */
  _Atomic uint64_t job_id;     /* job being processed; 0 = between jobs */
  _Atomic uint32_t attempt;    /* its attempt number */
  uint32_t reserved2;
  _Atomic uint64_t started_ns; /* CLOCK_MONOTONIC when it started */
  _Atomic uint64_t njobs;      /* jobs the worker has started so far */
  /* written by the engine: jobs to abort (0 = free slot). The worker skips
   * such a job when it reaches it, and turns SIGUSR2 into KeyboardInterrupt
   * inside it while it runs. */
  _Atomic uint64_t abort_ids[PP_WSTATUS_NABORT];
  /* written by the engine before the worker starts: */
  uint32_t capture;    /* 1: capture each job's fd 1 and 2 (and sys.std*) */
  uint32_t max_output; /* bytes kept per stream and job */
  /* the result mailbox: a caller waiting for a job on this worker (the
   * engine's side, any thread) arms it; the worker then puts that job's
   * RESULT frame here instead of in its pipe, so the result reaches the
   * caller without a system call or the engine thread (protocol 4.1) */
  _Atomic uint32_t mb_state; /* PP_MB_* */
  uint32_t mb_len;           /* FULL: bytes of mb_frame */
  _Atomic uint64_t mb_id;    /* WAITING: the job (set before WAITING) */
  _Atomic uint32_t mb_attempt;
  uint32_t reserved3;
  uint8_t mb_frame[PP_WSTATUS_MB_MAX];
} pp_wstatus;

_Static_assert(sizeof(pp_wstatus) <= PP_WSTATUS_SIZE,
               "the status page is one page");

/* pp_wstatus_aborting: whether id is on the abort list. Any side; also
 * from a signal handler (lock-free atomics only). */
static inline int pp_wstatus_aborting(pp_wstatus *s, uint64_t id) {
  if (s == NULL || id == 0)
    return 0;
  for (unsigned i = 0; i < PP_WSTATUS_NABORT; i++)
    if (atomic_load_explicit(&s->abort_ids[i], memory_order_acquire) == id)
      return 1;
  return 0;
}

/* pp_wstatus_begin: the worker starts processing (id, attempt): called
 * before the arguments are unpickled. Worker's main thread. */
static inline void pp_wstatus_begin(pp_wstatus *s, uint64_t id,
                                    uint32_t attempt, uint64_t now_ns) {
  if (s == NULL)
    return;
  atomic_store_explicit(&s->attempt, attempt, memory_order_relaxed);
  atomic_store_explicit(&s->started_ns, now_ns, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->njobs, 1, memory_order_relaxed);
  atomic_store_explicit(&s->job_id, id, memory_order_release);
}

/* pp_wstatus_post: the worker's side of the mailbox: when a caller waits
 * for (id, attempt) and the frame (len bytes) fits, put it there and
 * return 1 (the frame must then not be sent on the pipe); else 0. Worker's
 * main thread. */
static inline int pp_wstatus_post(pp_wstatus *s, uint64_t id,
                                  uint32_t attempt, const uint8_t *frame,
                                  size_t len) {
  uint32_t want = PP_MB_WAITING;
  if (s == NULL || len > PP_WSTATUS_MB_MAX ||
      atomic_load_explicit(&s->mb_state, memory_order_acquire) != want ||
      atomic_load_explicit(&s->mb_id, memory_order_relaxed) != id ||
      atomic_load_explicit(&s->mb_attempt, memory_order_relaxed) != attempt ||
      !atomic_compare_exchange_strong_explicit(&s->mb_state, &want,
                                               PP_MB_WRITING,
                                               memory_order_acq_rel,
                                               memory_order_acquire))
    return 0;
  /* (the caller set id and attempt before WAITING and cannot change them
   * until it withdraws, which the exchange just ruled out) */
  memcpy(s->mb_frame, frame, len);
  s->mb_len = (uint32_t)len;
  atomic_store_explicit(&s->mb_state, PP_MB_FULL, memory_order_release);
  return 1;
}

/* pp_wstatus_end: the job's result is encoded (queued for writing). */
static inline void pp_wstatus_end(pp_wstatus *s) {
  if (s != NULL)
    atomic_store_explicit(&s->job_id, 0, memory_order_release);
}

#endif
