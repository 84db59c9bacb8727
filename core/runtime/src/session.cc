// A session: one sequence's latent cache, the weights handed to each backend once, where each
// value lives, and the execution of forward plans. A plan (plan.h) is bound to this session's
// memory once, as a list of ready coda_ops; a forward pass then only sets positions and runs them.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>

#include "coda/runtime.h"
#include "coda_ops.hpp"
#include "plan.h"
#include "session_impl.h"

namespace coda {

namespace {

// Index of the first NaN or infinity, or v.size(). Integer compares on the exponent bits, so the
// scan vectorizes (it runs on every token's logits).
size_t FirstNonFinite(std::span<const float> v) {
  constexpr size_t kBlock = 1024;
  for (size_t b = 0; b < v.size(); b += kBlock) {
    const size_t e = std::min(v.size(), b + kBlock);
    uint32_t any = 0;
    for (size_t i = b; i < e; ++i) {
      uint32_t u;
      std::memcpy(&u, &v[i], 4);
      any |= (u & 0x7f800000u) == 0x7f800000u;
    }
    if (any)
      for (size_t i = b; i < e; ++i)
        if (!std::isfinite(v[i])) return i;
  }
  return v.size();
}

}  // namespace

Result<std::unique_ptr<Session>> Session::Create(const Context& context, std::shared_ptr<const Model> model,
                                                 const SessionOptions& options) {
  const ModelConfig& c = model->config();
  if (options.n_ctx > c.max_position_embeddings && c.max_position_embeddings > 0)
    return InvalidArgument("context length " + std::to_string(options.n_ctx) + " exceeds the model's maximum of " +
                           std::to_string(c.max_position_embeddings) + " positions");
  std::unique_ptr<Session> s(new Session());
  s->model_ = std::move(model);
  s->impl_ = std::make_unique<Impl>();
  Impl& im = *s->impl_;
  im.context = &context;
  im.id = context.NewSessionId();
  im.model = s->model_.get();
  CODA_ASSIGN_OR_RETURN(im.kv, LatentKvCache::Create(c, options.n_ctx, options.kv_dtype));
  CODA_ASSIGN_OR_RETURN(im.placement, PlaceGraph(context, *s->model_, options));
  const GraphRef& g = s->model_->file().graph();
  im.weights.resize(g.nodes.size());
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (int32_t w : g.nodes[i].weights) im.weights[i].push_back(w >= 0 ? s->model_->tensor(w) : coda_tensor{});
  for (const NodePlacement& p : im.placement)
    if (std::find(im.used.begin(), im.used.end(), p.backend) == im.used.end()) im.used.push_back(p.backend);
  if (auto cpu = context.Find("cpu"); cpu.ok()) im.cpu = *cpu;
  CODA_RETURN_IF_ERROR(im.PlanDeviceTier(options));
  CODA_RETURN_IF_ERROR(im.PrepareWeights());
  CODA_RETURN_IF_ERROR(im.PlaceKvCache());
  if (s->model_->expert_store() || !im.device_caches.empty()) CODA_RETURN_IF_ERROR(im.FindExpertNodes());
  im.home.assign(g.n_values, nullptr);
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (Backend* b = im.placement[i].backend; b->uses_device_memory()) {
      for (uint32_t v : g.nodes[i].outputs) im.home[v] = b;
      im.device_arenas.emplace(b, Impl::DeviceArena{});
    }
  return s;
}

// Hands each backend the weights of the nodes it runs, once (routed experts of device-tier
// nodes excepted: the device's expert cache holds those).
Status Session::Impl::PrepareWeights() {
  const GraphRef& g = model->file().graph();
  const auto& refs = model->file().tensors();
  node_prepared.assign(g.nodes.size(), nullptr);
  for (Backend* b : used) {
    if (!b->has_prepare()) continue;
    std::vector<bool> seen(model->file().tensors().size());
    Prepared p{b, {}, {}, nullptr};
    for (size_t i = 0; i < g.nodes.size(); ++i)
      if (placement[i].backend == b)
        for (int32_t w : g.nodes[i].weights)
          if (w >= 0 && !seen[static_cast<size_t>(w)] && !(device_tier[i] && refs[static_cast<size_t>(w)].expert >= 0)) {
            seen[static_cast<size_t>(w)] = true;
            p.weights.push_back(model->tensor(w));
          }
    p.table = {sizeof(coda_weights), static_cast<uint32_t>(p.weights.size()), p.weights.data(), &model->hparams()};
    auto handle = b->Prepare(p.table);
    if (!handle.ok()) return handle.status().WithContext("preparing the weights");
    p.handle = *handle;
    for (size_t i = 0; i < g.nodes.size(); ++i)
      if (placement[i].backend == b) node_prepared[i] = p.handle;
    prepared.push_back(std::move(p));
  }
  return Status::Ok();
}

// The latent cache of a layer whose attention runs on a backend with its own memory lives there.
Status Session::Impl::PlaceKvCache() {
  const GraphRef& g = model->file().graph();
  device_kv.assign(kv->n_layers(), {});
  std::vector<uint8_t> zeros;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const GraphNode& node = g.nodes[i];
    Backend* b = placement[i].backend;
    // The model file guarantees one cache user per layer, with a layer in range.
    if (!(ops::Find(node.op)->flags & CODA_OP_USES_KV) || !b->uses_device_memory()) continue;
    auto buf = b->AllocBuffer(kv->layer_bytes());
    if (!buf.ok())
      return buf.status().WithContext("allocating the KV cache of layer " + std::to_string(node.layer) + " on " +
                                      std::string(b->name()) + " (lower --n-ctx)");
    device_kv[static_cast<size_t>(node.layer)] = {b, *buf};
    // Zeroed like the host cache, so positions skipped by JumpTo() hold zeros, not garbage.
    if (zeros.empty()) zeros.resize(static_cast<size_t>(std::min<uint64_t>(kv->layer_bytes(), 4u << 20)));
    for (uint64_t at = 0; at < kv->layer_bytes(); at += zeros.size())
      CODA_RETURN_IF_ERROR(b->Upload(*buf, at, zeros.data(), std::min<uint64_t>(zeros.size(), kv->layer_bytes() - at)));
    CODA_RETURN_IF_ERROR(b->Synchronize());  // `zeros` must outlive the transfers
  }
  return Status::Ok();
}

