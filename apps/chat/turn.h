// One chat turn: render the conversation, run only what the KV cache lacks, stream the answer.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "coda/runtime.h"
#include "coda/sampler.h"
#include "coda/text/text_assets.h"
#include "conversation.h"
#include "reasoning.h"

namespace coda::chat {

struct TurnOptions {
  uint32_t max_tokens = 2048;      // 0: until EOS or the context is full
  uint32_t prefill_chunk = 256;    // Ctrl-C is noticed between chunks of a long prefill
  const std::atomic<bool>* cancel = nullptr;
};

enum class TurnEnd { kEos, kMaxTokens, kContextFull, kCancelled };

struct TurnStats {
  uint32_t prompt_tokens = 0;     // the whole rendered conversation
  uint32_t reused_tokens = 0;     // of those, already in the KV cache
  uint32_t prefilled_tokens = 0;  // run this turn
  uint32_t generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  TurnEnd end = TurnEnd::kEos;
};

struct TurnResult {
  TurnStats stats;
  std::string answer, reasoning;
};

// A conversation bound to a session. Respond() adds the user's message and the model's answer;
// when it fails (template error, prompt longer than the context, bad UTF-8) the conversation is
// left as it was and the next turn works as usual.
class Chat {
 public:
  Chat(const text::TextAssets& assets, Session& session, Sampler& sampler)
      : assets_(&assets), sampler_(&sampler), conversation_(assets), cache_(session) {}

  Result<TurnResult> Respond(std::string user_text, const TurnOptions& options,
                             const std::function<void(const Piece&)>& on_piece);

  Conversation& conversation() { return conversation_; }
  const PromptCache& cache() const { return cache_; }
  Session& session() const { return cache_.session(); }
  // Starts over: no turns (the system prompt stays), empty KV cache.
  void Reset();

 private:
  const text::TextAssets* assets_;
  Sampler* sampler_;
  Conversation conversation_;
  PromptCache cache_;
};

}  // namespace coda::chat
