// The CUDA backend behind the plain-C backend ABI, built as libcoda-backend-cuda.so (and, from
// these same sources against the CPU emulator in ../emu, as libcoda-backend-cuda-emu.so for the
// tests of machines without a GPU).
//
// What runs: devices, buffers, events on two streams (compute and transfer), weights uploaded once
// by prepare(), and every op on F32 activations (weights F32, BF16, or FP8 E4M3 with block
// scales, which stay FP8 in device memory): MLA attention in the absorbed form over an F32 or
// BF16 latent cache, MoE routing on the device, the routed experts in one grouped pass per call,
// and FP8 products on tensor cores unless exact ones are asked for (ops.cc, kernels.cu); forward
// passes replayed as CUDA graphs (steps.cc); cuBLASLt's block-scaled FP8 products for prefill where
// the library is there (lt.h). This file holds the ABI's functions.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "instance.h"

namespace coda::cuda {

Instance::~Instance() {
  cudaSetDevice(device);
  Settle(*this);
  if (compute) cudaStreamSynchronize(compute);
  if (transfer) cudaStreamSynchronize(transfer);
  DropGraphs();
  lt.reset();
  if (scratch) cudaFree(scratch);
  if (rope) cudaFree(rope);
  if (graph_start) cudaFree(graph_start);
  if (compute) cudaStreamDestroy(compute);
  if (transfer) cudaStreamDestroy(transfer);
}

namespace {

using backend_util::CopyError;
using backend_util::InRange;
using backend_util::ReadOp;
using backend_util::TensorBytes;

coda_status_code Fail(const std::string& m, coda_status_code code, char* error, size_t error_size) {
  CopyError(m, error, error_size);
  return code;
}

// For the calls that return no status: a failure to settle is logged (the next call that waits
// reports the device's state).
void SettleOrLog(Instance& in) {
  if (std::string e = Settle(in); !e.empty()) in.Log(CODA_LOG_ERROR, e);
}

coda_status_code StepBegin(void* self, uint64_t key, char* error, size_t error_size) {
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  const std::string e = BeginStep(in, key);
  return e.empty() ? CODA_STATUS_OK : Fail(e, CODA_STATUS_DEVICE_ERROR, error, error_size);
}

coda_status_code StepEnd(void* self, char* error, size_t error_size) {
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  const std::string e = EndStep(in);
  return e.empty() ? CODA_STATUS_OK : Fail(e, CODA_STATUS_DEVICE_ERROR, error, error_size);
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
  in->host = host;
  const char* graphs = std::getenv("CODA_CUDA_GRAPHS");
  in->graphs_enabled = !(graphs && std::string(graphs) == "off");
  const bool exact = options && options->struct_size >= offsetof(coda_backend_options, flags) + sizeof(uint32_t) &&
                     (options->flags & CODA_BACKEND_EXACT_PRODUCTS);
  in->fp8_products = !exact && prop.major * 10 + prop.minor >= 89;
  in->bf16_products = !exact;  // every device this build runs on (sm_80 and later)
  cudaError_t e = cudaSetDevice(in->device);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&in->compute, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&in->transfer, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaMalloc(reinterpret_cast<void**>(&in->graph_start), sizeof(uint32_t));
  if (e != cudaSuccess) return Fail(CudaError(e, "starting the device"), CODA_STATUS_DEVICE_ERROR, error, error_size);
  in->description = "CUDA device " + std::to_string(index) + ": " + prop.name + " (sm_" + std::to_string(prop.major) +
                    std::to_string(prop.minor) + ", " + std::to_string(prop.totalGlobalMem >> 20) + " MiB)";
  in->description += exact              ? "; weight products exact, in F32"
                     : in->fp8_products ? "; FP8 weights on FP8 tensor cores, BF16 ones on BF16 tensor cores"
                                        : "; FP8 and BF16 weights on BF16 tensor cores";
  // cuBLASLt's block scaling runs on sm_90 only (lt.h).
  const char* lt = std::getenv("CODA_CUDA_CUBLASLT");
  if (in->fp8_products && prop.major == 9 && !(lt && std::string(lt) == "off")) {
    std::string why;
    in->lt = LtFp8::Open(in->compute, &why);
    in->description += "; " + (in->lt ? in->lt->Summary() : "FP8 products by own kernels only: " + why);
    in->Log(in->lt ? CODA_LOG_DEBUG : CODA_LOG_INFO, in->description);
  }
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
    const std::string e = in.step.mode == Instance::Step::kNone ? RunOp(in, op, nullptr) : StepExecute(in, op);
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
  if (std::string s = Settle(in); !s.empty()) return Fail(s, CODA_STATUS_DEVICE_ERROR, error, error_size);
  try {
    auto p = std::make_unique<Prepared>();
    // Every tensor and its FP8 scales (linked, not listed), each host array once.
    std::vector<const coda_tensor*> list;
    std::unordered_map<const void*, bool> listed;
    for (uint32_t i = 0; i < weights->n_tensors; ++i)
      for (const coda_tensor* t = &weights->tensors[i]; t; t = t == &weights->tensors[i] ? t->scale : nullptr)
        if (t->data && listed.emplace(t->data, true).second) list.push_back(t);
    uint64_t total = 0;
    std::vector<uint64_t> at(list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      at[i] = total;
      total += (TensorBytes(*list[i]) + kAlign - 1) / kAlign * kAlign;
    }
    if (total == 0) {
      *prepared = p.release();
      return CODA_STATUS_OK;
    }
    if (cudaError_t e = cudaMalloc(&p->block, total); e != cudaSuccess)
      return Fail("uploading the weights: " + CudaError(e, "cudaMalloc of " + std::to_string(total) + " bytes"),
                  CODA_STATUS_OUT_OF_MEMORY, error, error_size);
    for (size_t i = 0; i < list.size(); ++i) {
      const coda_tensor& t = *list[i];
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
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  SettleOrLog(in);
  in.DropGraphs();  // they read these weights
  cudaStreamSynchronize(in.compute);
  if (p->block) cudaFree(p->block);
  delete p;
}

coda_status_code Synchronize(void* self, char* error, size_t error_size) {
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  if (std::string s = Settle(in); !s.empty()) return Fail(s, CODA_STATUS_DEVICE_ERROR, error, error_size);
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
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  SettleOrLog(in);
  in.DropGraphs();  // they may use it
  cudaStreamSynchronize(in.compute);  // no queued op may still use it
  cudaStreamSynchronize(in.transfer);
  static_cast<Instance*>(self)->Untrust(buffer->ptr, buffer->size);
  cudaFree(buffer->ptr);
  delete buffer;
}

// A copy the host asks for; `written` (device memory it writes, or NULL) is no longer a MoeGate's
// ids.
coda_status_code Copy(void* self, void* dst, const void* src, uint64_t size, cudaMemcpyKind kind, uint32_t queue,
                      const void* written, char* error, size_t error_size) {
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  // Compute work held back for a graph comes first (transfers are ordered to it by events), and
  // before the trust it leaves is changed (running it may mark ids trusted).
  if (queue != CODA_QUEUE_TRANSFER)
    if (std::string s = Settle(in); !s.empty()) return Fail(s, CODA_STATUS_DEVICE_ERROR, error, error_size);
  if (written) in.Untrust(written, size);
  if (size == 0) return CODA_STATUS_OK;
  const cudaError_t e = cudaMemcpyAsync(dst, src, size, kind, in.Stream(queue));
  return e == cudaSuccess ? CODA_STATUS_OK : Fail(CudaError(e, "cudaMemcpyAsync"), CODA_STATUS_DEVICE_ERROR, error, error_size);
}

coda_status_code Upload(void* self, coda_buffer dst, uint64_t off, const void* src, uint64_t size, uint32_t queue,
                        char* error, size_t error_size) {
  if (!InRange(dst, off, size, error, error_size)) return CODA_STATUS_INVALID_ARGUMENT;
  uint8_t* to = static_cast<uint8_t*>(dst->ptr) + off;
  return Copy(self, to, src, size, cudaMemcpyHostToDevice, queue, to, error, error_size);
}

coda_status_code Download(void* self, coda_buffer src, uint64_t off, void* dst, uint64_t size, uint32_t queue,
                          char* error, size_t error_size) {
  if (!InRange(src, off, size, error, error_size)) return CODA_STATUS_INVALID_ARGUMENT;
  return Copy(self, dst, static_cast<uint8_t*>(src->ptr) + off, size, cudaMemcpyDeviceToHost, queue, nullptr, error,
              error_size);
}

coda_status_code BufferCopy(void* self, coda_buffer src, uint64_t src_off, coda_buffer dst, uint64_t dst_off,
                            uint64_t size, uint32_t queue, char* error, size_t error_size) {
  if (!InRange(src, src_off, size, error, error_size) || !InRange(dst, dst_off, size, error, error_size))
    return CODA_STATUS_INVALID_ARGUMENT;
  // cudaMemcpy handles overlapping device ranges like memmove.
  uint8_t* to = static_cast<uint8_t*>(dst->ptr) + dst_off;
  return Copy(self, to, static_cast<uint8_t*>(src->ptr) + src_off, size, cudaMemcpyDeviceToDevice, queue, to, error,
              error_size);
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
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  if (queue != CODA_QUEUE_TRANSFER)  // the event marks the compute work issued so far, held back or not
    if (std::string s = Settle(in); !s.empty()) return Fail(s, CODA_STATUS_DEVICE_ERROR, error, error_size);
  const cudaError_t e = cudaEventRecord(event->event, in.Stream(queue));
  return e == cudaSuccess ? CODA_STATUS_OK : Fail(CudaError(e, "cudaEventRecord"), CODA_STATUS_DEVICE_ERROR, error, error_size);
}

coda_status_code EventWait(void* self, coda_event event, uint32_t queue, char* error, size_t error_size) {
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  // Compute work after the wait must not be in a graph launched without it.
  if (queue != CODA_QUEUE_TRANSFER)
    if (std::string s = Settle(in); !s.empty()) return Fail(s, CODA_STATUS_DEVICE_ERROR, error, error_size);
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
#ifdef CODA_CUDA_EMULATION
    sizeof(coda_backend_api), CODA_BACKEND_ABI_VERSION, "cuda-emu", "0.2.0",
#else
    sizeof(coda_backend_api), CODA_BACKEND_ABI_VERSION, "cuda", "0.2.0",
#endif
    Create, Destroy, Describe, SupportsOp, Execute,
    DeviceCount, DeviceInfo,
    Prepare, Release,
    Synchronize,
    BufferAlloc, BufferFree, Upload, Download, BufferCopy,
    EventCreate, EventRecord, EventWait, EventDestroy,
    StepBegin, StepEnd,
};

}  // namespace
}  // namespace coda::cuda

// The table is returned whatever the host's version: the host reads abi_version and refuses a
// mismatch itself, naming both numbers.
extern "C" CODA_BACKEND_EXPORT const coda_backend_api* coda_backend_entry(uint32_t) { return &coda::cuda::kApi; }
