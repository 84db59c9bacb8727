#include "ops.h"

#include <dnnl.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

namespace coda::cpu {

namespace {

// Above Context::gemm_min_tokens, weight panels are decoded to F32 once and multiplied with
// oneDNN's SGEMM (compute bound), so decoding costs 1/n of the multiply.
constexpr uint64_t kPanelBytes = 4u << 20;
// Up to this many tokens, attention reads kv_b_proj in its stored dtype (decode); beyond, each
// head's rows are decoded to F32 once and reused by every token.
constexpr size_t kAbsorbDirectMaxTokens = 4;
constexpr size_t kHeadGroup = 4;
// Beyond kAbsorbDirectMaxTokens tokens, attention runs as matrix products while the cache
// holds at most this many rows (an F32 copy of a BF16 cache, 75 MB at V3's row of 576; per
// thread a block of scores, 8 MB, and in the expanded form one head's keys and values, 42 MB);
// longer caches go token by token.
constexpr size_t kGemmAttentionMaxRows = 32768;
constexpr size_t kAttentionTokenBlock = 64;
// Decode splits the cache by position across threads from this many rows per thread on.
constexpr size_t kMinSplitRows = 64;

inline float* F(const coda_tensor& t) { return static_cast<float*>(t.data); }
inline const float* CF(const coda_tensor& t) { return static_cast<const float*>(t.data); }

float LoadElem(const coda_tensor& t, uint64_t i) {
  switch (t.dtype) {
    case CODA_DTYPE_F32: return static_cast<const float*>(t.data)[i];
    case CODA_DTYPE_BF16: return coda_bf16_to_f32(static_cast<const uint16_t*>(t.data)[i]);
    default: return 0.0f;
  }
}

// RMSNorm of n rows of d values: y = x * rsqrt(mean(x^2) + eps) * w.
void RmsNormRows(const float* x, size_t ldx, size_t n, size_t d, const coda_tensor& w, float eps, float* y,
                 size_t ldy) {
  std::vector<float> wf(d);
  for (size_t i = 0; i < d; ++i) wf[i] = LoadElem(w, i);
  for (size_t t = 0; t < n; ++t) {
    const float* xr = x + t * ldx;
    double ss = 0;
    for (size_t i = 0; i < d; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float r = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(d)) + eps);
    float* yr = y + t * ldy;
    for (size_t i = 0; i < d; ++i) yr[i] = xr[i] * r * wf[i];
  }
}

// cos and sin of each rotary frequency at position `pos`: cs[2i], cs[2i + 1].
void RopeAngles(uint32_t pos, size_t dr, const float* inv_freq, float* cs) {
  for (size_t i = 0; i < dr / 2; ++i) {
    const double a = static_cast<double>(pos) * inv_freq[i];
    cs[2 * i] = static_cast<float>(std::cos(a));
    cs[2 * i + 1] = static_cast<float>(std::sin(a));
  }
}

// Interleaved-pair rotary embedding on `dr` values with the angles from RopeAngles.
void Rope(float* v, size_t dr, const float* cs) {
  for (size_t i = 0; i < dr / 2; ++i) {
    const float c = cs[2 * i], s = cs[2 * i + 1];
    const float x0 = v[2 * i], x1 = v[2 * i + 1];
    v[2 * i] = x0 * c - x1 * s;
    v[2 * i + 1] = x0 * s + x1 * c;
  }
}

// C[m, nn] = alpha A[m, kk] B + beta C, B being [kk, nn] (transb 'N') or [nn, kk] ('T'), all
// row-major; one thread (the caller's).
std::string Gemm(char transb, size_t m, size_t nn, size_t kk, float alpha, const float* a, size_t lda, const float* b,
                 size_t ldb, float beta, float* c, size_t ldc) {
  const dnnl_status_t s = dnnl_sgemm('N', transb, static_cast<dnnl_dim_t>(m), static_cast<dnnl_dim_t>(nn),
                                     static_cast<dnnl_dim_t>(kk), alpha, a, static_cast<dnnl_dim_t>(lda), b,
                                     static_cast<dnnl_dim_t>(ldb), beta, c, static_cast<dnnl_dim_t>(ldc));
  return s == dnnl_success ? "" : "oneDNN sgemm failed with status " + std::to_string(static_cast<int>(s));
}

// Swiglu MLP on n rows: y = down(silu(gate x) * up x).
std::string SwigluMlp(Context& ctx, const Weight& gate, const Weight& up, const Weight& down, const float* x,
                      size_t n, float* y, std::vector<float>& tmp_g, std::vector<float>& tmp_u) {
  const size_t width = gate.rows;
  tmp_g.resize(n * width);
  tmp_u.resize(n * width);
  std::string e = LinearBatch(ctx, {{gate, x, n, tmp_g.data()}, {up, x, n, tmp_u.data()}});
  if (!e.empty()) return e;
  ctx.k->silu_mul(tmp_g.data(), tmp_u.data(), n * width);
  return Linear(ctx, down, tmp_g.data(), n, y);
}

}  // namespace

