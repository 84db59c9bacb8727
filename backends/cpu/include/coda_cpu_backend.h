// The CPU backend, linked statically into the runtime as the always-present fallback.
#pragma once

#include "coda_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

const coda_backend_api* coda_cpu_backend_entry(uint32_t host_abi_version);

#ifdef __cplusplus
}
#endif
