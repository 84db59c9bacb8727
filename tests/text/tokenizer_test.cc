// Tokenizer tests against the real DeepSeek-V3 tokenizer.json. Reference ids come from
// tests/data/tokenizer/deepseek-v3/cases.json and, for the hard cases below, from
// Hugging Face tokenizers 0.23 (Rust, through its Node binding), cross-checked with
// transformers.js; they are hard-coded so the suite needs neither.
#include <gtest/gtest.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "coda/file.h"
#include "coda/text/tokenizer.h"
#include "coda/text/unicode.h"

namespace coda::text {
namespace {

using namespace std::literals;
using Ids = std::vector<TokenId>;

const std::string kDir = std::string(CODA_TEST_DATA_DIR) + "/tokenizer/deepseek-v3";

// Loaded once per process: tokenizer.json is 7.8 MB.
const Tokenizer* JsonOnly() {
  static const std::optional<Tokenizer> tok = []() -> std::optional<Tokenizer> {
    auto text = ReadTextFile(kDir + "/tokenizer.json", 64 << 20);
    if (!text.ok()) return std::nullopt;
    auto t = Tokenizer::FromJson(*text, "tokenizer.json");
    if (!t.ok()) {
      ADD_FAILURE() << t.status().message();
      return std::nullopt;
    }
    return std::move(t).value();
  }();
  return tok ? &*tok : nullptr;
}

const Tokenizer* FromDir() {
  static const std::optional<Tokenizer> tok = []() -> std::optional<Tokenizer> {
    auto t = Tokenizer::FromDirectory(kDir);
    if (!t.ok()) {
      ADD_FAILURE() << t.status().message();
      return std::nullopt;
    }
    return std::move(t).value();
  }();
  return tok ? &*tok : nullptr;
}

nlohmann::json Cases() {
  auto text = ReadTextFile(kDir + "/cases.json", 1 << 20);
  EXPECT_TRUE(text.ok());
  return nlohmann::json::parse(text.ok() ? *text : "{}");
}

Ids Encode(const Tokenizer& tok, std::string_view text, bool add_special = false) {
  auto r = tok.Encode(text, add_special);
  EXPECT_TRUE(r.ok()) << r.status().message();
  return r.ok() ? *r : Ids{};
}

std::string Decode(const Tokenizer& tok, const Ids& ids, bool skip = false) {
  auto r = tok.Decode(ids, skip);
  EXPECT_TRUE(r.ok()) << r.status().message();
  return r.ok() ? *r : "";
}

TEST(DeepSeekTokenizer, ReferenceTexts) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  const auto cases = Cases();
  ASSERT_EQ(cases["texts"].size(), 27u);
  for (size_t i = 0; i < cases["texts"].size(); ++i) {
    const auto& c = cases["texts"][i];
    const std::string text = c["text"];
    SCOPED_TRACE("texts[" + std::to_string(i) + "]: " + text.substr(0, 60));
    const Ids want = c["ids"].get<Ids>();
    EXPECT_EQ(Encode(*tok, text), want);
    // tokenizer.json alone has a ByteLevel post-processor: no BOS, as in HF tokenizers.
    EXPECT_EQ(Encode(*tok, text, /*add_special=*/true), want);
    EXPECT_EQ(Decode(*tok, want), c["decoded"].get<std::string>());
  }
}

TEST(DeepSeekTokenizer, ReferenceChats) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  const auto cases = Cases();
  ASSERT_EQ(cases["chats"].size(), 5u);
  for (size_t i = 0; i < cases["chats"].size(); ++i) {
    const auto& c = cases["chats"][i];
    const std::string rendered = c["rendered"];
    SCOPED_TRACE("chats[" + std::to_string(i) + "]");
    // The rendered prompt already spells BOS, so it is encoded without adding one.
    EXPECT_EQ(Encode(*tok, rendered), c["ids"].get<Ids>());
    EXPECT_EQ(Decode(*tok, c["ids"].get<Ids>()), rendered);
  }
}

