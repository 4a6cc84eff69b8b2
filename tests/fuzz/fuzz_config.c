/* fuzz_config.c — fuzz target: ppserver's config-file parser (config.c),
 * through its one entry point, ppsrv_config_load, as `ppserver -c FILE`
 * runs it: the input is the file's contents, written to a private (0600)
 * temporary file (removed at exit). The secret is given on the command line, so the other
 * secret sources are never consulted. Checks, besides memory safety and
 * leaks: the result is 0 or 2, an error comes with a message, and a loaded
 * configuration holds values in their documented ranges.
 *
 * Input: the config file's bytes. */
#include "fuzz.h"

#include "config.h"
#include "pp_common.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static int cfg_fd = -1;
static char cfg_path[64];

/* remove_cfg: at exit, the temporary file goes. */
static void remove_cfg(void) {
  if (cfg_path[0])
    unlink(cfg_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  PP_UNUSED(argc);
  PP_UNUSED(argv);
  char tmpl[] = "/tmp/pp-fuzz-config-XXXXXX";
  cfg_fd = mkstemp(tmpl);
  if (cfg_fd < 0)
    __builtin_trap();
  fchmod(cfg_fd, 0600);
  snprintf(cfg_path, sizeof cfg_path, "%s", tmpl);
  atexit(remove_cfg);
  unsetenv("PP_SECRET");
  setenv("HOME", "/nonexistent-pp-fuzz-home", 1);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (cfg_fd < 0)
    LLVMFuzzerInitialize(NULL, NULL);
  if (ftruncate(cfg_fd, 0) != 0 ||
      (size > 0 && pwrite(cfg_fd, data, size, 0) != (ssize_t)size))
    __builtin_trap();
  char a0[] = "ppserver", a1[] = "-c", a3[] = "-s", a4[] = "fuzz-secret";
  char path[sizeof cfg_path];
  memcpy(path, cfg_path, sizeof path);
  char *argv[] = {a0, a1, path, a3, a4, NULL};
  ppsrv_config cfg;
  char err[1024];
  int rc = ppsrv_config_load(&cfg, 5, argv, err, sizeof err);
  if (rc != 0 && rc != 2)
    __builtin_trap();
  if (rc == 2 && err[0] == '\0')
    __builtin_trap(); /* an error without a message */
  if (rc == 0 && !cfg.help) {
    if (cfg.port < 0 || cfg.port > 65535 || cfg.nworkers < 0 ||
        cfg.socket_timeout < 1 || cfg.timeout < 0 || cfg.secret == NULL ||
        cfg.secret_len == 0 || cfg.log_format == NULL ||
        cfg.interface == NULL || cfg.python == NULL)
      __builtin_trap();
  }
  ppsrv_config_free(&cfg);
  return 0;
}