Weight ToWeight(const coda_tensor& t) {
  Weight w;
  w.dtype = t.dtype;
  w.rows = t.ndim >= 2 ? t.shape[0] : 1;
  w.cols = t.ndim >= 2 ? t.shape[1] : t.shape[0];
  w.data = static_cast<const uint8_t*>(t.data);
  if (t.dtype == CODA_DTYPE_FP8_E4M3 && t.scale) {
    w.scales = static_cast<const float*>(t.scale->data);
    w.block = t.block ? t.block : 128;
    w.scale_cols = t.scale->shape[1];
  }
  return w;
}

namespace {

std::string LinearInt8(Context& ctx, const Weight& w, const float* x, size_t n, float* y) {
  Int8Activations& a = ctx.act8;
  Int8Prepare(a, n, w.cols, w.block);
  ctx.pool->ParallelFor(n, 4, [&](size_t t0, size_t t1, unsigned) { Int8QuantizeRows(x, w.cols, a, t0, t1); });
  if (ctx.thread_panel8.size() < ctx.pool->size()) ctx.thread_panel8.resize(ctx.pool->size());
  constexpr uint64_t kRows = kInt8PanelRows;
  ctx.pool->ParallelFor((w.rows + kRows - 1) / kRows, 1, [&](size_t p0, size_t p1, unsigned ti) {
    Int8Gemm(w, a, y, w.rows, p0 * kRows, std::min<uint64_t>(w.rows, p1 * kRows), ctx.thread_panel8[ti]);
  });
  return "";
}

bool UsesInt8(const Context& ctx, const Weight& w, size_t n) {
  return n >= ctx.int8_min_tokens && !ctx.exact_products && Int8GemmRuns(w);
}

// Whether Linear streams the weights through the register kernels (few tokens).
bool Streams(const Context& ctx, const Weight& w, size_t n) { return n < ctx.gemm_min_tokens && !UsesInt8(ctx, w, n); }

}  // namespace

std::string Linear(Context& ctx, const Weight& w, const float* x, size_t n, float* y) {
  if (UsesInt8(ctx, w, n)) return LinearInt8(ctx, w, x, n, y);
  if (n < ctx.gemm_min_tokens) {
    const size_t grain = std::max<size_t>(1, 16 / std::max<size_t>(1, n));
    ctx.pool->ParallelFor(w.rows, grain, [&](size_t r0, size_t r1, unsigned) {
      ctx.k->matmul_rows(w, x, w.cols, n, y, w.rows, r0, r1);
    });
    return "";
  }
  // Each pool thread decodes panels of its own rows and multiplies them with a one-thread
  // SGEMM: oneDNN's OpenMP team would otherwise spin against the pool's threads around every
  // call (on 2 cores that halved prefill speed).
  const uint64_t panel_rows = std::max<uint64_t>(16, kPanelBytes / (w.cols * 4));
  if (ctx.thread_panel.size() < ctx.pool->size()) ctx.thread_panel.resize(ctx.pool->size());
  std::vector<std::string> errors(ctx.pool->size());
  ctx.pool->ParallelFor(w.rows, 16, [&](size_t a, size_t b, unsigned ti) {
    std::vector<float>& panel = ctx.thread_panel[ti];
    panel.resize(static_cast<size_t>(std::min<uint64_t>(panel_rows, b - a) * w.cols));
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    for (uint64_t r0 = a; r0 < b && errors[ti].empty(); r0 += panel_rows) {
      const uint64_t r1 = std::min<uint64_t>(b, r0 + panel_rows);
      ctx.k->dequant_rows(w, r0, r1, panel.data());
      errors[ti] = Gemm('T', n, r1 - r0, w.cols, 1.0f, x, w.cols, panel.data(), w.cols, 0.0f, y + r0, w.rows);
    }
    omp_set_num_threads(saved);
  });
  for (const std::string& e : errors)
    if (!e.empty()) return e;
  return "";
}

