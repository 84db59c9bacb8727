// The op and dtype tables of the ABI (coda_ops.h, coda_dtypes.h) and the C++ check of an op
// against its signature (coda_ops.hpp): what the host, the planner and the in-tree backends rely on.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "coda/dtype.h"
#include "coda_ops.hpp"

namespace coda {
namespace {

using ops::kOps;

// Numbers are dense and in table order, names round-trip, and the signatures parse into the slot
// counts the ops have (a few checked by name: adding an op changes nothing here).
TEST(OpTable, NumbersNamesAndSlots) {
  ASSERT_EQ(std::size(kOps), static_cast<size_t>(CODA_OP_COUNT));
  for (size_t i = 0; i < std::size(kOps); ++i) {
    EXPECT_EQ(kOps[i].type, i);
    EXPECT_STREQ(coda_op_name(static_cast<uint32_t>(i)), std::string(kOps[i].name).c_str());
  }
  EXPECT_EQ(coda_op_name(CODA_OP_COUNT), nullptr);
  EXPECT_EQ(ops::Find(CODA_OP_COUNT), nullptr);
  struct Want {
    uint32_t op;
    int inputs, weights, outputs;
  };
  // MoeExperts: one group of three slots, repeated per routed expert.
  for (const Want& w : {Want{CODA_OP_EMBED, 1, 1, 1}, Want{CODA_OP_MLA_ATTENTION, 1, 8, 1}, Want{CODA_OP_MOE_GATE, 1, 2, 2},
                        Want{CODA_OP_MOE_EXPERTS, 3, 3, 1}, Want{CODA_OP_ADD, 2, 0, 1}}) {
    const ops::Signature& s = ops::Find(w.op)->signature;
    EXPECT_EQ(s.inputs.size, w.inputs) << w.op;
    EXPECT_EQ(s.weights.size, w.weights) << w.op;
    EXPECT_EQ(s.outputs.size, w.outputs) << w.op;
  }
  EXPECT_EQ(ops::kHparams[kOps[CODA_OP_MOE_EXPERTS].signature.repeat].name, "n_routed_experts");
  EXPECT_EQ(kOps[CODA_OP_MLA_ATTENTION].signature.weights.slots[3].presence, ops::Presence::kIfZero);
  // Attention alone touches the cache and mixes positions.
  EXPECT_EQ(kOps[CODA_OP_MLA_ATTENTION].flags & (CODA_OP_USES_KV | CODA_OP_ROWWISE), CODA_OP_USES_KV);
  EXPECT_EQ(kOps[CODA_OP_MOE_EXPERTS].flags & (CODA_OP_USES_KV | CODA_OP_ROWWISE), CODA_OP_ROWWISE);
}

TEST(DtypeTable, SizesNamesAndTheCppEnum) {
  EXPECT_EQ(coda_dtype_size(CODA_DTYPE_F32), 4u);
  EXPECT_EQ(coda_dtype_size(CODA_DTYPE_BF16), 2u);
  EXPECT_EQ(coda_dtype_size(CODA_DTYPE_F16), 2u);  // the helper this replaced said 1 in one copy
  EXPECT_EQ(coda_dtype_size(CODA_DTYPE_FP8_E4M3), 1u);
  EXPECT_EQ(coda_dtype_size(CODA_DTYPE_I64), 8u);  // and 1 in another
  EXPECT_EQ(coda_dtype_size(8), 0u);
  EXPECT_EQ(coda_dtype_name(8), nullptr);
  EXPECT_EQ(DTypeSize(DType::kI32), 4u);
  EXPECT_EQ(DTypeName(DType::kFP8_E4M3), "fp8_e4m3");
  EXPECT_EQ(static_cast<int>(DType::kI8), CODA_DTYPE_I8);
}

TEST(DtypeTable, E4M3DecodesEveryCodeExactly) {
  for (int v = 0; v < 256; ++v) {
    const auto code = static_cast<uint8_t>(v);
    const float f = coda_e4m3_to_f32(code);
    const int exp = (v >> 3) & 15, man = v & 7;
    if (exp == 15 && man == 7) {
      EXPECT_TRUE(std::isnan(f)) << v;
      continue;
    }
    const double mag = exp == 0 ? man / 8.0 * std::ldexp(1.0, -6) : (1 + man / 8.0) * std::ldexp(1.0, exp - 7);
    EXPECT_EQ(static_cast<double>(f), (v & 0x80) ? -mag : mag) << v;
    // The encoder is the inverse on every finite code (negative zero keeps its sign).
    EXPECT_EQ(F32ToFp8E4M3(f), code) << v;
  }
  EXPECT_EQ(coda_e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(coda_bf16_to_f32(coda_f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);  // a tie rounds to even
  EXPECT_TRUE(std::isnan(coda_bf16_to_f32(coda_f32_to_bf16(NAN))));
}

// A tensor with a shape (data: a non-null marker, enough for the check).
coda_tensor T(uint32_t dtype, std::vector<uint64_t> shape) {
  static float marker;
  coda_tensor t{};
  t.dtype = dtype;
  t.ndim = static_cast<uint32_t>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) t.shape[i] = shape[i];
  t.data = &marker;
  return t;
}
coda_tensor Activation(uint32_t dtype, std::vector<uint64_t> shape) {
  coda_tensor t = T(dtype, std::move(shape));
  t.data = nullptr;  // a probe: no memory yet
  return t;
}

struct Attention {
  coda_hparams hp{};
  std::vector<coda_tensor> in, w, out;
  Attention() {
    hp.struct_size = sizeof hp;
    hp.n_heads = 2;
    hp.q_lora_rank = 0;
    hp.kv_lora_rank = 32;
    hp.qk_nope_head_dim = 16;
    hp.qk_rope_head_dim = 8;
    hp.v_head_dim = 16;
    in = {Activation(CODA_DTYPE_F32, {3, 64})};
    w = {coda_tensor{}, coda_tensor{}, coda_tensor{}, T(CODA_DTYPE_BF16, {48, 64}), T(CODA_DTYPE_BF16, {40, 64}),
         T(CODA_DTYPE_F32, {32}), T(CODA_DTYPE_BF16, {64, 32}), T(CODA_DTYPE_BF16, {64, 32})};
    out = {Activation(CODA_DTYPE_F32, {3, 64})};
  }
  std::string Check(bool infer = false) {
    return ops::Match({CODA_OP_MLA_ATTENTION, 3, &hp, in.data(), static_cast<uint32_t>(in.size()), w.data(),
                       static_cast<uint32_t>(w.size()), out.data(), static_cast<uint32_t>(out.size())},
                      infer);
  }
};

TEST(OpSignature, AcceptsAConsistentOpAndInfersItsOutputs) {
  Attention a;
  EXPECT_EQ(a.Check(), "");
  a.out[0] = coda_tensor{};
  EXPECT_EQ(a.Check(/*infer=*/true), "");
  EXPECT_EQ(a.out[0].dtype, static_cast<uint32_t>(CODA_DTYPE_F32));
  EXPECT_EQ(a.out[0].ndim, 2u);
  EXPECT_EQ(a.out[0].shape[0], 3u);
  EXPECT_EQ(a.out[0].shape[1], 64u);
}

TEST(OpSignature, NamesWhatIsWrong) {
  {
    Attention a;
    a.w[6] = T(CODA_DTYPE_BF16, {64, 33});
    EXPECT_EQ(a.Check(),
              "MlaAttention weight 6 (kv_b_proj) has shape [64,33], expected "
              "kv_b_proj[n_heads*(qk_nope_head_dim+v_head_dim),kv_lora_rank] (dimension 1 = 32)");
  }
  {
    Attention a;  // q LoRA off: the q LoRA slots must be absent, q_proj present
    a.w[0] = T(CODA_DTYPE_BF16, {16, 64});
    EXPECT_EQ(a.Check(), "MlaAttention weight 0 (q_a_proj) must be absent (q_lora_rank is 0)");
  }
  {
    Attention a;
    a.w[3] = coda_tensor{};
    EXPECT_EQ(a.Check(), "MlaAttention weight 3 (q_proj) is missing");
  }
  {
    Attention a;
    a.w.pop_back();
    EXPECT_NE(a.Check().find("takes 1 inputs, 8 weights and 1 outputs, not 1, 7 and 1"), std::string::npos);
  }
  {
    Attention a;
    a.in[0] = Activation(CODA_DTYPE_I32, {3, 64});
    EXPECT_EQ(a.Check(), "MlaAttention input 0 (x) is i32, expected f32");
  }
  {
    Attention a;
    a.in[0] = Activation(CODA_DTYPE_F32, {3, 65});  // binds d = 65: the weights then disagree
    EXPECT_NE(a.Check().find("weight 3 (q_proj) has shape [48,64]"), std::string::npos);
  }
  {
    Attention a;
    a.out[0] = Activation(CODA_DTYPE_F32, {2, 64});  // rows are the op's n_tokens
    EXPECT_NE(a.Check().find("output 0 (y) has shape [2,64]"), std::string::npos);
  }
  {
    Attention a;
    a.w[4].dtype = CODA_DTYPE_I32;
    EXPECT_EQ(a.Check(), "MlaAttention weight 4 (kv_a_proj_with_mqa) is i32, not a floating-point weight type");
  }
}

TEST(OpSignature, Fp8WeightsNeedBlockScalesOfTheirShape) {
  coda_hparams hp{};
  hp.struct_size = sizeof hp;
  coda_tensor x = Activation(CODA_DTYPE_F32, {1, 300});
  coda_tensor w = T(CODA_DTYPE_FP8_E4M3, {130, 300});
  coda_tensor y = Activation(CODA_DTYPE_F32, {1, 130});
  auto check = [&] { return ops::Match({CODA_OP_LINEAR, 1, &hp, &x, 1, &w, 1, &y, 1}, false); };
  EXPECT_NE(check().find("without F32 block scales of shape [ceil(rows/128), ceil(cols/128)]"), std::string::npos);
  coda_tensor s = T(CODA_DTYPE_F32, {2, 3});
  w.scale = &s;
  EXPECT_EQ(check(), "");
  s.shape[1] = 2;
  EXPECT_NE(check(), "");
  s.shape[1] = 3;
  w.block = 64;  // [3, 5] blocks of 64
  EXPECT_NE(check(), "");
  s.shape[0] = 3;
  s.shape[1] = 5;
  EXPECT_EQ(check(), "");
  coda_tensor bf = T(CODA_DTYPE_BF16, {130, 300});
  bf.scale = &s;
  EXPECT_EQ(ops::Match({CODA_OP_LINEAR, 1, &hp, &x, 1, &bf, 1, &y, 1}, false), "Linear weight 0 (weight) has a scale but is not FP8");
}

TEST(OpSignature, RepeatedExpertGroupsAndOverflow) {
  coda_hparams hp{};
  hp.struct_size = sizeof hp;
  hp.n_routed_experts = 3;
  hp.n_experts_per_tok = 2;
  std::vector<coda_tensor> in = {Activation(CODA_DTYPE_F32, {4, 16}), Activation(CODA_DTYPE_I32, {4, 2}),
                                 Activation(CODA_DTYPE_F32, {4, 2})};
  std::vector<coda_tensor> w;
  for (int e = 0; e < 3; ++e)
    for (auto shape : {std::vector<uint64_t>{8, 16}, {8, 16}, {16, 8}}) w.push_back(T(CODA_DTYPE_BF16, shape));
  coda_tensor y{};
  auto check = [&] {
    return ops::Match({CODA_OP_MOE_EXPERTS, 4, &hp, in.data(), 3, w.data(), static_cast<uint32_t>(w.size()), &y, 1}, true);
  };
  EXPECT_EQ(check(), "");
  EXPECT_EQ(y.shape[0], 4u);
  EXPECT_EQ(y.shape[1], 16u);
  w[7] = T(CODA_DTYPE_BF16, {9, 16});  // expert 2's up: its width must equal expert 0's
  EXPECT_EQ(check(), "MoeExperts weight 7 (up) has shape [9,16], expected up[f,d] (dimension 0 = 8)");
  // Dimensions are computed with overflow checks.
  hp.n_heads = 0xffffffffu;
  hp.qk_nope_head_dim = 0xffffffffu;
  hp.qk_rope_head_dim = 0xffffffffu;
  coda_tensor x = Activation(CODA_DTYPE_F32, {1, 4});
  std::vector<coda_tensor> aw(8);
  aw[3] = T(CODA_DTYPE_BF16, {5, 4});
  coda_tensor out{};
  EXPECT_NE(ops::Match({CODA_OP_MLA_ATTENTION, 1, &hp, &x, 1, aw.data(), 8, &out, 1}, true).find("q_proj"), std::string::npos);
}

}  // namespace
}  // namespace coda
