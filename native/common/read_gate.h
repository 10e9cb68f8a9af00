// ReadGate: a reader-writer gate whose readers take no lock and whose writers cannot be starved.
//
// Readers hold it shared (ReadGate::Shared). A writer uses it in two ways:
//   Exclusive    stops new readers (they sleep on a mutex) and waits for the running ones: the
//                writer then has the data to itself. Exclusive sections run one at a time.
//   grace()      returns once every reader that was running when it was called has finished; new
//                readers go on meanwhile. For a writer that changes shared data only in ways a
//                reader may see at any moment (HnswIndex's graph), and must know when no reader
//                can still hold something it took away (a removed slot). One thread at a time.
// A steady stream of readers cannot starve either: a closed gate admits none, and grace() waits
// only for readers counted on the other counter (see below), so a writer waits at most for the
// readers in flight. (std::shared_mutex on glibc prefers readers: there, overlapping readers can
// hold a writer off indefinitely, which test/native/stress.cpp ran into.)
//
// Cost per reader: enter = load, fetch_add, load; leave = fetch_sub; no lock, no syscall while the
// gate is open. A reader must not enter again while it holds the gate (a writer between the two
// would wait for the first while the second waits for the writer).
//
// How. state_ holds the phase (bit 0) and the closed flag (bit 1). A reader increments
// readers_[phase] and then re-reads state_: if it changed (a flip or a close came in between) it
// takes its count back and starts over. So, in the seq_cst order of these operations, a reader
// counted on readers_[p] entered while the phase was p and the gate open. grace() flips the phase
// and waits for readers_[old] to drain: the readers it waits for entered before the flip, and every
// reader that enters after the flip reads state_ from the flip (acquire on a release RMW) and so
// sees every change the writer made before it. Exclusive sets the flag and waits for both
// counters; a reader that finds the flag set blocks on closed_mu_, which the writer holds until it
// opens the gate. The writer's wait loads are seq_cst too (with an acquire load, a count taken just
// before the flag or the flip could be missed: the store-buffering pattern). Each fetch_sub is a
// release, so what a reader read happens before what the writer writes next.
#pragma once
#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>

namespace qv {

class ReadGate {
 public:
  class Shared {
   public:
    explicit Shared(ReadGate& g) : g_(g), phase_(g.enter()) {}
    ~Shared() { g_.readers_[phase_].n.fetch_sub(1, std::memory_order_release); }
    Shared(const Shared&) = delete;
    Shared& operator=(const Shared&) = delete;

   private:
    ReadGate& g_;
    const uint32_t phase_;
  };

  void grace() {
    const uint32_t old = state_.fetch_xor(kPhase, std::memory_order_seq_cst) & kPhase;
    drain(old);
  }

  class Exclusive {
   public:
    explicit Exclusive(ReadGate& g) : g_(g) {
      g_.closed_mu_.lock();
      g_.state_.fetch_or(kClosed, std::memory_order_seq_cst);
      g_.drain(0);
      g_.drain(1);
    }
    ~Exclusive() {
      g_.state_.fetch_and(~kClosed, std::memory_order_seq_cst);
      g_.closed_mu_.unlock();
    }
    Exclusive(const Exclusive&) = delete;
    Exclusive& operator=(const Exclusive&) = delete;

   private:
    ReadGate& g_;
  };

 private:
  static constexpr uint32_t kPhase = 1, kClosed = 2;

  uint32_t enter() {
    for (;;) {
      const uint32_t s = state_.load(std::memory_order_seq_cst);
      if (s & kClosed) {
        std::lock_guard<std::mutex> wait_open(closed_mu_);
        continue;
      }
      const uint32_t p = s & kPhase;
      readers_[p].n.fetch_add(1, std::memory_order_seq_cst);
      if (state_.load(std::memory_order_seq_cst) == s) return p;
      readers_[p].n.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  void drain(uint32_t p) {
    while (readers_[p].n.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  }

  // Each on its own cache line: queries write the counters, and read state_ only.
  alignas(64) std::atomic<uint32_t> state_{0};
  struct alignas(64) Counter {
    std::atomic<uint32_t> n{0};
  };
  Counter readers_[2];
  std::mutex closed_mu_;
};

}  // namespace qv
