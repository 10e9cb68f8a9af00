// Device building blocks shared by the exact and IVF-PQ GPU searches.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include <cfloat>

namespace qv {
namespace cuda {

constexpr uint32_t kNoLabel = 0xFFFFFFFFu;
constexpr int kSelectThreads = 256;  // threads of every block that runs a BlockTopK
constexpr int kSelectSlots = 2048;   // power of two: [0, kpad) best so far, [kpad, slots) buffer

// ---------------------------------------------------------------------------------------------
// BlockTopK: the k smallest (distance, label) pairs offered by the threads of one block.
// Shared arrays of kSelectSlots pairs: the sorted best kpad (kpad = next power of two >= k,
// kpad <= 1024) followed by a buffer. Every thread calls offer() the same number of times (the
// loops that use it have block-uniform bounds); a candidate enters the buffer only if it beats the
// current k-th best. When the buffer could overflow in the next round, the whole array is
// bitonic-sorted and the threshold tightened. Ties order by label, as on the CPU.
struct BlockTopK {
  float* d;
  uint32_t* l;
  int* count;
  float* thresh;
  int k, kpad;

  __device__ static bool greater(float da, uint32_t la, float db, uint32_t lb) {
    return da > db || (da == db && la > lb);
  }

  __device__ void init(float* sd, uint32_t* sl, int* scount, float* sthresh, int kk) {
    d = sd;
    l = sl;
    count = scount;
    thresh = sthresh;
    k = kk;
    kpad = 1;
    while (kpad < kk) kpad <<= 1;
    for (int i = threadIdx.x; i < kSelectSlots; i += blockDim.x) {
      d[i] = FLT_MAX;
      l[i] = kNoLabel;
    }
    if (threadIdx.x == 0) {
      *count = 0;
      *thresh = FLT_MAX;
    }
    __syncthreads();
  }

  __device__ void sort_all() {
    for (int size = 2; size <= kSelectSlots; size <<= 1) {
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        for (int i = threadIdx.x; i < kSelectSlots / 2; i += blockDim.x) {
          int lo = 2 * i - (i & (stride - 1));
          int hi = lo + stride;
          bool ascending = (lo & size) == 0;
          if (greater(d[lo], l[lo], d[hi], l[hi]) == ascending) {
            float td = d[lo];
            d[lo] = d[hi];
            d[hi] = td;
            uint32_t tl = l[lo];
            l[lo] = l[hi];
            l[hi] = tl;
          }
        }
        __syncthreads();
      }
    }
  }

  // Sorts best + buffer, keeps the best kpad, empties the buffer. Call with all threads.
  __device__ void merge() {
    __syncthreads();
    int n = *count;
    for (int i = kpad + n + threadIdx.x; i < kSelectSlots; i += blockDim.x) {
      d[i] = FLT_MAX;
      l[i] = kNoLabel;
    }
    __syncthreads();
    sort_all();
    for (int i = kpad + threadIdx.x; i < kSelectSlots; i += blockDim.x) {
      d[i] = FLT_MAX;
      l[i] = kNoLabel;
    }
    if (threadIdx.x == 0) {
      *count = 0;
      *thresh = d[k - 1];
    }
    __syncthreads();
  }

  // One round: each thread offers at most one candidate. Call with all threads.
  __device__ void offer(bool valid, float dist, uint32_t label) {
    __syncthreads();
    if (*count + (int)blockDim.x > kSelectSlots - kpad) merge();
    if (valid && dist < *thresh) {
      int pos = atomicAdd(count, 1);
      d[kpad + pos] = dist;
      l[kpad + pos] = label;
    }
  }

  // Final merge; afterwards d[0..k) / l[0..k) hold the result nearest first (FLT_MAX / kNoLabel
  // where fewer than k were offered).
  __device__ void finish() { merge(); }
};

// Shared storage for one BlockTopK (static shared memory: 2048 * 8 bytes + 8).
struct TopKShared {
  float d[kSelectSlots];
  uint32_t l[kSelectSlots];
  int count;
  float thresh;
};

}  // namespace cuda
}  // namespace qv
