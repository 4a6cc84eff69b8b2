/* tls_shim.c — a test tool: one TLS connection to a ppserver, keyed as the
 * real client keys it, relaying plaintext between that TLS session and
 * its standard input (fd 0, a socket: one end of a socketpair made by
 * tests/py/ppwire.py), so a Python client of pp's frames can speak them
 * inside TLS (docs/protocol.md 6.6; Python's ssl module cannot do TLS 1.3
 * with an external PSK).
 *
 *   tls_shim [--source ADDR] [--rcvbuf BYTES] [--cert F --key F --ca F]
 *            [--flip-at N | --replay-at N] [--max-seconds S] HOST PORT
 *   tls_shim --server-fd FD [--cert F --key F --ca F] [--max-seconds S]
 *
 * The second form plays the node's side of TLS (a fake node of a test):
 * FD is a TCP connection it accepted, inherited by the shim.
 *
 * The secret comes from the environment, hex-encoded, in PP_SHIM_SECRET.
 * PSK mode stretches it (pp_secret_stretch) and keys TLS from the result
 * exactly as src/core/engine.c does; certificate mode uses the three files
 * (and names HOST for the node's certificate, as node.c does). --source
 * binds the TCP connection to a local address first (a test's "other
 * host"), --rcvbuf sets SO_RCVBUF before connecting. --flip-at N flips one
 * bit of the ciphertext of the TLS record that carries plaintext byte N
 * (counted from the first byte relayed to the node); --replay-at N sends
 * that record twice. Both stand for an attacker on the path.
 *
 * Plaintext from fd 0 written before the TLS handshake is done waits for
 * it. Each direction is bounded (reading pauses while 1 MiB waits to be
 * written on the other side), so back-pressure reaches both ends. Exit
 * status: 0 after either side closed cleanly (the other side is closed
 * too); 2 bad usage or set-up; 3 the TLS handshake failed on the secret
 * (PP_EAUTH); 4 any other TLS failure; 5 a socket error; 6 the time bound
 * (--max-seconds, default 600). A failure is said on stderr. Single
 * threaded; poll(2) loop. */
#include "auth.h"
#include "buf.h"
#include "pp_common.h"
#include "stretch.h"
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BACKLOG (1u << 20) /* bytes waiting in one direction before reading pauses */
#define APP_FD 0

static int die(int code, const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "tls_shim: ");
  fprintf(stderr, fmt, a, b);
  fputc('\n', stderr);
  return code;
}

/* unhex: decode a hex string into out (cap bytes). Returns the length, or
 * -1 for bad hex, an odd length, or too long. */
static long unhex(const char *s, uint8_t *out, size_t cap) {
  size_t n = strlen(s);
  if (n % 2 != 0 || n / 2 > cap)
    return -1;
  for (size_t i = 0; i < n / 2; i++) {
    unsigned v;
    if (sscanf(s + 2 * i, "%2x", &v) != 1)
      return -1;
    out[i] = (uint8_t)v;
  }
  return (long)(n / 2);
}

/* dial: a connected TCP socket to host:port, bound to source first when
 * given, with SO_RCVBUF rcvbuf (> 0) set before connecting and TCP_NODELAY
 * after. Returns the descriptor or -1 (message on stderr). */
static int dial(const char *host, const char *port, const char *source,
                int rcvbuf) {
  struct addrinfo hints = {0}, *res = NULL, *src = NULL;
  hints.ai_socktype = SOCK_STREAM;
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0) {
    fprintf(stderr, "tls_shim: %s:%s: %s\n", host, port, gai_strerror(rc));
    return -1;
  }
  if (source != NULL) {
    hints.ai_family = res->ai_family;
    rc = getaddrinfo(source, "0", &hints, &src);
    if (rc != 0) {
      fprintf(stderr, "tls_shim: %s: %s\n", source, gai_strerror(rc));
      freeaddrinfo(res);
      return -1;
    }
  }
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd < 0 ||
      (rcvbuf > 0 &&
       setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) != 0) ||
      (src != NULL && bind(fd, src->ai_addr, src->ai_addrlen) != 0) ||
      connect(fd, res->ai_addr, res->ai_addrlen) != 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    fprintf(stderr, "tls_shim: cannot connect to %s:%s: %s\n", host, port,
            strerror(errno));
    if (fd >= 0)
      close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (src != NULL)
    freeaddrinfo(src);
  return fd;
}

/* flush: write what b holds to fd; 0 when all of it went, 1 when the
 * socket would block, -1 on an error. */
static int flush(int fd, pp_buf *b) {
  while (pp_buf_avail(b) > 0) {
    ssize_t k = send(fd, b->data + b->off, pp_buf_avail(b), MSG_NOSIGNAL);
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return 1;
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return -1;
    pp_buf_consume(b, (size_t)k);
  }
  return 0;
}

/* drain_blocking: what is left in b to fd, waiting at most 2 s in all
 * (a best effort before exiting). */