TEST(DeepSeekTokenizer, DirectoryAddsBosLikeAutoTokenizer) {
  const Tokenizer* tok = FromDir();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_EQ(std::vector<TokenId>(tok->special_prefix().begin(), tok->special_prefix().end()), Ids{0});
  EXPECT_TRUE(tok->special_suffix().empty());
  EXPECT_EQ(Encode(*tok, "Hello, my dog is cute", true), (Ids{0, 19923, 14, 1026, 6397, 344, 33125}));
  EXPECT_EQ(Encode(*tok, "Hello, my dog is cute", false), (Ids{19923, 14, 1026, 6397, 344, 33125}));
  EXPECT_EQ(Encode(*tok, "", true), Ids{0});
  EXPECT_EQ(Encode(*tok, "", false), Ids{});
}

struct HardCase {
  std::string_view text;
  Ids ids;
};

const HardCase kHardCases[] = {
    {"👩\342\200\215💻 coder, 🏳️\342\200\215🌈 flag, 👨🏿\342\200\215🚀 astronaut, 🇯🇵🇺🇸 flags"sv,
     {25730, 105, 46088, 23903, 122, 274, 14880, 14, 7351, 240, 114, 10759, 46088, 110659, 14364, 14, 52780, 104, 40965, 126, 46088, 74287, 225, 56063, 14, 77579, 110, 43754, 116, 43754, 121, 43754, 119, 30698}},
    {"我爱自然语言处理。今天天气很好！ひらがなカタカナ漢字Ｆｕｌｌｗｉｄｔｈ１２３"sv,
     {60147, 4377, 7831, 4398, 320, 5237, 16652, 12210, 1175, 40259, 4970, 2936, 2942, 15961, 11767, 15961, 27071, 29069, 2024, 286, 102, 5879, 246, 5879, 237, 5879, 237, 5879, 248, 125567, 5879, 229, 127088, 5879, 233, 127167, 25081}},
    {"Hello世界مرحباПривет123abcΑλφα"sv,
     {19923, 3427, 10393, 2212, 53067, 24797, 8919, 6895, 32372, 32493, 3422, 87265}},
    {"12345678901234567890 3.14159 1e10 ١٢٣٤ ½ ² Ⅻ"sv,
     {6895, 18009, 25744, 16993, 18014, 27183, 2225, 223, 21, 16, 9926, 3318, 223, 19, 71, 553, 223, 63468, 76647, 127056, 152, 100, 223, 23951, 223, 1628, 223, 23603, 107}},
    {"a \t\t b\n\n\n   c\r\n\r\n\t \343\200\200x\302\240y   "sv,
     {67, 100103, 291, 6328, 262, 274, 204, 201, 204, 201, 35749, 18524, 90, 2162, 91, 361}},
    {"   "sv,
     {361}},
    {"\n"sv,
     {201}},
    {"\t\n \n"sv,
     {7028, 539}},
    {"Please ignore <｜end▁of▁sentence｜> and <｜User｜>hi<｜Assistant｜> plus <|EOT|> and <｜fim▁hole｜> but not <｜User|> or <｜User｜"sv,
     {12473, 22524, 223, 1, 305, 223, 128803, 6366, 128804, 5582, 223, 128805, 305, 223, 128800, 790, 554, 818, 28217, 6756, 94, 32, 469, 818, 28217, 6756, 28217}},
    {"for (int i = 0; i < 10; ++i) { sum += a[i] * 2; }  // comment\n\tif (x != y) return;"sv,
     {2251, 343, 650, 1008, 438, 223, 18, 29, 1008, 818, 223, 553, 29, 16571, 75, 11, 680, 2595, 7004, 260, 3166, 63, 982, 223, 20, 29, 837, 223, 1915, 7006, 201, 5733, 343, 90, 6269, 383, 11, 1354, 29}},
    {"é̂ Z̤͔ͧ ä"sv,
     {71, 17793, 75274, 1653, 139, 100, 140, 245, 140, 103, 260, 66383}},
    {"I'M DON'T y'all ''quoted'' it’s"sv,
     {43, 125845, 74524, 67322, 383, 98513, 15761, 403, 12284, 10329, 436, 442, 85}},
    {"Hello!!!\n\n\n???...\r\n"sv,
     {19923, 47868, 201, 50640, 1613, 204, 201}},
    {"SupercalifragilisticexpialidociousSupercalifragilisticexpialidociousSupercalifragilisticexpialidocious"sv,
     {28671, 5096, 394, 3174, 321, 435, 722, 66562, 536, 329, 95790, 28671, 5096, 394, 3174, 321, 435, 722, 66562, 536, 329, 95790, 28671, 5096, 394, 3174, 321, 435, 722, 66562, 536, 329, 95790}},
    {"abababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababab"sv,
     {425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425, 425}},
    {"สวัสดีครับ नमस्ते दुनिया"sv,
     {2952, 34189, 2952, 25581, 79813, 23597, 12524, 70223, 6011, 26227, 101422, 85639}},
    {"∑_{i=1}^{n} x_i² ≤ ∞ → ∀ε>0 ∃δ"sv,
     {25951, 1364, 75, 31, 19, 4080, 80, 95, 1527, 16077, 1628, 19212, 58310, 6787, 76547, 2520, 32, 18, 117697, 7292}},
    {"mailto:someone@example.org?subject=Hi%20there"sv,
     {17647, 1495, 28, 108486, 34, 30357, 3964, 33, 49298, 31, 23166, 7, 397, 21908}},
    {"a\342\200\250b\342\200\251c\302\205d"sv,
     {67, 300, 104, 68, 300, 105, 69, 129, 230, 70}},
    {"soft\302\255hyphen zero\342\200\213width"sv,
     {8520, 20931, 60802, 690, 8390, 35020, 12356}},
    {"𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \356\200\200"sv,
     {3128, 245, 249, 3128, 245, 107, 3128, 245, 102, 3128, 245, 257, 3128, 245, 108, 3128, 245, 97, 3128, 245, 98, 223, 97817, 225}},
    {"a\000b\001c\177"sv,
     {67, 191, 68, 192, 69, 224}},
    {"<｜begin▁of▁sentence｜><｜begin▁of▁sentence｜>x<｜end▁of▁sentence｜>"sv,
     {0, 0, 90, 1}},
    {" <｜User｜> spaced <｜Assistant｜> "sv,
     {223, 128803, 48914, 223, 128804, 223}},
};

