// The runtime's contracts: KV-cache sizing, errors for bad input, backends that refuse or fail,
// generation stops, and samplers.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "../common/golden_model.h"
#include "../common/test_util.h"
#include "coda/file.h"
#include "coda/hf_config.h"
#include "coda/runtime.h"
#include "coda_cpu_backend.h"
#include "convert.h"

namespace coda {
namespace {

using test::GoldenModel;

std::unique_ptr<Context> CpuContext() {
  ContextOptions o;
  o.backends = {coda_cpu_backend_entry};
  return std::move(Context::Create(o).value());
}

TEST(KvCache, HoldsExactlyTheLatentPerToken) {
  auto v3 = LoadHfConfig(test::DataDir() + "/configs/deepseek-v3.json");
  ASSERT_TRUE(v3.ok());
  auto bf16 = LatentKvCache::Create(*v3, 16, DType::kBF16);
  ASSERT_TRUE(bf16.ok());
  EXPECT_EQ((*bf16)->bytes_per_token(), 61u * (512 + 64) * 2);  // 70,272
  EXPECT_EQ((*bf16)->bytes_total(), 16u * 70272);
  auto f32 = LatentKvCache::Create(*v3, 16, DType::kF32);
  ASSERT_TRUE(f32.ok());
  EXPECT_EQ((*f32)->bytes_per_token(), 61u * (512 + 64) * 4);
  auto lite = LoadHfConfig(test::DataDir() + "/configs/deepseek-v2-lite.json");
  ASSERT_TRUE(lite.ok());
  EXPECT_EQ((*LatentKvCache::Create(*lite, 1, DType::kBF16))->bytes_per_token(), 31104u);
  EXPECT_FALSE(LatentKvCache::Create(*v3, 0, DType::kBF16).ok());
  EXPECT_FALSE(LatentKvCache::Create(*v3, 16, DType::kFP8_E4M3).ok());
  auto huge = LatentKvCache::Create(*v3, 4'000'000'000u, DType::kF32);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), StatusCode::kOutOfMemory) << huge.status().message();
}

TEST(Session, RejectsBadInputAndStaysUsable) {
  auto ctx = CpuContext();
  SessionOptions so;
  so.n_ctx = 8;
  auto s = Session::Create(*ctx, GoldenModel("v2lite-bf16"), so);
  ASSERT_TRUE(s.ok()) << s.status().message();
  Session& ses = **s;
  const int32_t bad[] = {1, 5000};
  auto r = ses.Forward(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("token id 5000 at index 1 is outside the vocabulary"), std::string::npos)
      << r.status().message();
  EXPECT_FALSE(ses.Forward({}).ok());
  const int32_t nine[9] = {};
  r = ses.Forward(nine);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kOutOfRange);
  EXPECT_NE(r.status().message().find("context full"), std::string::npos);
  EXPECT_EQ(ses.n_past(), 0u);
  const int32_t ok[] = {0, 1, 2};
  ASSERT_TRUE(ses.Forward(ok).ok());
  EXPECT_EQ(ses.n_past(), 3u);
  EXPECT_FALSE(ses.Rewind(4).ok());
  ASSERT_TRUE(ses.Rewind(1).ok());
  EXPECT_EQ(ses.n_past(), 1u);
  ses.Reset();
  EXPECT_EQ(ses.n_past(), 0u);
}

// Weights copied into 2 MB-page memory give bit-identical logits to weights read in place,
// and none of the copy's tensors points into the file mapping.
// The logits of a fixed 6-token prompt; empty (with a test failure) when it cannot run.
std::vector<float> LogitsOf6Tokens(Context& ctx, const std::shared_ptr<Model>& m) {
  SessionOptions so;
  so.n_ctx = 32;
  auto s = Session::Create(ctx, m, so);
  EXPECT_TRUE(s.ok()) << s.status().message();
  if (!s.ok()) return {};
  const int32_t t[] = {5, 9, 2, 7, 1, 3};
  auto r = (*s)->Forward(t, true);
  EXPECT_TRUE(r.ok()) << r.status().message();
  if (!r.ok()) return {};
  return {r->begin(), r->end()};
}

TEST(Model, CopiedWeightsGiveTheSameLogits) {
  test::TempDir dir;
  const std::string path = dir / "m.coda";
  ASSERT_TRUE(convert::ConvertCheckpoint(test::DataDir() + "/golden/v3-fp8/hf", path, {}).ok());
  auto ctx = CpuContext();
  std::vector<std::vector<float>> logits;
  for (bool copy : {false, true}) {
    ModelLoadOptions lo;
    lo.weights = copy ? ModelLoadOptions::Weights::kCopy : ModelLoadOptions::Weights::kMap;
    auto m = Model::Load(path, lo);
    ASSERT_TRUE(m.ok()) << m.status().message();
    const uint8_t* file = (*m)->file().mapping() ? (*m)->file().mapping()->data() : nullptr;
    const uint64_t size = (*m)->file().file_size();
    for (const TensorRef& r : (*m)->file().tensors()) {
      const auto* d = static_cast<const uint8_t*>((*m)->tensor(static_cast<int32_t>(&r - (*m)->file().tensors().data())).data);
      const bool in_file = file && d >= file && d < file + size;
      EXPECT_EQ(in_file, !copy) << r.name;
      EXPECT_EQ(std::memcmp(d, r.data, r.size), 0) << r.name;
    }
    logits.push_back(LogitsOf6Tokens(*ctx, *m));
  }
  EXPECT_EQ(logits[0], logits[1]);
}

// Puts a file in the page cache in 4 KB pages, as a file read at random sits there: dropped from
// the cache, then read 4 KB at a time with readahead off.
void CacheIn4KPages(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ::fdatasync(fd);  // dirty pages would stay
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  char page[4096];
  for (off_t at = 0; ::pread(fd, page, sizeof page, at) > 0; at += sizeof page) {
  }
  ::close(fd);
}

// --weights auto: a file the page cache holds in 4 KB pages is copied into 2 MB pages (where the
// machine has transparent huge pages), and the model says so; the logits do not change.
TEST(Model, AutoWeightsCopiesAFileCachedIn4KPages) {
  test::TempDir dir;
  const std::string path = dir / "m.coda";
  ASSERT_TRUE(convert::ConvertCheckpoint(test::DataDir() + "/golden/v3-fp8/hf", path, {}).ok());
  auto ctx = CpuContext();
  std::vector<std::vector<float>> logits;
  for (auto mode : {ModelLoadOptions::Weights::kMap, ModelLoadOptions::Weights::kAuto}) {
    CacheIn4KPages(path);
    ModelLoadOptions lo;
    lo.weights = mode;
    lo.prefault = ModelLoadOptions::Prefault::kAlways;
    auto m = Model::Load(path, lo);
    ASSERT_TRUE(m.ok()) << m.status().message();
    const std::string& held = (*m)->weights_held();
    if (mode == ModelLoadOptions::Weights::kMap) {
      EXPECT_EQ(held, "mapped");
      // What auto decides from: none of a file in 4 KB pages is mapped with 2 MB entries.
      const double share = (*m)->file().mapping()->HugePageShare();
      if (share < 0) GTEST_SKIP() << "this kernel does not show FilePmdMapped in /proc/self/smaps";
      EXPECT_EQ(share, 0.0);
    } else if (AnonymousHugePagesEnabled()) {
      EXPECT_EQ(held, "copied into 2 MB pages (the page cache held 0% of the file in them)");
      const uint8_t* file = (*m)->file().mapping()->data();
      EXPECT_FALSE((*m)->tensor(0).data >= file && (*m)->tensor(0).data < file + (*m)->file().file_size());
    } else {
      EXPECT_EQ(held.rfind("mapped (0% in 2 MB pages; transparent huge pages are off", 0), 0u) << held;
    }
    logits.push_back(LogitsOf6Tokens(*ctx, *m));
  }
  EXPECT_EQ(logits[0], logits[1]);
}

// Loading reports its long steps: bytes done only grow, and each step ends at its total.
TEST(Model, LoadingReportsProgressPerStep) {
  test::TempDir dir;
  const std::string path = dir / "m.coda";
  ASSERT_TRUE(convert::ConvertCheckpoint(test::DataDir() + "/golden/v3-fp8/hf", path, {}).ok());
  for (auto mode : {ModelLoadOptions::Weights::kMap, ModelLoadOptions::Weights::kCopy}) {
    struct Call {
      std::string step;
      uint64_t done, total;
    };
    std::vector<Call> calls;
    ModelLoadOptions lo;
    lo.weights = mode;
    lo.prefault = ModelLoadOptions::Prefault::kAlways;
    lo.progress = [&](std::string_view step, uint64_t done, uint64_t total) {
      calls.push_back({std::string(step), done, total});
    };
    auto m = Model::Load(path, lo);
    ASSERT_TRUE(m.ok()) << m.status().message();
    ASSERT_FALSE(calls.empty());
    const std::string want = mode == ModelLoadOptions::Weights::kMap ? "reading the file" : "copying the weights";
    for (size_t i = 0; i < calls.size(); ++i) {
      EXPECT_EQ(calls[i].step, want);
      EXPECT_LE(calls[i].done, calls[i].total);
      if (i) {
        EXPECT_GE(calls[i].done, calls[i - 1].done);
      }
    }
    EXPECT_EQ(calls.back().done, calls.back().total);
    EXPECT_GT(calls.back().total, 0u);
  }
}

// A model whose numbers overflow fails the forward pass, naming the position; nothing samples NaN.
TEST(Session, NonFiniteLogitsAreAnErrorNamingThePosition) {
  test::TempDir dir;
  const std::string path = dir / "m.coda";
  ASSERT_TRUE(convert::ConvertCheckpoint(test::DataDir() + "/golden/v3-fp8/hf", path, {}).ok());
  std::string bytes = test::ReadFile(path);
  {
    auto f = ModelFile::FromBytes({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, "m");
    ASSERT_TRUE(f.ok());
    const TensorRef* norm = f->Find("model.norm.weight");
    ASSERT_NE(norm, nullptr);
    // The final norm's weights become BF16 infinities (bytes of the copy, not of the file).
    const size_t at = static_cast<size_t>(norm->data - reinterpret_cast<const uint8_t*>(bytes.data()));
    for (size_t i = 0; i + 1 < norm->size; i += 2) {
      bytes[at + i] = 0;
      bytes[at + i + 1] = static_cast<char>(0x7f);
      if (norm->dtype == DType::kBF16) bytes[at + i] = static_cast<char>(0x80);
    }
  }
  auto f = ModelFile::FromBytes({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, "m");
  ASSERT_TRUE(f.ok()) << f.status().message();
  auto m = Model::FromFile(std::move(*f));
  ASSERT_TRUE(m.ok()) << m.status().message();
  auto ctx = CpuContext();
  SessionOptions so;
  so.n_ctx = 16;
  auto s = Session::Create(*ctx, *m, so);
  ASSERT_TRUE(s.ok()) << s.status().message();
  const int32_t t[] = {5, 9, 2};
  auto r = (*s)->Forward(t);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("the logits at position 2 are not finite"), std::string::npos) << r.status().message();
  EXPECT_EQ((*s)->n_past(), 0u);  // the failed pass does not count
}

// Byte flips in the metadata that the reader accepts give a model that runs: whatever passes
// validation touches only memory it owns (this runs under ASan in CI).
TEST(Session, AcceptedCorruptionsRun) {
  test::TempDir dir;
  const std::string path = dir / "m.coda";
  convert::RandomOptions ro;
  ro.seed = 11;
  ASSERT_TRUE(convert::ConvertRandom(test::DataDir() + "/configs/fuzz-seed.json", path, ro).ok());
  const std::string bytes = test::ReadFile(path);
  uint64_t fb_size = 0;
  std::memcpy(&fb_size, bytes.data() + 24, 8);
  auto ctx = CpuContext();
  std::mt19937_64 rng(5);
  int ran = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string b = bytes;
    for (int k = 0, flips = 1 + static_cast<int>(rng() % 3); k < flips; ++k)
      b[64 + rng() % fb_size] ^= static_cast<char>(1 + rng() % 255);
    auto f = ModelFile::FromBytes({reinterpret_cast<const uint8_t*>(b.data()), b.size()}, "m");
    if (!f.ok()) continue;
    auto m = Model::FromFile(std::move(*f));
    if (!m.ok()) continue;
    SessionOptions so;
    so.n_ctx = 8;
    auto s = Session::Create(*ctx, *m, so);
    if (!s.ok()) continue;
    const int32_t t[] = {1, 2, 3};
    (void)(*s)->Forward(t, true);
    ++ran;
  }
  EXPECT_GT(ran, 0);  // some flips land in names and values the checks cannot tell apart
}

// Offloading refuses a budget below one layer's active experts, naming the minimum; and a model
// file that shrinks after loading makes the next read an error, not a crash (the other weights
// were read at load, and nothing reads the mapping of the experts).
TEST(Offload, BadBudgetsAndAShrunkFileAreErrors) {
  test::TempDir dir;
  const std::string path = dir / "m.coda";
  ASSERT_TRUE(convert::ConvertCheckpoint(test::DataDir() + "/golden/v3-fp8/hf", path, {}).ok());
  ModelLoadOptions lo;
  lo.offload = ModelLoadOptions::Offload::kOn;
  lo.expert_budget = 1000;
  auto small = Model::Load(path, lo);
  ASSERT_FALSE(small.ok());
  EXPECT_NE(small.status().message().find("cannot hold one layer's active experts: at least"), std::string::npos)
      << small.status().message();

  auto f = ModelFile::Open(path);
  ASSERT_TRUE(f.ok());
  const uint64_t slot = ExpertStore::SlotBytes(*f);
  const uint64_t first_expert = f->data_offset() + f->expert_blocks().front().offset;
  lo.expert_budget = slot * f->config().n_experts_per_tok;
  auto m = Model::Load(path, lo);
  ASSERT_TRUE(m.ok()) << m.status().message();
  ASSERT_EQ((*m)->expert_store()->capacity(), f->config().n_experts_per_tok);
  auto ctx = CpuContext();
  SessionOptions so;
  so.n_ctx = 16;
  auto s = Session::Create(*ctx, *m, so);
  ASSERT_TRUE(s.ok()) << s.status().message();
  const int32_t t[] = {5, 9, 2};
  ASSERT_TRUE((*s)->Forward(t).ok());
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(first_expert + 100)), 0);
  (*s)->Reset();
  Status failed;
  for (int32_t tok = 0; tok < 64 && failed.ok(); ++tok) {  // until a token needs an expert not cached
    const int32_t one[] = {tok};
    auto r = (*s)->Forward(one);
    if (!r.ok()) failed = r.status();
  }
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.message().find("reading expert"), std::string::npos) << failed.message();
  EXPECT_NE(failed.message().find("shrank"), std::string::npos) << failed.message();
}

