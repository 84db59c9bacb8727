// Tokenizer semantics on small synthetic tokenizer.json files: added-token flags
// (lstrip, rstrip, single_word, normalized, special; non-ASCII contents, which HF
// decodes through the byte alphabet too), every Split behavior, the
// post-processors, unk / byte_fallback / ignore_merges, and load-time validation.
// Expected ids were produced by Hugging Face tokenizers 0.23 (Rust, via its Node
// binding) on tokenizers built by the same recipe as SyntheticJson() below.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <functional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "coda/text/tokenizer.h"
#include "coda/text/unicode.h"

namespace coda::text {
namespace {

using namespace std::literals;
using Ids = std::vector<TokenId>;
using nlohmann::json;

// GPT-2 byte alphabet: printable bytes stand for themselves, the rest map to U+0100...
std::string ByteChar(int b) {
  auto printable = [](int x) { return (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE; };
  char32_t cp = static_cast<char32_t>(b);
  if (!printable(b)) {
    int n = 0;
    for (int i = 0; i < b; ++i) n += printable(i) ? 0 : 1;
    cp = static_cast<char32_t>(256 + n);
  }
  std::string s;
  AppendUtf8(cp, &s);
  return s;
}

const std::pair<std::string_view, std::string_view> kMerges[] = {
    {"h", "e"},   {"l", "l"},   {"he", "ll"}, {"hell", "o"},   {"Ġ", "w"},    {"o", "r"},
    {"Ġw", "or"}, {"Ġwor", "l"}, {"Ġworl", "d"}, {"Ġ", "Ġ"},    {"ĠĠ", "ĠĠ"}, {"1", "2"},
    {"12", "3"},  {"Ġ", "hello"}, {"a", "b"},    {"ab", "c"},    {"Ċ", "Ċ"},   {"-", "-"}};

// Ids: 0..255 the byte alphabet, then one per merge, then `extra_vocab`, then the
// added tokens in order (the ids Hugging Face assigns when loading such a file).
std::string SyntheticJson(std::string_view pre, std::string_view added_json, std::string_view post,
                          std::string_view model_overrides, std::string_view extra_vocab) {
  json vocab = json::object();
  int next = 0;
  for (int b = 0; b < 256; ++b) vocab[ByteChar(b)] = next++;
  json merges = json::array();
  for (const auto& [a, b] : kMerges) {
    vocab[std::string(a) + std::string(b)] = next++;
    merges.push_back(std::string(a) + " " + std::string(b));
  }
  for (const auto& e : json::parse(extra_vocab)) vocab[e.get<std::string>()] = next++;
  json added = json::parse(added_json);
  for (auto& t : added) t["id"] = next++;
  auto id_of = [&](const std::string& content) {
    for (const auto& t : added)
      if (t["content"] == content) return t["id"].get<int>();
    return -1;
  };
  json post_json = json::parse(post);
  std::function<void(json&)> patch = [&](json& p) {
    if (p.is_null()) return;
    if (p["type"] == "TemplateProcessing") {
      for (auto& [k, v] : p["special_tokens"].items()) v["ids"] = json::array({id_of(k)});
    } else if (p["type"] == "BertProcessing") {
      p["sep"][1] = id_of(p["sep"][0]);
      p["cls"][1] = id_of(p["cls"][0]);
    } else if (p["type"] == "Sequence") {
      for (auto& q : p["processors"]) patch(q);
    }
  };
  patch(post_json);
  json model = {{"type", "BPE"},       {"dropout", nullptr},         {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},   {"byte_fallback", false},     {"vocab", vocab},
                {"merges", merges}};
  model.update(json::parse(model_overrides));
  json doc = {{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", nullptr},
              {"pre_tokenizer", json::parse(pre)},
              {"post_processor", post_json},
              {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
              {"model", model}};
  return doc.dump();
}

struct SyntheticCase {
  std::string_view text;
  Ids ids;           // add_special_tokens = false
  Ids with_special;  // add_special_tokens = true
  std::string_view decoded;
};

struct SyntheticVariant {
  std::string_view name;
  std::string_view pre_tokenizer;
  std::string_view added_tokens;
  std::string_view post_processor;
  std::string_view model_overrides;
  std::string_view extra_vocab;
  std::vector<SyntheticCase> cases;
};

const SyntheticVariant kVariants[] = {
    {"flags",
     R"json({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})json",
     R"json([{"content":"<mask>","single_word":false,"lstrip":true,"rstrip":true,"normalized":false,"special":true},{"content":"[SW]","single_word":true,"lstrip":false,"rstrip":false,"normalized":true,"special":false},{"content":"<L>","single_word":false,"lstrip":true,"rstrip":false,"normalized":true,"special":false},{"content":"<R>","single_word":false,"lstrip":false,"rstrip":true,"normalized":false,"special":false},{"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"content":"<a","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false},{"content":"<abc>","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false},{"content":"hel","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false}])json",
     R"json({"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"</s>","type_id":0}}],"pair":[{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],"special_tokens":{"<s>":{"id":"<s>","ids":[0],"tokens":["<s>"]},"</s>":{"id":"</s>","ids":[0],"tokens":["</s>"]}}})json",
     R"json({})json",
     R"json([])json",
     {
         {"hello <mask> world"sv, {282, 108, 111, 274, 119, 261, 108, 100}, {278, 282, 108, 111, 274, 119, 261, 108, 100, 279}, "hello<mask>world"sv},
         {"hello<mask>world"sv, {282, 108, 111, 274, 119, 261, 108, 100}, {278, 282, 108, 111, 274, 119, 261, 108, 100, 279}, "hello<mask>world"sv},
         {" \t<mask>\t "sv, {274}, {278, 274, 279}, "<mask>"sv},
         {"a[SW]b [SW] c [SW]"sv, {97, 91, 83, 87, 93, 98, 32, 275, 32, 99, 32, 275}, {278, 97, 91, 83, 87, 93, 98, 32, 275, 32, 99, 32, 275, 279}, "a[SW]b [SW] c [SW]"sv},
         {"x [SW]_y"sv, {120, 32, 91, 83, 87, 93, 95, 121}, {278, 120, 32, 91, 83, 87, 93, 95, 121, 279}, "x [SW]_y"sv},
         {"é[SW]"sv, {195, 169, 91, 83, 87, 93}, {278, 195, 169, 91, 83, 87, 93, 279}, "é[SW]"sv},
         {"[SW]"sv, {275}, {278, 275, 279}, "[SW]"sv},
         {"e\314\201[SW]"sv, {101, 204, 129, 91, 83, 87, 93}, {278, 101, 204, 129, 91, 83, 87, 93, 279}, "e\314\201[SW]"sv},
         {"9[SW]"sv, {57, 91, 83, 87, 93}, {278, 57, 91, 83, 87, 93, 279}, "9[SW]"sv},
         {"-[SW]-"sv, {45, 275, 45}, {278, 45, 275, 45, 279}, "-[SW]-"sv},
         {"  <L>  <R>  "sv, {276, 265, 277}, {278, 276, 265, 277, 279}, "<L>  <R>"sv},
         {"<L><R><L>"sv, {276, 277, 276}, {278, 276, 277, 276, 279}, "<L><R><L>"sv},
         {"<R> <L>"sv, {277, 276}, {278, 277, 276, 279}, "<R><L>"sv},
         {"<abc> <ab <a"sv, {281, 32, 280, 98, 32, 280}, {278, 281, 32, 280, 98, 32, 280, 279}, "<abc> <ab <a"sv},
         {"<s>hello</s>"sv, {278, 282, 108, 111, 279}, {278, 278, 282, 108, 111, 279, 279}, "<s>hello</s>"sv},
         {"hello help hel"sv, {282, 108, 111, 32, 282, 112, 32, 282}, {278, 282, 108, 111, 32, 282, 112, 32, 282, 279}, "hello help hel"sv},
         {"<mask><mask> <mask>"sv, {274, 274, 274}, {278, 274, 274, 274, 279}, "<mask><mask><mask>"sv},
         {"<mask>\343\200\200x\342\200\250<mask>"sv, {274, 120, 274}, {278, 274, 120, 274, 279}, "<mask>x<mask>"sv},
         {""sv, {}, {278, 279}, ""sv},
         {" "sv, {32}, {278, 32, 279}, " "sv},
         {"<s>"sv, {278}, {278, 278, 279}, "<s>"sv},
     }},
    {"prefix_space",
     R"json({"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true})json",
     R"json([{"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}])json",
     R"json(null)json",
     R"json({})json",
     R"json([])json",
     {
         {"hello world"sv, {269, 264}, {269, 264}, " hello world"sv},
         {"hello<s>world"sv, {269, 274, 264}, {269, 274, 264}, " hello<s> world"sv},
         {" hello"sv, {269}, {269}, " hello"sv},
         {"<s> x"sv, {274, 32, 120}, {274, 32, 120}, "<s> x"sv},
         {""sv, {}, {}, ""sv},
     }},
    {"merged_prev",
     R"json({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"String":"-"},"behavior":"MergedWithPrevious","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})json",
     R"json([])json",
     R"json(null)json",
     R"json({})json",
     R"json([])json",
     {
         {"a-b--c-"sv, {97, 45, 98, 45, 45, 99, 45}, {97, 45, 98, 45, 45, 99, 45}, "a-b--c-"sv},
         {"-x"sv, {45, 120}, {45, 120}, "-x"sv},
         {"--"sv, {45, 45}, {45, 45}, "--"sv},
         {"hello-world"sv, {259, 45, 119, 261, 108, 100}, {259, 45, 119, 261, 108, 100}, "hello-world"sv},
     }},
    {"merged_next",
     R"json({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\d"},"behavior":"MergedWithNext","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})json",
     R"json([])json",
     R"json(null)json",
     R"json({})json",
     R"json([])json",
     {
         {"ab1cd23"sv, {270, 49, 99, 100, 50, 51}, {270, 49, 99, 100, 50, 51}, "ab1cd23"sv},
         {"1"sv, {49}, {49}, "1"sv},
         {"x9"sv, {120, 57}, {120, 57}, "x9"sv},
         {"12 3hello"sv, {49, 50, 32, 51, 259}, {49, 50, 32, 51, 259}, "12 3hello"sv},
     }},
    {"removed",
     R"json({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\s+"},"behavior":"Removed","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})json",
     R"json([])json",
     R"json(null)json",
     R"json({})json",
     R"json([])json",
     {
         {"hello  world \n x"sv, {259, 119, 261, 108, 100, 120}, {259, 119, 261, 108, 100, 120}, "helloworldx"sv},
         {"  "sv, {}, {}, ""sv},
         {"a"sv, {97}, {97}, "a"sv},
     }},
    {"removed_invert",
     R"json({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\s+"},"behavior":"Removed","invert":true},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})json",
     R"json([])json",
     R"json(null)json",
     R"json({})json",
     R"json([])json",
     {
         {"a b  c\n"sv, {32, 265, 10}, {32, 265, 10}, "   \n"sv},
         {"hello"sv, {}, {}, ""sv},
     }},
    {"contiguous",
     R"json({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"l"},"behavior":"Contiguous","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})json",
     R"json([])json",
     R"json(null)json",
     R"json({})json",
     R"json([])json",
     {
         {"hello ll lll"sv, {256, 257, 111, 32, 257, 32, 257, 108}, {256, 257, 111, 32, 257, 32, 257, 108}, "hello ll lll"sv},
         {"l"sv, {108}, {108}, "l"sv},
         {"hel lo"sv, {256, 108, 32, 108, 111}, {256, 108, 32, 108, 111}, "hel lo"sv},
     }},
    {"isolated_literal",
     R"json({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"String":"ll"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})json",
     R"json([])json",
     R"json(null)json",
     R"json({})json",
     R"json([])json",
     {
         {"hellllo"sv, {256, 257, 257, 111}, {256, 257, 257, 111}, "hellllo"sv},
         {"lll"sv, {257, 108}, {257, 108}, "lll"sv},
     }},
    {"lookahead",
     R"json({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})json",
     R"json([])json",
     R"json(null)json",
     R"json({})json",
     R"json([])json",
     {
         {"a   b    "sv, {97, 265, 32, 98, 266}, {97, 265, 32, 98, 266}, "a   b    "sv},
         {"x\n\n  y"sv, {120, 272, 32, 32, 121}, {120, 272, 32, 32, 121}, "x\n\n  y"sv},
     }},
    {"anchors",
     R"json({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"^\\w+|\\w+$"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})json",
     R"json([])json",
     R"json(null)json",
     R"json({})json",
     R"json([])json",
     {
         {"hello big\nworld end"sv, {259, 32, 98, 105, 103, 10, 119, 261, 108, 100, 32, 101, 110, 100}, {259, 32, 98, 105, 103, 10, 119, 261, 108, 100, 32, 101, 110, 100}, "hello big\nworld end"sv},
         {"ab\ncd"sv, {270, 10, 99, 100}, {270, 10, 99, 100}, "ab\ncd"sv},
     }},
    {"bert_post",
     R"json({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})json",
     R"json([{"content":"[CLS]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"content":"[SEP]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}])json",
     R"json({"type":"BertProcessing","sep":["[SEP]",0],"cls":["[CLS]",0]})json",
     R"json({})json",
     R"json([])json",
     {
         {"hello"sv, {259}, {274, 259, 275}, "hello"sv},
         {""sv, {}, {274, 275}, ""sv},
     }},
    {"seq_post",
     R"json({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})json",
     R"json([{"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}])json",
     R"json({"type":"Sequence","processors":[{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false},{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"</s>","type_id":0}}],"pair":[{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],"special_tokens":{"<s>":{"id":"<s>","ids":[0],"tokens":["<s>"]},"</s>":{"id":"</s>","ids":[0],"tokens":["</s>"]}}}]})json",
     R"json({})json",
     R"json([])json",
     {
         {"hello world"sv, {259, 264}, {274, 259, 264, 275}, "hello world"sv},
     }},
    {"no_pretokenizer",
     R"json(null)json",
     R"json([])json",
     R"json(null)json",
     R"json({})json",
     R"json([])json",
     {
         {"hello world"sv, {259, 119, 261, 108, 100}, {259, 119, 261, 108, 100}, "helloworld"sv},
         {"helloж"sv, {259}, {259}, "hello"sv},
     }},
    {"unk",
     R"json(null)json",
     R"json([])json",
     R"json(null)json",
     R"json({"unk_token":"<unk>","fuse_unk":false})json",
     R"json(["<unk>"])json",
     {
         {"hello жж x"sv, {259, 274, 274, 274, 274, 120}, {259, 274, 274, 274, 274, 120}, "hello<unk><unk><unk><unk>x"sv},
         {"ж"sv, {274}, {274}, "<unk>"sv},
     }},
    {"unk_fused",
     R"json(null)json",
     R"json([])json",
     R"json(null)json",
     R"json({"unk_token":"<unk>","fuse_unk":true})json",
     R"json(["<unk>"])json",
     {
         {"hello жж xж"sv, {259, 274, 120, 274}, {259, 274, 120, 274}, "hello<unk>x<unk>"sv},
         {"жё"sv, {274}, {274}, "<unk>"sv},
     }},
    {"byte_fallback",
     R"json(null)json",
     R"json([])json",
     R"json(null)json",
     R"json({"unk_token":"<unk>","byte_fallback":true})json",
     R"json(["<unk>","<0xD0>","<0xB6>","<0x20>"])json",
     {
         {"ж ёhello"sv, {275, 276, 277, 274, 259}, {275, 276, 277, 274, 259}, "<0xD0><0xB6><0x20><unk>hello"sv},
     }},
    {"added_bytelevel",
     R"json({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})json",
     R"json([{"content":"caf\u00e9","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":false},{"content":"\u0120x","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":false},{"content":"\u65e5\u672c","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":true}])json",
     R"json(null)json",
     R"json({})json",
     R"json([])json",
     {
         {"a café Ġx 日本語"sv, {97, 32, 274, 32, 275, 32, 276, 232, 170, 158}, {97, 32, 274, 32, 275, 32, 276, 232, 170, 158}, "a caf�  x 日本語"sv},
         {"cafécafé"sv, {274, 274}, {274, 274}, "caf�caf�"sv},
     }},
    {"ignore_merges",
     R"json({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})json",
     R"json([])json",
     R"json(null)json",
     R"json({"ignore_merges":true})json",
     R"json(["xyz","hellohello"])json",
     {
         {"xyz xyz hellohello"sv, {274, 32, 120, 121, 122, 269, 259}, {274, 32, 120, 121, 122, 269, 259}, "xyz xyz hellohello"sv},
         {"hello"sv, {259}, {259}, "hello"sv},
     }},

};

