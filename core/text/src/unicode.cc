#include "coda/text/unicode.h"

#include <cstring>

namespace coda::text {
namespace {

struct SeqCheck {
  size_t valid_len;  // > 0: a well-formed sequence of this many bytes starts here
  size_t bad_len;    // > 0: a maximal ill-formed subpart of this many bytes starts here
  bool truncated;    // the ill-formed part is only a prefix cut off by the end of input
};

// Classifies the bytes at p[0..n) following Table 3-7 of the Unicode standard
// (well-formed UTF-8 byte sequences). n must be > 0.
SeqCheck CheckAt(const uint8_t* p, size_t n) {
  const uint8_t b0 = p[0];
  if (b0 < 0x80) return {1, 0, false};
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 == 0xE0) {
    need = 2, lo = 0xA0;  // excludes overlongs
  } else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) {
    need = 2;
  } else if (b0 == 0xED) {
    need = 2, hi = 0x9F;  // excludes surrogates
  } else if (b0 == 0xF0) {
    need = 3, lo = 0x90;  // excludes overlongs
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    need = 3;
  } else if (b0 == 0xF4) {
    need = 3, hi = 0x8F;  // excludes > U+10FFFF
  } else {
    return {0, 1, false};  // continuation byte, C0/C1, F5..FF
  }
  for (size_t k = 1; k <= need; ++k) {
    if (k >= n) return {0, k, true};
    const uint8_t b = p[k];
    if (b < lo || b > hi) return {0, k, false};
    lo = 0x80, hi = 0xBF;
  }
  return {need + 1, 0, false};
}

}  // namespace

size_t FindInvalidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, eight bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, sizeof(w));
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    const SeqCheck c = CheckAt(p + i, n - i);
    if (c.valid_len == 0) return i;
    i += c.valid_len;
  }
  return std::string_view::npos;
}

size_t AppendUtf8Lossy(std::string_view in, bool final, std::string* out) {
  const auto* p = reinterpret_cast<const uint8_t*>(in.data());
  const size_t n = in.size();
  size_t i = 0;
  size_t run_start = 0;  // start of the pending run of valid bytes, copied in one go
  while (i < n) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    const SeqCheck c = CheckAt(p + i, n - i);
    if (c.valid_len > 0) {
      i += c.valid_len;
      continue;
    }
    out->append(in.data() + run_start, i - run_start);
    if (c.truncated && !final) return i;  // wait for the rest of the character
    AppendUtf8(kReplacementChar, out);
    i += c.bad_len;
    run_start = i;
  }
  out->append(in.data() + run_start, n - run_start);
  return n;
}

std::string ToValidUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  AppendUtf8Lossy(s, /*final=*/true, &out);
  return out;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

char32_t DecodeUtf8(std::string_view s, size_t* pos) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + *pos;
  const uint8_t b0 = p[0];
  if (b0 < 0x80) {
    *pos += 1;
    return b0;
  }
  if (b0 < 0xE0) {
    *pos += 2;
    return (char32_t{b0 & 0x1Fu} << 6) | (p[1] & 0x3Fu);
  }
  if (b0 < 0xF0) {
    *pos += 3;
    return (char32_t{b0 & 0x0Fu} << 12) | (char32_t{p[1] & 0x3Fu} << 6) | (p[2] & 0x3Fu);
  }
  *pos += 4;
  return (char32_t{b0 & 0x07u} << 18) | (char32_t{p[1] & 0x3Fu} << 12) |
         (char32_t{p[2] & 0x3Fu} << 6) | (p[3] & 0x3Fu);
}

bool IsUnicodeWhiteSpace(char32_t cp) {
  // PropList.txt, White_Space (stable since Unicode 6.3).
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

}  // namespace coda::text
