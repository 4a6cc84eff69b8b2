/* worker.c — the main loop of a worker process, in C: read frames from the
 * engine on a pipe, load and cache functions by content key, unpickle
 * arguments, call, pickle the result or the exception, write frames back.
 * Results are batched: they are written when no complete job is left in the
 * input or 1 ms after the first unsent one. The engine's status page on fd 4
 * (core/wstatus.h) says which job is running, so a crash is charged to that
 * job and not to the finished ones whose results were still held back, and
 * gives the frame limit: a result above it fails cleanly instead of being
 * sent as an oversized frame. Runs on the worker's main thread
 * with the GIL held, released around every read and write. */
#include "ext.h"

#include "../core/frame.h"
#include "../core/pp_common.h"
#include "../core/shm.h"
#include "../core/wstatus.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sched.h>
#include <sys/uio.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#define FLUSH_AFTER_NS 1000000ull
#define FLUSH_BYTES (256u * 1024u)
/* After answering, a worker polls its pipe this long before it blocks
 * (read_in), as long as the next job came within it last time;
 * PP_WORKER_POLL_US in the worker's environment changes it (0: never). */
#define READ_SPIN_US_DEFAULT 50

/* write_all: write the whole buffer to fd, GIL released. 0 or -1. */
static int write_all(int fd, pp_buf *out) {
  int rc = 0;
  Py_BEGIN_ALLOW_THREADS
  while (pp_buf_avail(out) > 0) {
    ssize_t n = write(fd, out->data + out->off, pp_buf_avail(out));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      rc = -1;
      break;
    }
    pp_buf_consume(out, (size_t)n);
  }
  Py_END_ALLOW_THREADS
  return rc;
}

/* writev_all: write out's bytes, then each of the n iovecs `more`, to fd
 * with the GIL released, resuming after partial writes. 0 or -1. out is
 * emptied either way. */
static int writev_all(int fd, pp_buf *out, struct iovec *more, int n) {
  struct iovec iov[2 * PP_BUFS_MAX + 2];
  int cnt = 0, rc = 0;
  if (pp_buf_avail(out) > 0)
    iov[cnt++] = (struct iovec){out->data + out->off, pp_buf_avail(out)};
  for (int i = 0; i < n; i++)
    if (more[i].iov_len > 0)
      iov[cnt++] = more[i];
  Py_BEGIN_ALLOW_THREADS
  int k = 0;
  while (k < cnt) {
    ssize_t w = writev(fd, iov + k, cnt - k > 1024 ? 1024 : cnt - k);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      rc = -1;
      break;
    }
    size_t left = (size_t)w;
    while (k < cnt && left >= iov[k].iov_len)
      left -= iov[k++].iov_len;
    if (k < cnt) {
      iov[k].iov_base = (char *)iov[k].iov_base + left;
      iov[k].iov_len -= left;
    }
  }
  Py_END_ALLOW_THREADS
  out->off = out->len = 0;
  return rc;
}

typedef struct wstate {
  int fd;
  int proto;
  PyObject *cache;       /* bytes key -> (callable|None, module|None, err) */
  PyObject *loader;      /* blob -> (callable, module|None) */
  PyObject *excfmt;      /* (exc, serial) -> bytes */
  PyObject *sys_modules;
  PyObject *default_main;
  PyObject *cur_main;    /* borrowed: what sys.modules['__main__'] is now */
  PyObject *loads;       /* borrowed from the module state: pickle.loads */
  PyObject *dumps;       /* borrowed from the module state: pickle.dumps */
  ppx_state *st;         /* the module state (lease type) */
  pp_wstatus *status;    /* the engine's status page, or NULL */
  uint32_t max_frame;    /* payload limit of the frames we send */
  int capture;           /* fds 1 and 2 are memfds: each job's output */
  uint32_t max_output;   /* bytes kept per stream and job */
  pp_buf cap[2];         /* the current job's captured stdout, stderr */
  pp_buf out;
  /* The engine's arena (shm.h), mapped privately: JOBs with PP_JOBF_SHM
   * name their arguments in it; writes stay in this process, and a block's
   * pages are discarded (back to the shared ones) when the job is done
   * with it. NULL without one. */
  uint8_t *arena;
  size_t arena_size;
  int passed_fd;         /* a descriptor that arrived (SCM_RIGHTS), or -1 */
  struct shm_use *cur;   /* the running job's use of the arena, or NULL */
  int cur_done;          /* ... and it has ended already */
  pp_buf rel;            /* RELEASE frames to send with the next write */
  PyObject *objects;     /* pp._objects: the object store (Server.put) */
  int spin;              /* read_in polls before blocking (see there) */
  uint64_t spin_ns;      /* how long read_in polls; 0: never */
} wstate;

/* flush_out: send the frames in w->out: on the pipe, or, when they are
 * exactly one RESULT frame (no KEPT) of a job a caller waits for in the
 * status page's mailbox, there (pp_wstatus_post: no system call, and the
 * engine thread is not woken). 0, or -1 when the engine is gone. */
static int flush_out(wstate *w) {
  pp_buf *o = &w->out;
  size_t avail = pp_buf_avail(o);
  pp_frame_hdr h;
  if (w->status != NULL && avail >= PP_FRAME_HDR &&
      avail <= PP_WSTATUS_MB_MAX &&
      pp_frame_decode_hdr(o->data + o->off, PP_WSTATUS_MB_MAX, &h) == PP_OK &&
      h.type == PP_MSG_RESULT && !(h.flags & PP_RESF_KEPT) &&
      PP_FRAME_HDR + (size_t)h.length == avail &&
      pp_wstatus_post(w->status, h.id, h.attempt, o->data + o->off, avail)) {
    pp_buf_consume(o, avail);
    return 0;
  }
  return write_all(w->fd, o);
}

/* One job's use of its arguments in the arena: the context of their lease.
 * When the lease dies during the job, the RESULT says nothing; after its
 * RESULT (which said KEPT), a RELEASE frame tells the engine. */
