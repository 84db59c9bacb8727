// Forward passes the host brackets with step_begin and step_end (coda_backend.h), replayed as
// CUDA graphs.
//
// The first time a key is seen, its ops run one by one and are recorded (OpRecord). The second
// time, each run of consecutive ops that match their records and that a graph can hold is held
// back, then captured into a CUDA graph (a Segment) and launched, all within the call where the
// run ends: before an op a graph cannot hold (one that writes host memory, or reads an expert
// cache the host refills), a copy the host asks for, or the step's end. So no capture stays open
// between calls, and one that fails leaves nothing half done: the ops held back run one by one.
// From the third time, ops are only checked against their records, those in a segment held back
// with their host inputs, and each segment's graph is launched when its last op has come; the ops
// between segments run one by one. An op unlike its record in a segment, or a call that must see
// the work held back, means the ops held back run one by one after all, and the key records anew.
// Either way the same kernels run with the same arguments (the position excepted, which a graph
// reads from device memory), so results are identical.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "instance.h"

namespace coda::cuda {
namespace {

using backend_util::TensorBytes;

constexpr uint32_t kMaxBreaks = 3;            // replays that may break off before a key gives up
constexpr size_t kMaxGraphKeys = 16;          // keys recorded at once (the least recently used goes)
constexpr size_t kMaxStepOps = 1 << 16;       // ops recorded per key
constexpr uint64_t kMaxGraphInput = 1 << 20;  // host input bytes a graph copies in per op
// Steps of more tokens (prefill) are not recorded: their kernels are long enough that launching
// them one by one costs little, and their records would be large.
constexpr uint32_t kMaxGraphTokens = 16;

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
  if (op.type == CODA_OP_MLA_ATTENTION) {
    if (!op.kv.buffer) return "its KV cache is host memory";
    // The table is rebuilt by a plain run only (another model's step may have replaced it).
    if (op.hparams->qk_rope_head_dim / 2 && !RopeCovers(in, op))
      return "the rope table does not cover its positions and frequencies";
  }
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
  r.hp.rope_inv_freq = r.no_freq ? nullptr : r.freq.data();
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
  if (op.hparams->rope_inv_freq) r.freq.assign(op.hparams->rope_inv_freq, op.hparams->rope_inv_freq + op.hparams->qk_rope_head_dim / 2);
  r.no_freq = !op.hparams->rope_inv_freq;
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
  // coda_hparams: its 32-bit fields (not the padding before the pointer), then the frequencies.
  return std::memcmp(op.hparams, &r.hp, offsetof(coda_hparams, softmax_scale) + sizeof(float)) == 0 &&
         !op.hparams->rope_inv_freq == r.no_freq &&
         (r.no_freq || std::equal(r.freq.begin(), r.freq.end(), op.hparams->rope_inv_freq));
}

// What execute() checks of an op before running it that depends on what a replay changes: the
// position and the host inputs.
std::string CheckReplay(const coda_op& op) {
  if (op.type == CODA_OP_EMBED) return CheckTokenIds(static_cast<const int32_t*>(op.inputs[0].data), op);
  if (op.type == CODA_OP_MLA_ATTENTION) return CheckMlaCache(op);
  return "";
}

// Copies the held-back host bytes and the step's position in, then launches a graph.
std::string LaunchGraph(Instance& in, cudaGraphExec_t exec) {
  Instance::Step& st = in.step;
  cudaError_t up = cudaSuccess;
  for (auto& [dev, bytes] : st.uploads)
    if (up == cudaSuccess) up = cudaMemcpyAsync(dev, bytes.data(), bytes.size(), cudaMemcpyHostToDevice, in.compute);
  st.uploads.clear();
  st.inputs.clear();
  if (up != cudaSuccess) return CudaError(up, "copying a graph's inputs");
  // Once per step (every graph of it reads the same). Pageable sources are staged before
  // cudaMemcpyAsync returns: st.start may change afterwards.
  cudaError_t e = cudaSuccess;
  if (!st.start_written)
    e = cudaMemcpyAsync(in.graph_start, &st.start, sizeof st.start, cudaMemcpyHostToDevice, in.compute);
  st.start_written = e == cudaSuccess;
  if (e == cudaSuccess) e = cudaGraphLaunch(exec, in.compute);
  return e == cudaSuccess ? "" : CudaError(e, "launching a CUDA graph");
}

// Op j of the record as this step has it, ops held back from `from` on: its position, and the
// host inputs it came with (st.inputs).
struct Rebuilt {
  coda_op op{};
  std::vector<coda_tensor> inputs;
};
void Rebuild(Instance::Step& st, size_t j, size_t from, Rebuilt* out) {
  OpRecord& r = st.g->ops[j];
  out->op = Fix(r);
  out->inputs.assign(out->op.inputs, out->op.inputs + out->op.n_inputs);
  if (j - from < st.inputs.size())
    for (auto& [i, bytes] : st.inputs[j - from]) out->inputs[i].data = bytes.data();
  out->op.inputs = out->inputs.data();
  out->op.start_pos = st.start + r.delta;
}

// Runs the ops held back, [from, to) of the record, one by one: a replay that broke off, or a
// capture that could not become a graph.
std::string RunRecorded(Instance& in, size_t from, size_t to) {
  Instance::Step& st = in.step;
  std::string e;
  Rebuilt op;
  for (size_t j = from; j < to && e.empty(); ++j) {
    Rebuild(st, j, from, &op);
    e = RunOp(in, op.op, nullptr);
  }
  st.uploads.clear();
  st.inputs.clear();
  return e;
}

// Capture: the ops held back, [st.first, st.index), are captured into a graph that then runs. A
// capture that fails is thrown away before anything of it ran, and the ops run one by one.
std::string EndSegment(Instance& in) {
  Instance::Step& st = in.step;
  if (!st.open) return "";
  st.open = false;
  std::string e;
  cudaError_t ce = cudaStreamBeginCapture(in.compute, cudaStreamCaptureModeRelaxed);
  if (ce == cudaSuccess) {
    Rebuilt op;
    for (size_t j = st.first; j < st.index && e.empty(); ++j) {
      Rebuild(st, j, st.first, &op);
      Capture cap;
      cap.op = &op.op;
      e = RunOp(in, op.op, &cap);
      st.g->ops[j].slots = std::move(cap.slots);
    }
    cudaGraph_t graph = nullptr;
    ce = cudaStreamEndCapture(in.compute, &graph);  // always: the stream leaves capture mode
    cudaGraphExec_t exec = nullptr;
    if (e.empty() && ce == cudaSuccess) ce = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (e.empty() && ce == cudaSuccess) {
      st.g->segments.push_back({st.first, st.index, exec});
      st.from_graphs += st.index - st.first;
      return LaunchGraph(in, exec);
    }
    if (exec) cudaGraphExecDestroy(exec);
  }
  in.Log(CODA_LOG_WARNING, (e.empty() ? CudaError(ce, "capturing a CUDA graph") : "capturing a CUDA graph: " + e) +
                               "; step " + std::to_string(st.key) + " runs op by op");
  st.g->breaks = kMaxBreaks;
  return RunRecorded(in, st.first, st.index);
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

// Holds an op back for a graph: a copy of its host inputs (for the graph's slots, when it has
// them, and to run it one by one should the step break off), and what it does to the trusted
// ids, as if it had run.
void HoldBack(Instance& in, const coda_op& op, const std::vector<std::pair<uint32_t, void*>>& slots) {
  Instance::Step& st = in.step;
  std::vector<std::pair<uint32_t, std::vector<uint8_t>>> host;
  for (uint32_t k = 0; k < op.n_inputs; ++k)
    if (!op.inputs[k].buffer && op.inputs[k].data) {
      const auto* b = static_cast<const uint8_t*>(op.inputs[k].data);
      host.emplace_back(k, std::vector<uint8_t>(b, b + TensorBytes(op.inputs[k])));
      for (const auto& [i, dev] : slots)
        if (i == k) st.uploads.emplace_back(dev, host.back().second);
    }
  st.inputs.push_back(std::move(host));
  UntrustWrites(in, op);
  TrustGateIds(in, op);
}

}  // namespace

void Instance::DropGraphs() {
  bool any = false;
  for (auto& [key, g] : graphs) any = any || !g.segments.empty() || !g.memory.empty();
  if (!any) return;
  cudaStreamSynchronize(compute);
  for (auto& [key, g] : graphs) ClearGraphs(g);
  // Nothing is held back when this is called (only plain runs and settled calls get here).
  if (step.mode == Step::kCapture || step.mode == Step::kReplay) step.mode = Step::kEager;
}

void Instance::ClearGraphs(StepGraph& g) {
  for (Segment& seg : g.segments) cudaGraphExecDestroy(seg.exec);
  g.segments.clear();
  for (void* p : g.memory) cudaFree(p);
  g.memory.clear();
  for (OpRecord& r : g.ops) r.slots.clear();
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
      if (op.n_tokens > kMaxGraphTokens || st.g->ops.size() >= kMaxStepOps) {
        st.g->breaks = kMaxBreaks;  // a key for prefill (or a pass too long to record) runs op by op
        st.g->ops.clear();
        st.mode = Instance::Step::kEager;
        return RunOp(in, op, nullptr);
      }
      const bool capturable = placed && Capturable(in, op);
      std::string e = RunOp(in, op, nullptr);
      ++st.index;
      if (e.empty()) st.g->ops.push_back(Record(op, delta, capturable));
      else st.mode = Instance::Step::kEager;  // a step that failed is not one to replay
      return e;
    }
    case Instance::Step::kCapture: {
      if (!aligned) {  // the plan changed: this step runs op by op, and the next records it anew
        std::string e = EndSegment(in);
        cudaStreamSynchronize(in.compute);
        Instance::ClearGraphs(*st.g);
        st.g->seen = 0;
        st.mode = Instance::Step::kEager;
        ++st.index;
        return e.empty() ? RunOp(in, op, nullptr) : e;
      }
      const bool same = placed && Same(op, delta, st.g->ops[i]);
      if (!(same && st.g->ops[i].capturable && Capturable(in, op))) {
        if (st.open)
          in.Log(CODA_LOG_DEBUG, "step " + std::to_string(st.key) + ": a graph ends before op " + std::to_string(i) + " (" +
                                     coda_op_name(op.type) + "): " + Why(in, op, i, delta, placed));
        // An op that could be in a graph but not as recorded (its buffers moved, say): the
        // record is stale, and the next step records anew.
        if (!same && st.g->ops[i].capturable) st.stale = true;
        std::string e = EndSegment(in);
        ++st.index;
        return e.empty() ? RunOp(in, op, nullptr) : e;
      }
      if (!st.open) {
        st.open = true;
        st.first = i;
      }
      HoldBack(in, op, {});
      ++st.index;
      return "";
    }
    case Instance::Step::kReplay: {
      std::vector<Segment>& segs = st.g->segments;
      const bool in_segment = st.segment < segs.size() && i >= segs[st.segment].first;
      if (!aligned || (in_segment && !(placed && Same(op, delta, st.g->ops[i]) && Capturable(in, op) &&
                                       CheckReplay(op).empty()))) {
        std::string e = BreakReplay(in);
        ++st.index;
        return e.empty() ? RunOp(in, op, nullptr) : e;
      }
      ++st.index;
      if (!in_segment) return RunOp(in, op, nullptr);  // between graphs
      HoldBack(in, op, st.g->ops[i].slots);
      if (st.index < segs[st.segment].end) return "";
      st.from_graphs += segs[st.segment].end - segs[st.segment].first;
      return LaunchGraph(in, segs[st.segment++].exec);
    }
    default: return RunOp(in, op, nullptr);
  }
}

