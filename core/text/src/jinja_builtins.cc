// Operators, filters, tests, methods and global functions of the chat-template engine.
// Errors here carry no location: the expression that called in adds line and column.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <unordered_map>

#include "jinja_interp.h"

namespace coda::text::jinja {
namespace {

using K = Value::Kind;

std::string Kind(const Value& v) { return std::string(KindName(v.kind())); }

bool IsIntLike(const Value& v) { return v.kind() == K::kInt || v.kind() == K::kBool; }
bool IsNumeric(const Value& v) { return IsIntLike(v) || v.kind() == K::kFloat; }
int64_t AsInt(const Value& v) { return v.kind() == K::kBool ? int64_t{v.as_bool()} : v.as_int(); }

Status Overflow() { return OutOfRange("integer overflow"); }

Result<int64_t> IntArg(const Value& v, std::string_view what, int64_t def) {
  if (v.is_undefined() || v.is_none()) return def;
  if (!IsIntLike(v)) return InvalidArgument(std::string(what) + " must be an integer, got a " + Kind(v));
  return AsInt(v);
}

bool BoolArg(const Value& v, bool def) { return v.is_undefined() ? def : v.Truthy(); }

// String filters accept any value the way Jinja's soft_str does.
Result<std::string> Text(Interpreter& in, const Value& v) {
  if (v.is_string()) return v.str();
  CODA_ASSIGN_OR_RETURN(std::string s, ToOutputString(v, in.max_string_bytes()));
  CODA_RETURN_IF_ERROR(in.ChargeString(s.size()));
  return s;
}

std::string Lower(std::string_view s) { return MapCase(s, false); }
std::string Upper(std::string_view s) { return MapCase(s, true); }

// First code point upper, the rest lower (Python's str.capitalize).
std::string Capitalize(std::string_view s) {
  size_t i = 0;
  if (s.empty()) return "";
  DecodeUtf8(s, i);
  return Upper(s.substr(0, i)) + Lower(s.substr(i));
}

// Jinja's title filter: words split at whitespace, '-' and opening brackets are capitalized.
std::string Title(std::string_view s) {
  std::string out;
  bool word_start = true;
  for (size_t i = 0; i < s.size();) {
    size_t start = i;
    uint32_t cp = DecodeUtf8(s, i);
    std::string_view raw = s.substr(start, i - start);
    bool separator = IsUnicodeSpace(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
    out += separator ? std::string(raw) : word_start ? Upper(raw) : Lower(raw);
    word_start = separator;
  }
  return out;
}

// Python str.strip family; `chars` null means Unicode whitespace.
std::string Strip(std::string_view s, const std::string* chars, bool left, bool right) {
  std::vector<std::string_view> set;
  if (chars != nullptr) set = SplitCodePoints(*chars);
  auto strip = [&](size_t from, size_t to) {
    std::string_view raw = s.substr(from, to - from);
    if (chars != nullptr) return std::find(set.begin(), set.end(), raw) != set.end();
    size_t i = 0;
    return IsUnicodeSpace(DecodeUtf8(raw, i));
  };
  size_t b = 0;
  size_t e = s.size();
  while (left && b < e) {
    size_t next = b;
    DecodeUtf8(s, next);
    if (!strip(b, next)) break;
    b = next;
  }
  while (right && e > b) {
    // Step back over continuation bytes to the start of the last code point.
    size_t k = e - 1;
    while (k > b && e - k < 4 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    size_t end = k;
    DecodeUtf8(s, end);
    if (end != e) k = e - 1;  // not one well-formed sequence: treat the last byte alone
    if (!strip(k, e)) break;
    e = k;
  }
  return std::string(s.substr(b, e - b));
}

// Python str.split / str.rsplit.
std::vector<std::string> Split(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> parts;
  if (sep.is_string()) {
    const std::string& d = sep.str();
    if (from_right) {
      size_t end = s.size();
      while (maxsplit != 0) {
        size_t at = RFindText(s, d, end);
        if (at == std::string::npos) break;
        parts.push_back(s.substr(at + d.size(), end - at - d.size()));
        end = at;
        --maxsplit;
      }
      parts.push_back(s.substr(0, end));
      std::reverse(parts.begin(), parts.end());
    } else {
      size_t start = 0;
      while (maxsplit != 0) {
        size_t at = FindText(s, d, start);
        if (at == std::string::npos) break;
        parts.push_back(s.substr(start, at - start));
        start = at + d.size();
        --maxsplit;
      }
      parts.push_back(s.substr(start));
    }
    return parts;
  }
  // No separator: runs of whitespace split, and leading/trailing whitespace is ignored.
  std::vector<std::pair<size_t, size_t>> words;  // byte ranges
  for (size_t i = 0; i < s.size();) {
    size_t at = i;
    if (IsUnicodeSpace(DecodeUtf8(s, i))) continue;
    size_t end = i;
    while (end < s.size()) {
      size_t next = end;
      if (IsUnicodeSpace(DecodeUtf8(s, next))) break;
      end = next;
    }
    words.emplace_back(at, end);
    i = end;
  }
  if (maxsplit < 0 || static_cast<size_t>(maxsplit) >= words.size()) {
    for (auto [a, b] : words) parts.push_back(s.substr(a, b - a));
    return parts;
  }
  auto m = static_cast<size_t>(maxsplit);
  if (from_right) {
    size_t first_kept = words.size() - m;
    // The unsplit remainder keeps its own whitespace, as in Python.
    parts.push_back(s.substr(0, words[first_kept - 1].second));
    for (size_t k = first_kept; k < words.size(); ++k) {
      parts.push_back(s.substr(words[k].first, words[k].second - words[k].first));
    }
  } else {
    for (size_t k = 0; k < m; ++k) parts.push_back(s.substr(words[k].first, words[k].second - words[k].first));
    parts.push_back(s.substr(words[m].first));
  }
  return parts;
}

Result<std::string> Replace(Interpreter& in, const std::string& s, const std::string& from, const std::string& to,
                            int64_t count) {
  std::string out;
  if (from.empty()) {
    // Python inserts the replacement around every code point.
    size_t i = 0;
    for (int64_t n = 0; i <= s.size(); ++n) {
      if (count < 0 || n < count) out += to;
      CODA_RETURN_IF_ERROR(in.CheckStringSize(out.size()));
      if (i == s.size()) break;
      size_t start = i;
      DecodeUtf8(s, i);
      out.append(s, start, i - start);
    }
  } else {
    size_t start = 0;
    while (count != 0) {
      size_t at = FindText(s, from, start);
      if (at == std::string::npos) break;
      out.append(s, start, at - start);
      out += to;
      CODA_RETURN_IF_ERROR(in.CheckStringSize(out.size()));
      start = at + from.size();
      if (count > 0) --count;
    }
    out.append(s, start);
  }
  CODA_RETURN_IF_ERROR(in.ChargeString(s.size() + out.size()));
  return out;
}

Result<std::vector<Value>> ItemsOf(Interpreter& in, const Value& v, std::string_view what) {
  switch (v.kind()) {
    case K::kUndefined: return std::vector<Value>{};
    case K::kList: return v.list();
    case K::kDict: {
      std::vector<Value> keys;
      for (const auto& [k, unused] : v.dict().entries()) keys.push_back(Value::String(k));
      return keys;
    }
    case K::kString: {
      // One allocated value per code point: charge before materializing.
      CODA_RETURN_IF_ERROR(in.ChargeItems(4 * v.str().size()));
      std::vector<Value> cps;
      for (std::string_view cp : SplitCodePoints(v.str())) cps.push_back(Value::String(std::string(cp)));
      return cps;
    }
    default: return InvalidArgument(std::string(what) + ": cannot iterate over a " + Kind(v));
  }
}

// "a.b.0" attribute paths used by map/sort/selectattr(attribute=...).
Value AttrPath(const Value& v, const std::string& path) {
  Value cur = v;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (numeric && cur.is_list() && part.size() < 18) {
      cur = GetItem(cur, Value::Int(std::stoll(part)));
    } else {
      cur = GetAttr(cur, part);
    }
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

Result<int> Compare(const Value& a, const Value& b, bool case_sensitive = true) {
  if (IsNumeric(a) && IsNumeric(b)) {
    if (IsIntLike(a) && IsIntLike(b)) return AsInt(a) < AsInt(b) ? -1 : AsInt(a) > AsInt(b) ? 1 : 0;
    double x = a.as_number();
    double y = b.as_number();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) {
    int c = case_sensitive ? a.str().compare(b.str()) : Lower(a.str()).compare(Lower(b.str()));
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  return InvalidArgument("cannot compare a " + Kind(a) + " with a " + Kind(b));
}

Result<bool> Contains(Interpreter& in, const Value& container, const Value& item) {
  switch (container.kind()) {
    case K::kUndefined: return false;
    case K::kString:
      if (!item.is_string()) return InvalidArgument("'in <string>' needs a string on the left, got a " + Kind(item));
      CODA_RETURN_IF_ERROR(in.Charge((container.str().size() + item.str().size()) / 16));
      return FindText(container.str(), item.str()) != std::string::npos;
    case K::kList:
      for (const Value& v : container.list()) {
        if (Equal(v, item)) return true;
      }
      return false;
    case K::kDict: return item.is_string() && container.dict().Find(item.str()) != nullptr;
    default: return InvalidArgument("'in' needs a string, list or dict on the right, got a " + Kind(container));
  }
}

Result<Value> Repeat(Interpreter& in, const Value& seq, int64_t n) {
  if (n <= 0) return seq.is_string() ? Value::String("") : Value::MakeList({});
  auto times = static_cast<uint64_t>(n);
  if (seq.is_string()) {
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(seq.str().size(), times, &bytes)) return OutOfRange("repeated string is too large");
    CODA_RETURN_IF_ERROR(in.ChargeString(bytes));
    std::string out;
    out.reserve(bytes);
    for (uint64_t i = 0; i < times; ++i) out += seq.str();
    return Value::String(std::move(out));
  }
  uint64_t items = 0;
  if (__builtin_mul_overflow(seq.list().size(), times, &items)) return OutOfRange("repeated list is too large");
  CODA_RETURN_IF_ERROR(in.ChargeItems(items));
  Value::List out;
  out.reserve(items);
  for (uint64_t i = 0; i < times; ++i) out.insert(out.end(), seq.list().begin(), seq.list().end());
  return Value::MakeList(std::move(out));
}

Result<Value> IntArithmetic(BinOp op, int64_t a, int64_t b) {
  int64_t r = 0;
  switch (op) {
    case BinOp::kAdd:
      if (__builtin_add_overflow(a, b, &r)) return Overflow();
      return Value::Int(r);
    case BinOp::kSub:
      if (__builtin_sub_overflow(a, b, &r)) return Overflow();
      return Value::Int(r);
    case BinOp::kMul:
      if (__builtin_mul_overflow(a, b, &r)) return Overflow();
      return Value::Int(r);
    case BinOp::kFloorDiv: {
      if (b == 0) return InvalidArgument("integer division by zero");
      if (a == std::numeric_limits<int64_t>::min() && b == -1) return Overflow();
      int64_t q = a / b;
      if (a % b != 0 && ((a < 0) != (b < 0))) --q;
      return Value::Int(q);
    }
    case BinOp::kMod: {
      if (b == 0) return InvalidArgument("integer modulo by zero");
      if (b == -1) return Value::Int(0);
      int64_t m = a % b;
      if (m != 0 && ((m < 0) != (b < 0))) m += b;
      return Value::Int(m);
    }
    case BinOp::kPow: {
      if (b < 0) {
        if (a == 0) return InvalidArgument("0 cannot be raised to a negative power");
        return Value::Float(std::pow(static_cast<double>(a), static_cast<double>(b)));
      }
      int64_t result = 1;
      int64_t base = a;
      for (int64_t e = b; e > 0; e >>= 1) {
        if ((e & 1) != 0 && __builtin_mul_overflow(result, base, &result)) return Overflow();
        if (e > 1 && __builtin_mul_overflow(base, base, &base)) return Overflow();
      }
      return Value::Int(result);
    }
    default: return Internal("not an integer operator");
  }
}

Result<Value> FloatArithmetic(BinOp op, double a, double b) {
  double r = 0;
  switch (op) {
    case BinOp::kAdd: r = a + b; break;
    case BinOp::kSub: r = a - b; break;
    case BinOp::kMul: r = a * b; break;
    case BinOp::kDiv:
      if (b == 0) return InvalidArgument("division by zero");
      r = a / b;
      break;
    case BinOp::kFloorDiv:
      if (b == 0) return InvalidArgument("division by zero");
      r = std::floor(a / b);
      break;
    case BinOp::kMod:
      if (b == 0) return InvalidArgument("modulo by zero");
      r = std::fmod(a, b);
      if (r != 0 && ((r < 0) != (b < 0))) r += b;
      break;
    case BinOp::kPow:
      if (a == 0 && b < 0) return InvalidArgument("0.0 cannot be raised to a negative power");
      r = std::pow(a, b);
      if (std::isnan(r) && !std::isnan(a) && !std::isnan(b)) return InvalidArgument("power has no real result");
      break;
    default: return Internal("not a float operator");
  }
  return Value::Float(r);
}

const char* OpSpelling(BinOp op) {
  switch (op) {
    case BinOp::kAdd: return "+";
    case BinOp::kSub: return "-";
    case BinOp::kMul: return "*";
    case BinOp::kDiv: return "/";
    case BinOp::kFloorDiv: return "//";
    case BinOp::kMod: return "%";
    case BinOp::kPow: return "**";
    case BinOp::kConcat: return "~";
    case BinOp::kEq: return "==";
    case BinOp::kNe: return "!=";
    case BinOp::kLt: return "<";
    case BinOp::kLe: return "<=";
    case BinOp::kGt: return ">";
    case BinOp::kGe: return ">=";
    case BinOp::kIn: return "in";
    case BinOp::kNotIn: return "not in";
  }
  return "?";
}

}  // namespace

// ---- operators and lookups ----

Result<Value> BinaryOp(Interpreter& in, BinOp op, const Value& a, const Value& b) {
  switch (op) {
    case BinOp::kEq: return Value::Bool(Equal(a, b));
    case BinOp::kNe: return Value::Bool(!Equal(a, b));
    case BinOp::kIn:
    case BinOp::kNotIn: {
      CODA_ASSIGN_OR_RETURN(bool found, Contains(in, b, a));
      return Value::Bool(found == (op == BinOp::kIn));
    }
    case BinOp::kLt:
    case BinOp::kLe:
    case BinOp::kGt:
    case BinOp::kGe: {
      CODA_ASSIGN_OR_RETURN(int c, Compare(a, b));
      bool r = op == BinOp::kLt ? c < 0 : op == BinOp::kLe ? c <= 0 : op == BinOp::kGt ? c > 0 : c >= 0;
      return Value::Bool(r);
    }
    case BinOp::kConcat: {
      CODA_ASSIGN_OR_RETURN(std::string s, Text(in, a));
      CODA_ASSIGN_OR_RETURN(std::string t, Text(in, b));
      s += t;
      CODA_RETURN_IF_ERROR(in.ChargeString(s.size()));
      return Value::String(std::move(s));
    }
    default: break;
  }
  auto bad = [&] {
    return InvalidArgument(std::string("unsupported operand types for ") + OpSpelling(op) + ": " + Kind(a) + " and " +
                           Kind(b));
  };
  if (IsNumeric(a) && IsNumeric(b)) {
    if (IsIntLike(a) && IsIntLike(b) && op != BinOp::kDiv) return IntArithmetic(op, AsInt(a), AsInt(b));
    return FloatArithmetic(op, a.as_number(), b.as_number());
  }
  if (op == BinOp::kAdd) {
    if (a.is_list() && b.is_list()) {
      CODA_RETURN_IF_ERROR(in.ChargeItems(a.list().size() + b.list().size()));
      Value::List out = a.list();
      out.insert(out.end(), b.list().begin(), b.list().end());
      return Value::MakeList(std::move(out));
    }
    // A string joins with anything printable, as in Hugging Face's engine; none and undefined
    // stay errors because they almost always mean a missing message field.
    bool printable_a = a.is_string() || IsNumeric(a);
    bool printable_b = b.is_string() || IsNumeric(b);
    if ((a.is_string() || b.is_string()) && printable_a && printable_b) {
      CODA_ASSIGN_OR_RETURN(std::string s, Text(in, a));
      CODA_ASSIGN_OR_RETURN(std::string t, Text(in, b));
      s += t;
      CODA_RETURN_IF_ERROR(in.ChargeString(s.size()));
      return Value::String(std::move(s));
    }
  }
  if (op == BinOp::kMul) {
    if ((a.is_string() || a.is_list()) && IsIntLike(b)) return Repeat(in, a, AsInt(b));
    if (IsIntLike(a) && (b.is_string() || b.is_list())) return Repeat(in, b, AsInt(a));
  }
  if (op == BinOp::kMod && a.is_string()) {
    return Unsupported("printf-style string formatting ('%') is not supported");
  }
  return bad();
}

Value GetAttr(const Value& obj, std::string_view name) {
  const Value* v = nullptr;
  if (obj.is_dict()) v = obj.dict().Find(name);
  else if (obj.kind() == K::kNamespace) v = obj.ns().Find(name);
  return v != nullptr ? *v : Value();
}

Value GetItem(const Value& obj, const Value& key) {
  if (key.is_string()) {
    if (obj.is_dict() || obj.kind() == K::kNamespace) return GetAttr(obj, key.str());
    return Value();
  }
  if (!IsIntLike(key)) return Value();
  int64_t i = AsInt(key);
  if (obj.is_list()) {
    auto n = static_cast<int64_t>(obj.list().size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value();
    return obj.list()[static_cast<size_t>(i)];
  }
  if (obj.is_string()) {
    const std::string& s = obj.str();
    if (i < 0) i += static_cast<int64_t>(CodePointCount(s));
    if (i < 0) return Value();
    size_t at = CodePointOffset(s, static_cast<size_t>(i));
    if (at >= s.size()) return Value();
    size_t end = at;
    DecodeUtf8(s, end);
    return Value::String(s.substr(at, end - at));
  }
  return Value();
}

Result<std::vector<Value>> BindArgs(std::string_view fn, CallArgs& args, std::initializer_list<std::string_view> params) {
  std::vector<Value> out(params.size());
  std::vector<bool> given(params.size(), false);
  if (args.positional.size() > params.size()) {
    return InvalidArgument(std::string(fn) + "() takes at most " + std::to_string(params.size()) + " arguments, got " +
                           std::to_string(args.positional.size()));
  }
  for (size_t i = 0; i < args.positional.size(); ++i) {
    out[i] = std::move(args.positional[i]);
    given[i] = true;
  }
  for (auto& [name, value] : args.keyword) {
    auto it = std::find(params.begin(), params.end(), name);
    if (it == params.end()) return InvalidArgument(std::string(fn) + "() got an unexpected keyword argument '" + name + "'");
    auto i = static_cast<size_t>(it - params.begin());
    if (given[i]) return InvalidArgument(std::string(fn) + "() got multiple values for '" + name + "'");
    out[i] = std::move(value);
    given[i] = true;
  }
  return out;
}

// ---- tests ----

namespace {

using TestFn = Result<bool> (*)(Interpreter&, const Value&, std::vector<Value>&);

Result<bool> NeedInt(const Value& v, std::string_view test) {
  if (!IsIntLike(v)) return InvalidArgument(std::string("the '") + std::string(test) + "' test needs an integer, got a " + Kind(v));
  return true;
}

// Python's str.islower()/isupper(): some cased letter, and none of the other case.
bool HasCased(const std::string& s, bool upper) {
  bool cased = false;
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = DecodeUtf8(s, i);
    bool is_lower = UpperCodePoint(cp) != cp;
    bool is_upper = LowerCodePoint(cp) != cp;
    if (upper ? is_lower : is_upper) return false;
    cased = cased || is_lower || is_upper;
  }
  return cased;
}

Result<bool> CompareTest(const Value& v, std::vector<Value>& a, BinOp op) {
  if (a.empty()) return InvalidArgument(std::string("the '") + OpSpelling(op) + "' test needs an argument");
  if (op == BinOp::kEq) return Equal(v, a[0]);
  if (op == BinOp::kNe) return !Equal(v, a[0]);
  CODA_ASSIGN_OR_RETURN(int c, Compare(v, a[0]));
  return op == BinOp::kLt ? c < 0 : op == BinOp::kLe ? c <= 0 : op == BinOp::kGt ? c > 0 : c >= 0;
}

const std::unordered_map<std::string_view, TestFn>& Tests() {
  static const std::unordered_map<std::string_view, TestFn> kTests = {
      {"defined", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return !v.is_undefined(); }},
      {"undefined", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.is_undefined(); }},
      {"none", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.is_none(); }},
      {"boolean", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.kind() == K::kBool; }},
      {"true", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.kind() == K::kBool && v.as_bool(); }},
      {"false", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.kind() == K::kBool && !v.as_bool(); }},
      {"integer", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.is_int(); }},
      {"float", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.kind() == K::kFloat; }},
      {"number", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return IsNumeric(v); }},
      {"string", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.is_string(); }},
      {"mapping", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.is_dict(); }},
      {"iterable",
       [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.is_list() || v.is_dict() || v.is_string(); }},
      {"sequence",
       [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.is_list() || v.is_dict() || v.is_string(); }},
      {"callable", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.kind() == K::kCallable; }},
      {"odd",
       [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> {
         CODA_RETURN_IF_ERROR(NeedInt(v, "odd").status());
         return AsInt(v) % 2 != 0;
       }},
      {"even",
       [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> {
         CODA_RETURN_IF_ERROR(NeedInt(v, "even").status());
         return AsInt(v) % 2 == 0;
       }},
      {"divisibleby",
       [](Interpreter&, const Value& v, std::vector<Value>& a) -> Result<bool> {
         CODA_RETURN_IF_ERROR(NeedInt(v, "divisibleby").status());
         if (a.empty() || !IsIntLike(a[0])) return InvalidArgument("divisibleby needs an integer argument");
         int64_t d = AsInt(a[0]);
         if (d == 0) return InvalidArgument("divisibleby(0)");
         return d == -1 || AsInt(v) % d == 0;
       }},
      {"lower", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.is_string() && HasCased(v.str(), false); }},
      {"upper", [](Interpreter&, const Value& v, std::vector<Value>&) -> Result<bool> { return v.is_string() && HasCased(v.str(), true); }},
      {"sameas",
       [](Interpreter&, const Value& v, std::vector<Value>& a) -> Result<bool> {
         if (a.empty()) return InvalidArgument("sameas needs an argument");
         if (v.identity() != nullptr || a[0].identity() != nullptr) return v.identity() == a[0].identity();
         return v.kind() == a[0].kind() && Equal(v, a[0]);
       }},
      {"in",
       [](Interpreter& in, const Value& v, std::vector<Value>& a) -> Result<bool> {
         if (a.empty()) return InvalidArgument("the 'in' test needs an argument");
         return Contains(in, a[0], v);
       }},
      {"eq", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kEq); }},
      {"equalto", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kEq); }},
      {"==", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kEq); }},
      {"ne", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kNe); }},
      {"!=", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kNe); }},
      {"lt", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kLt); }},
      {"lessthan", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kLt); }},
      {"<", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kLt); }},
      {"le", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kLe); }},
      {"<=", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kLe); }},
      {"gt", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kGt); }},
      {"greaterthan", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kGt); }},
      {">", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kGt); }},
      {"ge", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kGe); }},
      {">=", [](Interpreter&, const Value& v, std::vector<Value>& a) { return CompareTest(v, a, BinOp::kGe); }},
  };
  return kTests;
}

}  // namespace

