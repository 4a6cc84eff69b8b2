/* engine.h — the pp engine: a thread running a libuv loop that owns the job
 * queue, the scheduler and the local worker processes. Other threads talk to
 * it only through these calls; bytes cross, never Python objects. */
#ifndef PP_ENGINE_H
#define PP_ENGINE_H

#include "job.h"
#include "pp_common.h"

#include <stdint.h>

typedef struct pp_engine pp_engine;

typedef struct pp_engine_opts {
  /* Command that starts one worker (NULL-terminated, copied). The worker
   * finds its frame pipe on file descriptor 3. */
  char *const *worker_argv;
  /* Command that starts the fork server (template.h, docs/protocol.md
   * 4.3), which then forks every worker; it finds its control socket on
   * fd 3 (NULL-terminated, copied). NULL: each worker is spawned with
   * worker_argv. Both get worker_env and worker_cwd. */
  char *const *template_argv;
  char *const *worker_env; /* NULL-terminated, copied; NULL = inherit */
  const char *worker_cwd;  /* copied; NULL = inherit */
  int nworkers;            /* initial local pool size (>= 0) */
  int restart;             /* one job per worker process */
  int max_retries;         /* re-runs of a job whose worker died (>= 0) */
  uint32_t max_frame;      /* payload limit on worker pipes; 0 = default */
  int capture_output;      /* workers capture each job's stdout/stderr */
  uint32_t max_output;     /* bytes kept per stream and job; 0 = 1 MiB */
  int queue_logs;          /* 1: log lines go to pp_engine_next_event */
  /* Size of the shared-memory arena for out-of-band buffers (shm.h), in
   * bytes: 0 = half the machine's memory, at most 4 GiB; UINT64_MAX = no
   * arena (buffers then travel through the worker pipes). */
  uint64_t shm_size;
  /* Optional completion hook, for embedders without Python (ppserver).
   * Called once per job when it becomes DONE, with the engine mutex held,
   * from the engine thread, the thread calling cancel/shutdown, or a thread
   * in pp_engine_wait_job that read the job's result itself. The
   * job pointer is borrowed (pp_job_ref it to keep it). The hook must be
   * quick and must not call any pp_engine_* function. */
  void (*on_complete)(void *ctx, pp_job *j);
  void *on_complete_ctx;
  /* Remote ppserver nodes: "host", "host:port" or "[v6addr]:port"
   * (NULL-terminated, copied), and the shared secret (copied). */
  char *const *nodes;
  const uint8_t *secret;
  size_t secret_len;
  uint32_t node_timeout_ms;  /* silence after which a node is dead; 0 = 5 s */
  uint32_t max_node_workers; /* a node's announced worker count is capped
                                at this; 0 = PP_MAX_NODE_WORKERS_DEFAULT */
  /* Transport security to nodes (docs/protocol.md 6.6): TLS 1.3 keyed from
   * the secret unless plain is set (then today's sealed frames, for nodes
   * that allow them); with tls_cert, tls_key and tls_ca (paths, read at
   * start) certificates are verified both ways instead. */
  int plain;
  const char *tls_cert, *tls_key, *tls_ca;
  /* Optional: receives a message when pp_engine_new fails (a TLS file that
   * cannot be loaded, ...). */
  char *error;
  size_t error_len;
  /* Optional: a uv_loop_t * owned by the embedder (ppserver), on which
   * the engine runs instead of on a thread of its own, so the embedder's
   * connections and the engine share one loop and a job crosses no thread
   * on its way. Then every pp_engine_* call must come from that loop's
   * thread (pp_engine_new included, before or while the loop runs), none of
   * the waits may be used, the completion hook runs on that thread, the
   * embedder must ignore SIGPIPE, pp_engine_shutdown only starts the stop
   * (the engine's handles close as the loop runs on) and pp_engine_free
   * comes after the loop has ended. NULL = the engine's own thread. */
  void *loop;
  uint32_t no_capacity_ms;   /* fail queued jobs after this long with no
                                worker and no node; 0 = never */
  /* Auto-discovery: listen for signed ppserver announcements on these UDP
   * ports (copied; needs the secret) and use every node found like a
   * configured one. NULL / 0 = off. */
  const uint16_t *discover_ports;
  int ndiscover;
  /* pp 1.x's subnet entries ("192.168.1.*"): up to PP_MAX_SUBNETS pairs
   * (network, prefix bits), host byte order. Queries also go to each
   * subnet's broadcast address and, unless disco_any, only nodes whose
   * address is in one of the subnets are used. */
  const uint32_t *subnets;
  int nsubnets;
  int disco_any; /* a plain "*" entry too: nodes from anywhere */
  /* Bytes of objects put once (pp_engine_obj_release) that one worker, or
   * one node connection, holds at most; least recently used out first.
   * 0 = PP_OBJ_LIMIT_DEFAULT. A node that announces less gets less. */
  uint64_t obj_limit;
} pp_engine_opts;

