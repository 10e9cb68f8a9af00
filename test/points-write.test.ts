/**
 * The point API's writing calls, standalone: delete by filter, payload updates (set, overwrite,
 * deleteKeys; by ids or by filter) and vector updates, over HTTP, gRPC and the SDK; bad input
 * refused with a typed error and nothing changed; idempotency keys; the changes back after a
 * kill -9 (WAL replay) and after a clean restart (snapshot).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { QuiverError } from '../src/errors';
import { payloadBytesMax } from '../src/common/limits';
import { PayloadOp, decodePayload, encodePayload, hashInBody } from '../src/shard/codec';
import { Harness, httpJson, rawCall, startHarness, tempDir, vec } from './server-harness';
import { startServe } from './serve-child';

const DIM = 8;

let h: Harness;
let client: QuiverClient;

/** Every shard's digest of a collection: equal before and after a refused request means nothing changed. */
async function digests(name: string): Promise<string[]> {
  return (await h.db.shards(name)).map((s) => s.replicas[0].digest);
}

/** n points p0..p{n-1}: payload {color: red for even i, blue for odd, n: i}. */
async function fill(name: string, n: number, index: 'flat' | 'hnsw' = 'hnsw'): Promise<void> {
  await client.createCollection({ name, dim: DIM, index: { type: index }, shards: 2 });
  await client.upsert(
    name,
    Array.from({ length: n }, (_, i) => ({ id: `p${i}`, vector: vec(i, DIM), payload: { color: i % 2 === 0 ? 'red' : 'blue', n: i } })),
  );
}

async function payloads(name: string, ids: string[]): Promise<Record<string, unknown>> {
  const pts = await client.get(name, ids, { withPayload: true });
  return Object.fromEntries(pts.map((p) => [p.id, p.payload]));
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof QuiverError) return e.code;
    throw e;
  }
  return 'OK';
}

beforeAll(async () => {
  h = await startHarness();
  client = await QuiverClient.connect(h.server.grpcAddress);
});

afterAll(async () => {
  client?.close();
  await h?.stop();
});

describe('the payload update entry (WAL type 7)', () => {
  it('round-trips every change, with and without a request hash; a damaged body is DATA_LOSS', () => {
    const ops: PayloadOp[] = [
      { ids: ['a', 'é'], change: { set: { x: 1, y: [true, null] } } },
      { ids: [], change: { overwrite: {} } },
      { ids: ['b'], change: { deleteKeys: ['x', 'y'] } },
    ];
    const hash = Buffer.alloc(16, 7);
    for (const op of ops) {
      for (const h of [undefined, hash]) {
        const body = Buffer.concat(encodePayload(op, h));
        expect(decodePayload(body)).toEqual(op);
        expect(hashInBody(body)).toEqual(h);
      }
    }
    const body = Buffer.concat(encodePayload(ops[0]));
    for (const bad of [body.subarray(0, 4), body.subarray(0, body.length - 1), Buffer.concat([body, Buffer.from([0])]), Buffer.from([9, 0, 0, 0, 0, 0, 0, 0, 0])]) {
      expect(() => decodePayload(bad)).toThrow(expect.objectContaining({ code: 'DATA_LOSS' }));
    }
    const badJson = Buffer.from(body);
    badJson[5] = 0x7b; // '{' where '{"x"' began: '{{"x"...' is no JSON
    badJson[6] = 0x7b;
    expect(() => decodePayload(badJson)).toThrow(expect.objectContaining({ code: 'DATA_LOSS' }));
  });
});

