/**
 * IvfPqIndex against brute force (FlatIndex) on seeded clustered data, and its error contract.
 * Recall thresholds are explicit and sit well below the figures measured on this data
 * (printed by each test), so a regression in the quantizers or the scan makes them fail.
 */
import { describe, expect, it } from 'vitest';
import { expectCode, rng } from './helpers';
import { FlatIndex, IvfPqIndex, LABEL_NONE, Metric } from '../src/native';

/** n points around `clusters` Gaussian centres (and q queries drawn the same way). */
function clustered(n: number, dim: number, seed: number, clusters = 256, spread = 0.9): Float32Array {
  const r = rng(seed);
  const g = () => Math.sqrt(-2 * Math.log(Math.max(r(), 1e-12))) * Math.cos(2 * Math.PI * r());
  const centresRng = rng(12345);
  const cg = () => Math.sqrt(-2 * Math.log(Math.max(centresRng(), 1e-12))) * Math.cos(2 * Math.PI * centresRng());
  const centres = new Float32Array(clusters * dim);
  for (let i = 0; i < centres.length; i++) centres[i] = cg();
  const out = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) {
    const c = Math.floor(r() * clusters);
    for (let j = 0; j < dim; j++) out[i * dim + j] = centres[c * dim + j] + spread * g();
  }
  return out;
}

function seq(n: number, start = 0): Uint32Array {
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = start + i;
  return out;
}

function recall(found: Uint32Array, truth: Uint32Array, nq: number, k: number): number {
  let hits = 0;
  for (let q = 0; q < nq; q++) {
    const s = new Set(truth.subarray(q * k, q * k + k));
    for (let j = 0; j < k; j++) if (s.has(found[q * k + j])) hits++;
  }
  return hits / (nq * k);
}

const DIM = 32;
const N = 4000;
const NQ = 200;
const K = 10;
const base = clustered(N, DIM, 1);
const queries = clustered(NQ, DIM, 2);

async function truthOf(metric: Metric, k = K, data = base, qs = queries): Promise<Uint32Array> {
  const flat = new FlatIndex({ dim: DIM, metric });
  await flat.add(seq(data.length / DIM), data);
  return (await flat.search(qs, k)).labels;
}

async function built(opts: { metric?: Metric; refine?: number; m?: number; nlist?: number; dim?: number } = {}) {
  const index = new IvfPqIndex({ dim: DIM, metric: opts.metric ?? 'l2', nlist: opts.nlist ?? 32, m: opts.m ?? 8, refine: opts.refine, seed: 7 });
  await index.train(base);
  await index.add(seq(N), base);
  return index;
}

