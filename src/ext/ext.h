/* ext.h — what the files of the pp._core extension share: the module state,
 * the type specs each file defines, the one pp-code-to-exception mapper and
 * the sliced wait. Layout of the extension:
 *   module.c       the module: state, multi-phase init, constants, the error
 *                  mapper, parse_ppserver, the sliced wait
 *   engine_type.c  pp._core.Engine: options, submit, events, statistics
 *   job_type.c     pp._core.Job (a submitted job) and pp._core.Func (a
 *                  function descriptor)
 *   worker.c       pp._core.worker_main: the worker process's loop
 *   forkserver.c   pp._core.template_serve: the fork server's loop
 *   wmodule.c      pp._wcore: worker.c, forkserver.c and lease.c again as a
 *                  module of their own, without the engine or OpenSSL (what
 *                  workers import); its state is a ppx_state with loads,
 *                  dumps and lease_type only
 * Every object lives in the calling thread's world with the GIL held; the
 * engine thread never sees a PyObject, only bytes (see engine.h). */
#ifndef PP_EXT_H
#define PP_EXT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../core/engine.h"

/* The module's state (PEP 489): one per module object, fetched from a type
 * with ppx_state_of_type() or from the module with PyModule_GetState().
 * Every field is a strong reference, released in the module's m_clear. */
typedef struct ppx_state {
  PyTypeObject *func_type;   /* pp._core.Func */
  PyTypeObject *job_type;    /* pp._core.Job (pp.Job subclasses it) */
  PyTypeObject *engine_type; /* pp._core.Engine */
  PyObject *loads;           /* pickle.loads */
  PyObject *dumps;           /* pickle.dumps */
  PyTypeObject *lease_type;  /* pp._core.Lease (lease.c) */
  PyTypeObject *obj_type;    /* pp._core.Obj (obj_type.c) */
} ppx_state;

extern struct PyModuleDef ppx_module_def;

/* ppx_state_of_type: the state of the pp._core module that defined tp or
 * one of its bases (so a pp.Job finds it through pp._core.Job). Returns a
 * borrowed pointer, valid while tp lives (a heap type holds its module), or
 * NULL with TypeError set. GIL held. */
ppx_state *ppx_state_of_type(PyTypeObject *tp);

/* The type specs, instantiated by the module's exec slot (module.c). */
extern PyType_Spec ppx_func_spec;
extern PyType_Spec ppx_job_spec;
extern PyType_Spec ppx_engine_spec;
extern PyType_Spec ppx_lease_spec;
extern PyType_Spec ppx_obj_spec;

/* ---- out-of-band buffers (lease.c) ------------------------------------ */

/* How a lease gives its memory back: called once, with the GIL held, when
 * the lease object dies (or fails to be made). */
typedef void (*ppx_release_fn)(void *ctx, void *base, size_t len);

/* ppx_lease_new: a pp._core.Lease exporting base[0..len) (writable unless
 * readonly); release(ctx, base, len) runs when it dies. Ownership of the
 * memory passes to the lease even on failure (release is then called at
 * once). New reference or NULL. */
PyObject *ppx_lease_new(ppx_state *st, void *base, size_t len, int readonly,
                        ppx_release_fn release, void *ctx);

/* ppx_bufs_loads: unpickle the buffer section at lease[off..off+len)
 * through pp._oob.loads, the buffers being views of the lease (no copy).
 * New reference, or NULL with ValueError for a malformed table or the
 * unpickling error. */
PyObject *ppx_bufs_loads(PyObject *lease, size_t off, size_t len);

/* Buffers smaller than this stay inside the pickle stream (pp._oob.OOB_MIN,
 * exported as pp._core.OOB_MIN). */
#define PPX_OOB_MIN (64 * 1024)

/* ppx_oob_filter: pp._core.oob_filter(slow, obj), the persistent_id of
 * pp._oob's pickler: None at C speed unless obj is exactly a bytes or
 * bytearray, or a memoryview, of at least PPX_OOB_MIN bytes; then
 * slow(obj). A new reference, or NULL with an exception. GIL held. */
PyObject *ppx_oob_filter(PyObject *mod, PyObject *const *args,
                         Py_ssize_t nargs);

/* ppx_oob_dumps: pp._oob.dumps(obj, proto): bytes, or (pickle, [buffers])
 * when some buffers travel out of band. New reference or NULL. */
PyObject *ppx_oob_dumps(PyObject *obj, int proto);

/* A (pickle, [buffers]) pair held as Py_buffers, measured as a section. */
typedef struct ppx_bufs {
  Py_buffer pickle;
  int have_pickle;
  Py_buffer *views; /* n of them */
  uint64_t *lens, *offs;
  uint32_t n;
  uint64_t size;    /* bytes of the whole section */
} ppx_bufs;

/* ppx_bufs_measure: take buffers on tuple = (pickle, [buffers]) and compute
 * the section's layout. 0, or -1 with an exception (b is then empty). */
int ppx_bufs_measure(PyObject *tuple, ppx_bufs *b);
/* ppx_bufs_copy: write the whole section (b->size bytes) at out. */
void ppx_bufs_copy(const ppx_bufs *b, uint8_t *out);
/* ppx_bufs_release: release the Py_buffers and tables. */
void ppx_bufs_release(ppx_bufs *b);

