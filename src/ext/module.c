/* module.c — the pp._core extension: the Engine, Func and Job types that
 * bridge Python to the C engine. Python objects never cross into the core:
 * arguments and results travel as pickled bytes; every wait releases the
 * GIL and wakes every 50 ms to let Ctrl-C through. */
#include "ext.h"

#include "../core/engine.h"

#include <structmember.h>

PyObject *ppx_loads;
PyObject *ppx_dumps;

#define SLICE_NS 50000000LL /* how often a waiting call checks for signals */

/* ---- Func --------------------------------------------------------------- */

typedef struct {
  PyObject_HEAD
  pp_func *f;
} FuncObject;

static int Func_init(FuncObject *self, PyObject *args, PyObject *kw) {
  Py_buffer b;
  static char *kwlist[] = {"blob", NULL};
  if (!PyArg_ParseTupleAndKeywords(args, kw, "y*", kwlist, &b))
    return -1;
  if (b.len > (Py_ssize_t)(PP_FRAME_MAX_DEFAULT - PP_KEY_LEN)) {
    PyBuffer_Release(&b);
    PyErr_SetString(PyExc_ValueError, "function descriptor too large");
    return -1;
  }
  pp_func *f = pp_func_new(b.buf, (size_t)b.len);
  PyBuffer_Release(&b);
  if (f == NULL) {
    PyErr_NoMemory();
    return -1;
  }
  pp_func_unref(self->f);
  self->f = f;
  return 0;
}

static void Func_dealloc(FuncObject *self) {
  pp_func_unref(self->f);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Func_key(FuncObject *self, void *c) {
  PP_UNUSED(c);
  if (self->f == NULL)
    Py_RETURN_NONE;
  return PyBytes_FromStringAndSize((const char *)self->f->key, PP_KEY_LEN);
}

static PyGetSetDef Func_getset[] = {
    {"key", (getter)Func_key, NULL, "SHA-256 of the descriptor", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject FuncType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pp._core.Func",
    .tp_basicsize = sizeof(FuncObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A function descriptor shipped to workers once, by content key.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Func_init,
    .tp_dealloc = (destructor)Func_dealloc,
    .tp_getset = Func_getset,
};

/* ---- Engine ------------------------------------------------------------- */

typedef struct {
  PyObject_HEAD
  pp_engine *e;
  PyTypeObject *job_type; /* the class submit() instantiates */
} EngineObject;

typedef struct {
  PyObject_HEAD
  pp_job *j;
  EngineObject *engine;
  PyObject *result;        /* cached unpickled value */
  PyObject *callback;
  PyObject *callbackargs;
  PyObject *done_callbacks;
  PyObject *server;
} JobObject;

static PyTypeObject JobType;

static char **list_to_strv(PyObject *list, int *err) {
  *err = 0;
  if (list == Py_None)
    return NULL;
  PyObject *seq = PySequence_Fast(list, "expected a list of str");
  if (seq == NULL) {
    *err = 1;
    return NULL;
  }
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  char **v = PyMem_Calloc((size_t)n + 1, sizeof *v);
  for (Py_ssize_t i = 0; v != NULL && i < n; i++) {
    const char *s = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
    if (s == NULL) {
      PyMem_Free(v);
      v = NULL;
      break;
    }
    v[i] = (char *)s; /* borrowed from the str objects kept alive by seq */
  }
  if (v == NULL) {
    *err = 1;
    if (!PyErr_Occurred())
      PyErr_NoMemory();
  }
  Py_DECREF(seq);
  return v;
}

static int engine_init2(EngineObject *self, PyObject *argv, PyObject *env,
                        const char *cwd, int nworkers, int restart,
                        int max_retries, PyObject *jt, PyObject *nodes,
                        Py_buffer *secret, double node_timeout,
                        double no_capacity, const uint16_t *ports,
                        int nports);

/* parse_ports: a sequence of 1..64 UDP ports (ints 1..65535) into ports[].
 * Returns the count (0 for None), or -1 with an exception. GIL held. */
static int parse_ports(PyObject *seq, uint16_t ports[64]) {
  if (seq == Py_None)
    return 0;
  PyObject *l = PySequence_List(seq);
  if (l == NULL)
    return -1;
  Py_ssize_t n = PyList_GET_SIZE(l);
  if (n > 64) {
    Py_DECREF(l);
    PyErr_SetString(PyExc_ValueError, "at most 64 discovery ports");
    return -1;
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    long v = PyLong_AsLong(PyList_GET_ITEM(l, i));
    if (v == -1 && PyErr_Occurred()) {
      Py_DECREF(l);
      return -1;
    }
    if (v < 1 || v > 65535) {
      Py_DECREF(l);
      PyErr_Format(PyExc_ValueError, "bad discovery port %ld", v);
      return -1;
    }
    ports[i] = (uint16_t)v;
  }
  Py_DECREF(l);
  return (int)n;
}

static int Engine_init(EngineObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"argv",  "env",          "cwd",
                           "nworkers", "restart",   "max_retries",
                           "job_type", "nodes",     "secret",
                           "node_timeout", "no_capacity_timeout",
                           "discover", NULL};
  PyObject *argv, *env = Py_None, *jt = (PyObject *)&JobType;
  PyObject *nodes = Py_None, *discover = Py_None;
  uint16_t ports[64];
  Py_buffer secret = {0};
  const char *cwd = NULL;
  double node_timeout = 5.0, no_capacity = 0.0;
  int nworkers = 0, restart = 0, max_retries = 2;
  if (self->e != NULL) {
    PyErr_SetString(PyExc_RuntimeError, "Engine already initialised");
    return -1;
  }
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OzipiOOz*ddO", kwlist, &argv,
                                   &env, &cwd, &nworkers, &restart,
                                   &max_retries, &jt, &nodes, &secret,
                                   &node_timeout, &no_capacity, &discover))
    return -1;
  int nports = parse_ports(discover, ports);
  if (nports < 0) {
    PyBuffer_Release(&secret);
    return -1;
  }
  int rc = engine_init2(self, argv, env, cwd, nworkers, restart, max_retries,
                        jt, nodes, &secret, node_timeout, no_capacity, ports,
                        nports);
  PyBuffer_Release(&secret);
  return rc;
}

