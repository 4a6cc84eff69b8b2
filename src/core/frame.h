/* frame.h — the pp wire framing shared by worker pipes (and, later, TCP).
 * A frame is a fixed 24-byte little-endian header followed by `length`
 * payload bytes. docs/protocol.md is the normative description. */
#ifndef PP_FRAME_H
#define PP_FRAME_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

#define PP_FRAME_MAGIC 0x7070u /* "pp" */
#define PP_PROTO_VERSION 1u
#define PP_FRAME_HDR 24u
#define PP_KEY_LEN 32u /* SHA-256 of a function descriptor */

/* Default payload limit on a worker pipe. */
#define PP_FRAME_MAX_DEFAULT (1024u * 1024u * 1024u)

enum pp_msg_type {
  PP_MSG_HELLO = 1,  /* worker -> engine: payload u32 pid */
  PP_MSG_FUNC = 2,   /* engine -> worker: key[32] + function descriptor */
  PP_MSG_JOB = 3,    /* engine -> worker: key[32] + pickled arguments */
  PP_MSG_RESULT = 4, /* worker -> engine: u64 runtime ns + pickled data */
  PP_MSG_BYE = 5,    /* engine -> worker: finish and exit, no payload */
  PP_MSG_PING = 6,   /* TCP, either side: are you there? payload echoed */
  PP_MSG_PONG = 7,   /* TCP: answer to PING, same payload */
  PP_MSG_STOP = 8,   /* client -> node: stop job (id, attempt); u32 grace ms */
  PP_MSG_RELEASE = 9, /* worker -> engine: it no longer references the
                         shared memory of JOB (id, attempt); empty */
  PP_MSG_SHM = 10,   /* engine -> worker: u64 size, the arena's descriptor
                        in SCM_RIGHTS; worker -> engine: u32 1 mapped, 0 not */
  PP_MSG_OBJ = 11,   /* engine -> worker, client -> node: key[32] + an
                        object put once (Server.put); with PP_OBJF_DROP
                        key[32] alone: forget it */
  PP_MSG_TYPE_MAX = 11,
  /* TCP handshake frames (see auth.h), valid only before authentication */
  PP_MSG_AUTH_FIRST = 16,
  PP_MSG_AUTH_LAST = 19
};

/* pp_frame_type_known: whether t is a type of this protocol version. */
static inline int pp_frame_type_known(unsigned t) {
  return (t >= 1 && t <= PP_MSG_TYPE_MAX) ||
         (t >= PP_MSG_AUTH_FIRST && t <= PP_MSG_AUTH_LAST);
}

/* JOB flags */
#define PP_JOBF_CHUNK 0x1u /* args is a list of argument tuples; result a list */
/* the payload is key[32] + limits[PP_LIMITS_LEN] + args: u64 timeout ns,
 * u64 memory limit bytes (0 = none) */
#define PP_JOBF_LIMITS 0x2u
#define PP_LIMITS_LEN 16u
/* the arguments are a buffer section (below): a pickle stream and the
 * out-of-band buffers of pickle protocol 5, each apart */
#define PP_JOBF_BUFS 0x4u
/* the arguments are not in the frame: the payload ends with a shared
 * memory descriptor (pp_shm_desc) naming where the data section lies in
 * the region the engine passed to the worker (local workers only) */
#define PP_JOBF_SHM 0x8u
/* with PP_JOBF_CHUNK: each item of the list is the one argument of its
 * call (func(item)), not a tuple of arguments (Server.map over one
 * iterable: no tuple per item to build, pickle and unpack) */
#define PP_JOBF_ONEARG 0x10u
/* the job names objects put once: after the key (and limits) come u32
 * nobjs (1..PP_JOB_OBJS_MAX), u32 reserved (0) and nobjs keys of 32
 * bytes, each sent earlier in an OBJ frame, then the arguments */
#define PP_JOBF_OBJS 0x20u
#define PP_JOB_OBJS_MAX 256u
#define PP_JOBF_KNOWN                                                          \
  (PP_JOBF_CHUNK | PP_JOBF_LIMITS | PP_JOBF_BUFS | PP_JOBF_ONEARG |            \
   PP_JOBF_OBJS)
/* OBJ flags */
#define PP_OBJF_DROP 0x1u /* payload is key[32] only: forget that object */
#define PP_OBJF_BUFS 0x4u /* the object's data is a buffer section (2.1) */
/* engine -> local worker: the data is a block of the arena: the payload
 * is key[32], u64 offset, u64 length (as PP_JOBF_SHM); the worker answers
 * with OBJ key[32] (worker -> engine) once it no longer references it */
#define PP_OBJF_SHM 0x8u
/* Default bound on the bytes of objects one worker (and one node
 * connection) holds: docs/protocol.md 2.2 */
#define PP_OBJ_LIMIT_DEFAULT (512ull * 1024 * 1024)
/* objects one peer holds at most */
#define PP_OBJS_MAX 4096u
/* the shared memory descriptor of a PP_JOBF_SHM JOB: u64 offset, u64 length
 * of the data section in the arena */
#define PP_SHM_DESC_LEN 16u
/* FUNC flags */
#define PP_FUNCF_RESET 0x1u /* forget every cached function before this one */
/* RESULT flags: the low byte is the status */
enum pp_result_status {
  PP_RES_OK = 0,     /* payload: pickled return value */
  PP_RES_EXC = 1,    /* payload: pickled (type name, message, traceback, exc) */
  PP_RES_SERIAL = 2, /* the return value could not be pickled; same layout */
  PP_RES_LOST = 3,   /* node's worker died too often: i32 exitstatus,
                        i32 termsignal, UTF-8 message */
  PP_RES_FAILED = 4, /* node could not run the job: UTF-8 message */
  PP_RES_TIMEOUT = 5, /* node: ran past its timeout, stopped: UTF-8 message */
  PP_RES_ABORTED = 6, /* node or worker: stopped by STOP: UTF-8 message */
  PP_RES_MAX = 6
};
#define PP_RES_STATUS(flags) ((flags)&0xffu)
/* RESULT flag: the payload is u64 runtime_ns, u32 stdout length, u32
 * stderr length, the job's captured stdout, its stderr, then the data */