struct shm_use {
  wstate *w;
  uint64_t id;
  uint32_t attempt;
};

/* release_shm: the last view of a job's shared arguments is gone (GIL
 * held): drop this process's private copies of the pages it wrote and
 * tell the engine, unless the job is still running (its RESULT will). */
static void release_shm(void *ctx, void *base, size_t len) {
  struct shm_use *u = ctx;
  wstate *w = u->w;
  size_t span = (len + PP_SHM_PAGE - 1) & ~(size_t)(PP_SHM_PAGE - 1);
  if (span > 0)
    madvise(base, span, MADV_DONTNEED);
  if (u == w->cur) {
    w->cur_done = 1;
  } else {
    pp_frame_hdr h = {PP_PROTO_VERSION, PP_MSG_RELEASE, 0, 0, u->attempt,
                      u->id};
    uint8_t hdr[PP_FRAME_HDR];
    pp_frame_encode_hdr(hdr, &h);
    pp_buf_append(&w->rel, hdr, sizeof hdr); /* on failure the block stays
                                                held until the worker ends */
  }
  free(u);
}

/* One object's arena block read in place (PP_OBJF_SHM): the context of
 * its lease. */
struct obj_use {
  wstate *w;
  uint8_t key[PP_KEY_LEN];
};

/* release_objshm: the last view of an object's arena block is gone (GIL
 * held): drop our private copies of its pages and tell the engine (OBJ
 * key[32]), which then may reuse the block. */
static void release_objshm(void *ctx, void *base, size_t len) {
  struct obj_use *u = ctx;
  size_t span = (len + PP_SHM_PAGE - 1) & ~(size_t)(PP_SHM_PAGE - 1);
  if (span > 0)
    madvise(base, span, MADV_DONTNEED);
  /* on failure the engine keeps the block until the worker ends */
  pp_frame_append(&u->w->rel, PP_MSG_OBJ, 0, 0, 0, u->key, PP_KEY_LEN);
  free(u);
}

/* take_releases: move pending RELEASE frames into the output batch. */
static void take_releases(wstate *w) {
  if (pp_buf_avail(&w->rel) > 0 &&
      pp_buf_append(&w->out, w->rel.data + w->rel.off,
                    pp_buf_avail(&w->rel)) == PP_OK)
    pp_buf_free(&w->rel);
}

/* map_arena: an SHM frame: map the descriptor that came with it and answer
 * whether that worked. 0, or -1 when the answer cannot be queued. */
static int map_arena(wstate *w, const pp_frame_hdr *h, const uint8_t *p) {
  uint32_t ok = 0;
  if (h->length == 8 && w->passed_fd >= 0 && w->arena == NULL) {
    uint64_t size = pp_get_u64(p);
    struct stat st;
    if (size > 0 && size <= SIZE_MAX && fstat(w->passed_fd, &st) == 0 &&
        (uint64_t)st.st_size >= size) {
      void *m = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE,
                     w->passed_fd, 0);
      if (m != MAP_FAILED) {
        w->arena = m;
        w->arena_size = (size_t)size;
        ok = 1;
      }
    }
  }
  if (w->passed_fd >= 0) {
    close(w->passed_fd);
    w->passed_fd = -1;
  }
  uint8_t a[4];
  pp_put_u32(a, ok);
  return pp_frame_append(&w->out, PP_MSG_SHM, 0, 0, 0, a, 4) == PP_OK ? 0 : -1;
}

/* read_in: read from the engine into in (GIL released), keeping a
 * descriptor passed with the bytes (SCM_RIGHTS) in w->passed_fd. Returns
 * what recvmsg returned.
 *
 * Polling before blocking: a worker that has just answered often gets its
 * next job within microseconds (a caller waiting on each result, W2), and
 * waking a process blocked in recvmsg costs several microseconds on each
 * round trip. So while w->spin is set the worker first polls the pipe for
 * up to w->spin_ns (PP_WORKER_POLL_US), yielding the CPU between polls (to
 * the engine thread or the caller when they share it); when nothing comes
 * in that time it blocks, and polls again only once a job comes within the
 * window after all: an idle or sparsely fed worker sleeps at once and
 * costs no CPU. */
static ssize_t read_in(wstate *w, pp_buf *in) {
  ssize_t n;
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(4 * sizeof(int))];
  } ctl;
  struct iovec iov = {in->data + in->len, in->cap - in->len};
  struct msghdr mh;
  uint64_t t0 = w->spin_ns ? pp_now_ns() : 0;
  int flags = w->spin ? MSG_DONTWAIT : 0;
  Py_BEGIN_ALLOW_THREADS
  for (;;) {
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = sizeof ctl.buf;
    n = recvmsg(w->fd, &mh, MSG_CMSG_CLOEXEC | flags);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && flags && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (pp_now_ns() - t0 >= w->spin_ns)
        flags = 0; /* nothing came soon: block */
      else
        sched_yield(); /* let another thread of this CPU run meanwhile */
      continue;
    }
    break;
  }
  Py_END_ALLOW_THREADS
  if (w->spin_ns)
    w->spin = pp_now_ns() - t0 < w->spin_ns;
  if (n > 0)
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
        continue;
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < k; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        if (w->passed_fd >= 0)
          close(w->passed_fd);
        w->passed_fd = fd; /* the last one counts */
      }
    }
  return n;
}

/* setup_spin: read_in's polling: PP_WORKER_POLL_US (default
 * READ_SPIN_US_DEFAULT, at most one second), and only with more than one
 * CPU to run on (on one, the poller would only delay the engine thread). */
static void setup_spin(wstate *w) {
  const char *v = getenv("PP_WORKER_POLL_US");
  long us = READ_SPIN_US_DEFAULT;
  if (v != NULL && *v != '\0') {
    char *end;
    long n = strtol(v, &end, 10);
    if (*end == '\0' && n >= 0)
      us = n > 1000000 ? 1000000 : n;
  }
  cpu_set_t cpus;
  int ncpu = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus)
                                                           : 1;
  w->spin_ns = ncpu > 1 ? (uint64_t)us * 1000u : 0;
  w->spin = 0; /* from the first answer on */
}

