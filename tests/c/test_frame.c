/* test_frame.c — the pp wire framing: header encode/decode, pp_frame_next on
 * every kind of partial and malformed input, pp_frame_append, a stream
 * fed one byte at a time, and the fork server's control messages
 * (template.h). */
#include "check.h"

#include <uv.h>

#include "buf.h"
#include "frame.h"
#include "pp_common.h"
#include "template.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* raw_hdr: 24 header bytes with every field chosen by the caller, so that
 * malformed headers (bad magic, version, type) can be built. */
static void raw_hdr(uint8_t out[PP_FRAME_HDR], uint16_t magic, uint8_t version,
                    uint8_t type, uint32_t flags, uint32_t length,
                    uint32_t attempt, uint64_t id) {
  out[0] = (uint8_t)(magic & 0xff);
  out[1] = (uint8_t)(magic >> 8);
  out[2] = version;
  out[3] = type;
  pp_put_u32(out + 4, flags);
  pp_put_u32(out + 8, length);
  pp_put_u32(out + 12, attempt);
  pp_put_u64(out + 16, id);
}

static void test_le_helpers(void) {
  uint8_t b[8];
  pp_put_u32(b, 0x11223344u);
  CHECK(b[0] == 0x44 && b[1] == 0x33 && b[2] == 0x22 && b[3] == 0x11);
  CHECK(pp_get_u32(b) == 0x11223344u);
  pp_put_u64(b, 0x0102030405060708ull);
  CHECK(b[0] == 0x08 && b[7] == 0x01);
  CHECK(pp_get_u64(b) == 0x0102030405060708ull);
  pp_put_u64(b, UINT64_MAX);
  CHECK(pp_get_u64(b) == UINT64_MAX);
}

static void test_encode_decode(void) {
  static const pp_frame_hdr cases[] = {
      {0, PP_MSG_HELLO, 0, 0, 0, 0},
      {0, PP_MSG_FUNC, PP_FUNCF_RESET, 32, 0, 0},
      {0, PP_MSG_JOB, PP_JOBF_CHUNK, 12345, 7, 99},
      {0, PP_MSG_RESULT, 0xdeadbeefu, 100, UINT32_MAX, UINT64_MAX},
      {0, PP_MSG_BYE, 0, 0, 1, 0x8000000000000001ull},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint8_t raw[PP_FRAME_HDR];
    pp_frame_hdr in = cases[i], out;
    in.version = 99; /* ignored by the encoder */
    memset(raw, 0xcc, sizeof raw);
    pp_frame_encode_hdr(raw, &in);
    CHECK(raw[0] == 0x70 && raw[1] == 0x70); /* "pp" */
    CHECK(raw[2] == PP_PROTO_VERSION);
    CHECK(raw[3] == cases[i].type);
    CHECK(pp_get_u32(raw + 8) == cases[i].length);
    memset(&out, 0, sizeof out);
    CHECK(pp_frame_decode_hdr(raw, UINT32_MAX, &out) == PP_OK);
    CHECK(out.version == PP_PROTO_VERSION);
    CHECK(out.type == cases[i].type);
    CHECK(out.flags == cases[i].flags);
    CHECK(out.length == cases[i].length);
    CHECK(out.attempt == cases[i].attempt);
    CHECK(out.id == cases[i].id);
  }
}

