/**
 * searchSync: one query answered on the calling thread. It answers what search answers (labels and
 * distances bit for bit) on the three kinds and metrics, with filters, removals and the search
 * options; it checks its input as search does; it refuses a query whose estimated work is over
 * searchSyncTermsMax with RESOURCE_EXHAUSTED and changes nothing; and it returns valid results
 * while async add and remove batches run on the pool.
 */
import { describe, expect, it } from 'vitest';
import {
  FlatIndex,
  HnswIndex,
  IvfPqIndex,
  LABEL_NONE,
  METRICS,
  Metric,
  SearchResult,
  SearchSyncOptions,
  VectorIndex,
  searchSyncTermsMax,
  topKMax,
} from '../src/native';
import { codeOf, expectCode, randomVectors, refDistance, rng, seq } from './helpers';
import { clustered } from './hnsw-helpers';

type Kind = 'flat' | 'hnsw' | 'ivfpq';
const KINDS: Kind[] = ['flat', 'hnsw', 'ivfpq'];

function bytes(a: ArrayBufferView): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

function expectSame(sync: SearchResult, async: SearchResult, what: string): void {
  expect(bytes(sync.labels).equals(bytes(async.labels)), `labels: ${what}`).toBe(true);
  expect(bytes(sync.distances).equals(bytes(async.distances)), `distances: ${what}`).toBe(true);
}

/** An index of `kind` holding labels 0..n-1 of `data` (IVF-PQ trained on it, raw vectors kept). */
async function build(kind: Kind, metric: Metric, dim: number, data: Float32Array): Promise<VectorIndex> {
  const n = data.length / dim;
  if (kind === 'flat') {
    const index = new FlatIndex({ dim, metric });
    await index.add(seq(n), data);
    return index;
  }
  if (kind === 'hnsw') {
    const index = new HnswIndex({ dim, metric, m: 8, efConstruction: 64 });
    await index.add(seq(n), data);
    return index;
  }
  const index = new IvfPqIndex({ dim, metric, nlist: 16, m: 8, refine: 4, nprobe: 4 });
  await index.train(data);
  await index.add(seq(n), data);
  return index;
}

/** The search options worth comparing on a kind: its own knobs, filters broad and narrow. */
function optionSets(kind: Kind, n: number): SearchSyncOptions[] {
  const every3 = new Uint32Array(Math.ceil(n / 3)).map((_, i) => i * 3);
  const few = new Uint32Array(20).map((_, i) => i * 97 + 5); // under 2% of n: HNSW searches it exactly
  const absent = new Uint32Array([n + 1, n + 2, 7, 11]); // some labels not in the index
  const sets: SearchSyncOptions[] = [{}, { filter: every3 }, { filter: few }, { filter: absent }, { filter: new Uint32Array(0) }];
  if (kind === 'hnsw') sets.push({ ef: 10 }, { ef: 120 }, { ef: 40, filter: every3 });
  if (kind === 'ivfpq') sets.push({ nprobe: 1 }, { nprobe: 16 }, { refine: 0 }, { nprobe: 2, refine: 8, filter: every3 });
  return sets;
}

describe('searchSync answers what search answers', () => {
  const DIM = 24;
  const N = 3000;
  const data = clustered(N, DIM, 5);
  const queries = clustered(12, DIM, 6);
  for (const kind of KINDS) {
    for (const metric of METRICS) {
      it(`${kind} ${metric}: labels and distances bit for bit, with filters, options and removals`, async () => {
        const index = await build(kind, metric, DIM, data);
        // Removals (HNSW tombstones are walked through, flat moves rows, IVF-PQ erases entries).
        await index.remove(new Uint32Array(100).map((_, i) => i * 13 + 1));
        let compared = 0;
        for (const opts of optionSets(kind, N)) {
          for (const k of [1, 10, 37]) {
            for (let q = 0; q < 12; q++) {
              const query = queries.subarray(q * DIM, (q + 1) * DIM);
              const sync = index.searchSync(query, k, opts);
              expectSame(sync, await index.search(query, k, opts), `k ${k} query ${q} ${JSON.stringify(opts)}`);
              compared++;
            }
          }
        }
        expect(compared).toBe(optionSets(kind, N).length * 3 * 12);
      });
    }
  }

  it('flat: equal distances keep the same labels on any thread count, so sync and async agree', async () => {
    // 20,000 points on a 6 x 6 grid: each distance is shared by hundreds of labels, and a
    // one-query scan over 4 threads splits the rows into 4 parts, each with its own top-k.
    const dim = 2;
    const n = 20_000;
    const r = rng(3);
    const data = new Float32Array(n * dim).map(() => Math.floor(r() * 6));
    const labels = new Uint32Array(n);
    const used = new Set<number>();
    for (let i = 0; i < n; i++) {
      let l: number;
      do l = Math.floor(r() * 1e6);
      while (used.has(l));
      used.add(l);
      labels[i] = l;
    }
    for (const metric of METRICS) {
      const index = new FlatIndex({ dim, metric });
      await index.add(labels, data);
      for (const k of [3, 10, 50, 300, 1000]) {
        for (let q = 0; q < 6; q++) {
          const query = new Float32Array([q, (q * 5) % 6 + 0.5]);
          const one = await index.search(query, k, { threads: 1 });
          expectSame(await index.search(query, k, { threads: 4 }), one, `${metric} k ${k} threads 4 vs 1`);
          expectSame(index.searchSync(query, k), one, `${metric} k ${k} sync`);
        }
      }
    }
  });
});

