import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QuiverError } from '../src/errors';
import { HnswIndex } from '../src/native';
import { Shard, ShardOptions, listSnapshots } from '../src/shard';

const DIM = 6;
let dir: string;
beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'quiver-shard-'));
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

function opts(extra: Partial<ShardOptions> = {}): ShardOptions {
  return {
    walDir: path.join(dir, 'wal'),
    snapshotDir: path.join(dir, 'snap'),
    dim: DIM,
    metric: 'l2',
    index: { type: 'flat' },
    snapshotIntervalMs: 0,
    snapshotWalBytes: 0,
    ...extra,
  };
}

function vec(seed: number): Float32Array {
  const v = new Float32Array(DIM);
  for (let j = 0; j < DIM; j++) v[j] = Math.fround(Math.sin(seed * 12.9898 + j * 78.233) * 10);
  return v;
}

function batch(ids: string[], tag: number, withPayload = true) {
  const vectors = new Float32Array(ids.length * DIM);
  ids.forEach((id, i) => vectors.set(vec(tag * 1000 + i), i * DIM));
  return { ids, vectors, payloadJson: ids.map((id) => (withPayload ? JSON.stringify({ id, tag }) : '')) };
}

/** A model of the shard: id -> {vector, payload}. */
type Model = Map<string, { vector: Float32Array; payload: unknown }>;

function applyModel(m: Model, b: ReturnType<typeof batch>): void {
  b.ids.forEach((id, i) => m.set(id, { vector: b.vectors.slice(i * DIM, (i + 1) * DIM), payload: b.payloadJson[i] === '' ? {} : JSON.parse(b.payloadJson[i]) }));
}

function expectMatches(shard: Shard, m: Model): void {
  expect(shard.count).toBe(m.size);
  const got = shard.get([...m.keys()], true, true);
  expect(got.length).toBe(m.size);
  for (const p of got) {
    const want = m.get(p.id)!;
    expect(Array.from(p.vector!)).toEqual(Array.from(want.vector));
    expect(p.payload).toEqual(want.payload);
  }
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return e instanceof QuiverError ? e.code : `not a QuiverError: ${String(e)}`;
  }
  return 'no error';
}

