// Bounded JSON parsing for text from the outside, and typed field access with clear errors.
// Every document from outside goes through ParseJson: the depth limit keeps whatever walks the
// result (templates, message lists, the serializer) from recursing without bound.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "coda/status.h"

namespace coda {

// Nesting allowed by default. Real configs, tokenizers and chat files use a few levels.
inline constexpr int kMaxJsonDepth = 64;

// nlohmann's message without its "[json.exception.parse_error.101] " prefix.
std::string JsonErrorText(const std::exception& e);

// Parses `text` as Json (nlohmann::json or nlohmann::ordered_json); refuses invalid JSON (with
// where it failed) and nesting deeper than max_depth. `what` names the document in errors.
template <typename Json>
Result<Json> ParseJsonAs(std::string_view text, const std::string& what, int max_depth = kMaxJsonDepth) {
  bool too_deep = false;
  typename Json::parser_callback_t cb = [&](int depth, typename Json::parse_event_t ev, Json&) {
    if ((ev == Json::parse_event_t::object_start || ev == Json::parse_event_t::array_start) && depth > max_depth)
      too_deep = true;
    return !too_deep;
  };
  try {
    Json j = Json::parse(text.begin(), text.end(), cb);
    if (too_deep) return Corrupt(what + ": nested deeper than " + std::to_string(max_depth) + " levels");
    return j;
  } catch (const std::bad_alloc&) {
    return OutOfMemory(what + ": out of memory while parsing JSON");
  } catch (const std::exception& e) {
    if (too_deep) return Corrupt(what + ": nested deeper than " + std::to_string(max_depth) + " levels");
    return Corrupt(what + ": not valid JSON: " + JsonErrorText(e));
  }
}

inline Result<nlohmann::json> ParseJson(std::string_view text, const std::string& what, int max_depth = kMaxJsonDepth) {
  return ParseJsonAs<nlohmann::json>(text, what, max_depth);
}

// Non-negative integer value, or an error naming `what`.
Result<uint64_t> JsonToU64(const nlohmann::json& v, const std::string& what);

}  // namespace coda
