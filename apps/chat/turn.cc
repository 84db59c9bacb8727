#include "turn.h"

#include <chrono>
#include <vector>

#include "coda/text/detokenizer.h"
#include "coda/text/unicode.h"

namespace coda::chat {

namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

void Chat::Reset() {
  conversation_.Clear();
  cache_.Clear();
}

Result<TurnResult> Chat::Respond(std::string user_text, const TurnOptions& o,
                                 const std::function<void(const Piece&)>& on_piece) {
  if (const size_t bad = text::FindInvalidUtf8(user_text); bad != std::string::npos)
    return InvalidArgument("the message is not valid UTF-8 (byte offset " + std::to_string(bad) + ")");
  Session& s = session();
  auto cancelled = [&] { return o.cancel && o.cancel->load(); };

  // Until the answer starts, any failure takes the message back out: the conversation stays as
  // it was and the next turn works.
  conversation_.AddUser(std::move(user_text));
  auto undo = [&](const Status& st) -> Result<TurnResult> {
    conversation_.PopLast();
    return st;
  };
  auto rendered = conversation_.Render(/*add_generation_prompt=*/true);
  if (!rendered.ok()) return undo(rendered.status());
  auto prompt = text::EncodePrompt(*assets_, *rendered);
  if (!prompt.ok()) return undo(prompt.status());
  if (prompt->empty()) return undo(InvalidArgument("the chat template rendered an empty prompt"));
  if (prompt->size() > s.n_ctx())
    return undo(OutOfRange("the prompt is " + std::to_string(prompt->size()) + " tokens, more than the context's " +
                           std::to_string(s.n_ctx()) + " (raise --n-ctx, or /reset to drop earlier turns)"));

  TurnResult r;
  r.stats.prompt_tokens = static_cast<uint32_t>(prompt->size());
  auto reused = cache_.Reuse(*prompt);
  if (!reused.ok()) return undo(reused.status());
  r.stats.reused_tokens = static_cast<uint32_t>(*reused);
  r.stats.prefilled_tokens = static_cast<uint32_t>(prompt->size() - *reused);
  const std::span<const int32_t> all(*prompt);

  // Prefill all but the last chunk here, looking for Ctrl-C between chunks; Generate() runs the
  // last chunk, whose logits give the first answer token.
  size_t pos = *reused;
  const size_t chunk = std::max<uint32_t>(o.prefill_chunk, 1);
  const auto t0 = Clock::now();
  while (all.size() - pos > chunk) {
    const auto part = all.subspan(pos, chunk);
    auto f = s.Forward(part);
    if (!f.ok()) {
      cache_.SyncAfter(all);
      return undo(f.status());
    }
    if (Status st = cache_.Append(part); !st.ok()) return undo(st);
    pos += chunk;
    if (cancelled()) {
      r.stats.prefilled_tokens = static_cast<uint32_t>(pos - *reused);
      r.stats.prefill_seconds = Since(t0);
      r.stats.end = TurnEnd::kCancelled;
      conversation_.PopLast();
      return r;
    }
  }
  const double chunked_seconds = Since(t0);

  // The prompt fits, so at least one token can be sampled; each further one needs a position.
  const uint32_t room = s.n_ctx() - static_cast<uint32_t>(all.size()) + 1;
  GenerateOptions g;
  g.max_new_tokens = o.max_tokens == 0 ? room : std::min(o.max_tokens, room);
  if (assets_->eos_id) g.stop_tokens = {*assets_->eos_id};

  text::StreamingDetokenizer detok(assets_->tokenizer);
  ReasoningSplitter split(PromptOpensReasoning(*rendered));
  std::vector<int32_t> generated;
  std::vector<Piece> pieces;
  std::string text;
  auto deliver = [&] {
    for (const Piece& p : pieces)
      if (on_piece) on_piece(p);
    pieces.clear();
  };
  auto on_token = [&](int32_t tok) {
    generated.push_back(tok);
    if (cancelled()) return false;  // nothing more on screen after Ctrl-C
    // The embedding table can be larger than the vocabulary (DeepSeek pads it); a model that
    // samples a padding id (random weights do) just shows nothing for it.
    text.clear();
    if (assets_->tokenizer.IsValidId(tok) && detok.Push(tok, &text).ok() && !text.empty()) {
      split.Feed(text, &pieces);
      deliver();
    }
    return true;
  };
  auto gen = Generate(s, *sampler_, all.subspan(pos), g, on_token);
  std::vector<int32_t> held(all.begin(), all.end());
  held.insert(held.end(), generated.begin(), generated.end());
  cache_.SyncAfter(held);
  if (!gen.ok()) return undo(gen.status());
  split.Feed(detok.Flush(), &pieces);
  split.Finish(&pieces);
  deliver();

  r.stats.prefill_seconds = chunked_seconds + gen->prefill_seconds;
  r.stats.decode_seconds = gen->decode_seconds;
  r.stats.generated_tokens = static_cast<uint32_t>(gen->tokens.size());
  switch (gen->stop) {
    case GenerateResult::Stop::kStopToken:
    case GenerateResult::Stop::kStopString: r.stats.end = TurnEnd::kEos; break;
    case GenerateResult::Stop::kCallback: r.stats.end = TurnEnd::kCancelled; break;
    case GenerateResult::Stop::kLength:
      r.stats.end = g.max_new_tokens == room && (o.max_tokens == 0 || o.max_tokens >= room) ? TurnEnd::kContextFull
                                                                                            : TurnEnd::kMaxTokens;
      break;
  }
  r.answer = split.answer();
  r.reasoning = split.reasoning();
  // Stopped before showing anything: as if the message had not been sent (it stays cached).
  if (r.stats.end == TurnEnd::kCancelled && r.answer.empty() && r.reasoning.empty()) {
    conversation_.PopLast();
    return r;
  }
  conversation_.AddAssistant(r.answer, r.reasoning);
  return r;
}

}  // namespace coda::chat
