#include "conformance.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "reference.h"

namespace coda::conformance {

namespace {

// ---- Owned tensors and cases. ----

uint64_t DtypeBytes(uint32_t dtype) {
  switch (dtype) {
    case CODA_DTYPE_F32: case CODA_DTYPE_I32: return 4;
    case CODA_DTYPE_BF16: return 2;
    default: return 1;
  }
}

struct Blob {
  uint32_t dtype = CODA_DTYPE_F32;
  std::vector<uint64_t> shape;
  std::vector<uint8_t> bytes;
  uint64_t count() const {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    return n;
  }
  // The ABI view (data in host memory).
  coda_tensor View() const {
    coda_tensor t{};
    t.dtype = dtype;
    t.ndim = static_cast<uint32_t>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) t.shape[i] = shape[i];
    t.data = bytes.empty() ? nullptr : const_cast<uint8_t*>(bytes.data());
    return t;
  }
};

Blob Zeros(uint32_t dtype, std::vector<uint64_t> shape) {
  Blob b;
  b.dtype = dtype;
  b.shape = std::move(shape);
  b.bytes.assign(b.count() * DtypeBytes(dtype), 0);
  return b;
}

struct Weight {
  Blob data;
  Blob scale;  // FP8 only
  bool absent = false;
};

struct Case {
  uint32_t op = 0;
  std::string dtype;  // column
  std::string name;
  coda_hparams hp{};
  std::vector<float> inv_freq;
  std::vector<Weight> weights;
  std::vector<Blob> inputs;
  std::vector<Blob> outputs;  // shapes and dtypes; contents ignored
  uint32_t n_tokens = 0, start_pos = 0;
  bool has_kv = false;
  uint32_t kv_dtype = CODA_DTYPE_F32, kv_n_ctx = 0, kv_row = 0;
  std::vector<uint8_t> kv_init;
  double tol = 0;
};

// The coda_tensor/coda_op views of a case, with FP8 scales linked.
struct Views {
  std::vector<coda_tensor> weights, scales, inputs, outputs;
  explicit Views(const Case& c) {
    scales.resize(c.weights.size());
    for (size_t i = 0; i < c.weights.size(); ++i) {
      const Weight& w = c.weights[i];
      coda_tensor t = w.absent ? coda_tensor{} : w.data.View();
      if (!w.absent && w.data.dtype == CODA_DTYPE_FP8_E4M3) {
        scales[i] = w.scale.View();
        t.scale = &scales[i];
        t.block = 128;
      }
      weights.push_back(t);
    }
    for (const Blob& b : c.inputs) inputs.push_back(b.View());
  }
};

// ---- Random inputs. ----

class Gen {
 public:
  explicit Gen(uint64_t seed) : rng_(seed) {}
  float Normal() { return nd_(rng_); }
  uint32_t Uniform(uint32_t n) { return static_cast<uint32_t>(rng_() % n); }
  std::mt19937_64& rng() { return rng_; }

  Blob F32(std::vector<uint64_t> shape, float stddev = 1.0f) {
    Blob b = Zeros(CODA_DTYPE_F32, std::move(shape));
    float* p = reinterpret_cast<float*>(b.bytes.data());
    for (uint64_t i = 0; i < b.count(); ++i) p[i] = Normal() * stddev;
    return b;
  }

  // A weight [rows, cols] (or a vector [cols] when rows == 0) in `dtype`, values ~ N(mean, stddev).
  Weight Make(uint32_t dtype, uint64_t rows, uint64_t cols, float stddev, float mean = 0.0f) {
    Weight w;
    const std::vector<uint64_t> shape = rows ? std::vector<uint64_t>{rows, cols} : std::vector<uint64_t>{cols};
    const uint64_t r = rows ? rows : 1;
    std::vector<float> v(r * cols);
    for (float& x : v) x = mean + Normal() * stddev;
    w.data = Zeros(dtype, shape);
    if (dtype == CODA_DTYPE_F32) {
      std::memcpy(w.data.bytes.data(), v.data(), v.size() * 4);
    } else if (dtype == CODA_DTYPE_BF16) {
      auto* p = reinterpret_cast<uint16_t*>(w.data.bytes.data());
      for (size_t i = 0; i < v.size(); ++i) p[i] = F32ToBf16(v[i]);
    } else {
      // Block-scaled E4M3 as DeepSeek ships it: scale = max |block| / 448, per 128 x 128 block,
      // partial blocks at the right and bottom edges.
      const uint64_t br = (r + 127) / 128, bc = (cols + 127) / 128;
      w.scale = Zeros(CODA_DTYPE_F32, {br, bc});
      float* s = reinterpret_cast<float*>(w.scale.bytes.data());
      for (uint64_t i = 0; i < br; ++i)
        for (uint64_t j = 0; j < bc; ++j) {
          float mx = 0;
          for (uint64_t a = i * 128; a < std::min(r, i * 128 + 128); ++a)
            for (uint64_t b = j * 128; b < std::min(cols, j * 128 + 128); ++b) mx = std::max(mx, std::fabs(v[a * cols + b]));
          s[i * bc + j] = mx > 0 ? mx / 448.0f : 1.0f;
        }
      for (uint64_t a = 0; a < r; ++a)
        for (uint64_t b = 0; b < cols; ++b)
          w.data.bytes[a * cols + b] = EncodeE4M3(v[a * cols + b] / s[(a / 128) * bc + b / 128]);
    }
    return w;
  }

