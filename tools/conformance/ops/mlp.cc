// Conformance of Mlp: the SwiGLU MLP.
#include <algorithm>
#include <cmath>
#include <map>

#include "../suite.h"

namespace coda::conformance {

namespace {

void Cases(Gen& g, std::vector<Case>& out) {
  for (uint32_t dt : kWeightDtypes)
    for (auto [h, inter] : {std::pair<uint64_t, uint64_t>{72, 40}, {200, 136}})
      for (uint32_t n : {1u, 5u, 33u}) {
        Case c;
        c.op = CODA_OP_MLP;
        c.dtype = DtypeLabel(dt);
        c.name = "hidden " + std::to_string(h) + ", inner " + std::to_string(inter) + ", " + std::to_string(n) + " rows";
        c.hp = BaseHparams();
        c.n_tokens = n;
        c.weights.push_back(g.Make(dt, inter, h, 1.0f / std::sqrt(static_cast<float>(h))));
        c.weights.push_back(g.Make(dt, inter, h, 1.0f / std::sqrt(static_cast<float>(h))));
        c.weights.push_back(g.Make(dt, h, inter, 1.0f / std::sqrt(static_cast<float>(inter))));
        c.inputs.push_back(g.F32({n, h}));
        c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, h}));
        c.tol = Tolerance(dt, CODA_DTYPE_F32);
        out.push_back(std::move(c));
      }
}

std::string Reference(const coda_op& op) {
  Out(Swiglu(In(op.inputs[0]), op.inputs[0].shape[0], op.weights), op.outputs[0]);
  return "";
}

}  // namespace

const OpSuite kMlpSuite = {Cases, Reference, nullptr};

}  // namespace coda::conformance
