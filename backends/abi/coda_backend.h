/*
 * coda_backend.h — the plain-C interface between the Coda runtime and a compute backend.
 *
 * This is the only header a backend includes (C99 or C++). Everything crossing it is plain C:
 * fixed-width integers, tables that start with their own size (so either side can detect an
 * older or newer peer and read only the fields it knows), status codes with messages, no C++
 * exceptions. backends/README.md is the guide: how to write, build and test a backend.
 *
 * Ownership:
 *  - The host owns every coda_op, the tensors it points to and their host memory, for the
 *    duration of one call; a backend keeps no pointer into them after it returns. Exceptions:
 *    the coda_host table lives until destroy(), and the weights given to prepare() stay valid
 *    (same addresses, same bytes) until the matching release().
 *  - A backend owns its state (threads, scratch memory, device handles) behind the opaque
 *    `self` created by create() and released by destroy(), and every buffer and event it hands
 *    out until the host frees them. There is no global state on either side.
 *  - Strings a backend returns (name, version, describe()) stay valid until destroy() (name and
 *    version: as long as the library is loaded).
 *
 * Errors: fallible functions return a coda_status_code and, on failure, write one NUL-terminated
 * line into the caller's `error` buffer (truncated to `error_size`; the buffer may be NULL when
 * error_size is 0). A failed call leaves the instance usable.
 *
 * Threads: the host calls one instance from one thread at a time. Distinct instances are
 * independent.
 *
 * Element types (coda_dtypes.h) and graph ops (coda_ops.h: numbers, tensor slots, shapes and
 * exact semantics) are defined in the two headers included here; they are part of this ABI.
 */
#ifndef CODA_BACKEND_H_
#define CODA_BACKEND_H_

#include <stddef.h>
#include <stdint.h>

#include "coda_dtypes.h"
#include "coda_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change (a field moved, removed or re-typed, a semantic changed).
   Compatible additions (new fields or functions appended to the end of a table) keep the
   version: a peer built against an older header passes a smaller struct_size, and the newer
   side reads only what that size covers. A host refuses backends built for another version. */
#define CODA_BACKEND_ABI_VERSION 1u

/* Marks the entry point as exported from a shared library built with hidden visibility. */
#if defined(_WIN32)
#define CODA_BACKEND_EXPORT __declspec(dllexport)
#elif defined(__GNUC__) || defined(__clang__)
#define CODA_BACKEND_EXPORT __attribute__((visibility("default")))
#else
#define CODA_BACKEND_EXPORT
#endif

typedef enum coda_status_code {
  CODA_STATUS_OK = 0,
  CODA_STATUS_INVALID_ARGUMENT = 1,
  CODA_STATUS_UNSUPPORTED = 2,
  CODA_STATUS_OUT_OF_MEMORY = 3,
  CODA_STATUS_DEVICE_ERROR = 4,
  CODA_STATUS_INTERNAL = 5
} coda_status_code;

/* Memory owned by a backend (device memory, or host memory it manages). Opaque to the host. */
typedef struct coda_buffer_impl* coda_buffer;
/* A point in a backend's queue of work. Opaque to the host. */
typedef struct coda_event_impl* coda_event;

/* Work on one instance runs in the order it was issued on each queue. A backend with a single
   queue treats both the same (everything in issue order), which is always correct. */
typedef enum coda_queue {
  CODA_QUEUE_COMPUTE = 0,  /* execute() runs here */
  CODA_QUEUE_TRANSFER = 1, /* uploads/downloads meant to overlap with compute */
  CODA_QUEUE_HOST = 2      /* event_wait() only: block the calling thread */
} coda_queue;

#define CODA_MAX_DIMS 4

/* A tensor lives either in host memory (data != NULL) or in a buffer of the backend that runs
   the op (data == NULL, buffer != NULL, bytes start at `offset`). Both NULL: an absent optional
   weight, or (in a placement probe, see supports_op) an activation whose memory is not yet
   known. */
