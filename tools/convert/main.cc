// coda-convert: Hugging Face DeepSeek checkpoint (or a config, with random weights) -> .coda
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "coda/cli/command_line.h"
#include "coda/cli/human_readable.h"
#include "coda/cli/options.h"
#include "coda/cli/progress_bar.h"
#include "coda/cli/values.h"
#include "coda/model_file.h"
#include "convert.h"

namespace {

constexpr char kTool[] = "coda-convert";

constexpr char kAbout[] = R"(coda-convert: convert a Hugging Face DeepSeek checkpoint into a .coda model file.

Usage:
  coda-convert <hf-dir> -o <model.coda> [options]
  coda-convert --random <config.json> -o <model.coda> [--tokenizer DIR] [--seed N] [options]

<hf-dir> holds config.json and model.safetensors (or shards with model.safetensors.index.json),
and optionally tokenizer.json / tokenizer_config.json (stored with the chat template).
Architectures: DeepseekV3ForCausalLM (V3, R1, V3.1, Kimi-K2, Moonlight) and
DeepseekV2ForCausalLM (V2, V2-Lite). FP8 weights and their block scales are kept bit-exact;
--dtype fp8 quantizes a BF16 checkpoint's projection weights to FP8 the same way.)";

std::atomic<bool> g_cancel{false};  // set by SIGINT/SIGTERM; the conversion stops and cleans up

void OnSignal(int) { g_cancel.store(true); }

}  // namespace

static int Main(int argc, char** argv) {
  using namespace coda;
  std::string input, output, random_config, tokenizer_dir, dtype_name, head_dtype = "stored";
  uint64_t seed = 1;
  bool quiet = false, no_mtp = false;
  cli::CommandLine cl(kTool, kAbout);
  cl.Positional("hf-dir", &input);
  cl.Text("-o,--output", &output, "PATH", "output file (written atomically: it appears only when complete)");
  cli::AddChoice(cl, "--dtype", &dtype_name, {"fp8", "bf16", "f32"},
                 "fp8: quantize BF16 projection weights to FP8 with 128x128 block scales (half the bytes); "
                 "bf16, f32: up-convert floating-point weights (FP8 is dequantized), for debugging");
  cli::AddChoice(cl, "--head-dtype", &head_dtype, {"stored", "fp8"},
                 "fp8: quantize lm_head like --dtype fp8 (decode reads all of it per token)");
  cl.Flag("--no-mtp", &no_mtp, "leave out the multi-token-prediction layers");
  cl.Text("--random", &random_config, "CONFIG", "random weights for the architecture in CONFIG (config.json format)");
  cl.Text("--tokenizer", &tokenizer_dir, "DIR", "with --random: embed DIR/tokenizer.json and DIR/tokenizer_config.json");
  cli::AddSeed(cl, &seed);
  cl.Flag("-q,--quiet", &quiet, "no progress output");
  if (auto code = cl.ParseMain(argc, argv)) return *code;
  if (output.empty()) return cl.UsageError("no output file given (-o model.coda)");
  if (random_config.empty() == input.empty()) return cl.UsageError("give either a checkpoint directory or --random CONFIG");
  if (!tokenizer_dir.empty() && random_config.empty())
    return cl.UsageError("--tokenizer goes with --random (a checkpoint's own tokenizer is used)");

  convert::Options options;
  if (dtype_name == "fp8") options.fp8_weights = true;
  else if (!dtype_name.empty()) options.dtype = dtype_name == "f32" ? DType::kF32 : DType::kBF16;
  options.fp8_head = head_dtype == "fp8";
  options.keep_mtp = !no_mtp;
  cli::ProgressBar bar("converting", !quiet);
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
  if (!s.ok()) return cl.Fail(s);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!quiet) {
    auto f = ModelFile::Open(output);
    if (!f.ok()) return cl.Fail(f.status().WithContext("verifying the written file"));
    std::fprintf(stderr, "%s: wrote %s (%zu tensors, %s) in %.1f s\n", kTool, output.c_str(), f->tensors().size(),
                 cli::HumanBytes(f->file_size()).c_str(), secs);
  }
  return 0;
}

int main(int argc, char** argv) { return coda::cli::RunMain(kTool, argc, argv, Main); }
