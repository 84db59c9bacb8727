// The number formats the CUDA kernels convert, for the device and the host alike (the tests
// check them on the host): bit casts, E4M3 and BF16.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace coda::cuda {

// memcpy is a device function too, and compiles to a register move.
template <class To, class From>
__host__ __device__ __forceinline__ To BitCast(From v) {
  static_assert(sizeof(To) == sizeof(From));
  To t;
  memcpy(&t, &v, sizeof t);
  return t;
}
__host__ __device__ __forceinline__ float AsFloat(uint32_t u) { return BitCast<float>(u); }
__host__ __device__ __forceinline__ uint32_t AsBits(float f) { return BitCast<uint32_t>(f); }

// The same values as coda_dtypes.h's decoding, without branches: the code's exponent and
// mantissa bits, placed in an F32's, give the value times 2^-120 (normal codes and, as F32
// subnormals, the subnormal ones), so one multiply by 2^120 restores it exactly; 0x7F and 0xFF
// are NaN.
__host__ __device__ __forceinline__ float E4m3(uint32_t b) {
  const float v = AsFloat(((b & 0x80u) << 24) | ((b & 0x7fu) << 20)) * 0x1p120f;
  return (b & 0x7fu) == 0x7fu ? AsFloat(((b & 0x80u) << 24) | 0x7fc00000u) : v;
}

__host__ __device__ __forceinline__ uint16_t ToBf16(float f) {
  uint32_t u = AsBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// F32 to E4M3, rounding to nearest even and saturating at 448; a is finite.
__host__ __device__ __forceinline__ uint8_t ToE4m3(float a) {
  const uint32_t sign = (AsBits(a) >> 24) & 0x80u;
  a = fminf(fabsf(a), 448.0f);
  if (a < 0.015625f) return static_cast<uint8_t>(sign | static_cast<uint32_t>(rintf(a * 512.0f)));  // subnormal: man * 2^-9
  uint32_t u = AsBits(a);
  u += 0x7ffffu + ((u >> 20) & 1u);  // to nearest even at the third mantissa bit
  const uint32_t code = (((u >> 23) - 120u) << 3) | ((u >> 20) & 7u);
  return static_cast<uint8_t>(sign | (code > 0x7eu ? 0x7eu : code));
}

}  // namespace coda::cuda
