/* admit.c — who gets served, per client address, before authentication
 * (docs/protocol.md 7.1): the table of addresses that are in a handshake
 * or failed one lately; the growing delay before a failing address's next
 * handshake is served; the caps on pending handshakes per address and in
 * total, with the connection to shed when a cap is reached; and log lines
 * that a flood cannot multiply (at most one per interval and kind, with a
 * count of those left out). Authenticated clients never pass through here
 * again: they are bounded by --max-clients alone. Main thread only. */
#include "ppsrv_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- rate-limited log lines ------------------------------------------- */

void ppsrv__ratelog(srv *s, ppsrv_ratelog *rl, int level, uint64_t every_ms,
                    const char *fmt, ...) {
  uint64_t now = uv_now(&s->loop);
  if (rl->logged && now - rl->last_ms < every_ms) {
    rl->skipped++;
    return;
  }
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (rl->skipped > 0)
    pp_log(level, "%s (and %llu more like it in the last %.0f s)", msg,
           (unsigned long long)rl->skipped, (double)(now - rl->last_ms) / 1e3);
  else
    pp_log(level, "%s", msg);
  rl->logged = 1;
  rl->last_ms = now;
  rl->skipped = 0;
}

/* ---- the address table ------------------------------------------------ */

/* addr_key: the 16 bytes naming sa's host (IPv4 as v4-mapped IPv6); 0, or
 * -1 for another family. */
static int addr_key(const struct sockaddr *sa, uint8_t key[16]) {
  memset(key, 0, 16);
  if (sa->sa_family == AF_INET) {
    key[10] = key[11] = 0xff;
    memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    return 0;
  }
  if (sa->sa_family == AF_INET6) {
    memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    return 0;
  }
  return -1;
}

/* forgotten: an entry that may be reused: nobody pending and no failure
 * within PPSRV_AUTH_FORGET_MS. */
static int forgotten(const ppsrv_admit *a, uint64_t now) {
  return a->pending == 0 &&
         (a->fails == 0 || now - a->last_fail_ms >= PPSRV_AUTH_FORGET_MS);
}

ppsrv_admit *ppsrv__admit_get(srv *s, const struct sockaddr *sa,
                              const char *name) {
  uint8_t key[16];
  uint64_t now = uv_now(&s->loop);
  if (addr_key(sa, key) != 0)
    return NULL;
  if (s->admit == NULL) {
    s->admit = calloc(PPSRV_ADMIT_ADDRS, sizeof *s->admit);
    if (s->admit == NULL)
      return NULL;
  }
  ppsrv_admit *victim = NULL;
  for (size_t i = 0; i < s->nadmit; i++) {
    ppsrv_admit *a = &s->admit[i];
    if (memcmp(a->key, key, 16) == 0) {
      a->last_use_ms = now;
      return a;
    }
    if (forgotten(a, now) && (victim == NULL || a->last_use_ms < victim->last_use_ms))
      victim = a;
  }
  if (s->nadmit < PPSRV_ADMIT_ADDRS)
    victim = &s->admit[s->nadmit++];
  if (victim == NULL)
    return NULL; /* every entry is busy: this address goes unbounded */
  memset(victim, 0, sizeof *victim);
  memcpy(victim->key, key, 16);
  snprintf(victim->name, sizeof victim->name, "%s", name);
  char *colon = strrchr(victim->name, ':'); /* "host:port" -> "host" */
  if (colon != NULL)
    *colon = '\0';
  victim->last_use_ms = now;
  return victim;
}

uint64_t ppsrv__admit_delay_ms(const ppsrv_admit *a, uint64_t now) {
  if (a == NULL || a->fails == 0 || now >= a->hold_until_ms)
    return 0;
  return a->hold_until_ms - now;
}

/* delay_for: the delay after the n-th failure in a row: 100 ms, doubling,
 * at most PPSRV_AUTH_DELAY_MAX_MS. */
static uint64_t delay_for(uint32_t n) {
  uint64_t d = PPSRV_AUTH_DELAY_BASE_MS;
  for (uint32_t i = 1; i < n && d < PPSRV_AUTH_DELAY_MAX_MS; i++)
    d *= 2;
  return d < PPSRV_AUTH_DELAY_MAX_MS ? d : PPSRV_AUTH_DELAY_MAX_MS;
}

