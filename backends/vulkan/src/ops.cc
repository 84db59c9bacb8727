#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend_util.h"
#include "coda_ops.hpp"

namespace coda::vk {

namespace {

using backend_util::Elements;
using backend_util::TensorBytes;

constexpr uint32_t kMaxRow = 2048;  // mla_attend.comp keeps a query row in shared memory
constexpr uint32_t kMaxGridX = 65535;
constexpr uint64_t kScoreBytes = 64ull << 20;  // attention scores per dispatch chunk

uint64_t Rows(const coda_tensor& t) { return t.ndim >= 2 ? t.shape[0] : 1; }
uint64_t Cols(const coda_tensor& t) { return t.ndim >= 2 ? t.shape[1] : t.shape[0]; }
uint32_t U32(uint64_t v) { return static_cast<uint32_t>(v); }
uint32_t Ceil(uint64_t a, uint64_t b) { return static_cast<uint32_t>((a + b - 1) / b); }

// A span as a kernel binds it: the descriptor starts at an aligned offset, and `elem` is where
// the data begins inside it, in elements of `elem_bytes`.
struct Bound {
  Span span;
  uint32_t elem = 0;
};

// A weight as the kernels read it.
struct WeightView {
  Bound data, scale;
  uint32_t dtype = 0, block = 128, s_cols = 0;
  uint64_t rows = 0, cols = 0;
};

// The work of one execute(): per-call memory, uploads of host inputs, downloads of host outputs.
class Call {
 public:
  Call(Instance& in, const Prepared* prepared) : in_(in), dev_(*in.device), prepared_(prepared) {
    in_.scratch->Reset();
    in_.staging->Reset();
  }

  std::string Scratch(uint64_t bytes, Span* out) { return in_.scratch->Allocate(bytes, out); }

  // Host bytes into fresh device memory.
  std::string Upload(const void* data, uint64_t bytes, Span* out) {
    std::string e = Scratch(bytes, out);
    if (!e.empty() || bytes == 0) return e;
    if (uint8_t* p = out->host()) {
      std::memcpy(p, data, bytes);
      return "";
    }
    Span st;
    e = in_.staging->Allocate(bytes, &st);
    if (!e.empty()) return e;
    std::memcpy(st.host(), data, bytes);
    return dev_.Copy(st, *out);
  }

  // A tensor in host memory (uploaded) or in one of our buffers (used in place).
  std::string Tensor(const coda_tensor& t, uint64_t bytes, bool is_output, Span* out) {
    if (t.buffer) {
      const coda_buffer_impl* b = t.buffer;
      if (t.offset > b->size || bytes > b->size - t.offset)
        return "a tensor of " + std::to_string(bytes) + " bytes at offset " + std::to_string(t.offset) +
               " lies outside its buffer of " + std::to_string(b->size) + " bytes";
      *out = {&b->block, t.offset, bytes};
      return "";
    }
    if (!t.data) return "a tensor has neither host memory nor a buffer";
    if (!is_output) return Upload(t.data, bytes, out);
    std::string e = Scratch(bytes, out);
    if (e.empty()) downloads_.push_back({*out, t.data, bytes});
    return e;
  }
  std::string Input(const coda_tensor& t, Span* out) { return Tensor(t, TensorBytes(t), false, out); }
  std::string Output(const coda_tensor& t, Span* out) { return Tensor(t, TensorBytes(t), true, out); }
  // Host memory the ops fill after the call (the KV cache rows of a host-memory cache).
  void DownloadTo(const Span& src, void* dst) { downloads_.push_back({src, dst, src.size}); }

  std::string Weight(const coda_tensor& t, WeightView* w) {
    w->dtype = t.dtype;
    w->rows = Rows(t);
    w->cols = Cols(t);
    Span s;
    std::string e = WeightSpan(t, &s);
    if (e.empty()) e = Bind(s, coda_dtype_size(t.dtype), &w->data);
    if (!e.empty() || t.dtype != CODA_DTYPE_FP8_E4M3) return e;
    w->block = t.block ? t.block : 128;
    w->s_cols = U32(t.scale->shape[1]);
    e = WeightSpan(*t.scale, &s);
    return e.empty() ? Bind(s, 4, &w->scale) : e;
  }

