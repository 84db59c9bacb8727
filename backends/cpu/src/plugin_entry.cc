// The entry point of libcoda-backend-cpu.so, the CPU backend as a run-time plugin. Everything
// else in that library is hidden, so its copy of the CPU code never clashes with the copy a
// program links statically.
#include "coda_backend.h"
#include "coda_cpu_backend.h"

extern "C" CODA_BACKEND_EXPORT const coda_backend_api* coda_backend_entry(uint32_t host_abi_version) {
  return coda_cpu_backend_entry(host_abi_version);
}
