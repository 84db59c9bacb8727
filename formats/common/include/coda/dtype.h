// Element types of tensors in checkpoints and in .coda files, and scalar conversions.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include "coda_dtypes.h"

namespace coda {

// The ABI's dtype table (coda_dtypes.h) as a C++ enum: kF32 is CODA_DTYPE_F32, and so on;
// formats/coda ties coda.fbs's DType to the same numbers.
enum class DType : uint8_t {
#define CODA_DTYPE_CPP_(name, number, size, text) k##name = number,
  CODA_DTYPE_TABLE(CODA_DTYPE_CPP_)
#undef CODA_DTYPE_CPP_
};

// Bytes per element.
uint32_t DTypeSize(DType t);
// Lower-case short name ("f32", "bf16", "fp8_e4m3", ...).
std::string_view DTypeName(DType t);
// Parses a safetensors dtype string ("F32", "BF16", "F8_E4M3", ...).
std::optional<DType> DTypeFromSafetensors(std::string_view s);
std::string_view DTypeSafetensorsName(DType t);
bool IsFloat(DType t);

inline float Bf16ToF32(uint16_t v) { return coda_bf16_to_f32(v); }
// Round to nearest even; NaN stays NaN.
inline uint16_t F32ToBf16(float f) { return coda_f32_to_bf16(f); }

float F16ToF32(uint16_t v);
uint16_t F32ToF16(float f);

// E4M3 "fn": the exact value of a code.
inline float Fp8E4M3ToF32(uint8_t v) { return coda_e4m3_to_f32(v); }
// Nearest E4M3 code (round to nearest even, saturating at +-448).
uint8_t F32ToFp8E4M3(float f);

}  // namespace coda
