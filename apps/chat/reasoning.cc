#include "reasoning.h"

#include <algorithm>

namespace coda::chat {

namespace {

bool IsSpace(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

// Length of the longest suffix of `s` that is a proper prefix of `tag` (a tag possibly cut off).
size_t PartialTagSuffix(std::string_view s, std::string_view tag) {
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n)
    if (s.substr(s.size() - n) == tag.substr(0, n)) return n;
  return 0;
}

}  // namespace

ReasoningSplitter::ReasoningSplitter(bool opened) : state_(opened ? State::kReasoning : State::kStart) {}

void ReasoningSplitter::Feed(std::string_view text, std::vector<Piece>* out) {
  buf_.append(text);
  Process(false, out);
}

void ReasoningSplitter::Finish(std::vector<Piece>* out) {
  Process(true, out);
  pending_ws_.clear();
}

void ReasoningSplitter::Process(bool final, std::vector<Piece>* out) {
  for (;;) {
    switch (state_) {
      case State::kStart: {
        // Only an opening tag at the very start (after whitespace) means reasoning.
        const size_t first = std::find_if_not(buf_.begin(), buf_.end(), IsSpace) - buf_.begin();
        buf_.erase(0, first);
        if (buf_.empty()) return;
        if (buf_.starts_with(kOpen)) {
          buf_.erase(0, kOpen.size());
          state_ = State::kReasoning;
          continue;
        }
        if (!final && kOpen.starts_with(buf_)) return;
        state_ = State::kAnswer;
        continue;
      }
      case State::kReasoning: {
        const size_t close = buf_.find(kClose);
        if (close != std::string::npos) {
          Emit(Part::kReasoning, std::string_view(buf_).substr(0, close), out);
          buf_.erase(0, close + kClose.size());
          pending_ws_.clear();  // trailing whitespace of the reasoning
          part_started_ = false;
          state_ = State::kAnswer;
          continue;
        }
        const size_t hold = final ? 0 : PartialTagSuffix(buf_, kClose);
        Emit(Part::kReasoning, std::string_view(buf_).substr(0, buf_.size() - hold), out);
        buf_.erase(0, buf_.size() - hold);
        return;
      }
      case State::kAnswer:
        Emit(Part::kAnswer, buf_, out);
        buf_.clear();
        return;
    }
  }
}

void ReasoningSplitter::Emit(Part part, std::string_view text, std::vector<Piece>* out) {
  if (!part_started_) {
    while (!text.empty() && IsSpace(text.front())) text.remove_prefix(1);
    if (text.empty()) return;
    part_started_ = true;
  }
  size_t body = text.size();
  while (body > 0 && IsSpace(text[body - 1])) --body;
  if (body == 0) {
    pending_ws_.append(text);
    return;
  }
  std::string piece = std::move(pending_ws_);
  piece.append(text.substr(0, body));
  pending_ws_ = std::string(text.substr(body));
  (part == Part::kReasoning ? reasoning_ : answer_) += piece;
  if (!out->empty() && out->back().part == part) out->back().text += piece;
  else out->push_back({part, std::move(piece)});
}

bool PromptOpensReasoning(std::string_view rendered) {
  while (!rendered.empty() && IsSpace(rendered.back())) rendered.remove_suffix(1);
  return rendered.ends_with(ReasoningSplitter::kOpen);
}

}  // namespace coda::chat
