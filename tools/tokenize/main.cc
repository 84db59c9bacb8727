// coda-tokenize: text <-> token ids with a model's tokenizer, and chat prompts as the model sees
// them.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "coda/cli/command_line.h"
#include "coda/cli/options.h"
#include "coda/file.h"
#include "coda/json.h"
#include "coda/text/text_assets.h"

namespace {

constexpr char kTool[] = "coda-tokenize";
constexpr char kAbout[] = R"(coda-tokenize: text <-> token ids with a model's tokenizer and chat template.

Usage:
  coda-tokenize -m model.coda < text.txt            print the ids of stdin as a JSON array
  coda-tokenize -m model.coda --decode < ids.json   print the text of a JSON array of ids
  coda-tokenize -m model.coda --chat messages.json [--add-generation-prompt] [--ids]
  coda-tokenize -m model.coda --batch < in.jsonl    one JSON line out per JSON line in

The text is encoded as given (no BOS unless --add-special). --chat renders a JSON array of
{"role", "content"} messages (or {"messages": [...]}) with the chat template and prints the
prompt; '-' reads it from stdin. --batch lines are {"text": "..."} -> {"ids": [...]} or
{"messages": [...], "add_generation_prompt": true} -> {"ids": [...], "rendered": "..."};
a bad line gets {"error": "..."} and the rest go on.)";

using coda::Result;
using coda::Status;
using coda::text::TextAssets;
using nlohmann::ordered_json;

std::string ReadAll(std::istream& in) { return std::string(std::istreambuf_iterator<char>(in), {}); }

std::string IdsJson(const std::vector<int32_t>& ids) { return ordered_json(ids).dump(); }

// Text goes out byte for byte; a newline is added only for a person at a terminal.
void PrintText(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  if (::isatty(STDOUT_FILENO) && (text.empty() || text.back() != '\n')) std::fputc('\n', stdout);
}

Result<std::vector<int32_t>> ParseIds(const std::string& json_text) {
  auto parsed = coda::ParseJsonAs<ordered_json>(json_text, "input");
  if (!parsed.ok()) return coda::InvalidArgument("expected a JSON array of token ids; " + parsed.status().message());
  const ordered_json& j = *parsed;
  if (!j.is_array()) return coda::InvalidArgument("expected a JSON array of token ids");
  std::vector<int32_t> ids;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& v = j[i];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
      return coda::InvalidArgument("item " + std::to_string(i) + " (" + v.dump() + ") is not a token id");
    ids.push_back(v.get<int32_t>());
  }
  return ids;
}

// A chat request: a bare messages array, or an object with "messages" and optionally
// "add_generation_prompt" (which `default_gen` stands in for when absent).
struct ChatRequest {
  ordered_json messages;
  bool add_generation_prompt = false;
};

Result<ChatRequest> ParseChat(const ordered_json& j, bool default_gen) {
  ChatRequest r;
  r.add_generation_prompt = default_gen;
  if (j.is_array()) {
    r.messages = j;
  } else if (j.is_object() && j.contains("messages")) {
    r.messages = j["messages"];
    if (j.contains("add_generation_prompt")) {
      if (!j["add_generation_prompt"].is_boolean()) return coda::InvalidArgument("add_generation_prompt must be true or false");
      r.add_generation_prompt = j["add_generation_prompt"].get<bool>();
    }
  } else {
    return coda::InvalidArgument("expected a JSON array of messages or an object with \"messages\"");
  }
  if (!r.messages.is_array()) return coda::InvalidArgument("\"messages\" must be an array");
  for (size_t i = 0; i < r.messages.size(); ++i) {
    const auto& m = r.messages[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      return coda::InvalidArgument("message " + std::to_string(i) + " is not an object with a \"role\" string");
  }
  return r;
}

// One --batch line; the error, if any, goes into that line's output.
ordered_json BatchLine(const TextAssets& assets, const std::string& line) {
  auto parsed = coda::ParseJsonAs<ordered_json>(line, "the line");
  if (!parsed.ok()) return {{"error", parsed.status().message()}};
  ordered_json& in = *parsed;
  if (in.is_object() && in.contains("text")) {
    if (!in["text"].is_string()) return {{"error", "\"text\" must be a string"}};
    bool add_special = false;
    if (in.contains("add_special_tokens")) {
      if (!in["add_special_tokens"].is_boolean()) return {{"error", "add_special_tokens must be true or false"}};
      add_special = in["add_special_tokens"].get<bool>();
    }
    auto ids = assets.tokenizer.Encode(in["text"].get<std::string>(), add_special);
    if (!ids.ok()) return {{"error", ids.status().message()}};
    return {{"ids", *ids}};
  }
  if (in.is_object() && in.contains("messages")) {
    auto req = ParseChat(in, false);
    if (!req.ok()) return {{"error", req.status().message()}};
    auto rendered = coda::text::RenderChat(assets, req->messages, req->add_generation_prompt);
    if (!rendered.ok()) return {{"error", rendered.status().message()}};
    auto ids = coda::text::EncodePrompt(assets, *rendered);
    if (!ids.ok()) return {{"error", ids.status().message()}};
    return {{"ids", *ids}, {"rendered", *rendered}};
  }
  return {{"error", "expected an object with \"text\" or \"messages\""}};
}

// Error text may quote input bytes that are not UTF-8; the output stays valid JSON regardless.
std::string DumpLine(const ordered_json& j) { return j.dump(-1, ' ', false, ordered_json::error_handler_t::replace); }

}  // namespace

