#include "coda/model_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "coda/checked.h"

namespace coda {

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
  // Numbers in ranges where RoPE, YaRN, the softmax scale and routing stay finite; the written
  // comparisons also refuse NaN.
  auto in = [&](const char* field, double v, double lo, double hi, bool lo_open) -> Status {
    if ((lo_open ? v > lo : v >= lo) && v <= hi) return Status::Ok();
    auto g = [](double x) {
      char b[32];
      std::snprintf(b, sizeof b, "%g", x);
      return std::string(b);
    };
    return Unsupported(src + ": " + field + " = " + g(v) + " is outside the supported range " + (lo_open ? "(" : "[") +
                       g(lo) + ", " + g(hi) + "]");
  };
  CODA_RETURN_IF_ERROR(in("rms_norm_eps", rms_norm_eps, 0.0, 1.0, true));
  CODA_RETURN_IF_ERROR(in("rope_theta", rope.theta, 1.0, 1e12, true));
  CODA_RETURN_IF_ERROR(in("routed_scaling_factor", routed_scaling_factor, 0.0, 1e4, true));
  if (rope.yarn) {
    CODA_RETURN_IF_ERROR(in("rope_scaling.factor", rope.factor, 1.0, 1e6, false));
    CODA_RETURN_IF_ERROR(Bound(src, "rope_scaling.original_max_position_embeddings",
                               rope.original_max_position_embeddings, 1, 1u << 30));
    CODA_RETURN_IF_ERROR(in("rope_scaling.beta_fast", rope.beta_fast, 0.0, 1e6, true));
    CODA_RETURN_IF_ERROR(in("rope_scaling.beta_slow", rope.beta_slow, 0.0, 1e6, true));
    CODA_RETURN_IF_ERROR(in("rope_scaling.mscale", rope.mscale, 0.0, 1e3, false));
    CODA_RETURN_IF_ERROR(in("rope_scaling.mscale_all_dim", rope.mscale_all_dim, 0.0, 1e3, false));
  }
  // What the ops compute from them, checked rather than argued.
  for (float f : RopeInvFreq(*this))
    if (!std::isfinite(f) || !(f > 0.0f)) return Unsupported(src + ": the RoPE frequencies these settings give are not finite and positive");
  const float scale = OpHparams(*this, {}).softmax_scale;
  if (!std::isfinite(scale) || !(scale > 0.0f)) return Unsupported(src + ": the attention softmax scale these settings give is not finite");
  if (fp8 && fp8_block != 128)
    return Unsupported(src + ": FP8 weight_block_size " + std::to_string(fp8_block) + " (only 128x128 is supported)");
  return Status::Ok();
}

std::vector<uint64_t> Fp8ScaleShape(const std::vector<uint64_t>& shape, uint32_t block) {
  return {CeilDiv(shape[0], block), CeilDiv(shape[1], block)};
}

