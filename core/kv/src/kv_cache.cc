#include "coda/kv_cache.h"

#include <sys/mman.h>

#include <algorithm>

#include "coda/checked.h"

namespace coda {

void LatentKvCache::Free::operator()(uint8_t* p) const { ::munmap(p, bytes); }

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
  if (!total || *total > SIZE_MAX) return OutOfRange("KV cache size overflows");
  // Anonymous pages: zero, page-aligned, and committed only when written, so layers whose
  // cache lives on a device (and positions never reached) cost no host memory.
  const size_t bytes = static_cast<size_t>(std::max<uint64_t>(*total, 1));
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return OutOfMemory("cannot allocate the KV cache: " + std::to_string(bytes) + " bytes for " +
                       std::to_string(n_ctx) + " positions (lower --n-ctx)");
  c->data_ = std::unique_ptr<uint8_t, Free>(static_cast<uint8_t*>(p), Free{bytes});
  return c;
}

}  // namespace coda
