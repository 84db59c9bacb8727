// Progress of a long job on stderr: redrawn in place on a terminal, a line per 10% otherwise (logs).
// Nothing is shown for a job that ends within its first second (two in logs).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace coda::cli {

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

}  // namespace coda::cli
