// Every kernel build this CPU can run against the portable reference, on odd shapes with
// partial FP8 blocks; and the Linear op's two paths (register decode, panel + SGEMM).
#include <gtest/gtest.h>

#include <cmath>
#include <array>
#include <random>
#include <string>
#include <vector>

#include "gemm_int8.h"
#include "kernels.h"
#include "ops.h"

namespace coda::cpu {
namespace {

struct TestWeight {
  std::vector<uint8_t> bytes;
  std::vector<float> scales;
  Weight w;
};

TestWeight MakeWeight(uint32_t dtype, uint64_t rows, uint64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  TestWeight t;
  const size_t esize = dtype == CODA_DTYPE_F32 ? 4 : dtype == CODA_DTYPE_BF16 ? 2 : 1;
  t.bytes.resize(rows * cols * esize);
  for (size_t i = 0; i < rows * cols; ++i) {
    const float v = nd(rng);
    if (dtype == CODA_DTYPE_F32) std::memcpy(&t.bytes[4 * i], &v, 4);
    if (dtype == CODA_DTYPE_BF16) {
      const uint16_t b = coda_f32_to_bf16(v);
      std::memcpy(&t.bytes[2 * i], &b, 2);
    }
    if (dtype == CODA_DTYPE_FP8_E4M3) t.bytes[i] = static_cast<uint8_t>(rng() & 0xff) & 0xfe;  // skip NaN codes
  }
  t.w.dtype = dtype;
  t.w.rows = rows;
  t.w.cols = cols;
  t.w.data = t.bytes.data();
  if (dtype == CODA_DTYPE_FP8_E4M3) {
    t.w.block = 128;
    t.w.scale_cols = (cols + 127) / 128;
    t.scales.resize(((rows + 127) / 128) * t.w.scale_cols);
    for (auto& s : t.scales) s = std::ldexp(1.0f, -static_cast<int>(rng() % 12));
    t.w.scales = t.scales.data();
  }
  return t;
}

std::vector<const Kernels*> Builds() {
  std::vector<const Kernels*> k;
  __builtin_cpu_init();
  if (Avx2Kernels() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) k.push_back(Avx2Kernels());
  if (Avx512Kernels() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    k.push_back(Avx512Kernels());
  if (Avx512Bf16Kernels() && !k.empty() && k.back() == Avx512Kernels() && __builtin_cpu_supports("avx512bf16"))
    k.push_back(Avx512Bf16Kernels());
  return k;
}

void ExpectClose(const std::vector<float>& a, const std::vector<float>& b, double rel, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  double scale = 1e-30;
  for (float v : b) scale = std::max(scale, static_cast<double>(std::fabs(v)));
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], rel * scale) << what << " at " << i;
}

TEST(CpuKernels, SimdBuildsMatchTheReference) {
  const auto builds = Builds();
  if (builds.empty()) GTEST_SKIP() << "this CPU has neither AVX2+FMA nor AVX-512: only the reference kernels run";
  const Kernels& ref = ReferenceKernels();
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (uint32_t dtype : {CODA_DTYPE_F32, CODA_DTYPE_BF16, CODA_DTYPE_FP8_E4M3}) {
    for (auto [rows, cols] : {std::pair<uint64_t, uint64_t>{37, 200}, {130, 256}, {5, 17}, {260, 129}, {3, 600}}) {
      TestWeight t = MakeWeight(dtype, rows, cols, static_cast<uint32_t>(rows * cols + dtype));
      for (size_t n : {1, 3, 4, 6, 9}) {
        std::vector<float> x(n * cols);
        for (auto& v : x) v = nd(rng);
        std::vector<float> want(n * rows), got(n * rows);
        ref.matmul_rows(t.w, x.data(), cols, n, want.data(), rows, 0, rows);
        for (const Kernels* k : builds) {
          std::fill(got.begin(), got.end(), 0.0f);
          k->matmul_rows(t.w, x.data(), cols, n, got.data(), rows, 0, rows);
          ExpectClose(got, want, 1e-5, std::string(k->name) + " matmul_rows dtype " + std::to_string(dtype));
        }
      }
      std::vector<float> want(rows * cols), got(rows * cols);
      ref.dequant_rows(t.w, 0, rows, want.data());
      std::vector<float> xr(rows), yw(cols, 0.5f), yg(cols);
      for (auto& v : xr) v = nd(rng);
      ref.matvec_t(t.w, 0, rows, xr.data(), yw.data());
      for (const Kernels* k : builds) {
        k->dequant_rows(t.w, 0, rows, got.data());
        EXPECT_EQ(got, want) << k->name << " dequant_rows is exact";
        std::fill(yg.begin(), yg.end(), 0.5f);
        k->matvec_t(t.w, 0, rows, xr.data(), yg.data());
        ExpectClose(yg, yw, 1e-5, std::string(k->name) + " matvec_t");
      }
    }
  }
  for (size_t n : {1, 15, 16, 33, 512, 577}) {
    std::vector<float> a(n), b(n), y0(n), y1(n);
    std::vector<uint16_t> h(n);
    for (size_t i = 0; i < n; ++i) {
      a[i] = nd(rng);
      b[i] = nd(rng);
      h[i] = coda_f32_to_bf16(nd(rng));
      y0[i] = y1[i] = nd(rng);
    }
    for (const Kernels* k : builds) {
      EXPECT_NEAR(k->dot(a.data(), b.data(), n), ref.dot(a.data(), b.data(), n), 1e-4 * n);
      EXPECT_NEAR(k->dot_bf16(a.data(), h.data(), n), ref.dot_bf16(a.data(), h.data(), n), 1e-4 * n);
      auto ya = y0, yb = y0;
      k->axpy(0.7f, a.data(), ya.data(), n);
      ref.axpy(0.7f, a.data(), yb.data(), n);
      ExpectClose(ya, yb, 1e-6, "axpy");
      ya = y1, yb = y1;
      k->axpy_bf16(-1.3f, h.data(), ya.data(), n);
      ref.axpy_bf16(-1.3f, h.data(), yb.data(), n);
      ExpectClose(ya, yb, 1e-6, "axpy_bf16");
    }
  }
  // The SwiGLU gate, including inputs whose e^-x overflows F32.
  for (size_t n : {1, 16, 37, 1024}) {
    std::vector<float> g(n), u(n);
    for (size_t i = 0; i < n; ++i) {
      g[i] = i % 7 == 0 ? (i % 2 ? 100.0f : -100.0f) : 6.0f * nd(rng);
      u[i] = nd(rng);
    }
    std::vector<float> want = g;
    ref.silu_mul(want.data(), u.data(), n);
    for (const Kernels* k : builds) {
      std::vector<float> got = g;
      k->silu_mul(got.data(), u.data(), n);
      for (size_t i = 0; i < n; ++i)
        ASSERT_NEAR(got[i], want[i], 1e-6 * std::max(1.0f, std::fabs(want[i]))) << k->name << " silu_mul at " << i;
    }
  }
  // Softmax in place: sums to 1, and a spread of 80 (e^-80 below F32's normal range after the
  // maximum is subtracted) as well as a single element.
  for (size_t n : {1, 15, 16, 37, 1000}) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = i % 11 == 3 ? -80.0f : 4.0f * nd(rng);
    std::vector<float> want = x;
    ref.softmax(want.data(), n);
    double total = 0;
    for (float v : want) total += v;
    EXPECT_NEAR(total, 1.0, 1e-5) << n;
    if (n == 1) {
      EXPECT_EQ(want[0], 1.0f);
    }
    for (const Kernels* k : builds) {
      std::vector<float> got = x;
      k->softmax(got.data(), n);
      for (size_t i = 0; i < n; ++i)
        ASSERT_NEAR(got[i], want[i], 1e-6 * std::max(1e-3f, want[i])) << k->name << " softmax at " << i << " of " << n;
    }
  }
}

