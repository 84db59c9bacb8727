// The session's internals, shared by its parts: session.cc (memory, binding plans, running
// them) and offload.cc (handing offloaded experts to backends: from the RAM store, and through
// a device backend's expert cache). Private to core/runtime.
#pragma once

#include <cstdlib>
#include <map>
#include <memory>
#include <vector>

#include "coda/runtime.h"
#include "device_experts.h"
#include "plan.h"

namespace coda {

namespace runtime {

// Host memory for activations, 64-byte aligned like every value in it.
struct AlignedBytes {
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> data;
  uint64_t size = 0;
};

// One node of a bound plan: its op with every tensor in place, and the values to bring to the
// host first (produced in another backend's memory).
struct Step {
  Backend* backend = nullptr;
  coda_op op{};
  std::vector<coda_tensor> inputs, outputs;
  std::vector<uint32_t> fetch;
  uint32_t first_row = 0;
};

}  // namespace runtime

struct Session::Impl {
  using AlignedBytes = runtime::AlignedBytes;
  using Step = runtime::Step;
  const Context* context = nullptr;
  uint64_t id = 0;  // Context::NewSessionId
  const Model* model = nullptr;
  std::unique_ptr<LatentKvCache> kv;
  std::vector<NodePlacement> placement;            // per node
  std::vector<std::vector<coda_tensor>> weights;   // per node: its weight slots
  std::vector<void*> node_prepared;                // per node: what its backend's prepare() returned
  struct Prepared {
    Backend* backend;
    std::vector<coda_tensor> weights;  // kept until release(), as the ABI promises
    coda_weights table;
    void* handle;
  };
  std::vector<Prepared> prepared;
  // Per layer: the latent cache slab in the buffer of a backend with its own memory (null: the
  // layer's slab in the host cache).
  struct DeviceKv {
    Backend* backend = nullptr;
    coda_buffer buffer = nullptr;
  };
  std::vector<DeviceKv> device_kv;
  // Activations of nodes on backends with their own memory stay there: per such backend, one
  // buffer laid out like the host arena (same offsets).
  struct DeviceArena {
    coda_buffer buffer = nullptr;
    uint64_t bytes = 0;
  };
  std::map<Backend*, DeviceArena> device_arenas;
  // Per value: the backend whose buffers hold it (the producer's, when that backend has its own
  // memory), or null for the host arena. Fixed by the placement.
  std::vector<Backend*> home;
  std::vector<Backend*> used;  // distinct backends with at least one node
  AlignedBytes arena;
  uint64_t memory_generation = 0;  // bumped whenever the host or a device arena moves
  struct BoundPlan {
    runtime::ForwardPlan plan;
    std::vector<Step> steps;
    uint64_t generation = UINT64_MAX;  // memory_generation the steps point into
  };
  std::map<std::pair<uint32_t, bool>, BoundPlan> plans;
  std::vector<bool> host_valid;  // per value, during a forward pass: the host arena holds it
  // Nodes whose routed experts are offloaded: served by the model's expert store (RAM tier),
  // or by a device backend's expert cache (device tier), or both.
  struct ExpertNode {
    std::vector<std::pair<int32_t, int32_t>> key;  // per expert: (layer, expert) in the store; layer -1: not stored
    int32_t next_gate = -1;     // the next router: applied to this node's input, it predicts ...
    int32_t next_experts = -1;  // ... which experts this node will need
    std::vector<int32_t> predicted;  // what the last prediction for this node said
    // Device tier: per expert, its cache key, where its range starts in the data section, and
    // its bytes in host memory (null: in the store, acquired when needed).
    runtime::DeviceExpertCache* device = nullptr;
    struct Range {
      uint64_t key = 0, offset = 0, bytes = 0;
      const uint8_t* host = nullptr;
    };
    std::vector<Range> range;
    std::vector<coda_tensor> device_weights, device_scales;  // the node's weights as its backend gets them
  };
  std::vector<ExpertNode> experts;  // per node; empty key: not served
  std::vector<bool> device_tier;    // per node: its routed experts stay off its backend's prepared weights
  std::map<Backend*, std::unique_ptr<runtime::DeviceExpertCache>> device_caches;
  Backend* cpu = nullptr;           // runs experts the device tier leaves to the CPU
  double cpu_bytes_per_second = 20e9;  // the CPU's rate on experts, measured as it runs them
  std::vector<std::vector<coda_tensor>> expert_scales;  // per node: FP8 scales of the experts handed over
  OffloadStats offload;

  ~Impl() {
    device_caches.clear();
    for (auto& [b, a] : device_arenas)
      if (a.buffer) b->FreeBuffer(a.buffer);
    for (DeviceKv& d : device_kv)
      if (d.buffer) d.backend->FreeBuffer(d.buffer);
    for (Prepared& p : prepared) p.backend->Release(p.handle);
  }
  Status PrepareWeights();
  Status PlaceKvCache();
  Result<BoundPlan*> Plan(uint32_t n, bool all_logits);
  Status Reserve(uint64_t bytes);
  void Bind(BoundPlan& b);
  coda_tensor View(const runtime::ForwardPlan& p, uint32_t v, const Backend* b) const;
  Status ToHost(const runtime::ForwardPlan& p, uint32_t v);
  Status PlanDeviceTier(const SessionOptions& options);
  Status FindExpertNodes();
  Status RunExperts(size_t i, Step& s);
  Status RunDeviceExperts(size_t i, Step& s, const runtime::ForwardPlan& p);
  Status LoadExperts(ExpertNode& en, std::span<const std::pair<int32_t, int32_t>> slots_for);
  Status RunWithExperts(size_t i, Step& s, std::span<const int32_t> experts, bool predict);
  void Predict(size_t i, const Step& s);
};


}  // namespace coda