describe('searchSync checks its input as search does', () => {
  const DIM = 8;
  const data = randomVectors(600, DIM, 9);
  const q = data.subarray(0, DIM);
  const nan = new Float32Array(DIM).fill(0.5);
  nan[3] = NaN;
  // [what, query, k, options]: each refused with the same code by both calls.
  const cases: [string, unknown, unknown, unknown][] = [
    ['a number[] query', Array.from(q), 5, {}],
    ['a Float64Array query', new Float64Array(DIM), 5, {}],
    ['a NaN in the query', nan, 5, {}],
    ['k 0', q, 0, {}],
    ['k over the limit', q, topKMax + 1, {}],
    ['k 2.5', q, 2.5, {}],
    ['k a string', q, '5', {}],
    ['ef 0', q, 5, { ef: 0 }],
    ['ef over the limit', q, 5, { ef: 65537 }],
    ['nprobe -1', q, 5, { nprobe: -1 }],
    ['refine 1025', q, 5, { refine: 1025 }],
    ['a number[] filter', q, 5, { filter: [1, 2] }],
    ['an Int32Array filter', q, 5, { filter: new Int32Array([1]) }],
  ];
  for (const kind of KINDS) {
    it(`${kind}: the same codes as search, and nothing changes`, async () => {
      const index = await build(kind, 'l2', DIM, data);
      const call = (query: unknown, k: unknown, opts: unknown) => () =>
        (index.searchSync as (...a: unknown[]) => unknown)(query, k, opts);
      const callAsync = (query: unknown, k: unknown, opts: unknown) =>
        (index.search as (...a: unknown[]) => Promise<unknown>)(query, k, opts);
      for (const [what, query, k, opts] of cases) {
        const code = await codeOf(call(query, k, opts));
        expect(code, what).toBe('INVALID_ARGUMENT');
        expect(await codeOf(callAsync(query, k, opts)), what).toBe(code);
      }
      // Not one query: search takes several, searchSync only one.
      await expectCode(call(new Float32Array(2 * DIM), 5, {}), 'INVALID_ARGUMENT');
      await expectCode(call(new Float32Array(DIM - 1), 5, {}), 'INVALID_ARGUMENT');
      await expectCode(call(new Float32Array(0), 5, {}), 'INVALID_ARGUMENT');
      expect(index.size).toBe(600);
      expectSame(index.searchSync(q, 5), await index.search(q, 5), 'after the refusals');
    });
  }

  it('ivfpq: untrained, and refine without raw vectors, are FAILED_PRECONDITION as in search', async () => {
    const untrained = new IvfPqIndex({ dim: DIM, nlist: 4, m: 4 });
    await expectCode(() => untrained.searchSync(q, 5), 'FAILED_PRECONDITION');
    await expectCode(untrained.search(q, 5), 'FAILED_PRECONDITION');
    const noRaw = new IvfPqIndex({ dim: DIM, nlist: 4, m: 4 });
    await noRaw.train(data);
    await noRaw.add(seq(600), data);
    await expectCode(() => noRaw.searchSync(q, 5, { refine: 2 }), 'FAILED_PRECONDITION');
    await expectCode(noRaw.search(q, 5, { refine: 2 }), 'FAILED_PRECONDITION');
  });
});

