// cuBLASLt's block-scaled FP8 product (lt.h).
//
// In cuBLASLt's column-major terms a row-major y[n, rows] = x[n, cols] W^T is D[rows, n] =
// op(A) B with A = W (stored [cols, rows] column-major, transposed) and B = x: A takes the 128x128
// block scales (W's own, [ceil(rows / 128), cols / 128] row-major: the K-major layout the cuBLAS
// guide asks for, "128-element 1D and 128x128 2D block scaling", when cols / 128 is a multiple of
// 4) and B the 1x128 tile scales, block-major [cols / 128, n] (N-major). The guide also asks for
// M and N in multiples of 4: Product() gives cuBLASLt a multiple of 4 tokens, its own kernel the rest.
#include "lt.h"

#include <cuda_runtime.h>
#if __has_include(<cublasLt.h>)
#include <cublasLt.h>  // in the emulator builds, its stand-in (emu/cublasLt.h)
#endif

#if !defined(CUBLAS_VERSION) || CUBLAS_VERSION < 120900

// Built against a toolkit without cuBLASLt's block scaling (before 12.9): the own kernels only.
namespace coda::cuda {
struct LtFp8::Impl {};
LtFp8::LtFp8(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LtFp8::~LtFp8() = default;
std::unique_ptr<LtFp8> LtFp8::Open(cudaStream_t, std::string* why) {
  *why = "built without cuBLASLt 12.9 or later";
  return nullptr;
}
bool LtFp8::Takes(const LinearJob&) { return false; }
bool LtFp8::Run(const LinearJob&, const uint8_t*, const float*, cudaStream_t) { return false; }
}  // namespace coda::cuda

#else

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <random>
#include <tuple>
#include <vector>

#include "coda_dtypes.h"

namespace coda::cuda {
namespace {

constexpr size_t kWorkspace = size_t{32} << 20;

// The largest power of two (up to 256) that divides the address: cuBLASLt's algorithms state the
// alignment they need, and it assumes 256 unless told.
uint32_t Alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t k = 256;
  while (k > 1 && a % k) k /= 2;
  return k;
}

}  // namespace

// The functions used, each named once: the member that holds it and the symbol dlsym finds.
#define CODA_LT_FUNCTIONS(X)                                                                                           \
  X(get_version, cublasLtGetVersion)                                                                                   \
  X(create, cublasLtCreate)                                                                                            \
  X(destroy, cublasLtDestroy)                                                                                          \
  X(desc_create, cublasLtMatmulDescCreate)                                                                             \
  X(desc_destroy, cublasLtMatmulDescDestroy)                                                                           \
  X(desc_set, cublasLtMatmulDescSetAttribute)                                                                          \
  X(layout_create, cublasLtMatrixLayoutCreate)                                                                         \
  X(layout_destroy, cublasLtMatrixLayoutDestroy)                                                                       \
  X(pref_create, cublasLtMatmulPreferenceCreate)                                                                       \
  X(pref_destroy, cublasLtMatmulPreferenceDestroy)                                                                     \
  X(pref_set, cublasLtMatmulPreferenceSetAttribute)                                                                    \
  X(heuristic, cublasLtMatmulAlgoGetHeuristic)                                                                         \
  X(matmul, cublasLtMatmul)

struct LtFp8::Impl {
  // From the library dlopen found.
  void* lib = nullptr;
#define CODA_LT_MEMBER(member, symbol) decltype(&symbol) member = nullptr;
  CODA_LT_FUNCTIONS(CODA_LT_MEMBER)
#undef CODA_LT_MEMBER

  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;

  // One shape's descriptors and algorithm, or its refusal.
  struct Plan {
    bool ok = false;
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // rows, cols, n, and the alignments of W and y (x is in scratch, 256-byte aligned: Run checks).
  using Key = std::tuple<uint64_t, uint64_t, uint64_t, uint32_t, uint32_t>;
  std::map<Key, Plan> plans;
  static constexpr size_t kMaxPlans = 256;  // prefill lengths vary; past this, plans are made anew

