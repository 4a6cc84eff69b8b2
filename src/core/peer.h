/* peer.h — "a place jobs go": the one record a local worker process
 * (pool.c) and a remote ppserver node (node.c) both embed as their first
 * member, and what is the same for both of them, written once: the
 * in-flight jobs in dispatch order and their estimated work, the function
 * keys the other side already has ("send the function before its first
 * job"), the read buffer, result handling (a RESULT frame completes its
 * job), requeue-on-loss (with whether the job that was running is charged
 * a crash), and run-time estimates. A transport fills in a small ops
 * table and only moves bytes.
 *
 * Layering: peer.c calls only the files below it (complete.c, job.c,
 * keyset.c, frame.c); transports call peer.c; the scheduler (sched.c) sees
 * nothing but pp__peer. Engine thread only, except where noted.
 *
 * p->inflight is [mu] (engine_int.h): a thread submitting a job may put it
 * straight on an idle local worker's list (direct hand-off, pool.c), so
 * every read of it from the engine thread that may race with that is made
 * under the mutex; only the engine thread removes jobs from it. */
#ifndef PP_PEER_H
#define PP_PEER_H

#include "buf.h"
#include "frame.h"
#include "job.h"
#include "keyset.h"

#include <stdint.h>

typedef struct pp_engine pp_engine;
typedef struct pp__peer pp__peer;

/* Pipelining: a peer may hold more than one job per slot when jobs are
 * short, so tiny jobs travel in batches; long jobs go one per slot (no
 * tail skew). */
#define PP__PIPE_MAX_JOBS 256            /* jobs in flight per slot */
#define PP__PIPE_BUDGET_NS 2000000ull    /* estimated work per slot */
#define PP__FLUSH_BYTES (1u << 20) /* flush a send round after this much */
#define PP__KEYSET_MAX 4096              /* functions cached per peer */
/* A remote peer starts with at most this many jobs in flight and may hold
 * one more for every result it returned on the connection (slow start):
 * a node cannot take more work than it has shown it does. */
#define PP__REMOTE_START_WINDOW 16

/* One object (Server.put) the other side holds, in least recently used
 * order on its peer (peer.c): the peer decides what the other side keeps,
 * and tells it with OBJ and OBJ DROP frames (docs/protocol.md 2.2). */
typedef struct pp__objent {
  pp_obj *o; /* a reference */
  struct pp__objent *prev, *next;
} pp__objent;

enum pp__peer_tier { PP__PEER_LOCAL = 0, PP__PEER_REMOTE = 1 };

typedef struct pp__peer_ops {
  /* can_take: whether the transport is ready for jobs at all (process
   * alive and not retiring; node authenticated). The peer layer adds the
   * pipelining rule on top. */
  int (*ready)(const pp__peer *p);
  /* emit: queue one frame (header for type/flags/id/attempt, payload =
   * parts) for the next flush. The parts stay valid until the flush's
   * write completes as long as the jobs they belong to do (the transport
   * may reference instead of copy when it holds a job reference: `job`
   * is the job the parts belong to, or NULL when they must be copied).
   * Returns 0 or a negative pp code. */
  int (*emit)(pp__peer *p, uint8_t type, uint32_t flags, uint64_t id,
              uint32_t attempt, const pp_part *parts, size_t nparts,
              pp_job *job);
  /* flush: write everything emitted since the last flush, in order.
   * Returns 0 or a negative pp code (nothing of it will arrive). */
  int (*flush)(pp__peer *p);
  /* drop: the peer cannot be used any more (a send failed, the other side
   * broke the protocol): kill the process / close the connection. Its
   * jobs are requeued by the transport's loss path, never here, and never
   * synchronously into a dispatch round (the transport asks for one). */
  void (*drop)(pp__peer *p, const char *why);
  /* stop: carry out a stop request for j, one of p's in-flight jobs
   * (j->stop_reason says why, j->stop_grace_ns how long it may clean up):
   * a local worker is interrupted or killed, a node is sent STOP. The job
   * then ends with its stop status when its result (or the peer's loss)
   * comes back; the transport never completes it here. */
  void (*stop)(pp__peer *p, pp_job *j);
} pp__peer_ops;