std::string LinearBatch(Context& ctx, const std::vector<LinearJob>& all) {
  // Jobs with enough tokens go through products one by one; the others still share one region
  // (an expert with many tokens must not send the few-token ones to a region each).
  std::vector<LinearJob> jobs;
  for (const LinearJob& j : all) {
    if (Streams(ctx, j.w, j.n)) {
      jobs.push_back(j);
      continue;
    }
    std::string e = Linear(ctx, j.w, j.x, j.n, j.y);
    if (!e.empty()) return e;
  }
  if (jobs.empty()) return "";
  std::vector<uint64_t> first_row(jobs.size() + 1, 0);  // prefix sums of rows
  for (size_t j = 0; j < jobs.size(); ++j) first_row[j + 1] = first_row[j] + jobs[j].w.rows;
  ctx.pool->ParallelFor(first_row.back(), 16, [&](size_t a, size_t b, unsigned) {
    size_t j = static_cast<size_t>(std::upper_bound(first_row.begin(), first_row.end(), a) - first_row.begin()) - 1;
    for (; a < b; ++j) {
      const LinearJob& job = jobs[j];
      const uint64_t r0 = a - first_row[j], r1 = std::min<uint64_t>(b, first_row[j + 1]) - first_row[j];
      if (job.n) ctx.k->matmul_rows(job.w, job.x, job.w.cols, job.n, job.y, job.w.rows, r0, r1);
      a = first_row[j] + r1;
    }
  });
  return "";
}

