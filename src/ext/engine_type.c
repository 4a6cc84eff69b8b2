/* engine_type.c — pp._core.Engine, the Python handle of one C engine (its
 * thread, job queue, scheduler, local workers and remote nodes; engine.h):
 * options given as keywords, submit, waiting, the event stream the callback
 * thread reads, the pool size and statistics. Python objects never cross
 * into the core: arguments and results travel as pickled bytes, and a job's
 * Python object parked in the engine (for its callback) is only a pointer
 * the engine hands back. Every method runs with the GIL held and releases
 * it around anything that may block. */
#include "ext.h"

#include <stdlib.h>
#include <string.h>

#define MAX_DISCOVER_PORTS 64

static int engine_ok(ppx_engine_object *self) {
  if (self->e == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "engine not initialised");
    return 0;
  }
  return 1;
}

/* list_to_strv: a list of str (or None) -> a PyMem-allocated,
 * NULL-terminated vector of UTF-8 strings borrowed from the str objects,
 * which the caller keeps alive while the vector is used. NULL for None
 * (*err 0) or on failure (*err 1, exception set). */
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
    v[i] = (char *)s;
  }
  if (v == NULL) {
    *err = 1;
    if (!PyErr_Occurred())
      PyErr_NoMemory();
  }
  Py_DECREF(seq);
  return v;
}

/* parse_subnets: a sequence of at most PP_MAX_SUBNETS (network, bits)
 * pairs (ints, host byte order; pp._core.parse_ppserver makes them) into
 * out[2 * i], out[2 * i + 1]. Returns the count (0 for None), or -1 with
 * an exception. GIL held. */
static int parse_subnets(PyObject *seq, uint32_t out[2 * PP_MAX_SUBNETS]) {
  if (seq == Py_None)
    return 0;
  PyObject *l = PySequence_List(seq);
  if (l == NULL)
    return -1;
  Py_ssize_t n = PyList_GET_SIZE(l);
  int rc = (int)n;
  if (n > PP_MAX_SUBNETS) {
    PyErr_Format(PyExc_ValueError, "at most %d subnet entries",
                 PP_MAX_SUBNETS);
    rc = -1;
  }
  for (Py_ssize_t i = 0; rc >= 0 && i < n; i++) {
    unsigned long net = 0;
    int bits = 0;
    if (!PyArg_ParseTuple(PyList_GET_ITEM(l, i), "ki", &net, &bits) ||
        net > 0xffffffffUL || bits < 8 || bits > 30) {
      if (!PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "bad subnet (network, bits)");
      rc = -1;
      break;
    }
    out[2 * i] = (uint32_t)net;
    out[2 * i + 1] = (uint32_t)bits;
  }
  Py_DECREF(l);
  return rc;
}

/* parse_ports: a sequence of 1..64 UDP ports (ints 1..65535) into ports[].
 * Returns the count (0 for None), or -1 with an exception. */
