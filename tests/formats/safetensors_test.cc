#include "coda/safetensors.h"

#include <gtest/gtest.h>

#include "../common/test_util.h"

namespace coda::safetensors {
namespace {

using test::MakeSafetensors;
using test::RawSafetensors;
using test::StTensor;

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

Status ParseStatus(const std::string& file) { return ParseHeader(Bytes(file)).status(); }

void ExpectError(const std::string& file, const std::string& fragment) {
  Status s = ParseStatus(file);
  ASSERT_FALSE(s.ok()) << "expected an error containing '" << fragment << "'";
  EXPECT_NE(s.message().find(fragment), std::string::npos) << s.message();
}

// A header JSON string with one tensor.
std::string OneTensor(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return R"({"t":{"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}}";
}

TEST(SafetensorsHeader, ParsesAValidFile) {
  const std::string f = MakeSafetensors({{"a", {"BF16", {2, 3}, std::string(12, 'x')}},
                                         {"b", {"F8_E4M3", {4}, std::string(4, 'y')}},
                                         {"c", {"F32", {0}, ""}}});
  auto h = ParseHeader(Bytes(f));
  ASSERT_TRUE(h.ok()) << h.status().message();
  ASSERT_EQ(h->tensors.size(), 3u);
  EXPECT_EQ(h->metadata.at("format"), "pt");
  EXPECT_EQ(h->tensors[0].name, "a");
  EXPECT_EQ(h->tensors[0].dtype, DType::kBF16);
  EXPECT_EQ(h->tensors[1].dtype, DType::kFP8_E4M3);
  EXPECT_EQ(h->data_start % 8, 0u);
}

TEST(SafetensorsHeader, RejectsShortFiles) {
  ExpectError("", "too short");
  ExpectError("1234567", "too short");
}

TEST(SafetensorsHeader, RejectsHugeHeaderLength) {
  ExpectError(RawSafetensors("{}", "", (100ull << 20) + 1), "100 MB");
  ExpectError(RawSafetensors("{}", "", UINT64_MAX), "100 MB");
}

TEST(SafetensorsHeader, RejectsHeaderPastEndOfFile) { ExpectError(RawSafetensors("{}", "", 50), "past the end"); }

TEST(SafetensorsHeader, RejectsBadJson) {
  ExpectError(RawSafetensors("{\"a\":", "", 5), "not valid JSON");
  ExpectError(RawSafetensors("[1,2]", "", 5), "not a JSON object");
  const std::string deep = std::string(100, '[') + std::string(100, ']');
  ExpectError(RawSafetensors(deep, "", deep.size()), "nested");
}

TEST(SafetensorsHeader, RejectsUnknownDtype) {
  const std::string h = OneTensor("F4_E2M1", "[4]", "[0,4]");
  ExpectError(RawSafetensors(h, "abcd", h.size()), "unknown dtype 'F4_E2M1'");
}

TEST(SafetensorsHeader, RejectsShapeSizeMismatch) {
  const std::string h = OneTensor("F32", "[3]", "[0,8]");
  ExpectError(RawSafetensors(h, std::string(8, 0), h.size()), "need 12 bytes");
}

TEST(SafetensorsHeader, RejectsOffsetsPastTheEnd) {
  const std::string h = OneTensor("U8", "[16]", "[0,16]");
  ExpectError(RawSafetensors(h, std::string(8, 0), h.size()), "run past the end of the data");
}

TEST(SafetensorsHeader, RejectsOverlapsGapsAndTrailingBytes) {
  const std::string overlap =
      R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})";
  ExpectError(RawSafetensors(overlap, std::string(6, 0), overlap.size()), "overlaps");
  const std::string gap =
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})";
  ExpectError(RawSafetensors(gap, std::string(6, 0), gap.size()), "gap");
  const std::string h = OneTensor("U8", "[2]", "[0,2]");
  ExpectError(RawSafetensors(h, std::string(5, 0), h.size()), "trailing");
}

TEST(SafetensorsHeader, RejectsMalformedEntries) {
  auto raw = [](const std::string& h) { return RawSafetensors(h, std::string(4, 0), h.size()); };
  ExpectError(raw(OneTensor("U8", "[4]", "[4,0]")), "begin > end");
  ExpectError(raw(OneTensor("U8", "[-4]", "[0,4]")), "non-negative");
  ExpectError(raw(OneTensor("U8", "[1,1,1,1,1,1,1,1,4]", "[0,4]")), "rank 9");
  ExpectError(raw(OneTensor("F32", "[4294967296,4294967296,4]", "[0,4]")), "overflows");
  ExpectError(raw(R"({"t":{"dtype":"U8","shape":[4]}})"), "data_offsets");
  ExpectError(raw(R"({"t":{"shape":[4],"data_offsets":[0,4]}})"), "dtype");
  ExpectError(raw(R"({"t":[1]})"), "not an object");
  ExpectError(raw(R"({"__metadata__":{"a":1}})"), "__metadata__");
}

TEST(Checkpoint, ReportsMissingShardsAndIndexMismatches) {
  test::TempDir dir;
  const std::string shard = MakeSafetensors({{"a", {"U8", {2}, "ab"}}});
  test::WriteFile(dir / "model-1.safetensors", shard);
  test::WriteFile(dir / "model.safetensors.index.json",
                  R"({"weight_map":{"a":"model-1.safetensors","b":"model-2.safetensors"}})");
  auto c = Checkpoint::Open(dir.str());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("model-2.safetensors: missing shard"), std::string::npos) << c.status().message();

  test::WriteFile(dir / "model.safetensors.index.json", R"({"weight_map":{"a":"model-1.safetensors","b":"model-1.safetensors"}})");
  c = Checkpoint::Open(dir.str());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'b' listed in model.safetensors.index.json is not in this shard"), std::string::npos);

  // An index listing nothing (it crashed the converter).
  test::WriteFile(dir / "model.safetensors.index.json", R"({"weight_map":{}})");
  c = Checkpoint::Open(dir.str());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'weight_map' lists no tensors"), std::string::npos) << c.status().message();
  test::WriteFile(dir / "model.safetensors.index.json", R"({"weight_map":{"a":"../etc/passwd"}})");
  c = Checkpoint::Open(dir.str());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("not a plain file name"), std::string::npos);

  test::WriteFile(dir / "model.safetensors.index.json", R"({"weight_map":{"a":"model-1.safetensors"}})");
  c = Checkpoint::Open(dir.str());
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->tensor_names().size(), 1u);
  ASSERT_NE(c->Find("a").file, nullptr);
  EXPECT_EQ(c->Find("a").file->Data(*c->Find("a").info)[1], 'b');
}

TEST(Checkpoint, NamesTheFileOfACorruptShard) {
  test::TempDir dir;
  test::WriteFile(dir / "model.safetensors", "\x05\x00\x00\x00\x00\x00\x00\x00{\"a\":");
  auto c = Checkpoint::Open(dir.str());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(dir / "model.safetensors"), std::string::npos) << c.status().message();
  EXPECT_EQ(c.status().code(), StatusCode::kCorrupt);
}

}  // namespace
}  // namespace coda::safetensors
