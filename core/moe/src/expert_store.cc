#include "coda/expert_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "coda/checked.h"

namespace coda {

namespace {

constexpr uint64_t kPage = 4096;         // O_DIRECT alignment of offsets, sizes and memory
constexpr uint64_t kChunk = 4u << 20;    // one read request
constexpr double kDecay = 0.98;          // per Acquire, for the frequency policy

uint64_t AlignDown(uint64_t v) { return v / kPage * kPage; }
uint64_t AlignUp(uint64_t v) { return (v + kPage - 1) / kPage * kPage; }
uint64_t Key(int32_t layer, int32_t expert) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(layer)) << 32) | static_cast<uint32_t>(expert);
}

}  // namespace

struct ExpertStore::Impl {
  struct Block {
    uint32_t n_experts = 0;
    uint64_t offset = 0, stride = 0;  // in the data section
  };
  enum class State { kFree, kLoading, kReady, kFailed };
  struct Slot {
    uint8_t* mem = nullptr;
    uint64_t key = UINT64_MAX;
    State state = State::kFree;
    uint32_t pins = 0;
    uint64_t last_use = 0;
    double freq = 0;
    bool prefetched = false;   // read by a prefetch, not asked for yet
    uint32_t pending = 0;      // read requests in flight
    uint64_t skip = 0;         // the expert's first byte is mem[skip]
    uint64_t data_offset = 0;  // ... which is this offset in the data section
    std::string error;
  };
  struct Job {
    uint32_t slot;
    uint64_t file_offset, length, dest, need;  // need: bytes of this request that must arrive
  };

  ExpertStoreOptions options;
  std::string path;
  int fd = -1;
  bool direct = false;
  uint64_t file_data_offset = 0;  // where the data section starts in the file
  std::unordered_map<int32_t, Block> blocks;
  uint64_t slot_bytes = 0;
  uint8_t* arena = nullptr;
  uint64_t arena_bytes = 0;
  std::vector<Slot> slots;
  std::unordered_map<uint64_t, uint32_t> where;  // key -> slot
  uint64_t tick = 0;

  mutable std::mutex mu;
  std::condition_variable loaded, work;
  std::deque<Job> queue;  // demand reads at the front, prefetches at the back
  bool stopping = false;
  std::vector<std::thread> readers;
  ExpertStoreStats stats;

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
    }
    work.notify_all();
    for (auto& t : readers) t.join();
    if (arena) ::munmap(arena, arena_bytes);
    if (fd >= 0) ::close(fd);
  }

  double Score(const Slot& s) const {
    return options.policy == EvictionPolicy::kLru ? static_cast<double>(s.last_use) : s.freq;
  }

  // A slot to (re)use: a free one, else the unpinned resident one the policy values least.
  // `min_age`: only slots last used at least that many Acquires ago (prefetches spare the
  // experts the current and previous layer just used).
  int64_t Victim(uint64_t min_age) const {
    int64_t best = -1;
    for (size_t i = 0; i < slots.size(); ++i) {
      const Slot& s = slots[i];
      if (s.state == State::kFree) return static_cast<int64_t>(i);
      if (s.pins || s.state == State::kLoading || tick - s.last_use < min_age) continue;
      if (best < 0 || Score(s) < Score(slots[static_cast<size_t>(best)]) ||
          (Score(s) == Score(slots[static_cast<size_t>(best)]) && s.last_use < slots[static_cast<size_t>(best)].last_use))
        best = static_cast<int64_t>(i);
    }
    return best;
  }

  // Assigns slot i to an expert and queues its read (lock held).
  void Load(uint32_t i, uint64_t key, int32_t expert, const Block& b, bool demand) {
    Slot& s = slots[i];
    if (s.key != UINT64_MAX) {
      where.erase(s.key);
      if (s.prefetched) ++stats.prefetch_wasted;
    }
    const uint64_t lo = file_data_offset + b.offset + b.stride * static_cast<uint64_t>(expert);
    const uint64_t hi = lo + b.stride;
    const uint64_t begin = AlignDown(lo), end = AlignUp(hi);
    s.key = key;
    s.state = State::kLoading;
    s.prefetched = !demand;
    s.skip = lo - begin;
    s.data_offset = b.offset + b.stride * static_cast<uint64_t>(expert);
    s.error.clear();
    s.pending = 0;
    where[key] = i;
    std::vector<Job> jobs;
    for (uint64_t at = begin; at < end; at += kChunk) {
      const uint64_t len = std::min(kChunk, end - at);
      const uint64_t need = std::min(at + len, hi) - at;
      jobs.push_back({i, at, len, at - begin, need});
    }
    s.pending = static_cast<uint32_t>(jobs.size());
    if (demand) {
      for (auto it = jobs.rbegin(); it != jobs.rend(); ++it) queue.push_front(*it);
    } else {
      for (const Job& j : jobs) queue.push_back(j);
    }
    stats.bytes_read += hi - lo;
    work.notify_all();
  }

  void Touch(Slot& s) {
    s.last_use = tick;
    s.freq += 1.0;
  }

  void ReaderLoop() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu);
        work.wait(lock, [&] { return stopping || !queue.empty(); });
        if (stopping) return;
        job = queue.front();
        queue.pop_front();
      }
      std::string error;
      uint64_t done = 0;
      uint8_t* dest = slots[job.slot].mem + job.dest;
      while (done < job.length) {
        const ssize_t n = ::pread(fd, dest + done, job.length - done, static_cast<off_t>(job.file_offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          error = std::strerror(errno);
          break;
        }
        if (n == 0) break;  // end of file: fine past the expert's last byte
        done += static_cast<uint64_t>(n);
      }
      if (error.empty() && done < job.need)
        error = "the file ends at byte " + std::to_string(job.file_offset + done) + " (it shrank after loading?)";
      if (!direct && error.empty())
        ::posix_fadvise(fd, static_cast<off_t>(job.file_offset), static_cast<off_t>(job.length), POSIX_FADV_DONTNEED);
      {
        std::lock_guard<std::mutex> lock(mu);
        Slot& s = slots[job.slot];
        if (!error.empty() && s.error.empty()) s.error = error;
        if (--s.pending == 0) s.state = s.error.empty() ? State::kReady : State::kFailed;
      }
      loaded.notify_all();
    }
  }
};

