/**
 * Collection administration on a standalone node: aliases (create, switch, delete; every call
 * taking a collection's name takes an alias; kept across a restart; a collection with aliases is
 * not dropped), updates of a collection's settings (search defaults, write concern; not the
 * replication factor) and backups (a snapshot of every shard to a directory, restored into a new
 * collection), in the database, over HTTP and over gRPC through the SDK, with the typed refusals
 * of bad input, each of which changes nothing.
 */
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { openDatabase } from '../src/query';
import type { AliasAction, CollectionUpdate, Database } from '../src/query';
import { Harness, httpJson, startHarness, tempDir, vec } from './server-harness';
import { expectCode } from './helpers';

const DIM = 3;

async function twoCollections(db: Database): Promise<void> {
  await db.createCollection({ name: 'books_v1', dim: DIM, index: { type: 'flat' }, shards: 2 });
  await db.createCollection({ name: 'books_v2', dim: DIM, index: { type: 'flat' } });
  await db.upsert('books_v1', [{ id: 'old', vector: new Float32Array([1, 0, 0]) }]);
  await db.upsert('books_v2', [{ id: 'new', vector: new Float32Array([1, 0, 0]) }]);
}

describe('aliases in the database', () => {
  const dir = tempDir('quiver-aliases-');
  let db: Database;

  beforeAll(async () => {
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    await twoCollections(db);
  });
  afterAll(async () => {
    await db?.close();
  });

  it('an alias stands for its collection in every call, and a switch moves it at once', async () => {
    expect(await db.updateAliases([{ action: 'create', alias: 'books', collection: 'books_v1' }])).toEqual([{ alias: 'books', collection: 'books_v1' }]);
    expect(db.describeCollection('books').name).toBe('books_v1');
    expect((await db.search('books', { vectors: new Float32Array([1, 0, 0]), k: 5 }))[0].map((h) => h.id)).toEqual(['old']);
    await db.upsert('books', [{ id: 'via-alias', vector: new Float32Array([0, 1, 0]), payload: { a: 1 } }]);
    expect(await db.count('books_v1')).toBe(2);
    expect((await db.get('books', ['via-alias']))[0].payload).toEqual({ a: 1 });
    await db.updatePayload('books', { ids: ['via-alias'], set: { b: 2 } });
    expect((await db.scroll('books', { limit: 10 })).points.map((p) => p.id)).toEqual(['old', 'via-alias']);
    await db.deleteWhere('books', { field: 'b', eq: 2 });
    await db.delete('books', ['old']);
    expect(await db.count('books')).toBe(0);
    await db.upsert('books_v1', [{ id: 'old', vector: new Float32Array([1, 0, 0]) }]);

    expect(await db.updateAliases([{ action: 'switch', alias: 'books', collection: 'books_v2' }])).toEqual([{ alias: 'books', collection: 'books_v2' }]);
    expect((await db.search('books', { vectors: new Float32Array([1, 0, 0]), k: 5 }))[0].map((h) => h.id)).toEqual(['new']);
    expect(db.listAliases()).toEqual([{ alias: 'books', collection: 'books_v2' }]);
  });

  it('bad actions are refused with a typed error and change nothing, all or none', async () => {
    const before = db.listAliases();
    const refused: [unknown, string][] = [
      [[{ action: 'create', alias: 'x', collection: 'missing' }], 'NOT_FOUND'],
      [[{ action: 'create', alias: 'books', collection: 'books_v1' }], 'ALREADY_EXISTS'],
      [[{ action: 'create', alias: 'books_v1', collection: 'books_v2' }], 'ALREADY_EXISTS'],
      [[{ action: 'create', alias: 'x', collection: 'books' }], 'NOT_FOUND'], // an alias points to a collection, not to an alias
      [[{ action: 'switch', alias: 'missing', collection: 'books_v1' }], 'NOT_FOUND'],
      [[{ action: 'delete', alias: 'missing' }], 'NOT_FOUND'],
      [[{ action: 'delete', alias: 'books', collection: 'books_v1' }], 'INVALID_ARGUMENT'],
      [[{ action: 'rename', alias: 'books' }], 'INVALID_ARGUMENT'],
      [[{ action: 'create', alias: 'bad name', collection: 'books_v1' }], 'INVALID_ARGUMENT'],
      [[], 'INVALID_ARGUMENT'],
      ['books', 'INVALID_ARGUMENT'],
      [Array.from({ length: 101 }, (_, i) => ({ action: 'create', alias: `a${i}`, collection: 'books_v1' })), 'INVALID_ARGUMENT'],
      // The first action is good, the second is not: neither is applied.
      [
        [
          { action: 'create', alias: 'fresh', collection: 'books_v1' },
          { action: 'switch', alias: 'missing', collection: 'books_v1' },
        ],
        'NOT_FOUND',
      ],
    ];
    for (const [actions, code] of refused) await expectCode(db.updateAliases(actions as AliasAction[]), code);
    expect(db.listAliases()).toEqual(before);
    // A NOT_FOUND names what was not found (a cluster node looks it up in etcd before answering it).
    await expect(db.updateAliases([{ action: 'create', alias: 'x', collection: 'missing' }])).rejects.toMatchObject({ details: { collection: 'missing' } });
    await expect(db.updateAliases([{ action: 'delete', alias: 'gone' }])).rejects.toMatchObject({ details: { collection: 'gone' } });
    await expectCode(db.createCollection({ name: 'books', dim: DIM }), 'ALREADY_EXISTS');
    await expectCode(async () => db.describeCollection('fresh'), 'NOT_FOUND');
  });

  it('actions apply in order: delete and create the same alias in one call', async () => {
    const after = await db.updateAliases([
      { action: 'delete', alias: 'books' },
      { action: 'create', alias: 'books', collection: 'books_v1' },
      { action: 'create', alias: 'latest', collection: 'books_v2' },
    ]);
    expect(after).toEqual([
      { alias: 'books', collection: 'books_v1' },
      { alias: 'latest', collection: 'books_v2' },
    ]);
  });

  it('a collection with aliases is not dropped (FAILED_PRECONDITION), one without is', async () => {
    await expectCode(db.dropCollection('books_v2'), 'FAILED_PRECONDITION');
    await expectCode(db.dropCollection('latest'), 'FAILED_PRECONDITION');
    expect(await db.count('books_v2')).toBe(1);
    await db.updateAliases([{ action: 'delete', alias: 'latest' }]);
    await db.dropCollection('books_v2');
    expect(db.listCollections().map((c) => c.name)).toEqual(['books_v1']);
  });

  it('aliases are kept across a restart', async () => {
    await db.close();
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    expect(db.listAliases()).toEqual([{ alias: 'books', collection: 'books_v1' }]);
    expect(await db.count('books')).toBe(1);
  });
});

