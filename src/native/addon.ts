/**
 * Loads the native addon once. The CUDA build (build-cuda/, from `npm run build:cuda`) is used when
 * it is present and a GPU answers; otherwise the CPU build (build/, from node-gyp). QUIVER_DEVICE=cpu
 * forces the CPU build.
 */
import * as fs from 'fs';
import * as path from 'path';
import { QuiverError } from '../errors';

/** The search lane (native/napi/search_lane.h): small searches on one hot thread. */
export interface SearchLaneStats {
  /** false when QUIVER_SEARCH_LANE=0 or the lane could not start. */
  enabled: boolean;
  /** The most the lane spins for the next task before it sleeps (QUIVER_SEARCH_SPIN_US, else the default: 1000, 0 on a cluster node). */
  spinMicros: number;
  /** Small searches the lane ran. */
  laneTasks: number;
  /** Small searches that went to the thread pool because the lane was busy (or off). */
  poolTasks: number;
  /**
   * Whether the event loop polls for lane answers (QUIVER_SEARCH_POLL, else the default: on, off on
   * a cluster node; off where the process may use only one CPU).
   */
  poll: boolean;
  /** Lane searches whose answer the event loop polled for instead of being woken. */
  polledTasks: number;
  /**
   * Polls that gave up before the answer came (past QUIVER_SEARCH_POLL_US, or addon work queued on
   * the pool meanwhile); those answers came through the wake-up.
   */
  pollStops: number;
  /** Times the lane slept and was woken for a task (the rest found it spinning, or busy). */
  wokenTasks: number;
  /** Whether the lane waits asleep for its next task now (neither spinning nor running one). */
  sleeping: boolean;
  /** Nanoseconds summed over lane searches from submission to the lane's start on them. */
  waitNanos: number;
  /** Nanoseconds summed over lane searches running. */
  runNanos: number;
  /** Nanoseconds summed over lane searches from their end to their promise being settled. */
  deliverNanos: number;
}

/* eslint-disable @typescript-eslint/no-explicit-any */
export interface NativeAddon {
  setErrorClass(cls: unknown): void;
  simdLevel(): string;
  simdLevels(): string[];
  searchLaneStats(): SearchLaneStats;
  /** Bytes every index holds for its next serialize: reserved, or kept from the last snapshot (ARCHITECTURE G11). */
  snapshotBufferBytes(): number;
  /**
   * Test hook: while on, the search lane holds the task it takes without running it, so a test can
   * keep a lane search in flight as long as it needs; off lets it run (native/napi/search_lane.h).
   */
  searchLaneHold(on: boolean): void;
  /** The search lane's defaults for polling and its spin cap (native/napi/search_lane.h). */
  setSearchLaneDefaults(poll: boolean, spinMicros: number): void;
  /** The core's limits (native/common/limits.h). */
  limits: { dimMax: number; topKMax: number; efMax: number; labelNone: number; batchVectorsMax: number; searchSyncTermsMax: number };
  /** CRC-32C of bytes, continuing from crc (SSE 4.2 where the CPU has it). */
  crc32c(bytes: Uint8Array, crc?: number): number;
  /** A zeroed Float32Array for bulk rows; from 1 MB up in whole 2 MB pages advised for huge pages. */
  allocRows(floats: number): Float32Array;
  /** glibc malloc: keep freed heap tops up to trimBytes, heap-allocate blocks under mmapBytes. */
  tuneAllocator(trimBytes: number, mmapBytes: number): boolean;
  /** glibc malloc_trim(0): return the free memory of every arena to the system. */
  trimAllocator(): boolean;
  /** Detaches the ArrayBuffer `bytes` views whole (INVALID_ARGUMENT for a part of one). */
  releaseBuffer(bytes: Uint8Array): void;
  kernel(name: string, level: string, a: ArrayBufferView, b: ArrayBufferView): number;
  scanBench(level: string, base: Float32Array, dim: number, query: Float32Array, repeats: number): number;
  sumBench(level: string, base: Float32Array, repeats: number): number;
  // CUDA build only (native/napi/gpu_cuda.cpp; see src/native/gpu.ts).
  gpuInfo?(): { available: boolean; name?: string; memoryBytes?: number; reason?: string };
  gpuFlatCreate?(dim: number, metric: string, vectors: Float32Array, labels: Uint32Array | null): Promise<unknown>;
  gpuFlatSearch?(handle: unknown, queries: Float32Array, k: number): Promise<unknown>;
  gpuIvfPqCreate?(nativeIndex: unknown): Promise<unknown>;
  gpuIvfPqSearch?(handle: unknown, queries: Float32Array, k: number, nprobe: number): Promise<unknown>;
  gpuFree?(handle: unknown): void;
  NativeIndex: any;
}