/* engine_init2: the body of Engine.__init__ once arguments are parsed.
 * 0 or -1 with an exception. GIL held. */
static int engine_init2(EngineObject *self, PyObject *argv, PyObject *env,
                        const char *cwd, int nworkers, int restart,
                        int max_retries, PyObject *jt, PyObject *nodes,
                        Py_buffer *secret, double node_timeout,
                        double no_capacity, const uint16_t *ports,
                        int nports) {
  int err;
  if (node_timeout <= 0 || node_timeout > 86400 || no_capacity < 0 ||
      no_capacity > 4e6) {
    PyErr_SetString(PyExc_ValueError, "bad node_timeout or no_capacity_timeout");
    return -1;
  }
  if (!PyType_Check(jt) ||
      !PyType_IsSubtype((PyTypeObject *)jt, &JobType)) {
    PyErr_SetString(PyExc_TypeError, "job_type must subclass pp._core.Job");
    return -1;
  }
  /* keep the str objects alive while the C strings are borrowed */
  PyObject *argl = PySequence_List(argv);
  PyObject *envl = env == Py_None ? Py_None : PySequence_List(env);
  if (argl == NULL || envl == NULL) {
    Py_XDECREF(argl);
    return -1;
  }
  if (envl == Py_None)
    Py_INCREF(envl);
  PyObject *nodel = nodes == Py_None ? Py_None : PySequence_List(nodes);
  if (nodel == NULL) {
    Py_DECREF(argl);
    Py_DECREF(envl);
    return -1;
  }
  if (nodel == Py_None)
    Py_INCREF(nodel);
  char **cargv = list_to_strv(argl, &err);
  char **cenv = err ? NULL : list_to_strv(envl, &err);
  char **cnodes = err ? NULL : list_to_strv(nodel, &err);
  int rc = -1;
  if (!err) {
    if (cargv == NULL || cargv[0] == NULL) {
      PyErr_SetString(PyExc_ValueError, "argv must not be empty");
    } else {
      pp_engine_opts o = {cargv, cenv, cwd, nworkers, restart, max_retries,
                          0, 1, NULL, NULL, cnodes,
                          secret->buf, (size_t)secret->len,
                          (uint32_t)(node_timeout * 1000),
                          (uint32_t)(no_capacity * 1000), ports, nports};
      int erc = pp_engine_new(&o, &self->e);
      if (erc == PP_EINVAL)
        PyErr_SetString(PyExc_ValueError,
                        "bad engine options (a node address, or a missing "
                        "or too long secret)");
      else if (erc != PP_OK)
        PyErr_Format(PyExc_OSError, "cannot start the pp engine: %s",
                     pp_strerror(erc));
      else
        rc = 0;
    }
  }
  PyMem_Free(cargv);
  PyMem_Free(cenv);
  PyMem_Free(cnodes);
  Py_DECREF(argl);
  Py_DECREF(envl);
  Py_DECREF(nodel);
  if (rc == 0) {
    Py_INCREF(jt);
    Py_XSETREF(self->job_type, (PyTypeObject *)jt);
  }
  return rc;
}

