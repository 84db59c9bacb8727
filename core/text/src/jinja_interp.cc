#include "jinja_interp.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <optional>

namespace coda::text::jinja {

Value* Interpreter::Frame::Find(std::string_view name) {
  for (auto& [k, v] : vars) {
    if (k == name) return &v;
  }
  return nullptr;
}

void Interpreter::Frame::Set(const std::string& name, Value v) {
  if (Value* slot = Find(name)) {
    *slot = std::move(v);
  } else {
    vars.emplace_back(name, std::move(v));
  }
}

class Interpreter::ScopeGuard {
 public:
  ScopeGuard(std::vector<Frame*>& scopes, Frame* f) : scopes_(scopes) { scopes_.push_back(f); }
  ~ScopeGuard() { scopes_.pop_back(); }
  ScopeGuard(const ScopeGuard&) = delete;
  ScopeGuard& operator=(const ScopeGuard&) = delete;

 private:
  std::vector<Frame*>& scopes_;
};

Result<std::string> Interpreter::Render(const Dict& context) {
  Frame root;
  for (const auto& [k, v] : context.entries()) root.Set(k, v);
  scopes_ = {&root};
  std::string out;
  auto flow = ExecBody(program_.body, out);
  scopes_.clear();
  if (!flow.ok()) return flow.status();
  return out;
}

Status Interpreter::Charge(uint64_t n) {
  steps_ += n;
  if (steps_ > limits_.max_steps) {
    return OutOfRange("template evaluation exceeded " + std::to_string(limits_.max_steps) +
                      " steps (runaway loop or oversized input)");
  }
  return Status::Ok();
}

Status Interpreter::CheckStringSize(size_t bytes) const {
  if (bytes > limits_.max_output_bytes) {
    return OutOfRange("a string of " + std::to_string(bytes) + " bytes exceeds the output limit of " +
                      std::to_string(limits_.max_output_bytes));
  }
  return Status::Ok();
}

Status Interpreter::ChargeString(size_t bytes) {
  CODA_RETURN_IF_ERROR(CheckStringSize(bytes));
  // Copying text is work too; this keeps repeated concatenation inside the step budget.
  return Charge(bytes / 16);
}

Status Interpreter::ChargeItems(size_t items) { return Charge(items); }

Status Interpreter::Located(Pos pos, const Status& s) const {
  if (s.ok()) return s;
  return ErrorAt(program_.source, pos, s.code(), s.message());
}

Status Interpreter::Append(std::string& out, std::string_view text, Pos pos) {
  if (text.size() > limits_.max_output_bytes - out.size()) {
    return Located(pos, OutOfRange("rendered output exceeds the limit of " + std::to_string(limits_.max_output_bytes) +
                                   " bytes"));
  }
  out.append(text);
  return Status::Ok();
}

Value Interpreter::Lookup(std::string_view name) {
  for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
    if (Value* v = (*it)->Find(name)) return *v;
  }
  return LookupGlobal(name);
}

// ---- statements ----

