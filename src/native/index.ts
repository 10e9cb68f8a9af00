/**
 * The typed TypeScript face of the native core (DESIGN.md section 4). Vectors cross as one
 * row-major Float32Array per batch, labels as Uint32Array; results come back as typed arrays.
 * Everything whose cost grows with the data runs in a native AsyncWorker and returns a Promise.
 */
import { promises as fsp } from 'fs';
import { QuiverError } from '../errors';
import { addon, loadAddon, releaseBuffer, SearchLaneStats } from './addon';
import { dimMax, efMax, labelNone, topKMax } from './limits';

export * from './limits';

export type Metric = 'l2' | 'ip' | 'cosine';
export type IndexKind = 'flat' | 'hnsw' | 'ivfpq';
export const METRICS: readonly Metric[] = ['l2', 'ip', 'cosine'];

/**
 * Both arrays view one ArrayBuffer (the labels, then the distances), so read them through the
 * views, or with their byteOffset and byteLength, not as `labels.buffer` whole.
 */
export interface SearchResult {
  /** q*k labels, nearest first per query; 0xFFFFFFFF where fewer than k exist. */
  labels: Uint32Array;
  /** q*k distances (l2: squared Euclidean; ip: 1 - dot; cosine: 1 - cos); +Infinity where empty. */
  distances: Float32Array;
}

export interface SearchOptions {
  /** Allow-set: only these labels may be returned. */
  filter?: Uint32Array;
  /** HNSW candidate-list size (raised to k). */
  ef?: number;
  /** IVF-PQ inverted lists probed. */
  nprobe?: number;
  /** IVF-PQ: re-rank refine*k candidates with exact distances (0 = off). */
  refine?: number;
  /** Threads for a batch (default: all cores, or QUIVER_THREADS). */
  threads?: number;
}

/** searchSync() runs on the calling thread: it takes no `threads`. */
export type SearchSyncOptions = Omit<SearchOptions, 'threads'>;

export interface AddOptions {
  threads?: number;
}

function requireF32(v: unknown, what: string): Float32Array {
  if (!(v instanceof Float32Array)) {
    throw new QuiverError('INVALID_ARGUMENT', `${what} must be a Float32Array (got ${describe(v)})`);
  }
  return v;
}

function requireU32(v: unknown, what: string): Uint32Array {
  if (!(v instanceof Uint32Array)) {
    throw new QuiverError('INVALID_ARGUMENT', `${what} must be a Uint32Array (got ${describe(v)})`);
  }
  return v;
}

function describe(v: unknown): string {
  if (Array.isArray(v)) return 'number[]';
  if (v === null) return 'null';
  if (ArrayBuffer.isView(v)) return v.constructor.name;
  return typeof v;
}

function requireInt(v: unknown, what: string, lo: number, hi: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
    throw new QuiverError('INVALID_ARGUMENT', `${what} must be an integer in ${lo}..${hi} (got ${String(v)})`);
  }
  return v;
}

function optInt(v: unknown, what: string, lo: number, hi: number): number {
  return v === undefined ? 0 : requireInt(v, what, lo, hi);
}

/** k and the options search and searchSync share, checked, as the addon takes them (0, refine -1: the index's default). */
function searchOptions(k: number, opts: SearchSyncOptions): { ef: number; nprobe: number; refine: number; filter: Uint32Array | null } {
  requireInt(k, 'k', 1, topKMax);
  return {
    filter: opts.filter === undefined ? null : requireU32(opts.filter, 'filter'),
    ef: optInt(opts.ef, 'ef', 1, 65536),
    nprobe: optInt(opts.nprobe, 'nprobe', 1, 1 << 20),
    refine: opts.refine === undefined ? -1 : requireInt(opts.refine, 'refine', 0, 1024),
  };
}

/** The common face of FlatIndex, HnswIndex and IvfPqIndex. */
export abstract class VectorIndex {
  /** @internal */
  protected readonly native: any; // eslint-disable-line @typescript-eslint/no-explicit-any

  /** Fixed at creation; read once here, so that a call does not cross into the addon for them. */
  readonly kind: IndexKind;
  readonly dim: number;
  readonly metric: Metric;

  /** @internal */
  protected constructor(native: unknown) {
    this.native = native;
    this.kind = this.native.kind as IndexKind;
    this.dim = this.native.dim as number;
    this.metric = this.native.metric as Metric;
  }

