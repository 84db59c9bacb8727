// Incremental decoding for generation: token ids in, complete UTF-8 text out.
#pragma once

#include <string>

#include "coda/status.h"
#include "coda/text/tokenizer.h"

namespace coda::text {

// Turns ids into text one at a time. A multi-byte character split across tokens (common
// for CJK and emoji in byte-level BPE) is held back until its last byte arrives, so every
// emitted piece is valid UTF-8. The concatenation of everything Push and Flush return
// equals Tokenizer::Decode of the same ids (with the same skip_special_tokens).
class StreamingDetokenizer {
 public:
  // Keeps a copy of `tokenizer`, which shares its tables (cheap).
  explicit StreamingDetokenizer(Tokenizer tokenizer, bool skip_special_tokens = false)
      : tokenizer_(std::move(tokenizer)), skip_special_tokens_(skip_special_tokens) {}

  // Appends to *out the text that `id` completes (possibly nothing). Bytes that can no
  // longer become a character are emitted as U+FFFD. InvalidArgument, with no state
  // change, when the id is not in the vocabulary.
  Status Push(TokenId id, std::string* out);
  // Convenience form returning the completed text.
  Result<std::string> Push(TokenId id);

  // Emits what is held back (an unfinished character becomes U+FFFD) and starts over.
  std::string Flush();
  // Drops what is held back.
  void Reset() { pending_.clear(); }

  // Bytes of an unfinished character waiting for the next token (0..3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  Tokenizer tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;
};

}  // namespace coda::text
