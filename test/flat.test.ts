import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describe, expect, it } from 'vitest';
import { FlatIndex, HnswIndex, LABEL_NONE, QuiverError } from '../src';
import { bruteForce, codeOf, MetricName, randomVectors, recall, seq } from './helpers';

const METRICS: MetricName[] = ['l2', 'ip', 'cosine'];

describe.each(METRICS)('FlatIndex (%s)', (metric) => {
  const dim = 37, n = 2000;
  const base = randomVectors(n, dim, 11);
  const queries = randomVectors(50, dim, 12);
  const truth = bruteForce(metric, base, seq(n), queries, dim, 10);

  it('batch search equals float64 brute force (recall 1.0, distances close)', async () => {
    const index = new FlatIndex({ dim, metric });
    await index.add(seq(n), base);
    expect(index.size).toBe(n);
    const res = await index.search(queries, 10);
    expect(recall(res.labels, truth.labels, 10)).toBe(1);
    for (let q = 0; q < 50; q++)
      for (let j = 0; j < 10; j++) expect(res.distances[q * 10 + j]).toBeCloseTo(truth.distances[q][j], 3);
  });

  it('single-query search, on 1 and 2 threads, equals brute force', async () => {
    const index = new FlatIndex({ dim, metric });
    await index.add(seq(n), base);
    for (const threads of [1, 2]) {
      for (let q = 0; q < 3; q++) {
        const res = await index.search(queries.subarray(q * dim, (q + 1) * dim), 10, { threads });
        expect(Array.from(res.labels)).toEqual(truth.labels[q]);
      }
    }
  });
});

