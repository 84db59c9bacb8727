// The tests' stand-in for cuBLASLt (libcublasLt-emu.so, API in cublasLt.h here): the one product
// the CUDA backend asks for (lt.h), E4M3 x E4M3 with 128x128 block scales on A and 1x128 tile
// scales on B, F32 out, computed on the host (the emulator's device memory is host memory) in the
// stream's turn, through the emulator's queue that the backend hands it (coda_cublaslt_emu_bind).
// Anything else it refuses, as cuBLASLt's heuristic does, token counts that are not multiples of
// 4 included (the cuBLAS guide asks for them).
//
// CODA_CUDA_EMU_CUBLASLT_FAULT plays a library the backend must not trust, or that fails later:
//   scales  reads A's block scales transposed (the start-up check must refuse the library);
//   wrong   multiplies every result after a handle's first product by 1.5 (what uses it fails);
//   fail    fails every product after a handle's first (the backend's own kernel takes over).
#include "cublasLt.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "coda_dtypes.h"

struct cublasLtContext {
  int products = 0;  // the first is the backend's start-up check
};
struct cublasLtMatmulDescEmu {
  int32_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N, a_mode = 0, b_mode = 0;
  const float* a_scale = nullptr;
  const float* b_scale = nullptr;
};
struct cublasLtMatrixLayoutEmu {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
};
struct cublasLtMatmulPreferenceEmu {
  int unused = 0;
};

namespace {

// The emulator's queue for a stream (coda_cublaslt_emu_bind); unbound, products are refused.
bool (*g_enqueue)(cudaStream_t, std::function<void()>) = nullptr;

std::string Fault() {
  const char* f = std::getenv("CODA_CUDA_EMU_CUBLASLT_FAULT");
  return f ? f : "";
}

template <class T>
cublasStatus_t Read(const void* buf, size_t size, T* out) {
  if (!buf || size != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(out, buf, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}

// The product this stand-in computes: D[m, n] = A^T B with A [k, m] and B [k, n], all column-major.
bool Supported(const cublasLtMatmulDescEmu* d, const cublasLtMatrixLayoutEmu* a, const cublasLtMatrixLayoutEmu* b,
               const cublasLtMatrixLayoutEmu* c, const cublasLtMatrixLayoutEmu* out) {
  if (!d || !a || !b || !c || !out) return false;
  const uint64_t k = a->rows, m = a->cols, n = b->cols;
  if (n % 4) return false;
  return d->transa == CUBLAS_OP_T && d->transb == CUBLAS_OP_N && d->a_mode == CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F &&
         d->b_mode == CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F && a->type == CUDA_R_8F_E4M3 && b->type == CUDA_R_8F_E4M3 &&
         c->type == CUDA_R_32F && out->type == CUDA_R_32F && b->rows == k && k % 128 == 0 && c->rows == m && c->cols == n &&
         out->rows == m && out->cols == n && a->ld >= static_cast<int64_t>(k) && b->ld >= static_cast<int64_t>(k) &&
         out->ld >= static_cast<int64_t>(m) && c->ld == out->ld;
}

}  // namespace

extern "C" {

size_t cublasLtGetVersion(void) { return 130000; }

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  *handle = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute, cudaDataType_t scale) {
  if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *desc = new cublasLtMatmulDescEmu;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              size_t size) {
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: return Read(buf, size, &desc->transa);
    case CUBLASLT_MATMUL_DESC_TRANSB: return Read(buf, size, &desc->transb);
    case CUBLASLT_MATMUL_DESC_A_SCALE_MODE: return Read(buf, size, &desc->a_mode);
    case CUBLASLT_MATMUL_DESC_B_SCALE_MODE: return Read(buf, size, &desc->b_mode);
    case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER: return Read(buf, size, &desc->a_scale);
    case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER: return Read(buf, size, &desc->b_scale);
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
  *layout = new cublasLtMatrixLayoutEmu{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  *pref = new cublasLtMatmulPreferenceEmu;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                                                    const void*, size_t) {
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t* results, int* found) {
  *found = 0;
  if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  if (!Supported(desc, a, b, c, d)) return CUBLAS_STATUS_NOT_SUPPORTED;
  results[0] = cublasLtMatmulHeuristicResult_t{};
  *found = 1;
  return CUBLAS_STATUS_SUCCESS;
}

void coda_cublaslt_emu_bind(bool (*enqueue)(cudaStream_t, std::function<void()>)) { g_enqueue = enqueue; }

// Checked at the call; computed in the stream's turn, with the descriptors' values of the call.
cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t a, const void* B, cublasLtMatrixLayout_t b, const void* beta, const void* C,
                              cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t d, const cublasLtMatmulAlgo_t*, void*,
                              size_t, cudaStream_t stream) {
  const bool later = handle->products++ > 0;
  if (!Supported(desc, a, b, c, d) || !desc->a_scale || !desc->b_scale || (later && Fault() == "fail"))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const float factor = later && Fault() == "wrong" ? 1.5f : 1.0f;
  const bool transposed = Fault() == "scales";
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  auto product = [factor, transposed, al, be, A, B, C, D, ds = *desc, la = *a, lb = *b, lc = *c, ld = *d] {
    const uint64_t k = la.rows, m = la.cols, n = lb.cols, kb = k / 128, kb4 = (kb + 3) / 4 * 4, mb = (m + 127) / 128;
    const auto* wa = static_cast<const uint8_t*>(A);
    const auto* xb = static_cast<const uint8_t*>(B);
    for (uint64_t j = 0; j < n; ++j)
      for (uint64_t i = 0; i < m; ++i) {
        double sum = 0;
        for (uint64_t q = 0; q < kb; ++q) {
          double part = 0;
          for (uint64_t r = q * 128; r < q * 128 + 128; ++r)
            part += static_cast<double>(coda_e4m3_to_f32(wa[i * la.ld + r])) * coda_e4m3_to_f32(xb[j * lb.ld + r]);
          const float sa = transposed ? ds.a_scale[q * mb + i / 128] : ds.a_scale[(i / 128) * kb4 + q];
          sum += part * sa * ds.b_scale[q * n + j];
        }
        float* out = static_cast<float*>(D) + j * ld.ld + i;
        const float prior = be != 0 ? static_cast<const float*>(C)[j * lc.ld + i] : 0.0f;
        *out = static_cast<float>(al * sum + be * prior) * factor;
      }
  };
  if (!g_enqueue) return CUBLAS_STATUS_NOT_SUPPORTED;
  return g_enqueue(stream, product) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // extern "C"
