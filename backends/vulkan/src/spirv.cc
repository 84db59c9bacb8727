#include "spirv.h"

namespace coda::vk {

namespace {

constexpr uint32_t kAdd0[] = {
#include "add_0.inc"
};
constexpr uint32_t kAdd1[] = {
#include "add_1.inc"
};
constexpr uint32_t kEmbed0[] = {
#include "embed_0.inc"
};
constexpr uint32_t kEmbed1[] = {
#include "embed_1.inc"
};
constexpr uint32_t kKvStore0[] = {
#include "kv_store_0.inc"
};
constexpr uint32_t kKvStore1[] = {
#include "kv_store_1.inc"
};
constexpr uint32_t kLinear0[] = {
#include "linear_0.inc"
};
constexpr uint32_t kLinear1[] = {
#include "linear_1.inc"
};
constexpr uint32_t kMlaAbsorb0[] = {
#include "mla_absorb_0.inc"
};
constexpr uint32_t kMlaAbsorb1[] = {
#include "mla_absorb_1.inc"
};
constexpr uint32_t kMlaAttend0[] = {
#include "mla_attend_0.inc"
};
constexpr uint32_t kMlaAttend1[] = {
#include "mla_attend_1.inc"
};
constexpr uint32_t kMoeRoute0[] = {
#include "moe_route_0.inc"
};
constexpr uint32_t kMoeRoute1[] = {
#include "moe_route_1.inc"
};
constexpr uint32_t kRmsNorm0[] = {
#include "rms_norm_0.inc"
};
constexpr uint32_t kRmsNorm1[] = {
#include "rms_norm_1.inc"
};
constexpr uint32_t kRope0[] = {
#include "rope_0.inc"
};
constexpr uint32_t kRope1[] = {
#include "rope_1.inc"
};
constexpr uint32_t kSwiglu0[] = {
#include "swiglu_0.inc"
};
constexpr uint32_t kSwiglu1[] = {
#include "swiglu_1.inc"
};

#define CODA_SPIRV(name, array) {{name, array##0, sizeof(array##0)}, {name, array##1, sizeof(array##1)}}
const Spirv kModules[kKernelCount][2] = {
    CODA_SPIRV("add", kAdd),
    CODA_SPIRV("embed", kEmbed),
    CODA_SPIRV("kv_store", kKvStore),
    CODA_SPIRV("linear", kLinear),
    CODA_SPIRV("mla_absorb", kMlaAbsorb),
    CODA_SPIRV("mla_attend", kMlaAttend),
    CODA_SPIRV("moe_route", kMoeRoute),
    CODA_SPIRV("rms_norm", kRmsNorm),
    CODA_SPIRV("rope", kRope),
    CODA_SPIRV("swiglu", kSwiglu),
};

}  // namespace

const Spirv& KernelSpirv(Kernel kernel, bool subgroup) { return kModules[kernel][subgroup ? 1 : 0]; }

}  // namespace coda::vk
