// The chat's parts without a terminal: reasoning splitting, the conversation and its files, and
// KV-cache reuse across turns (checked against the tokens the session actually runs).
#include <gtest/gtest.h>

#include <atomic>

#include "../common/test_util.h"
#include "coda/model_file.h"
#include "coda_cpu_backend.h"
#include "conversation.h"
#include "reasoning.h"
#include "test_models.h"
#include "turn.h"

namespace coda::chat {
namespace {

using nlohmann::ordered_json;

// Feeds `chunks` one by one and returns (reasoning, answer) and the pieces in order.
struct Split {
  std::string reasoning, answer;
  std::vector<Piece> pieces;
};
Split RunSplitter(const std::vector<std::string>& chunks, bool opened = false) {
  ReasoningSplitter s(opened);
  Split out;
  for (const auto& c : chunks) s.Feed(c, &out.pieces);
  s.Finish(&out.pieces);
  out.reasoning = s.reasoning();
  out.answer = s.answer();
  return out;
}

TEST(ReasoningSplitter, SeparatesThinkBlocks) {
  const Split a = RunSplitter({"<think>\nLet me see.\n</think>\n\nThe answer is 4."});
  EXPECT_EQ(a.reasoning, "Let me see.");
  EXPECT_EQ(a.answer, "The answer is 4.");
  ASSERT_EQ(a.pieces.size(), 2u);
  EXPECT_EQ(a.pieces[0].part, Part::kReasoning);
  EXPECT_EQ(a.pieces[1].part, Part::kAnswer);
}

TEST(ReasoningSplitter, TagsSplitAcrossTokens) {
  const Split a = RunSplitter({"<", "thi", "nk>", "Hmm", ", 2+2", "</", "thi", "nk", ">", "Four", " it", " is", "\n"});
  EXPECT_EQ(a.reasoning, "Hmm, 2+2");
  EXPECT_EQ(a.answer, "Four it is");
  // Nothing of a tag leaks into what is shown.
  for (const Piece& p : a.pieces) EXPECT_EQ(p.text.find('<'), std::string::npos) << p.text;
}

TEST(ReasoningSplitter, PlainAnswersAndLookalikes) {
  EXPECT_EQ(RunSplitter({"Hello", " world"}).answer, "Hello world");
  EXPECT_TRUE(RunSplitter({"Hello"}).reasoning.empty());
  // A '<' that does not become a tag is text, even when it comes first or last.
  EXPECT_EQ(RunSplitter({"<", "b>bold"}).answer, "<b>bold");
  EXPECT_EQ(RunSplitter({"a <", "/thi"}).answer, "a </thi");
  EXPECT_EQ(RunSplitter({"<thi"}).answer, "<thi");
  // <think> later in an answer is not reasoning.
  const Split late = RunSplitter({"Use <think> tags."});
  EXPECT_EQ(late.answer, "Use <think> tags.");
  EXPECT_TRUE(late.reasoning.empty());
}

TEST(ReasoningSplitter, PromptThatOpensReasoning) {
  // Templates that end the prompt in <think> leave the model reasoning from its first token.
  const Split a = RunSplitter({"\nfirst thoughts", "\n</think>", "\n\nanswer"}, /*opened=*/true);
  EXPECT_EQ(a.reasoning, "first thoughts");
  EXPECT_EQ(a.answer, "answer");
  // Cut off while reasoning (Ctrl-C): what came is reasoning, there is no answer.
  const Split cut = RunSplitter({"still thinking </th"}, /*opened=*/true);
  EXPECT_EQ(cut.reasoning, "still thinking </th");
  EXPECT_TRUE(cut.answer.empty());
  EXPECT_TRUE(PromptOpensReasoning("<｜Assistant｜><think>\n"));
  EXPECT_FALSE(PromptOpensReasoning("<｜Assistant｜></think>"));
  EXPECT_FALSE(PromptOpensReasoning("<｜Assistant｜>"));
}

TEST(ReasoningSplitter, InnerWhitespaceIsKept) {
  const Split a = RunSplitter({"line one\n", "\n", "line two ", " ", "end\n\n"});
  EXPECT_EQ(a.answer, "line one\n\nline two  end");
}

// Text assets of the real DeepSeek-V3 tokenizer directory.
const text::TextAssets& Assets() {
  static const text::TextAssets* assets = [] {
    auto a = text::LoadTextAssetsFromDir(test::TokenizerDir());
    EXPECT_TRUE(a.ok()) << a.status().message();
    return new text::TextAssets(std::move(*a));
  }();
  return *assets;
}

TEST(Conversation, RendersWithTheSystemPromptFirst) {
  Conversation c(Assets());
  c.set_system("You are helpful.");
  c.AddUser("Hi");
  c.AddAssistant("Hello!", "the user greets me");
  c.AddUser("2+2?");
  auto r = c.Render(true);
  ASSERT_TRUE(r.ok()) << r.status().message();
  // The same prompt as the reference case (reasoning is not shown to the model again).
  const auto cases = ordered_json::parse(test::ReadFile(test::TokenizerDir() + "/cases.json"));
  EXPECT_EQ(*r, cases["chats"][1]["rendered"].get<std::string>());
  const ordered_json m = c.Messages();
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[0]["role"], "system");
  EXPECT_EQ(m[2]["reasoning_content"], "the user greets me");
  c.PopLast();
  EXPECT_EQ(c.size(), 2u);
  c.Clear();
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.system(), "You are helpful.");
}

