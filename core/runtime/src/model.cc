#include <cmath>

#include "coda/runtime.h"

namespace coda {

namespace {

// RoPE frequencies for qk_rope_head_dim, with YaRN's blend between interpolated and original
// frequencies, exactly as DeepSeek's reference implementation computes them.
std::vector<float> RopeInvFreq(const ModelConfig& c, bool yarn) {
  const uint32_t dr = c.qk_rope_head_dim;
  const double theta = c.rope.theta;
  std::vector<float> f(dr / 2);
  for (uint32_t i = 0; i < dr / 2; ++i) f[i] = static_cast<float>(1.0 / std::pow(theta, (2.0 * i) / dr));
  if (!yarn) return f;
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

}  // namespace

Result<std::shared_ptr<Model>> Model::Load(const std::string& path, const ModelLoadOptions& options) {
  std::shared_ptr<Model> m(new Model());
  CODA_ASSIGN_OR_RETURN(m->file_, ModelFile::Open(path));
  const uint64_t available = AvailableMemoryBytes();
  const bool prefault = options.prefault == ModelLoadOptions::Prefault::kAlways ||
                        (options.prefault == ModelLoadOptions::Prefault::kAuto && available > 0 &&
                         m->file_.file_size() <= available / 2);
  if (prefault && m->file_.mapping()) m->file_.mapping()->Populate();
  const ModelConfig& c = m->file_.config();
  const auto& refs = m->file_.tensors();
  m->tensors_.resize(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) {
    const TensorRef& r = refs[i];
    coda_tensor& t = m->tensors_[i];
    t.dtype = static_cast<uint32_t>(r.dtype);
    t.ndim = static_cast<uint32_t>(std::min<size_t>(r.shape.size(), CODA_MAX_DIMS));
    for (uint32_t d = 0; d < t.ndim; ++d) t.shape[d] = r.shape[d];
    t.data = const_cast<uint8_t*>(r.data);  // the ABI passes weights as void*; backends never write them
    t.block = c.fp8_block;
  }
  for (size_t i = 0; i < refs.size(); ++i)
    if (refs[i].scale >= 0) m->tensors_[i].scale = &m->tensors_[static_cast<size_t>(refs[i].scale)];

  m->yarn_active_ = c.rope.yarn && c.max_position_embeddings > c.rope.original_max_position_embeddings;
  m->inv_freq_ = RopeInvFreq(c, m->yarn_active_);
  double scale = 1.0 / std::sqrt(static_cast<double>(c.qk_nope_head_dim + c.qk_rope_head_dim));
  if (m->yarn_active_ && c.rope.factor > 1.0) {
    const double ms = 0.1 * c.rope.mscale_all_dim * std::log(c.rope.factor) + 1.0;
    scale *= ms * ms;
  }
  coda_hparams& h = m->hparams_;
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
  h.rope_inv_freq = m->inv_freq_.data();

  for (const TensorRef& r : refs) {
    if (r.mtp || r.role == TensorRole::kEmbedding) continue;
    if (r.expert >= static_cast<int32_t>(c.n_experts_per_tok)) continue;
    m->active_weight_bytes_ += r.size;
  }
  return m;
}

}  // namespace coda
