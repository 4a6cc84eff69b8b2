/* ppsrv_int.h — ppserver's internals shared by its files:
 *
 *   conn.c    client connections and the protocol: accepting, reading,
 *             the handshake, sealed frames in and out, writing,
 *             back-pressure, liveness deadlines, closing.
 *   feed.c    feeding the engine: tickets (one per client job), the
 *             round robin over clients, the per-client share of the
 *             engine, completions and results back to the clients.
 *   server.c  lifecycle: start, listening, pid file, signals, idle exit,
 *             stop, the statistics log line (ppsrv_run, see server.h).
 *   wboot.c   the command that starts a worker (asked of the interpreter
 *             once at start-up: pp._boot, the client's fast boot).
 *   admit.c   admission before authentication: per-address failure
 *             back-off, caps on pending handshakes (shedding), rate-limited
 *             log lines.
 *
 * Threads: everything runs in the main thread's libuv loop, except
 * ppsrv__on_job_complete (feed.c), which the engine calls from its own
 * thread (or from ours inside pp_engine_cancel/shutdown) and which only
 * appends to the locked done list and wakes the loop.
 *
 * Objects:
 *   srv     the server: listener, timers, signals, the engine, the
 *           round-robin queue of connections that have jobs waiting.
 *   conn    one TCP client: handshake state, then a session (keys and
 *           sequence numbers), its read buffer, its function map, a FIFO of
 *           tickets not yet handed to the engine and a list of tickets in
 *           the engine. Freed in its close callback (conn.c).
 *   ticket  one client job: the pp_job (our reference) and the client's id
 *           and attempt. Lives until its job completes, even when its
 *           connection went away first (then t->c is NULL and the result is
 *           dropped).
 *
 * Names: ppsrv__ for functions used across these files, static otherwise. */
#ifndef PPSRV_INT_H
#define PPSRV_INT_H

#include "announce.h"
#include "auth.h"
#include "buf.h"
#include "engine.h"
#include "frame.h"
#include "job.h"
#include "pp_common.h"
#include "server.h"
#include "stretch.h"
#include "tls.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

typedef struct srv srv;
typedef struct conn conn;

typedef struct ticket {
  struct ticket *next, *prev; /* conn's queue or conn's engine list */
  struct ticket *dnext;       /* the done list */
  conn *c;                    /* NULL once the connection is gone */
  pp_job *job;                /* our reference */
  uint64_t client_id;
  uint32_t client_attempt;
  int in_engine;
  uint64_t est_ns; /* the work it was counted for in its client's share */
} ticket;

typedef struct tlist {
  ticket *head, *tail;
  size_t len;
} tlist;

/* One function a connection defined, with its run-time estimate. */
typedef struct fslot {
  pp_func *f;      /* a reference; NULL = empty slot */
  uint64_t est_ns; /* run time of its jobs here (feed.c); 0 = not measured */
} fslot;

/* Open-addressing map: function key -> fslot. */
typedef struct funcmap {
  fslot *slots;
  size_t cap, len;
} funcmap;

enum { C_HANDSHAKE = 0, C_READY = 1, C_CLOSING = 2 };

/* How a connection speaks, decided by the first byte the client sends
 * (docs/protocol.md 6.6): a TLS handshake record (0x16) or a pp frame. */
enum { CM_UNKNOWN = 0, CM_PLAIN = 1, CM_TLS = 2 };

/* A log line a flood could repeat: logged at most once per interval, with
 * the number left out since (admit.c). */
typedef struct ppsrv_ratelog {
  int logged;
  uint64_t last_ms;
  uint64_t skipped;
} ppsrv_ratelog;

/* One client address (the host, not the port) that is in a handshake or
 * failed one lately (admit.c). The table is allocated once, so pointers to
 * entries stay valid; an entry is reused only when nothing is pending from
 * its address and its failures are forgotten. */
typedef struct ppsrv_admit {
  uint8_t key[16];        /* IPv6 address, IPv4 as v4-mapped */
  char name[72];          /* the host, for logs */
  uint32_t pending;       /* its connections in C_HANDSHAKE */
  uint32_t fails;         /* failed handshakes in a row */
  uint64_t last_fail_ms;
  uint64_t hold_until_ms; /* its next handshake is not served before */
  uint64_t last_use_ms;
  ppsrv_ratelog log;      /* its failure lines */
} ppsrv_admit;

