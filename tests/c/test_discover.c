/* test_discover.c — the engine's discovery listener (src/core/discover.c and
 * pp__node_discovered in node.c) with real sockets on 127.0.0.1: datagrams
 * under another secret, stale or malformed ones make no node; a signed
 * announcement makes exactly one node record, which connects at once and
 * starts the handshake; a second name makes a second record; a configured
 * node is not duplicated. With two discovery ports of which the first is
 * held by another socket, the engine logs the bind failure, still discovers
 * through the second port and shuts down cleanly (a closing handle's memory
 * is never reused: this used to abort in uv__finish_close). Every wait is
 * bounded; run under make valgrind and SANITIZER=address. */
#include "check.h"

#include "disco.h"
#include "engine.h"
#include "frame.h"
#include "pp_common.h"
#include "stretch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const uint8_t SECRET[] = "engine discovery secret";

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void quiet(void *ctx, int level, const char *msg) {
  PP_UNUSED(ctx);
  PP_UNUSED(level);
  PP_UNUSED(msg);
}

/* A sink that remembers whether a line contained `wanted` (set before the
 * engine starts). Called on the engine thread, read on the main thread. */
static char wanted[96];
static atomic_int seen_wanted;
static void watch(void *ctx, int level, const char *msg) {
  PP_UNUSED(ctx);
  if (level >= PP_LOG_WARNING && strstr(msg, wanted) != NULL)
    atomic_store(&seen_wanted, 1);
}

/* bound_socket: a socket of type bound to 127.0.0.1:0; its port in *port. */
static int bound_socket(int type, uint16_t *port) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  int fd = socket(AF_INET, type, 0);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0)
    return -1;
  *port = ntohs(a.sin_port);
  return fd;
}

static void send_dg(int udp, uint16_t port, const uint8_t *d, size_t n) {
  struct sockaddr_in to;
  memset(&to, 0, sizeof to);
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(sendto(udp, d, n, 0, (struct sockaddr *)&to, sizeof to) == (ssize_t)n);
}

static void announcement(const uint8_t key[32], uint16_t tcp_port,
                         uint64_t time_ms, uint8_t out[PP_DISCO_LEN]) {
  pp_disco_msg m;
  memset(&m, 0, sizeof m);
  m.kind = PP_DISCO_ANNOUNCE;
  m.port = tcp_port;
  m.interval_ms = 200;
  m.nworkers = 1;
  m.time_ms = time_ms;
  CHECK(pp_disco_seal(key, &m, out) == PP_OK);
}

/* readable: poll fd for input up to ms. */
static int readable(int fd, int ms) {
  struct pollfd p = {fd, POLLIN, 0};
  return poll(&p, 1, ms) == 1;
}

static int count_nodes(pp_engine *e, const char *name) {
  pp_node_stats st[8];
  int n = pp_engine_node_stats(e, st, 8), hits = 0;
  if (name == NULL)
    return n;
  for (int i = 0; i < n && i < 8; i++)
    hits += strcmp(st[i].name, name) == 0;
  return hits;
}

static void test_first_port_taken(const uint8_t key[32]);

