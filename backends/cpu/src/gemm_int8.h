// Prefill products of FP8 weights on int8 dot products (AVX512-VNNI), the CPU's counterpart of
// DeepSeek-V3's FP8 GEMM:
// - each activation row is quantized per tile of the weight's column block (1 x 128 for
//   DeepSeek's checkpoints) to int8, scale amax / 127, as DeepSeek's reference quantizes
//   activations to FP8 per 1 x 128 tile before its GEMM;
// - each E4M3 weight becomes the int8 nearest v * 127 / 448, the block scale times 448 / 127
//   carrying the rest (DeepSeek's blocks are scaled so that their largest value is 448);
// - sums are exact in int32 within a column block and promoted to F32 across blocks.
// Context::exact_products keeps the F32 path (the golden tests use it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels.h"

namespace coda::cpu {

constexpr float kInt8WeightScale = 448.0f / 127.0f;
constexpr size_t kInt8TileRows = 6;    // activation rows per kernel tile
constexpr size_t kInt8PanelRows = 32;  // weight rows per panel; Int8Gemm's r0 is a multiple of it

// The int8 weight of each E4M3 code: round(|v| * 127 / 448) with v's sign; NaN codes give 0.
int8_t Int8OfE4m3(uint8_t code);

// Activations quantized per tile: row t's column block b is q[t * stride + b * block ...] as
// int8 + 128 (VNNI multiplies unsigned by signed bytes), with value scale[t * blocks + b] * q.
// Rows are allocated in whole kernel tiles; those past n are zero (Int8Prepare writes them,
// Int8QuantizeRows the others, column padding included).
struct Int8Activations {
  size_t n = 0, cols = 0, block = 0, blocks = 0, stride = 0;
  std::vector<uint8_t> q;
  std::vector<float> scale;
};

// Whether this build and CPU run int8 products on `w`: FP8 with column and row blocks a
// multiple of 32, and a CPU with AVX512-VNNI and AVX512-VBMI.
bool Int8GemmRuns(const Weight& w);
// Sizes `a` for n rows of `cols` values in tiles of `block`.
void Int8Prepare(Int8Activations& a, size_t n, size_t cols, size_t block);
// Quantizes rows [t0, t1) of x into `a`. Values must be finite.
void Int8QuantizeRows(const float* x, size_t ldx, Int8Activations& a, size_t t0, size_t t1);
// y[t * ldy + r] = x_t . W_r for rows r in [r0, r1) and every token of `a`; r0 a multiple of
// kInt8PanelRows.
// `panel` is the calling thread's scratch (the weight rows rearranged as int8).
void Int8Gemm(const Weight& w, const Int8Activations& a, float* y, size_t ldy, uint64_t r0, uint64_t r1,
              std::vector<uint8_t>& panel);

}  // namespace coda::cpu
