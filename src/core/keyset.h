/* keyset.h — a small open-addressing set of 32-byte function keys, used to
 * remember which functions a worker process already has. One owner. */
#ifndef PP_KEYSET_H
#define PP_KEYSET_H

#include "frame.h"

#include <stddef.h>
#include <stdint.h>

typedef struct pp_keyset {
  uint8_t (*slots)[PP_KEY_LEN]; /* owned; all-zero slot = empty */
  size_t cap, len;
} pp_keyset;

void pp_keyset_init(pp_keyset *s);
void pp_keyset_free(pp_keyset *s);
/* pp_keyset_has: 1 if key is present. */
int pp_keyset_has(const pp_keyset *s, const uint8_t key[PP_KEY_LEN]);
/* pp_keyset_add: insert key. Returns 0 or PP_ENOMEM (set unchanged). */
int pp_keyset_add(pp_keyset *s, const uint8_t key[PP_KEY_LEN]);
/* pp_keyset_clear: forget every key, keep storage. */
void pp_keyset_clear(pp_keyset *s);

#endif
