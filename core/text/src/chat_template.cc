#include "coda/text/chat_template.h"

#include <limits>
#include <new>
#include <nlohmann/json.hpp>

#include "jinja_ast.h"
#include "jinja_interp.h"

namespace coda::text {
namespace {

constexpr std::string_view kContext = "chat template";

template <typename Json>
Result<jinja::Value> FromJson(const Json& j, int depth) {
  using jinja::Value;
  // Our conversion recurses; JSON from a client can nest arbitrarily deep.
  if (depth > 256) return InvalidArgument("context JSON is nested too deeply");
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value::MakeNone();
    case nlohmann::json::value_t::boolean: return Value::Bool(j.template get<bool>());
    case nlohmann::json::value_t::number_integer: return Value::Int(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      auto u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return Value::Float(static_cast<double>(u));
      return Value::Int(static_cast<int64_t>(u));
    }
    case nlohmann::json::value_t::number_float: return Value::Float(j.template get<double>());
    case nlohmann::json::value_t::string: return Value::String(j.template get_ref<const std::string&>());
    case nlohmann::json::value_t::array: {
      Value::List items;
      items.reserve(j.size());
      for (const auto& x : j) {
        CODA_ASSIGN_OR_RETURN(Value v, FromJson(x, depth + 1));
        items.push_back(std::move(v));
      }
      return Value::MakeList(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      jinja::Dict d;
      for (const auto& [k, x] : j.items()) {
        CODA_ASSIGN_OR_RETURN(Value v, FromJson(x, depth + 1));
        d.Set(k, std::move(v));
      }
      return Value::MakeDict(std::move(d));
    }
    default: return InvalidArgument("context JSON holds a value the template cannot use (binary or discarded)");
  }
}

}  // namespace

Result<ChatTemplate> ChatTemplate::Parse(std::string_view source, const ChatTemplateOptions& options) {
  jinja::SyntaxOptions syntax{options.trim_blocks, options.lstrip_blocks, options.max_nesting};
  try {
    auto program = jinja::ParseProgram(source, syntax);
    if (!program.ok()) return program.status().WithContext(kContext);
    return ChatTemplate(std::move(program).value(), options);
  } catch (const std::bad_alloc&) {
    return OutOfMemory("chat template: out of memory while parsing");
  }
}

const std::string& ChatTemplate::source() const { return program_->source; }

template <typename Json>
Result<std::string> ChatTemplate::RenderImpl(const Json& context) const {
  if (!context.is_object()) return InvalidArgument("chat template: the render context must be a JSON object");
  // nlohmann reports misuse by exception; nothing of that kind may cross this boundary.
  try {
    CODA_ASSIGN_OR_RETURN(jinja::Value root, FromJson(context, 0));
    jinja::RenderLimits limits{options_.max_output_bytes, options_.max_steps, options_.max_call_depth};
    jinja::Interpreter interpreter(*program_, limits);
    auto out = interpreter.Render(root.dict());
    if (!out.ok()) return out.status().WithContext(kContext);
    return out;
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument(std::string("chat template: bad context JSON: ") + e.what());
  } catch (const std::bad_alloc&) {
    return OutOfMemory("chat template: out of memory while rendering");
  }
}

Result<std::string> ChatTemplate::Render(const nlohmann::json& context) const { return RenderImpl(context); }

Result<std::string> ChatTemplate::Render(const nlohmann::ordered_json& context) const { return RenderImpl(context); }

namespace {

template <typename Json>
Json ChatContext(const Json& messages, bool add_generation_prompt, std::string_view bos, std::string_view eos) {
  Json context = Json::object();
  context["messages"] = messages;
  context["add_generation_prompt"] = add_generation_prompt;
  context["bos_token"] = std::string(bos);
  context["eos_token"] = std::string(eos);
  return context;
}

// The shared body of both RenderChat overloads; `render` is the template's RenderImpl.
template <typename Json, typename RenderFn>
Result<std::string> RenderMessages(const Json& messages, bool add_generation_prompt, std::string_view bos_token,
                                   std::string_view eos_token, RenderFn&& render) {
  if (!messages.is_array()) return InvalidArgument("chat template: messages must be a JSON array");
  try {
    return render(ChatContext(messages, add_generation_prompt, bos_token, eos_token));
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument(std::string("chat template: bad messages JSON: ") + e.what());
  } catch (const std::bad_alloc&) {
    return OutOfMemory("chat template: out of memory while rendering");
  }
}

}  // namespace

Result<std::string> ChatTemplate::RenderChat(const nlohmann::json& messages, bool add_generation_prompt,
                                             std::string_view bos_token, std::string_view eos_token) const {
  return RenderMessages(messages, add_generation_prompt, bos_token, eos_token,
                        [this](const auto& context) { return RenderImpl(context); });
}

Result<std::string> ChatTemplate::RenderChat(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                             std::string_view bos_token, std::string_view eos_token) const {
  return RenderMessages(messages, add_generation_prompt, bos_token, eos_token,
                        [this](const auto& context) { return RenderImpl(context); });
}

}  // namespace coda::text
