#include "coda/hf_config.h"

#include <gtest/gtest.h>

#include <cmath>

#include "../common/test_util.h"
#include "coda/safetensors.h"

namespace coda {
namespace {

struct Expected {
  const char* file;
  double total_b, active_b;  // billions, as published (2 decimals)
  uint64_t kv_bytes;
};

// The published sizes of the real models; parameter counts are compared to 0.01B (the figures
// are given to two decimals).
TEST(ModelConfig, RealConfigsGiveThePublishedSizes) {
  const Expected cases[] = {
      {"deepseek-v3.json", 671.03, 36.62, 70272},    {"deepseek-v2.json", 235.74, 20.86, 69120},
      {"deepseek-v2-lite.json", 15.71, 2.45, 31104}, {"kimi-k2.json", 1026.41, 31.69, 70272},
      {"moonlight-16b-a3b.json", 15.96, 2.58, 31104},
  };
  for (const Expected& e : cases) {
    auto c = LoadHfConfig(test::DataDir() + "/configs/" + e.file);
    ASSERT_TRUE(c.ok()) << e.file << ": " << c.status().message();
    const ModelStats s = ComputeStats(*c);
    EXPECT_NEAR(s.params_total / 1e9, e.total_b, 0.01) << e.file;
    EXPECT_NEAR(s.params_active / 1e9, e.active_b, 0.01) << e.file;
    EXPECT_EQ(s.kv_bytes_per_token_bf16, e.kv_bytes) << e.file;
  }
}

TEST(ModelConfig, ParsesTheDeepSeekV3Fields) {
  auto c = LoadHfConfig(test::DataDir() + "/configs/deepseek-v3.json");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->arch, Arch::kDeepseekV3);
  EXPECT_EQ(c->n_layers, 61u);
  EXPECT_EQ(c->n_dense_layers, 3u);
  EXPECT_EQ(c->q_lora_rank, 1536u);
  EXPECT_EQ(c->topk_method, TopkMethod::kNoauxTc);
  EXPECT_EQ(c->scoring_func, ScoringFunc::kSigmoid);
  EXPECT_TRUE(c->fp8);
  EXPECT_TRUE(c->rope.yarn);
  EXPECT_EQ(c->rope.original_max_position_embeddings, 4096u);
  EXPECT_EQ(c->n_mtp_layers, 1u);
  // 61 layers x (512 + 64) x 2 bytes.
  EXPECT_EQ(KvBytesPerToken(*c, 2), 70272u);
  auto lite = LoadHfConfig(test::DataDir() + "/configs/deepseek-v2-lite.json");
  ASSERT_TRUE(lite.ok());
  EXPECT_EQ(lite->q_lora_rank, 0u);
  EXPECT_FALSE(lite->fp8);
}

TEST(ModelConfig, ExpectedTensorsMatchTheGoldenCheckpoints) {
  for (const char* name : {"v3-fp8", "v2lite-bf16", "v2-bf16"}) {
    const std::string dir = test::DataDir() + "/golden/" + name + "/hf";
    auto c = LoadHfConfig(dir + "/config.json");
    ASSERT_TRUE(c.ok()) << c.status().message();
    auto ckpt = safetensors::Checkpoint::Open(dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
    size_t scales = 0;
    for (const auto& n : ckpt->tensor_names()) scales += n.ends_with("_scale_inv");
    const auto specs = ExpectedTensors(*c);
    EXPECT_EQ(specs.size() + scales, ckpt->tensor_names().size()) << name;
    for (const TensorSpec& s : specs) {
      auto ref = ckpt->Find(s.name);
      ASSERT_NE(ref.file, nullptr) << name << ": " << s.name;
      EXPECT_EQ(ref.info->shape, s.shape) << s.name;
    }
  }
}

Status ParseWith(const std::string& patch_key, const nlohmann::json& value) {
  auto text = test::ReadFile(test::DataDir() + "/configs/deepseek-v3.json");
  auto j = nlohmann::json::parse(text);
  if (value.is_null() && patch_key.front() == '-') j.erase(patch_key.substr(1));
  else j[patch_key] = value;
  return ParseHfConfig(j.dump(), "config.json").status();
}

TEST(ModelConfig, RejectsWhatItCannotRun) {
  auto expect = [](Status s, const std::string& fragment) {
    ASSERT_FALSE(s.ok()) << fragment;
    EXPECT_NE(s.message().find(fragment), std::string::npos) << s.message();
    EXPECT_EQ(s.message().rfind("config.json: ", 0), 0u) << s.message();
  };
  expect(ParseWith("architectures", {"LlamaForCausalLM"}), "unknown architecture 'LlamaForCausalLM'");
  expect(ParseWith("-architectures", nullptr), "'architectures'");
  expect(ParseWith("hidden_size", "big"), "'hidden_size' is not an integer");
  expect(ParseWith("hidden_size", -5), "'hidden_size' is out of range");
  expect(ParseWith("-vocab_size", nullptr), "'vocab_size' is missing");
  expect(ParseWith("moe_layer_freq", 2), "moe_layer_freq");
  expect(ParseWith("tie_word_embeddings", true), "tie_word_embeddings");
  expect(ParseWith("scoring_func", "relu"), "scoring_func 'relu'");
  expect(ParseWith("num_experts_per_tok", 1000), "num_experts_per_tok");
  expect(ParseWith("n_group", 7), "multiple of n_group");
  expect(ParseWith("qk_rope_head_dim", 63), "even");
  expect(ParseWith("num_hidden_layers", 100000), "num_hidden_layers");
  expect(ParseWith("quantization_config", {{"quant_method", "awq"}}), "quantization 'awq");
  expect(ParseWith("rope_scaling", {{"type", "linear"}, {"factor", 2}}), "rope_scaling type 'linear'");
  expect(ParseHfConfig("{", "config.json").status(), "not valid JSON");
  // Numbers that would make RoPE, YaRN, the softmax scale or routing non-finite.
  const nlohmann::json yarn = {{"type", "yarn"}, {"factor", 40}, {"original_max_position_embeddings", 4096},
                               {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
  expect(ParseWith("rope_theta", 1), "rope_theta = 1 is outside the supported range (1, 1e+12]");
  expect(ParseWith("rope_theta", -10000), "rope_theta");
  expect(ParseWith("routed_scaling_factor", 3e38), "routed_scaling_factor = 3e+38 is outside");
  expect(ParseWith("routed_scaling_factor", 0), "routed_scaling_factor");
  expect(ParseWith("rms_norm_eps", 0), "rms_norm_eps");
  nlohmann::json bad = yarn;
  bad["beta_fast"] = -32;
  expect(ParseWith("rope_scaling", bad), "rope_scaling.beta_fast = -32");
  bad = yarn;
  bad["factor"] = 1e300;
  expect(ParseWith("rope_scaling", bad), "rope_scaling.factor");
  bad = yarn;
  bad["mscale_all_dim"] = 1e300;
  expect(ParseWith("rope_scaling", bad), "rope_scaling.mscale_all_dim");
  EXPECT_TRUE(ParseWith("rope_scaling", yarn).ok());
}

}  // namespace
}  // namespace coda
