// A golden checkpoint converted and loaded once per test process (for tests that link the
// runtime and the converter).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "coda/runtime.h"
#include "convert.h"
#include "test_util.h"

namespace coda::test {

// With `offload`, its routed experts are served by an expert store that holds a quarter of
// them (at least one layer's active experts).
inline std::shared_ptr<Model> GoldenModel(const std::string& name, bool offload = false) {
  static std::map<std::string, std::shared_ptr<Model>> cache;
  const std::string key = name + (offload ? "+offload" : "");
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  const std::string path = ::testing::TempDir() + "/golden_" + name + "_" + std::to_string(::getpid()) + ".coda";
  Status s = convert::ConvertCheckpoint(DataDir() + "/golden/" + name + "/hf", path, {});
  EXPECT_TRUE(s.ok()) << s.message();
  ModelLoadOptions lo;
  if (offload) {
    auto f = ModelFile::Open(path);
    EXPECT_TRUE(f.ok()) << f.status().message();
    if (!f.ok()) return nullptr;
    uint64_t experts = 0;
    for (const ExpertBlockRef& b : f->expert_blocks()) experts += b.n_experts;
    lo.offload = ModelLoadOptions::Offload::kOn;
    lo.expert_budget = ExpertStore::SlotBytes(*f) * std::max<uint64_t>(f->config().n_experts_per_tok, experts / 4);
  }
  auto m = Model::Load(path, lo);
  EXPECT_TRUE(m.ok()) << m.status().message();
  std::remove(path.c_str());  // the mapping stays valid
  return cache[key] = m.ok() ? *m : nullptr;
}

}  // namespace coda::test
