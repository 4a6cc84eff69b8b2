/* job_type.c — two small types of pp._core: Job, the handle of a submitted
 * job (wait for it, get its value or its failure; pp.Job subclasses it with
 * the future-style API), and Func, a function descriptor identified by the
 * SHA-256 of its bytes. Both are heap types created from the specs below by
 * the module's exec slot. Every function runs with the GIL held; waits
 * release it (ppx_wait_sliced). */
#include "ext.h"

#include <structmember.h>

/* ---- Func --------------------------------------------------------------- */

/* Func(blob): copy the descriptor bytes into a pp_func (hashing them). 0 or
 * -1 with an exception. A second __init__ replaces the descriptor. */
static int Func_init(ppx_func_object *self, PyObject *args, PyObject *kw) {
  Py_buffer b;
  static char *kwlist[] = {"blob", NULL};
  if (!PyArg_ParseTupleAndKeywords(args, kw, "y*", kwlist, &b))
    return -1;
  if (b.len > (Py_ssize_t)(PP_FRAME_MAX_DEFAULT - PP_KEY_LEN)) {
    PyBuffer_Release(&b);
    ppx_raise(PP_ETOOBIG, "function descriptor");
    return -1;
  }
  pp_func *f = pp_func_new(b.buf, (size_t)b.len);
  PyBuffer_Release(&b);
  if (f == NULL) {
    ppx_raise(PP_ENOMEM, "function descriptor");
    return -1;
  }
  pp_func_unref(self->f);
  self->f = f;
  return 0;
}

/* Func_dealloc: drop the descriptor (the engine may hold its own reference)
 * and, as for every heap type, the instance's reference to its type. */
static void Func_dealloc(ppx_func_object *self) {
  PyTypeObject *tp = Py_TYPE(self);
  pp_func_unref(self->f);
  tp->tp_free((PyObject *)self);
  Py_DECREF(tp);
}

static PyType_Slot Func_slots[] = {
    {Py_tp_doc, "Func(blob): a function descriptor, shipped to each worker "
                "once and named by its SHA-256 key afterwards."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, Func_init},
    {Py_tp_dealloc, Func_dealloc},
    {0, NULL}};

PyType_Spec ppx_func_spec = {
    .name = "pp._core.Func",
    .basicsize = sizeof(ppx_func_object),
    .flags = Py_TPFLAGS_DEFAULT
#ifdef Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_IMMUTABLETYPE
#endif
    ,
    .slots = Func_slots,
};

/* ---- Job ---------------------------------------------------------------- */

static int Job_traverse(ppx_job_object *self, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(self)); /* a heap type's instances own their type */
  Py_VISIT(self->engine);
  Py_VISIT(self->result);
  Py_VISIT(self->callback);
  Py_VISIT(self->callbackargs);
  Py_VISIT(self->done_callbacks);
  return 0;
}

/* Job_clear: break cycles (a callback or done-callback that refers back to
 * the job). The engine reference stays until dealloc: the record's waits
 * and cancel need it. */
static int Job_clear(ppx_job_object *self) {
  Py_CLEAR(self->result);
  Py_CLEAR(self->callback);
  Py_CLEAR(self->callbackargs);
  Py_CLEAR(self->done_callbacks);
  return 0;
}

/* Job_dealloc: release the record, then the engine (which may shut down if
 * this was the last thing holding it), then the type. pp.Job, a Python
 * subclass, ends here too: the type released is the instance's own. */
static void Job_dealloc(ppx_job_object *self) {
  PyTypeObject *tp = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  Job_clear(self);
  pp_job_unref(self->j);
  Py_CLEAR(self->engine);
  tp->tp_free((PyObject *)self);
  Py_DECREF(tp);
}

static int wait_job_fn(pp_engine *e, void *arg, int64_t ns) {
  return pp_engine_wait_job(e, (pp_job *)arg, ns);
}

/* job_wait: wait up to timeout seconds (< 0: no limit), GIL released.
 * 1 done, 0 timed out, -1 exception (a signal, or no record). */
static int job_wait(ppx_job_object *self, double timeout) {
  if (self->j == NULL || self->engine == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "job not initialised");
    return -1;
  }
  if (pp_job_done(self->j))
    return 1;
  return ppx_wait_sliced(self->engine->e, wait_job_fn, self->j, timeout);
}

/* release_job: a lease over a job's result is gone: drop its reference
 * to the record. */
static void release_job(void *ctx, void *base, size_t len) {
  (void)base;
  (void)len;
  pp_job_unref((pp_job *)ctx);
}

/* job_value: the unpickled result of a successful job, cached so that every
 * call returns the same object. New reference, or NULL with the unpickling
 * error. */