// q and the cache rounded to BF16 as the avx512bf16 build rounds them; its softmax weights are
// also rounded to BF16 (2^-9 relative each), which the looser tolerance covers.
bool RoundsToBf16(const Kernels& k) { return std::string(k.name) == "avx512bf16"; }

TEST(CpuKernels, MlaAttendMatchesTheReference) {
  const auto builds = Builds();
  if (builds.empty()) GTEST_SKIP() << "this CPU has neither AVX2+FMA nor AVX-512: only the reference kernels run";
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (bool bf16 : {true, false}) {
    for (auto [nh, c, dr, visible] : {std::array<size_t, 4>{6, 40, 16, 37}, {4, 512, 64, 300}, {1, 17, 2, 1},
                                      {9, 100, 24, 133}, {16, 64, 32, 2}}) {
      const size_t row = c + dr, qk = 24 + dr;
      std::vector<float> qabs(nh * c), qpe(nh * qk), c32(visible * row);
      std::vector<uint16_t> c16(visible * row);
      for (auto& v : qabs) v = nd(rng) * 0.3f;
      for (auto& v : qpe) v = nd(rng) * 0.3f;
      for (size_t i = 0; i < c32.size(); ++i) {
        c16[i] = coda_f32_to_bf16(nd(rng));
        c32[i] = coda_bf16_to_f32(c16[i]);
      }
      auto round = [](std::vector<float> v) {
        for (auto& x : v) x = coda_bf16_to_f32(coda_f32_to_bf16(x));
        return v;
      };
      const std::vector<float> qabs16 = round(qabs), qpe16 = round(qpe);
      // Over rows [begin, end); with lse when `lse` is given.
      auto run = [&](const Kernels& k, bool rounded, size_t begin, size_t end, std::vector<float>* lse) {
        std::vector<float> scores(nh * (end - begin)), olat(nh * c, 7.0f);
        if (lse) lse->assign(nh, 0.0f);
        MlaAttendArgs a{rounded ? qabs16.data() : qabs.data(), rounded ? qpe16.data() : qpe.data(), qk, nh,
                        bf16 ? static_cast<const void*>(c16.data()) : c32.data(), bf16, row, c, dr, begin, end, 0.125f,
                        scores.data(), olat.data(), lse ? lse->data() : nullptr};
        k.mla_attend(a);
        return olat;
      };
      const Kernels& ref = ReferenceKernels();
      const auto want = run(ref, false, 0, visible, nullptr), want16 = run(ref, true, 0, visible, nullptr);
      for (const Kernels* k : builds) {
        const std::string what = std::string(k->name) + " mla_attend, " + (bf16 ? "bf16" : "f32") + " cache";
        if (bf16 && RoundsToBf16(*k)) ExpectClose(run(*k, false, 0, visible, nullptr), want16, 1e-2, what);
        else ExpectClose(run(*k, false, 0, visible, nullptr), want, 1e-5, what);
      }
      // Two row ranges merged by their log-sum-exp equal the whole.
      if (visible < 2) continue;
      const size_t mid = visible / 3 + 1;
      for (const Kernels* k : std::vector<const Kernels*>{&ref, builds.back()}) {
        std::vector<float> l0, l1, merged(nh * c);
        const auto o0 = run(*k, false, 0, mid, &l0), o1 = run(*k, false, mid, visible, &l1);
        const float* po[2] = {o0.data(), o1.data()};
        const float* pl[2] = {l0.data(), l1.data()};
        MergeAttention(2, po, pl, nh, c, merged.data());
        const bool loose = bf16 && RoundsToBf16(*k);
        ExpectClose(merged, loose ? want16 : want, loose ? 1e-2 : 1e-5, std::string(k->name) + " split and merged");
      }
    }
  }
}

