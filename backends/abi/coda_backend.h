/*
 * coda_backend.h — the plain-C interface between the Coda runtime and a compute backend.
 *
 * This is the only header a backend includes. Everything crossing it is plain C: fixed-width
 * integers, structs that start with their own size (so either side can detect an older or newer
 * peer and read only the fields it knows), status codes with messages, no C++ exceptions.
 *
 * Ownership: the host owns every coda_op and the memory its tensors point to for the duration of
 * one execute() call; a backend keeps no pointer into them after it returns. A backend owns its
 * own state (threads, scratch memory, device handles) behind its opaque `self` pointer, created
 * by create() and released by destroy(); there is no global state.
 *
 * Numbering of dtypes and ops is the same as in formats/schema/coda.fbs.
 */
#ifndef CODA_BACKEND_H_
#define CODA_BACKEND_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change; a host refuses backends built against another version. */
#define CODA_BACKEND_ABI_VERSION 1u

typedef enum coda_status_code {
  CODA_STATUS_OK = 0,
  CODA_STATUS_INVALID_ARGUMENT = 1,
  CODA_STATUS_UNSUPPORTED = 2,
  CODA_STATUS_OUT_OF_MEMORY = 3,
  CODA_STATUS_DEVICE_ERROR = 4,
  CODA_STATUS_INTERNAL = 5
} coda_status_code;

typedef enum coda_dtype {
  CODA_DTYPE_F32 = 0,
  CODA_DTYPE_BF16 = 1,
  CODA_DTYPE_F16 = 2,
  CODA_DTYPE_FP8_E4M3 = 3, /* "fn" variant, with F32 block scales (see coda_tensor.scale) */
  CODA_DTYPE_I32 = 4,
  CODA_DTYPE_I64 = 5,
  CODA_DTYPE_U8 = 6,
  CODA_DTYPE_I8 = 7
} coda_dtype;

typedef enum coda_op_type {
  CODA_OP_EMBED = 0,         /* in: token ids [n] I32; w: table [V, h];          out: [n, h] F32 */
  CODA_OP_RMS_NORM = 1,      /* in: x [n, d];          w: weight [d];            out: [n, d] */
  CODA_OP_LINEAR = 2,        /* in: x [n, in];         w: W [out, in];           out: x W^T [n, out] */
  CODA_OP_MLA_ATTENTION = 3, /* in: x [n, h];          w: 8 slots (coda.fbs);    out: [n, h]; uses kv */
  CODA_OP_MOE_GATE = 4,      /* in: x [n, h];          w: router [E, h], bias [E] or absent;
                                out: ids [n, k] I32, weights [n, k] F32 */
  CODA_OP_MOE_EXPERTS = 5,   /* in: x, ids, weights;   w: gate, up, down per expert; out: [n, h] */
  CODA_OP_MLP = 6,           /* in: x [n, h];          w: gate, up, down (SwiGLU); out: [n, h] */
  CODA_OP_ADD = 7,           /* in: a, b [n, d];                                  out: a + b */
  CODA_OP_HEAD = 8,          /* in: x [m, h];          w: lm_head [V, h];         out: [m, V] */
  CODA_OP_COUNT = 9
} coda_op_type;

#define CODA_MAX_DIMS 4

typedef struct coda_tensor {
  uint32_t dtype; /* coda_dtype */
  uint32_t ndim;
  uint64_t shape[CODA_MAX_DIMS]; /* row-major, last dimension contiguous */
  void* data;                    /* NULL: an absent optional weight */
  /* FP8_E4M3 weights: F32 scales, shape [ceil(rows / block), ceil(cols / block)];
     W[i][j] = e4m3(q[i][j]) * scale[i / block][j / block]. NULL otherwise. */
  const struct coda_tensor* scale;
  uint32_t block;
  uint32_t reserved;
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
   the normalized latent followed by qk_rope_head_dim values of the rotated shared key. */
typedef struct coda_kv_view {
  uint32_t dtype; /* CODA_DTYPE_BF16 or CODA_DTYPE_F32 */
  uint32_t n_ctx; /* capacity in positions */
  uint32_t row;   /* values per position = kv_lora_rank + qk_rope_head_dim */
  uint32_t reserved;
  void* data;     /* n_ctx * row elements */
} coda_kv_view;

typedef struct coda_op {
  uint32_t struct_size;
  uint32_t type;      /* coda_op_type */
  int32_t layer;      /* decoder layer, -1 when none */
  uint32_t n_tokens;  /* rows of the activations */
  uint32_t start_pos; /* position of the first row; rows are consecutive positions */
  uint32_t n_inputs, n_outputs, n_weights;
  const coda_tensor* inputs;
  coda_tensor* outputs; /* allocated by the host */
  const coda_tensor* weights;
  const coda_hparams* hparams;
  coda_kv_view kv; /* MLA_ATTENTION only */
} coda_op;

/* Services the host offers a backend. */
typedef struct coda_host {
  uint32_t struct_size;
  uint32_t abi_version;
  void* user;
  /* level: 0 debug, 1 info, 2 warning, 3 error */
  void (*log)(void* user, int level, const char* message);
} coda_host;

typedef struct coda_backend_options {
  uint32_t struct_size;
  uint32_t n_threads; /* 0: one per core */
} coda_backend_options;

/* The table a backend returns. Every function takes the backend's `self`. */
typedef struct coda_backend_api {
  uint32_t struct_size;
  uint32_t abi_version; /* CODA_BACKEND_ABI_VERSION the backend was built against */
  const char* name;     /* "cpu", "vulkan", ... */
  const char* version;  /* free-form backend version */

  /* Creates an instance; on failure returns a status and fills `error` (NUL-terminated). */
  coda_status_code (*create)(const coda_host* host, const coda_backend_options* options, void** self,
                             char* error, size_t error_size);
  void (*destroy)(void* self);
  /* One line describing the device(s) this instance runs on. */
  const char* (*describe)(void* self);
  /* Nonzero when execute() can run this op with these dtypes and shapes. */
  int (*supports_op)(void* self, const coda_op* op);
  /* Runs one op synchronously. On failure fills `error` with a message naming the problem. */
  coda_status_code (*execute)(void* self, const coda_op* op, char* error, size_t error_size);
} coda_backend_api;

/* The one symbol a backend exports. Returns NULL if the host's ABI version is not supported. */
typedef const coda_backend_api* (*coda_backend_entry_fn)(uint32_t host_abi_version);
#define CODA_BACKEND_ENTRY_SYMBOL "coda_backend_entry"

#ifdef __cplusplus
}
#endif

#endif /* CODA_BACKEND_H_ */
