// The CPU backend behind the plain-C backend ABI. Linked statically into every tool as the
// always-present fallback (coda_cpu_backend_entry) and also built as libcoda-backend-cpu.so
// (plugin_entry.cc exports coda_backend_entry).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "backend_util.h"
#include "immediate_events.h"
#include "coda_backend.h"
#include "coda_cpu_backend.h"
#include "ops.h"

// Buffers of the CPU backend are plain host memory.
struct coda_buffer_impl {
  void* data;
  uint64_t size;
};

namespace coda::cpu {
namespace {

using backend_util::CopyError;
using backend_util::InRange;
using backend_util::TensorBytes;

struct Instance {
  std::unique_ptr<ThreadPool> pool;
  Context ctx;
  std::string description;
  std::string cpu_name;
};

std::string CpuModelName() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "CPU";
}

// Bytes from /proc/meminfo ("MemAvailable:  123 kB"), 0 when unknown.
uint64_t MemInfoBytes(const char* key) {
  std::ifstream f("/proc/meminfo");
  std::string k;
  uint64_t kb = 0;
  std::string unit;
  while (f >> k >> kb >> unit)
    if (k == key) return kb * 1024;
  return 0;
}

coda_status_code Create(const coda_host* host, const coda_backend_options* options, void** self, char* error,
                        size_t error_size) {
  if (!host || host->struct_size < sizeof(uint32_t) * 2 || !self) {
    CopyError("invalid arguments to create()", error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  unsigned threads = 0;
  if (options && options->struct_size >= offsetof(coda_backend_options, n_threads) + sizeof(uint32_t))
    threads = options->n_threads;
  if (options && options->struct_size >= offsetof(coda_backend_options, device) + sizeof(uint32_t) &&
      options->device != 0) {
    CopyError("there is one device (0), not " + std::to_string(options->device), error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  auto* inst = new (std::nothrow) Instance();
  if (!inst) {
    CopyError("out of memory", error, error_size);
    return CODA_STATUS_OUT_OF_MEMORY;
  }
  // Nothing may throw across the C boundary: the system may refuse a thread, memory may run out.
  try {
    inst->pool = std::make_unique<ThreadPool>(threads);
    inst->ctx.k = &SelectKernels();
    inst->ctx.pool = inst->pool.get();
    inst->ctx.thread_scratch.resize(inst->pool->size());
    inst->ctx.exact_products =
        options && options->struct_size >= offsetof(coda_backend_options, flags) + sizeof(uint32_t) &&
        (options->flags & CODA_BACKEND_EXACT_PRODUCTS);
    // For measuring the two Linear paths against each other (coda-bench); not a user setting.
    if (const char* g = std::getenv("CODA_CPU_GEMM_MIN_TOKENS")) inst->ctx.gemm_min_tokens = std::strtoul(g, nullptr, 10);
    inst->description = "CPU, " + std::to_string(inst->pool->size()) + " threads, " + inst->ctx.k->name + " kernels";
    inst->cpu_name = CpuModelName();
  } catch (const std::exception& e) {
    delete inst;
    CopyError("cannot start " + std::to_string(threads) + " threads: " + e.what(), error, error_size);
    return CODA_STATUS_OUT_OF_MEMORY;
  }
  *self = inst;
  return CODA_STATUS_OK;
}

void Destroy(void* self) { delete static_cast<Instance*>(self); }

const char* Describe(void* self) { return static_cast<Instance*>(self)->description.c_str(); }

// The ops read tensors through data pointers; a tensor in one of our buffers is host memory at
// buffer->data + offset. Returns an error when the range does not fit the buffer.
std::string Resolve(coda_tensor& t, const char* what, uint32_t i) {
  if (t.data || !t.buffer) return "";
  const uint64_t bytes = TensorBytes(t);
  if (t.offset > t.buffer->size || bytes > t.buffer->size - t.offset)
    return std::string(what) + " " + std::to_string(i) + " (" + std::to_string(bytes) + " bytes at offset " +
           std::to_string(t.offset) + ") lies outside its buffer of " + std::to_string(t.buffer->size) + " bytes";
  t.data = static_cast<uint8_t*>(t.buffer->data) + t.offset;
  return "";
}

// Host-pointer copy of an op whose tensors may sit in buffers.
struct ResolvedOp {
  coda_op op;
  std::vector<coda_tensor> in, out, w, scales;

  std::string From(const coda_op& src) {
    // An older host's op may be shorter; the fields it lacks read as zero.
    std::memset(&op, 0, sizeof op);
    std::memcpy(&op, &src, std::min<size_t>(src.struct_size, sizeof op));
    in.assign(src.inputs, src.inputs + src.n_inputs);
    out.assign(src.outputs, src.outputs + src.n_outputs);
    w.assign(src.weights, src.weights + src.n_weights);
    scales.resize(w.size());
    for (uint32_t i = 0; i < in.size(); ++i)
      if (std::string e = Resolve(in[i], "input", i); !e.empty()) return e;
    for (uint32_t i = 0; i < out.size(); ++i)
      if (std::string e = Resolve(out[i], "output", i); !e.empty()) return e;
    for (uint32_t i = 0; i < w.size(); ++i) {
      if (std::string e = Resolve(w[i], "weight", i); !e.empty()) return e;
      if (w[i].scale && !w[i].scale->data && w[i].scale->buffer) {
        scales[i] = *w[i].scale;
        if (std::string e = Resolve(scales[i], "weight scale", i); !e.empty()) return e;
        w[i].scale = &scales[i];
      }
    }
    if (!src.kv.data && src.kv.buffer) {
      const uint64_t bytes = static_cast<uint64_t>(src.kv.n_ctx) * src.kv.row * coda_dtype_size(src.kv.dtype);
      if (src.kv.offset > src.kv.buffer->size || bytes > src.kv.buffer->size - src.kv.offset)
        return "the KV cache view lies outside its buffer";
      op.kv.data = static_cast<uint8_t*>(src.kv.buffer->data) + src.kv.offset;
    }
    op.inputs = in.data();
    op.outputs = out.data();
    op.weights = w.data();
    return "";
  }
};

// An op from a host of another ABI revision, or one this build does not run, is declined.
std::string Why(const coda_op* op) {
  if (!op || op->struct_size < offsetof(coda_op, prepared)) return "op struct from an unknown ABI revision";
  return CheckOp(*op);
}

int SupportsOp(void*, const coda_op* op) {
  try {
    return Why(op).empty();
  } catch (const std::exception&) {
    return 0;
  }
}

coda_status_code Execute(void* self, const coda_op* op, char* error, size_t error_size) {
  if (!op || op->struct_size < offsetof(coda_op, prepared)) {
    CopyError("op struct from an unknown ABI revision", error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  try {
    if (std::string why = Why(op); !why.empty()) {
      CopyError("unsupported op: " + why, error, error_size);
      return CODA_STATUS_UNSUPPORTED;
    }
    ResolvedOp r;
    if (std::string e = r.From(*op); !e.empty()) {
      CopyError(e, error, error_size);
      return CODA_STATUS_INVALID_ARGUMENT;
    }
    std::string e = RunOp(static_cast<Instance*>(self)->ctx, r.op);
    if (e.empty()) return CODA_STATUS_OK;
    CopyError(e, error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    CopyError("out of memory", error, error_size);
    return CODA_STATUS_OUT_OF_MEMORY;
  } catch (const std::exception& ex) {
    CopyError(ex.what(), error, error_size);
    return CODA_STATUS_INTERNAL;
  }
}

uint32_t DeviceCount(void*) { return 1; }

coda_status_code DeviceInfo(void* self, uint32_t device, coda_device_info* info, char* error, size_t error_size) {
  if (device != 0 || !info || info->struct_size < sizeof(uint32_t)) {
    CopyError("no device " + std::to_string(device) + " (there is one, 0)", error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  coda_device_info d{};
  d.struct_size = info->struct_size;
  d.kind = CODA_DEVICE_CPU;
  d.total_memory = MemInfoBytes("MemTotal:");
  d.free_memory = MemInfoBytes("MemAvailable:");
  std::snprintf(d.name, sizeof d.name, "%s", static_cast<Instance*>(self)->cpu_name.c_str());
  std::memcpy(info, &d, std::min<size_t>(info->struct_size, sizeof d));
  return CODA_STATUS_OK;
}

// The weights are used in place from the mapped model file: nothing to prepare.
coda_status_code Prepare(void*, const coda_weights*, void** prepared, char*, size_t) {
  if (prepared) *prepared = nullptr;
  return CODA_STATUS_OK;
}
void Release(void*, void*) {}

coda_status_code BufferAlloc(void*, uint64_t size, coda_buffer* buffer, char* error, size_t error_size) {
  if (!buffer) {
    CopyError("buffer_alloc without a result pointer", error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  auto* b = new (std::nothrow) coda_buffer_impl{nullptr, size};
  // 64-byte alignment, like tensors in the model file; at least one byte so data is never NULL.
  const uint64_t rounded = (std::max<uint64_t>(size, 1) + 63) / 64 * 64;
  if (b) b->data = std::aligned_alloc(64, rounded);
  if (!b || !b->data) {
    delete b;
    CopyError("out of memory allocating a buffer of " + std::to_string(size) + " bytes", error, error_size);
    return CODA_STATUS_OUT_OF_MEMORY;
  }
  *buffer = b;
  return CODA_STATUS_OK;
}

void BufferFree(void*, coda_buffer buffer) {
  if (!buffer) return;
  std::free(buffer->data);
  delete buffer;
}

coda_status_code Upload(void*, coda_buffer dst, uint64_t off, const void* src, uint64_t size, uint32_t, char* error,
                        size_t error_size) {
  if (!InRange(dst, off, size, error, error_size)) return CODA_STATUS_INVALID_ARGUMENT;
  if (size) std::memcpy(static_cast<uint8_t*>(dst->data) + off, src, size);
  return CODA_STATUS_OK;
}

coda_status_code Download(void*, coda_buffer src, uint64_t off, void* dst, uint64_t size, uint32_t, char* error,
                          size_t error_size) {
  if (!InRange(src, off, size, error, error_size)) return CODA_STATUS_INVALID_ARGUMENT;
  if (size) std::memcpy(dst, static_cast<const uint8_t*>(src->data) + off, size);
  return CODA_STATUS_OK;
}

coda_status_code Copy(void*, coda_buffer src, uint64_t src_off, coda_buffer dst, uint64_t dst_off, uint64_t size,
                      uint32_t, char* error, size_t error_size) {
  if (!InRange(src, src_off, size, error, error_size) || !InRange(dst, dst_off, size, error, error_size))
    return CODA_STATUS_INVALID_ARGUMENT;
  if (size) std::memmove(static_cast<uint8_t*>(dst->data) + dst_off, static_cast<const uint8_t*>(src->data) + src_off, size);
  return CODA_STATUS_OK;
}

const coda_backend_api kApi = {
    sizeof(coda_backend_api), CODA_BACKEND_ABI_VERSION, "cpu", "0.1.0",
    Create, Destroy, Describe, SupportsOp, Execute,
    DeviceCount, DeviceInfo,
    Prepare, Release,
    backend_util::Synchronize,
    BufferAlloc, BufferFree, Upload, Download, Copy,
    backend_util::EventCreate, backend_util::EventRecord, backend_util::EventWait, backend_util::EventDestroy,
};

}  // namespace
}  // namespace coda::cpu

// The table is returned whatever the host's version: the host reads abi_version and refuses a
// mismatch itself, naming both numbers.
extern "C" const coda_backend_api* coda_cpu_backend_entry(uint32_t) { return &coda::cpu::kApi; }
