#include "convert.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "coda/checked.h"
#include "coda/file.h"
#include "coda/hf_config.h"
#include "coda/hf_text_files.h"
#include "coda/json.h"
#include "coda/model_file.h"
#include "coda/safetensors.h"

namespace coda::convert {

namespace {

constexpr uint64_t kChunkBytes = 8u << 20;        // streaming granularity for plain copies

bool Cancelled(const Options& o) { return o.cancel && o.cancel->load(std::memory_order_relaxed); }

// Writes a sequence of float rows as `dtype`, converting on the way.
void EncodeFloats(const float* src, size_t n, DType dtype, std::vector<uint8_t>& out) {
  out.resize(n * DTypeSize(dtype));
  switch (dtype) {
    case DType::kF32: std::memcpy(out.data(), src, n * 4); break;
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t v = F32ToBf16(src[i]);
        std::memcpy(out.data() + 2 * i, &v, 2);
      }
      break;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t v = F32ToF16(src[i]);
        std::memcpy(out.data() + 2 * i, &v, 2);
      }
      break;
    default: out.clear(); break;
  }
}

void DecodeFloats(const uint8_t* src, size_t n, DType dtype, float* out) {
  for (size_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::kF32: std::memcpy(&out[i], src + 4 * i, 4); break;
      case DType::kBF16: {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        out[i] = Bf16ToF32(v);
        break;
      }
      case DType::kF16: {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        out[i] = F16ToF32(v);
        break;
      }
      case DType::kFP8_E4M3: out[i] = Fp8E4M3ToF32(src[i]); break;
      default: out[i] = 0; break;
    }
  }
}

// The dtype a tensor is stored as after applying --dtype (only ever up-converts).
DType TargetDType(DType src, const std::optional<DType>& want) {
  if (!want || !IsFloat(src)) return src;
  auto rank = [](DType t) { return t == DType::kF32 ? 3 : (t == DType::kBF16 || t == DType::kF16) ? 2 : 1; };
  return rank(*want) > rank(src) ? *want : src;
}

// Whether --dtype fp8 / --head-dtype fp8 quantize this tensor.
bool QuantizedToFp8(const TensorSpec& t, const Options& o) {
  return t.shape.size() == 2 && ((o.fp8_weights && t.role == TensorRole::kProjection) ||
                                 (o.fp8_head && t.role == TensorRole::kHead));
}

// A model with FP8 tensors is an FP8 model (the block size is the config's, 128 by default).
void MarkFp8(const std::vector<DType>& dtypes, ModelConfig* config) {
  if (std::find(dtypes.begin(), dtypes.end(), DType::kFP8_E4M3) != dtypes.end()) config->fp8 = true;
}

// The checkpoint's tokenizer, chat template and sampling defaults, to be stored in the file.
Status AddTextFiles(const std::string& dir, ModelExtras* extras) {
  CODA_ASSIGN_OR_RETURN(HfTextFiles f, ReadHfTextFiles(dir));
  extras->tokenizer_json = std::move(f.tokenizer_json);
  extras->tokenizer_config_json = std::move(f.tokenizer_config_json);
  extras->chat_template = std::move(f.chat_template);
  extras->temperature = f.temperature;
  extras->top_p = f.top_p;
  return Status::Ok();
}

// Streams plan tensors into the writer; `fill(i)` produces tensor i's bytes through `emit`.
class Streamer {
 public:
  Streamer(ModelWriter& w, const Options& o) : w_(w), o_(o) {
    for (size_t i = 0; i < w.plan().size(); ++i) total_ += w.tensor_size(i);
  }
  Status Emit(std::span<const uint8_t> bytes) {
    if (Cancelled(o_)) return Status(StatusCode::kInvalidArgument, "interrupted");
    CODA_RETURN_IF_ERROR(w_.Append(bytes));
    done_ += bytes.size();
    if (o_.progress) o_.progress(done_, total_);
    return Status::Ok();
  }

 private:
  ModelWriter& w_;
  const Options& o_;
  uint64_t done_ = 0, total_ = 0;
};

