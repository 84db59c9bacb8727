// A structure-aware mutator for JSON inputs: the input is parsed and one node of it is changed as
// JSON (a number made extreme, a string made long or odd, a value nested deeper, a member
// dropped, an element repeated, a subtree copied elsewhere), so the fuzzer explores what the
// document means, not only how it is spelled. Inputs that do not parse, and one mutation in
// eight, get libFuzzer's byte mutations instead.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace coda::fuzz {

inline size_t MutateJson(uint8_t* data, size_t size, size_t max_size, unsigned seed) {
  using nlohmann::json;
  std::mt19937 rng(seed);
  json doc = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || rng() % 8 == 0) return LLVMFuzzerMutate(data, size, max_size);
  // Every node, without recursion (inputs may nest deeply).
  std::vector<json*> nodes = {&doc};
  for (size_t i = 0; i < nodes.size() && nodes.size() < 100000; ++i)
    if (nodes[i]->is_structured())
      for (json& child : *nodes[i]) nodes.push_back(&child);
  json& n = *nodes[rng() % nodes.size()];
  const json other = *nodes[rng() % nodes.size()];
  static const json kNumbers = {0, 1, -1, 2, 255, 256, 65535, 1u << 24, std::numeric_limits<int32_t>::max(),
                                std::numeric_limits<int64_t>::min(), std::numeric_limits<uint64_t>::max(), 0.5, -1e308,
                                1e308, 1e-45};
  switch (rng() % 10) {
    case 0: n = kNumbers[rng() % kNumbers.size()]; break;
    case 1: n = std::string(1 + rng() % 3, static_cast<char>('a' + rng() % 26)); break;
    case 2: n = n.is_string() ? json(n.get<std::string>() + n.get<std::string>()) : json(std::string(64, 'x')); break;
    case 3: n = json::array({n}); break;  // one level deeper
    case 4: n = rng() % 2 ? json(nullptr) : json(rng() % 2 == 0); break;
    case 5:
      if (n.is_object() && !n.empty()) {
        auto it = n.begin();
        std::advance(it, static_cast<long>(rng() % n.size()));
        n.erase(it);
      } else if (n.is_array() && !n.empty()) {
        n.erase(n.begin() + static_cast<long>(rng() % n.size()));
      }
      break;
    case 6:
      if (n.is_array() && !n.empty()) n.push_back(n[rng() % n.size()]);
      break;
    case 7: n = other; break;  // a subtree from elsewhere
    case 8: n = json::object({{"type", other.is_string() ? other : json("Sequence")}}); break;
    default:
      if (n.is_object()) n[other.is_string() ? other.get<std::string>() : std::string("type")] = other;
      break;
  }
  const std::string out = doc.dump(-1, ' ', false, json::error_handler_t::replace);
  if (out.size() > max_size) return LLVMFuzzerMutate(data, size, max_size);
  std::memcpy(data, out.data(), out.size());
  return out.size();
}

}  // namespace coda::fuzz