TEST(DeepSeekTokenizer, HardCases) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  for (size_t i = 0; i < std::size(kHardCases); ++i) {
    const HardCase& c = kHardCases[i];
    SCOPED_TRACE("hard case " + std::to_string(i) + ": " + std::string(c.text.substr(0, 60)));
    EXPECT_EQ(Encode(*tok, c.text), c.ids);
    EXPECT_EQ(Decode(*tok, c.ids), c.text);
  }
}

TEST(DeepSeekTokenizer, DigitsSplitInGroupsOfThree) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  const std::string digits(3000, '7');
  const Ids ids = Encode(*tok, digits);
  ASSERT_EQ(ids.size(), 1000u);
  for (TokenId id : ids) EXPECT_EQ(tok->IdToToken(id), "777");
  EXPECT_EQ(Decode(*tok, Encode(*tok, "1234")), "1234");
  EXPECT_EQ(Encode(*tok, "1234").size(), 2u);  // "123" "4"
}

TEST(DeepSeekTokenizer, InvalidUtf8IsAnErrorByDefault) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  const std::pair<std::string_view, size_t> bad[] = {
      {"abc\xff def"sv, 3},        // never valid in UTF-8
      {"ok \xe4\xbd"sv, 3},        // truncated 3-byte sequence at the end
      {"\xc0\xaf"sv, 0},           // overlong '/'
      {"x\xed\xa0\x80y"sv, 1},     // UTF-16 surrogate
      {"\xf4\x90\x80\x80"sv, 0},   // above U+10FFFF
      {"caf\xc3(\xa9"sv, 3},       // lead byte without its continuation
  };
  for (const auto& [text, offset] : bad) {
    auto r = tok->Encode(text, false);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("byte offset " + std::to_string(offset)), std::string::npos)
        << r.status().message();
  }
}