static void drain_blocking(int fd, pp_buf *b) {
  for (int i = 0; i < 200 && flush(fd, b) == 1; i++) {
    struct pollfd p = {fd, POLLOUT, 0};
    poll(&p, 1, 10);
  }
}

typedef struct shim {
  pp_tls *tls;
  int net;
  pp_buf to_net, to_app, early; /* early: plaintext before the handshake */
  long long sent;               /* plaintext bytes handed to TLS so far */
  long long tamper_at;          /* -1: none */
  int tamper_replay;            /* 0: flip a bit, 1: send twice */
} shim;

/* seal: plaintext p[0..n) into records on s->to_net, applying the tamper
 * option to the record that carries byte tamper_at. Returns the pp code. */
static int seal(shim *s, const uint8_t *p, size_t n) {
  long long at = s->tamper_at;
  if (at >= s->sent && at < s->sent + (long long)n) {
    size_t cut = (size_t)(at - s->sent);
    int rc = cut ? pp_tls_write(s->tls, p, cut, &s->to_net) : PP_OK;
    if (rc != PP_OK)
      return rc;
    /* the record carrying byte `at` starts `before` bytes into what waits
     * (offsets from off: writing and reserving may compact the buffer) */
    size_t before = pp_buf_avail(&s->to_net);
    size_t len = n - cut < 16384 ? n - cut : 16384; /* one record */
    rc = pp_tls_write(s->tls, p + cut, len, &s->to_net);
    if (rc != PP_OK)
      return rc;
    size_t rlen = pp_buf_avail(&s->to_net) - before;
    if (s->tamper_replay) {
      if (pp_buf_reserve(&s->to_net, rlen) != PP_OK)
        return PP_ENOMEM;
      memcpy(s->to_net.data + s->to_net.len,
             s->to_net.data + s->to_net.off + before, rlen);
      s->to_net.len += rlen;
    } else {
      s->to_net.data[s->to_net.off + before + 5] ^= 0x01; /* ciphertext */
    }
    fprintf(stderr, "tls_shim: %s the record carrying byte %lld\n",
            s->tamper_replay ? "replayed" : "flipped a bit in", at);
    s->tamper_at = -1;
    s->sent += (long long)(cut + len);
    return seal(s, p + cut + len, n - cut - len);
  }
  s->sent += (long long)n;
  return n ? pp_tls_write(s->tls, p, n, &s->to_net) : PP_OK;
}

/* tls_failed: the exit status for a pp_tls failure code rc (said on stderr). */
static int tls_failed(shim *s, int rc) {
  if (rc == PP_EPEER)
    fprintf(stderr, "tls_shim: the node closed the TLS session\n");
  else
    fprintf(stderr, "tls_shim: TLS failed: %s (%s)\n", pp_strerror(rc),
            pp_tls_error(s->tls));
  return rc == PP_EAUTH ? 3 : rc == PP_EPEER ? 0 : 4;
}

/* relay: the poll loop until one side closes, fails or time runs out.
 * Returns the exit status. */
static int relay(shim *s, int max_seconds) {
  uint8_t buf[65536];
  int app_eof = 0;
  struct timespec t0, now;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - t0.tv_sec > max_seconds)
      return die(6, "%s%s", "time bound reached, closing", "");
    struct pollfd p[2] = {{s->net, 0, 0}, {APP_FD, 0, 0}};
    if (pp_buf_avail(&s->to_app) < BACKLOG)
      p[0].events |= POLLIN;
    if (pp_buf_avail(&s->to_net) > 0)
      p[0].events |= POLLOUT;
    if (!app_eof && pp_buf_avail(&s->to_net) < BACKLOG)
      p[1].events |= POLLIN;
    if (pp_buf_avail(&s->to_app) > 0)
      p[1].events |= POLLOUT;
    if (poll(p, 2, 1000) < 0) {
      if (errno == EINTR)
        continue;
      return die(5, "poll: %s%s", strerror(errno), "");
    }
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t k = recv(s->net, buf, sizeof buf, 0);
      if (k < 0 && errno != EAGAIN && errno != EINTR) {
        drain_blocking(APP_FD, &s->to_app);
        return die(0, "the node reset the connection (%s)%s", strerror(errno), "");
      }
      if (k == 0) { /* the node closed: hand over what it sent, then close */
        drain_blocking(APP_FD, &s->to_app);
        return 0;
      }
      if (k > 0) {
        int was_done = pp_tls_done(s->tls);
        int rc = pp_tls_feed(s->tls, buf, (size_t)k, &s->to_app, &s->to_net);
        if (rc != PP_OK) {
          drain_blocking(s->net, &s->to_net); /* the alert */
          drain_blocking(APP_FD, &s->to_app);
          return tls_failed(s, rc);
        }
        if (!was_done && pp_tls_done(s->tls)) {
          rc = seal(s, s->early.data + s->early.off, pp_buf_avail(&s->early));
          pp_buf_free(&s->early);
          if (rc != PP_OK)
            return tls_failed(s, rc);
        }
      }
    }
    if (p[1].revents & (POLLIN | POLLHUP | POLLERR) && !app_eof) {
      ssize_t k = recv(APP_FD, buf, sizeof buf, 0);
      if (k < 0 && errno != EAGAIN && errno != EINTR)
        return die(5, "reading the client: %s%s", strerror(errno), "");
      if (k == 0) { /* the client closed: so does the connection */
        app_eof = 1;
        drain_blocking(s->net, &s->to_net);
        return 0;
      }
      if (k > 0) {
        int rc = pp_tls_done(s->tls)
                     ? seal(s, buf, (size_t)k)
                     : pp_buf_append(&s->early, buf, (size_t)k);
        if (rc != PP_OK)
          return tls_failed(s, rc);
      }
    }
    if (flush(s->net, &s->to_net) < 0) {
      drain_blocking(APP_FD, &s->to_app);
      return die(0, "the node closed the connection (%s)%s", strerror(errno), "");
    }
    if (flush(APP_FD, &s->to_app) < 0)
      return die(0, "the client closed (%s)%s", strerror(errno), "");
  }
}

