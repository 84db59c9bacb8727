#include "jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace coda::text::jinja {

const Value* Dict::Find(std::string_view key) const {
  // Small dicts (messages, tool calls) are faster to scan than to hash.
  if (entries_.size() <= 8) {
    for (const auto& [k, v] : entries_) {
      if (k == key) return &v;
    }
    return nullptr;
  }
  auto it = index_.find(std::string(key));
  return it == index_.end() ? nullptr : &entries_[it->second].second;
}

void Dict::Set(std::string key, Value value) {
  depth_ = std::max(depth_, value.depth() + 1);
  has_namespace_ = has_namespace_ || value.contains_namespace();
  auto it = index_.find(key);
  if (it != index_.end()) {
    entries_[it->second].second = std::move(value);
    return;
  }
  index_.emplace(key, entries_.size());
  entries_.emplace_back(std::move(key), std::move(value));
}

Value Value::MakeList(List items) {
  ListBox box;
  for (const Value& v : items) {
    box.depth = std::max(box.depth, v.depth() + 1);
    box.has_namespace = box.has_namespace || v.contains_namespace();
  }
  box.items = std::move(items);
  return Value(Storage(std::make_shared<const ListBox>(std::move(box))));
}

uint32_t Value::depth() const {
  switch (kind()) {
    case Kind::kList: return std::get<ListPtr>(v_)->depth;
    case Kind::kDict: return dict().depth();
    case Kind::kNamespace: return ns().depth();
    default: return 0;
  }
}

bool Value::contains_namespace() const {
  switch (kind()) {
    case Kind::kList: return std::get<ListPtr>(v_)->has_namespace;
    case Kind::kDict: return dict().has_namespace();
    case Kind::kNamespace: return true;
    default: return false;
  }
}

double Value::as_number() const {
  switch (kind()) {
    case Kind::kInt: return static_cast<double>(as_int());
    case Kind::kFloat: return as_float();
    case Kind::kBool: return as_bool() ? 1.0 : 0.0;
    default: return 0.0;
  }
}

bool Value::Truthy() const {
  switch (kind()) {
    case Kind::kUndefined:
    case Kind::kNone: return false;
    case Kind::kBool: return as_bool();
    case Kind::kInt: return as_int() != 0;
    case Kind::kFloat: return as_float() != 0.0;
    case Kind::kString: return !str().empty();
    case Kind::kList: return !list().empty();
    case Kind::kDict: return dict().size() != 0;
    case Kind::kNamespace:
    case Kind::kCallable: return true;
  }
  return false;
}

const void* Value::identity() const {
  switch (kind()) {
    case Kind::kString: return std::get<StringPtr>(v_).get();
    case Kind::kList: return std::get<ListPtr>(v_).get();
    case Kind::kDict: return std::get<DictPtr>(v_).get();
    case Kind::kNamespace: return std::get<NamespacePtr>(v_).d.get();
    case Kind::kCallable: return std::get<CallablePtr>(v_).get();
    default: return nullptr;
  }
}

std::string_view KindName(Value::Kind kind) {
  switch (kind) {
    case Value::Kind::kUndefined: return "undefined";
    case Value::Kind::kNone: return "none";
    case Value::Kind::kBool: return "boolean";
    case Value::Kind::kInt: return "integer";
    case Value::Kind::kFloat: return "float";
    case Value::Kind::kString: return "string";
    case Value::Kind::kList: return "list";
    case Value::Kind::kDict: return "dict";
    case Value::Kind::kNamespace: return "namespace";
    case Value::Kind::kCallable: return "function";
  }
  return "?";
}

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  if (d == 0.0) return std::signbit(d) ? "-0.0" : "0.0";
  // Shortest round-trip digits in scientific form, then laid out the way Python's repr does:
  // positional for exponents in [-4, 16), scientific otherwise.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  size_t e_pos = sci.find('e');
  std::string digits = sci.substr(0, e_pos);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  int exp = std::atoi(sci.c_str() + e_pos + 1);

  std::string out = negative ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    } else if (static_cast<size_t>(exp) + 1 >= digits.size()) {
      out += digits + std::string(static_cast<size_t>(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, static_cast<size_t>(exp) + 1) + "." + digits.substr(static_cast<size_t>(exp) + 1);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char ebuf[16];
  std::snprintf(ebuf, sizeof(ebuf), "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
  return out + ebuf;
}

Result<std::string> ToOutputString(const Value& v, size_t max_bytes) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return std::string();
    case Value::Kind::kBool: return std::string(v.as_bool() ? "true" : "false");
    case Value::Kind::kInt: return std::to_string(v.as_int());
    case Value::Kind::kFloat: return FloatRepr(v.as_float());
    case Value::Kind::kString: return v.str();
    case Value::Kind::kList:
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: return ToJson(v, JsonOptions{}, max_bytes);
    case Value::Kind::kCallable: return "<function " + v.callable().name + ">";
  }
  return std::string();
}

