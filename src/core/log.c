/* log.c — the core's logging hook and error-code names. The extension points
 * the hook at Python's logging; the standalone daemon leaves it on stderr. */
#include "pp_common.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

static pp_log_fn log_fn;
static void *log_ctx;
static int log_level = PP_LOG_WARNING;

const char *pp_strerror(int err) {
  switch (err) {
  case PP_OK: return "success";
  case PP_ENOMEM: return "out of memory";
  case PP_EINVAL: return "invalid argument";
  case PP_EMAGIC: return "bad frame magic";
  case PP_EVERSION: return "unsupported protocol version";
  case PP_ETYPE: return "unknown frame type";
  case PP_ETOOBIG: return "frame payload too large";
  case PP_EPROTO: return "protocol error";
  case PP_ETIMEDOUT: return "timed out";
  case PP_ECLOSED: return "engine closed";
  case PP_ESPAWN: return "cannot start worker process";
  case PP_ESTATE: return "invalid state";
  case PP_EIO: return "input/output error";
  case PP_EAGAIN: return "try again";
  case PP_EAUTH: return "authentication failed";
  default: return "unknown error";
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