Result<Interpreter::Flow> Interpreter::ExecBody(const Body& body, std::string& out) {
  for (const auto& s : body) {
    CODA_ASSIGN_OR_RETURN(Flow flow, Exec(*s, out));
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

Result<Interpreter::Flow> Interpreter::Exec(const Stmt& s, std::string& out) {
  CODA_RETURN_IF_ERROR(Located(s.pos, Charge(1)));
  switch (s.kind) {
    case StmtKind::kText:
      CODA_RETURN_IF_ERROR(Append(out, static_cast<const TextStmt&>(s).text, s.pos));
      return Flow::kNormal;
    case StmtKind::kOutput: {
      CODA_ASSIGN_OR_RETURN(Value v, Eval(*static_cast<const OutputStmt&>(s).expr));
      if (v.is_string()) {
        CODA_RETURN_IF_ERROR(Append(out, v.str(), s.pos));
      } else {
        auto text = ToOutputString(v, limits_.max_output_bytes - out.size());
        if (!text.ok()) return Located(s.pos, text.status());
        CODA_RETURN_IF_ERROR(Append(out, *text, s.pos));
      }
      return Flow::kNormal;
    }
    case StmtKind::kIf: {
      const auto& st = static_cast<const IfStmt&>(s);
      for (size_t i = 0; i < st.conditions.size(); ++i) {
        CODA_ASSIGN_OR_RETURN(Value cond, Eval(*st.conditions[i]));
        if (cond.Truthy()) return ExecBody(st.branches[i], out);
      }
      return ExecBody(st.else_body, out);
    }
    case StmtKind::kFor: return ExecFor(static_cast<const ForStmt&>(s), out);
    case StmtKind::kSet:
      CODA_RETURN_IF_ERROR(ExecSet(static_cast<const SetStmt&>(s)));
      return Flow::kNormal;
    case StmtKind::kMacro: {
      const auto* m = &static_cast<const MacroStmt&>(s);
      Callable c{m->name, [m](Interpreter& in, CallArgs& args) { return in.CallMacro(*m, args); }, true};
      scopes_.back()->Set(m->name, Value::MakeCallable(std::move(c)));
      return Flow::kNormal;
    }
    case StmtKind::kBreak: return Flow::kBreak;
    case StmtKind::kContinue: return Flow::kContinue;
  }
  return Flow::kNormal;
}

namespace {

// The sequence a for loop walks: list items, dict keys, string code points.
Result<std::vector<Value>> IterationItems(Interpreter& in, const Value& v) {
  std::vector<Value> items;
  switch (v.kind()) {
    case Value::Kind::kUndefined: break;
    case Value::Kind::kList: items = v.list(); break;
    case Value::Kind::kDict:
      for (const auto& [k, unused] : v.dict().entries()) items.push_back(Value::String(k));
      break;
    case Value::Kind::kString:
      // One allocated value per code point: charge before materializing.
      CODA_RETURN_IF_ERROR(in.ChargeItems(4 * v.str().size()));
      for (std::string_view cp : SplitCodePoints(v.str())) items.push_back(Value::String(std::string(cp)));
      break;
    default: return InvalidArgument("cannot iterate over a " + std::string(KindName(v.kind())));
  }
  return items;
}

Status Unpack(const std::vector<std::string>& names, const Value& v, const std::function<void(const std::string&, Value)>& set) {
  if (names.size() == 1) {
    set(names[0], v);
    return Status::Ok();
  }
  if (!v.is_list()) return InvalidArgument("cannot unpack a " + std::string(KindName(v.kind())) + " into " +
                                           std::to_string(names.size()) + " names");
  if (v.list().size() != names.size()) {
    return InvalidArgument("cannot unpack " + std::to_string(v.list().size()) + " values into " +
                           std::to_string(names.size()) + " names");
  }
  for (size_t i = 0; i < names.size(); ++i) set(names[i], v.list()[i]);
  return Status::Ok();
}

}  // namespace

Result<Interpreter::Flow> Interpreter::ExecFor(const ForStmt& s, std::string& out) {
  CODA_ASSIGN_OR_RETURN(Value iterable, Eval(*s.iterable));
  auto items_or = IterationItems(*this, iterable);
  if (!items_or.ok()) return Located(s.iterable->pos, items_or.status());
  std::vector<Value> items = std::move(items_or).value();

  Frame frame;
  ScopeGuard guard(scopes_, &frame);
  auto bind = [&frame](const std::string& name, Value v) { frame.Set(name, std::move(v)); };
  if (s.filter) {
    std::vector<Value> kept;
    for (auto& item : items) {
      CODA_RETURN_IF_ERROR(Located(s.pos, Charge(1)));
      CODA_RETURN_IF_ERROR(Located(s.pos, Unpack(s.targets, item, bind)));
      CODA_ASSIGN_OR_RETURN(Value keep, Eval(*s.filter));
      if (keep.Truthy()) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }

  const size_t n = items.size();
  for (size_t i = 0; i < n; ++i) {
    CODA_RETURN_IF_ERROR(Located(s.pos, Charge(1)));
    CODA_RETURN_IF_ERROR(Located(s.pos, Unpack(s.targets, items[i], bind)));
    Dict loop;
    auto idx = static_cast<int64_t>(i);
    auto len = static_cast<int64_t>(n);
    loop.Set("index", Value::Int(idx + 1));
    loop.Set("index0", Value::Int(idx));
    loop.Set("revindex", Value::Int(len - idx));
    loop.Set("revindex0", Value::Int(len - idx - 1));
    loop.Set("first", Value::Bool(i == 0));
    loop.Set("last", Value::Bool(i + 1 == n));
    loop.Set("length", Value::Int(len));
    loop.Set("depth", Value::Int(1));
    loop.Set("depth0", Value::Int(0));
    loop.Set("previtem", i > 0 ? items[i - 1] : Value());
    loop.Set("nextitem", i + 1 < n ? items[i + 1] : Value());
    loop.Set("cycle", Value::MakeCallable(Callable{"cycle", [i](Interpreter&, CallArgs& a) -> Result<Value> {
                                                     if (a.positional.empty() || !a.keyword.empty()) {
                                                       return InvalidArgument("loop.cycle() needs positional arguments");
                                                     }
                                                     return a.positional[i % a.positional.size()];
                                                   }}));
    frame.Set("loop", Value::MakeDict(std::move(loop)));
    CODA_ASSIGN_OR_RETURN(Flow flow, ExecBody(s.body, out));
    if (flow == Flow::kBreak) break;
  }
  // A break or continue in the else block belongs to an enclosing loop.
  if (n == 0) return ExecBody(s.else_body, out);
  return Flow::kNormal;
}

Status Interpreter::ExecSet(const SetStmt& s) {
  Value v;
  if (s.value) {
    CODA_ASSIGN_OR_RETURN(v, Eval(*s.value));
  } else {
    std::string buf;
    CODA_ASSIGN_OR_RETURN(Flow flow, ExecBody(s.body, buf));
    (void)flow;
    v = Value::String(std::move(buf));
  }
  if (s.object) {
    CODA_ASSIGN_OR_RETURN(Value target, Eval(*s.object));
    if (target.kind() != Value::Kind::kNamespace) {
      return Located(s.pos, InvalidArgument("cannot assign attribute '" + s.attr + "' on a " +
                                            std::string(KindName(target.kind())) +
                                            "; only namespace() objects take attribute assignments"));
    }
    if (v.contains_namespace()) {
      return Located(s.pos, InvalidArgument("a namespace cannot be stored in a namespace attribute"));
    }
    target.ns().Set(s.attr, std::move(v));
    return Status::Ok();
  }
  Frame* frame = scopes_.back();
  return Located(s.pos, Unpack(s.targets, v, [frame](const std::string& name, Value x) { frame->Set(name, std::move(x)); }));
}

Result<Value> Interpreter::CallMacro(const MacroStmt& m, CallArgs& args) {
  if (call_depth_ >= limits_.max_call_depth) {
    return ErrorAt(program_.source, m.pos, StatusCode::kOutOfRange,
                   "macro calls nested deeper than " + std::to_string(limits_.max_call_depth));
  }
  // Macro errors are reported inside the macro (see Callable::errors_located), binding ones included.
  auto bind_error = [&](const std::string& msg) {
    return ErrorAt(program_.source, m.pos, StatusCode::kInvalidArgument, "macro '" + m.name + "': " + msg);
  };
  if (args.positional.size() > m.params.size()) {
    return bind_error("takes " + std::to_string(m.params.size()) + " arguments, got " +
                      std::to_string(args.positional.size()));
  }
  Frame frame;
  std::vector<bool> given(m.params.size(), false);
  for (size_t i = 0; i < args.positional.size(); ++i) {
    frame.Set(m.params[i], args.positional[i]);
    given[i] = true;
  }
  for (auto& [name, value] : args.keyword) {
    size_t i = 0;
    while (i < m.params.size() && m.params[i] != name) ++i;
    if (i == m.params.size()) return bind_error("no parameter named '" + name + "'");
    if (given[i]) return bind_error("got two values for '" + name + "'");
    frame.Set(name, value);
    given[i] = true;
  }
  // Macros see the template's top-level names, not the caller's loop variables.
  std::vector<Frame*> saved = std::move(scopes_);
  scopes_ = {saved.front(), &frame};
  ++call_depth_;
  Result<Value> result = Value();
  for (size_t i = 0; i < m.params.size() && result.ok(); ++i) {
    if (given[i]) continue;
    if (!m.defaults[i]) {
      frame.Set(m.params[i], Value());
      continue;
    }
    auto def = Eval(*m.defaults[i]);
    if (!def.ok()) {
      result = def.status();
    } else {
      frame.Set(m.params[i], std::move(def).value());
    }
  }
  if (result.ok()) {
    std::string buf;
    auto flow = ExecBody(m.body, buf);
    if (flow.ok()) {
      result = Value::String(std::move(buf));
    } else {
      result = flow.status();
    }
  }
  --call_depth_;
  scopes_ = std::move(saved);
  return result;
}

// ---- expressions ----

Status Interpreter::EvalArgs(const Expr& e, size_t first, CallArgs& out) {
  size_t n = e.args.size();
  size_t nkw = e.kwnames.size();
  for (size_t i = first; i < n; ++i) {
    CODA_ASSIGN_OR_RETURN(Value v, Eval(*e.args[i]));
    if (i + nkw >= n) {
      out.keyword.emplace_back(e.kwnames[i + nkw - n], std::move(v));
    } else {
      out.positional.push_back(std::move(v));
    }
  }
  return Status::Ok();
}

Result<Value> Interpreter::CallFunction(const Value& fn, CallArgs& args) {
  if (fn.kind() != Value::Kind::kCallable) {
    return InvalidArgument("a " + std::string(KindName(fn.kind())) + " is not callable");
  }
  return fn.callable().fn(*this, args);
}

Result<Value> Interpreter::Eval(const Expr& e) {
  CODA_ASSIGN_OR_RETURN(Value v, EvalNode(e));
  // Values deepen one level per expression at most, so checking every result keeps all of them
  // shallow enough for recursive destruction, comparison and printing.
  if (v.depth() > kMaxValueDepth) {
    return Located(e.pos, OutOfRange("value nested deeper than " + std::to_string(kMaxValueDepth) + " levels"));
  }
  return v;
}

Result<Value> Interpreter::EvalNode(const Expr& e) {
  CODA_RETURN_IF_ERROR(Located(e.pos, Charge(1)));
  switch (e.kind) {
    case ExprKind::kLiteral: return e.literal;
    case ExprKind::kName: return Lookup(e.name);
    case ExprKind::kList:
    case ExprKind::kTuple: {
      Value::List items;
      for (const auto& a : e.args) {
        CODA_ASSIGN_OR_RETURN(Value v, Eval(*a));
        items.push_back(std::move(v));
      }
      return Value::MakeList(std::move(items));
    }
    case ExprKind::kDict: {
      Dict d;
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        CODA_ASSIGN_OR_RETURN(Value k, Eval(*e.args[i]));
        if (!k.is_string()) return Located(e.args[i]->pos, InvalidArgument("dict keys must be strings"));
        CODA_ASSIGN_OR_RETURN(Value v, Eval(*e.args[i + 1]));
        d.Set(k.str(), std::move(v));
      }
      return Value::MakeDict(std::move(d));
    }
    case ExprKind::kAttr: {
      CODA_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
      return GetAttr(obj, e.name);
    }
    case ExprKind::kItem: {
      CODA_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
      CODA_ASSIGN_OR_RETURN(Value key, Eval(*e.args[1]));
      // Indexing a string walks its code points.
      if (obj.is_string()) CODA_RETURN_IF_ERROR(Located(e.pos, Charge(obj.str().size() / 16)));
      return GetItem(obj, key);
    }
    case ExprKind::kSlice: return EvalSlice(e);
    case ExprKind::kCall: return EvalCall(e);
    case ExprKind::kFilter: {
      CODA_ASSIGN_OR_RETURN(Value operand, Eval(*e.args[0]));
      CallArgs args;
      CODA_RETURN_IF_ERROR(EvalArgs(e, 1, args));
      auto r = ApplyFilter(*this, e.name, operand, args);
      if (!r.ok()) return Located(e.pos, r.status());
      return r;
    }
    case ExprKind::kTest: {
      CODA_ASSIGN_OR_RETURN(Value operand, Eval(*e.args[0]));
      CallArgs args;
      CODA_RETURN_IF_ERROR(EvalArgs(e, 1, args));
      auto r = ApplyTest(*this, e.name, operand, args);
      if (!r.ok()) return Located(e.pos, r.status());
      return Value::Bool(*r != e.negate);
    }
    case ExprKind::kNeg:
    case ExprKind::kPos: {
      CODA_ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
      bool neg = e.kind == ExprKind::kNeg;
      switch (v.kind()) {
        case Value::Kind::kBool: return Value::Int(neg ? -int64_t{v.as_bool()} : int64_t{v.as_bool()});
        case Value::Kind::kInt:
          if (neg && v.as_int() == std::numeric_limits<int64_t>::min()) {
            return Located(e.pos, OutOfRange("integer overflow"));
          }
          return Value::Int(neg ? -v.as_int() : v.as_int());
        case Value::Kind::kFloat: return Value::Float(neg ? -v.as_float() : v.as_float());
        default:
          return Located(e.pos, InvalidArgument(std::string("bad operand for unary ") + (neg ? "'-'" : "'+'") + ": " +
                                                std::string(KindName(v.kind()))));
      }
    }
    case ExprKind::kNot: {
      CODA_ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
      return Value::Bool(!v.Truthy());
    }
    case ExprKind::kAnd:
    case ExprKind::kOr: {
      CODA_ASSIGN_OR_RETURN(Value left, Eval(*e.args[0]));
      // Python semantics: the deciding operand itself is the result, not a boolean.
      if (left.Truthy() == (e.kind == ExprKind::kOr)) return left;
      return Eval(*e.args[1]);
    }
    case ExprKind::kBinary: return EvalBinary(e);
    case ExprKind::kTernary: {
      CODA_ASSIGN_OR_RETURN(Value cond, Eval(*e.args[1]));
      if (cond.Truthy()) return Eval(*e.args[0]);
      if (e.args[2]) return Eval(*e.args[2]);
      return Value();
    }
  }
  return Value();
}

Result<Value> Interpreter::EvalBinary(const Expr& e) {
  CODA_ASSIGN_OR_RETURN(Value left, Eval(*e.args[0]));
  CODA_ASSIGN_OR_RETURN(Value right, Eval(*e.args[1]));
  auto r = BinaryOp(*this, e.op, left, right);
  if (!r.ok()) return Located(e.pos, r.status());
  return r;
}

Result<Value> Interpreter::EvalSlice(const Expr& e) {
  CODA_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
  std::optional<int64_t> bounds[3];
  for (int k = 0; k < 3; ++k) {
    const ExprPtr& part = e.args[1 + static_cast<size_t>(k)];
    if (!part) continue;
    CODA_ASSIGN_OR_RETURN(Value v, Eval(*part));
    if (v.is_undefined() || v.is_none()) continue;
    if (v.kind() == Value::Kind::kBool) v = Value::Int(v.as_bool());
    if (!v.is_int()) return Located(part->pos, InvalidArgument("slice indices must be integers"));
    bounds[k] = v.as_int();
  }
  int64_t step = bounds[2].value_or(1);
  if (step == 0) return Located(e.pos, InvalidArgument("slice step cannot be zero"));

  // Strings are sliced by code point; `starts` holds each one's byte offset (plus the end).
  std::vector<size_t> starts;
  size_t size = 0;
  if (obj.is_list()) {
    size = obj.list().size();
  } else if (obj.is_string()) {
    const std::string& str = obj.str();
    CODA_RETURN_IF_ERROR(Located(e.pos, ChargeItems(str.size() / 4)));
    for (size_t i = 0; i < str.size();) {
      starts.push_back(i);
      DecodeUtf8(str, i);
    }
    size = starts.size();
    starts.push_back(str.size());
  } else if (obj.is_undefined()) {
    return Value();
  } else {
    return Located(e.pos, InvalidArgument("cannot slice a " + std::string(KindName(obj.kind()))));
  }
  // Python's slice.indices(): clamp, then walk from start towards stop.
  auto n = static_cast<int64_t>(size);
  auto clamp = [&](std::optional<int64_t> b, int64_t def) {
    if (!b) return def;
    int64_t x = *b < 0 ? *b + n : *b;
    if (step > 0) return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  int64_t start = clamp(bounds[0], step > 0 ? 0 : n - 1);
  int64_t stop = clamp(bounds[1], step > 0 ? n : -1);
  if (obj.is_string() && step == 1) {
    if (stop <= start) return Value::String("");
    auto b = static_cast<size_t>(start);
    auto x = static_cast<size_t>(stop);
    return Value::String(obj.str().substr(starts[b], starts[x] - starts[b]));
  }
  std::vector<size_t> picks;
  for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
    picks.push_back(static_cast<size_t>(i));
    if (__builtin_add_overflow(i, step, &i)) break;
  }
  CODA_RETURN_IF_ERROR(Located(e.pos, ChargeItems(picks.size())));
  if (obj.is_list()) {
    Value::List out;
    out.reserve(picks.size());
    for (size_t i : picks) out.push_back(obj.list()[i]);
    return Value::MakeList(std::move(out));
  }
  std::string out;
  for (size_t i : picks) out.append(obj.str(), starts[i], starts[i + 1] - starts[i]);
  return Value::String(std::move(out));
}

Result<Value> Interpreter::EvalCall(const Expr& e) {
  const Expr& callee = *e.args[0];
  CallArgs args;
  if (callee.kind == ExprKind::kAttr) {
    CODA_ASSIGN_OR_RETURN(Value obj, Eval(*callee.args[0]));
    Value member = GetAttr(obj, callee.name);
    CODA_RETURN_IF_ERROR(EvalArgs(e, 1, args));
    if (member.kind() == Value::Kind::kCallable) {
      auto r = CallFunction(member, args);
      if (!r.ok() && !member.callable().errors_located) return Located(callee.pos, r.status());
      return r;
    }
    bool found = false;
    auto r = CallMethod(*this, obj, callee.name, args, found);
    if (!found) {
      return Located(callee.pos, Status(StatusCode::kUnsupported, "unknown method '" + callee.name + "' on a " +
                                                                     std::string(KindName(obj.kind()))));
    }
    if (!r.ok()) return Located(callee.pos, r.status());
    return r;
  }
  CODA_ASSIGN_OR_RETURN(Value fn, Eval(callee));
  if (fn.kind() != Value::Kind::kCallable) {
    if (callee.kind == ExprKind::kName && fn.is_undefined()) {
      return Located(callee.pos, Status(StatusCode::kUnsupported, "unknown function '" + callee.name + "'"));
    }
    return Located(callee.pos, InvalidArgument("a " + std::string(KindName(fn.kind())) + " is not callable"));
  }
  CODA_RETURN_IF_ERROR(EvalArgs(e, 1, args));
  auto r = CallFunction(fn, args);
  if (!r.ok() && !fn.callable().errors_located) return Located(callee.pos, r.status());
  return r;
}

}  // namespace coda::text::jinja
