// A golden checkpoint converted and loaded once per test process (for tests that link the
// runtime and the converter).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "coda/runtime.h"
#include "convert.h"
#include "test_util.h"

namespace coda::test {

inline std::shared_ptr<Model> GoldenModel(const std::string& name) {
  static std::map<std::string, std::shared_ptr<Model>> cache;
  if (auto it = cache.find(name); it != cache.end()) return it->second;
  const std::string path = ::testing::TempDir() + "/golden_" + name + "_" + std::to_string(::getpid()) + ".coda";
  Status s = convert::ConvertCheckpoint(DataDir() + "/golden/" + name + "/hf", path, {});
  EXPECT_TRUE(s.ok()) << s.message();
  auto m = Model::Load(path);
  EXPECT_TRUE(m.ok()) << m.status().message();
  std::remove(path.c_str());  // the mapping stays valid
  return cache[name] = m.ok() ? *m : nullptr;
}

}  // namespace coda::test