describe('delete by filter', () => {
  it('HTTP: deletes exactly the points the filter passes, on every shard (refused before as an unknown field)', async () => {
    await fill('df', 20);
    const r = await httpJson(h.httpBase, 'POST', '/v1/collections/df/delete', { filter: { field: 'color', eq: 'red' } });
    expect(r.status).toBe(200);
    expect(r.body.deleted).toBe(10);
    expect(Object.keys(r.body.token).sort()).toEqual(['0', '1']); // every shard's leader logged its part
    expect(await client.count('df')).toBe(10);
    const left = await client.get('df', Array.from({ length: 20 }, (_, i) => `p${i}`));
    expect(left.map((p) => p.id).sort()).toEqual(Array.from({ length: 10 }, (_, i) => `p${2 * i + 1}`).sort());
  });

  it('gRPC and the SDK: deleteWhere; ids and filter_json together are refused', async () => {
    await fill('dg', 20);
    const r = await client.deleteWhere('dg', { field: 'n', range: { lt: 5 } });
    expect(r.deleted).toBe(5);
    expect(await client.count('dg')).toBe(15);
    const both = await rawCall(h.server.grpcAddress, 'delete', { collection: 'dg', ids: ['p9'], filterJson: JSON.stringify({ field: 'n', eq: 9 }) });
    expect(both.quiverCode).toBe('INVALID_ARGUMENT');
    expect(await client.count('dg')).toBe(15);
  });

  it('bad filters and both ids and filter are INVALID_ARGUMENT and change nothing', async () => {
    await fill('dbad', 10);
    const before = await digests('dbad');
    for (const body of [{ filter: { field: 'color' } }, { filter: null }, { filter: { nope: 1 } }, { ids: ['p1'], filter: { field: 'n', eq: 1 } }]) {
      const r = await httpJson(h.httpBase, 'POST', '/v1/collections/dbad/delete', body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body.error.code).toBe('INVALID_ARGUMENT');
    }
    expect(await codeOf(client.deleteWhere('dbad', { and: [] } as never))).toBe('INVALID_ARGUMENT');
    expect(await digests('dbad')).toEqual(before);
  });
});

