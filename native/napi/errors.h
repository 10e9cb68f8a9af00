// Errors crossing into JavaScript: a qv::Status becomes an instance of the QuiverError class that
// the TypeScript loader hands to setErrorClass() at load, with `code` set from the status code.
#pragma once
#include <napi.h>

#include <atomic>
#include <exception>
#include <new>
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

// Running out of memory reaches JavaScript as RESOURCE_EXHAUSTED wherever it happens: off the loop
// (run_reporting, in every PromiseWorker and the search lane) and on it (on_loop, around every
// NativeIndex method and the addon's allocating functions). node-addon-api alone would turn a
// std::bad_alloc into a plain Error off the loop and let it escape N-API (std::terminate) on it.
// The message fits the small-string buffer: building it allocates nothing.
inline Status out_of_memory() { return resource_exhausted("out of memory"); }

// The status of work off the event loop, with what it throws reported as a status: std::bad_alloc
// (also from a parallel_for thread) as RESOURCE_EXHAUSTED, another std::exception as INTERNAL.
template <typename Fn>
Status run_reporting(Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return out_of_memory();
  } catch (const std::exception& e) {
    return Status(Code::Internal, e.what());
  }
}

// fn() on the event loop, with a std::bad_alloc thrown as a RESOURCE_EXHAUSTED QuiverError.
template <typename Fn>
auto on_loop(Napi::Env env, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    throw_status(env, out_of_memory());
  }
}
// A function for Napi::Function::New or StaticMethod, run through on_loop.
template <Napi::Value (*F)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  return on_loop(info.Env(), [&] { return F(info); });
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
  void Execute() override { status_ = run_reporting([this] { return Run(); }); }
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
