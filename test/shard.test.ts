import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { QuiverError } from '../src/errors';
import { HnswIndex } from '../src/native';
import { PointStore, Shard, ShardIndexSpec, ShardOptions, WriteResult, encodeUpsert, listSnapshots, loadSnapshotPoints } from '../src/shard';
import { EntryType } from '../src/wal';
import { crc32c } from '../src/wal/crc32c';
import { addon, allocRows, trimAllocator, tuneAllocatorForServer } from '../src/native/addon';
import { rowsPerChunk } from '../src/shard/store';
import { expectCode } from './helpers';

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

async function expectMatches(shard: Shard, m: Model): Promise<void> {
  expect(shard.count).toBe(m.size);
  const got = await shard.get([...m.keys()], true, true);
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
    await expectMatches(s, m);
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
    expect(await s.upsert(batch(['a', 'b'], 1), 'k1')).toEqual(x);
    expect(s.status().lastLsn).toBe(last);
    const del1 = await s.delete(['a'], 'k2');
    const del2 = await s.delete(['a'], 'k2');
    expect(del2).toEqual(del1);
    expect(del1.answer).toBe(1);
    // A key stands for one request: another one under it is refused and writes nothing.
    await expectCode(s.upsert(batch(['a', 'b', 'c'], 9), 'k1'), 'FAILED_PRECONDITION');
    await expectCode(s.delete(['a'], 'k1'), 'FAILED_PRECONDITION');
    await expectCode(s.upsert(batch(['a'], 1), 'k2'), 'FAILED_PRECONDITION');
    expect(s.status().lastLsn).toBe(last + 1);
    await s.close({ snapshot: false });
    // After WAL replay.
    s = await Shard.open(opts());
    expect(await s.upsert(batch(['a', 'b'], 1), 'k1')).toEqual(x);
    await expectCode(s.upsert(batch(['q'], 5), 'k1'), 'FAILED_PRECONDITION');
    expect(await s.delete(['a'], 'k2')).toEqual(del1);
    expect(s.count).toBe(1);
    await s.close();
    // After recovery from the snapshot written at close.
    s = await Shard.open(opts());
    expect(s.status().snapshotLsn).toBeGreaterThan(0);
    expect(await s.upsert(batch(['a', 'b'], 1), 'k1')).toEqual(x);
    await expectCode(s.upsert(batch(['q'], 5), 'k1'), 'FAILED_PRECONDITION');
    expect(s.count).toBe(1);
    await s.close({ snapshot: false });
  });

  it('keys in WAL entries and snapshots written before request hashes were kept answer as they did', async () => {
    let s = await Shard.open(opts());
    // An entry as the earlier format wrote it: the key in the envelope, a body without a request header.
    const old = batch(['a', 'b'], 1);
    const { lsn } = s.log.append({ epoch: s.status().epoch, type: EntryType.Upsert, key: 'old', body: encodeUpsert(old, DIM) });
    await s.close({ snapshot: false });
    s = await Shard.open(opts());
    expect(s.count).toBe(2);
    const first = { lsn, answer: 2 };
    // Any request under such a key gets the first answer, as before; nothing is written.
    const last = s.status().lastLsn;
    expect(await s.upsert(batch(['q'], 5), 'old')).toEqual(first);
    expect(s.status().lastLsn).toBe(last);
    await s.close();
    // The snapshot in the earlier layout: no flag bit 1, key records without a hash length.
    const [snap] = await listSnapshots(opts().snapshotDir);
    const file = path.join(snap.dir, 'state.bin');
    const state = await fsp.readFile(file);
    expect(state.readUInt32LE(36) & 2).toBe(2);
    // The one key record ('old', no hash) ends the body: its hash length byte is the last before the CRC.
    expect(state[state.length - 5]).toBe(0);
    const body = Buffer.from(state.subarray(0, state.length - 5));
    body.writeUInt32LE(body.readUInt32LE(36) & ~2, 36);
    const crc = Buffer.alloc(4);
    crc.writeUInt32LE(crc32c(body), 0);
    await fsp.writeFile(file, Buffer.concat([body, crc]));
    s = await Shard.open(opts());
    expect(s.status().snapshotLsn).toBe(snap.lsn);
    expect(await s.upsert(batch(['q'], 5), 'old')).toEqual(first);
    expect(s.count).toBe(2);
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
    const digest = await s.digest();
    await s.close({ snapshot: false }); // as after a crash: the snapshot plus a WAL tail
    s = await Shard.open(opts({ segmentBytes: 4096 }));
    expect(s.status().snapshotLsn).toBe(snapLsn);
    expect(await s.digest()).toBe(digest);
    await expectMatches(s, m);
    const [hits] = await s.search(vec(35 * 1000 + 1), 1, {});
    expect(hits[0].id).toBe('new-35');
    await s.close();
    expect((await listSnapshots(path.join(dir, 'snap'))).length).toBe(1);
  });

  it('a newer snapshot removes the older by another name first; what a crash leaves half written or half removed goes at the next open', async () => {
    let s = await Shard.open(opts());
    await s.upsert(batch(['a', 'b'], 1));
    await s.snapshot();
    await s.upsert(batch(['c'], 2));
    await s.snapshot();
    const snapDir = path.join(dir, 'snap');
    const [meta] = await listSnapshots(snapDir);
    expect(await fsp.readdir(snapDir)).toEqual([path.basename(meta.dir)]);
    const digest = await s.digest();
    await s.close({ snapshot: false });
    // A crash while the older was being removed, and one while a newer one was being written.
    for (const left of [`.gone-${'0'.repeat(19)}1-0011aabb`, `tmp-${meta.lsn + 5}-1`]) {
      await fsp.mkdir(path.join(snapDir, left));
      await fsp.writeFile(path.join(snapDir, left, 'state.bin'), Buffer.alloc(100, 1));
    }
    s = await Shard.open(opts());
    expect(await fsp.readdir(snapDir)).toEqual([path.basename(meta.dir)]);
    expect(s.status().snapshotLsn).toBe(meta.lsn);
    expect(await s.digest()).toBe(digest);
    await s.close({ snapshot: false });
  });

  it('a snapshot holds the state at its LSN even while later writes change the same rows', async () => {
    const s = await Shard.open(opts());
    for (let t = 0; t < 10; t++) await s.upsert(batch([`r${t}`, `q${t}`], t));
    const atCapture = await s.digest();
    const snap = s.snapshot();
    const later = Promise.all([s.upsert(batch(['r1', 'r2', 'new'], 77)), s.delete(['q3'])]);
    await Promise.all([snap, later]);
    expect(await s.digest()).not.toBe(atCapture);
    const [meta] = await listSnapshots(path.join(dir, 'snap'));
    const { loadSnapshotPoints } = await import('../src/shard');
    const { store } = await loadSnapshotPoints(meta.dir, DIM);
    expect(await store.digest()).toBe(atCapture);
    await s.close({ snapshot: false });
  });

  it('snapshots keep raw vectors under cosine (the index normalizes its copy) and l2 (the index holds them)', async () => {
    for (const metric of ['cosine', 'l2'] as const) {
      const sub = path.join(dir, metric);
      const o = { ...opts({ metric }), walDir: path.join(sub, 'wal'), snapshotDir: path.join(sub, 'snap') };
      let s = await Shard.open(o);
      const m: Model = new Map();
      const b = batch(['u', 'v', 'w'], 3);
      await s.upsert(b);
      applyModel(m, b);
      await s.delete(['v']);
      m.delete('v');
      const digest = await s.digest();
      await s.close();
      s = await Shard.open(o);
      expect(s.status().snapshotLsn).toBeGreaterThan(0);
      expect(await s.digest(), metric).toBe(digest);
      await expectMatches(s, m);
      await s.close({ snapshot: false });
    }
  });

  it('reopens a snapshot of several vector chunks and keeps changing it correctly', async () => {
    let s = await Shard.open(opts());
    const m: Model = new Map();
    const ids = Array.from({ length: 2500 }, (_, i) => `n${i}`);
    for (let i = 0; i < ids.length; i += 500) {
      const b = batch(ids.slice(i, i + 500), i);
      await s.upsert(b);
      applyModel(m, b);
    }
    const digest = await s.digest();
    await s.close();
    s = await Shard.open(opts());
    expect(await s.digest()).toBe(digest);
    const b = batch(['n5', 'n1500', 'n2499', 'fresh'], 9999);
    await s.upsert(b);
    applyModel(m, b);
    await s.delete(['n7', 'n2000']);
    m.delete('n7');
    m.delete('n2000');
    await expectMatches(s, m);
    const [[hit]] = await s.search(m.get('n1500')!.vector, 1, {});
    expect(hit.id).toBe('n1500');
    await s.close({ snapshot: false });
  });

  it('snapshots on the WAL-size schedule', async () => {
    let snapshotted!: () => void;
    const snapshot = new Promise<void>((r) => (snapshotted = r));
    const s = await Shard.open(opts({ snapshotWalBytes: 2000, observer: { snapshot: () => snapshotted() } }));
    for (let t = 0; t < 20; t++) await s.upsert(batch([`a${t}`, `b${t}`], t));
    await snapshot;
    expect(s.status().snapshotLsn).toBeGreaterThan(0);
    await s.close({ snapshot: false });
  });

  it('a damaged snapshot is skipped when the WAL still covers it, and DATA_LOSS when it does not', async () => {
    // A retention floor of LSN 1 (as a follower that still needs everything) keeps the whole WAL.
    const keepAll = { walRetainFromLsn: () => 1 };
    let s = await Shard.open(opts(keepAll));
    for (let t = 0; t < 5; t++) await s.upsert(batch([`a${t}`], t));
    const digest = await s.digest();
    await s.close(); // snapshot; the WAL keeps its segments
    const [snap] = await listSnapshots(path.join(dir, 'snap'));
    const state = path.join(snap.dir, 'state.bin');
    const buf = await fsp.readFile(state);
    buf[60] ^= 0xff;
    await fsp.writeFile(state, buf);
    s = await Shard.open(opts(keepAll));
    expect(await s.digest()).toBe(digest);
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
    await expectMatches(s, m); // batch 5 entirely absent, 0..4 entirely present
    await s.close({ snapshot: false });

    const bad = Buffer.from(pristine);
    bad[32 + 40] ^= 0x01; // inside the first entries, with whole entries after it
    await fsp.writeFile(seg, bad);
    expect(await codeOf(Shard.open(opts()))).toBe('DATA_LOSS');
  });

  it('a follower fed the leader\'s WAL bytes holds identical bytes and, once applied, the same digest', async () => {
    const leader = await Shard.open(opts({ segmentBytes: 4096 }));
    for (let t = 0; t < 12; t++) await leader.upsert(batch([`a${t}`, `b${t % 4}`], t), t % 3 === 0 ? `key-${t}` : '');
    await leader.delete(['a3', 'b1']);
    const fdir = path.join(dir, 'follower');
    const fopts = { ...opts({ segmentBytes: 4096 }), walDir: path.join(fdir, 'wal'), snapshotDir: path.join(fdir, 'snap'), follower: true };
    let follower = await Shard.open(fopts);
    const last = leader.log.durableLsn;
    // Shipped in two pieces; the second piece out of order is refused and changes nothing.
    const head = await leader.log.readBytes(1, 5);
    const rest = await leader.log.readBytes(6, last);
    expect(await codeOf(follower.receive(rest))).toBe('FAILED_PRECONDITION');
    expect(await follower.receive(head)).toBe(5);
    const damaged = Buffer.from(rest);
    damaged[damaged.length - 7] ^= 1;
    expect(await codeOf(follower.receive(damaged))).toBe('DATA_LOSS');
    expect(follower.status().lastLsn).toBe(5);
    expect(await follower.receive(rest)).toBe(last);
    expect(follower.count).toBe(0); // nothing applied before the commit point is known
    expect((await follower.log.readBytes(1, last)).equals(await leader.log.readBytes(1, last))).toBe(true);
    expect(await follower.applyCommitted(7)).toBe(7);
    expect(await follower.applyCommitted(last)).toBe(last);
    expect(await follower.digest()).toBe(await leader.digest());
    // A restart applies what was committed and nothing more.
    await follower.close({ snapshot: false });
    follower = await Shard.open(fopts);
    expect(follower.status().appliedLsn).toBeLessThanOrEqual(last);
    expect(await follower.applyCommitted(last)).toBe(last);
    expect(await follower.digest()).toBe(await leader.digest());
    await follower.close();
    await leader.close();
  });

  it('snapshots on the timer', async () => {
    // The timer may first catch the epoch-start entry alone; it must reach the upsert's LSN.
    let upsertLsn = Infinity;
    let reached!: () => void;
    const snapshotOfUpsert = new Promise<void>((r) => (reached = r));
    const s: Shard = await Shard.open(opts({ snapshotIntervalMs: 20, observer: { snapshot: () => upsertLsn !== Infinity && s.status().snapshotLsn >= upsertLsn && reached() } }));
    await s.upsert(batch(['t1', 't2'], 1));
    upsertLsn = s.status().appliedLsn;
    if (s.status().snapshotLsn < upsertLsn) await snapshotOfUpsert;
    expect(s.status().snapshotLsn).toBe(s.status().appliedLsn);
    expect((await listSnapshots(path.join(dir, 'snap')))[0].lsn).toBe(s.status().appliedLsn);
    await s.close({ snapshot: false });
  });

  it('keeps a large index\'s serialize buffer from one snapshot to the next; an interval with nothing new, or closing, gives it back', async () => {
    const dim = 128;
    const n = 3000; // 1.5 MB of vectors: the index's bytes are kept from 1 MiB
    const points = (tag: number) => {
      const vectors = new Float32Array(n * dim);
      for (let i = 0; i < vectors.length; i++) vectors[i] = Math.fround(Math.sin(tag * 7.1 + i * 0.37));
      const ids = Array.from({ length: n }, (_, i) => `k${i}`);
      return { ids, vectors, payloadJson: ids.map(() => '') };
    };
    let kept = -1;
    let snapped!: () => void;
    const snapshotOfUpsert = new Promise<void>((r) => (snapped = r));
    const s: Shard = await Shard.open({
      ...opts({ snapshotIntervalMs: 30 }),
      dim,
      observer: {
        snapshot: () => {
          if (kept < 0 && s.count === n && s.status().snapshotLsn === s.status().appliedLsn) {
            kept = s.snapshotBufferBytes; // at the end of the snapshot, before the timer's next tick
            snapped();
          }
        },
      },
    });
    await s.upsert(points(1));
    await snapshotOfUpsert;
    expect(kept).toBeGreaterThan(n * dim * 4);
    // The timer's next tick finds nothing new to snapshot and gives the buffer back.
    await vi.waitFor(() => expect(s.snapshotBufferBytes).toBe(0), { timeout: 10_000, interval: 10 });
    await s.close({ snapshot: false });

    const t = await Shard.open({ ...opts(), dim });
    await t.upsert(points(2));
    await t.snapshot();
    expect(t.snapshotBufferBytes).toBeGreaterThan(n * dim * 4);
    await t.upsert(points(3));
    await t.close(); // its last snapshot keeps nothing
    expect(t.snapshotBufferBytes).toBe(0);
    const u = await Shard.open({ ...opts(), dim });
    await u.snapshot(); // the reopened state: the buffer of this snapshot is kept
    expect(u.snapshotBufferBytes).toBeGreaterThan(n * dim * 4);
    await u.close(); // nothing new to snapshot: the kept buffer goes all the same
    expect(u.snapshotBufferBytes).toBe(0);
  });

  it('works the same over an HNSW index', async () => {
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
    await expectMatches(s, m);
    const [hits] = await s.search(vec(99000), 1, { ef: 32 });
    expect(hits[0].id).toBe('new');
    await s.close();
    s = await Shard.open(opts({ index: { type: 'hnsw', m: 8, efConstruction: 50 } }));
    await expectMatches(s, m);
    await s.close({ snapshot: false });
  });
});

