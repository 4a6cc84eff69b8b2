/* server.c — ppserver's lifecycle (ppsrv_run, see server.h): start the
 * loop, the listener, the engine (feed.c), the pid file, the signals and
 * timers; stop on SIGTERM/SIGINT or the -t idle timeout (BYE to every
 * client, every connection closed, the engine shut down, the pid file
 * removed); SIGUSR1 logs statistics. Client connections are conn.c's;
 * see ppsrv_int.h for the objects. Main thread only. */
#include "files.h"
#include "notify.h"
#include "ppsrv_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* The listen backlog: deep, so a flood of connections that the node sheds
 * and that are opened again at once cannot fill the accept queue (the
 * kernel drops a real client's SYN on a full queue: a retransmit after 1 s,
 * then 3 s, while the shed ones are accepted in order). The kernel caps it
 * at net.core.somaxconn (4096 on current kernels). */
#define PPSRV_LISTEN_BACKLOG 4096

/* ---- timers, signals, stop -------------------------------------------- */

/* on_sweep: the sweep timer's callback, every 250 ms: connection
 * deadlines (conn.c). Main thread. */
static void on_sweep(uv_timer_t *t) { ppsrv__conn_sweep(t->data); }

/* on_accept_turn: after each poll phase: a new loop turn may accept
 * PPSRV_ACCEPT_BATCH connections again, starting with the one held back
 * (accepting it makes libuv watch the listener again). Main thread. */
static void on_accept_turn(uv_check_t *h) {
  srv *s = h->data;
  s->accepts_this_turn = 0;
  if (s->accept_deferred && !s->stopping) {
    s->accept_deferred = 0;
    ppsrv__on_connection((uv_stream_t *)&s->listener, 0);
  }
}

/* close_handle: close one of the server's own handles (not a conn). */
static void close_handle(srv *s, uv_handle_t *h) {
  if (!uv_is_closing(h)) {
    h->data = s;
    uv_close(h, NULL);
  }
}

/* ppsrv__maybe_finish (ppsrv_int.h): once those handles are closed,
 * uv_run returns. */
void ppsrv__maybe_finish(srv *s) {
  if (!s->stopping || s->conns != NULL)
    return;
  close_handle(s, (uv_handle_t *)&s->sweep);
  close_handle(s, (uv_handle_t *)&s->accept_turn);
  close_handle(s, (uv_handle_t *)&s->idle_exit);
  close_handle(s, (uv_handle_t *)&s->sig_term);
  close_handle(s, (uv_handle_t *)&s->sig_int);
  close_handle(s, (uv_handle_t *)&s->sig_usr1);
  close_handle(s, (uv_handle_t *)&s->done_async);
}

/* server_stop: stop listening, say BYE to every client, close every
 * connection, shut the engine down (its workers are killed and reaped) and
 * let the loop end. Idempotent. */
static void server_stop(srv *s, const char *why) {
  if (s->stopping)
    return;
  pp_log(PP_LOG_INFO, "stopping: %s", why);
  s->stopping = 1;
  ppsrv_notify("STOPPING=1");
  ppsrv_announce_stop(s->announcer);
  s->announcer = NULL;
  for (conn *c = s->conns, *next; c; c = next) {
    next = c->next;
    if (c->state == C_READY)
      ppsrv__conn_send(c, PP_MSG_BYE, 0, 0, 0, NULL, 0);
    ppsrv__conn_close(c, PP_LOG_INFO, "server stopping");
  }
  if (s->listener_init)
    close_handle(s, (uv_handle_t *)&s->listener);
  if (s->engine != NULL)
    pp_engine_shutdown(s->engine); /* fails what is left; workers reaped */
  ppsrv__drain_done(s);
  ppsrv__maybe_finish(s);
}

/* log_stats: SIGUSR1: log connection, job and worker counters, and one
 * line per authenticated client. */
