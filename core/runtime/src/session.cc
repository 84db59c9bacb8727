// The graph executor: places nodes on backends, plans activation memory per batch shape, and
// runs the nodes in order over one sequence's latent cache.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>

#include "coda/runtime.h"

namespace coda {

namespace {

enum : uint8_t {
  kEmbed = CODA_OP_EMBED, kRmsNorm = CODA_OP_RMS_NORM, kLinear = CODA_OP_LINEAR, kMla = CODA_OP_MLA_ATTENTION,
  kMoeGate = CODA_OP_MOE_GATE, kMoeExperts = CODA_OP_MOE_EXPERTS, kMlp = CODA_OP_MLP, kAdd = CODA_OP_ADD,
  kHead = CODA_OP_HEAD,
};

struct ValueShape {
  uint64_t rows = 0, cols = 0;
  uint32_t dtype = CODA_DTYPE_F32;
};

// Activation memory for one batch shape: every value's place in one arena, reused once a
// value is dead.
struct Plan {
  std::vector<ValueShape> shapes;
  std::vector<uint64_t> offsets;  // in 4-byte units
  uint64_t arena = 0;
};

// Each value's shape for a batch of n tokens.
Result<std::vector<ValueShape>> ValueShapes(const Model& m, uint32_t n, bool all_logits) {
  const GraphRef& g = m.file().graph();
  const ModelConfig& c = m.config();
  std::vector<ValueShape> shapes(g.n_values);
  shapes[0] = {n, 1, CODA_DTYPE_I32};
  auto rows_of = [&](int32_t w) { return m.tensor(w).shape[0]; };
  for (const GraphNode& node : g.nodes) {
    const ValueShape in = shapes[node.inputs[0]];
    switch (node.op) {
      case kEmbed: shapes[node.outputs[0]] = {n, c.hidden_size}; break;
      case kRmsNorm: case kAdd: shapes[node.outputs[0]] = in; break;
      case kLinear: shapes[node.outputs[0]] = {in.rows, rows_of(node.weights[0])}; break;
      case kMla: case kMoeExperts: shapes[node.outputs[0]] = {n, c.hidden_size}; break;
      case kMlp: shapes[node.outputs[0]] = {in.rows, rows_of(node.weights[2])}; break;
      case kMoeGate:
        shapes[node.outputs[0]] = {n, c.n_experts_per_tok, CODA_DTYPE_I32};
        shapes[node.outputs[1]] = {n, c.n_experts_per_tok};
        break;
      case kHead: shapes[node.outputs[0]] = {all_logits ? n : 1, rows_of(node.weights[0])}; break;
      default: return Internal("planner: unknown op " + std::to_string(node.op));
    }
  }
  return shapes;
}

coda_tensor ActivationTensor(const ValueShape& v) {
  coda_tensor t{};
  t.dtype = v.dtype;
  t.ndim = 2;
  t.shape[0] = v.rows;
  t.shape[1] = v.cols;
  return t;
}

}  // namespace

struct Session::Impl {
  const Context* context = nullptr;
  std::unique_ptr<LatentKvCache> kv;
  std::vector<NodePlacement> placement;  // per node
  std::vector<void*> node_prepared;      // per node: what its backend's prepare() returned
  struct Prepared {
    Backend* backend;
    std::vector<coda_tensor> weights;  // kept until release(), as the ABI promises
    coda_weights table;
    void* handle;
  };
  std::vector<Prepared> prepared;
  // Per layer: the KV cache slab in the buffer of a backend with its own memory (null: the
  // layer's slab in the host cache is used).
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
  std::map<std::pair<uint32_t, bool>, Plan> plans;
  std::vector<float> arena;
  std::vector<coda_tensor> values;  // host views
  std::vector<bool> host_valid;     // per value: the host arena holds it