Result<Session::Impl::BoundPlan*> Session::Impl::Plan(uint32_t n, bool all_logits) {
  const auto key = std::make_pair(n, all_logits);
  if (auto it = plans.find(key); it != plans.end()) return &it->second;
  CODA_ASSIGN_OR_RETURN(runtime::ForwardPlan p, runtime::PlanForward(*model, n, all_logits));
  BoundPlan& b = plans[key];
  b.plan = std::move(p);
  return &b;
}

// Grows the host arena and the device arenas to `bytes`; a move invalidates bound plans.
Status Session::Impl::Reserve(uint64_t bytes) {
  if (arena.size < bytes) {
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, bytes));
    if (!p) return OutOfMemory("cannot allocate " + std::to_string(bytes) + " bytes of activations");
    arena.data.reset(p);
    arena.size = bytes;
    ++memory_generation;
  }
  for (auto& [b, a] : device_arenas) {
    if (a.bytes >= bytes) continue;
    if (a.buffer) b->FreeBuffer(a.buffer);
    a = {};
    auto buf = b->AllocBuffer(bytes);
    if (!buf.ok()) return buf.status().WithContext("allocating activations on " + std::string(b->name()));
    a = {*buf, bytes};
    ++memory_generation;
  }
  return Status::Ok();
}

// Value v as backend `b` reads or writes it: in b's buffers when that is its home, else in the
// host arena.
coda_tensor Session::Impl::View(const runtime::ForwardPlan& p, uint32_t v, const Backend* b) const {
  coda_tensor t = p.values[v];
  if (home[v] && home[v] == b) {
    t.buffer = device_arenas.at(home[v]).buffer;
    t.offset = p.offsets[v];
  } else {
    t.data = arena.data.get() + p.offsets[v];
  }
  return t;
}

