// Tokens and syntax tree of the chat-template engine (internal to coda_text).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "coda/status.h"
#include "jinja_value.h"

namespace coda::text::jinja {

// Byte offset into the template source; turned into line and column only when reporting.
using Pos = uint32_t;

// "line 3, column 14" (both 1-based; columns count code points).
std::string LineCol(std::string_view source, Pos pos);
// A located error: "line 3, column 14: <message>".
Status ErrorAt(std::string_view source, Pos pos, StatusCode code, std::string_view message);

struct SyntaxOptions {
  bool trim_blocks = true;
  bool lstrip_blocks = true;
  uint32_t max_nesting = 128;
};

enum class TokKind : uint8_t { kText, kBlockBegin, kBlockEnd, kVarBegin, kVarEnd, kName, kString, kInt, kFloat, kOp, kEof };

struct Token {
  TokKind kind;
  Pos pos;
  std::string text;  // text, name, decoded string literal or operator spelling
  int64_t int_value = 0;
  double float_value = 0;
};

// Splits the source into text and tag tokens, applying whitespace control; comments vanish.
Result<std::vector<Token>> Tokenize(std::string_view source, const SyntaxOptions& options);

enum class ExprKind : uint8_t {
  kLiteral,  // literal
  kName,     // name
  kList,     // args: items
  kTuple,    // args: items
  kDict,     // args: key0, value0, key1, value1, ...
  kAttr,     // args[0].name
  kItem,     // args[0][args[1]]
  kSlice,    // args[0][args[1]:args[2]:args[3]], omitted parts are null
  kCall,     // args[0](args[1..]); the last kwnames.size() arguments are keyword arguments
  kFilter,   // args[0] | name(args[1..]), keyword arguments as for kCall
  kTest,     // args[0] is [not] name(args[1..])
  kNeg,      // -args[0]
  kPos,      // +args[0]
  kNot,      // not args[0]
  kAnd,      // args[0] and args[1]
  kOr,       // args[0] or args[1]
  kBinary,   // args[0] op args[1]
  kTernary,  // args[0] if args[1] else args[2]; args[2] may be null
};

enum class BinOp : uint8_t { kAdd, kSub, kMul, kDiv, kFloorDiv, kMod, kPow, kConcat, kEq, kNe, kLt, kLe, kGt, kGe, kIn, kNotIn };

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprKind kind;
  Pos pos;
  BinOp op = BinOp::kAdd;
  bool negate = false;  // kTest: "is not"
  uint32_t height = 1;  // longest path to a leaf; bounds evaluation recursion
  std::string name;
  Value literal;
  std::vector<ExprPtr> args;
  std::vector<std::string> kwnames;
};

enum class StmtKind : uint8_t { kText, kOutput, kIf, kFor, kSet, kMacro, kBreak, kContinue };

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  Stmt(StmtKind k, Pos p) : kind(k), pos(p) {}
  virtual ~Stmt() = default;
  StmtKind kind;
  Pos pos;
};

struct TextStmt : Stmt {
  TextStmt(Pos p, std::string t) : Stmt(StmtKind::kText, p), text(std::move(t)) {}
  std::string text;
};

struct OutputStmt : Stmt {
  OutputStmt(Pos p, ExprPtr e) : Stmt(StmtKind::kOutput, p), expr(std::move(e)) {}
  ExprPtr expr;
};

struct IfStmt : Stmt {
  explicit IfStmt(Pos p) : Stmt(StmtKind::kIf, p) {}
  std::vector<ExprPtr> conditions;  // if, then each elif
  std::vector<Body> branches;       // one per condition
  Body else_body;
};

struct ForStmt : Stmt {
  explicit ForStmt(Pos p) : Stmt(StmtKind::kFor, p) {}
  std::vector<std::string> targets;  // one name, or several to unpack each item
  ExprPtr iterable;
  ExprPtr filter;  // "for x in xs if cond"; may be null
  Body body;
  Body else_body;  // runs when there was no iteration
};

struct SetStmt : Stmt {
  explicit SetStmt(Pos p) : Stmt(StmtKind::kSet, p) {}
  std::vector<std::string> targets;  // one name, or several to unpack; empty for attribute targets
  ExprPtr object;                    // "set ns.attr = ...": the namespace expression
  std::string attr;
  ExprPtr value;  // null for a block set, whose rendered body is the value
  Body body;
};

struct MacroStmt : Stmt {
  explicit MacroStmt(Pos p) : Stmt(StmtKind::kMacro, p) {}
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // per parameter; null when it has none
  Body body;
};

struct Program {
  std::string source;
  Body body;
};

Result<std::shared_ptr<const Program>> ParseProgram(std::string_view source, const SyntaxOptions& options);

// Name tables shared by the parser (to reject unknown names early) and the interpreter.
bool IsKnownFilter(std::string_view name);
bool IsKnownTest(std::string_view name);
bool TestTakesArgument(std::string_view name);

}  // namespace coda::text::jinja
