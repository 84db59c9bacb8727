// coda-convert and coda-inspect end to end: the golden checkpoints, a checkpoint written here,
// bit-exactness, and every kind of bad input through the real binaries.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "../common/test_util.h"
#include "coda/hf_config.h"
#include "coda/model_file.h"
#include "coda/safetensors.h"
#include "convert.h"

namespace coda {
namespace {

namespace fs = std::filesystem;
using test::RunCommand;
using test::TempDir;
using test::Tool;

const char* kCases[] = {"v3-fp8", "v2lite-bf16", "v2-bf16"};

std::string GoldenHf(const std::string& c) { return test::DataDir() + "/golden/" + c + "/hf"; }

// Converted files equal the checkpoint tensor for tensor, byte for byte (FP8 codes and scales
// included), and coda-inspect reports what config.json says.
TEST(Convert, GoldenCheckpointsConvertBitExact) {
  TempDir dir;
  for (const char* c : kCases) {
    const std::string out = dir / (std::string(c) + ".coda");
    auto r = RunCommand(Tool("coda-convert") + " " + GoldenHf(c) + " -o " + out);
    ASSERT_EQ(r.exit_code, 0) << r.out;
    auto f = ModelFile::Open(out);
    ASSERT_TRUE(f.ok()) << f.status().message();
    auto ckpt = safetensors::Checkpoint::Open(GoldenHf(c));
    ASSERT_TRUE(ckpt.ok());
    EXPECT_EQ(f->tensors().size(), ckpt->tensor_names().size()) << c;
    size_t fp8 = 0;
    for (const std::string& name : ckpt->tensor_names()) {
      const auto ref = ckpt->Find(name);
      const TensorRef* t = f->Find(name);
      ASSERT_NE(t, nullptr) << name;
      EXPECT_EQ(t->dtype, ref.info->dtype) << name;
      EXPECT_EQ(t->shape, ref.info->shape) << name;
      const auto src = ref.file->Data(*ref.info);
      ASSERT_EQ(t->size, src.size());
      EXPECT_EQ(std::memcmp(t->data, src.data(), src.size()), 0) << name << " differs";
      fp8 += t->dtype == DType::kFP8_E4M3;
    }
    if (std::string(c) == "v3-fp8") {
      EXPECT_GT(fp8, 100u);
    }

    auto cfg = LoadHfConfig(GoldenHf(c) + "/config.json");
    ASSERT_TRUE(cfg.ok());
    const ModelStats st = ComputeStats(*cfg);
    auto ins = RunCommand(Tool("coda-inspect") + " --json " + out);
    ASSERT_EQ(ins.exit_code, 0) << ins.out;
    auto j = nlohmann::json::parse(ins.out);
    EXPECT_EQ(j["arch"], cfg->architecture);
    EXPECT_EQ(j["n_layers"], cfg->n_layers);
    EXPECT_EQ(j["vocab_size"], cfg->vocab_size);
    EXPECT_EQ(j["params_total"], st.params_total);
    EXPECT_EQ(j["params_active"], st.params_active);
    EXPECT_EQ(j["kv_bytes_per_token"], KvBytesPerToken(*cfg, 2));
    EXPECT_EQ(j["n_mtp_layers"], cfg->n_mtp_layers);
    // The same report from the checkpoint directory itself.
    auto ins_hf = RunCommand(Tool("coda-inspect") + " --json " + GoldenHf(c));
    ASSERT_EQ(ins_hf.exit_code, 0) << ins_hf.out;
    auto jh = nlohmann::json::parse(ins_hf.out);
    EXPECT_EQ(jh["params_total"], j["params_total"]);
    EXPECT_EQ(jh["bytes_by_dtype"], j["bytes_by_dtype"]);
  }
}

TEST(Convert, UpConvertsFp8ByDequantizing) {
  TempDir dir;
  convert::Options o;
  o.dtype = DType::kF32;
  ASSERT_TRUE(convert::ConvertCheckpoint(GoldenHf("v3-fp8"), dir / "f32.coda", o).ok());
  auto f = ModelFile::Open(dir / "f32.coda");
  ASSERT_TRUE(f.ok());
  auto ckpt = safetensors::Checkpoint::Open(GoldenHf("v3-fp8"));
  ASSERT_TRUE(ckpt.ok());
  const std::string name = "model.layers.1.self_attn.kv_b_proj.weight";
  const TensorRef* t = f->Find(name);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kF32);
  EXPECT_EQ(f->Find(name + "_scale_inv"), nullptr);
  const auto q = ckpt->Find(name), s = ckpt->Find(name + "_scale_inv");
  const uint64_t rows = t->shape[0], cols = t->shape[1];
  const auto qd = q.file->Data(*q.info);
  const auto sd = s.file->Data(*s.info);
  for (uint64_t r = 0; r < rows; r += 7) {
    for (uint64_t c = 0; c < cols; c += 5) {
      float scale, got;
      std::memcpy(&scale, sd.data() + 4 * ((r / 128) * ((cols + 127) / 128) + c / 128), 4);
      std::memcpy(&got, t->data + 4 * (r * cols + c), 4);
      EXPECT_EQ(got, Fp8E4M3ToF32(qd[r * cols + c]) * scale) << r << "," << c;
    }
  }
  // BF16 weights up-convert exactly.
  const TensorRef* e = f->Find("model.embed_tokens.weight");
  ASSERT_EQ(e->dtype, DType::kF32);
  const auto eb = ckpt->Find("model.embed_tokens.weight");
  uint16_t b;
  float v;
  std::memcpy(&b, eb.file->Data(*eb.info).data() + 2 * 123, 2);
  std::memcpy(&v, e->data + 4 * 123, 4);
  EXPECT_EQ(v, Bf16ToF32(b));
}

// A checkpoint this test writes itself: a tiny V2-Lite-shaped model (plain q_proj, softmax,
// greedy routing), sharded into two files with an index.
TEST(Convert, ConvertsACheckpointWrittenHere) {
  TempDir dir;
  const std::string hf = dir / "hf";
  fs::create_directories(hf);
  nlohmann::json cfg = {
      {"architectures", {"DeepseekV2ForCausalLM"}}, {"model_type", "deepseek_v2"}, {"vocab_size", 64},
      {"hidden_size", 32}, {"intermediate_size", 48}, {"moe_intermediate_size", 16}, {"num_hidden_layers", 2},
      {"first_k_dense_replace", 1}, {"num_attention_heads", 2}, {"q_lora_rank", nullptr}, {"kv_lora_rank", 16},
      {"qk_nope_head_dim", 8}, {"qk_rope_head_dim", 4}, {"v_head_dim", 8}, {"n_routed_experts", 4},
      {"n_shared_experts", 1}, {"num_experts_per_tok", 2}, {"topk_method", "greedy"}, {"scoring_func", "softmax"},
      {"rms_norm_eps", 1e-6}, {"max_position_embeddings", 128}};
  test::WriteFile(hf + "/config.json", cfg.dump());
  auto config = ParseHfConfig(cfg.dump(), "config.json");
  ASSERT_TRUE(config.ok()) << config.status().message();
  std::map<std::string, test::StTensor> shard[2];
  nlohmann::json weight_map;
  int i = 0;
  for (const TensorSpec& s : ExpectedTensors(*config)) {
    uint64_t n = 1;
    for (auto d : s.shape) n *= d;
    std::string bytes(n * 2, '\0');
    for (size_t k = 0; k < bytes.size(); ++k) bytes[k] = static_cast<char>((k * 31 + static_cast<size_t>(i)) & 0x3f);
    const int which = i++ % 2;
    shard[which][s.name] = {"BF16", s.shape, bytes};
    weight_map[s.name] = "model-0000" + std::to_string(which + 1) + "-of-00002.safetensors";
  }
  test::WriteFile(hf + "/model-00001-of-00002.safetensors", test::MakeSafetensors(shard[0]));
  test::WriteFile(hf + "/model-00002-of-00002.safetensors", test::MakeSafetensors(shard[1]));
  test::WriteFile(hf + "/model.safetensors.index.json", nlohmann::json{{"weight_map", weight_map}}.dump());
  auto r = RunCommand(Tool("coda-convert") + " " + hf + " -o " + (dir / "tiny.coda"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto f = ModelFile::Open(dir / "tiny.coda");
  ASSERT_TRUE(f.ok()) << f.status().message();
  for (int w = 0; w < 2; ++w)
    for (const auto& [name, t] : shard[w]) {
      const TensorRef* ref = f->Find(name);
      ASSERT_NE(ref, nullptr);
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(ref->data), ref->size), t.bytes) << name;
    }
  EXPECT_EQ(f->config().q_lora_rank, 0u);
}

// Copies a golden checkpoint into a writable directory for mutilation.
std::string CopyCase(const TempDir& dir, const std::string& c) {
  const std::string dst = dir / ("hf-" + c);
  fs::copy(GoldenHf(c), dst, fs::copy_options::recursive);
  for (auto& e : fs::directory_iterator(dst)) fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
  return dst;
}

// Runs coda-convert expecting failure: non-zero exit, the message fragments, no file left.
void ExpectConvertFails(const TempDir& dir, const std::string& args, const std::vector<std::string>& fragments) {
  const auto before = dir.Files();
  auto r = RunCommand(Tool("coda-convert") + " " + args);
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_LT(r.exit_code, 128) << "crashed: " << r.out;
  for (const auto& fr : fragments) EXPECT_NE(r.out.find(fr), std::string::npos) << "missing '" << fr << "' in: " << r.out;
  EXPECT_EQ(dir.Files(), before) << "a failed conversion left a file behind";
}

TEST(Convert, BadInputsGiveOneClearErrorAndNoOutput) {
  TempDir dir;
  const std::string out = dir / "out.coda";
  // Truncated safetensors.
  {
    const std::string hf = CopyCase(dir, "v2lite-bf16");
    fs::resize_file(hf + "/model.safetensors", fs::file_size(hf + "/model.safetensors") - 1000);
    ExpectConvertFails(dir, hf + " -o " + out, {"model.safetensors", "truncated"});
    fs::remove_all(hf);
  }
  // Header length beyond the file.
  {
    const std::string hf = CopyCase(dir, "v2lite-bf16");
    test::WriteFile(hf + "/model.safetensors", std::string("\xff\xff\x00\x00\x00\x00\x00\x00{}", 10));
    ExpectConvertFails(dir, hf + " -o " + out, {"model.safetensors", "past the end of the file"});
    fs::remove_all(hf);
  }
  // Missing shard.
  {
    const std::string hf = CopyCase(dir, "v3-fp8");
    fs::remove(hf + "/model-00002-of-00002.safetensors");
    ExpectConvertFails(dir, hf + " -o " + out, {"model-00002-of-00002.safetensors", "missing shard"});
    fs::remove_all(hf);
  }
  // Unknown architecture.
  {
    const std::string hf = CopyCase(dir, "v2-bf16");
    auto j = nlohmann::json::parse(test::ReadFile(hf + "/config.json"));
    j["architectures"] = {"MixtralForCausalLM"};
    test::WriteFile(hf + "/config.json", j.dump());
    ExpectConvertFails(dir, hf + " -o " + out, {"config.json", "unknown architecture 'MixtralForCausalLM'"});
    fs::remove_all(hf);
  }
  // Wrong dtype where a float is needed, and a shape that disagrees with config.json.
  {
    const std::string hf = dir / "hf-small";
    fs::create_directories(hf);
    fs::copy_file(GoldenHf("v2lite-bf16") + "/config.json", hf + "/config.json");
    test::WriteFile(hf + "/model.safetensors", test::MakeSafetensors({{"model.embed_tokens.weight", {"I32", {1}, "abcd"}}}));
    ExpectConvertFails(dir, hf + " -o " + out, {"model.embed_tokens.weight", "shape"});
    fs::remove_all(hf);
  }
  // --dtype fp8 of a weight holding an infinity: no scale represents it.
  {
    const std::string hf = CopyCase(dir, "v2lite-bf16");
    std::string st = test::ReadFile(hf + "/model.safetensors");
    uint64_t header = 0;
    std::memcpy(&header, st.data(), 8);
    const auto j = nlohmann::json::parse(st.substr(8, header));
    const std::string name = "model.layers.0.self_attn.q_proj.weight";
    const size_t at = 8 + header + j[name]["data_offsets"][0].get<size_t>() + 2 * 37;  // row 0, column 37
    st[at] = static_cast<char>(0x80);
    st[at + 1] = static_cast<char>(0x7f);  // BF16 +inf
    test::WriteFile(hf + "/model.safetensors", st);
    ExpectConvertFails(dir, hf + " -o " + out + " --dtype fp8", {name, "inf at row 0, column 37 cannot be quantized"});
    fs::remove_all(hf);
  }
  // Missing output directory, and a missing input.
  ExpectConvertFails(dir, GoldenHf("v2-bf16") + " -o " + dir.str() + "/no/such/dir/out.coda", {"does not exist"});
  ExpectConvertFails(dir, dir.str() + "/nothing -o " + out, {"nothing"});
  // Usage errors.
  ExpectConvertFails(dir, GoldenHf("v2-bf16"), {"no output file"});
  ExpectConvertFails(dir, GoldenHf("v2-bf16") + " -o " + out + " --dtype int4", {"--dtype: 'int4' is not fp8, bf16 or f32"});
}

TEST(Inspect, RejectsCorruptModelFiles) {
  TempDir dir;
  const std::string good = dir / "good.coda";
  ASSERT_EQ(RunCommand(Tool("coda-convert") + " -q " + GoldenHf("v2lite-bf16") + " -o " + good).exit_code, 0);
  const std::string bytes = test::ReadFile(good);
  test::WriteFile(dir / "truncated.coda", bytes.substr(0, bytes.size() - 4096));
  auto r = RunCommand(Tool("coda-inspect") + " " + (dir / "truncated.coda"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("truncated.coda: data section"), std::string::npos) << r.out;
  std::string flipped = bytes;
  for (size_t k = 100; k < 600; k += 3) flipped[k] = static_cast<char>(flipped[k] ^ 0x5a);
  test::WriteFile(dir / "corrupt.coda", flipped);
  r = RunCommand(Tool("coda-inspect") + " " + (dir / "corrupt.coda"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("corrupt.coda: "), std::string::npos) << r.out;
  r = RunCommand(Tool("coda-inspect") + " " + (dir / "missing.coda"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("missing.coda: no such file"), std::string::npos) << r.out;
  r = RunCommand(Tool("coda-inspect") + " --bogus");
  EXPECT_EQ(r.exit_code, 2);
}

// A model converted honestly from a directory whose name is not UTF-8 carries that name; the
// JSON report replaces the bytes instead of aborting (it died with SIGABRT).
TEST(Inspect, JsonOfANonUtf8SourceName) {
  TempDir dir;
  const std::string odd = dir / "ckpt-\xff\xfe";
  std::filesystem::copy(GoldenHf("v2lite-bf16"), odd);
  const std::string out = dir / "m.coda";
  ASSERT_EQ(RunCommand(Tool("coda-convert") + " -q '" + odd + "' -o " + out).exit_code, 0);
  auto r = RunCommand(Tool("coda-inspect") + " --json " + out);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(nlohmann::json::accept(r.out)) << r.out.substr(0, 400);
  EXPECT_NE(r.out.find("ckpt-\xef\xbf\xbd"), std::string::npos) << r.out.substr(0, 400);  // U+FFFD
}

TEST(Inspect, RealConfigsReportThePublishedFigures) {
  auto r = RunCommand(Tool("coda-inspect") + " --json " + test::DataDir() + "/configs/deepseek-v3.json");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["arch"], "DeepseekV3ForCausalLM");
  EXPECT_EQ(j["kv_bytes_per_token"], 70272);
  EXPECT_EQ(j["n_layers"], 61);
  EXPECT_EQ(j["vocab_size"], 129280);
  EXPECT_NEAR(j["params_total"].get<double>() / 1e9, 671.03, 0.01);
  EXPECT_NEAR(j["params_active"].get<double>() / 1e9, 36.62, 0.01);
  auto text = RunCommand(Tool("coda-inspect") + " " + test::DataDir() + "/configs/deepseek-v3.json");
  EXPECT_NE(text.out.find("70,272 bytes per token"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("671.03B total"), std::string::npos) << text.out;
}

TEST(Convert, RandomModelsCarryTheTokenizer) {
  TempDir dir;
  auto r = RunCommand(Tool("coda-convert") + " --random " + test::DataDir() + "/golden/v2-bf16/hf/config.json --tokenizer " +
               test::DataDir() + "/tokenizer/deepseek-v3 --seed 3 -o " + (dir / "r.coda"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto j = nlohmann::json::parse(RunCommand(Tool("coda-inspect") + " --json " + (dir / "r.coda")).out);
  EXPECT_TRUE(j["has_tokenizer"].get<bool>());
  EXPECT_TRUE(j["has_chat_template"].get<bool>());
  // Deterministic: the same seed gives the same file.
  ASSERT_EQ(RunCommand(Tool("coda-convert") + " -q --random " + test::DataDir() + "/golden/v2-bf16/hf/config.json --tokenizer " +
                test::DataDir() + "/tokenizer/deepseek-v3 --seed 3 -o " + (dir / "r2.coda")).exit_code, 0);
  EXPECT_EQ(test::ReadFile(dir / "r.coda"), test::ReadFile(dir / "r2.coda"));
}

}  // namespace
}  // namespace coda
