// The checked kinds of option value: what each accepts, and the one wording of its refusal.
#include "coda/cli/values.h"

#include <gtest/gtest.h>

namespace coda::cli {
namespace {

std::string Error(const Status& s) { return s.ok() ? "(accepted)" : s.message(); }

TEST(Values, WholeNumbersAreDigitsInRange) {
  EXPECT_EQ(ParseWholeNumber("0", 0, 10).value(), 0u);
  EXPECT_EQ(ParseWholeNumber("0010", 0, 10).value(), 10u);
  EXPECT_EQ(ParseWholeNumber("18446744073709551615", 0, UINT64_MAX).value(), UINT64_MAX);
  for (const char* bad : {"", "abc", "-1", "+1", " 1", "1 ", "1.0", "1e3", "0x10", "11", "99999999999999999999999"})
    EXPECT_EQ(Error(ParseWholeNumber(bad, 0, 10).status()), "'" + std::string(bad) + "' is not a whole number from 0 to 10")
        << bad;
  EXPECT_FALSE(ParseWholeNumber("18446744073709551616", 0, UINT64_MAX).ok());
  EXPECT_EQ(Error(ParseWholeNumber("0", 1, 4).status()), "'0' is not a whole number from 1 to 4");
}

TEST(Values, NumbersAreFiniteAndInsideTheirInterval) {
  const Interval half_open{0, 1, true, false};
  EXPECT_EQ(half_open.Text(), "(0, 1]");
  EXPECT_EQ((Interval{0, 1, false, true}.Text()), "[0, 1)");
  EXPECT_EQ((Interval{0.01, 100}.Text()), "[0.01, 100]");
  EXPECT_DOUBLE_EQ(ParseNumber("1", half_open).value(), 1.0);
  EXPECT_DOUBLE_EQ(ParseNumber("0.5", half_open).value(), 0.5);
  EXPECT_DOUBLE_EQ(ParseNumber("5e-1", half_open).value(), 0.5);
  for (const char* bad : {"", "0", "2", "-0.5", "nan", "inf", "-inf", "warm", "0.5x", " 0.5", "1e-400", "1e400"})
    EXPECT_EQ(Error(ParseNumber(bad, half_open).status()), "'" + std::string(bad) + "' is not a number in (0, 1]") << bad;
}

TEST(Values, ListsNameTheBadItem) {
  EXPECT_EQ(ParseWholeNumberList("0,1024,4096", 0, 5000).value(), (std::vector<uint64_t>{0, 1024, 4096}));
  EXPECT_EQ(Error(ParseWholeNumberList("1,a", 0, 9).status()), "'a' (item 2) is not a whole number from 0 to 9");
  EXPECT_EQ(Error(ParseWholeNumberList("1,,2", 0, 9).status()), "'' (item 2) is not a whole number from 0 to 9");
  EXPECT_EQ(Error(ParseWholeNumberList("", 0, 9).status()), "'' (item 1) is not a whole number from 0 to 9");
  EXPECT_EQ(ParseNameList("cpu,,vulkan").value(), (std::vector<std::string>{"cpu", "vulkan"}));
  EXPECT_EQ(Error(ParseNameList(",").status()), "',' is not a comma-separated list of names");
  EXPECT_EQ(Error(ParseNameList("").status()), "'' is not a comma-separated list of names");
}

TEST(Values, ChoicesListTheAlternatives) {
  EXPECT_EQ(ParseChoice("f32", {"bf16", "f32"}).value(), "f32");
  EXPECT_EQ(Error(ParseChoice("int4", {"bf16", "f32"}).status()), "'int4' is not bf16 or f32");
  EXPECT_EQ(Error(ParseChoice("F32", {"a", "b", "c"}).status()), "'F32' is not a, b or c");
}

TEST(Values, NumbersShowAsPeopleWriteThem) {
  EXPECT_EQ(NumberText(0.6f), "0.6");
  EXPECT_EQ(NumberText(0.95f), "0.95");
  EXPECT_EQ(NumberText(1000000), "1000000");
  EXPECT_EQ(NumberText(0.01), "0.01");
  EXPECT_EQ(NumberText(1e-6), "1e-06");
}

TEST(Values, AFloatOptionChecksTheValueItStores) {
  CommandLine cl("prog", "prog: test.");
  float p = 0;
  AddNumber(cl, "--p", &p, "P", "a fraction", {0, 1, false, true});
  // 0.99999999999 is below 1 as a double but rounds to 1 as a float.
  EXPECT_EQ(Error(cl.Parse({"--p", "0.99999999999"})), "--p: '0.99999999999' is not a number in [0, 1)");
  EXPECT_TRUE(cl.Parse({"--p", "0.99999"}).ok());
  EXPECT_FLOAT_EQ(p, 0.99999f);
}

}  // namespace
}  // namespace coda::cli
