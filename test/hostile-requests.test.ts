/**
 * What a hostile client may ask of the API, over real gRPC and HTTP on loopback against a real
 * Database in a temp dir: search batches counted before anything is built, payloads nested too
 * deep (and data an older version stored that deep), answers too large to build, deadlines beyond
 * what a timer holds or that pass while a write waits, reused idempotency keys, unknown fields.
 * Each is refused with a typed error that changes nothing (or served correctly), and a
 * well-behaved client is served during and after.
 */
import * as net from 'net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { answerBytesMax, payloadBytesMax, payloadDepthMax, requestBytesMax, searchBatchMax } from '../src/common/limits';
import type { QuiverError } from '../src/errors';
import { GrpcChannel, UnaryMethod } from '../src/rpc/grpc-client';
import { quiverMethods } from '../src/rpc/proto';
import { LocalDatabase, openDatabase, shardOf } from '../src/query';
import { Metrics, RunningServer, Service, startServer } from '../src/server';
import type { RwLock } from '../src/shard/lock';
import { HttpAnswer, httpJson, rawCall, tempDir, vec } from './server-harness';
import { expectCode } from './helpers';

const DIM = 4;
const dir = tempDir('quiver-hostile-');
let db: LocalDatabase;
let server: RunningServer;
let base: string;
let client: QuiverClient;
/** Called after every WAL append (the moment a write can no longer be taken back). */
let onAppend: (() => void) | undefined;

async function start(): Promise<void> {
  db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0, observer: { walAppend: () => onAppend?.() } });
  server = await startServer({ db, grpc: '127.0.0.1:0', http: '127.0.0.1:0', metrics: new Metrics(), log: { error: () => {} } });
  base = `http://${server.httpAddress}`;
  client = await QuiverClient.connect(server.grpcAddress, { retries: 0 });
}

async function stop(snapshot = true): Promise<void> {
  client.close();
  await server.close();
  await db.close({ snapshot });
}

beforeAll(async () => {
  await start();
  await client.createCollection({ name: 'ok', dim: DIM, index: { type: 'flat' } });
  await client.upsert('ok', Array.from({ length: 10 }, (_, i) => ({ id: `p${i}`, vector: vec(i, DIM) })));
});

afterAll(async () => {
  await stop();
});

/** A well-behaved client's search over both transports: nearest first, as before. */
async function wellBehaved(): Promise<void> {
  const hits = await client.search('ok', vec(3, DIM), { k: 2 });
  expect(hits[0].id).toBe('p3');
  const a = await httpJson(base, 'POST', '/v1/collections/ok/search', { vector: Array.from(vec(7, DIM)), k: 1 });
  expect(a.status).toBe(200);
  expect(a.body.results[0].id).toBe('p7');
}

function expectHttpError(a: HttpAnswer, status: number, code: string): string {
  expect(a.status, JSON.stringify(a.body)).toBe(status);
  expect(a.body?.error?.code).toBe(code);
  return a.body.error.message as string;
}

/** `{"a": [[[...]]]}` with `depth` arrays inside the object (the object is depth 1). */
function nested(depth: number): string {
  return `{"a":${'['.repeat(depth)}${']'.repeat(depth)}}`;
}

/** A timer that fires after every timer of at most `ms` set before it (Node runs timers in expiry order). */
function after(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms + 1));
}

/** Holds a shard's lock (a read share), so that its next write, once in the WAL, waits to be applied. */
async function holdShard(collection: string, shard: number): Promise<() => void> {
  const lock = (db.shard(collection, shard) as unknown as { lock: RwLock }).lock;
  return new Promise((held) => {
    void lock.read(() => new Promise<void>((release) => held(release)));
  });
}

function nextAppend(): Promise<void> {
  return new Promise((r) => {
    onAppend = () => {
      onAppend = undefined;
      r();
    };
  });
}

