#include "coda/model_file.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "../common/test_util.h"
#include "coda_generated.h"
#include "convert.h"

namespace coda {
namespace {

// A small random V3-architecture model (FP8 projections), written once per test binary.
const std::string& SmallModel() {
  static const std::string path = [] {
    const std::string p = ::testing::TempDir() + "/coda_small_" + std::to_string(::getpid()) + ".coda";
    convert::RandomOptions o;
    o.seed = 7;
    o.tokenizer_dir = test::DataDir() + "/tokenizer/deepseek-v3";
    Status s = convert::ConvertRandom(test::DataDir() + "/golden/v3-fp8/hf/config.json", p, o);
    EXPECT_TRUE(s.ok()) << s.message();
    return p;
  }();
  return path;
}

TEST(ModelFile, RoundTripsARandomModel) {
  auto f = ModelFile::Open(SmallModel());
  ASSERT_TRUE(f.ok()) << f.status().message();
  const ModelConfig& c = f->config();
  EXPECT_EQ(c.arch, Arch::kDeepseekV3);
  EXPECT_EQ(c.hidden_size, 256u);
  EXPECT_TRUE(c.fp8);
  EXPECT_EQ(f->data_offset() % kCodaDataAlignment, 0u);
  for (const TensorRef& t : f->tensors()) {
    EXPECT_EQ(t.offset % kCodaTensorAlignment, 0u) << t.name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % kCodaTensorAlignment, 0u) << t.name;
  }
  const TensorRef* q = f->Find("model.layers.0.self_attn.q_a_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dtype, DType::kFP8_E4M3);
  ASSERT_GE(q->scale, 0);
  EXPECT_EQ(f->tensors()[static_cast<size_t>(q->scale)].name, "model.layers.0.self_attn.q_a_proj.weight_scale_inv");
  EXPECT_FALSE(f->tokenizer_json().empty());
  EXPECT_FALSE(f->chat_template().empty());
  // MTP weights are kept and marked; the graph does not use them.
  const TensorRef* mtp = f->Find("model.layers.3.eh_proj.weight");
  ASSERT_NE(mtp, nullptr);
  EXPECT_TRUE(mtp->mtp);
  const auto mtp_index = static_cast<int32_t>(mtp - f->tensors().data());
  for (const GraphNode& n : f->graph().nodes)
    for (int32_t w : n.weights) EXPECT_NE(w, mtp_index);
}

TEST(ModelFile, ExpertsOfALayerAreContiguous) {
  auto f = ModelFile::Open(SmallModel());
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(f->expert_blocks().size(), 3u);  // layers 1, 2 and the MTP layer 3
  for (const ExpertBlockRef& b : f->expert_blocks()) {
    EXPECT_EQ(b.n_experts, 16u);
    uint64_t covered = 0;
    for (const TensorRef& t : f->tensors()) {
      if (t.layer != b.layer || t.expert < 0) continue;
      const uint64_t lo = b.offset + b.stride * static_cast<uint64_t>(t.expert);
      EXPECT_GE(t.offset, lo);
      EXPECT_LE(t.offset + t.size, lo + b.stride);
      covered += t.size;
    }
    // gate, up, down and their scales fill each expert's range but for alignment padding.
    EXPECT_GT(covered, b.stride * b.n_experts * 9 / 10);
  }
}

TEST(ModelFile, GraphFollowsTheArchitecture) {
  auto f = ModelFile::Open(SmallModel());
  ASSERT_TRUE(f.ok());
  std::map<std::string, int> ops;
  for (const GraphNode& n : f->graph().nodes) ops[std::string(OpTypeName(n.op))]++;
  EXPECT_EQ(ops["Embed"], 1);
  EXPECT_EQ(ops["MlaAttention"], 3);
  EXPECT_EQ(ops["MoeGate"], 2);
  EXPECT_EQ(ops["MoeExperts"], 2);
  EXPECT_EQ(ops["Mlp"], 3);  // one dense layer + two shared-expert blocks
  EXPECT_EQ(ops["RmsNorm"], 7);
  EXPECT_EQ(ops["Head"], 1);
}

// Any truncation, and any corruption of the preamble or metadata, is an error or (for bytes
// the verifier cannot tell apart) a valid model; never a crash. Run under ASan in CI.
TEST(ModelFile, SurvivesTruncationAndCorruption) {
  const std::string bytes = test::ReadFile(SmallModel());
  auto span = [](const std::string& s) { return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()); };
  ASSERT_TRUE(ModelFile::FromBytes(span(bytes), "m").ok());
  for (size_t cut : {size_t{0}, size_t{10}, size_t{63}, size_t{64}, size_t{200}, size_t{4096}, bytes.size() / 2,
                     bytes.size() - 1}) {
    auto r = ModelFile::FromBytes(span(bytes.substr(0, cut)), "m.coda");
    ASSERT_FALSE(r.ok()) << cut;
    EXPECT_EQ(r.status().message().rfind("m.coda: ", 0), 0u) << r.status().message();
  }
  uint64_t fb_size = 0;
  std::memcpy(&fb_size, bytes.data() + 24, 8);
  std::mt19937_64 rng(42);
  int rejected = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::string b = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) b[64 + rng() % fb_size] ^= static_cast<char>(1 + rng() % 255);
    auto r = ModelFile::FromBytes(span(b), "m");
    rejected += !r.ok();
  }
  EXPECT_GT(rejected, 0);
  std::string bad = bytes;
  bad[0] = 'X';
  EXPECT_NE(ModelFile::FromBytes(span(bad), "m").status().message().find("bad magic"), std::string::npos);
  bad = bytes;
  bad[8] = 9;
  EXPECT_NE(ModelFile::FromBytes(span(bad), "m").status().message().find("preamble version 9"), std::string::npos);
}

