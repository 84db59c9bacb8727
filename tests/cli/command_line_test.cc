// The parser every program uses: how it words usage errors, what --help shows, and that CLI11's
// exceptions never leave it.
#include "coda/cli/command_line.h"

#include <gtest/gtest.h>

#include "coda/cli/values.h"

namespace coda::cli {
namespace {

TEST(CommandLine, ReadsFlagsTextsValuesAndPositionals) {
  CommandLine cl("prog", "prog: test.");
  bool json = false, quiet = false;
  std::string out, input;
  uint32_t n = 7;
  cl.Flag("--json", &json, "JSON");
  cl.Flag("-q,--quiet", &quiet, "quiet");
  cl.Text("-o,--output", &out, "PATH", "output");
  AddWholeNumber(cl, "--n", &n, "N", "a count", 1, 10);
  cl.Positional("input", &input);
  ASSERT_TRUE(cl.Parse({"in.txt", "-q", "--output", "x", "--n=3"}).ok());
  EXPECT_FALSE(cl.help_requested());
  EXPECT_FALSE(json);
  EXPECT_TRUE(quiet);
  EXPECT_EQ(out, "x");
  EXPECT_EQ(n, 3u);
  EXPECT_EQ(input, "in.txt");
  EXPECT_TRUE(cl.Given("--quiet"));
  EXPECT_TRUE(cl.Given("-q"));
  EXPECT_TRUE(cl.Given("-o"));
  EXPECT_FALSE(cl.Given("--json"));
}

TEST(CommandLine, TheLastOfARepeatedOptionCounts) {
  CommandLine cl("prog", "prog: test.");
  std::string out;
  cl.Text("-o,--output", &out, "PATH", "output");
  ASSERT_TRUE(cl.Parse({"-o", "a", "--output", "b"}).ok());
  EXPECT_EQ(out, "b");
}

TEST(CommandLine, AValueMayStartWithADash) {
  CommandLine cl("prog", "prog: test.");
  std::string prompt;
  bool quiet = false;
  cl.Text("-p,--prompt", &prompt, "TEXT", "prompt");
  cl.Flag("-q", &quiet, "quiet");
  ASSERT_TRUE(cl.Parse({"-p", "-q"}).ok());
  EXPECT_EQ(prompt, "-q");
  EXPECT_FALSE(quiet);
  ASSERT_TRUE(cl.Parse({"--prompt", ""}).ok());
  EXPECT_EQ(prompt, "");
  EXPECT_TRUE(cl.Given("--prompt"));
}

TEST(CommandLine, UsageErrorsNameTheOptionAndTheValue) {
  auto parse = [](std::vector<std::string> args) {
    CommandLine cl("prog", "prog: test.");
    std::string out, input;
    uint32_t n = 1;
    cl.Text("-o,--output", &out, "PATH", "output");
    AddWholeNumber(cl, "-n,--count", &n, "N", "a count", 1, 10);
    cl.Positional("input", &input);
    const Status s = cl.Parse(args);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    return s.message();
  };
  EXPECT_EQ(parse({"--frobnicate"}), "unknown option '--frobnicate'");
  EXPECT_EQ(parse({"-x"}), "unknown option '-x'");
  EXPECT_EQ(parse({"a", "b"}), "unexpected argument 'b'");
  EXPECT_EQ(parse({"-o"}), "--output needs a value");
  EXPECT_EQ(parse({"--count", "abc"}), "--count: 'abc' is not a whole number from 1 to 10");
  EXPECT_EQ(parse({"-n", "11"}), "--count: '11' is not a whole number from 1 to 10");
  EXPECT_EQ(parse({"-n", "-1"}), "--count: '-1' is not a whole number from 1 to 10");
  CommandLine cl("prog", "prog: test.");
  bool json = false;
  cl.Flag("--json", &json, "JSON");
  EXPECT_EQ(cl.Parse({"--json=abc"}).message(), "--json: 'abc' is not true or false");
  EXPECT_TRUE(cl.Parse({"--json=false"}).ok());
  EXPECT_FALSE(json);
}

TEST(CommandLine, HelpListsEveryOptionWithItsDefault) {
  CommandLine cl("prog", "prog: does things.\n\nUsage: prog [options] INPUT\n", "Notes after.\n");
  bool flag = false;
  std::string text = "dflt", input;
  uint32_t n = 5;
  cl.Flag("--flag", &flag, "a flag");
  cl.Text("-t,--text", &text, "TEXT", "some text");
  AddWholeNumber(cl, "--n", &n, "N", "a count", 0, 9).DefaultText("five");
  cl.Positional("input", &input);
  ASSERT_TRUE(cl.Parse({"--flag", "-h", "--text", "x"}).ok());
  EXPECT_TRUE(cl.help_requested());
  const std::string help = cl.Help();
  EXPECT_EQ(help,
            "prog: does things.\n"
            "\n"
            "Usage: prog [options] INPUT\n"
            "\n"
            "Options:\n"
            "  --flag           a flag\n"
            "  -t, --text TEXT  some text (default: dflt)\n"
            "  --n N            a count (default: five)\n"
            "  -h, --help       this help\n"
            "\n"
            "Notes after.\n");
  EXPECT_EQ(help.find("input"), std::string::npos) << "positionals belong to the usage lines";
  // -h wins over the rest of the line, whatever it holds.
  CommandLine bad("prog", "prog: test.");
  ASSERT_TRUE(bad.Parse({"--frobnicate", "--help"}).ok());
  EXPECT_TRUE(bad.help_requested());
}

TEST(CommandLine, LongHelpTextsWrapUnderTheirColumn) {
  CommandLine cl("prog", "prog: test.");
  std::string s;
  const std::string words = "word word word word word word word word word word word word word word word word word "
                            "word word word word word word word word word word word word end";
  cl.Text("--long", &s, "X", words);
  const std::string help = cl.Help();
  size_t lines = 0;
  for (size_t at = help.find("  --long X"); at < help.size();) {
    const size_t nl = help.find('\n', at);
    EXPECT_LE(nl - at, 100u) << help;
    ++lines;
    at = nl + 1;
    if (help.compare(at, 14, std::string(14, ' ')) != 0) break;  // the next option
  }
  EXPECT_EQ(lines, 2u) << help;
  // The column is that of the widest option, "-h, --help".
  EXPECT_NE(help.find("\n" + std::string(14, ' ') + "word"), std::string::npos) << help;
}

TEST(CommandLine, ADeclarationCLI11RefusesIsReportedNotThrown) {
  CommandLine cl("prog", "prog: test.");
  bool a = false, b = false;
  cl.Flag("--same", &a, "first");
  cl.Flag("--same", &b, "second");
  const Status s = cl.Parse({});
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_NE(s.message().find("--same"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace coda::cli
