// Byte-level BPE tokenizer that loads Hugging Face tokenizer.json files (DeepSeek-V3 and
// other GPT-2-style vocabularies) and reproduces Hugging Face's ids exactly.
//
// Supported tokenizer.json content: model BPE; normalizer null or an empty Sequence;
// pre_tokenizer Split / ByteLevel (or a Sequence of them); post_processor ByteLevel,
// TemplateProcessing, BertProcessing, RobertaProcessing (or a Sequence); decoder
// ByteLevel. Anything else is refused with an Unsupported status naming the field.
//
// A Tokenizer is immutable after loading except for its BOS/EOS settings; Encode and
// Decode are const and safe to call from several threads. Copies share the tables.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "coda/status.h"

namespace coda::text {

using TokenId = int32_t;

// One entry of tokenizer.json "added_tokens": text matched before BPE as a single id.
struct AddedToken {
  TokenId id = 0;
  std::string content;
  bool special = false;      // dropped by Decode when skip_special_tokens is set
  bool single_word = false;  // only matches when no word character touches it
  bool lstrip = false;       // swallows the whitespace on its left
  bool rstrip = false;       // swallows the whitespace on its right
  bool normalized = true;    // matched after the others, in the normalized text
};

// Which added tokens Encode recognizes when their text appears in the input.
enum class AddedTokenMatching {
  kAll,         // every added token (Hugging Face's default)
  kNonSpecial,  // tokens flagged `special` are plain text (HF split_special_tokens=True)
  kNone,        // everything is plain text: for untrusted content that must not be able
                // to spell control tokens such as <｜User｜>, which is not flagged special
};

// What Encode does with input that is not valid UTF-8 (PCRE2 and Unicode-aware
// pre-tokenization need valid text, and Hugging Face only accepts str).
enum class InvalidUtf8Policy {
  kError,    // InvalidArgument naming the byte offset of the first bad byte
  kReplace,  // each maximal ill-formed subsequence becomes U+FFFD, then encode
};

struct EncodeOptions {
  // Wrap the ids in the post-processor's special tokens (BOS/EOS), like HF's default
  // add_special_tokens=True.
  bool add_special_tokens = true;
  AddedTokenMatching added_tokens = AddedTokenMatching::kAll;
  InvalidUtf8Policy invalid_utf8 = InvalidUtf8Policy::kError;
};

class Tokenizer {
 public:
  // Parses a tokenizer.json document; `source_name` prefixes error messages. The
  // result behaves like Hugging Face `tokenizers.Tokenizer`: add_special_tokens applies
  // only the file's post_processor (for DeepSeek-V3: ByteLevel, so no BOS).
  static Result<Tokenizer> FromJson(std::string_view json, std::string_view source_name);

  // Loads <dir>/tokenizer.json and, when present, <dir>/tokenizer_config.json (see
  // ApplyTokenizerConfig). The result behaves like transformers' AutoTokenizer: for
  // DeepSeek-V3 add_special_tokens prepends BOS.
  static Result<Tokenizer> FromDirectory(const std::string& dir);

  // Reads bos_token / eos_token (a string or an {"content": ...} object) and
  // add_bos_token / add_eos_token from a tokenizer_config.json document. When either
  // add_*_token key is present it replaces the post-processor's special tokens with
  // [BOS if add_bos_token] text [EOS if add_eos_token], as transformers' Llama-family
  // fast tokenizers do. The tokens must exist in the vocabulary.
  Status ApplyTokenizerConfig(std::string_view config_json, std::string_view source_name);

  // Overrides the BOS/EOS token by its text; NotFound when not in the vocabulary.
  Status SetBosToken(std::string_view content);
  Status SetEosToken(std::string_view content);
  // Sets the ids add_special_tokens puts before and after the text; InvalidArgument on
  // an unknown id.
  Status SetSpecialTokenTemplate(std::vector<TokenId> prefix, std::vector<TokenId> suffix);

  Result<std::vector<TokenId>> Encode(std::string_view text, bool add_special_tokens = true) const;
  Result<std::vector<TokenId>> Encode(std::string_view text, const EncodeOptions& options) const;

  // Concatenates the tokens' bytes. Byte sequences that do not form UTF-8 (a character
  // cut by the end of `ids`) become U+FFFD, as in Hugging Face. InvalidArgument when an
  // id is not in the vocabulary.
  Result<std::string> Decode(std::span<const TokenId> ids, bool skip_special_tokens = false) const;

  // Token text as in the vocabulary (byte-level form, e.g. "Ġthe"); added tokens first.
  std::optional<TokenId> TokenToId(std::string_view token) const;
  std::optional<std::string_view> IdToToken(TokenId id) const;
  // The raw bytes a token decodes to (may be part of a UTF-8 character).
  std::optional<std::string_view> TokenBytes(TokenId id) const;
  bool IsValidId(TokenId id) const;
  // Whether the id is an added token flagged `special` (skipped by skip_special_tokens).
  bool IsSpecial(TokenId id) const;

  // One past the largest id, counting added tokens. The model's embedding table may be
  // larger (DeepSeek-V3 pads to 129280).
  size_t vocab_size() const;
  std::span<const AddedToken> added_tokens() const;

  // From tokenizer_config.json or the setters; without them, guessed from well-known
  // added-token names (<｜begin▁of▁sentence｜>, <s>, <|begin_of_text|>, ...).
  std::optional<TokenId> bos_id() const { return bos_id_; }
  std::optional<TokenId> eos_id() const { return eos_id_; }
  // The ids add_special_tokens puts around the text.
  std::span<const TokenId> special_prefix() const { return prefix_; }
  std::span<const TokenId> special_suffix() const { return suffix_; }

  // Largest input Encode accepts; serving code should cap prompts far lower, since a
  // single huge word costs O(n log n) to merge.
  static constexpr size_t kMaxEncodeBytes = size_t{1} << 31;

 private:
  struct Impl;  // defined in tokenizer.cc
  explicit Tokenizer(std::shared_ptr<const Impl> impl);

  std::shared_ptr<const Impl> impl_;
  std::optional<TokenId> bos_id_;
  std::optional<TokenId> eos_id_;
  std::vector<TokenId> prefix_;
  std::vector<TokenId> suffix_;
};

}  // namespace coda::text
