// StreamingDetokenizer and UTF-8 helper tests.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "coda/file.h"
#include "coda/text/detokenizer.h"
#include "coda/text/tokenizer.h"
#include "coda/text/unicode.h"

namespace coda::text {
namespace {

using namespace std::literals;
using Ids = std::vector<TokenId>;

const Tokenizer* DeepSeek() {
  static const std::optional<Tokenizer> tok = []() -> std::optional<Tokenizer> {
    auto t = Tokenizer::FromDirectory(std::string(CODA_TEST_DATA_DIR) + "/tokenizer/deepseek-v3");
    if (!t.ok()) {
      ADD_FAILURE() << t.status().message();
      return std::nullopt;
    }
    return std::move(t).value();
  }();
  return tok ? &*tok : nullptr;
}

// U+FFFD as a literal, so expectations are built by literal concatenation.
#define FFFD "\xEF\xBF\xBD"
constexpr std::string_view kFffd = FFFD;

TEST(Utf8, FindInvalid) {
  EXPECT_EQ(FindInvalidUtf8(""), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("plain ascii, long enough for the 8-byte path"), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("é中😀\xF4\x8F\xBF\xBF"), std::string_view::npos);  // U+10FFFF is valid
  EXPECT_EQ(FindInvalidUtf8("abcdefghij\x80"), 10u);
  EXPECT_EQ(FindInvalidUtf8("ab\xC1\xBF"), 2u);          // overlong
  EXPECT_EQ(FindInvalidUtf8("\xE0\x9F\xBF"), 0u);        // overlong 3-byte
  EXPECT_EQ(FindInvalidUtf8("\xED\xBF\xBF"), 0u);        // surrogate
  EXPECT_EQ(FindInvalidUtf8("\xF0\x8F\xBF\xBF"), 0u);    // overlong 4-byte
  EXPECT_EQ(FindInvalidUtf8("x\xF4\x90\x80\x80"), 1u);   // > U+10FFFF
  EXPECT_EQ(FindInvalidUtf8("xy\xF0\x9F\x98"), 2u);      // truncated
  EXPECT_EQ(FindInvalidUtf8("\xFF"), 0u);
}

TEST(Utf8, LossyUsesMaximalSubparts) {
  // Example from the Unicode standard, section 3.9 (U+FFFD substitution of maximal subparts).
  const std::string in = "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64";
  const std::string want = "a" FFFD FFFD FFFD "b" FFFD "c" FFFD FFFD "d";
  EXPECT_EQ(ToValidUtf8(in), want);
  EXPECT_EQ(ToValidUtf8("ok"), "ok");
  EXPECT_EQ(ToValidUtf8("\xED\xA0\x80"), FFFD FFFD FFFD);
}

TEST(Utf8, LossyHoldsBackIncompleteTail) {
  std::string out;
  EXPECT_EQ(AppendUtf8Lossy("ab\xF0\x9F\x98", /*final=*/false, &out), 2u);
  EXPECT_EQ(out, "ab");
  out.clear();
  // A tail that can no longer become valid is not held back.
  EXPECT_EQ(AppendUtf8Lossy("ab\xF0\x41", false, &out), 4u);
  EXPECT_EQ(out, "ab" FFFD "A");
  out.clear();
  EXPECT_EQ(AppendUtf8Lossy("\xE4\xBD", true, &out), 2u);
  EXPECT_EQ(out, kFffd);
}

TEST(Utf8, WhiteSpace) {
  for (char32_t c : {U' ', U'\t', U'\n', U'\r', U'\v', U'\f', U'\u0085', U'\u00a0', U'\u2000', U'\u200a',
                     U'\u2028', U'\u3000'})
    EXPECT_TRUE(IsUnicodeWhiteSpace(c)) << static_cast<uint32_t>(c);
  for (char32_t c : {U'a', U'\u200b', U'\ufeff', U'\u180e', U'_'})
    EXPECT_FALSE(IsUnicodeWhiteSpace(c)) << static_cast<uint32_t>(c);
}

std::string StreamAll(const Tokenizer& tok, const Ids& ids, bool skip, std::vector<std::string>* pieces = nullptr) {
  StreamingDetokenizer detok(tok, skip);
  std::string all;
  for (TokenId id : ids) {
    std::string piece;
    EXPECT_TRUE(detok.Push(id, &piece).ok());
    EXPECT_EQ(FindInvalidUtf8(piece), std::string_view::npos) << "emitted a partial character";
    if (pieces) pieces->push_back(piece);
    all += piece;
  }
  all += detok.Flush();
  EXPECT_EQ(detok.pending_bytes(), 0u);
  return all;
}

TEST(StreamingDetokenizer, HoldsBackSplitCharacters) {
  const Tokenizer* tok = DeepSeek();
  ASSERT_NE(tok, nullptr);
  // "emoji 😀👍🏽": tokens "emo" "ji" " \xF0\x9F\x98" "\x80" "👍" "\xF0\x9F\x8F" "\xBD".
  const Ids ids{18872, 7063, 53769, 225, 92526, 40965, 124};
  StreamingDetokenizer detok(*tok);
  const std::vector<std::pair<std::string, size_t>> want = {
      {"emo", 0}, {"ji", 0}, {" ", 3}, {"😀", 0}, {"👍", 0}, {"", 3}, {"🏽", 0}};
  for (size_t i = 0; i < ids.size(); ++i) {
    auto piece = detok.Push(ids[i]);
    ASSERT_TRUE(piece.ok());
    EXPECT_EQ(*piece, want[i].first) << "after token " << i;
    EXPECT_EQ(detok.pending_bytes(), want[i].second) << "after token " << i;
  }
  EXPECT_EQ(detok.Flush(), "");
}

TEST(StreamingDetokenizer, FlushReplacesUnfinishedCharacter) {
  const Tokenizer* tok = DeepSeek();
  ASSERT_NE(tok, nullptr);
  StreamingDetokenizer detok(*tok);
  auto piece = detok.Push(53769);  // " " + first three bytes of 😀
  ASSERT_TRUE(piece.ok());
  EXPECT_EQ(*piece, " ");
  EXPECT_EQ(detok.Flush(), kFffd);
  // After Flush the stream starts over.
  EXPECT_EQ(*detok.Push(18872), "emo");

  // A special token interrupting a character makes the held bytes unfinishable.
  StreamingDetokenizer d2(*tok);
  EXPECT_EQ(*d2.Push(53769), " ");
  EXPECT_EQ(*d2.Push(1), FFFD "<｜end▁of▁sentence｜>");

  // Reset drops them instead.
  StreamingDetokenizer d3(*tok);
  EXPECT_EQ(*d3.Push(53769), " ");
  d3.Reset();
  EXPECT_EQ(d3.pending_bytes(), 0u);
  EXPECT_EQ(d3.Flush(), "");
}

TEST(StreamingDetokenizer, SpecialTokens) {
  const Tokenizer* tok = DeepSeek();
  ASSERT_NE(tok, nullptr);
  const Ids ids{0, 128803, 23166, 128804, 19923, 3, 1};
  EXPECT_EQ(StreamAll(*tok, ids, false), "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜>");
  EXPECT_EQ(StreamAll(*tok, ids, true), "<｜User｜>Hi<｜Assistant｜>Hello!");
}

TEST(StreamingDetokenizer, RejectsUnknownIdWithoutLosingState) {
  const Tokenizer* tok = DeepSeek();
  ASSERT_NE(tok, nullptr);
  StreamingDetokenizer detok(*tok);
  EXPECT_EQ(*detok.Push(53769), " ");
  std::string out;
  const Status s = detok.Push(200000, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(out, "");
  EXPECT_EQ(detok.pending_bytes(), 3u);
  EXPECT_EQ(*detok.Push(225), "😀");
}

TEST(StreamingDetokenizer, MatchesDecodeOnReferenceTexts) {
  const Tokenizer* tok = DeepSeek();
  ASSERT_NE(tok, nullptr);
  for (std::string_view text : {"emoji 😀👍🏽 and café, naïve, Zürich"sv, "深度求索（DeepSeek）是一家人工智能公司。"sv,
                                "👨‍👩‍👧‍👦 family"sv, "안녕하세요, 반갑습니다!"sv, "<｜User｜>hi<｜Assistant｜>ok"sv}) {
    auto ids = tok->Encode(text, true);
    ASSERT_TRUE(ids.ok());
    for (bool skip : {false, true}) {
      std::vector<std::string> pieces;
      EXPECT_EQ(StreamAll(*tok, *ids, skip, &pieces), *tok->Decode(*ids, skip));
    }
  }
}

// Arbitrary id sequences (including ones that never form valid UTF-8) stream to exactly
// what Decode returns.
TEST(StreamingDetokenizer, MatchesDecodeOnRandomIds) {
  const Tokenizer* tok = DeepSeek();
  ASSERT_NE(tok, nullptr);
  std::mt19937 rng(7);
  // Mostly byte-ish tokens (ids below 300 include the single-byte alphabet), some
  // multi-byte pieces, some special tokens.
  for (int iter = 0; iter < 500; ++iter) {
    Ids ids;
    const int len = 1 + static_cast<int>(rng() % 20);
    for (int i = 0; i < len; ++i) {
      const uint32_t r = rng() % 10;
      TokenId id = r < 6 ? static_cast<TokenId>(rng() % 300)
                   : r < 9 ? static_cast<TokenId>(rng() % 128000)
                           : static_cast<TokenId>(128000 + rng() % 815);
      if (!tok->IsValidId(id)) id = 0;
      ids.push_back(id);
    }
    for (bool skip : {false, true}) {
      auto decoded = tok->Decode(ids, skip);
      ASSERT_TRUE(decoded.ok());
      ASSERT_EQ(StreamAll(*tok, ids, skip), *decoded);
    }
  }
}

}  // namespace
}  // namespace coda::text
