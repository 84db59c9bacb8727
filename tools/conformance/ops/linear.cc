// Conformance of Linear and Head: x W^T (Head, the language-model head, is the same product).
#include <algorithm>
#include <cmath>
#include <map>

#include "../suite.h"

namespace coda::conformance {

namespace {

void LinearCases(Gen& g, std::vector<Case>& out, uint32_t op) {
  struct Shape {
    uint64_t rows, cols;
  };
  // 384 x 512 at 70 tokens: the CUDA backend gives 68 to cuBLASLt and 2 to its own FP8 kernel
  // (backends/cuda/src/lt.h).
  const std::vector<Shape> shapes = op == CODA_OP_LINEAR
                                        ? std::vector<Shape>{{1, 1}, {37, 53}, {130, 200}, {257, 384}, {384, 512}}
                                        : std::vector<Shape>{{129, 64}, {333, 200}};
  const std::vector<uint32_t> tokens = op == CODA_OP_LINEAR ? std::vector<uint32_t>{1, 5, 33, 70} : std::vector<uint32_t>{1, 4};
  for (uint32_t dt : kWeightDtypes)
    for (const Shape& s : shapes)
      for (uint32_t n : tokens) {
        Case c;
        c.op = op;
        c.dtype = DtypeLabel(dt);
        c.name = "W " + Dims({s.rows, s.cols}) + ", " + std::to_string(n) + " rows";
        c.hp = BaseHparams();
        c.n_tokens = n;
        c.weights.push_back(g.Make(dt, s.rows, s.cols, 1.0f / std::sqrt(static_cast<float>(s.cols))));
        c.inputs.push_back(g.F32({n, s.cols}));
        c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, s.rows}));
        c.tol = Tolerance(dt, CODA_DTYPE_F32);
        out.push_back(std::move(c));
      }
}

void LinearOnly(Gen& g, std::vector<Case>& out) { LinearCases(g, out, CODA_OP_LINEAR); }
void HeadOnly(Gen& g, std::vector<Case>& out) { LinearCases(g, out, CODA_OP_HEAD); }

std::string Reference(const coda_op& op) {
  Out(MatMul(In(op.inputs[0]), op.inputs[0].shape[0], op.weights[0]), op.outputs[0]);
  return "";
}

}  // namespace

const OpSuite kLinearSuite = {LinearOnly, Reference, nullptr};
const OpSuite kHeadSuite = {HeadOnly, Reference, nullptr};

}  // namespace coda::conformance
