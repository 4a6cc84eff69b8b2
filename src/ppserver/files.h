/* files.h — the files ppserver trusts and writes: permission checks for
 * files that hold the secret or name what the workers run, the pid file
 * (never through a symbolic link), and the warning about running as root.
 * Main thread; no state. */
#ifndef PPSRV_FILES_H
#define PPSRV_FILES_H

#include <stddef.h>
#include <sys/stat.h>

/* ppsrv_file_trusted: whether a file (st: its fstat, path and what, e.g.
 * "secret file", for the message) may be used: it must belong to us or
 * root and not be writable by group or others; when holds_secret, group
 * and others must have no access at all. Returns 0, or 2 with a message
 * (saying which chmod fixes it) in err. */
int ppsrv_file_trusted(const struct stat *st, const char *path,
                       const char *what, int holds_secret, char *err,
                       size_t errlen);

/* ppsrv_path_trusted: ppsrv_file_trusted for a path (stat follows links:
 * the file checked is the one that would be read). 0 or 2 with err (also
 * when the file cannot be examined). For ~/.pythonrc.py and the like. */
int ppsrv_path_trusted(const char *path, const char *what, int holds_secret,
                       char *err, size_t errlen);

/* ppsrv_pidfile_write: create path holding "<pid>\n", exclusively and
 * never through a symbolic link (O_CREAT|O_EXCL|O_NOFOLLOW). An existing
 * regular file naming a process that is gone is stale and replaced; a
 * symbolic link, a non-regular file or a file naming a live process is
 * refused. Returns 0, or -1 with a message in err. */
int ppsrv_pidfile_write(const char *path, char *err, size_t errlen);

/* ppsrv_pidfile_remove: unlink path if it is still a regular file that
 * names this process (never someone else's file, never through a link). */
void ppsrv_pidfile_remove(const char *path);

/* ppsrv_warn_if_root: log a WARNING when the effective user is root. */
void ppsrv_warn_if_root(void);

#endif