 private:
  std::mt19937_64 rng_;
  std::normal_distribution<float> nd_{0.0f, 1.0f};
};

const char* DtypeLabel(uint32_t d) {
  switch (d) {
    case CODA_DTYPE_F32: return "F32";
    case CODA_DTYPE_BF16: return "BF16";
    case CODA_DTYPE_FP8_E4M3: return "FP8";
    default: return "-";
  }
}

constexpr uint32_t kWeightDtypes[] = {CODA_DTYPE_F32, CODA_DTYPE_BF16, CODA_DTYPE_FP8_E4M3};

std::string Dims(std::initializer_list<uint64_t> d) {
  std::string s;
  for (uint64_t v : d) s += (s.empty() ? "" : "x") + std::to_string(v);
  return s;
}

coda_hparams BaseHparams() {
  coda_hparams hp{};
  hp.struct_size = sizeof hp;
  hp.rms_norm_eps = 1e-6f;
  hp.routed_scaling_factor = 1.0f;
  return hp;
}

// ---- The cases, op by op. ----

void EmbedCases(Gen& g, std::vector<Case>& out) {
  for (uint32_t dt : kWeightDtypes)
    for (uint64_t h : {7u, 200u})
      for (uint32_t n : {1u, 6u}) {
        const uint64_t V = 50;
        Case c;
        c.op = CODA_OP_EMBED;
        c.dtype = DtypeLabel(dt);
        c.name = "table " + Dims({V, h}) + ", " + std::to_string(n) + " tokens";
        c.hp = BaseHparams();
        c.n_tokens = n;
        c.weights.push_back(g.Make(dt, V, h, 1.0f));
        Blob ids = Zeros(CODA_DTYPE_I32, {n});
        auto* p = reinterpret_cast<int32_t*>(ids.bytes.data());
        for (uint32_t t = 0; t < n; ++t) p[t] = t == 0 ? static_cast<int32_t>(V - 1) : static_cast<int32_t>(g.Uniform(V));
        c.inputs.push_back(ids);
        c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, h}));
        c.tol = Tolerance(dt, CODA_DTYPE_F32);
        out.push_back(std::move(c));
      }
}

void RmsNormCases(Gen& g, std::vector<Case>& out) {
  // Norm weights are vectors: F32 or BF16 (no block scales exist for them).
  for (uint32_t dt : {CODA_DTYPE_F32, CODA_DTYPE_BF16})
    for (uint64_t d : {1u, 37u, 200u})
      for (uint32_t n : {1u, 5u}) {
        Case c;
        c.op = CODA_OP_RMS_NORM;
        c.dtype = DtypeLabel(dt);
        c.name = "d " + std::to_string(d) + ", " + std::to_string(n) + " rows";
        c.hp = BaseHparams();
        c.n_tokens = n;
        c.weights.push_back(g.Make(dt, 0, d, 0.2f, 1.0f));
        c.inputs.push_back(g.F32({n, d}, 3.0f));
        c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, d}));
        c.tol = Tolerance(dt, CODA_DTYPE_F32);
        out.push_back(std::move(c));
      }
}

void LinearCases(Gen& g, std::vector<Case>& out, uint32_t op) {
  struct Shape {
    uint64_t rows, cols;
  };
  const std::vector<Shape> shapes = op == CODA_OP_LINEAR ? std::vector<Shape>{{1, 1}, {37, 53}, {130, 200}, {257, 384}}
                                                         : std::vector<Shape>{{129, 64}, {333, 200}};
  const std::vector<uint32_t> tokens = op == CODA_OP_LINEAR ? std::vector<uint32_t>{1, 5, 33} : std::vector<uint32_t>{1, 4};
  for (uint32_t dt : kWeightDtypes)
    for (const Shape& s : shapes)
      for (uint32_t n : tokens) {
        Case c;
        c.op = op;
        c.dtype = DtypeLabel(dt);
        c.name = "W " + Dims({s.rows, s.cols}) + ", " + std::to_string(n) + " rows";
        c.hp = BaseHparams();
        c.n_tokens = n;
        c.weights.push_back(g.Make(dt, s.rows, s.cols, 1.0f / std::sqrt(static_cast<float>(s.cols))));
        c.inputs.push_back(g.F32({n, s.cols}));
        c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, s.rows}));
        c.tol = Tolerance(dt, CODA_DTYPE_F32);
        out.push_back(std::move(c));
      }
}

