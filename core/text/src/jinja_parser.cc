#include <algorithm>
#include <initializer_list>

#include "jinja_ast.h"

namespace coda::text::jinja {
namespace {

bool IsKeyword(std::string_view s) {
  return s == "and" || s == "or" || s == "not" || s == "in" || s == "is" || s == "if" || s == "else";
}

// Tags that only make sense as part of an enclosing block.
bool IsInnerTag(std::string_view s) {
  return s == "elif" || s == "else" || s == "endif" || s == "endfor" || s == "endset" || s == "endmacro" ||
         s == "endgeneration" || s == "endraw" || s == "endfilter" || s == "endcall" || s == "endblock";
}

class Parser {
 public:
  Parser(std::vector<Token> tokens, std::string_view src, const SyntaxOptions& o)
      : t_(std::move(tokens)), src_(src), max_nesting_(o.max_nesting) {}

  Result<Body> Run() {
    Body body;
    std::string found;
    CODA_RETURN_IF_ERROR(ParseBody(body, {}, found, 0, ""));
    return body;
  }

 private:
  // ---- token helpers ----
  const Token& Peek(size_t ahead = 0) const { return t_[std::min(k_ + ahead, t_.size() - 1)]; }
  const Token& Next() {
    const Token& t = Peek();
    if (k_ < t_.size() - 1) ++k_;
    return t;
  }
  bool AtOp(std::string_view op, size_t ahead = 0) const {
    return Peek(ahead).kind == TokKind::kOp && Peek(ahead).text == op;
  }
  bool AtName(std::string_view name, size_t ahead = 0) const {
    return Peek(ahead).kind == TokKind::kName && Peek(ahead).text == name;
  }
  bool AcceptOp(std::string_view op) {
    if (!AtOp(op)) return false;
    Next();
    return true;
  }

  Status Error(Pos pos, std::string_view msg, StatusCode code = StatusCode::kInvalidArgument) const {
    return ErrorAt(src_, pos, code, msg);
  }
  std::string Describe(const Token& t) const {
    switch (t.kind) {
      case TokKind::kText: return "template text";
      case TokKind::kBlockBegin: return "'{%'";
      case TokKind::kBlockEnd: return "'%}'";
      case TokKind::kVarBegin: return "'{{'";
      case TokKind::kVarEnd: return "'}}'";
      case TokKind::kName: return "'" + t.text + "'";
      case TokKind::kString: return "a string";
      case TokKind::kInt:
      case TokKind::kFloat: return "a number";
      case TokKind::kOp: return "'" + t.text + "'";
      case TokKind::kEof: return "the end of the template";
    }
    return "?";
  }
  Status Unexpected(std::string_view expected) const {
    return Error(Peek().pos, "expected " + std::string(expected) + ", got " + Describe(Peek()));
  }
  Status ExpectOp(std::string_view op) {
    if (!AcceptOp(op)) return Unexpected("'" + std::string(op) + "'");
    return Status::Ok();
  }
  Status ExpectBlockEnd() {
    if (Peek().kind != TokKind::kBlockEnd) return Unexpected("'%}'");
    Next();
    return Status::Ok();
  }
  Result<std::string> ExpectName(std::string_view what) {
    if (Peek().kind != TokKind::kName || IsKeyword(Peek().text)) return Unexpected(what);
    return Next().text;
  }

  // Every recursive descent passes through a guard, so hostile nesting fails cleanly
  // instead of exhausting the stack.
  class DepthGuard {
   public:
    explicit DepthGuard(Parser& p) : p_(p) { ++p_.depth_; }
    ~DepthGuard() { --p_.depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;

   private:
    Parser& p_;
  };
  Status CheckDepth(Pos pos) const {
    if (depth_ > max_nesting_) {
      return Error(pos, "template nested too deeply (limit " + std::to_string(max_nesting_) + ")",
                   StatusCode::kOutOfRange);
    }
    return Status::Ok();
  }

