// The CUDA emulator's runtime: memory, streams and events on the host, and kernel launches with
// each block's threads as fibers (see cuda_runtime.h here for what it checks and what it cannot).
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>
#include <ucontext.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "coda_dtypes.h"
#include "cuda_runtime.h"

// Work recorded from a captured stream, in issue order.
using Recording = std::vector<std::function<void()>>;

// A stream's work waits in its queue until something needs it done: a synchronization of it or
// of an event on it, another stream's wait for such an event, cudaFree, its destruction. So work
// on two streams runs in the order their events impose and no other, and a missing wait shows as
// data read before it is written (see cuda_runtime.h).
struct CUstream_st {
  uint64_t id = 0;  // never reused, unlike the address
  bool capturing = false;
  bool invalidated = false;  // something CUDA refuses was tried during the capture
  Recording recorded;
  std::deque<std::function<void()>> queue;  // issued, not yet run
  uint64_t issued = 0, ran = 0;             // work items so far
};
struct CUevent_st {
  // The last record: the stream's id (0: none, or the legacy stream's, run at once) and its count
  // of issued items then; the event is reached once that stream has run as many.
  uint64_t stream = 0, mark = 0;
  std::shared_ptr<std::chrono::steady_clock::time_point> at = std::make_shared<std::chrono::steady_clock::time_point>();
};
struct CUgraph_st {
  Recording work;
};
struct CUgraphExec_st {
  std::shared_ptr<const Recording> work;  // shared with launches not yet run
};