void MlpCases(Gen& g, std::vector<Case>& out) {
  for (uint32_t dt : kWeightDtypes)
    for (auto [h, inter] : {std::pair<uint64_t, uint64_t>{72, 40}, {200, 136}})
      for (uint32_t n : {1u, 5u, 33u}) {
        Case c;
        c.op = CODA_OP_MLP;
        c.dtype = DtypeLabel(dt);
        c.name = "hidden " + std::to_string(h) + ", inner " + std::to_string(inter) + ", " + std::to_string(n) + " rows";
        c.hp = BaseHparams();
        c.n_tokens = n;
        c.weights.push_back(g.Make(dt, inter, h, 1.0f / std::sqrt(static_cast<float>(h))));
        c.weights.push_back(g.Make(dt, inter, h, 1.0f / std::sqrt(static_cast<float>(h))));
        c.weights.push_back(g.Make(dt, h, inter, 1.0f / std::sqrt(static_cast<float>(inter))));
        c.inputs.push_back(g.F32({n, h}));
        c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, h}));
        c.tol = Tolerance(dt, CODA_DTYPE_F32);
        out.push_back(std::move(c));
      }
}

void MoeGateCases(Gen& g, std::vector<Case>& out) {
  struct Router {
    const char* name;
    uint32_t E, K, G, TG, scoring, norm;
    float scale;
    bool bias;
    uint64_t h;
  };
  const Router routers[] = {
      {"softmax greedy", 10, 3, 1, 1, 0, 0, 1.0f, false, 72},
      {"softmax group-limited", 16, 4, 4, 2, 0, 0, 16.0f, false, 200},
      {"sigmoid noaux_tc", 16, 4, 4, 2, 1, 1, 2.5f, true, 200},
  };
  for (uint32_t dt : kWeightDtypes)
    for (const Router& r : routers)
      for (uint32_t n : {1u, 5u}) {
        Case c;
        c.op = CODA_OP_MOE_GATE;
        c.dtype = DtypeLabel(dt);
        c.name = std::string(r.name) + ", " + std::to_string(r.E) + " experts top " + std::to_string(r.K) + ", hidden " +
                 std::to_string(r.h) + ", " + std::to_string(n) + " tokens";
        c.hp = BaseHparams();
        c.hp.hidden_size = static_cast<uint32_t>(r.h);
        c.hp.n_routed_experts = r.E;
        c.hp.n_experts_per_tok = r.K;
        c.hp.n_group = r.G;
        c.hp.topk_group = r.TG;
        c.hp.scoring_func = r.scoring;
        c.hp.norm_topk_prob = r.norm;
        c.hp.routed_scaling_factor = r.scale;
        c.n_tokens = n;
        c.weights.push_back(g.Make(dt, r.E, r.h, 1.0f / std::sqrt(static_cast<float>(r.h))));
        Weight bias;
        if (r.bias) bias = g.Make(CODA_DTYPE_F32, 0, r.E, 0.05f);
        else bias.absent = true;
        c.weights.push_back(bias);
        // Routing is a discrete choice: draw inputs whose choice is not within rounding of a tie,
        // so that any backend within tolerance picks the same experts.
        Views v(c);
        for (int attempt = 0; attempt < 100; ++attempt) {
          Blob x = g.F32({n, r.h});
          double margin = INFINITY;
          const float* xp = reinterpret_cast<const float*>(x.bytes.data());
          for (uint32_t t = 0; t < n; ++t) {
            std::vector<double> logits(r.E);
            for (uint32_t e = 0; e < r.E; ++e)
              for (uint64_t i = 0; i < r.h; ++i) logits[e] += WeightAt(v.weights[0], e, i) * xp[t * r.h + i];
            margin = std::min(margin, Route(c.hp, logits, r.bias ? &v.weights[1] : nullptr).margin);
          }
          c.inputs = {x};
          if (margin > 2e-3) break;
        }
        c.outputs.push_back(Zeros(CODA_DTYPE_I32, {n, r.K}));
        c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, r.K}));
        c.tol = Tolerance(dt, CODA_DTYPE_F32);
        out.push_back(std::move(c));
      }
}

void MoeExpertsCases(Gen& g, std::vector<Case>& out) {
  struct Shape {
    uint32_t E, K;
    uint64_t h, inter;
  };
  for (uint32_t dt : kWeightDtypes)
    for (const Shape& s : {Shape{6, 2, 72, 40}, Shape{5, 3, 130, 33}})
      for (uint32_t n : {1u, 5u}) {
        Case c;
        c.op = CODA_OP_MOE_EXPERTS;
        c.dtype = DtypeLabel(dt);
        c.name = std::to_string(s.E) + " experts top " + std::to_string(s.K) + ", hidden " + std::to_string(s.h) +
                 ", inner " + std::to_string(s.inter) + ", " + std::to_string(n) + " tokens";
        c.hp = BaseHparams();
        c.hp.hidden_size = static_cast<uint32_t>(s.h);
        c.hp.n_routed_experts = s.E;
        c.hp.n_experts_per_tok = s.K;
        c.n_tokens = n;
        for (uint32_t e = 0; e < s.E; ++e) {
          c.weights.push_back(g.Make(dt, s.inter, s.h, 1.0f / std::sqrt(static_cast<float>(s.h))));
          c.weights.push_back(g.Make(dt, s.inter, s.h, 1.0f / std::sqrt(static_cast<float>(s.h))));
          c.weights.push_back(g.Make(dt, s.h, s.inter, 1.0f / std::sqrt(static_cast<float>(s.inter))));
        }
        Blob ids = Zeros(CODA_DTYPE_I32, {n, s.K}), wts = Zeros(CODA_DTYPE_F32, {n, s.K});
        auto* ip = reinterpret_cast<int32_t*>(ids.bytes.data());
        auto* wp = reinterpret_cast<float*>(wts.bytes.data());
        for (uint32_t t = 0; t < n; ++t) {
          std::vector<int32_t> all(s.E);
          for (uint32_t e = 0; e < s.E; ++e) all[e] = static_cast<int32_t>(e);
          std::shuffle(all.begin(), all.end(), g.rng());
          for (uint32_t j = 0; j < s.K; ++j) {
            ip[t * s.K + j] = all[j];
            wp[t * s.K + j] = 0.1f + std::fabs(g.Normal());
          }
        }
        c.inputs = {g.F32({n, s.h}), ids, wts};
        c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, s.h}));
        c.tol = Tolerance(dt, CODA_DTYPE_F32);
        out.push_back(std::move(c));
      }
}

