// Reader for Hugging Face safetensors files and sharded checkpoints
// (model.safetensors.index.json). Everything in a header is validated before use.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "coda/dtype.h"
#include "coda/file.h"
#include "coda/status.h"

namespace coda::safetensors {

// Limits from the format's own rules, plus a bound on the rank of a tensor.
inline constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
inline constexpr size_t kMaxRank = 8;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // byte range relative to the start of the data section
  uint64_t end = 0;
  uint64_t size() const { return end - begin; }
};

struct Header {
  uint64_t data_start = 0;  // absolute file offset of the data section (8 + header length)
  std::vector<TensorInfo> tensors;  // in file order (ascending offsets)
  std::map<std::string, std::string> metadata;
};

// Parses and validates the header of a safetensors file whose first `bytes.size()` bytes are
// given (the whole file). Checks: header length within the file and <= 100 MB, valid JSON of
// the expected shape, known dtypes, shape/byte-size agreement, and byte ranges that are
// contiguous, non-overlapping and exactly cover the data section.
Result<Header> ParseHeader(std::span<const uint8_t> file_bytes);

// One mmapped safetensors file.
class File {
 public:
  static Result<File> Open(const std::string& path);

  const std::string& path() const { return map_.path(); }
  const Header& header() const { return header_; }
  const TensorInfo* Find(const std::string& name) const;
  // The bytes of a tensor (inside the mapping; valid while the File lives).
  std::span<const uint8_t> Data(const TensorInfo& t) const;
  const MappedFile& mapping() const { return map_; }

 private:
  MappedFile map_;
  Header header_;
  std::map<std::string, size_t> index_;
};

// A checkpoint directory: model.safetensors, or shards listed by model.safetensors.index.json.
// Every tensor is resolved to its shard; shards are opened (mmapped) up front.
class Checkpoint {
 public:
  static Result<Checkpoint> Open(const std::string& dir);

  struct Ref {
    const File* file;
    const TensorInfo* info;
  };
  // nullptr-file Ref when absent.
  Ref Find(const std::string& name) const;
  const std::vector<std::string>& tensor_names() const { return names_; }
  const std::vector<std::unique_ptr<File>>& files() const { return files_; }
  uint64_t total_bytes() const;

 private:
  std::vector<std::unique_ptr<File>> files_;
  std::map<std::string, Ref> refs_;
  std::vector<std::string> names_;  // sorted
};

}  // namespace coda::safetensors
