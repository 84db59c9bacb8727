#include <sys/mman.h>

#include <cmath>
#include <cstring>

#include "coda/runtime.h"

namespace coda {

namespace {

// The tensors' bytes copied into anonymous memory aligned to and advised for 2 MB pages;
// `*base` is the file address the copy starts at.
Result<std::shared_ptr<uint8_t>> CopyWeights(const std::vector<TensorRef>& refs, const uint8_t** base) {
  const uint8_t* lo = nullptr;
  const uint8_t* hi = nullptr;
  for (const TensorRef& r : refs) {
    if (!lo || r.data < lo) lo = r.data;
    if (!hi || r.data + r.size > hi) hi = r.data + r.size;
  }
  *base = lo;
  if (!lo) return std::shared_ptr<uint8_t>();
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t bytes = static_cast<size_t>(hi - lo);
  const size_t reserve = (bytes + kHuge - 1) / kHuge * kHuge + kHuge;
  void* p = ::mmap(nullptr, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return OutOfMemory("cannot copy the weights into memory: " + std::to_string(bytes) + " bytes (drop --copy-weights)");
  // Trim to a 2 MB-aligned start so every 2 MB of weights can be one page.
  auto* raw = static_cast<uint8_t*>(p);
  auto* start = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + kHuge - 1) / kHuge * kHuge);
  const size_t head = static_cast<size_t>(start - raw), keep = reserve - kHuge;
  if (head) ::munmap(raw, head);
  if (reserve - head > keep) ::munmap(start + keep, reserve - head - keep);
#ifdef MADV_HUGEPAGE
  ::madvise(start, keep, MADV_HUGEPAGE);
#endif
  std::memcpy(start, lo, bytes);
  return std::shared_ptr<uint8_t>(start, [keep](uint8_t* q) { ::munmap(q, keep); });
}

}  // namespace

Result<std::shared_ptr<Model>> Model::Load(const std::string& path, const ModelLoadOptions& options) {
  CODA_ASSIGN_OR_RETURN(ModelFile file, ModelFile::Open(path));
  return FromFile(std::move(file), options);
}

Result<std::shared_ptr<Model>> Model::FromFile(ModelFile file, const ModelLoadOptions& options) {
  std::shared_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  const uint64_t available = AvailableMemoryBytes();
  const bool prefault = options.prefault == ModelLoadOptions::Prefault::kAlways ||
                        (options.prefault == ModelLoadOptions::Prefault::kAuto && available > 0 &&
                         m->file_.file_size() <= available / 2);
  if (prefault && !options.copy_weights && m->file_.mapping()) m->file_.mapping()->Populate();
  const ModelConfig& c = m->file_.config();
  const auto& refs = m->file_.tensors();
  const uint8_t* base = nullptr;
  if (options.copy_weights) {
    CODA_ASSIGN_OR_RETURN(m->weights_copy_, CopyWeights(refs, &base));
  }
  m->tensors_.resize(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) {
    const TensorRef& r = refs[i];
    coda_tensor& t = m->tensors_[i];
    t.dtype = static_cast<uint32_t>(r.dtype);
    t.ndim = static_cast<uint32_t>(std::min<size_t>(r.shape.size(), CODA_MAX_DIMS));
    for (uint32_t d = 0; d < t.ndim; ++d) t.shape[d] = r.shape[d];
    // The ABI passes weights as void*; backends never write them.
    t.data = m->weights_copy_ ? m->weights_copy_.get() + (r.data - base) : const_cast<uint8_t*>(r.data);
    t.block = c.fp8_block;
  }
  for (size_t i = 0; i < refs.size(); ++i)
    if (refs[i].scale >= 0) m->tensors_[i].scale = &m->tensors_[static_cast<size_t>(refs[i].scale)];

  m->yarn_active_ = YarnActive(c);
  m->inv_freq_ = RopeInvFreq(c);
  m->hparams_ = OpHparams(c, m->inv_freq_);

  for (const TensorRef& r : refs) {
    if (r.mtp || r.role == TensorRole::kEmbedding) continue;
    if (r.expert >= static_cast<int32_t>(c.n_experts_per_tok)) continue;
    m->active_weight_bytes_ += r.size;
  }
  return m;
}

}  // namespace coda