TEST(Session, RewindGivesTheSameLogitsAsARecompute) {
  auto ctx = CpuContext();
  SessionOptions so;
  so.n_ctx = 32;
  so.kv_dtype = DType::kF32;
  auto s = std::move(Session::Create(*ctx, GoldenModel("v3-fp8"), so).value());
  const int32_t a[] = {0, 5, 9, 17, 33}, b[] = {100, 7};
  ASSERT_TRUE(s->Forward(a).ok());
  ASSERT_TRUE(s->Forward(std::span(b, 1)).ok());
  ASSERT_TRUE(s->Rewind(5).ok());
  auto x = s->Forward(std::span(b + 1, 1));
  ASSERT_TRUE(x.ok());
  const std::vector<float> after_rewind(x->begin(), x->end());
  s->Reset();
  ASSERT_TRUE(s->Forward(a).ok());
  auto y = s->Forward(std::span(b + 1, 1));
  ASSERT_TRUE(y.ok());
  EXPECT_EQ(after_rewind, std::vector<float>(y->begin(), y->end()));
}

// Sessions on one context from several threads give the same logits as one after another.
TEST(Session, SessionsShareAContextAcrossThreads) {
  auto ctx = CpuContext();
  SessionOptions so;
  so.n_ctx = 32;
  auto model = GoldenModel("v3-fp8");
  const std::vector<std::vector<int32_t>> prompts = {{0, 5, 9, 17}, {0, 99, 3}, {0, 7, 7, 7, 7, 1}};
  std::vector<std::vector<float>> sequential, parallel(prompts.size());
  for (const auto& p : prompts) {
    auto s = std::move(Session::Create(*ctx, model, so).value());
    auto r = s->Forward(p);
    ASSERT_TRUE(r.ok());
    sequential.emplace_back(r->begin(), r->end());
  }
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i)
    threads.emplace_back([&, i] {
      auto s = std::move(Session::Create(*ctx, model, so).value());
      for (int rep = 0; rep < 3; ++rep) {
        s->Reset();
        auto r = s->Forward(prompts[i]);
        if (r.ok()) parallel[i].assign(r->begin(), r->end());
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(parallel, sequential);
}

TEST(Session, ContextLongerThanTheModelIsRefused) {
  auto ctx = CpuContext();
  SessionOptions so;
  so.n_ctx = 1u << 30;
  auto s = Session::Create(*ctx, GoldenModel("v2-bf16"), so);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("exceeds the model's maximum"), std::string::npos);
  so.n_ctx = 16;
  so.backends = {"tpu"};
  s = Session::Create(*ctx, GoldenModel("v2-bf16"), so);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("no backend named 'tpu' (available: cpu)"), std::string::npos);
}