/* drain_events: after shutdown, release the Python references parked in
 * jobs that were waiting for the callback thread. GIL held. */
static void drain_events(EngineObject *self) {
  pp_event ev;
  while (pp_engine_next_event(self->e, 0, &ev) == PP_OK && ev.kind != PP_EV_NONE) {
    if (ev.kind == PP_EV_JOB) {
      Py_XDECREF((PyObject *)ev.job->udata);
      ev.job->udata = NULL;
      pp_job_unref(ev.job);
    } else {
      free(ev.msg);
    }
  }
}

static void Engine_dealloc(EngineObject *self) {
  if (self->e != NULL) {
    Py_BEGIN_ALLOW_THREADS
    pp_engine_shutdown(self->e);
    Py_END_ALLOW_THREADS
    drain_events(self);
    pp_engine_free(self->e);
    self->e = NULL;
  }
  Py_XDECREF(self->job_type);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static int engine_ok(EngineObject *self) {
  if (self->e == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "engine not initialised");
    return 0;
  }
  return 1;
}

/* Engine.submit(func, data, group, flags, want_callback) -> Job */
static PyObject *Engine_submit(EngineObject *self, PyObject *const *args,
                               Py_ssize_t nargs) {
  Py_buffer b;
  if (!engine_ok(self))
    return NULL;
  if (nargs != 6 || !PyObject_TypeCheck(args[0], &FuncType)) {
    PyErr_SetString(PyExc_TypeError,
                    "submit(func: Func, data: bytes, group: int, flags: int, "
                    "callback, callbackargs)");
    return NULL;
  }
  long group = PyLong_AsLong(args[2]);
  long flags = PyLong_AsLong(args[3]);
  int want_cb = args[4] != Py_None;
  if (PyErr_Occurred())
    return NULL;
  if (group < 0 || group > 0x7fffffffL) {
    PyErr_SetString(PyExc_ValueError, "bad group index");
    return NULL;
  }
  FuncObject *fo = (FuncObject *)args[0];
  if (PyObject_GetBuffer(args[1], &b, PyBUF_SIMPLE) < 0)
    return NULL;
  if ((size_t)b.len > PP_FRAME_MAX_DEFAULT - PP_KEY_LEN) {
    PyBuffer_Release(&b);
    PyErr_SetString(PyExc_ValueError,
                    "pickled arguments exceed the 1 GiB frame limit");
    return NULL;
  }
  uint8_t *copy = malloc(b.len ? (size_t)b.len : 1);
  if (copy == NULL) {
    PyBuffer_Release(&b);
    return PyErr_NoMemory();
  }
  memcpy(copy, b.buf, (size_t)b.len);
  size_t len = (size_t)b.len;
  PyBuffer_Release(&b);
  pp_job *j = pp_job_new(fo->f, copy, len, (uint32_t)flags, (uint32_t)group);
  if (j == NULL) {
    free(copy);
    return PyErr_NoMemory();
  }
  JobObject *job = (JobObject *)self->job_type->tp_alloc(self->job_type, 0);
  if (job == NULL) {
    pp_job_unref(j);
    return NULL;
  }
  job->j = j;
  Py_INCREF(self);
  job->engine = self;
  if (want_cb) { /* the event queue holds a reference until the callback ran */
    Py_INCREF(args[4]);
    job->callback = args[4];
    Py_INCREF(args[5]);
    job->callbackargs = args[5];
    Py_INCREF(job);
    j->want_callback = 1;
    j->udata = job;
  }
  int rc = pp_engine_submit(self->e, j);
  if (rc != PP_OK) {
    if (want_cb) {
      j->want_callback = 0;
      j->udata = NULL;
      Py_DECREF(job);
    }
    Py_DECREF(job);
    PyErr_SetString(PyExc_RuntimeError,
                    rc == PP_ECLOSED ? "the pp Server has been destroyed"
                                     : pp_strerror(rc));
    return NULL;
  }
  return (PyObject *)job;
}