static int parse_ports(PyObject *seq, uint16_t ports[MAX_DISCOVER_PORTS]) {
  if (seq == Py_None)
    return 0;
  PyObject *l = PySequence_List(seq);
  if (l == NULL)
    return -1;
  Py_ssize_t n = PyList_GET_SIZE(l);
  if (n > MAX_DISCOVER_PORTS) {
    Py_DECREF(l);
    PyErr_Format(PyExc_ValueError, "at most %d discovery ports",
                 MAX_DISCOVER_PORTS);
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

/* start_engine: convert the string lists to C vectors and start the engine
 * with opts (the rest already filled in). 0 or -1 with an exception. The
 * vectors only live for the call: pp_engine_new copies what it keeps. */
static int start_engine(ppx_engine_object *self, pp_engine_opts *o,
                        PyObject *argv, PyObject *env, PyObject *nodes,
                        PyObject *tpl) {
  int err, rc = -1;
  /* lists keep the str objects alive while their C strings are borrowed */
  PyObject *argl = PySequence_List(argv);
  PyObject *tpll = tpl == Py_None ? Py_NewRef(Py_None) : PySequence_List(tpl);
  char **ctpl = NULL;
  PyObject *envl = env == Py_None ? Py_NewRef(Py_None) : PySequence_List(env);
  PyObject *nodel =
      nodes == Py_None ? Py_NewRef(Py_None) : PySequence_List(nodes);
  char **cargv = NULL, **cenv = NULL, **cnodes = NULL;
  if (argl == NULL || envl == NULL || nodel == NULL || tpll == NULL)
    goto out;
  ctpl = list_to_strv(tpll, &err);
  if (err)
    goto out;
  if (ctpl != NULL && ctpl[0] == NULL) {
    PyErr_SetString(PyExc_ValueError, "template must not be empty");
    goto out;
  }
  cargv = list_to_strv(argl, &err);
  cenv = err ? NULL : list_to_strv(envl, &err);
  cnodes = err ? NULL : list_to_strv(nodel, &err);
  if (err)
    goto out;
  if (cargv[0] == NULL) {
    PyErr_SetString(PyExc_ValueError, "argv must not be empty");
    goto out;
  }
  o->worker_argv = cargv;
  o->template_argv = ctpl;
  o->worker_env = cenv;
  o->nodes = cnodes;
  int erc = pp_engine_new(o, &self->e);
  if (erc != PP_OK && o->error != NULL && o->error[0] != '\0')
    PyErr_SetString(PyExc_ValueError, o->error); /* e.g. a TLS file */
  else if (erc == PP_EINVAL)
    ppx_raise(erc, "bad engine options (a node address, or a missing or too "
                   "long secret)");
  else if (erc != PP_OK)
    ppx_raise(erc, "cannot start the pp engine");
  else
    rc = 0;
out:
  PyMem_Free(cargv);
  PyMem_Free(cenv);
  PyMem_Free(cnodes);
  PyMem_Free(ctpl);
  Py_XDECREF(tpll);
  Py_XDECREF(argl);
  Py_XDECREF(envl);
  Py_XDECREF(nodel);
  return rc;
}

/* Engine(argv, *, env=None, nworkers=0, restart=False, max_retries=2,
 *        job_type=pp._core.Job, nodes=None, secret=None, node_timeout=5.0,
 *        no_capacity_timeout=0.0, discover=None, max_frame=0,
 *        capture_output=False, max_output=0, echo=None, plain=False,
 *        tls_cert=None, tls_key=None, tls_ca=None, subnets=None,
 *        disco_any=False, template=None)
 * Starts the engine thread and nworkers workers running argv, or forked
 * by a fork server running the command template. 0 or -1 with an
 * exception; an Engine is initialised once. */
static int Engine_init(ppx_engine_object *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"argv",     "env",          "nworkers",
                           "restart",  "max_retries",  "job_type",
                           "nodes",    "secret",       "node_timeout",
                           "no_capacity_timeout",      "discover",
                           "max_frame", "capture_output", "max_output",
                           "echo", "max_node_workers", "plain", "tls_cert",
                           "tls_key", "tls_ca", "subnets", "disco_any",
                           "obj_limit", "template", NULL};
  PyObject *argv, *env = Py_None, *jt = NULL, *nodes = Py_None;
  PyObject *subnets_obj = Py_None, *tpl = Py_None;
  int disco_any = 0;
  unsigned long long obj_limit = 0;
  uint32_t subnets[2 * PP_MAX_SUBNETS];
  PyObject *discover = Py_None;
  uint16_t ports[MAX_DISCOVER_PORTS];
  Py_buffer secret = {0};
  double node_timeout = 5.0, no_capacity = 0.0;
  int nworkers = 0, restart = 0, max_retries = 2;
  Py_ssize_t max_frame = 0, max_output = 0;
  int capture = 0;
  PyObject *echo = Py_None;
  Py_ssize_t max_node_workers = 0;
  int plain = 0;
  const char *tls_cert = NULL, *tls_key = NULL, *tls_ca = NULL;
  char errmsg[512] = "";
  if (self->e != NULL) {
    PyErr_SetString(PyExc_RuntimeError, "Engine already initialised");
    return -1;
  }
  self->st = ppx_state_of_type(Py_TYPE(self));
  if (self->st == NULL)
    return -1;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$OipiOOz*ddOnpnOnpzzzOpKO", kwlist,
                                   &argv, &env, &nworkers, &restart,
                                   &max_retries, &jt, &nodes, &secret,
                                   &node_timeout, &no_capacity, &discover,
                                   &max_frame, &capture, &max_output, &echo,
                                   &max_node_workers, &plain, &tls_cert,
                                   &tls_key, &tls_ca, &subnets_obj,
                                   &disco_any, &obj_limit, &tpl))
    return -1;
  int rc = -1;
  int nports = parse_ports(discover, ports);
  int nsubnets = nports < 0 ? 0 : parse_subnets(subnets_obj, subnets);
  if (nsubnets < 0)
    goto out;
  if (jt == NULL)
    jt = (PyObject *)self->st->job_type;
  if (nports < 0)
    goto out;
  if (node_timeout <= 0 || node_timeout > 86400 || no_capacity < 0 ||
      no_capacity > 4e6) {
    PyErr_SetString(PyExc_ValueError,
                    "bad node_timeout or no_capacity_timeout");
    goto out;
  }
  if (nworkers < 0 || max_retries < 0) {
    PyErr_SetString(PyExc_ValueError, "nworkers and max_retries must be >= 0");
    goto out;
  }
  if (max_frame < 0 || (size_t)max_frame > PP_FRAME_MAX_DEFAULT) {
    PyErr_Format(PyExc_ValueError,
                 "max_frame must be between 1 and %u bytes (0: the default)",
                 (unsigned)PP_FRAME_MAX_DEFAULT);
    goto out;
  }
  if (max_output < 0 || max_output > 0x7fffffff) {
    PyErr_SetString(PyExc_ValueError, "max_output must be 0 .. 2**31-1 bytes");
    goto out;
  }
  if (max_node_workers < 0 || max_node_workers > 65536) {
    PyErr_SetString(PyExc_ValueError,
                    "max_node_workers must be 1 .. 65536 (0: the default)");
    goto out;
  }
  if (echo != Py_None && !PyCallable_Check(echo)) {
    PyErr_SetString(PyExc_TypeError, "echo must be callable or None");
    goto out;
  }
  if (!PyType_Check(jt) ||
      !PyType_IsSubtype((PyTypeObject *)jt, self->st->job_type)) {
    PyErr_SetString(PyExc_TypeError, "job_type must subclass pp._core.Job");
    goto out;
  }
  pp_engine_opts o = {
      .nworkers = nworkers,
      .restart = restart,
      .max_retries = max_retries,
      .max_frame = (uint32_t)max_frame,
      .capture_output = capture,
      .max_output = (uint32_t)max_output,
      .queue_logs = 1,
      .secret = secret.buf,
      .secret_len = (size_t)secret.len,
      .node_timeout_ms = (uint32_t)(node_timeout * 1000),
      .no_capacity_ms = (uint32_t)(no_capacity * 1000),
      .max_node_workers = (uint32_t)max_node_workers,
      .discover_ports = ports,
      .ndiscover = nports,
      .subnets = subnets,
      .nsubnets = nsubnets,
      .disco_any = disco_any,
      .obj_limit = obj_limit,
      .plain = plain,
      .tls_cert = tls_cert,
      .tls_key = tls_key,
      .tls_ca = tls_ca,
      .error = errmsg,
      .error_len = sizeof errmsg,
  };
  rc = start_engine(self, &o, argv, env, nodes, tpl);
  if (rc == 0) {
    self->max_frame = max_frame ? (size_t)max_frame : PP_FRAME_MAX_DEFAULT;
    Py_XSETREF(self->job_type, (PyTypeObject *)Py_NewRef(jt));
    if (echo != Py_None)
      Py_XSETREF(self->echo, Py_NewRef(echo));
  }