// The graph check reads meaning, not only indices: each mutation below keeps every index in range
// and passes the FlatBuffer verifier, and would make a forward pass read memory it does not own
// or compute the wrong thing.
class GraphCheck : public ::testing::Test {
 protected:
  void SetUp() override {
    bytes_ = test::ReadFile(SmallModel());
    auto f = ModelFile::FromBytes(Span(bytes_), "m");
    ASSERT_TRUE(f.ok()) << f.status().message();
    graph_ = f->graph();
  }
  static std::span<const uint8_t> Span(const std::string& s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
  }
  // The first node of an op (after `skip` of them).
  int NodeOf(uint8_t op, int skip = 0) const {
    for (size_t i = 0; i < graph_.nodes.size(); ++i)
      if (graph_.nodes[i].op == op && skip-- == 0) return static_cast<int>(i);
    return -1;
  }
  // Opens a copy of the model after `mutate` edited its FlatBuffer in place; returns the error.
  template <typename F>
  std::string Error(F mutate) {
    std::string b = bytes_;
    fb::Model* m = fb::GetMutableModel(b.data() + kCodaPreambleSize);
    mutate(m);
    auto f = ModelFile::FromBytes(Span(b), "m.coda");
    return f.ok() ? "(accepted)" : f.status().message();
  }
  fb::Node* Node(fb::Model* m, int i) { return m->mutable_graph()->mutable_nodes()->GetMutableObject(static_cast<uint32_t>(i)); }

  std::string bytes_;
  GraphRef graph_;
};

TEST_F(GraphCheck, AttentionNeedsItsOwnCacheLayer) {
  const int mla = NodeOf(CODA_OP_MLA_ATTENTION), mla2 = NodeOf(CODA_OP_MLA_ATTENTION, 1);
  EXPECT_EQ(Error([&](fb::Model* m) { Node(m, mla)->mutate_layer(-1); }),
            "m.coda: graph node #" + std::to_string(mla) + " 'model.layers.0.self_attn': MlaAttention without the layer "
            "whose latent cache it uses");
  EXPECT_NE(Error([&](fb::Model* m) { Node(m, mla2)->mutate_layer(0); }).find("a second MlaAttention for the latent cache of layer 0"),
            std::string::npos);
}

