// Errors as values: every fallible call across a module boundary returns Status or Result<T>.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace coda {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument,  // the caller passed something wrong (bad flag, bad token id)
  kNotFound,         // a file, tensor or key that should exist does not
  kIoError,          // the operating system refused (open, read, write, rename)
  kCorrupt,          // a file is malformed, truncated or inconsistent
  kUnsupported,      // well-formed, but not something Coda implements
  kOutOfRange,       // a size or count exceeds a limit (context length, header size)
  kOutOfMemory,
  kInternal,         // a bug in Coda
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Prefixes the message with where the error happened ("file.coda: ...").
  Status WithContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
inline Status Corrupt(std::string m) { return {StatusCode::kCorrupt, std::move(m)}; }
inline Status Unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status OutOfRange(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
inline Status OutOfMemory(std::string m) { return {StatusCode::kOutOfMemory, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// Result<T> holds either a value or a non-ok Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    assert(!std::get<Status>(v_).ok() && "Result constructed from an ok Status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(v_); }

  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace coda

#define CODA_CONCAT_INNER_(a, b) a##b
#define CODA_CONCAT_(a, b) CODA_CONCAT_INNER_(a, b)

#define CODA_RETURN_IF_ERROR(expr)          \
  do {                                      \
    ::coda::Status coda_status_ = (expr);   \
    if (!coda_status_.ok()) return coda_status_; \
  } while (0)

#define CODA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()

#define CODA_ASSIGN_OR_RETURN(lhs, expr) \
  CODA_ASSIGN_OR_RETURN_IMPL_(CODA_CONCAT_(coda_result_, __LINE__), lhs, expr)
