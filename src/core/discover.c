/* discover.c — the client half of auto-discovery (pp.Server(ppservers=
 * ("*",)), docs/protocol.md section 8.4): one UDP socket bound to 0.0.0.0
 * on each discovery port receives the nodes' announcements (broadcasts, so
 * every client of a host hears them); a separate socket on an ephemeral
 * port sends signed queries to every broadcast address, loopback's
 * included, at start-up, and receives the nodes' unicast answers, so nodes
 * already running are found at once. Every datagram is checked (disco.h:
 * MAC under the secret-derived key, 30 s window) before node.c hears of
 * it, and even then an announcement only makes node.c try the full
 * handshake. Each socket owns its memory until its close callback.
 * Everything here runs on the engine thread. */
#include "disco.h"
#include "engine_int.h"
#include "netif.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BAD_LOG_NS 30000000000ull /* at most one "ignored" warning per 30 s */
#define MAX_BCAST 32

/* when (ms after start) the start-up queries go out; UDP may lose one */
static const unsigned query_at_ms[] = {0, 300, 1000, 3000};
#define NQUERIES (sizeof query_at_ms / sizeof query_at_ms[0])

/* One UDP socket. Its memory is its own and belongs to the handle from
 * uv_udp_init on: it is freed only in on_sock_closed, so a closing socket is
 * never touched again (libuv may still use the handle until that callback;
 * re-initialising it there aborted the process in uv__finish_close). */
typedef struct dsock {
  uv_udp_t h;    /* first member: the handle is the allocation */
  uint16_t port; /* bound port (0: ephemeral, the query socket) */
} dsock;

typedef struct pp__disco {
  pp_engine *e;
  uint8_t key[PP_AUTH_KEY_LEN];
  dsock **listen; /* e->ndisco slots, one per discovery port; NULL: not
                     open (bind failed) or closing */
  dsock *query;   /* the query socket; NULL: none or closing */
  unsigned queries_sent;
  uint64_t start_ns;
  uint64_t nbad, bad_logged_ns;
  uint8_t rbuf[128]; /* a datagram longer than this is not ours anyway */
} pp__disco;

/* on_sock_closed: libuv is done with the handle; free the socket. It does
 * not touch the pp__disco (which may be freed after the loop ended).
 * Engine thread. */
static void on_sock_closed(uv_handle_t *h) { free(h); }

/* close_sock: start closing *slot (if any) and forget it, so that nothing
 * reaches the handle again; on_sock_closed frees it. Engine thread. */
static void close_sock(dsock **slot) {
  dsock *s = *slot;
  *slot = NULL;
  if (s != NULL && !uv_is_closing((uv_handle_t *)&s->h))
    uv_close((uv_handle_t *)&s->h, on_sock_closed);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  pp__disco *d = h->data;
  PP_UNUSED(hint);
  *buf = uv_buf_init((char *)d->rbuf, sizeof d->rbuf);
}

/* note_bad: count a refused datagram; warn at most every 30 s. */
static void note_bad(pp__disco *d, const char *from, int verdict) {
  uint64_t now = pp_now_ns();
  d->nbad++;
  if (verdict == PP_DISCO_EFORMAT) {
    pp__log(d->e, PP_LOG_DEBUG, "discovery: ignored a datagram from %s: %s",
            from, pp_disco_strerror(verdict));
    return;
  }
  if (d->bad_logged_ns != 0 && now - d->bad_logged_ns < BAD_LOG_NS)
    return;
  pp__log(d->e, PP_LOG_WARNING,
          "discovery: ignored %llu announcement(s); the last from %s: %s",
          (unsigned long long)d->nbad, from, pp_disco_strerror(verdict));
  d->nbad = 0;
  d->bad_logged_ns = now;
}

/* on_recv: one datagram on a listening or the query socket. A valid
 * ANNOUNCE becomes pp__node_discovered; everything else is dropped (bad
 * ones counted by note_bad). Engine thread. */
