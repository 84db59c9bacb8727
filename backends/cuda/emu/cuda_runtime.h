// The CUDA emulator: the part of the CUDA runtime and of CUDA C++ that the CUDA backend uses,
// implemented on the CPU, so that the backend's own sources (backend.cc and kernels.cu, not a
// copy) build with the C++ compiler into libcoda-backend-cuda-emu.so and run the conformance and
// golden tests on any machine. It checks the kernels' arithmetic, indexing, reductions and
// barriers, and the order of work between streams; it cannot check speed, real concurrency
// (threads run one at a time, highest first or lowest first, alternating between neighbouring
// blocks and between launches, so that a read before its writer's barrier sees stale data) or
// what only hardware has.
//
// How it runs a launch: each block's threads are fibers on the calling thread (one launch at a
// time in the process), run in turn until each reaches a barrier (__syncthreads, or a warp's
// shuffle) or ends; then the barrier opens. Shared memory starts each block as 0xff bytes (NaN),
// not as the last block left it (not in a sanitizer build: see __shared__). A kernel that would hang or diverge on a GPU (a shuffle with
// lanes that returned, a barrier some threads skip while others wait at another) fails instead,
// with a message; so does a launch with a pointer argument that is not device memory (pointers
// inside structs are not seen), and one with a 16-byte access off a 16-byte boundary. Device
// memory is host memory, closed to the host (mprotect) but while device work runs, so that host
// code reading a device pointer faults, as with a GPU (not in a sanitizer build, which checks
// exact bounds instead); copies check that their addresses are of the kind they say.
//
// Streams: work issued to a stream (kernels, copies, event records, graphs) waits in its queue
// until something needs it: a synchronization of the stream or of an event on it, a stream that
// waits for such an event and runs, a cudaFree or the stream's destruction. So two streams' work
// runs in the order their events impose and in no other: a kernel that reads what another stream
// copies, with no wait between them, reads it before it is written, and a host buffer filled by
// a copy is filled only once the caller has waited for it. A host source is read at the call (as
// CUDA stages pageable memory). Work on the legacy stream (a null stream) runs at once, but for
// copies from the host, which land before that stream's next work or synchronization: CUDA
// returns from them once the source is staged, and the other streams are not ordered after them.
// Every stream acts as non-blocking (cudaStreamNonBlocking, the only kind the backend makes): the
// legacy stream does not wait for them, nor they for it. A fault of queued work is kept and
// returned by every later call that queues or waits, as CUDA's sticky errors are. Device memory
// opens for every host thread while any one runs device work.
//
// Graphs: a stream being captured (cudaStreamBeginCapture) records its launches, device copies
// and memsets, with their arguments, into a graph that cudaGraphLaunch queues again; what CUDA
// refuses during a capture (a synchronization, a copy from or to the host, a cudaFree) is refused
// here too, and more strictly (pinned memory is not told apart, nor other threads), so that a
// backend that would fail on a GPU fails here.
//
// This header stands in for <cuda_runtime.h> only when backends/cuda/emu is first on the include
// path; nothing else includes it.
#pragma once

// Whether AddressSanitizer instruments this build (GCC defines __SANITIZE_ADDRESS__; Clang says so
// through __has_feature, and the macro too only from version 22).
#if defined(__SANITIZE_ADDRESS__)
#define CODA_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CODA_EMU_ASAN 1
#endif
#endif
#ifndef CODA_EMU_ASAN
#define CODA_EMU_ASAN 0
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

// ---- Runtime API ----

#define CUDART_VERSION 13000

typedef enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorInvalidDevice = 101,
  cudaErrorIllegalState = 401,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorMisalignedAddress = 716,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
} cudaError_t;

typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
typedef struct CUgraph_st* cudaGraph_t;
typedef struct CUgraphExec_st* cudaGraphExec_t;

enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};

#define cudaStreamNonBlocking 0x01
#define cudaEventDisableTiming 0x02

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor;
  int multiProcessorCount;
};

const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total);
cudaError_t cudaMalloc(void** p, size_t size);
cudaError_t cudaFree(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t size, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t size, cudaMemcpyKind kind, cudaStream_t s);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t size, cudaStream_t s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
// Host time between the runs of the two records (both reached, else cudaErrorNotReady).
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

// ---- CUDA C++ ----

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))
// One block runs at a time in the process, so a block's shared memory is a static: in a section
// of its own, which the emulator fills with 0xff bytes (NaN as F32, BF16 and E4M3) before each
// block, as a GPU's shared memory holds whatever was there before. Not in a sanitizer build: it
// leaves variables in a section of their own without the bounds checks that catch an index past
// a __shared__ array's end, which matter more there.
#if CODA_EMU_ASAN
#define CODA_EMU_POISONS_SHARED 0
#define __shared__ static
#else
#define CODA_EMU_POISONS_SHARED 1
#define __shared__ __attribute__((section("coda_emu_shared"))) static
#endif

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct uint3 {
  unsigned x, y, z;
};

