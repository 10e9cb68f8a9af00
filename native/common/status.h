// Status: how the world's problems (bad input, corrupt files) leave the core. Bugs use QV_ASSERT.
#pragma once
#include <string>
#include <utility>

namespace qv {

// Codes mirror the TypeScript QuiverError codes (src/errors.ts); the binding maps them by name.
enum class Code : int {
  Ok = 0,
  InvalidArgument,
  NotFound,
  AlreadyExists,
  FailedPrecondition,
  ResourceExhausted,
  OutOfRange,
  DataLoss,  // corrupt or truncated file
  Unavailable,
  Internal,
};

const char* code_name(Code c);

class Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok() { return Status(); }
  bool is_ok() const { return code_ == Code::Ok; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  Code code_ = Code::Ok;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return Status(Code::InvalidArgument, std::move(m)); }
inline Status not_found(std::string m) { return Status(Code::NotFound, std::move(m)); }
inline Status failed_precondition(std::string m) { return Status(Code::FailedPrecondition, std::move(m)); }
inline Status data_loss(std::string m) { return Status(Code::DataLoss, std::move(m)); }
inline Status resource_exhausted(std::string m) { return Status(Code::ResourceExhausted, std::move(m)); }

#define QV_RETURN_IF_ERROR(expr)         \
  do {                                   \
    ::qv::Status _qv_st = (expr);        \
    if (!_qv_st.is_ok()) return _qv_st;  \
  } while (0)

}  // namespace qv
