/* buf.c — growable byte buffer (see buf.h). Not thread-safe: one owner. */
#include "buf.h"
#include "pp_common.h"

#include <stdlib.h>
#include <string.h>

void pp_buf_init(pp_buf *b) { memset(b, 0, sizeof *b); }

void pp_buf_free(pp_buf *b) {
  free(b->data);
  pp_buf_init(b);
}

int pp_buf_reserve(pp_buf *b, size_t n) {
  size_t live = b->len - b->off;
  if (b->off > 0 && (b->cap - b->len < n)) {
    /* compact: move unread bytes to the front */
    memmove(b->data, b->data + b->off, live);
    b->off = 0;
    b->len = live;
  }
  if (b->cap - b->len >= n)
    return PP_OK;
  if (n > SIZE_MAX / 2 - b->len)
    return PP_ENOMEM;
  size_t want = b->len + n;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < want)
    cap *= 2;
  uint8_t *p = realloc(b->data, cap);
  if (p == NULL)
    return PP_ENOMEM;
  b->data = p;
  b->cap = cap;
  return PP_OK;
}

int pp_buf_append(pp_buf *b, const void *p, size_t n) {
  int rc = pp_buf_reserve(b, n);
  if (rc != PP_OK)
    return rc;
  if (n > 0)
    memcpy(b->data + b->len, p, n);
  b->len += n;
  return PP_OK;
}

void pp_buf_consume(pp_buf *b, size_t n) {
  b->off += n;
  if (b->off >= b->len)
    b->off = b->len = 0;
}
