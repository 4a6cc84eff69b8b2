/* test_core.c — the small building blocks of the core: pp_buf, pp_keyset,
 * the intrusive job queue, function keys (SHA-256), job and function
 * reference counting, and the logging hook. Leaks are caught by
 * `make valgrind`. */
#include "check.h"

#include "buf.h"
#include "job.h"
#include "keyset.h"
#include "pp_common.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- pp_buf ------------------------------------------------------------ */

static void test_buf(void) {
  pp_buf b;
  uint8_t chunk[4096];
  for (size_t i = 0; i < sizeof chunk; i++)
    chunk[i] = (uint8_t)(i * 31 + 7);

  pp_buf_init(&b);
  CHECK(b.data == NULL && b.len == 0 && b.off == 0 && b.cap == 0);
  CHECK(pp_buf_avail(&b) == 0);
  CHECK(pp_buf_append(&b, NULL, 0) == PP_OK); /* empty append is fine */
  CHECK(pp_buf_avail(&b) == 0);

  CHECK(pp_buf_append(&b, "0123456789", 10) == PP_OK);
  CHECK(b.data != NULL && b.cap >= 10);
  CHECK(pp_buf_avail(&b) == 10);
  CHECK(memcmp(b.data + b.off, "0123456789", 10) == 0);

  pp_buf_consume(&b, 4);
  CHECK(pp_buf_avail(&b) == 6);
  CHECK(memcmp(b.data + b.off, "456789", 6) == 0);
  CHECK(pp_buf_append(&b, "ab", 2) == PP_OK);
  CHECK(pp_buf_avail(&b) == 8);
  CHECK(memcmp(b.data + b.off, "456789ab", 8) == 0);

  /* consuming everything rewinds the buffer */
  pp_buf_consume(&b, 8);
  CHECK(pp_buf_avail(&b) == 0 && b.off == 0 && b.len == 0);
  size_t cap0 = b.cap;

  /* compaction: fill to capacity, consume most, reserve more room than the
   * tail has: the unread bytes move to the front, capacity stays */
  CHECK(pp_buf_append(&b, chunk, cap0) == PP_OK);
  CHECK(b.cap == cap0 && b.len == cap0);
  pp_buf_consume(&b, cap0 - 100);
  CHECK(pp_buf_avail(&b) == 100);
  CHECK(pp_buf_reserve(&b, 1000) == PP_OK);
  CHECK(b.off == 0 && b.len == 100 && b.cap == cap0);
  CHECK(memcmp(b.data, chunk + cap0 - 100, 100) == 0);
  CHECK(b.cap - b.len >= 1000);

  /* reserve with room already there changes nothing */
  uint8_t *data = b.data;
  pp_buf_consume(&b, 10);
  CHECK(pp_buf_reserve(&b, 16) == PP_OK);
  CHECK(b.data == data && b.off == 10 && b.len == 100);
  CHECK(memcmp(b.data + b.off, chunk + cap0 - 90, 90) == 0);

  /* growth keeps the unread bytes too */
  CHECK(pp_buf_reserve(&b, 3 * cap0) == PP_OK);
  CHECK(b.cap - b.len >= 3 * cap0);
  CHECK(pp_buf_avail(&b) == 90);
  CHECK(memcmp(b.data + b.off, chunk + cap0 - 90, 90) == 0);
  size_t before = pp_buf_avail(&b);
  for (int i = 0; i < 20; i++)
    CHECK(pp_buf_append(&b, chunk, sizeof chunk) == PP_OK);
  CHECK(pp_buf_avail(&b) == before + 20 * sizeof chunk);
  CHECK(memcmp(b.data + b.off, chunk + cap0 - 90, 90) == 0);
  CHECK(memcmp(b.data + b.len - sizeof chunk, chunk, sizeof chunk) == 0);

  /* an impossible reserve fails and leaves the buffer as it was */
  size_t len = b.len, off = b.off, cap = b.cap;
  data = b.data;
  CHECK(pp_buf_reserve(&b, SIZE_MAX) == PP_ENOMEM);
  CHECK(pp_buf_reserve(&b, SIZE_MAX / 2) == PP_ENOMEM);
  CHECK(pp_buf_append(&b, chunk, SIZE_MAX - 8) == PP_ENOMEM);
  CHECK(b.len == len && b.off == off && b.cap == cap && b.data == data);

  pp_buf_free(&b);
  CHECK(b.data == NULL && b.len == 0 && b.off == 0 && b.cap == 0);
  /* reusable after free */
  CHECK(pp_buf_append(&b, "x", 1) == PP_OK && pp_buf_avail(&b) == 1);
  pp_buf_free(&b);
  pp_buf_free(&b); /* twice is harmless */
}

