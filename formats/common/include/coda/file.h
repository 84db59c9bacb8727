// Files: read-only memory maps of inputs, and outputs that appear only when complete.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "coda/status.h"

namespace coda {

// A read-only, private memory map of a whole file. Move-only; unmaps on destruction.
class MappedFile {
 public:
  static Result<MappedFile> Open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  std::span<const uint8_t> bytes() const { return {data_, static_cast<size_t>(size_)}; }
  const std::string& path() const { return path_; }

  // Tells the kernel a range will (not) be needed soon; advisory, never fails.
  void WillNeed(uint64_t offset, uint64_t length) const;
  void DontNeed(uint64_t offset, uint64_t length) const;
  // Maps every page of the file into this process now (reading it if not cached), so that
  // later first touches do not fault one page at a time. `progress(done, total)` (optional) is
  // called as it goes, in bytes.
  void Populate(const std::function<void(uint64_t, uint64_t)>& progress = {}) const;
  // The share of the mapping's resident bytes the kernel maps with 2 MB entries (the page cache
  // holds them in 2 MB folios), from /proc/self/smaps; -1 when it cannot tell.
  double HugePageShare() const;

 private:
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  std::string path_;
};

// Reads a whole (small) file into a string, refusing files larger than max_bytes.
Result<std::string> ReadTextFile(const std::string& path, uint64_t max_bytes);

bool FileExists(const std::string& path);
// MemAvailable from /proc/meminfo in bytes, 0 when unknown.
uint64_t AvailableMemoryBytes();
// Whether anonymous memory advised with MADV_HUGEPAGE can get 2 MB pages (transparent huge
// pages not set to "never").
bool AnonymousHugePagesEnabled();
bool IsDirectory(const std::string& path);

// Writes an output file so that it appears only when complete: through a temporary file beside
// it, renamed over it by Commit(). A symbolic link is followed and its target written; a device,
// FIFO or socket is written directly, never replaced; a read-only file is refused. The temporary
// file goes away on every path: Abort(), the destructor, exit(), and any signal that ends the
// process.
class AtomicFileWriter {
 public:
  static Result<std::unique_ptr<AtomicFileWriter>> Create(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  Status Write(std::span<const uint8_t> bytes);
  Status WriteZeros(uint64_t count);
  uint64_t offset() const { return offset_; }
  // Flushes, fsyncs and renames into place.
  Status Commit();
  // Removes the temporary file now (also done by the destructor).
  void Abort();

  const std::string& path() const { return path_; }
  // Empty when the output is written in place (a device or FIFO).
  const std::string& temp_path() const { return temp_path_; }

 private:
  AtomicFileWriter(std::string path, std::string target, std::string temp_path, int fd)
      : path_(std::move(path)), target_(std::move(target)), temp_path_(std::move(temp_path)), fd_(fd) {}
  Status FlushBuffer();
  void Forget();  // the temporary file is gone or renamed: no signal may remove it any more

  std::string path_;       // as the caller named it
  std::string target_;     // after following symbolic links
  std::string temp_path_;
  int fd_ = -1;
  bool registered_ = false;
  uint64_t offset_ = 0;
  std::unique_ptr<uint8_t[]> buffer_;
  size_t buffered_ = 0;
};

}  // namespace coda
