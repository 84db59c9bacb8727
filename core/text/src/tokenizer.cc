#include "coda/text/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <exception>
#include <new>
#include <unordered_map>
#include <utility>

#include <nlohmann/json.hpp>

#include "coda/file.h"
#include "coda/json.h"
#include "coda/text/unicode.h"
#include "pretokenizer.h"
#include "tokenizer_bpe.h"

namespace coda::text {
namespace {

using json = nlohmann::json;
using internal::BpeModel;
using internal::BpeOptions;
using internal::PreTokenizer;
using internal::PreTokenizerStep;
using internal::Regex;
using internal::SplitBehavior;

// Bounds on file content: far above any real tokenizer, low enough that a corrupt or
// hostile file cannot make us allocate without limit.
constexpr size_t kMaxVocab = size_t{1} << 22;
constexpr size_t kMaxMerges = size_t{1} << 22;
constexpr size_t kMaxAddedTokens = size_t{1} << 20;
constexpr int64_t kMaxId = (int64_t{1} << 24) - 1;
constexpr size_t kMaxTokenBytes = 4096;
constexpr size_t kMaxTemplateTokens = 64;
constexpr uint64_t kMaxTokenizerJsonBytes = uint64_t{512} << 20;
constexpr uint64_t kMaxConfigJsonBytes = uint64_t{64} << 20;
// Ids index tables, so they must be about as dense as the tokens a file defines: a handful of
// tokens may not claim ids in the millions.
constexpr int64_t kMaxIdGap = 1 << 16;

Status Bad(std::string_view path, std::string_view what) {
  return Corrupt(std::string(path) + ": " + std::string(what));
}

// The member `key` of `obj`, or nullptr when absent or null (HF treats both alike).
const json* Member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string Path(std::string_view parent, std::string_view key) {
  return std::string(parent) + "." + std::string(key);
}
std::string Path(std::string_view parent, size_t index) {
  return std::string(parent) + "[" + std::to_string(index) + "]";
}

Result<bool> OptBool(const json& obj, const char* key, bool def, std::string_view path) {
  const json* v = Member(obj, key);
  if (v == nullptr) return def;
  if (!v->is_boolean()) return Bad(Path(path, key), "expected a boolean");
  return v->get<bool>();
}

Result<std::optional<std::string>> OptString(const json& obj, const char* key, std::string_view path) {
  const json* v = Member(obj, key);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) return Bad(Path(path, key), "expected a string");
  return std::optional<std::string>(v->get<std::string>());
}

Result<std::string> TypeOf(const json& obj, std::string_view path) {
  if (!obj.is_object()) return Bad(path, "expected an object");
  const json* t = Member(obj, "type");
  if (t == nullptr || !t->is_string()) return Bad(Path(path, "type"), "missing or not a string");
  return t->get<std::string>();
}

Status UnsupportedType(std::string_view path, std::string_view type) {
  return Unsupported(std::string(path) + ".type '" + std::string(type) + "' is not supported");
}

Result<TokenId> ParseId(const json& v, std::string_view path) {
  if (!v.is_number_integer()) return Bad(path, "expected an integer token id");
  const int64_t id = v.get<int64_t>();
  if (id < 0 || id > kMaxId) return Bad(path, "token id " + std::to_string(id) + " is out of range");
  return static_cast<TokenId>(id);
}

bool IsUtf8(std::string_view s) { return FindInvalidUtf8(s) == std::string_view::npos; }

// Start of the UTF-8 character that ends at s[end] (exclusive); s is valid UTF-8.
size_t PrevCharStart(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

// Byte trie over added-token contents for leftmost-longest matching (the aho-corasick
// MatchKind::LeftmostLongest that Hugging Face uses).
class AddedTrie {
 public:
  AddedTrie() : nodes_(1) {}
  void Insert(std::string_view s, int32_t token_index) {
    int32_t n = 0;
    for (unsigned char c : s) {
      int32_t child = Child(n, c);
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[n].kids.push_back({c, child});
        nodes_.emplace_back();
      }
      n = child;
    }
    nodes_[n].token = token_index;
    first_[static_cast<unsigned char>(s[0])] = true;
    empty_ = false;
  }
  bool empty() const { return empty_; }
  bool MayStartAt(unsigned char c) const { return first_[c]; }
  // Longest token starting at s[pos]: {length, token index}, or {0, -1}.
  std::pair<size_t, int32_t> LongestAt(std::string_view s, size_t pos) const {
    std::pair<size_t, int32_t> best{0, -1};
    int32_t n = 0;
    for (size_t i = pos; i < s.size(); ++i) {
      n = Child(n, static_cast<unsigned char>(s[i]));
      if (n < 0) break;
      if (nodes_[n].token >= 0) best = {i + 1 - pos, nodes_[n].token};
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> kids;
    int32_t token = -1;
  };
  int32_t Child(int32_t n, unsigned char c) const {
    for (const auto& [k, child] : nodes_[n].kids)
      if (k == c) return child;
    return -1;
  }
  std::vector<Node> nodes_;
  std::array<bool, 256> first_{};
  bool empty_ = true;
};

// A run of input: plain text still to be tokenized (id < 0) or a matched added token.
struct Piece {
  std::string_view text;
  TokenId id = -1;
};

constexpr uint8_t kFlagValid = 1;
constexpr uint8_t kFlagSpecial = 2;

}  // namespace

struct Tokenizer::Impl {
  BpeModel model;
  PreTokenizer pre_tokenizer;
  std::vector<AddedToken> added;
  std::unordered_map<std::string, size_t, internal::StringHash, std::equal_to<>> added_index;
  AddedTrie raw_trie;         // added tokens with normalized=false, matched first
  AddedTrie normalized_trie;  // normalized=true, matched in what is left
  std::shared_ptr<const Regex> word_char;  // single_word: Rust regex \w, one character
  std::vector<std::string> id_token;
  std::vector<std::string> id_bytes;
  std::vector<uint8_t> id_flags;
  std::vector<TokenId> prefix;  // from post_processor
  std::vector<TokenId> suffix;

