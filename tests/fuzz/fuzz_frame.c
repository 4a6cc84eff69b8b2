/* fuzz_frame.c — fuzz target: the frame decoder (frame.c). The input is a
 * byte stream cut by pp_frame_next as a reader would cut it, arriving in
 * chunks of a size the input chooses, under a payload limit the input
 * chooses. Checks, besides memory safety: a frame is only returned when all
 * of it is buffered and within the limit; the header decoder agrees with
 * the stream cutter; re-encoding a decoded frame with the one frame builder
 * gives back exactly the bytes read; an error is final (the stream would be
 * closed).
 *
 * Input: [limit selector][chunk size][stream bytes...] */
#include "fuzz.h"

#include "buf.h"
#include "frame.h"
#include "pp_common.h"

#include <stdlib.h>

static const uint32_t limits[] = {0, 1, 36, 256, 65536, PP_FRAME_MAX_DEFAULT,
                                  UINT32_MAX};

/* check_frame: invariants of one frame pp_frame_next returned. */
static void check_frame(const pp_buf *b, uint32_t max_len,
                        const pp_frame_hdr *h, const uint8_t *payload) {
  const uint8_t *start = b->data + b->off;
  if (h->length > max_len || payload != start + PP_FRAME_HDR ||
      pp_buf_avail(b) < PP_FRAME_HDR + (size_t)h->length)
    __builtin_trap();
  pp_frame_hdr h2;
  if (pp_frame_decode_hdr(start, max_len, &h2) != PP_OK ||
      h2.version != h->version || h2.type != h->type ||
      h2.flags != h->flags || h2.length != h->length ||
      h2.attempt != h->attempt || h2.id != h->id)
    __builtin_trap();
  /* the builder re-creates the same bytes */
  pp_buf out;
  pp_buf_init(&out);
  if (pp_frame_append(&out, h->type, h->flags, h->id, h->attempt, payload,
                      h->length) == PP_OK) {
    if (out.len != PP_FRAME_HDR + (size_t)h->length ||
        memcmp(out.data, start, out.len) != 0)
      __builtin_trap();
  }
  pp_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz f = {data, size};
  uint32_t max_len = limits[fz_u8(&f) % (sizeof limits / sizeof limits[0])];
  size_t chunk = (size_t)fz_u8(&f) + 1;
  pp_buf b;
  pp_buf_init(&b);
  int dead = 0;
  while (f.n > 0 && !dead) {
    size_t got;
    const uint8_t *p = fz_take(&f, chunk, &got);
    if (pp_buf_append(&b, p, got) != PP_OK)
      break;
    for (;;) {
      pp_frame_hdr h;
      const uint8_t *payload = NULL;
      int rc = pp_frame_next(&b, max_len, &h, &payload);
      if (rc == 0)
        break;
      if (rc < 0) {
        /* errors are frame errors only, and say so again when asked */
        if (rc != PP_EMAGIC && rc != PP_EVERSION && rc != PP_ETYPE &&
            rc != PP_ETOOBIG)
          __builtin_trap();
        if (pp_frame_next(&b, max_len, &h, &payload) != rc)
          __builtin_trap();
        dead = 1;
        break;
      }
      check_frame(&b, max_len, &h, payload);
      pp_buf_consume(&b, PP_FRAME_HDR + h.length);
    }
  }
  pp_buf_free(&b);
  return 0;
}