static void on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                    const struct sockaddr *addr, unsigned flags) {
  pp__disco *d = h->data;
  pp_disco_msg m;
  char from[INET_ADDRSTRLEN] = "?";
  if (nread <= 0 || addr == NULL || d->e->stopping)
    return;
  if (addr->sa_family != AF_INET)
    return; /* discovery is IPv4 broadcast */
  uv_ip4_name((const struct sockaddr_in *)addr, from, sizeof from);
  int v = (flags & UV_UDP_PARTIAL)
              ? PP_DISCO_EFORMAT
              : pp_disco_open(d->key, (const uint8_t *)buf->base,
                              (size_t)nread, pp_wall_ms(), &m);
  if (v != PP_OK) {
    note_bad(d, from, v);
    return;
  }
  if (m.kind != PP_DISCO_ANNOUNCE)
    return; /* a query: ours, or another client's */
  if (!d->e->disco_any) {
    /* only subnet entries: the node's address must be in one of them */
    uint32_t a = ntohl(((const struct sockaddr_in *)addr)->sin_addr.s_addr);
    if (m.addr[0] | m.addr[1] | m.addr[2] | m.addr[3])
      a = ((uint32_t)m.addr[0] << 24) | ((uint32_t)m.addr[1] << 16) |
          ((uint32_t)m.addr[2] << 8) | m.addr[3];
    int in = 0;
    for (int s = 0; s < d->e->nsubnets; s++)
      in |= (a & d->e->subnet_mask[s]) == d->e->subnet_net[s];
    if (!in) {
      pp__log(d->e, PP_LOG_DEBUG, "discovery: node %s:%u is outside the"
              " ppservers subnets: ignored", from, m.port);
      return;
    }
  }
  char ip[INET_ADDRSTRLEN];
  if (m.addr[0] | m.addr[1] | m.addr[2] | m.addr[3]) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    memcpy(&sa.sin_addr, m.addr, 4);
    uv_ip4_name(&sa, ip, sizeof ip);
  } else if (pp_netif_local(((const struct sockaddr_in *)addr)->sin_addr,
                            NULL) == 1) {
    /* A node of this host listening on every address: its datagrams come
     * from 127.0.0.1 (loopback broadcast, answers to loopback queries) or
     * from a LAN address (a LAN broadcast looped back). One name for it,
     * not one per path. */
    snprintf(ip, sizeof ip, "127.0.0.1");
  } else {
    memcpy(ip, from, sizeof ip);
  }
  pp__node_discovered(d->e, ip, m.port, m.interval_ms, m.time_ms);
}

/* send_queries: one signed query from the query socket to every LAN
 * broadcast address (255.255.255.255 when there is none) and to the
 * loopback broadcast, on every discovery port, including one this client
 * could not listen on (the answers come back to the query socket). Loopback
 * is a broadcast, not 127.0.0.1: a unicast datagram reaches only one of the
 * sockets sharing a port on this host, which may be another client's.
 * Failures only log: UDP is best effort. Engine thread. */
static void send_queries(pp__disco *d) {
  struct in_addr b[MAX_BCAST + 2 + PP_MAX_SUBNETS];
  uint8_t dg[PP_DISCO_LEN];
  pp_disco_msg m;
  int nb = pp_netif_broadcasts(b, MAX_BCAST);
  if (nb < 0)
    nb = 0;
  if (nb == 0)
    b[nb++].s_addr = htonl(INADDR_BROADCAST);
  b[nb++].s_addr = htonl(PP_NETIF_LOOPBACK_BCAST);
  /* pp 1.x's subnet entries: that subnet's broadcast address too */
  for (int s = 0; s < d->e->nsubnets && nb < MAX_BCAST + 2 + PP_MAX_SUBNETS;
       s++) {
    uint32_t bc = d->e->subnet_net[s] | ~d->e->subnet_mask[s];
    int dup = 0;
    for (int i = 0; i < nb; i++)
      dup |= b[i].s_addr == htonl(bc);
    if (!dup)
      b[nb++].s_addr = htonl(bc);
  }
  memset(&m, 0, sizeof m);
  m.kind = PP_DISCO_QUERY;
  m.time_ms = pp_wall_ms();
  if (d->query == NULL || pp_disco_seal(d->key, &m, dg) != PP_OK)
    return;
  for (int p = 0; p < d->e->ndisco; p++)
    for (int i = 0; i < nb; i++) {
      struct sockaddr_in to;
      memset(&to, 0, sizeof to);
      to.sin_family = AF_INET;
      to.sin_port = htons(d->e->disco_ports[p]);
      to.sin_addr = b[i];
      uv_buf_t ub = uv_buf_init((char *)dg, sizeof dg);
      int rc = uv_udp_try_send(&d->query->h, &ub, 1, (struct sockaddr *)&to);
      if (rc < 0) {
        char t[INET_ADDRSTRLEN];
        uv_ip4_name(&to, t, sizeof t);
        pp__log(d->e, PP_LOG_DEBUG, "discovery: query to %s:%u: %s", t,
                d->e->disco_ports[p], uv_strerror(rc));
      }
    }
}

