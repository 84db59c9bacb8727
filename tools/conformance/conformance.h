// The backend conformance suite: every op, every weight dtype, odd shapes (partial FP8 blocks),
// single tokens and batches at positions > 0, both KV-cache dtypes; each case run on the backend
// under test and on a reference backend through the ABI, and the outputs compared within
// per-dtype tolerances. Also checks the optional ABI functions a backend provides.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "coda/backend.h"
#include "coda/status.h"

namespace coda::conformance {

struct Options {
  uint64_t seed = 1;
  std::vector<std::string> ops;  // op names to run (e.g. "Linear"); empty: all
  bool buffers = true;           // also run each case with activations in the backend's buffers
  // Checks the cases the reference does not support (the CPU backend has no FP8 embedding
  // tables, say); null: such cases are an error.
  const Backend* fallback = nullptr;
  // Called before each case runs (a backend that crashes the process is then easy to place).
  std::function<void(const std::string& op, const std::string& dtype, const std::string& name)> on_case;
};

enum class Outcome { kPass, kFail, kUnsupported };
std::string_view OutcomeName(Outcome o);

struct CaseResult {
  std::string op;     // "Linear", or an ABI area: "devices", "buffers", ...
  std::string dtype;  // weight dtype column: "F32", "BF16", "FP8", or "-" (no weights / ABI)
  std::string name;   // the case: shapes, tokens, positions, KV dtype
  Outcome outcome = Outcome::kPass;
  double error = 0;      // max |got - want| / max |want| over the outputs
  double tolerance = 0;  // what was allowed
  std::string detail;    // why it failed
  std::string against;   // the backend that computed the expected outputs
};

struct Report {
  std::string backend, reference;
  std::vector<CaseResult> cases;

  size_t Count(Outcome o) const;
  // One row per op (then the ABI areas), one column per weight dtype: pass / fail / unsupported.
  std::string Table() const;
  // One line per failed case.
  std::string Failures() const;
  std::string Json() const;
};

// Tolerances: max |got - want| / max |want| per output tensor.
double Tolerance(uint32_t weight_dtype, uint32_t kv_dtype);

// The op names the suite knows, in graph order of first use.
const std::vector<std::string>& OpNames();

// Runs every case on `backend` and compares it with `reference` (or options.fallback where the
// reference does not support a case). An error only when the reference itself fails.
Result<Report> Run(const Backend& backend, const Backend& reference, const Options& options);

}  // namespace coda::conformance
