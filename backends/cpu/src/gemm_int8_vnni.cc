// The int8 products of gemm_int8.h on AVX512-VNNI. Compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512vnni -mavx512vbmi; only called when Int8GemmRuns() said the CPU has them.
//
// A panel is 32 weight rows, rearranged per column block as -128 x (each row's int8 sum over
// the block: the correction for the activations' +128), then the weights as [k / 4][32][4]
// bytes, so one 64-byte load gives 16 rows x 4 columns for VPDPBUSD against 4 broadcast
// activation bytes. A tile of 6 tokens x 32 rows keeps 12 int32 sums for the block and 12 F32
// sums across blocks in registers (kInt8TileRows).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "gemm_int8.h"

namespace coda::cpu {

bool Int8GemmVnniBuilt() { return true; }

namespace {

constexpr size_t kPanelRows = kInt8PanelRows;

size_t BlockBytes(size_t block) { return 128 + block * kPanelRows; }

inline __mmask16 Mask16(size_t n) { return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1); }

struct Lut {
  __m512i lo, hi;  // Int8OfE4m3 of codes 0..63 and 64..127
};

Lut MakeLut() {
  alignas(64) int8_t t[128];
  for (int c = 0; c < 128; ++c) t[c] = Int8OfE4m3(static_cast<uint8_t>(c));
  return {_mm512_load_si512(t), _mm512_load_si512(t + 64)};
}

// 64 E4M3 codes to int8: the magnitude from the table (VPERMI2B reads the low 7 bits of each
// index), negated where the sign bit is set.
inline __m512i ToInt8(__m512i codes, const Lut& lut) {
  const __m512i mag = _mm512_permutex2var_epi8(lut.lo, codes, lut.hi);
  return _mm512_mask_sub_epi8(mag, _mm512_movepi8_mask(codes), _mm512_setzero_si512(), mag);
}

// acc += 4-byte dot products of unsigned x and signed w. GCC 12 copies the accumulator before
// each _mm512_dpbusd_epi32 in the tile loop (a move per multiply, measured 40% of the loop's
// samples); written in place, the loop is loads, broadcasts and multiplies only.
inline void Dpbusd(__m512i& acc, __m512i x, __m512i w) { asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w)); }

// Rearranges weight rows [r0, r0 + rows), rows <= 32, into `panel`; m0, m1 select the rows
// among the first and last 16.
void PackPanel(const Weight& w, uint64_t r0, size_t rows, __mmask16 m0, __mmask16 m1, const Lut& lut, uint8_t* panel) {
  const size_t K = w.cols, L = w.block, blocks = (K + L - 1) / L;
  const uint8_t* base = w.data + r0 * K;
  const __m512i idx0 = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(static_cast<int>(K)));
  const __m512i idx1 = _mm512_add_epi32(idx0, _mm512_set1_epi32(static_cast<int>(16 * K)));
  const __m512i ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
  for (size_t b = 0; b < blocks; ++b) {
    uint8_t* blk = panel + b * BlockBytes(L);
    uint8_t* d = blk + 128;
    const size_t c0 = b * L, len = std::min(L, K - c0), full = len / 4;
    __m512i s0 = zero, s1 = zero;
    for (size_t k4 = 0; k4 < full; ++k4) {
      const uint8_t* p = base + c0 + 4 * k4;
      const __m512i g0 = ToInt8(_mm512_mask_i32gather_epi32(zero, m0, idx0, p, 1), lut);
      const __m512i g1 = ToInt8(_mm512_mask_i32gather_epi32(zero, m1, idx1, p, 1), lut);
      _mm512_storeu_si512(d + 128 * k4, g0);
      _mm512_storeu_si512(d + 128 * k4 + 64, g1);
      s0 = _mm512_dpbusd_epi32(s0, ones, g0);
      s1 = _mm512_dpbusd_epi32(s1, ones, g1);
    }
    if (len % 4) {  // the last partial group of 4 columns, zero-padded (a gather would read past the row)
      uint8_t* q = d + 128 * full;
      std::memset(q, 0, 128);
      for (size_t r = 0; r < rows; ++r)
        for (size_t j = 0; j < len % 4; ++j)
          q[4 * r + j] = static_cast<uint8_t>(Int8OfE4m3(base[r * K + c0 + 4 * full + j]));
      s0 = _mm512_dpbusd_epi32(s0, ones, _mm512_loadu_si512(q));
      s1 = _mm512_dpbusd_epi32(s1, ones, _mm512_loadu_si512(q + 64));
    }
    _mm512_storeu_si512(blk, _mm512_sub_epi32(zero, _mm512_slli_epi32(s0, 7)));
    _mm512_storeu_si512(blk + 64, _mm512_sub_epi32(zero, _mm512_slli_epi32(s1, 7)));
  }
}

