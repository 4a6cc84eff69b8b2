/* test_engine.c — the real engine (thread, pool, scheduler) driving
 * tests/c/bin/fake_worker processes: many jobs, groups, crashes and retries,
 * malformed replies, cancel, pool resizing, shutdown, callbacks, spawn
 * failures. Every wait is bounded; every object is freed (make valgrind).
 * Run from the repository root. */
#include "check.h"

#include "engine.h"
#include "job.h"
#include "pp_common.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define WORKER "tests/c/bin/fake_worker"
#define SEC 1000000000ll
#define T_WAIT (10 * SEC) /* the bound on every wait that should succeed */

static char *const worker_argv[] = {WORKER, NULL};

/* ---- helpers ----------------------------------------------------------- */

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static double secs_since(uint64_t t0) {
  return (double)(pp_now_ns() - t0) / 1e9;
}

/* The optional completion hook: counts calls, by final status. */
typedef struct hook_ctx {
  atomic_int calls;
  atomic_int not_done; /* called before the job was DONE */
  atomic_int by_status[16];
} hook_ctx;

static void hook_fn(void *ctx, pp_job *j) {
  hook_ctx *h = ctx;
  atomic_fetch_add(&h->calls, 1);
  if (atomic_load(&j->state) != PP_JOB_DONE)
    atomic_fetch_add(&h->not_done, 1);
  if (j->status >= 0 && j->status < 16)
    atomic_fetch_add(&h->by_status[j->status], 1);
}

typedef struct cfg {
  char *const *argv;
  int nworkers, max_retries, queue_logs, restart;
  char *const *env;
  const char *cwd;
  hook_ctx *hook;
  uint64_t shm_size; /* 0: the default arena; UINT64_MAX: none */
} cfg;

/* The pass running now: 0 spawns every worker, 1 forks them from a fork
 * server (the fake worker's "template" mode, with the same arguments). */
static int fork_pass;

static pp_engine *start(cfg c) {
  pp_engine_opts o;
  pp_engine *e = NULL;
  char *tpl[16];
  memset(&o, 0, sizeof o);
  o.worker_argv = c.argv ? c.argv : worker_argv;
  if (fork_pass) {
    size_t k = 0;
    tpl[k++] = o.worker_argv[0];
    tpl[k++] = "template";
    for (size_t i = 1; o.worker_argv[i] != NULL && k < 15; i++)
      tpl[k++] = o.worker_argv[i];
    tpl[k] = NULL;
    o.template_argv = tpl;
  }
  o.worker_env = c.env;
  o.worker_cwd = c.cwd;
  o.nworkers = c.nworkers;
  o.max_retries = c.max_retries;
  o.queue_logs = c.queue_logs;
  o.restart = c.restart;
  o.shm_size = c.shm_size;
  if (c.hook != NULL) {
    o.on_complete = hook_fn;
    o.on_complete_ctx = c.hook;
  }
  int rc = pp_engine_new(&o, &e);
  CHECKF(rc == PP_OK && e != NULL, "pp_engine_new: %s", pp_strerror(rc));
  return rc == PP_OK ? e : NULL;
}

/* mkjob: a job whose pickled "arguments" are the command text. */
static pp_job *mkjob(pp_func *f, const char *cmd, uint32_t group) {
  size_t n = strlen(cmd);
  uint8_t *a = malloc(n ? n : 1);
  if (a == NULL)
    return NULL;
  memcpy(a, cmd, n);
  pp_job *j = pp_job_new(f, a, n, 0, group);
  if (j == NULL)
    free(a);
  return j;
}

/* submit: a new job, submitted; the caller owns one reference (or NULL). */
static pp_job *submit(pp_engine *e, pp_func *f, const char *cmd,
                      uint32_t group) {
  pp_job *j = mkjob(f, cmd, group);
  if (!CHECK(j != NULL))
    return NULL;
  int rc = pp_engine_submit(e, j);
  if (!CHECKF(rc == PP_OK, "submit '%s': %s", cmd, pp_strerror(rc))) {
    pp_job_unref(j);
    return NULL;
  }
  return j;
}

static void unref_all(pp_job **js, size_t n) {
  for (size_t i = 0; i < n; i++)
    pp_job_unref(js[i]);
}

static int result_is(const pp_job *j, const char *text) {
  size_t n = strlen(text);
  return j->result_len == n && (n == 0 || memcmp(j->result, text, n) == 0);
}

static int errmsg_has(const pp_job *j, const char *needle) {
  return j->errmsg != NULL && strstr(j->errmsg, needle) != NULL;
}

static const char *status_name(int s) {
  switch (s) {
  case PP_JOB_OK: return "OK";
  case PP_JOB_EXC: return "EXC";
  case PP_JOB_SERIAL: return "SERIAL";
  case PP_JOB_LOST: return "LOST";
  case PP_JOB_DESTROYED: return "DESTROYED";
  case PP_JOB_CANCELLED: return "CANCELLED";
  case PP_JOB_FAILED: return "FAILED";
  default: return "?";
  }
}

/* wait_ok: wait for j and check it ran to a result equal to text. */
static int wait_ok(pp_engine *e, pp_job *j, const char *text) {
  if (j == NULL)
    return 0;
  int rc = pp_engine_wait_job(e, j, T_WAIT);
  if (!CHECKF(rc == PP_OK, "job %llu ('%.*s') did not finish",
              (unsigned long long)j->id, (int)j->args_len, (char *)j->args))
    return 0;
  return CHECKF(j->status == PP_JOB_OK && result_is(j, text),
                "job %llu ('%.*s'): status %s, result '%.*s', want '%s' (%s)",
                (unsigned long long)j->id, (int)j->args_len, (char *)j->args,
                status_name(j->status), (int)j->result_len,
                j->result ? (char *)j->result : "", text,
                j->errmsg ? j->errmsg : "");
}

/* wait_nlive: poll until the engine reports n live workers. */
static int wait_nlive(pp_engine *e, int n, int64_t timeout_ns) {
  uint64_t t0 = pp_now_ns();
  pp_engine_stats st;
  for (;;) {
    pp_engine_get_stats(e, &st);
    if (st.nlive == n)
      return 1;
    if ((int64_t)(pp_now_ns() - t0) > timeout_ns)
      return 0;
    sleep_ms(2);
  }
}

/* wait_state: poll until j reaches state (e.g. RUNNING). */
static int wait_state(pp_job *j, int state, int64_t timeout_ns) {
  uint64_t t0 = pp_now_ns();
  while (atomic_load(&j->state) != state) {
    if ((int64_t)(pp_now_ns() - t0) > timeout_ns)
      return 0;
    sleep_ms(1);
  }
  return 1;
}

/* drain_logs: take every queued event (queue_logs engines) without waiting;
 * count log lines containing needle. Job events are unexpected here. */
static int drain_logs(pp_engine *e, const char *needle) {
  pp_event ev;
  int found = 0;
  for (int i = 0; i < 10000; i++) {
    if (pp_engine_next_event(e, 0, &ev) != PP_OK || ev.kind == PP_EV_NONE)
      break;
    if (ev.kind == PP_EV_LOG) {
      if (needle && strstr(ev.msg, needle))
        found++;
      free(ev.msg);
    } else if (ev.kind == PP_EV_JOB) {
      CHECK(!"unexpected job event");
      pp_engine_callback_done(e, ev.job);
      pp_job_unref(ev.job);
    }
  }
  return found;
}

/* ---- tests ------------------------------------------------------------- */

static void test_new_invalid(void) {
  pp_engine_opts o;
  pp_engine *e = NULL;
  char *const empty[] = {NULL};
  CHECK(pp_engine_new(NULL, &e) == PP_EINVAL);
  memset(&o, 0, sizeof o);
  CHECK(pp_engine_new(&o, &e) == PP_EINVAL); /* no argv */
  o.worker_argv = empty;
  CHECK(pp_engine_new(&o, &e) == PP_EINVAL); /* empty argv */
  o.worker_argv = worker_argv;
  o.nworkers = -1;
  CHECK(pp_engine_new(&o, &e) == PP_EINVAL);
  o.nworkers = 1;
  o.max_retries = -1;
  CHECK(pp_engine_new(&o, &e) == PP_EINVAL);
  CHECK(e == NULL);
  /* zero workers is a valid pool; it starts and stops cleanly */
  o.nworkers = 0;
  o.max_retries = 0;
  CHECK(pp_engine_new(&o, &e) == PP_OK && e != NULL);
  if (e != NULL) {
    pp_engine_stats st;
    pp_engine_get_stats(e, &st);
    CHECK(st.nworkers == 0 && st.nlive == 0 && st.queued == 0);
    CHECK(pp_engine_wait_group(e, -1, 0) == PP_OK);
    pp_engine_free(e);
  }
  pp_engine_free(NULL);
}

