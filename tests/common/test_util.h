// Helpers shared by the test suites: temp dirs, writing safetensors files, running tools.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace coda::test {

inline std::string DataDir() { return CODA_TEST_DATA_DIR; }
inline std::string BinDir() { return CODA_BIN_DIR; }

// "a,b,c" -> {"a", "b", "c"} (empty text: one empty name).
inline std::vector<std::string> SplitCommas(const std::string& list) {
  std::vector<std::string> out;
  for (size_t at = 0; at <= list.size();) {
    const size_t comma = std::min(list.find(',', at), list.size());
    out.push_back(list.substr(at, comma - at));
    at = comma + 1;
  }
  return out;
}

// True when CODA_REQUIRE_BACKENDS (comma-separated names; scripts/test sets it where it has
// installed a driver) lists `backend`: that backend's tests must run, not skip.
inline bool BackendRequired(const std::string& backend) {
  const char* v = std::getenv("CODA_REQUIRE_BACKENDS");
  if (!v) return false;
  for (const std::string& name : SplitCommas(v))
    if (name == backend) return true;
  return false;
}

// max |a - b| / max |b|
inline double RelErr(std::span<const float> a, std::span<const float> b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return num / den;
}

// A fresh, empty directory under the test temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::path(::testing::TempDir()) /
            ("coda_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }
  // Every file in the directory (to check that failures leave nothing behind).
  std::vector<std::string> Files() const {
    std::vector<std::string> out;
    for (auto& e : std::filesystem::directory_iterator(path_)) out.push_back(e.path().filename().string());
    return out;
  }

 private:
  std::filesystem::path path_;
};

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

struct StTensor {
  std::string dtype;
  std::vector<uint64_t> shape;
  std::string bytes;
};

// Serializes tensors as a safetensors file (header padded to 8 bytes, data in map order).
inline std::string MakeSafetensors(const std::map<std::string, StTensor>& tensors) {
  nlohmann::ordered_json h;
  h["__metadata__"] = {{"format", "pt"}};
  uint64_t off = 0;
  std::string data;
  for (const auto& [name, t] : tensors) {
    h[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
    off += t.bytes.size();
    data += t.bytes;
  }
  std::string header = h.dump();
  while ((8 + header.size()) % 8) header += ' ';
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>(n >> (8 * i));
  return out + header + data;
}

// Raw file from a header string and data bytes (for malformed headers).
inline std::string RawSafetensors(const std::string& header, const std::string& data, uint64_t declared_len) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>(declared_len >> (8 * i));
  return out + header + data;
}

struct RunResult {
  int exit_code = -1;
  std::string out;  // stdout + stderr
};

// Runs a shell command line, capturing stdout and stderr together.
inline RunResult RunCommand(const std::string& cmd) {
  RunResult r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

inline std::string Tool(const std::string& name) { return BinDir() + "/" + name; }

}  // namespace coda::test
