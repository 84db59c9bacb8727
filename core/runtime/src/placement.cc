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
    // Offloaded experts are handed over as host memory for each pass: a backend that keeps its
    // own copy of the weights cannot run them (yet).
    const bool offloaded = model.expert_store() && ops::Find(node.op)->signature.repeat >= 0;
    for (Backend* b : preferred) {
      if (offloaded && b->uses_device_memory()) {
        declined += (declined.empty() ? "" : ", ") + std::string(b->name()) + " (experts offloaded)";
        continue;
      }
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
