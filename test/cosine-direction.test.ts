/**
 * Cosine vectors without a direction in the in-process indexes: all zeros, or so short that 1/|x|
 * is no float32 (only the smallest denormals). Each index normalizes them to the zero vector
 * (inv_norm_f32), so every distance is finite and the same call gives the same answer: flat and
 * HNSW put such a vector at distance 1 from everything; IVF-PQ, which compares unit vectors by
 * |a - b|^2 / 2, at 0.5 (exactly with refine). The server refuses these vectors (test/server.test.ts).
 */
import { describe, expect, it } from 'vitest';
import { FlatIndex, HnswIndex, IvfPqIndex } from '../src/native';
import { randomVectors, seq } from './helpers';

const DIM = 8;
const N = 300;
const DIRECTIONLESS = { zeros: 0, 'a 1e-40 component': 1e-40, 'a 1e-45 component': 1e-45 };

const kinds = {
  // asGiven: getVectors returns the vector as added (IVF-PQ keeps its refine rows normalized).
  flat: { make: () => new FlatIndex({ dim: DIM, metric: 'cosine' }), far: 1, asGiven: true },
  hnsw: { make: () => new HnswIndex({ dim: DIM, metric: 'cosine', m: 8, efConstruction: 40, seed: 1 }), far: 1, asGiven: true },
  'ivfpq with refine': { make: () => new IvfPqIndex({ dim: DIM, metric: 'cosine', nlist: 2, m: 2, refine: 4 }), far: 0.5, asGiven: false },
};

describe.each(Object.entries(kinds))('%s, cosine', (_, kind) => {
  it.each(Object.entries(DIRECTIONLESS))('a point and a query of %s: finite, defined, the same each time', async (_, x) => {
    const vectors = randomVectors(N, DIM, 7);
    const odd = new Float32Array(DIM);
    odd[0] = x;
    vectors.set(odd, 5 * DIM); // point 5 has no direction
    const index = kind.make();
    if (index instanceof IvfPqIndex) await index.train(vectors);
    await index.add(seq(N), vectors);
    expect(Array.from(await index.getVectors(seq(1, 5)))).toEqual(Array.from(kind.asGiven ? odd : new Float32Array(DIM)));
    // Flat and HNSW: exactly 1; IVF-PQ: |q|^2 / 2 of a unit query, 0.5 to the last bits.
    const isFar = (d: number) => (kind.asGiven ? expect(d).toBe(kind.far) : expect(d).toBeCloseTo(kind.far, 6));

    // A normal query: point 5 is at the kind's distance; every distance finite.
    const all = await index.search(vectors.subarray(0, DIM), N);
    expect(all.distances.every(Number.isFinite)).toBe(true);
    expect(all.labels[0]).toBe(0);
    isFar(all.distances[Array.from(all.labels).indexOf(5)]);

    // The query without a direction: the kind's distance to every point but point 5.
    const a = await index.search(odd, 10);
    const b = await index.search(odd, 10);
    expect(Array.from(a.labels)).toEqual(Array.from(b.labels));
    expect(a.labels.every((l) => l < N)).toBe(true);
    a.labels.forEach((l, i) => (l === 5 ? expect(a.distances[i]).toBeLessThanOrEqual(kind.far) : isFar(a.distances[i])));
    expect(Array.from(index.searchSync(odd, 10).distances)).toEqual(Array.from(a.distances));
  });
});
