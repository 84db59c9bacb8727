// The options Coda's programs share, each defined once: names, help text, range and error
// message, with the value the program set before declaring it shown as the default. A program
// adds one with one call: AddThreads(cl, &options.n_threads).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coda/cli/command_line.h"
#include "coda/dtype.h"
#include "coda/runtime.h"
#include "coda/sampler.h"

namespace coda::cli {

inline constexpr uint32_t kMaxThreads = 1024;      // more is a typo, not a machine
inline constexpr uint32_t kMaxContext = 1u << 20;  // positions; DeepSeek-V3 has 163,840
// A positive temperature below this is refused: it is greedy in effect, and 1/T overflows.
inline constexpr double kMinTemperature = 0.01;
inline constexpr double kMaxTemperature = 100;

// -m, --model PATH
Option& AddModel(CommandLine& cl, std::string* path);
// --backend LIST: backend names in order of preference.
Option& AddBackends(CommandLine& cl, std::vector<std::string>* names);
// --threads N: 1 to kMaxThreads, or 0 for one per core.
Option& AddThreads(CommandLine& cl, uint32_t* n_threads);
// --precision fast|exact: ContextOptions::exact_products.
Option& AddPrecision(CommandLine& cl, bool* exact_products);
// --kv-dtype bf16|f32
Option& AddKvDtype(CommandLine& cl, DType* dtype);
// --n-ctx N: 1 to kMaxContext.
Option& AddContextLength(CommandLine& cl, uint32_t* n_ctx);
// --weights auto|map|copy: how the weights are held (ModelLoadOptions::Weights; auto copies
// when the page cache holds the file in 4 KB pages).
Option& AddWeights(CommandLine& cl, ModelLoadOptions::Weights* weights);
// --ram-budget SIZE|auto|off: memory for routed experts (offloading).
Option& AddRamBudget(CommandLine& cl, ModelLoadOptions* load);
// --device-memory SIZE: what a device backend may hold (offloading experts beyond it).
Option& AddDeviceMemory(CommandLine& cl, uint64_t* bytes);
// --expert-eviction frequency|lru: what the expert cache lets go first (for measurements).
Option& AddExpertEviction(CommandLine& cl, ModelLoadOptions* load);
// --seed N
Option& AddSeed(CommandLine& cl, uint64_t* seed);
// --max-tokens N: up to kMaxContext; 0 runs until the context is full.
Option& AddMaxTokens(CommandLine& cl, uint32_t* n);
// --temp, --top-p, --top-k, --min-p, --repeat-penalty: every SamplerOptions field but the seed,
// whose default differs by program (AddSeed).
void AddSampling(CommandLine& cl, SamplerOptions* options);

}  // namespace coda::cli