namespace {

std::string Embed(const coda_op& op) {
  const coda_tensor& table = op.weights[0];
  const int32_t* ids = static_cast<const int32_t*>(op.inputs[0].data);
  const uint64_t vocab = table.shape[0], h = table.shape[1];
  float* y = F(op.outputs[0]);
  for (uint32_t t = 0; t < op.n_tokens; ++t) {
    if (ids[t] < 0 || static_cast<uint64_t>(ids[t]) >= vocab)
      return "token id " + std::to_string(ids[t]) + " is outside the vocabulary (" + std::to_string(vocab) + ")";
    for (uint64_t i = 0; i < h; ++i) y[t * h + i] = LoadElem(table, static_cast<uint64_t>(ids[t]) * h + i);
  }
  return "";
}

// Attention of n >= kAbsorbDirectMaxTokens tokens as matrix products, per head, in one of the two
// forms the op allows (equal in exact arithmetic), whichever multiplies less:
// - absorbed: q_nope through W_UK beside q_pe, scores against the cache rows [latent | k_pe], a
//   causal softmax, the attended latent, then W_UV: (c + dr) + c per token and position;
// - expanded: each position's key W_UK lat beside k_pe and value W_UV lat, once per call
//   ((dn + dv) c per position), then scores and the attended value: (dn + dr) + dv per token and
//   position. A long prefill takes this one (pp2048: 3.4x fewer multiplies in the quadratic part);
//   a short chunk after a long context the absorbed one.
// Over an F32 copy of a BF16 cache, in F32 throughout; tokens go in blocks so the causal mask
// leaves little unused work. attn[t][h] gets dv values.
std::string AttentionByGemm(Context& ctx, const coda_op& op, const float* q, float* attn) {
  const coda_hparams& hp = *op.hparams;
  const size_t n = op.n_tokens, start = op.start_pos, total = start + n;
  const size_t H = hp.n_heads, dn = hp.qk_nope_head_dim, dr = hp.qk_rope_head_dim, dv = hp.v_head_dim,
               c = hp.kv_lora_rank, qk = dn + dr, row = c + dr;
  const Weight wkvb = ToWeight(op.weights[6]);
  const float* cache = static_cast<const float*>(op.kv.data);
  if (op.kv.dtype == CODA_DTYPE_BF16) {
    std::vector<float>& c32 = ctx.scratch[3];
    c32.resize(total * row);
    const uint16_t* c16 = static_cast<const uint16_t*>(op.kv.data);
    ctx.pool->ParallelFor(total, 64, [&](size_t a, size_t b, unsigned) {
      for (size_t i = a * row; i < b * row; ++i) c32[i] = coda_bf16_to_f32(c16[i]);
    });
    cache = c32.data();
  }
  const Kernels& k = *ctx.k;
  // Multiply-adds per head of each form; the attended positions sum to n start + n (n + 1) / 2.
  const double attended = static_cast<double>(n) * static_cast<double>(start) + 0.5 * n * (n + 1.0);
  const double absorbed = static_cast<double>(n) * static_cast<double>((dn + dv) * c) + attended * static_cast<double>(row + c);
  const double expanded = static_cast<double>(total) * static_cast<double>((dn + dv) * c) + attended * static_cast<double>(qk + dv);
  const bool expand = expanded < absorbed;
  // Rows of scores [nb, visible] into softmax weights; row i (position first + i) sees first + i + 1.
  auto CausalSoftmax = [&k](float* sc, size_t nb, size_t visible, size_t first) {
    for (size_t i = 0; i < nb; ++i) {
      float* p = sc + i * visible;
      const size_t len = first + i + 1;
      k.softmax(p, len);
      std::fill(p + len, p + visible, 0.0f);
    }
  };
  std::vector<std::string> errors(ctx.pool->size());
  ctx.pool->ParallelFor(H, 1, [&](size_t h0, size_t h1, unsigned ti) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    std::vector<float>& s = ctx.thread_scratch[ti];
    s.resize((dn + dv) * c + kAttentionTokenBlock * (row + total + c) + (expand ? total * (qk + dv) : 0));
    float* wh = s.data();  // this head's kv_b_proj rows: W_UK [dn, c], then W_UV [dv, c]
    float* qcat = wh + (dn + dv) * c;  // [block, row]: q_nope W_UK, then q_pe
    float* sc = qcat + kAttentionTokenBlock * row;  // [block, visible]: scores, then weights
    float* olat = sc + kAttentionTokenBlock * total;  // [block, c]
    float* keys = olat + kAttentionTokenBlock * c;  // expanded: [total, qk] (W_UK lat, k_pe)
    float* values = keys + total * qk;              // expanded: [total, dv] (W_UV lat)
    std::string& err = errors[ti];
    for (size_t h = h0; h < h1 && err.empty(); ++h) {
      k.dequant_rows(wkvb, h * (dn + dv), (h + 1) * (dn + dv), wh);
      if (expand) {
        err = Gemm('T', total, dn, c, 1.0f, cache, row, wh, c, 0.0f, keys, qk);
        for (size_t p = 0; p < total; ++p) std::memcpy(keys + p * qk + dn, cache + p * row + c, dr * sizeof(float));
        if (err.empty()) err = Gemm('T', total, dv, c, 1.0f, cache, row, wh + dn * c, c, 0.0f, values, dv);
      }
      for (size_t t0 = 0; t0 < n && err.empty(); t0 += kAttentionTokenBlock) {
        const size_t nb = std::min(kAttentionTokenBlock, n - t0), visible = start + t0 + nb;
        const float* qh = q + (t0 * H + h) * qk;
        float* out = attn + (t0 * H + h) * dv;
        if (expand) {
          err = Gemm('T', nb, visible, qk, hp.softmax_scale, qh, H * qk, keys, qk, 0.0f, sc, visible);
          if (err.empty()) CausalSoftmax(sc, nb, visible, start + t0);
          if (err.empty()) err = Gemm('N', nb, dv, visible, 1.0f, sc, visible, values, dv, 0.0f, out, H * dv);
          continue;
        }
        err = Gemm('N', nb, c, dn, 1.0f, qh, H * qk, wh, c, 0.0f, qcat, row);
        for (size_t i = 0; i < nb; ++i) std::memcpy(qcat + i * row + c, qh + i * H * qk + dn, dr * sizeof(float));
        if (err.empty()) err = Gemm('T', nb, visible, row, hp.softmax_scale, qcat, row, cache, row, 0.0f, sc, visible);
        if (err.empty()) CausalSoftmax(sc, nb, visible, start + t0);
        if (err.empty()) err = Gemm('N', nb, c, visible, 1.0f, sc, visible, cache, row, 0.0f, olat, c);
        if (err.empty()) err = Gemm('T', nb, dv, c, 1.0f, olat, c, wh + dn * c, c, 0.0f, out, H * dv);
      }
    }
    omp_set_num_threads(saved);
  });
  for (const std::string& e : errors)
    if (!e.empty()) return e;
  return "";
}