int ppsrv__admit_failed(srv *s, ppsrv_admit *a, const char *peer,
                        const char *why) {
  uint64_t now = uv_now(&s->loop);
  if (a == NULL) {
    pp_log(PP_LOG_WARNING, "connection %s: %s", peer, why);
    return 1;
  }
  if (a->fails > 0 && now - a->last_fail_ms >= PPSRV_AUTH_FORGET_MS)
    a->fails = 0; /* a quiet minute: start over */
  a->fails++;
  a->last_fail_ms = now;
  uint64_t d = delay_for(a->fails);
  uint64_t from = a->hold_until_ms > now ? a->hold_until_ms : now;
  a->hold_until_ms = from + d > now + PPSRV_AUTH_DELAY_MAX_MS
                         ? now + PPSRV_AUTH_DELAY_MAX_MS
                         : from + d;
  if (a->log.logged && now - a->log.last_ms < PPSRV_AUTH_LOG_MS) {
    a->log.skipped++;
    pp_log(PP_LOG_DEBUG, "connection %s: %s", peer, why);
    return 0;
  }
  if (a->log.skipped > 0)
    pp_log(PP_LOG_WARNING,
           "connection %s: %s (%llu more failed handshakes from %s in the"
           " last %.0f s; its next handshake waits %llu ms)",
           peer, why, (unsigned long long)a->log.skipped, a->name,
           (double)(now - a->log.last_ms) / 1e3, (unsigned long long)d);
  else
    pp_log(PP_LOG_WARNING, "connection %s: %s%s", peer, why,
           a->fails > 1 ? " (this address is slowed down)" : "");
  a->log.logged = 1;
  a->log.last_ms = now;
  a->log.skipped = 0;
  return 1;
}

void ppsrv__admit_ok(ppsrv_admit *a) {
  if (a == NULL)
    return;
  a->fails = 0;
  a->hold_until_ms = 0;
  a->log.logged = 0; /* the run of failures is over: the next one is news */
}

/* ---- caps on pending handshakes --------------------------------------- */

/* victim: the pending connection to shed: from `only` (NULL: from the
 * address with the most pending), the one that got least far in its
 * handshake, the oldest among those. NULL when nothing is pending. */
static conn *victim(srv *s, ppsrv_admit *only) {
  if (only == NULL) {
    for (conn *c = s->conns; c; c = c->next)
      if (c->state == C_HANDSHAKE && c->adm != NULL &&
          (only == NULL || c->adm->pending > only->pending))
        only = c->adm;
  }
  conn *best = NULL;
  /* s->conns is newest first: the last match of a stage is its oldest */
  for (conn *c = s->conns; c; c = c->next) {
    if (c->state != C_HANDSHAKE || (only != NULL && c->adm != only))
      continue;
    if (best == NULL || c->hs_stage <= best->hs_stage)
      best = c;
  }
  return best;
}

void ppsrv__admit_make_room(srv *s, ppsrv_admit *a) {
  /* bounded: each round closes one pending connection */
  for (int round = 0; round < 4; round++) {
    int per_addr = a != NULL && a->pending >= s->max_pending_addr;
    int total = s->npending >= s->max_pending;
    if (!per_addr && !total)
      return;
    conn *v = victim(s, per_addr ? a : NULL);
    if (v == NULL)
      return;
    char why[160];
    snprintf(why, sizeof why,
             per_addr ? "shed: %zu handshakes pending from this address (the"
                        " limit), the one that got least far goes"
                      : "shed: %zu handshakes pending in total (the limit),"
                        " the one that got least far goes",
             per_addr ? (size_t)a->pending : s->npending);
    s->shed++;
    ppsrv__ratelog(s, &s->shed_log, PP_LOG_WARNING, PPSRV_RATELOG_MS,
                   "connection %s: %s", v->peer, why);
    ppsrv__conn_close(v, PP_LOG_DEBUG, why);
  }
}

size_t ppsrv__default_max_clients(long nofile, int nworkers) {
  long reserve = 32 + 4L * nworkers;
  if (nofile <= 0)
    return 1024; /* unknown limit */
  return nofile > reserve + 1 ? (size_t)(nofile - reserve) : 1;
}
