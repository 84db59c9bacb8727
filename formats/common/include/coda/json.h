// Bounded JSON parsing for files from the outside, and typed field access with clear errors.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "coda/status.h"

namespace coda {

// Parses `text`; refuses invalid JSON and nesting deeper than max_depth. `what` names the
// document in error messages.
Result<nlohmann::json> ParseJson(std::string_view text, const std::string& what, int max_depth = 64);

// Non-negative integer value, or an error naming `what`.
Result<uint64_t> JsonToU64(const nlohmann::json& v, const std::string& what);

}  // namespace coda