describe('IvfPqIndex recall against brute force', () => {
  it('l2 without refine: recall grows with nprobe and is high at nprobe = nlist', async () => {
    const truth = await truthOf('l2');
    const index = await built();
    expect(index.trained).toBe(true);
    expect(index.size).toBe(N);
    const r: Record<number, number> = {};
    for (const nprobe of [1, 4, 32]) {
      const res = await index.search(queries, K, { nprobe });
      r[nprobe] = recall(res.labels, truth, NQ, K);
      // distances nearest first
      for (let q = 0; q < NQ; q++)
        for (let j = 1; j < K; j++) expect(res.distances[q * K + j]).toBeGreaterThanOrEqual(res.distances[q * K + j - 1]);
    }
    console.log(`ivfpq l2 (nlist 32, m 8, no refine) recall@10 by nprobe: ${JSON.stringify(r)}`);
    expect(r[4]).toBeGreaterThan(r[1]);
    expect(r[32]).toBeGreaterThanOrEqual(0.6);
  });

  it('l2 with refine: exact re-ranking lifts recall and returns exact distances', async () => {
    const flat = new FlatIndex({ dim: DIM, metric: 'l2' });
    await flat.add(seq(N), base);
    const exact = await flat.search(queries, K);
    const index = await built({ refine: 8 });
    const res = await index.search(queries, K, { nprobe: 16 });
    const r = recall(res.labels, exact.labels, NQ, K);
    const off = await index.search(queries, K, { nprobe: 16, refine: 0 });
    const r0 = recall(off.labels, exact.labels, NQ, K);
    console.log(`ivfpq l2 nprobe 16: recall@10 ${r0.toFixed(3)} without refine, ${r.toFixed(3)} with refine 8`);
    expect(r).toBeGreaterThanOrEqual(0.93);
    expect(r).toBeGreaterThan(r0 + 0.1);
    // The first result of each query, when it is the true nearest, carries its exact distance.
    for (let q = 0; q < NQ; q++) {
      if (res.labels[q * K] === exact.labels[q * K]) expect(res.distances[q * K]).toBeCloseTo(exact.distances[q * K], 3);
    }
  });

  for (const metric of ['ip', 'cosine'] as Metric[]) {
    it(`${metric} with refine against brute force`, async () => {
      const truth = await truthOf(metric);
      const index = await built({ metric, refine: 8 });
      const res = await index.search(queries, K, { nprobe: 16 });
      const r = recall(res.labels, truth, NQ, K);
      const r0 = recall((await index.search(queries, K, { nprobe: 16, refine: 0 })).labels, truth, NQ, K);
      console.log(`ivfpq ${metric} nprobe 16: recall@10 ${r0.toFixed(3)} without refine, ${r.toFixed(3)} with refine 8`);
      expect(r).toBeGreaterThanOrEqual(0.9);
      expect(r0).toBeGreaterThanOrEqual(0.4);
    });
  }

  it('m that does not divide dim (zero padding) still works', async () => {
    const dim = 30;
    const data = clustered(2000, dim, 3);
    const qs = clustered(50, dim, 4);
    const flat = new FlatIndex({ dim, metric: 'l2' });
    await flat.add(seq(2000), data);
    const truth = (await flat.search(qs, K)).labels;
    const index = new IvfPqIndex({ dim, metric: 'l2', nlist: 16, m: 8, refine: 4 });
    await index.train(data);
    await index.add(seq(2000), data);
    const r = recall((await index.search(qs, K, { nprobe: 16 })).labels, truth, 50, K);
    console.log(`ivfpq dim 30, m 8 (padded to 32): recall@10 ${r.toFixed(3)} with refine 4`);
    expect(r).toBeGreaterThanOrEqual(0.9);
  });

  it('training is deterministic for a seed, whatever the thread count', async () => {
    const a = new IvfPqIndex({ dim: DIM, nlist: 16, m: 4, seed: 3 });
    const b = new IvfPqIndex({ dim: DIM, nlist: 16, m: 4, seed: 3 });
    const c = new IvfPqIndex({ dim: DIM, nlist: 16, m: 4, seed: 4 });
    const sample = base.subarray(0, 1000 * DIM);
    await a.train(sample, { threads: 1 });
    await b.train(sample, { threads: 2 });
    await c.train(sample, { threads: 2 });
    const [sa, sb, sc] = await Promise.all([a.serialize(), b.serialize(), c.serialize()]);
    expect(Buffer.compare(sa, sb)).toBe(0);
    expect(Buffer.compare(sa, sc)).not.toBe(0);
  });
});

