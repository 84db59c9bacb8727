// Tree-walking evaluator of the chat-template engine (internal to coda_text).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "jinja_ast.h"
#include "jinja_value.h"

namespace coda::text::jinja {

// Deepest list/dict nesting a render may build (context JSON is capped lower, at 256).
inline constexpr uint32_t kMaxValueDepth = 512;

struct RenderLimits {
  size_t max_output_bytes = size_t{16} << 20;
  uint64_t max_steps = 10'000'000;
  uint32_t max_call_depth = 32;
};

class Interpreter {
 public:
  Interpreter(const Program& program, const RenderLimits& limits) : program_(program), limits_(limits) {}

  // Renders the program with `context` as its top-level variables.
  Result<std::string> Render(const Dict& context);

  // ---- services for built-in filters, tests and functions (errors here carry no location;
  // the calling expression adds it) ----

  // Charges `n` units of work; fails once the render has done more than max_steps.
  Status Charge(uint64_t n);
  // Charges for producing a string of `bytes` and rejects strings above the output cap.
  Status ChargeString(size_t bytes);
  // The size check alone, for strings still growing.
  Status CheckStringSize(size_t bytes) const;
  size_t max_string_bytes() const { return limits_.max_output_bytes; }
  Status ChargeItems(size_t items);
  Result<Value> CallFunction(const Value& fn, CallArgs& args);

 private:
  enum class Flow { kNormal, kBreak, kContinue };
  struct Frame {
    std::vector<std::pair<std::string, Value>> vars;
    Value* Find(std::string_view name);
    void Set(const std::string& name, Value v);
  };
  class ScopeGuard;

  Result<Flow> ExecBody(const Body& body, std::string& out);
  Result<Flow> Exec(const Stmt& s, std::string& out);
  Result<Flow> ExecFor(const ForStmt& s, std::string& out);
  Status ExecSet(const SetStmt& s);
  Status Append(std::string& out, std::string_view text, Pos pos);

  Result<Value> Eval(const Expr& e);
  Result<Value> EvalNode(const Expr& e);
  Result<Value> EvalCall(const Expr& e);
  Result<Value> EvalBinary(const Expr& e);
  Result<Value> EvalSlice(const Expr& e);
  Status EvalArgs(const Expr& e, size_t first, CallArgs& out);
  Result<Value> CallMacro(const MacroStmt& m, CallArgs& args);

  Value Lookup(std::string_view name);
  Status Located(Pos pos, const Status& s) const;

  const Program& program_;
  RenderLimits limits_;
  std::vector<Frame*> scopes_;  // innermost last; scopes_[0] holds the context and top-level sets
  uint64_t steps_ = 0;
  uint32_t call_depth_ = 0;
};

// Python-style binding of call arguments to named parameters. Missing ones are undefined.
Result<std::vector<Value>> BindArgs(std::string_view fn, CallArgs& args, std::initializer_list<std::string_view> params);

Result<Value> ApplyFilter(Interpreter& in, std::string_view name, const Value& operand, CallArgs& args);
Result<bool> ApplyTest(Interpreter& in, std::string_view name, const Value& operand, CallArgs& args);
// obj.name(args) for strings and dicts; `found` is false when there is no such method.
Result<Value> CallMethod(Interpreter& in, const Value& obj, std::string_view name, CallArgs& args, bool& found);
// Template globals: range, namespace, dict, raise_exception, strftime_now. Undefined if unknown.
Value LookupGlobal(std::string_view name);

// Arithmetic and comparison with Python's rules (checked integers, floor division).
Result<Value> BinaryOp(Interpreter& in, BinOp op, const Value& a, const Value& b);
// obj[key] and obj.attr; undefined when absent, as Jinja's lenient lookups are.
Value GetItem(const Value& obj, const Value& key);
Value GetAttr(const Value& obj, std::string_view name);

}  // namespace coda::text::jinja
