// The kinds of checked option value (whole numbers, numbers, lists, choices): each parser says
// what it expected in one wording used by every program ("'abc' is not a whole number from 0 to
// 1024"), and each Add* declares an option of that kind, showing its current value as the
// default.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coda/cli/command_line.h"

namespace coda::cli {

// Digits only (no sign, space or base prefix), from `min` to `max`.
Result<uint64_t> ParseWholeNumber(const std::string& text, uint64_t min, uint64_t max);

// A closed or half-open range of real numbers; its text is "[0, 1)".
struct Interval {
  double min = 0, max = 0;
  bool min_open = false, max_open = false;
  bool Contains(double v) const;
  std::string Text() const;
};
// A finite decimal number inside `range`.
Result<double> ParseNumber(const std::string& text, const Interval& range);

// "0,1024,4096": whole numbers from `min` to `max`; an error names the bad item.
Result<std::vector<uint64_t>> ParseWholeNumberList(const std::string& text, uint64_t min, uint64_t max);
// "cpu,vulkan" -> {"cpu", "vulkan"}; empty items are dropped, and at least one must remain.
Result<std::vector<std::string>> ParseNameList(const std::string& text);
// One of `choices`.
Result<std::string> ParseChoice(const std::string& text, const std::vector<std::string>& choices);
// A size in bytes: digits with an optional K, M, G or T (powers of 1024), "2G", "512M".
Result<uint64_t> ParseBytes(const std::string& text);

// "0.6", "1e-06": numbers as help and messages show them.
std::string NumberText(double v);

Option& AddWholeNumber(CommandLine& cl, const std::string& names, uint64_t* out, std::string value_name,
                       std::string help, uint64_t min, uint64_t max);
Option& AddWholeNumber(CommandLine& cl, const std::string& names, uint32_t* out, std::string value_name,
                       std::string help, uint32_t min, uint32_t max);
Option& AddNumber(CommandLine& cl, const std::string& names, float* out, std::string value_name, std::string help,
                  const Interval& range);
// Whole numbers from 0 to `max`.
Option& AddWholeNumberList(CommandLine& cl, const std::string& names, std::vector<int32_t>* out,
                           std::string value_name, std::string help, int32_t max);
Option& AddNameList(CommandLine& cl, const std::string& names, std::vector<std::string>* out, std::string value_name,
                    std::string help);
// The value name is the choices joined with '|' ("bf16|f32").
Option& AddChoice(CommandLine& cl, const std::string& names, std::string* out, std::vector<std::string> choices,
                  std::string help);

}  // namespace coda::cli
