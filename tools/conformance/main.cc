// coda-conformance: runs the backend conformance suite on one backend library.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "coda/runtime.h"
#include "coda/tools/cli.h"
#include "coda/tools/model_session.h"
#include "coda_cpu_backend.h"
#include "conformance.h"
#include "reference.h"

namespace {

constexpr char kTool[] = "coda-conformance";
constexpr char kHelp[] = R"(coda-conformance: check a backend against the CPU backend, op by op.

Usage:
  coda-conformance path/to/libcoda-backend-NAME.so [options]
  coda-conformance cpu|reference [options]        (the backends linked into this tool)

Runs every op (Embed, RmsNorm, Linear, MlaAttention, MoeGate, MoeExperts, Mlp, Add, Head) with
every weight dtype (F32, BF16, FP8 with 128x128 block scales), odd shapes with partial FP8
blocks, one and several tokens at positions > 0, and BF16 and F32 latent caches, on the backend
and on the reference, and compares the outputs (max |got - want| / max |want|; F32 weights 1e-4,
BF16/FP8 weights 1e-2, BF16 cache 2e-2). Cases run again with activations in the backend's own
buffers when it has them. Then checks the optional ABI functions it provides (devices, buffers,
events, prepare, synchronize) and that it refuses an unknown op with a message.

Prints a table per op and weight dtype: pass, FAIL, or unsupported (supports_op() returned 0),
then one line per failed case. Exit status: 0 when nothing failed, 1 otherwise.

Options:
  --against NAME|PATH  the reference: cpu (default), reference (scalar loops in double), or
                       another backend library; cases it does not support are checked
                       against the scalar reference
  --op LIST            only these ops (comma-separated), and no ABI checks
  --seed N             seed of the random inputs (default 1)
  --no-buffers         run cases with host memory only
  --json               the report as JSON on stdout
  -v, --verbose        name each case on stderr before running it
  -h, --help           this help
)";

// A backend by linked-in name or library path, in its own context (so that a plugin named
// "cpu" and the linked-in cpu can be compared with each other).
coda::Result<std::unique_ptr<coda::Context>> Open(const std::string& what) {
  coda::ContextOptions o;
  if (what == "cpu") o.backends = {coda_cpu_backend_entry};
  else if (what == "reference") o.backends = {coda::conformance::ReferenceBackendEntry};
  else o.plugin_files = {what};
  return coda::Context::Create(o);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace coda;
  std::string target, against = "cpu";
  conformance::Options options;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string v;
    if (a == "-h" || a == "--help") {
      std::fputs(kHelp, stdout);
      return 0;
    } else if (a == "--against") {
      if (!value(&against)) return tools::UsageError(kTool, a + " needs a value");
    } else if (a == "--op") {
      if (!value(&v)) return tools::UsageError(kTool, a + " needs a value");
      options.ops = tools::SplitList(v);
    } else if (a == "--seed") {
      if (!value(&v)) return tools::UsageError(kTool, a + " needs a value");
      char* end = nullptr;
      options.seed = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || *end) return tools::UsageError(kTool, "--seed needs a number");
    } else if (a == "--no-buffers") {
      options.buffers = false;
    } else if (a == "--json") {
      json = true;
    } else if (a == "-v" || a == "--verbose") {
      options.on_case = [](const std::string& op, const std::string& dtype, const std::string& name) {
        std::fprintf(stderr, "%s: running %s [%s] %s\n", kTool, op.c_str(), dtype.c_str(), name.c_str());
      };
    } else if (!a.empty() && a[0] == '-') {
      return tools::UsageError(kTool, "unknown option '" + a + "'");
    } else if (target.empty()) {
      target = a;
    } else {
      return tools::UsageError(kTool, "unexpected argument '" + a + "'");
    }
  }
  if (target.empty()) return tools::UsageError(kTool, "no backend given (a libcoda-backend-NAME.so file, cpu or reference)");
  auto tested = Open(target);
  if (!tested.ok()) return tools::Fail(kTool, tested.status());
  auto reference = Open(against);
  if (!reference.ok()) return tools::Fail(kTool, reference.status().WithContext("--against"));
  auto scalar = Open("reference");
  if (!scalar.ok()) return tools::Fail(kTool, scalar.status());
  const Backend& b = *(*tested)->backends().front();
  const Backend& r = *(*reference)->backends().front();
  options.fallback = (*scalar)->backends().front().get();
  auto report = conformance::Run(b, r, options);
  if (!report.ok()) return tools::Fail(kTool, report.status());
  if (json) {
    std::printf("%s\n", report->Json().c_str());
  } else {
    std::printf("backend    %s %s: %s\nreference  %s%s\n\n", std::string(b.name()).c_str(), std::string(b.version()).c_str(),
                b.describe().c_str(), report->reference.c_str(),
                r.name() == "reference" ? "" : " (the scalar reference where it declines a case)");
    std::printf("%s", report->Table().c_str());
    std::printf("\n%zu passed, %zu failed, %zu unsupported\n", report->Count(conformance::Outcome::kPass),
                report->Count(conformance::Outcome::kFail), report->Count(conformance::Outcome::kUnsupported));
    const std::string f = report->Failures();
    if (!f.empty()) std::printf("\n%s", f.c_str());
  }
  return report->Count(conformance::Outcome::kFail) ? 1 : 0;
}
