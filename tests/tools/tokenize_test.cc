// coda-tokenize end to end: ids and text against the tokenizer reference cases, chat rendering,
// JSON-lines batches, and the ways input can be wrong.
#include <gtest/gtest.h>

#include <sstream>

#include "../apps/test_models.h"
#include "../common/test_util.h"

namespace coda {
namespace {

using nlohmann::json;
using test::RunCommand;
using test::RunResult;
using test::TempDir;
using test::Tool;

json Cases() { return json::parse(test::ReadFile(test::TokenizerDir() + "/cases.json")); }

// Runs coda-tokenize with `args`, `input` on stdin (through a file, so bytes go in unchanged).
RunResult Tokenize(const TempDir& dir, const std::string& args, const std::string& input) {
  const std::string in = dir / "stdin";
  test::WriteFile(in, input);
  return RunCommand("timeout 120 " + Tool("coda-tokenize") + " " + args + " < " + in);
}

std::string ByDir() { return "--tokenizer " + test::TokenizerDir(); }

TEST(Tokenize, EncodesLikeTheReference) {
  TempDir dir;
  const json cases = Cases();
  const std::string model = test::DemoModel();
  ASSERT_FALSE(model.empty());
  // A few through stdin, from the model file and from the directory.
  for (size_t i : {0, 3, 4}) {
    const json& c = cases["texts"][i];
    for (const std::string& src : {"-m " + model, ByDir()}) {
      const RunResult r = Tokenize(dir, src, c["text"].get<std::string>());
      ASSERT_EQ(r.exit_code, 0) << r.out;
      EXPECT_EQ(json::parse(r.out), c["ids"]) << c["text"];
    }
  }
  // Every case in one --batch run.
  std::string lines;
  for (const json& c : cases["texts"]) lines += json{{"text", c["text"]}}.dump() + "\n";
  const RunResult r = Tokenize(dir, "-m " + model + " --batch", lines);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::istringstream out(r.out);
  std::string line;
  size_t n = 0;
  while (std::getline(out, line)) {
    ASSERT_LT(n, cases["texts"].size());
    EXPECT_EQ(json::parse(line), json({{"ids", cases["texts"][n]["ids"]}})) << cases["texts"][n]["text"];
    ++n;
  }
  EXPECT_EQ(n, cases["texts"].size());
}

TEST(Tokenize, TextArgumentAndSpecialTokens) {
  TempDir dir;
  const RunResult plain = Tokenize(dir, ByDir() + " --text 'Hello, my dog is cute'", "");
  ASSERT_EQ(plain.exit_code, 0) << plain.out;
  EXPECT_EQ(json::parse(plain.out), json({19923, 14, 1026, 6397, 344, 33125}));
  // --add-special adds BOS, as AutoTokenizer does for DeepSeek-V3.
  const RunResult bos = Tokenize(dir, ByDir() + " --add-special --text 'Hello, my dog is cute'", "");
  ASSERT_EQ(bos.exit_code, 0) << bos.out;
  EXPECT_EQ(json::parse(bos.out), json({0, 19923, 14, 1026, 6397, 344, 33125}));
}

TEST(Tokenize, Decodes) {
  TempDir dir;
  const json cases = Cases();
  for (size_t i : {0, 3, 10}) {
    const json& c = cases["texts"][i];
    const RunResult r = Tokenize(dir, ByDir() + " --decode", c["ids"].dump());
    ASSERT_EQ(r.exit_code, 0) << r.out;
    EXPECT_EQ(r.out, c["decoded"].get<std::string>());  // byte for byte: no newline added in a pipe
  }
  // Special tokens are kept unless asked otherwise.
  EXPECT_EQ(Tokenize(dir, ByDir() + " --decode", "[0, 23166]").out, "<｜begin▁of▁sentence｜>Hi");
  EXPECT_EQ(Tokenize(dir, ByDir() + " --decode --skip-special", "[0, 23166]").out, "Hi");

  RunResult bad = Tokenize(dir, ByDir() + " --decode", "[1, \"two\"]");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.out.find("item 1 (\"two\") is not a token id"), std::string::npos) << bad.out;
  bad = Tokenize(dir, ByDir() + " --decode", "[5000000]");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.out.find("5000000"), std::string::npos) << bad.out;
  bad = Tokenize(dir, ByDir() + " --decode", "1, 2");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.out.find("JSON array"), std::string::npos) << bad.out;
}

