// The graph ops on a Vulkan device: each op records its kernels into the device's command
// buffer and runs them before returning (outputs in host memory are then complete).
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend_util.h"
#include "coda_backend.h"
#include "device.h"

// Buffers the backend hands out through the ABI: one block each.
struct coda_buffer_impl {
  coda::vk::Block block;
  uint64_t size;  // as asked for (the block may be larger)
};

namespace coda::vk {

// Weights uploaded once per session by prepare(), found again by their host address.
struct Prepared {
  std::vector<std::unique_ptr<Block>> blocks;
  std::unordered_map<const void*, Span> spans;
};

struct Instance {
  std::unique_ptr<Device> device;
  std::unique_ptr<Arena> scratch;  // device memory for one call's activations and temporaries
  std::unique_ptr<Arena> staging;  // host-visible memory for one call's transfers
  backend_util::RopeCache rope;
  std::string description;
};

// Uploads the weights (and their FP8 scales) into device memory.
std::string PrepareWeights(Instance& in, const coda_weights& weights, Prepared* out);

// Empty when this backend runs the op with these dtypes and sizes (its signature in coda_ops.h
// included), else the reason.
std::string CheckOp(const Instance& in, const coda_op& op);
// Runs an op CheckOp() accepted; an error message, or empty on success.
std::string RunOp(Instance& in, const coda_op& op);

}  // namespace coda::vk
