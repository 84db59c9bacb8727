// Plumbing shared by the C++ backends (cpu, vulkan, cuda): tensor sizes, error text into the
// caller's buffer, buffer range checks. Header-only and internal to each library: not part of
// the ABI. immediate_events.h adds the events of a backend whose every call has finished when
// it returns.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <string>
#include <vector>

#include "coda_backend.h"

namespace coda::backend_util {

inline uint64_t Elements(const coda_tensor& t) {
  uint64_t n = 1;
  for (uint32_t d = 0; d < t.ndim && d < CODA_MAX_DIMS; ++d) n *= t.shape[d];
  return n;
}

inline uint64_t TensorBytes(const coda_tensor& t) { return Elements(t) * coda_dtype_size(t.dtype); }

// The host puts the backend's name (and the op) in front of the message.
inline void CopyError(const std::string& m, char* error, size_t size) {
  if (error && size) std::snprintf(error, size, "%s", m.c_str());
}

// Why a GPU backend cannot route with these hyper-parameters (its kernel marks the kept groups
// in a bit mask of max_groups bits), or empty.
inline std::string RoutingUnsupported(const coda_hparams& hp, uint32_t max_groups) {
  const uint32_t G = std::max(1u, hp.n_group);
  if (G > max_groups || hp.n_routed_experts % G || hp.topk_group > G || hp.n_experts_per_tok > hp.n_routed_experts ||
      hp.n_experts_per_tok == 0)
    return "unsupported routing configuration";
  return "";
}

// The last RoPE cos/sin table and what it was computed for.
struct RopeCache {
  uint32_t start = 0, n = 0;
  std::vector<float> freq, cs;
};

// cos and sin per token and rotary pair, in double precision as the CPU backend computes them.
// Every layer of a forward pass asks for the same table: it is recomputed only when the
// positions or the frequencies (compared by value) change.
inline const std::vector<float>& RopeTable(RopeCache& cache, const coda_hparams& hp, uint32_t start, uint32_t n) {
  const uint32_t half = hp.qk_rope_head_dim / 2;
  const std::vector<float> freq(hp.rope_inv_freq, hp.rope_inv_freq + half);
  if (cache.start == start && cache.n == n && cache.freq == freq && !cache.cs.empty()) return cache.cs;
  cache.start = start;
  cache.n = n;
  cache.freq = freq;
  cache.cs.resize(static_cast<size_t>(n) * half * 2);
  for (uint32_t t = 0; t < n; ++t)
    for (uint32_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(start + t) * hp.rope_inv_freq[i];
      cache.cs[(static_cast<size_t>(t) * half + i) * 2] = static_cast<float>(std::cos(a));
      cache.cs[(static_cast<size_t>(t) * half + i) * 2 + 1] = static_cast<float>(std::sin(a));
    }
  return cache.cs;
}

// An op from an older host may be shorter; the fields it lacks read as zero.
inline bool ReadOp(const coda_op* src, coda_op* op) {
  if (!src || src->struct_size < offsetof(coda_op, prepared)) return false;
  std::memset(op, 0, sizeof *op);
  std::memcpy(op, src, std::min<size_t>(src->struct_size, sizeof *op));
  return true;
}

// True when [offset, offset + size) lies inside the buffer (any type with a `size` member);
// otherwise the error says where.
template <typename Buffer>
bool InRange(const Buffer* b, uint64_t offset, uint64_t size, char* error, size_t error_size) {
  if (b && offset <= b->size && size <= b->size - offset) return true;
  CopyError("range of " + std::to_string(size) + " bytes at offset " + std::to_string(offset) +
                (b ? " lies outside a buffer of " + std::to_string(b->size) + " bytes" : " of a NULL buffer"),
            error, error_size);
  return false;
}

}  // namespace coda::backend_util