static void test_decode_errors(void) {
  uint8_t raw[PP_FRAME_HDR];
  pp_frame_hdr h;

  raw_hdr(raw, 0x7071, 1, PP_MSG_JOB, 0, 0, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 100, &h) == PP_EMAGIC);
  raw_hdr(raw, 0x0000, 1, PP_MSG_JOB, 0, 0, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 100, &h) == PP_EMAGIC);
  /* magic is checked before anything else */
  raw_hdr(raw, 0xffff, 0, 0, 0, UINT32_MAX, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 100, &h) == PP_EMAGIC);

  raw_hdr(raw, PP_FRAME_MAGIC, 0, PP_MSG_JOB, 0, 0, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 100, &h) == PP_EVERSION);
  raw_hdr(raw, PP_FRAME_MAGIC, 2, PP_MSG_JOB, 0, 0, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 100, &h) == PP_EVERSION);
  raw_hdr(raw, PP_FRAME_MAGIC, 255, 0, 0, UINT32_MAX, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 100, &h) == PP_EVERSION);

  raw_hdr(raw, PP_FRAME_MAGIC, 1, 0, 0, 0, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 100, &h) == PP_ETYPE);
  raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_TYPE_MAX + 1, 0, 0, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 100, &h) == PP_ETYPE);
  raw_hdr(raw, PP_FRAME_MAGIC, 1, 255, 0, 0, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 100, &h) == PP_ETYPE);
  for (int t = 1; t <= PP_MSG_TYPE_MAX; t++) {
    raw_hdr(raw, PP_FRAME_MAGIC, 1, (uint8_t)t, 0, 0, 0, 1);
    CHECK(pp_frame_decode_hdr(raw, 100, &h) == PP_OK);
  }
  /* every byte value: accepted exactly when it names a known type */
  int sweep_bad = 0;
  for (int t = 0; t < 256; t++) {
    raw_hdr(raw, PP_FRAME_MAGIC, 1, (uint8_t)t, 0, 0, 0, 1);
    int want = pp_frame_type_known((unsigned)t) ? PP_OK : PP_ETYPE;
    if (pp_frame_decode_hdr(raw, 100, &h) != want)
      sweep_bad++;
  }
  CHECK(sweep_bad == 0);
  CHECK(!pp_frame_type_known(0) && !pp_frame_type_known(PP_MSG_TYPE_MAX + 1) &&
        !pp_frame_type_known(255));

  raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_RESULT, 0, 101, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 100, &h) == PP_ETOOBIG);
  raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_RESULT, 0, 100, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 100, &h) == PP_OK);
  CHECK(h.length == 100);
  raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_RESULT, 0, UINT32_MAX, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, PP_FRAME_MAX_DEFAULT, &h) == PP_ETOOBIG);
  CHECK(pp_frame_decode_hdr(raw, UINT32_MAX, &h) == PP_OK);
  raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_RESULT, 0, 1, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 0, &h) == PP_ETOOBIG);
  raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_BYE, 0, 0, 0, 1);
  CHECK(pp_frame_decode_hdr(raw, 0, &h) == PP_OK);
}

static void test_next_partial(void) {
  pp_buf b;
  pp_frame_hdr h;
  const uint8_t *p = NULL;
  uint8_t raw[PP_FRAME_HDR];
  const char payload[] = "hello, payload";
  const uint32_t plen = (uint32_t)strlen(payload);

  /* empty buffer, never allocated */
  pp_buf_init(&b);
  CHECK(pp_frame_next(&b, 1000, &h, &p) == 0);
  CHECK(b.data == NULL && b.cap == 0);

  raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_RESULT, 3, plen, 2, 42);

  /* every partial header length */
  for (size_t n = 1; n < PP_FRAME_HDR; n++) {
    pp_buf_init(&b);
    CHECK(pp_buf_append(&b, raw, n) == PP_OK);
    CHECKF(pp_frame_next(&b, 1000, &h, &p) == 0, "header prefix of %zu", n);
    CHECK(pp_buf_avail(&b) == n); /* nothing consumed */
    pp_buf_free(&b);
  }

  /* header complete, payload missing or partial */
  pp_buf_init(&b);
  CHECK(pp_buf_append(&b, raw, sizeof raw) == PP_OK);
  CHECK(pp_frame_next(&b, 1000, &h, &p) == 0);
  for (uint32_t i = 0; i + 1 < plen; i++) {
    CHECK(pp_buf_append(&b, payload + i, 1) == PP_OK);
    CHECK(pp_frame_next(&b, 1000, &h, &p) == 0);
  }
  CHECK(pp_buf_append(&b, payload + plen - 1, 1) == PP_OK);

  /* complete */
  p = NULL;
  CHECK(pp_frame_next(&b, 1000, &h, &p) == 1);
  CHECK(h.type == PP_MSG_RESULT && h.flags == 3 && h.length == plen &&
        h.attempt == 2 && h.id == 42 && h.version == PP_PROTO_VERSION);
  CHECK(p == b.data + b.off + PP_FRAME_HDR);
  CHECK(p != NULL && memcmp(p, payload, plen) == 0);
  /* pp_frame_next does not consume */
  CHECK(pp_buf_avail(&b) == PP_FRAME_HDR + plen);
  CHECK(pp_frame_next(&b, 1000, &h, &p) == 1);
  pp_buf_consume(&b, PP_FRAME_HDR + h.length);
  CHECK(pp_buf_avail(&b) == 0);
  CHECK(pp_frame_next(&b, 1000, &h, &p) == 0);
  pp_buf_free(&b);

  /* a frame with an empty payload is complete with just its header */
  pp_buf_init(&b);
  raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_BYE, 0, 0, 0, 0);
  CHECK(pp_buf_append(&b, raw, sizeof raw) == PP_OK);
  CHECK(pp_frame_next(&b, 0, &h, &p) == 1);
  CHECK(h.type == PP_MSG_BYE && h.length == 0);
  pp_buf_free(&b);
}