out:
  PyBuffer_Release(&secret);
  return rc;
}

/* drain_events: after shutdown, release the Python references parked in
 * jobs that were waiting for the callback thread. */
static void drain_events(ppx_engine_object *self) {
  pp_event ev;
  while (pp_engine_next_event(self->e, 0, &ev) == PP_OK &&
         ev.kind != PP_EV_NONE) {
    if (ev.kind == PP_EV_JOB) {
      Py_XDECREF((PyObject *)ev.job->udata);
      ev.job->udata = NULL;
      pp_job_unref(ev.job);
    } else {
      free(ev.msg);
    }
  }
}

/* Engine_dealloc: shut the engine down (joins its thread, GIL released),
 * drop the parked job objects, free it, then the type reference. */
static void Engine_dealloc(ppx_engine_object *self) {
  PyTypeObject *tp = Py_TYPE(self);
  if (self->e != NULL) {
    Py_BEGIN_ALLOW_THREADS
    pp_engine_shutdown(self->e);
    Py_END_ALLOW_THREADS
    drain_events(self);
    pp_engine_free(self->e);
    self->e = NULL;
  }
  Py_XDECREF(self->job_type);
  Py_XDECREF(self->echo);
  tp->tp_free((PyObject *)self);
  Py_DECREF(tp);
}

