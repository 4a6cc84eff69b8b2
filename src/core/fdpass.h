/* fdpass.h — one message on a Unix socket with file descriptors attached
 * (SCM_RIGHTS): the arena handed to a worker (pool.c, protocol 4.2) and the
 * fork server's control messages (template.c, forksrv.c, protocol 4.3). */
#ifndef PP_FDPASS_H
#define PP_FDPASS_H

#include <stddef.h>
#include <sys/types.h>

#define PP_FDPASS_MAX 4 /* descriptors taken from one message at most */

/* pp_fd_send: send the n bytes at p as one message, with fd attached when
 * fd >= 0; blocking, MSG_NOSIGNAL, EINTR retried. Returns what sendmsg
 * returned (bytes sent, or -1 with errno). Any thread. */
ssize_t pp_fd_send(int sock, const void *p, size_t n, int fd);

/* pp_fd_recv: receive one message of at most n bytes into p, with flags
 * (e.g. MSG_DONTWAIT; MSG_CMSG_CLOEXEC is always added), EINTR retried.
 * The descriptors that came with it (at most PP_FDPASS_MAX) go to fds,
 * their count to *nfds; the caller owns them. *truncated is set when the
 * message or its descriptors did not fit (the caller treats that as
 * malformed). Returns what recvmsg returned; on -1 or 0 no descriptor is
 * returned. Any thread. */
ssize_t pp_fd_recv(int sock, void *p, size_t n, int flags,
                   int fds[PP_FDPASS_MAX], int *nfds, int *truncated);

#endif
