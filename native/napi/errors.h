// Errors crossing into JavaScript: a qv::Status becomes an instance of the QuiverError class that
// the TypeScript loader hands to setErrorClass() at load, with `code` set from the status code.
#pragma once
#include <napi.h>

#include <atomic>
#include <utility>

#include "common/status.h"

namespace qv {
namespace napi {

void set_error_class(Napi::Env env, Napi::Function cls);
Napi::Value make_error(Napi::Env env, const Status& st);
// Throws st as a QuiverError (C++ exception into N-API); st must not be ok.
[[noreturn]] void throw_status(Napi::Env env, const Status& st);
inline void throw_invalid(Napi::Env env, const std::string& message) {
  throw_status(env, invalid_argument(message));
}

// What a finished task settles its promise with: {true, resolve()} to resolve, or {false, error}
// to reject, where the error is st as a QuiverError, or the Napi::Error that resolve() threw.
// Shared by PromiseWorker and the search lane.
template <typename Resolve>
std::pair<bool, Napi::Value> outcome(Napi::Env env, const Status& st, Resolve&& resolve) {
  if (!st.is_ok()) return {false, make_error(env, st)};
  try {
    return {true, resolve()};
  } catch (const Napi::Error& e) {
    return {false, e.Value()};
  }
}

// pool_work_in_flight() counts the workers queued or running (the search lane polls for its answer
// only while none is, so that it never takes a core from them).
inline std::atomic<long>& pool_work_in_flight() {
  static std::atomic<long> n{0};
  return n;
}

// Promise-returning worker: Run() happens off the event loop and touches no JS value;
// Resolve() builds the result on the loop. A non-ok status rejects with a QuiverError.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  explicit PromiseWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {
    pool_work_in_flight().fetch_add(1, std::memory_order_relaxed);
  }
  ~PromiseWorker() override { pool_work_in_flight().fetch_sub(1, std::memory_order_relaxed); }
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  virtual Status Run() = 0;
  virtual Napi::Value Resolve(Napi::Env env) { return env.Undefined(); }

 private:
  void Execute() override { status_ = Run(); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    auto [ok, value] = outcome(env, status_, [&] { return Resolve(env); });
    if (ok) deferred_.Resolve(value);
    else deferred_.Reject(value);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

  Napi::Promise::Deferred deferred_;
  Status status_;
};

}  // namespace napi
}  // namespace qv
