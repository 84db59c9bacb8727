// The conformance suite on every backend this repository builds: the CPU backend against the
// independent scalar reference (its optimized kernels, and its portable reference kernels), the
// CPU plugin against the linked CPU backend, and the example backend; plus the suite's own
// ability to notice a wrong backend and to refuse a broken library.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "../common/test_util.h"
#include "coda/runtime.h"
#include "coda_cpu_backend.h"
#include "conformance.h"
#include "reference.h"

namespace coda {
namespace {

using conformance::Outcome;

std::string ExampleLibrary() { return std::string(CODA_EXAMPLE_BACKEND_DIR) + "/libcoda-backend-example.so"; }
std::string TestPlugin(const std::string& name) { return std::string(CODA_TEST_PLUGIN_DIR) + "/" + BackendFileName(name); }

// Outcomes by op and weight-dtype column, from the tool's JSON report.
std::map<std::pair<std::string, std::string>, std::set<std::string>> Outcomes(const nlohmann::json& j) {
  std::map<std::pair<std::string, std::string>, std::set<std::string>> m;
  for (const auto& c : j["cases"]) m[{c["op"], c["dtype"]}].insert(c["outcome"].get<std::string>());
  return m;
}

nlohmann::json RunTool(const std::string& args, int expected_exit = 0) {
  const auto r = test::RunCommand(test::Tool("coda-conformance") + " " + args + " --json");
  EXPECT_EQ(r.exit_code, expected_exit) << r.out.substr(0, 4000);
  // stderr may precede the JSON (warnings); the report is the last object.
  const size_t start = r.out.find("{\n");
  EXPECT_NE(start, std::string::npos) << r.out.substr(0, 2000);
  return start == std::string::npos ? nlohmann::json() : nlohmann::json::parse(r.out.substr(start));
}

TEST(Conformance, CpuBackendMatchesTheScalarReference) {
  auto cpu = Backend::Create(coda_cpu_backend_entry(CODA_BACKEND_ABI_VERSION),
                             {sizeof(coda_backend_options), 0, 0, CODA_BACKEND_EXACT_PRODUCTS});
  auto ref = Backend::Create(conformance::ReferenceBackendEntry(CODA_BACKEND_ABI_VERSION), {sizeof(coda_backend_options), 0, 0, 0});
  ASSERT_TRUE(cpu.ok() && ref.ok());
  auto report = conformance::Run(**cpu, **ref, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  std::printf("%s", report->Table().c_str());
  EXPECT_EQ(report->Count(Outcome::kFail), 0u) << report->Failures();
  const bool bf16_kernels = (*cpu)->describe().find("avx512bf16") != std::string::npos;
  std::set<std::string> ops;
  for (const auto& c : report->cases) {
    ops.insert(c.op);
    // The one documented gap: FP8 embedding tables (no checkpoint has them).
    // And steps: it holds nothing back, so it has none to bracket.
    if ((c.op == "Embed" && c.dtype == "FP8") || c.op == "steps") {
      EXPECT_EQ(c.outcome, Outcome::kUnsupported) << c.name;
      continue;
    }
    EXPECT_EQ(c.outcome, Outcome::kPass) << c.op << " [" << c.dtype << "] " << c.name << ": " << c.detail;
    // Far inside the tolerances: only summation order differs from double accumulation. Over a
    // BF16 cache, that order can also flip the rounding of a new cache element (2^-9 relative),
    // and the avx512bf16 kernels round q and the softmax weights to BF16 as well.
    const bool bf16_cache = c.op == "MlaAttention" && c.name.find("KV bf16") != std::string::npos;
    EXPECT_LT(c.error, bf16_cache ? (bf16_kernels ? 1e-2 : 2e-3) : 1e-5) << c.op << " [" << c.dtype << "] " << c.name;
  }
  for (const std::string& op : conformance::OpNames()) EXPECT_TRUE(ops.count(op)) << op;
  for (const char* area : {"devices", "buffers", "events", "prepare", "synchronize", "errors", "steps"})
    EXPECT_TRUE(ops.count(area)) << area;
}

// Fast products (the default): FP8 weights with 8 tokens or more multiply as int8 where the CPU
// has AVX512-VNNI, within their quantization error; everything else stays as exact as above.
TEST(Conformance, CpuFastProductsStayNearTheScalarReference) {
  auto cpu = Backend::Create(coda_cpu_backend_entry(CODA_BACKEND_ABI_VERSION), {sizeof(coda_backend_options), 0, 0, 0});
  auto ref = Backend::Create(conformance::ReferenceBackendEntry(CODA_BACKEND_ABI_VERSION), {sizeof(coda_backend_options), 0, 0, 0});
  ASSERT_TRUE(cpu.ok() && ref.ok());
  auto report = conformance::Run(**cpu, **ref, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  double worst_fp8 = 0;
  for (const auto& c : report->cases) {
    if (c.outcome == Outcome::kUnsupported) continue;
    // The tool's own FP8 bound (1e-2) is for exact products.
    if (c.dtype != "FP8") {
      EXPECT_EQ(c.outcome, Outcome::kPass) << c.op << " [" << c.dtype << "] " << c.name << ": " << c.detail;
      continue;
    }
    worst_fp8 = std::max(worst_fp8, c.error);
    // Measured at most 2.7e-2 (an MLP of 33 rows); a wrong scale or a misplaced block is 1 or more.
    EXPECT_LT(c.error, 5e-2) << c.op << " " << c.name;
  }
  std::printf("FP8 cases with fast products: largest error %.3g\n", worst_fp8);
}

TEST(Conformance, CpuReferenceKernelsMatchTheScalarReference) {
  // The kernel set is chosen when an instance is created; a subprocess keeps the environment
  // change away from the other tests.
  const auto r = test::RunCommand("CODA_CPU_KERNELS=ref " + test::Tool("coda-conformance") + " cpu --against reference");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find(" reference kernels"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" 0 failed, 9 unsupported"), std::string::npos) << r.out;
}

TEST(Conformance, CpuPluginMatchesTheLinkedCpuBackend) {
  const auto j = RunTool(test::BinDir() + "/libcoda-backend-cpu.so");
  EXPECT_EQ(j["fail"], 0);
  EXPECT_EQ(j["unsupported"], 9);  // FP8 embedding tables, host and buffers; steps
  for (const auto& c : j["cases"]) {
    if (c["outcome"] == "pass") {
      EXPECT_LE(c["error"].get<double>(), 1e-6) << c.dump();  // the same code on both sides
    }
  }
}

TEST(Conformance, ExampleBackendRunsItsOpsAndDeclinesTheRest) {
  const auto j = RunTool(ExampleLibrary());
  EXPECT_EQ(j["fail"], 0);
  const auto m = Outcomes(j);
  using Set = std::set<std::string>;
  EXPECT_EQ(m.at({"RmsNorm", "F32"}), Set{"pass"});
  EXPECT_EQ(m.at({"RmsNorm", "BF16"}), Set{"pass"});
  EXPECT_EQ(m.at({"Add", "-"}), Set{"pass"});
  for (const char* op : {"Embed", "Linear", "MlaAttention", "MoeGate", "MoeExperts", "Mlp", "Head"})
    for (const char* dt : {"F32", "BF16", "FP8"}) EXPECT_EQ(m.at({op, dt}), Set{"unsupported"}) << op << " " << dt;
  EXPECT_EQ(m.at({"devices", "-"}), Set{"pass"});
  EXPECT_EQ(m.at({"buffers", "-"}), Set{"pass"});
  EXPECT_EQ(m.at({"events", "-"}), Set{"unsupported"});
  EXPECT_EQ(m.at({"steps", "-"}), Set{"unsupported"});
  EXPECT_EQ(m.at({"errors", "-"}), Set{"pass"});
  // Its ops ran with activations in its own buffers too.
  size_t in_buffers = 0;
  for (const auto& c : j["cases"])
    if (c["case"].get<std::string>().find("[in buffers]") != std::string::npos && c["outcome"] == "pass") ++in_buffers;
  EXPECT_EQ(in_buffers, 18u);  // 12 RmsNorm + 6 Add
}

// Why the plugin backend `name` cannot be tested here (not built, or no device), or empty.
std::string PluginUnavailable(const std::string& name, const std::string& needs) {
  const std::string lib = test::BinDir() + "/" + BackendFileName(name);
  if (!std::filesystem::exists(lib)) return lib + " was not built (needs " + needs + ")";
  ContextOptions co;
  co.plugin_files = {lib};
  auto ctx = Context::Create(co);
  return ctx.ok() ? "" : ctx.status().message();
}

// The Vulkan backend (when built, on the device CI installs: Mesa's lavapipe) runs every op and
// dtype within tolerance: with device memory mapped and through staging copies, with subgroup
// and with shared-memory reductions.
TEST(Conformance, VulkanBackendPassesEveryCase) {
  const std::string lib = test::BinDir() + "/" + BackendFileName("vulkan");
  if (const std::string why = PluginUnavailable("vulkan", "libvulkan-dev and glslc"); !why.empty()) {
    if (test::BackendRequired("vulkan")) FAIL() << "the vulkan backend is required but unavailable: " << why;
    GTEST_SKIP() << "vulkan backend unavailable: " << why;
  }
  for (const std::string env : {"", "CODA_VULKAN_STAGING=1 CODA_VULKAN_NO_SUBGROUP=1 "}) {
    const auto r = test::RunCommand(env + "CODA_VULKAN_PIPELINE_CACHE=off " + test::Tool("coda-conformance") + " " + lib +
                                    " --json");
    ASSERT_EQ(r.exit_code, 0) << env << r.out.substr(0, 4000);
    const size_t start = r.out.find("{\n");
    ASSERT_NE(start, std::string::npos) << r.out.substr(0, 2000);
    const auto j = nlohmann::json::parse(r.out.substr(start));
    EXPECT_EQ(j["fail"], 0) << env;
    EXPECT_EQ(j["unsupported"], 1) << env;  // steps: it has none (yet)
    EXPECT_EQ(Outcomes(j).at({"steps", "-"}), std::set<std::string>{"unsupported"}) << env;
    const auto m = Outcomes(j);
    for (const std::string& op : conformance::OpNames()) {
      size_t seen = 0;
      for (const auto& [key, outcomes] : m)
        if (key.first == op) {
          ++seen;
          EXPECT_EQ(outcomes, std::set<std::string>{"pass"}) << env << op << " " << key.second;
        }
      EXPECT_GT(seen, 0u) << op;
    }
  }
}

// What the CUDA backend runs: every op and dtype but FP8 embedding tables, which it declines
// (the runtime places them elsewhere). Written out here so that a case it stops running, or
// starts failing, shows.
void ExpectCudaOutcomes(const nlohmann::json& j) {
  EXPECT_EQ(j["fail"], 0);
  size_t ops = 0;
  for (const auto& [key, outcomes] : Outcomes(j)) {
    const bool declined = key.first == "Embed" && key.second == "FP8";
    EXPECT_EQ(outcomes, std::set<std::string>{declined ? "unsupported" : "pass"}) << key.first << " " << key.second;
    ++ops;
  }
  EXPECT_GT(ops, conformance::OpNames().size());
}

// The CUDA backend on a machine with an NVIDIA GPU (tools/gpu-check). Without one it skips and
// says why; the emulated build below runs the same kernels everywhere.
TEST(Conformance, CudaBackendPassesTheOpsItRuns) {
  const std::string lib = test::BinDir() + "/" + BackendFileName("cuda");
  if (const std::string why = PluginUnavailable("cuda", "the CUDA toolkit"); !why.empty()) {
    if (test::BackendRequired("cuda")) FAIL() << "the cuda backend is required but unavailable: " << why;
    GTEST_SKIP() << "cuda backend unavailable: " << why;
  }
  ExpectCudaOutcomes(RunTool(lib));
}

// The CUDA backend's own sources built against the CPU emulator (backends/cuda/emu): its kernels'
// arithmetic, indexing, reductions and barriers, on every machine.
TEST(Conformance, CudaKernelsPassEveryCaseInTheEmulator) {
  const std::string lib = TestPlugin("cuda-emu");
  ASSERT_TRUE(std::filesystem::exists(lib)) << lib;
  const auto j = RunTool(lib);
  ExpectCudaOutcomes(j);
  // Attention over a BF16 cache runs on the tensor cores (kernels.h, MlaPlan) with Q and P in two
  // BF16 halves, each value within 2^-16 of F32's. Against the scalar reference, with BF16
  // weights: median 2.3e-6 (the F32 kernel: 1.8e-7), at most 5.5e-5 (one 70-token case, as with
  // the F32 kernel); one BF16 half alone fails 36 of 42 cases (up to 3e-3). Not against the CPU
  // backend: where the CPU has avx512_bf16 it rounds q and the softmax weights to BF16 itself
  // (kernels_avx512bf16.cc, 1e-3 from the reference in decode), which would hide a lost half.
  const auto exact = RunTool(lib + " --against reference --op MlaAttention");
  EXPECT_EQ(exact["fail"], 0);
  int cases = 0;
  for (const auto& c : exact["cases"]) {
    if (c["op"] != "MlaAttention" || c["dtype"] != "BF16" || c["case"].get<std::string>().find("KV bf16") == std::string::npos)
      continue;
    ++cases;
    EXPECT_LT(c["error"].get<double>(), 1e-4) << c["case"];
  }
  EXPECT_GT(cases, 0);
}

// The CUDA backend's FP8 products on tensor cores (activations quantized per 1 x 128 tile, each
// 128-column block's sum promoted to F32 with both scales) against the scalar reference: every
// non-FP8 case passes as before, the FP8 ones stay within E4M3's rounding.
// The conformance report of `name` (in `lib`) with fast products (or exact ones), over `ops` (all
// when empty).
void FastReport(const std::string& lib, const std::string& name, std::vector<std::string> ops, conformance::Report* out,
                bool exact = false) {
  ContextOptions co;
  co.plugin_files = {lib};
  co.exact_products = exact;
  auto ctx = Context::Create(co);
  ASSERT_TRUE(ctx.ok()) << ctx.status().message();
  auto found = (*ctx)->Find(name);
  ASSERT_TRUE(found.ok()) << found.status().message();
  auto ref = Backend::Create(conformance::ReferenceBackendEntry(CODA_BACKEND_ABI_VERSION), {sizeof(coda_backend_options), 0, 0, 0});
  ASSERT_TRUE(ref.ok());
  conformance::Options o;
  o.ops = std::move(ops);
  auto report = conformance::Run(**found, **ref, o);
  ASSERT_TRUE(report.ok()) << report.status().message();
  *out = std::move(*report);
}

void ExpectFastProductsNearTheReference(const std::string& lib, const std::string& name, std::vector<std::string> ops = {}) {
  conformance::Report report;
  ASSERT_NO_FATAL_FAILURE(FastReport(lib, name, std::move(ops), &report));
  double worst_fp8 = 0, worst_exact = 0;
  for (const auto& c : report.cases) {
    if (c.outcome == Outcome::kUnsupported) continue;
    if (c.dtype != "FP8") {
      EXPECT_EQ(c.outcome, Outcome::kPass) << c.op << " [" << c.dtype << "] " << c.name << ": " << c.detail;
      continue;
    }
    (c.error > 1e-3 ? worst_fp8 : worst_exact) = std::max(c.error > 1e-3 ? worst_fp8 : worst_exact, c.error);
    // E4M3 keeps 3 mantissa bits (rounding by up to 1/16) of both operands, where the CPU's int8
    // activations keep 7: measured at most 4.9e-2 (emulator), in experts whose two products both
    // quantize (256 x 128). A wrong scale or a misplaced fragment gives 1 or more.
    EXPECT_LT(c.error, 1e-1) << c.op << " " << c.name;
  }
  std::printf("FP8 cases with fast products: largest error %.3g (cases that stayed exact: %.3g)\n", worst_fp8, worst_exact);
  // Some cases have 16 tokens or more and widths of whole 128-column blocks: they took the path.
  EXPECT_GT(worst_fp8, 1e-3);
}

// On a GPU (sm_89 and later: tensor cores with FP8), where mma runs on the hardware.
TEST(Conformance, CudaFastProductsStayNearTheScalarReference) {
  if (const std::string why = PluginUnavailable("cuda", "the CUDA toolkit"); !why.empty()) {
    if (test::BackendRequired("cuda")) FAIL() << "the cuda backend is required but unavailable: " << why;
    GTEST_SKIP() << "cuda backend unavailable: " << why;
  }
  ExpectFastProductsNearTheReference(test::BinDir() + "/" + BackendFileName("cuda"), "cuda");
}

// In the emulator, which runs mma as the PTX ISA lays out its fragments.
TEST(Conformance, CudaFastProductsStayNearTheScalarReferenceInTheEmulator) {
  ExpectFastProductsNearTheReference(TestPlugin("cuda-emu"), "cuda-emu");
}

// With the emulator's stand-in for cuBLASLt (backends/cuda/emu/cublaslt_emu.cc), which the backend
// loads and checks when it starts (lt.h): the products it takes (from 64 tokens: Linear 384 x 512
// at 70 tokens, 68 of them) go through the backend's plumbing to it, with the same outcome. A
// stand-in that misreads the scales is refused at start; one that gives wrong products later
// makes exactly those cases fail; one that fails later leaves them to the own kernel.
TEST(Conformance, CudaFastProductsThroughCublasLtStandInInTheEmulator) {
  struct Env {
    Env() { setenv("CODA_CUDA_EMU_CUBLASLT", (std::string(CODA_TEST_PLUGIN_DIR) + "/libcublasLt-emu.so").c_str(), 1); }
    ~Env() {
      unsetenv("CODA_CUDA_EMU_CUBLASLT");
      unsetenv("CODA_CUDA_EMU_CUBLASLT_FAULT");
    }
    static void Fault(const char* f) { f ? setenv("CODA_CUDA_EMU_CUBLASLT_FAULT", f, 1) : unsetenv("CODA_CUDA_EMU_CUBLASLT_FAULT"); }
  } env;
  auto describe = [](const char* fault) {
    Env::Fault(fault);
    ContextOptions co;
    co.plugin_files = {TestPlugin("cuda-emu")};
    co.exact_products = false;
    auto ctx = Context::Create(co);
    Env::Fault(nullptr);
    if (!ctx.ok()) return ctx.status().message();
    auto found = (*ctx)->Find("cuda-emu");
    return found.ok() ? (*found)->describe() : found.status().message();
  };
  EXPECT_NE(describe(nullptr).find("; cuBLASLt 130000 block-scaled FP8 from 64 tokens"), std::string::npos) << describe(nullptr);
  const std::string misread = describe("scales");
  EXPECT_NE(misread.find("FP8 products by own kernels only: cuBLASLt's block-scaled FP8 product differs from the host by"),
            std::string::npos)
      << misread;
  ExpectFastProductsNearTheReference(TestPlugin("cuda-emu"), "cuda-emu", {"Linear"});

  const std::string taken = "W 384x512, 70 rows";
  for (const char* fault : {"wrong", "fail"}) {
    Env::Fault(fault);
    conformance::Report report;
    FastReport(TestPlugin("cuda-emu"), "cuda-emu", {"Linear"}, &report);
    Env::Fault(nullptr);
    int wrong = 0;
    for (const auto& c : report.cases) {
      const bool lt = c.dtype == "FP8" && c.name.starts_with(taken);
      if (lt && std::string(fault) == "wrong") {
        EXPECT_GT(c.error, 0.2) << c.name;
        ++wrong;
      } else {
        EXPECT_LT(c.error, 1e-1) << fault << ": " << c.name;
      }
    }
    if (std::string(fault) == "wrong") {
      EXPECT_EQ(wrong, 2);  // with host tensors and in buffers
    }
  }
}

// BF16 products on tensor cores (kernels.h, Bf16Eligible; the experts' from 16 pairs): BF16
// weights, and on a GPU without FP8 tensor cores (the emulator playing an A100, sm_80) FP8 weights
// too, widened to BF16. With the activations in two BF16 halves they stay near the F32 product: at
// most 5.4e-6 from the scalar reference (emulator; the F32 path: 8e-7), where one half alone gives
// 3e-3 and the FP8 tensor cores' quantized activations 5e-2, so the bound below tells them apart;
// each op must have cases whose error moved from exact mode's, or its products did not go there.
TEST(Conformance, CudaBf16ProductsStayNearTheScalarReferenceInTheEmulator) {
  struct Env {
    ~Env() { unsetenv("CODA_CUDA_EMU_SM"); }
  } env;
  for (const char* sm : {"90", "80"}) {
    setenv("CODA_CUDA_EMU_SM", sm, 1);
    ContextOptions co;
    co.plugin_files = {TestPlugin("cuda-emu")};
    co.exact_products = false;
    auto ctx = Context::Create(co);
    ASSERT_TRUE(ctx.ok()) << ctx.status().message();
    auto found = (*ctx)->Find("cuda-emu");
    ASSERT_TRUE(found.ok()) << found.status().message();
    const bool a100 = std::string(sm) == "80";
    EXPECT_NE((*found)->describe().find(a100 ? "; FP8 and BF16 weights on BF16 tensor cores"
                                             : "; FP8 weights on FP8 tensor cores, BF16 ones on BF16 tensor cores"),
              std::string::npos)
        << (*found)->describe();
    const std::vector<std::string> ops = {"Linear", "Mlp", "MoeExperts"};
    conformance::Report report, exact;
    ASSERT_NO_FATAL_FAILURE(FastReport(TestPlugin("cuda-emu"), "cuda-emu", ops, &report));
    ASSERT_NO_FATAL_FAILURE(FastReport(TestPlugin("cuda-emu"), "cuda-emu", ops, &exact, true));
    ASSERT_EQ(report.cases.size(), exact.cases.size());
    double worst_bf16 = 0, worst_fp8 = 0;
    std::map<std::string, int> differ;  // per op, cases whose products did not run in F32 as in exact mode
    for (size_t i = 0; i < report.cases.size(); ++i) {
      const auto& c = report.cases[i];
      if (c.outcome == Outcome::kUnsupported || (c.dtype == "FP8" && !a100)) continue;  // FP8 products: above
      EXPECT_EQ(c.outcome, Outcome::kPass) << sm << ": " << c.op << " [" << c.dtype << "] " << c.name << ": " << c.detail;
      if (c.dtype == "F32") continue;
      EXPECT_LT(c.error, 1e-5) << sm << ": " << c.op << " [" << c.dtype << "] " << c.name;
      (c.dtype == "BF16" ? worst_bf16 : worst_fp8) = std::max(c.dtype == "BF16" ? worst_bf16 : worst_fp8, c.error);
      differ[c.op] += c.error != exact.cases[i].error;
    }
    std::printf("sm_%s: largest error with BF16 weights %.3g, FP8 weights on BF16 tensor cores %.3g; cases unlike exact "
                "mode: Linear %d, Mlp %d, MoeExperts %d\n",
                sm, worst_bf16, worst_fp8, differ["Linear"], differ["Mlp"], differ["MoeExperts"]);
    for (const auto& op : ops) EXPECT_GT(differ[op], 0) << op << ": no product took the BF16 tensor cores";
  }
}

TEST(Conformance, NoticesAWrongBackend) {
  // Add computed as a + 1.001 b: off by 1e-3, ten times the F32 tolerance.
  const auto r = test::RunCommand(test::Tool("coda-conformance") + " " + TestPlugin("wrong"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("Add           FAIL"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("FAIL Add [-] 5x200: error "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("> tolerance 0.0001 (output 0)"), std::string::npos) << r.out;
}

TEST(Conformance, ToolRefusesABrokenLibraryWithOneLine) {
  auto r = test::RunCommand(test::Tool("coda-conformance") + " " + TestPlugin("future"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_EQ(r.out, "coda-conformance: error: " + TestPlugin("future") +
                       ": built for backend ABI version 2, this runtime speaks version 1 (the backend is newer than "
                       "this runtime)\n");
  test::TempDir dir;
  test::WriteFile(dir / "libcoda-backend-text.so", "plain text\n");
  r = test::RunCommand(test::Tool("coda-conformance") + " " + (dir / "libcoda-backend-text.so"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_EQ(r.out.rfind("coda-conformance: error: " + dir / "libcoda-backend-text.so" + ": not a loadable shared library: ", 0), 0u)
      << r.out;
  r = test::RunCommand(test::Tool("coda-conformance") + " cpu --op Conv2d");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("unknown op 'Conv2d'"), std::string::npos) << r.out;
}

TEST(Conformance, OpFilterRunsOnlyThoseOps) {
  const auto j = RunTool("cpu --against reference --op Add,RmsNorm --no-buffers");
  std::set<std::string> ops;
  for (const auto& c : j["cases"]) ops.insert(c["op"].get<std::string>());
  EXPECT_EQ(ops, (std::set<std::string>{"Add", "RmsNorm"}));
  EXPECT_EQ(j["pass"], 6 + 12);
}

}  // namespace
}  // namespace coda