static void test_next_two_frames(void) {
  pp_buf b;
  pp_frame_hdr h;
  const uint8_t *p;
  pp_buf_init(&b);
  CHECK(pp_frame_append(&b, PP_MSG_JOB, 1, 10, 1, "first", 5) == PP_OK);
  CHECK(pp_frame_append(&b, PP_MSG_RESULT, 2, 11, 3, "second!", 7) == PP_OK);
  CHECK(pp_frame_next(&b, 1000, &h, &p) == 1);
  CHECK(h.type == PP_MSG_JOB && h.id == 10 && h.length == 5 && h.flags == 1 &&
        h.attempt == 1);
  CHECK(memcmp(p, "first", 5) == 0);
  pp_buf_consume(&b, PP_FRAME_HDR + h.length);
  CHECK(pp_frame_next(&b, 1000, &h, &p) == 1);
  CHECK(h.type == PP_MSG_RESULT && h.id == 11 && h.length == 7 &&
        h.flags == 2 && h.attempt == 3);
  CHECK(memcmp(p, "second!", 7) == 0);
  pp_buf_consume(&b, PP_FRAME_HDR + h.length);
  CHECK(pp_buf_avail(&b) == 0);
  CHECK(pp_frame_next(&b, 1000, &h, &p) == 0);

  /* garbage right after a good frame: the good one still comes out, the
   * garbage is reported once the first two bytes of it are there */
  CHECK(pp_frame_append(&b, PP_MSG_HELLO, 0, 0, 0, "\1\0\0\0", 4) == PP_OK);
  CHECK(pp_buf_append(&b, "xy", 2) == PP_OK);
  CHECK(pp_frame_next(&b, 1000, &h, &p) == 1);
  CHECK(h.type == PP_MSG_HELLO && pp_get_u32(p) == 1);
  pp_buf_consume(&b, PP_FRAME_HDR + h.length);
  CHECK(b.off > 0); /* the check must look at off, not at data[0] */
  CHECK(pp_frame_next(&b, 1000, &h, &p) == PP_EMAGIC);
  pp_buf_free(&b);
}

/* expect_bad: raw bytes must be rejected with err and nothing allocated. */
static void expect_bad(const uint8_t *raw, size_t n, uint32_t max_len, int err,
                       const char *what) {
  pp_buf b;
  pp_frame_hdr h;
  const uint8_t *p = NULL;
  pp_buf_init(&b);
  CHECK(pp_buf_append(&b, raw, n) == PP_OK);
  size_t cap = b.cap, len = b.len, off = b.off;
  uint8_t *data = b.data;
  int rc = pp_frame_next(&b, max_len, &h, &p);
  CHECKF(rc == err, "%s: got %d (%s), want %d (%s)", what, rc, pp_strerror(rc),
         err, pp_strerror(err));
  CHECKF(b.cap == cap && b.data == data && b.len == len && b.off == off,
         "%s: buffer changed by a rejected frame", what);
  /* asking again gives the same answer: the stream stays poisoned */
  CHECKF(pp_frame_next(&b, max_len, &h, &p) == err, "%s (again)", what);
  pp_buf_free(&b);
}

