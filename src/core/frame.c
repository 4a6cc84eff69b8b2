/* frame.c — encoding and validating pp frames (see frame.h). Pure functions;
 * any thread. */
#include "frame.h"
#include "pp_common.h"

#include <string.h>

void pp_frame_encode_hdr(uint8_t out[PP_FRAME_HDR], const pp_frame_hdr *h) {
  out[0] = (uint8_t)(PP_FRAME_MAGIC & 0xff);
  out[1] = (uint8_t)(PP_FRAME_MAGIC >> 8);
  out[2] = (uint8_t)PP_PROTO_VERSION;
  out[3] = h->type;
  pp_put_u32(out + 4, h->flags);
  pp_put_u32(out + 8, h->length);
  pp_put_u32(out + 12, h->attempt);
  pp_put_u64(out + 16, h->id);
}

int pp_frame_decode_hdr(const uint8_t in[PP_FRAME_HDR], uint32_t max_len,
                        pp_frame_hdr *h) {
  if ((uint32_t)(in[0] | in[1] << 8) != PP_FRAME_MAGIC)
    return PP_EMAGIC;
  h->version = in[2];
  if (h->version != PP_PROTO_VERSION)
    return PP_EVERSION;
  h->type = in[3];
  if (!pp_frame_type_known(h->type))
    return PP_ETYPE;
  h->flags = pp_get_u32(in + 4);
  h->length = pp_get_u32(in + 8);
  h->attempt = pp_get_u32(in + 12);
  h->id = pp_get_u64(in + 16);
  if (h->length > max_len)
    return PP_ETOOBIG;
  return PP_OK;
}

int pp_frame_next(pp_buf *b, uint32_t max_len, pp_frame_hdr *h,
                  const uint8_t **payload) {
  size_t avail = pp_buf_avail(b);
  if (avail < PP_FRAME_HDR) {
    /* reject garbage as soon as the first bytes show it */
    if (avail >= 2 && (uint32_t)(b->data[b->off] | b->data[b->off + 1] << 8) !=
                          PP_FRAME_MAGIC)
      return PP_EMAGIC;
    return 0;
  }
  int rc = pp_frame_decode_hdr(b->data + b->off, max_len, h);
  if (rc != PP_OK)
    return rc;
  if (avail - PP_FRAME_HDR < h->length)
    return 0;
  *payload = b->data + b->off + PP_FRAME_HDR;
  return 1;
}

int pp_frame_build(pp_buf *out, uint8_t type, uint32_t flags, uint64_t id,
                   uint32_t attempt, const pp_part *parts, size_t n) {
  size_t len = pp_frame_parts_len(parts, n);
  if (len > UINT32_MAX)
    return PP_ETOOBIG;
  int rc = pp_buf_reserve(out, PP_FRAME_HDR + len);
  if (rc != PP_OK)
    return rc;
  pp_frame_hdr h = {PP_PROTO_VERSION, type, flags, (uint32_t)len, attempt, id};
  pp_frame_encode_hdr(out->data + out->len, &h);
  out->len += PP_FRAME_HDR;
  for (size_t i = 0; i < n; i++) {
    if (parts[i].len > 0)
      memcpy(out->data + out->len, parts[i].p, parts[i].len);
    out->len += parts[i].len;
  }
  return PP_OK;
}

int pp_frame_append(pp_buf *out, uint8_t type, uint32_t flags, uint64_t id,
                    uint32_t attempt, const void *payload, size_t len) {
  pp_part part = {payload, len};
  return pp_frame_build(out, type, flags, id, attempt, &part, 1);
}

/* ---- buffer sections ------------------------------------------------------ */

static uint64_t align_up(uint64_t x) {
  return (x + PP_BUFS_ALIGN - 1) & ~(uint64_t)(PP_BUFS_ALIGN - 1);
}

uint64_t pp_bufs_size(uint64_t pickle_len, const uint64_t *lens, uint32_t n,
                      uint64_t *off) {
  const uint64_t lim = (uint64_t)1 << 62;
  if (n < 1 || n > PP_BUFS_MAX || pickle_len > lim)
    return 0;
  uint64_t end = 16 + 8 * (uint64_t)n + pickle_len;
  for (uint32_t i = 0; i < n; i++) {
    if (lens[i] > lim)
      return 0;
    uint64_t o = align_up(end);
    if (off)
      off[i] = o;
    end = o + lens[i];
    if (end > lim)
      return 0;
  }
  return end;
}

void pp_bufs_write_head(uint8_t *out, uint64_t pickle_len,
                        const uint64_t *lens, uint32_t n) {
  pp_put_u32(out, n);
  pp_put_u32(out + 4, 0);
  pp_put_u64(out + 8, pickle_len);
  for (uint32_t i = 0; i < n; i++)
    pp_put_u64(out + 16 + 8 * (size_t)i, lens[i]);
}

int pp_bufs_parse(const uint8_t *data, size_t len, pp_bufs_view *v) {
  if (len < 16)
    return PP_EPROTO;
  uint32_t n = pp_get_u32(data);
  if (n < 1 || n > PP_BUFS_MAX || pp_get_u32(data + 4) != 0)
    return PP_EPROTO;
  if (len < 16 + 8 * (size_t)n)
    return PP_EPROTO;
  uint64_t pl = pp_get_u64(data + 8);
  uint64_t lens[PP_BUFS_MAX], offs[PP_BUFS_MAX];
  for (uint32_t i = 0; i < n; i++)
    lens[i] = pp_get_u64(data + 16 + 8 * (size_t)i);
  uint64_t total = pp_bufs_size(pl, lens, n, offs);
  if (total == 0 || total != (uint64_t)len)
    return PP_EPROTO;
  v->n = n;
  v->pickle = data + 16 + 8 * (size_t)n;
  v->pickle_len = (size_t)pl;
  for (uint32_t i = 0; i < n; i++) {
    v->off[i] = (size_t)offs[i];
    v->len[i] = (size_t)lens[i];
  }
  return PP_OK;
}
