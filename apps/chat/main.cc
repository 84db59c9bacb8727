// coda-chat: an interactive chat with a .coda model in the terminal, or one answer with -p.
#include <unistd.h>

#include <cstdio>
#include <optional>
#include <random>
#include <string>

#include "coda/cli/command_line.h"
#include "coda/cli/human_readable.h"
#include "coda/cli/model_session.h"
#include "coda/cli/options.h"
#include "coda/runtime.h"
#include "coda/text/text_assets.h"
#include "coda_cpu_backend.h"
#include "terminal.h"
#include "turn.h"

namespace {

constexpr char kTool[] = "coda-chat";
constexpr char kAbout[] = R"(coda-chat: chat with a .coda model (it needs a tokenizer and a chat template).
Usage: coda-chat -m model.coda [options]         interactive; type /help inside
       coda-chat -m model.coda -p "prompt"       print one answer on stdout and exit)";

constexpr char kNotes[] = R"(Ctrl-C stops an answer, twice (or Ctrl-D at the prompt) quits; reasoning is shown dimmed.)";

constexpr char kCommands[] = R"(Commands:
  /reset          forget the conversation (the system prompt stays)
  /system [TEXT]  show or set the system prompt (/system "" removes it)
  /stats          speed of the last turn and KV-cache use
  /save FILE      write the conversation as JSON messages
  /load FILE      read a conversation saved with /save (or any JSON messages array)
  /help           this list
  /quit           leave (also Ctrl-D, or Ctrl-C twice)
A line starting with // is sent as text starting with /.
)";

using namespace coda;
using chat::Part;
using chat::Piece;
using chat::Style;
using chat::TurnEnd;
using chat::TurnStats;

struct Args {
  Args() {
    // DeepSeek's recommended temperature and top-p for its chat models. The top-k cut leaves the
    // distribution nearly as is but spares sorting the whole vocabulary for every token (with
    // top-k off the sampler does, which costs the small demo model three quarters of its speed).
    sampling.temperature = 0.6f;
    sampling.top_p = 0.95f;
    sampling.top_k = 40;
  }
  std::string model, prompt, system;
  bool have_prompt = false;
  SamplerOptions sampling;
  bool have_seed = false;
  uint32_t n_ctx = 0;  // 0: default
  uint32_t max_tokens = 2048;
  uint32_t threads = 0;
  ModelLoadOptions load;
  uint64_t device_memory = 0;
  std::vector<std::string> backends = {"cpu"};
};

// Parses argv into *a; returns an exit code when the program should stop (help, usage error).
std::optional<int> ParseArgs(int argc, char** argv, Args* a) {
  cli::CommandLine cl(kTool, kAbout, kNotes);
  cli::AddModel(cl, &a->model);
  cl.Text("-p,--prompt", &a->prompt, "TEXT", "answer TEXT once (exit status 1 on errors)");
  cl.Text("--system", &a->system, "TEXT", "system prompt");
  cli::AddSampling(cl, &a->sampling);
  cli::AddSeed(cl, &a->sampling.seed).DefaultText("random");
  cli::AddContextLength(cl, &a->n_ctx).DefaultText("4096 or the model's maximum");
  cli::AddMaxTokens(cl, &a->max_tokens);
  cli::AddBackends(cl, &a->backends);
  cli::AddThreads(cl, &a->threads);
  cli::AddWeights(cl, &a->load.weights);
  cli::AddRamBudget(cl, &a->load);
  cli::AddDeviceMemory(cl, &a->device_memory);
  if (auto code = cl.ParseMain(argc, argv)) return code;
  a->have_prompt = cl.Given("--prompt");
  a->have_seed = cl.Given("--seed");
  if (a->model.empty()) return cl.UsageError("no model given (-m model.coda)");
  return std::nullopt;
}

// Everything a chat needs, loaded and checked up front.
struct Loaded {
  std::unique_ptr<Context> context;
  std::shared_ptr<Model> model;
  std::optional<text::TextAssets> assets;
  std::unique_ptr<Session> session;
};

