// coda-conformance: runs the backend conformance suite on one backend library.
#include <cstdio>
#include <string>

#include "coda/cli/command_line.h"
#include "coda/cli/options.h"
#include "coda/cli/values.h"
#include "coda/runtime.h"
#include "coda_cpu_backend.h"
#include "conformance.h"
#include "reference.h"

namespace {

constexpr char kTool[] = "coda-conformance";
constexpr char kAbout[] = R"(coda-conformance: check a backend against the CPU backend, op by op.

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
then one line per failed case. Exit status: 0 when nothing failed, 1 otherwise.)";

// A backend by linked-in name or library path, in its own context (so that a plugin named
// "cpu" and the linked-in cpu can be compared with each other).
coda::Result<std::unique_ptr<coda::Context>> Open(const std::string& what) {
  coda::ContextOptions o;
  // The bounds are for exact products; the CPU's int8 products have their own unit test.
  o.exact_products = true;
  if (what == "cpu") o.backends = {coda_cpu_backend_entry};
  else if (what == "reference") o.backends = {coda::conformance::ReferenceBackendEntry};
  else o.plugin_files = {what};
  return coda::Context::Create(o);
}

}  // namespace

static int Main(int argc, char** argv) {
  using namespace coda;
  std::string target, against = "cpu";
  conformance::Options options;
  bool json = false, verbose = false, no_buffers = false;
  cli::CommandLine cl(kTool, kAbout);
  cl.Positional("backend", &target);
  cl.Text("--against", &against, "NAME|PATH",
          "the reference: cpu, reference (scalar loops in double), or another backend library; cases it does not "
          "support are checked against the scalar reference");
  cli::AddNameList(cl, "--op", &options.ops, "LIST", "only these ops (comma-separated), and no ABI checks");
  cli::AddSeed(cl, &options.seed);
  cl.Flag("--no-buffers", &no_buffers, "run cases with host memory only");
  cl.Flag("--json", &json, "the report as JSON on stdout");
  cl.Flag("-v,--verbose", &verbose, "name each case on stderr before running it");
  if (auto code = cl.ParseMain(argc, argv)) return *code;
  if (target.empty()) return cl.UsageError("no backend given (a libcoda-backend-NAME.so file, cpu or reference)");
  options.buffers = !no_buffers;
  if (verbose)
    options.on_case = [](const std::string& op, const std::string& dtype, const std::string& name) {
      std::fprintf(stderr, "%s: running %s [%s] %s\n", kTool, op.c_str(), dtype.c_str(), name.c_str());
    };
  auto tested = Open(target);
  if (!tested.ok()) return cl.Fail(tested.status());
  auto reference = Open(against);
  if (!reference.ok()) return cl.Fail(reference.status().WithContext("--against"));
  auto scalar = Open("reference");
  if (!scalar.ok()) return cl.Fail(scalar.status());
  const Backend& b = *(*tested)->backends().front();
  const Backend& r = *(*reference)->backends().front();
  options.fallback = (*scalar)->backends().front().get();
  auto report = conformance::Run(b, r, options);
  if (!report.ok()) return cl.Fail(report.status());
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

int main(int argc, char** argv) { return coda::cli::RunMain(kTool, argc, argv, Main); }
