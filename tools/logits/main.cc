// coda-logits: float32 logits of a token sequence, for comparing against a reference.
#include <cstdio>
#include <string>
#include <vector>

#include "coda/cli/command_line.h"
#include "coda/cli/model_session.h"
#include "coda/cli/options.h"
#include "coda/cli/values.h"
#include "coda/file.h"
#include "coda_cpu_backend.h"

namespace {

constexpr char kTool[] = "coda-logits";
constexpr char kAbout[] = R"(coda-logits: write the logits of a token sequence as raw float32.

Usage:
  coda-logits -m model.coda --tokens 1,2,3 [--decode-from K] -o out.f32 [options]

Output: little-endian float32, row-major [n_tokens, vocab_size], no header. Without
--decode-from, all rows come from one prefill of every token; with it, rows < K come from one
prefill of the first K tokens and each later row from a decode step of one token. The latent
cache is F32 by default, as references are computed.)";

}  // namespace

static int Main(int argc, char** argv) {
  using namespace coda;
  cli::ModelSessionOptions mo;
  mo.program = kTool;
  mo.linked_backends = {coda_cpu_backend_entry};
  mo.kv_dtype = DType::kF32;
  std::vector<int32_t> tokens;
  uint32_t decode_from = 0;
  std::string output;
  cli::CommandLine cl(kTool, kAbout);
  cli::AddModel(cl, &mo.model_path);
  cli::AddWholeNumberList(cl, "--tokens", &tokens, "LIST", "comma-separated token ids", INT32_MAX);
  cli::AddWholeNumber(cl, "--decode-from", &decode_from, "K", "prefill K tokens, then decode the rest one by one", 1,
                      INT32_MAX)
      .DefaultText("every token in one prefill");
  cl.Text("-o,--output", &output, "PATH", "output file (written atomically)");
  cli::AddBackends(cl, &mo.backends);
  cli::AddKvDtype(cl, &mo.kv_dtype);
  cli::AddThreads(cl, &mo.n_threads);
  mo.exact_products = true;  // a tool for comparing with a reference: exact unless asked
  cli::AddPrecision(cl, &mo.exact_products);
  cli::AddRamBudget(cl, &mo.load);
  cli::AddDeviceMemory(cl, &mo.device_memory);
  if (auto code = cl.ParseMain(argc, argv)) return *code;
  if (mo.model_path.empty()) return cl.UsageError("no model given (-m model.coda)");
  if (tokens.empty()) return cl.UsageError("no tokens given (--tokens 1,2,3)");
  if (output.empty()) return cl.UsageError("no output file given (-o out.f32)");
  if (!cl.Given("--decode-from")) decode_from = static_cast<uint32_t>(tokens.size());
  if (decode_from > tokens.size()) return cl.UsageError("--decode-from must be between 1 and the number of tokens");
  mo.n_ctx = static_cast<uint32_t>(tokens.size());

  auto loaded = cli::OpenModelSession(mo);
  if (!loaded.ok()) return cl.Fail(loaded.status());
  Session& s = *loaded->session;
  auto out = AtomicFileWriter::Create(output);
  if (!out.ok()) return cl.Fail(out.status());
  auto write = [&](std::span<const float> rows) {
    return (*out)->Write({reinterpret_cast<const uint8_t*>(rows.data()), rows.size() * sizeof(float)});
  };
  auto first = s.Forward(std::span(tokens).first(decode_from), /*all_logits=*/true);
  if (!first.ok()) return cl.Fail(first.status());
  if (Status st = write(*first); !st.ok()) return cl.Fail(st);
  for (size_t p = decode_from; p < tokens.size(); ++p) {
    auto step = s.Forward(std::span(tokens).subspan(p, 1));
    if (!step.ok()) return cl.Fail(step.status());
    if (Status st = write(*step); !st.ok()) return cl.Fail(st);
  }
  if (Status st = (*out)->Commit(); !st.ok()) return cl.Fail(st);
  return 0;
}

int main(int argc, char** argv) { return coda::cli::RunMain(kTool, argc, argv, Main); }
