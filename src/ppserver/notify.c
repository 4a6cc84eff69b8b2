/* notify.c — sd_notify(3)'s datagram to $NOTIFY_SOCKET (see notify.h):
 * READY=1 once ppserver listens and its workers are started, STOPPING=1
 * when it begins to stop. Main thread. */
#include "notify.h"

#include "pp_common.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int ppsrv_notify(const char *state) {
  const char *name = getenv("NOTIFY_SOCKET");
  if (name == NULL || name[0] == '\0')
    return 0;
  struct sockaddr_un sa;
  size_t n = strlen(name);
  /* "@x" is the abstract name "\0x"; otherwise a path (must be absolute) */
  if ((name[0] != '/' && name[0] != '@') || n >= sizeof sa.sun_path) {
    pp_log(PP_LOG_WARNING, "NOTIFY_SOCKET=%s is not a socket path or @name:"
           " not notifying the service manager", name);
    return -1;
  }
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, name, n);
  if (name[0] == '@')
    sa.sun_path[0] = '\0';
  socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    pp_log(PP_LOG_WARNING, "NOTIFY_SOCKET: socket: %s", strerror(errno));
    return -1;
  }
  ssize_t sent;
  do
    sent = sendto(fd, state, strlen(state), MSG_NOSIGNAL,
                  (struct sockaddr *)&sa, salen);
  while (sent < 0 && errno == EINTR);
  int saved = errno;
  close(fd);
  if (sent < 0) {
    pp_log(PP_LOG_WARNING, "cannot notify the service manager at %s: %s",
           name, strerror(saved));
    return -1;
  }
  pp_log(PP_LOG_DEBUG, "told the service manager: %s", state);
  return 1;
}
