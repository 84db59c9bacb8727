/*
 * The example Coda backend: RmsNorm and Add on F32 activations, with F32 or BF16 weights, in
 * plain C99 against coda_backend.h alone. It is the walkthrough in backends/README.md: small on
 * purpose, but complete where the ABI asks for care (checked sizes, errors as messages, buffers,
 * no global mutable state). Everything else in a model runs on the next backend in the
 * preference list (--backend example,cpu).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coda_backend.h"

/* Buffers are host memory here; a device backend would hold device memory instead. */
struct coda_buffer_impl {
  unsigned char* data;
  uint64_t size;
};

typedef struct example_instance {
  const coda_host* host; /* valid until destroy() */
  char description[96];
} example_instance;

/* One line; the host puts "example" (and, for execute, the op and node) in front of it. */
static void set_error(char* error, size_t error_size, const char* message) {
  if (error && error_size > 0) snprintf(error, error_size, "%s", message);
}

static uint64_t tensor_bytes(const coda_tensor* t) {
  uint64_t n = coda_dtype_size(t->dtype);
  uint32_t d;
  for (d = 0; d < t->ndim && d < CODA_MAX_DIMS; ++d) n *= t->shape[d];
  return n;
}

/* Where a tensor's bytes are: host memory, or one of our buffers. NULL when absent or when the
   range does not fit its buffer. */
static void* tensor_data(const coda_tensor* t) {
  if (t->data) return t->data;
  if (!t->buffer) return NULL;
  if (t->offset > t->buffer->size || tensor_bytes(t) > t->buffer->size - t->offset) return NULL;
  return t->buffer->data + t->offset;
}

static int is_matrix_f32(const coda_tensor* t, uint64_t cols) {
  return t->dtype == CODA_DTYPE_F32 && t->ndim == 2 && t->shape[1] == cols;
}

/* ---- Required functions. ---- */