static void log_stats(srv *s) {
  pp_engine_stats es;
  int pids[1024];
  uint64_t pj[1024];
  char line[900];
  size_t n = 0;
  size_t queued = 0;
  pp_engine_get_stats(s->engine, &es);
  int np = pp_engine_worker_pids(s->engine, pids, pj, 1024);
  for (conn *c = s->conns; c; c = c->next)
    queued += c->queued.len;
  pp_log(PP_LOG_INFO,
         "stats: %zu clients connected, %zu connections open, %llu accepted,"
         " %llu authenticated, %llu failed the handshake, %llu dropped for"
         " errors, %llu refused (--max-clients), %llu shed while pending;"
         " up %.0f s",
         s->nclients, s->nconns, (unsigned long long)s->accepted,
         (unsigned long long)s->auth_ok, (unsigned long long)s->auth_failed,
         (unsigned long long)s->dropped, (unsigned long long)s->refused,
         (unsigned long long)s->shed,
         (double)(uv_now(&s->loop) - s->started_ms) / 1000.0);
  pp_log(PP_LOG_INFO,
         "stats: jobs done %llu (worker time %.3f s); %zu in the engine"
         " (%llu queued, %llu running); %zu waiting in client queues",
         (unsigned long long)s->jobs_done, (double)es.time_ns / 1e9,
         s->in_engine, (unsigned long long)es.queued,
         (unsigned long long)es.running, queued);
  n = (size_t)snprintf(line, sizeof line,
                       "stats: workers %d live of %d:", es.nlive, es.nworkers);
  for (int i = 0; i < np && n < sizeof line - 40; i++)
    n += (size_t)snprintf(line + n, sizeof line - n, " pid %d (%llu jobs)%s",
                          pids[i], (unsigned long long)pj[i],
                          i + 1 < np ? "," : "");
  pp_log(PP_LOG_INFO, "%s", line);
  for (conn *c = s->conns; c; c = c->next)
    if (c->state == C_READY)
      pp_log(PP_LOG_INFO,
             "stats: client %s: jobs done %llu, received %llu, queued %zu,"
             " in the engine %zu, connected %.0f s%s",
             c->peer, (unsigned long long)c->jobs_done,
             (unsigned long long)c->jobs_received, c->queued.len, c->engine.len,
             (double)(uv_now(&s->loop) - c->accepted_ms) / 1000.0,
             c->paused ? ", paused" : "");
}

/* on_signal: the signal handles' callback (in the loop, not a signal
 * handler): SIGUSR1 logs statistics; SIGTERM and SIGINT stop the server.
 * Main thread. */
static void on_signal(uv_signal_t *h, int signum) {
  srv *s = h->data;
  if (signum == SIGUSR1) {
    log_stats(s);
    return;
  }
  char why[64];
  snprintf(why, sizeof why, "received %s",
           signum == SIGINT ? "SIGINT" : "SIGTERM");
  server_stop(s, why);
}

/* on_idle_exit: the -t timer's callback: no authenticated client for that
 * long: stop (but not
 * in the middle of someone's handshake). The timer is stopped while clients
 * are connected and re-armed when the last goes. */
static void on_idle_exit(uv_timer_t *t) {
  srv *s = t->data;
  if (s->nclients > 0)
    return;
  for (conn *c = s->conns; c; c = c->next)
    if (c->state == C_HANDSHAKE) {
      /* someone is authenticating right now: look again shortly (each
       * handshake ends within its deadline) */
      uv_timer_start(&s->idle_exit, on_idle_exit, 250,
                     (uint64_t)s->cfg->timeout * 1000u);
      return;
    }
  char why[96];
  snprintf(why, sizeof why, "no clients for %d s (-t)", s->cfg->timeout);
  server_stop(s, why);
}

/* ---- start-up --------------------------------------------------------- */

/* resolve_listen: the address to bind: a numeric IPv4 or IPv6 address, or
 * a host name resolved with getaddrinfo. Returns 0 or a libuv error. */
static int resolve_listen(srv *s, struct sockaddr_storage *ss) {
  const char *iface = s->cfg->interface;
  int port = s->cfg->port;
  memset(ss, 0, sizeof *ss);
  if (uv_ip4_addr(iface, port, (struct sockaddr_in *)ss) == 0)
    return 0;
  const char *v6 = iface;
  char buf[96];
  size_t n = strlen(iface);
  if (n > 2 && iface[0] == '[' && iface[n - 1] == ']' && n - 2 < sizeof buf) {
    memcpy(buf, iface + 1, n - 2);
    buf[n - 2] = '\0';
    v6 = buf;
  }
  if (uv_ip6_addr(v6, port, (struct sockaddr_in6 *)ss) == 0)
    return 0;
  uv_getaddrinfo_t req;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = uv_getaddrinfo(&s->loop, &req, NULL, iface, NULL, &hints);
  if (rc != 0)
    return rc;
  if (req.addrinfo == NULL) {
    return UV_EAI_NONAME;
  }
  memcpy(ss, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
  if (ss->ss_family == AF_INET)
    ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
  else
    ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
  uv_freeaddrinfo(req.addrinfo);
  return 0;
}

/* start_listening: bind and listen; records the bound address (port 0 picks
 * one). Returns 0 or -1 after logging why. */
static int start_listening(srv *s) {
  struct sockaddr_storage ss;
  int rc = resolve_listen(s, &ss);
  if (rc != 0) {
    pp_log(PP_LOG_ERROR, "cannot resolve interface '%s': %s", s->cfg->interface,
           uv_strerror(rc));
    return -1;
  }
  uv_tcp_init(&s->loop, &s->listener);
  s->listener.data = s;
  s->listener_init = 1;
  rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&s->listener, PPSRV_LISTEN_BACKLOG,
                   ppsrv__on_connection);
  if (rc != 0) {
    pp_log(PP_LOG_ERROR, "cannot listen on %s port %d: %s", s->cfg->interface,
           s->cfg->port, uv_strerror(rc));
    return -1;
  }
  int len = sizeof ss;
  uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
  s->bound = ss;
  char host[64] = "?";
  if (ss.ss_family == AF_INET) {
    uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof host);
    snprintf(s->listen_name, sizeof s->listen_name, "%s:%d", host,
             ntohs(((struct sockaddr_in *)&ss)->sin_port));
  } else {
    uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof host);
    snprintf(s->listen_name, sizeof s->listen_name, "[%s]:%d", host,
             ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
  }
  return 0;
}