static PyObject *job_value(ppx_job_object *self) {
  if (self->result == NULL) {
    PyObject *v;
    if (self->j->result_flags & PP_RESF_BUFS) {
      /* out-of-band buffers are views of the job's own result bytes: the
       * lease holds a reference to the record, so they outlive the Job */
      pp_job_ref(self->j);
      PyObject *lease = ppx_lease_new(self->engine->st, self->j->result,
                                      self->j->result_len, 0, release_job,
                                      self->j);
      if (lease == NULL)
        return NULL;
      v = ppx_bufs_loads(lease, 0, self->j->result_len);
      Py_DECREF(lease);
    } else {
      PyObject *mv = PyMemoryView_FromMemory((char *)self->j->result,
                                             (Py_ssize_t)self->j->result_len,
                                             PyBUF_READ);
      if (mv == NULL)
        return NULL;
      v = PyObject_CallOneArg(self->engine->st->loads, mv);
      Py_DECREF(mv);
    }
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

/* job_outcome: for a done job, its value, or raise its failure through the
 * Python-level pp.Job._raise (which rebuilds remote exceptions). */
static PyObject *job_outcome(ppx_job_object *self) {
  if (!self->echoed && (self->j->out_len || self->j->err_len) &&
      self->engine != NULL && self->engine->echo != NULL) {
    /* pp 1.x: a job's output is printed when its result is read */
    self->echoed = 1;
    PyObject *r = PyObject_CallOneArg(self->engine->echo, (PyObject *)self);
    if (r == NULL)
      return NULL;
    Py_DECREF(r);
  }
  if (self->j->status == PP_JOB_OK)
    return job_value(self);
  return PyObject_CallMethod((PyObject *)self, "_raise", NULL);
}

/* job() -> result: wait without limit. */
static PyObject *Job_call(ppx_job_object *self, PyObject *args, PyObject *kw) {
  if ((args && PyTuple_GET_SIZE(args) > 0) || (kw && PyDict_GET_SIZE(kw) > 0)) {
    PyErr_SetString(PyExc_TypeError, "job() takes no arguments");
    return NULL;
  }
  if (job_wait(self, -1.0) < 0)
    return NULL;
  return job_outcome(self);
}

/* _wait(timeout=None) -> bool: whether the job finished in time. */
static PyObject *Job_wait_(ppx_job_object *self, PyObject *const *args,
                           Py_ssize_t nargs) {
  if (nargs > 1) {
    PyErr_SetString(PyExc_TypeError, "_wait(timeout=None)");
    return NULL;
  }
  double t = ppx_parse_timeout(nargs > 0 ? args[0] : NULL);
  if (t == -2.0)
    return NULL;
  int r = job_wait(self, t);
  if (r < 0)
    return NULL;
  return PyBool_FromLong(r);
}

/* result(timeout=None): the value; the job's exception; TimeoutError. */
static PyObject *Job_result(ppx_job_object *self, PyObject *args,
                            PyObject *kw) {
  static char *kwlist[] = {"timeout", NULL};
  PyObject *to = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &to))
    return NULL;
  double t = ppx_parse_timeout(to);
  if (t == -2.0)
    return NULL;
  int r = job_wait(self, t);
  if (r < 0)
    return NULL;
  if (r == 0) /* TimeoutError, as concurrent.futures raises */
    return ppx_raise(PP_ETIMEDOUT, "job did not finish in time");
  return job_outcome(self);
}

static PyObject *Job_done(ppx_job_object *self, PyObject *unused) {
  PP_UNUSED(unused);
  return PyBool_FromLong(self->j && pp_job_done(self->j));
}

/* cancel() -> bool: dequeue the job if no worker has it yet. */
static PyObject *Job_cancel(ppx_job_object *self, PyObject *unused) {
  PP_UNUSED(unused);
  return PyBool_FromLong(pp_engine_cancel(self->engine->e, self->j));
}

/* _status() -> int (a pp_job_status; -1 while not done) */
static PyObject *Job_status(ppx_job_object *self, PyObject *unused) {
  PP_UNUSED(unused);
  if (!pp_job_done(self->j))
    return PyLong_FromLong(-1);
  return PyLong_FromLong(self->j->status);
}

/* _payload() -> bytes | None: the raw result or exception bytes of a done
 * job (pickled by the worker). */
static PyObject *Job_payload(ppx_job_object *self, PyObject *unused) {
  PP_UNUSED(unused);
  if (!pp_job_done(self->j) || self->j->result == NULL)
    Py_RETURN_NONE;
  return PyBytes_FromStringAndSize((const char *)self->j->result,
                                   (Py_ssize_t)self->j->result_len);
}

