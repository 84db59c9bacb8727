// coda_ops.hpp — the op table (coda_ops.h) read in C++20: every op's signature parsed at compile
// time (a malformed one does not compile), and one check of tensors against a signature. The
// host uses it to validate a model's graph and to plan value shapes; backends written in C++ use
// it in supports_op() and execute(). Header-only, no state; not needed by backends in C.
#pragma once

#include <cstdint>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>

#include "coda_backend.h"

namespace coda::ops {

// ---- Symbols a dimension may name. ----

struct HparamField {
  std::string_view name;
  uint32_t coda_hparams::*field;
};
// The integer fields of coda_hparams that shapes depend on.
inline constexpr HparamField kHparams[] = {
    {"hidden_size", &coda_hparams::hidden_size},
    {"n_heads", &coda_hparams::n_heads},
    {"q_lora_rank", &coda_hparams::q_lora_rank},
    {"kv_lora_rank", &coda_hparams::kv_lora_rank},
    {"qk_nope_head_dim", &coda_hparams::qk_nope_head_dim},
    {"qk_rope_head_dim", &coda_hparams::qk_rope_head_dim},
    {"v_head_dim", &coda_hparams::v_head_dim},
    {"n_routed_experts", &coda_hparams::n_routed_experts},
    {"n_experts_per_tok", &coda_hparams::n_experts_per_tok},
    {"n_group", &coda_hparams::n_group},
    {"topk_group", &coda_hparams::topk_group},
};
// Symbol numbers: hyper-parameters first, then n (the op's n_tokens), then free names.
inline constexpr int kNumHparams = static_cast<int>(std::size(kHparams));
inline constexpr int kSymN = kNumHparams;
inline constexpr int kSymFree = kNumHparams + 1;
inline constexpr int kMaxFree = 8;
inline constexpr int kMaxSymbols = kSymFree + kMaxFree;

inline constexpr int kMaxSlots = 12;  // per list
inline constexpr int kMaxTokens = 16; // per dimension expression

// A dimension in postfix form.
struct Expr {
  enum Kind : uint8_t { kSymbol, kNumber, kAdd, kMul };
  struct Token {
    Kind kind = kNumber;
    uint32_t value = 0;  // symbol number or literal
  };
  Token tokens[kMaxTokens] = {};
  int size = 0;
  // The symbol, when the expression is one name alone; -1 otherwise.
  constexpr int Alone() const { return size == 1 && tokens[0].kind == kSymbol ? static_cast<int>(tokens[0].value) : -1; }
};

enum class Presence : uint8_t { kRequired, kOptional, kIfNonzero, kIfZero };

struct Slot {
  std::string_view name;
  int ndim = 0;
  Expr dims[CODA_MAX_DIMS] = {};
  uint32_t dtype = CODA_DTYPE_F32;  // activations only
  Presence presence = Presence::kRequired;
  int condition = -1;  // hyper-parameter of kIfNonzero / kIfZero
};

struct SlotList {
  Slot slots[kMaxSlots] = {};
  int size = 0;
};

struct Signature {
  SlotList inputs, weights, outputs;
  int repeat = -1;  // hyper-parameter the weight group repeats by; -1: no group
  std::string_view free_names[kMaxFree] = {};
  int n_free = 0;
};

// ---- The compile-time parser. ----

namespace detail {

// Called only where a signature is malformed; not constexpr, so that the table fails to compile.
inline void SignatureError(const char*) {}

class Parser {
 public:
  constexpr explicit Parser(std::string_view text) : s_(text) {}

  constexpr Signature Parse() {
    Signature sig;
    ParseList(sig, sig.inputs, /*list=*/0);
    Expect('|');
    ParseList(sig, sig.weights, 1);
    Expect('|');
    ParseList(sig, sig.outputs, 2);
    Space();
    if (i_ != s_.size()) SignatureError("text after the outputs");
    return sig;
  }

