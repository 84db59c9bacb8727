// Backend instances behind the ABI, and the Context that owns them.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "coda/runtime.h"

namespace coda {

namespace {
// A backend writes at most kErrorSize - 1 bytes of its message: the last byte stays the
// terminator whatever it writes.
constexpr size_t kErrorSize = 1024;
// Strings and counts a backend hands out are bounded before use.
constexpr size_t kMaxDescription = 1024;
constexpr uint32_t kMaxDevices = 64;

Status FromCode(coda_status_code code, std::string message) {
  switch (code) {
    case CODA_STATUS_OK: return Status::Ok();
    case CODA_STATUS_INVALID_ARGUMENT: return InvalidArgument(std::move(message));
    case CODA_STATUS_UNSUPPORTED: return Unsupported(std::move(message));
    case CODA_STATUS_OUT_OF_MEMORY: return OutOfMemory(std::move(message));
    default: return Internal(std::move(message));
  }
}

// A failed call's message, or a stand-in when the backend wrote none.
std::string ErrorText(const char* error, std::string_view what) {
  if (error[0]) return error;
  return std::string(what) + " failed without a message";
}

void* HostAlloc(void*, size_t size, size_t alignment) {
  if (alignment < sizeof(void*)) alignment = sizeof(void*);
  if ((alignment & (alignment - 1)) != 0 || size > SIZE_MAX - alignment) return nullptr;
  return std::aligned_alloc(alignment, (std::max<size_t>(size, 1) + alignment - 1) / alignment * alignment);
}

void HostFree(void*, void* p) { std::free(p); }

}  // namespace

std::string_view DeviceKindName(coda_device_kind kind) {
  switch (kind) {
    case CODA_DEVICE_CPU: return "cpu";
    case CODA_DEVICE_GPU: return "gpu";
    default: return "other";
  }
}

Result<std::unique_ptr<Backend>> Backend::Create(const coda_backend_api* api, const coda_backend_options& options) {
  CODA_RETURN_IF_ERROR(CheckBackendTable(api));
  BackendLibrary lib;
  lib.api = api;
  return Create(lib, options);
}

Result<std::unique_ptr<Backend>> Backend::Create(const BackendLibrary& library, const coda_backend_options& options,
                                                 LogFn log) {
  CODA_RETURN_IF_ERROR(CheckBackendTable(library.api));
  std::unique_ptr<Backend> b(new Backend());
  b->library_ = library;
  // Fields beyond the backend's table size stay NULL: an older backend lacks those functions.
  std::memcpy(&b->api_, library.api, std::min<size_t>(library.api->struct_size, sizeof(coda_backend_api)));
  b->api_.struct_size = std::min<uint32_t>(library.api->struct_size, sizeof(coda_backend_api));
  b->log_ = std::move(log);
  b->host_ = {sizeof(coda_host), CODA_BACKEND_ABI_VERSION, b.get(),
              [](void* user, int level, const char* message) {
                const auto* self = static_cast<const Backend*>(user);
                if (self->log_ && message) self->log_(level, std::string(self->name()) + ": " + message);
              },
              HostAlloc, HostFree};
  char error[kErrorSize] = {};
  const coda_status_code code = b->api_.create(&b->host_, &options, &b->self_, error, kErrorSize - 1);
  if (code != CODA_STATUS_OK) {
    b->api_.destroy = nullptr;  // nothing was created
    return FromCode(code, std::string(b->name()) + ": " + ErrorText(error, "create()"));
  }
  // A backend whose device is not the host's memory keeps the KV cache in its own buffers.
  if (b->has_devices() && b->has_buffers()) {
    auto devices = b->Devices();
    b->device_memory_ = devices.ok() && options.device < devices->size() &&
                        (*devices)[options.device].kind != CODA_DEVICE_CPU;
    if (b->device_memory_) {
      const DeviceInfo& d = (*devices)[options.device];
      b->memory_bytes_ = d.free_memory ? d.free_memory : d.total_memory;
    }
  }
  return b;
}

Backend::~Backend() {
  if (api_.destroy) api_.destroy(self_);
}

std::string Backend::describe() const {
  std::lock_guard<std::mutex> lock(mu_);
  const char* d = api_.describe(self_);
  return d ? std::string(d, strnlen(d, kMaxDescription)) : "";
}

bool Backend::Supports(const coda_op& op) const {
  std::lock_guard<std::mutex> lock(mu_);
  return api_.supports_op(self_, &op) != 0;
}

Status Backend::Execute(const coda_op& op) const {
  std::lock_guard<std::mutex> lock(mu_);
  char error[kErrorSize] = {};
  const coda_status_code code = api_.execute(self_, &op, error, kErrorSize - 1);
  if (code == CODA_STATUS_OK) return Status::Ok();
  return FromCode(code, error[0] ? std::string(error) : "backend reported failure without a message");
}

Status Backend::Error(coda_status_code code, const char* error, std::string_view what) const {
  return FromCode(code, std::string(name()) + ": " + ErrorText(error, what));
}

Status Backend::Missing(const char* what) const {
  return Unsupported("backend '" + std::string(name()) + "' does not provide " + what);
}

Result<std::vector<DeviceInfo>> Backend::Devices() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_devices()) return Missing("device information");
  std::vector<DeviceInfo> out;
  const uint32_t n = api_.device_count(self_);
  if (n > kMaxDevices)
    return Internal(std::string(name()) + ": device_count() says " + std::to_string(n) + " devices (at most " +
                    std::to_string(kMaxDevices) + " are believed)");
  for (uint32_t i = 0; i < n; ++i) {
    coda_device_info info{};
    info.struct_size = sizeof info;
    char error[kErrorSize] = {};
    const coda_status_code code = api_.device_info(self_, i, &info, error, kErrorSize - 1);
    if (code != CODA_STATUS_OK) return Error(code, error, "device_info()");
    info.name[sizeof info.name - 1] = '\0';  // never trust a backend to terminate it
    out.push_back({info.name, static_cast<coda_device_kind>(std::min<uint32_t>(info.kind, CODA_DEVICE_OTHER)),
                   info.total_memory, info.free_memory});
  }
  return out;
}