Result<Loaded> Load(const Args& a) {
  Loaded l;
  ModelLoadOptions load = a.load;
  load.progress = cli::LoadProgressOnStderr(kTool);
  CODA_ASSIGN_OR_RETURN(l.model, Model::Load(a.model, load));
  // Refuse a model the chat cannot talk to before spending memory on a KV cache.
  CODA_ASSIGN_OR_RETURN(text::TextAssets assets, text::LoadTextAssets(l.model->file()));
  if (!assets.chat_template)
    return NotFound(a.model + " has no chat template, which coda-chat needs to build prompts (convert it from a " +
                    "checkpoint whose tokenizer_config.json has chat_template)");
  l.assets = std::move(assets);
  // The linked CPU backend plus plugins found next to the binary and on CODA_BACKEND_PATH.
  CODA_ASSIGN_OR_RETURN(l.context, Context::Create(cli::ProgramContextOptions({coda_cpu_backend_entry}, a.threads)));
  cli::WarnAboutRefusedBackends(kTool, *l.context);
  SessionOptions so;
  const uint32_t max_pos = l.model->config().max_position_embeddings;
  so.n_ctx = a.n_ctx ? a.n_ctx : (max_pos ? std::min<uint32_t>(4096, max_pos) : 4096);
  so.backends = a.backends;
  so.device_memory = a.device_memory;
  CODA_ASSIGN_OR_RETURN(l.session, Session::Create(*l.context, l.model, so));
  return l;
}

// Streams an answer: reasoning dimmed and set apart on a terminal (on stderr when stdout is not
// one, so that scripts get the answer alone), then the answer.
class AnswerPrinter {
 public:
  explicit AnswerPrinter(Style style) : style_(style), tty_(::isatty(STDOUT_FILENO) != 0) {}

  void operator()(const Piece& p) {
    if (p.part == Part::kReasoning) {
      if (tty_) {
        if (!in_reasoning_) std::fputs(style_.dim(), stdout);
        std::fwrite(p.text.data(), 1, p.text.size(), stdout);
        std::fflush(stdout);
      } else {
        std::fwrite(p.text.data(), 1, p.text.size(), stderr);
      }
      in_reasoning_ = true;
      wrote_reasoning_ = true;
      return;
    }
    if (in_reasoning_) {
      if (tty_) std::fprintf(stdout, "%s\n\n", style_.reset());
      else std::fputc('\n', stderr);
      in_reasoning_ = false;
    }
    std::fwrite(p.text.data(), 1, p.text.size(), stdout);
    std::fflush(stdout);
    wrote_answer_ = true;
  }

  // Closes the answer's line (and the reasoning's style); false when nothing was printed.
  bool End() {
    const bool wrote = wrote_answer_ || wrote_reasoning_;
    if (in_reasoning_) {
      if (tty_) std::fputs(style_.reset(), stdout);
      else std::fputc('\n', stderr);
    }
    if (wrote_answer_ || (tty_ && wrote_reasoning_)) std::fputc('\n', stdout);
    std::fflush(stdout);
    in_reasoning_ = wrote_reasoning_ = wrote_answer_ = false;
    return wrote;
  }

 private:
  Style style_;
  bool tty_;
  bool in_reasoning_ = false, wrote_reasoning_ = false, wrote_answer_ = false;
};