describe('search batches', () => {
  it('counts the queries before looking at any: a batch over searchBatchMax is refused naming the limit', async () => {
    const vectors: unknown[] = ['not a vector', ...Array.from({ length: searchBatchMax }, () => [])];
    const msg = expectHttpError(await httpJson(base, 'POST', '/v1/collections/ok/search', { vectors, k: 1 }), 400, 'INVALID_ARGUMENT');
    expect(msg).toContain('searchBatchMax');
    const raw = await rawCall(server.grpcAddress, 'searchBatch', {
      collection: 'ok',
      vectors: [{ values: [1, 2, 3] }, ...Array.from({ length: searchBatchMax }, () => ({ values: [] }))],
      options: { k: 1 },
    });
    expect(raw.quiverCode).toBe('INVALID_ARGUMENT');
    expect(raw.details).toContain('searchBatchMax');
    await wellBehaved();
  });

  it('a batch of hundreds of thousands of empty vectors is refused while well-behaved searches are served', async () => {
    const body = `{"k":1,"vectors":[${Array.from({ length: 300_000 }, () => '[]').join(',')}]}`;
    const [hostile] = await Promise.all([httpJson(base, 'POST', '/v1/collections/ok/search', body), wellBehaved(), wellBehaved()]);
    expectHttpError(hostile, 400, 'INVALID_ARGUMENT');
    await wellBehaved();
  });

  it('over gRPC the vectors are counted before the message is decoded (2,000,000 empty ones, 4 MB), under either server', async () => {
    const n = 2_000_000;
    const msg = Buffer.alloc(4 + 2 * n + 4);
    msg.set([0x0a, 2, 0x6f, 0x6b]); // collection "ok"
    for (let i = 0; i < n; i++) msg[4 + 2 * i] = 0x12; // vectors: an empty Vector
    msg.set([0x1a, 2, 0x08, 1], 4 + 2 * n); // options: k 1
    const channel = new GrpcChannel(server.grpcAddress, requestBytesMax);
    const method = quiverMethods.searchBatch as unknown as UnaryMethod;
    try {
      const [hostile] = await Promise.allSettled([channel.unary(method, {}, Date.now() + 60_000, msg), wellBehaved()]);
      expect(hostile.status).toBe('rejected');
      const e = (hostile as PromiseRejectedResult).reason as QuiverError;
      expect(e.code).toBe('INVALID_ARGUMENT');
      expect(e.message).toContain('searchBatchMax');
    } finally {
      channel.close();
    }
    const viaGrpcJs = await startServer({ db, grpc: '127.0.0.1:0', http: '127.0.0.1:0', grpcImpl: 'grpc-js', log: { error: () => {} } });
    try {
      const raw = await rawCall(viaGrpcJs.grpcAddress, 'searchBatch', {
        collection: 'ok',
        vectors: Array.from({ length: searchBatchMax + 1 }, () => ({ values: [1, 2, 3, 4] })),
        options: { k: 1 },
      });
      expect(raw.quiverCode).toBe('INVALID_ARGUMENT');
      expect(raw.details).toContain('searchBatchMax');
      const ok = await rawCall(viaGrpcJs.grpcAddress, 'searchBatch', { collection: 'ok', vectors: [{ values: Array.from(vec(2, DIM)) }], options: { k: 1 } });
      expect(ok.res!.batches[0].hits[0].id).toBe('p2');
    } finally {
      await viaGrpcJs.close();
    }
    await wellBehaved();
  });
});

