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
#include <stdint.h>

#define PP_WSTATUS_FD 4
#define PP_WSTATUS_SIZE 4096u
#define PP_WSTATUS_MAGIC 0x74737070u /* "ppst" */
#define PP_WSTATUS_VERSION 1u
#define PP_WSTATUS_NABORT 16u /* jobs one worker can be told to abort at once */

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
} pp_wstatus;

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

/* pp_wstatus_end: the job's result is encoded (queued for writing). */
static inline void pp_wstatus_end(pp_wstatus *s) {
  if (s != NULL)
    atomic_store_explicit(&s->job_id, 0, memory_order_release);
}

#endif
