// Conformance of MoeExperts: the routed experts, weighted.
#include <algorithm>
#include <cmath>
#include <map>

#include "../suite.h"

namespace coda::conformance {

namespace {

void Cases(Gen& g, std::vector<Case>& out) {
  struct Shape {
    uint32_t E, K;
    uint64_t h, inter;
  };
  for (uint32_t dt : kWeightDtypes)
    // 256 x 128: whole 128-column blocks, which FP8 products on tensor cores take.
    for (const Shape& s : {Shape{6, 2, 72, 40}, Shape{5, 3, 130, 33}, Shape{4, 2, 256, 128}})
      for (uint32_t n : {1u, 5u, 6u, 40u, 130u}) {  // 40 and 130: experts with 16 and 64 pairs and more
        // 6 tokens: ids repeat within a token, some at weight 0 (the executor's offloading
        // sends routes it computes elsewhere to an expert at weight 0); each pair still adds.
        const bool repeat = n == 6;
        Case c;
        c.op = CODA_OP_MOE_EXPERTS;
        c.dtype = DtypeLabel(dt);
        c.name = std::to_string(s.E) + " experts top " + std::to_string(s.K) + ", hidden " + std::to_string(s.h) +
                 ", inner " + std::to_string(s.inter) + ", " + std::to_string(n) + " tokens" +
                 (repeat ? ", ids repeated" : "");
        c.hp = BaseHparams();
        c.hp.hidden_size = static_cast<uint32_t>(s.h);
        c.hp.n_routed_experts = s.E;
        c.hp.n_experts_per_tok = s.K;
        c.n_tokens = n;
        for (uint32_t e = 0; e < s.E; ++e) {
          c.weights.push_back(g.Make(dt, s.inter, s.h, 1.0f / std::sqrt(static_cast<float>(s.h))));
          c.weights.push_back(g.Make(dt, s.inter, s.h, 1.0f / std::sqrt(static_cast<float>(s.h))));
          c.weights.push_back(g.Make(dt, s.h, s.inter, 1.0f / std::sqrt(static_cast<float>(s.inter))));
        }
        Blob ids = Zeros(CODA_DTYPE_I32, {n, s.K}), wts = Zeros(CODA_DTYPE_F32, {n, s.K});
        auto* ip = reinterpret_cast<int32_t*>(ids.bytes.data());
        auto* wp = reinterpret_cast<float*>(wts.bytes.data());
        for (uint32_t t = 0; t < n; ++t) {
          std::vector<int32_t> all(s.E);
          for (uint32_t e = 0; e < s.E; ++e) all[e] = static_cast<int32_t>(e);
          std::shuffle(all.begin(), all.end(), g.rng());
          for (uint32_t j = 0; j < s.K; ++j) {
            ip[t * s.K + j] = all[j];
            wp[t * s.K + j] = 0.1f + std::fabs(g.Normal());
            if (repeat && j > 0 && (t + j) % 2 == 0) {
              ip[t * s.K + j] = ip[t * s.K];
              if (t % 3 != 0) wp[t * s.K + j] = 0.0f;
            }
          }
        }
        c.inputs = {g.F32({n, s.h}), ids, wts};
        c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, s.h}));
        c.tol = Tolerance(dt, CODA_DTYPE_F32);
        out.push_back(std::move(c));
      }
}

std::string Reference(const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const size_t n = op.n_tokens, K = hp.n_experts_per_tok, h = op.inputs[0].shape[1];
  const std::vector<double> x = In(op.inputs[0]);
  const int32_t* ids = static_cast<const int32_t*>(op.inputs[1].data);
  const float* wts = static_cast<const float*>(op.inputs[2].data);
  std::vector<double> y(n * h);
  for (size_t t = 0; t < n; ++t)
    for (size_t j = 0; j < K; ++j) {
      const int32_t e = ids[t * K + j];
      if (e < 0 || static_cast<uint32_t>(e) >= hp.n_routed_experts) return "expert id out of range";
      const std::vector<double> xe(x.begin() + static_cast<long>(t * h), x.begin() + static_cast<long>((t + 1) * h));
      const std::vector<double> ye = Swiglu(xe, 1, op.weights + 3 * static_cast<size_t>(e));
      for (size_t i = 0; i < h; ++i) y[t * h + i] += wts[t * K + j] * ye[i];
    }
  Out(y, op.outputs[0]);
  return "";
}

}  // namespace

const OpSuite kMoeExpertsSuite = {Cases, Reference, nullptr};

}  // namespace coda::conformance