describe('searchSync refuses work over searchSyncTermsMax', () => {
  it('flat: points x dim up to the bound is answered, one point more is RESOURCE_EXHAUSTED', async () => {
    const dim = 1024;
    const n = Math.floor(searchSyncTermsMax / dim);
    const data = randomVectors(n + 1, dim, 21);
    const index = new FlatIndex({ dim, metric: 'l2' });
    await index.add(seq(n), data.subarray(0, n * dim));
    const q = randomVectors(1, dim, 22);
    expectSame(index.searchSync(q, 10), await index.search(q, 10), 'at the bound');
    await index.add(new Uint32Array([n]), data.subarray(n * dim));
    await expectCode(() => index.searchSync(q, 10), 'RESOURCE_EXHAUSTED');
    expect(index.size).toBe(n + 1);
    // A filter bounds the rows scanned; search itself has no bound.
    const filter = seq(100, n - 50);
    expectSame(index.searchSync(q, 10, { filter }), await index.search(q, 10, { filter }), 'filtered');
    const all = await index.search(q, 10);
    expect(all.labels[0]).not.toBe(LABEL_NONE);
  });

  it('hnsw: min(ef x 2m, points) x dim up to the bound is answered, past it RESOURCE_EXHAUSTED', async () => {
    const dim = 4096;
    const m = 16;
    const n = 2100;
    const index = new HnswIndex({ dim, metric: 'l2', m, efConstruction: 32 });
    await index.add(seq(n), randomVectors(n, dim, 31));
    expect(n * dim).toBeGreaterThan(searchSyncTermsMax);
    const ef = Math.floor(searchSyncTermsMax / (dim * 2 * m)); // 64
    const q = randomVectors(1, dim, 32);
    expectSame(index.searchSync(q, 10, { ef }), await index.search(q, 10, { ef }), 'at the bound');
    await expectCode(() => index.searchSync(q, 10, { ef: ef + 1 }), 'RESOURCE_EXHAUSTED');
    // A filter under 2% of the points is searched exactly: its points x dim, whatever ef.
    const few = seq(40, 1000);
    expectSame(index.searchSync(q, 10, { ef: 1000, filter: few }), await index.search(q, 10, { ef: 1000, filter: few }), 'exact filter');
    expect(index.size).toBe(n);
    expectSame(index.searchSync(q, 10, { ef }), await index.search(q, 10, { ef }), 'after the refusal');
  });

  it('ivfpq: a re-rank of refine x k exact vectors over the bound is RESOURCE_EXHAUSTED', async () => {
    const dim = 2048;
    const n = 4200;
    const data = randomVectors(n, dim, 41);
    const index = new IvfPqIndex({ dim, metric: 'l2', nlist: 4, m: 4, refine: 1 });
    await index.train(data.subarray(0, 1024 * dim));
    await index.add(seq(n), data);
    const q = randomVectors(1, dim, 42);
    // refine 4 x k 1000 = 4,000 vectors of 2,048 floats re-ranked: 8.2M terms, plus the scan.
    expect(4000 * dim).toBeLessThan(searchSyncTermsMax);
    await expectCode(() => index.searchSync(q, 1000, { refine: 4, nprobe: 4 }), 'RESOURCE_EXHAUSTED');
    expect(index.size).toBe(n);
    const opts = { refine: 4, nprobe: 2 };
    expectSame(index.searchSync(q, 10, opts), await index.search(q, 10, opts), 'small');
    expect((await index.search(q, 1000, { refine: 4, nprobe: 4 })).labels[999]).not.toBe(LABEL_NONE);
  });
});

describe('searchSync while async writes run', () => {
  const DIM = 16;
  const BASE = 2000;
  const BATCH = 20_000;
  const data = clustered(BASE + BATCH, DIM, 51);
  const queries = clustered(16, DIM, 52);

  /** Labels unique and known, distances ascending and those of the stored vectors. */
  function expectValid(r: SearchResult, metric: Metric, k: number, query: Float32Array): void {
    const seen = new Set<number>();
    for (let j = 0; j < k; j++) {
      const l = r.labels[j];
      if (l === LABEL_NONE) continue;
      expect(l).toBeLessThan(BASE + BATCH);
      expect(seen.has(l)).toBe(false);
      seen.add(l);
      if (j > 0) expect(r.distances[j]).toBeGreaterThanOrEqual(r.distances[j - 1]);
      const want = refDistance(metric, query, 0, data, l * DIM, DIM);
      expect(Math.abs(r.distances[j] - want)).toBeLessThan(1e-3 * Math.max(1, Math.abs(want)));
    }
    expect(seen.size).toBeGreaterThan(0);
  }

  for (const kind of KINDS) {
    it(`${kind}: one sync search per loop turn while an add batch (and a remove) runs`, async () => {
      const metric: Metric = 'cosine';
      const index = await build(kind, metric, DIM, data.subarray(0, BASE * DIM));
      let settled = false;
      const writes = Promise.all([
        index.add(seq(BATCH, BASE), data.subarray(BASE * DIM)),
        index.remove(seq(200, 100)),
      ]).finally(() => {
        settled = true;
      });
      let searches = 0;
      while (!settled) {
        const query = queries.subarray((searches % 16) * DIM, (searches % 16 + 1) * DIM);
        expectValid(index.searchSync(query, 10, kind === 'hnsw' ? { ef: 40 } : {}), metric, 10, query);
        searches++;
        await new Promise((resolve) => setImmediate(resolve));
      }
      await writes;
      expect(searches).toBeGreaterThan(0);
      expect(index.size).toBe(BASE + BATCH - 200);
      const query = queries.subarray(0, DIM);
      expectSame(index.searchSync(query, 10), await index.search(query, 10), 'after the writes');
    });
  }
});