bool IsKnownTest(std::string_view name) { return Tests().count(name) != 0; }

bool TestTakesArgument(std::string_view name) {
  static constexpr std::string_view kWithArg[] = {"divisibleby", "sameas", "in", "eq", "equalto", "ne", "lt",
                                                  "lessthan",    "le",     "gt", "greaterthan", "ge"};
  return std::find(std::begin(kWithArg), std::end(kWithArg), name) != std::end(kWithArg);
}

Result<bool> ApplyTest(Interpreter& in, std::string_view name, const Value& operand, CallArgs& args) {
  CODA_RETURN_IF_ERROR(in.Charge(1));
  auto it = Tests().find(name);
  if (it == Tests().end()) return Unsupported("unknown test '" + std::string(name) + "'");
  if (!args.keyword.empty()) return InvalidArgument("tests take no keyword arguments");
  return it->second(in, operand, args.positional);
}

// ---- filters ----

namespace {

using FilterFn = Result<Value> (*)(Interpreter&, const Value&, CallArgs&);

// Sort/unique/min/max key: an attribute path and case folding, as Jinja's sort filter does.
Value SortKey(const Value& v, const Value& attribute, bool case_sensitive) {
  Value key = attribute.is_string() ? AttrPath(v, attribute.str())
              : IsIntLike(attribute) ? GetItem(v, attribute)
                                     : v;
  if (!case_sensitive && key.is_string()) return Value::String(Lower(key.str()));
  return key;
}

Result<Value> SortFilter(Interpreter& in, const Value& v, CallArgs& a) {
  CODA_ASSIGN_OR_RETURN(auto p, BindArgs("sort", a, {"reverse", "case_sensitive", "attribute"}));
  CODA_ASSIGN_OR_RETURN(std::vector<Value> items, ItemsOf(in, v, "sort"));
  bool reverse = BoolArg(p[0], false);
  bool cs = BoolArg(p[1], false);
  CODA_RETURN_IF_ERROR(in.ChargeItems(items.size() * (1 + static_cast<size_t>(std::log2(items.size() + 1)))));
  std::vector<std::pair<Value, Value>> keyed;
  for (auto& item : items) keyed.emplace_back(SortKey(item, p[2], cs), std::move(item));
  Status err;
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    if (!err.ok()) return false;
    auto c = Compare(x.first, y.first);
    if (!c.ok()) {
      err = c.status();
      return false;
    }
    return reverse ? *c > 0 : *c < 0;
  });
  CODA_RETURN_IF_ERROR(err);
  Value::List out;
  for (auto& [k, item] : keyed) out.push_back(std::move(item));
  return Value::MakeList(std::move(out));
}

