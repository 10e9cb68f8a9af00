/**
 * Each vector has one keeper in a shard (the index, or the point store where the index does not
 * keep it as written: indexKeepsVectors), and get returns it bit for bit: for every metric and index
 * kind, across restarts from the WAL and from snapshots. Also the native side: flat and HNSW keep
 * cosine vectors as given, and read index files of format 1.
 */
import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FlatIndex, HnswIndex, Metric, deserializeIndex } from '../src/native';
import { Shard, ShardIndexSpec, ShardOptions, indexKeepsVectors, ivfTrainThreshold, listSnapshots, loadSnapshotPoints, readSnapshot } from '../src/shard';
import { PointStore } from '../src/shard/store';
import { heldBytesOf, writeSnapshot } from '../src/shard/snapshot';
import { crc32c } from '../src/wal/crc32c';
import { codeOf, randomVectors, seq } from './helpers';

const DIM = 16;
const METRICS: Metric[] = ['l2', 'ip', 'cosine'];

let dir: string;
beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'quiver-vectors-'));
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

function opts(metric: Metric, index: ShardIndexSpec): ShardOptions {
  return { walDir: path.join(dir, 'wal'), snapshotDir: path.join(dir, 'snap'), dim: DIM, metric, index, snapshotIntervalMs: 0, snapshotWalBytes: 0 };
}

/** Vectors whose normalized form differs from them in the last bits (varied norms, signs, scales). */
function vectors(n: number, seed: number): Float32Array {
  const v = randomVectors(n, DIM, seed, 50);
  for (let i = 0; i < n; i++) for (let d = 0; d < DIM; d++) v[i * DIM + d] *= 1 + (i % 7) * 13.7;
  return v;
}

const bits = (v: Float32Array): Buffer => Buffer.from(v.buffer, v.byteOffset, v.byteLength);
const row = (v: Float32Array, i: number): Float32Array => v.subarray(i * DIM, (i + 1) * DIM);

type Model = Map<string, Float32Array>;

async function upsert(s: Shard, m: Model, ids: string[], seed: number): Promise<void> {
  const v = vectors(ids.length, seed);
  await s.upsert({ ids, vectors: v, payloadJson: ids.map(() => '') });
  ids.forEach((id, i) => m.set(id, row(v, i).slice()));
}

/** get (and search) with vectors answer every point of the model bit for bit. */
async function expectExact(s: Shard, m: Model, what: string): Promise<void> {
  const got = await s.get([...m.keys()], true, false);
  expect(got.length, what).toBe(m.size);
  for (const p of got) expect(bits(p.vector!).equals(bits(m.get(p.id)!)), `${what}: ${p.id}`).toBe(true);
  const [id, v] = [...m][m.size >> 1];
  const [hits] = await s.search(v, 3, { withVectors: true, ef: 64, nprobe: 16 });
  expect(hits.length, what).toBeGreaterThan(0);
  for (const h of hits) expect(bits(h.vector!).equals(bits(m.get(h.id)!)), `${what}: search hit ${h.id} near ${id}`).toBe(true);
}

const ids = (prefix: string, n: number): string[] => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

const KINDS: { name: string; spec: ShardIndexSpec; points: number }[] = [
  { name: 'flat', spec: { type: 'flat' }, points: 120 },
  { name: 'hnsw', spec: { type: 'hnsw', m: 8, efConstruction: 40 }, points: 120 },
  { name: 'ivfpq untrained', spec: { type: 'ivfpq', nlist: 4, m: 4 }, points: 120 },
  { name: 'ivfpq trained', spec: { type: 'ivfpq', nlist: 4, m: 4 }, points: ivfTrainThreshold(4) + 40 },
  { name: 'ivfpq refine untrained', spec: { type: 'ivfpq', nlist: 4, m: 4, refine: 4 }, points: 120 },
  { name: 'ivfpq refine trained', spec: { type: 'ivfpq', nlist: 4, m: 4, refine: 4 }, points: ivfTrainThreshold(4) + 40 },
];

