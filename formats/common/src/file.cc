#include "coda/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>

namespace coda {

namespace {
std::string Errno() { return std::strerror(errno); }
constexpr size_t kWriteBuffer = 4u << 20;
}  // namespace

Result<MappedFile> MappedFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return NotFound(path + ": no such file");
    return IoError(path + ": cannot open: " + Errno());
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    Status s = IoError(path + ": cannot stat: " + Errno());
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument(path + ": not a regular file");
  }
  MappedFile f;
  f.path_ = path;
  f.size_ = static_cast<uint64_t>(st.st_size);
  if (f.size_ > 0) {
    void* p = ::mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      Status s = IoError(path + ": cannot map: " + Errno());
      ::close(fd);
      return s;
    }
    f.data_ = static_cast<const uint8_t*>(p);
#ifdef MADV_HUGEPAGE
    // Pages read in by faults on this mapping come in 2 MB folios, mapped one TLB entry each.
    // Decode streams GBs of weights: over 4 KB pages, page walks cost a 5 GB model 30-45% of
    // its speed. Advisory: without file THP support it changes nothing.
    ::madvise(p, f.size_, MADV_HUGEPAGE);
#endif
  }
  ::close(fd);
  return f;
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : data_(o.data_), size_(o.size_), path_(std::move(o.path_)) {
  o.data_ = nullptr;
  o.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = o.data_;
    size_ = o.size_;
    path_ = std::move(o.path_);
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

namespace {
void Advise(const uint8_t* base, uint64_t size, uint64_t offset, uint64_t length, int advice) {
  if (!base || offset >= size) return;
  length = std::min(length, size - offset);
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t start = offset & ~(page - 1);
  ::madvise(const_cast<uint8_t*>(base) + start, length + (offset - start), advice);
}
}  // namespace

void MappedFile::WillNeed(uint64_t offset, uint64_t length) const {
  Advise(data_, size_, offset, length, MADV_WILLNEED);
}
void MappedFile::DontNeed(uint64_t offset, uint64_t length) const {
  Advise(data_, size_, offset, length, MADV_DONTNEED);
}

void MappedFile::Populate(const std::function<void(uint64_t, uint64_t)>& progress) const {
  if (!data_) return;
  // In steps, so that a caller can show progress on a file that takes seconds to read.
  constexpr uint64_t kStep = uint64_t{256} << 20;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  for (uint64_t at = 0; at < size_; at += kStep) {
    const uint64_t n = std::min(kStep, size_ - at);
    auto* p = const_cast<uint8_t*>(data_) + at;
#ifdef MADV_POPULATE_READ
    const int populate = MADV_POPULATE_READ;
#else
    const int populate = 22;  // Linux 5.14+; older kernels reject it and we touch the pages instead
#endif
    if (::madvise(p, n, populate) != 0) {
      volatile uint8_t sink = 0;
      for (uint64_t o = 0; o < n; o += page) sink = sink ^ p[o];
    }
    if (progress) progress(at + n, size_);
  }
}

double MappedFile::HugePageShare() const {
  if (!data_) return -1;
  std::FILE* f = std::fopen("/proc/self/smaps", "r");
  if (!f) return -1;
  // The mapping is one area: find its header line ("start-end perms ..."), then its fields.
  const auto start = reinterpret_cast<uintptr_t>(data_);
  char line[8192];  // a header line ends with a path, up to PATH_MAX
  bool in = false;
  unsigned long long rss = 0, pmd = 0, kb = 0;
  bool have_rss = false, have_pmd = false;
  while (std::fgets(line, sizeof line, f)) {
    // A field line's first word ends with ':' ("Rss:"); an area's header starts "lo-hi ".
    const size_t word = std::strcspn(line, " \t\n");
    unsigned long long lo = 0, hi = 0;
    if (word > 0 && line[word - 1] != ':' && std::sscanf(line, "%llx-%llx", &lo, &hi) == 2) {
      if (in) break;  // the next area
      in = lo == start;
      continue;
    }
    if (!in) continue;
    if (std::sscanf(line, "Rss: %llu kB", &kb) == 1) rss = kb, have_rss = true;
    if (std::sscanf(line, "FilePmdMapped: %llu kB", &kb) == 1) pmd = kb, have_pmd = true;
  }
  std::fclose(f);
  if (!have_rss || !have_pmd || rss == 0) return -1;
  return static_cast<double>(pmd) / static_cast<double>(rss);
}

bool AnonymousHugePagesEnabled() {
  std::FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  if (!f) return false;
  char line[128] = {};
  const bool read = std::fgets(line, sizeof line, f) != nullptr;
  std::fclose(f);
  return read && std::strstr(line, "[never]") == nullptr;
}

uint64_t AvailableMemoryBytes() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  unsigned long long kb = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
  std::fclose(f);
  return static_cast<uint64_t>(kb) * 1024;
}

