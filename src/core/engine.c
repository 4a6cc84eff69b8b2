/* engine.c — the top of the core: the engine's thread and libuv loop (or
 * the embedder's loop, pp_engine_opts.loop, with no thread of its own), the
 * one dispatch per loop turn (a prepare handle runs it when something asked
 * for it), the tick timer (node heartbeats and reconnects, discovery
 * queries, the no-capacity check), starting and stopping discovery, and the
 * public API (submit, cancel, waits, events, pool size, stats). Policy is
 * sched.c, transports pool.c and node.c, completion complete.c. See
 * engine_int.h for the layers and for which thread owns what. */
#include "engine_int.h"
#include "tls.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <openssl/crypto.h>
#include <string.h>
#include <unistd.h>

/* ---- small helpers ---------------------------------------------------- */

static char **strv_dup(char *const *v) {
  size_t n = 0;
  if (v == NULL)
    return NULL;
  while (v[n] != NULL)
    n++;
  char **out = calloc(n + 1, sizeof *out);
  if (out == NULL)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    out[i] = strdup(v[i]);
    if (out[i] == NULL) {
      for (size_t k = 0; k < i; k++)
        free(out[k]);
      free(out);
      return NULL;
    }
  }
  return out;
}

static void strv_free(char **v) {
  if (v == NULL)
    return;
  for (size_t i = 0; v[i] != NULL; i++)
    free(v[i]);
  free(v);
}

/* ---- the engine thread ------------------------------------------------- */

#define TICK_MS 100
#define STARVED_WARN_NS 5000000000ull

/* run_dispatch: apply a pool-size change made by another thread, then hand
 * out work. The target is checked again under the lock that also guards
 * the queue, so a job queued after set_nworkers() returned never sees the
 * old pool. Engine thread, from on_dispatcher only. */
static void run_dispatch(pp_engine *e) {
  for (int tries = 0;; tries++) {
    pp__pool_adjust(e);
    uv_mutex_lock(&e->mu);
    if (pp__pool_live(e) <= e->target || tries >= 8)
      break; /* keep mu */
    uv_mutex_unlock(&e->mu);
  }
  /* hand-offs only while the pool has the size last asked for */
  e->pool_settled = pp__pool_live(e) == e->target;
  pp__dispatch(e); /* releases mu */
}

/* drop_released: tell every peer holding an object released since the
 * last turn to forget it (OBJ DROP), then drop the engine's references.
 * A peer whose write fails is dropped (its loss path requeues its jobs).
 * Engine thread, from on_dispatcher only. */
static void drop_released(pp_engine *e) {
  uv_mutex_lock(&e->mu);
  pp_obj **rel = e->released;
  size_t n = e->nreleased;
  e->released = NULL;
  e->nreleased = e->capreleased = 0;
  uv_mutex_unlock(&e->mu);
  if (n == 0)
    return;
  for (pp__peer *p = e->peers, *next; p; p = next) {
    next = p->pnext;
    int rc = PP_OK, emitted = 0;
    uv_mutex_lock(&e->mu); /* a submitting thread's hand-off waits */
    p->writing = 1;
    uv_mutex_unlock(&e->mu);
    for (size_t i = 0; i < n && rc >= 0; i++) {
      rc = pp__peer_forget(p, rel[i]);
      emitted |= rc > 0;
    }
    if (rc >= 0 && emitted)
      rc = p->ops->flush(p);
    uv_mutex_lock(&e->mu);
    p->writing = 0;
    uv_mutex_unlock(&e->mu);
    if (rc < 0) {
      char why[160];
      snprintf(why, sizeof why, "cannot send object releases: %s",
               pp_strerror(rc));
      pp_keyset_clear(&p->known);
      pp__peer_objs_clear(p);
      p->ops->drop(p, why);
    }
  }
  for (size_t i = 0; i < n; i++)
    pp_obj_unref(rel[i]);
  free(rel);
}

