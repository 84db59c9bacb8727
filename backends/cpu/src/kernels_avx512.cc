// AVX-512 kernels (F, BW, VL; F16C for the FP8 decode). Compiled with -mavx512f -mavx512bw
// -mavx512vl -mf16c -mfma; only called when the CPU has them.
#include <immintrin.h>

#include <algorithm>

#include "kernels.h"

namespace coda::cpu {
namespace {

inline __mmask16 TailMask(uint64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << remaining) - 1);
}

// 16 weights from column c of a row, as F32. FP8 comes out 2^-8 times its value: the E4M3 bits
// are placed into an F16 (same mantissa width after a shift, exponent bias 15 instead of 7) and
// converted by hardware; callers fold the 256 into the block scale.
template <uint32_t DT>
inline __m512 Load16(const uint8_t* row, uint64_t c, __mmask16 m) {
  if constexpr (DT == CODA_DTYPE_F32) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + c);
  } else if constexpr (DT == CODA_DTYPE_BF16) {
    const __m256i v = _mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(row) + c);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  } else {
    const __m128i b = _mm_maskz_loadu_epi8(m, row + c);
    const __m256i w = _mm256_cvtepu8_epi16(b);
    const __m256i sign = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8);
    const __m256i em = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x7f)), 7);
    return _mm512_cvtph_ps(_mm256_or_si256(sign, em));
  }
}

template <uint32_t DT>
constexpr uint64_t ElemSize() {
  return DT == CODA_DTYPE_F32 ? 4 : DT == CODA_DTYPE_BF16 ? 2 : 1;
}

// Dot products of one weight row with NT token rows of x.
template <uint32_t DT, int NT>
inline void RowDots(const Weight& w, const float* x, size_t ldx, float* y, size_t ldy, uint64_t r) {
  const uint8_t* row = w.data + r * w.cols * ElemSize<DT>();
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  if constexpr (DT == CODA_DTYPE_FP8_E4M3) {
    const float* srow = w.scales + (r / w.block) * w.scale_cols;
    for (uint64_t b0 = 0, bi = 0; b0 < w.cols; b0 += w.block, ++bi) {
      const uint64_t b1 = std::min<uint64_t>(w.cols, b0 + w.block);
      __m512 part[NT];
      for (int t = 0; t < NT; ++t) part[t] = _mm512_setzero_ps();
      for (uint64_t c = b0; c < b1; c += 16) {
        const __mmask16 m = TailMask(b1 - c);
        const __m512 wv = Load16<DT>(row, c, m);
        for (int t = 0; t < NT; ++t) part[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + t * ldx + c), part[t]);
      }
      const __m512 s = _mm512_set1_ps(srow[bi] * 256.0f);
      for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(part[t], s, acc[t]);
    }
  } else {
    for (uint64_t c = 0; c < w.cols; c += 16) {
      const __mmask16 m = TailMask(w.cols - c);
      const __m512 wv = Load16<DT>(row, c, m);
      for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + t * ldx + c), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[t]);
}

template <uint32_t DT>
void MatmulRowsT(const Weight& w, const float* x, size_t ldx, size_t n, float* y, size_t ldy, uint64_t r0,
                 uint64_t r1) {
  size_t t = 0;
  // Four tokens share each decoded weight vector.
  for (; t + 4 <= n; t += 4)
    for (uint64_t r = r0; r < r1; ++r) RowDots<DT, 4>(w, x + t * ldx, ldx, y + t * ldy, ldy, r);
  for (; t < n; ++t)
    for (uint64_t r = r0; r < r1; ++r) RowDots<DT, 1>(w, x + t * ldx, ldx, y + t * ldy, ldy, r);
}

void MatmulRows(const Weight& w, const float* x, size_t ldx, size_t n, float* y, size_t ldy, uint64_t r0, uint64_t r1) {
  switch (w.dtype) {
    case CODA_DTYPE_F32: return MatmulRowsT<CODA_DTYPE_F32>(w, x, ldx, n, y, ldy, r0, r1);
    case CODA_DTYPE_BF16: return MatmulRowsT<CODA_DTYPE_BF16>(w, x, ldx, n, y, ldy, r0, r1);
    case CODA_DTYPE_FP8_E4M3: return MatmulRowsT<CODA_DTYPE_FP8_E4M3>(w, x, ldx, n, y, ldy, r0, r1);
    default: ReferenceKernels().matmul_rows(w, x, ldx, n, y, ldy, r0, r1);
  }
}

template <uint32_t DT>
void DequantRowsT(const Weight& w, uint64_t r0, uint64_t r1, float* out) {
  for (uint64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.cols * ElemSize<DT>();
    float* o = out + (r - r0) * w.cols;
    if constexpr (DT == CODA_DTYPE_FP8_E4M3) {
      const float* srow = w.scales + (r / w.block) * w.scale_cols;
      for (uint64_t b0 = 0, bi = 0; b0 < w.cols; b0 += w.block, ++bi) {
        const uint64_t b1 = std::min<uint64_t>(w.cols, b0 + w.block);
        const __m512 s = _mm512_set1_ps(srow[bi] * 256.0f);
        for (uint64_t c = b0; c < b1; c += 16) {
          const __mmask16 m = TailMask(b1 - c);
          _mm512_mask_storeu_ps(o + c, m, _mm512_mul_ps(Load16<DT>(row, c, m), s));
        }
      }
    } else {
      for (uint64_t c = 0; c < w.cols; c += 16) {
        const __mmask16 m = TailMask(w.cols - c);
        _mm512_mask_storeu_ps(o + c, m, Load16<DT>(row, c, m));
      }
    }
  }
}

void DequantRows(const Weight& w, uint64_t r0, uint64_t r1, float* out) {
  switch (w.dtype) {
    case CODA_DTYPE_F32: return DequantRowsT<CODA_DTYPE_F32>(w, r0, r1, out);
    case CODA_DTYPE_BF16: return DequantRowsT<CODA_DTYPE_BF16>(w, r0, r1, out);
    case CODA_DTYPE_FP8_E4M3: return DequantRowsT<CODA_DTYPE_FP8_E4M3>(w, r0, r1, out);
    default: ReferenceKernels().dequant_rows(w, r0, r1, out);
  }
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

const Kernels kAvx512 = {"avx512", MatmulRows, DequantRows, Dot, Axpy};

}  // namespace

const Kernels* Avx512Kernels() { return &kAvx512; }

}  // namespace coda::cpu
