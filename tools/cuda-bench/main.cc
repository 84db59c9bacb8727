// coda-cuda-bench: the CUDA backend's kernels on DeepSeek-V3's shapes, beside cuBLASLt's BF16
// product on the same shapes (the baseline), cuBLASLt's block-scaled FP8 product (which the
// backend uses for prefill where it can), the FP8 peak and a device-to-device copy, the bandwidth
// bound measured in the same run. Each product is also checked against the baseline, so a first
// run on a new GPU proves the kernels there as well as timing them. Prints markdown tables; exit
// status 1 when a check fails.
//
//   coda-cuda-bench [--smoke]
//
// --smoke runs tiny shapes (the test suite runs it in the CPU emulator, without cuBLASLt).
#include <cuda_runtime.h>
#ifndef CODA_CUDA_EMULATION
#include <cublasLt.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "coda_dtypes.h"
#include "kernels.h"
#include "lt.h"

namespace coda::cuda {
namespace {

bool Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "coda-cuda-bench: %s: %s (%s)\n", what, cudaGetErrorName(e), cudaGetErrorString(e));
  return false;
}

// Device memory freed at scope exit.
struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(size_t bytes) {
    if (!Check(cudaMalloc(&p, std::max<size_t>(bytes, 1)), "cudaMalloc")) p = nullptr;
  }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

template <class T>
bool Upload(const DeviceBuffer& d, const std::vector<T>& h) {
  return d.p && Check(cudaMemcpyAsync(d.p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice, nullptr), "upload") &&
         Check(cudaStreamSynchronize(nullptr), "upload");
}

// Milliseconds per run of f, after one run to warm up; f returns a launch status.
template <class F>
double Time(F f, int reps, bool* ok) {
  cudaEvent_t a = nullptr, b = nullptr;
  float ms = 0;
  *ok = Check(cudaEventCreate(&a), "cudaEventCreate") && Check(cudaEventCreate(&b), "cudaEventCreate") && f() == 0 &&
        Check(cudaEventRecord(a, nullptr), "cudaEventRecord");
  for (int i = 0; *ok && i < reps; ++i) *ok = f() == 0;
  *ok = *ok && Check(cudaEventRecord(b, nullptr), "cudaEventRecord") && Check(cudaEventSynchronize(b), "running") &&
        Check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / reps;
}

// Random E4M3 codes (never the NaN codes) and block scales near 1/448, as a converted checkpoint's.
void RandomFp8(std::mt19937& rng, uint64_t rows, uint64_t cols, std::vector<uint8_t>* codes, std::vector<float>* scales) {
  std::uniform_int_distribution<int> code(0, 0xfd);
  codes->resize(rows * cols);
  for (uint8_t& c : *codes) {
    const int v = code(rng);
    c = static_cast<uint8_t>(v < 0x7f ? v : v + 1);  // skips 0x7f; 0xff is past the range
  }
  scales->resize(((rows + 127) / 128) * ((cols + 127) / 128));
  std::uniform_real_distribution<float> u(0.5f, 2.0f);
  for (float& s : *scales) s = u(rng) / 448.0f;
}

struct Shape {
  const char* name;
  uint64_t rows, cols;
};

#ifndef CODA_CUDA_EMULATION
// y[n, rows] = x[n, cols] W^T with BF16 operands and F32 results, all row-major: in cuBLASLt's
// column-major terms D[rows, n] = op(A) B with A = W stored [cols, rows] and transposed.
struct LtProduct {
  cublasLtHandle_t lt = nullptr;
  DeviceBuffer workspace{64u << 20};
  LtProduct() { cublasLtCreate(&lt); }
  ~LtProduct() { cublasLtDestroy(lt); }
  // 0, or a cublasStatus_t.
  int Run(const void* w, const void* x, float* y, uint64_t rows, uint64_t cols, uint64_t n) {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const size_t ws = 64u << 20;
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const float alpha = 1, beta = 0;
    cublasStatus_t s = cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (!s) s = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (!s) s = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (!s) s = cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, cols, rows, static_cast<int64_t>(cols));
    if (!s) s = cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, cols, n, static_cast<int64_t>(cols));
    if (!s) s = cublasLtMatrixLayoutCreate(&c, CUDA_R_32F, rows, n, static_cast<int64_t>(rows));
    if (!s) s = cublasLtMatmulPreferenceCreate(&pref);
    if (!s) s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (!s) s = cublasLtMatmulAlgoGetHeuristic(lt, desc, a, b, c, c, pref, 1, &result, &found);
    if (!s && found == 0) s = CUBLAS_STATUS_NOT_SUPPORTED;
    if (!s)
      s = cublasLtMatmul(lt, desc, &alpha, w, a, x, b, &beta, y, c, y, c, &result.algo, workspace.p, ws, nullptr);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
    return static_cast<int>(s);
  }
};
#endif

