#include "coda/model_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "coda/checked.h"
#include "coda/file.h"
#include "coda/json.h"

namespace coda {

using nlohmann::json;

std::string_view ArchName(Arch a) {
  return a == Arch::kDeepseekV2 ? "DeepseekV2ForCausalLM" : "DeepseekV3ForCausalLM";
}
std::string_view TopkMethodName(TopkMethod m) {
  switch (m) {
    case TopkMethod::kGreedy: return "greedy";
    case TopkMethod::kGroupLimitedGreedy: return "group_limited_greedy";
    case TopkMethod::kNoauxTc: return "noaux_tc";
  }
  return "?";
}
std::string_view ScoringFuncName(ScoringFunc s) { return s == ScoringFunc::kSoftmax ? "softmax" : "sigmoid"; }

namespace {

// Typed access to config.json fields with errors that name the field.
class Fields {
 public:
  Fields(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  const json* Get(const char* key) const {
    auto it = j_.find(key);
    return (it == j_.end() || it->is_null()) ? nullptr : &*it;
  }
  Status Err(const char* key, const std::string& what) const {
    return Corrupt(source_ + ": field '" + key + "' " + what);
  }
  Result<uint32_t> U32(const char* key, std::optional<uint32_t> fallback = std::nullopt) const {
    const json* v = Get(key);
    if (!v) {
      if (fallback) return *fallback;
      return Err(key, "is missing");
    }
    if (v->is_number_float()) {
      const double d = v->get<double>();
      if (d >= 0 && d <= 4294967295.0 && std::floor(d) == d) return static_cast<uint32_t>(d);
    }
    if (!v->is_number_integer()) return Err(key, "is not an integer");
    const int64_t i = v->get<int64_t>();
    if (i < 0 || i > 0xffffffffll) return Err(key, "is out of range (" + std::to_string(i) + ")");
    return static_cast<uint32_t>(i);
  }
  Result<double> F64(const char* key, double fallback) const {
    const json* v = Get(key);
    if (!v) return fallback;
    if (!v->is_number()) return Err(key, "is not a number");
    const double d = v->get<double>();
    if (!std::isfinite(d)) return Err(key, "is not finite");
    return d;
  }
  Result<bool> Bool(const char* key, bool fallback) const {
    const json* v = Get(key);
    if (!v) return fallback;
    if (!v->is_boolean()) return Err(key, "is not a boolean");
    return v->get<bool>();
  }
  Result<std::string> Str(const char* key, std::string fallback) const {
    const json* v = Get(key);
    if (!v) return fallback;
    if (!v->is_string()) return Err(key, "is not a string");
    return v->get<std::string>();
  }
  Result<int64_t> TokenId(const char* key) const {
    const json* v = Get(key);
    if (!v) return int64_t{-1};
    if (!v->is_number_integer() || v->get<int64_t>() < 0) return Err(key, "is not a token id");
    return v->get<int64_t>();
  }

 private:
  const json& j_;
  std::string source_;
};

Status Bound(const std::string& src, const char* field, uint64_t v, uint64_t lo, uint64_t hi) {
  if (v < lo || v > hi)
    return Unsupported(src + ": " + field + " = " + std::to_string(v) + " is outside the supported range [" +
                       std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return Status::Ok();
}

}  // namespace

Status ModelConfig::Validate() const {
  const std::string src = "config";
  CODA_RETURN_IF_ERROR(Bound(src, "vocab_size", vocab_size, 1, 1u << 22));
  CODA_RETURN_IF_ERROR(Bound(src, "hidden_size", hidden_size, 1, 1u << 16));
  CODA_RETURN_IF_ERROR(Bound(src, "num_hidden_layers", n_layers, 1, 1024));
  CODA_RETURN_IF_ERROR(Bound(src, "first_k_dense_replace", n_dense_layers, 0, n_layers));
  CODA_RETURN_IF_ERROR(Bound(src, "num_attention_heads", n_heads, 1, 1024));
  CODA_RETURN_IF_ERROR(Bound(src, "q_lora_rank", q_lora_rank, 0, 1u << 16));
  CODA_RETURN_IF_ERROR(Bound(src, "kv_lora_rank", kv_lora_rank, 1, 1u << 16));
  CODA_RETURN_IF_ERROR(Bound(src, "qk_nope_head_dim", qk_nope_head_dim, 1, 4096));
  CODA_RETURN_IF_ERROR(Bound(src, "qk_rope_head_dim", qk_rope_head_dim, 2, 4096));
  CODA_RETURN_IF_ERROR(Bound(src, "v_head_dim", v_head_dim, 1, 4096));
  if (qk_rope_head_dim % 2) return Unsupported(src + ": qk_rope_head_dim must be even (RoPE rotates pairs)");
  if (n_dense_layers > 0) CODA_RETURN_IF_ERROR(Bound(src, "intermediate_size", intermediate_size, 1, 1u << 20));
  if (n_dense_layers < n_layers) {
    CODA_RETURN_IF_ERROR(Bound(src, "n_routed_experts", n_routed_experts, 1, 4096));
    CODA_RETURN_IF_ERROR(Bound(src, "num_experts_per_tok", n_experts_per_tok, 1, n_routed_experts));
    CODA_RETURN_IF_ERROR(Bound(src, "moe_intermediate_size", moe_intermediate_size, 1, 1u << 20));
    CODA_RETURN_IF_ERROR(Bound(src, "n_shared_experts", n_shared_experts, 0, 64));
    CODA_RETURN_IF_ERROR(Bound(src, "n_group", n_group, 1, n_routed_experts));
    CODA_RETURN_IF_ERROR(Bound(src, "topk_group", topk_group, 1, n_group));
    if (n_routed_experts % n_group)
      return Unsupported(src + ": n_routed_experts (" + std::to_string(n_routed_experts) +
                         ") is not a multiple of n_group (" + std::to_string(n_group) + ")");
    if (static_cast<uint64_t>(topk_group) * (n_routed_experts / n_group) < n_experts_per_tok)
      return Unsupported(src + ": topk_group groups hold fewer experts than num_experts_per_tok");
  }
  CODA_RETURN_IF_ERROR(Bound(src, "num_nextn_predict_layers", n_mtp_layers, 0, 16));
  if (!(rms_norm_eps > 0.0f) || !std::isfinite(rms_norm_eps)) return Unsupported(src + ": rms_norm_eps must be > 0");
  if (!(rope.theta > 0.0)) return Unsupported(src + ": rope_theta must be > 0");
  if (!std::isfinite(routed_scaling_factor)) return Unsupported(src + ": routed_scaling_factor is not finite");
  if (rope.yarn) {
    if (!(rope.factor >= 1.0)) return Unsupported(src + ": rope_scaling.factor must be >= 1");
    CODA_RETURN_IF_ERROR(Bound(src, "rope_scaling.original_max_position_embeddings",
                               rope.original_max_position_embeddings, 1, 1u << 30));
  }
  if (fp8 && fp8_block != 128)
    return Unsupported(src + ": FP8 weight_block_size " + std::to_string(fp8_block) + " (only 128x128 is supported)");
  return Status::Ok();
}

Result<ModelConfig> ParseHfConfig(std::string_view text, const std::string& source) {
  CODA_ASSIGN_OR_RETURN(json j, ParseJson(text, source));
  if (!j.is_object()) return Corrupt(source + ": not a JSON object");
  Fields f(j, source);
  ModelConfig c;

  const json* archs = f.Get("architectures");
  if (!archs || !archs->is_array() || archs->empty() || !(*archs)[0].is_string())
    return Corrupt(source + ": field 'architectures' is missing or not a list of names");
  c.architecture = (*archs)[0].get<std::string>();
  if (c.architecture == "DeepseekV3ForCausalLM") {
    c.arch = Arch::kDeepseekV3;
  } else if (c.architecture == "DeepseekV2ForCausalLM") {
    c.arch = Arch::kDeepseekV2;
  } else {
    return Unsupported(source + ": unknown architecture '" + c.architecture +
                       "' (Coda runs DeepseekV2ForCausalLM and DeepseekV3ForCausalLM)");
  }
  CODA_ASSIGN_OR_RETURN(c.model_type, f.Str("model_type", ""));

  CODA_ASSIGN_OR_RETURN(c.vocab_size, f.U32("vocab_size"));
  CODA_ASSIGN_OR_RETURN(c.hidden_size, f.U32("hidden_size"));
  CODA_ASSIGN_OR_RETURN(c.intermediate_size, f.U32("intermediate_size", 0));
  CODA_ASSIGN_OR_RETURN(c.moe_intermediate_size, f.U32("moe_intermediate_size", 0));
  CODA_ASSIGN_OR_RETURN(c.n_layers, f.U32("num_hidden_layers"));
  CODA_ASSIGN_OR_RETURN(c.n_dense_layers, f.U32("first_k_dense_replace", 0));
  CODA_ASSIGN_OR_RETURN(c.n_heads, f.U32("num_attention_heads"));
  CODA_ASSIGN_OR_RETURN(c.q_lora_rank, f.U32("q_lora_rank", 0));
  CODA_ASSIGN_OR_RETURN(c.kv_lora_rank, f.U32("kv_lora_rank"));
  CODA_ASSIGN_OR_RETURN(c.qk_nope_head_dim, f.U32("qk_nope_head_dim"));
  CODA_ASSIGN_OR_RETURN(c.qk_rope_head_dim, f.U32("qk_rope_head_dim"));
  CODA_ASSIGN_OR_RETURN(c.v_head_dim, f.U32("v_head_dim"));
  CODA_ASSIGN_OR_RETURN(c.n_routed_experts, f.U32("n_routed_experts", 0));
  CODA_ASSIGN_OR_RETURN(c.n_shared_experts, f.U32("n_shared_experts", 0));
  CODA_ASSIGN_OR_RETURN(c.n_experts_per_tok, f.U32("num_experts_per_tok", 0));
  CODA_ASSIGN_OR_RETURN(c.n_group, f.U32("n_group", 1));
  CODA_ASSIGN_OR_RETURN(c.topk_group, f.U32("topk_group", 1));
  CODA_ASSIGN_OR_RETURN(c.max_position_embeddings, f.U32("max_position_embeddings", 4096));
  CODA_ASSIGN_OR_RETURN(c.n_mtp_layers, f.U32("num_nextn_predict_layers", 0));
  CODA_ASSIGN_OR_RETURN(c.norm_topk_prob, f.Bool("norm_topk_prob", false));
  CODA_ASSIGN_OR_RETURN(double rsf, f.F64("routed_scaling_factor", 1.0));
  CODA_ASSIGN_OR_RETURN(double eps, f.F64("rms_norm_eps", 1e-6));
  c.routed_scaling_factor = static_cast<float>(rsf);
  c.rms_norm_eps = static_cast<float>(eps);
  CODA_ASSIGN_OR_RETURN(c.rope.theta, f.F64("rope_theta", 10000.0));
  CODA_ASSIGN_OR_RETURN(c.bos_token_id, f.TokenId("bos_token_id"));
  CODA_ASSIGN_OR_RETURN(c.eos_token_id, f.TokenId("eos_token_id"));

  CODA_ASSIGN_OR_RETURN(std::string scoring, f.Str("scoring_func", "softmax"));
  if (scoring == "softmax") c.scoring_func = ScoringFunc::kSoftmax;
  else if (scoring == "sigmoid") c.scoring_func = ScoringFunc::kSigmoid;
  else return Unsupported(source + ": scoring_func '" + scoring + "' (expected softmax or sigmoid)");

  CODA_ASSIGN_OR_RETURN(std::string topk, f.Str("topk_method", "greedy"));
  if (topk == "greedy") c.topk_method = TopkMethod::kGreedy;
  else if (topk == "group_limited_greedy") c.topk_method = TopkMethod::kGroupLimitedGreedy;
  else if (topk == "noaux_tc") c.topk_method = TopkMethod::kNoauxTc;
  else return Unsupported(source + ": topk_method '" + topk + "' (expected greedy, group_limited_greedy or noaux_tc)");

  CODA_ASSIGN_OR_RETURN(uint32_t freq, f.U32("moe_layer_freq", 1));
  if (freq != 1) return Unsupported(source + ": moe_layer_freq = " + std::to_string(freq) + " (only 1 is supported)");
  CODA_ASSIGN_OR_RETURN(uint32_t kv_heads, f.U32("num_key_value_heads", c.n_heads));
  if (kv_heads != c.n_heads)
    return Unsupported(source + ": num_key_value_heads differs from num_attention_heads (MLA uses equal counts)");
  CODA_ASSIGN_OR_RETURN(std::string act, f.Str("hidden_act", "silu"));
  if (act != "silu") return Unsupported(source + ": hidden_act '" + act + "' (only silu is supported)");
  CODA_ASSIGN_OR_RETURN(bool tied, f.Bool("tie_word_embeddings", false));
  if (tied) return Unsupported(source + ": tie_word_embeddings = true (DeepSeek models have a separate lm_head)");
  CODA_ASSIGN_OR_RETURN(bool attn_bias, f.Bool("attention_bias", false));
  if (attn_bias) return Unsupported(source + ": attention_bias = true is not part of the DeepSeek architecture");

  if (const json* rs = f.Get("rope_scaling")) {
    if (!rs->is_object()) return Corrupt(source + ": field 'rope_scaling' is not an object");
    Fields r(*rs, source + ": rope_scaling");
    CODA_ASSIGN_OR_RETURN(std::string type, r.Str("type", ""));
    if (type.empty()) {
      CODA_ASSIGN_OR_RETURN(type, r.Str("rope_type", ""));
    }
    if (type != "yarn")
      return Unsupported(source + ": rope_scaling type '" + type + "' (only yarn is supported)");
    c.rope.yarn = true;
    CODA_ASSIGN_OR_RETURN(c.rope.factor, r.F64("factor", 1.0));
    CODA_ASSIGN_OR_RETURN(c.rope.original_max_position_embeddings, r.U32("original_max_position_embeddings"));
    CODA_ASSIGN_OR_RETURN(c.rope.beta_fast, r.F64("beta_fast", 32.0));
    CODA_ASSIGN_OR_RETURN(c.rope.beta_slow, r.F64("beta_slow", 1.0));
    CODA_ASSIGN_OR_RETURN(c.rope.mscale, r.F64("mscale", 1.0));
    CODA_ASSIGN_OR_RETURN(c.rope.mscale_all_dim, r.F64("mscale_all_dim", 0.0));
  }

  if (const json* q = f.Get("quantization_config")) {
    if (!q->is_object()) return Corrupt(source + ": field 'quantization_config' is not an object");
    Fields qf(*q, source + ": quantization_config");
    CODA_ASSIGN_OR_RETURN(std::string method, qf.Str("quant_method", ""));
    CODA_ASSIGN_OR_RETURN(std::string fmt, qf.Str("fmt", "e4m3"));
    if (method != "fp8" || fmt != "e4m3")
      return Unsupported(source + ": quantization '" + method + "/" + fmt +
                         "' (only DeepSeek's fp8 e4m3 with block scales is supported)");
    const json* bs = qf.Get("weight_block_size");
    if (!bs || !bs->is_array() || bs->size() != 2 || !(*bs)[0].is_number_integer() || (*bs)[0] != (*bs)[1])
      return Unsupported(source + ": quantization_config.weight_block_size must be a square [n, n]");
    c.fp8 = true;
    c.fp8_block = (*bs)[0].get<uint32_t>();
  }

  Status s = c.Validate();
  if (!s.ok()) {
    // Validate() says "config: ..."; name the real file instead.
    std::string m = s.message();
    if (m.rfind("config: ", 0) == 0) m = m.substr(8);
    return Status(s.code(), source + ": " + m);
  }
  return c;
}

Result<ModelConfig> LoadHfConfig(const std::string& path) {
  CODA_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path, 16u << 20));
  return ParseHfConfig(text, path);
}

std::vector<uint64_t> Fp8ScaleShape(const std::vector<uint64_t>& shape, uint32_t block) {
  return {CeilDiv(shape[0], block), CeilDiv(shape[1], block)};
}

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& c, bool include_mtp) {
  std::vector<TensorSpec> out;
  const uint64_t h = c.hidden_size, H = c.n_heads;
  auto add = [&](std::string name, std::vector<uint64_t> shape, TensorRole role, int32_t layer = -1,
                 int32_t expert = -1, bool mtp = false) {
    out.push_back(TensorSpec{std::move(name), std::move(shape), role, layer, expert, mtp});
  };
  auto decoder_layer = [&](uint32_t l, bool mtp) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const int32_t li = static_cast<int32_t>(l);
    add(p + "input_layernorm.weight", {h}, TensorRole::kNorm, li, -1, mtp);
    if (c.q_lora_rank) {
      add(p + "self_attn.q_a_proj.weight", {c.q_lora_rank, h}, TensorRole::kProjection, li, -1, mtp);
      add(p + "self_attn.q_a_layernorm.weight", {c.q_lora_rank}, TensorRole::kNorm, li, -1, mtp);
      add(p + "self_attn.q_b_proj.weight", {H * c.qk_head_dim(), c.q_lora_rank}, TensorRole::kProjection, li, -1, mtp);
    } else {
      add(p + "self_attn.q_proj.weight", {H * c.qk_head_dim(), h}, TensorRole::kProjection, li, -1, mtp);
    }
    add(p + "self_attn.kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, h}, TensorRole::kProjection,
        li, -1, mtp);
    add(p + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank}, TensorRole::kNorm, li, -1, mtp);
    add(p + "self_attn.kv_b_proj.weight", {H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
        TensorRole::kProjection, li, -1, mtp);
    add(p + "self_attn.o_proj.weight", {h, H * c.v_head_dim}, TensorRole::kProjection, li, -1, mtp);
    add(p + "post_attention_layernorm.weight", {h}, TensorRole::kNorm, li, -1, mtp);
    auto mlp = [&](const std::string& q, uint64_t width, int32_t expert) {
      add(q + "gate_proj.weight", {width, h}, TensorRole::kProjection, li, expert, mtp);
      add(q + "up_proj.weight", {width, h}, TensorRole::kProjection, li, expert, mtp);
      add(q + "down_proj.weight", {h, width}, TensorRole::kProjection, li, expert, mtp);
    };
    if (!c.IsMoeLayer(l)) {
      mlp(p + "mlp.", c.intermediate_size, -1);
      return;
    }
    add(p + "mlp.gate.weight", {c.n_routed_experts, h}, TensorRole::kRouter, li, -1, mtp);
    if (c.topk_method == TopkMethod::kNoauxTc)
      add(p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}, TensorRole::kRouterBias, li, -1, mtp);
    if (c.n_shared_experts)
      mlp(p + "mlp.shared_experts.", static_cast<uint64_t>(c.n_shared_experts) * c.moe_intermediate_size, -1);
    for (uint32_t e = 0; e < c.n_routed_experts; ++e)
      mlp(p + "mlp.experts." + std::to_string(e) + ".", c.moe_intermediate_size, static_cast<int32_t>(e));
  };

  add("model.embed_tokens.weight", {c.vocab_size, h}, TensorRole::kEmbedding);
  for (uint32_t l = 0; l < c.n_layers; ++l) decoder_layer(l, false);
  add("model.norm.weight", {h}, TensorRole::kNorm);
  add("lm_head.weight", {c.vocab_size, h}, TensorRole::kHead);
  if (include_mtp) {
    for (uint32_t m = 0; m < c.n_mtp_layers; ++m) {
      const uint32_t l = c.n_layers + m;
      const int32_t li = static_cast<int32_t>(l);
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "embed_tokens.weight", {c.vocab_size, h}, TensorRole::kEmbedding, li, -1, true);
      add(p + "enorm.weight", {h}, TensorRole::kNorm, li, -1, true);
      add(p + "hnorm.weight", {h}, TensorRole::kNorm, li, -1, true);
      add(p + "eh_proj.weight", {h, 2 * h}, TensorRole::kMtpProjection, li, -1, true);
      decoder_layer(l, true);
      add(p + "shared_head.norm.weight", {h}, TensorRole::kNorm, li, -1, true);
      add(p + "shared_head.head.weight", {c.vocab_size, h}, TensorRole::kHead, li, -1, true);
    }
  }
  return out;
}

ModelStats ComputeStats(const ModelConfig& c) {
  ModelStats s;
  for (const TensorSpec& t : ExpectedTensors(c, /*include_mtp=*/true)) {
    const uint64_t n = *CheckedElementCount(t.shape);  // bounded by Validate()
    if (t.mtp) {
      s.params_mtp += n;
      continue;
    }
    s.params_total += n;
    const bool input_embedding = t.role == TensorRole::kEmbedding;
    const bool inactive_expert = t.expert >= static_cast<int32_t>(c.n_experts_per_tok);
    if (!input_embedding && !inactive_expert) s.params_active += n;
  }
  s.kv_bytes_per_token_bf16 = KvBytesPerToken(c, 2);
  return s;
}

}  // namespace coda
