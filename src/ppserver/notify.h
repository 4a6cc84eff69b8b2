/* notify.h — the service manager's readiness protocol (sd_notify(3)), for
 * ppserver under systemd with Type=notify: one datagram per state change
 * to the AF_UNIX socket named by $NOTIFY_SOCKET. Written here, without
 * libsystemd, so ppserver has no dependency beyond libuv and libcrypto.
 * Main thread; no state kept between calls. */
#ifndef PPSRV_NOTIFY_H
#define PPSRV_NOTIFY_H

/* ppsrv_notify: send state (e.g. "READY=1\nSTATUS=listening on ...") to
 * $NOTIFY_SOCKET: a path, or "@name" for an abstract socket. Returns 1 when
 * sent, 0 when NOTIFY_SOCKET is unset (not under a service manager), -1
 * when it is set but the datagram could not be sent (logged as a WARNING:
 * the service manager will time the start out and say so too). */
int ppsrv_notify(const char *state);

#endif
