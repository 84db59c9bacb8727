// libFuzzer target, structure-aware (json_mutator.h): tokenizer.json as a model file carries it,
// mutated as JSON from DeepSeek-V3's own settings with a small vocabulary
// (tests/data/fuzz/tokenizer.json). A tokenizer that loads must encode and decode.
#include <cstddef>
#include <cstdint>
#include <string>

#include "coda/text/tokenizer.h"
#include "json_mutator.h"

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned seed) {
  return coda::fuzz::MutateJson(data, size, max_size, seed);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto tok = coda::text::Tokenizer::FromJson({reinterpret_cast<const char*>(data), size}, "fuzz.json");
  if (!tok.ok()) return 0;
  for (const char* text : {"Hello, world 123 4567!", "  tabs\tand\nlines  ", "中文とカタカナ", "<｜User｜>hi"}) {
    auto ids = tok->Encode(text, true);
    if (!ids.ok()) continue;
    auto back = tok->Decode(*ids);
    (void)back;
  }
  std::vector<coda::text::TokenId> every;
  for (coda::text::TokenId id = 0; id < 600; ++id) every.push_back(id);
  (void)tok->Decode(every);
  return 0;
}
