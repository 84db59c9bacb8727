// What a program that reads or writes text needs from a model: its tokenizer, chat template and
// BOS/EOS, loaded from a .coda file or a Hugging Face tokenizer directory, plus the one way
// prompts are rendered and encoded (coda-tokenize and coda-chat share it, so both produce the
// same ids).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "coda/model_file.h"
#include "coda/status.h"
#include "coda/text/chat_template.h"
#include "coda/text/tokenizer.h"

namespace coda::text {

struct TextAssets {
  Tokenizer tokenizer;
  std::optional<ChatTemplate> chat_template;  // absent when the model ships none
  std::string bos_token, eos_token;                 // token texts handed to the template
  std::optional<int32_t> eos_id;
  std::string source;  // the model file or directory, for messages
};

// The tokenizer (with tokenizer_config applied) and chat template stored in a model file.
// NotFound, naming the file, when it carries no tokenizer; a template that does not parse is an
// error too (InvalidArgument) rather than a surprise at the first render.
Result<TextAssets> LoadTextAssets(const ModelFile& file);
// The same from <dir>/tokenizer.json, tokenizer_config.json and chat_template.jinja, read as
// coda-convert reads them (ReadHfTextFiles).
Result<TextAssets> LoadTextAssetsFromDir(const std::string& dir);

// Renders `messages` (a JSON array of {role, content, ...}) with the chat template.
Result<std::string> RenderChat(const TextAssets& assets, const nlohmann::ordered_json& messages,
                               bool add_generation_prompt);
// Encodes a rendered prompt. The template already spells BOS, so none is added; control tokens
// written in the text (<｜User｜>, ...) become their ids. Invalid UTF-8 is an error naming the
// byte offset.
Result<std::vector<int32_t>> EncodePrompt(const TextAssets& assets, std::string_view rendered);

}  // namespace coda::text
