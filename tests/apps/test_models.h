// Random-weight models for the text-tool and chat tests, made with the real coda-convert.
// ctest runs every test in its own process, so a model is kept in the build tree and made
// again only when coda-convert is newer than it (the writer is atomic, so two test processes
// making the same model at once both end with a complete file).
#pragma once

#include <filesystem>
#include <string>

#include "../common/test_util.h"

namespace coda::test {

inline std::string TestModelDir() { return BinDir() + "/../test-models"; }

// Converts `config` (a config.json) with the tokenizer directory `tokenizer_dir` (empty: none)
// into <build>/test-models/<name>.coda unless an up-to-date copy is there. Returns the path, or
// "" (with a test failure) when coda-convert fails.
inline std::string CachedModel(const std::string& name, const std::string& config, const std::string& tokenizer_dir) {
  namespace fs = std::filesystem;
  const std::string path = TestModelDir() + "/" + name + ".coda";
  std::error_code ec;
  fs::create_directories(TestModelDir(), ec);
  const auto converter = fs::last_write_time(Tool("coda-convert"), ec);
  const auto made = fs::last_write_time(path, ec);
  if (!ec && made >= converter) return path;
  std::string cmd = "timeout 300 " + Tool("coda-convert") + " -q --random " + config + " --seed 1 -o " + path;
  if (!tokenizer_dir.empty()) cmd += " --tokenizer " + tokenizer_dir;
  const RunResult r = RunCommand(cmd);
  EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.out;
  return r.exit_code == 0 ? path : "";
}

inline std::string SourceDir() { return DataDir() + "/../.."; }
inline std::string TokenizerDir() { return DataDir() + "/tokenizer/deepseek-v3"; }

// The demo architecture (4 layers, real DeepSeek-V3 tokenizer and chat template): fast enough
// to chat with in a test.
inline std::string DemoModel() {
  return CachedModel("chat-demo-v3", SourceDir() + "/tools/convert/demo/deepseek-v3-demo.json", TokenizerDir());
}

// A tiny model without a tokenizer.
inline std::string NoTokenizerModel() {
  return CachedModel("no-tokenizer", DataDir() + "/configs/fuzz-seed.json", "");
}

}  // namespace coda::test
