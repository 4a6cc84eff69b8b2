/* engine_int.h — internals shared by engine.c (thread, API, completion),
 * pool.c (local worker processes) and sched.c (dispatch policy). Not part of
 * the public API. Fields marked [mu] are protected by pp_engine.mu; fields
 * marked [loop] belong to the engine thread alone. */
#ifndef PP_ENGINE_INT_H
#define PP_ENGINE_INT_H

#include "buf.h"
#include "engine.h"
#include "keyset.h"

#include <uv.h>

/* Pipelining: a worker may hold more than one job when jobs are short, so
 * tiny jobs travel in batches; long jobs go one at a time (no tail skew). */
#define PP__PIPE_MAX_JOBS 256
#define PP__PIPE_BUDGET_NS 2000000ull /* estimated work queued per worker */
#define PP__KEYSET_MAX 4096           /* functions cached per worker */
#define PP__LOGQ_MAX 1000             /* queued log lines kept */
#define PP__MAX_SPAWN_FAILS 5         /* consecutive early deaths -> fail jobs */

typedef struct pp__worker {
  pp_engine *e;
  uv_process_t proc;
  uv_pipe_t pipe;
  int pid;
  int alive;        /* [loop] process running */
  int retiring;     /* [loop] gets no new jobs; BYE once drained */
  int bye_sent;     /* [loop] */
  int hello;        /* [loop] HELLO received: the interpreter started */
  int open_handles; /* [loop] proc and pipe handles not yet closed */
  int njobs;        /* [loop] jobs dispatched to this process */
  pp_jobq inflight; /* [loop] dispatched, no result yet, in order */
  uint64_t inflight_est_ns; /* [loop] */
  pp_buf rbuf;      /* [loop] bytes read, not yet framed */
  pp_keyset known;  /* [loop] function keys this process has */
  struct pp__worker *next;
} pp__worker;

enum pp__node_state {
  PP__NODE_IDLE = 0,   /* not connected; reconnect at next_attempt_ns */
  PP__NODE_RESOLVING,  /* getaddrinfo in flight */
  PP__NODE_CONNECTING, /* TCP connect in flight */
  PP__NODE_HANDSHAKE,  /* authenticating */
  PP__NODE_AUTHED,     /* authenticated, waiting for the node's HELLO */
  PP__NODE_READY,      /* serving jobs */
  PP__NODE_CLOSING     /* TCP handle closing */
};

/* A remote ppserver, from the client's side. [loop] unless noted. */
typedef struct pp__node {
  pp_engine *e;
  char *host, *port;
  pp_node_stats st;      /* [mu] name is immutable */
  int state;
  uv_getaddrinfo_t gai;
  uv_connect_t creq;
  uv_tcp_t tcp;
  int tcp_open;          /* tcp handle initialised and not yet closed */
  int gai_busy;          /* getaddrinfo request outstanding */
  struct pp_auth *auth;  /* handshake state while HANDSHAKE */
  struct pp_session *sess;
  pp_jobq inflight;      /* dispatched, no result yet */
  uint64_t inflight_est_ns;
  pp_buf rbuf;
  pp_keyset known;
  uint64_t state_since_ns, last_rx_ns, last_ping_ns, next_attempt_ns;
  unsigned backoff_ms;
  int ever_ready;
  /* auto-discovery (discover.c); all 0 for configured nodes */
  int discovered;        /* the record was made from an announcement */
  int dormant;           /* stopped announcing while not connected: no
                            reconnect attempts until it announces again */
  uint64_t announced_ns; /* last announcement accepted */
  uint64_t announce_ms;  /* its timestamp: older or equal ones are replays */
  uint64_t interval_ns;  /* the node's announce period */
  struct pp__node *next;
} pp__node;

#define PP__MAX_DISCOVERED 1024 /* node records made from announcements */

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
  uint8_t *secret;
  size_t secret_len;
  uint64_t node_timeout_ns, no_capacity_ns;
  uint32_t max_frame;
  uint16_t *disco_ports; /* auto-discovery UDP ports (ndisco of them) */
  int ndisco;

  uv_loop_t loop;
  uv_async_t async;
  uv_timer_t respawn_timer;
  uv_timer_t tick;      /* node heartbeats, reconnects, capacity checks */
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
  uint64_t njobs, time_ns;
  int *pids;           /* live worker pids */
  uint64_t *pid_jobs;  /* results each of them returned */
  int npids;
  int nlive;

  /* [loop] */
  pp__worker *workers;
  int spawn_fails;     /* consecutive workers that died before HELLO */
  int respawn_due;     /* the backoff timer allows one spawn attempt */
  int stopping;
  pp__node *nodes;       /* appended to under mu (node_stats reads it) */
  int ndiscovered;
  struct pp__disco *disco; /* NULL without auto-discovery */
  uint64_t starved_since_ns, starved_warned_ns;
};

/* engine.c */
/* pp__log: log through the engine (queued for the callback thread when
 * queue_logs is set, else pp_log). Engine thread. */
void pp__log(pp_engine *e, int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* pp__complete: finish a job. Caller holds mu; consumes the engine's
 * reference; takes ownership of result and errmsg (either may be NULL). */
void pp__complete(pp_engine *e, pp_job *j, int status, uint8_t *result,
                  size_t len, char *errmsg);

/* pool.c — engine thread only */
/* pp__pool_adjust: spawn or retire workers to reach the target size. */
void pp__pool_adjust(pp_engine *e);
/* pp__pool_kill_all: engine stopping: kill every worker process. */
void pp__pool_kill_all(pp_engine *e);
/* pp__worker_send_jobs: write every job of w->inflight from `first` on
 * (with FUNC frames for functions w has not seen). Returns 0 or an error, in
 * which case the worker has been killed and its jobs will be requeued. */
int pp__worker_send_jobs(pp__worker *w, pp_job *first);
/* pp__worker_can_take: whether w may be given one more job now. */
int pp__worker_can_take(const pp__worker *w);

/* node.c — engine thread only */
/* pp__nodes_init: create the node records (no I/O yet). 0 or PP_ENOMEM. */
int pp__nodes_init(pp_engine *e, char *const *specs);
/* pp__nodes_start: start the tick timer that connects and watches nodes. */
void pp__nodes_start(pp_engine *e);
/* pp__nodes_stop: engine stopping: fail in-flight jobs, close everything. */
void pp__nodes_stop(pp_engine *e);
/* pp__nodes_free: after the loop ended. */
void pp__nodes_free(pp_engine *e);
int pp__node_can_take(const pp__node *n);
/* pp__node_send_jobs: seal and write every job of n->inflight from first. */
void pp__node_send_jobs(pp__node *n, pp_job *first);

/* pp__node_discovered: an authenticated announcement says a node listens
 * on ip:port. Makes a node record the first time (and starts connecting),
 * wakes a dormant one, ignores replays (time_ms not newer than the last).
 * Engine thread. */
void pp__node_discovered(pp_engine *e, const char *ip, unsigned port,
                         uint32_t interval_ms, uint64_t time_ms);

/* discover.c — engine thread only */
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

/* sched.c — engine thread only */
/* pp__dispatch: hand queued jobs to workers with room, round robin, then
 * write them. */
void pp__dispatch(pp_engine *e);
/* pp__estimate: run-time estimate used for pipelining decisions. */
uint64_t pp__estimate(const pp_job *j);
/* pp__observe: fold a measured run time into the function's estimate. */
void pp__observe(pp_func *f, uint64_t runtime_ns);

#endif
