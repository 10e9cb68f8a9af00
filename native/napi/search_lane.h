// The search lane: one process-wide thread that runs small searches (a few queries) for the event
// loop, so that one awaited query does not pay the libuv thread-pool hand-off twice.
//
// Why: an AsyncWorker goes through uv_queue_work (mutex, condition variable, a futex wake of a
// sleeping pool thread, often on a core whose caches are cold) and back through uv_async_send. On
// the virtual machines measured here that costs 30-50 us per call, as much as the search itself
// for small vectors. The lane keeps one thread hot: after each task it spins for about twice the
// recent gap between tasks (at most QUIVER_SEARCH_SPIN_US, default 1,000 us; not while addon work
// is on the pool) watching a one-task slot, so a caller that awaits one search after another, or a
// server answering a client search after search, hands work over without a system call. The event loop never waits on the
// search: while a task is out it keeps polling (an active idle handle; it still runs timers and
// I/O) and settles the promise once the lane raises a flag, which saves the lane's uv_async_send
// and the loop's wake-up. Polling is bounded (QUIVER_SEARCH_POLL_US, default 1 ms per task), never
// runs while addon work is queued on the pool or with one usable CPU, and QUIVER_SEARCH_POLL=0
// turns it off; the answer then comes back through a thread-safe function (uv_async_send).
//
// The lane takes a task only when it is idle; a busy lane (concurrent searches) leaves the task
// to the caller's AsyncWorker, so concurrent load still spreads over the thread pool.
// QUIVER_SEARCH_LANE=0 turns the lane off.
//
// Spinning and polling bet on a core being free. The program may change their defaults
// (setSearchLaneDefaults: a cluster node turns both off, sharing its cores with its sidecar and
// often with other nodes); QUIVER_SEARCH_SPIN_US and QUIVER_SEARCH_POLL still override them.
#pragma once
#include <napi.h>

#include <memory>

#include "common/status.h"

namespace qv {
namespace napi {

// Work for the lane (or for a PromiseWorker): run() off the loop, resolve() on it.
class LaneTask {
 public:
  virtual ~LaneTask() = default;
  virtual Status run() = 0;
  virtual Napi::Value resolve(Napi::Env env) = 0;
};

// Starts `task` on the lane and sets *promise, or returns false (task untouched) when the lane is
// busy, disabled, or belongs to another environment (worker thread).
bool lane_try_run(Napi::Env env, std::unique_ptr<LaneTask>& task, napi_value* promise);

// searchLaneStats(): { enabled, spinMicros, laneTasks, poolTasks, poll, polledTasks, pollStops,
// wokenTasks, sleeping, ... } (poolTasks: small searches the lane was too busy for; wokenTasks:
// times the lane slept and was woken for a task; sleeping: the lane waits asleep for its next task).
Napi::Value lane_stats(const Napi::CallbackInfo& info);
// setSearchLaneDefaults(poll, spinMicros): whether the event loop polls for lane answers and the
// most the lane spins after a task (0 to kSpinMicrosMax), where QUIVER_SEARCH_POLL and
// QUIVER_SEARCH_SPIN_US do not say; the running lane follows them from its next task.
constexpr long kSpinMicrosMax = 1000000;
Napi::Value lane_defaults(const Napi::CallbackInfo& info);
void lane_count_fallback();
// searchLaneHold(on): a test hook. While on, the lane holds the task it takes without running it,
// so a test can keep a lane search in flight for as long as it needs (past the poll bound, while
// timers and I/O run) and then let it finish; the answer is the same as unheld.
Napi::Value lane_hold(const Napi::CallbackInfo& info);

}  // namespace napi
}  // namespace qv
