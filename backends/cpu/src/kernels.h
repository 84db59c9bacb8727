// The CPU backend's inner loops, in three builds chosen at run time by CPU features:
// AVX-512 (F, BW, VL, F16C), AVX2 (+FMA, F16C), and portable reference C++.
// Weights stay in their stored dtype; FP8 and BF16 are decoded to F32 in registers.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "coda_backend.h"

namespace coda::cpu {

// A 2-D weight [rows, cols] as stored in the model file.
struct Weight {
  uint32_t dtype = CODA_DTYPE_F32;
  uint64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;
  const float* scales = nullptr;  // FP8: [ceil(rows/block), scale_cols]
  uint32_t block = 128;
  uint64_t scale_cols = 0;
};

struct MlaAttendArgs {
  const float* qabs;  // [nh, c]
  const float* qpe;   // [nh, qk] rows: only the dr values at qpe + h * qpe_stride are read
  size_t qpe_stride;
  size_t nh;
  const void* cache;
  bool bf16;
  size_t row, c, dr;
  size_t begin, end;  // the cache rows attended to
  float scale;
  float* scores;  // scratch [nh, end - begin]
  float* olat;    // out [nh, c]
  // Out [nh] unless null: log of the softmax denominator (max included), so that results over
  // disjoint row ranges can be merged (split over positions).
  float* lse;
};


struct Kernels {
  const char* name;
  // y[t * ldy + r] = sum_c x[t * ldx + c] * W[r][c], for rows r in [r0, r1) and tokens t < n.
  void (*matmul_rows)(const Weight& w, const float* x, size_t ldx, size_t n, float* y, size_t ldy, uint64_t r0,
                      uint64_t r1);
  // out[(r - r0) * cols + c] = W[r][c] for rows r in [r0, r1).
  void (*dequant_rows)(const Weight& w, uint64_t r0, uint64_t r1, float* out);
  // y[c] += sum_{r in [r0, r1)} x[r - r0] * W[r][c] for every column c (a transposed mat-vec).
  void (*matvec_t)(const Weight& w, uint64_t r0, uint64_t r1, const float* x, float* y);
  float (*dot)(const float* a, const float* b, size_t n);
  // y += a * x
  void (*axpy)(float a, const float* x, float* y, size_t n);
  // The same with a BF16 second operand (the latent cache).
  float (*dot_bf16)(const float* a, const uint16_t* b, size_t n);
  void (*axpy_bf16)(float a, const uint16_t* x, float* y, size_t n);
  // Absorbed MLA attention of one query position for `nh` heads over cache rows [begin, end):
  // s[h][p] = (qabs[h] . lat[p] + qpe[h] . pe[p]) * scale, p = softmax(s[h]), olat[h] = sum p lat.
  // Cache rows hold `row` values (c latent, then the rope key) in F32 or BF16.
  void (*mla_attend)(const MlaAttendArgs& a);
  // g[i] = silu(g[i]) * u[i], silu(x) = x / (1 + e^-x): the SwiGLU gate.
  void (*silu_mul)(float* g, const float* u, size_t n);
  // x[i] = e^(x[i] - max) / sum_j e^(x[j] - max) over [0, n), n >= 1: a softmax in place.
  void (*softmax)(float* x, size_t n);
};

// The scalar SwiGLU gate and softmax, shared by the reference and AVX2 tables.
void SiluMulScalar(float* g, const float* u, size_t n);
void SoftmaxScalar(float* x, size_t n);

const Kernels& ReferenceKernels();
const Kernels* Avx2Kernels();    // nullptr when not compiled in
const Kernels* Avx512Kernels();  // nullptr when not compiled in
// AVX-512 plus AVX512-BF16 dot products for attention over a BF16 cache (q and the softmax
// weights rounded to BF16, as the cache already is); nullptr when not compiled in.
const Kernels* Avx512Bf16Kernels();
// The best set this CPU runs; CODA_CPU_KERNELS=ref|avx2|avx512|avx512bf16 forces one (for tests).
const Kernels& SelectKernels();

// The E4M3 value of each code (coda_e4m3_to_f32, from a table).
float Fp8ToF32(uint8_t v);

// Calls f(std::integral_constant<uint32_t, DT>{}) with the weight dtype as a compile-time value;
// returns false for dtypes the SIMD kernels do not handle (the caller falls back to reference).
template <typename F>
inline bool WithWeightDType(uint32_t dtype, F&& f) {
  switch (dtype) {
    case CODA_DTYPE_F32: f(std::integral_constant<uint32_t, CODA_DTYPE_F32>{}); return true;
    case CODA_DTYPE_BF16: f(std::integral_constant<uint32_t, CODA_DTYPE_BF16>{}); return true;
    case CODA_DTYPE_FP8_E4M3: f(std::integral_constant<uint32_t, CODA_DTYPE_FP8_E4M3>{}); return true;
    default: return false;
  }
}

// Merges attention over disjoint row ranges: parts[s] = {olat [nh, c], lse [nh]}; out = the
// softmax over the union.
void MergeAttention(size_t nparts, const float* const* olat, const float* const* lse, size_t nh, size_t c, float* out);

// Calls f(std::integral_constant<int, NT>{}, t) for token groups [t, t + NT) that cover [0, n):
// groups of four, then one of three, two or one (kernels keep NT tokens' sums in registers).
template <typename F>
inline void ForTokenGroups(size_t n, F&& f) {
  size_t t = 0;
  for (; t + 4 <= n; t += 4) f(std::integral_constant<int, 4>{}, t);
  switch (n - t) {
    case 3: f(std::integral_constant<int, 3>{}, t); break;
    case 2: f(std::integral_constant<int, 2>{}, t); break;
    case 1: f(std::integral_constant<int, 1>{}, t); break;
    default: break;
  }
}

// The decode kernels keep FP8 raw (its value times 2^-120, see kernels_avx512.cc); x carries
// the block scale and this factor, the sum another one, so products stay normal.
constexpr float kTwo60 = 0x1p60f;

// FP8 decode: per block of rows in [r0, r1), a copy of x (n rows of w.cols) with each column
// block multiplied by that block's scale and 2^60, passed as rows(scaled, rb, re). Each weight
// row is then one plain dot product, with no per-block partial sums. A template, so each kernel
// build compiles (and vectorizes) its own copy.
template <typename F>
inline void ForFp8RowBlocks(const Weight& w, const float* x, size_t ldx, size_t n, uint64_t r0, uint64_t r1, F&& rows) {
  thread_local std::vector<float> scaled;
  scaled.resize(n * w.cols);
  for (uint64_t rb = r0; rb < r1;) {
    const uint64_t re = std::min<uint64_t>(r1, (rb / w.block + 1) * w.block);
    const float* srow = w.scales + (rb / w.block) * w.scale_cols;
    for (size_t t = 0; t < n; ++t)
      for (uint64_t b0 = 0; b0 < w.cols; b0 += w.block) {
        const float s = srow[b0 / w.block] * kTwo60;
        const uint64_t b1 = std::min<uint64_t>(w.cols, b0 + w.block);
        for (uint64_t c = b0; c < b1; ++c) scaled[t * w.cols + c] = x[t * ldx + c] * s;
      }
    rows(static_cast<const float*>(scaled.data()), rb, re);
    rb = re;
  }
}

inline float WeightScale(const Weight& w, uint64_t r, uint64_t c) {
  return w.scales[(r / w.block) * w.scale_cols + c / w.block];
}

}  // namespace coda::cpu
