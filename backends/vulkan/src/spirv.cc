#include "spirv.h"

namespace coda::vk {

namespace {

// k<Name>0 and k<Name>1 per kernel: the SPIR-V words glslc wrote.
#include "spirv_arrays.inc"

#define CODA_SPIRV(name, array) {{name, array##0, sizeof(array##0)}, {name, array##1, sizeof(array##1)}}
const Spirv kModules[kKernelCount][2] = {
#define CODA_VK_KERNEL(name, Name) CODA_SPIRV(#name, k##Name),
#include "kernels.inc"
#undef CODA_VK_KERNEL
};

}  // namespace

const Spirv& KernelSpirv(Kernel kernel, bool subgroup) { return kModules[kernel][subgroup ? 1 : 0]; }

}  // namespace coda::vk
