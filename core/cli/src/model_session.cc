#include "coda/cli/model_session.h"

#include <cstdio>

#include "coda/cli/progress_bar.h"

namespace coda::cli {

ContextOptions ProgramContextOptions(std::vector<coda_backend_entry_fn> linked_backends, uint32_t n_threads,
                                     bool exact_products) {
  ContextOptions co;
  co.n_threads = n_threads;
  co.exact_products = exact_products;
  co.backends = std::move(linked_backends);
  co.plugin_dirs = BackendSearchPath();
  return co;
}

void WarnAboutRefusedBackends(const std::string& program, const Context& context) {
  for (const BackendNote& n : context.notes())
    if (n.kind == BackendNote::Kind::kRefused)
      std::fprintf(stderr, "%s: warning: %s\n", program.c_str(), n.Line().c_str());
}

std::function<void(std::string_view, uint64_t, uint64_t)> LoadProgressOnStderr(std::string program) {
  struct State {
    std::string program, step;
    std::unique_ptr<ProgressBar> bar;
  };
  auto state = std::make_shared<State>();
  state->program = std::move(program);
  return [state](std::string_view step, uint64_t done, uint64_t total) {
    if (!state->bar || step != state->step) {
      if (state->bar) state->bar->Finish();
      state->step = step;
      state->bar = std::make_unique<ProgressBar>(state->program + ": " + state->step, true);
    }
    state->bar->Update(done, total);
    if (done >= total) {
      state->bar->Finish();
      state->bar.reset();
    }
  };
}

Result<ModelSession> OpenModelSession(const ModelSessionOptions& o) {
  ModelSession m;
  CODA_ASSIGN_OR_RETURN(m.context, Context::Create(ProgramContextOptions(o.linked_backends, o.n_threads, o.exact_products)));
  if (!o.program.empty()) WarnAboutRefusedBackends(o.program, *m.context);
  ModelLoadOptions load = o.load;
  if (!load.progress && !o.program.empty()) load.progress = LoadProgressOnStderr(o.program);
  CODA_ASSIGN_OR_RETURN(m.model, Model::Load(o.model_path, load));
  SessionOptions so;
  so.n_ctx = o.n_ctx;
  so.kv_dtype = o.kv_dtype;
  so.backends = o.backends;
  so.device_memory = o.device_memory;
  CODA_ASSIGN_OR_RETURN(m.session, Session::Create(*m.context, m.model, so));
  return m;
}

}  // namespace coda::cli
