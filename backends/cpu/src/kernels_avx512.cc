// AVX-512 kernels (F, BW, VL; F16C for the FP8 decode). Compiled with -mavx512f -mavx512bw
// -mavx512vl -mf16c -mfma; only called when the CPU has them.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "exp_avx512.h"
#include "kernels.h"

namespace coda::cpu {
namespace {

inline __mmask16 TailMask(uint64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << remaining) - 1);
}

// FP8 E4M3 to F32 in three integer ops: sign-extend each byte to 32 bits and shift it left by
// 20, which puts the sign at bit 31 (from the extension), the 4 exponent and 3 mantissa bits at
// bits 30..20 of an F32 with exponent bias 127 instead of 7; masking keeps just those. The result
// is the E4M3 value times 2^-120 exactly, subnormal codes included (they become F32 subnormals).
inline __m512 Fp8Raw16(__m128i b) {
  const __m512i d = _mm512_slli_epi32(_mm512_cvtepi8_epi32(b), 20);
  return _mm512_castsi512_ps(_mm512_and_si512(d, _mm512_set1_epi32(static_cast<int>(0x87F00000u))));
}
// The exact value: the raw pattern times 2^120 (as two exact steps of 2^60).
inline __m512 Fp8x16(__m128i b) {
  return _mm512_mul_ps(_mm512_mul_ps(Fp8Raw16(b), _mm512_set1_ps(kTwo60)), _mm512_set1_ps(kTwo60));
}

inline __m512 Bf16x16(__m256i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16)); }

template <uint32_t DT>
inline __m512 Load16(const uint8_t* row, uint64_t c) {
  if constexpr (DT == CODA_DTYPE_F32) return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + c);
  else if constexpr (DT == CODA_DTYPE_BF16) return Bf16x16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c)));
  else return Fp8x16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)));
}

template <uint32_t DT>
inline __m512 Load16(const uint8_t* row, uint64_t c, __mmask16 m) {
  if constexpr (DT == CODA_DTYPE_F32) return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + c);
  else if constexpr (DT == CODA_DTYPE_BF16) return Bf16x16(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(row) + c));
  else return Fp8x16(_mm_maskz_loadu_epi8(m, row + c));
}

// For the mat-mul inner loop FP8 stays raw (value x 2^-120); x is pre-scaled by the block scale
// and 2^60, the sum by another 2^60, so products stay far from the subnormal range.
template <uint32_t DT>
inline __m512 LoadDot16(const uint8_t* row, uint64_t c) {
  if constexpr (DT == CODA_DTYPE_FP8_E4M3) return Fp8Raw16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)));
  else return Load16<DT>(row, c);
}
template <uint32_t DT>
inline __m512 LoadDot16(const uint8_t* row, uint64_t c, __mmask16 m) {
  if constexpr (DT == CODA_DTYPE_FP8_E4M3) return Fp8Raw16(_mm_maskz_loadu_epi8(m, row + c));
  else return Load16<DT>(row, c, m);
}

// How far ahead of the multiply the weight stream is prefetched into L1. Once x outgrows L1
// (more than ~4096 columns of F32), its reloads crowd out the hardware prefetcher's weight
// lines: an 8192-column FP8 mat-vec ran at 0.78 of the read bandwidth, an 18432-column one at
// 0.59; with this both reach it (1024 to 8192 bytes measured; 4096 was best at every width).
constexpr uint64_t kWeightPrefetch = 4096;