int pp_engine_obj_release(pp_engine *e, pp_obj *o) {
  if (atomic_exchange(&o->released, 1) != 0)
    return PP_OK;
  uv_mutex_lock(&e->mu);
  if (e->stopped) { /* no peer is left to tell */
    uv_mutex_unlock(&e->mu);
    return PP_OK;
  }
  if (e->nreleased == e->capreleased) {
    size_t cap = e->capreleased ? e->capreleased * 2 : 16;
    pp_obj **a = realloc(e->released, cap * sizeof *a);
    if (a == NULL) {
      uv_mutex_unlock(&e->mu);
      atomic_store(&o->released, 0);
      return PP_ENOMEM;
    }
    e->released = a;
    e->capreleased = cap;
  }
  pp_obj_ref(o);
  e->released[e->nreleased++] = o;
  uv_mutex_unlock(&e->mu);
  uv_async_send(&e->async);
  return PP_OK;
}

/* on_dispatcher: the prepare handle, once per loop turn before polling:
 * the one place a dispatch runs. Work asked for during it (a failed send
 * requeued jobs) wakes the loop for another turn instead of recursing. */
static void on_dispatcher(uv_prepare_t *h) {
  pp_engine *e = h->data;
  if (e->stopping)
    return;
  uv_mutex_lock(&e->mu);
  int stops = e->stops_wanted;
  e->stops_wanted = 0;
  if (e->abort_wanted) { /* mark the group's running jobs */
    e->abort_wanted = 0;
    for (pp__peer *p = e->peers; p; p = p->pnext)
      for (pp_job *j = p->inflight.head; j; j = j->next)
        if (j->stop_reason == 0 &&
            (e->abort_group < 0 || j->group == (uint64_t)e->abort_group)) {
          j->stop_reason = PP_JOB_ABORTED;
          j->stop_grace_ns = e->abort_grace_ns;
          stops = 1;
        }
  }
  int releases = e->nreleased > 0;
  uv_mutex_unlock(&e->mu);
  pp__pool_flush_rests(e); /* ends of hand-offs go before anything else */
  if (atomic_exchange(&e->direct_wake, 0))
    pp__pool_direct_done(e); /* what waiting callers left in read buffers */
  if (releases)
    drop_released(e);
  if (stops) /* stop requests from other threads: tell the transports */
    for (pp__peer *p = e->peers; p; p = p->pnext)
      pp__peer_stop_pending(p);
  if (!e->dispatch_wanted)
    return;
  e->dispatch_wanted = 0;
  run_dispatch(e);
  if (e->dispatch_wanted)
    uv_async_send(&e->async);
}

/* check_capacity: jobs are waiting and no peer can run them: warn every few
 * seconds naming the unreachable nodes, and fail them after the deadline. */
static void check_capacity(pp_engine *e, uint64_t now) {
  int capacity = pp__pool_live(e) > 0;
  for (pp__peer *p = e->peers; p && !capacity; p = p->pnext)
    capacity = p->ops->ready(p);
  uv_mutex_lock(&e->mu);
  size_t waiting = e->pending.len;
  uv_mutex_unlock(&e->mu);
  if (capacity || waiting == 0) {
    e->starved_since_ns = 0;
    return;
  }
  if (e->starved_since_ns == 0) {
    e->starved_since_ns = now;
    e->starved_warned_ns = 0;
  }
  if (now - e->starved_since_ns >= 1000000000ull &&
      now - e->starved_warned_ns >= STARVED_WARN_NS) {
    char names[512];
    pp__nodes_names(e, names, sizeof names);
    pp__log(e, PP_LOG_WARNING,
            "%zu jobs are waiting but there is no local worker and no "
            "reachable node%s%s%s", waiting, e->nodes ? " (unreachable: " : "",
            e->nodes ? names : "", e->nodes ? ")" : "");
    e->starved_warned_ns = now;
  }
  if (e->no_capacity_ns > 0 && now - e->starved_since_ns >= e->no_capacity_ns) {
    char msg[160];
    snprintf(msg, sizeof msg,
             "no local worker and no reachable node for %.1f s "
             "(no_capacity_timeout)", e->no_capacity_ns / 1e9);
    uv_mutex_lock(&e->mu);
    pp__fail_pending(e, PP_JOB_FAILED, msg);
    uv_mutex_unlock(&e->mu);
    e->starved_since_ns = 0;
  }
}

/* on_tick: every TICK_MS on the engine thread. */
static void on_tick(uv_timer_t *t) {
  pp_engine *e = t->data;
  uint64_t now = pp_now_ns();
  if (e->stopping)
    return;
  pp__nodes_tick(e, now);
  pp__pool_tick(e, now);
  if (e->disco)
    pp__disco_tick(e, now);
  check_capacity(e, now);
}

