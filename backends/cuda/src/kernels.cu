#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include "coda_dtypes.h"
#include "kernels.h"

namespace coda::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kTokenGroup = 4;  // tokens whose sums a warp keeps in registers

__device__ float Load(const void* data, uint32_t dtype, uint64_t i) {
  switch (dtype) {
    case CODA_DTYPE_F32: return static_cast<const float*>(data)[i];
    case CODA_DTYPE_BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(data)[i]);
    case CODA_DTYPE_FP8_E4M3: {
      __nv_fp8_e4m3 v;
      v.__x = static_cast<const __nv_fp8_storage_t*>(data)[i];
      return static_cast<float>(v);
    }
    default: return 0.0f;
  }
}

__device__ float WarpSum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void EmbedKernel(const int32_t* ids, const void* table, uint32_t dtype, uint64_t d, float* y) {
  const uint64_t t = blockIdx.x;
  const uint64_t row = static_cast<uint64_t>(ids[t]) * d;
  for (uint64_t i = threadIdx.x; i < d; i += blockDim.x) y[t * d + i] = Load(table, dtype, row + i);
}

__global__ void RmsNormKernel(const float* x, uint64_t d, const void* w, uint32_t w_dtype, float eps, float* y) {
  const float* xr = x + blockIdx.x * d;
  float ss = 0;
  for (uint64_t i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
  __shared__ float part[kWarp];
  ss = WarpSum(ss);
  if (threadIdx.x % kWarp == 0) part[threadIdx.x / kWarp] = ss;
  __syncthreads();
  if (threadIdx.x < kWarp) {
    float v = threadIdx.x < blockDim.x / kWarp ? part[threadIdx.x] : 0.0f;
    v = WarpSum(v);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float r = rsqrtf(part[0] / static_cast<float>(d) + eps);
  for (uint64_t i = threadIdx.x; i < d; i += blockDim.x) y[blockIdx.x * d + i] = xr[i] * r * Load(w, w_dtype, i);
}

__global__ void AddKernel(const float* a, const float* b, float* y, uint64_t count) {
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x)
    y[i] = a[i] + b[i];
}

__global__ void SiluMulKernel(float* g, const float* u, uint64_t count) {
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x)
    g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

__global__ void ConcatKernel(const float* a, uint64_t p, const float* b, uint64_t q, uint64_t n, float* y) {
  const uint64_t w = p + q;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n * w;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const uint64_t t = i / w, j = i % w;
    y[i] = j < p ? a[t * p + j] : b[t * q + (j - p)];
  }
}

// One warp per weight row; for FP8 the block scale multiplies each block's partial sum.
__global__ void LinearKernel(const float* x, uint64_t n, DeviceWeight w, float* y) {
  const uint64_t r = (blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= w.rows) return;
  const uint64_t base = r * w.cols;
  const bool fp8 = w.dtype == CODA_DTYPE_FP8_E4M3;
  for (uint64_t t0 = 0; t0 < n; t0 += kTokenGroup) {
    const int nt = static_cast<int>(n - t0 < kTokenGroup ? n - t0 : kTokenGroup);
    float acc[kTokenGroup] = {0, 0, 0, 0};
    const uint64_t step = fp8 ? w.block : w.cols;
    for (uint64_t c0 = 0; c0 < w.cols; c0 += step) {
      const uint64_t c1 = c0 + step < w.cols ? c0 + step : w.cols;
      float part[kTokenGroup] = {0, 0, 0, 0};
      for (uint64_t c = c0 + lane; c < c1; c += kWarp) {
        const float v = Load(w.data, w.dtype, base + c);
        for (int j = 0; j < nt; ++j) part[j] += v * x[(t0 + j) * w.cols + c];
      }
      const float s = fp8 ? w.scales[(r / w.block) * w.scale_cols + c0 / w.block] : 1.0f;
      for (int j = 0; j < nt; ++j) acc[j] += part[j] * s;
    }
    for (int j = 0; j < nt; ++j) {
      const float v = WarpSum(acc[j]);
      if (lane == 0) y[(t0 + j) * w.rows + r] = v;
    }
  }
}

unsigned Blocks(uint64_t threads, unsigned per_block) {
  const uint64_t b = (threads + per_block - 1) / per_block;
  return static_cast<unsigned>(b < 65535u * 1024u ? b : 65535u * 1024u);
}

}  // namespace

int LaunchEmbed(const int32_t* ids, uint64_t n, const DeviceWeight& table, float* y, cudaStream_t s) {
  if (n) EmbedKernel<<<static_cast<unsigned>(n), 256, 0, s>>>(ids, table.data, table.dtype, table.cols, y);
  return static_cast<int>(cudaGetLastError());
}

int LaunchRmsNorm(const float* x, uint64_t n, uint64_t d, const void* w, uint32_t w_dtype, float eps, float* y,
                  cudaStream_t s) {
  if (n) RmsNormKernel<<<static_cast<unsigned>(n), 256, 0, s>>>(x, d, w, w_dtype, eps, y);
  return static_cast<int>(cudaGetLastError());
}

int LaunchAdd(const float* a, const float* b, float* y, uint64_t count, cudaStream_t s) {
  if (count) AddKernel<<<Blocks(count, 256), 256, 0, s>>>(a, b, y, count);
  return static_cast<int>(cudaGetLastError());
}

int LaunchSiluMul(float* g, const float* u, uint64_t count, cudaStream_t s) {
  if (count) SiluMulKernel<<<Blocks(count, 256), 256, 0, s>>>(g, u, count);
  return static_cast<int>(cudaGetLastError());
}

int LaunchConcat(const float* a, uint64_t p, const float* b, uint64_t q, uint64_t n, float* y, cudaStream_t s) {
  if (n && p + q) ConcatKernel<<<Blocks(n * (p + q), 256), 256, 0, s>>>(a, p, b, q, n, y);
  return static_cast<int>(cudaGetLastError());
}

int LaunchLinear(const float* x, uint64_t n, const DeviceWeight& w, float* y, cudaStream_t s) {
  if (n && w.rows) LinearKernel<<<Blocks(w.rows * kWarp, 256), 256, 0, s>>>(x, n, w, y);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace coda::cuda