// Largest |a - b| over the largest |b|; infinite where a value is NaN.
[[maybe_unused]] double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    num = std::isnan(d) ? INFINITY : std::max(num, d);
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return den > 0 ? num / den : num;
}

int Main(int argc, char** argv) {
  bool smoke = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--smoke") == 0) {
      smoke = true;
    } else {
      std::fprintf(stderr, "coda-cuda-bench: unknown argument '%s' (usage: coda-cuda-bench [--smoke])\n", argv[i]);
      return 2;
    }
  }
  cudaDeviceProp prop{};
  if (!Check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties")) return 1;
  std::printf("device: %s (sm_%d%d, %zu MiB)\n\n", prop.name, prop.major, prop.minor, prop.totalGlobalMem >> 20);
  const int reps = smoke ? 1 : 20;
  bool all_ok = true;

  // The bound: a device-to-device copy reads and writes each byte once.
  const size_t copy_bytes = smoke ? (1u << 20) : (size_t{1} << 30);
  double copy_gbs = 0;
  {
    DeviceBuffer src(copy_bytes), dst(copy_bytes);
    bool ok = src.p && dst.p;
    const double ms =
        ok ? Time([&] { return static_cast<int>(cudaMemcpyAsync(dst.p, src.p, copy_bytes, cudaMemcpyDeviceToDevice, nullptr)); },
                  reps, &ok)
           : 0;
    copy_gbs = ok ? 2.0 * copy_bytes / (ms * 1e6) : 0;
    std::printf("device-to-device copy: %.0f GB/s (read + write), the bandwidth bound below\n\n", copy_gbs);
    all_ok = all_ok && ok;
  }

  // Products: FP8 weights with 128x128 block scales, F32 activations, five ways: exactly in F32
  // (decode, and CODA_BACKEND_EXACT_PRODUCTS), on the tensor cores from 16 tokens with the
  // activations quantized per 1x128 tile, on the BF16 tensor cores with the weights widened (the
  // path of GPUs without FP8 tensor cores, and of BF16 weights), by cuBLASLt's block-scaled FP8
  // product where it takes the shape (lt.h: the backend's choice from kLtMinTokens tokens), and by
  // cuBLASLt in BF16 on the dequantized weights, the baseline.
  std::string lt_why;
  std::unique_ptr<LtFp8> lt = LtFp8::Open(nullptr, &lt_why);
  std::printf("cuBLASLt block-scaled FP8: %s\n", lt ? lt->Summary().c_str() : lt_why.c_str());
  double peak_tflops = 0;  // dense FP8 on Hopper: 8192 flops per clock and SM
#ifndef CODA_CUDA_EMULATION
  int khz = 0;
  if (prop.major == 9 && cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0) == cudaSuccess)
    peak_tflops = prop.multiProcessorCount * (khz * 1e3) * 8192 / 1e12;
  if (peak_tflops > 0) std::printf("FP8 dense peak: %.0f TFLOPS (%d SMs at %.2f GHz)\n", peak_tflops, prop.multiProcessorCount, khz / 1e6);