static coda_status_code example_create(const coda_host* host, const coda_backend_options* options, void** self,
                                       char* error, size_t error_size) {
  example_instance* inst;
  /* A host older than this header may pass smaller tables: read only what struct_size covers. */
  if (!host || host->struct_size < offsetof(coda_host, log) + sizeof(host->log) || !self) {
    set_error(error, error_size, "create() needs a host table and a result pointer");
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  if (options && options->struct_size >= offsetof(coda_backend_options, device) + sizeof(uint32_t) &&
      options->device != 0) {
    set_error(error, error_size, "there is one device (0)");
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  inst = (example_instance*)calloc(1, sizeof *inst);
  if (!inst) {
    set_error(error, error_size, "out of memory");
    return CODA_STATUS_OUT_OF_MEMORY;
  }
  inst->host = host;
  snprintf(inst->description, sizeof inst->description, "example: RmsNorm and Add in C99, host memory, 1 thread");
  if (host->log) host->log(host->user, CODA_LOG_DEBUG, "example backend created");
  *self = inst;
  return CODA_STATUS_OK;
}

static void example_destroy(void* self) { free(self); }

static const char* example_describe(void* self) { return ((example_instance*)self)->description; }

/* Decides from types and shapes only: during placement the host probes with no data and
   n_tokens = 0 (shape[0] = 0 means any number of rows). */
static int example_supports_op(void* self, const coda_op* op) {
  (void)self;
  if (!op || op->struct_size < offsetof(coda_op, kv)) return 0;
  if (op->type == CODA_OP_RMS_NORM) {
    const coda_tensor* w;
    uint64_t d;
    if (op->n_weights < 1 || op->n_inputs < 1 || op->n_outputs < 1 || !op->hparams) return 0;
    w = &op->weights[0];
    if (w->ndim != 1 || (w->dtype != CODA_DTYPE_F32 && w->dtype != CODA_DTYPE_BF16)) return 0;
    d = w->shape[0];
    return is_matrix_f32(&op->inputs[0], d) && is_matrix_f32(&op->outputs[0], d);
  }
  if (op->type == CODA_OP_ADD) {
    uint64_t d;
    if (op->n_inputs < 2 || op->n_outputs < 1) return 0;
    d = op->inputs[0].shape[1];
    return is_matrix_f32(&op->inputs[0], d) && is_matrix_f32(&op->inputs[1], d) && is_matrix_f32(&op->outputs[0], d);
  }
  return 0;
}

/* y = x * rsqrt(mean(x^2) + eps) * w, row by row; the sum of squares in double, as the CPU
   backend does, so that both agree to rounding. */
static void rms_norm(const float* x, const coda_tensor* w, const void* wdata, uint64_t n, uint64_t d, float eps,
                     float* y) {
  uint64_t t, i;
  for (t = 0; t < n; ++t) {
    const float* xr = x + t * d;
    float* yr = y + t * d;
    double ss = 0.0;
    float r;
    for (i = 0; i < d; ++i) ss += (double)xr[i] * xr[i];
    r = 1.0f / sqrtf((float)(ss / (double)d) + eps);
    for (i = 0; i < d; ++i) {
      const float wi = w->dtype == CODA_DTYPE_F32 ? ((const float*)wdata)[i] : coda_bf16_to_f32(((const uint16_t*)wdata)[i]);
      yr[i] = xr[i] * r * wi;
    }
  }
}

static coda_status_code example_execute(void* self, const coda_op* op, char* error, size_t error_size) {
  uint64_t n, d, i;
  if (!example_supports_op(self, op)) {
    set_error(error, error_size, "unsupported op, dtype or shape (supports_op() says no)");
    return CODA_STATUS_UNSUPPORTED;
  }
  n = op->inputs[0].shape[0];
  d = op->inputs[0].shape[1];
  if (op->type == CODA_OP_RMS_NORM) {
    const float* x = (const float*)tensor_data(&op->inputs[0]);
    const void* w = tensor_data(&op->weights[0]);
    float* y = (float*)tensor_data(&op->outputs[0]);
    if (!x || !w || !y || op->outputs[0].shape[0] != n) {
      set_error(error, error_size, "RmsNorm: missing data, a buffer range out of bounds, or mismatched rows");
      return CODA_STATUS_INVALID_ARGUMENT;
    }
    rms_norm(x, &op->weights[0], w, n, d, op->hparams->rms_norm_eps, y);
    return CODA_STATUS_OK;
  } else {
    const float* a = (const float*)tensor_data(&op->inputs[0]);
    const float* b = (const float*)tensor_data(&op->inputs[1]);
    float* y = (float*)tensor_data(&op->outputs[0]);
    if (!a || !b || !y || op->inputs[1].shape[0] != n || op->outputs[0].shape[0] != n) {
      set_error(error, error_size, "Add: missing data, a buffer range out of bounds, or mismatched rows");
      return CODA_STATUS_INVALID_ARGUMENT;
    }
    for (i = 0; i < n * d; ++i) y[i] = a[i] + b[i];
    return CODA_STATUS_OK;
  }
}

/* ---- Optional: devices. ---- */

static uint32_t example_device_count(void* self) {
  (void)self;
  return 1;
}

static coda_status_code example_device_info(void* self, uint32_t device, coda_device_info* info, char* error,
                                            size_t error_size) {
  coda_device_info d;
  size_t n;
  (void)self;
  if (device != 0 || !info || info->struct_size < sizeof(uint32_t)) {
    set_error(error, error_size, "device_info(): there is one device (0)");
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  memset(&d, 0, sizeof d);
  d.struct_size = info->struct_size;
  d.kind = CODA_DEVICE_CPU;
  snprintf(d.name, sizeof d.name, "host memory (example)");
  /* Write no byte beyond what the host's struct covers. */
  n = info->struct_size < sizeof d ? info->struct_size : sizeof d;
  memcpy(info, &d, n);
  return CODA_STATUS_OK;
}

/* ---- Optional: buffers (host memory). No prepare, synchronize or events: left NULL. ---- */

static coda_status_code example_buffer_alloc(void* self, uint64_t size, coda_buffer* buffer, char* error,
                                             size_t error_size) {
  struct coda_buffer_impl* b;
  (void)self;
  if (!buffer || size > (uint64_t)(size_t)-1) {
    set_error(error, error_size, "buffer_alloc(): bad arguments");
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  b = (struct coda_buffer_impl*)malloc(sizeof *b);
  if (b) b->data = (unsigned char*)malloc(size ? (size_t)size : 1);
  if (!b || !b->data) {
    free(b);
    set_error(error, error_size, "out of memory");
    return CODA_STATUS_OUT_OF_MEMORY;
  }
  b->size = size;
  *buffer = b;
  return CODA_STATUS_OK;
}

static void example_buffer_free(void* self, coda_buffer buffer) {
  (void)self;
  if (!buffer) return;
  free(buffer->data);
  free(buffer);
}

static int in_range(coda_buffer b, uint64_t offset, uint64_t size, char* error, size_t error_size) {
  if (b && offset <= b->size && size <= b->size - offset) return 1;
  set_error(error, error_size, "transfer range lies outside the buffer");
  return 0;
}

static coda_status_code example_upload(void* self, coda_buffer dst, uint64_t off, const void* src, uint64_t size,
                                       uint32_t queue, char* error, size_t error_size) {
  (void)self;
  (void)queue; /* one queue: everything runs in issue order, at once */
  if (!in_range(dst, off, size, error, error_size)) return CODA_STATUS_INVALID_ARGUMENT;
  if (size) memcpy(dst->data + off, src, (size_t)size);
  return CODA_STATUS_OK;
}

static coda_status_code example_download(void* self, coda_buffer src, uint64_t off, void* dst, uint64_t size,
                                         uint32_t queue, char* error, size_t error_size) {
  (void)self;
  (void)queue;
  if (!in_range(src, off, size, error, error_size)) return CODA_STATUS_INVALID_ARGUMENT;
  if (size) memcpy(dst, src->data + off, (size_t)size);
  return CODA_STATUS_OK;
}

static coda_status_code example_copy(void* self, coda_buffer src, uint64_t src_off, coda_buffer dst,
                                     uint64_t dst_off, uint64_t size, uint32_t queue, char* error, size_t error_size) {
  (void)self;
  (void)queue;
  if (!in_range(src, src_off, size, error, error_size) || !in_range(dst, dst_off, size, error, error_size))
    return CODA_STATUS_INVALID_ARGUMENT;
  if (size) memmove(dst->data + dst_off, src->data + src_off, (size_t)size);
  return CODA_STATUS_OK;
}

/* Designated initializers: every function the table leaves out is NULL (unsupported). */
static const coda_backend_api example_api = {
    .struct_size = sizeof(coda_backend_api),
    .abi_version = CODA_BACKEND_ABI_VERSION,
    .name = "example",
    .version = "0.1.0",
    .create = example_create,
    .destroy = example_destroy,
    .describe = example_describe,
    .supports_op = example_supports_op,
    .execute = example_execute,
    .device_count = example_device_count,
    .device_info = example_device_info,
    .buffer_alloc = example_buffer_alloc,
    .buffer_free = example_buffer_free,
    .buffer_upload = example_upload,
    .buffer_download = example_download,
    .buffer_copy = example_copy,
};

/* The one exported symbol. The table is returned whatever the host's version: the host compares
   abi_version itself and names both versions if they differ. */
CODA_BACKEND_EXPORT const coda_backend_api* coda_backend_entry(uint32_t host_abi_version) {
  (void)host_abi_version;
  return &example_api;
}
