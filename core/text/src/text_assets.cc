#include "coda/text/text_assets.h"

#include "coda/hf_text_files.h"

namespace coda::text {

namespace {

Result<TextAssets> Build(const std::string& source, std::string_view tokenizer_json, std::string_view config_json,
                         std::string_view chat_template, int64_t config_eos_id) {
  CODA_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::FromJson(tokenizer_json, source + ": tokenizer.json"));
  if (!config_json.empty())
    CODA_RETURN_IF_ERROR(tok.ApplyTokenizerConfig(config_json, source + ": tokenizer_config.json"));
  TextAssets a{std::move(tok), std::nullopt, "", "", std::nullopt, source};
  if (!chat_template.empty()) {
    auto t = ChatTemplate::Parse(chat_template);
    if (!t.ok()) return t.status().WithContext(source);
    a.chat_template = std::move(*t);
  }
  if (auto bos = a.tokenizer.bos_id())
    if (auto text = a.tokenizer.IdToToken(*bos)) a.bos_token = std::string(*text);
  a.eos_id = a.tokenizer.eos_id();
  // Without tokenizer_config.json the model config's eos_token_id is the next best source.
  if (!a.eos_id && config_eos_id >= 0 && a.tokenizer.IsValidId(static_cast<int32_t>(config_eos_id)))
    a.eos_id = static_cast<int32_t>(config_eos_id);
  if (a.eos_id)
    if (auto text = a.tokenizer.IdToToken(*a.eos_id)) a.eos_token = std::string(*text);
  return a;
}

}  // namespace

Result<TextAssets> LoadTextAssets(const ModelFile& file) {
  if (file.tokenizer_json().empty())
    return NotFound(file.path() +
                    " carries no tokenizer (convert it from a checkpoint directory that has tokenizer.json, "
                    "or use --tokenizer with coda-convert --random)");
  return Build(file.path(), file.tokenizer_json(), file.tokenizer_config_json(), file.chat_template(),
               file.config().eos_token_id);
}

Result<TextAssets> LoadTextAssetsFromDir(const std::string& dir) {
  CODA_ASSIGN_OR_RETURN(HfTextFiles f, ReadHfTextFiles(dir));
  if (f.tokenizer_json.empty()) return NotFound(dir + " has no tokenizer.json");
  return Build(dir, f.tokenizer_json, f.tokenizer_config_json, f.chat_template, -1);
}

Result<std::string> RenderChat(const TextAssets& assets, const nlohmann::ordered_json& messages,
                               bool add_generation_prompt) {
  if (!assets.chat_template) return NotFound(assets.source + " has no chat template");
  return assets.chat_template->RenderChat(messages, add_generation_prompt, assets.bos_token, assets.eos_token);
}

Result<std::vector<int32_t>> EncodePrompt(const TextAssets& assets, std::string_view rendered) {
  EncodeOptions o;
  o.add_special_tokens = false;
  o.invalid_utf8 = InvalidUtf8Policy::kError;
  return assets.tokenizer.Encode(rendered, o);
}

}  // namespace coda::text