Result<Value> MinMax(Interpreter& in, const Value& v, CallArgs& a, bool want_max) {
  CODA_ASSIGN_OR_RETURN(auto p, BindArgs(want_max ? "max" : "min", a, {"case_sensitive", "attribute"}));
  CODA_ASSIGN_OR_RETURN(std::vector<Value> items, ItemsOf(in, v, want_max ? "max" : "min"));
  if (items.empty()) return Value();
  bool cs = BoolArg(p[0], false);
  size_t best = 0;
  for (size_t i = 1; i < items.size(); ++i) {
    CODA_ASSIGN_OR_RETURN(int c, Compare(SortKey(items[i], p[1], cs), SortKey(items[best], p[1], cs)));
    if (want_max ? c > 0 : c < 0) best = i;
  }
  return items[best];
}

Result<Value> UniqueFilter(Interpreter& in, const Value& v, CallArgs& a) {
  CODA_ASSIGN_OR_RETURN(auto p, BindArgs("unique", a, {"case_sensitive", "attribute"}));
  CODA_ASSIGN_OR_RETURN(std::vector<Value> items, ItemsOf(in, v, "unique"));
  bool cs = BoolArg(p[0], false);
  Value::List out;
  std::vector<Value> seen;
  for (auto& item : items) {
    Value key = SortKey(item, p[1], cs);
    CODA_RETURN_IF_ERROR(in.ChargeItems(seen.size() + 1));
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return Equal(s, key); })) {
      seen.push_back(key);
      out.push_back(std::move(item));
    }
  }
  return Value::MakeList(std::move(out));
}