std::string Rate(uint32_t tokens, double seconds) {
  if (seconds <= 0 || tokens == 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f tok/s", tokens / seconds);
  return buf;
}

void PrintStats(const chat::Chat& c, const TurnStats* last) {
  if (!last) {
    std::printf("last turn: none yet\n");
  } else {
    const TurnStats& s = *last;
    std::printf("prefill: %u tokens in %.2f s, %s (prompt %u tokens, %u reused from the KV cache)\n",
                s.prefilled_tokens, s.prefill_seconds, Rate(s.prefilled_tokens, s.prefill_seconds).c_str(),
                s.prompt_tokens, s.reused_tokens);
    std::printf("decode:  %u tokens in %.2f s, %s\n", s.generated_tokens, s.decode_seconds,
                Rate(s.generated_tokens, s.decode_seconds).c_str());
  }
  const Session& s = c.session();
  const LatentKvCache& kv = s.kv_cache();
  std::printf("KV cache: %u / %u positions (%.1f%%), %s of %s (%s, %s per position)\n", s.n_past(), s.n_ctx(),
              100.0 * s.n_past() / s.n_ctx(), cli::HumanBytes(kv.bytes_per_token() * s.n_past()).c_str(),
              cli::HumanBytes(kv.bytes_total()).c_str(), std::string(DTypeName(kv.dtype())).c_str(),
              cli::HumanBytes(kv.bytes_per_token()).c_str());
  std::printf("weights: %s\n", s.model().weights_held().c_str());
  if (const ExpertStore* store = s.model().expert_store()) {
    const OffloadStats o = s.offload_stats();
    const ExpertStoreStats& st = o.store;
    std::printf("experts: %u cached (%s), %.1f%% hits, %s read from the model file (%s of it on demand), "
                "%.2f s waiting for reads, next-layer prediction %.0f%% right\n",
                store->capacity(), cli::HumanBytes(uint64_t{store->capacity()} * store->slot_bytes()).c_str(),
                st.requests ? 100.0 * st.hits / st.requests : 100.0, cli::HumanBytes(st.bytes_read).c_str(),
                cli::HumanBytes(st.bytes_demand).c_str(), st.stall_seconds,
                o.predicted_total ? 100.0 * o.predicted_hits / o.predicted_total : 0.0);
  }
  if (const OffloadStats::Device d = s.offload_stats().device; !d.backend.empty())
    std::printf("device experts: %u of %u in %s memory (%s), %.1f%% hits, %s uploaded (%s missed), "
                "%llu experts run on the cpu\n",
                d.capacity, d.total, d.backend.c_str(), cli::HumanBytes(uint64_t{d.capacity} * d.slot_bytes).c_str(),
                d.requests ? 100.0 * d.hits / d.requests : 100.0, cli::HumanBytes(d.bytes_uploaded).c_str(),
                cli::HumanBytes(d.bytes_missed).c_str(), static_cast<unsigned long long>(d.cpu_experts));
}

// The note after an answer that did not end by itself; empty when it did.
std::string EndNote(TurnEnd end, uint32_t max_tokens) {
  switch (end) {
    case TurnEnd::kEos: return "";
    case TurnEnd::kCancelled: return "[stopped]";
    case TurnEnd::kMaxTokens: return "[stopped at --max-tokens " + std::to_string(max_tokens) + "]";
    case TurnEnd::kContextFull: return "[context full: /reset to start over, or raise --n-ctx]";
  }
  return "";
}

void PrintError(const Style& err, const Status& s) {
  std::fflush(stdout);
  std::fprintf(stderr, "%serror: %s%s\n", err.red(), s.message().c_str(), err.reset());
}

// "/cmd rest" -> ("/cmd", "rest").
std::pair<std::string, std::string> SplitCommand(const std::string& line) {
  const size_t sp = line.find(' ');
  if (sp == std::string::npos) return {line, ""};
  const size_t rest = line.find_first_not_of(' ', sp);
  return {line.substr(0, sp), rest == std::string::npos ? "" : line.substr(rest)};
}

int RunOnce(chat::Chat& c, const Args& a, const chat::TurnOptions& opts) {
  AnswerPrinter printer(Style::For(stdout));
  auto r = c.Respond(a.prompt, opts, [&](const Piece& p) { printer(p); });
  printer.End();
  if (!r.ok()) return cli::Fail(kTool, r.status());
  const std::string note = EndNote(r->stats.end, a.max_tokens);
  if (!note.empty()) std::fprintf(stderr, "%s: %s\n", kTool, note.c_str());
  return r->stats.end == TurnEnd::kCancelled ? 130 : 0;
}

int RunInteractive(chat::Chat& c, const Args& a, const chat::TurnOptions& opts) {
  const Style out = Style::For(stdout), err = Style::For(stderr);
  const bool tty = ::isatty(STDIN_FILENO) != 0;
  auto reader = chat::LineReader::Create(kTool, "> ", chat::DefaultHistoryPath());
  // A plain value and a flag: GCC misreads std::optional<TurnStats> as maybe-uninitialized.
  TurnStats last;
  bool have_last = false;
  bool interrupted_at_prompt = false;
  for (;;) {
    std::string line;
    const auto got = reader->Read(&line);
    if (got == chat::LineReader::Got::kEof) {
      if (tty) std::printf("\n");
      return 0;
    }
    if (got == chat::LineReader::Got::kDropped) {
      std::printf("\n");
      interrupted_at_prompt = false;
      continue;
    }
    if (got == chat::LineReader::Got::kInterrupted) {
      if (interrupted_at_prompt) {
        std::printf("\n");
        return 0;
      }
      interrupted_at_prompt = true;
      std::printf("\n%s(Ctrl-C again or Ctrl-D to quit)%s\n", out.dim(), out.reset());
      continue;
    }
    interrupted_at_prompt = false;
    const size_t b = line.find_first_not_of(" \t");
    if (b == std::string::npos) continue;
    line.erase(0, b);
    reader->AddHistory(line);

    if (line[0] == '/' && !line.starts_with("//")) {
      const auto [cmd, arg] = SplitCommand(line);
      if (cmd == "/quit" || cmd == "/exit") {
        return 0;
      } else if (cmd == "/help") {
        std::fputs(kCommands, stdout);
      } else if (cmd == "/reset") {
        c.Reset();
        have_last = false;
        std::printf("conversation cleared\n");
      } else if (cmd == "/system") {
        if (arg.empty()) {
          std::printf("%s\n", c.conversation().system().empty() ? "(no system prompt)" : c.conversation().system().c_str());
        } else {
          c.conversation().set_system(arg == "\"\"" ? "" : arg);
          std::printf("%s\n", arg == "\"\"" ? "system prompt removed" : "system prompt set");
        }
      } else if (cmd == "/stats") {
        PrintStats(c, have_last ? &last : nullptr);
      } else if (cmd == "/save" || cmd == "/load") {
        if (arg.empty()) {
          PrintError(err, InvalidArgument(cmd + " needs a file name"));
          continue;
        }
        if (cmd == "/save") {
          if (Status s = c.conversation().SaveFile(arg); !s.ok()) PrintError(err, s);
          else std::printf("saved %zu messages to %s\n", c.conversation().Messages().size(), arg.c_str());
        } else {
          if (Status s = c.conversation().LoadFile(arg); !s.ok()) PrintError(err, s);
          else std::printf("loaded %zu messages from %s\n", c.conversation().Messages().size(), arg.c_str());
        }
      } else {
        PrintError(err, InvalidArgument("unknown command '" + cmd + "' (/help lists them)"));
      }
      std::fflush(stdout);
      continue;
    }
    if (line.starts_with("//")) line.erase(0, 1);

    chat::InterruptFlag().store(false);
    AnswerPrinter printer(out);
    auto r = c.Respond(line, opts, [&](const Piece& p) { printer(p); });
    const bool wrote = printer.End();
    chat::InterruptFlag().store(false);  // a Ctrl-C that stopped this answer is spent
    if (!r.ok()) {
      PrintError(err, r.status());
      continue;
    }
    last = r->stats;
    have_last = true;
    const std::string note = EndNote(r->stats.end, a.max_tokens);
    // After a bare "^C" echoed by the terminal the note needs a line of its own.
    if (!note.empty()) std::printf("%s%s%s%s\n", wrote || !tty ? "" : "\n", out.dim(), note.c_str(), out.reset());
    std::fflush(stdout);
  }
}

}  // namespace