struct pp__peer {
  const pp__peer_ops *ops;
  pp_engine *e;
  int tier;                 /* pp__peer_tier: local peers are tried first */
  int slots;                /* jobs it runs at once (1, or a node's workers) */
  int restart;              /* one job per lifetime (restart mode) */
  char name[280];           /* "worker process (pid N)" or "node host:port" */
  char where[64];           /* what job.node says: "local" or "host:port" */
  int pid;                  /* a local worker's pid, else 0 */
  pp_jobq inflight;         /* dispatched, no result yet, in dispatch order */
  uint64_t inflight_est_ns; /* sum of their estimates */
  uint64_t ndispatched;     /* jobs ever handed to this peer */
  uint64_t nreturned;       /* results it returned (for a node: on the
                               current connection; node.c resets it) */
  pp_keyset known;          /* function keys the other side has */
  pp__objent *lru_head;     /* objects the other side has: head = least */
  pp__objent *lru_tail;     /* recently used, tail = most */
  uint32_t nobjs;           /* entries in that list (<= PP_OBJS_MAX) */
  uint64_t obj_bytes;       /* their bytes */
  pp__objent *holds;        /* objects sent as arena blocks that the other
                               side may still read (until its OBJ release
                               or its end): one entry per OBJ sent so */
  uint64_t obj_limit;       /* the most bytes the other side holds (the
                               engine's object_store_limit, or less when a
                               node announces less) */
  pp_buf rbuf;              /* bytes read, not yet framed */
  pp_shm *shm;              /* the arena the other side has mapped (a local
                               worker that acknowledged it), or NULL: then
                               arguments in it travel as bytes */
  int strict;               /* a local worker: it never reports LOST,
                               FAILED or TIMEOUT itself (a node's engine
                               may); those are protocol errors */
  int writing;              /* [mu] the engine thread is writing frames
                               that belong to no job in flight (OBJ DROP):
                               no hand-off to it meanwhile (pool.c) */
  struct pp__peer *pnext;   /* the engine's peer list (engine_int.h) */
};

/* pp__peer_init: set up p for engine e with the given ops and tier, empty.
 * Engine thread. */
void pp__peer_init(pp__peer *p, pp_engine *e, const pp__peer_ops *ops,
                   int tier, int slots);

/* pp__peer_clear: release p's buffers and keys (not the jobs: they must
 * have been requeued or completed). */
void pp__peer_clear(pp__peer *p);

/* pp__peer_link / pp__peer_unlink: add p to (remove it from) the engine's
 * peer list, local peers before remote ones. The list is [loop]. */
void pp__peer_link(pp__peer *p);
void pp__peer_unlink(pp__peer *p);

/* pp__peer_can_take: whether p may be given one more job now: its
 * transport is ready, the pipelining rule allows it and, for a remote
 * peer, fewer than PP__REMOTE_START_WINDOW + nreturned jobs are in flight
 * on it. Pure. */
int pp__peer_can_take(const pp__peer *p);

/* pp__peer_assign: put j (already RUNNING, attempt counted) at the end of
 * p's in-flight list. Caller holds the engine mutex. */
void pp__peer_assign(pp__peer *p, pp_job *j);

/* pp__peer_start: j leaves the queue for p: RUNNING, its attempt counted,
 * its run time estimated, counted as running, at the end of p's in-flight
 * list. pp__peer_unstart undoes it exactly (a hand-off whose write could
 * not start, pool.c). Caller holds the engine mutex; any thread. */
void pp__peer_start(pp__peer *p, pp_job *j);
void pp__peer_unstart(pp__peer *p, pp_job *j);

/* pp__peer_emit: emit (ops->emit) every in-flight job from `first` on,
 * each preceded by its function when p does not have it yet (adding the
 * key to p->known), naming an arena block instead of its bytes when p maps
 * that arena. Does not flush. Returns 0 or a negative code (what was
 * emitted must then be discarded). Called by whoever may write p now: the
 * engine thread, or a submitting thread handing a job off (pool.c). */
int pp__peer_emit(pp__peer *p, pp_job *first);