  std::string Bind(const Span& s, uint32_t elem_bytes, Bound* out) {
    const uint64_t a = dev_.binding_alignment();
    const uint64_t base = s.offset / a * a, rem = s.offset - base;
    if (rem % elem_bytes != 0 || rem % 4 != 0)
      return "data at byte offset " + std::to_string(s.offset) + " is not aligned to 4 bytes";
    if (s.size + rem > dev_.max_binding())
      return "a tensor of " + std::to_string(s.size) + " bytes exceeds the device's largest storage binding (" +
             std::to_string(dev_.max_binding()) + " bytes)";
    // Kernels read whole words: the range covers the last partial one (blocks are word-sized).
    const uint64_t range = std::min((s.size + rem + 3) / 4 * 4, s.block->size - base);
    *out = {{s.block, base, range}, U32(rem / elem_bytes)};
    return "";
  }
  std::string BindInput(const coda_tensor& t, Bound* out) {
    Span s;
    std::string e = Input(t, &s);
    return e.empty() ? Bind(s, coda_dtype_size(t.dtype), out) : e;
  }
  std::string BindOutput(const coda_tensor& t, Bound* out) {
    Span s;
    std::string e = Output(t, &s);
    return e.empty() ? Bind(s, coda_dtype_size(t.dtype), out) : e;
  }
  std::string BindScratch(uint64_t bytes, Bound* out) {
    Span s;
    std::string e = Scratch(bytes, &s);
    return e.empty() ? Bind(s, 4, out) : e;
  }

  // Small device data the host needs now (routing decisions).
  std::string ReadNow(const coda_tensor& t, std::vector<uint8_t>* out) {
    out->resize(TensorBytes(t));
    if (!t.buffer) {
      std::memcpy(out->data(), t.data, out->size());
      return "";
    }
    Span s;
    std::string e = Input(t, &s);
    return e.empty() ? dev_.Read(s, out->data(), out->size()) : e;
  }

  // Runs what was recorded and copies host outputs back.
  std::string Finish() {
    std::vector<Span> from(downloads_.size());
    for (size_t i = 0; i < downloads_.size(); ++i) {
      from[i] = downloads_[i].src;
      if (from[i].host() || downloads_[i].size == 0) continue;
      std::string e = in_.staging->Allocate(downloads_[i].size, &from[i]);
      if (e.empty()) e = dev_.Copy(downloads_[i].src, from[i]);
      if (!e.empty()) return e;
    }
    std::string e = dev_.Submit();
    if (!e.empty()) return e;
    for (size_t i = 0; i < downloads_.size(); ++i)
      if (downloads_[i].size) std::memcpy(downloads_[i].dst, from[i].host(), downloads_[i].size);
    return "";
  }

  Device& dev() { return dev_; }
  backend_util::RopeCache& rope_cache() { return in_.rope; }

 private:
  std::string WeightSpan(const coda_tensor& t, Span* out) {
    if (prepared_)
      if (auto it = prepared_->spans.find(t.data); it != prepared_->spans.end()) {
        *out = it->second;
        return "";
      }
    if (t.buffer) return Tensor(t, TensorBytes(t), false, out);
    if (!t.data) return "a weight is missing";
    return Upload(t.data, TensorBytes(t), out);  // not prepared: this call only
  }

