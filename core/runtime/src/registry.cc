// Finding and opening backend libraries. Everything a plugin file can get wrong becomes a
// recorded refusal with one line naming the file; nothing here aborts or trusts a table blindly.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "coda/backend.h"

namespace coda {

namespace {

constexpr std::string_view kPrefix = "libcoda-backend-";
constexpr std::string_view kSuffix = ".so";

// The backend name in a file name "libcoda-backend-<name>.so"; empty when it is not one.
std::string NameFromFileName(std::string_view file) {
  if (file.size() <= kPrefix.size() + kSuffix.size() || file.substr(0, kPrefix.size()) != kPrefix ||
      file.substr(file.size() - kSuffix.size()) != kSuffix)
    return "";
  return std::string(file.substr(kPrefix.size(), file.size() - kPrefix.size() - kSuffix.size()));
}

// Names the functions of a group that are present or missing, to tell which half is absent.
std::string PartialGroup(const char* group, std::initializer_list<std::pair<const char*, bool>> fns) {
  size_t present = 0;
  std::string missing;
  for (const auto& [name, has] : fns) {
    if (has) ++present;
    else missing += (missing.empty() ? "" : ", ") + std::string(name);
  }
  if (present == 0 || present == fns.size()) return "";
  return std::string("provides some of the ") + group + " functions but not " + missing;
}

}  // namespace

std::string BackendFileName(std::string_view name) {
  return std::string(kPrefix) + std::string(name) + std::string(kSuffix);
}

bool IsValidBackendName(std::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  return std::all_of(name.begin(), name.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';
  });
}

Status CheckBackendTable(const coda_backend_api* api) {
  if (!api) return InvalidArgument("coda_backend_entry returned no function table");
  // struct_size, abi_version, name and version are frozen at the start of every version's table.
  if (api->abi_version != CODA_BACKEND_ABI_VERSION) {
    const bool newer = api->abi_version > CODA_BACKEND_ABI_VERSION;
    return Unsupported("built for backend ABI version " + std::to_string(api->abi_version) +
                       ", this runtime speaks version " + std::to_string(CODA_BACKEND_ABI_VERSION) +
                       (newer ? " (the backend is newer than this runtime)"
                              : " (the backend is older: rebuild it against this runtime's coda_backend.h)"));
  }
  if (api->struct_size < CODA_BACKEND_API_MIN_SIZE)
    return InvalidArgument("its function table is " + std::to_string(api->struct_size) + " bytes, smaller than the " +
                           std::to_string(CODA_BACKEND_API_MIN_SIZE) + " bytes ABI version " +
                           std::to_string(CODA_BACKEND_ABI_VERSION) + " requires");
  if (!api->name) return InvalidArgument("its function table has no name");
  const std::string_view name(api->name, strnlen(api->name, 64));
  if (!IsValidBackendName(name))
    return InvalidArgument("its name '" + std::string(name) + "' is not a valid backend name (1 to 63 of a-z 0-9 _ -)");
  std::string missing;
  for (const auto& [fn, has] : {std::pair<const char*, bool>{"create", api->create != nullptr},
                                {"destroy", api->destroy != nullptr},
                                {"describe", api->describe != nullptr},
                                {"supports_op", api->supports_op != nullptr},
                                {"execute", api->execute != nullptr}})
    if (!has) missing += (missing.empty() ? "" : ", ") + std::string(fn);
  if (!missing.empty()) return InvalidArgument("its function table lacks the required function(s) " + missing);
  // Optional groups, read only where the backend's table reaches.
  coda_backend_api t{};
  std::memcpy(&t, api, std::min<size_t>(api->struct_size, sizeof t));
  for (const std::string& e :
       {PartialGroup("device", {{"device_count", t.device_count}, {"device_info", t.device_info}}),
        PartialGroup("prepare", {{"prepare", t.prepare}, {"release", t.release}}),
        PartialGroup("buffer", {{"buffer_alloc", t.buffer_alloc}, {"buffer_free", t.buffer_free},
                                {"buffer_upload", t.buffer_upload}, {"buffer_download", t.buffer_download},
                                {"buffer_copy", t.buffer_copy}}),
        PartialGroup("event", {{"event_create", t.event_create}, {"event_record", t.event_record},
                               {"event_wait", t.event_wait}, {"event_destroy", t.event_destroy}}),
        PartialGroup("step", {{"step_begin", t.step_begin}, {"step_end", t.step_end}})})
    if (!e.empty()) return InvalidArgument("its function table " + e);
  return Status::Ok();
}

std::vector<std::string> BackendSearchPath() {
  std::vector<std::string> dirs;
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) dirs.push_back(exe.parent_path().string());
  if (const char* env = std::getenv("CODA_BACKEND_PATH")) {
    const std::string_view s(env);
    size_t pos = 0;
    while (pos <= s.size()) {
      const size_t colon = std::min(s.find(':', pos), s.size());
      if (colon > pos) dirs.emplace_back(s.substr(pos, colon - pos));
      pos = colon + 1;
    }
  }
  return dirs;
}

const BackendLibrary* BackendRegistry::Find(std::string_view name) const {
  for (const BackendLibrary& l : libraries_)
    if (name == l.api->name) return &l;
  return nullptr;
}

Status BackendRegistry::AddNote(BackendNote::Kind kind, const std::string& path, std::string_view name,
                                std::string message) {
  notes_.push_back({kind, path, std::string(name), message});
  if (kind == BackendNote::Kind::kSkipped) return Status::Ok();
  return Unsupported(notes_.back().Line());
}

