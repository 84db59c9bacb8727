// Attention over a BF16 latent cache with AVX512-BF16 dot products (vdpbf16ps: 32 BF16
// products per instruction, twice the F32 FMA rate, and the cache is never widened). q and the
// softmax weights are rounded to BF16, an error of the size of the cache's own rounding.
// Compiled with -mavx512bf16 on top of the AVX-512 flags; selected only when the CPU reports
// avx512_bf16. Everything else (F32 caches included) is the AVX-512 build's.
#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "exp_avx512.h"
#include "kernels.h"

namespace coda::cpu {
namespace {

inline __mmask32 Mask32(size_t begin, size_t end) {
  if (begin >= end) return 0;
  return end - begin >= 32 ? 0xffffffffu : (1u << (end - begin)) - 1;
}
inline __mmask16 Mask16(size_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << remaining) - 1);
}
inline __m512 Dp(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, std::bit_cast<__m512bh>(a), std::bit_cast<__m512bh>(b));
}

// Lane j of the result is the sum of v[j]'s lanes (a transposing tree: 45 ops for 16 sums).
inline __m512 Reduce16(const __m512 (&v)[16]) {
  __m512 a[8], b[4];
  for (int k = 0; k < 8; ++k)  // 128-bit lane L: partials of v[2k] in 0, 2 and of v[2k+1] in 1, 3
    a[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
  for (int k = 0; k < 4; ++k) {  // lane L: partials of v[4k .. 4k+3]
    const __m512d x = _mm512_castps_pd(a[2 * k]), y = _mm512_castps_pd(a[2 * k + 1]);
    b[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  // Sum the four 128-bit lanes: [L0 L2 | L0 L2] + [L1 L3 | L1 L3], twice.
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], 0x88), _mm512_shuffle_f32x4(b[0], b[1], 0xDD));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], 0x88), _mm512_shuffle_f32x4(b[2], b[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
}


constexpr size_t kHeads = 4;        // heads per register block
constexpr size_t kBlockRows = 128;  // cache rows per block: reused from L2 by every head group

// Scores of heads [h0, h0 + 4) against rows [p, p + 4) of a block of n rows: a 4 x 4 block of
// dot products over the whole row, into sc[h][p] (row stride kBlockRows), with the heads' maxima.
// Heads and rows past the ends are clamped (computed, not stored).
inline void ScoreBlock(const MlaAttendArgs& a, const uint16_t* qb, size_t kq, const uint16_t* rows, size_t n, size_t h0,
                       size_t p, float* sc, float* mx) {
  const uint16_t* q[kHeads];
  const uint16_t* r[4];
  for (size_t g = 0; g < kHeads; ++g) q[g] = qb + std::min(h0 + g, a.nh - 1) * kq;
  for (size_t j = 0; j < 4; ++j) r[j] = rows + std::min(p + j, n - 1) * a.row;
  __m512 acc[16];
  for (auto& v : acc) v = _mm512_setzero_ps();
  for (size_t k = 0; k < a.row; k += 32) {
    const __mmask32 m = Mask32(k, a.row);
    __m512i c[4];
    for (size_t j = 0; j < 4; ++j) c[j] = _mm512_maskz_loadu_epi16(m, r[j] + k);
    for (size_t g = 0; g < kHeads; ++g) {
      const __m512i qv = _mm512_loadu_si512(q[g] + k);
      for (size_t j = 0; j < 4; ++j) acc[g * 4 + j] = Dp(acc[g * 4 + j], qv, c[j]);
    }
  }
  alignas(64) float s[16];
  _mm512_store_ps(s, _mm512_mul_ps(Reduce16(acc), _mm512_set1_ps(a.scale)));
  const size_t nj = std::min<size_t>(4, n - p), ng = std::min(kHeads, a.nh - h0);
  for (size_t g = 0; g < ng; ++g)
    for (size_t j = 0; j < nj; ++j) {
      sc[(h0 + g) * kBlockRows + p + j] = s[g * 4 + j];
      mx[h0 + g] = std::max(mx[h0 + g], s[g * 4 + j]);
    }
}

// acc[g][*] += w[g][p] * row0 + w[g][p + 1] * row1 over 64 latent columns from i0: the two rows
// interleaved into BF16 pairs, so lane k of acc[g][2s + t] is column i0 + 32s + 8(k / 4) + 4t + k % 4.
inline void PvPair(const uint16_t* row0, const uint16_t* row1, const __mmask32 (&m)[2], const uint32_t* const (&w)[kHeads],
                   size_t pair, __m512 (&acc)[kHeads][4]) {
  __m512i v[4];
  for (int s = 0; s < 2; ++s) {
    const __m512i x = _mm512_maskz_loadu_epi16(m[s], row0 + 32 * s), y = _mm512_maskz_loadu_epi16(m[s], row1 + 32 * s);
    v[2 * s] = _mm512_unpacklo_epi16(x, y);
    v[2 * s + 1] = _mm512_unpackhi_epi16(x, y);
  }
  for (size_t g = 0; g < kHeads; ++g) {
    const __m512i wv = _mm512_set1_epi32(static_cast<int>(w[g][pair]));
    for (int k = 0; k < 4; ++k) acc[g][k] = Dp(acc[g][k], wv, v[k]);
  }
}

// One pass over the cache in blocks of rows (online softmax): a block's scores for every head,
// then its weighted latent sum while the block is still in L2; the partial sums are rescaled
// when a head's running maximum grows.
void MlaAttendBf16(const MlaAttendArgs& a) {
  const size_t len = a.end - a.begin, nh = a.nh, c = a.c;
  const uint16_t* base = static_cast<const uint16_t*>(a.cache) + a.begin * a.row;
  // q as BF16 rows [qabs | qpe | 0 ...] of kq values; a block's weights as BF16 pairs.
  const size_t kq = (a.row + 31) / 32 * 32, lw = kBlockRows + 16, cp = (c + 63) / 64 * 64;
  thread_local std::vector<uint16_t> qb, wb, zeros;
  thread_local std::vector<float> sc, accp, mx, bmx, sum;
  qb.assign(nh * kq, 0);
  wb.assign(nh * lw, 0);
  zeros.assign(cp, 0);
  sc.resize(nh * kBlockRows);
  accp.assign(nh * cp, 0.0f);
  mx.assign(nh, -INFINITY);
  sum.assign(nh, 0.0f);
  for (size_t h = 0; h < nh; ++h) {
    for (size_t i = 0; i < c; ++i) qb[h * kq + i] = coda_f32_to_bf16(a.qabs[h * c + i]);
    for (size_t i = 0; i < a.dr; ++i) qb[h * kq + c + i] = coda_f32_to_bf16(a.qpe[h * a.qpe_stride + i]);
  }
  for (size_t pb = 0; pb < len; pb += kBlockRows) {
    const size_t n = std::min(len - pb, kBlockRows);
    const uint16_t* rows = base + pb * a.row;
    bmx.assign(nh, -INFINITY);
    // The next block is prefetched while this one is worked on, a slice per step of both the
    // scores and the weighted sum (one core alone cannot keep enough misses in flight from the
    // loops' own loads). Into L1, not L2 only: 4-8% faster over a cache in DRAM, and spreading
    // it over both phases 2-4% more, in interleaved same-process runs.
    const char* next = reinterpret_cast<const char*>(rows + n * a.row);
    const size_t next_bytes = std::min(len - pb - n, kBlockRows) * a.row * 2;
    const size_t steps = ((n + 3) / 4 + (c + 63) / 64) * ((nh + kHeads - 1) / kHeads);  // score calls + sum steps
    const size_t slice = (next_bytes / 64 + steps - 1) / steps * 64;
    size_t pf = 0;
    auto prefetch_slice = [&] {
      for (const size_t e = std::min(next_bytes, pf + slice); pf < e; pf += 64) _mm_prefetch(next + pf, _MM_HINT_T0);
    };
    for (size_t h0 = 0; h0 < nh; h0 += kHeads)
      for (size_t p = 0; p < n; p += 4) {
        prefetch_slice();
        ScoreBlock(a, qb.data(), kq, rows, n, h0, p, sc.data(), bmx.data());
      }
    // exp(s - running max), summed in F32 and rounded to BF16 pairs (zero past n).
    for (size_t h = 0; h < nh; ++h) {
      if (bmx[h] > mx[h]) {
        const float f = std::exp(mx[h] - bmx[h]);  // 0 on the first block
        for (size_t i = 0; i < cp; ++i) accp[h * cp + i] *= f;
        sum[h] *= f;
        mx[h] = bmx[h];
      }
      const float* s = sc.data() + h * kBlockRows;
      uint16_t* w = wb.data() + h * lw;
      const __m512 mv = _mm512_set1_ps(mx[h]);
      __m512 acc = _mm512_setzero_ps();
      for (size_t p = 0; p < n; p += 16) {
        const __mmask16 m = Mask16(n - p);
        const __m512 e = _mm512_maskz_mov_ps(m, Exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + p), mv)));
        acc = _mm512_add_ps(acc, e);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + p), std::bit_cast<__m256i>(_mm512_cvtneps_pbh(e)));
      }
      sum[h] += _mm512_reduce_add_ps(acc);
    }
    // accp += sum_p w[p] lat[p], two rows per vdpbf16ps, kept in the interleaved column order.
    for (size_t i0 = 0; i0 < c; i0 += 64) {
      const __mmask32 m[2] = {Mask32(i0, c), Mask32(i0 + 32, c)};
      for (size_t h0 = 0; h0 < nh; h0 += kHeads) {
        prefetch_slice();
        const uint32_t* w[kHeads];
        __m512 acc[kHeads][4];
        for (size_t g = 0; g < kHeads; ++g) {
          const size_t h = std::min(h0 + g, nh - 1);
          w[g] = reinterpret_cast<const uint32_t*>(wb.data() + h * lw);
          for (int k = 0; k < 4; ++k) acc[g][k] = _mm512_loadu_ps(accp.data() + h * cp + i0 + 16 * k);
        }
        size_t p = 0;
        for (; p + 2 <= n; p += 2) PvPair(rows + p * a.row + i0, rows + (p + 1) * a.row + i0, m, w, p / 2, acc);
        if (p < n) PvPair(rows + p * a.row + i0, zeros.data(), m, w, p / 2, acc);
        for (size_t g = 0; g < std::min(kHeads, nh - h0); ++g)
          for (int k = 0; k < 4; ++k) _mm512_storeu_ps(accp.data() + (h0 + g) * cp + i0 + 16 * k, acc[g][k]);
      }
    }
  }
  // Normalized, back in column order: per 32 columns, lo = acc[2s] and hi = acc[2s + 1] hold
  // 128-bit lanes of 4 columns each: [lo0 hi0 lo1 hi1] and [lo2 hi2 lo3 hi3].
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (size_t h = 0; h < nh; ++h) {
    if (a.lse) a.lse[h] = mx[h] + std::log(sum[h]);
    const __m512 inv = _mm512_set1_ps(1.0f / sum[h]);
    for (size_t i = 0; i < c; i += 32) {
      const __m512 lo = _mm512_loadu_ps(accp.data() + h * cp + i), hi = _mm512_loadu_ps(accp.data() + h * cp + i + 16);
      float* o = a.olat + h * c + i;
      _mm512_mask_storeu_ps(o, Mask16(c - i), _mm512_mul_ps(_mm512_permutex2var_ps(lo, first, hi), inv));
      if (i + 16 < c)
        _mm512_mask_storeu_ps(o + 16, Mask16(c - i - 16), _mm512_mul_ps(_mm512_permutex2var_ps(lo, second, hi), inv));
    }
  }
}

void MlaAttend(const MlaAttendArgs& a) {
  if (a.bf16 && a.end > a.begin) MlaAttendBf16(a);
  else Avx512Kernels()->mla_attend(a);
}

Kernels MakeTable() {
  Kernels k = *Avx512Kernels();
  k.name = "avx512bf16";
  k.mla_attend = MlaAttend;
  return k;
}

}  // namespace

const Kernels* Avx512Bf16Kernels() {
  static const Kernels k = MakeTable();
  return Avx512Kernels() ? &k : nullptr;
}

}  // namespace coda::cpu
