/* shm.h — the engine's shared-memory arena for out-of-band buffers: one
 * memfd region, mapped MAP_SHARED by the engine's process, whose descriptor
 * is passed once to each local worker (SCM_RIGHTS, protocol 4.2), which maps
 * it privately. Job arguments with buffers are copied into it once at
 * submit and read in place by the worker; large results land in it too.
 *
 * Allocation is first fit over a sorted list of free extents, in pages
 * (4096 bytes), so a block starts on a page boundary and a worker can
 * discard its private copies of a block's pages (MADV_DONTNEED). A block is
 * owned by exactly one job record (job.h): freed when the record is freed.
 * Who else may read it keeps the record alive (a write request, a worker
 * that still references the arguments: pool.c). Freed pages stay resident
 * (warm for the next copy) until the arena is destroyed.
 *
 * The arena is reference counted (atomic): the engine holds one reference
 * and every block holds one, so a job that outlives its engine frees its
 * block safely. Every function is thread-safe (one mutex). */
#ifndef PP_SHM_H
#define PP_SHM_H

#include <stddef.h>
#include <stdint.h>

#define PP_SHM_PAGE 4096u
/* sections smaller than this are not worth a shared block */
#define PP_SHM_MIN (64u * 1024u)

typedef struct pp_shm pp_shm;

/* pp_shm_new: an arena of cap bytes (rounded up to pages; the memfd is
 * sparse: pages exist once written). Returns it with one reference, or NULL
 * (no memfd on this system, or out of memory): the engine then works
 * without one. */
pp_shm *pp_shm_new(size_t cap);
void pp_shm_ref(pp_shm *s);
/* pp_shm_unref: drop a reference; the last one unmaps and closes. */
void pp_shm_unref(pp_shm *s);

/* pp_shm_fd: the memfd (owned by the arena; dup it to keep it). */
int pp_shm_fd(const pp_shm *s);
/* pp_shm_size: the region's size in bytes. */
size_t pp_shm_size(const pp_shm *s);
/* pp_shm_base: where the region is mapped in this process. */
uint8_t *pp_shm_base(const pp_shm *s);

/* pp_shm_alloc: a block of at least len bytes (len > 0). Returns its
 * address and its offset in *off, taking one arena reference for the block,
 * or NULL when no free extent is large enough (the caller falls back to
 * ordinary memory). */
uint8_t *pp_shm_alloc(pp_shm *s, size_t len, uint64_t *off);
/* pp_shm_free: give back the block at off of len bytes (as allocated) and
 * its arena reference. */
void pp_shm_free(pp_shm *s, uint64_t off, size_t len);
/* pp_shm_used: bytes in allocated blocks (pages). */
size_t pp_shm_used(pp_shm *s);

#endif
