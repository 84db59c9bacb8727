// The CUDA backend's kernels, launched on a stream. Plain C++ declarations, so that the host
// code compiles with the C++ compiler; the definitions are in kernels.cu.
#pragma once

#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace coda::cuda {

// A 2-D weight [rows, cols] in device memory, in its stored dtype (coda_dtype).
struct DeviceWeight {
  uint32_t dtype = 0;
  uint64_t rows = 0, cols = 0;
  const void* data = nullptr;
  const float* scales = nullptr;  // FP8: [ceil(rows / block), scale_cols]
  uint32_t block = 128;
  uint64_t scale_cols = 0;
};

// Each returns the launch's error (cudaGetLastError) as an int; 0 is success.
// y[t] = table[ids[t]] for t < n; ids were checked against the table's rows on the host.
int LaunchEmbed(const int32_t* ids, uint64_t n, const DeviceWeight& table, float* y, cudaStream_t s);
// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, rows of d values; w F32 or BF16.
int LaunchRmsNorm(const float* x, uint64_t n, uint64_t d, const void* w, uint32_t w_dtype, float eps, float* y,
                  cudaStream_t s);
// y = a + b over `count` values.
int LaunchAdd(const float* a, const float* b, float* y, uint64_t count, cudaStream_t s);
// g[i] = silu(g[i]) * u[i], silu(v) = v / (1 + e^-v), over `count` values.
int LaunchSiluMul(float* g, const float* u, uint64_t count, cudaStream_t s);
// y[t] = (a[t], b[t]) for n rows of p and q values.
int LaunchConcat(const float* a, uint64_t p, const float* b, uint64_t q, uint64_t n, float* y, cudaStream_t s);
// y[t][r] = x[t] . W[r] for n tokens: one warp per weight row, which it reads once per token
// group (decode is memory-bound; prefill products are for cuBLASLt, not written yet).
int LaunchLinear(const float* x, uint64_t n, const DeviceWeight& w, float* y, cudaStream_t s);

}  // namespace coda::cuda