#define PP_MAX_SUBNETS 16

/* Per-node statistics (see pp_engine_node_stats). */
typedef struct pp_node_stats {
  char name[280];    /* "host:port" */
  int connected;     /* authenticated and serving */
  int nworkers;      /* its worker count, as it announced */
  uint64_t njobs;    /* results it returned */
  uint64_t time_ns;  /* their run times, as measured on the node */
} pp_node_stats;

/* pp_engine_node_stats: copy the statistics of up to max nodes. Returns the
 * number of nodes. Any thread. */
int pp_engine_node_stats(pp_engine *e, pp_node_stats *out, int max);

/* Counters for get_stats/print_stats. */
typedef struct pp_engine_stats {
  uint64_t njobs;     /* jobs that ran to a result on a local worker
                         (remote ones: pp_engine_node_stats) */
  uint64_t time_ns;   /* sum of their run times, as the workers measured */
  int nworkers;       /* target size of the local pool */
  int nlive;          /* worker processes alive right now */
  uint64_t queued;    /* waiting for a worker */
  uint64_t running;   /* handed to a worker, no result yet */
  uint64_t handoffs;  /* jobs the submitting thread wrote to an idle local
                         worker itself (direct hand-off) */
  uint64_t direct_results; /* results the waiting caller read from a local
                              worker's pipe itself */
  uint64_t shm_used;  /* bytes of the shared-memory arena in use */
  uint64_t shm_size;  /* its size (0: no arena) */
  uint64_t objs_sent;      /* OBJ frames sent to workers and nodes */
  uint64_t obj_bytes_sent; /* their objects' bytes */
  uint64_t objs_dropped;   /* OBJ DROP frames sent (evicted or released) */
  int template_pid;   /* the fork server taking requests, or 0 */
} pp_engine_stats;

/* pp_engine_new: validate opts, start the engine thread and the initial
 * workers. Returns 0 and *out, or PP_EINVAL / PP_ENOMEM / PP_EIO.
 * Any thread; the caller owns *out and must pp_engine_free it. */
int pp_engine_new(const pp_engine_opts *opts, pp_engine **out);

/* pp_engine_shutdown: stop accepting jobs, fail queued and running ones with
 * PP_JOB_DESTROYED, kill the workers and join the engine thread. Idempotent.
 * Any thread except the engine thread; blocks until the thread is gone.
 * With an external loop (opts.loop): on that loop's thread, returns at
 * once; the workers are reaped as the loop runs on. */
void pp_engine_shutdown(pp_engine *e);

/* pp_engine_free: shutdown, then free. Jobs still on the callback queue are
 * released; their udata must already be gone (drain it first). */
void pp_engine_free(pp_engine *e);

/* pp_engine_submit: queue j (the engine takes its own reference) and assign
 * j->id. When no job is queued or running and a local worker is idle, the
 * calling thread writes j to that worker itself (a non-blocking write of
 * at most 1 MiB, with the engine mutex held), so the engine thread need
 * not wake; the job is then in flight as if the engine had dispatched it.
 * Returns 0, or PP_ECLOSED after shutdown (nothing is queued). Any thread
 * except the engine thread (a Python caller may hold the GIL). */
int pp_engine_submit(pp_engine *e, pp_job *j);

/* pp_engine_obj_release: o will be named by no new job: every worker and
 * node that holds it is told to drop it (by the engine thread, soon), and
 * jobs already submitted that name it keep it alive and still get it.
 * Takes its own reference; idempotent. 0 or PP_ENOMEM. Any thread. */
int pp_engine_obj_release(pp_engine *e, pp_obj *o);

