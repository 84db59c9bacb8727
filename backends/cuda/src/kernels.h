// The CUDA backend's kernels, launched on a stream. Plain C++ declarations, so that the host
// code compiles with the C++ compiler; the definitions are in kernels.cu (built by nvcc, or by
// the C++ compiler against the CPU emulator in ../emu for libcoda-backend-cuda-emu.so).
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
  // Rows start 16-byte aligned and (FP8) blocks hold whole 16-byte pieces: each lane then
  // reads 16 bytes at a time, as HBM wants (set by SetVectorized).
  bool vectorized = false;
};
// Sets w.vectorized from its address, dtype, width and block.
void SetVectorized(DeviceWeight& w);

// y[t][i] = sum_c x[t][c] W[row0 + b * w_zrows + i][c] for tokens t < n, rows i < rows and
// batches b < z, where token t's x starts at x + t * x_stride + b * x_zoff and its y at
// y + t * y_stride + b * y_zoff. A plain Linear is z = 1 with strides of cols and rows; MLA
// applies each head's slice of kv_b_proj as a batch.
struct LinearJob {
  const float* x = nullptr;
  float* y = nullptr;
  DeviceWeight w;
  uint64_t n = 0, rows = 0, row0 = 0;
  uint64_t x_stride = 0, y_stride = 0;
  uint64_t z = 1, x_zoff = 0, y_zoff = 0, w_zrows = 0;
};
// A plain y = x W^T job over n tokens.
LinearJob PlainLinear(const float* x, uint64_t n, const DeviceWeight& w, float* y);

// One routed expert's three projections; an absent expert has null data.
struct ExpertWeights {
  DeviceWeight gate, up, down;
};

// Each returns the launch's error (cudaGetLastError) as an int; 0 is success.
// y[t] = table[ids[t]] for t < n; ids were checked against the table's rows on the host.
int LaunchEmbed(const int32_t* ids, uint64_t n, const DeviceWeight& table, float* y, cudaStream_t s);
// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w for n rows of d values, rows x_stride and y_stride
// apart (in place when x == y); w F32 or BF16.
int LaunchRmsNorm(const float* x, uint64_t n, uint64_t d, uint64_t x_stride, const void* w, uint32_t w_dtype, float eps,
                  float* y, uint64_t y_stride, cudaStream_t s);
// y = a + b over `count` values.
int LaunchAdd(const float* a, const float* b, float* y, uint64_t count, cudaStream_t s);
// g[i] = silu(g[i]) * u[i], silu(v) = v / (1 + e^-v), over `count` values.
int LaunchSiluMul(float* g, const float* u, uint64_t count, cudaStream_t s);
// y[t] = (a[t], b[t]) for n rows of p and q values.
int LaunchConcat(const float* a, uint64_t p, const float* b, uint64_t q, uint64_t n, float* y, cudaStream_t s);
// Exact products in F32: below 16 tokens one warp per weight row, reading it once per group of 4
// tokens in 16-byte pieces (decode is memory-bound); from 16 tokens tiles through shared memory.
int LaunchLinear(const LinearJob& job, cudaStream_t s);

// FP8 products on tensor cores (sm_89 and later; not exact: activations are quantized, see
// kernels.cu): for a job with FP8 weights in 128x128 blocks, z = 1, row0 = 0 and 16 tokens or
// more. xq and xs are scratch of n * cols bytes and n * cols / 128 floats.
bool Fp8Eligible(const LinearJob& job);
// An FP8 weight the tensor-core products take: 128x128 blocks, whole 128-column blocks, aligned.
bool Fp8Weight(const DeviceWeight& w);
constexpr uint64_t kTileMinTokensForFp8 = 16;
// BF16 products on tensor cores (sm_80 and later; not exact, though near: activations split into
// two BF16 halves, see kernels.cu): for a job with BF16 weights, or FP8 weights as Fp8Weight
// takes them (widened to BF16 exactly, for GPUs without FP8 tensor cores), z = 1 and 16 tokens or
// more.
bool Bf16Eligible(const LinearJob& job);
int LaunchLinearBf16(const LinearJob& job, cudaStream_t s);
// Activations for FP8 products: x [n, cols] (rows x_stride apart) quantized per token and
// 128-column block to E4M3 codes xq [n, cols], scale = amax / 448, the scales into xs token-major
// [n, cols / 128] (the own kernels) or block-major [cols / 128, n] (cuBLASLt, lt.h).
int LaunchQuantize(const float* x, uint64_t n, uint64_t cols, uint64_t x_stride, uint8_t* xq, float* xs, bool block_major,
                   cudaStream_t s);
int LaunchLinearFp8(const LinearJob& job, uint8_t* xq, float* xs, cudaStream_t s);