 private:
  constexpr void Space() {
    while (i_ < s_.size() && s_[i_] == ' ') ++i_;
  }
  constexpr bool Peek(char c) {
    Space();
    return i_ < s_.size() && s_[i_] == c;
  }
  constexpr void Expect(char c) {
    if (!Peek(c)) SignatureError("unexpected character");
    ++i_;
  }
  static constexpr bool IdentChar(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  }
  constexpr std::string_view Ident() {
    Space();
    const size_t b = i_;
    while (i_ < s_.size() && IdentChar(s_[i_])) ++i_;
    if (b == i_ || (s_[b] >= '0' && s_[b] <= '9')) SignatureError("expected a name");
    return s_.substr(b, i_ - b);
  }
  static constexpr int Hparam(std::string_view name) {
    for (int k = 0; k < kNumHparams; ++k)
      if (kHparams[k].name == name) return k;
    return -1;
  }
  // The symbol of a name; a free name gets a number when first seen (list: 0 inputs, 1 weights,
  // 2 outputs; outputs bind nothing).
  constexpr int Symbol(Signature& sig, std::string_view name, int list, bool alone, bool optional) {
    if (name == "n") return kSymN;
    if (const int h = Hparam(name); h >= 0) return h;
    for (int f = 0; f < sig.n_free; ++f)
      if (sig.free_names[f] == name) return kSymFree + f;
    if (list == 2) SignatureError("an output dimension names nothing bound before it");
    if (!alone) SignatureError("a free name must first appear alone as a dimension");
    if (optional) SignatureError("a free name must first appear in a required slot");
    if (sig.n_free == kMaxFree) SignatureError("too many free names");
    sig.free_names[sig.n_free] = name;
    return kSymFree + sig.n_free++;
  }
  constexpr void Push(Expr& e, Expr::Kind kind, uint32_t value = 0) {
    if (e.size == kMaxTokens) SignatureError("dimension expression too long");
    e.tokens[e.size++] = {kind, value};
  }
  // sum := product ('+' product)*; product := atom ('*' atom)*; atom := name | number | '(' sum ')'
  constexpr void Sum(Signature& sig, Expr& e, int list, bool optional) {
    Product(sig, e, list, optional);
    while (Peek('+')) {
      ++i_;
      Product(sig, e, list, optional);
      Push(e, Expr::kAdd);
    }
  }
  constexpr void Product(Signature& sig, Expr& e, int list, bool optional) {
    Atom(sig, e, list, optional);
    while (Peek('*')) {
      ++i_;
      Atom(sig, e, list, optional);
      Push(e, Expr::kMul);
    }
  }
  constexpr void Atom(Signature& sig, Expr& e, int list, bool optional) {
    Space();
    if (Peek('(')) {
      ++i_;
      Sum(sig, e, list, optional);
      Expect(')');
      return;
    }
    if (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
      uint32_t v = 0;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') v = v * 10 + static_cast<uint32_t>(s_[i_++] - '0');
      Push(e, Expr::kNumber, v);
      return;
    }
    const std::string_view name = Ident();
    Space();
    // Alone: the whole dimension is this name (followed by ',' or ']').
    const bool alone = e.size == 0 && i_ < s_.size() && (s_[i_] == ',' || s_[i_] == ']');
    Push(e, Expr::kSymbol, static_cast<uint32_t>(Symbol(sig, name, list, alone, optional)));
  }

  constexpr void ParseSlot(Signature& sig, SlotList& l, int list) {
    if (l.size == kMaxSlots) SignatureError("too many slots");
    Slot& s = l.slots[l.size++];
    s.name = Ident();
    // The presence marker follows the shape; look ahead for it so that names first seen in an
    // optional slot are refused.
    size_t close = s_.find(']', i_);
    const bool optional = close != std::string_view::npos && close + 1 < s_.size() && s_[close + 1] == '?';
    if (optional && list != 1) SignatureError("only weights may be optional");
    Expect('[');
    for (;;) {
      if (s.ndim == CODA_MAX_DIMS) SignatureError("too many dimensions");
      Sum(sig, s.dims[s.ndim++], list, optional);
      if (Peek(']')) break;
      Expect(',');
    }
    Expect(']');
    if (i_ < s_.size() && s_[i_] == ':') {
      ++i_;
      const std::string_view t = Ident();
      if (list == 1) SignatureError("weights carry no dtype");
      if (t == "i32") s.dtype = CODA_DTYPE_I32;
      else if (t == "f32") s.dtype = CODA_DTYPE_F32;
      else SignatureError("unknown activation dtype");
    }
    if (i_ < s_.size() && s_[i_] == '?') {
      ++i_;
      s.presence = Presence::kOptional;
      bool negate = false;
      if (i_ < s_.size() && s_[i_] == '!') {
        negate = true;
        ++i_;
      }
      if (i_ < s_.size() && IdentChar(s_[i_])) {
        s.condition = Hparam(Ident());
        if (s.condition < 0) SignatureError("a presence condition must name a hyper-parameter");
        s.presence = negate ? Presence::kIfZero : Presence::kIfNonzero;
      } else if (negate) {
        SignatureError("'?!' needs a hyper-parameter");
      }
    }
  }