bool Equal(const Value& a, const Value& b) {
  using K = Value::Kind;
  auto numeric = [](K k) { return k == K::kInt || k == K::kFloat || k == K::kBool; };
  if (numeric(a.kind()) && numeric(b.kind())) {
    if (a.is_int() && b.is_int()) return a.as_int() == b.as_int();
    return a.as_number() == b.as_number();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone: return true;
    case K::kString: return a.str() == b.str();
    case K::kList: {
      const auto& x = a.list();
      const auto& y = b.list();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i) {
        if (!Equal(x[i], y[i])) return false;
      }
      return true;
    }
    case K::kDict: {
      const auto& x = a.dict();
      const auto& y = b.dict();
      if (x.size() != y.size()) return false;
      for (const auto& [k, v] : x.entries()) {
        const Value* other = y.Find(k);
        if (other == nullptr || !Equal(v, *other)) return false;
      }
      return true;
    }
    default: return a.identity() == b.identity();
  }
}

// ---- UTF-8 ----

uint32_t DecodeUtf8(std::string_view s, size_t& i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = byte(i);
  int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || i + static_cast<size_t>(len) > s.size()) {
    ++i;
    return c;
  }
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
  for (int k = 1; k < len; ++k) {
    unsigned char cc = byte(i + static_cast<size_t>(k));
    if ((cc >> 6) != 0x2) {
      ++i;
      return c;
    }
    cp = (cp << 6) | (cc & 0x3Fu);
  }
  i += static_cast<size_t>(len);
  return cp;
}

void AppendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::vector<std::string_view> SplitCodePoints(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t start = i;
    DecodeUtf8(s, i);
    out.push_back(s.substr(start, i - start));
  }
  return out;
}

size_t CodePointOffset(std::string_view s, size_t index) {
  size_t i = 0;
  for (size_t n = 0; n < index && i < s.size(); ++n) DecodeUtf8(s, i);
  return i;
}

namespace {

// Knuth-Morris-Pratt: linear in hay + needle.
size_t KmpFind(std::string_view hay, std::string_view needle, size_t from) {
  std::vector<size_t> fail(needle.size(), 0);
  for (size_t i = 1, k = 0; i < needle.size(); ++i) {
    while (k > 0 && needle[i] != needle[k]) k = fail[k - 1];
    if (needle[i] == needle[k]) ++k;
    fail[i] = k;
  }
  for (size_t i = from, k = 0; i < hay.size(); ++i) {
    while (k > 0 && hay[i] != needle[k]) k = fail[k - 1];
    if (hay[i] == needle[k]) ++k;
    if (k == needle.size()) return i + 1 - k;
  }
  return std::string_view::npos;
}

// Short needles cost at most a constant factor with the library search, which is faster.
constexpr size_t kShortNeedle = 32;

}  // namespace

size_t FindText(std::string_view hay, std::string_view needle, size_t from) {
  if (from > hay.size()) return std::string_view::npos;
  if (needle.size() <= kShortNeedle) return hay.find(needle, from);
  return KmpFind(hay, needle, from);
}

size_t RFindText(std::string_view hay, std::string_view needle, size_t end) {
  end = std::min(end, hay.size());
  if (needle.size() > end) return std::string_view::npos;
  if (needle.size() <= kShortNeedle) return hay.substr(0, end).rfind(needle);
  // Search the reversed text for the reversed needle: the first hit there is the last here.
  std::string rh(hay.substr(0, end).rbegin(), hay.substr(0, end).rend());
  std::string rn(needle.rbegin(), needle.rend());
  size_t at = KmpFind(rh, rn, 0);
  return at == std::string_view::npos ? at : end - at - needle.size();
}

size_t CodePointCount(std::string_view s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size();) {
    DecodeUtf8(s, i);
    ++n;
  }
  return n;
}

