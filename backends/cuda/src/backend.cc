// The CUDA backend behind the plain-C backend ABI, built as libcoda-backend-cuda.so (and, from
// these same sources against the CPU emulator in ../emu, as libcoda-backend-cuda-emu.so for the
// tests of machines without a GPU).
//
// What runs: devices, buffers, events on two streams (compute and transfer), weights uploaded once
// by prepare(), and every op on F32 activations (weights F32, BF16, or FP8 E4M3 with block
// scales, which stay FP8 in device memory): MLA attention in the absorbed form over an F32 or
// BF16 latent cache, MoE routing on the device, the routed experts in one grouped pass per call,
// and FP8 products on tensor cores unless exact ones are asked for (kernels.cu). Not written yet:
// cuBLASLt products, CUDA graphs.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend_util.h"
#include "coda_backend.h"
#include "coda_ops.hpp"
#include "kernels.h"

struct coda_buffer_impl {
  void* ptr;
  uint64_t size;
};

struct coda_event_impl {
  cudaEvent_t event;
};

namespace coda::cuda {
namespace {

using backend_util::CopyError;
using backend_util::InRange;
using backend_util::ReadOp;
using backend_util::TensorBytes;

constexpr uint64_t kAlign = 256;  // cudaMalloc's alignment; each tensor of a block starts on it

std::string CudaError(cudaError_t e, const std::string& what) {
  return what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

// The weights prepare() uploaded: one device block, and where each host tensor went.
struct Prepared {
  void* block = nullptr;
  std::unordered_map<const void*, void*> where;
};

// ---- Steps: forward passes the host brackets with step_begin and step_end, replayed as graphs ----
//
// The first time a key is seen, its ops run one by one and are recorded (OpRecord). The second
// time, each run of consecutive ops that match their records and that a graph can hold is
// captured into a CUDA graph (a Segment) instead of run, and launched where the run ends: before
// an op a graph cannot hold (one that writes host memory, or reads an expert cache the host
// refills), a copy the host asks for, or the step's end. From the third time, ops are only checked
// against their records, those in a segment held back with their host inputs, and each segment's
// graph is launched when its last op has come; the ops between segments run one by one. An op
// unlike its record in a segment, or a call that must see the work held back, means the ops held
// back run one by one after all, and the key records anew. Either way the same kernels run with
// the same arguments (the position excepted, which a graph reads from device memory), so results
// are identical.

// One op of a step as it was executed: the op and copies of everything it points to.
struct OpRecord {
  coda_op op{};
  std::vector<coda_tensor> tensors;  // inputs, outputs, weights, then the weights' scales
  coda_hparams hp{};
  std::vector<float> freq;
  uint32_t delta = 0;                             // op.start_pos minus the step's first op's
  bool capturable = false;                        // Capturable() when it was recorded
  std::vector<std::pair<uint32_t, void*>> slots;  // in a graph: host input i is read from slot
};

// Ops [first, end) of a step's record, captured as one CUDA graph.
struct Segment {
  size_t first = 0, end = 0;
  cudaGraphExec_t exec = nullptr;
};

// A key's record and, once captured, its graphs.
struct StepGraph {
  uint32_t seen = 0;    // steps recorded for the key (from 1 the next one captures)
  uint32_t breaks = 0;  // replays that broke off; at kMaxBreaks the key runs one by one for good
  std::vector<OpRecord> ops;
  std::vector<Segment> segments;  // in order
  std::vector<void*> memory;      // the graphs' own device memory: host inputs and tables they read
};

struct Instance;
std::string Settle(Instance& in);

struct Instance {
  int device = 0;
  const coda_host* host = nullptr;
  // Products may quantize activations (CODA_BACKEND_EXACT_PRODUCTS unset) and the device has FP8
  // tensor cores (sm_89 and later): FP8 weights then multiply on them (kernels.h, Fp8Eligible).
  bool fp8_products = false;
  cudaStream_t compute = nullptr, transfer = nullptr;
  std::string description;
  // Per-call device memory for host-memory tensors (bump allocation, reset by each execute).
  void* scratch = nullptr;
  uint64_t scratch_size = 0, scratch_used = 0;

  // cos and sin for the positions [0, rope_positions) at rope_freq (backend_util::RopeTable):
  // built once, so that no step uploads its own.
  float* rope = nullptr;
  uint64_t rope_positions = 0;
  std::vector<float> rope_freq;
  // The position a graph's kernels read (kernels.h, Position), written before each launch.
  uint32_t* graph_start = nullptr;
  bool graphs_enabled = true;  // CODA_CUDA_GRAPHS=off turns steps into plain calls
  std::unordered_map<uint64_t, StepGraph> graphs;
  // The step under way, between step_begin and step_end.
  struct Step {
    enum Mode { kNone, kEager, kRecord, kCapture, kReplay } mode = kNone;
    StepGraph* g = nullptr;
    uint64_t key = 0;
    uint32_t start = 0;
    bool started = false;    // an op has come, and `start` is its position
    size_t index = 0;        // ops of the step so far
    bool capturing = false;  // capture: the compute stream is being captured, from op `first`
    size_t first = 0;
    size_t segment = 0;      // replay: the next segment to launch
    size_t from_graphs = 0;  // ops run by graphs in this step
    // Host bytes to copy to the device before the next graph's launch, and the host inputs
    // (index, bytes) of each op held back for it, kept to run the op one by one should the step
    // break off.
    std::vector<std::pair<void*, std::vector<uint8_t>>> uploads;
    std::vector<std::vector<std::pair<uint32_t, std::vector<uint8_t>>>> inputs;
  } step;

  ~Instance() {
    cudaSetDevice(device);
    Settle(*this);
    if (compute) cudaStreamSynchronize(compute);
    if (transfer) cudaStreamSynchronize(transfer);
    DropGraphs();
    if (scratch) cudaFree(scratch);
    if (rope) cudaFree(rope);
    if (graph_start) cudaFree(graph_start);
    if (compute) cudaStreamDestroy(compute);
    if (transfer) cudaStreamDestroy(transfer);
  }
  // Graphs hold the addresses of scratch, tables and buffers: when any of those moves or goes,
  // every graph goes (after the work that may still use them). The records stay: the next step of
  // a key captures again, from the ops as they then are.
  void DropGraphs() {
    bool any = false;
    for (auto& [key, g] : graphs) any = any || !g.segments.empty() || !g.memory.empty();
    if (!any) return;
    cudaStreamSynchronize(compute);
    for (auto& [key, g] : graphs) ClearGraphs(g);
    // Nothing is held back when this is called (only plain runs and settled calls get here).
    if (step.mode == Step::kCapture || step.mode == Step::kReplay) step.mode = Step::kEager;
  }
  // A key's graphs and their memory (after the stream has drained).
  static void ClearGraphs(StepGraph& g) {
    for (Segment& seg : g.segments) cudaGraphExecDestroy(seg.exec);
    g.segments.clear();
    for (void* p : g.memory) cudaFree(p);
    g.memory.clear();
    for (OpRecord& r : g.ops) r.slots.clear();
  }
  void Log(int level, const std::string& m) const {
    if (host && host->log) host->log(host->user, level, m.c_str());
  }
  // Device ranges holding expert ids that this backend's MoeGate wrote and nothing has written
  // since: MoeExperts reads them without checking them on the host (no round trip per layer).
  std::vector<std::pair<const uint8_t*, uint64_t>> trusted_ids;

  cudaStream_t Stream(uint32_t queue) const { return queue == CODA_QUEUE_TRANSFER ? transfer : compute; }
  void Untrust(const void* p, uint64_t bytes) {
    const auto* b = static_cast<const uint8_t*>(p);
    std::erase_if(trusted_ids, [&](const auto& r) { return r.first < b + bytes && b < r.first + r.second; });
  }
  void Trust(const void* p, uint64_t bytes) {
    if (!Trusted(p, bytes)) trusted_ids.emplace_back(static_cast<const uint8_t*>(p), bytes);
  }
  bool Trusted(const void* p, uint64_t bytes) const {
    const auto* b = static_cast<const uint8_t*>(p);
    return std::any_of(trusted_ids.begin(), trusted_ids.end(),
                       [&](const auto& r) { return r.first <= b && b + bytes <= r.first + r.second; });
  }
};

uint64_t Pad(uint64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// A weight the FP8 tensor-core products may take, as far as the host tensor tells (its device
// address is checked by Fp8Weight once known).
bool Fp8Tensor(const coda_tensor& t) {
  return (t.data || t.buffer) && t.dtype == CODA_DTYPE_FP8_E4M3 && t.ndim == 2 && (t.block == 0 || t.block == 128) &&
         t.shape[1] % 128 == 0;
}

// An op being captured into a step's graph (see Steps above): its host inputs go to device memory
// of the graph's own, copied before each launch, instead of scratch.
struct Capture {
  const coda_op* op = nullptr;
  std::vector<std::pair<uint32_t, void*>> slots;  // input index, its device copy
};

// The work of one execute(): host inputs uploaded to scratch, host outputs downloaded at the end.
class Call {
 public:
  Call(Instance& in, const Prepared* prepared, Capture* capture)
      : in_(in), prepared_(prepared), capture_(capture) {
    in_.scratch_used = 0;
  }

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
      if (in_.step.capturing) return "scratch would have to grow during a CUDA graph capture";
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
      if (!t.buffer && t.data && !(prepared_ && prepared_->where.count(t.data))) total += Pad(TensorBytes(t));
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
  // (kernels.h, Fp8Eligible), else exactly in F32.
  int Product(const LinearJob& job) {
    if (!in_.fp8_products || !Fp8Eligible(job) || job.n * job.w.cols > quant_bytes_) return LaunchLinear(job, in_.compute);
    if (!quant_) {
      void *q = nullptr, *s = nullptr;
      if (!Scratch(quant_bytes_, &q).empty() || !Scratch(quant_scale_bytes_, &s).empty())
        return static_cast<int>(cudaErrorMemoryAllocation);
      quant_ = static_cast<uint8_t*>(q);
      quant_scales_ = static_cast<float*>(s);
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
std::string Weight(Call& call, const coda_tensor& t, DeviceWeight* w) { return Present(t) ? call.Weight(t, w) : ""; }

// Embed's n token ids (host memory) name rows of its table.
std::string CheckTokenIds(const int32_t* ids, const coda_op& op) {
  const uint64_t vocab = op.weights[0].shape[0];
  for (uint64_t i = 0; i < op.n_tokens; ++i)
    if (ids[i] < 0 || static_cast<uint64_t>(ids[i]) >= vocab)
      return "token id " + std::to_string(ids[i]) + " is outside the vocabulary (" + std::to_string(vocab) + ")";
  return "";
}

// What an op's writes do to the trusted ids: its outputs and cache are no longer a MoeGate's ids,
// and a MoeGate's ids output in a buffer is (once the op succeeded: TrustGateIds).
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

// MoeExperts may take its ids as they are (no read back, nothing to check): this backend's own
// MoeGate wrote them and every expert is on the device.
bool IdsTrusted(const Instance& in, const coda_op& op, const Prepared* prepared) {
  const coda_tensor& ids = op.inputs[1];
  bool all_on_device = ids.buffer != nullptr;
  for (uint32_t i = 0; all_on_device && i < op.n_weights; ++i) {
    const coda_tensor& t = op.weights[i];
    all_on_device = t.buffer || !t.data || (prepared && prepared->where.count(t.data));
  }
  return all_on_device && ids.offset <= ids.buffer->size &&
         in.Trusted(static_cast<uint8_t*>(ids.buffer->ptr) + ids.offset, TensorBytes(ids));
}

// The cache an MLA op names holds its positions: checked by the op and by each replay of it.
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
std::string EnsureRope(Instance& in, const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const uint64_t total = uint64_t{op.start_pos} + op.n_tokens, half = hp.qk_rope_head_dim / 2;
  const std::vector<float> freq(hp.rope_inv_freq, hp.rope_inv_freq + half);
  if (in.rope && in.rope_positions >= total && in.rope_freq == freq) return "";
  if (in.step.capturing) return "the rope table would have to be rebuilt during a CUDA graph capture";
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
  if (cudaError_t e = cudaMemcpy(p, table.data(), 4 * table.size(), cudaMemcpyHostToDevice); e != cudaSuccess) {
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
  const MlaPlan plan = PlanMlaAttend(m);
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
  if (e.empty() && dr) e = EnsureRope(in, op);
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

// Runs an op now, or into the graph being captured when `capture` is set.
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

// ---- Steps (see the top of the file) ----

constexpr uint32_t kMaxBreaks = 3;          // replays that may break off before a key gives up
constexpr size_t kMaxGraphKeys = 16;        // keys recorded at once
constexpr size_t kMaxStepOps = 1 << 16;     // ops recorded per key
constexpr uint64_t kMaxGraphInput = 1 << 20;  // host input bytes a graph copies in per op

bool OnDevice(const coda_tensor& t, const Prepared* prepared) {
  return t.buffer || !t.data || (prepared && prepared->where.count(t.data));
}

// Why a graph cannot hold the op, or empty when it can: everything the op reads and writes must
// stay on the device, but small host inputs (copied in before each launch), and nothing in it may
// read back to the host.
std::string Uncapturable(const Instance& in, const coda_op& op) {
  const auto* prepared = static_cast<const Prepared*>(op.prepared);
  for (uint32_t i = 0; i < op.n_outputs; ++i)
    if (!op.outputs[i].buffer) return "output " + std::to_string(i) + " is host memory";
  for (uint32_t i = 0; i < op.n_weights; ++i) {
    // A weight in a buffer is the host's to refill (its expert cache): a graph would keep reading
    // the slot it was captured with.
    if (op.weights[i].buffer) return "weight " + std::to_string(i) + " is in a buffer the host may refill";
    if (!OnDevice(op.weights[i], prepared)) return "weight " + std::to_string(i) + " is host memory prepare() did not upload";
    if (op.weights[i].scale && !OnDevice(*op.weights[i].scale, prepared))
      return "the scales of weight " + std::to_string(i) + " are host memory prepare() did not upload";
  }
  for (uint32_t i = 0; i < op.n_inputs; ++i) {
    const coda_tensor& t = op.inputs[i];
    if (t.buffer) {
      if (op.type == CODA_OP_EMBED) return "its ids are in a buffer, and would be read back to be checked";
      continue;
    }
    if (!t.data || TensorBytes(t) > kMaxGraphInput || op.type == CODA_OP_MOE_EXPERTS)
      return "input " + std::to_string(i) + " is host memory";
  }
  if (op.type == CODA_OP_MLA_ATTENTION && !op.kv.buffer) return "its KV cache is host memory";
  if (op.type == CODA_OP_MOE_EXPERTS && !IdsTrusted(in, op, prepared)) return "its expert ids are to be checked on the host";
  return "";
}
bool Capturable(const Instance& in, const coda_op& op) { return Uncapturable(in, op).empty(); }

// Points the record's op at its own copies (the record may have moved since).
const coda_op& Fix(OpRecord& r) {
  const uint32_t ni = r.op.n_inputs, no = r.op.n_outputs, nw = r.op.n_weights;
  coda_tensor* t = r.tensors.data();
  r.op.inputs = t;
  r.op.outputs = t + ni;
  r.op.weights = t + ni + no;
  size_t next = ni + no + nw;
  for (uint32_t i = 0; i < nw; ++i)
    if (t[ni + no + i].scale) t[ni + no + i].scale = &t[next++];
  r.hp.rope_inv_freq = r.freq.data();
  r.op.hparams = &r.hp;
  return r.op;
}

OpRecord Record(const coda_op& op, uint32_t delta, bool capturable) {
  OpRecord r;
  r.op = op;
  r.delta = delta;
  r.capturable = capturable;
  r.tensors.reserve(op.n_inputs + op.n_outputs + 2 * op.n_weights);
  r.tensors.insert(r.tensors.end(), op.inputs, op.inputs + op.n_inputs);
  r.tensors.insert(r.tensors.end(), op.outputs, op.outputs + op.n_outputs);
  r.tensors.insert(r.tensors.end(), op.weights, op.weights + op.n_weights);
  for (uint32_t i = 0; i < op.n_weights; ++i)
    if (op.weights[i].scale) r.tensors.push_back(*op.weights[i].scale);
  r.hp = *op.hparams;
  r.freq.assign(op.hparams->rope_inv_freq, op.hparams->rope_inv_freq + op.hparams->qk_rope_head_dim / 2);
  Fix(r);
  return r;
}

// Same dtype, shape and memory; host inputs (`host_bytes_may_differ`) match by shape only, as a
// graph copies their bytes in anew.
bool SameTensor(const coda_tensor& a, const coda_tensor& b, bool host_bytes_may_differ) {
  if (a.dtype != b.dtype || a.ndim != b.ndim || a.ndim > CODA_MAX_DIMS || a.block != b.block || a.buffer != b.buffer ||
      a.offset != b.offset || !a.data != !b.data || !a.scale != !b.scale)
    return false;
  for (uint32_t k = 0; k < a.ndim; ++k)
    if (a.shape[k] != b.shape[k]) return false;
  if (a.data != b.data && !(host_bytes_may_differ && !a.buffer)) return false;
  return !a.scale || SameTensor(*a.scale, *b.scale, false);
}

// The op is the recorded one, at the same distance from the step's first position.
bool Same(const coda_op& op, uint32_t delta, OpRecord& r) {
  const coda_op& o = Fix(r);
  if (op.type != o.type || op.layer != o.layer || op.n_tokens != o.n_tokens || delta != r.delta ||
      op.n_inputs != o.n_inputs || op.n_outputs != o.n_outputs || op.n_weights != o.n_weights || op.prepared != o.prepared)
    return false;
  if (op.kv.dtype != o.kv.dtype || op.kv.n_ctx != o.kv.n_ctx || op.kv.row != o.kv.row || op.kv.data != o.kv.data ||
      op.kv.buffer != o.kv.buffer || op.kv.offset != o.kv.offset)
    return false;
  for (uint32_t i = 0; i < op.n_inputs; ++i)
    if (!SameTensor(op.inputs[i], o.inputs[i], true)) return false;
  for (uint32_t i = 0; i < op.n_outputs; ++i)
    if (!SameTensor(op.outputs[i], o.outputs[i], false)) return false;
  for (uint32_t i = 0; i < op.n_weights; ++i)
    if (!SameTensor(op.weights[i], o.weights[i], false)) return false;
  // coda_hparams: 32-bit fields up to the frequencies, then those by value.
  return std::memcmp(op.hparams, &r.hp, offsetof(coda_hparams, rope_inv_freq)) == 0 &&
         std::equal(r.freq.begin(), r.freq.end(), op.hparams->rope_inv_freq);
}

// What execute() checks of an op before running it that depends on what a replay changes: the
// position and the host inputs.
std::string CheckReplay(const Instance& in, const coda_op& op) {
  if (op.type == CODA_OP_EMBED) return CheckTokenIds(static_cast<const int32_t*>(op.inputs[0].data), op);
  if (op.type == CODA_OP_MLA_ATTENTION) {
    if (std::string e = CheckMlaCache(op); !e.empty()) return e;
    if (uint64_t{op.start_pos} + op.n_tokens > in.rope_positions) return "positions beyond the rope table";  // rebuilt by a plain run
  }
  return "";
}

// Copies the held-back host bytes and the step's position in, then launches a graph.
std::string LaunchGraph(Instance& in, cudaGraphExec_t exec) {
  Instance::Step& st = in.step;
  for (auto& [dev, bytes] : st.uploads)
    if (cudaError_t e = cudaMemcpyAsync(dev, bytes.data(), bytes.size(), cudaMemcpyHostToDevice, in.compute); e != cudaSuccess)
      return CudaError(e, "copying a graph's inputs");
  st.uploads.clear();
  st.inputs.clear();
  // Pageable sources are staged before cudaMemcpyAsync returns: st.start may change afterwards.
  cudaError_t e = cudaMemcpyAsync(in.graph_start, &st.start, sizeof st.start, cudaMemcpyHostToDevice, in.compute);
  if (e == cudaSuccess) e = cudaGraphLaunch(exec, in.compute);
  return e == cudaSuccess ? "" : CudaError(e, "launching a CUDA graph");
}

// Runs the record's ops [from, to) one by one, with the host inputs they came with (st.inputs):
// a replay that broke off, or a capture that could not become a graph.
std::string RunRecorded(Instance& in, size_t from, size_t to) {
  Instance::Step& st = in.step;
  std::string e;
  for (size_t j = from; j < to && e.empty(); ++j) {
    OpRecord& r = st.g->ops[j];
    coda_op op = Fix(r);
    std::vector<coda_tensor> inputs(op.inputs, op.inputs + op.n_inputs);
    if (j - from < st.inputs.size())
      for (auto& [i, bytes] : st.inputs[j - from]) inputs[i].data = bytes.data();
    op.inputs = inputs.data();
    op.start_pos = st.start + r.delta;
    e = RunOp(in, op, nullptr);
  }
  st.uploads.clear();
  st.inputs.clear();
  return e;
}

// Capture: the open segment becomes a graph and runs (or, should that fail, its ops run one by one).
std::string EndSegment(Instance& in) {
  Instance::Step& st = in.step;
  if (!st.capturing) return "";
  st.capturing = false;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaError_t ce = cudaStreamEndCapture(in.compute, &graph);
  if (ce == cudaSuccess) ce = cudaGraphInstantiate(&exec, graph, 0);
  if (graph) cudaGraphDestroy(graph);
  if (ce != cudaSuccess) {  // nothing captured has run: it runs now
    in.Log(CODA_LOG_WARNING, CudaError(ce, "capturing a CUDA graph") + "; step " + std::to_string(st.key) + " runs op by op");
    st.g->breaks = kMaxBreaks;
    return RunRecorded(in, st.first, st.index);
  }
  st.g->segments.push_back({st.first, st.index, exec});
  st.from_graphs += st.index - st.first;
  return LaunchGraph(in, exec);
}

// Replay: the ops held back for the next segment run one by one, the key's graphs go, and the
// key records anew (or, after kMaxBreaks, runs op by op for good).
std::string BreakReplay(Instance& in) {
  Instance::Step& st = in.step;
  StepGraph& g = *st.g;
  std::string e;
  if (st.segment < g.segments.size() && st.index > g.segments[st.segment].first)
    e = RunRecorded(in, g.segments[st.segment].first, st.index);
  cudaStreamSynchronize(in.compute);  // earlier graphs of this step may still read their memory
  Instance::ClearGraphs(g);
  g.seen = 0;
  in.Log(CODA_LOG_DEBUG, "step " + std::to_string(st.key) + ": the replay broke off at op " + std::to_string(st.index));
  if (++g.breaks >= kMaxBreaks) in.Log(CODA_LOG_INFO, "step " + std::to_string(st.key) + " runs op by op from now on");
  st.mode = Instance::Step::kEager;
  return e;
}

// Issues what the step holds back, before a call that must see it: the open capture becomes a
// graph and runs (the next capturable op opens another); in a replay, ops held back for a segment
// mean that the step no longer follows its record.
std::string Settle(Instance& in) {
  Instance::Step& st = in.step;
  if (st.mode == Instance::Step::kCapture) return EndSegment(in);
  if (st.mode == Instance::Step::kReplay && st.segment < st.g->segments.size() && st.index > st.g->segments[st.segment].first)
    return BreakReplay(in);
  return "";
}

// The same op of the plan: what keeps a step's ops in line with its record.
bool Aligned(const coda_op& op, const OpRecord& r) {
  return op.type == r.op.type && op.layer == r.op.layer && op.n_tokens == r.op.n_tokens;
}

// Why op `i` of a capture cannot join a graph (for the log).
std::string Why(Instance& in, const coda_op& op, size_t i, uint32_t delta, bool placed) {
  if (!placed) return "it lies before the step's first position";
  if (!Same(op, delta, in.step.g->ops[i])) return "it differs from the recorded one";
  const std::string why = Uncapturable(in, op);
  return why.empty() ? "a graph could not hold it when it was recorded" : why;
}

std::string StepExecute(Instance& in, const coda_op& op) {
  Instance::Step& st = in.step;
  if (!st.started) {
    st.started = true;
    st.start = op.start_pos;
  }
  const bool placed = op.start_pos >= st.start;  // every op of a step lies at or after its first
  const uint32_t delta = placed ? op.start_pos - st.start : 0;
  const size_t i = st.index;
  const bool aligned = st.g && i < st.g->ops.size() && Aligned(op, st.g->ops[i]);
  switch (st.mode) {
    case Instance::Step::kRecord: {
      const bool capturable = placed && Capturable(in, op);
      std::string e = RunOp(in, op, nullptr);
      ++st.index;
      if (e.empty() && st.g->ops.size() < kMaxStepOps) st.g->ops.push_back(Record(op, delta, capturable));
      else st.mode = Instance::Step::kEager;  // a step that failed is not one to replay
      return e;
    }
    case Instance::Step::kCapture: {
      if (!aligned) {  // the plan changed: record it anew
        std::string e = EndSegment(in);
        st.g->seen = 0;
        st.mode = Instance::Step::kEager;
        ++st.index;
        return e.empty() ? RunOp(in, op, nullptr) : e;
      }
      if (!(placed && st.g->ops[i].capturable && Same(op, delta, st.g->ops[i]) && Capturable(in, op))) {
        if (st.capturing)
          in.Log(CODA_LOG_DEBUG, "step " + std::to_string(st.key) + ": a graph ends before op " + std::to_string(i) + " (" +
                                     coda_op_name(op.type) + "): " + Why(in, op, i, delta, placed));
        std::string e = EndSegment(in);
        ++st.index;
        return e.empty() ? RunOp(in, op, nullptr) : e;
      }
      if (!st.capturing) {
        if (cudaError_t ce = cudaStreamBeginCapture(in.compute, cudaStreamCaptureModeRelaxed); ce != cudaSuccess) {
          in.Log(CODA_LOG_WARNING, CudaError(ce, "starting a CUDA graph capture") + "; step " + std::to_string(st.key) +
                                       " runs op by op");
          st.g->breaks = kMaxBreaks;
          st.mode = Instance::Step::kEager;
          ++st.index;
          return RunOp(in, op, nullptr);
        }
        st.capturing = true;
        st.first = i;
      }
      Capture cap;
      cap.op = &op;
      std::vector<std::pair<uint32_t, std::vector<uint8_t>>> host;
      for (uint32_t k = 0; k < op.n_inputs; ++k)
        if (!op.inputs[k].buffer) {
          const auto* b = static_cast<const uint8_t*>(op.inputs[k].data);
          host.emplace_back(k, std::vector<uint8_t>(b, b + TensorBytes(op.inputs[k])));
        }
      if (std::string e = RunOp(in, op, &cap); !e.empty()) {
        // Failed while captured: what came before it runs, and this key runs op by op.
        std::string s = EndSegment(in);
        cudaStreamSynchronize(in.compute);
        Instance::ClearGraphs(*st.g);
        st.g->breaks = kMaxBreaks;
        st.mode = Instance::Step::kEager;
        ++st.index;
        return s.empty() ? e : e + "; then " + s;
      }
      st.g->ops[i].slots = std::move(cap.slots);
      st.inputs.push_back(std::move(host));
      ++st.index;
      return "";
    }
    case Instance::Step::kReplay: {
      std::vector<Segment>& segs = st.g->segments;
      const bool in_segment = st.segment < segs.size() && i >= segs[st.segment].first;
      if (!aligned || (in_segment && !(placed && Same(op, delta, st.g->ops[i]) && Capturable(in, op) &&
                                       CheckReplay(in, op).empty()))) {
        std::string e = BreakReplay(in);
        ++st.index;
        return e.empty() ? RunOp(in, op, nullptr) : e;
      }
      ++st.index;
      if (!in_segment) return RunOp(in, op, nullptr);  // between graphs
      std::vector<std::pair<uint32_t, std::vector<uint8_t>>> host;
      for (auto& [k, dev] : st.g->ops[i].slots) {
        const auto* b = static_cast<const uint8_t*>(op.inputs[k].data);
        std::vector<uint8_t> bytes(b, b + TensorBytes(op.inputs[k]));
        st.uploads.emplace_back(dev, bytes);
        host.emplace_back(k, std::move(bytes));
      }
      st.inputs.push_back(std::move(host));
      UntrustWrites(in, op);
      TrustGateIds(in, op);
      if (st.index < segs[st.segment].end) return "";
      st.from_graphs += segs[st.segment].end - segs[st.segment].first;
      return LaunchGraph(in, segs[st.segment++].exec);
    }
    default: return RunOp(in, op, nullptr);
  }
}

coda_status_code Fail(const std::string& m, coda_status_code code, char* error, size_t error_size) {
  CopyError(m, error, error_size);
  return code;
}

// For the calls that return no status: a failure to settle is logged (the next call that waits
// reports the device's state).
void SettleOrLog(Instance& in) {
  if (std::string e = Settle(in); !e.empty()) in.Log(CODA_LOG_ERROR, e);
}

coda_status_code StepBegin(void* self, uint64_t key, char* error, size_t error_size) {
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  Instance::Step& st = in.step;
  std::string e = Settle(in);  // a step the host left open (an op failed) ends here
  st = Instance::Step{};
  st.key = key;
  st.mode = Instance::Step::kEager;
  if (in.graphs_enabled && (in.graphs.count(key) || in.graphs.size() < kMaxGraphKeys)) {
    StepGraph& g = in.graphs[key];
    st.g = &g;
    if (g.breaks >= kMaxBreaks) st.mode = Instance::Step::kEager;
    else if (!g.segments.empty()) st.mode = Instance::Step::kReplay;
    else if (g.seen && !g.ops.empty()) st.mode = Instance::Step::kCapture;
    else {
      st.mode = Instance::Step::kRecord;
      g.ops.clear();
    }
  }
  return e.empty() ? CODA_STATUS_OK : Fail(e, CODA_STATUS_DEVICE_ERROR, error, error_size);
}

coda_status_code StepEnd(void* self, char* error, size_t error_size) {
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  Instance::Step& st = in.step;
  std::string e = Settle(in);
  if (st.g) {
    const std::string what = std::to_string(st.from_graphs) + " of " + std::to_string(st.index) + " ops";
    const std::string graphs = std::to_string(st.g->segments.size()) + " graph" + (st.g->segments.size() == 1 ? "" : "s");
    switch (st.mode) {
      case Instance::Step::kRecord: ++st.g->seen; break;
      case Instance::Step::kCapture:
        if (st.g->segments.empty()) st.g->breaks = kMaxBreaks;  // nothing in it a graph can hold
        in.Log(CODA_LOG_DEBUG, "step " + std::to_string(st.key) + ": captured " + what + " in " + graphs);
        break;
      case Instance::Step::kReplay:
        in.Log(CODA_LOG_DEBUG, "step " + std::to_string(st.key) + ": replayed " + what + " from " + graphs);
        break;
      default: break;
    }
  }
  st = Instance::Step{};
  return e.empty() ? CODA_STATUS_OK : Fail(e, CODA_STATUS_DEVICE_ERROR, error, error_size);
}

coda_status_code Create(const coda_host* host, const coda_backend_options* options, void** self, char* error,
                        size_t error_size) {
  if (!host || !self) return Fail("invalid arguments to create()", CODA_STATUS_INVALID_ARGUMENT, error, error_size);
  int count = 0;
  // No device and no (or too old a) driver are this machine's state, not a fault: UNSUPPORTED.
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess)
    return Fail("no CUDA device: " + CudaError(e, "cudaGetDeviceCount") +
                    (e == cudaErrorInsufficientDriver ? "; no NVIDIA driver, or one older than CUDA " + std::to_string(CUDART_VERSION / 1000) : ""),
                CODA_STATUS_UNSUPPORTED, error, error_size);
  if (count == 0) return Fail("no CUDA device", CODA_STATUS_UNSUPPORTED, error, error_size);
  uint32_t index = 0;
  if (options && options->struct_size >= offsetof(coda_backend_options, device) + sizeof(uint32_t))
    index = options->device;
  if (index >= static_cast<uint32_t>(count))
    return Fail("no CUDA device " + std::to_string(index) + " (there are " + std::to_string(count) + ")",
                CODA_STATUS_INVALID_ARGUMENT, error, error_size);
  cudaDeviceProp prop{};
  if (cudaError_t e = cudaGetDeviceProperties(&prop, static_cast<int>(index)); e != cudaSuccess)
    return Fail(CudaError(e, "cudaGetDeviceProperties"), CODA_STATUS_DEVICE_ERROR, error, error_size);
  if (prop.major < 8)
    return Fail(std::string(prop.name) + " is compute capability " + std::to_string(prop.major) + "." +
                    std::to_string(prop.minor) + "; this build needs 8.0 or newer",
                CODA_STATUS_UNSUPPORTED, error, error_size);
  auto in = std::unique_ptr<Instance>(new (std::nothrow) Instance());
  if (!in) return Fail("out of memory", CODA_STATUS_OUT_OF_MEMORY, error, error_size);
  in->device = static_cast<int>(index);
  in->host = host;
  const char* graphs = std::getenv("CODA_CUDA_GRAPHS");
  in->graphs_enabled = !(graphs && std::string(graphs) == "off");
  const bool exact = options && options->struct_size >= offsetof(coda_backend_options, flags) + sizeof(uint32_t) &&
                     (options->flags & CODA_BACKEND_EXACT_PRODUCTS);
  in->fp8_products = !exact && prop.major * 10 + prop.minor >= 89;
  cudaError_t e = cudaSetDevice(in->device);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&in->compute, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&in->transfer, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaMalloc(reinterpret_cast<void**>(&in->graph_start), sizeof(uint32_t));
  if (e != cudaSuccess) return Fail(CudaError(e, "starting the device"), CODA_STATUS_DEVICE_ERROR, error, error_size);
  in->description = "CUDA device " + std::to_string(index) + ": " + prop.name + " (sm_" + std::to_string(prop.major) +
                    std::to_string(prop.minor) + ", " + std::to_string(prop.totalGlobalMem >> 20) + " MiB)";
  *self = in.release();
  return CODA_STATUS_OK;
}

void Destroy(void* self) { delete static_cast<Instance*>(self); }

const char* Describe(void* self) { return static_cast<Instance*>(self)->description.c_str(); }

int SupportsOp(void*, const coda_op* src) {
  coda_op op;
  if (!ReadOp(src, &op)) return 0;
  try {
    return CheckOp(op).empty();
  } catch (...) {
    return 0;
  }
}

coda_status_code Execute(void* self, const coda_op* src, char* error, size_t error_size) {
  coda_op op;
  if (!ReadOp(src, &op)) return Fail("op struct from an unknown ABI revision", CODA_STATUS_INVALID_ARGUMENT, error, error_size);
  auto& in = *static_cast<Instance*>(self);
  try {
    if (std::string why = CheckOp(op); !why.empty()) return Fail("unsupported op: " + why, CODA_STATUS_UNSUPPORTED, error, error_size);
    cudaSetDevice(in.device);
    const std::string e = in.step.mode == Instance::Step::kNone ? RunOp(in, op, nullptr) : StepExecute(in, op);
    return e.empty() ? CODA_STATUS_OK : Fail(e, CODA_STATUS_DEVICE_ERROR, error, error_size);
  } catch (const std::bad_alloc&) {
    return Fail("out of memory", CODA_STATUS_OUT_OF_MEMORY, error, error_size);
  } catch (const std::exception& ex) {
    return Fail(ex.what(), CODA_STATUS_INTERNAL, error, error_size);
  }
}

uint32_t DeviceCount(void*) { return 1; }

coda_status_code DeviceInfo(void* self, uint32_t device, coda_device_info* info, char* error, size_t error_size) {
  const Instance& in = *static_cast<Instance*>(self);
  if (device != 0 || !info || info->struct_size < sizeof(uint32_t))
    return Fail("this instance runs one device (0)", CODA_STATUS_INVALID_ARGUMENT, error, error_size);
  cudaDeviceProp prop{};
  cudaSetDevice(in.device);
  if (cudaError_t e = cudaGetDeviceProperties(&prop, in.device); e != cudaSuccess)
    return Fail(CudaError(e, "cudaGetDeviceProperties"), CODA_STATUS_DEVICE_ERROR, error, error_size);
  size_t free_bytes = 0, total = 0;
  if (cudaError_t e = cudaMemGetInfo(&free_bytes, &total); e != cudaSuccess)
    return Fail(CudaError(e, "cudaMemGetInfo"), CODA_STATUS_DEVICE_ERROR, error, error_size);
  coda_device_info d{};
  d.struct_size = info->struct_size;
  d.kind = CODA_DEVICE_GPU;
  d.total_memory = total;
  d.free_memory = free_bytes;
  std::memcpy(d.name, prop.name, std::min(sizeof d.name - 1, strnlen(prop.name, sizeof prop.name)));  // d is zeroed
  std::memcpy(info, &d, std::min<size_t>(info->struct_size, sizeof d));
  return CODA_STATUS_OK;
}

coda_status_code Prepare(void* self, const coda_weights* weights, void** prepared, char* error, size_t error_size) {
  if (!weights || !prepared || weights->struct_size < offsetof(coda_weights, hparams))
    return Fail("invalid arguments to prepare()", CODA_STATUS_INVALID_ARGUMENT, error, error_size);
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  if (std::string s = Settle(in); !s.empty()) return Fail(s, CODA_STATUS_DEVICE_ERROR, error, error_size);
  try {
    auto p = std::make_unique<Prepared>();
    // Every tensor and its FP8 scales (linked, not listed), each host array once.
    std::vector<const coda_tensor*> list;
    std::unordered_map<const void*, bool> listed;
    for (uint32_t i = 0; i < weights->n_tensors; ++i)
      for (const coda_tensor* t = &weights->tensors[i]; t; t = t == &weights->tensors[i] ? t->scale : nullptr)
        if (t->data && listed.emplace(t->data, true).second) list.push_back(t);
    uint64_t total = 0;
    std::vector<uint64_t> at(list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      at[i] = total;
      total += (TensorBytes(*list[i]) + kAlign - 1) / kAlign * kAlign;
    }
    if (total == 0) {
      *prepared = p.release();
      return CODA_STATUS_OK;
    }
    if (cudaError_t e = cudaMalloc(&p->block, total); e != cudaSuccess)
      return Fail("uploading the weights: " + CudaError(e, "cudaMalloc of " + std::to_string(total) + " bytes"),
                  CODA_STATUS_OUT_OF_MEMORY, error, error_size);
    for (size_t i = 0; i < list.size(); ++i) {
      const coda_tensor& t = *list[i];
      void* dst = static_cast<uint8_t*>(p->block) + at[i];
      if (cudaError_t e = cudaMemcpyAsync(dst, t.data, TensorBytes(t), cudaMemcpyHostToDevice, in.transfer); e != cudaSuccess) {
        cudaFree(p->block);
        return Fail("uploading the weights: " + CudaError(e, "cudaMemcpyAsync"), CODA_STATUS_DEVICE_ERROR, error, error_size);
      }
      p->where[t.data] = dst;
    }
    if (cudaError_t e = cudaStreamSynchronize(in.transfer); e != cudaSuccess) {
      cudaFree(p->block);
      return Fail("uploading the weights: " + CudaError(e, "cudaStreamSynchronize"), CODA_STATUS_DEVICE_ERROR, error, error_size);
    }
    *prepared = p.release();
    return CODA_STATUS_OK;
  } catch (const std::bad_alloc&) {
    return Fail("out of memory", CODA_STATUS_OUT_OF_MEMORY, error, error_size);
  }
}

void Release(void* self, void* prepared) {
  auto* p = static_cast<Prepared*>(prepared);
  if (!p) return;
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  SettleOrLog(in);
  in.DropGraphs();  // they read these weights
  cudaStreamSynchronize(in.compute);
  if (p->block) cudaFree(p->block);
  delete p;
}

coda_status_code Synchronize(void* self, char* error, size_t error_size) {
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  if (std::string s = Settle(in); !s.empty()) return Fail(s, CODA_STATUS_DEVICE_ERROR, error, error_size);
  cudaError_t e = cudaStreamSynchronize(in.compute);
  if (e == cudaSuccess) e = cudaStreamSynchronize(in.transfer);
  return e == cudaSuccess ? CODA_STATUS_OK : Fail(CudaError(e, "synchronize"), CODA_STATUS_DEVICE_ERROR, error, error_size);
}

coda_status_code BufferAlloc(void* self, uint64_t size, coda_buffer* buffer, char* error, size_t error_size) {
  if (!buffer) return Fail("buffer_alloc without a result pointer", CODA_STATUS_INVALID_ARGUMENT, error, error_size);
  cudaSetDevice(static_cast<Instance*>(self)->device);
  auto* b = new (std::nothrow) coda_buffer_impl{nullptr, size};
  if (!b) return Fail("out of memory", CODA_STATUS_OUT_OF_MEMORY, error, error_size);
  if (cudaError_t e = cudaMalloc(&b->ptr, std::max<uint64_t>(size, 1)); e != cudaSuccess) {
    delete b;
    return Fail(CudaError(e, "cudaMalloc"), CODA_STATUS_OUT_OF_MEMORY, error, error_size);
  }
  *buffer = b;
  return CODA_STATUS_OK;
}

void BufferFree(void* self, coda_buffer buffer) {
  if (!buffer) return;
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  SettleOrLog(in);
  in.DropGraphs();  // they may use it
  cudaStreamSynchronize(in.compute);  // no queued op may still use it
  cudaStreamSynchronize(in.transfer);
  static_cast<Instance*>(self)->Untrust(buffer->ptr, buffer->size);
  cudaFree(buffer->ptr);
  delete buffer;
}

coda_status_code Copy(void* self, void* dst, const void* src, uint64_t size, cudaMemcpyKind kind, uint32_t queue,
                      char* error, size_t error_size) {
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  // Compute work held back for a graph comes first (transfers are ordered to it by events).
  if (queue != CODA_QUEUE_TRANSFER)
    if (std::string s = Settle(in); !s.empty()) return Fail(s, CODA_STATUS_DEVICE_ERROR, error, error_size);
  if (size == 0) return CODA_STATUS_OK;
  const cudaError_t e = cudaMemcpyAsync(dst, src, size, kind, in.Stream(queue));
  return e == cudaSuccess ? CODA_STATUS_OK : Fail(CudaError(e, "cudaMemcpyAsync"), CODA_STATUS_DEVICE_ERROR, error, error_size);
}

coda_status_code Upload(void* self, coda_buffer dst, uint64_t off, const void* src, uint64_t size, uint32_t queue,
                        char* error, size_t error_size) {
  if (!InRange(dst, off, size, error, error_size)) return CODA_STATUS_INVALID_ARGUMENT;
  static_cast<Instance*>(self)->Untrust(static_cast<uint8_t*>(dst->ptr) + off, size);
  return Copy(self, static_cast<uint8_t*>(dst->ptr) + off, src, size, cudaMemcpyHostToDevice, queue, error, error_size);
}

coda_status_code Download(void* self, coda_buffer src, uint64_t off, void* dst, uint64_t size, uint32_t queue,
                          char* error, size_t error_size) {
  if (!InRange(src, off, size, error, error_size)) return CODA_STATUS_INVALID_ARGUMENT;
  return Copy(self, dst, static_cast<uint8_t*>(src->ptr) + off, size, cudaMemcpyDeviceToHost, queue, error, error_size);
}

coda_status_code BufferCopy(void* self, coda_buffer src, uint64_t src_off, coda_buffer dst, uint64_t dst_off,
                            uint64_t size, uint32_t queue, char* error, size_t error_size) {
  if (!InRange(src, src_off, size, error, error_size) || !InRange(dst, dst_off, size, error, error_size))
    return CODA_STATUS_INVALID_ARGUMENT;
  static_cast<Instance*>(self)->Untrust(static_cast<uint8_t*>(dst->ptr) + dst_off, size);
  // cudaMemcpy handles overlapping device ranges like memmove.
  return Copy(self, static_cast<uint8_t*>(dst->ptr) + dst_off, static_cast<uint8_t*>(src->ptr) + src_off, size,
              cudaMemcpyDeviceToDevice, queue, error, error_size);
}

coda_status_code EventCreate(void* self, coda_event* event, char* error, size_t error_size) {
  cudaSetDevice(static_cast<Instance*>(self)->device);
  auto* ev = new (std::nothrow) coda_event_impl{nullptr};
  if (!ev) return Fail("out of memory", CODA_STATUS_OUT_OF_MEMORY, error, error_size);
  if (cudaError_t e = cudaEventCreateWithFlags(&ev->event, cudaEventDisableTiming); e != cudaSuccess) {
    delete ev;
    return Fail(CudaError(e, "cudaEventCreate"), CODA_STATUS_DEVICE_ERROR, error, error_size);
  }
  *event = ev;
  return CODA_STATUS_OK;
}

coda_status_code EventRecord(void* self, coda_event event, uint32_t queue, char* error, size_t error_size) {
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  if (queue != CODA_QUEUE_TRANSFER)  // the event marks the compute work issued so far, held back or not
    if (std::string s = Settle(in); !s.empty()) return Fail(s, CODA_STATUS_DEVICE_ERROR, error, error_size);
  const cudaError_t e = cudaEventRecord(event->event, in.Stream(queue));
  return e == cudaSuccess ? CODA_STATUS_OK : Fail(CudaError(e, "cudaEventRecord"), CODA_STATUS_DEVICE_ERROR, error, error_size);
}

coda_status_code EventWait(void* self, coda_event event, uint32_t queue, char* error, size_t error_size) {
  Instance& in = *static_cast<Instance*>(self);
  cudaSetDevice(in.device);
  // Compute work after the wait must not be in a graph launched without it.
  if (queue != CODA_QUEUE_TRANSFER)
    if (std::string s = Settle(in); !s.empty()) return Fail(s, CODA_STATUS_DEVICE_ERROR, error, error_size);
  const cudaError_t e = queue == CODA_QUEUE_HOST ? cudaEventSynchronize(event->event)
                                                 : cudaStreamWaitEvent(in.Stream(queue), event->event, 0);
  return e == cudaSuccess ? CODA_STATUS_OK : Fail(CudaError(e, "waiting for an event"), CODA_STATUS_DEVICE_ERROR, error, error_size);
}

void EventDestroy(void* self, coda_event event) {
  if (!event) return;
  cudaSetDevice(static_cast<Instance*>(self)->device);
  cudaEventDestroy(event->event);
  delete event;
}

const coda_backend_api kApi = {
#ifdef CODA_CUDA_EMULATION
    sizeof(coda_backend_api), CODA_BACKEND_ABI_VERSION, "cuda-emu", "0.2.0",
#else
    sizeof(coda_backend_api), CODA_BACKEND_ABI_VERSION, "cuda", "0.2.0",
#endif
    Create, Destroy, Describe, SupportsOp, Execute,
    DeviceCount, DeviceInfo,
    Prepare, Release,
    Synchronize,
    BufferAlloc, BufferFree, Upload, Download, BufferCopy,
    EventCreate, EventRecord, EventWait, EventDestroy,
    StepBegin, StepEnd,
};

}  // namespace
}  // namespace coda::cuda

// The table is returned whatever the host's version: the host reads abi_version and refuses a
// mismatch itself, naming both numbers.
extern "C" CODA_BACKEND_EXPORT const coda_backend_api* coda_backend_entry(uint32_t) { return &coda::cuda::kApi; }
