// Measures single-threaded Encode throughput on generated English-like text.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "coda/cli/command_line.h"
#include "coda/cli/values.h"
#include "coda/text/tokenizer.h"

namespace {

constexpr char kProgram[] = "coda-tokenize-bench";
constexpr char kAbout[] = R"(coda-tokenize-bench: single-threaded encoding throughput on generated English-like text.

Usage:
  coda-tokenize-bench [tokenizer-dir] [megabytes]

Encodes <megabytes> (default 4, at most 1024) of text with the tokenizer of <tokenizer-dir>
(default: the DeepSeek-V3 tokenizer of the tests), in one call and as 4 KB documents.)";

// Deterministic xorshift so that every run tokenizes the same text.
struct Rng {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  uint64_t Next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  size_t Below(size_t n) { return static_cast<size_t>(Next() % n); }
};

// Prose with a realistic mix: common and rare words, capitals, punctuation, numbers,
// contractions and paragraph breaks.
std::string MakeText(size_t bytes) {
  static const char* kWords[] = {
      "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by",
      "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had",
      "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there", "been", "if",
      "more", "when", "will", "would", "who", "so", "no", "model", "inference", "tokenizer", "language",
      "attention", "distributed", "performance", "experiment", "government", "international",
      "development", "particularly", "understanding", "responsibility", "mixture", "experts",
      "throughput", "latency", "quantization", "kernel", "memory", "bandwidth", "sequence", "context",
      "however", "therefore", "although", "because", "between", "through", "during", "without",
      "weather", "history", "science", "mountain", "river", "village", "library", "engineer",
      "it's", "don't", "we've", "they'll", "isn't", "you're"};
  static const char* kPunct[] = {",", ",", ".", ".", ";", ":", "?", "!", " -", ")"};
  constexpr size_t kNumWords = sizeof(kWords) / sizeof(kWords[0]);
  Rng rng;
  std::string text;
  text.reserve(bytes + 64);
  bool sentence_start = true;
  while (text.size() < bytes) {
    if (!sentence_start) text += ' ';
    const size_t r = rng.Below(100);
    if (r < 3) {
      text += std::to_string(rng.Below(100000));
    } else {
      std::string w = kWords[rng.Below(kNumWords)];
      if (sentence_start || r < 8) w[0] = static_cast<char>(w[0] - 'a' + 'A');
      text += w;
    }
    sentence_start = false;
    const size_t p = rng.Below(100);
    if (p < 10) {
      const char* punct = kPunct[rng.Below(sizeof(kPunct) / sizeof(kPunct[0]))];
      text += punct;
      sentence_start = punct[0] == '.' || punct[0] == '?' || punct[0] == '!';
      if (sentence_start && rng.Below(8) == 0) text += "\n\n";
    }
  }
  return text;
}

}  // namespace

static int Main(int argc, char** argv) {
  std::string dir = CODA_BENCH_TOKENIZER_DIR;
  float megabytes = 4;
  coda::cli::CommandLine cl(kProgram, kAbout);
  cl.Positional("tokenizer-dir", &dir);
  coda::cli::AddNumber(cl, "megabytes", &megabytes, "", "", {0, 1024, true, false});
  if (auto code = cl.ParseMain(argc, argv)) return *code;

  const auto t_load = std::chrono::steady_clock::now();
  auto tok = coda::text::Tokenizer::FromDirectory(dir);
  if (!tok.ok()) return cl.Fail(tok.status());
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  std::printf("loaded %s in %.2f s (vocab %zu)\n", dir.c_str(), load_s, tok->vocab_size());

  const std::string text = MakeText(static_cast<size_t>(megabytes * 1e6));
  const double mb = static_cast<double>(text.size()) / 1e6;

  // Whole text in one call, then as 4 KB documents (typical prompt sizes).
  for (int pass = 0; pass < 2; ++pass) {
    const size_t chunk = pass == 0 ? text.size() : 4096;
    size_t tokens = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t at = 0; at < text.size(); at += chunk) {
      // The text is ASCII, so any cut leaves valid UTF-8.
      size_t end = std::min(text.size(), at + chunk);
      auto ids = tok->Encode(std::string_view(text).substr(at, end - at), /*add_special_tokens=*/false);
      if (!ids.ok()) return cl.Fail(ids.status());
      tokens += ids->size();
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%-18s %.2f MB, %zu tokens (%.2f bytes/token): %.3f s, %.2f MB/s, %.0f ktok/s\n",
                pass == 0 ? "one call:" : "4 KB documents:", mb, tokens, static_cast<double>(text.size()) / tokens,
                s, mb / s, static_cast<double>(tokens) / s / 1e3);
  }
  return 0;
}

int main(int argc, char** argv) { return coda::cli::RunMain(kProgram, argc, argv, Main); }