Result<Value> SelectFilter(Interpreter& in, const Value& v, CallArgs& a, bool by_attr, bool keep) {
  CODA_ASSIGN_OR_RETURN(std::vector<Value> items, ItemsOf(in, v, "select"));
  if (!a.keyword.empty()) return InvalidArgument("select filters take no keyword arguments");
  std::vector<Value> rest = a.positional;
  Value attr;
  if (by_attr) {
    if (rest.empty() || !rest[0].is_string()) return InvalidArgument("selectattr/rejectattr need an attribute name");
    attr = rest[0];
    rest.erase(rest.begin());
  }
  std::string test;
  if (!rest.empty()) {
    if (!rest[0].is_string()) return InvalidArgument("the test name must be a string");
    test = rest[0].str();
    rest.erase(rest.begin());
    if (!IsKnownTest(test)) return Unsupported("unknown test '" + test + "'");
  }
  Value::List out;
  for (auto& item : items) {
    Value subject = by_attr ? AttrPath(item, attr.str()) : item;
    bool pass = false;
    if (test.empty()) {
      pass = subject.Truthy();
    } else {
      CallArgs targs{rest, {}};
      CODA_ASSIGN_OR_RETURN(pass, ApplyTest(in, test, subject, targs));
    }
    if (pass == keep) out.push_back(std::move(item));
  }
  return Value::MakeList(std::move(out));
}

