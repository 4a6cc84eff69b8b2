/* fdpass.c — one message with descriptors over a Unix socket (fdpass.h). */
#include "fdpass.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

ssize_t pp_fd_send(int sock, const void *p, size_t n, int fd) {
  struct iovec iov = {(void *)p, n};
  union {
    struct cmsghdr h;
    char b[CMSG_SPACE(sizeof(int))];
  } cbuf;
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  memset(&cbuf, 0, sizeof cbuf);
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  if (fd >= 0) {
    mh.msg_control = cbuf.b;
    mh.msg_controllen = sizeof cbuf.b;
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  ssize_t r;
  do
    r = sendmsg(sock, &mh, MSG_NOSIGNAL);
  while (r < 0 && errno == EINTR);
  return r;
}

ssize_t pp_fd_recv(int sock, void *p, size_t n, int flags,
                   int fds[PP_FDPASS_MAX], int *nfds, int *truncated) {
  union {
    struct cmsghdr h;
    char b[CMSG_SPACE(PP_FDPASS_MAX * sizeof(int))];
  } cbuf;
  struct iovec iov = {p, n};
  struct msghdr mh;
  ssize_t r;
  *nfds = 0;
  *truncated = 0;
  do {
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.b;
    mh.msg_controllen = sizeof cbuf.b;
    r = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | flags);
  } while (r < 0 && errno == EINTR);
  if (r <= 0)
    return r;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < k && *nfds < PP_FDPASS_MAX; i++)
        memcpy(&fds[(*nfds)++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
  *truncated = (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
  return r;
}
