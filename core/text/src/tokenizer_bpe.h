// Byte-pair-encoding model (private to coda_text): vocabulary, merge ranks and the
// merge loop that turns one pre-tokenized word into token ids.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "coda/status.h"

namespace coda::text::internal {

using TokenId = int32_t;

// GPT-2's reversible byte alphabet: printable bytes stand for themselves, the other 68
// map to U+0100.. in order, so every byte string is a printable token string.
char32_t ByteToUnicode(uint8_t b);
// The byte a code point stands for, or -1 when it is not in the alphabet.
int UnicodeToByte(char32_t cp);
// `token` written in the byte alphabet, decoded back to raw bytes. Like Hugging Face's
// ByteLevel decoder, a token with any character outside the alphabet is kept as is.
std::string ByteLevelDecode(std::string_view token);

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using VocabMap = std::unordered_map<std::string, TokenId, StringHash, std::equal_to<>>;

struct BpeOptions {
  bool byte_level = false;  // words are raw bytes, spelled in the byte alphabet
  std::optional<TokenId> unk_id;
  bool fuse_unk = false;
  bool byte_fallback = false;  // unknown characters become <0xXX> byte tokens
  bool ignore_merges = false;  // a word that is itself in the vocabulary skips merging
};

// Open-addressing map from a (left id, right id) pair to its merge rank and result.
class MergeMap {
 public:
  struct Entry {
    uint64_t key;
    uint32_t rank;
    TokenId merged;
  };
  void Reserve(size_t n);
  // A later duplicate overwrites the earlier one, as in Hugging Face's HashMap collect.
  void Insert(TokenId left, TokenId right, uint32_t rank, TokenId merged);
  const Entry* Find(TokenId left, TokenId right) const {
    if (slots_.empty()) return nullptr;
    const uint64_t key = Key(left, right);
    for (uint64_t i = Hash(key) & mask_;; i = (i + 1) & mask_) {
      const Entry& e = slots_[i];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are non-negative, so never a key
  static uint64_t Key(TokenId l, TokenId r) {
    return (uint64_t{static_cast<uint32_t>(l)} << 32) | static_cast<uint32_t>(r);
  }
  static uint64_t Hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
  }
  std::vector<Entry> slots_;
  uint64_t mask_ = 0;
  size_t size_ = 0;
};

// Per-call working memory for BpeModel::Tokenize.
struct BpeScratch {
  std::vector<TokenId> syms;
  std::vector<uint32_t> ranks;
  struct Node {
    TokenId id;
    int32_t prev;
    int32_t next;
  };
  std::vector<Node> nodes;
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    TokenId merged;
  };
  std::vector<Candidate> heap;
  std::string mapped;
};

class BpeModel {
 public:
  // Takes the vocabulary; merges are added next, in rank order.
  void Init(VocabMap vocab, const BpeOptions& options);
  // Adds merge number `rank`; both halves and their concatenation must be in the vocabulary.
  Status AddMerge(std::string_view left, std::string_view right, uint32_t rank);
  void ReserveMerges(size_t n) { merges_.Reserve(n); }

  // Appends the ids of one word. For byte-level models `word` is raw bytes; otherwise it
  // is valid UTF-8 split into characters.
  void Tokenize(std::string_view word, BpeScratch* scratch, std::vector<TokenId>* out) const;

  const VocabMap& vocab() const { return vocab_; }
  std::optional<TokenId> Find(std::string_view token) const {
    auto it = vocab_.find(token);
    if (it == vocab_.end()) return std::nullopt;
    return it->second;
  }
  size_t merge_count() const { return merges_.size(); }

 private:
  void InitialSymbols(std::string_view word, std::vector<TokenId>* syms) const;
  void MergeSmall(BpeScratch* scratch) const;
  void MergeLarge(BpeScratch* scratch) const;

  VocabMap vocab_;
  MergeMap merges_;
  BpeOptions options_;
  std::array<TokenId, 256> byte_ids_{};      // byte-level: id of each byte's character, or -1
  std::array<TokenId, 256> fallback_ids_{};  // byte_fallback: id of "<0xXX>", or -1
};

}  // namespace coda::text::internal