/* engine_stop: fail every job, kill every worker, close every handle; the
 * loop ends once the last one is closed. Engine thread. */
static void engine_stop(pp_engine *e) {
  if (e->stopping)
    return;
  e->stopping = 1;
  uv_mutex_lock(&e->mu);
  pp__fail_pending(e, PP_JOB_DESTROYED,
                   "the pp Server was destroyed before the job ran");
  for (pp__peer *p = e->peers; p; p = p->pnext)
    pp__peer_fail_all(p, PP_JOB_DESTROYED,
                      "the pp Server was destroyed while the job ran");
  uv_mutex_unlock(&e->mu);
  if (e->ndisco > 0)
    pp__disco_stop(e);
  pp__nodes_stop(e);
  pp__pool_stop(e);
  uv_timer_stop(&e->tick);
  uv_close((uv_handle_t *)&e->tick, NULL);
  uv_prepare_stop(&e->dispatcher);
  uv_close((uv_handle_t *)&e->dispatcher, NULL);
  uv_close((uv_handle_t *)&e->async, NULL);
}

/* on_async: woken by submit, set_nworkers, shutdown, or a dispatch that
 * wants another turn. Engine thread. */
static void on_async(uv_async_t *a) {
  pp_engine *e = a->data;
  uv_mutex_lock(&e->mu);
  int shutdown = e->shutdown;
  uv_mutex_unlock(&e->mu);
  if (shutdown) {
    engine_stop(e);
    return;
  }
  pp__want_dispatch(e);
}

/* stretch_work: libuv's pool thread: stretch the raw secret (stretch.h) into
 * e->key. Touches only e->secret (read, nobody else does until
 * stretch_done) and e->key/e->stretch_rc (written). */
static void stretch_work(uv_work_t *req) {
  pp_engine *e = req->data;
  e->stretch_rc = pp_secret_stretch(e->secret, e->secret_len, e->key);
  /* libcrypto keeps per-thread state (its error queue) for this pool
   * thread, which libuv never ends: free it now (made again if needed) */
  OPENSSL_thread_stop();
}

/* stretch_done: engine thread: the key is there (or could not be made):
 * forget the raw secret, then start discovery and let the tick connect the
 * nodes. Local workers were served meanwhile. */
static void stretch_done(uv_work_t *req, int status) {
  pp_engine *e = req->data;
  OPENSSL_cleanse(e->secret, e->secret_len);
  free(e->secret);
  e->secret = NULL;
  if (status != 0 || e->stretch_rc != PP_OK) {
    pp__log(e, PP_LOG_ERROR, "cannot derive keys from the secret (%s): no"
            " node will be used", pp_strerror(status != 0 ? pp_err_from_uv(status)
                                                          : e->stretch_rc));
    return;
  }
  if (e->tls_psk) {
    /* TLS's pre-shared key comes from the stretched secret too */
    char err[256] = "";
    pp_tls_opts to = {e->key, sizeof e->key, NULL, NULL, NULL};
    int rc = pp_tls_ctx_new(PP_TLS_CLIENT, &to, &e->tls_ctx, err, sizeof err);
    if (rc != PP_OK) {
      pp__log(e, PP_LOG_ERROR, "cannot set up TLS (%s): no node will be used",
              err[0] ? err : pp_strerror(rc));
      return; /* key_ready stays 0: never a plain connection instead */
    }
  }
  e->key_ready = 1;
  if (e->stopping)
    return;
  if (e->ndisco > 0)
    pp__disco_start(e);
  pp__want_dispatch(e);
}

/* engine_begin: start the tick, the dispatcher and the stretching of the
 * secret on the engine's loop. The loop's thread: the engine's own, or the
 * embedder's (external loop) inside pp_engine_new. */
static void engine_begin(pp_engine *e) {
  uv_timer_start(&e->tick, on_tick, 0, TICK_MS);
  uv_prepare_start(&e->dispatcher, on_dispatcher);
  if (e->secret != NULL) {
    e->stretch_req.data = e;
    int rc = uv_queue_work(e->loop, &e->stretch_req, stretch_work,
                           stretch_done);
    if (rc != 0) {
      e->stretch_rc = pp_err_from_uv(rc);
      stretch_done(&e->stretch_req, 0);
    }
  }
  pp__want_dispatch(e);
}

