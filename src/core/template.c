/* template.c — the fork server's own side (template.h): the control
 * messages' codec, and the loop of the template process that forks the
 * engine's workers and reports how each one ended. Pure: no libuv, no
 * Python; it runs in the template process, never in the engine. Linux only
 * (signalfd, pidfd, PR_SET_PDEATHSIG); elsewhere pp_tpl_serve refuses and
 * the engine starts its workers as fresh processes. */
#include "template.h"

#include "fdpass.h"
#include "frame.h"
#include "pp_common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#ifdef __linux__
#include <poll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#endif

/* payload_len: the exact payload length of a control message type, or -1
 * for a type that is not one. */
static int payload_len(unsigned type) {
  switch (type) {
  case PP_TPL_FORK: return 0;
  case PP_TPL_FORKED: return 8;
  case PP_TPL_EXITED: return 12;
  default: return -1;
  }
}

size_t pp_tpl_encode(uint8_t *out, const pp_tpl_msg *m) {
  int n = payload_len(m->type);
  if (n < 0)
    n = 0;
  pp_frame_hdr h = {PP_PROTO_VERSION, (uint8_t)m->type, m->flags,
                    (uint32_t)n, 0, m->id};
  pp_frame_encode_hdr(out, &h);
  uint8_t *p = out + PP_FRAME_HDR;
  if (m->type == PP_TPL_FORKED) {
    pp_put_u32(p, m->pid);
    pp_put_u32(p + 4, (uint32_t)m->err);
  } else if (m->type == PP_TPL_EXITED) {
    pp_put_u32(p, m->pid);
    pp_put_u32(p + 4, (uint32_t)m->status);
    pp_put_u32(p + 8, (uint32_t)m->sig);
  }
  return PP_FRAME_HDR + (size_t)n;
}

int pp_tpl_decode(const uint8_t *in, size_t len, pp_tpl_msg *m) {
  memset(m, 0, sizeof *m);
  if (len < PP_FRAME_HDR || in[0] != 0x70 || in[1] != 0x70 ||
      in[2] != PP_PROTO_VERSION)
    return PP_EPROTO;
  int n = payload_len(in[3]);
  if (n < 0 || pp_get_u32(in + 8) != (uint32_t)n ||
      len != PP_FRAME_HDR + (size_t)n || pp_get_u32(in + 12) != 0)
    return PP_EPROTO;
  m->type = in[3];
  m->flags = pp_get_u32(in + 4);
  m->id = pp_get_u64(in + 16);
  const uint8_t *p = in + PP_FRAME_HDR;
  if (m->type == PP_TPL_FORK) {
    if ((m->flags & ~PP_TPL_FORKF_STATUS) != 0 || m->id == 0)
      return PP_EPROTO;
  } else if (m->flags != 0) {
    return PP_EPROTO;
  }
  if (m->type == PP_TPL_FORKED) {
    m->pid = pp_get_u32(p);
    m->err = (int32_t)pp_get_u32(p + 4);
  } else if (m->type == PP_TPL_EXITED) {
    m->pid = pp_get_u32(p);
    m->status = (int32_t)pp_get_u32(p + 4);
    m->sig = (int32_t)pp_get_u32(p + 8);
  }
  return PP_OK;
}

#ifdef __linux__

/* send_msg: one control message, with fd attached when >= 0; blocking (the
 * engine always reads), EINTR retried. 0 or -1 (the engine is gone). */
static int send_msg(int ctl, const pp_tpl_msg *m, int fd) {
  uint8_t buf[PP_TPL_MSG_MAX];
  size_t len = pp_tpl_encode(buf, m);
  return pp_fd_send(ctl, buf, len, fd) == (ssize_t)len ? 0 : -1;
}

/* reap: report every child that has ended. 0 or -1 (the engine is gone). */
static int reap(int ctl) {
  for (int i = 0; i < 100000; i++) {
    int st = 0;
    pid_t pid = waitpid(-1, &st, WNOHANG);
    if (pid < 0 && errno == EINTR)
      continue;
    if (pid <= 0)
      return 0; /* none left, or none ended */
    pp_tpl_msg m = {PP_TPL_EXITED, 0, 0, (uint32_t)pid, 0, 0, 0};
    if (WIFSIGNALED(st))
      m.sig = WTERMSIG(st);
    else
      m.status = WIFEXITED(st) ? WEXITSTATUS(st) : 0;
    if (send_msg(ctl, &m, -1) != 0)
      return -1;
  }
  return 0;
}

/* child_setup: in a just forked child: the worker's descriptors on 3 and
 * 4, everything of the template's closed, the old signal mask, and death
 * with the template. Async-signal-safe calls only until it returns. */
