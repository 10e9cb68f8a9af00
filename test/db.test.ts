import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QuiverError } from '../src/errors';
import { batchPointsMax, payloadBytesMax } from '../src/common/limits';
import { LocalDatabase, fnv1a64Big, openDatabase, placementHash, shardOf } from '../src/query';
import type { Filter, PointInput } from '../src/query';
import { ivfTrainThreshold } from '../src/shard';

const DIM = 8;
let dir: string;
let db: LocalDatabase;

beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'quiver-db-'));
  db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
});
afterEach(async () => {
  await db.close({ snapshot: false }).catch(() => undefined);
  await fsp.rm(dir, { recursive: true, force: true });
});

function vec(seed: number, dim = DIM): Float32Array {
  const v = new Float32Array(dim);
  for (let j = 0; j < dim; j++) v[j] = Math.fround(Math.sin(seed * 12.9898 + j * 78.233) * 10);
  return v;
}

const colors = ['red', 'green', 'blue'];
function points(n: number, from = 0): PointInput[] {
  return Array.from({ length: n }, (_, i) => ({
    id: `p${from + i}`,
    vector: vec(from + i),
    payload: { color: colors[(from + i) % 3], price: from + i, ...((from + i) % 4 === 0 ? { tag: null } : {}), ...((from + i) % 5 === 0 ? { sale: true } : {}) },
  }));
}

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return e instanceof QuiverError ? e.code : `not a QuiverError: ${String(e)}`;
  }
  return 'no error';
}

function l2(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) * (a[i] - b[i]);
  return s;
}

describe('placement', () => {
  it('FNV-1a 64 matches the reference values; shards are equal ranges of the placement hash', () => {
    expect(fnv1a64Big(Buffer.from(''))).toBe(0xcbf29ce484222325n);
    expect(fnv1a64Big(Buffer.from('a'))).toBe(0xaf63dc4c8601ec8cn);
    expect(fnv1a64Big(Buffer.from('foobar'))).toBe(0x85944171f73967e8n);
    for (const id of ['a', 'foobar', 'p17', 'ü-ß', 'x'.repeat(200)]) {
      for (const s of [1, 2, 3, 7, 256]) {
        const want = Number((placementHash(id) * BigInt(s)) >> 64n);
        expect(want).toBe(Math.floor((Number(placementHash(id)) / 2 ** 64) * s));
        expect(shardOf(id, s)).toBe(want);
      }
    }
    const counts = new Array(4).fill(0);
    for (let i = 0; i < 4000; i++) counts[shardOf(`id-${i}`, 4)]++;
    for (const c of counts) expect(c).toBeGreaterThan(800);
  });
});