/* 1000 tiny jobs over two workers: each result exactly once and right. */
static void test_echo_many(void) {
  enum { N = 1000 };
  static pp_job *js[N];
  static hook_ctx hook;
  memset(&hook, 0, sizeof hook); /* it ran in the other pass too */
  char cmd[64], want[64];
  pp_engine_stats st;
  pp_engine *e = start((cfg){.nworkers = 2, .hook = &hook});
  pp_func *f = pp_func_new("echo-many", 9);
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  uint64_t gen0 = pp_engine_generation(e);
  int submitted = 0, ids_ok = 1;
  for (int i = 0; i < N; i++) {
    snprintf(cmd, sizeof cmd, "echo:r%d", i);
    js[i] = submit(e, f, cmd, (uint32_t)(i % 3));
    if (js[i] == NULL)
      break;
    submitted++;
    if (i > 0 && js[i]->id <= js[i - 1]->id)
      ids_ok = 0;
  }
  CHECK(submitted == N);
  CHECK(ids_ok);
  CHECK(pp_engine_wait_group(e, -1, T_WAIT) == PP_OK);
  int bad = 0, notdone = 0, badattempt = 0, badrt = 0;
  for (int i = 0; i < submitted; i++) {
    snprintf(want, sizeof want, "r%d", i);
    if (!pp_job_done(js[i]))
      notdone++;
    else if (js[i]->status != PP_JOB_OK || !result_is(js[i], want))
      bad++;
    if (js[i]->attempt != 1)
      badattempt++;
    if (js[i]->runtime_ns != 1000)
      badrt++;
  }
  CHECKF(notdone == 0, "%d jobs not done", notdone);
  CHECKF(bad == 0, "%d wrong results", bad);
  CHECK(badattempt == 0);
  CHECK(badrt == 0);
  /* every completion counted once */
  CHECKF(pp_engine_generation(e) - gen0 == (uint64_t)N, "generation +%llu",
         (unsigned long long)(pp_engine_generation(e) - gen0));
  pp_engine_get_stats(e, &st);
  CHECK(st.njobs == (uint64_t)N);
  CHECK(st.time_ns == (uint64_t)N * 1000);
  CHECK(st.queued == 0 && st.running == 0);
  CHECK(st.nworkers == 2);
  CHECK(wait_nlive(e, 2, T_WAIT));
  int pids[8] = {0};
  uint64_t counts[8] = {0};
  int np = pp_engine_worker_pids(e, pids, counts, 8);
  CHECK(np == 2 && pids[0] > 0 && pids[1] > 0 && pids[0] != pids[1]);
  /* no worker died, so the per-worker counts add up to every result */
  CHECKF(np == 2 && counts[0] + counts[1] == (uint64_t)N,
         "per-worker results %llu + %llu", (unsigned long long)counts[0],
         (unsigned long long)counts[1]);
  CHECK(pp_engine_worker_pids(e, pids, NULL, 1) == 1);
  /* the completion hook saw every job once, each already DONE */
  CHECKF(atomic_load(&hook.calls) == N, "hook called %d times",
         atomic_load(&hook.calls));
  CHECK(atomic_load(&hook.by_status[PP_JOB_OK]) == N);
  CHECK(atomic_load(&hook.not_done) == 0);
  /* waiting on a finished job returns at once */
  if (submitted > 0)
    CHECK(pp_engine_wait_job(e, js[0], 0) == PP_OK);
  unref_all(js, (size_t)submitted);
out:
  pp_engine_free(e);
  pp_func_unref(f);
}

/* wait_group waits for one group only; a long job elsewhere does not hold
 * it up. Also: big results and arguments, exceptions, serial errors. */
