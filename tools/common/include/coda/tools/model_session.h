// Opening a model for a tool: the context with its backends (linked in and plugins), the model,
// a session.
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
  std::string tool;  // names the tool in warnings about refused backend plugins; empty: silent
  std::string model_path;
  std::vector<std::string> backends = {"cpu"};
  uint32_t n_ctx = 4096;
  DType kv_dtype = DType::kBF16;
  uint32_t n_threads = 0;
  ModelLoadOptions load;
};

// The CPU backend linked in, plus plugins found next to the executable and in CODA_BACKEND_PATH.
ContextOptions DefaultContextOptions(uint32_t n_threads = 0);
// "<tool>: warning: <file>: <reason>" on stderr for each plugin the context refused.
void WarnAboutRefusedBackends(const char* tool, const Context& context);

Result<Loaded> LoadModelSession(const LoadOptions& options);

// "1,2,3" -> {1, 2, 3}; an error names the bad element.
Result<std::vector<int32_t>> ParseIdList(const std::string& text);
// "bf16" / "f32" -> dtype.
Result<DType> ParseKvDtype(const std::string& text);
// "cpu,vulkan" -> {"cpu", "vulkan"}.
std::vector<std::string> SplitList(const std::string& text);

}  // namespace coda::tools
