/* module.c — the pp._core module itself: its state and multi-phase
 * initialisation (PEP 489: the exec slot creates the heap types Func, Job
 * and Engine from their specs and imports pickle into the state; nothing is
 * process-global), the constants exported to Python (job statuses, the
 * default port, the secret and frame limits, the error table), the one
 * mapper from pp error codes to Python exceptions, parse_ppserver over the
 * core's one parser of node specifications, and the sliced wait shared by
 * Engine and Job. The types live in engine_type.c and job_type.c. */
#include "ext.h"

#include "../core/spec.h"

#include <stdlib.h>
#include <string.h>

#define SLICE_NS 50000000LL /* how often a waiting call checks for signals */

/* ---- errors ------------------------------------------------------------- */

/* exc_class: the Python exception class for a pp code (borrowed). A code
 * this switch does not name (there is none today) raises OSError, as an
 * unexpected system-level failure. */
static PyObject *exc_class(int code) {
  switch (code) {
  case PP_ENOMEM:
    return PyExc_MemoryError;
  case PP_EINVAL:
  case PP_ETOOBIG:
  case PP_EDISCOFMT:
  case PP_EDISCOMAC:
  case PP_EDISCOSTALE:
    return PyExc_ValueError;
  case PP_ETIMEDOUT:
    return PyExc_TimeoutError;
  case PP_ECLOSED: /* the Server is destroyed (pp.DestroyedError is raised
                      by the Python layer before this can happen) */
  case PP_ESTATE:
    return PyExc_RuntimeError;
  case PP_EAGAIN:
    return PyExc_BlockingIOError;
  case PP_EAUTH:
    return PyExc_PermissionError;
  case PP_EPEER:
    return PyExc_ConnectionResetError;
  case PP_ECONNREFUSED:
    return PyExc_ConnectionRefusedError;
  default: /* EMAGIC, EVERSION, ETYPE, EPROTO, ESPAWN, EIO, EADDRINUSE,
              ENOTFOUND: the system or the peer failed */
    return PyExc_OSError;
  }
}

PyObject *ppx_raise(int code, const char *what) {
  if (what != NULL)
    PyErr_Format(exc_class(code), "%s: %s", what, pp_strerror(code));
  else
    PyErr_SetString(exc_class(code), pp_strerror(code));
  return NULL;
}

/* ---- waiting ------------------------------------------------------------ */

double ppx_parse_timeout(PyObject *o) {
  if (o == NULL || o == Py_None)
    return -1.0;
  double t = PyFloat_AsDouble(o);
  if (t == -1.0 && PyErr_Occurred())
    return -2.0;
  return t < 0 ? 0 : t;
}

int ppx_wait_sliced(pp_engine *e, ppx_wait_fn fn, void *arg, double timeout) {
  int64_t left = timeout < 0 ? -1 : (int64_t)(timeout * 1e9);
  for (;;) {
    int64_t slice = (left < 0 || left > SLICE_NS) ? SLICE_NS : left;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fn(e, arg, slice);
    Py_END_ALLOW_THREADS
    if (rc == PP_OK)
      return 1;
    if (PyErr_CheckSignals() < 0)
      return -1;
    if (left >= 0) {
      left -= slice;
      if (left <= 0)
        return 0;
    }
  }
}

/* ---- state -------------------------------------------------------------- */

ppx_state *ppx_state_of_type(PyTypeObject *tp) {
#if PY_VERSION_HEX >= 0x030B0000
  PyObject *m = PyType_GetModuleByDef(tp, &ppx_module_def);
  return m != NULL ? (ppx_state *)PyModule_GetState(m) : NULL;
#else
  /* before 3.11: walk the MRO for the base whose module is ours */
  PyObject *mro = tp->tp_mro;
  for (Py_ssize_t i = 0; mro != NULL && i < PyTuple_GET_SIZE(mro); i++) {
    PyTypeObject *b = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
    if (!(b->tp_flags & Py_TPFLAGS_HEAPTYPE))
      continue;
    PyObject *m = PyType_GetModule(b);
    if (m == NULL) {
      PyErr_Clear();
      continue;
    }
    if (PyModule_GetDef(m) == &ppx_module_def)
      return (ppx_state *)PyModule_GetState(m);
  }
  PyErr_Format(PyExc_TypeError, "%s is not a pp._core type", tp->tp_name);
  return NULL;
#endif
}

