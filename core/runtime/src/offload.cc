// Offloaded experts in a session.
//
// RAM tier: each expert node whose routed experts the model's expert store serves runs with the
// store's copies of the experts its tokens route to, handed to the backend for that one call; the
// next layer's router, applied to this layer's input, names the experts to read ahead.
//
// Device tier: a node on a device backend whose memory cannot hold every routed expert keeps
// them off its prepared weights. A cache of them in the backend's buffers (device_experts.h) is
// filled by expected use; an expert a call needs that is not resident is either uploaded into
// the cache or computed on the CPU, whichever the cost model says is sooner (the expert's bytes
// at the measured transfer rate, against the CPU's measured rate on that many bytes and tokens).
// A decode token (one token per expert) then favours the CPU; a prefill, where an expert serves
// many tokens, favours the upload. Experts the CPU keeps running are promoted into the cache.
//
// Results are those of the same node with every expert in memory.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>

#include "coda_ops.hpp"
#include "session_impl.h"

namespace coda {

namespace {

// Tokens one expert's weights serve before the CPU turns compute-bound (its cost then grows
// with the tokens; below, reading the weights dominates).
constexpr double kCpuKneeTokens = 8;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool IsExpertNode(const GraphNode& node) { return ops::Find(node.op)->signature.repeat >= 0; }

}  // namespace

// Creates the expert cache of each device backend whose routed experts do not all fit
// (PlanDeviceExperts), and marks its expert nodes.
Status Session::Impl::PlanDeviceTier(const SessionOptions& options) {
  const GraphRef& g = model->file().graph();
  const auto& refs = model->file().tensors();
  device_tier.assign(g.nodes.size(), false);
  CODA_ASSIGN_OR_RETURN(std::vector<DeviceExpertPlan> plans, PlanDeviceExperts(*model, placement, options));
  for (const DeviceExpertPlan& dp : plans) {
    if (!dp.offload) continue;
    if (dp.capacity < dp.experts && !cpu)
      return Unsupported("offloading experts from " + std::string(dp.backend->name()) + " needs the cpu backend to run the rest");
    CODA_ASSIGN_OR_RETURN(auto cache, runtime::DeviceExpertCache::Create(*dp.backend, dp.capacity, dp.slot_bytes));
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      const GraphNode& node = g.nodes[i];
      bool routed = placement[i].backend == dp.backend && IsExpertNode(node);
      for (int32_t w : node.weights) routed = routed && w >= 0 && refs[static_cast<size_t>(w)].expert >= 0;
      device_tier[i] = routed;
    }
    offload.device.backend = std::string(dp.backend->name());
    offload.device.capacity += dp.capacity;
    offload.device.total += dp.experts;
    offload.device.slot_bytes = cache->slot_bytes();
    device_caches[dp.backend] = std::move(cache);
  }
  return Status::Ok();
}

