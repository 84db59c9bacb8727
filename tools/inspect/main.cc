// coda-inspect: what a model is — from a .coda file, a Hugging Face directory, or a config.json.
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "coda/file.h"
#include "coda/model_config.h"
#include "coda/model_file.h"
#include "coda/safetensors.h"
#include "coda/tools/cli.h"
#include "convert.h"

namespace {

constexpr char kTool[] = "coda-inspect";

constexpr char kHelp[] = R"(coda-inspect: describe a DeepSeek-family model.

Usage:
  coda-inspect <model.coda | hf-dir | config.json> [--json] [--tensors]

Prints the architecture, layer counts, parameters (total, and active per token: top-k routed
experts, input embedding excluded; MTP layers counted apart), bytes on disk by dtype, the MLA
latent KV-cache bytes per token (BF16), and whether a tokenizer and chat template are present.

Options:
  --json       one JSON object on stdout
  --tensors    also list every tensor (name, dtype, shape, bytes)
  -h, --help   this help
)";

struct Report {
  std::string kind;  // "coda", "hf", "config"
  std::string path;
  coda::ModelConfig config;
  std::map<std::string, uint64_t> bytes_by_dtype;
  uint64_t file_bytes = 0;
  bool has_tokenizer = false;
  bool has_chat_template = false;
  uint32_t schema_version = 0;
  std::string producer, source;
  struct Tensor {
    std::string name, dtype;
    std::vector<uint64_t> shape;
    uint64_t bytes;
  };
  std::vector<Tensor> tensors;
};

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

coda::Result<Report> Inspect(const std::string& path) {
  using namespace coda;
  Report r;
  r.path = path;
  if (IsDirectory(path)) {
    r.kind = "hf";
    CODA_ASSIGN_OR_RETURN(r.config, LoadHfConfig(path + "/config.json"));
    CODA_ASSIGN_OR_RETURN(safetensors::Checkpoint ckpt, safetensors::Checkpoint::Open(path));
    for (const auto& f : ckpt.files()) r.file_bytes += f->mapping().size();
    for (const std::string& name : ckpt.tensor_names()) {
      const auto ref = ckpt.Find(name);
      r.bytes_by_dtype[std::string(DTypeName(ref.info->dtype))] += ref.info->size();
      r.tensors.push_back({name, std::string(DTypeName(ref.info->dtype)), ref.info->shape, ref.info->size()});
    }
    ModelExtras extras;
    CODA_RETURN_IF_ERROR(convert::LoadTextAssets(path, &extras));
    r.has_tokenizer = !extras.tokenizer_json.empty();
    r.has_chat_template = !extras.chat_template.empty();
    return r;
  }
  if (EndsWith(path, ".json")) {
    r.kind = "config";
    CODA_ASSIGN_OR_RETURN(r.config, LoadHfConfig(path));
    return r;
  }
  r.kind = "coda";
  CODA_ASSIGN_OR_RETURN(ModelFile f, ModelFile::Open(path));
  r.config = f.config();
  r.file_bytes = f.file_size();
  for (const TensorRef& t : f.tensors()) {
    r.bytes_by_dtype[std::string(DTypeName(t.dtype))] += t.size;
    r.tensors.push_back({t.name, std::string(DTypeName(t.dtype)), t.shape, t.size});
  }
  r.has_tokenizer = !f.tokenizer_json().empty();
  r.has_chat_template = !f.chat_template().empty();
  r.schema_version = f.schema_version();
  r.producer = f.producer();
  r.source = f.source();
  return r;
}

std::string ShapeString(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void PrintJson(const Report& r, bool tensors) {
  const coda::ModelConfig& c = r.config;
  const coda::ModelStats st = coda::ComputeStats(c);
  nlohmann::ordered_json j;
  j["path"] = r.path;
  j["kind"] = r.kind;
  j["arch"] = c.architecture;
  j["model_type"] = c.model_type;
  j["params_total"] = st.params_total;
  j["params_active"] = st.params_active;
  j["params_mtp"] = st.params_mtp;
  j["kv_bytes_per_token"] = st.kv_bytes_per_token_bf16;
  j["n_layers"] = c.n_layers;
  j["n_dense_layers"] = c.n_dense_layers;
  j["n_moe_layers"] = c.n_layers - c.n_dense_layers;
  j["n_mtp_layers"] = c.n_mtp_layers;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["n_heads"] = c.n_heads;
  j["q_lora_rank"] = c.q_lora_rank;
  j["kv_lora_rank"] = c.kv_lora_rank;
  j["qk_nope_head_dim"] = c.qk_nope_head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["v_head_dim"] = c.v_head_dim;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["n_experts_per_tok"] = c.n_experts_per_tok;
  j["n_group"] = c.n_group;
  j["topk_group"] = c.topk_group;
  j["topk_method"] = coda::TopkMethodName(c.topk_method);
  j["scoring_func"] = coda::ScoringFuncName(c.scoring_func);
  j["fp8"] = c.fp8;
  j["yarn"] = c.rope.yarn;
  if (r.kind != "config") {
    j["file_bytes"] = r.file_bytes;
    j["bytes_by_dtype"] = r.bytes_by_dtype;
    j["has_tokenizer"] = r.has_tokenizer;
    j["has_chat_template"] = r.has_chat_template;
    j["n_tensors"] = r.tensors.size();
  }
  if (r.kind == "coda") {
    j["schema_version"] = r.schema_version;
    j["producer"] = r.producer;
    j["source"] = r.source;
  }
  if (tensors) {
    auto& a = j["tensors"] = nlohmann::json::array();
    for (const auto& t : r.tensors) a.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}, {"bytes", t.bytes}});
  }
  std::printf("%s\n", j.dump(2).c_str());
}

