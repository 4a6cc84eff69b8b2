/* wboot.c — the command that starts one of ppserver's workers. Workers
 * start exactly as the client's local workers do: `python -S -c <boot>
 * PARENT_PID PROTO RESTART` with PYTHONPATH set to the interpreter's full
 * sys.path, where <boot> registers a bare `pp` package and imports only
 * pp._worker (not pp/__init__, which costs more than the interpreter's own
 * start). The boot, the flags and the path have one definition, the module
 * pp._boot (python/pp/_boot.py), which pp.Server uses too: ppserver asks
 * the interpreter for them once, at start-up, importing only that module
 * (under a bare package, as a worker does), instead of keeping a copy.
 *
 * When the interpreter cannot answer (pp not importable, or too old to
 * have pp._boot, or --python not a Python), the workers start with the full
 * package import as before, so a failure to start is reported the usual
 * way. With --start-method fork (the default) the same interpreter,
 * started once with pp._boot.TEMPLATE_BOOT, is the fork server that forks
 * every worker (docs/protocol.md 4.3); an interpreter whose pp has no
 * TEMPLATE_BOOT (an older pp) gets spawned workers. Main thread, before
 * the engine (and its threads) exist. */
#include "ppsrv_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* The question, run with site (as the client itself runs): the site flags,
 * the boot filled with the package's directory, the workers' PYTHONPATH
 * and the fork server's boot (empty when this pp has none), each
 * NUL-terminated. */
static const char wboot_query[] =
    "import sys, types, importlib.machinery as m\n"
    "d = m.PathFinder.find_spec('pp').submodule_search_locations[0]\n"
    "p = types.ModuleType('pp'); p.__path__ = [d]; p.__package__ = 'pp'\n"
    "sys.modules['pp'] = p\n"
    "from pp import _boot as b\n"
    "t = getattr(b, 'TEMPLATE_BOOT', None)\n"
    "sys.stdout.write(' '.join(b.site_flags()) + '\\0' + b.WORKER_BOOT % d +"
    " '\\0' + b.worker_pythonpath() + '\\0' + (t % d if t else '') +"
    " '\\0')\n";

/* The old command, when the interpreter cannot say. */
static const char wboot_fallback[] = "import pp._worker as w; w.main()";

#define WBOOT_ANSWER_MAX (1u << 20)
#define WBOOT_TIMEOUT_MS 30000

/* now_ms: CLOCK_MONOTONIC in milliseconds. */
static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ask_python: run `python -c wboot_query` with stdin and stderr on
 * /dev/null; read its standard output (at most WBOOT_ANSWER_MAX bytes,
 * within WBOOT_TIMEOUT_MS, after which it is killed). Returns a malloc'd
 * buffer of *len bytes when it exited with status 0, NULL otherwise (why
 * is written to err). */
static char *ask_python(const char *python, size_t *len, char *err,
                        size_t errlen) {
  int fds[2];
  char *out = NULL;
  size_t n = 0;
  int status = 0;
  if (pipe2(fds, O_CLOEXEC) != 0) {
    snprintf(err, errlen, "pipe: %s", strerror(errno));
    return NULL;
  }
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(err, errlen, "fork: %s", strerror(errno));
    close(fds[0]);
    close(fds[1]);
    return NULL;
  }
  if (pid == 0) { /* child: async-signal-safe calls only */
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(devnull, 2);
    }
    dup2(fds[1], 1);
    char *argv[] = {(char *)python, "-c", (char *)wboot_query, NULL};
    execvp(python, argv);
    _exit(127);
  }
  close(fds[1]);
  out = malloc(WBOOT_ANSWER_MAX);
  uint64_t deadline = now_ms() + WBOOT_TIMEOUT_MS;
  int timed_out = 0;
  for (;;) {
    uint64_t t = now_ms();
    if (t >= deadline) {
      timed_out = 1;
      break;
    }
    struct pollfd p = {fds[0], POLLIN, 0};
    int rc = poll(&p, 1, (int)(deadline - t));
    if (rc < 0 && errno == EINTR)
      continue;
    if (rc <= 0) {
      timed_out = rc == 0;
      break;
    }
    if (out == NULL || n == WBOOT_ANSWER_MAX)
      break; /* no room: treated as no answer below */
    ssize_t r = read(fds[0], out + n, WBOOT_ANSWER_MAX - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    n += (size_t)r;
  }
  close(fds[0]);
  if (timed_out)
    kill(pid, SIGKILL);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
    ;
  if (timed_out) {
    snprintf(err, errlen, "no answer within %d s", WBOOT_TIMEOUT_MS / 1000);
  } else if (out == NULL) {
    snprintf(err, errlen, "out of memory");
  } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    if (WIFSIGNALED(status))
      snprintf(err, errlen, "killed by signal %d", WTERMSIG(status));
    else
      snprintf(err, errlen, "exit status %d", WEXITSTATUS(status));
  } else if (n == WBOOT_ANSWER_MAX) {
    snprintf(err, errlen, "answer too long");
  } else {
    *len = n;
    return out;
  }
  free(out);
  return NULL;
}