/* ---- pp_keyset --------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void) { /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545f4914f6cdd1dull;
}

static void random_key(uint8_t key[PP_KEY_LEN]) {
  for (size_t i = 0; i < PP_KEY_LEN; i += 8) {
    uint64_t v = rng();
    memcpy(key + i, &v, 8);
  }
}

static void test_keyset_basic(void) {
  pp_keyset s;
  uint8_t a[PP_KEY_LEN], b[PP_KEY_LEN];
  memset(a, 0x11, sizeof a);
  memset(b, 0x22, sizeof b);

  pp_keyset_init(&s);
  CHECK(s.len == 0 && s.cap == 0 && s.slots == NULL);
  CHECK(!pp_keyset_has(&s, a)); /* empty, never allocated */
  pp_keyset_clear(&s);          /* clearing an empty set is fine */

  CHECK(pp_keyset_add(&s, a) == PP_OK);
  CHECK(pp_keyset_has(&s, a));
  CHECK(!pp_keyset_has(&s, b));
  CHECK(s.len == 1);
  CHECK(pp_keyset_add(&s, a) == PP_OK); /* duplicate: no change */
  CHECK(s.len == 1);
  CHECK(pp_keyset_add(&s, b) == PP_OK);
  CHECK(pp_keyset_has(&s, a) && pp_keyset_has(&s, b) && s.len == 2);

  size_t cap = s.cap;
  pp_keyset_clear(&s);
  CHECK(s.len == 0 && s.cap == cap); /* storage kept */
  CHECK(!pp_keyset_has(&s, a) && !pp_keyset_has(&s, b));
  CHECK(pp_keyset_add(&s, b) == PP_OK);
  CHECK(pp_keyset_has(&s, b) && !pp_keyset_has(&s, a) && s.len == 1);
  pp_keyset_free(&s);
  CHECK(s.slots == NULL && s.len == 0 && s.cap == 0);
  pp_keyset_free(&s); /* twice is harmless */
}

/* Keys that share their first 8 bytes all hash to one slot: probing must
 * still find every one, across growth. */
static void test_keyset_collisions(void) {
  enum { N = 200 };
  pp_keyset s;
  uint8_t key[PP_KEY_LEN];
  int missing = 0, extra = 0;
  pp_keyset_init(&s);
  for (int i = 0; i < N; i++) {
    memset(key, 0xab, sizeof key);
    pp_put_u32(key + 28, (uint32_t)i);
    CHECK(pp_keyset_add(&s, key) == PP_OK);
  }
  CHECK(s.len == N);
  for (int i = 0; i < 2 * N; i++) {
    memset(key, 0xab, sizeof key);
    pp_put_u32(key + 28, (uint32_t)i);
    int has = pp_keyset_has(&s, key);
    if (i < N && !has)
      missing++;
    if (i >= N && has)
      extra++;
  }
  CHECK(missing == 0);
  CHECK(extra == 0);
  pp_keyset_free(&s);
}

