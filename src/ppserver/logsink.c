/* logsink.c — formats ppserver's log lines with a Python-logging style
 * format string and writes them to stderr (see logsink.h). The sink is
 * called from the main thread and from the engine thread; a mutex keeps
 * lines whole. */
#include "logsink.h"

#include "pp_common.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 4096

static char *sink_fmt; /* owned copy of the format */
static pthread_mutex_t sink_mu = PTHREAD_MUTEX_INITIALIZER;

enum field { F_ASCTIME, F_LEVELNAME, F_MESSAGE, F_NAME, F_PROCESS, F_LEVELNO };
static const struct {
  const char *name;
  int numeric;
} fields[] = {
    {"asctime", 0}, {"levelname", 0}, {"message", 0},
    {"name", 0},    {"process", 1},   {"levelno", 1},
};
#define NFIELDS (sizeof fields / sizeof fields[0])

/* A parsed placeholder: which field, and a printf spec to print it with. */
typedef struct spec {
  int field;
  char printf_spec[40]; /* e.g. "%-8s" or "%d" */
  size_t consumed;      /* bytes of the format string it spans */
} spec;

/* parse_spec: parse the placeholder starting at p (which points at "%(").
 * Returns 0 with *s filled, or -1 with a message in err. */
static int parse_spec(const char *p, spec *s, char *err, size_t errlen) {
  const char *name = p + 2;
  const char *close = strchr(name, ')');
  if (close == NULL) {
    snprintf(err, errlen, "log format: unterminated '%%(' placeholder");
    return -1;
  }
  size_t nlen = (size_t)(close - name);
  s->field = -1;
  for (size_t i = 0; i < NFIELDS; i++)
    if (strlen(fields[i].name) == nlen && memcmp(fields[i].name, name, nlen) == 0)
      s->field = (int)i;
  if (s->field < 0) {
    snprintf(err, errlen,
             "log format: unknown field '%.*s' (supported: asctime, levelname,"
             " message, name, process, levelno)", (int)(nlen > 40 ? 40 : nlen),
             name);
    return -1;
  }
  const char *q = close + 1;
  size_t flen = 0;
  char flags[32];
  while (*q && strchr("-+ #0", *q) && flen < 8)
    flags[flen++] = *q++;
  size_t digits = 0;
  while (*q >= '0' && *q <= '9' && digits < 4) {
    flags[flen++] = *q++;
    digits++;
  }
  if (*q == '.') {
    flags[flen++] = *q++;
    digits = 0;
    while (*q >= '0' && *q <= '9' && digits < 4) {
      flags[flen++] = *q++;
      digits++;
    }
  }
  flags[flen] = '\0';
  char conv = *q;
  if (conv != 's' && conv != 'd') {
    snprintf(err, errlen,
             "log format: placeholder %%(%s) needs a conversion 's' or 'd'"
             " (with optional width), for example %%(%s)s",
             fields[s->field].name, fields[s->field].name);
    return -1;
  }
  if (conv == 'd' && !fields[s->field].numeric) {
    snprintf(err, errlen, "log format: %%(%s) is text; use %%(%s)s",
             fields[s->field].name, fields[s->field].name);
    return -1;
  }
  snprintf(s->printf_spec, sizeof s->printf_spec, "%%%s%c", flags, conv);
  s->consumed = (size_t)(q + 1 - p);
  return 0;
}

int ppsrv_logfmt_check(const char *fmt, char *err, size_t errlen) {
  spec s;
  for (const char *p = fmt; *p; p++) {
    if (*p != '%')
      continue;
    if (p[1] == '%') {
      p++;
      continue;
    }
    if (p[1] != '(') {
      snprintf(err, errlen,
               "log format: '%%' must start a placeholder such as"
               " %%(message)s (write %%%% for a literal percent sign)");
      return -1;
    }
    if (parse_spec(p, &s, err, errlen) != 0)
      return -1;
    p += s.consumed - 1;
  }
  return 0;
}

