// The MLA latent KV cache of one sequence: per layer and position, the normalized compressed
// latent (kv_lora_rank values) and the rotated shared rope key (qk_rope_head_dim values).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "coda/dtype.h"
#include "coda/model_config.h"
#include "coda/status.h"

namespace coda {

class LatentKvCache {
 public:
  // dtype: kBF16 (default) or kF32. Fails with kOutOfMemory when it cannot be allocated.
  static Result<std::unique_ptr<LatentKvCache>> Create(const ModelConfig& config, uint32_t n_ctx, DType dtype);

  uint32_t n_ctx() const { return n_ctx_; }
  uint32_t n_layers() const { return n_layers_; }
  uint32_t row() const { return row_; }  // values per position and layer
  DType dtype() const { return dtype_; }
  // Exactly layers x (kv_lora_rank + qk_rope_head_dim) x element size.
  uint64_t bytes_per_token() const { return static_cast<uint64_t>(n_layers_) * row_ * DTypeSize(dtype_); }
  uint64_t bytes_total() const { return bytes_per_token() * n_ctx_; }

  // Positions filled so far.
  uint32_t n_past() const { return n_past_; }
  void set_n_past(uint32_t n) { n_past_ = n; }

  // One layer's [n_ctx, row] slab.
  void* layer_data(uint32_t layer) { return data_.get() + static_cast<uint64_t>(layer) * layer_bytes(); }
  const void* layer_data(uint32_t layer) const { return data_.get() + static_cast<uint64_t>(layer) * layer_bytes(); }
  uint64_t layer_bytes() const { return static_cast<uint64_t>(n_ctx_) * row_ * DTypeSize(dtype_); }

 private:
  LatentKvCache() = default;
  struct Free {
    size_t bytes;
    void operator()(uint8_t* p) const;
  };
  std::unique_ptr<uint8_t, Free> data_;
  uint32_t n_ctx_ = 0, n_layers_ = 0, row_ = 0, n_past_ = 0;
  DType dtype_ = DType::kBF16;
};

}  // namespace coda
