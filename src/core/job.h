/* job.h — job and function records shared between the engine thread and the
 * threads that submit and wait. Both are reference counted (atomic), so the
 * Python Job object, the queue and a pending write can each hold one. */
#ifndef PP_JOB_H
#define PP_JOB_H

#include "frame.h"
#include "shm.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* A function descriptor: opaque bytes the worker knows how to turn into a
 * callable, identified by the SHA-256 of those bytes. Immutable once made,
 * except for the runtime estimate, which only the engine thread touches. */
typedef struct pp_func {
  atomic_int refs;
  uint8_t key[PP_KEY_LEN];
  uint8_t *blob; /* owned */
  size_t blob_len;
  uint64_t ema_ns; /* mean run time seen so far; 0 = unknown (engine thread) */
} pp_func;

/* An object put once (Server.put): its pickled form (a plain pickle, or a
 * buffer section when `flags` has PP_OBJF_BUFS), identified by the SHA-256
 * of those bytes. Immutable once made except `released` (any thread sets
 * it once, through pp_engine_obj_release). Peers that hold it keep a
 * reference (peer.c's object table), and so does every job that names it,
 * so a released object lives on until its last queued job is done. */
typedef struct pp_obj {
  atomic_int refs;
  atomic_int released; /* 1: no new peer keeps it; peers that have it drop it */
  uint8_t key[PP_KEY_LEN];
  uint8_t *data; /* owned: malloc'd, or a block of shm */
  size_t len;
  uint32_t flags; /* PP_OBJF_BUFS */
  pp_shm *shm;    /* data is a block of this arena at shm_off (the block
                     holds an arena reference), or NULL */
  uint64_t shm_off;
} pp_obj;

/* pp_obj_new: an object record owning data (malloc'd, len bytes) on
 * success; its key is the SHA-256 of data. NULL when out of memory (data
 * is then still the caller's). Any thread. */
pp_obj *pp_obj_new(uint8_t *data, size_t len, uint32_t flags);
/* pp_obj_alloc: an object record with room for len bytes at o->data: a
 * block of shm when shm is not NULL, len >= PP_SHM_MIN and the arena has
 * room, else malloc'd. The caller fills the data, then pp_obj_hash. NULL
 * when out of memory. Any thread. */
pp_obj *pp_obj_alloc(pp_shm *shm, size_t len, uint32_t flags);
/* pp_obj_hash: set o->key to the SHA-256 of its data. */
void pp_obj_hash(pp_obj *o);
void pp_obj_ref(pp_obj *o);
/* pp_obj_unref: drop a reference; the last frees the data. Any thread. */
void pp_obj_unref(pp_obj *o);

enum pp_job_state {
  PP_JOB_QUEUED = 0,
  PP_JOB_RUNNING = 1, /* handed to a worker */
  PP_JOB_DONE = 2     /* status says how */
};

/* Final status of a job (a superset of the worker's result status). */
enum pp_job_status {
  PP_JOB_OK = PP_RES_OK,         /* result = pickled value */
  PP_JOB_EXC = PP_RES_EXC,       /* result = pickled exception info */
  PP_JOB_SERIAL = PP_RES_SERIAL, /* result = pickled exception info */
  PP_JOB_LOST = 10,              /* worker died too often; errmsg says how */
  PP_JOB_DESTROYED = 11,         /* engine destroyed first */
  PP_JOB_CANCELLED = 12,         /* cancelled before it started */
  PP_JOB_FAILED = 13,            /* could not be run (e.g. no worker starts) */
  PP_JOB_TIMEOUT = 14,           /* ran longer than its timeout; stopped */
  PP_JOB_ABORTED = 15            /* aborted (pp_engine_abort) */
};

