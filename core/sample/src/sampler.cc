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

  // Softmax over the candidates (all tokens, or the top-k), then min-p and top-p keep a prefix
  // of them sorted by probability. That prefix is usually tiny, so it is sorted in growing
  // steps instead of sorting the whole vocabulary.
  idx_.resize(V);
  std::iota(idx_.begin(), idx_.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return work_[static_cast<size_t>(a)] > work_[static_cast<size_t>(b)]; };
  const size_t k = options_.top_k > 0 && options_.top_k < V ? options_.top_k : V;
  if (k < V) std::nth_element(idx_.begin(), idx_.begin() + static_cast<long>(k), idx_.end(), by_logit);
  // exp((l - max) / T) in double: finite for any positive float T, so a temperature too small
  // to divide by gives all the probability to the largest logit (greedy), never NaN.
  const double t = options_.temperature;
  float mx = -INFINITY;
  for (size_t i = 0; i < k; ++i) mx = std::max(mx, work_[static_cast<size_t>(idx_[i])]);
  auto weight = [&](size_t i) { return std::exp((static_cast<double>(work_[static_cast<size_t>(idx_[i])]) - mx) / t); };
  double z = 0;
  for (size_t i = 0; i < k; ++i) z += weight(i);
  auto prob = [&](size_t i) { return static_cast<float>(weight(i) / z); };
  size_t sorted = 0;
  auto sort_prefix = [&](size_t m) {
    m = std::min(m, k);
    if (m > sorted) {
      std::partial_sort(idx_.begin() + static_cast<long>(sorted), idx_.begin() + static_cast<long>(m),
                        idx_.begin() + static_cast<long>(k), by_logit);
      sorted = m;
    }
  };
  size_t n = k;
  const bool filter = options_.min_p > 0.0f || options_.top_p < 1.0f;
  std::vector<float> p;
  if (filter) {
    double acc = 0;
    n = 0;
    for (size_t step = 64;; step *= 4) {
      sort_prefix(step);
      const float top = prob(0);
      while (n < sorted) {
        const float pn = prob(n);
        if (options_.min_p > 0.0f && n > 0 && pn < options_.min_p * top) break;  // min-p: relative to the top
        p.push_back(pn);
        acc += pn;
        ++n;
        if (options_.top_p < 1.0f && acc >= options_.top_p) break;
      }
      const bool stopped = n < sorted || (options_.top_p < 1.0f && acc >= options_.top_p);
      if (stopped || sorted == k) break;
    }
  } else {
    for (size_t i = 0; i < k; ++i) p.push_back(prob(i));
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
