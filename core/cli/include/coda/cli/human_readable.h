// Sizes and counts as programs print them for people.
#pragma once

#include <cstdint>
#include <string>

namespace coda::cli {

// "1.25 GB", "640 KB", "17 B" (decimal units).
std::string HumanBytes(uint64_t bytes);
// "671.03B", "2.45B", "15.3M" parameters.
std::string HumanCount(uint64_t n);
// "70,272".
std::string WithCommas(uint64_t n);

}  // namespace coda::cli
