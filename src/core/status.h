// Status codes, Status and Result<T>: the one error-handling mechanism of edgevlm.
// No exceptions cross a layer boundary; every fallible function returns Status or Result<T>.
// Modelled on ExecuTorch's runtime/core/error.h + result.h.
#pragma once

#include <cassert>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace ev {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,  // a caller-supplied argument is out of range or malformed
  kNotFound = 2,         // a file, tensor or key does not exist
  kIoError = 3,          // the OS refused a read/write/mmap
  kCorrupt = 4,          // a file exists but its contents are malformed (bad header, offsets, JSON)
  kUnsupported = 5,      // valid input that this build cannot handle (architecture, dtype, codec)
  kShapeMismatch = 6,    // a tensor's shape or dtype disagrees with the config
  kOutOfMemory = 7,
  kInternal = 8,         // a bug in edgevlm
  kCancelled = 9,
  kEndOfStream = 10,
};

const char* status_code_name(StatusCode c);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return {}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "corrupt: model.safetensors: header length 99999 exceeds file size 100"
  std::string to_string() const;
  // Prefix the message with context ("loading model.safetensors: " + message).
  Status with_context(const std::string& ctx) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
inline Status Corrupt(std::string m) { return {StatusCode::kCorrupt, std::move(m)}; }
inline Status Unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status ShapeMismatch(std::string m) { return {StatusCode::kShapeMismatch, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// Result<T>: either a value or a non-ok Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status s) : v_(std::move(s)) {      // NOLINT(google-explicit-constructor)
    assert(!std::get<Status>(v_).ok() && "Result constructed from an ok Status");
  }
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
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

}  // namespace ev

#define EV_CONCAT_INNER(a, b) a##b
#define EV_CONCAT(a, b) EV_CONCAT_INNER(a, b)

// Return the Status if it is not ok.
#define EV_RETURN_IF_ERROR(expr)            \
  do {                                      \
    ::ev::Status ev_status_ = (expr);       \
    if (!ev_status_.ok()) return ev_status_; \
  } while (0)

// EV_ASSIGN_OR_RETURN(auto x, make_x());
#define EV_ASSIGN_OR_RETURN(lhs, rexpr) EV_ASSIGN_OR_RETURN_IMPL(EV_CONCAT(ev_result_, __LINE__), lhs, rexpr)
#define EV_ASSIGN_OR_RETURN_IMPL(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                             \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

// Check a condition; on failure return a Status built from the code and a message (ostream-free, string concat).
#define EV_CHECK_OR_RETURN(cond, status_expr) \
  do {                                        \
    if (!(cond)) return (status_expr);        \
  } while (0)