  ~Impl() {
    ClearPlans();
    if (workspace) cudaFree(workspace);
    if (handle) destroy(handle);
    if (lib) dlclose(lib);
  }

  void Release(Plan& p) {
    if (p.d) layout_destroy(p.d);
    if (p.b) layout_destroy(p.b);
    if (p.a) layout_destroy(p.a);
    if (p.desc) desc_destroy(p.desc);
    p = Plan{};
  }
  void ClearPlans() {
    for (auto& [key, p] : plans) Release(p);
    plans.clear();
  }

  template <class F>
  bool Sym(const char* name, F* f) {
    *f = reinterpret_cast<F>(dlsym(lib, name));
    return *f != nullptr;
  }
  // Loads the library: by its soname, then from the toolkit this plugin was built with.
  std::string Load() {
#ifdef CODA_CUDA_EMULATION
    // The emulator has no cuBLASLt; the tests name its stand-in (emu/cublaslt_emu.cc).
    const char* path = std::getenv("CODA_CUDA_EMU_CUBLASLT");
    if (!path || !*path) return "cuBLASLt is not in the CUDA emulator (CODA_CUDA_EMU_CUBLASLT names a stand-in)";
    const std::string soname = path;
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
#else
    const std::string soname = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
    lib = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
#ifdef CODA_CUDA_TOOLKIT_LIBRARY_DIR
    if (!lib) lib = dlopen((std::string(CODA_CUDA_TOOLKIT_LIBRARY_DIR) + "/" + soname).c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
#endif
    if (!lib) return soname + " not found";
#define CODA_LT_LOAD(member, symbol) \
  if (!Sym(#symbol, &member)) return soname + " lacks " #symbol ", a function this backend calls";
    CODA_LT_FUNCTIONS(CODA_LT_LOAD)
#undef CODA_LT_LOAD
#ifdef CODA_CUDA_EMULATION
    decltype(&coda_cublaslt_emu_bind) bind = nullptr;
    if (!Sym("coda_cublaslt_emu_bind", &bind)) return soname + " lacks coda_cublaslt_emu_bind, the stand-in's own";
    // So that its products run in their stream's turn.
    bind([](cudaStream_t s, std::function<void()> work) { return coda_cuda_emu::Enqueue(s, std::move(work)); });
#endif
    if (get_version() < 120900) return soname + " is version " + std::to_string(get_version()) + "; block scaling needs 120900";
    if (create(&handle) != CUBLAS_STATUS_SUCCESS) {
      handle = nullptr;
      return "cublasLtCreate failed";
    }
    if (cudaMalloc(&workspace, kWorkspace) != cudaSuccess) {
      workspace = nullptr;
      return "no device memory for cuBLASLt's workspace";
    }
    return "";
  }

  Plan& Find(const LinearJob& job) {
    const Key key{job.rows, job.w.cols, job.n, Alignment(job.w.data), Alignment(job.y)};
    if (auto it = plans.find(key); it != plans.end()) return it->second;
    if (plans.size() >= kMaxPlans) ClearPlans();
    Plan& p = plans[key];
    Make(job, p);
    return p;
  }
  void Make(const LinearJob& job, Plan& p) {
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const int32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    const auto k = job.w.cols, rows = job.rows, n = job.n;
    cublasStatus_t s = desc_create(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (!s) s = desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (!s) s = desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (!s) s = desc_set(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof a_mode);
    if (!s) s = desc_set(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof b_mode);
    if (!s) s = layout_create(&p.a, CUDA_R_8F_E4M3, k, rows, static_cast<int64_t>(k));
    if (!s) s = layout_create(&p.b, CUDA_R_8F_E4M3, k, n, static_cast<int64_t>(k));
    if (!s) s = layout_create(&p.d, CUDA_R_32F, rows, n, static_cast<int64_t>(rows));
    cublasLtMatmulPreference_t pref = nullptr;
    if (!s) s = pref_create(&pref);
    const size_t ws = kWorkspace;
    const uint32_t align_a = Alignment(job.w.data), align_b = 256, align_d = Alignment(job.y);  // xq: scratch, aligned
    if (!s) s = pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (!s) s = pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a);
    if (!s) s = pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b);
    if (!s) s = pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof align_d);
    if (!s) s = pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof align_d);
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    if (!s) s = heuristic(handle, p.desc, p.a, p.b, p.d, p.d, pref, 1, &result, &found);
    if (pref) pref_destroy(pref);
    if (s || found == 0) {
      Release(p);  // refused: the own kernel takes this shape
      return;
    }
    p.algo = result.algo;
    p.ok = true;
  }
  bool Launch(Plan& p, const LinearJob& job, const uint8_t* xq, const float* xs, cudaStream_t st) {
    const void* ws = job.w.scales;
    const void* bs = xs;
    const float alpha = 1, beta = 0;
    cublasStatus_t s = desc_set(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ws, sizeof ws);
    if (!s) s = desc_set(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &bs, sizeof bs);
    if (!s)
      s = matmul(handle, p.desc, &alpha, job.w.data, p.a, xq, p.b, &beta, job.y, p.d, job.y, p.d, &p.algo, workspace, kWorkspace,
                 st);
    if (s) Release(p);  // stays refused
    return s == CUBLAS_STATUS_SUCCESS;
  }