typedef struct coda_tensor {
  uint32_t dtype; /* coda_dtype */
  uint32_t ndim;
  uint64_t shape[CODA_MAX_DIMS]; /* row-major, last dimension contiguous */
  void* data;
  /* FP8_E4M3 weights: F32 scales, shape [ceil(rows / block), ceil(cols / block)];
     W[i][j] = e4m3(q[i][j]) * scale[i / block][j / block]. NULL otherwise. */
  const struct coda_tensor* scale;
  uint32_t block;
  uint32_t reserved;
  coda_buffer buffer;
  uint64_t offset;
} coda_tensor;

/* The model's hyper-parameters that ops need, with derived values the host computes once. */
typedef struct coda_hparams {
  uint32_t struct_size;
  uint32_t hidden_size;
  uint32_t n_heads;
  uint32_t q_lora_rank; /* 0: plain q_proj */
  uint32_t kv_lora_rank;
  uint32_t qk_nope_head_dim;
  uint32_t qk_rope_head_dim;
  uint32_t v_head_dim;
  uint32_t n_routed_experts;
  uint32_t n_experts_per_tok;
  uint32_t n_group;
  uint32_t topk_group;
  uint32_t scoring_func;   /* 0 softmax, 1 sigmoid */
  uint32_t norm_topk_prob; /* 0/1 */
  float routed_scaling_factor;
  float rms_norm_eps;
  float softmax_scale;         /* (dn + dr)^-0.5, times mscale^2 under YaRN */
  const float* rope_inv_freq;  /* qk_rope_head_dim / 2 frequencies, YaRN-corrected */
} coda_hparams;

/* One layer's slice of a sequence's MLA latent cache: for each position, kv_lora_rank values of
   the normalized latent followed by qk_rope_head_dim values of the rotated shared key. In host
   memory (data) or in a buffer of the executing backend (buffer + offset), like coda_tensor. */
typedef struct coda_kv_view {
  uint32_t dtype; /* CODA_DTYPE_BF16 or CODA_DTYPE_F32 */
  uint32_t n_ctx; /* capacity in positions */
  uint32_t row;   /* values per position = kv_lora_rank + qk_rope_head_dim */
  uint32_t reserved;
  void* data;     /* n_ctx * row elements */
  coda_buffer buffer;
  uint64_t offset;
} coda_kv_view;

typedef struct coda_op {
  uint32_t struct_size;
  uint32_t type;      /* coda_op_type; the tensors follow its signature in coda_ops.h */
  int32_t layer;      /* decoder layer, -1 when none */
  uint32_t n_tokens;  /* rows of the activations; 0 in a placement probe */
  uint32_t start_pos; /* position of the first row; rows are consecutive positions */
  uint32_t n_inputs, n_outputs, n_weights;
  const coda_tensor* inputs;
  coda_tensor* outputs; /* allocated by the host */
  const coda_tensor* weights;
  const coda_hparams* hparams;
  coda_kv_view kv; /* MLA_ATTENTION only */
  void* prepared;  /* what prepare() returned for the weights of this op; NULL without prepare */
} coda_op;

typedef enum coda_log_level {
  CODA_LOG_DEBUG = 0,
  CODA_LOG_INFO = 1,
  CODA_LOG_WARNING = 2,
  CODA_LOG_ERROR = 3
} coda_log_level;

/* Services the host offers a backend; valid from create() until destroy(). */
typedef struct coda_host {
  uint32_t struct_size;
  uint32_t abi_version;
  void* user;
  void (*log)(void* user, int level, const char* message); /* level: coda_log_level */
  /* Host memory from the host's allocator (large staging areas, for example). NULL on failure.
     alignment is a power of two. */
  void* (*alloc)(void* user, size_t size, size_t alignment);
  void (*free)(void* user, void* ptr);
} coda_host;