static void child_setup(int ctl, int sfd, int sock, int status,
                        const sigset_t *mask, pid_t tpl) {
  /* first out of the way of 3 and 4, which the copies then take */
  int s = fcntl(sock, F_DUPFD, 10);
  int t = status >= 0 ? fcntl(status, F_DUPFD, 10) : -1;
  if (s < 0 || (status >= 0 && t < 0))
    _exit(70);
  close(sock);
  if (status >= 0)
    close(status);
  close(sfd);
  if (dup2(s, PP_TPL_FD) < 0) /* this also closes the control socket */
    _exit(70);
  close(s);
  if (t >= 0) {
    if (dup2(t, 4) < 0)
      _exit(70);
    close(t);
  } else {
    close(4);
  }
  if (ctl != PP_TPL_FD && ctl != 4)
    close(ctl);
  signal(SIGCHLD, SIG_DFL);
  sigprocmask(SIG_SETMASK, mask, NULL);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != tpl)
    _exit(0); /* the template is already gone */
}

/* take_fork: receive one packet; for a valid FORK, fork. Returns 0 in the
 * forked child, 1 to go on serving, 2 at the engine's end of file, -1 on
 * an unrecoverable error. */
static int take_fork(int ctl, int sfd, const pp_tpl_hooks *h,
                     const sigset_t *mask) {
  uint8_t buf[PP_TPL_MSG_MAX];
  int fds[PP_FDPASS_MAX], nfds, trunc;
  ssize_t n = pp_fd_recv(ctl, buf, sizeof buf, 0, fds, &nfds, &trunc);
  if (n < 0 && errno == EAGAIN)
    return 1;
  if (n <= 0)
    return 2;
  pp_tpl_msg m;
  int want = -1;
  if (pp_tpl_decode(buf, (size_t)n, &m) == PP_OK && m.type == PP_TPL_FORK &&
      !trunc)
    want = (m.flags & PP_TPL_FORKF_STATUS) ? 2 : 1;
  if (want != nfds) {
    /* not a FORK we can serve: the engine broke the protocol */
    for (int i = 0; i < nfds; i++)
      close(fds[i]);
    return -1;
  }
  pp_tpl_msg r = {PP_TPL_FORKED, 0, m.id, 0, 0, 0, 0};
  pid_t tpl = getpid();
  if (h && h->before)
    h->before(h->ctx);
  pid_t pid = fork();
  if (pid == 0) {
    child_setup(ctl, sfd, fds[0], nfds > 1 ? fds[1] : -1, mask, tpl);
    if (h && h->child)
      h->child(h->ctx);
    return 0;
  }
  int err = errno;
  if (h && h->parent)
    h->parent(h->ctx);
  for (int i = 0; i < nfds; i++)
    close(fds[i]);
  int pidfd = -1;
  if (pid < 0) {
    r.err = err;
  } else {
    r.pid = (uint32_t)pid;
#ifdef SYS_pidfd_open
    /* the child cannot be reaped before our next waitpid, so this pidfd
     * names it and no other process */
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
#endif
  }
  int rc = send_msg(ctl, &r, pidfd);
  if (pidfd >= 0)
    close(pidfd);
  return rc == 0 ? 1 : 2;
}

int pp_tpl_serve(int ctl, const pp_tpl_hooks *h) {
  sigset_t chld, old;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  signal(SIGINT, SIG_IGN); /* Ctrl-C in the terminal is the client's */
  if (sigprocmask(SIG_BLOCK, &chld, &old) != 0)
    return PP_EIO;
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) {
    sigprocmask(SIG_SETMASK, &old, NULL);
    return PP_EIO;
  }
  int rc = 1, forks = 0;
  int idled = h == NULL || h->idle == NULL; /* the idle hook ran (or none) */
  for (;;) {
    struct pollfd p[2] = {{ctl, POLLIN, 0}, {sfd, POLLIN, 0}};
    int k = poll(p, 2, !idled && forks > 0 ? PP_TPL_IDLE_MS : -1);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0) {
      rc = PP_EIO;
      break;
    }
    if (k == 0) { /* no request for a while after the first forks */
      idled = 1;
      h->idle(h->ctx);
      continue;
    }
    if (p[1].revents) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
        ;
    }
    /* reap before reading requests: an EXITED always follows its FORKED */
    if (reap(ctl) != 0)
      break;
    if (p[0].revents) {
      int t = take_fork(ctl, sfd, h, &old);
      if (t == 0)
        return 0; /* the child: a worker now */
      forks += t == 1;
      if (t == 2)
        break;
      if (t < 0) {
        rc = PP_EPROTO;
        break;
      }
    }
  }
  close(sfd);
  sigprocmask(SIG_SETMASK, &old, NULL);
  return rc;
}

#else /* !__linux__ */

int pp_tpl_serve(int ctl, const pp_tpl_hooks *h) {
  PP_UNUSED(ctl);
  PP_UNUSED(h);
  return PP_EINVAL;
}

#endif
