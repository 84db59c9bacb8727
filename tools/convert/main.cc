// coda-convert: Hugging Face DeepSeek checkpoint (or a config, with random weights) -> .coda
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "coda/model_file.h"
#include "coda/tools/cli.h"
#include "convert.h"

namespace {

constexpr char kTool[] = "coda-convert";

constexpr char kHelp[] = R"(coda-convert: convert a Hugging Face DeepSeek checkpoint into a .coda model file.

Usage:
  coda-convert <hf-dir> -o <model.coda> [options]
  coda-convert --random <config.json> -o <model.coda> [--tokenizer DIR] [--seed N] [options]

<hf-dir> holds config.json and model.safetensors (or shards with model.safetensors.index.json),
and optionally tokenizer.json / tokenizer_config.json (stored with the chat template).
Architectures: DeepseekV3ForCausalLM (V3, R1, V3.1, Kimi-K2, Moonlight) and
DeepseekV2ForCausalLM (V2, V2-Lite). FP8 weights and their block scales are kept bit-exact.

Options:
  -o, --output PATH    output file (written atomically: it appears only when complete)
  --dtype bf16|f32     up-convert floating-point weights (FP8 is dequantized); for debugging
  --no-mtp             leave out the multi-token-prediction layers
  --random CONFIG      random weights for the architecture in CONFIG (config.json format)
  --tokenizer DIR      with --random: embed DIR/tokenizer.json and DIR/tokenizer_config.json
  --seed N             with --random: seed (default 1)
  -q, --quiet          no progress output
  -h, --help           this help
)";

std::atomic<bool> g_cancel{false};  // set by SIGINT/SIGTERM; the conversion stops and cleans up

void OnSignal(int) { g_cancel.store(true); }

}  // namespace

int main(int argc, char** argv) {
  using namespace coda;
  std::string input, output, random_config, tokenizer_dir, dtype_name;
  uint64_t seed = 1;
  bool quiet = false, no_mtp = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kHelp, stdout);
      return 0;
    } else if (a == "-o" || a == "--output") {
      if (!value(&output)) return tools::UsageError(kTool, "option " + a + " needs a value");
    } else if (a == "--dtype") {
      if (!value(&dtype_name)) return tools::UsageError(kTool, "option --dtype needs a value");
    } else if (a == "--random") {
      if (!value(&random_config)) return tools::UsageError(kTool, "option --random needs a config.json");
    } else if (a == "--tokenizer") {
      if (!value(&tokenizer_dir)) return tools::UsageError(kTool, "option --tokenizer needs a directory");
    } else if (a == "--seed") {
      std::string s;
      if (!value(&s)) return tools::UsageError(kTool, "option --seed needs a value");
      char* end = nullptr;
      errno = 0;
      seed = std::strtoull(s.c_str(), &end, 10);
      if (s.empty() || *end || errno) return tools::UsageError(kTool, "invalid --seed '" + s + "'");
    } else if (a == "-q" || a == "--quiet") {
      quiet = true;
    } else if (a == "--no-mtp") {
      no_mtp = true;
    } else if (!a.empty() && a[0] == '-') {
      return tools::UsageError(kTool, "unknown option '" + a + "'");
    } else if (input.empty()) {
      input = a;
    } else {
      return tools::UsageError(kTool, "unexpected argument '" + a + "'");
    }
  }
  if (output.empty()) return tools::UsageError(kTool, "no output file given (-o model.coda)");
  if (random_config.empty() == input.empty())
    return tools::UsageError(kTool, "give either a checkpoint directory or --random CONFIG");
  if (!tokenizer_dir.empty() && random_config.empty())
    return tools::UsageError(kTool, "--tokenizer goes with --random (a checkpoint's own tokenizer is used)");

  convert::Options options;
  if (dtype_name == "bf16") options.dtype = DType::kBF16;
  else if (dtype_name == "f32") options.dtype = DType::kF32;
  else if (!dtype_name.empty()) return tools::UsageError(kTool, "--dtype must be bf16 or f32, not '" + dtype_name + "'");
  options.keep_mtp = !no_mtp;
  tools::ProgressBar bar("converting", !quiet);
  options.progress = [&](uint64_t done, uint64_t total) { bar.Update(done, total); };
  options.warn = [&](const std::string& m) {
    if (!quiet) std::fprintf(stderr, "%s: warning: %s\n", kTool, m.c_str());
  };
  options.cancel = &g_cancel;
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  const auto t0 = std::chrono::steady_clock::now();
  Status s;
  if (!random_config.empty()) {
    convert::RandomOptions ro;
    ro.seed = seed;
    ro.tokenizer_dir = tokenizer_dir;
    ro.common = options;
    s = convert::ConvertRandom(random_config, output, ro);
  } else {
    s = convert::ConvertCheckpoint(input, output, options);
  }
  bar.Finish();
  if (g_cancel.load()) {
    std::fprintf(stderr, "%s: interrupted; no output written\n", kTool);
    return 130;
  }
  if (!s.ok()) return tools::Fail(kTool, s);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!quiet) {
    auto f = ModelFile::Open(output);
    if (!f.ok()) return tools::Fail(kTool, f.status().WithContext("verifying the written file"));
    std::fprintf(stderr, "%s: wrote %s (%zu tensors, %s) in %.1f s\n", kTool, output.c_str(), f->tensors().size(),
                 tools::HumanBytes(f->file_size()).c_str(), secs);
  }
  return 0;
}