void MlaCases(Gen& g, std::vector<Case>& out) {
  struct Attn {
    const char* name;
    uint32_t h, H, q_lora, c, dn, dr, dv;
  };
  const Attn shapes[] = {
      {"plain q", 64, 2, 0, 32, 16, 8, 16},
      {"q LoRA, odd dims", 200, 3, 136, 144, 24, 10, 20},
  };
  struct Steps {
    uint32_t n, start;
  };
  for (uint32_t dt : kWeightDtypes)
    for (const Attn& a : shapes)
      for (uint32_t kv : {CODA_DTYPE_BF16, CODA_DTYPE_F32})
        for (const Steps& st : {Steps{1, 0}, Steps{1, 6}, Steps{3, 2}, Steps{5, 0}, Steps{5, 6}, Steps{1, 300}}) {
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
          c.kv_init.assign(uint64_t{c.kv_n_ctx} * c.kv_row * DtypeBytes(kv), 0);
          for (uint64_t i = 0; i < uint64_t{st.start} * c.kv_row; ++i) {
            const float v = g.Normal();
            if (kv == CODA_DTYPE_BF16) {
              const uint16_t b = F32ToBf16(v);
              std::memcpy(c.kv_init.data() + 2 * i, &b, 2);
            } else {
              std::memcpy(c.kv_init.data() + 4 * i, &v, 4);
            }
          }
          c.tol = Tolerance(dt, kv);
          out.push_back(std::move(c));
        }
}

void AddCases(Gen& g, std::vector<Case>& out) {
  for (uint64_t d : {1u, 37u, 200u})
    for (uint32_t n : {1u, 5u}) {
      Case c;
      c.op = CODA_OP_ADD;
      c.dtype = "-";
      c.name = Dims({n, d});
      c.hp = BaseHparams();
      c.n_tokens = n;
      c.inputs = {g.F32({n, d}), g.F32({n, d})};
      c.outputs.push_back(Zeros(CODA_DTYPE_F32, {n, d}));
      c.tol = Tolerance(CODA_DTYPE_F32, CODA_DTYPE_F32);
      out.push_back(std::move(c));
    }
}

std::vector<Case> AllCases(uint64_t seed) {
  Gen g(seed);
  std::vector<Case> cases;
  EmbedCases(g, cases);
  RmsNormCases(g, cases);
  LinearCases(g, cases, CODA_OP_LINEAR);
  MlaCases(g, cases);
  MoeGateCases(g, cases);
  MoeExpertsCases(g, cases);
  MlpCases(g, cases);
  AddCases(g, cases);
  LinearCases(g, cases, CODA_OP_HEAD);
  return cases;
}

// ---- Running a case on a backend. ----

struct RunOutput {
  std::vector<std::vector<uint8_t>> outputs;
  std::vector<uint8_t> kv;
};

// Frees what a run allocated in a backend, whatever happens.
struct BufferGuard {
  const Backend& b;
  std::vector<coda_buffer> list;
  ~BufferGuard() {
    for (coda_buffer x : list) b.FreeBuffer(x);
  }
};

struct PreparedGuard {
  const Backend& b;
  bool active = false;
  void* handle = nullptr;
  ~PreparedGuard() {
    if (active) b.Release(handle);
  }
};

