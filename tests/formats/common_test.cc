#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>

#include "coda/checked.h"
#include "coda/dtype.h"
#include "coda/file.h"
#include "coda/status.h"

namespace coda {
namespace {

TEST(Status, CarriesCodeAndContext) {
  Status s = Corrupt("bad header").WithContext("model.safetensors");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_EQ(s.message(), "model.safetensors: bad header");
  EXPECT_TRUE(Status::Ok().WithContext("x").ok());
}

Result<int> Half(int v) {
  if (v % 2) return InvalidArgument("odd");
  return v / 2;
}
Result<int> Quarter(int v) {
  CODA_ASSIGN_OR_RETURN(int h, Half(v));
  return Half(h);
}

TEST(Result, PropagatesErrors) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_FALSE(Quarter(6).ok());
  EXPECT_EQ(Quarter(6).status().message(), "odd");
}

TEST(Checked, DetectsOverflow) {
  EXPECT_FALSE(CheckedAdd(UINT64_MAX, 1));
  EXPECT_FALSE(CheckedMul(1ull << 33, 1ull << 33));
  EXPECT_EQ(*CheckedMul(3, 5), 15u);
  const uint64_t big[] = {1ull << 32, 1ull << 32};
  EXPECT_FALSE(CheckedElementCount(big));
  const uint64_t ok[] = {3, 4, 5};
  EXPECT_EQ(*CheckedElementCount(ok), 60u);
  EXPECT_EQ(*CheckedElementCount({}), 1u);
  EXPECT_EQ(*CheckedAlignUp(65, 64), 128u);
  EXPECT_FALSE(CheckedAlignUp(UINT64_MAX - 2, 64));
}

TEST(DType, Fp8E4M3MatchesTheFormat) {
  EXPECT_EQ(Fp8E4M3ToF32(0x00), 0.0f);
  EXPECT_EQ(Fp8E4M3ToF32(0x38), 1.0f);          // exponent 7 = bias
  EXPECT_EQ(Fp8E4M3ToF32(0x7e), 448.0f);        // largest finite
  EXPECT_EQ(Fp8E4M3ToF32(0xfe), -448.0f);
  EXPECT_TRUE(std::isnan(Fp8E4M3ToF32(0x7f)));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToF32(0xff)));
  EXPECT_EQ(Fp8E4M3ToF32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(Fp8E4M3ToF32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  // Every finite code round-trips through float.
  for (int v = 0; v < 256; ++v) {
    const float f = Fp8E4M3ToF32(static_cast<uint8_t>(v));
    if (std::isnan(f)) continue;
    if (f == 0.0f) continue;  // +0 and -0 both encode zero
    EXPECT_EQ(F32ToFp8E4M3(f), v) << v;
  }
  EXPECT_EQ(F32ToFp8E4M3(1e9f), 0x7e);  // saturates
  // Random values round to the nearest code (ties to the even code), checked by brute force.
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> mag(-12.0f, 9.5f);
  for (int i = 0; i < 20000; ++i) {
    const float f = std::exp2(mag(rng)) * ((rng() & 1) ? -1.0f : 1.0f);
    const uint8_t got = F32ToFp8E4M3(f);
    float best = INFINITY;
    for (int v = 0; v < 0x7f; ++v) best = std::min(best, std::fabs(Fp8E4M3ToF32(static_cast<uint8_t>(v)) - std::fabs(f)));
    const float err = std::fabs(Fp8E4M3ToF32(got) - f);
    if (std::fabs(f) < 448.0f) {
      EXPECT_EQ(err, best) << f;
    }
  }
  EXPECT_EQ(F32ToFp8E4M3(1.0625f), 0x38);  // halfway between 1 and 1.125: to even (1)
  EXPECT_EQ(F32ToFp8E4M3(1.1875f), 0x3a);  // halfway between 1.125 and 1.25: to even (1.25)
  EXPECT_EQ(F32ToFp8E4M3(3.0f / 1024), 0x02);  // 1.5 subnormal steps: to even (2)
}

TEST(DType, Bf16AndF16RoundTrip) {
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.5f)), 1.5f);
  EXPECT_EQ(F32ToBf16(1.0f + 1.0f / 256), F32ToBf16(1.0f));  // tie rounds to even
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f})
    EXPECT_EQ(F16ToF32(F32ToF16(f)), f) << f;
  EXPECT_EQ(*DTypeFromSafetensors("F8_E4M3"), DType::kFP8_E4M3);
  EXPECT_FALSE(DTypeFromSafetensors("F4"));
}

TEST(AtomicFileWriter, LeavesNothingBehindUnlessCommitted) {
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/atomic_test.bin";
  std::remove(path.c_str());
  {
    auto w = AtomicFileWriter::Create(path);
    ASSERT_TRUE(w.ok()) << w.status().message();
    const uint8_t bytes[] = {1, 2, 3};
    ASSERT_TRUE((*w)->Write(bytes).ok());
    EXPECT_FALSE(FileExists(path));
  }
  EXPECT_FALSE(FileExists(path));
  auto w = AtomicFileWriter::Create(path);
  ASSERT_TRUE(w.ok());
  const uint8_t bytes[] = {1, 2, 3};
  ASSERT_TRUE((*w)->Write(bytes).ok());
  ASSERT_TRUE((*w)->Commit().ok());
  auto m = MappedFile::Open(path);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->size(), 3u);
  std::remove(path.c_str());

  auto missing = AtomicFileWriter::Create(dir + "/no/such/dir/out.bin");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("does not exist"), std::string::npos);
}

}  // namespace
}  // namespace coda
