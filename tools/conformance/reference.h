// A scalar reference for every graph op: the plainest loops that follow each op's contract (as
// the CPU backend documents it in backends/cpu/src/ops.cc and DeepSeek's inference/model.py),
// accumulating in double, with MLA computed in its expanded (non-absorbed) form. Slow and
// independent of any backend's kernels, so the CPU backend itself can be checked against it.
#pragma once

#include <cstdint>
#include <vector>

#include "coda_backend.h"

namespace coda::conformance {

// The reference as a backend behind the ABI ("reference": host memory only, every op, every
// weight dtype including FP8 embedding tables).
const coda_backend_api* ReferenceBackendEntry(uint32_t host_abi_version);

// Pieces the case generator shares.
float DecodeE4M3(uint8_t v);
uint8_t EncodeE4M3(float v);  // nearest finite value, ties to even code
uint16_t F32ToBf16(float v);  // round to nearest even
float Bf16ToF32(uint16_t v);
// Element (r, c) of a weight ([rows, cols], or a vector with r = 0) as a real number.
double WeightAt(const coda_tensor& w, uint64_t r, uint64_t c);

// MoE routing of one token from its router logits: the chosen experts (best first), their
// weights, and the smallest gap between a kept and a dropped candidate (experts, and groups
// when routing is group-limited), which says how close the decision was to a tie.
struct Routing {
  std::vector<int32_t> ids;
  std::vector<double> weights;
  double margin = 0;
};
Routing Route(const coda_hparams& hp, const std::vector<double>& logits, const coda_tensor* bias);

}  // namespace coda::conformance
