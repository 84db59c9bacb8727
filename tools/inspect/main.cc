// coda-inspect: what a model is — from a .coda file, a Hugging Face directory, or a config.json.
#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "coda/cli/command_line.h"
#include "coda/cli/human_readable.h"
#include "coda/cli/model_session.h"
#include "coda/cli/options.h"
#include "coda/file.h"
#include "coda/hf_config.h"
#include "coda/hf_text_files.h"
#include "coda/model_file.h"
#include "coda/runtime.h"
#include "coda/safetensors.h"
#include "coda_cpu_backend.h"

namespace {

constexpr char kTool[] = "coda-inspect";

constexpr char kAbout[] = R"(coda-inspect: describe a DeepSeek-family model.

Usage:
  coda-inspect <model.coda | hf-dir | config.json> [--json] [--tensors]
  coda-inspect --backends [--json]
  coda-inspect --plan -m model.coda [--backend LIST] [--kv-dtype bf16|f32] [--json]

Prints the architecture, layer counts, parameters (total, and active per token: top-k routed
experts, input embedding excluded; MTP layers counted apart), bytes on disk by dtype, the MLA
latent KV-cache bytes per token (BF16), and whether a tokenizer and chat template are present.

--backends lists every backend found: the CPU backend linked into the tools, and plugins
(libcoda-backend-<name>.so) next to the executable and in each directory of CODA_BACKEND_PATH
(colon-separated), with versions, devices and paths; then the files skipped or refused, and why.

--plan shows where each node of the model's graph would run with the backends of --backend
(in order of preference; nodes none of them supports fall back to cpu), and why; --kv-dtype is
the latent cache precision it assumes.)";

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
    CODA_ASSIGN_OR_RETURN(HfTextFiles text, ReadHfTextFiles(path));
    r.has_tokenizer = !text.tokenizer_json.empty();
    r.has_chat_template = !text.chat_template.empty();
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
  std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