static const char *level_name(int level) {
  if (level >= PP_LOG_ERROR)
    return "ERROR";
  if (level >= PP_LOG_WARNING)
    return "WARNING";
  if (level >= PP_LOG_INFO)
    return "INFO";
  return "DEBUG";
}

/* format_line: render one line into out (always NUL-terminated, truncated
 * to outlen, with a trailing newline). Returns its length. */
static size_t format_line(char *out, size_t outlen, const char *fmt,
                          int level, const char *msg) {
  size_t n = 0;
  char asctime[64];
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  localtime_r(&tv.tv_sec, &tm);
  size_t k = strftime(asctime, sizeof asctime, "%Y-%m-%d %H:%M:%S", &tm);
  snprintf(asctime + k, sizeof asctime - k, ",%03d", (int)(tv.tv_usec / 1000));

  for (const char *p = fmt; *p && n + 2 < outlen; p++) {
    if (*p != '%') {
      out[n++] = *p;
      continue;
    }
    if (p[1] == '%') {
      out[n++] = '%';
      p++;
      continue;
    }
    spec s;
    char err[8];
    if (p[1] != '(' || parse_spec(p, &s, err, sizeof err) != 0) {
      out[n++] = *p; /* cannot happen after ppsrv_logfmt_check */
      continue;
    }
    int w = 0;
    size_t room = outlen - n - 1;
    char num[24];
    int isnum = fields[s.field].numeric;
    long v = 0;
    const char *str = "";
    switch (s.field) {
    case F_ASCTIME: str = asctime; break;
    case F_LEVELNAME: str = level_name(level); break;
    case F_MESSAGE: str = msg; break;
    case F_NAME: str = "ppserver"; break;
    case F_PROCESS: v = (long)getpid(); break;
    case F_LEVELNO: v = level; break;
    default: break;
    }
    char *c = s.printf_spec + strlen(s.printf_spec) - 1;
    if (isnum && *c == 's') {
      snprintf(num, sizeof num, "%ld", v);
      str = num;
      isnum = 0;
    }
    if (isnum) {
      /* "%...d" -> "%...ld" */
      char lspec[48];
      *c = '\0';
      snprintf(lspec, sizeof lspec, "%sld", s.printf_spec);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
      w = snprintf(out + n, room, lspec, v);
    } else {
      w = snprintf(out + n, room, s.printf_spec, str);
#pragma GCC diagnostic pop
    }
    if (w > 0)
      n += (size_t)w < room ? (size_t)w : room - 1;
    p += s.consumed - 1;
  }
  out[n++] = '\n';
  out[n] = '\0';
  return n;
}

/* sink: the pp_log_fn. Any thread. */
static void sink(void *ctx, int level, const char *msg) {
  char line[LINE_MAX_BYTES];
  PP_UNUSED(ctx);
  pthread_mutex_lock(&sink_mu);
  size_t n = format_line(line, sizeof line,
                         sink_fmt ? sink_fmt : "%(levelname)s %(message)s",
                         level, msg);
  const char *p = line;
  while (n > 0) {
    ssize_t w = write(2, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      break;
    p += w;
    n -= (size_t)w;
  }
  pthread_mutex_unlock(&sink_mu);
}

int ppsrv_logsink_install(const char *fmt, int debug) {
  char *copy = strdup(fmt);
  if (copy == NULL)
    return -1;
  free(sink_fmt);
  sink_fmt = copy;
  pp_log_set(sink, NULL);
  pp_log_set_level(debug ? PP_LOG_DEBUG : PP_LOG_INFO);
  return 0;
}

void ppsrv_logsink_uninstall(void) {
  pp_log_set(NULL, NULL);
  pthread_mutex_lock(&sink_mu);
  free(sink_fmt);
  sink_fmt = NULL;
  pthread_mutex_unlock(&sink_mu);
}