  ExprPtr Node(ExprKind kind, Pos pos) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos;
    return e;
  }
  // Seals a node: its height bounds how deep evaluation recurses, so chains like
  // "a+a+a+..." (built by loops, not recursion) are limited too.
  Result<ExprPtr> Done(ExprPtr e) {
    uint32_t h = 0;
    for (const auto& a : e->args) {
      if (a) h = std::max(h, a->height);
    }
    e->height = h + 1;
    if (e->height > max_nesting_) {
      return Error(e->pos, "expression nested too deeply (limit " + std::to_string(max_nesting_) + ")",
                   StatusCode::kOutOfRange);
    }
    return e;
  }
  Result<ExprPtr> Binary(ExprKind kind, Pos pos, ExprPtr a, ExprPtr b, BinOp op = BinOp::kAdd) {
    auto e = Node(kind, pos);
    e->op = op;
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return Done(std::move(e));
  }

  // ---- statements ----

  // Parses statements until one of `ends` opens a tag; `found` gets its name, and the tokens
  // after the tag name are left for the caller. `opener` and `open_pos` describe the block.
  Status ParseBody(Body& body, std::initializer_list<std::string_view> ends, std::string& found, Pos open_pos,
                   std::string_view opener) {
    DepthGuard guard(*this);
    CODA_RETURN_IF_ERROR(CheckDepth(open_pos));
    while (true) {
      const Token& t = Peek();
      switch (t.kind) {
        case TokKind::kEof:
          if (ends.size() == 0) return Status::Ok();
          return Error(open_pos, "unclosed '" + std::string(opener) + "' block: missing '{% " +
                                     std::string(*(ends.end() - 1)) + " %}'");
        case TokKind::kText:
          body.push_back(std::make_unique<TextStmt>(t.pos, t.text));
          Next();
          continue;
        case TokKind::kVarBegin: {
          Pos pos = Next().pos;
          CODA_ASSIGN_OR_RETURN(ExprPtr e, ParseExpression());
          if (Peek().kind != TokKind::kVarEnd) return Unexpected("'}}'");
          Next();
          body.push_back(std::make_unique<OutputStmt>(pos, std::move(e)));
          continue;
        }
        case TokKind::kBlockBegin: break;
        default: return Unexpected("template text or a tag");
      }
      Pos tag_pos = Next().pos;
      if (Peek().kind != TokKind::kName) return Unexpected("a tag name");
      std::string name = Peek().text;
      if (std::find(ends.begin(), ends.end(), name) != ends.end()) {
        Next();
        found = name;
        return Status::Ok();
      }
      if (IsInnerTag(name)) {
        std::string msg = "unexpected '{% " + name + " %}'";
        if (ends.size() != 0) msg += " inside '" + std::string(opener) + "' (opened at " + LineCol(src_, open_pos) + ")";
        return Error(Peek().pos, msg);
      }
      Next();
      CODA_RETURN_IF_ERROR(ParseTag(body, name, tag_pos));
    }
  }

  Status ParseTag(Body& body, const std::string& name, Pos pos) {
    if (name == "if") return ParseIf(body, pos);
    if (name == "for") return ParseFor(body, pos);
    if (name == "set") return ParseSet(body, pos);
    if (name == "macro") return ParseMacro(body, pos);
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) return Error(pos, "'" + name + "' outside a for loop");
      CODA_RETURN_IF_ERROR(ExpectBlockEnd());
      body.push_back(std::make_unique<Stmt>(name == "break" ? StmtKind::kBreak : StmtKind::kContinue, pos));
      return Status::Ok();
    }
    if (name == "generation") {
      // Hugging Face's marker for assistant-token masks; renders as its body.
      CODA_RETURN_IF_ERROR(ExpectBlockEnd());
      std::string found;
      CODA_RETURN_IF_ERROR(ParseBody(body, {"endgeneration"}, found, pos, "generation"));
      return ExpectBlockEnd();
    }
    static constexpr std::string_view kKnownButUnsupported[] = {"raw",    "filter", "call",   "block", "extends",
                                                                "include", "import", "from", "with",  "autoescape"};
    for (std::string_view k : kKnownButUnsupported) {
      if (name == k) return Error(pos, "the '{% " + name + " %}' tag is not supported", StatusCode::kUnsupported);
    }
    return Error(pos, "unknown tag '" + name + "'", StatusCode::kUnsupported);
  }

