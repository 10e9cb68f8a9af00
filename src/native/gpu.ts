/**
 * GPU search (the optional CUDA build, `npm run build:cuda`). A GPU index is a read-only copy on
 * the device: GpuFlatIndex holds raw vectors for exact batch search; GpuIvfPqIndex copies an
 * IvfPqIndex trained and filled on the CPU (centroids, codebooks, inverted lists of codes). Both
 * answer batches of queries with the same {labels, distances} as the CPU indexes. Changes to the
 * CPU index after the copy are not seen: copy again. Without the CUDA build or a GPU, creating one
 * is FAILED_PRECONDITION (check gpuInfo().available first).
 */
import { QuiverError } from '../errors';
import { loadAddon } from './addon';
import { IvfPqIndex, Metric, METRICS, SearchResult, gpuInfo } from './index';
import { dimMax, topKMax } from './limits';

/* eslint-disable @typescript-eslint/no-explicit-any */
function gpuAddon(): any {
  const info = gpuInfo();
  if (!info.available) throw new QuiverError('FAILED_PRECONDITION', `no GPU: ${info.reason ?? 'the CUDA build is not loaded'}`);
  return loadAddon().addon as any;
}

function checkQueries(queries: Float32Array, k: number, dim: number): void {
  if (!(queries instanceof Float32Array)) throw new QuiverError('INVALID_ARGUMENT', 'queries must be a Float32Array');
  if (!Number.isInteger(k) || k < 1 || k > topKMax) throw new QuiverError('INVALID_ARGUMENT', `k must be an integer in 1..${topKMax}`);
  if (queries.length === 0 || queries.length % dim !== 0) {
    throw new QuiverError('INVALID_ARGUMENT', `queries has ${queries.length} floats, not a positive multiple of ${dim}`);
  }
}

abstract class GpuIndexBase {
  protected handle: any;
  protected constructor(handle: any, readonly dim: number) {
    this.handle = handle;
  }
  protected live(): any {
    if (this.handle === null) throw new QuiverError('FAILED_PRECONDITION', 'this GPU index was disposed');
    return this.handle;
  }
  /** Frees the device memory now (it is also freed when the object is collected). */
  dispose(): void {
    if (this.handle !== null) {
      loadAddon().addon.gpuFree!(this.handle);
      this.handle = null;
    }
  }
}

/** Exact k-NN on the GPU: tiled distances and a per-query top-k, for batches of queries. */
export class GpuFlatIndex extends GpuIndexBase {
  /** Copies n vectors (Float32Array(n*dim)) to the device; labels default to 0..n-1. */
  static async create(dim: number, metric: Metric, vectors: Float32Array, labels?: Uint32Array): Promise<GpuFlatIndex> {
    const a = gpuAddon();
    if (!Number.isInteger(dim) || dim < 1 || dim > dimMax) throw new QuiverError('INVALID_ARGUMENT', `dim must be in 1..${dimMax}`);
    if (!METRICS.includes(metric)) throw new QuiverError('INVALID_ARGUMENT', `metric must be one of ${METRICS.join(', ')}`);
    if (!(vectors instanceof Float32Array) || vectors.length === 0 || vectors.length % dim !== 0) {
      throw new QuiverError('INVALID_ARGUMENT', 'vectors must be a non-empty Float32Array of n*dim floats');
    }
    const n = vectors.length / dim;
    if (labels !== undefined && (!(labels instanceof Uint32Array) || labels.length !== n)) {
      throw new QuiverError('INVALID_ARGUMENT', 'labels must be a Uint32Array of one label per vector');
    }
    return new GpuFlatIndex(await a.gpuFlatCreate(dim, metric, vectors, labels ?? null), dim);
  }
  async search(queries: Float32Array, k: number): Promise<SearchResult> {
    checkQueries(queries, k, this.dim);
    return (await loadAddon().addon.gpuFlatSearch!(this.live(), queries, k)) as SearchResult;
  }
}

/** IVF-PQ on the GPU: per-query LUTs, scan of the probed lists, top-k; a copy of a CPU index. */
export class GpuIvfPqIndex extends GpuIndexBase {
  static async fromIndex(index: IvfPqIndex): Promise<GpuIvfPqIndex> {
    const a = gpuAddon();
    if (!(index instanceof IvfPqIndex)) throw new QuiverError('INVALID_ARGUMENT', 'fromIndex needs an IvfPqIndex');
    return new GpuIvfPqIndex(await a.gpuIvfPqCreate((index as any).native), index.dim);
  }
  /** nprobe: lists probed per query (default 16). No refine on the GPU: distances are PQ estimates. */
  async search(queries: Float32Array, k: number, opts: { nprobe?: number } = {}): Promise<SearchResult> {
    checkQueries(queries, k, this.dim);
    const nprobe = opts.nprobe ?? 16;
    if (!Number.isInteger(nprobe) || nprobe < 1) throw new QuiverError('INVALID_ARGUMENT', 'nprobe must be a positive integer');
    return (await loadAddon().addon.gpuIvfPqSearch!(this.live(), queries, k, nprobe)) as SearchResult;
  }
}