/* wait_sliced: run a wait in slices with the GIL released, checking for
 * signals in between. Returns 1 done, 0 timed out, -1 exception set. */
typedef int (*wait_fn)(pp_engine *e, void *arg, int64_t slice_ns);

static int wait_sliced(pp_engine *e, wait_fn fn, void *arg, double timeout) {
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

static double parse_timeout(PyObject *o, int *err) {
  *err = 0;
  if (o == NULL || o == Py_None)
    return -1.0;
  double t = PyFloat_AsDouble(o);
  if (t == -1.0 && PyErr_Occurred()) {
    *err = 1;
    return 0;
  }
  return t < 0 ? 0 : t;
}

static int wait_group_fn(pp_engine *e, void *arg, int64_t ns) {
  return pp_engine_wait_group(e, *(int64_t *)arg, ns);
}

/* Engine.wait_group(group or -1, timeout=None) -> bool */
static PyObject *Engine_wait_group(EngineObject *self, PyObject *args) {
  long long group;
  PyObject *to = Py_None;
  int err;
  if (!engine_ok(self) || !PyArg_ParseTuple(args, "L|O", &group, &to))
    return NULL;
  double t = parse_timeout(to, &err);
  if (err)
    return NULL;
  int64_t g = group;
  int r = wait_sliced(self->e, wait_group_fn, &g, t);
  if (r < 0)
    return NULL;
  return PyBool_FromLong(r);
}

static PyObject *Engine_generation(EngineObject *self, PyObject *unused) {
  PP_UNUSED(unused);
  if (!engine_ok(self))
    return NULL;
  return PyLong_FromUnsignedLongLong(pp_engine_generation(self->e));
}

static int wait_gen_fn(pp_engine *e, void *arg, int64_t ns) {
  return pp_engine_wait_generation(e, *(uint64_t *)arg, ns);
}

/* Engine.wait_generation(gen, timeout=None) -> bool */
static PyObject *Engine_wait_generation(EngineObject *self, PyObject *args) {
  unsigned long long gen;
  PyObject *to = Py_None;
  int err;
  if (!engine_ok(self) || !PyArg_ParseTuple(args, "K|O", &gen, &to))
    return NULL;
  double t = parse_timeout(to, &err);
  if (err)
    return NULL;
  uint64_t g = gen;
  int r = wait_sliced(self->e, wait_gen_fn, &g, t);
  if (r < 0)
    return NULL;
  return PyBool_FromLong(r);
}

/* Engine.next_event(timeout) -> None | ('job', job) | ('log', level, msg)
 * | False once the engine is shut down and drained. */
static PyObject *Engine_next_event(EngineObject *self, PyObject *arg) {
  pp_event ev;
  int rc;
  if (!engine_ok(self))
    return NULL;
  double t = PyFloat_AsDouble(arg);
  if (t == -1.0 && PyErr_Occurred())
    return NULL;
  Py_BEGIN_ALLOW_THREADS
  rc = pp_engine_next_event(self->e, (int64_t)(t * 1e9), &ev);
  Py_END_ALLOW_THREADS
  if (rc == PP_ECLOSED)
    Py_RETURN_FALSE;
  if (ev.kind == PP_EV_LOG) {
    PyObject *r = Py_BuildValue("(sis)", "log", ev.level, ev.msg);
    free(ev.msg);
    return r;
  }
  if (ev.kind == PP_EV_JOB) {
    PyObject *job = ev.job->udata; /* the reference moves to the caller */
    ev.job->udata = NULL;
    pp_job_unref(ev.job); /* the job object holds its own reference */
    PyObject *r = Py_BuildValue("(sN)", "job", job);
    return r;
  }
  Py_RETURN_NONE;
}

static PyObject *Engine_set_nworkers(EngineObject *self, PyObject *arg) {
  if (!engine_ok(self))
    return NULL;
  long n = PyLong_AsLong(arg);
  if (n == -1 && PyErr_Occurred())
    return NULL;
  if (n < 0 || n > 4096) {
    PyErr_SetString(PyExc_ValueError, "ncpus must be between 0 and 4096");
    return NULL;
  }
  int rc = pp_engine_set_nworkers(self->e, (int)n);
  if (rc != PP_OK) {
    PyErr_SetString(PyExc_RuntimeError, pp_strerror(rc));
    return NULL;
  }
  Py_RETURN_NONE;
}

static PyObject *Engine_stats(EngineObject *self, PyObject *unused) {
  pp_engine_stats s;
  PP_UNUSED(unused);
  if (!engine_ok(self))
    return NULL;
  pp_engine_get_stats(self->e, &s);
  return Py_BuildValue("{sKsdsisisKsK}", "njobs",
                       (unsigned long long)s.njobs, "time", s.time_ns / 1e9,
                       "nworkers", s.nworkers, "nlive", s.nlive, "queued",
                       (unsigned long long)s.queued, "running",
                       (unsigned long long)s.running);
}

/* Engine.pids() -> {pid: results returned} for the live workers */
static PyObject *Engine_pids(EngineObject *self, PyObject *unused) {
  enum { MAXP = 4096 };
  PP_UNUSED(unused);
  if (!engine_ok(self))
    return NULL;
  int *pids = PyMem_Malloc(MAXP * sizeof *pids);
  uint64_t *njobs = PyMem_Malloc(MAXP * sizeof *njobs);
  PyObject *d = (pids && njobs) ? PyDict_New() : PyErr_NoMemory();
  int n = d ? pp_engine_worker_pids(self->e, pids, njobs, MAXP) : 0;
  for (int i = 0; i < n; i++) {
    PyObject *k = PyLong_FromLong(pids[i]);
    PyObject *v = PyLong_FromUnsignedLongLong(njobs[i]);
    if (k == NULL || v == NULL || PyDict_SetItem(d, k, v) < 0)
      Py_CLEAR(d);
    Py_XDECREF(k);
    Py_XDECREF(v);
    if (d == NULL)
      break;
  }
  PyMem_Free(pids);
  PyMem_Free(njobs);
  return d;
}

/* Engine.node_stats() -> [(name, connected, nworkers, njobs, time)] */
static PyObject *Engine_node_stats(EngineObject *self, PyObject *unused) {
  enum { MAXN = 1024 };
  PP_UNUSED(unused);
  if (!engine_ok(self))
    return NULL;
  pp_node_stats *st = PyMem_Malloc(MAXN * sizeof *st);
  if (st == NULL)
    return PyErr_NoMemory();
  int n = pp_engine_node_stats(self->e, st, MAXN);
  if (n > MAXN)
    n = MAXN;
  PyObject *l = PyList_New(n);
  for (int i = 0; l && i < n; i++) {
    PyObject *t = Py_BuildValue("(siiKd)", st[i].name, st[i].connected,
                                st[i].nworkers,
                                (unsigned long long)st[i].njobs,
                                st[i].time_ns / 1e9);
    if (t == NULL)
      Py_CLEAR(l);
    else
      PyList_SET_ITEM(l, i, t);
  }
  PyMem_Free(st);
  return l;
}

static PyObject *Engine_shutdown(EngineObject *self, PyObject *unused) {
  PP_UNUSED(unused);
  if (!engine_ok(self))
    return NULL;
  Py_BEGIN_ALLOW_THREADS
  pp_engine_shutdown(self->e);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

/* Engine.want_callback(job) -> 1 registered now, 2 already registered,
 * 0 already done. */
static PyObject *Engine_want_callback(EngineObject *self, PyObject *arg) {
  if (!engine_ok(self))
    return NULL;
  if (!PyObject_TypeCheck(arg, &JobType)) {
    PyErr_SetString(PyExc_TypeError, "expected a Job");
    return NULL;
  }
  JobObject *job = (JobObject *)arg;
  Py_INCREF(job);
  if (pp_engine_want_callback(self->e, job->j, job))
    return PyLong_FromLong(1);
  Py_DECREF(job);
  return PyLong_FromLong(pp_job_done(job->j) ? 0 : 2);
}

static PyObject *Engine_callback_done(EngineObject *self, PyObject *arg) {
  if (!engine_ok(self))
    return NULL;
  if (!PyObject_TypeCheck(arg, &JobType)) {
    PyErr_SetString(PyExc_TypeError, "expected a Job");
    return NULL;
  }
  pp_engine_callback_done(self->e, ((JobObject *)arg)->j);
  Py_RETURN_NONE;
}

static PyMethodDef Engine_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))Engine_submit, METH_FASTCALL,
     "submit(func, data, group, flags, callback, callbackargs) -> Job"},
    {"wait_group", (PyCFunction)Engine_wait_group, METH_VARARGS,
     "wait_group(group, timeout=None) -> bool; group -1 = all"},
    {"generation", (PyCFunction)Engine_generation, METH_NOARGS,
     "completion counter"},
    {"wait_generation", (PyCFunction)Engine_wait_generation, METH_VARARGS,
     "wait_generation(gen, timeout=None) -> bool"},
    {"next_event", (PyCFunction)Engine_next_event, METH_O,
     "next_event(timeout) -> None | ('job', job) | ('log', level, msg) | False"},
    {"set_nworkers", (PyCFunction)Engine_set_nworkers, METH_O,
     "set the local pool size"},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS, "counters as a dict"},
    {"pids", (PyCFunction)Engine_pids, METH_NOARGS, "live worker pids"},
    {"node_stats", (PyCFunction)Engine_node_stats, METH_NOARGS,
     "[(name, connected, nworkers, njobs, time)] per remote node"},
    {"shutdown", (PyCFunction)Engine_shutdown, METH_NOARGS,
     "stop: fail unfinished jobs, kill workers (idempotent)"},
    {"want_callback", (PyCFunction)Engine_want_callback, METH_O,
     "route the job's completion through next_event"},
    {"callback_done", (PyCFunction)Engine_callback_done, METH_O,
     "the job's callbacks ran"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pp._core.Engine",
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The C engine: job queue, scheduler and worker pool.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

/* ---- Job ---------------------------------------------------------------- */

static int Job_traverse(JobObject *self, visitproc visit, void *arg) {
  Py_VISIT(self->engine);
  Py_VISIT(self->result);
  Py_VISIT(self->callback);
  Py_VISIT(self->callbackargs);
  Py_VISIT(self->done_callbacks);
  Py_VISIT(self->server);
  return 0;
}

static int Job_clear(JobObject *self) {
  Py_CLEAR(self->result);
  Py_CLEAR(self->callback);
  Py_CLEAR(self->callbackargs);
  Py_CLEAR(self->done_callbacks);
  Py_CLEAR(self->server);
  return 0;
}

static void Job_dealloc(JobObject *self) {
  PyObject_GC_UnTrack(self);
  Job_clear(self);
  pp_job_unref(self->j);
  Py_CLEAR(self->engine);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static int wait_job_fn(pp_engine *e, void *arg, int64_t ns) {
  return pp_engine_wait_job(e, (pp_job *)arg, ns);
}

/* job_wait: 1 done, 0 timeout, -1 exception. */
static int job_wait(JobObject *self, double timeout) {
  if (self->j == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "job not initialised");
    return -1;
  }
  if (pp_job_done(self->j))
    return 1;
  return wait_sliced(self->engine->e, wait_job_fn, self->j, timeout);
}

/* job_value: the unpickled result of a successful job (cached). */
static PyObject *job_value(JobObject *self) {
  if (self->result == NULL) {
    PyObject *mv = PyMemoryView_FromMemory((char *)self->j->result,
                                           (Py_ssize_t)self->j->result_len,
                                           PyBUF_READ);
    if (mv == NULL)
      return NULL;
    PyObject *v = PyObject_CallOneArg(ppx_loads, mv);
    Py_DECREF(mv);
    if (v == NULL)
      return NULL;
    if (self->result == NULL) /* another thread may have won meanwhile */
      self->result = v;
    else
      Py_DECREF(v);
  }
  Py_INCREF(self->result);
  return self->result;
}

/* job_outcome: result, or raise through the Python-level _raise(). */
static PyObject *job_outcome(JobObject *self) {
  if (self->j->status == PP_JOB_OK)
    return job_value(self);
  return PyObject_CallMethod((PyObject *)self, "_raise", NULL);
}

/* job() -> result: wait without limit. */
static PyObject *Job_call(JobObject *self, PyObject *args, PyObject *kw) {
  if ((args && PyTuple_GET_SIZE(args) > 0) || (kw && PyDict_GET_SIZE(kw) > 0)) {
    PyErr_SetString(PyExc_TypeError, "job() takes no arguments");
    return NULL;
  }
  int r = job_wait(self, -1.0);
  if (r < 0)
    return NULL;
  return job_outcome(self);
}

/* _wait(timeout=None) -> bool */
static PyObject *Job_wait_(JobObject *self, PyObject *const *args,
                           Py_ssize_t nargs) {
  int err;
  double t = parse_timeout(nargs > 0 ? args[0] : NULL, &err);
  if (err)
    return NULL;
  int r = job_wait(self, t);
  if (r < 0)
    return NULL;
  return PyBool_FromLong(r);
}

/* result(timeout=None) */
static PyObject *Job_result(JobObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"timeout", NULL};
  PyObject *to = Py_None;
  int err;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &to))
    return NULL;
  double t = parse_timeout(to, &err);
  if (err)
    return NULL;
  int r = job_wait(self, t);
  if (r < 0)
    return NULL;
  if (r == 0) {
    PyErr_SetString(PyExc_TimeoutError, "job did not finish in time");
    return NULL;
  }
  return job_outcome(self);
}

