#include "coda/tools/model_session.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "coda_cpu_backend.h"

namespace coda::tools {

ContextOptions DefaultContextOptions(uint32_t n_threads) {
  ContextOptions co;
  co.n_threads = n_threads;
  co.backends = {coda_cpu_backend_entry};
  co.plugin_dirs = BackendSearchPath();
  return co;
}

void WarnAboutRefusedBackends(const char* tool, const Context& context) {
  for (const BackendNote& n : context.notes())
    if (n.kind == BackendNote::Kind::kRefused) std::fprintf(stderr, "%s: warning: %s\n", tool, n.Line().c_str());
}

Result<Loaded> LoadModelSession(const LoadOptions& o) {
  Loaded l;
  CODA_ASSIGN_OR_RETURN(l.context, Context::Create(DefaultContextOptions(o.n_threads)));
  if (!o.tool.empty()) WarnAboutRefusedBackends(o.tool.c_str(), *l.context);
  CODA_ASSIGN_OR_RETURN(l.model, Model::Load(o.model_path, o.load));
  SessionOptions so;
  so.n_ctx = o.n_ctx;
  so.kv_dtype = o.kv_dtype;
  so.backends = o.backends;
  CODA_ASSIGN_OR_RETURN(l.session, Session::Create(*l.context, l.model, so));
  return l;
}

Result<std::vector<int32_t>> ParseIdList(const std::string& text) {
  std::vector<int32_t> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string item = text.substr(pos, comma - pos);
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || errno || v < 0 || v > INT32_MAX)
      return InvalidArgument("'" + item + "' (item " + std::to_string(out.size() + 1) + ") is not a token id");
    out.push_back(static_cast<int32_t>(v));
    pos = comma + 1;
  }
  return out;
}

Result<DType> ParseKvDtype(const std::string& text) {
  if (text == "bf16") return DType::kBF16;
  if (text == "f32") return DType::kF32;
  return InvalidArgument("KV cache dtype must be bf16 or f32, not '" + text + "'");
}

std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    if (comma > pos) out.push_back(text.substr(pos, comma - pos));
    pos = comma + 1;
  }
  return out;
}

}  // namespace coda::tools
