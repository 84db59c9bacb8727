// The CUDA emulator (backends/cuda/emu) that runs the CUDA backend's kernels in the tests of
// machines without a GPU: its barriers and shuffles give CUDA's results, and the bugs it exists
// to catch (a missing barrier, a shuffle some lanes skip, shared memory read before it is written,
// a misaligned access, work on two streams without the event between them, a host read of device
// memory) do show.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "coda_dtypes.h"
#include "numbers.h"
#include "test_util.h"

namespace {

using coda_cuda_emu::Launch;

// Each block sums its threads' values (x + 1 + 10 * block) through shared memory and shuffles.
void BlockSum(const float* in, float* out) {
  __shared__ float part[32];
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  float v = in[b * blockDim.x + threadIdx.x];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0;
    for (unsigned i = 0; i < blockDim.x / 32; ++i) s += part[i];
    out[b] = s;
  }
}

TEST(CudaEmulator, BarriersAndShufflesGiveCudasResults) {
  const dim3 grid(3, 2, 2), block(96);
  const unsigned blocks = 12;
  std::vector<float> in(blocks * block.x), out(blocks, -1);
  for (unsigned b = 0; b < blocks; ++b)
    for (unsigned t = 0; t < block.x; ++t) in[b * block.x + t] = static_cast<float>(t + 1 + 10 * b);
  ASSERT_TRUE(Launch(grid, block, nullptr, [&] { BlockSum(in.data(), out.data()); }));
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  for (unsigned b = 0; b < blocks; ++b) EXPECT_EQ(out[b], 96 * 97 / 2 + 960.0f * b) << b;
}

// Thread t reads what thread t + from wrote to shared memory, with or without the barrier between.
void ReadNeighbour(bool barrier, int from, int* out) {
  __shared__ int v[64];
  v[threadIdx.x] = static_cast<int>(threadIdx.x) + 1000 * static_cast<int>(blockIdx.x);
  if (barrier) __syncthreads();
  const int t = static_cast<int>(threadIdx.x) + from;
  out[blockIdx.x * blockDim.x + threadIdx.x] = t >= 0 && t < 64 ? v[t] : -2;
}

TEST(CudaEmulator, AMissingBarrierReadsStaleData) {
  std::vector<int> out(192);
  for (int from : {-1, 1}) {
    ASSERT_TRUE(Launch(dim3(3), dim3(64), nullptr, [&] { ReadNeighbour(true, from, out.data()); }));
    for (int b = 0; b < 3; ++b)
      for (int t = 0; t < 64; ++t)
        if (t + from >= 0 && t + from < 64) {
          ASSERT_EQ(out[static_cast<size_t>(b * 64 + t)], t + from + 1000 * b);
        }
  }
  // Without it, a block whose threads run in the reader-first order sees what shared memory held
  // before the block: garbage, here 0xff bytes, not the previous block's values. Neighbouring
  // blocks run in opposite orders, so a missing barrier shows whichever neighbour is read: of
  // three blocks, one or two read garbage, and one of those follows another block.
  if (!CODA_EMU_POISONS_SHARED) GTEST_SKIP() << "a sanitizer build does not fill shared memory with 0xff bytes";
  for (int from : {-1, 1}) {
    ASSERT_TRUE(Launch(dim3(3), dim3(64), nullptr, [&] { ReadNeighbour(false, from, out.data()); }));
    bool stale[3] = {};
    for (int b = 0; b < 3; ++b) {
      size_t garbage = 0, right = 0;
      for (int t = 0; t < 64; ++t) {
        const int got = out[static_cast<size_t>(b * 64 + t)];
        garbage += got == -1;
        right += got == t + from + 1000 * b;
      }
      EXPECT_EQ(garbage + right, 63u) << from << " " << b;
      EXPECT_TRUE(garbage == 0 || garbage == 63) << from << " " << b;
      stale[b] = garbage == 63;
    }
    EXPECT_TRUE(stale[0] != stale[1] && stale[1] != stale[2]) << from;
    EXPECT_TRUE(stale[1] || stale[2]) << from;
  }
}