std::string MlaAttention(Context& ctx, const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const size_t n = op.n_tokens, start = op.start_pos, total = start + n;
  const size_t H = hp.n_heads, dn = hp.qk_nope_head_dim, dr = hp.qk_rope_head_dim,
               dv = hp.v_head_dim, c = hp.kv_lora_rank, qk = dn + dr, row = c + dr;
  if (total > op.kv.n_ctx) return "KV cache holds " + std::to_string(op.kv.n_ctx) + " positions, need " + std::to_string(total);
  const coda_tensor* w = op.weights;  // q_a, q_a_norm, q_b, q, kv_a, kv_a_norm, kv_b, o
  const float* x = CF(op.inputs[0]);
  std::vector<float>& q = ctx.scratch[0];
  std::vector<float>& kv = ctx.scratch[1];
  std::vector<float>& attn = ctx.scratch[2];
  q.resize(n * H * qk);
  kv.resize(n * row);
  std::string e;
  if (w[0].data) {  // q LoRA: q_a and kv_a both read x
    std::vector<float> qa(n * hp.q_lora_rank);
    e = LinearBatch(ctx, {{ToWeight(w[0]), x, n, qa.data()}, {ToWeight(w[4]), x, n, kv.data()}});
    if (!e.empty()) return e;
    RmsNormRows(qa.data(), hp.q_lora_rank, n, hp.q_lora_rank, w[1], hp.rms_norm_eps, qa.data(), hp.q_lora_rank);
    e = Linear(ctx, ToWeight(w[2]), qa.data(), n, q.data());
  } else {
    e = LinearBatch(ctx, {{ToWeight(w[3]), x, n, q.data()}, {ToWeight(w[4]), x, n, kv.data()}});
  }
  if (!e.empty()) return e;
  RmsNormRows(kv.data(), row, n, c, w[5], hp.rms_norm_eps, kv.data(), row);
  std::vector<float> angles(dr);  // shared by the key and every head's query
  for (size_t t = 0; t < n; ++t) {
    RopeAngles(static_cast<uint32_t>(start + t), dr, hp.rope_inv_freq, angles.data());
    Rope(kv.data() + t * row + c, dr, angles.data());
    for (size_t h = 0; h < H; ++h) Rope(q.data() + (t * H + h) * qk + dn, dr, angles.data());
  }
  // Append [latent | k_pe] to the cache.
  const bool bf16 = op.kv.dtype == CODA_DTYPE_BF16;
  if (bf16) {
    uint16_t* c16 = static_cast<uint16_t*>(op.kv.data);
    for (size_t i = 0; i < n * row; ++i) c16[start * row + i] = coda_f32_to_bf16(kv[i]);
  } else {
    std::memcpy(static_cast<float*>(op.kv.data) + start * row, kv.data(), n * row * sizeof(float));
  }
  const Kernels& k = *ctx.k;

  // Absorbed attention: q_nope is folded through W_UK into the latent space, scores are taken
  // against the latent cache, and W_UV maps the attended latent to values.
  attn.resize(n * H * dv);
  const Weight wkvb = ToWeight(w[6]);
  if (n <= kAbsorbDirectMaxTokens) {
    // Few tokens read kv_b_proj in its stored dtype. Per token: q_nope through W_UK for every
    // head; then all heads at once over the cache, which long contexts split by position so
    // each thread reads its share of the cache once; then the merge and W_UV.
    std::vector<float>& qabs = ctx.scratch[4];
    std::vector<float>& part = ctx.scratch[5];  // per split: olat [H, c]; then lse [splits, H]
    const size_t threads = ctx.pool->size();
    qabs.resize(H * c);
    for (size_t t = 0; t < n; ++t) {
      const size_t end = start + t + 1;
      const float* qt = q.data() + t * H * qk;
      ctx.pool->ParallelFor(H, 1, [&](size_t h0, size_t h1, unsigned) {
        for (size_t h = h0; h < h1; ++h) {
          float* qa = qabs.data() + h * c;
          std::fill(qa, qa + c, 0.0f);
          k.matvec_t(wkvb, h * (dn + dv), h * (dn + dv) + dn, qt + h * qk, qa);
        }
      });
      const size_t splits = end >= kMinSplitRows * threads ? threads : 1;
      part.resize(splits * H * (c + 1));
      float* lse = part.data() + splits * H * c;
      if (splits > 1) {
        ctx.pool->ParallelFor(splits, 1, [&](size_t s0, size_t s1, unsigned ti) {
          for (size_t sp = s0; sp < s1; ++sp) {
            const size_t b = end * sp / splits, e = end * (sp + 1) / splits;
            std::vector<float>& sc = ctx.thread_scratch[ti];
            sc.resize(H * (e - b));
            k.mla_attend({qabs.data(), qt + dn, qk, H, op.kv.data, bf16, row, c, dr, b, e, hp.softmax_scale, sc.data(),
                          part.data() + sp * H * c, lse + sp * H});
          }
        });
      } else {
        ctx.pool->ParallelFor(H, kHeadGroup, [&](size_t h0, size_t h1, unsigned ti) {
          std::vector<float>& sc = ctx.thread_scratch[ti];
          sc.resize((h1 - h0) * end);
          k.mla_attend({qabs.data() + h0 * c, qt + h0 * qk + dn, qk, h1 - h0, op.kv.data, bf16, row, c, dr, 0, end,
                        hp.softmax_scale, sc.data(), part.data() + h0 * c, nullptr});
        });
      }
      // Each head's parts: po[h * splits + sp], pl likewise.
      std::vector<const float*>& po = ctx.part_ptrs[0];
      std::vector<const float*>& pl = ctx.part_ptrs[1];
      po.resize(H * splits);
      pl.resize(H * splits);
      for (size_t h = 0; h < H; ++h)
        for (size_t sp = 0; sp < splits; ++sp) {
          po[h * splits + sp] = part.data() + sp * H * c + h * c;
          pl[h * splits + sp] = lse + sp * H + h;
        }
      ctx.pool->ParallelFor(H, 1, [&](size_t h0, size_t h1, unsigned ti) {
        std::vector<float>& sc = ctx.thread_scratch[ti];
        sc.resize(c + H * (dn + dv));
        float* merged = sc.data();
        float* vfull = merged + c;
        for (size_t h = h0; h < h1; ++h) {
          const float* ol = part.data() + h * c;
          if (splits > 1) {
            MergeAttention(splits, po.data() + h * splits, pl.data() + h * splits, 1, c, merged);
            ol = merged;
          }
          const uint64_t uv = h * (dn + dv) + dn;
          k.matmul_rows(wkvb, ol, c, 1, vfull, 0, uv, uv + dv);
          std::memcpy(attn.data() + (t * H + h) * dv, vfull + uv, dv * sizeof(float));
        }
      });
    }
    return Linear(ctx, ToWeight(w[7]), attn.data(), n, F(op.outputs[0]));
  }

  if (total <= kGemmAttentionMaxRows) {
    e = AttentionByGemm(ctx, op, q.data(), attn.data());
    if (!e.empty()) return e;
    return Linear(ctx, ToWeight(w[7]), attn.data(), n, F(op.outputs[0]));
  }
  // Many tokens over a long cache: heads go in groups of kHeadGroup so each cache row is read
  // once per group, and each group's kv_b_proj rows are decoded to F32 once and reused by every
  // token.
  ctx.pool->ParallelFor(H, kHeadGroup, [&](size_t h0, size_t h1, unsigned ti) {
    std::vector<float>& s = ctx.thread_scratch[ti];
    const size_t wh_size = kHeadGroup * (dn + dv) * c;
    s.resize(wh_size + 2 * kHeadGroup * c + kHeadGroup * total);
    float* wh = s.data();
    float* qabs = wh + wh_size;
    float* olat = qabs + kHeadGroup * c;
    float* scores = olat + kHeadGroup * c;
    for (size_t g0 = h0; g0 < h1; g0 += kHeadGroup) {
      const size_t g1 = std::min(h1, g0 + kHeadGroup), nh = g1 - g0;
      k.dequant_rows(wkvb, g0 * (dn + dv), g1 * (dn + dv), wh);
      for (size_t t = 0; t < n; ++t) {
        for (size_t h = g0; h < g1; ++h) {
          const float* qh = q.data() + (t * H + h) * qk;
          float* qa = qabs + (h - g0) * c;
          std::fill(qa, qa + c, 0.0f);
          const float* uk = wh + (h - g0) * (dn + dv) * c;
          for (size_t d = 0; d < dn; ++d) k.axpy(qh[d], uk + d * c, qa, c);
        }
        k.mla_attend({qabs, q.data() + (t * H + g0) * qk + dn, qk, nh, op.kv.data, bf16, row, c, dr, 0, start + t + 1,
                      hp.softmax_scale, scores, olat, nullptr});
        for (size_t h = g0; h < g1; ++h) {
          const float* ol = olat + (h - g0) * c;
          float* out = attn.data() + (t * H + h) * dv;
          const float* wv = wh + ((h - g0) * (dn + dv) + dn) * c;
          for (size_t v = 0; v < dv; ++v) out[v] = k.dot(wv + v * c, ol, c);
        }
      }
    }
  });
  return Linear(ctx, ToWeight(w[7]), attn.data(), n, F(op.outputs[0]));
}

