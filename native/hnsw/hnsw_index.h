// PLACEHOLDER until the hnsw issue lands: create() and deserialize() refuse with FAILED_PRECONDITION.
#pragma once
#include <memory>

#include "common/index.h"

namespace qv {

class HnswIndex {
 public:
  static Status create(const IndexOptions& opts, std::unique_ptr<Index>* out) {
    return failed_precondition("hnsw index is not available in this build yet");
  }
  static Status deserialize(const EnvelopeInfo& info, std::unique_ptr<Index>* out) {
    return failed_precondition("hnsw index is not available in this build yet");
  }
};

}  // namespace qv
