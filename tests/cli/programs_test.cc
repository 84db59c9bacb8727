// Every program's command line, run for real: --help shows each option's default, and a bad value
// of a shared option gets the same one-line refusal, exit status 2, from every program that has
// the option (and "unknown option" from the others).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../common/test_util.h"

namespace coda {
namespace {

const std::vector<std::string> kPrograms = {"coda-convert",    "coda-inspect",   "coda-logits",
                                            "coda-bench",      "coda-tokenize",  "coda-conformance",
                                            "coda-chat",       "coda-tokenize-bench"};

// Runs a program; exit status and stderr alone.
test::RunResult Stderr(const std::string& program, const std::string& args) {
  return test::RunCommand("(" + test::Tool(program) + " " + args + " >/dev/null)");
}

std::string Help(const std::string& program) {
  const test::RunResult r = test::RunCommand(test::Tool(program) + " --help");
  EXPECT_EQ(r.exit_code, 0) << program << ": " << r.out;
  return r.out;
}

bool HasOption(const std::string& help, const std::string& option) {
  return help.find("\n  " + option + " ") != std::string::npos || help.find(", " + option + " ") != std::string::npos;
}

std::string Refusal(const std::string& program, const std::string& message) {
  return program + ": " + message + "\nTry '" + program + " --help'.\n";
}

TEST(Programs, HelpShowsUsageOptionsAndDefaults) {
  for (const std::string& p : kPrograms) {
    const std::string help = Help(p);
    EXPECT_EQ(help.rfind(p + ": ", 0), 0u) << help;
    EXPECT_NE(help.find("Usage:"), std::string::npos) << help;
    EXPECT_NE(help.find("\nOptions:\n"), std::string::npos) << help;
    EXPECT_NE(help.find("  -h, --help"), std::string::npos) << help;
    if (HasOption(help, "--threads")) {
      EXPECT_NE(help.find("1 to 1024; 0: one per core (default: 0)"), std::string::npos) << p;
    }
    if (HasOption(help, "--backend")) {
      EXPECT_NE(help.find("(default: cpu)"), std::string::npos) << p;
    }
  }
}

TEST(Programs, EveryProgramRefusesThreadsAbcInTheSameWords) {
  int with_threads = 0;
  for (const std::string& p : kPrograms) {
    const bool has = HasOption(Help(p), "--threads");
    with_threads += has;
    const test::RunResult r = Stderr(p, "--threads abc");
    EXPECT_EQ(r.exit_code, 2) << p << ": " << r.out;
    EXPECT_EQ(r.out, Refusal(p, has ? "--threads: 'abc' is not a whole number from 0 to 1024"
                                    : "unknown option '--threads'"));
  }
  EXPECT_EQ(with_threads, 3) << "coda-logits, coda-bench and coda-chat take --threads";
}

TEST(Programs, SharedOptionsAreRefusedInTheSameWordsEverywhere) {
  struct Case {
    std::string option, args, message;
  };
  const std::vector<Case> cases = {
      {"--threads", "--threads -1", "--threads: '-1' is not a whole number from 0 to 1024"},
      {"--threads", "--threads 99999999999", "--threads: '99999999999' is not a whole number from 0 to 1024"},
      {"--kv-dtype", "--kv-dtype f16", "--kv-dtype: 'f16' is not bf16 or f32"},
      {"--backend", "--backend ,", "--backend: ',' is not a comma-separated list of names"},
      {"--seed", "--seed x", "--seed: 'x' is not a whole number from 0 to 18446744073709551615"},
      {"--n-ctx", "--n-ctx 0", "--n-ctx: '0' is not a whole number from 1 to 1048576"},
      {"--temp", "--temp nan", "--temp: 'nan' is not 0 (greedy) or a number in [0.01, 100]"},
      {"--temp", "--temp 1e-45", "--temp: '1e-45' is not 0 (greedy) or a number in [0.01, 100]"},
      {"--top-p", "--top-p 2", "--top-p: '2' is not a number in (0, 1]"},
      {"--model", "--model", "--model needs a value"},
  };
  for (const std::string& p : kPrograms) {
    const std::string help = Help(p);
    for (const Case& c : cases) {
      if (!HasOption(help, c.option)) continue;
      const test::RunResult r = Stderr(p, c.args);
      EXPECT_EQ(r.exit_code, 2) << p << " " << c.args;
      EXPECT_EQ(r.out, Refusal(p, c.message)) << p << " " << c.args;
    }
    const test::RunResult r = Stderr(p, "--frobnicate");
    EXPECT_EQ(r.exit_code, 2) << p;
    EXPECT_EQ(r.out, Refusal(p, "unknown option '--frobnicate'"));
  }
}

}  // namespace
}  // namespace coda