  constexpr void ParseList(Signature& sig, SlotList& l, int list) {
    if (Peek('|') || (Space(), i_ == s_.size())) return;
    if (list == 1 && Peek('(')) {
      ++i_;
      for (;;) {
        ParseSlot(sig, l, list);
        if (Peek(')')) break;
        Expect(',');
      }
      Expect(')');
      Expect('*');
      sig.repeat = Hparam(Ident());
      if (sig.repeat < 0) SignatureError("a weight group repeats by a hyper-parameter");
      if (Peek(',')) SignatureError("a repeated group must be the only weights");
      return;
    }
    for (;;) {
      ParseSlot(sig, l, list);
      if (!Peek(',')) break;
      ++i_;
    }
  }

  std::string_view s_;
  size_t i_ = 0;
};

}  // namespace detail

constexpr Signature ParseSignature(std::string_view text) { return detail::Parser(text).Parse(); }

// ---- The table. ----

struct OpInfo {
  uint32_t type;
  std::string_view name;
  uint32_t flags;
  std::string_view text;
  Signature signature;
};

inline constexpr OpInfo kOps[] = {
#define CODA_OPS_HPP_ROW_(NAME, Name, number, flags, signature) \
  {number, #Name, flags, signature, ParseSignature(signature)},
    CODA_OP_TABLE(CODA_OPS_HPP_ROW_)
#undef CODA_OPS_HPP_ROW_
};

consteval bool NumberedInOrder() {
  for (uint32_t i = 0; i < std::size(kOps); ++i)
    if (kOps[i].type != i) return false;
  return true;
}
static_assert(NumberedInOrder(), "coda_ops.h: op numbers must be 0, 1, 2, ... in table order");
static_assert(std::size(kOps) == CODA_OP_COUNT);

// The op of a number, or nullptr.
constexpr const OpInfo* Find(uint32_t type) { return type < std::size(kOps) ? &kOps[type] : nullptr; }

// Number of weight slots of an op for these hyper-parameters.
inline uint64_t WeightCount(const OpInfo& op, const coda_hparams& hp) {
  const uint64_t group = static_cast<uint64_t>(op.signature.weights.size);
  return op.signature.repeat < 0 ? group : group * (hp.*kHparams[op.signature.repeat].field);
}

// ---- Checking tensors against a signature. ----

namespace detail {

struct Bindings {
  uint64_t value[kMaxSymbols] = {};
  bool bound[kMaxSymbols] = {};
};

inline std::string Num(uint64_t v) { return std::to_string(v); }
inline std::string DtypeText(uint32_t dtype) {
  const char* name = coda_dtype_name(dtype);
  return name ? name : "dtype " + Num(dtype);
}

// Value of a dimension; false on overflow.
inline bool Eval(const Expr& e, const Bindings& b, uint64_t* out) {
  uint64_t stack[kMaxTokens];
  int top = 0;
  for (int i = 0; i < e.size; ++i) {
    const Expr::Token& t = e.tokens[i];
    if (t.kind == Expr::kSymbol) {
      stack[top++] = b.value[t.value];
    } else if (t.kind == Expr::kNumber) {
      stack[top++] = t.value;
    } else {
      const uint64_t y = stack[--top], x = stack[--top];
      if (t.kind == Expr::kAdd) {
        if (x > std::numeric_limits<uint64_t>::max() - y) return false;
        stack[top++] = x + y;
      } else {
        if (y != 0 && x > std::numeric_limits<uint64_t>::max() / y) return false;
        stack[top++] = x * y;
      }
    }
  }
  *out = stack[0];
  return true;
}

inline std::string ShapeText(const uint64_t* shape, int ndim) {
  std::string s = "[";
  for (int d = 0; d < ndim; ++d) s += (d ? "," : "") + Num(shape[d]);
  return s + "]";
}

inline std::string SlotText(const Signature& sig, const Slot& s) {
  auto name = [&](uint32_t v) -> std::string {
    if (static_cast<int>(v) < kNumHparams) return std::string(kHparams[v].name);
    if (static_cast<int>(v) == kSymN) return "n";
    return std::string(sig.free_names[static_cast<int>(v) - kSymFree]);
  };
  std::string out = std::string(s.name) + "[";
  for (int d = 0; d < s.ndim; ++d) {
    std::string stack[kMaxTokens];
    int top = 0;
    for (int i = 0; i < s.dims[d].size; ++i) {
      const Expr::Token& t = s.dims[d].tokens[i];
      if (t.kind == Expr::kSymbol) stack[top++] = name(t.value);
      else if (t.kind == Expr::kNumber) stack[top++] = Num(t.value);
      else {
        const std::string y = stack[--top], x = stack[--top];
        stack[top++] = t.kind == Expr::kAdd ? "(" + x + "+" + y + ")" : x + "*" + y;
      }
    }
    out += (d ? "," : "") + stack[0];
  }
  return out + "]";
}

// Matches one tensor's shape against a slot, binding free names at their first appearance.
// `what()` names the tensor in an error; it is called only then (checks run on every execute()).
template <typename What>
inline std::string MatchShape(const Signature& sig, const Slot& s, const coda_tensor& t, Bindings& b, What what) {
  if (t.ndim != static_cast<uint32_t>(s.ndim))
    return what() + " has " + Num(t.ndim) + " dimensions, expected " + SlotText(sig, s);
  for (int d = 0; d < s.ndim; ++d) {
    const int alone = s.dims[d].Alone();
    if (alone >= 0 && !b.bound[alone]) {
      b.value[alone] = t.shape[d];
      b.bound[alone] = true;
      continue;
    }
    uint64_t want = 0;
    if (!Eval(s.dims[d], b, &want) || want != t.shape[d])
      return what() + " has shape " + ShapeText(t.shape, s.ndim) + ", expected " + SlotText(sig, s) +
             (Eval(s.dims[d], b, &want) ? " (dimension " + Num(d) + " = " + Num(want) + ")" : " (overflows)");
  }
  return "";
}

inline bool Present(const coda_tensor& t) { return t.data || t.buffer; }

template <typename What>
inline std::string CheckWeight(const Signature& sig, const Slot& s, const coda_tensor& t, Bindings& b, What what) {
  if (std::string e = MatchShape(sig, s, t, b, what); !e.empty()) return e;
  switch (t.dtype) {
    case CODA_DTYPE_F32: case CODA_DTYPE_BF16: case CODA_DTYPE_F16: return t.scale ? what() + " has a scale but is not FP8" : "";
    case CODA_DTYPE_FP8_E4M3: break;
    default: return what() + " is " + DtypeText(t.dtype) + ", not a floating-point weight type";
  }
  if (t.ndim != 2) return what() + " is FP8 but not 2-D";
  const coda_tensor* sc = t.scale;
  const uint64_t block = t.block ? t.block : 128;
  if (!sc || !Present(*sc) || sc->dtype != CODA_DTYPE_F32 || sc->ndim != 2 ||
      sc->shape[0] != t.shape[0] / block + (t.shape[0] % block != 0) ||
      sc->shape[1] != t.shape[1] / block + (t.shape[1] % block != 0))
    return what() + " is FP8 without F32 block scales of shape [ceil(rows/" + Num(block) + "), ceil(cols/" + Num(block) + ")]";
  return "";
}

}  // namespace detail

// The tensors of one op, as the check sees them.
struct OpTensors {
  uint32_t type = 0;
  uint64_t n = 0;  // n_tokens
  const coda_hparams* hparams = nullptr;
  const coda_tensor* inputs = nullptr;
  uint32_t n_inputs = 0;
  const coda_tensor* weights = nullptr;
  uint32_t n_weights = 0;
  coda_tensor* outputs = nullptr;  // shapes checked, or written by InferOutputs
  uint32_t n_outputs = 0;
};

// Checks counts, activation dtypes and shapes, weight presence, shapes and dtypes (FP8 with
// block scales) against the op's signature. With `infer`, outputs get their dtype and shape
// instead of being checked. Returns "" or what is wrong.
inline std::string Match(const OpTensors& op, bool infer) {
  const OpInfo* info = Find(op.type);
  if (!info) return "unknown op " + std::to_string(op.type);
  if (!op.hparams) return std::string(info->name) + ": no hyper-parameters";
  const Signature& sig = info->signature;
  const coda_hparams& hp = *op.hparams;
  const std::string_view name = info->name;
  const uint64_t n_weights = WeightCount(*info, hp);
  if (op.n_inputs != static_cast<uint32_t>(sig.inputs.size) || op.n_outputs != static_cast<uint32_t>(sig.outputs.size) ||
      op.n_weights != n_weights)
    return std::string(name) + " takes " + std::to_string(sig.inputs.size) + " inputs, " + std::to_string(n_weights) + " weights and " +
           std::to_string(sig.outputs.size) + " outputs, not " + std::to_string(op.n_inputs) + ", " +
           std::to_string(op.n_weights) + " and " + std::to_string(op.n_outputs);
  detail::Bindings b;
  for (int k = 0; k < kNumHparams; ++k) {
    b.value[k] = hp.*kHparams[k].field;
    b.bound[k] = true;
  }
  b.value[kSymN] = op.n;
  b.bound[kSymN] = true;
  for (int i = 0; i < sig.inputs.size; ++i) {
    const Slot& s = sig.inputs.slots[i];
    const coda_tensor& t = op.inputs[i];
    auto what = [&] { return std::string(name) + " input " + std::to_string(i) + " (" + std::string(s.name) + ")"; };
    if (t.dtype != s.dtype) return what() + " is " + detail::DtypeText(t.dtype) + ", expected " + detail::DtypeText(s.dtype);
    if (std::string e = detail::MatchShape(sig, s, t, b, what); !e.empty()) return e;
  }
  const int group = sig.weights.size;
  for (uint64_t w = 0; w < op.n_weights; ++w) {
    const Slot& s = sig.weights.slots[w % static_cast<uint64_t>(group)];
    const coda_tensor& t = op.weights[w];
    auto what = [&] { return std::string(name) + " weight " + std::to_string(w) + " (" + std::string(s.name) + ")"; };
    bool want = true;
    switch (s.presence) {
      case Presence::kRequired: want = true; break;
      case Presence::kOptional: want = detail::Present(t); break;
      case Presence::kIfNonzero: want = b.value[s.condition] != 0; break;
      case Presence::kIfZero: want = b.value[s.condition] == 0; break;
    }
    if (!want) {
      if (detail::Present(t)) return what() + " must be absent (" + std::string(kHparams[s.condition].name) + " is " +
                                     std::to_string(b.value[s.condition]) + ")";
      continue;
    }
    if (!detail::Present(t)) return what() + " is missing";
    if (std::string e = detail::CheckWeight(sig, s, t, b, what); !e.empty()) return e;
  }
  for (int i = 0; i < sig.outputs.size; ++i) {
    const Slot& s = sig.outputs.slots[i];
    coda_tensor& t = op.outputs[i];
    auto what = [&] { return std::string(name) + " output " + std::to_string(i) + " (" + std::string(s.name) + ")"; };
    if (infer) {
      t.dtype = s.dtype;
      t.ndim = static_cast<uint32_t>(s.ndim);
      for (int d = 0; d < s.ndim; ++d)
        if (!detail::Eval(s.dims[d], b, &t.shape[d])) return what() + ": dimension " + std::to_string(d) + " overflows";
      continue;
    }
    if (t.dtype != s.dtype) return what() + " is " + detail::DtypeText(t.dtype) + ", expected " + detail::DtypeText(s.dtype);
    if (std::string e = detail::MatchShape(sig, s, t, b, what); !e.empty()) return e;
  }
  return "";
}

// Match() on a coda_op as the host passes it.
inline std::string Check(const coda_op& op) {
  return Match({op.type, op.n_tokens, op.hparams, op.inputs, op.n_inputs, op.weights, op.n_weights, op.outputs,
                op.n_outputs},
               false);
}

}  // namespace coda::ops
