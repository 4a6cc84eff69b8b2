/* forksrv.c — the engine's side of the fork server (template.h,
 * docs/protocol.md 4.3): starting the template process, sending it FORK
 * requests with the new worker's descriptors, reading its FORKED and EXITED
 * reports, and noticing its end (exit or a closed control socket). What the
 * reports mean for workers is pool.c's business, told through
 * e->tpl_ops; this file only moves messages. A template that ends is
 * replaced by the next FORK request. Engine thread only. */
#include "engine_int.h"
#include "fdpass.h"
#include "template.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct pp__tpl {
  pp_engine *e;
  uv_process_t proc;
  uv_poll_t poll;
  int fd;           /* the engine's end of the control socket */
  int pid;
  int alive;        /* the process has not exited */
  int polling;      /* the poll handle is open */
  int open_handles; /* proc and poll handles not yet closed */
  uint64_t gen;     /* which template this is (workers name it) */
  pp__tpl *next;    /* every record not yet freed */
};

/* set_current: t (or NULL) takes the requests from now on. */
static void set_current(pp_engine *e, pp__tpl *t) {
  e->tpl = t;
  uv_mutex_lock(&e->mu);
  e->tpl_pid = t ? t->pid : 0;
  uv_mutex_unlock(&e->mu);
}

/* tpl_unlink_free: the last handle of t is closed: forget it. */
static void tpl_unlink_free(pp__tpl *t) {
  pp_engine *e = t->e;
  for (pp__tpl **pt = &e->tpls; *pt; pt = &(*pt)->next)
    if (*pt == t) {
      *pt = t->next;
      break;
    }
  if (e->tpl == t)
    set_current(e, NULL);
  free(t);
}

static void on_tpl_closed(uv_handle_t *h) {
  pp__tpl *t = h->data;
  if (h == (uv_handle_t *)&t->poll && t->fd >= 0) {
    close(t->fd); /* only once libuv no longer watches it */
    t->fd = -1;
  }
  if (--t->open_handles == 0)
    tpl_unlink_free(t);
}

/* tpl_retire: t serves no more requests: stop reading, and kill the
 * process (its exit, seen by on_tpl_exit, ends its workers). */
static void tpl_retire(pp__tpl *t) {
  pp_engine *e = t->e;
  if (e->tpl == t)
    set_current(e, NULL);
  if (t->polling) {
    t->polling = 0;
    uv_close((uv_handle_t *)&t->poll, on_tpl_closed);
  }
  if (t->alive)
    uv_process_kill(&t->proc, SIGKILL);
}

/* handle_msg: act on one control message (and the descriptor that came
 * with it, which this takes). 0, or PP_EPROTO for a message the template
 * may not send. */
static int handle_msg(pp__tpl *t, const uint8_t *buf, size_t n, int fd) {
  pp_engine *e = t->e;
  pp_tpl_msg m;
  int rc = pp_tpl_decode(buf, n, &m);
  if (rc == PP_OK && m.type == PP_TPL_FORKED && (m.pid != 0 || fd < 0)) {
    e->tpl_ops->forked(e, t->gen, m.id, (int)m.pid, fd, m.err);
    return PP_OK;
  }
  if (fd >= 0)
    close(fd);
  if (rc == PP_OK && m.type == PP_TPL_EXITED && m.pid != 0) {
    e->tpl_ops->exited(e, t->gen, (int)m.pid, m.status, m.sig);
    return PP_OK;
  }
  return PP_EPROTO;
}

/* tpl_read: read every message waiting on the control socket. Returns 0
 * when it would block, or -1 at end of file, on a read error or on a
 * message that breaks the protocol (then t must be retired). */
static int tpl_read(pp__tpl *t) {
  for (int rounds = 0; rounds < 100000 && t->fd >= 0; rounds++) {
    uint8_t buf[PP_TPL_MSG_MAX];
    int fds[PP_FDPASS_MAX], nfds, trunc;
    ssize_t n = pp_fd_recv(t->fd, buf, sizeof buf, MSG_DONTWAIT, fds, &nfds,
                           &trunc);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return 0;
    if (n <= 0)
      return -1;
    int bad = nfds > 1 || trunc;
    if (bad) {
      for (int i = 0; i < nfds; i++)
        close(fds[i]);
    } else {
      bad = handle_msg(t, buf, (size_t)n, nfds ? fds[0] : -1) != PP_OK;
    }
    if (bad) {
      pp__log(t->e, PP_LOG_ERROR, "fork server pid %d sent a malformed "
              "message; killing it", t->pid);
      return -1;
    }
  }
  return 0;
}

/* on_tpl_poll: the control socket is readable (or closed). */
static void on_tpl_poll(uv_poll_t *h, int status, int events) {
  pp__tpl *t = h->data;
  PP_UNUSED(events);
  if (status < 0 || tpl_read(t) != 0)
    tpl_retire(t);
}

/* on_tpl_exit: the template ended. Read what it said last (an EXITED it
 * sent before dying is not lost), then tell the pool: every worker it had
 * not reported ended with it (PR_SET_PDEATHSIG kills them). */
