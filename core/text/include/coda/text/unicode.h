// UTF-8 helpers shared by the tokenizer and the streaming detokenizer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace coda::text {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Byte offset of the first byte that is not part of a well-formed UTF-8 sequence
// (overlongs, surrogates and code points above U+10FFFF are ill-formed), or
// std::string_view::npos when `s` is entirely valid.
size_t FindInvalidUtf8(std::string_view s);

// Appends `in` to `out`, replacing each maximal ill-formed subsequence with U+FFFD
// (the Unicode "maximal subpart" practice that Python's errors="replace", Rust's
// from_utf8_lossy and WHATWG decoders share, so output matches Hugging Face).
// When `final` is false a trailing sequence that is incomplete but valid so far is
// left unconsumed, so that its remaining bytes can arrive later. Returns the number
// of input bytes consumed (always in.size() when `final`).
size_t AppendUtf8Lossy(std::string_view in, bool final, std::string* out);

// `s` with every ill-formed subsequence replaced by U+FFFD.
std::string ToValidUtf8(std::string_view s);

// Appends the UTF-8 encoding of `cp` (which must be a scalar value) to `out`.
void AppendUtf8(char32_t cp, std::string* out);

// Decodes the code point starting at s[*pos] and advances *pos past it. `s` must be
// valid UTF-8 (checked with FindInvalidUtf8) and *pos < s.size().
char32_t DecodeUtf8(std::string_view s, size_t* pos);

// Unicode White_Space property (what Rust's char::is_whitespace and regex \s test).
bool IsUnicodeWhiteSpace(char32_t cp);

// Length of the UTF-8 sequence that starts with lead byte `b` (1 for ASCII and stray bytes).
inline size_t Utf8CharLen(unsigned char b) {
  if (b < 0x80) return 1;
  if (b < 0xE0) return 2;
  if (b < 0xF0) return 3;
  return 4;
}

}  // namespace coda::text