/* map_status: map the engine's status page (fd 4) if there is one. */
static void map_status(wstate *w) {
  struct stat st;
  w->max_frame = PP_FRAME_MAX_DEFAULT;
  if (fstat(PP_WSTATUS_FD, &st) != 0 || !S_ISREG(st.st_mode) ||
      st.st_size < (off_t)PP_WSTATUS_SIZE)
    return;
  void *m = mmap(NULL, PP_WSTATUS_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                 PP_WSTATUS_FD, 0);
  if (m == MAP_FAILED)
    return;
  pp_wstatus *s = m;
  if (s->magic != PP_WSTATUS_MAGIC || s->version != PP_WSTATUS_VERSION) {
    munmap(m, PP_WSTATUS_SIZE);
    return;
  }
  w->status = s;
  if (s->max_frame >= 1024)
    w->max_frame = s->max_frame;
}

/* set_main: make module (or the default) sys.modules['__main__'] so that
 * pickle finds classes of the job's namespace. 0 or -1 with an exception. */
static int set_main(wstate *w, PyObject *module) {
  if (module == Py_None)
    module = w->default_main;
  if (module == w->cur_main)
    return 0;
  if (PyDict_SetItemString(w->sys_modules, "__main__", module) < 0)
    return -1;
  w->cur_main = module;
  return 0;
}

/* format_exc: turn the current exception into result bytes via excfmt.
 * Returns a new bytes object, or NULL if even that failed. */
static PyObject *format_exc(wstate *w, int serial) {
  PyObject *t, *exc, *tb;
  PyErr_Fetch(&t, &exc, &tb);
  PyErr_NormalizeException(&t, &exc, &tb);
  if (exc != NULL && tb != NULL)
    PyException_SetTraceback(exc, tb);
  PyObject *r = PyObject_CallFunction(w->excfmt, "Oi", exc ? exc : Py_None,
                                      serial);
  Py_XDECREF(t);
  Py_XDECREF(exc);
  Py_XDECREF(tb);
  if (r != NULL && !PyBytes_Check(r)) {
    Py_DECREF(r);
    r = NULL;
  }
  if (r == NULL)
    PyErr_Clear();
  return r;
}

/* append_result: queue one RESULT frame (u64 run time + data) in the output
 * batch, through the core's one frame builder. 0, or -1 when out of memory
 * or too large for a frame at all (fatal for the worker). GIL held. */
static int append_result(wstate *w, uint64_t id, uint32_t attempt,
                         unsigned status, uint64_t runtime, PyObject *data) {
  uint8_t rt[8], lens[8];
  size_t no = pp_buf_avail(&w->cap[0]), ne = pp_buf_avail(&w->cap[1]);
  pp_put_u64(rt, runtime);
  pp_put_u32(lens, (uint32_t)no);
  pp_put_u32(lens + 4, (uint32_t)ne);
  pp_part parts[5] = {{rt, 8},
                      {lens, 0},
                      {w->cap[0].data + w->cap[0].off, no},
                      {w->cap[1].data + w->cap[1].off, ne},
                      {PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data)}};
  if (no + ne > 0) { /* the job wrote something: it travels with the result */
    parts[1].len = 8;
    status |= PP_RESF_OUTPUT;
  }
  int rc = pp_frame_build(&w->out, PP_MSG_RESULT, status, id, attempt, parts,
                          5);
  pp_buf_free(&w->cap[0]);
  pp_buf_free(&w->cap[1]);
  return rc == PP_OK ? 0 : -1;
}

/* append_result_bufs: send one RESULT whose data is the buffer section of
 * bb (status OK with PP_RESF_BUFS): everything before the buffers goes to
 * the output batch, which is then written together with the buffers in
 * one writev straight from the objects' memory (no copy in the worker).
 * 0, or -1 when the engine is gone or memory ran out (fatal). GIL held. */
static int append_result_bufs(wstate *w, uint64_t id, uint32_t attempt,
                              unsigned extra, uint64_t runtime,
                              const ppx_bufs *bb) {
  static const uint8_t zeros[PP_BUFS_ALIGN];
  uint8_t rt[8], lens[8], hdr[PP_FRAME_HDR];
  size_t no = pp_buf_avail(&w->cap[0]), ne = pp_buf_avail(&w->cap[1]);
  size_t head = 16 + 8 * (size_t)bb->n;
  uint8_t *table = PyMem_Malloc(head);
  struct iovec *iov = PyMem_Malloc(sizeof *iov * 2 * bb->n);
  unsigned status = PP_RES_OK | PP_RESF_BUFS | extra;
  uint64_t len = 8 + bb->size;
  int rc = -1;
  if (table == NULL || iov == NULL)
    goto out;
  if (no + ne > 0) {
    status |= PP_RESF_OUTPUT;
    len += 8 + no + ne;
  }
  pp_put_u64(rt, runtime);
  pp_put_u32(lens, (uint32_t)no);
  pp_put_u32(lens + 4, (uint32_t)ne);
  pp_bufs_write_head(table, (uint64_t)bb->pickle.len, bb->lens, bb->n);
  pp_frame_hdr h = {PP_PROTO_VERSION, PP_MSG_RESULT, status, (uint32_t)len,
                    attempt, id};
  pp_frame_encode_hdr(hdr, &h);
  if (pp_buf_append(&w->out, hdr, sizeof hdr) != PP_OK ||
      pp_buf_append(&w->out, rt, 8) != PP_OK ||
      (no + ne > 0 &&
       (pp_buf_append(&w->out, lens, 8) != PP_OK ||
        pp_buf_append(&w->out, w->cap[0].data + w->cap[0].off, no) != PP_OK ||
        pp_buf_append(&w->out, w->cap[1].data + w->cap[1].off, ne) != PP_OK)) ||
      pp_buf_append(&w->out, table, head) != PP_OK ||
      pp_buf_append(&w->out, bb->pickle.buf, (size_t)bb->pickle.len) != PP_OK)
    goto out;
  uint64_t end = head + (uint64_t)bb->pickle.len;
  for (uint32_t i = 0; i < bb->n; i++) {
    iov[2 * i] = (struct iovec){(void *)zeros, (size_t)(bb->offs[i] - end)};
    iov[2 * i + 1] = (struct iovec){bb->views[i].buf, (size_t)bb->lens[i]};
    end = bb->offs[i] + bb->lens[i];
  }
  rc = writev_all(w->fd, &w->out, iov, (int)(2 * bb->n));
out:
  PyMem_Free(table);
  PyMem_Free(iov);
  pp_buf_free(&w->cap[0]);
  pp_buf_free(&w->cap[1]);
  return rc;
}