std::string MoeGate(Context& ctx, const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const size_t n = op.n_tokens, E = hp.n_routed_experts, K = hp.n_experts_per_tok, G = hp.n_group;
  std::vector<float> logits(n * E);
  std::string e = Linear(ctx, ToWeight(op.weights[0]), CF(op.inputs[0]), n, logits.data());
  if (!e.empty()) return e;
  const coda_tensor& bias = op.weights[1];
  int32_t* ids = static_cast<int32_t*>(op.outputs[0].data);
  float* wts = F(op.outputs[1]);
  std::vector<float> scores(E), sel(E), group(G);
  std::vector<size_t> order(E), gorder(G);
  for (size_t t = 0; t < n; ++t) {
    const float* l = logits.data() + t * E;
    if (hp.scoring_func == 0) {
      const float mx = *std::max_element(l, l + E);
      float sum = 0;
      for (size_t i = 0; i < E; ++i) sum += (scores[i] = std::exp(l[i] - mx));
      for (size_t i = 0; i < E; ++i) scores[i] /= sum;
    } else {
      for (size_t i = 0; i < E; ++i) scores[i] = 1.0f / (1.0f + std::exp(-l[i]));
    }
    for (size_t i = 0; i < E; ++i) sel[i] = scores[i] + (bias.data ? LoadElem(bias, i) : 0.0f);
    if (G > 1) {
      // Keep the topk_group best groups (by max, or by the sum of the top two with a bias);
      // the others drop out with -inf (selection scores may be negative).
      const size_t per = E / G;
      for (size_t g = 0; g < G; ++g) {
        const float* s = sel.data() + g * per;
        if (bias.data) {
          float a = -INFINITY, b = -INFINITY;
          for (size_t i = 0; i < per; ++i) {
            if (s[i] > a) { b = a; a = s[i]; } else if (s[i] > b) { b = s[i]; }
          }
          group[g] = per > 1 ? a + b : a;
        } else {
          group[g] = *std::max_element(s, s + per);
        }
      }
      std::iota(gorder.begin(), gorder.end(), 0);
      std::stable_sort(gorder.begin(), gorder.end(), [&](size_t a, size_t b) { return group[a] > group[b]; });
      for (size_t r = hp.topk_group; r < G; ++r)
        std::fill(sel.begin() + static_cast<long>(gorder[r] * per), sel.begin() + static_cast<long>((gorder[r] + 1) * per), -INFINITY);
    }
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + static_cast<long>(K), order.end(), [&](size_t a, size_t b) {
      return sel[a] > sel[b] || (sel[a] == sel[b] && a < b);
    });
    float sum = 0;
    for (size_t j = 0; j < K; ++j) sum += scores[order[j]];
    for (size_t j = 0; j < K; ++j) {
      ids[t * K + j] = static_cast<int32_t>(order[j]);
      float wv = scores[order[j]];
      if (hp.norm_topk_prob) wv /= sum;
      wts[t * K + j] = wv * hp.routed_scaling_factor;
    }
  }
  return "";
}

