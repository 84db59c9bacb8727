// The runtime's public API: a Context owns backends; a Model is a loaded .coda file; a Session
// runs the model's graph over one sequence with its own latent KV cache.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "coda/backend.h"
#include "coda/dtype.h"
#include "coda/expert_store.h"
#include "coda/kv_cache.h"
#include "coda/model_config.h"
#include "coda/model_file.h"
#include "coda/sampler.h"
#include "coda/status.h"
#include "coda_backend.h"

namespace coda {

struct ContextOptions {
  uint32_t n_threads = 0;  // 0: one per core
  // CODA_BACKEND_EXACT_PRODUCTS: products in F32, no quantized activations (slower prefill).
  bool exact_products = false;
  // Entry points of backends linked into the program (the CPU backend at least). A refused
  // table is an error.
  std::vector<coda_backend_entry_fn> backends;
  // Directories scanned for libcoda-backend-<name>.so (tools pass BackendSearchPath()). A file
  // that cannot be used is noted (Context::notes()) and the others still load; a name already
  // loaded (linked in, or found earlier) is skipped without opening the file.
  std::vector<std::string> plugin_dirs;
  // Library files to load whatever their names; a refusal is an error.
  std::vector<std::string> plugin_files;
  // Backends' log lines; default: warnings and errors to stderr.
  LogFn log;
};

// Owns the backend libraries and instances; everything that runs a model borrows them from here
// and must not outlive it.
class Context {
 public:
  static Result<std::unique_ptr<Context>> Create(const ContextOptions& options);
  const std::vector<std::unique_ptr<Backend>>& backends() const { return backends_; }
  // The backend called `name`, or an error listing the available ones (and why a library of
  // that name was refused, if one was).
  Result<Backend*> Find(std::string_view name) const;
  // Libraries found but not used: refused (with the reason) or skipped as duplicates.
  const std::vector<BackendNote>& notes() const { return registry_.notes(); }
  // A number no other session of this context has: with its plan, it names a session's forward
  // passes to the backends (coda_backend.h, steps).
  uint64_t NewSessionId() const { return ++sessions_; }

 private:
  BackendRegistry registry_;  // declared first: instances go before their libraries are closed
  std::vector<std::unique_ptr<Backend>> backends_;
  mutable std::atomic<uint64_t> sessions_{0};
};

struct ModelLoadOptions {
  // Map every page at load time. Decoding touches experts at random; without this the first
  // tokens fault the file in page by page. kAuto: when the file takes at most half of the
  // available memory (a model larger than that is left to demand paging).
  enum class Prefault { kAuto, kAlways, kNever } prefault = Prefault::kAuto;
  // How the weights not offloaded are held. Decode streams them: where the page cache holds
  // the file in 4 KB pages (copied with cp, read at random, re-read after memory pressure),
  // page walks cost it 10-45%. kAuto maps the file, and when the kernel maps less than 90% of it
  // in 2 MB pages, copies the weights into anonymous 2 MB-page memory instead, if transparent
  // huge pages are on and the copy fits in available memory with a margin. kMap: always the
  // mapping; kCopy: always the copy (an error when it does not fit).
  enum class Weights { kAuto, kMap, kCopy } weights = Weights::kAuto;
  // Called as long steps of loading go (reading the file in, copying the weights): the step's
  // name, bytes done and in all. Optional.
  std::function<void(std::string_view step, uint64_t done, uint64_t total)> progress;
  // Routed experts in an expert store (core/moe: a RAM cache filled by direct reads of the file)
  // instead of the file mapping, for models larger than memory. kAuto: when the file does not
  // fit in the memory this process can get (cgroup limits included), less a margin. The rest of
  // the weights are then read into memory at load.
  enum class Offload { kAuto, kOn, kOff } offload = Offload::kAuto;
  // Bytes of expert cache; 0: what is available after the other weights, less a margin.
  uint64_t expert_budget = 0;
  EvictionPolicy eviction = EvictionPolicy::kFrequency;
};

// A loaded model: the mapped file plus what the ops need, derived once.
class Model {
 public:
  static Result<std::shared_ptr<Model>> Load(const std::string& path, const ModelLoadOptions& options = {});
  // A model file already opened (and validated), e.g. from bytes in memory; they must outlive it.
  static Result<std::shared_ptr<Model>> FromFile(ModelFile file, const ModelLoadOptions& options = {});