describe('payload depth', () => {
  it(`a payload nested deeper than payloadDepthMax (${payloadDepthMax}) is refused over both transports and changes nothing`, async () => {
    await client.createCollection({ name: 'deep', dim: DIM, index: { type: 'flat' } });
    const deep = nested(4100);
    const body = `{"points":[{"id":"d","vector":[1,2,3,4],"payload":${deep}}]}`;
    const msg = expectHttpError(await httpJson(base, 'POST', '/v1/collections/deep/upsert', body), 400, 'INVALID_ARGUMENT');
    expect(msg).toContain('payloadDepthMax');
    const raw = await rawCall(server.grpcAddress, 'upsert', { collection: 'deep', points: [{ id: 'd', vector: { values: [1, 2, 3, 4] }, payloadJson: deep }] });
    expect(raw.quiverCode).toBe('INVALID_ARGUMENT');
    await expectCode(client.upsert('deep', [{ id: 'd', vector: vec(1, DIM), payload: JSON.parse(nested(payloadDepthMax)) }]), 'INVALID_ARGUMENT');
    expect(await client.count('deep')).toBe(0);
    // At the limit it is stored and read back.
    await client.upsert('deep', [{ id: 'at', vector: vec(1, DIM), payload: JSON.parse(nested(payloadDepthMax - 1)) }]);
    expect((await client.get('deep', ['at'], { withPayload: true }))[0].payload).toEqual(JSON.parse(nested(payloadDepthMax - 1)));
    await wellBehaved();
  });

  it('data stored nested far deeper (as an older version could) is read over both transports, after WAL replay and from a snapshot', async () => {
    await client.createCollection({ name: 'legacy', dim: DIM, index: { type: 'flat' } });
    // 20,000 levels: past the depth at which JSON.stringify and structuredClone overflow the stack.
    const deep = nested(20_000);
    expect(deep.length).toBeLessThan(payloadBytesMax);
    await db.shard('legacy', 0).upsert({ ids: ['old'], vectors: vec(1, DIM), payloadJson: [deep] });
    const check = async (): Promise<void> => {
      for (const p of ['get', 'search']) {
        const req = p === 'get' ? { ids: ['old'], withPayload: true } : { vector: Array.from(vec(1, DIM)), k: 1, withPayload: true };
        const res = await fetch(`${base}/v1/collections/legacy/${p}`, { method: 'POST', body: JSON.stringify(req) });
        expect(res.status).toBe(200);
        expect(await res.text()).toContain(`"payload":${deep}`);
      }
      const g = await rawCall(server.grpcAddress, 'get', { collection: 'legacy', ids: ['old'], withPayload: true });
      expect(g.res!.points[0].payloadJson).toBe(deep);
      const s = await rawCall(server.grpcAddress, 'search', { collection: 'legacy', vector: { values: Array.from(vec(1, DIM)) }, options: { k: 1, withPayload: true } });
      expect(s.res!.hits[0].payloadJson).toBe(deep);
      expect(await db.digest('legacy', 0)).toMatch(/^[0-9a-f]{64}$/);
    };
    await check();
    await stop(false); // WAL replay on the next open
    await start();
    await check();
    await stop(); // snapshot at close, read at the next open
    await start();
    expect(db.shard('legacy', 0).status().snapshotLsn).toBeGreaterThan(0);
    await check();
    await wellBehaved();
  });
});

