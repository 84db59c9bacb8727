#include <cstring>
#include <map>

#include "coda/checked.h"
#include "coda/model_file.h"
#include "hparams.h"

namespace coda {

namespace {

std::string ScaleName(const std::string& weight) { return weight + "_scale_inv"; }

// Builds the forward graph from the config; tensor slots are looked up by Hugging Face name.
class GraphBuilder {
 public:
  GraphBuilder(flatbuffers::FlatBufferBuilder& b, const ModelConfig& c, const std::map<std::string, int32_t>& index)
      : b_(b), c_(c), index_(index) {}

  Result<flatbuffers::Offset<fb::Graph>> Build() {
    const uint32_t tokens = NewValue();
    uint32_t h;
    CODA_ASSIGN_OR_RETURN(h, Node1(CODA_OP_EMBED, "embed", {tokens}, {"model.embed_tokens.weight"}));
    for (uint32_t l = 0; l < c_.n_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      const int32_t li = static_cast<int32_t>(l);
      uint32_t x, a, m;
      CODA_ASSIGN_OR_RETURN(x, Node1(CODA_OP_RMS_NORM, p + "input_layernorm", {h}, {p + "input_layernorm.weight"}, li));
      const std::string s = p + "self_attn.";
      std::vector<std::string> mla = {
          c_.q_lora_rank ? s + "q_a_proj.weight" : "", c_.q_lora_rank ? s + "q_a_layernorm.weight" : "",
          c_.q_lora_rank ? s + "q_b_proj.weight" : "", c_.q_lora_rank ? "" : s + "q_proj.weight",
          s + "kv_a_proj_with_mqa.weight",            s + "kv_a_layernorm.weight",
          s + "kv_b_proj.weight",                     s + "o_proj.weight"};
      CODA_ASSIGN_OR_RETURN(a, Node1(CODA_OP_MLA_ATTENTION, p + "self_attn", {x}, mla, li));
      CODA_ASSIGN_OR_RETURN(h, Node1(CODA_OP_ADD, p + "attn_residual", {h, a}, {}, li));
      CODA_ASSIGN_OR_RETURN(x, Node1(CODA_OP_RMS_NORM, p + "post_attention_layernorm", {h},
                                     {p + "post_attention_layernorm.weight"}, li));
      if (!c_.IsMoeLayer(l)) {
        CODA_ASSIGN_OR_RETURN(m, Node1(CODA_OP_MLP, p + "mlp", {x}, Mlp(p + "mlp."), li));
      } else {
        const uint32_t ids = NewValue(), weights = NewValue();
        const std::string bias = c_.topk_method == TopkMethod::kNoauxTc ? p + "mlp.gate.e_score_correction_bias" : "";
        CODA_RETURN_IF_ERROR(Node(CODA_OP_MOE_GATE, p + "mlp.gate", {x}, {ids, weights},
                                  {p + "mlp.gate.weight", bias}, li));
        std::vector<std::string> experts;
        for (uint32_t e = 0; e < c_.n_routed_experts; ++e)
          for (auto& w : Mlp(p + "mlp.experts." + std::to_string(e) + ".")) experts.push_back(w);
        CODA_ASSIGN_OR_RETURN(m, Node1(CODA_OP_MOE_EXPERTS, p + "mlp.experts", {x, ids, weights}, experts, li));
        if (c_.n_shared_experts) {
          uint32_t shared;
          CODA_ASSIGN_OR_RETURN(shared, Node1(CODA_OP_MLP, p + "mlp.shared_experts", {x},
                                              Mlp(p + "mlp.shared_experts."), li));
          CODA_ASSIGN_OR_RETURN(m, Node1(CODA_OP_ADD, p + "mlp.sum", {m, shared}, {}, li));
        }
      }
      CODA_ASSIGN_OR_RETURN(h, Node1(CODA_OP_ADD, p + "mlp_residual", {h, m}, {}, li));
    }
    uint32_t n, logits;
    CODA_ASSIGN_OR_RETURN(n, Node1(CODA_OP_RMS_NORM, "model.norm", {h}, {"model.norm.weight"}));
    CODA_ASSIGN_OR_RETURN(logits, Node1(CODA_OP_HEAD, "lm_head", {n}, {"lm_head.weight"}));
    return fb::CreateGraph(b_, n_values_, b_.CreateVector(nodes_), logits);
  }

 private:
  static std::vector<std::string> Mlp(const std::string& p) {
    return {p + "gate_proj.weight", p + "up_proj.weight", p + "down_proj.weight"};
  }
  uint32_t NewValue() { return n_values_++; }

