#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "coda_dtypes.h"
#include "kernels.h"
#include "numbers.h"

namespace coda::cuda {
namespace {

// Loops over register arrays, unrolled so that the arrays stay in registers.
#ifdef CODA_CUDA_EMULATION
#define CODA_UNROLL
#else
#define CODA_UNROLL _Pragma("unroll")
#endif

constexpr int kWarp = 32;
constexpr int kTokenGroup = 4;  // tokens whose sums a warp keeps in registers
constexpr unsigned kThreads = 256;
constexpr unsigned kWarpsPerBlock = kThreads / kWarp;
constexpr unsigned kMaxGridYZ = 65535, kMaxGridX = 0x7fffffffu;

// A launch, written once for both builds: nvcc's triple chevrons, or the CPU emulator.
template <class... P, class... A>
int Start(void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t s, A... a) {
#ifdef CODA_CUDA_EMULATION
  if (coda_cuda_emu::DeviceArguments(a...)) coda_cuda_emu::Launch(grid, block, s, [kernel, a...] { kernel(a...); });
#else
  kernel<<<grid, block, 0, s>>>(a...);
#endif
  return static_cast<int>(cudaGetLastError());
}

__device__ float Load(const void* data, uint32_t dtype, uint64_t i) {
  switch (dtype) {
    case CODA_DTYPE_F32: return static_cast<const float*>(data)[i];
    case CODA_DTYPE_BF16: return AsFloat(uint32_t{static_cast<const uint16_t*>(data)[i]} << 16);
    case CODA_DTYPE_FP8_E4M3: return E4m3(static_cast<const uint8_t*>(data)[i]);
    default: return 0.0f;
  }
}

__device__ float WarpSum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ float WarpMax(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum (or maximum) of v over the block, returned to every thread. blockDim.x is a multiple
// of the warp; the first barrier keeps a previous call's readers ahead of this call's writers.
template <bool kMax>
__device__ float BlockReduce(float v) {
  __shared__ float part[kWarp];
  v = kMax ? WarpMax(v) : WarpSum(v);
  __syncthreads();
  if (threadIdx.x % kWarp == 0) part[threadIdx.x / kWarp] = v;
  __syncthreads();
  float r = part[0];
  for (unsigned i = 1; i < blockDim.x / kWarp; ++i) r = kMax ? fmaxf(r, part[i]) : r + part[i];
  return r;
}

__global__ void EmbedKernel(const int32_t* ids, const void* table, uint32_t dtype, uint64_t d, float* y) {
  const uint64_t t = blockIdx.x;
  const uint64_t row = static_cast<uint64_t>(ids[t]) * d;
  for (uint64_t i = threadIdx.x; i < d; i += blockDim.x) y[t * d + i] = Load(table, dtype, row + i);
}

__global__ void RmsNormKernel(const float* x, uint64_t d, uint64_t xs, const void* w, uint32_t w_dtype, float eps, float* y,
                              uint64_t ys) {
  const float* xr = x + blockIdx.x * xs;
  float* yr = y + blockIdx.x * ys;
  float ss = 0;
  for (uint64_t i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
  const float r = rsqrtf(BlockReduce<false>(ss) / static_cast<float>(d) + eps);
  for (uint64_t i = threadIdx.x; i < d; i += blockDim.x) yr[i] = xr[i] * r * Load(w, w_dtype, i);
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

// 16 bytes of weights, loaded at once (one 128-bit load per lane on the device) and stored at
// once (a memcpy would store 4 words, with bank conflicts in shared memory); p 16-byte aligned.
struct alignas(16) Piece {
  uint32_t w[4];
};
__device__ __forceinline__ void StorePiece(void* p, const Piece& v) {
#ifdef CODA_CUDA_EMULATION
  coda_cuda_emu::CheckAligned(p, sizeof v);
  memcpy(p, &v, sizeof v);
#else
  *static_cast<Piece*>(p) = v;
#endif
}
__device__ __forceinline__ Piece LoadPiece(const void* p) {
#ifdef CODA_CUDA_EMULATION
  coda_cuda_emu::CheckAligned(p, sizeof(Piece));
  Piece q;
  memcpy(&q, p, sizeof q);
  return q;
#else
  return *static_cast<const Piece*>(p);
#endif
}

// Value i of a piece of kDtype values.
template <uint32_t kDtype>
__device__ __forceinline__ float PieceValue(const Piece& q, int i) {
  if (kDtype == CODA_DTYPE_F32) return AsFloat(q.w[i]);
  if (kDtype == CODA_DTYPE_BF16) return AsFloat(i % 2 ? q.w[i / 2] & 0xffff0000u : q.w[i / 2] << 16);
  return E4m3((q.w[i / 4] >> (8 * (i % 4))) & 0xffu);
}

// RowDots for a vectorized weight: each lane takes 16-byte pieces, 32 pieces apart; an FP8
// piece lies in one scale block, so its partial sum is scaled once.
template <uint32_t kDtype>
__device__ void RowDotsVectorized(const DeviceWeight& w, uint64_t r, const float* const* x, int nt, float* acc) {
  constexpr int kPer = kDtype == CODA_DTYPE_F32 ? 4 : kDtype == CODA_DTYPE_BF16 ? 8 : 16;
  constexpr uint64_t kBytes = kDtype == CODA_DTYPE_F32 ? 4 : kDtype == CODA_DTYPE_BF16 ? 2 : 1;
  const int lane = threadIdx.x % kWarp;
  const auto* row = static_cast<const uint8_t*>(w.data) + r * w.cols * kBytes;
  const float* scales = kDtype == CODA_DTYPE_FP8_E4M3 ? w.scales + (r / w.block) * w.scale_cols : nullptr;
  for (uint64_t c = static_cast<uint64_t>(lane) * kPer; c < w.cols; c += kWarp * kPer) {
    const Piece q = LoadPiece(row + c * kBytes);
    float v[kPer];
    for (int i = 0; i < kPer; ++i) v[i] = PieceValue<kDtype>(q, i);
    const float s = scales ? scales[c / w.block] : 1.0f;
    for (int j = 0; j < nt; ++j) {
      float p = 0;
      for (int i = 0; i < kPer; ++i) p += v[i] * x[j][c + i];
      acc[j] += p * s;
    }
  }
}

// Sums, for nt <= kTokenGroup tokens, weight row r against their x rows (x[j] is token j's row);
// for FP8 each block's partial sum is scaled as it is added. Every lane returns the warp's sums.
__device__ void RowDots(const DeviceWeight& w, uint64_t r, const float* const* x, int nt, float* acc) {
  for (int j = 0; j < kTokenGroup; ++j) acc[j] = 0;
  if (w.vectorized) {
    switch (w.dtype) {
      case CODA_DTYPE_F32: RowDotsVectorized<CODA_DTYPE_F32>(w, r, x, nt, acc); break;
      case CODA_DTYPE_BF16: RowDotsVectorized<CODA_DTYPE_BF16>(w, r, x, nt, acc); break;
      default: RowDotsVectorized<CODA_DTYPE_FP8_E4M3>(w, r, x, nt, acc); break;
    }
  } else {
    const int lane = threadIdx.x % kWarp;
    const uint64_t base = r * w.cols;
    const bool fp8 = w.dtype == CODA_DTYPE_FP8_E4M3;
    const uint64_t step = fp8 ? w.block : w.cols;
    for (uint64_t c0 = 0; c0 < w.cols; c0 += step) {
      const uint64_t c1 = c0 + step < w.cols ? c0 + step : w.cols;
      float part[kTokenGroup] = {0, 0, 0, 0};
      for (uint64_t c = c0 + lane; c < c1; c += kWarp) {
        const float v = Load(w.data, w.dtype, base + c);
        for (int j = 0; j < nt; ++j) part[j] += v * x[j][c];
      }
      const float s = fp8 ? w.scales[(r / w.block) * w.scale_cols + c0 / w.block] : 1.0f;
      for (int j = 0; j < nt; ++j) acc[j] += part[j] * s;
    }
  }
  for (int j = 0; j < nt; ++j) acc[j] = WarpSum(acc[j]);
}

// ---- Products of many tokens: tiles through shared memory ----
// A block of 256 threads computes kTileTokens tokens x kTileRows weight rows, kTileK columns at a
// time; each weight value is decoded (and FP8-scaled) once per tile and used for all its tokens,
// where the mat-vec path reads it once per kTokenGroup tokens. Thread (ty, tx) of a 16 x 16 grid
// holds a 4 x 4 corner of the tile.
constexpr int kTileTokens = 64, kTileRows = 64, kTileK = 32;
// From this many tokens a product goes through tiles (FP8 ones too).
constexpr uint64_t kTileMinTokens = kTileMinTokensForFp8;

// FP8 tiles (below): 16 tokens per warp, 64 weight rows, rows of 128 codes padded to kFp8Row
// bytes so that a fragment's 32 lanes hit 32 banks.
constexpr int kFp8Row = 144, kFp8Rows = 64, kFp8MaxWarps = 8;
// BF16 tiles (below): 64 tokens (16 per warp) x 64 weight rows, kBf16K columns at a time in rows
// padded to kBf16Stride values (144 bytes, as kFp8Row, so that a fragment's lanes hit 32 banks).
constexpr int kBf16K = 64, kBf16Stride = kBf16K + 8, kBf16Tokens = 64;
static_assert(kBf16Stride * 2 == kFp8Row, "BF16 and FP8 tile rows share their padding");

// The tile functions' shared memory, declared once per kernel: kernels that may take either
// path (or several instantiations) then use the largest, not the sum.
union TileShared {
  struct {
    float x[kTileK][kTileTokens];
    float w[kTileK][kTileRows];
  } f32;
  struct {
    uint8_t a[kFp8MaxWarps * 16 * kFp8Row];
    uint8_t b[kFp8Rows * kFp8Row];
  } fp8;
  struct {
    uint16_t ah[kBf16Tokens * kBf16Stride], al[kBf16Tokens * kBf16Stride];  // activations, two halves
    uint16_t b[kFp8Rows * kBf16Stride];
  } bf16;
};

// Sums over all columns for tokens 0 .. mt - 1 (token i's row at xrow(i)) and weight rows
// row0 .. row0 + nr - 1, then calls store(i, j, value) for each of them. Every thread of the
// block calls it with the same arguments.
template <class XRow, class Store>
__device__ void GemmTile(TileShared& sh, const DeviceWeight& w, uint64_t row0, uint64_t nr, uint64_t mt, XRow xrow,
                         Store store) {
  auto& xs = sh.f32.x;
  auto& ws = sh.f32.w;
  const unsigned tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const bool fp8 = w.dtype == CODA_DTYPE_FP8_E4M3;
  float acc[4][4] = {};
  for (uint64_t k0 = 0; k0 < w.cols; k0 += kTileK) {
    __syncthreads();  // the previous tile's readers are done
    for (unsigned i = threadIdx.x; i < kTileK * kTileTokens; i += blockDim.x) {
      const unsigned m = i / kTileK, k = i % kTileK;  // consecutive threads read consecutive columns
      xs[k][m] = m < mt && k0 + k < w.cols ? xrow(m)[k0 + k] : 0.0f;
    }
    for (unsigned i = threadIdx.x; i < kTileK * kTileRows; i += blockDim.x) {
      const unsigned j = i / kTileK, k = i % kTileK;
      const uint64_t r = row0 + j, c = k0 + k;
      float v = 0;
      if (j < nr && c < w.cols) {
        v = Load(w.data, w.dtype, r * w.cols + c);
        if (fp8) v *= w.scales[(r / w.block) * w.scale_cols + c / w.block];
      }
      ws[k][j] = v;
    }
    __syncthreads();
    for (int k = 0; k < kTileK; ++k) {
      float a[4], b[4];
      for (int q = 0; q < 4; ++q) {
        a[q] = xs[k][ty * 4 + q];
        b[q] = ws[k][tx * 4 + q];
      }
      for (int q = 0; q < 4; ++q)
        for (int r = 0; r < 4; ++r) acc[q][r] += a[q] * b[r];
    }
  }
  for (int q = 0; q < 4; ++q)
    for (int r = 0; r < 4; ++r) {
      const uint64_t i = ty * 4 + q, j = tx * 4 + r;
      if (i < mt && j < nr) store(i, j, acc[q][r]);
    }
}

// Grid (row tiles, token tiles, batches).
__global__ void GemmKernel(LinearJob job) {
  __shared__ __align__(16) TileShared sh;
  const uint64_t b = blockIdx.z, i0 = blockIdx.x * static_cast<uint64_t>(kTileRows),
                 t0 = blockIdx.y * static_cast<uint64_t>(kTileTokens);
  const uint64_t nr = job.rows - i0 < kTileRows ? job.rows - i0 : kTileRows;
  const uint64_t mt = job.n - t0 < kTileTokens ? job.n - t0 : kTileTokens;
  GemmTile(
      sh, job.w, job.row0 + b * job.w_zrows + i0, nr, mt,
      [&](uint64_t m) { return job.x + (t0 + m) * job.x_stride + b * job.x_zoff; },
      [&](uint64_t m, uint64_t j, float v) { job.y[(t0 + m) * job.y_stride + b * job.y_zoff + i0 + j] = v; });
}

// ---- FP8 products on tensor cores (sm_89 and later), DeepSeek-V3's scheme ----
// Activations are quantized per token and 128-column block to E4M3 (scale = amax / 448); each
// 128-column block's product runs on the tensor cores (mma m16n8k32, E4M3 in, F32 out) and is
// then promoted: multiplied by both blocks' scales and added to the F32 sum, as DeepSeek-V3's
// GEMM does because the tensor cores' FP8 accumulation is narrow.

// One warp per (token, 128-column block): codes into xq [n, cols], token t's scale for block b
// into xs[t * xs_t + b * xs_b]. With `limit`, rows from *limit on are left alone (rows the grouped
// experts did not fill).
__global__ void QuantizeKernel(const float* x, uint64_t n, uint64_t cols, uint64_t x_stride, uint8_t* xq, float* xs,
                               uint64_t xs_t, uint64_t xs_b, const uint32_t* limit) {
  const uint64_t blocks = cols / 128, g = (blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x) / kWarp;
  if (g >= n * blocks) return;
  const uint64_t t = g / blocks, b = g % blocks;
  if (limit && t >= *limit) return;
  const int lane = threadIdx.x % kWarp;
  const float* xr = x + t * x_stride + b * 128 + lane * 4;
  float v[4], amax = 0;
  for (int i = 0; i < 4; ++i) amax = fmaxf(amax, fabsf(v[i] = xr[i]));
  amax = WarpMax(amax);
  const float scale = amax > 0 ? amax / 448.0f : 1.0f;
  uint32_t word = 0;
  for (int i = 0; i < 4; ++i) word |= uint32_t{ToE4m3(v[i] / scale)} << (8 * i);
  memcpy(xq + t * cols + b * 128 + lane * 4, &word, 4);
  if (lane == 0) xs[t * xs_t + b * xs_b] = scale;
}

__device__ __forceinline__ void MmaE4m3(float* d, const uint32_t* a, const uint32_t* b) {
#if defined(CODA_CUDA_EMULATION)
  coda_cuda_emu::MmaE4m3(d, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  (void)d, (void)a, (void)b;
  __trap();  // the host chooses this path only on sm_89 and later
#endif
}

__device__ __forceinline__ void MmaBf16(float* d, const uint32_t* a, const uint32_t* b) {
#if defined(CODA_CUDA_EMULATION)
  coda_cuda_emu::MmaBf16(d, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  (void)d, (void)a, (void)b;
  __trap();  // this build holds sm_80 code and newer only
#endif
}

__device__ __forceinline__ uint32_t Pack(uint16_t lo_k, uint16_t hi_k) { return uint32_t{lo_k} | uint32_t{hi_k} << 16; }
// v as hi + lo, each BF16.
__device__ __forceinline__ void Split(float v, uint16_t* hi, uint16_t* lo) {
  *hi = ToBf16(v);
  *lo = ToBf16(v - AsFloat(uint32_t{*hi} << 16));
}

// Tokens 0 .. mt - 1 (quantized row arow(i) of xq, its block scales at xs) against weight rows
// i0 .. i0 + nr - 1 of w (FP8, 128-column blocks), then store(i, j, value). Warp v takes tokens
// 16v .. 16v + 15, against all 64 rows (8 mma column groups of 8); mt <= 16 * warps.
template <class ARow, class Store>
__device__ void Fp8Tile(TileShared& sh, const DeviceWeight& w, uint64_t i0, uint64_t nr, uint64_t mt, const uint8_t* xq,
                        const float* xs, ARow arow, Store store) {
  uint8_t* as = sh.fp8.a;
  uint8_t* bs = sh.fp8.b;
  const uint64_t blocks = w.cols / 128, tokens = blockDim.x / kWarp * 16;
  const unsigned warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, q = lane % 4;
  float acc[8][4] = {};
  for (uint64_t kb = 0; kb < blocks; ++kb) {
    __syncthreads();  // the previous block's readers are done
    for (uint64_t i = threadIdx.x; i < (tokens + kFp8Rows) * 8; i += blockDim.x) {  // 16-byte pieces: 8 per row
      const uint64_t r = i / 8, p = i % 8;
      Piece z{};
      if (r < tokens) {
        if (r < mt) z = LoadPiece(xq + arow(r) * w.cols + kb * 128 + p * 16);
        StorePiece(as + r * kFp8Row + p * 16, z);
      } else {
        if (r - tokens < nr) z = LoadPiece(static_cast<const uint8_t*>(w.data) + (i0 + r - tokens) * w.cols + kb * 128 + p * 16);
        StorePiece(bs + (r - tokens) * kFp8Row + p * 16, z);
      }
    }
    __syncthreads();
    float part[8][4] = {};
    for (int s = 0; s < 4; ++s) {  // 32 columns at a time
      const uint8_t* ar = as + (warp * 16 + g) * kFp8Row + s * 32 + q * 4;
      uint32_t a[4];
      memcpy(&a[0], ar, 4);
      memcpy(&a[1], ar + 8 * kFp8Row, 4);
      memcpy(&a[2], ar + 16, 4);
      memcpy(&a[3], ar + 8 * kFp8Row + 16, 4);
      for (int f = 0; f < 8; ++f) {
        const uint8_t* br = bs + (f * 8 + g) * kFp8Row + s * 32 + q * 4;
        uint32_t b[2];
        memcpy(&b[0], br, 4);
        memcpy(&b[1], br + 16, 4);
        MmaE4m3(part[f], a, b);
      }
    }
    // Promotion: this block's sums, times the activation's and the weight's scales.
    for (int f = 0; f < 8; ++f)
      for (int i = 0; i < 4; ++i) {
        const uint64_t m = warp * 16 + g + (i >= 2 ? 8 : 0), j = f * 8 + q * 2 + (i & 1);
        if (m < mt && j < nr) acc[f][i] += part[f][i] * xs[arow(m) * blocks + kb] * w.scales[((i0 + j) / 128) * w.scale_cols + kb];
      }
  }
  for (int f = 0; f < 8; ++f)
    for (int i = 0; i < 4; ++i) {
      const uint64_t m = warp * 16 + g + (i >= 2 ? 8 : 0), j = f * 8 + q * 2 + (i & 1);
      if (m < mt && j < nr) store(m, j, acc[f][i]);
    }
}

// Grid (row tiles of 64, token tiles of 64), 4 warps.
__global__ void Fp8GemmKernel(LinearJob job, const uint8_t* xq, const float* xs) {
  __shared__ __align__(16) TileShared sh;
  const uint64_t i0 = blockIdx.x * 64ull, t0 = blockIdx.y * 64ull;
  const uint64_t nr = job.rows - i0 < 64 ? job.rows - i0 : 64, mt = job.n - t0 < 64 ? job.n - t0 : 64;
  Fp8Tile(
      sh, job.w, i0, nr, mt, xq, xs, [&](uint64_t m) { return t0 + m; },
      [&](uint64_t m, uint64_t j, float v) { job.y[(t0 + m) * job.y_stride + i0 + j] = v; });
}

// ---- BF16 products on tensor cores (sm_80 and later) ----
// For BF16 weights, and for FP8 weights where the tensor cores lack FP8 (sm_80 to sm_87): FP8
// codes widen to BF16 exactly and each 128-column block's sum is promoted with its weight scale,
// as in the FP8 path. Activations are split into two BF16 halves (hi + lo, as in the MLA kernel)
// and multiplied twice, so that each keeps 16 bits of mantissa: near the F32 product, where
// rounding them to BF16 once would cost about 2e-3 (the tests tell the two apart).

// A fragment of A (rows g and g + 8, columns 2q and 2q + 1, then 8 on): p at row g, column 2q.
__device__ __forceinline__ void FragmentA(const uint16_t* p, uint32_t* a) {
  memcpy(&a[0], p, 4);
  memcpy(&a[1], p + 8 * kBf16Stride, 4);
  memcpy(&a[2], p + 8, 4);
  memcpy(&a[3], p + 8 * kBf16Stride + 8, 4);
}

// A weight the BF16 tile takes: BF16, or FP8 in 128x128 blocks of whole 128-column blocks, aligned.
__host__ __device__ inline bool Bf16Weight(const DeviceWeight& w) {
  if (w.dtype == CODA_DTYPE_BF16) return w.cols > 0;
  return w.dtype == CODA_DTYPE_FP8_E4M3 && w.block == 128 && w.cols % 128 == 0 && w.cols &&
         reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
}

// Tokens 0 .. mt - 1 (mt <= 64, token m's row at xrow(m)) against weight rows row0 .. row0 + nr - 1
// (nr <= 64) of w (Bf16Weight), then store(m, j, value); blockDim.x is kWarps warps. Warp v takes
// tokens 16 (v % 4) .. + 15 against 64 / (kWarps / 4) of the rows, in mma column groups of 8.
template <int kWarps, class XRow, class Store>
__device__ void Bf16Tile(TileShared& sh, const DeviceWeight& w, uint64_t row0, uint64_t nr, uint64_t mt, XRow xrow,
                         Store store) {
  static_assert(kWarps == 4 || kWarps == 8, "4 warps of 16 tokens, once or twice over the rows");
  constexpr int kGroups = 8 / (kWarps / 4);  // column groups of 8 rows per warp
  uint16_t* ah = sh.bf16.ah;
  uint16_t* al = sh.bf16.al;
  uint16_t* bs = sh.bf16.b;
  const unsigned warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, q = lane % 4;
  const unsigned tw = warp % 4 * 16, rw = warp / 4 * kGroups * 8;  // this warp's first token and row
  const bool fp8 = w.dtype == CODA_DTYPE_FP8_E4M3;
  const unsigned per = fp8 ? 16 : 8, width = fp8 ? 1 : 2;  // values per 16-byte piece, bytes per value
  const bool vector = w.cols % per == 0 && reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
  float acc[kGroups][4] = {}, part[kGroups][4] = {};
  for (uint64_t k0 = 0; k0 < w.cols; k0 += kBf16K) {
    __syncthreads();  // the previous chunk's readers are done
    for (unsigned i = threadIdx.x; i < kBf16Tokens * kBf16K; i += blockDim.x) {
      const unsigned m = i / kBf16K, k = i % kBf16K;  // consecutive threads read consecutive columns
      Split(m < mt && k0 + k < w.cols ? xrow(m)[k0 + k] : 0.0f, &ah[m * kBf16Stride + k], &al[m * kBf16Stride + k]);
    }
    if (vector) {
      for (unsigned i = threadIdx.x; i < kFp8Rows * (kBf16K / per); i += blockDim.x) {
        const unsigned j = i / (kBf16K / per), k = i % (kBf16K / per) * per;
        Piece v{};
        if (j < nr && k0 + k < w.cols)
          v = LoadPiece(static_cast<const uint8_t*>(w.data) + ((row0 + j) * w.cols + k0 + k) * width);
        uint16_t* dst = bs + j * kBf16Stride + k;
        if (!fp8) {
          StorePiece(dst, v);
          continue;
        }
        Piece wide[2] = {};  // 16 codes as 16 BF16 values, the first lowest
        for (int e = 0; e < 16; ++e)
          wide[e / 8].w[e % 8 / 2] |= uint32_t{ToBf16(PieceValue<CODA_DTYPE_FP8_E4M3>(v, e))} << (16 * (e % 2));
        StorePiece(dst, wide[0]);
        StorePiece(dst + 8, wide[1]);
      }
    } else {
      for (unsigned i = threadIdx.x; i < kFp8Rows * kBf16K; i += blockDim.x) {
        const unsigned j = i / kBf16K, k = i % kBf16K;
        bs[j * kBf16Stride + k] =
            j < nr && k0 + k < w.cols ? ToBf16(Load(w.data, w.dtype, (row0 + j) * w.cols + k0 + k)) : uint16_t{0};
      }
    }
    __syncthreads();
CODA_UNROLL
    for (int s = 0; s < kBf16K / 16; ++s) {
      uint32_t hi[4], lo[4];
      FragmentA(ah + (tw + g) * kBf16Stride + s * 16 + 2 * q, hi);
      FragmentA(al + (tw + g) * kBf16Stride + s * 16 + 2 * q, lo);
CODA_UNROLL
      for (int f = 0; f < kGroups; ++f) {
        const uint16_t* br = bs + (rw + f * 8 + g) * kBf16Stride + s * 16 + 2 * q;
        uint32_t b[2];
        memcpy(&b[0], br, 4);
        memcpy(&b[1], br + 8, 4);
        MmaBf16(part[f], hi, b);
        MmaBf16(part[f], lo, b);
      }
    }
    // FP8: promotion at the end of each 128-column block (cols is a multiple of 128), with the
    // weight's scale; BF16: once, at the end.
    const uint64_t end = k0 + kBf16K;
    if (fp8 ? end % 128 == 0 : end >= w.cols)
      for (int f = 0; f < kGroups; ++f)
        for (int i = 0; i < 4; ++i) {
          const uint64_t j = rw + f * 8 + q * 2 + (i & 1);
          if (j < nr) acc[f][i] += part[f][i] * (fp8 ? w.scales[((row0 + j) / 128) * w.scale_cols + k0 / 128] : 1.0f);
          part[f][i] = 0;
        }
  }
  for (int f = 0; f < kGroups; ++f)
    for (int i = 0; i < 4; ++i) {
      const uint64_t m = tw + g + (i >= 2 ? 8 : 0), j = rw + f * 8 + q * 2 + (i & 1);
      if (m < mt && j < nr) store(m, j, acc[f][i]);
    }
}

// Grid (row tiles of 64, token tiles of 64), 4 warps.
__global__ void Bf16GemmKernel(LinearJob job) {
  __shared__ __align__(16) TileShared sh;
  const uint64_t i0 = blockIdx.x * 64ull, t0 = blockIdx.y * 64ull;
  const uint64_t nr = job.rows - i0 < 64 ? job.rows - i0 : 64, mt = job.n - t0 < 64 ? job.n - t0 : 64;
  Bf16Tile<4>(
      sh, job.w, job.row0 + i0, nr, mt, [&](uint64_t m) { return job.x + (t0 + m) * job.x_stride; },
      [&](uint64_t m, uint64_t j, float v) { job.y[(t0 + m) * job.y_stride + i0 + j] = v; });
}

// One warp per (batch, row).
__global__ void LinearKernel(LinearJob job) {
  const uint64_t g = (blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x) / kWarp;
  if (g >= job.rows * job.z) return;
  const uint64_t b = g / job.rows, i = g % job.rows, r = job.row0 + b * job.w_zrows + i;
  for (uint64_t t0 = 0; t0 < job.n; t0 += kTokenGroup) {
    const int nt = static_cast<int>(job.n - t0 < kTokenGroup ? job.n - t0 : kTokenGroup);
    const float* x[kTokenGroup];
    for (int j = 0; j < nt; ++j) x[j] = job.x + (t0 + j) * job.x_stride + b * job.x_zoff;
    float acc[kTokenGroup];
    RowDots(job.w, r, x, nt, acc);
    if (threadIdx.x % kWarp == 0)
      for (int j = 0; j < nt; ++j) job.y[(t0 + j) * job.y_stride + b * job.y_zoff + i] = acc[j];
  }
}

__device__ uint64_t At(Position p) { return p.dev ? *p.dev + p.value : p.value; }

__global__ void RopeKernel(float* x, uint64_t n, uint64_t nvec, uint64_t dr, uint64_t ts, uint64_t vs, const float* cs,
                           Position start) {
  const uint64_t half = dr / 2, first = At(start);
  for (uint64_t t = blockIdx.x; t < n; t += gridDim.x)
    for (uint64_t v = blockIdx.y; v < nvec; v += gridDim.y)
      for (uint64_t i = threadIdx.x; i < half; i += blockDim.x) {
        float* p = x + t * ts + v * vs + 2 * i;
        const uint64_t k = ((first + t) * half + i) * 2;
        const float c = cs[k], s = cs[k + 1];
        const float x0 = p[0], x1 = p[1];
        p[0] = x0 * c - x1 * s;
        p[1] = x0 * s + x1 * c;
      }
}

__global__ void KvStoreKernel(const float* x, uint64_t count, uint64_t row, void* cache, uint32_t dtype, Position start) {
  const uint64_t first = At(start) * row;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    if (dtype == CODA_DTYPE_BF16) static_cast<uint16_t*>(cache)[first + i] = ToBf16(x[i]);
    else static_cast<float*>(cache)[first + i] = x[i];
  }
}

// Grid (ceil(c / blockDim), heads, tokens, strided): one latent column j per thread.
__global__ void MlaAbsorbKernel(const float* q, DeviceWeight w, MlaShape m, float* ql) {
  const uint64_t j = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x, h = blockIdx.y;
  if (j >= m.c) return;
  const uint64_t qk = m.dn + m.dr;
  const bool fp8 = w.dtype == CODA_DTYPE_FP8_E4M3;
  for (uint64_t t = blockIdx.z; t < m.n; t += gridDim.z) {
    const float* qn = q + (t * m.heads + h) * qk;
    float acc = 0;
    for (uint64_t d = 0; d < m.dn; ++d) {
      const uint64_t r = h * (m.dn + m.dv) + d;
      float v = Load(w.data, w.dtype, r * m.c + j);
      if (fp8) v *= w.scales[(r / w.block) * w.scale_cols + j / w.block];
      acc += qn[d] * v;
    }
    ql[(t * m.heads + h) * m.c + j] = acc;
  }
}

// Where an attention block works: blockIdx.x runs over (token, head group) pairs, head groups
// fastest, and blockIdx.y over splits of the positions. So the blocks reading one split's cache
// rows, for every head and token of the step, are neighbours and run at the same time: each row
// comes from HBM once per step and layer, the other reads of it hit L2 (V3's 128 heads are 8
// groups; with the split outermost they would be 8 reads a row once the cache outgrows L2).
struct MlaBlock {
  uint64_t tl, h0, split;  // token within the launch, first head, split
};
__device__ __forceinline__ MlaBlock MlaBlockOf(const MlaShape& m, uint64_t heads_per_block) {
  const uint64_t groups = (m.heads + heads_per_block - 1) / heads_per_block;
  return {blockIdx.x / groups, blockIdx.x % groups * heads_per_block, blockIdx.y};
}

// Attention in splits of positions (flash-decoding). A block takes token t, a group of kMlaHeads
// heads (a warp each) and a split of the positions (MlaBlockOf); tiles of kMlaTile cache rows go
// through shared memory once for all the group's heads. Each warp keeps its head's running
// maximum, sum and attended latent (lane j holds columns j, j + 32, ...), and the split's
// unnormalized result goes to part for MlaCombineKernel.
__global__ void MlaSplitKernel(const float* ql, const float* q, const void* cache, uint32_t dtype, MlaShape m,
                               uint64_t t0, float* part) {
  __shared__ float qs[kMlaHeads][kMlaMaxRow];
  __shared__ float tile[kMlaTile][kMlaMaxRow];
  const MlaBlock b = MlaBlockOf(m, kMlaHeads);
  const uint64_t start = At(m.start), splits = gridDim.y, split = (start + m.n + splits - 1) / splits;
  const uint64_t t = t0 + b.tl, row = m.c + m.dr, visible = start + t + 1;
  const unsigned warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const uint64_t h = b.h0 + warp;
  const bool head = h < m.heads;
  for (uint64_t i = threadIdx.x; i < kMlaHeads * row; i += blockDim.x) {
    const uint64_t hh = b.h0 + i / row, j = i % row;
    qs[i / row][j] = hh >= m.heads ? 0.0f
                     : j < m.c   ? ql[(t * m.heads + hh) * m.c + j]
                                 : q[(t * m.heads + hh) * (m.dn + m.dr) + m.dn + (j - m.c)];
  }
  const uint64_t p0 = b.split * split, p1 = p0 + split < visible ? p0 + split : visible;  // p0 >= p1: empty
  float mx = -INFINITY, sum = 0, acc[kMlaMaxRow / kWarp];
  for (int k = 0; k < static_cast<int>(kMlaMaxRow / kWarp); ++k) acc[k] = 0;
  for (uint64_t pt = p0; pt < p1; pt += kMlaTile) {
    const uint64_t np = p1 - pt < kMlaTile ? p1 - pt : kMlaTile;
    __syncthreads();  // the previous tile's readers are done (and, the first time, qs is written)
    for (uint64_t i = threadIdx.x; i < np * row; i += blockDim.x) tile[i / row][i % row] = Load(cache, dtype, pt * row + i);
    __syncthreads();
    if (!head) continue;
    float sc[kMlaTile];
    float tile_max = -INFINITY;
    for (uint64_t p = 0; p < np; ++p) {
      float v = 0;
      for (uint64_t i = lane; i < row; i += kWarp) v += qs[warp][i] * tile[p][i];
      sc[p] = WarpSum(v) * m.scale;
      tile_max = fmaxf(tile_max, sc[p]);
    }
    const float next = fmaxf(mx, tile_max), keep = expf(mx - next);  // mx = -inf at first: keep = 0
    sum *= keep;
    for (int k = 0; k < static_cast<int>(kMlaMaxRow / kWarp); ++k) acc[k] *= keep;
    for (uint64_t p = 0; p < np; ++p) {
      const float e = expf(sc[p] - next);
      sum += e;
      for (int k = 0; k < static_cast<int>(kMlaMaxRow / kWarp); ++k) {
        const uint64_t j = lane + static_cast<uint64_t>(k) * kWarp;
        if (j < m.c) acc[k] += e * tile[p][j];
      }
    }
    mx = next;
  }
  if (!head) return;
  // part[t][h][split] = (max, sum, c values); a split past the visible rows has sum 0.
  float* o = part + ((b.tl * m.heads + h) * splits + b.split) * (m.c + 2);
  if (lane == 0) {
    o[0] = mx;
    o[1] = sum;
  }
  for (int k = 0; k < static_cast<int>(kMlaMaxRow / kWarp); ++k) {
    const uint64_t j = lane + static_cast<uint64_t>(k) * kWarp;
    if (j < m.c) o[2 + j] = acc[k];
  }
}

// ---- The same on tensor cores (sm_80 and later), for BF16 caches with rows of up to 576 ----
// A block takes token t, kMlaTcHeads heads (one m16 tile of the mma) and a split (MlaBlockOf) of
// the positions, in tiles of 16 cache rows read into shared memory once for all 16 heads. Scores
// are S = Q K^T and the attended latent O = P V (V: each row's first c values) on mma m16n8k16
// BF16 with F32 sums. The cache is BF16 already; Q and P are split into two BF16 halves (v = hi +
// lo, lo = bf16(v - hi)) and multiplied twice, so that each value is kept to within 2^-16 of its
// F32 value: results within about 3e-6 of the F32 kernel's (one half alone: 2e-3), far below the
// BF16 cache's own rounding.
constexpr unsigned kMlaTcHeads = 16, kMlaTcTile = 16, kMlaTcWarps = 4;
constexpr uint64_t kMlaTcMaxRow = 576;  // DeepSeek-V3's 512 + 64, as every model in scope
constexpr unsigned kMlaTcStride = kMlaTcMaxRow + 8;  // BF16 values per shared row (+8: fewer bank conflicts)
constexpr unsigned kMlaTcSteps = kMlaTcMaxRow / 16 / kMlaTcWarps;   // k-steps of S per warp
constexpr unsigned kMlaTcColTiles = 512 / 8 / kMlaTcWarps;          // n-tiles of O per warp (c <= 512)
static_assert(kMlaTcMaxRow % (16 * kMlaTcWarps) == 0, "the warps' k-steps cover a row");
static_assert(kMlaTcStride * 2 % 16 == 0, "shared rows hold whole 16-byte pieces");
static_assert(kMlaTcMaxRow <= kMlaMaxRow, "LaunchMlaAttend's bound holds both kernels");

__global__ void MlaSplitTcKernel(const float* ql, const float* q, const uint16_t* cache, MlaShape m, uint64_t t0, float* part) {
  __shared__ __align__(16) uint16_t ks[kMlaTcTile][kMlaTcStride];
  __shared__ float sp[kMlaTcWarps][kMlaTcHeads][kMlaTcTile];  // each warp's share of the scores
  __shared__ uint16_t ph[kMlaTcHeads][kMlaTcTile], pl[kMlaTcHeads][kMlaTcTile];
  __shared__ float smax[kMlaTcHeads], ssum[kMlaTcHeads], salpha[kMlaTcHeads];
  const MlaBlock b = MlaBlockOf(m, kMlaTcHeads);
  const uint64_t start = At(m.start), splits = gridDim.y, split = (start + m.n + splits - 1) / splits;
  const uint64_t t = t0 + b.tl, row = m.c + m.dr, rowp = (row + 15) / 16 * 16, visible = start + t + 1;
  const unsigned warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, tq = lane % 4;
  const uint64_t h0 = b.h0;
  const bool vector = row % 8 == 0 && reinterpret_cast<uintptr_t>(cache) % 16 == 0;
  // This warp's k-steps of Q (steps warp, warp + 4, ...), as A fragments, hi and lo.
  auto qv = [&](uint64_t r, uint64_t j) {
    const uint64_t hh = h0 + r;
    if (hh >= m.heads || j >= row) return 0.0f;
    return j < m.c ? ql[(t * m.heads + hh) * m.c + j] : q[(t * m.heads + hh) * (m.dn + m.dr) + m.dn + (j - m.c)];
  };
  uint32_t qa[kMlaTcSteps][2][4];
CODA_UNROLL
  for (unsigned i = 0; i < kMlaTcSteps; ++i) {
    const uint64_t k0 = (warp + i * kMlaTcWarps) * 16;
CODA_UNROLL
    for (int r = 0; r < 4; ++r) {
      const uint64_t rr = g + (r & 1 ? 8 : 0), kk = k0 + 2 * tq + (r & 2 ? 8 : 0);
      uint16_t h[2], l[2];
      Split(qv(rr, kk), &h[0], &l[0]);
      Split(qv(rr, kk + 1), &h[1], &l[1]);
      qa[i][0][r] = Pack(h[0], h[1]);
      qa[i][1][r] = Pack(l[0], l[1]);
    }
  }
  if (threadIdx.x < kMlaTcHeads) {
    smax[threadIdx.x] = -INFINITY;
    ssum[threadIdx.x] = 0;
  }
  float acc[kMlaTcColTiles][4];
CODA_UNROLL
  for (unsigned z = 0; z < kMlaTcColTiles; ++z)
    for (int i = 0; i < 4; ++i) acc[z][i] = 0;
  const uint64_t p0 = b.split * split, p1 = p0 + split < visible ? p0 + split : visible;  // p0 >= p1: empty
  for (uint64_t pt = p0; pt < p1; pt += kMlaTcTile) {
    const uint64_t np = p1 - pt < kMlaTcTile ? p1 - pt : kMlaTcTile;
    __syncthreads();  // the previous tile's readers are done
    if (vector) {  // 16-byte pieces: rows of whole pieces, 16-byte aligned
      for (uint64_t i = threadIdx.x; i < kMlaTcTile * (rowp / 8); i += blockDim.x) {
        const uint64_t r = i / (rowp / 8), j = i % (rowp / 8) * 8;
        Piece v{};
        if (r < np && j < row) v = LoadPiece(cache + (pt + r) * row + j);
        StorePiece(&ks[r][j], v);
      }
    } else {
      for (uint64_t i = threadIdx.x; i < kMlaTcTile * rowp; i += blockDim.x) {
        const uint64_t r = i / rowp, j = i % rowp;
        ks[r][j] = r < np && j < row ? cache[(pt + r) * row + j] : uint16_t{0};
      }
    }
    __syncthreads();
    // S: this warp's k-steps for both 8-position halves of the tile.
    float s[2][4] = {};
CODA_UNROLL
    for (unsigned i = 0; i < kMlaTcSteps; ++i) {
      const uint64_t k0 = (warp + i * kMlaTcWarps) * 16;
      if (k0 >= rowp) break;
      for (int f = 0; f < 2; ++f) {
        const uint16_t* kr = &ks[f * 8 + g][k0 + 2 * tq];
        const uint32_t b[2] = {Pack(kr[0], kr[1]), Pack(kr[8], kr[9])};
        MmaBf16(s[f], qa[i][0], b);
        MmaBf16(s[f], qa[i][1], b);
      }
    }
    for (int f = 0; f < 2; ++f)
      for (int i = 0; i < 4; ++i) sp[warp][g + (i >= 2 ? 8 : 0)][f * 8 + 2 * tq + (i & 1)] = s[f][i];
    __syncthreads();
    // The online softmax, a thread per head: P as hi and lo halves, and the factor that rescales
    // what came before.
    if (threadIdx.x < kMlaTcHeads) {
      const unsigned r = threadIdx.x;
      float sc[kMlaTcTile], tile_max = -INFINITY;
      for (unsigned p = 0; p < kMlaTcTile; ++p) {
        sc[p] = -INFINITY;
        if (p < np) {
          float v = 0;
          for (unsigned w = 0; w < kMlaTcWarps; ++w) v += sp[w][r][p];
          sc[p] = v * m.scale;
          tile_max = fmaxf(tile_max, sc[p]);
        }
      }
      const float next = fmaxf(smax[r], tile_max), keep = expf(smax[r] - next);  // -inf at first: keep = 0
      float sum = ssum[r] * keep;
      for (unsigned p = 0; p < kMlaTcTile; ++p) {
        const float e = p < np ? expf(sc[p] - next) : 0.0f;
        sum += e;
        Split(e, &ph[r][p], &pl[r][p]);
      }
      smax[r] = next;
      ssum[r] = sum;
      salpha[r] = keep;
    }
    __syncthreads();
    // O = O * keep + P V for this warp's 8-column tiles (warp, warp + 4, ...).
    uint32_t pa[2][4];
    for (int r = 0; r < 4; ++r) {
      const unsigned rr = g + (r & 1 ? 8 : 0), kk = 2 * tq + (r & 2 ? 8 : 0);
      pa[0][r] = Pack(ph[rr][kk], ph[rr][kk + 1]);
      pa[1][r] = Pack(pl[rr][kk], pl[rr][kk + 1]);
    }
    const float keep_g = salpha[g], keep_g8 = salpha[g + 8];
CODA_UNROLL
    for (unsigned z = 0; z < kMlaTcColTiles; ++z) {
      const uint64_t n0 = (warp + z * kMlaTcWarps) * 8;
      if (n0 >= m.c) break;
      acc[z][0] *= keep_g;
      acc[z][1] *= keep_g;
      acc[z][2] *= keep_g8;
      acc[z][3] *= keep_g8;
      const uint64_t n = n0 + g;
      const uint32_t b[2] = {Pack(ks[2 * tq][n], ks[2 * tq + 1][n]), Pack(ks[2 * tq + 8][n], ks[2 * tq + 9][n])};
      MmaBf16(acc[z], pa[0], b);
      MmaBf16(acc[z], pa[1], b);
    }
  }
  __syncthreads();
  // part[t][h][split] = (max, sum, c values), as MlaSplitKernel writes it.
  if (threadIdx.x < kMlaTcHeads && h0 + threadIdx.x < m.heads) {
    float* o = part + ((b.tl * m.heads + h0 + threadIdx.x) * splits + b.split) * (m.c + 2);
    o[0] = smax[threadIdx.x];
    o[1] = ssum[threadIdx.x];
  }
CODA_UNROLL
  for (unsigned z = 0; z < kMlaTcColTiles; ++z) {
    const uint64_t n0 = (warp + z * kMlaTcWarps) * 8;
    if (n0 >= m.c) break;
    for (int i = 0; i < 4; ++i) {
      const uint64_t hh = h0 + g + (i >= 2 ? 8 : 0), j = n0 + 2 * tq + (i & 1);
      if (hh < m.heads && j < m.c) part[((b.tl * m.heads + hh) * splits + b.split) * (m.c + 2) + 2 + j] = acc[z][i];
    }
  }
}

// One block per (head, token): the splits' results rescaled to a common maximum and summed.
__global__ void MlaCombineKernel(const float* part, uint64_t splits, MlaShape m, uint64_t t0, float* ol) {
  const uint64_t h = blockIdx.x, tl = blockIdx.y;
  const float* p = part + (tl * m.heads + h) * splits * (m.c + 2);
  float mx = -INFINITY;
  for (uint64_t s = 0; s < splits; ++s)
    if (p[s * (m.c + 2) + 1] > 0) mx = fmaxf(mx, p[s * (m.c + 2)]);
  float total = 0;
  for (uint64_t s = 0; s < splits; ++s) {
    const float l = p[s * (m.c + 2) + 1];
    if (l > 0) total += l * expf(p[s * (m.c + 2)] - mx);
  }
  for (uint64_t j = threadIdx.x; j < m.c; j += blockDim.x) {
    float v = 0;
    for (uint64_t s = 0; s < splits; ++s) {
      const float l = p[s * (m.c + 2) + 1];
      if (l > 0) v += p[s * (m.c + 2) + 2 + j] * expf(p[s * (m.c + 2)] - mx);
    }
    ol[((t0 + tl) * m.heads + h) * m.c + j] = v / total;
  }
}

// One thread per token, as the CPU backend routes (backends/cpu/src/ops.cc, MoeGate).
__global__ void MoeRouteKernel(const float* logits, const void* bias, uint32_t bias_dtype, RouteShape r, float* sc,
                               float* sel, int32_t* ids, float* wts) {
  const uint64_t t = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x;
  if (t >= r.n) return;
  const uint64_t E = r.experts, K = r.k;
  const float* l = logits + t * E;
  float* s = sc + t * E;
  float* e = sel + t * E;
  int32_t* id = ids + t * K;
  if (r.softmax) {
    float mx = l[0];
    for (uint64_t i = 1; i < E; ++i) mx = fmaxf(mx, l[i]);
    float sum = 0;
    for (uint64_t i = 0; i < E; ++i) sum += (s[i] = expf(l[i] - mx));
    for (uint64_t i = 0; i < E; ++i) s[i] /= sum;
  } else {
    for (uint64_t i = 0; i < E; ++i) s[i] = 1.0f / (1.0f + expf(-l[i]));
  }
  for (uint64_t i = 0; i < E; ++i) e[i] = s[i] + (bias ? Load(bias, bias_dtype, i) : 0.0f);
  if (r.groups > 1) {
    // The topk_group best groups by their best score (the sum of their best two with a bias);
    // ties to the lower group, as a stable sort gives. G <= 64, checked on the host.
    const uint64_t per = E / r.groups;
    uint64_t kept = 0;
    for (uint64_t round = 0; round < r.topk_group; ++round) {
      uint64_t best = r.groups;
      float best_v = -INFINITY;
      for (uint64_t g = 0; g < r.groups; ++g) {
        if ((kept >> g) & 1) continue;
        float a = -INFINITY, b = -INFINITY;
        for (uint64_t i = 0; i < per; ++i) {
          const float v = e[g * per + i];
          if (v > a) {
            b = a;
            a = v;
          } else if (v > b) {
            b = v;
          }
        }
        const float gv = bias && per > 1 ? a + b : a;
        if (best == r.groups || gv > best_v) {
          best = g;
          best_v = gv;
        }
      }
      kept |= uint64_t{1} << best;
    }
    for (uint64_t g = 0; g < r.groups; ++g)
      if (!((kept >> g) & 1))
        for (uint64_t i = 0; i < per; ++i) e[g * per + i] = -INFINITY;
  }
  // Top k by repeated arg-max, ties to the lower index; a chosen expert is marked by its id.
  float sum = 0;
  for (uint64_t j = 0; j < K; ++j) {
    uint64_t best = E;
    float best_v = -INFINITY;
    for (uint64_t i = 0; i < E; ++i) {
      bool taken = false;
      for (uint64_t q = 0; q < j; ++q) taken = taken || static_cast<uint64_t>(id[q]) == i;
      if (taken) continue;
      if (best == E || e[i] > best_v) {
        best = i;
        best_v = e[i];
      }
    }
    id[j] = static_cast<int32_t>(best);
    sum += s[best];
  }
  for (uint64_t j = 0; j < K; ++j) {
    const float v = s[id[j]];
    wts[t * K + j] = (r.norm ? v / sum : v) * r.scaling;
  }
}

__device__ bool PairValid(const int32_t* ids, uint64_t p, const ExpertWeights* table, uint64_t experts) {
  const int32_t id = ids[p];
  return id >= 0 && static_cast<uint64_t>(id) < experts && table[id].gate.data && table[id].up.data && table[id].down.data;
}

__global__ void MoeCountKernel(const int32_t* ids, uint64_t pairs, const ExpertWeights* table, uint64_t experts,
                               uint32_t* counts) {
  for (uint64_t p = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; p < pairs;
       p += static_cast<uint64_t>(gridDim.x) * blockDim.x)
    if (PairValid(ids, p, table, experts)) atomicAdd(&counts[ids[p]], 1u);
}

// One thread: the experts are few (hundreds), and this keeps the lists' bounds exact.
__global__ void MoeScanKernel(const uint32_t* counts, uint64_t experts, uint32_t* starts, uint32_t* cursor) {
  uint32_t at = 0;
  for (uint64_t e = 0; e < experts; ++e) {
    starts[e] = cursor[e] = at;
    at += counts[e];
  }
  starts[experts] = at;
}

__global__ void MoeScatterKernel(const int32_t* ids, uint64_t pairs, const ExpertWeights* table, uint64_t experts,
                                 uint32_t* cursor, uint32_t* list) {
  for (uint64_t p = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; p < pairs;
       p += static_cast<uint64_t>(gridDim.x) * blockDim.x)
    if (PairValid(ids, p, table, experts)) list[atomicAdd(&cursor[ids[p]], 1u)] = static_cast<uint32_t>(p);
}

// Grid (experts, row blocks): each warp takes rows of the expert, for all its pairs. Up: h[slot] =
// silu(gate x) * up x, slot the pair's place in the lists. Down: out[pair] = down h[slot], by pair
// so that the sum below has a fixed order.
template <bool kUp>
__global__ void MoeProjectKernel(const float* x, uint64_t k, uint64_t d, uint64_t f, const ExpertWeights* table,
                                 const uint32_t* starts, const uint32_t* list, float* h, float* out, const uint8_t* aq,
                                 const float* aqs, bool bf16) {
  static_assert(kTileTokens == kBf16Tokens && kTileRows == 64, "the F32 and BF16 tiles step alike");
  __shared__ __align__(16) TileShared sh;
  const uint64_t e = blockIdx.x, first = starts[e], count = starts[e + 1] - first, rows = kUp ? f : d;
  if (count == 0) return;
  if (count >= kTileMinTokens) {  // many pairs: tiles of rows (grid.y takes kTileRows-row tiles)
    // FP8 (aq: the quantized token rows for up, slot rows for down) takes 16 pairs per warp.
    const uint64_t step = aq ? blockDim.x / kWarp * 16 : kTileTokens;
    for (uint64_t i0 = blockIdx.y * static_cast<uint64_t>(kTileRows); i0 < rows; i0 += gridDim.y * static_cast<uint64_t>(kTileRows)) {
      const uint64_t nr = rows - i0 < kTileRows ? rows - i0 : kTileRows;
      for (uint64_t p0 = 0; p0 < count; p0 += step) {
        const uint64_t mt = count - p0 < step ? count - p0 : step;
        const uint32_t* slots = list + first + p0;
        float* hs = h + (first + p0) * f + i0;
        auto token = [&](uint64_t m) { return uint64_t{slots[m]} / k; };
        auto slot = [&](uint64_t m) { return first + p0 + m; };
        auto put_h = [&](uint64_t m, uint64_t j, float v) { hs[m * f + j] = v; };
        // h = silu(h) * up: each thread revisits the values it wrote for the gate.
        auto gate_up = [&](uint64_t m, uint64_t j, float v) {
          const float g = hs[m * f + j];
          hs[m * f + j] = g / (1.0f + expf(-g)) * v;
        };
        auto put_out = [&](uint64_t m, uint64_t j, float v) { out[uint64_t{slots[m]} * d + i0 + j] = v; };
        // BF16 tensor cores (unless exact) for the weights the BF16 tile takes; 64 pairs a step,
        // as the F32 tiles.
        const bool tc = bf16 && (kUp ? Bf16Weight(table[e].gate) && Bf16Weight(table[e].up) : Bf16Weight(table[e].down));
        if (kUp && aq) {
          Fp8Tile(sh, table[e].gate, i0, nr, mt, aq, aqs, token, put_h);
          Fp8Tile(sh, table[e].up, i0, nr, mt, aq, aqs, token, gate_up);
        } else if (kUp && tc) {
          Bf16Tile<kWarpsPerBlock>(sh, table[e].gate, i0, nr, mt, [&](uint64_t m) { return x + token(m) * d; }, put_h);
          Bf16Tile<kWarpsPerBlock>(sh, table[e].up, i0, nr, mt, [&](uint64_t m) { return x + token(m) * d; }, gate_up);
        } else if (kUp) {
          GemmTile(sh, table[e].gate, i0, nr, mt, [&](uint64_t m) { return x + token(m) * d; }, put_h);
          GemmTile(sh, table[e].up, i0, nr, mt, [&](uint64_t m) { return x + token(m) * d; }, gate_up);
        } else if (aq) {
          Fp8Tile(sh, table[e].down, i0, nr, mt, aq, aqs, slot, put_out);
        } else if (tc) {
          Bf16Tile<kWarpsPerBlock>(sh, table[e].down, i0, nr, mt, [&](uint64_t m) { return h + slot(m) * f; }, put_out);
        } else {
          GemmTile(sh, table[e].down, i0, nr, mt, [&](uint64_t m) { return h + slot(m) * f; }, put_out);
        }
      }
    }
    return;
  }
  for (uint64_t r = blockIdx.y * static_cast<uint64_t>(kWarpsPerBlock) + threadIdx.x / kWarp; r < rows;
       r += static_cast<uint64_t>(gridDim.y) * kWarpsPerBlock)
    for (uint64_t i0 = 0; i0 < count; i0 += kTokenGroup) {
      const int nt = static_cast<int>(count - i0 < kTokenGroup ? count - i0 : kTokenGroup);
      const float* in[kTokenGroup];
      for (int j = 0; j < nt; ++j) in[j] = kUp ? x + list[first + i0 + j] / k * d : h + (first + i0 + j) * f;
      float a[kTokenGroup], b[kTokenGroup];
      RowDots(kUp ? table[e].gate : table[e].down, r, in, nt, a);
      if (kUp) RowDots(table[e].up, r, in, nt, b);
      if (threadIdx.x % kWarp == 0)
        for (int j = 0; j < nt; ++j) {
          if (kUp) h[(first + i0 + j) * f + r] = a[j] / (1.0f + expf(-a[j])) * b[j];
          else out[uint64_t{list[first + i0 + j]} * d + r] = a[j];
        }
    }
}

__global__ void MoeSumKernel(const int32_t* ids, const float* wts, uint64_t n, uint64_t k, uint64_t d,
                             const ExpertWeights* table, uint64_t experts, const float* out, float* y) {
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n * d;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const uint64_t t = i / d, c = i % d;
    float acc = 0;
    for (uint64_t j = 0; j < k; ++j)
      if (PairValid(ids, t * k + j, table, experts)) acc += wts[t * k + j] * out[(t * k + j) * d + c];
    y[i] = acc;
  }
}

unsigned Blocks(uint64_t threads, unsigned per_block) {
  const uint64_t b = (threads + per_block - 1) / per_block;
  return static_cast<unsigned>(b < 65535u * 1024u ? b : 65535u * 1024u);
}

unsigned Clamp(uint64_t v, unsigned most) { return static_cast<unsigned>(v < most ? v : most); }

}  // namespace

bool Fp8Weight(const DeviceWeight& w) { return w.dtype == CODA_DTYPE_FP8_E4M3 && Bf16Weight(w); }

bool Fp8Eligible(const LinearJob& job) { return Fp8Weight(job.w) && job.z == 1 && job.row0 == 0 && job.n >= kTileMinTokens; }

bool Bf16Eligible(const LinearJob& job) { return job.z == 1 && job.n >= kTileMinTokens && Bf16Weight(job.w); }

int LaunchLinearBf16(const LinearJob& job, cudaStream_t s) {
  const uint64_t tiles = (job.n + 63) / 64;
  if (tiles > kMaxGridYZ || !Bf16Eligible(job)) return static_cast<int>(cudaErrorInvalidValue);
  return Start(Bf16GemmKernel, dim3(Clamp((job.rows + 63) / 64, kMaxGridX), static_cast<unsigned>(tiles)),
               dim3(4 * kWarp), s, job);
}

int LaunchQuantize(const float* x, uint64_t n, uint64_t cols, uint64_t x_stride, uint8_t* xq, float* xs, bool block_major,
                   cudaStream_t s) {
  const uint64_t blocks = cols / 128;
  if (!n || !blocks) return 0;
  return Start(QuantizeKernel, dim3(Blocks(n * blocks * kWarp, kThreads)), dim3(kThreads), s, x, n, cols, x_stride, xq, xs,
               block_major ? uint64_t{1} : blocks, block_major ? n : uint64_t{1}, static_cast<const uint32_t*>(nullptr));
}

int LaunchLinearFp8(const LinearJob& job, uint8_t* xq, float* xs, cudaStream_t s) {
  const uint64_t tiles = (job.n + 63) / 64;
  if (tiles > kMaxGridYZ) return static_cast<int>(cudaErrorInvalidValue);
  int e = LaunchQuantize(job.x, job.n, job.w.cols, job.x_stride, xq, xs, false, s);
  if (!e)
    e = Start(Fp8GemmKernel, dim3(Clamp((job.rows + 63) / 64, kMaxGridX), static_cast<unsigned>(tiles)), dim3(128), s, job,
              static_cast<const uint8_t*>(xq), static_cast<const float*>(xs));
  return e;
}

void SetVectorized(DeviceWeight& w) {
  const uint64_t bytes = w.dtype == CODA_DTYPE_F32 ? 4 : w.dtype == CODA_DTYPE_BF16 ? 2 : 1;
  const bool known = w.dtype == CODA_DTYPE_F32 || w.dtype == CODA_DTYPE_BF16 || w.dtype == CODA_DTYPE_FP8_E4M3;
  w.vectorized = known && reinterpret_cast<uintptr_t>(w.data) % 16 == 0 && w.cols * bytes % 16 == 0 &&
                 (w.dtype != CODA_DTYPE_FP8_E4M3 || (w.block && w.block % 16 == 0));
}

LinearJob PlainLinear(const float* x, uint64_t n, const DeviceWeight& w, float* y) {
  LinearJob j;
  j.x = x;
  j.y = y;
  j.w = w;
  j.n = n;
  j.rows = w.rows;
  j.x_stride = w.cols;
  j.y_stride = w.rows;
  return j;
}

int LaunchEmbed(const int32_t* ids, uint64_t n, const DeviceWeight& table, float* y, cudaStream_t s) {
  return n ? Start(EmbedKernel, dim3(static_cast<unsigned>(n)), dim3(kThreads), s, ids, table.data, table.dtype, table.cols, y)
           : 0;
}

int LaunchRmsNorm(const float* x, uint64_t n, uint64_t d, uint64_t x_stride, const void* w, uint32_t w_dtype, float eps,
                  float* y, uint64_t y_stride, cudaStream_t s) {
  return n ? Start(RmsNormKernel, dim3(static_cast<unsigned>(n)), dim3(kThreads), s, x, d, x_stride, w, w_dtype, eps, y,
                   y_stride)
           : 0;
}

int LaunchAdd(const float* a, const float* b, float* y, uint64_t count, cudaStream_t s) {
  return count ? Start(AddKernel, dim3(Blocks(count, kThreads)), dim3(kThreads), s, a, b, y, count) : 0;
}

int LaunchSiluMul(float* g, const float* u, uint64_t count, cudaStream_t s) {
  return count ? Start(SiluMulKernel, dim3(Blocks(count, kThreads)), dim3(kThreads), s, g, u, count) : 0;
}

int LaunchConcat(const float* a, uint64_t p, const float* b, uint64_t q, uint64_t n, float* y, cudaStream_t s) {
  return n && p + q ? Start(ConcatKernel, dim3(Blocks(n * (p + q), kThreads)), dim3(kThreads), s, a, p, b, q, n, y) : 0;
}

int LaunchLinear(const LinearJob& job, cudaStream_t s) {
  if (!job.n || !job.rows || !job.z) return 0;
  if (job.n >= kTileMinTokens) {
    const uint64_t tiles = (job.n + kTileTokens - 1) / kTileTokens;
    if (tiles > kMaxGridYZ || job.z > kMaxGridYZ) return static_cast<int>(cudaErrorInvalidValue);
    return Start(GemmKernel, dim3(Clamp((job.rows + kTileRows - 1) / kTileRows, kMaxGridX), static_cast<unsigned>(tiles),
                                  static_cast<unsigned>(job.z)),
                 dim3(kThreads), s, job);
  }
  return Start(LinearKernel, dim3(Blocks(job.rows * job.z * kWarp, kThreads)), dim3(kThreads), s, job);
}

int LaunchRope(float* x, uint64_t n, uint64_t nvec, uint64_t dr, uint64_t t_stride, uint64_t v_stride, const float* cs,
               Position start, cudaStream_t s) {
  if (!n || !nvec || dr < 2) return 0;
  return Start(RopeKernel, dim3(Clamp(n, kMaxGridYZ), Clamp(nvec, kMaxGridYZ)), dim3(64), s, x, n, nvec, dr, t_stride,
               v_stride, cs, start);
}

int LaunchKvStore(const float* x, uint64_t n, uint64_t row, void* cache, uint32_t cache_dtype, Position start, cudaStream_t s) {
  return n && row ? Start(KvStoreKernel, dim3(Blocks(n * row, kThreads)), dim3(kThreads), s, x, n * row, row, cache,
                         cache_dtype, start)
                 : 0;
}

int LaunchMlaAbsorb(const float* q, const DeviceWeight& kv_b, const MlaShape& m, float* ql, cudaStream_t s) {
  if (!m.n || !m.heads || !m.c) return 0;
  return Start(MlaAbsorbKernel, dim3(Blocks(m.c, 128), Clamp(m.heads, kMaxGridYZ), Clamp(m.n, kMaxGridYZ)), dim3(128), s, q,
               kv_b, m, ql);
}

MlaPlan PlanMlaAttend(const MlaShape& m, uint32_t cache_dtype) {
  MlaPlan p;
  p.tensor_cores = cache_dtype == CODA_DTYPE_BF16 && m.c <= 512 && m.c + m.dr <= kMlaTcMaxRow;
  const uint64_t per_block = p.tensor_cores ? kMlaTcHeads : kMlaHeads, groups = (m.heads + per_block - 1) / per_block;
  // About 1024 blocks in flight: a decode splits its positions, a long prefill does not. The
  // count follows the cache's capacity, never the position, so that one plan (and one captured
  // graph) serves every step of a sequence; splits past the positions in use have nothing to do.
  const uint64_t want = (1024 + m.n * groups - 1) / (m.n * groups);
  p.splits = std::max<uint64_t>(1, std::min(want, (std::max(m.capacity, m.n) + 63) / 64));
  const uint64_t per_token = m.heads * p.splits * (m.c + 2) * 4;
  p.chunk = std::clamp<uint64_t>((uint64_t{256} << 20) / per_token, 1,
                                 std::min<uint64_t>({m.n, kMaxGridYZ, kMaxGridX / std::max<uint64_t>(groups, 1)}));
  p.part_bytes = p.chunk * per_token;
  return p;
}

int LaunchMlaAttend(const float* ql, const float* q, const void* cache, uint32_t cache_dtype, const MlaShape& m,
                    const MlaPlan& plan, float* part, float* ol, cudaStream_t s) {
  if (!m.n || !m.heads) return 0;
  const bool tc = plan.tensor_cores;
  const uint64_t per_block = tc ? kMlaTcHeads : kMlaHeads, groups = (m.heads + per_block - 1) / per_block;
  if (groups > kMaxGridYZ || m.heads > kMaxGridYZ || plan.splits > kMaxGridYZ || plan.chunk > kMaxGridX / groups ||
      m.c + m.dr > kMlaMaxRow ||
      (tc && (cache_dtype != CODA_DTYPE_BF16 || m.c > 512 || m.c + m.dr > kMlaTcMaxRow)))
    return static_cast<int>(cudaErrorInvalidValue);
  int e = 0;
  for (uint64_t t0 = 0; !e && t0 < m.n; t0 += plan.chunk) {
    const unsigned count = static_cast<unsigned>(std::min(plan.chunk, m.n - t0));
    const dim3 grid(static_cast<unsigned>(groups * count), static_cast<unsigned>(plan.splits));  // see MlaBlockOf
    e = tc ? Start(MlaSplitTcKernel, grid, dim3(kMlaTcWarps * kWarp), s, ql, q, static_cast<const uint16_t*>(cache), m, t0, part)
           : Start(MlaSplitKernel, grid, dim3(kMlaHeads * kWarp), s, ql, q, cache, cache_dtype, m, t0, part);
    if (!e)
      e = Start(MlaCombineKernel, dim3(static_cast<unsigned>(m.heads), count), dim3(128), s,
                static_cast<const float*>(part), plan.splits, m, t0, ol);
  }
  return e;
}

int LaunchMoeRoute(const float* logits, const void* bias, uint32_t bias_dtype, const RouteShape& r, float* sc, float* sel,
                   int32_t* ids, float* weights, cudaStream_t s) {
  return r.n ? Start(MoeRouteKernel, dim3(Blocks(r.n, 64)), dim3(64), s, logits, bias, bias_dtype, r, sc, sel, ids, weights)
             : 0;
}

int LaunchMoeExperts(const float* x, const int32_t* ids, const float* weights, uint64_t n, uint64_t k, uint64_t d,
                     uint64_t f, const ExpertWeights* table, uint64_t experts, const ExpertScratch& sc, float* y,
                     cudaStream_t s) {
  if (!n || !d) return 0;
  const uint64_t pairs = n * k;
  if (cudaError_t e = cudaMemsetAsync(sc.counts, 0, experts * 4, s); e != cudaSuccess) return static_cast<int>(e);
  int e = pairs ? Start(MoeCountKernel, dim3(Blocks(pairs, kThreads)), dim3(kThreads), s, ids, pairs, table, experts, sc.counts)
                : 0;
  if (!e && experts) e = Start(MoeScanKernel, dim3(1), dim3(1), s, static_cast<const uint32_t*>(sc.counts), experts, sc.starts,
                               sc.cursor);
  if (!e && pairs)
    e = Start(MoeScatterKernel, dim3(Blocks(pairs, kThreads)), dim3(kThreads), s, ids, pairs, table, experts, sc.cursor,
              sc.list);
  const auto* starts = static_cast<const uint32_t*>(sc.starts);
  const auto* list = static_cast<const uint32_t*>(sc.list);
  const unsigned grid_e = Clamp(experts, kMaxGridX);
  // FP8: the token rows quantized before the gate and up products, the pairs' rows of h before down.
  const bool fp8 = sc.q && d % 128 == 0 && f % 128 == 0;
  const uint8_t* aq = fp8 ? sc.q : nullptr;
  const float* aqs = fp8 ? sc.qs : nullptr;
  if (!e && fp8) e = LaunchQuantize(x, n, d, d, sc.q, sc.qs, false, s);
  if (!e && pairs && experts && f)
    e = Start(MoeProjectKernel<true>, dim3(grid_e, Clamp((f + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxGridYZ)),
              dim3(kThreads), s, x, k, d, f, table, starts, list, sc.h, sc.out, aq, aqs, sc.bf16);
  if (!e && fp8 && pairs && experts)
    e = Start(QuantizeKernel, dim3(Blocks(pairs * (f / 128) * kWarp, kThreads)), dim3(kThreads), s,
              static_cast<const float*>(sc.h), pairs, f, f, sc.q, sc.qs, f / 128, uint64_t{1}, starts + experts);
  if (!e && pairs && experts)
    e = Start(MoeProjectKernel<false>, dim3(grid_e, Clamp((d + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxGridYZ)),
              dim3(kThreads), s, x, k, d, f, table, starts, list, sc.h, sc.out, aq, aqs, sc.bf16);
  if (!e)
    e = Start(MoeSumKernel, dim3(Blocks(n * d, kThreads)), dim3(kThreads), s, ids, weights, n, k, d, table, experts,
              static_cast<const float*>(sc.out), y);
  return e;
}

}  // namespace coda::cuda
