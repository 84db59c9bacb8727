#include "coda/text/detokenizer.h"

#include "coda/text/unicode.h"

namespace coda::text {

Status StreamingDetokenizer::Push(TokenId id, std::string* out) {
  const auto bytes = tokenizer_.TokenBytes(id);
  if (!bytes) return InvalidArgument("StreamingDetokenizer: id " + std::to_string(id) + " is not in the vocabulary");
  if (skip_special_tokens_ && tokenizer_.IsSpecial(id)) return Status::Ok();
  pending_.append(*bytes);
  const size_t used = AppendUtf8Lossy(pending_, /*final=*/false, out);
  pending_.erase(0, used);
  return Status::Ok();
}

Result<std::string> StreamingDetokenizer::Push(TokenId id) {
  std::string out;
  CODA_RETURN_IF_ERROR(Push(id, &out));
  return out;
}

std::string StreamingDetokenizer::Flush() {
  std::string out;
  AppendUtf8Lossy(pending_, /*final=*/true, &out);
  pending_.clear();
  return out;
}

}  // namespace coda::text