namespace {

// Blocks where upper and lower case letters alternate: even code point upper, odd lower
// (or the reverse when `odd_upper`).
struct AlternatingBlock {
  uint32_t first, last;
  bool odd_upper;
};
constexpr AlternatingBlock kAlternating[] = {
    {0x0100, 0x012F, false}, {0x0132, 0x0137, false}, {0x0139, 0x0148, true},  {0x014A, 0x0177, false},
    {0x0179, 0x017E, true},  {0x01DE, 0x01EF, false}, {0x01F8, 0x021F, false}, {0x0460, 0x0481, false},
    {0x048A, 0x04BF, false}, {0x04C1, 0x04CE, true},  {0x04D0, 0x052F, false}, {0x1E00, 0x1E95, false},
    {0x1EA0, 0x1EFF, false},
};

// Blocks that map to another block at a fixed offset (lower = upper + delta).
struct ShiftedBlock {
  uint32_t upper_first, upper_last;
  uint32_t delta;
};
constexpr ShiftedBlock kShifted[] = {
    {0x0041, 0x005A, 0x20}, {0x00C0, 0x00D6, 0x20}, {0x00D8, 0x00DE, 0x20}, {0x0391, 0x03A1, 0x20},
    {0x03A3, 0x03AB, 0x20}, {0x0388, 0x038A, 0x25}, {0x0410, 0x042F, 0x20}, {0x0400, 0x040F, 0x50},
    {0x0531, 0x0556, 0x30}, {0xFF21, 0xFF3A, 0x20},
};

}  // namespace

uint32_t UpperCodePoint(uint32_t cp) {
  if (cp < 0x80) return cp >= 'a' && cp <= 'z' ? cp - 0x20 : cp;
  for (const auto& b : kShifted) {
    if (cp >= b.upper_first + b.delta && cp <= b.upper_last + b.delta) return cp - b.delta;
  }
  for (const auto& b : kAlternating) {
    // Each pair is (upper, upper + 1).
    if (cp >= b.first && cp <= b.last && (cp % 2 == 1) != b.odd_upper) return cp - 1;
  }
  switch (cp) {
    case 0x00FF: return 0x0178;
    case 0x0131: return 'I';
    case 0x017F: return 'S';
    case 0x03C2: return 0x03A3;
    case 0x03AC: return 0x0386;
    case 0x03CC: return 0x038C;
    case 0x03CD: return 0x038E;
    case 0x03CE: return 0x038F;
    default: return cp;
  }
}

uint32_t LowerCodePoint(uint32_t cp) {
  if (cp < 0x80) return cp >= 'A' && cp <= 'Z' ? cp + 0x20 : cp;
  for (const auto& b : kShifted) {
    if (cp >= b.upper_first && cp <= b.upper_last) return cp + b.delta;
  }
  for (const auto& b : kAlternating) {
    if (cp >= b.first && cp <= b.last && (cp % 2 == 1) == b.odd_upper) return cp + 1;
  }
  switch (cp) {
    case 0x0178: return 0x00FF;
    case 0x0386: return 0x03AC;
    case 0x038C: return 0x03CC;
    case 0x038E: return 0x03CD;
    case 0x038F: return 0x03CE;
    default: return cp;
  }
}

std::string MapCase(std::string_view s, bool upper) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t start = i;
    uint32_t cp = DecodeUtf8(s, i);
    bool invalid = i - start == 1 && cp >= 0x80;
    uint32_t mapped = invalid ? cp : upper ? UpperCodePoint(cp) : LowerCodePoint(cp);
    if (mapped == cp) {
      out.append(s.substr(start, i - start));
    } else {
      AppendUtf8(out, mapped);
    }
  }
  return out;
}

bool IsUnicodeSpace(uint32_t cp) {
  // Python's str.isspace() set, which is what strip()/split() use in Jinja.
  if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F)) return true;
  switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default: return cp >= 0x2000 && cp <= 0x200A;
  }
}

// ---- JSON ----