  /** Live points (removed ones excluded). */
  get size(): number {
    return this.native.size as number;
  }
  /** Approximate bytes held by the index (vectors, graph, codes). */
  get memoryBytes(): number {
    return this.native.memoryBytes as number;
  }

  /** Adds (or replaces) n points: labels Uint32Array(n), vectors Float32Array(n*dim). */
  async add(labels: Uint32Array, vectors: Float32Array, opts: AddOptions = {}): Promise<void> {
    requireU32(labels, 'labels');
    requireF32(vectors, 'vectors');
    if (vectors.length !== labels.length * this.dim) {
      throw new QuiverError(
        'INVALID_ARGUMENT',
        `vectors has ${vectors.length} floats; ${labels.length} labels of dimension ${this.dim} need ${labels.length * this.dim}`,
      );
    }
    const threads = optInt(opts.threads, 'threads', 1, 1024);
    await this.native.add(labels, vectors, threads);
  }

  /** Removes points; an unknown label is NOT_FOUND and nothing is removed. */
  async remove(labels: Uint32Array): Promise<void> {
    requireU32(labels, 'labels');
    await this.native.remove(labels);
  }

  /** k-NN for q queries (Float32Array(q*dim)): labels and distances of q*k, nearest first. */
  search(queries: Float32Array, k: number, opts: SearchOptions = {}): Promise<SearchResult> {
    // Not an async function: the addon's promise is handed back as is (an async wrapper costs
    // a promise and several microtask turns per call, ~10% of a one-query HNSW search). A bad
    // argument still rejects, as it would from an async function.
    try {
      requireF32(queries, 'queries');
      const { ef, nprobe, refine, filter } = searchOptions(k, opts);
      if (queries.length === 0 || queries.length % this.dim !== 0) {
        throw new QuiverError(
          'INVALID_ARGUMENT',
          `queries has ${queries.length} floats, not a positive multiple of dimension ${this.dim}`,
        );
      }
      const threads = optInt(opts.threads, 'threads', 1, 1024);
      return this.native.search(queries, k, ef, nprobe, refine, threads, filter) as Promise<SearchResult>;
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * k-NN for one query (Float32Array(dim)), answered synchronously on the calling thread: the same
   * answer as `search` (labels and distances bit for bit) without the hop off the event loop,
   * which costs more than a small search itself. Bounded: an index estimating the query's work
   * above searchSyncTermsMax refuses it with RESOURCE_EXHAUSTED (use `search`); see docs/API.md.
   */
  searchSync(query: Float32Array, k: number, opts: SearchSyncOptions = {}): SearchResult {
    requireF32(query, 'query');
    const { ef, nprobe, refine, filter } = searchOptions(k, opts);
    if (query.length !== this.dim) {
      throw new QuiverError('INVALID_ARGUMENT', `query has ${query.length} floats; searchSync takes one query of dimension ${this.dim}`);
    }
    return this.native.searchSync(query, k, ef, nprobe, refine, filter) as SearchResult;
  }

  /** Stored vectors of the given labels, row-major; NOT_FOUND if one is absent. */
  async getVectors(labels: Uint32Array): Promise<Float32Array> {
    requireU32(labels, 'labels');
    return (await this.native.getVectors(labels)) as Float32Array;
  }

  /** The whole index as bytes (magic, version, kind, dim, metric, body, CRC-32C). */
  async serialize(): Promise<Buffer> {
    return (await this.native.serialize()) as Buffer;
  }

  /**
   * serialize()'s bytes kept in the addon, not handed over as a Buffer: resolves with their length;
   * readHeld copies them out a step at a time, releaseHeld frees them (so does the next
   * serializeHeld). V8 counts a Buffer's memory against its old generation's limit, and the
   * snapshot of a flat shard handed it ~11 MB at once: a full collection beside the writes.
   */
  async serializeHeld(): Promise<number> {
    return (await this.native.serializeHeld()) as number;
  }

  /** Copies the held bytes from `offset` into `into` (as many as fit or are left); returns how many. */
  readHeld(offset: number, into: Uint8Array): number {
    return this.native.readHeld(offset, into) as number;
  }

  /**
   * Frees the held bytes; with `keep`, large ones (from 1 MiB) stay mapped as the next serialize's
   * buffer, their pages given up lazily (MADV_FREE: the kernel takes them back only under memory
   * pressure), so the next snapshot's reserve neither maps them again nor faults them in.
   */
  releaseHeld(keep = false): void {
    this.native.releaseHeld(keep);
  }

  /** Frees the buffer kept for the next serialize (releaseHeld(true), reserveSerialize), if any. */
  releaseSpare(): void {
    this.native.releaseSpare();
  }

  /** Bytes of the buffer kept for the next serialize (0 if none). */
  get spareBytes(): number {
    return this.native.spareBytes as number;
  }

  /**
   * Maps and touches `bytes` of memory, off the loop, for the next serialize() to write into (it
   * grows past them when the index needs more): its page faults come before the caller's lock. A
   * buffer kept by releaseHeld(true) is used again when it holds `bytes` but not twice as many, its
   * pages written over.
   */
  async reserveSerialize(bytes: number): Promise<void> {
    await this.native.reserveSerialize(bytes);
  }

  /** Writes serialize() to a file (write to temp + fsync + rename, so a crash leaves old or new). */
  async save(file: string): Promise<void> {
    const bytes = await this.serialize();
    const tmp = `${file}.tmp-${process.pid}`;
    const fh = await fsp.open(tmp, 'w');
    try {
      await fh.writeFile(bytes);
      releaseBuffer(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
  }
}

export interface FlatIndexOptions {
  dim: number;
  metric?: Metric;
}

export interface HnswIndexOptions {
  dim: number;
  metric?: Metric;
  /** Links per node on upper layers (2*m on layer 0). Default 16. */
  m?: number;
  /** Candidate list size while building. Default 200. */
  efConstruction?: number;
  /** Default ef for search when none is given. Default 64. */
  efSearch?: number;
  /** Seed of the level hash; same seed + same batches = byte-identical index. Default 1. */
  seed?: number;
}

export interface IvfPqIndexOptions {
  dim: number;
  metric?: Metric;
  /** Coarse centroids (inverted lists). */
  nlist: number;
  /** Sub-quantizers (8 bits each); must divide dim. */
  m: number;
  /** Keep raw vectors and re-rank refine*k candidates exactly (0 = off). Default 0. */
  refine?: number;
  /** Default nprobe for search. */
  nprobe?: number;
  /** k-means seed. Default 1. */
  seed?: number;
}

function numericParams(o: object, skip: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [key, v] of Object.entries(o)) {
    if (skip.includes(key) || v === undefined) continue;
    if (typeof v !== 'number') throw new QuiverError('INVALID_ARGUMENT', `index parameter ${key} must be a number`);
    out[key] = v;
  }
  return out;
}

function makeNative(kind: IndexKind, opts: { dim: number; metric?: Metric }): unknown {
  if (opts === null || typeof opts !== 'object') throw new QuiverError('INVALID_ARGUMENT', 'index options must be an object');
  requireInt(opts.dim, 'dim', 1, dimMax);
  const metric = opts.metric ?? 'l2';
  if (!METRICS.includes(metric)) throw new QuiverError('INVALID_ARGUMENT', `metric must be one of ${METRICS.join(', ')}`);
  return new (addon().NativeIndex)(kind, opts.dim, metric, numericParams(opts, ['dim', 'metric']));
}

export class FlatIndex extends VectorIndex {
  constructor(opts: FlatIndexOptions, native?: unknown) {
    super(native ?? makeNative('flat', opts));
  }
  static async deserialize(bytes: Uint8Array): Promise<FlatIndex> {
    return expectKind(await deserializeIndex(bytes), FlatIndex);
  }
  static async load(file: string): Promise<FlatIndex> {
    return FlatIndex.deserialize(await fsp.readFile(file));
  }
}

export class HnswIndex extends VectorIndex {
  constructor(opts: HnswIndexOptions, native?: unknown) {
    super(native ?? makeNative('hnsw', opts));
  }
  static async deserialize(bytes: Uint8Array): Promise<HnswIndex> {
    return expectKind(await deserializeIndex(bytes), HnswIndex);
  }
  static async load(file: string): Promise<HnswIndex> {
    return HnswIndex.deserialize(await fsp.readFile(file));
  }
}

export interface TrainOptions {
  threads?: number;
  /** Called with a fraction in [0,1] and a phase name while training runs. */
  onProgress?: (fraction: number, phase: string) => void;
}

export class IvfPqIndex extends VectorIndex {
  constructor(opts: IvfPqIndexOptions, native?: unknown) {
    super(native ?? makeNative('ivfpq', opts));
  }
  get trained(): boolean {
    return this.native.trained as boolean;
  }
  /** k-means for the coarse centroids, then residual PQ codebooks, on a sample Float32Array(n*dim). */
  async train(sample: Float32Array, opts: TrainOptions = {}): Promise<void> {
    requireF32(sample, 'sample');
    if (sample.length === 0 || sample.length % this.dim !== 0) {
      throw new QuiverError('INVALID_ARGUMENT', `sample has ${sample.length} floats, not a positive multiple of ${this.dim}`);
    }
    const threads = optInt(opts.threads, 'threads', 1, 1024);
    await this.native.train(sample, threads, opts.onProgress ?? null);
  }
  static async deserialize(bytes: Uint8Array): Promise<IvfPqIndex> {
    return expectKind(await deserializeIndex(bytes), IvfPqIndex);
  }
  static async load(file: string): Promise<IvfPqIndex> {
    return IvfPqIndex.deserialize(await fsp.readFile(file));
  }
}

export type AnyIndex = FlatIndex | HnswIndex | IvfPqIndex;

/** Deserializes an index of any kind (the kind is in the envelope). */
export async function deserializeIndex(bytes: Uint8Array): Promise<AnyIndex> {
  if (!(bytes instanceof Uint8Array)) throw new QuiverError('INVALID_ARGUMENT', 'bytes must be a Buffer or Uint8Array');
  const native = await addon().NativeIndex.deserialize(bytes);
  switch (native.kind as IndexKind) {
    case 'flat':
      return new FlatIndex({ dim: native.dim }, native);
    case 'hnsw':
      return new HnswIndex({ dim: native.dim }, native);
    case 'ivfpq':
      return new IvfPqIndex({ dim: native.dim, nlist: 1, m: 1 }, native);
  }
  throw new QuiverError('DATA_LOSS', `unknown index kind ${String(native.kind)}`);
}

function expectKind<T extends VectorIndex>(index: VectorIndex, cls: new (...args: never[]) => T): T {
  if (!(index instanceof cls)) {
    throw new QuiverError('INVALID_ARGUMENT', `the bytes hold a ${index.kind} index, not a ${cls.name}`);
  }
  return index;
}

/** The SIMD level the kernels run at: 'avx512', 'avx2', 'neon' or 'serial'. */
export function simdLevel(): string {
  return addon().simdLevel();
}

/** Every SIMD level this CPU (and build) can run, serial first. */
export function simdLevels(): string[] {
  return addon().simdLevels();
}

/** Counters of the search lane, the thread that runs one-query searches (see ARCHITECTURE.md). */
export function searchLaneStats(): SearchLaneStats {
  return addon().searchLaneStats();
}

/** Bytes held by every index of the process for its next snapshot's serialize (VectorIndex.spareBytes summed). */
export function snapshotBufferBytes(): number {
  return addon().snapshotBufferBytes();
}

/**
 * The search lane's defaults where QUIVER_SEARCH_POLL and QUIVER_SEARCH_SPIN_US do not say: whether
 * the event loop polls for lane answers, and the most the lane spins after a task (0 to 1,000,000
 * us). The running lane follows them from its next task. INVALID_ARGUMENT otherwise.
 */
export function setSearchLaneDefaults(d: { poll: boolean; spinMicros: number }): void {
  addon().setSearchLaneDefaults(d.poll, d.spinMicros);
}

export interface GpuInfo {
  /** Which addon build is loaded. */
  build: 'cpu' | 'cuda';
  available: boolean;
  name?: string;
  memoryBytes?: number;
  reason?: string;
}

/** Which build is loaded and whether a GPU serves it. */
export function gpuInfo(): GpuInfo {
  const { addon: a, build, skipped } = loadAddon();
  if (build === 'cuda') return { build, ...a.gpuInfo!() }; // every CUDA build has it
  return { build, available: false, reason: `CPU build loaded (${skipped ?? 'no CUDA build present'})` };
}

export { labelNone as LABEL_NONE };
export type { SearchLaneStats };
