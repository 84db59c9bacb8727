#include "coda/text/unicode.h"
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

bool MatchCursor::Next(Span* m) {
  pcre2_match_data* md = MatchData();
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
  while (search_from_ <= subject_.size()) {
    const int rc = MatchAt(re_.code_, subject_, search_from_, md);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      status_ = re_.MatchError(rc);
      break;
    }
    const size_t s = ov[0], e = ov[1];
    if (s == e && have_last_ && last_end_ == e) {
      // An empty match glued to the previous one would repeat forever; step one character.
      if (search_from_ >= subject_.size()) break;
      search_from_ += Utf8CharLen(static_cast<unsigned char>(subject_[search_from_]));
      continue;
    }
    search_from_ = e;
    have_last_ = true;
    last_end_ = e;
    *m = {s, e};
    return true;
  }
  search_from_ = subject_.size() + 1;
  return false;
}

Status Regex::FindAll(std::string_view subject, std::vector<Span>* out) const {
  MatchCursor cursor(*this, subject);
  Span m;
  while (cursor.Next(&m)) out->push_back(m);
  return cursor.status();
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

Status PreTokenizer::Split(std::string_view text, PreTokenizerScratch* scratch, const WordSink& sink) const {
  if (text.empty()) return Status::Ok();
  scratch->arena.clear();
  scratch->matches.resize(steps_.size());
  scratch->parts.resize(steps_.size());
  scratch->merged.resize(steps_.size());
  return Run(0, text, scratch, sink);
}

Status PreTokenizer::Run(size_t step_index, std::string_view piece, PreTokenizerScratch* scratch,
                         const WordSink& sink) const {
  if (step_index == steps_.size()) {
    if (!piece.empty()) sink(piece);
    return Status::Ok();
  }
  const PreTokenizerStep& step = steps_[step_index];
  const size_t next = step_index + 1;
  if (step.kind == PreTokenizerStep::Kind::kByteLevel) {
    // As in Hugging Face, the prefix space is added to every piece that reaches this step.
    if (step.add_prefix_space && (piece.empty() || piece.front() != ' ')) {
      std::string& s = scratch->arena.emplace_back(" ");
      s.append(piece);
      piece = s;
    }
    if (!step.regex) return Run(next, piece, scratch, sink);
  }

  if (step.behavior == SplitBehavior::kIsolated) {
    // The common case needs no lookahead: every match and every gap is its own piece.
    size_t at = 0;
    auto emit = [&](const Span& m) -> Status {
      if (at != m.begin) CODA_RETURN_IF_ERROR(Run(next, piece.substr(at, m.begin - at), scratch, sink));
      if (m.begin != m.end) CODA_RETURN_IF_ERROR(Run(next, piece.substr(m.begin, m.end - m.begin), scratch, sink));
      at = m.end;
      return Status::Ok();
    };
    if (step.regex) {
      MatchCursor cursor(*step.regex, piece);
      Span m;
      while (cursor.Next(&m)) CODA_RETURN_IF_ERROR(emit(m));
      CODA_RETURN_IF_ERROR(cursor.status());
    } else if (!step.literal.empty()) {
      for (size_t f = piece.find(step.literal); f != std::string_view::npos;
           f = piece.find(step.literal, f + step.literal.size())) {
        CODA_RETURN_IF_ERROR(emit({f, f + step.literal.size()}));
      }
    }
    if (at != piece.size()) return Run(next, piece.substr(at), scratch, sink);
    return Status::Ok();
  }

  // The other behaviors look at neighbours, so the whole piece is split first: into
  // alternating (span, is_match) parts covering it, as Hugging Face's
  // Pattern::find_matches produces them, then merged per behavior.
  auto& matches = scratch->matches[step_index];
  matches.clear();
  if (step.regex) {
    CODA_RETURN_IF_ERROR(step.regex->FindAll(piece, &matches));
  } else if (!step.literal.empty()) {
    for (size_t f = piece.find(step.literal); f != std::string_view::npos;
         f = piece.find(step.literal, f + step.literal.size())) {
      matches.push_back({f, f + step.literal.size()});
    }
  }
  using Part = PreTokenizerScratch::Part;
  auto& parts = scratch->parts[step_index];
  parts.clear();
  size_t prev = 0;
  for (const Span& m : matches) {
    if (prev != m.begin) parts.push_back({{prev, m.begin}, step.invert});
    parts.push_back({m, !step.invert});
    prev = m.end;
  }
  if (prev != piece.size() || parts.empty()) parts.push_back({{prev, piece.size()}, step.invert});

  auto& merged = scratch->merged[step_index];
  merged.clear();
  switch (step.behavior) {
    case SplitBehavior::kIsolated:  // handled above
      break;
    case SplitBehavior::kRemoved:
      merged = parts;  // matches keep flag = true: removed
      break;
    case SplitBehavior::kContiguous: {
      bool prev_match = false;
      for (const Part& p : parts) {
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
      for (const Part& p : parts) {
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
        const Part& p = parts[k];
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
  for (const Part& p : merged) {
    if (p.flag || p.span.begin == p.span.end) continue;
    CODA_RETURN_IF_ERROR(Run(next, piece.substr(p.span.begin, p.span.end - p.span.begin), scratch, sink));
  }
  return Status::Ok();
}

}  // namespace coda::text::internal