/** The index kinds a shard may hold: the IVF-PQ one trains once the shard holds 256 points. */
const SNAPSHOT_SPECS: Record<string, ShardIndexSpec> = {
  flat: { type: 'flat' },
  hnsw: { type: 'hnsw', m: 8, efConstruction: 40 },
  ivfpq: { type: 'ivfpq', nlist: 2, m: 2, refine: 4 },
};

/** A hook for ShardOptions.snapshotHold: `held` resolves once a snapshot waits in it, release() lets it go on. */
function snapshotHold(): { hook: () => Promise<void>; held: Promise<void>; release: () => void } {
  let entered!: () => void;
  let release!: () => void;
  const held = new Promise<void>((r) => (entered = r));
  const gate = new Promise<void>((r) => (release = r));
  return {
    hook: () => {
      entered();
      return gate;
    },
    held,
    release,
  };
}

describe('Snapshots beside writes and searches', () => {
  it.each(Object.keys(SNAPSHOT_SPECS))('%s: a write and a search complete while a snapshot, captured, waits to be written', async (kind) => {
    const hold = snapshotHold();
    let s = await Shard.open(opts({ index: SNAPSHOT_SPECS[kind], snapshotHold: hold.hook }));
    for (let t = 0; t < 3; t++) await s.upsert(batch(Array.from({ length: 100 }, (_, i) => `p${t * 100 + i}`), t), `load-${t}`);
    expect(s.indexKind).toBe(kind);
    const atCapture = await s.digest();
    const lsn = s.status().appliedLsn;
    const snap = s.snapshot();
    await hold.held;
    const w = await s.upsert(batch(['late', 'p7'], 77), 'late');
    expect(w.lsn).toBe(lsn + 1);
    const [hits] = await s.search(vec(77000), 10, {});
    expect(hits.map((h) => h.id)).toContain('late');
    expect((await s.get(['late'], true, false))[0].vector).toEqual(vec(77000));
    expect(s.status().snapshotLsn).toBeLessThan(lsn);
    hold.release();
    await snap;
    expect(s.status().snapshotLsn).toBe(lsn);
    // The snapshot holds the points as they were at its LSN; the WAL holds the write beside it.
    const [meta] = await listSnapshots(path.join(dir, 'snap'));
    expect(meta.lsn).toBe(lsn);
    expect(await (await loadSnapshotPoints(meta.dir, DIM)).store.digest()).toBe(atCapture);
    const now = await s.digest();
    await s.close({ snapshot: false });
    s = await Shard.open(opts({ index: SNAPSHOT_SPECS[kind] }));
    expect(s.status().snapshotLsn).toBe(lsn);
    expect(await s.digest()).toBe(now);
    await s.close({ snapshot: false });
  });

  it.each(Object.keys(SNAPSHOT_SPECS))(
    '%s: a snapshot taken among writes restores to exactly the state at its LSN: the files of a replica that applied up to it, byte for byte',
    async (kind) => {
      const spec = SNAPSHOT_SPECS[kind];
      // 40 writes: new points, replaced ones and deletes, with idempotency keys.
      type Write = { upsert: ReturnType<typeof batch> } | { delete: string[] };
      const writes: Write[] = Array.from({ length: 40 }, (_, t) =>
        t % 9 === 8 ? { delete: [`w${t - 3}-0`, `w${t - 5}-3`, 'absent'] } : { upsert: batch(Array.from({ length: 12 }, (_, i) => `w${t % 3 === 2 ? t - 2 : t}-${i}`), t) },
      );
      const send = (shard: Shard, t: number): Promise<WriteResult> => {
        const w = writes[t];
        return 'upsert' in w ? shard.upsert(w.upsert, `key-${t}`) : shard.delete(w.delete, `key-${t}`);
      };
      const hold = snapshotHold();
      const s = await Shard.open(opts({ index: spec, snapshotHold: hold.hook }));
      const sent: Promise<WriteResult>[] = [];
      for (let t = 0; t < 25; t++) await send(s, t);
      for (let t = 25; t < 32; t++) sent.push(send(s, t));
      const snap = s.snapshot(); // captured between two of the writes in flight, or after the last
      for (let t = 32; t < 40; t++) sent.push(send(s, t));
      await hold.held;
      // Writes asked for after the snapshot are applied while it waits to be written.
      const results = await Promise.all(sent);
      hold.release();
      await snap;
      const lsn = s.status().snapshotLsn;
      expect(lsn).toBeGreaterThanOrEqual(26); // the epoch start and the first 25 writes
      expect(lsn).toBeLessThan(results[results.length - 1].lsn);
      const [meta] = await listSnapshots(path.join(dir, 'snap'));
      expect(meta.lsn).toBe(lsn);

      // A replica of its own that applies the same writes, up to that LSN, then snapshots.
      const ref = { ...opts({ index: spec }), walDir: path.join(dir, 'ref', 'wal'), snapshotDir: path.join(dir, 'ref', 'snap') };
      const replica = await Shard.open(ref);
      for (let t = 0; replica.status().appliedLsn < lsn; t++) await send(replica, t);
      expect(replica.status().appliedLsn).toBe(lsn);
      await replica.snapshot();
      const [refMeta] = await listSnapshots(ref.snapshotDir);
      for (const f of ['index.bin', 'state.bin']) {
        expect((await fsp.readFile(path.join(meta.dir, f))).equals(await fsp.readFile(path.join(refMeta.dir, f))), f).toBe(true);
      }
      // Restored from that snapshot alone, a shard holds the replica's state at the LSN.
      const restored = { ...opts({ index: spec, follower: true }), walDir: path.join(dir, 'restored', 'wal'), snapshotDir: path.join(dir, 'restored', 'snap') };
      await fsp.mkdir(restored.snapshotDir, { recursive: true });
      await fsp.cp(meta.dir, path.join(restored.snapshotDir, path.basename(meta.dir)), { recursive: true });
      const back = await Shard.open(restored);
      expect(back.status().appliedLsn).toBe(lsn);
      expect(back.indexKind).toBe(replica.indexKind);
      expect(await back.digest()).toBe(await replica.digest());
      await Promise.all([back.close({ snapshot: false }), replica.close({ snapshot: false }), s.close({ snapshot: false })]);
    },
  );
});