static PyObject *Job_done(JobObject *self, PyObject *unused) {
  PP_UNUSED(unused);
  return PyBool_FromLong(self->j && pp_job_done(self->j));
}

static PyObject *Job_cancel(JobObject *self, PyObject *unused) {
  PP_UNUSED(unused);
  return PyBool_FromLong(pp_engine_cancel(self->engine->e, self->j));
}

/* _status() -> int (a pp_job_status; -1 while not done) */
static PyObject *Job_status(JobObject *self, PyObject *unused) {
  PP_UNUSED(unused);
  if (!pp_job_done(self->j))
    return PyLong_FromLong(-1);
  return PyLong_FromLong(self->j->status);
}

/* _payload() -> bytes: the raw result or exception bytes of a done job */
static PyObject *Job_payload(JobObject *self, PyObject *unused) {
  PP_UNUSED(unused);
  if (!pp_job_done(self->j) || self->j->result == NULL)
    Py_RETURN_NONE;
  return PyBytes_FromStringAndSize((const char *)self->j->result,
                                   (Py_ssize_t)self->j->result_len);
}

/* _failure() -> (message, exitstatus, termsignal) for engine-side failures */
static PyObject *Job_failure(JobObject *self, PyObject *unused) {
  PP_UNUSED(unused);
  if (!pp_job_done(self->j))
    Py_RETURN_NONE;
  return Py_BuildValue("(sii)", self->j->errmsg ? self->j->errmsg : "",
                       self->j->exitstatus, self->j->termsignal);
}