TEST(Conversation, SaveAndLoadRoundTrip) {
  test::TempDir dir;
  Conversation c(Assets());
  c.set_system("Be brief.");
  c.AddUser("Bonjour");
  c.AddAssistant("Salut", "");
  ASSERT_TRUE(c.SaveFile(dir / "chat.json").ok());
  Conversation d(Assets());
  const Status s = d.LoadFile(dir / "chat.json");
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(d.system(), "Be brief.");
  EXPECT_EQ(d.Messages(), c.Messages());
  EXPECT_EQ(*d.Render(true), *c.Render(true));
}

TEST(Conversation, LoadRefusesBadInputAndKeepsWhatItHad) {
  test::TempDir dir;
  Conversation c(Assets());
  c.AddUser("keep me");
  auto fails = [&](const std::string& text, const std::string& why) {
    test::WriteFile(dir / "bad.json", text);
    const Status s = c.LoadFile(dir / "bad.json");
    EXPECT_FALSE(s.ok()) << text;
    EXPECT_NE(s.message().find(why), std::string::npos) << s.message();
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(c.Messages()[0]["content"], "keep me");
  };
  fails("not json", "not valid JSON");
  fails(std::string(300000, '[') + std::string(300000, ']'), "nested deeper than 64 levels");
  fails("{\"role\": \"user\"}", "array of messages");
  fails("[{\"role\": \"wizard\", \"content\": \"x\"}]", "role 'wizard'");
  fails("[{\"role\": \"user\", \"content\": 3}]", "\"content\"");
  fails("[{\"content\": \"x\"}]", "\"role\"");
  EXPECT_FALSE(c.LoadFile(dir / "absent.json").ok());
  // {"messages": [...]} is accepted too.
  test::WriteFile(dir / "ok.json", "{\"messages\": [{\"role\": \"user\", \"content\": \"new\"}]}");
  ASSERT_TRUE(c.LoadFile(dir / "ok.json").ok());
  EXPECT_EQ(c.Messages()[0]["content"], "new");
}

// A session on the demo model, and the number of tokens its forward passes run.
struct Bench {
  std::unique_ptr<Context> context;
  std::shared_ptr<Model> model;
  std::unique_ptr<Session> session;
  std::unique_ptr<text::TextAssets> assets;
  size_t tokens_run = 0;

  explicit Bench(uint32_t n_ctx) {
    const std::string path = test::DemoModel();
    if (path.empty()) return;
    ContextOptions co;
    co.backends = {coda_cpu_backend_entry};
    context = std::move(Context::Create(co).value());
    auto m = Model::Load(path);
    EXPECT_TRUE(m.ok()) << m.status().message();
    if (!m.ok()) return;
    model = *m;
    auto a = text::LoadTextAssets(model->file());
    EXPECT_TRUE(a.ok()) << a.status().message();
    assets = std::make_unique<text::TextAssets>(std::move(*a));
    SessionOptions so;
    so.n_ctx = n_ctx;
    session = std::move(Session::Create(*context, model, so).value());
    // The embedding node sees every token a forward pass runs.
    session->set_observer([this](const GraphNode& node, std::span<const coda_tensor> out) {
      if (node.op == CODA_OP_EMBED) tokens_run += out[0].shape[0];
    });
  }
  bool ok() const { return session != nullptr; }
};

