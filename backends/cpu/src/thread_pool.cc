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
  uint64_t seen = 0;
  for (;;) {
    // Spin for a while, then sleep until the next job.
    const auto until = std::chrono::steady_clock::now() + kSpin;
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen && !stop_.load(std::memory_order_relaxed)) {
      CODA_PAUSE();
      if (++spins % 256 == 0 && std::chrono::steady_clock::now() > until) {
        std::unique_lock<std::mutex> lock(mu_);
        sleeping_.fetch_add(1);
        wake_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
        sleeping_.fetch_sub(1);
        break;
      }
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    const size_t begin = std::min(n_, chunk_ * index);
    const size_t end = std::min(n_, begin + chunk_);
    if (begin < end) (*job_)(begin, end, index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::ParallelFor(size_t n, size_t grain, const std::function<void(size_t, size_t, unsigned)>& fn) {
  if (n == 0) return;
  grain = std::max<size_t>(1, grain);
  const size_t threads = size();
  size_t chunk = (n + threads - 1) / threads;
  chunk = (chunk + grain - 1) / grain * grain;
  if (workers_.empty() || chunk >= n) {
    fn(0, n, 0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);  // pairs with the sleepers' wait
    job_ = &fn;
    n_ = n;
    chunk_ = chunk;
    pending_.store(static_cast<unsigned>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  if (sleeping_.load() > 0) wake_.notify_all();
  fn(0, std::min(n, chunk), 0);
  // Spin for the stragglers, yielding now and then in case a worker is waiting for this core.
  for (int spins = 1; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    CODA_PAUSE();
    if (spins % 64 == 0) std::this_thread::yield();
  }
}

}  // namespace coda::cpu
