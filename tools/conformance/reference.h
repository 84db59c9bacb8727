// The scalar reference for every graph op as a backend behind the ABI ("reference": host memory
// only, every op, every weight dtype including FP8 embedding tables). Each op's reference lives
// with its cases in ops/; the arithmetic they share is in suite.h. Slow and independent of any
// backend's kernels, so the CPU backend itself can be checked against it.
#pragma once

#include <cstdint>

#include "coda_backend.h"

namespace coda::conformance {

const coda_backend_api* ReferenceBackendEntry(uint32_t host_abi_version);

}  // namespace coda::conformance
