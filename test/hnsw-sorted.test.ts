/**
 * HNSW built from input sorted by cluster (a whole cluster arrives in one insertion round): the
 * points of a round must still link to each other. Before rounds compared their own points with
 * each other, this input built a graph whose recall fell below 0.5.
 */
import { describe, expect, it } from 'vitest';
import { HnswIndex } from '../src/native';
import { gaussian, rng } from '../bench/datasets';
import { bruteForce, labelsFrom, recall } from './hnsw-helpers';

const DIM = 24;
const CLUSTERS = 40;
const PER = 500;
const N = CLUSTERS * PER;
const NQ = 200;
const K = 10;

/** N points, cluster by cluster (rows [c*PER, (c+1)*PER) are cluster c), and NQ queries. */
function sortedClusters(seed: number): { base: Float32Array; queries: Float32Array } {
  const rand = rng(seed);
  const g = gaussian(rand);
  const centres = new Float32Array(CLUSTERS * DIM);
  for (let i = 0; i < centres.length; i++) centres[i] = g();
  const draw = (c: number, out: Float32Array, row: number): void => {
    for (let j = 0; j < DIM; j++) out[row * DIM + j] = centres[c * DIM + j] + 0.35 * g();
  };
  const base = new Float32Array(N * DIM);
  for (let i = 0; i < N; i++) draw(Math.floor(i / PER), base, i);
  const queries = new Float32Array(NQ * DIM);
  for (let i = 0; i < NQ; i++) draw(Math.floor(rand() * CLUSTERS), queries, i);
  return { base, queries };
}

describe('HnswIndex on input sorted by cluster', () => {
  it('one add of the whole sorted set: recall@10 >= 0.95 at ef 64 (l2 and cosine)', async () => {
    const { base, queries } = sortedClusters(21);
    const labels = labelsFrom(0, N);
    for (const metric of ['l2', 'cosine'] as const) {
      const index = new HnswIndex({ dim: DIM, metric, m: 16, efConstruction: 100, seed: 1 });
      await index.add(labels, base);
      const truth = await bruteForce(DIM, metric, labels, base, queries, K);
      const found = await index.search(queries, K, { ef: 64 });
      expect(recall(found, truth, NQ, K)).toBeGreaterThanOrEqual(0.95);
    }
  });

  it('the sorted set in batches of 1,000: recall@10 >= 0.95 at ef 64', async () => {
    const { base, queries } = sortedClusters(22);
    const labels = labelsFrom(0, N);
    const index = new HnswIndex({ dim: DIM, metric: 'l2', m: 16, efConstruction: 100, seed: 1 });
    for (let i = 0; i < N; i += 1000) await index.add(labels.subarray(i, i + 1000), base.subarray(i * DIM, (i + 1000) * DIM));
    const truth = await bruteForce(DIM, 'l2', labels, base, queries, K);
    const found = await index.search(queries, K, { ef: 64 });
    expect(recall(found, truth, NQ, K)).toBeGreaterThanOrEqual(0.95);
  });
});