namespace coda_cuda_emu {
namespace {

constexpr size_t kStack = 64 << 10;  // per thread; kernels keep small arrays at most
constexpr unsigned kWarp = 32;
constexpr unsigned kMaxThreads = 1024;

enum class State { kReady, kAtBarrier, kAtWarp, kDone };

#if defined(__x86_64__)
// A switch of stacks: the callee-saved registers go on the old stack, whose top is stored in
// *save; the new stack's top is restored from `to` (System V x86-64 ABI). No system call, where
// swapcontext makes one per switch.
extern "C" void coda_emu_switch(void** save, void* to);
asm(R"(
  .text
  .globl coda_emu_switch
  .hidden coda_emu_switch
  .type coda_emu_switch, @function
coda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size coda_emu_switch, .-coda_emu_switch
)");
#endif

struct Fiber {
  Place place;
  State state = State::kDone;
  uint64_t give = 0, take = 0;  // a warp exchange's value out and in
  int (*src)(int, int) = nullptr;
  int arg = 0;
  std::unique_ptr<char[]> stack;
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t context;
#endif
};

// The block being run. One launch runs at a time (Launch holds kLaunch), so this and the
// kernels' __shared__ statics belong to it.
struct Block {
  std::vector<Fiber> fibers;
  size_t current = 0, count = 0;
  const std::function<void()>* kernel = nullptr;
  std::string fault;
  cudaError_t error = cudaErrorLaunchFailure;  // what a fault makes of the launch
#if defined(__x86_64__)
  void* scheduler = nullptr;
#else
  ucontext_t scheduler;
#endif
};

std::mutex kLaunch;
Block* g_run = nullptr;  // the blocks' fibers, kept from launch to launch
Block* g_block = nullptr;
thread_local cudaError_t t_last = cudaSuccess;
thread_local std::string t_fault;

Fiber& Self() { return g_block->fibers[g_block->current]; }

void Yield(State s) {
  Fiber& f = Self();
  f.state = s;
#if defined(__x86_64__)
  coda_emu_switch(&f.sp, g_block->scheduler);
#else
  swapcontext(&f.context, &g_block->scheduler);
#endif
}

void Entry() {
  (*g_block->kernel)();
  Yield(State::kDone);  // never resumed
  std::abort();
}

// Prepares fiber f to enter Entry() on its own stack at its first resume.
void Begin(Fiber& f) {
  if (!f.stack) f.stack.reset(new char[kStack]);
#if defined(__x86_64__)
  // The stack as coda_emu_switch leaves it: six saved registers, then Entry as the return
  // address; Entry starts with rsp = 8 mod 16, as after a call.
  auto top = reinterpret_cast<uintptr_t>(f.stack.get() + kStack) & ~uintptr_t{15};
  auto* sp = reinterpret_cast<void**>(top - 16);
  sp[0] = reinterpret_cast<void*>(&Entry);
  sp -= 6;
  for (int i = 0; i < 6; ++i) sp[i] = nullptr;
  f.sp = sp;
#else
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = f.stack.get();
  f.context.uc_stack.ss_size = kStack;
  f.context.uc_link = nullptr;
  makecontext(&f.context, Entry, 0);
#endif
}

void Resume(Block& b, size_t i) {
  b.current = i;
#if defined(__x86_64__)
  coda_emu_switch(&b.scheduler, b.fibers[i].sp);
#else
  swapcontext(&b.scheduler, &b.fibers[i].context);
#endif
}

// Opens the barriers that every thread concerned has reached; false when none can open.
bool Release(Block& b) {
  bool opened = false;
  for (size_t w0 = 0; w0 < b.count; w0 += kWarp) {
    const size_t w1 = std::min(b.count, w0 + kWarp);
    size_t at_warp = 0, done = 0;
    for (size_t i = w0; i < w1; ++i) {
      at_warp += b.fibers[i].state == State::kAtWarp;
      done += b.fibers[i].state == State::kDone;
    }
    if (at_warp == 0) continue;
    if (at_warp != w1 - w0) {
      b.fault = done ? "a warp shuffle or __syncwarp with lanes of the warp that have returned (threads " +
                           std::to_string(w0) + " to " + std::to_string(w1 - 1) + ")"
                     : "a warp shuffle or __syncwarp that part of the warp reaches while the rest waits at "
                       "__syncthreads (threads " + std::to_string(w0) + " to " + std::to_string(w1 - 1) + ")";
      return false;
    }
    for (size_t i = w0; i < w1; ++i) {
      Fiber& f = b.fibers[i];
      if (f.src) {
        const int from = f.src(static_cast<int>(i - w0), f.arg);
        f.take = from >= 0 && static_cast<size_t>(from) < w1 - w0 ? b.fibers[w0 + static_cast<size_t>(from)].give : f.give;
      }
      f.state = State::kReady;
    }
    opened = true;
  }
  if (opened) return true;
  size_t at_barrier = 0;
  for (size_t i = 0; i < b.count; ++i) at_barrier += b.fibers[i].state == State::kAtBarrier;
  if (at_barrier == 0) return false;  // all returned
  // Returned threads count as arrived, as on sm_70 and later.
  for (size_t i = 0; i < b.count; ++i)
    if (b.fibers[i].state == State::kAtBarrier) b.fibers[i].state = State::kReady;
  return true;
}

// The __shared__ variables of this library or program (cuda_runtime.h), if it has any.
extern "C" char __start_coda_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_coda_emu_shared[] __attribute__((weak, visibility("hidden")));

bool RunBlock(Block& b, bool highest_first) {
  char *start = __start_coda_emu_shared, *stop = __stop_coda_emu_shared;
  if (start && stop > start) std::memset(start, 0xff, static_cast<size_t>(stop - start));
  for (size_t i = 0; i < b.count; ++i) {
    Begin(b.fibers[i]);
    b.fibers[i].state = State::kReady;
    b.fibers[i].src = nullptr;
  }
  for (;;) {
    // Highest thread first, or lowest: a thread that reads what a lower (or higher) one writes,
    // without the barrier between them, reads it before it is written.
    for (size_t n = 0; n < b.count; ++n) {
      const size_t i = highest_first ? b.count - 1 - n : n;
      if (b.fibers[i].state == State::kReady) Resume(b, i);
    }
    if (!Release(b)) return b.fault.empty();
  }
}

cudaError_t RunGrid(dim3 grid, dim3 block, const std::function<void()>& kernel) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  std::lock_guard<std::mutex> lock(kLaunch);
  if (!g_run) g_run = new Block;  // freed with the globals below (FreeGlobals)
  Block& b = *g_run;
  if (b.fibers.size() < threads) b.fibers.resize(threads);
  b.count = threads;
  b.kernel = &kernel;
  b.fault.clear();
  b.error = cudaErrorLaunchFailure;
  g_block = &b;
  // Neighbouring blocks run their threads in opposite orders, and each launch starts with the
  // other order than the last one (a grid of one block too).
  static uint64_t launches = 0;
  const uint64_t flip = launches++ % 2;
  bool ok = true;
  for (unsigned z = 0; ok && z < grid.z; ++z)
    for (unsigned y = 0; ok && y < grid.y; ++y)
      for (unsigned x = 0; ok && x < grid.x; ++x) {
        for (size_t i = 0; i < threads; ++i)
          b.fibers[i].place = {{static_cast<unsigned>(i % block.x), static_cast<unsigned>(i / block.x % block.y),
                                static_cast<unsigned>(i / (uint64_t{block.x} * block.y))},
                               {x, y, z}, block, grid};
        ok = RunBlock(b, (x + y + z + flip) % 2 == 0);
        if (!ok)
          b.fault = "block (" + std::to_string(x) + ", " + std::to_string(y) + ", " + std::to_string(z) + "): " + b.fault;
      }
  g_block = nullptr;
  if (!ok) {
    t_last = b.error;
    t_fault = b.fault;
    std::fprintf(stderr, "CUDA emulator: %s\n", b.fault.c_str());
    return b.error;
  }
  return cudaSuccess;
}

// ---- Streams and memory ----
// Never destroyed by C++: a backend may be freed by another library's static destructor, after
// ours would run. FreeGlobals frees them once nothing can call in any more.
// g_streams guards every stream's queue and capture, g_live and the sticky error; queued work
// runs under it (and takes kLaunch for a kernel: always in that order).
std::recursive_mutex& g_streams = *new std::recursive_mutex;
std::map<uint64_t, CUstream_st*>& g_live = *new std::map<uint64_t, CUstream_st*>;  // streams by id
uint64_t g_next_stream = 1;
// A fault of queued work, kept as CUDA keeps its sticky errors: every synchronization returns it.
cudaError_t g_sticky = cudaSuccess;
std::string& g_sticky_fault = *new std::string;
CUstream_st* g_legacy = nullptr;  // made on first use (Legacy)

// Device memory: blocks of whole pages, which the host cannot read or write (PROT_NONE) but
// while device work runs (DeviceAccess), so that host code that dereferences a device pointer
// faults here as it would with a GPU. A sanitizer build keeps the exact sizes instead (its own
// bounds checks see a kernel read past a block's end) and leaves the blocks open.
constexpr bool kProtect = !CODA_EMU_ASAN;
std::mutex& g_memory = *new std::mutex;  // g_device and g_open
std::map<uintptr_t, size_t>& g_device = *new std::map<uintptr_t, size_t>;  // cudaMalloc's blocks: start, size
int g_open = 0;                                                             // DeviceAccess scopes alive

// Runs when this library is unloaded (if it ever is), or at exit after every atexit handler
// (static destructors included): nothing calls the emulator after it. A sanitizer's leak check then finds nothing
// that an unloaded library left behind.
__attribute__((destructor)) void FreeGlobals() {
  delete &g_streams;
  delete &g_live;
  delete &g_sticky_fault;
  delete &g_memory;
  delete &g_device;
  delete g_run;
  delete g_legacy;
}

size_t Mapped(size_t size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (std::max<size_t>(size, 1) + page - 1) / page * page;
}

void SetAccess(bool open) {
  if (!kProtect) return;
  for (const auto& [start, size] : g_device)
    if (mprotect(reinterpret_cast<void*>(start), Mapped(size), open ? PROT_READ | PROT_WRITE : PROT_NONE) != 0) {
      std::fprintf(stderr, "CUDA emulator: mprotect of device memory failed: %s\n", std::strerror(errno));
      std::abort();
    }
}

// Runs s's queue until `upto` of its items have run. Work that fails throws its error.
void RunTo(CUstream_st* s, uint64_t upto) {
  if (s->ran >= upto || s->queue.empty()) return;
  DeviceAccess open;
  while (s->ran < upto && !s->queue.empty()) {
    std::function<void()> w = std::move(s->queue.front());
    s->queue.pop_front();
    ++s->ran;  // counted first: whatever w throws, the items after it stay in order
    try {
      w();
    } catch (cudaError_t e) {
      if (g_sticky == cudaSuccess) {
        g_sticky = e;
        g_sticky_fault = t_fault;
      }
    }
  }
}

// Runs the stream `id` (if it still exists) until `mark` of its items have run.
void RunStreamTo(uint64_t id, uint64_t mark) {
  if (auto it = g_live.find(id); it != g_live.end()) RunTo(it->second, mark);
}

void RunAll() {
  for (auto& [id, s] : g_live) RunTo(s, s->issued);
}

// The legacy stream (a null cudaStream_t): its work runs at the call, but for copies from host
// memory, which land before its next work or its synchronization (CUDA returns once a pageable
// source is staged, before the data is on the device; a non-blocking stream is not ordered after
// them).
CUstream_st& Legacy() {
  if (!g_legacy) {
    g_legacy = new CUstream_st;
    g_legacy->id = g_next_stream++;
    g_live[g_legacy->id] = g_legacy;
  }
  return *g_legacy;
}

bool Reached(const CUevent_st& e) {
  auto it = g_live.find(e.stream);
  return it == g_live.end() || it->second->ran >= e.mark;
}

// What a synchronization returns: the sticky error, once queued work has failed.
cudaError_t Sticky() {
  if (g_sticky == cudaSuccess) return cudaSuccess;
  t_fault = g_sticky_fault;
  return t_last = g_sticky;
}

// Whether [p, p + size] lies in one block from cudaMalloc (its end included: an empty range, or
// a pointer one past the last element, is a device address too).
bool InDevice(const void* p, size_t size) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(g_memory);
  auto it = g_device.upper_bound(a);
  if (it == g_device.begin()) return false;
  --it;
  return a - it->first <= it->second && size <= it->second - (a - it->first);
}

}  // namespace