describe('payload updates', () => {
  it('HTTP: set merges keys, overwrite replaces, deleteKeys removes; by ids and by filter; vectors stay', async () => {
    await fill('pl', 10);
    const vectorsBefore = await client.get('pl', ['p0', 'p1', 'p2', 'p3'], { withVectors: true });
    let r = await httpJson(h.httpBase, 'POST', '/v1/collections/pl/payload', { ids: ['p0', 'p1'], set: { tag: 'x', n: 100 } });
    expect(r.status).toBe(200);
    expect(r.body.updated).toBe(2);
    expect(await payloads('pl', ['p0', 'p1'])).toEqual({ p0: { color: 'red', n: 100, tag: 'x' }, p1: { color: 'blue', n: 100, tag: 'x' } });

    r = await httpJson(h.httpBase, 'POST', '/v1/collections/pl/payload', { filter: { field: 'color', eq: 'blue' }, overwrite: { kind: 'odd' } });
    expect(r.body.updated).toBe(5);
    expect(await payloads('pl', ['p1', 'p3', 'p2'])).toEqual({ p1: { kind: 'odd' }, p3: { kind: 'odd' }, p2: { color: 'red', n: 2 } });

    r = await httpJson(h.httpBase, 'POST', '/v1/collections/pl/payload', { ids: ['p0', 'p2'], deleteKeys: ['n', 'absent'] });
    expect(r.body.updated).toBe(2);
    expect(await payloads('pl', ['p0', 'p2'])).toEqual({ p0: { color: 'red', tag: 'x' }, p2: { color: 'red' } });

    // A search by filter sees the new payloads.
    const hits = await client.search('pl', vec(0, DIM), { k: 10, filter: { field: 'kind', eq: 'odd' } });
    expect(hits.map((x) => x.id).sort()).toEqual(['p1', 'p3', 'p5', 'p7', 'p9']);
    expect(await client.get('pl', ['p0', 'p1', 'p2', 'p3'], { withVectors: true })).toEqual(vectorsBefore);
  });

  it('SDK (gRPC): each change; ids the collection lacks are skipped and not counted', async () => {
    await fill('pg', 6);
    expect((await client.updatePayload('pg', { ids: ['p0', 'nope', 'p1'], set: { a: [1, 2] } })).updated).toBe(2);
    expect((await client.updatePayload('pg', { filter: { field: 'n', gte: 4 } as never, set: { a: 1 } }).catch((e) => e)).code).toBe('INVALID_ARGUMENT');
    expect((await client.updatePayload('pg', { filter: { field: 'n', range: { gte: 4 } }, overwrite: { big: true } })).updated).toBe(2);
    expect((await client.updatePayload('pg', { ids: ['p0'], deleteKeys: ['color'] })).updated).toBe(1);
    expect(await payloads('pg', ['p0', 'p1', 'p4', 'p5'])).toEqual({
      p0: { n: 0, a: [1, 2] },
      p1: { color: 'blue', n: 1, a: [1, 2] },
      p4: { big: true },
      p5: { big: true },
    });
    // A filter that passes nothing updates nothing.
    expect((await client.updatePayload('pg', { filter: { field: 'n', eq: 99 }, set: { z: 1 } })).updated).toBe(0);
  });

  it('bad input is INVALID_ARGUMENT on both transports and changes nothing', async () => {
    await fill('pbad', 6);
    await client.updatePayload('pbad', { ids: ['p0'], set: { blob: 'x'.repeat(payloadBytesMax - 100) } });
    const before = await digests('pbad');
    const bodies: unknown[] = [
      { ids: ['p1'], filter: { field: 'n', eq: 1 }, set: { a: 1 } }, // both ids and filter
      { set: { a: 1 } }, // neither
      { ids: ['p1'] }, // no change
      { ids: ['p1'], set: { a: 1 }, deleteKeys: ['n'] }, // two changes
      { ids: ['p1'], set: [1] }, // not an object
      { ids: ['p1'], deleteKeys: [] },
      { ids: ['p1'], deleteKeys: [''] },
      { ids: ['p1'], set: { a: 1 }, extra: 1 }, // unknown field
      { ids: [''], set: { a: 1 } },
      { filter: { field: 'n' }, set: { a: 1 } },
      // p0's payload is close to the limit: merging more into it would pass it, on shard 0 or 1,
      // so the other point's shard must not apply its part either.
      { ids: ['p1', 'p0'], set: { more: 'y'.repeat(200) } },
      { filter: { field: 'n', range: { gte: 0 } }, set: { more: 'y'.repeat(200) } },
    ];
    for (const body of bodies) {
      const r = await httpJson(h.httpBase, 'POST', '/v1/collections/pbad/payload', body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body.error.code, JSON.stringify(body)).toBe('INVALID_ARGUMENT');
    }
    const g = (req: Parameters<typeof rawCall<'updatePayload'>>[2]) => rawCall(h.server.grpcAddress, 'updatePayload', req);
    expect((await g({ collection: 'pbad', ids: ['p1'], filterJson: '{"field":"n","eq":1}', setJson: '{"a":1}' })).quiverCode).toBe('INVALID_ARGUMENT');
    expect((await g({ collection: 'pbad', ids: ['p1'] })).quiverCode).toBe('INVALID_ARGUMENT');
    expect((await g({ collection: 'pbad', ids: ['p1'], setJson: '{bad' })).quiverCode).toBe('INVALID_ARGUMENT');
    expect((await g({ collection: 'pbad', ids: ['p1', 'p0'], setJson: JSON.stringify({ more: 'y'.repeat(200) }) })).quiverCode).toBe('INVALID_ARGUMENT');
    expect((await g({ collection: 'nope', ids: ['p1'], setJson: '{}' })).quiverCode).toBe('NOT_FOUND');
    expect(await digests('pbad')).toEqual(before);
  });
});

