/* announce.c — the node half of auto-discovery (see announce.h and
 * docs/protocol.md section 8.3): a periodic signed announcement to the
 * broadcast address(es), and an immediate unicast answer to each signed
 * query. Unsigned, foreign-secret or stale datagrams are ignored with a
 * rate-limited warning.
 *
 * Who hears what on one host: several programs (this node, clients, other
 * nodes) bind the same UDP port P with SO_REUSEADDR. Linux gives a
 * broadcast to every one of them, but a unicast datagram to only one (the
 * most specific binding; among equals, typically the last bound). So this
 * node never announces by unicast to an address of its own host (-b
 * 127.0.0.1 becomes the loopback broadcast 127.255.255.255), and with -i
 * ADDR it binds ADDR:P and ADDR's broadcast address instead of 0.0.0.0:P,
 * so it hears only queries that reach that interface. Everything here runs
 * on the server's loop (main thread). */
#include "announce.h"

#include "disco.h"
#include "netif.h"
#include "pp_common.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TARGETS 32
#define BAD_LOG_MS 30000u     /* at most one "ignored" warning per 30 s */
#define REPLIES_PER_SEC 50u   /* query answers, at most */

struct ppsrv_announcer {
  const ppsrv_config *cfg;
  uv_udp_t udp[2]; /* [0] announces and answers; [1] the -i broadcast */
  int nudp;        /* how many of udp[] were initialised */
  uv_timer_t timer;
  int open_handles;
  uint8_t key[PP_AUTH_KEY_LEN];
  pp_disco_msg msg; /* the announcement, time_ms refreshed per datagram */
  int listen_kind;  /* LISTEN_ANY, LISTEN_V4 (listen4 valid) or LISTEN_V6 */
  struct in_addr listen4;
  int targets_logged;
  uint64_t announced;
  uint64_t nbad, bad_logged_ms;
  uint64_t reply_window_ms;
  unsigned replies;
  uint8_t rbuf[128];
};

enum { LISTEN_ANY, LISTEN_V4, LISTEN_V6 };

/* send_to: one fresh announcement to `to` from socket u. Returns 0 or a
 * libuv error. */
static int send_to(ppsrv_announcer *a, uv_udp_t *u, const struct sockaddr *to) {
  uint8_t dg[PP_DISCO_LEN];
  a->msg.time_ms = pp_wall_ms();
  if (pp_disco_seal(a->key, &a->msg, dg) != PP_OK)
    return UV_EIO;
  uv_buf_t b = uv_buf_init((char *)dg, sizeof dg);
  int rc = uv_udp_try_send(u, &b, 1, to);
  return rc < 0 ? rc : 0;
}

/* targets: this round's destinations into t[0..max), their names for the
 * log into list. -b B: B, or, when B is an address of this host, the
 * broadcast address of its interface (so every client of this host hears
 * it, not just the one socket a unicast would reach); -i ADDR: the
 * broadcast address of ADDR's interface (127.255.255.255 for loopback);
 * listening on every address: every LAN broadcast address, or the loopback
 * broadcast when there is none (a host without a LAN still serves its own
 * clients). Returns the count (0: nowhere to announce). */
static int targets(ppsrv_announcer *a, struct in_addr *t, int max, char *list,
                   size_t listlen) {
  struct in_addr b;
  int n = 0;
  list[0] = '\0';
  if (a->cfg->broadcast != NULL) {
    if (inet_pton(AF_INET, a->cfg->broadcast, &b) != 1)
      return 0; /* config.c checked it */
    struct in_addr bc;
    char name[INET_ADDRSTRLEN];
    if (pp_netif_local(b, &bc) == 1 && bc.s_addr != htonl(INADDR_NONE) &&
        bc.s_addr != b.s_addr) {
      inet_ntop(AF_INET, &bc, name, sizeof name);
      snprintf(list, listlen, "%s via %s (an address of this host)",
               a->cfg->broadcast, name);
      t[n++] = bc;
    } else {
      snprintf(list, listlen, "%s", a->cfg->broadcast);
      t[n++] = b;
    }
    return n;
  }
  if (a->listen_kind == LISTEN_V4) {
    if (pp_netif_local(a->listen4, &b) == 1 && b.s_addr != htonl(INADDR_NONE))
      t[n++] = b;
  } else if (a->listen_kind == LISTEN_ANY) {
    n = pp_netif_broadcasts(t, max);
    if (n <= 0) {
      n = 0;
      t[n++].s_addr = htonl(PP_NETIF_LOOPBACK_BCAST);
    }
  } /* LISTEN_V6 on one address: no IPv4 broadcast, only -b */
  size_t off = 0;
  for (int i = 0; i < n && off < listlen; i++) {
    char name[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &t[i], name, sizeof name);
    off += (size_t)snprintf(list + off, listlen - off, "%s%s", i ? ", " : "",
                            name);
  }
  return n;
}

