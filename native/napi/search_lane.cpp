#include "napi/search_lane.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <algorithm>
#include <deque>
#include <fstream>
#include <functional>
#include <mutex>
#include <sched.h>
#include <string>
#include <thread>

#include <sched.h>
#include <uv.h>

#include "napi/errors.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QV_CPU_RELAX() _mm_pause()
#else
#define QV_CPU_RELAX() std::this_thread::yield()
#endif

namespace qv {
namespace napi {

namespace {

long env_long(const char* name, long dflt) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return dflt;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  return (end != nullptr && *end == '\0' && x >= 0) ? x : dflt;
}

class Lane;
// The process's lane, owned by the environment that started it (the main thread's, in practice;
// a search from another environment uses the pool). Cleared when that environment is torn down.
std::atomic<Lane*> the_lane{nullptr};
std::mutex lane_create_mu;
std::atomic<bool> lane_failed{false};
std::atomic<uint64_t> lane_tasks{0}, pool_tasks{0}, polled_tasks{0}, poll_stops{0}, woken_tasks{0};
// Nanoseconds summed over the lane's tasks: submission to start, the run, end to settled promise.
std::atomic<uint64_t> wait_ns{0}, run_ns{0}, deliver_ns{0};
// Test hook (searchLaneHold): while set, the lane keeps the task it took without running it.
std::atomic<bool> lane_held{false};
// Defaults of the spin cap and of polling (setSearchLaneDefaults); QUIVER_SEARCH_SPIN_US and
// QUIVER_SEARCH_POLL override them. Read by the running lane too, so a change applies at once.
std::atomic<long> spin_default_us{1000};
std::atomic<bool> poll_default{true};

void add_ns(std::atomic<uint64_t>& sum, std::chrono::steady_clock::time_point from, std::chrono::steady_clock::time_point to) {
  sum.fetch_add(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count()), std::memory_order_relaxed);
}

// The first line of a file, or "" where it cannot be read.
std::string first_line(const std::string& file) {
  std::ifstream f(file);
  std::string line;
  if (!f || !std::getline(f, line)) return "";
  return line;
}

// CPUs that a CPU quota of this process's cgroup, or of any cgroup above it, allows: the
// smallest quota / period found (cgroup v2 cpu.max "QUOTA PERIOD", v1 cpu.cfs_quota_us and
// cpu.cfs_period_us), or 0 where no quota is set or none can be read. A container given
// `--cpus=1` keeps every CPU in its affinity mask, so the mask alone would overstate it.
double cgroup_cpu_limit() {
  std::ifstream f("/proc/self/cgroup");
  std::string line, v1path, v2path;
  bool have_v1 = false, have_v2 = false;
  while (std::getline(f, line)) {  // "hierarchy-id:controllers:path"
    const size_t a = line.find(':');
    const size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string ctrls = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (line.compare(0, a, "0") == 0 && ctrls.empty()) {
      v2path = path;
      have_v2 = true;
    }
    for (size_t i = 0; i <= ctrls.size();) {
      const size_t j = std::min(ctrls.find(',', i), ctrls.size());
      if (ctrls.compare(i, j - i, "cpu") == 0) {
        v1path = path;
        have_v1 = true;
      }
      i = j + 1;
    }
  }
  double best = 0;
  auto consider = [&best](double quota, double period) {
    if (quota > 0 && period > 0 && (best == 0 || quota / period < best)) best = quota / period;
  };
  // Every cgroup from this one up to the root of the mount.
  auto each_level = [](std::string path, const std::function<void(const std::string&)>& fn) {
    for (;;) {
      fn(path == "/" ? std::string() : path);
      if (path.empty() || path == "/") return;
      const size_t cut = path.rfind('/');
      path = cut == 0 || cut == std::string::npos ? "/" : path.substr(0, cut);
    }
  };
  if (have_v1) {
    for (const char* mount : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuacct,cpu"}) {
      each_level(v1path, [&](const std::string& p) {
        const std::string dir = std::string(mount) + p;
        consider(std::atof(first_line(dir + "/cpu.cfs_quota_us").c_str()),
                 std::atof(first_line(dir + "/cpu.cfs_period_us").c_str()));
      });
    }
  }
  if (have_v2) {
    each_level(v2path, [&](const std::string& p) {
      const std::string max = first_line("/sys/fs/cgroup" + p + "/cpu.max");  // "max 100000" = none
      const size_t sp = max.find(' ');
      if (sp != std::string::npos && max.compare(0, sp, "max") != 0)
        consider(std::atof(max.substr(0, sp).c_str()), std::atof(max.substr(sp + 1).c_str()));
    });
  }
  return best;
}

// CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (whole CPUs).
// Polling needs one for the loop and one for the lane.
int usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  int n = CPU_COUNT(&set);
  const double limit = cgroup_cpu_limit();
  if (limit > 0) n = std::min(n, std::max(1, static_cast<int>(limit)));
  return n;
}

