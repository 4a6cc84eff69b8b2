/* pp_common.h — error codes, logging hook and small helpers shared by every
 * file of the C core. The core never includes Python.h: it moves bytes. */
#ifndef PP_COMMON_H
#define PP_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Error codes: 0 is success, every failure is a negative number from this
 * one table (libuv style: the enum, the names and the messages are all
 * generated from PP_ERRNO_MAP). pp's codes live in [-5999, -5001], apart
 * from libuv's and errno's [-4095, -1], so a raw libuv result can never be
 * mistaken for a pp code: convert libuv results with pp_err_from_uv() where
 * they are received. XX(name, value, message). */
#define PP_ERRNO_MAP(XX)                                                       \
  XX(ENOMEM, -5001, "out of memory")                                          \
  XX(EINVAL, -5002, "invalid argument")                                       \
  XX(EMAGIC, -5003, "bad frame magic")                                        \
  XX(EVERSION, -5004, "unsupported protocol version")                         \
  XX(ETYPE, -5005, "unknown frame type")                                      \
  XX(ETOOBIG, -5006, "frame payload too large")                               \
  XX(EPROTO, -5007, "protocol error")                                         \
  XX(ETIMEDOUT, -5008, "timed out")                                           \
  XX(ECLOSED, -5009, "engine closed")                                         \
  XX(ESPAWN, -5010, "cannot start worker process")                            \
  XX(ESTATE, -5011, "invalid state")                                          \
  XX(EIO, -5012, "input/output error")                                        \
  XX(EAGAIN, -5013, "try again")                                              \
  XX(EAUTH, -5020, "authentication failed")                                   \
  XX(EPEER, -5021, "the peer closed the connection")                          \
  XX(ECONNREFUSED, -5022, "connection refused")                               \
  XX(EADDRINUSE, -5023, "address already in use")                             \
  XX(ENOTFOUND, -5024, "host name not found")                                 \
  XX(ETLS, -5025, "TLS handshake or record failed")                           \
  XX(ENOTLS, -5026, "the peer does not accept TLS (plain connections only)")  \
  XX(ETLSREQ, -5027, "the peer requires TLS (plain connection refused)")      \
  XX(ETLSCONF, -5028, "cannot load the TLS certificate, key or CA file")      \
  XX(EDISCOFMT, -5030, "not a pp discovery datagram of this version")         \
  XX(EDISCOMAC, -5031, "bad signature (another secret, or forged)")           \
  XX(EDISCOSTALE, -5032,                                                      \
     "timestamp outside the 30 s window (replayed, or clocks differ)")

enum {
  PP_OK = 0,
#define PP__ERR_ENUM(name, val, msg) PP_##name = (val),
  PP_ERRNO_MAP(PP__ERR_ENUM)
#undef PP__ERR_ENUM
  PP_ERR_MIN = -5999, /* every pp code is in [PP_ERR_MIN, PP_ERR_MAX] */
  PP_ERR_MAX = -5001
};

/* pp_strerror: a static, human-readable message for a pp code ("success"
 * for 0, "unknown error" for anything not in the table). Any thread. */
const char *pp_strerror(int err);

/* pp_err_name: the code's name without the prefix ("ENOMEM"), or NULL for a
 * code not in the table. Static string. Any thread. */
const char *pp_err_name(int err);

/* pp_err_from_uv: the pp code for a libuv (or negated errno) result: 0
 * stays 0, well-known causes keep their meaning (UV_ENOMEM -> PP_ENOMEM,
 * UV_ETIMEDOUT -> PP_ETIMEDOUT, UV_EOF -> PP_EPEER, ...), anything else is
 * PP_EIO. A value already in pp's range is returned unchanged. */
int pp_err_from_uv(int uvrc);

/* Facts every layer shares, kept here once (the extension exports them to
 * Python as pp._core.DEFAULT_PORT and pp._core.SECRET_MAX; ppserver uses
 * them for its defaults and checks). */
#define PP_DEFAULT_PORT 60000 /* ppserver's TCP port, and discovery's UDP port */
#define PP_MAX_NODE_WORKERS_DEFAULT 256u /* workers a client believes a
                                                node announces, at most */
#define PP_SECRET_MAX 4096u   /* longest shared secret, in bytes */

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