TEST(Tokenize, RendersChatsLikeTheReference) {
  TempDir dir;
  const json cases = Cases();
  const std::string model = test::DemoModel();
  ASSERT_FALSE(model.empty());
  // Two through --chat (text from the model file, ids from the directory), all in one batch.
  for (size_t i : {1, 2}) {
    const json& c = cases["chats"][i];
    SCOPED_TRACE("chats[" + std::to_string(i) + "]");
    const std::string file = dir / ("chat" + std::to_string(i) + ".json");
    test::WriteFile(file, c["messages"].dump());
    const std::string gen = c["add_generation_prompt"].get<bool>() ? " --add-generation-prompt" : "";
    RunResult r = RunCommand(Tool("coda-tokenize") + " -m " + model + " --chat " + file + gen);
    ASSERT_EQ(r.exit_code, 0) << r.out;
    EXPECT_EQ(r.out, c["rendered"].get<std::string>());
    r = RunCommand(Tool("coda-tokenize") + " " + ByDir() + " --chat " + file + gen + " --ids");
    ASSERT_EQ(r.exit_code, 0) << r.out;
    EXPECT_EQ(json::parse(r.out), c["ids"]);
  }
  std::string lines;
  for (const json& c : cases["chats"])
    lines += json{{"messages", c["messages"]}, {"add_generation_prompt", c["add_generation_prompt"]}}.dump() + "\n";
  const RunResult batch = Tokenize(dir, "-m " + model + " --batch", lines);
  ASSERT_EQ(batch.exit_code, 0) << batch.out;
  std::istringstream out(batch.out);
  size_t n = 0;
  for (std::string line; std::getline(out, line); ++n) {
    ASSERT_LT(n, cases["chats"].size());
    EXPECT_EQ(json::parse(line), json({{"ids", cases["chats"][n]["ids"]}, {"rendered", cases["chats"][n]["rendered"]}}))
        << "chats[" << n << "]";
  }
  EXPECT_EQ(n, cases["chats"].size());
  // From stdin, as {"messages": ..., "add_generation_prompt": ...}.
  const json& c = cases["chats"][1];
  const RunResult r = Tokenize(dir, "-m " + model + " --chat -",
                               json{{"messages", c["messages"]}, {"add_generation_prompt", true}}.dump());
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(r.out, c["rendered"].get<std::string>());

  // Errors: not messages, and what the template itself refuses.
  RunResult bad = Tokenize(dir, ByDir() + " --chat -", "{\"role\": \"user\"}");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.out.find("array of messages"), std::string::npos) << bad.out;
  bad = Tokenize(dir, ByDir() + " --chat -", "[{\"role\": \"user\"}]");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.out.find("chat template"), std::string::npos) << bad.out;
}

TEST(Tokenize, BatchAnswersEveryLineAndReportsErrorsInPlace) {
  TempDir dir;
  const json cases = Cases();
  const json& chat = cases["chats"][0];
  std::string in;
  in += json{{"text", "Hello, my dog is cute"}}.dump() + "\n";
  in += "this is not json\n";
  in += json{{"messages", chat["messages"]}, {"add_generation_prompt", true}}.dump() + "\n";
  in += "\n";  // blank lines are skipped
  in += json{{"text", 42}}.dump() + "\n";
  in += json{{"messages", {{{"role", "user"}}}}}.dump() + "\n";  // the template cannot render it
  in += json{{"text", "x"}, {"add_special_tokens", true}}.dump() + "\n";
  const RunResult r = Tokenize(dir, ByDir() + " --batch", in);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::vector<json> out;
  std::istringstream s(r.out);
  for (std::string line; std::getline(s, line);) out.push_back(json::parse(line));
  ASSERT_EQ(out.size(), 6u) << r.out;
  EXPECT_EQ(out[0], json({{"ids", {19923, 14, 1026, 6397, 344, 33125}}}));
  EXPECT_TRUE(out[1].contains("error")) << out[1];
  EXPECT_EQ(out[2]["rendered"], chat["rendered"]);
  EXPECT_EQ(out[2]["ids"], chat["ids"]);
  EXPECT_NE(out[3]["error"].get<std::string>().find("\"text\" must be a string"), std::string::npos) << out[3];
  EXPECT_NE(out[4]["error"].get<std::string>().find("chat template"), std::string::npos) << out[4];
  EXPECT_EQ(out[5]["ids"], json({0, 90}));
}