Result<Value> MapFilter(Interpreter& in, const Value& v, CallArgs& a) {
  CODA_ASSIGN_OR_RETURN(std::vector<Value> items, ItemsOf(in, v, "map"));
  Value::List out;
  auto attr_it = std::find_if(a.keyword.begin(), a.keyword.end(), [](const auto& kw) { return kw.first == "attribute"; });
  if (attr_it != a.keyword.end()) {
    CODA_ASSIGN_OR_RETURN(auto p, BindArgs("map", a, {"attribute", "default"}));
    if (!p[0].is_string()) return InvalidArgument("map(attribute=...) needs a string");
    for (const auto& item : items) {
      Value x = AttrPath(item, p[0].str());
      out.push_back(x.is_undefined() && !p[1].is_undefined() ? p[1] : x);
    }
    return Value::MakeList(std::move(out));
  }
  if (a.positional.empty() || !a.positional[0].is_string()) {
    return InvalidArgument("map needs a filter name or attribute=...");
  }
  std::string filter = a.positional[0].str();
  if (!IsKnownFilter(filter)) return Unsupported("unknown filter '" + filter + "'");
  for (const auto& item : items) {
    CallArgs fargs{std::vector<Value>(a.positional.begin() + 1, a.positional.end()), a.keyword};
    CODA_ASSIGN_OR_RETURN(Value x, ApplyFilter(in, filter, item, fargs));
    out.push_back(std::move(x));
  }
  return Value::MakeList(std::move(out));
}

Result<Value> ToJsonFilter(Interpreter& in, const Value& v, CallArgs& a) {
  CODA_ASSIGN_OR_RETURN(auto p, BindArgs("tojson", a, {"indent", "ensure_ascii", "sort_keys", "separators"}));
  JsonOptions o;
  CODA_ASSIGN_OR_RETURN(int64_t indent, IntArg(p[0], "indent", -1));
  if (indent > 64) return InvalidArgument("tojson indent is too large");
  o.indent = static_cast<int>(indent);
  o.ensure_ascii = BoolArg(p[1], false);
  o.sort_keys = BoolArg(p[2], false);
  if (!p[3].is_undefined() && !p[3].is_none()) {
    if (!p[3].is_list() || p[3].list().size() != 2 || !p[3].list()[0].is_string() || !p[3].list()[1].is_string()) {
      return InvalidArgument("tojson separators must be two strings");
    }
    o.item_separator = p[3].list()[0].str();
    o.key_separator = p[3].list()[1].str();
  }
  CODA_ASSIGN_OR_RETURN(std::string s, ToJson(v, o, in.max_string_bytes()));
  CODA_RETURN_IF_ERROR(in.ChargeString(s.size()));
  return Value::String(std::move(s));
}

Result<Value> JoinFilter(Interpreter& in, const Value& v, CallArgs& a) {
  CODA_ASSIGN_OR_RETURN(auto p, BindArgs("join", a, {"d", "attribute"}));
  CODA_ASSIGN_OR_RETURN(std::vector<Value> items, ItemsOf(in, v, "join"));
  std::string sep;
  if (!p[0].is_undefined()) {
    CODA_ASSIGN_OR_RETURN(sep, Text(in, p[0]));
  }
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += sep;
    CODA_ASSIGN_OR_RETURN(std::string item, Text(in, p[1].is_string() ? AttrPath(items[i], p[1].str()) : items[i]));
    out += item;
    CODA_RETURN_IF_ERROR(in.CheckStringSize(out.size()));
  }
  CODA_RETURN_IF_ERROR(in.ChargeString(out.size()));
  return Value::String(std::move(out));
}

Result<Value> IndentFilter(Interpreter& in, const Value& v, CallArgs& a) {
  CODA_ASSIGN_OR_RETURN(auto p, BindArgs("indent", a, {"width", "first", "blank"}));
  std::string pad;
  if (p[0].is_string()) {
    pad = p[0].str();
  } else {
    CODA_ASSIGN_OR_RETURN(int64_t width, IntArg(p[0], "width", 4));
    if (width < 0 || width > 1024) return InvalidArgument("indent width out of range");
    pad.assign(static_cast<size_t>(width), ' ');
  }
  bool first = BoolArg(p[1], false);
  bool blank = BoolArg(p[2], false);
  CODA_ASSIGN_OR_RETURN(std::string s, Text(in, v));
  std::string out;
  size_t start = 0;
  for (size_t line = 0;; ++line) {
    size_t nl = s.find('\n', start);
    std::string_view text = std::string_view(s).substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    if ((line > 0 || first) && (blank || !text.empty())) out += pad;
    out += text;
    CODA_RETURN_IF_ERROR(in.CheckStringSize(out.size()));
    if (nl == std::string::npos) break;
    out += '\n';
    start = nl + 1;
  }
  CODA_RETURN_IF_ERROR(in.ChargeString(out.size()));
  return Value::String(std::move(out));
}

Result<Value> IntFilter(Interpreter&, const Value& v, CallArgs& a) {
  CODA_ASSIGN_OR_RETURN(auto p, BindArgs("int", a, {"default", "base"}));
  Value def = p[0].is_undefined() ? Value::Int(0) : p[0];
  CODA_ASSIGN_OR_RETURN(int64_t base, IntArg(p[1], "base", 10));
  if (base < 2 || base > 36) return InvalidArgument("int base must be between 2 and 36");
  if (IsIntLike(v)) return Value::Int(AsInt(v));
  if (v.kind() == K::kFloat) {
    double d = std::trunc(v.as_float());
    if (!(d >= -9.2e18 && d <= 9.2e18)) return def;
    return Value::Int(static_cast<int64_t>(d));
  }
  if (!v.is_string()) return def;
  std::string s = Strip(v.str(), nullptr, true, true);
  s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
  if (s.empty()) return def;
  errno = 0;
  char* end = nullptr;
  long long n = std::strtoll(s.c_str(), &end, static_cast<int>(base));
  if (errno == 0 && end == s.c_str() + s.size()) return Value::Int(n);
  // Jinja falls back to int(float(s)) for strings like "3.7".
  double d = std::strtod(s.c_str(), &end);
  if (end == s.c_str() + s.size() && d >= -9.2e18 && d <= 9.2e18) return Value::Int(static_cast<int64_t>(std::trunc(d)));
  return def;
}