  Status ParseModel(const json& doc);
  Status ParseAddedTokens(const json& doc);
  Status ParseNormalizer(const json& n, const std::string& path) const;
  Status ParsePreTokenizer(const json& p, const std::string& path);
  Status ParsePostProcessor(const json& p, const std::string& path);
  Status ParseDecoder(const json& d, const std::string& path) const;
  Status BuildIdTables();
  Result<std::vector<TokenId>> SpecialTokenIds(const json& entry, const std::string& path) const;

  std::optional<TokenId> Lookup(std::string_view token) const {
    if (auto it = added_index.find(token); it != added_index.end()) return added[it->second].id;
    return model.Find(token);
  }
  Result<bool> IsWordChar(std::string_view s, size_t begin, size_t end) const {
    return word_char->Search(s.substr(begin, end - begin));
  }
  Status SplitAdded(const AddedTrie& trie, AddedTokenMatching mode, const std::vector<Piece>& in,
                    std::vector<Piece>* out) const;
  struct Scratch {
    internal::PreTokenizerScratch pre;
    internal::BpeScratch bpe;
  };
  Status EncodeText(std::string_view text, Scratch* scratch, std::vector<TokenId>* ids) const;
};

Status Tokenizer::Impl::ParseModel(const json& doc) {
  const json* m = Member(doc, "model");
  if (m == nullptr) return Bad("model", "missing");
  CODA_ASSIGN_OR_RETURN(std::string type, TypeOf(*m, "model"));
  if (type != "BPE") return UnsupportedType("model", type);

  if (const json* d = Member(*m, "dropout")) {
    if (!d->is_number()) return Bad("model.dropout", "expected a number or null");
    if (d->get<double>() != 0.0) return Unsupported("model.dropout: BPE dropout is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    CODA_ASSIGN_OR_RETURN(auto v, OptString(*m, key, "model"));
    if (v && !v->empty()) return Unsupported("model." + std::string(key) + " is not supported");
  }

  const json* vocab_json = Member(*m, "vocab");
  if (vocab_json == nullptr || !vocab_json->is_object()) return Bad("model.vocab", "missing or not an object");
  if (vocab_json->size() > kMaxVocab)
    return OutOfRange("model.vocab: " + std::to_string(vocab_json->size()) + " entries exceed the limit");
  internal::VocabMap vocab;
  vocab.reserve(vocab_json->size());
  std::unordered_map<TokenId, const std::string*> by_id;
  by_id.reserve(vocab_json->size());
  for (auto it = vocab_json->begin(); it != vocab_json->end(); ++it) {
    const std::string& token = it.key();
    const std::string path = "model.vocab['" + token + "']";
    if (token.empty() || token.size() > kMaxTokenBytes) return Bad(path, "bad token length");
    if (!IsUtf8(token)) return Bad("model.vocab", "a token is not valid UTF-8");
    CODA_ASSIGN_OR_RETURN(TokenId id, ParseId(it.value(), path));
    auto [slot, fresh] = by_id.emplace(id, &token);
    if (!fresh) return Bad(path, "id " + std::to_string(id) + " is also used by '" + *slot->second + "'");
    vocab.emplace(token, id);
  }

  BpeOptions opts;
  CODA_ASSIGN_OR_RETURN(opts.fuse_unk, OptBool(*m, "fuse_unk", false, "model"));
  CODA_ASSIGN_OR_RETURN(opts.byte_fallback, OptBool(*m, "byte_fallback", false, "model"));
  CODA_ASSIGN_OR_RETURN(opts.ignore_merges, OptBool(*m, "ignore_merges", false, "model"));
  CODA_ASSIGN_OR_RETURN(auto unk, OptString(*m, "unk_token", "model"));
  if (unk) {
    auto it = vocab.find(*unk);
    if (it == vocab.end()) return Bad("model.unk_token", "'" + *unk + "' is not in model.vocab");
    opts.unk_id = it->second;
  }
  opts.byte_level = pre_tokenizer.byte_level();
  model.Init(std::move(vocab), opts);

  const json* merges = Member(*m, "merges");
  static const json kNoMerges = json::array();
  if (merges == nullptr) merges = &kNoMerges;  // a vocabulary of whole words is legal
  if (!merges->is_array()) return Bad("model.merges", "expected an array");
  if (merges->size() > kMaxMerges)
    return OutOfRange("model.merges: " + std::to_string(merges->size()) + " entries exceed the limit");
  model.ReserveMerges(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& e = (*merges)[i];
    std::string_view left, right;
    std::string storage;
    if (e.is_string()) {  // "left right", the format before tokenizers 0.20
      const std::string& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        return Bad(Path("model.merges", i), "expected two tokens separated by one space");
      left = std::string_view(s).substr(0, sp);
      right = std::string_view(s).substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      left = e[0].get_ref<const std::string&>();
      right = e[1].get_ref<const std::string&>();
    } else {
      return Bad(Path("model.merges", i), "expected \"a b\" or [\"a\", \"b\"]");
    }
    CODA_RETURN_IF_ERROR(model.AddMerge(left, right, static_cast<uint32_t>(i)));
  }
  return Status::Ok();
}

Status Tokenizer::Impl::ParseAddedTokens(const json& doc) {
  const json* list = Member(doc, "added_tokens");
  if (list == nullptr) return Status::Ok();
  if (!list->is_array()) return Bad("added_tokens", "expected an array");
  if (list->size() > kMaxAddedTokens) return OutOfRange("added_tokens: too many entries");
  bool any_single_word = false;
  for (size_t i = 0; i < list->size(); ++i) {
    const json& e = (*list)[i];
    const std::string path = Path("added_tokens", i);
    if (!e.is_object()) return Bad(path, "expected an object");
    AddedToken t;
    const json* id = Member(e, "id");
    if (id == nullptr) return Bad(Path(path, "id"), "missing");
    CODA_ASSIGN_OR_RETURN(t.id, ParseId(*id, Path(path, "id")));
    CODA_ASSIGN_OR_RETURN(auto content, OptString(e, "content", path));
    if (!content || content->empty()) continue;  // Hugging Face ignores empty added tokens
    if (content->size() > kMaxTokenBytes || !IsUtf8(*content))
      return Bad(Path(path, "content"), "too long or not valid UTF-8");
    t.content = std::move(*content);
    CODA_ASSIGN_OR_RETURN(t.special, OptBool(e, "special", false, path));
    CODA_ASSIGN_OR_RETURN(t.single_word, OptBool(e, "single_word", false, path));
    CODA_ASSIGN_OR_RETURN(t.lstrip, OptBool(e, "lstrip", false, path));
    CODA_ASSIGN_OR_RETURN(t.rstrip, OptBool(e, "rstrip", false, path));
    CODA_ASSIGN_OR_RETURN(t.normalized, OptBool(e, "normalized", !t.special, path));

    if (auto vid = model.Find(t.content); vid && *vid != t.id) {
      return Bad(path, "'" + t.content + "' has id " + std::to_string(t.id) + " but model.vocab gives " +
                           std::to_string(*vid));
    }
    if (auto it = added_index.find(t.content); it != added_index.end()) {
      if (added[it->second].id != t.id) return Bad(path, "'" + t.content + "' is listed twice with different ids");
      continue;
    }
    any_single_word = any_single_word || t.single_word;
    added_index.emplace(t.content, added.size());
    added.push_back(std::move(t));
  }
  for (size_t i = 0; i < added.size(); ++i) {
    (added[i].normalized ? normalized_trie : raw_trie).Insert(added[i].content, static_cast<int32_t>(i));
  }
  if (any_single_word) {
    // Rust regex's Unicode \w, which Hugging Face uses for the single_word test.
    CODA_ASSIGN_OR_RETURN(word_char,
                          Regex::Compile(R"(^[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])", "single_word"));
  }
  return Status::Ok();
}

Status Tokenizer::Impl::ParseNormalizer(const json& n, const std::string& path) const {
  if (n.is_null()) return Status::Ok();
  CODA_ASSIGN_OR_RETURN(std::string type, TypeOf(n, path));
  if (type != "Sequence") return UnsupportedType(path, type);
  const json* list = Member(n, "normalizers");
  if (list == nullptr || !list->is_array()) return Bad(Path(path, "normalizers"), "expected an array");
  for (size_t i = 0; i < list->size(); ++i)
    CODA_RETURN_IF_ERROR(ParseNormalizer((*list)[i], Path(Path(path, "normalizers"), i)));
  return Status::Ok();
}

Status Tokenizer::Impl::ParsePreTokenizer(const json& p, const std::string& path) {
  if (p.is_null()) return Status::Ok();
  CODA_ASSIGN_OR_RETURN(std::string type, TypeOf(p, path));
  if (type == "Sequence") {
    const json* list = Member(p, "pretokenizers");
    if (list == nullptr || !list->is_array()) return Bad(Path(path, "pretokenizers"), "expected an array");
    for (size_t i = 0; i < list->size(); ++i)
      CODA_RETURN_IF_ERROR(ParsePreTokenizer((*list)[i], Path(Path(path, "pretokenizers"), i)));
    return Status::Ok();
  }
  PreTokenizerStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    CODA_ASSIGN_OR_RETURN(step.add_prefix_space, OptBool(p, "add_prefix_space", true, path));
    CODA_ASSIGN_OR_RETURN(bool use_regex, OptBool(p, "use_regex", true, path));
    if (use_regex) {
      CODA_ASSIGN_OR_RETURN(step.regex, Regex::Compile(PreTokenizer::kByteLevelPattern, path));
    }
    pre_tokenizer.AddStep(std::move(step));
    return Status::Ok();
  }
  if (type != "Split") return UnsupportedType(path, type);
  const json* pattern = Member(p, "pattern");
  const std::string ppath = Path(path, "pattern");
  if (pattern == nullptr || !pattern->is_object() || pattern->size() != 1) {
    return Bad(ppath, "expected {\"Regex\": ...} or {\"String\": ...}");
  }
  if (const json* re = Member(*pattern, "Regex"); re != nullptr && re->is_string()) {
    const std::string& s = re->get_ref<const std::string&>();
    if (!IsUtf8(s)) return Bad(ppath, "not valid UTF-8");
    CODA_ASSIGN_OR_RETURN(step.regex, Regex::Compile(s, ppath + ".Regex"));
  } else if (const json* lit = Member(*pattern, "String"); lit != nullptr && lit->is_string()) {
    step.literal = lit->get<std::string>();
    step.literal_pattern = true;
    if (!IsUtf8(step.literal)) return Bad(ppath, "not valid UTF-8");
  } else {
    return Bad(ppath, "expected {\"Regex\": string} or {\"String\": string}");
  }
  CODA_ASSIGN_OR_RETURN(auto behavior, OptString(p, "behavior", path));
  if (!behavior) return Bad(Path(path, "behavior"), "missing");
  static constexpr std::pair<std::string_view, SplitBehavior> kBehaviors[] = {
      {"Removed", SplitBehavior::kRemoved},
      {"Isolated", SplitBehavior::kIsolated},
      {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
      {"MergedWithNext", SplitBehavior::kMergedWithNext},
      {"Contiguous", SplitBehavior::kContiguous},
  };
  bool known = false;
  for (const auto& [name, b] : kBehaviors) {
    if (*behavior == name) step.behavior = b, known = true;
  }
  if (!known) return Unsupported(Path(path, "behavior") + " '" + *behavior + "' is not supported");
  CODA_ASSIGN_OR_RETURN(step.invert, OptBool(p, "invert", false, path));
  pre_tokenizer.AddStep(std::move(step));
  return Status::Ok();
}

// The ids of a post-processor special-token reference: TemplateProcessing's
// special_tokens entry {"ids": [...]}, or Bert/Roberta's ["[CLS]", 101].
Result<std::vector<TokenId>> Tokenizer::Impl::SpecialTokenIds(const json& entry, const std::string& path) const {
  std::vector<TokenId> ids;
  const json* list = nullptr;
  if (entry.is_array() && entry.size() == 2 && entry[0].is_string()) {
    CODA_ASSIGN_OR_RETURN(TokenId id, ParseId(entry[1], Path(path, 1)));
    ids.push_back(id);
  } else if ((list = Member(entry, "ids")) != nullptr && list->is_array()) {
    if (list->size() > kMaxTemplateTokens) return Bad(Path(path, "ids"), "too many ids");
    for (size_t i = 0; i < list->size(); ++i) {
      CODA_ASSIGN_OR_RETURN(TokenId id, ParseId((*list)[i], Path(Path(path, "ids"), i)));
      ids.push_back(id);
    }
  } else {
    return Bad(path, "expected a special token entry");
  }
  return ids;
}

Status Tokenizer::Impl::ParsePostProcessor(const json& p, const std::string& path) {
  if (p.is_null()) return Status::Ok();
  CODA_ASSIGN_OR_RETURN(std::string type, TypeOf(p, path));
  std::vector<TokenId> pre, post;
  if (type == "ByteLevel") {
    return Status::Ok();  // only adjusts offsets
  } else if (type == "Sequence") {
    const json* list = Member(p, "processors");
    if (list == nullptr || !list->is_array()) return Bad(Path(path, "processors"), "expected an array");
    for (size_t i = 0; i < list->size(); ++i)
      CODA_RETURN_IF_ERROR(ParsePostProcessor((*list)[i], Path(Path(path, "processors"), i)));
    return Status::Ok();
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    const json* cls = Member(p, "cls");
    const json* sep = Member(p, "sep");
    if (cls == nullptr || sep == nullptr) return Bad(path, "missing cls or sep");
    CODA_ASSIGN_OR_RETURN(pre, SpecialTokenIds(*cls, Path(path, "cls")));
    CODA_ASSIGN_OR_RETURN(post, SpecialTokenIds(*sep, Path(path, "sep")));
  } else if (type == "TemplateProcessing") {
    const json* single = Member(p, "single");
    const json* specials = Member(p, "special_tokens");
    if (single == nullptr || !single->is_array()) return Bad(Path(path, "single"), "expected an array");
    if (single->size() > kMaxTemplateTokens) return Bad(Path(path, "single"), "too many pieces");
    bool seen_a = false;
    for (size_t i = 0; i < single->size(); ++i) {
      const json& piece = (*single)[i];
      const std::string ipath = Path(Path(path, "single"), i);
      if (const json* seq = Member(piece, "Sequence")) {
        const json* id = Member(*seq, "id");
        if (id == nullptr || *id != "A" || seen_a) return Unsupported(ipath + ": only one sequence $A is supported");
        seen_a = true;
      } else if (const json* sp = Member(piece, "SpecialToken")) {
        CODA_ASSIGN_OR_RETURN(auto name, OptString(*sp, "id", ipath + ".SpecialToken"));
        if (!name) return Bad(ipath + ".SpecialToken.id", "missing");
        const json* entry = specials ? Member(*specials, name->c_str()) : nullptr;
        if (entry == nullptr) return Bad(Path(path, "special_tokens"), "no entry for '" + *name + "'");
        CODA_ASSIGN_OR_RETURN(auto ids, SpecialTokenIds(*entry, Path(path, "special_tokens") + "['" + *name + "']"));
        (seen_a ? post : pre).insert((seen_a ? post : pre).end(), ids.begin(), ids.end());
      } else {
        return Bad(ipath, "expected Sequence or SpecialToken");
      }
    }
    if (!seen_a) return Bad(Path(path, "single"), "has no $A sequence");
  } else {
    return UnsupportedType(path, type);
  }
  // A later processor wraps the output of the earlier ones.
  prefix.insert(prefix.begin(), pre.begin(), pre.end());
  suffix.insert(suffix.end(), post.begin(), post.end());
  return Status::Ok();
}

Status Tokenizer::Impl::ParseDecoder(const json& d, const std::string& path) const {
  if (d.is_null()) return Unsupported(path + ": a missing decoder is not supported (expected ByteLevel)");
  CODA_ASSIGN_OR_RETURN(std::string type, TypeOf(d, path));
  if (type == "ByteLevel") return Status::Ok();
  if (type != "Sequence") return UnsupportedType(path, type);
  const json* list = Member(d, "decoders");
  if (list == nullptr || !list->is_array() || list->empty()) return Bad(Path(path, "decoders"), "expected a non-empty array");
  for (size_t i = 0; i < list->size(); ++i)
    CODA_RETURN_IF_ERROR(ParseDecoder((*list)[i], Path(Path(path, "decoders"), i)));
  return Status::Ok();
}

Status Tokenizer::Impl::BuildIdTables() {
  TokenId max_id = -1;
  for (const auto& [token, id] : model.vocab()) max_id = std::max(max_id, id);
  for (const auto& t : added) max_id = std::max(max_id, t.id);
  const int64_t defined = static_cast<int64_t>(model.vocab().size() + added.size());
  if (max_id >= 2 * defined + kMaxIdGap)
    return Bad("model.vocab", "token id " + std::to_string(max_id) + " is far beyond the " + std::to_string(defined) +
                                  " tokens defined (ids must be nearly dense)");
  const size_t n = static_cast<size_t>(max_id + 1);
  id_token.assign(n, std::string());
  id_flags.assign(n, 0);
  for (const auto& [token, id] : model.vocab()) {
    id_token[id] = token;
    id_flags[id] = kFlagValid;
  }
  for (const auto& t : added) {
    if ((id_flags[t.id] & kFlagValid) && id_token[t.id] != t.content) {
      return Bad("added_tokens", "id " + std::to_string(t.id) + " ('" + t.content + "') is model.vocab token '" +
                                     id_token[t.id] + "'");
    }
    id_token[t.id] = t.content;
    id_flags[t.id] = kFlagValid | (t.special ? kFlagSpecial : 0);
  }
  id_bytes.resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (id_flags[i] & kFlagValid) id_bytes[i] = internal::ByteLevelDecode(id_token[i]);
  }
  for (const auto* list : {&prefix, &suffix}) {
    for (TokenId id : *list) {
      if (static_cast<size_t>(id) >= n || !(id_flags[id] & kFlagValid))
        return Bad("post_processor", "special token id " + std::to_string(id) + " is not in the vocabulary");
    }
  }
  return Status::Ok();
}

Status Tokenizer::Impl::SplitAdded(const AddedTrie& trie, AddedTokenMatching mode, const std::vector<Piece>& in,
                                   std::vector<Piece>* out) const {
  out->clear();
  for (const Piece& piece : in) {
    if (piece.id >= 0) {
      out->push_back(piece);
      continue;
    }
    const std::string_view s = piece.text;
    size_t emitted = 0;  // end of the last emitted part
    size_t pos = 0;
    while (pos < s.size()) {
      if (!trie.MayStartAt(static_cast<unsigned char>(s[pos]))) {
        ++pos;
        continue;
      }
      const auto [len, index] = trie.LongestAt(s, pos);
      if (len == 0) {
        ++pos;
        continue;
      }
      const AddedToken& t = added[static_cast<size_t>(index)];
      size_t start = pos;
      size_t stop = pos + len;
      pos = stop;  // matches never overlap, even when one is rejected below
      if (mode == AddedTokenMatching::kNonSpecial && t.special) continue;
      if (t.single_word) {
        bool glued = false;
        if (start > 0) {
          CODA_ASSIGN_OR_RETURN(bool w, IsWordChar(s, PrevCharStart(s, start), start));
          glued = w;
        }
        if (!glued && stop < s.size()) {
          size_t next = stop;
          DecodeUtf8(s, &next);
          CODA_ASSIGN_OR_RETURN(bool w, IsWordChar(s, stop, next));
          glued = w;
        }
        if (glued) continue;
      }
      if (t.lstrip) {
        size_t ws = start;
        while (ws > emitted) {
          size_t prev = PrevCharStart(s, ws);
          size_t at = prev;
          if (!IsUnicodeWhiteSpace(DecodeUtf8(s, &at))) break;
          ws = prev;
        }
        start = ws;  // never reaches into what the previous match took
      }
      if (t.rstrip) {
        while (stop < s.size()) {
          size_t next = stop;
          if (!IsUnicodeWhiteSpace(DecodeUtf8(s, &next))) break;
          stop = next;
        }
      }
      // Only a token that starts with whitespace can begin inside the previous token's
      // rstrip; Hugging Face would emit overlapping parts there, we keep the first.
      if (start < emitted) continue;
      if (start > emitted) out->push_back({s.substr(emitted, start - emitted), -1});
      out->push_back({s.substr(start, stop - start), t.id});
      emitted = stop;
    }
    if (emitted < s.size()) out->push_back({s.substr(emitted), -1});
  }
  return Status::Ok();
}

Status Tokenizer::Impl::EncodeText(std::string_view text, Scratch* scratch, std::vector<TokenId>* ids) const {
  return pre_tokenizer.Split(text, &scratch->pre,
                             [&](std::string_view word) { model.Tokenize(word, &scratch->bpe, ids); });
}

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {
  prefix_ = impl_->prefix;
  suffix_ = impl_->suffix;
  // Guess BOS/EOS from well-known names; tokenizer_config.json overrides.
  static constexpr std::string_view kBos[] = {"<｜begin▁of▁sentence｜>", "<|begin_of_text|>", "<s>", "<bos>",
                                              "<|startoftext|>"};
  static constexpr std::string_view kEos[] = {"<｜end▁of▁sentence｜>", "<|end_of_text|>", "</s>", "<eos>",
                                              "<|endoftext|>"};
  for (std::string_view name : kBos) {
    if (!bos_id_) bos_id_ = TokenToId(name);
  }
  for (std::string_view name : kEos) {
    if (!eos_id_) eos_id_ = TokenToId(name);
  }
}

Result<Tokenizer> Tokenizer::FromJson(std::string_view json_text, std::string_view source_name) {
  auto impl = std::make_shared<Impl>();
  Status st;
  // nlohmann::json throws; nothing may escape this boundary.
  auto parsed = ParseJson(json_text, std::string(source_name));
  if (!parsed.ok()) return parsed.status();
  try {
    const json& doc = *parsed;
    if (!doc.is_object()) return Corrupt("not a JSON object").WithContext(source_name);
    // The pre-tokenizer decides whether BPE works on bytes, so it is parsed first.
    if (const json* n = Member(doc, "normalizer")) st = impl->ParseNormalizer(*n, "normalizer");
    if (st.ok()) {
      const json* p = Member(doc, "pre_tokenizer");
      st = impl->ParsePreTokenizer(p ? *p : json(), "pre_tokenizer");
    }
    if (st.ok()) st = impl->ParseModel(doc);
    if (st.ok()) st = impl->ParseAddedTokens(doc);
    if (st.ok()) {
      const json* p = Member(doc, "post_processor");
      st = impl->ParsePostProcessor(p ? *p : json(), "post_processor");
    }
    if (st.ok()) {
      const json* d = Member(doc, "decoder");
      st = impl->ParseDecoder(d ? *d : json(), "decoder");
    }
    if (st.ok()) st = impl->BuildIdTables();
  } catch (const std::bad_alloc&) {
    return OutOfMemory("out of memory while loading the tokenizer").WithContext(source_name);
  } catch (const std::exception& e) {
    return Corrupt(std::string("unexpected content: ") + e.what()).WithContext(source_name);
  }
  if (!st.ok()) return st.WithContext(source_name);
  return Tokenizer(std::move(impl));
}

Result<Tokenizer> Tokenizer::FromDirectory(const std::string& dir) {
  const std::string path = dir + "/tokenizer.json";
  if (!FileExists(path)) return NotFound(path + ": no such file");
  CODA_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path, kMaxTokenizerJsonBytes));
  CODA_ASSIGN_OR_RETURN(Tokenizer tok, FromJson(text, path));
  const std::string config_path = dir + "/tokenizer_config.json";
  if (FileExists(config_path)) {
    CODA_ASSIGN_OR_RETURN(std::string config, ReadTextFile(config_path, kMaxConfigJsonBytes));
    CODA_RETURN_IF_ERROR(tok.ApplyTokenizerConfig(config, config_path));
  }
  return tok;
}