// Builds the op; `buffers`: inputs, outputs and the cache in the backend's buffers.
// Returns Unsupported when supports_op() declines.
Result<RunOutput> RunCase(const Backend& b, const Case& c, bool buffers) {
  Views v(c);
  coda_hparams hp = c.hp;
  hp.rope_inv_freq = c.inv_freq.empty() ? nullptr : c.inv_freq.data();
  std::vector<std::vector<uint8_t>> outs;
  for (const Blob& o : c.outputs) outs.emplace_back(o.bytes.size(), 0);
  std::vector<uint8_t> kv = c.kv_init;
  for (size_t i = 0; i < c.outputs.size(); ++i) {
    coda_tensor t = c.outputs[i].View();
    t.data = outs[i].data();
    v.outputs.push_back(t);
  }
  BufferGuard guard{b, {}};
  coda_op op{};
  op.struct_size = sizeof op;
  op.type = c.op;
  op.layer = -1;
  op.n_tokens = c.n_tokens;
  op.start_pos = c.start_pos;
  op.n_inputs = static_cast<uint32_t>(v.inputs.size());
  op.n_outputs = static_cast<uint32_t>(v.outputs.size());
  op.n_weights = static_cast<uint32_t>(v.weights.size());
  op.hparams = &hp;
  if (c.has_kv) {
    op.kv.dtype = c.kv_dtype;
    op.kv.n_ctx = c.kv_n_ctx;
    op.kv.row = c.kv_row;
    op.kv.data = kv.data();
  }
  if (buffers) {
    // Each activation in its own buffer at a nonzero offset, so offsets are honoured too.
    constexpr uint64_t kOffset = 64;
    auto place = [&](coda_tensor& t, const void* init, uint64_t bytes) -> Status {
      CODA_ASSIGN_OR_RETURN(coda_buffer buf, b.AllocBuffer(bytes + kOffset));
      guard.list.push_back(buf);
      if (init) CODA_RETURN_IF_ERROR(b.Upload(buf, kOffset, init, bytes, CODA_QUEUE_TRANSFER));
      t.data = nullptr;
      t.buffer = buf;
      t.offset = kOffset;
      return Status::Ok();
    };
    for (size_t i = 0; i < v.inputs.size(); ++i) CODA_RETURN_IF_ERROR(place(v.inputs[i], c.inputs[i].bytes.data(), c.inputs[i].bytes.size()));
    for (size_t i = 0; i < v.outputs.size(); ++i) CODA_RETURN_IF_ERROR(place(v.outputs[i], nullptr, outs[i].size()));
    if (c.has_kv) {
      CODA_ASSIGN_OR_RETURN(coda_buffer buf, b.AllocBuffer(kv.size() + kOffset));
      guard.list.push_back(buf);
      CODA_RETURN_IF_ERROR(b.Upload(buf, kOffset, kv.data(), kv.size(), CODA_QUEUE_TRANSFER));
      op.kv.data = nullptr;
      op.kv.buffer = buf;
      op.kv.offset = kOffset;
    }
    // Transfers queued on the transfer queue must land before compute reads them.
    if (b.has_events()) {
      CODA_ASSIGN_OR_RETURN(coda_event e, b.CreateEvent());
      Status s = b.RecordEvent(e, CODA_QUEUE_TRANSFER);
      if (s.ok()) s = b.WaitEvent(e, CODA_QUEUE_COMPUTE);
      b.DestroyEvent(e);
      CODA_RETURN_IF_ERROR(s);
    } else {
      CODA_RETURN_IF_ERROR(b.Synchronize());
    }
  }
  op.inputs = v.inputs.data();
  op.outputs = v.outputs.data();
  op.weights = v.weights.data();
  if (!b.Supports(op)) return Unsupported("supports_op() returned 0");
  PreparedGuard prepared{b, false, nullptr};
  if (b.has_prepare()) {
    std::vector<coda_tensor> present;
    for (size_t i = 0; i < c.weights.size(); ++i)
      if (!c.weights[i].absent) present.push_back(v.weights[i]);
    const coda_weights table{sizeof(coda_weights), static_cast<uint32_t>(present.size()), present.data(), &hp};
    CODA_ASSIGN_OR_RETURN(prepared.handle, b.Prepare(table));
    prepared.active = true;
    op.prepared = prepared.handle;
  }
  Status s = b.Execute(op);
  if (s.code() == StatusCode::kUnsupported) return Internal("supports_op() accepted it, but execute() said: " + s.message());
  CODA_RETURN_IF_ERROR(s);
  CODA_RETURN_IF_ERROR(b.Synchronize());
  if (buffers) {
    for (size_t i = 0; i < outs.size(); ++i)
      CODA_RETURN_IF_ERROR(b.Download(v.outputs[i].buffer, v.outputs[i].offset, outs[i].data(), outs[i].size()));
    if (c.has_kv) CODA_RETURN_IF_ERROR(b.Download(op.kv.buffer, op.kv.offset, kv.data(), kv.size()));
    CODA_RETURN_IF_ERROR(b.Synchronize());
  }
  return RunOutput{std::move(outs), std::move(kv)};
}

// ---- Comparing. ----

std::vector<double> AsDoubles(const std::vector<uint8_t>& bytes, uint32_t dtype, uint64_t first = 0,
                              uint64_t count = UINT64_MAX) {
  const uint64_t n = std::min<uint64_t>(count, bytes.size() / DtypeBytes(dtype) - first);
  std::vector<double> v(n);
  for (uint64_t i = 0; i < n; ++i) {
    if (dtype == CODA_DTYPE_BF16) {
      uint16_t b;
      std::memcpy(&b, bytes.data() + 2 * (first + i), 2);
      v[i] = Bf16ToF32(b);
    } else {
      float f;
      std::memcpy(&f, bytes.data() + 4 * (first + i), 4);
      v[i] = f;
    }
  }
  return v;
}