/* ---- module functions --------------------------------------------------- */

/* parse_ppserver(entry) -> ("node", host, port) | ("discover", port): one
 * ppservers entry through the core's parser (spec.c), so Python and the
 * engine agree on the syntax. ValueError for anything else. GIL held. */
static PyObject *parse_ppserver(PyObject *m, PyObject *arg) {
  static const char forms[] =
      "'host', 'host:port', '[v6addr]:port', '*', '*:port' or a subnet"
      " such as '192.168.1.*' or '10.1.*.*:port'";
  Py_ssize_t len;
  PP_UNUSED(m);
  const char *s = PyUnicode_Check(arg) ? PyUnicode_AsUTF8AndSize(arg, &len)
                                       : NULL;
  if (s == NULL) {
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_UnicodeError))
      return NULL;
    PyErr_Clear();
    return PyErr_Format(PyExc_ValueError,
                        "ppservers entries are %s, not %R", forms, arg);
  }
  char *host, *port;
  unsigned dport;
  int rc = (size_t)len == strlen(s) ? pp_spec_classify(s, &host, &port, &dport)
                                    : PP_EINVAL; /* an embedded NUL */
  if (rc == PP_SPEC_DISCOVER)
    return Py_BuildValue("(sI)", "discover", dport);
  if (rc == PP_SPEC_SUBNET) {
    uint32_t net;
    int bits;
    pp_spec_subnet(s, &net, &bits, &dport); /* classify checked it */
    return Py_BuildValue("(sIki)", "subnet", dport, (unsigned long)net, bits);
  }
  if (rc == PP_SPEC_NODE) {
    /* the parser checked that port is a number in 1..65535 */
    PyObject *r = Py_BuildValue("(ssl)", "node", host, strtol(port, NULL, 10));
    free(host);
    free(port);
    return r;
  }
  if (rc == PP_EINVAL)
    return PyErr_Format(PyExc_ValueError,
                        "bad ppservers entry %R: expected %s (ports 1..65535)",
                        arg, forms);
  return ppx_raise(rc, "parse_ppserver");
}

static PyMethodDef module_methods[] = {
    PPX_WORKER_METHODS
    {"parse_ppserver", parse_ppserver, METH_O,
     "parse_ppserver(entry) -> ('node', host, port) | ('discover', port) | "
     "('subnet', port, network, bits); "
     "ValueError for a malformed ppservers entry"},
    {NULL, NULL, 0, NULL}};

/* ---- initialisation ----------------------------------------------------- */

/* add_type: create a heap type from spec bound to module m, store it in
 * *slot (a new reference the state owns) and add it to the module.
 * 0 or -1 with an exception. */
static int add_type(PyObject *m, PyType_Spec *spec, PyObject *base,
                    PyTypeObject **slot) {
  *slot = (PyTypeObject *)PyType_FromModuleAndSpec(m, spec, base);
  if (*slot == NULL)
    return -1;
  return PyModule_AddType(m, *slot);
}

/* add_error_table: pp._core.errorcode = {code: "ENAME"} for every code of
 * the core's table (like errno.errorcode). 0 or -1. */