describe.each(METRICS)('get returns the vectors as written (%s)', (metric) => {
  it.each(KINDS)('$name: live, after WAL replay, from a snapshot, from a snapshot plus WAL; one keeper', async ({ spec, points }) => {
    const o = opts(metric, spec);
    let s = await Shard.open(o);
    const m: Model = new Map();
    const all = ids('p', points);
    for (let i = 0; i < points; i += 50) await upsert(s, m, all.slice(i, i + 50), 1 + i);
    await s.delete(['p3', 'p4', 'p40']);
    for (const id of ['p3', 'p4', 'p40']) m.delete(id);
    await upsert(s, m, ['p5', 'new1', 'new2'], 99); // replaces one, reuses freed labels
    const trained = points >= ivfTrainThreshold(4) && spec.type === 'ivfpq';
    expect(s.indexKind).toBe(trained ? 'ivfpq' : spec.type === 'ivfpq' ? 'flat' : spec.type);
    await expectExact(s, m, 'live');
    const digest = await s.digest();

    await s.close({ snapshot: false });
    s = await Shard.open(o);
    await expectExact(s, m, 'after WAL replay');
    expect(await s.digest()).toBe(digest);

    await s.close(); // snapshot
    const [snap] = await listSnapshots(o.snapshotDir);
    const r = await readSnapshot(snap.dir, new PointStore(DIM));
    expect(r.vectorsInIndex, 'the snapshot keeps the vectors where the shard does').toBe(indexKeepsVectors(s.indexKind as never, metric, spec));
    s = await Shard.open(o);
    expect(s.status().snapshotLsn).toBeGreaterThan(0);
    await expectExact(s, m, 'from a snapshot');
    expect(await s.digest()).toBe(digest);

    await upsert(s, m, ['p7', 'late'], 123);
    await s.delete(['p8']);
    m.delete('p8');
    const later = await s.digest();
    await s.close({ snapshot: false });
    s = await Shard.open(o);
    await expectExact(s, m, 'from a snapshot plus WAL');
    expect(await s.digest()).toBe(later);
    await s.close({ snapshot: false });
  });
});

describe('one keeper per index kind', () => {
  it('flat and HNSW keep the vectors under every metric; IVF-PQ only with refine under l2 and ip', () => {
    for (const metric of METRICS) {
      expect(indexKeepsVectors('flat', metric, { type: 'flat' })).toBe(true);
      expect(indexKeepsVectors('hnsw', metric, { type: 'hnsw' })).toBe(true);
      expect(indexKeepsVectors('flat', metric, { type: 'ivfpq', nlist: 4, m: 4 })).toBe(true); // untrained
      expect(indexKeepsVectors('ivfpq', metric, { type: 'ivfpq', nlist: 4, m: 4 })).toBe(false);
      expect(indexKeepsVectors('ivfpq', metric, { type: 'ivfpq', nlist: 4, m: 4, refine: 2 })).toBe(metric !== 'cosine');
    }
  });
});

describe('consistency with concurrent writes', () => {
  it('a get with vectors sees every batch whole, while batches replace the same points', async () => {
    const s = await Shard.open(opts('cosine', { type: 'hnsw', m: 8, efConstruction: 40 }));
    const pts = ids('c', 60);
    // Generation g writes vector i as vectors(60, g) row i: a read must match one generation for all.
    const gens = Array.from({ length: 12 }, (_, g) => vectors(pts.length, 1000 + g));
    await s.upsert({ ids: pts, vectors: gens[0], payloadJson: pts.map(() => '') });
    let done = false;
    const writes = (async () => {
      for (let g = 1; g < gens.length; g++) await s.upsert({ ids: pts, vectors: gens[g], payloadJson: pts.map(() => '') });
      done = true;
    })();
    const seen = new Set<number>();
    while (!done) {
      const got = await s.get(pts, true, false);
      expect(got.length).toBe(pts.length);
      const g = gens.findIndex((v) => bits(got[0].vector!).equals(bits(row(v, 0))));
      expect(g).toBeGreaterThanOrEqual(0);
      got.forEach((p, i) => expect(bits(p.vector!).equals(bits(row(gens[g], i))), `generation ${g}, point ${i}`).toBe(true));
      seen.add(g);
      await new Promise((r) => setImmediate(r)); // a turn of the event loop for the writes' I/O
    }
    await writes;
    expect(seen.size).toBeGreaterThan(1); // the reads did run between the writes
    await s.close({ snapshot: false });
  });
});