Result<std::string> ReadTextFile(const std::string& path, uint64_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return NotFound(path + ": no such file");
    return IoError(path + ": cannot open: " + Errno());
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument(path + ": not a regular file");
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    return OutOfRange(path + ": " + std::to_string(st.st_size) + " bytes, more than the limit of " +
                      std::to_string(max_bytes));
  }
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::read(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Status s = IoError(path + ": read failed: " + (n == 0 ? std::string("file shrank") : Errno()));
      ::close(fd);
      return s;
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return out;
}

bool FileExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

namespace {

// ---- Temporary files removed when a signal ends the process. ----
//
// A signal whose action would end the process (it had the default action) removes every
// temporary file still registered, then ends the process as the signal would have. A signal the
// program handles itself (coda-chat's Ctrl-C, coda-convert's cancel flag) goes to its handler
// untouched: the program then finishes or aborts its writers normally. A crash removes them
// whoever handles it next (a sanitizer's report ends the process too). Process-wide by nature.
constexpr int kTempSlots = 64;
std::atomic<const char*> g_temp_files[kTempSlots];
constexpr int kCleanupSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
constexpr size_t kFirstCrashSignal = 5;  // SIGSEGV onwards
struct sigaction g_previous[std::size(kCleanupSignals)];
std::once_flag g_handlers_installed;

void RemoveTempFiles() {
  for (auto& slot : g_temp_files)
    if (const char* p = slot.load()) ::unlink(p);
}

void OnSignal(int sig, siginfo_t* info, void* context) {
  for (size_t i = 0; i < std::size(kCleanupSignals); ++i) {
    if (kCleanupSignals[i] != sig) continue;
    const struct sigaction& prev = g_previous[i];
    const bool crash = i >= kFirstCrashSignal;
    const bool info_handler = (prev.sa_flags & SA_SIGINFO) != 0;
    const bool ignored = !info_handler && prev.sa_handler == SIG_IGN;
    const bool handled = info_handler ? prev.sa_sigaction != nullptr : prev.sa_handler != SIG_DFL && !ignored;
    if (ignored && !crash) return;
    if (crash || !handled) RemoveTempFiles();
    if (handled) {
      if (info_handler) return prev.sa_sigaction(sig, info, context);
      return prev.sa_handler(sig);
    }
    ::sigaction(sig, &prev, nullptr);
    ::raise(sig);  // blocked while this handler runs; delivered, with the default action, on return
    return;
  }
}

void InstallHandlers() {
  for (size_t i = 0; i < std::size(kCleanupSignals); ++i) {
    struct sigaction sa {};
    sa.sa_sigaction = OnSignal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    ::sigaction(kCleanupSignals[i], &sa, &g_previous[i]);
  }
  std::atexit(RemoveTempFiles);  // exit() without the writers' destructors
}

// Registers a temporary file (the string must live until Unregister); false when the table is full.
bool RegisterTemp(const char* path) {
  std::call_once(g_handlers_installed, InstallHandlers);
  for (auto& slot : g_temp_files) {
    const char* empty = nullptr;
    if (slot.compare_exchange_strong(empty, path)) return true;
  }
  return false;
}

void UnregisterTemp(const char* path) {
  for (auto& slot : g_temp_files) {
    const char* mine = path;
    if (slot.compare_exchange_strong(mine, nullptr)) return;
  }
}

// Follows symbolic links from `path` to the name the output is really written at (which may not
// exist yet). Relative targets are relative to the link's directory.
Result<std::string> ResolveLinks(const std::string& path) {
  std::string p = path;
  for (int hops = 0; hops < 40; ++hops) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) {
      if (errno == ENOENT) return p;
      return IoError(path + ": cannot stat '" + p + "': " + Errno());
    }
    if (!S_ISLNK(st.st_mode)) return p;
    std::string target(PATH_MAX, '\0');
    const ssize_t n = ::readlink(p.c_str(), target.data(), target.size());
    if (n < 0 || static_cast<size_t>(n) >= target.size()) return IoError(path + ": cannot read the link '" + p + "'");
    target.resize(static_cast<size_t>(n));
    if (target.empty()) return InvalidArgument(path + ": '" + p + "' is an empty symbolic link");
    if (target[0] != '/') {
      const auto slash = p.rfind('/');
      if (slash != std::string::npos) target = p.substr(0, slash + 1) + target;
    }
    p = std::move(target);
  }
  return InvalidArgument(path + ": too many levels of symbolic links");
}

}  // namespace