const Place& Here() { return Self().place; }

bool Enqueue(cudaStream_t s, std::function<void()> work, bool lands_later) {
  std::lock_guard<std::recursive_mutex> lock(g_streams);
  if (g_sticky != cudaSuccess) {
    Sticky();
    return false;
  }
  if (s) {
    if (s->capturing) {
      s->recorded.push_back(std::move(work));
    } else {
      s->queue.push_back(std::move(work));
      ++s->issued;
    }
    return true;
  }
  CUstream_st& legacy = Legacy();
  if (lands_later) {
    legacy.queue.push_back(std::move(work));
    ++legacy.issued;
    return true;
  }
  RunTo(&legacy, legacy.issued);  // what the legacy stream was given before comes first
  DeviceAccess open;
  try {
    work();
  } catch (cudaError_t e) {
    t_last = e;
    return false;
  }
  return true;
}

bool Launch(dim3 grid, dim3 block, cudaStream_t s, std::function<void()> kernel) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    t_last = cudaErrorInvalidConfiguration;
    return false;
  }
  return Enqueue(s, [grid, block, k = std::move(kernel)] {
    if (const cudaError_t e = RunGrid(grid, block, k); e != cudaSuccess) throw e;
  });
}

DeviceAccess::DeviceAccess() {
  std::lock_guard<std::mutex> lock(g_memory);
  if (g_open++ == 0) SetAccess(true);
}