// The most the lane spins after a task: QUIVER_SEARCH_SPIN_US, else the default.
long spin_micros() {
  static const long from_env = env_long("QUIVER_SEARCH_SPIN_US", -1);
  return from_env >= 0 ? from_env : spin_default_us.load(std::memory_order_relaxed);
}
// Whether the loop may poll at all: read once (the lane decides at its start whether it can, and
// searchLaneStats() reports the same answer without re-reading the affinity mask and the cgroup
// files on every call).
bool poll_possible() {
  static const bool on = env_long("QUIVER_SEARCH_POLL", 1) != 0 && usable_cpus() >= 2;
  return on;
}
// Whether the loop polls for the next task's answer: possible, and QUIVER_SEARCH_POLL=1 or, where
// the variable is not set, the default.
bool poll_enabled() {
  static const bool from_env = env_long("QUIVER_SEARCH_POLL", 0) != 0;
  return poll_possible() && (from_env || poll_default.load(std::memory_order_relaxed));
}
long poll_micros() { return env_long("QUIVER_SEARCH_POLL_US", 1000); }

struct Pending {
  std::unique_ptr<LaneTask> task;
  napi_deferred deferred;
  Status status;
  std::chrono::steady_clock::time_point submitted;
  std::chrono::steady_clock::time_point ended{};
};

class Lane {
 public:
  Lane(napi_env env, bool poll, long poll_us) : env_(env), poll_(poll), poll_max_(std::chrono::microseconds(poll_us)) {}

  bool start() {
    napi_value name;
    if (napi_create_string_utf8(env_, "quiver-search-lane", NAPI_AUTO_LENGTH, &name) != napi_ok) return false;
    if (napi_create_threadsafe_function(env_, nullptr, nullptr, name, 0, 1, nullptr, nullptr, this, &Lane::deliver,
                                        &tsfn_) != napi_ok)
      return false;
    napi_unref_threadsafe_function(env_, tsfn_);  // an idle lane does not keep the process alive
    if (poll_) {
      // The idle handle that polls for answers, and the async context its callback scope needs
      // (so that the awaiting code's microtasks run when the promise settles, as they do after a
      // thread-safe function's call). Without them the lane answers through the function only.
      uv_loop_t* loop = nullptr;
      napi_value res, rname;
      poll_ = napi_get_uv_event_loop(env_, &loop) == napi_ok && napi_create_object(env_, &res) == napi_ok &&
              napi_create_reference(env_, res, 1, &resource_) == napi_ok &&
              napi_create_string_utf8(env_, "quiver-search-lane", NAPI_AUTO_LENGTH, &rname) == napi_ok &&
              napi_async_init(env_, res, rname, &actx_) == napi_ok && uv_idle_init(loop, &idle_) == 0;
      idle_.data = this;
    }
    thread_ = std::thread([this] { loop(); });
    napi_add_env_cleanup_hook(env_, &Lane::cleanup, this);
    return true;
  }

  napi_env env() const { return env_; }
  bool asleep() const { return sleeping_.load(std::memory_order_relaxed); }