static void test_keyset_random(void) {
  enum { N = 5000 };
  static uint8_t keys[N][PP_KEY_LEN], others[N][PP_KEY_LEN];
  pp_keyset s;
  int missing = 0, extra = 0, load_bad = 0, cap_bad = 0;

  pp_keyset_init(&s);
  for (int i = 0; i < N; i++) {
    random_key(keys[i]);
    random_key(others[i]);
  }
  for (int i = 0; i < N; i++) {
    if (pp_keyset_add(&s, keys[i]) != PP_OK)
      missing++;
    if (s.len * 2 > s.cap) /* load kept at most 1/2 */
      load_bad++;
    if (s.cap & (s.cap - 1)) /* power of two */
      cap_bad++;
    /* spot check as the set grows: everything so far is still there */
    if (i % 997 == 0)
      for (int k = 0; k <= i; k++)
        if (!pp_keyset_has(&s, keys[k]))
          missing++;
  }
  CHECK(s.len == N);
  CHECK(load_bad == 0);
  CHECK(cap_bad == 0);
  for (int i = 0; i < N; i++) {
    if (!pp_keyset_has(&s, keys[i]))
      missing++;
    if (pp_keyset_has(&s, others[i]))
      extra++;
  }
  CHECK(missing == 0);
  CHECK(extra == 0);

  /* re-adding everything changes nothing */
  for (int i = 0; i < N; i++)
    pp_keyset_add(&s, keys[i]);
  CHECK(s.len == N);

  size_t cap = s.cap;
  pp_keyset_clear(&s);
  CHECK(s.len == 0 && s.cap == cap);
  int left = 0;
  for (int i = 0; i < N; i++)
    left += pp_keyset_has(&s, keys[i]);
  CHECK(left == 0);
  for (int i = 0; i < N; i += 2)
    pp_keyset_add(&s, keys[i]);
  int ok = 1;
  for (int i = 0; i < N; i++)
    if (pp_keyset_has(&s, keys[i]) != (i % 2 == 0))
      ok = 0;
  CHECK(ok);
  CHECK(s.len == N / 2 && s.cap == cap);
  pp_keyset_free(&s);
}

/* ---- pp_func / pp_job -------------------------------------------------- */

static int hex_is(const uint8_t key[PP_KEY_LEN], const char *hex) {
  char buf[2 * PP_KEY_LEN + 1];
  for (size_t i = 0; i < PP_KEY_LEN; i++)
    snprintf(buf + 2 * i, 3, "%02x", key[i]);
  return strcmp(buf, hex) == 0;
}

static void test_func(void) {
  char blob[] = "abc";
  pp_func *f = pp_func_new(blob, 3);
  if (!CHECK(f != NULL))
    return;
  CHECK(hex_is(f->key, "ba7816bf8f01cfea414140de5dae2223"
                       "b00361a396177a9cb410ff61f20015ad"));
  CHECK(f->blob_len == 3 && memcmp(f->blob, "abc", 3) == 0);
  CHECK(f->blob != (uint8_t *)blob); /* copied */
  blob[0] = 'X';
  CHECK(f->blob[0] == 'a');
  CHECK(f->ema_ns == 0);
  CHECK(atomic_load(&f->refs) == 1);

  pp_func *g = pp_func_new(NULL, 0); /* empty descriptor */
  if (CHECK(g != NULL)) {
    CHECK(hex_is(g->key, "e3b0c44298fc1c149afbf4c8996fb924"
                         "27ae41e4649b934ca495991b7852b855"));
    CHECK(g->blob_len == 0);
    pp_func_unref(g);
  }
  /* the same bytes give the same key */
  pp_func *h = pp_func_new("abc", 3);
  if (CHECK(h != NULL)) {
    CHECK(memcmp(h->key, f->key, PP_KEY_LEN) == 0);
    pp_func_unref(h);
  }

  pp_func_ref(f);
  CHECK(atomic_load(&f->refs) == 2);
  pp_func_unref(f);
  CHECK(atomic_load(&f->refs) == 1);
  pp_func_unref(f); /* freed; valgrind would see a leak otherwise */
  pp_func_unref(NULL);
}

static pp_job *mkjob(pp_func *f, const char *args, uint32_t group) {
  size_t n = strlen(args);
  uint8_t *a = malloc(n ? n : 1);
  if (a == NULL)
    return NULL;
  memcpy(a, args, n);
  pp_job *j = pp_job_new(f, a, n, 0, group);
  if (j == NULL)
    free(a);
  return j;
}