// max |a - b| / max |b|; infinity when a is not finite where b is.
double RelError(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, std::fabs(a[i] - b[i]));
    den = std::max(den, std::fabs(b[i]));
  }
  return den > 0 ? num / den : num;
}

// Error of `got` against `want`; for MoeGate the routing must match exactly (as a set per token).
double Compare(const Case& c, const RunOutput& got, const RunOutput& want, std::string* detail) {
  double err = 0;
  if (c.op == CODA_OP_MOE_GATE) {
    const uint32_t K = c.hp.n_experts_per_tok;
    const auto* gi = reinterpret_cast<const int32_t*>(got.outputs[0].data());
    const auto* wi = reinterpret_cast<const int32_t*>(want.outputs[0].data());
    const std::vector<double> gw = AsDoubles(got.outputs[1], CODA_DTYPE_F32), ww = AsDoubles(want.outputs[1], CODA_DTYPE_F32);
    std::vector<double> a, b;
    for (uint32_t t = 0; t < c.n_tokens; ++t) {
      std::map<int32_t, double> gm, wm;
      for (uint32_t j = 0; j < K; ++j) {
        gm[gi[t * K + j]] = gw[t * K + j];
        wm[wi[t * K + j]] = ww[t * K + j];
      }
      if (gm.size() != wm.size() || !std::equal(gm.begin(), gm.end(), wm.begin(), [](auto& x, auto& y) { return x.first == y.first; })) {
        std::string g, w;
        for (auto& [id, _] : gm) g += (g.empty() ? "" : ",") + std::to_string(id);
        for (auto& [id, _] : wm) w += (w.empty() ? "" : ",") + std::to_string(id);
        *detail = "token " + std::to_string(t) + " routed to experts {" + g + "}, expected {" + w + "}";
        return INFINITY;
      }
      for (auto& [id, x] : gm) {
        a.push_back(x);
        b.push_back(wm[id]);
      }
    }
    return RelError(a, b);
  }
  for (size_t i = 0; i < c.outputs.size(); ++i) {
    const double e = RelError(AsDoubles(got.outputs[i], c.outputs[i].dtype), AsDoubles(want.outputs[i], c.outputs[i].dtype));
    if (e > err) {
      err = e;
      *detail = "output " + std::to_string(i);
    }
  }
  if (c.has_kv) {
    // The rows this step appended to the cache, and that earlier rows were left alone.
    const uint64_t first = uint64_t{c.start_pos} * c.kv_row, count = uint64_t{c.n_tokens} * c.kv_row;
    const double e = RelError(AsDoubles(got.kv, c.kv_dtype, first, count), AsDoubles(want.kv, c.kv_dtype, first, count));
    if (e > err) {
      err = e;
      *detail = "KV cache rows written";
    }
    if (!std::equal(got.kv.begin(), got.kv.begin() + static_cast<long>(first * DtypeBytes(c.kv_dtype)), c.kv_init.begin())) {
      *detail = "KV cache rows before start_pos were modified";
      return INFINITY;
    }
  }
  return err;
}

std::string OpName(uint32_t op) {
  static const char* kNames[] = {"Embed", "RmsNorm", "Linear", "MlaAttention", "MoeGate",
                                 "MoeExperts", "Mlp", "Add", "Head"};
  return op < CODA_OP_COUNT ? kNames[op] : "?";
}

// ---- The optional ABI areas. ----

CaseResult Area(const std::string& area, const std::string& name) {
  CaseResult r;
  r.op = area;
  r.dtype = "-";
  r.name = name;
  return r;
}

void Fail(CaseResult& r, const Status& s) {
  r.outcome = Outcome::kFail;
  r.detail = s.message();
}

