// The state of one CUDA backend instance and what its parts share: the ABI functions
// (backend.cc), the ops (ops.cc) and the steps replayed as CUDA graphs (steps.cc).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "backend_util.h"
#include "coda_backend.h"
#include "kernels.h"
#include "lt.h"

struct coda_buffer_impl {
  void* ptr;
  uint64_t size;
};

struct coda_event_impl {
  cudaEvent_t event;
};

namespace coda::cuda {

constexpr uint64_t kAlign = 256;  // cudaMalloc's alignment; each tensor of a block starts on it

inline std::string CudaError(cudaError_t e, const std::string& what) {
  return what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

// The weights prepare() uploaded: one device block, and where each host tensor went.
struct Prepared {
  void* block = nullptr;
  std::unordered_map<const void*, void*> where;
};

// The tensor is in device memory already (a buffer, or uploaded by prepare()), or absent.
inline bool OnDevice(const coda_tensor& t, const Prepared* prepared) {
  return t.buffer || !t.data || (prepared && prepared->where.count(t.data));
}

// ---- Steps (steps.cc says how they are recorded, captured and replayed) ----

// One op of a step as it was executed: the op and copies of everything it points to.
struct OpRecord {
  coda_op op{};
  std::vector<coda_tensor> tensors;  // inputs, outputs, weights, then the weights' scales
  coda_hparams hp{};
  std::vector<float> freq;
  bool no_freq = false;                           // the op had no frequencies (rope_inv_freq NULL)
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
  uint64_t used = 0;    // the step count when the key was last begun
  std::vector<OpRecord> ops;
  std::vector<Segment> segments;  // in order
  std::vector<void*> memory;      // the graphs' own device memory: host inputs and tables they read
};

struct Instance {
  int device = 0;
  const coda_host* host = nullptr;
  // Products may quantize activations (CODA_BACKEND_EXACT_PRODUCTS unset) and the device has FP8
  // tensor cores (sm_89 and later): FP8 weights then multiply on them (kernels.h, Fp8Eligible).
  bool fp8_products = false;
  // Unless exact: BF16 weights, and FP8 weights where fp8_products is off, multiply on the BF16
  // tensor cores (kernels.h, Bf16Eligible).
  bool bf16_products = false;
  // cuBLASLt's block-scaled FP8 products for prefill (lt.h), where the library is there and proved
  // itself; CODA_CUDA_CUBLASLT=off leaves all products to the own kernels.
  std::unique_ptr<LtFp8> lt;
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
  uint64_t steps = 0;  // steps begun
  // The step under way, between step_begin and step_end.
  struct Step {
    enum Mode { kNone, kEager, kRecord, kCapture, kReplay } mode = kNone;
    StepGraph* g = nullptr;
    uint64_t key = 0;
    uint32_t start = 0;
    bool started = false;    // an op has come, and `start` is its position
    size_t index = 0;        // ops of the step so far
    bool open = false;       // capture: ops [first, index) are held back for a graph
    size_t first = 0;
    bool stale = false;      // capture: an op could be in a graph, but not as recorded
    size_t segment = 0;      // replay: the next segment to launch
    size_t from_graphs = 0;  // ops run by graphs in this step
    bool start_written = false;  // graph_start holds `start`
    // Host bytes to copy to the device before the next graph's launch, and the host inputs
    // (index, bytes) of each op held back for it, from which it is captured, or run one by one
    // should the step break off.
    std::vector<std::pair<void*, std::vector<uint8_t>>> uploads;
    std::vector<std::vector<std::pair<uint32_t, std::vector<uint8_t>>>> inputs;
  } step;

  ~Instance();  // backend.cc
  // Graphs hold the addresses of scratch, tables and buffers: when any of those moves or goes,
  // every graph goes (after the work that may still use them). The records stay: the next step of
  // a key captures again, from the ops as they then are. (steps.cc)
  void DropGraphs();
  // A key's graphs and their memory (after the stream has drained).
  static void ClearGraphs(StepGraph& g);
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

// An op being captured into a step's graph (steps.cc): its host inputs go to device memory
// of the graph's own, copied before each launch, instead of scratch.
struct Capture {
  const coda_op* op = nullptr;
  std::vector<std::pair<uint32_t, void*>> slots;  // input index, its device copy
};

// ---- ops.cc ----
// Why this backend cannot run the op, or empty.
std::string CheckOp(const coda_op& op);
// Runs an op now, or into the graph being captured when `capture` is set.
std::string RunOp(Instance& in, const coda_op& op, Capture* capture);
// What execute() checks that a replay must check again: Embed's ids against its table, and that
// an attention's cache holds its positions.
std::string CheckTokenIds(const int32_t* ids, const coda_op& op);
std::string CheckMlaCache(const coda_op& op);
// What an op's writes do to the trusted ids (Instance::trusted_ids): its outputs and cache are no
// longer a MoeGate's ids, and a MoeGate's ids output in a buffer is, once the op succeeded.
void UntrustWrites(Instance& in, const coda_op& op);
void TrustGateIds(Instance& in, const coda_op& op);
// MoeExperts may take its ids as they are (no read back, nothing to check): this backend's own
// MoeGate wrote them and every expert is on the device.
bool IdsTrusted(const Instance& in, const coda_op& op, const Prepared* prepared);
// The device's rope table (Instance::rope) holds the op's positions at its frequencies.
bool RopeCovers(const Instance& in, const coda_op& op);

// ---- steps.cc ----
// Begins a step under `key`, ending one left open first.
std::string BeginStep(Instance& in, uint64_t key);
// Runs (or captures, or holds back) an op of the step under way.
std::string StepExecute(Instance& in, const coda_op& op);
// Issues what the step holds back, before a call that must see it.
std::string Settle(Instance& in);
std::string EndStep(Instance& in);

}  // namespace coda::cuda
