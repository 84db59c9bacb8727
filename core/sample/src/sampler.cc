#include "coda/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace coda {

Result<Sampler> Sampler::Create(const SamplerOptions& o) {
  if (!std::isfinite(o.temperature)) return InvalidArgument("temperature must be a finite number");
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) return InvalidArgument("top-p must be in (0, 1]");
  if (!(o.min_p >= 0.0f && o.min_p < 1.0f)) return InvalidArgument("min-p must be in [0, 1)");
  if (!(o.repetition_penalty > 0.0f) || !std::isfinite(o.repetition_penalty))
    return InvalidArgument("repetition penalty must be > 0");
  return Sampler(o);
}

int32_t Sampler::Sample(std::span<const float> logits, std::span<const int32_t> recent) {
  const size_t V = logits.size();
  work_.assign(logits.begin(), logits.end());
  if (options_.repetition_penalty != 1.0f) {
    // As in CTRL / Hugging Face: shrink positive logits, push negative ones further down.
    for (int32_t t : recent) {
      if (t < 0 || static_cast<size_t>(t) >= V) continue;
      float& l = work_[static_cast<size_t>(t)];
      l = l > 0 ? l / options_.repetition_penalty : l * options_.repetition_penalty;
    }
  }
  if (options_.temperature <= 0.0f)
    return static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());

  // Candidates sorted by logit (only the top-k when set).
  idx_.resize(V);
  std::iota(idx_.begin(), idx_.end(), 0);
  size_t n = V;
  auto by_logit = [&](int32_t a, int32_t b) { return work_[static_cast<size_t>(a)] > work_[static_cast<size_t>(b)]; };
  if (options_.top_k > 0 && options_.top_k < V) {
    n = options_.top_k;
    std::partial_sort(idx_.begin(), idx_.begin() + static_cast<long>(n), idx_.end(), by_logit);
  } else {
    std::sort(idx_.begin(), idx_.end(), by_logit);
  }
  const float inv_t = 1.0f / options_.temperature;
  const float mx = work_[static_cast<size_t>(idx_[0])] * inv_t;
  std::vector<float> p(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += (p[i] = std::exp(work_[static_cast<size_t>(idx_[i])] * inv_t - mx));
  for (auto& v : p) v = static_cast<float>(v / sum);
  // min-p: relative to the most likely token.
  if (options_.min_p > 0.0f) {
    const float cut = options_.min_p * p[0];
    size_t keep = 1;
    while (keep < n && p[keep] >= cut) ++keep;
    n = keep;
  }
  // top-p: the smallest prefix whose mass reaches top_p.
  if (options_.top_p < 1.0f) {
    double acc = 0;
    size_t keep = 0;
    while (keep < n) {
      acc += p[keep++];
      if (acc >= options_.top_p) break;
    }
    n = keep;
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += p[i];
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= p[i];
    if (r <= 0) return idx_[i];
  }
  return idx_[n - 1];
}

}  // namespace coda
