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

// A synchronous search (searchSync) runs one query on the caller's thread, the event loop, so its
// work is bounded: it is refused (RESOURCE_EXHAUSTED) when the index's estimate of that work
// exceeds this many terms, a term being one vector component compared (a multiply-add of a query
// component with a stored one, or one product-quantizer table look-up). The estimates, checked
// before any work (SearchParams::terms_max):
//   flat   points x dim (points: the live ones, or those a filter allows)
//   hnsw   min(ef x 2m, points) x dim; a filter allowing a share s of the points: min(ef x 2m / s,
//          points) x dim, or, under 2% (searched exactly), its points x dim
//   ivfpq  nlist x dim + 256 x dim + nprobe x (256 + points / nlist) x m + refine x k x dim (a
//          filter allowing a share s scans until refine x k / s entries are found)
// The budget is about 1 to 2 ms of one core of the machines measured (docs/API.md).
constexpr uint64_t kSearchSyncTermsMax = uint64_t{1} << 23;
// Bytes one reserveSerialize call may map (a hint; serialize grows past it when needed).
constexpr uint64_t kSerializeReserveMax = uint64_t{1} << 40;

}  // namespace qv
