// Runtime values of the chat-template engine (internal to coda_text).
//
// Containers are shared and immutable once built, so copying a Value is cheap; the one mutable
// kind is Namespace, which Jinja defines as a shared, assignable attribute bag.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "coda/status.h"

namespace coda::text::jinja {

class Value;
class Interpreter;

class Dict;
struct Callable;

class Value {
 public:
  enum class Kind : uint8_t { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace, kCallable };
  struct Undefined {};
  struct None {};
  using List = std::vector<Value>;

  Value() = default;
  static Value MakeNone() { return Value(Storage(None{})); }
  static Value Bool(bool b) { return Value(Storage(b)); }
  static Value Int(int64_t i) { return Value(Storage(i)); }
  static Value Float(double d) { return Value(Storage(d)); }
  static Value String(std::string s) { return Value(Storage(std::make_shared<const std::string>(std::move(s)))); }
  static Value MakeList(List items);
  static Value MakeDict(Dict d);
  static Value MakeNamespace(Dict d);
  static Value MakeCallable(Callable c);

  Kind kind() const { return static_cast<Kind>(v_.index()); }
  bool is_undefined() const { return kind() == Kind::kUndefined; }
  bool is_none() const { return kind() == Kind::kNone; }
  bool is_string() const { return kind() == Kind::kString; }
  bool is_list() const { return kind() == Kind::kList; }
  bool is_dict() const { return kind() == Kind::kDict; }
  bool is_int() const { return kind() == Kind::kInt; }
  bool is_number() const { return kind() == Kind::kInt || kind() == Kind::kFloat; }

  bool as_bool() const { return std::get<bool>(v_); }
  int64_t as_int() const { return std::get<int64_t>(v_); }
  double as_float() const { return std::get<double>(v_); }
  // Int, float and bool as a double (Jinja lets booleans take part in arithmetic).
  double as_number() const;
  const std::string& str() const { return *std::get<StringPtr>(v_); }
  const List& list() const { return std::get<ListPtr>(v_)->items; }
  const Dict& dict() const { return *std::get<DictPtr>(v_); }
  Dict& ns() const { return *std::get<NamespacePtr>(v_).d; }
  const Callable& callable() const { return *std::get<CallablePtr>(v_); }

  // Jinja truthiness: empty strings and containers, zero, none and undefined are false.
  bool Truthy() const;
  // Identity of the shared object, for "sameas".
  const void* identity() const;
  // Container nesting (0 for scalars). Destruction, equality and tojson recurse this deep, so
  // the interpreter caps it.
  uint32_t depth() const;
  // Whether a namespace is reachable from here. Namespaces are the only mutable values; keeping
  // them out of namespace attributes makes reference cycles impossible.
  bool contains_namespace() const;

 private:
  using StringPtr = std::shared_ptr<const std::string>;
  struct ListBox {
    List items;
    uint32_t depth = 1;
    bool has_namespace = false;
  };
  using ListPtr = std::shared_ptr<const ListBox>;
  using DictPtr = std::shared_ptr<const Dict>;
  struct NamespacePtr {
    std::shared_ptr<Dict> d;
  };
  using CallablePtr = std::shared_ptr<const Callable>;
  using Storage =
      std::variant<Undefined, None, bool, int64_t, double, StringPtr, ListPtr, DictPtr, NamespacePtr, CallablePtr>;

  explicit Value(Storage v) : v_(std::move(v)) {}
  Storage v_;
};

// Insertion-ordered string-keyed map: templates print dicts (tojson) in the order given.
class Dict {
 public:
  const Value* Find(std::string_view key) const;
  void Set(std::string key, Value value);
  size_t size() const { return entries_.size(); }
  const std::vector<std::pair<std::string, Value>>& entries() const { return entries_; }
  uint32_t depth() const { return depth_; }  // an upper bound after values are replaced
  bool has_namespace() const { return has_namespace_; }

 private:
  std::vector<std::pair<std::string, Value>> entries_;
  std::unordered_map<std::string, size_t> index_;
  uint32_t depth_ = 1;
  bool has_namespace_ = false;
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// A function value: template globals (range, namespace, ...), macros, loop.cycle.
struct Callable {
  std::string name;
  std::function<Result<Value>(Interpreter&, CallArgs&)> fn;
  bool errors_located = false;  // macros report errors at their own lines, not the call site
};

inline Value Value::MakeDict(Dict d) { return Value(Storage(std::make_shared<const Dict>(std::move(d)))); }
inline Value Value::MakeNamespace(Dict d) {
  return Value(Storage(NamespacePtr{std::make_shared<Dict>(std::move(d))}));
}
inline Value Value::MakeCallable(Callable c) {
  return Value(Storage(std::make_shared<const Callable>(std::move(c))));
}

std::string_view KindName(Value::Kind kind);

// How a value prints in {{ }}: none and undefined print nothing; containers print as JSON,
// which fails past `max_bytes`.
Result<std::string> ToOutputString(const Value& v, size_t max_bytes);
// Python's repr() of a float: shortest round-trip digits, "1.0" rather than "1".
std::string FloatRepr(double d);

// Deep equality with Python's number rules (1 == 1.0 == true).
bool Equal(const Value& a, const Value& b);

struct JsonOptions {
  int indent = -1;  // < 0: single line
  bool ensure_ascii = false;
  bool sort_keys = false;
  std::optional<std::string> item_separator;  // default: ", " on one line, "," when indenting
  std::string key_separator = ": ";
};
// json.dumps-compatible serialization; callables cannot be serialized.
Result<std::string> ToJson(const Value& v, const JsonOptions& options, size_t max_bytes);

// UTF-8 helpers. Invalid bytes decode as single code points so nothing is ever dropped.
std::vector<std::string_view> SplitCodePoints(std::string_view s);
size_t CodePointCount(std::string_view s);
// Byte offset of code point `index` (s.size() when past the end), without materializing a split.
size_t CodePointOffset(std::string_view s, size_t index);
bool IsUnicodeSpace(uint32_t cp);
// Decodes one code point at s[i]; advances i. Invalid bytes yield their byte value.
uint32_t DecodeUtf8(std::string_view s, size_t& i);
void AppendUtf8(std::string& out, uint32_t cp);
// Substring search in linear time whatever the needle (std::string::find is quadratic in the
// worst case, and templates control both operands). npos when absent.
size_t FindText(std::string_view hay, std::string_view needle, size_t from = 0);
// The last occurrence that ends at or before `end`.
size_t RFindText(std::string_view hay, std::string_view needle, size_t end);

// Simple (one-to-one) case mapping for Latin, Greek, Cyrillic, Armenian and fullwidth letters;
// other code points, and invalid bytes, are kept as they are.
uint32_t UpperCodePoint(uint32_t cp);
uint32_t LowerCodePoint(uint32_t cp);
std::string MapCase(std::string_view s, bool upper);

}  // namespace coda::text::jinja
