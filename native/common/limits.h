// Limits of the native core, checked at the boundary (native/napi and each index's entry points).
// The addon exports them to TypeScript (`limits`, native/napi/addon.cpp; read by src/native/limits.ts).
#pragma once
#include <cstddef>
#include <cstdint>

namespace qv {

constexpr uint32_t kDimMax = 65536;
constexpr uint32_t kTopKMax = 4096;
constexpr uint32_t kEfMax = 65536;
constexpr uint32_t kLabelNone = 0xFFFFFFFFu;  // "no result" in a label slot; not a valid label
constexpr size_t kBatchVectorsMax = 1u << 24;  // vectors in one add or search call

}  // namespace qv