void BackendRegistry::Refuse(const std::string& name, const std::string& message, BackendNote::Kind kind) {
  for (auto it = libraries_.begin(); it != libraries_.end(); ++it)
    if (name == it->api->name) {
      notes_.push_back({kind, it->path, name, message});
      libraries_.erase(it);
      return;
    }
}

Status BackendRegistry::AddLinked(coda_backend_entry_fn entry) {
  const coda_backend_api* api = entry ? entry(CODA_BACKEND_ABI_VERSION) : nullptr;
  Status s = CheckBackendTable(api);
  if (!s.ok()) {
    const std::string who = api && api->name ? "backend '" + std::string(api->name, strnlen(api->name, 64)) + "'"
                                             : "a linked-in backend";
    return Status(s.code(), who + ": " + s.message());
  }
  if (Find(api->name)) return InvalidArgument("two linked-in backends are named '" + std::string(api->name) + "'");
  BackendLibrary lib;
  lib.api = api;
  libraries_.push_back(std::move(lib));
  return Status::Ok();
}

Status BackendRegistry::LoadFile(const std::string& path) { return Load(path, "", false); }

Status BackendRegistry::Load(const std::string& path, std::string_view expected_name, bool discovered) {
  using Kind = BackendNote::Kind;
  // Only a regular file is handed to dlopen(), which would wait forever on a FIFO. Opened
  // non-blocking, so that checking a FIFO does not wait either.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return AddNote(Kind::kRefused, path, expected_name, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  ::close(fd);
  if (!regular) return AddNote(Kind::kRefused, path, expected_name, "not a regular file");
  // RTLD_NOW: an unresolved symbol fails here, with a message, instead of at first call.
  // RTLD_LOCAL: a plugin's symbols never interpose on the program's or another plugin's.
  dlerror();
  void* raw = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!raw) {
    const char* e = dlerror();
    std::string why = e ? e : "unknown error";
    // dlerror() usually repeats the path ("<path>: invalid ELF header"); say it once.
    if (why.rfind(path + ": ", 0) == 0) why = why.substr(path.size() + 2);
    return AddNote(Kind::kRefused, path, expected_name, "not a loadable shared library: " + why);
  }
  std::shared_ptr<void> handle(raw, [](void* h) { dlclose(h); });
  dlerror();
  void* sym = dlsym(raw, CODA_BACKEND_ENTRY_SYMBOL);
  if (!sym)
    return AddNote(Kind::kRefused, path, expected_name,
                   "does not export " + std::string(CODA_BACKEND_ENTRY_SYMBOL) +
                       " (not a Coda backend, or its entry point lacks CODA_BACKEND_EXPORT)");
  coda_backend_entry_fn entry;
  static_assert(sizeof entry == sizeof sym);
  std::memcpy(&entry, &sym, sizeof entry);  // object to function pointer, as POSIX allows
  const coda_backend_api* api = entry(CODA_BACKEND_ABI_VERSION);
  if (!api)
    return AddNote(Kind::kRefused, path, expected_name,
                   std::string(CODA_BACKEND_ENTRY_SYMBOL) + "(" + std::to_string(CODA_BACKEND_ABI_VERSION) +
                       ") returned no function table (the backend cannot work with this runtime)");
  if (Status s = CheckBackendTable(api); !s.ok()) return AddNote(Kind::kRefused, path, expected_name, s.message());
  const std::string name = api->name;
  if (!expected_name.empty() && name != expected_name)
    return AddNote(Kind::kRefused, path, expected_name,
                   "declares the name '" + name + "', but its file name says '" + std::string(expected_name) + "'");
  if (const BackendLibrary* other = Find(name))
    return AddNote(Kind::kSkipped, path, name,
                   "skipped: backend '" + name + "' is already loaded " +
                       (other->path.empty() ? std::string("(linked into the program)") : "from " + other->path));
  BackendLibrary lib;
  lib.api = api;
  lib.path = path;
  lib.handle = std::move(handle);
  lib.discovered = discovered;
  libraries_.push_back(std::move(lib));
  return Status::Ok();
}

void BackendRegistry::ScanDirectory(const std::string& dir) {
  using Kind = BackendNote::Kind;
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    (void)AddNote(Kind::kRefused, dir, "", "not a directory (listed in CODA_BACKEND_PATH?)");
    return;
  }
  std::vector<std::pair<std::string, std::string>> found;  // (name, path)
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string file = it->path().filename().string();
    const std::string name = NameFromFileName(file);
    if (!name.empty()) found.emplace_back(name, it->path().string());
  }
  if (ec) {
    (void)AddNote(Kind::kRefused, dir, "", "cannot list the directory: " + ec.message());
    return;
  }
  std::sort(found.begin(), found.end());
  for (const auto& [name, path] : found) {
    if (!IsValidBackendName(name)) {
      (void)AddNote(Kind::kRefused, path, name, "'" + name + "' is not a valid backend name (1 to 63 of a-z 0-9 _ -)");
      continue;
    }
    // The first of a name wins; a duplicate is not even opened (e.g. libcoda-backend-cpu.so next
    // to a tool that links the CPU backend).
    if (const BackendLibrary* other = Find(name)) {
      (void)AddNote(Kind::kSkipped, path, name,
                    "skipped: backend '" + name + "' is already loaded " +
                        (other->path.empty() ? std::string("(linked into the program)") : "from " + other->path));
      continue;
    }
    (void)Load(path, name, true);
  }
}

}  // namespace coda