describe('updating a collection', () => {
  const dir = tempDir('quiver-update-');
  let db: Database;
  const N = 400;
  const D = 16;
  const query = vec(N + 1, D);

  beforeAll(async () => {
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    await db.createCollection({ name: 'h', dim: D, index: { type: 'hnsw', m: 4, efConstruction: 8 } });
    await db.createCollection({ name: 'ivf', dim: D, index: { type: 'ivfpq', nlist: 16, m: 4 } });
    await db.createCollection({ name: 'f', dim: D, index: { type: 'flat' } });
    const points = Array.from({ length: N }, (_, i) => ({ id: `p${i}`, vector: vec(i, D) }));
    for (const c of ['h', 'ivf', 'f']) await db.upsert(c, points);
  });
  afterAll(async () => {
    await db?.close();
  });

  it('a new default ef or nprobe is what a search without one uses; kept across a restart', async () => {
    const ids = async (c: string, more: { ef?: number; nprobe?: number } = {}): Promise<string[]> => (await db.search(c, { vectors: query, k: 10, ...more }))[0].map((h) => h.id);
    const exact = await ids('f');
    expect((await db.updateCollection('h', { efSearch: 400 })).index).toEqual({ type: 'hnsw', m: 4, efConstruction: 8, efSearch: 400 });
    expect(await ids('h')).toEqual(await ids('h', { ef: 400 }));
    expect(await ids('h')).toEqual(exact);
    expect((await db.updateCollection('ivf', { nprobe: 16 })).index).toEqual({ type: 'ivfpq', nlist: 16, m: 4, nprobe: 16 });
    expect(await ids('ivf')).toEqual(await ids('ivf', { nprobe: 16 }));
    expect((await db.updateCollection('f', { writeConcern: 'all', replicationFactor: 1 })).writeConcern).toBe('all');

    await db.close();
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    expect(db.describeCollection('h').index).toEqual({ type: 'hnsw', m: 4, efConstruction: 8, efSearch: 400 });
    expect(db.describeCollection('ivf').index).toEqual({ type: 'ivfpq', nlist: 16, m: 4, nprobe: 16 });
    expect(db.describeCollection('f').writeConcern).toBe('all');
    expect(await ids('h')).toEqual(await ids('h', { ef: 400 }));
  });

  it('what is unsafe or malformed is refused with a typed error and changes nothing', async () => {
    const before = db.listCollections();
    const refused: [string, unknown, string][] = [
      ['h', { replicationFactor: 3 }, 'FAILED_PRECONDITION'],
      ['h', { nprobe: 4 }, 'INVALID_ARGUMENT'],
      ['ivf', { efSearch: 4 }, 'INVALID_ARGUMENT'],
      ['ivf', { nprobe: 17 }, 'INVALID_ARGUMENT'],
      ['h', { efSearch: 0 }, 'INVALID_ARGUMENT'],
      ['h', { efSearch: 1.5 }, 'INVALID_ARGUMENT'],
      ['h', { writeConcern: 'some' }, 'INVALID_ARGUMENT'],
      ['h', { m: 8 }, 'INVALID_ARGUMENT'],
      ['h', {}, 'INVALID_ARGUMENT'],
      ['h', null, 'INVALID_ARGUMENT'],
      ['missing', { efSearch: 10 }, 'NOT_FOUND'],
      ['h', { efSearch: 10, replicationFactor: 2 }, 'FAILED_PRECONDITION'],
    ];
    for (const [name, update, code] of refused) await expectCode(db.updateCollection(name, update as CollectionUpdate), code);
    expect(db.listCollections()).toEqual(before);
  });

  it('by an alias', async () => {
    await db.updateAliases([{ action: 'create', alias: 'current', collection: 'h' }]);
    expect((await db.updateCollection('current', { efSearch: 50 })).name).toBe('h');
    expect(db.describeCollection('h').index).toMatchObject({ efSearch: 50 });
  });
});

