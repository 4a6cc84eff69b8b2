/* engine_int.h — the engine record and the internal calls between the
 * core's layers (docs/architecture.md draws them). Not part of the public
 * API. Fields marked [mu] are protected by pp_engine.mu; fields marked
 * [loop] belong to the engine thread alone.
 *
 * Bottom up, each file calls only those below it:
 *   complete.c   completion of a job, logging, asking for a dispatch
 *   peer.c       what local workers and remote nodes share (peer.h)
 *   pool.c | node.c   the two transports (processes | TCP to ppservers)
 *   sched.c      pure policy over peers
 *   discover.c   discovery sockets (makes node records through node.c)
 *   engine.c     the thread, the loop, timers, capacity, public API */
#ifndef PP_ENGINE_INT_H
#define PP_ENGINE_INT_H

#include "buf.h"
#include "engine.h"
#include "keyset.h"
#include "peer.h"
#include "stretch.h"

#include <uv.h>

#define PP__LOGQ_MAX 1000        /* queued log lines kept */
#define PP__MAX_SPAWN_FAILS 5    /* workers in a row that could not start */
#define PP__MAX_DISCOVERED 1024  /* node records made from announcements */

typedef struct pp__worker pp__worker; /* pool.c */
typedef struct pp__tpl pp__tpl;       /* forksrv.c */

/* What the fork server's reports mean, told to the pool (pool.c fills it
 * in; forksrv.c, below it, calls it). Engine thread. gen names the
 * template (pp__tpl_fork's *gen). */
typedef struct pp__tpl_ops {
  /* FORKED: the request tag was forked as pid (pidfd: a descriptor of it
   * the callee takes, or -1), or failed with errno err (pid 0) */
  void (*forked)(pp_engine *e, uint64_t gen, uint64_t tag, int pid,
                 int pidfd, int err);
  /* EXITED: a child of template gen ended */
  void (*exited)(pp_engine *e, uint64_t gen, int pid, int64_t status,
                 int sig);
  /* template gen ended (how: its exit status or signal): every child it
   * has not reported ended with it, every request it has not answered
   * is void */
  void (*lost)(pp_engine *e, uint64_t gen, int64_t status, int sig);
} pp__tpl_ops;
typedef struct pp__node pp__node;     /* node.c */

typedef struct pp__logline {
  struct pp__logline *next;
  int level;
  char *msg;
} pp__logline;

struct pp_engine {
  /* configuration (immutable after start) */
  char **argv, **env;
  char *cwd;
  int restart, max_retries, queue_logs;
  void (*on_complete)(void *ctx, pp_job *j);
  void *on_complete_ctx;
  uint8_t *secret; /* the raw secret until it is stretched, then NULL */
  size_t secret_len;
  /* the stretched secret (stretch.h), computed on libuv's thread pool when
   * the engine starts; nodes connect and discovery listens only once
   * key_ready (engine thread) */
  uint8_t key[PP_STRETCH_LEN];
  int key_ready;
  uv_work_t stretch_req;
  int stretch_rc; /* [written by the pool thread before stretch_done] */
  uint64_t node_timeout_ns, no_capacity_ns;
  uint32_t max_node_workers; /* cap on a node's announced workers */
  struct pp_tls_ctx *tls_ctx; /* TLS to nodes; NULL = plain sealed frames */
  int tls_psk; /* TLS in PSK mode: tls_ctx is made once the key is ready */
  uint32_t max_frame;
  uint64_t obj_limit; /* bytes of objects (Server.put) one peer holds */
  pp_shm *shm;           /* the arena for out-of-band buffers, or NULL */
  int capture_output;
  uint32_t max_output;
  uint16_t *disco_ports; /* auto-discovery UDP ports (ndisco of them) */
  uint32_t subnet_net[PP_MAX_SUBNETS], subnet_mask[PP_MAX_SUBNETS];
  int nsubnets;  /* pp 1.x subnet entries (host byte order) */
  int disco_any; /* nodes from any address, not only those subnets */
  int ndisco;

