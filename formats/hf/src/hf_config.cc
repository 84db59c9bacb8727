#include "coda/hf_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "coda/file.h"
#include "coda/json.h"

namespace coda {

using nlohmann::json;

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

}  // namespace

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

}  // namespace coda
