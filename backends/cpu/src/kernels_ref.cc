#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "kernels.h"

namespace coda::cpu {

namespace {

std::array<float, 256> MakeFp8Table() {
  std::array<float, 256> t{};
  for (int v = 0; v < 256; ++v) t[static_cast<size_t>(v)] = coda_e4m3_to_f32(static_cast<uint8_t>(v));
  return t;
}
const std::array<float, 256> kFp8 = MakeFp8Table();

inline float Load(const Weight& w, uint64_t r, uint64_t c) {
  const uint64_t i = r * w.cols + c;
  switch (w.dtype) {
    case CODA_DTYPE_F32: {
      float f;
      std::memcpy(&f, w.data + 4 * i, 4);
      return f;
    }
    case CODA_DTYPE_BF16: {
      uint16_t v;
      std::memcpy(&v, w.data + 2 * i, 2);
      return coda_bf16_to_f32(v);
    }
    case CODA_DTYPE_FP8_E4M3: return kFp8[w.data[i]] * WeightScale(w, r, c);
    default: return 0.0f;
  }
}

void MatmulRows(const Weight& w, const float* x, size_t ldx, size_t n, float* y, size_t ldy, uint64_t r0, uint64_t r1) {
  for (uint64_t r = r0; r < r1; ++r)
    for (size_t t = 0; t < n; ++t) {
      float acc = 0;
      for (uint64_t c = 0; c < w.cols; ++c) acc += x[t * ldx + c] * Load(w, r, c);
      y[t * ldy + r] = acc;
    }
}

void DequantRows(const Weight& w, uint64_t r0, uint64_t r1, float* out) {
  for (uint64_t r = r0; r < r1; ++r)
    for (uint64_t c = 0; c < w.cols; ++c) out[(r - r0) * w.cols + c] = Load(w, r, c);
}

void MatvecT(const Weight& w, uint64_t r0, uint64_t r1, const float* x, float* y) {
  for (uint64_t r = r0; r < r1; ++r)
    for (uint64_t c = 0; c < w.cols; ++c) y[c] += x[r - r0] * Load(w, r, c);
}

float DotBf16(const float* a, const uint16_t* b, size_t n) {
  float acc = 0;
  for (size_t i = 0; i < n; ++i) acc += a[i] * coda_bf16_to_f32(b[i]);
  return acc;
}

void AxpyBf16(float a, const uint16_t* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += a * coda_bf16_to_f32(x[i]);
}

float CacheValue(const MlaAttendArgs& a, size_t p, size_t i) {
  return a.bf16 ? coda_bf16_to_f32(static_cast<const uint16_t*>(a.cache)[p * a.row + i]) : static_cast<const float*>(a.cache)[p * a.row + i];
}

void MlaAttend(const MlaAttendArgs& a) {
  const size_t len = a.end - a.begin;
  for (size_t h = 0; h < a.nh; ++h) {
    float* s = a.scores + h * len;
    const float* q = a.qabs + h * a.c;
    const float* qpe = a.qpe + h * a.qpe_stride;
    float mx = -INFINITY;
    for (size_t j = 0; j < len; ++j) {
      const size_t p = a.begin + j;
      float lat = 0, pe = 0;
      for (size_t i = 0; i < a.c; ++i) lat += q[i] * CacheValue(a, p, i);
      for (size_t i = 0; i < a.dr; ++i) pe += qpe[i] * CacheValue(a, p, a.c + i);
      s[j] = (lat + pe) * a.scale;
      mx = std::max(mx, s[j]);
    }
    float sum = 0;
    for (size_t j = 0; j < len; ++j) sum += (s[j] = std::exp(s[j] - mx));
    if (a.lse) a.lse[h] = mx + std::log(sum);
    float* o = a.olat + h * a.c;
    std::fill(o, o + a.c, 0.0f);
    for (size_t j = 0; j < len; ++j)
      for (size_t i = 0; i < a.c; ++i) o[i] += s[j] / sum * CacheValue(a, a.begin + j, i);
  }
}

float Dot(const float* a, const float* b, size_t n) {
  float acc = 0;
  for (size_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void Axpy(float a, const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += a * x[i];
}

const Kernels kRef = {"reference", MatmulRows, DequantRows, MatvecT, Dot, Axpy, DotBf16, AxpyBf16, MlaAttend, SiluMulScalar,
                      SoftmaxScalar};

}  // namespace

void SiluMulScalar(float* g, const float* u, size_t n) {
  for (size_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void SoftmaxScalar(float* x, size_t n) {
  const float mx = *std::max_element(x, x + n);
  float sum = 0;
  for (size_t i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - mx));
  const float inv = 1.0f / sum;
  for (size_t i = 0; i < n; ++i) x[i] *= inv;
}

float Fp8ToF32(uint8_t v) { return kFp8[v]; }

void MergeAttention(size_t nparts, const float* const* olat, const float* const* lse, size_t nh, size_t c, float* out) {
  std::vector<float> w(nparts);
  for (size_t h = 0; h < nh; ++h) {
    float mx = -INFINITY, sum = 0;
    for (size_t s = 0; s < nparts; ++s) mx = std::max(mx, lse[s][h]);
    for (size_t s = 0; s < nparts; ++s) sum += (w[s] = std::exp(lse[s][h] - mx));
    float* o = out + h * c;
    std::fill(o, o + c, 0.0f);
    for (size_t s = 0; s < nparts; ++s) {
      const float ws = w[s] / sum;
      const float* src = olat[s] + h * c;
      for (size_t i = 0; i < c; ++i) o[i] += ws * src[i];
    }
  }
}

const Kernels& ReferenceKernels() { return kRef; }

const Kernels& SelectKernels() {
  const char* force = std::getenv("CODA_CPU_KERNELS");
  const std::string_view f = force ? force : "";
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  if (f == "ref") return kRef;
  if (f != "avx2" && f != "avx512" && bf16 && Avx512Bf16Kernels()) return *Avx512Bf16Kernels();
  if (f != "avx2" && avx512 && Avx512Kernels()) return *Avx512Kernels();
  if (avx2 && Avx2Kernels()) return *Avx2Kernels();
  return kRef;
}

}  // namespace coda::cpu
