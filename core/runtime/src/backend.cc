#include <cstring>

#include "coda/runtime.h"

namespace coda {

namespace {
constexpr size_t kErrorSize = 1024;

Status FromCode(coda_status_code code, std::string message) {
  switch (code) {
    case CODA_STATUS_OK: return Status::Ok();
    case CODA_STATUS_INVALID_ARGUMENT: return InvalidArgument(std::move(message));
    case CODA_STATUS_UNSUPPORTED: return Unsupported(std::move(message));
    case CODA_STATUS_OUT_OF_MEMORY: return OutOfMemory(std::move(message));
    default: return Internal(std::move(message));
  }
}

void Log(void*, int, const char*) {}
}  // namespace

Result<std::unique_ptr<Backend>> Backend::Create(const coda_backend_api* api, const coda_backend_options& options) {
  if (!api) return InvalidArgument("backend entry returned no function table (ABI version mismatch?)");
  if (api->struct_size < sizeof(coda_backend_api) || api->abi_version != CODA_BACKEND_ABI_VERSION)
    return Unsupported(std::string("backend '") + (api->name ? api->name : "?") + "' was built for ABI version " +
                       std::to_string(api->abi_version) + ", this runtime speaks " +
                       std::to_string(CODA_BACKEND_ABI_VERSION));
  coda_host host{sizeof(coda_host), CODA_BACKEND_ABI_VERSION, nullptr, Log};
  void* self = nullptr;
  char error[kErrorSize] = {};
  const coda_status_code code = api->create(&host, &options, &self, error, sizeof error);
  if (code != CODA_STATUS_OK) return FromCode(code, std::string(api->name) + ": " + error);
  return std::unique_ptr<Backend>(new Backend(api, self));
}

Backend::~Backend() { api_->destroy(self_); }

std::string Backend::describe() const { return api_->describe(self_); }

bool Backend::Supports(const coda_op& op) const { return api_->supports_op(self_, &op) != 0; }

Status Backend::Execute(const coda_op& op) const {
  std::lock_guard<std::mutex> lock(mu_);
  char error[kErrorSize] = {};
  const coda_status_code code = api_->execute(self_, &op, error, sizeof error);
  if (code == CODA_STATUS_OK) return Status::Ok();
  return FromCode(code, error[0] ? std::string(error) : "backend reported failure without a message");
}

Result<std::unique_ptr<Context>> Context::Create(const ContextOptions& options) {
  std::unique_ptr<Context> c(new Context());
  coda_backend_options bo{sizeof(coda_backend_options), options.n_threads};
  for (coda_backend_entry_fn entry : options.backends) {
    CODA_ASSIGN_OR_RETURN(auto b, Backend::Create(entry(CODA_BACKEND_ABI_VERSION), bo));
    c->backends_.push_back(std::move(b));
  }
  if (c->backends_.empty()) return InvalidArgument("no backends: the CPU backend must be linked in");
  return c;
}

Result<Backend*> Context::Find(std::string_view name) const {
  std::string names;
  for (const auto& b : backends_) {
    if (b->name() == name) return b.get();
    names += (names.empty() ? "" : ", ") + std::string(b->name());
  }
  return NotFound("no backend named '" + std::string(name) + "' (available: " + names + ")");
}

}  // namespace coda