describe('IvfPqIndex training and errors', () => {
  it('add and search before train are FAILED_PRECONDITION; train reports progress', async () => {
    const index = new IvfPqIndex({ dim: DIM, nlist: 8, m: 4 });
    expect(index.trained).toBe(false);
    await expectCode(index.add(seq(10), base.subarray(0, 10 * DIM)), 'FAILED_PRECONDITION');
    await expectCode(index.search(queries.subarray(0, DIM), 5), 'FAILED_PRECONDITION');
    const seen: [number, string][] = [];
    let finished!: () => void;
    const reportedDone = new Promise<void>((r) => (finished = r));
    await index.train(base.subarray(0, 500 * DIM), {
      onProgress: (f, phase) => {
        seen.push([f, phase]);
        if (f === 1) finished();
      },
    });
    expect(index.trained).toBe(true);
    // Progress is delivered through the event loop, and may come after train() resolved.
    await reportedDone;
    expect(seen.length).toBeGreaterThan(2);
    for (let i = 1; i < seen.length; i++) expect(seen[i][0]).toBeGreaterThanOrEqual(seen[i - 1][0]);
    expect(seen[seen.length - 1][0]).toBe(1);
    expect(new Set(seen.map((s) => s[1]))).toContain('kmeans');
    await expectCode(index.train(base.subarray(0, 500 * DIM)), 'FAILED_PRECONDITION');
  });

  it('a training sample smaller than nlist is INVALID_ARGUMENT and leaves the index untrained', async () => {
    const index = new IvfPqIndex({ dim: DIM, nlist: 64, m: 4 });
    await expectCode(index.train(base.subarray(0, 63 * DIM)), 'INVALID_ARGUMENT');
    expect(index.trained).toBe(false);
    const bad = base.slice(0, 100 * DIM);
    bad[5] = NaN;
    await expectCode(new IvfPqIndex({ dim: DIM, nlist: 8, m: 4 }).train(bad), 'INVALID_ARGUMENT');
  });

  it('a sample of fewer than 256 points trains (codebooks repeat) and searches', async () => {
    const index = new IvfPqIndex({ dim: DIM, nlist: 4, m: 4, refine: 2 });
    await index.train(base.subarray(0, 100 * DIM));
    await index.add(seq(100), base.subarray(0, 100 * DIM));
    const res = await index.search(base.subarray(0, DIM), 1, { nprobe: 4 });
    expect(res.labels[0]).toBe(0);
    expect(res.distances[0]).toBeCloseTo(0, 4);
  });

  it('bad parameters are INVALID_ARGUMENT', async () => {
    await expectCode(() => new IvfPqIndex({ dim: DIM, nlist: 0, m: 4 }), 'INVALID_ARGUMENT');
    await expectCode(() => new IvfPqIndex({ dim: DIM, nlist: 8, m: DIM + 1 }), 'INVALID_ARGUMENT');
    await expectCode(() => new IvfPqIndex({ dim: DIM, nlist: 8, m: 4, refine: -1 }), 'INVALID_ARGUMENT');
    await expectCode(() => new IvfPqIndex({ dim: DIM, nlist: 8, m: 4, nprobe: 9 }), 'INVALID_ARGUMENT');
    await expectCode(() => new IvfPqIndex({ dim: DIM, nlist: 8, m: 4, bogus: 1 } as never), 'INVALID_ARGUMENT');
    await expectCode(() => new IvfPqIndex({ dim: DIM, m: 4 } as never), 'INVALID_ARGUMENT');
    // nlist * m beyond the look-up-table budget
    await expectCode(() => new IvfPqIndex({ dim: 784, nlist: 65536, m: 392 }), 'INVALID_ARGUMENT');
  });

  it('bad input to add and search is refused and changes nothing', async () => {
    const index = await built({ refine: 4 });
    const v = base.slice(0, 2 * DIM);
    v[3] = Infinity;
    await expectCode(index.add(seq(2, N), v), 'INVALID_ARGUMENT');
    await expectCode(index.add(new Uint32Array([N + 1, N + 1]), base.slice(0, 2 * DIM)), 'INVALID_ARGUMENT');
    await expectCode(index.add(new Uint32Array([LABEL_NONE]), base.slice(0, DIM)), 'INVALID_ARGUMENT');
    expect(index.size).toBe(N);
    const q = queries.slice(0, DIM);
    q[0] = NaN;
    await expectCode(index.search(q, 5), 'INVALID_ARGUMENT');
    await expectCode(index.search(queries, 0), 'INVALID_ARGUMENT');
    await expectCode(index.search(queries, 5, { refine: 2000 }), 'INVALID_ARGUMENT');
    const noRaw = await built();
    await expectCode(noRaw.search(queries, 5, { refine: 4 }), 'FAILED_PRECONDITION');
    await expectCode(noRaw.getVectors(seq(1)), 'FAILED_PRECONDITION');
  });
});