describe('PointStore labels', () => {
  it('reuses freed labels, most recently freed first, and round-trips through its encoding', async () => {
    const { PointStore } = await import('../src/shard');
    const st = new PointStore(2);
    const put = (ids: string[]) => {
      const plan = st.planLabels(ids);
      st.assign(plan, ids, new Float32Array(ids.length * 2).fill(1), ids.map(() => undefined));
      return Array.from(plan.labels);
    };
    expect(put(['a', 'b', 'c', 'd'])).toEqual([0, 1, 2, 3]);
    expect(st.remove(['b', 'd', 'zz'])).toBe(2);
    expect(put(['c', 'e', 'f', 'g'])).toEqual([2, 3, 1, 4]); // c keeps 2; then 3, 1 (stack), then new
    const copy = new PointStore(2);
    const bytes = Buffer.concat(await st.encode(st.capture(), 0));
    expect(copy.decode(bytes, 0, true)).toBe(bytes.length);
    expect(await copy.digest()).toBe(await st.digest());
    expect(copy.planLabels(['h']).labels[0]).toBe(st.planLabels(['h']).labels[0]);
  });
});

describe('PointStore rows', () => {
  it('keeps every row across chunk boundaries, reused labels and a snapshot in progress (copy on write)', async () => {
    const dim = 3;
    const store = new PointStore(dim);
    const rowOf = (id: string, gen: number) => Float32Array.from([Number(id.slice(1)), gen, -gen]);
    const put = (ids: string[], gen: number) => {
      const v = new Float32Array(ids.length * dim);
      ids.forEach((id, i) => v.set(rowOf(id, gen), i * dim));
      store.assign(store.planLabels(ids), ids, v, ids.map(() => undefined));
    };
    const want = new Map<string, number>();
    const ids = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => `p${from + i}`);
    put(ids(0, 1000), 1); // labels 0..999
    put(ids(1000, 2100), 1); // crosses the 1,024-row chunk boundary
    for (const id of ids(0, 2100)) want.set(id, 1);
    store.remove(ids(500, 520)); // frees 20 labels, reused in reverse by the next batch
    for (const id of ids(500, 520)) want.delete(id);
    const image = store.capture(); // a snapshot holds the chunks: the next writes copy them first
    const parts = await store.encode(image, 0);
    const before = Buffer.concat(parts);
    const mixed = [...ids(3000, 3030), 'p10', 'p1500', ...ids(2100, 2110)];
    put(mixed, 2);
    expect(Buffer.concat(parts).equals(before)).toBe(true); // what the snapshot writes did not move
    expect(Buffer.concat(await store.encode(image, 0)).equals(before)).toBe(true); // nor what it encodes later
    for (const id of mixed) want.set(id, 2);
    store.release();
    expect(store.count).toBe(want.size);
    for (const [id, gen] of want) {
      const label = store.labelOf(id);
      expect(label, id).toBeDefined();
      expect(Array.from(store.vectorOf(label!)), id).toEqual(Array.from(rowOf(id, gen)));
    }
  });
});