describe('Shard', () => {
  it('applies upserts and deletes in order; get and exact search see them', async () => {
    const s = await Shard.open(opts());
    const m: Model = new Map();
    const b1 = batch(['a', 'b', 'c', 'd'], 1);
    const r1 = await s.upsert(b1);
    applyModel(m, b1);
    expect(r1.answer).toBe(4);
    expect(r1.lsn).toBe(2); // LSN 1 is the epoch start
    const b2 = batch(['b', 'e'], 2); // b replaced
    await s.upsert(b2);
    applyModel(m, b2);
    const d = await s.delete(['a', 'zz']);
    expect(d.answer).toBe(1);
    m.delete('a');
    expectMatches(s, m);
    expect(s.status()).toMatchObject({ appliedLsn: 4, lastLsn: 4, points: 4 });
    // Exact search: the nearest to e's vector is e.
    const [hits] = await s.search(m.get('e')!.vector, 3, { withPayload: true });
    expect(hits[0].id).toBe('e');
    expect(hits[0].distance).toBe(0);
    expect(hits[0].payload).toEqual({ id: 'e', tag: 2 });
    expect(hits.length).toBe(3);
    // A predicate restricts the search to matching payloads.
    const [only] = await s.search(m.get('e')!.vector, 10, { predicate: (p) => (p as { tag: number }).tag === 1 });
    expect(only.map((h) => h.id).sort()).toEqual(['c', 'd']);
    // Labels are reused: a's label goes to the next new id, and searches stay right.
    await s.upsert(batch(['f'], 3));
    const [f] = await s.search(vec(3000), 1, {});
    expect(f[0].id).toBe('f');
    await s.close({ snapshot: false });
  });

  it('an idempotency key applies a write once and returns the same answer, also after a restart', async () => {
    let s = await Shard.open(opts());
    const [x, y] = await Promise.all([s.upsert(batch(['a', 'b'], 1), 'k1'), s.upsert(batch(['a', 'b'], 1), 'k1')]);
    expect(x).toEqual(y);
    const last = s.status().lastLsn;
    const again = await s.upsert(batch(['a', 'b', 'c'], 9), 'k1');
    expect(again).toEqual(x);
    expect(s.status().lastLsn).toBe(last);
    const del1 = await s.delete(['a'], 'k2');
    const del2 = await s.delete(['a'], 'k2');
    expect(del2).toEqual(del1);
    expect(del1.answer).toBe(1);
    await s.close({ snapshot: false });
    // After WAL replay.
    s = await Shard.open(opts());
    expect(await s.upsert(batch(['q'], 5), 'k1')).toEqual(x);
    expect(await s.delete(['a'], 'k2')).toEqual(del1);
    expect(s.count).toBe(1);
    await s.close();
    // After recovery from the snapshot written at close.
    s = await Shard.open(opts());
    expect(s.status().snapshotLsn).toBeGreaterThan(0);
    expect(await s.upsert(batch(['q'], 5), 'k1')).toEqual(x);
    expect(s.count).toBe(1);
    await s.close({ snapshot: false });
  });

  it('snapshot + WAL replay gives back the same state; segments below the snapshot go', async () => {
    let s = await Shard.open(opts({ segmentBytes: 4096 }));
    const m: Model = new Map();
    for (let t = 0; t < 30; t++) {
      const b = batch(Array.from({ length: 5 }, (_, i) => `id-${(t * 3 + i) % 40}`), t);
      await s.upsert(b);
      applyModel(m, b);
    }
    const segsBefore = s.log.segmentCount;
    await s.snapshot();
    const snapLsn = s.status().snapshotLsn;
    expect(snapLsn).toBe(s.status().appliedLsn);
    expect(s.log.segmentCount).toBeLessThan(segsBefore);
    expect(s.log.firstLsn).toBeGreaterThan(1);
    for (let t = 30; t < 40; t++) {
      const b = batch([`id-${t}`, `new-${t}`], t);
      await s.upsert(b);
      applyModel(m, b);
    }
    await s.delete(['id-1', 'id-2', 'new-31']);
    for (const id of ['id-1', 'id-2', 'new-31']) m.delete(id);
    const digest = s.digest();
    await s.close({ snapshot: false }); // as after a crash: the snapshot plus a WAL tail
    s = await Shard.open(opts({ segmentBytes: 4096 }));
    expect(s.status().snapshotLsn).toBe(snapLsn);
    expect(s.digest()).toBe(digest);
    expectMatches(s, m);
    const [hits] = await s.search(vec(35 * 1000 + 1), 1, {});
    expect(hits[0].id).toBe('new-35');
    await s.close();
    expect((await listSnapshots(path.join(dir, 'snap'))).length).toBe(1);
  });

  it('snapshots on the WAL-size schedule', async () => {
    const s = await Shard.open(opts({ snapshotWalBytes: 2000 }));
    for (let t = 0; t < 20; t++) await s.upsert(batch([`a${t}`, `b${t}`], t));
    for (let i = 0; i < 200 && s.status().snapshotLsn === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(s.status().snapshotLsn).toBeGreaterThan(0);
    await s.close({ snapshot: false });
  });

  it('a damaged snapshot is skipped when the WAL still covers it, and DATA_LOSS when it does not', async () => {
    let s = await Shard.open(opts());
    for (let t = 0; t < 5; t++) await s.upsert(batch([`a${t}`], t));
    const digest = s.digest();
    await s.close(); // snapshot; the WAL's only segment stays
    const [snap] = await listSnapshots(path.join(dir, 'snap'));
    const state = path.join(snap.dir, 'state.bin');
    const buf = await fsp.readFile(state);
    buf[60] ^= 0xff;
    await fsp.writeFile(state, buf);
    s = await Shard.open(opts());
    expect(s.digest()).toBe(digest);
    expect(s.count).toBe(5);
    await s.close({ snapshot: false });

    // Now with the WAL's early segments gone, the damaged snapshot cannot be replaced.
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.mkdir(dir);
    s = await Shard.open(opts({ segmentBytes: 4096 }));
    for (let t = 0; t < 40; t++) await s.upsert(batch([`a${t}`, `b${t}`, `c${t}`], t));
    await s.close();
    const [snap2] = await listSnapshots(path.join(dir, 'snap'));
    const b2 = await fsp.readFile(path.join(snap2.dir, 'index.bin'));
    b2[b2.length - 9] ^= 0x10;
    await fsp.writeFile(path.join(snap2.dir, 'index.bin'), b2);
    expect(await codeOf(Shard.open(opts({ segmentBytes: 4096 })))).toBe('DATA_LOSS');
  });

  it('a torn last entry loses its whole batch and nothing else; a damaged middle entry refuses to open', async () => {
    let s = await Shard.open(opts());
    const m: Model = new Map();
    for (let t = 0; t < 6; t++) {
      const b = batch([`x${t}`, `y${t}`, `z${t}`], t);
      await s.upsert(b);
      if (t < 5) applyModel(m, b);
    }
    await s.close({ snapshot: false });
    const seg = path.join(dir, 'wal', (await fsp.readdir(path.join(dir, 'wal')))[0]);
    const pristine = await fsp.readFile(seg);
    await fsp.writeFile(seg, pristine.subarray(0, pristine.length - 30));
    s = await Shard.open(opts());
    expectMatches(s, m); // batch 5 entirely absent, 0..4 entirely present
    await s.close({ snapshot: false });

    const bad = Buffer.from(pristine);
    bad[32 + 40] ^= 0x01; // inside the first entries, with whole entries after it
    await fsp.writeFile(seg, bad);
    expect(await codeOf(Shard.open(opts()))).toBe('DATA_LOSS');
  });

  it('works the same over an HNSW index', async (ctx) => {
    try {
      new HnswIndex({ dim: DIM });
    } catch (e) {
      ctx.skip(`HNSW is not in this build yet: ${(e as Error).message}`);
    }
    let s = await Shard.open(opts({ index: { type: 'hnsw', m: 8, efConstruction: 50 } }));
    const m: Model = new Map();
    for (let t = 0; t < 20; t++) {
      const b = batch([`h${t}`, `g${t}`], t);
      await s.upsert(b);
      applyModel(m, b);
    }
    await s.delete(['h3', 'g4']);
    m.delete('h3');
    m.delete('g4');
    await s.upsert(batch(['new'], 99)); // reuses a freed label
    m.set('new', { vector: vec(99000), payload: { id: 'new', tag: 99 } });
    expectMatches(s, m);
    const [hits] = await s.search(vec(99000), 1, { ef: 32 });
    expect(hits[0].id).toBe('new');
    await s.close();
    s = await Shard.open(opts({ index: { type: 'hnsw', m: 8, efConstruction: 50 } }));
    expectMatches(s, m);
    await s.close({ snapshot: false });
  });
});
