#include "coda/text/chat_template.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>

namespace coda::text {
namespace {

using nlohmann::ordered_json;

const std::string kDataDir = CODA_TEST_DATA_DIR;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ordered_json ReadJson(const std::string& path) { return ordered_json::parse(ReadFile(path)); }

ChatTemplate MustParse(std::string_view source, const ChatTemplateOptions& options = {}) {
  auto t = ChatTemplate::Parse(source, options);
  EXPECT_TRUE(t.ok()) << t.status().message();
  if (!t.ok()) return *ChatTemplate::Parse("");
  return std::move(t).value();
}

Result<std::string> RenderSource(std::string_view source, const ordered_json& context,
                                 const ChatTemplateOptions& options = {}) {
  CODA_ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::Parse(source, options));
  return t.Render(context);
}

// ---- reference renderings ----

TEST(ChatTemplate, DeepSeekV3TokenizerCases) {
  ordered_json config = ReadJson(kDataDir + "/tokenizer/deepseek-v3/tokenizer_config.json");
  ordered_json cases = ReadJson(kDataDir + "/tokenizer/deepseek-v3/cases.json");
  ChatTemplate tmpl = MustParse(config["chat_template"].get<std::string>());
  std::string bos = config["bos_token"]["content"].get<std::string>();
  std::string eos = config["eos_token"]["content"].get<std::string>();
  ASSERT_FALSE(cases["chats"].empty());
  for (const auto& chat : cases["chats"]) {
    auto r = tmpl.RenderChat(chat["messages"], chat["add_generation_prompt"].get<bool>(), bos, eos);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(*r, chat["rendered"].get<std::string>()) << chat["messages"].dump();
  }
}

TEST(ChatTemplate, GeneratedTemplateCases) {
  ordered_json data = ReadJson(kDataDir + "/templates/cases.json");
  ASSERT_GE(data["cases"].size(), 100u);
  std::map<std::string, ChatTemplate> templates;
  size_t rendered = 0;
  size_t rejected = 0;
  for (const auto& c : data["cases"]) {
    std::string name = c["template"].get<std::string>();
    auto it = templates.find(name);
    if (it == templates.end()) {
      it = templates.emplace(name, MustParse(ReadFile(kDataDir + "/templates/" + name + ".jinja"))).first;
    }
    auto r = it->second.Render(c["context"]);
    std::string label = name + " " + c["name"].get<std::string>();
    if (c.contains("rendered")) {
      ASSERT_TRUE(r.ok()) << label << ": " << r.status().message();
      EXPECT_EQ(*r, c["rendered"].get<std::string>()) << label;
      ++rendered;
    } else {
      // The reference engine threw (a null or missing content concatenated); so must we.
      EXPECT_FALSE(r.ok()) << label << " rendered " << *r;
      if (!r.ok()) {
        EXPECT_NE(r.status().message().find(", column "), std::string::npos) << r.status().message();
      }
      ++rejected;
    }
  }
  EXPECT_GT(rendered, 200u);
  EXPECT_GT(rejected, 0u);
  EXPECT_EQ(templates.size(), 6u);
}

TEST(ChatTemplate, GeneratedFeatureCases) {
  ordered_json data = ReadJson(kDataDir + "/templates/cases.json");
  ASSERT_FALSE(data["features"].empty());
  for (const auto& f : data["features"]) {
    std::string name = f["name"].get<std::string>();
    auto r = RenderSource(f["template"].get<std::string>(), f["context"]);
    if (f.contains("rendered")) {
      ASSERT_TRUE(r.ok()) << name << ": " << r.status().message();
      EXPECT_EQ(*r, f["rendered"].get<std::string>()) << name;
    } else {
      ASSERT_FALSE(r.ok()) << name << " rendered " << *r;
      EXPECT_NE(r.status().message().find(f["error"].get<std::string>()), std::string::npos)
          << name << ": " << r.status().message();
    }
  }
}

TEST(ChatTemplate, AllShippedTemplatesParse) {
  for (const char* name : {"deepseek-v3", "deepseek-r1", "deepseek-r1-distill", "deepseek-v3.1", "deepseek-v2.5",
                           "deepseek-v2"}) {
    auto t = ChatTemplate::Parse(ReadFile(kDataDir + "/templates/" + std::string(name) + ".jinja"));
    EXPECT_TRUE(t.ok()) << name << ": " << t.status().message();
  }
}

// ---- errors: values with line and column, never crashes ----

void ExpectParseError(std::string_view source, std::string_view needle, std::string_view where) {
  auto t = ChatTemplate::Parse(source);
  ASSERT_FALSE(t.ok()) << "parsed: " << source;
  std::string m = t.status().message();
  EXPECT_NE(m.find(needle), std::string::npos) << m;
  EXPECT_NE(m.find(where), std::string::npos) << m;
}

void ExpectRenderError(std::string_view source, const ordered_json& context, std::string_view needle,
                       std::string_view where, const ChatTemplateOptions& options = {}) {
  auto t = ChatTemplate::Parse(source, options);
  ASSERT_TRUE(t.ok()) << t.status().message();
  auto r = t->Render(context);
  ASSERT_FALSE(r.ok()) << "rendered: " << *r;
  std::string m = r.status().message();
  EXPECT_NE(m.find(needle), std::string::npos) << m;
  EXPECT_NE(m.find(where), std::string::npos) << m;
}

TEST(ChatTemplateErrors, UnknownTag) {
  ExpectParseError("hello\n{% frobnicate x %}", "unknown tag 'frobnicate'", "line 2, column 1");
  ExpectParseError("{% include 'x.jinja' %}", "not supported", "line 1, column 1");
  auto t = ChatTemplate::Parse("{% frobnicate %}");
  EXPECT_EQ(t.status().code(), StatusCode::kUnsupported);
}

TEST(ChatTemplateErrors, UnknownFilterAndTest) {
  ExpectParseError("a\nb {{ x | frobnicate }}", "unknown filter 'frobnicate'", "line 2, column 10");
  ExpectParseError("{% if x is frobnicated %}{% endif %}", "unknown test 'frobnicated'", "line 1, column 12");
}

TEST(ChatTemplateErrors, UnclosedConstructs) {
  ExpectParseError("{% for m in messages %}\n{{ m }}", "unclosed 'for' block: missing '{% endfor %}'", "line 1, column 1");
  ExpectParseError("x\n  {% if a %}{% else %}", "unclosed 'if' block", "line 2, column 3");
  ExpectParseError("{{ 'abc }}", "unterminated string literal", "line 1, column 4");
  ExpectParseError("ok {{ x ", "unclosed expression", "line 1, column 4");
  ExpectParseError("{# never closed", "unclosed comment", "line 1, column 1");
  ExpectParseError("{{ f(1, 2 }}", "unclosed '(': missing ')'", "line 1, column 5");
  ExpectParseError("{{ f(1 2) }}", "expected ',' or ')'", "line 1, column 8");
  ExpectParseError("{% if a %}{% endfor %}", "unexpected '{% endfor %}' inside 'if'", "line 1, column 14");
  ExpectParseError("{% endif %}", "unexpected '{% endif %}'", "line 1, column 4");
  ExpectParseError("{% break %}", "'break' outside a for loop", "line 1, column 1");
  ExpectParseError("{{ }}", "expected an expression", "line 1, column 4");
  ExpectParseError("{{ a b }}", "expected '}}'", "line 1, column 6");
  ExpectParseError("{{ 99999999999999999999 }}", "integer literal is too large", "line 1, column 4");
  ExpectParseError("{{ x @ y }}", "unexpected character '@'", "line 1, column 6");
}

TEST(ChatTemplateErrors, RaiseException) {
  ExpectRenderError("{% for m in messages %}\n{% if m.role not in ['user', 'assistant'] %}"
                    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
                    ordered_json{{"messages", {{{"role", "tool"}, {"content", "x"}}}}},
                    "raise_exception: Only user and assistant roles are supported!", "line 2, column 48");
  auto r = RenderSource("{{ raise_exception('boom') }}", ordered_json::object());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

TEST(ChatTemplateErrors, DeepNestingFailsCleanly) {
  std::string parens = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  ExpectParseError(parens, "nested too deeply", "line 1");
  std::string ifs;
  for (int i = 0; i < 5000; ++i) ifs += "{% if true %}";
  ExpectParseError(ifs, "nested too deeply", "line 1");
  std::string chain = "{{ 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  ExpectParseError(chain + " }}", "expression nested too deeply", "line 1");
  std::string nots = "{{ " ;
  for (int i = 0; i < 5000; ++i) nots += "not ";
  ExpectParseError(nots + "x }}", "nested too deeply", "line 1");
  std::string lists = "{{ " + std::string(5000, '[') + std::string(5000, ']') + " }}";
  ExpectParseError(lists, "nested too deeply", "line 1");
  std::string filters = "{{ x";
  for (int i = 0; i < 5000; ++i) filters += "|trim";
  ExpectParseError(filters + " }}", "nested too deeply", "line 1");
  // Within the limit, nesting works.
  std::string ok = "{{ " + std::string(50, '(') + "7" + std::string(50, ')') + " }}";
  auto r = RenderSource(ok, ordered_json::object());
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(*r, "7");
}

