#include "coda/cli/model_session.h"

#include <cstdio>

namespace coda::cli {

ContextOptions ProgramContextOptions(std::vector<coda_backend_entry_fn> linked_backends, uint32_t n_threads) {
  ContextOptions co;
  co.n_threads = n_threads;
  co.backends = std::move(linked_backends);
  co.plugin_dirs = BackendSearchPath();
  return co;
}

void WarnAboutRefusedBackends(const std::string& program, const Context& context) {
  for (const BackendNote& n : context.notes())
    if (n.kind == BackendNote::Kind::kRefused)
      std::fprintf(stderr, "%s: warning: %s\n", program.c_str(), n.Line().c_str());
}

Result<ModelSession> OpenModelSession(const ModelSessionOptions& o) {
  ModelSession m;
  CODA_ASSIGN_OR_RETURN(m.context, Context::Create(ProgramContextOptions(o.linked_backends, o.n_threads)));
  if (!o.program.empty()) WarnAboutRefusedBackends(o.program, *m.context);
  CODA_ASSIGN_OR_RETURN(m.model, Model::Load(o.model_path, o.load));
  SessionOptions so;
  so.n_ctx = o.n_ctx;
  so.kv_dtype = o.kv_dtype;
  so.backends = o.backends;
  so.device_memory = o.device_memory;
  CODA_ASSIGN_OR_RETURN(m.session, Session::Create(*m.context, m.model, so));
  return m;
}

}  // namespace coda::cli
