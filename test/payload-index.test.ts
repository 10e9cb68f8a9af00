/**
 * Payload indexes: the same answers as without them for random filters (while points are upserted,
 * changed and deleted), the plan each filter got, kept across restart and snapshot, and the calls
 * over HTTP and gRPC with their refusals.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { openDatabase } from '../src/query';
import type { Database, Filter, FilterPlan, PayloadIndexSpec, PointInput } from '../src/query';
import { Harness, httpJson, startHarness, tempDir, vec } from './server-harness';
import { expectCode, rng } from './helpers';

const DIM = 4;
const N = 600;
const KW = ['red', 'green', 'blue', 'black', 'white'];
const INDEXES: PayloadIndexSpec[] = [
  { field: 'kw', type: 'keyword' },
  { field: 'n', type: 'integer' },
  { field: 'f', type: 'float' },
  { field: 'b', type: 'bool' },
  { field: 'at', type: 'datetime' },
  { field: 'tags', type: 'keyword' },
  { field: 'meta.brand', type: 'keyword' },
];

function payloadOf(r: () => number): Record<string, unknown> {
  const p: Record<string, unknown> = {};
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
  if (r() < 0.9) p.kw = pick(KW);
  if (r() < 0.9) p.n = Math.floor(r() * 100);
  if (r() < 0.8) p.f = r() * 10;
  if (r() < 0.8) p.b = r() < 0.5;
  if (r() < 0.8) p.at = new Date(Date.UTC(2024, 0, 1) + Math.floor(r() * 365) * 86_400_000).toISOString().slice(0, r() < 0.5 ? 10 : 24);
  if (r() < 0.7) p.tags = Array.from({ length: Math.floor(r() * 3) }, () => pick(KW));
  if (r() < 0.7) p.meta = { brand: pick(['acme', 'zeta', 'omni']) };
  if (r() < 0.05) p.kw = 7; // a value of another type than the index's
  return p;
}

function randomFilter(r: () => number, depth = 0): Filter {
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
  const x = r();
  if (depth < 2 && x < 0.25) return { and: [randomFilter(r, depth + 1), randomFilter(r, depth + 1)] };
  if (depth < 2 && x < 0.35) return { or: [randomFilter(r, depth + 1), randomFilter(r, depth + 1)] };
  if (depth < 2 && x < 0.4) return { not: randomFilter(r, depth + 1) };
  const lo = Math.floor(r() * 100);
  return pick<Filter>([
    { field: 'kw', eq: pick(KW) },
    { field: 'kw', in: [pick(KW), pick(KW)] },
    { field: 'n', eq: lo },
    { field: 'n', range: { gte: lo, lt: lo + Math.floor(r() * 30) } },
    { field: 'n', in: [lo, lo + 1, 7] },
    { field: 'f', range: { gt: r() * 10 } },
    { field: 'b', eq: r() < 0.5 },
    { field: 'at', range: { gte: '2024-03-01', lt: '2024-06-01T12:00:00Z' } },
    { field: 'at', range: { lte: new Date(Date.UTC(2024, 0, 1) + lo * 3 * 86_400_000).toISOString() } },
    { field: 'tags', eq: pick(KW) },
    { field: 'meta.brand', in: ['acme', 'omni'] },
    { field: 'kw', contains: 'e' },
    { field: 'tags', isEmpty: true },
  ]);
}

async function ids(db: Database, name: string, filter: Filter): Promise<string[]> {
  const [hits] = await db.search(name, { vectors: vec(1, DIM), k: N + 100, filter });
  return hits.map((h) => h.id).sort();
}

describe('payload indexes in the database', () => {
  const plans: FilterPlan[] = [];
  const dir = tempDir('quiver-pindex-');
  const open = (): Promise<Database> => openDatabase({ dataDir: dir, snapshotIntervalMs: 0, observer: { filterPlan: (_c, _s, plan) => plans.push(plan) } });
  let db: Database;
  const r = rng(7);
  const filters = Array.from({ length: 150 }, () => randomFilter(r));
  const want = new Map<string, string[]>();

  beforeAll(async () => {
    db = await open();
    for (const name of ['plain', 'indexed']) await db.createCollection({ name, dim: DIM, index: { type: 'hnsw' }, shards: 2 });
    const pr = rng(3);
    const pts: PointInput[] = Array.from({ length: N }, (_, i) => ({ id: `p${i}`, vector: vec(i, DIM), payload: payloadOf(pr) }));
    for (const name of ['plain', 'indexed']) await db.upsert(name, pts);
    for (const ix of INDEXES) await db.createPayloadIndex('indexed', ix);
  });

  afterAll(async () => {
    await db?.close();
  });

  async function sameAnswers(): Promise<Record<FilterPlan, number>> {
    plans.length = 0;
    for (const f of filters) {
      const a = await ids(db, 'plain', f);
      want.set(JSON.stringify(f), a);
      expect(await ids(db, 'indexed', f), JSON.stringify(f)).toEqual(a);
    }
    const by: Record<FilterPlan, number> = { index: 0, index_checked: 0, scan: 0 };
    for (const p of plans) by[p]++;
    return by;
  }

  it('answers every random filter as a scan does, from the indexes where they can', async () => {
    expect(db.describeCollection('indexed').payloadIndexes).toEqual(INDEXES);
    expect(db.describeCollection('plain').payloadIndexes).toEqual([]);
    const by = await sameAnswers();
    // Both collections scan for filters no index answers; 'plain' scans every time.
    expect(by.index, JSON.stringify(by)).toBeGreaterThan(100);
    expect(by.index_checked, JSON.stringify(by)).toBeGreaterThan(10);
  });

  it('follows upserts, payload changes and deletes', async () => {
    const pr = rng(11);
    const changed: PointInput[] = Array.from({ length: 200 }, (_, i) => ({ id: `p${i * 3}`, vector: vec(i, DIM), payload: r() < 0.2 ? undefined : payloadOf(pr) }));
    const added: PointInput[] = Array.from({ length: 50 }, (_, i) => ({ id: `q${i}`, vector: vec(i + 1000, DIM), payload: payloadOf(pr) }));
    const gone = Array.from({ length: 100 }, (_, i) => `p${i * 5 + 1}`);
    // Points written after the deletes take the freed labels.
    const reusing: PointInput[] = Array.from({ length: 100 }, (_, i) => ({ id: `r${i}`, vector: vec(i + 2000, DIM), payload: { other: i } }));
    for (const name of ['plain', 'indexed']) {
      await db.upsert(name, [...changed, ...added]);
      await db.delete(name, gone);
      await db.upsert(name, reusing);
    }
    await sameAnswers();
  });

  it('follows payload updates (set, overwrite, deleteKeys) and deletes by filter', async () => {
    const overwrite = payloadOf(rng(13));
    for (const name of ['plain', 'indexed']) {
      await db.updatePayload(name, { ids: Array.from({ length: 150 }, (_, i) => `p${i * 4}`), set: { kw: 'zz', n: 42 } });
      await db.updatePayload(name, { ids: Array.from({ length: 100 }, (_, i) => `p${i * 4 + 2}`), overwrite });
      await db.updatePayload(name, { filter: { field: 'kw', eq: KW[0] }, deleteKeys: ['kw', 'tags'] });
      await db.deleteWhere(name, { field: 'n', range: { gte: 90 } });
    }
    // Filters on the values the updates wrote.
    for (const f of [{ field: 'kw', eq: 'zz' }, { field: 'n', eq: 42 }, { field: 'kw', eq: KW[0] }, { field: 'n', range: { gte: 90 } }] as Filter[]) filters.push(f);
    await sameAnswers();
    // 150 ids set, less those an earlier test deleted (an update skips them).
    expect((await ids(db, 'indexed', { field: 'kw', eq: 'zz' })).length).toBeGreaterThan(100);
    expect(await db.count('indexed', { filter: { field: 'n', range: { gte: 90 } } })).toBe(0);
  });

  it('a float among the integers of an integer index: that shard scans for its filters, with the same answers', async () => {
    for (const name of ['plain', 'indexed']) await db.upsert(name, [{ id: 'half', vector: vec(5, DIM), payload: { n: 41.5 } }]);
    plans.length = 0;
    const f: Filter = { field: 'n', range: { gt: 41, lt: 42 } };
    expect(await ids(db, 'indexed', f)).toEqual(['half']);
    expect(plans).toContain('scan'); // the shard holding it; the other shard's index still answers
    for (const name of ['plain', 'indexed']) await db.delete(name, ['half']);
    plans.length = 0;
    expect(await ids(db, 'indexed', f)).toEqual([]);
    expect(plans).toEqual(['index', 'index']);
  });

  it('keeps the indexes across a restart (WAL replay) and from a snapshot', async () => {
    await db.close();
    db = await open();
    expect(db.describeCollection('indexed').payloadIndexes).toEqual(INDEXES);
    const before = await sameAnswers();
    expect(before.index).toBeGreaterThan(100);
    await db.snapshot();
    await db.close();
    db = await open();
    expect(db.describeCollection('indexed').payloadIndexes).toEqual(INDEXES);
    const after = await sameAnswers();
    expect(after).toEqual(before);
  });

  it('replaces an index of the same field with a new type, drops one, refuses bad calls', async () => {
    let info = await db.createPayloadIndex('indexed', { field: 'kw', type: 'integer' });
    expect(info.payloadIndexes.find((p) => p.field === 'kw')).toEqual({ field: 'kw', type: 'integer' });
    expect(info.payloadIndexes.length).toBe(INDEXES.length);
    info = await db.dropPayloadIndex('indexed', 'kw');
    expect(info.payloadIndexes.map((p) => p.field)).not.toContain('kw');
    await sameAnswers();
    await expectCode(db.dropPayloadIndex('indexed', 'kw'), 'NOT_FOUND');
    await expectCode(db.createPayloadIndex('nope', { field: 'kw', type: 'keyword' }), 'NOT_FOUND');
    await expectCode(db.createPayloadIndex('indexed', { field: 'kw', type: 'text' } as never), 'INVALID_ARGUMENT');
    await expectCode(db.createPayloadIndex('indexed', { field: '', type: 'keyword' }), 'INVALID_ARGUMENT');
    await expectCode(db.createPayloadIndex('indexed', { field: 'kw', type: 'keyword', extra: 1 } as never), 'INVALID_ARGUMENT');
    for (let i = db.describeCollection('indexed').payloadIndexes.length; i < 32; i++) await db.createPayloadIndex('indexed', { field: `x${i}`, type: 'keyword' });
    await expectCode(db.createPayloadIndex('indexed', { field: 'one-too-many', type: 'keyword' }), 'RESOURCE_EXHAUSTED');
  });
});

describe('payload indexes over HTTP and gRPC', () => {
  let h: Harness;
  let client: QuiverClient;

  beforeAll(async () => {
    h = await startHarness();
    client = await QuiverClient.connect(h.server.grpcAddress, { retries: 0 });
    await client.createCollection({ name: 'w', dim: DIM, index: { type: 'flat' } });
    await client.upsert('w', Array.from({ length: 20 }, (_, i) => ({ id: `p${i}`, vector: vec(i, DIM), payload: { kw: KW[i % 5], meta: { n: i } } })));
  });

  afterAll(async () => {
    client?.close();
    await h?.stop();
  });

  it('PUT /v1/collections/{name}/index and DELETE .../index/{field}', async () => {
    const put = await httpJson(h.httpBase, 'PUT', '/v1/collections/w/index', { field: 'meta.n', type: 'integer' });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    expect(put.body.payloadIndexes).toEqual([{ field: 'meta.n', type: 'integer' }]);
    const got = await httpJson(h.httpBase, 'GET', '/v1/collections/w');
    expect(got.body.payloadIndexes).toEqual([{ field: 'meta.n', type: 'integer' }]);
    const s = await httpJson(h.httpBase, 'POST', '/v1/collections/w/search', { vector: Array.from(vec(0, DIM)), k: 20, filter: { field: 'meta.n', range: { gte: 15 } } });
    expect(s.body.results.map((x: { id: string }) => x.id).sort()).toEqual(['p15', 'p16', 'p17', 'p18', 'p19']);
    for (const [body, code, status] of [
      [{ field: 'kw', type: 'text' }, 'INVALID_ARGUMENT', 400],
      [{ field: 'kw' }, 'INVALID_ARGUMENT', 400],
      [{ type: 'keyword' }, 'INVALID_ARGUMENT', 400],
      [[1], 'INVALID_ARGUMENT', 400],
    ] as const) {
      const a = await httpJson(h.httpBase, 'PUT', '/v1/collections/w/index', body);
      expect(a.status).toBe(status);
      expect(a.body.error.code).toBe(code);
    }
    expect((await httpJson(h.httpBase, 'PUT', '/v1/collections/nope/index', { field: 'kw', type: 'keyword' })).body.error.code).toBe('NOT_FOUND');
    const del = await httpJson(h.httpBase, 'DELETE', '/v1/collections/w/index/meta.n');
    expect(del.status).toBe(200);
    expect(del.body.payloadIndexes).toEqual([]);
    const again = await httpJson(h.httpBase, 'DELETE', '/v1/collections/w/index/meta.n');
    expect(again.status).toBe(404);
    expect(again.body.error.code).toBe('NOT_FOUND');
  });

  it('CreatePayloadIndex and DropPayloadIndex through the SDK', async () => {
    const info = await client.createPayloadIndex('w', { field: 'kw', type: 'keyword' });
    expect(info.payloadIndexes).toEqual([{ field: 'kw', type: 'keyword' }]);
    expect((await client.describeCollection('w')).payloadIndexes).toEqual([{ field: 'kw', type: 'keyword' }]);
    const hits = await client.search('w', vec(0, DIM), { k: 20, filter: { field: 'kw', in: ['red', 'blue'] } });
    expect(hits.map((x) => x.id).sort()).toEqual(['p0', 'p10', 'p12', 'p15', 'p17', 'p2', 'p5', 'p7']);
    await expectCode(client.createPayloadIndex('w', { field: 'kw', type: 'text' as never }), 'INVALID_ARGUMENT');
    await expectCode(client.createPayloadIndex('nope', { field: 'kw', type: 'keyword' }), 'NOT_FOUND');
    expect((await client.dropPayloadIndex('w', 'kw')).payloadIndexes).toEqual([]);
    await expectCode(client.dropPayloadIndex('w', 'kw'), 'NOT_FOUND');
  });
});
