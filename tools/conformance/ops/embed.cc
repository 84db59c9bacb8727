// Conformance of Embed: token ids to rows of the table.
#include <algorithm>
#include <cmath>
#include <map>

#include "../suite.h"

namespace coda::conformance {

namespace {

void Cases(Gen& g, std::vector<Case>& out) {
  for (uint32_t dt : kWeightDtypes)
    for (uint64_t h : {7u, 200u})
      for (uint32_t n : {1u, 6u}) {
        const uint64_t V = 50;
        Case c;
        c.op = CODA_OP_EMBED;
        c.dtype = DtypeLabel(dt);
        c.name = "table " + Dims({V, h}) + ", " + std::to_string(n) + " tokens";
        c.hp = BaseHparams();
        c.n_tokens = n;
        c.weights.push_back(g.Make(dt, V, h, 1.0f));
        Blob ids = Zeros(CODA_DTYPE_I32, {n});
        auto* p = reinterpret_cast<int32_t*>(ids.bytes.data());
        for (uint32_t t = 0; t < n; ++t) p[t] = t == 0 ? static_cast<int32_t>(V - 1) : static_cast<int32_t>(g.Uniform(V));
        c.inputs.push_back(ids);
        c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, h}));
        c.tol = Tolerance(dt, CODA_DTYPE_F32);
        out.push_back(std::move(c));
      }
}

std::string Reference(const coda_op& op) {
  const size_t n = op.n_tokens;
  const coda_tensor& table = op.weights[0];
  const uint64_t V = table.shape[0], h = table.shape[1];
  std::vector<double> y(n * h);
  for (size_t t = 0; t < n; ++t) {
    const int32_t id = static_cast<const int32_t*>(op.inputs[0].data)[t];
    if (id < 0 || static_cast<uint64_t>(id) >= V) return "token id out of range";
    for (uint64_t i = 0; i < h; ++i) y[t * h + i] = WeightAt(table, static_cast<uint64_t>(id), i);
  }
  Out(y, op.outputs[0]);
  return "";
}

}  // namespace

const OpSuite kEmbedSuite = {Cases, Reference, nullptr};

}  // namespace coda::conformance