// The ops' context on a pool of two threads with the best kernels.
struct TwoThreads {
  ThreadPool pool{2};
  Context ctx;
  TwoThreads() {
    ctx.k = &SelectKernels();
    ctx.pool = &pool;
    ctx.thread_scratch.resize(2);
  }
};

TEST(CpuKernels, LinearGemmPathMatchesTheRegisterPath) {
  TwoThreads two;
  Context& ctx = two.ctx;
  ctx.exact_products = true;
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (uint32_t dtype : {CODA_DTYPE_BF16, CODA_DTYPE_FP8_E4M3}) {
    TestWeight t = MakeWeight(dtype, 300, 333, 11);
    const size_t n = ctx.gemm_min_tokens + 8;  // the SGEMM path
    std::vector<float> x(n * 333), gemm(n * 300), want(n * 300);
    for (auto& v : x) v = nd(rng);
    ASSERT_EQ(Linear(ctx, t.w, x.data(), n, gemm.data()), "");
    ReferenceKernels().matmul_rows(t.w, x.data(), 333, n, want.data(), 300, 0, 300);
    ExpectClose(gemm, want, 1e-5, "linear dtype " + std::to_string(dtype));
  }
}

// The int8 products against a scalar model of the same arithmetic (tight: the kernel's packing,
// tails and compensation), and against the exact F32 product (the quantization's own error).
TEST(CpuKernels, Int8ProductsMatchTheirModelAndStayCloseToF32) {
  TwoThreads two;
  Context& ctx = two.ctx;
  std::mt19937 rng(21);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  // Rows not a multiple of 32 and columns not of 4 exercise the masked panel and padded tail.
  for (const auto& [rows, cols, n] : {std::array<size_t, 3>{300, 333, 40}, std::array<size_t, 3>{256, 1024, 37}}) {
    TestWeight t = MakeWeight(CODA_DTYPE_FP8_E4M3, rows, cols, 5);
    if (!Int8GemmRuns(t.w)) GTEST_SKIP() << "this CPU lacks AVX512-VNNI or AVX512-VBMI: the int8 products do not run";
    std::vector<float> x(n * cols), fast(n * rows), exact(n * rows);
    for (auto& v : x) v = nd(rng);
    x[7] = 40.0f;  // an outlier, as activations have
    const size_t n_tokens = n;
    ASSERT_EQ(Linear(ctx, t.w, x.data(), n_tokens, fast.data()), "");
    ctx.exact_products = true;
    ASSERT_EQ(Linear(ctx, t.w, x.data(), n_tokens, exact.data()), "");
    ctx.exact_products = false;

    const size_t L = t.w.block, blocks = (cols + L - 1) / L;
    double err2 = 0, ref2 = 0;
    for (size_t tok = 0; tok < n; ++tok) {
      std::vector<int> q(cols);
      std::vector<float> sa(blocks);
      for (size_t b = 0; b < blocks; ++b) {
        float amax = 0;
        for (size_t c = b * L; c < std::min(cols, (b + 1) * L); ++c) amax = std::max(amax, std::fabs(x[tok * cols + c]));
        const float inv = amax > 0 ? 127.0f / amax : 0.0f;
        sa[b] = amax / 127.0f;
        for (size_t c = b * L; c < std::min(cols, (b + 1) * L); ++c)
          q[c] = static_cast<int>(std::nearbyint(x[tok * cols + c] * inv));
      }
      for (size_t r = 0; r < rows; ++r) {
        double model = 0;
        for (size_t b = 0; b < blocks; ++b) {
          int64_t sum = 0;
          for (size_t c = b * L; c < std::min(cols, (b + 1) * L); ++c) sum += q[c] * Int8OfE4m3(t.bytes[r * cols + c]);
          model += static_cast<double>(sa[b] * (WeightScale(t.w, r, b * L) * kInt8WeightScale)) * static_cast<double>(sum);
        }
        const double got = fast[tok * rows + r], want = exact[tok * rows + r];
        ASSERT_NEAR(got, model, 1e-5 * std::max(1.0, std::fabs(model)) + 1e-4 * std::fabs(want))
            << rows << "x" << cols << " token " << tok << " row " << r;
        err2 += (got - want) * (got - want);
        ref2 += want * want;
      }
    }
    // Measured 1.0% for these shapes; a swapped scale or a misplaced block gives tens of percent.
    EXPECT_LT(std::sqrt(err2 / ref2), 0.02) << rows << "x" << cols;
  }
}

}  // namespace
}  // namespace coda::cpu