Result<Value> FloatFilter(Interpreter&, const Value& v, CallArgs& a) {
  CODA_ASSIGN_OR_RETURN(auto p, BindArgs("float", a, {"default"}));
  Value def = p[0].is_undefined() ? Value::Float(0.0) : p[0];
  if (IsNumeric(v)) return Value::Float(v.as_number());
  if (!v.is_string()) return def;
  std::string s = Strip(v.str(), nullptr, true, true);
  if (s.empty()) return def;
  char* end = nullptr;
  double d = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() ? Value::Float(d) : def;
}

Result<Value> RoundFilter(Interpreter&, const Value& v, CallArgs& a) {
  CODA_ASSIGN_OR_RETURN(auto p, BindArgs("round", a, {"precision", "method"}));
  if (!IsNumeric(v)) return InvalidArgument("round needs a number, got a " + Kind(v));
  CODA_ASSIGN_OR_RETURN(int64_t precision, IntArg(p[0], "precision", 0));
  if (precision < -300 || precision > 300) return InvalidArgument("round precision out of range");
  std::string method = p[1].is_string() ? p[1].str() : "common";
  double scale = std::pow(10.0, static_cast<double>(precision));
  double x = v.as_number() * scale;
  if (method == "common") x = std::nearbyint(x);  // Python's round(): ties to even
  else if (method == "ceil") x = std::ceil(x);
  else if (method == "floor") x = std::floor(x);
  else return InvalidArgument("round method must be 'common', 'ceil' or 'floor'");
  return Value::Float(x / scale);
}

Result<Value> SumFilter(Interpreter& in, const Value& v, CallArgs& a) {
  CODA_ASSIGN_OR_RETURN(auto p, BindArgs("sum", a, {"attribute", "start"}));
  CODA_ASSIGN_OR_RETURN(std::vector<Value> items, ItemsOf(in, v, "sum"));
  Value total = p[1].is_undefined() ? Value::Int(0) : p[1];
  for (const auto& item : items) {
    CODA_ASSIGN_OR_RETURN(total, BinaryOp(in, BinOp::kAdd, total, p[0].is_string() ? AttrPath(item, p[0].str()) : item));
  }
  return total;
}

Result<Value> DictSortFilter(Interpreter& in, const Value& v, CallArgs& a) {
  CODA_ASSIGN_OR_RETURN(auto p, BindArgs("dictsort", a, {"case_sensitive", "by", "reverse"}));
  if (!v.is_dict()) return InvalidArgument("dictsort needs a dict, got a " + Kind(v));
  bool cs = BoolArg(p[0], false);
  bool by_value = p[1].is_string() && p[1].str() == "value";
  if (p[1].is_string() && !by_value && p[1].str() != "key") return InvalidArgument("dictsort by must be 'key' or 'value'");
  Value::List pairs;
  for (const auto& [k, x] : v.dict().entries()) pairs.push_back(Value::MakeList({Value::String(k), x}));
  CallArgs sargs{{Value::Bool(BoolArg(p[2], false)), Value::Bool(cs), Value::Int(by_value ? 1 : 0)}, {}};
  return SortFilter(in, Value::MakeList(std::move(pairs)), sargs);
}

Status NoArgs(std::string_view name, CallArgs& a) { return BindArgs(name, a, {}).status(); }

Result<Value> LengthFilter(Interpreter&, const Value& v, CallArgs& a) {
  CODA_RETURN_IF_ERROR(NoArgs("length", a));
  switch (v.kind()) {
    case K::kUndefined: return Value::Int(0);
    case K::kString: return Value::Int(static_cast<int64_t>(CodePointCount(v.str())));
    case K::kList: return Value::Int(static_cast<int64_t>(v.list().size()));
    case K::kDict: return Value::Int(static_cast<int64_t>(v.dict().size()));
    default: return InvalidArgument("a " + Kind(v) + " has no length");
  }
}

