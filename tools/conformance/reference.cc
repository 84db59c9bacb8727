#include "reference.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

#include "suite.h"

namespace coda::conformance {

Blob Zeros(uint32_t dtype, std::vector<uint64_t> shape) {
  Blob b;
  b.dtype = dtype;
  b.shape = std::move(shape);
  b.bytes.assign(b.count() * coda_dtype_size(dtype), 0);
  return b;
}

const char* DtypeLabel(uint32_t d) {
  switch (d) {
    case CODA_DTYPE_F32: return "F32";
    case CODA_DTYPE_BF16: return "BF16";
    case CODA_DTYPE_FP8_E4M3: return "FP8";
    default: return "-";
  }
}

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

double WeightAt(const coda_tensor& w, uint64_t r, uint64_t c) {
  const uint64_t cols = w.ndim >= 2 ? w.shape[1] : w.shape[0];
  const uint64_t i = r * cols + c;
  switch (w.dtype) {
    case CODA_DTYPE_F32: return static_cast<const float*>(w.data)[i];
    case CODA_DTYPE_BF16: return coda_bf16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
    case CODA_DTYPE_FP8_E4M3: {
      const uint32_t b = w.block ? w.block : 128;
      const float* s = static_cast<const float*>(w.scale->data);
      return static_cast<double>(coda_e4m3_to_f32(static_cast<const uint8_t*>(w.data)[i])) *
             s[(r / b) * w.scale->shape[1] + c / b];
    }
    default: return 0;
  }
}

uint64_t Rows(const coda_tensor& w) { return w.ndim >= 2 ? w.shape[0] : 1; }
uint64_t Cols(const coda_tensor& w) { return w.ndim >= 2 ? w.shape[1] : w.shape[0]; }

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

std::vector<double> AsDoubles(const std::vector<uint8_t>& bytes, uint32_t dtype, uint64_t first,
                              uint64_t count) {
  const uint64_t n = std::min<uint64_t>(count, bytes.size() / coda_dtype_size(dtype) - first);
  std::vector<double> v(n);
  for (uint64_t i = 0; i < n; ++i) {
    if (dtype == CODA_DTYPE_BF16) {
      uint16_t b;
      std::memcpy(&b, bytes.data() + 2 * (first + i), 2);
      v[i] = coda_bf16_to_f32(b);
    } else {
      float f;
      std::memcpy(&f, bytes.data() + 4 * (first + i), 4);
      v[i] = f;
    }
  }
  return v;
}

double RelError(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, std::fabs(a[i] - b[i]));
    den = std::max(den, std::fabs(b[i]));
  }
  return den > 0 ? num / den : num;
}

namespace {

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
    [](void*, const coda_op* op) { return SuiteOf(op->type) && HostMemoryOnly(*op) ? 1 : 0; },
    [](void*, const coda_op* op, char* error, size_t size) {
      const OpSuite* suite = SuiteOf(op->type);
      if (!suite || !HostMemoryOnly(*op)) {
        CopyError("unsupported op", error, size);
        return CODA_STATUS_UNSUPPORTED;
      }
      const std::string e = suite->reference(*op);
      if (e.empty()) return CODA_STATUS_OK;
      CopyError(e, error, size);
      return CODA_STATUS_INVALID_ARGUMENT;
    },
};

}  // namespace

const coda_backend_api* ReferenceBackendEntry(uint32_t) { return &kApi; }

}  // namespace coda::conformance
