// Backends as the runtime sees them: libraries (linked in or loaded at run time from
// libcoda-backend-<name>.so), and instances created from them behind the plain-C ABI.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "coda/status.h"
#include "coda_backend.h"

namespace coda {

// One usable backend library: its checked function table, and where it came from.
struct BackendLibrary {
  const coda_backend_api* api = nullptr;
  std::string path;              // empty: linked into the program
  std::shared_ptr<void> handle;  // the dlopen() handle (closed with the last holder); null when linked in
  bool discovered = false;       // found by a directory scan (a failure to start it is a warning)
};

// A library file that was looked at but not used, with the reason.
struct BackendNote {
  enum class Kind {
    kRefused,  // broken or incompatible: worth a warning
    kSkipped,  // fine, but a backend of that name is already loaded (e.g. the built-in cpu)
    // fine, but create() found nothing to run on here (CODA_STATUS_UNSUPPORTED: no GPU, no
    // driver): a CUDA plugin on a machine without one is normal, not worth a warning
    kUnavailable,
  };
  Kind kind = Kind::kRefused;
  std::string path;
  std::string name;  // from the file name, when it has one
  std::string message;
  std::string Line() const { return path + ": " + message; }
};

// Checks a table a backend's entry point returned: version, size, name, required functions,
// complete groups of optional functions. The message says what is wrong, without a path.
Status CheckBackendTable(const coda_backend_api* api);
// "libcoda-backend-<name>.so"
std::string BackendFileName(std::string_view name);
// Backend names are what --backend lists: 1 to 63 of [a-z0-9_-].
bool IsValidBackendName(std::string_view name);
// Where plugins are looked for, in order: the running executable's directory, then each
// directory of CODA_BACKEND_PATH (colon-separated; empty entries are ignored).
std::vector<std::string> BackendSearchPath();

// Finds and opens backend libraries. Refusals are recorded (notes()), never fatal to the rest;
// the first library of a name wins and later ones are skipped. Owned by a Context.
class BackendRegistry {
 public:
  // A backend linked into the program. A bad table is an error (a bug in the program).
  Status AddLinked(coda_backend_entry_fn entry);
  // Loads one library file. A refusal is recorded and returned; a name that is already loaded
  // is recorded as skipped and returns Ok.
  Status LoadFile(const std::string& path);
  // Loads every libcoda-backend-<name>.so in `dir` (in name order), skipping names already
  // loaded without opening them. A missing directory is recorded as a refusal.
  void ScanDirectory(const std::string& dir);

  const std::vector<BackendLibrary>& libraries() const { return libraries_; }
  const std::vector<BackendNote>& notes() const { return notes_; }
  const BackendLibrary* Find(std::string_view name) const;
  // Records that a library was found unusable after loading (its create() failed) and forgets it.
  void Refuse(const std::string& name, const std::string& message,
              BackendNote::Kind kind = BackendNote::Kind::kRefused);

 private:
  Status Load(const std::string& path, std::string_view expected_name, bool discovered);
  Status AddNote(BackendNote::Kind kind, const std::string& path, std::string_view name, std::string message);
  std::vector<BackendLibrary> libraries_;
  std::vector<BackendNote> notes_;
};

struct DeviceInfo {
  std::string name;
  coda_device_kind kind = CODA_DEVICE_OTHER;
  uint64_t total_memory = 0;  // bytes; 0: unknown
  uint64_t free_memory = 0;
};
std::string_view DeviceKindName(coda_device_kind kind);

// Receives log lines from backends (level: coda_log_level), prefixed with the backend's name.
using LogFn = std::function<void(int level, const std::string& message)>;

// A backend instance created from a library's table. Optional ABI functions are reached through
// has_*() checks; calling one the backend lacks returns an Unsupported status. Instances keep
// scratch memory and threads, and the ABI promises one caller at a time, so every call into an
// instance is serialized: sessions may share a Context across threads.
class Backend {
 public:
  static Result<std::unique_ptr<Backend>> Create(const BackendLibrary& library, const coda_backend_options& options,
                                                 LogFn log = nullptr);
  // From a table linked into the program.
  static Result<std::unique_ptr<Backend>> Create(const coda_backend_api* api, const coda_backend_options& options);
  ~Backend();
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  std::string_view name() const { return api_.name; }
  std::string_view version() const { return api_.version ? std::string_view(api_.version, strnlen(api_.version, 256)) : ""; }
  uint32_t abi_version() const { return api_.abi_version; }
  uint32_t table_size() const { return api_.struct_size; }
  // The library file; empty when linked into the program.
  const std::string& path() const { return library_.path; }
  std::string describe() const;

  bool Supports(const coda_op& op) const;
  Status Execute(const coda_op& op) const;

  bool has_devices() const { return api_.device_count != nullptr; }
  bool has_prepare() const { return api_.prepare != nullptr; }
  bool has_synchronize() const { return api_.synchronize != nullptr; }
  bool has_buffers() const { return api_.buffer_alloc != nullptr; }
  bool has_events() const { return api_.event_create != nullptr; }
  bool has_steps() const { return api_.step_begin != nullptr; }
  // The instance's device has memory apart from the host's (a GPU, or a Vulkan driver on the
  // CPU): state it keeps across calls, the KV cache, lives in its buffers.
  bool uses_device_memory() const { return device_memory_; }
  // With uses_device_memory(): the bytes its device reported free at creation (else its total;
  // 0: unknown).
  uint64_t memory_bytes() const { return memory_bytes_; }

  Result<std::vector<DeviceInfo>> Devices() const;
  // Without prepare(): Ok and nullptr.
  Result<void*> Prepare(const coda_weights& weights) const;
  void Release(void* prepared) const;
  // Without synchronize(): Ok (the backend runs everything synchronously).
  Status Synchronize() const;
  // Bracket a forward pass (coda_backend.h, step_begin); Ok without doing anything when the
  // backend has no steps.
  Status StepBegin(uint64_t key) const;
  Status StepEnd() const;
  Result<coda_buffer> AllocBuffer(uint64_t size) const;
  void FreeBuffer(coda_buffer buffer) const;
  Status Upload(coda_buffer dst, uint64_t dst_offset, const void* src, uint64_t size,
                coda_queue queue = CODA_QUEUE_COMPUTE) const;
  Status Download(coda_buffer src, uint64_t src_offset, void* dst, uint64_t size,
                  coda_queue queue = CODA_QUEUE_COMPUTE) const;
  Status Copy(coda_buffer src, uint64_t src_offset, coda_buffer dst, uint64_t dst_offset, uint64_t size,
              coda_queue queue = CODA_QUEUE_COMPUTE) const;
  Result<coda_event> CreateEvent() const;
  Status RecordEvent(coda_event event, coda_queue queue) const;
  Status WaitEvent(coda_event event, coda_queue queue) const;
  void DestroyEvent(coda_event event) const;

 private:
  Backend() = default;
  Status Missing(const char* what) const;
  // A failed call as a Status naming this backend: "<name>: <message>".
  Status Error(coda_status_code code, const char* error, std::string_view what) const;
  BackendLibrary library_;  // keeps a plugin loaded while the instance lives
  coda_backend_api api_{};  // the table, zero beyond what the backend's struct_size covers
  coda_host host_{};        // must outlive the instance: the backend may keep the pointer
  LogFn log_;
  void* self_ = nullptr;
  bool device_memory_ = false;
  uint64_t memory_bytes_ = 0;
  mutable std::mutex mu_;
};

}  // namespace coda