  Status ParseIf(Body& body, Pos pos) {
    auto stmt = std::make_unique<IfStmt>(pos);
    std::string found = "if";
    while (found == "if" || found == "elif") {
      CODA_ASSIGN_OR_RETURN(ExprPtr cond, ParseExpression());
      CODA_RETURN_IF_ERROR(ExpectBlockEnd());
      stmt->conditions.push_back(std::move(cond));
      stmt->branches.emplace_back();
      CODA_RETURN_IF_ERROR(ParseBody(stmt->branches.back(), {"elif", "else", "endif"}, found, pos, "if"));
    }
    if (found == "else") {
      CODA_RETURN_IF_ERROR(ExpectBlockEnd());
      CODA_RETURN_IF_ERROR(ParseBody(stmt->else_body, {"endif"}, found, pos, "if"));
    }
    CODA_RETURN_IF_ERROR(ExpectBlockEnd());
    body.push_back(std::move(stmt));
    return Status::Ok();
  }

  Status ParseTargets(std::vector<std::string>& names) {
    bool paren = AcceptOp("(");
    do {
      CODA_ASSIGN_OR_RETURN(std::string n, ExpectName("a variable name"));
      names.push_back(std::move(n));
    } while (AcceptOp(","));
    if (paren) CODA_RETURN_IF_ERROR(ExpectOp(")"));
    return Status::Ok();
  }

  Status ParseFor(Body& body, Pos pos) {
    auto stmt = std::make_unique<ForStmt>(pos);
    CODA_RETURN_IF_ERROR(ParseTargets(stmt->targets));
    if (!AtName("in")) return Unexpected("'in'");
    Next();
    // No conditional expression here: a trailing "if" filters the loop instead.
    CODA_ASSIGN_OR_RETURN(stmt->iterable, ParseOr());
    if (AtName("if")) {
      Next();
      CODA_ASSIGN_OR_RETURN(stmt->filter, ParseOr());
    }
    if (AtName("recursive")) return Error(Peek().pos, "recursive for loops are not supported", StatusCode::kUnsupported);
    CODA_RETURN_IF_ERROR(ExpectBlockEnd());
    std::string found;
    ++loop_depth_;
    Status st = ParseBody(stmt->body, {"else", "endfor"}, found, pos, "for");
    --loop_depth_;
    CODA_RETURN_IF_ERROR(st);
    if (found == "else") {
      CODA_RETURN_IF_ERROR(ExpectBlockEnd());
      CODA_RETURN_IF_ERROR(ParseBody(stmt->else_body, {"endfor"}, found, pos, "for"));
    }
    CODA_RETURN_IF_ERROR(ExpectBlockEnd());
    body.push_back(std::move(stmt));
    return Status::Ok();
  }

  Status ParseSet(Body& body, Pos pos) {
    auto stmt = std::make_unique<SetStmt>(pos);
    if (Peek().kind == TokKind::kName && AtOp(".", 1)) {
      auto obj = Node(ExprKind::kName, Peek().pos);
      obj->name = Next().text;
      stmt->object = std::move(obj);
      Next();  // '.'
      CODA_ASSIGN_OR_RETURN(stmt->attr, ExpectName("an attribute name"));
    } else {
      CODA_RETURN_IF_ERROR(ParseTargets(stmt->targets));
    }
    if (AcceptOp("=")) {
      CODA_ASSIGN_OR_RETURN(stmt->value, ParseTupleOrExpression());
      CODA_RETURN_IF_ERROR(ExpectBlockEnd());
    } else {
      if (stmt->targets.size() != 1) return Unexpected("'='");
      if (AtOp("|")) return Error(Peek().pos, "filters on block assignments are not supported", StatusCode::kUnsupported);
      CODA_RETURN_IF_ERROR(ExpectBlockEnd());
      // The body renders to a string; a break inside it could not leave the loop.
      int saved_loops = loop_depth_;
      loop_depth_ = 0;
      std::string found;
      Status st = ParseBody(stmt->body, {"endset"}, found, pos, "set");
      loop_depth_ = saved_loops;
      CODA_RETURN_IF_ERROR(st);
      CODA_RETURN_IF_ERROR(ExpectBlockEnd());
    }
    body.push_back(std::move(stmt));
    return Status::Ok();
  }

