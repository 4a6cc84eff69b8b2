/* config.c — ppserver's command line, config file and secret sources (see
 * config.h). Settings are gathered in two layers of raw strings (command
 * line, config file), merged with the command line winning, then converted
 * and validated in one place so every error names where the bad value came
 * from. Main thread only. */
#include "config.h"

#include "auth.h"
#include "files.h"
#include "logsink.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#ifndef PP_VERSION
#error "PP_VERSION must be defined: the Makefile and tools/pp_build.py take it from python/pp/_version.py"
#endif

/* ---- the options ------------------------------------------------------ */

enum opt_id {
  O_HELP, O_DEBUG, O_LOGFMT, O_AUTO, O_RESTART, O_PROTO, O_CONFIG, O_IFACE,
  O_BCAST, O_PORT, O_WORKERS, O_SECRET, O_SECRET_FILE, O_TIMEOUT, O_SOCKTO,
  O_PIDFILE, O_PYTHON, O_ANNOUNCE, O_MAXFRAME, O_JOBMEM, O_MAXCLIENTS,
  O_NOTLS, O_REQTLS, O_TLSCERT, O_TLSKEY, O_TLSCA, O_GENSECRET, O_VERSION,
  O_OBJLIMIT, O_STARTMETHOD, O_COUNT
};

/* One row per option: long name (also the config key, with '-' or '_'),
 * short letter (0: long only), whether it takes a value, and whether the
 * config file may set it. */
static const struct optdef {
  const char *name;
  int letter;
  int has_arg;
  int in_file;
} optdefs[O_COUNT] = {
    [O_HELP] = {"help", 'h', 0, 0},
    [O_DEBUG] = {"debug", 'd', 0, 1},
    [O_LOGFMT] = {"log-format", 'f', 1, 1},
    [O_AUTO] = {"autodiscovery", 'a', 0, 1},
    [O_RESTART] = {"restart", 'r', 0, 1},
    [O_PROTO] = {"proto", 'n', 1, 1},
    [O_CONFIG] = {"config", 'c', 1, 0},
    [O_IFACE] = {"interface", 'i', 1, 1},
    [O_BCAST] = {"broadcast", 'b', 1, 1},
    [O_PORT] = {"port", 'p', 1, 1},
    [O_WORKERS] = {"workers", 'w', 1, 1},
    [O_SECRET] = {"secret", 's', 1, 1},
    [O_SECRET_FILE] = {"secret-file", 0, 1, 1},
    [O_TIMEOUT] = {"timeout", 't', 1, 1},
    [O_SOCKTO] = {"socket-timeout", 'k', 1, 1},
    [O_PIDFILE] = {"pid-file", 'P', 1, 1},
    [O_PYTHON] = {"python", 0, 1, 1},
    [O_ANNOUNCE] = {"announce-interval", 0, 1, 1},
    [O_MAXFRAME] = {"max-frame", 0, 1, 1},
    [O_JOBMEM] = {"job-memory-limit", 0, 1, 1},
    [O_MAXCLIENTS] = {"max-clients", 0, 1, 1},
    [O_NOTLS] = {"no-tls", 0, 0, 1},
    [O_REQTLS] = {"require-tls", 0, 0, 1},
    [O_TLSCERT] = {"tls-cert", 0, 1, 1},
    [O_TLSKEY] = {"tls-key", 0, 1, 1},
    [O_TLSCA] = {"tls-ca", 0, 1, 1},
    [O_GENSECRET] = {"gen-secret", 0, 0, 0},
    [O_VERSION] = {"version", 0, 0, 0},
    [O_OBJLIMIT] = {"object-store-limit", 0, 1, 1},
    [O_STARTMETHOD] = {"start-method", 0, 1, 1},
};

/* A layer of settings as strings, with where each came from. */
typedef struct layer {
  char *val[O_COUNT];    /* owned; flags are "1"/"0" */
  char *origin[O_COUNT]; /* owned: "option --port", "file.conf:3" */
} layer;

static void layer_free(layer *l) {
  for (int i = 0; i < O_COUNT; i++) {
    if (l->val[i] != NULL) {
      if (i == O_SECRET)
        OPENSSL_cleanse(l->val[i], strlen(l->val[i]));
      free(l->val[i]);
    }
    free(l->origin[i]);
    l->val[i] = l->origin[i] = NULL;
  }
}

/* layer_set: store a copy of value for option id (replacing an earlier
 * one). Returns 0 or -1 when out of memory. */
