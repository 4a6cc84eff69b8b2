/* buf.h — a growable byte buffer with a read cursor, used for stream input
 * (bytes arrive, frames are cut off the front) and for building output. */
#ifndef PP_BUF_H
#define PP_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct pp_buf {
  uint8_t *data; /* owned, malloc'd */
  size_t off;    /* first unread byte */
  size_t len;    /* one past the last written byte */
  size_t cap;
} pp_buf;

/* pp_buf_init: an empty buffer (no allocation). */
void pp_buf_init(pp_buf *b);
/* pp_buf_free: release storage; the buffer is empty and reusable after. */
void pp_buf_free(pp_buf *b);
/* pp_buf_reserve: make room for n more bytes after len, compacting the
 * consumed prefix first. Returns 0 or PP_ENOMEM (buffer unchanged). */
int pp_buf_reserve(pp_buf *b, size_t n);
/* pp_buf_append: copy n bytes to the end. Returns 0 or PP_ENOMEM. */
int pp_buf_append(pp_buf *b, const void *p, size_t n);
/* pp_buf_avail: number of unread bytes. */
static inline size_t pp_buf_avail(const pp_buf *b) { return b->len - b->off; }
/* pp_buf_consume: drop n unread bytes from the front (n <= avail). */
void pp_buf_consume(pp_buf *b, size_t n);

#endif