  Status ParseMacro(Body& body, Pos pos) {
    auto stmt = std::make_unique<MacroStmt>(pos);
    CODA_ASSIGN_OR_RETURN(stmt->name, ExpectName("a macro name"));
    CODA_RETURN_IF_ERROR(ExpectOp("("));
    while (!AtOp(")")) {
      CODA_ASSIGN_OR_RETURN(std::string param, ExpectName("a parameter name"));
      stmt->params.push_back(std::move(param));
      ExprPtr def;
      if (AcceptOp("=")) {
        CODA_ASSIGN_OR_RETURN(def, ParseExpression());
      } else if (!stmt->defaults.empty() && stmt->defaults.back() != nullptr) {
        return Error(Peek().pos, "a parameter without a default follows one with a default");
      }
      stmt->defaults.push_back(std::move(def));
      if (!AcceptOp(",")) break;
    }
    CODA_RETURN_IF_ERROR(ExpectOp(")"));
    CODA_RETURN_IF_ERROR(ExpectBlockEnd());
    // Loop controls do not reach through a macro body into the caller's loop.
    int saved_loops = loop_depth_;
    loop_depth_ = 0;
    std::string found;
    Status st = ParseBody(stmt->body, {"endmacro"}, found, pos, "macro");
    loop_depth_ = saved_loops;
    CODA_RETURN_IF_ERROR(st);
    CODA_RETURN_IF_ERROR(ExpectBlockEnd());
    body.push_back(std::move(stmt));
    return Status::Ok();
  }

  // ---- expressions, loosest binding first ----

  Result<ExprPtr> ParseTupleOrExpression() {
    Pos pos = Peek().pos;
    CODA_ASSIGN_OR_RETURN(ExprPtr first, ParseExpression());
    if (!AtOp(",")) return first;
    auto tuple = Node(ExprKind::kTuple, pos);
    tuple->args.push_back(std::move(first));
    while (AcceptOp(",")) {
      if (Peek().kind == TokKind::kBlockEnd || Peek().kind == TokKind::kVarEnd || AtOp(")")) break;
      CODA_ASSIGN_OR_RETURN(ExprPtr e, ParseExpression());
      tuple->args.push_back(std::move(e));
    }
    return Done(std::move(tuple));
  }

  Result<ExprPtr> ParseExpression() {
    DepthGuard guard(*this);
    CODA_RETURN_IF_ERROR(CheckDepth(Peek().pos));
    Pos pos = Peek().pos;
    CODA_ASSIGN_OR_RETURN(ExprPtr value, ParseOr());
    if (!AtName("if")) return value;
    Next();
    auto e = Node(ExprKind::kTernary, pos);
    e->args.push_back(std::move(value));
    CODA_ASSIGN_OR_RETURN(ExprPtr cond, ParseOr());
    e->args.push_back(std::move(cond));
    ExprPtr otherwise;
    if (AtName("else")) {
      Next();
      CODA_ASSIGN_OR_RETURN(otherwise, ParseExpression());
    }
    e->args.push_back(std::move(otherwise));
    return Done(std::move(e));
  }

  Result<ExprPtr> ParseOr() {
    CODA_ASSIGN_OR_RETURN(ExprPtr left, ParseAnd());
    while (AtName("or")) {
      Pos pos = Next().pos;
      CODA_ASSIGN_OR_RETURN(ExprPtr right, ParseAnd());
      CODA_ASSIGN_OR_RETURN(left, Binary(ExprKind::kOr, pos, std::move(left), std::move(right)));
    }
    return left;
  }

  Result<ExprPtr> ParseAnd() {
    CODA_ASSIGN_OR_RETURN(ExprPtr left, ParseNot());
    while (AtName("and")) {
      Pos pos = Next().pos;
      CODA_ASSIGN_OR_RETURN(ExprPtr right, ParseNot());
      CODA_ASSIGN_OR_RETURN(left, Binary(ExprKind::kAnd, pos, std::move(left), std::move(right)));
    }
    return left;
  }

  Result<ExprPtr> ParseNot() {
    if (!AtName("not")) return ParseCompare();
    DepthGuard guard(*this);
    Pos pos = Next().pos;
    CODA_RETURN_IF_ERROR(CheckDepth(pos));
    CODA_ASSIGN_OR_RETURN(ExprPtr operand, ParseNot());
    auto e = Node(ExprKind::kNot, pos);
    e->args.push_back(std::move(operand));
    return Done(std::move(e));
  }

