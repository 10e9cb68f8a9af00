#include "common/filter.h"

#include <algorithm>

#include "common/limits.h"

namespace qv {

Filter::Filter(const uint32_t* labels, size_t n) : labels_(labels, labels + n) {
  std::sort(labels_.begin(), labels_.end());
  labels_.erase(std::unique(labels_.begin(), labels_.end()), labels_.end());
  if (!labels_.empty() && labels_.back() == kLabelNone) labels_.pop_back();
  if (labels_.empty()) return;
  bits_.assign((static_cast<size_t>(labels_.back()) >> 6) + 1, 0);
  for (uint32_t l : labels_) bits_[l >> 6] |= uint64_t{1} << (l & 63);
}

}  // namespace qv