typedef struct pp_job {
  atomic_int refs;
  uint64_t id;
  pp_func *func;         /* ref held */
  uint8_t *args;         /* owned; pickled arguments */
  size_t args_len;
  pp_shm *shm;           /* args is a block of this arena (one arena ref
                            held by the block), or NULL: malloc'd */
  uint64_t shm_off;      /* the block's offset in the arena */
  uint32_t flags;        /* PP_JOBF_* sent with the job */
  pp_obj **objs;         /* owned array of references: the objects its
                            arguments name (Server.put), or NULL */
  uint32_t nobjs;
  uint64_t objs_bytes;   /* the sum of their lengths */
  uint8_t *objs_part;    /* owned: the JOB payload's object list, u32 n,
                            u32 0, n keys (PP_JOBF_OBJS), 8 + 32 n bytes */
  uint32_t group;        /* group index, < engine group capacity */
  /* The fields below are protected by the engine mutex. */
  atomic_int state;      /* pp_job_state; DONE is stored last (release) */
  int status;
  int want_callback;     /* completion goes through the callback queue */
  void *udata;           /* owned by the extension (e.g. a Python object) */
  uint8_t *result;       /* owned, when DONE */
  size_t result_len;
  uint32_t result_flags; /* PP_RESF_BUFS: result is a buffer section */
  pp_shm *rshm;          /* result is a block of this arena, or NULL */
  uint64_t rshm_off;
  size_t rshm_len;       /* the block's length as allocated (the result
                            may start after a prefix of it) */
  char *errmsg;          /* owned, for LOST / DESTROYED / FAILED */
  int exitstatus;        /* LOST: last exit status, or -1 */
  int termsignal;        /* LOST: last signal, or 0 */
  uint32_t attempt;      /* dispatch count; the id of the current attempt */
  uint32_t crashes;      /* workers that died while running it */
  uint64_t runtime_ns;   /* as measured by the worker */
  uint64_t est_ns;       /* engine thread: run-time estimate at dispatch */
  /* Job control, set before submit (immutable after): */
  uint64_t timeout_ns;   /* stop it after this long running; 0 = never */
  uint64_t mem_limit;    /* bytes of address space it may add; 0 = none */
  uint32_t retries;      /* re-runs left after its function raised */
  /* [mu] the peer its function last raised on: its retry goes to another
   * one when another has room (compared, never dereferenced: the peer may
   * be gone) */
  const void *avoid;
  /* [mu] stopping it: */
  int stop_reason;       /* 0, or PP_JOB_TIMEOUT / PP_JOB_ABORTED: it ends so */
  int stop_acted;        /* [loop] the transport was told */
  uint64_t stop_grace_ns;    /* abort: how long it may clean up */
  uint64_t stop_deadline_ns; /* [loop] kill after this (monotonic) */
  /* [mu] where and when it ran (for job.status/timing): */
  uint64_t submit_ns, end_ns; /* monotonic; start = end - runtime */
  int worker_pid;        /* local worker that returned it, or 0 */
  char where[64];        /* "local" or the node's "host:port"; "" = none */
  uint8_t *out, *err;    /* owned: the job's captured stdout / stderr */
  uint32_t out_len, err_len;
  /* Links: the engine's pending queue, a worker's in-flight list, or the
   * callback queue; a job is on at most one list at a time. */
  struct pp_job *next, *prev;
} pp_job;

/* pp_func_new: copy blob, compute its SHA-256 key. Returns a func with one
 * reference, or NULL when out of memory. Any thread. */
pp_func *pp_func_new(const void *blob, size_t len);
void pp_func_ref(pp_func *f);
void pp_func_unref(pp_func *f);

/* pp_job_new: a QUEUED job holding a reference to func, taking ownership of
 * args (a malloc'd buffer) only on success. Returns NULL when out of memory. */
pp_job *pp_job_new(pp_func *func, uint8_t *args, size_t args_len,
                   uint32_t flags, uint32_t group);
/* pp_job_set_objs: let j name objs[0..n) (each gets a reference held by
 * j). Before submit only. 0, PP_EINVAL (n above PP_JOB_OBJS_MAX) or
 * PP_ENOMEM (j unchanged). */
int pp_job_set_objs(pp_job *j, pp_obj *const *objs, uint32_t n);

/* pp_job_new_shm: pp_job_new with args a fresh block of args_len bytes in
 * the arena shm (the caller fills j->args). NULL when the arena has no room
 * or memory ran out: the caller falls back to pp_job_new. */
pp_job *pp_job_new_shm(pp_func *func, pp_shm *shm, size_t args_len,
                       uint32_t flags, uint32_t group);
/* pp_job_free_result: free a result buffer as pp_job_unref would (a block
 * of shm at off, or malloc'd when shm is NULL). */
void pp_job_free_result(uint8_t *result, size_t len, pp_shm *shm,
                        uint64_t off);
void pp_job_ref(pp_job *j);
/* pp_job_unref: drop a reference; the last one frees everything the job owns
 * (not udata, which the extension must have released). Any thread. */
void pp_job_unref(pp_job *j);

/* Intrusive doubly linked FIFO of jobs (not locked: the owner locks). */
typedef struct pp_jobq {
  pp_job *head, *tail;
  size_t len;
} pp_jobq;

void pp_jobq_push_back(pp_jobq *q, pp_job *j);
void pp_jobq_push_front(pp_jobq *q, pp_job *j);
/* pp_jobq_pop: remove and return the head, or NULL when empty. */
pp_job *pp_jobq_pop(pp_jobq *q);
/* pp_jobq_remove: unlink j, which must be on q. */
void pp_jobq_remove(pp_jobq *q, pp_job *j);

#endif