const std::unordered_map<std::string_view, FilterFn>& Filters() {
  static const std::unordered_map<std::string_view, FilterFn> kFilters = {
      {"length", LengthFilter},
      {"count", LengthFilter},
      {"tojson", ToJsonFilter},
      {"join", JoinFilter},
      {"indent", IndentFilter},
      {"int", IntFilter},
      {"float", FloatFilter},
      {"round", RoundFilter},
      {"sum", SumFilter},
      {"sort", SortFilter},
      {"unique", UniqueFilter},
      {"dictsort", DictSortFilter},
      {"map", MapFilter},
      {"min", [](Interpreter& in, const Value& v, CallArgs& a) { return MinMax(in, v, a, false); }},
      {"max", [](Interpreter& in, const Value& v, CallArgs& a) { return MinMax(in, v, a, true); }},
      {"select", [](Interpreter& in, const Value& v, CallArgs& a) { return SelectFilter(in, v, a, false, true); }},
      {"reject", [](Interpreter& in, const Value& v, CallArgs& a) { return SelectFilter(in, v, a, false, false); }},
      {"selectattr", [](Interpreter& in, const Value& v, CallArgs& a) { return SelectFilter(in, v, a, true, true); }},
      {"rejectattr", [](Interpreter& in, const Value& v, CallArgs& a) { return SelectFilter(in, v, a, true, false); }},
      {"default",
       [](Interpreter&, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_ASSIGN_OR_RETURN(auto p, BindArgs("default", a, {"default_value", "boolean"}));
         bool use_default = v.is_undefined() || (BoolArg(p[1], false) && !v.Truthy());
         if (!use_default) return v;
         return p[0].is_undefined() ? Value::String("") : p[0];
       }},
      {"safe",
       [](Interpreter&, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("safe", a));
         return v;
       }},
      {"string",
       [](Interpreter& in, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("string", a));
         if (v.is_string()) return v;
         CODA_ASSIGN_OR_RETURN(std::string t, Text(in, v));
         return Value::String(std::move(t));
       }},
      {"list",
       [](Interpreter& in, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("list", a));
         CODA_ASSIGN_OR_RETURN(std::vector<Value> items, ItemsOf(in, v, "list"));
         return Value::MakeList(std::move(items));
       }},
      {"items",
       [](Interpreter&, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("items", a));
         if (v.is_undefined()) return Value::MakeList({});
         if (!v.is_dict()) return InvalidArgument("items needs a dict, got a " + Kind(v));
         Value::List pairs;
         for (const auto& [k, x] : v.dict().entries()) pairs.push_back(Value::MakeList({Value::String(k), x}));
         return Value::MakeList(std::move(pairs));
       }},
      {"first",
       [](Interpreter& in, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("first", a));
         CODA_ASSIGN_OR_RETURN(std::vector<Value> items, ItemsOf(in, v, "first"));
         return items.empty() ? Value() : items.front();
       }},
      {"last",
       [](Interpreter& in, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("last", a));
         CODA_ASSIGN_OR_RETURN(std::vector<Value> items, ItemsOf(in, v, "last"));
         return items.empty() ? Value() : items.back();
       }},
      {"reverse",
       [](Interpreter& in, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("reverse", a));
         CODA_ASSIGN_OR_RETURN(std::vector<Value> items, ItemsOf(in, v, "reverse"));
         std::reverse(items.begin(), items.end());
         if (!v.is_string()) return Value::MakeList(std::move(items));
         std::string out;
         for (const auto& cp : items) out += cp.str();
         return Value::String(std::move(out));
       }},
      {"abs",
       [](Interpreter&, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("abs", a));
         if (v.kind() == K::kFloat) return Value::Float(std::fabs(v.as_float()));
         if (!IsIntLike(v)) return InvalidArgument("abs needs a number, got a " + Kind(v));
         if (AsInt(v) == std::numeric_limits<int64_t>::min()) return Overflow();
         return Value::Int(AsInt(v) < 0 ? -AsInt(v) : AsInt(v));
       }},
      {"upper",
       [](Interpreter& in, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("upper", a));
         CODA_ASSIGN_OR_RETURN(std::string t, Text(in, v));
         return Value::String(Upper(t));
       }},
      {"lower",
       [](Interpreter& in, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("lower", a));
         CODA_ASSIGN_OR_RETURN(std::string t, Text(in, v));
         return Value::String(Lower(t));
       }},
      {"capitalize",
       [](Interpreter& in, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("capitalize", a));
         CODA_ASSIGN_OR_RETURN(std::string t, Text(in, v));
         return Value::String(Capitalize(t));
       }},
      {"title",
       [](Interpreter& in, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("title", a));
         CODA_ASSIGN_OR_RETURN(std::string t, Text(in, v));
         return Value::String(Title(t));
       }},
      {"trim",
       [](Interpreter& in, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_ASSIGN_OR_RETURN(auto p, BindArgs("trim", a, {"chars"}));
         std::string chars = p[0].is_string() ? p[0].str() : "";
         CODA_ASSIGN_OR_RETURN(std::string t, Text(in, v));
         return Value::String(Strip(t, p[0].is_string() ? &chars : nullptr, true, true));
       }},
      {"replace",
       [](Interpreter& in, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_ASSIGN_OR_RETURN(auto p, BindArgs("replace", a, {"old", "new", "count"}));
         if (!p[0].is_string() || !p[1].is_string()) return InvalidArgument("replace needs two strings");
         CODA_ASSIGN_OR_RETURN(int64_t count, IntArg(p[2], "count", -1));
         CODA_ASSIGN_OR_RETURN(std::string t, Text(in, v));
         CODA_ASSIGN_OR_RETURN(std::string s, Replace(in, t, p[0].str(), p[1].str(), count));
         return Value::String(std::move(s));
       }},
      {"escape",
       [](Interpreter& in, const Value& v, CallArgs& a) -> Result<Value> {
         CODA_RETURN_IF_ERROR(NoArgs("escape", a));
         CODA_ASSIGN_OR_RETURN(std::string t, Text(in, v));
         std::string out;
         for (char c : t) {
           switch (c) {
             case '&': out += "&amp;"; break;
             case '<': out += "&lt;"; break;
             case '>': out += "&gt;"; break;
             case '"': out += "&#34;"; break;
             case '\'': out += "&#39;"; break;
             default: out += c;
           }
         }
         CODA_RETURN_IF_ERROR(in.ChargeString(out.size()));
         return Value::String(std::move(out));
       }},
  };
  return kFilters;
}

}  // namespace

bool IsKnownFilter(std::string_view name) { return name == "d" || name == "e" || Filters().count(name) != 0; }

Result<Value> ApplyFilter(Interpreter& in, std::string_view name, const Value& operand, CallArgs& args) {
  CODA_RETURN_IF_ERROR(in.Charge(1));
  if (name == "d") name = "default";
  if (name == "e") name = "escape";
  auto it = Filters().find(name);
  if (it == Filters().end()) return Unsupported("unknown filter '" + std::string(name) + "'");
  return it->second(in, operand, args);
}

// ---- methods ----

namespace {

Result<Value> StringMethod(Interpreter& in, const std::string& s, std::string_view name, CallArgs& a, bool& found) {
  found = true;
  auto strip = [&](bool left, bool right) -> Result<Value> {
    CODA_ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"chars"}));
    std::string chars = p[0].is_string() ? p[0].str() : "";
    CODA_RETURN_IF_ERROR(in.ChargeString(s.size()));
    return Value::String(Strip(s, p[0].is_string() ? &chars : nullptr, left, right));
  };
  if (name == "strip") return strip(true, true);
  if (name == "lstrip") return strip(true, false);
  if (name == "rstrip") return strip(false, true);
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    CODA_RETURN_IF_ERROR(BindArgs(name, a, {}).status());
    if (name == "upper") return Value::String(Upper(s));
    if (name == "lower") return Value::String(Lower(s));
    if (name == "title") return Value::String(Title(s));
    return Value::String(Capitalize(s));
  }
  if (name == "startswith" || name == "endswith") {
    CODA_ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"prefix"}));
    std::vector<Value> options = p[0].is_list() ? p[0].list() : std::vector<Value>{p[0]};
    for (const Value& o : options) {
      if (!o.is_string()) return InvalidArgument(std::string(name) + "() needs a string or a list of strings");
      bool hit = name == "startswith" ? s.starts_with(o.str()) : s.ends_with(o.str());
      if (hit) return Value::Bool(true);
    }
    return Value::Bool(false);
  }
  if (name == "split" || name == "rsplit") {
    CODA_ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"sep", "maxsplit"}));
    if (!p[0].is_undefined() && !p[0].is_none() && !p[0].is_string()) return InvalidArgument("split separator must be a string");
    if (p[0].is_string() && p[0].str().empty()) return InvalidArgument("empty separator");
    CODA_ASSIGN_OR_RETURN(int64_t maxsplit, IntArg(p[1], "maxsplit", -1));
    CODA_RETURN_IF_ERROR(in.ChargeString(s.size()));
    Value::List out;
    for (auto& part : Split(s, p[0], maxsplit, name == "rsplit")) out.push_back(Value::String(std::move(part)));
    return Value::MakeList(std::move(out));
  }
  if (name == "replace") {
    CODA_ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"old", "new", "count"}));
    if (!p[0].is_string() || !p[1].is_string()) return InvalidArgument("replace() needs two strings");
    CODA_ASSIGN_OR_RETURN(int64_t count, IntArg(p[2], "count", -1));
    CODA_ASSIGN_OR_RETURN(std::string r, Replace(in, s, p[0].str(), p[1].str(), count));
    return Value::String(std::move(r));
  }
  if (name == "find" || name == "count") {
    CODA_ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"sub"}));
    if (!p[0].is_string()) return InvalidArgument(std::string(name) + "() needs a string");
    const std::string& sub = p[0].str();
    CODA_RETURN_IF_ERROR(in.Charge((s.size() + sub.size()) / 16));
    if (name == "find") {
      size_t at = FindText(s, sub);
      return Value::Int(at == std::string::npos ? -1 : static_cast<int64_t>(CodePointCount(std::string_view(s).substr(0, at))));
    }
    if (sub.empty()) return Value::Int(static_cast<int64_t>(CodePointCount(s)) + 1);
    int64_t n = 0;
    for (size_t at = FindText(s, sub); at != std::string::npos; at = FindText(s, sub, at + sub.size())) ++n;
    return Value::Int(n);
  }
  if (name == "join") {
    CODA_ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"iterable"}));
    CODA_ASSIGN_OR_RETURN(std::vector<Value> items, ItemsOf(in, p[0], "join"));
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_string()) return InvalidArgument("join() needs strings, got a " + Kind(items[i]));
      if (i > 0) out += s;
      out += items[i].str();
      CODA_RETURN_IF_ERROR(in.CheckStringSize(out.size()));
    }
    CODA_RETURN_IF_ERROR(in.ChargeString(out.size()));
    return Value::String(std::move(out));
  }
  found = false;
  return Value();
}

