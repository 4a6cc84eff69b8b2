/* shm.c — the shared-memory arena (see shm.h): a memfd, a first-fit
 * allocator over sorted free extents, reference counting. Any thread. */
#include "shm.h"
#include "pp_common.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uv.h>

typedef struct extent {
  uint64_t off, len; /* in bytes, page multiples */
} extent;

struct pp_shm {
  atomic_int refs;
  int fd;
  uint8_t *base;
  size_t size;
  uv_mutex_t mu;
  extent *free; /* [mu] sorted by offset, never adjacent (coalesced) */
  size_t nfree, capfree;
  size_t used;  /* [mu] */
};

static uint64_t pages(size_t len) {
  return ((uint64_t)len + PP_SHM_PAGE - 1) & ~(uint64_t)(PP_SHM_PAGE - 1);
}

pp_shm *pp_shm_new(size_t cap) {
  pp_shm *s = calloc(1, sizeof *s);
  if (s == NULL)
    return NULL;
  s->size = (size_t)pages(cap);
  s->fd = -1;
#ifdef MFD_CLOEXEC
  s->fd = memfd_create("pp-data", MFD_CLOEXEC);
#endif
  if (s->fd < 0 || s->size == 0 || ftruncate(s->fd, (off_t)s->size) != 0)
    goto fail;
  s->base = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
  if (s->base == MAP_FAILED) {
    s->base = NULL;
    goto fail;
  }
  s->free = malloc(16 * sizeof *s->free);
  if (s->free == NULL)
    goto fail;
  s->capfree = 16;
  s->free[0] = (extent){0, s->size};
  s->nfree = 1;
  if (uv_mutex_init(&s->mu) != 0)
    goto fail;
  atomic_init(&s->refs, 1);
  return s;
fail:
  if (s->base)
    munmap(s->base, s->size);
  if (s->fd >= 0)
    close(s->fd);
  free(s->free);
  free(s);
  return NULL;
}

void pp_shm_ref(pp_shm *s) { atomic_fetch_add(&s->refs, 1); }

void pp_shm_unref(pp_shm *s) {
  if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1)
    return;
  munmap(s->base, s->size);
  close(s->fd);
  uv_mutex_destroy(&s->mu);
  free(s->free);
  free(s);
}

int pp_shm_fd(const pp_shm *s) { return s->fd; }
size_t pp_shm_size(const pp_shm *s) { return s->size; }
uint8_t *pp_shm_base(const pp_shm *s) { return s->base; }

uint8_t *pp_shm_alloc(pp_shm *s, size_t len, uint64_t *off) {
  uint64_t want = pages(len ? len : 1);
  uint8_t *p = NULL;
  uv_mutex_lock(&s->mu);
  for (size_t i = 0; i < s->nfree; i++) {
    extent *x = &s->free[i];
    if (x->len < want)
      continue;
    *off = x->off;
    p = s->base + x->off;
    x->off += want;
    x->len -= want;
    if (x->len == 0) {
      memmove(x, x + 1, (s->nfree - i - 1) * sizeof *x);
      s->nfree--;
    }
    s->used += want;
    break;
  }
  uv_mutex_unlock(&s->mu);
  if (p != NULL)
    pp_shm_ref(s);
  return p;
}

void pp_shm_free(pp_shm *s, uint64_t off, size_t len) {
  uint64_t n = pages(len ? len : 1);
  uv_mutex_lock(&s->mu);
  size_t i = 0;
  while (i < s->nfree && s->free[i].off < off)
    i++;
  int prev = i > 0 && s->free[i - 1].off + s->free[i - 1].len == off;
  int next = i < s->nfree && off + n == s->free[i].off;
  if (prev && next) {
    s->free[i - 1].len += n + s->free[i].len;
    memmove(&s->free[i], &s->free[i + 1], (s->nfree - i - 1) * sizeof(extent));
    s->nfree--;
  } else if (prev) {
    s->free[i - 1].len += n;
  } else if (next) {
    s->free[i].off = off;
    s->free[i].len += n;
  } else {
    if (s->nfree == s->capfree) {
      extent *g = realloc(s->free, s->capfree * 2 * sizeof *g);
      if (g == NULL) { /* cannot track it: the pages are lost to reuse */
        s->used -= n;
        uv_mutex_unlock(&s->mu);
        pp_shm_unref(s);
        return;
      }
      s->free = g;
      s->capfree *= 2;
    }
    memmove(&s->free[i + 1], &s->free[i], (s->nfree - i) * sizeof(extent));
    s->free[i] = (extent){off, n};
    s->nfree++;
  }
  s->used -= n;
  uv_mutex_unlock(&s->mu);
  pp_shm_unref(s);
}

size_t pp_shm_used(pp_shm *s) {
  uv_mutex_lock(&s->mu);
  size_t u = s->used;
  uv_mutex_unlock(&s->mu);
  return u;
}
