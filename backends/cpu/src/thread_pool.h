// A fixed pool of worker threads owned by one backend instance. ParallelFor splits [0, n) into
// contiguous chunks, one per thread, and runs them with the calling thread taking part.
// Decoding a token issues ~100 short parallel regions, so workers spin briefly on an atomic
// before sleeping: a futex wake-up per region would cost more than the region itself.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace coda::cpu {

class ThreadPool {
 public:
  // Throws std::system_error when the system refuses a thread (none is left running then).
  explicit ThreadPool(unsigned n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  unsigned size() const { return static_cast<unsigned>(workers_.size()) + 1; }

  // fn(begin, end, thread_index) over a partition of [0, n); chunks are multiples of `grain`
  // (but the last). Blocks until every chunk is done.
  void ParallelFor(size_t n, size_t grain, const std::function<void(size_t, size_t, unsigned)>& fn);

 private:
  void WorkerLoop(unsigned index);
  void Stop();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  const std::function<void(size_t, size_t, unsigned)>* job_ = nullptr;
  size_t n_ = 0, chunk_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<unsigned> pending_{0};
  std::atomic<unsigned> sleeping_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace coda::cpu