describe('answer size', () => {
  beforeAll(async () => {
    await client.createCollection({ name: 'big', dim: 128, index: { type: 'flat' } });
    for (let b = 0; b < 4; b++) {
      await client.upsert('big', Array.from({ length: 1024 }, (_, i) => ({ id: `b${b * 1024 + i}`, vector: vec(b * 1024 + i, 128) })));
    }
  });

  it('a search whose answer could pass answerBytesMax is RESOURCE_EXHAUSTED before it runs; a large one under it is streamed whole', async () => {
    const queries = Array.from({ length: 64 }, (_, i) => vec(i, 128));
    const vectors = queries.map((q) => Array.from(q));
    const msg = expectHttpError(
      await httpJson(base, 'POST', '/v1/collections/big/search', { vectors, k: 4096, withVectors: true }),
      429,
      'RESOURCE_EXHAUSTED',
    );
    expect(msg).toContain('answerBytesMax');
    await expectCode(client.searchBatch('big', queries, { k: 4096, withVectors: true }), 'RESOURCE_EXHAUSTED');
    await wellBehaved();
    // Without vectors the same batch fits (64 x 4,096 hits of short ids): its JSON answer is
    // written in pieces, and it is whole.
    const a = await httpJson(base, 'POST', '/v1/collections/big/search', { vectors, k: 4096 });
    expect(a.status).toBe(200);
    expect(a.body.batches.length).toBe(64);
    for (const list of a.body.batches) expect(list.length).toBe(4096);
    expect(a.body.batches[5][0].id).toBe('b5');
    // With vectors, fewer queries fit too; the vectors come back as sent.
    const v = await httpJson(base, 'POST', '/v1/collections/big/search', { vectors: vectors.slice(0, 2), k: 4096, withVectors: true });
    expect(v.status).toBe(200);
    expect(v.body.batches[1][0]).toMatchObject({ id: 'b1', vector: vectors[1] });
    await wellBehaved();
  });

  it('payloads count by the longest one stored (16 x 4,096 hits of 60 KB pass answerBytesMax)', async () => {
    await client.upsert('big', [{ id: 'fat', vector: vec(9999, 128), payload: { s: 'x'.repeat(60_000) } }]);
    const queries = Array.from({ length: 16 }, (_, i) => vec(i, 128));
    await expectCode(client.searchBatch('big', queries, { k: 4096, withPayload: true }), 'RESOURCE_EXHAUSTED');
    expect((await client.searchBatch('big', queries, { k: 4096 })).length).toBe(16);
    expect((await client.search('big', queries[0], { k: 100, withPayload: true })).length).toBe(100);
    await client.delete('big', ['fat']);
  });
});

describe('deadlines', () => {
  beforeAll(async () => {
    await client.createCollection({ name: 'dl', dim: DIM, index: { type: 'flat' } });
  });

  it('a deadline of 2^31 ms or more counts as deadlineMsMax, not as 1 ms', async () => {
    const svc = new Service(db, new Metrics());
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const call = svc.run('Count', 'grpc', Date.now() + 2 ** 31 + 1000, () => gate.then(() => 7));
    await after(1); // past any 1 ms timer the call set
    release();
    expect(await call).toBe(7);
  });

  it('an upsert with a deadline of 3,000,000,000 ms waits for its write and answers it (HTTP and gRPC)', async () => {
    const release = await holdShard('dl', 0);
    const appended = nextAppend();
    const http = httpJson(base, 'POST', '/v1/collections/dl/upsert', { points: [{ id: 'far', vector: [1, 2, 3, 4] }] }, { 'x-quiver-timeout-ms': '3000000000' });
    await appended;
    await after(1);
    const appended2 = nextAppend();
    const grpc = rawCall(server.grpcAddress, 'upsert', { collection: 'dl', points: [{ id: 'far2', vector: { values: [1, 2, 3, 4] } }] }, Date.now() + 3e9);
    await appended2;
    await after(1);
    release();
    const a = await http;
    expect(a.status, JSON.stringify(a.body)).toBe(200);
    expect((await grpc).code).toBe(0);
    expect((await client.get('dl', ['far', 'far2'])).map((p) => p.id).sort()).toEqual(['far', 'far2']);
  });

  it('a write whose deadline passes while it waits for its shard is answered with its outcome, never DEADLINE_EXCEEDED when applied', async () => {
    const release = await holdShard('dl', 0);
    const appended = nextAppend();
    const call = httpJson(base, 'POST', '/v1/collections/dl/upsert', { points: [{ id: 'slow', vector: [1, 2, 3, 4] }] }, { 'x-quiver-timeout-ms': '50' });
    await appended;
    await after(50); // the call's deadline (set before the append) has passed
    release();
    const a = await call;
    await client.upsert('dl', [{ id: 'barrier', vector: vec(2, DIM) }]); // applied after 'slow' was settled
    const stored = (await client.get('dl', ['slow'])).length === 1;
    expect({ status: a.status, stored }).toEqual({ status: 200, stored: true });
    await wellBehaved();
  });

  it('a change that has not reached the log when its deadline passes is refused and never applied', async () => {
    const svc = new Service(db, new Metrics());
    let inner: Promise<unknown> | undefined;
    const call = svc.run('Upsert', 'grpc', Date.now() + 20, (signal) => {
      inner = after(20).then(() => db.upsert('dl', [{ id: 'late', vector: vec(1, DIM) }], { signal }));
      return inner;
    });
    await expectCode(call, 'DEADLINE_EXCEEDED');
    await inner!.catch(() => undefined);
    expect(await client.get('dl', ['late'])).toEqual([]);
    // Over HTTP: a body still arriving at the deadline is given up (504) and nothing is written.
    const sock = net.connect(Number(server.httpAddress.split(':')[1]), '127.0.0.1');
    const answer = new Promise<string>((resolve) => {
      let text = '';
      sock.on('data', (d) => (text += d.toString()));
      sock.on('close', () => resolve(text));
    });
    sock.write('POST /v1/collections/dl/upsert HTTP/1.1\r\nhost: x\r\nx-quiver-timeout-ms: 30\r\ncontent-length: 100\r\n\r\n{"points":[');
    expect(await answer).toMatch(/^HTTP\/1.1 504/);
    expect(await client.get('dl', ['late'])).toEqual([]);
  });
});

