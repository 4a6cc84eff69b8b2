/* logsink.h — ppserver's log output: every pp_log line (from the main thread
 * and from the engine thread) is formatted with a Python-logging style format
 * (-f, default "%(asctime)s %(levelname)s %(message)s") and written to
 * stderr as one write(2). */
#ifndef PPSRV_LOGSINK_H
#define PPSRV_LOGSINK_H

#include <stddef.h>

/* ppsrv_logfmt_check: validate a format string. Supported: %(asctime)s,
 * %(levelname)s, %(message)s, %(name)s, %(process)d, %(levelno)d and %%,
 * each placeholder with optional printf flags, width and precision (for
 * example %(levelname)-8s) and conversion s or d (d only for numbers).
 * Returns 0, or -1 with a message in err. Any thread. */
int ppsrv_logfmt_check(const char *fmt, char *err, size_t errlen);

/* ppsrv_logsink_install: copy fmt (which must have passed the check) and
 * point pp_log at the sink; the level is DEBUG when debug is set, else INFO.
 * Returns 0 or -1 when out of memory. Main thread, before other threads
 * start. */
int ppsrv_logsink_install(const char *fmt, int debug);

/* ppsrv_logsink_uninstall: restore pp_log's default sink and free the copy
 * of the format. Main thread, after every other thread has stopped. */
void ppsrv_logsink_uninstall(void);

#endif
