// Offloaded experts in a session: each expert node whose routed experts the model's expert store
// serves runs with the store's copies of the experts its tokens route to, handed to the backend
// for that one call; the next layer's router, applied to this layer's input, names the experts to
// read ahead. Results are those of the same node with every expert in memory.
#include <algorithm>
#include <cstring>
#include <map>

#include "coda_ops.hpp"
#include "session_impl.h"

namespace coda {

void Session::Impl::FindExpertNodes() {
  const GraphRef& g = model->file().graph();
  const ExpertStore& store = *model->expert_store();
  const auto& refs = model->file().tensors();
  experts.assign(g.nodes.size(), {});
  expert_scales.assign(g.nodes.size(), {});
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const GraphNode& node = g.nodes[i];
    const ops::Signature& sig = ops::Find(node.op)->signature;
    if (sig.repeat < 0 || placement[i].backend->uses_device_memory()) continue;
    const size_t group = static_cast<size_t>(sig.weights.size);
    ExpertNode en;
    bool any = false;
    for (size_t e = 0; e * group < node.weights.size(); ++e) {
      const int32_t w = node.weights[e * group];
      const TensorRef* r = w >= 0 ? &refs[static_cast<size_t>(w)] : nullptr;
      const bool stored = r && r->expert >= 0 && store.Serves(r->layer);
      en.key.push_back(stored ? std::pair{r->layer, r->expert} : std::pair{-1, -1});
      any = any || stored;
    }
    if (!any) continue;
    experts[i] = std::move(en);
    expert_scales[i].resize(node.weights.size());
  }
  // Each expert node's predictor: the first router after it, and the expert node after that.
  for (size_t i = 0; i < experts.size(); ++i) {
    if (experts[i].key.empty()) continue;
    for (size_t j = i + 1; j < g.nodes.size(); ++j) {
      if (g.nodes[j].op == CODA_OP_MOE_GATE && experts[i].next_gate < 0) experts[i].next_gate = static_cast<int32_t>(j);
      if (experts[i].next_gate >= 0 && !experts[j].key.empty()) {
        experts[i].next_experts = static_cast<int32_t>(j);
        break;
      }
    }
  }
}

// Applies the next layer's router to this layer's input and starts reading the experts it
// picks, while this layer computes. Only for short batches (decode), on a host-memory router.
void Session::Impl::Predict(size_t i, const Step& s) {
  const ExpertNode& en = experts[i];
  if (en.next_gate < 0 || en.next_experts < 0 || s.op.n_tokens > 16) return;
  const size_t gate = static_cast<size_t>(en.next_gate);
  Backend* b = placement[gate].backend;
  const coda_tensor& x = s.inputs[0];
  if (b->uses_device_memory() || !x.data) return;
  const uint32_t n = s.op.n_tokens, k = model->hparams().n_experts_per_tok;
  std::vector<int32_t> ids(static_cast<size_t>(n) * k);
  std::vector<float> wts(ids.size());
  coda_tensor out[2] = {};
  for (coda_tensor& t : out) {
    t.ndim = 2;
    t.shape[0] = n;
    t.shape[1] = k;
  }
  out[0].dtype = CODA_DTYPE_I32;
  out[0].data = ids.data();
  out[1].dtype = CODA_DTYPE_F32;
  out[1].data = wts.data();
  coda_op op{};
  op.struct_size = sizeof op;
  op.type = CODA_OP_MOE_GATE;
  op.layer = model->file().graph().nodes[gate].layer;
  op.n_tokens = n;
  op.n_inputs = 1;
  op.inputs = &x;
  op.n_outputs = 2;
  op.outputs = out;
  op.n_weights = static_cast<uint32_t>(weights[gate].size());
  op.weights = weights[gate].data();
  op.hparams = &model->hparams();
  op.prepared = node_prepared[gate];
  if (!b->Execute(op).ok()) return;  // a prediction is only a hint
  ExpertNode& next = experts[static_cast<size_t>(en.next_experts)];
  next.predicted.clear();
  std::map<int32_t, std::vector<int32_t>> by_layer;
  for (int32_t e : ids) {
    if (e < 0 || static_cast<size_t>(e) >= next.key.size() || next.key[static_cast<size_t>(e)].first < 0) continue;
    if (std::find(next.predicted.begin(), next.predicted.end(), e) != next.predicted.end()) continue;
    next.predicted.push_back(e);
    by_layer[next.key[static_cast<size_t>(e)].first].push_back(next.key[static_cast<size_t>(e)].second);
  }
  for (const auto& [layer, list] : by_layer) model->expert_store()->Prefetch(layer, list);
}

