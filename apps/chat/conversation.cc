#include "conversation.h"

#include <algorithm>

#include "coda/file.h"
#include "coda/json.h"

namespace coda::chat {

using nlohmann::ordered_json;

void Conversation::AddUser(std::string text) { turns_.push_back({{"role", "user"}, {"content", std::move(text)}}); }

void Conversation::AddAssistant(std::string answer, std::string reasoning) {
  ordered_json m = {{"role", "assistant"}, {"content", std::move(answer)}};
  if (!reasoning.empty()) m["reasoning_content"] = std::move(reasoning);
  turns_.push_back(std::move(m));
}

void Conversation::PopLast() {
  if (!turns_.empty()) turns_.erase(turns_.end() - 1);
}

ordered_json Conversation::Messages() const {
  ordered_json all = ordered_json::array();
  if (!system_.empty()) all.push_back({{"role", "system"}, {"content", system_}});
  for (const auto& m : turns_) all.push_back(m);
  return all;
}

Result<std::string> Conversation::Render(bool add_generation_prompt) const {
  return text::RenderChat(*assets_, Messages(), add_generation_prompt);
}

Status Conversation::Load(const ordered_json& json) {
  const ordered_json* msgs = &json;
  if (json.is_object() && json.contains("messages")) msgs = &json["messages"];
  if (!msgs->is_array()) return InvalidArgument("expected a JSON array of messages (or {\"messages\": [...]})");
  std::string system;
  ordered_json turns = ordered_json::array();
  for (size_t i = 0; i < msgs->size(); ++i) {
    const ordered_json& m = (*msgs)[i];
    const std::string where = "message " + std::to_string(i + 1);
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      return InvalidArgument(where + " is not an object with a \"role\"");
    const std::string role = m["role"];
    if (role != "system" && role != "user" && role != "assistant" && role != "tool")
      return InvalidArgument(where + " has role '" + role + "' (expected system, user, assistant or tool)");
    if (!m.contains("content") || !(m["content"].is_string() || m["content"].is_null()))
      return InvalidArgument(where + " has no \"content\" string");
    if (i == 0 && role == "system") system = m["content"].is_string() ? m["content"].get<std::string>() : "";
    else turns.push_back(m);
  }
  // Try the template on it before taking it, so a bad file cannot leave a broken conversation.
  Conversation candidate(*assets_);
  candidate.system_ = system;
  candidate.turns_ = turns;
  auto rendered = candidate.Render(true);
  if (!rendered.ok()) return rendered.status();
  system_ = std::move(system);
  turns_ = std::move(turns);
  return Status::Ok();
}

Status Conversation::LoadFile(const std::string& path) {
  CODA_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path, uint64_t{256} << 20));
  CODA_ASSIGN_OR_RETURN(const ordered_json j, ParseJsonAs<ordered_json>(text, path));
  return Load(j).WithContext(path);
}

Status Conversation::SaveFile(const std::string& path) const {
  // Replacement keeps the file valid JSON even if a message holds bytes that are not UTF-8.
  const std::string text = Messages().dump(2, ' ', false, ordered_json::error_handler_t::replace) + "\n";
  CODA_ASSIGN_OR_RETURN(auto out, AtomicFileWriter::Create(path));
  CODA_RETURN_IF_ERROR(out->Write({reinterpret_cast<const uint8_t*>(text.data()), text.size()}));
  return out->Commit();
}

Result<size_t> PromptCache::Reuse(std::span<const int32_t> prompt) {
  if (prompt.empty()) return InvalidArgument("empty prompt");
  // Someone else moved the session: trust only what both agree on.
  if (tokens_.size() > session_->n_past()) tokens_.resize(session_->n_past());
  const size_t limit = std::min(tokens_.size(), prompt.size() - 1);
  size_t n = 0;
  while (n < limit && tokens_[n] == prompt[n]) ++n;
  CODA_RETURN_IF_ERROR(session_->Rewind(static_cast<uint32_t>(n)));
  tokens_.resize(n);
  return n;
}

Status PromptCache::Append(std::span<const int32_t> tokens) {
  if (session_->n_past() != tokens_.size() + tokens.size())
    return Internal("prompt cache out of step: session holds " + std::to_string(session_->n_past()) +
                    " positions, cache " + std::to_string(tokens_.size() + tokens.size()));
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  return Status::Ok();
}

void PromptCache::SyncAfter(std::span<const int32_t> tokens) {
  const size_t n = std::min<size_t>(session_->n_past(), tokens.size());
  if (n < session_->n_past()) (void)session_->Rewind(static_cast<uint32_t>(n));
  tokens_.assign(tokens.begin(), tokens.begin() + static_cast<ptrdiff_t>(n));
}

void PromptCache::Clear() {
  session_->Reset();
  tokens_.clear();
}

}  // namespace coda::chat
