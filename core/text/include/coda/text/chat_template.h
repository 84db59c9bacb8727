// Chat-template rendering: the Jinja subset that Hugging Face chat templates (DeepSeek V2/V3/R1/V3.1
// and similar) are written in.
//
// Output matches @huggingface/jinja (the engine transformers.js uses) byte for byte on those
// templates: trim_blocks and lstrip_blocks are on, one trailing newline of the template is dropped,
// none and undefined print as nothing, booleans print as "true"/"false", and lists and dicts print
// as JSON. Where that engine leaks JavaScript behaviour (loose ==, JS %, arrays printing as "1,2"),
// Python Jinja's semantics apply instead. Every failure, including raise_exception() in the
// template and the work limits below, is an error Status naming the line and column in the
// template; nothing here throws or aborts on template or context input.
//
// Callers pass the context as nlohmann JSON; they need nlohmann_json on their include path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

#include "coda/status.h"

namespace coda::text {

namespace jinja {
struct Program;
}

struct ChatTemplateOptions {
  // Jinja whitespace options; Hugging Face renders chat templates with both on.
  bool trim_blocks = true;
  bool lstrip_blocks = true;
  // Deepest nesting of blocks and expressions; bounds recursion (and so stack use) in parsing
  // and rendering.
  uint32_t max_nesting = 128;
  // A render fails once its output, or any string it builds, exceeds this.
  size_t max_output_bytes = size_t{16} << 20;
  // Units of work (expression evaluations, loop iterations, list items and text copied) after
  // which a render fails, so a hostile template cannot spin forever.
  uint64_t max_steps = 10'000'000;
  // Deepest macro recursion.
  uint32_t max_call_depth = 32;
};

class ChatTemplate {
 public:
  // Parses a template. Syntax errors, unknown tags, filters and tests fail here.
  static Result<ChatTemplate> Parse(std::string_view source, const ChatTemplateOptions& options = {});

  // Renders with the members of the JSON object `context` (messages, add_generation_prompt,
  // bos_token, tools, ...) as template variables. An ordered_json context keeps its key order,
  // which is the order `tojson` prints; plain json objects print their keys sorted.
  Result<std::string> Render(const nlohmann::json& context) const;
  Result<std::string> Render(const nlohmann::ordered_json& context) const;

  // The usual call: `messages` is a JSON array of {role, content, tool_calls, ...} objects.
  Result<std::string> RenderChat(const nlohmann::json& messages, bool add_generation_prompt,
                                 std::string_view bos_token, std::string_view eos_token) const;
  Result<std::string> RenderChat(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 std::string_view bos_token, std::string_view eos_token) const;

  const std::string& source() const;

 private:
  ChatTemplate(std::shared_ptr<const jinja::Program> program, const ChatTemplateOptions& options)
      : program_(std::move(program)), options_(options) {}
  template <typename Json>
  Result<std::string> RenderImpl(const Json& context) const;

  // Immutable after Parse, so copies share it and concurrent renders are safe.
  std::shared_ptr<const jinja::Program> program_;
  ChatTemplateOptions options_;
};

}  // namespace coda::text