// FP8 weight [rows, cols] with block scales -> dequantized rows in `dtype`, 128 rows at a time.
Status DequantizeFp8(std::span<const uint8_t> q, std::span<const uint8_t> scales, const std::vector<uint64_t>& shape,
                     uint32_t block, DType dtype, Streamer& s) {
  const uint64_t rows = shape[0], cols = shape[1], scols = CeilDiv(cols, block);
  std::vector<float> f(static_cast<size_t>(cols) * block);
  std::vector<uint8_t> bytes;
  for (uint64_t r0 = 0; r0 < rows; r0 += block) {
    const uint64_t nr = std::min<uint64_t>(block, rows - r0);
    for (uint64_t r = 0; r < nr; ++r) {
      for (uint64_t c = 0; c < cols; ++c) {
        float sc;
        std::memcpy(&sc, scales.data() + 4 * ((r0 / block) * scols + c / block), 4);
        f[r * cols + c] = Fp8E4M3ToF32(q[(r0 + r) * cols + c]) * sc;
      }
    }
    EncodeFloats(f.data(), static_cast<size_t>(nr * cols), dtype, bytes);
    CODA_RETURN_IF_ERROR(s.Emit(bytes));
  }
  return Status::Ok();
}

// Quantizes `nr` rows (at most one block of them) of `cols` floats to FP8 E4M3, a scale per
// block x block tile: scale = the tile's largest magnitude / 448 (E4M3's largest), as DeepSeek's
// checkpoints do. `scales` receives one row of ceil(cols / block) scales.
void QuantizeFp8Rows(const float* f, uint64_t nr, uint64_t cols, uint32_t block, uint8_t* out, float* scales) {
  for (uint64_t c0 = 0, cb = 0; c0 < cols; c0 += block, ++cb) {
    const uint64_t c1 = std::min<uint64_t>(cols, c0 + block);
    float amax = 0;
    for (uint64_t r = 0; r < nr; ++r)
      for (uint64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(f[r * cols + c]));
    const float scale = amax > 0 ? amax / 448.0f : 1.0f;
    scales[cb] = scale;
    for (uint64_t r = 0; r < nr; ++r)
      for (uint64_t c = c0; c < c1; ++c) out[r * cols + c] = F32ToFp8E4M3(f[r * cols + c] / scale);
  }
}

// A 2-D float weight -> FP8 rows streamed, then its block scales as the next tensor. A value that
// is not finite is refused: no scale represents it.
Status QuantizeFp8(std::span<const uint8_t> src, DType from, const std::vector<uint64_t>& shape, uint32_t block,
                   const std::string& where, ModelWriter& w, size_t scale_index, Streamer& s) {
  const uint64_t rows = shape[0], cols = shape[1], scols = CeilDiv(cols, block);
  std::vector<float> f(static_cast<size_t>(cols) * block), scales(CeilDiv(rows, block) * scols);
  std::vector<uint8_t> bytes(static_cast<size_t>(cols) * block);
  const size_t esize = DTypeSize(from);
  for (uint64_t r0 = 0; r0 < rows; r0 += block) {
    const uint64_t nr = std::min<uint64_t>(block, rows - r0);
    DecodeFloats(src.data() + r0 * cols * esize, static_cast<size_t>(nr * cols), from, f.data());
    for (uint64_t k = 0; k < nr * cols; ++k)
      if (!std::isfinite(f[k]))
        return Corrupt(where + ": value " + std::to_string(f[k]) + " at row " + std::to_string(r0 + k / cols) +
                       ", column " + std::to_string(k % cols) + " cannot be quantized to FP8");
    QuantizeFp8Rows(f.data(), nr, cols, block, bytes.data(), &scales[(r0 / block) * scols]);
    CODA_RETURN_IF_ERROR(s.Emit({bytes.data(), static_cast<size_t>(nr * cols)}));
  }
  CODA_RETURN_IF_ERROR(w.BeginTensor(scale_index));
  return s.Emit({reinterpret_cast<const uint8_t*>(scales.data()), scales.size() * 4});
}