  Result<ExprPtr> ParseCompare() {
    CODA_ASSIGN_OR_RETURN(ExprPtr left, ParseConcat());
    while (true) {
      Pos pos = Peek().pos;
      BinOp op;
      if (AtOp("==")) op = BinOp::kEq;
      else if (AtOp("!=")) op = BinOp::kNe;
      else if (AtOp("<")) op = BinOp::kLt;
      else if (AtOp("<=")) op = BinOp::kLe;
      else if (AtOp(">")) op = BinOp::kGt;
      else if (AtOp(">=")) op = BinOp::kGe;
      else if (AtName("in")) op = BinOp::kIn;
      else if (AtName("not") && AtName("in", 1)) op = BinOp::kNotIn;
      else break;
      Next();
      if (op == BinOp::kNotIn) Next();
      CODA_ASSIGN_OR_RETURN(ExprPtr right, ParseConcat());
      CODA_ASSIGN_OR_RETURN(left, Binary(ExprKind::kBinary, pos, std::move(left), std::move(right), op));
    }
    return left;
  }

  Result<ExprPtr> ParseConcat() {
    CODA_ASSIGN_OR_RETURN(ExprPtr left, ParseAdditive());
    while (AtOp("~")) {
      Pos pos = Next().pos;
      CODA_ASSIGN_OR_RETURN(ExprPtr right, ParseAdditive());
      CODA_ASSIGN_OR_RETURN(left, Binary(ExprKind::kBinary, pos, std::move(left), std::move(right), BinOp::kConcat));
    }
    return left;
  }

  Result<ExprPtr> ParseAdditive() {
    CODA_ASSIGN_OR_RETURN(ExprPtr left, ParseMultiplicative());
    while (AtOp("+") || AtOp("-")) {
      BinOp op = AtOp("+") ? BinOp::kAdd : BinOp::kSub;
      Pos pos = Next().pos;
      CODA_ASSIGN_OR_RETURN(ExprPtr right, ParseMultiplicative());
      CODA_ASSIGN_OR_RETURN(left, Binary(ExprKind::kBinary, pos, std::move(left), std::move(right), op));
    }
    return left;
  }

  Result<ExprPtr> ParseMultiplicative() {
    CODA_ASSIGN_OR_RETURN(ExprPtr left, ParsePower());
    while (AtOp("*") || AtOp("/") || AtOp("//") || AtOp("%")) {
      BinOp op = AtOp("*") ? BinOp::kMul : AtOp("/") ? BinOp::kDiv : AtOp("//") ? BinOp::kFloorDiv : BinOp::kMod;
      Pos pos = Next().pos;
      CODA_ASSIGN_OR_RETURN(ExprPtr right, ParsePower());
      CODA_ASSIGN_OR_RETURN(left, Binary(ExprKind::kBinary, pos, std::move(left), std::move(right), op));
    }
    return left;
  }

  Result<ExprPtr> ParsePower() {
    CODA_ASSIGN_OR_RETURN(ExprPtr left, ParseUnary(true));
    while (AtOp("**")) {
      Pos pos = Next().pos;
      CODA_ASSIGN_OR_RETURN(ExprPtr right, ParseUnary(true));
      CODA_ASSIGN_OR_RETURN(left, Binary(ExprKind::kBinary, pos, std::move(left), std::move(right), BinOp::kPow));
    }
    return left;
  }

  // Jinja applies filters and tests after a sign: "-x|abs" is "(-x)|abs".
  Result<ExprPtr> ParseUnary(bool with_filters) {
    ExprPtr node;
    if (AtOp("-") || AtOp("+")) {
      DepthGuard guard(*this);
      ExprKind kind = AtOp("-") ? ExprKind::kNeg : ExprKind::kPos;
      Pos pos = Next().pos;
      CODA_RETURN_IF_ERROR(CheckDepth(pos));
      CODA_ASSIGN_OR_RETURN(ExprPtr operand, ParseUnary(false));
      node = Node(kind, pos);
      node->args.push_back(std::move(operand));
      CODA_ASSIGN_OR_RETURN(node, Done(std::move(node)));
    } else {
      CODA_ASSIGN_OR_RETURN(node, ParsePostfix());
    }
    if (!with_filters) return node;
    return ParseFiltersAndTests(std::move(node));
  }