  const ModelConfig& config() const { return file_.config(); }
  const ModelFile& file() const { return file_; }
  const coda_hparams& hparams() const { return hparams_; }
  // The ABI view of tensor `i` (with its scale linked for FP8).
  const coda_tensor& tensor(int32_t i) const { return tensors_[static_cast<size_t>(i)]; }
  // RoPE inverse frequencies after the YaRN correction, and the attention softmax scale.
  const std::vector<float>& rope_inv_freq() const { return inv_freq_; }
  bool yarn_active() const { return yarn_active_; }
  // Bytes of weights the main forward pass reads for one token (active experts only).
  uint64_t active_weight_bytes() const { return active_weight_bytes_; }
  // The store serving the routed experts, or null when they are read from the file mapping.
  ExpertStore* expert_store() const { return experts_.get(); }
  // How the weights are held and why, one line: "mapped (99% in 2 MB pages)", "copied into
  // 2 MB pages (the page cache held 0% of the file in them)", ...
  const std::string& weights_held() const { return weights_held_; }

 private:
  Model() = default;
  ModelFile file_;
  std::vector<coda_tensor> tensors_;
  std::vector<float> inv_freq_;
  coda_hparams hparams_{};
  bool yarn_active_ = false;
  uint64_t active_weight_bytes_ = 0;
  std::string weights_held_;
  std::shared_ptr<uint8_t> weights_copy_;  // copied weights, or with an expert store the others
  std::unique_ptr<ExpertStore> experts_;   // null: every weight from the file mapping (or its copy)
};

struct SessionOptions {
  uint32_t n_ctx = 4096;
  DType kv_dtype = DType::kBF16;
  // Backend names in order of preference; ops none of them supports run on "cpu".
  std::vector<std::string> backends = {"cpu"};
  // Bytes of its memory a device backend may fill with weights and the KV cache (activations
  // come on top); 0: what the device reports free. When the weights placed on it do not fit, its
  // routed experts stay in host memory and a cache of them fills what is left (expert offloading,
  // device tier); a budget that cannot hold one layer's active experts is refused.
  uint64_t device_memory = 0;
};

// Where one graph node runs, and why there.
struct NodePlacement {
  Backend* backend = nullptr;
  std::string reason;
};

// Places each node of the model's graph on the first backend in options.backends (then "cpu")
// whose supports_op() accepts it, probing with the node's weights and activation shapes.
Result<std::vector<NodePlacement>> PlaceGraph(const Context& context, const Model& model,
                                              const SessionOptions& options);

// What a device backend running routed experts holds. When its memory cannot hold the weights of
// the nodes placed on it, their KV cache and every routed expert (or the model has its experts in
// the RAM store), the device tier of expert offloading serves them: they stay in host memory and
// a cache of `capacity` of them fills what is left.
struct DeviceExpertPlan {
  Backend* backend = nullptr;
  uint64_t budget = 0;        // bytes it may hold (options.device_memory, or what it reports)
  uint64_t other_bytes = 0;   // weights but routed experts (each rounded to 256 bytes)
  uint64_t kv_bytes = 0;      // the latent cache of its layers
  uint64_t slot_bytes = 0;    // one expert's range of the file, rounded to 256 bytes
  uint32_t experts = 0;       // routed experts of its nodes
  uint32_t capacity = 0;      // ... of which it holds
  bool offload = false;       // the device tier serves them (else all are prepared on it)
};
// One plan per device backend with routed experts; a budget that cannot hold one layer's active
// experts beside the rest is an error naming the minimum.
Result<std::vector<DeviceExpertPlan>> PlanDeviceExperts(const Model& model, const std::vector<NodePlacement>& placement,
                                                        const SessionOptions& options);

// Called after each graph node (for tests and diagnostics): the node and its outputs.
using NodeObserver = std::function<void(const GraphNode& node, std::span<const coda_tensor> outputs)>;

// How offloading went (a session whose model has an expert store).
struct OffloadStats {
  ExpertStoreStats store;         // the model's store (shared by its sessions)
  uint64_t predicted_total = 0;   // experts used in layers a prediction was made for
  uint64_t predicted_hits = 0;    // ... of which the prediction named
  uint64_t predicted_issued = 0;  // experts predicted
  // The device tier: routed experts of nodes on a device backend, cached in its memory.
  struct Device {
    std::string backend;             // empty: no device tier
    uint32_t capacity = 0;           // experts the device cache holds
    uint32_t total = 0;              // routed experts of the nodes it serves
    uint64_t slot_bytes = 0;
    uint64_t requests = 0;           // experts used by device nodes
    uint64_t hits = 0;               // ... resident when needed
    uint64_t uploads = 0;            // experts uploaded because a call needed them
    uint64_t promotions = 0;         // experts uploaded after running on the CPU, being used often
    uint64_t bytes_uploaded = 0;     // both kinds
    uint64_t cpu_experts = 0;        // experts computed on the CPU instead (hybrid execution)
    uint64_t bytes_missed = 0;       // the minimum to move: bytes of the experts not resident when needed
    double upload_gbs = 0;           // the transfer rate the cost model uses (measured)
    double cpu_gbs = 0;              // the CPU's rate on experts the cost model uses (measured)
    double upload_seconds = 0, cpu_seconds = 0;
  } device;
};

class Session {
 public:
  static Result<std::unique_ptr<Session>> Create(const Context& context, std::shared_ptr<const Model> model,
                                                 const SessionOptions& options);
  ~Session();