void CheckAbi(const Backend& b, std::vector<CaseResult>& out) {
  {
    CaseResult r = Area("devices", "device_count / device_info");
    if (!b.has_devices()) {
      r.outcome = Outcome::kUnsupported;
    } else if (auto d = b.Devices(); !d.ok()) {
      Fail(r, d.status());
    } else if (d->empty()) {
      Fail(r, Internal("device_count() returned 0"));
    } else {
      for (const DeviceInfo& i : *d)
        if (i.name.empty()) Fail(r, Internal("a device has no name"));
    }
    out.push_back(r);
  }
  {
    CaseResult r = Area("buffers", "alloc, upload, copy, download at offsets; out-of-range refused");
    if (!b.has_buffers()) {
      r.outcome = Outcome::kUnsupported;
    } else {
      Status s = [&]() -> Status {
        BufferGuard g{b, {}};
        CODA_ASSIGN_OR_RETURN(coda_buffer x, b.AllocBuffer(1000));
        g.list.push_back(x);
        CODA_ASSIGN_OR_RETURN(coda_buffer y, b.AllocBuffer(777));
        g.list.push_back(y);
        CODA_ASSIGN_OR_RETURN(coda_buffer z, b.AllocBuffer(0));
        g.list.push_back(z);
        std::vector<uint8_t> src(333), back(333, 0);
        for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7 + 1);
        CODA_RETURN_IF_ERROR(b.Upload(x, 5, src.data(), src.size(), CODA_QUEUE_TRANSFER));
        CODA_RETURN_IF_ERROR(b.Copy(x, 5, y, 444, src.size(), CODA_QUEUE_TRANSFER));
        CODA_RETURN_IF_ERROR(b.Download(y, 444, back.data(), back.size(), CODA_QUEUE_TRANSFER));
        CODA_RETURN_IF_ERROR(b.Synchronize());
        if (back != src) return Internal("bytes read back differ from the bytes written");
        if (b.Upload(y, 700, src.data(), 100).ok()) return Internal("an upload past the end of a buffer succeeded");
        if (b.Download(x, 1001, back.data(), 0).ok()) return Internal("a download starting past the end succeeded");
        if (b.Copy(x, 0, y, 0, 778).ok()) return Internal("a copy larger than its destination succeeded");
        return Status::Ok();
      }();
      if (!s.ok()) Fail(r, s);
    }
    out.push_back(r);
  }
  {
    CaseResult r = Area("events", "create, record, wait (queue and host), destroy");
    if (!b.has_events()) {
      r.outcome = Outcome::kUnsupported;
    } else {
      Status s = [&]() -> Status {
        CODA_ASSIGN_OR_RETURN(coda_event e, b.CreateEvent());
        Status st = b.RecordEvent(e, CODA_QUEUE_COMPUTE);
        if (st.ok()) st = b.WaitEvent(e, CODA_QUEUE_TRANSFER);
        if (st.ok()) st = b.RecordEvent(e, CODA_QUEUE_TRANSFER);
        if (st.ok()) st = b.WaitEvent(e, CODA_QUEUE_HOST);
        b.DestroyEvent(e);
        return st;
      }();
      if (!s.ok()) Fail(r, s);
    }
    out.push_back(r);
  }
  {
    CaseResult r = Area("prepare", "prepare / release (exercised by every op case)");
    if (!b.has_prepare()) r.outcome = Outcome::kUnsupported;
    out.push_back(r);
  }
  {
    CaseResult r = Area("synchronize", "synchronize with nothing queued");
    if (!b.has_synchronize()) r.outcome = Outcome::kUnsupported;
    else if (Status s = b.Synchronize(); !s.ok()) Fail(r, s);
    out.push_back(r);
  }
  {
    // Every backend must refuse what it does not know, with a message, and stay usable.
    CaseResult r = Area("errors", "unknown op refused by supports_op and execute, with a message");
    coda_hparams hp = BaseHparams();
    coda_op op{};
    op.struct_size = sizeof op;
    op.type = CODA_OP_COUNT;
    op.layer = -1;
    op.hparams = &hp;
    if (b.Supports(op)) {
      Fail(r, Internal("supports_op() accepted an unknown op type"));
    } else {
      Status s = b.Execute(op);
      if (s.ok()) Fail(r, Internal("execute() ran an unknown op type"));
      else if (s.message().empty() || s.message() == "backend reported failure without a message")
        Fail(r, Internal("execute() failed without a message"));
    }
    out.push_back(r);
  }
}

}  // namespace

std::string_view OutcomeName(Outcome o) {
  switch (o) {
    case Outcome::kPass: return "pass";
    case Outcome::kFail: return "fail";
    default: return "unsupported";
  }
}

double Tolerance(uint32_t weight_dtype, uint32_t kv_dtype) {
  // F32 weights: only summation order may differ. BF16/FP8 weights: a backend may also round
  // activations to BF16 for its matrix units. A BF16 cache: a latent that lands one BF16 step
  // apart moves that position's scores.
  double t = weight_dtype == CODA_DTYPE_F32 ? 1e-4 : 1e-2;
  if (kv_dtype == CODA_DTYPE_BF16) t = std::max(t, 2e-2);
  return t;
}

const std::vector<std::string>& OpNames() {
  static const std::vector<std::string> kNames = {"Embed", "RmsNorm", "Linear", "MlaAttention", "MoeGate",
                                                  "MoeExperts", "Mlp", "Add", "Head"};
  return kNames;
}

size_t Report::Count(Outcome o) const {
  return static_cast<size_t>(std::count_if(cases.begin(), cases.end(), [&](const CaseResult& c) { return c.outcome == o; }));
}

