// Conformance of MoeGate: DeepSeekMoE routing.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "../suite.h"

namespace coda::conformance {

namespace {

// MoE routing of one token from its router logits: the chosen experts (best first), their
// weights, and the smallest gap between a kept and a dropped candidate (experts, and groups
// when routing is group-limited), which says how close the decision was to a tie.
struct Routing {
  std::vector<int32_t> ids;
  std::vector<double> weights;
  double margin = 0;
};

Routing Route(const coda_hparams& hp, const std::vector<double>& logits, const coda_tensor* bias) {
  const size_t E = hp.n_routed_experts, K = hp.n_experts_per_tok, G = std::max(1u, hp.n_group);
  std::vector<double> scores(E), sel(E);
  if (hp.scoring_func == 0) {
    const double mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (size_t i = 0; i < E; ++i) sum += (scores[i] = std::exp(logits[i] - mx));
    for (double& s : scores) s /= sum;
  } else {
    for (size_t i = 0; i < E; ++i) scores[i] = 1.0 / (1.0 + std::exp(-logits[i]));
  }
  for (size_t i = 0; i < E; ++i) sel[i] = scores[i] + (bias ? WeightAt(*bias, 0, i) : 0.0);
  Routing r;
  r.margin = INFINITY;
  std::vector<bool> allowed(E, true);
  if (G > 1) {
    // Group score: the best expert's, or with a bias the sum of the best two (noaux_tc).
    const size_t per = E / G;
    std::vector<double> group(G);
    for (size_t g = 0; g < G; ++g) {
      std::vector<double> s(sel.begin() + static_cast<long>(g * per), sel.begin() + static_cast<long>((g + 1) * per));
      std::sort(s.rbegin(), s.rend());
      group[g] = bias && per > 1 ? s[0] + s[1] : s[0];
    }
    std::vector<size_t> order(G);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return group[a] > group[b]; });
    if (hp.topk_group < G) r.margin = group[order[hp.topk_group - 1]] - group[order[hp.topk_group]];
    for (size_t k = hp.topk_group; k < G; ++k)
      for (size_t i = 0; i < per; ++i) allowed[order[k] * per + i] = false;
  }
  std::vector<size_t> order;
  for (size_t i = 0; i < E; ++i)
    if (allowed[i]) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sel[a] > sel[b]; });
  if (order.size() > K) r.margin = std::min(r.margin, sel[order[K - 1]] - sel[order[K]]);
  double sum = 0;
  for (size_t j = 0; j < K; ++j) sum += scores[order[j]];
  for (size_t j = 0; j < K; ++j) {
    r.ids.push_back(static_cast<int32_t>(order[j]));
    r.weights.push_back((hp.norm_topk_prob ? scores[order[j]] / sum : scores[order[j]]) * hp.routed_scaling_factor);
  }
  return r;
}