static void test_next_malformed(void) {
  uint8_t raw[PP_FRAME_HDR];

  /* bad magic, seen from the first two bytes on */
  raw_hdr(raw, 0x4547, 1, PP_MSG_JOB, 0, 0, 0, 1); /* "GE" as in GET */
  expect_bad(raw, 2, 1000, PP_EMAGIC, "bad magic, 2 bytes");
  expect_bad(raw, 5, 1000, PP_EMAGIC, "bad magic, 5 bytes");
  expect_bad(raw, sizeof raw, 1000, PP_EMAGIC, "bad magic, full header");
  raw_hdr(raw, 0x7000, 1, PP_MSG_JOB, 0, 0, 0, 1); /* right first byte only */
  expect_bad(raw, 2, 1000, PP_EMAGIC, "half magic, 2 bytes");
  expect_bad(raw, sizeof raw, 1000, PP_EMAGIC, "half magic, full header");

  raw_hdr(raw, PP_FRAME_MAGIC, 2, PP_MSG_JOB, 0, 0, 0, 1);
  expect_bad(raw, sizeof raw, 1000, PP_EVERSION, "version 2");
  raw_hdr(raw, PP_FRAME_MAGIC, 0, PP_MSG_JOB, 0, 0, 0, 1);
  expect_bad(raw, sizeof raw, 1000, PP_EVERSION, "version 0");

  raw_hdr(raw, PP_FRAME_MAGIC, 1, 0, 0, 0, 0, 1);
  expect_bad(raw, sizeof raw, 1000, PP_ETYPE, "type 0");
  raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_TYPE_MAX + 1, 0, 0, 0, 1);
  expect_bad(raw, sizeof raw, 1000, PP_ETYPE, "type max+1");
  raw_hdr(raw, PP_FRAME_MAGIC, 1, 0xff, 0, 0, 0, 1);
  expect_bad(raw, sizeof raw, 1000, PP_ETYPE, "type 255");

  raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_RESULT, 0, 1001, 0, 1);
  expect_bad(raw, sizeof raw, 1000, PP_ETOOBIG, "length max+1");
  raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_RESULT, 0, UINT32_MAX, 0, 1);
  expect_bad(raw, sizeof raw, 1000, PP_ETOOBIG, "length 0xFFFFFFFF");
  expect_bad(raw, sizeof raw, PP_FRAME_MAX_DEFAULT, PP_ETOOBIG,
             "length 0xFFFFFFFF, default limit");
  raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_RESULT, 0, PP_FRAME_MAX_DEFAULT + 1,
          0, 1);
  expect_bad(raw, sizeof raw, PP_FRAME_MAX_DEFAULT, PP_ETOOBIG,
             "length default+1");

  /* a length exactly at the limit is accepted: more bytes are wanted, and
   * deciding so must not reserve room for the payload either */
  {
    pp_buf b;
    pp_frame_hdr h;
    const uint8_t *p;
    pp_buf_init(&b);
    raw_hdr(raw, PP_FRAME_MAGIC, 1, PP_MSG_RESULT, 0, PP_FRAME_MAX_DEFAULT, 0,
            1);
    CHECK(pp_buf_append(&b, raw, sizeof raw) == PP_OK);
    size_t cap = b.cap;
    CHECK(pp_frame_next(&b, PP_FRAME_MAX_DEFAULT, &h, &p) == 0);
    CHECK(b.cap == cap);
    pp_buf_free(&b);

    /* and at a small limit the whole frame comes out */
    uint8_t payload[1000];
    memset(payload, 'z', sizeof payload);
    pp_buf_init(&b);
    CHECK(pp_frame_append(&b, PP_MSG_RESULT, 0, 5, 1, payload, 1000) == 0);
    CHECK(pp_frame_next(&b, 1000, &h, &p) == 1);
    CHECK(h.length == 1000 && p[999] == 'z');
    CHECK(pp_frame_next(&b, 999, &h, &p) == PP_ETOOBIG);
    pp_buf_free(&b);
  }
}

static void test_append(void) {
  pp_buf b;
  pp_frame_hdr h;
  const uint8_t *p;
  uint8_t big[5000];
  for (size_t i = 0; i < sizeof big; i++)
    big[i] = (uint8_t)(i * 7 + 1);

  pp_buf_init(&b);
  CHECK(pp_frame_append(&b, PP_MSG_BYE, 0, 0, 0, NULL, 0) == PP_OK);
  CHECK(pp_buf_avail(&b) == PP_FRAME_HDR);
  CHECK(pp_frame_decode_hdr(b.data, 0, &h) == PP_OK);
  CHECK(h.type == PP_MSG_BYE && h.length == 0);

  CHECK(pp_frame_append(&b, PP_MSG_JOB, PP_JOBF_CHUNK, 77, 4, big,
                        sizeof big) == PP_OK);
  CHECK(pp_buf_avail(&b) == 2 * PP_FRAME_HDR + sizeof big);
  CHECK(pp_frame_decode_hdr(b.data + PP_FRAME_HDR, UINT32_MAX, &h) == PP_OK);
  CHECK(h.type == PP_MSG_JOB && h.flags == PP_JOBF_CHUNK && h.id == 77 &&
        h.attempt == 4 && h.length == sizeof big);
  CHECK(memcmp(b.data + 2 * PP_FRAME_HDR, big, sizeof big) == 0);

  /* and pp_frame_next agrees */
  CHECK(pp_frame_next(&b, UINT32_MAX, &h, &p) == 1 && h.type == PP_MSG_BYE);
  pp_buf_consume(&b, PP_FRAME_HDR);
  CHECK(pp_frame_next(&b, UINT32_MAX, &h, &p) == 1 && h.type == PP_MSG_JOB);
  CHECK(memcmp(p, big, sizeof big) == 0);
  pp_buf_consume(&b, PP_FRAME_HDR + h.length);
  CHECK(pp_buf_avail(&b) == 0);

#if SIZE_MAX > UINT32_MAX
  /* a payload whose length does not fit the header is refused untouched */
  size_t len = b.len, cap = b.cap;
  CHECK(pp_frame_append(&b, PP_MSG_JOB, 0, 1, 1, big,
                        (size_t)UINT32_MAX + 1) == PP_ETOOBIG);
  CHECK(b.len == len && b.cap == cap);
#endif
  pp_buf_free(&b);
}

