// coda-logits: float32 logits of a token sequence, for comparing against a reference.
#include <cstdio>
#include <string>

#include "coda/file.h"
#include "coda/tools/cli.h"
#include "coda/tools/model_session.h"

namespace {

constexpr char kTool[] = "coda-logits";
constexpr char kHelp[] = R"(coda-logits: write the logits of a token sequence as raw float32.

Usage:
  coda-logits -m model.coda --tokens 1,2,3 [--decode-from K] -o out.f32 [options]

Output: little-endian float32, row-major [n_tokens, vocab_size], no header. Without
--decode-from, all rows come from one prefill of every token; with it, rows < K come from one
prefill of the first K tokens and each later row from a decode step of one token.

Options:
  -m, --model PATH       the .coda model
  --tokens LIST          comma-separated token ids
  --decode-from K        prefill K tokens, then decode the rest one by one
  -o, --output PATH      output file (written atomically)
  --backend LIST         backends in order of preference (default: cpu)
  --kv-dtype f32|bf16    latent cache precision (default f32, as references are computed)
  --threads N            CPU threads (default: one per core)
  -h, --help             this help
)";

}  // namespace

int main(int argc, char** argv) {
  using namespace coda;
  tools::LoadOptions lo;
  lo.tool = kTool;
  lo.kv_dtype = DType::kF32;
  std::string tokens_text, output, decode_from_text;
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
    } else if (a == "-m" || a == "--model") {
      if (!value(&lo.model_path)) return tools::UsageError(kTool, a + " needs a value");
    } else if (a == "--tokens") {
      if (!value(&tokens_text)) return tools::UsageError(kTool, a + " needs a value");
    } else if (a == "--decode-from") {
      if (!value(&decode_from_text)) return tools::UsageError(kTool, a + " needs a value");
    } else if (a == "-o" || a == "--output") {
      if (!value(&output)) return tools::UsageError(kTool, a + " needs a value");
    } else if (a == "--backend") {
      if (!value(&v)) return tools::UsageError(kTool, a + " needs a value");
      lo.backends = tools::SplitList(v);
    } else if (a == "--kv-dtype") {
      if (!value(&v)) return tools::UsageError(kTool, a + " needs a value");
      auto d = tools::ParseKvDtype(v);
      if (!d.ok()) return tools::UsageError(kTool, d.status().message());
      lo.kv_dtype = *d;
    } else if (a == "--threads") {
      if (!value(&v)) return tools::UsageError(kTool, a + " needs a value");
      lo.n_threads = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 10));
    } else {
      return tools::UsageError(kTool, "unknown argument '" + a + "'");
    }
  }
  if (lo.model_path.empty()) return tools::UsageError(kTool, "no model given (-m model.coda)");
  if (tokens_text.empty()) return tools::UsageError(kTool, "no tokens given (--tokens 1,2,3)");
  if (output.empty()) return tools::UsageError(kTool, "no output file given (-o out.f32)");
  auto tokens = tools::ParseIdList(tokens_text);
  if (!tokens.ok()) return tools::UsageError(kTool, "--tokens: " + tokens.status().message());
  size_t decode_from = tokens->size();
  if (!decode_from_text.empty()) {
    auto d = tools::ParseIdList(decode_from_text);
    if (!d.ok() || d->size() != 1 || (*d)[0] < 1 || static_cast<size_t>((*d)[0]) > tokens->size())
      return tools::UsageError(kTool, "--decode-from must be between 1 and the number of tokens");
    decode_from = static_cast<size_t>((*d)[0]);
  }
  lo.n_ctx = static_cast<uint32_t>(std::max<size_t>(tokens->size(), 1));

  auto loaded = tools::LoadModelSession(lo);
  if (!loaded.ok()) return tools::Fail(kTool, loaded.status());
  Session& s = *loaded->session;
  auto out = AtomicFileWriter::Create(output);
  if (!out.ok()) return tools::Fail(kTool, out.status());
  auto write = [&](std::span<const float> rows) {
    return (*out)->Write({reinterpret_cast<const uint8_t*>(rows.data()), rows.size() * sizeof(float)});
  };
  auto first = s.Forward(std::span(*tokens).first(decode_from), /*all_logits=*/true);
  if (!first.ok()) return tools::Fail(kTool, first.status());
  if (Status st = write(*first); !st.ok()) return tools::Fail(kTool, st);
  for (size_t p = decode_from; p < tokens->size(); ++p) {
    auto step = s.Forward(std::span(*tokens).subspan(p, 1));
    if (!step.ok()) return tools::Fail(kTool, step.status());
    if (Status st = write(*step); !st.ok()) return tools::Fail(kTool, st);
  }
  if (Status st = (*out)->Commit(); !st.ok()) return tools::Fail(kTool, st);
  return 0;
}