/* write_pid_file: write "<pid>\n" to the configured path, never through
 * a symbolic link (files.c). 0 or -1 after logging why. */
static int write_pid_file(srv *s) {
  char err[512];
  if (s->cfg->pid_file == NULL)
    return 0;
  if (ppsrv_pidfile_write(s->cfg->pid_file, err, sizeof err) != 0) {
    pp_log(PP_LOG_ERROR, "%s", err);
    return -1;
  }
  s->pidfile_written = 1;
  return 0;
}

/* set_limits: the caps on connections: --max-clients (by default from the
 * open-files limit, which main has raised as far as it may), and the caps
 * on pending handshakes (admit.c): in total at most half of it, per address
 * at most PPSRV_PREAUTH_PER_ADDR. */
static void set_limits(srv *s) {
  struct rlimit rl;
  long nofile = -1;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    nofile = rl.rlim_cur > (rlim_t)LONG_MAX ? LONG_MAX : (long)rl.rlim_cur;
  size_t fit = ppsrv__default_max_clients(nofile, s->cfg->nworkers);
  s->max_clients = s->cfg->max_clients > 0 ? (size_t)s->cfg->max_clients : fit;
  if (s->cfg->max_clients > 0 && s->max_clients > fit)
    pp_log(PP_LOG_WARNING,
           "--max-clients %zu: the open-files limit (%ld) leaves room for"
           " about %zu; accepting may fail before that many", s->max_clients,
           nofile, fit);
  s->max_pending = s->max_clients / 2 > 0 ? s->max_clients / 2 : 1;
  if (s->max_pending > PPSRV_PREAUTH_MAX)
    s->max_pending = PPSRV_PREAUTH_MAX;
  s->max_pending_addr = s->max_pending < PPSRV_PREAUTH_PER_ADDR
                            ? s->max_pending
                            : PPSRV_PREAUTH_PER_ADDR;
}

/* ppsrv_run (server.h): one multi-resource function with one exit path:
 * whatever failed, server_stop closes what was opened and the loop runs
 * until every handle is closed. */