/* Engine.submit(func, data, group, flags, callback, callbackargs[, limits
 * [, objs]]) -> Job, limits being None or (timeout seconds or None, memory
 * limit bytes or None, retries), objs a tuple of the Obj the pickled
 * arguments name (Server.put), at most JOB_OBJS_MAX, without repeats.
 * data is the pickled arguments (bytes), or (pickle, [buffers]) when pickle
 * protocol 5 put buffers out of band (pp._oob.dumps): both are copied once
 * into the new job record, the latter as a buffer section (PP_JOBF_BUFS).
 * Copies the pickled arguments into a new job record and queues it. With a
 * callback, the engine's record holds a reference to the Job object until
 * the callback thread took the completion event. Positional (fast call):
 * this is the hot path of every submit. */
static PyObject *Engine_submit(ppx_engine_object *self, PyObject *const *args,
                               Py_ssize_t nargs) {
  Py_buffer b;
  if (!engine_ok(self))
    return NULL;
  if (nargs < 6 || nargs > 8 ||
      !PyObject_TypeCheck(args[0], self->st->func_type)) {
    PyErr_SetString(PyExc_TypeError,
                    "submit(func: Func, data: bytes, group: int, flags: int, "
                    "callback, callbackargs[, limits[, objs]])");
    return NULL;
  }
  pp_obj *objs[PP_JOB_OBJS_MAX];
  uint32_t nobjs = 0;
  if (nargs == 8 && args[7] != Py_None) {
    if (!PyTuple_Check(args[7]) ||
        PyTuple_GET_SIZE(args[7]) > (Py_ssize_t)PP_JOB_OBJS_MAX) {
      PyErr_Format(PyExc_ValueError,
                   "a job names at most %u objects (a tuple of Obj)",
                   (unsigned)PP_JOB_OBJS_MAX);
      return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[7]); i++) {
      PyObject *it = PyTuple_GET_ITEM(args[7], i);
      if (!PyObject_TypeCheck(it, self->st->obj_type) ||
          ((ppx_obj_object *)it)->o == NULL) {
        PyErr_SetString(PyExc_TypeError, "objs must be initialised Obj");
        return NULL;
      }
      objs[nobjs++] = ((ppx_obj_object *)it)->o;
    }
  }
  double timeout_s = 0;
  unsigned long long mem = 0, retries = 0;
  if (nargs >= 7 && args[6] != Py_None) {
    PyObject *to, *mo;
    if (!PyArg_ParseTuple(args[6], "OOK", &to, &mo, &retries))
      return NULL;
    if (to != Py_None && (timeout_s = PyFloat_AsDouble(to)) <= 0) {
      if (!PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "timeout must be > 0 seconds");
      return NULL;
    }
    if (mo != Py_None && ((mem = PyLong_AsUnsignedLongLong(mo)) == 0 ||
                          PyErr_Occurred())) {
      if (!PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "memory_limit must be > 0 bytes");
      return NULL;
    }
    if (retries > 1000000) {
      PyErr_SetString(PyExc_ValueError, "retries must be 0 .. 1000000");
      return NULL;
    }
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
  ppx_func_object *fo = (ppx_func_object *)args[0];
  if (fo->f == NULL) {
    PyErr_SetString(PyExc_ValueError, "Func not initialised");
    return NULL;
  }
  if (fo->f->blob_len > self->max_frame - PP_KEY_LEN) {
    PyErr_Format(PyExc_ValueError,
                 "the function descriptor (%zu bytes) exceeds the frame "
                 "limit of %zu bytes",
                 fo->f->blob_len, self->max_frame);
    return NULL;
  }
  uint8_t *copy = NULL;
  size_t len;
  pp_job *j = NULL;
  if (PyTuple_Check(args[1])) {
    /* (pickle, [buffers]): one copy of everything, laid out as the buffer
     * section the worker reads in place */
    ppx_bufs bb;
    if (ppx_bufs_measure(args[1], &bb) < 0)
      return NULL;
    if (bb.size > self->max_frame - PP_KEY_LEN - PP_LIMITS_LEN) {
      PyErr_Format(PyExc_ValueError,
                   "the job's arguments with their out-of-band buffers are "
                   "%llu bytes, above the frame limit of %zu bytes "
                   "(max_frame)", (unsigned long long)bb.size,
                   self->max_frame);
      ppx_bufs_release(&bb);
      return NULL;
    }
    len = (size_t)bb.size;
    flags |= PP_JOBF_BUFS;
    pp_shm *shm = pp_engine_shm(self->e);
    if (shm != NULL && len >= PP_SHM_MIN)
      /* in the arena: local workers read it in place, no further copy */
      j = pp_job_new_shm(fo->f, shm, len, (uint32_t)flags, (uint32_t)group);
    if (j == NULL && (copy = malloc(len)) == NULL) {
      ppx_bufs_release(&bb);
      return ppx_raise(PP_ENOMEM, "submit");
    }
    /* the one copy on the client, with the GIL: the buffers may be
     * mutable objects of the caller's */
    ppx_bufs_copy(&bb, j != NULL ? j->args : copy);
    ppx_bufs_release(&bb);
  } else {
    if (PyObject_GetBuffer(args[1], &b, PyBUF_SIMPLE) < 0)
      return NULL;
    if ((size_t)b.len > self->max_frame - PP_KEY_LEN) {
      PyErr_Format(PyExc_ValueError,
                   "the pickled arguments (%zd bytes) exceed the frame limit "
                   "of %zu bytes",
                   b.len, self->max_frame);
      PyBuffer_Release(&b);
      return NULL;
    }
    copy = malloc(b.len ? (size_t)b.len : 1);
    if (copy == NULL) {
      PyBuffer_Release(&b);
      return ppx_raise(PP_ENOMEM, "submit");
    }
    memcpy(copy, b.buf, (size_t)b.len);
    len = (size_t)b.len;
    PyBuffer_Release(&b);
  }
  if (j == NULL)
    j = pp_job_new(fo->f, copy, len, (uint32_t)flags, (uint32_t)group);
  if (j == NULL) {
    free(copy);
    return ppx_raise(PP_ENOMEM, "submit");
  }
  if (nobjs > 0 && pp_job_set_objs(j, objs, nobjs) != PP_OK) {
    pp_job_unref(j);
    return ppx_raise(PP_ENOMEM, "submit");
  }
  j->timeout_ns = (uint64_t)(timeout_s * 1e9);
  j->mem_limit = mem;
  j->retries = (uint32_t)retries;
  ppx_job_object *job =
      (ppx_job_object *)self->job_type->tp_alloc(self->job_type, 0);
  if (job == NULL) {
    pp_job_unref(j);
    return NULL;
  }
  job->j = j;
  job->engine = (ppx_engine_object *)Py_NewRef(self);
  if (want_cb) { /* the event queue holds a reference until the callback ran */
    job->callback = Py_NewRef(args[4]);
    job->callbackargs = Py_NewRef(args[5]);
    j->want_callback = 1;
    j->udata = Py_NewRef(job);
  }
  int rc = pp_engine_submit(self->e, j);
  if (rc != PP_OK) {
    if (want_cb) {
      j->want_callback = 0;
      j->udata = NULL;
      Py_DECREF(job);
    }
    Py_DECREF(job);
    return ppx_raise(rc, "cannot submit the job");
  }
  return (PyObject *)job;
}

