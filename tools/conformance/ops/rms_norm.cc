// Conformance of RmsNorm.
#include <algorithm>
#include <cmath>
#include <map>

#include "../suite.h"

namespace coda::conformance {

namespace {

void Cases(Gen& g, std::vector<Case>& out) {
  // Norm weights are vectors: F32 or BF16 (no block scales exist for them).
  for (uint32_t dt : {CODA_DTYPE_F32, CODA_DTYPE_BF16})
    for (uint64_t d : {1u, 37u, 200u})
      for (uint32_t n : {1u, 5u}) {
        Case c;
        c.op = CODA_OP_RMS_NORM;
        c.dtype = DtypeLabel(dt);
        c.name = "d " + std::to_string(d) + ", " + std::to_string(n) + " rows";
        c.hp = BaseHparams();
        c.n_tokens = n;
        c.weights.push_back(g.Make(dt, 0, d, 0.2f, 1.0f));
        c.inputs.push_back(g.F32({n, d}, 3.0f));
        c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, d}));
        c.tol = Tolerance(dt, CODA_DTYPE_F32);
        out.push_back(std::move(c));
      }
}

std::string Reference(const coda_op& op) {
  std::vector<double> x = In(op.inputs[0]);
  const size_t d = op.inputs[0].shape[1];
  for (size_t t = 0; t < op.inputs[0].shape[0]; ++t) RmsNormInPlace(x.data() + t * d, d, op.weights[0], op.hparams->rms_norm_eps);
  Out(x, op.outputs[0]);
  return "";
}

}  // namespace

const OpSuite kRmsNormSuite = {Cases, Reference, nullptr};

}  // namespace coda::conformance