describe('vector updates', () => {
  it('HTTP: new vectors are searched (HNSW), payloads stay, unknown ids are skipped', async () => {
    await fill('vh', 30);
    const far = Array.from({ length: DIM }, () => 50);
    const r = await httpJson(h.httpBase, 'POST', '/v1/collections/vh/vectors', { points: [{ id: 'p3', vector: far }, { id: 'ghost', vector: far }] });
    expect(r.status).toBe(200);
    expect(r.body.updated).toBe(1);
    const [hit] = await client.search('vh', Float32Array.from(far), { k: 1, withPayload: true });
    expect(hit).toMatchObject({ id: 'p3', distance: 0, payload: { color: 'blue', n: 3 } });
    // p3 no longer answers near its old vector.
    const near = await client.search('vh', vec(3, DIM), { k: 3 });
    expect(near.map((x) => x.id)).not.toContain('p3');
    expect(await client.count('vh')).toBe(30);
    expect((await client.get('vh', ['ghost'])).length).toBe(0);
  });

  it('SDK (gRPC): updateVectors; the vector reads back bit for bit', async () => {
    await fill('vg', 10, 'flat');
    const v = Float32Array.from({ length: DIM }, (_, j) => j / 3);
    expect((await client.updateVectors('vg', [{ id: 'p1', vector: v }, { id: 'p2', vector: v }])).updated).toBe(2);
    const got = await client.get('vg', ['p1', 'p2'], { withVectors: true, withPayload: true });
    expect(got.map((p) => [p.id, Array.from(p.vector!), p.payload])).toEqual([
      ['p1', Array.from(v), { color: 'blue', n: 1 }],
      ['p2', Array.from(v), { color: 'red', n: 2 }],
    ]);
  });

  it('wrong dimension, NaN, a payload, duplicate ids: INVALID_ARGUMENT, nothing changed', async () => {
    await fill('vbad', 6);
    const before = await digests('vbad');
    const ok = Array.from(vec(9, DIM));
    const bodies: unknown[] = [
      { points: [{ id: 'p1', vector: ok.slice(1) }] },
      { points: [{ id: 'p1', vector: ok }, { id: 'p2', vector: [...ok, 1] }] },
      { points: [{ id: 'p1', vector: ok, payload: { a: 1 } }] },
      { points: [{ id: 'p1', vector: ok }, { id: 'p1', vector: ok }] },
      { points: [{ id: 'p1', vector: ok.map(() => 'x') }] },
      { points: 'p1' },
    ];
    for (const body of bodies) {
      const r = await httpJson(h.httpBase, 'POST', '/v1/collections/vbad/vectors', body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body.error.code).toBe('INVALID_ARGUMENT');
    }
    const nan = vec(9, DIM);
    nan[2] = NaN;
    expect(await codeOf(client.updateVectors('vbad', [{ id: 'p0', vector: vec(1, DIM) }, { id: 'p1', vector: nan }]))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(client.updateVectors('vbad', [{ id: 'p0', vector: vec(1, DIM + 1) }]))).toBe('INVALID_ARGUMENT');
    const withPayload = await rawCall(h.server.grpcAddress, 'updateVectors', { collection: 'vbad', points: [{ id: 'p1', vector: { values: ok }, payloadJson: '{}' }] });
    expect(withPayload.quiverCode).toBe('INVALID_ARGUMENT');
    expect(await digests('vbad')).toEqual(before);
  });
});