std::vector<TensorSpec> LayerTensors(const ModelConfig& c, uint32_t l) {
  std::vector<TensorSpec> out;
  const uint64_t h = c.hidden_size, H = c.n_heads;
  const bool mtp = l >= c.n_layers;
  const int32_t li = static_cast<int32_t>(l);
  const std::string p = "model.layers." + std::to_string(l) + ".";
  auto add = [&](std::string name, std::vector<uint64_t> shape, TensorRole role, int32_t expert = -1) {
    out.push_back(TensorSpec{std::move(name), std::move(shape), role, li, expert, mtp});
  };
  if (mtp) {
    add(p + "embed_tokens.weight", {c.vocab_size, h}, TensorRole::kEmbedding);
    add(p + "enorm.weight", {h}, TensorRole::kNorm);
    add(p + "hnorm.weight", {h}, TensorRole::kNorm);
    add(p + "eh_proj.weight", {h, 2 * h}, TensorRole::kMtpProjection);
  }
  add(p + "input_layernorm.weight", {h}, TensorRole::kNorm);
  if (c.q_lora_rank) {
    add(p + "self_attn.q_a_proj.weight", {c.q_lora_rank, h}, TensorRole::kProjection);
    add(p + "self_attn.q_a_layernorm.weight", {c.q_lora_rank}, TensorRole::kNorm);
    add(p + "self_attn.q_b_proj.weight", {H * c.qk_head_dim(), c.q_lora_rank}, TensorRole::kProjection);
  } else {
    add(p + "self_attn.q_proj.weight", {H * c.qk_head_dim(), h}, TensorRole::kProjection);
  }
  add(p + "self_attn.kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, h}, TensorRole::kProjection);
  add(p + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank}, TensorRole::kNorm);
  add(p + "self_attn.kv_b_proj.weight", {H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}, TensorRole::kProjection);
  add(p + "self_attn.o_proj.weight", {h, H * c.v_head_dim}, TensorRole::kProjection);
  add(p + "post_attention_layernorm.weight", {h}, TensorRole::kNorm);
  auto mlp = [&](const std::string& q, uint64_t width, int32_t expert) {
    add(q + "gate_proj.weight", {width, h}, TensorRole::kProjection, expert);
    add(q + "up_proj.weight", {width, h}, TensorRole::kProjection, expert);
    add(q + "down_proj.weight", {h, width}, TensorRole::kProjection, expert);
  };
  if (!c.IsMoeLayer(l)) {
    mlp(p + "mlp.", c.intermediate_size, -1);
  } else {
    add(p + "mlp.gate.weight", {c.n_routed_experts, h}, TensorRole::kRouter);
    if (c.topk_method == TopkMethod::kNoauxTc)
      add(p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}, TensorRole::kRouterBias);
    if (c.n_shared_experts)
      mlp(p + "mlp.shared_experts.", static_cast<uint64_t>(c.n_shared_experts) * c.moe_intermediate_size, -1);
    for (uint32_t e = 0; e < c.n_routed_experts; ++e)
      mlp(p + "mlp.experts." + std::to_string(e) + ".", c.moe_intermediate_size, static_cast<int32_t>(e));
  }
  if (mtp) {
    add(p + "shared_head.norm.weight", {h}, TensorRole::kNorm);
    add(p + "shared_head.head.weight", {c.vocab_size, h}, TensorRole::kHead);
  }
  return out;
}

namespace {

// The tensors outside the decoder layers: embedding first, final norm and lm_head last.
std::vector<TensorSpec> OuterTensors(const ModelConfig& c) {
  const uint64_t h = c.hidden_size;
  return {TensorSpec{"model.embed_tokens.weight", {c.vocab_size, h}, TensorRole::kEmbedding, -1, -1, false},
          TensorSpec{"model.norm.weight", {h}, TensorRole::kNorm, -1, -1, false},
          TensorSpec{"lm_head.weight", {c.vocab_size, h}, TensorRole::kHead, -1, -1, false}};
}

uint32_t LayerCount(const ModelConfig& c, bool include_mtp) { return c.n_layers + (include_mtp ? c.n_mtp_layers : 0); }

}  // namespace

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& c, bool include_mtp) {
  std::vector<TensorSpec> outer = OuterTensors(c), out;
  out.push_back(std::move(outer[0]));
  for (uint32_t l = 0; l < c.n_layers; ++l)
    for (TensorSpec& t : LayerTensors(c, l)) out.push_back(std::move(t));
  out.push_back(std::move(outer[1]));
  out.push_back(std::move(outer[2]));
  for (uint32_t l = c.n_layers; l < LayerCount(c, include_mtp); ++l)
    for (TensorSpec& t : LayerTensors(c, l)) out.push_back(std::move(t));
  return out;
}

