// Opening a model for a tool: the context with the linked-in backends, the model, a session.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "coda/runtime.h"

namespace coda::tools {

struct Loaded {
  std::unique_ptr<Context> context;
  std::shared_ptr<Model> model;
  std::unique_ptr<Session> session;
};

struct LoadOptions {
  std::string model_path;
  std::vector<std::string> backends = {"cpu"};
  uint32_t n_ctx = 4096;
  DType kv_dtype = DType::kBF16;
  uint32_t n_threads = 0;
};

Result<Loaded> LoadModelSession(const LoadOptions& options);

// "1,2,3" -> {1, 2, 3}; an error names the bad element.
Result<std::vector<int32_t>> ParseIdList(const std::string& text);
// "bf16" / "f32" -> dtype.
Result<DType> ParseKvDtype(const std::string& text);
// "cpu,vulkan" -> {"cpu", "vulkan"}.
std::vector<std::string> SplitList(const std::string& text);

}  // namespace coda::tools