TEST_F(GraphCheck, RequiredWeightsArePresentAndOptionalOnesAbsentWhereTheyMustBe) {
  const int mla = NodeOf(CODA_OP_MLA_ATTENTION);
  EXPECT_NE(Error([&](fb::Model* m) {
              for (uint32_t k = 0; k < 8; ++k) Node(m, mla)->mutable_weights()->Mutate(k, -1);
            }).find("MlaAttention weight 0 (q_a_proj) is missing"),
            std::string::npos);
  // This model has q LoRA: a plain q_proj in slot 3 is refused.
  EXPECT_NE(Error([&](fb::Model* m) { Node(m, mla)->mutable_weights()->Mutate(3, graph_.nodes[mla].weights[0]); })
                .find("weight 3 (q_proj) must be absent (q_lora_rank is 192)"),
            std::string::npos);
  const int head = NodeOf(CODA_OP_HEAD);
  EXPECT_NE(Error([&](fb::Model* m) { Node(m, head)->mutable_weights()->Mutate(0, -1); }).find("Head weight 0 (weight) is missing"),
            std::string::npos);
  // A weight of the wrong shape: the final norm's slot given an attention projection.
  const int norm = static_cast<int>(graph_.nodes.size()) - 2;
  EXPECT_NE(Error([&](fb::Model* m) { Node(m, norm)->mutable_weights()->Mutate(0, graph_.nodes[mla].weights[4]); })
                .find("RmsNorm weight 0 (weight) has 2 dimensions, expected weight[d]"),
            std::string::npos);
}

TEST_F(GraphCheck, ActivationsHaveTheirOpsDtypesAndWidths) {
  const int add = NodeOf(CODA_OP_ADD);
  EXPECT_NE(Error([&](fb::Model* m) { Node(m, add)->mutable_inputs()->Mutate(1, 0); }).find("Add input 1 (b) is i32, expected f32"),
            std::string::npos);
  // The router's ids (I32, [n, k]) fed to an RmsNorm.
  const int gate = NodeOf(CODA_OP_MOE_GATE);
  const int norm = static_cast<int>(graph_.nodes.size()) - 2;
  EXPECT_NE(Error([&](fb::Model* m) { Node(m, norm)->mutable_inputs()->Mutate(0, graph_.nodes[gate].outputs[0]); })
                .find("RmsNorm input 0 (x) is i32"),
            std::string::npos);
  EXPECT_NE(Error([&](fb::Model* m) { Node(m, add)->mutate_op(200); }).find("unknown op 200"), std::string::npos);
  EXPECT_NE(Error([&](fb::Model* m) { Node(m, add)->mutate_op(CODA_OP_MLP); }).find("Mlp takes 1 inputs, 3 weights and 1 outputs, not 2, 0 and 1"),
            std::string::npos);
}

// A few bytes of hyper-parameters may not make the reader size things by them: 1024 layers of
// 4096 experts took 21 s and 2 GB before failing. Numbers that break the arithmetic are refused
// at load as at conversion.
TEST_F(GraphCheck, HyperParametersMustFitTheFileAndStayFinite) {
  EXPECT_NE(Error([&](fb::Model* m) {
              ASSERT_TRUE(m->mutable_hparams()->mutate_n_layers(1024));
              ASSERT_TRUE(m->mutable_hparams()->mutate_n_routed_experts(4096));
            }).find("tensors, but the file holds"),
            std::string::npos);
  EXPECT_NE(Error([&](fb::Model* m) { ASSERT_TRUE(m->mutable_hparams()->mutate_routed_scaling_factor(3e38f)); })
                .find("routed_scaling_factor = 3e+38 is outside the supported range"),
            std::string::npos);
}

TEST_F(GraphCheck, LogitsAreTheHeadsOutput) {
  const uint32_t hidden = graph_.nodes[graph_.nodes.size() - 2].outputs[0];  // the final norm
  EXPECT_EQ(Error([&](fb::Model* m) { m->mutable_graph()->mutate_logits(hidden); }),
            "m.coda: graph: the logits value is not F32 [n, vocab_size = 1000]");
}

TEST(ModelFile, OpenNamesMissingFiles) {
  auto r = ModelFile::Open("/nonexistent/model.coda");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "/nonexistent/model.coda: no such file");
}

}  // namespace
}  // namespace coda