static int layer_set(layer *l, int id, const char *value, const char *origin) {
  char *v = strdup(value);
  char *o = strdup(origin);
  if (v == NULL || o == NULL) {
    free(v);
    free(o);
    return -1;
  }
  if (l->val[id] != NULL && id == O_SECRET)
    OPENSSL_cleanse(l->val[id], strlen(l->val[id]));
  free(l->val[id]);
  free(l->origin[id]);
  l->val[id] = v;
  l->origin[id] = o;
  return 0;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* add_warning: remember a warning for main to log once logging is set up. */
static void add_warning(ppsrv_config *cfg, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void add_warning(ppsrv_config *cfg, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  size_t n = strlen(msg) + 1;
  char *p = realloc(cfg->warnings, cfg->warnings_len + n);
  if (p == NULL)
    return;
  memcpy(p + cfg->warnings_len, msg, n);
  cfg->warnings = p;
  cfg->warnings_len += n;
}

/* ---- usage ------------------------------------------------------------ */

static const char usage_text[] =
    "Usage: ppserver [-hdar] [-f format] [-n proto] [-c config_path] [-i interface]\n"
    "                [-b broadcast] [-p port] [-w nworkers] [-s secret] [-t seconds]\n"
    "                [-k seconds] [-P pid_file] [--secret-file PATH] [--python PATH]\n"
    "                [--announce-interval SECONDS] [--max-frame BYTES]\n"
    "                [--job-memory-limit BYTES] [--object-store-limit BYTES]\n"
    "                [--start-method fork|spawn]\n"
    "                [--max-clients N] [--no-tls | --require-tls]\n"
    "                [--tls-cert FILE --tls-key FILE --tls-ca FILE] [--gen-secret]\n"
    "                [--version]\n"
    "\n"
    "Parallel Python execution node: authenticates pp clients with a shared\n"
    "secret and runs their jobs on a pool of local Python worker processes.\n"
    "\n"
    "Options:\n"
    "  -h, --help                 this help message\n"
    "      --version              print pp's version and exit\n"
    "  -d, --debug                log debug messages\n"
    "  -f, --log-format FORMAT    log line format (Python logging style; fields\n"
    "                             asctime levelname message name process levelno)\n"
    "                             default \"%(asctime)s %(levelname)s %(message)s\"\n"
    "  -a, --autodiscovery        announce this node by UDP broadcast (signed with\n"
    "                             the secret) so clients with ppservers=(\"*\",)\n"
    "                             find it, and answer their queries at once\n"
    "  -r, --restart              restart the worker process after each job\n"
    "      --start-method METHOD  how workers start: fork (default: forked from\n"
    "                             one clean, pre-started interpreter, the fork\n"
    "                             server) or spawn (each a fresh interpreter)\n"
    "  -n, --proto PROTO          pickle protocol the workers use (0-5, default 4)\n"
    "  -c, --config PATH          read settings from a config file (see below)\n"
    "  -i, --interface ADDR       address to listen on (default 0.0.0.0; :: for IPv6)\n"
    "  -b, --broadcast ADDR       where to send announcements (an IPv4 broadcast\n"
    "                             or unicast address; default: the broadcast\n"
    "                             address of the -i interface, or of every\n"
    "                             interface when listening on 0.0.0.0)\n"
    "      --announce-interval SECONDS\n"
    "                             time between announcements (default 2)\n"
    "  -p, --port PORT            port to listen on (default 60000)\n"
    "  -w, --workers N            number of workers (default: number of cores)\n"
    "  -s, --secret SECRET        shared secret (visible in ps: prefer the others)\n"
    "      --secret-file PATH     read the secret from a file (trailing newline dropped)\n"
    "  -t, --timeout SECONDS      exit after this many seconds without clients\n"
    "  -k, --socket-timeout SECONDS\n"
    "                             drop a client silent for this long (default 30)\n"
    "  -P, --pid-file PATH        write the process id here; removed at exit\n"
    "      --python PATH          Python interpreter for the workers (default: the\n"
    "                             PP_PYTHON environment variable, else python3;\n"
    "                             it must be able to import pp)\n"
    "      --max-frame BYTES      largest frame payload accepted from a client (a\n"
    "                             JOB's arguments) or a worker (a result), 1024 to\n"
    "                             4294967295 (default 1073741824, 1 GiB); a client\n"
    "                             frame above it closes that connection, a result\n"
    "                             above it fails its job\n"
    "      --job-memory-limit BYTES  the most memory any client's job may add\n"
    "                             on this node; a job asking more (or nothing)\n"
    "                             runs with this limit (default: no cap)\n"
    "      --object-store-limit BYTES  bytes of objects put once (Server.put)\n"
    "                             one client may make this node hold, and each\n"
    "                             worker holds (default 536870912, 512 MiB)\n"
    "      --max-clients N        connections open at once, handshakes included\n"
    "                             (default: the open-files limit less what the\n"
    "                             workers need); more are closed at once\n"
    "      --no-tls               plain connections only: authenticated frames in\n"
    "                             clear (today's protocol); TLS clients are refused\n"
    "      --require-tls          TLS connections only: plain clients are refused\n"
    "                             (default: TLS, and plain for clients that ask)\n"
    "      --tls-cert FILE, --tls-key FILE, --tls-ca FILE\n"
    "                             TLS with certificates (PEM) instead of a key from\n"
    "                             the secret; clients must present a certificate\n"
    "                             from the CA, as this node's must be to them\n"
    "      --gen-secret           print a new random secret (256 bits) and exit\n"
    "\n"
    "Secret (required; there is no default), first found wins:\n"
    "  -s/--secret, --secret-file, the PP_SECRET environment variable, the\n"
    "  config file's `secret` or `secret_file`, then `pp_secret = '...'` in\n"
    "  ~/.pythonrc.py (read, never executed; refused when other users may read\n"
    "  it: chmod 600).\n"
    "\n"
    "Config file (-c): one `key = value` (or `key: value`) per line; `#` or `;`\n"
    "starts a comment line; blank lines are ignored; a value may be wrapped in\n"
    "double quotes. pp's INI files are read too: lines `[general]` and\n"
    "`[network]` start sections, and any key may be in either. Keys are\n"
    "the long option names (`-` or `_`): debug, log_format, autodiscovery, restart,\n"
    "proto, interface, broadcast, port, workers, secret, secret_file, timeout,\n"
    "socket_timeout, pid_file, python, announce_interval, max_frame,\n"
    "job_memory_limit, max_clients, no_tls, require_tls, tls_cert, tls_key,\n"
    "tls_ca, object_store_limit, start_method. Flags take true/false, yes/no,\n"
    "on/off, 1/0.\n"
    "Options given on the command line override the file. Example:\n"
    "    # /etc/ppserver.conf  (chmod 600 if it holds the secret)\n"
    "    port = 35000\n"
    "    workers = 8\n"
    "    secret_file = /etc/ppserver.secret\n"
    "\n"
    "Signals: SIGUSR1 logs statistics; SIGTERM or SIGINT stop cleanly.\n"
    "Exit status: 0 on a clean stop, 2 on a bad option, config or missing secret,\n"
    "1 on a runtime failure (e.g. the port is in use).\n";

const char *ppsrv_usage(void) { return usage_text; }

const char *ppsrv_version(void) { return "ppserver (pp) " PP_VERSION; }

const char *ppsrv_secret_source_name(int source) {
  switch (source) {
  case PPSRV_SECRET_ARGV: return "command line (-s)";
  case PPSRV_SECRET_FILE: return "--secret-file";
  case PPSRV_SECRET_ENV: return "PP_SECRET environment variable";
  case PPSRV_SECRET_CONFIG: return "config file (secret)";
  case PPSRV_SECRET_CONFIG_FILE: return "config file (secret_file)";
  case PPSRV_SECRET_PYTHONRC: return "~/.pythonrc.py (pp_secret)";
  default: return "none";
  }
}

/* ---- command line ----------------------------------------------------- */

/* parse_argv: fill `cli` from argv with getopt_long. Every -s value is
 * copied, then zeroed in argv (so ps(1) no longer shows it); *secret_arg
 * gets the last one. Returns 0 or 2 with err set. */
static int parse_argv(layer *cli, int argc, char **argv, char **secret_arg,
                      char *err, size_t errlen) {
  struct option longopts[O_COUNT + 1];
  char shortopts[2 * O_COUNT + 2];
  size_t ns = 0;
  shortopts[ns++] = ':'; /* report missing arguments as ':' */
  for (int i = 0; i < O_COUNT; i++) {
    longopts[i].name = optdefs[i].name;
    longopts[i].has_arg = optdefs[i].has_arg ? required_argument : no_argument;
    longopts[i].flag = NULL;
    longopts[i].val = 1000 + i;
    if (optdefs[i].letter) {
      shortopts[ns++] = (char)optdefs[i].letter;
      if (optdefs[i].has_arg)
        shortopts[ns++] = ':';
    }
  }
  shortopts[ns] = '\0';
  memset(&longopts[O_COUNT], 0, sizeof longopts[O_COUNT]);

  opterr = 0;
  optind = 1;
  for (;;) {
    int c = getopt_long(argc, argv, shortopts, longopts, NULL);
    if (c == -1)
      break;
    int id = -1;
    if (c >= 1000 && c < 1000 + O_COUNT) {
      id = c - 1000;
    } else {
      for (int i = 0; i < O_COUNT; i++)
        if (optdefs[i].letter && optdefs[i].letter == c)
          id = i;
    }
    if (c == ':' || id < 0) {
      char name[80];
      if (optopt > 0 && optopt < 1000)
        snprintf(name, sizeof name, "-%c", optopt);
      else
        snprintf(name, sizeof name, "%.70s", argv[optind - 1]);
      set_err(err, errlen, "%s %s (see ppserver -h)",
              c == ':' ? "missing value for option" : "unknown option", name);
      return 2;
    }
    char origin[64];
    snprintf(origin, sizeof origin, "option --%s", optdefs[id].name);
    if (layer_set(cli, id, optdefs[id].has_arg ? optarg : "1", origin) != 0) {
      set_err(err, errlen, "out of memory");
      return 2;
    }
    if (id == O_SECRET) { /* copied into cli: hide it from ps(1) now */
      memset(optarg, 0, strlen(optarg));
      *secret_arg = optarg;
    }
  }
  if (optind < argc) {
    set_err(err, errlen, "unexpected argument '%s' (see ppserver -h)",
            argv[optind]);
    return 2;
  }
  return 0;
}

/* ---- config file ------------------------------------------------------ */

static char *trim(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  size_t n = strlen(s);
  while (n > 0 && isspace((unsigned char)s[n - 1]))
    s[--n] = '\0';
  return s;
}

/* key_id: the option a config key names ('_' and '-' are the same), or -1. */
static int key_id(const char *key) {
  char norm[64];
  size_t n = strlen(key);
  if (n >= sizeof norm)
    return -1;
  for (size_t i = 0; i <= n; i++)
    norm[i] = key[i] == '_' ? '-' : (char)tolower((unsigned char)key[i]);
  for (int i = 0; i < O_COUNT; i++)
    if (optdefs[i].in_file && strcmp(optdefs[i].name, norm) == 0)
      return i;
  return -1;
}

/* parse_bool: "1"/"0" for true/false words, NULL when not a boolean. */
static const char *parse_bool(const char *v) {
  static const char *yes[] = {"1", "true", "yes", "on"};
  static const char *no[] = {"0", "false", "no", "off"};
  for (size_t i = 0; i < 4; i++) {
    if (strcasecmp(v, yes[i]) == 0)
      return "1";
    if (strcasecmp(v, no[i]) == 0)
      return "0";
  }
  return NULL;
}

/* read_small_file: read all of path (at most max bytes) into a malloc'd
 * NUL-terminated buffer; *mode gets the file's permission bits. Returns the
 * buffer or NULL with err set. */
static char *read_small_file(const char *path, size_t max, size_t *len_out,
                             struct stat *st_out, const char *what, char *err,
                             size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  char *buf = NULL;
  size_t len = 0;
  if (fd < 0) {
    set_err(err, errlen, "cannot open %s %s: %s", what, path, strerror(errno));
    return NULL;
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    set_err(err, errlen, "%s %s is not a regular file", what, path);
    goto fail;
  }
  if ((size_t)st.st_size > max) {
    set_err(err, errlen, "%s %s is too large (limit %zu bytes)", what, path,
            max);
    goto fail;
  }
  *st_out = st;
  buf = malloc(max + 1);
  if (buf == NULL) {
    set_err(err, errlen, "out of memory");
    goto fail;
  }
  for (;;) {
    ssize_t n = read(fd, buf + len, max + 1 - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      set_err(err, errlen, "cannot read %s %s: %s", what, path,
              strerror(errno));
      goto fail;
    }
    if (n == 0)
      break;
    len += (size_t)n;
    if (len > max) {
      set_err(err, errlen, "%s %s is too large (limit %zu bytes)", what, path,
              max);
      goto fail;
    }
  }
  buf[len] = '\0';
  close(fd);
  *len_out = len;
  return buf;

fail:
  if (buf != NULL) {
    OPENSSL_cleanse(buf, max + 1);
    free(buf);
  }
  close(fd);
  return NULL;
}

/* parse_config_file: read `key = value` lines from path into `file`.
 * Returns 0 or 2 with err set. */
static int parse_config_file(ppsrv_config *cfg, layer *file, const char *path,
                             char *err, size_t errlen) {
  size_t len = 0;
  struct stat st;
  PP_UNUSED(cfg); /* kept for warnings found while parsing */
  char *text = read_small_file(path, 1 << 20, &len, &st, "config file",
                               err, errlen);
  int rc = 2, lineno = 0, has_secret = 0;
  if (text == NULL)
    return 2;
  if (memchr(text, '\0', len) != NULL) {
    set_err(err, errlen, "config file %s contains NUL bytes", path);
    goto out;
  }
  char *line = text;
  while (line != NULL) {
    char *nl = strchr(line, '\n');
    if (nl != NULL)
      *nl = '\0';
    lineno++;
    char *s = trim(line);
    line = nl ? nl + 1 : NULL;
    if (*s == '\0' || *s == '#' || *s == ';')
      continue;
    if (*s == '[') { /* an INI section header, as pp's config files have */
      size_t sl = strlen(s);
      if (sl < 3 || s[sl - 1] != ']') {
        set_err(err, errlen, "%s:%d: expected `[section]`", path, lineno);
        goto out;
      }
      s[sl - 1] = '\0';
      char *name = trim(s + 1);
      if (strcasecmp(name, "general") != 0 && strcasecmp(name, "network") != 0) {
        set_err(err, errlen, "%s:%d: unknown section [%s] (ppserver reads"
                " [general] and [network])", path, lineno, name);
        goto out;
      }
      continue;
    }
    /* the separator is the first '=' or ':' (configparser accepts both) */
    char *eq = s + strcspn(s, "=:");
    if (*eq == '\0') {
      set_err(err, errlen, "%s:%d: expected `key = value`", path, lineno);
      goto out;
    }
    *eq = '\0';
    char *key = trim(s);
    char *val = trim(eq + 1);
    size_t vlen = strlen(val);
    if (vlen >= 2 && val[0] == '"' && val[vlen - 1] == '"') {
      val[vlen - 1] = '\0';
      val++;
    }
    int id = key_id(key);
    if (id < 0) {
      set_err(err, errlen, "%s:%d: unknown key '%s' (keys: debug, log_format,"
              " autodiscovery, restart, proto, interface, broadcast, port,"
              " workers, secret, secret_file, timeout, socket_timeout,"
              " pid_file, python, announce_interval, max_frame, job_memory_limit,"
              " max_clients, object_store_limit, start_method)",
              path,
              lineno, key);
      goto out;
    }
    if (!optdefs[id].has_arg) {
      const char *b = parse_bool(val);
      if (b == NULL) {
        set_err(err, errlen, "%s:%d: %s must be true or false, not '%s'",
                path, lineno, key, val);
        goto out;
      }
      val = (char *)b;
    }
    if (id == O_SECRET)
      has_secret = 1;
    char origin[PATH_MAX + 64];
    snprintf(origin, sizeof origin, "%s:%d", path, lineno);
    if (layer_set(file, id, val, origin) != 0) {
      set_err(err, errlen, "out of memory");
      goto out;
    }
  }
  /* it holds the secret, or names the interpreter every job runs in */
  if (ppsrv_file_trusted(&st, path, "config file", has_secret, err, errlen))
    goto out;
  rc = 0;
out:
  OPENSSL_cleanse(text, len);
  free(text);
  return rc;
}

/* ---- conversion ------------------------------------------------------- */

/* to_ms: parse seconds (a decimal number) in [lo_ms, hi_ms] milliseconds.
 * Returns 0 or 2 with err. */
static int to_ms(const layer *l, int id, int lo_ms, int hi_ms, int *out,
                 char *err, size_t errlen) {
  const char *v = l->val[id];
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (*v == '\0' || *end != '\0' || errno != 0 || !(x * 1000 >= lo_ms) ||
      !(x * 1000 <= hi_ms)) {
    set_err(err, errlen, "%s: %s must be a number of seconds from %g to %g,"
            " not '%s'", l->origin[id], optdefs[id].name, lo_ms / 1000.0,
            hi_ms / 1000.0, v);
    return 2;
  }
  *out = (int)(x * 1000 + 0.5);
  return 0;
}

/* to_int: parse a decimal integer in [lo, hi]. Returns 0 or 2 with err. */
static int to_int(const layer *l, int id, long lo, long hi, int *out,
                  char *err, size_t errlen) {
  const char *v = l->val[id];
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (*v == '\0' || *end != '\0' || errno != 0 || x < lo || x > hi) {
    set_err(err, errlen, "%s: %s must be an integer from %ld to %ld, not '%s'",
            l->origin[id], optdefs[id].name, lo, hi, v);
    return 2;
  }
  *out = (int)x;
  return 0;
}

/* to_u32: like to_int, for an unsigned 32-bit value. */
static int to_u32(const layer *l, int id, unsigned long long lo,
                  unsigned long long hi, uint32_t *out, char *err,
                  size_t errlen) {
  const char *v = l->val[id];
  char *end;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  if (*v < '0' || *v > '9' || *end != '\0' || errno != 0 || x < lo ||
      x > hi) {
    set_err(err, errlen,
            "%s: %s must be an integer from %llu to %llu, not '%s'",
            l->origin[id], optdefs[id].name, lo, hi, v);
    return 2;
  }
  *out = (uint32_t)x;
  return 0;
}

/* take_secret: copy the secret bytes (1..PP_AUTH_SECRET_MAX) into cfg.
 * Returns 0 or 2 with err. */
static int take_secret(ppsrv_config *cfg, const char *s, size_t len,
                       int source, const char *origin, char *err,
                       size_t errlen) {
  if (len == 0) {
    set_err(err, errlen, "the secret from %s is empty",
            ppsrv_secret_source_name(source));
    return 2;
  }
  if (len > PP_AUTH_SECRET_MAX) {
    set_err(err, errlen, "the secret from %s is longer than %u bytes",
            ppsrv_secret_source_name(source), PP_AUTH_SECRET_MAX);
    return 2;
  }
  cfg->secret = malloc(len + 1);
  cfg->secret_origin = strdup(origin);
  if (cfg->secret == NULL || cfg->secret_origin == NULL) {
    set_err(err, errlen, "out of memory");
    return 2;
  }
  memcpy(cfg->secret, s, len);
  cfg->secret[len] = '\0';
  cfg->secret_len = len;
  cfg->secret_source = source;
  return 0;
}

/* secret_from_file: read a secret file, dropping trailing CR/LF. */
static int secret_from_file(ppsrv_config *cfg, const char *path, int source,
                            char *err, size_t errlen) {
  size_t len = 0;
  struct stat st;
  char *text = read_small_file(path, PP_AUTH_SECRET_MAX + 2, &len, &st,
                               "secret file", err, errlen);
  if (text == NULL)
    return 2;
  size_t full = len;
  while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
    len--;
  if (ppsrv_file_trusted(&st, path, "secret file", 1, err, errlen)) {
    OPENSSL_cleanse(text, full);
    free(text);
    return 2;
  }
  int rc = take_secret(cfg, text, len, source, path, err, errlen);
  OPENSSL_cleanse(text, full);
  free(text);
  return rc;
}

/* pythonrc_path: "$HOME/.pythonrc.py" (HOME unset or empty: the user's
 * home from the password database) into buf. Returns 0, or -1 when no home
 * is known or the path does not fit. */
static int pythonrc_path(char *buf, size_t len) {
  const char *home = getenv("HOME");
  if (home == NULL || home[0] == '\0') {
    struct passwd *pw = getpwuid(geteuid());
    home = pw != NULL ? pw->pw_dir : NULL;
  }
  if (home == NULL || home[0] == '\0')
    return -1;
  int n = snprintf(buf, len, "%s/.pythonrc.py", home);
  return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* pythonrc_literal: parse the Python string literal at *p ('...' or "...",
 * optionally b-prefixed; escapes \\ \' \" only) into out (capacity cap,
 * NUL-terminated), then allow only spaces and a # comment to the end of the
 * line. Returns the literal's length, or -1 when the text is not such a
 * literal (a triple-quoted, raw or f-string, another escape, an expression:
 * the parser refuses rather than guess what Python would make of it). */
static long pythonrc_literal(const char *p, char *out, size_t cap) {
  if (*p == 'b' || *p == 'B')
    p++;
  char q = *p;
  if (q != '\'' && q != '"')
    return -1;
  if (p[1] == q && p[2] == q)
    return -1; /* triple quotes */
  size_t n = 0;
  for (p++; *p != q; p++) {
    char c = *p;
    if (c == '\0')
      return -1; /* unterminated on this line */
    if (c == '\\') {
      c = *++p;
      if (c != '\\' && c != '\'' && c != '"')
        return -1;
    }
    if (n + 1 >= cap)
      return -1;
    out[n++] = c;
  }
  out[n] = '\0';
  for (p++; *p == ' ' || *p == '\t'; p++)
    ;
  if (*p != '\0' && *p != '#')
    return -1;
  return (long)n;
}

/* secret_from_pythonrc: pp's old place for the secret, `pp_secret = '...'`
 * in ~/.pythonrc.py. The file is read, never executed: a top-level line
 * (no indentation) assigning a string literal to pp_secret; the last such
 * line wins, as it would in Python. A file that other users may read (or
 * that belongs to someone else) is refused when it holds the secret.
 * Returns 0 with the secret taken, 1 when there is no file or no pp_secret
 * in it, 2 with err on a bad file. */
static int secret_from_pythonrc(ppsrv_config *cfg, char *err, size_t errlen) {
  char path[PATH_MAX];
  if (pythonrc_path(path, sizeof path) != 0)
    return 1;
  struct stat st;
  if (stat(path, &st) != 0 && errno == ENOENT)
    return 1;
  size_t len = 0;
  char *text = read_small_file(path, 1 << 20, &len, &st, "~/.pythonrc.py",
                               err, errlen);
  if (text == NULL)
    return 2;
  char value[PP_AUTH_SECRET_MAX + 2];
  long vlen = -1;
  int rc = 1, lineno = 0, found_line = 0;
  for (char *line = text, *nl; line != NULL; line = nl ? nl + 1 : NULL) {
    nl = strchr(line, '\n');
    if (nl != NULL)
      *nl = '\0';
    lineno++;
    size_t ll = strlen(line);
    if (ll > 0 && line[ll - 1] == '\r')
      line[ll - 1] = '\0';
    if (strncmp(line, "pp_secret", 9) != 0)
      continue;
    char *p = line + 9;
    while (*p == ' ' || *p == '\t')
      p++;
    if (*p != '=' || p[1] == '=')
      continue; /* another name (pp_secret2), a comparison, ... */
    for (p++; *p == ' ' || *p == '\t'; p++)
      ;
    vlen = pythonrc_literal(p, value, sizeof value);
    if (vlen < 0) {
      set_err(err, errlen, "%s:%d: pp_secret must be a plain string literal"
              " ('...' or \"...\") on one line; ppserver reads the file"
              " without running it", path, lineno);
      rc = 2;
      goto out;
    }
    found_line = lineno;
  }
  if (found_line == 0)
    goto out; /* rc 1: not there */
  if (ppsrv_file_trusted(&st, path, "~/.pythonrc.py", 1, err, errlen)) {
    rc = 2;
    goto out;
  }
  char origin[PATH_MAX + 32];
  snprintf(origin, sizeof origin, "%s:%d", path, found_line);
  rc = take_secret(cfg, value, (size_t)vlen, PPSRV_SECRET_PYTHONRC, origin,
                   err, errlen);
out:
  OPENSSL_cleanse(value, sizeof value);
  OPENSSL_cleanse(text, len);
  free(text);
  return rc;
}

static int default_workers(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1)
    n = 1;
  if (n > 1024)
    n = 1024;
  return (int)n;
}

/* dup_or: strdup of the merged value, or of def when unset. NULL on ENOMEM
 * (or when both are NULL). */
static char *dup_or(const char *v, const char *def) {
  if (v != NULL)
    return strdup(v);
  return def ? strdup(def) : NULL;
}

int ppsrv_config_load(ppsrv_config *cfg, int argc, char **argv, char *err,
                      size_t errlen) {
  layer cli, file, m;
  char *secret_arg = NULL;
  int rc;
  memset(cfg, 0, sizeof *cfg);
  memset(&cli, 0, sizeof cli);
  memset(&file, 0, sizeof file);
  memset(&m, 0, sizeof m); /* m borrows pointers from cli and file */
  cfg->proto = -1;
  err[0] = '\0';

  rc = parse_argv(&cli, argc, argv, &secret_arg, err, errlen);
  if (rc != 0)
    goto out;
  if (cli.val[O_HELP] != NULL) {
    cfg->help = 1;
    goto out;
  }
  if (cli.val[O_GENSECRET] != NULL) {
    cfg->gen_secret = 1;
    goto out;
  }
  if (cli.val[O_VERSION] != NULL) {
    cfg->version = 1;
    goto out;
  }
  if (cli.val[O_CONFIG] != NULL) {
    cfg->config_path = strdup(cli.val[O_CONFIG]);
    rc = parse_config_file(cfg, &file, cli.val[O_CONFIG], err, errlen);
    if (rc != 0)
      goto out;
  }
  for (int i = 0; i < O_COUNT; i++) {
    int from_cli = cli.val[i] != NULL;
    m.val[i] = from_cli ? cli.val[i] : file.val[i];
    m.origin[i] = from_cli ? cli.origin[i] : file.origin[i];
  }

  rc = 2;
  cfg->debug = m.val[O_DEBUG] && strcmp(m.val[O_DEBUG], "1") == 0;
  cfg->autodiscovery = m.val[O_AUTO] && strcmp(m.val[O_AUTO], "1") == 0;
  cfg->restart = m.val[O_RESTART] && strcmp(m.val[O_RESTART], "1") == 0;
  if (m.val[O_STARTMETHOD] != NULL) {
    if (strcmp(m.val[O_STARTMETHOD], "spawn") == 0) {
      cfg->spawn = 1;
    } else if (strcmp(m.val[O_STARTMETHOD], "fork") != 0) {
      set_err(err, errlen, "%s: start-method must be fork or spawn, not '%s'",
              m.origin[O_STARTMETHOD], m.val[O_STARTMETHOD]);
      goto out;
    }
  }
  cfg->port = PPSRV_DEFAULT_PORT;
  cfg->socket_timeout = PPSRV_DEFAULT_SOCKET_TIMEOUT;
  cfg->nworkers = default_workers();
  if (m.val[O_PROTO] && to_int(&m, O_PROTO, 0, 5, &cfg->proto, err, errlen))
    goto out;
  if (m.val[O_PORT] && to_int(&m, O_PORT, 0, 65535, &cfg->port, err, errlen))
    goto out;
  if (m.val[O_WORKERS] &&
      to_int(&m, O_WORKERS, 1, 1024, &cfg->nworkers, err, errlen))
    goto out;
  if (m.val[O_TIMEOUT] &&
      to_int(&m, O_TIMEOUT, 0, 100000000, &cfg->timeout, err, errlen))
    goto out;
  if (m.val[O_SOCKTO] &&
      to_int(&m, O_SOCKTO, 1, 100000000, &cfg->socket_timeout, err, errlen))
    goto out;
  if (m.val[O_JOBMEM]) {
    const char *v = m.val[O_JOBMEM];
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (*v < '0' || *v > '9' || *end != '\0' || errno != 0 || x < 1048576) {
      set_err(err, errlen,
              "%s: job-memory-limit must be a number of bytes of at least "
              "1048576, not '%s'", m.origin[O_JOBMEM], v);
      goto out;
    }
    cfg->job_memory_limit = x;
  }
  cfg->obj_limit = PP_OBJ_LIMIT_DEFAULT;
  if (m.val[O_OBJLIMIT]) {
    const char *v = m.val[O_OBJLIMIT];
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (*v < '0' || *v > '9' || *end != '\0' || errno != 0 || x < 1024 ||
        x > (1ull << 62)) {
      set_err(err, errlen,
              "%s: object-store-limit must be a number of bytes of at least "
              "1024, not '%s'", m.origin[O_OBJLIMIT], v);
      goto out;
    }
    cfg->obj_limit = x;
  }
  cfg->max_frame = PP_FRAME_MAX_DEFAULT;
  if (m.val[O_MAXCLIENTS] &&
      to_int(&m, O_MAXCLIENTS, 1, 10000000, &cfg->max_clients, err, errlen))
    goto out;
  if (m.val[O_MAXFRAME] && to_u32(&m, O_MAXFRAME, PPSRV_MAX_FRAME_MIN,
                                  UINT32_MAX, &cfg->max_frame, err, errlen))
    goto out;
  cfg->announce_ms = PPSRV_DEFAULT_ANNOUNCE_MS;
  if (m.val[O_ANNOUNCE] &&
      to_ms(&m, O_ANNOUNCE, 100, 3600000, &cfg->announce_ms, err, errlen))
    goto out;
  cfg->log_format = dup_or(m.val[O_LOGFMT], PPSRV_DEFAULT_LOG_FORMAT);
  cfg->interface = dup_or(m.val[O_IFACE], PPSRV_DEFAULT_INTERFACE);
  const char *envpy = getenv("PP_PYTHON");
  cfg->python = dup_or(m.val[O_PYTHON], envpy != NULL && envpy[0] != '\0'
                                            ? envpy
                                            : PPSRV_DEFAULT_PYTHON);
  cfg->broadcast = dup_or(m.val[O_BCAST], NULL);
  cfg->pid_file = dup_or(m.val[O_PIDFILE], NULL);
  if (cfg->log_format == NULL || cfg->interface == NULL ||
      cfg->python == NULL || (m.val[O_BCAST] && cfg->broadcast == NULL) ||
      (m.val[O_PIDFILE] && cfg->pid_file == NULL)) {
    set_err(err, errlen, "out of memory");
    goto out;
  }
  if (ppsrv_logfmt_check(cfg->log_format, err, errlen) != 0)
    goto out;
  if (cfg->python[0] == '\0' || cfg->interface[0] == '\0') {
    set_err(err, errlen, "--python and --interface must not be empty");
    goto out;
  }
  if (cfg->broadcast != NULL) {
    struct in_addr a;
    if (inet_pton(AF_INET, cfg->broadcast, &a) != 1) {
      set_err(err, errlen, "%s: broadcast must be an IPv4 address, not '%s'",
              m.origin[O_BCAST], cfg->broadcast);
      goto out;
    }
    if (!cfg->autodiscovery)
      add_warning(cfg, "-b/--broadcast has no effect without -a");
  }
  /* transport security (docs/protocol.md 6.6) */
  int no_tls = m.val[O_NOTLS] && strcmp(m.val[O_NOTLS], "1") == 0;
  int req_tls = m.val[O_REQTLS] && strcmp(m.val[O_REQTLS], "1") == 0;
  int ntls = (m.val[O_TLSCERT] != NULL) + (m.val[O_TLSKEY] != NULL) +
             (m.val[O_TLSCA] != NULL);
  if (no_tls && req_tls) {
    set_err(err, errlen, "--no-tls and --require-tls contradict each other");
    goto out;
  }
  if (ntls != 0 && ntls != 3) {
    set_err(err, errlen, "TLS with certificates needs --tls-cert, --tls-key"
            " and --tls-ca (all three)");
    goto out;
  }
  if (no_tls && ntls) {
    set_err(err, errlen, "--no-tls and --tls-cert/--tls-key/--tls-ca"
            " contradict each other");
    goto out;
  }
  cfg->tls_mode = no_tls ? PPSRV_TLS_OFF : req_tls ? PPSRV_TLS_REQUIRE
                                                   : PPSRV_TLS_AUTO;
  if (ntls) {
    cfg->tls_cert = strdup(m.val[O_TLSCERT]);
    cfg->tls_key = strdup(m.val[O_TLSKEY]);
    cfg->tls_ca = strdup(m.val[O_TLSCA]);
    if (!cfg->tls_cert || !cfg->tls_key || !cfg->tls_ca) {
      set_err(err, errlen, "out of memory");
      goto out;
    }
    /* the private key is as secret as the shared secret: same rule */
    if (ppsrv_path_trusted(cfg->tls_key, "TLS key file", 1, err, errlen))
      goto out;
  }
  if (cfg->pid_file != NULL && cfg->pid_file[0] == '\0') {
    set_err(err, errlen, "--pid-file must not be empty");
    goto out;
  }

  /* the secret: -s > --secret-file > PP_SECRET > config secret/secret_file
   * > ~/.pythonrc.py's pp_secret */
  const char *env = getenv("PP_SECRET");
  if (cli.val[O_SECRET] != NULL) {
    rc = take_secret(cfg, cli.val[O_SECRET], strlen(cli.val[O_SECRET]),
                     PPSRV_SECRET_ARGV, "-s", err, errlen);
  } else if (cli.val[O_SECRET_FILE] != NULL) {
    rc = secret_from_file(cfg, cli.val[O_SECRET_FILE], PPSRV_SECRET_FILE, err,
                          errlen);
  } else if (env != NULL) {
    rc = take_secret(cfg, env, strlen(env), PPSRV_SECRET_ENV, "PP_SECRET",
                     err, errlen);
  } else if (file.val[O_SECRET] != NULL && file.val[O_SECRET_FILE] != NULL) {
    set_err(err, errlen, "config file %s sets both secret and secret_file;"
            " keep one", cfg->config_path);
    rc = 2;
  } else if (file.val[O_SECRET] != NULL) {
    rc = take_secret(cfg, file.val[O_SECRET], strlen(file.val[O_SECRET]),
                     PPSRV_SECRET_CONFIG, file.origin[O_SECRET], err, errlen);
  } else if (file.val[O_SECRET_FILE] != NULL) {
    rc = secret_from_file(cfg, file.val[O_SECRET_FILE],
                          PPSRV_SECRET_CONFIG_FILE, err, errlen);
  } else if ((rc = secret_from_pythonrc(cfg, err, errlen)) == 1) {
    set_err(err, errlen,
            "no secret given: ppserver does not run without a shared secret."
            " Give one with --secret-file PATH (a file holding the secret),"
            " the PP_SECRET environment variable, `secret_file = PATH` or"
            " `secret = ...` in a config file (-c), `pp_secret = '...'` in"
            " ~/.pythonrc.py, or -s SECRET (visible in ps); clients pass the"
            " same value as pp.Server(secret=...)");
    rc = 2;
  }

out:
  layer_free(&cli);
  layer_free(&file);
  return rc;
}

void ppsrv_config_free(ppsrv_config *cfg) {
  if (cfg->secret != NULL) {
    OPENSSL_cleanse(cfg->secret, cfg->secret_len);
    free(cfg->secret);
  }
  free(cfg->secret_origin);
  free(cfg->log_format);
  free(cfg->broadcast);
  free(cfg->config_path);
  free(cfg->interface);
  free(cfg->pid_file);
  free(cfg->python);
  free(cfg->tls_cert);
  free(cfg->tls_key);
  free(cfg->tls_ca);
  free(cfg->warnings);
  memset(cfg, 0, sizeof *cfg);
}