TEST(ChatTemplateErrors, RunawayLoopsHitTheStepLimit) {
  ChatTemplateOptions small;
  small.max_steps = 100'000;
  ExpectRenderError("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                    ordered_json::object(), "steps", "line 1", small);
  ExpectRenderError("\n{{ range(1000000000) | length }}", ordered_json::object(), "range() is too large", "line 2");
  ExpectRenderError("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                    ordered_json::object(), "exceeds the output limit", "line 1");
  ExpectRenderError("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", ordered_json::object(),
                    "macro calls nested deeper than 32", "line 1");
  ExpectRenderError("{{ 'ab' * 100000000000 }}", ordered_json::object(), "exceeds the output limit", "line 1");
}

TEST(ChatTemplateErrors, HostileValuesStayBounded) {
  // Nesting grows one level per iteration; without a cap, freeing it would overflow the stack.
  ExpectRenderError("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}",
                    ordered_json::object(), "value nested deeper than 512 levels", "line 1, column 74");
  ExpectRenderError("{% set ns = namespace(x=1) %}\n{% set ns.self = [ns] %}", ordered_json::object(),
                    "a namespace cannot be stored in a namespace attribute", "line 2, column 1");
}

TEST(ChatTemplateErrors, HugeStringsStayBounded) {
  // Printing or serializing many references to one big string must fail at the size limit
  // rather than build the whole text.
  ExpectRenderError("{% set s = 'x' * 8000000 %}{{ [s] * 100 }}", ordered_json::object(), "exceeds the size limit",
                    "line 1, column 28");
  ExpectRenderError("{% set s = 'x' * 8000000 %}{{ ([s] * 100)|tojson }}", ordered_json::object(),
                    "exceeds the size limit", "line 1");
  ExpectRenderError("{% set s = 'x' * 8000000 %}{{ ([s] * 100)|join }}", ordered_json::object(),
                    "exceeds the output limit", "line 1");
  // Repeated indexing into a long string is charged by its length.
  ExpectRenderError("{% set h = 'a' * 4000000 %}{% for i in range(1000) %}{{ h[i] }}{% endfor %}",
                    ordered_json::object(), "steps", "line 1");
  // A long needle that almost matches everywhere: linear search, not quadratic.
  auto r = RenderSource("{% set h = 'a' * 2000000 %}{% set n = 'a' * 100000 ~ 'b' %}{{ n in h }} {{ h.count(n) }} "
                        "{{ h.replace(n, '') == h }} {{ (h ~ 'b').split(n)|length }} {{ (h ~ 'b').rsplit(n, 1)|length }}",
                        ordered_json::object());
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(*r, "false 0 true 2 2");
}

TEST(ChatTemplateErrors, OutputLimit) {
  ChatTemplateOptions small;
  small.max_output_bytes = 1000;
  ExpectRenderError("{% for i in range(1000) %}xxxxxxxxxx{% endfor %}", ordered_json::object(),
                    "rendered output exceeds the limit of 1000 bytes", "line 1, column 27", small);
}

TEST(ChatTemplateErrors, RuntimeTypeErrors) {
  ordered_json ctx = {{"n", nullptr}, {"i", 5}, {"s", "str"}, {"l", {1, 2}}};
  ExpectRenderError("{{ 'a' + n }}", ctx, "unsupported operand types for +: string and none", "line 1, column 8");
  ExpectRenderError("{{ missing + 'a' }}", ctx, "undefined", "line 1");
  ExpectRenderError("{{ i // 0 }}", ctx, "division by zero", "line 1, column 6");
  ExpectRenderError("{{ i % 0 }}", ctx, "modulo by zero", "line 1");
  ExpectRenderError("{{ 9223372036854775807 + i }}", ctx, "integer overflow", "line 1");
  ExpectRenderError("{{ 2 ** 64 }}", ctx, "integer overflow", "line 1");
  ExpectRenderError("{{ 0 ** -1 }}", ctx, "negative power", "line 1");
  ExpectRenderError("{{ -(-9223372036854775807 - 1) }}", ctx, "integer overflow", "line 1");
  ExpectRenderError("{% set s.x = 1 %}", ctx, "only namespace() objects", "line 1, column 1");
  ExpectRenderError("{{ s.frobnicate() }}", ctx, "unknown method 'frobnicate' on a string", "line 1, column 5");
  ExpectRenderError("{{ frobnicate(1) }}", ctx, "unknown function 'frobnicate'", "line 1, column 4");
  ExpectRenderError("{{ i() }}", ctx, "not callable", "line 1");
  ExpectRenderError("{% for x in i %}{% endfor %}", ctx, "cannot iterate over a integer", "line 1, column 13");
  ExpectRenderError("{% for a, b in l %}{% endfor %}", ctx, "cannot unpack", "line 1");
  ExpectRenderError("{{ l < s }}", ctx, "cannot compare", "line 1");
  ExpectRenderError("{{ s[::0] }}", ctx, "slice step cannot be zero", "line 1");
  ExpectRenderError("{{ s.split('') }}", ctx, "empty separator", "line 1");
  ExpectRenderError("{{ 1 in i }}", ctx, "'in' needs", "line 1");
  ExpectRenderError("{{ s|tojson(indent='x') }}", ctx, "indent must be an integer", "line 1");
  ExpectRenderError("{{ s|trim(1, 2) }}", ctx, "trim() takes at most 1 arguments", "line 1");
  ExpectRenderError("{{ {1: 2} }}", ctx, "dict keys must be strings", "line 1");
  ExpectRenderError("{{ '%s' % s }}", ctx, "not supported", "line 1");
}

TEST(ChatTemplateErrors, ContextMustBeAnObject) {
  ChatTemplate t = MustParse("x");
  EXPECT_FALSE(t.Render(ordered_json::array()).ok());
  EXPECT_FALSE(t.RenderChat(ordered_json::object(), true, "", "").ok());
  nlohmann::json deep = nlohmann::json::array();
  for (int i = 0; i < 1000; ++i) deep = nlohmann::json::array({deep});
  auto r = t.Render(nlohmann::json{{"x", deep}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("nested too deeply"), std::string::npos);
}

// Mangled versions of a real template: every outcome is fine except a crash or a hang.
TEST(ChatTemplateErrors, MangledTemplatesNeverCrash) {
  std::string source = ReadFile(kDataDir + "/templates/deepseek-r1.jinja");
  ordered_json ctx = {{"messages",
                       {{{"role", "system"}, {"content", "s"}},
                        {{"role", "user"}, {"content", "u"}},
                        {{"role", "assistant"}, {"content", "<think>x</think>a"}},
                        {{"role", "assistant"},
                         {"content", ""},
                         {"tool_calls", {{{"type", "function"}, {"function", {{"name", "f"}, {"arguments", "{}"}}}}}}},
                        {{"role", "tool"}, {"content", "r"}}}},
                      {"add_generation_prompt", true},
                      {"bos_token", "<s>"}};
  ChatTemplateOptions options;
  options.max_steps = 200'000;
  std::mt19937 rng(1234);
  const std::string alphabet = "{}%#-+()[]'\".,:|~=<>!*/ \n0aisnoe";
  int parsed = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string s = source;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      size_t pos = rng() % s.size();
      switch (rng() % 3) {
        case 0: s[pos] = alphabet[rng() % alphabet.size()]; break;
        case 1: s.erase(pos, 1 + rng() % 8); break;
        default: s.insert(pos, 1, alphabet[rng() % alphabet.size()]);
      }
      if (s.empty()) s = "x";
    }
    auto t = ChatTemplate::Parse(s, options);
    if (!t.ok()) {
      EXPECT_NE(t.status().message().find("line "), std::string::npos) << t.status().message();
      continue;
    }
    ++parsed;
    auto r = t->Render(ctx);
    if (!r.ok()) {
      EXPECT_NE(r.status().message().find("line "), std::string::npos) << r.status().message();
    }
  }
  EXPECT_GT(parsed, 100);
  for (size_t cut = 0; cut < source.size(); cut += 7) {
    auto t = ChatTemplate::Parse(source.substr(0, cut), options);
    if (t.ok()) (void)t->Render(ctx);
  }
}

// ---- API behaviour ----

TEST(ChatTemplate, JsonKeyOrderFollowsTheContextType) {
  ChatTemplate t = MustParse("{{ d | tojson }}");
  ordered_json ordered = {{"d", {{"b", 1}, {"a", 2}}}};
  auto r1 = t.Render(ordered);
  ASSERT_TRUE(r1.ok());
  EXPECT_EQ(*r1, R"({"b": 1, "a": 2})");
  nlohmann::json sorted = {{"d", {{"b", 1}, {"a", 2}}}};
  auto r2 = t.Render(sorted);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(*r2, R"({"a": 2, "b": 1})");
}

TEST(ChatTemplate, CopiesShareTheParsedTemplate) {
  ChatTemplate a = MustParse("{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}"
                             "{% if add_generation_prompt %}>{% endif %}{{ eos_token }}");
  ChatTemplate b = a;
  EXPECT_EQ(&a.source(), &b.source());
  ordered_json messages = {{{"role", "user"}, {"content", "hi"}}};
  auto r = b.RenderChat(messages, true, "<s>", "</s>");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(*r, "<s>[user:hi]></s>");
  nlohmann::json plain = {{{"content", "x"}, {"role", "user"}}};
  auto r2 = a.RenderChat(plain, false, "", "");
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(*r2, "[user:x]");
}

TEST(ChatTemplate, WhitespaceOptionsCanBeTurnedOff) {
  ChatTemplateOptions raw;
  raw.trim_blocks = false;
  raw.lstrip_blocks = false;
  auto r = RenderSource("  {% if true %}\nx\n  {% endif %}\n", ordered_json::object(), raw);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "  \nx\n  ");
  auto d = RenderSource("  {% if true %}\nx\n  {% endif %}\n", ordered_json::object());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, "x\n");
}

