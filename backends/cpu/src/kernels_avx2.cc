// AVX2 kernels (with FMA and F16C) for CPUs without AVX-512. Tails fall back to scalar code.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace coda::cpu {
namespace {

// 8 weights from column c; FP8 comes out 2^-8 times its value (see kernels_avx512.cc).
template <uint32_t DT>
inline __m256 Load8(const uint8_t* row, uint64_t c) {
  if constexpr (DT == CODA_DTYPE_F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + c);
  } else if constexpr (DT == CODA_DTYPE_BF16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(row) + c));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
  } else {
    const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c)));
    const __m128i sign = _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x80)), 8);
    const __m128i em = _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x7f)), 7);
    return _mm256_cvtph_ps(_mm_or_si128(sign, em));
  }
}

template <uint32_t DT>
inline float Scalar(const uint8_t* row, uint64_t c) {
  if constexpr (DT == CODA_DTYPE_F32) {
    float f;
    std::memcpy(&f, row + 4 * c, 4);
    return f;
  } else if constexpr (DT == CODA_DTYPE_BF16) {
    uint16_t v;
    std::memcpy(&v, row + 2 * c, 2);
    return coda_bf16_to_f32(v);
  } else {
    return Fp8ToF32(row[c]) * (1.0f / 256.0f);
  }
}

inline float Reduce(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

// FP8 E4M3 for the mat-mul inner loop, raw: sign-extended and shifted into an F32 pattern
// that is the value times 2^-120 exactly (see kernels_avx512.cc); x carries the block scale
// and kTwo60, the sum another kTwo60.
inline __m256 Fp8Raw8(const uint8_t* p) {
  const __m256i d = _mm256_slli_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), 20);
  return _mm256_castsi256_ps(_mm256_and_si256(d, _mm256_set1_epi32(static_cast<int>(0x87F00000u))));
}

template <uint32_t DT>
inline __m256 LoadDot8(const uint8_t* row, uint64_t c) {
  if constexpr (DT == CODA_DTYPE_FP8_E4M3) return Fp8Raw8(row + c);
  else return Load8<DT>(row, c);
}
template <uint32_t DT>
inline float ScalarDot(const uint8_t* row, uint64_t c) {
  if constexpr (DT == CODA_DTYPE_FP8_E4M3) return Fp8ToF32(row[c]) * 0x1p-60f * 0x1p-60f;
  else return Scalar<DT>(row, c);
}

// How far ahead the weight stream is prefetched (see kernels_avx512.cc).
constexpr uint64_t kWeightPrefetch = 4096;

// y[t] = W[row] . x[t] for NT tokens over one whole row, read start to end (one sequential
// stream). NA accumulators per token keep four FMA chains in flight.
template <uint32_t DT, int NT>
inline void Row(const uint8_t* row, uint64_t cols, const float* x, size_t ldx, float* y, size_t ldy, float mul) {
  constexpr int NA = NT >= 4 ? 1 : 4 / NT;
  constexpr uint64_t kStepBytes = 8 * NA * uint64_t{coda_dtype_size(DT)};  // a power of two
  __m256 acc[NA][NT];
  for (auto& a : acc)
    for (auto& v : a) v = _mm256_setzero_ps();
  uint64_t c = 0;
  for (; c + 8 * NA <= cols; c += 8 * NA) {
    if (kStepBytes >= 64 || (c * uint64_t{coda_dtype_size(DT)}) % 64 == 0)  // once per 64-byte line
      for (uint64_t b = 0; b < kStepBytes; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(row + c * uint64_t{coda_dtype_size(DT)} + b + kWeightPrefetch), _MM_HINT_T0);
    for (int a = 0; a < NA; ++a) {
      const __m256 wv = LoadDot8<DT>(row, c + 8 * a);
      for (int t = 0; t < NT; ++t) acc[a][t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * ldx + c + 8 * a), acc[a][t]);
    }
  }
  for (; c + 8 <= cols; c += 8) {
    const __m256 wv = LoadDot8<DT>(row, c);
    for (int t = 0; t < NT; ++t) acc[0][t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * ldx + c), acc[0][t]);
  }
  for (int t = 0; t < NT; ++t) {
    __m256 sum = acc[0][t];
    for (int a = 1; a < NA; ++a) sum = _mm256_add_ps(sum, acc[a][t]);
    float s = Reduce(sum);
    for (uint64_t k = c; k < cols; ++k) s += ScalarDot<DT>(row, k) * x[t * ldx + k];
    y[t * ldy] = s * mul;
  }
}

template <uint32_t DT>
void Rows(const uint8_t* data, uint64_t cols, const float* x, size_t ldx, size_t n, float* y, size_t ldy, uint64_t r0,
          uint64_t r1, float mul) {
  for (uint64_t r = r0; r < r1; ++r) {  // every token group reuses the row from L1
    const uint8_t* row = data + r * cols * uint64_t{coda_dtype_size(DT)};
    ForTokenGroups(n, [&](auto nt, size_t t) { Row<DT, nt()>(row, cols, x + t * ldx, ldx, y + t * ldy + r, ldy, mul); });
  }
}

template <uint32_t DT>
void MatmulRowsT(const Weight& w, const float* x, size_t ldx, size_t n, float* y, size_t ldy, uint64_t r0,
                 uint64_t r1) {
  if constexpr (DT != CODA_DTYPE_FP8_E4M3) {
    Rows<DT>(w.data, w.cols, x, ldx, n, y, ldy, r0, r1, 1.0f);
  } else {
    ForFp8RowBlocks(w, x, ldx, n, r0, r1, [&](const float* xs, uint64_t rb, uint64_t re) {
      Rows<DT>(w.data, w.cols, xs, w.cols, n, y, ldy, rb, re, kTwo60);
    });
  }
}

