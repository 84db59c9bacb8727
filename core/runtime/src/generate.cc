// Generation: prefill a prompt, then sample one token at a time until a stop condition.
#include <algorithm>
#include <chrono>

#include "coda/runtime.h"

namespace coda {

Result<GenerateResult> Generate(Session& session, Sampler& sampler, std::span<const int32_t> prompt,
                                const GenerateOptions& options, const std::function<bool(int32_t)>& on_token) {
  using Clock = std::chrono::steady_clock;
  GenerateResult r;
  r.prompt_tokens = static_cast<uint32_t>(prompt.size());
  if (!options.stop_strings.empty() && !options.token_text)
    return InvalidArgument("stop strings need a token_text function");
  auto t0 = Clock::now();
  CODA_ASSIGN_OR_RETURN(std::span<const float> logits, session.Forward(prompt));
  r.prefill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<int32_t> recent(prompt.end() - std::min<size_t>(prompt.size(), options.repetition_window), prompt.end());
  std::string text;
  size_t longest_stop = 0;
  for (const auto& s : options.stop_strings) longest_stop = std::max(longest_stop, s.size());
  t0 = Clock::now();
  for (uint32_t i = 0; i < options.max_new_tokens; ++i) {
    const int32_t tok = sampler.Sample(logits, recent);
    if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), tok) != options.stop_tokens.end()) {
      r.stop = GenerateResult::Stop::kStopToken;
      break;
    }
    r.tokens.push_back(tok);
    recent.push_back(tok);
    if (recent.size() > options.repetition_window) recent.erase(recent.begin());
    if (on_token && !on_token(tok)) {
      r.stop = GenerateResult::Stop::kCallback;
      break;
    }
    if (longest_stop) {
      text += options.token_text(tok);
      bool hit = false;
      for (const auto& s : options.stop_strings) hit = hit || (!s.empty() && text.find(s) != std::string::npos);
      if (hit) {
        r.stop = GenerateResult::Stop::kStopString;
        break;
      }
      if (text.size() > 4 * longest_stop) text.erase(0, text.size() - 2 * longest_stop);
    }
    if (i + 1 == options.max_new_tokens) break;
    const int32_t next[1] = {tok};
    auto step = session.Forward(next);
    if (!step.ok()) return step.status();
    logits = *step;
  }
  r.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return r;
}

}  // namespace coda