  ~Impl() {
    for (auto& [b, a] : device_arenas)
      if (a.buffer) b->FreeBuffer(a.buffer);
    for (DeviceKv& d : device_kv)
      if (d.buffer) d.backend->FreeBuffer(d.buffer);
    for (Prepared& p : prepared) p.backend->Release(p.handle);
  }
  Status PlaceKvCache(const GraphRef& g);
  Result<const Plan*> GetPlan(const Model& m, uint32_t n, bool all_logits);
};

Result<const Plan*> Session::Impl::GetPlan(const Model& m, uint32_t n, bool all_logits) {
  auto key = std::make_pair(n, all_logits);
  if (auto it = plans.find(key); it != plans.end()) return &it->second;
  const GraphRef& g = m.file().graph();
  Plan p;
  CODA_ASSIGN_OR_RETURN(p.shapes, ValueShapes(m, n, all_logits));
  p.offsets.assign(g.n_values, 0);
  // Last reader of each value; the logits are never freed.
  std::vector<size_t> last_use(g.n_values, 0);
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (uint32_t v : g.nodes[i].inputs) last_use[v] = i;
  last_use[g.logits] = SIZE_MAX;
  std::vector<std::pair<uint64_t, uint64_t>> free_blocks;  // (offset, size), 16-float granules
  auto size_of = [&](uint32_t v) { return (p.shapes[v].rows * p.shapes[v].cols + 15) / 16 * 16; };
  auto allocate = [&](uint32_t v) {
    const uint64_t need = size_of(v);
    auto best = free_blocks.end();
    for (auto it = free_blocks.begin(); it != free_blocks.end(); ++it)
      if (it->second >= need && (best == free_blocks.end() || it->second < best->second)) best = it;
    if (best == free_blocks.end()) {
      p.offsets[v] = p.arena;
      p.arena += need;
      return;
    }
    p.offsets[v] = best->first;
    if (best->second == need) free_blocks.erase(best);
    else *best = {best->first + need, best->second - need};
  };
  allocate(0);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    for (uint32_t v : g.nodes[i].outputs) allocate(v);
    for (uint32_t v : g.nodes[i].inputs)
      if (last_use[v] == i) free_blocks.push_back({p.offsets[v], size_of(v)});
  }
  return &plans.emplace(key, std::move(p)).first->second;
}

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
  CODA_ASSIGN_OR_RETURN(im.kv, LatentKvCache::Create(c, options.n_ctx, options.kv_dtype));

  CODA_ASSIGN_OR_RETURN(im.placement, PlaceGraph(context, *s->model_, options));

  // Hand each backend the weights of the nodes it runs, once.
  const GraphRef& g = s->model_->file().graph();
  im.node_prepared.assign(g.nodes.size(), nullptr);
  for (const NodePlacement& p : im.placement)
    if (std::find(im.used.begin(), im.used.end(), p.backend) == im.used.end()) im.used.push_back(p.backend);
  for (Backend* b : im.used) {
    if (!b->has_prepare()) continue;
    std::vector<bool> seen(s->model_->file().tensors().size());
    Impl::Prepared p{b, {}, {}, nullptr};
    for (size_t i = 0; i < g.nodes.size(); ++i)
      if (im.placement[i].backend == b)
        for (int32_t w : g.nodes[i].weights)
          if (w >= 0 && !seen[static_cast<size_t>(w)]) {
            seen[static_cast<size_t>(w)] = true;
            p.weights.push_back(s->model_->tensor(w));
          }
    p.table = {sizeof(coda_weights), static_cast<uint32_t>(p.weights.size()), p.weights.data(), &s->model_->hparams()};
    auto handle = b->Prepare(p.table);
    if (!handle.ok()) return handle.status().WithContext("preparing the weights");
    p.handle = *handle;
    for (size_t i = 0; i < g.nodes.size(); ++i)
      if (im.placement[i].backend == b) im.node_prepared[i] = p.handle;
    im.prepared.push_back(std::move(p));
  }
  CODA_RETURN_IF_ERROR(im.PlaceKvCache(g));
  im.home.assign(g.n_values, nullptr);
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (Backend* b = im.placement[i].backend; b->uses_device_memory()) {
      for (uint32_t v : g.nodes[i].outputs) im.home[v] = b;
      im.device_arenas.emplace(b, Impl::DeviceArena{});
    }
  return s;
}