struct conn {
  uv_tcp_t tcp; /* first: the handle's data points back here too */
  srv *s;
  conn *next, *prev;       /* all connections */
  conn *rr_next, *rr_prev; /* the round-robin queue */
  int in_rr;
  int state;
  int handle_closing; /* uv_close called */
  int paused;         /* reading stopped for back-pressure */
  char peer[80];
  ppsrv_admit *adm;   /* C_HANDSHAKE: its address's entry (may be NULL) */
  int hs_stage;       /* handshake frames answered so far (shedding order) */
  int pending_counted; /* counted in srv.npending and adm->pending */
  int held;           /* C_HANDSHAKE: not read until hold_until_ms */
  uint64_t hold_until_ms;
  uint64_t frame_ms;  /* C_READY: when the partial frame in rbuf began */
  size_t func_bytes;  /* descriptor bytes in funcs */
  uint64_t rx_frames; /* sealed frames handled */
  int mode;        /* CM_*: plain sealed frames or TLS */
  pp_tls *tls;     /* CM_TLS: owned; freed in the close callback */
  pp_auth auth;    /* C_HANDSHAKE */
  pp_session sess; /* C_READY */
  pp_buf rbuf;
  int starved;        /* out of the round robin until its writes drain */
  uint64_t accepted_ms, last_rx_ms, closing_ms;
  uint64_t write_ms;  /* last write progress, or a write started on an
                         empty queue (times a stall) */
  uint64_t tx_ms;     /* last write progress: a write completed, or the
                         queue shrank between two sweeps (liveness) */
  size_t wq_seen;     /* bytes not yet taken by the client at the last sweep
                         (write queue and kernel, see conn.c unsent) */
  tlist queued;    /* not yet handed to the engine */
  size_t queued_bytes;
  tlist engine;    /* handed to the engine, no result yet */
  uint64_t engine_est_ns; /* estimated work of the tickets in `engine` */
  int capped;      /* out of the round robin: its share of the engine is full */
  int active;      /* counted in srv.nactive: has jobs queued or in the engine */
  funcmap funcs;
  pp_obj **objs;      /* objects put once this client sent (references) */
  size_t nobjs, capobjs;
  uint64_t obj_bytes; /* their bytes: at most cfg->obj_limit */
  uint64_t jobs_received, jobs_done;
  uv_shutdown_t shutdown_req;
  pp_buf outq;        /* sealed frames waiting for the end of this batch */
  conn *fnext;        /* the flush list */
  int in_flush;
};

struct srv {
  const ppsrv_config *cfg;
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_timer_t sweep;
  uv_timer_t idle_exit;
  uv_check_t accept_turn;  /* after each poll phase: accepting resumes */
  unsigned accepts_this_turn; /* connections accepted in this loop turn */
  int accept_deferred;     /* one waits in libuv (not accepted: libuv
                              stopped watching the listener) */
  uv_signal_t sig_term, sig_int, sig_usr1;
  uv_async_t done_async;
  int listener_init;
  pp_engine *engine;
  uv_mutex_t done_mu;
  ticket *done_head, *done_tail; /* [done_mu] */
  conn *conns;
  size_t nconns, nclients;
  size_t nopen; /* connections whose socket is still open (nconns counts
                   closed ones until their close callback) */
  conn *rr_head, *rr_tail;
  size_t in_engine, nworkers;
  size_t nactive;     /* connections with jobs queued or in the engine */
  int batching;       /* conn_send queues instead of writing */
  conn *flush_head;
  uint64_t hs_timeout_ms, idle_timeout_ms;
  uint64_t started_ms;
  uint8_t key[PP_STRETCH_LEN]; /* the secret, stretched (stretch.h) */
  uint64_t accepted, auth_ok, auth_failed, dropped, jobs_done;
  uint64_t refused, shed;  /* over --max-clients; pending handshakes shed */
  size_t max_clients;      /* connections open at once (--max-clients) */
  size_t max_pending, max_pending_addr; /* handshakes pending: total, per address */
  size_t npending;         /* connections in C_HANDSHAKE */
  ppsrv_admit *admit;      /* PPSRV_ADMIT_ADDRS entries, nadmit used */
  size_t nadmit;
  ppsrv_ratelog refuse_log, shed_log, accept_log;
  int stopping;
  int exit_code;
  int pidfile_written;
  char listen_name[96];
  struct sockaddr_storage bound; /* the listener's address */
  ppsrv_announcer *announcer;    /* -a; NULL otherwise */
  pp_tls_ctx *tls_ctx;           /* NULL with --no-tls */
};

