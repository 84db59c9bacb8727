#include <cstring>
#include <limits>

#include "jinja_ast.h"

namespace coda::text::jinja {

std::string LineCol(std::string_view source, Pos pos) {
  size_t end = std::min<size_t>(pos, source.size());
  size_t line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < end; ++i) {
    if (source[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  size_t column = CodePointCount(source.substr(line_start, end - line_start)) + 1;
  return "line " + std::to_string(line) + ", column " + std::to_string(column);
}

Status ErrorAt(std::string_view source, Pos pos, StatusCode code, std::string_view message) {
  return Status(code, LineCol(source, pos) + ": " + std::string(message));
}

namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c); }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class Lexer {
 public:
  Lexer(std::string_view src, const SyntaxOptions& o) : src_(src), o_(o) {}

  Result<std::vector<Token>> Run() {
    while (i_ < src_.size()) {
      size_t tag = FindTagStart(i_);
      if (tag > i_) Push(TokKind::kText, i_, std::string(src_.substr(i_, tag - i_)));
      if (tag >= src_.size()) break;
      CODA_RETURN_IF_ERROR(LexTag(tag));
    }
    Push(TokKind::kEof, static_cast<Pos>(src_.size()), "");
    return std::move(tokens_);
  }

 private:
  size_t FindTagStart(size_t from) const {
    for (size_t k = from; k + 1 < src_.size(); ++k) {
      if (src_[k] == '{' && (src_[k + 1] == '{' || src_[k + 1] == '%' || src_[k + 1] == '#')) return k;
    }
    return src_.size();
  }

  void Push(TokKind kind, size_t pos, std::string text) {
    tokens_.push_back(Token{kind, static_cast<Pos>(pos), std::move(text)});
  }

  Status Error(size_t pos, std::string_view msg) const {
    return ErrorAt(src_, static_cast<Pos>(pos), StatusCode::kInvalidArgument, msg);
  }

  // The text token that ends right at `tag`, if any, for whitespace stripping.
  std::string* TextBefore(size_t tag) {
    if (tokens_.empty() || tokens_.back().kind != TokKind::kText) return nullptr;
    if (tokens_.back().pos + tokens_.back().text.size() != tag) return nullptr;
    return &tokens_.back().text;
  }

  void DropEmptyText() {
    if (!tokens_.empty() && tokens_.back().kind == TokKind::kText && tokens_.back().text.empty()) tokens_.pop_back();
  }

  void StripBefore(size_t tag) {
    std::string* text = TextBefore(tag);
    if (text == nullptr) return;
    size_t n = text->size();
    while (n > 0 && IsSpace((*text)[n - 1])) --n;
    text->resize(n);
    DropEmptyText();
  }

  // lstrip_blocks: spaces and tabs between the start of a line and a block or comment tag go.
  void LstripBefore(size_t tag) {
    size_t q = tag;
    while (q > 0 && (src_[q - 1] == ' ' || src_[q - 1] == '\t')) --q;
    if (q > 0 && src_[q - 1] != '\n' && src_[q - 1] != '\r') return;
    std::string* text = TextBefore(tag);
    if (text == nullptr) return;
    size_t text_start = tokens_.back().pos;
    text->resize(q > text_start ? q - text_start : 0);
    DropEmptyText();
  }

  // After a closing delimiter: '-' eats all following whitespace, trim_blocks eats one newline.
  void AfterClose(char modifier, bool is_block) {
    if (modifier == '-') {
      while (i_ < src_.size() && IsSpace(src_[i_])) ++i_;
    } else if (modifier != '+' && is_block && o_.trim_blocks && i_ < src_.size() && src_[i_] == '\n') {
      ++i_;
    }
  }

  Status LexTag(size_t tag) {
    char kind = src_[tag + 1];
    size_t p = tag + 2;
    char open_mod = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p] : 0;
    if (open_mod == '-') {
      StripBefore(tag);
    } else if (open_mod != '+' && kind != '{' && o_.lstrip_blocks) {
      LstripBefore(tag);
    }
    if (open_mod != 0) ++p;

    if (kind == '#') {
      size_t end = src_.find("#}", p);
      if (end == std::string_view::npos) return Error(tag, "unclosed comment: missing '#}'");
      char close_mod = end > p && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : 0;
      i_ = end + 2;
      AfterClose(close_mod, /*is_block=*/true);
      return Status::Ok();
    }

    bool block = kind == '%';
    Push(block ? TokKind::kBlockBegin : TokKind::kVarBegin, tag, "");
    i_ = p;
    int braces = 0;
    while (true) {
      while (i_ < src_.size() && IsSpace(src_[i_])) ++i_;
      if (i_ >= src_.size()) return Error(tag, block ? "unclosed tag: missing '%}'" : "unclosed expression: missing '}}'");
      std::string_view rest = src_.substr(i_);
      char close_mod = 0;
      size_t close_len = 0;
      if (block) {
        if (rest.starts_with("%}")) close_len = 2;
        else if (rest.starts_with("-%}") || rest.starts_with("+%}")) close_mod = rest[0], close_len = 3;
      } else if (braces == 0) {
        if (rest.starts_with("}}")) close_len = 2;
        else if (rest.starts_with("-}}")) close_mod = '-', close_len = 3;
      }
      if (close_len != 0) {
        Push(block ? TokKind::kBlockEnd : TokKind::kVarEnd, i_, "");
        i_ += close_len;
        AfterClose(close_mod, block);
        return Status::Ok();
      }
      if (!block && rest[0] == '{') ++braces;
      if (!block && rest[0] == '}' && braces > 0) --braces;
      CODA_RETURN_IF_ERROR(LexOne());
    }
  }

