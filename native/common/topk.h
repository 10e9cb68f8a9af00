// TopK: the k smallest (distance, label) pairs seen, as a bounded max-heap. worst() is the
// admission threshold, so the common case (a candidate that does not qualify) is one compare.
// Pairs compare by distance, then label, so the k kept are the same whatever the order they came
// in (a scan split across threads keeps what one thread would).
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "common/limits.h"

namespace qv {

class TopK {
 public:
  explicit TopK(uint32_t k = 0) { reset(k); }
  void reset(uint32_t k) {
    k_ = k;
    heap_.clear();
    heap_.reserve(k);
  }
  float worst() const {
    return heap_.size() < k_ ? std::numeric_limits<float>::infinity() : heap_.front().first;
  }
  void push(float d, uint32_t label) {
    if (heap_.size() < k_) {
      heap_.emplace_back(d, label);
      std::push_heap(heap_.begin(), heap_.end());
    } else if (std::make_pair(d, label) < heap_.front()) {
      std::pop_heap(heap_.begin(), heap_.end());
      heap_.back() = {d, label};
      std::push_heap(heap_.begin(), heap_.end());
    }
  }
  size_t size() const { return heap_.size(); }
  const std::vector<std::pair<float, uint32_t>>& items() const { return heap_; }
  // Writes k results nearest first, padding with kLabelNone / +inf; equal distances in label order.
  void write_sorted(uint32_t* labels, float* distances) {
    std::sort(heap_.begin(), heap_.end());
    for (uint32_t i = 0; i < k_; ++i) {
      if (i < heap_.size()) {
        labels[i] = heap_[i].second;
        distances[i] = heap_[i].first;
      } else {
        labels[i] = kLabelNone;
        distances[i] = std::numeric_limits<float>::infinity();
      }
    }
  }

 private:
  uint32_t k_ = 0;
  std::vector<std::pair<float, uint32_t>> heap_;
};

}  // namespace qv