  struct Download {
    Span src;
    void* dst;
    uint64_t size;
  };
  Instance& in_;
  Device& dev_;
  const Prepared* prepared_;
  std::vector<Download> downloads_;
};

// ---- Kernels, with push constants laid out as in the shaders ----

struct LinearPush {
  uint32_t n, rows, cols;
  uint32_t x_off, x_stride, x_zoff;
  uint32_t y_off, y_stride, y_zoff;
  uint32_t w_off, w_row0, w_zrows, w_dtype;
  uint32_t s_off, s_cols, block;
  uint32_t mode, idx_off, alpha_off;
};

// y[t, r] = x[t] . W[r] for n rows of x (strides in floats); `z` problems side by side.
struct LinearArgs {
  const WeightView* w;
  Bound x, y;
  uint32_t n = 0, rows = 0, x_stride = 0, y_stride = 0;
  uint32_t z = 1, x_zoff = 0, y_zoff = 0, w_row0 = 0, w_zrows = 0;
  uint32_t mode = 0;
  Bound idx, alpha;
};

std::string Linear(Call& c, const LinearArgs& a) {
  const WeightView& w = *a.w;
  LinearPush p{a.n, a.rows, U32(w.cols), a.x.elem, a.x_stride, a.x_zoff, a.y.elem, a.y_stride, a.y_zoff,
               w.data.elem, a.w_row0, a.w_zrows, w.dtype, w.scale.elem, w.s_cols, w.block, a.mode, a.idx.elem,
               a.alpha.elem};
  return c.dev().Dispatch(kLinear, {a.x.span, w.data.span, w.scale.span, a.y.span, a.idx.span, a.alpha.span}, &p,
                          sizeof p, std::min(Ceil(a.rows, 8), kMaxGridX), Ceil(a.n, 4), a.z);
}

// y = x W^T over n contiguous rows.
LinearArgs RowArgs(const WeightView& w, const Bound& x, uint32_t n, const Bound& y) {
  LinearArgs a{&w, x, y};
  a.n = n;
  a.rows = U32(w.rows);
  a.x_stride = U32(w.cols);
  a.y_stride = U32(w.rows);
  return a;
}

std::string LinearRows(Call& c, const WeightView& w, const Bound& x, uint32_t n, const Bound& y) {
  return Linear(c, RowArgs(w, x, n, y));
}

std::string RmsNorm(Call& c, const Bound& x, uint32_t n, uint32_t d, uint32_t x_stride, const Bound& y,
                    uint32_t y_stride, const WeightView& w, float eps) {
  struct {
    uint32_t n, d, x_off, x_stride, y_off, y_stride, w_off, w_dtype;
    float eps;
  } p{n, d, x.elem, x_stride, y.elem, y_stride, w.data.elem, w.dtype, eps};
  return c.dev().Dispatch(kRmsNorm, {x.span, w.data.span, y.span}, &p, sizeof p, std::min(n, kMaxGridX));
}

std::string Swiglu(Call& c, const Bound& g, const Bound& u, uint64_t count) {
  struct {
    uint32_t count, g_off, u_off;
  } p{U32(count), g.elem, u.elem};
  return c.dev().Dispatch(kSwiglu, {g.span, u.span}, &p, sizeof p, std::min(Ceil(count, 64), kMaxGridX));
}

// SwiGLU MLP: y = down(silu(gate x) * up x); with `idx`, x rows are gathered and y rows
// scattered-added with weights `alpha` (one routed expert).
std::string SwigluMlp(Call& c, const WeightView& gate, const WeightView& up, const WeightView& down, const Bound& x,
                      uint32_t n, const Bound& y, const Bound* idx, const Bound* alpha, const Bound& g, const Bound& u) {
  LinearArgs a = RowArgs(gate, x, n, g);
  if (idx) {
    a.mode = 1;
    a.idx = *idx;
  }
  std::string e = Linear(c, a);
  a.w = &up;
  a.y = u;
  if (e.empty()) e = Linear(c, a);
  if (e.empty()) e = Swiglu(c, g, u, static_cast<uint64_t>(n) * gate.rows);
  if (!e.empty()) return e;
  LinearArgs d = RowArgs(down, g, n, y);
  if (idx) {
    d.mode = 2;
    d.idx = *idx;
    d.alpha = *alpha;
  }
  return Linear(c, d);
}

std::string Embed(Call& c, const coda_op& op) {
  std::vector<uint8_t> ids;
  std::string e = c.ReadNow(op.inputs[0], &ids);
  if (!e.empty()) return e;
  const coda_tensor& table = op.weights[0];
  for (uint32_t t = 0; t < op.n_tokens; ++t) {
    int32_t id;
    std::memcpy(&id, ids.data() + 4 * t, 4);
    if (id < 0 || static_cast<uint64_t>(id) >= Rows(table))
      return "token id " + std::to_string(id) + " at row " + std::to_string(t) + " is outside the table of " +
             std::to_string(Rows(table)) + " rows";
  }
  Bound in, out;
  WeightView w;
  e = c.BindInput(op.inputs[0], &in);
  if (e.empty()) e = c.Weight(table, &w);
  if (e.empty()) e = c.BindOutput(op.outputs[0], &out);
  if (!e.empty()) return e;
  struct {
    uint32_t n, h, ids_off, y_off, w_off, w_dtype, s_off, s_cols, block;
  } p{op.n_tokens, U32(Cols(table)), in.elem, out.elem, w.data.elem, w.dtype, w.scale.elem, w.s_cols, w.block};
  return c.dev().Dispatch(kEmbed, {in.span, w.data.span, w.scale.span, out.span}, &p, sizeof p,
                          std::min(op.n_tokens, kMaxGridX));
}

std::string Rope(Call& c, const Bound& x, uint32_t n, uint32_t nvec, uint32_t dr, uint32_t x_off, uint32_t t_stride,
                 uint32_t v_stride, const Bound& cs) {
  struct {
    uint32_t n, nvec, dr, x_off, t_stride, v_stride, cs_off;
  } p{n, nvec, dr, x.elem + x_off, t_stride, v_stride, cs.elem};
  return c.dev().Dispatch(kRope, {x.span, cs.span}, &p, sizeof p, std::min(n, kMaxGridX), std::min(nvec, kMaxGridX));
}

std::string Mla(Call& c, const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const uint32_t n = op.n_tokens, H = hp.n_heads, dn = hp.qk_nope_head_dim, dr = hp.qk_rope_head_dim,
                 dv = hp.v_head_dim, cl = hp.kv_lora_rank, qk = dn + dr, row = cl + dr, start = op.start_pos;
  if (static_cast<uint64_t>(start) + n > op.kv.n_ctx)
    return "the KV cache holds " + std::to_string(op.kv.n_ctx) + " positions; positions up to " +
           std::to_string(static_cast<uint64_t>(start) + n) + " were asked for";
  const uint32_t total = start + n;
  if (op.kv.row != row) return "the KV cache row has " + std::to_string(op.kv.row) + " values, not " + std::to_string(row);
  const coda_tensor* wt = op.weights;
  WeightView w[8];
  for (int i = 0; i < 8; ++i)
    if (wt[i].data || wt[i].buffer) {
      std::string e = c.Weight(wt[i], &w[i]);
      if (!e.empty()) return e;
    }
  const WeightView& kvb_w = w[6];
  if (kvb_w.cols != cl || kvb_w.rows != static_cast<uint64_t>(H) * (dn + dv))
    return "kv_b_proj is " + std::to_string(kvb_w.rows) + "x" + std::to_string(kvb_w.cols) + ", expected " +
           std::to_string(static_cast<uint64_t>(H) * (dn + dv)) + "x" + std::to_string(cl);
  const bool q_lora = wt[0].data || wt[0].buffer;
  Bound x, out, q, kv, cs, ql, ol, o;
  std::string e = c.BindInput(op.inputs[0], &x);
  if (e.empty()) e = c.BindOutput(op.outputs[0], &out);
  if (e.empty()) e = c.BindScratch(4ull * n * H * qk, &q);
  if (e.empty()) e = c.BindScratch(4ull * n * row, &kv);
  if (!e.empty()) return e;
  // Queries, and the new latent rows normalized and rotated.
  if (q_lora) {
    Bound qa;
    e = c.BindScratch(4ull * n * w[0].rows, &qa);
    if (e.empty()) e = LinearRows(c, w[0], x, n, qa);
    if (e.empty()) e = RmsNorm(c, qa, n, U32(w[0].rows), U32(w[0].rows), qa, U32(w[0].rows), w[1], hp.rms_norm_eps);
    if (e.empty()) e = LinearRows(c, w[2], qa, n, q);
  } else {
    e = LinearRows(c, w[3], x, n, q);
  }
  if (e.empty()) e = LinearRows(c, w[4], x, n, kv);
  if (e.empty()) e = RmsNorm(c, kv, n, cl, row, kv, row, w[5], hp.rms_norm_eps);
  const std::vector<float>& table = backend_util::RopeTable(c.rope_cache(), hp, start, n);
  Span cs_span;
  if (e.empty()) e = c.Upload(table.data(), table.size() * 4, &cs_span);
  if (e.empty()) e = c.Bind(cs_span, 4, &cs);
  if (e.empty()) e = Rope(c, kv, n, 1, dr, cl, row, 0, cs);
  if (e.empty()) e = Rope(c, q, n, H, dr, dn, H * qk, qk, cs);
  if (!e.empty()) return e;

  // The cache: this layer's slab in one of our buffers, or host memory staged through the call.
  const uint32_t kvb = op.kv.dtype == CODA_DTYPE_BF16 ? 2 : 4;
  const uint64_t used = static_cast<uint64_t>(total) * row * kvb;
  Span cache;
  if (op.kv.buffer) {
    coda_tensor t{};
    t.buffer = op.kv.buffer;
    t.offset = op.kv.offset;
    e = c.Tensor(t, used, false, &cache);
  } else {
    if (!op.kv.data) return "the KV cache has neither host memory nor a buffer";
    const uint64_t before = static_cast<uint64_t>(start) * row * kvb;
    e = c.Scratch(used, &cache);
    if (e.empty() && before) {
      Span head;
      e = c.Upload(op.kv.data, before, &head);
      if (e.empty()) e = c.dev().Copy(head, {cache.block, cache.offset, before});
    }
    if (e.empty()) c.DownloadTo({cache.block, cache.offset + before, used - before}, static_cast<uint8_t*>(op.kv.data) + before);
  }
  Bound k;
  if (e.empty()) e = c.Bind(cache, kvb, &k);
  if (!e.empty()) return e;
  {
    struct {
      uint32_t count, x_off, k_off, first, dtype;
    } p{n * row, kv.elem, k.elem, start * row, op.kv.dtype};
    e = c.dev().Dispatch(kKvStore, {kv.span, k.span}, &p, sizeof p, std::min(Ceil(static_cast<uint64_t>(n) * row, 128), kMaxGridX));
    if (!e.empty()) return e;
  }

  // Absorbed attention: W_UK folded into the queries, scores against the latent cache, W_UV
  // applied to the attended latent, then o_proj.
  e = c.BindScratch(4ull * n * H * cl, &ql);
  if (e.empty()) e = c.BindScratch(4ull * n * H * cl, &ol);
  if (e.empty()) e = c.BindScratch(4ull * n * H * dv, &o);
  if (!e.empty()) return e;
  {
    struct {
      uint32_t n, heads, c, dn, dv, qk, q_off, ql_off, w_off, w_dtype, s_off, s_cols, block;
    } p{n, H, cl, dn, dv, qk, q.elem, ql.elem, kvb_w.data.elem, kvb_w.dtype, kvb_w.scale.elem, kvb_w.s_cols, kvb_w.block};
    e = c.dev().Dispatch(kMlaAbsorb, {q.span, kvb_w.data.span, kvb_w.scale.span, ql.span}, &p, sizeof p, Ceil(cl, 64), H,
                         std::min(n, kMaxGridX));
    if (!e.empty()) return e;
  }
  // Scores need tokens x heads x positions floats: chunks of tokens keep that bounded.
  const uint64_t per_token = 4ull * H * total;
  const uint32_t chunk = static_cast<uint32_t>(
      std::clamp<uint64_t>(std::min<uint64_t>(kScoreBytes, c.dev().max_binding()) / per_token, 1, std::min(n, kMaxGridX)));
  Bound sc;
  e = c.BindScratch(per_token * chunk, &sc);
  for (uint32_t t0 = 0; e.empty() && t0 < n; t0 += chunk) {
    struct {
      uint32_t n, heads, c, dr, dn, qk, start, t0;
      uint32_t ql_off, q_off, k_off, k_dtype, sc_off, sc_stride, ol_off;
      float scale;
    } p{n, H, cl, dr, dn, qk, start, t0, ql.elem, q.elem, k.elem, op.kv.dtype, sc.elem, total, ol.elem, hp.softmax_scale};
    e = c.dev().Dispatch(kMlaAttend, {ql.span, q.span, k.span, sc.span, ol.span}, &p, sizeof p, H, std::min(chunk, n - t0));
  }
  if (!e.empty()) return e;
  LinearArgs a{&kvb_w, ol, o};
  a.n = n;
  a.rows = dv;
  a.x_stride = H * cl;
  a.y_stride = H * dv;
  a.z = H;
  a.x_zoff = cl;
  a.y_zoff = dv;
  a.w_row0 = dn;
  a.w_zrows = dn + dv;
  e = Linear(c, a);
  return e.empty() ? LinearRows(c, w[7], o, n, out) : e;
}

std::string MoeGate(Call& c, const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const uint32_t n = op.n_tokens, E = hp.n_routed_experts, K = hp.n_experts_per_tok;
  WeightView router, bias;
  Bound x, logits, sc, sel, ids, wts;
  const bool has_bias = op.n_weights > 1 && (op.weights[1].data || op.weights[1].buffer);
  std::string e = c.Weight(op.weights[0], &router);
  if (e.empty() && has_bias) e = c.Weight(op.weights[1], &bias);
  if (e.empty()) e = c.BindInput(op.inputs[0], &x);
  if (e.empty()) e = c.BindOutput(op.outputs[0], &ids);
  if (e.empty()) e = c.BindOutput(op.outputs[1], &wts);
  if (e.empty()) e = c.BindScratch(4ull * n * E, &logits);
  if (e.empty()) e = c.BindScratch(4ull * n * E, &sc);
  if (e.empty()) e = c.BindScratch(4ull * n * E, &sel);
  if (e.empty()) e = LinearRows(c, router, x, n, logits);
  if (!e.empty()) return e;
  struct {
    uint32_t n, E, K, G, topk_group, softmax, has_bias, bias_dtype, norm;
    uint32_t l_off, ids_off, w_off, bias_off;
    float scaling;
  } p{n, E, K, std::max(1u, hp.n_group), hp.topk_group, hp.scoring_func == 0 ? 1u : 0u, has_bias ? 1u : 0u, bias.dtype,
      hp.norm_topk_prob, logits.elem, ids.elem, wts.elem, bias.data.elem, hp.routed_scaling_factor};
  return c.dev().Dispatch(kMoeRoute, {logits.span, bias.data.span, sc.span, sel.span, ids.span, wts.span}, &p, sizeof p,
                          std::min(Ceil(n, 64), kMaxGridX));
}

std::string MoeExperts(Call& c, const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const uint32_t n = op.n_tokens, K = hp.n_experts_per_tok, E = hp.n_routed_experts;
  std::vector<uint8_t> ids_raw, wts_raw;
  std::string e = c.ReadNow(op.inputs[1], &ids_raw);
  if (e.empty()) e = c.ReadNow(op.inputs[2], &wts_raw);
  if (!e.empty()) return e;
  // Tokens grouped by expert, so each expert's weights are read once; one list per expert.
  std::vector<std::vector<uint32_t>> tokens(E);
  std::vector<std::vector<float>> alphas(E);
  for (uint32_t t = 0; t < n; ++t)
    for (uint32_t j = 0; j < K; ++j) {
      int32_t id;
      float a;
      std::memcpy(&id, ids_raw.data() + 4 * (static_cast<size_t>(t) * K + j), 4);
      std::memcpy(&a, wts_raw.data() + 4 * (static_cast<size_t>(t) * K + j), 4);
      if (id < 0 || static_cast<uint32_t>(id) >= E) return "expert id " + std::to_string(id) + " out of range";
      // A token listed twice for one expert would have two kernel rows add into its output at
      // once: a repeated pair's weight joins the first one's instead.
      std::vector<uint32_t>& list = tokens[static_cast<uint32_t>(id)];
      if (!list.empty() && list.back() == t) {
        alphas[static_cast<uint32_t>(id)].back() += a;
        continue;
      }
      list.push_back(t);
      alphas[static_cast<uint32_t>(id)].push_back(a);
    }
  std::vector<uint32_t> lists;
  std::vector<float> weights;
  uint32_t most = 0;
  uint64_t width = 0;
  for (uint32_t x = 0; x < E; ++x) {
    lists.insert(lists.end(), tokens[x].begin(), tokens[x].end());
    weights.insert(weights.end(), alphas[x].begin(), alphas[x].end());
    most = std::max(most, static_cast<uint32_t>(tokens[x].size()));
    if (!tokens[x].empty()) width = std::max(width, Rows(op.weights[3 * x]));
  }
  Bound x, y, idx, alpha, g, u;
  Span list_span, weight_span, y_span;
  e = c.BindInput(op.inputs[0], &x);
  if (e.empty()) e = c.Output(op.outputs[0], &y_span);
  if (e.empty()) e = c.Bind(y_span, 4, &y);
  if (e.empty()) e = c.dev().Fill(y_span, 0);
  if (e.empty()) e = c.Upload(lists.data(), lists.size() * 4, &list_span);
  if (e.empty()) e = c.Bind(list_span, 4, &idx);
  if (e.empty()) e = c.Upload(weights.data(), weights.size() * 4, &weight_span);
  if (e.empty()) e = c.Bind(weight_span, 4, &alpha);
  if (e.empty()) e = c.BindScratch(4ull * most * width, &g);
  if (e.empty()) e = c.BindScratch(4ull * most * width, &u);
  uint32_t at = 0;
  for (uint32_t ex = 0; e.empty() && ex < E; ++ex) {
    const uint32_t m = static_cast<uint32_t>(tokens[ex].size());
    if (m == 0) continue;
    WeightView gate, up, down;
    e = c.Weight(op.weights[3 * ex], &gate);
    if (e.empty()) e = c.Weight(op.weights[3 * ex + 1], &up);
    if (e.empty()) e = c.Weight(op.weights[3 * ex + 2], &down);
    Bound ei = idx, ea = alpha;
    ei.elem += at;
    ea.elem += at;
    if (e.empty()) e = SwigluMlp(c, gate, up, down, x, m, y, &ei, &ea, g, u);
    at += m;
  }
  return e;
}

std::string Mlp(Call& c, const coda_op& op) {
  WeightView gate, up, down;
  Bound x, y, g, u;
  const uint32_t n = op.n_tokens;
  std::string e = c.Weight(op.weights[0], &gate);
  if (e.empty()) e = c.Weight(op.weights[1], &up);
  if (e.empty()) e = c.Weight(op.weights[2], &down);
  if (e.empty()) e = c.BindInput(op.inputs[0], &x);
  if (e.empty()) e = c.BindOutput(op.outputs[0], &y);
  if (e.empty()) e = c.BindScratch(4ull * n * gate.rows, &g);
  if (e.empty()) e = c.BindScratch(4ull * n * gate.rows, &u);
  return e.empty() ? SwigluMlp(c, gate, up, down, x, n, y, nullptr, nullptr, g, u) : e;
}

std::string Run(Call& c, const coda_op& op) {
  const uint32_t n = op.n_tokens;
  switch (op.type) {
    case CODA_OP_EMBED: return Embed(c, op);
    case CODA_OP_RMS_NORM: {
      WeightView w;
      Bound x, y;
      const uint32_t d = U32(op.inputs[0].shape[1]);
      std::string e = c.Weight(op.weights[0], &w);
      if (e.empty()) e = c.BindInput(op.inputs[0], &x);
      if (e.empty()) e = c.BindOutput(op.outputs[0], &y);
      return e.empty() ? RmsNorm(c, x, n, d, d, y, d, w, op.hparams->rms_norm_eps) : e;
    }
    case CODA_OP_LINEAR:
    case CODA_OP_HEAD: {
      WeightView w;
      Bound x, y;
      std::string e = c.Weight(op.weights[0], &w);
      if (e.empty()) e = c.BindInput(op.inputs[0], &x);
      if (e.empty()) e = c.BindOutput(op.outputs[0], &y);
      return e.empty() ? LinearRows(c, w, x, U32(op.inputs[0].shape[0]), y) : e;
    }
    case CODA_OP_MLA_ATTENTION: return Mla(c, op);
    case CODA_OP_MOE_GATE: return MoeGate(c, op);
    case CODA_OP_MOE_EXPERTS: return MoeExperts(c, op);
    case CODA_OP_MLP: return Mlp(c, op);
    case CODA_OP_ADD: {
      Bound a, b, y;
      std::string e = c.BindInput(op.inputs[0], &a);
      if (e.empty()) e = c.BindInput(op.inputs[1], &b);
      if (e.empty()) e = c.BindOutput(op.outputs[0], &y);
      if (!e.empty()) return e;
      const uint64_t count = Elements(op.inputs[0]);
      struct {
        uint32_t count, a_off, b_off, y_off;
      } p{U32(count), a.elem, b.elem, y.elem};
      return c.dev().Dispatch(kAdd, {a.span, b.span, y.span}, &p, sizeof p, std::min(Ceil(count, 64), kMaxGridX));
    }
    case CODA_OP_CONCAT: {
      // Row by row, buffer to buffer: two copies per row, no kernel.
      Span a, b, y;
      std::string e = c.Input(op.inputs[0], &a);
      if (e.empty()) e = c.Input(op.inputs[1], &b);
      if (e.empty()) e = c.Output(op.outputs[0], &y);
      const uint64_t pa = op.inputs[0].shape[1] * 4, pb = op.inputs[1].shape[1] * 4;
      for (uint64_t t = 0; e.empty() && t < op.n_tokens; ++t) {
        e = c.dev().Copy({a.block, a.offset + t * pa, pa}, {y.block, y.offset + t * (pa + pb), pa});
        if (e.empty()) e = c.dev().Copy({b.block, b.offset + t * pb, pb}, {y.block, y.offset + t * (pa + pb) + pa, pb});
      }
      return e;
    }
    default: return "unknown op " + std::to_string(op.type);
  }
}

bool Present(const coda_tensor& t) { return t.data || t.buffer; }

}  // namespace

std::string PrepareWeights(Instance& in, const coda_weights& weights, Prepared* out) {
  Device& dev = *in.device;
  // Weights share large blocks (a device allows only so many allocations); each tensor starts
  // at a binding-aligned offset.
  const uint64_t align = dev.binding_alignment();
  auto padded = [&](const coda_tensor& t) { return ((TensorBytes(t) + 3) / 4 * 4 + align - 1) / align * align; };
  uint64_t total = 0;  // blocks of at most 256 MiB, smaller when the weights are
  for (uint32_t i = 0; i < weights.n_tensors; ++i) {
    total += padded(weights.tensors[i]);
    if (weights.tensors[i].dtype == CODA_DTYPE_FP8_E4M3 && weights.tensors[i].scale) total += padded(*weights.tensors[i].scale);
  }
  const uint64_t kBlock = std::min<uint64_t>(256ull << 20, std::max<uint64_t>(total, align));
  uint64_t used = kBlock;
  auto place = [&](const coda_tensor& t) -> std::string {
    if (!t.data || out->spans.count(t.data)) return "";
    const uint64_t bytes = std::max<uint64_t>((TensorBytes(t) + 3) / 4 * 4, 4);
    uint64_t at = (used + align - 1) / align * align;
    if (out->blocks.empty() || at + bytes > out->blocks.back()->size) {
      auto b = std::make_unique<Block>();
      std::string e = dev.Allocate(std::max(bytes, kBlock), false, b.get());
      if (!e.empty()) return e;
      out->blocks.push_back(std::move(b));
      at = 0;
    }
    const Span s{out->blocks.back().get(), at, TensorBytes(t)};
    used = at + bytes;
    out->spans.emplace(t.data, s);
    return dev.Write(s, t.data, s.size);
  };
  for (uint32_t i = 0; i < weights.n_tensors; ++i) {
    const coda_tensor& t = weights.tensors[i];
    std::string e = place(t);
    if (e.empty() && t.dtype == CODA_DTYPE_FP8_E4M3 && t.scale) e = place(*t.scale);
    if (!e.empty()) return e;
  }
  return dev.Submit();
}

std::string CheckOp(const Instance& in, const coda_op& op) {
  switch (static_cast<coda_op_type>(op.type)) {
    case CODA_OP_EMBED: case CODA_OP_RMS_NORM: case CODA_OP_LINEAR: case CODA_OP_MLA_ATTENTION: case CODA_OP_MOE_GATE:
    case CODA_OP_MOE_EXPERTS: case CODA_OP_MLP: case CODA_OP_ADD: case CODA_OP_HEAD: case CODA_OP_CONCAT: break;
    default: return "op " + std::to_string(op.type) + " is not one the Vulkan backend runs";
  }
  if (std::string e = ops::Check(op); !e.empty()) return e;
  const Device& dev = *in.device;
  for (uint32_t i = 0; i < op.n_weights; ++i) {
    const coda_tensor& t = op.weights[i];
    if (!Present(t)) continue;
    if (t.dtype != CODA_DTYPE_F32 && t.dtype != CODA_DTYPE_BF16 && t.dtype != CODA_DTYPE_FP8_E4M3)
      return "weight dtype " + std::string(coda_dtype_name(t.dtype)) + " is not supported by the Vulkan backend";
    if (t.scale && TensorBytes(*t.scale) > dev.max_binding()) return "FP8 scales exceed the device's largest storage binding";
    if (TensorBytes(t) > dev.max_binding())
      return "a weight of " + std::to_string(TensorBytes(t)) + " bytes exceeds the device's largest storage binding (" +
             std::to_string(dev.max_binding()) + " bytes)";
  }
  const coda_hparams& hp = *op.hparams;
  switch (op.type) {
    case CODA_OP_MLA_ATTENTION:
      if (hp.kv_lora_rank + hp.qk_rope_head_dim > kMaxRow)
        return "latent rows longer than " + std::to_string(kMaxRow) + " values are not supported";
      if (hp.qk_rope_head_dim % 2) return "the rope dimension must be even";
      if (op.kv.dtype != CODA_DTYPE_BF16 && op.kv.dtype != CODA_DTYPE_F32) return "KV cache dtype must be BF16 or F32";
      return "";
    case CODA_OP_MOE_GATE: {
      if (std::string e = backend_util::RoutingUnsupported(hp, 32); !e.empty()) return e;
      if (Present(op.weights[1]) && op.weights[1].dtype == CODA_DTYPE_FP8_E4M3) return "an FP8 routing bias is not supported";
      return "";
    }
    default: return "";
  }
}

std::string RunOp(Instance& in, const coda_op& op) {
  if (op.n_tokens == 0) return "";
  Call call(in, static_cast<const Prepared*>(op.prepared));
  std::string e = Run(call, op);
  if (e.empty()) e = call.Finish();
  // Nothing half-recorded may run with the next call: the instance stays usable.
  if (!e.empty()) in.device->Discard();
  return e;
}

}  // namespace coda::vk