DeviceAccess::~DeviceAccess() {
  std::lock_guard<std::mutex> lock(g_memory);
  if (--g_open == 0) SetAccess(false);
}

bool OnDevice(const void* p) { return !p || InDevice(p, 0); }

bool RefuseHostArgument(int index, const void* p) {
  char text[160];
  std::snprintf(text, sizeof text, "argument %d of a kernel launch, %p, is not device memory (a GPU would fault on it)",
                index, p);
  t_fault = text;
  std::fprintf(stderr, "CUDA emulator: %s\n", text);
  t_last = cudaErrorIllegalAddress;
  return false;
}

void CheckAligned(const void* p, size_t bytes) {
  if (reinterpret_cast<uintptr_t>(p) % bytes == 0 || !g_block->fault.empty()) return;
  const Place& at = Here();
  char text[200];
  std::snprintf(text, sizeof text, "a %zu-byte access at %p, not %zu-byte aligned (thread %u; a GPU faults: misaligned address)",
                bytes, p, bytes, at.thread.x + at.block_dim.x * (at.thread.y + at.block_dim.y * at.thread.z));
  g_block->fault = text;
  g_block->error = cudaErrorMisalignedAddress;
}

void SyncThreads() { Yield(State::kAtBarrier); }

void SyncWarp() {
  Self().src = nullptr;
  Yield(State::kAtWarp);
}