describe('IvfPqIndex updates, filters, persistence', () => {
  it('remove drops points; an unknown label is NOT_FOUND and removes nothing; add replaces', async () => {
    const index = await built({ refine: 4 });
    const q = base.slice(10 * DIM, 11 * DIM);
    expect((await index.search(q, 1, { nprobe: 32 })).labels[0]).toBe(10);
    await expectCode(index.remove(new Uint32Array([11, 999999])), 'NOT_FOUND');
    expect(index.size).toBe(N);
    await index.remove(new Uint32Array([10, 11]));
    expect(index.size).toBe(N - 2);
    const after = await index.search(q, 20, { nprobe: 32 });
    expect(Array.from(after.labels)).not.toContain(10);
    expect(Array.from(after.labels)).not.toContain(11);
    await expectCode(index.remove(new Uint32Array([10])), 'NOT_FOUND');
    // Upsert: label 12 gets the vector of point 10.
    await index.add(new Uint32Array([12]), q);
    expect(index.size).toBe(N - 2);
    const up = await index.search(q, 1, { nprobe: 32 });
    expect(up.labels[0]).toBe(12);
    expect(Array.from(await index.getVectors(new Uint32Array([12])))).toEqual(Array.from(q));
    await expectCode(index.getVectors(new Uint32Array([10])), 'NOT_FOUND');
    // Remove everything, list by list swaps included, then search finds nothing.
    const rest = Array.from(seq(N)).filter((l) => l !== 10 && l !== 11);
    await index.remove(new Uint32Array(rest));
    expect(index.size).toBe(0);
    const empty = await index.search(q, 3);
    expect(Array.from(empty.labels)).toEqual([LABEL_NONE, LABEL_NONE, LABEL_NONE]);
    expect(empty.distances[0]).toBe(Infinity);
  });

  it('searches run concurrently with adds and removes', async () => {
    const index = new IvfPqIndex({ dim: DIM, nlist: 16, m: 8, refine: 2 });
    await index.train(base.subarray(0, 1000 * DIM));
    await index.add(seq(1000), base.subarray(0, 1000 * DIM));
    const work: Promise<unknown>[] = [];
    for (let b = 1; b < 4; b++) {
      work.push(index.add(seq(1000, b * 1000), base.subarray(b * 1000 * DIM, (b + 1) * 1000 * DIM), { threads: 1 }));
      work.push(index.search(queries, K, { nprobe: 4, threads: 1 }));
      // Removes only labels present before the batch (the adds may run in any order).
      work.push(index.remove(seq(100, (b - 1) * 100)));
      work.push(index.search(queries, K, { nprobe: 16, refine: 0, threads: 1 }));
    }
    const results = await Promise.all(work);
    expect(index.size).toBe(4000 - 300);
    for (let i = 1; i < results.length; i += 2) {
      const r = results[i] as { labels: Uint32Array };
      for (const l of r.labels) expect(l === LABEL_NONE || l < 4000).toBe(true);
    }
  });

  it('a filter returns allowed labels only, also when very selective', async () => {
    const index = await built();
    const allowed = new Uint32Array(Array.from({ length: 400 }, (_, i) => i * 10));
    const res = await index.search(queries, K, { filter: allowed, nprobe: 8 });
    const set = new Set(allowed);
    for (const l of res.labels) expect(set.has(l)).toBe(true);
    // Five allowed labels anywhere in the index: all five come back (more lists get probed).
    const five = new Uint32Array([3, 1000, 2000, 3000, 3999]);
    const sel = await index.search(queries.subarray(0, DIM), 7, { filter: five, nprobe: 1 });
    expect(Array.from(sel.labels.subarray(0, 5)).sort((a, b) => a - b)).toEqual([3, 1000, 2000, 3000, 3999]);
    expect(sel.labels[5]).toBe(LABEL_NONE);
    // With refine: the allowed labels only, exact distances ascending.
    const refined = await built({ refine: 4 });
    const rr = await refined.search(queries, K, { filter: allowed, nprobe: 8 });
    for (let q = 0; q < NQ; q++) {
      for (let j = 0; j < K; j++) expect(set.has(rr.labels[q * K + j])).toBe(true);
      for (let j = 1; j < K; j++) expect(rr.distances[q * K + j]).toBeGreaterThanOrEqual(rr.distances[q * K + j - 1]);
    }
  });

  it('the nprobe given at creation is the search default', async () => {
    const a = new IvfPqIndex({ dim: DIM, nlist: 32, m: 8, nprobe: 32, seed: 7 });
    await a.train(base);
    await a.add(seq(N), base);
    const byDefault = await a.search(queries, K);
    const explicit = await a.search(queries, K, { nprobe: 32 });
    const one = await a.search(queries, K, { nprobe: 1 });
    expect(Array.from(byDefault.labels)).toEqual(Array.from(explicit.labels));
    expect(Array.from(byDefault.labels)).not.toEqual(Array.from(one.labels));
  });

  it('serialize round-trips; a corrupt or truncated file is DATA_LOSS', async () => {
    const index = await built({ refine: 4 });
    await index.remove(new Uint32Array([5, 6, 7]));
    const bytes = await index.serialize();
    const back = await IvfPqIndex.deserialize(bytes);
    expect(back.size).toBe(N - 3);
    expect(back.trained).toBe(true);
    const a = await index.search(queries, K, { nprobe: 8 });
    const b = await back.search(queries, K, { nprobe: 8 });
    expect(Array.from(b.labels)).toEqual(Array.from(a.labels));
    expect(Array.from(b.distances)).toEqual(Array.from(a.distances));
    expect(Buffer.compare(await back.serialize(), bytes)).toBe(0);
    // Untrained indexes round-trip too.
    const fresh = await IvfPqIndex.deserialize(await new IvfPqIndex({ dim: DIM, nlist: 8, m: 4 }).serialize());
    expect(fresh.trained).toBe(false);
    const flipped = Buffer.from(bytes);
    flipped[Math.floor(bytes.length / 2)] ^= 0x40;
    await expectCode(IvfPqIndex.deserialize(flipped), 'DATA_LOSS');
    await expectCode(IvfPqIndex.deserialize(bytes.subarray(0, bytes.length - 9)), 'DATA_LOSS');
  });
});
