#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>

#include "coda/file.h"
#include "coda/runtime.h"

namespace coda {

namespace {

using Progress = std::function<void(std::string_view, uint64_t, uint64_t)>;

// The tensors' bytes copied into anonymous memory aligned to and advised for 2 MB pages;
// `*base` is the file address the copy starts at.
Result<std::shared_ptr<uint8_t>> CopyWeights(const std::vector<TensorRef>& refs, const uint8_t** base,
                                             const Progress& progress) {
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
    return OutOfMemory("cannot copy the weights into memory: " + std::to_string(bytes) + " bytes (use --weights map)");
  // Trim to a 2 MB-aligned start so every 2 MB of weights can be one page.
  auto* raw = static_cast<uint8_t*>(p);
  auto* start = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + kHuge - 1) / kHuge * kHuge);
  const size_t head = static_cast<size_t>(start - raw), keep = reserve - kHuge;
  if (head) ::munmap(raw, head);
  if (reserve - head > keep) ::munmap(start + keep, reserve - head - keep);
  std::shared_ptr<uint8_t> copy(start, [keep](uint8_t* q) { ::munmap(q, keep); });
#ifdef MADV_HUGEPAGE
  ::madvise(start, keep, MADV_HUGEPAGE);
#endif
  constexpr size_t kStep = size_t{256} << 20;
  for (size_t at = 0; at < bytes; at += kStep) {
    std::memcpy(start + at, lo + at, std::min(kStep, bytes - at));
    if (progress) progress("copying the weights", std::min(bytes, at + kStep), bytes);
  }
  return copy;
}

bool IsStored(const ExpertStore& store, const TensorRef& r) { return r.expert >= 0 && store.Serves(r.layer); }

