// The typed hyper-parameters of a DeepSeek-V2/V3-family model, the tensors such a model has
// (Hugging Face names, shapes, roles), and what follows from them (parameter counts, KV bytes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coda/dtype.h"
#include "coda/status.h"
#include "coda_backend.h"

namespace coda {

enum class Arch : uint8_t { kDeepseekV2 = 0, kDeepseekV3 = 1 };
enum class ScoringFunc : uint8_t { kSoftmax = 0, kSigmoid = 1 };
enum class TopkMethod : uint8_t { kGreedy = 0, kGroupLimitedGreedy = 1, kNoauxTc = 2 };

struct RopeConfig {
  double theta = 10000.0;
  bool yarn = false;
  double factor = 1.0;
  uint32_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

struct ModelConfig {
  Arch arch = Arch::kDeepseekV3;
  std::string architecture;  // as in config.json, e.g. "DeepseekV3ForCausalLM"
  std::string model_type;    // e.g. "deepseek_v3", "kimi_k2"
  uint32_t vocab_size = 0;
  uint32_t hidden_size = 0;
  uint32_t intermediate_size = 0;      // dense layers' MLP width
  uint32_t moe_intermediate_size = 0;  // width of one routed expert
  uint32_t n_layers = 0;               // main decoder layers (MTP excluded)
  uint32_t n_dense_layers = 0;         // first_k_dense_replace
  uint32_t n_heads = 0;
  uint32_t q_lora_rank = 0;  // 0: plain q_proj (V2-Lite)
  uint32_t kv_lora_rank = 0;
  uint32_t qk_nope_head_dim = 0;
  uint32_t qk_rope_head_dim = 0;
  uint32_t v_head_dim = 0;
  uint32_t n_routed_experts = 0;
  uint32_t n_shared_experts = 0;
  uint32_t n_experts_per_tok = 0;
  uint32_t n_group = 1;
  uint32_t topk_group = 1;
  TopkMethod topk_method = TopkMethod::kGreedy;
  ScoringFunc scoring_func = ScoringFunc::kSoftmax;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
  float rms_norm_eps = 1e-6f;
  uint32_t max_position_embeddings = 0;
  RopeConfig rope;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  uint32_t n_mtp_layers = 0;  // num_nextn_predict_layers
  bool fp8 = false;           // quantization_config: fp8 e4m3 with block scales
  uint32_t fp8_block = 128;

  bool IsMoeLayer(uint32_t layer) const { return layer >= n_dense_layers; }
  uint32_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Bounds and consistency of every field; an error names the field.
  Status Validate() const;
};

std::string_view ArchName(Arch a);
std::string_view TopkMethodName(TopkMethod m);
std::string_view ScoringFuncName(ScoringFunc s);

// What a tensor is for; decides its storage (projections may be FP8 with block scales).
enum class TensorRole : uint8_t {
  kEmbedding = 0,
  kNorm = 1,
  kProjection = 2,  // 2-D [out, in] matrix of attention or an MLP/expert (FP8 in V3 checkpoints)
  kRouter = 3,      // mlp.gate.weight
  kRouterBias = 4,  // e_score_correction_bias (F32)
  kHead = 5,        // lm_head, MTP shared_head.head
  kMtpProjection = 6,  // MTP eh_proj (BF16 even in FP8 checkpoints)
  kScale = 7,       // <weight>_scale_inv of an FP8 projection
};

struct TensorSpec {
  std::string name;  // Hugging Face name
  std::vector<uint64_t> shape;
  TensorRole role = TensorRole::kNorm;
  int32_t layer = -1;   // decoder layer (MTP layers continue the numbering)
  int32_t expert = -1;  // routed expert index
  bool mtp = false;     // part of a multi-token-prediction module, not of the main forward
};

// Every tensor of the model in the order a .coda file stores them: embedding, then layer by
// layer (attention, norms, dense MLP or router + shared experts + routed experts, each expert's
// gate/up/down together), final norm, lm_head, then MTP modules. Scales are not listed.
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& c, bool include_mtp = true);
// The tensors of decoder layer l (MTP layers continue the numbering, with their own extras).
std::vector<TensorSpec> LayerTensors(const ModelConfig& c, uint32_t layer);
// ExpectedTensors(c, include_mtp).size(), without building the list (it can be millions long).
uint64_t ExpectedTensorCount(const ModelConfig& c, bool include_mtp = true);

// Shape of the FP8 block-scale tensor of a projection of shape [out, in].
std::vector<uint64_t> Fp8ScaleShape(const std::vector<uint64_t>& shape, uint32_t block);

struct ModelStats {
  uint64_t params_total = 0;   // main model, MTP excluded
  uint64_t params_active = 0;  // per token: top-k routed experts, input embedding excluded
  uint64_t params_mtp = 0;
  uint64_t kv_bytes_per_token_bf16 = 0;  // latent cache: layers x (kv_lora_rank + rope) x 2
};
ModelStats ComputeStats(const ModelConfig& c);

// Bytes per token of the MLA latent cache at `element_size` bytes per value.
inline uint64_t KvBytesPerToken(const ModelConfig& c, uint32_t element_size) {
  return static_cast<uint64_t>(c.n_layers) * (c.kv_lora_rank + c.qk_rope_head_dim) * element_size;
}

// YaRN applies when the model runs past the positions it was trained on.
inline bool YarnActive(const ModelConfig& c) {
  return c.rope.yarn && c.max_position_embeddings > c.rope.original_max_position_embeddings;
}
// RoPE inverse frequencies (qk_rope_head_dim / 2 of them), YaRN-corrected as DeepSeek's reference
// computes them.
std::vector<float> RopeInvFreq(const ModelConfig& c);
// The hyper-parameters the ops see (the backend ABI's coda_hparams), with the softmax scale
// (times mscale^2 under YaRN). rope_inv_freq points into `inv_freq` (RopeInvFreq(c)), which must
// outlive the result; empty when only shapes matter.
coda_hparams OpHparams(const ModelConfig& c, const std::vector<float>& inv_freq);

}  // namespace coda