Status Session::Impl::PlaceKvCache(const GraphRef& g) {
  device_kv.assign(kv->n_layers(), {});
  std::vector<uint8_t> zeros;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const GraphNode& node = g.nodes[i];
    Backend* b = placement[i].backend;
    if (node.op != kMla || !b->uses_device_memory() || node.layer < 0 ||
        static_cast<uint32_t>(node.layer) >= kv->n_layers() || device_kv[static_cast<size_t>(node.layer)].buffer)
      continue;
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

  // Probe with each node's weights and its activations' dtypes and widths (rows: any).
  CODA_ASSIGN_OR_RETURN(std::vector<ValueShape> shapes, ValueShapes(model, 1, false));
  const GraphRef& g = model.file().graph();
  std::vector<NodePlacement> out;
  std::vector<coda_tensor> weights, in, outs;
  for (const GraphNode& node : g.nodes) {
    weights.clear();
    in.clear();
    outs.clear();
    for (int32_t w : node.weights) weights.push_back(w >= 0 ? model.tensor(w) : coda_tensor{});
    for (uint32_t v : node.inputs) in.push_back(ActivationTensor({0, shapes[v].cols, shapes[v].dtype}));
    for (uint32_t v : node.outputs) outs.push_back(ActivationTensor({0, shapes[v].cols, shapes[v].dtype}));
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
    if (node.op == kMla) {
      probe.kv.dtype = static_cast<uint32_t>(options.kv_dtype);
      probe.kv.row = model.config().kv_lora_rank + model.config().qk_rope_head_dim;
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

Session::~Session() = default;

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
  CODA_ASSIGN_OR_RETURN(const Plan* plan, im.GetPlan(*model_, n, all_logits));
  if (im.arena.size() < plan->arena) im.arena.resize(plan->arena);
  const GraphRef& g = model_->file().graph();
  // A value lives in its home backend's buffers (or the host arena); a consumer elsewhere reads
  // a host copy, made once.
  const std::vector<Backend*>& home = im.home;
  for (auto& [b, a] : im.device_arenas) {
    if (a.bytes >= plan->arena * 4) continue;
    if (a.buffer) b->FreeBuffer(a.buffer);
    a = {};
    auto buf = b->AllocBuffer(plan->arena * 4);
    if (!buf.ok()) return buf.status().WithContext("allocating activations on " + std::string(b->name()));
    a = {*buf, plan->arena * 4};
  }
  im.values.assign(g.n_values, coda_tensor{});
  im.host_valid.assign(g.n_values, true);
  for (uint32_t v = 0; v < g.n_values; ++v) {
    coda_tensor& t = im.values[v];
    t.dtype = plan->shapes[v].dtype;
    t.ndim = 2;
    t.shape[0] = plan->shapes[v].rows;
    t.shape[1] = plan->shapes[v].cols;
    t.data = im.arena.data() + plan->offsets[v];
    im.host_valid[v] = home[v] == nullptr;
  }
  std::memcpy(im.values[0].data, tokens.data(), tokens.size() * sizeof(int32_t));
  // The value as backend `b` reads or writes it: in b's buffers when that is its home.
  auto view = [&](uint32_t v, const Backend* b) {
    coda_tensor t = im.values[v];
    if (home[v] && home[v] == b) {
      t.data = nullptr;
      t.buffer = im.device_arenas.at(home[v]).buffer;
      t.offset = plan->offsets[v] * 4;
    }
    return t;
  };
  auto to_host = [&](uint32_t v) -> Status {
    if (im.host_valid[v]) return Status::Ok();
    const coda_tensor& t = im.values[v];
    CODA_RETURN_IF_ERROR(home[v]->Download(im.device_arenas.at(home[v]).buffer, plan->offsets[v] * 4, t.data,
                                           t.shape[0] * t.shape[1] * 4));
    CODA_RETURN_IF_ERROR(home[v]->Synchronize());
    im.host_valid[v] = true;
    return Status::Ok();
  };

  std::vector<coda_tensor> in, out, weights;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const GraphNode& node = g.nodes[i];
    Backend& b = *im.placement[i].backend;
    in.clear();
    out.clear();
    weights.clear();
    for (uint32_t v : node.inputs) {
      if (home[v] && home[v] != &b)
        if (Status c = to_host(v); !c.ok()) return c.WithContext("copying an input of '" + node.name + "' to the host");
      in.push_back(view(v, &b));
    }
    for (uint32_t v : node.outputs) out.push_back(view(v, &b));
    for (int32_t w : node.weights) weights.push_back(w >= 0 ? model_->tensor(w) : coda_tensor{});
    coda_op op{};
    op.struct_size = sizeof(coda_op);
    op.type = node.op;
    op.layer = node.layer;
    op.n_tokens = n;
    op.start_pos = start;
    if (node.op == kHead && !all_logits) {
      // Only the last row's logits: feed the head that row alone.
      coda_tensor& x = in[0];
      const uint64_t skip = static_cast<uint64_t>(n - 1) * x.shape[1];
      if (x.data) x.data = static_cast<float*>(x.data) + skip;
      else x.offset += skip * 4;
      x.shape[0] = 1;
      op.n_tokens = 1;
    }
    op.n_inputs = static_cast<uint32_t>(in.size());
    op.inputs = in.data();
    op.n_outputs = static_cast<uint32_t>(out.size());
    op.outputs = out.data();
    op.n_weights = static_cast<uint32_t>(weights.size());
    op.weights = weights.data();
    op.hparams = &model_->hparams();
    op.prepared = im.node_prepared[i];
    if (node.op == kMla) {
      op.kv.dtype = static_cast<uint32_t>(im.kv->dtype());
      op.kv.n_ctx = im.kv->n_ctx();
      op.kv.row = im.kv->row();
      if (coda_buffer buf = im.device_kv[static_cast<size_t>(node.layer)].buffer) op.kv.buffer = buf;
      else op.kv.data = im.kv->layer_data(static_cast<uint32_t>(node.layer));
    }
    Status s = b.Execute(op);
    if (!s.ok()) return s.WithContext(std::string(OpTypeName(node.op)) + " '" + node.name + "' on " + std::string(b.name()));
    if (observer_) {
      for (uint32_t v : node.outputs) CODA_RETURN_IF_ERROR(to_host(v));
      out.clear();
      for (uint32_t v : node.outputs) out.push_back(im.values[v]);
      observer_(node, out);
    }
  }
  CODA_RETURN_IF_ERROR(to_host(g.logits).WithContext("copying the logits to the host"));
  // Host-memory outputs are complete when execute() returns; this also settles any work a
  // backend still has queued before the cache counts the new positions.
  for (Backend* b : im.used) CODA_RETURN_IF_ERROR(b->Synchronize());
  im.kv->set_n_past(start + n);
  const coda_tensor& logits = im.values[g.logits];
  return std::span<const float>(static_cast<const float*>(logits.data), logits.shape[0] * logits.shape[1]);
}

Result<GenerateResult> Generate(Session& session, Sampler& sampler, std::span<const int32_t> prompt,
                                const GenerateOptions& options, const std::function<bool(int32_t)>& on_token) {
  using Clock = std::chrono::steady_clock;
  GenerateResult r;
  r.prompt_tokens = static_cast<uint32_t>(prompt.size());
  if (!options.stop_strings.empty() && !options.token_text)
    return InvalidArgument("stop strings need a token_text function");
  auto t0 = Clock::now();
  CODA_ASSIGN_OR_RETURN(std::span<const float> logits, session.Forward(prompt));
  r.prefill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<int32_t> recent(prompt.end() - std::min<size_t>(prompt.size(), options.repetition_window), prompt.end());
  std::string text;
  size_t longest_stop = 0;
  for (const auto& s : options.stop_strings) longest_stop = std::max(longest_stop, s.size());
  t0 = Clock::now();
  for (uint32_t i = 0; i < options.max_new_tokens; ++i) {
    const int32_t tok = sampler.Sample(logits, recent);
    if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), tok) != options.stop_tokens.end()) {
      r.stop = GenerateResult::Stop::kStopToken;
      break;
    }
    r.tokens.push_back(tok);
    recent.push_back(tok);
    if (recent.size() > options.repetition_window) recent.erase(recent.begin());
    if (on_token && !on_token(tok)) {
      r.stop = GenerateResult::Stop::kCallback;
      break;
    }
    if (longest_stop) {
      text += options.token_text(tok);
      bool hit = false;
      for (const auto& s : options.stop_strings) hit = hit || (!s.empty() && text.find(s) != std::string::npos);
      if (hit) {
        r.stop = GenerateResult::Stop::kStopString;
        break;
      }
      if (text.size() > 4 * longest_stop) text.erase(0, text.size() - 2 * longest_stop);
    }
    if (i + 1 == options.max_new_tokens) break;
    const int32_t next[1] = {tok};
    auto step = session.Forward(next);
    if (!step.ok()) return step.status();
    logits = *step;
  }
  r.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return r;
}

}  // namespace coda