// Every tensor the expert store does not serve, read from the file (not through the mapping,
// so that a file that shrinks is an error here, not a crash later) into memory laid out like
// the file; `*base` is the mapping address the copy stands for.
Result<std::shared_ptr<uint8_t>> ReadOtherWeights(const ModelFile& file, const ExpertStore& store, const uint8_t** base,
                                                  const Progress& progress) {
  const uint8_t* lo = nullptr;
  const uint8_t* hi = nullptr;
  uint64_t total = 0, read = 0;
  for (const TensorRef& r : file.tensors()) {
    if (IsStored(store, r)) continue;
    if (!lo || r.data < lo) lo = r.data;
    if (!hi || r.data + r.size > hi) hi = r.data + r.size;
    total += r.size;
  }
  *base = lo;
  if (!lo) return std::shared_ptr<uint8_t>();
  // Reserved for the span, but only the pages of the tensors read in are ever touched.
  const size_t span = static_cast<size_t>(hi - lo);
  void* p = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return OutOfMemory("cannot reserve " + std::to_string(span) + " bytes for the weights");
  std::shared_ptr<uint8_t> copy(static_cast<uint8_t*>(p), [span](uint8_t* q) { ::munmap(q, span); });
#ifdef MADV_HUGEPAGE
  ::madvise(p, span, MADV_HUGEPAGE);
#endif
  const int fd = ::open(file.path().c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return IoError(file.path() + ": cannot open: " + std::strerror(errno));
  const uint8_t* start = file.mapping()->data();
  for (const TensorRef& r : file.tensors()) {
    if (IsStored(store, r) || r.size == 0) continue;
    uint8_t* dst = copy.get() + (r.data - lo);
    const uint64_t at = static_cast<uint64_t>(r.data - start);
    for (uint64_t done = 0; done < r.size;) {
      const ssize_t n = ::pread(fd, dst + done, r.size - done, static_cast<off_t>(at + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const std::string why = n == 0 ? "the file ends early (it shrank?)" : std::strerror(errno);
        ::close(fd);
        return IoError(file.path() + ": reading tensor '" + r.name + "': " + why);
      }
      done += static_cast<uint64_t>(n);
    }
    // Our copy is what is used: the page cache need not keep the file's.
    ::posix_fadvise(fd, static_cast<off_t>(at), static_cast<off_t>(r.size), POSIX_FADV_DONTNEED);
    read += r.size;
    if (progress) progress("reading the weights", read, total);
  }
  ::close(fd);
  return copy;
}

}  // namespace

Result<std::shared_ptr<Model>> Model::Load(const std::string& path, const ModelLoadOptions& options) {
  CODA_ASSIGN_OR_RETURN(ModelFile file, ModelFile::Open(path));
  return FromFile(std::move(file), options);
}

Result<std::shared_ptr<Model>> Model::FromFile(ModelFile file, const ModelLoadOptions& options) {
  std::shared_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  const ModelConfig& c = m->file_.config();
  const auto& refs = m->file_.tensors();
  const uint64_t available = MemoryAvailableToProcess();
  uint64_t expert_bytes = 0;
  for (const ExpertBlockRef& b : m->file_.expert_blocks()) expert_bytes += b.stride * b.n_experts;
  const uint64_t other_bytes = m->file_.file_size() - std::min(m->file_.file_size(), expert_bytes);
  // Offload when the file would not fit with room to spare (the KV cache, activations, the rest of
  // the system): a tenth of what is available, at least 512 MB (a quarter when that is less).
  const uint64_t margin = std::max<uint64_t>(available / 10, std::min<uint64_t>(uint64_t{512} << 20, available / 4));
  const bool offload =
      m->file_.mapping() && expert_bytes > 0 &&
      (options.offload == ModelLoadOptions::Offload::kOn ||
       (options.offload == ModelLoadOptions::Offload::kAuto && available > 0 && m->file_.file_size() + margin > available));
  if (options.offload == ModelLoadOptions::Offload::kOn && !offload)
    return InvalidArgument(m->file_.path() + ": nothing to offload (the model has no routed experts, or is not a file)");
  const uint8_t* base = nullptr;
  if (offload) {
    ExpertStoreOptions so;
    so.policy = options.eviction;
    so.ram_budget = options.expert_budget;
    if (so.ram_budget == 0) {
      const uint64_t need = other_bytes + margin;
      so.ram_budget = available > need ? available - need : 0;
    }
    CODA_ASSIGN_OR_RETURN(m->experts_, ExpertStore::Create(m->file_, so));
    CODA_ASSIGN_OR_RETURN(m->weights_copy_, ReadOtherWeights(m->file_, *m->experts_, &base, options.progress));
    m->weights_held_ = "other weights read into memory, routed experts in an expert store of " +
                       std::to_string(m->experts_->capacity()) + " slots";
  } else {
    using W = ModelLoadOptions::Weights;
    const MappedFile* mapping = m->file_.mapping();
    const uint64_t size = m->file_.file_size();
    const bool prefault = options.prefault == ModelLoadOptions::Prefault::kAlways ||
                          (options.prefault == ModelLoadOptions::Prefault::kAuto && available > 0 && size <= available / 2);
    // The copy comes from the mapping, so reading the file in is needed either way.
    if (prefault && options.weights != W::kCopy && mapping) {
      mapping->Populate([&](uint64_t done, uint64_t total) {
        if (options.progress) options.progress("reading the file", done, total);
      });
    }
    bool copy = options.weights == W::kCopy;
    std::string why;
    if (options.weights == W::kAuto && mapping && prefault) {
      // Only a populated mapping says how the page cache holds the file.
      const double huge = mapping->HugePageShare();
      const int percent = static_cast<int>(huge * 100);
      if (huge < 0) {
        why = "mapped (how the kernel maps it is unknown)";
      } else if (huge >= 0.9) {
        why = "mapped (" + std::to_string(percent) + "% in 2 MB pages)";
      } else if (!AnonymousHugePagesEnabled()) {
        why = "mapped (" + std::to_string(percent) + "% in 2 MB pages; transparent huge pages are off, a copy would not help)";
      } else if (size + margin > available) {
        why = "mapped (" + std::to_string(percent) + "% in 2 MB pages; a copy into 2 MB pages would not fit in memory)";
      } else {
        copy = true;
        why = "copied into 2 MB pages (the page cache held " + std::to_string(percent) + "% of the file in them)";
      }
    } else if (!copy) {
      why = "mapped";
      if (mapping && !prefault && options.weights == W::kAuto)
        why += options.prefault == ModelLoadOptions::Prefault::kNever
                   ? " (read in on demand)"
                   : " (read in on demand: the file takes more than half of the available memory)";
    } else {
      why = "copied into 2 MB pages (--weights copy)";
    }
    if (copy && mapping) {
      CODA_ASSIGN_OR_RETURN(m->weights_copy_, CopyWeights(refs, &base, options.progress));
      // The copy is what is read from now on; the mapping's pages need not stay in this process.
      mapping->DontNeed(0, size);
    }
    m->weights_held_ = mapping ? why : "in memory";
  }
  m->tensors_.resize(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) {
    const TensorRef& r = refs[i];
    coda_tensor& t = m->tensors_[i];
    t.dtype = static_cast<uint32_t>(r.dtype);
    t.ndim = static_cast<uint32_t>(std::min<size_t>(r.shape.size(), CODA_MAX_DIMS));
    for (uint32_t d = 0; d < t.ndim; ++d) t.shape[d] = r.shape[d];
    // The ABI passes weights as void*; backends never write them. With an expert store, routed
    // experts keep their place in the mapping, which nothing reads: a session hands backends the
    // store's copy of the experts a token routes to.
    const bool copied = m->weights_copy_ && !(m->experts_ && IsStored(*m->experts_, r));
    t.data = copied ? m->weights_copy_.get() + (r.data - base) : const_cast<uint8_t*>(r.data);
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
