/* lease.c — pp._core.Lease: a buffer-protocol exporter over memory the C
 * side owns (a worker's input block, a job's result, a shared-memory range),
 * so out-of-band pickle buffers (protocol 5) are read in place instead of
 * being copied into Python objects. The lease releases the memory through
 * its owner's release function when the last view of it is gone; numpy
 * arrays rebuilt from such buffers keep the lease, and so the memory, alive.
 * Also the two helpers that turn a buffer section (frame.h) into Python
 * objects and back: ppx_bufs_loads, ppx_bufs_measure/ppx_bufs_copy.
 * GIL held everywhere. */
#include "ext.h"

#include "../core/frame.h"

#include <string.h>

typedef struct {
  PyObject_HEAD
  void *base;
  size_t len;
  int readonly;
  ppx_release_fn release; /* called once from dealloc */
  void *ctx;
} ppx_lease_object;

static int Lease_getbuffer(PyObject *o, Py_buffer *view, int flags) {
  ppx_lease_object *self = (ppx_lease_object *)o;
  return PyBuffer_FillInfo(view, o, self->base, (Py_ssize_t)self->len,
                           self->readonly, flags);
}

static void Lease_dealloc(PyObject *o) {
  ppx_lease_object *self = (ppx_lease_object *)o;
  PyTypeObject *tp = Py_TYPE(o);
  if (self->release != NULL)
    self->release(self->ctx, self->base, self->len);
  tp->tp_free(o);
  Py_DECREF(tp);
}

static PyType_Slot lease_slots[] = {
    {Py_bf_getbuffer, Lease_getbuffer},
    {Py_tp_dealloc, Lease_dealloc},
    {Py_tp_doc, "Memory owned by pp's C side, lent to out-of-band pickle "
                "buffers; freed when the last view of it is gone."},
    {0, NULL}};

PyType_Spec ppx_lease_spec = {
    .name = "pp._core.Lease",
    .basicsize = sizeof(ppx_lease_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = lease_slots,
};

PyObject *ppx_lease_new(ppx_state *st, void *base, size_t len, int readonly,
                        ppx_release_fn release, void *ctx) {
  ppx_lease_object *l =
      (ppx_lease_object *)st->lease_type->tp_alloc(st->lease_type, 0);
  if (l == NULL) {
    if (release != NULL)
      release(ctx, base, len);
    return NULL;
  }
  l->base = base;
  l->len = len;
  l->readonly = readonly;
  l->release = release;
  l->ctx = ctx;
  return (PyObject *)l;
}

/* oob_func: pp._oob.<name> (imported on first use: the worker's bare
 * package and the client both have it). New reference or NULL. */
static PyObject *oob_func(const char *name) {
  PyObject *m = PyImport_ImportModule("pp._oob");
  if (m == NULL)
    return NULL;
  PyObject *f = PyObject_GetAttrString(m, name);
  Py_DECREF(m);
  return f;
}

/* slice: mv[off:off+len] as a new memoryview (sharing mv's export). */
static PyObject *slice(PyObject *mv, size_t off, size_t len) {
  PyObject *a = PyLong_FromSize_t(off), *b = PyLong_FromSize_t(off + len);
  PyObject *s = a && b ? PySlice_New(a, b, NULL) : NULL;
  PyObject *r = s ? PyObject_GetItem(mv, s) : NULL;
  Py_XDECREF(a);
  Py_XDECREF(b);
  Py_XDECREF(s);
  return r;
}

PyObject *ppx_bufs_loads(PyObject *lease, size_t off, size_t len) {
  pp_bufs_view *v = PyMem_Malloc(sizeof *v);
  PyObject *mv = NULL, *pk = NULL, *bufs = NULL, *fn = NULL, *r = NULL;
  if (v == NULL)
    return PyErr_NoMemory();
  mv = PyMemoryView_FromObject(lease);
  if (mv == NULL)
    goto out;
  Py_buffer view;
  if (PyObject_GetBuffer(mv, &view, PyBUF_SIMPLE) < 0)
    goto out;
  int rc = (size_t)view.len < off || (size_t)view.len - off < len
               ? PP_EPROTO
               : pp_bufs_parse((const uint8_t *)view.buf + off, len, v);
  PyBuffer_Release(&view);
  if (rc != PP_OK) {
    PyErr_SetString(PyExc_ValueError,
                    "malformed out-of-band buffer table in a frame");
    goto out;
  }
  size_t poff = (size_t)(v->pickle - ((const uint8_t *)view.buf + off));
  pk = slice(mv, off + poff, v->pickle_len);
  bufs = PyList_New(v->n);
  if (pk == NULL || bufs == NULL)
    goto out;
  for (uint32_t i = 0; i < v->n; i++) {
    PyObject *b = slice(mv, off + v->off[i], v->len[i]);
    if (b == NULL)
      goto out;
    PyList_SET_ITEM(bufs, i, b);
  }
  fn = oob_func("loads");
  if (fn != NULL)
    r = PyObject_CallFunctionObjArgs(fn, pk, bufs, NULL);
out:
  PyMem_Free(v);
  Py_XDECREF(fn);
  Py_XDECREF(bufs);
  Py_XDECREF(pk);
  Py_XDECREF(mv);
  return r;
}

PyObject *ppx_oob_filter(PyObject *mod, PyObject *const *args,
                         Py_ssize_t nargs) {
  PP_UNUSED(mod);
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "oob_filter(slow, obj)");
    return NULL;
  }
  PyObject *o = args[1];
  Py_ssize_t n;
  if (PyBytes_CheckExact(o))
    n = PyBytes_GET_SIZE(o);
  else if (PyByteArray_CheckExact(o))
    n = PyByteArray_GET_SIZE(o);
  else if (PyMemoryView_Check(o))
    n = PyMemoryView_GET_BUFFER(o)->len;
  else
    Py_RETURN_NONE;
  if (n < PPX_OOB_MIN)
    Py_RETURN_NONE;
  return PyObject_CallOneArg(args[0], o);
}