ExpertStore::ExpertStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ExpertStore::~ExpertStore() = default;

Result<std::unique_ptr<ExpertStore>> ExpertStore::Create(const ModelFile& file, const ExpertStoreOptions& options) {
  auto im = std::make_unique<Impl>();
  im->options = options;
  im->path = file.path();
  im->file_data_offset = file.data_offset();
  for (const ExpertBlockRef& b : file.expert_blocks())
    if (b.n_experts) im->blocks[b.layer] = {b.n_experts, b.offset, b.stride};
  if (im->blocks.empty()) return InvalidArgument(file.path() + ": the model has no routed experts to offload");
  im->slot_bytes = SlotBytes(file);
  const uint32_t k = file.config().n_experts_per_tok;
  const auto need = CheckedMul(im->slot_bytes, uint64_t{k});
  if (!need || options.ram_budget < *need) {
    return InvalidArgument("an expert budget of " + std::to_string(options.ram_budget) +
                           " bytes cannot hold one layer's active experts: at least " +
                           std::to_string(need ? *need : UINT64_MAX) + " bytes (" + std::to_string(k) + " experts of " +
                           std::to_string(im->slot_bytes) + " bytes)");
  }
  uint64_t total_experts = 0;
  for (const auto& [layer, b] : im->blocks) total_experts += b.n_experts;
  const uint64_t n_slots = std::min<uint64_t>(options.ram_budget / im->slot_bytes, total_experts);
  im->arena_bytes = n_slots * im->slot_bytes;
  void* p = ::mmap(nullptr, im->arena_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return OutOfMemory("cannot reserve " + std::to_string(im->arena_bytes) + " bytes for the expert cache");
  im->arena = static_cast<uint8_t*>(p);
#ifdef MADV_HUGEPAGE
  ::madvise(p, im->arena_bytes, MADV_HUGEPAGE);
#endif
  im->slots.resize(n_slots);
  for (uint64_t i = 0; i < n_slots; ++i) im->slots[i].mem = im->arena + i * im->slot_bytes;

  if (options.direct_io) {
    im->fd = ::open(im->path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    im->direct = im->fd >= 0;
  }
  if (im->fd < 0) im->fd = ::open(im->path.c_str(), O_RDONLY | O_CLOEXEC);
  if (im->fd < 0) return IoError(im->path + ": cannot open for reading experts: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(im->fd, &st) != 0 || !S_ISREG(st.st_mode)) return InvalidArgument(im->path + ": not a regular file");
  Impl* raw = im.get();
  for (unsigned t = 0; t < std::max(1u, options.reader_threads); ++t) raw->readers.emplace_back([raw] { raw->ReaderLoop(); });
  return std::unique_ptr<ExpertStore>(new ExpertStore(std::move(im)));
}

uint64_t ExpertStore::SlotBytes(const ModelFile& file) {
  uint64_t largest = 0;
  for (const ExpertBlockRef& b : file.expert_blocks()) largest = std::max(largest, b.stride);
  return AlignUp(largest) + 2 * kPage;  // the range rounded out to pages at both ends
}

uint32_t ExpertStore::capacity() const { return static_cast<uint32_t>(impl_->slots.size()); }
uint64_t ExpertStore::slot_bytes() const { return impl_->slot_bytes; }
bool ExpertStore::Serves(int32_t layer) const { return impl_->blocks.count(layer) != 0; }

Result<std::vector<ExpertView>> ExpertStore::Acquire(int32_t layer, std::span<const int32_t> experts) {
  Impl& im = *impl_;
  auto block = im.blocks.find(layer);
  if (block == im.blocks.end()) return InvalidArgument("layer " + std::to_string(layer) + " has no routed experts");
  std::unique_lock<std::mutex> lock(im.mu);
  ++im.tick;
  if (im.options.policy == EvictionPolicy::kFrequency)
    for (auto& s : im.slots) s.freq *= kDecay;
  std::vector<uint32_t> got;
  auto undo = [&] {
    for (uint32_t i : got) --im.slots[i].pins;
  };
  for (int32_t e : experts) {
    if (e < 0 || static_cast<uint32_t>(e) >= block->second.n_experts) {
      undo();
      return InvalidArgument("expert " + std::to_string(e) + " of layer " + std::to_string(layer) + " does not exist");
    }
    const uint64_t key = Key(layer, e);
    ++im.stats.requests;
    auto it = im.where.find(key);
    uint32_t i;
    if (it != im.where.end()) {
      i = it->second;
      ++im.stats.hits;
      if (im.slots[i].prefetched) {
        ++im.stats.prefetch_used;
        im.slots[i].prefetched = false;
      }
    } else {
      int64_t v = im.Victim(0);
      // Slots a prefetch is still filling, or another session has pinned, come free in time;
      // slots this call pinned do not.
      while (v < 0) {
        bool wait = false;
        for (size_t j = 0; j < im.slots.size(); ++j) {
          const Impl::Slot& t = im.slots[j];
          const bool mine = std::find(got.begin(), got.end(), j) != got.end();
          wait = wait || (t.state == Impl::State::kLoading && !t.pins) || (t.pins && !mine);
        }
        if (!wait) {
          undo();
          return Internal("the expert cache has no free slot: more experts pinned at once than its " +
                          std::to_string(im.slots.size()) + " slots");
        }
        im.loaded.wait(lock);
        v = im.Victim(0);
      }
      i = static_cast<uint32_t>(v);
      ++im.stats.misses;
      im.stats.bytes_demand += block->second.stride;
      im.Load(i, key, e, block->second, /*demand=*/true);
    }
    ++im.slots[i].pins;
    im.Touch(im.slots[i]);
    got.push_back(i);
  }
  const auto t0 = std::chrono::steady_clock::now();
  bool waited = false;
  for (;;) {
    bool loading = false;
    for (uint32_t i : got) loading = loading || im.slots[i].state == Impl::State::kLoading;
    if (!loading) break;
    waited = true;
    im.loaded.wait(lock);
  }
  if (waited) im.stats.stall_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<ExpertView> views;
  for (size_t j = 0; j < got.size(); ++j) {
    Impl::Slot& s = im.slots[got[j]];
    if (s.state == Impl::State::kFailed) {
      const std::string e = im.path + ": reading expert " + std::to_string(experts[j]) + " of layer " +
                            std::to_string(layer) + ": " + s.error;
      // Forget the failed read so that a later pass tries again.
      for (uint32_t i : got) {
        Impl::Slot& t = im.slots[i];
        --t.pins;
        if (t.state == Impl::State::kFailed) {
          im.where.erase(t.key);
          t = Impl::Slot{t.mem};
        }
      }
      return IoError(e);
    }
    views.push_back({s.mem + s.skip, s.data_offset});
  }
  return views;
}

void ExpertStore::Release(int32_t layer, std::span<const int32_t> experts) {
  Impl& im = *impl_;
  {
    std::lock_guard<std::mutex> lock(im.mu);
    for (int32_t e : experts) {
      auto it = im.where.find(Key(layer, e));
      if (it != im.where.end() && im.slots[it->second].pins > 0) --im.slots[it->second].pins;
    }
  }
  im.loaded.notify_all();  // a pinned slot came free
}

void ExpertStore::Prefetch(int32_t layer, std::span<const int32_t> experts) {
  Impl& im = *impl_;
  auto block = im.blocks.find(layer);
  if (block == im.blocks.end()) return;
  std::lock_guard<std::mutex> lock(im.mu);
  for (int32_t e : experts) {
    if (e < 0 || static_cast<uint32_t>(e) >= block->second.n_experts) continue;
    const uint64_t key = Key(layer, e);
    if (im.where.count(key)) continue;
    const int64_t v = im.Victim(2);
    if (v < 0) return;
    ++im.stats.prefetches;
    im.Load(static_cast<uint32_t>(v), key, e, block->second, /*demand=*/false);
  }
}

ExpertStoreStats ExpertStore::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->stats;
}

void ExpertStore::ResetStats() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->stats = {};
}

namespace {

// Room a cgroup's memory limit leaves, or UINT64_MAX without a limit: the limit less what is in
// use, page cache excepted (it counts against the limit but can be reclaimed).
uint64_t CgroupRoom(const std::string& dir, const char* limit_file, const char* usage_file, const char* cache_key) {
  std::ifstream max_f(dir + "/" + limit_file), cur_f(dir + "/" + usage_file), stat_f(dir + "/memory.stat");
  std::string max_s;
  uint64_t current = 0;
  if (!(max_f >> max_s) || max_s == "max" || !(cur_f >> current)) return UINT64_MAX;
  const uint64_t limit = std::strtoull(max_s.c_str(), nullptr, 10);
  uint64_t file = 0, v = 0;
  std::string key;
  while (stat_f >> key >> v)
    if (key == cache_key) file = v;
  const uint64_t used = current > file ? current - file : 0;
  return limit > used ? limit - used : 0;
}

}  // namespace

uint64_t MemoryAvailableToProcess() {
  uint64_t avail = AvailableMemoryBytes();
  // Inside cgroups with memory limits (containers, memcap): the least room any of the process's
  // groups or their ancestors leaves. cgroup v2 ("0::/path"), or v1's memory controller
  // ("N:memory:/path", or a list of controllers naming it).
  std::ifstream cg("/proc/self/cgroup");
  std::string line;
  uint64_t room = UINT64_MAX;
  while (std::getline(cg, line)) {
    const size_t c1 = line.find(':'), c2 = c1 == std::string::npos ? c1 : line.find(':', c1 + 1);
    if (c2 == std::string::npos) continue;
    const std::string controllers = line.substr(c1 + 1, c2 - c1 - 1);
    std::string path = line.substr(c2 + 1);
    const bool v2 = controllers.empty();
    bool v1 = false;
    for (std::stringstream list(controllers); std::getline(list, line, ',');) v1 = v1 || line == "memory";
    if (!v1 && !v2) continue;
    const std::string root = v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory";
    for (;;) {  // the group, then each ancestor: a parent's limit binds its children too
      const std::string dir = root + (path == "/" ? "" : path);
      room = std::min(room, v2 ? CgroupRoom(dir, "memory.max", "memory.current", "file")
                               : CgroupRoom(dir, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_cache"));
      if (path.empty() || path == "/") break;
      path = path.substr(0, path.rfind('/'));
      if (path.empty()) path = "/";
    }
  }
  if (room != UINT64_MAX) avail = avail ? std::min(avail, room) : room;
  return avail;
}

}  // namespace coda