// y[t * ldy + j] for tokens t < `tokens` (at most 6) and the panel's rows j < 32 (masks m0,
// m1). The activations hold whole tiles of 6 rows (Int8Prepare pads them). The 24 sums are
// named, not an array: GCC keeps an array of vectors on the stack, a load and store around
// every multiply.
void Tile(const Int8Activations& a, size_t t0, size_t tokens, const uint8_t* panel, const float* wscale, float* y,
          size_t ldy, __mmask16 m0, __mmask16 m1) {
  const size_t L = a.block, K = a.cols, st = a.stride;
#define CODA_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define CODA_F(t) __m512 f##t##0 = _mm512_setzero_ps(), f##t##1 = _mm512_setzero_ps();
  CODA_ROWS(CODA_F)
  const uint8_t* arow = a.q.data() + t0 * st;
  const float* sa = a.scale.data() + t0 * a.blocks;
  for (size_t b = 0; b < a.blocks; ++b) {
    const uint8_t* blk = panel + b * BlockBytes(L);
    const __m512i c0 = _mm512_loadu_si512(blk), c1 = _mm512_loadu_si512(blk + 64);
#define CODA_S(t) __m512i s##t##0 = c0, s##t##1 = c1;
    CODA_ROWS(CODA_S)
    const size_t groups = (std::min(L, K - b * L) + 3) / 4;
    const uint8_t* d = blk + 128;
    const uint8_t* ab = arow + b * L;
    for (size_t k4 = 0; k4 < groups; ++k4, d += 128, ab += 4) {
      const __m512i w0 = _mm512_loadu_si512(d), w1 = _mm512_loadu_si512(d + 64);
#define CODA_MUL(t)                                                          \
  {                                                                          \
    int32_t v;                                                               \
    std::memcpy(&v, ab + (t) * st, 4);                                       \
    const __m512i x = _mm512_set1_epi32(v);                                  \
    Dpbusd(s##t##0, x, w0);                                                  \
    Dpbusd(s##t##1, x, w1);                                                  \
  }
      CODA_ROWS(CODA_MUL)
    }
#define CODA_PROMOTE(t)                                                      \
  {                                                                          \
    const __m512 sc = _mm512_set1_ps(sa[(t) * a.blocks + b] * wscale[b]);   \
    f##t##0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s##t##0), sc, f##t##0);     \
    f##t##1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s##t##1), sc, f##t##1);     \
  }
    CODA_ROWS(CODA_PROMOTE)
  }
#define CODA_STORE(t)                                                        \
  if ((t) < tokens) {                                                        \
    _mm512_mask_storeu_ps(y + (t) * ldy, m0, f##t##0);                       \
    _mm512_mask_storeu_ps(y + (t) * ldy + 16, m1, f##t##1);                  \
  }
  CODA_ROWS(CODA_STORE)
#undef CODA_ROWS
#undef CODA_F
#undef CODA_S
#undef CODA_MUL
#undef CODA_PROMOTE
#undef CODA_STORE
}

}  // namespace

void Int8QuantizeRows(const float* x, size_t ldx, Int8Activations& a, size_t t0, size_t t1) {
  const size_t L = a.block;
  for (size_t t = t0; t < t1; ++t) {
    const float* xr = x + t * ldx;
    uint8_t* q = a.q.data() + t * a.stride;
    for (size_t b = 0; b < a.blocks; ++b) {
      const size_t c0 = b * L, len = std::min(L, a.cols - c0);
      __m512 mx = _mm512_setzero_ps();
      for (size_t c = 0; c < len; c += 16)
        mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_maskz_loadu_ps(Mask16(len - c), xr + c0 + c)));
      const float amax = _mm512_reduce_max_ps(mx);
      const float inv = amax > 0 ? 127.0f / amax : 0.0f;
      a.scale[t * a.blocks + b] = amax / 127.0f;
      const __m512 vi = _mm512_set1_ps(inv);
      const __m512i bias = _mm512_set1_epi32(128);
      for (size_t c = 0; c < len; c += 16) {
        const __mmask16 m = Mask16(len - c);
        const __m512i v = _mm512_add_epi32(
            _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + c0 + c), vi)), bias);
        _mm_mask_storeu_epi8(q + c0 + c, m, _mm512_cvtepi32_epi8(v));
      }
    }
    for (size_t c = a.cols; c < a.stride; ++c) q[c] = 128;  // zero; the panel's padding is zero too
  }
}

void Int8Gemm(const Weight& w, const Int8Activations& a, float* y, size_t ldy, uint64_t r0, uint64_t r1,
              std::vector<uint8_t>& panel) {
  static const Lut lut = MakeLut();
  const size_t L = w.block, blocks = a.blocks;
  panel.resize((blocks - 1) * BlockBytes(L) + 128 + ((a.cols - (blocks - 1) * L + 3) / 4) * 4 * kPanelRows);
  thread_local std::vector<float> wscale;
  wscale.resize(blocks);
  for (uint64_t p = r0; p < r1; p += kPanelRows) {
    const size_t rows = static_cast<size_t>(std::min<uint64_t>(kPanelRows, r1 - p));
    const __mmask16 m0 = Mask16(rows), m1 = Mask16(rows > 16 ? rows - 16 : 0);
    PackPanel(w, p, rows, m0, m1, lut, panel.data());
    const float* srow = w.scales + (p / L) * w.scale_cols;
    for (size_t b = 0; b < blocks; ++b) wscale[b] = srow[b] * kInt8WeightScale;
    for (size_t t = 0; t < a.n; t += kInt8TileRows)
      Tile(a, t, std::min(kInt8TileRows, a.n - t), panel.data(), wscale.data(), y + t * ldy + p, ldy, m0, m1);
  }
}

}  // namespace coda::cpu
