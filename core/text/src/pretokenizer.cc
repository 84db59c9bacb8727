#include "pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <string>
#include <utility>

namespace coda::text::internal {
namespace {

// One match-data block per thread: pcre2 match data may not be shared between
// concurrent matches, and allocating one per call would dominate short matches.
// A single ovector pair suffices because only the whole-match offsets are read
// (pcre2_match returns 0 when capture groups did not fit, which still is a match).
class ThreadMatchData {
 public:
  ThreadMatchData() : md_(pcre2_match_data_create(1, nullptr)) {}
  ~ThreadMatchData() { pcre2_match_data_free(md_); }
  ThreadMatchData(const ThreadMatchData&) = delete;
  ThreadMatchData& operator=(const ThreadMatchData&) = delete;
  pcre2_match_data* get() const { return md_; }

 private:
  pcre2_match_data* md_;
};

pcre2_match_data* MatchData() {
  thread_local ThreadMatchData md;
  return md.get();
}

std::string Pcre2ErrorText(int code) {
  PCRE2_UCHAR buf[256];
  int n = pcre2_get_error_message(code, buf, sizeof(buf));
  if (n < 0) return "PCRE2 error " + std::to_string(code);
  return std::string(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

// Runs one match; retries without JIT when the JIT stack is too small for the subject,
// since the interpreter keeps its backtracking state on the heap.
int MatchAt(const pcre2_code* code, std::string_view subject, size_t start, pcre2_match_data* md) {
  const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  int rc = pcre2_match(code, s, subject.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
    rc = pcre2_match(code, s, subject.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
  return rc;
}

size_t Utf8CharLen(unsigned char b) {
  if (b < 0x80) return 1;
  if (b < 0xE0) return 2;
  if (b < 0xF0) return 3;
  return 4;
}

}  // namespace

Result<std::shared_ptr<const Regex>> Regex::Compile(std::string_view pattern, std::string_view what) {
  std::shared_ptr<Regex> re(new Regex());
  re->pattern_ = std::string(pattern);
  re->what_ = std::string(what);
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  // UCP makes \s, \w, \d and POSIX classes Unicode-aware, as in Oniguruma. MULTILINE
  // matches Oniguruma's Ruby syntax, where ^ and $ are line anchors.
  re->code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                            PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &err_offset, nullptr);
  if (re->code_ == nullptr) {
    return InvalidArgument(std::string(what) + ": regex does not compile at offset " +
                           std::to_string(err_offset) + ": " + Pcre2ErrorText(err));
  }
  // JIT is an optimization only: without it (unsupported CPU, no executable memory)
  // pcre2_match falls back to the interpreter with identical results.
  (void)pcre2_jit_compile(re->code_, PCRE2_JIT_COMPLETE);
  return std::shared_ptr<const Regex>(std::move(re));
}

Regex::~Regex() { pcre2_code_free(code_); }

Status Regex::MatchError(int rc) const {
  return Internal(what_ + ": regex match failed: " + Pcre2ErrorText(rc));
}

Status Regex::FindAll(std::string_view subject, std::vector<Span>* out) const {
  pcre2_match_data* md = MatchData();
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
  size_t search_from = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (search_from <= subject.size()) {
    const int rc = MatchAt(code_, subject, search_from, md);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) return MatchError(rc);
    const size_t s = ov[0], e = ov[1];
    if (s == e && have_last && last_end == e) {
      // An empty match glued to the previous one would repeat forever; step one character.
      if (search_from >= subject.size()) break;
      search_from += Utf8CharLen(static_cast<unsigned char>(subject[search_from]));
      continue;
    }
    out->push_back({s, e});
    search_from = e;
    have_last = true;
    last_end = e;
  }
  return Status::Ok();
}

Result<bool> Regex::Search(std::string_view subject) const {
  const int rc = MatchAt(code_, subject, 0, MatchData());
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) return MatchError(rc);
  return true;
}

bool PreTokenizer::byte_level() const {
  for (const auto& s : steps_)
    if (s.kind == PreTokenizerStep::Kind::kByteLevel) return true;
  return false;
}

Status PreTokenizer::Split(std::string_view text, PreTokenizerScratch* scratch,
                           std::vector<std::string_view>* words) const {
  if (text.empty()) return Status::Ok();
  if (steps_.empty()) {
    words->push_back(text);
    return Status::Ok();
  }
  auto& pieces = scratch->pieces;
  auto& next = scratch->next;
  pieces.clear();
  pieces.push_back(text);
  for (size_t i = 0; i < steps_.size(); ++i) {
    const bool last = i + 1 == steps_.size();
    std::vector<std::string_view>* dst = last ? words : &next;
    if (!last) next.clear();
    for (std::string_view piece : pieces) CODA_RETURN_IF_ERROR(ApplyStep(steps_[i], piece, scratch, dst));
    if (!last) pieces.swap(next);
  }
  return Status::Ok();
}

Status PreTokenizer::ApplyStep(const PreTokenizerStep& step, std::string_view piece,
                               PreTokenizerScratch* scratch, std::vector<std::string_view>* out) const {
  if (step.kind == PreTokenizerStep::Kind::kByteLevel) {
    // As in Hugging Face, the prefix space is added to every piece that reaches this step.
    if (step.add_prefix_space && (piece.empty() || piece.front() != ' ')) {
      std::string& s = scratch->arena.emplace_back(" ");
      s.append(piece);
      piece = s;
    }
    if (!step.regex) {
      if (!piece.empty()) out->push_back(piece);
      return Status::Ok();
    }
  }

  // Matches, as Hugging Face's Pattern::find_matches produces them: the whole piece
  // covered by alternating (span, is_match) parts, gaps included.
  auto& matches = scratch->matches;
  matches.clear();
  if (step.regex) {
    CODA_RETURN_IF_ERROR(step.regex->FindAll(piece, &matches));
  } else if (!step.literal.empty()) {
    for (size_t at = piece.find(step.literal); at != std::string_view::npos;
         at = piece.find(step.literal, at + step.literal.size())) {
      matches.push_back({at, at + step.literal.size()});
    }
  }
  if (step.behavior == SplitBehavior::kIsolated) {
    // Fast path for the common case: every match and every gap is its own word.
    size_t at = 0;
    for (const Span& m : matches) {
      if (at != m.begin) out->push_back(piece.substr(at, m.begin - at));
      if (m.begin != m.end) out->push_back(piece.substr(m.begin, m.end - m.begin));
      at = m.end;
    }
    if (at != piece.size()) out->push_back(piece.substr(at));
    return Status::Ok();
  }

  struct Part {
    Span span;
    bool flag;  // is_match on input; "remove" on output
  };
  std::vector<Part> parts;
  parts.reserve(matches.size() * 2 + 1);
  size_t prev = 0;
  for (const Span& m : matches) {
    if (prev != m.begin) parts.push_back({{prev, m.begin}, step.invert});
    parts.push_back({m, !step.invert});
    prev = m.end;
  }
  if (prev != piece.size() || parts.empty()) parts.push_back({{prev, piece.size()}, step.invert});

  std::vector<Part> merged;
  switch (step.behavior) {
    case SplitBehavior::kIsolated:  // handled above
      break;
    case SplitBehavior::kRemoved:
      merged = std::move(parts);  // matches are removed
      break;
    case SplitBehavior::kContiguous: {
      bool prev_match = false;
      for (const auto& p : parts) {
        if (p.flag == prev_match && !merged.empty()) {
          merged.back().span.end = p.span.end;
        } else {
          merged.push_back({p.span, false});
        }
        prev_match = p.flag;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (const auto& p : parts) {
        if (p.flag && !prev_match && !merged.empty()) {
          merged.back().span.end = p.span.end;
        } else {
          merged.push_back({p.span, false});
        }
        prev_match = p.flag;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      // Walks right to left, gluing each match onto the part after it.
      bool prev_match = false;
      for (size_t k = parts.size(); k-- > 0;) {
        const auto& p = parts[k];
        if (p.flag && !prev_match && !merged.empty()) {
          merged.back().span.begin = p.span.begin;
        } else {
          merged.push_back({p.span, false});
        }
        prev_match = p.flag;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    }
  }
  for (const auto& p : merged) {
    if (p.flag || p.span.begin == p.span.end) continue;
    out->push_back(piece.substr(p.span.begin, p.span.end - p.span.begin));
  }
  return Status::Ok();
}

}  // namespace coda::text::internal
