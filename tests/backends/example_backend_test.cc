// The example backend, built out of tree by its own CMake project (an ExternalProject of this
// build) and loaded through CODA_BACKEND_PATH, runs a real model's RmsNorm and Add nodes while
// cpu runs the rest, and the logits match a CPU-only run.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <sstream>

#include "../common/test_util.h"
#include "coda/runtime.h"
#include "coda_cpu_backend.h"
#include "convert.h"

namespace coda {
namespace {

std::string ExampleDir() { return CODA_EXAMPLE_BACKEND_DIR; }

// Sets CODA_BACKEND_PATH for the duration of a scope.
class ScopedBackendPath {
 public:
  explicit ScopedBackendPath(const std::string& value) {
    if (const char* old = std::getenv("CODA_BACKEND_PATH")) saved_ = old;
    ::setenv("CODA_BACKEND_PATH", value.c_str(), 1);
  }
  ~ScopedBackendPath() {
    if (saved_) ::setenv("CODA_BACKEND_PATH", saved_->c_str(), 1);
    else ::unsetenv("CODA_BACKEND_PATH");
  }

 private:
  std::optional<std::string> saved_;
};

TEST(ExampleBackend, IsBuiltByItsOwnCMakeProject) {
  const std::string cache = test::ReadFile(ExampleDir() + "/CMakeCache.txt");
  EXPECT_NE(cache.find("CMAKE_PROJECT_NAME:STATIC=coda_backend_example"), std::string::npos);
  EXPECT_NE(cache.find("CODA_BACKEND_INCLUDE_DIR:PATH="), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(ExampleDir() + "/libcoda-backend-example.so"));
}

class ExampleOnGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ExampleOnGolden, RunsNormsAndAddsAndMatchesCpuOnly) {
  const std::string name = GetParam();
  const std::string path = ::testing::TempDir() + "/example_" + name + "_" + std::to_string(::getpid()) + ".coda";
  Status st = convert::ConvertCheckpoint(test::DataDir() + "/golden/" + name + "/hf", path, {});
  ASSERT_TRUE(st.ok()) << st.message();
  auto model = Model::Load(path);
  std::remove(path.c_str());
  ASSERT_TRUE(model.ok()) << model.status().message();

  ContextOptions co;
  co.backends = {coda_cpu_backend_entry};
  {
    ScopedBackendPath env(ExampleDir());
    co.plugin_dirs = BackendSearchPath();
  }
  auto ctx = Context::Create(co);
  ASSERT_TRUE(ctx.ok()) << ctx.status().message();
  auto example = (*ctx)->Find("example");
  ASSERT_TRUE(example.ok()) << example.status().message();
  EXPECT_EQ((*example)->path(), ExampleDir() + "/libcoda-backend-example.so");

