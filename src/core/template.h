/* template.h — the fork server: one pre-started, clean worker process (the
 * "template") from which the engine's local workers are forked, and the
 * control protocol between the engine and it (docs/protocol.md 4.3).
 *
 * The control socket is a Unix SOCK_SEQPACKET socket on the template's
 * file descriptor 3; every message is one packet: a 24-byte frame header
 * (frame.h layout: magic, version 1, type, flags, length, attempt 0, id)
 * and its payload, with descriptors attached as SCM_RIGHTS.
 *
 *   FORK    engine -> template  id = tag (!= 0), no payload; attached: the
 *                               worker's socket, then its status page when
 *                               flags has PP_TPL_FORKF_STATUS
 *   FORKED  template -> engine  id = the FORK's tag; u32 pid (0: failed),
 *                               i32 errno; a pidfd of the child attached
 *                               when the kernel has them
 *   EXITED  template -> engine  u32 pid, i32 exit status, i32 signal
 *
 * The template's side (pp_tpl_serve) is pure: no loop, no Python. The
 * extension (src/ext/forkserver.c) runs it with CPython's fork hooks, the
 * C tests' fake worker with none. The engine's side is forksrv.c. */
#ifndef PP_TEMPLATE_H
#define PP_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#define PP_TPL_FD 3 /* the template's control socket */

enum {
  PP_TPL_FORK = 32,
  PP_TPL_FORKED = 33,
  PP_TPL_EXITED = 34
};
#define PP_TPL_FORKF_STATUS 0x1u /* FORK: a status page is attached */
#define PP_TPL_MSG_MAX 64u       /* the largest control message */

/* A decoded control message. */
typedef struct pp_tpl_msg {
  unsigned type;
  uint32_t flags;
  uint64_t id;
  uint32_t pid;   /* FORKED, EXITED */
  int32_t err;    /* FORKED: errno of a failed fork */
  int32_t status; /* EXITED: exit status (0 when killed) */
  int32_t sig;    /* EXITED: the signal that killed it, or 0 */
} pp_tpl_msg;

/* pp_tpl_encode: write m as one control message at out (at most
 * PP_TPL_MSG_MAX bytes). Returns its length. Pure. */
size_t pp_tpl_encode(uint8_t *out, const pp_tpl_msg *m);

/* pp_tpl_decode: parse one packet of len bytes into *m: magic, version, a
 * known type and exactly its payload length, attempt 0. Returns 0 or
 * PP_EPROTO. Pure. */
int pp_tpl_decode(const uint8_t *in, size_t len, pp_tpl_msg *m);

/* How long the template waits, after its first fork, for another request
 * before it calls the idle hook. */
#define PP_TPL_IDLE_MS 20

/* Hooks around each fork (CPython's PyOS_BeforeFork and friends), and
 * `idle`: called once, the first time no request came for PP_TPL_IDLE_MS
 * after at least one fork, so the template can load more for the workers
 * it forks later (their first jobs then find it loaded) without delaying
 * the first ones. Any may be NULL. */
typedef struct pp_tpl_hooks {
  void (*before)(void *ctx);
  void (*parent)(void *ctx);
  void (*child)(void *ctx);
  void (*idle)(void *ctx);
  void *ctx;
} pp_tpl_hooks;

/* pp_tpl_serve: the template's loop: fork a child for every FORK on ctl,
 * answer FORKED, and report every child's end with EXITED. SIGINT is
 * ignored (the terminal's Ctrl-C is the client's) and SIGCHLD is taken
 * through a signalfd. Returns 0 in a forked child, which is ready to be a
 * worker: fd 3 its socket, fd 4 its status page (or closed), the control
 * socket and the template's signalfd closed, the signal mask as before, and the kernel asked to kill it when the template dies
 * (PR_SET_PDEATHSIG). Returns 1 in the template when ctl reached end of
 * file (the engine is gone: the caller exits, and PR_SET_PDEATHSIG ends
 * the children), or a negative error when it cannot serve at all (then
 * nothing was forked). Main thread of a single-threaded process. */
int pp_tpl_serve(int ctl, const pp_tpl_hooks *h);

#endif