TEST(Tokenize, InvalidUtf8NamesTheByteOffset) {
  TempDir dir;
  const RunResult r = Tokenize(dir, ByDir(), std::string("caf\xc3\xa9 ok \xff\xfe"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("not valid UTF-8 at byte offset 9"), std::string::npos) << r.out;
  // In a batch the line fails alone.
  const RunResult b = Tokenize(dir, ByDir() + " --batch", "{\"text\": \"\xff\"}\n{\"text\": \"ok\"}\n");
  EXPECT_EQ(b.exit_code, 0) << b.out;
  EXPECT_NE(b.out.find("{\"error\":"), std::string::npos) << b.out;
  EXPECT_NE(b.out.find("{\"ids\":[633]}"), std::string::npos) << b.out;
}

// JSON nested 300,000 deep (it crashed each path) is refused with the depth, and a batch goes on.
TEST(Tokenize, DeepJsonIsRefusedEverywhere) {
  TempDir dir;
  const std::string deep = std::string(300000, '[') + std::string(300000, ']');
  RunResult r = Tokenize(dir, ByDir() + " --decode", deep);
  EXPECT_EQ(r.exit_code, 1) << r.out.substr(0, 300);
  EXPECT_NE(r.out.find("nested deeper than 64 levels"), std::string::npos) << r.out.substr(0, 300);
  r = Tokenize(dir, ByDir() + " --chat -", deep);
  EXPECT_EQ(r.exit_code, 1) << r.out.substr(0, 300);
  EXPECT_NE(r.out.find("stdin: nested deeper than 64 levels"), std::string::npos) << r.out.substr(0, 300);
  r = Tokenize(dir, ByDir() + " --batch", "{\"text\": \"x\"}\n{\"text\": " + deep + "}\n{\"text\": \"ok\"}\n");
  EXPECT_EQ(r.exit_code, 0) << r.out.substr(0, 300);
  std::vector<json> out;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) out.push_back(json::parse(line));
  ASSERT_EQ(out.size(), 3u) << r.out.substr(0, 300);
  EXPECT_EQ(out[1]["error"], "the line: nested deeper than 64 levels");
  EXPECT_EQ(out[2]["ids"], json({633}));
}

TEST(Tokenize, MissingTokenizerIsAClearError) {
  TempDir dir;
  const std::string model = test::NoTokenizerModel();
  ASSERT_FALSE(model.empty());
  RunResult r = Tokenize(dir, "-m " + model, "hello");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("carries no tokenizer"), std::string::npos) << r.out;
  r = Tokenize(dir, "--tokenizer " + dir.str(), "hello");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("has no tokenizer.json"), std::string::npos) << r.out;
  r = Tokenize(dir, "-m " + dir / "absent.coda", "hello");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("absent.coda"), std::string::npos) << r.out;
}

TEST(Tokenize, UsageErrors) {
  TempDir dir;
  EXPECT_EQ(Tokenize(dir, "", "x").exit_code, 2);                             // no tokenizer source
  EXPECT_EQ(Tokenize(dir, ByDir() + " --decode --batch", "x").exit_code, 2);  // two modes
  EXPECT_EQ(Tokenize(dir, ByDir() + " --ids", "x").exit_code, 2);             // --ids without --chat
  EXPECT_EQ(Tokenize(dir, ByDir() + " --frobnicate", "x").exit_code, 2);
  const RunResult help = Tokenize(dir, "--help", "");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("Usage:"), std::string::npos);
}

}  // namespace
}  // namespace coda
