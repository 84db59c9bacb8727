// Planning a forward pass: each value's dtype and shape for a batch of n tokens (from the ops'
// signatures, coda_ops.h), which rows each node runs, and where each value lives in one arena.
// Backend-agnostic; the session binds a plan to its backends and memory.
#pragma once

#include <cstdint>
#include <vector>

#include "coda/runtime.h"

namespace coda::runtime {

struct NodePlan {
  uint32_t n_tokens = 0;
  // First row of the batch the node runs: 0, or n - 1 where only the last token's rows are needed
  // downstream (the logits of the last token, through row-wise ops).
  uint32_t first_row = 0;
};

struct ForwardPlan {
  uint32_t n = 0;
  bool all_logits = false;
  std::vector<coda_tensor> values;  // dtype and shape; data unset
  std::vector<uint64_t> offsets;    // bytes into the arena
  std::vector<NodePlan> nodes;
  uint64_t arena_bytes = 0;
};

// Bytes of a value (its shape times its dtype's size).
uint64_t ValueBytes(const coda_tensor& v);

// Shapes, rows and arena for n tokens (n = 0: the shapes a placement probe shows, any rows).
Result<ForwardPlan> PlanForward(const Model& model, uint32_t n, bool all_logits);

}  // namespace coda::runtime
