// The portable half of the int8 products: the weight table, sizing, and whether they run here.
// The kernels are in gemm_int8_vnni.cc, built for AVX512-VNNI.
#include <algorithm>
#include <cmath>
#include <cstddef>

#include "gemm_int8.h"

namespace coda::cpu {

bool Int8GemmVnniBuilt();  // gemm_int8_vnni.cc: false when the compiler could not build it

int8_t Int8OfE4m3(uint8_t code) {
  if ((code & 0x7f) == 0x7f) return 0;  // NaN
  const float q = std::nearbyint(std::fabs(Fp8ToF32(code)) / kInt8WeightScale);
  return static_cast<int8_t>(code & 0x80 ? -q : q);
}

bool Int8GemmRuns(const Weight& w) {
  static const bool cpu = [] {
    __builtin_cpu_init();
    return Int8GemmVnniBuilt() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512vbmi");
  }();
  // Row blocks a multiple of 32 keep each 32-row panel under one scale; gathers index rows
  // with 32-bit offsets.
  return cpu && w.dtype == CODA_DTYPE_FP8_E4M3 && w.scales && w.block % 32 == 0 && w.block > 0 &&
         w.cols * 32 < (uint64_t{1} << 31);
}

void Int8Prepare(Int8Activations& a, size_t n, size_t cols, size_t block) {
  a.n = n;
  a.cols = cols;
  a.block = block;
  a.blocks = (cols + block - 1) / block;
  a.stride = (cols + 3) / 4 * 4;
  const size_t padded = (n + kInt8TileRows - 1) / kInt8TileRows * kInt8TileRows;
  a.q.resize(padded * a.stride);
  a.scale.resize(padded * a.blocks);
  std::fill(a.q.begin() + static_cast<std::ptrdiff_t>(n * a.stride), a.q.end(), uint8_t{128});
  std::fill(a.scale.begin() + static_cast<std::ptrdiff_t>(n * a.blocks), a.scale.end(), 0.0f);
}

}  // namespace coda::cpu
