#include "thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CODA_PAUSE() _mm_pause()
#else
#define CODA_PAUSE() std::this_thread::yield()
#endif

namespace coda::cpu {

namespace {
// How long an idle worker spins before it sleeps.
constexpr auto kSpin = std::chrono::microseconds(200);
// Chunks per thread: more let the others absorb a late thread's share; each costs an atomic.
constexpr size_t kChunksPerThread = 4;
constexpr uint32_t kClosed = UINT32_MAX;

uint32_t Generation(uint64_t state) { return static_cast<uint32_t>(state >> 32); }
uint32_t NextChunk(uint64_t state) { return static_cast<uint32_t>(state); }
}  // namespace

ThreadPool::ThreadPool(unsigned n_threads) {
  const unsigned n = std::max(1u, n_threads);
  try {
    for (unsigned i = 1; i < n; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
  } catch (...) {
    Stop();  // the threads that did start (the system refused one more)
    throw;
  }
}

ThreadPool::~ThreadPool() { Stop(); }

void ThreadPool::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::WorkerLoop(unsigned index) {
  uint32_t seen = 0;
  uint64_t s = 0;
  // A region this worker has not seen, open for taking chunks (its generation is then in s).
  auto ready = [&] {
    s = state_.load(std::memory_order_acquire);
    return Generation(s) != seen && NextChunk(s) != kClosed;
  };
  for (;;) {
    // Spin for a while, then sleep until the next region.
    const auto until = std::chrono::steady_clock::now() + kSpin;
    int spins = 0;
    while (!ready() && !stop_.load(std::memory_order_relaxed)) {
      CODA_PAUSE();
      if (++spins % 256 == 0 && std::chrono::steady_clock::now() > until) {
        std::unique_lock<std::mutex> lock(mu_);
        sleeping_.fetch_add(1);
        wake_.wait(lock, [&] { return stop_.load() || ready(); });
        sleeping_.fetch_sub(1);
        break;
      }
    }
    if (stop_.load()) return;
    seen = Generation(s);  // the region it found open, not a later one it might skip
    TakeChunks(seen, index);
  }
}

void ThreadPool::TakeChunks(uint32_t generation, unsigned index) {
  uint64_t s = state_.load(std::memory_order_acquire);
  while (Generation(s) == generation) {
    const uint32_t c = NextChunk(s);
    if (c >= n_chunks_.load(std::memory_order_relaxed)) return;  // all taken (or closed)
    // Read before the claim: a successful claim proves they belong to this region (the caller
    // changes them only after closing it, which every claim on it then fails against).
    const Job* job = job_.load(std::memory_order_relaxed);
    const size_t n = n_.load(std::memory_order_relaxed), chunk = chunk_.load(std::memory_order_relaxed);
    if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    const size_t begin = c * chunk;
    (*job)(begin, std::min(n, begin + chunk), index);
    done_.fetch_add(1, std::memory_order_acq_rel);
    s = state_.load(std::memory_order_acquire);
  }
}

void ThreadPool::ParallelFor(size_t n, size_t grain, const Job& fn) {
  if (n == 0) return;
  grain = std::max<size_t>(1, grain);
  const size_t threads = size();
  const size_t grains = (n + grain - 1) / grain;
  if (workers_.empty() || grains < 2) {
    fn(0, n, 0);
    return;
  }
  const size_t per = threads * kChunksPerThread;
  const size_t chunk = (grains + per - 1) / per * grain;
  // Close the last region (every chunk of it is done), set this one up, open it.
  const uint32_t generation = Generation(state_.load(std::memory_order_relaxed)) + 1;
  state_.store(static_cast<uint64_t>(generation) << 32 | kClosed, std::memory_order_release);
  job_.store(&fn, std::memory_order_relaxed);
  n_.store(n, std::memory_order_relaxed);
  chunk_.store(chunk, std::memory_order_relaxed);
  n_chunks_.store((n + chunk - 1) / chunk, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mu_);  // pairs with the sleepers' wait
    state_.store(static_cast<uint64_t>(generation) << 32, std::memory_order_release);
  }
  if (sleeping_.load() > 0) wake_.notify_all();
  TakeChunks(generation, 0);
  // Wait for the chunks others are still running, yielding now and then in case one of them
  // waits for this core. Workers that never reached the region leave it on their own.
  const size_t n_chunks = n_chunks_.load(std::memory_order_relaxed);
  for (int spins = 1; done_.load(std::memory_order_acquire) != n_chunks; ++spins) {
    CODA_PAUSE();
    if (spins % 64 == 0) std::this_thread::yield();
  }
}

}  // namespace coda::cpu