TEST(SyntheticTokenizer, MatchesHuggingFace) {
  int checked = 0;
  for (const SyntheticVariant& v : kVariants) {
    SCOPED_TRACE(std::string(v.name));
    auto tok = Tokenizer::FromJson(
        SyntheticJson(v.pre_tokenizer, v.added_tokens, v.post_processor, v.model_overrides, v.extra_vocab),
        v.name);
    ASSERT_TRUE(tok.ok()) << tok.status().message();
    for (const SyntheticCase& c : v.cases) {
      SCOPED_TRACE("text: " + std::string(c.text));
      auto plain = tok->Encode(c.text, false);
      ASSERT_TRUE(plain.ok()) << plain.status().message();
      EXPECT_EQ(*plain, c.ids);
      auto special = tok->Encode(c.text, true);
      ASSERT_TRUE(special.ok());
      EXPECT_EQ(*special, c.with_special);
      auto decoded = tok->Decode(c.ids);
      ASSERT_TRUE(decoded.ok());
      EXPECT_EQ(*decoded, c.decoded);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 62);
}

// A valid base document to break one field at a time.
json BaseDoc() {
  return json::parse(SyntheticJson(R"({"type":"ByteLevel","add_prefix_space":false,"use_regex":true})",
                                   R"([{"content":"<s>","special":true,"normalized":false}])", "null", "{}", "[]"));
}

Status LoadError(const json& doc) {
  auto r = Tokenizer::FromJson(doc.dump(), "bad.json");
  return r.ok() ? Status::Ok() : r.status();
}

void ExpectError(const json& doc, StatusCode code, std::string_view needle) {
  const Status s = LoadError(doc);
  ASSERT_FALSE(s.ok()) << "loaded, expected an error mentioning " << needle;
  EXPECT_EQ(s.code(), code) << s.message();
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
  EXPECT_EQ(s.message().rfind("bad.json: ", 0), 0u) << s.message();
}

Tokenizer BaseTokenizerOrDie() {
  auto t = Tokenizer::FromJson(BaseDoc().dump(), "base.json");
  EXPECT_TRUE(t.ok()) << t.status().message();
  return std::move(t).value();
}

TEST(SyntheticTokenizer, BaseDocumentLoads) { EXPECT_TRUE(LoadError(BaseDoc()).ok()); }

TEST(SyntheticTokenizer, RejectsMalformedFiles) {
  EXPECT_EQ(Tokenizer::FromJson("{\"model\": ", "bad.json").status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(Tokenizer::FromJson("[1, 2]", "bad.json").status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(Tokenizer::FromJson("", "bad.json").status().code(), StatusCode::kCorrupt);

  json d = BaseDoc();
  d["model"]["type"] = "Unigram";
  ExpectError(d, StatusCode::kUnsupported, "model.type 'Unigram'");

  d = BaseDoc();
  d.erase("model");
  ExpectError(d, StatusCode::kCorrupt, "model");

  d = BaseDoc();
  d["model"]["vocab"]["h"] = -5;
  ExpectError(d, StatusCode::kCorrupt, "out of range");

  d = BaseDoc();
  d["model"]["vocab"]["h"] = "seven";
  ExpectError(d, StatusCode::kCorrupt, "model.vocab['h']");

  d = BaseDoc();
  d["model"]["vocab"]["zzz"] = 0;  // id 0 already belongs to the first byte
  ExpectError(d, StatusCode::kCorrupt, "is also used by");

  d = BaseDoc();
  d["model"]["merges"].push_back("q nothere");
  ExpectError(d, StatusCode::kCorrupt, "model.merges[18]: token 'nothere'");

  d = BaseDoc();
  d["model"]["merges"].push_back("q x");  // "qx" is not in the vocabulary
  ExpectError(d, StatusCode::kCorrupt, "merged token 'qx'");

  d = BaseDoc();
  d["model"]["merges"].push_back("a b c");
  ExpectError(d, StatusCode::kCorrupt, "model.merges[18]");

  d = BaseDoc();
  d["model"]["merges"].push_back(json::array({"a", 3}));
  ExpectError(d, StatusCode::kCorrupt, "model.merges[18]");

  d = BaseDoc();
  d["model"]["dropout"] = 0.1;
  ExpectError(d, StatusCode::kUnsupported, "model.dropout");

  d = BaseDoc();
  d["model"]["continuing_subword_prefix"] = "##";
  ExpectError(d, StatusCode::kUnsupported, "continuing_subword_prefix");

  d = BaseDoc();
  d["model"]["unk_token"] = "<nope>";
  ExpectError(d, StatusCode::kCorrupt, "model.unk_token");

  d = BaseDoc();
  d["normalizer"] = {{"type", "NFC"}};
  ExpectError(d, StatusCode::kUnsupported, "normalizer.type 'NFC'");

  d = BaseDoc();
  d["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "Lowercase"}}}}};
  ExpectError(d, StatusCode::kUnsupported, "normalizer.normalizers[0].type 'Lowercase'");

  d = BaseDoc();
  d["pre_tokenizer"] = {{"type", "Metaspace"}};
  ExpectError(d, StatusCode::kUnsupported, "pre_tokenizer.type 'Metaspace'");

  d = BaseDoc();
  d["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}}}}};
  ExpectError(d, StatusCode::kInvalidArgument, "pre_tokenizer.pretokenizers[0].pattern.Regex");

  d = BaseDoc();
  d["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}};
  ExpectError(d, StatusCode::kUnsupported, "pre_tokenizer.behavior 'Sideways'");

  d = BaseDoc();
  d["pre_tokenizer"] = {{"type", "Split"}, {"pattern", "a"}, {"behavior", "Isolated"}};
  ExpectError(d, StatusCode::kCorrupt, "pre_tokenizer.pattern");

  d = BaseDoc();
  d["decoder"] = {{"type", "WordPiece"}};
  ExpectError(d, StatusCode::kUnsupported, "decoder.type 'WordPiece'");

  d = BaseDoc();
  d["decoder"] = nullptr;
  ExpectError(d, StatusCode::kUnsupported, "decoder");

  d = BaseDoc();
  d["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"SpecialToken", {{"id", "<x>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}}}}}},
                         {"special_tokens", json::object()}};
  ExpectError(d, StatusCode::kCorrupt, "no entry for '<x>'");

  d = BaseDoc();
  d["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"SpecialToken", {{"id", "<x>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}}}}}},
                         {"special_tokens", {{"<x>", {{"id", "<x>"}, {"ids", {99999}}}}}}};
  ExpectError(d, StatusCode::kCorrupt, "special token id 99999");

  d = BaseDoc();
  d["post_processor"] = {{"type", "RobertaProcessing"}};
  ExpectError(d, StatusCode::kCorrupt, "cls or sep");

  d = BaseDoc();
  d["post_processor"] = {{"type", "ClsMagic"}};
  ExpectError(d, StatusCode::kUnsupported, "post_processor.type 'ClsMagic'");

  d = BaseDoc();
  d["added_tokens"][0]["id"] = 5;  // id 5 is the byte-alphabet token for byte 5
  ExpectError(d, StatusCode::kCorrupt, "added_tokens");

  d = BaseDoc();
  d["added_tokens"][0]["content"] = "h";  // in the vocabulary under another id
  ExpectError(d, StatusCode::kCorrupt, "added_tokens[0]: 'h' has id");

  d = BaseDoc();
  d["added_tokens"].push_back({{"id", 300}, {"content", "<s>"}});
  ExpectError(d, StatusCode::kCorrupt, "listed twice");

  d = BaseDoc();
  d["added_tokens"][0]["special"] = "yes";
  ExpectError(d, StatusCode::kCorrupt, "added_tokens[0].special");

  d = BaseDoc();
  d["added_tokens"][0]["id"] = int64_t{1} << 40;
  ExpectError(d, StatusCode::kCorrupt, "added_tokens[0].id");

  d = BaseDoc();
  d["added_tokens"] = "none";
  ExpectError(d, StatusCode::kCorrupt, "added_tokens");
}

