// The conversation as the chat template sees it, and the bookkeeping that lets each turn reuse
// the KV cache of the previous ones.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "coda/runtime.h"
#include "coda/status.h"
#include "coda/text/text_assets.h"

namespace coda::chat {

// Messages of one chat: an optional system prompt, then user/assistant turns. Assistant turns
// keep only the answer in "content" (what the DeepSeek templates expect back: R1 and V3.1 drop
// reasoning from history anyway, V3 would otherwise show it to the model); the reasoning is kept
// beside it as "reasoning_content", which the templates ignore, so that /save keeps it.
class Conversation {
 public:
  explicit Conversation(const text::TextAssets& assets) : assets_(&assets) {}

  const std::string& system() const { return system_; }
  void set_system(std::string text) { system_ = std::move(text); }

  void AddUser(std::string text);
  void AddAssistant(std::string answer, std::string reasoning);
  void PopLast();
  // Forgets the turns; the system prompt stays.
  void Clear() { turns_ = nlohmann::ordered_json::array(); }
  size_t size() const { return turns_.size(); }

  // The messages the template sees, the system prompt first.
  nlohmann::ordered_json Messages() const;
  Result<std::string> Render(bool add_generation_prompt) const;

  // Replaces the conversation with a JSON array of messages (or {"messages": [...]}); a leading
  // system message becomes the system prompt. Roles must be system/user/assistant/tool and the
  // template must render the result; on error nothing changes.
  Status Load(const nlohmann::ordered_json& json);
  Status LoadFile(const std::string& path);
  // Writes Messages() as JSON (atomically).
  Status SaveFile(const std::string& path) const;

 private:
  const text::TextAssets* assets_;
  std::string system_;
  nlohmann::ordered_json turns_ = nlohmann::ordered_json::array();
};

// The tokens a Session's KV cache holds, in step with it. A new prompt is compared with them:
// the session rewinds to the longest common prefix and only the rest is run. Since every turn's
// prompt starts with the previous turns, that is normally just the new user message (plus the
// previous answer when its re-encoding differs from what was generated, or when the template
// rewrites history, e.g. dropping reasoning).
class PromptCache {
 public:
  explicit PromptCache(Session& session) : session_(&session) {}

  // Rewinds the session to the longest common prefix of `prompt` and the cached tokens, short of
  // the whole prompt (its last token must run to give the next logits), and returns that length.
  Result<size_t> Reuse(std::span<const int32_t> prompt);
  // Records tokens the session has just run (n_past must have advanced by as many).
  Status Append(std::span<const int32_t> tokens);
  // After a run that may have stopped early: keeps `tokens` as far as the session got.
  void SyncAfter(std::span<const int32_t> tokens);
  void Clear();

  const std::vector<int32_t>& tokens() const { return tokens_; }
  Session& session() const { return *session_; }

 private:
  Session* session_;
  std::vector<int32_t> tokens_;
};

}  // namespace coda::chat