  // Event loop only.
  bool try_submit(std::unique_ptr<LaneTask>& task, napi_value* promise) {
    if (busy_.exchange(true, std::memory_order_acq_rel)) return false;
    napi_deferred deferred;
    napi_value js_promise;
    if (napi_create_promise(env_, &deferred, &js_promise) != napi_ok) {
      busy_.store(false, std::memory_order_release);
      return false;
    }
    *promise = js_promise;
    auto* p = new Pending{std::move(task), deferred, Status::ok(), std::chrono::steady_clock::now()};
    if (in_flight_++ == 0) napi_ref_threadsafe_function(env_, tsfn_);
    // Poll for the answer when nothing else of ours runs on the pool (the loop's core would be
    // taken from that work). Decided per task before the lane can see it; the lane reads it once
    // the task is done, and the handle stays on until every task is delivered.
    const bool poll = poll_ && poll_enabled();
    if (poll && !idle_on_ && pool_work_in_flight().load(std::memory_order_relaxed) == 0) {
      polling_.store(true, std::memory_order_seq_cst);
      uv_idle_start(&idle_, &Lane::on_idle);
      idle_on_ = true;
    }
    // (A task submitted from the microtasks of a delivery that just gave up polling finds the
    // handle still on but polling_ lowered: it is answered through the wake-up, not counted here.)
    if (idle_on_ && polling_.load(std::memory_order_relaxed)) {
      if (poll) {
        poll_since_ = p->submitted;
        polled_tasks.fetch_add(1, std::memory_order_relaxed);
      } else {
        // Polling was turned off meanwhile: as when the loop gives up (the same handshake), this
        // answer comes through the wake-up, and the handle stops at its next run.
        polling_.store(false, std::memory_order_seq_cst);
      }
    }
    slot_.store(p, std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_seq_cst)) {
      std::lock_guard<std::mutex> g(mu_);
      cv_.notify_one();
    }
    return true;
  }

 private:
  void loop() {
    for (;;) {
      Pending* p = slot_.exchange(nullptr, std::memory_order_acq_rel);
      if (p == nullptr) {
        // Spin only while tasks have been arriving within the spin cap (a caller awaiting
        // searches back to back, or a server answering one client after another), for about
        // twice the recent gap between tasks: long enough to catch the next task of a steady
        // caller, short once the tasks stop. A sleeping lane costs the next task a futex wake on
        // a halted vCPU (tens of us here); spinning costs a core, so it also stops as soon as
        // addon work is on the libuv pool (concurrent searches, builds), whose threads need the
        // cores, and it never starts when tasks come further apart than the cap.
        const double spin_us = static_cast<double>(spin_micros());
        if (spin_us > 0 && gap_ema_us_ < spin_us) {
          const double want_us = std::min(spin_us, std::max(kSpinMinUs, 2.0 * gap_ema_us_));
          const auto start = std::chrono::steady_clock::now();
          const auto until = start + std::chrono::microseconds(static_cast<long>(want_us));
          const auto polite = start + std::chrono::microseconds(kSpinSoloUs);
          for (auto t = start; !stop_.load(std::memory_order_relaxed) && slot_.load(std::memory_order_acquire) == nullptr &&
                               pool_work_in_flight().load(std::memory_order_relaxed) == 0 && t < until;
               t = std::chrono::steady_clock::now()) {
            for (int i = 0; i < 16; ++i) QV_CPU_RELAX();
            // Past the first stretch, give the core to any thread waiting for it: on a machine
            // with few cores the process that sends the next task (a client) may be queued
            // behind this spin. A caller searching back to back is caught before (no syscall).
            if (t > polite) sched_yield();
          }
        }
        if (slot_.load(std::memory_order_acquire) == nullptr) {
          std::unique_lock<std::mutex> l(mu_);
          sleeping_.store(true, std::memory_order_seq_cst);
          cv_.wait(l, [this] { return stop_.load() || slot_.load(std::memory_order_seq_cst) != nullptr; });
          sleeping_.store(false, std::memory_order_relaxed);
          woken_tasks.fetch_add(1, std::memory_order_relaxed);
        }
        if (stop_.load()) return;
        continue;
      }
      if (have_end_) {
        // Time from the end of the previous task to this submission (not to this pick-up, so a
        // sleeping lane's own wake-up does not count), capped so that the average recovers fast.
        const double gap = std::chrono::duration<double, std::micro>(p->submitted - last_end_).count();
        const double cap = 4.0 * static_cast<double>(spin_micros());
        gap_ema_us_ = 0.75 * gap_ema_us_ + 0.25 * std::min(std::max(gap, 0.0), cap);
      }
      while (lane_held.load(std::memory_order_acquire) && !stop_.load()) std::this_thread::sleep_for(std::chrono::microseconds(100));
      const auto started = std::chrono::steady_clock::now();
      add_ns(wait_ns, p->submitted, started);
      p->status = run_reporting([p] { return p->task->run(); });
      last_end_ = std::chrono::steady_clock::now();
      p->ended = last_end_;
      add_ns(run_ns, started, last_end_);
      {
        std::lock_guard<std::mutex> g(done_mu_);
        done_.push_back(p);
      }
      have_end_ = true;
      busy_.store(false, std::memory_order_release);
      // For a polling loop, raise the flag; if the loop gave up polling meanwhile (it then takes
      // what the flag announced itself, or finds it lowered), the function call makes sure the
      // answer is delivered. A delivery that finds nothing done is harmless.
      bool wake = true;
      if (polling_.load(std::memory_order_seq_cst)) {
        ready_.store(true, std::memory_order_seq_cst);
        wake = !polling_.load(std::memory_order_seq_cst);
      }
      if (wake) napi_call_threadsafe_function(tsfn_, nullptr, napi_tsfn_nonblocking);
    }
  }

  // On the event loop: settles every finished task's promise.
  static void deliver(napi_env env, napi_value, void* context, void*) {
    auto* self = static_cast<Lane*>(context);
    std::deque<Pending*> done;
    {
      std::lock_guard<std::mutex> g(self->done_mu_);
      done.swap(self->done_);
    }
    for (Pending* p : done) {
      std::unique_ptr<Pending> owned(p);
      if (env == nullptr) continue;  // shutting down
      Napi::Env e(env);
      Napi::HandleScope scope(e);
      auto [ok, value] = outcome(e, p->status, [&] { return p->task->resolve(e); });
      add_ns(deliver_ns, p->ended, std::chrono::steady_clock::now());
      if (ok) napi_resolve_deferred(env, p->deferred, value);
      else napi_reject_deferred(env, p->deferred, value);
      if (--self->in_flight_ == 0) napi_unref_threadsafe_function(env, self->tsfn_);
    }
  }

  // On the event loop, once per loop iteration while tasks are out in poll mode: an active idle
  // handle makes the loop poll for I/O without sleeping, so timers and I/O still run; an answer
  // is settled here without the lane's uv_async_send (an eventfd write) and the loop's wake-up.
  //
  // Polling stops when every task is delivered, and also when a task has been out for
  // QUIVER_SEARCH_POLL_US (default 1,000) or work of ours is queued on the pool meanwhile: the
  // loop then sleeps and the lane's thread-safe function call wakes it, as without polling.
  static void on_idle(uv_idle_t* h) {
    auto* self = static_cast<Lane*>(h->data);
    bool stop = false;
    if (!self->ready_.load(std::memory_order_seq_cst) && self->in_flight_ > 0 &&
        (pool_work_in_flight().load(std::memory_order_relaxed) > 0 ||
         std::chrono::steady_clock::now() - self->poll_since_ > self->poll_max_)) {
      self->polling_.store(false, std::memory_order_seq_cst);
      poll_stops.fetch_add(1, std::memory_order_relaxed);
      stop = true;
    }
    if (self->ready_.exchange(false, std::memory_order_seq_cst)) {
      napi_env env = self->env_;
      napi_handle_scope hs;
      napi_open_handle_scope(env, &hs);
      napi_value res;
      napi_get_reference_value(env, self->resource_, &res);
      napi_callback_scope cs;
      napi_open_callback_scope(env, res, self->actx_, &cs);
      deliver(env, nullptr, self, nullptr);
      napi_close_callback_scope(env, cs);
      napi_close_handle_scope(env, hs);
    }
    if ((stop || self->in_flight_ == 0 || !self->polling_.load(std::memory_order_seq_cst)) && self->idle_on_) {
      uv_idle_stop(&self->idle_);
      self->idle_on_ = false;
      self->polling_.store(false, std::memory_order_seq_cst);
    }
  }

  static void cleanup(void* arg) {
    auto* self = static_cast<Lane*>(arg);
    if (self->poll_) {
      uv_idle_stop(&self->idle_);
      uv_close(reinterpret_cast<uv_handle_t*>(&self->idle_), nullptr);
    }
    self->stop_.store(true);
    {
      std::lock_guard<std::mutex> g(self->mu_);
      self->cv_.notify_one();
    }
    if (self->thread_.joinable()) self->thread_.join();
    Lane* expected = self;
    the_lane.compare_exchange_strong(expected, nullptr);
    // The thread-safe function is torn down with the environment; the lane itself stays
    // allocated (a pointer to it may still sit in that function's queue).
  }

  napi_env env_;
  static constexpr double kSpinMinUs = 100.0;
  static constexpr long kSpinSoloUs = 50;  // spin without yielding this long first
  napi_threadsafe_function tsfn_ = nullptr;
  std::thread thread_;
  std::atomic<bool> busy_{false};
  std::atomic<Pending*> slot_{nullptr};
  std::atomic<bool> sleeping_{false};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::mutex done_mu_;
  std::deque<Pending*> done_;
  long in_flight_ = 0;  // event loop only
  bool poll_;  // fixed once start() returns
  const std::chrono::microseconds poll_max_;
  std::chrono::steady_clock::time_point poll_since_{};  // event loop only: the polled task's submission
  uv_idle_t idle_{};
  bool idle_on_ = false;
  napi_ref resource_ = nullptr;
  napi_async_context actx_ = nullptr;
  std::atomic<bool> polling_{false};  // set by the loop while its idle handle polls
  std::atomic<bool> ready_{false};    // set by the lane: done_ holds answers for the poller
  // Lane thread only: end of the last task, and the running average of the gap to the next one.
  std::chrono::steady_clock::time_point last_end_{};
  bool have_end_ = false;
  double gap_ema_us_ = 0;
};

}  // namespace

