// The kernels' SPIR-V, compiled from ../shaders at build time (one module per reduction kind).
#pragma once

#include <cstddef>
#include <cstdint>

#include "device.h"

namespace coda::vk {

struct Spirv {
  const char* name;
  const uint32_t* words;
  size_t size;  // bytes
};

const Spirv& KernelSpirv(Kernel kernel, bool subgroup);

}  // namespace coda::vk