static PyObject *Job_tid(JobObject *self, void *c) {
  PP_UNUSED(c);
  return PyLong_FromUnsignedLongLong(self->j ? self->j->id : 0);
}

static PyObject *Job_runtime(JobObject *self, void *c) {
  PP_UNUSED(c);
  if (!pp_job_done(self->j))
    Py_RETURN_NONE;
  return PyFloat_FromDouble(self->j->runtime_ns / 1e9);
}

static PyMethodDef Job_methods[] = {
    {"result", (PyCFunction)(void (*)(void))Job_result,
     METH_VARARGS | METH_KEYWORDS,
     "result(timeout=None): the job's return value; raises its exception, "
     "or TimeoutError"},
    {"done", (PyCFunction)Job_done, METH_NOARGS,
     "whether the job has finished"},
    {"cancel", (PyCFunction)Job_cancel, METH_NOARGS,
     "cancel the job if it has not started; returns whether it was"},
    {"_wait", (PyCFunction)(void (*)(void))Job_wait_, METH_FASTCALL,
     "_wait(timeout=None) -> bool"},
    {"_status", (PyCFunction)Job_status, METH_NOARGS, NULL},
    {"_payload", (PyCFunction)Job_payload, METH_NOARGS, NULL},
    {"_failure", (PyCFunction)Job_failure, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyMemberDef Job_members[] = {
    {"callback", T_OBJECT, offsetof(JobObject, callback), 0, NULL},
    {"callbackargs", T_OBJECT, offsetof(JobObject, callbackargs), 0, NULL},
    {"_done_callbacks", T_OBJECT, offsetof(JobObject, done_callbacks), 0,
     NULL},
    {"server", T_OBJECT, offsetof(JobObject, server), 0, NULL},
    {"_engine", T_OBJECT, offsetof(JobObject, engine), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyGetSetDef Job_getset[] = {
    {"tid", (getter)Job_tid, NULL, "the job id", NULL},
    {"runtime", (getter)Job_runtime, NULL,
     "seconds the function ran in the worker (None until done)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyObject *Job_new(PyTypeObject *t, PyObject *a, PyObject *k) {
  PP_UNUSED(t);
  PP_UNUSED(a);
  PP_UNUSED(k);
  PyErr_SetString(PyExc_TypeError, "jobs are created by Server.submit()");
  return NULL;
}

static PyTypeObject JobType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pp._core.Job",
    .tp_basicsize = sizeof(JobObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A submitted job: call it for the result.",
    .tp_new = Job_new,
    .tp_dealloc = (destructor)Job_dealloc,
    .tp_traverse = (traverseproc)Job_traverse,
    .tp_clear = (inquiry)Job_clear,
    .tp_call = (ternaryfunc)Job_call,
    .tp_methods = Job_methods,
    .tp_members = Job_members,
    .tp_getset = Job_getset,
};

/* ---- module ------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"worker_main", ppx_worker_main, METH_VARARGS,
     "worker_main(fd, loader, excfmt, proto, restart, parent_pid): run the "
     "worker loop until the engine says BYE or closes the pipe"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pp._core",
    "The C engine of pp: job queue, scheduler, worker pool, framing.", -1,
    module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__core(void) {
  if (PyType_Ready(&FuncType) < 0 || PyType_Ready(&EngineType) < 0 ||
      PyType_Ready(&JobType) < 0)
    return NULL;
  PyObject *pickle = PyImport_ImportModule("pickle");
  if (pickle == NULL)
    return NULL;
  ppx_loads = PyObject_GetAttrString(pickle, "loads");
  ppx_dumps = PyObject_GetAttrString(pickle, "dumps");
  Py_DECREF(pickle);
  if (ppx_loads == NULL || ppx_dumps == NULL)
    return NULL;
  PyObject *m = PyModule_Create(&module_def);
  if (m == NULL)
    return NULL;
  Py_INCREF(&FuncType);
  Py_INCREF(&EngineType);
  Py_INCREF(&JobType);
  if (PyModule_AddObject(m, "Func", (PyObject *)&FuncType) < 0 ||
      PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0 ||
      PyModule_AddObject(m, "Job", (PyObject *)&JobType) < 0 ||
      PyModule_AddIntConstant(m, "FRAME_HEADER", PP_FRAME_HDR) < 0 ||
      PyModule_AddIntConstant(m, "JOBF_CHUNK", PP_JOBF_CHUNK) < 0 ||
      PyModule_AddIntConstant(m, "ST_OK", PP_JOB_OK) < 0 ||
      PyModule_AddIntConstant(m, "ST_EXC", PP_JOB_EXC) < 0 ||
      PyModule_AddIntConstant(m, "ST_SERIAL", PP_JOB_SERIAL) < 0 ||
      PyModule_AddIntConstant(m, "ST_LOST", PP_JOB_LOST) < 0 ||
      PyModule_AddIntConstant(m, "ST_DESTROYED", PP_JOB_DESTROYED) < 0 ||
      PyModule_AddIntConstant(m, "ST_CANCELLED", PP_JOB_CANCELLED) < 0 ||
      PyModule_AddIntConstant(m, "ST_FAILED", PP_JOB_FAILED) < 0) {
    Py_DECREF(m);
    return NULL;
  }
  return m;
}
