// Conversion of Hugging Face checkpoints (and random weights) into .coda files.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "coda/dtype.h"
#include "coda/model_config.h"
#include "coda/model_file.h"
#include "coda/status.h"

namespace coda::convert {

// Called as data is written: bytes done of total.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;
// Called for non-fatal remarks ("ignoring unexpected tensor ...").
using WarnFn = std::function<void(const std::string&)>;

struct Options {
  // Up-convert floating-point weights (FP8 is dequantized with its block scales; nothing is
  // ever down-converted). Unset: keep every tensor as stored.
  std::optional<DType> dtype;
  // Quantize the projection weights stored in BF16, F16 or F32 (attention, MLP and expert
  // matrices) to FP8 E4M3 with a scale per 128x128 block, DeepSeek-V3's own scheme: half the
  // bytes of BF16. Embedding, head, norms and router stay as stored. Weights already in FP8 are
  // kept bit for bit.
  bool fp8_weights = false;
  // The same for the language-model heads (lm_head, MTP's shared head): decode reads all of
  // lm_head for every token, 0.4 GB in BF16 for a 102k vocabulary of width 2048.
  bool fp8_head = false;
  bool keep_mtp = true;
  ProgressFn progress;
  WarnFn warn;
  const std::atomic<bool>* cancel = nullptr;  // set to stop early; the output is removed
};

// Converts the checkpoint in `hf_dir` (config.json, safetensors, tokenizer files if present).
Status ConvertCheckpoint(const std::string& hf_dir, const std::string& out_path, const Options& options);

struct RandomOptions {
  uint64_t seed = 1;
  std::string tokenizer_dir;  // optional: tokenizer.json and tokenizer_config.json to embed
  Options common;
};

// Writes a model of the architecture in `config_path` with random weights (FP8 with block scales
// when the config is quantized). Deterministic for a given seed.
Status ConvertRandom(const std::string& config_path, const std::string& out_path, const RandomOptions& options);

}  // namespace coda::convert