// A backend written against the ABI that supports nothing, or fails every op.
struct FakeBackend {
  static coda_status_code Create(const coda_host*, const coda_backend_options*, void** self, char*, size_t) {
    *self = nullptr;
    return CODA_STATUS_OK;
  }
  static void Destroy(void*) {}
  static const char* Describe(void*) { return "fake"; }
  static int None(void*, const coda_op*) { return 0; }
  static int All(void*, const coda_op*) { return 1; }
  static coda_status_code Fail(void*, const coda_op*, char* error, size_t size) {
    std::snprintf(error, size, "device lost");
    return CODA_STATUS_DEVICE_ERROR;
  }
};
const coda_backend_api kNothing = {sizeof(coda_backend_api), CODA_BACKEND_ABI_VERSION, "nothing", "1",
                                   FakeBackend::Create, FakeBackend::Destroy, FakeBackend::Describe,
                                   FakeBackend::None, FakeBackend::Fail};
const coda_backend_api kFailing = {sizeof(coda_backend_api), CODA_BACKEND_ABI_VERSION, "failing", "1",
                                   FakeBackend::Create, FakeBackend::Destroy, FakeBackend::Describe,
                                   FakeBackend::All, FakeBackend::Fail};
const coda_backend_api kFuture = {sizeof(coda_backend_api), CODA_BACKEND_ABI_VERSION + 1, "future", "1",
                                  FakeBackend::Create, FakeBackend::Destroy, FakeBackend::Describe,
                                  FakeBackend::All, FakeBackend::Fail};

