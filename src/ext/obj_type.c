/* obj_type.c — pp._core.Obj: an object put once (Server.put), held as its
 * pickled bytes in a pp_obj record (job.h) named by the SHA-256 of those
 * bytes. The engine sends it to each worker and node at most once while it
 * fits in their object store (peer.c); jobs name it (Engine.submit's objs).
 * Python (pp._server.ObjectRef) owns the handle's lifetime and asks the
 * engine to release it (Engine.obj_release). Every function runs with the
 * GIL held. */
#include "ext.h"

#include <stdlib.h>
#include <string.h>

/* Obj(data, engine=None): data is the pickled object as pp._oob.dumps
 * made it: bytes, or (pickle, [buffers]), which becomes one buffer section
 * (one copy of every buffer), in engine's shared-memory arena when it has
 * one and the section is large (its local workers then read it in place).
 * 0, or -1 with an exception. Initialised once. */
static int Obj_init(ppx_obj_object *self, PyObject *args, PyObject *kw) {
  PyObject *data, *eng = Py_None;
  static char *kwlist[] = {"data", "engine", NULL};
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O", kwlist, &data, &eng))
    return -1;
  ppx_state *st = ppx_state_of_type(Py_TYPE(self));
  if (st == NULL)
    return -1;
  pp_shm *shm = NULL;
  if (eng != Py_None) {
    if (!PyObject_TypeCheck(eng, st->engine_type)) {
      PyErr_SetString(PyExc_TypeError, "engine must be an Engine or None");
      return -1;
    }
    ppx_engine_object *eo = (ppx_engine_object *)eng;
    if (eo->e != NULL)
      shm = pp_engine_shm(eo->e);
  }
  if (self->o != NULL) {
    PyErr_SetString(PyExc_RuntimeError, "Obj already initialised");
    return -1;
  }
  uint8_t *copy = NULL;
  size_t len;
  uint32_t flags = 0;
  pp_obj *o = NULL;
  if (PyTuple_Check(data)) {
    ppx_bufs bb;
    if (ppx_bufs_measure(data, &bb) < 0)
      return -1;
    if (bb.size > PP_FRAME_MAX_DEFAULT - PP_KEY_LEN) {
      ppx_bufs_release(&bb);
      PyErr_Format(PyExc_ValueError,
                   "the object is %llu bytes when pickled, above the frame "
                   "limit of %u bytes", (unsigned long long)bb.size,
                   (unsigned)(PP_FRAME_MAX_DEFAULT - PP_KEY_LEN));
      return -1;
    }
    len = (size_t)bb.size;
    o = pp_obj_alloc(shm, len, PP_OBJF_BUFS);
    if (o != NULL) {
      Py_BEGIN_ALLOW_THREADS /* the buffers stay exported meanwhile */
      ppx_bufs_copy(&bb, o->data);
      pp_obj_hash(o); /* hashing 100 MiB takes a while */
      Py_END_ALLOW_THREADS
    }
    ppx_bufs_release(&bb);
    if (o == NULL) {
      ppx_raise(PP_ENOMEM, "put");
      return -1;
    }
    self->o = o;
    return 0;
  } else {
    Py_buffer b;
    if (PyObject_GetBuffer(data, &b, PyBUF_SIMPLE) < 0)
      return -1;
    if ((size_t)b.len > PP_FRAME_MAX_DEFAULT - PP_KEY_LEN) {
      PyErr_Format(PyExc_ValueError,
                   "the object is %zd bytes when pickled, above the frame "
                   "limit of %u bytes", b.len,
                   (unsigned)(PP_FRAME_MAX_DEFAULT - PP_KEY_LEN));
      PyBuffer_Release(&b);
      return -1;
    }
    len = (size_t)b.len;
    copy = malloc(len ? len : 1);
    if (copy != NULL)
      memcpy(copy, b.buf, len);
    PyBuffer_Release(&b);
  }
  if (copy == NULL) {
    ppx_raise(PP_ENOMEM, "put");
    return -1;
  }
  Py_BEGIN_ALLOW_THREADS /* hashing 100 MiB takes a while */
  o = pp_obj_new(copy, len, flags);
  Py_END_ALLOW_THREADS
  if (o == NULL) {
    free(copy);
    ppx_raise(PP_ENOMEM, "put");
    return -1;
  }
  self->o = o;
  return 0;
}

static void Obj_dealloc(ppx_obj_object *self) {
  PyTypeObject *tp = Py_TYPE(self);
  pp_obj_unref(self->o);
  tp->tp_free((PyObject *)self);
  Py_DECREF(tp);
}

/* Obj.key: the 32-byte SHA-256 of the pickled form. */
static PyObject *Obj_key(ppx_obj_object *self, void *unused) {
  (void)unused;
  if (self->o == NULL)
    Py_RETURN_NONE;
  return PyBytes_FromStringAndSize((const char *)self->o->key, PP_KEY_LEN);
}

/* Obj.size: bytes of the pickled form (what the object stores count). */
static PyObject *Obj_size(ppx_obj_object *self, void *unused) {
  (void)unused;
  return PyLong_FromSize_t(self->o ? self->o->len : 0);
}

static PyGetSetDef Obj_getset[] = {
    {"key", (getter)Obj_key, NULL, "SHA-256 of the pickled object", NULL},
    {"size", (getter)Obj_size, NULL, "bytes of the pickled object", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyType_Slot Obj_slots[] = {
    {Py_tp_doc, "Obj(data): an object put once, sent to each worker and "
                "node at most once and named by its SHA-256 key."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, Obj_init},
    {Py_tp_dealloc, Obj_dealloc},
    {Py_tp_getset, Obj_getset},
    {0, NULL}};

PyType_Spec ppx_obj_spec = {
    .name = "pp._core.Obj",
    .basicsize = sizeof(ppx_obj_object),
    .flags = Py_TPFLAGS_DEFAULT
#ifdef Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_IMMUTABLETYPE
#endif
    ,
    .slots = Obj_slots,
};