  Status LexOne() {
    size_t start = i_;
    char c = src_[i_];
    if (IsNameStart(c)) {
      while (i_ < src_.size() && IsNameChar(src_[i_])) ++i_;
      Push(TokKind::kName, start, std::string(src_.substr(start, i_ - start)));
      return Status::Ok();
    }
    if (IsDigit(c)) return LexNumber();
    if (c == '\'' || c == '"') return LexString();
    static constexpr const char* kOps[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
                                           ">",  "=",  "(",  ")",  "[",  "]",  "{", "}", ",", ".", ":", "|"};
    for (const char* op : kOps) {
      size_t len = std::strlen(op);
      if (src_.substr(i_, len) == op) {
        i_ += len;
        Push(TokKind::kOp, start, op);
        return Status::Ok();
      }
    }
    return Error(start, "unexpected character '" + std::string(SplitCodePoints(src_.substr(i_, 4)).front()) +
                            "' inside a tag");
  }

  Status LexNumber() {
    size_t start = i_;
    auto digits = [&] {
      while (i_ < src_.size() && (IsDigit(src_[i_]) || src_[i_] == '_')) ++i_;
    };
    digits();
    bool is_float = false;
    // "x.0.1" is item access, not a float, so a number right after '.' takes no fraction.
    bool after_dot = !tokens_.empty() && tokens_.back().kind == TokKind::kOp && tokens_.back().text == ".";
    if (!after_dot && i_ + 1 < src_.size() && src_[i_] == '.' && IsDigit(src_[i_ + 1])) {
      is_float = true;
      ++i_;
      digits();
    }
    if (!after_dot && i_ < src_.size() && (src_[i_] == 'e' || src_[i_] == 'E')) {
      size_t k = i_ + 1;
      if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
      if (k < src_.size() && IsDigit(src_[k])) {
        is_float = true;
        i_ = k;
        digits();
      }
    }
    std::string text;
    for (char ch : src_.substr(start, i_ - start)) {
      if (ch != '_') text += ch;
    }
    Token t{is_float ? TokKind::kFloat : TokKind::kInt, static_cast<Pos>(start), text};
    if (is_float) {
      t.float_value = std::strtod(text.c_str(), nullptr);
    } else {
      int64_t v = 0;
      for (char ch : text) {
        if (__builtin_mul_overflow(v, int64_t{10}, &v) || __builtin_add_overflow(v, int64_t{ch - '0'}, &v)) {
          return Error(start, "integer literal is too large");
        }
      }
      t.int_value = v;
    }
    tokens_.push_back(std::move(t));
    return Status::Ok();
  }

  Status LexString() {
    size_t start = i_;
    char quote = src_[i_++];
    std::string out;
    while (true) {
      if (i_ >= src_.size()) return Error(start, "unterminated string literal");
      char c = src_[i_++];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= src_.size()) return Error(start, "unterminated string literal");
      char e = src_[i_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case 'a': out += '\a'; break;
        case '0': out += '\0'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case '\n': break;  // a backslash-newline continues the literal
        case 'x':
        case 'u':
        case 'U': {
          uint32_t cp = 0;
          CODA_RETURN_IF_ERROR(ReadHex(e == 'x' ? 2 : e == 'u' ? 4 : 8, cp));
          if (cp >= 0xD800 && cp <= 0xDBFF && src_.substr(i_, 2) == "\\u") {
            // A surrogate pair spelled as two escapes ("\ud83d\ude00") is one code point.
            size_t save = i_;
            i_ += 2;
            uint32_t low = 0;
            CODA_RETURN_IF_ERROR(ReadHex(4, low));
            if (low >= 0xDC00 && low <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else {
              i_ = save;
            }
          }
          if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return Error(i_, "invalid code point in escape sequence");
          AppendUtf8(out, cp);
          break;
        }
        default:  // Python keeps unknown escapes as written
          out += '\\';
          out += e;
      }
    }
    Push(TokKind::kString, start, std::move(out));
    return Status::Ok();
  }

  Status ReadHex(int n, uint32_t& cp) {
    for (int k = 0; k < n; ++k) {
      int h = i_ < src_.size() ? HexValue(src_[i_]) : -1;
      if (h < 0) return Error(i_, "invalid hexadecimal escape sequence");
      cp = cp * 16 + static_cast<uint32_t>(h);
      ++i_;
    }
    return Status::Ok();
  }

  std::string_view src_;
  const SyntaxOptions& o_;
  size_t i_ = 0;
  std::vector<Token> tokens_;
};

}  // namespace

Result<std::vector<Token>> Tokenize(std::string_view source, const SyntaxOptions& options) {
  if (source.size() > std::numeric_limits<Pos>::max() / 2) return OutOfRange("template is too large");
  // Like Jinja's default keep_trailing_newline=False, one trailing newline is dropped.
  if (source.ends_with('\n')) source.remove_suffix(1);
  return Lexer(source, options).Run();
}

}  // namespace coda::text::jinja