#define PP_RESF_OUTPUT 0x100u
/* RESULT flag: the data (status OK only) is a buffer section */
#define PP_RESF_BUFS 0x200u
/* RESULT flag (worker pipes): the worker still references the shared
 * memory of this JOB's arguments; it sends RELEASE when it no longer does */
#define PP_RESF_KEPT 0x400u

/* ---- buffer sections (docs/protocol.md 2.1) ------------------------------
 * A data section with out-of-band buffers:
 *   u32 nbufs (1..PP_BUFS_MAX), u32 reserved (0), u64 pickle_len,
 *   u64 buf_len[nbufs], pickle[pickle_len],
 *   then each buffer, preceded by zero padding up to the next multiple of
 *   PP_BUFS_ALIGN bytes counted from the start of the section.
 * The section's length is exactly the end of its last buffer. */
#define PP_BUFS_MAX 256u
#define PP_BUFS_ALIGN 64u

typedef struct pp_bufs_view {
  uint32_t n;
  const uint8_t *pickle;
  size_t pickle_len;
  size_t off[PP_BUFS_MAX]; /* offset of buffer i from the section start */
  size_t len[PP_BUFS_MAX];
} pp_bufs_view;

/* pp_bufs_size: the length of a section holding a pickle of pickle_len
 * bytes and n buffers of lens[]; 0 when n is out of range or the total
 * overflows 2^63. Offsets of the buffers go to off[] (may be NULL). */
uint64_t pp_bufs_size(uint64_t pickle_len, const uint64_t *lens, uint32_t n,
                      uint64_t *off);

/* pp_bufs_write_head: write the fixed head and length table (16 + 8 n
 * bytes) of a section at out. */
void pp_bufs_write_head(uint8_t *out, uint64_t pickle_len,
                        const uint64_t *lens, uint32_t n);

/* pp_bufs_parse: validate the section data[0..len) and describe it in *v
 * (pointers into data). Returns 0 or PP_EPROTO (bad count, reserved word,
 * lengths that do not add up exactly). Pure; checks before any use. */
int pp_bufs_parse(const uint8_t *data, size_t len, pp_bufs_view *v);

typedef struct pp_frame_hdr {
  uint8_t version;
  uint8_t type;
  uint32_t flags;
  uint32_t length; /* payload bytes following the header */
  uint32_t attempt;
  uint64_t id;
} pp_frame_hdr;

/* pp_frame_encode_hdr: write h as 24 bytes at out (magic and version set
 * here; h->version is ignored). Never fails. */
void pp_frame_encode_hdr(uint8_t out[PP_FRAME_HDR], const pp_frame_hdr *h);

/* pp_frame_decode_hdr: parse and validate 24 bytes. Checks magic, version,
 * type and that length <= max_len, before anyone allocates. Returns 0 or
 * PP_EMAGIC / PP_EVERSION / PP_ETYPE / PP_ETOOBIG. */
int pp_frame_decode_hdr(const uint8_t in[PP_FRAME_HDR], uint32_t max_len,
                        pp_frame_hdr *h);

/* pp_frame_next: look for one complete frame at the front of b.
 * Returns 1 and fills *h and *payload (pointing into b, valid until b is
 * next modified; the caller consumes PP_FRAME_HDR + h->length when done),
 * 0 when more bytes are needed, or a negative error for a malformed frame
 * (the stream is then unusable and must be closed). */
int pp_frame_next(pp_buf *b, uint32_t max_len, pp_frame_hdr *h,
                  const uint8_t **payload);

/* One piece of a frame's payload: the payload of a frame is the
 * concatenation of its parts (e.g. a function key, then pickled bytes). */
typedef struct pp_part {
  const void *p;
  size_t len;
} pp_part;

/* pp_frame_parts_len: the total length of n parts. */
static inline size_t pp_frame_parts_len(const pp_part *parts, size_t n) {
  size_t len = 0;
  for (size_t i = 0; i < n; i++)
    len += parts[i].len;
  return len;
}

/* pp_frame_build: THE frame builder. Append one frame for (type, flags, id,
 * attempt) whose payload is parts[0..n) concatenated to out; the header's
 * length is their total. Returns 0, PP_ETOOBIG (total above UINT32_MAX) or
 * PP_ENOMEM; on error out is unchanged. Any thread (out is the caller's). */
int pp_frame_build(pp_buf *out, uint8_t type, uint32_t flags, uint64_t id,
                   uint32_t attempt, const pp_part *parts, size_t n);

/* pp_frame_append: pp_frame_build with a single part. */
int pp_frame_append(pp_buf *out, uint8_t type, uint32_t flags, uint64_t id,
                    uint32_t attempt, const void *payload, size_t len);

/* little-endian helpers */
static inline void pp_put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void pp_put_u64(uint8_t *p, uint64_t v) {
  pp_put_u32(p, (uint32_t)v);
  pp_put_u32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t pp_get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}
static inline uint64_t pp_get_u64(const uint8_t *p) {
  return (uint64_t)pp_get_u32(p) | (uint64_t)pp_get_u32(p + 4) << 32;
}

#endif
