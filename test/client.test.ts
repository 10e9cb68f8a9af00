/**
 * The client SDK's retries: a TCP proxy on loopback between client and server swallows the server's
 * answers, so the client's attempts fail (DEADLINE_EXCEEDED, or UNAVAILABLE when the proxy drops the
 * connection) after the server has applied the write. The retried write carries the same
 * idempotency key and applies once: the shard's LSN moves by exactly one.
 */
import * as net from 'net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { generatedMethods } from '../src/rpc/proto';
import { encodeUpsertColumns } from '../src/rpc/upsert-codec';
import { QuiverError } from '../src/errors';
import { openDatabase } from '../src/query';
import { startServer } from '../src/server';
import { expectCode, pollUntil } from './helpers';
import { Harness, httpJson, startHarness, tempDir, vec } from './server-harness';

const DIM = 4;

/** Forwards loopback TCP to `target`; while `swallow` is set, bytes from the server are dropped. */
class Proxy {
  swallow = false;
  private readonly sockets = new Set<net.Socket>();
  private server!: net.Server;
  address = '';

  constructor(private readonly target: { host: string; port: number }) {}

  async start(): Promise<void> {
    this.server = net.createServer((client) => {
      const upstream = net.connect(this.target.port, this.target.host);
      this.sockets.add(client).add(upstream);
      client.on('data', (b) => upstream.write(b));
      upstream.on('data', (b) => {
        if (!this.swallow) client.write(b);
      });
      const done = () => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on('close', done).on('error', done);
      upstream.on('close', done).on('error', done);
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.address = `127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  /** Cuts every open connection (the client sees the transport fail). */
  cut(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  async stop(): Promise<void> {
    this.cut();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

let h: Harness;
let proxy: Proxy;

function lastLsn(collection: string): number {
  return h.db.status().shards.filter((s) => s.collection === collection).reduce((a, s) => a + s.lastLsn, 0);
}

beforeAll(async () => {
  h = await startHarness();
  const [host, port] = h.server.grpcAddress.split(':');
  proxy = new Proxy({ host, port: Number(port) });
  await proxy.start();
  const admin = await QuiverClient.connect(h.server.grpcAddress);
  await admin.createCollection({ name: 'r', dim: DIM, index: { type: 'flat' } });
  admin.close();
});

afterAll(async () => {
  await proxy?.stop();
  await h?.stop();
});

describe('client retries with idempotency keys', () => {
  it('the same key applied twice applies once (HTTP, explicit key)', async () => {
    const body = { points: [{ id: 'k1', vector: Array.from(vec(1, DIM)) }], idempotencyKey: 'same-key' };
    const lsn0 = lastLsn('r');
    const a = await httpJson(h.httpBase, 'POST', '/v1/collections/r/upsert', body);
    const b = await httpJson(h.httpBase, 'POST', '/v1/collections/r/upsert', body);
    expect(a.status).toBe(200);
    expect(b.body).toEqual(a.body); // the second answer is the first one's
    expect(lastLsn('r')).toBe(lsn0 + 1);
    // Without a key the same body is a second write.
    await httpJson(h.httpBase, 'POST', '/v1/collections/r/upsert', { points: body.points });
    expect(lastLsn('r')).toBe(lsn0 + 2);
  });

  it('a write whose answer was lost is retried after the connection drops and applies once', async () => {
    const client = await QuiverClient.connect(proxy.address, { retries: 4, backoffMs: 20 });
    try {
      const lsn0 = lastLsn('r');
      proxy.swallow = true;
      const pending = client.upsert('r', [{ id: 'u1', vector: vec(5, DIM), payload: { v: 1 } }]);
      // Applied on the server; the answer went nowhere. The database announces no apply (its
      // observer sees WAL appends, fsyncs and snapshots), so the LSN is polled.
      await pollUntil(() => lastLsn('r') === lsn0 + 1, 'the upsert to be applied');
      proxy.swallow = false;
      proxy.cut(); // the client sees UNAVAILABLE and retries on a new connection
      const res = await pending;
      expect(res.upserted).toBe(1);
      expect(lastLsn('r')).toBe(lsn0 + 1);
      const got = await client.get('r', ['u1'], { withPayload: true });
      expect(got).toEqual([{ id: 'u1', payload: { v: 1 } }]);
    } finally {
      proxy.swallow = false;
      client.close();
    }
  });

  it('attempts that time out are retried with the same key; after the last one the error is DEADLINE_EXCEEDED', async () => {
    const client = await QuiverClient.connect(proxy.address, { retries: 2, backoffMs: 10, deadlineMs: 300 });
    try {
      const lsn0 = lastLsn('r');
      proxy.swallow = true;
      let err: unknown;
      try {
        await client.delete('r', ['k1']);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(QuiverError);
      expect((err as QuiverError).code).toBe('DEADLINE_EXCEEDED');
      // Three attempts reached the server; one delete was applied.
      expect(lastLsn('r')).toBe(lsn0 + 1);
      proxy.swallow = false;
      expect(await client.get('r', ['k1'])).toEqual([]);
    } finally {
      proxy.swallow = false;
      client.close();
    }
  });

  it('errors that are not transient are not retried', async () => {
    const client = await QuiverClient.connect(proxy.address, { retries: 4 });
    try {
      const lsn0 = lastLsn('r');
      let err: unknown;
      try {
        await client.upsert('r', [{ id: 'bad', vector: new Float32Array(DIM + 1) }]);
      } catch (e) {
        err = e;
      }
      expect((err as QuiverError).code).toBe('INVALID_ARGUMENT');
      expect(lastLsn('r')).toBe(lsn0);
    } finally {
      client.close();
    }
  });

  it('connect takes the first address that answers and refuses when none does', async () => {
    const dead = await new Promise<string>((resolve) => {
      const s = net.createServer();
      s.listen(0, '127.0.0.1', () => {
        const port = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(`127.0.0.1:${port}`));
      });
    });
    const c = await QuiverClient.connect([dead, h.server.grpcAddress], { connectTimeoutMs: 5000 });
    expect(await c.count('r')).toBe(await h.db.count('r'));
    c.close();
    let err: unknown;
    try {
      await QuiverClient.connect([dead], { connectTimeoutMs: 300 });
    } catch (e) {
      err = e;
    }
    expect((err as QuiverError).code).toBe('UNAVAILABLE');
  });
});

describe('input the wire types cannot carry', () => {
  it('is INVALID_ARGUMENT before anything is sent (a fractional or negative dimension is not rounded or wrapped)', async () => {
    const c = await QuiverClient.connect(h.server.grpcAddress, { retries: 0 });
    try {
      const before = await c.listCollections();
      for (const dim of [1.5, -4, 2 ** 32, NaN]) await expectCode(c.createCollection({ name: 'frac', dim }), 'INVALID_ARGUMENT');
      expect(await c.listCollections()).toEqual(before);
    } finally {
      c.close();
    }
  });
});

describe('the client against the @grpc/grpc-js server (--grpc-impl grpc-js)', () => {
  it('every operation: the generated and hand-written codecs on both sides of grpc-js', async () => {
    const db = await openDatabase({ dataDir: tempDir('quiver-grpcjs-'), snapshotIntervalMs: 0 });
    const server = await startServer({ db, grpc: '127.0.0.1:0', http: '127.0.0.1:0', grpcImpl: 'grpc-js', log: { error: () => {} } });
    const c = await QuiverClient.connect(server.grpcAddress, { retries: 0 });
    try {
      const info = await c.createCollection({ name: 'j', dim: DIM, index: { type: 'hnsw', m: 8 } });
      expect(info).toMatchObject({ name: 'j', dim: DIM, count: 0, index: { type: 'hnsw', m: 8 } });
      const points = Array.from({ length: 10 }, (_, i) => ({ id: `p${i}`, vector: vec(i, DIM), payload: { i } }));
      const w = await c.upsert('j', points);
      expect(w.upserted).toBe(10);
      expect(Object.values(w.token)).toEqual([{ epoch: 0, lsn: 2 }]); // LSN 1 is the epoch start, 2 this batch
      expect(await c.count('j')).toBe(10);
      const hits = await c.search('j', vec(3, DIM), { k: 2, withPayload: true, token: w.token, consistency: 'session' });
      expect(hits[0]).toMatchObject({ id: 'p3', distance: 0, payload: { i: 3 } });
      const batches = await c.searchBatch('j', [vec(1, DIM), vec(2, DIM)], { k: 1 });
      expect(batches.map((b) => b[0].id)).toEqual(['p1', 'p2']);
      const got = await c.get('j', ['p4', 'nope'], { withVectors: true });
      expect(got).toHaveLength(1);
      expect(Array.from(got[0].vector!)).toEqual(Array.from(vec(4, DIM)));
      expect((await c.delete('j', ['p4'])).deleted).toBe(1);
      const st = await c.status();
      expect(st.shards.find((s) => s.collection === 'j')).toMatchObject({ points: 9, appliedLsn: st.shards.find((s) => s.collection === 'j')!.lastLsn });
      await expectCode(c.describeCollection('nope'), 'NOT_FOUND');
      await c.dropCollection('j');
      expect(await c.listCollections()).toEqual([]);
    } finally {
      c.close();
      await server.close();
      await db.close();
    }
  });
});

describe('hand-encoded UpsertRequest (columns)', () => {
  it('equals the generated encoding of the same request, byte for byte, and decodes with the generated code', () => {
    const dim = 3;
    const vectors = [new Float32Array([1, 2, 3]), new Float32Array([-0.5, 1e-30, 3.4e38]), new Float32Array(8).subarray(2, 5).fill(7)];
    const requestHash = Buffer.from('0123456789abcdef');
    const req = { collection: 'c-ü', idempotencyKey: 'k'.repeat(130), ids: ['a', 'β'.repeat(100), 'x'], vectors, payloadJsons: ['{"a":1}', '', '{"s":"ü"}'], expectLeader: true, requestHash };
    const bytes = encodeUpsertColumns(req);
    const method = generatedMethods.upsert;
    const decoded = method.requestDeserialize(bytes);
    expect(decoded.collection).toBe(req.collection);
    expect(decoded.idempotencyKey).toBe(req.idempotencyKey);
    expect(decoded.ids).toEqual(req.ids);
    expect(decoded.payloadJsons).toEqual(req.payloadJsons);
    expect(decoded.points).toEqual([]);
    expect(decoded.expectLeader).toBe(true);
    expect(Buffer.from(decoded.requestHash).equals(requestHash)).toBe(true);
    const v = decoded.vectors;
    const floats = new Float32Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
    expect(Array.from(floats)).toEqual(vectors.flatMap((x) => Array.from(x)));
    const all = Buffer.concat(vectors.map((x) => Buffer.from(x.buffer, x.byteOffset, x.byteLength)));
    const reference = method.requestSerialize({ collection: req.collection, idempotencyKey: req.idempotencyKey, ids: req.ids, vectors: all, payloadJsons: req.payloadJsons, expectLeader: true, requestHash });
    expect(bytes.equals(reference)).toBe(true);
    // The rows may come in arrays of several rows each (a part of a batch the client split).
    expect(encodeUpsertColumns({ ...req, vectors: [Float32Array.from(vectors.flatMap((x) => Array.from(x)))] }).equals(reference)).toBe(true);
    // No payloads, no collection name, no routing: those fields are left out and decode as empty.
    const plainBytes = encodeUpsertColumns({ ...req, collection: '', payloadJsons: [], expectLeader: false, requestHash: undefined });
    const plain = method.requestDeserialize(plainBytes);
    expect(plain.collection).toBe('');
    expect(plain.payloadJsons).toEqual([]);
    expect(plain.expectLeader).toBe(false);
    expect(plain.requestHash.byteLength).toBe(0);
    expect(plainBytes.equals(method.requestSerialize({ idempotencyKey: req.idempotencyKey, ids: req.ids, vectors: all }))).toBe(true);
  });
});