Result<void*> Backend::Prepare(const coda_weights& weights) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_prepare()) return static_cast<void*>(nullptr);
  void* prepared = nullptr;
  char error[kErrorSize] = {};
  const coda_status_code code = api_.prepare(self_, &weights, &prepared, error, kErrorSize - 1);
  if (code != CODA_STATUS_OK) return Error(code, error, "prepare()");
  return prepared;
}

void Backend::Release(void* prepared) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (api_.release) api_.release(self_, prepared);
}

Status Backend::Synchronize() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_synchronize()) return Status::Ok();
  char error[kErrorSize] = {};
  const coda_status_code code = api_.synchronize(self_, error, kErrorSize - 1);
  return code == CODA_STATUS_OK ? Status::Ok() : Error(code, error, "synchronize()");
}

Status Backend::StepBegin(uint64_t key) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_steps()) return Status::Ok();
  char error[kErrorSize] = {};
  const coda_status_code code = api_.step_begin(self_, key, error, kErrorSize - 1);
  return code == CODA_STATUS_OK ? Status::Ok() : Error(code, error, "step_begin()");
}

Status Backend::StepEnd() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_steps()) return Status::Ok();
  char error[kErrorSize] = {};
  const coda_status_code code = api_.step_end(self_, error, kErrorSize - 1);
  return code == CODA_STATUS_OK ? Status::Ok() : Error(code, error, "step_end()");
}

Result<coda_buffer> Backend::AllocBuffer(uint64_t size) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_buffers()) return Missing("buffers");
  coda_buffer b = nullptr;
  char error[kErrorSize] = {};
  const coda_status_code code = api_.buffer_alloc(self_, size, &b, error, kErrorSize - 1);
  if (code != CODA_STATUS_OK) return Error(code, error, "buffer_alloc()");
  if (!b) return Internal(std::string(name()) + ": buffer_alloc() succeeded without a buffer");
  return b;
}

void Backend::FreeBuffer(coda_buffer buffer) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (api_.buffer_free && buffer) api_.buffer_free(self_, buffer);
}

Status Backend::Upload(coda_buffer dst, uint64_t dst_offset, const void* src, uint64_t size, coda_queue queue) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_buffers()) return Missing("buffers");
  char error[kErrorSize] = {};
  const coda_status_code code = api_.buffer_upload(self_, dst, dst_offset, src, size, queue, error, kErrorSize - 1);
  return code == CODA_STATUS_OK ? Status::Ok() : Error(code, error, "buffer_upload()");
}

