/* keyset.c — open-addressing set of SHA-256 keys (see keyset.h). The keys
 * are uniformly random, so their first 8 bytes serve as the hash. The
 * all-zero key stands for "empty"; a real all-zero digest is not a concern. */
#include "keyset.h"
#include "pp_common.h"

#include <stdlib.h>
#include <string.h>

static const uint8_t zero_key[PP_KEY_LEN];

void pp_keyset_init(pp_keyset *s) { memset(s, 0, sizeof *s); }

void pp_keyset_free(pp_keyset *s) {
  free(s->slots);
  pp_keyset_init(s);
}

static size_t slot_of(const uint8_t *key, size_t cap) {
  uint64_t h;
  memcpy(&h, key, sizeof h);
  return (size_t)h & (cap - 1);
}

int pp_keyset_has(const pp_keyset *s, const uint8_t key[PP_KEY_LEN]) {
  if (s->cap == 0)
    return 0;
  for (size_t i = slot_of(key, s->cap);; i = (i + 1) & (s->cap - 1)) {
    if (memcmp(s->slots[i], key, PP_KEY_LEN) == 0)
      return 1;
    if (memcmp(s->slots[i], zero_key, PP_KEY_LEN) == 0)
      return 0;
  }
}

static void insert_raw(uint8_t (*slots)[PP_KEY_LEN], size_t cap,
                       const uint8_t *key) {
  size_t i = slot_of(key, cap);
  while (memcmp(slots[i], zero_key, PP_KEY_LEN) != 0)
    i = (i + 1) & (cap - 1);
  memcpy(slots[i], key, PP_KEY_LEN);
}

int pp_keyset_add(pp_keyset *s, const uint8_t key[PP_KEY_LEN]) {
  if (pp_keyset_has(s, key))
    return PP_OK;
  if ((s->len + 1) * 2 > s->cap) { /* keep load <= 1/2 */
    size_t cap = s->cap ? s->cap * 2 : 16;
    uint8_t(*slots)[PP_KEY_LEN] = calloc(cap, PP_KEY_LEN);
    if (slots == NULL)
      return PP_ENOMEM;
    for (size_t i = 0; i < s->cap; i++)
      if (memcmp(s->slots[i], zero_key, PP_KEY_LEN) != 0)
        insert_raw(slots, cap, s->slots[i]);
    free(s->slots);
    s->slots = slots;
    s->cap = cap;
  }
  insert_raw(s->slots, s->cap, key);
  s->len++;
  return PP_OK;
}

void pp_keyset_clear(pp_keyset *s) {
  if (s->slots)
    memset(s->slots, 0, s->cap * PP_KEY_LEN);
  s->len = 0;
}