TEST(Session, NoBackendForAnOpIsAClearError) {
  ContextOptions o;
  o.backends = {[](uint32_t) { return &kNothing; }};
  auto ctx = Context::Create(o);
  ASSERT_TRUE(ctx.ok());
  SessionOptions so;
  so.n_ctx = 8;
  so.backends = {"nothing"};
  auto s = Session::Create(**ctx, GoldenModel("v2-bf16"), so);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(s.status().message().find("no loaded backend supports Embed 'embed'"), std::string::npos)
      << s.status().message();
}

TEST(Session, ABackendFailingMidGraphIsReported) {
  ContextOptions o;
  o.backends = {[](uint32_t) { return &kFailing; }, coda_cpu_backend_entry};
  auto ctx = Context::Create(o);
  ASSERT_TRUE(ctx.ok());
  SessionOptions so;
  so.n_ctx = 8;
  so.backends = {"failing"};
  auto s = Session::Create(**ctx, GoldenModel("v2-bf16"), so);
  ASSERT_TRUE(s.ok());
  const int32_t t[] = {1, 2};
  auto r = (*s)->Forward(t);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("Embed 'embed' on failing: device lost"), std::string::npos)
      << r.status().message();
  EXPECT_EQ((*s)->n_past(), 0u);
}

TEST(Context, RefusesABackendOfAnotherAbiVersion) {
  ContextOptions o;
  o.backends = {[](uint32_t) { return &kFuture; }};
  auto ctx = Context::Create(o);
  ASSERT_FALSE(ctx.ok());
  EXPECT_NE(ctx.status().message().find("backend 'future': built for backend ABI version 2, this runtime speaks version 1"), std::string::npos)
      << ctx.status().message();
  o.backends = {[](uint32_t) -> const coda_backend_api* { return nullptr; }};
  EXPECT_FALSE(Context::Create(o).ok());
}

