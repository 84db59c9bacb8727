// The Vulkan backend behind the plain-C backend ABI, built as libcoda-backend-vulkan.so.
// Everything runs on one compute queue and each call completes before it returns, so
// synchronize() and events only have to be valid, never to wait.
//
// Environment (for tests and diagnosis): CODA_VULKAN_STAGING=1 never maps device memory (the
// path a discrete GPU takes), CODA_VULKAN_NO_SUBGROUP=1 uses shared-memory reductions,
// CODA_VULKAN_VALIDATION=1 enables the Khronos validation layer, CODA_VULKAN_PIPELINE_CACHE
// names the pipeline cache file ("off": none).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "backend_util.h"
#include "immediate_events.h"
#include "coda_backend.h"
#include "ops.h"

namespace coda::vk {
namespace {

using backend_util::CopyError;
using backend_util::InRange;
using backend_util::ReadOp;

bool EnvFlag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}

coda_status_code Create(const coda_host* host, const coda_backend_options* options, void** self, char* error,
                        size_t error_size) {
  if (!host || host->struct_size < sizeof(uint32_t) * 2 || !self) {
    CopyError("invalid arguments to create()", error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  DeviceOptions o;
  if (options && options->struct_size >= offsetof(coda_backend_options, device) + sizeof(uint32_t))
    o.index = options->device;
  o.allow_map = !EnvFlag("CODA_VULKAN_STAGING");
  o.allow_subgroup = !EnvFlag("CODA_VULKAN_NO_SUBGROUP");
  o.validation = EnvFlag("CODA_VULKAN_VALIDATION");
  try {
    auto in = std::make_unique<Instance>();
    const std::string e = Device::Create(o, &in->device);
    if (!e.empty()) {
      CopyError(e, error, error_size);
      return CODA_STATUS_DEVICE_ERROR;
    }
    in->scratch = std::make_unique<Arena>(in->device.get(), false, 16ull << 20);
    in->staging = std::make_unique<Arena>(in->device.get(), true, 4ull << 20);
    in->description = in->device->description();
    *self = in.release();
    return CODA_STATUS_OK;
  } catch (const std::bad_alloc&) {
    CopyError("out of memory", error, error_size);
    return CODA_STATUS_OUT_OF_MEMORY;
  }
}

void Destroy(void* self) {
  auto* in = static_cast<Instance*>(self);
  if (!in) return;
  // Arenas free their blocks through the device: they go first.
  in->scratch.reset();
  in->staging.reset();
  delete in;
}

const char* Describe(void* self) { return static_cast<Instance*>(self)->description.c_str(); }

int SupportsOp(void* self, const coda_op* src) {
  coda_op op;
  if (!ReadOp(src, &op)) return 0;
  try {
    return CheckOp(*static_cast<Instance*>(self), op).empty();
  } catch (...) {
    return 0;
  }
}

coda_status_code Execute(void* self, const coda_op* src, char* error, size_t error_size) {
  coda_op op;
  if (!ReadOp(src, &op)) {
    CopyError("op struct from an unknown ABI revision", error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  auto& in = *static_cast<Instance*>(self);
  try {
    if (std::string why = CheckOp(in, op); !why.empty()) {
      CopyError("unsupported op: " + why, error, error_size);
      return CODA_STATUS_UNSUPPORTED;
    }
    const std::string e = RunOp(in, op);
    if (e.empty()) return CODA_STATUS_OK;
    CopyError(e, error, error_size);
    return e.find("device lost") != std::string::npos || e.find("out of device memory") != std::string::npos
               ? CODA_STATUS_DEVICE_ERROR
               : CODA_STATUS_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    CopyError("out of memory", error, error_size);
    return CODA_STATUS_OUT_OF_MEMORY;
  } catch (const std::exception& ex) {
    CopyError(ex.what(), error, error_size);
    return CODA_STATUS_INTERNAL;
  }
}

uint32_t DeviceCount(void* self) { return static_cast<uint32_t>(static_cast<Instance*>(self)->device->devices().size()); }

coda_status_code DeviceInfo(void* self, uint32_t device, coda_device_info* info, char* error, size_t error_size) {
  const auto& all = static_cast<Instance*>(self)->device->devices();
  if (device >= all.size() || !info || info->struct_size < sizeof(uint32_t)) {
    CopyError("no Vulkan device " + std::to_string(device) + " (there are " + std::to_string(all.size()) + ")", error,
              error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  coda_device_info d{};
  d.struct_size = info->struct_size;
  // Even a CPU driver (lavapipe) keeps its memory apart from the runtime's: the host must copy
  // into it, so it counts as a device for placement.
  d.kind = all[device].type == VK_PHYSICAL_DEVICE_TYPE_CPU || all[device].type == VK_PHYSICAL_DEVICE_TYPE_OTHER
               ? CODA_DEVICE_OTHER
               : CODA_DEVICE_GPU;
  d.total_memory = all[device].memory;
  std::snprintf(d.name, sizeof d.name, "%s", all[device].name.c_str());
  std::memcpy(info, &d, std::min<size_t>(info->struct_size, sizeof d));
  return CODA_STATUS_OK;
}

coda_status_code Prepare(void* self, const coda_weights* weights, void** prepared, char* error, size_t error_size) {
  if (!weights || !prepared || weights->struct_size < offsetof(coda_weights, hparams)) {
    CopyError("invalid arguments to prepare()", error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  try {
    auto p = std::make_unique<Prepared>();
    const std::string e = PrepareWeights(*static_cast<Instance*>(self), *weights, p.get());
    if (!e.empty()) {
      for (auto& b : p->blocks) static_cast<Instance*>(self)->device->Free(*b);
      CopyError("uploading the weights: " + e, error, error_size);
      return e.find("memory") != std::string::npos ? CODA_STATUS_OUT_OF_MEMORY : CODA_STATUS_DEVICE_ERROR;
    }
    *prepared = p.release();
    return CODA_STATUS_OK;
  } catch (const std::bad_alloc&) {
    CopyError("out of memory", error, error_size);
    return CODA_STATUS_OUT_OF_MEMORY;
  }
}

void Release(void* self, void* prepared) {
  auto* p = static_cast<Prepared*>(prepared);
  if (!p) return;
  for (auto& b : p->blocks) static_cast<Instance*>(self)->device->Free(*b);
  delete p;
}

coda_status_code BufferAlloc(void* self, uint64_t size, coda_buffer* buffer, char* error, size_t error_size) {
  if (!buffer) {
    CopyError("buffer_alloc without a result pointer", error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  auto* b = new (std::nothrow) coda_buffer_impl{{}, size};
  if (!b) {
    CopyError("out of memory", error, error_size);
    return CODA_STATUS_OUT_OF_MEMORY;
  }
  const std::string e = static_cast<Instance*>(self)->device->Allocate(size, false, &b->block);
  if (!e.empty()) {
    delete b;
    CopyError(e, error, error_size);
    return CODA_STATUS_OUT_OF_MEMORY;
  }
  *buffer = b;
  return CODA_STATUS_OK;
}

void BufferFree(void* self, coda_buffer buffer) {
  if (!buffer) return;
  static_cast<Instance*>(self)->device->Free(buffer->block);
  delete buffer;
}

coda_status_code Status(const std::string& e, char* error, size_t error_size) {
  if (e.empty()) return CODA_STATUS_OK;
  CopyError(e, error, error_size);
  return CODA_STATUS_DEVICE_ERROR;
}

coda_status_code Upload(void* self, coda_buffer dst, uint64_t off, const void* src, uint64_t size, uint32_t,
                        char* error, size_t error_size) {
  if (!InRange(dst, off, size, error, error_size)) return CODA_STATUS_INVALID_ARGUMENT;
  return Status(static_cast<Instance*>(self)->device->Write({&dst->block, off, size}, src, size), error, error_size);
}

coda_status_code Download(void* self, coda_buffer src, uint64_t off, void* dst, uint64_t size, uint32_t, char* error,
                          size_t error_size) {
  if (!InRange(src, off, size, error, error_size)) return CODA_STATUS_INVALID_ARGUMENT;
  return Status(static_cast<Instance*>(self)->device->Read({&src->block, off, size}, dst, size), error, error_size);
}

coda_status_code Copy(void* self, coda_buffer src, uint64_t src_off, coda_buffer dst, uint64_t dst_off, uint64_t size,
                      uint32_t, char* error, size_t error_size) {
  if (!InRange(src, src_off, size, error, error_size) || !InRange(dst, dst_off, size, error, error_size))
    return CODA_STATUS_INVALID_ARGUMENT;
  Device& d = *static_cast<Instance*>(self)->device;
  if (src == dst && src_off < dst_off + size && dst_off < src_off + size) {
    // vkCmdCopyBuffer forbids overlapping regions: go through host memory.
    std::string tmp(size, '\0');
    std::string e = d.Read({&src->block, src_off, size}, tmp.data(), size);
    if (e.empty()) e = d.Write({&dst->block, dst_off, size}, tmp.data(), size);
    return Status(e, error, error_size);
  }
  std::string e = d.Copy({&src->block, src_off, size}, {&dst->block, dst_off, size});
  if (e.empty()) e = d.Submit();
  return Status(e, error, error_size);
}

const coda_backend_api kApi = {
    sizeof(coda_backend_api), CODA_BACKEND_ABI_VERSION, "vulkan", "0.1.0",
    Create, Destroy, Describe, SupportsOp, Execute,
    DeviceCount, DeviceInfo,
    Prepare, Release,
    backend_util::Synchronize,
    BufferAlloc, BufferFree, Upload, Download, Copy,
    backend_util::EventCreate, backend_util::EventRecord, backend_util::EventWait, backend_util::EventDestroy,
};

}  // namespace
}  // namespace coda::vk

// The table is returned whatever the host's version: the host reads abi_version and refuses a
// mismatch itself, naming both numbers.
extern "C" CODA_BACKEND_EXPORT const coda_backend_api* coda_backend_entry(uint32_t) { return &coda::vk::kApi; }
