#include "coda/cli/progress_bar.h"

#include <unistd.h>

#include <cstdio>

#include "coda/cli/human_readable.h"

namespace coda::cli {

ProgressBar::ProgressBar(std::string label, bool enabled)
    : label_(std::move(label)), enabled_(enabled), tty_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

void ProgressBar::Update(uint64_t done, uint64_t total) {
  if (!enabled_ || total == 0) return;
  const double frac = static_cast<double>(done) / static_cast<double>(total);
  const auto now = std::chrono::steady_clock::now();
  const double secs = std::chrono::duration<double>(now - start_).count();
  if (tty_) {
    if (secs < 1.0 || (done != total && now - last_draw_ < std::chrono::milliseconds(100))) return;
    last_draw_ = now;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(frac * kWidth);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(kWidth, '.');
    const double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
    std::fprintf(stderr, "\r%s [%s] %5.1f%%  %s / %s  %s/s ", label_.c_str(), bar.c_str(), frac * 100,
                 HumanBytes(done).c_str(), HumanBytes(total).c_str(), HumanBytes(static_cast<uint64_t>(rate)).c_str());
    drawn_ = true;
  } else {
    // In logs, stay quiet for quick jobs and then print one line per 10%.
    const int decile = static_cast<int>(frac * 10);
    if (decile == last_decile_ || secs < 2.0) return;
    last_decile_ = decile;
    std::fprintf(stderr, "%s: %3d%%  %s / %s  (%.1f s)\n", label_.c_str(), decile * 10, HumanBytes(done).c_str(),
                 HumanBytes(total).c_str(), secs);
  }
  std::fflush(stderr);
}

void ProgressBar::Finish() {
  if (enabled_ && tty_ && drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

}  // namespace coda::cli