/* Engine.abort_group(group, grace_seconds): pp_engine_abort_group. */
static PyObject *Engine_abort_group(ppx_engine_object *self, PyObject *args) {
  long long group;
  double grace;
  if (!engine_ok(self) || !PyArg_ParseTuple(args, "Ld", &group, &grace))
    return NULL;
  if (grace < 0 || grace > 86400) {
    PyErr_SetString(PyExc_ValueError, "grace must be 0 .. 86400 seconds");
    return NULL;
  }
  Py_BEGIN_ALLOW_THREADS
  pp_engine_abort_group(self->e, group, (uint64_t)(grace * 1e9));
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

static int wait_group_fn(pp_engine *e, void *arg, int64_t ns) {
  return pp_engine_wait_group(e, *(int64_t *)arg, ns);
}

/* Engine.wait_group(group, timeout=None) -> bool: wait (GIL released) until
 * no job of the group (-1: of any group) is unfinished, callbacks included;
 * False if the timeout passed first. */
static PyObject *Engine_wait_group(ppx_engine_object *self, PyObject *args,
                                   PyObject *kw) {
  static char *kwlist[] = {"group", "timeout", NULL};
  long long group;
  PyObject *to = Py_None;
  if (!engine_ok(self) ||
      !PyArg_ParseTupleAndKeywords(args, kw, "L|O", kwlist, &group, &to))
    return NULL;
  double t = ppx_parse_timeout(to);
  if (t == -2.0)
    return NULL;
  int64_t g = group;
  int r = ppx_wait_sliced(self->e, wait_group_fn, &g, t);
  if (r < 0)
    return NULL;
  return PyBool_FromLong(r);
}

/* Engine.next_event(timeout) -> None | ('job', job) | ('log', level, msg)
 * | False once the engine is shut down and drained. For the one callback
 * thread; waits with the GIL released. A job event moves the reference the
 * engine held to the caller, who must then call callback_done(job). */
static PyObject *Engine_next_event(ppx_engine_object *self, PyObject *arg) {
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
    return Py_BuildValue("(sN)", "job", job);
  }
  Py_RETURN_NONE;
}