int ppsrv_run(const ppsrv_config *cfg) {
  srv *s = calloc(1, sizeof *s);
  int rc = 1;
  if (s == NULL) {
    pp_log(PP_LOG_ERROR, "out of memory");
    return 1;
  }
  s->cfg = cfg;
  /* every key, TLS's pre-shared one included, comes from the secret
   * stretched once, before anything listens */
  if (pp_secret_stretch(cfg->secret, cfg->secret_len, s->key) != PP_OK) {
    pp_log(PP_LOG_ERROR, "cannot derive keys from the secret");
    free(s);
    return 1;
  }
  if (cfg->tls_mode != PPSRV_TLS_OFF) {
    char err[512];
    pp_tls_opts to = {s->key, sizeof s->key, cfg->tls_cert, cfg->tls_key,
                      cfg->tls_ca};
    if (pp_tls_ctx_new(PP_TLS_SERVER, &to, &s->tls_ctx, err, sizeof err) !=
        PP_OK) {
      pp_log(PP_LOG_ERROR, "%s", err[0] ? err : "cannot set up TLS");
      free(s);
      return 2;
    }
  }
  s->nworkers = (size_t)cfg->nworkers;
  s->idle_timeout_ms = (uint64_t)cfg->socket_timeout * 1000u;
  s->hs_timeout_ms = s->idle_timeout_ms < PPSRV_HANDSHAKE_TIMEOUT_MS
                         ? s->idle_timeout_ms
                         : PPSRV_HANDSHAKE_TIMEOUT_MS;
  set_limits(s);
  if (uv_loop_init(&s->loop) != 0 || uv_mutex_init(&s->done_mu) != 0) {
    pp_log(PP_LOG_ERROR, "cannot initialise the event loop");
    pp_tls_ctx_free(s->tls_ctx);
    free(s);
    return 1;
  }
  s->started_ms = uv_now(&s->loop);
  ppsrv__feed_init(s);
  uv_timer_init(&s->loop, &s->sweep);
  s->sweep.data = s;
  uv_check_init(&s->loop, &s->accept_turn);
  s->accept_turn.data = s;
  uv_check_start(&s->accept_turn, on_accept_turn);
  uv_timer_init(&s->loop, &s->idle_exit);
  s->idle_exit.data = s;
  uv_signal_init(&s->loop, &s->sig_term);
  uv_signal_init(&s->loop, &s->sig_int);
  uv_signal_init(&s->loop, &s->sig_usr1);
  s->sig_term.data = s->sig_int.data = s->sig_usr1.data = s;

  if (start_listening(s) != 0)
    goto stop;
  if (ppsrv__start_engine(s) != 0)
    goto stop;
  if (write_pid_file(s) != 0)
    goto stop;
  if (cfg->autodiscovery) {
    int port = s->bound.ss_family == AF_INET
                   ? ntohs(((struct sockaddr_in *)&s->bound)->sin_port)
                   : ntohs(((struct sockaddr_in6 *)&s->bound)->sin6_port);
    s->announcer =
        ppsrv_announce_start(&s->loop, cfg, s->key, sizeof s->key,
                             (struct sockaddr *)&s->bound, port);
  }
  uv_signal_start(&s->sig_term, on_signal, SIGTERM);
  uv_signal_start(&s->sig_int, on_signal, SIGINT);
  uv_signal_start(&s->sig_usr1, on_signal, SIGUSR1);
  uv_timer_start(&s->sweep, on_sweep, 250, 250);
  if (cfg->timeout > 0) {
    uv_timer_start(&s->idle_exit, on_idle_exit, (uint64_t)cfg->timeout * 1000u,
                   (uint64_t)cfg->timeout * 1000u);
  }
  char idle[48] = "";
  if (cfg->timeout > 0)
    snprintf(idle, sizeof idle, ", exits after %d s without clients",
             cfg->timeout);
  pp_log(PP_LOG_INFO,
         "ppserver pid %d listening on %s with %d workers (%s, pickle"
         " protocol %d, socket timeout %d s%s, at most %zu connections, %s)",
         (int)getpid(), s->listen_name, cfg->nworkers,
         cfg->restart ? "restart after each job" : "persistent workers",
         cfg->proto >= 0 ? cfg->proto : 4, cfg->socket_timeout, idle,
         s->max_clients,
         cfg->tls_mode == PPSRV_TLS_OFF ? "plain connections only (--no-tls)"
         : cfg->tls_mode == PPSRV_TLS_REQUIRE
             ? (cfg->tls_cert ? "TLS with certificates only" : "TLS only")
         : cfg->tls_cert ? "TLS with certificates, or plain"
                         : "TLS, or plain");
  /* under systemd Type=notify: the unit is started once clients can connect */
  char ready[300];
  snprintf(ready, sizeof ready, "READY=1\nSTATUS=listening on %s\nMAINPID=%d",
           s->listen_name, (int)getpid());
  ppsrv_notify(ready);
  rc = 0;

stop:
  if (rc != 0)
    server_stop(s, "start-up failed");
  uv_run(&s->loop, UV_RUN_DEFAULT);
  /* every handle is closed: the loop ended */
  if (s->engine != NULL) {
    pp_engine_free(s->engine);
    s->engine = NULL;
  }
  ppsrv__drain_done(s); /* nothing should be left; frees it if there is */
  if (s->pidfile_written)
    ppsrv_pidfile_remove(cfg->pid_file);
  if (uv_loop_close(&s->loop) != 0)
    pp_log(PP_LOG_DEBUG, "event loop closed with handles still open");
  uv_mutex_destroy(&s->done_mu);
  free(s->admit);
  pp_tls_ctx_free(s->tls_ctx);
  if (rc == 0)
    pp_log(PP_LOG_INFO, "ppserver stopped");
  free(s);
  return rc;
}