/* open_sock: a new socket bound to 0.0.0.0:port (with SO_REUSEADDR, shared
 * with the other clients and nodes of this host; port 0: ephemeral), able
 * to broadcast, receiving. Returns 0 and *out (owned by the loop: close it
 * with close_sock), or a libuv error with *out NULL (a half-made socket is
 * already closing and frees itself). Engine thread. */
static int open_sock(pp__disco *d, uint16_t port, dsock **out) {
  struct sockaddr_in a;
  *out = NULL;
  dsock *s = calloc(1, sizeof *s);
  if (s == NULL)
    return UV_ENOMEM;
  int rc = uv_udp_init(d->e->loop, &s->h);
  if (rc != 0) {
    free(s); /* not a handle yet */
    return rc;
  }
  s->h.data = d;
  s->port = port;
  uv_ip4_addr("0.0.0.0", port, &a);
  rc = uv_udp_bind(&s->h, (struct sockaddr *)&a, port ? UV_UDP_REUSEADDR : 0);
  if (rc == 0)
    rc = uv_udp_set_broadcast(&s->h, 1);
  if (rc == 0)
    rc = uv_udp_recv_start(&s->h, on_alloc, on_recv);
  if (rc != 0) {
    close_sock(&s);
    return rc;
  }
  *out = s;
  return 0;
}

int pp__disco_start(pp_engine *e) {
  pp__disco *d = calloc(1, sizeof *d);
  if (d == NULL)
    return PP_ENOMEM;
  d->e = e;
  e->disco = d;
  d->listen = calloc((size_t)e->ndisco, sizeof *d->listen);
  if (d->listen == NULL)
    return PP_ENOMEM;
  int rc = pp_disco_key(e->key, sizeof e->key, d->key);
  if (rc != PP_OK) {
    pp__log(e, PP_LOG_ERROR, "discovery: cannot derive the key: %s",
            pp_strerror(rc));
    return rc;
  }
  for (int i = 0; i < e->ndisco; i++) {
    rc = open_sock(d, e->disco_ports[i], &d->listen[i]);
    if (rc != 0)
      pp__log(e, PP_LOG_WARNING,
              "discovery: cannot listen on UDP port %u: %s (nodes there are"
              " found only by answering this client's start-up queries)",
              e->disco_ports[i], uv_strerror(rc));
    else
      pp__log(e, PP_LOG_DEBUG, "discovery: listening on UDP port %u",
              e->disco_ports[i]);
  }
  rc = open_sock(d, 0, &d->query);
  if (rc != 0)
    pp__log(e, PP_LOG_WARNING, "discovery: cannot open the query socket: %s",
            uv_strerror(rc));
  d->start_ns = pp_now_ns();
  pp__disco_tick(e, d->start_ns);
  return PP_OK;
}

void pp__disco_tick(pp_engine *e, uint64_t now) {
  pp__disco *d = e->disco;
  if (d == NULL || d->queries_sent >= NQUERIES)
    return;
  if (now - d->start_ns >= (uint64_t)query_at_ms[d->queries_sent] * 1000000u) {
    d->queries_sent++;
    send_queries(d);
  }
}

void pp__disco_stop(pp_engine *e) {
  pp__disco *d = e->disco;
  if (d == NULL)
    return;
  for (int i = 0; d->listen != NULL && i < e->ndisco; i++)
    close_sock(&d->listen[i]);
  close_sock(&d->query);
}

void pp__disco_free(pp_engine *e) {
  pp__disco *d = e->disco;
  if (d == NULL)
    return;
  pp_auth_wipe(d->key, sizeof d->key);
  free(d->listen); /* its sockets were freed by their close callbacks */
  free(d);
  e->disco = NULL;
}