uint64_t WarpExchange(uint64_t v, int (*src)(int, int), int arg) {
  Fiber& f = Self();
  f.give = v;
  f.src = src;
  f.arg = arg;
  Yield(State::kAtWarp);
  Fiber& g = Self();
  g.src = nullptr;
  return g.take;
}

namespace {

// D += A B for the calling warp, A 16 x kK and B kK x 8, from fragments of kK / 8 elements a word
// (a[4] and b[2] per lane, as the PTX ISA lays them out for mma m16n8k32 E4M3 and m16n8k16 BF16):
// A[r][k] is in lane (r % 8) * 4 + (k % (kK / 2)) / (kK / 8), register (r >= 8) + 2 (k >= kK / 2);
// B[k][c] in lane c * 4 + the same, register (k >= kK / 2); value(word, k) decodes k's element.
template <size_t kK, class Value>
void Mma(float* d, const uint32_t* a, const uint32_t* b, Value value) {
  // Fragments of each warp of the block, exchanged through a warp barrier.
  static uint32_t frags[kMaxThreads][6];
  Block& blk = *g_block;
  const size_t me = blk.current, lane = me % kWarp, w0 = me - lane;
  for (int i = 0; i < 4; ++i) frags[me][i] = a[i];
  frags[me][4] = b[0];
  frags[me][5] = b[1];
  SyncWarp();
  constexpr size_t kHalf = kK / 2, kPerWord = kK / 8;
  auto A = [&](size_t r, size_t k) {
    return value(frags[w0 + (r % 8) * 4 + (k % kHalf) / kPerWord][(r >= 8 ? 1 : 0) + (k >= kHalf ? 2 : 0)], k);
  };
  auto B = [&](size_t k, size_t c) { return value(frags[w0 + c * 4 + (k % kHalf) / kPerWord][4 + (k >= kHalf ? 1 : 0)], k); };
  const size_t g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const size_t r = g + (i >= 2 ? 8 : 0), c = 2 * t + (i & 1);
    float sum = 0;
    for (size_t k = 0; k < kK; ++k) sum += A(r, k) * B(k, c);
    d[i] += sum;
  }
  SyncWarp();  // no lane overwrites its fragments before every lane has read them
}

}  // namespace

void MmaE4m3(float* d, const uint32_t* a, const uint32_t* b) {
  Mma<32>(d, a, b, [](uint32_t word, size_t k) { return coda_e4m3_to_f32(static_cast<uint8_t>(word >> (8 * (k % 4)))); });
}

void MmaBf16(float* d, const uint32_t* a, const uint32_t* b) {
  Mma<16>(d, a, b, [](uint32_t word, size_t k) { return coda_bf16_to_f32(static_cast<uint16_t>(word >> (16 * (k % 2)))); });
}

}  // namespace coda_cuda_emu

