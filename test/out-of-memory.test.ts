/**
 * Running out of memory is a runtime condition: it reaches JavaScript as a QuiverError with code
 * RESOURCE_EXHAUSTED on every path (a write on the thread pool, a search on the search lane or the
 * pool, a synchronous call on the event loop), and a write that could not reserve its memory leaves
 * the index as it was. The addon's test hook failNextAllocations(n) makes the next n reservations
 * fail as if memory had run out (native/common/alloc.h); the native allocation-failure sweep of
 * every allocation of a write is test/native/oom_test.cpp (scripts/sanitize.sh).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { QuiverError } from '../src/errors';
import { FlatIndex, HnswIndex, IvfPqIndex, searchLaneStats, VectorIndex } from '../src/native';
import { addon } from '../src/native/addon';
import { randomVectors, seq } from './helpers';

const hook = addon() as unknown as { failNextAllocations(n: number): void };
afterEach(() => hook.failNextAllocations(0));

const DIM = 16;
const N = 300;

async function rejection(p: Promise<unknown>): Promise<QuiverError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(QuiverError);
  return e as QuiverError;
}

const KINDS: [string, () => Promise<VectorIndex>][] = [
  ['hnsw l2', async () => new HnswIndex({ dim: DIM, metric: 'l2', efConstruction: 32 })],
  ['hnsw cosine', async () => new HnswIndex({ dim: DIM, metric: 'cosine', efConstruction: 32 })],
  ['hnsw ip', async () => new HnswIndex({ dim: DIM, metric: 'ip', efConstruction: 32 })],
  ['flat', async () => new FlatIndex({ dim: DIM, metric: 'l2' })],
  [
    'ivfpq',
    async () => {
      const ix = new IvfPqIndex({ dim: DIM, metric: 'l2', nlist: 8, m: 4, refine: 2 });
      await ix.train(randomVectors(512, DIM, 3));
      return ix;
    },
  ],
];

describe.each(KINDS)('out of memory: %s', (_name, make) => {
  it('an add on the thread pool rejects with RESOURCE_EXHAUSTED, changes nothing, and the index still works', async () => {
    const index = await make();
    const base = randomVectors(N, DIM, 1);
    await index.add(seq(N), base);
    const before = await index.serialize();
    // Half of the batch replaces labels already there, half is new; the values reach outside the
    // first batch's range (an HNSW quantizer would widen).
    const labels = seq(100, N - 50);
    const vectors = randomVectors(100, DIM, 2, 4);
    hook.failNextAllocations(1);
    const err = await rejection(index.add(labels, vectors));
    expect(err.code).toBe('RESOURCE_EXHAUSTED');
    expect(index.size).toBe(N);
    expect(Buffer.compare(await index.serialize(), before)).toBe(0);

    await index.add(labels, vectors);
    expect(index.size).toBe(N + 50);
    const got = await index.getVectors(seq(1, N + 10)).catch((e: QuiverError) => e);
    if (!(got instanceof QuiverError)) expect(got.length).toBe(DIM);
    const r = await index.search(vectors.subarray(0, DIM), 5);
    expect(r.labels[0]).not.toBe(0xffffffff);
  });
});

describe('out of memory on the search paths and on the event loop', () => {
  it('a one-query search on the search lane and a batch search on the pool reject with RESOURCE_EXHAUSTED', async () => {
    const index = new HnswIndex({ dim: DIM, metric: 'l2', efConstruction: 32 });
    await index.add(seq(N), randomVectors(N, DIM, 4));
    const one = randomVectors(1, DIM, 5);
    const batch = randomVectors(400, DIM, 6); // 6,400 floats: past the lane's size, so the pool

    const lane = searchLaneStats();
    hook.failNextAllocations(1);
    expect((await rejection(index.search(one, 5))).code).toBe('RESOURCE_EXHAUSTED');
    const after = searchLaneStats();
    expect(after.laneTasks + after.poolTasks).toBe(lane.laneTasks + lane.poolTasks + 1);

    hook.failNextAllocations(1);
    expect((await rejection(index.search(batch, 5))).code).toBe('RESOURCE_EXHAUSTED');

    const r = await index.search(batch, 5);
    expect(r.labels.length).toBe(400 * 5);
  });

  it('searchSync on the event loop throws RESOURCE_EXHAUSTED, and the next one answers', async () => {
    const index = new HnswIndex({ dim: DIM, metric: 'l2', efConstruction: 32 });
    await index.add(seq(N), randomVectors(N, DIM, 7));
    const one = randomVectors(1, DIM, 8);
    hook.failNextAllocations(1);
    let thrown: unknown;
    try {
      index.searchSync(one, 5);
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(QuiverError);
    expect((thrown as QuiverError).code).toBe('RESOURCE_EXHAUSTED');
    expect(index.searchSync(one, 5).labels.length).toBe(5);
  });

  it('a synchronous call (allocRows) throws RESOURCE_EXHAUSTED on the loop', () => {
    hook.failNextAllocations(1);
    let thrown: unknown;
    try {
      addon().allocRows(1 << 20);
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(QuiverError);
    expect((thrown as QuiverError).code).toBe('RESOURCE_EXHAUSTED');
    expect(addon().allocRows(1 << 20).length).toBe(1 << 20);
  });
});