TEST(Generate, StopsOnTokensStringsAndLength) {
  auto ctx = CpuContext();
  SessionOptions so;
  so.n_ctx = 64;
  auto s = std::move(Session::Create(*ctx, GoldenModel("v3-fp8"), so).value());
  auto sampler = std::move(Sampler::Create({}).value());
  const int32_t prompt[] = {0, 10, 20, 30};
  GenerateOptions go;
  go.max_new_tokens = 5;
  auto r = Generate(*s, sampler, prompt, go, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ(r->tokens.size(), 5u);
  EXPECT_EQ(r->stop, GenerateResult::Stop::kLength);
  EXPECT_EQ(s->n_past(), 4u + 4u);  // the last sampled token is not fed
  const std::vector<int32_t> greedy = r->tokens;

  s->Reset();
  // Stop at the first token that did not occur before it in the greedy run.
  size_t first_new = 1;
  while (first_new < greedy.size() &&
         std::find(greedy.begin(), greedy.begin() + static_cast<long>(first_new), greedy[first_new]) !=
             greedy.begin() + static_cast<long>(first_new))
    ++first_new;
  ASSERT_LT(first_new, greedy.size());
  go.stop_tokens = {greedy[first_new]};
  r = Generate(*s, sampler, prompt, go, nullptr);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stop, GenerateResult::Stop::kStopToken);
  EXPECT_EQ(r->tokens, std::vector<int32_t>(greedy.begin(), greedy.begin() + static_cast<long>(first_new)));

  s->Reset();
  go.stop_tokens.clear();
  go.token_text = [](int32_t t) { return "<" + std::to_string(t) + ">"; };
  go.stop_strings = {"<" + std::to_string(greedy[0]) + "><" + std::to_string(greedy[1]) + "><"};
  r = Generate(*s, sampler, prompt, go, nullptr);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stop, GenerateResult::Stop::kStopString);
  EXPECT_EQ(r->tokens.size(), 3u);

  s->Reset();
  int calls = 0;
  go.stop_strings.clear();
  r = Generate(*s, sampler, prompt, go, [&](int32_t) { return ++calls < 2; });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stop, GenerateResult::Stop::kCallback);
  EXPECT_EQ(r->tokens.size(), 2u);
}