using coda_cuda_emu::t_fault;
using coda_cuda_emu::t_last;

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t e) {
  if ((e == cudaErrorLaunchFailure || e == cudaErrorIllegalAddress || e == cudaErrorMisalignedAddress) && !t_fault.empty())
    return t_fault.c_str();
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorMisalignedAddress: return "misaligned address";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = t_last;
  t_last = cudaSuccess;
  return e;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  *prop = {};
  std::snprintf(prop->name, sizeof prop->name, "CUDA emulator on the CPU");
  struct sysinfo si{};
  sysinfo(&si);
  prop->totalGlobalMem = static_cast<size_t>(si.totalram) * si.mem_unit;
  // An H100's 9.0, or CODA_CUDA_EMU_SM (two digits, 80 to 99), so that tests can take the paths
  // of GPUs without FP8 tensor cores; anything else is refused rather than guessed at.
  prop->major = 9;
  prop->minor = 0;
  if (const char* sm = std::getenv("CODA_CUDA_EMU_SM")) {
    if (!(std::strlen(sm) == 2 && sm[0] >= '8' && sm[0] <= '9' && sm[1] >= '0' && sm[1] <= '9'))
      return cudaErrorInvalidValue;
    prop->major = sm[0] - '0';
    prop->minor = sm[1] - '0';
  }
  prop->multiProcessorCount = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  struct sysinfo si{};
  sysinfo(&si);
  *free_bytes = static_cast<size_t>(si.freeram) * si.mem_unit;
  *total = static_cast<size_t>(si.totalram) * si.mem_unit;
  return cudaSuccess;
}

namespace {

using coda_cuda_emu::Enqueue;
using coda_cuda_emu::g_device;
using coda_cuda_emu::g_live;
using coda_cuda_emu::g_memory;
using coda_cuda_emu::g_streams;
using coda_cuda_emu::InDevice;
using coda_cuda_emu::RunAll;
using coda_cuda_emu::RunStreamTo;
using coda_cuda_emu::RunTo;
using coda_cuda_emu::Sticky;
using StreamLock = std::lock_guard<std::recursive_mutex>;

int g_captures = 0;  // streams being captured in the process

// What CUDA refuses on a stream being captured: the capture is invalidated, as CUDA does.
cudaError_t Refuse(cudaStream_t s) {
  s->invalidated = true;
  return t_last = cudaErrorStreamCaptureUnsupported;
}

}  // namespace

cudaError_t cudaMalloc(void** p, size_t size) {
  std::lock_guard<std::mutex> lock(g_memory);
  if (coda_cuda_emu::kProtect) {
    const int access = coda_cuda_emu::g_open ? PROT_READ | PROT_WRITE : PROT_NONE;
    *p = mmap(nullptr, coda_cuda_emu::Mapped(size), access, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (*p == MAP_FAILED) *p = nullptr;
  } else if (posix_memalign(p, 256, std::max<size_t>(size, 1)) != 0) {
    *p = nullptr;
  }
  if (!*p) return cudaErrorMemoryAllocation;
  g_device[reinterpret_cast<uintptr_t>(*p)] = size;
  return cudaSuccess;
}

// cudaFree waits for the device (CUDA's does, and queued work may still use the block), which a
// capture in progress anywhere forbids.
cudaError_t cudaFree(void* p) {
  StreamLock streams(g_streams);
  if (g_captures) return t_last = cudaErrorStreamCaptureUnsupported;
  if (!p) return cudaSuccess;
  RunAll();
  std::lock_guard<std::mutex> lock(g_memory);
  auto it = g_device.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_device.end()) return t_last = cudaErrorInvalidValue;
  if (coda_cuda_emu::kProtect) {
    munmap(p, coda_cuda_emu::Mapped(it->second));
  } else {
    std::free(p);
  }
  g_device.erase(it);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t size, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, size, kind, nullptr);
}

