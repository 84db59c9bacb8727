// The .coda model file: a fixed preamble, a FlatBuffer of metadata (formats/schema/coda.fbs),
// and a page-aligned data section. ModelFile maps and validates; ModelWriter streams one out.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "coda/dtype.h"
#include "coda/file.h"
#include "coda/model_config.h"
#include "coda/status.h"

namespace coda {

namespace fb {
struct Model;
}

inline constexpr uint32_t kCodaSchemaVersion = 1;
inline constexpr uint32_t kCodaPreambleVersion = 1;
inline constexpr uint64_t kCodaPreambleSize = 64;
inline constexpr uint64_t kCodaDataAlignment = 4096;
inline constexpr uint64_t kCodaTensorAlignment = 64;
inline constexpr char kCodaMagic[8] = {'C', 'O', 'D', 'A', 'F', 'I', 'L', 'E'};

// One tensor of a .coda file, validated against the file.
struct TensorRef {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  uint64_t offset = 0;  // in the data section
  uint64_t size = 0;
  TensorRole role = TensorRole::kNorm;
  int32_t layer = -1;
  int32_t expert = -1;
  bool mtp = false;
  int32_t scale = -1;            // index of the FP8 block-scale tensor
  const uint8_t* data = nullptr;  // inside the mapping
};

struct ExpertBlockRef {
  int32_t layer = -1;
  uint32_t n_experts = 0;
  uint64_t offset = 0;
  uint64_t stride = 0;
};

// A graph node, decoded from the file (the op numbering is coda.fbs's OpType).
struct GraphNode {
  uint8_t op = 0;
  std::string name;
  std::vector<uint32_t> inputs;
  std::vector<uint32_t> outputs;
  std::vector<int32_t> weights;
  int32_t layer = -1;
};

struct GraphRef {
  uint32_t n_values = 0;
  uint32_t logits = 0;
  std::vector<GraphNode> nodes;
};

std::string_view OpTypeName(uint8_t op);

class ModelFile {
 public:
  // Maps the file and validates everything before returning: preamble, FlatBuffer (verifier),
  // schema version, hyper-parameters, every tensor's dtype/shape/offset/size against the file,
  // the tensors the architecture needs, expert blocks and the graph.
  static Result<ModelFile> Open(const std::string& path);
  // The same checks on bytes already in memory (used by the fuzzer and tests). The returned
  // ModelFile points into `bytes`, which must outlive it.
  static Result<ModelFile> FromBytes(std::span<const uint8_t> bytes, const std::string& name);

  const std::string& path() const { return name_; }
  uint64_t file_size() const { return bytes_.size(); }
  const ModelConfig& config() const { return config_; }
  const std::vector<TensorRef>& tensors() const { return tensors_; }
  const TensorRef* Find(std::string_view name) const;
  const std::vector<ExpertBlockRef>& expert_blocks() const { return experts_; }
  const GraphRef& graph() const { return graph_; }
  std::string_view tokenizer_json() const { return tokenizer_json_; }
  std::string_view tokenizer_config_json() const { return tokenizer_config_json_; }
  std::string_view chat_template() const { return chat_template_; }
  std::string_view producer() const { return producer_; }
  std::string_view source() const { return source_; }
  uint32_t schema_version() const { return schema_version_; }
  uint64_t data_offset() const { return data_offset_; }
  const MappedFile* mapping() const { return map_.get(); }

 private:
  std::unique_ptr<MappedFile> map_;  // null for FromBytes
  std::span<const uint8_t> bytes_;
  std::string name_;
  ModelConfig config_;
  std::vector<TensorRef> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
  std::vector<ExpertBlockRef> experts_;
  GraphRef graph_;
  std::string_view tokenizer_json_, tokenizer_config_json_, chat_template_, producer_, source_;
  uint32_t schema_version_ = 0;
  uint64_t data_offset_ = 0;
};

// What the writer is told about each tensor; offsets and sizes are assigned by the writer.
struct TensorPlan {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  TensorRole role = TensorRole::kNorm;
  int32_t layer = -1;
  int32_t expert = -1;
  bool mtp = false;
  int32_t scale = -1;  // index in the plan of this FP8 weight's scale tensor
};

struct ModelExtras {
  std::string source;
  std::string tokenizer_json;
  std::string tokenizer_config_json;
  std::string chat_template;
  float temperature = -1.0f;
  float top_p = -1.0f;
};

// Streams a .coda file: metadata first (every size is known from the plan), then tensor data in
// plan order. The file appears at `path` only after Finish() succeeds.
class ModelWriter {
 public:
  static Result<std::unique_ptr<ModelWriter>> Create(const std::string& path, const ModelConfig& config,
                                                     std::vector<TensorPlan> plan, const ModelExtras& extras);

  const std::vector<TensorPlan>& plan() const { return plan_; }
  uint64_t tensor_size(size_t i) const { return sizes_[i]; }
  uint64_t data_size() const { return data_size_; }

  // Tensors are written in plan order: BeginTensor(i), Append() until its size is reached.
  Status BeginTensor(size_t index);
  Status Append(std::span<const uint8_t> bytes);
  // Checks that every tensor was written in full, then makes the file appear.
  Status Finish();

 private:
  ModelWriter() = default;
  std::unique_ptr<AtomicFileWriter> out_;
  std::vector<TensorPlan> plan_;
  std::vector<uint64_t> offsets_, sizes_;
  uint64_t data_start_ = 0, data_size_ = 0;
  size_t current_ = SIZE_MAX;
  size_t next_ = 0;
  uint64_t written_ = 0;
};

// A writer plan from tensor specs (in ExpectedTensors() order) and the dtype chosen for each:
// every FP8 projection is followed by its F32 block-scale tensor "<name>_scale_inv".
std::vector<TensorPlan> PlanFromSpecs(const ModelConfig& config, const std::vector<TensorSpec>& specs,
                                      const std::vector<DType>& dtypes);

}  // namespace coda