  // Runs `tokens` at positions n_past() .. n_past() + n - 1 and appends them to the cache.
  // Returns the logits, [n, vocab] when all_logits else [1, vocab] for the last token; the span
  // stays valid until the next call.
  Result<std::span<const float>> Forward(std::span<const int32_t> tokens, bool all_logits = false);

  uint32_t n_past() const;
  uint32_t n_ctx() const;
  // Forgets everything (n_past = 0).
  void Reset();
  // Keeps the first n positions (e.g. the shared prefix of a conversation) and drops the rest.
  Status Rewind(uint32_t n);
  // Moves to position n without computing anything: positions below n count as filled with
  // whatever the cache holds. Benchmarks use it to time decoding at a depth without a prefill.
  Status JumpTo(uint32_t n);
  const LatentKvCache& kv_cache() const;
  const Model& model() const { return *model_; }
  void set_observer(NodeObserver observer) { observer_ = std::move(observer); }
  // Which backend runs each node, and why (for --plan style reports).
  std::vector<std::string> Placement() const;
  OffloadStats offload_stats() const;

 private:
  struct Impl;
  Session() = default;
  std::shared_ptr<const Model> model_;
  std::unique_ptr<Impl> impl_;
  NodeObserver observer_;
};

struct GenerateOptions {
  uint32_t max_new_tokens = 256;
  std::vector<int32_t> stop_tokens;        // e.g. EOS
  std::vector<std::string> stop_strings;   // matched against the decoded text
  // Bytes of a token's text (needed for stop strings); may be empty otherwise.
  std::function<std::string(int32_t)> token_text;
  uint32_t repetition_window = 64;         // recent tokens the repetition penalty sees
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated (stop token excluded)
  enum class Stop { kLength, kStopToken, kStopString, kCallback } stop = Stop::kLength;
  double prefill_seconds = 0, decode_seconds = 0;
  uint32_t prompt_tokens = 0;
};

// Prefills `prompt` (appended to what the session holds), then samples up to max_new_tokens,
// calling on_token for each (return false to stop).
Result<GenerateResult> Generate(Session& session, Sampler& sampler, std::span<const int32_t> prompt,
                                const GenerateOptions& options, const std::function<bool(int32_t)>& on_token);

}  // namespace coda