// The kind must match the addresses (cudaMemcpyDefault: taken from them). A host source is read
// at the call, as CUDA stages pageable memory then; a host destination is written when the copy
// runs, so the caller must synchronize before reading it. A capture takes device-to-device copies
// only: a host address in a graph would be read or written at every replay, long after the call
// that named it.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t size, cudaMemcpyKind kind, cudaStream_t s) {
  const bool dst_device = InDevice(dst, size), src_device = InDevice(src, size);
  if (kind == cudaMemcpyDefault)
    kind = src_device ? (dst_device ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                      : (dst_device ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost);
  const bool want_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  const bool want_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  if (size && (src_device != want_src || dst_device != want_dst)) return t_last = cudaErrorInvalidValue;
  if (s) {
    StreamLock lock(g_streams);
    if (s->capturing && kind != cudaMemcpyDeviceToDevice) return Refuse(s);
  }
  if (!size) return cudaSuccess;
  bool queued;
  if (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyHostToHost) {
    auto bytes = std::make_shared<std::vector<uint8_t>>(static_cast<const uint8_t*>(src),
                                                         static_cast<const uint8_t*>(src) + size);
    queued = Enqueue(s, [dst, bytes] { std::memcpy(dst, bytes->data(), bytes->size()); }, kind == cudaMemcpyHostToDevice);
  } else {
    queued = Enqueue(s, [=] { std::memmove(dst, src, size); });
  }
  return queued ? cudaSuccess : t_last;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t size, cudaStream_t s) {
  if (size && !InDevice(dst, size)) return t_last = cudaErrorInvalidValue;
  return Enqueue(s, [=] { if (size) std::memset(dst, value, size); }) ? cudaSuccess : t_last;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = new (std::nothrow) CUstream_st;
  if (!*s) return cudaErrorMemoryAllocation;
  StreamLock lock(g_streams);
  (*s)->id = coda_cuda_emu::g_next_stream++;
  g_live[(*s)->id] = *s;
  return cudaSuccess;
}

// As on a GPU, work still queued completes first.
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s) return t_last = cudaErrorInvalidValue;
  StreamLock lock(g_streams);
  RunTo(s, s->issued);
  g_live.erase(s->id);
  delete s;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  StreamLock lock(g_streams);
  if (s && s->capturing) return Refuse(s);
  CUstream_st* run = s ? s : &coda_cuda_emu::Legacy();
  RunTo(run, run->issued);
  return Sticky();
}

// Events could join a capture on a GPU; this backend never needs that, so here they are refused.
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  StreamLock lock(g_streams);
  if (s && s->capturing) return Refuse(s);
  const uint64_t id = e->stream, mark = e->mark;
  return Enqueue(s, [id, mark] { RunStreamTo(id, mark); }) ? cudaSuccess : t_last;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, 0); }

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  StreamLock lock(g_streams);
  if (!coda_cuda_emu::Reached(*start) || !coda_cuda_emu::Reached(*end)) return t_last = cudaErrorNotReady;
  *ms = std::chrono::duration<float, std::milli>(*end->at - *start->at).count();
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  *e = new (std::nothrow) CUevent_st;
  return *e ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  StreamLock lock(g_streams);
  if (s && s->capturing) return Refuse(s);
  if (!Enqueue(s, [at = e->at] { *at = std::chrono::steady_clock::now(); })) return t_last;
  e->stream = s ? s->id : 0;
  e->mark = s ? s->issued : 0;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  StreamLock lock(g_streams);
  RunStreamTo(e->stream, e->mark);
  return Sticky();
}

cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  if (!s) return t_last = cudaErrorStreamCaptureUnsupported;  // the legacy stream cannot be captured
  StreamLock lock(g_streams);
  if (s->capturing) return t_last = cudaErrorIllegalState;
  s->capturing = true;
  ++g_captures;
  s->invalidated = false;
  s->recorded.clear();
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  if (!s) return t_last = cudaErrorIllegalState;
  StreamLock lock(g_streams);
  if (!s->capturing) return t_last = cudaErrorIllegalState;
  s->capturing = false;
  --g_captures;
  *graph = nullptr;
  if (s->invalidated) {
    s->recorded.clear();
    return t_last = cudaErrorStreamCaptureInvalidated;
  }
  *graph = new (std::nothrow) CUgraph_st{std::move(s->recorded)};
  s->recorded.clear();
  return *graph ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (!exec || !graph) return t_last = cudaErrorInvalidValue;
  *exec = new (std::nothrow) CUgraphExec_st{std::make_shared<const Recording>(graph->work)};
  return *exec ? cudaSuccess : cudaErrorMemoryAllocation;
}

// Queued as one piece of work; a fault stops the rest of the graph, as it would the GPU.
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  if (!exec) return t_last = cudaErrorInvalidValue;
  StreamLock lock(g_streams);
  if (s && s->capturing) return Refuse(s);
  return Enqueue(s, [work = exec->work] { for (const auto& w : *work) w(); }) ? cudaSuccess : t_last;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}