static void test_job_refs(void) {
  pp_func *f = pp_func_new("fn", 2);
  if (!CHECK(f != NULL))
    return;
  pp_job *j = mkjob(f, "args", 3);
  if (!CHECK(j != NULL)) {
    pp_func_unref(f);
    return;
  }
  CHECK(atomic_load(&j->refs) == 1);
  CHECK(atomic_load(&f->refs) == 2); /* the job holds one */
  CHECK(j->func == f);
  CHECK(j->args_len == 4 && memcmp(j->args, "args", 4) == 0);
  CHECK(j->group == 3 && j->flags == 0);
  CHECK(atomic_load(&j->state) == PP_JOB_QUEUED);
  CHECK(atomic_load(&j->state) != PP_JOB_DONE);
  CHECK(j->exitstatus == -1 && j->termsignal == 0);
  CHECK(j->attempt == 0 && j->crashes == 0);
  CHECK(j->result == NULL && j->errmsg == NULL && j->udata == NULL);
  CHECK(j->next == NULL && j->prev == NULL);

  pp_job_ref(j);
  pp_job_ref(j);
  CHECK(atomic_load(&j->refs) == 3);
  pp_job_unref(j);
  pp_job_unref(j);
  CHECK(atomic_load(&j->refs) == 1);

  /* the last reference frees result and errmsg too (valgrind checks) */
  j->result = malloc(16);
  j->result_len = 16;
  j->errmsg = strdup("gone");
  pp_job_unref(j);
  CHECK(atomic_load(&f->refs) == 1); /* the job's func reference dropped */

  /* chunk flag and a zero-length args buffer */
  uint8_t *empty = malloc(1);
  pp_job *k = pp_job_new(f, empty, 0, PP_JOBF_CHUNK, 0);
  if (CHECK(k != NULL)) {
    CHECK(k->flags == PP_JOBF_CHUNK && k->args_len == 0);
    pp_job_unref(k);
  } else {
    free(empty);
  }
  pp_job_unref(NULL);
  pp_func_unref(f);
}

/* ---- pp_jobq ----------------------------------------------------------- */

/* q_is: the queue holds exactly want[0..n) in order, with consistent links
 * in both directions. */
static int q_is(const pp_jobq *q, pp_job **want, size_t n) {
  if (q->len != n)
    return 0;
  if (n == 0)
    return q->head == NULL && q->tail == NULL;
  if (q->head != want[0] || q->tail != want[n - 1])
    return 0;
  if (q->head->prev != NULL || q->tail->next != NULL)
    return 0;
  size_t i = 0;
  for (pp_job *j = q->head; j; j = j->next, i++) {
    if (i >= n || j != want[i])
      return 0;
    if (j->next && j->next->prev != j)
      return 0;
  }
  return i == n;
}

