#include "coda/cli/options.h"

#include <algorithm>

#include "coda/cli/values.h"
#include "coda/runtime.h"

namespace coda::cli {

namespace {

constexpr uint32_t kMaxTopK = 1'000'000;  // above any vocabulary, where it is off anyway

std::string KvDtypeName(DType d) { return d == DType::kF32 ? "f32" : "bf16"; }

}  // namespace

Option& AddModel(CommandLine& cl, std::string* path) { return cl.Text("-m,--model", path, "PATH", "the .coda model"); }

Option& AddBackends(CommandLine& cl, std::vector<std::string>* names) {
  return AddNameList(cl, "--backend", names, "LIST", "backends in order of preference, comma-separated");
}

Option& AddThreads(CommandLine& cl, uint32_t* n_threads) {
  return AddWholeNumber(cl, "--threads", n_threads, "N",
                        "CPU threads, 1 to " + std::to_string(kMaxThreads) + "; 0: one per core", 0, kMaxThreads);
}

Option& AddKvDtype(CommandLine& cl, DType* dtype) {
  return cl
      .Value("--kv-dtype", "bf16|f32", "latent KV-cache precision",
             [dtype](const std::string& text) -> Status {
               CODA_ASSIGN_OR_RETURN(std::string name, ParseChoice(text, {"bf16", "f32"}));
               *dtype = name == "f32" ? DType::kF32 : DType::kBF16;
               return Status::Ok();
             })
      .DefaultText(KvDtypeName(*dtype));
}

Option& AddContextLength(CommandLine& cl, uint32_t* n_ctx) {
  return AddWholeNumber(cl, "--n-ctx", n_ctx, "N", "context length, 1 to " + std::to_string(kMaxContext), 1, kMaxContext);
}

Option& AddPrecision(CommandLine& cl, bool* exact_products) {
  static const std::vector<std::string> kNames = {"fast", "exact"};
  return cl
      .Value("--precision", "MODE",
             "fast: prefill products on int8 activations per 1x128 tile; exact: F32",
             [exact_products](const std::string& text) -> Status {
               CODA_ASSIGN_OR_RETURN(std::string name, ParseChoice(text, kNames));
               *exact_products = name == "exact";
               return Status::Ok();
             })
      .DefaultText(kNames[*exact_products ? 1 : 0]);
}

Option& AddWeights(CommandLine& cl, ModelLoadOptions::Weights* weights) {
  static const std::vector<std::string> kNames = {"auto", "map", "copy"};  // in Weights' order
  return cl
      .Value("--weights", "MODE", "map the file, copy into 2 MB pages, or auto",
             [weights](const std::string& text) -> Status {
               CODA_ASSIGN_OR_RETURN(std::string name, ParseChoice(text, kNames));
               const auto at = std::find(kNames.begin(), kNames.end(), name) - kNames.begin();
               *weights = static_cast<ModelLoadOptions::Weights>(at);
               return Status::Ok();
             })
      .DefaultText(kNames[static_cast<size_t>(*weights)]);
}

Option& AddRamBudget(CommandLine& cl, ModelLoadOptions* load) {
  return cl
      .Value("--ram-budget", "SIZE",
             "memory for routed experts (K, M, G, T), or auto, off",
             [load](const std::string& text) -> Status {
               if (text == "auto" || text == "off") {
                 load->offload = text == "auto" ? ModelLoadOptions::Offload::kAuto : ModelLoadOptions::Offload::kOff;
                 load->expert_budget = 0;
                 return Status::Ok();
               }
               CODA_ASSIGN_OR_RETURN(load->expert_budget, ParseBytes(text));
               if (load->expert_budget == 0) return InvalidArgument("'" + text + "' is not a size above 0");
               load->offload = ModelLoadOptions::Offload::kOn;
               return Status::Ok();
             })
      .DefaultText("auto");
}

Option& AddDeviceMemory(CommandLine& cl, uint64_t* bytes) {
  return cl
      .Value("--device-memory", "SIZE",
             "device memory for the weights (K, M, G, T)",
             [bytes](const std::string& text) -> Status {
               CODA_ASSIGN_OR_RETURN(*bytes, ParseBytes(text));
               if (*bytes == 0) return InvalidArgument("'" + text + "' is not a size above 0");
               return Status::Ok();
             })
      .DefaultText("free memory");
}

Option& AddExpertEviction(CommandLine& cl, ModelLoadOptions* load) {
  return cl
      .Value("--expert-eviction", "frequency|lru", "which cached experts the expert store lets go first",
             [load](const std::string& text) -> Status {
               CODA_ASSIGN_OR_RETURN(std::string name, ParseChoice(text, {"frequency", "lru"}));
               load->eviction = name == "lru" ? EvictionPolicy::kLru : EvictionPolicy::kFrequency;
               return Status::Ok();
             })
      .DefaultText("frequency");
}

Option& AddSeed(CommandLine& cl, uint64_t* seed) {
  return AddWholeNumber(cl, "--seed", seed, "N", "seed of the random numbers", 0, UINT64_MAX);
}

Option& AddMaxTokens(CommandLine& cl, uint32_t* n) {
  return AddWholeNumber(cl, "--max-tokens", n, "N",
                        "longest answer, up to " + std::to_string(kMaxContext) + "; 0: until the context is full", 0,
                        kMaxContext);
}

void AddSampling(CommandLine& cl, SamplerOptions* o) {
  const Interval allowed{0, kMaxTemperature};
  const std::string temperatures = "0 (greedy) or a number in " + Interval{kMinTemperature, kMaxTemperature}.Text();
  float* t = &o->temperature;
  cl.Value("--temp", "T",
           "temperature: 0 is greedy, 0 < T < " + NumberText(kMinTemperature) + " refused, at most " +
               NumberText(kMaxTemperature),
           [t, allowed, temperatures](const std::string& text) -> Status {
             auto v = ParseNumber(text, allowed);
             if (!v.ok() || (*v != 0 && *v < kMinTemperature)) return InvalidArgument("'" + text + "' is not " + temperatures);
             *t = static_cast<float>(*v);
             return Status::Ok();
           })
      .DefaultText(NumberText(*t));
  AddNumber(cl, "--top-p", &o->top_p, "P", "nucleus sampling threshold in (0, 1]; 1 is off", {0, 1, true, false});
  AddWholeNumber(cl, "--top-k", &o->top_k, "K",
                 "sample among the K likeliest tokens, up to " + std::to_string(kMaxTopK) + "; 0 is off", 0, kMaxTopK);
  AddNumber(cl, "--min-p", &o->min_p, "P", "drop tokens below P x the likeliest's probability, in [0, 1)",
            {0, 1, false, true});
  AddNumber(cl, "--repeat-penalty", &o->repetition_penalty, "R",
            "penalize the last " + std::to_string(GenerateOptions{}.repetition_window) +
                " tokens, in (0, 100]; 1 is off",
            {0, 100, true, false});
}

}  // namespace coda::cli
