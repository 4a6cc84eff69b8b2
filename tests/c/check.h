/* check.h — a tiny test harness shared by the C unit tests.
 *
 *   CHECK(cond)          record one check; a failure prints file:line and the
 *                        condition, and the run goes on
 *   CHECKF(cond, fmt...) the same with a printf-style explanation on failure
 *   check_summary()      print "N passed, N failed" and return the exit code
 *                        (0 when nothing failed, else 1)
 *
 * Single-threaded: call CHECK from the test's main thread only. */
#ifndef PP_TEST_CHECK_H
#define PP_TEST_CHECK_H

#include <stdarg.h>
#include <stdio.h>

static int check_passed_;
static int check_failed_;

static inline int check_record_(int ok, const char *file, int line,
                                const char *expr) {
  if (ok) {
    check_passed_++;
  } else {
    check_failed_++;
    fprintf(stderr, "FAIL %s:%d: %s\n", file, line, expr);
    fflush(stderr);
  }
  return ok;
}

#if defined(__GNUC__)
__attribute__((format(printf, 5, 6)))
#endif
static inline int check_recordf_(int ok, const char *file, int line,
                                 const char *expr, const char *fmt, ...) {
  if (!check_record_(ok, file, line, expr)) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "     ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    fflush(stderr);
    va_end(ap);
  }
  return ok;
}

/* Both evaluate to the truth of cond, so a test can bail out early:
 *   if (!CHECK(p != NULL)) return; */
#define CHECK(cond) check_record_(!!(cond), __FILE__, __LINE__, #cond)
#define CHECKF(cond, ...)                                                     \
  check_recordf_(!!(cond), __FILE__, __LINE__, #cond, __VA_ARGS__)

static inline int check_summary(void) {
  printf("%d passed, %d failed\n", check_passed_, check_failed_);
  fflush(stdout);
  return check_failed_ == 0 ? 0 : 1;
}

#endif
