// libFuzzer target: a chat template (the Jinja subset models ship) parsed and rendered with a
// conversation that exercises it (system prompt, tool calls, reasoning). Seeded with
// DeepSeek-V3's template; jinja.dict gives the mutator the language's words.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "coda/text/chat_template.h"

namespace {
const nlohmann::ordered_json& Messages() {
  static const nlohmann::ordered_json m = nlohmann::ordered_json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2? <b>bold</b> {{ not a tag }}"},
    {"role": "assistant", "content": "<think>add</think>4", "tool_calls": [
      {"type": "function", "function": {"name": "calc", "arguments": "{\"x\": [1, 2.5, null, true]}"}}]},
    {"role": "tool", "content": "4"},
    {"role": "user", "content": ""}
  ])");
  return m;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto t = coda::text::ChatTemplate::Parse({reinterpret_cast<const char*>(data), size});
  if (!t.ok()) return 0;
  (void)t->RenderChat(Messages(), true, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>");
  return 0;
}