/* plain_value: whether v is certainly pickled without large buffers (the
 * common small results skip pp._oob entirely). */
static int plain_value(PyObject *v) {
  return v == Py_None || PyLong_CheckExact(v) || PyFloat_CheckExact(v) ||
         PyBool_Check(v) ||
         (PyUnicode_CheckExact(v) && PyUnicode_GET_LENGTH(v) < 65536);
}

/* release_block: a lease over a JOB's input block is gone: free it. */
static void release_block(void *ctx, void *base, size_t len) {
  PP_UNUSED(base);
  PP_UNUSED(len);
  free(ctx);
}

/* setup_capture: when the engine asks for it (status page), make fds 1 and
 * 2 memfds and sys.stdout/sys.stderr write straight through to them, so a
 * job's prints, a C extension's writes and a child process's output all
 * land there; collect_output reads them after each job. 0 or -1 (no
 * capture: the worker writes to the inherited fds as before). */
static int setup_capture(wstate *w) {
  if (w->status == NULL || !w->status->capture)
    return 0;
  for (int k = 1; k <= 2; k++) {
    int fd = memfd_create(k == 1 ? "pp-stdout" : "pp-stderr", 0);
    if (fd < 0)
      return -1;
    if (dup2(fd, k) < 0) {
      close(fd);
      return -1;
    }
    close(fd);
  }
  PyObject *g = PyDict_New();
  if (g == NULL)
    return -1;
  PyObject *r = PyRun_String(
      "import io, sys\n"
      "def _w(fd):\n"
      "    return io.TextIOWrapper(io.FileIO(fd, 'w', closefd=False),\n"
      "        encoding='utf-8', errors='backslashreplace', write_through=True)\n"
      "sys.stdout = sys.__stdout__ = _w(1)\n"
      "sys.stderr = sys.__stderr__ = _w(2)\n",
      Py_file_input, g, g);
  Py_DECREF(g);
  if (r == NULL)
    return -1;
  Py_DECREF(r);
  w->capture = 1;
  w->max_output = w->status->max_output ? w->status->max_output : (1u << 20);
  return 0;
}

/* collect_output: move what the job wrote to fds 1 and 2 into w->cap,
 * keeping at most max_output bytes of each and a line saying how many
 * were dropped, and empty the files for the next job. */
static void collect_output(wstate *w) {
  if (!w->capture)
    return;
  fflush(stdout); /* C stdio of extensions; no system call when empty */
  fflush(stderr);
  for (int k = 0; k < 2; k++) {
    int fd = k + 1;
    off_t end = lseek(fd, 0, SEEK_CUR);
    if (end <= 0)
      continue;
    size_t keep = (uint64_t)end > w->max_output ? w->max_output : (size_t)end;
    pp_buf *b = &w->cap[k];
    if (pp_buf_reserve(b, keep + 80) == PP_OK) {
      ssize_t n = pread(fd, b->data + b->len, keep, 0);
      if (n > 0)
        b->len += (size_t)n;
      if ((uint64_t)end > keep) {
        char note[80];
        int m = snprintf(note, sizeof note,
                         "\n[pp: %llu more bytes of output dropped]\n",
                         (unsigned long long)((uint64_t)end - keep));
        if (m > 0)
          pp_buf_append(b, note, (size_t)m);
      }
    }
    if (ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0)
      continue; /* not a file after all: leave it */
  }
}

/* call_chunk: items is a list of argument tuples, or with onearg a list of
 * single arguments; returns the new list of fn's results, or NULL with the
 * first exception set. Worker main thread, GIL held. */
static PyObject *call_chunk(PyObject *fn, PyObject *items, int onearg) {
  PyObject *seq = PySequence_Fast(items, "chunk must be a sequence");
  if (seq == NULL)
    return NULL;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject *res = PyList_New(n);
  for (Py_ssize_t i = 0; res != NULL && i < n; i++) {
    PyObject *a = PySequence_Fast_GET_ITEM(seq, i);
    PyObject *r;
    if (onearg)
      r = PyObject_CallOneArg(fn, a);
    else if (PyTuple_Check(a))
      r = PyObject_Call(fn, a, NULL);
    else {
      r = NULL;
      PyErr_SetString(PyExc_TypeError, "chunk item must be a tuple");
    }
    if (r == NULL)
      Py_CLEAR(res);
    else
      PyList_SET_ITEM(res, i, r);
  }
  Py_DECREF(seq);
  return res;
}

/* The status page, for the SIGUSR2 handler (a signal handler cannot reach
 * module state; there is one worker loop per process). */
static pp_wstatus *abort_page;

/* on_abort_signal: SIGUSR2 from the engine: if the running job is on the
 * abort list, raise KeyboardInterrupt inside it (PyErr_SetInterruptEx is
 * async-signal-safe). Any other time it does nothing. */
static void on_abort_signal(int sig) {
  PP_UNUSED(sig);
  pp_wstatus *s = abort_page;
  if (s != NULL &&
      pp_wstatus_aborting(s, atomic_load_explicit(&s->job_id,
                                                  memory_order_acquire)))
    PyErr_SetInterruptEx(SIGINT);
}

/* install_abort: SIGUSR2 interrupts an aborted job; SIGINT itself (the
 * terminal's Ctrl-C, which is the client's) stays ignored by the process
 * while Python's SIGINT handler stays the default one, so an interrupt
 * scheduled by on_abort_signal raises KeyboardInterrupt. */
