// cuBLASLt's block-scaled FP8 product (CUDA 12.9 and later, on sm_90): DeepSeek-V3's scheme as
// NVIDIA ships it, 128x128 weight blocks and 1x128 activation tiles with F32 scales. Loaded at run
// time, so that the plugin still needs only the driver; where the library is missing, too old, or
// gives a wrong product, the backend's own FP8 kernel (kernels.h, LaunchLinearFp8) does the work.
//
// Nothing of it has run on a GPU here, so Open() proves the scale layouts (as the cuBLAS guide
// describes them) before anything uses them: a product against sums on the host, with a different
// scale for every block.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels.h"

namespace coda::cuda {

// Products of fewer tokens stay with the own kernels (prefill is where cuBLASLt pays; decode steps,
// which CUDA graphs hold, never reach it). Not yet tuned on a GPU: coda-cuda-bench prints both.
constexpr uint64_t kLtMinTokens = 64;

class LtFp8 {
 public:
  // cuBLASLt loaded and checked on the current device, or null and why not.
  static std::unique_ptr<LtFp8> Open(cudaStream_t s, std::string* why);
  ~LtFp8();
  LtFp8(const LtFp8&) = delete;
  LtFp8& operator=(const LtFp8&) = delete;

  // cuBLASLt takes the job: one the own FP8 kernel takes (kernels.h, Fp8Eligible) with whole
  // groups of 4 blocks of columns, rows in multiples of 16, results packed (y_stride = rows),
  // tokens in multiples of 4, and a shape its heuristic accepts (asked once per shape, on the host).
  bool Takes(const LinearJob& job);
  // y = the job's product from xq [n, cols] (256-byte aligned) and xs block-major [cols / 128, n]
  // (LaunchQuantize). False when cuBLASLt refused the launch (nothing was queued): the caller runs
  // its own kernel.
  bool Run(const LinearJob& job, const uint8_t* xq, const float* xs, cudaStream_t s);
  // What Open() found, for the backend's description.
  const std::string& Summary() const { return summary_; }

 private:
  struct Impl;
  explicit LtFp8(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::string summary_;
};

}  // namespace coda::cuda