int main(int argc, char **argv) {
  const char *source = NULL, *cert = NULL, *key = NULL, *ca = NULL;
  int rcvbuf = 0, max_seconds = 600, server_fd = -1;
  shim s;
  memset(&s, 0, sizeof s);
  s.tamper_at = -1;
  int i = 1;
  for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
    const char *o = argv[i], *v = argv[i + 1];
    if (strcmp(o, "--source") == 0)
      source = v;
    else if (strcmp(o, "--rcvbuf") == 0)
      rcvbuf = atoi(v);
    else if (strcmp(o, "--cert") == 0)
      cert = v;
    else if (strcmp(o, "--key") == 0)
      key = v;
    else if (strcmp(o, "--ca") == 0)
      ca = v;
    else if (strcmp(o, "--flip-at") == 0 || strcmp(o, "--replay-at") == 0) {
      s.tamper_at = atoll(v);
      s.tamper_replay = o[2] == 'r';
    } else if (strcmp(o, "--max-seconds") == 0)
      max_seconds = atoi(v);
    else if (strcmp(o, "--server-fd") == 0)
      server_fd = atoi(v);
    else
      return die(2, "unknown option %s%s", o, "");
  }
  if (argc - i != (server_fd >= 0 ? 0 : 2) || server_fd == APP_FD)
    return die(2, "%s%s", "usage: tls_shim [options] HOST PORT, or tls_shim"
               " --server-fd FD [options] (see tls_shim.c)", "");
  const char *host = server_fd >= 0 ? NULL : argv[i];
  const char *port = server_fd >= 0 ? NULL : argv[i + 1];
  int role = server_fd >= 0 ? PP_TLS_SERVER : PP_TLS_CLIENT;
  signal(SIGPIPE, SIG_IGN);

  uint8_t secret[PP_SECRET_MAX], stretched[PP_STRETCH_LEN];
  const char *hex = getenv("PP_SHIM_SECRET");
  long slen = hex ? unhex(hex, secret, sizeof secret) : -1;
  if (slen <= 0)
    return die(2, "%s%s", "PP_SHIM_SECRET must hold the secret in hex", "");
  pp_tls_opts to = {secret, (size_t)slen, cert, key, ca};
  if (cert == NULL && key == NULL && ca == NULL) {
    /* PSK mode: keyed from the stretched secret, as the engine does */
    if (pp_secret_stretch(secret, (size_t)slen, stretched) != PP_OK)
      return die(2, "%s%s", "cannot stretch the secret", "");
    to.secret = stretched;
    to.secret_len = sizeof stretched;
  }
  char err[256] = "";
  pp_tls_ctx *ctx = NULL;
  int rc = pp_tls_ctx_new(role, &to, &ctx, err, sizeof err);
  pp_auth_wipe(secret, sizeof secret);
  pp_auth_wipe(stretched, sizeof stretched);
  if (rc != PP_OK)
    return die(2, "cannot set up TLS: %s%s", err[0] ? err : pp_strerror(rc), "");
  s.net = server_fd >= 0 ? server_fd : dial(host, port, source, rcvbuf);
  if (s.net < 0) {
    pp_tls_ctx_free(ctx);
    return 5;
  }
  if (fcntl(s.net, F_SETFL, O_NONBLOCK) != 0 ||
      fcntl(APP_FD, F_SETFL, O_NONBLOCK) != 0 ||
      pp_tls_new(ctx, host, &s.tls) != PP_OK ||
      (role == PP_TLS_CLIENT && pp_tls_start(s.tls, &s.to_net) != PP_OK)) {
    pp_tls_ctx_free(ctx);
    return die(2, "%s%s", "cannot start TLS", "");
  }
  int status = relay(&s, max_seconds);
  close(s.net);
  pp_tls_free(s.tls);
  pp_tls_ctx_free(ctx);
  pp_buf_free(&s.to_net);
  pp_buf_free(&s.to_app);
  pp_buf_free(&s.early);
  return status;
}