static void on_tpl_exit(uv_process_t *p, int64_t status, int sig) {
  pp__tpl *t = p->data;
  pp_engine *e = t->e;
  t->alive = 0;
  if (t->polling && !e->stopping)
    tpl_read(t);
  tpl_retire(t);
  if (!e->stopping)
    pp__log(e, sig ? PP_LOG_WARNING : PP_LOG_INFO,
            "fork server pid %d ended with %s %d", t->pid,
            sig ? "signal" : "exit status", sig ? sig : (int)status);
  e->tpl_ops->lost(e, t->gen, status, sig);
  uv_close((uv_handle_t *)&t->proc, on_tpl_closed);
}

/* tpl_start: spawn a template with its control socket on fd 3. Returns it
 * (it is e->tpl then), or NULL after logging why. */
static pp__tpl *tpl_start(pp_engine *e) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    pp__log(e, PP_LOG_ERROR, "cannot start the fork server: socketpair: %s",
            strerror(errno));
    return NULL;
  }
  pp__tpl *t = calloc(1, sizeof *t);
  if (t == NULL) {
    close(sv[0]);
    close(sv[1]);
    return NULL;
  }
  uv_process_options_t o;
  uv_stdio_container_t io[4];
  memset(&o, 0, sizeof o);
  memset(io, 0, sizeof io);
  io[0].flags = UV_IGNORE;
  io[1].flags = UV_INHERIT_FD;
  io[1].data.fd = 1;
  io[2].flags = UV_INHERIT_FD;
  io[2].data.fd = 2;
  io[3].flags = UV_INHERIT_FD;
  io[3].data.fd = sv[1];
  o.file = e->tpl_argv[0];
  o.args = e->tpl_argv;
  o.env = e->env;
  o.cwd = e->cwd;
  o.exit_cb = on_tpl_exit;
  o.stdio = io;
  o.stdio_count = 4;
  t->e = e;
  t->fd = sv[0];
  t->proc.data = t;
  t->poll.data = t;
  int rc = uv_spawn(e->loop, &t->proc, &o);
  close(sv[1]);
  t->open_handles = 1;
  t->next = e->tpls;
  e->tpls = t;
  if (rc != 0) {
    pp__log(e, PP_LOG_ERROR, "cannot start the fork server '%s': %s",
            e->tpl_argv[0], uv_strerror(rc));
    /* the handle is initialised even so: closed like any other */
    uv_close((uv_handle_t *)&t->proc, on_tpl_closed);
    return NULL;
  }
  t->pid = t->proc.pid;
  t->alive = 1;
  t->gen = ++e->tpl_gen;
  set_current(e, t);
  fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
  if (uv_poll_init(e->loop, &t->poll, sv[0]) == 0) {
    t->polling = 1;
    t->open_handles++;
    uv_poll_start(&t->poll, UV_READABLE | UV_DISCONNECT, on_tpl_poll);
  } else {
    tpl_retire(t); /* cannot hear it: useless */
    return NULL;
  }
  pp__log(e, PP_LOG_DEBUG, "started the fork server, pid %d", t->pid);
  return t;
}

/* send_fork: one FORK packet with the descriptors attached, without
 * blocking. 0 or an errno value. */
static int send_fork(pp__tpl *t, uint64_t tag, int sock, int status) {
  uint8_t buf[PP_TPL_MSG_MAX];
  pp_tpl_msg m = {PP_TPL_FORK, status >= 0 ? PP_TPL_FORKF_STATUS : 0, tag,
                  0, 0, 0, 0};
  struct iovec iov = {buf, pp_tpl_encode(buf, &m)};
  int fds[2] = {sock, status};
  int nfds = status >= 0 ? 2 : 1;
  union {
    struct cmsghdr h;
    char b[CMSG_SPACE(2 * sizeof(int))];
  } cbuf;
  memset(&cbuf, 0, sizeof cbuf);
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf.b;
  mh.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
  struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
  memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
  ssize_t n;
  do
    n = sendmsg(t->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n == (ssize_t)iov.iov_len)
    return 0;
  return n < 0 ? errno : EIO;
}

int pp__tpl_fork(pp_engine *e, uint64_t tag, int sock, int status,
                 uint64_t *gen) {
  for (int tries = 0; tries < 2; tries++) {
    pp__tpl *t = e->tpl ? e->tpl : tpl_start(e);
    if (t == NULL)
      return PP_ESPAWN;
    int err = send_fork(t, tag, sock, status);
    if (err == 0) {
      *gen = t->gen;
      return PP_OK;
    }
    if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
      /* requests are piling up (a template still booting, a burst of
       * set_ncpus): this worker is retried after the pool's backoff */
      pp__log(e, PP_LOG_WARNING, "the fork server pid %d has too many "
              "requests waiting; starting a worker later", t->pid);
      return PP_ESPAWN;
    }
    pp__log(e, PP_LOG_WARNING, "cannot send a fork request to the fork "
            "server pid %d: %s%s", t->pid, strerror(err),
            tries == 0 ? "; starting another" : "");
    tpl_retire(t); /* gone: a new one takes the request */
  }
  return PP_ESPAWN;
}

void pp__tpl_stop(pp_engine *e) {
  for (pp__tpl *t = e->tpls; t; t = t->next)
    tpl_retire(t);
}

void pp__tpl_free(pp_engine *e) {
  while (e->tpls) { /* all handles are closed once the loop ended */
    pp__tpl *t = e->tpls;
    e->tpls = t->next;
    if (t->fd >= 0)
      close(t->fd);
    free(t);
  }
  e->tpl = NULL;
}
