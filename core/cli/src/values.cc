#include "coda/cli/values.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

namespace coda::cli {

namespace {

// "a,b,c" -> {"a", "b", "c"}, empty items kept ("" -> {""}).
std::vector<std::string> SplitCommas(const std::string& text) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t comma = std::min(text.find(',', at), text.size());
    out.push_back(text.substr(at, comma - at));
    at = comma + 1;
  }
  return out;
}

template <class T>
std::string Joined(const std::vector<T>& items, char separator = ',') {
  std::string s;
  for (const T& item : items) {
    if (!s.empty()) s += separator;
    if constexpr (std::is_same_v<T, std::string>) s += item;
    else s += std::to_string(item);
  }
  return s;
}

std::string WholeNumberRange(uint64_t min, uint64_t max) {
  return "a whole number from " + std::to_string(min) + " to " + std::to_string(max);
}

}  // namespace

Result<uint64_t> ParseWholeNumber(const std::string& text, uint64_t min, uint64_t max) {
  const bool digits = !text.empty() && text.size() <= 20 &&
                      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  errno = 0;
  const unsigned long long n = digits ? std::strtoull(text.c_str(), nullptr, 10) : 0;
  if (!digits || errno || n < min || n > max) return InvalidArgument("'" + text + "' is not " + WholeNumberRange(min, max));
  return static_cast<uint64_t>(n);
}

Result<uint64_t> ParseBytes(const std::string& text) {
  const std::string units = "KMGT";
  std::string digits = text;
  uint64_t scale = 1;
  if (!digits.empty()) {
    const auto u = units.find(static_cast<char>(std::toupper(static_cast<unsigned char>(digits.back()))));
    if (u != std::string::npos) {
      digits.pop_back();
      scale = uint64_t{1} << (10 * (u + 1));
    }
  }
  auto n = ParseWholeNumber(digits, 0, UINT64_MAX / scale);
  if (!n.ok()) return InvalidArgument("'" + text + "' is not a size (bytes, or a number with K, M, G or T)");
  return *n * scale;
}

bool Interval::Contains(double v) const {
  return (min_open ? v > min : v >= min) && (max_open ? v < max : v <= max);
}

std::string Interval::Text() const {
  return (min_open ? "(" : "[") + NumberText(min) + ", " + NumberText(max) + (max_open ? ")" : "]");
}

Result<double> ParseNumber(const std::string& text, const Interval& range) {
  char* end = nullptr;
  errno = 0;
  const bool starts_well = !text.empty() && !std::isspace(static_cast<unsigned char>(text[0]));
  const double v = starts_well ? std::strtod(text.c_str(), &end) : 0;
  // ERANGE: too large, or so small that it would silently become 0.
  if (!starts_well || *end != '\0' || errno || !std::isfinite(v) || !range.Contains(v))
    return InvalidArgument("'" + text + "' is not a number in " + range.Text());
  return v;
}

Result<std::vector<uint64_t>> ParseWholeNumberList(const std::string& text, uint64_t min, uint64_t max) {
  std::vector<uint64_t> out;
  for (const std::string& item : SplitCommas(text)) {
    auto n = ParseWholeNumber(item, min, max);
    if (!n.ok())
      return InvalidArgument("'" + item + "' (item " + std::to_string(out.size() + 1) + ") is not " +
                             WholeNumberRange(min, max));
    out.push_back(*n);
  }
  return out;
}

Result<std::vector<std::string>> ParseNameList(const std::string& text) {
  std::vector<std::string> out;
  for (std::string& item : SplitCommas(text))
    if (!item.empty()) out.push_back(std::move(item));
  if (out.empty()) return InvalidArgument("'" + text + "' is not a comma-separated list of names");
  return out;
}

Result<std::string> ParseChoice(const std::string& text, const std::vector<std::string>& choices) {
  if (std::find(choices.begin(), choices.end(), text) != choices.end()) return text;
  std::string list;
  for (size_t i = 0; i < choices.size(); ++i)
    list += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i];
  return InvalidArgument("'" + text + "' is not " + list);
}

std::string NumberText(double v) {
  char buf[32];
  if (v == std::floor(v) && std::fabs(v) < 1e15) std::snprintf(buf, sizeof buf, "%.0f", v);
  else std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

Option& AddWholeNumber(CommandLine& cl, const std::string& names, uint64_t* out, std::string value_name,
                       std::string help, uint64_t min, uint64_t max) {
  return cl
      .Value(names, std::move(value_name), std::move(help),
             [out, min, max](const std::string& text) -> Status {
               CODA_ASSIGN_OR_RETURN(*out, ParseWholeNumber(text, min, max));
               return Status::Ok();
             })
      .DefaultText(std::to_string(*out));
}

Option& AddWholeNumber(CommandLine& cl, const std::string& names, uint32_t* out, std::string value_name,
                       std::string help, uint32_t min, uint32_t max) {
  return cl
      .Value(names, std::move(value_name), std::move(help),
             [out, min, max](const std::string& text) -> Status {
               CODA_ASSIGN_OR_RETURN(uint64_t n, ParseWholeNumber(text, min, max));
               *out = static_cast<uint32_t>(n);
               return Status::Ok();
             })
      .DefaultText(std::to_string(*out));
}

Option& AddNumber(CommandLine& cl, const std::string& names, float* out, std::string value_name, std::string help,
                  const Interval& range) {
  return cl
      .Value(names, std::move(value_name), std::move(help),
             [out, range](const std::string& text) -> Status {
               CODA_ASSIGN_OR_RETURN(double v, ParseNumber(text, range));
               // Checked again as a float: 0.9999999999 rounds to 1, outside [0, 1).
               if (!range.Contains(static_cast<float>(v)))
                 return InvalidArgument("'" + text + "' is not a number in " + range.Text());
               *out = static_cast<float>(v);
               return Status::Ok();
             })
      .DefaultText(NumberText(*out));
}

Option& AddWholeNumberList(CommandLine& cl, const std::string& names, std::vector<int32_t>* out,
                           std::string value_name, std::string help, int32_t max) {
  return cl
      .Value(names, std::move(value_name), std::move(help),
             [out, max](const std::string& text) -> Status {
               CODA_ASSIGN_OR_RETURN(std::vector<uint64_t> list,
                                     ParseWholeNumberList(text, 0, static_cast<uint64_t>(std::max(max, 0))));
               out->assign(list.begin(), list.end());
               return Status::Ok();
             })
      .DefaultText(Joined(*out));
}

Option& AddNameList(CommandLine& cl, const std::string& names, std::vector<std::string>* out, std::string value_name,
                    std::string help) {
  return cl
      .Value(names, std::move(value_name), std::move(help),
             [out](const std::string& text) -> Status {
               CODA_ASSIGN_OR_RETURN(*out, ParseNameList(text));
               return Status::Ok();
             })
      .DefaultText(Joined(*out));
}

Option& AddChoice(CommandLine& cl, const std::string& names, std::string* out, std::vector<std::string> choices,
                  std::string help) {
  std::string value_name = Joined(choices, '|');  // before the lambda takes `choices`
  return cl
      .Value(names, std::move(value_name), std::move(help),
             [out, choices = std::move(choices)](const std::string& text) -> Status {
               CODA_ASSIGN_OR_RETURN(*out, ParseChoice(text, choices));
               return Status::Ok();
             })
      .DefaultText(*out);
}

}  // namespace coda::cli