/* The objects' C layouts, shared by engine_type.c and job_type.c. */

/* pp._core.Func: a function descriptor, shipped to each worker once. */
typedef struct {
  PyObject_HEAD
  pp_func *f; /* one reference, NULL until __init__ ran */
} ppx_func_object;

/* pp._core.Obj: an object put once (obj_type.c). */
typedef struct {
  PyObject_HEAD
  pp_obj *o; /* one reference, NULL until __init__ ran */
} ppx_obj_object;

/* pp._core.Engine: one C engine (its thread, queue and workers). */
typedef struct {
  PyObject_HEAD
  pp_engine *e;           /* NULL until __init__ succeeded */
  ppx_state *st;          /* the defining module's state (borrowed: the
                             type holds the module, the object its type) */
  PyTypeObject *job_type; /* the class submit() instantiates (a reference) */
  size_t max_frame;       /* payload limit on worker pipes, in bytes */
  PyObject *echo;         /* echo(job), called once when a job's outcome is
                             read and it has captured output; or NULL */
} ppx_engine_object;

/* pp._core.Job: a submitted job. Garbage-collected (callbacks may refer
 * back to it). */
typedef struct {
  PyObject_HEAD
  pp_job *j;                 /* one reference to the engine's record */
  ppx_engine_object *engine; /* a reference: keeps the engine alive */
  PyObject *result;          /* cached unpickled value, or NULL */
  PyObject *callback;        /* submit's callback, or NULL */
  PyObject *callbackargs;
  PyObject *done_callbacks;  /* managed by pp.Job (Python) */
  int echoed;                /* its captured output was echoed */
} ppx_job_object;

/* ppx_raise: the one mapping from a pp error code (pp_common.h) to a
 * Python exception: sets the matching class (PP_ENOMEM -> MemoryError,
 * PP_EINVAL and PP_ETOOBIG -> ValueError, PP_ETIMEDOUT -> TimeoutError,
 * PP_ECLOSED and PP_ESTATE -> RuntimeError, connection codes -> their
 * ConnectionError subclass, PP_EAUTH -> PermissionError, other I/O and
 * protocol codes -> OSError) with the message "what: <the code's message>",
 * or the code's message alone when what is NULL. Always returns NULL, so
 * `return ppx_raise(...)` reads naturally. GIL held. */
PyObject *ppx_raise(int code, const char *what);

/* ppx_parse_timeout: None (or NULL) -> -1.0 (wait forever), a number ->
 * seconds, negative ones clamped to 0. On error returns -2.0 with an
 * exception set. GIL held. */
double ppx_parse_timeout(PyObject *o);

/* ppx_wait_sliced: call fn(e, arg, slice_ns) with the GIL released, in 50 ms
 * slices until it returns 0 (done) or `timeout` seconds passed (< 0: no
 * limit), checking for signals (Ctrl-C) between slices. Returns 1 done,
 * 0 timed out, -1 with the signal handler's exception set. Called with the
 * GIL held. */
typedef int (*ppx_wait_fn)(pp_engine *e, void *arg, int64_t slice_ns);
int ppx_wait_sliced(pp_engine *e, ppx_wait_fn fn, void *arg, double timeout);

/* ppx_worker_main: the worker process's main loop (worker.c); self is the
 * module. Python: worker_main(fd, loader, excfmt, proto, restart, parent). */
PyObject *ppx_worker_main(PyObject *self, PyObject *args);

/* ppx_template_serve: the fork server's loop (forkserver.c). Python:
 * template_serve(ctl, parent) -> True in a forked worker, False at the
 * engine's end of file. */
PyObject *ppx_template_serve(PyObject *self, PyObject *args);

/* ppx_bufs_loads_py: bufs_loads(lease, off, len): unpickle the buffer
 * section lease[off..off+len) with its buffers read in place
 * (ppx_bufs_loads): how a worker builds an object put once (pp._objects)
 * on its first use (lease.c). GIL held. */
PyObject *ppx_bufs_loads_py(PyObject *self, PyObject *args);

/* The methods pp._core and pp._wcore both have (module.c, wmodule.c): the
 * worker's loop, the fork server's, and the buffer helpers. */
#define PPX_WORKER_METHODS                                                     \
  {"bufs_loads", ppx_bufs_loads_py, METH_VARARGS,                              \
   "bufs_loads(lease, off, len): unpickle a buffer section in place"},         \
      {"worker_main", ppx_worker_main, METH_VARARGS,                           \
       "worker_main(fd, loader, excfmt, proto, restart, parent_pid): run the " \
       "worker loop until the engine says BYE or closes the pipe"},            \
      {"oob_filter", (PyCFunction)(void (*)(void))ppx_oob_filter,              \
       METH_FASTCALL,                                                          \
       "oob_filter(slow, obj): None unless obj is a bytes, bytearray or "      \
       "memoryview of at least OOB_MIN bytes, else slow(obj) (pp._oob)"},      \
      {"template_serve", ppx_template_serve, METH_VARARGS,                     \
       "template_serve(ctl, parent_pid, warm=None) -> bool: serve fork "       \
       "requests on ctl, warm() once when idle after the first forks; True "   \
       "in a forked worker, False once the engine closed ctl"},

#endif