void Session::Impl::Bind(BoundPlan& bp) {
  const GraphRef& g = model->file().graph();
  const runtime::ForwardPlan& p = bp.plan;
  bp.steps.assign(g.nodes.size(), Step{});
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const GraphNode& node = g.nodes[i];
    const runtime::NodePlan& np = p.nodes[i];
    Step& s = bp.steps[i];
    s.backend = placement[i].backend;
    s.first_row = np.first_row;
    for (uint32_t v : node.inputs) {
      coda_tensor t = View(p, v, s.backend);
      // A node running the last row only reads that row of an input with more.
      if (const uint64_t rows = t.shape[0]; rows > np.n_tokens) {
        const uint64_t skip = runtime::ValueBytes(t) / rows * (rows - np.n_tokens);
        if (t.data) t.data = static_cast<uint8_t*>(t.data) + skip;
        else t.offset += skip;
        t.shape[0] = np.n_tokens;
      }
      if (home[v] && home[v] != s.backend) s.fetch.push_back(v);
      s.inputs.push_back(t);
    }
    for (uint32_t v : node.outputs) s.outputs.push_back(View(p, v, s.backend));
    coda_op& op = s.op;
    op.struct_size = sizeof(coda_op);
    op.type = node.op;
    op.layer = node.layer;
    op.n_tokens = np.n_tokens;
    op.n_inputs = static_cast<uint32_t>(s.inputs.size());
    op.inputs = s.inputs.data();
    op.n_outputs = static_cast<uint32_t>(s.outputs.size());
    op.outputs = s.outputs.data();
    op.n_weights = static_cast<uint32_t>(weights[i].size());
    op.weights = weights[i].data();
    op.hparams = &model->hparams();
    op.prepared = node_prepared[i];
    if (ops::Find(node.op)->flags & CODA_OP_USES_KV) {
      op.kv.dtype = static_cast<uint32_t>(kv->dtype());
      op.kv.n_ctx = kv->n_ctx();
      op.kv.row = kv->row();
      if (coda_buffer buf = device_kv[static_cast<size_t>(node.layer)].buffer) op.kv.buffer = buf;
      else op.kv.data = kv->layer_data(static_cast<uint32_t>(node.layer));
    }
  }
  bp.generation = memory_generation;
}

// Brings a value held in a backend's buffers to the host arena (once per forward pass).
Status Session::Impl::ToHost(const runtime::ForwardPlan& p, uint32_t v) {
  if (host_valid[v]) return Status::Ok();
  Backend* b = home[v];
  CODA_RETURN_IF_ERROR(b->Download(device_arenas.at(b).buffer, p.offsets[v], arena.data.get() + p.offsets[v],
                                   runtime::ValueBytes(p.values[v])));
  CODA_RETURN_IF_ERROR(b->Synchronize());
  host_valid[v] = true;
  return Status::Ok();
}

Session::~Session() = default;

OffloadStats Session::offload_stats() const {
  OffloadStats o = impl_->offload;
  if (const ExpertStore* store = model_->expert_store()) o.store = store->stats();
  return o;
}

uint32_t Session::n_past() const { return impl_->kv->n_past(); }
uint32_t Session::n_ctx() const { return impl_->kv->n_ctx(); }
void Session::Reset() { impl_->kv->set_n_past(0); }
const LatentKvCache& Session::kv_cache() const { return *impl_->kv; }

Status Session::Rewind(uint32_t n) {
  if (n > impl_->kv->n_past())
    return InvalidArgument("cannot rewind to " + std::to_string(n) + " positions: only " +
                           std::to_string(impl_->kv->n_past()) + " are filled");
  impl_->kv->set_n_past(n);
  return Status::Ok();
}

Status Session::JumpTo(uint32_t n) {
  if (n > impl_->kv->n_ctx())
    return OutOfRange("position " + std::to_string(n) + " is beyond the context (" + std::to_string(impl_->kv->n_ctx()) + ")");
  impl_->kv->set_n_past(n);
  return Status::Ok();
}

std::vector<std::string> Session::Placement() const {
  std::vector<std::string> out;
  const GraphRef& g = model_->file().graph();
  for (size_t i = 0; i < g.nodes.size(); ++i)
    out.push_back(g.nodes[i].name + " (" + std::string(OpTypeName(g.nodes[i].op)) + ") -> " +
                  std::string(impl_->placement[i].backend->name()) + ": " + impl_->placement[i].reason);
  return out;
}