static void test_groups_and_payloads(void) {
  enum { NE = 10 };
  pp_job *slow = NULL, *echo[NE] = {0};
  pp_engine *e = start((cfg){.nworkers = 2});
  pp_func *f = pp_func_new("groups", 6);
  int ne = 0;
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  slow = submit(e, f, "sleep:700", 3);
  CHECK(slow != NULL && wait_state(slow, PP_JOB_RUNNING, T_WAIT));
  for (int i = 0; i < NE; i++) {
    char cmd[32];
    snprintf(cmd, sizeof cmd, "echo:g%d", i);
    if ((echo[i] = submit(e, f, cmd, 1)) != NULL)
      ne++;
  }
  CHECK(pp_engine_wait_group(e, 3, 10 * 1000000) == PP_ETIMEDOUT);
  CHECK(pp_engine_wait_group(e, 1, T_WAIT) == PP_OK);
  CHECK(slow == NULL || !pp_job_done(slow)); /* group 1 did not wait for it */
  for (int i = 0; i < ne; i++) {
    char want[32];
    snprintf(want, sizeof want, "g%d", i);
    CHECK(pp_job_done(echo[i]) && echo[i]->status == PP_JOB_OK &&
          result_is(echo[i], want));
  }
  CHECK(pp_engine_wait_group(e, 77, 0) == PP_OK);  /* never used */
  CHECK(pp_engine_wait_group(e, 999999, 0) == PP_OK);
  uint64_t gen = pp_engine_generation(e);
  CHECK(pp_engine_wait_generation(e, gen, T_WAIT) == PP_OK); /* slow ends */
  CHECK(pp_engine_wait_group(e, -1, T_WAIT) == PP_OK);
  CHECK(slow != NULL && pp_job_done(slow) && slow->status == PP_JOB_OK &&
        result_is(slow, "slept") && slow->runtime_ns >= 600000000ull);
  CHECK(pp_engine_wait_generation(e, pp_engine_generation(e), 1000000) ==
        PP_ETIMEDOUT);

  /* results larger than one pipe read, arguments larger than the inline
   * copy limit of the writer */
  {
    pp_job *big = submit(e, f, "big:300000", 0);
    size_t n = 100000;
    char *cmd = malloc(n + 6), *want = malloc(n + 1);
    pp_job *bigarg = NULL;
    if (cmd && want) {
      memcpy(cmd, "echo:", 5);
      for (size_t i = 0; i < n; i++)
        cmd[5 + i] = want[i] = (char)('a' + i % 26);
      cmd[5 + n] = want[n] = 0;
      bigarg = submit(e, f, cmd, 0);
    }
    if (big && CHECK(pp_engine_wait_job(e, big, T_WAIT) == PP_OK)) {
      int ok = big->status == PP_JOB_OK && big->result_len == 300000;
      for (size_t i = 0; ok && i < big->result_len; i++)
        ok = big->result[i] == (uint8_t)(i * 7);
      CHECK(ok);
    }
    if (bigarg)
      wait_ok(e, bigarg, want);
    pp_job_unref(big);
    pp_job_unref(bigarg);
    free(cmd);
    free(want);
  }
  /* worker-side failures that are ordinary results */
  {
    pp_job *x = submit(e, f, "exc:boom", 0);
    pp_job *s = submit(e, f, "serial:nope", 0);
    pp_job *u = submit(e, f, "no-such-command", 0);
    pp_job *z = submit(e, f, "echo:", 0);
    if (x && CHECK(pp_engine_wait_job(e, x, T_WAIT) == PP_OK))
      CHECK(x->status == PP_JOB_EXC && result_is(x, "boom") &&
            x->errmsg == NULL);
    if (s && CHECK(pp_engine_wait_job(e, s, T_WAIT) == PP_OK))
      CHECK(s->status == PP_JOB_SERIAL && result_is(s, "nope"));
    if (u && CHECK(pp_engine_wait_job(e, u, T_WAIT) == PP_OK))
      CHECK(u->status == PP_JOB_EXC && result_is(u, "unknown command"));
    if (z)
      wait_ok(e, z, ""); /* empty result */
    pp_job_unref(x);
    pp_job_unref(s);
    pp_job_unref(u);
    pp_job_unref(z);
  }
  /* a second function on the same workers: FUNC is sent before its jobs */
  {
    pp_func *g = pp_func_new("another function", 16);
    if (CHECK(g != NULL)) {
      pp_job *a = submit(e, g, "echo:second", 5);
      pp_job *b = submit(e, f, "echo:first", 5);
      if (a)
        wait_ok(e, a, "second");
      if (b)
        wait_ok(e, b, "first");
      pp_job_unref(a);
      pp_job_unref(b);
      pp_func_unref(g);
    }
  }
out:
  unref_all(echo, (size_t)NE);
  pp_job_unref(slow);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* More functions than a worker's cache holds (PP__KEYSET_MAX = 4096): the
 * engine resets the worker's cache (FUNCF_RESET) and sends FUNC again for
 * what it needs; the fake worker answers "unknown function" otherwise. */
static void test_func_cache_reset(void) {
  enum { NF = 4200 };
  static pp_func *fs[NF];
  static pp_job *js[NF];
  pp_engine *e = start((cfg){.nworkers = 1});
  int n = 0, nf = 0;
  if (e == NULL)
    return;
  for (int i = 0; i < NF; i++) {
    char blob[32], cmd[32];
    snprintf(blob, sizeof blob, "function %d", i);
    if ((fs[nf] = pp_func_new(blob, strlen(blob))) == NULL)
      break;
    nf++;
    snprintf(cmd, sizeof cmd, "echo:%d", i);
    if ((js[n] = submit(e, fs[i], cmd, 0)) != NULL)
      n++;
  }
  CHECK(nf == NF && n == NF);
  /* and the first functions again, after the reset */
  pp_job *again[10] = {0};
  for (int i = 0; i < 10 && i < nf; i++)
    again[i] = submit(e, fs[i], "echo:again", 0);
  CHECK(pp_engine_wait_group(e, -1, T_WAIT) == PP_OK);
  int bad = 0;
  for (int i = 0; i < n; i++) {
    char want[32];
    snprintf(want, sizeof want, "%d", i);
    if (!pp_job_done(js[i]) || js[i]->status != PP_JOB_OK ||
        !result_is(js[i], want))
      bad++;
  }
  for (int i = 0; i < 10; i++)
    if (again[i] == NULL || !pp_job_done(again[i]) ||
        again[i]->status != PP_JOB_OK || !result_is(again[i], "again"))
      bad++;
  CHECKF(bad == 0, "%d jobs failed (unknown function?)", bad);
  unref_all(again, 10);
  unref_all(js, (size_t)n);
  pp_engine_free(e);
  for (int i = 0; i < nf; i++)
    pp_func_unref(fs[i]);
}

/* A worker exiting mid-job: the job is re-run max_retries times on fresh
 * workers, then fails LOST; the rest carries on. */
static void test_exit_lost(int max_retries) {
  enum { NB = 5 };
  pp_job *bad = NULL, *after[NB] = {0};
  hook_ctx hook;
  memset(&hook, 0, sizeof hook);
  pp_engine *e = start((cfg){.nworkers = 1, .max_retries = max_retries,
                             .queue_logs = 1, .hook = &hook});
  pp_func *f = pp_func_new("exit-lost", 9);
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  bad = submit(e, f, "exit:3", 0);
  for (int i = 0; i < NB; i++) {
    char cmd[32];
    snprintf(cmd, sizeof cmd, "echo:a%d", i);
    after[i] = submit(e, f, cmd, 0);
  }
  if (bad && CHECK(pp_engine_wait_job(e, bad, T_WAIT) == PP_OK)) {
    CHECKF(bad->status == PP_JOB_LOST, "status %s", status_name(bad->status));
    CHECKF(bad->attempt == (uint32_t)max_retries + 1,
           "max_retries %d: %u attempts", max_retries, bad->attempt);
    CHECK(bad->crashes == (uint32_t)max_retries + 1);
    CHECK(bad->exitstatus == 3 && bad->termsignal == 0);
    CHECKF(errmsg_has(bad, "exit status 3"), "errmsg: %s",
           bad->errmsg ? bad->errmsg : "(null)");
    CHECK(bad->result == NULL);
  }
  for (int i = 0; i < NB; i++) {
    char want[32];
    snprintf(want, sizeof want, "a%d", i);
    if (after[i]) {
      wait_ok(e, after[i], want);
      CHECK(after[i]->crashes == 0);
    }
  }
  CHECK(pp_engine_wait_group(e, -1, T_WAIT) == PP_OK);
  CHECK(wait_nlive(e, 1, T_WAIT));
  pp_engine_stats st;
  pp_engine_get_stats(e, &st);
  CHECK(st.running == 0 && st.queued == 0);
  CHECK(st.njobs == NB); /* the lost job is not a result */
  /* retries do not complete the job: one hook call, when it is LOST */
  CHECK(atomic_load(&hook.calls) == NB + 1);
  CHECK(atomic_load(&hook.by_status[PP_JOB_LOST]) == 1);
  /* the engine said what happened, through the event queue */
  CHECK(drain_logs(e, "exit status 3") >= max_retries + 1);
out:
  pp_job_unref(bad);
  unref_all(after, NB);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* A worker killed by a signal; later jobs still run, the pool recovers. */
static void test_segv(void) {
  enum { NB = 20 };
  pp_job *bad = NULL, *after[NB] = {0};
  pp_engine *e = start((cfg){.nworkers = 2});
  pp_func *f = pp_func_new("segv", 4);
  char sig[32];
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  CHECK(wait_nlive(e, 2, T_WAIT));
  bad = submit(e, f, "segv", 0);
  if (bad && CHECK(pp_engine_wait_job(e, bad, T_WAIT) == PP_OK)) {
    snprintf(sig, sizeof sig, "signal %d", SIGSEGV);
    CHECKF(bad->status == PP_JOB_LOST, "status %s", status_name(bad->status));
    CHECK(bad->attempt == 1);
    CHECK(bad->termsignal == SIGSEGV);
    CHECKF(errmsg_has(bad, sig), "errmsg: %s",
           bad->errmsg ? bad->errmsg : "(null)");
  }
  for (int i = 0; i < NB; i++) {
    char cmd[32];
    snprintf(cmd, sizeof cmd, "echo:s%d", i);
    after[i] = submit(e, f, cmd, 0);
  }
  for (int i = 0; i < NB; i++) {
    char want[32];
    snprintf(want, sizeof want, "s%d", i);
    wait_ok(e, after[i], want);
  }
  CHECK(wait_nlive(e, 2, T_WAIT));
out:
  pp_job_unref(bad);
  unref_all(after, NB);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* A worker that answers with bytes that are no frame, or with a frame that
 * does not fit (wrong job id, undefined status), is killed; its job ends one
 * way or another and the engine goes on. */
static void test_malformed_reply(const char *cmd) {
  enum { NB = 10 };
  pp_job *bad = NULL, *after[NB] = {0};
  pp_engine *e = start((cfg){.nworkers = 1, .max_retries = 1});
  pp_func *f = pp_func_new(cmd, strlen(cmd));
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  bad = submit(e, f, cmd, 0);
  if (bad && CHECKF(pp_engine_wait_job(e, bad, T_WAIT) == PP_OK,
                    "'%s' job never finished", cmd)) {
    /* the worker was killed with the job on it: charged as a crash */
    CHECKF(bad->status == PP_JOB_LOST, "'%s': status %s", cmd,
           status_name(bad->status));
    CHECK(bad->attempt == 2);
    CHECK(bad->termsignal == SIGKILL);
  }
  for (int i = 0; i < NB; i++) {
    char c[32];
    snprintf(c, sizeof c, "echo:m%d", i);
    after[i] = submit(e, f, c, 0);
  }
  for (int i = 0; i < NB; i++) {
    char want[32];
    snprintf(want, sizeof want, "m%d", i);
    wait_ok(e, after[i], want);
  }
  CHECK(wait_nlive(e, 1, T_WAIT));
out:
  pp_job_unref(bad);
  unref_all(after, NB);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* Cancel takes a queued job, never a running or finished one. */
static void test_cancel(void) {
  pp_job *busy = NULL, *queued = NULL, *running = NULL;
  static hook_ctx hook;
  memset(&hook, 0, sizeof hook); /* it ran in the other pass too */
  pp_engine *e = start((cfg){.nworkers = 1, .hook = &hook});
  pp_func *f = pp_func_new("cancel", 6);
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  busy = submit(e, f, "sleep:300", 0);
  CHECK(busy && wait_state(busy, PP_JOB_RUNNING, T_WAIT));
  queued = submit(e, f, "echo:never", 2);
  if (queued) {
    uint64_t gen = pp_engine_generation(e);
    CHECK(atomic_load(&queued->state) == PP_JOB_QUEUED);
    CHECK(pp_engine_cancel(e, queued) == 1);
    CHECK(pp_job_done(queued));
    CHECK(queued->status == PP_JOB_CANCELLED);
    CHECK(queued->result == NULL);
    CHECK(pp_engine_generation(e) == gen + 1);
    CHECK(pp_engine_cancel(e, queued) == 0); /* already done */
    CHECK(pp_engine_wait_group(e, 2, 0) == PP_OK);
  }
  CHECK(busy && pp_engine_cancel(e, busy) == 0); /* running */
  if (busy)
    wait_ok(e, busy, "slept");
  CHECK(busy && pp_engine_cancel(e, busy) == 0); /* done */

  running = submit(e, f, "sleep:100", 0);
  if (running && CHECK(wait_state(running, PP_JOB_RUNNING, T_WAIT))) {
    CHECK(pp_engine_cancel(e, running) == 0);
    wait_ok(e, running, "slept");
  }
  CHECK(pp_engine_wait_group(e, -1, T_WAIT) == PP_OK);
  pp_engine_stats st;
  pp_engine_get_stats(e, &st);
  CHECK(st.njobs == 2 && st.queued == 0 && st.running == 0);
  CHECK(atomic_load(&hook.calls) == 3);
  CHECK(atomic_load(&hook.by_status[PP_JOB_CANCELLED]) == 1);
  CHECK(atomic_load(&hook.by_status[PP_JOB_OK]) == 2);
out:
  pp_job_unref(busy);
  pp_job_unref(queued);
  pp_job_unref(running);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* Growing and shrinking the pool under load: every job completes exactly
 * once, and the pool converges to the target. */
static void test_resize(void) {
  enum { N = 200 };
  static pp_job *js[N];
  pp_engine_stats st;
  pp_engine *e = start((cfg){.nworkers = 1});
  pp_func *f = pp_func_new("resize", 6);
  int n = 0;
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  CHECK(pp_engine_set_nworkers(e, -1) == PP_EINVAL);
  CHECK(wait_nlive(e, 1, T_WAIT));
  uint64_t gen0 = pp_engine_generation(e);
  for (int i = 0; i < N; i++)
    if ((js[n] = submit(e, f, "sleep:2", 0)) != NULL)
      n++;
  CHECK(pp_engine_set_nworkers(e, 3) == PP_OK);
  CHECKF(wait_nlive(e, 3, T_WAIT), "pool did not grow to 3");
  pp_engine_get_stats(e, &st);
  CHECK(st.nworkers == 3);
  CHECK(pp_engine_set_nworkers(e, 1) == PP_OK);
  CHECK(pp_engine_wait_group(e, -1, T_WAIT) == PP_OK);
  int bad = 0, retried = 0;
  for (int i = 0; i < n; i++) {
    if (!pp_job_done(js[i]) || js[i]->status != PP_JOB_OK ||
        !result_is(js[i], "slept"))
      bad++;
    if (js[i]->attempt != 1)
      retried++;
  }
  CHECKF(bad == 0, "%d of %d jobs wrong", bad, n);
  CHECKF(retried == 0, "%d jobs ran twice", retried); /* retiring is clean */
  CHECK(pp_engine_generation(e) - gen0 == (uint64_t)n);
  CHECKF(wait_nlive(e, 1, T_WAIT), "pool did not shrink to 1");
  pp_engine_get_stats(e, &st);
  CHECK(st.nworkers == 1 && st.njobs == (uint64_t)n);

  /* zero workers: jobs wait (they do not fail) until the pool grows */
  CHECK(pp_engine_set_nworkers(e, 0) == PP_OK);
  CHECK(wait_nlive(e, 0, T_WAIT));
  pp_job *w = submit(e, f, "echo:later", 0);
  if (w) {
    CHECK(pp_engine_wait_job(e, w, 100 * 1000000) == PP_ETIMEDOUT);
    CHECK(!pp_job_done(w));
    pp_engine_get_stats(e, &st);
    CHECK(st.queued == 1);
    CHECK(pp_engine_set_nworkers(e, 2) == PP_OK);
    wait_ok(e, w, "later");
    CHECK(wait_nlive(e, 2, T_WAIT));
    pp_job_unref(w);
  }
out:
  unref_all(js, (size_t)n);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* Shutdown with jobs queued and running: all end DESTROYED, promptly. */
static void test_shutdown(void) {
  enum { NR = 2, NQ = 10 };
  pp_job *js[NR + NQ] = {0};
  static hook_ctx hook;
  memset(&hook, 0, sizeof hook); /* it ran in the other pass too */
  pp_engine_stats st;
  pp_engine *e = start((cfg){.nworkers = NR, .hook = &hook});
  pp_func *f = pp_func_new("shutdown", 8);
  int n = 0;
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  for (int i = 0; i < NR; i++)
    if ((js[n] = submit(e, f, "sleep:5000", 0)) != NULL)
      n++;
  for (int i = 0; i < NQ; i++)
    if ((js[n] = submit(e, f, "echo:q", 1)) != NULL)
      n++;
  uint64_t t0 = pp_now_ns();
  for (;;) {
    pp_engine_get_stats(e, &st);
    if (st.running == NR || secs_since(t0) > 10)
      break;
    sleep_ms(2);
  }
  CHECK(st.running == NR && st.queued == NQ);
  t0 = pp_now_ns();
  pp_engine_shutdown(e);
  double took = secs_since(t0);
  CHECKF(took < 3.0, "shutdown took %.2f s", took);
  int bad = 0;
  for (int i = 0; i < n; i++)
    if (!pp_job_done(js[i]) || js[i]->status != PP_JOB_DESTROYED ||
        js[i]->errmsg == NULL || js[i]->result != NULL)
      bad++;
  CHECKF(bad == 0, "%d of %d jobs not DESTROYED", bad, n);
  CHECK(atomic_load(&hook.calls) == n);
  CHECK(atomic_load(&hook.by_status[PP_JOB_DESTROYED]) == n);
  CHECK(pp_engine_wait_group(e, -1, 0) == PP_OK);
  pp_engine_get_stats(e, &st);
  CHECK(st.nlive == 0 && st.queued == 0 && st.running == 0);
  int pids[4];
  CHECK(pp_engine_worker_pids(e, pids, NULL, 4) == 0);

  /* after shutdown: nothing is accepted, everything is harmless */
  pp_job *late = mkjob(f, "echo:late", 0);
  if (CHECK(late != NULL)) {
    CHECK(pp_engine_submit(e, late) == PP_ECLOSED);
    CHECK(!pp_job_done(late) && atomic_load(&late->refs) == 1);
    pp_job_unref(late);
  }
  CHECK(pp_engine_set_nworkers(e, 4) == PP_ECLOSED);
  CHECK(n == 0 || pp_engine_cancel(e, js[0]) == 0);
  pp_event ev;
  CHECK(pp_engine_next_event(e, 0, &ev) == PP_ECLOSED);
  pp_engine_shutdown(e); /* idempotent */
out:
  unref_all(js, (size_t)n);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* Shutdown while results are streaming in: every job ends exactly once (OK
 * or DESTROYED), and results still in a dying worker's pipe are not taken
 * for a protocol error (no "malformed frame" ERROR log on a clean destroy). */
static void test_shutdown_streaming(void) {
  enum { N = 3000, ROUNDS = 3 };
  static pp_job *js[N];
  int malformed = 0;
  for (int r = 0; r < ROUNDS; r++) {
    hook_ctx hook;
    memset(&hook, 0, sizeof hook);
    pp_engine *e = start((cfg){.nworkers = 2, .queue_logs = 1, .hook = &hook});
    pp_func *f = pp_func_new("streaming", 9);
    int n = 0;
    if (e == NULL || !CHECK(f != NULL)) {
      pp_engine_free(e);
      pp_func_unref(f);
      return;
    }
    for (int i = 0; i < N; i++)
      if ((js[n] = submit(e, f, "echo:s", 0)) != NULL)
        n++;
    /* wait for the first results, then pull the plug mid-stream */
    CHECK(pp_engine_wait_generation(e, 0, T_WAIT) == PP_OK);
    pp_engine_shutdown(e);
    int bad = 0;
    for (int i = 0; i < n; i++)
      if (!pp_job_done(js[i]) ||
          !((js[i]->status == PP_JOB_OK && result_is(js[i], "s")) ||
            js[i]->status == PP_JOB_DESTROYED))
        bad++;
    CHECKF(bad == 0, "%d of %d jobs neither OK nor DESTROYED", bad, n);
    CHECKF(atomic_load(&hook.calls) == n, "hook called %d times for %d jobs",
           atomic_load(&hook.calls), n);
    malformed += drain_logs(e, "malformed");
    unref_all(js, (size_t)n);
    pp_engine_free(e);
    pp_func_unref(f);
  }
  CHECKF(malformed == 0,
         "%d 'malformed frame' errors logged while shutting down", malformed);
}

/* pp_engine_free alone (no explicit shutdown) with work in flight. */
static void test_free_busy(void) {
  pp_job *a = NULL, *b = NULL;
  pp_engine *e = start((cfg){.nworkers = 1});
  pp_func *f = pp_func_new("free-busy", 9);
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  a = submit(e, f, "sleep:3000", 0);
  b = submit(e, f, "echo:b", 0);
  CHECK(a && wait_state(a, PP_JOB_RUNNING, T_WAIT));
  uint64_t t0 = pp_now_ns();
  pp_engine_free(e);
  e = NULL;
  CHECK(secs_since(t0) < 3.0);
  CHECK(a && pp_job_done(a) && a->status == PP_JOB_DESTROYED);
  CHECK(b && pp_job_done(b) && b->status == PP_JOB_DESTROYED);
out:
  pp_job_unref(a);
  pp_job_unref(b);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* Completion through the callback queue: next_event hands the job over,
 * wait_group waits for callback_done; after shutdown next_event drains and
 * then says ECLOSED. */
static void test_callback(void) {
  static int marker, marker2;
  pp_job *j = NULL, *k = NULL;
  pp_event ev;
  pp_engine *e = start((cfg){.nworkers = 1, .queue_logs = 1});
  pp_func *f = pp_func_new("callback", 8);
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  /* once the startup log lines are taken, there is nothing: kind NONE */
  CHECK(wait_nlive(e, 1, T_WAIT));
  sleep_ms(20);
  drain_logs(e, NULL);
  CHECK(pp_engine_next_event(e, 0, &ev) == PP_OK && ev.kind == PP_EV_NONE);
  CHECK(pp_engine_next_event(e, 1000000, &ev) == PP_OK &&
        ev.kind == PP_EV_NONE);
  j = submit(e, f, "sleep:100", 4);
  if (j == NULL)
    goto out;
  CHECK(pp_engine_want_callback(e, j, &marker) == 1);
  CHECK(pp_engine_want_callback(e, j, &marker2) == 0); /* once */
  CHECK(j->udata == &marker);
  CHECK(pp_engine_wait_group(e, 4, 20 * 1000000) == PP_ETIMEDOUT);

  pp_job *got = NULL;
  uint64_t t0 = pp_now_ns();
  while (got == NULL && secs_since(t0) < 10) {
    if (pp_engine_next_event(e, SEC, &ev) != PP_OK)
      break;
    if (ev.kind == PP_EV_LOG)
      free(ev.msg);
    else if (ev.kind == PP_EV_JOB)
      got = ev.job;
  }
  if (CHECK(got == j)) {
    CHECK(pp_job_done(j) && j->status == PP_JOB_OK && result_is(j, "slept"));
    CHECK(got->udata == &marker);
    /* done, but the callback has not run: the group is not finished */
    CHECK(pp_engine_wait_group(e, 4, 20 * 1000000) == PP_ETIMEDOUT);
    CHECK(pp_engine_wait_group(e, -1, 0) == PP_ETIMEDOUT);
    pp_engine_callback_done(e, got);
    CHECK(pp_engine_wait_group(e, 4, T_WAIT) == PP_OK);
    CHECK(pp_engine_wait_group(e, -1, T_WAIT) == PP_OK);
    pp_job_unref(got); /* the event's reference */
  }
  CHECK(pp_engine_want_callback(e, j, &marker2) == 0); /* already done */

  /* a callback job destroyed by shutdown still arrives as an event */
  k = submit(e, f, "sleep:5000", 0);
  if (k) {
    CHECK(pp_engine_want_callback(e, k, &marker2) == 1);
    CHECK(wait_state(k, PP_JOB_RUNNING, T_WAIT));
  }
  pp_engine_shutdown(e);
  int jobs = 0, closed = 0;
  for (int i = 0; i < 10000; i++) {
    int rc = pp_engine_next_event(e, SEC, &ev);
    if (rc == PP_ECLOSED) {
      closed = 1;
      break;
    }
    if (rc != PP_OK || ev.kind == PP_EV_NONE)
      break; /* a timeout here is a failure */
    if (ev.kind == PP_EV_LOG) {
      free(ev.msg);
    } else {
      jobs++;
      CHECK(ev.job == k && k->status == PP_JOB_DESTROYED &&
            ev.job->udata == &marker2);
      pp_engine_callback_done(e, ev.job);
      pp_job_unref(ev.job);
    }
  }
  CHECK(jobs == (k ? 1 : 0));
  CHECK(closed);
  CHECK(pp_engine_next_event(e, 0, &ev) == PP_ECLOSED);
  CHECK(pp_engine_wait_group(e, -1, 0) == PP_OK);
out:
  pp_job_unref(j);
  pp_job_unref(k);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* worker_env and worker_cwd reach the worker. */
static void test_env_cwd(void) {
  char path[PATH_MAX], *argv[2];
  char *env[] = {"PP_TEST_VAR=hello-env", NULL};
  pp_job *a = NULL, *b = NULL;
  pp_engine *e = NULL;
  pp_func *f = pp_func_new("env", 3);
  if (!CHECK(realpath(WORKER, path) != NULL) || !CHECK(f != NULL))
    goto out;
  argv[0] = path;
  argv[1] = NULL;
  e = start((cfg){.argv = argv, .nworkers = 1, .env = env, .cwd = "/"});
  if (e == NULL)
    goto out;
  a = submit(e, f, "env:PP_TEST_VAR", 0);
  b = submit(e, f, "cwd", 0);
  if (a)
    wait_ok(e, a, "hello-env");
  if (b)
    wait_ok(e, b, "/");
out:
  pp_job_unref(a);
  pp_job_unref(b);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* Workers that die before HELLO: the engine backs off and, after
 * PP__MAX_SPAWN_FAILS early deaths in a row, fails the queued jobs. */
static void test_spawn_die_at_start(void) {
  char *argv[] = {WORKER, "die-at-start", NULL};
  pp_job *a = NULL, *b = NULL;
  pp_engine *e = start((cfg){.argv = argv, .nworkers = 1, .queue_logs = 1});
  pp_func *f = pp_func_new("die", 3);
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  uint64_t t0 = pp_now_ns();
  a = submit(e, f, "echo:x", 0);
  if (a && CHECKF(pp_engine_wait_job(e, a, T_WAIT) == PP_OK,
                  "die-at-start: job still waiting after 10 s")) {
    CHECKF(a->status == PP_JOB_FAILED, "status %s", status_name(a->status));
    CHECKF(errmsg_has(a, "no worker process could be started"), "errmsg: %s",
           a->errmsg ? a->errmsg : "(null)");
    CHECK(a->crashes == 0); /* early deaths are not the job's fault */
  }
  double took = secs_since(t0);
  CHECKF(took < 8.0, "took %.2f s", took);
  /* a job submitted after giving up also fails, without a long wait */
  b = submit(e, f, "echo:y", 0);
  if (b && CHECK(pp_engine_wait_job(e, b, T_WAIT) == PP_OK))
    CHECKF(b->status == PP_JOB_FAILED, "status %s", status_name(b->status));
  CHECK(drain_logs(e, "before it was ready") >= 1);
out:
  pp_job_unref(a);
  pp_job_unref(b);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* Defect: a crashing job took innocent jobs down. The worker holds the
 * results of finished jobs back (held:), then one job exits: only that job
 * is charged and fails; the held jobs run again uncharged and succeed. */
static void test_crash_blames_running_job(void) {
  enum { NB = 20 };
  pp_job *warm = NULL, *bad = NULL, *before[NB] = {0}, *after[NB] = {0};
  pp_engine *e = start((cfg){.nworkers = 1, .max_retries = 2,
                             .queue_logs = 1});
  pp_func *f = pp_func_new("crash-blame", 11);
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  /* learn the run time, so the next jobs are pipelined to the worker */
  warm = submit(e, f, "echo:w", 0);
  if (warm)
    wait_ok(e, warm, "w");
  char cmd[32];
  for (int i = 0; i < NB; i++) {
    snprintf(cmd, sizeof cmd, "held:b%d", i);
    before[i] = submit(e, f, cmd, 0);
  }
  bad = submit(e, f, "exit:1", 0);
  for (int i = 0; i < NB; i++) {
    snprintf(cmd, sizeof cmd, "held:a%d", i);
    after[i] = submit(e, f, cmd, 0);
  }
  if (bad && CHECK(pp_engine_wait_job(e, bad, T_WAIT) == PP_OK)) {
    CHECKF(bad->status == PP_JOB_LOST, "status %s", status_name(bad->status));
    CHECKF(bad->crashes == 3, "charged %u crashes", bad->crashes);
    CHECKF(errmsg_has(bad, "job"), "errmsg: %s",
           bad->errmsg ? bad->errmsg : "(null)");
  }
  int failed = 0, charged = 0;
  for (int i = 0; i < NB; i++) {
    char want[32];
    snprintf(want, sizeof want, "b%d", i);
    if (before[i] && pp_engine_wait_job(e, before[i], T_WAIT) == PP_OK) {
      failed += before[i]->status != PP_JOB_OK || !result_is(before[i], want);
      charged += before[i]->crashes != 0;
    }
    snprintf(want, sizeof want, "a%d", i);
    if (after[i] && pp_engine_wait_job(e, after[i], T_WAIT) == PP_OK) {
      failed += after[i]->status != PP_JOB_OK || !result_is(after[i], want);
      charged += after[i]->crashes != 0;
    }
  }
  CHECKF(failed == 0, "%d innocent jobs failed", failed);
  CHECKF(charged == 0, "%d innocent jobs were charged a crash", charged);
  drain_logs(e, NULL);
out:
  pp_job_unref(warm);
  pp_job_unref(bad);
  unref_all(before, NB);
  unref_all(after, NB);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* Defect: workers killed while starting killed the pool. Every new worker
 * is SIGKILLed before it can say HELLO, over and over for 1.5 s; queued
 * jobs must wait (not fail) and run once the kills stop. */
static void test_killed_while_starting(void) {
  enum { NJ = 50 };
  pp_job *js[NJ] = {0};
  char *argv[] = {WORKER, "slow-start", NULL};
  pp_engine *e = start((cfg){.argv = argv, .nworkers = 2, .queue_logs = 1});
  pp_func *f = pp_func_new("killed-start", 12);
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  for (int i = 0; i < NJ; i++) {
    char cmd[32];
    snprintf(cmd, sizeof cmd, "echo:k%d", i);
    js[i] = submit(e, f, cmd, 0);
  }
  uint64_t t0 = pp_now_ns();
  int kills = 0;
  while (secs_since(t0) < 1.5) {
    int pids[8];
    int n = pp_engine_worker_pids(e, pids, NULL, 8);
    for (int i = 0; i < n; i++)
      if (kill(pids[i], SIGKILL) == 0)
        kills++;
    sleep_ms(5);
  }
  CHECKF(kills >= 5, "only %d kills", kills);
  int ok = 0;
  for (int i = 0; i < NJ; i++) {
    char want[32];
    snprintf(want, sizeof want, "k%d", i);
    if (js[i] && pp_engine_wait_job(e, js[i], T_WAIT) == PP_OK &&
        js[i]->status == PP_JOB_OK && result_is(js[i], want))
      ok++;
  }
  CHECKF(ok == NJ, "%d of %d jobs ran after %d kills", ok, NJ, kills);
  CHECK(wait_nlive(e, 2, T_WAIT));
  drain_logs(e, NULL);
out:
  unref_all(js, NJ);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* A worker binary that does not exist: uv_spawn fails outright; the queued
 * job must end FAILED as for early deaths, not wait forever. */
static void test_spawn_missing_binary(void) {
  char *argv[] = {"tests/c/bin/no_such_worker", NULL};
  pp_job *a = NULL;
  /* Under valgrind, every failed exec leaves a forked copy of this process
   * that valgrind leak-checks at its _exit, reporting the parent's heap
   * (thread stacks and the like) as "possibly lost": pure noise. The path
   * is covered by the plain and sanitizer runs. */
  const char *pre = getenv("LD_PRELOAD");
  if (pre != NULL && strstr(pre, "vgpreload") != NULL) {
    printf("  (spawn_missing_binary skipped under valgrind)\n");
    return;
  }
  pp_engine *e = start((cfg){.argv = argv, .nworkers = 1, .queue_logs = 1});
  pp_func *f = pp_func_new("missing", 7);
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  a = submit(e, f, "echo:x", 0);
  /* early deaths give up after 50 * (2+4+8+16) ms = 1.5 s; allow 5 s */
  if (a && CHECKF(pp_engine_wait_job(e, a, 5 * SEC) == PP_OK,
                  "missing worker binary: job still waiting after 5 s")) {
    CHECKF(a->status == PP_JOB_FAILED, "status %s", status_name(a->status));
    CHECK(errmsg_has(a, "no worker process could be started"));
  }
  CHECK(drain_logs(e, fork_pass ? "cannot start the fork server"
                                 : "cannot start worker") >= 1);
out:
  pp_job_unref(a);
  pp_engine_free(e); /* fails the job DESTROYED if it is still queued */
  pp_func_unref(f);
}

/* restart=1: one job per worker process, each job on a fresh process. */
static void test_restart(void) {
  enum { N = 3 };
  pp_job *js[N] = {0};
  pp_engine *e = start((cfg){.nworkers = 1, .restart = 1});
  pp_func *f = pp_func_new("restart", 7);
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  for (int i = 0; i < N; i++)
    js[i] = submit(e, f, "pid", 0);
  int done = 0;
  uint64_t t0 = pp_now_ns();
  for (int i = 0; i < N; i++) {
    int64_t left = 5 * SEC - (int64_t)(pp_now_ns() - t0);
    if (js[i] && pp_engine_wait_job(e, js[i], left > 0 ? left : 0) == PP_OK &&
        js[i]->status == PP_JOB_OK)
      done++;
  }
  CHECKF(done == N, "restart=1: %d of %d jobs finished within 5 s", done, N);
  if (done == N) {
    int distinct = 1;
    for (int i = 0; i < N; i++)
      for (int k = i + 1; k < N; k++)
        if (js[i]->result_len == js[k]->result_len &&
            memcmp(js[i]->result, js[k]->result, js[i]->result_len) == 0)
          distinct = 0;
    CHECK(distinct); /* each job ran in its own process */
  }
out:
  unref_all(js, N);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* The engine must not depend on its host ignoring SIGPIPE: a worker that
 * dies while the engine writes to it must cost an EPIPE, not the process.
 * (CPython ignores SIGPIPE, but scripts often restore SIG_DFL, and a C host
 * need not ignore it.) Run in a child with SIGPIPE at its default; workers
 * that exit at start make the engine write to dead pipes. */
static void test_sigpipe_default(void) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (!CHECK(pid >= 0))
    return;
  if (pid == 0) {
    char *argv[] = {WORKER, "die-at-start", NULL};
    pp_engine_opts o;
    pp_func *f = pp_func_new("sigpipe", 7);
    signal(SIGPIPE, SIG_DFL);
    memset(&o, 0, sizeof o);
    o.worker_argv = argv;
    o.nworkers = 4;
    o.queue_logs = 1;
    for (int r = 0; f != NULL && r < 5; r++) {
      pp_engine *e = NULL;
      if (pp_engine_new(&o, &e) != PP_OK)
        _exit(3);
      for (int i = 0; i < 4; i++) {
        pp_job *j = mkjob(f, "echo:x", 0);
        if (j != NULL && pp_engine_submit(e, j) != PP_OK)
          _exit(4);
        pp_job_unref(j);
      }
      sleep_ms(150); /* the first spawn round and one respawn */
      pp_engine_free(e);
    }
    pp_func_unref(f);
    _exit(0);
  }
  int st = 0;
  pid_t r = 0;
  uint64_t t0 = pp_now_ns();
  while ((r = waitpid(pid, &st, WNOHANG)) == 0 && secs_since(t0) < 60)
    sleep_ms(10);
  if (r == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    CHECK(!"child hung");
    return;
  }
  CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0,
         "engine host with default SIGPIPE: %s %d",
         WIFSIGNALED(st) ? "killed by signal" : "exit status",
         WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
}


/* ---- direct hand-off ------------------------------------------------------ */

/* handoffs: jobs the submitting thread wrote to a worker itself so far. */
static uint64_t handoffs(pp_engine *e) {
  pp_engine_stats st;
  pp_engine_get_stats(e, &st);
  return st.handoffs;
}

/* directs: results a waiting caller read from a worker's pipe itself. */
static uint64_t directs(pp_engine *e) {
  pp_engine_stats st;
  pp_engine_get_stats(e, &st);
  return st.direct_results;
}

/* One job at a time on idle workers: each is written by the submitting
 * thread (the function before its first job), and completes with the same
 * counts and statistics as a dispatched one. Then a batch (queued, the
 * engine dispatches) and round trips again on the same pipes. */
static void test_handoff_sequential(void) {
  enum { N = 300, NB = 200 };
  static pp_job *bj[NB];
  hook_ctx hook;
  memset(&hook, 0, sizeof hook);
  pp_engine *e = start((cfg){.nworkers = 2, .hook = &hook});
  pp_func *f = pp_func_new("handoff-seq", 11), *g = pp_func_new("other", 5);
  int nb = 0;
  if (e == NULL || !CHECK(f != NULL && g != NULL))
    goto out;
  pp_job *warm = submit(e, f, "echo:w", 0); /* the workers say HELLO */
  wait_ok(e, warm, "w");
  pp_job_unref(warm);
  CHECK(wait_nlive(e, 2, T_WAIT));
  sleep_ms(50); /* both HELLOs in: both workers on the hand-off list */
  uint64_t h0 = handoffs(e), d0 = directs(e);
  int bad = 0;
  char cmd[64], want[64];
  for (int i = 0; i < N; i++) {
    snprintf(cmd, sizeof cmd, "echo:s%d", i);
    snprintf(want, sizeof want, "s%d", i);
    /* a second function on the way: FUNC must precede its first job */
    pp_job *j = submit(e, i % 7 == 3 ? g : f, cmd, 0);
    if (j == NULL || !wait_ok(e, j, want) || j->attempt != 1)
      bad++;
    pp_job_unref(j);
  }
  CHECKF(bad == 0, "%d round trips failed", bad);
  uint64_t h1 = handoffs(e);
  /* sequential jobs on idle workers all go straight to them */
  CHECKF(h1 - h0 == N, "%llu of %d jobs handed off",
         (unsigned long long)(h1 - h0), N);
  /* some of them the waiting caller read itself, the others the engine
   * thread (first there, or the caller no longer spinning: this fake
   * worker sleeps between jobs, so a round trip often outlasts the spin);
   * either way the counts below add up */
  CHECK(directs(e) - d0 <= (uint64_t)N);
  /* the burst starts with a job that keeps one worker busy throughout it,
   * so the engine is never idle again before its last submit (however the
   * threads are scheduled) */
  for (nb = 0; nb < NB; nb++) {
    if (nb == 0)
      snprintf(cmd, sizeof cmd, "sleep:300");
    else
      snprintf(cmd, sizeof cmd, "echo:b%d", nb);
    if ((bj[nb] = submit(e, f, cmd, 1)) == NULL)
      break;
  }
  /* a burst is the dispatcher's (batched writes): only its first job,
   * submitted while the engine was still idle, may be handed off */
  CHECKF(handoffs(e) - h1 <= 1, "%llu of a burst of %d handed off",
         (unsigned long long)(handoffs(e) - h1), NB);
  CHECK(pp_engine_wait_group(e, 1, T_WAIT) == PP_OK);
  for (int i = 0; i < nb; i++) {
    if (i == 0)
      snprintf(want, sizeof want, "slept");
    else
      snprintf(want, sizeof want, "b%d", i);
    bad += !(bj[i]->status == PP_JOB_OK && result_is(bj[i], want));
  }
  CHECKF(bad == 0, "%d batch jobs wrong", bad);
  /* after a batch, hand-offs resume once the workers are idle again */
  for (int i = 0; i < 20; i++) {
    pp_job *j = submit(e, f, "echo:again", 0);
    bad += !wait_ok(e, j, "again");
    pp_job_unref(j);
  }
  CHECK(bad == 0);
  CHECK(handoffs(e) > h1);
  CHECK(pp_engine_wait_group(e, -1, T_WAIT) == PP_OK);
  pp_engine_stats st;
  pp_engine_get_stats(e, &st);
  CHECK(st.njobs == (uint64_t)(1 + N + NB + 20));
  CHECK(nb == NB && st.time_ns == (st.njobs - 1) * 1000 + bj[0]->runtime_ns);
  CHECK(st.queued == 0 && st.running == 0);
  int pids[8];
  uint64_t counts[8];
  int np = pp_engine_worker_pids(e, pids, counts, 8);
  CHECKF(np == 2 && counts[0] + counts[1] == st.njobs,
         "per-worker results do not add up");
  CHECK(atomic_load(&hook.calls) == (int)st.njobs);
  CHECK(atomic_load(&hook.by_status[PP_JOB_OK]) == (int)st.njobs);
  CHECK(atomic_load(&hook.not_done) == 0);
out:
  unref_all(bj, (size_t)nb);
  pp_engine_free(e);
  pp_func_unref(f);
  pp_func_unref(g);
}

/* Large results (1 MiB and more) are read from the worker's socket straight
 * into an arena block, which the job then owns: the bytes arrive exactly,
 * the block goes back when the job is freed, and a worker that dies in the
 * middle of one leaks none of the arena (its job is charged, a replacement
 * runs the next job). */
static void test_big_results_into_arena(void) {
  pp_engine *e = start((cfg){.nworkers = 1, .max_retries = 0});
  pp_func *f = pp_func_new("big-results", 11);
  pp_engine_stats st;
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  pp_job *w = submit(e, f, "echo:w", 0);
  wait_ok(e, w, "w");
  pp_job_unref(w);
  pp_engine_get_stats(e, &st);
  uint64_t base = st.shm_used;
  CHECK(st.shm_size > 0);
  for (int round = 0; round < 3; round++) {
    size_t n = (size_t)(3 << 20) + (size_t)round * 4099;
    char cmd[32];
    snprintf(cmd, sizeof cmd, "big:%zu", n);
    pp_job *j = submit(e, f, cmd, 0);
    if (j == NULL || !CHECK(pp_engine_wait_job(e, j, T_WAIT) == PP_OK))
      break;
    int ok = j->status == PP_JOB_OK && j->result_len == n && j->rshm != NULL;
    for (size_t i = 0; ok && i < n; i++)
      ok = j->result[i] == (uint8_t)(i * 7);
    CHECKF(ok, "round %d: status %s, %zu bytes, in the arena %d", round,
           status_name(j->status), j->result_len, j->rshm != NULL);
    pp_engine_get_stats(e, &st);
    CHECK(st.shm_used >= base + n);
    pp_job_unref(j);
    pp_engine_get_stats(e, &st);
    CHECKF(st.shm_used == base, "round %d: %llu arena bytes used, %llu before",
           round, (unsigned long long)st.shm_used, (unsigned long long)base);
  }
  pp_job *cut = submit(e, f, "bigcut:8000000", 0);
  if (cut && CHECK(pp_engine_wait_job(e, cut, T_WAIT) == PP_OK))
    CHECKF(cut->status == PP_JOB_LOST, "status %s", status_name(cut->status));
  pp_job_unref(cut);
  pp_job *after = submit(e, f, "echo:after", 0);
  wait_ok(e, after, "after");
  pp_job_unref(after);
  pp_engine_get_stats(e, &st);
  CHECKF(st.shm_used == base, "after a cut result: %llu arena bytes used, "
         "%llu before", (unsigned long long)st.shm_used,
         (unsigned long long)base);
out:
  pp_engine_free(e);
  pp_func_unref(f);
}

/* the one worker's pid (0 when there is not exactly one). */
static int only_pid(pp_engine *e) {
  int pids[4];
  return pp_engine_worker_pids(e, pids, NULL, 4) == 1 ? pids[0] : 0;
}

/* A worker killed right after a hand-off: the job is in flight on it as if
 * dispatched, so the exit requeues it and it runs again exactly once —
 * charged a crash when the worker had started it, uncharged when the
 * bytes were still in its socket. */
static void test_handoff_worker_killed(void) {
  hook_ctx hook;
  memset(&hook, 0, sizeof hook);
  pp_engine *e = start((cfg){.nworkers = 1, .max_retries = 1,
                             .queue_logs = 1, .hook = &hook});
  pp_func *f = pp_func_new("handoff-kill", 12);
  pp_job *j = NULL, *k = NULL;
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  pp_job *warm = submit(e, f, "echo:w", 0);
  wait_ok(e, warm, "w");
  pp_job_unref(warm);
  sleep_ms(20);
  /* started: killed while it runs the job */
  int pid = only_pid(e);
  uint64_t h0 = handoffs(e);
  j = submit(e, f, "sleep:300", 0);
  CHECK(handoffs(e) == h0 + 1);
  CHECK(j && atomic_load(&j->state) == PP_JOB_RUNNING);
  sleep_ms(50);
  if (CHECK(pid > 0))
    kill(pid, SIGKILL);
  if (j && CHECK(pp_engine_wait_job(e, j, T_WAIT) == PP_OK)) {
    CHECKF(j->status == PP_JOB_OK && result_is(j, "slept"), "status %s",
           status_name(j->status));
    CHECKF(j->attempt == 2 && j->crashes == 1, "attempt %u crashes %u",
           j->attempt, j->crashes);
    CHECK(j->worker_pid != pid);
  }
  /* not started: the worker is stopped, the job sits in its socket */
  CHECK(wait_nlive(e, 1, T_WAIT));
  pp_job *w2 = submit(e, f, "echo:w2", 0);
  wait_ok(e, w2, "w2");
  pp_job_unref(w2);
  sleep_ms(20);
  pid = only_pid(e);
  if (CHECK(pid > 0))
    kill(pid, SIGSTOP);
  h0 = handoffs(e);
  k = submit(e, f, "echo:k", 0);
  CHECK(handoffs(e) == h0 + 1);
  if (pid > 0)
    kill(pid, SIGKILL);
  if (k && CHECK(pp_engine_wait_job(e, k, T_WAIT) == PP_OK)) {
    CHECKF(k->status == PP_JOB_OK && result_is(k, "k"), "status %s",
           status_name(k->status));
    CHECKF(k->attempt == 2 && k->crashes == 0, "attempt %u crashes %u",
           k->attempt, k->crashes);
  }
  CHECK(pp_engine_wait_group(e, -1, T_WAIT) == PP_OK);
  /* each job completed once: warm-ups and the two */
  CHECK(atomic_load(&hook.calls) == 4);
  CHECK(atomic_load(&hook.by_status[PP_JOB_OK]) == 4);
  drain_logs(e, NULL);
out:
  pp_job_unref(j);
  pp_job_unref(k);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* wait_short: wait for j in 1 ms slices (each slice's spin arms the
 * mailbox again, so a worker that polls for it finds it armed within a
 * few slices), for at most T_WAIT. */
static int wait_short(pp_engine *e, pp_job *j) {
  for (int i = 0; i < (int)(T_WAIT / 1000000) && !pp_job_done(j); i++)
    pp_engine_wait_job(e, j, 1000000);
  return pp_job_done(j);
}

/* The result mailbox (wstatus.h): a result the worker puts there reaches
 * the waiting caller and completes the job exactly once, counted like any
 * other; a malformed frame there kills the worker and the job runs again;
 * the pool goes on. */
static void test_mailbox(void) {
  enum { N = 40 };
  hook_ctx hook;
  memset(&hook, 0, sizeof hook);
  pp_engine *e = start((cfg){.nworkers = 1, .max_retries = 1,
                             .queue_logs = 1, .hook = &hook});
  pp_func *f = pp_func_new("mailbox", 7);
  char cmd[64], want[64], unposted[64];
  int bad = 0, posted = 0;
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  pp_job *warm = submit(e, f, "echo:w", 0);
  wait_ok(e, warm, "w");
  pp_job_unref(warm);
  sleep_ms(20); /* HELLO in: on the hand-off list */
  uint64_t d0 = directs(e);
  for (int i = 0; i < N; i++) {
    snprintf(cmd, sizeof cmd, "mb:m%d", i);
    snprintf(want, sizeof want, "m%d", i);
    snprintf(unposted, sizeof unposted, "unposted:m%d", i);
    pp_job *j = submit(e, f, cmd, 0);
    if (j == NULL || !wait_short(e, j) || j->status != PP_JOB_OK)
      bad++;
    else if (result_is(j, want))
      posted++;
    else if (!result_is(j, unposted))
      bad++;
    pp_job_unref(j);
  }
  CHECKF(bad == 0, "%d mailbox round trips failed", bad);
  CHECKF(posted > N / 2, "%d of %d results came through the mailbox", posted,
         N);
  CHECK(directs(e) - d0 >= (uint64_t)posted);
  /* garbage in the mailbox: the worker is killed, the job charged and run
   * again on a new one (retried until one attempt got the mailbox armed) */
  int pid = only_pid(e), garbaged = 0;
  for (int tries = 0; tries < 10 && !garbaged; tries++) {
    pp_job *j = submit(e, f, "mbgarbage", 0);
    if (j == NULL || !CHECK(wait_short(e, j)))
      break;
    CHECK(j->status == PP_JOB_OK);
    if (result_is(j, "again")) {
      garbaged = 1;
      CHECKF(j->attempt == 2 && j->crashes == 1, "attempt %u crashes %u",
             j->attempt, j->crashes);
      CHECK(j->worker_pid != pid);
    } else {
      CHECK(result_is(j, "unposted"));
    }
    pp_job_unref(j);
  }
  CHECK(garbaged);
  CHECK(wait_nlive(e, 1, T_WAIT));
  pp_job *k = submit(e, f, "echo:after", 0);
  wait_ok(e, k, "after");
  pp_job_unref(k);
  CHECK(pp_engine_wait_group(e, -1, T_WAIT) == PP_OK);
  pp_engine_stats st;
  pp_engine_get_stats(e, &st);
  int pids[4];
  uint64_t counts[4];
  int np = pp_engine_worker_pids(e, pids, counts, 4);
  CHECK(np == 1 && st.njobs >= (uint64_t)(N + 2));
  /* every job completed exactly once */
  CHECK(atomic_load(&hook.calls) == atomic_load(&hook.by_status[PP_JOB_OK]));
  CHECK(atomic_load(&hook.not_done) == 0);
  drain_logs(e, NULL);
out:
  pp_engine_free(e);
  pp_func_unref(f);
}

/* Aborting a handed-off job reaches its worker: the job is in flight there. */
static void test_handoff_abort(void) {
  pp_engine *e = start((cfg){.nworkers = 1, .queue_logs = 1});
  pp_func *f = pp_func_new("handoff-abort", 13);
  pp_job *j = NULL;
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  pp_job *warm = submit(e, f, "echo:w", 0);
  wait_ok(e, warm, "w");
  pp_job_unref(warm);
  sleep_ms(20);
  uint64_t h0 = handoffs(e);
  j = submit(e, f, "sleep:5000", 0);
  CHECK(handoffs(e) == h0 + 1);
  sleep_ms(30);
  uint64_t t0 = pp_now_ns();
  CHECK(j && pp_engine_abort(e, j, 0) == 1);
  if (j && CHECK(pp_engine_wait_job(e, j, T_WAIT) == PP_OK)) {
    CHECKF(j->status == PP_JOB_ABORTED, "status %s", status_name(j->status));
    CHECK(secs_since(t0) < 4.0); /* stopped, not run to its end */
  }
  pp_job *after = submit(e, f, "echo:after", 0);
  wait_ok(e, after, "after");
  pp_job_unref(after);
  drain_logs(e, NULL);
out:
  pp_job_unref(j);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* Arguments larger than a socket's buffer, without an arena: the
 * submitting thread writes what fits and leaves the rest to the engine
 * thread, which writes it before anything else; jobs queued right behind
 * it arrive intact. */
static void test_handoff_large(void) {
  enum { BIG = 900 * 1024, NB = 20 };
  pp_job *after[NB] = {0};
  pp_engine *e = start((cfg){.nworkers = 1, .shm_size = UINT64_MAX});
  pp_func *f = pp_func_new("handoff-large", 13);
  char *cmd = malloc(BIG + 8);
  pp_job *j = NULL;
  if (e == NULL || !CHECK(f != NULL && cmd != NULL))
    goto out;
  pp_job *warm = submit(e, f, "echo:w", 0);
  wait_ok(e, warm, "w");
  pp_job_unref(warm);
  sleep_ms(20);
  memcpy(cmd, "echo:", 5);
  for (size_t i = 0; i < BIG; i++)
    cmd[5 + i] = (char)('a' + i % 26);
  cmd[5 + BIG] = 0;
  uint64_t h0 = handoffs(e);
  j = submit(e, f, cmd, 0);
  CHECK(handoffs(e) == h0 + 1);
  char c[32];
  for (int i = 0; i < NB; i++) {
    snprintf(c, sizeof c, "echo:n%d", i);
    after[i] = submit(e, f, c, 0);
  }
  if (j && CHECK(pp_engine_wait_job(e, j, T_WAIT) == PP_OK))
    CHECK(j->status == PP_JOB_OK && result_is(j, cmd + 5));
  for (int i = 0; i < NB; i++) {
    snprintf(c, sizeof c, "n%d", i);
    wait_ok(e, after[i], c);
  }
out:
  free(cmd);
  pp_job_unref(j);
  unref_all(after, NB);
  pp_engine_free(e);
  pp_func_unref(f);
}

/* Many threads submitting at once, each sometimes one job at a time and
 * sometimes a burst, so workers keep going idle and busy while hand-offs
 * and dispatches race: every job ends exactly once with its own result. */
enum { CT_THREADS = 6, CT_ROUNDS = 150 };

typedef struct conc_arg {
  pp_engine *e;
  pp_func *f;
  int t;
  atomic_int *wrong;
  atomic_int *done;
} conc_arg;

static void *conc_thread(void *p) {
  conc_arg *a = p;
  char cmd[64], want[64];
  pp_job *burst[4];
  for (int r = 0; r < CT_ROUNDS; r++) {
    int n = (r % 5 == 4) ? 4 : 1;
    for (int i = 0; i < n; i++) {
      snprintf(cmd, sizeof cmd, "echo:t%d-%d-%d", a->t, r, i);
      pp_job *j = mkjob(a->f, cmd, 0);
      if (j == NULL || pp_engine_submit(a->e, j) != PP_OK) {
        atomic_fetch_add(a->wrong, 1);
        pp_job_unref(j);
        burst[i] = NULL;
        continue;
      }
      burst[i] = j;
    }
    for (int i = 0; i < n; i++) {
      pp_job *j = burst[i];
      if (j == NULL)
        continue;
      snprintf(want, sizeof want, "t%d-%d-%d", a->t, r, i);
      if (pp_engine_wait_job(a->e, j, T_WAIT) != PP_OK ||
          j->status != PP_JOB_OK || !result_is(j, want) || j->attempt != 1)
        atomic_fetch_add(a->wrong, 1);
      else
        atomic_fetch_add(a->done, 1);
      pp_job_unref(j);
    }
  }
  return NULL;
}

static void test_handoff_concurrent(void) {
  hook_ctx hook;
  memset(&hook, 0, sizeof hook);
  atomic_int wrong = 0, done = 0;
  pthread_t th[CT_THREADS];
  conc_arg args[CT_THREADS];
  int started = 0;
  pp_engine *e = start((cfg){.nworkers = 2, .hook = &hook});
  pp_func *f = pp_func_new("handoff-conc", 12);
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  pp_job *warm = submit(e, f, "echo:w", 0);
  wait_ok(e, warm, "w");
  pp_job_unref(warm);
  for (int t = 0; t < CT_THREADS; t++) {
    args[t] = (conc_arg){e, f, t, &wrong, &done};
    if (pthread_create(&th[t], NULL, conc_thread, &args[t]) != 0)
      break;
    started++;
  }
  for (int t = 0; t < started; t++)
    pthread_join(th[t], NULL);
  CHECK(started == CT_THREADS);
  int want = started * (CT_ROUNDS / 5) * (4 + 4);
  CHECKF(atomic_load(&wrong) == 0, "%d jobs wrong", atomic_load(&wrong));
  CHECKF(atomic_load(&done) == want, "%d of %d done", atomic_load(&done),
         want);
  CHECK(pp_engine_wait_group(e, -1, T_WAIT) == PP_OK);
  pp_engine_stats st;
  pp_engine_get_stats(e, &st);
  CHECK(st.njobs == (uint64_t)want + 1);
  CHECK(st.queued == 0 && st.running == 0);
  CHECKF(st.handoffs > 0, "no job was handed off");
  int pids[8];
  uint64_t counts[8];
  int np = pp_engine_worker_pids(e, pids, counts, 8);
  CHECK(np == 2 && counts[0] + counts[1] == st.njobs);
  CHECK(atomic_load(&hook.calls) == want + 1);
  CHECK(atomic_load(&hook.not_done) == 0);
out:
  pp_engine_free(e);
  pp_func_unref(f);
}

/* ---- an engine on the embedder's loop (ppserver's way) ------------------ */

enum { EXT_N = 200 };

typedef struct ext_ctx {
  pp_engine *e;
  pp_func *f;
  uv_timer_t timer;
  uv_async_t done; /* the completion hook's wake-up, as feed.c does */
  uv_mutex_t mu;
  pp_job *jobs[EXT_N];
  int submitted, completed, taken, wrong, bursts;
  uint64_t t0;
} ext_ctx;

/* ext_hook: completion hook: on the loop's thread, mutex held. */
static void ext_hook(void *ctx, pp_job *j) {
  ext_ctx *x = ctx;
  (void)j;
  uv_mutex_lock(&x->mu);
  x->completed++;
  uv_mutex_unlock(&x->mu);
  uv_async_send(&x->done);
}

/* ext_submit_some: submit one job (a burst of 10 now and then), from the
 * loop's own thread. */
static void ext_submit_some(ext_ctx *x) {
  int n = x->submitted % 50 == 25 ? 10 : 1;
  for (int i = 0; i < n && x->submitted < EXT_N; i++) {
    char cmd[32];
    snprintf(cmd, sizeof cmd, "echo:x%d", x->submitted);
    pp_job *j = mkjob(x->f, cmd, 0);
    if (j == NULL || pp_engine_submit(x->e, j) != PP_OK) {
      x->wrong++;
      pp_job_unref(j);
      return;
    }
    x->jobs[x->submitted++] = j;
  }
}

/* ext_on_done: completions arrived: check them in order, submit more,
 * shut down when all are back (the loop then ends by itself). */
static void ext_on_done(uv_async_t *a) {
  ext_ctx *x = a->data;
  while (x->taken < x->submitted && pp_job_done(x->jobs[x->taken])) {
    char want[32];
    snprintf(want, sizeof want, "x%d", x->taken);
    pp_job *j = x->jobs[x->taken++];
    if (j->status != PP_JOB_OK || !result_is(j, want))
      x->wrong++;
  }
  if (x->taken == x->submitted && x->submitted < EXT_N)
    ext_submit_some(x);
  if (x->taken == EXT_N) {
    pp_engine_shutdown(x->e); /* returns at once on this thread */
    uv_close((uv_handle_t *)&x->done, NULL);
    uv_close((uv_handle_t *)&x->timer, NULL);
  }
}

/* ext_on_timer: a bound on the whole test: give up and stop. */
static void ext_on_timer(uv_timer_t *t) {
  ext_ctx *x = t->data;
  x->wrong += 1000;
  pp_engine_shutdown(x->e);
  uv_close((uv_handle_t *)&x->done, NULL);
  uv_close((uv_handle_t *)&x->timer, NULL);
}

static void ext_first(uv_timer_t *t) {
  ext_ctx *x = t->data;
  ext_submit_some(x);
  uv_timer_start(&x->timer, ext_on_timer, (uint64_t)(T_WAIT / 1000000), 0);
}

/* The engine runs on a loop the test owns and runs on this thread: jobs
 * are submitted from loop callbacks (handed off to idle workers or queued
 * for the dispatcher, on the same thread), every one completes once, and
 * shutdown from a callback lets the loop end on its own, workers reaped. */
static void test_external_loop(void) {
  static ext_ctx x;
  uv_loop_t loop;
  memset(&x, 0, sizeof x);
  if (!CHECK(uv_loop_init(&loop) == 0))
    return;
  uv_mutex_init(&x.mu);
  uv_async_init(&loop, &x.done, ext_on_done);
  x.done.data = &x;
  uv_timer_init(&loop, &x.timer);
  x.timer.data = &x;
  x.f = pp_func_new("ext-loop", 8);
  pp_engine_opts o;
  memset(&o, 0, sizeof o);
  o.worker_argv = worker_argv;
  o.nworkers = 2;
  o.on_complete = ext_hook;
  o.on_complete_ctx = &x;
  o.loop = &loop;
  int rc = pp_engine_new(&o, &x.e);
  CHECKF(rc == PP_OK, "pp_engine_new: %s", pp_strerror(rc));
  if (rc != PP_OK) {
    uv_close((uv_handle_t *)&x.done, NULL);
    uv_close((uv_handle_t *)&x.timer, NULL);
  } else {
    uv_timer_start(&x.timer, ext_first, 50, 0);
  }
  x.t0 = pp_now_ns();
  uv_run(&loop, UV_RUN_DEFAULT); /* ends once the engine's handles closed */
  CHECKF(x.wrong == 0, "%d wrong", x.wrong);
  CHECK(x.taken == EXT_N);
  CHECK(x.completed == EXT_N);
  if (x.e) {
    pp_engine_stats st;
    pp_engine_get_stats(x.e, &st);
    CHECK(st.njobs == EXT_N && st.nlive == 0);
    CHECKF(st.handoffs > 0, "no hand-off on the embedder's loop");
    pp_job *late = mkjob(x.f, "echo:late", 0);
    CHECK(late && pp_engine_submit(x.e, late) == PP_ECLOSED);
    pp_job_unref(late);
  }
  pp_engine_free(x.e);
  unref_all(x.jobs, (size_t)x.submitted);
  CHECK(uv_loop_close(&loop) == 0);
  uv_mutex_destroy(&x.mu);
  pp_func_unref(x.f);
}

typedef struct {
  const char *name;
  void (*fn)(void);
} test_case;

static void t_exit0(void) { test_exit_lost(0); }
/* ppid_of: the parent of pid, from /proc (0 when it is gone). */
static int ppid_of(int pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *fp = fopen(path, "r");
  if (fp == NULL)
    return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, fp);
  fclose(fp);
  buf[n] = '\0';
  char *r = strrchr(buf, ')');
  int ppid = 0;
  return r != NULL && sscanf(r + 2, "%*c %d", &ppid) == 1 ? ppid : 0;
}

/* Fork pass only: the workers are the template's children; the template
 * killed with SIGKILL takes them along, their running jobs run again
 * uncharged (max_retries 0 would fail a charged one) on workers forked by
 * a new template, and the pool is whole again. */
static void test_template_killed(void) {
  enum { NB = 2, NA = 20 };
  pp_job *busy[NB] = {0}, *after[NA] = {0};
  if (!fork_pass)
    return;
  pp_engine *e = start((cfg){.nworkers = 2, .queue_logs = 1});
  pp_func *f = pp_func_new("tpl-killed", 10);
  pp_engine_stats st;
  if (e == NULL || !CHECK(f != NULL))
    goto out;
  CHECK(wait_nlive(e, 2, T_WAIT));
  pp_engine_get_stats(e, &st);
  int tpl = st.template_pid, pids[4];
  CHECK(tpl > 0 && ppid_of(tpl) == getpid());
  int n = pp_engine_worker_pids(e, pids, NULL, 4);
  CHECK(n == 2);
  for (int i = 0; i < n; i++)
    CHECKF(ppid_of(pids[i]) == tpl, "worker %d's parent %d, template %d",
           pids[i], ppid_of(pids[i]), tpl);
  for (int i = 0; i < NB; i++)
    busy[i] = submit(e, f, "sleep:300", 0);
  for (int i = 0; i < NB; i++)
    CHECK(busy[i] && wait_state(busy[i], PP_JOB_RUNNING, T_WAIT));
  sleep_ms(50);
  CHECK(kill(tpl, SIGKILL) == 0);
  for (int i = 0; i < NB; i++) {
    wait_ok(e, busy[i], "slept");
    CHECK(busy[i] && busy[i]->crashes == 0);
  }
  for (int i = 0; i < NA; i++) {
    char cmd[32], want[32];
    snprintf(cmd, sizeof cmd, "echo:t%d", i);
    snprintf(want, sizeof want, "t%d", i);
    after[i] = submit(e, f, cmd, 0);
    wait_ok(e, after[i], want);
  }
  CHECK(wait_nlive(e, 2, T_WAIT));
  pp_engine_get_stats(e, &st);
  CHECKF(st.template_pid > 0 && st.template_pid != tpl, "template %d, was %d",
         st.template_pid, tpl);
  n = pp_engine_worker_pids(e, pids, NULL, 4);
  for (int i = 0; i < n; i++)
    CHECK(ppid_of(pids[i]) == st.template_pid);
  CHECK(drain_logs(e, "ended with the fork server") >= 1);
out:
  unref_all(busy, NB);
  unref_all(after, NA);
  pp_engine_free(e);
  pp_func_unref(f);
}

static void t_exit2(void) { test_exit_lost(2); }
static void t_garbage(void) { test_malformed_reply("garbage"); }
static void t_badid(void) { test_malformed_reply("badid"); }
static void t_badstatus(void) { test_malformed_reply("badstatus"); }

int main(int argc, char **argv) {
  static const test_case tests[] = {
      {"new_invalid", test_new_invalid},
      {"echo_many", test_echo_many},
      {"groups_and_payloads", test_groups_and_payloads},
      {"func_cache_reset", test_func_cache_reset},
      {"exit_lost_retries0", t_exit0},
      {"exit_lost_retries2", t_exit2},
      {"segv", test_segv},
      {"garbage", t_garbage},
      {"badid", t_badid},
      {"badstatus", t_badstatus},
      {"cancel", test_cancel},
      {"resize", test_resize},
      {"shutdown", test_shutdown},
      {"shutdown_streaming", test_shutdown_streaming},
      {"free_busy", test_free_busy},
      {"callback", test_callback},
      {"env_cwd", test_env_cwd},
      {"spawn_die_at_start", test_spawn_die_at_start},
      {"spawn_missing_binary", test_spawn_missing_binary},
      {"restart", test_restart},
      {"crash_blames_running_job", test_crash_blames_running_job},
      {"killed_while_starting", test_killed_while_starting},
      {"sigpipe_default", test_sigpipe_default},
      {"template_killed", test_template_killed},
      {"big_results_into_arena", test_big_results_into_arena},
      {"handoff_sequential", test_handoff_sequential},
      {"handoff_worker_killed", test_handoff_worker_killed},
      {"handoff_abort", test_handoff_abort},
      {"mailbox", test_mailbox},
      {"handoff_large", test_handoff_large},
      {"handoff_concurrent", test_handoff_concurrent},
      {"external_loop", test_external_loop},
  };
  /* The host process (Python) ignores SIGPIPE; a worker dying while the
   * engine writes to it must not take the test down with it. */
  signal(SIGPIPE, SIG_IGN);
  if (access(WORKER, X_OK) != 0) {
    fprintf(stderr, "%s not built; run from the repository root\n", WORKER);
    return 1;
  }
  /* every test twice: workers spawned, then forked by a fork server */
  for (size_t r = 0; r < 2 * (sizeof tests / sizeof tests[0]); r++) {
    size_t i = r % (sizeof tests / sizeof tests[0]);
    fork_pass = r >= sizeof tests / sizeof tests[0];
    if (argc > 1) { /* optional: run only the named tests */
      int want = 0;
      for (int a = 1; a < argc; a++)
        want |= strcmp(argv[a], tests[i].name) == 0;
      if (!want)
        continue;
    }
    uint64_t t0 = pp_now_ns();
    int failed0 = check_failed_;
    tests[i].fn();
    printf("  %-22s %s %s (%.2f s)\n", tests[i].name,
           fork_pass ? "fork " : "spawn",
           check_failed_ == failed0 ? "ok" : "FAILED", secs_since(t0));
    fflush(stdout);
  }
  return check_summary();
}