// Runs an expert node with the experts it routes to handed over from the store: all at once
// when they fit, else in groups the store can hold, each run with the other routes sent to one
// of its experts at weight 0 and the outputs summed.
Status Session::Impl::RunExperts(size_t i, Step& s) {
  ExpertNode& en = experts[i];
  const coda_tensor& ids_t = s.inputs[1];
  const size_t routes = static_cast<size_t>(ids_t.shape[0] * ids_t.shape[1]);
  const auto* ids = static_cast<const int32_t*>(ids_t.data);
  std::vector<int32_t> used;
  std::vector<bool> seen(en.key.size(), false);
  for (size_t r = 0; r < routes; ++r) {
    const int32_t e = ids[r];
    // An id out of range is the backend's to refuse, with its message.
    if (e < 0 || static_cast<size_t>(e) >= en.key.size() || seen[static_cast<size_t>(e)]) continue;
    seen[static_cast<size_t>(e)] = true;
    used.push_back(e);
  }
  std::sort(used.begin(), used.end());
  // How well the last prediction did, then the next one.
  if (!en.predicted.empty()) {
    for (int32_t e : used) offload.predicted_hits += std::count(en.predicted.begin(), en.predicted.end(), e);
    offload.predicted_total += used.size();
    offload.predicted_issued += en.predicted.size();
    en.predicted.clear();
  }
  const uint32_t capacity = model->expert_store()->capacity();
  if (used.size() <= capacity) return RunWithExperts(i, s, used, /*predict=*/true);

  // More experts than the cache holds (a long prefill): groups of `capacity`.
  const coda_tensor& x = s.inputs[0];
  coda_tensor& y = s.outputs[0];
  const size_t y_count = static_cast<size_t>(y.shape[0] * y.shape[1]);
  std::vector<float> sum(y_count, 0.0f), part(y_count);
  std::vector<int32_t> group_ids(routes);
  std::vector<float> group_wts(routes);
  const auto* wts = static_cast<const float*>(s.inputs[2].data);
  coda_tensor in[3] = {x, ids_t, s.inputs[2]}, out = y;
  in[1].data = group_ids.data();
  in[2].data = group_wts.data();
  out.data = part.data();
  Step g = s;
  g.op.inputs = in;
  g.op.outputs = &out;
  for (size_t first = 0; first < used.size(); first += capacity) {
    const std::span<const int32_t> group(used.data() + first, std::min<size_t>(capacity, used.size() - first));
    for (size_t r = 0; r < routes; ++r) {
      const bool mine = std::binary_search(group.begin(), group.end(), ids[r]);
      group_ids[r] = mine ? ids[r] : group[0];
      group_wts[r] = mine ? wts[r] : 0.0f;
    }
    CODA_RETURN_IF_ERROR(RunWithExperts(i, g, group, /*predict=*/false));
    for (size_t v = 0; v < y_count; ++v) sum[v] += part[v];
  }
  std::memcpy(y.data, sum.data(), y_count * sizeof(float));
  return Status::Ok();
}

// Pins `list` in the store, points the node's weights for those experts at the store's copies,
// (with `predict`, starts reading what the next layer will likely need), runs the node and puts
// everything back.
Status Session::Impl::RunWithExperts(size_t i, Step& s, std::span<const int32_t> list, bool predict) {
  ExpertNode& en = experts[i];
  ExpertStore& store = *model->expert_store();
  const GraphNode& node = model->file().graph().nodes[i];
  const auto& refs = model->file().tensors();
  const size_t group = node.weights.size() / en.key.size();
  std::map<int32_t, std::vector<int32_t>> by_layer;  // store layer -> its experts, in list order
  for (int32_t e : list)
    if (en.key[static_cast<size_t>(e)].first >= 0) by_layer[en.key[static_cast<size_t>(e)].first].push_back(en.key[static_cast<size_t>(e)].second);
  std::map<std::pair<int32_t, int32_t>, ExpertView> views;
  std::vector<int32_t> acquired;
  auto release = [&] {
    for (int32_t layer : acquired) store.Release(layer, by_layer[layer]);
  };
  for (const auto& [layer, list_of] : by_layer) {
    auto v = store.Acquire(layer, list_of);
    if (!v.ok()) {
      release();
      return v.status();
    }
    acquired.push_back(layer);
    for (size_t j = 0; j < list_of.size(); ++j) views[{layer, list_of[j]}] = (*v)[j];
  }
  // With this layer's experts pinned, the next layer's likely ones are read while it computes.
  if (predict) Predict(i, s);
  // A tensor is handed over from the store only when it belongs to the expert acquired for its
  // slot; anything else stays where the model has it.
  auto moved = [&](int32_t w) -> const uint8_t* {
    const TensorRef& r = refs[static_cast<size_t>(w)];
    auto it = views.find({r.layer, r.expert});
    if (it == views.end()) return nullptr;
    return it->second.base + (r.offset - it->second.data_offset);
  };
  std::vector<coda_tensor>& w = weights[i];
  std::vector<coda_tensor>& scales = expert_scales[i];
  for (int32_t e : list)
    for (size_t j = 0; j < group; ++j) {
      const size_t slot = static_cast<size_t>(e) * group + j;
      const int32_t idx = node.weights[slot];
      if (idx < 0) continue;
      if (const uint8_t* p = moved(idx)) w[slot].data = const_cast<uint8_t*>(p);
      const int32_t scale = refs[static_cast<size_t>(idx)].scale;
      if (scale < 0) continue;
      if (const uint8_t* p = moved(scale)) {
        scales[slot] = model->tensor(scale);
        scales[slot].data = const_cast<uint8_t*>(p);
        w[slot].scale = &scales[slot];
      }
    }
  Status st = s.backend->Execute(s.op);
  for (int32_t e : list)
    for (size_t j = 0; j < group; ++j) {
      const size_t slot = static_cast<size_t>(e) * group + j;
      if (node.weights[slot] >= 0) w[slot] = model->tensor(node.weights[slot]);
    }
  release();
  return st;
}

}  // namespace coda
