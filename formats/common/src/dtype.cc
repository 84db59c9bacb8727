#include "coda/dtype.h"

#include <cmath>

namespace coda {

uint32_t DTypeSize(DType t) { return coda_dtype_size(static_cast<uint32_t>(t)); }

std::string_view DTypeName(DType t) {
  const char* name = coda_dtype_name(static_cast<uint32_t>(t));
  return name ? name : "?";
}

namespace {
struct StName {
  std::string_view name;
  DType type;
};
constexpr StName kSafetensorsNames[] = {
    {"F32", DType::kF32},     {"BF16", DType::kBF16}, {"F16", DType::kF16},
    {"F8_E4M3", DType::kFP8_E4M3}, {"I32", DType::kI32}, {"I64", DType::kI64},
    {"U8", DType::kU8},       {"I8", DType::kI8},
};
}  // namespace

std::optional<DType> DTypeFromSafetensors(std::string_view s) {
  for (const auto& n : kSafetensorsNames)
    if (n.name == s) return n.type;
  return std::nullopt;
}

std::string_view DTypeSafetensorsName(DType t) {
  for (const auto& n : kSafetensorsNames)
    if (n.type == t) return n.name;
  return "?";
}

bool IsFloat(DType t) {
  return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16 || t == DType::kFP8_E4M3;
}

float F16ToF32(uint16_t v) {
  const uint32_t sign = (v >> 15) & 1, exp = (v >> 10) & 0x1f, man = v & 0x3ff;
  float f;
  if (exp == 0) {
    f = std::ldexp(static_cast<float>(man), -24);
  } else if (exp == 31) {
    f = man ? NAN : INFINITY;
  } else {
    f = std::ldexp(static_cast<float>(man | 0x400), static_cast<int>(exp) - 25);
  }
  return sign ? -f : f;
}

uint16_t F32ToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {  // subnormal or zero in f16
    float a;
    std::memcpy(&a, &abs, 4);
    // Scale to units of 2^-24 and round to nearest even.
    const float scaled = a * 16777216.0f;
    const auto m = static_cast<uint32_t>(std::nearbyint(scaled));
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  return static_cast<uint16_t>(sign | (r >> 13));
}

uint8_t F32ToFp8E4M3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7e;  // saturate (E4M3 "fn" has no infinity)
  if (a < 0.015625f) {                 // below 2^-6: subnormal steps of 2^-9, round half to even
    return static_cast<uint8_t>(sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f)));
  }
  // Normal: keep 3 of F32's 23 mantissa bits, rounding half to even; a carry bumps the exponent.
  uint32_t u;
  std::memcpy(&u, &a, 4);
  u += (1u << 19) - 1 + ((u >> 20) & 1u);
  const int exp = static_cast<int>(u >> 23) - 127 + 7;
  const uint32_t code = (static_cast<uint32_t>(exp) << 3) | ((u >> 20) & 7u);
  return static_cast<uint8_t>(sign | std::min<uint32_t>(code, 0x7e));
}

}  // namespace coda