int main(void) {
  uint8_t key[32], other[32], d[PP_DISCO_LEN];
  uint16_t udp_port, tcp_port, tcp2_port, probe_port;
  char name[64], name2[64], configured[64];
  pp_log_set(quiet, NULL);
  /* the engine signs and checks with keys of the stretched secret */
  uint8_t s_key[PP_STRETCH_LEN], s_other[PP_STRETCH_LEN];
  CHECK(pp_secret_stretch(SECRET, sizeof SECRET - 1, s_key) == PP_OK);
  CHECK(pp_secret_stretch((const uint8_t *)"x", 1, s_other) == PP_OK);
  CHECK(pp_disco_key(s_key, sizeof s_key, key) == PP_OK);
  CHECK(pp_disco_key(s_other, sizeof s_other, other) == PP_OK);

  int probe = bound_socket(SOCK_DGRAM, &probe_port); /* a free UDP port */
  close(probe);
  udp_port = probe_port;
  int lst = bound_socket(SOCK_STREAM, &tcp_port);
  int lst2 = bound_socket(SOCK_STREAM, &tcp2_port);
  int udp = bound_socket(SOCK_DGRAM, &probe_port);
  if (!CHECK(lst >= 0 && lst2 >= 0 && udp >= 0 && listen(lst, 8) == 0 &&
             listen(lst2, 8) == 0))
    return check_summary();
  snprintf(name, sizeof name, "127.0.0.1:%u", tcp_port);
  snprintf(name2, sizeof name2, "127.0.0.1:%u", tcp2_port);
  snprintf(configured, sizeof configured, "127.0.0.1:%u", tcp2_port);

  char *const argv[] = {"/bin/false", NULL};
  char *const nodes[] = {configured, NULL};
  uint16_t ports[1] = {udp_port};
  pp_engine_opts o;
  memset(&o, 0, sizeof o);
  o.worker_argv = argv;
  o.nodes = nodes;
  o.secret = SECRET;
  o.secret_len = sizeof SECRET - 1;
  o.discover_ports = ports;
  o.ndiscover = 1;
  pp_engine *e = NULL;
  if (!CHECK(pp_engine_new(&o, &e) == PP_OK))
    return check_summary();
  CHECK(count_nodes(e, NULL) == 1); /* the configured one */

  /* refused datagrams, for 400 ms: no record, no connection */
  for (int i = 0; i < 8; i++) {
    announcement(other, tcp_port, pp_wall_ms(), d);
    send_dg(udp, udp_port, d, sizeof d);
    announcement(key, tcp_port, pp_wall_ms() - 60000, d);
    send_dg(udp, udp_port, d, sizeof d);
    announcement(key, tcp_port, pp_wall_ms(), d);
    send_dg(udp, udp_port, d, sizeof d - 1);
    sleep_ms(50);
  }
  CHECK(!readable(lst, 0));
  CHECK(count_nodes(e, NULL) == 1);

  /* a signed announcement: one record, connected at once, handshake starts */
  int conn = -1;
  for (int i = 0; i < 100 && conn < 0; i++) {
    announcement(key, tcp_port, pp_wall_ms(), d);
    send_dg(udp, udp_port, d, sizeof d);
    if (readable(lst, 50))
      conn = accept(lst, NULL, NULL);
  }
  if (CHECK(conn >= 0)) {
    uint8_t hdr[PP_FRAME_HDR];
    CHECK(readable(conn, 5000));
    CHECK(recv(conn, hdr, sizeof hdr, MSG_WAITALL) == (ssize_t)sizeof hdr);
    /* the client speaks first: a TLS ClientHello (TLS is the default) */
    CHECK(hdr[0] == 0x16 && hdr[1] == 0x03 && hdr[5] == 0x01);
    close(conn);
  }
  CHECK(count_nodes(e, name) == 1);
  CHECK(count_nodes(e, NULL) == 2);

  /* the configured node announced: not duplicated */
  announcement(key, tcp2_port, pp_wall_ms(), d);
  send_dg(udp, udp_port, d, sizeof d);
  sleep_ms(200);
  CHECK(count_nodes(e, name2) == 1);
  CHECK(count_nodes(e, NULL) == 2);

  pp_engine_free(e);
  close(lst);
  close(lst2);
  close(udp);
  test_first_port_taken(key);
  pp_log_set(NULL, NULL);
  return check_summary();
}

/* test_first_port_taken: discovery on ports P and Q while another socket
 * (without SO_REUSEADDR, so the engine's bind fails) holds UDP P. The
 * engine must log the failure naming P, find a node announced on Q, and
 * be freed without touching the closed handle (the old code re-initialised
 * it for Q before its close callback had run: libuv aborted). Repeated, so
 * that a close racing the next loop turn is exercised more than once. */
static void test_first_port_taken(const uint8_t key[32]) {
  uint8_t d[PP_DISCO_LEN];
  uint16_t taken_port, free_port, tcp_port, probe_port;
  for (int round = 0; round < 3; round++) {
    int holder = bound_socket(SOCK_DGRAM, &taken_port);
    int probe = bound_socket(SOCK_DGRAM, &free_port);
    close(probe);
    int lst = bound_socket(SOCK_STREAM, &tcp_port);
    int udp = bound_socket(SOCK_DGRAM, &probe_port);
    if (!CHECK(holder >= 0 && lst >= 0 && udp >= 0 && listen(lst, 8) == 0))
      return;
    /* the holder is bound to 127.0.0.1:P; a wildcard bind of P conflicts */
    snprintf(wanted, sizeof wanted, "cannot listen on UDP port %u", taken_port);
    atomic_store(&seen_wanted, 0);
    pp_log_set(watch, NULL);

    char *const argv[] = {"/bin/false", NULL};
    uint16_t ports[2] = {taken_port, free_port};
    pp_engine_opts o;
    memset(&o, 0, sizeof o);
    o.worker_argv = argv;
    o.secret = SECRET;
    o.secret_len = sizeof SECRET - 1;
    o.discover_ports = ports;
    o.ndiscover = 2;
    pp_engine *e = NULL;
    if (!CHECK(pp_engine_new(&o, &e) == PP_OK))
      return;
    char name[64];
    snprintf(name, sizeof name, "127.0.0.1:%u", tcp_port);
    int conn = -1;
    for (int i = 0; i < 100 && conn < 0; i++) {
      announcement(key, tcp_port, pp_wall_ms(), d);
      send_dg(udp, free_port, d, sizeof d);
      if (readable(lst, 50))
        conn = accept(lst, NULL, NULL);
    }
    CHECKF(conn >= 0, "round %d: no connection after announcements on %u",
           round, free_port);
    CHECK(count_nodes(e, name) == 1);
    CHECKF(atomic_load(&seen_wanted), "no warning containing '%s'", wanted);
    pp_engine_free(e);
    pp_log_set(quiet, NULL);
    if (conn >= 0)
      close(conn);
    close(lst);
    close(udp);
    close(holder);
  }
}