Result<std::span<const float>> Session::Forward(std::span<const int32_t> tokens, bool all_logits) {
  Impl& im = *impl_;
  const ModelConfig& c = model_->config();
  if (tokens.empty()) return InvalidArgument("no tokens to run (empty prompt)");
  const uint32_t start = im.kv->n_past();
  if (tokens.size() > im.kv->n_ctx() - start)
    return OutOfRange("context full: " + std::to_string(start) + " of " + std::to_string(im.kv->n_ctx()) +
                      " positions used, " + std::to_string(tokens.size()) + " more requested (raise --n-ctx)");
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || static_cast<uint32_t>(tokens[i]) >= c.vocab_size)
      return InvalidArgument("token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                             " is outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
  const uint32_t n = static_cast<uint32_t>(tokens.size());
  CODA_ASSIGN_OR_RETURN(Impl::BoundPlan * bp, im.Plan(n, all_logits));
  const runtime::ForwardPlan& plan = bp->plan;
  CODA_RETURN_IF_ERROR(im.Reserve(plan.arena_bytes));
  if (bp->generation != im.memory_generation) im.Bind(*bp);
  const GraphRef& g = model_->file().graph();
  im.host_valid.resize(g.n_values);
  for (uint32_t v = 0; v < g.n_values; ++v) im.host_valid[v] = im.home[v] == nullptr;
  std::memcpy(im.arena.data.get() + plan.offsets[0], tokens.data(), tokens.size() * sizeof(int32_t));

  // A backend may replay a pass it has seen before (coda_backend.h, steps): the key names this
  // session's plan for n tokens in the memory it has now. The steps end on every way out.
  const uint64_t key = (im.id * 0x9E3779B97F4A7C15ull) ^ (im.memory_generation * 0xC2B2AE3D27D4EB4Full) ^
                       (uint64_t{n} << 1) ^ (all_logits ? 1 : 0);
  size_t begun = 0;
  auto end_steps = [&]() -> Status {
    Status first = Status::Ok();
    for (; begun > 0; --begun)
      if (Status st = im.used[begun - 1]->StepEnd(); !st.ok() && first.ok()) first = st;
    return first;
  };
  struct Guard {
    decltype(end_steps)& f;
    ~Guard() { (void)f(); }
  } guard{end_steps};
  while (begun < im.used.size()) {
    const Status st = im.used[begun]->StepBegin(key);
    ++begun;  // a failed step_begin may still have opened the step
    CODA_RETURN_IF_ERROR(st);
  }

  std::vector<coda_tensor> observed;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const GraphNode& node = g.nodes[i];
    runtime::Step& s = bp->steps[i];
    for (uint32_t v : s.fetch)
      if (Status st = im.ToHost(plan, v); !st.ok()) return st.WithContext("copying an input of '" + node.name + "' to the host");
    s.op.start_pos = start + s.first_row;
    Status st = im.experts.empty() || im.experts[i].key.empty() ? s.backend->Execute(s.op)
                : im.experts[i].device                       ? im.RunDeviceExperts(i, s, plan)
                                                             : im.RunExperts(i, s);
    if (!st.ok()) return st.WithContext(std::string(OpTypeName(node.op)) + " '" + node.name + "' on " + std::string(s.backend->name()));
    if (observer_) {
      observed.clear();
      for (uint32_t v : node.outputs) {
        CODA_RETURN_IF_ERROR(im.ToHost(plan, v));
        observed.push_back(im.View(plan, v, nullptr));
      }
      observer_(node, observed);
    }
  }
  CODA_RETURN_IF_ERROR(end_steps());
  CODA_RETURN_IF_ERROR(im.ToHost(plan, g.logits).WithContext("copying the logits to the host"));
  // Host-memory outputs are complete when execute() returns; this also settles any work a
  // backend still has queued before the cache counts the new positions.
  for (Backend* b : im.used) CODA_RETURN_IF_ERROR(b->Synchronize());
  const coda_tensor& shape = plan.values[g.logits];
  const std::span<const float> logits(reinterpret_cast<const float*>(im.arena.data.get() + plan.offsets[g.logits]),
                                      shape.shape[0] * shape.shape[1]);
  // Nothing may sample from NaN: a model whose numbers overflow fails here, naming where.
  if (const size_t bad = FirstNonFinite(logits); bad < logits.size()) {
    const uint64_t row = bad / shape.shape[1];
    const uint64_t position = start + (shape.shape[0] == n ? row : n - 1);
    return Internal("the logits at position " + std::to_string(position) + " are not finite (token " +
                    std::to_string(bad % shape.shape[1]) + " is " + std::to_string(logits[bad]) +
                    "): the model's numbers overflow");
  }
  im.kv->set_n_past(start + n);
  return logits;
}

}  // namespace coda
