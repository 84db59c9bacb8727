// Conformance of MlaAttention, computed in its expanded (non-absorbed) form.
#include <algorithm>
#include <cmath>
#include <map>

#include "../suite.h"

namespace coda::conformance {

namespace {

void Cases(Gen& g, std::vector<Case>& out) {
  struct Attn {
    const char* name;
    uint32_t h, H, q_lora, c, dn, dr, dv;
  };
  const Attn shapes[] = {
      {"plain q", 64, 2, 0, 32, 16, 8, 16},
      {"q LoRA, odd dims", 200, 3, 136, 144, 24, 10, 20},
      // More heads than one group of 16 (the CUDA backend's tensor cores), a latent of 8k + 4.
      {"many heads", 96, 20, 0, 36, 16, 6, 12},
  };
  struct Steps {
    uint32_t n, start;
  };
  for (uint32_t dt : kWeightDtypes)
    for (const Attn& a : shapes)
      for (uint32_t kv : {CODA_DTYPE_BF16, CODA_DTYPE_F32})
        for (const Steps& st : {Steps{1, 0}, Steps{1, 6}, Steps{3, 2}, Steps{5, 0}, Steps{5, 6}, Steps{70, 3},
                                  Steps{1, 300}}) {
          Case c;
          c.op = CODA_OP_MLA_ATTENTION;
          c.dtype = DtypeLabel(dt);
          c.name = std::string(a.name) + " (" + std::to_string(a.H) + " heads, kv " + std::to_string(a.c) + "+" +
                   std::to_string(a.dr) + "), KV " + (kv == CODA_DTYPE_BF16 ? "bf16" : "f32") + ", " +
                   std::to_string(st.n) + " tokens at " + std::to_string(st.start);
          c.hp = BaseHparams();
          c.hp.hidden_size = a.h;
          c.hp.n_heads = a.H;
          c.hp.q_lora_rank = a.q_lora;
          c.hp.kv_lora_rank = a.c;
          c.hp.qk_nope_head_dim = a.dn;
          c.hp.qk_rope_head_dim = a.dr;
          c.hp.v_head_dim = a.dv;
          c.hp.softmax_scale = 1.0f / std::sqrt(static_cast<float>(a.dn + a.dr));
          for (uint32_t i = 0; i < a.dr / 2; ++i)
            c.inv_freq.push_back(static_cast<float>(1.0 / std::pow(10000.0, 2.0 * i / a.dr)));
          c.n_tokens = st.n;
          c.start_pos = st.start;
          const uint32_t qk = a.dn + a.dr;
          const float sh = 1.0f / std::sqrt(static_cast<float>(a.h));
          // Norm weights stay F32 or BF16 (as DeepSeek's FP8 checkpoints keep them).
          const uint32_t norm_dt = dt == CODA_DTYPE_F32 ? CODA_DTYPE_F32 : CODA_DTYPE_BF16;
          Weight absent;
          absent.absent = true;
          if (a.q_lora) {
            c.weights.push_back(g.Make(dt, a.q_lora, a.h, sh));
            c.weights.push_back(g.Make(norm_dt, 0, a.q_lora, 0.1f, 1.0f));
            c.weights.push_back(g.Make(dt, uint64_t{a.H} * qk, a.q_lora, 1.0f / std::sqrt(static_cast<float>(a.q_lora))));
            c.weights.push_back(absent);
          } else {
            c.weights.push_back(absent);
            c.weights.push_back(absent);
            c.weights.push_back(absent);
            c.weights.push_back(g.Make(dt, uint64_t{a.H} * qk, a.h, sh));
          }
          c.weights.push_back(g.Make(dt, a.c + a.dr, a.h, sh));
          c.weights.push_back(g.Make(norm_dt, 0, a.c, 0.1f, 1.0f));
          c.weights.push_back(g.Make(dt, uint64_t{a.H} * (a.dn + a.dv), a.c, 1.0f / std::sqrt(static_cast<float>(a.c))));
          c.weights.push_back(g.Make(dt, a.h, uint64_t{a.H} * a.dv, 1.0f / std::sqrt(static_cast<float>(a.H * a.dv))));
          c.inputs.push_back(g.F32({st.n, a.h}));
          c.outputs.push_back(Zeros(CODA_DTYPE_F32, {st.n, a.h}));
          c.has_kv = true;
          c.kv_dtype = kv;
          c.kv_row = a.c + a.dr;
          c.kv_n_ctx = st.start + st.n + 2;
          // Earlier positions hold what earlier steps would have cached: random latents.
          c.kv_init.assign(uint64_t{c.kv_n_ctx} * c.kv_row * coda_dtype_size(kv), 0);
          for (uint64_t i = 0; i < uint64_t{st.start} * c.kv_row; ++i) {
            const float v = g.Normal();
            if (kv == CODA_DTYPE_BF16) {
              const uint16_t b = coda_f32_to_bf16(v);
              std::memcpy(c.kv_init.data() + 2 * i, &b, 2);
            } else {
              std::memcpy(c.kv_init.data() + 4 * i, &v, 4);
            }
          }
          c.tol = Tolerance(dt, kv);
          out.push_back(std::move(c));
        }
}

std::string Reference(const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const size_t n = op.n_tokens, H = hp.n_heads, dn = hp.qk_nope_head_dim, dr = hp.qk_rope_head_dim,
               dv = hp.v_head_dim, c = hp.kv_lora_rank, qk = dn + dr, row = c + dr;
  const coda_tensor* w = op.weights;  // q_a, q_a_norm, q_b, q, kv_a, kv_a_norm, kv_b, o
  if (op.start_pos + n > op.kv.n_ctx) return "KV cache too small";
  const std::vector<double> x = In(op.inputs[0]);
  std::vector<double> q;
  if (w[0].data) {
    std::vector<double> qa = MatMul(x, n, w[0]);
    for (size_t t = 0; t < n; ++t) RmsNormInPlace(qa.data() + t * hp.q_lora_rank, hp.q_lora_rank, w[1], hp.rms_norm_eps);
    q = MatMul(qa, n, w[2]);
  } else {
    q = MatMul(x, n, w[3]);
  }
  std::vector<double> kv = MatMul(x, n, w[4]);
  for (size_t t = 0; t < n; ++t) {
    const uint32_t pos = static_cast<uint32_t>(op.start_pos + t);
    RmsNormInPlace(kv.data() + t * row, c, w[5], hp.rms_norm_eps);
    RopeInPlace(kv.data() + t * row + c, dr, pos, hp.rope_inv_freq);
    for (size_t h = 0; h < H; ++h) RopeInPlace(q.data() + (t * H + h) * qk + dn, dr, pos, hp.rope_inv_freq);
  }
  // Append to the cache in its dtype, then attend over what the cache holds.
  const bool bf16 = op.kv.dtype == CODA_DTYPE_BF16;
  for (size_t i = 0; i < n * row; ++i) {
    const size_t at = op.start_pos * row + i;
    if (bf16) static_cast<uint16_t*>(op.kv.data)[at] = coda_f32_to_bf16(static_cast<float>(kv[i]));
    else static_cast<float*>(op.kv.data)[at] = static_cast<float>(kv[i]);
  }
  const size_t total = op.start_pos + n;
  std::vector<double> cache(total * row);
  for (size_t i = 0; i < cache.size(); ++i)
    cache[i] = bf16 ? coda_bf16_to_f32(static_cast<const uint16_t*>(op.kv.data)[i]) : static_cast<const float*>(op.kv.data)[i];
  // Expanded form: per head, keys and values of every position from the latent through kv_b.
  std::vector<double> attn(n * H * dv);
  std::vector<double> k(total * dn), v(total * dv), p(total);
  for (size_t h = 0; h < H; ++h) {
    for (size_t pos = 0; pos < total; ++pos) {
      const double* lat = cache.data() + pos * row;
      for (size_t d = 0; d < dn + dv; ++d) {
        double s = 0;
        for (size_t j = 0; j < c; ++j) s += WeightAt(w[6], h * (dn + dv) + d, j) * lat[j];
        if (d < dn) k[pos * dn + d] = s;
        else v[pos * dv + d - dn] = s;
      }
    }
    for (size_t t = 0; t < n; ++t) {
      const double* qh = q.data() + (t * H + h) * qk;
      const size_t visible = op.start_pos + t + 1;
      double mx = -INFINITY;
      for (size_t pos = 0; pos < visible; ++pos) {
        double s = 0;
        for (size_t d = 0; d < dn; ++d) s += qh[d] * k[pos * dn + d];
        for (size_t d = 0; d < dr; ++d) s += qh[dn + d] * cache[pos * row + c + d];
        p[pos] = s * hp.softmax_scale;
        mx = std::max(mx, p[pos]);
      }
      double sum = 0;
      for (size_t pos = 0; pos < visible; ++pos) sum += (p[pos] = std::exp(p[pos] - mx));
      for (size_t pos = 0; pos < visible; ++pos)
        for (size_t d = 0; d < dv; ++d) attn[(t * H + h) * dv + d] += p[pos] / sum * v[pos * dv + d];
    }
  }
  Out(MatMul(attn, n, w[7]), op.outputs[0]);
  return "";
}

}  // namespace

const OpSuite kMlaAttentionSuite = {Cases, Reference, nullptr};

}  // namespace coda::conformance
