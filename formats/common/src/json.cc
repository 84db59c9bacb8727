#include "coda/json.h"

namespace coda {

using nlohmann::json;

Result<json> ParseJson(std::string_view text, const std::string& what, int max_depth) {
  bool too_deep = false;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json&) {
    if ((ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start) &&
        depth > max_depth)
      too_deep = true;
    return !too_deep;
  };
  json j = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
  if (too_deep) return Corrupt(what + ": nested deeper than " + std::to_string(max_depth) + " levels");
  if (j.is_discarded()) return Corrupt(what + ": not valid JSON");
  return j;
}

Result<uint64_t> JsonToU64(const json& v, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  return Corrupt(what + " is not a non-negative integer");
}

}  // namespace coda
