/* pp_common.h — error codes, logging hook and small helpers shared by every
 * file of the C core. The core never includes Python.h: it moves bytes. */
#ifndef PP_COMMON_H
#define PP_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Error codes: 0 is success, every failure is a negative number from this
 * table (libuv style). pp_strerror() names them. */
enum {
  PP_OK = 0,
  PP_ENOMEM = -1,     /* allocation failed */
  PP_EINVAL = -2,     /* bad argument */
  PP_EMAGIC = -3,     /* frame does not start with the pp magic */
  PP_EVERSION = -4,   /* frame carries a protocol version we do not speak */
  PP_ETYPE = -5,      /* unknown frame type */
  PP_ETOOBIG = -6,    /* declared payload length above the limit */
  PP_EPROTO = -7,     /* frame well formed but wrong in this context */
  PP_ETIMEDOUT = -8,  /* a wait ran out of time */
  PP_ECLOSED = -9,    /* the engine is shutting down or gone */
  PP_ESPAWN = -10,    /* a worker process could not be started */
  PP_ESTATE = -11,    /* operation not valid in the object's current state */
  PP_EIO = -12,       /* read or write failed */
  PP_EAGAIN = -13,    /* nothing to do yet; call again */
  PP_EAUTH = -20      /* the peer did not prove the secret / a MAC failed */
};

/* pp_strerror: a static, human-readable name for an error code. */
const char *pp_strerror(int err);

/* Log levels, numerically equal to Python's logging levels so the extension
 * can forward them unchanged. */
enum {
  PP_LOG_DEBUG = 10,
  PP_LOG_INFO = 20,
  PP_LOG_WARNING = 30,
  PP_LOG_ERROR = 40
};

/* A log sink: receives a level and a NUL-terminated message. Called from the
 * engine thread; must not block for long. */
typedef void (*pp_log_fn)(void *ctx, int level, const char *msg);

/* pp_log_set: install the process-wide sink (NULL restores stderr).
 * pp_log_set_level: messages below this level are dropped before formatting.
 * Both are meant to be called before engines start; they are not locked. */
void pp_log_set(pp_log_fn fn, void *ctx);
void pp_log_set_level(int level);
int pp_log_enabled(int level);

/* pp_log: printf-style logging through the installed sink. Any thread. */
void pp_log(int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Monotonic clock in nanoseconds. */
uint64_t pp_now_ns(void);

#define PP_UNUSED(x) ((void)(x))

#endif