static int add_error_table(PyObject *m) {
  PyObject *d = PyDict_New();
  if (d == NULL)
    return -1;
#define PPX__ADD_CODE(name, val, msg)                                          \
  do {                                                                         \
    PyObject *k = PyLong_FromLong(val);                                        \
    PyObject *v = PyUnicode_FromString(#name);                                 \
    int bad = k == NULL || v == NULL || PyDict_SetItem(d, k, v) < 0;           \
    Py_XDECREF(k);                                                             \
    Py_XDECREF(v);                                                             \
    if (bad) {                                                                 \
      Py_DECREF(d);                                                            \
      return -1;                                                               \
    }                                                                          \
  } while (0);
  PP_ERRNO_MAP(PPX__ADD_CODE)
#undef PPX__ADD_CODE
  if (PyModule_AddObject(m, "errorcode", d) < 0) { /* steals on success */
    Py_DECREF(d);
    return -1;
  }
  return 0;
}

/* module_exec: the Py_mod_exec slot, run once per module object: fill the
 * state and the module's namespace. 0 or -1 with an exception (the import
 * then fails and m_clear releases what was filled). */
static int module_exec(PyObject *m) {
  ppx_state *st = PyModule_GetState(m);
  /* _pickle, not pickle: the same loads/dumps without pickle.py's imports
   * (re, struct, ...), milliseconds of every worker's start. */
  PyObject *pickle = PyImport_ImportModule("_pickle");
  if (pickle == NULL)
    return -1;
  st->loads = PyObject_GetAttrString(pickle, "loads");
  st->dumps = PyObject_GetAttrString(pickle, "dumps");
  Py_DECREF(pickle);
  if (st->loads == NULL || st->dumps == NULL)
    return -1;
  if (add_type(m, &ppx_func_spec, NULL, &st->func_type) < 0 ||
      add_type(m, &ppx_job_spec, NULL, &st->job_type) < 0 ||
      add_type(m, &ppx_engine_spec, NULL, &st->engine_type) < 0 ||
      add_type(m, &ppx_lease_spec, NULL, &st->lease_type) < 0 ||
      add_type(m, &ppx_obj_spec, NULL, &st->obj_type) < 0)
    return -1;
  struct {
    const char *name;
    long value;
  } ints[] = {
      {"JOBF_CHUNK", PP_JOBF_CHUNK},
      {"JOBF_ONEARG", PP_JOBF_ONEARG},
      {"BUFS_MAX", (long)PP_BUFS_MAX},
      {"OOB_MIN", (long)PPX_OOB_MIN},
      {"JOB_OBJS_MAX", (long)PP_JOB_OBJS_MAX},
      {"OBJ_LIMIT_DEFAULT", (long)PP_OBJ_LIMIT_DEFAULT},
      {"ST_OK", PP_JOB_OK},
      {"ST_EXC", PP_JOB_EXC},
      {"ST_SERIAL", PP_JOB_SERIAL},
      {"ST_LOST", PP_JOB_LOST},
      {"ST_DESTROYED", PP_JOB_DESTROYED},
      {"ST_CANCELLED", PP_JOB_CANCELLED},
      {"ST_FAILED", PP_JOB_FAILED},
      {"ST_TIMEOUT", PP_JOB_TIMEOUT},
      {"ST_ABORTED", PP_JOB_ABORTED},
      {"STATE_QUEUED", PP_JOB_QUEUED},
      {"STATE_RUNNING", PP_JOB_RUNNING},
      {"STATE_DONE", PP_JOB_DONE},
      {"DEFAULT_PORT", PP_DEFAULT_PORT},
      {"SECRET_MAX", (long)PP_SECRET_MAX},
      {"MAX_NODE_WORKERS", (long)PP_MAX_NODE_WORKERS_DEFAULT},
      {"FRAME_MAX", (long)PP_FRAME_MAX_DEFAULT},
  };
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
    if (PyModule_AddIntConstant(m, ints[i].name, ints[i].value) < 0)
      return -1;
  return add_error_table(m);
}

static int module_traverse(PyObject *m, visitproc visit, void *arg) {
  ppx_state *st = PyModule_GetState(m);
  if (st == NULL)
    return 0;
  Py_VISIT(st->func_type);
  Py_VISIT(st->obj_type);
  Py_VISIT(st->job_type);
  Py_VISIT(st->engine_type);
  Py_VISIT(st->lease_type);
  Py_VISIT(st->loads);
  Py_VISIT(st->dumps);
  return 0;
}

static int module_clear(PyObject *m) {
  ppx_state *st = PyModule_GetState(m);
  if (st == NULL)
    return 0;
  Py_CLEAR(st->func_type);
  Py_CLEAR(st->obj_type);
  Py_CLEAR(st->job_type);
  Py_CLEAR(st->engine_type);
  Py_CLEAR(st->lease_type);
  Py_CLEAR(st->loads);
  Py_CLEAR(st->dumps);
  return 0;
}

static void module_free(void *m) { module_clear((PyObject *)m); }

static PyModuleDef_Slot module_slots[] = {{Py_mod_exec, module_exec},
                                          {0, NULL}};

struct PyModuleDef ppx_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pp._core",
    .m_doc = "The C engine of pp: job queue, scheduler, worker pool, framing.",
    .m_size = sizeof(ppx_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&ppx_module_def); }