namespace coda_cuda_emu {

struct Place {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};
// Where the running fiber is.
const Place& Here();
// Runs `work` on stream s in its turn, or records it when s is being captured. On the legacy
// stream (a null s) it runs at once, unless `lands_later` (a copy from host memory): then before
// that stream's next work or synchronization. Work that fails throws its cudaError_t; false (and
// cudaGetLastError() says why) when it ran at once and failed, or an earlier fault is sticky.
bool Enqueue(cudaStream_t s, std::function<void()> work, bool lands_later = false);
// Runs `kernel` (which holds copies of its arguments) on a grid of blocks, on stream s as Enqueue
// does; false (and cudaGetLastError() says why) for a bad shape, or a fault when it ran at once.
bool Launch(dim3 grid, dim3 block, cudaStream_t s, std::function<void()> kernel);
// While one lives, the host may read and write device memory, as the emulator's own work does
// (a test that looks into device memory directly opens one; the backend never does).
struct DeviceAccess {
  DeviceAccess();
  ~DeviceAccess();
  DeviceAccess(const DeviceAccess&) = delete;
  DeviceAccess& operator=(const DeviceAccess&) = delete;
};
// Whether p is null or in (or one past the end of) memory from cudaMalloc.
bool OnDevice(const void* p);
// Fails a launch whose argument `index` is p, not device memory: false, cudaErrorIllegalAddress.
bool RefuseHostArgument(int index, const void* p);
// Whether every pointer among a kernel's arguments may be dereferenced on the device.
template <class... A>
bool DeviceArguments(const A&... a) {
  int i = 0;
  bool ok = true;
  auto one = [&](const auto& v) {
    if constexpr (std::is_pointer_v<std::decay_t<decltype(v)>>)
      if (ok && !OnDevice(v)) ok = RefuseHostArgument(i, v);
    ++i;
  };
  (one(a), ...);
  return ok;
}
// A load or store of `bytes` at p, which a GPU does only at a multiple of `bytes`: elsewhere it
// faults (cudaErrorMisalignedAddress), and here the launch fails, saying where.
void CheckAligned(const void* p, size_t bytes);
void SyncThreads();
void SyncWarp();
// Every lane of the calling warp gives `v` and gets lane `src(lane)`'s.
uint64_t WarpExchange(uint64_t v, int (*src)(int lane, int arg), int arg);

template <class T>
T Shuffle(T v, int (*src)(int, int), int arg) {
  static_assert(sizeof(T) <= 8);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = WarpExchange(bits, src, arg);
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}
// PTX mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 for the calling warp: D += A B with
// A 16x32 and B 32x8 in E4M3, spread over the lanes as the PTX ISA lays out 8-bit fragments
// (g = lane / 4, t = lane % 4): a[0] = A[g][4t..4t+3], a[1] = A[g+8][4t..], a[2] = A[g][16+4t..],
// a[3] = A[g+8][16+4t..]; b[0] = B[4t..4t+3][g], b[1] = B[16+4t..][g]; d = D[g][2t], D[g][2t+1],
// D[g+8][2t], D[g+8][2t+1]; the lowest byte of a word holds the lowest k. Sums in F32.
void MmaE4m3(float* d, const uint32_t* a, const uint32_t* b);
// PTX mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: the same with A 16x16 and B 16x8 in
// BF16, two values a word (the low half holds the lower k): a[0] = A[g][2t..2t+1], a[1] =
// A[g+8][2t..], a[2] = A[g][8+2t..], a[3] = A[g+8][8+2t..]; b[0] = B[2t..2t+1][g], b[1] =
// B[8+2t..][g]; d as above.
void MmaBf16(float* d, const uint32_t* a, const uint32_t* b);

inline int XorLane(int lane, int m) { return lane ^ m; }
inline int FromLane(int, int src) { return src; }
inline int DownLane(int lane, int d) { return lane + d < 32 ? lane + d : lane; }

}  // namespace coda_cuda_emu

#define threadIdx (::coda_cuda_emu::Here().thread)
#define blockIdx (::coda_cuda_emu::Here().block)
#define blockDim (::coda_cuda_emu::Here().block_dim)
#define gridDim (::coda_cuda_emu::Here().grid_dim)

inline void __syncthreads() { coda_cuda_emu::SyncThreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { coda_cuda_emu::SyncWarp(); }
// Only full-warp masks: a kernel that needs a partial one is not one this backend has.
template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int = 32) {
  return coda_cuda_emu::Shuffle(v, coda_cuda_emu::XorLane, lane_mask);
}
template <class T>
T __shfl_sync(unsigned, T v, int src_lane, int = 32) {
  return coda_cuda_emu::Shuffle(v, coda_cuda_emu::FromLane, src_lane);
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int = 32) {
  return coda_cuda_emu::Shuffle(v, coda_cuda_emu::DownLane, static_cast<int>(delta));
}
// Threads run one at a time: read-modify-write is atomic as it stands.
template <class T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  const T old = *p;
  if (v > old) *p = v;
  return old;
}
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline float __expf(float v) { return std::exp(v); }
inline float __fdividef(float a, float b) { return a / b; }