// Shared memory starts each block as garbage, NaN as F32, BF16 and E4M3, as on a GPU where it
// holds what an earlier block left: a kernel that multiplies values it never wrote (by zero, say,
// in a tile's padding) gets NaN here, where stale finite values would hide the bug.
void ReadUnwritten(float* out) {
  __shared__ float v[32];
  __shared__ uint16_t h[32];
  __shared__ uint8_t c[32];
  out[0] = v[threadIdx.x] * 0.0f;
  out[1] = coda_bf16_to_f32(h[threadIdx.x]);
  out[2] = coda_e4m3_to_f32(c[threadIdx.x]);
  v[threadIdx.x] = 1.0f;
}

TEST(CudaEmulator, SharedMemoryStartsEachBlockAsNan) {
  if (!CODA_EMU_POISONS_SHARED) GTEST_SKIP() << "a sanitizer build does not fill shared memory with 0xff bytes";
  for (int launch = 0; launch < 2; ++launch) {
    float out[3] = {};
    ASSERT_TRUE(Launch(dim3(1), dim3(1), nullptr, [&] { ReadUnwritten(out); }));
    for (float v : out) EXPECT_TRUE(std::isnan(v)) << launch;
  }
}

void ShuffleAfterReturn(float* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

void DivergentBarriers(float* out) {
  if (threadIdx.x < 8) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  } else {
    __syncthreads();
  }
}

TEST(CudaEmulator, KernelsThatWouldHangOrDivergeFailTheLaunch) {
  std::vector<float> out(64);
  EXPECT_FALSE(Launch(dim3(1), dim3(64), nullptr, [&] { ShuffleAfterReturn(out.data()); }));
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_NE(std::string(cudaGetErrorString(cudaErrorLaunchFailure)).find("lanes of the warp that have returned"),
            std::string::npos);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // read once, as CUDA's
  EXPECT_FALSE(Launch(dim3(1), dim3(32), nullptr, [&] { DivergentBarriers(out.data()); }));
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_NE(std::string(cudaGetErrorString(cudaErrorLaunchFailure)).find("waits at __syncthreads"), std::string::npos);
  // A 16-byte access off a 16-byte boundary (a GPU faults on it); on one, nothing.
  alignas(16) uint8_t bytes[32 * 16 + 16];
  EXPECT_TRUE(Launch(dim3(1), dim3(32), nullptr, [&] { coda_cuda_emu::CheckAligned(bytes + 16 * threadIdx.x, 16); }));
  EXPECT_FALSE(Launch(dim3(1), dim3(32), nullptr,
                      [&] { coda_cuda_emu::CheckAligned(bytes + 16 * threadIdx.x + (threadIdx.x == 7 ? 4 : 0), 16); }));
  EXPECT_EQ(cudaGetLastError(), cudaErrorMisalignedAddress);
  EXPECT_NE(std::string(cudaGetErrorString(cudaErrorMisalignedAddress)).find("not 16-byte aligned (thread 7"), std::string::npos);
  // The emulator is usable after a failed launch.
  std::vector<int> ok(64);
  EXPECT_TRUE(Launch(dim3(1), dim3(64), nullptr, [&] { ReadNeighbour(true, -1, ok.data()); }));
  EXPECT_EQ(ok[5], 4);
}

TEST(CudaEmulator, RefusesShapesCudaRefuses) {
  EXPECT_FALSE(Launch(dim3(1), dim3(2048), nullptr, [] {}));
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_FALSE(Launch(dim3(0), dim3(32), nullptr, [] {}));
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_FALSE(Launch(dim3(1, 70000), dim3(32), nullptr, [] {}));
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
}