/* announce: one announcement to each of this round's targets (read afresh
 * each time); the first round's targets are logged at INFO. */
static void announce(ppsrv_announcer *a) {
  struct in_addr t[MAX_TARGETS];
  char list[MAX_TARGETS * 17 + 64];
  int n = targets(a, t, MAX_TARGETS, list, sizeof list);
  for (int i = 0; i < n; i++) {
    struct sockaddr_in to;
    char name[INET_ADDRSTRLEN];
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(a->msg.port);
    to.sin_addr = t[i];
    int rc = send_to(a, &a->udp[0], (struct sockaddr *)&to);
    if (rc != 0) {
      uv_ip4_name(&to, name, sizeof name);
      pp_log(a->announced ? PP_LOG_DEBUG : PP_LOG_WARNING,
             "discovery: cannot announce to %s:%u: %s", name, a->msg.port,
             uv_strerror(rc));
    }
  }
  if (!a->targets_logged) { /* the first round's targets, once */
    if (n > 0)
      pp_log(PP_LOG_INFO,
             "discovery: announcing port %u to %s (UDP port %u) every %.1f s",
             a->msg.port, list, a->msg.port, a->cfg->announce_ms / 1000.0);
    else
      pp_log(PP_LOG_WARNING,
             "discovery: no broadcast address for interface %s (give one"
             " with -b); only answering queries", a->cfg->interface);
    a->targets_logged = 1;
  }
  a->announced++;
}

/* on_timer: the announcement period elapsed. Main thread. */
static void on_timer(uv_timer_t *t) { announce(t->data); }

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  ppsrv_announcer *a = h->data;
  PP_UNUSED(hint);
  *buf = uv_buf_init((char *)a->rbuf, sizeof a->rbuf);
}

/* on_recv: a datagram on either socket. A valid QUERY is answered at once,
 * unicast to its source from the socket that received it (at most
 * REPLIES_PER_SEC a second); bad datagrams are counted and logged at most
 * every BAD_LOG_MS; announcements (other nodes', our own broadcasts) are
 * ignored. Main thread. */
static void on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                    const struct sockaddr *addr, unsigned flags) {
  ppsrv_announcer *a = h->data;
  pp_disco_msg m;
  char from[INET_ADDRSTRLEN] = "?";
  if (nread <= 0 || addr == NULL || addr->sa_family != AF_INET)
    return;
  uv_ip4_name((const struct sockaddr_in *)addr, from, sizeof from);
  int v = (flags & UV_UDP_PARTIAL)
              ? PP_DISCO_EFORMAT
              : pp_disco_open(a->key, (const uint8_t *)buf->base,
                              (size_t)nread, pp_wall_ms(), &m);
  if (v != PP_OK) {
    uint64_t now = uv_now(h->loop);
    a->nbad++;
    if (v == PP_DISCO_EFORMAT) {
      pp_log(PP_LOG_DEBUG, "discovery: ignored a datagram from %s: %s", from,
             pp_disco_strerror(v));
    } else if (a->bad_logged_ms == 0 || now - a->bad_logged_ms >= BAD_LOG_MS) {
      pp_log(PP_LOG_WARNING,
             "discovery: ignored %llu datagram(s); the last from %s: %s",
             (unsigned long long)a->nbad, from, pp_disco_strerror(v));
      a->nbad = 0;
      a->bad_logged_ms = now;
    }
    return;
  }
  if (m.kind != PP_DISCO_QUERY)
    return; /* an announcement: another node's, or our own broadcast */
  uint64_t now = uv_now(h->loop);
  if (now - a->reply_window_ms >= 1000) {
    a->reply_window_ms = now;
    a->replies = 0;
  }
  if (a->replies++ >= REPLIES_PER_SEC)
    return;
  int rc = send_to(a, h, addr);
  pp_log(PP_LOG_DEBUG, "discovery: query from %s:%u answered%s%s", from,
         ntohs(((const struct sockaddr_in *)addr)->sin_port),
         rc ? ": " : "", rc ? uv_strerror(rc) : "");
}

/* on_closed: one handle closed; the last one frees the announcer. */
static void on_closed(uv_handle_t *h) {
  ppsrv_announcer *a = h->data;
  if (--a->open_handles == 0) {
    pp_auth_wipe(a->key, sizeof a->key);
    free(a);
  }
}