  Result<ExprPtr> ParseFiltersAndTests(ExprPtr node) {
    while (true) {
      if (AtOp("|")) {
        Next();
        Pos pos = Peek().pos;
        CODA_ASSIGN_OR_RETURN(std::string name, ExpectName("a filter name"));
        if (!IsKnownFilter(name)) return Error(pos, "unknown filter '" + name + "'", StatusCode::kUnsupported);
        auto f = Node(ExprKind::kFilter, pos);
        f->name = std::move(name);
        f->args.push_back(std::move(node));
        if (AtOp("(")) CODA_RETURN_IF_ERROR(ParseCallArgs(*f));
        CODA_ASSIGN_OR_RETURN(node, Done(std::move(f)));
      } else if (AtName("is")) {
        Next();
        auto t = Node(ExprKind::kTest, Peek().pos);
        if (AtName("not")) {
          Next();
          t->negate = true;
        }
        Pos pos = Peek().pos;
        // "none", "true" and "false" are test names here even though they are also literals.
        if (Peek().kind != TokKind::kName) return Unexpected("a test name");
        std::string name = Next().text;
        if (!IsKnownTest(name)) return Error(pos, "unknown test '" + name + "'", StatusCode::kUnsupported);
        t->pos = pos;
        t->name = name;
        t->args.push_back(std::move(node));
        if (AtOp("(")) {
          CODA_RETURN_IF_ERROR(ParseCallArgs(*t));
        } else if (TestTakesArgument(name) && StartsOperand()) {
          // "x is divisibleby 3": one bare argument without parentheses.
          CODA_ASSIGN_OR_RETURN(ExprPtr arg, ParsePostfix());
          t->args.push_back(std::move(arg));
        }
        CODA_ASSIGN_OR_RETURN(node, Done(std::move(t)));
      } else {
        return node;
      }
    }
  }

  bool StartsOperand() const {
    const Token& t = Peek();
    switch (t.kind) {
      case TokKind::kName: return !IsKeyword(t.text);
      case TokKind::kString:
      case TokKind::kInt:
      case TokKind::kFloat: return true;
      case TokKind::kOp: return t.text == "(" || t.text == "[" || t.text == "{";
      default: return false;
    }
  }

  // "(a, b, key=value)" appended to `call` (whose args[0] is the callee or operand).
  Status ParseCallArgs(Expr& call) {
    Pos open = Next().pos;  // '('
    while (!AtOp(")")) {
      if (Peek().kind == TokKind::kName && AtOp("=", 1)) {
        call.kwnames.push_back(Next().text);
        Next();  // '='
      } else if (!call.kwnames.empty()) {
        return Error(Peek().pos, "positional argument follows keyword argument");
      }
      CODA_ASSIGN_OR_RETURN(ExprPtr arg, ParseExpression());
      call.args.push_back(std::move(arg));
      if (!AcceptOp(",")) break;
    }
    if (!AcceptOp(")")) {
      if (Peek().kind == TokKind::kEof || Peek().kind == TokKind::kVarEnd || Peek().kind == TokKind::kBlockEnd) {
        return Error(open, "unclosed '(': missing ')'");
      }
      return Unexpected("',' or ')'");
    }
    return Status::Ok();
  }

  Result<ExprPtr> ParsePostfix() {
    CODA_ASSIGN_OR_RETURN(ExprPtr node, ParsePrimary());
    while (true) {
      if (AtOp(".")) {
        Pos pos = Next().pos;
        if (Peek().kind == TokKind::kInt) {
          auto e = Node(ExprKind::kItem, pos);
          e->args.push_back(std::move(node));
          auto idx = Node(ExprKind::kLiteral, Peek().pos);
          idx->literal = Value::Int(Next().int_value);
          e->args.push_back(std::move(idx));
          CODA_ASSIGN_OR_RETURN(node, Done(std::move(e)));
          continue;
        }
        if (Peek().kind != TokKind::kName) return Unexpected("an attribute name");
        auto e = Node(ExprKind::kAttr, pos);
        e->name = Next().text;
        e->args.push_back(std::move(node));
        CODA_ASSIGN_OR_RETURN(node, Done(std::move(e)));
      } else if (AtOp("[")) {
        CODA_ASSIGN_OR_RETURN(node, ParseSubscript(std::move(node)));
      } else if (AtOp("(")) {
        auto call = Node(ExprKind::kCall, Peek().pos);
        call->args.push_back(std::move(node));
        CODA_RETURN_IF_ERROR(ParseCallArgs(*call));
        CODA_ASSIGN_OR_RETURN(node, Done(std::move(call)));
      } else {
        return node;
      }
    }
  }