describe('tuneAllocator (quiver serve)', () => {
  it('applies on glibc, can be turned off, and refuses sizes that are not byte counts', () => {
    const native = addon() as unknown as { tuneAllocator(a: unknown, b: unknown): boolean };
    // @types/node types the report as `object`; its header names the glibc the process runs on.
    const report = process.report.getReport() as { header: { glibcVersionRuntime?: string } };
    expect(native.tuneAllocator(256 << 20, 32 << 20)).toBe(report.header.glibcVersionRuntime !== undefined);
    const before = process.env.QUIVER_MALLOC_TUNE;
    process.env.QUIVER_MALLOC_TUNE = '0';
    try {
      expect(tuneAllocatorForServer()).toBe(false);
    } finally {
      if (before === undefined) delete process.env.QUIVER_MALLOC_TUNE;
      else process.env.QUIVER_MALLOC_TUNE = before;
    }
    expect(() => native.tuneAllocator(-1, 0)).toThrow(QuiverError);
    expect(() => native.tuneAllocator(0, 2 ** 31)).toThrow(QuiverError);
    expect(() => native.tuneAllocator('x', 0)).toThrow(QuiverError);
  });
});

describe('trimAllocator (a quiet quiver serve)', () => {
  it('is callable at any time; off glibc it does nothing and says so', () => {
    const report = process.report.getReport() as { header: { glibcVersionRuntime?: string } };
    const trimmed = trimAllocator();
    expect(typeof trimmed).toBe('boolean');
    if (report.header.glibcVersionRuntime === undefined) expect(trimmed).toBe(false);
  });
});