/* open_udp: initialise a->udp[a->nudp] (counted in open_handles at once, so
 * ppsrv_announce_stop closes it whatever happens next), bind it to
 * ip:port with SO_REUSEADDR, allow broadcast and start receiving. Returns 0
 * or a libuv error. */
static int open_udp(ppsrv_announcer *a, uv_loop_t *loop, struct in_addr ip,
                    int port) {
  uv_udp_t *u = &a->udp[a->nudp];
  struct sockaddr_in sa;
  int rc = uv_udp_init(loop, u);
  if (rc != 0)
    return rc;
  u->data = a;
  a->nudp++;
  a->open_handles++;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr = ip;
  rc = uv_udp_bind(u, (struct sockaddr *)&sa, UV_UDP_REUSEADDR);
  if (rc == 0)
    rc = uv_udp_set_broadcast(u, 1);
  if (rc == 0)
    rc = uv_udp_recv_start(u, on_alloc, on_recv);
  if (rc != 0) {
    char name[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &ip, name, sizeof name);
    pp_log(PP_LOG_ERROR, "discovery: cannot use UDP %s:%d: %s", name, port,
           uv_strerror(rc));
  }
  return rc;
}

ppsrv_announcer *ppsrv_announce_start(uv_loop_t *loop, const ppsrv_config *cfg,
                                      const uint8_t *key, size_t key_len,
                                      const struct sockaddr *listen_addr,
                                      int tcp_port) {
  ppsrv_announcer *a = calloc(1, sizeof *a);
  struct in_addr ip, bc;
  int rc;
  if (a == NULL) {
    pp_log(PP_LOG_ERROR, "discovery: out of memory");
    return NULL;
  }
  a->cfg = cfg;
  if (pp_disco_key(key, key_len, a->key) != PP_OK) {
    pp_log(PP_LOG_ERROR, "discovery: cannot derive the key");
    free(a);
    return NULL;
  }
  a->msg.kind = PP_DISCO_ANNOUNCE;
  a->msg.port = (uint16_t)tcp_port;
  a->msg.interval_ms = (uint32_t)cfg->announce_ms;
  a->msg.nworkers = (uint32_t)cfg->nworkers;
  a->listen_kind = LISTEN_ANY;
  if (listen_addr->sa_family == AF_INET) {
    const struct sockaddr_in *l = (const struct sockaddr_in *)listen_addr;
    if (l->sin_addr.s_addr != htonl(INADDR_ANY)) {
      memcpy(a->msg.addr, &l->sin_addr, 4);
      a->listen4 = l->sin_addr;
      a->listen_kind = LISTEN_V4;
    }
  } else {
    const struct sockaddr_in6 *l6 = (const struct sockaddr_in6 *)listen_addr;
    static const struct in6_addr any6 = IN6ADDR_ANY_INIT;
    if (memcmp(&l6->sin6_addr, &any6, sizeof any6) != 0)
      a->listen_kind = LISTEN_V6; /* no IPv4 broadcast: needs -b */
  }
  uv_timer_init(loop, &a->timer);
  a->timer.data = a;
  a->open_handles = 1;
  /* -i ADDR: ADDR:P (unicast queries to ADDR) and ADDR's broadcast:P
   * (broadcast queries on its subnet); else 0.0.0.0:P */
  ip.s_addr = a->listen_kind == LISTEN_V4 ? a->listen4.s_addr : htonl(INADDR_ANY);
  rc = open_udp(a, loop, ip, tcp_port);
  if (rc == 0 && a->listen_kind == LISTEN_V4 &&
      pp_netif_local(a->listen4, &bc) == 1 && bc.s_addr != htonl(INADDR_NONE) &&
      bc.s_addr != a->listen4.s_addr)
    rc = open_udp(a, loop, bc, tcp_port);
  if (rc != 0) {
    ppsrv_announce_stop(a);
    return NULL;
  }
  announce(a);
  uv_timer_start(&a->timer, on_timer, (uint64_t)cfg->announce_ms,
                 (uint64_t)cfg->announce_ms);
  return a;
}

void ppsrv_announce_stop(ppsrv_announcer *a) {
  if (a == NULL)
    return;
  uv_timer_stop(&a->timer);
  if (!uv_is_closing((uv_handle_t *)&a->timer))
    uv_close((uv_handle_t *)&a->timer, on_closed);
  for (int i = 0; i < a->nudp; i++)
    if (!uv_is_closing((uv_handle_t *)&a->udp[i]))
      uv_close((uv_handle_t *)&a->udp[i], on_closed);
}