/* A stream of frames fed one byte at a time must give the same frames as
 * when it arrives whole. */
static void test_byte_at_a_time(void) {
  enum { NF = 12 };
  pp_buf stream, in;
  size_t lens[NF];
  uint8_t payload[6000 + NF];
  pp_buf_init(&stream);
  for (size_t i = 0; i < sizeof payload; i++)
    payload[i] = (uint8_t)(i ^ (i >> 8));
  for (int i = 0; i < NF; i++) {
    static const size_t pick[] = {0, 1, 23, 24, 25, 100, 4095, 4096, 5999};
    lens[i] = pick[i % (sizeof pick / sizeof pick[0])];
    CHECK(pp_frame_append(&stream, (uint8_t)(1 + i % PP_MSG_TYPE_MAX),
                          (uint32_t)i * 3, 1000u + (uint64_t)i, (uint32_t)i,
                          payload + i, lens[i]) == PP_OK);
  }

  pp_buf_init(&in);
  int got = 0, bad = 0;
  for (size_t k = 0; k < stream.len; k++) {
    pp_frame_hdr h;
    const uint8_t *p;
    int rc;
    if (pp_buf_append(&in, stream.data + k, 1) != PP_OK) {
      bad++;
      break;
    }
    while ((rc = pp_frame_next(&in, 8192, &h, &p)) == 1) {
      if (got >= NF || h.type != 1 + got % PP_MSG_TYPE_MAX ||
          h.flags != (uint32_t)got * 3 || h.id != 1000u + (uint64_t)got ||
          h.attempt != (uint32_t)got || h.length != lens[got] ||
          (h.length && memcmp(p, payload + got, h.length) != 0))
        bad++;
      got++;
      pp_buf_consume(&in, PP_FRAME_HDR + h.length);
    }
    if (rc < 0)
      bad++;
  }
  CHECKF(got == NF, "got %d frames of %d", got, NF);
  CHECK(bad == 0);
  CHECK(pp_buf_avail(&in) == 0);
  pp_buf_free(&in);
  pp_buf_free(&stream);
}

static void test_strerror(void) {
  /* every code of the table has a message and a name, all distinct, and
   * none collides with libuv's range */
  static const int codes[] = {
#define XX(name, val, msg) PP_##name,
      PP_ERRNO_MAP(XX)
#undef XX
  };
  size_t n = sizeof codes / sizeof codes[0];
  for (size_t i = 0; i < n; i++) {
    const char *s = pp_strerror(codes[i]);
    CHECK(s != NULL && strcmp(s, "unknown error") != 0);
    CHECK(pp_err_name(codes[i]) != NULL);
    CHECK(codes[i] >= PP_ERR_MIN && codes[i] <= PP_ERR_MAX);
    CHECK(codes[i] < -4095);
    for (size_t k = 0; k < i; k++)
      CHECK(codes[k] != codes[i]);
  }
  CHECK(strcmp(pp_strerror(PP_OK), "success") == 0);
  CHECK(strcmp(pp_strerror(12345), "unknown error") == 0);
  CHECK(pp_err_name(UV_EPERM) == NULL);
  /* libuv results become pp codes where they are received */
  CHECK(pp_err_from_uv(0) == PP_OK);
  CHECK(pp_err_from_uv(UV_ENOMEM) == PP_ENOMEM);
  CHECK(pp_err_from_uv(UV_EOF) == PP_EPEER);
  CHECK(pp_err_from_uv(UV_ECONNREFUSED) == PP_ECONNREFUSED);
  CHECK(pp_err_from_uv(UV_EADDRINUSE) == PP_EADDRINUSE);
  CHECK(pp_err_from_uv(UV_EPERM) == PP_EIO);
  CHECK(pp_err_from_uv(PP_EAUTH) == PP_EAUTH);
}