std::string Report::Table() const {
  const std::vector<std::string> cols = {"F32", "BF16", "FP8", "-"};
  std::vector<std::string> rows;
  for (const CaseResult& c : cases)
    if (std::find(rows.begin(), rows.end(), c.op) == rows.end()) rows.push_back(c.op);
  auto cell = [&](const std::string& row, const std::string& col) {
    size_t n[3] = {0, 0, 0};
    for (const CaseResult& c : cases)
      if (c.op == row && c.dtype == col) n[static_cast<int>(c.outcome)]++;
    if (!n[0] && !n[1] && !n[2]) return std::string(".");
    std::string s;
    const char* names[] = {"pass", "FAIL", "unsupported"};
    for (int i : {1, 0, 2})
      if (n[i]) s += (s.empty() ? "" : " ") + std::to_string(n[i]) + " " + names[i];
    return s;
  };
  auto status = [&](const std::string& row) {
    size_t n[3] = {0, 0, 0};
    for (const CaseResult& c : cases)
      if (c.op == row) n[static_cast<int>(c.outcome)]++;
    if (n[1]) return "FAIL";
    if (n[0] && n[2]) return "partial";
    return n[0] ? "pass" : "unsupported";
  };
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%-13s %-12s %-22s %-22s %-22s %-22s\n", "op", "result", "F32 weights",
                "BF16 weights", "FP8 weights", "no weights / ABI");
  out += line;
  for (const std::string& r : rows) {
    std::snprintf(line, sizeof line, "%-13s %-12s %-22s %-22s %-22s %-22s\n", r.c_str(), status(r), cell(r, cols[0]).c_str(),
                  cell(r, cols[1]).c_str(), cell(r, cols[2]).c_str(), cell(r, cols[3]).c_str());
    out += line;
  }
  return out;
}

std::string Report::Failures() const {
  std::string out;
  for (const CaseResult& c : cases) {
    if (c.outcome != Outcome::kFail) continue;
    out += "FAIL " + c.op + " [" + c.dtype + "] " + c.name + ": ";
    if (std::isfinite(c.error) && c.tolerance > 0) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "error %.3g > tolerance %.3g", c.error, c.tolerance);
      out += buf;
      if (!c.detail.empty()) out += " (" + c.detail + ")";
    } else {
      out += c.detail;
    }
    out += "\n";
  }
  return out;
}

std::string Report::Json() const {
  nlohmann::ordered_json j;
  j["backend"] = backend;
  j["reference"] = reference;
  j["pass"] = Count(Outcome::kPass);
  j["fail"] = Count(Outcome::kFail);
  j["unsupported"] = Count(Outcome::kUnsupported);
  nlohmann::ordered_json list = nlohmann::json::array();
  for (const CaseResult& c : cases)
    list.push_back({{"op", c.op}, {"dtype", c.dtype}, {"case", c.name}, {"outcome", OutcomeName(c.outcome)},
                    {"error", std::isfinite(c.error) ? nlohmann::json(c.error) : nlohmann::json(nullptr)},
                    {"tolerance", c.tolerance}, {"against", c.against}, {"detail", c.detail}});
  j["cases"] = std::move(list);
  return j.dump(2);
}

Result<Report> Run(const Backend& backend, const Backend& reference, const Options& options) {
  for (const std::string& op : options.ops)
    if (std::find(OpNames().begin(), OpNames().end(), op) == OpNames().end())
      return InvalidArgument("unknown op '" + op + "' (ops: Embed, RmsNorm, Linear, MlaAttention, MoeGate, MoeExperts, Mlp, Add, Head)");
  Report report;
  report.backend = std::string(backend.name()) + (backend.path().empty() ? " (linked in)" : " (" + backend.path() + ")");
  report.reference = std::string(reference.name()) + (reference.path().empty() ? " (linked in)" : " (" + reference.path() + ")");
  for (const Case& c : AllCases(options.seed)) {
    const std::string op = OpName(c.op);
    if (!options.ops.empty() && std::find(options.ops.begin(), options.ops.end(), op) == options.ops.end()) continue;
    const Backend* against = &reference;
    auto want = RunCase(reference, c, false);
    if (!want.ok() && want.status().code() == StatusCode::kUnsupported && options.fallback) {
      against = options.fallback;
      want = RunCase(*against, c, false);
    }
    if (!want.ok())
      return want.status().WithContext("reference " + std::string(against->name()) + " on " + op + " [" + c.dtype + "] " + c.name);
    for (bool buffers : {false, true}) {
      if (buffers && (!options.buffers || !backend.has_buffers())) continue;
      CaseResult r;
      r.op = op;
      r.dtype = c.dtype;
      r.name = c.name + (buffers ? " [in buffers]" : "");
      r.tolerance = c.tol;
      r.against = std::string(against->name());
      if (options.on_case) options.on_case(r.op, r.dtype, r.name);
      auto got = RunCase(backend, c, buffers);
      if (!got.ok()) {
        if (got.status().code() == StatusCode::kUnsupported && got.status().message() == "supports_op() returned 0") {
          r.outcome = Outcome::kUnsupported;
        } else {
          r.outcome = Outcome::kFail;
          r.error = INFINITY;
          r.detail = got.status().message();
        }
      } else {
        r.error = Compare(c, *got, *want, &r.detail);
        r.outcome = r.error <= c.tol ? Outcome::kPass : Outcome::kFail;
        if (r.outcome == Outcome::kPass) r.detail.clear();
      }
      report.cases.push_back(std::move(r));
    }
  }
  if (options.ops.empty()) CheckAbi(backend, report.cases);
  return report;
}

}  // namespace coda::conformance
