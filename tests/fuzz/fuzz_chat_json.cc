// libFuzzer target, structure-aware (json_mutator.h): the JSON a user hands coda-chat's /load
// (and coda-tokenize's --chat and --batch lines, which take the same messages), with the real
// DeepSeek-V3 tokenizer and chat template: parsed with the depth limit, loaded as a
// conversation, rendered and encoded.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "coda/json.h"
#include "coda/text/text_assets.h"
#include "conversation.h"
#include "json_mutator.h"

namespace {
coda::text::TextAssets* g_assets = nullptr;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  auto a = coda::text::LoadTextAssetsFromDir(CODA_FUZZ_TOKENIZER_DIR);
  if (!a.ok()) std::abort();
  g_assets = new coda::text::TextAssets(std::move(*a));
  return 0;
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned seed) {
  return coda::fuzz::MutateJson(data, size, max_size, seed);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto j = coda::ParseJsonAs<nlohmann::ordered_json>({reinterpret_cast<const char*>(data), size}, "fuzz.json");
  if (!j.ok()) return 0;
  coda::chat::Conversation c(*g_assets);
  if (!c.Load(*j).ok()) return 0;
  auto rendered = c.Render(true);
  if (!rendered.ok()) return 0;
  (void)coda::text::EncodePrompt(*g_assets, *rendered);
  (void)c.Messages().dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  return 0;
}