uint64_t ExpectedTensorCount(const ModelConfig& c, bool include_mtp) {
  // Layers of one kind (dense, MoE, MTP) have the same tensors: count one of each.
  uint64_t n = OuterTensors(c).size();
  const uint32_t moe = c.n_layers - c.n_dense_layers;
  if (c.n_dense_layers) n += uint64_t{c.n_dense_layers} * LayerTensors(c, 0).size();
  if (moe) n += uint64_t{moe} * LayerTensors(c, c.n_dense_layers).size();
  if (include_mtp && c.n_mtp_layers) n += uint64_t{c.n_mtp_layers} * LayerTensors(c, c.n_layers).size();
  return n;
}

ModelStats ComputeStats(const ModelConfig& c) {
  ModelStats s;
  auto count = [&](const TensorSpec& t) {
    const uint64_t n = *CheckedElementCount(t.shape);  // bounded by Validate()
    if (t.mtp) {
      s.params_mtp += n;
      return;
    }
    s.params_total += n;
    const bool input_embedding = t.role == TensorRole::kEmbedding;
    const bool inactive_expert = t.expert >= static_cast<int32_t>(c.n_experts_per_tok);
    if (!input_embedding && !inactive_expert) s.params_active += n;
  };
  // Layer by layer: a model's tensor list can be millions long.
  for (const TensorSpec& t : OuterTensors(c)) count(t);
  for (uint32_t l = 0; l < LayerCount(c, true); ++l)
    for (const TensorSpec& t : LayerTensors(c, l)) count(t);
  s.kv_bytes_per_token_bf16 = KvBytesPerToken(c, 2);
  return s;
}

std::vector<float> RopeInvFreq(const ModelConfig& c) {
  const uint32_t dr = c.qk_rope_head_dim;
  const double theta = c.rope.theta;
  std::vector<float> f(dr / 2);
  for (uint32_t i = 0; i < dr / 2; ++i) f[i] = static_cast<float>(1.0 / std::pow(theta, (2.0 * i) / dr));
  if (!YarnActive(c)) return f;
  auto correction_dim = [&](double rotations) {
    return dr * std::log(c.rope.original_max_position_embeddings / (rotations * 2 * M_PI)) / (2 * std::log(theta));
  };
  const double low = std::max(std::floor(correction_dim(c.rope.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(c.rope.beta_slow)), static_cast<double>(dr - 1));
  if (low == high) high += 0.001;
  for (uint32_t i = 0; i < dr / 2; ++i) {
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    f[i] = static_cast<float>(f[i] / c.rope.factor * ramp + f[i] * (1.0 - ramp));
  }
  return f;
}

coda_hparams OpHparams(const ModelConfig& c, const std::vector<float>& inv_freq) {
  double scale = 1.0 / std::sqrt(static_cast<double>(c.qk_nope_head_dim + c.qk_rope_head_dim));
  if (YarnActive(c) && c.rope.factor > 1.0) {
    const double ms = 0.1 * c.rope.mscale_all_dim * std::log(c.rope.factor) + 1.0;
    scale *= ms * ms;
  }
  coda_hparams h{};
  h.struct_size = sizeof(coda_hparams);
  h.hidden_size = c.hidden_size;
  h.n_heads = c.n_heads;
  h.q_lora_rank = c.q_lora_rank;
  h.kv_lora_rank = c.kv_lora_rank;
  h.qk_nope_head_dim = c.qk_nope_head_dim;
  h.qk_rope_head_dim = c.qk_rope_head_dim;
  h.v_head_dim = c.v_head_dim;
  h.n_routed_experts = c.n_routed_experts;
  h.n_experts_per_tok = c.n_experts_per_tok;
  h.n_group = c.n_group;
  h.topk_group = c.topk_group;
  h.scoring_func = c.scoring_func == ScoringFunc::kSigmoid ? 1 : 0;
  h.norm_topk_prob = c.norm_topk_prob ? 1 : 0;
  h.routed_scaling_factor = c.routed_scaling_factor;
  h.rms_norm_eps = c.rms_norm_eps;
  h.softmax_scale = static_cast<float>(scale);
  h.rope_inv_freq = inv_freq.empty() ? nullptr : inv_freq.data();
  return h;
}

}  // namespace coda