/* _failure() -> (message, exitstatus, termsignal) of an engine-side
 * failure (lost, destroyed, failed), None while not done. */
static PyObject *Job_failure(ppx_job_object *self, PyObject *unused) {
  PP_UNUSED(unused);
  if (!pp_job_done(self->j))
    Py_RETURN_NONE;
  return Py_BuildValue("(sii)", self->j->errmsg ? self->j->errmsg : "",
                       self->j->exitstatus, self->j->termsignal);
}

/* _abort(grace_seconds) -> bool: pp_engine_abort (see engine.h). */
static PyObject *Job_abort(ppx_job_object *self, PyObject *arg) {
  double g = PyFloat_AsDouble(arg);
  if (g == -1.0 && PyErr_Occurred())
    return NULL;
  if (g < 0 || g > 86400) {
    PyErr_SetString(PyExc_ValueError, "grace must be 0 .. 86400 seconds");
    return NULL;
  }
  if (self->engine == NULL || self->engine->e == NULL)
    Py_RETURN_FALSE;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = pp_engine_abort(self->engine->e, self->j, (uint64_t)(g * 1e9));
  Py_END_ALLOW_THREADS
  return PyBool_FromLong(rc);
}

/* _output() -> (stdout bytes, stderr bytes) captured from the job's last
 * run; (b"", b"") while not done or with nothing captured. */
static PyObject *Job_output(ppx_job_object *self, PyObject *unused) {
  PP_UNUSED(unused);
  pp_job *j = self->j;
  if (!pp_job_done(j))
    return Py_BuildValue("(yy)", "", "");
  return Py_BuildValue("(y#y#)", j->out ? (const char *)j->out : "",
                       (Py_ssize_t)j->out_len,
                       j->err ? (const char *)j->err : "",
                       (Py_ssize_t)j->err_len);
}

/* _info() -> (state, submit_ns, end_ns, runtime_ns, worker_pid, where,
 * attempts): where and when the job ran (monotonic ns; end 0 while not
 * done; where "" when it never ran). The fields after submit are written
 * before the job is marked done, so a done job's are complete. */
static PyObject *Job_info(ppx_job_object *self, PyObject *unused) {
  PP_UNUSED(unused);
  pp_job *j = self->j;
  int state = atomic_load_explicit(&j->state, memory_order_acquire);
  int done = state == PP_JOB_DONE;
  return Py_BuildValue("(iKKKisI)", state, (unsigned long long)j->submit_ns,
                       (unsigned long long)(done ? j->end_ns : 0),
                       (unsigned long long)(done ? j->runtime_ns : 0),
                       done ? j->worker_pid : 0, done ? j->where : "",
                       j->attempt);
}

static PyObject *Job_tid(ppx_job_object *self, void *c) {
  PP_UNUSED(c);
  return PyLong_FromUnsignedLongLong(self->j ? self->j->id : 0);
}

/* Jobs are made by Engine.submit only (it fills the record). */
static PyObject *Job_new(PyTypeObject *t, PyObject *a, PyObject *k) {
  PP_UNUSED(t);
  PP_UNUSED(a);
  PP_UNUSED(k);
  PyErr_SetString(PyExc_TypeError, "jobs are created by Server.submit()");
  return NULL;
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
    {"_abort", (PyCFunction)Job_abort, METH_O, NULL},
    {"_info", (PyCFunction)Job_info, METH_NOARGS, NULL},
    {"_output", (PyCFunction)Job_output, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyMemberDef Job_members[] = {
    {"callback", T_OBJECT, offsetof(ppx_job_object, callback), 0, NULL},
    {"callbackargs", T_OBJECT, offsetof(ppx_job_object, callbackargs), 0,
     NULL},
    {"_done_callbacks", T_OBJECT, offsetof(ppx_job_object, done_callbacks), 0,
     NULL},
    {"_engine", T_OBJECT, offsetof(ppx_job_object, engine), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyGetSetDef Job_getset[] = {
    {"tid", (getter)Job_tid, NULL, "the job id", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyType_Slot Job_slots[] = {
    {Py_tp_doc, "A submitted job: call it for the result."},
    {Py_tp_new, Job_new},
    {Py_tp_dealloc, Job_dealloc},
    {Py_tp_traverse, Job_traverse},
    {Py_tp_clear, Job_clear},
    {Py_tp_call, Job_call},
    {Py_tp_methods, Job_methods},
    {Py_tp_members, Job_members},
    {Py_tp_getset, Job_getset},
    {0, NULL}};

PyType_Spec ppx_job_spec = {
    .name = "pp._core.Job",
    .basicsize = sizeof(ppx_job_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Job_slots,
};
