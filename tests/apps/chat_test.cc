// coda-chat end to end: typed at through a pseudo-terminal like a person would (streamed answer,
// Ctrl-C, /stats, /save, /load, Ctrl-D), and -p mode as scripts use it. The model is the demo
// architecture with random weights, so answers are gibberish; the tests look only at behaviour.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "../common/test_util.h"
#include "pty_process.h"
#include "test_models.h"

namespace coda {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using test::PtyProcess;
using test::RunCommand;
using test::TempDir;
using test::Tool;

constexpr auto kStartup = 120s;  // generous: the machine may be busy with other builds
constexpr auto kStep = 60s;

std::map<std::string, std::string> ChildEnv(const TempDir& dir) {
  // HOME keeps the line history inside the test's directory.
  return {{"HOME", dir.str()}, {"TERM", "xterm"}, {"XDG_STATE_HOME", dir / "state"}};
}

// Starts coda-chat on the demo model and waits for its first prompt; returns where it is.
size_t StartChat(PtyProcess& p, const TempDir& dir, std::vector<std::string> extra) {
  const std::string model = test::DemoModel();
  EXPECT_FALSE(model.empty());
  std::vector<std::string> argv = {Tool("coda-chat"), "-m", model};
  argv.insert(argv.end(), extra.begin(), extra.end());
  EXPECT_TRUE(p.Start(argv, ChildEnv(dir)));
  const size_t banner = p.WaitFor("Ctrl-D quits.", 0, kStartup);
  EXPECT_NE(banner, std::string::npos) << p.output();
  if (banner == std::string::npos) return banner;
  EXPECT_NE(p.output().find("loading " + model + "... done ("), std::string::npos) << p.output();
  return p.WaitFor("> ", banner, kStep);
}

// Waits for the prompt after `from` (keys sent earlier would reach the terminal before the line
// editor takes it over), types `line`, and waits for `expect`; returns where it is, or npos.
size_t Command(PtyProcess& p, size_t from, const std::string& line, const std::string& expect) {
  const size_t prompt = p.WaitFor("> ", from, kStep);
  EXPECT_NE(prompt, std::string::npos) << p.output().substr(std::min(from, p.size()));
  if (prompt == std::string::npos) return prompt;
  EXPECT_TRUE(p.WaitForKeyMode(kStep));
  p.Send(line);
  const size_t at = p.WaitFor(expect, prompt, kStep);
  EXPECT_NE(at, std::string::npos) << "after " << line << ":\n" << p.output().substr(prompt);
  return at;
}

std::string Words(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += "word ";
  return s;
}

TEST(ChatTerminal, StreamsStopsOnCtrlCReportsStatsAndQuitsOnCtrlD) {
  TempDir dir;
  PtyProcess p;
  const size_t prompt = StartChat(p, dir, {"--n-ctx", "4096", "--max-tokens", "4000", "--seed", "7"});
  ASSERT_NE(prompt, std::string::npos) << p.output();

  const size_t echo = Command(p, prompt, "Hello there\r", "Hello there");
  ASSERT_NE(echo, std::string::npos) << p.output();
  // The answer streams: it keeps arriving, read after read, while it is being generated.
  const size_t answer_start = echo + 11;
  const size_t reads = p.reads();
  ASSERT_TRUE(p.WaitForGrowth(answer_start + 80, kStep)) << p.output();
  ASSERT_TRUE(p.WaitForGrowth(p.size() + 40, kStep)) << p.output();
  EXPECT_GE(p.reads() - reads, 2u);
  EXPECT_EQ(p.output().find("[stopped", answer_start), std::string::npos) << "finished before Ctrl-C";

  // Ctrl-C stops it and the prompt comes back.
  p.Send("\x03");
  const size_t stopped = p.WaitFor("[stopped]", answer_start, kStep);
  ASSERT_NE(stopped, std::string::npos) << p.output().substr(answer_start);
  EXPECT_EQ(p.output().find("[stopped at --max-tokens", answer_start), std::string::npos);

  const size_t kv = Command(p, stopped, "/stats\r", "per position)");
  ASSERT_NE(kv, std::string::npos);
  const std::string stats = p.output().substr(stopped, kv - stopped);
  EXPECT_NE(stats.find("prefill: "), std::string::npos) << stats;
  EXPECT_NE(stats.find("decode:  "), std::string::npos) << stats;
  EXPECT_NE(stats.find("tok/s"), std::string::npos) << stats;
  EXPECT_NE(stats.find("/ 4096 positions"), std::string::npos) << stats;
  EXPECT_NE(stats.find("KV cache: "), std::string::npos) << stats;

  // A second turn after the interrupted one reuses the KV cache: its prompt starts with the
  // first turn's.
  size_t at = Command(p, kv, "Go on\r", "Go on");
  ASSERT_NE(at, std::string::npos);
  ASSERT_TRUE(p.WaitForGrowth(at + 60, kStep)) << p.output().substr(at);
  p.Send("\x03");
  at = p.WaitFor("[stopped]", at, kStep);
  ASSERT_NE(at, std::string::npos) << p.output().substr(kv);
  at = Command(p, at, "/stats\r", " reused from the KV cache)");
  ASSERT_NE(at, std::string::npos);
  const size_t comma = p.output().rfind(", ", at);
  ASSERT_NE(comma, std::string::npos);
  EXPECT_GE(std::stoul(p.output().substr(comma + 2, at - comma - 2)), 5u) << p.output().substr(comma, 40);
  at = p.WaitFor("per position)", at, kStep);

  // Ctrl-D on an empty line quits cleanly.
  ASSERT_NE(Command(p, at, "\x04", "\n"), std::string::npos);
  EXPECT_EQ(p.Wait(kStep), 0) << p.output().substr(kv);
}

TEST(ChatTerminal, TooLongPromptLeavesTheSessionUsableAndSaveLoadWork) {
  TempDir dir;
  PtyProcess p;
  const size_t prompt = StartChat(p, dir, {"--n-ctx", "64", "--max-tokens", "4", "--temp", "0"});
  ASSERT_NE(prompt, std::string::npos) << p.output();

  const size_t err = Command(p, prompt, Words(100) + "\r", "more than the context's 64");
  ASSERT_NE(err, std::string::npos);
  size_t at = Command(p, err, "Hi\r", "[stopped at --max-tokens 4]");
  ASSERT_NE(at, std::string::npos);

  const std::string file = dir / "chat.json";
  at = Command(p, at, "/save " + file + "\r", "saved 2 messages");
  ASSERT_NE(at, std::string::npos);
  const json saved = json::parse(test::ReadFile(file));
  ASSERT_EQ(saved.size(), 2u) << saved;  // the refused message is not in it
  EXPECT_EQ(saved[0], json({{"role", "user"}, {"content", "Hi"}}));
  EXPECT_EQ(saved[1]["role"], "assistant");

  ASSERT_NE(at = Command(p, at, "/reset\r", "conversation cleared"), std::string::npos);
  ASSERT_NE(at = Command(p, at, "/load " + file + "\r", "loaded 2 messages"), std::string::npos);
  ASSERT_NE(at = Command(p, at, "/load " + dir / "absent.json\r", "error: "), std::string::npos);
  ASSERT_NE(at = Command(p, at, "/system Be brief.\r", "system prompt set"), std::string::npos);
  ASSERT_NE(at = Command(p, at, "/frobnicate\r", "unknown command '/frobnicate'"), std::string::npos);
  ASSERT_NE(at = Command(p, at, "/help\r", "/save FILE"), std::string::npos);
  ASSERT_NE(at = Command(p, at, "/quit\r", "\n"), std::string::npos);
  EXPECT_EQ(p.Wait(kStep), 0) << p.output().substr(err);
  // The lines went into the history file.
  EXPECT_NE(test::ReadFile(dir / "state/coda/chat_history").find("Hi"), std::string::npos);
}

TEST(ChatTerminal, CtrlCTwiceAtThePromptQuits) {
  TempDir dir;
  PtyProcess p;
  const size_t prompt = StartChat(p, dir, {"--max-tokens", "4"});
  ASSERT_NE(prompt, std::string::npos) << p.output();
  // Ctrl-C on a line with text only drops the line.
  size_t at = Command(p, prompt, "half a thought", "half a thought");
  ASSERT_NE(at, std::string::npos);
  p.Send("\x03");
  // The first Ctrl-C on an empty line only says how to quit.
  at = Command(p, at, "\x03", "Ctrl-C again or Ctrl-D to quit");
  ASSERT_NE(at, std::string::npos);
  EXPECT_EQ(p.output().find("Ctrl-C again"), at) << "the dropped line counted as the first Ctrl-C";
  ASSERT_NE(Command(p, at, "\x03", "\n"), std::string::npos);
  EXPECT_EQ(p.Wait(kStep), 0) << p.output().substr(prompt);
}

// Runs coda-chat without a terminal; stdout and stderr apart.
struct Split {
  int exit_code;
  std::string out, err;
};
Split RunChat(const TempDir& dir, const std::string& args) {
  const std::string out = dir / "stdout", err = dir / "stderr";
  const auto r = RunCommand("(timeout 300 " + Tool("coda-chat") + " " + args + " >" + out + " 2>" + err + ")");
  return {r.exit_code, test::ReadFile(out), test::ReadFile(err)};
}

TEST(ChatPromptMode, AnswersOnceAndExits) {
  TempDir dir;
  const std::string model = test::DemoModel();
  ASSERT_FALSE(model.empty());
  const Split r = RunChat(dir, "-m " + model + " -p 'Say hi' --max-tokens 8 --temp 0 --system 'Be brief.'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
  EXPECT_EQ(r.out.back(), '\n');
  EXPECT_NE(r.err.find("done (377 tensors"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("[stopped at --max-tokens 8]"), std::string::npos) << r.err;
  // Greedy is deterministic.
  EXPECT_EQ(RunChat(dir, "-m " + model + " -p 'Say hi' --max-tokens 8 --temp 0 --system 'Be brief.'").out, r.out);
}

TEST(ChatPromptMode, TooLongPromptFails) {
  TempDir dir;
  const std::string model = test::DemoModel();
  ASSERT_FALSE(model.empty());
  const Split r = RunChat(dir, "-m " + model + " --n-ctx 32 -p '" + Words(50) + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("coda-chat: error: the prompt is "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("more than the context's 32"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST(ChatPromptMode, RefusesModelsItCannotChatWith) {
  TempDir dir;
  const std::string no_tok = test::NoTokenizerModel();
  ASSERT_FALSE(no_tok.empty());
  Split r = RunChat(dir, "-m " + no_tok + " -p hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("carries no tokenizer"), std::string::npos) << r.err;

  // A tokenizer but no chat template.
  const std::string tok_dir = test::TestModelDir() + "/tokenizer-without-template";
  std::filesystem::create_directories(tok_dir);
  std::filesystem::copy_file(test::TokenizerDir() + "/tokenizer.json", tok_dir + "/tokenizer.json",
                             std::filesystem::copy_options::overwrite_existing);
  json config = json::parse(test::ReadFile(test::TokenizerDir() + "/tokenizer_config.json"));
  config.erase("chat_template");
  test::WriteFile(tok_dir + "/tokenizer_config.json", config.dump());
  const std::string no_tmpl = test::CachedModel("no-template", test::DataDir() + "/configs/fuzz-seed.json", tok_dir);
  ASSERT_FALSE(no_tmpl.empty());
  r = RunChat(dir, "-m " + no_tmpl + " -p hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("has no chat template"), std::string::npos) << r.err;

  r = RunChat(dir, "-m " + dir / "absent.coda" + " -p hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("absent.coda"), std::string::npos) << r.err;
}

TEST(ChatPromptMode, HelpFitsOneScreenAndBadFlagsAreUsageErrors) {
  TempDir dir;
  const Split help = RunChat(dir, "--help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_LE(std::count(help.out.begin(), help.out.end(), '\n'), 24) << help.out;
  for (const char* flag : {"--temp", "--top-p", "--top-k", "--min-p", "--repeat-penalty", "--seed", "--n-ctx",
                           "--max-tokens", "--backend", "--system", "-p"})
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  EXPECT_EQ(RunChat(dir, "").exit_code, 2);
  EXPECT_EQ(RunChat(dir, "-m x.coda --frobnicate").exit_code, 2);
  EXPECT_EQ(RunChat(dir, "-m x.coda --temp warm").exit_code, 2);
  EXPECT_EQ(RunChat(dir, "-m x.coda --top-p 2").exit_code, 2);
  EXPECT_EQ(RunChat(dir, "-m x.coda --n-ctx 0").exit_code, 2);
  const Split bad = RunChat(dir, "-m x.coda --max-tokens -3");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--max-tokens"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace coda
