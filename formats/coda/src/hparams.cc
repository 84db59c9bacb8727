#include "hparams.h"

namespace coda {

// The file stores dtypes by the ABI's numbers (coda_dtypes.h).
#define CODA_FB_DTYPE_MATCHES_(name, number, size, text)                          \
  static_assert(static_cast<int>(fb::DType::name) == CODA_DTYPE_##name &&      \
                    static_cast<int>(DType::k##name) == CODA_DTYPE_##name,     \
                "coda.fbs DType " #name " differs from coda_dtypes.h");
CODA_DTYPE_TABLE(CODA_FB_DTYPE_MATCHES_)
#undef CODA_FB_DTYPE_MATCHES_
#define CODA_FB_DTYPE_COUNT_(name, number, size, text) +1
static_assert(static_cast<int>(fb::DType::MAX) + 1 == 0 CODA_DTYPE_TABLE(CODA_FB_DTYPE_COUNT_),
              "coda.fbs and coda_dtypes.h list different numbers of dtypes");
#undef CODA_FB_DTYPE_COUNT_
// The schema's other enums are read by a cast into the architecture description's.
static_assert(static_cast<int>(fb::Arch::DeepseekV3) == static_cast<int>(Arch::kDeepseekV3) &&
              static_cast<int>(fb::Arch::MAX) == static_cast<int>(Arch::kDeepseekV3));
static_assert(static_cast<int>(fb::ScoringFunc::Sigmoid) == static_cast<int>(ScoringFunc::kSigmoid) &&
              static_cast<int>(fb::ScoringFunc::MAX) == static_cast<int>(ScoringFunc::kSigmoid));
static_assert(static_cast<int>(fb::TopkMethod::GroupLimitedGreedy) == static_cast<int>(TopkMethod::kGroupLimitedGreedy) &&
              static_cast<int>(fb::TopkMethod::NoauxTc) == static_cast<int>(TopkMethod::kNoauxTc) &&
              static_cast<int>(fb::TopkMethod::MAX) == static_cast<int>(TopkMethod::kNoauxTc));
static_assert(static_cast<int>(fb::TensorRole::Router) == static_cast<int>(TensorRole::kRouter) &&
              static_cast<int>(fb::TensorRole::Head) == static_cast<int>(TensorRole::kHead) &&
              static_cast<int>(fb::TensorRole::Scale) == static_cast<int>(TensorRole::kScale) &&
              static_cast<int>(fb::TensorRole::MAX) == static_cast<int>(TensorRole::kScale));

flatbuffers::Offset<fb::HParams> WriteHParams(flatbuffers::FlatBufferBuilder& b, const ModelConfig& c) {
  auto architecture = b.CreateString(c.architecture);
  auto model_type = b.CreateString(c.model_type);
  auto rope = fb::CreateRope(b, c.rope.theta, c.rope.yarn, c.rope.factor, c.rope.original_max_position_embeddings,
                             c.rope.beta_fast, c.rope.beta_slow, c.rope.mscale, c.rope.mscale_all_dim);
  fb::HParamsBuilder h(b);
  h.add_arch(static_cast<fb::Arch>(c.arch));
  h.add_architecture(architecture);
  h.add_model_type(model_type);
  h.add_vocab_size(c.vocab_size);
  h.add_hidden_size(c.hidden_size);
  h.add_intermediate_size(c.intermediate_size);
  h.add_moe_intermediate_size(c.moe_intermediate_size);
  h.add_n_layers(c.n_layers);
  h.add_n_dense_layers(c.n_dense_layers);
  h.add_n_heads(c.n_heads);
  h.add_q_lora_rank(c.q_lora_rank);
  h.add_kv_lora_rank(c.kv_lora_rank);
  h.add_qk_nope_head_dim(c.qk_nope_head_dim);
  h.add_qk_rope_head_dim(c.qk_rope_head_dim);
  h.add_v_head_dim(c.v_head_dim);
  h.add_n_routed_experts(c.n_routed_experts);
  h.add_n_shared_experts(c.n_shared_experts);
  h.add_n_experts_per_tok(c.n_experts_per_tok);
  h.add_n_group(c.n_group);
  h.add_topk_group(c.topk_group);
  h.add_topk_method(static_cast<fb::TopkMethod>(c.topk_method));
  h.add_scoring_func(static_cast<fb::ScoringFunc>(c.scoring_func));
  h.add_norm_topk_prob(c.norm_topk_prob);
  h.add_routed_scaling_factor(c.routed_scaling_factor);
  h.add_rms_norm_eps(c.rms_norm_eps);
  h.add_max_position_embeddings(c.max_position_embeddings);
  h.add_rope(rope);
  h.add_bos_token_id(c.bos_token_id);
  h.add_eos_token_id(c.eos_token_id);
  h.add_n_mtp_layers(c.n_mtp_layers);
  h.add_fp8(c.fp8);
  h.add_fp8_block(c.fp8_block);
  return h.Finish();
}

Result<ModelConfig> ReadHParams(const fb::HParams& h) {
  ModelConfig c;
  if (h.arch() > fb::Arch::MAX) return Corrupt("hparams: unknown arch " + std::to_string(int(h.arch())));
  if (h.topk_method() > fb::TopkMethod::MAX) return Corrupt("hparams: unknown topk_method");
  if (h.scoring_func() > fb::ScoringFunc::MAX) return Corrupt("hparams: unknown scoring_func");
  c.arch = static_cast<Arch>(h.arch());
  c.architecture = h.architecture() ? h.architecture()->str() : std::string(ArchName(c.arch));
  c.model_type = h.model_type() ? h.model_type()->str() : "";
  c.vocab_size = h.vocab_size();
  c.hidden_size = h.hidden_size();
  c.intermediate_size = h.intermediate_size();
  c.moe_intermediate_size = h.moe_intermediate_size();
  c.n_layers = h.n_layers();
  c.n_dense_layers = h.n_dense_layers();
  c.n_heads = h.n_heads();
  c.q_lora_rank = h.q_lora_rank();
  c.kv_lora_rank = h.kv_lora_rank();
  c.qk_nope_head_dim = h.qk_nope_head_dim();
  c.qk_rope_head_dim = h.qk_rope_head_dim();
  c.v_head_dim = h.v_head_dim();
  c.n_routed_experts = h.n_routed_experts();
  c.n_shared_experts = h.n_shared_experts();
  c.n_experts_per_tok = h.n_experts_per_tok();
  c.n_group = h.n_group();
  c.topk_group = h.topk_group();
  c.topk_method = static_cast<TopkMethod>(h.topk_method());
  c.scoring_func = static_cast<ScoringFunc>(h.scoring_func());
  c.norm_topk_prob = h.norm_topk_prob();
  c.routed_scaling_factor = h.routed_scaling_factor();
  c.rms_norm_eps = h.rms_norm_eps();
  c.max_position_embeddings = h.max_position_embeddings();
  if (const fb::Rope* r = h.rope()) {
    c.rope.theta = r->theta();
    c.rope.yarn = r->yarn();
    c.rope.factor = r->factor();
    c.rope.original_max_position_embeddings = r->original_max_position_embeddings();
    c.rope.beta_fast = r->beta_fast();
    c.rope.beta_slow = r->beta_slow();
    c.rope.mscale = r->mscale();
    c.rope.mscale_all_dim = r->mscale_all_dim();
  }
  c.bos_token_id = h.bos_token_id();
  c.eos_token_id = h.eos_token_id();
  c.n_mtp_layers = h.n_mtp_layers();
  c.fp8 = h.fp8();
  c.fp8_block = h.fp8_block();
  CODA_RETURN_IF_ERROR(c.Validate());
  return c;
}

}  // namespace coda