// y[t] = W[row] . x[t] for NT tokens over one whole row. Rows are read one at a time, start to
// end: a single sequential stream is what the hardware prefetchers follow best (interleaving
// 4 rows ran decode at half the bandwidth). NA column accumulators per token keep at least
// four FMA chains in flight, and make each step cover at least one 64-byte line of the row.
template <uint32_t DT, int NT>
inline void Row(const uint8_t* row, uint64_t cols, const float* x, size_t ldx, float* y, size_t ldy, float mul) {
  constexpr int NA = std::max<int>(NT >= 4 ? 1 : 4 / NT, 64 / (16 * uint64_t{coda_dtype_size(DT)}));
  constexpr uint64_t kStepBytes = 16 * NA * uint64_t{coda_dtype_size(DT)};
  __m512 acc[NA][NT];
  for (auto& a : acc)
    for (auto& v : a) v = _mm512_setzero_ps();
  uint64_t c = 0;
  for (; c + 16 * NA <= cols; c += 16 * NA) {
    for (uint64_t b = 0; b < kStepBytes; b += 64)
      _mm_prefetch(reinterpret_cast<const char*>(row + c * uint64_t{coda_dtype_size(DT)} + b + kWeightPrefetch), _MM_HINT_T0);
    for (int a = 0; a < NA; ++a) {
      const __m512 wv = LoadDot16<DT>(row, c + 16 * a);
      for (int t = 0; t < NT; ++t) acc[a][t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * ldx + c + 16 * a), acc[a][t]);
    }
  }
  for (; c < cols; c += 16) {
    const __mmask16 m = TailMask(cols - c);
    const __m512 wv = LoadDot16<DT>(row, c, m);
    for (int t = 0; t < NT; ++t) acc[0][t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + t * ldx + c), acc[0][t]);
  }
  for (int t = 0; t < NT; ++t) {
    __m512 sum = acc[0][t];
    for (int a = 1; a < NA; ++a) sum = _mm512_add_ps(sum, acc[a][t]);
    y[t * ldy] = _mm512_reduce_add_ps(sum) * mul;
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

// Calls f(c, mask, scale) for each 16-column chunk of a row, with the row's block scale (FP8)
// or 1.
template <uint32_t DT, typename F>
inline void ForChunks(const Weight& w, uint64_t r, F&& f) {
  const uint64_t step = DT == CODA_DTYPE_FP8_E4M3 ? w.block : w.cols;
  for (uint64_t b0 = 0; b0 < w.cols; b0 += step) {
    const uint64_t b1 = std::min<uint64_t>(w.cols, b0 + step);
    const float s = DT == CODA_DTYPE_FP8_E4M3 ? WeightScale(w, r, b0) : 1.0f;
    for (uint64_t c = b0; c < b1; c += 16) f(c, TailMask(b1 - c), s);
  }
}

template <uint32_t DT>
void DequantRowsT(const Weight& w, uint64_t r0, uint64_t r1, float* out) {
  for (uint64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.cols * uint64_t{coda_dtype_size(DT)};
    float* o = out + (r - r0) * w.cols;
    ForChunks<DT>(w, r, [&](uint64_t c, __mmask16 m, float s) {
      _mm512_mask_storeu_ps(o + c, m, _mm512_mul_ps(Load16<DT>(row, c, m), _mm512_set1_ps(s)));
    });
  }
}

void DequantRows(const Weight& w, uint64_t r0, uint64_t r1, float* out) {
  if (!WithWeightDType(w.dtype, [&](auto dt) { DequantRowsT<dt()>(w, r0, r1, out); }))
    ReferenceKernels().dequant_rows(w, r0, r1, out);
}

// acc[i] += sum over rows r of x[r - r0] * W[r][c0 + 16i ...] for one tile of nc <= 256 columns.
template <uint32_t DT, bool kFull>
inline void MatvecTile(const Weight& w, uint64_t r0, uint64_t r1, const float* x, uint64_t c0, uint64_t nc, __m512* acc) {
  constexpr uint64_t kChunks = 16;
  for (uint64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + (r * w.cols + c0) * uint64_t{coda_dtype_size(DT)};
    const float xr = x[r - r0] * (DT == CODA_DTYPE_FP8_E4M3 ? kTwo60 : 1.0f);
    __m512 xv = _mm512_set1_ps(DT == CODA_DTYPE_FP8_E4M3 ? xr * WeightScale(w, r, c0) : xr);
    uint64_t next_block = (c0 / w.block + 1) * w.block;  // a compare per chunk, not a division
#pragma GCC unroll 16
    for (uint64_t i = 0; i < kChunks; ++i) {
      const uint64_t c = 16 * i;
      if (!kFull && c >= nc) break;
      if constexpr (DT == CODA_DTYPE_FP8_E4M3)
        if (c0 + c == next_block) {
          xv = _mm512_set1_ps(xr * WeightScale(w, r, c0 + c));
          next_block += w.block;
        }
      const __m512 wv = kFull || c + 16 <= nc ? LoadDot16<DT>(row, c) : LoadDot16<DT>(row, c, TailMask(nc - c));
      acc[i] = _mm512_fmadd_ps(wv, xv, acc[i]);
    }
  }
}

// y += x^T W[r0:r1]: 256 columns at a time stay in 16 registers while the rows stream by
// (loading and storing y per 16 weights made W_UK's absorption 6x slower than its bytes).
// FP8 stays raw as in the mat-mul, with x[r] pre-scaled by its block scale and 2^60.
template <uint32_t DT>
void MatvecTT(const Weight& w, uint64_t r0, uint64_t r1, const float* x, float* y) {
  constexpr uint64_t kTile = 256;
  for (uint64_t c0 = 0; c0 < w.cols; c0 += kTile) {
    const uint64_t nc = std::min<uint64_t>(kTile, w.cols - c0);
    __m512 acc[kTile / 16];
    for (auto& a : acc) a = _mm512_setzero_ps();
    if (nc == kTile) MatvecTile<DT, true>(w, r0, r1, x, c0, nc, acc);
    else MatvecTile<DT, false>(w, r0, r1, x, c0, nc, acc);
    const __m512 mul = _mm512_set1_ps(DT == CODA_DTYPE_FP8_E4M3 ? kTwo60 : 1.0f);
    for (uint64_t c = 0; c < nc; c += 16) {
      const __mmask16 m = TailMask(nc - c);
      _mm512_mask_storeu_ps(y + c0 + c, m, _mm512_fmadd_ps(acc[c / 16], mul, _mm512_maskz_loadu_ps(m, y + c0 + c)));
    }
  }
}

void MatvecT(const Weight& w, uint64_t r0, uint64_t r1, const float* x, float* y) {
  // FP8 block scales change at 16-column chunk boundaries only if the block is a multiple of 16.
  if (w.dtype == CODA_DTYPE_FP8_E4M3 && w.block % 16 != 0) return ReferenceKernels().matvec_t(w, r0, r1, x, y);
  if (!WithWeightDType(w.dtype, [&](auto dt) { MatvecTT<dt()>(w, r0, r1, x, y); }))
    ReferenceKernels().matvec_t(w, r0, r1, x, y);
}

float Dot(const float* a, const float* b, size_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

void Axpy(float a, const float* x, float* y, size_t n) {
  const __m512 av = _mm512_set1_ps(a);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

float DotBf16(const float* a, const uint16_t* b, size_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), Bf16x16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i))), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16),
                           Bf16x16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i + 16))), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), Bf16x16(_mm256_maskz_loadu_epi16(m, b + i)), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

