// The CUDA backend's ops: each one's device memory resolved (its buffers, the weights prepare()
// uploaded, host tensors copied through scratch), its kernels launched on the compute stream
// (kernels.h), and its host outputs copied back.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "coda_ops.hpp"
#include "instance.h"

namespace coda::cuda {
namespace {

using backend_util::TensorBytes;

uint64_t Pad(uint64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// A weight the FP8 tensor-core products may take, as far as the host tensor tells (its device
// address is checked by Fp8Weight once known).
bool Fp8Tensor(const coda_tensor& t) {
  return (t.data || t.buffer) && t.dtype == CODA_DTYPE_FP8_E4M3 && t.ndim == 2 && (t.block == 0 || t.block == 128) &&
         t.shape[1] % 128 == 0;
}

// The work of one execute(): host inputs uploaded to scratch, host outputs downloaded at the end.
class Call {
 public:
  Call(Instance& in, const Prepared* prepared, Capture* capture)
      : in_(in), prepared_(prepared), capture_(capture) {
    in_.scratch_used = 0;
  }

  bool Capturing() const { return capture_ != nullptr; }
  // The op's first position, as its kernels take it.
  Position At(const coda_op& op) const {
    if (!capture_) return {op.start_pos, nullptr};
    return {op.start_pos - in_.step.start, in_.graph_start};
  }

  // `bytes` of scratch, growing the block (after the stream drains) when it is too small.
  std::string Scratch(uint64_t bytes, void** out) {
    const uint64_t need = in_.scratch_used + (bytes + kAlign - 1) / kAlign * kAlign;
    if (need > in_.scratch_size) {
      if (in_.scratch_used) return "scratch exhausted within one op";  // Reserve() sizes it first
      // A capture follows a run of the same ops, which sized it.
      if (capture_) return "scratch would have to grow during a CUDA graph capture";
      in_.DropGraphs();  // they use the block that goes
      cudaStreamSynchronize(in_.compute);
      if (in_.scratch) cudaFree(in_.scratch);
      in_.scratch = nullptr;
      in_.scratch_size = 0;
      if (cudaError_t e = cudaMalloc(&in_.scratch, need); e != cudaSuccess) return CudaError(e, "cudaMalloc");
      in_.scratch_size = need;
    }
    *out = static_cast<uint8_t*>(in_.scratch) + in_.scratch_used;
    in_.scratch_used = need;
    return "";
  }
  // Sizes scratch for every host tensor of the op at once, plus `extra` bytes (already padded), so
  // that later requests never move it. MoeExperts counts only the experts `named` lists.
  std::string Reserve(const coda_op& op, uint64_t extra, const std::vector<bool>* named = nullptr) {
    // The quantized activations of the op's widest FP8 product, one area that its products share.
    uint64_t widest = 0;
    if (in_.fp8_products && op.n_tokens >= kTileMinTokensForFp8 && op.type != CODA_OP_MOE_EXPERTS)
      for (uint32_t i = 0; i < op.n_weights; ++i)
        if (Fp8Tensor(op.weights[i])) widest = std::max<uint64_t>(widest, op.weights[i].shape[1]);
    quant_bytes_ = Pad(op.n_tokens * widest);
    quant_scale_bytes_ = Pad(op.n_tokens * widest / 128 * 4);
    uint64_t total = extra + quant_bytes_ + quant_scale_bytes_;
    auto add = [&](const coda_tensor& t) {
      if (!OnDevice(t, prepared_)) total += Pad(TensorBytes(t));
    };
    for (uint32_t i = 0; i < op.n_inputs; ++i) add(op.inputs[i]);
    for (uint32_t i = 0; i < op.n_outputs; ++i) add(op.outputs[i]);
    for (uint32_t i = 0; i < op.n_weights; ++i) {
      if (named && !(*named)[i / 3]) continue;
      add(op.weights[i]);
      if (op.weights[i].scale) add(*op.weights[i].scale);
    }
    void* p = nullptr;
    if (total == 0) return "";
    std::string e = Scratch(total, &p);
    in_.scratch_used = 0;
    return e;
  }
  // A product: on the tensor cores in FP8 where the instance allows it and the job does
  // (kernels.h, Fp8Eligible), by cuBLASLt from kLtMinTokens tokens where it takes the job (lt.h:
  // the tokens down to a multiple of 4; the own kernel takes the rest); else on the BF16 tensor
  // cores where allowed (Bf16Eligible), else exactly in F32.
  // cuBLASLt is never captured: graphs hold steps of fewer tokens.
  int Product(const LinearJob& job) {
    if (!in_.fp8_products || !Fp8Eligible(job) || job.n * job.w.cols > quant_bytes_)
      return in_.bf16_products && Bf16Eligible(job) ? LaunchLinearBf16(job, in_.compute) : LaunchLinear(job, in_.compute);
    if (!quant_) {
      void *q = nullptr, *s = nullptr;
      if (!Scratch(quant_bytes_, &q).empty() || !Scratch(quant_scale_bytes_, &s).empty())
        return static_cast<int>(cudaErrorMemoryAllocation);
      quant_ = static_cast<uint8_t*>(q);
      quant_scales_ = static_cast<float*>(s);
    }
    LinearJob lt = job;
    lt.n = job.n / 4 * 4;
    if (in_.lt && !capture_ && lt.n >= kLtMinTokens && in_.lt->Takes(lt)) {
      if (int e = LaunchQuantize(lt.x, lt.n, lt.w.cols, lt.x_stride, quant_, quant_scales_, true, in_.compute)) return e;
      if (in_.lt->Run(lt, quant_, quant_scales_, in_.compute)) {
        if (lt.n == job.n) return 0;
        LinearJob rest = job;  // its quantized rows follow cuBLASLt's in stream order
        rest.x += lt.n * job.x_stride;
        rest.y += lt.n * job.y_stride;
        rest.n = job.n - lt.n;
        return LaunchLinearFp8(rest, quant_, quant_scales_, in_.compute);
      }
    }
    return LaunchLinearFp8(job, quant_, quant_scales_, in_.compute);
  }
  // Host bytes copied into scratch (queued; pageable sources are staged before this returns). In
  // a capture, into the graph's memory, copied before its first launch (tables that follow from
  // the op, which a replay matches).
  std::string Upload(const void* host, uint64_t bytes, void** out) {
    if (capture_) return GraphCopy(host, bytes, out);
    if (std::string e = Scratch(bytes, out); !e.empty()) return e;
    const cudaError_t e = cudaMemcpyAsync(*out, host, bytes, cudaMemcpyHostToDevice, in_.compute);
    return e == cudaSuccess ? "" : CudaError(e, "uploading to the device");
  }
  // Device bytes read back now (waits for the stream).
  std::string Read(const void* device, uint64_t bytes, void* host) {
    if (capture_) return "a read from the device during a CUDA graph capture";  // Capturable() rules it out
    cudaError_t e = cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, in_.compute);
    if (e == cudaSuccess) e = cudaStreamSynchronize(in_.compute);
    return e == cudaSuccess ? "" : CudaError(e, "reading from the device");
  }
  // Device bytes written to host memory when the op finishes.
  void DownloadLater(const void* device, void* host, uint64_t bytes) { downloads_.push_back({device, host, bytes}); }

  // A tensor's device address: in one of our buffers, uploaded by prepare(), or copied now.
  std::string Device(const coda_tensor& t, bool is_output, void** out) {
    const uint64_t bytes = TensorBytes(t);
    if (t.buffer) {
      if (t.offset > t.buffer->size || bytes > t.buffer->size - t.offset)
        return "a tensor of " + std::to_string(bytes) + " bytes at offset " + std::to_string(t.offset) +
               " lies outside its buffer of " + std::to_string(t.buffer->size) + " bytes";
      *out = static_cast<uint8_t*>(t.buffer->ptr) + t.offset;
      return "";
    }
    if (!t.data) return "a tensor has neither host memory nor a buffer";
    if (prepared_)
      if (auto it = prepared_->where.find(t.data); it != prepared_->where.end()) {
        *out = it->second;
        return "";
      }
    if (capture_) {  // Capturable() admits small host inputs only
      const coda_op& op = *capture_->op;
      if (is_output || &t < op.inputs || &t >= op.inputs + op.n_inputs)
        return "host memory other than an input during a CUDA graph capture";
      if (std::string e = GraphCopy(t.data, bytes, out); !e.empty()) return e;
      capture_->slots.emplace_back(static_cast<uint32_t>(&t - op.inputs), *out);
      return "";
    }
    if (std::string e = Scratch(bytes, out); !e.empty()) return e;
    if (is_output) {
      DownloadLater(*out, t.data, bytes);
      return "";
    }
    const cudaError_t e = cudaMemcpyAsync(*out, t.data, bytes, cudaMemcpyHostToDevice, in_.compute);
    return e == cudaSuccess ? "" : CudaError(e, "uploading an input");
  }
  std::string Weight(const coda_tensor& t, DeviceWeight* w) {
    w->dtype = t.dtype;
    w->rows = t.ndim >= 2 ? t.shape[0] : 1;
    w->cols = t.ndim >= 2 ? t.shape[1] : t.shape[0];
    void* p = nullptr;
    if (std::string e = Device(t, false, &p); !e.empty()) return e;
    w->data = p;
    if (t.dtype == CODA_DTYPE_FP8_E4M3) {
      w->block = t.block ? t.block : 128;
      w->scale_cols = t.scale->shape[1];
      if (std::string e = Device(*t.scale, false, &p); !e.empty()) return e;
      w->scales = static_cast<const float*>(p);
    }
    SetVectorized(*w);
    return "";
  }
  // Launch status, then the downloads of host outputs, waited for.
  std::string Finish(int launch) {
    if (launch != cudaSuccess) return CudaError(static_cast<cudaError_t>(launch), "kernel launch");
    for (const Download& d : downloads_)
      if (cudaError_t e = cudaMemcpyAsync(d.host, d.device, d.bytes, cudaMemcpyDeviceToHost, in_.compute);
          e != cudaSuccess)
        return CudaError(e, "downloading an output");
    if (!downloads_.empty())
      if (cudaError_t e = cudaStreamSynchronize(in_.compute); e != cudaSuccess) return CudaError(e, "running the op");
    return "";
  }

 private:
  struct Download {
    const void* device;
    void* host;
    uint64_t bytes;
  };
  // Device memory of the step's graph holding a copy of host bytes, made before the graph's launch.
  std::string GraphCopy(const void* host, uint64_t bytes, void** out) {
    if (!in_.step.g) return "a CUDA graph capture without its step";
    if (cudaError_t e = cudaMalloc(out, std::max<uint64_t>(bytes, 1)); e != cudaSuccess) return CudaError(e, "cudaMalloc");
    in_.step.g->memory.push_back(*out);
    const auto* b = static_cast<const uint8_t*>(host);
    in_.step.uploads.emplace_back(*out, std::vector<uint8_t>(b, b + bytes));
    return "";
  }

  Instance& in_;
  const Prepared* prepared_;
  Capture* capture_;
  std::vector<Download> downloads_;
  uint64_t quant_bytes_ = 0, quant_scale_bytes_ = 0;
  uint8_t* quant_ = nullptr;
  float* quant_scales_ = nullptr;
};

bool Present(const coda_tensor& t) { return t.data || t.buffer; }

std::string Weight(Call& call, const coda_tensor& t, DeviceWeight* w) { return Present(t) ? call.Weight(t, w) : ""; }

std::string EnsureRope(Instance& in, const coda_op& op, bool capturing) {
  if (RopeCovers(in, op)) return "";
  const coda_hparams& hp = *op.hparams;
  const uint64_t total = uint64_t{op.start_pos} + op.n_tokens, half = hp.qk_rope_head_dim / 2;
  const std::vector<float> freq(hp.rope_inv_freq, hp.rope_inv_freq + half);
  if (capturing) return "the rope table would have to be rebuilt during a CUDA graph capture";
  uint64_t positions = std::min<uint64_t>(op.kv.n_ctx, std::max<uint64_t>(2 * total, 4096));
  if (op.kv.buffer)
    positions = std::max(total, std::min<uint64_t>(op.kv.n_ctx, (op.kv.buffer->size - op.kv.offset) /
                                                                    (uint64_t{op.kv.row} * (op.kv.dtype == CODA_DTYPE_BF16 ? 2 : 4))));
  in.DropGraphs();  // they read the table that goes
  cudaStreamSynchronize(in.compute);
  if (in.rope) cudaFree(in.rope);
  in.rope = nullptr;
  in.rope_positions = 0;
  backend_util::RopeCache cache;
  const std::vector<float>& table = backend_util::RopeTable(cache, hp, 0, static_cast<uint32_t>(positions));
  void* p = nullptr;
  if (cudaError_t e = cudaMalloc(&p, 4 * table.size()); e != cudaSuccess) return CudaError(e, "cudaMalloc for the rope table");
  // On the compute stream, which the kernels that read it follow: a copy on the legacy stream may
  // return before the data is on the device, and the compute stream is not ordered after it.
  if (cudaError_t e = cudaMemcpyAsync(p, table.data(), 4 * table.size(), cudaMemcpyHostToDevice, in.compute);
      e != cudaSuccess) {
    cudaFree(p);
    return CudaError(e, "uploading the rope table");
  }
  in.rope = static_cast<float*>(p);
  in.rope_positions = positions;
  in.rope_freq = freq;
  return "";
}

std::string Mla(Instance& in, Call& call, const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const uint64_t n = op.n_tokens, H = hp.n_heads, dn = hp.qk_nope_head_dim, dr = hp.qk_rope_head_dim,
                 dv = hp.v_head_dim, c = hp.kv_lora_rank, qk = dn + dr, row = c + dr, start = op.start_pos;
  if (std::string e = CheckMlaCache(op); !e.empty()) return e;
  const uint64_t total = start + n, kvb = op.kv.dtype == CODA_DTYPE_BF16 ? 2 : 4;
  const bool q_lora = Present(op.weights[0]);
  const uint64_t qa_rows = q_lora ? op.weights[0].shape[0] : 0;
  MlaShape m;
  m.n = n;
  m.heads = H;
  m.c = c;
  m.dn = dn;
  m.dr = dr;
  m.dv = dv;
  m.start = call.At(op);
  m.capacity = op.kv.n_ctx;
  m.scale = hp.softmax_scale;
  const MlaPlan plan = PlanMlaAttend(m, op.kv.dtype);
  const uint64_t extra = Pad(4 * n * H * qk) + Pad(4 * n * qa_rows) + Pad(4 * n * row) + Pad(4 * n * dr) +
                         2 * Pad(4 * n * H * c) + Pad(4 * n * H * dv) + Pad(plan.part_bytes) +
                         (op.kv.buffer ? 0 : Pad(total * row * kvb));
  if (std::string e = call.Reserve(op, extra); !e.empty()) return e;
  DeviceWeight w[8];
  for (int i = 0; i < 8; ++i)
    if (std::string e = Weight(call, op.weights[i], &w[i]); !e.empty()) return e;
  if (w[6].cols != c || w[6].rows != H * (dn + dv))
    return "kv_b_proj is " + std::to_string(w[6].rows) + "x" + std::to_string(w[6].cols) + ", expected " +
           std::to_string(H * (dn + dv)) + "x" + std::to_string(c);
  void *x = nullptr, *y = nullptr, *q = nullptr, *kv = nullptr, *qa = nullptr, *ql = nullptr,
       *ol = nullptr, *o = nullptr, *sc = nullptr, *cache = nullptr;
  std::string e = call.Device(op.inputs[0], false, &x);
  if (e.empty()) e = call.Device(op.outputs[0], true, &y);
  for (auto [bytes, out] : {std::pair{4 * n * H * qk, &q}, {4 * n * row, &kv}, {4 * n * H * c, &ql}, {4 * n * H * c, &ol},
                            {4 * n * H * dv, &o}, {plan.part_bytes, &sc}})
    if (e.empty()) e = call.Scratch(bytes, out);
  if (e.empty() && q_lora) e = call.Scratch(4 * n * qa_rows, &qa);
  if (e.empty() && dr) e = EnsureRope(in, op, call.Capturing());
  // The cache: this layer's rows in one of our buffers, or host rows staged through scratch.
  if (e.empty()) {
    if (op.kv.buffer) {
      cache = static_cast<uint8_t*>(op.kv.buffer->ptr) + op.kv.offset;
    } else {
      e = call.Scratch(total * row * kvb, &cache);
      if (e.empty() && start)
        if (cudaError_t ce = cudaMemcpyAsync(cache, op.kv.data, start * row * kvb, cudaMemcpyHostToDevice, in.compute);
            ce != cudaSuccess)
          e = CudaError(ce, "staging the KV cache");
      if (e.empty())
        call.DownloadLater(static_cast<uint8_t*>(cache) + start * row * kvb, static_cast<uint8_t*>(op.kv.data) + start * row * kvb,
                           n * row * kvb);
    }
  }
  if (!e.empty()) return e;
  const auto X = static_cast<const float*>(x);
  const auto Q = static_cast<float*>(q), KV = static_cast<float*>(kv);
  int launch = 0;
  if (q_lora) {
    launch = call.Product(PlainLinear(X, n, w[0], static_cast<float*>(qa)));
    if (!launch)
      launch = LaunchRmsNorm(static_cast<float*>(qa), n, qa_rows, qa_rows, w[1].data, w[1].dtype, hp.rms_norm_eps,
                             static_cast<float*>(qa), qa_rows, in.compute);
    if (!launch) launch = call.Product(PlainLinear(static_cast<float*>(qa), n, w[2], Q));
  } else {
    launch = call.Product(PlainLinear(X, n, w[3], Q));
  }
  if (!launch) launch = call.Product(PlainLinear(X, n, w[4], KV));
  if (!launch) launch = LaunchRmsNorm(KV, n, c, row, w[5].data, w[5].dtype, hp.rms_norm_eps, KV, row, in.compute);
  if (!launch) launch = LaunchRope(KV + c, n, 1, dr, row, 0, in.rope, m.start, in.compute);
  if (!launch) launch = LaunchRope(Q + dn, n, H, dr, H * qk, qk, in.rope, m.start, in.compute);
  if (!launch) launch = LaunchKvStore(KV, n, row, cache, op.kv.dtype, m.start, in.compute);
  const auto QL = static_cast<float*>(ql), OL = static_cast<float*>(ol), O = static_cast<float*>(o);
  if (!launch) launch = LaunchMlaAbsorb(Q, w[6], m, QL, in.compute);
  if (!launch) launch = LaunchMlaAttend(QL, Q, cache, op.kv.dtype, m, plan, static_cast<float*>(sc), OL, in.compute);
  // o[t][h] = W_UV[h] ol[t][h]: each head's value rows of kv_b_proj as one batch.
  LinearJob uv;
  uv.x = OL;
  uv.y = O;
  uv.w = w[6];
  uv.n = n;
  uv.rows = dv;
  uv.row0 = dn;
  uv.x_stride = H * c;
  uv.y_stride = H * dv;
  uv.z = H;
  uv.x_zoff = c;
  uv.y_zoff = dv;
  uv.w_zrows = dn + dv;
  if (!launch) launch = LaunchLinear(uv, in.compute);
  if (!launch) launch = call.Product(PlainLinear(O, n, w[7], static_cast<float*>(y)));
  return call.Finish(launch);
}

std::string MoeGate(Instance& in, Call& call, const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const uint64_t n = op.n_tokens, E = hp.n_routed_experts, K = hp.n_experts_per_tok;
  if (std::string e = call.Reserve(op, 3 * Pad(4 * n * E)); !e.empty()) return e;
  DeviceWeight router, bias;
  void *x = nullptr, *ids = nullptr, *wts = nullptr, *logits = nullptr, *sc = nullptr, *sel = nullptr;
  std::string e = call.Weight(op.weights[0], &router);
  if (e.empty()) e = Weight(call, op.weights[1], &bias);
  if (e.empty()) e = call.Device(op.inputs[0], false, &x);
  if (e.empty()) e = call.Device(op.outputs[0], true, &ids);
  if (e.empty()) e = call.Device(op.outputs[1], true, &wts);
  for (void** p : {&logits, &sc, &sel})
    if (e.empty()) e = call.Scratch(4 * n * E, p);
  if (!e.empty()) return e;
  RouteShape r;
  r.n = n;
  r.experts = E;
  r.k = K;
  r.groups = std::max(1u, hp.n_group);
  r.topk_group = hp.topk_group;
  r.softmax = hp.scoring_func == 0;
  r.norm = hp.norm_topk_prob != 0;
  r.scaling = hp.routed_scaling_factor;
  int launch = LaunchLinear(PlainLinear(static_cast<const float*>(x), n, router, static_cast<float*>(logits)), in.compute);
  if (!launch)
    launch = LaunchMoeRoute(static_cast<const float*>(logits), bias.data, bias.dtype, r, static_cast<float*>(sc),
                            static_cast<float*>(sel), static_cast<int32_t*>(ids), static_cast<float*>(wts), in.compute);
  if (std::string f = call.Finish(launch); !f.empty()) return f;
  TrustGateIds(in, op);
  return "";
}

std::string MoeExperts(Instance& in, Call& call, const coda_op& op, const Prepared* prepared) {
  const coda_hparams& hp = *op.hparams;
  const uint64_t n = op.n_tokens, K = hp.n_experts_per_tok, E = hp.n_routed_experts, d = op.inputs[0].shape[1];
  const coda_tensor& ids_t = op.inputs[1];
  // Which experts the call names: read on the host unless this backend's own MoeGate wrote the
  // ids and every expert is already on the device (then nothing crosses back per layer).
  std::vector<bool> named(E, true);
  if (!IdsTrusted(in, op, prepared)) {
    std::vector<int32_t> ids(n * K);
    if (ids_t.buffer) {
      if (ids_t.offset > ids_t.buffer->size || 4 * n * K > ids_t.buffer->size - ids_t.offset)
        return "the expert ids lie outside their buffer";
      if (std::string e = call.Read(static_cast<uint8_t*>(ids_t.buffer->ptr) + ids_t.offset, 4 * n * K, ids.data()); !e.empty())
        return e;
    } else {
      std::memcpy(ids.data(), ids_t.data, 4 * n * K);
    }
    std::fill(named.begin(), named.end(), false);
    for (uint64_t i = 0; i < n * K; ++i) {
      if (ids[i] < 0 || static_cast<uint64_t>(ids[i]) >= E)
        return "expert id " + std::to_string(ids[i]) + " is outside [0, " + std::to_string(E) + ")";
      const uint64_t x = static_cast<uint64_t>(ids[i]);
      if (!Present(op.weights[3 * x]) || !Present(op.weights[3 * x + 1]) || !Present(op.weights[3 * x + 2]))
        return "expert " + std::to_string(x) + " is named but its weights are absent";
      named[x] = true;
    }
  }
  uint64_t f = 0;
  for (uint64_t x = 0; x < E; ++x)
    if (Present(op.weights[3 * x])) f = std::max<uint64_t>(f, op.weights[3 * x].shape[0]);
  // Per-pair activations take n * K * (d + f) floats: chunks of tokens keep them within 256 MiB.
  const uint64_t chunk = std::clamp<uint64_t>((uint64_t{256} << 20) / std::max<uint64_t>(4 * K * (d + f), 1), 1, n);
  // FP8 products on tensor cores when every named expert is FP8 in 128x128 blocks.
  bool fp8 = in.fp8_products && d % 128 == 0 && f % 128 == 0 && n >= kTileMinTokensForFp8;
  for (uint64_t x = 0; fp8 && x < E; ++x)
    for (int j = 0; fp8 && named[x] && j < 3; ++j) fp8 = Fp8Tensor(op.weights[3 * x + j]);
  const uint64_t widest = std::max(chunk * d, chunk * K * f);
  const uint64_t extra = Pad(sizeof(ExpertWeights) * E) + 3 * Pad(4 * (E + 1)) + Pad(4 * chunk * K) +
                         Pad(4 * chunk * K * f) + Pad(4 * chunk * K * d) + (fp8 ? Pad(widest) + Pad(widest / 128 * 4) : 0);
  if (std::string e = call.Reserve(op, extra, &named); !e.empty()) return e;
  std::vector<ExpertWeights> table(E);
  for (uint64_t x = 0; x < E; ++x) {
    if (!named[x]) continue;
    for (int j = 0; j < 3; ++j) {
      DeviceWeight* w = j == 0 ? &table[x].gate : j == 1 ? &table[x].up : &table[x].down;
      if (std::string e = Weight(call, op.weights[3 * x + j], w); !e.empty()) return e;
      fp8 = fp8 && Fp8Weight(*w);
    }
  }
  void *x = nullptr, *ids = nullptr, *wts = nullptr, *y = nullptr, *tab = nullptr;
  ExpertScratch sc;
  std::string e = call.Device(op.inputs[0], false, &x);
  if (e.empty()) e = call.Device(ids_t, false, &ids);
  if (e.empty()) e = call.Device(op.inputs[2], false, &wts);
  if (e.empty()) e = call.Device(op.outputs[0], true, &y);
  if (e.empty()) e = call.Upload(table.data(), sizeof(ExpertWeights) * E, &tab);
  void* p[6] = {};
  const uint64_t sizes[6] = {4 * E, 4 * (E + 1), 4 * E, 4 * chunk * K, 4 * chunk * K * f, 4 * chunk * K * d};
  for (int i = 0; i < 6 && e.empty(); ++i) e = call.Scratch(sizes[i], &p[i]);
  void *q = nullptr, *qs = nullptr;
  if (e.empty() && fp8) e = call.Scratch(widest, &q);
  if (e.empty() && fp8) e = call.Scratch(widest / 128 * 4, &qs);
  if (!e.empty()) return e;
  sc.q = static_cast<uint8_t*>(q);
  sc.qs = static_cast<float*>(qs);
  sc.bf16 = in.bf16_products;
  sc.counts = static_cast<uint32_t*>(p[0]);
  sc.starts = static_cast<uint32_t*>(p[1]);
  sc.cursor = static_cast<uint32_t*>(p[2]);
  sc.list = static_cast<uint32_t*>(p[3]);
  sc.h = static_cast<float*>(p[4]);
  sc.out = static_cast<float*>(p[5]);
  int launch = 0;
  for (uint64_t t0 = 0; !launch && t0 < n; t0 += chunk) {
    const uint64_t m = std::min(chunk, n - t0);
    launch = LaunchMoeExperts(static_cast<const float*>(x) + t0 * d, static_cast<const int32_t*>(ids) + t0 * K,
                              static_cast<const float*>(wts) + t0 * K, m, K, d, f, static_cast<const ExpertWeights*>(tab), E,
                              sc, static_cast<float*>(y) + t0 * d, in.compute);
  }
  return call.Finish(launch);
}

}  // namespace

std::string CheckOp(const coda_op& op) {
  if (op.type >= CODA_OP_COUNT) return "op " + std::to_string(op.type) + " is not one this backend knows";
  if (std::string e = ops::Check(op); !e.empty()) return e;
  for (uint32_t i = 0; i < op.n_weights; ++i) {
    const coda_tensor& t = op.weights[i];
    if (!Present(t)) continue;
    const bool fp8 = t.ndim == 2 && op.type != CODA_OP_EMBED;  // FP8 rows are decoded by matrix kernels only
    if (t.dtype != CODA_DTYPE_F32 && t.dtype != CODA_DTYPE_BF16 && !(fp8 && t.dtype == CODA_DTYPE_FP8_E4M3))
      return "weight dtype " + std::string(coda_dtype_name(t.dtype)) + " is not supported here";
  }
  const coda_hparams& hp = *op.hparams;
  switch (op.type) {
    case CODA_OP_MLA_ATTENTION:
      if (uint64_t{hp.kv_lora_rank} + hp.qk_rope_head_dim > kMlaMaxRow)
        return "latent rows longer than " + std::to_string(kMlaMaxRow) + " values are not supported";
      if (hp.qk_rope_head_dim % 2) return "the rope dimension must be even";
      if (op.n_tokens && op.kv.dtype != CODA_DTYPE_BF16 && op.kv.dtype != CODA_DTYPE_F32)
        return "the KV cache dtype must be BF16 or F32";
      return "";
    case CODA_OP_MOE_GATE: return backend_util::RoutingUnsupported(hp, 64);
    default: return "";
  }
}

// The weight a DeviceWeight describes, after Call::Weight.
std::string CheckTokenIds(const int32_t* ids, const coda_op& op) {
  const uint64_t vocab = op.weights[0].shape[0];
  for (uint64_t i = 0; i < op.n_tokens; ++i)
    if (ids[i] < 0 || static_cast<uint64_t>(ids[i]) >= vocab)
      return "token id " + std::to_string(ids[i]) + " is outside the vocabulary (" + std::to_string(vocab) + ")";
  return "";
}

void UntrustWrites(Instance& in, const coda_op& op) {
  for (uint32_t i = 0; i < op.n_outputs; ++i)
    if (op.outputs[i].buffer)
      in.Untrust(static_cast<uint8_t*>(op.outputs[i].buffer->ptr) + op.outputs[i].offset, TensorBytes(op.outputs[i]));
  if (op.kv.buffer)
    in.Untrust(static_cast<uint8_t*>(op.kv.buffer->ptr) + op.kv.offset, op.kv.buffer->size - std::min(op.kv.offset, op.kv.buffer->size));
}
void TrustGateIds(Instance& in, const coda_op& op) {
  const coda_tensor& t = op.outputs[0];
  if (op.type == CODA_OP_MOE_GATE && t.buffer && t.offset <= t.buffer->size && TensorBytes(t) <= t.buffer->size - t.offset)
    in.Trust(static_cast<uint8_t*>(t.buffer->ptr) + t.offset, TensorBytes(t));
}

bool IdsTrusted(const Instance& in, const coda_op& op, const Prepared* prepared) {
  const coda_tensor& ids = op.inputs[1];
  bool all_on_device = ids.buffer != nullptr;
  for (uint32_t i = 0; all_on_device && i < op.n_weights; ++i) all_on_device = OnDevice(op.weights[i], prepared);
  return all_on_device && ids.offset <= ids.buffer->size &&
         in.Trusted(static_cast<uint8_t*>(ids.buffer->ptr) + ids.offset, TensorBytes(ids));
}

bool RopeCovers(const Instance& in, const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const uint32_t half = hp.qk_rope_head_dim / 2;
  return in.rope && uint64_t{op.start_pos} + op.n_tokens <= in.rope_positions && hp.rope_inv_freq &&
         in.rope_freq.size() == half && std::equal(in.rope_freq.begin(), in.rope_freq.end(), hp.rope_inv_freq);
}

std::string CheckMlaCache(const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const uint64_t total = uint64_t{op.start_pos} + op.n_tokens, row = uint64_t{hp.kv_lora_rank} + hp.qk_rope_head_dim;
  if (total > op.kv.n_ctx)
    return "the KV cache holds " + std::to_string(op.kv.n_ctx) + " positions; positions up to " + std::to_string(total) +
           " were asked for";
  if (op.kv.row != row) return "the KV cache row has " + std::to_string(op.kv.row) + " values, not " + std::to_string(row);
  if (!op.kv.buffer && !op.kv.data) return "the KV cache has neither host memory nor a buffer";
  const uint64_t kvb = op.kv.dtype == CODA_DTYPE_BF16 ? 2 : 4;
  if (op.kv.buffer && (op.kv.offset > op.kv.buffer->size || total * row * kvb > op.kv.buffer->size - op.kv.offset))
    return "the KV cache's rows lie outside its buffer";
  return "";
}

// The device's table of cos and sin (Instance::rope) covers the op's positions: rebuilt when it
// does not, for all the positions its cache buffer can hold (a replay at a later position then
// finds them there), or for twice those asked for when the cache is host memory.
std::string RunOp(Instance& in, const coda_op& op, Capture* capture) {
  const auto* prepared = static_cast<const Prepared*>(op.prepared);
  Call call(in, prepared, capture);
  const uint64_t n = op.n_tokens;
  if (n == 0) return "";
  UntrustWrites(in, op);
  switch (op.type) {
    case CODA_OP_MLA_ATTENTION: return Mla(in, call, op);
    case CODA_OP_MOE_GATE: return MoeGate(in, call, op);
    case CODA_OP_MOE_EXPERTS: return MoeExperts(in, call, op, prepared);
    default: break;
  }
  const uint64_t hidden = op.type == CODA_OP_MLP ? op.weights[0].shape[0] : 0;
  if (std::string e = call.Reserve(op, 2 * Pad(4 * n * hidden)); !e.empty()) return e;
  void* y = nullptr;
  if (std::string e = call.Device(op.outputs[0], true, &y); !e.empty()) return e;
  switch (op.type) {
    case CODA_OP_EMBED: {
      // Ids are checked on the host: a bad one is an error, not a read outside the table.
      // (The device copy is queued first; the kernel launches only after the check.)
      std::vector<int32_t> ids(n);
      const coda_tensor& t = op.inputs[0];
      void* dids = nullptr;
      if (std::string e = call.Device(t, false, &dids); !e.empty()) return e;
      if (t.buffer) {
        if (std::string e = call.Read(dids, n * 4, ids.data()); !e.empty()) return e;
      } else {
        std::memcpy(ids.data(), t.data, n * 4);
      }
      if (std::string e = CheckTokenIds(ids.data(), op); !e.empty()) return e;
      DeviceWeight table;
      if (std::string e = call.Weight(op.weights[0], &table); !e.empty()) return e;
      return call.Finish(LaunchEmbed(static_cast<const int32_t*>(dids), n, table, static_cast<float*>(y), in.compute));
    }
    case CODA_OP_RMS_NORM: {
      void* x = nullptr;
      if (std::string e = call.Device(op.inputs[0], false, &x); !e.empty()) return e;
      DeviceWeight w;
      if (std::string e = call.Weight(op.weights[0], &w); !e.empty()) return e;
      const uint64_t d = op.inputs[0].shape[1];
      return call.Finish(LaunchRmsNorm(static_cast<const float*>(x), n, d, d, w.data, w.dtype, op.hparams->rms_norm_eps,
                                       static_cast<float*>(y), d, in.compute));
    }
    case CODA_OP_ADD: {
      void *a = nullptr, *b = nullptr;
      if (std::string e = call.Device(op.inputs[0], false, &a); !e.empty()) return e;
      if (std::string e = call.Device(op.inputs[1], false, &b); !e.empty()) return e;
      return call.Finish(LaunchAdd(static_cast<const float*>(a), static_cast<const float*>(b), static_cast<float*>(y),
                                   n * op.inputs[0].shape[1], in.compute));
    }
    case CODA_OP_CONCAT: {
      void *a = nullptr, *b = nullptr;
      if (std::string e = call.Device(op.inputs[0], false, &a); !e.empty()) return e;
      if (std::string e = call.Device(op.inputs[1], false, &b); !e.empty()) return e;
      return call.Finish(LaunchConcat(static_cast<const float*>(a), op.inputs[0].shape[1], static_cast<const float*>(b),
                                      op.inputs[1].shape[1], n, static_cast<float*>(y), in.compute));
    }
    case CODA_OP_MLP: {
      void *x = nullptr, *g = nullptr, *u = nullptr;
      DeviceWeight gate, up, down;
      if (std::string e = call.Device(op.inputs[0], false, &x); !e.empty()) return e;
      if (std::string e = call.Weight(op.weights[0], &gate); !e.empty()) return e;
      if (std::string e = call.Weight(op.weights[1], &up); !e.empty()) return e;
      if (std::string e = call.Weight(op.weights[2], &down); !e.empty()) return e;
      if (std::string e = call.Scratch(n * gate.rows * 4, &g); !e.empty()) return e;
      if (std::string e = call.Scratch(n * gate.rows * 4, &u); !e.empty()) return e;
      const auto X = static_cast<const float*>(x);
      const auto G = static_cast<float*>(g), U = static_cast<float*>(u);
      int launch = call.Product(PlainLinear(X, n, gate, G));
      if (!launch) launch = call.Product(PlainLinear(X, n, up, U));
      if (!launch) launch = LaunchSiluMul(G, U, n * gate.rows, in.compute);
      if (!launch) launch = call.Product(PlainLinear(G, n, down, static_cast<float*>(y)));
      return call.Finish(launch);
    }
    default: {  // Linear, Head
      void* x = nullptr;
      if (std::string e = call.Device(op.inputs[0], false, &x); !e.empty()) return e;
      DeviceWeight w;
      if (std::string e = call.Weight(op.weights[0], &w); !e.empty()) return e;
      return call.Finish(call.Product(PlainLinear(static_cast<const float*>(x), n, w, static_cast<float*>(y))));
    }
  }
}

}  // namespace coda::cuda