/** skipped: why a CUDA build that is present was not used (for gpuInfo's reason). */
let cached: { addon: NativeAddon; build: 'cpu' | 'cuda'; path: string; skipped?: string } | undefined;

function candidates(): { file: string; build: 'cpu' | 'cuda' }[] {
  // dist/src/native -> package root is three levels up; src/native (ts-node/vitest) two levels up.
  const roots = [path.resolve(__dirname, '..', '..', '..'), path.resolve(__dirname, '..', '..')];
  const out: { file: string; build: 'cpu' | 'cuda' }[] = [];
  for (const root of roots) {
    if (process.env.QUIVER_DEVICE !== 'cpu') out.push({ file: path.join(root, 'build-cuda', 'Release', 'quiver_cuda.node'), build: 'cuda' });
    out.push({ file: path.join(root, 'build', 'Release', 'quiver.node'), build: 'cpu' });
  }
  return out;
}

export function loadAddon(): { addon: NativeAddon; build: 'cpu' | 'cuda'; path: string; skipped?: string } {
  if (cached) return cached;
  const errors: string[] = [];
  for (const c of candidates()) {
    if (!fs.existsSync(c.file)) continue;
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      const addon = require(c.file) as NativeAddon;
      addon.setErrorClass(QuiverError);
      if (c.build === 'cuda') {
        const info = addon.gpuInfo!(); // every CUDA build has it
        if (!info.available) {
          errors.push(`${c.file}: no GPU answered (${info.reason ?? 'unknown'})`);
          continue;
        }
      }
      // Throws QuiverError when QUIVER_SIMD names a level this CPU lacks.
      addon.simdLevel();
      cached = { addon, build: c.build, path: c.file, skipped: errors.length ? errors.join('; ') : undefined };
      return cached;
    } catch (e) {
      if (e instanceof QuiverError) throw e;
      errors.push(`${c.file}: ${(e as Error).message}`);
    }
  }
  throw new QuiverError(
    'FAILED_PRECONDITION',
    `the Quiver native addon is not built (run \`npm ci\` or \`npm run build:native\`)${errors.length ? ': ' + errors.join('; ') : ''}`,
  );
}

export function addon(): NativeAddon {
  return loadAddon().addon;
}

/**
 * For a long-running server: glibc malloc keeps up to 256 MiB of freed memory at the top of its
 * heaps and serves blocks under 32 MiB from them, instead of unmapping and re-mapping the same
 * memory for every large batch (page faults are expensive on the VMs measured). Off with
 * QUIVER_MALLOC_TUNE=0; false where it did not apply (not glibc).
 */
export function tuneAllocatorForServer(): boolean {
  if (process.env.QUIVER_MALLOC_TUNE === '0') return false;
  return addon().tuneAllocator(256 << 20, 32 << 20);
}

/**
 * Returns the memory malloc holds free (every thread's arena) to the system; for a server gone
 * quiet (tuneAllocatorForServer keeps freed memory for the next batch while it is busy). False
 * where nothing was returned or it did not apply (not glibc).
 */
export function trimAllocator(): boolean {
  return addon().trimAllocator();
}

/**
 * Frees the memory behind `bytes` now, not at a garbage collection, by detaching its ArrayBuffer:
 * every view of it then reads as empty. For a buffer the caller alone holds and views whole (a
 * serialized index once written: V8 does not count the addon's memory, so a collection may come
 * much later); INVALID_ARGUMENT for a view of part of an ArrayBuffer.
 */
export function releaseBuffer(bytes: Uint8Array): void {
  addon().releaseBuffer(bytes);
}

/**
 * A zeroed Float32Array of `floats` for bulk row storage (the shard's vector chunks). From 1 MB up
 * the addon maps it in whole 2 MB pages advised for transparent huge pages, so filling it costs a
 * few page faults instead of hundreds (about 10x faster on the VMs measured).
 */
export function allocRows(floats: number): Float32Array {
  return addon().allocRows(floats);
}