std::vector<int32_t> Encode(const text::TextAssets& a, const std::string& rendered) {
  auto ids = text::EncodePrompt(a, rendered);
  EXPECT_TRUE(ids.ok()) << ids.status().message();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

TEST(PromptCache, RewindsToTheCommonPrefix) {
  Bench b(256);
  ASSERT_TRUE(b.ok());
  PromptCache cache(*b.session);
  const std::vector<int32_t> a = {0, 10, 11, 12, 13};
  auto n = cache.Reuse(a);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  ASSERT_TRUE(b.session->Forward(a).ok());
  ASSERT_TRUE(cache.Append(a).ok());
  // Extending the prompt reuses all of it.
  std::vector<int32_t> longer = a;
  longer.insert(longer.end(), {20, 21});
  EXPECT_EQ(*cache.Reuse(longer), 5u);
  EXPECT_EQ(b.session->n_past(), 5u);
  // The same prompt again: its last token must run again to give logits.
  EXPECT_EQ(*cache.Reuse(a), 4u);
  EXPECT_EQ(b.session->n_past(), 4u);
  EXPECT_EQ(cache.tokens().size(), 4u);
  // A prompt that differs at position 2 keeps two.
  EXPECT_EQ(*cache.Reuse(std::vector<int32_t>{0, 10, 99, 12}), 2u);
  EXPECT_EQ(b.session->n_past(), 2u);
  EXPECT_FALSE(cache.Reuse({}).ok());
  // Bookkeeping that disagrees with the session is refused.
  EXPECT_FALSE(cache.Append(a).ok());
  cache.Clear();
  EXPECT_EQ(b.session->n_past(), 0u);
}

// The conversation's second turn runs only the tokens the first one did not: the end of the
// first answer and the new user message.
TEST(PromptCache, SecondTurnPrefillsOnlyTheNewTokens) {
  Bench b(256);
  ASSERT_TRUE(b.ok());
  const text::TextAssets& a = *b.assets;
  Conversation conv(a);
  PromptCache cache(*b.session);
  conv.set_system("You are helpful.");
  conv.AddUser("Hi");
  const std::vector<int32_t> t1 = Encode(a, *conv.Render(true));
  ASSERT_EQ(*cache.Reuse(t1), 0u);
  ASSERT_TRUE(b.session->Forward(t1).ok());
  ASSERT_TRUE(cache.Append(t1).ok());
  // The model "answers" Hello! (run token by token, as generation does).
  const std::vector<int32_t> answer = Encode(a, "Hello!");
  for (int32_t t : answer) {
    const int32_t one[1] = {t};
    ASSERT_TRUE(b.session->Forward(one).ok());
    ASSERT_TRUE(cache.Append(one).ok());
  }
  conv.AddAssistant("Hello!", "");
  conv.AddUser("2+2?");
  const std::vector<int32_t> t2 = Encode(a, *conv.Render(true));
  const uint32_t before = b.session->n_past();
  EXPECT_EQ(before, t1.size() + answer.size());
  b.tokens_run = 0;
  const size_t reused = *cache.Reuse(t2);
  EXPECT_EQ(reused, before);
  EXPECT_EQ(b.session->n_past(), before);
  const auto rest = std::span(t2).subspan(reused);
  ASSERT_TRUE(b.session->Forward(rest).ok());
  // <｜end▁of▁sentence｜> <｜User｜> 2 + 2 ? <｜Assistant｜>, and nothing else.
  EXPECT_EQ(b.tokens_run, 7u);
  EXPECT_EQ(std::vector<int32_t>(rest.begin(), rest.end()),
            (std::vector<int32_t>{1, 128803, 20, 13, 20, 33, 128804}));
  EXPECT_EQ(b.session->n_past(), t2.size());
}

// The same through Chat::Respond with real generation: turn two never re-runs turn one's prompt,
// and the tokens run are exactly what the stats report.
TEST(Chat, TurnsReuseTheKvCache) {
  Bench b(512);
  ASSERT_TRUE(b.ok());
  SamplerOptions so;  // greedy
  Sampler sampler = std::move(Sampler::Create(so).value());
  Chat chat(*b.assets, *b.session, sampler);
  TurnOptions o;
  o.max_tokens = 6;
  std::string shown;
  auto collect = [&](const Piece& p) { shown += p.text; };

  auto r1 = chat.Respond("Hello there", o, collect);
  ASSERT_TRUE(r1.ok()) << r1.status().message();
  EXPECT_EQ(r1->stats.reused_tokens, 0u);
  EXPECT_EQ(r1->stats.prefilled_tokens, r1->stats.prompt_tokens);
  ASSERT_EQ(r1->stats.end, TurnEnd::kMaxTokens);  // random weights: EOS is a 1-in-129280 chance
  EXPECT_EQ(r1->stats.generated_tokens, 6u);
  // Stopped at the limit: the last sampled token was never run.
  EXPECT_EQ(b.session->n_past(), r1->stats.prompt_tokens + 5);
  EXPECT_EQ(chat.conversation().size(), 2u);
  EXPECT_EQ(shown, r1->reasoning + r1->answer);  // what streamed is what the turn returns
  const std::vector<int32_t> cached = chat.cache().tokens();

  b.tokens_run = 0;
  auto r2 = chat.Respond("And then?", o, collect);
  ASSERT_TRUE(r2.ok()) << r2.status().message();
  EXPECT_GE(r2->stats.reused_tokens, r1->stats.prompt_tokens);
  // Exactly the common prefix of what the cache held and the new prompt is reused.
  Conversation expected(*b.assets);
  expected.AddUser("Hello there");
  expected.AddAssistant(r1->answer, r1->reasoning);
  expected.AddUser("And then?");
  const std::vector<int32_t> t2 = Encode(*b.assets, *expected.Render(true));
  size_t common = 0;
  while (common < cached.size() && common + 1 < t2.size() && cached[common] == t2[common]) ++common;
  EXPECT_EQ(r2->stats.reused_tokens, common);
  EXPECT_EQ(r2->stats.prompt_tokens, t2.size());
  EXPECT_EQ(r2->stats.prefilled_tokens, t2.size() - common);
  // What ran: the new prompt tokens, then one forward per generated token but the last.
  EXPECT_EQ(b.tokens_run, r2->stats.prefilled_tokens + r2->stats.generated_tokens - 1);
}

TEST(Chat, TooLongPromptFailsAndTheChatGoesOn) {
  Bench b(48);
  ASSERT_TRUE(b.ok());
  Sampler sampler = std::move(Sampler::Create({}).value());
  Chat chat(*b.assets, *b.session, sampler);
  TurnOptions o;
  o.max_tokens = 4;
  std::string long_text;
  for (int i = 0; i < 60; ++i) long_text += "word ";
  auto r = chat.Respond(long_text, o, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kOutOfRange);
  EXPECT_NE(r.status().message().find("more than the context's 48"), std::string::npos) << r.status().message();
  EXPECT_EQ(chat.conversation().size(), 0u);
  auto ok = chat.Respond("Hi", o, nullptr);
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(chat.conversation().size(), 2u);
  // Bad UTF-8 and template errors are errors too, and change nothing.
  auto bad = chat.Respond(std::string("caf\xff"), o, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("UTF-8"), std::string::npos);
  EXPECT_EQ(chat.conversation().size(), 2u);
}

TEST(Chat, AnswersFillingTheContextStopCleanly) {
  Bench b(40);
  ASSERT_TRUE(b.ok());
  Sampler sampler = std::move(Sampler::Create({}).value());
  Chat chat(*b.assets, *b.session, sampler);
  TurnOptions o;
  o.max_tokens = 0;  // until the context is full
  auto r = chat.Respond("Hi", o, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->stats.end, TurnEnd::kContextFull);
  EXPECT_EQ(r->stats.prompt_tokens + r->stats.generated_tokens, 41u);  // the last one is sampled, not run
  EXPECT_EQ(b.session->n_past(), 40u);
  // /reset makes room again.
  chat.Reset();
  EXPECT_EQ(b.session->n_past(), 0u);
  o.max_tokens = 2;
  EXPECT_TRUE(chat.Respond("More", o, nullptr).ok());
}

TEST(Chat, CancelBeforeAnythingIsShownDropsTheMessage) {
  Bench b(256);
  ASSERT_TRUE(b.ok());
  Sampler sampler = std::move(Sampler::Create({}).value());
  Chat chat(*b.assets, *b.session, sampler);
  std::atomic<bool> cancel{true};
  TurnOptions o;
  o.cancel = &cancel;
  o.prefill_chunk = 4;  // several chunks: the prefill itself notices
  auto r = chat.Respond("Tell me a long story about the sea", o, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->stats.end, TurnEnd::kCancelled);
  EXPECT_EQ(chat.conversation().size(), 0u);
  EXPECT_LT(r->stats.prefilled_tokens, r->stats.prompt_tokens);
  // What was prefilled stays cached for the next attempt.
  EXPECT_EQ(chat.cache().tokens().size(), b.session->n_past());
  cancel = false;
  o.max_tokens = 2;
  auto again = chat.Respond("Tell me a long story about the sea", o, nullptr);
  ASSERT_TRUE(again.ok());
  EXPECT_GT(again->stats.reused_tokens, 0u);
}

}  // namespace
}  // namespace coda::chat
