/* job.c — reference-counted job and function records and the intrusive job
 * queue (see job.h). */
#include "job.h"
#include "pp_common.h"

#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

pp_func *pp_func_new(const void *blob, size_t len) {
  pp_func *f = calloc(1, sizeof *f);
  if (f == NULL)
    return NULL;
  f->blob = malloc(len ? len : 1);
  if (f->blob == NULL) {
    free(f);
    return NULL;
  }
  if (len > 0)
    memcpy(f->blob, blob, len);
  f->blob_len = len;
  SHA256(f->blob, len, f->key);
  atomic_init(&f->refs, 1);
  return f;
}

void pp_func_ref(pp_func *f) { atomic_fetch_add(&f->refs, 1); }

void pp_func_unref(pp_func *f) {
  if (f == NULL || atomic_fetch_sub(&f->refs, 1) != 1)
    return;
  free(f->blob);
  free(f);
}

pp_obj *pp_obj_new(uint8_t *data, size_t len, uint32_t flags) {
  pp_obj *o = calloc(1, sizeof *o);
  if (o == NULL)
    return NULL;
  o->data = data;
  o->len = len;
  o->flags = flags;
  SHA256(data, len, o->key);
  atomic_init(&o->refs, 1);
  atomic_init(&o->released, 0);
  return o;
}

pp_obj *pp_obj_alloc(pp_shm *shm, size_t len, uint32_t flags) {
  pp_obj *o = calloc(1, sizeof *o);
  if (o == NULL)
    return NULL;
  if (shm != NULL && len >= PP_SHM_MIN &&
      (o->data = pp_shm_alloc(shm, len, &o->shm_off)) != NULL)
    o->shm = shm; /* the block's arena reference is the record's now */
  else if ((o->data = malloc(len ? len : 1)) == NULL) {
    free(o);
    return NULL;
  }
  o->len = len;
  o->flags = flags;
  atomic_init(&o->refs, 1);
  atomic_init(&o->released, 0);
  return o;
}

void pp_obj_hash(pp_obj *o) { SHA256(o->data, o->len, o->key); }

void pp_obj_ref(pp_obj *o) { atomic_fetch_add(&o->refs, 1); }

void pp_obj_unref(pp_obj *o) {
  if (o == NULL || atomic_fetch_sub(&o->refs, 1) != 1)
    return;
  if (o->shm != NULL)
    pp_shm_free(o->shm, o->shm_off, o->len);
  else
    free(o->data);
  free(o);
}

int pp_job_set_objs(pp_job *j, pp_obj *const *objs, uint32_t n) {
  if (n > PP_JOB_OBJS_MAX)
    return PP_EINVAL;
  if (n == 0)
    return PP_OK;
  pp_obj **a = malloc(n * sizeof *a);
  uint8_t *part = malloc(8 + (size_t)n * PP_KEY_LEN);
  if (a == NULL || part == NULL) {
    free(a);
    free(part);
    return PP_ENOMEM;
  }
  pp_put_u32(part, n);
  pp_put_u32(part + 4, 0);
  uint64_t bytes = 0;
  for (uint32_t i = 0; i < n; i++) {
    pp_obj_ref(objs[i]);
    a[i] = objs[i];
    bytes += objs[i]->len;
    memcpy(part + 8 + (size_t)i * PP_KEY_LEN, objs[i]->key, PP_KEY_LEN);
  }
  j->objs_part = part;
  j->objs = a;
  j->nobjs = n;
  j->objs_bytes = bytes;
  return PP_OK;
}

pp_job *pp_job_new(pp_func *func, uint8_t *args, size_t args_len,
                   uint32_t flags, uint32_t group) {
  pp_job *j = calloc(1, sizeof *j);
  if (j == NULL)
    return NULL;
  atomic_init(&j->refs, 1);
  pp_func_ref(func);
  j->func = func;
  j->args = args;
  j->args_len = args_len;
  j->flags = flags;
  j->group = group;
  atomic_init(&j->state, PP_JOB_QUEUED);
  j->exitstatus = -1;
  return j;
}

pp_job *pp_job_new_shm(pp_func *func, pp_shm *shm, size_t args_len,
                       uint32_t flags, uint32_t group) {
  uint64_t off;
  uint8_t *p = pp_shm_alloc(shm, args_len, &off);
  if (p == NULL)
    return NULL;
  pp_job *j = pp_job_new(func, p, args_len, flags, group);
  if (j == NULL) {
    pp_shm_free(shm, off, args_len);
    return NULL;
  }
  j->shm = shm; /* the block's arena reference is the job's now */
  j->shm_off = off;
  return j;
}

void pp_job_free_result(uint8_t *result, size_t len, pp_shm *shm,
                        uint64_t off) {
  if (shm != NULL)
    pp_shm_free(shm, off, len);
  else
    free(result);
}

void pp_job_ref(pp_job *j) { atomic_fetch_add(&j->refs, 1); }

void pp_job_unref(pp_job *j) {
  if (j == NULL || atomic_fetch_sub(&j->refs, 1) != 1)
    return;
  pp_func_unref(j->func);
  for (uint32_t i = 0; i < j->nobjs; i++)
    pp_obj_unref(j->objs[i]);
  free(j->objs);
  free(j->objs_part);
  if (j->shm != NULL)
    pp_shm_free(j->shm, j->shm_off, j->args_len);
  else
    free(j->args);
  pp_job_free_result(j->result, j->rshm ? j->rshm_len : j->result_len,
                     j->rshm, j->rshm_off);
  free(j->errmsg);
  free(j->out);
  free(j->err);
  free(j);
}

void pp_jobq_push_back(pp_jobq *q, pp_job *j) {
  j->next = NULL;
  j->prev = q->tail;
  if (q->tail)
    q->tail->next = j;
  else
    q->head = j;
  q->tail = j;
  q->len++;
}

void pp_jobq_push_front(pp_jobq *q, pp_job *j) {
  j->prev = NULL;
  j->next = q->head;
  if (q->head)
    q->head->prev = j;
  else
    q->tail = j;
  q->head = j;
  q->len++;
}

pp_job *pp_jobq_pop(pp_jobq *q) {
  pp_job *j = q->head;
  if (j != NULL)
    pp_jobq_remove(q, j);
  return j;
}

void pp_jobq_remove(pp_jobq *q, pp_job *j) {
  if (j->prev)
    j->prev->next = j->next;
  else
    q->head = j->next;
  if (j->next)
    j->next->prev = j->prev;
  else
    q->tail = j->prev;
  j->next = j->prev = NULL;
  q->len--;
}
