/* sched.c — the dispatch policy, pure over peers: FIFO queue, local peers
 * before remote ones, round robin over the peers with room, pipelining by
 * estimated run time (peer.c's rule), so a stream of tiny jobs is batched
 * while long jobs go out one per slot; the retry of a job that raised goes
 * to another peer than the one it raised on when one has room. It never
 * names a transport: a peer
 * is whatever fills in pp__peer_ops. Engine thread only. */
#include "engine_int.h"

enum { MAX_ROUND = 1024 }; /* peers considered in one round */

void pp__dispatch(pp_engine *e) {
  pp__peer *ss[MAX_ROUND];
  pp_job *first[MAX_ROUND];
  int ns = 0;
  /* caller holds mu */
  for (pp__peer *p = e->peers; p && ns < MAX_ROUND; p = p->pnext)
    if (pp__peer_can_take(p)) {
      ss[ns] = p;
      first[ns] = NULL;
      ns++;
    }
  int progress = ns > 0;
  while (progress && e->pending.head != NULL) {
    progress = 0;
    for (int i = 0; i < ns && e->pending.head != NULL; i++) {
      if (!pp__peer_can_take(ss[i]))
        continue;
      pp_job *j = pp_jobq_pop(&e->pending);
      int t = i;
      if (j->avoid == (const void *)ss[i])
        /* a retry of a job that raised there: another peer if one has
         * room, else this one again */
        for (int k = 0; k < ns; k++)
          if (k != i && pp__peer_can_take(ss[k])) {
            t = k;
            break;
          }
      j->avoid = NULL;
      pp__peer_start(ss[t], j);
      if (first[t] == NULL)
        first[t] = j;
      progress = 1;
    }
  }
  uv_mutex_unlock(&e->mu);

  /* Writing happens outside the lock. A failed send drops its peer, whose
   * loss path puts that peer's jobs back on the queue and asks for another
   * dispatch; the other peers' lists are untouched, so nothing is sent
   * twice and nothing is lost. */
  for (int i = 0; i < ns; i++)
    if (first[i] != NULL)
      pp__peer_send(ss[i], first[i]);
}
