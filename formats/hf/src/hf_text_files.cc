#include "coda/hf_text_files.h"

#include <nlohmann/json.hpp>

#include "coda/file.h"
#include "coda/json.h"

namespace coda {

namespace {

constexpr uint64_t kMaxTextFileBytes = 256u << 20;

Status ReadOptionalText(const std::string& path, std::string* out) {
  if (!FileExists(path)) return Status::Ok();
  CODA_ASSIGN_OR_RETURN(*out, ReadTextFile(path, kMaxTextFileBytes));
  return Status::Ok();
}

}  // namespace

Result<HfTextFiles> ReadHfTextFiles(const std::string& dir) {
  HfTextFiles f;
  CODA_RETURN_IF_ERROR(ReadOptionalText(dir + "/tokenizer.json", &f.tokenizer_json));
  CODA_RETURN_IF_ERROR(ReadOptionalText(dir + "/tokenizer_config.json", &f.tokenizer_config_json));
  if (!f.tokenizer_json.empty()) {
    auto j = ParseJson(f.tokenizer_json, dir + "/tokenizer.json");
    if (!j.ok()) return j.status();
  }
  if (!f.tokenizer_config_json.empty()) {
    const std::string where = dir + "/tokenizer_config.json";
    CODA_ASSIGN_OR_RETURN(nlohmann::json j, ParseJson(f.tokenizer_config_json, where));
    auto t = j.is_object() ? j.find("chat_template") : j.end();
    if (j.is_object() && t != j.end()) {
      if (t->is_string()) {
        f.chat_template = t->get<std::string>();
      } else if (t->is_array()) {  // [{"name": "default", "template": "..."}, ...]
        for (const auto& e : *t)
          if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
            f.chat_template = e["template"].get<std::string>();
      }
    }
  }
  std::string jinja;
  CODA_RETURN_IF_ERROR(ReadOptionalText(dir + "/chat_template.jinja", &jinja));
  if (!jinja.empty()) f.chat_template = jinja;
  std::string gen;
  CODA_RETURN_IF_ERROR(ReadOptionalText(dir + "/generation_config.json", &gen));
  if (!gen.empty()) {
    CODA_ASSIGN_OR_RETURN(nlohmann::json j, ParseJson(gen, dir + "/generation_config.json"));
    if (j.is_object() && j.contains("temperature") && j["temperature"].is_number())
      f.temperature = j["temperature"].get<float>();
    if (j.is_object() && j.contains("top_p") && j["top_p"].is_number()) f.top_p = j["top_p"].get<float>();
  }
  return f;
}

}  // namespace coda