// ---- MLA attention (coda_ops.h, MlaAttention), in the absorbed form ----
// The position of an op's first token: `value`, plus the word at `dev` when it is set. A CUDA
// graph replays its kernels with the arguments they were captured with, so a step that is
// replayed reads its position from device memory (steps.cc); other work passes it as is.
struct Position {
  uint64_t value = 0;
  const uint32_t* dev = nullptr;
};
// Rotates nvec vectors of dr values per token in place, on interleaved pairs: vector v of token t
// starts at x + t * t_stride + v * v_stride; cs holds (cos, sin) per position and pair, from
// position 0, and token t is at position start + t.
int LaunchRope(float* x, uint64_t n, uint64_t nvec, uint64_t dr, uint64_t t_stride, uint64_t v_stride, const float* cs,
               Position start, cudaStream_t s);
// Cache rows [start, start + n) = the n rows of `row` values at x, as F32 or BF16 (rounded to
// nearest even).
int LaunchKvStore(const float* x, uint64_t n, uint64_t row, void* cache, uint32_t cache_dtype, Position start, cudaStream_t s);
struct MlaShape {
  uint64_t n = 0, heads = 0, c = 0, dn = 0, dr = 0, dv = 0;
  Position start;
  uint64_t capacity = 0;  // the cache's positions: the plan depends on it, not on start
  float scale = 0;
};
// ql[t][h] = q_nope[t][h] W_UK[h] (c values) from q [n, heads, dn + dr] and kv_b_proj.
int LaunchMlaAbsorb(const float* q, const DeviceWeight& kv_b, const MlaShape& m, float* ql, cudaStream_t s);
// Attention over the cache rows 0 .. start + t of each token t, in `splits` equal ranges of the
// start + n positions (sized on the device, so that a replayed graph splits the positions it
// sees), tokens in chunks of `chunk`; part holds part_bytes of partial results.
// With a BF16 cache (rows of up to 576 values, c <= 512) the scores and the attended latent run
// on tensor cores (mma BF16, 16 heads a block; Q and P in two BF16 halves each, every value within
// 2^-16 of F32's), else on the CUDA cores in F32.
struct MlaPlan {
  uint64_t splits = 1, chunk = 1, part_bytes = 0;
  bool tensor_cores = false;
};
MlaPlan PlanMlaAttend(const MlaShape& m, uint32_t cache_dtype);
// ol[t][h] = the attended latent (c values): softmax over the scores of (ql, q_pe) against the
// cache rows. Each block reads its split's rows once for its group of heads (16 on the tensor
// cores, else kMlaHeads); the blocks of one split, every group and token, are launched side by
// side so that the other groups' reads of a row hit L2 and HBM sees it once per step.
int LaunchMlaAttend(const float* ql, const float* q, const void* cache, uint32_t cache_dtype, const MlaShape& m,
                    const MlaPlan& plan, float* part, float* ol, cudaStream_t s);
// Heads per block, cache rows per shared-memory tile, and the longest latent row (c + dr): the
// block's shared memory, (kMlaHeads + kMlaTile) * kMlaMaxRow floats, stays within 48 KiB.
constexpr uint64_t kMlaHeads = 8, kMlaTile = 8, kMlaMaxRow = 640;

// ---- MoE (coda_ops.h, MoeGate and MoeExperts) ----
struct RouteShape {
  uint64_t n = 0, experts = 0, k = 0, groups = 1, topk_group = 0;
  bool softmax = true, norm = false;
  float scaling = 1;
};
// From router logits [n, experts]: ids and weights [n, k], exactly by the CPU backend's rules.
// sc and sel: n * experts floats of scratch; bias null or [experts] in bias_dtype.
int LaunchMoeRoute(const float* logits, const void* bias, uint32_t bias_dtype, const RouteShape& r, float* sc, float* sel,
                   int32_t* ids, float* weights, cudaStream_t s);
// The experts of n tokens in one grouped pass: pairs (t, j) are listed per expert, each expert's
// gate and up rows read once for all its pairs, then its down rows, then each token's pairs are
// summed in j order (so the result does not depend on the order of the lists). A pair whose id
// is outside [0, experts) or names an absent expert adds nothing (the host checks ids it did not
// see this backend's MoeGate write).
struct ExpertScratch {
  uint32_t* counts = nullptr;  // experts
  uint32_t* starts = nullptr;  // experts + 1
  uint32_t* cursor = nullptr;  // experts
  uint32_t* list = nullptr;    // n * k pair indices
  float* h = nullptr;          // n * k * f
  float* out = nullptr;        // n * k * d
  // FP8 products on tensor cores (every named expert Fp8Weight, d and f multiples of 128): codes
  // and scales of max(n * d, n * k * f) values; null for F32 products.
  uint8_t* q = nullptr;
  float* qs = nullptr;
  // Without q: experts whose weights are BF16 (or FP8 in 128x128 blocks) multiply on the BF16
  // tensor cores from 16 pairs (Bf16Eligible's products), unless exact.
  bool bf16 = false;
};
int LaunchMoeExperts(const float* x, const int32_t* ids, const float* weights, uint64_t n, uint64_t k, uint64_t d,
                     uint64_t f, const ExpertWeights* table, uint64_t experts, const ExpertScratch& sc, float* y,
                     cudaStream_t s);

}  // namespace coda::cuda
