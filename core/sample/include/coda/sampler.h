// Turning logits into the next token: greedy, or temperature with top-k, top-p and min-p
// filtering and a repetition penalty, from a seeded generator (same seed, same choices).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "coda/status.h"

namespace coda {

struct SamplerOptions {
  float temperature = 0.0f;  // <= 0: greedy (argmax)
  uint32_t top_k = 0;        // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off; keeps tokens with p >= min_p * p_max
  float repetition_penalty = 1.0f;  // 1: off; > 1 discourages tokens in `recent`
  uint64_t seed = 0;
};

class Sampler {
 public:
  static Result<Sampler> Create(const SamplerOptions& options);

  // Picks a token from `logits` (one row of vocabulary size); `recent` are the tokens the
  // repetition penalty applies to.
  int32_t Sample(std::span<const float> logits, std::span<const int32_t> recent = {});
  const SamplerOptions& options() const { return options_; }

 private:
  explicit Sampler(const SamplerOptions& o) : options_(o), rng_(o.seed) {}
  SamplerOptions options_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<int32_t> idx_;
};

}  // namespace coda