static void engine_main(void *arg) {
  pp_engine *e = arg;
  sigset_t all;
  /* Signals are for the embedding program's threads. Blocked here, a write
   * to a dead worker fails with EPIPE instead of raising SIGPIPE, and
   * SIGINT/SIGTERM reach the thread that handles them. */
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  engine_begin(e);
  uv_run(e->loop, UV_RUN_DEFAULT);
  uv_mutex_lock(&e->mu);
  e->stopped = 1;
  uv_cond_broadcast(&e->ev_cond);
  uv_cond_broadcast(&e->done_cond);
  uv_mutex_unlock(&e->mu);
}

/* ---- public API -------------------------------------------------------- */

static void engine_free_config(pp_engine *e) {
  pp__disco_free(e);
  pp__nodes_free(e);
  pp_tls_ctx_free(e->tls_ctx);
  e->tls_ctx = NULL;
  OPENSSL_cleanse(e->key, sizeof e->key);
  if (e->secret != NULL) {
    OPENSSL_cleanse(e->secret, e->secret_len);
    free(e->secret);
  }
  free(e->disco_ports);
  strv_free(e->argv);
  strv_free(e->tpl_argv);
  strv_free(e->env);
  free(e->cwd);
}

int pp_engine_new(const pp_engine_opts *o, pp_engine **out) {
  int rc = PP_ENOMEM;
  if (o == NULL || o->worker_argv == NULL || o->worker_argv[0] == NULL ||
      o->nworkers < 0 || o->max_retries < 0)
    return PP_EINVAL;
  pp_engine *e = calloc(1, sizeof *e);
  if (e == NULL)
    return PP_ENOMEM;
  e->argv = strv_dup(o->worker_argv);
  e->env = strv_dup(o->worker_env);
  e->tpl_argv = strv_dup(o->template_argv);
  e->cwd = o->worker_cwd ? strdup(o->worker_cwd) : NULL;
  if (e->argv == NULL || (o->worker_env && e->env == NULL) ||
      (o->template_argv && e->tpl_argv == NULL) ||
      (o->worker_cwd && e->cwd == NULL))
    goto fail_config;
  e->restart = o->restart;
  e->max_retries = o->max_retries;
  e->queue_logs = o->queue_logs;
  e->on_complete = o->on_complete;
  e->on_complete_ctx = o->on_complete_ctx;
  e->max_frame = o->max_frame ? o->max_frame : PP_FRAME_MAX_DEFAULT;
  e->obj_limit = o->obj_limit ? o->obj_limit : PP_OBJ_LIMIT_DEFAULT;
  e->capture_output = o->capture_output;
  e->max_output = o->max_output ? o->max_output : (1u << 20);
  e->max_node_workers = o->max_node_workers ? o->max_node_workers
                                             : PP_MAX_NODE_WORKERS_DEFAULT;
  if (e->max_node_workers > 65536)
    e->max_node_workers = 65536;
  e->node_timeout_ns =
      (uint64_t)(o->node_timeout_ms ? o->node_timeout_ms : 5000) * 1000000u;
  e->no_capacity_ns = (uint64_t)o->no_capacity_ms * 1000000u;
  int have_nodes = o->nodes != NULL && o->nodes[0] != NULL;
  if (o->ndiscover < 0 || o->ndiscover > 64 ||
      (o->ndiscover > 0 && o->discover_ports == NULL)) {
    rc = PP_EINVAL;
    goto fail_config;
  }
  if (have_nodes || o->ndiscover > 0) {
    rc = PP_EINVAL;
    if (o->secret == NULL || o->secret_len == 0 || o->secret_len > PP_SECRET_MAX)
      goto fail_config;
    for (int i = 0; i < o->ndiscover; i++)
      if (o->discover_ports[i] == 0)
        goto fail_config;
    rc = PP_ENOMEM;
    e->secret = malloc(o->secret_len);
    if (e->secret == NULL)
      goto fail_config;
    memcpy(e->secret, o->secret, o->secret_len);
    e->secret_len = o->secret_len;
    if (o->ndiscover > 0) {
      e->disco_ports = malloc((size_t)o->ndiscover * sizeof *e->disco_ports);
      if (e->disco_ports == NULL)
        goto fail_config;
      memcpy(e->disco_ports, o->discover_ports,
             (size_t)o->ndiscover * sizeof *e->disco_ports);
      e->ndisco = o->ndiscover;
    }
    rc = PP_EINVAL;
    if (o->nsubnets < 0 || o->nsubnets > PP_MAX_SUBNETS ||
        (o->nsubnets > 0 && (o->subnets == NULL || o->ndiscover == 0)))
      goto fail_config;
    for (int i = 0; i < o->nsubnets; i++) {
      uint32_t bits = o->subnets[2 * i + 1];
      if (bits < 8 || bits > 30)
        goto fail_config;
      e->subnet_mask[i] = 0xffffffffu << (32 - bits);
      e->subnet_net[i] = o->subnets[2 * i] & e->subnet_mask[i];
    }
    e->nsubnets = o->nsubnets;
    e->disco_any = o->disco_any || o->nsubnets == 0;
    rc = PP_ENOMEM;
    if (!o->plain && (o->tls_cert || o->tls_key || o->tls_ca)) {
      /* certificates: loaded now, so a bad file is an error of this call
       * (the secret is not used by TLS) */
      pp_tls_opts to = {o->secret, o->secret_len, o->tls_cert, o->tls_key,
                        o->tls_ca};
      rc = pp_tls_ctx_new(PP_TLS_CLIENT, &to, &e->tls_ctx, o->error,
                          o->error_len);
      if (rc != PP_OK)
        goto fail_config;
    } else if (!o->plain) {
      e->tls_psk = 1; /* keyed from the stretched secret in stretch_done */
    }
    rc = pp__nodes_init(e, o->nodes);
    if (rc != PP_OK)
      goto fail_config;
    rc = PP_ENOMEM;
  }
  e->target = o->nworkers;
  rc = PP_EIO;
  if (o->loop != NULL) {
    e->loop = o->loop; /* the embedder's: no thread of our own */
    e->external = 1;
  } else if (uv_loop_init(&e->own_loop) != 0) {
    goto fail_config;
  } else {
    e->loop = &e->own_loop;
  }
  if (uv_mutex_init(&e->mu) != 0)
    goto fail_loop;
  if (uv_cond_init(&e->done_cond) != 0)
    goto fail_mu;
  if (uv_cond_init(&e->ev_cond) != 0)
    goto fail_cond1;
  if (uv_async_init(e->loop, &e->async, on_async) != 0)
    goto fail_cond2;
  e->async.data = e;
  uv_timer_init(e->loop, &e->tick);
  e->tick.data = e;
  uv_prepare_init(e->loop, &e->dispatcher);
  e->dispatcher.data = e;
  pp__pool_init(e); /* a timer: cannot fail on an initialised loop */
  if (o->shm_size != UINT64_MAX) {
    uint64_t size = o->shm_size;
    if (size == 0) {
      long pg = sysconf(_SC_PAGESIZE), n = sysconf(_SC_PHYS_PAGES);
      size = pg > 0 && n > 0 ? (uint64_t)pg * (uint64_t)n / 2 : 0;
      if (size > ((uint64_t)4 << 30))
        size = (uint64_t)4 << 30;
      if (size < ((uint64_t)64 << 20))
        size = (uint64_t)64 << 20;
    }
    e->shm = size <= SIZE_MAX ? pp_shm_new((size_t)size) : NULL;
  }
  if (e->external) {
    engine_begin(e); /* runs when the embedder runs its loop */
    *out = e;
    return PP_OK;
  }
  if (uv_thread_create(&e->thread, engine_main, e) != 0) {
    pp_shm_unref(e->shm);
    e->shm = NULL;
    uv_close((uv_handle_t *)&e->async, NULL);
    uv_close((uv_handle_t *)&e->tick, NULL);
    uv_close((uv_handle_t *)&e->dispatcher, NULL);
    pp__pool_stop(e);
    uv_run(e->loop, UV_RUN_DEFAULT);
    goto fail_cond2;
  }
  e->thread_started = 1;
  *out = e;
  return PP_OK;

fail_cond2:
  uv_cond_destroy(&e->ev_cond);
fail_cond1:
  uv_cond_destroy(&e->done_cond);
fail_mu:
  uv_mutex_destroy(&e->mu);
fail_loop:
  if (!e->external)
    uv_loop_close(e->loop);
fail_config:
  engine_free_config(e);
  free(e);
  return rc;
}

