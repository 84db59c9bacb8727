// The options programs share: what each accepts and stores, how it refuses the rest, what --help
// says of it, and that the sampler takes every sampling value the options let through.
#include "coda/cli/options.h"

#include <gtest/gtest.h>

#include "coda/sampler.h"

namespace coda::cli {
namespace {

// Parses `args` with one shared option declared by `add`; the error message, or "" when accepted.
template <class Add>
std::string Refusal(Add add, std::vector<std::string> args) {
  CommandLine cl("prog", "prog: test.");
  add(cl);
  const Status s = cl.Parse(args);
  return s.ok() ? "" : s.message();
}

template <class Add>
std::string HelpOf(Add add) {
  CommandLine cl("prog", "prog: test.");
  add(cl);
  return cl.Help();
}

TEST(SharedOptions, Threads) {
  uint32_t n = 0;
  auto add = [&](CommandLine& cl) { AddThreads(cl, &n); };
  for (const char* bad : {"abc", "-1", "99999999999", "1025", "", "4x", "1.5"})
    EXPECT_EQ(Refusal(add, {"--threads", bad}), "--threads: '" + std::string(bad) + "' is not a whole number from 0 to 1024")
        << bad;
  EXPECT_EQ(Refusal(add, {"--threads"}), "--threads needs a value");
  EXPECT_EQ(Refusal(add, {"--threads", "1024"}), "");
  EXPECT_EQ(n, 1024u);
  EXPECT_EQ(Refusal(add, {"--threads", "0"}), "");
  EXPECT_EQ(n, 0u);
  EXPECT_NE(HelpOf(add).find("--threads N  CPU threads, 1 to 1024; 0: one per core (default: 0)"), std::string::npos)
      << HelpOf(add);
}

TEST(SharedOptions, ModelBackendsKvDtypeWeights) {
  std::string model;
  std::vector<std::string> backends = {"cpu"};
  DType kv = DType::kF32;
  auto weights = ModelLoadOptions::Weights::kAuto;
  auto add = [&](CommandLine& cl) {
    AddModel(cl, &model);
    AddBackends(cl, &backends);
    AddKvDtype(cl, &kv);
    AddWeights(cl, &weights);
  };
  const std::string help = HelpOf(add);
  EXPECT_NE(help.find("-m, --model PATH"), std::string::npos) << help;
  EXPECT_NE(help.find("(default: cpu)"), std::string::npos) << help;
  EXPECT_NE(help.find("--kv-dtype bf16|f32  latent KV-cache precision (default: f32)"), std::string::npos) << help;
  EXPECT_NE(help.find("(default: auto)"), std::string::npos) << help;
  EXPECT_EQ(Refusal(add, {"-m", "a.coda", "--backend", "vulkan,,cpu", "--kv-dtype", "bf16", "--weights", "copy"}), "");
  EXPECT_EQ(model, "a.coda");
  EXPECT_EQ(backends, (std::vector<std::string>{"vulkan", "cpu"}));
  EXPECT_EQ(kv, DType::kBF16);
  EXPECT_EQ(weights, ModelLoadOptions::Weights::kCopy);
  EXPECT_EQ(Refusal(add, {"--weights", "map"}), "");
  EXPECT_EQ(weights, ModelLoadOptions::Weights::kMap);
  EXPECT_EQ(Refusal(add, {"--weights", "huge"}).rfind("--weights: 'huge' is", 0), 0u) << Refusal(add, {"--weights", "huge"});
  EXPECT_EQ(Refusal(add, {"--model", "b.coda", "--kv-dtype", "f32"}), "");
  EXPECT_EQ(model, "b.coda");
  EXPECT_EQ(kv, DType::kF32);
  EXPECT_EQ(Refusal(add, {"--kv-dtype", "f16"}), "--kv-dtype: 'f16' is not bf16 or f32");
  EXPECT_EQ(Refusal(add, {"--backend", ","}), "--backend: ',' is not a comma-separated list of names");
  EXPECT_EQ(Refusal(add, {"-m"}), "--model needs a value");
}

TEST(SharedOptions, RamBudgetAndEviction) {
  ModelLoadOptions load;
  auto add = [&](CommandLine& cl) {
    AddRamBudget(cl, &load);
    AddExpertEviction(cl, &load);
  };
  EXPECT_EQ(Refusal(add, {"--ram-budget", "2G"}), "");
  EXPECT_EQ(load.offload, ModelLoadOptions::Offload::kOn);
  EXPECT_EQ(load.expert_budget, uint64_t{2} << 30);
  EXPECT_EQ(Refusal(add, {"--ram-budget", "512m", "--expert-eviction", "lru"}), "");
  EXPECT_EQ(load.expert_budget, uint64_t{512} << 20);
  EXPECT_EQ(load.eviction, EvictionPolicy::kLru);
  EXPECT_EQ(Refusal(add, {"--ram-budget", "123456"}), "");
  EXPECT_EQ(load.expert_budget, 123456u);
  EXPECT_EQ(Refusal(add, {"--ram-budget", "off"}), "");
  EXPECT_EQ(load.offload, ModelLoadOptions::Offload::kOff);
  EXPECT_EQ(Refusal(add, {"--ram-budget", "auto"}), "");
  EXPECT_EQ(load.offload, ModelLoadOptions::Offload::kAuto);
  for (const char* bad : {"abc", "2Q", "-1G", "1.5G", "G", "99999999999T"})
    EXPECT_EQ(Refusal(add, {"--ram-budget", bad}),
              "--ram-budget: '" + std::string(bad) + "' is not a size (bytes, or a number with K, M, G or T)")
        << bad;
  EXPECT_EQ(Refusal(add, {"--ram-budget", "0"}), "--ram-budget: '0' is not a size above 0");
  EXPECT_EQ(Refusal(add, {"--expert-eviction", "fifo"}), "--expert-eviction: 'fifo' is not frequency or lru");
  EXPECT_NE(HelpOf(add).find("or auto, off (default:"), std::string::npos) << HelpOf(add);
}

TEST(SharedOptions, ContextLengthMaxTokensSeed) {
  uint32_t n_ctx = 4096, max_tokens = 2048;
  uint64_t seed = 1;
  auto add = [&](CommandLine& cl) {
    AddContextLength(cl, &n_ctx);
    AddMaxTokens(cl, &max_tokens);
    AddSeed(cl, &seed);
  };
  const std::string help = HelpOf(add);
  EXPECT_NE(help.find("--n-ctx N       context length, 1 to 1048576 (default: 4096)"), std::string::npos) << help;
  EXPECT_NE(help.find("(default: 2048)"), std::string::npos) << help;
  EXPECT_NE(help.find("--seed N        seed of the random numbers (default: 1)"), std::string::npos) << help;
  EXPECT_EQ(Refusal(add, {"--n-ctx", "0"}), "--n-ctx: '0' is not a whole number from 1 to 1048576");
  EXPECT_EQ(Refusal(add, {"--n-ctx", "1048577"}), "--n-ctx: '1048577' is not a whole number from 1 to 1048576");
  EXPECT_EQ(Refusal(add, {"--max-tokens", "-3"}), "--max-tokens: '-3' is not a whole number from 0 to 1048576");
  EXPECT_EQ(Refusal(add, {"--seed", "18446744073709551616"}),
            "--seed: '18446744073709551616' is not a whole number from 0 to 18446744073709551615");
  EXPECT_EQ(Refusal(add, {"--n-ctx", "1", "--max-tokens", "0", "--seed", "18446744073709551615"}), "");
  EXPECT_EQ(n_ctx, 1u);
  EXPECT_EQ(max_tokens, 0u);
  EXPECT_EQ(seed, UINT64_MAX);
}

TEST(SharedOptions, SamplingRefusesWhatTheSamplerCannotUse) {
  SamplerOptions o;
  o.temperature = 0.6f;
  auto add = [&](CommandLine& cl) { AddSampling(cl, &o); };
  const std::string temps = "' is not 0 (greedy) or a number in [0.01, 100]";
  // A positive temperature too small to sample with is refused, not rounded to greedy.
  for (const char* bad : {"nan", "inf", "-0.5", "1e-45", "0.009", "1e-400", "101", "warm"})
    EXPECT_EQ(Refusal(add, {"--temp", bad}), "--temp: '" + std::string(bad) + temps) << bad;
  EXPECT_EQ(Refusal(add, {"--top-p", "2"}), "--top-p: '2' is not a number in (0, 1]");
  EXPECT_EQ(Refusal(add, {"--top-p", "0"}), "--top-p: '0' is not a number in (0, 1]");
  EXPECT_EQ(Refusal(add, {"--min-p", "1"}), "--min-p: '1' is not a number in [0, 1)");
  EXPECT_EQ(Refusal(add, {"--repeat-penalty", "0"}), "--repeat-penalty: '0' is not a number in (0, 100]");
  EXPECT_EQ(Refusal(add, {"--top-k", "-1"}), "--top-k: '-1' is not a whole number from 0 to 1000000");
  const std::string help = HelpOf(add);
  EXPECT_NE(help.find("0 < T < 0.01 refused"), std::string::npos) << help;
  EXPECT_NE(help.find("(default: 0.6)"), std::string::npos) << help;

  // The edges the options accept are values the sampler accepts.
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--temp", "0", "--top-p", "1", "--min-p", "0", "--repeat-penalty", "100", "--top-k", "0"},
        std::vector<std::string>{"--temp", "0.01", "--top-p", "1e-6", "--min-p", "0.999999", "--repeat-penalty", "1e-6",
                                 "--top-k", "1000000"},
        std::vector<std::string>{"--temp", "100"}}) {
    ASSERT_EQ(Refusal(add, args), "") << args[1];
    EXPECT_TRUE(Sampler::Create(o).ok()) << args[1];
  }
  EXPECT_FLOAT_EQ(o.temperature, 100.0f);
  EXPECT_FLOAT_EQ(o.top_p, 1e-6f);
  EXPECT_EQ(o.top_k, 1000000u);
}

}  // namespace
}  // namespace coda::cli
