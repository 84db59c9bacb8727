#include <algorithm>
#include <cstring>
#include <set>

#include "coda/checked.h"
#include "coda/model_file.h"
#include "coda_ops.hpp"
#include "hparams.h"

namespace coda {

namespace {

constexpr size_t kMaxTensors = 10'000'000;
constexpr size_t kMaxNodes = 10'000'000;
constexpr size_t kMaxRank = 8;

uint64_t GetLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string_view View(const flatbuffers::String* s) { return s ? std::string_view(s->data(), s->size()) : ""; }

}  // namespace

std::string_view OpTypeName(uint8_t op) {
  const char* name = coda_op_name(op);
  return name ? name : "?";
}

Result<ModelFile> ModelFile::Open(const std::string& path) {
  CODA_ASSIGN_OR_RETURN(MappedFile map, MappedFile::Open(path));
  auto owned = std::make_unique<MappedFile>(std::move(map));
  auto f = FromBytes(owned->bytes(), path);
  if (!f.ok()) return f.status();
  f->map_ = std::move(owned);
  return f;
}

Result<ModelFile> ModelFile::FromBytes(std::span<const uint8_t> bytes, const std::string& name) {
  auto fail = [&](std::string m) { return Corrupt(name + ": " + m); };
  const uint64_t size = bytes.size();
  if (size < kCodaPreambleSize) return fail("file is " + std::to_string(size) + " bytes, too short for a .coda file");
  const uint8_t* p = bytes.data();
  if (std::memcmp(p, kCodaMagic, 8) != 0) return fail("not a .coda file (bad magic)");
  const uint32_t preamble_version = p[8] | (p[9] << 8) | (p[10] << 16) | (uint32_t(p[11]) << 24);
  if (preamble_version != kCodaPreambleVersion)
    return Unsupported(name + ": preamble version " + std::to_string(preamble_version) + ", this build reads " +
                       std::to_string(kCodaPreambleVersion));
  const uint64_t fb_offset = GetLe64(p + 16), fb_size = GetLe64(p + 24);
  const uint64_t data_offset = GetLe64(p + 32), data_size = GetLe64(p + 40);
  const auto fb_end = CheckedAdd(fb_offset, fb_size);
  const auto data_end = CheckedAdd(data_offset, data_size);
  if (fb_offset != kCodaPreambleSize || fb_size == 0 || !fb_end || *fb_end > size)
    return fail("metadata range [" + std::to_string(fb_offset) + ", +" + std::to_string(fb_size) +
                ") is not inside the file (" + std::to_string(size) + " bytes)");
  if (data_offset % kCodaDataAlignment != 0 || data_offset < *fb_end)
    return fail("data section offset " + std::to_string(data_offset) + " is not page-aligned after the metadata");
  if (!data_end || *data_end != size)
    return fail("data section [" + std::to_string(data_offset) + ", +" + std::to_string(data_size) +
                ") does not end at the end of the file (" + std::to_string(size) + " bytes): truncated or padded");
  if (fb_size > std::numeric_limits<flatbuffers::uoffset_t>::max() / 2) return fail("metadata too large");

  const uint8_t* fbp = p + fb_offset;
  if (!fb::ModelBufferHasIdentifier(fbp)) return fail("metadata lacks the CODA FlatBuffer identifier");
  flatbuffers::Verifier verifier(fbp, static_cast<size_t>(fb_size), /*max_depth=*/64, /*max_tables=*/50'000'000);
  if (!fb::VerifyModelBuffer(verifier)) return fail("metadata failed FlatBuffer verification");
  const fb::Model* m = fb::GetModel(fbp);

  ModelFile f;
  f.bytes_ = bytes;
  f.name_ = name;
  f.data_offset_ = data_offset;
  f.schema_version_ = m->schema_version();
  if (m->schema_version() != kCodaSchemaVersion)
    return Unsupported(name + ": schema version " + std::to_string(m->schema_version()) + ", this build reads " +
                       std::to_string(kCodaSchemaVersion) + " (convert the model again with this coda-convert)");
  auto config = ReadHParams(*m->hparams());
  if (!config.ok()) return config.status().WithContext(name);
  f.config_ = std::move(config).value();
  const ModelConfig& c = f.config_;

  // Tensors. The hyper-parameters must roughly fit the table before anything is sized by them;
  // small differences are named tensor by tensor below.
  const auto* tensors = m->tensors();
  if (tensors->size() > kMaxTensors) return fail("too many tensors");
  if (const uint64_t need = ExpectedTensorCount(c, /*include_mtp=*/false); need > 2 * uint64_t{tensors->size()} + 1024)
    return fail("the hyper-parameters describe " + std::to_string(need) + " tensors, but the file holds " +
                std::to_string(tensors->size()));
  const uint8_t* data = p + data_offset;
  f.tensors_.reserve(tensors->size());
  for (flatbuffers::uoffset_t i = 0; i < tensors->size(); ++i) {
    const fb::Tensor* t = tensors->Get(i);
    TensorRef r;
    r.name = t->name()->str();
    const std::string where = "tensor #" + std::to_string(i) + " '" + r.name + "'";
    if (r.name.empty()) return fail(where + ": empty name");
    if (t->dtype() > fb::DType::MAX) return fail(where + ": unknown dtype " + std::to_string(int(t->dtype())));
    if (t->role() > fb::TensorRole::MAX) return fail(where + ": unknown role");
    r.dtype = static_cast<DType>(t->dtype());
    r.role = static_cast<TensorRole>(t->role());
    if (t->shape()->size() > kMaxRank) return fail(where + ": rank above " + std::to_string(kMaxRank));
    r.shape.assign(t->shape()->begin(), t->shape()->end());
    const auto elems = CheckedElementCount(r.shape);
    const auto nbytes = elems ? CheckedMul(*elems, DTypeSize(r.dtype)) : std::nullopt;
    if (!nbytes || *nbytes != t->size())
      return fail(where + ": size " + std::to_string(t->size()) + " does not match its shape and dtype");
    const auto end = CheckedAdd(t->offset(), t->size());
    if (t->offset() % kCodaTensorAlignment != 0) return fail(where + ": offset is not 64-byte aligned");
    if (!end || *end > data_size)
      return fail(where + ": bytes [" + std::to_string(t->offset()) + ", +" + std::to_string(t->size()) +
                  ") lie outside the data section (" + std::to_string(data_size) + " bytes)");
    r.offset = t->offset();
    r.size = t->size();
    r.layer = t->layer();
    r.expert = t->expert();
    r.mtp = t->mtp();
    r.scale = t->scale();
    r.data = data + r.offset;
    if (!f.by_name_.emplace(r.name, f.tensors_.size()).second) return fail(where + ": duplicate name");
    f.tensors_.push_back(std::move(r));
  }
  // No two tensors share bytes.
  std::vector<size_t> order(f.tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return f.tensors_[a].offset < f.tensors_[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const TensorRef& prev = f.tensors_[order[k - 1]];
    if (prev.offset + prev.size > f.tensors_[order[k]].offset && prev.size > 0)
      return fail("tensors '" + prev.name + "' and '" + f.tensors_[order[k]].name + "' overlap");
  }
  // FP8 weights carry a scale tensor of the right shape.
  for (const TensorRef& r : f.tensors_) {
    const bool fp8 = r.dtype == DType::kFP8_E4M3;
    if (!fp8 && r.scale < 0) continue;
    const std::string where = "tensor '" + r.name + "'";
    if (!fp8) return fail(where + ": has a scale but is not FP8");
    if (r.shape.size() != 2) return fail(where + ": FP8 tensors must be 2-D");
    if (r.scale < 0 || static_cast<size_t>(r.scale) >= f.tensors_.size()) return fail(where + ": FP8 without a valid scale tensor");
    const TensorRef& s = f.tensors_[static_cast<size_t>(r.scale)];
    if (s.dtype != DType::kF32 || s.shape != Fp8ScaleShape(r.shape, c.fp8_block))
      return fail(where + ": scale tensor '" + s.name + "' must be F32 of shape [ceil(rows/128), ceil(cols/128)]");
  }
  // The architecture's tensors are all present with their shapes (MTP modules are optional).
  for (const TensorSpec& spec : ExpectedTensors(c, /*include_mtp=*/false)) {
    const TensorRef* r = f.Find(spec.name);
    if (!r) return fail("missing tensor '" + spec.name + "' required by the architecture");
    if (r->shape != spec.shape) return fail("tensor '" + spec.name + "' has the wrong shape for this architecture");
    if (!IsFloat(r->dtype)) return fail("tensor '" + spec.name + "' has non-float dtype " + std::string(DTypeName(r->dtype)));
  }

  // Expert blocks.
  if (const auto* blocks = m->experts()) {
    for (const fb::ExpertBlock* b : *blocks) {
      ExpertBlockRef e{b->layer(), b->n_experts(), b->offset(), b->stride()};
      const std::string where = "expert block of layer " + std::to_string(e.layer);
      const auto span = CheckedMul(e.stride, e.n_experts);
      const auto end = span ? CheckedAdd(e.offset, *span) : std::nullopt;
      if (!end || *end > *CheckedAlignUp(data_size, kCodaTensorAlignment) || e.n_experts > 1'000'000)
        return fail(where + ": range lies outside the data section");
      // One block per layer: readers (the expert store) find a layer's experts by it.
      for (const ExpertBlockRef& other : f.experts_)
        if (other.layer == e.layer) return fail(where + ": listed twice");
      f.experts_.push_back(e);
    }
    for (const TensorRef& r : f.tensors_) {
      if (r.expert < 0) continue;
      auto it = std::find_if(f.experts_.begin(), f.experts_.end(), [&](const ExpertBlockRef& e) { return e.layer == r.layer; });
      if (it == f.experts_.end() || static_cast<uint32_t>(r.expert) >= it->n_experts)
        return fail("tensor '" + r.name + "': expert outside its layer's expert block");
      const uint64_t lo = it->offset + it->stride * static_cast<uint64_t>(r.expert);
      if (r.offset < lo || r.offset + r.size > lo + it->stride)
        return fail("tensor '" + r.name + "': not inside its expert's range");
    }
  }

  // Graph: values defined before use and written once; every node's tensors as its op's
  // signature (coda_ops.h) says: counts, activation dtypes and widths, weights present or absent
  // with their shapes and dtypes. Rows are checked for one token (every value's rows scale
  // alike); the MLA layers address the latent cache once each.
  const fb::Graph* g = m->graph();
  f.graph_.n_values = g->n_values();
  f.graph_.logits = g->logits();
  if (!g->nodes() || g->nodes()->size() > kMaxNodes) return fail("graph: missing or oversized node list");
  // Every value but the token ids is some node's output: no more values than outputs.
  uint64_t n_outputs = 1;
  for (const fb::Node* n : *g->nodes()) n_outputs += n->outputs() ? n->outputs()->size() : 0;
  if (g->n_values() == 0 || g->n_values() > n_outputs)
    return fail("graph: " + std::to_string(g->n_values()) + " values, but its nodes write " + std::to_string(n_outputs - 1));
  std::vector<coda_tensor> views(f.tensors_.size());
  for (size_t i = 0; i < views.size(); ++i) {
    const TensorRef& r = f.tensors_[i];
    coda_tensor& t = views[i];
    t.dtype = static_cast<uint32_t>(r.dtype);
    t.ndim = static_cast<uint32_t>(r.shape.size());  // a rank above CODA_MAX_DIMS matches no slot
    for (size_t d = 0; d < r.shape.size() && d < CODA_MAX_DIMS; ++d) t.shape[d] = r.shape[d];
    t.data = const_cast<uint8_t*>(r.data);
    t.block = c.fp8_block;
    if (r.scale >= 0) t.scale = &views[static_cast<size_t>(r.scale)];
  }
  const coda_hparams hp = OpHparams(c, {});
  std::vector<coda_tensor> values(g->n_values());
  std::vector<bool> defined(g->n_values(), false);
  values[0].dtype = CODA_DTYPE_I32;  // token ids [n]
  values[0].ndim = 1;
  values[0].shape[0] = 1;
  defined[0] = true;
  std::vector<bool> kv_layer(c.n_layers, false);
  std::vector<coda_tensor> in, weights, out;
  for (flatbuffers::uoffset_t i = 0; i < g->nodes()->size(); ++i) {
    const fb::Node* n = g->nodes()->Get(i);
    GraphNode node;
    node.op = n->op();
    node.name = n->name() ? n->name()->str() : "";
    node.layer = n->layer();
    if (n->inputs()) node.inputs.assign(n->inputs()->begin(), n->inputs()->end());
    if (n->outputs()) node.outputs.assign(n->outputs()->begin(), n->outputs()->end());
    if (n->weights()) node.weights.assign(n->weights()->begin(), n->weights()->end());
    const std::string where = "graph node #" + std::to_string(i) + " '" + node.name + "'";
    const ops::OpInfo* info = ops::Find(node.op);
    if (!info) return fail(where + ": unknown op " + std::to_string(node.op) + " (a newer coda-convert?)");
    in.clear();
    weights.clear();
    out.assign(node.outputs.size(), coda_tensor{});
    for (uint32_t v : node.inputs) {
      if (v >= g->n_values() || !defined[v]) return fail(where + ": input value " + std::to_string(v) + " is not defined before use");
      in.push_back(values[v]);
    }
    for (int32_t w : node.weights) {
      if (w < -1 || w >= static_cast<int32_t>(views.size())) return fail(where + ": weight index " + std::to_string(w) + " out of range");
      weights.push_back(w >= 0 ? views[static_cast<size_t>(w)] : coda_tensor{});
    }
    const std::string e = ops::Match({node.op, 1, &hp, in.data(), static_cast<uint32_t>(in.size()), weights.data(),
                                      static_cast<uint32_t>(weights.size()), out.data(), static_cast<uint32_t>(out.size())},
                                     /*infer=*/true);
    if (!e.empty()) return fail(where + ": " + e);
    for (size_t k = 0; k < node.outputs.size(); ++k) {
      const uint32_t v = node.outputs[k];
      if (v >= g->n_values() || defined[v]) return fail(where + ": output value " + std::to_string(v) + " is invalid or written twice");
      defined[v] = true;
      values[v] = out[k];
    }
    if (node.layer < -1 || node.layer >= static_cast<int32_t>(c.n_layers)) return fail(where + ": layer out of range");
    if (info->flags & CODA_OP_USES_KV) {
      if (node.layer < 0) return fail(where + ": " + std::string(info->name) + " without the layer whose latent cache it uses");
      if (kv_layer[static_cast<size_t>(node.layer)])
        return fail(where + ": a second " + std::string(info->name) + " for the latent cache of layer " + std::to_string(node.layer));
      kv_layer[static_cast<size_t>(node.layer)] = true;
    }
    f.graph_.nodes.push_back(std::move(node));
  }
  if (f.graph_.logits >= g->n_values() || !defined[f.graph_.logits]) return fail("graph: logits value is never produced");
  const coda_tensor& logits = values[f.graph_.logits];
  if (logits.dtype != CODA_DTYPE_F32 || logits.ndim != 2 || logits.shape[1] != c.vocab_size)
    return fail("graph: the logits value is not F32 [n, vocab_size = " + std::to_string(c.vocab_size) + "]");

  if (const fb::TokenizerData* t = m->tokenizer()) {
    f.tokenizer_json_ = View(t->tokenizer_json());
    f.tokenizer_config_json_ = View(t->tokenizer_config_json());
  }
  f.chat_template_ = View(m->chat_template());
  f.producer_ = View(m->producer());
  f.source_ = View(m->source());
  return f;
}

const TensorRef* ModelFile::Find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace coda