/* Engine.set_nworkers(n): grow or shrink the local pool (0..4096). */
static PyObject *Engine_set_nworkers(ppx_engine_object *self, PyObject *arg) {
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
  if (rc != PP_OK)
    return ppx_raise(rc, "set_nworkers");
  Py_RETURN_NONE;
}

/* Engine.stats() -> {njobs, time, queued, running, ..., handoffs,
 * direct_results}: jobs run to a result and the sum of their run times
 * (seconds), jobs waiting and running, jobs the submitting thread wrote to
 * an idle worker itself, and results the waiting caller read itself. */
static PyObject *Engine_stats(ppx_engine_object *self, PyObject *unused) {
  pp_engine_stats s;
  PP_UNUSED(unused);
  if (!engine_ok(self))
    return NULL;
  pp_engine_get_stats(self->e, &s);
  return Py_BuildValue("{sKsdsKsKsKsKsKsKsKsisKsK}", "njobs",
                       (unsigned long long)s.njobs, "time", s.time_ns / 1e9,
                       "queued", (unsigned long long)s.queued, "running",
                       (unsigned long long)s.running, "shm_used",
                       (unsigned long long)s.shm_used, "shm_size",
                       (unsigned long long)s.shm_size, "objs_sent",
                       (unsigned long long)s.objs_sent, "obj_bytes_sent",
                       (unsigned long long)s.obj_bytes_sent, "objs_dropped",
                       (unsigned long long)s.objs_dropped, "template_pid",
                       s.template_pid, "handoffs",
                       (unsigned long long)s.handoffs, "direct_results",
                       (unsigned long long)s.direct_results);
}

/* Engine.obj_release(obj): no new job names obj; every worker and node
 * holding it is told to drop it (jobs already submitted keep it). Returns
 * None; after shutdown it does nothing. Any thread, with the GIL. */
static PyObject *Engine_obj_release(ppx_engine_object *self, PyObject *arg) {
  if (!PyObject_TypeCheck(arg, self->st->obj_type) ||
      ((ppx_obj_object *)arg)->o == NULL) {
    PyErr_SetString(PyExc_TypeError, "obj_release(obj: Obj)");
    return NULL;
  }
  if (self->e == NULL)
    Py_RETURN_NONE;
  int rc = pp_engine_obj_release(self->e, ((ppx_obj_object *)arg)->o);
  if (rc != PP_OK)
    return ppx_raise(rc, "release");
  Py_RETURN_NONE;
}

/* Engine.stats() also says shm_used / shm_size: bytes of the shared-memory
 * arena in blocks now, and its size (0: none). */