static void install_abort(wstate *w) {
  struct sigaction sa;
  abort_page = w->status;
  signal(SIGINT, SIG_IGN);
  if (w->status == NULL)
    return;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_abort_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR2, &sa, NULL);
}

/* mem_limit_set: allow the process `add` more bytes of address space than
 * it has now; the old limit goes to *old. 0 or -1 (no limit applied). */
static int mem_limit_set(uint64_t add, struct rlimit *old) {
  unsigned long long pages = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL)
    return -1;
  int n = fscanf(f, "%llu", &pages);
  fclose(f);
  if (n != 1 || getrlimit(RLIMIT_AS, old) != 0)
    return -1;
  uint64_t want = (uint64_t)pages * (uint64_t)sysconf(_SC_PAGESIZE) + add;
  struct rlimit nl = *old;
  if (old->rlim_max != RLIM_INFINITY && want > old->rlim_max)
    want = old->rlim_max;
  nl.rlim_cur = (rlim_t)want;
  return setrlimit(RLIMIT_AS, &nl);
}

/* run_job: execute one JOB frame and append its RESULT. block is the
 * malloc'd storage the frame lies in when its arguments are a buffer
 * section (PP_JOBF_BUFS): run_job owns it (a lease frees it once the last
 * object built on it is gone), else NULL. 0, or -1 when the result could
 * not even be encoded (fatal for the worker). */