  Status Node(coda_op_type op, const std::string& name, const std::vector<uint32_t>& in, const std::vector<uint32_t>& out,
              const std::vector<std::string>& weights, int32_t layer = -1) {
    std::vector<int32_t> w;
    for (const std::string& wn : weights) {
      if (wn.empty()) {
        w.push_back(-1);
        continue;
      }
      auto it = index_.find(wn);
      if (it == index_.end()) return Internal("graph: tensor '" + wn + "' is not in the plan");
      w.push_back(it->second);
    }
    nodes_.push_back(fb::CreateNode(b_, static_cast<uint8_t>(op), b_.CreateString(name), b_.CreateVector(in), b_.CreateVector(out),
                                    b_.CreateVector(w), layer));
    return Status::Ok();
  }
  Result<uint32_t> Node1(coda_op_type op, const std::string& name, const std::vector<uint32_t>& in,
                         const std::vector<std::string>& weights, int32_t layer = -1) {
    const uint32_t out = NewValue();
    CODA_RETURN_IF_ERROR(Node(op, name, in, {out}, weights, layer));
    return out;
  }

  flatbuffers::FlatBufferBuilder& b_;
  const ModelConfig& c_;
  const std::map<std::string, int32_t>& index_;
  std::vector<flatbuffers::Offset<fb::Node>> nodes_;
  uint32_t n_values_ = 0;
};

void PutLe64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace

std::vector<TensorPlan> PlanFromSpecs(const ModelConfig& config, const std::vector<TensorSpec>& specs,
                                      const std::vector<DType>& dtypes) {
  std::vector<TensorPlan> plan;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& s = specs[i];
    plan.push_back(TensorPlan{s.name, dtypes[i], s.shape, s.role, s.layer, s.expert, s.mtp, -1});
    if (dtypes[i] == DType::kFP8_E4M3) {
      plan.back().scale = static_cast<int32_t>(plan.size());
      plan.push_back(TensorPlan{ScaleName(s.name), DType::kF32, Fp8ScaleShape(s.shape, config.fp8_block),
                                TensorRole::kScale, s.layer, s.expert, s.mtp, -1});
    }
  }
  return plan;
}

Result<std::unique_ptr<ModelWriter>> ModelWriter::Create(const std::string& path, const ModelConfig& config,
                                                         std::vector<TensorPlan> plan, const ModelExtras& extras) {
  CODA_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<ModelWriter> w(new ModelWriter());
  w->plan_ = std::move(plan);

  // Offsets: 64-byte aligned, in plan order.
  uint64_t off = 0;
  std::map<std::string, int32_t> index;
  for (size_t i = 0; i < w->plan_.size(); ++i) {
    const TensorPlan& t = w->plan_[i];
    auto elems = CheckedElementCount(t.shape);
    auto bytes = elems ? CheckedMul(*elems, DTypeSize(t.dtype)) : std::nullopt;
    if (!bytes) return InvalidArgument("tensor '" + t.name + "': size overflows");
    auto aligned = CheckedAlignUp(off, kCodaTensorAlignment);
    if (!aligned) return InvalidArgument("data section overflows");
    w->offsets_.push_back(*aligned);
    w->sizes_.push_back(*bytes);
    auto end = CheckedAdd(*aligned, *bytes);
    if (!end) return InvalidArgument("data section overflows");
    off = *end;
    if (!index.emplace(t.name, static_cast<int32_t>(i)).second)
      return InvalidArgument("tensor '" + t.name + "' appears twice");
  }
  w->data_size_ = off;

  flatbuffers::FlatBufferBuilder b(1 << 20);
  std::vector<flatbuffers::Offset<fb::Tensor>> tensors;
  for (size_t i = 0; i < w->plan_.size(); ++i) {
    const TensorPlan& t = w->plan_[i];
    tensors.push_back(fb::CreateTensor(b, b.CreateString(t.name), static_cast<fb::DType>(t.dtype),
                                       b.CreateVector(t.shape), w->offsets_[i], w->sizes_[i],
                                       static_cast<fb::TensorRole>(t.role), t.layer, t.expert, t.mtp, t.scale));
  }

  // Expert blocks: each routed expert's tensors (with scales) form one range; ranges are equal.
  std::vector<flatbuffers::Offset<fb::ExpertBlock>> blocks;
  std::map<std::pair<int32_t, int32_t>, std::pair<uint64_t, uint64_t>> ranges;  // (layer, expert) -> [lo, hi)
  for (size_t i = 0; i < w->plan_.size(); ++i) {
    const TensorPlan& t = w->plan_[i];
    if (t.expert < 0) continue;
    auto [it, fresh] = ranges.try_emplace({t.layer, t.expert}, w->offsets_[i], w->offsets_[i] + w->sizes_[i]);
    if (!fresh) {
      it->second.first = std::min(it->second.first, w->offsets_[i]);
      it->second.second = std::max(it->second.second, w->offsets_[i] + w->sizes_[i]);
    }
  }
  for (auto it = ranges.begin(); it != ranges.end();) {
    const int32_t layer = it->first.first;
    const uint64_t base = it->second.first;
    uint64_t stride = 0;
    uint32_t n = 0;
    for (; it != ranges.end() && it->first.first == layer; ++it, ++n) {
      if (it->first.second != static_cast<int32_t>(n))
        return InvalidArgument("layer " + std::to_string(layer) + ": routed experts are not numbered 0..n-1");
      if (n == 1) stride = it->second.first - base;
      if (n >= 1 && it->second.first != base + stride * n)
        return InvalidArgument("layer " + std::to_string(layer) + ": routed experts are not contiguous and equal");
    }
    if (n == 1) stride = *CheckedAlignUp(ranges[{layer, 0}].second - base, kCodaTensorAlignment);
    blocks.push_back(fb::CreateExpertBlock(b, layer, n, base, stride));
  }

  GraphBuilder gb(b, config, index);
  CODA_ASSIGN_OR_RETURN(auto graph, gb.Build());
  auto hparams = WriteHParams(b, config);
  flatbuffers::Offset<fb::TokenizerData> tok;
  if (!extras.tokenizer_json.empty())
    tok = fb::CreateTokenizerData(b, b.CreateString(extras.tokenizer_json),
                                  b.CreateString(extras.tokenizer_config_json));
  auto chat = extras.chat_template.empty() ? 0 : b.CreateString(extras.chat_template);
  auto gen = fb::CreateGenerationDefaults(b, extras.temperature, extras.top_p);
  auto model = fb::CreateModel(b, kCodaSchemaVersion, b.CreateString("coda-convert 0.1.0"),
                               b.CreateString(extras.source), hparams, b.CreateVector(tensors),
                               b.CreateVector(blocks), graph, tok, chat, gen);
  b.Finish(model, fb::ModelIdentifier());

  const uint64_t fb_size = b.GetSize();
  w->data_start_ = *CheckedAlignUp(kCodaPreambleSize + fb_size, kCodaDataAlignment);
  uint8_t pre[kCodaPreambleSize] = {};
  std::memcpy(pre, kCodaMagic, 8);
  pre[8] = static_cast<uint8_t>(kCodaPreambleVersion);
  PutLe64(pre + 16, kCodaPreambleSize);
  PutLe64(pre + 24, fb_size);
  PutLe64(pre + 32, w->data_start_);
  PutLe64(pre + 40, w->data_size_);

  CODA_ASSIGN_OR_RETURN(w->out_, AtomicFileWriter::Create(path));
  CODA_RETURN_IF_ERROR(w->out_->Write(pre));
  CODA_RETURN_IF_ERROR(w->out_->Write({b.GetBufferPointer(), static_cast<size_t>(fb_size)}));
  CODA_RETURN_IF_ERROR(w->out_->WriteZeros(w->data_start_ - kCodaPreambleSize - fb_size));
  return w;
}

Status ModelWriter::BeginTensor(size_t index) {
  if (index != next_ || index >= plan_.size())
    return Internal("tensors must be written in plan order (expected #" + std::to_string(next_) + ")");
  if (current_ != SIZE_MAX && written_ != sizes_[current_])
    return Internal("tensor '" + plan_[current_].name + "' was not written in full");
  const uint64_t pos = data_start_ + offsets_[index];
  CODA_RETURN_IF_ERROR(out_->WriteZeros(pos - out_->offset()));
  current_ = index;
  next_ = index + 1;
  written_ = 0;
  return Status::Ok();
}

Status ModelWriter::Append(std::span<const uint8_t> bytes) {
  if (current_ == SIZE_MAX) return Internal("Append before BeginTensor");
  if (bytes.size() > sizes_[current_] - written_)
    return Internal("tensor '" + plan_[current_].name + "': more bytes than its size");
  written_ += bytes.size();
  return out_->Write(bytes);
}

Status ModelWriter::Finish() {
  if (next_ != plan_.size() || (current_ != SIZE_MAX && written_ != sizes_[current_]))
    return Internal("not every tensor was written before Finish");
  CODA_RETURN_IF_ERROR(out_->WriteZeros(data_start_ + data_size_ - out_->offset()));
  return out_->Commit();
}

}  // namespace coda
