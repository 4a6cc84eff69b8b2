/* log.c — the core's logging hook and error-code names. The extension points
 * the hook at Python's logging; the standalone daemon leaves it on stderr. */
#include "pp_common.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <uv.h>

static pp_log_fn log_fn;
static void *log_ctx;
static int log_level = PP_LOG_WARNING;

const char *pp_strerror(int err) {
  switch (err) {
  case PP_OK: return "success";
#define PP__ERR_MSG(name, val, msg) case PP_##name: return msg;
  PP_ERRNO_MAP(PP__ERR_MSG)
#undef PP__ERR_MSG
  default: return "unknown error";
  }
}

const char *pp_err_name(int err) {
  switch (err) {
#define PP__ERR_NAME(name, val, msg) case PP_##name: return #name;
  PP_ERRNO_MAP(PP__ERR_NAME)
#undef PP__ERR_NAME
  default: return NULL;
  }
}

int pp_err_from_uv(int uvrc) {
  if (uvrc >= 0)
    return uvrc;
  if (uvrc >= PP_ERR_MIN && uvrc <= PP_ERR_MAX)
    return uvrc;
  switch (uvrc) {
  case UV_ENOMEM: case UV_ENOBUFS: return PP_ENOMEM;
  case UV_EINVAL: return PP_EINVAL;
  case UV_ETIMEDOUT: return PP_ETIMEDOUT;
  case UV_EAGAIN: return PP_EAGAIN;
  case UV_ECANCELED: return PP_ECLOSED;
  case UV_EOF: case UV_ECONNRESET: case UV_EPIPE: return PP_EPEER;
  case UV_ECONNREFUSED: return PP_ECONNREFUSED;
  case UV_EADDRINUSE: case UV_EADDRNOTAVAIL: return PP_EADDRINUSE;
  case UV_EAI_NONAME: case UV_EAI_NODATA: case UV_EAI_AGAIN: return PP_ENOTFOUND;
  case UV_ENOENT: case UV_EACCES: return PP_ESPAWN;
  default: return PP_EIO;
  }
}

void pp_log_set(pp_log_fn fn, void *ctx) {
  log_fn = fn;
  log_ctx = ctx;
}

void pp_log_set_level(int level) { log_level = level; }

int pp_log_enabled(int level) { return level >= log_level; }

void pp_log(int level, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  if (level < log_level)
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (log_fn != NULL)
    log_fn(log_ctx, level, msg);
  else
    fprintf(stderr, "pp[%d]: %s\n", level, msg);
}

uint64_t pp_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
