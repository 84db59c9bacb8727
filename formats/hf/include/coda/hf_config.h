// Reads a Hugging Face config.json of DeepseekV2ForCausalLM / DeepseekV3ForCausalLM into the
// architecture description (coda/model_config.h), refusing what Coda cannot run with the reason.
#pragma once

#include <string>
#include <string_view>

#include "coda/model_config.h"
#include "coda/status.h"

namespace coda {

Result<ModelConfig> ParseHfConfig(std::string_view json_text, const std::string& source_name);
Result<ModelConfig> LoadHfConfig(const std::string& path);

}  // namespace coda
