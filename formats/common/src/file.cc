#include "coda/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

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

void MappedFile::Populate() const {
  if (!data_) return;
#ifdef MADV_POPULATE_READ
  if (::madvise(const_cast<uint8_t*>(data_), size_, MADV_POPULATE_READ) == 0) return;
#else
  // Linux 5.14+; older kernels reject it and we touch the pages instead.
  if (::madvise(const_cast<uint8_t*>(data_), size_, 22) == 0) return;
#endif
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  volatile uint8_t sink = 0;
  for (uint64_t o = 0; o < size_; o += page) sink = sink ^ data_[o];
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

Result<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(const std::string& path) {
  if (IsDirectory(path)) return InvalidArgument(path + ": is a directory, expected a file name");
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  if (!IsDirectory(dir)) return NotFound(path + ": output directory '" + dir + "' does not exist");
  std::string temp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return IoError(path + ": cannot create '" + temp + "': " + Errno());
  return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(path, std::move(temp), fd));
}

AtomicFileWriter::~AtomicFileWriter() { Abort(); }

void AtomicFileWriter::Abort() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(temp_path_.c_str());
  }
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
  if (::fsync(fd_) != 0) return IoError(path_ + ": fsync failed: " + Errno());
  if (::close(fd_) != 0) {
    fd_ = -1;
    ::unlink(temp_path_.c_str());
    return IoError(path_ + ": close failed: " + Errno());
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    Status s = IoError(path_ + ": cannot rename '" + temp_path_ + "' into place: " + Errno());
    ::unlink(temp_path_.c_str());
    return s;
  }
  return Status::Ok();
}

}  // namespace coda