static int run_job(wstate *w, const pp_frame_hdr *h, const uint8_t *p,
                   uint8_t *block) {
  PyObject *lease = NULL;
  ppx_bufs rb;
  int have_rb = 0;
  size_t data_off = 0, data_len = 0; /* the arguments in the lease */
  w->cur = NULL;
  if (block != NULL) { /* from here on the lease owns the block */
    lease = ppx_lease_new(w->st, block, (size_t)(p - block) + h->length, 0,
                          release_block, block);
    if (lease == NULL)
      return -1;
  }
  unsigned status = PP_RES_OK;
  PyObject *data = NULL, *res = NULL, *args = NULL, *entry = NULL;
  uint64_t t0 = pp_now_ns(), t1;
  uint64_t mem_limit = 0;
  size_t args_off = PP_KEY_LEN;
  struct rlimit old_limit;
  int limited = 0;
  pp_wstatus_begin(w->status, h->id, h->attempt, t0);
  if (pp_wstatus_aborting(w->status, h->id)) {
    /* aborted before it started: it never runs */
    static const char msg[] = "aborted before it started";
    PyObject *m = PyBytes_FromStringAndSize(msg, sizeof msg - 1);
    int rc = m ? append_result(w, h->id, h->attempt, PP_RES_ABORTED, 0, m) : -1;
    Py_XDECREF(m);
    Py_XDECREF(lease);
    pp_wstatus_end(w->status);
    return rc;
  }
  if (h->flags & PP_JOBF_LIMITS) {
    if (h->length < PP_KEY_LEN + PP_LIMITS_LEN) {
      Py_XDECREF(lease);
      pp_wstatus_end(w->status);
      return -1; /* the engine broke the protocol */
    }
    mem_limit = pp_get_u64(p + PP_KEY_LEN + 8);
    args_off += PP_LIMITS_LEN;
  }
  if (h->flags & PP_JOBF_OBJS) {
    /* u32 n, u32 0, n keys: the objects its arguments name; our store
     * has them (the engine sent them first), and unpickling the arguments
     * resolves them (pp._objects._resolve) */
    uint32_t n = h->length >= args_off + 8 ? pp_get_u32(p + args_off) : 0;
    if (n == 0 || n > PP_JOB_OBJS_MAX ||
        h->length - args_off - 8 < (size_t)n * PP_KEY_LEN) {
      Py_XDECREF(lease);
      pp_wstatus_end(w->status);
      return -1; /* the engine broke the protocol */
    }
    args_off += 8 + (size_t)n * PP_KEY_LEN;
  }
  if (block != NULL) {
    data_off = (size_t)(p - block) + args_off;
    data_len = h->length - args_off;
  } else if (h->flags & PP_JOBF_SHM) {
    /* the arguments are a block of the arena: check the descriptor, then
     * lend the block to the unpickler in place */
    uint64_t off = 0, len = 0;
    if (h->length == args_off + PP_SHM_DESC_LEN) {
      off = pp_get_u64(p + args_off);
      len = pp_get_u64(p + args_off + 8);
    }
    struct shm_use *u = NULL;
    if (w->arena == NULL || h->length != args_off + PP_SHM_DESC_LEN ||
        off % PP_SHM_PAGE != 0 || off > w->arena_size ||
        len > w->arena_size - off || (u = malloc(sizeof *u)) == NULL) {
      pp_wstatus_end(w->status);
      return -1; /* the engine broke the protocol */
    }
    *u = (struct shm_use){w, h->id, h->attempt};
    w->cur = u;
    w->cur_done = 0;
    lease = ppx_lease_new(w->st, w->arena + off, (size_t)len, 0, release_shm,
                          u);
    if (lease == NULL) {
      w->cur = NULL;
      pp_wstatus_end(w->status);
      return -1;
    }
    data_len = (size_t)len;
  }
  PyObject *key = PyBytes_FromStringAndSize((const char *)p, PP_KEY_LEN);
  if (key == NULL) {
    Py_XDECREF(lease);
    w->cur = NULL;
    pp_wstatus_end(w->status);
    return -1;
  }
  entry = PyDict_GetItemWithError(w->cache, key); /* borrowed */
  Py_DECREF(key);
  if (entry == NULL) {
    if (!PyErr_Occurred())
      PyErr_SetString(PyExc_RuntimeError,
                      "pp worker: job names a function it was never sent");
    status = PP_RES_EXC;
    data = format_exc(w, 0);
    goto done;
  }
  PyObject *fn = PyTuple_GET_ITEM(entry, 0);
  if (fn == Py_None) { /* loading the function failed: report that */
    status = PP_RES_EXC;
    data = PyTuple_GET_ITEM(entry, 2);
    Py_INCREF(data);
    goto done;
  }
  if (set_main(w, PyTuple_GET_ITEM(entry, 1)) < 0)
    goto exc;
  if (mem_limit != 0)
    limited = mem_limit_set(mem_limit, &old_limit) == 0;
  if (lease != NULL) {
    /* out-of-band buffers: views of the input block or of the arena,
     * read in place */
    if (h->flags & PP_JOBF_BUFS) {
      args = ppx_bufs_loads(lease, data_off, data_len);
    } else {
      PyObject *lv = PyMemoryView_FromObject(lease);
      args = lv ? PyObject_CallOneArg(w->loads, lv) : NULL;
      Py_XDECREF(lv);
    }
    Py_CLEAR(lease); /* what still uses the block holds it */
    if (args == NULL)
      goto exc;
    goto loaded;
  }
  PyObject *mv = PyMemoryView_FromMemory((char *)p + args_off,
                                         (Py_ssize_t)(h->length - args_off),
                                         PyBUF_READ);
  if (mv == NULL)
    goto exc;
  args = PyObject_CallOneArg(w->loads, mv);
  /* The view must be released before the input buffer moves on, but a call
   * made while an exception is set fails with SystemError and buries the
   * real error (ModuleNotFoundError, the ValueError of a __reduce__ ...):
   * park the unpickling error around the release and put it back. */
  PyObject *etype, *evalue, *etb;
  PyErr_Fetch(&etype, &evalue, &etb);
  PyObject *rel = PyObject_CallMethod(mv, "release", NULL);
  if (rel == NULL && etype != NULL)
    PyErr_Clear(); /* keep the unpickling error, the first cause */
  Py_XDECREF(rel);
  if (etype != NULL)
    PyErr_Restore(etype, evalue, etb);
  else if (rel == NULL)
    Py_CLEAR(args); /* unpickled, but something still holds the view */
  Py_DECREF(mv);
  if (args == NULL)
    goto exc;
loaded:
  t0 = pp_now_ns();
  if (h->flags & PP_JOBF_CHUNK) {
    res = call_chunk(fn, args, (h->flags & PP_JOBF_ONEARG) != 0);
  } else if (PyTuple_Check(args)) {
    res = PyObject_Call(fn, args, NULL);
  } else {
    PyObject *t = PySequence_Tuple(args);
    res = t ? PyObject_Call(fn, t, NULL) : NULL;
    Py_XDECREF(t);
  }
  t1 = pp_now_ns();
  if (limited) { /* the next job runs with the limit lifted */
    setrlimit(RLIMIT_AS, &old_limit);
    limited = 0;
  }
  if (res == NULL)
    goto exc;
  if (w->proto >= 5 && !plain_value(res))
    data = ppx_oob_dumps(res, w->proto); /* bytes or (pickle, [buffers]) */
  else
    data = PyObject_CallFunction(w->dumps, "Oi", res, w->proto);
  if (data != NULL && PyTuple_Check(data)) {
    int ok = ppx_bufs_measure(data, &rb) == 0;
    Py_CLEAR(data);
    if (ok) {
      have_rb = 1;
      data = PyBytes_FromStringAndSize(NULL, 0); /* sized below with rb */
    }
  }
  if (data == NULL || !PyBytes_Check(data)) {
    Py_CLEAR(data);
    status = PP_RES_SERIAL;
    data = format_exc(w, 1);
  }
  goto done_timed;
exc:
  t1 = pp_now_ns();
  status = PP_RES_EXC;
  data = format_exc(w, 0);
  goto done_timed;
done:
  t1 = pp_now_ns();
done_timed:
  if (limited)
    setrlimit(RLIMIT_AS, &old_limit);
  Py_XDECREF(lease);
  Py_XDECREF(args);
  Py_XDECREF(res);
  unsigned kept = 0;
  if (w->cur != NULL) {
    /* the job's objects still use its shared arguments (kept in a global,
     * a cycle not yet collected): the engine keeps the block until our
     * RELEASE */
    if (!w->cur_done)
      kept = PP_RESF_KEPT;
    w->cur = NULL;
  }
  collect_output(w);
  uint64_t dlen = data == NULL ? 0
                 : have_rb    ? rb.size
                              : (uint64_t)PyBytes_GET_SIZE(data);
  if (data != NULL &&
      dlen + 16 + pp_buf_avail(&w->cap[0]) + pp_buf_avail(&w->cap[1]) >
          w->max_frame) {
    /* too large for one frame: fail this job, not the worker */
    PyErr_Format(PyExc_OverflowError,
                 "the job's %s is %llu bytes when pickled%s, above the frame "
                 "limit of %u bytes (max_frame)",
                 status == PP_RES_OK ? "result" : "exception",
                 (unsigned long long)dlen,
                 have_rb ? " with its out-of-band buffers" : "",
                 (unsigned)w->max_frame);
    if (have_rb) {
      ppx_bufs_release(&rb);
      have_rb = 0;
    }
    Py_DECREF(data);
    status = PP_RES_SERIAL;
    data = format_exc(w, 1);
  }
  if (data == NULL) { /* the exception could not be formatted either */
    status = PP_RES_EXC;
    data = PyBytes_FromString("");
    if (data == NULL) {
      pp_wstatus_end(w->status);
      return -1;
    }
  }
  int rc;
  if (have_rb) {
    rc = append_result_bufs(w, h->id, h->attempt, kept, t1 - t0, &rb);
    ppx_bufs_release(&rb);
  } else {
    rc = append_result(w, h->id, h->attempt, status | kept, t1 - t0, data);
  }
  Py_DECREF(data);
  pp_wstatus_end(w->status);
  /* an abort that arrived as the job ended must not hit the next one */
  if (PyErr_CheckSignals() < 0)
    PyErr_Clear();
  return rc;
}

/* load_func: a FUNC frame: build the callable through the Python loader and
 * cache it (or the error) under its key. 0 or -1 (fatal). */