  std::vector<std::vector<float>> runs;
  for (const std::vector<std::string>& prefs : {std::vector<std::string>{"example", "cpu"}, std::vector<std::string>{"cpu"}}) {
    SessionOptions so;
    so.n_ctx = 32;
    so.kv_dtype = DType::kF32;
    so.backends = prefs;
    auto s = Session::Create(**ctx, *model, so);
    ASSERT_TRUE(s.ok()) << s.status().message();
    if (prefs.front() == "example") {
      size_t on_example = 0;
      for (const std::string& p : (*s)->Placement()) {
        const bool norm_or_add = p.find(" (RmsNorm) -> ") != std::string::npos || p.find(" (Add) -> ") != std::string::npos;
        if (norm_or_add) {
          EXPECT_NE(p.find("-> example: first choice"), std::string::npos) << p;
          ++on_example;
        } else {
          EXPECT_NE(p.find("-> cpu: not supported by example"), std::string::npos) << p;
        }
      }
      EXPECT_GE(on_example, 2u * (*model)->config().n_layers + 1);
    }
    // A prefill with every row's logits, then two decode steps.
    std::vector<float> all;
    const int32_t prompt[] = {0, 7, 3, 11, 5};
    auto r = (*s)->Forward(prompt, true);
    ASSERT_TRUE(r.ok()) << r.status().message();
    all.insert(all.end(), r->begin(), r->end());
    for (int32_t t : {2, 9}) {
      const int32_t one[] = {t};
      r = (*s)->Forward(one);
      ASSERT_TRUE(r.ok()) << r.status().message();
      all.insert(all.end(), r->begin(), r->end());
    }
    runs.push_back(std::move(all));
  }
  ASSERT_EQ(runs[0].size(), runs[1].size());
  const size_t vocab = (*model)->config().vocab_size;
  for (size_t row = 0; row < runs[0].size() / vocab; ++row)
    EXPECT_LE(test::RelErr(std::span(runs[0]).subspan(row * vocab, vocab), std::span(runs[1]).subspan(row * vocab, vocab)), 1e-5)
        << "row " << row;
}

INSTANTIATE_TEST_SUITE_P(Golden, ExampleOnGolden, ::testing::Values("v2-bf16", "v2lite-bf16", "v3-fp8"));

TEST(ExampleBackend, ToolsSelectItByNameAndShowThePlan) {
  test::TempDir dir;
  const std::string model = dir / "m.coda";
  ASSERT_EQ(test::RunCommand(test::Tool("coda-convert") + " -q " + test::DataDir() + "/golden/v3-fp8/hf -o " + model).exit_code, 0);
  const std::string env = "CODA_BACKEND_PATH=" + ExampleDir() + " ";
  auto r = test::RunCommand(env + test::Tool("coda-inspect") + " --plan -m " + model + " --backend example,cpu");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  // One line per node: name, op, backend, why.
  std::map<std::string, std::string> plan;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream f(line);
    std::string node, op, backend;
    if (f >> node >> op >> backend) {
      std::string why;
      std::getline(f >> std::ws, why);
      plan[node] = op + " " + backend + " " + why;
    }
  }
  EXPECT_EQ(plan["model.norm"], "RmsNorm example first choice") << r.out;
  EXPECT_EQ(plan["model.layers.0.post_attention_layernorm"], "RmsNorm example first choice") << r.out;
  EXPECT_EQ(plan["model.layers.1.mlp_residual"], "Add example first choice") << r.out;
  EXPECT_EQ(plan["lm_head"], "Head cpu not supported by example") << r.out;
  EXPECT_EQ(plan["model.layers.0.self_attn"], "MlaAttention cpu not supported by example") << r.out;
  EXPECT_NE(r.out.find("example: "), std::string::npos) << r.out;
  r = test::RunCommand(env + test::Tool("coda-inspect") + " --backends");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("example    0.1.0    ABI 1  " + ExampleDir() + "/libcoda-backend-example.so"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("device 0: host memory (example) (cpu, memory unknown)"), std::string::npos) << r.out;

  const std::string a = dir / "a.f32", b = dir / "b.f32";
  r = test::RunCommand(env + test::Tool("coda-logits") + " -m " + model + " --tokens 1,2,3,4 --decode-from 2 -o " + a +
                       " --backend example,cpu");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = test::RunCommand(test::Tool("coda-logits") + " -m " + model + " --tokens 1,2,3,4 --decode-from 2 -o " + b);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const std::string x = test::ReadFile(a), y = test::ReadFile(b);
  ASSERT_EQ(x.size(), y.size());
  std::vector<float> fx(x.size() / 4), fy(y.size() / 4);
  std::memcpy(fx.data(), x.data(), x.size());
  std::memcpy(fy.data(), y.data(), y.size());
  EXPECT_LE(test::RelErr(fx, fy), 1e-5);
  // Without the path, asking for it names what is available.
  r = test::RunCommand(test::Tool("coda-logits") + " -m " + model + " --tokens 1 -o " + a + " --backend example");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("no backend named 'example' (available: cpu"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace coda