describe('idempotency keys', () => {
  it('a key stands for one request: another one under it is refused on every shard before anything is written, also after restarts', async () => {
    await client.createCollection({ name: 'idem', dim: DIM, shards: 2, index: { type: 'flat' } });
    const onShard = (s: number, skip = 0): string => Array.from({ length: 100 }, (_, i) => `x${i}`).filter((id) => shardOf(id, 2) === s)[skip];
    const [x2, x3, x1] = [onShard(0), onShard(0, 1), onShard(1)];
    const point = (id: string) => ({ id, vector: Array.from(vec(1, DIM)) });
    const up = (ids: string[], key: string) => httpJson(base, 'POST', '/v1/collections/idem/upsert', { points: ids.map(point), idempotencyKey: key });
    const first = await up([x2], 'k2');
    expect(first.status).toBe(200);
    const lastLsn = () => db.status().shards.filter((s) => s.collection === 'idem').map((s) => s.lastLsn);
    const before = lastLsn();
    const expectRefused = async (): Promise<void> => {
      expectHttpError(await up([x3, x1], 'k2'), 400, 'FAILED_PRECONDITION');
      await expectCode(client.upsert('idem', [x3, x1].map((id) => ({ id, vector: vec(1, DIM) })), { idempotencyKey: 'k2' }), 'FAILED_PRECONDITION');
      expectHttpError(await httpJson(base, 'POST', '/v1/collections/idem/delete', { ids: [x2], idempotencyKey: 'k2' }), 400, 'FAILED_PRECONDITION');
      await expectCode(client.delete('idem', [x2], { idempotencyKey: 'k2' }), 'FAILED_PRECONDITION');
      // A key first used on shard 1 only is refused for a request that touches only shard 0.
      expectHttpError(await up([x3], 'k1'), 400, 'FAILED_PRECONDITION');
      expect((await client.get('idem', [x1, x2, x3])).map((p) => p.id)).toEqual([x1, x2]);
      // The same request again gets the first answer and writes nothing.
      expect((await up([x2], 'k2')).body).toEqual(first.body);
    };
    expect((await up([x1], 'k1')).status).toBe(200);
    const afterK1 = lastLsn();
    expect(afterK1[0]).toBe(before[0]);
    await expectRefused();
    expect(lastLsn()).toEqual(afterK1);
    await stop(false); // WAL replay
    await start();
    await expectRefused();
    await stop(); // snapshot
    await start();
    await expectRefused();
    await wellBehaved();
  });
});