// The emulated mma against the PTX ISA's fragment tables ("Matrix Fragments for mma.m16n8k16 with
// floating point type", and m16n8k32 for .e4m3), written out here on their own: lane l holds, with
// g = l / 4 and t = l % 4, for BF16 a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1], a2 = A[g][2t+8,
// 2t+9], a3 = A[g+8][2t+8, 2t+9], b0 = B[2t, 2t+1][g], b1 = B[2t+8, 2t+9][g]; for E4M3 the same with
// four values a word (a0 = A[g][4t..4t+3], a2 = A[g][4t+16..], b0 = B[4t..4t+3][g], ...); the
// lowest bits hold the first; and d = D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]. (An order
// within words that A and B share leaves every product as it is; lanes and registers do not.)
TEST(CudaEmulator, MmaFragmentsAreLaidOutAsThePtxIsaSays) {
  for (const int per : {2, 4}) {  // values a word: BF16, E4M3
    const int K = 8 * per;
    std::vector<float> A(16 * K), B(K * 8), want(16 * 8, 0.0f), got(16 * 8, -1.0f);
    std::vector<uint32_t> code_a(16 * K), code_b(K * 8);
    for (int i = 0; i < 16 * K; ++i) {  // distinct small values, exact in both formats
      const float v = static_cast<float>((i * 7) % 13 - 6) * 0.25f;
      code_a[i] = per == 2 ? coda_f32_to_bf16(v) : coda::cuda::ToE4m3(v);
      A[i] = per == 2 ? coda_bf16_to_f32(static_cast<uint16_t>(code_a[i])) : coda_e4m3_to_f32(static_cast<uint8_t>(code_a[i]));
    }
    for (int i = 0; i < K * 8; ++i) {
      const float v = static_cast<float>((i * 5) % 11 - 5) * 0.5f;
      code_b[i] = per == 2 ? coda_f32_to_bf16(v) : coda::cuda::ToE4m3(v);
      B[i] = per == 2 ? coda_bf16_to_f32(static_cast<uint16_t>(code_b[i])) : coda_e4m3_to_f32(static_cast<uint8_t>(code_b[i]));
    }
    for (int r = 0; r < 16; ++r)
      for (int c = 0; c < 8; ++c)
        for (int k = 0; k < K; ++k) want[r * 8 + c] += A[r * K + k] * B[k * 8 + c];
    auto word = [&](auto value, int first) {  // `per` values from `first` on, the first lowest
      uint32_t w = 0;
      for (int i = 0; i < per; ++i) w |= value(first + i) << (32 / per * i);
      return w;
    };
    ASSERT_TRUE(Launch(dim3(1), dim3(32), nullptr, [&] {
      const int l = static_cast<int>(threadIdx.x), g = l / 4, t = l % 4, half = K / 2;
      auto a_at = [&](int r) { return [&, r](int k) { return code_a[r * K + k]; }; };
      auto b_at = [&](int c) { return [&, c](int k) { return code_b[k * 8 + c]; }; };
      const uint32_t a[4] = {word(a_at(g), per * t), word(a_at(g + 8), per * t), word(a_at(g), per * t + half),
                             word(a_at(g + 8), per * t + half)};
      const uint32_t b[2] = {word(b_at(g), per * t), word(b_at(g), per * t + half)};
      float d[4] = {};
      if (per == 2) coda_cuda_emu::MmaBf16(d, a, b);
      else coda_cuda_emu::MmaE4m3(d, a, b);
      got[g * 8 + 2 * t] = d[0];
      got[g * 8 + 2 * t + 1] = d[1];
      got[(g + 8) * 8 + 2 * t] = d[2];
      got[(g + 8) * 8 + 2 * t + 1] = d[3];
    }));
    EXPECT_EQ(got, want) << (per == 2 ? "BF16" : "E4M3");
  }
}

// A captured stream records its work with the arguments of the moment, and a graph replays it
// (reading memory as it is then); what CUDA refuses during a capture (a synchronization, a copy
// to or from the host) fails and invalidates the capture, as on a GPU.
TEST(CudaEmulator, CapturedWorkReplaysAndSynchronizationsAreRefused) {
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 8), cudaSuccess);
  coda_cuda_emu::DeviceAccess look;  // the test reads device memory directly
  auto* d = static_cast<int*>(dev);
  d[0] = 1;
  d[1] = 0;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  int add = 10;
  ASSERT_TRUE(Launch(dim3(1), dim3(1), s, [d, add] { d[1] += d[0] + add; }));
  add = 1000;  // the launch took its own copy
  ASSERT_EQ(cudaMemcpyAsync(d, d + 1, 4, cudaMemcpyDeviceToDevice, s), cudaSuccess);
  EXPECT_EQ(d[1], 0) << "captured work ran during the capture";
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  EXPECT_EQ(d[1], 0) << "a launched graph is queued on its stream";
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(d[1], 11);
  EXPECT_EQ(d[0], 11);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(d[1], 32);  // 11 + 11 + 10
  EXPECT_EQ(d[0], 32);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);

  int host = 0;
  for (int refused = 0; refused < 3; ++refused) {
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
    const cudaError_t e = refused == 0   ? cudaStreamSynchronize(s)
                          : refused == 1 ? cudaMemcpyAsync(&host, d, 4, cudaMemcpyDeviceToHost, s)
                                         : cudaMemcpyAsync(d, &host, 4, cudaMemcpyHostToDevice, s);
    EXPECT_EQ(e, cudaErrorStreamCaptureUnsupported) << refused;
    EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureUnsupported);
    graph = nullptr;
    EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated) << refused;
    EXPECT_EQ(graph, nullptr);
    (void)cudaGetLastError();
  }
  // cudaFree may synchronize the device: refused while a capture is open, allowed after.
  void* spare = nullptr;
  ASSERT_EQ(cudaMalloc(&spare, 4), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaFree(spare), cudaErrorStreamCaptureUnsupported);
  (void)cudaGetLastError();
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  cudaGraphDestroy(graph);
  EXPECT_EQ(cudaFree(spare), cudaSuccess);
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorIllegalState);  // no capture is open
  (void)cudaGetLastError();
  EXPECT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  cudaFree(dev);
  cudaStreamDestroy(s);
}