TEST(Sampler, GreedyAndSeededSampling) {
  const std::vector<float> logits = {0.1f, 2.0f, 1.9f, -1.0f, 0.5f};
  auto greedy = std::move(Sampler::Create({}).value());
  EXPECT_EQ(greedy.Sample(logits), 1);
  SamplerOptions o;
  o.temperature = 1.0f;
  o.seed = 42;
  auto a = std::move(Sampler::Create(o).value());
  auto b = std::move(Sampler::Create(o).value());
  std::vector<int> counts(logits.size());
  for (int i = 0; i < 4000; ++i) {
    const int32_t x = a.Sample(logits);
    EXPECT_EQ(x, b.Sample(logits));
    counts[static_cast<size_t>(x)]++;
  }
  // Frequencies follow softmax(logits) (within a generous margin).
  double z = 0;
  for (float l : logits) z += std::exp(l);
  for (size_t i = 0; i < logits.size(); ++i) EXPECT_NEAR(counts[i] / 4000.0, std::exp(logits[i]) / z, 0.03) << i;
  o.top_k = 1;
  auto k1 = std::move(Sampler::Create(o).value());
  for (int i = 0; i < 50; ++i) EXPECT_EQ(k1.Sample(logits), 1);
  o.top_k = 0;
  o.top_p = 0.3f;
  auto p = std::move(Sampler::Create(o).value());
  for (int i = 0; i < 50; ++i) EXPECT_EQ(p.Sample(logits), 1);
  o.top_p = 1.0f;
  o.min_p = 0.5f;  // keeps tokens with p >= 0.5 p_max: ids 1 and 2
  auto mp = std::move(Sampler::Create(o).value());
  for (int i = 0; i < 200; ++i) {
    const int32_t x = mp.Sample(logits);
    EXPECT_TRUE(x == 1 || x == 2) << x;
  }
  SamplerOptions rp;
  rp.repetition_penalty = 2.0f;
  auto pen = std::move(Sampler::Create(rp).value());
  const int32_t recent[] = {1};
  EXPECT_EQ(pen.Sample(logits, recent), 2);
  rp.top_p = 0.0f;
  EXPECT_FALSE(Sampler::Create(rp).ok());
  // A temperature too small to divide by is greedy (it sampled NaN-driven, seed-independent
  // tokens), for any seed.
  for (uint64_t seed : {1u, 2u, 3u}) {
    SamplerOptions tiny;
    tiny.temperature = 1e-45f;
    tiny.seed = seed;
    auto t = std::move(Sampler::Create(tiny).value());
    for (int i = 0; i < 20; ++i) EXPECT_EQ(t.Sample(logits), 1);
  }
}