typedef struct coda_backend_options {
  uint32_t struct_size;
  uint32_t n_threads; /* 0: one per core */
  uint32_t device;    /* which of device_count() devices the instance runs on */
  uint32_t flags;     /* coda_backend_flags; was `reserved` (always 0) before, so the layout holds */
} coda_backend_options;

typedef enum coda_backend_flags {
  /* Matrix products from the stored weights in F32 (or wider), activations unquantized. Without
     it a backend may quantize activations for its fast products, as DeepSeek-V3's own FP8 GEMM
     does per 1 x 128 tile; the golden tests set it to compare exactly. */
  CODA_BACKEND_EXACT_PRODUCTS = 1u << 0
} coda_backend_flags;

typedef enum coda_device_kind {
  CODA_DEVICE_CPU = 0,
  CODA_DEVICE_GPU = 1,
  CODA_DEVICE_OTHER = 2
} coda_device_kind;

#define CODA_DEVICE_NAME_SIZE 128

/* Filled by device_info(). The host sets struct_size to the size it knows; the backend writes
   no byte beyond it. */
typedef struct coda_device_info {
  uint32_t struct_size;
  uint32_t kind;         /* coda_device_kind */
  uint64_t total_memory; /* bytes of memory the device has; 0: unknown */
  uint64_t free_memory;  /* bytes free now; 0: unknown */
  char name[CODA_DEVICE_NAME_SIZE];
} coda_device_info;

/* The weights an instance will be asked to run ops with, handed over once per session. */
typedef struct coda_weights {
  uint32_t struct_size;
  uint32_t n_tensors;
  const coda_tensor* tensors; /* host memory; FP8 scales linked; valid until release() */
  const coda_hparams* hparams;
} coda_weights;

