/* config.h — ppserver's settings: the command line (pp's ppserver.py flags
 * plus a few of ours), the optional config file, the secret sources and the
 * log line format. Everything here runs in the main thread before the loop
 * starts; nothing is shared with other threads. */
#ifndef PPSRV_CONFIG_H
#define PPSRV_CONFIG_H

#include "pp_common.h"

#include <stddef.h>
#include <stdint.h>

#define PPSRV_DEFAULT_PORT PP_DEFAULT_PORT
#define PPSRV_DEFAULT_INTERFACE "0.0.0.0"
#define PPSRV_DEFAULT_SOCKET_TIMEOUT 30
#define PPSRV_DEFAULT_PYTHON "python3"
#define PPSRV_DEFAULT_ANNOUNCE_MS 2000
#define PPSRV_MAX_FRAME_MIN 1024u /* --max-frame lower bound */
#define PPSRV_DEFAULT_LOG_FORMAT "%(asctime)s %(levelname)s %(message)s"

/* Where the secret came from (for the log and for the ps(1) warning). */
enum ppsrv_secret_source {
  PPSRV_SECRET_NONE = 0,
  PPSRV_SECRET_ARGV,        /* -s / --secret: visible in ps */
  PPSRV_SECRET_FILE,        /* --secret-file */
  PPSRV_SECRET_ENV,         /* PP_SECRET */
  PPSRV_SECRET_CONFIG,      /* config file `secret` */
  PPSRV_SECRET_CONFIG_FILE, /* config file `secret_file` */
  PPSRV_SECRET_PYTHONRC     /* `pp_secret = '...'` in ~/.pythonrc.py */
};

/* Which connections the node accepts (docs/protocol.md 6.6). */
enum ppsrv_tls_mode {
  PPSRV_TLS_AUTO = 0, /* TLS, and plain for clients that start plain */
  PPSRV_TLS_OFF,      /* --no-tls: plain only */
  PPSRV_TLS_REQUIRE   /* --require-tls: TLS only */
};

typedef struct ppsrv_config {
  int debug;            /* -d: log DEBUG lines */
  char *log_format;     /* -f: owned */
  int autodiscovery;    /* -a: announce by UDP (announce.c) */
  char *broadcast;      /* -b: owned, may be NULL (an IPv4 address) */
  int announce_ms;      /* --announce-interval, in ms */
  int restart;          /* -r: one job per worker process */
  int spawn;            /* --start-method spawn: no fork server */
  int proto;            /* -n: pickle protocol for workers; -1 = default */
  char *config_path;    /* -c: owned, may be NULL */
  char *interface;      /* -i: owned */
  int port;             /* -p */
  int nworkers;         /* -w: >= 0 (0 is allowed: a node that runs nothing) */
  uint8_t *secret;      /* owned, wiped on free; NUL-terminated for convenience */
  size_t secret_len;
  int secret_source;    /* enum ppsrv_secret_source */
  char *secret_origin;  /* owned: "PP_SECRET", a file path, ... (for the log) */
  int timeout;          /* -t: exit after this many seconds without clients; 0 = never */
  int socket_timeout;   /* -k: seconds of silence after which a client is dropped */
  char *pid_file;       /* -P: owned, may be NULL */
  char *python;         /* --python: owned */
  uint32_t max_frame;   /* --max-frame: payload limit, clients and workers */
  uint64_t job_memory_limit; /* --job-memory-limit: cap per job; 0 = none */
  uint64_t obj_limit; /* --object-store-limit: objects (Server.put) one
                         connection holds, and each worker (bytes) */
  int max_clients;      /* --max-clients; 0 = from the open-files limit */
  int tls_mode;         /* enum ppsrv_tls_mode */
  char *tls_cert, *tls_key, *tls_ca; /* owned, all or none: certificate mode */
  int help;             /* -h given: print usage, exit 0 */
  int gen_secret;       /* --gen-secret: print a random secret, exit 0 */
  int version;          /* --version given: print PP_VERSION, exit 0 */
  /* Warnings found while parsing, to be logged once the log sink is set up
   * (parsing runs before it). Owned, NUL-separated, may be NULL. */
  char *warnings;
  size_t warnings_len;
} ppsrv_config;

/* ppsrv_config_load: fill *cfg from argv, the config file named by -c (the
 * command line wins over it) and the environment (PP_SECRET). The -s
 * argument is copied and then overwritten in place in argv, so it no longer
 * shows in ps(1). Returns 0 on success; on a bad flag, value or config file
 * returns 2 and writes a message (no trailing newline) into err. A missing
 * secret is also an error (2) unless -h or --version was given. *cfg must be freed with
 * ppsrv_config_free in every case. Main thread. */
int ppsrv_config_load(ppsrv_config *cfg, int argc, char **argv, char *err,
                      size_t errlen);

/* ppsrv_config_free: release everything cfg owns, wiping the secret. */
void ppsrv_config_free(ppsrv_config *cfg);

/* ppsrv_version: "ppserver (pp) X.Y.Z", the --version line (static); the
 * version is pp's, from python/pp/_version.py. */
const char *ppsrv_version(void);

/* ppsrv_usage: the -h text (static). */
const char *ppsrv_usage(void);

/* ppsrv_secret_source_name: a short description of a secret source. */
const char *ppsrv_secret_source_name(int source);

#endif
