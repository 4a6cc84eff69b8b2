/* main.c — the ppserver program: parse the command line and config file,
 * set up logging and process limits, then hand over to the server
 * (server.c) until it stops. A standalone C program: no libpython; the
 * Python worker processes are separate interpreters started by the engine. */
#include "config.h"
#include "files.h"
#include "logsink.h"
#include "server.h"

#include "auth.h"
#include "pp_common.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

/* raise_nofile: lift the soft open-files limit to the hard limit so a
 * thousand idle clients do not exhaust file descriptors. Logs the result. */
static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  if (rl.rlim_cur < rl.rlim_max) {
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
      pp_log(PP_LOG_WARNING, "cannot raise the open files limit from %llu: %s",
             (unsigned long long)old, strerror(errno));
    else
      pp_log(PP_LOG_DEBUG, "open files limit raised from %llu to %llu",
             (unsigned long long)old, (unsigned long long)rl.rlim_cur);
  }
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 2048)
    pp_log(PP_LOG_WARNING,
           "open files limit is %llu: at most that many clients at once",
           (unsigned long long)rl.rlim_cur);
}

/* python_found: whether the worker interpreter can be executed: a path
 * with a slash must be executable, a bare name must be found on PATH. */
static int python_found(const char *python) {
  if (strchr(python, '/') != NULL)
    return access(python, X_OK) == 0;
  const char *path = getenv("PATH");
  if (path == NULL)
    path = "/usr/local/bin:/usr/bin:/bin";
  while (*path) {
    const char *end = strchr(path, ':');
    size_t n = end ? (size_t)(end - path) : strlen(path);
    char full[4096];
    if (n == 0)
      snprintf(full, sizeof full, "./%s", python);
    else
      snprintf(full, sizeof full, "%.*s/%s", (int)n, path, python);
    if (access(full, X_OK) == 0)
      return 1;
    if (end == NULL)
      break;
    path = end + 1;
  }
  return 0;
}

/* gen_secret: --gen-secret: print 32 random bytes (256 bits, well above
 * the 128 the README asks for) as 64 hex digits and a newline. Returns the
 * exit status: 0, or 1 when the CSPRNG fails. */
static int gen_secret(void) {
  uint8_t r[32];
  char hex[2 * sizeof r + 1];
  if (pp_auth_random(r, sizeof r) != PP_OK) {
    fprintf(stderr, "ppserver: error: no random bytes from the system\n");
    return 1;
  }
  for (size_t i = 0; i < sizeof r; i++)
    snprintf(hex + 2 * i, 3, "%02x", r[i]);
  pp_auth_wipe(r, sizeof r);
  printf("%s\n", hex);
  pp_auth_wipe(hex, sizeof hex);
  return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  ppsrv_config cfg;
  char err[1024];
  int rc = ppsrv_config_load(&cfg, argc, argv, err, sizeof err);
  if (rc == 0 && cfg.help) {
    fputs(ppsrv_usage(), stdout);
    ppsrv_config_free(&cfg);
    return 0;
  }
  if (rc == 0 && cfg.gen_secret) {
    ppsrv_config_free(&cfg);
    return gen_secret();
  }
  if (rc == 0 && cfg.version) {
    printf("%s\n", ppsrv_version());
    ppsrv_config_free(&cfg);
    return 0;
  }
  if (rc != 0) {
    fprintf(stderr, "ppserver: error: %s\n", err);
    ppsrv_config_free(&cfg);
    return 2;
  }
  if (!python_found(cfg.python)) {
    fprintf(stderr,
            "ppserver: error: cannot find the worker interpreter '%s'%s; give"
            " one with --python PATH\n",
            cfg.python, strchr(cfg.python, '/') ? "" : " on PATH");
    ppsrv_config_free(&cfg);
    return 2;
  }
  if (ppsrv_logsink_install(cfg.log_format, cfg.debug) != 0) {
    fprintf(stderr, "ppserver: error: out of memory\n");
    ppsrv_config_free(&cfg);
    return 1;
  }
  signal(SIGPIPE, SIG_IGN); /* a vanished client is a write error, not a kill */

  for (size_t off = 0; off < cfg.warnings_len; off += strlen(cfg.warnings + off) + 1)
    pp_log(PP_LOG_WARNING, "%s", cfg.warnings + off);
  if (cfg.secret_source == PPSRV_SECRET_ARGV)
    pp_log(PP_LOG_WARNING,
           "the secret was given with -s: it is visible to other users in ps(1)"
           " until now (it has been wiped from the command line). Prefer"
           " --secret-file, PP_SECRET or the config file");
  else
    pp_log(PP_LOG_DEBUG, "secret from %s (%s)",
           ppsrv_secret_source_name(cfg.secret_source), cfg.secret_origin);
  if (cfg.config_path != NULL)
    pp_log(PP_LOG_DEBUG, "read config file %s", cfg.config_path);
  ppsrv_warn_if_root();
  raise_nofile();

  rc = ppsrv_run(&cfg);

  ppsrv_logsink_uninstall();
  ppsrv_config_free(&cfg);
  return rc;
}