bool lane_try_run(Napi::Env env, std::unique_ptr<LaneTask>& task, napi_value* promise) {
  Lane* lane = the_lane.load(std::memory_order_acquire);
  if (lane == nullptr) {
    if (lane_failed.load()) return false;
    std::lock_guard<std::mutex> g(lane_create_mu);
    lane = the_lane.load();
    if (lane == nullptr) {
      if (env_long("QUIVER_SEARCH_LANE", 1) == 0) {
        lane_failed.store(true);
        return false;
      }
      lane = new Lane(env, poll_possible(), poll_micros());
      if (!lane->start()) {
        delete lane;
        lane_failed.store(true);
        return false;
      }
      the_lane.store(lane, std::memory_order_release);
    }
  }
  if (lane->env() != static_cast<napi_env>(env)) return false;
  if (!lane->try_submit(task, promise)) return false;
  lane_tasks.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void lane_count_fallback() { pool_tasks.fetch_add(1, std::memory_order_relaxed); }

Napi::Value lane_hold(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsBoolean()) throw_invalid(info.Env(), "searchLaneHold(on: boolean)");
  lane_held.store(info[0].As<Napi::Boolean>().Value(), std::memory_order_release);
  return info.Env().Undefined();
}

Napi::Value lane_defaults(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsBoolean() || !info[1].IsNumber())
    throw_invalid(env, "setSearchLaneDefaults(poll: boolean, spinMicros: number)");
  const double spin = info[1].As<Napi::Number>().DoubleValue();
  if (!(spin >= 0 && spin <= kSpinMicrosMax) || spin != static_cast<double>(static_cast<long>(spin)))
    throw_invalid(env, "spinMicros must be a whole number from 0 to " + std::to_string(kSpinMicrosMax));
  poll_default.store(info[0].As<Napi::Boolean>().Value(), std::memory_order_relaxed);
  spin_default_us.store(static_cast<long>(spin), std::memory_order_relaxed);
  return env.Undefined();
}

