// Splitting streamed model output into reasoning (R1-style <think>...</think>) and the answer.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace coda::chat {

enum class Part { kReasoning, kAnswer };

struct Piece {
  Part part;
  std::string text;
};

// Fed decoded text as it streams; returns it as pieces tagged reasoning or answer. Tags may
// arrive split across tokens, so text that could still become one is held back until it is
// decided. Whitespace around each part (the newlines models put after <think> and </think>) is
// dropped.
class ReasoningSplitter {
 public:
  // `opened`: the prompt itself ends in <think> (templates that start the model off reasoning).
  explicit ReasoningSplitter(bool opened = false);

  void Feed(std::string_view text, std::vector<Piece>* out);
  // Releases what is held back (a partial tag is plain text after all).
  void Finish(std::vector<Piece>* out);

  // Everything emitted so far, per part.
  const std::string& reasoning() const { return reasoning_; }
  const std::string& answer() const { return answer_; }

  static constexpr std::string_view kOpen = "<think>";
  static constexpr std::string_view kClose = "</think>";

 private:
  enum class State { kStart, kReasoning, kAnswer };
  void Emit(Part part, std::string_view text, std::vector<Piece>* out);
  void Process(bool final, std::vector<Piece>* out);

  State state_;
  std::string buf_;         // undecided text
  std::string pending_ws_;  // whitespace held until non-space text follows in the same part
  bool part_started_ = false;
  std::string reasoning_, answer_;
};

// Whether a rendered prompt leaves the model inside <think> (ignoring trailing whitespace).
bool PromptOpensReasoning(std::string_view rendered);

}  // namespace coda::chat
