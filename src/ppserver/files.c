/* files.c — ppserver's care with the files it trusts (see files.h): a file
 * that holds the secret (a secret file, a config file with `secret =`,
 * ~/.pythonrc.py) must not be readable or writable by other users, and a
 * config file must not be writable by them (it names the interpreter the
 * workers run); the pid file is created without following a symbolic link
 * and removed only while it is still ours; running as root is said out
 * loud. Main thread, before and after the loop. */
#include "files.h"

#include "pp_common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void put_err(char *err, size_t errlen, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static void put_err(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

int ppsrv_file_trusted(const struct stat *st, const char *path,
                       const char *what, int holds_secret, char *err,
                       size_t errlen) {
  unsigned mode = (unsigned)(st->st_mode & 07777);
  if (st->st_uid != geteuid() && st->st_uid != 0) {
    put_err(err, errlen,
            "%s %s belongs to another user (uid %u): refused; it must belong"
            " to the user running ppserver (or root)", what, path,
            (unsigned)st->st_uid);
    return 2;
  }
  if (holds_secret && (mode & 077)) {
    put_err(err, errlen,
            "%s %s holds the secret and other users may access it (mode"
            " %04o): refused; run `chmod 600 %s`", what, path, mode, path);
    return 2;
  }
  if (mode & 022) {
    put_err(err, errlen,
            "%s %s is writable by other users (mode %04o): refused; run"
            " `chmod go-w %s`", what, path, mode, path);
    return 2;
  }
  return 0;
}

int ppsrv_path_trusted(const char *path, const char *what, int holds_secret,
                       char *err, size_t errlen) {
  struct stat st;
  if (stat(path, &st) != 0) {
    put_err(err, errlen, "cannot read %s %s: %s", what, path, strerror(errno));
    return 2;
  }
  return ppsrv_file_trusted(&st, path, what, holds_secret, err, errlen);
}

void ppsrv_warn_if_root(void) {
  if (geteuid() == 0)
    pp_log(PP_LOG_WARNING,
           "running as root: the workers run every client's code as root too;"
           " run ppserver as an unprivileged user");
}

/* pid_of_file: the pid written in the regular file at path (not a link),
 * or 0 if it holds none; -1 if it is not a regular file. */
static long pid_of_file(const char *path) {
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return -1;
  struct stat st;
  char text[32];
  long pid = -1;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    ssize_t n = read(fd, text, sizeof text - 1);
    pid = 0;
    if (n > 0) {
      text[n] = '\0';
      char *end;
      long v = strtol(text, &end, 10);
      if (end != text && v > 0 && (*end == '\n' || *end == '\0'))
        pid = v;
    }
  }
  close(fd);
  return pid;
}

int ppsrv_pidfile_write(const char *path, char *err, size_t errlen) {
  char text[32];
  int n = snprintf(text, sizeof text, "%d\n", (int)getpid());
  /* twice at most: once more after removing a stale file of a dead pid */
  for (int attempt = 0; attempt < 2; attempt++) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                  0644);
    if (fd >= 0) {
      ssize_t w = write(fd, text, (size_t)n);
      int werr = errno;
      if (close(fd) != 0 && w == n) {
        w = -1;
        werr = errno;
      }
      if (w != n) {
        unlink(path);
        put_err(err, errlen, "cannot write pid file %s: %s", path,
                w < 0 ? strerror(werr) : "short write");
        return -1;
      }
      return 0;
    }
    if (errno != EEXIST) {
      put_err(err, errlen, "cannot write pid file %s: %s", path,
              errno == ELOOP ? "it is a symbolic link" : strerror(errno));
      return -1;
    }
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
      put_err(err, errlen,
              "cannot write pid file %s: it exists and is %s; refused (it is"
              " never followed or replaced)", path,
              S_ISLNK(st.st_mode) ? "a symbolic link" : "not a regular file");
      return -1;
    }
    long pid = pid_of_file(path);
    if (pid > 0 && pid != (long)getpid() &&
        (kill((pid_t)pid, 0) == 0 || errno == EPERM)) {
      put_err(err, errlen,
              "cannot write pid file %s: process %ld named in it is running"
              " (another ppserver?)", path, pid);
      return -1;
    }
    /* stale: its process is gone (or it names none) */
    if (unlink(path) != 0 && errno != ENOENT) {
      put_err(err, errlen, "cannot replace stale pid file %s: %s", path,
              strerror(errno));
      return -1;
    }
    pp_log(PP_LOG_INFO, "replaced stale pid file %s (pid %ld)", path, pid);
  }
  put_err(err, errlen, "cannot write pid file %s: it keeps reappearing", path);
  return -1;
}

void ppsrv_pidfile_remove(const char *path) {
  if (pid_of_file(path) == (long)getpid())
    unlink(path);
}