Status Tokenizer::ApplyTokenizerConfig(std::string_view config_json, std::string_view source_name) {
  CODA_ASSIGN_OR_RETURN(const json doc, ParseJson(config_json, std::string(source_name)));
  try {
    if (!doc.is_object()) return Corrupt("not a JSON object").WithContext(source_name);
    // Either "text" or {"__type": "AddedToken", "content": "text", ...}.
    auto token_text = [&](const char* key) -> Result<std::optional<std::string>> {
      const json* v = Member(doc, key);
      if (v == nullptr) return std::optional<std::string>();
      if (v->is_string()) return std::optional<std::string>(v->get<std::string>());
      if (const json* c = Member(*v, "content"); c != nullptr && c->is_string())
        return std::optional<std::string>(c->get<std::string>());
      return Bad(key, "expected a string or an object with \"content\"");
    };
    std::optional<TokenId> bos = bos_id_, eos = eos_id_;
    for (auto [key, slot] : {std::pair{"bos_token", &bos}, std::pair{"eos_token", &eos}}) {
      CODA_ASSIGN_OR_RETURN(auto text, token_text(key));
      if (!text) continue;
      *slot = TokenToId(*text);
      if (!*slot) return NotFound(std::string(key) + " '" + *text + "' is not in the vocabulary").WithContext(source_name);
    }
    const json* add_bos = Member(doc, "add_bos_token");
    const json* add_eos = Member(doc, "add_eos_token");
    std::vector<TokenId> prefix = prefix_, suffix = suffix_;
    if (add_bos != nullptr || add_eos != nullptr) {
      CODA_ASSIGN_OR_RETURN(bool want_bos, OptBool(doc, "add_bos_token", false, ""));
      CODA_ASSIGN_OR_RETURN(bool want_eos, OptBool(doc, "add_eos_token", false, ""));
      prefix.clear();
      suffix.clear();
      if (want_bos) {
        if (!bos) return Corrupt("add_bos_token is true but there is no bos_token").WithContext(source_name);
        prefix.push_back(*bos);
      }
      if (want_eos) {
        if (!eos) return Corrupt("add_eos_token is true but there is no eos_token").WithContext(source_name);
        suffix.push_back(*eos);
      }
    }
    bos_id_ = bos;
    eos_id_ = eos;
    prefix_ = std::move(prefix);
    suffix_ = std::move(suffix);
  } catch (const std::exception& e) {
    return Corrupt(std::string("unexpected content: ") + e.what()).WithContext(source_name);
  }
  return Status::Ok();
}