Status CopyConverted(std::span<const uint8_t> src, DType from, DType to, Streamer& s) {
  if (from == to) {
    for (uint64_t off = 0; off < src.size(); off += kChunkBytes)
      CODA_RETURN_IF_ERROR(s.Emit(src.subspan(off, std::min<uint64_t>(kChunkBytes, src.size() - off))));
    return Status::Ok();
  }
  const uint64_t n = src.size() / DTypeSize(from);
  const uint64_t per_chunk = kChunkBytes / 4;
  std::vector<float> f;
  std::vector<uint8_t> bytes;
  for (uint64_t i = 0; i < n; i += per_chunk) {
    const uint64_t m = std::min(per_chunk, n - i);
    f.resize(m);
    DecodeFloats(src.data() + i * DTypeSize(from), m, from, f.data());
    EncodeFloats(f.data(), m, to, bytes);
    CODA_RETURN_IF_ERROR(s.Emit(bytes));
  }
  return Status::Ok();
}

}  // namespace

Status ConvertCheckpoint(const std::string& hf_dir, const std::string& out_path, const Options& o) {
  CODA_ASSIGN_OR_RETURN(ModelConfig config, LoadHfConfig(hf_dir + "/config.json"));
  CODA_ASSIGN_OR_RETURN(safetensors::Checkpoint ckpt, safetensors::Checkpoint::Open(hf_dir));
  // The config must roughly fit the checkpoint before a list of its tensors is made (a small
  // config.json can describe millions of them); small differences are named tensor by tensor below.
  if (const uint64_t need = ExpectedTensorCount(config, /*include_mtp=*/false); need > 2 * ckpt.tensor_names().size() + 1024)
    return Corrupt(hf_dir + ": config.json describes " + std::to_string(need) + " tensors, but the checkpoint holds " +
                   std::to_string(ckpt.tensor_names().size()));

  std::vector<TensorSpec> specs = ExpectedTensors(config, /*include_mtp=*/true);
  // MTP modules are optional: some checkpoints ship without them.
  const bool has_mtp = std::any_of(specs.begin(), specs.end(), [&](const TensorSpec& t) {
    return t.mtp && ckpt.Find(t.name).file != nullptr;
  });
  if (config.n_mtp_layers && (!has_mtp || !o.keep_mtp)) {
    if (o.warn && !has_mtp) o.warn("config.json declares MTP layers but the checkpoint has none; converting without");
    specs.erase(std::remove_if(specs.begin(), specs.end(), [](const TensorSpec& t) { return t.mtp; }), specs.end());
  }

  std::set<std::string> used;
  std::vector<safetensors::Checkpoint::Ref> refs, scale_refs;
  std::vector<DType> dtypes;
  for (const TensorSpec& spec : specs) {
    auto ref = ckpt.Find(spec.name);
    if (!ref.file) return NotFound(hf_dir + ": tensor '" + spec.name + "' is missing from the checkpoint");
    const std::string where = ref.file->path() + ": tensor '" + spec.name + "'";
    if (ref.info->shape != spec.shape) {
      std::string got, want;
      for (auto d : ref.info->shape) got += std::to_string(d) + ",";
      for (auto d : spec.shape) want += std::to_string(d) + ",";
      return Corrupt(where + ": shape [" + got + "] but config.json implies [" + want + "]");
    }
    if (!IsFloat(ref.info->dtype))
      return Unsupported(where + ": dtype " + std::string(DTypeSafetensorsName(ref.info->dtype)) + " is not a float type");
    safetensors::Checkpoint::Ref sref{nullptr, nullptr};
    if (ref.info->dtype == DType::kFP8_E4M3) {
      if (ref.info->shape.size() != 2) return Corrupt(where + ": FP8 tensors must be 2-D");
      const std::string sname = spec.name + "_scale_inv";
      sref = ckpt.Find(sname);
      if (!sref.file) return NotFound(where + ": FP8 weight without its scale tensor '" + sname + "'");
      if (sref.info->dtype != DType::kF32 || sref.info->shape != Fp8ScaleShape(spec.shape, config.fp8_block))
        return Corrupt(sref.file->path() + ": tensor '" + sname + "' must be F32 of shape [ceil(rows/" +
                       std::to_string(config.fp8_block) + "), ceil(cols/" + std::to_string(config.fp8_block) + ")]");
      used.insert(sname);
    }
    used.insert(spec.name);
    refs.push_back(ref);
    scale_refs.push_back(sref);
    dtypes.push_back(QuantizedToFp8(spec, o) ? DType::kFP8_E4M3 : TargetDType(ref.info->dtype, o.dtype));
  }
  MarkFp8(dtypes, &config);
  for (const std::string& name : ckpt.tensor_names()) {
    if (used.count(name)) continue;
    const bool mtp_dropped = !has_mtp || !o.keep_mtp;
    if (mtp_dropped && config.n_mtp_layers && name.rfind("model.layers.", 0) == 0) {
      const int layer = std::atoi(name.c_str() + 13);
      if (layer >= static_cast<int>(config.n_layers)) continue;
    }
    if (o.warn) o.warn("ignoring tensor '" + name + "', which the architecture does not use");
  }

  ModelExtras extras;
  extras.source = hf_dir;
  CODA_RETURN_IF_ERROR(AddTextFiles(hf_dir, &extras));
  std::vector<TensorPlan> plan = PlanFromSpecs(config, specs, dtypes);
  CODA_ASSIGN_OR_RETURN(auto writer, ModelWriter::Create(out_path, config, plan, extras));
  Streamer s(*writer, o);
  size_t pi = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& ref = refs[i];
    const auto src = ref.file->Data(*ref.info);
    CODA_RETURN_IF_ERROR(writer->BeginTensor(pi++));
    if (dtypes[i] == DType::kFP8_E4M3 && ref.info->dtype != DType::kFP8_E4M3) {
      CODA_RETURN_IF_ERROR(QuantizeFp8(src, ref.info->dtype, specs[i].shape, config.fp8_block,
                                       ref.file->path() + ": tensor '" + specs[i].name + "'", *writer, pi++, s));
    } else if (ref.info->dtype == DType::kFP8_E4M3 && dtypes[i] != DType::kFP8_E4M3) {
      const auto& sref = scale_refs[i];
      CODA_RETURN_IF_ERROR(DequantizeFp8(src, sref.file->Data(*sref.info), specs[i].shape, config.fp8_block,
                                         dtypes[i], s));
    } else {
      CODA_RETURN_IF_ERROR(CopyConverted(src, ref.info->dtype, dtypes[i], s));
      if (dtypes[i] == DType::kFP8_E4M3) {  // the scale follows its weight, bit-exact
        const auto& sref = scale_refs[i];
        CODA_RETURN_IF_ERROR(writer->BeginTensor(pi++));
        CODA_RETURN_IF_ERROR(CopyConverted(sref.file->Data(*sref.info), DType::kF32, DType::kF32, s));
      }
    }
    // Keep resident memory near one chunk: drop the pages just read from our mapping.
    ref.file->mapping().DontNeed(ref.file->header().data_start + ref.info->begin, ref.info->size());
  }
  return writer->Finish();
}

