// Conformance of Add.
#include <algorithm>
#include <cmath>
#include <map>

#include "../suite.h"

namespace coda::conformance {

namespace {

void Cases(Gen& g, std::vector<Case>& out) {
  for (uint64_t d : {1u, 37u, 200u})
    for (uint32_t n : {1u, 5u}) {
      Case c;
      c.op = CODA_OP_ADD;
      c.dtype = "-";
      c.name = Dims({n, d});
      c.hp = BaseHparams();
      c.n_tokens = n;
      c.inputs = {g.F32({n, d}), g.F32({n, d})};
      c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, d}));
      c.tol = Tolerance(CODA_DTYPE_F32, CODA_DTYPE_F32);
      out.push_back(std::move(c));
    }
}

std::string Reference(const coda_op& op) {
  std::vector<double> a = In(op.inputs[0]);
  const std::vector<double> b = In(op.inputs[1]);
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  Out(a, op.outputs[0]);
  return "";
}

}  // namespace

const OpSuite kAddSuite = {Cases, Reference, nullptr};

}  // namespace coda::conformance
