/* announce.c — the node half of auto-discovery (see announce.h and
 * docs/protocol.md section 8): a periodic signed announcement to the
 * broadcast address(es), and an immediate unicast answer to each signed
 * query. Unsigned, foreign-secret or stale datagrams are ignored with a
 * rate-limited warning. Everything here runs on the server's loop. */
#include "announce.h"

#include "disco.h"
#include "netif.h"
#include "pp_common.h"

#include <stdlib.h>
#include <string.h>

#define MAX_TARGETS 32
#define BAD_LOG_MS 30000u     /* at most one "ignored" warning per 30 s */
#define REPLIES_PER_SEC 50u   /* query answers, at most */

struct ppsrv_announcer {
  const ppsrv_config *cfg;
  uv_udp_t udp;
  uv_timer_t timer;
  int open_handles;
  uint8_t key[PP_AUTH_KEY_LEN];
  pp_disco_msg msg; /* the announcement, time_ms refreshed per datagram */
  const char *only; /* interface (name or IPv4) whose broadcast we use */
  int targets_logged;
  uint64_t announced;
  uint64_t nbad, bad_logged_ms;
  uint64_t reply_window_ms;
  unsigned replies;
  uint8_t rbuf[128];
};

/* send_to: one fresh announcement to `to`. Returns 0 or a libuv error. */
static int send_to(ppsrv_announcer *a, const struct sockaddr *to) {
  uint8_t dg[PP_DISCO_LEN];
  a->msg.time_ms = pp_wall_ms();
  if (pp_disco_seal(a->key, &a->msg, dg) != PP_OK)
    return UV_EIO;
  uv_buf_t b = uv_buf_init((char *)dg, sizeof dg);
  int rc = uv_udp_try_send(&a->udp, &b, 1, to);
  return rc < 0 ? rc : 0;
}

/* announce: to -b, or to every broadcast address of the -i interface(s),
 * read afresh each time. */
static void announce(ppsrv_announcer *a) {
  struct in_addr t[MAX_TARGETS];
  int n;
  if (a->cfg->broadcast != NULL) {
    n = inet_pton(AF_INET, a->cfg->broadcast, &t[0]) == 1 ? 1 : 0;
  } else {
    n = pp_netif_broadcasts(a->only, t, MAX_TARGETS);
    if (n < 0)
      n = 0;
  }
  char list[MAX_TARGETS * 17] = "";
  size_t off = 0;
  for (int i = 0; i < n; i++) {
    struct sockaddr_in to;
    char name[INET_ADDRSTRLEN];
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(a->msg.port);
    to.sin_addr = t[i];
    uv_ip4_name(&to, name, sizeof name);
    int rc = send_to(a, (struct sockaddr *)&to);
    if (rc != 0)
      pp_log(a->announced ? PP_LOG_DEBUG : PP_LOG_WARNING,
             "discovery: cannot announce to %s:%u: %s", name, a->msg.port,
             uv_strerror(rc));
    off += (size_t)snprintf(list + off, sizeof list - off, "%s%s",
                            i ? ", " : "", name);
  }
  if (!a->targets_logged) { /* the first round's targets, once */
    if (n > 0)
      pp_log(PP_LOG_INFO,
             "discovery: announcing port %u to %s (UDP port %u) every %.1f s",
             a->msg.port, list, a->msg.port, a->cfg->announce_ms / 1000.0);
    else
      pp_log(PP_LOG_WARNING,
             "discovery: no broadcast address for interface %s (give one"
             " with -b); only answering queries",
             a->only ? a->only : "(any)");
    a->targets_logged = 1;
  }
  a->announced++;
}

static void on_timer(uv_timer_t *t) { announce(t->data); }

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  ppsrv_announcer *a = h->data;
  PP_UNUSED(hint);
  *buf = uv_buf_init((char *)a->rbuf, sizeof a->rbuf);
}

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
    return; /* another node's announcement */
  uint64_t now = uv_now(h->loop);
  if (now - a->reply_window_ms >= 1000) {
    a->reply_window_ms = now;
    a->replies = 0;
  }
  if (a->replies++ >= REPLIES_PER_SEC)
    return;
  int rc = send_to(a, addr);
  pp_log(PP_LOG_DEBUG, "discovery: query from %s:%u answered%s%s", from,
         ntohs(((const struct sockaddr_in *)addr)->sin_port),
         rc ? ": " : "", rc ? uv_strerror(rc) : "");
}

static void on_closed(uv_handle_t *h) {
  ppsrv_announcer *a = h->data;
  if (--a->open_handles == 0) {
    pp_auth_wipe(a->key, sizeof a->key);
    free(a);
  }
}

ppsrv_announcer *ppsrv_announce_start(uv_loop_t *loop, const ppsrv_config *cfg,
                                      const struct sockaddr *listen_addr,
                                      int tcp_port) {
  ppsrv_announcer *a = calloc(1, sizeof *a);
  struct sockaddr_in any;
  int rc;
  if (a == NULL) {
    pp_log(PP_LOG_ERROR, "discovery: out of memory");
    return NULL;
  }
  a->cfg = cfg;
  if (pp_disco_key(cfg->secret, cfg->secret_len, a->key) != PP_OK) {
    pp_log(PP_LOG_ERROR, "discovery: cannot derive the key");
    free(a);
    return NULL;
  }
  a->msg.kind = PP_DISCO_ANNOUNCE;
  a->msg.port = (uint16_t)tcp_port;
  a->msg.interval_ms = (uint32_t)cfg->announce_ms;
  a->msg.nworkers = (uint32_t)cfg->nworkers;
  if (listen_addr->sa_family == AF_INET) {
    const struct sockaddr_in *l = (const struct sockaddr_in *)listen_addr;
    if (l->sin_addr.s_addr != htonl(INADDR_ANY)) {
      memcpy(a->msg.addr, &l->sin_addr, 4);
      a->only = cfg->interface;
    }
  } else {
    const struct sockaddr_in6 *l6 = (const struct sockaddr_in6 *)listen_addr;
    static const struct in6_addr any6 = IN6ADDR_ANY_INIT;
    if (memcmp(&l6->sin6_addr, &any6, sizeof any6) != 0)
      a->only = cfg->interface; /* no IPv4 broadcast: needs -b */
  }
  uv_udp_init(loop, &a->udp);
  uv_timer_init(loop, &a->timer);
  a->udp.data = a->timer.data = a;
  a->open_handles = 2;
  uv_ip4_addr("0.0.0.0", tcp_port, &any);
  rc = uv_udp_bind(&a->udp, (struct sockaddr *)&any, UV_UDP_REUSEADDR);
  if (rc == 0)
    rc = uv_udp_set_broadcast(&a->udp, 1);
  if (rc == 0)
    rc = uv_udp_recv_start(&a->udp, on_alloc, on_recv);
  if (rc != 0) {
    pp_log(PP_LOG_ERROR, "discovery: cannot use UDP port %d: %s", tcp_port,
           uv_strerror(rc));
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
  if (!uv_is_closing((uv_handle_t *)&a->udp))
    uv_close((uv_handle_t *)&a->udp, on_closed);
}