void PrintText(const Report& r, bool tensors) {
  using coda::tools::HumanBytes;
  using coda::tools::HumanCount;
  using coda::tools::WithCommas;
  const coda::ModelConfig& c = r.config;
  const coda::ModelStats st = coda::ComputeStats(c);
  std::printf("%s  (%s)\n", r.path.c_str(),
              r.kind == "coda" ? ".coda model file" : r.kind == "hf" ? "Hugging Face checkpoint" : "config.json");
  std::printf("  architecture   %s (%s)\n", c.architecture.c_str(), c.model_type.c_str());
  std::printf("  layers         %u (%u dense, %u MoE)", c.n_layers, c.n_dense_layers, c.n_layers - c.n_dense_layers);
  if (c.n_mtp_layers) std::printf(" + %u MTP", c.n_mtp_layers);
  std::printf("\n  hidden         %u, vocabulary %u\n", c.hidden_size, c.vocab_size);
  std::printf("  attention      MLA, %u heads, ", c.n_heads);
  if (c.q_lora_rank) std::printf("q LoRA %u, ", c.q_lora_rank);
  else std::printf("plain q, ");
  std::printf("kv LoRA %u, nope %u + rope %u, v %u%s\n", c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim,
              c.v_head_dim, c.rope.yarn ? ", YaRN" : "");
  if (c.n_layers > c.n_dense_layers) {
    std::printf("  experts        %u routed, %u per token, %u shared; %s router, %s", c.n_routed_experts,
                c.n_experts_per_tok, c.n_shared_experts, std::string(coda::ScoringFuncName(c.scoring_func)).c_str(),
                std::string(coda::TopkMethodName(c.topk_method)).c_str());
    if (c.n_group > 1) std::printf(" (%u groups, best %u)", c.n_group, c.topk_group);
    std::printf("\n");
  }
  std::printf("  parameters     %s total, %s active per token", HumanCount(st.params_total).c_str(),
              HumanCount(st.params_active).c_str());
  if (st.params_mtp) std::printf(" (MTP: %s more)", HumanCount(st.params_mtp).c_str());
  std::printf("\n  KV cache       %s bytes per token (BF16 latent: %u x (%u + %u) x 2)\n",
              WithCommas(st.kv_bytes_per_token_bf16).c_str(), c.n_layers, c.kv_lora_rank, c.qk_rope_head_dim);
  if (r.kind != "config") {
    std::printf("  on disk        %s:", HumanBytes(r.file_bytes).c_str());
    for (const auto& [d, b] : r.bytes_by_dtype) std::printf(" %s %s;", d.c_str(), HumanBytes(b).c_str());
    std::printf("\n  tokenizer      %s, chat template %s\n", r.has_tokenizer ? "yes" : "no",
                r.has_chat_template ? "yes" : "no");
  }
  if (r.kind == "coda")
    std::printf("  file           schema v%u, %zu tensors, by %s from %s\n", r.schema_version, r.tensors.size(),
                r.producer.c_str(), r.source.c_str());
  if (tensors)
    for (const auto& t : r.tensors)
      std::printf("  %-64s %-9s %-18s %s\n", t.name.c_str(), t.dtype.c_str(), ShapeString(t.shape).c_str(),
                  HumanBytes(t.bytes).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  bool json = false, tensors = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kHelp, stdout);
      return 0;
    } else if (a == "--json") {
      json = true;
    } else if (a == "--tensors") {
      tensors = true;
    } else if (!a.empty() && a[0] == '-') {
      return coda::tools::UsageError(kTool, "unknown option '" + a + "'");
    } else if (path.empty()) {
      path = a;
    } else {
      return coda::tools::UsageError(kTool, "unexpected argument '" + a + "'");
    }
  }
  if (path.empty()) return coda::tools::UsageError(kTool, "no model given");
  auto r = Inspect(path);
  if (!r.ok()) return coda::tools::Fail(kTool, r.status());
  if (json) PrintJson(*r, tensors);
  else PrintText(*r, tensors);
  return 0;
}
