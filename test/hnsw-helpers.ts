/** Shared helpers of the HNSW tests: seeded data, brute force by FlatIndex, recall. */
import { FlatIndex, HnswIndex, Metric } from '../src/native';
import { rng, gaussian } from '../bench/datasets';

export function clustered(n: number, dim: number, seed: number, clusters = 20): Float32Array {
  const rand = rng(seed);
  const g = gaussian(rand);
  const centres = new Float32Array(clusters * dim);
  for (let i = 0; i < centres.length; i++) centres[i] = g() * 2;
  const out = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) {
    const c = Math.floor(rand() * clusters);
    for (let j = 0; j < dim; j++) out[i * dim + j] = centres[c * dim + j] + 0.5 * g();
  }
  return out;
}

export function labelsFrom(start: number, n: number): Uint32Array {
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = start + i;
  return out;
}

export async function bruteForce(
  dim: number,
  metric: Metric,
  labels: Uint32Array,
  vectors: Float32Array,
  queries: Float32Array,
  k: number,
  filter?: Uint32Array,
): Promise<{ labels: Uint32Array; distances: Float32Array }> {
  const flat = new FlatIndex({ dim, metric });
  await flat.add(labels, vectors);
  return flat.search(queries, k, filter ? { filter } : {});
}

/** Share of the true top-k (non-empty slots) found; ties at the k-th distance count as found. */
export function recall(
  found: { labels: Uint32Array; distances: Float32Array },
  truth: { labels: Uint32Array; distances: Float32Array },
  nq: number,
  k: number,
): number {
  let hits = 0;
  let total = 0;
  for (let q = 0; q < nq; q++) {
    const set = new Set<number>();
    let kth = -Infinity;
    for (let j = 0; j < k; j++) {
      const l = truth.labels[q * k + j];
      if (l === 0xffffffff) continue;
      set.add(l);
      kth = truth.distances[q * k + j];
    }
    total += set.size;
    for (let j = 0; j < k; j++) {
      const l = found.labels[q * k + j];
      if (l === 0xffffffff) continue;
      if (set.has(l)) hits++;
      else if (Math.abs(found.distances[q * k + j] - kth) <= 1e-5 * Math.max(1, Math.abs(kth))) hits++;
    }
  }
  return total === 0 ? 1 : hits / total;
}

export async function build(
  dim: number,
  metric: Metric,
  labels: Uint32Array,
  vectors: Float32Array,
  threads = 2,
  extra: { m?: number; efConstruction?: number; seed?: number } = {},
): Promise<HnswIndex> {
  const index = new HnswIndex({ dim, metric, ...extra });
  await index.add(labels, vectors, { threads });
  return index;
}