std::string BeginStep(Instance& in, uint64_t key) {
  Instance::Step& st = in.step;
  std::string e = Settle(in);  // a step the host left open (an op failed) ends here
  st = Instance::Step{};
  st.key = key;
  st.mode = Instance::Step::kEager;
  if (in.graphs_enabled) {
    if (!in.graphs.count(key) && in.graphs.size() >= kMaxGraphKeys) {
      auto lru = std::min_element(in.graphs.begin(), in.graphs.end(),
                                  [](const auto& a, const auto& b) { return a.second.used < b.second.used; });
      cudaStreamSynchronize(in.compute);  // its graphs may still run
      Instance::ClearGraphs(lru->second);
      in.graphs.erase(lru);
    }
    StepGraph& g = in.graphs[key];
    g.used = ++in.steps;
    st.g = &g;
    if (g.breaks >= kMaxBreaks) st.mode = Instance::Step::kEager;
    else if (!g.segments.empty()) st.mode = Instance::Step::kReplay;
    else if (g.seen && !g.ops.empty()) st.mode = Instance::Step::kCapture;
    else {
      st.mode = Instance::Step::kRecord;
      g.ops.clear();
    }
  }
  return e;
}

std::string EndStep(Instance& in) {
  Instance::Step& st = in.step;
  std::string e = Settle(in);
  if (st.g) {
    const std::string what = std::to_string(st.from_graphs) + " of " + std::to_string(st.index) + " ops";
    const std::string graphs = std::to_string(st.g->segments.size()) + " graph" + (st.g->segments.size() == 1 ? "" : "s");
    switch (st.mode) {
      case Instance::Step::kRecord: ++st.g->seen; break;
      case Instance::Step::kCapture:
        in.Log(CODA_LOG_DEBUG, "step " + std::to_string(st.key) + ": captured " + what + " in " + graphs);
        if (st.stale) {  // record anew, a limited number of times
          cudaStreamSynchronize(in.compute);
          Instance::ClearGraphs(*st.g);
          st.g->seen = 0;
          ++st.g->breaks;
        } else if (st.g->segments.empty()) {
          st.g->breaks = kMaxBreaks;  // nothing in it a graph can hold
        }
        break;
      case Instance::Step::kReplay:
        in.Log(CODA_LOG_DEBUG, "step " + std::to_string(st.key) + ": replayed " + what + " from " + graphs);
        break;
      default: break;
    }
    if (st.g->breaks >= kMaxBreaks && (!st.g->segments.empty() || !st.g->memory.empty())) {
      cudaStreamSynchronize(in.compute);
      Instance::ClearGraphs(*st.g);  // a key that runs op by op for good keeps nothing on the device
    }
  }
  st = Instance::Step{};
  return e;
}

}  // namespace coda::cuda