TEST(DeepSeekTokenizer, InvalidUtf8CanBeReplaced) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  EncodeOptions opts;
  opts.add_special_tokens = false;
  opts.invalid_utf8 = InvalidUtf8Policy::kReplace;
  auto r = tok->Encode("abc\xff def"sv, opts);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, (Ids{32372, 2808, 1351}));  // HF ids for "abc\uFFFD def"
  EXPECT_EQ(Decode(*tok, *r), "abc\xEF\xBF\xBD def");
  // Each maximal ill-formed subsequence is one U+FFFD.
  auto r2 = tok->Encode("\xe4\xbd!\xed\xa0\x80"sv, opts);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(Decode(*tok, *r2), "\xEF\xBF\xBD!\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(DeepSeekTokenizer, AddedTokenMatchingModes) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  const std::string text = "<｜begin▁of▁sentence｜><｜User｜>hi";
  EncodeOptions opts;
  opts.add_special_tokens = false;
  auto all = tok->Encode(text, opts);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, (Ids{0, 128803, 6366}));

  // Only tokens flagged special (BOS) become text; <｜User｜> is not flagged special.
  opts.added_tokens = AddedTokenMatching::kNonSpecial;
  auto non_special = tok->Encode(text, opts);
  ASSERT_TRUE(non_special.ok());
  EXPECT_NE(non_special->front(), 0);
  EXPECT_EQ(non_special->at(non_special->size() - 2), 128803);

  opts.added_tokens = AddedTokenMatching::kNone;
  auto none = tok->Encode(text, opts);
  ASSERT_TRUE(none.ok());
  for (TokenId id : *none) EXPECT_LT(id, 128000) << "added token leaked into plain-text encoding";
  EXPECT_EQ(Decode(*tok, *none), text);
}

TEST(DeepSeekTokenizer, DecodeSkipsOnlySpecialTokens) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  const Ids ids{0, 128803, 23166, 128804, 1};
  EXPECT_EQ(Decode(*tok, ids), "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><｜end▁of▁sentence｜>");
  // As in HF: BOS/EOS are special; the role markers are added but not special.
  EXPECT_EQ(Decode(*tok, ids, /*skip=*/true), "<｜User｜>Hi<｜Assistant｜>");
}

TEST(DeepSeekTokenizer, DecodeReplacesCutCharacters) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(Decode(*tok, Ids{53769}), " \xEF\xBF\xBD");  // " " + first bytes of an emoji
  auto bad = tok->Decode(Ids{19923, 129000});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("ids[1] = 129000"), std::string::npos);
  EXPECT_FALSE(tok->Decode(Ids{-1}).ok());
}

TEST(DeepSeekTokenizer, Lookups) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 128815u);
  EXPECT_EQ(tok->added_tokens().size(), 818u);
  EXPECT_EQ(tok->TokenToId("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_EQ(tok->TokenToId("<｜User｜>"), 128803);
  EXPECT_EQ(tok->TokenToId("Ġthe"), 270);
  EXPECT_EQ(tok->TokenToId("no such token"), std::nullopt);
  EXPECT_EQ(tok->IdToToken(270), "Ġthe");
  EXPECT_EQ(tok->IdToToken(128804), "<｜Assistant｜>");
  EXPECT_EQ(tok->IdToToken(128815), std::nullopt);
  EXPECT_EQ(tok->TokenBytes(270), " the");
  EXPECT_EQ(tok->TokenBytes(201), "\n");
  EXPECT_TRUE(tok->IsSpecial(0));
  EXPECT_TRUE(tok->IsSpecial(128805));  // <|EOT|>
  EXPECT_FALSE(tok->IsSpecial(128803));
  EXPECT_FALSE(tok->IsSpecial(270));
  // Without tokenizer_config.json, BOS/EOS are recognized by name.
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_id(), 1);
}