Result<Value> DictMethod(const Dict& d, std::string_view name, CallArgs& a, bool& found) {
  found = true;
  if (name == "get") {
    CODA_ASSIGN_OR_RETURN(auto p, BindArgs("get", a, {"key", "default"}));
    const Value* v = p[0].is_string() ? d.Find(p[0].str()) : nullptr;
    if (v != nullptr) return *v;
    return p[1].is_undefined() ? Value::MakeNone() : p[1];
  }
  if (name == "items" || name == "keys" || name == "values") {
    CODA_RETURN_IF_ERROR(BindArgs(name, a, {}).status());
    Value::List out;
    for (const auto& [k, v] : d.entries()) {
      if (name == "items") out.push_back(Value::MakeList({Value::String(k), v}));
      else if (name == "keys") out.push_back(Value::String(k));
      else out.push_back(v);
    }
    return Value::MakeList(std::move(out));
  }
  found = false;
  return Value();
}

}  // namespace

Result<Value> CallMethod(Interpreter& in, const Value& obj, std::string_view name, CallArgs& args, bool& found) {
  CODA_RETURN_IF_ERROR(in.Charge(1));
  found = false;
  if (obj.is_string()) return StringMethod(in, obj.str(), name, args, found);
  if (obj.is_dict()) return DictMethod(obj.dict(), name, args, found);
  return Value();
}

// ---- globals ----

namespace {

Result<Value> Range(Interpreter& in, CallArgs& a) {
  if (!a.keyword.empty() || a.positional.empty() || a.positional.size() > 3) {
    return InvalidArgument("range() takes 1 to 3 integer arguments");
  }
  int64_t v[3] = {0, 0, 1};
  for (size_t i = 0; i < a.positional.size(); ++i) {
    if (!IsIntLike(a.positional[i])) return InvalidArgument("range() arguments must be integers");
  }
  if (a.positional.size() == 1) {
    v[1] = AsInt(a.positional[0]);
  } else {
    v[0] = AsInt(a.positional[0]);
    v[1] = AsInt(a.positional[1]);
    if (a.positional.size() == 3) v[2] = AsInt(a.positional[2]);
  }
  if (v[2] == 0) return InvalidArgument("range() step must not be zero");
  // Count first, in unsigned arithmetic that cannot overflow, so a huge range fails before
  // allocating anything.
  bool up = v[2] > 0;
  uint64_t count = 0;
  if (up ? v[1] > v[0] : v[1] < v[0]) {
    uint64_t span = up ? static_cast<uint64_t>(v[1]) - static_cast<uint64_t>(v[0])
                       : static_cast<uint64_t>(v[0]) - static_cast<uint64_t>(v[1]);
    uint64_t step = up ? static_cast<uint64_t>(v[2]) : uint64_t{0} - static_cast<uint64_t>(v[2]);
    count = (span - 1) / step + 1;
  }
  if (count > 100'000'000) return OutOfRange("range() is too large");
  CODA_RETURN_IF_ERROR(in.ChargeItems(static_cast<size_t>(count)));
  Value::List out;
  out.reserve(static_cast<size_t>(count));
  // Every element lies between start and stop, so the modular sum is the exact value.
  for (uint64_t i = 0; i < count; ++i) {
    out.push_back(Value::Int(static_cast<int64_t>(static_cast<uint64_t>(v[0]) + i * static_cast<uint64_t>(v[2]))));
  }
  return Value::MakeList(std::move(out));
}

Result<Value> MakeMapping(CallArgs& a, bool as_namespace) {
  const char* fn = as_namespace ? "namespace" : "dict";
  if (a.positional.size() > 1) return InvalidArgument(std::string(fn) + "() takes at most one positional argument");
  Dict d;
  if (!a.positional.empty()) {
    const Value& src = a.positional[0];
    if (src.is_dict()) {
      for (const auto& [k, v] : src.dict().entries()) d.Set(k, v);
    } else if (src.is_list()) {
      for (const Value& pair : src.list()) {
        if (!pair.is_list() || pair.list().size() != 2 || !pair.list()[0].is_string()) {
          return InvalidArgument(std::string(fn) + "() needs a dict or a list of [key, value] pairs");
        }
        d.Set(pair.list()[0].str(), pair.list()[1]);
      }
    } else {
      return InvalidArgument(std::string(fn) + "() needs a dict or a list of [key, value] pairs");
    }
  }
  for (auto& [k, v] : a.keyword) d.Set(k, v);
  return as_namespace ? Value::MakeNamespace(std::move(d)) : Value::MakeDict(std::move(d));
}

Result<Value> StrftimeNow(Interpreter&, CallArgs& a) {
  CODA_ASSIGN_OR_RETURN(auto p, BindArgs("strftime_now", a, {"format"}));
  if (!p[0].is_string()) return InvalidArgument("strftime_now() needs a format string");
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[256];
  size_t n = p[0].str().size() < 64 ? std::strftime(buf, sizeof(buf), p[0].str().c_str(), &tm) : 0;
  if (n == 0 && !p[0].str().empty()) return InvalidArgument("strftime_now(): format too long or invalid");
  return Value::String(std::string(buf, n));
}

}  // namespace

Value LookupGlobal(std::string_view name) {
  static const std::unordered_map<std::string_view, Value> kGlobals = [] {
    std::unordered_map<std::string_view, Value> g;
    g.emplace("range", Value::MakeCallable(Callable{"range", Range}));
    g.emplace("namespace", Value::MakeCallable(Callable{"namespace", [](Interpreter&, CallArgs& a) {
                                                          return MakeMapping(a, true);
                                                        }}));
    g.emplace("dict", Value::MakeCallable(Callable{"dict", [](Interpreter&, CallArgs& a) { return MakeMapping(a, false); }}));
    g.emplace("strftime_now", Value::MakeCallable(Callable{"strftime_now", StrftimeNow}));
    g.emplace("raise_exception",
              Value::MakeCallable(Callable{"raise_exception", [](Interpreter& in, CallArgs& a) -> Result<Value> {
                                             std::string msg;
                                             if (!a.positional.empty()) {
                                               CODA_ASSIGN_OR_RETURN(msg, Text(in, a.positional[0]));
                                             }
                                             return InvalidArgument("raise_exception: " + msg);
                                           }}));
    return g;
  }();
  auto it = kGlobals.find(name);
  return it == kGlobals.end() ? Value() : it->second;
}

}  // namespace coda::text::jinja