static int load_func(wstate *w, const pp_frame_hdr *h, const uint8_t *p) {
  if (h->flags & PP_FUNCF_RESET)
    PyDict_Clear(w->cache);
  PyObject *key = PyBytes_FromStringAndSize((const char *)p, PP_KEY_LEN);
  PyObject *blob = PyBytes_FromStringAndSize((const char *)p + PP_KEY_LEN,
                                             h->length - PP_KEY_LEN);
  PyObject *entry = NULL;
  if (key == NULL || blob == NULL)
    goto fail;
  PyObject *r = PyObject_CallOneArg(w->loader, blob);
  if (r != NULL && PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2) {
    entry = PyTuple_Pack(3, PyTuple_GET_ITEM(r, 0), PyTuple_GET_ITEM(r, 1),
                         Py_None);
  } else {
    if (r != NULL)
      PyErr_SetString(PyExc_TypeError, "pp worker: loader returned garbage");
    PyObject *err = format_exc(w, 0);
    if (err == NULL)
      err = PyBytes_FromString("");
    if (err != NULL)
      entry = PyTuple_Pack(3, Py_None, Py_None, err);
    Py_XDECREF(err);
  }
  Py_XDECREF(r);
  if (entry == NULL || PyDict_SetItem(w->cache, key, entry) < 0)
    goto fail;
  Py_DECREF(entry);
  Py_DECREF(key);
  Py_DECREF(blob);
  return 0;
fail:
  Py_XDECREF(entry);
  Py_XDECREF(key);
  Py_XDECREF(blob);
  return -1;
}

/* load_obj: an OBJ frame (an object put once, docs/protocol.md 2.2):
 * hand it to the store (pp._objects), which unpickles it on first use.
 * block is the malloc'd storage the frame lies in when its data is a
 * buffer section (PP_OBJF_BUFS): load_obj owns it (a lease frees it once
 * the object and its arrays are gone), else NULL and the data is copied.
 * With PP_OBJF_DROP: forget one hold of the key. 0 or -1 (fatal). */
static int load_obj(wstate *w, const pp_frame_hdr *h, const uint8_t *p,
                    uint8_t *block) {
  PyObject *key = PyBytes_FromStringAndSize((const char *)p, PP_KEY_LEN);
  PyObject *raw = NULL, *r = NULL;
  if (key == NULL) {
    free(block);
    return -1;
  }
  size_t len = h->length - PP_KEY_LEN;
  if (h->flags & PP_OBJF_DROP) {
    r = PyObject_CallMethod(w->objects, "worker_drop", "O", key);
  } else if (h->flags & PP_OBJF_SHM) {
    /* a block of the arena, read in place: check the descriptor */
    uint64_t off = len == PP_SHM_DESC_LEN ? pp_get_u64(p + PP_KEY_LEN) : 0;
    uint64_t n = len == PP_SHM_DESC_LEN ? pp_get_u64(p + PP_KEY_LEN + 8) : 0;
    struct obj_use *u = NULL;
    if (w->arena == NULL || len != PP_SHM_DESC_LEN || off % PP_SHM_PAGE ||
        off > w->arena_size || n > w->arena_size - off ||
        !(h->flags & PP_OBJF_BUFS) || (u = malloc(sizeof *u)) == NULL) {
      Py_DECREF(key);
      PyErr_SetString(PyExc_RuntimeError,
                      "pp worker: bad shared-memory OBJ frame from engine");
      return -1;
    }
    u->w = w;
    memcpy(u->key, p, PP_KEY_LEN);
    PyObject *lease = ppx_lease_new(w->st, w->arena + off, (size_t)n, 0,
                                    release_objshm, u);
    if (lease != NULL)
      raw = Py_BuildValue("(Nnn)", lease, (Py_ssize_t)0, (Py_ssize_t)n);
    len = (size_t)n;
  } else if (block != NULL) {
    size_t off = (size_t)(p - block) + PP_KEY_LEN;
    PyObject *lease = ppx_lease_new(w->st, block, off + len, 0, release_block,
                                    block);
    if (lease != NULL)
      raw = Py_BuildValue("(Nnn)", lease, (Py_ssize_t)off, (Py_ssize_t)len);
  } else {
    raw = PyBytes_FromStringAndSize((const char *)p + PP_KEY_LEN,
                                    (Py_ssize_t)len);
  }
  if (raw != NULL)
    r = PyObject_CallMethod(w->objects, "worker_put", "OOn", key, raw,
                            (Py_ssize_t)len);
  Py_XDECREF(raw);
  Py_DECREF(key);
  if (r == NULL)
    return -1;
  Py_DECREF(r);
  return 0;
}

/* watch_parent: make the kernel kill this worker when the engine thread
 * that started it goes (Linux), and exit at once if the parent (pid
 * `parent`) is already gone. Worker's main thread, at start. */
static void watch_parent(long parent) {
#ifdef __linux__
  /* die with the engine thread that started us, even on SIGKILL */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
  if (parent > 0 && getppid() != (pid_t)parent)
    _exit(0); /* parent already gone */
}