void pp_engine_shutdown(pp_engine *e) {
  uv_mutex_lock(&e->mu);
  int was = e->shutdown;
  e->shutdown = 1;
  uv_mutex_unlock(&e->mu);
  if (e->external) {
    /* on the loop's thread: stop now; the handles close as the embedder
     * runs its loop on */
    if (!was) {
      engine_stop(e);
      uv_mutex_lock(&e->mu);
      e->stopped = 1;
      uv_cond_broadcast(&e->ev_cond);
      uv_cond_broadcast(&e->done_cond);
      uv_mutex_unlock(&e->mu);
    }
    return;
  }
  if (!was)
    uv_async_send(&e->async);
  if (e->thread_started) {
    uv_thread_join(&e->thread);
    e->thread_started = 0;
  }
}

void pp_engine_free(pp_engine *e) {
  pp_job *j;
  if (e == NULL)
    return;
  pp_engine_shutdown(e);
  while ((j = pp_jobq_pop(&e->evq)) != NULL)
    pp_job_unref(j);
  for (pp__logline *l = e->logq_head, *n; l; l = n) {
    n = l->next;
    free(l->msg);
    free(l);
  }
  pp__pool_free(e);
  if (!e->external)
    uv_loop_close(e->loop);
  uv_cond_destroy(&e->ev_cond);
  uv_cond_destroy(&e->done_cond);
  uv_mutex_destroy(&e->mu);
  free(e->group_pending);
  free(e->pids);
  free(e->pid_jobs);
  for (size_t i = 0; i < e->nreleased; i++)
    pp_obj_unref(e->released[i]);
  free(e->released);
  pp_shm_unref(e->shm); /* blocks of jobs still alive keep it */
  engine_free_config(e);
  free(e);
}