/* ---- conn.c ------------------------------------------------------------ */

/* ppsrv__on_connection: the listener's callback (uv_listen): accept one
 * client. Main thread. */
void ppsrv__on_connection(uv_stream_t *server, int status);

/* ppsrv__conn_send: seal one frame for (type, flags, id, attempt) whose
 * payload is parts[0..n) and write it (or, inside a batch, queue it for
 * ppsrv__flush_batch). Returns 0, or a negative pp error after which the
 * connection is closing. Main thread; c must be C_READY. */
int ppsrv__conn_send(conn *c, uint8_t type, uint32_t flags, uint64_t id,
                     uint32_t attempt, const pp_part *parts, size_t n);

/* ppsrv__flush_batch: end a batch (s->batching): one write per connection
 * that queued frames and is still serving. Main thread. */
void ppsrv__flush_batch(srv *s);

/* ppsrv__conn_close: close c once: log why at `level`, release its jobs
 * (ppsrv__feed_detach) and shut the socket down gracefully. c's memory
 * stays valid until its close callback, a later loop turn. Main thread. */
void ppsrv__conn_close(conn *c, int level, const char *why);

/* ppsrv__conn_backlogged: whether c has at least PPSRV_WRITE_MAX_BYTES / div
 * bytes of results not yet written to its socket. */
int ppsrv__conn_backlogged(conn *c, size_t div);

/* ppsrv__conn_maybe_resume: c's queues drained: read again if reading was
 * paused for back-pressure and every queue is below half its limit. */
void ppsrv__conn_maybe_resume(conn *c);

/* ppsrv__func_slot: c's entry for the function with this key (borrowed,
 * valid until c's next FUNC frame or close), or NULL: the connection
 * forgot it (RESET) or is closing. */
fslot *ppsrv__func_slot(conn *c, const uint8_t *key);

/* ppsrv__conn_sweep: close connections past a deadline (the sweep timer,
 * every 250 ms). Main thread. */
void ppsrv__conn_sweep(srv *s);

/* ---- feed.c ------------------------------------------------------------ */

/* ppsrv__feed_job: queue one client job on c: a pp_job for function f with
 * a copy of the n argument bytes at args, remembering the client's id and
 * attempt. Returns 0 or PP_ENOMEM (nothing queued; the caller closes c). */
/* limits: {timeout ns, memory limit bytes} for the job (0 = none); objs:
 * the nobjs objects its arguments name (the job takes its references). */
int ppsrv__feed_job(conn *c, pp_func *f, pp_obj *const *objs, uint32_t nobjs,
                    uint32_t flags, uint64_t id,
                    uint32_t attempt, const uint8_t *args, size_t n,
                    const uint64_t limits[2]);

/* ppsrv__feed: hand waiting tickets to the engine, one per connection in
 * turn, as far as the engine's and each client's share allow (feed.c,
 * docs/protocol.md 7.4). Main thread; may resume a paused connection
 * (which closes it if reading cannot restart). */
void ppsrv__feed(srv *s);

/* ppsrv__feed_write_progress: c's unwritten results fell: a connection that
 * was starved (no job started while its results pile up) joins the round
 * robin again once below half the limit. */
void ppsrv__feed_write_progress(conn *c);

/* ppsrv__feed_stop: the client sent STOP for its job (id, attempt): a job
 * still queued here ends at once (RESULT ABORTED), one in the engine is
 * aborted with the grace; a job c does not hold is ignored. Main thread. */
void ppsrv__feed_stop(conn *c, uint64_t id, uint32_t attempt,
                      uint64_t grace_ns);

/* How long a departed client's running jobs may clean up before their
 * workers are killed. */
#define PPSRV_DEPARTED_GRACE_NS 200000000ull

/* ppsrv__feed_detach: c is closing: drop its queued tickets and cancel its
 * tickets still queued in the engine (a running job finishes; its result is
 * dropped). Main thread. */
void ppsrv__feed_detach(conn *c);

/* ppsrv__drain_done: deliver every completed ticket's RESULT (one write
 * per connection), then refill the engine. Main thread. */