void MatmulRows(const Weight& w, const float* x, size_t ldx, size_t n, float* y, size_t ldy, uint64_t r0, uint64_t r1) {
  if (!WithWeightDType(w.dtype, [&](auto dt) { MatmulRowsT<dt()>(w, x, ldx, n, y, ldy, r0, r1); }))
    ReferenceKernels().matmul_rows(w, x, ldx, n, y, ldy, r0, r1);
}

template <uint32_t DT>
void DequantRowsT(const Weight& w, uint64_t r0, uint64_t r1, float* out) {
  for (uint64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.cols * uint64_t{coda_dtype_size(DT)};
    float* o = out + (r - r0) * w.cols;
    for (uint64_t c0 = 0; c0 < w.cols; c0 += w.block) {
      const uint64_t c1 = std::min<uint64_t>(w.cols, c0 + w.block);
      const float s = DT == CODA_DTYPE_FP8_E4M3 ? WeightScale(w, r, c0) * 256.0f : 1.0f;
      const __m256 sv = _mm256_set1_ps(s);
      uint64_t c = c0;
      for (; c + 8 <= c1; c += 8) _mm256_storeu_ps(o + c, _mm256_mul_ps(Load8<DT>(row, c), sv));
      for (; c < c1; ++c) o[c] = Scalar<DT>(row, c) * s;
    }
  }
}

void DequantRows(const Weight& w, uint64_t r0, uint64_t r1, float* out) {
  if (!WithWeightDType(w.dtype, [&](auto dt) { DequantRowsT<dt()>(w, r0, r1, out); }))
    ReferenceKernels().dequant_rows(w, r0, r1, out);
}

template <uint32_t DT>
void MatvecTT(const Weight& w, uint64_t r0, uint64_t r1, const float* x, float* y) {
  for (uint64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.cols * uint64_t{coda_dtype_size(DT)};
    for (uint64_t c0 = 0; c0 < w.cols; c0 += w.block) {
      const uint64_t c1 = std::min<uint64_t>(w.cols, c0 + w.block);
      const float s = x[r - r0] * (DT == CODA_DTYPE_FP8_E4M3 ? WeightScale(w, r, c0) * 256.0f : 1.0f);
      const __m256 sv = _mm256_set1_ps(s);
      uint64_t c = c0;
      for (; c + 8 <= c1; c += 8) _mm256_storeu_ps(y + c, _mm256_fmadd_ps(Load8<DT>(row, c), sv, _mm256_loadu_ps(y + c)));
      for (; c < c1; ++c) y[c] += Scalar<DT>(row, c) * s;
    }
  }
}

void MatvecT(const Weight& w, uint64_t r0, uint64_t r1, const float* x, float* y) {
  if (!WithWeightDType(w.dtype, [&](auto dt) { MatvecTT<dt()>(w, r0, r1, x, y); }))
    ReferenceKernels().matvec_t(w, r0, r1, x, y);
}

inline __m256 Bf16x8(const uint16_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

float DotBf16(const float* a, const uint16_t* b, size_t n) {
  __m256 acc = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), Bf16x8(b + i), acc);
  float s = Reduce(acc);
  for (; i < n; ++i) s += a[i] * coda_bf16_to_f32(b[i]);
  return s;
}

void AxpyBf16(float a, const uint16_t* x, float* y, size_t n) {
  const __m256 av = _mm256_set1_ps(a);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, Bf16x8(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * coda_bf16_to_f32(x[i]);
}

float Dot(const float* a, const float* b, size_t n) {
  __m256 acc = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = Reduce(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void Axpy(float a, const float* x, float* y, size_t n) {
  const __m256 av = _mm256_set1_ps(a);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

// Per head through the dot/axpy kernels above.
void MlaAttend(const MlaAttendArgs& a) {
  const uint16_t* c16 = static_cast<const uint16_t*>(a.cache) + a.begin * a.row;
  const float* c32 = static_cast<const float*>(a.cache) + a.begin * a.row;
  const size_t len = a.end - a.begin;
  for (size_t h = 0; h < a.nh; ++h) {
    float* s = a.scores + h * len;
    const float* q = a.qabs + h * a.c;
    const float* qpe = a.qpe + h * a.qpe_stride;
    float mx = -INFINITY;
    for (size_t p = 0; p < len; ++p) {
      s[p] = (a.bf16 ? DotBf16(q, c16 + p * a.row, a.c) + DotBf16(qpe, c16 + p * a.row + a.c, a.dr)
                     : Dot(q, c32 + p * a.row, a.c) + Dot(qpe, c32 + p * a.row + a.c, a.dr)) * a.scale;
      mx = std::max(mx, s[p]);
    }
    float sum = 0;
    for (size_t p = 0; p < len; ++p) sum += (s[p] = std::exp(s[p] - mx));
    if (a.lse) a.lse[h] = mx + std::log(sum);
    float* o = a.olat + h * a.c;
    std::fill(o, o + a.c, 0.0f);
    for (size_t p = 0; p < len; ++p) {
      if (a.bf16) AxpyBf16(s[p] / sum, c16 + p * a.row, o, a.c);
      else Axpy(s[p] / sum, c32 + p * a.row, o, a.c);
    }
  }
}

const Kernels kAvx2 = {"avx2", MatmulRows, DequantRows, MatvecT, Dot, Axpy, DotBf16, AxpyBf16, MlaAttend, SiluMulScalar,
                       SoftmaxScalar};

}  // namespace

const Kernels* Avx2Kernels() { return &kAvx2; }

}  // namespace coda::cpu