/* grow_groups: make group g addressable. Caller holds mu. 0 or PP_ENOMEM. */
static int grow_groups(pp_engine *e, uint32_t g) {
  if (g < e->ngroups)
    return PP_OK;
  size_t n = e->ngroups ? e->ngroups : 8;
  while (n <= g)
    n *= 2;
  uint64_t *p = realloc(e->group_pending, n * sizeof *p);
  if (p == NULL)
    return PP_ENOMEM;
  memset(p + e->ngroups, 0, (n - e->ngroups) * sizeof *p);
  e->group_pending = p;
  e->ngroups = n;
  return PP_OK;
}

int pp_engine_submit(pp_engine *e, pp_job *j) {
  uv_mutex_lock(&e->mu);
  if (e->shutdown) {
    uv_mutex_unlock(&e->mu);
    return PP_ECLOSED;
  }
  if (grow_groups(e, j->group) != PP_OK) {
    uv_mutex_unlock(&e->mu);
    return PP_ENOMEM;
  }
  j->id = ++e->next_id;
  j->submit_ns = pp_now_ns();
  e->group_pending[j->group]++;
  e->total_pending++;
  pp_job_ref(j);
  /* an idle worker and nothing queued: write it there from this thread */
  int handed = pp__pool_handoff(e, j);
  if (handed == 0)
    pp_jobq_push_back(&e->pending, j);
  uv_mutex_unlock(&e->mu);
  if (handed != 1)
    uv_async_send(&e->async);
  return PP_OK;
}

int pp_engine_cancel(pp_engine *e, pp_job *j) {
  int done = 0;
  uv_mutex_lock(&e->mu);
  if (atomic_load(&j->state) == PP_JOB_QUEUED && !e->stopped) {
    pp_jobq_remove(&e->pending, j);
    pp__complete(e, j, PP_JOB_CANCELLED, NULL, 0, NULL);
    done = 1;
  }
  uv_mutex_unlock(&e->mu);
  return done;
}

int pp_engine_abort(pp_engine *e, pp_job *j, uint64_t grace_ns) {
  int rc = 0, wake = 0;
  uv_mutex_lock(&e->mu);
  int st = atomic_load(&j->state);
  if (st == PP_JOB_QUEUED && !e->stopped) {
    pp_jobq_remove(&e->pending, j);
    j->stop_reason = PP_JOB_ABORTED; /* it never runs */
    pp__complete(e, j, PP_JOB_ABORTED, NULL, 0, pp__stop_message(j));
    rc = 1;
  } else if (st == PP_JOB_RUNNING) {
    if (j->stop_reason == 0) {
      j->stop_reason = PP_JOB_ABORTED;
      j->stop_grace_ns = grace_ns;
      e->stops_wanted = 1;
      wake = 1;
    }
    rc = j->stop_reason == PP_JOB_ABORTED;
  }
  uv_mutex_unlock(&e->mu);
  if (wake)
    uv_async_send(&e->async);
  return rc;
}