Napi::Value lane_stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("enabled", Napi::Boolean::New(env, !lane_failed.load() && env_long("QUIVER_SEARCH_LANE", 1) != 0));
  o.Set("spinMicros", Napi::Number::New(env, static_cast<double>(spin_micros())));
  o.Set("laneTasks", Napi::Number::New(env, static_cast<double>(lane_tasks.load())));
  o.Set("poolTasks", Napi::Number::New(env, static_cast<double>(pool_tasks.load())));
  o.Set("poll", Napi::Boolean::New(env, poll_enabled()));
  o.Set("polledTasks", Napi::Number::New(env, static_cast<double>(polled_tasks.load())));
  o.Set("pollStops", Napi::Number::New(env, static_cast<double>(poll_stops.load())));
  o.Set("wokenTasks", Napi::Number::New(env, static_cast<double>(woken_tasks.load())));
  const Lane* lane = the_lane.load(std::memory_order_acquire);
  o.Set("sleeping", Napi::Boolean::New(env, lane != nullptr && lane->asleep()));
  o.Set("waitNanos", Napi::Number::New(env, static_cast<double>(wait_ns.load())));
  o.Set("runNanos", Napi::Number::New(env, static_cast<double>(run_ns.load())));
  o.Set("deliverNanos", Napi::Number::New(env, static_cast<double>(deliver_ns.load())));
  return o;
}

}  // namespace napi
}  // namespace qv