Status Tokenizer::SetBosToken(std::string_view content) {
  auto id = TokenToId(content);
  if (!id) return NotFound("bos token '" + std::string(content) + "' is not in the vocabulary");
  bos_id_ = id;
  return Status::Ok();
}

Status Tokenizer::SetEosToken(std::string_view content) {
  auto id = TokenToId(content);
  if (!id) return NotFound("eos token '" + std::string(content) + "' is not in the vocabulary");
  eos_id_ = id;
  return Status::Ok();
}

Status Tokenizer::SetSpecialTokenTemplate(std::vector<TokenId> prefix, std::vector<TokenId> suffix) {
  for (const auto* list : {&prefix, &suffix}) {
    for (TokenId id : *list)
      if (!IsValidId(id)) return InvalidArgument("special token id " + std::to_string(id) + " is not in the vocabulary");
  }
  prefix_ = std::move(prefix);
  suffix_ = std::move(suffix);
  return Status::Ok();
}

Result<std::vector<TokenId>> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  EncodeOptions options;
  options.add_special_tokens = add_special_tokens;
  return Encode(text, options);
}

Result<std::vector<TokenId>> Tokenizer::Encode(std::string_view text, const EncodeOptions& options) const {
  if (text.size() >= kMaxEncodeBytes) {
    return OutOfRange("text of " + std::to_string(text.size()) + " bytes exceeds the Encode limit");
  }
  std::string repaired;
  if (const size_t bad = FindInvalidUtf8(text); bad != std::string_view::npos) {
    if (options.invalid_utf8 == InvalidUtf8Policy::kError) {
      char byte[8];
      std::snprintf(byte, sizeof(byte), "0x%02X", static_cast<unsigned char>(text[bad]));
      return InvalidArgument("text is not valid UTF-8 at byte offset " + std::to_string(bad) + " (byte " + byte + ")");
    }
    repaired = ToValidUtf8(text);
    text = repaired;
  }
  const Impl& im = *impl_;
  std::vector<TokenId> ids;
  try {
    ids.reserve(text.size() / 4 + prefix_.size() + suffix_.size() + 1);
    if (options.add_special_tokens) ids.insert(ids.end(), prefix_.begin(), prefix_.end());
    std::vector<Piece> pieces{{text, -1}};
    if (options.added_tokens != AddedTokenMatching::kNone) {
      std::vector<Piece> tmp;
      // Hugging Face order: tokens matched on raw text first, then normalized ones.
      if (!im.raw_trie.empty()) {
        CODA_RETURN_IF_ERROR(im.SplitAdded(im.raw_trie, options.added_tokens, pieces, &tmp));
        pieces.swap(tmp);
      }
      if (!im.normalized_trie.empty()) {
        CODA_RETURN_IF_ERROR(im.SplitAdded(im.normalized_trie, options.added_tokens, pieces, &tmp));
        pieces.swap(tmp);
      }
    }
    Impl::Scratch scratch;
    for (const Piece& p : pieces) {
      if (p.id >= 0) {
        ids.push_back(p.id);
      } else {
        CODA_RETURN_IF_ERROR(im.EncodeText(p.text, &scratch, &ids));
      }
    }
    if (options.add_special_tokens) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  } catch (const std::bad_alloc&) {
    return OutOfMemory("out of memory while encoding " + std::to_string(text.size()) + " bytes");
  }
  return ids;
}

