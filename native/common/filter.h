// Filter: an allow-set of labels. Built once per search call from a sorted-or-not label list;
// holds both the sorted unique labels (for the exact fallback over a small set) and a bitmap
// (for O(1) membership during a scan or a graph walk).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace qv {

class Filter {
 public:
  Filter() = default;
  Filter(const uint32_t* labels, size_t n);

  bool allows(uint32_t label) const {
    size_t w = label >> 6;
    return w < bits_.size() && ((bits_[w] >> (label & 63)) & 1u);
  }
  size_t count() const { return labels_.size(); }
  const std::vector<uint32_t>& labels() const { return labels_; }  // sorted, unique

 private:
  std::vector<uint64_t> bits_;
  std::vector<uint32_t> labels_;
};

}  // namespace qv