/* Engine.pids() -> {pid: results returned} for the live local workers */
static PyObject *Engine_pids(ppx_engine_object *self, PyObject *unused) {
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
static PyObject *Engine_node_stats(ppx_engine_object *self, PyObject *unused) {
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

/* Engine.shutdown(): fail unfinished jobs, stop the workers and join the
 * engine thread (GIL released). Idempotent. */
static PyObject *Engine_shutdown(ppx_engine_object *self, PyObject *unused) {
  PP_UNUSED(unused);
  if (!engine_ok(self))
    return NULL;
  Py_BEGIN_ALLOW_THREADS
  pp_engine_shutdown(self->e);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

/* Engine.want_callback(job) -> 1 registered now (the engine holds a
 * reference to job until the event is taken), 2 already registered,
 * 0 already done. */
static PyObject *Engine_want_callback(ppx_engine_object *self, PyObject *arg) {
  if (!engine_ok(self))
    return NULL;
  if (!PyObject_TypeCheck(arg, self->st->job_type)) {
    PyErr_SetString(PyExc_TypeError, "expected a Job");
    return NULL;
  }
  ppx_job_object *job = (ppx_job_object *)arg;
  Py_INCREF(job);
  if (pp_engine_want_callback(self->e, job->j, job))
    return PyLong_FromLong(1);
  Py_DECREF(job);
  return PyLong_FromLong(pp_job_done(job->j) ? 0 : 2);
}

/* Engine.callback_done(job): the job's callbacks ran; wait_group may now
 * count it as finished. */
static PyObject *Engine_callback_done(ppx_engine_object *self, PyObject *arg) {
  if (!engine_ok(self))
    return NULL;
  if (!PyObject_TypeCheck(arg, self->st->job_type)) {
    PyErr_SetString(PyExc_TypeError, "expected a Job");
    return NULL;
  }
  pp_engine_callback_done(self->e, ((ppx_job_object *)arg)->j);
  Py_RETURN_NONE;
}

static PyMethodDef Engine_methods[] = {
    {"abort_group", (PyCFunction)Engine_abort_group, METH_VARARGS,
     "abort_group(group, grace): abort the group's (-1: every) unfinished "
     "jobs"},
    {"submit", (PyCFunction)(void (*)(void))Engine_submit, METH_FASTCALL,
     "submit(func, data, group, flags, callback, callbackargs) -> Job"},
    {"wait_group", (PyCFunction)(void (*)(void))Engine_wait_group,
     METH_VARARGS | METH_KEYWORDS,
     "wait_group(group, timeout=None) -> bool; group -1 = all"},
    {"next_event", (PyCFunction)Engine_next_event, METH_O,
     "next_event(timeout) -> None | ('job', job) | ('log', level, msg) | False"},
    {"set_nworkers", (PyCFunction)Engine_set_nworkers, METH_O,
     "set the local pool size"},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS, "counters as a dict"},
    {"obj_release", (PyCFunction)Engine_obj_release, METH_O,
     "obj_release(obj): drop obj from every worker and node"},
    {"pids", (PyCFunction)Engine_pids, METH_NOARGS,
     "{pid: results returned} of the live local workers"},
    {"node_stats", (PyCFunction)Engine_node_stats, METH_NOARGS,
     "[(name, connected, nworkers, njobs, time)] per remote node"},
    {"shutdown", (PyCFunction)Engine_shutdown, METH_NOARGS,
     "stop: fail unfinished jobs, kill workers (idempotent)"},
    {"want_callback", (PyCFunction)Engine_want_callback, METH_O,
     "route the job's completion through next_event"},
    {"callback_done", (PyCFunction)Engine_callback_done, METH_O,
     "the job's callbacks ran"},
    {NULL, NULL, 0, NULL}};

static PyType_Slot Engine_slots[] = {
    {Py_tp_doc,
     "Engine(argv, *, env=None, nworkers=0, restart=False, max_retries=2, "
     "job_type=Job, nodes=None, secret=None, node_timeout=5.0, "
     "no_capacity_timeout=0.0, discover=None, max_frame=0, "
     "capture_output=False, max_output=0, echo=None, plain=False, "
     "tls_cert=None, tls_key=None, tls_ca=None)\n\n"
     "The C engine: job queue, scheduler, local worker pool and remote "
     "nodes. max_frame is the payload limit on worker pipes in bytes (0: "
     "the default, FRAME_MAX). Nodes are reached over TLS keyed from the "
     "secret, or with the three certificate files; plain=True sends "
     "authenticated frames in clear."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, Engine_init},
    {Py_tp_dealloc, Engine_dealloc},
    {Py_tp_methods, Engine_methods},
    {0, NULL}};

PyType_Spec ppx_engine_spec = {
    .name = "pp._core.Engine",
    .basicsize = sizeof(ppx_engine_object),
    .flags = Py_TPFLAGS_DEFAULT
#ifdef Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_IMMUTABLETYPE
#endif
    ,
    .slots = Engine_slots,
};