  Result<ExprPtr> ParseSubscript(ExprPtr object) {
    Pos pos = Next().pos;  // '['
    ExprPtr parts[3];
    int colons = 0;
    while (!AtOp("]")) {
      if (AcceptOp(":")) {
        if (++colons > 2) return Unexpected("']'");
        continue;
      }
      if (parts[colons]) return Unexpected("':' or ']'");
      CODA_ASSIGN_OR_RETURN(parts[colons], ParseExpression());
    }
    Next();  // ']'
    if (colons == 0) {
      if (!parts[0]) return Error(pos, "empty subscript");
      auto e = Node(ExprKind::kItem, pos);
      e->args.push_back(std::move(object));
      e->args.push_back(std::move(parts[0]));
      return Done(std::move(e));
    }
    auto e = Node(ExprKind::kSlice, pos);
    e->args.push_back(std::move(object));
    for (auto& p : parts) e->args.push_back(std::move(p));
    return Done(std::move(e));
  }

  Result<ExprPtr> ParsePrimary() {
    const Token& t = Peek();
    Pos pos = t.pos;
    switch (t.kind) {
      case TokKind::kName: {
        if (IsKeyword(t.text)) return Unexpected("an expression");
        auto e = Node(ExprKind::kLiteral, pos);
        const std::string& n = t.text;
        if (n == "true" || n == "True") e->literal = Value::Bool(true);
        else if (n == "false" || n == "False") e->literal = Value::Bool(false);
        else if (n == "none" || n == "None") e->literal = Value::MakeNone();
        else e->kind = ExprKind::kName, e->name = n;
        Next();
        return Done(std::move(e));
      }
      case TokKind::kString: {
        // Adjacent literals concatenate, as in Python.
        std::string s;
        while (Peek().kind == TokKind::kString) s += Next().text;
        auto e = Node(ExprKind::kLiteral, pos);
        e->literal = Value::String(std::move(s));
        return Done(std::move(e));
      }
      case TokKind::kInt:
      case TokKind::kFloat: {
        auto e = Node(ExprKind::kLiteral, pos);
        e->literal = t.kind == TokKind::kInt ? Value::Int(t.int_value) : Value::Float(t.float_value);
        Next();
        return Done(std::move(e));
      }
      case TokKind::kOp: break;
      default: return Unexpected("an expression");
    }
    DepthGuard guard(*this);
    CODA_RETURN_IF_ERROR(CheckDepth(pos));
    if (AcceptOp("(")) {
      if (AcceptOp(")")) return Done(Node(ExprKind::kTuple, pos));
      CODA_ASSIGN_OR_RETURN(ExprPtr inner, ParseTupleOrExpression());
      if (!AcceptOp(")")) return Unexpected("')'");
      return inner;
    }
    if (AcceptOp("[")) {
      auto e = Node(ExprKind::kList, pos);
      while (!AtOp("]")) {
        CODA_ASSIGN_OR_RETURN(ExprPtr item, ParseExpression());
        e->args.push_back(std::move(item));
        if (!AcceptOp(",")) break;
      }
      CODA_RETURN_IF_ERROR(ExpectOp("]"));
      return Done(std::move(e));
    }
    if (AcceptOp("{")) {
      auto e = Node(ExprKind::kDict, pos);
      while (!AtOp("}")) {
        CODA_ASSIGN_OR_RETURN(ExprPtr key, ParseExpression());
        CODA_RETURN_IF_ERROR(ExpectOp(":"));
        CODA_ASSIGN_OR_RETURN(ExprPtr value, ParseExpression());
        e->args.push_back(std::move(key));
        e->args.push_back(std::move(value));
        if (!AcceptOp(",")) break;
      }
      CODA_RETURN_IF_ERROR(ExpectOp("}"));
      return Done(std::move(e));
    }
    return Unexpected("an expression");
  }

  std::vector<Token> t_;
  size_t k_ = 0;
  std::string_view src_;
  uint32_t max_nesting_;
  uint32_t depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Result<std::shared_ptr<const Program>> ParseProgram(std::string_view source, const SyntaxOptions& options) {
  auto program = std::make_shared<Program>();
  program->source = std::string(source);
  CODA_ASSIGN_OR_RETURN(std::vector<Token> tokens, Tokenize(program->source, options));
  Parser parser(std::move(tokens), program->source, options);
  CODA_ASSIGN_OR_RETURN(program->body, parser.Run());
  return std::shared_ptr<const Program>(std::move(program));
}

}  // namespace coda::text::jinja
