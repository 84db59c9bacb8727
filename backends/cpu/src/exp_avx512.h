// exp() on 16 lanes for the AVX-512 kernel builds (included only by files compiled with
// AVX-512 enabled). Internal linkage: each build keeps its own copy, compiled for its flags.
#pragma once

#include <immintrin.h>

namespace coda::cpu {
namespace {

// exp(x) for 16 lanes: x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r (relative
// error below 2e-7), and 2^n built in the exponent bits. Inputs here are <= 0 (max-subtracted).
[[maybe_unused]] inline __m512 Exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
  const __m512 rr = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, rr, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, rr, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, rr, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, rr, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, rr, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, rr, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

}  // namespace
}  // namespace coda::cpu