void AxpyBf16(float a, const uint16_t* x, float* y, size_t n) {
  const __m512 av = _mm512_set1_ps(a);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, Bf16x16(_mm256_maskz_loadu_epi16(m, x + i)), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

// 16 cache values at index i of row p, as F32.
inline __m512 CacheLoad(const MlaAttendArgs& a, size_t p, size_t i, __mmask16 m) {
  if (a.bf16) return Bf16x16(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(a.cache) + p * a.row + i));
  return _mm512_maskz_loadu_ps(m, static_cast<const float*>(a.cache) + p * a.row + i);
}


// G heads at once: each cache chunk is loaded and converted once for all of them.
template <int G>
void MlaAttendGroup(const MlaAttendArgs& a, size_t h0) {
  const size_t len = a.end - a.begin;
  float mx[G];
  for (int g = 0; g < G; ++g) mx[g] = -INFINITY;
  for (size_t p = 0; p < len; ++p) {
    __m512 acc[G];
    for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_ps();
    for (size_t i = 0; i < a.c; i += 16) {
      const __mmask16 m = TailMask(a.c - i);
      const __m512 v = CacheLoad(a, a.begin + p, i, m);
      for (int g = 0; g < G; ++g)
        acc[g] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a.qabs + (h0 + g) * a.c + i), v, acc[g]);
    }
    for (size_t i = 0; i < a.dr; i += 16) {
      const __mmask16 m = TailMask(a.dr - i);
      const __m512 v = CacheLoad(a, a.begin + p, a.c + i, m);
      for (int g = 0; g < G; ++g)
        acc[g] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a.qpe + (h0 + g) * a.qpe_stride + i), v, acc[g]);
    }
    for (int g = 0; g < G; ++g) {
      const float sc = _mm512_reduce_add_ps(acc[g]) * a.scale;
      a.scores[(h0 + g) * len + p] = sc;
      mx[g] = std::max(mx[g], sc);
    }
  }
  // Softmax weights, normalized in place.
  for (int g = 0; g < G; ++g) {
    float* s = a.scores + (h0 + g) * len;
    const __m512 mv = _mm512_set1_ps(mx[g]);
    __m512 sum = _mm512_setzero_ps();
    for (size_t p = 0; p < len; p += 16) {
      const __mmask16 m = TailMask(len - p);
      const __m512 e = _mm512_maskz_mov_ps(m, Exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + p), mv)));
      _mm512_mask_storeu_ps(s + p, m, e);
      sum = _mm512_add_ps(sum, e);
    }
    const float total = _mm512_reduce_add_ps(sum);
    if (a.lse) a.lse[h0 + g] = mx[g] + std::log(total);
    const __m512 inv = _mm512_set1_ps(1.0f / total);
    for (size_t p = 0; p < len; p += 16) {
      const __mmask16 m = TailMask(len - p);
      _mm512_mask_storeu_ps(s + p, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + p), inv));
    }
  }
  // olat[g] = sum_p w[g][p] * lat[p]. Positions go in blocks that stay in L2; within a block,
  // four 16-wide chunks of the latent at a time, every head's partial sums in registers.
  constexpr size_t kRowsPerBlock = 64;
  for (size_t pb = 0; pb < len; pb += kRowsPerBlock) {
    const size_t pe = std::min(len, pb + kRowsPerBlock);
    for (size_t i0 = 0; i0 < a.c; i0 += 64) {
      __mmask16 m[4];
      for (int k = 0; k < 4; ++k) m[k] = i0 + 16 * k < a.c ? TailMask(a.c - i0 - 16 * k) : 0;
      __m512 acc[G][4];
      for (int g = 0; g < G; ++g)
        for (int k = 0; k < 4; ++k)
          acc[g][k] = pb == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m[k], a.olat + (h0 + g) * a.c + i0 + 16 * k);
      for (size_t p = pb; p < pe; ++p) {
        __m512 v[4];
        for (int k = 0; k < 4; ++k) v[k] = CacheLoad(a, a.begin + p, i0 + 16 * k, m[k]);
        for (int g = 0; g < G; ++g) {
          const __m512 w = _mm512_set1_ps(a.scores[(h0 + g) * len + p]);
          for (int k = 0; k < 4; ++k) acc[g][k] = _mm512_fmadd_ps(w, v[k], acc[g][k]);
        }
      }
      for (int g = 0; g < G; ++g)
        for (int k = 0; k < 4; ++k)
          if (m[k]) _mm512_mask_storeu_ps(a.olat + (h0 + g) * a.c + i0 + 16 * k, m[k], acc[g][k]);
    }
  }
}

