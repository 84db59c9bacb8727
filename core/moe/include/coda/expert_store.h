// The expert store: routed experts of a model that does not fit in memory, kept in a RAM cache
// within a byte budget and read from the model file on demand with large direct reads (each
// expert is one contiguous range of the file). Demand reads go first; prefetches (the next
// layer's likely experts) fill the time a layer computes. Backend-agnostic: it hands out host
// memory holding an expert's bytes exactly as the file has them.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "coda/model_file.h"
#include "coda/status.h"

namespace coda {

enum class EvictionPolicy : uint8_t {
  kLru,       // least recently used
  kFrequency  // lowest use count, decayed so that old popularity fades (ties: least recent)
};

struct ExpertStoreOptions {
  uint64_t ram_budget = 0;  // bytes of expert cache; at least one layer's active experts
  unsigned reader_threads = 4;
  EvictionPolicy policy = EvictionPolicy::kFrequency;
  // Read with O_DIRECT (no second copy in the page cache). Files on file systems without it
  // (tmpfs) are read normally and dropped from the page cache after each read.
  bool direct_io = true;
};

struct ExpertStoreStats {
  uint64_t requests = 0;         // experts asked for by a forward pass
  uint64_t hits = 0;             // ... found resident (or being read by a prefetch)
  uint64_t misses = 0;           // ... read on demand
  uint64_t prefetches = 0;       // prefetch reads issued
  uint64_t prefetch_used = 0;    // prefetched experts asked for before they were evicted
  uint64_t prefetch_wasted = 0;  // prefetched experts evicted unused
  uint64_t bytes_read = 0;       // from the file, demand and prefetch
  uint64_t bytes_demand = 0;     // the minimum: bytes of the experts that missed
  double stall_seconds = 0;      // forward passes waiting for reads
};

// Where an expert's bytes are while it is pinned: `base` holds the file's bytes from
// `file_offset` on (the start of the expert's range in the data section).
struct ExpertView {
  const uint8_t* base = nullptr;
  uint64_t data_offset = 0;  // offset of base[0] in the data section
};

class ExpertStore {
 public:
  // Refuses a budget that cannot hold one layer's active experts (n_experts_per_tok of the
  // largest), naming the minimum.
  static Result<std::unique_ptr<ExpertStore>> Create(const ModelFile& file, const ExpertStoreOptions& options);
  ~ExpertStore();
  ExpertStore(const ExpertStore&) = delete;
  ExpertStore& operator=(const ExpertStore&) = delete;

  // Bytes one cached expert takes (its range in the file, rounded out to pages); a budget of
  // n times this holds n experts.
  static uint64_t SlotBytes(const ModelFile& file);
  // How many experts fit at once.
  uint32_t capacity() const;
  uint64_t slot_bytes() const;
  // Whether `layer` has an expert block the store serves.
  bool Serves(int32_t layer) const;

  // Makes the experts resident and pins them (at most capacity() at once, in all); returns
  // their views in the same order. Waits for reads; a read error (a file that shrank) is an
  // error naming the expert. Every successful Acquire is matched by one Release.
  Result<std::vector<ExpertView>> Acquire(int32_t layer, std::span<const int32_t> experts);
  void Release(int32_t layer, std::span<const int32_t> experts);
  // Starts reading experts that are not resident, into slots nothing pinned or recently used
  // needs; returns at once. Best effort.
  void Prefetch(int32_t layer, std::span<const int32_t> experts);

  ExpertStoreStats stats() const;
  void ResetStats();

 private:
  struct Impl;
  explicit ExpertStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Bytes of memory the machine (or this process's cgroup, whichever is tighter) can still give.
uint64_t MemoryAvailableToProcess();

}  // namespace coda