/* pp_engine_cancel: cancel j if it has not been handed to a worker yet.
 * Returns 1 when cancelled (j is then DONE/CANCELLED), 0 otherwise. */
int pp_engine_cancel(pp_engine *e, pp_job *j);

/* pp_engine_abort: stop j. A queued job completes ABORTED at once; a
 * running one is interrupted (a local worker gets KeyboardInterrupt raised
 * inside the job, a node is sent STOP) and killed with its worker if it has
 * not ended grace_ns later; it then completes ABORTED (never retried).
 * Returns 1 when j will end ABORTED, 0 when it had already finished. Any
 * thread. */
int pp_engine_abort(pp_engine *e, pp_job *j, uint64_t grace_ns);

/* pp_engine_abort_group: pp_engine_abort for every unfinished job of group
 * (every group when group < 0). Queued ones end at once, running ones as
 * the engine thread reaches them. Any thread. */
void pp_engine_abort_group(pp_engine *e, int64_t group, uint64_t grace_ns);

/* pp_engine_want_callback: ask that j's completion be delivered through
 * pp_engine_next_event, with udata attached. Returns 1 if registered (udata
 * now belongs to the job until the event is taken), 0 if j is already done
 * (nothing changed). */
int pp_engine_want_callback(pp_engine *e, pp_job *j, void *udata);

/* pp_job_done: whether j has finished (acquire read; no lock). */
static inline int pp_job_done(pp_job *j) {
  return atomic_load_explicit(&j->state, memory_order_acquire) == PP_JOB_DONE;
}

/* pp_engine_wait_job: block until j is done or timeout_ns passes.
 * Returns 0 (done) or PP_ETIMEDOUT. Call without any Python lock held. */
int pp_engine_wait_job(pp_engine *e, pp_job *j, int64_t timeout_ns);

/* pp_engine_wait_group: block until no job of group (or of any group when
 * group < 0) is unfinished, callbacks included. 0 or PP_ETIMEDOUT. */
int pp_engine_wait_group(pp_engine *e, int64_t group, int64_t timeout_ns);

/* pp_engine_generation / pp_engine_wait_generation: a counter bumped at every
 * job completion; wait until it differs from gen. 0 or PP_ETIMEDOUT. */
uint64_t pp_engine_generation(pp_engine *e);
int pp_engine_wait_generation(pp_engine *e, uint64_t gen, int64_t timeout_ns);

/* Events for the callback thread. */
enum { PP_EV_NONE = 0, PP_EV_JOB = 1, PP_EV_LOG = 2 };
typedef struct pp_event {
  int kind;
  pp_job *job;  /* PP_EV_JOB: a reference the caller now owns; job->udata */
  int level;    /* PP_EV_LOG */
  char *msg;    /* PP_EV_LOG: malloc'd, caller frees */
} pp_event;

/* pp_engine_next_event: wait up to timeout_ns for a completed job that asked
 * for a callback, or a queued log line. Returns 0 with *ev filled (kind NONE
 * on timeout), or PP_ECLOSED once the engine is shut down and both queues
 * are empty. For the one callback thread of an engine. */
int pp_engine_next_event(pp_engine *e, int64_t timeout_ns, pp_event *ev);

/* pp_engine_callback_done: the callback for a PP_EV_JOB job has run; the job
 * now counts as finished for pp_engine_wait_group. */
void pp_engine_callback_done(pp_engine *e, pp_job *j);

/* pp_engine_set_nworkers: grow or shrink the local pool. Shrinking retires
 * idle workers first; busy ones finish what they hold. 0 or PP_EINVAL. */
int pp_engine_set_nworkers(pp_engine *e, int n);

/* pp_engine_get_stats: a consistent snapshot. Any thread. */
void pp_engine_get_stats(pp_engine *e, pp_engine_stats *out);

/* pp_engine_shm: the engine's shared-memory arena (borrowed: valid while
 * the engine is, pp_shm_ref it to keep it), or NULL without one. Jobs whose
 * arguments are a large buffer section are made in it (pp_job_new_shm), so
 * local workers read them in place. Any thread. */
pp_shm *pp_engine_shm(pp_engine *e);

/* pp_engine_worker_pids: copy up to max live worker pids and, when njobs is
 * not NULL, the number of results each returned. Returns the count. */
int pp_engine_worker_pids(pp_engine *e, int *pids, uint64_t *njobs, int max);

#endif