PyObject *ppx_oob_dumps(PyObject *obj, int proto) {
  PyObject *fn = oob_func("dumps");
  if (fn == NULL)
    return NULL;
  PyObject *r = PyObject_CallFunction(fn, "Oi", obj, proto);
  Py_DECREF(fn);
  return r;
}

void ppx_bufs_release(ppx_bufs *b) {
  for (uint32_t i = 0; i < b->n; i++)
    PyBuffer_Release(&b->views[i]);
  if (b->have_pickle)
    PyBuffer_Release(&b->pickle);
  PyMem_Free(b->views);
  PyMem_Free(b->lens);
  PyMem_Free(b->offs);
  memset(b, 0, sizeof *b);
}

int ppx_bufs_measure(PyObject *tuple, ppx_bufs *b) {
  memset(b, 0, sizeof *b);
  PyObject *pk, *list;
  if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != 2 ||
      !PyList_Check(list = PyTuple_GET_ITEM(tuple, 1))) {
    PyErr_SetString(PyExc_TypeError,
                    "data must be bytes or (pickle, [buffers])");
    return -1;
  }
  pk = PyTuple_GET_ITEM(tuple, 0);
  Py_ssize_t n = PyList_GET_SIZE(list);
  if (n < 1 || n > (Py_ssize_t)PP_BUFS_MAX) {
    PyErr_Format(PyExc_ValueError, "%zd out-of-band buffers (1..%u allowed)",
                 n, (unsigned)PP_BUFS_MAX);
    return -1;
  }
  if (PyObject_GetBuffer(pk, &b->pickle, PyBUF_SIMPLE) < 0)
    return -1;
  b->have_pickle = 1;
  b->views = PyMem_Calloc((size_t)n, sizeof *b->views);
  b->lens = PyMem_Calloc((size_t)n, sizeof *b->lens);
  b->offs = PyMem_Calloc((size_t)n, sizeof *b->offs);
  if (b->views == NULL || b->lens == NULL || b->offs == NULL) {
    ppx_bufs_release(b);
    PyErr_NoMemory();
    return -1;
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    if (PyObject_GetBuffer(PyList_GET_ITEM(list, i), &b->views[i],
                           PyBUF_SIMPLE) < 0) {
      ppx_bufs_release(b);
      return -1;
    }
    b->n++;
    b->lens[i] = (uint64_t)b->views[i].len;
  }
  b->size = pp_bufs_size((uint64_t)b->pickle.len, b->lens, b->n, b->offs);
  if (b->size == 0) {
    ppx_bufs_release(b);
    PyErr_SetString(PyExc_OverflowError, "out-of-band buffers too large");
    return -1;
  }
  return 0;
}

void ppx_bufs_copy(const ppx_bufs *b, uint8_t *out) {
  size_t head = 16 + 8 * (size_t)b->n;
  pp_bufs_write_head(out, (uint64_t)b->pickle.len, b->lens, b->n);
  memcpy(out + head, b->pickle.buf, (size_t)b->pickle.len);
  size_t end = head + (size_t)b->pickle.len;
  for (uint32_t i = 0; i < b->n; i++) {
    memset(out + end, 0, (size_t)b->offs[i] - end); /* padding */
    memcpy(out + b->offs[i], b->views[i].buf, (size_t)b->lens[i]);
    end = (size_t)(b->offs[i] + b->lens[i]);
  }
}

PyObject *ppx_bufs_loads_py(PyObject *self, PyObject *args) {
  PyObject *lease;
  Py_ssize_t off, len;
  PP_UNUSED(self);
  if (!PyArg_ParseTuple(args, "Onn", &lease, &off, &len))
    return NULL;
  if (off < 0 || len < 0) {
    PyErr_SetString(PyExc_ValueError, "bad section bounds");
    return NULL;
  }
  return ppx_bufs_loads(lease, (size_t)off, (size_t)len);
}