/* ppsrv__wcmd_free (ppsrv_int.h). */
void ppsrv__wcmd_free(ppsrv_wcmd *w) {
  free(w->boot);
  free(w->tboot);
  if (w->env != NULL)
    for (char **e = w->env; *e; e++)
      free(*e);
  free(w->env);
  memset(w, 0, sizeof *w);
}

/* make_env: environ without PYTHONPATH, plus PYTHONPATH=path. Returns a
 * malloc'd NULL-terminated array of malloc'd strings, or NULL. */
static char **make_env(const char *path) {
  size_t n = 0;
  for (char **e = environ; *e; e++)
    n++;
  char **env = calloc(n + 2, sizeof *env);
  if (env == NULL)
    return NULL;
  size_t k = 0;
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "PYTHONPATH=", 11) == 0)
      continue;
    if ((env[k] = strdup(*e)) == NULL)
      goto fail;
    k++;
  }
  size_t plen = strlen(path);
  if ((env[k] = malloc(11 + plen + 1)) == NULL)
    goto fail;
  memcpy(env[k], "PYTHONPATH=", 11);
  memcpy(env[k] + 11, path, plen + 1);
  return env;
fail:
  for (size_t i = 0; i < k; i++)
    free(env[i]);
  free(env);
  return NULL;
}

/* split_answer: the answer is exactly four NUL-terminated fields; point
 * f[0..3] at them. Returns 0, or -1 when it is anything else. */
static int split_answer(const char *ans, size_t len, const char *f[4]) {
  size_t off = 0;
  for (int i = 0; i < 4; i++) {
    const char *z = off < len ? memchr(ans + off, '\0', len - off) : NULL;
    if (z == NULL)
      return -1;
    f[i] = ans + off;
    off = (size_t)(z - ans) + 1;
  }
  return off == len ? 0 : -1;
}

/* ppsrv__wcmd_init (ppsrv_int.h). */
int ppsrv__wcmd_init(ppsrv_wcmd *w, const ppsrv_config *cfg) {
  char err[128] = "";
  size_t len = 0;
  const char *f[4] = {NULL, NULL, NULL, NULL}; /* flags, boot, PYTHONPATH,
                                                  the fork server's boot */
  int no_site = 0;
  memset(w, 0, sizeof *w);
  snprintf(w->pid, sizeof w->pid, "%d", (int)getpid());
  snprintf(w->proto, sizeof w->proto, "%d", cfg->proto >= 0 ? cfg->proto : 4);
  char *ans = ask_python(cfg->python, &len, err, sizeof err);
  if (ans != NULL) {
    if (split_answer(ans, len, f) != 0 || f[1][0] == '\0' ||
        (strcmp(f[0], "-S") != 0 && strcmp(f[0], "") != 0)) {
      snprintf(err, sizeof err, "answer not understood");
      f[1] = NULL;
    } else {
      no_site = f[0][0] != '\0';
    }
  }
  if (f[1] != NULL) {
    w->boot = strdup(f[1]);
    w->env = make_env(f[2]);
    if (!cfg->spawn && f[3][0] != '\0')
      w->tboot = strdup(f[3]);
    if (w->boot == NULL || w->env == NULL ||
        (!cfg->spawn && f[3][0] != '\0' && w->tboot == NULL)) {
      free(ans);
      ppsrv__wcmd_free(w);
      pp_log(PP_LOG_ERROR, "out of memory");
      return PP_ENOMEM;
    }
    w->fast = 1;
  } else {
    pp_log(PP_LOG_WARNING,
           "cannot ask %s for pp's worker boot (%s): workers start with the"
           " full package import",
           cfg->python, err);
  }
  free(ans);
  size_t k = 0;
  w->argv[k++] = cfg->python;
  if (no_site)
    w->argv[k++] = "-S";
  w->argv[k++] = "-c";
  w->argv[k++] = w->fast ? w->boot : (char *)wboot_fallback;
  w->argv[k++] = w->pid;
  w->argv[k++] = w->proto;
  w->argv[k++] = cfg->restart ? "1" : "0";
  w->argv[k] = NULL;
  if (w->tboot != NULL) { /* the same command, serving forks */
    for (size_t i = 0; i <= k; i++)
      w->targv[i] = w->argv[i];
    w->targv[no_site ? 3 : 2] = w->tboot;
  }
  pp_log(PP_LOG_INFO, "workers %s",
         w->tboot ? "are forked from a fork server (--start-method fork)"
         : cfg->spawn ? "start as fresh interpreters (--start-method spawn)"
                      : "start as fresh interpreters (this pp has no fork"
                        " server)");
  pp_log(PP_LOG_DEBUG, "workers start with %s%s -c %s", cfg->python,
         no_site ? " -S" : "",
         w->fast ? "<pp._boot.WORKER_BOOT>" : wboot_fallback);
  return PP_OK;
}
