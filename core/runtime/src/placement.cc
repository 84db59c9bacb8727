// Placement: which backend runs each graph node. Each node goes to the first backend of the
// preference list (then "cpu") whose supports_op() accepts a probe of it: the node's weights,
// and its activations' dtypes and widths with zero rows.
#include <algorithm>

#include "coda/runtime.h"
#include "coda_ops.hpp"
#include "plan.h"

namespace coda {

Result<std::vector<NodePlacement>> PlaceGraph(const Context& context, const Model& model,
                                              const SessionOptions& options) {
  std::vector<Backend*> preferred;
  for (const std::string& name : options.backends) {
    CODA_ASSIGN_OR_RETURN(Backend * b, context.Find(name));
    if (std::find(preferred.begin(), preferred.end(), b) == preferred.end()) preferred.push_back(b);
  }
  auto cpu = context.Find("cpu");
  const bool cpu_added = cpu.ok() && std::find(preferred.begin(), preferred.end(), *cpu) == preferred.end();
  if (cpu_added) preferred.push_back(*cpu);

  CODA_ASSIGN_OR_RETURN(const runtime::ForwardPlan probe_plan, runtime::PlanForward(model, 0, /*all_logits=*/true));
  const GraphRef& g = model.file().graph();
  const ModelConfig& c = model.config();
  std::vector<NodePlacement> out;
  std::vector<coda_tensor> weights, in, outs;
  for (const GraphNode& node : g.nodes) {
    weights.clear();
    in.clear();
    outs.clear();
    for (int32_t w : node.weights) weights.push_back(w >= 0 ? model.tensor(w) : coda_tensor{});
    for (uint32_t v : node.inputs) in.push_back(probe_plan.values[v]);
    for (uint32_t v : node.outputs) outs.push_back(probe_plan.values[v]);
    coda_op probe{};
    probe.struct_size = sizeof(coda_op);
    probe.type = node.op;
    probe.layer = node.layer;
    probe.n_inputs = static_cast<uint32_t>(in.size());
    probe.inputs = in.data();
    probe.n_outputs = static_cast<uint32_t>(outs.size());
    probe.outputs = outs.data();
    probe.n_weights = static_cast<uint32_t>(weights.size());
    probe.weights = weights.data();
    probe.hparams = &model.hparams();
    if (ops::Find(node.op)->flags & CODA_OP_USES_KV) {
      probe.kv.dtype = static_cast<uint32_t>(options.kv_dtype);
      probe.kv.row = c.kv_lora_rank + c.qk_rope_head_dim;
    }
    NodePlacement p;
    std::string declined;
    for (Backend* b : preferred) {
      if (b->Supports(probe)) {
        p.backend = b;
        break;
      }
      declined += (declined.empty() ? "" : ", ") + std::string(b->name());
    }
    if (!p.backend)
      return Unsupported("no loaded backend supports " + std::string(OpTypeName(node.op)) + " '" + node.name +
                         "' with this model's dtypes (tried " + declined + ")");
    if (declined.empty()) p.reason = "first choice";
    else if (cpu_added && p.backend == preferred.back()) p.reason = "fallback to cpu: not supported by " + declined;
    else p.reason = "not supported by " + declined;
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace coda

namespace coda {

Result<std::vector<DeviceExpertPlan>> PlanDeviceExperts(const Model& model, const std::vector<NodePlacement>& placement,
                                                        const SessionOptions& options) {
  const GraphRef& g = model.file().graph();
  const auto& refs = model.file().tensors();
  const ModelConfig& c = model.config();
  const ExpertStore* store = model.expert_store();
  const uint64_t kv_layer = static_cast<uint64_t>(options.n_ctx) * (c.kv_lora_rank + c.qk_rope_head_dim) *
                            DTypeSize(options.kv_dtype);
  auto round = [](uint64_t v) { return (v + 255) / 256 * 256; };
  std::vector<Backend*> devices;
  for (const NodePlacement& p : placement)
    if (p.backend->uses_device_memory() && std::find(devices.begin(), devices.end(), p.backend) == devices.end())
      devices.push_back(p.backend);
  std::vector<DeviceExpertPlan> out;
  for (Backend* b : devices) {
    DeviceExpertPlan dp;
    dp.backend = b;
    uint64_t expert_bytes = 0;
    bool stored = false;
    std::vector<bool> seen(refs.size());
    auto add = [&](int32_t w) {
      if (w < 0 || seen[static_cast<size_t>(w)]) return;
      seen[static_cast<size_t>(w)] = true;
      dp.other_bytes += round(refs[static_cast<size_t>(w)].size);
    };
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      if (placement[i].backend != b) continue;
      const GraphNode& node = g.nodes[i];
      if (ops::Find(node.op)->flags & CODA_OP_USES_KV) dp.kv_bytes += kv_layer;
      // Routed experts, each in its layer's expert block (the reader checks the ranges), can
      // stay off the device; anything else goes there whole.
      bool routed = ops::Find(node.op)->signature.repeat >= 0;
      for (int32_t w : node.weights) routed = routed && w >= 0 && refs[static_cast<size_t>(w)].expert >= 0;
      if (!routed) {
        for (int32_t w : node.weights) {
          add(w);
          if (w >= 0) add(refs[static_cast<size_t>(w)].scale);
        }
        continue;
      }
      const size_t group = static_cast<size_t>(ops::Find(node.op)->signature.weights.size);
      for (size_t e = 0; e * group < node.weights.size(); ++e) {
        const TensorRef& r = refs[static_cast<size_t>(node.weights[e * group])];
        for (const ExpertBlockRef& blk : model.file().expert_blocks())
          if (blk.layer == r.layer) {
            expert_bytes += round(blk.stride);
            dp.slot_bytes = std::max(dp.slot_bytes, round(blk.stride));
          }
        ++dp.experts;
        stored = stored || (store && store->Serves(r.layer));
      }
    }
    if (dp.experts == 0) continue;
    dp.budget = options.device_memory ? options.device_memory : b->memory_bytes();
    const uint64_t fixed = dp.other_bytes + dp.kv_bytes;
    dp.capacity = dp.experts;
    dp.offload = stored || (dp.budget != 0 && fixed + expert_bytes > dp.budget);
    if (!dp.offload) {  // everything fits
      out.push_back(dp);
      continue;
    }
    const uint64_t fit = dp.budget == 0 ? dp.experts : (dp.budget > fixed ? (dp.budget - fixed) / dp.slot_bytes : 0);
    dp.capacity = static_cast<uint32_t>(std::min<uint64_t>(fit, dp.experts));
    if (dp.capacity < c.n_experts_per_tok) {
      const uint64_t need = fixed + uint64_t{c.n_experts_per_tok} * dp.slot_bytes;
      return InvalidArgument("device memory of " + std::to_string(dp.budget) + " bytes on " + std::string(b->name()) +
                             " cannot hold one layer's active experts beside the other weights and the KV cache: at least " +
                             std::to_string(need) + " bytes (" + std::to_string((need + (1 << 20) - 1) >> 20) +
                             " MiB: weights " + std::to_string(dp.other_bytes) + ", KV cache " +
                             std::to_string(dp.kv_bytes) + ", " + std::to_string(c.n_experts_per_tok) + " experts of " +
                             std::to_string(dp.slot_bytes) + ")");
    }
    out.push_back(dp);
  }
  return out;
}

}  // namespace coda