Status Session::Impl::FindExpertNodes() {
  const GraphRef& g = model->file().graph();
  const ExpertStore* store = model->expert_store();
  const auto& refs = model->file().tensors();
  experts.assign(g.nodes.size(), {});
  expert_scales.assign(g.nodes.size(), {});
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const GraphNode& node = g.nodes[i];
    if (!IsExpertNode(node)) continue;
    const bool on_device = placement[i].backend->uses_device_memory();
    if (on_device && !device_tier[i]) continue;  // prepared on the device whole
    const size_t group = static_cast<size_t>(ops::Find(node.op)->signature.weights.size);
    ExpertNode en;
    bool any = on_device;
    for (size_t e = 0; e * group < node.weights.size(); ++e) {
      const int32_t w = node.weights[e * group];
      const TensorRef* r = w >= 0 ? &refs[static_cast<size_t>(w)] : nullptr;
      const bool stored = r && r->expert >= 0 && store && store->Serves(r->layer);
      en.key.push_back(stored ? std::pair{r->layer, r->expert} : std::pair{-1, -1});
      any = any || stored;
      if (!on_device) continue;
      // A device-tier node's experts all lie in expert blocks (PlanDeviceTier checked).
      ExpertNode::Range range;
      for (const ExpertBlockRef& blk : model->file().expert_blocks())
        if (blk.layer == r->layer) {
          range.offset = blk.offset + blk.stride * static_cast<uint64_t>(r->expert);
          range.bytes = blk.stride;
        }
      range.key = runtime::DeviceExpertCache::Key(r->layer, r->expert);
      if (!stored) range.host = static_cast<const uint8_t*>(model->tensor(w).data) - (r->offset - range.offset);
      en.range.push_back(range);
    }
    if (!any) continue;
    if (on_device) {
      en.device = device_caches.at(placement[i].backend).get();
      en.device_weights = weights[i];
      en.device_scales.resize(node.weights.size());
    }
    experts[i] = std::move(en);
    expert_scales[i].resize(node.weights.size());
  }
  // The device caches start with experts by expected use: without history, an equal share of
  // each layer's (those in host memory; the store's are read when first needed).
  for (auto& [b, cache] : device_caches) {
    std::vector<std::pair<int32_t, int32_t>> fill;  // (node, expert)
    uint32_t free = cache->capacity();
    for (size_t e = 0; free > 0; ++e) {
      bool more = false;
      for (size_t i = 0; i < experts.size() && free > 0; ++i) {
        const ExpertNode& en = experts[i];
        if (en.device != cache.get() || e >= en.range.size()) continue;
        more = true;
        if (!en.range[e].host) continue;
        fill.emplace_back(static_cast<int32_t>(i), static_cast<int32_t>(e));
        --free;
      }
      if (!more) break;
    }
    cache->BeginCall();
    for (const auto& [i, e] : fill) {
      const ExpertNode::Range& r = experts[static_cast<size_t>(i)].range[static_cast<size_t>(e)];
      CODA_RETURN_IF_ERROR(cache->Load(cache->Victim(), r.key, r.host, r.bytes).WithContext("filling the expert cache"));
    }
    CODA_RETURN_IF_ERROR(cache->Settle(/*measure=*/true));
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
  return Status::Ok();
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

namespace coda {

// Uploads experts of `en` into the given slots of its device cache (pairs of expert, slot):
// from host memory directly, or acquired from the store in groups it can pin at once.
Status Session::Impl::LoadExperts(ExpertNode& en, std::span<const std::pair<int32_t, int32_t>> slots_for) {
  runtime::DeviceExpertCache& cache = *en.device;
  ExpertStore* store = model->expert_store();
  const uint32_t group = store ? store->capacity() : 1;
  for (size_t first = 0; first < slots_for.size(); first += group) {
    const auto part = slots_for.subspan(first, std::min<size_t>(group, slots_for.size() - first));
    std::map<int32_t, std::vector<int32_t>> by_layer;  // store layer -> experts
    for (const auto& [e, slot] : part)
      if (!en.range[static_cast<size_t>(e)].host) by_layer[en.key[static_cast<size_t>(e)].first].push_back(en.key[static_cast<size_t>(e)].second);
    std::map<std::pair<int32_t, int32_t>, ExpertView> views;
    std::vector<int32_t> acquired;
    auto release = [&] {
      for (int32_t layer : acquired) store->Release(layer, by_layer[layer]);
    };
    Status st;
    for (const auto& [layer, list] : by_layer) {
      auto v = store->Acquire(layer, list);
      if (!v.ok()) {
        st = v.status();
        break;
      }
      acquired.push_back(layer);
      for (size_t j = 0; j < list.size(); ++j) views[{layer, list[j]}] = (*v)[j];
    }
    for (size_t j = 0; st.ok() && j < part.size(); ++j) {
      const auto [e, slot] = part[j];
      const ExpertNode::Range& r = en.range[static_cast<size_t>(e)];
      const uint8_t* src = r.host;
      if (!src) {
        const ExpertView& v = views.at(en.key[static_cast<size_t>(e)]);
        src = v.base + (r.offset - v.data_offset);
      }
      st = cache.Load(slot, r.key, src, r.bytes);
      if (st.ok()) offload.device.bytes_uploaded += r.bytes;
    }
    // The store's copies must stay until the transfers have read them; host memory stays anyway
    // (the transfers then overlap with what follows, up to the next call).
    if (!acquired.empty() || !st.ok())
      if (Status s = cache.Settle(/*measure=*/true); st.ok()) st = s;
    release();
    CODA_RETURN_IF_ERROR(st.WithContext("uploading experts to " + std::string(cache.backend().name())));
  }
  return Status::Ok();
}

// Runs a device-tier expert node: resident experts on the device, each missing one uploaded or
// left to the CPU by the cost model, the two partial sums added.
Status Session::Impl::RunDeviceExperts(size_t i, Step& s, const runtime::ForwardPlan& p) {
  ExpertNode& en = experts[i];
  runtime::DeviceExpertCache& cache = *en.device;
  Backend& dev = *s.backend;
  const GraphNode& node = model->file().graph().nodes[i];
  auto& st = offload.device;
  // The routing decides what moves: it comes to the host (a few bytes per token).
  for (size_t k = 1; k < 3; ++k) CODA_RETURN_IF_ERROR(ToHost(p, node.inputs[k]));
  // The host arena holds every value at the offset its device copy has.
  auto host = [&](const coda_tensor& t) -> uint8_t* {
    return t.data ? static_cast<uint8_t*>(t.data) : arena.data.get() + t.offset;
  };
  const coda_tensor& ids_t = s.inputs[1];
  const size_t routes = static_cast<size_t>(ids_t.shape[0] * ids_t.shape[1]);
  const auto* ids = reinterpret_cast<const int32_t*>(host(ids_t));
  const auto* wts = reinterpret_cast<const float*>(host(s.inputs[2]));
  const size_t n_experts = en.range.size();
  std::vector<uint32_t> tokens(n_experts, 0);
  std::vector<int32_t> used;
  for (size_t r = 0; r < routes; ++r) {
    if (ids[r] < 0 || static_cast<size_t>(ids[r]) >= n_experts)
      return InvalidArgument("expert id " + std::to_string(ids[r]) + " out of range");
    if (tokens[static_cast<size_t>(ids[r])]++ == 0) used.push_back(ids[r]);
  }
  std::sort(used.begin(), used.end());

  // Resident, uploaded, or on the CPU. The last call's uploads are done by now.
  CODA_RETURN_IF_ERROR(cache.Settle(/*measure=*/false));
  cache.BeginCall();
  std::vector<int32_t> on_device, on_cpu;
  std::vector<std::pair<int32_t, int32_t>> uploads;  // (expert, slot)
  std::vector<int32_t> slot_of(n_experts, -1);
  for (int32_t e : used) {
    const ExpertNode::Range& r = en.range[static_cast<size_t>(e)];
    cache.CountUse(r.key);
    ++st.requests;
    if (const int32_t slot = cache.Find(r.key); slot >= 0) {
      ++st.hits;
      slot_of[static_cast<size_t>(e)] = slot;
      on_device.push_back(e);
      continue;
    }
    st.bytes_missed += r.bytes;
    const double upload = static_cast<double>(r.bytes) / cache.upload_bytes_per_second();
    const double work = static_cast<double>(r.bytes) * std::max(1.0, tokens[static_cast<size_t>(e)] / kCpuKneeTokens);
    const int32_t victim = upload <= work / cpu_bytes_per_second || !cpu ? cache.Victim() : -1;
    if (victim < 0) {
      if (!cpu) return Internal("no device slot free for an expert, and no cpu backend");
      on_cpu.push_back(e);
      continue;
    }
    cache.Claim(victim);  // so that no later expert of this call takes the slot
    uploads.emplace_back(e, victim);
    slot_of[static_cast<size_t>(e)] = victim;
    on_device.push_back(e);
  }
  double t0 = Now();
  CODA_RETURN_IF_ERROR(LoadExperts(en, uploads));
  st.uploads += uploads.size();
  st.upload_seconds += Now() - t0;
  st.upload_gbs = cache.upload_bytes_per_second() / 1e9;

  const coda_tensor& y = s.outputs[0];
  const size_t y_count = static_cast<size_t>(y.shape[0] * y.shape[1]);
  // Routes to the other part's experts go to one of this part's at weight 0.
  auto remap = [&](const std::vector<int32_t>& mine, std::vector<int32_t>& part_ids, std::vector<float>& part_wts) {
    part_ids.resize(routes);
    part_wts.resize(routes);
    for (size_t r = 0; r < routes; ++r) {
      const bool in = std::binary_search(mine.begin(), mine.end(), ids[r]);
      part_ids[r] = in ? ids[r] : mine[0];
      part_wts[r] = in ? wts[r] : 0.0f;
    }
  };
  std::vector<int32_t> part_ids;
  std::vector<float> part_wts;
  coda_tensor in[3] = {s.inputs[0], s.inputs[1], s.inputs[2]};
  for (size_t k = 1; k < 3; ++k) {
    in[k].buffer = nullptr;
    in[k].offset = 0;
  }
  if (!on_device.empty()) {
    std::sort(on_device.begin(), on_device.end());
    remap(on_device, part_ids, part_wts);
    in[1].data = part_ids.data();
    in[2].data = part_wts.data();
    CODA_RETURN_IF_ERROR(cache.OrderCompute());
    const size_t group = node.weights.size() / n_experts;
    const auto& refs = model->file().tensors();
    for (int32_t e : on_device) {
      const ExpertNode::Range& r = en.range[static_cast<size_t>(e)];
      const int32_t slot = slot_of[static_cast<size_t>(e)];
      for (size_t j = 0; j < group; ++j) {
        const size_t k = static_cast<size_t>(e) * group + j;
        const int32_t w = node.weights[k];
        if (w < 0) continue;
        auto in_slot = [&](int32_t t, coda_tensor& out) {
          out = model->tensor(t);
          out.data = nullptr;
          out.scale = nullptr;
          out.buffer = cache.buffer(slot);
          out.offset = cache.offset(slot) + (refs[static_cast<size_t>(t)].offset - r.offset);
        };
        in_slot(w, en.device_weights[k]);
        if (const int32_t sc = refs[static_cast<size_t>(w)].scale; sc >= 0) {
          in_slot(sc, en.device_scales[k]);
          en.device_weights[k].scale = &en.device_scales[k];
        }
      }
    }
    coda_op op = s.op;
    op.inputs = in;
    op.weights = en.device_weights.data();
    Status run = dev.Execute(op);
    for (int32_t e : on_device)
      for (size_t j = 0; j < group; ++j) en.device_weights[static_cast<size_t>(e) * group + j] = weights[i][static_cast<size_t>(e) * group + j];
    CODA_RETURN_IF_ERROR(run);
  }
  if (on_cpu.empty()) return Status::Ok();

  // The CPU's part, from host memory (the store's copies when it serves them).
  t0 = Now();
  CODA_RETURN_IF_ERROR(ToHost(p, node.inputs[0]));
  remap(on_cpu, part_ids, part_wts);
  std::vector<float> part(y_count);
  coda_tensor cin[3] = {s.inputs[0], s.inputs[1], s.inputs[2]};
  for (coda_tensor& t : cin) {
    t.data = host(t);
    t.buffer = nullptr;
    t.offset = 0;
  }
  cin[1].data = part_ids.data();
  cin[2].data = part_wts.data();
  coda_tensor cout = y;
  cout.data = part.data();
  cout.buffer = nullptr;
  cout.offset = 0;
  Step c = s;
  c.backend = cpu;
  c.op.inputs = cin;
  c.op.outputs = &cout;
  c.op.weights = weights[i].data();
  c.op.prepared = nullptr;
  c.inputs.assign(cin, cin + 3);
  c.outputs.assign(1, cout);
  c.op.inputs = c.inputs.data();
  c.op.outputs = c.outputs.data();
  bool stored = false;
  for (int32_t e : on_cpu) stored = stored || en.key[static_cast<size_t>(e)].first >= 0;
  CODA_RETURN_IF_ERROR(stored ? RunExperts(i, c) : cpu->Execute(c.op));
  st.cpu_experts += on_cpu.size();
  double work = 0;
  for (int32_t e : on_cpu)
    work += static_cast<double>(en.range[static_cast<size_t>(e)].bytes) * std::max(1.0, tokens[static_cast<size_t>(e)] / kCpuKneeTokens);
  const double seconds = Now() - t0;
  st.cpu_seconds += seconds;
  if (seconds > 0) cpu_bytes_per_second = 0.8 * cpu_bytes_per_second + 0.2 * (work / seconds);
  st.cpu_gbs = cpu_bytes_per_second / 1e9;

  // The sum, where the node's output lives.
  if (!on_device.empty()) {
    std::vector<float> devpart(y_count);
    if (y.buffer) {
      CODA_RETURN_IF_ERROR(dev.Download(y.buffer, y.offset, devpart.data(), y_count * sizeof(float)));
      CODA_RETURN_IF_ERROR(dev.Synchronize());
    } else {
      std::memcpy(devpart.data(), y.data, y_count * sizeof(float));
    }
    for (size_t v = 0; v < y_count; ++v) part[v] += devpart[v];
  }
  if (y.buffer) {
    CODA_RETURN_IF_ERROR(dev.Upload(y.buffer, y.offset, part.data(), y_count * sizeof(float)));
    CODA_RETURN_IF_ERROR(dev.Synchronize());  // `part` must outlive the transfer
  } else {
    std::memcpy(y.data, part.data(), y_count * sizeof(float));
  }

  // An expert the CPU keeps running moves into the cache when it is used clearly more than the
  // least used resident one (at most two per call, to bound the time a token spends on it).
  std::sort(on_cpu.begin(), on_cpu.end(), [&](int32_t a, int32_t b) { return tokens[static_cast<size_t>(a)] > tokens[static_cast<size_t>(b)]; });
  std::vector<std::pair<int32_t, int32_t>> promote;
  for (int32_t e : on_cpu) {
    if (promote.size() == 2) break;
    const uint64_t key = en.range[static_cast<size_t>(e)].key;
    const int32_t victim = cache.Victim(key);
    if (victim < 0) continue;
    cache.Claim(victim);
    promote.emplace_back(e, victim);
  }
  t0 = Now();
  CODA_RETURN_IF_ERROR(LoadExperts(en, promote));
  st.promotions += promote.size();
  st.upload_seconds += Now() - t0;
  return Status::Ok();
}

}  // namespace coda