static void test_jobq(void) {
  enum { N = 6 };
  pp_func *f = pp_func_new("q", 1);
  pp_job *js[N];
  pp_jobq q = {NULL, NULL, 0};
  if (!CHECK(f != NULL))
    return;
  for (int i = 0; i < N; i++) {
    js[i] = mkjob(f, "x", 0);
    if (!CHECK(js[i] != NULL))
      return;
  }
  pp_job *a = js[0], *b = js[1], *c = js[2], *d = js[3], *e = js[4];

  CHECK(q_is(&q, NULL, 0));
  CHECK(pp_jobq_pop(&q) == NULL);
  CHECK(q.len == 0);

  pp_jobq_push_back(&q, a);
  CHECK(q_is(&q, (pp_job *[]){a}, 1));
  pp_jobq_push_back(&q, b);
  pp_jobq_push_back(&q, c);
  CHECK(q_is(&q, (pp_job *[]){a, b, c}, 3));

  /* remove from the middle */
  pp_jobq_remove(&q, b);
  CHECK(q_is(&q, (pp_job *[]){a, c}, 2));
  CHECK(b->next == NULL && b->prev == NULL);
  /* remove the head */
  pp_jobq_push_back(&q, b);
  pp_jobq_push_back(&q, d);
  CHECK(q_is(&q, (pp_job *[]){a, c, b, d}, 4));
  pp_jobq_remove(&q, a);
  CHECK(q_is(&q, (pp_job *[]){c, b, d}, 3));
  /* remove the tail */
  pp_jobq_remove(&q, d);
  CHECK(q_is(&q, (pp_job *[]){c, b}, 2));
  /* push_front */
  pp_jobq_push_front(&q, d);
  pp_jobq_push_front(&q, a);
  CHECK(q_is(&q, (pp_job *[]){a, d, c, b}, 4));
  pp_jobq_push_back(&q, e);
  CHECK(q_is(&q, (pp_job *[]){a, d, c, b, e}, 5));

  /* pop in order */
  CHECK(pp_jobq_pop(&q) == a);
  CHECK(a->next == NULL && a->prev == NULL);
  CHECK(q_is(&q, (pp_job *[]){d, c, b, e}, 4));
  CHECK(pp_jobq_pop(&q) == d);
  CHECK(pp_jobq_pop(&q) == c);
  CHECK(pp_jobq_pop(&q) == b);
  CHECK(q_is(&q, (pp_job *[]){e}, 1));
  /* removing the only element */
  pp_jobq_remove(&q, e);
  CHECK(q_is(&q, NULL, 0));
  CHECK(pp_jobq_pop(&q) == NULL);

  /* push_front onto an empty queue, then requeue order like the pool does:
   * take from one queue's tail and push to another's front */
  pp_jobq q2 = {NULL, NULL, 0};
  pp_jobq_push_front(&q, js[5]);
  CHECK(q_is(&q, (pp_job *[]){js[5]}, 1));
  for (int i = 0; i < 5; i++)
    pp_jobq_push_back(&q2, js[i]);
  pp_job *t;
  while ((t = q2.tail) != NULL) {
    pp_jobq_remove(&q2, t);
    pp_jobq_push_front(&q, t);
  }
  CHECK(q_is(&q2, NULL, 0));
  CHECK(q_is(&q, js, N));
  while (pp_jobq_pop(&q) != NULL)
    ;
  CHECK(q.len == 0);

  for (int i = 0; i < N; i++)
    pp_job_unref(js[i]);
  CHECK(atomic_load(&f->refs) == 1);
  pp_func_unref(f);
}

/* ---- logging and clock ------------------------------------------------- */

static int log_calls, log_last_level;
static char log_last[256];

static void log_sink(void *ctx, int level, const char *msg) {
  (*(int *)ctx)++;
  log_calls++;
  log_last_level = level;
  snprintf(log_last, sizeof log_last, "%s", msg);
}

static void test_log_clock(void) {
  int ctx = 0;
  pp_log_set(log_sink, &ctx);
  pp_log_set_level(PP_LOG_INFO);
  CHECK(!pp_log_enabled(PP_LOG_DEBUG));
  CHECK(pp_log_enabled(PP_LOG_INFO) && pp_log_enabled(PP_LOG_ERROR));
  pp_log(PP_LOG_DEBUG, "dropped %d", 1);
  CHECK(log_calls == 0);
  pp_log(PP_LOG_WARNING, "kept %d %s", 42, "x");
  CHECK(log_calls == 1 && ctx == 1);
  CHECK(log_last_level == PP_LOG_WARNING);
  CHECK(strcmp(log_last, "kept 42 x") == 0);
  pp_log_set(NULL, NULL);
  pp_log_set_level(PP_LOG_WARNING);
  CHECK(!pp_log_enabled(PP_LOG_INFO));

  uint64_t t0 = pp_now_ns(), t1 = pp_now_ns();
  CHECK(t0 > 0 && t1 >= t0);
}

int main(void) {
  test_buf();
  test_keyset_basic();
  test_keyset_collisions();
  test_keyset_random();
  test_func();
  test_job_refs();
  test_jobq();
  test_log_clock();
  return check_summary();
}