PyObject *ppx_worker_main(PyObject *self, PyObject *a) {
  wstate w;
  int restart;
  long parent;
  memset(&w, 0, sizeof w);
  ppx_state *st = PyModule_GetState(self);
  if (st == NULL)
    return NULL;
  w.loads = st->loads; /* the module lives while its function runs */
  w.dumps = st->dumps;
  w.st = st;
  w.passed_fd = -1;
  if (!PyArg_ParseTuple(a, "iOOiil", &w.fd, &w.loader, &w.excfmt, &w.proto,
                        &restart, &parent))
    return NULL;
  watch_parent(parent);
  map_status(&w);
  setup_spin(&w);
  install_abort(&w);
  if (setup_capture(&w) < 0)
    PyErr_Clear(); /* the jobs run without capture */
  w.sys_modules = PyImport_GetModuleDict(); /* borrowed */
  w.default_main = PyDict_GetItemString(w.sys_modules, "__main__");
  if (w.default_main == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "no __main__ module");
    return NULL;
  }
  Py_INCREF(w.default_main);
  w.cur_main = w.default_main;
  w.cache = PyDict_New();
  if (w.cache == NULL)
    return NULL;
  w.objects = PyImport_ImportModule("pp._objects");
  if (w.objects == NULL) {
    Py_CLEAR(w.cache);
    return NULL;
  }
  pp_buf in;
  pp_buf_init(&in);
  pp_buf_init(&w.out);
  PyObject *ret = NULL;
  uint8_t pid[4];
  pp_put_u32(pid, (uint32_t)getpid());
  if (pp_frame_append(&w.out, PP_MSG_HELLO, 0, 0, 0, pid, 4) != PP_OK ||
      write_all(w.fd, &w.out) < 0)
    goto out;

  for (;;) {
    pp_frame_hdr h;
    const uint8_t *p;
    int rc;
    uint64_t first_unsent = 0;
    int stolen = 0;
    while ((rc = pp_frame_next(&in, PP_FRAME_MAX_DEFAULT, &h, &p)) == 1) {
      if ((h.type == PP_MSG_FUNC || h.type == PP_MSG_JOB ||
           h.type == PP_MSG_OBJ) &&
          h.length < PP_KEY_LEN) {
        rc = PP_EPROTO;
        break;
      }
      if (h.type == PP_MSG_OBJ && (h.flags & PP_OBJF_BUFS) &&
          !(h.flags & (PP_OBJF_DROP | PP_OBJF_SHM))) {
        /* read in place, as a JOB's buffers: the frame's storage goes to
         * the object, the bytes after it to a fresh input */
        uint8_t *block = in.data;
        size_t end = in.off + PP_FRAME_HDR + h.length;
        pp_buf rest;
        pp_buf_init(&rest);
        if (pp_buf_append(&rest, in.data + end, in.len - end) != PP_OK) {
          PyErr_NoMemory();
          goto out;
        }
        in = rest;
        stolen = 1;
        if (load_obj(&w, &h, p, block) < 0)
          goto out;
      } else if (h.type == PP_MSG_OBJ) {
        if (load_obj(&w, &h, p, NULL) < 0)
          goto out;
      } else if (h.type == PP_MSG_FUNC) {
        if (load_func(&w, &h, p) < 0)
          goto out;
      } else if (h.type == PP_MSG_SHM) {
        if (map_arena(&w, &h, p) < 0)
          goto out;
      } else if (h.type == PP_MSG_JOB && (h.flags & PP_JOBF_BUFS) &&
                 !(h.flags & PP_JOBF_SHM)) {
        /* the job's buffers are read in place: the frame's storage goes to
         * the job (run_job's lease), the bytes after it to a fresh input */
        uint8_t *block = in.data;
        size_t end = in.off + PP_FRAME_HDR + h.length;
        pp_buf rest;
        pp_buf_init(&rest);
        if (pp_buf_append(&rest, in.data + end, in.len - end) != PP_OK) {
          PyErr_NoMemory();
          goto out;
        }
        in = rest;
        stolen = 1;
        if (run_job(&w, &h, p, block) < 0)
          goto out;
        if (first_unsent == 0)
          first_unsent = pp_now_ns();
        if (restart) {
          write_all(w.fd, &w.out);
          goto bye;
        }
      } else if (h.type == PP_MSG_JOB) {
        if (run_job(&w, &h, p, NULL) < 0)
          goto out;
        if (first_unsent == 0)
          first_unsent = pp_now_ns();
        if (restart) { /* one job per process */
          write_all(w.fd, &w.out);
          goto bye;
        }
      } else if (h.type == PP_MSG_BYE) {
        write_all(w.fd, &w.out);
        goto bye;
      } else {
        rc = PP_EPROTO;
        break;
      }
      if (!stolen)
        pp_buf_consume(&in, PP_FRAME_HDR + h.length);
      stolen = 0;
      take_releases(&w);
      if (pp_buf_avail(&w.out) > 0 &&
          (pp_buf_avail(&w.out) >= FLUSH_BYTES ||
           pp_now_ns() - first_unsent >= FLUSH_AFTER_NS)) {
        if (flush_out(&w) < 0)
          goto bye; /* engine gone */
        first_unsent = 0;
      }
    }
    if (rc < 0) {
      PyErr_Format(PyExc_RuntimeError, "pp worker: bad frame from engine: %s",
                   pp_strerror(rc));
      goto out;
    }
    take_releases(&w);
    if (pp_buf_avail(&w.out) > 0 && flush_out(&w) < 0)
      goto bye;
    size_t want = 65536;
    if (rc == 0 && pp_buf_avail(&in) >= PP_FRAME_HDR) {
      /* a large frame: make room for all of it at once, not by doubling */
      uint64_t flen = PP_FRAME_HDR + (uint64_t)pp_get_u32(in.data + in.off + 8);
      if (flen > pp_buf_avail(&in) + want)
        want = (size_t)(flen - pp_buf_avail(&in));
    }
    if (pp_buf_reserve(&in, want) != PP_OK) {
      PyErr_NoMemory();
      goto out;
    }
    ssize_t n = read_in(&w, &in);
    if (n <= 0)
      goto bye; /* engine closed the pipe: exit quietly */
    in.len += (size_t)n;
  }
bye:
  ret = Py_None;
  Py_INCREF(ret);
out:
  set_main(&w, Py_None);
  pp_buf_free(&in);
  pp_buf_free(&w.out);
  pp_buf_free(&w.cap[0]);
  pp_buf_free(&w.cap[1]);
  Py_XDECREF(w.cache);
  Py_XDECREF(w.objects);
  Py_XDECREF(w.default_main);
  if (w.status)
    munmap(w.status, PP_WSTATUS_SIZE);
  if (w.passed_fd >= 0)
    close(w.passed_fd);
  pp_buf_free(&w.rel);
  /* the arena stays mapped: objects built on it may outlive this loop */
  return ret;
}