Result<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(const std::string& path) {
  if (path.empty()) return InvalidArgument("empty output path");
  CODA_ASSIGN_OR_RETURN(const std::string target, ResolveLinks(path));
  struct stat st {};
  const bool exists = ::stat(target.c_str(), &st) == 0;
  if (exists && S_ISDIR(st.st_mode)) return InvalidArgument(path + ": is a directory, expected a file name");
  if (exists && !S_ISREG(st.st_mode)) {
    // A device, FIFO or socket is written as it is, like a shell redirection: never replaced.
    const int fd = ::open(target.c_str(), O_WRONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return IoError(path + ": cannot open for writing: " + Errno());
    return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(path, target, "", fd));
  }
  if (exists && (::access(target.c_str(), W_OK) != 0 || (st.st_mode & 0222) == 0))
    return IoError(path + ": is read-only; not replaced");
  const auto slash = target.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : target.substr(0, slash));
  if (!IsDirectory(dir)) return NotFound(path + ": output directory '" + dir + "' does not exist");
  // A new name of our own in the target's directory: O_EXCL | O_NOFOLLOW never opens something
  // planted there (a link to another file), and a name taken is skipped.
  const std::string stem = target + ".tmp." + std::to_string(::getpid()) + ".";
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string temp = stem + std::to_string(attempt);
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST) continue;
    if (fd < 0) return IoError(path + ": cannot create '" + temp + "': " + Errno());
    if (exists && ::fchmod(fd, st.st_mode & 07777) != 0) {
      // the replacement keeps the file's permissions where it can; the default mode otherwise
    }
    auto w = std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(path, target, std::move(temp), fd));
    w->registered_ = RegisterTemp(w->temp_path_.c_str());
    return w;
  }
  return IoError(path + ": cannot find a free temporary name beside it");
}

AtomicFileWriter::~AtomicFileWriter() { Abort(); }

void AtomicFileWriter::Abort() {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  if (temp_path_.empty()) return;
  ::unlink(temp_path_.c_str());
  Forget();
}

void AtomicFileWriter::Forget() {
  if (registered_) UnregisterTemp(temp_path_.c_str());
  registered_ = false;
}

Status AtomicFileWriter::FlushBuffer() {
  size_t done = 0;
  while (done < buffered_) {
    const ssize_t n = ::write(fd_, buffer_.get() + done, buffered_ - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return IoError(path_ + ": write failed: " + Errno());
    done += static_cast<size_t>(n);
  }
  buffered_ = 0;
  return Status::Ok();
}

Status AtomicFileWriter::Write(std::span<const uint8_t> bytes) {
  if (fd_ < 0) return Internal(path_ + ": write after commit or abort");
  if (!buffer_) buffer_ = std::make_unique<uint8_t[]>(kWriteBuffer);
  while (!bytes.empty()) {
    const size_t n = std::min(bytes.size(), kWriteBuffer - buffered_);
    std::memcpy(buffer_.get() + buffered_, bytes.data(), n);
    buffered_ += n;
    bytes = bytes.subspan(n);
    offset_ += n;
    if (buffered_ == kWriteBuffer) CODA_RETURN_IF_ERROR(FlushBuffer());
  }
  return Status::Ok();
}

Status AtomicFileWriter::WriteZeros(uint64_t count) {
  static constexpr uint8_t kZeros[4096] = {};
  while (count > 0) {
    const uint64_t n = std::min<uint64_t>(count, sizeof(kZeros));
    CODA_RETURN_IF_ERROR(Write({kZeros, static_cast<size_t>(n)}));
    count -= n;
  }
  return Status::Ok();
}

Status AtomicFileWriter::Commit() {
  if (fd_ < 0) return Internal(path_ + ": commit after commit or abort");
  CODA_RETURN_IF_ERROR(FlushBuffer());
  if (temp_path_.empty()) {
    // Written in place: devices and FIFOs may not support fsync.
    const int fd = fd_;
    fd_ = -1;
    if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS && errno != ENOTSUP) {
      const std::string e = Errno();
      ::close(fd);
      return IoError(path_ + ": fsync failed: " + e);
    }
    if (::close(fd) != 0) return IoError(path_ + ": close failed: " + Errno());
    return Status::Ok();
  }
  if (::fsync(fd_) != 0) return IoError(path_ + ": fsync failed: " + Errno());
  if (::close(fd_) != 0) {
    fd_ = -1;
    ::unlink(temp_path_.c_str());
    Forget();
    return IoError(path_ + ": close failed: " + Errno());
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), target_.c_str()) != 0) {
    Status s = IoError(path_ + ": cannot rename '" + temp_path_ + "' into place: " + Errno());
    ::unlink(temp_path_.c_str());
    Forget();
    return s;
  }
  Forget();
  return Status::Ok();
}

}  // namespace coda