static int Main(int argc, char** argv) {
  using namespace coda;
  std::string model_path, tokenizer_dir, chat_path, text_arg;
  bool decode = false, skip_special = false, add_gen = false, print_ids = false, batch = false, add_special = false;
  cli::CommandLine cl(kTool, kAbout);
  cli::AddModel(cl, &model_path);
  cl.Text("--tokenizer", &tokenizer_dir, "DIR", "the tokenizer and chat template of DIR (tokenizer.json, tokenizer_config.json)");
  cl.Text("-t,--text", &text_arg, "TEXT", "encode TEXT instead of stdin");
  cl.Flag("--add-special", &add_special, "add the tokenizer's BOS/EOS around encoded text");
  cl.Flag("--decode", &decode, "ids -> text");
  cl.Flag("--skip-special", &skip_special, "with --decode: leave out special tokens");
  cl.Text("--chat", &chat_path, "FILE", "render messages with the chat template");
  cl.Flag("--add-generation-prompt", &add_gen, "with --chat: end with the assistant's turn opener");
  cl.Flag("--ids", &print_ids, "with --chat: print the prompt's ids instead of its text");
  cl.Flag("--batch", &batch, "JSON lines mode");
  if (auto code = cl.ParseMain(argc, argv)) return *code;
  const bool have_text = cl.Given("--text");
  if (model_path.empty() == tokenizer_dir.empty()) return cl.UsageError("give either -m model.coda or --tokenizer DIR");
  if (int(decode) + int(!chat_path.empty()) + int(batch) > 1)
    return cl.UsageError("--decode, --chat and --batch are separate modes; pick one");
  if ((add_gen || print_ids) && chat_path.empty())
    return cl.UsageError("--add-generation-prompt and --ids go with --chat");
  if (have_text && (decode || batch || !chat_path.empty())) return cl.UsageError("--text only applies to encoding");

  Result<TextAssets> assets = NotFound("");
  if (!model_path.empty()) {
    auto file = ModelFile::Open(model_path);
    if (!file.ok()) return cl.Fail(file.status());
    assets = text::LoadTextAssets(*file);
  } else {
    assets = text::LoadTextAssetsFromDir(tokenizer_dir);
  }
  if (!assets.ok()) return cl.Fail(assets.status());
  const TextAssets& ta = *assets;

  if (batch) {
    if (!ta.chat_template)
      std::fprintf(stderr, "%s: note: %s has no chat template; \"messages\" lines will fail\n", kTool,
                   ta.source.c_str());
    std::string line;
    while (std::getline(std::cin, line)) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string out = DumpLine(BatchLine(ta, line));
      std::fprintf(stdout, "%s\n", out.c_str());
      std::fflush(stdout);  // usable as a coprocess: each answer arrives as soon as it is ready
    }
    return 0;
  }

  if (decode) {
    auto ids = ParseIds(ReadAll(std::cin));
    if (!ids.ok()) return cl.Fail(ids.status().WithContext("stdin"));
    auto text = ta.tokenizer.Decode(*ids, skip_special);
    if (!text.ok()) return cl.Fail(text.status());
    PrintText(*text);
    return 0;
  }

  if (!chat_path.empty()) {
    std::string json_text;
    if (chat_path == "-") {
      json_text = ReadAll(std::cin);
    } else {
      auto r = ReadTextFile(chat_path, uint64_t{1} << 30);
      if (!r.ok()) return cl.Fail(r.status());
      json_text = std::move(*r);
    }
    const std::string where = chat_path == "-" ? "stdin" : chat_path;
    auto j = coda::ParseJsonAs<ordered_json>(json_text, where);
    if (!j.ok()) return cl.Fail(j.status());
    auto req = ParseChat(*j, add_gen);
    if (!req.ok()) return cl.Fail(req.status().WithContext(where));
    // The flag wins over the file's own setting.
    auto rendered = text::RenderChat(ta, req->messages, add_gen || req->add_generation_prompt);
    if (!rendered.ok()) return cl.Fail(rendered.status());
    if (!print_ids) {
      PrintText(*rendered);
      return 0;
    }
    auto ids = text::EncodePrompt(ta, *rendered);
    if (!ids.ok()) return cl.Fail(ids.status());
    std::printf("%s\n", IdsJson(*ids).c_str());
    return 0;
  }

  const std::string text = have_text ? text_arg : ReadAll(std::cin);
  auto ids = ta.tokenizer.Encode(text, add_special);
  if (!ids.ok()) return cl.Fail(ids.status().WithContext(have_text ? "--text" : "stdin"));
  std::printf("%s\n", IdsJson(*ids).c_str());
  return 0;
}

int main(int argc, char** argv) { return coda::cli::RunMain(kTool, argc, argv, Main); }
