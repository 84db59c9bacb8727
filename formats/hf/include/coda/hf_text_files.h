// The text side of a Hugging Face checkpoint directory: tokenizer.json, tokenizer_config.json
// (and the chat template it may carry), chat_template.jinja, and the sampling defaults of
// generation_config.json. Read by coda-convert (to store them in a .coda file), by coda-inspect
// and by the tokenizer of a directory (core/text).
#pragma once

#include <string>

#include "coda/status.h"

namespace coda {

struct HfTextFiles {
  std::string tokenizer_json;         // empty: no tokenizer.json
  std::string tokenizer_config_json;  // empty: no tokenizer_config.json
  std::string chat_template;          // chat_template.jinja, else tokenizer_config's; empty: none
  float temperature = -1.0f;          // generation_config.json; < 0: not given
  float top_p = -1.0f;
};

// Reads whichever of those files `dir` has; a missing file is not an error, one that is not
// valid JSON is (naming it).
Result<HfTextFiles> ReadHfTextFiles(const std::string& dir);

}  // namespace coda
