// Pre-tokenization (private to coda_text): PCRE2 regexes and the Hugging Face
// pre-tokenizer steps (Split, ByteLevel) that cut text into words before BPE.
#pragma once

#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "coda/status.h"

struct pcre2_real_code_8;
struct pcre2_real_match_data_8;

namespace coda::text::internal {

struct Span {
  size_t begin = 0;
  size_t end = 0;
};

// A compiled PCRE2 pattern in UTF + UCP mode, JIT-compiled when the platform allows.
// Immutable after Compile, so one instance may be shared by threads.
class Regex {
 public:
  // `what` names the pattern's origin for error messages (e.g. "pre_tokenizer[2].pattern").
  static Result<std::shared_ptr<const Regex>> Compile(std::string_view pattern, std::string_view what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the successive non-overlapping matches in `subject` (valid UTF-8) to `out`,
  // iterating like Oniguruma's find_iter, which Hugging Face uses: an empty match that
  // touches the end of the previous match is skipped by advancing one character.
  Status FindAll(std::string_view subject, std::vector<Span>* out) const;

  // True when the pattern matches somewhere in `subject` (valid UTF-8).
  Result<bool> Search(std::string_view subject) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  Status MatchError(int rc) const;

  pcre2_real_code_8* code_ = nullptr;
  std::string pattern_;
  std::string what_;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel };
  Kind kind = Kind::kSplit;
  // kSplit: the pattern (regex, or literal when `literal_pattern`). kByteLevel: the GPT-2
  // word regex when use_regex is set, otherwise null.
  std::shared_ptr<const Regex> regex;
  std::string literal;
  bool literal_pattern = false;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // kByteLevel only
};

// Per-call working memory, so that PreTokenizer itself stays const and thread-safe.
struct PreTokenizerScratch {
  std::vector<std::string_view> pieces;
  std::vector<std::string_view> next;
  std::vector<Span> matches;
  std::deque<std::string> arena;  // owns pieces that were rewritten (add_prefix_space)
};

class PreTokenizer {
 public:
  void AddStep(PreTokenizerStep step) { steps_.push_back(std::move(step)); }
  bool empty() const { return steps_.empty(); }
  // Whether a ByteLevel step runs, i.e. BPE works on bytes rather than characters.
  bool byte_level() const;

  // Splits `text` (valid UTF-8) into words, appended to `words`. The views point into
  // `text` or into scratch->arena, and stay valid until the scratch is reused.
  Status Split(std::string_view text, PreTokenizerScratch* scratch,
               std::vector<std::string_view>* words) const;

  // The GPT-2 regex that ByteLevel uses when use_regex is true.
  static constexpr std::string_view kByteLevelPattern =
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

 private:
  Status ApplyStep(const PreTokenizerStep& step, std::string_view piece, PreTokenizerScratch* scratch,
                   std::vector<std::string_view>* out) const;

  std::vector<PreTokenizerStep> steps_;
};

}  // namespace coda::text::internal