std::string MoeExperts(Context& ctx, const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const size_t n = op.n_tokens, K = hp.n_experts_per_tok, E = hp.n_routed_experts;
  const size_t h = op.inputs[0].shape[1];
  const float* x = CF(op.inputs[0]);
  const int32_t* ids = static_cast<const int32_t*>(op.inputs[1].data);
  const float* wts = CF(op.inputs[2]);
  float* y = F(op.outputs[0]);
  std::fill(y, y + n * h, 0.0f);
  // Tokens grouped by expert, so each expert's weights are read once per call.
  std::vector<std::vector<std::pair<uint32_t, float>>> routed(E);
  for (size_t t = 0; t < n; ++t)
    for (size_t j = 0; j < K; ++j) {
      const int32_t id = ids[t * K + j];
      if (id < 0 || static_cast<size_t>(id) >= E) return "expert id " + std::to_string(id) + " out of range";
      routed[static_cast<size_t>(id)].push_back({static_cast<uint32_t>(t), wts[t * K + j]});
    }
  // Gather each expert's tokens, then run gate+up of every active expert in one batch, SwiGLU,
  // and every down projection in a second batch.
  struct Active {
    size_t e, offset, m;  // expert, first row in the gathered buffers, token count
  };
  std::vector<Active> active;
  size_t rows = 0;
  for (size_t e = 0; e < E; ++e)
    if (!routed[e].empty()) {
      active.push_back({e, rows, routed[e].size()});
      rows += routed[e].size();
    }
  const size_t width = ToWeight(op.weights[0]).rows;
  std::vector<float> xe(rows * h), ye(rows * h), g(rows * width), u(rows * width);
  std::vector<LinearJob> up_jobs, down_jobs;
  for (const Active& a : active) {
    for (size_t i = 0; i < a.m; ++i)
      std::memcpy(xe.data() + (a.offset + i) * h, x + routed[a.e][i].first * h, h * sizeof(float));
    const coda_tensor* w = op.weights + 3 * a.e;
    up_jobs.push_back({ToWeight(w[0]), xe.data() + a.offset * h, a.m, g.data() + a.offset * width});
    up_jobs.push_back({ToWeight(w[1]), xe.data() + a.offset * h, a.m, u.data() + a.offset * width});
    down_jobs.push_back({ToWeight(w[2]), g.data() + a.offset * width, a.m, ye.data() + a.offset * h});
  }
  std::string err = LinearBatch(ctx, up_jobs);
  if (!err.empty()) return err;
  ctx.k->silu_mul(g.data(), u.data(), rows * width);
  err = LinearBatch(ctx, down_jobs);
  if (!err.empty()) return err;
  for (const Active& a : active)
    for (size_t i = 0; i < a.m; ++i)
      ctx.k->axpy(routed[a.e][i].second, ye.data() + (a.offset + i) * h, y + routed[a.e][i].first * h, h);
  return "";
}

}  // namespace

