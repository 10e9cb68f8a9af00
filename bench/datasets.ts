/**
 * Datasets for the benchmarks: Fashion-MNIST from the Debian package dataset-fashion-mnist (IDX,
 * gzip; 60,000 base vectors from train-images, 10,000 queries from t10k-images, 784-d, L2: the
 * ann-benchmarks set) and seeded synthetic clustered sets. Exact ground truth comes from FlatIndex
 * and is cached under .cache/ (keyed by dataset, metric and k).
 */
import * as fs from 'fs';
import * as path from 'path';
import * as zlib from 'zlib';
import { FlatIndex, Metric } from '../src/native';
import { QuiverError } from '../src/errors';

export const FASHION_DIR = process.env.QUIVER_FASHION_DIR ?? '/usr/share/datasets/fashion-mnist';

export interface Dataset {
  name: string;
  dim: number;
  metric: Metric;
  base: Float32Array; // nBase * dim
  queries: Float32Array; // nQueries * dim
  nBase: number;
  nQueries: number;
}

function readIdxImages(file: string): { n: number; dim: number; data: Float32Array } {
  if (!fs.existsSync(file)) {
    throw new QuiverError('NOT_FOUND', `${file} is missing: install the Debian package dataset-fashion-mnist (scripts/system-deps.sh)`);
  }
  const raw = zlib.gunzipSync(fs.readFileSync(file));
  const magic = raw.readUInt32BE(0);
  if (magic !== 0x00000803) throw new QuiverError('DATA_LOSS', `${file}: not an IDX image file (magic ${magic.toString(16)})`);
  const n = raw.readUInt32BE(4);
  const rows = raw.readUInt32BE(8);
  const cols = raw.readUInt32BE(12);
  const dim = rows * cols;
  if (raw.length !== 16 + n * dim) throw new QuiverError('DATA_LOSS', `${file}: truncated`);
  const data = new Float32Array(n * dim);
  for (let i = 0; i < n * dim; i++) data[i] = raw[16 + i];
  return { n, dim, data };
}

export function fashionMnist(limitBase?: number, limitQueries?: number): Dataset {
  const train = readIdxImages(path.join(FASHION_DIR, 'train-images-idx3-ubyte.gz'));
  const test = readIdxImages(path.join(FASHION_DIR, 't10k-images-idx3-ubyte.gz'));
  const nBase = Math.min(train.n, limitBase ?? train.n);
  const nQueries = Math.min(test.n, limitQueries ?? test.n);
  return {
    name: nBase === train.n && nQueries === test.n ? 'fashion-mnist' : `fashion-mnist-${nBase}-${nQueries}`,
    dim: train.dim,
    metric: 'l2',
    base: train.data.subarray(0, nBase * train.dim),
    queries: test.data.subarray(0, nQueries * train.dim),
    nBase,
    nQueries,
  };
}

/** Deterministic PRNG (mulberry32) and a normal sampler from it. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function gaussian(rand: () => number): () => number {
  return () => {
    const u = Math.max(rand(), 1e-12);
    const v = rand();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
}

/**
 * Clustered synthetic set: `clusters` centres drawn N(0, 1), points = centre + N(0, spread^2).
 * Queries are drawn the same way (not from the base), so they are realistic out-of-sample queries.
 */
export function synthetic(opts: {
  nBase: number;
  nQueries: number;
  dim: number;
  metric: Metric;
  clusters?: number;
  spread?: number;
  seed?: number;
}): Dataset {
  const { nBase, nQueries, dim, metric } = opts;
  const clusters = opts.clusters ?? 256;
  const spread = opts.spread ?? 0.35;
  const rand = rng(opts.seed ?? 42);
  const g = gaussian(rand);
  const centres = new Float32Array(clusters * dim);
  for (let i = 0; i < centres.length; i++) centres[i] = g();
  const draw = (n: number): Float32Array => {
    const out = new Float32Array(n * dim);
    for (let i = 0; i < n; i++) {
      const c = Math.floor(rand() * clusters);
      for (let j = 0; j < dim; j++) out[i * dim + j] = centres[c * dim + j] + spread * g();
    }
    return out;
  };
  return {
    name: `synthetic-${nBase}x${dim}-${metric}-s${opts.seed ?? 42}`,
    dim,
    metric,
    base: draw(nBase),
    queries: draw(nQueries),
    nBase,
    nQueries,
  };
}

const CACHE_DIR = process.env.QUIVER_BENCH_CACHE ?? path.resolve(__dirname, '..', '..', '.cache');

/**
 * Exact top-k of every query (labels = base row numbers), by FlatIndex, cached on disk.
 */
export async function groundTruth(ds: Dataset, k: number): Promise<{ labels: Uint32Array; distances: Float32Array }> {
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  const file = path.join(CACHE_DIR, `gt-${ds.name}-${ds.metric}-k${k}.bin`);
  const bytes = ds.nQueries * k * 4;
  if (fs.existsSync(file) && fs.statSync(file).size === 2 * bytes) {
    const buf = fs.readFileSync(file);
    const labels = new Uint32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + bytes));
    const distances = new Float32Array(buf.buffer.slice(buf.byteOffset + bytes, buf.byteOffset + 2 * bytes));
    return { labels, distances };
  }
  const index = new FlatIndex({ dim: ds.dim, metric: ds.metric });
  await index.add(sequence(ds.nBase), ds.base);
  const res = await index.search(ds.queries, k);
  fs.writeFileSync(file, Buffer.concat([Buffer.from(res.labels.buffer, res.labels.byteOffset, bytes), Buffer.from(res.distances.buffer, res.distances.byteOffset, bytes)]));
  return res;
}

export function sequence(n: number, start = 0): Uint32Array {
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = start + i;
  return out;
}

/**
 * recall@k: the share of the true top-k found. A returned label whose distance ties the k-th true
 * distance (within a relative 1e-6) counts as found, so equal-distance neighbours are not penalized.
 */
export function recallAtK(
  found: Uint32Array,
  foundDist: Float32Array | undefined,
  truth: Uint32Array,
  truthDist: Float32Array,
  nq: number,
  k: number,
  truthK = k,
): number {
  let hits = 0;
  for (let q = 0; q < nq; q++) {
    const set = new Set<number>();
    for (let j = 0; j < k; j++) set.add(truth[q * truthK + j]);
    const kth = truthDist[q * truthK + k - 1];
    for (let j = 0; j < k; j++) {
      const l = found[q * k + j];
      if (set.has(l)) hits++;
      else if (foundDist && Math.abs(foundDist[q * k + j] - kth) <= 1e-6 * Math.max(1, Math.abs(kth))) hits++;
    }
  }
  return hits / (nq * k);
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** The p-quantile (0..1) of an ascending array: the element at floor(p * n), the last at most. */
export function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}