void pp_engine_abort_group(pp_engine *e, int64_t group, uint64_t grace_ns) {
  uv_mutex_lock(&e->mu);
  if (e->stopped) {
    uv_mutex_unlock(&e->mu);
    return;
  }
  for (pp_job *j = e->pending.head, *next; j; j = next) {
    next = j->next;
    if (group < 0 || j->group == (uint64_t)group) {
      pp_jobq_remove(&e->pending, j);
      j->stop_reason = PP_JOB_ABORTED;
      pp__complete(e, j, PP_JOB_ABORTED, NULL, 0, pp__stop_message(j));
    }
  }
  e->abort_group = group;
  e->abort_grace_ns = grace_ns;
  e->abort_wanted = 1;
  uv_mutex_unlock(&e->mu);
  uv_async_send(&e->async);
}

int pp_engine_want_callback(pp_engine *e, pp_job *j, void *udata) {
  int ok = 0;
  uv_mutex_lock(&e->mu);
  if (atomic_load(&j->state) != PP_JOB_DONE && !j->want_callback) {
    j->want_callback = 1;
    j->udata = udata;
    ok = 1;
  }
  uv_mutex_unlock(&e->mu);
  return ok;
}

/* timed_wait: one wait on cond, bounded by deadline. Caller holds mu.
 * Returns PP_ETIMEDOUT once the deadline has passed. */
static int timed_wait(pp_engine *e, uv_cond_t *c, uint64_t deadline) {
  uint64_t now = pp_now_ns();
  if (now >= deadline)
    return PP_ETIMEDOUT;
  e->waiters++;
  uv_cond_timedwait(c, &e->mu, deadline - now);
  e->waiters--;
  return PP_OK;
}

static uint64_t deadline_of(int64_t timeout_ns) {
  if (timeout_ns < 0)
    return UINT64_MAX;
  return pp_now_ns() + (uint64_t)timeout_ns;
}

/* Short jobs on idle workers come back within tens of microseconds: the
 * waiter spins this long before sleeping on the condition variable, which
 * saves a futex sleep and wake-up on both sides of a round trip. */
#define WAIT_SPIN_NS 100000u

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

int pp_engine_wait_job(pp_engine *e, pp_job *j, int64_t timeout_ns) {
  uint64_t deadline = deadline_of(timeout_ns);
  int rc = PP_OK;
  if (pp_job_done(j))
    return PP_OK;
  if (timeout_ns < 0 || timeout_ns >= (int64_t)WAIT_SPIN_NS) {
    uint64_t t0 = pp_now_ns();
    /* the result comes to us, not to the engine thread, when we may: in
     * the worker's mailbox (no system call on either side), else read
     * from its pipe ourselves (pool.c) */
    pp__worker *mb = pp__pool_mb_arm(e, j);
    int done = 0;
    do {
      if (mb != NULL)
        pp__pool_mb_poll(e, mb, j);
      if (pp_job_done(j) ||
          (pp__pool_direct_read(e, j) > 0 && pp_job_done(j))) {
        done = 1;
        break;
      }
      for (int i = 0; i < 32 && !done; i++) {
        done = pp_job_done(j);
        cpu_relax();
      }
      if (!done)
        sched_yield(); /* let a thread sharing this CPU (the engine) run */
    } while (!done && pp_now_ns() - t0 < WAIT_SPIN_NS);
    if (mb != NULL)
      pp__pool_mb_disarm(e, mb);
    if (done || pp_job_done(j))
      return PP_OK;
  }
  uv_mutex_lock(&e->mu);
  while (!pp_job_done(j) && rc == PP_OK)
    rc = timed_wait(e, &e->done_cond, deadline);
  uv_mutex_unlock(&e->mu);
  return pp_job_done(j) ? PP_OK : PP_ETIMEDOUT;
}

