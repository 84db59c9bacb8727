// A fixed pool of worker threads owned by one backend instance. ParallelFor splits [0, n) into
// a few contiguous chunks per thread, which the threads (the caller too) take in turn: a thread
// that is late, or descheduled because another process wants its core, leaves its chunks to the
// others instead of stalling the region. (With one fixed chunk per thread the caller waited a
// whole scheduler time slice for a preempted worker, and decode collapsed under load.)
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
  using Job = std::function<void(size_t, size_t, unsigned)>;
  // Throws std::system_error when the system refuses a thread (none is left running then).
  explicit ThreadPool(unsigned n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  unsigned size() const { return static_cast<unsigned>(workers_.size()) + 1; }

  // fn(begin, end, thread_index) over a partition of [0, n); chunks are multiples of `grain`
  // (but the last). A thread may run several chunks, one after another. Blocks until every
  // chunk is done. One caller at a time.
  void ParallelFor(size_t n, size_t grain, const Job& fn);

 private:
  void WorkerLoop(unsigned index);
  // Runs chunks of region `generation` until none is left, or the region is over.
  void TakeChunks(uint32_t generation, unsigned index);
  void Stop();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  // The region: its generation in the high 32 bits, the next chunk to take in the low 32
  // (kClosed while the caller sets the next region up). A thread claims a chunk with a
  // compare-exchange on both, so it never takes a chunk of a region other than the one whose
  // job it read.
  std::atomic<uint64_t> state_{0};
  std::atomic<const Job*> job_{nullptr};
  std::atomic<size_t> n_{0}, chunk_{0}, n_chunks_{0};
  std::atomic<size_t> done_{0};  // chunks of the region finished
  std::atomic<unsigned> sleeping_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace coda::cpu
