// What the conformance suite is made of: owned tensors and cases, random inputs, the reference
// arithmetic (double accumulation, the plainest loops that follow coda_ops.h), and one OpSuite
// per op in ops/ (its cases, its reference, and how its outputs compare).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "coda/dtype.h"
#include "coda_backend.h"
#include "conformance.h"

namespace coda::conformance {

// ---- Owned tensors and cases. ----

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

Blob Zeros(uint32_t dtype, std::vector<uint64_t> shape);

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
// The coda_tensor views of a case's weights and inputs, with FP8 scales linked.
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
      for (size_t i = 0; i < v.size(); ++i) p[i] = coda_f32_to_bf16(v[i]);
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
          w.data.bytes[a * cols + b] = F32ToFp8E4M3(v[a * cols + b] / s[(a / 128) * bc + b / 128]);
    }
    return w;
  }

 private:
  std::mt19937_64 rng_;
  std::normal_distribution<float> nd_{0.0f, 1.0f};
};

const char* DtypeLabel(uint32_t dtype);  // "F32", "BF16", "FP8", or "-"
inline constexpr uint32_t kWeightDtypes[] = {CODA_DTYPE_F32, CODA_DTYPE_BF16, CODA_DTYPE_FP8_E4M3};
std::string Dims(std::initializer_list<uint64_t> d);  // "3x5"
coda_hparams BaseHparams();

// ---- Reference arithmetic. ----

// Element (r, c) of a weight ([rows, cols], or a vector with r = 0) as a real number.
double WeightAt(const coda_tensor& w, uint64_t r, uint64_t c);
uint64_t Rows(const coda_tensor& w);
uint64_t Cols(const coda_tensor& w);
// y[n, rows] = x[n, cols] W^T
std::vector<double> MatMul(const std::vector<double>& x, size_t n, const coda_tensor& w);
void RmsNormInPlace(double* v, size_t d, const coda_tensor& w, double eps);
void RopeInPlace(double* v, size_t dr, uint32_t pos, const float* inv_freq);
double Silu(double x);
// SwiGLU of n rows with w[0..2] = gate, up, down.
std::vector<double> Swiglu(const std::vector<double>& x, size_t n, const coda_tensor* w);
std::vector<double> In(const coda_tensor& t);  // an F32 activation
void Out(const std::vector<double>& v, coda_tensor& t);

// ---- Comparing. ----

// Values of F32 or BF16 bytes, from element `first` on.
std::vector<double> AsDoubles(const std::vector<uint8_t>& bytes, uint32_t dtype, uint64_t first = 0,
                              uint64_t count = UINT64_MAX);
// max |a - b| / max |b|; infinity when a is not finite where b is.
double RelError(const std::vector<double>& a, const std::vector<double>& b);

// ---- One per op (ops/*.cc). ----

struct OpSuite {
  void (*cases)(Gen& g, std::vector<Case>& out);
  // The scalar reference: "" or an error (an id out of range).
  std::string (*reference)(const coda_op& op);
  // The error of the outputs `got` against `want`; null: each output element by element.
  double (*compare)(const Case& c, const std::vector<std::vector<uint8_t>>& got,
                    const std::vector<std::vector<uint8_t>>& want, std::string* detail);
};

#define CODA_CONFORMANCE_SUITE_(NAME, Name, number, flags, signature) extern const OpSuite k##Name##Suite;
CODA_OP_TABLE(CODA_CONFORMANCE_SUITE_)
#undef CODA_CONFORMANCE_SUITE_

// The suite of an op number, or null.
const OpSuite* SuiteOf(uint32_t op);

}  // namespace coda::conformance
