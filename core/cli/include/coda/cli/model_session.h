// Opening a model for a program: the context with its backends (those linked into the program,
// and plugins), the model, one session.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "coda/runtime.h"

namespace coda::cli {

struct ModelSession {
  std::unique_ptr<Context> context;
  std::shared_ptr<Model> model;
  std::unique_ptr<Session> session;
};

struct ModelSessionOptions {
  std::string program;  // names the program in warnings about refused backend plugins; empty: silent
  // The backends linked into the program: coda_cpu_backend_entry at least. The program names
  // them because core depends on the backend ABI alone, never on a concrete backend.
  std::vector<coda_backend_entry_fn> linked_backends;
  std::string model_path;
  std::vector<std::string> backends = {"cpu"};
  uint32_t n_ctx = 4096;
  DType kv_dtype = DType::kBF16;
  uint32_t n_threads = 0;  // 0: one per core
  bool exact_products = false;  // ContextOptions::exact_products
  uint64_t device_memory = 0;  // SessionOptions::device_memory
  ModelLoadOptions load;
};

// The backends linked in, plus plugins found next to the executable and in CODA_BACKEND_PATH.
ContextOptions ProgramContextOptions(std::vector<coda_backend_entry_fn> linked_backends, uint32_t n_threads = 0,
                                     bool exact_products = false);
// "<program>: warning: <file>: <reason>" on stderr for each plugin the context refused.
void WarnAboutRefusedBackends(const std::string& program, const Context& context);

// A ModelLoadOptions::progress that shows each long step of loading as a progress bar on
// stderr, labelled "<program>: <step>".
std::function<void(std::string_view, uint64_t, uint64_t)> LoadProgressOnStderr(std::string program);

// With `program` set and no progress function given, loading shows LoadProgressOnStderr's.
Result<ModelSession> OpenModelSession(const ModelSessionOptions& options);

}  // namespace coda::cli
