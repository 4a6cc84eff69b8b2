/* fuzz.h — what the fuzz targets share: the libFuzzer entry point and a
 * cursor that takes bytes off the front of an input, so a target can read
 * "commands" (how to split, which mode) and then data from one buffer.
 * Every target is a plain function of its input: the same bytes give the
 * same run (except where a target says it draws random nonces). */
#ifndef PP_FUZZ_H
#define PP_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A read cursor over the input. Reads past the end give zeros and empty
 * spans; they never fail. */
typedef struct fz {
  const uint8_t *p;
  size_t n;
} fz;

/* fz_u8: the next byte, or 0 at the end. */
static inline uint8_t fz_u8(fz *f) {
  if (f->n == 0)
    return 0;
  f->n--;
  return *f->p++;
}

/* fz_u16: the next two bytes, little-endian (0 past the end). */
static inline uint16_t fz_u16(fz *f) {
  uint16_t lo = fz_u8(f);
  return (uint16_t)(lo | (uint16_t)fz_u8(f) << 8);
}

/* fz_take: up to n bytes at the front (*got says how many), borrowed. */
static inline const uint8_t *fz_take(fz *f, size_t n, size_t *got) {
  const uint8_t *p = f->p;
  if (n > f->n)
    n = f->n;
  f->p += n;
  f->n -= n;
  *got = n;
  return p;
}

#endif