namespace {

void AppendJsonString(std::string& out, std::string_view s, bool ensure_ascii) {
  static const char* kHex = "0123456789abcdef";
  out += '"';
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      switch (c) {
        case '"': out += "\\\""; continue;
        case '\\': out += "\\\\"; continue;
        case '\n': out += "\\n"; continue;
        case '\r': out += "\\r"; continue;
        case '\t': out += "\\t"; continue;
        case '\b': out += "\\b"; continue;
        case '\f': out += "\\f"; continue;
        default: break;
      }
      if (c < 0x20 || (ensure_ascii && c == 0x7F)) {
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 0xF];
      } else {
        out += static_cast<char>(c);
      }
      continue;
    }
    size_t start = i;
    uint32_t cp = DecodeUtf8(s, i);
    if (!ensure_ascii) {
      out.append(s.substr(start, i - start));
      continue;
    }
    auto unit = [&](uint32_t u) {
      out += "\\u";
      for (int shift = 12; shift >= 0; shift -= 4) out += kHex[(u >> shift) & 0xF];
    };
    if (cp >= 0x10000) {
      cp -= 0x10000;
      unit(0xD800 + (cp >> 10));
      unit(0xDC00 + (cp & 0x3FF));
    } else {
      unit(cp);
    }
  }
  out += '"';
}

class JsonWriter {
 public:
  JsonWriter(const JsonOptions& o, size_t max_bytes) : o_(o), max_bytes_(max_bytes) {
    item_sep_ = o.item_separator ? *o.item_separator : (o.indent >= 0 ? "," : ", ");
  }

  Status Write(const Value& v, int depth) {
    // Values built from JSON or template literals are trees; the depth cap is a backstop.
    if (depth > 512) return InvalidArgument("tojson: value nested too deeply");
    if (out.size() > max_bytes_) return OutOfRange("tojson: output exceeds the size limit");
    switch (v.kind()) {
      case Value::Kind::kUndefined:
      case Value::Kind::kNone: out += "null"; return Status::Ok();
      case Value::Kind::kBool: out += v.as_bool() ? "true" : "false"; return Status::Ok();
      case Value::Kind::kInt: out += std::to_string(v.as_int()); return Status::Ok();
      case Value::Kind::kFloat: {
        double d = v.as_float();
        if (std::isnan(d)) out += "NaN";
        else if (std::isinf(d)) out += d < 0 ? "-Infinity" : "Infinity";
        else out += FloatRepr(d);
        return Status::Ok();
      }
      case Value::Kind::kString: AppendJsonString(out, v.str(), o_.ensure_ascii); return Status::Ok();
      case Value::Kind::kList: {
        const auto& items = v.list();
        if (items.empty()) {
          out += "[]";
          return Status::Ok();
        }
        out += '[';
        for (size_t i = 0; i < items.size(); ++i) {
          if (i > 0) out += item_sep_;
          Newline(depth + 1);
          CODA_RETURN_IF_ERROR(Write(items[i], depth + 1));
        }
        Newline(depth);
        out += ']';
        return Status::Ok();
      }
      case Value::Kind::kDict:
      case Value::Kind::kNamespace: {
        const Dict& d = v.kind() == Value::Kind::kDict ? v.dict() : v.ns();
        if (d.size() == 0) {
          out += "{}";
          return Status::Ok();
        }
        std::vector<const std::pair<std::string, Value>*> entries;
        for (const auto& e : d.entries()) entries.push_back(&e);
        if (o_.sort_keys) {
          std::stable_sort(entries.begin(), entries.end(), [](auto* a, auto* b) { return a->first < b->first; });
        }
        out += '{';
        for (size_t i = 0; i < entries.size(); ++i) {
          if (i > 0) out += item_sep_;
          Newline(depth + 1);
          AppendJsonString(out, entries[i]->first, o_.ensure_ascii);
          out += o_.key_separator;
          CODA_RETURN_IF_ERROR(Write(entries[i]->second, depth + 1));
        }
        Newline(depth);
        out += '}';
        return Status::Ok();
      }
      case Value::Kind::kCallable: return InvalidArgument("tojson: a function is not JSON serializable");
    }
    return Status::Ok();
  }

  std::string out;

 private:
  void Newline(int depth) {
    if (o_.indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(o_.indent) * static_cast<size_t>(depth), ' ');
  }

  const JsonOptions& o_;
  size_t max_bytes_;
  std::string item_sep_;
};

}  // namespace

Result<std::string> ToJson(const Value& v, const JsonOptions& options, size_t max_bytes) {
  JsonWriter w(options, max_bytes);
  CODA_RETURN_IF_ERROR(w.Write(v, 0));
  if (w.out.size() > max_bytes) return OutOfRange("tojson: output exceeds the size limit");
  return std::move(w.out);
}

}  // namespace coda::text::jinja