describe('unknown fields', () => {
  it('every body field, nested object and query parameter is checked: an unknown one is INVALID_ARGUMENT naming it', async () => {
    const post = (p: string, body: unknown) => httpJson(base, 'POST', p, body);
    let msg = expectHttpError(await post('/v1/collections', { name: 'w2', dim: 4, distance: 'Cosine' }), 400, 'INVALID_ARGUMENT');
    expect(msg).toMatch(/distance.*metric/);
    expect((await httpJson(base, 'GET', '/v1/collections/w2')).status).toBe(404);
    msg = expectHttpError(await post('/v1/collections', { name: 'w2', dim: 4, index: { type: 'hnsw', M: 8 } }), 400, 'INVALID_ARGUMENT');
    expect(msg).toMatch(/index\.M.*\bm\b/);
    const search = { vector: [1, 2, 3, 4], k: 1 };
    for (const [field, like] of [['with_payload', 'withPayload'], ['page', undefined], ['scoreThreshold', 'maxDistance'], ['vectr', 'vector']] as const) {
      msg = expectHttpError(await post('/v1/collections/ok/search', { ...search, [field]: 1 }), 400, 'INVALID_ARGUMENT');
      expect(msg).toContain(field);
      if (like) expect(msg).toContain(`did you mean ${like}?`);
    }
    expectHttpError(await post('/v1/collections/ok/search', { ...search, filter: { field: 'i', eq: 1, boost: 2 } }), 400, 'INVALID_ARGUMENT');
    msg = expectHttpError(await post('/v1/collections/ok/search', { ...search, filter: { and: [{ feild: 'i', eq: 1 }] } }), 400, 'INVALID_ARGUMENT');
    expect(msg).toContain('filter.and[0].feild');
    const raw = await rawCall(server.grpcAddress, 'search', { collection: 'ok', vector: { values: [1, 2, 3, 4] }, options: { k: 1, filterJson: '{"field":"i","eq":1,"boost":2}' } });
    expect(raw.quiverCode).toBe('INVALID_ARGUMENT');
    expectHttpError(await post('/v1/collections/ok/delete', { ids: ['p1'], filter: { field: 'i', eq: 1 } }), 400, 'INVALID_ARGUMENT');
    expectHttpError(await post('/v1/collections/ok/get', { ids: ['p1'], with_vectors: true }), 400, 'INVALID_ARGUMENT');
    msg = expectHttpError(await post('/v1/collections/ok/upsert', { points: [{ id: 'p1', vectr: [1, 2, 3, 4] }] }), 400, 'INVALID_ARGUMENT');
    expect(msg).toContain('did you mean vector?');
    expectHttpError(await post('/v1/collections/ok/upsert', { points: [], idempotency_key: 'a' }), 400, 'INVALID_ARGUMENT');
    msg = expectHttpError(await httpJson(base, 'GET', '/v1/collections/ok/count?filter=%7B%7D'), 400, 'INVALID_ARGUMENT');
    expect(msg).toContain('filter');
    expect(await client.count('ok')).toBe(10);
    await wellBehaved();
  });
});

describe('messages in the request\'s terms', () => {
  it('a vectors blob of the wrong size says how many floats each point got and what the collection takes', async () => {
    const raw = await rawCall(server.grpcAddress, 'upsert', { collection: 'ok', ids: ['a'], vectors: Buffer.alloc(12) });
    expect(raw.quiverCode).toBe('INVALID_ARGUMENT');
    expect(raw.details).toContain("3 floats per point; the collection's dimension is 4");
    const pts = await rawCall(server.grpcAddress, 'upsert', { collection: 'ok', points: [{ id: 'a', vector: { values: [1, 2, 3] } }] });
    expect(pts.details).toContain("points[0].vector has 3 components; the collection's dimension is 4");
    expect(await client.count('ok')).toBe(10);
  });
});