int pp_engine_wait_group(pp_engine *e, int64_t group, int64_t timeout_ns) {
  uint64_t deadline = deadline_of(timeout_ns);
  int rc = PP_OK;
  uv_mutex_lock(&e->mu);
  for (;;) {
    uint64_t left = group < 0 ? e->total_pending
                    : (uint64_t)group < e->ngroups ? e->group_pending[group]
                                                   : 0;
    if (left == 0)
      break;
    if (rc != PP_OK)
      break;
    rc = timed_wait(e, &e->done_cond, deadline);
  }
  uv_mutex_unlock(&e->mu);
  return rc;
}

uint64_t pp_engine_generation(pp_engine *e) {
  uv_mutex_lock(&e->mu);
  uint64_t g = e->generation;
  uv_mutex_unlock(&e->mu);
  return g;
}

int pp_engine_wait_generation(pp_engine *e, uint64_t gen, int64_t timeout_ns) {
  uint64_t deadline = deadline_of(timeout_ns);
  int rc = PP_OK;
  uv_mutex_lock(&e->mu);
  while (e->generation == gen && rc == PP_OK && !e->stopped)
    rc = timed_wait(e, &e->done_cond, deadline);
  rc = e->generation != gen ? PP_OK : PP_ETIMEDOUT;
  uv_mutex_unlock(&e->mu);
  return rc;
}

int pp_engine_next_event(pp_engine *e, int64_t timeout_ns, pp_event *ev) {
  uint64_t deadline = deadline_of(timeout_ns);
  int rc = PP_OK;
  memset(ev, 0, sizeof *ev);
  uv_mutex_lock(&e->mu);
  for (;;) {
    if (e->logq_head != NULL) {
      pp__logline *l = e->logq_head;
      e->logq_head = l->next;
      if (e->logq_head == NULL)
        e->logq_tail = NULL;
      e->logq_len--;
      ev->kind = PP_EV_LOG;
      ev->level = l->level;
      ev->msg = l->msg;
      free(l);
      break;
    }
    if (e->evq.head != NULL) {
      ev->kind = PP_EV_JOB;
      ev->job = pp_jobq_pop(&e->evq);
      break;
    }
    if (e->stopped) {
      rc = PP_ECLOSED;
      break;
    }
    if (timed_wait(e, &e->ev_cond, deadline) != PP_OK)
      break; /* kind NONE: timed out */
  }
  uv_mutex_unlock(&e->mu);
  return rc;
}

void pp_engine_callback_done(pp_engine *e, pp_job *j) {
  uv_mutex_lock(&e->mu);
  pp__group_finished(e, j);
  e->generation++;
  if (e->waiters > 0)
    uv_cond_broadcast(&e->done_cond);
  uv_mutex_unlock(&e->mu);
}

int pp_engine_set_nworkers(pp_engine *e, int n) {
  if (n < 0)
    return PP_EINVAL;
  uv_mutex_lock(&e->mu);
  if (n != e->target)
    e->pool_settled = 0; /* no hand-off until the engine has applied it */
  e->target = n;
  int closed = e->shutdown;
  uv_mutex_unlock(&e->mu);
  if (closed)
    return PP_ECLOSED;
  uv_async_send(&e->async);
  return PP_OK;
}

void pp_engine_get_stats(pp_engine *e, pp_engine_stats *out) {
  uv_mutex_lock(&e->mu);
  out->njobs = e->njobs;
  out->time_ns = e->time_ns;
  out->nworkers = e->target;
  out->nlive = e->nlive;
  out->queued = e->pending.len;
  out->running = e->running;
  out->template_pid = e->tpl_pid;
  out->handoffs = e->handoffs;
  out->direct_results = e->direct_results;
  uv_mutex_unlock(&e->mu);
  out->shm_used = e->shm ? pp_shm_used(e->shm) : 0;
  out->shm_size = e->shm ? pp_shm_size(e->shm) : 0;
  out->objs_sent = atomic_load(&e->objs_sent);
  out->obj_bytes_sent = atomic_load(&e->obj_bytes_sent);
  out->objs_dropped = atomic_load(&e->objs_dropped);
}

pp_shm *pp_engine_shm(pp_engine *e) { return e->shm; }

int pp_engine_worker_pids(pp_engine *e, int *pids, uint64_t *njobs, int max) {
  uv_mutex_lock(&e->mu);
  int n = e->npids < max ? e->npids : max;
  for (int i = 0; i < n; i++) {
    pids[i] = e->pids[i];
    if (njobs != NULL)
      njobs[i] = e->pid_jobs[i];
  }
  uv_mutex_unlock(&e->mu);
  return n;
}