void ppsrv__drain_done(srv *s);

/* ppsrv__feed_init: set up the loop handle that delivers completions
 * (before anything can close it). Main thread, at start-up. */
void ppsrv__feed_init(srv *s);

/* ppsrv__start_engine: the engine and its worker pool. Returns 0, or -1
 * after logging why. Main thread, at start-up. */
int ppsrv__start_engine(srv *s);

/* ---- admit.c ----------------------------------------------------------- */

/* ppsrv__ratelog: log fmt at level unless a line went through rl less than
 * every_ms ago (then it is only counted, and the next line says how many
 * were left out). Main thread. */
void ppsrv__ratelog(srv *s, ppsrv_ratelog *rl, int level, uint64_t every_ms,
                    const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

/* ppsrv__admit_get: the entry of sa's host (name: "host:port" for logs),
 * made on first use. Borrowed, valid for the server's life. NULL for a
 * family other than IPv4/IPv6, or when the table is full of busy entries
 * (that address is then neither delayed nor capped per address). */
ppsrv_admit *ppsrv__admit_get(srv *s, const struct sockaddr *sa,
                              const char *name);

/* ppsrv__admit_delay_ms: how long a's next handshake must still wait (0:
 * serve it now). */
uint64_t ppsrv__admit_delay_ms(const ppsrv_admit *a, uint64_t now);

/* ppsrv__admit_failed: an authentication from a (may be NULL) failed (a
 * proof that did not verify): lengthen its delay (100 ms doubling per
 * failure in a row, at most PPSRV_AUTH_DELAY_MAX_MS, forgotten after
 * PPSRV_AUTH_FORGET_MS without one) and log "connection PEER: WHY" at
 * WARNING at most once per PPSRV_AUTH_LOG_MS per address (DEBUG
 * otherwise). Returns 1 if the WARNING was logged. */
int ppsrv__admit_failed(srv *s, ppsrv_admit *a, const char *peer,
                        const char *why);

/* ppsrv__admit_ok: a authenticated: its failures are forgiven (and the
 * next failure is logged again). */
void ppsrv__admit_ok(ppsrv_admit *a);

/* ppsrv__admit_make_room: a new connection from a (may be NULL) is about
 * to start a handshake: while its address has max_pending_addr handshakes
 * pending, or the server max_pending, close one (from its address, or from
 * the address with the most), the one least far in its handshake, oldest
 * first. Logged at most once per PPSRV_RATELOG_MS. */
void ppsrv__admit_make_room(srv *s, ppsrv_admit *a);

/* ppsrv__default_max_clients: --max-clients when not given: the open-files
 * limit less what the listener, the loop, logging and nworkers workers
 * need. */
size_t ppsrv__default_max_clients(long nofile, int nworkers);

/* ---- wboot.c ----------------------------------------------------------- */

/* The command that starts one worker (pp_engine_opts.worker_argv/env), and
 * the fork server's (template_argv). */
typedef struct ppsrv_wcmd {
  char *argv[8];  /* NULL-terminated; borrows cfg->python and the fields */
  char *targv[8]; /* the fork server's, when tboot is set: the same with
                     tboot instead of boot */
  char **env;     /* owned; NULL = inherit (the fallback) */
  char *boot;     /* owned: the boot text the interpreter gave */
  char *tboot;    /* owned: the fork server's boot, or NULL (spawn) */
  char pid[24], proto[16];
  int fast;       /* 1: the client's fast boot; 0: the full-import fallback */
} ppsrv_wcmd;

/* ppsrv__wcmd_init: ask cfg->python for pp's worker boot and fill *w (see
 * wboot.c). Returns 0 (with the fallback command when the interpreter
 * could not answer, logged as a WARNING) or PP_ENOMEM. Blocks for one
 * interpreter start. Main thread, before the engine exists. */
int ppsrv__wcmd_init(ppsrv_wcmd *w, const ppsrv_config *cfg);

/* ppsrv__wcmd_free: release what *w owns. */
void ppsrv__wcmd_free(ppsrv_wcmd *w);

/* ---- server.c ---------------------------------------------------------- */

/* ppsrv__maybe_finish: once stopping and every connection is closed, close
 * the server's own handles so the loop ends. Main thread. */
void ppsrv__maybe_finish(srv *s);

#endif
