// coda-bench end to end on the small golden model: the JSON it prints (every decode depth with
// its own bandwidth figure and fraction of the bound) and its errors. Speed itself is not
// tested here: it belongs to the benchmark, not to a unit test.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "../common/test_util.h"

namespace coda {
namespace {

using test::RunCommand;
using test::TempDir;
using test::Tool;

TEST(Bench, ReportsEveryDepthAgainstABandwidthMeasuredAroundIt) {
  TempDir dir;
  const std::string model = dir / "m.coda";
  auto r = RunCommand(Tool("coda-convert") + " " + test::DataDir() + "/golden/v3-fp8/hf -o " + model);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = RunCommand("timeout 300 " + Tool("coda-bench") + " -m " + model + " --pp 8 --tg 3 --depths 0,20 --repetitions 3 --json");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["pp"]["tokens"], 8);
  EXPECT_GT(j["pp"]["tokens_per_s"].get<double>(), 0);
  ASSERT_EQ(j["tg"].size(), 2u);
  double highest = 0;
  for (size_t i = 0; i < 2; ++i) {
    const auto& t = j["tg"][i];
    EXPECT_EQ(t["depth"], i == 0 ? 0 : 20);
    EXPECT_EQ(t["tokens"], 3);
    const double bw = t["bandwidth_gbs"].get<double>(), achieved = t["achieved_gbs"].get<double>();
    EXPECT_GT(bw, 0);
    EXPECT_NEAR(t["fraction_of_bound"].get<double>(), achieved / bw, 1e-9);
    // The median of the repetitions, between the slowest and the fastest.
    EXPECT_EQ(t["repetitions"], 3);
    EXPECT_LE(t["tokens_per_s_min"].get<double>(), t["tokens_per_s"].get<double>());
    EXPECT_GE(t["tokens_per_s_max"].get<double>(), t["tokens_per_s"].get<double>());
    EXPECT_GE(t["voluntary_switches_per_token"].get<double>(), 0);
    EXPECT_GE(t["involuntary_switches_per_token"].get<double>(), 0);
    // Bytes per token: the active weights plus the cache rows read, which grow with depth.
    EXPECT_GT(t["bytes_per_token"].get<double>(), j["active_weight_bytes"].get<double>());
    highest = std::max(highest, bw);
  }
  EXPECT_GT(j["tg"][1]["bytes_per_token"].get<double>(), j["tg"][0]["bytes_per_token"].get<double>());
  EXPECT_GE(j["bandwidth_gbs"].get<double>(), highest);
}

TEST(Bench, BadArgumentsFailWithOneLine) {
  for (const std::string args : {"", "-m /nonexistent.coda", "-m x --tg 0", "-m x --depths 1,a", "-m x --repetitions 0", "--frobnicate"}) {
    const auto r = RunCommand(Tool("coda-bench") + " " + args);
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_NE(r.out.find("coda-bench"), std::string::npos) << args << ": " << r.out;
  }
}

}  // namespace
}  // namespace coda