/* pp__peer_send: pp__peer_emit, then flush. Returns 0, or a negative code
 * after which p has been dropped (ops->drop): its jobs stay on p->inflight
 * and the transport's loss path requeues them. Never calls the scheduler.
 * Engine thread. */
int pp__peer_send(pp__peer *p, pp_job *first);

/* pp__peer_objs_clear: forget every object the other side had (it is
 * gone, or will start over). Engine thread. */
void pp__peer_objs_clear(pp__peer *p);

/* pp__peer_obj_done: a local worker no longer references the arena block
 * of the object with this key (its OBJ release): drop one hold. 0, or
 * PP_EPROTO when no such hold exists. Engine thread. */
int pp__peer_obj_done(pp__peer *p, const uint8_t *key);

/* pp__peer_forget: o was released: when p's other side has it, emit an
 * OBJ DROP for it and forget it (the caller flushes). Returns 1 when a
 * frame was emitted, 0 when p did not have o, or a negative pp code (the
 * caller drops p). Engine thread. */
int pp__peer_forget(pp__peer *p, pp_obj *o);

/* Counters a completed result is credited to, under the engine mutex, in
 * the same critical section that completes the job (so a waiter woken by
 * the job sees them). Any pointer may be NULL. */
typedef struct pp__credit {
  uint64_t *njobs;   /* +1 per job that ran to a result */
  uint64_t *time_ns; /* + its run time */
  int pid;           /* > 0: +1 to this local worker's count in the
                        engine's pid table (looked up under the mutex: the
                        table may grow meanwhile) */
} pp__credit;

/* pp__peer_result: a RESULT frame (header h, payload of h->length bytes)
 * arrived from peer: complete its job and credit `c`. Returns 1 (the job
 * completed, or went back to the queue for a retry), or PP_EPROTO (also
 * for an (id, attempt) not in flight on the peer: logged, as every job
 * sent stays in flight until its result) / PP_ENOMEM (the transport drops
 * the peer). Takes and releases the engine mutex. */
int pp__peer_result(pp__peer *peer, const pp_frame_hdr *h,
                    const uint8_t *payload, const pp__credit *c);

/* pp__peer_result_in: pp__peer_result for a payload that was read straight
 * into a block of arena shm at off (h->length bytes, as allocated there):
 * a value's bytes stay where they are and the job owns the block. On a
 * return of 1 the block is the job's (or freed); on an error the caller
 * still owns it. The engine thread, or (pp__peer_result, local workers)
 * a thread waiting for the job that holds the worker's read lock
 * (pool.c, "Results read by the waiting caller"). */
int pp__peer_result_in(pp__peer *peer, const pp_frame_hdr *h,
                       uint8_t *payload, const pp__credit *c, pp_shm *shm,
                       uint64_t off);

/* pp__peer_requeue: the peer is lost. Every in-flight job goes back to the
 * front of the engine's queue, in order, uncharged — except the job
 * `running_id` (0 = none known), which is charged one crash (status and
 * signal as the transport saw them) and fails with PP_JOB_LOST once it
 * has crashed more than max_retries times. Forgets the known functions
 * and the read buffer, and asks for a dispatch. Takes the mutex. */
void pp__peer_requeue(pp__peer *p, uint64_t running_id, int64_t status,
                      int sig, const char *how);

/* pp__peer_stop_pending: act on every stop request (abort, timeout) of p's
 * in-flight jobs that its transport has not been told of yet. Takes the
 * mutex to read the requests, calls ops->stop without it. */
void pp__peer_stop_pending(pp__peer *p);

/* pp__stop_message: the error message a stopped job ends with (malloc'd,
 * or NULL when out of memory). */
char *pp__stop_message(const pp_job *j);

/* pp__peer_fail_all: engine stopping: complete every in-flight job with
 * status/msg. Caller holds the mutex. */
void pp__peer_fail_all(pp__peer *p, int status, const char *msg);

/* pp__estimate: the run-time estimate used for pipelining decisions.
 * pp__observe: fold a measured run time into the function's estimate. */
uint64_t pp__estimate(const pp_job *j);
void pp__observe(pp_func *f, uint64_t runtime_ns);

#endif
