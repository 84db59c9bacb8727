// The CUDA backend behind the plain-C backend ABI, built as libcoda-backend-cuda.so.
//
// What runs today: devices, buffers, events on two streams (compute and transfer), weights
// uploaded once by prepare(), and the ops Embed, RmsNorm, Add, Concat, Linear, Head and Mlp on F32
// activations (weights F32, BF16, or FP8 E4M3 with block scales, which stay FP8 in device
// memory). supports_op() declines the others, and the runtime places them on the next backend
// of the preference list (the CPU by default). MLA attention, MoE, cuBLASLt FP8 products and
// CUDA graphs are not written yet.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend_util.h"
#include "coda_backend.h"
#include "coda_ops.hpp"
#include "kernels.h"

struct coda_buffer_impl {
  void* ptr;
  uint64_t size;
};

struct coda_event_impl {
  cudaEvent_t event;
};

namespace coda::cuda {
namespace {

using backend_util::CopyError;
using backend_util::InRange;
using backend_util::ReadOp;
using backend_util::TensorBytes;

constexpr uint64_t kAlign = 256;  // cudaMalloc's alignment; each tensor of a block starts on it

std::string CudaError(cudaError_t e, const std::string& what) {
  return what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

// The weights prepare() uploaded: one device block, and where each host tensor went.
struct Prepared {
  void* block = nullptr;
  std::unordered_map<const void*, void*> where;
};

struct Instance {
  int device = 0;
  cudaStream_t compute = nullptr, transfer = nullptr;
  std::string description;
  // Per-call device memory for host-memory tensors (bump allocation, reset by each execute).
  void* scratch = nullptr;
  uint64_t scratch_size = 0, scratch_used = 0;

  ~Instance() {
    cudaSetDevice(device);
    if (compute) cudaStreamSynchronize(compute);
    if (transfer) cudaStreamSynchronize(transfer);
    if (scratch) cudaFree(scratch);
    if (compute) cudaStreamDestroy(compute);
    if (transfer) cudaStreamDestroy(transfer);
  }
  cudaStream_t Stream(uint32_t queue) const { return queue == CODA_QUEUE_TRANSFER ? transfer : compute; }
};

// The work of one execute(): host inputs uploaded to scratch, host outputs downloaded at the end.
class Call {
 public:
  Call(Instance& in, const Prepared* prepared) : in_(in), prepared_(prepared) { in_.scratch_used = 0; }

  // `bytes` of scratch, growing the block (after the stream drains) when it is too small.
  std::string Scratch(uint64_t bytes, void** out) {
    const uint64_t need = in_.scratch_used + (bytes + kAlign - 1) / kAlign * kAlign;
    if (need > in_.scratch_size) {
      if (in_.scratch_used) return "scratch exhausted within one op";  // Reserve() sizes it first
      cudaStreamSynchronize(in_.compute);
      if (in_.scratch) cudaFree(in_.scratch);
      in_.scratch = nullptr;
      in_.scratch_size = 0;
      if (cudaError_t e = cudaMalloc(&in_.scratch, need); e != cudaSuccess) return CudaError(e, "cudaMalloc");
      in_.scratch_size = need;
    }
    *out = static_cast<uint8_t*>(in_.scratch) + in_.scratch_used;
    in_.scratch_used = need;
    return "";
  }
  // Sizes scratch for every host tensor of the op at once, so later requests never move it.
  std::string Reserve(const coda_op& op) {
    uint64_t total = 0;
    auto add = [&](const coda_tensor& t) {
      if (!t.buffer && t.data && !(prepared_ && prepared_->where.count(t.data)))
        total += (TensorBytes(t) + kAlign - 1) / kAlign * kAlign;
    };
    for (uint32_t i = 0; i < op.n_inputs; ++i) add(op.inputs[i]);
    for (uint32_t i = 0; i < op.n_outputs; ++i) add(op.outputs[i]);
    if (op.type == CODA_OP_MLP)  // the gate and up activations
      total += 2 * ((uint64_t{op.n_tokens} * op.weights[0].shape[0] * 4 + kAlign - 1) / kAlign * kAlign);
    for (uint32_t i = 0; i < op.n_weights; ++i) {
      add(op.weights[i]);
      if (op.weights[i].scale) add(*op.weights[i].scale);
    }
    void* p = nullptr;
    if (total == 0) return "";
    std::string e = Scratch(total, &p);
    in_.scratch_used = 0;
    return e;
  }

  // A tensor's device address: in one of our buffers, uploaded by prepare(), or copied now.
  std::string Device(const coda_tensor& t, bool is_output, void** out) {
    const uint64_t bytes = TensorBytes(t);
    if (t.buffer) {
      if (t.offset > t.buffer->size || bytes > t.buffer->size - t.offset)
        return "a tensor of " + std::to_string(bytes) + " bytes at offset " + std::to_string(t.offset) +
               " lies outside its buffer of " + std::to_string(t.buffer->size) + " bytes";
      *out = static_cast<uint8_t*>(t.buffer->ptr) + t.offset;
      return "";
    }
    if (!t.data) return "a tensor has neither host memory nor a buffer";
    if (prepared_)
      if (auto it = prepared_->where.find(t.data); it != prepared_->where.end()) {
        *out = it->second;
        return "";
      }
    if (std::string e = Scratch(bytes, out); !e.empty()) return e;
    if (is_output) {
      downloads_.push_back({*out, t.data, bytes});
      return "";
    }
    const cudaError_t e = cudaMemcpyAsync(*out, t.data, bytes, cudaMemcpyHostToDevice, in_.compute);
    return e == cudaSuccess ? "" : CudaError(e, "uploading an input");
  }
  std::string Weight(const coda_tensor& t, DeviceWeight* w) {
    w->dtype = t.dtype;
    w->rows = t.ndim >= 2 ? t.shape[0] : 1;
    w->cols = t.ndim >= 2 ? t.shape[1] : t.shape[0];
    void* p = nullptr;
    if (std::string e = Device(t, false, &p); !e.empty()) return e;
    w->data = p;
    if (t.dtype != CODA_DTYPE_FP8_E4M3) return "";
    w->block = t.block ? t.block : 128;
    w->scale_cols = t.scale->shape[1];
    if (std::string e = Device(*t.scale, false, &p); !e.empty()) return e;
    w->scales = static_cast<const float*>(p);
    return "";
  }
  // Launch status, then the downloads of host outputs, waited for.
  std::string Finish(int launch) {
    if (launch != cudaSuccess) return CudaError(static_cast<cudaError_t>(launch), "kernel launch");
    for (const Download& d : downloads_)
      if (cudaError_t e = cudaMemcpyAsync(d.host, d.device, d.bytes, cudaMemcpyDeviceToHost, in_.compute);
          e != cudaSuccess)
        return CudaError(e, "downloading an output");
    if (!downloads_.empty())
      if (cudaError_t e = cudaStreamSynchronize(in_.compute); e != cudaSuccess) return CudaError(e, "running the op");
    return "";
  }

 private:
  struct Download {
    const void* device;
    void* host;
    uint64_t bytes;
  };
  Instance& in_;
  const Prepared* prepared_;
  std::vector<Download> downloads_;
};

bool WeightDtype(uint32_t d, bool fp8) {
  return d == CODA_DTYPE_F32 || d == CODA_DTYPE_BF16 || (fp8 && d == CODA_DTYPE_FP8_E4M3);
}

std::string CheckOp(const coda_op& op) {
  switch (op.type) {
    case CODA_OP_EMBED: case CODA_OP_RMS_NORM: case CODA_OP_ADD: case CODA_OP_CONCAT: case CODA_OP_LINEAR:
    case CODA_OP_HEAD: case CODA_OP_MLP: break;
    default: return "the CUDA backend does not run op " + std::to_string(op.type) + " yet";
  }
  if (std::string e = ops::Check(op); !e.empty()) return e;
  for (uint32_t i = 0; i < op.n_weights; ++i) {
    const coda_tensor& t = op.weights[i];
    const bool matrix = op.type == CODA_OP_LINEAR || op.type == CODA_OP_HEAD || op.type == CODA_OP_MLP;
    if ((t.data || t.buffer) && !WeightDtype(t.dtype, matrix))
      return "weight dtype " + std::string(coda_dtype_name(t.dtype)) + " is not supported here";
  }
  return "";
}

std::string RunOp(Instance& in, const coda_op& op) {
  Call call(in, static_cast<const Prepared*>(op.prepared));
  if (std::string e = call.Reserve(op); !e.empty()) return e;
  const uint64_t n = op.n_tokens;
  void* y = nullptr;
  if (std::string e = call.Device(op.outputs[0], true, &y); !e.empty()) return e;
  switch (op.type) {
    case CODA_OP_EMBED: {
      // Ids are checked on the host: a bad one is an error, not a read outside the table.
      // (The device copy is queued first; the kernel launches only after the check.)
      std::vector<int32_t> ids(n);
      const coda_tensor& t = op.inputs[0];
      void* dids = nullptr;
      if (std::string e = call.Device(t, false, &dids); !e.empty()) return e;
      if (t.buffer) {
        if (cudaError_t e = cudaMemcpyAsync(ids.data(), dids, n * 4, cudaMemcpyDeviceToHost, in.compute); e != cudaSuccess)
          return CudaError(e, "reading token ids");
        if (cudaError_t e = cudaStreamSynchronize(in.compute); e != cudaSuccess) return CudaError(e, "reading token ids");
      } else {
        std::memcpy(ids.data(), t.data, n * 4);
      }
      const uint64_t vocab = op.weights[0].shape[0];
      for (uint64_t i = 0; i < n; ++i)
        if (ids[i] < 0 || static_cast<uint64_t>(ids[i]) >= vocab)
          return "token id " + std::to_string(ids[i]) + " is outside the vocabulary (" + std::to_string(vocab) + ")";
      DeviceWeight table;
      if (std::string e = call.Weight(op.weights[0], &table); !e.empty()) return e;
      return call.Finish(LaunchEmbed(static_cast<const int32_t*>(dids), n, table, static_cast<float*>(y), in.compute));
    }
    case CODA_OP_RMS_NORM: {
      void* x = nullptr;
      if (std::string e = call.Device(op.inputs[0], false, &x); !e.empty()) return e;
      DeviceWeight w;
      if (std::string e = call.Weight(op.weights[0], &w); !e.empty()) return e;
      return call.Finish(LaunchRmsNorm(static_cast<const float*>(x), n, op.inputs[0].shape[1], w.data, w.dtype,
                                       op.hparams->rms_norm_eps, static_cast<float*>(y), in.compute));
    }
    case CODA_OP_ADD: {
      void *a = nullptr, *b = nullptr;
      if (std::string e = call.Device(op.inputs[0], false, &a); !e.empty()) return e;
      if (std::string e = call.Device(op.inputs[1], false, &b); !e.empty()) return e;
      return call.Finish(LaunchAdd(static_cast<const float*>(a), static_cast<const float*>(b), static_cast<float*>(y),
                                   n * op.inputs[0].shape[1], in.compute));
    }
    case CODA_OP_CONCAT: {
      void *a = nullptr, *b = nullptr;
      if (std::string e = call.Device(op.inputs[0], false, &a); !e.empty()) return e;
      if (std::string e = call.Device(op.inputs[1], false, &b); !e.empty()) return e;
      return call.Finish(LaunchConcat(static_cast<const float*>(a), op.inputs[0].shape[1], static_cast<const float*>(b),
                                      op.inputs[1].shape[1], n, static_cast<float*>(y), in.compute));
    }
    case CODA_OP_MLP: {
      void *x = nullptr, *g = nullptr, *u = nullptr;
      DeviceWeight gate, up, down;
      if (std::string e = call.Device(op.inputs[0], false, &x); !e.empty()) return e;
      if (std::string e = call.Weight(op.weights[0], &gate); !e.empty()) return e;
      if (std::string e = call.Weight(op.weights[1], &up); !e.empty()) return e;
      if (std::string e = call.Weight(op.weights[2], &down); !e.empty()) return e;
      if (std::string e = call.Scratch(n * gate.rows * 4, &g); !e.empty()) return e;
      if (std::string e = call.Scratch(n * gate.rows * 4, &u); !e.empty()) return e;
      int launch = LaunchLinear(static_cast<const float*>(x), n, gate, static_cast<float*>(g), in.compute);
      if (launch == cudaSuccess) launch = LaunchLinear(static_cast<const float*>(x), n, up, static_cast<float*>(u), in.compute);
      if (launch == cudaSuccess) launch = LaunchSiluMul(static_cast<float*>(g), static_cast<const float*>(u), n * gate.rows, in.compute);
      if (launch == cudaSuccess) launch = LaunchLinear(static_cast<const float*>(g), n, down, static_cast<float*>(y), in.compute);
      return call.Finish(launch);
    }
    default: {  // Linear, Head
      void* x = nullptr;
      if (std::string e = call.Device(op.inputs[0], false, &x); !e.empty()) return e;
      DeviceWeight w;
      if (std::string e = call.Weight(op.weights[0], &w); !e.empty()) return e;
      return call.Finish(LaunchLinear(static_cast<const float*>(x), n, w, static_cast<float*>(y), in.compute));
    }
  }
}

coda_status_code Fail(const std::string& m, coda_status_code code, char* error, size_t error_size) {
  CopyError(m, error, error_size);
  return code;
}

coda_status_code Create(const coda_host* host, const coda_backend_options* options, void** self, char* error,
                        size_t error_size) {
  if (!host || !self) return Fail("invalid arguments to create()", CODA_STATUS_INVALID_ARGUMENT, error, error_size);
  int count = 0;
  // No device and no (or too old a) driver are this machine's state, not a fault: UNSUPPORTED.
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess)
    return Fail("no CUDA device: " + CudaError(e, "cudaGetDeviceCount") +
                    (e == cudaErrorInsufficientDriver ? "; no NVIDIA driver, or one older than CUDA " + std::to_string(CUDART_VERSION / 1000) : ""),
                CODA_STATUS_UNSUPPORTED, error, error_size);
  if (count == 0) return Fail("no CUDA device", CODA_STATUS_UNSUPPORTED, error, error_size);
  uint32_t index = 0;
  if (options && options->struct_size >= offsetof(coda_backend_options, device) + sizeof(uint32_t))
    index = options->device;
  if (index >= static_cast<uint32_t>(count))
    return Fail("no CUDA device " + std::to_string(index) + " (there are " + std::to_string(count) + ")",
                CODA_STATUS_INVALID_ARGUMENT, error, error_size);
  cudaDeviceProp prop{};
  if (cudaError_t e = cudaGetDeviceProperties(&prop, static_cast<int>(index)); e != cudaSuccess)
    return Fail(CudaError(e, "cudaGetDeviceProperties"), CODA_STATUS_DEVICE_ERROR, error, error_size);
  if (prop.major < 8)
    return Fail(std::string(prop.name) + " is compute capability " + std::to_string(prop.major) + "." +
                    std::to_string(prop.minor) + "; this build needs 8.0 or newer",
                CODA_STATUS_UNSUPPORTED, error, error_size);
  auto in = std::unique_ptr<Instance>(new (std::nothrow) Instance());
  if (!in) return Fail("out of memory", CODA_STATUS_OUT_OF_MEMORY, error, error_size);
  in->device = static_cast<int>(index);
  cudaError_t e = cudaSetDevice(in->device);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&in->compute, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&in->transfer, cudaStreamNonBlocking);
  if (e != cudaSuccess) return Fail(CudaError(e, "starting the device"), CODA_STATUS_DEVICE_ERROR, error, error_size);
  in->description = "CUDA device " + std::to_string(index) + ": " + prop.name + " (sm_" + std::to_string(prop.major) +
                    std::to_string(prop.minor) + ", " + std::to_string(prop.totalGlobalMem >> 20) + " MiB)";
  *self = in.release();
  return CODA_STATUS_OK;
}

void Destroy(void* self) { delete static_cast<Instance*>(self); }

const char* Describe(void* self) { return static_cast<Instance*>(self)->description.c_str(); }

int SupportsOp(void*, const coda_op* src) {
  coda_op op;
  if (!ReadOp(src, &op)) return 0;
  try {
    return CheckOp(op).empty();
  } catch (...) {
    return 0;
  }
}

coda_status_code Execute(void* self, const coda_op* src, char* error, size_t error_size) {
  coda_op op;
  if (!ReadOp(src, &op)) return Fail("op struct from an unknown ABI revision", CODA_STATUS_INVALID_ARGUMENT, error, error_size);
  auto& in = *static_cast<Instance*>(self);
  try {
    if (std::string why = CheckOp(op); !why.empty()) return Fail("unsupported op: " + why, CODA_STATUS_UNSUPPORTED, error, error_size);
    cudaSetDevice(in.device);
    const std::string e = RunOp(in, op);
    return e.empty() ? CODA_STATUS_OK : Fail(e, CODA_STATUS_DEVICE_ERROR, error, error_size);
  } catch (const std::bad_alloc&) {
    return Fail("out of memory", CODA_STATUS_OUT_OF_MEMORY, error, error_size);
  } catch (const std::exception& ex) {
    return Fail(ex.what(), CODA_STATUS_INTERNAL, error, error_size);
  }
}

uint32_t DeviceCount(void*) { return 1; }

coda_status_code DeviceInfo(void* self, uint32_t device, coda_device_info* info, char* error, size_t error_size) {
  const Instance& in = *static_cast<Instance*>(self);
  if (device != 0 || !info || info->struct_size < sizeof(uint32_t))
    return Fail("this instance runs one device (0)", CODA_STATUS_INVALID_ARGUMENT, error, error_size);
  cudaDeviceProp prop{};
  cudaSetDevice(in.device);
  if (cudaError_t e = cudaGetDeviceProperties(&prop, in.device); e != cudaSuccess)
    return Fail(CudaError(e, "cudaGetDeviceProperties"), CODA_STATUS_DEVICE_ERROR, error, error_size);
  size_t free_bytes = 0, total = 0;
  if (cudaError_t e = cudaMemGetInfo(&free_bytes, &total); e != cudaSuccess)
    return Fail(CudaError(e, "cudaMemGetInfo"), CODA_STATUS_DEVICE_ERROR, error, error_size);
  coda_device_info d{};
  d.struct_size = info->struct_size;
  d.kind = CODA_DEVICE_GPU;
  d.total_memory = total;
  d.free_memory = free_bytes;
  std::memcpy(d.name, prop.name, std::min(sizeof d.name - 1, strnlen(prop.name, sizeof prop.name)));  // d is zeroed
  std::memcpy(info, &d, std::min<size_t>(info->struct_size, sizeof d));
  return CODA_STATUS_OK;
}

coda_status_code Prepare(void* self, const coda_weights* weights, void** prepared, char* error, size_t error_size) {
  if (!weights || !prepared || weights->struct_size < offsetof(coda_weights, hparams))
    return Fail("invalid arguments to prepare()", CODA_STATUS_INVALID_ARGUMENT, error, error_size);
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  try {
    auto p = std::make_unique<Prepared>();
    uint64_t total = 0;
    std::vector<uint64_t> at(weights->n_tensors);
    for (uint32_t i = 0; i < weights->n_tensors; ++i) {
      at[i] = total;
      total += (TensorBytes(weights->tensors[i]) + kAlign - 1) / kAlign * kAlign;
    }
    if (total == 0) {
      *prepared = p.release();
      return CODA_STATUS_OK;
    }
    if (cudaError_t e = cudaMalloc(&p->block, total); e != cudaSuccess)
      return Fail("uploading the weights: " + CudaError(e, "cudaMalloc of " + std::to_string(total) + " bytes"),
                  CODA_STATUS_OUT_OF_MEMORY, error, error_size);
    for (uint32_t i = 0; i < weights->n_tensors; ++i) {
      const coda_tensor& t = weights->tensors[i];
      if (!t.data) continue;
      void* dst = static_cast<uint8_t*>(p->block) + at[i];
      if (cudaError_t e = cudaMemcpyAsync(dst, t.data, TensorBytes(t), cudaMemcpyHostToDevice, in.transfer); e != cudaSuccess) {
        cudaFree(p->block);
        return Fail("uploading the weights: " + CudaError(e, "cudaMemcpyAsync"), CODA_STATUS_DEVICE_ERROR, error, error_size);
      }
      p->where[t.data] = dst;
    }
    if (cudaError_t e = cudaStreamSynchronize(in.transfer); e != cudaSuccess) {
      cudaFree(p->block);
      return Fail("uploading the weights: " + CudaError(e, "cudaStreamSynchronize"), CODA_STATUS_DEVICE_ERROR, error, error_size);
    }
    *prepared = p.release();
    return CODA_STATUS_OK;
  } catch (const std::bad_alloc&) {
    return Fail("out of memory", CODA_STATUS_OUT_OF_MEMORY, error, error_size);
  }
}

void Release(void* self, void* prepared) {
  auto* p = static_cast<Prepared*>(prepared);
  if (!p) return;
  const Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  cudaStreamSynchronize(in.compute);
  if (p->block) cudaFree(p->block);
  delete p;
}

coda_status_code Synchronize(void* self, char* error, size_t error_size) {
  const Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  cudaError_t e = cudaStreamSynchronize(in.compute);
  if (e == cudaSuccess) e = cudaStreamSynchronize(in.transfer);
  return e == cudaSuccess ? CODA_STATUS_OK : Fail(CudaError(e, "synchronize"), CODA_STATUS_DEVICE_ERROR, error, error_size);
}

coda_status_code BufferAlloc(void* self, uint64_t size, coda_buffer* buffer, char* error, size_t error_size) {
  if (!buffer) return Fail("buffer_alloc without a result pointer", CODA_STATUS_INVALID_ARGUMENT, error, error_size);
  cudaSetDevice(static_cast<Instance*>(self)->device);
  auto* b = new (std::nothrow) coda_buffer_impl{nullptr, size};
  if (!b) return Fail("out of memory", CODA_STATUS_OUT_OF_MEMORY, error, error_size);
  if (cudaError_t e = cudaMalloc(&b->ptr, std::max<uint64_t>(size, 1)); e != cudaSuccess) {
    delete b;
    return Fail(CudaError(e, "cudaMalloc"), CODA_STATUS_OUT_OF_MEMORY, error, error_size);
  }
  *buffer = b;
  return CODA_STATUS_OK;
}

void BufferFree(void* self, coda_buffer buffer) {
  if (!buffer) return;
  const Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  cudaStreamSynchronize(in.compute);  // no queued op may still use it
  cudaStreamSynchronize(in.transfer);
  cudaFree(buffer->ptr);
  delete buffer;
}

coda_status_code Copy(void* self, void* dst, const void* src, uint64_t size, cudaMemcpyKind kind, uint32_t queue,
                      char* error, size_t error_size) {
  const Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  if (size == 0) return CODA_STATUS_OK;
  const cudaError_t e = cudaMemcpyAsync(dst, src, size, kind, in.Stream(queue));
  return e == cudaSuccess ? CODA_STATUS_OK : Fail(CudaError(e, "cudaMemcpyAsync"), CODA_STATUS_DEVICE_ERROR, error, error_size);
}

coda_status_code Upload(void* self, coda_buffer dst, uint64_t off, const void* src, uint64_t size, uint32_t queue,
                        char* error, size_t error_size) {
  if (!InRange(dst, off, size, error, error_size)) return CODA_STATUS_INVALID_ARGUMENT;
  return Copy(self, static_cast<uint8_t*>(dst->ptr) + off, src, size, cudaMemcpyHostToDevice, queue, error, error_size);
}

coda_status_code Download(void* self, coda_buffer src, uint64_t off, void* dst, uint64_t size, uint32_t queue,
                          char* error, size_t error_size) {
  if (!InRange(src, off, size, error, error_size)) return CODA_STATUS_INVALID_ARGUMENT;
  return Copy(self, dst, static_cast<uint8_t*>(src->ptr) + off, size, cudaMemcpyDeviceToHost, queue, error, error_size);
}

coda_status_code BufferCopy(void* self, coda_buffer src, uint64_t src_off, coda_buffer dst, uint64_t dst_off,
                            uint64_t size, uint32_t queue, char* error, size_t error_size) {
  if (!InRange(src, src_off, size, error, error_size) || !InRange(dst, dst_off, size, error, error_size))
    return CODA_STATUS_INVALID_ARGUMENT;
  // cudaMemcpy handles overlapping device ranges like memmove.
  return Copy(self, static_cast<uint8_t*>(dst->ptr) + dst_off, static_cast<uint8_t*>(src->ptr) + src_off, size,
              cudaMemcpyDeviceToDevice, queue, error, error_size);
}

coda_status_code EventCreate(void* self, coda_event* event, char* error, size_t error_size) {
  cudaSetDevice(static_cast<Instance*>(self)->device);
  auto* ev = new (std::nothrow) coda_event_impl{nullptr};
  if (!ev) return Fail("out of memory", CODA_STATUS_OUT_OF_MEMORY, error, error_size);
  if (cudaError_t e = cudaEventCreateWithFlags(&ev->event, cudaEventDisableTiming); e != cudaSuccess) {
    delete ev;
    return Fail(CudaError(e, "cudaEventCreate"), CODA_STATUS_DEVICE_ERROR, error, error_size);
  }
  *event = ev;
  return CODA_STATUS_OK;
}

coda_status_code EventRecord(void* self, coda_event event, uint32_t queue, char* error, size_t error_size) {
  const Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  const cudaError_t e = cudaEventRecord(event->event, in.Stream(queue));
  return e == cudaSuccess ? CODA_STATUS_OK : Fail(CudaError(e, "cudaEventRecord"), CODA_STATUS_DEVICE_ERROR, error, error_size);
}

coda_status_code EventWait(void* self, coda_event event, uint32_t queue, char* error, size_t error_size) {
  const Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  const cudaError_t e = queue == CODA_QUEUE_HOST ? cudaEventSynchronize(event->event)
                                                 : cudaStreamWaitEvent(in.Stream(queue), event->event, 0);
  return e == cudaSuccess ? CODA_STATUS_OK : Fail(CudaError(e, "waiting for an event"), CODA_STATUS_DEVICE_ERROR, error, error_size);
}

void EventDestroy(void* self, coda_event event) {
  if (!event) return;
  cudaSetDevice(static_cast<Instance*>(self)->device);
  cudaEventDestroy(event->event);
  delete event;
}

const coda_backend_api kApi = {
    sizeof(coda_backend_api), CODA_BACKEND_ABI_VERSION, "cuda", "0.1.0",
    Create, Destroy, Describe, SupportsOp, Execute,
    DeviceCount, DeviceInfo,
    Prepare, Release,
    Synchronize,
    BufferAlloc, BufferFree, Upload, Download, BufferCopy,
    EventCreate, EventRecord, EventWait, EventDestroy,
};

}  // namespace
}  // namespace coda::cuda

// The table is returned whatever the host's version: the host reads abi_version and refuses a
// mismatch itself, naming both numbers.
extern "C" CODA_BACKEND_EXPORT const coda_backend_api* coda_backend_entry(uint32_t) { return &coda::cuda::kApi; }