TEST(Logits, ToolMatchesTheGoldenDecodeAndRefusesBadTokens) {
  test::TempDir dir;
  const std::string model = dir / "m.coda", out = dir / "out.f32";
  ASSERT_EQ(test::RunCommand(test::Tool("coda-convert") + " -q " + test::DataDir() + "/golden/v2lite-bf16/hf -o " + model)
                .exit_code,
            0);
  const auto ref = nlohmann::json::parse(test::ReadFile(test::DataDir() + "/golden/v2lite-bf16/reference.json"));
  std::string ids;
  for (int t : ref["tokens"]) ids += (ids.empty() ? "" : ",") + std::to_string(t);
  auto r = test::RunCommand(test::Tool("coda-logits") + " -m " + model + " --tokens " + ids + " --decode-from " +
                            std::to_string(ref["decode_from"].get<int>()) + " -o " + out);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const std::string got = test::ReadFile(out), want = test::ReadFile(test::DataDir() + "/golden/v2lite-bf16/logits_decode.f32");
  ASSERT_EQ(got.size(), want.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size() / 4; ++i) {
    float a, b;
    std::memcpy(&a, got.data() + 4 * i, 4);
    std::memcpy(&b, want.data() + 4 * i, 4);
    num = std::max(num, std::fabs(double(a) - b));
    den = std::max(den, std::fabs(double(b)));
  }
  EXPECT_LE(num / den, ref["tolerance"]["logits"].get<double>());
  std::remove(out.c_str());
  r = test::RunCommand(test::Tool("coda-logits") + " -m " + model + " --tokens 1,99999 -o " + out);
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("token id 99999"), std::string::npos) << r.out;
  EXPECT_FALSE(test::ReadFile(out).size());
  r = test::RunCommand(test::Tool("coda-logits") + " -m " + model + " --tokens 1,x -o " + out);
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = test::RunCommand(test::Tool("coda-logits") + " -m " + dir.str() + "/none.coda --tokens 1 -o " + out);
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("none.coda: no such file"), std::string::npos);
}

}  // namespace
}  // namespace coda