void Cases(Gen& g, std::vector<Case>& out) {
  struct Router {
    const char* name;
    uint32_t E, K, G, TG, scoring, norm;
    float scale;
    bool bias;
    uint64_t h;
  };
  const Router routers[] = {
      {"softmax greedy", 10, 3, 1, 1, 0, 0, 1.0f, false, 72},
      {"softmax group-limited", 16, 4, 4, 2, 0, 0, 16.0f, false, 200},
      {"sigmoid noaux_tc", 16, 4, 4, 2, 1, 1, 2.5f, true, 200},
  };
  for (uint32_t dt : kWeightDtypes)
    for (const Router& r : routers)
      for (uint32_t n : {1u, 5u}) {
        Case c;
        c.op = CODA_OP_MOE_GATE;
        c.dtype = DtypeLabel(dt);
        c.name = std::string(r.name) + ", " + std::to_string(r.E) + " experts top " + std::to_string(r.K) + ", hidden " +
                 std::to_string(r.h) + ", " + std::to_string(n) + " tokens";
        c.hp = BaseHparams();
        c.hp.hidden_size = static_cast<uint32_t>(r.h);
        c.hp.n_routed_experts = r.E;
        c.hp.n_experts_per_tok = r.K;
        c.hp.n_group = r.G;
        c.hp.topk_group = r.TG;
        c.hp.scoring_func = r.scoring;
        c.hp.norm_topk_prob = r.norm;
        c.hp.routed_scaling_factor = r.scale;
        c.n_tokens = n;
        c.weights.push_back(g.Make(dt, r.E, r.h, 1.0f / std::sqrt(static_cast<float>(r.h))));
        Weight bias;
        if (r.bias) bias = g.Make(CODA_DTYPE_F32, 0, r.E, 0.05f);
        else bias.absent = true;
        c.weights.push_back(bias);
        // Routing is a discrete choice: draw inputs whose choice is not within rounding of a tie,
        // so that any backend within tolerance picks the same experts.
        Views v(c);
        for (int attempt = 0; attempt < 100; ++attempt) {
          Blob x = g.F32({n, r.h});
          double margin = INFINITY;
          const float* xp = reinterpret_cast<const float*>(x.bytes.data());
          for (uint32_t t = 0; t < n; ++t) {
            std::vector<double> logits(r.E);
            for (uint32_t e = 0; e < r.E; ++e)
              for (uint64_t i = 0; i < r.h; ++i) logits[e] += WeightAt(v.weights[0], e, i) * xp[t * r.h + i];
            margin = std::min(margin, Route(c.hp, logits, r.bias ? &v.weights[1] : nullptr).margin);
          }
          c.inputs = {x};
          if (margin > 2e-3) break;
        }
        c.outputs.push_back(Zeros(CODA_DTYPE_I32, {n, r.K}));
        c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, r.K}));
        c.tol = Tolerance(dt, CODA_DTYPE_F32);
        out.push_back(std::move(c));
      }
}

std::string Reference(const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const size_t n = op.n_tokens, E = hp.n_routed_experts, K = hp.n_experts_per_tok;
  const std::vector<double> logits = MatMul(In(op.inputs[0]), n, op.weights[0]);
  const coda_tensor* bias = op.n_weights > 1 && op.weights[1].data ? &op.weights[1] : nullptr;
  for (size_t t = 0; t < n; ++t) {
    const Routing r = Route(hp, std::vector<double>(logits.begin() + static_cast<long>(t * E),
                                                    logits.begin() + static_cast<long>((t + 1) * E)),
                            bias);
    for (size_t j = 0; j < K; ++j) {
      static_cast<int32_t*>(op.outputs[0].data)[t * K + j] = r.ids[j];
      static_cast<float*>(op.outputs[1].data)[t * K + j] = static_cast<float>(r.weights[j]);
    }
  }
  return "";
}

// Routing must choose the same experts (a set per token); their weights compare numerically.
double Compare(const Case& c, const std::vector<std::vector<uint8_t>>& got, const std::vector<std::vector<uint8_t>>& want,
               std::string* detail) {
  const uint32_t K = c.hp.n_experts_per_tok;
  const auto* gi = reinterpret_cast<const int32_t*>(got[0].data());
  const auto* wi = reinterpret_cast<const int32_t*>(want[0].data());
  const std::vector<double> gw = AsDoubles(got[1], CODA_DTYPE_F32), ww = AsDoubles(want[1], CODA_DTYPE_F32);
  std::vector<double> a, b;
  for (uint32_t t = 0; t < c.n_tokens; ++t) {
    std::map<int32_t, double> gm, wm;
    for (uint32_t j = 0; j < K; ++j) {
      gm[gi[t * K + j]] = gw[t * K + j];
      wm[wi[t * K + j]] = ww[t * K + j];
    }
    if (gm.size() != wm.size() || !std::equal(gm.begin(), gm.end(), wm.begin(), [](auto& x, auto& y) { return x.first == y.first; })) {
      std::string g, w;
      for (auto& [id, _] : gm) g += (g.empty() ? "" : ",") + std::to_string(id);
      for (auto& [id, _] : wm) w += (w.empty() ? "" : ",") + std::to_string(id);
      *detail = "token " + std::to_string(t) + " routed to experts {" + g + "}, expected {" + w + "}";
      return INFINITY;
    }
    for (auto& [id, x] : gm) {
      a.push_back(x);
      b.push_back(wm[id]);
    }
  }
  return RelError(a, b);
}

}  // namespace

const OpSuite kMoeGateSuite = {Cases, Reference, Compare};

}  // namespace coda::conformance