  uv_loop_t *loop;      /* own_loop, or the embedder's (external) */
  uv_loop_t own_loop;   /* run by the engine's own thread */
  int external;         /* the embedder runs the loop on its thread */
  uv_async_t async;
  uv_prepare_t dispatcher; /* runs the one dispatch of a loop turn */
  uv_timer_t tick;         /* heartbeats, reconnects, capacity checks */
  uv_thread_t thread;
  int thread_started;

  uv_mutex_t mu;
  uv_cond_t done_cond; /* a job completed / a group drained */
  uv_cond_t ev_cond;   /* the callback thread has something */

  /* [mu] */
  pp_jobq pending;
  int target;          /* wanted local pool size */
  int shutdown;        /* shutdown requested */
  int stopped;         /* engine thread finished shutting down */
  uint64_t next_id;
  uint64_t generation;
  int waiters;
  uint64_t *group_pending;
  size_t ngroups;
  uint64_t total_pending;
  uint64_t running;
  pp_jobq evq;         /* completed jobs wanting a callback */
  pp__logline *logq_head, *logq_tail;
  size_t logq_len, logq_dropped;
  uint64_t njobs, time_ns; /* results from local workers and their times */
  int *pids;           /* live worker pids */
  uint64_t *pid_jobs;  /* results each of them returned */
  int npids;
  int nlive;
  pp_obj **released;   /* objects released (pp_engine_obj_release), each a
                          reference, for the engine thread to drop from
                          every peer */
  size_t nreleased, capreleased;
  /* counters of OBJ frames (any thread reads them) */
  atomic_uint_fast64_t objs_sent, obj_bytes_sent, objs_dropped;
  /* direct hand-off (pool.c): the workers a submitting thread may write a
   * job to itself, whether the pool has its target size (a job submitted
   * after set_nworkers() returned never reaches a worker being retired),
   * a worker has the end of a hand-off for the engine thread to write,
   * and how many jobs went that way */
  pp__worker *handoff;
  int pool_settled;
  int rests_wanted;
  uint64_t handoffs;
  uint64_t direct_results; /* [mu] completed by a waiting caller (pool.c) */

  /* [loop] */
  /* something may have freed capacity or added work (atomic: a caller
   * completing a result it read itself may ask too, pool.c) */
  atomic_int dispatch_wanted;
  /* a caller read a worker's pipe and left work for the engine thread
   * (pp__pool_direct_read): on_dispatcher runs pp__pool_direct_done */
  atomic_int direct_wake;
  int stops_wanted;    /* [mu] a running job was asked to stop */
  int64_t abort_group; /* [mu] with abort_wanted: the group (-1 = all) */
  uint64_t abort_grace_ns; /* [mu] */
  int abort_wanted;    /* [mu] pp_engine_abort_group for running jobs */
  int stopping;
  pp__peer *peers;     /* every place jobs go, local first (peer.c) */
  pp__worker *workers; /* pool.c's processes */
  uv_timer_t respawn_timer; /* pool.c: backoff between failed starts */
  int spawn_fails;     /* pool.c: workers in a row that could not start */
  int early_deaths;    /* pool.c: workers in a row killed before ready */
  int respawn_due;     /* pool.c: the backoff timer allows one attempt */
  /* the fork server (forksrv.c): NULL tpl_argv = workers are spawned */
  char **tpl_argv;     /* immutable after start */
  pp__tpl *tpl;        /* the template taking requests, or NULL */
  pp__tpl *tpls;       /* every template record not yet freed */
  uint64_t tpl_gen;    /* templates started so far */
  uint64_t tpl_tags;   /* pool.c: fork requests made so far */
  int tpl_failures;    /* pool.c: templates in a row lost before a worker
                          of theirs was ready */
  int tpl_off;         /* pool.c: too many failures: spawn from now on */
  int tpl_pid;         /* [mu] the template taking requests, or 0 */
  const pp__tpl_ops *tpl_ops;
  pp__node *nodes;     /* node.c's records; appended to under mu */
  int ndiscovered;
  struct pp__disco *disco; /* NULL without auto-discovery */
  uint64_t starved_since_ns, starved_warned_ns;
};