// Work on a stream waits until something needs it, so two streams' work runs only in the order
// their events impose: the bug this exists to catch, a kernel reading what another stream copies
// without waiting for it, reads stale data here as it may on a GPU.
TEST(CudaEmulator, StreamsRunInTheOrderTheirEventsImpose) {
  cudaStream_t transfer = nullptr, compute = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&transfer, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking), cudaSuccess);
  cudaEvent_t copied = nullptr, later = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&copied, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&later), cudaSuccess);
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 8), cudaSuccess);
  coda_cuda_emu::DeviceAccess look;  // the test reads device memory directly
  auto* d = static_cast<int*>(dev);
  d[0] = d[1] = 0;
  auto read = [d] { d[1] = d[0] + 1; };  // the kernel: reads what the transfer stream wrote

  // No wait: the compute stream's kernel runs when its stream is synchronized, before the copy.
  int host = 5;
  ASSERT_EQ(cudaMemcpyAsync(d, &host, 4, cudaMemcpyHostToDevice, transfer), cudaSuccess);
  host = 6;  // a host source is read at the call
  ASSERT_TRUE(Launch(dim3(1), dim3(1), compute, read));
  EXPECT_EQ(d[0], 0) << "queued work ran at once";
  ASSERT_EQ(cudaStreamSynchronize(compute), cudaSuccess);
  EXPECT_EQ(d[1], 1) << "the kernel waited for a copy it had no event for";
  ASSERT_EQ(cudaStreamSynchronize(transfer), cudaSuccess);
  EXPECT_EQ(d[0], 5);

  // With the event: synchronizing the compute stream alone runs the copy first.
  ASSERT_EQ(cudaMemcpyAsync(d, &host, 4, cudaMemcpyHostToDevice, transfer), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(copied, transfer), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(compute, copied, 0), cudaSuccess);
  host = 9;
  ASSERT_EQ(cudaMemcpyAsync(d, &host, 4, cudaMemcpyHostToDevice, transfer), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(copied, transfer), cudaSuccess);  // the wait keeps the earlier record
  ASSERT_TRUE(Launch(dim3(1), dim3(1), compute, read));
  ASSERT_EQ(cudaStreamSynchronize(compute), cudaSuccess);
  EXPECT_EQ(d[1], 7) << "the wait did not order the kernel after the copy it names";
  EXPECT_EQ(d[0], 6) << "the wait ran more of the other stream than its event";

  // A copy from the host on the legacy stream lands before that stream's next work or its
  // synchronization, not before another stream's kernel (CUDA returns once a pageable source is
  // staged).
  d[0] = 0;
  host = 4;
  ASSERT_EQ(cudaMemcpy(d, &host, 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_TRUE(Launch(dim3(1), dim3(1), compute, read));
  ASSERT_EQ(cudaStreamSynchronize(compute), cudaSuccess);
  EXPECT_EQ(d[1], 1) << "a kernel on another stream saw a legacy-stream copy it did not wait for";
  ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  EXPECT_EQ(d[0], 4);
  host = 9;
  ASSERT_EQ(cudaMemcpy(d, &host, 4, cudaMemcpyHostToDevice), cudaSuccess);
  int back = 0;
  ASSERT_EQ(cudaMemcpy(&back, d, 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, 9) << "the legacy stream's own work came before the copy it was given earlier";

  // A host destination is written when the copy runs; the events say when that is.
  int got = 0;
  ASSERT_EQ(cudaEventRecord(later, transfer), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(&got, d, 4, cudaMemcpyDeviceToHost, transfer), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(copied, transfer), cudaSuccess);
  EXPECT_EQ(got, 0);
  float ms = 0;
  EXPECT_EQ(cudaEventElapsedTime(&ms, later, copied), cudaErrorNotReady);
  (void)cudaGetLastError();
  ASSERT_EQ(cudaEventSynchronize(copied), cudaSuccess);
  EXPECT_EQ(got, 9);
  EXPECT_EQ(cudaEventElapsedTime(&ms, later, copied), cudaSuccess);

  // Addresses of the wrong kind: refused, as a GPU would fault on them.
  EXPECT_EQ(cudaMemcpyAsync(&got, &host, 4, cudaMemcpyHostToDevice, transfer), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpyAsync(&got, &host, 4, cudaMemcpyDeviceToHost, transfer), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpyAsync(d, d + 1, 8, cudaMemcpyDeviceToDevice, transfer), cudaErrorInvalidValue);  // past the end
  EXPECT_EQ(cudaMemsetAsync(&got, 0, 4, transfer), cudaErrorInvalidValue);
  (void)cudaGetLastError();
  EXPECT_TRUE(coda_cuda_emu::DeviceArguments(d, d + 2, static_cast<const float*>(nullptr), 3));
  EXPECT_FALSE(coda_cuda_emu::DeviceArguments(d, 3, &got));
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
  EXPECT_NE(std::string(cudaGetErrorString(cudaErrorIllegalAddress)).find("argument 2 of a kernel launch"), std::string::npos);

  // Destroying a stream, and freeing memory, first finish what is queued.
  ASSERT_EQ(cudaMemsetAsync(d, 0, 4, transfer), cudaSuccess);
  ASSERT_EQ(cudaStreamDestroy(transfer), cudaSuccess);
  EXPECT_EQ(d[0], 0);
  ASSERT_TRUE(Launch(dim3(1), dim3(1), compute, read));
  EXPECT_EQ(cudaFree(dev), cudaSuccess);  // ran the kernel first (ASan would see it otherwise)
  EXPECT_EQ(cudaFree(dev), cudaErrorInvalidValue);
  (void)cudaGetLastError();
  cudaEventDestroy(copied);
  cudaEventDestroy(later);
  cudaStreamDestroy(compute);
}

// Device memory is closed to the host but while device work runs: host code that reads a device
// pointer faults, as it would with a GPU.
TEST(CudaEmulator, HostReadsOfDeviceMemoryFault) {
#if CODA_EMU_ASAN
  GTEST_SKIP() << "a sanitizer build leaves device memory open to check its exact bounds instead";
#else
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 64), cudaSuccess);
  int host[16] = {7};
  ASSERT_EQ(cudaMemcpy(dev, host, sizeof host, cudaMemcpyHostToDevice), cudaSuccess);  // the emulator's own access
  int back[16] = {};
  ASSERT_EQ(cudaMemcpy(back, dev, sizeof back, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back[0], 7);
  {
    coda_cuda_emu::DeviceAccess look;
    EXPECT_EQ(static_cast<volatile int*>(dev)[0], 7);
  }
  EXPECT_DEATH(std::printf("%d\n", static_cast<volatile int*>(dev)[0]), "");
  EXPECT_EQ(cudaFree(dev), cudaSuccess);
#endif
}

// A fault of queued work comes out of every synchronization and launch after it, as CUDA's sticky
// errors do (in a child process: nothing after it could run).
TEST(CudaEmulator, AFaultOfQueuedWorkIsSticky) {
  EXPECT_EXIT(
      {
        cudaStream_t s = nullptr;
        std::vector<float> out(64);
        bool ok = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess &&
                  Launch(dim3(1), dim3(64), s, [&] { ShuffleAfterReturn(out.data()); }) && cudaGetLastError() == cudaSuccess;
        ok = ok && cudaStreamSynchronize(s) == cudaErrorLaunchFailure &&
             std::string(cudaGetErrorString(cudaErrorLaunchFailure)).find("returned") != std::string::npos;
        ok = ok && cudaStreamSynchronize(s) == cudaErrorLaunchFailure;
        ok = ok && !Launch(dim3(1), dim3(1), s, [] {}) && cudaGetLastError() == cudaErrorLaunchFailure;
        std::exit(ok ? 0 : 1);
      },
      testing::ExitedWithCode(0), "");
}

// coda-cuda-bench (tools/gpu-check runs it on a GPU) in the emulator, with the stand-in for
// cuBLASLt: its products (exact, FP8 and BF16 on the emulated tensor cores, and the stand-in's)
// and its MLA decode check out against the host's sums, the activation scales come out the same
// in both layouts, and it prints its tables.
TEST(CudaBench, RunsAndChecksInTheEmulator) {
  const std::string dir = CODA_TEST_PLUGIN_DIR;
  const auto r = coda::test::RunCommand("CODA_CUDA_EMU_CUBLASLT=" + dir + "/libcublasLt-emu.so " + dir +
                                        "/coda-cuda-bench-emu --smoke");
  const std::string& out = r.out;
  EXPECT_EQ(r.exit_code, 0) << out;
  EXPECT_NE(out.find("cuBLASLt block-scaled FP8: cuBLASLt 130000 block-scaled FP8 from 64 tokens\n"), std::string::npos)
      << out;
  EXPECT_NE(out.find("| tiny | 128x512 | 20 |"), std::string::npos) << out;
  EXPECT_NE(out.find("against host: exact"), std::string::npos) << out;
  EXPECT_NE(out.find(", FP8 "), std::string::npos) << out;
  EXPECT_NE(out.find("scale layouts agree, BF16 TC "), std::string::npos) << out;
  EXPECT_NE(out.find(", cuBLASLt FP8 vs FP8 "), std::string::npos) << out;
  EXPECT_NE(out.find("| matches the host | tensor cores | 18 | 300 |"), std::string::npos) << out;
  EXPECT_NE(out.find("| matches the host | CUDA cores, F32 | 18 | 300 |"), std::string::npos) << out;
  EXPECT_NE(out.find("all checks passed"), std::string::npos) << out;
  EXPECT_EQ(out.find("FAIL"), std::string::npos) << out;
}

// The kernels' F32 to E4M3 (activations for the FP8 products): every code back to itself, a
// value between two codes to the nearer (ties to the even code), and saturation at 448.
TEST(CudaNumbers, E4m3RoundsToNearestEvenAndSaturates) {
  using coda::cuda::ToE4m3;
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;  // NaN
    ASSERT_EQ(ToE4m3(coda_e4m3_to_f32(static_cast<uint8_t>(c))), c) << c;
    EXPECT_EQ(coda::cuda::E4m3(static_cast<uint8_t>(c)), coda_e4m3_to_f32(static_cast<uint8_t>(c))) << c;
  }
  for (int c = 0; c < 0x7e; ++c) {
    const float lo = coda_e4m3_to_f32(static_cast<uint8_t>(c)), hi = coda_e4m3_to_f32(static_cast<uint8_t>(c + 1));
    const float mid = (lo + hi) / 2;  // exact: a few bits more than E4M3's
    ASSERT_EQ(ToE4m3(mid), c % 2 == 0 ? c : c + 1) << c;
    EXPECT_EQ(ToE4m3(std::nextafter(mid, lo)), c) << c;
    EXPECT_EQ(ToE4m3(std::nextafter(mid, hi)), c + 1) << c;
    EXPECT_EQ(ToE4m3(-std::nextafter(mid, hi)), 0x80 | (c + 1)) << c;
  }
  // The NaN codes, signed as coda_dtypes.h signs them.
  EXPECT_TRUE(std::isnan(coda::cuda::E4m3(0x7f)) && !std::signbit(coda::cuda::E4m3(0x7f)));
  EXPECT_TRUE(std::isnan(coda::cuda::E4m3(0xff)) && std::signbit(coda::cuda::E4m3(0xff)));
  EXPECT_EQ(ToE4m3(464.0f), 0x7e);  // halfway to what would be 480: saturates, never NaN
  EXPECT_EQ(ToE4m3(1e30f), 0x7e);
  EXPECT_EQ(ToE4m3(-1e30f), 0xfe);
}

}  // namespace