Result<std::string> Tokenizer::Decode(std::span<const TokenId> ids, bool skip_special_tokens) const {
  const Impl& im = *impl_;
  std::string bytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    const TokenId id = ids[i];
    if (!IsValidId(id)) {
      return InvalidArgument("Decode: ids[" + std::to_string(i) + "] = " + std::to_string(id) +
                             " is not in the vocabulary");
    }
    if (skip_special_tokens && (im.id_flags[id] & kFlagSpecial)) continue;
    bytes += im.id_bytes[id];
  }
  if (FindInvalidUtf8(bytes) == std::string_view::npos) return bytes;
  return ToValidUtf8(bytes);
}

std::optional<TokenId> Tokenizer::TokenToId(std::string_view token) const { return impl_->Lookup(token); }

std::optional<std::string_view> Tokenizer::IdToToken(TokenId id) const {
  if (!IsValidId(id)) return std::nullopt;
  return std::string_view(impl_->id_token[id]);
}

std::optional<std::string_view> Tokenizer::TokenBytes(TokenId id) const {
  if (!IsValidId(id)) return std::nullopt;
  return std::string_view(impl_->id_bytes[id]);
}

bool Tokenizer::IsValidId(TokenId id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_flags.size() && (impl_->id_flags[id] & kFlagValid);
}

bool Tokenizer::IsSpecial(TokenId id) const { return IsValidId(id) && (impl_->id_flags[id] & kFlagSpecial); }

size_t Tokenizer::vocab_size() const { return impl_->id_flags.size(); }

std::span<const AddedToken> Tokenizer::added_tokens() const { return impl_->added; }

}  // namespace coda::text
