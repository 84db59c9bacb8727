#include "coda/json.h"

namespace coda {

using nlohmann::json;

std::string JsonErrorText(const std::exception& e) {
  std::string m = e.what();
  if (m.starts_with("[json.exception.")) m.erase(0, m.find("] ") == std::string::npos ? 0 : m.find("] ") + 2);
  return m;
}

Result<uint64_t> JsonToU64(const json& v, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  return Corrupt(what + " is not a non-negative integer");
}

}  // namespace coda
