/* fake_worker.c — a stand-in for the Python worker, speaking the pp pipe
 * protocol on file descriptor 3 with plain blocking I/O, so the engine can
 * be tested without Python.
 *
 * On start it sends HELLO (payload: u32 pid), then serves frames:
 *   FUNC   key[32] + blob: remembered (FUNCF_RESET forgets the others first)
 *   JOB    key[32] + args, args being an ASCII command:
 *            echo:<text>    RESULT ok, payload u64 runtime (1000) + <text>
 *            exc:<text>     RESULT status 1 (exception) with <text>
 *            serial:<text>  RESULT status 2 (unpicklable) with <text>
 *            sleep:<ms>     sleep, then RESULT ok "slept" (measured runtime)
 *            big:<n>        RESULT ok with n bytes, byte i = (i * 7) & 0xff
 *            pid            RESULT ok with the decimal pid
 *            env:<name>     RESULT ok with getenv(name) or "(unset)"
 *            cwd            RESULT ok with the working directory
 *            exit:<n>       _exit(n) at once
 *            segv           die of SIGSEGV
 *            bigcut:<n>     start a RESULT of n bytes, write half of it,
 *                           exit 3 (a worker dying inside a large result)
 *            garbage        write 32 bytes that are no frame; go on
 *            badid          RESULT with the wrong job id; go on
 *            badstatus      RESULT with status 7 (undefined); go on
 *            mb:<text>      like echo, through the status page's result
 *                           mailbox (wstatus.h): waits up to 300 ms for a
 *                           caller to arm it, else RESULT "unposted:<text>"
 *                           on the pipe
 *            mbgarbage      attempt 1: 32 bytes that are no frame into the
 *                           mailbox (as mb:, "unposted" when no caller
 *                           armed it); later attempts: RESULT ok "again"
 *            held:<text>    like echo, but the RESULT is held back and
 *                           written only when no input is waiting (as the
 *                           Python worker batches results), so a crash
 *                           right after loses it
 *          A JOB for a key never sent in a FUNC gets RESULT status 1
 *          "unknown function" (the engine must send FUNC first).
 *   BYE    exit(0)
 *   EOF    exit(0)
 * A RESULT echoes the job's id and attempt. When the engine passes a status
 * page on fd 4 (wstatus.h), the worker marks each job in it while it runs.
 *
 * argv[1] = "die-at-start": exit(7) before HELLO.
 * argv[1] = "slow-start": wait 20 ms before HELLO (an interpreter starting).
 * argv[1] = "template": be the engine's fork server (template.h) with the
 * control socket on fd 3; each forked child is a fake worker with the
 * remaining arguments. */
#include "frame.h"
#include "template.h"
#include "wstatus.h"
#include "keyset.h"
#include "pp_common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FD 3

static pp_keyset known;
static uint8_t *payload;
static pp_wstatus *status;  /* the engine's status page, or NULL */
static pp_buf held;         /* RESULT frames held back (held:<text>) */

static void cleanup_exit(int code) {
  free(payload);
  payload = NULL;
  pp_keyset_free(&known);
  pp_buf_free(&held);
  exit(code);
}

static void write_full(const void *p, size_t n) {
  const uint8_t *c = p;
  while (n > 0) {
    ssize_t w = write(FD, c, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      cleanup_exit(0); /* the engine is gone */
    c += w;
    n -= (size_t)w;
  }
}

/* read_full: 1 when n bytes were read, 0 on EOF before the first byte. */
static int read_full(void *p, size_t n) {
  uint8_t *c = p;
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(FD, c + got, n - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      fprintf(stderr, "fake_worker: read: %s\n", strerror(errno));
      cleanup_exit(3);
    }
    if (r == 0) {
      if (got == 0)
        return 0;
      fprintf(stderr, "fake_worker: EOF inside a frame\n");
      cleanup_exit(3);
    }
    got += (size_t)r;
  }
  return 1;
}

