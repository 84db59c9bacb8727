#include "coda/kv_cache.h"

#include <cstdlib>
#include <cstring>

#include "coda/checked.h"

namespace coda {

void LatentKvCache::Free::operator()(uint8_t* p) const { std::free(p); }

Result<std::unique_ptr<LatentKvCache>> LatentKvCache::Create(const ModelConfig& config, uint32_t n_ctx, DType dtype) {
  if (dtype != DType::kBF16 && dtype != DType::kF32)
    return InvalidArgument("KV cache dtype must be bf16 or f32, not " + std::string(DTypeName(dtype)));
  if (n_ctx == 0) return InvalidArgument("context length (n_ctx) must be at least 1");
  std::unique_ptr<LatentKvCache> c(new LatentKvCache());
  c->n_ctx_ = n_ctx;
  c->n_layers_ = config.n_layers;
  c->row_ = config.kv_lora_rank + config.qk_rope_head_dim;
  c->dtype_ = dtype;
  const auto total = CheckedMul(c->bytes_per_token(), n_ctx);
  if (!total) return OutOfRange("KV cache size overflows");
  // 64-byte aligned, rounded up as aligned_alloc requires.
  const uint64_t bytes = *CheckedAlignUp(std::max<uint64_t>(*total, 64), 64);
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(bytes)));
  if (!p)
    return OutOfMemory("cannot allocate the KV cache: " + std::to_string(bytes) + " bytes for " +
                       std::to_string(n_ctx) + " positions (lower --n-ctx)");
  std::memset(p, 0, static_cast<size_t>(bytes));
  c->data_.reset(p);
  return c;
}

}  // namespace coda
