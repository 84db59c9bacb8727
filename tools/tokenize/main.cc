// coda-tokenize: text <-> token ids with a model's tokenizer, and chat prompts as the model sees
// them.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "coda/file.h"
#include "coda/text/text_assets.h"
#include "coda/tools/cli.h"

namespace {

constexpr char kTool[] = "coda-tokenize";
constexpr char kHelp[] = R"(coda-tokenize: text <-> token ids with a model's tokenizer and chat template.

Usage:
  coda-tokenize -m model.coda < text.txt            print the ids of stdin as a JSON array
  coda-tokenize -m model.coda --decode < ids.json   print the text of a JSON array of ids
  coda-tokenize -m model.coda --chat messages.json [--add-generation-prompt] [--ids]
  coda-tokenize -m model.coda --batch < in.jsonl    one JSON line out per JSON line in

The text is encoded as given (no BOS unless --add-special). --chat renders a JSON array of
{"role", "content"} messages (or {"messages": [...]}) with the chat template and prints the
prompt; '-' reads it from stdin. --batch lines are {"text": "..."} -> {"ids": [...]} or
{"messages": [...], "add_generation_prompt": true} -> {"ids": [...], "rendered": "..."};
a bad line gets {"error": "..."} and the rest go on.

Options:
  -m, --model PATH         tokenizer and chat template of a .coda model
  --tokenizer DIR          those of DIR/tokenizer.json, tokenizer_config.json
  -t, --text TEXT          encode TEXT instead of stdin
  --add-special            add the tokenizer's BOS/EOS around encoded text
  --decode                 ids -> text
  --skip-special           with --decode: leave out special tokens
  --chat FILE              render messages with the chat template
  --add-generation-prompt  with --chat: end with the assistant's turn opener
  --ids                    with --chat: print the prompt's ids instead of its text
  --batch                  JSON lines mode
  -h, --help               this help
)";

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
  ordered_json j = ordered_json::parse(json_text, nullptr, /*allow_exceptions=*/false);
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

// nlohmann's message without its "[json.exception.parse_error.101] " prefix.
std::string JsonErrorText(const std::exception& e) {
  std::string m = e.what();
  if (m.starts_with("[json.exception.")) m.erase(0, m.find("] ") == std::string::npos ? 0 : m.find("] ") + 2);
  return m;
}

// One --batch line; the error, if any, goes into that line's output.
ordered_json BatchLine(const TextAssets& assets, const std::string& line) {
  ordered_json in;
  try {
    in = ordered_json::parse(line);
  } catch (const ordered_json::parse_error& e) {
    return {{"error", std::string("not JSON: ") + JsonErrorText(e)}};
  }
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

int main(int argc, char** argv) {
  using namespace coda;
  std::string model_path, tokenizer_dir, chat_path, text_arg;
  bool have_text = false, decode = false, skip_special = false, add_gen = false, print_ids = false, batch = false,
       add_special = false;
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
    } else if (a == "-m" || a == "--model") {
      if (!value(&model_path)) return tools::UsageError(kTool, a + " needs a value");
    } else if (a == "--tokenizer") {
      if (!value(&tokenizer_dir)) return tools::UsageError(kTool, a + " needs a directory");
    } else if (a == "-t" || a == "--text") {
      if (!value(&text_arg)) return tools::UsageError(kTool, a + " needs a value");
      have_text = true;
    } else if (a == "--chat") {
      if (!value(&chat_path)) return tools::UsageError(kTool, a + " needs a file ('-' for stdin)");
    } else if (a == "--decode") {
      decode = true;
    } else if (a == "--skip-special") {
      skip_special = true;
    } else if (a == "--add-special") {
      add_special = true;
    } else if (a == "--add-generation-prompt") {
      add_gen = true;
    } else if (a == "--ids") {
      print_ids = true;
    } else if (a == "--batch") {
      batch = true;
    } else {
      return tools::UsageError(kTool, "unknown argument '" + a + "'");
    }
  }
  if (model_path.empty() == tokenizer_dir.empty())
    return tools::UsageError(kTool, "give either -m model.coda or --tokenizer DIR");
  if (int(decode) + int(!chat_path.empty()) + int(batch) > 1)
    return tools::UsageError(kTool, "--decode, --chat and --batch are separate modes; pick one");
  if ((add_gen || print_ids) && chat_path.empty())
    return tools::UsageError(kTool, "--add-generation-prompt and --ids go with --chat");
  if (have_text && (decode || batch || !chat_path.empty()))
    return tools::UsageError(kTool, "--text only applies to encoding");

  Result<TextAssets> assets = NotFound("");
  if (!model_path.empty()) {
    auto file = ModelFile::Open(model_path);
    if (!file.ok()) return tools::Fail(kTool, file.status());
    assets = text::LoadTextAssets(*file);
  } else {
    assets = text::LoadTextAssetsFromDir(tokenizer_dir);
  }
  if (!assets.ok()) return tools::Fail(kTool, assets.status());
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
    if (!ids.ok()) return tools::Fail(kTool, ids.status().WithContext("stdin"));
    auto text = ta.tokenizer.Decode(*ids, skip_special);
    if (!text.ok()) return tools::Fail(kTool, text.status());
    PrintText(*text);
    return 0;
  }

  if (!chat_path.empty()) {
    std::string json_text;
    if (chat_path == "-") {
      json_text = ReadAll(std::cin);
    } else {
      auto r = ReadTextFile(chat_path, uint64_t{1} << 30);
      if (!r.ok()) return tools::Fail(kTool, r.status());
      json_text = std::move(*r);
    }
    const std::string where = chat_path == "-" ? "stdin" : chat_path;
    ordered_json j;
    try {
      j = ordered_json::parse(json_text);
    } catch (const ordered_json::parse_error& e) {
      return tools::Fail(kTool, InvalidArgument(where + ": not JSON: " + JsonErrorText(e)));
    }
    auto req = ParseChat(j, add_gen);
    if (!req.ok()) return tools::Fail(kTool, req.status().WithContext(where));
    // The flag wins over the file's own setting.
    auto rendered = text::RenderChat(ta, req->messages, add_gen || req->add_generation_prompt);
    if (!rendered.ok()) return tools::Fail(kTool, rendered.status());
    if (!print_ids) {
      PrintText(*rendered);
      return 0;
    }
    auto ids = text::EncodePrompt(ta, *rendered);
    if (!ids.ok()) return tools::Fail(kTool, ids.status());
    std::printf("%s\n", IdsJson(*ids).c_str());
    return 0;
  }

  const std::string text = have_text ? text_arg : ReadAll(std::cin);
  auto ids = ta.tokenizer.Encode(text, add_special);
  if (!ids.ok()) return tools::Fail(kTool, ids.status().WithContext(have_text ? "--text" : "stdin"));
  std::printf("%s\n", IdsJson(*ids).c_str());
  return 0;
}