describe('allocRows (vector chunk memory)', () => {
  it('gives zeroed arrays of the asked length, small and huge-page sized, that keep their values', () => {
    for (const floats of [0, 1, 1000, 1024 * 784, 1337 * 784]) {
      const a = allocRows(floats);
      expect(a).toBeInstanceOf(Float32Array);
      expect(a.length).toBe(floats);
      expect(a.every((x) => x === 0)).toBe(true);
      a.fill(1.5);
      expect(a[floats - 1] ?? 1.5).toBe(1.5);
    }
  });

  it('refuses a length that is not a whole number of floats', () => {
    const native = addon() as unknown as { allocRows(n: unknown): Float32Array };
    expect(() => native.allocRows(-1)).toThrow(QuiverError);
    expect(() => native.allocRows(1.5)).toThrow(QuiverError);
    expect(() => native.allocRows('x')).toThrow(QuiverError);
  });

  it('rows per chunk fill whole 2 MB pages from 1 MB chunks up, 1,024 below', () => {
    expect(rowsPerChunk(4)).toBe(1024);
    expect(rowsPerChunk(96)).toBe(1024);
    const r = rowsPerChunk(784);
    expect(r * 784 * 4).toBeLessThanOrEqual(4 << 20);
    expect((r + 1) * 784 * 4).toBeGreaterThan(4 << 20);
  });

  it('a store of 784-d rows across several chunks reads back what was written, through a snapshot', async () => {
    const dim = 784;
    const store = new PointStore(dim);
    const n = 3000;
    const ids = Array.from({ length: n }, (_, i) => `p${i}`);
    const vectors = new Float32Array(n * dim);
    for (let i = 0; i < vectors.length; i++) vectors[i] = (i % 977) / 7;
    const plan = store.planLabels(ids);
    store.assign(plan, ids, vectors, ids.map(() => undefined));
    const bytes = Buffer.concat(await store.encode(store.capture(), 0));
    const back = new PointStore(dim);
    back.decode(bytes, 0, true);
    for (const i of [0, 1336, 1337, 2673, 2674, 2999]) {
      expect(Array.from(back.vectorOf(back.labelOf(ids[i])!))).toEqual(Array.from(vectors.subarray(i * dim, (i + 1) * dim)));
    }
  });
});
