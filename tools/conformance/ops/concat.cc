// Conformance of Concat: each row of a followed by the same row of b.
#include "../suite.h"

namespace coda::conformance {

namespace {

void Cases(Gen& g, std::vector<Case>& out) {
  for (auto [p, q] : {std::pair<uint64_t, uint64_t>{1, 1}, {37, 200}, {256, 129}})
    for (uint32_t n : {1u, 5u}) {
      Case c;
      c.op = CODA_OP_CONCAT;
      c.dtype = "-";
      c.name = Dims({n, p}) + " and " + Dims({n, q});
      c.hp = BaseHparams();
      c.n_tokens = n;
      c.inputs = {g.F32({n, p}), g.F32({n, q})};
      c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, p + q}));
      c.tol = 0;  // copies are exact
      out.push_back(std::move(c));
    }
}

std::string Reference(const coda_op& op) {
  const std::vector<double> a = In(op.inputs[0]), b = In(op.inputs[1]);
  const size_t p = op.inputs[0].shape[1], q = op.inputs[1].shape[1];
  std::vector<double> y;
  for (size_t t = 0; t < op.n_tokens; ++t) {
    y.insert(y.end(), a.begin() + static_cast<long>(t * p), a.begin() + static_cast<long>((t + 1) * p));
    y.insert(y.end(), b.begin() + static_cast<long>(t * q), b.begin() + static_cast<long>((t + 1) * q));
  }
  Out(y, op.outputs[0]);
  return "";
}

}  // namespace

const OpSuite kConcatSuite = {Cases, Reference, nullptr};

}  // namespace coda::conformance