describe('snapshots written while the point store kept the vectors', () => {
  it.each(['flat', 'hnsw'] as const)('cosine %s: the index (which held normalized vectors) is built again from state.bin', async (type) => {
    const spec: ShardIndexSpec = type === 'flat' ? { type } : { type, m: 8, efConstruction: 40 };
    const o = opts('cosine', spec);
    let s = await Shard.open(o);
    const m: Model = new Map();
    await upsert(s, m, ids('q', 80), 5);
    await s.delete(['q2']);
    m.delete('q2');
    const digest = await s.digest();
    await s.close();
    // Rewrite the snapshot as it was written before: vectors in state.bin, the index holding them normalized.
    const [snap] = await listSnapshots(o.snapshotDir);
    const { store, lsn, epoch } = await loadSnapshotPoints(snap.dir, DIM);
    const old = await deserializeIndex(await fsp.readFile(path.join(snap.dir, 'index.bin')));
    const normalized = type === 'flat' ? new FlatIndex({ dim: DIM, metric: 'cosine' }) : new HnswIndex({ dim: DIM, metric: 'cosine', m: 8, efConstruction: 40, seed: 1 });
    const live = store.liveLabels();
    const v = await old.getVectors(live);
    for (let i = 0; i < live.length; i++) {
      const r = row(v, i);
      const n = Math.hypot(...r);
      for (let d = 0; d < DIM; d++) r[d] = r[d] / n;
    }
    await normalized.add(live, v);
    await writeSnapshot(o.snapshotDir, { lsn, epoch, dim: DIM, vectorsInIndex: false }, heldBytesOf(await normalized.serialize()), await store.encode(store.capture(), 48), { count: 0, parts: [] }, { inDoubt: [], decisions: [] });
    s = await Shard.open(o);
    await expectExact(s, m, 'from the older snapshot');
    expect(await s.digest()).toBe(digest);
    await s.close({ snapshot: false });
  });
});

describe('native indexes keep cosine vectors as given', () => {
  it.each(['flat', 'hnsw'] as const)('%s: getVectors is bit-exact after add, upsert and a serialize round trip; search as before', async (type) => {
    const make = () => (type === 'flat' ? new FlatIndex({ dim: DIM, metric: 'cosine' }) : new HnswIndex({ dim: DIM, metric: 'cosine', m: 8, efConstruction: 40 }));
    const index = make();
    const v = vectors(200, 7);
    await index.add(seq(200), v);
    const w = vectors(10, 8);
    await index.add(seq(10, 50), w); // replaces 50..59
    v.set(w, 50 * DIM);
    expect(bits(await index.getVectors(seq(200))).equals(bits(v))).toBe(true);
    const back = await deserializeIndex(await index.serialize());
    expect(bits(await back.getVectors(seq(200))).equals(bits(v))).toBe(true);
    // Distances are 1 - cos of the vectors as given.
    const q = row(v, 17);
    const res = await back.search(q, 5, { ef: 64 });
    expect(res.labels[0]).toBe(17);
    expect(res.distances[0]).toBeCloseTo(0, 5);
    for (let j = 0; j < 5; j++) {
      const x = row(v, res.labels[j]);
      let dot = 0, nq = 0, nx = 0;
      for (let d = 0; d < DIM; d++) {
        dot += q[d] * x[d];
        nq += q[d] * q[d];
        nx += x[d] * x[d];
      }
      expect(res.distances[j]).toBeCloseTo(1 - dot / Math.sqrt(nq * nx), 5);
    }
  });

  it('index files of format 1 load (cosine ones hold what they held); an unknown version is DATA_LOSS', async () => {
    const withVersion = (bytes: Buffer, version: number): Buffer => {
      const b = Buffer.from(bytes);
      b.writeUInt32LE(version, 8);
      b.writeUInt32LE(crc32c(b.subarray(0, b.length - 4)), b.length - 4);
      return b;
    };
    for (const index of [new FlatIndex({ dim: DIM, metric: 'cosine' }), new HnswIndex({ dim: DIM, metric: 'l2', m: 8 })]) {
      const v = vectors(50, 3);
      await index.add(seq(50), v);
      const bytes = await index.serialize();
      expect(bytes.readUInt32LE(8)).toBe(2);
      const old = await deserializeIndex(withVersion(bytes, 1));
      expect(bits(await old.getVectors(seq(50))).equals(bits(v))).toBe(true);
      expect((await old.search(row(v, 9), 1, { ef: 32 })).labels[0]).toBe(9);
      expect(await codeOf(deserializeIndex(withVersion(bytes, 3)))).toBe('DATA_LOSS');
      expect(await codeOf(deserializeIndex(withVersion(bytes, 0)))).toBe('DATA_LOSS');
    }
  });
});