static void test_build_parts(void) {
  pp_buf b;
  pp_frame_hdr h;
  const uint8_t *p;
  pp_buf_init(&b);
  pp_part parts[3] = {{"ab", 2}, {NULL, 0}, {"cde", 3}};
  CHECK(pp_frame_build(&b, PP_MSG_JOB, 7, 99, 3, parts, 3) == PP_OK);
  CHECK(pp_frame_next(&b, 1024, &h, &p) == 1);
  CHECK(h.type == PP_MSG_JOB && h.flags == 7 && h.id == 99 && h.attempt == 3);
  CHECK(h.length == 5 && memcmp(p, "abcde", 5) == 0);
  pp_part huge = {"x", (size_t)UINT32_MAX + 1};
  size_t before = b.len;
  CHECK(pp_frame_build(&b, PP_MSG_JOB, 0, 1, 1, &huge, 1) == PP_ETOOBIG);
  CHECK(b.len == before);
  pp_buf_free(&b);
}

/* The fork server's control messages round-trip, and every malformed one
 * (magic, version, type, length, flags, attempt, a FORK without a tag) is
 * refused before any field is used. */
static void test_template_msgs(void) {
  uint8_t b[PP_TPL_MSG_MAX + 8];
  pp_tpl_msg m, d;
  const pp_tpl_msg ms[] = {
      {PP_TPL_FORK, PP_TPL_FORKF_STATUS, 7, 0, 0, 0, 0},
      {PP_TPL_FORK, 0, 1ull << 40, 0, 0, 0, 0},
      {PP_TPL_FORKED, 0, 7, 4242, 0, 0, 0},
      {PP_TPL_FORKED, 0, 8, 0, 11, 0, 0},
      {PP_TPL_EXITED, 0, 0, 99, 0, 3, 0},
      {PP_TPL_EXITED, 0, 0, 100, 0, 0, 9},
  };
  for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
    size_t n = pp_tpl_encode(b, &ms[i]);
    CHECK(n <= PP_TPL_MSG_MAX);
    CHECK(pp_tpl_decode(b, n, &d) == PP_OK);
    CHECK(d.type == ms[i].type && d.flags == ms[i].flags && d.id == ms[i].id &&
          d.pid == ms[i].pid && d.err == ms[i].err &&
          d.status == ms[i].status && d.sig == ms[i].sig);
    CHECK(pp_tpl_decode(b, n - 1, &d) == PP_EPROTO); /* short */
    b[n] = 0;
    CHECK(pp_tpl_decode(b, n + 1, &d) == PP_EPROTO); /* long */
  }
  m = (pp_tpl_msg){PP_TPL_EXITED, 0, 0, 5, 0, 1, 0};
  size_t n = pp_tpl_encode(b, &m);
  const size_t bad_at[] = {0, 1, 2, 3, 4, 8, 12};
  for (size_t i = 0; i < sizeof bad_at / sizeof bad_at[0]; i++) {
    pp_tpl_encode(b, &m);
    b[bad_at[i]] ^= 0x40; /* magic, version, type, flags, length, attempt */
    CHECKF(pp_tpl_decode(b, n, &d) == PP_EPROTO, "byte %zu", bad_at[i]);
  }
  m = (pp_tpl_msg){PP_TPL_FORK, 0, 0, 0, 0, 0, 0}; /* a FORK needs a tag */
  n = pp_tpl_encode(b, &m);
  CHECK(pp_tpl_decode(b, n, &d) == PP_EPROTO);
  m = (pp_tpl_msg){PP_TPL_FORK, 0x2, 1, 0, 0, 0, 0}; /* unknown flag */
  n = pp_tpl_encode(b, &m);
  CHECK(pp_tpl_decode(b, n, &d) == PP_EPROTO);
  raw_hdr(b, PP_FRAME_MAGIC, PP_PROTO_VERSION, PP_MSG_JOB, 0, 0, 0, 1);
  CHECK(pp_tpl_decode(b, PP_FRAME_HDR, &d) == PP_EPROTO); /* not a control type */
}

int main(void) {
  test_le_helpers();
  test_template_msgs();
  test_encode_decode();
  test_decode_errors();
  test_next_partial();
  test_next_two_frames();
  test_next_malformed();
  test_append();
  test_byte_at_a_time();
  test_strerror();
  test_build_parts();
  return check_summary();
}