// Small files must not make large tables or deep recursion: ids are bounded by the tokens a file
// defines, and nesting by a depth limit (both made the model reader take a gigabyte or crash).
TEST(SyntheticTokenizer, ResourcesAreBoundedByTheFile) {
  json d = BaseDoc();
  d["added_tokens"].push_back({{"id", 16777215}, {"content", "<far>"}, {"special", true}});
  ExpectError(d, StatusCode::kCorrupt, "token id 16777215 is far beyond the");
  // A normalizer nested 10,000 deep, written by hand (a JSON library would recurse to write it).
  std::string nested;
  for (int i = 0; i < 10000; ++i) nested += R"({"type":"Sequence","normalizers":[)";
  for (int i = 0; i < 10000; ++i) nested += "]}";
  std::string text = BaseDoc().dump();
  text.insert(text.find('{') + 1, "\"normalizer\":" + nested + ",");
  const auto r = Tokenizer::FromJson(text, "deep.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "deep.json: nested deeper than 64 levels");
  const auto c = BaseTokenizerOrDie().ApplyTokenizerConfig("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
                                                            "deep_config.json");
  EXPECT_EQ(c.message(), "deep_config.json: nested deeper than 64 levels");
}

TEST(SyntheticTokenizer, AcceptsBothMergeFormatsAndNullFields) {
  json d = BaseDoc();
  json pairs = json::array();
  for (const auto& m : d["model"]["merges"]) {
    const std::string s = m;
    pairs.push_back({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
  }
  d["model"]["merges"] = pairs;  // tokenizers >= 0.20 writes [left, right] pairs
  d["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array()}};
  d["post_processor"] = nullptr;
  auto tok = Tokenizer::FromJson(d.dump(), "pairs.json");
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  auto ids = tok->Encode("hello world", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (Ids{259, 264}));
  EXPECT_EQ(tok->bos_id(), 274);  // guessed from the name <s>
  EXPECT_EQ(tok->eos_id(), std::nullopt);
}

// Corrupted files must load or fail cleanly, never crash (run under ASan/UBSan too).
TEST(SyntheticTokenizer, SurvivesCorruptedFiles) {
  const std::string base = BaseDoc().dump();
  constexpr std::string_view kJsonChars = "{}[]\":,0-9e\\u";
  std::mt19937 rng(99);
  int loaded = 0;
  for (int iter = 0; iter < 300; ++iter) {
    std::string doc = base;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % doc.size();
      switch (rng() % 3) {
        case 0: doc[at] = static_cast<char>(rng()); break;
        case 1: doc.erase(at, 1 + rng() % 8); break;
        default: doc.insert(at, 1, kJsonChars[rng() % kJsonChars.size()]); break;
      }
      if (doc.empty()) doc = "{";
    }
    auto tok = Tokenizer::FromJson(doc, "fuzz.json");
    if (!tok.ok()) continue;
    ++loaded;
    auto ids = tok->Encode("hello <s> world 123", true);
    if (ids.ok()) {
      EXPECT_TRUE(tok->Decode(*ids).ok());
    }
  }
  EXPECT_GT(loaded, 0);  // some edits land in harmless places
}

// Whatever the bytes, kReplace encodes them and decoding gives the repaired text back.
TEST(SyntheticTokenizer, RandomBytesWithReplacement) {
  auto tok = Tokenizer::FromJson(BaseDoc().dump(), "base.json");
  ASSERT_TRUE(tok.ok());
  std::mt19937 rng(5);
  EncodeOptions opts;
  opts.add_special_tokens = false;
  opts.invalid_utf8 = InvalidUtf8Policy::kReplace;
  for (int iter = 0; iter < 500; ++iter) {
    std::string bytes(rng() % 40, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    auto ids = tok->Encode(bytes, opts);
    ASSERT_TRUE(ids.ok()) << ids.status().message();
    auto text = tok->Decode(*ids);
    ASSERT_TRUE(text.ok());
    EXPECT_EQ(*text, ToValidUtf8(bytes));
  }
}

}  // namespace
}  // namespace coda::text