describe('idempotency keys', () => {
  it('a retried update applies once and gets the first answer; the key with another request is FAILED_PRECONDITION', async () => {
    await fill('ik', 6);
    const lsn = (): number => h.db.status().shards.filter((s) => s.collection === 'ik').reduce((a, s) => a + s.lastLsn, 0);
    const body = { filter: { field: 'color', eq: 'red' }, idempotencyKey: 'k-del' };
    const first = await httpJson(h.httpBase, 'POST', '/v1/collections/ik/delete', body);
    const at = lsn();
    const again = await httpJson(h.httpBase, 'POST', '/v1/collections/ik/delete', body);
    expect(again.body).toEqual(first.body);
    expect(first.body.deleted).toBe(3);
    expect(lsn()).toBe(at);
    const other = await httpJson(h.httpBase, 'POST', '/v1/collections/ik/delete', { filter: { field: 'color', eq: 'blue' }, idempotencyKey: 'k-del' });
    expect(other.body.error.code).toBe('FAILED_PRECONDITION');

    const a = await client.updatePayload('ik', { ids: ['p1', 'p3'], set: { c: 1 } }, { idempotencyKey: 'k-set' });
    const b = await client.updatePayload('ik', { ids: ['p1', 'p3'], set: { c: 1 } }, { idempotencyKey: 'k-set' });
    expect(b).toEqual(a);
    expect(await codeOf(client.updatePayload('ik', { ids: ['p1', 'p3'], set: { c: 2 } }, { idempotencyKey: 'k-set' }))).toBe('FAILED_PRECONDITION');
    const va = await client.updateVectors('ik', [{ id: 'p1', vector: vec(40, DIM) }], { idempotencyKey: 'k-vec' });
    expect(await client.updateVectors('ik', [{ id: 'p1', vector: vec(40, DIM) }], { idempotencyKey: 'k-vec' })).toEqual(va);
    expect(await codeOf(client.updateVectors('ik', [{ id: 'p1', vector: vec(41, DIM) }], { idempotencyKey: 'k-vec' }))).toBe('FAILED_PRECONDITION');
    expect(await payloads('ik', ['p1'])).toEqual({ p1: { color: 'blue', n: 1, c: 1 } });
  });
});

describe('recovery', () => {
  it('the updates are back after kill -9 (WAL replay) and after a clean restart (snapshot)', async () => {
    const dir = tempDir('quiver-points-write-');
    const args = ['--data', dir, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--snapshot-interval-ms', '0'];
    let node = await startServe(args);
    let c = await QuiverClient.connect(node.grpc);
    await c.createCollection({ name: 'rc', dim: DIM, index: { type: 'hnsw' }, shards: 2 });
    await c.upsert('rc', Array.from({ length: 12 }, (_, i) => ({ id: `p${i}`, vector: vec(i, DIM), payload: { n: i, keep: true } })));
    await c.updatePayload('rc', { filter: { field: 'n', range: { lt: 4 } }, set: { low: true } });
    await c.updatePayload('rc', { ids: ['p5'], overwrite: { only: 5 } });
    await c.updatePayload('rc', { ids: ['p6'], deleteKeys: ['keep'] });
    const moved = Float32Array.from({ length: DIM }, () => -7);
    await c.updateVectors('rc', [{ id: 'p7', vector: moved }]);
    await c.deleteWhere('rc', { field: 'n', range: { gte: 10 } });
    const expected = async (cl: QuiverClient): Promise<void> => {
      expect(await cl.count('rc')).toBe(10);
      const pts = await cl.get('rc', ['p0', 'p3', 'p4', 'p5', 'p6', 'p7', 'p10'], { withPayload: true, withVectors: true });
      expect(pts.map((p) => [p.id, p.payload])).toEqual([
        ['p0', { n: 0, keep: true, low: true }],
        ['p3', { n: 3, keep: true, low: true }],
        ['p4', { n: 4, keep: true }],
        ['p5', { only: 5 }],
        ['p6', { n: 6 }],
        ['p7', { n: 7, keep: true }],
      ]);
      expect(Array.from(pts[5].vector!)).toEqual(Array.from(moved));
      expect((await cl.search('rc', moved, { k: 1 }))[0]).toMatchObject({ id: 'p7', distance: 0 });
    };
    await expected(c);
    c.close();
    process.kill(node.child.pid!, 'SIGKILL');
    await node.exited;

    node = await startServe(args);
    c = await QuiverClient.connect(node.grpc);
    await expected(c);
    c.close();
    process.kill(node.child.pid!, 'SIGTERM'); // a clean stop snapshots every shard
    expect(await node.exited).toBe(0);

    node = await startServe(args);
    c = await QuiverClient.connect(node.grpc);
    await expected(c);
    c.close();
    process.kill(node.child.pid!, 'SIGTERM');
    await node.exited;
  });
});