  // One product against the same sums in double on the host: random codes, and a different scale
  // for every weight block and activation tile, so that a misread scale layout shows. "" when it
  // matched, "refused", or what differed.
  std::string Check(uint64_t n, uint64_t rows, uint64_t cols, cudaStream_t st) {
    std::mt19937 rng(static_cast<uint32_t>(n * 131 + rows));
    std::uniform_int_distribution<int> code(0, 0xfd);
    std::uniform_real_distribution<float> scale(0.25f, 4.0f);
    auto codes = [&](uint64_t count) {
      std::vector<uint8_t> v(count);
      for (uint8_t& c : v) {
        const int x = code(rng);
        c = static_cast<uint8_t>(x < 0x7f ? x : x + 1);  // never 0x7f or 0xff, the NaNs
      }
      return v;
    };
    const uint64_t kb = cols / 128, rb = (rows + 127) / 128;
    const std::vector<uint8_t> w = codes(rows * cols), x = codes(n * cols);
    std::vector<float> ws(rb * kb), xs(kb * n);  // xs block-major
    for (float& v : ws) v = scale(rng);
    for (float& v : xs) v = scale(rng);
    std::vector<double> want(n * rows);
    double big = 0;
    for (uint64_t t = 0; t < n; ++t)
      for (uint64_t r = 0; r < rows; ++r) {
        double sum = 0;
        for (uint64_t b = 0; b < kb; ++b) {
          double part = 0;
          for (uint64_t c = b * 128; c < b * 128 + 128; ++c)
            part += static_cast<double>(coda_e4m3_to_f32(w[r * cols + c])) * coda_e4m3_to_f32(x[t * cols + c]);
          sum += part * ws[(r / 128) * kb + b] * xs[b * n + t];
        }
        want[t * rows + r] = sum;
        big = std::max(big, std::fabs(sum));
      }
    void *dw = nullptr, *dx = nullptr, *dws = nullptr, *dxs = nullptr, *dy = nullptr;
    std::vector<float> got(n * rows);
    bool ran = false;
    // Everything on `st`, in order, then one wait: a copy on the legacy stream would not order
    // itself with a non-blocking one.
    auto up = [&](void* to, const void* from, size_t bytes) { return cudaMemcpyAsync(to, from, bytes, cudaMemcpyHostToDevice, st); };
    cudaError_t e = cudaMalloc(&dw, w.size());
    if (e == cudaSuccess) e = cudaMalloc(&dx, x.size());
    if (e == cudaSuccess) e = cudaMalloc(&dws, ws.size() * 4);
    if (e == cudaSuccess) e = cudaMalloc(&dxs, xs.size() * 4);
    if (e == cudaSuccess) e = cudaMalloc(&dy, got.size() * 4);
    if (e == cudaSuccess) e = up(dw, w.data(), w.size());
    if (e == cudaSuccess) e = up(dx, x.data(), x.size());
    if (e == cudaSuccess) e = up(dws, ws.data(), ws.size() * 4);
    if (e == cudaSuccess) e = up(dxs, xs.data(), xs.size() * 4);
    if (e == cudaSuccess) {
      LinearJob job;
      job.w.dtype = CODA_DTYPE_FP8_E4M3;
      job.w.rows = rows;
      job.w.cols = cols;
      job.w.data = dw;
      job.w.scales = static_cast<const float*>(dws);
      job.w.block = 128;
      job.w.scale_cols = kb;
      job.y = static_cast<float*>(dy);
      job.n = n;
      job.rows = rows;
      job.x_stride = cols;
      job.y_stride = rows;
      Plan& p = Find(job);
      ran = p.ok && Launch(p, job, static_cast<const uint8_t*>(dx), static_cast<const float*>(dxs), st);
      if (ran) e = cudaMemcpyAsync(got.data(), dy, got.size() * 4, cudaMemcpyDeviceToHost, st);
    }
    // The host vectors outlive the copies queued from them.
    if (const cudaError_t waited = cudaStreamSynchronize(st); e == cudaSuccess) e = waited;
    for (void* q : {dw, dx, dws, dxs, dy})
      if (q) cudaFree(q);
    ClearPlans();  // the check's addresses are gone
    if (e != cudaSuccess) return std::string("device error: ") + cudaGetErrorName(e);
    if (!ran) return "refused";
    double err = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double d = std::fabs(got[i] - want[i]);
      err = std::isnan(d) ? INFINITY : std::max(err, d);  // a NaN fails
    }
    // Hopper's FP8 tensor cores sum a block's 128 products in limited precision; a misread scale
    // is off by a factor of up to 16.
    if (!(err <= 1e-2 * big))
      return "differs from the host by " + std::to_string(err / big) + " of the largest value at " + std::to_string(n) +
             " tokens";
    return "";
  }
};

LtFp8::LtFp8(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LtFp8::~LtFp8() = default;

std::unique_ptr<LtFp8> LtFp8::Open(cudaStream_t s, std::string* why) {
  auto impl = std::make_unique<Impl>();
  if (std::string e = impl->Load(); !e.empty()) {
    *why = e;
    return nullptr;
  }
  // 576 rows: a partial last block of weight rows, as DeepSeek-V3's kv_a_proj has.
  if (std::string e = impl->Check(96, 576, 512, s); !e.empty()) {
    *why = "cuBLASLt's block-scaled FP8 product " + (e == "refused" ? std::string("is refused on this device") : e);
    return nullptr;
  }
  std::unique_ptr<LtFp8> lt(new LtFp8(std::move(impl)));
  lt->summary_ = "cuBLASLt " + std::to_string(lt->impl_->get_version()) + " block-scaled FP8 from " +
                 std::to_string(kLtMinTokens) + " tokens";
  return lt;
}

bool LtFp8::Takes(const LinearJob& job) {
  const DeviceWeight& w = job.w;
  // Beyond the own FP8 kernel's terms (FP8 in aligned 128x128 blocks, z = 1, row0 = 0): the cuBLAS
  // guide's.
  if (!Fp8Eligible(job) || w.cols % 512 != 0 || w.scale_cols != w.cols / 128 || job.rows % 16 != 0 || w.rows != job.rows ||
      job.y_stride != job.rows || job.n % 4 != 0 || reinterpret_cast<uintptr_t>(w.scales) % 16 ||
      reinterpret_cast<uintptr_t>(job.y) % 16)
    return false;
  return impl_->Find(job).ok;
}

bool LtFp8::Run(const LinearJob& job, const uint8_t* xq, const float* xs, cudaStream_t s) {
  if (reinterpret_cast<uintptr_t>(xq) % 256 || reinterpret_cast<uintptr_t>(xs) % 16) return false;
  Impl::Plan& p = impl_->Find(job);
  return p.ok && impl_->Launch(p, job, xq, xs, s);
}

}  // namespace coda::cuda

#endif