describe('Database', () => {
  it('creates, lists, describes and drops collections; the catalog survives a reopen', async () => {
    const info = await db.createCollection({ name: 'a', dim: DIM, index: { type: 'flat' }, shards: 3 });
    expect(info).toMatchObject({ name: 'a', dim: DIM, metric: 'l2', shards: 3, replicationFactor: 1, writeConcern: 'majority', count: 0 });
    await db.createCollection({ name: 'b', dim: 4, metric: 'cosine', index: { type: 'flat' } });
    expect(await codeOf(db.createCollection({ name: 'a', dim: DIM, index: { type: 'flat' } }))).toBe('ALREADY_EXISTS');
    expect(db.listCollections().map((c) => c.name)).toEqual(['a', 'b']);
    await db.upsert('a', points(10));
    await db.close();
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    expect(db.describeCollection('a')).toMatchObject({ count: 10, shards: 3, createdAt: info.createdAt });
    expect(db.describeCollection('b').metric).toBe('cosine');
    await db.dropCollection('a');
    expect(await codeOf(() => db.describeCollection('a'))).toBe('NOT_FOUND');
    expect(await codeOf(db.dropCollection('a'))).toBe('NOT_FOUND');
    expect(await fsp.readdir(path.join(dir, 'wal'))).toEqual(['b']);
    // What a crash in the middle of a drop leaves (its directory renamed, part freed) goes at the next open.
    await fsp.mkdir(path.join(dir, 'wal', '.gone-a-0011aabb', '0'), { recursive: true });
    await fsp.writeFile(path.join(dir, 'wal', '.gone-a-0011aabb', '0', '00000000000000000001.seg'), Buffer.alloc(64, 1));
    await db.close();
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    expect(await fsp.readdir(path.join(dir, 'wal'))).toEqual(['b']);
    // Re-created under the same name: empty.
    await db.createCollection({ name: 'a', dim: DIM, index: { type: 'flat' } });
    expect(await db.count('a')).toBe(0);
    await db.close();
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    expect(db.listCollections().map((c) => [c.name, c.count])).toEqual([
      ['a', 0],
      ['b', 0],
    ]);
  });

  it('a catalogued collection whose WAL vanished is DATA_LOSS, not an empty collection', async () => {
    await db.createCollection({ name: 'w', dim: DIM, index: { type: 'flat' }, shards: 2 });
    await db.upsert('w', points(10));
    await db.close({ snapshot: false });
    await fsp.rm(path.join(dir, 'wal', 'w', '1'), { recursive: true });
    expect(await codeOf(openDatabase({ dataDir: dir }))).toBe('DATA_LOSS');
    expect(await fsp.readFile(path.join(dir, 'LOCK'), 'utf8').catch(() => 'none')).toBe('none');
    db = await openDatabase({ dataDir: path.join(dir, 'other') });
  });

  it('refuses a second process-level open of the same directory', async () => {
    // Our own pid holds it: a second open in this process is allowed, another live pid is not.
    await fsp.writeFile(path.join(dir, 'LOCK'), `${process.ppid}\n`);
    expect(await codeOf(openDatabase({ dataDir: dir }))).toBe('FAILED_PRECONDITION');
    await fsp.writeFile(path.join(dir, 'LOCK'), `${process.pid}\n`);
  });

  it('upsert, get, count, delete and search across 4 shards agree with brute force', async () => {
    await db.createCollection({ name: 'c', dim: DIM, index: { type: 'flat' }, shards: 4 });
    const pts = points(200);
    const r = await db.upsert('c', pts);
    expect(r.upserted).toBe(200);
    expect(Object.keys(r.token).sort()).toEqual(['0', '1', '2', '3']);
    expect(await db.count('c')).toBe(200);
    const st = db.status();
    expect(st.mode).toBe('standalone');
    expect(st.shards.reduce((n, s) => n + s.points, 0)).toBe(200);
    for (const s of st.shards) expect(r.token[String(s.shard)]).toEqual({ epoch: 0, lsn: s.appliedLsn });

    const got = await db.get('c', ['p3', 'nope', 'p150'], { withVectors: true });
    expect(got.map((p) => p.id)).toEqual(['p3', 'p150']);
    expect(Array.from(got[0].vector!)).toEqual(Array.from(vec(3)));
    expect(got[0].payload).toEqual({ color: 'red', price: 3 });
    expect((await db.get('c', ['p3'], { withPayload: false }))[0]).toEqual({ id: 'p3' });

    const d = await db.delete('c', ['p0', 'p1', 'missing']);
    expect(d.deleted).toBe(2);
    expect(await db.count('c')).toBe(198);
    const live = pts.slice(2);

    const queries = [vec(1000), vec(1001), vec(5)];
    const flat = new Float32Array(queries.length * DIM);
    queries.forEach((q, i) => flat.set(q, i * DIM));
    const res = await db.search('c', { vectors: flat, k: 10, withPayload: true });
    expect(res.length).toBe(3);
    queries.forEach((q, i) => {
      const want = live
        .map((p) => ({ id: p.id, d: l2(p.vector, q) }))
        .sort((a, b) => a.d - b.d)
        .slice(0, 10);
      expect(res[i].map((h) => h.id)).toEqual(want.map((w) => w.id));
      res[i].forEach((h, j) => expect(h.distance).toBeCloseTo(want[j].d, 2));
      expect(res[i][0].payload).toEqual(live.find((p) => p.id === res[i][0].id)!.payload);
    });
    // Upsert replaces vector and payload.
    await db.upsert('c', [{ id: 'p5', vector: vec(1000), payload: { color: 'pink' } }]);
    const [[top]] = await db.search('c', { vectors: vec(1000), k: 1, withPayload: true });
    expect(top).toMatchObject({ id: 'p5', distance: 0, payload: { color: 'pink' } });
    expect(await db.count('c')).toBe(198);
  });

  it('payload filters: eq, in, range, exists, and/or/not', async () => {
    await db.createCollection({ name: 'f', dim: DIM, index: { type: 'flat' }, shards: 2 });
    const pts = points(60);
    await db.upsert('f', pts);
    await db.upsert('f', [{ id: 'bare', vector: vec(999) }]);
    const all = [...pts.map((p) => ({ id: p.id, payload: p.payload as Record<string, unknown> })), { id: 'bare', payload: {} as Record<string, unknown> }];
    const cases: [Filter, (p: Record<string, unknown>) => boolean][] = [
      [{ field: 'color', eq: 'red' }, (p) => p.color === 'red'],
      [{ field: 'price', eq: 7 }, (p) => p.price === 7],
      [{ field: 'color', in: ['red', 'blue'] }, (p) => p.color === 'red' || p.color === 'blue'],
      [{ field: 'price', range: { gte: 10, lt: 20 } }, (p) => typeof p.price === 'number' && p.price >= 10 && p.price < 20],
      [{ field: 'price', range: { gt: 50 } }, (p) => typeof p.price === 'number' && p.price > 50],
      [{ field: 'sale', exists: true }, (p) => p.sale !== undefined],
      [{ field: 'tag', exists: true }, () => false], // null counts as absent
      [{ field: 'tag', exists: false }, () => true],
      [{ and: [{ field: 'color', eq: 'green' }, { field: 'price', range: { lte: 30 } }] }, (p) => p.color === 'green' && (p.price as number) <= 30],
      [{ or: [{ field: 'sale', exists: true }, { field: 'price', eq: 1 }] }, (p) => p.sale !== undefined || p.price === 1],
      [{ not: { field: 'color', eq: 'red' } }, (p) => p.color !== 'red'],
      [{ field: 'color', eq: 'purple' }, () => false],
    ];
    for (const [filter, pred] of cases) {
      const want = all.filter((p) => pred(p.payload)).map((p) => p.id).sort();
      const [hits] = await db.search('f', { vectors: vec(3), k: 100, filter });
      expect(hits.map((h) => h.id).sort(), JSON.stringify(filter)).toEqual(want);
    }
  });

  it('refuses every bad input with a typed code and changes nothing', async () => {
    await db.createCollection({ name: 'v', dim: DIM, index: { type: 'flat' }, shards: 2 });
    await db.upsert('v', points(20));
    const digests = (): Promise<string[]> => Promise.all([db.digest('v', 0), db.digest('v', 1)]);
    const before = await digests();
    const lsns = db.status().shards.map((s) => s.lastLsn);
    const nan = vec(1);
    nan[3] = NaN;
    const inf = vec(1);
    inf[0] = Infinity;
    const badUpserts: [string, unknown][] = [
      ['wrong dimension', [{ id: 'n1', vector: new Float32Array(DIM + 1) }]],
      ['NaN', [{ id: 'n1', vector: vec(1) }, { id: 'n2', vector: nan }]],
      ['Infinity', [{ id: 'n1', vector: inf }]],
      ['empty id', [{ id: '', vector: vec(1) }]],
      ['id over 256 bytes', [{ id: 'é'.repeat(129), vector: vec(1) }]],
      ['id not a string', [{ id: 7, vector: vec(1) }]],
      ['duplicate id', [{ id: 'd', vector: vec(1) }, { id: 'd', vector: vec(2) }]],
      ['payload not an object', [{ id: 'n1', vector: vec(1), payload: [1, 2] }]],
      ['payload a string', [{ id: 'n1', vector: vec(1), payload: 'x' }]],
      ['oversized payload', [{ id: 'n1', vector: vec(1), payload: { s: 'x'.repeat(payloadBytesMax) } }]],
      ['oversized batch', Array.from({ length: batchPointsMax + 1 }, (_, i) => ({ id: `b${i}`, vector: vec(i) }))],
      ['not an array', { id: 'n1', vector: vec(1) }],
      ['vector missing', [{ id: 'n1' }]],
      ['unknown field', [{ id: 'n1', vector: vec(1), extra: 1 }]],
    ];
    for (const [what, pts] of badUpserts) {
      expect(await codeOf(db.upsert('v', pts as PointInput[])), what).toBe('INVALID_ARGUMENT');
    }
    expect(await codeOf(db.upsert('v', points(1), { idempotencyKey: '' }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(db.upsert('nope', points(1)))).toBe('NOT_FOUND');
    expect(await codeOf(db.upsert('bad name!', points(1)))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(db.delete('v', ['p1', 'p1']))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(db.delete('v', ['']))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(db.delete('v', 'p1' as unknown as string[]))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(db.delete('nope', ['p1']))).toBe('NOT_FOUND');
    expect(await codeOf(db.get('v', ['x'.repeat(257)]))).toBe('INVALID_ARGUMENT');

    const q = vec(1);
    const badSearches: [string, unknown][] = [
      ['k = 0', { vectors: q, k: 0 }],
      ['k too large', { vectors: q, k: 5000 }],
      ['k not an integer', { vectors: q, k: 2.5 }],
      ['wrong dimension', { vectors: new Float32Array(DIM - 1), k: 1 }],
      ['NaN query', { vectors: nan, k: 1 }],
      ['number[] query', { vectors: Array.from(q), k: 1 }],
      ['filter not an object', { vectors: q, k: 1, filter: 'color=red' }],
      ['filter unknown op', { vectors: q, k: 1, filter: { field: 'color', like: 'r%' } }],
      ['filter extra key', { vectors: q, k: 1, filter: { field: 'color', eq: 'red', in: ['x'] } }],
      ['filter eq object', { vectors: q, k: 1, filter: { field: 'color', eq: { a: 1 } } }],
      ['filter range string', { vectors: q, k: 1, filter: { field: 'price', range: { gt: '3' } } }],
      ['filter range empty', { vectors: q, k: 1, filter: { field: 'price', range: {} } }],
      ['filter and not array', { vectors: q, k: 1, filter: { and: { field: 'a', eq: 1 } } }],
      ['filter empty field', { vectors: q, k: 1, filter: { field: '', eq: 1 } }],
      ['filter too deep', { vectors: q, k: 1, filter: Array.from({ length: 20 }).reduce((f) => ({ not: f }), { field: 'a', eq: 1 }) }],
      ['ef = 0', { vectors: q, k: 1, ef: 0 }],
      ['bad consistency', { vectors: q, k: 1, consistency: 'strong' }],
      ['token for a missing shard', { vectors: q, k: 1, token: { '5': 1 } }],
      ['token entry with an unknown field', { vectors: q, k: 1, token: { '0': { lsn: 1, term: 2 } } }],
      ['token entry without a whole LSN', { vectors: q, k: 1, token: { '0': { epoch: 1, lsn: 1.5 } } }],
      ['token not an object', { vectors: q, k: 1, token: 'abc' }],
      ['maxLagMs negative', { vectors: q, k: 1, consistency: 'bounded', maxLagMs: -1 }],
    ];
    for (const [what, req] of badSearches) {
      expect(await codeOf(db.search('v', req as never)), what).toBe('INVALID_ARGUMENT');
    }
    expect(await codeOf(db.search('nope', { vectors: q, k: 1 }))).toBe('NOT_FOUND');
    const badSpecs: [string, unknown, string][] = [
      ['dim 0', { name: 'x', dim: 0 }, 'INVALID_ARGUMENT'],
      ['dim huge', { name: 'x', dim: 1e6 }, 'INVALID_ARGUMENT'],
      ['bad metric', { name: 'x', dim: 4, metric: 'hamming' }, 'INVALID_ARGUMENT'],
      ['bad index', { name: 'x', dim: 4, index: { type: 'lsh' } }, 'INVALID_ARGUMENT'],
      ['ivfpq m not dividing', { name: 'x', dim: 10, index: { type: 'ivfpq', nlist: 4, m: 3 } }, 'INVALID_ARGUMENT'],
      ['shards 0', { name: 'x', dim: 4, shards: 0 }, 'INVALID_ARGUMENT'],
      ['shards too many', { name: 'x', dim: 4, shards: 257 }, 'INVALID_ARGUMENT'],
      ['bad name', { name: '../x', dim: 4 }, 'INVALID_ARGUMENT'],
      ['rf 3 standalone', { name: 'x', dim: 4, replicationFactor: 3 }, 'FAILED_PRECONDITION'],
      ['unknown field', { name: 'x', dim: 4, colour: 1 }, 'INVALID_ARGUMENT'],
    ];
    for (const [what, spec, code] of badSpecs) {
      expect(await codeOf(db.createCollection(spec as never)), what).toBe(code);
    }
    expect(db.listCollections().map((c) => c.name)).toEqual(['v']);
    expect(await digests()).toEqual(before);
    expect(db.status().shards.map((s) => s.lastLsn)).toEqual(lsns);
    expect(await db.count('v')).toBe(20);
  });

  it('an fsync failure refuses the write, reports the fatal error once, and leaves the write invisible', async () => {
    await db.close({ snapshot: false });
    let fail = false;
    const fatal: Error[] = [];
    db = await openDatabase({
      dataDir: dir,
      snapshotIntervalMs: 0,
      onFatal: (e) => fatal.push(e),
      syncFn: async (fh) => {
        if (fail) throw Object.assign(new Error('EIO: injected'), { code: 'EIO' });
        await fh.datasync();
      },
    });
    await db.createCollection({ name: 'e', dim: DIM, index: { type: 'flat' } });
    await db.upsert('e', points(5));
    fail = true;
    expect(await codeOf(db.upsert('e', points(5, 100)))).toBe('UNAVAILABLE');
    expect(fatal.length).toBe(1);
    expect(await db.count('e')).toBe(5);
    expect(await db.get('e', ['p100'])).toEqual([]);
    // Every later write is refused too: the log never retries.
    fail = false;
    expect(await codeOf(db.upsert('e', points(1, 200)))).toBe('UNAVAILABLE');
  });

  it('concurrent upserts share fsyncs (group commit) and every acknowledged one is visible', async () => {
    await db.close({ snapshot: false });
    let syncs = 0;
    db = await openDatabase({
      dataDir: dir,
      snapshotIntervalMs: 0,
      syncFn: async (fh) => {
        syncs++;
        await fh.datasync();
      },
    });
    await db.createCollection({ name: 'g', dim: DIM, index: { type: 'flat' }, shards: 1 });
    const before = syncs;
    const acks = await Promise.all(Array.from({ length: 50 }, (_, i) => db.upsert('g', points(4, i * 4))));
    expect(syncs - before).toBe(1); // 50 writes of one turn: one group, one fsync
    expect(new Set(acks.map((a) => a.token['0'].lsn)).size).toBe(50);
    expect(await db.count('g')).toBe(200);
    const got = await db.get('g', ['p0', 'p199'], { withVectors: true });
    expect(Array.from(got[1].vector!)).toEqual(Array.from(vec(199)));
  });

  it('an idempotency key makes a retried upsert and delete apply once', async () => {
    await db.createCollection({ name: 'i', dim: DIM, index: { type: 'flat' }, shards: 3 });
    const a = await db.upsert('i', points(30), { idempotencyKey: 'req-1' });
    const lsns = db.status().shards.map((s) => s.lastLsn);
    const b = await db.upsert('i', points(30), { idempotencyKey: 'req-1' });
    expect(b).toEqual(a);
    expect(db.status().shards.map((s) => s.lastLsn)).toEqual(lsns);
    const d1 = await db.delete('i', ['p1', 'p2'], { idempotencyKey: 'req-2' });
    await db.upsert('i', points(3)); // p1, p2 come back
    const d2 = await db.delete('i', ['p1', 'p2'], { idempotencyKey: 'req-2' });
    expect(d2).toEqual(d1);
    expect(await db.count('i')).toBe(30);
  });

  it('an IVF-PQ collection searches exactly before training and trains at the documented count', async () => {
    // Parameters the index refuses are refused at creation, not at training time.
    expect(await codeOf(db.createCollection({ name: 'big', dim: 64, index: { type: 'ivfpq', nlist: 65536, m: 32 } }))).toBe('INVALID_ARGUMENT');
    expect(db.listCollections()).toEqual([]);
    await db.createCollection({ name: 'q', dim: DIM, index: { type: 'ivfpq', nlist: 4, m: 4 }, shards: 1 });
    const threshold = ivfTrainThreshold(4);
    await db.upsert('q', points(threshold - 1));
    expect(db.shard('q', 0).indexKind).toBe('flat');
    const [[exact]] = await db.search('q', { vectors: vec(17), k: 1 });
    expect(exact).toMatchObject({ id: 'p17', distance: 0 });
    await db.upsert('q', points(1, threshold - 1));
    expect(db.shard('q', 0).indexKind).toBe('ivfpq');
    const [hits] = await db.search('q', { vectors: vec(17), k: 5, nprobe: 4 });
    expect(hits.map((h) => h.id)).toContain('p17');
    const digest = await db.digest('q', 0);
    await db.close();
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    expect(db.shard('q', 0).indexKind).toBe('ivfpq');
    expect(await db.digest('q', 0)).toBe(digest);
  });

  it('an HNSW collection (the default index) finds its points and survives a reopen', async () => {
    await db.createCollection({ name: 'h', dim: DIM, shards: 2 });
    await db.upsert('h', points(300));
    await db.delete('h', ['p10']);
    const [[top]] = await db.search('h', { vectors: vec(42), k: 1, ef: 64 });
    expect(top).toMatchObject({ id: 'p42', distance: 0 });
    const [hits] = await db.search('h', { vectors: vec(10), k: 10, ef: 64 });
    expect(hits.map((h) => h.id)).not.toContain('p10');
    const digests = [await db.digest('h', 0), await db.digest('h', 1)];
    await db.close();
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    expect([await db.digest('h', 0), await db.digest('h', 1)]).toEqual(digests);
    const [[again]] = await db.search('h', { vectors: vec(42), k: 1 });
    expect(again.id).toBe('p42');
  });
});

describe('upsertColumns (the batch form the gRPC front end uses)', () => {
  const columns = (pts: PointInput[]) => {
    const vectors = new Float32Array(pts.length * DIM);
    pts.forEach((p, i) => vectors.set(p.vector, i * DIM));
    return { ids: pts.map((p) => p.id), vectors, payloads: pts.map((p) => p.payload) };
  };

  it('stores the same state as upsert, split across shards', async () => {
    await db.createCollection({ name: 'a', dim: DIM, index: { type: 'flat' }, shards: 3 });
    await db.createCollection({ name: 'b', dim: DIM, index: { type: 'flat' }, shards: 3 });
    const pts = points(40);
    const r = await db.upsertColumns('a', columns(pts));
    await db.upsert('b', pts);
    expect(r.upserted).toBe(40);
    expect(Object.keys(r.token).length).toBe(3);
    for (let s = 0; s < 3; s++) expect(await db.digest('a', s)).toBe(await db.digest('b', s));
    const got = await db.get('a', ['p7'], { withVectors: true, withPayload: true });
    expect(Array.from(got[0].vector!)).toEqual(Array.from(vec(7)));
    expect(got[0].payload).toEqual(pts[7].payload);
  });

  it('one shard keeps the array given (no copy) and applies it whole', async () => {
    await db.createCollection({ name: 'one', dim: DIM, index: { type: 'flat' }, shards: 1 });
    const pts = points(10);
    const cols = columns(pts);
    await db.upsertColumns('one', cols);
    expect(await db.count('one')).toBe(10);
    const hits = await db.search('one', { vectors: vec(3), k: 1 });
    expect(hits[0][0].id).toBe('p3');
  });

  it('bad batches are INVALID_ARGUMENT and change nothing', async () => {
    await db.createCollection({ name: 'c', dim: DIM, index: { type: 'flat' }, shards: 2 });
    await db.upsert('c', points(5));
    const digests = [await db.digest('c', 0), await db.digest('c', 1)];
    const good = columns(points(3, 100));
    const nan = columns(points(3, 100));
    nan.vectors[DIM + 2] = NaN;
    const inf = columns(points(3, 100));
    inf.vectors[3 * DIM - 1] = -Infinity;
    const cases: unknown[] = [
      nan,
      inf,
      { ...good, vectors: good.vectors.subarray(1) }, // not n x dim
      { ...good, ids: ['p100', 'p100', 'p102'] }, // duplicate id
      { ...good, ids: ['p100', '', 'p102'] }, // empty id
      { ...good, ids: ['p100', 'x'.repeat(300), 'p102'] }, // id too long
      { ...good, payloads: [{}, []] }, // length mismatch
      { ...good, payloads: [{}, 'text', {}] }, // payload not an object
      { ...good, payloads: [{}, { big: 'x'.repeat(payloadBytesMax) }, {}] },
      { ...good, vectors: Array.from(good.vectors) }, // not a Float32Array
      null,
    ];
    for (const c of cases) expect(await codeOf(db.upsertColumns('c', c as never))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(db.upsertColumns('nope', good))).toBe('NOT_FOUND');
    expect([await db.digest('c', 0), await db.digest('c', 1)]).toEqual(digests);
    expect(await db.count('c')).toBe(5);
  });
});