/* The table a backend returns. Every function takes the backend's `self`. */
typedef struct coda_backend_api {
  /* Frozen: these four fields keep their place in every ABI version, so that any host can read
     which version and backend a table is from before deciding whether to use it. */
  uint32_t struct_size;
  uint32_t abi_version; /* CODA_BACKEND_ABI_VERSION the backend was built against */
  const char* name;     /* "cpu", "vulkan", ...: [a-z0-9_-], at most 63 characters */
  const char* version;  /* free-form backend version */

  /* ---- Required. ---- */

  /* Creates an instance; on failure returns a status and fills `error`. CODA_STATUS_UNSUPPORTED
     says this machine has nothing the backend can run on (no device, no driver): a host that
     found the library by scanning notes that quietly instead of warning. */
  coda_status_code (*create)(const coda_host* host, const coda_backend_options* options, void** self,
                             char* error, size_t error_size);
  void (*destroy)(void* self);
  /* One line describing the device(s) this instance runs on. */
  const char* (*describe)(void* self);
  /* Nonzero when execute() can run this op with these dtypes and shapes. The host also probes
     while placing a graph, before any memory exists: n_tokens is 0, inputs and outputs carry
     dtype and shape (shape[0] = 0, any number of rows) but no data, weights are complete. */
  int (*supports_op)(void* self, const coda_op* op);
  /* Runs one op on the compute queue. Outputs in host memory are complete when it returns;
     outputs in buffers may complete later (see synchronize and events). */
  coda_status_code (*execute)(void* self, const coda_op* op, char* error, size_t error_size);

  /* ---- Optional: NULL when unsupported; the host checks before calling. Functions come in
     groups that are all present or all NULL: devices, prepare/release, buffers, events, steps. ---- */

  /* Devices this instance can see (at least 1 when present) and what each is. */
  uint32_t (*device_count)(void* self);
  coda_status_code (*device_info)(void* self, uint32_t device, coda_device_info* info, char* error,
                                  size_t error_size);

  /* Once per session, before any execute() with these weights: a device backend uploads or
     converts them. *prepared (may be left NULL) comes back in coda_op.prepared and is handed to
     release() when the session ends. CPU-style backends need neither. */
  coda_status_code (*prepare)(void* self, const coda_weights* weights, void** prepared, char* error,
                              size_t error_size);
  void (*release)(void* self, void* prepared);

  /* Blocks until all work issued to every queue has finished. */
  coda_status_code (*synchronize)(void* self, char* error, size_t error_size);

  /* Buffers: memory of `size` bytes the instance owns until buffer_free(). Transfers are queued
     on `queue` (CODA_QUEUE_COMPUTE or CODA_QUEUE_TRANSFER); the host memory they read or write
     must stay untouched until the transfer has finished (synchronize, or an event recorded after
     it). Ranges outside the buffer are an INVALID_ARGUMENT error. */
  coda_status_code (*buffer_alloc)(void* self, uint64_t size, coda_buffer* buffer, char* error, size_t error_size);
  void (*buffer_free)(void* self, coda_buffer buffer);
  coda_status_code (*buffer_upload)(void* self, coda_buffer dst, uint64_t dst_offset, const void* src,
                                    uint64_t size, uint32_t queue, char* error, size_t error_size);
  coda_status_code (*buffer_download)(void* self, coda_buffer src, uint64_t src_offset, void* dst,
                                      uint64_t size, uint32_t queue, char* error, size_t error_size);
  coda_status_code (*buffer_copy)(void* self, coda_buffer src, uint64_t src_offset, coda_buffer dst,
                                  uint64_t dst_offset, uint64_t size, uint32_t queue, char* error,
                                  size_t error_size);

  /* Events order work across queues: record marks the point after everything issued to `queue`
     so far; wait makes work issued to `queue` afterwards wait for it (CODA_QUEUE_HOST: blocks
     the caller until it is reached). An event may be recorded again once reached. */
  coda_status_code (*event_create)(void* self, coda_event* event, char* error, size_t error_size);
  coda_status_code (*event_record)(void* self, coda_event event, uint32_t queue, char* error, size_t error_size);
  coda_status_code (*event_wait)(void* self, coda_event event, uint32_t queue, char* error, size_t error_size);
  void (*event_destroy)(void* self, coda_event event);

  /* Steps (appended after the first release of version 1; both present or both NULL): the host
     brackets each forward pass with them. A step the host issues again under the same `key` is
     likely the same ops on the same tensors, the position (start_pos) and the bytes in memory
     excepted, so that a backend may record it once and replay it (as CUDA graphs do), issuing
     the ops' work later than execute() returns. The host promises nothing: a backend checks each
     op against what it recorded, and results must be those of running the ops one by one, bit
     for bit. Work held back is issued by step_end() and before any other call that touches the
     compute queue or waits (copies on it, events, synchronize, buffer_free, prepare, release). A
     step_begin() while a step is open ends that one first. */
  coda_status_code (*step_begin)(void* self, uint64_t key, char* error, size_t error_size);
  coda_status_code (*step_end)(void* self, char* error, size_t error_size);
} coda_backend_api;

/* A table must reach at least the required functions. */
#define CODA_BACKEND_API_MIN_SIZE offsetof(coda_backend_api, device_count)

/* The one symbol a backend library exports, named CODA_BACKEND_ENTRY_SYMBOL:
 *
 *   CODA_BACKEND_EXPORT const coda_backend_api* coda_backend_entry(uint32_t host_abi_version);
 *
 * It returns the backend's table (static storage). A backend that speaks several ABI versions
 * returns the one matching host_abi_version; otherwise it returns its own table anyway and the
 * host, reading the frozen abi_version field, refuses it with both version numbers. NULL means
 * the backend cannot work in this process at all. The entry point must have no side effects:
 * all work happens in create(). */
typedef const coda_backend_api* (*coda_backend_entry_fn)(uint32_t host_abi_version);
#define CODA_BACKEND_ENTRY_SYMBOL "coda_backend_entry"

#ifdef __cplusplus
}
#endif

#endif /* CODA_BACKEND_H_ */