describe('FlatIndex', () => {
  const dim = 16;

  it('blocked batch search is exact on large-norm data (re-rank of the ||q||^2 + ||x||^2 - 2q.x estimate)', async () => {
    // Pixel-like data: values 0..255, large norms, many near-ties.
    const n = 3000, nq = 64, d = 96;
    const base = randomVectors(n, d, 5, 1).map((x) => Math.round((x + 1) * 127.5));
    const queries = randomVectors(nq, d, 6, 1).map((x) => Math.round((x + 1) * 127.5));
    const index = new FlatIndex({ dim: d });
    await index.add(seq(n), base);
    const truth = bruteForce('l2', base, seq(n), queries, d, 10);
    const res = await index.search(queries, 10, { threads: 2 });
    for (let q = 0; q < nq; q++)
      for (let j = 0; j < 10; j++) expect(res.distances[q * 10 + j]).toBe(truth.distances[q][j]);
  });

  it('returns LABEL_NONE and +Infinity where fewer than k points exist', async () => {
    const index = new FlatIndex({ dim });
    await index.add(seq(3), randomVectors(3, dim, 1));
    const res = await index.search(randomVectors(5, dim, 2), 5);
    for (let q = 0; q < 5; q++) {
      expect(res.labels[q * 5 + 3]).toBe(LABEL_NONE);
      expect(res.distances[q * 5 + 4]).toBe(Infinity);
    }
    const empty = new FlatIndex({ dim });
    const r2 = await empty.search(randomVectors(1, dim, 3), 2);
    expect(Array.from(r2.labels)).toEqual([LABEL_NONE, LABEL_NONE]);
  });

  it('add of an existing label replaces its vector (upsert)', async () => {
    const index = new FlatIndex({ dim });
    const v = randomVectors(2, dim, 9);
    await index.add(new Uint32Array([7]), v.subarray(0, dim));
    await index.add(new Uint32Array([7]), v.subarray(dim));
    expect(index.size).toBe(1);
    expect(Array.from(await index.getVectors(new Uint32Array([7])))).toEqual(Array.from(v.subarray(dim)));
  });

  it('remove: removed labels are never returned, the rest stay exact', async () => {
    const n = 500;
    const base = randomVectors(n, dim, 21);
    const index = new FlatIndex({ dim });
    await index.add(seq(n), base);
    const gone = seq(250, 0).filter((l) => l % 2 === 0);
    await index.remove(gone);
    expect(index.size).toBe(n - gone.length);
    const queries = randomVectors(20, dim, 22);
    const res = await index.search(queries, 10);
    const goneSet = new Set(gone);
    for (const l of res.labels) expect(goneSet.has(l)).toBe(false);
    const truth = bruteForce('l2', base, seq(n), queries, dim, 10, (l) => !goneSet.has(l));
    expect(recall(res.labels, truth.labels, 10)).toBe(1);
  });

  it('filter: only allowed labels come back, exact within the allowed set', async () => {
    const n = 1000;
    const base = randomVectors(n, dim, 31);
    const index = new FlatIndex({ dim });
    await index.add(seq(n), base);
    const allowed = seq(n).filter((l) => l % 7 === 0);
    const allowSet = new Set(allowed);
    const queries = randomVectors(10, dim, 32);
    const res = await index.search(queries, 5, { filter: allowed });
    for (const l of res.labels) expect(allowSet.has(l)).toBe(true);
    const truth = bruteForce('l2', base, seq(n), queries, dim, 5, (l) => allowSet.has(l));
    expect(recall(res.labels, truth.labels, 5)).toBe(1);
  });

  it('serialize / deserialize round-trips, also through a file', async () => {
    const n = 300;
    const index = new FlatIndex({ dim, metric: 'cosine' });
    await index.add(seq(n, 1000), randomVectors(n, dim, 41));
    const bytes = await index.serialize();
    const copy = await FlatIndex.deserialize(bytes);
    expect(copy.size).toBe(n);
    expect(copy.metric).toBe('cosine');
    const q = randomVectors(4, dim, 42);
    expect(await copy.search(q, 5)).toEqual(await index.search(q, 5));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-flat-'));
    try {
      await index.save(path.join(dir, 'x.idx'));
      expect((await FlatIndex.load(path.join(dir, 'x.idx'))).size).toBe(n);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a corrupt or truncated index file is refused with DATA_LOSS', async () => {
    const index = new FlatIndex({ dim });
    await index.add(seq(10), randomVectors(10, dim, 51));
    const bytes = await index.serialize();
    const flipped = Buffer.from(bytes);
    flipped[40] ^= 0x10;
    expect(await codeOf(FlatIndex.deserialize(flipped))).toBe('DATA_LOSS');
    expect(await codeOf(FlatIndex.deserialize(bytes.subarray(0, bytes.length - 9)))).toBe('DATA_LOSS');
    expect(await codeOf(FlatIndex.deserialize(bytes.subarray(0, 20)))).toBe('DATA_LOSS');
    const badMagic = Buffer.from(bytes);
    badMagic[0] = 0x58;
    expect(await codeOf(FlatIndex.deserialize(badMagic))).toBe('DATA_LOSS');
  });

  it('deserializing a flat file as another kind is INVALID_ARGUMENT', async () => {
    const index = new FlatIndex({ dim });
    await index.add(seq(2), randomVectors(2, dim, 52));
    expect(await codeOf(HnswIndex.deserialize(await index.serialize()))).toBe('INVALID_ARGUMENT');
  });

  describe('bad input is refused with a code and changes nothing', () => {
    const setup = async () => {
      const index = new FlatIndex({ dim });
      await index.add(seq(5), randomVectors(5, dim, 61));
      return index;
    };

    it('wrong dimension', async () => {
      const index = await setup();
      expect(await codeOf(index.add(seq(1, 100), new Float32Array(dim + 1)))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(index.search(new Float32Array(dim - 1), 1))).toBe('INVALID_ARGUMENT');
      expect(index.size).toBe(5);
    });

    it('NaN or Infinity anywhere in a batch: nothing of the batch is added', async () => {
      const index = await setup();
      for (const bad of [NaN, Infinity, -Infinity]) {
        const v = randomVectors(3, dim, 62);
        v[2 * dim + 5] = bad;
        expect(await codeOf(index.add(seq(3, 100), v))).toBe('INVALID_ARGUMENT');
        expect(index.size).toBe(5);
        const q = randomVectors(1, dim, 63);
        q[0] = bad;
        expect(await codeOf(index.search(q, 1))).toBe('INVALID_ARGUMENT');
      }
    });

    it('number[] instead of typed arrays', async () => {
      const index = await setup();
      expect(await codeOf(index.add([1] as unknown as Uint32Array, new Float32Array(dim)))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(index.add(seq(1, 9), Array(dim).fill(0) as unknown as Float32Array))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(index.search(Array(dim).fill(0) as unknown as Float32Array, 1))).toBe('INVALID_ARGUMENT');
      expect(index.size).toBe(5);
    });

    it('k <= 0, fractional or above the limit', async () => {
      const index = await setup();
      const q = randomVectors(1, dim, 64);
      for (const k of [0, -1, 1.5, 4097, NaN]) expect(await codeOf(index.search(q, k))).toBe('INVALID_ARGUMENT');
    });

    it('duplicate or reserved labels in one batch', async () => {
      const index = await setup();
      expect(await codeOf(index.add(new Uint32Array([8, 8]), new Float32Array(2 * dim)))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(index.add(new Uint32Array([LABEL_NONE]), new Float32Array(dim)))).toBe('INVALID_ARGUMENT');
      expect(index.size).toBe(5);
    });

    it('remove of an unknown label is NOT_FOUND and removes nothing', async () => {
      const index = await setup();
      expect(await codeOf(index.remove(new Uint32Array([1, 99])))).toBe('NOT_FOUND');
      expect(index.size).toBe(5);
      expect(await codeOf(index.getVectors(new Uint32Array([99])))).toBe('NOT_FOUND');
    });

    it('bad construction options', () => {
      expect(() => new FlatIndex({ dim: 0 })).toThrow(QuiverError);
      expect(() => new FlatIndex({ dim: 70000 })).toThrow(QuiverError);
      expect(() => new FlatIndex({ dim: 4, metric: 'hamming' as never })).toThrow(QuiverError);
      expect(() => new FlatIndex({ dim: 4, bogus: 1 } as never)).toThrow(QuiverError);
    });
  });

  it('searches run concurrently with adds without losing points', async () => {
    const index = new FlatIndex({ dim });
    const batches = 20, per = 100;
    const q = randomVectors(8, dim, 71);
    const writes: Promise<void>[] = [];
    const reads: Promise<unknown>[] = [];
    for (let b = 0; b < batches; b++) {
      writes.push(index.add(seq(per, b * per), randomVectors(per, dim, 100 + b)));
      reads.push(index.search(q, 3));
    }
    await Promise.all([...writes, ...reads]);
    expect(index.size).toBe(batches * per);
  });
});