describe('collection backups', () => {
  const dir = tempDir('quiver-backup-db-');
  const out = tempDir('quiver-backups-');
  let db: Database;
  const D = 8;
  const points = (from: number, n: number): { id: string; vector: Float32Array; payload: { n: number } }[] =>
    Array.from({ length: n }, (_, i) => ({ id: `p${from + i}`, vector: vec(from + i, D), payload: { n: from + i } }));
  const all = (c: string): Promise<unknown> => db.scroll(c, { limit: 1000, withVectors: true, withPayload: true });

  beforeAll(async () => {
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    await db.createCollection({ name: 'src', dim: D, index: { type: 'hnsw', efSearch: 40 }, shards: 3 });
    await db.createPayloadIndex('src', { field: 'n', type: 'integer' });
    await db.upsert('src', points(0, 200));
    await db.delete('src', ['p7']);
  });
  afterAll(async () => {
    await db?.close();
  });

  it('a backup restored into a new collection holds the points of the moment it was taken, and the spec', async () => {
    const want = await all('src');
    const b = await db.snapshotCollection('src', path.join(out, 'b1'));
    expect(b.collection).toBe('src');
    expect(b.shards.map((s) => s.shard)).toEqual([0, 1, 2]);
    expect(b.shards.every((s) => s.lsn > 0)).toBe(true);
    await db.upsert('src', points(200, 10)); // after the backup: not in it
    const info = await db.restoreCollection('copy', path.join(out, 'b1'));
    expect([info.name, info.shards, info.index, info.payloadIndexes, info.count]).toEqual(['copy', 3, { type: 'hnsw', efSearch: 40 }, [{ field: 'n', type: 'integer' }], 199]);
    expect(await all('copy')).toEqual(want);
    expect((await db.search('copy', { vectors: vec(3, D), k: 3, filter: { field: 'n', range: { lt: 5 } } }))[0][0].id).toBe('p3');
    // The copy takes writes of its own and is kept across a restart.
    await db.upsert('copy', points(500, 1));
    await db.close();
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    expect(await db.count('copy')).toBe(200);
    expect(await db.count('src')).toBe(209);
  });

  it('shards without points are restored empty', async () => {
    await db.createCollection({ name: 'sparse', dim: D, index: { type: 'flat' }, shards: 4 });
    await db.upsert('sparse', points(0, 1));
    const b = await db.snapshotCollection('sparse', path.join(out, 'sparse'));
    expect(b.shards).toHaveLength(4);
    expect((await db.restoreCollection('sparse2', path.join(out, 'sparse'))).count).toBe(1);
  });

  it('bad paths, names and damaged backups are refused with a typed error and change nothing', async () => {
    const before = db.listCollections().map((c) => c.name);
    await expectCode(db.snapshotCollection('src', path.join(out, 'b1')), 'ALREADY_EXISTS');
    await expectCode(db.snapshotCollection('src', 'relative/dir'), 'INVALID_ARGUMENT');
    await expectCode(db.snapshotCollection('src', path.join(dir, 'inside')), 'INVALID_ARGUMENT');
    await expectCode(db.snapshotCollection('missing', path.join(out, 'b2')), 'NOT_FOUND');
    await expectCode(db.restoreCollection('copy', path.join(out, 'b1')), 'ALREADY_EXISTS');
    await expectCode(db.restoreCollection('bad name', path.join(out, 'b1')), 'INVALID_ARGUMENT');
    await expectCode(db.restoreCollection('other', out), 'NOT_FOUND');
    // A snapshot file cut short: the shard cannot be read back, and no collection is made.
    fs.cpSync(path.join(out, 'b1'), path.join(out, 'damaged'), { recursive: true });
    const shardDir = path.join(out, 'damaged', '1');
    const state = path.join(shardDir, fs.readdirSync(shardDir)[0], 'state.bin');
    fs.truncateSync(state, fs.statSync(state).size - 8);
    await expectCode(db.restoreCollection('other', path.join(out, 'damaged')), 'DATA_LOSS');
    expect(db.listCollections().map((c) => c.name)).toEqual(before);
    expect(fs.existsSync(path.join(out, 'b2'))).toBe(false);
    expect(fs.readdirSync(path.join(dir, 'snapshots')).sort()).toEqual([...before].sort());
  });
});

