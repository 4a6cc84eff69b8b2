/* wmodule.c — pp._wcore, the worker's extension: the worker loop
 * (worker.c), the fork server's loop (forkserver.c) and the out-of-band
 * buffer helpers they and pp._oob / pp._objects use (lease.c), built
 * from the same sources as pp._core but without the engine and without
 * OpenSSL. A worker and the fork server import only this module: loading
 * pp._core maps libssl and libcrypto, about 2 ms of every interpreter's
 * start on the way to the first job (W5). The client imports both (pp._oob
 * runs there too). The module state is ext.h's ppx_state; only loads,
 * dumps and lease_type are filled here. */
#include "ext.h"

#include "../core/frame.h"

static PyMethodDef wmodule_methods[] = {PPX_WORKER_METHODS
                                        {NULL, NULL, 0, NULL}};

/* wmodule_exec: the Py_mod_exec slot: _pickle's loads/dumps, the Lease
 * type, the constants pp._oob reads. 0 or -1 with an exception. */
static int wmodule_exec(PyObject *m) {
  ppx_state *st = PyModule_GetState(m);
  PyObject *pickle = PyImport_ImportModule("_pickle");
  if (pickle == NULL)
    return -1;
  st->loads = PyObject_GetAttrString(pickle, "loads");
  st->dumps = PyObject_GetAttrString(pickle, "dumps");
  Py_DECREF(pickle);
  if (st->loads == NULL || st->dumps == NULL)
    return -1;
  st->lease_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &ppx_lease_spec,
                                                            NULL);
  if (st->lease_type == NULL || PyModule_AddType(m, st->lease_type) < 0)
    return -1;
  if (PyModule_AddIntConstant(m, "OOB_MIN", (long)PPX_OOB_MIN) < 0 ||
      PyModule_AddIntConstant(m, "BUFS_MAX", (long)PP_BUFS_MAX) < 0)
    return -1;
  return 0;
}

static int wmodule_traverse(PyObject *m, visitproc visit, void *arg) {
  ppx_state *st = PyModule_GetState(m);
  if (st == NULL)
    return 0;
  Py_VISIT(st->lease_type);
  Py_VISIT(st->loads);
  Py_VISIT(st->dumps);
  return 0;
}

static int wmodule_clear(PyObject *m) {
  ppx_state *st = PyModule_GetState(m);
  if (st == NULL)
    return 0;
  Py_CLEAR(st->lease_type);
  Py_CLEAR(st->loads);
  Py_CLEAR(st->dumps);
  return 0;
}

static void wmodule_free(void *m) { wmodule_clear((PyObject *)m); }

static PyModuleDef_Slot wmodule_slots[] = {{Py_mod_exec, wmodule_exec},
                                           {0, NULL}};

static struct PyModuleDef wmodule_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pp._wcore",
    .m_doc = "pp's worker loop and fork server, without the engine.",
    .m_size = sizeof(ppx_state),
    .m_methods = wmodule_methods,
    .m_slots = wmodule_slots,
    .m_traverse = wmodule_traverse,
    .m_clear = wmodule_clear,
    .m_free = wmodule_free,
};

PyMODINIT_FUNC PyInit__wcore(void) { return PyModuleDef_Init(&wmodule_def); }
