// The graph ops on the CPU, on F32 activations; weights in F32, BF16 or FP8 with block scales.
#pragma once

#include <string>
#include <vector>

#include "coda_backend.h"
#include "coda_ops.hpp"
#include "gemm_int8.h"
#include "kernels.h"
#include "thread_pool.h"

namespace coda::cpu {

// Per-instance state the ops share: kernels, threads, reusable scratch memory.
struct Context {
  const Kernels* k;
  ThreadPool* pool;
  // From this many tokens on, Linear decodes weight panels to F32 and multiplies with oneDNN's
  // SGEMM; below, it streams the weights through the register-decoding kernels.
  size_t gemm_min_tokens = 32;
  // Off: FP8 weights with int8_min_tokens tokens or more go through the int8 products of
  // gemm_int8.h where the CPU has them (from 8 tokens they beat the register path: 2x at 8, 5x
  // at 24, measured on a 1024 x 2048 expert). On (CODA_BACKEND_EXACT_PRODUCTS): always F32.
  bool exact_products = false;
  size_t int8_min_tokens = 8;
  std::vector<std::vector<uint8_t>> thread_panel8;  // one per pool thread: int8 weight panels
  Int8Activations act8;                             // Linear's quantized input
  std::vector<std::vector<float>> thread_scratch;  // one per pool thread
  std::vector<std::vector<float>> thread_panel;    // one per pool thread: Linear's F32 panels
  std::vector<float> scratch[6];                   // op-level temporaries
  std::vector<const float*> part_ptrs[2];          // attention's split parts, merged per head
};

// Empty when this backend runs the op with these dtypes and shapes (its signature in coda_ops.h
// included), else the reason.
std::string CheckOp(const coda_op& op);
// Runs an op CheckOp() accepted. Errors are returned as a message; empty means success.
std::string RunOp(Context& ctx, const coda_op& op);

// y[n, rows] = x[n, cols] W^T (exposed for tests and benchmarks).
std::string Linear(Context& ctx, const Weight& w, const float* x, size_t n, float* y);

// Several independent Linears; with few tokens their rows share one parallel region, so small
// matrices (routed experts) stream back to back instead of each paying a region's start-up.
struct LinearJob {
  Weight w;
  const float* x;
  size_t n;
  float* y;
};
std::string LinearBatch(Context& ctx, const std::vector<LinearJob>& jobs);
Weight ToWeight(const coda_tensor& t);

}  // namespace coda::cpu
