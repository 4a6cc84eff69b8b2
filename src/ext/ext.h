/* ext.h — declarations shared by the files of the pp._core extension. */
#ifndef PP_EXT_H
#define PP_EXT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* pickle.loads / pickle.dumps, imported at module init. */
extern PyObject *ppx_loads;
extern PyObject *ppx_dumps;

/* ppx_worker_main: the worker process's main loop (worker.c).
 * Python signature: worker_main(fd, loader, excfmt, proto, restart). */
PyObject *ppx_worker_main(PyObject *self, PyObject *args);

#endif
