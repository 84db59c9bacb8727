// Overflow-checked size arithmetic for everything that comes from a file.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

namespace coda {

inline std::optional<uint64_t> CheckedAdd(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

inline std::optional<uint64_t> CheckedMul(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// Product of the dimensions; nullopt on overflow. An empty shape is a scalar (1 element).
inline std::optional<uint64_t> CheckedElementCount(std::span<const uint64_t> shape) {
  uint64_t n = 1;
  for (uint64_t d : shape) {
    auto m = CheckedMul(n, d);
    if (!m) return std::nullopt;
    n = *m;
  }
  return n;
}

// Rounds v up to a multiple of align (a power of two); nullopt on overflow.
inline std::optional<uint64_t> CheckedAlignUp(uint64_t v, uint64_t align) {
  auto s = CheckedAdd(v, align - 1);
  if (!s) return std::nullopt;
  return *s & ~(align - 1);
}

inline uint64_t CeilDiv(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

}  // namespace coda