/* ---- complete.c: below every transport ------------------------------ */

/* pp__log: log through the engine (queued for the callback thread when
 * queue_logs is set, else pp_log). Any thread; takes mu when queueing, so
 * callers must not hold it. */
void pp__log(pp_engine *e, int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* pp__complete: finish a job. Caller holds mu; consumes the engine's
 * reference; takes ownership of result and errmsg (either may be NULL). */
void pp__complete(pp_engine *e, pp_job *j, int status, uint8_t *result,
                  size_t len, char *errmsg);
/* pp__group_finished: j no longer counts for pp_engine_wait_group (its
 * callback ran). Caller holds mu. */
void pp__group_finished(pp_engine *e, pp_job *j);
/* pp__fail_pending: complete every queued job with status and a copy of
 * msg. Caller holds mu. */
void pp__fail_pending(pp_engine *e, int status, const char *msg);
/* pp__want_dispatch: ask for one dispatch at the end of this loop turn
 * (never runs it here). Engine thread. */
static inline void pp__want_dispatch(pp_engine *e) { e->dispatch_wanted = 1; }

/* ---- forksrv.c: the fork server, engine side (engine thread) --------- */

/* pp__tpl_fork: ask the template (started first when there is none) to
 * fork a worker whose fd 3 is sock and fd 4 status (-1: none); the
 * descriptors are copied into the request, the caller still closes its
 * own. The answer comes later through e->tpl_ops->forked with tag. Returns
 * 0 and the template's *gen, or PP_ESPAWN after logging why. */
int pp__tpl_fork(pp_engine *e, uint64_t tag, int sock, int status,
                 uint64_t *gen);
/* pp__tpl_stop: engine stopping: stop reading, kill every template (each
 * exit then reports its children lost). */
void pp__tpl_stop(pp_engine *e);
/* pp__tpl_free: after the loop ended. */
void pp__tpl_free(pp_engine *e);

/* ---- pool.c: local worker processes (engine thread) ------------------ */

/* pp__pool_init / pp__pool_free: the pool's timer (engine start) and its
 * records (after the loop ended). pp__pool_init returns 0 or an error. */
int pp__pool_init(pp_engine *e);
void pp__pool_free(pp_engine *e);
/* pp__pool_adjust: spawn or retire workers to reach the target size. */
void pp__pool_adjust(pp_engine *e);
/* pp__pool_stop: engine stopping: kill every worker, close the timer. */
void pp__pool_stop(pp_engine *e);
/* pp__pool_tick: job timeouts and abort deadlines of local workers. */
void pp__pool_tick(pp_engine *e, uint64_t now);
/* pp__pool_live: workers alive and not retiring (the pool's size now). */
int pp__pool_live(const pp_engine *e);
/* pp__pool_handoff: direct hand-off of a just submitted job j (holding the
 * engine's reference) when no job is queued or running and a worker on
 * the hand-off list is idle: j is put in flight on it as a dispatch would and
 * its frames (the function first if the worker lacks it) are written to
 * the worker's socket by the calling thread, without blocking. Returns 0
 * (nothing changed: queue j), 1 (handed off) or 2 (handed off, but the end
 * of its frames is left for the engine thread: wake it). Caller holds mu;
 * any thread (pp_engine_submit's). */
int pp__pool_handoff(pp_engine *e, pp_job *j);
/* pp__pool_flush_rests: start writing the ends of hand-offs a submitting
 * thread could not write whole (before anything else goes to those
 * workers). Engine thread, once per loop turn. */
void pp__pool_flush_rests(pp_engine *e);
/* pp__pool_direct_read: the caller waiting for j reads the result itself
 * when j is in flight first on a worker of the hand-off list and the
 * worker's read lock is free: one non-blocking read of its pipe, and the
 * RESULT frames there completed as the engine thread would (pool.c,
 * "Results read by the waiting caller"); anything else is left for the
 * engine thread, which is woken for it. Returns how many jobs it completed
 * (0: nothing read, or the lock or the worker was not free). Any thread
 * but the engine's, holding no engine lock. */
int pp__pool_direct_read(pp_engine *e, pp_job *j);
/* The result mailbox (wstatus.h, protocol 4.1), from pp_engine_wait_job:
 * pp__pool_mb_arm asks the worker j is in flight first on (on the hand-off
 * list, with a status page) to put j's result in its mailbox instead of
 * its pipe; it returns that worker (its mailbox now held by this thread)
 * or NULL. pp__pool_mb_poll completes what the mailbox holds (and arms it
 * again when that was another job's); returns the jobs completed. Every
 * armed mailbox is given back with pp__pool_mb_disarm, which completes a
 * result the worker was already putting there. Any thread but the
 * engine's, holding no engine lock. */
pp__worker *pp__pool_mb_arm(pp_engine *e, pp_job *j);
int pp__pool_mb_poll(pp_engine *e, pp__worker *w, pp_job *j);
void pp__pool_mb_disarm(pp_engine *e, pp__worker *w);
/* pp__pool_direct_done: what waiting callers left in the workers' read
 * buffers (frames they do not complete, the dispatch and BYE that follow
 * results) is done now. Engine thread (on_dispatcher, after direct_wake). */
void pp__pool_direct_done(pp_engine *e);

/* ---- node.c: remote ppserver nodes (engine thread) ------------------- */

/* pp__nodes_init: create the node records (no I/O yet). 0 or an error. */
int pp__nodes_init(pp_engine *e, char *const *specs);
/* pp__nodes_tick: heartbeats, timeouts and reconnects, every tick. */
void pp__nodes_tick(pp_engine *e, uint64_t now);
/* pp__nodes_names: "a, b, c" of every node into out (for a warning). */
void pp__nodes_names(const pp_engine *e, char *out, size_t n);
/* pp__nodes_stop: engine stopping: say goodbye, close everything. */
void pp__nodes_stop(pp_engine *e);
/* pp__nodes_free: after the loop ended. */
void pp__nodes_free(pp_engine *e);
/* pp__node_discovered: an authenticated announcement says a node listens
 * on ip:port. Makes a node record the first time (and starts connecting),
 * wakes a dormant one, ignores replays (time_ms not newer than the last).
 * Engine thread. */
void pp__node_discovered(pp_engine *e, const char *ip, unsigned port,
                         uint32_t interval_ms, uint64_t time_ms);

/* ---- sched.c: the dispatch policy (engine thread) --------------------- */

/* pp__dispatch: hand queued jobs to peers with room, local first, round
 * robin, then write them. The caller holds mu; it is released here before
 * writing. Called only by the engine's per-turn dispatcher (and unit
 * tests), never from a transport callback or from inside itself. */
void pp__dispatch(pp_engine *e);

/* ---- discover.c: auto-discovery sockets (engine thread) -------------- */

/* pp__disco_start: open the discovery sockets and send the first queries.
 * Returns 0 or a negative error after logging it (the engine runs on
 * without discovery). */
int pp__disco_start(pp_engine *e);
/* pp__disco_tick: resend queries while the first seconds last. */
void pp__disco_tick(pp_engine *e, uint64_t now);
/* pp__disco_stop: close the sockets (engine stopping). */
void pp__disco_stop(pp_engine *e);
/* pp__disco_free: after the loop ended. */
void pp__disco_free(pp_engine *e);

#endif