TEST(ChatTemplate, PythonStyleSemantics) {
  ordered_json ctx = {{"s", "  a  b  "}, {"f", 0.1}, {"big", 1e16}, {"xs", {3, 1, 2}}};
  auto check = [&](std::string_view source, std::string_view expected) {
    auto r = RenderSource(source, ctx);
    ASSERT_TRUE(r.ok()) << source << ": " << r.status().message();
    EXPECT_EQ(*r, expected) << source;
  };
  check("{{ s.split(None, 1) }}", R"(["a", "b  "])");
  check("{{ s.rsplit(None, 1) }}", R"(["  a", "b"])");
  check("{{ 'a,b,c'.rsplit(',', 1) }}", R"(["a,b", "c"])");
  check("{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxaxx'.strip('x') }}", "a  b  |  a  b|a");
  check("{{ f }} {{ big }} {{ 1e-5 }} {{ 2.0 * 3 }} {{ 10 / 4 }}", "0.1 1e+16 1e-05 6.0 2.5");
  check("{{ -7 % 3 }} {{ 7 % -3 }} {{ -7.5 // 2 }}", "2 -2 -4.0");
  check("{{ 'abc'[-1] }}{{ 'abc'[5] }}{{ xs[10] }}", "c");
  check("{{ 'héllo'|length }} {{ 'héllo'[1] }}", "5 é");
  check("{{ xs|sort|first }} {{ xs|max }} {{ xs|min }} {{ xs|sum }}", "1 3 1 6");
  check("{{ 'x' if none else 'y' }} {{ none is none }} {{ undefined_thing is undefined }}", "y true true");
  check("{{ 'a' 'b' }}", "ab");
  check("{{ [1, 2] == [1, 2] }} {{ 1 == 1.0 }} {{ {'a': 1} == {'a': 1} }}", "true true true");
  check("{{ 'ab' * 3 }}{{ [0] * 2 }}", "ababab[0, 0]");
  check("{{ 'A-b c'|title }} {{ 'aBC'|capitalize }}", "A-B C Abc");
  check("{{ 'héllo'|upper }} {{ 'ΣΟΦΙΑ'|lower }} {{ 'привет'.upper() }} {{ 'éa' is lower }} {{ 'ÉA' is lower }}",
        "HÉLLO σοφια ПРИВЕТ true false");
  check("{{ 0 ** 0 }} {{ 2 ** -1 }}", "1 0.5");
  check("{{ '😀'|tojson(ensure_ascii=true) }} {{ '\\ud83d\\ude00' }}", R"("\ud83d\ude00" 😀)");
  check("{{ {'b': 1, 'a': [1]}|tojson(sort_keys=true, separators=(',', ':')) }}", R"({"a":[1],"b":1})");
  check("{% for c in 'ab' %}{{ c }}.{% endfor %}", "a.b.");
  check("{{ xs|map('string')|join('-') }} {{ [1, 0, 2]|select|list }} {{ xs|select('odd')|list }}", "3-1-2 [1, 2] [3, 1]");
  check("{{ '3.9'|int }} {{ 'x'|int(7) }} {{ '  12 '|int }}", "3 7 12");
  check("{{ 4 is divisibleby 2 }} {{ 3 is divisibleby(2) }} {{ 'a' is in ['a'] }}", "true false true");
  check("{{ loop is undefined }}{% for x in [1] %}{{ loop.cycle('a', 'b') }}{% endfor %}", "truea");
}

}  // namespace
}  // namespace coda::text
