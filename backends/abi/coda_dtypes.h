/*
 * coda_dtypes.h — element types: each type's number, name and size, and the exact decoding of
 * the storage formats (BF16, FP8 E4M3 "fn"), so that every backend and the host read weights the
 * same way. Part of the ABI; included by coda_backend.h. Plain C99, header-only.
 *
 * This table is the one definition: the ABI enum (coda_dtype), the model file's DType
 * (formats/schema/coda.fbs, tied to it by static_asserts), the host's coda::DType and every
 * element size derive from it.
 */
#ifndef CODA_DTYPES_H_
#define CODA_DTYPES_H_

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, number, bytes per element, short name) */
#define CODA_DTYPE_TABLE(X)         \
  X(F32, 0, 4, "f32")               \
  X(BF16, 1, 2, "bf16")             \
  X(F16, 2, 2, "f16")               \
  X(FP8_E4M3, 3, 1, "fp8_e4m3")     \
  X(I32, 4, 4, "i32")               \
  X(I64, 5, 8, "i64")               \
  X(U8, 6, 1, "u8")                 \
  X(I8, 7, 1, "i8")

/* FP8_E4M3 is the "fn" variant (bias 7, no infinities, 0x7F/0xFF are NaN, largest finite 448).
   A weight in it carries F32 block scales (coda_tensor.scale). */
typedef enum coda_dtype {
#define CODA_DTYPE_ENUM_(name, number, size, text) CODA_DTYPE_##name = number,
  CODA_DTYPE_TABLE(CODA_DTYPE_ENUM_)
#undef CODA_DTYPE_ENUM_
} coda_dtype;

/* A constant expression in C++ (kernels size their loops with it at compile time). */
#ifdef __cplusplus
#define CODA_DTYPE_CONSTEXPR_ constexpr
#else
#define CODA_DTYPE_CONSTEXPR_
#endif

/* Bytes per element; 0 for a number that is not a dtype. */
static inline CODA_DTYPE_CONSTEXPR_ uint32_t coda_dtype_size(uint32_t dtype) {
  switch (dtype) {
#define CODA_DTYPE_SIZE_(name, number, size, text) case number: return size;
    CODA_DTYPE_TABLE(CODA_DTYPE_SIZE_)
#undef CODA_DTYPE_SIZE_
    default: return 0;
  }
}

/* "f32", "bf16", ...; NULL for a number that is not a dtype. */
static inline const char* coda_dtype_name(uint32_t dtype) {
  switch (dtype) {
#define CODA_DTYPE_NAME_(name, number, size, text) case number: return text;
    CODA_DTYPE_TABLE(CODA_DTYPE_NAME_)
#undef CODA_DTYPE_NAME_
    default: return 0;
  }
}

/* BF16 is the upper half of an F32. */
static inline float coda_bf16_to_f32(uint16_t v) {
  const uint32_t u = (uint32_t)v << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* F32 to BF16, rounding to nearest even; a NaN stays a (quiet) NaN. */
static inline uint16_t coda_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* The exact value of an E4M3 "fn" code: sign, 4 exponent bits (bias 7), 3 mantissa bits;
   exponent 0 is subnormal (man/8 * 2^-6); 0x7F and 0xFF are NaN. */
static inline float coda_e4m3_to_f32(uint8_t v) {
  const uint32_t sign = (uint32_t)(v >> 7) << 31, exp = (v >> 3) & 15u, man = v & 7u;
  uint32_t u;
  float f;
  if (exp == 15 && man == 7) {
    u = sign | 0x7fc00000u;
  } else if (exp == 0) {
    f = (float)man * 0.001953125f; /* man * 2^-9, exact */
    memcpy(&u, &f, 4);
    u |= sign;
  } else {
    u = sign | ((exp + 120u) << 23) | (man << 20); /* rebias 7 -> 127 */
  }
  memcpy(&f, &u, 4);
  return f;
}

#ifdef __cplusplus
}
#endif

#endif /* CODA_DTYPES_H_ */