Status Backend::Download(coda_buffer src, uint64_t src_offset, void* dst, uint64_t size, coda_queue queue) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_buffers()) return Missing("buffers");
  char error[kErrorSize] = {};
  const coda_status_code code = api_.buffer_download(self_, src, src_offset, dst, size, queue, error, kErrorSize - 1);
  return code == CODA_STATUS_OK ? Status::Ok() : Error(code, error, "buffer_download()");
}

Status Backend::Copy(coda_buffer src, uint64_t src_offset, coda_buffer dst, uint64_t dst_offset, uint64_t size,
                     coda_queue queue) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_buffers()) return Missing("buffers");
  char error[kErrorSize] = {};
  const coda_status_code code =
      api_.buffer_copy(self_, src, src_offset, dst, dst_offset, size, queue, error, kErrorSize - 1);
  return code == CODA_STATUS_OK ? Status::Ok() : Error(code, error, "buffer_copy()");
}

Result<coda_event> Backend::CreateEvent() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_events()) return Missing("events");
  coda_event e = nullptr;
  char error[kErrorSize] = {};
  const coda_status_code code = api_.event_create(self_, &e, error, kErrorSize - 1);
  if (code != CODA_STATUS_OK) return Error(code, error, "event_create()");
  if (!e) return Internal(std::string(name()) + ": event_create() succeeded without an event");
  return e;
}

Status Backend::RecordEvent(coda_event event, coda_queue queue) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_events()) return Missing("events");
  char error[kErrorSize] = {};
  const coda_status_code code = api_.event_record(self_, event, queue, error, kErrorSize - 1);
  return code == CODA_STATUS_OK ? Status::Ok() : Error(code, error, "event_record()");
}

Status Backend::WaitEvent(coda_event event, coda_queue queue) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_events()) return Missing("events");
  char error[kErrorSize] = {};
  const coda_status_code code = api_.event_wait(self_, event, queue, error, kErrorSize - 1);
  return code == CODA_STATUS_OK ? Status::Ok() : Error(code, error, "event_wait()");
}

void Backend::DestroyEvent(coda_event event) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (api_.event_destroy && event) api_.event_destroy(self_, event);
}

Result<std::unique_ptr<Context>> Context::Create(const ContextOptions& options) {
  std::unique_ptr<Context> c(new Context());
  for (coda_backend_entry_fn entry : options.backends) CODA_RETURN_IF_ERROR(c->registry_.AddLinked(entry));
  for (const std::string& dir : options.plugin_dirs) c->registry_.ScanDirectory(dir);
  for (const std::string& file : options.plugin_files) CODA_RETURN_IF_ERROR(c->registry_.LoadFile(file));

  coda_backend_options bo{};
  bo.struct_size = sizeof bo;
  bo.n_threads = options.n_threads;
  if (options.exact_products) bo.flags |= CODA_BACKEND_EXACT_PRODUCTS;
  LogFn log = options.log;
  if (!log)
    log = [](int level, const std::string& m) {
      if (level >= CODA_LOG_WARNING) std::fprintf(stderr, "%s\n", m.c_str());
    };
  // Copied: Refuse() below edits the registry's list.
  const std::vector<BackendLibrary> libraries = c->registry_.libraries();
  for (const BackendLibrary& lib : libraries) {
    auto b = Backend::Create(lib, bo, log);
    if (b.ok()) {
      c->backends_.push_back(std::move(*b));
      continue;
    }
    // A plugin found by scanning that cannot start (no device, say) must not stop the others.
    if (!lib.discovered) return b.status().WithContext(lib.path.empty() ? "linked-in backend" : lib.path);
    c->registry_.Refuse(lib.api->name, "create() failed: " + b.status().message(),
                        b.status().code() == StatusCode::kUnsupported ? BackendNote::Kind::kUnavailable
                                                                        : BackendNote::Kind::kRefused);
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
  std::string m = "no backend named '" + std::string(name) + "' (available: " + names + ")";
  for (const BackendNote& n : registry_.notes())
    if (n.kind != BackendNote::Kind::kSkipped && n.name == name) m += "; " + n.Line();
  return NotFound(m);
}

}  // namespace coda