static int Main(int argc, char** argv) {
  Args a;
  if (auto code = ParseArgs(argc, argv, &a)) return *code;
  if (!a.have_seed) a.sampling.seed = std::random_device{}();
  auto sampler = Sampler::Create(a.sampling);
  if (!sampler.ok()) return cli::UsageError(kTool, sampler.status().message());
  chat::SetUtf8Locale();

  std::fprintf(stderr, "loading %s... ", a.model.c_str());
  std::fflush(stderr);
  auto loaded = Load(a);
  if (!loaded.ok()) {
    std::fprintf(stderr, "failed\n");
    return cli::Fail(kTool, loaded.status());
  }
  const ModelFile& file = loaded->model->file();
  std::fprintf(stderr, "done (%zu tensors, %s)\n", file.tensors().size(), cli::HumanBytes(file.file_size()).c_str());
  if (!loaded->assets->eos_id)
    std::fprintf(stderr, "%s: warning: the tokenizer names no EOS token; answers end only at --max-tokens\n", kTool);

  chat::Chat c(*loaded->assets, *loaded->session, *sampler);
  c.conversation().set_system(a.system);
  chat::TurnOptions opts;
  opts.max_tokens = a.max_tokens;
  opts.cancel = &chat::InterruptFlag();
  // Only now: a Ctrl-C while loading should simply end the program.
  chat::InstallInterruptHandler();

  if (a.have_prompt) return RunOnce(c, a, opts);
  const Style dim = Style::For(stderr);
  const LatentKvCache& kv = loaded->session->kv_cache();
  std::fprintf(stderr, "%scontext %u tokens (KV cache %s). /help lists commands; Ctrl-D quits.%s\n", dim.dim(),
               loaded->session->n_ctx(), cli::HumanBytes(kv.bytes_total()).c_str(), dim.reset());
  return RunInteractive(c, a, opts);
}

int main(int argc, char** argv) { return coda::cli::RunMain(kTool, argc, argv, Main); }
