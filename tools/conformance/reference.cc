#include "reference.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>

namespace coda::conformance {

float DecodeE4M3(uint8_t v) {
  const int sign = v >> 7, exp = (v >> 3) & 15, man = v & 7;
  if (exp == 15 && man == 7) return std::numeric_limits<float>::quiet_NaN();
  const float mag = exp == 0 ? std::ldexp(man / 8.0f, -6) : std::ldexp(1.0f + man / 8.0f, exp - 7);
  return sign ? -mag : mag;
}

uint8_t EncodeE4M3(float v) {
  // Positive codes 0x00..0x7e decode in increasing order; search them.
  const float a = std::min(std::fabs(v), 448.0f);
  uint8_t lo = 0, hi = 0x7e;
  while (lo < hi) {
    const uint8_t mid = static_cast<uint8_t>((lo + hi + 1) / 2);
    if (DecodeE4M3(mid) <= a) lo = mid;
    else hi = static_cast<uint8_t>(mid - 1);
  }
  uint8_t code = lo;
  if (lo < 0x7e) {
    const float d0 = a - DecodeE4M3(lo), d1 = DecodeE4M3(static_cast<uint8_t>(lo + 1)) - a;
    if (d1 < d0 || (d1 == d0 && (lo & 1))) code = static_cast<uint8_t>(lo + 1);
  }
  return static_cast<uint8_t>(code | (std::signbit(v) ? 0x80 : 0));
}

uint16_t F32ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float Bf16ToF32(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

double WeightAt(const coda_tensor& w, uint64_t r, uint64_t c) {
  const uint64_t cols = w.ndim >= 2 ? w.shape[1] : w.shape[0];
  const uint64_t i = r * cols + c;
  switch (w.dtype) {
    case CODA_DTYPE_F32: return static_cast<const float*>(w.data)[i];
    case CODA_DTYPE_BF16: return Bf16ToF32(static_cast<const uint16_t*>(w.data)[i]);
    case CODA_DTYPE_FP8_E4M3: {
      const uint32_t b = w.block ? w.block : 128;
      const float* s = static_cast<const float*>(w.scale->data);
      return static_cast<double>(DecodeE4M3(static_cast<const uint8_t*>(w.data)[i])) *
             s[(r / b) * w.scale->shape[1] + c / b];
    }
    default: return 0;
  }
}

namespace {

uint64_t Rows(const coda_tensor& w) { return w.ndim >= 2 ? w.shape[0] : 1; }
uint64_t Cols(const coda_tensor& w) { return w.ndim >= 2 ? w.shape[1] : w.shape[0]; }

// y[n, rows] = x[n, cols] W^T
std::vector<double> MatMul(const std::vector<double>& x, size_t n, const coda_tensor& w) {
  const uint64_t rows = Rows(w), cols = Cols(w);
  std::vector<double> y(n * rows);
  for (uint64_t r = 0; r < rows; ++r)
    for (uint64_t c = 0; c < cols; ++c) {
      const double wv = WeightAt(w, r, c);
      for (size_t t = 0; t < n; ++t) y[t * rows + r] += x[t * cols + c] * wv;
    }
  return y;
}

void RmsNormInPlace(double* v, size_t d, const coda_tensor& w, double eps) {
  double ss = 0;
  for (size_t i = 0; i < d; ++i) ss += v[i] * v[i];
  const double r = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
  for (size_t i = 0; i < d; ++i) v[i] = v[i] * r * WeightAt(w, 0, i);
}

void RopeInPlace(double* v, size_t dr, uint32_t pos, const float* inv_freq) {
  for (size_t i = 0; i < dr / 2; ++i) {
    const double a = static_cast<double>(pos) * inv_freq[i];
    const double c = std::cos(a), s = std::sin(a), x0 = v[2 * i], x1 = v[2 * i + 1];
    v[2 * i] = x0 * c - x1 * s;
    v[2 * i + 1] = x0 * s + x1 * c;
  }
}

double Silu(double x) { return x / (1.0 + std::exp(-x)); }

std::vector<double> In(const coda_tensor& t) {
  uint64_t n = 1;
  for (uint32_t d = 0; d < t.ndim; ++d) n *= t.shape[d];
  const float* p = static_cast<const float*>(t.data);
  return std::vector<double>(p, p + n);
}

void Out(const std::vector<double>& v, coda_tensor& t) {
  float* p = static_cast<float*>(t.data);
  for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<float>(v[i]);
}

std::vector<double> Swiglu(const std::vector<double>& x, size_t n, const coda_tensor* w) {
  std::vector<double> g = MatMul(x, n, w[0]), u = MatMul(x, n, w[1]);
  for (size_t i = 0; i < g.size(); ++i) g[i] = Silu(g[i]) * u[i];
  return MatMul(g, n, w[2]);
}

std::string Mla(const coda_op& op) {
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
    if (bf16) static_cast<uint16_t*>(op.kv.data)[at] = F32ToBf16(static_cast<float>(kv[i]));
    else static_cast<float*>(op.kv.data)[at] = static_cast<float>(kv[i]);
  }
  const size_t total = op.start_pos + n;
  std::vector<double> cache(total * row);
  for (size_t i = 0; i < cache.size(); ++i)
    cache[i] = bf16 ? Bf16ToF32(static_cast<const uint16_t*>(op.kv.data)[i]) : static_cast<const float*>(op.kv.data)[i];
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

std::string Gate(const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const size_t n = op.n_tokens, E = hp.n_routed_experts, K = hp.n_experts_per_tok;
  const std::vector<double> logits = MatMul(In(op.inputs[0]), n, op.weights[0]);
  const coda_tensor* bias = op.n_weights > 1 && op.weights[1].data ? &op.weights[1] : nullptr;
  for (size_t t = 0; t < n; ++t) {
    const Routing r = Route(hp, std::vector<double>(logits.begin() + static_cast<long>(t * E),
                                                    logits.begin() + static_cast<long>((t + 1) * E)),
                            bias);
    for (size_t j = 0; j < K; ++j) {
      static_cast<int32_t*>(op.outputs[0].data)[t * K + j] = r.ids[j];
      static_cast<float*>(op.outputs[1].data)[t * K + j] = static_cast<float>(r.weights[j]);
    }
  }
  return "";
}

std::string Experts(const coda_op& op) {
  const coda_hparams& hp = *op.hparams;
  const size_t n = op.n_tokens, K = hp.n_experts_per_tok, h = op.inputs[0].shape[1];
  const std::vector<double> x = In(op.inputs[0]);
  const int32_t* ids = static_cast<const int32_t*>(op.inputs[1].data);
  const float* wts = static_cast<const float*>(op.inputs[2].data);
  std::vector<double> y(n * h);
  for (size_t t = 0; t < n; ++t)
    for (size_t j = 0; j < K; ++j) {
      const int32_t e = ids[t * K + j];
      if (e < 0 || static_cast<uint32_t>(e) >= hp.n_routed_experts) return "expert id out of range";
      const std::vector<double> xe(x.begin() + static_cast<long>(t * h), x.begin() + static_cast<long>((t + 1) * h));
      const std::vector<double> ye = Swiglu(xe, 1, op.weights + 3 * static_cast<size_t>(e));
      for (size_t i = 0; i < h; ++i) y[t * h + i] += wts[t * K + j] * ye[i];
    }
  Out(y, op.outputs[0]);
  return "";
}

std::string Run(const coda_op& op) {
  const size_t n = op.n_tokens;
  switch (op.type) {
    case CODA_OP_EMBED: {
      const coda_tensor& table = op.weights[0];
      const uint64_t V = table.shape[0], h = table.shape[1];
      std::vector<double> y(n * h);
      for (size_t t = 0; t < n; ++t) {
        const int32_t id = static_cast<const int32_t*>(op.inputs[0].data)[t];
        if (id < 0 || static_cast<uint64_t>(id) >= V) return "token id out of range";
        for (uint64_t i = 0; i < h; ++i) y[t * h + i] = WeightAt(table, static_cast<uint64_t>(id), i);
      }
      Out(y, op.outputs[0]);
      return "";
    }
    case CODA_OP_RMS_NORM: {
      std::vector<double> x = In(op.inputs[0]);
      const size_t d = op.inputs[0].shape[1];
      for (size_t t = 0; t < op.inputs[0].shape[0]; ++t) RmsNormInPlace(x.data() + t * d, d, op.weights[0], op.hparams->rms_norm_eps);
      Out(x, op.outputs[0]);
      return "";
    }
    case CODA_OP_LINEAR:
    case CODA_OP_HEAD: Out(MatMul(In(op.inputs[0]), op.inputs[0].shape[0], op.weights[0]), op.outputs[0]); return "";
    case CODA_OP_MLA_ATTENTION: return Mla(op);
    case CODA_OP_MOE_GATE: return Gate(op);
    case CODA_OP_MOE_EXPERTS: return Experts(op);
    case CODA_OP_MLP: Out(Swiglu(In(op.inputs[0]), op.inputs[0].shape[0], op.weights), op.outputs[0]); return "";
    case CODA_OP_ADD: {
      std::vector<double> a = In(op.inputs[0]);
      const std::vector<double> b = In(op.inputs[1]);
      for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
      Out(a, op.outputs[0]);
      return "";
    }
    default: return "unknown op " + std::to_string(op.type);
  }
}

struct Instance {
  int unused = 0;
};

void CopyError(const std::string& m, char* error, size_t size) {
  if (error && size) std::snprintf(error, size, "%s", m.c_str());
}

bool HostMemoryOnly(const coda_op& op) {
  for (uint32_t i = 0; i < op.n_inputs; ++i)
    if (op.inputs[i].buffer) return false;
  for (uint32_t i = 0; i < op.n_outputs; ++i)
    if (op.outputs[i].buffer) return false;
  for (uint32_t i = 0; i < op.n_weights; ++i)
    if (op.weights[i].buffer) return false;
  return !op.kv.buffer;
}

const coda_backend_api kApi = {
    sizeof(coda_backend_api),
    CODA_BACKEND_ABI_VERSION,
    "reference",
    "1",
    [](const coda_host*, const coda_backend_options*, void** self, char*, size_t) {
      *self = new Instance();
      return CODA_STATUS_OK;
    },
    [](void* self) { delete static_cast<Instance*>(self); },
    [](void*) { return "scalar reference (double accumulation, expanded MLA)"; },
    [](void*, const coda_op* op) { return op->type < CODA_OP_COUNT && HostMemoryOnly(*op) ? 1 : 0; },
    [](void*, const coda_op* op, char* error, size_t size) {
      if (op->type >= CODA_OP_COUNT || !HostMemoryOnly(*op)) {
        CopyError("unsupported op", error, size);
        return CODA_STATUS_UNSUPPORTED;
      }
      const std::string e = Run(*op);
      if (e.empty()) return CODA_STATUS_OK;
      CopyError(e, error, size);
      return CODA_STATUS_INVALID_ARGUMENT;
    },
};

}  // namespace

Routing Route(const coda_hparams& hp, const std::vector<double>& logits, const coda_tensor* bias) {
  const size_t E = hp.n_routed_experts, K = hp.n_experts_per_tok, G = std::max(1u, hp.n_group);
  std::vector<double> scores(E), sel(E);
  if (hp.scoring_func == 0) {
    const double mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (size_t i = 0; i < E; ++i) sum += (scores[i] = std::exp(logits[i] - mx));
    for (double& s : scores) s /= sum;
  } else {
    for (size_t i = 0; i < E; ++i) scores[i] = 1.0 / (1.0 + std::exp(-logits[i]));
  }
  for (size_t i = 0; i < E; ++i) sel[i] = scores[i] + (bias ? WeightAt(*bias, 0, i) : 0.0);
  Routing r;
  r.margin = INFINITY;
  std::vector<bool> allowed(E, true);
  if (G > 1) {
    // Group score: the best expert's, or with a bias the sum of the best two (noaux_tc).
    const size_t per = E / G;
    std::vector<double> group(G);
    for (size_t g = 0; g < G; ++g) {
      std::vector<double> s(sel.begin() + static_cast<long>(g * per), sel.begin() + static_cast<long>((g + 1) * per));
      std::sort(s.rbegin(), s.rend());
      group[g] = bias && per > 1 ? s[0] + s[1] : s[0];
    }
    std::vector<size_t> order(G);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return group[a] > group[b]; });
    if (hp.topk_group < G) r.margin = group[order[hp.topk_group - 1]] - group[order[hp.topk_group]];
    for (size_t k = hp.topk_group; k < G; ++k)
      for (size_t i = 0; i < per; ++i) allowed[order[k] * per + i] = false;
  }
  std::vector<size_t> order;
  for (size_t i = 0; i < E; ++i)
    if (allowed[i]) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sel[a] > sel[b]; });
  if (order.size() > K) r.margin = std::min(r.margin, sel[order[K - 1]] - sel[order[K]]);
  double sum = 0;
  for (size_t j = 0; j < K; ++j) sum += scores[order[j]];
  for (size_t j = 0; j < K; ++j) {
    r.ids.push_back(static_cast<int32_t>(order[j]));
    r.weights.push_back((hp.norm_topk_prob ? scores[order[j]] / sum : scores[order[j]]) * hp.routed_scaling_factor);
  }
  return r;
}

const coda_backend_api* ReferenceBackendEntry(uint32_t) { return &kApi; }

}  // namespace coda::conformance
