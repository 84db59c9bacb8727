// The CPU backend behind the plain-C backend ABI.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>

#include "coda_backend.h"
#include "coda_cpu_backend.h"
#include "ops.h"

namespace coda::cpu {
namespace {

struct Instance {
  std::unique_ptr<ThreadPool> pool;
  Context ctx;
  std::string description;
};

void CopyError(const std::string& m, char* error, size_t size) {
  if (!error || size == 0) return;
  std::snprintf(error, size, "%s", m.c_str());
}

coda_status_code Create(const coda_host* host, const coda_backend_options* options, void** self, char* error,
                        size_t error_size) {
  if (!host || host->struct_size < sizeof(uint32_t) * 2 || !self) {
    CopyError("cpu: invalid arguments to create()", error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  unsigned threads = 0;
  if (options && options->struct_size >= offsetof(coda_backend_options, n_threads) + sizeof(uint32_t))
    threads = options->n_threads;
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  auto* inst = new (std::nothrow) Instance();
  if (!inst) {
    CopyError("cpu: out of memory", error, error_size);
    return CODA_STATUS_OUT_OF_MEMORY;
  }
  inst->pool = std::make_unique<ThreadPool>(threads);
  inst->ctx.k = &SelectKernels();
  inst->ctx.pool = inst->pool.get();
  inst->ctx.thread_scratch.resize(inst->pool->size());
  // For measuring the two Linear paths against each other (coda-bench); not a user setting.
  if (const char* g = std::getenv("CODA_CPU_GEMM_MIN_TOKENS")) inst->ctx.gemm_min_tokens = std::strtoul(g, nullptr, 10);
  inst->description = "CPU, " + std::to_string(inst->pool->size()) + " threads, " + inst->ctx.k->name + " kernels";
  *self = inst;
  return CODA_STATUS_OK;
}

void Destroy(void* self) { delete static_cast<Instance*>(self); }

const char* Describe(void* self) { return static_cast<Instance*>(self)->description.c_str(); }

int SupportsOp(void*, const coda_op* op) { return op && CheckOp(*op).empty(); }

coda_status_code Execute(void* self, const coda_op* op, char* error, size_t error_size) {
  if (!op || op->struct_size < sizeof(coda_op)) {
    CopyError("cpu: op struct from an unknown ABI revision", error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  }
  try {
    std::string e = RunOp(static_cast<Instance*>(self)->ctx, *op);
    if (e.empty()) return CODA_STATUS_OK;
    CopyError(e, error, error_size);
    return CODA_STATUS_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    CopyError("cpu: out of memory", error, error_size);
    return CODA_STATUS_OUT_OF_MEMORY;
  } catch (const std::exception& ex) {
    CopyError(std::string("cpu: ") + ex.what(), error, error_size);
    return CODA_STATUS_INTERNAL;
  }
}

const coda_backend_api kApi = {
    sizeof(coda_backend_api), CODA_BACKEND_ABI_VERSION, "cpu", "0.1.0", Create, Destroy, Describe, SupportsOp, Execute,
};

}  // namespace
}  // namespace coda::cpu

extern "C" const coda_backend_api* coda_cpu_backend_entry(uint32_t host_abi_version) {
  return host_abi_version == CODA_BACKEND_ABI_VERSION ? &coda::cpu::kApi : nullptr;
}