#endif
  std::printf("\n| weight (FP8) | rows x cols | tokens | exact ms | exact GB/s | of copy | FP8 ms | FP8 TFLOPS | "
              "BF16 TC ms | BF16 TC TFLOPS | cuBLASLt FP8 ms | cuBLASLt FP8 TFLOPS | cuBLASLt BF16 ms | cuBLASLt BF16 TFLOPS | "
              "checks |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  const std::vector<Shape> shapes =
      smoke ? std::vector<Shape>{{"tiny", 128, 512}}
            : std::vector<Shape>{{"expert gate/up", 2048, 7168}, {"expert down", 7168, 2048}, {"dense gate/up", 18432, 7168},
                                 {"dense down", 7168, 18432}};
  const std::vector<uint64_t> tokens = smoke ? std::vector<uint64_t>{1, 20} : std::vector<uint64_t>{1, 4, 16, 128, 512, 4096};
  std::mt19937 rng(7);
#ifndef CODA_CUDA_EMULATION
  LtProduct bf16;
#endif
  auto cell = [](const char* fmt, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, fmt, v);
    return std::string(buf);
  };
  auto tflops_cell = [&](double flops, double ms) {
    std::string c = cell("%.1f", flops / (ms * 1e9));
    if (peak_tflops > 0) c += cell(" (%.0f%%)", 100.0 * flops / (ms * 1e9) / peak_tflops);
    return c;
  };
  auto download = [](const DeviceBuffer& d, size_t count) {
    std::vector<float> v(count);
    if (!Check(cudaMemcpy(v.data(), d.p, count * 4, cudaMemcpyDeviceToHost), "download")) v.clear();
    return v;
  };
  for (const Shape& sh : shapes) {
    std::vector<uint8_t> codes;
    std::vector<float> scales;
    RandomFp8(rng, sh.rows, sh.cols, &codes, &scales);
    const uint64_t scols = (sh.cols + 127) / 128;
    std::vector<uint16_t> wbf(sh.rows * sh.cols);  // the same weights, dequantized, for cuBLASLt BF16
    for (uint64_t r = 0; r < sh.rows; ++r)
      for (uint64_t c = 0; c < sh.cols; ++c)
        wbf[r * sh.cols + c] = coda_f32_to_bf16(coda_e4m3_to_f32(codes[r * sh.cols + c]) * scales[(r / 128) * scols + c / 128]);
    const uint64_t nmax = tokens.back();
    std::vector<float> x(nmax * sh.cols);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& v : x) v = coda_bf16_to_f32(coda_f32_to_bf16(normal(rng)));  // exact in BF16 too
    std::vector<uint16_t> xbf(x.size());
    for (size_t i = 0; i < x.size(); ++i) xbf[i] = coda_f32_to_bf16(x[i]);
    DeviceBuffer dw(codes.size()), ds(scales.size() * 4), dwbf(wbf.size() * 2), dx(x.size() * 4), dxbf(xbf.size() * 2),
        dy(nmax * sh.rows * 4), dy8(nmax * sh.rows * 4), dylt(nmax * sh.rows * 4), dyl(nmax * sh.rows * 4), dyb(nmax * sh.rows * 4),
        dq(nmax * sh.cols), dqs(nmax * scols * 4), dqs2(nmax * scols * 4);
    if (!Upload(dw, codes) || !Upload(ds, scales) || !Upload(dwbf, wbf) || !Upload(dx, x) || !Upload(dxbf, xbf)) return 1;
    DeviceWeight w;
    w.dtype = CODA_DTYPE_FP8_E4M3;
    w.rows = sh.rows;
    w.cols = sh.cols;
    w.data = dw.p;
    w.scales = ds.as<float>();
    w.block = 128;
    w.scale_cols = scols;
    SetVectorized(w);
    for (uint64_t n : tokens) {
      bool ok = true;
      const LinearJob exact = PlainLinear(dx.as<float>(), n, w, dy.as<float>());
      const double ms = Time([&] { return LaunchLinear(exact, nullptr); }, reps, &ok);
      const double flops = 2.0 * n * sh.rows * sh.cols;
      const double bytes = static_cast<double>(sh.rows * sh.cols + scales.size() * 4 + 4 * n * (sh.rows + sh.cols));
      std::string fp8_ms = "-", fp8_tf = "-", tc_ms = "-", tc_tf = "-", lt_ms = "-", lt_tf = "-", bf_ms = "-", bf_tf = "-",
                  checks;
      // The baseline: cuBLASLt BF16 on a GPU, the same sums on the host in the emulator.
      std::vector<float> want;
#ifndef CODA_CUDA_EMULATION
      bool bok = true;
      const double bms = Time([&] { return bf16.Run(dwbf.p, dxbf.p, dyl.as<float>(), sh.rows, sh.cols, n); }, reps, &bok);
      if (bok) {
        want = download(dyl, n * sh.rows);
        bf_ms = cell("%.3f", bms);
        bf_tf = cell("%.1f", flops / (bms * 1e9));
      } else {
        bf_ms = "refused";
      }
      const char* against = "cuBLASLt BF16";
#else
      (void)dwbf;
      (void)dxbf;
      (void)dyl;
      want.resize(n * sh.rows);
      for (uint64_t t = 0; t < n; ++t)
        for (uint64_t r = 0; r < sh.rows; ++r) {
          double v = 0;
          for (uint64_t c = 0; c < sh.cols; ++c) v += coda_bf16_to_f32(wbf[r * sh.cols + c]) * static_cast<double>(x[t * sh.cols + c]);
          want[t * sh.rows + r] = static_cast<float>(v);
        }
      bf_ms = "not in the emulator";
      const char* against = "host";
#endif
      // Each result against the baseline (or, for cuBLASLt FP8, against the own FP8 kernel, which
      // multiplies the same quantized activations), with its tolerance.
      auto check = [&](const char* what, const std::vector<float>& got, const std::vector<float>& ref, double tol) {
        if (ref.empty()) return;
        const double err = got.empty() ? INFINITY : RelErr(got, ref);
        ok = ok && err < tol;
        checks += std::string(checks.empty() ? "" : ", ") + what + cell(" %.1e", err) + (err < tol ? "" : " FAIL");
      };
      // BF16 rounding of the dequantized weights (2^-9 relative) over sums of thousands.
      check("exact", download(dy, n * sh.rows), want, 2e-2);
      const LinearJob fp8 = PlainLinear(dx.as<float>(), n, w, dy8.as<float>());
      std::vector<float> got8;
      if (Fp8Eligible(fp8)) {
        bool fok = true;
        const double fms = Time([&] { return LaunchLinearFp8(fp8, dq.as<uint8_t>(), dqs.as<float>(), nullptr); }, reps, &fok);
        ok = ok && fok;
        fp8_ms = cell("%.3f", fms);
        fp8_tf = tflops_cell(flops, fms);
        got8 = download(dy8, n * sh.rows);
        // E4M3 keeps 3 bits of each activation: about 4% of the largest result (a misread scale
        // is off by the whole value).
        check("FP8", got8, want, 1e-1);
        // The scales cuBLASLt reads (block-major) are the own kernel's (token-major), transposed.
        std::vector<float> tm = download(dqs, n * scols), bm;
        ok = ok && LaunchQuantize(dx.as<float>(), n, sh.cols, sh.cols, dq.as<uint8_t>(), dqs2.as<float>(), true, nullptr) == 0;
        bm = download(dqs2, n * scols);
        bool same = tm.size() == bm.size() && !tm.empty();
        for (uint64_t t = 0; same && t < n; ++t)
          for (uint64_t b = 0; same && b < scols; ++b) same = tm[t * scols + b] == bm[b * n + t];
        ok = ok && same;
        checks += same ? ", scale layouts agree" : ", scale layouts differ FAIL";
      }
      const LinearJob wide = PlainLinear(dx.as<float>(), n, w, dyb.as<float>());
      if (Bf16Eligible(wide)) {
        bool tok = true;
        const double tms = Time([&] { return LaunchLinearBf16(wide, nullptr); }, reps, &tok);
        ok = ok && tok;
        tc_ms = cell("%.3f", tms);
        tc_tf = cell("%.1f", flops / (tms * 1e9));
        // Exact FP8 weights and near-exact activations: only the baseline's own rounding.
        check("BF16 TC", download(dyb, n * sh.rows), want, 2e-2);
      }
      if (lt && !got8.empty() && lt->Takes(PlainLinear(dx.as<float>(), n, w, dylt.as<float>()))) {
        const LinearJob job = PlainLinear(dx.as<float>(), n, w, dylt.as<float>());
        bool lok = true;
        const double lms = Time(
            [&] {
              const int e = LaunchQuantize(job.x, n, sh.cols, sh.cols, dq.as<uint8_t>(), dqs2.as<float>(), true, nullptr);
              return e ? e : lt->Run(job, dq.as<uint8_t>(), dqs2.as<float>(), nullptr) ? 0 : 1;
            },
            reps, &lok);
        if (lok) {
          lt_ms = cell("%.3f", lms);
          lt_tf = tflops_cell(flops, lms);
          check("cuBLASLt FP8 vs FP8", download(dylt, n * sh.rows), got8, 1e-2);
        } else {
          lt_ms = "failed";
          ok = false;
        }
      }
      std::printf("| %s | %llux%llu | %llu | %.3f | %.0f | %.0f%% | %s | %s | %s | %s | %s | %s | %s | %s | against %s: %s |\n",
                  sh.name, static_cast<unsigned long long>(sh.rows), static_cast<unsigned long long>(sh.cols),
                  static_cast<unsigned long long>(n), ms, bytes / (ms * 1e6),
                  copy_gbs > 0 ? 100.0 * bytes / (ms * 1e6) / copy_gbs : 0.0, fp8_ms.c_str(), fp8_tf.c_str(), tc_ms.c_str(),
                  tc_tf.c_str(), lt_ms.c_str(), lt_tf.c_str(), bf_ms.c_str(), bf_tf.c_str(), against, checks.c_str());
      all_ok = all_ok && ok;
    }
  }

  // MLA decode: one token over a BF16 latent cache, V3's dimensions, on the tensor cores (the
  // backend's choice for BF16 caches) and on the CUDA cores in F32.
  std::printf("\n| MLA decode (BF16 cache) | kernel | heads | positions | ms | cache GB/s | of copy |\n"
              "|---|---|---|---|---|---|---|\n");
  MlaShape m;
  m.n = 1;
  m.heads = smoke ? 18 : 128;
  m.c = smoke ? 64 : 512;
  m.dn = smoke ? 16 : 128;
  m.dr = smoke ? 16 : 64;
  m.dv = m.dn;
  m.scale = 1.0f / std::sqrt(static_cast<float>(m.dn + m.dr));
  for (uint64_t ctx : smoke ? std::vector<uint64_t>{300} : std::vector<uint64_t>{4096, 32768, 65536}) {
    m.start.value = ctx - 1;
    m.capacity = ctx;
    const uint64_t row = m.c + m.dr;
    // Each kernel with its own plan: the tensor cores' (a BF16 cache's) and the F32 kernel's.
    const MlaPlan tc_plan = PlanMlaAttend(m, CODA_DTYPE_BF16), f32_plan = PlanMlaAttend(m, CODA_DTYPE_F32);
    std::vector<uint16_t> cache(ctx * row);
    std::vector<float> ql(m.heads * m.c), q(m.heads * (m.dn + m.dr));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (uint16_t& v : cache) v = coda_f32_to_bf16(normal(rng));
    for (float& v : ql) v = normal(rng) * 0.05f;
    for (float& v : q) v = normal(rng) * 0.05f;
    DeviceBuffer dc(cache.size() * 2), dql(ql.size() * 4), dq(q.size() * 4), dpart(std::max(tc_plan.part_bytes, f32_plan.part_bytes)),
        dol(m.heads * m.c * 4);
    if (!Upload(dc, cache) || !Upload(dql, ql) || !Upload(dq, q) || !dpart.p || !dol.p) return 1;
    // The attended latent of head h, from the same sums on the host.
    auto host = [&](uint64_t h) {
      std::vector<double> s(ctx), out(m.c);
      double mx = -INFINITY, sum = 0;
      for (uint64_t p = 0; p < ctx; ++p) {
        double v = 0;
        for (uint64_t i = 0; i < row; ++i)
          v += (i < m.c ? ql[h * m.c + i] : q[h * (m.dn + m.dr) + m.dn + (i - m.c)]) * coda_bf16_to_f32(cache[p * row + i]);
        s[p] = v * m.scale;
        mx = std::max(mx, s[p]);
      }
      for (double& v : s) sum += (v = std::exp(v - mx));
      for (uint64_t j = 0; j < m.c; ++j) {
        for (uint64_t p = 0; p < ctx; ++p) out[j] += s[p] * coda_bf16_to_f32(cache[p * row + j]);
        out[j] /= sum;
      }
      return out;
    };
    // The first and the last head: the first and the last group of heads.
    const std::vector<double> want_first = host(0), want_last = host(m.heads - 1);
    for (const bool tc : {true, false}) {
      const MlaPlan& plan = tc ? tc_plan : f32_plan;
      bool ok = true;
      const double ms = Time(
          [&] {
            return LaunchMlaAttend(dql.as<float>(), dq.as<float>(), dc.p, CODA_DTYPE_BF16, m, plan, dpart.as<float>(),
                                   dol.as<float>(), nullptr);
          },
          reps, &ok);
      std::vector<float> ol(m.heads * m.c);
      ok = ok && Check(cudaMemcpy(ol.data(), dol.p, ol.size() * 4, cudaMemcpyDeviceToHost), "download");
      double err = 0, big = 0;
      for (uint64_t j = 0; j < m.c; ++j) {
        const double a = std::fabs(want_first[j] - ol[j]), b = std::fabs(want_last[j] - ol[(m.heads - 1) * m.c + j]);
        err = std::isnan(a) || std::isnan(b) ? INFINITY : std::max({err, a, b});
        big = std::max({big, std::fabs(want_first[j]), std::fabs(want_last[j])});
      }
      ok = ok && err <= 1e-4 * std::max(big, 1.0);
      const double gbs = ctx * row * 2.0 / (ms * 1e6);
      std::printf("| %s | %s | %llu | %llu | %.4f | %.0f | %.0f%% |\n", ok ? "matches the host" : "FAIL",
                  tc ? "tensor cores" : "CUDA cores, F32", static_cast<unsigned long long>(m.heads),
                  static_cast<unsigned long long>(ctx), ms, gbs, copy_gbs > 0 ? 100.0 * gbs / copy_gbs : 0.0);
      all_ok = all_ok && ok;
    }
  }
  std::printf("\n%s\n", all_ok ? "all checks passed" : "SOME CHECKS FAILED");
  return all_ok ? 0 : 1;
}

}  // namespace
}  // namespace coda::cuda

int main(int argc, char** argv) { return coda::cuda::Main(argc, argv); }