namespace {

// Deterministic per-tensor generator (splitmix64), independent of write order.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Approximately standard normal: the sum of four 16-bit uniforms (Irwin-Hall), centred and
  // scaled to unit variance. Random weights need a bell shape, not exact tails, and this is one
  // generator call per value.
  float Normal() {
    const uint64_t r = Next();
    const uint32_t sum = static_cast<uint32_t>((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48));
    return (static_cast<float>(sum) * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
  }

 private:
  uint64_t s_;
};

uint64_t HashName(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

// Mean and standard deviation of a random tensor, by role (small embeddings, norms near 1,
// projections scaled by 1/sqrt(fan-in) so activations neither vanish nor explode).
std::pair<float, float> InitOf(const TensorSpec& t) {
  switch (t.role) {
    case TensorRole::kEmbedding: return {0.0f, 0.02f};
    case TensorRole::kNorm: return {1.0f, 0.1f};
    case TensorRole::kRouterBias: return {0.0f, 0.1f};
    default: return {0.0f, 1.0f / std::sqrt(static_cast<float>(t.shape.back()))};
  }
}

}  // namespace

Status ConvertRandom(const std::string& config_path, const std::string& out_path, const RandomOptions& ro) {
  const Options& o = ro.common;
  CODA_ASSIGN_OR_RETURN(ModelConfig config, LoadHfConfig(config_path));
  std::vector<TensorSpec> specs = ExpectedTensors(config, o.keep_mtp);
  std::vector<DType> dtypes;
  for (const TensorSpec& t : specs) {
    DType d = DType::kBF16;
    if (t.role == TensorRole::kRouterBias) d = DType::kF32;
    if ((t.role == TensorRole::kProjection && config.fp8) || QuantizedToFp8(t, o)) d = DType::kFP8_E4M3;
    dtypes.push_back(TargetDType(d, o.dtype));
  }
  MarkFp8(dtypes, &config);
  ModelExtras extras;
  extras.source = "random (seed " + std::to_string(ro.seed) + ") of " + config_path;
  if (!ro.tokenizer_dir.empty()) {
    if (!IsDirectory(ro.tokenizer_dir)) return NotFound(ro.tokenizer_dir + ": tokenizer directory not found");
    CODA_RETURN_IF_ERROR(AddTextFiles(ro.tokenizer_dir, &extras));
    if (extras.tokenizer_json.empty()) return NotFound(ro.tokenizer_dir + "/tokenizer.json: no such file");
  }
  std::vector<TensorPlan> plan = PlanFromSpecs(config, specs, dtypes);
  CODA_ASSIGN_OR_RETURN(auto writer, ModelWriter::Create(out_path, config, plan, extras));
  Streamer s(*writer, o);
  const uint32_t block = config.fp8_block;
  std::vector<float> f;
  std::vector<uint8_t> bytes;
  size_t pi = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& t = specs[i];
    Rng rng(HashName(t.name, ro.seed));
    const auto [mean, std] = InitOf(t);
    CODA_RETURN_IF_ERROR(writer->BeginTensor(pi++));
    const uint64_t cols = t.shape.back();
    const uint64_t rows = *CheckedElementCount(t.shape) / cols;
    if (dtypes[i] != DType::kFP8_E4M3) {
      const uint64_t rows_per_chunk = std::max<uint64_t>(1, (kChunkBytes / 4) / cols);
      for (uint64_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
        const uint64_t n = std::min(rows_per_chunk, rows - r0) * cols;
        f.resize(n);
        for (auto& v : f) v = mean + std * rng.Normal();
        EncodeFloats(f.data(), n, dtypes[i], bytes);
        CODA_RETURN_IF_ERROR(s.Emit(bytes));
      }
      continue;
    }
    const uint64_t scols = CeilDiv(cols, block);
    std::vector<float> scales(CeilDiv(rows, block) * scols);
    f.resize(static_cast<size_t>(block * cols));
    for (uint64_t r0 = 0; r0 < rows; r0 += block) {
      const uint64_t nr = std::min<uint64_t>(block, rows - r0);
      for (uint64_t k = 0; k < nr * cols; ++k) f[k] = mean + std * rng.Normal();
      bytes.resize(nr * cols);
      QuantizeFp8Rows(f.data(), nr, cols, block, bytes.data(), &scales[(r0 / block) * scols]);
      CODA_RETURN_IF_ERROR(s.Emit(bytes));
    }
    CODA_RETURN_IF_ERROR(writer->BeginTensor(pi++));
    CODA_RETURN_IF_ERROR(s.Emit({reinterpret_cast<const uint8_t*>(scales.data()), scales.size() * 4}));
  }
  return writer->Finish();
}

}  // namespace coda::convert
