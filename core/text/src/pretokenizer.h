// Pre-tokenization (private to coda_text): PCRE2 regexes and the Hugging Face
// pre-tokenizer steps (Split, ByteLevel) that cut text into words before BPE.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
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

  // Appends the successive non-overlapping matches in `subject` (valid UTF-8) to `out`.
  Status FindAll(std::string_view subject, std::vector<Span>* out) const;

  // True when the pattern matches somewhere in `subject` (valid UTF-8).
  Result<bool> Search(std::string_view subject) const;

  const std::string& pattern() const { return pattern_; }

 private:
  friend class MatchCursor;
  Regex() = default;
  Status MatchError(int rc) const;

  pcre2_real_code_8* code_ = nullptr;
  std::string pattern_;
  std::string what_;
};

// Walks the matches of a regex in a subject one at a time, iterating like Oniguruma's
// find_iter, which Hugging Face uses: an empty match that touches the end of the
// previous match is skipped by advancing one character.
class MatchCursor {
 public:
  MatchCursor(const Regex& re, std::string_view subject) : re_(re), subject_(subject) {}
  // Stores the next match in *m; false when there is none or on error (see status()).
  bool Next(Span* m);
  const Status& status() const { return status_; }

 private:
  const Regex& re_;
  std::string_view subject_;
  size_t search_from_ = 0;
  bool have_last_ = false;
  size_t last_end_ = 0;
  Status status_;
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
  struct Part {
    Span span;
    bool flag;  // is_match while splitting; "remove" once behaviors are applied
  };
  std::vector<std::vector<Span>> matches;  // one list per step (steps recurse)
  std::vector<std::vector<Part>> parts;
  std::vector<std::vector<Part>> merged;
  std::deque<std::string> arena;  // owns pieces that were rewritten (add_prefix_space)
};

using WordSink = std::function<void(std::string_view word)>;

class PreTokenizer {
 public:
  void AddStep(PreTokenizerStep step) { steps_.push_back(std::move(step)); }
  bool empty() const { return steps_.empty(); }
  // Whether a ByteLevel step runs, i.e. BPE works on bytes rather than characters.
  bool byte_level() const;

  // Splits `text` (valid UTF-8) into words, handed to `sink` in order. Steps run depth
  // first, so no list of all words is built. A word may point into scratch->arena and
  // is only valid during the call.
  Status Split(std::string_view text, PreTokenizerScratch* scratch, const WordSink& sink) const;

  // The GPT-2 regex that ByteLevel uses when use_regex is true.
  static constexpr std::string_view kByteLevelPattern =
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

 private:
  // Applies steps_[step] to `piece` and feeds each resulting piece to the next step.
  Status Run(size_t step, std::string_view piece, PreTokenizerScratch* scratch, const WordSink& sink) const;

  std::vector<PreTokenizerStep> steps_;
};

}  // namespace coda::text::internal