void PrintText(const Report& r, bool tensors) {
  using coda::cli::HumanBytes;
  using coda::cli::HumanCount;
  using coda::cli::WithCommas;
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

std::string MemoryText(uint64_t total, uint64_t free) {
  using coda::cli::HumanBytes;
  if (!total && !free) return "memory unknown";
  std::string s = total ? HumanBytes(total) + " total" : "total unknown";
  if (free) s += ", " + HumanBytes(free) + " free";
  return s;
}

std::string Capabilities(const coda::Backend& b) {
  std::string s;
  auto add = [&](bool has, const char* what) {
    if (has) s += (s.empty() ? "" : ", ") + std::string(what);
  };
  add(b.has_devices(), "devices");
  add(b.has_prepare(), "prepare");
  add(b.has_synchronize(), "synchronize");
  add(b.has_buffers(), "buffers");
  add(b.has_events(), "events");
  add(b.has_steps(), "steps");
  return s.empty() ? "none" : s;
}

int ListBackends(bool json) {
  using namespace coda;
  const ContextOptions co = cli::ProgramContextOptions({coda_cpu_backend_entry});
  auto ctx = Context::Create(co);
  if (!ctx.ok()) return cli::Fail(kTool, ctx.status());
  nlohmann::ordered_json j;
  j["search_path"] = co.plugin_dirs;
  j["abi_version"] = CODA_BACKEND_ABI_VERSION;
  auto& list = j["backends"] = nlohmann::json::array();
  if (!json) {
    std::printf("Backend ABI version %u; plugins searched in:", CODA_BACKEND_ABI_VERSION);
    for (const std::string& d : co.plugin_dirs) std::printf(" %s", d.c_str());
    std::printf("\n\nBackends:\n");
  }
  for (const auto& b : (*ctx)->backends()) {
    const std::string where = b->path().empty() ? "linked in" : b->path();
    auto devices = b->Devices();
    nlohmann::ordered_json e = {{"name", b->name()},       {"version", b->version()},
                                {"abi_version", b->abi_version()}, {"path", b->path()},
                                {"describe", b->describe()}, {"optional", Capabilities(*b)}};
    auto& dj = e["devices"] = nlohmann::json::array();
    if (devices.ok())
      for (const DeviceInfo& d : *devices)
        dj.push_back({{"name", d.name}, {"kind", DeviceKindName(d.kind)}, {"total_memory", d.total_memory},
                      {"free_memory", d.free_memory}});
    list.push_back(e);
    if (json) continue;
    std::printf("  %-10s %-8s ABI %u  %s\n", std::string(b->name()).c_str(), std::string(b->version()).c_str(),
                b->abi_version(), where.c_str());
    std::printf("             %s\n             optional functions: %s\n", b->describe().c_str(), Capabilities(*b).c_str());
    if (!devices.ok()) {
      std::printf("             devices: %s\n", devices.status().message().c_str());
      continue;
    }
    for (size_t i = 0; i < devices->size(); ++i) {
      const DeviceInfo& d = (*devices)[i];
      std::printf("             device %zu: %s (%s, %s)\n", i, d.name.c_str(), std::string(DeviceKindName(d.kind)).c_str(),
                  MemoryText(d.total_memory, d.free_memory).c_str());
    }
  }
  // Built apart: adding a key to an ordered_json moves its other members.
  nlohmann::ordered_json skipped = nlohmann::json::array(), unavailable = nlohmann::json::array(),
                         refused = nlohmann::json::array();
  for (const BackendNote& n : (*ctx)->notes())
    (n.kind == BackendNote::Kind::kSkipped       ? skipped
     : n.kind == BackendNote::Kind::kUnavailable ? unavailable
                                                 : refused)
        .push_back({{"path", n.path}, {"reason", n.message}});
  j["skipped"] = std::move(skipped);
  j["unavailable"] = std::move(unavailable);
  j["refused"] = std::move(refused);
  if (json) {
    std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  for (auto kind : {BackendNote::Kind::kSkipped, BackendNote::Kind::kUnavailable, BackendNote::Kind::kRefused}) {
    bool header = false;
    for (const BackendNote& n : (*ctx)->notes()) {
      if (n.kind != kind) continue;
      if (!header)
        std::printf("\n%s:\n", kind == BackendNote::Kind::kSkipped       ? "Skipped"
                               : kind == BackendNote::Kind::kUnavailable ? "Unavailable here (no device)"
                                                                         : "Refused");
      header = true;
      std::printf("  %s\n", n.Line().c_str());
    }
  }
  return 0;
}

int ShowPlan(const std::string& path, const coda::SessionOptions& so, const coda::ModelLoadOptions& load, bool json) {
  using namespace coda;
  auto ctx = Context::Create(cli::ProgramContextOptions({coda_cpu_backend_entry}));
  if (!ctx.ok()) return cli::Fail(kTool, ctx.status());
  cli::WarnAboutRefusedBackends(kTool, **ctx);
  auto model = Model::Load(path, load);
  if (!model.ok()) return cli::Fail(kTool, model.status());
  const std::vector<std::string>& backends = so.backends;
  auto plan = PlaceGraph(**ctx, **model, so);
  if (!plan.ok()) return cli::Fail(kTool, plan.status());
  const GraphRef& g = (*model)->file().graph();
  std::map<std::string, std::map<std::string, int>> counts;  // backend -> op -> nodes
  nlohmann::ordered_json j;
  j["model"] = path;
  j["backends"] = backends;
  auto& nodes = j["nodes"] = nlohmann::json::array();
  int width = 4;  // the node column fits the longest name
  for (const GraphNode& n : g.nodes) width = std::max(width, static_cast<int>(n.name.size()));
  if (!json) std::printf("%-*s  %-13s %-10s %s\n", width, "node", "op", "backend", "why");
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const std::string op(OpTypeName(g.nodes[i].op)), backend((*plan)[i].backend->name());
    counts[backend][op]++;
    nodes.push_back({{"name", g.nodes[i].name}, {"op", op}, {"backend", backend}, {"reason", (*plan)[i].reason}});
    if (!json)
      std::printf("%-*s  %-13s %-10s %s\n", width, g.nodes[i].name.c_str(), op.c_str(), backend.c_str(),
                  (*plan)[i].reason.c_str());
  }
  auto& summary = j["summary"] = nlohmann::json::object();
  for (const auto& [backend, ops] : counts) summary[backend] = ops;
  // Offloading: what the cache holds, and what a token then reads from the file when routing is
  // uniform (real routers favour some experts: the measured figures, coda-bench's, are better).
  std::string offload_line;
  if (const ExpertStore* store = (*model)->expert_store()) {
    uint64_t experts = 0, routed_layers = 0;
    for (const ExpertBlockRef& b : (*model)->file().expert_blocks())
      if (store->Serves(b.layer)) {
        experts += b.n_experts;
        ++routed_layers;
      }
    const double held = std::min(1.0, static_cast<double>(store->capacity()) / static_cast<double>(experts));
    const double per_token = (1.0 - held) * static_cast<double>((*model)->config().n_experts_per_tok) *
                             static_cast<double>(routed_layers) * static_cast<double>(store->slot_bytes());
    j["offload"] = {{"slots", store->capacity()}, {"experts", experts}, {"slot_bytes", store->slot_bytes()},
                    {"expected_bytes_read_per_token", per_token}};
    offload_line = "experts: offloaded, " + std::to_string(store->capacity()) + " of " + std::to_string(experts) +
                   " cached (" + cli::HumanBytes(uint64_t{store->capacity()} * store->slot_bytes()) + "); about " +
                   cli::HumanBytes(static_cast<uint64_t>(per_token)) +
                   " read from the file per token if routing were uniform\n";
  }
  // The device tier: what each device backend holds and, under uniform routing, the bytes of
  // experts a token finds missing there (each uploaded or run on the CPU).
  auto tiers = PlanDeviceExperts(**model, *plan, so);
  if (!tiers.ok()) return cli::Fail(kTool, tiers.status());
  auto& devices = j["device_offload"] = nlohmann::json::array();
  for (const DeviceExpertPlan& d : *tiers) {
    if (!d.offload) {
      devices.push_back({{"backend", d.backend->name()}, {"budget", d.budget}, {"weights_bytes", d.other_bytes},
                         {"kv_bytes", d.kv_bytes}, {"slots", d.capacity}, {"experts", d.experts},
                         {"slot_bytes", d.slot_bytes}, {"offload", false}});
      offload_line += "experts on " + std::string(d.backend->name()) + ": all " + std::to_string(d.experts) +
                      " in device memory (weights " + cli::HumanBytes(d.other_bytes) + ", KV cache " +
                      cli::HumanBytes(d.kv_bytes) + ", experts " + cli::HumanBytes(uint64_t{d.experts} * d.slot_bytes) +
                      (d.budget ? " of " + cli::HumanBytes(d.budget) : std::string()) + ")\n";
      continue;
    }
    uint64_t routed_layers = 0;
    for (size_t i = 0; i < g.nodes.size(); ++i)
      if ((*plan)[i].backend == d.backend && g.nodes[i].op == CODA_OP_MOE_EXPERTS) ++routed_layers;
    const double held = static_cast<double>(d.capacity) / static_cast<double>(d.experts);
    const double per_token = (1.0 - held) * static_cast<double>((*model)->config().n_experts_per_tok) *
                             static_cast<double>(routed_layers) * static_cast<double>(d.slot_bytes);
    devices.push_back({{"backend", d.backend->name()}, {"budget", d.budget}, {"weights_bytes", d.other_bytes},
                       {"kv_bytes", d.kv_bytes}, {"slots", d.capacity}, {"experts", d.experts},
                       {"slot_bytes", d.slot_bytes}, {"offload", true}, {"expected_bytes_missed_per_token", per_token}});
    offload_line += "experts on " + std::string(d.backend->name()) + ": " + std::to_string(d.capacity) + " of " +
                    std::to_string(d.experts) + " in device memory (" +
                    cli::HumanBytes(uint64_t{d.capacity} * d.slot_bytes) + " of " + cli::HumanBytes(d.budget) +
                    ", after weights " + cli::HumanBytes(d.other_bytes) + " and KV cache " + cli::HumanBytes(d.kv_bytes) +
                    "); about " + cli::HumanBytes(static_cast<uint64_t>(per_token)) +
                    " of experts per token uploaded or run on the cpu if routing were uniform\n";
  }
  if (json) {
    std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  std::printf("\n");
  for (const auto& [backend, ops] : counts) {
    int total = 0;
    std::string detail;
    for (const auto& [op, n] : ops) {
      total += n;
      detail += (detail.empty() ? "" : ", ") + op + " " + std::to_string(n);
    }
    std::printf("%s: %d nodes (%s)\n", backend.c_str(), total, detail.c_str());
  }
  std::printf("%s", offload_line.c_str());
  return 0;
}

}  // namespace

static int Main(int argc, char** argv) {
  using namespace coda;
  std::string model, path;
  bool json = false, tensors = false, backends = false, plan = false;
  std::vector<std::string> preference = {"cpu"};
  DType kv_dtype = DType::kBF16;
  cli::CommandLine cl(kTool, kAbout);
  cl.Positional("model", &path);
  cli::AddModel(cl, &model);
  cl.Flag("--json", &json, "one JSON object on stdout");
  cl.Flag("--tensors", &tensors, "also list every tensor (name, dtype, shape, bytes)");
  cl.Flag("--backends", &backends, "list the backends found");
  cl.Flag("--plan", &plan, "show where each node would run");
  cli::AddBackends(cl, &preference);
  cli::AddKvDtype(cl, &kv_dtype);
  ModelLoadOptions load;
  cli::AddRamBudget(cl, &load);
  uint32_t n_ctx = SessionOptions{}.n_ctx;
  uint64_t device_memory = 0;
  cli::AddDeviceMemory(cl, &device_memory);
  cli::AddContextLength(cl, &n_ctx);
  if (auto code = cl.ParseMain(argc, argv)) return *code;
  if (!model.empty() && !path.empty()) return cl.UsageError("more than one model given");
  if (path.empty()) path = model;
  if (backends && plan) return cl.UsageError("--backends and --plan are separate reports");
  if (backends) {
    if (!path.empty()) return cl.UsageError("--backends takes no model");
    return ListBackends(json);
  }
  if (path.empty()) return cl.UsageError(plan ? "--plan needs a model (-m model.coda)" : "no model given");
  if (plan) {
    SessionOptions so;
    so.backends = preference;
    so.kv_dtype = kv_dtype;
    so.n_ctx = n_ctx;
    so.device_memory = device_memory;
    return ShowPlan(path, so, load, json);
  }
  auto r = Inspect(path);
  if (!r.ok()) return cl.Fail(r.status());
  if (json) PrintJson(*r, tensors);
  else PrintText(*r, tensors);
  return 0;
}

int main(int argc, char** argv) { return coda::cli::RunMain(kTool, argc, argv, Main); }