void MlaAttend(const MlaAttendArgs& a) {
  size_t h = 0;
  for (; h + 4 <= a.nh; h += 4) MlaAttendGroup<4>(a, h);
  for (; h < a.nh; ++h) MlaAttendGroup<1>(a, h);
}

// Exp16 to within 2e-7 relative; the clamp keeps e^-x finite (silu of x < -88 is -0 either way).
void SiluMul(float* g, const float* u, size_t n) {
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    const __m512 x = _mm512_maskz_loadu_ps(m, g + i);
    const __m512 e = Exp16(_mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), x), _mm512_set1_ps(88.0f)));
    const __m512 s = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
  }
}

// Exp16 to within 2e-7 relative; inputs are <= 0 once the maximum is subtracted.
void Softmax(float* x, size_t n) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (size_t i = 0; i < n; i += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, TailMask(n - i), x + i));
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 k = TailMask(n - i);
    const __m512 e = Exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), m));
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
    _mm512_mask_storeu_ps(x + i, k, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 k = TailMask(n - i);
    _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), inv));
  }
}

const Kernels kAvx512 = {"avx512", MatmulRows, DequantRows, MatvecT, Dot, Axpy, DotBf16, AxpyBf16, MlaAttend, SiluMul,
                         Softmax};

}  // namespace

const Kernels* Avx512Kernels() { return &kAvx512; }

}  // namespace coda::cpu