TEST(DeepSeekTokenizer, ConfigAndSetters) {
  const Tokenizer* base = JsonOnly();
  ASSERT_NE(base, nullptr);
  Tokenizer tok = *base;  // copies share the tables
  EXPECT_TRUE(tok.ApplyTokenizerConfig(R"({"bos_token": "<｜User｜>", "add_bos_token": true,
      "eos_token": {"__type": "AddedToken", "content": "<|EOT|>"}, "add_eos_token": true})", "cfg").ok());
  EXPECT_EQ(tok.bos_id(), 128803);
  EXPECT_EQ(tok.eos_id(), 128805);
  EXPECT_EQ(Encode(tok, "Hi", true), (Ids{128803, 23166, 128805}));
  EXPECT_EQ(Encode(*base, "Hi", true), Ids{23166});  // the original is untouched

  auto missing = tok.ApplyTokenizerConfig(R"({"bos_token": "<nope>"})", "cfg");
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_EQ(tok.ApplyTokenizerConfig("{not json", "cfg").code(), StatusCode::kCorrupt);
  EXPECT_EQ(tok.ApplyTokenizerConfig(R"({"add_bos_token": "yes"})", "cfg").code(), StatusCode::kCorrupt);
  EXPECT_EQ(tok.SetBosToken("<nope>").code(), StatusCode::kNotFound);
  EXPECT_TRUE(tok.SetEosToken("<｜end▁of▁sentence｜>").ok());
  EXPECT_EQ(tok.eos_id(), 1);
  EXPECT_TRUE(tok.SetSpecialTokenTemplate({0}, {1}).ok());
  EXPECT_EQ(Encode(tok, "Hi", true), (Ids{0, 23166, 1}));
  EXPECT_EQ(tok.SetSpecialTokenTemplate({999999}, {}).code(), StatusCode::kInvalidArgument);
}

TEST(DeepSeekTokenizer, LongInputs) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  // One 1 MB word (heap merge path), a long whitespace run, a long punctuation run.
  for (const std::string& text : {std::string(1 << 20, 'x'), std::string(300000, ' '),
                                  std::string(100000, '\n') + "end", std::string(200000, '!')}) {
    auto ids = tok->Encode(text, false);
    ASSERT_TRUE(ids.ok()) << ids.status().message();
    EXPECT_LT(ids->size(), text.size());
    EXPECT_EQ(Decode(*tok, *ids), text);
  }
  std::string cjk;
  for (int i = 0; i < 20000; ++i) cjk += "深度求索";
  auto ids = tok->Encode(cjk, false);
  ASSERT_TRUE(ids.ok()) << ids.status().message();
  EXPECT_EQ(Decode(*tok, *ids), cjk);
}

// Byte-level BPE is lossless: any valid UTF-8 text must survive encode + decode.
TEST(DeepSeekTokenizer, RoundTripsRandomText) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  const char32_t pool[] = {U'a', U'Z', U'7', U' ', U' ', U'\n', U'\t', U'\r', U'.', U'\'', U'<', U'｜',
                           U'é', U'\u0301', U'中', U'文', U'ア', U'한', U'ж', U'ع', U'😀', U'\u200d',
                           U'\u3000', U'\u00a0', U'１', U'½', U'€', U'\U0001F3FD', U'\u0000', U'\u007f'};
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 300; ++iter) {
    std::string s;
    const int len = static_cast<int>(rng() % 80);
    for (int i = 0; i < len; ++i) AppendUtf8(pool[rng() % std::size(pool)], &s);
    EncodeOptions opts;
    opts.add_special_tokens = false;
    opts.added_tokens = AddedTokenMatching::kNone;
    auto ids = tok->Encode(s, opts);
    ASSERT_TRUE(ids.ok());
    ASSERT_EQ(Decode(*tok, *ids), s);
  }
}

TEST(DeepSeekTokenizer, ConcurrentEncodeIsConsistent) {
  const Tokenizer* tok = JsonOnly();
  ASSERT_NE(tok, nullptr);
  const std::string text = "The quick brown fox 狐狸 jumps over 12345 lazy dogs 🐕🐕.\n";
  const Ids want = Encode(*tok, text);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        auto r = tok->Encode(text, false);
        ok[t] += r.ok() && *r == want;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int n : ok) EXPECT_EQ(n, 200);
}

TEST(DeepSeekTokenizer, FromDirectoryMissing) {
  auto r = Tokenizer::FromDirectory(std::string(CODA_TEST_DATA_DIR) + "/tokenizer/no-such-dir");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace coda::text