describe('aliases over HTTP and gRPC (the SDK)', () => {
  let h: Harness;
  let client: QuiverClient;

  beforeAll(async () => {
    h = await startHarness();
    await twoCollections(h.db);
    client = await QuiverClient.connect(h.server.grpcAddress);
  });
  afterAll(async () => {
    client?.close();
    await h?.stop();
  });

  it('HTTP: POST and GET /v1/aliases, then the alias in a collection path', async () => {
    const made = await httpJson(h.httpBase, 'POST', '/v1/aliases', { actions: [{ action: 'create', alias: 'books', collection: 'books_v1' }] });
    expect(made).toEqual({ status: 200, body: { aliases: [{ alias: 'books', collection: 'books_v1' }] } });
    expect((await httpJson(h.httpBase, 'GET', '/v1/aliases')).body).toEqual({ aliases: [{ alias: 'books', collection: 'books_v1' }] });
    const hits = await httpJson(h.httpBase, 'POST', '/v1/collections/books/search', { vector: [1, 0, 0], k: 3 });
    expect(hits.body.results.map((r: { id: string }) => r.id)).toEqual(['old']);
    await httpJson(h.httpBase, 'POST', '/v1/aliases', { actions: [{ action: 'switch', alias: 'books', collection: 'books_v2' }] });
    expect((await httpJson(h.httpBase, 'GET', '/v1/collections/books')).body.name).toBe('books_v2');

    const bad = await httpJson(h.httpBase, 'POST', '/v1/aliases', { actions: [{ action: 'create', alias: 'books', collection: 'books_v1' }] });
    expect([bad.status, bad.body.error.code]).toEqual([409, 'ALREADY_EXISTS']);
    const missing = await httpJson(h.httpBase, 'POST', '/v1/aliases', { actions: [{ action: 'switch', alias: 'books', collection: 'nope' }] });
    expect([missing.status, missing.body.error.code]).toEqual([404, 'NOT_FOUND']);
    const unknown = await httpJson(h.httpBase, 'POST', '/v1/aliases', { actions: [], extra: 1 });
    expect([unknown.status, unknown.body.error.code]).toEqual([400, 'INVALID_ARGUMENT']);
    const drop = await httpJson(h.httpBase, 'DELETE', '/v1/collections/books_v2');
    expect([drop.status, drop.body.error.code]).toEqual([400, 'FAILED_PRECONDITION']);
    expect(h.db.listAliases()).toEqual([{ alias: 'books', collection: 'books_v2' }]);
  });

  it('gRPC (SDK): listAliases, updateAliases; writes and reads through an alias follow a switch', async () => {
    expect(await client.updateAliases([{ action: 'switch', alias: 'books', collection: 'books_v1' }])).toEqual([{ alias: 'books', collection: 'books_v1' }]);
    expect(await client.listAliases()).toEqual([{ alias: 'books', collection: 'books_v1' }]);
    await client.upsert('books', [{ id: 'sdk', vector: vec(1, DIM) }]);
    expect((await client.describeCollection('books')).name).toBe('books_v1');
    expect(await client.count('books')).toBe(2);
    // The session token of books_v1 is not sent to books_v2 after the switch.
    await client.updateAliases([{ action: 'switch', alias: 'books', collection: 'books_v2' }]);
    expect((await client.search('books', new Float32Array([1, 0, 0]), { k: 3 })).map((x) => x.id)).toEqual(['new']);
    expect(await client.count('books')).toBe(1);

    await expectCode(client.updateAliases([{ action: 'create', alias: 'books_v1', collection: 'books_v2' }]), 'ALREADY_EXISTS');
    await expectCode(client.updateAliases([{ action: 'create', alias: 'x', collection: 'nope' }]), 'NOT_FOUND');
    await expectCode(client.updateAliases([{ action: 'delete', alias: 'nope' }]), 'NOT_FOUND');
    await expectCode(client.updateAliases([{ action: 'drop' as 'delete', alias: 'books' }]), 'INVALID_ARGUMENT');
    await expectCode(client.updateAliases([]), 'INVALID_ARGUMENT');
    await expectCode(client.createCollection({ name: 'books', dim: DIM }), 'ALREADY_EXISTS');
    await expectCode(client.describeCollection('nope'), 'NOT_FOUND');
    expect(await client.updateAliases([{ action: 'delete', alias: 'books' }])).toEqual([]);
    await expectCode(client.count('books'), 'NOT_FOUND');
  });

  it('updating a collection over HTTP (PATCH) and gRPC (SDK)', async () => {
    const patched = await httpJson(h.httpBase, 'PATCH', '/v1/collections/books_v1', { writeConcern: 'leader' });
    expect([patched.status, patched.body.writeConcern]).toEqual([200, 'leader']);
    const bad = await httpJson(h.httpBase, 'PATCH', '/v1/collections/books_v1', { replicationFactor: 2 });
    expect([bad.status, bad.body.error.code]).toEqual([400, 'FAILED_PRECONDITION']);
    const unknown = await httpJson(h.httpBase, 'PATCH', '/v1/collections/books_v1', { dim: 4 });
    expect([unknown.status, unknown.body.error.code]).toEqual([400, 'INVALID_ARGUMENT']);

    expect((await client.updateCollection('books_v2', { writeConcern: 'all' })).writeConcern).toBe('all');
    await expectCode(client.updateCollection('books_v2', { efSearch: 10 }), 'INVALID_ARGUMENT'); // a flat index has no ef
    await expectCode(client.updateCollection('books_v2', { replicationFactor: 3 }), 'FAILED_PRECONDITION');
    await expectCode(client.updateCollection('books_v2', {}), 'INVALID_ARGUMENT');
    await expectCode(client.updateCollection('nope', { writeConcern: 'all' }), 'NOT_FOUND');
    expect(h.db.describeCollection('books_v2').writeConcern).toBe('all');
    expect(h.db.describeCollection('books_v1').writeConcern).toBe('leader');
  });

  it('backups over HTTP and gRPC (SDK)', async () => {
    const out = tempDir('quiver-backups-');
    const made = await httpJson(h.httpBase, 'POST', '/v1/collections/books_v1/snapshot', { path: path.join(out, 'h') });
    expect([made.status, made.body.collection, made.body.shards.length]).toEqual([200, 'books_v1', 2]);
    const restored = await httpJson(h.httpBase, 'POST', '/v1/collections/books_h/restore', { path: path.join(out, 'h') });
    expect([restored.status, restored.body.name, restored.body.count]).toEqual([200, 'books_h', 2]);
    const again = await httpJson(h.httpBase, 'POST', '/v1/collections/books_v1/snapshot', { path: path.join(out, 'h') });
    expect([again.status, again.body.error.code]).toEqual([409, 'ALREADY_EXISTS']);
    const noPath = await httpJson(h.httpBase, 'POST', '/v1/collections/books_v1/snapshot', {});
    expect([noPath.status, noPath.body.error.code]).toEqual([400, 'INVALID_ARGUMENT']);

    const b = await client.snapshotCollection('books_v2', path.join(out, 'g'));
    expect(b).toEqual({ collection: 'books_v2', path: path.join(out, 'g'), shards: [{ shard: 0, lsn: expect.any(Number) }] });
    expect((await client.restoreCollection('books_g', path.join(out, 'g'))).count).toBe(await client.count('books_v2'));
    await expectCode(client.restoreCollection('books_g', path.join(out, 'g')), 'ALREADY_EXISTS');
    await expectCode(client.restoreCollection('books_x', path.join(out, 'none')), 'NOT_FOUND');
    await expectCode(client.snapshotCollection('books_v2', 'not/absolute'), 'INVALID_ARGUMENT');
  });
});
