// Small pieces every command-line tool shares: progress on stderr, sizes for humans, errors.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "coda/status.h"

namespace coda::tools {

// A progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise (logs).
class ProgressBar {
 public:
  ProgressBar(std::string label, bool enabled);
  void Update(uint64_t done, uint64_t total);
  void Finish();

 private:
  std::string label_;
  bool enabled_, tty_;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool drawn_ = false;
};

// "1.25 GB", "640 KB", "17 B" (decimal units).
std::string HumanBytes(uint64_t bytes);
// "671.03B", "2.45B", "15.3M" parameters.
std::string HumanCount(uint64_t n);
// "70,272".
std::string WithCommas(uint64_t n);

// Prints "<tool>: error: <message>" to stderr and returns the exit code for a failed run.
int Fail(const char* tool, const Status& status);
// Prints "<tool>: <message>" plus a hint to use --help, returns the usage-error exit code (2).
int UsageError(const char* tool, const std::string& message);

}  // namespace coda::tools