std::string CheckOp(const coda_op& op) {
  switch (static_cast<coda_op_type>(op.type)) {
    case CODA_OP_EMBED: case CODA_OP_RMS_NORM: case CODA_OP_LINEAR: case CODA_OP_MLA_ATTENTION: case CODA_OP_MOE_GATE:
    case CODA_OP_MOE_EXPERTS: case CODA_OP_MLP: case CODA_OP_ADD: case CODA_OP_HEAD: case CODA_OP_CONCAT: break;
    default: return "op " + std::to_string(op.type) + " is not one the CPU backend runs";
  }
  if (std::string e = ops::Check(op); !e.empty()) return e;
  for (uint32_t i = 0; i < op.n_weights; ++i) {
    const coda_tensor& t = op.weights[i];
    if (!t.data && !t.buffer) continue;
    if (t.dtype != CODA_DTYPE_F32 && t.dtype != CODA_DTYPE_BF16 && t.dtype != CODA_DTYPE_FP8_E4M3)
      return "weight dtype " + std::string(coda_dtype_name(t.dtype)) + " is not supported by the CPU backend";
  }
  // FP8 rows are only decoded by the matrix kernels; a table lookup reads whole rows.
  if (op.type == CODA_OP_EMBED && op.weights[0].dtype == CODA_DTYPE_FP8_E4M3) return "an FP8 embedding table";
  if (op.type == CODA_OP_MLA_ATTENTION && op.kv.dtype != CODA_DTYPE_BF16 && op.kv.dtype != CODA_DTYPE_F32)
    return "KV cache dtype must be BF16 or F32";
  return "";
}

std::string RunOp(Context& ctx, const coda_op& op) {
  const size_t n = op.n_tokens;
  switch (op.type) {
    case CODA_OP_EMBED: return Embed(op);
    case CODA_OP_RMS_NORM: {
      const size_t d = op.inputs[0].shape[1];
      RmsNormRows(CF(op.inputs[0]), d, n, d, op.weights[0], op.hparams->rms_norm_eps, F(op.outputs[0]), d);
      return "";
    }
    case CODA_OP_LINEAR:
    case CODA_OP_HEAD: return Linear(ctx, ToWeight(op.weights[0]), CF(op.inputs[0]), op.inputs[0].shape[0], F(op.outputs[0]));
    case CODA_OP_MLA_ATTENTION: return MlaAttention(ctx, op);
    case CODA_OP_MOE_GATE: return MoeGate(ctx, op);
    case CODA_OP_MOE_EXPERTS: return MoeExperts(ctx, op);
    case CODA_OP_MLP: {
      std::vector<float>& g = ctx.scratch[0];
      std::vector<float>& u = ctx.scratch[1];
      return SwigluMlp(ctx, ToWeight(op.weights[0]), ToWeight(op.weights[1]), ToWeight(op.weights[2]), CF(op.inputs[0]),
                       n, F(op.outputs[0]), g, u);
    }
    case CODA_OP_ADD: {
      const size_t count = n * op.inputs[0].shape[1];
      const float *a = CF(op.inputs[0]), *b = CF(op.inputs[1]);
      float* y = F(op.outputs[0]);
      for (size_t i = 0; i < count; ++i) y[i] = a[i] + b[i];
      return "";
    }
    case CODA_OP_CONCAT: {
      const size_t p = op.inputs[0].shape[1], q = op.inputs[1].shape[1];
      for (size_t t = 0; t < n; ++t) {
        std::memcpy(F(op.outputs[0]) + t * (p + q), CF(op.inputs[0]) + t * p, p * sizeof(float));
        std::memcpy(F(op.outputs[0]) + t * (p + q) + p, CF(op.inputs[1]) + t * q, q * sizeof(float));
      }
      return "";
    }
  }
  return "op " + std::to_string(op.type) + " is not one the CPU backend runs";
}

}  // namespace coda::cpu
