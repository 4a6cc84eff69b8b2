/* forkserver.c — pp._core.template_serve: the fork server's loop in a
 * template process (core/template.c, docs/protocol.md 4.3), run with
 * CPython's fork hooks, so each forked child is a consistent interpreter
 * (locks reinitialised, os.register_at_fork callbacks run: random reseeds
 * itself) that goes on to be a worker. Main thread of the template, GIL
 * held throughout: the template runs no other thread. */
#include "ext.h"

#include "../core/pp_common.h"
#include "../core/template.h"

#include <signal.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

static void before(void *ctx) {
  PP_UNUSED(ctx);
  PyOS_BeforeFork();
}

static void parent(void *ctx) {
  PP_UNUSED(ctx);
  PyOS_AfterFork_Parent();
}

static void child(void *ctx) {
  PP_UNUSED(ctx);
  PyOS_AfterFork_Child();
}

/* idle: call the template's warm-up callable (ctx, borrowed: the caller's
 * argument outlives the loop); an exception in it is reported and
 * forgotten (the workers load what they need themselves). */
static void idle(void *ctx) {
  PyObject *r = PyObject_CallNoArgs((PyObject *)ctx);
  if (r == NULL)
    PyErr_WriteUnraisable((PyObject *)ctx);
  Py_XDECREF(r);
}

/* template_serve(ctl, parent_pid, warm=None) -> bool: die with the engine
 * thread that started this process (PR_SET_PDEATHSIG; at once if
 * parent_pid is already gone), then serve fork requests on ctl, calling
 * warm() once when the first forks are done and no request waits (see
 * pp_tpl_hooks.idle). Returns True in a forked child
 * (a worker now: fd 3 its socket, fd 4 its status page), False in the
 * template once the engine closed the control socket; OSError when it
 * cannot serve. */
PyObject *ppx_template_serve(PyObject *self, PyObject *a) {
  int ctl;
  long parent_pid;
  PyObject *warm = Py_None;
  PP_UNUSED(self);
  if (!PyArg_ParseTuple(a, "il|O", &ctl, &parent_pid, &warm))
    return NULL;
  if (warm != Py_None && !PyCallable_Check(warm)) {
    PyErr_SetString(PyExc_TypeError, "template_serve: warm must be callable");
    return NULL;
  }
#ifdef __linux__
  prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
  if (parent_pid > 0 && getppid() != (pid_t)parent_pid)
    Py_RETURN_FALSE; /* the engine is already gone */
  pp_tpl_hooks h = {before, parent, child, warm == Py_None ? NULL : idle,
                    warm};
  int rc = pp_tpl_serve(ctl, &h);
  if (rc == 0)
    Py_RETURN_TRUE;
  if (rc == 1)
    Py_RETURN_FALSE;
  return PyErr_Format(PyExc_OSError, "pp fork server: %s", pp_strerror(rc));
}