static void send_frame(uint8_t type, uint32_t flags, uint64_t id,
                       uint32_t attempt, const void *a, size_t alen,
                       const void *b, size_t blen) {
  uint8_t hdr[PP_FRAME_HDR];
  pp_frame_hdr h = {PP_PROTO_VERSION, type, flags, (uint32_t)(alen + blen),
                    attempt, id};
  pp_frame_encode_hdr(hdr, &h);
  write_full(hdr, sizeof hdr);
  if (alen)
    write_full(a, alen);
  if (blen)
    write_full(b, blen);
}

static void send_result(const pp_frame_hdr *job, unsigned status,
                        uint64_t runtime_ns, const void *data, size_t len) {
  uint8_t rt[8];
  pp_put_u64(rt, runtime_ns);
  send_frame(PP_MSG_RESULT, status, job->id, job->attempt, rt, 8, data, len);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int starts(const char *s, size_t n, const char *prefix) {
  size_t k = strlen(prefix);
  return n >= k && memcmp(s, prefix, k) == 0;
}

/* arg_str: the part after the prefix, NUL-terminated (malloc'd). */
static char *arg_str(const char *s, size_t n, size_t skip) {
  char *out = malloc(n - skip + 1);
  if (out == NULL)
    cleanup_exit(4);
  memcpy(out, s + skip, n - skip);
  out[n - skip] = 0;
  return out;
}

/* mb_result: put a RESULT (text, or junk when garbage) in the mailbox once
 * a caller waits for this job there (polling up to 300 ms); 1 when posted,
 * 0 when nobody armed it in time. */
static int mb_result(const pp_frame_hdr *h, const char *text, size_t len,
                     int garbage) {
  uint8_t frame[PP_FRAME_HDR + 8 + 256];
  size_t flen;
  if (garbage) {
    flen = 32;
    for (size_t i = 0; i < flen; i++)
      frame[i] = (uint8_t)(0xa5 ^ (i * 13));
  } else {
    if (len > 256)
      len = 256;
    pp_frame_hdr rh = {PP_PROTO_VERSION, PP_MSG_RESULT, PP_RES_OK,
                       (uint32_t)(8 + len), h->attempt, h->id};
    pp_frame_encode_hdr(frame, &rh);
    pp_put_u64(frame + PP_FRAME_HDR, 1000);
    memcpy(frame + PP_FRAME_HDR + 8, text, len);
    flen = PP_FRAME_HDR + 8 + len;
  }
  uint64_t t0 = now_ns();
  while (now_ns() - t0 < 300000000u) {
    if (pp_wstatus_post(status, h->id, h->attempt, frame, flen))
      return 1;
    sched_yield();
  }
  return 0;
}

static void flush_held(void) {
  if (pp_buf_avail(&held) > 0)
    write_full(held.data + held.off, pp_buf_avail(&held));
  pp_buf_free(&held);
}

static void run_job(const pp_frame_hdr *h, const uint8_t *p) {
  const char *cmd = (const char *)p + PP_KEY_LEN;
  size_t n = h->length - PP_KEY_LEN;
  char text[64];

  if (starts(cmd, n, "held:") && pp_keyset_has(&known, p)) {
    uint8_t rt[8];
    pp_put_u64(rt, 1000);
    pp_part parts[2] = {{rt, 8}, {cmd + 5, n - 5}};
    if (pp_frame_build(&held, PP_MSG_RESULT, PP_RES_OK, h->id, h->attempt,
                       parts, 2) != PP_OK)
      cleanup_exit(4);
    return;
  }

  if (!pp_keyset_has(&known, p)) {
    static const char msg[] = "unknown function";
    send_result(h, PP_RES_EXC, 1000, msg, sizeof msg - 1);
    return;
  }
  if (starts(cmd, n, "echo:")) {
    send_result(h, PP_RES_OK, 1000, cmd + 5, n - 5);
  } else if (starts(cmd, n, "mb:")) {
    if (!mb_result(h, cmd + 3, n - 3, 0)) {
      int k = snprintf(text, sizeof text, "unposted:%.*s", (int)(n - 3),
                       cmd + 3);
      send_result(h, PP_RES_OK, 1000, text, (size_t)k);
    }
  } else if (n == 9 && memcmp(cmd, "mbgarbage", 9) == 0) {
    if (h->attempt > 1)
      send_result(h, PP_RES_OK, 1000, "again", 5);
    else if (!mb_result(h, NULL, 0, 1))
      send_result(h, PP_RES_OK, 1000, "unposted", 8);
  } else if (starts(cmd, n, "exc:")) {
    send_result(h, PP_RES_EXC, 1000, cmd + 4, n - 4);
  } else if (starts(cmd, n, "serial:")) {
    send_result(h, PP_RES_SERIAL, 1000, cmd + 7, n - 7);
  } else if (starts(cmd, n, "sleep:")) {
    char *a = arg_str(cmd, n, 6);
    long ms = strtol(a, NULL, 10);
    free(a);
    uint64_t t0 = now_ns();
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
      ;
    send_result(h, PP_RES_OK, now_ns() - t0, "slept", 5);
  } else if (starts(cmd, n, "big:")) {
    char *a = arg_str(cmd, n, 4);
    size_t len = (size_t)strtoul(a, NULL, 10);
    free(a);
    uint8_t *big = malloc(len ? len : 1);
    if (big == NULL)
      cleanup_exit(4);
    for (size_t i = 0; i < len; i++)
      big[i] = (uint8_t)(i * 7);
    send_result(h, PP_RES_OK, 1000, big, len);
    free(big);
  } else if (n == 3 && memcmp(cmd, "pid", 3) == 0) {
    int k = snprintf(text, sizeof text, "%d", (int)getpid());
    send_result(h, PP_RES_OK, 1000, text, (size_t)k);
  } else if (starts(cmd, n, "env:")) {
    char *a = arg_str(cmd, n, 4);
    const char *v = getenv(a);
    if (v == NULL)
      v = "(unset)";
    send_result(h, PP_RES_OK, 1000, v, strlen(v));
    free(a);
  } else if (n == 3 && memcmp(cmd, "cwd", 3) == 0) {
    char dir[4096];
    if (getcwd(dir, sizeof dir) == NULL)
      snprintf(dir, sizeof dir, "(getcwd failed)");
    send_result(h, PP_RES_OK, 1000, dir, strlen(dir));
  } else if (starts(cmd, n, "exit:")) {
    char *a = arg_str(cmd, n, 5);
    int code = atoi(a);
    free(a);
    _exit(code);
  } else if (starts(cmd, n, "bigcut:")) {
    char *a = arg_str(cmd, n, 7);
    size_t len = (size_t)strtoul(a, NULL, 10);
    free(a);
    uint8_t hdr[PP_FRAME_HDR], rt[8] = {0};
    pp_frame_hdr rh = {PP_PROTO_VERSION, PP_MSG_RESULT, PP_RES_OK,
                       (uint32_t)(8 + len), h->attempt, h->id};
    pp_frame_encode_hdr(hdr, &rh);
    uint8_t *half = calloc(1, len / 2 + 1);
    if (half == NULL)
      cleanup_exit(4);
    write_full(hdr, sizeof hdr);
    write_full(rt, 8);
    write_full(half, len / 2);
    cleanup_exit(3);
  } else if (n == 4 && memcmp(cmd, "segv", 4) == 0) {
    struct rlimit rl = {0, 0};
    setrlimit(RLIMIT_CORE, &rl); /* no core file */
    signal(SIGSEGV, SIG_DFL);    /* not a sanitizer's handler */
    raise(SIGSEGV);
    kill(getpid(), SIGKILL); /* not reached */
  } else if (n == 7 && memcmp(cmd, "garbage", 7) == 0) {
    uint8_t junk[32];
    for (size_t i = 0; i < sizeof junk; i++)
      junk[i] = (uint8_t)(0xa5 ^ (i * 13)); /* first bytes 0xa5 0xa8: no magic */
    write_full(junk, sizeof junk);
  } else if (n == 5 && memcmp(cmd, "badid", 5) == 0) {
    pp_frame_hdr wrong = *h;
    wrong.id += 1000000;
    send_result(&wrong, PP_RES_OK, 1000, "x", 1);
  } else if (n == 9 && memcmp(cmd, "badstatus", 9) == 0) {
    send_result(h, 7, 1000, "x", 1);
  } else {
    static const char msg[] = "unknown command";
    send_result(h, PP_RES_EXC, 1000, msg, sizeof msg - 1);
  }
}

int main(int argc, char **argv) {
  uint8_t hdrb[PP_FRAME_HDR], pidb[4];
  int fl;

  if (argc > 1 && strcmp(argv[1], "template") == 0) {
    int rc = pp_tpl_serve(PP_TPL_FD, NULL);
    if (rc != 0) /* the engine is gone (1), or no fork server here */
      return rc == 1 ? 0 : 2;
    argv++; /* a forked child: a worker with the other arguments */
    argc--;
  }
  if (argc > 1 && strcmp(argv[1], "die-at-start") == 0)
    _exit(7); /* nothing allocated yet; skips a sanitizer's exit-time scan */
  if (argc > 1 && strcmp(argv[1], "slow-start") == 0)
    usleep(20000);
  if (fcntl(FD, F_GETFD) < 0) {
    fprintf(stderr, "fake_worker: no pipe on fd 3\n");
    return 2;
  }
  fl = fcntl(FD, F_GETFL);
  if (fl >= 0 && (fl & O_NONBLOCK))
    fcntl(FD, F_SETFL, fl & ~O_NONBLOCK);
  pp_keyset_init(&known);

  struct stat st;
  if (fstat(PP_WSTATUS_FD, &st) == 0 && st.st_size >= PP_WSTATUS_SIZE) {
    void *m = mmap(NULL, PP_WSTATUS_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                   PP_WSTATUS_FD, 0);
    if (m != MAP_FAILED && ((pp_wstatus *)m)->magic == PP_WSTATUS_MAGIC)
      status = m;
  }
  pp_buf_init(&held);
  pp_put_u32(pidb, (uint32_t)getpid());
  send_frame(PP_MSG_HELLO, 0, 0, 0, pidb, 4, NULL, 0);

  for (;;) {
    pp_frame_hdr h;
    struct pollfd pfd = {FD, POLLIN, 0};
    if (pp_buf_avail(&held) > 0 && poll(&pfd, 1, 0) == 0)
      flush_held(); /* nothing waiting: write what was held back */
    if (!read_full(hdrb, sizeof hdrb))
      cleanup_exit(0); /* EOF: the engine closed the pipe */
    int rc = pp_frame_decode_hdr(hdrb, PP_FRAME_MAX_DEFAULT, &h);
    if (rc != PP_OK) {
      fprintf(stderr, "fake_worker: bad frame from engine: %s\n",
              pp_strerror(rc));
      cleanup_exit(3);
    }
    payload = malloc(h.length ? h.length : 1);
    if (payload == NULL)
      cleanup_exit(4);
    if (h.length > 0 && !read_full(payload, h.length)) {
      fprintf(stderr, "fake_worker: EOF inside a frame\n");
      cleanup_exit(3);
    }
    switch (h.type) {
    case PP_MSG_FUNC:
      if (h.length < PP_KEY_LEN) {
        fprintf(stderr, "fake_worker: short FUNC\n");
        cleanup_exit(3);
      }
      if (h.flags & PP_FUNCF_RESET)
        pp_keyset_clear(&known);
      if (pp_keyset_add(&known, payload) != PP_OK)
        cleanup_exit(4);
      break;
    case PP_MSG_JOB:
      if (h.length < PP_KEY_LEN) {
        fprintf(stderr, "fake_worker: short JOB\n");
        cleanup_exit(3);
      }
      pp_wstatus_begin(status, h.id, h.attempt, now_ns());
      run_job(&h, payload);
      pp_wstatus_end(status);
      break;
    case PP_MSG_BYE:
      flush_held();
      cleanup_exit(0);
      break;
    case PP_MSG_SHM:
      /* the engine's arena (read with read(2): its descriptor is dropped);
       * this worker takes no shared memory, so its jobs come as bytes */
      break;
    default:
      fprintf(stderr, "fake_worker: unexpected frame type %d\n", h.type);
      cleanup_exit(3);
    }
    free(payload);
    payload = NULL;
  }
}
