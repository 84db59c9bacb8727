// Element types of tensors in checkpoints and in .coda files, and scalar conversions.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace coda {

// Numbering matches coda.fbs (DType) so values convert with a cast.
enum class DType : uint8_t {
  kF32 = 0,
  kBF16 = 1,
  kF16 = 2,
  kFP8E4M3 = 3,  // "fn" variant (bias 7, no inf, 0x7F/0xFF NaN, max 448); 128x128 block scales
  kI32 = 4,
  kI64 = 5,
  kU8 = 6,
  kI8 = 7,
};

// Bytes per element.
uint32_t DTypeSize(DType t);
// Lower-case short name ("f32", "bf16", "fp8_e4m3", ...).
std::string_view DTypeName(DType t);
// Parses a safetensors dtype string ("F32", "BF16", "F8_E4M3", ...).
std::optional<DType> DTypeFromSafetensors(std::string_view s);
std::string_view DTypeSafetensorsName(DType t);
bool IsFloat(DType t);

inline float Bf16ToF32(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float F16ToF32(uint16_t v);
uint16_t F32ToF16(float f);

// E4M3 "fn": exact value of every code, from a table.
float Fp8E4M3ToF32(uint8_t v);
// Nearest E4M3 code (round to nearest even, saturating at +-448).
uint8_t F32ToFp8E4M3(float f);

}  // namespace coda
