/**
 * The API over real gRPC and real HTTP on loopback, against a real Database in a temp dir: every
 * operation over both transports, and bad input through both, each refused with a typed error
 * that leaves the state as it was.
 */
import * as http from 'http';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { QuiverClient } from '../src/client';
import { batchPointsMax, idBytesMax, payloadBytesMax, requestBytesMax } from '../src/common/limits';
import { searchLaneStats } from '../src/native';
import { topKMax } from '../src/native/limits';
import type { RequestInit } from '../src/rpc/proto';
import { Metrics, Service } from '../src/server';
import { QUIET_MS } from '../src/server/service';
import { Harness, httpJson, rawCall, startHarness, vec } from './server-harness';
import { VERSION } from '../src/common/version';
import { expectCode } from './helpers';
import { QuiverError } from '../src/errors';
import type { Database } from '../src/query/types';
import { ClusterDatabase } from '../src/query/cluster';
import type { CoordinatorPort, PeerShards } from '../src/query/cluster';
import { EventEmitter } from 'events';
import * as os from 'os';

const DIM = 4;

function expectHttpError(a: { status: number; body: any }, status: number, code: string): void {
  expect(a.status).toBe(status);
  expect(a.body?.error?.code).toBe(code);
  expect(typeof a.body?.error?.message).toBe('string');
}

let h: Harness;
let client: QuiverClient;

beforeAll(async () => {
  h = await startHarness();
  client = await QuiverClient.connect(h.server.grpcAddress, { retries: 0 });
});

afterAll(async () => {
  client?.close();
  await h?.stop();
});

describe('gRPC: every operation', () => {
  it('create, list, describe, upsert, get, count, search, search-batch, delete, status, drop', async () => {
    const info = await client.createCollection({ name: 'g1', dim: DIM, metric: 'l2', index: { type: 'flat' }, shards: 2 });
    expect(info).toMatchObject({ name: 'g1', dim: DIM, metric: 'l2', shards: 2, count: 0 });
    expect(info.index.type).toBe('flat');
    await expectCode(client.createCollection({ name: 'g1', dim: DIM, index: { type: 'flat' } }), 'ALREADY_EXISTS');

    expect((await client.listCollections()).map((c) => c.name)).toContain('g1');
    expect((await client.describeCollection('g1')).dim).toBe(DIM);

    const points = Array.from({ length: 20 }, (_, i) => ({
      id: `p${i}`,
      vector: vec(i, DIM),
      payload: { i, color: i % 2 ? 'red' : 'blue', tags: ['a'] },
    }));
    const up = await client.upsert('g1', points);
    expect(up.upserted).toBe(20);
    expect(Object.keys(up.token).length).toBeGreaterThan(0);
    expect(await client.count('g1')).toBe(20);

    const got = await client.get('g1', ['p3', 'missing', 'p5'], { withVectors: true, withPayload: true });
    expect(got.map((p) => p.id).sort()).toEqual(['p3', 'p5']);
    const p3 = got.find((p) => p.id === 'p3')!;
    expect(p3.vector).toBeInstanceOf(Float32Array);
    expect(Array.from(p3.vector!)).toEqual(Array.from(vec(3, DIM)));
    expect(p3.payload).toEqual({ i: 3, color: 'red', tags: ['a'] });
    const bare = await client.get('g1', ['p3']);
    expect(bare[0].vector).toBeUndefined();
    expect(bare[0].payload).toBeUndefined();

    const hits = await client.search('g1', vec(7, DIM), { k: 3, withPayload: true });
    expect(hits.length).toBe(3);
    expect(hits[0].id).toBe('p7');
    expect(hits[0].distance).toBeCloseTo(0, 5);
    expect(hits[0].payload).toMatchObject({ i: 7 });
    expect(hits[1].distance).toBeGreaterThanOrEqual(hits[0].distance);

    const red = await client.search('g1', vec(8, DIM), { k: 20, filter: { field: 'color', eq: 'red' } });
    expect(red.length).toBe(10);
    for (const hit of red) expect(Number(hit.id.slice(1)) % 2).toBe(1);
    const ranged = await client.search('g1', vec(8, DIM), { k: 20, filter: { and: [{ field: 'i', range: { gte: 5, lt: 8 } }, { not: { field: 'i', eq: 6 } }] } });
    expect(ranged.map((x) => x.id).sort()).toEqual(['p5', 'p7']);

    const batches = await client.searchBatch('g1', [vec(1, DIM), vec(2, DIM)], { k: 2 });
    expect(batches.length).toBe(2);
    expect(batches[0][0].id).toBe('p1');
    expect(batches[1][0].id).toBe('p2');

    const del = await client.delete('g1', ['p1', 'p2', 'nope']);
    expect(del.deleted).toBe(2);
    expect(await client.count('g1')).toBe(18);
    expect(await client.get('g1', ['p1', 'p2'])).toEqual([]);

    const st = await client.status();
    expect(st.mode).toBe('standalone');
    const shards = st.shards.filter((s) => s.collection === 'g1');
    expect(shards.length).toBe(2);
    expect(shards.reduce((a, s) => a + s.points, 0)).toBe(18);
    for (const s of shards) expect(s.appliedLsn).toBeGreaterThan(0);

    await client.dropCollection('g1');
    await expectCode(client.describeCollection('g1'), 'NOT_FOUND');
    await expectCode(client.dropCollection('g1'), 'NOT_FOUND');
  });

  it('accepts vectors as packed floats and answers with floats when asked', async () => {
    await client.createCollection({ name: 'g2', dim: DIM, index: { type: 'flat' } });
    const r = await rawCall(h.server.grpcAddress, 'upsert', {
      collection: 'g2',
      points: [{ id: 'f', vector: { values: [1, 2, 3, 4] }, payloadJson: '{"a":1}' }],
    });
    expect(r.code).toBe(0);
    expect(r.res!.count).toBe(1n);
    const g = await rawCall(h.server.grpcAddress, 'get', { collection: 'g2', ids: ['f'], withVectors: true, withPayload: true, floatVectors: true });
    expect(g.res!.points[0].vector!.values).toEqual([1, 2, 3, 4]);
    expect(JSON.parse(g.res!.points[0].payloadJson)).toEqual({ a: 1 });
    const s = await rawCall(h.server.grpcAddress, 'search', { collection: 'g2', vector: { values: [1, 2, 3, 4] }, options: { k: 1 } });
    expect(s.res!.hits[0].id).toBe('f');
    const st = await rawCall(h.server.grpcAddress, 'clusterStatus', {});
    const shard = st.res!.shards.find((x) => x.collection === 'g2')!;
    expect(shard.lastLsn).toBeGreaterThan(0n);
    expect(shard.lag).toBe(shard.lastLsn - shard.appliedLsn);
    await client.dropCollection('g2');
  });

  it('honours deadlines: a call whose deadline passes answers DEADLINE_EXCEEDED', async () => {
    await expectCode(client.count('nope', { deadlineMs: 0 }), 'DEADLINE_EXCEEDED');
    // The server side: an operation still running at its deadline is answered DEADLINE_EXCEEDED,
    // one that arrives past it never runs.
    const svc = new Service(h.db, new Metrics());
    let ran = false;
    let finish: (() => void) | undefined;
    await expectCode(svc.run('Count', 'grpc', Date.now() + 20, () => new Promise<void>((r) => (finish = r))), 'DEADLINE_EXCEEDED');
    finish?.(); // the operation ends only after its deadline was answered
    await expectCode(svc.run('Count', 'grpc', Date.now() - 1, async () => (ran = true)), 'DEADLINE_EXCEEDED');
    expect(ran).toBe(false);
  });
});

describe('a collection or alias this node had not heard of yet (a cluster node behind its watch)', () => {
  it('runs the call again once heardOf finds it in the cluster; a name nobody holds, or another NOT_FOUND, answers as it was', async () => {
    const asked: string[] = [];
    let known = false;
    const db = {
      heardOf: async (name: string) => {
        asked.push(name);
        known = name === 'fresh';
        return known;
      },
    } as unknown as Database;
    const svc = new Service(db, new Metrics());
    let runs = 0;
    const count = (name: string) =>
      svc.run('Count', 'grpc', Date.now() + 10_000, () => {
        runs++;
        if (!known) throw new QuiverError('NOT_FOUND', `no collection or alias named "${name}"`, { collection: name });
        return 3;
      });
    expect(await count('fresh')).toBe(3);
    expect(runs).toBe(2);
    known = false;
    await expectCode(count('missing'), 'NOT_FOUND');
    expect(runs).toBe(3); // not run again
    expect(asked).toEqual(['fresh', 'missing']);
    // A change is run again too (nothing was done: the name is resolved first); a NOT_FOUND without the name is not.
    await expect(svc.run('Upsert', 'grpc', Date.now() + 10_000, async () => {
      runs++;
      if (!known) throw new QuiverError('NOT_FOUND', 'no collection or alias named "fresh"', { collection: 'fresh' });
      return 'written';
    })).resolves.toBe('written');
    await expectCode(svc.run('Get', 'grpc', Date.now() + 10_000, () => { throw new QuiverError('NOT_FOUND', 'no such route'); }), 'NOT_FOUND');
    expect(asked).toEqual(['fresh', 'missing', 'fresh']);
    // Standalone (no heardOf): the NOT_FOUND names the collection and is answered at once.
    const err = await h.db.count('nowhere').catch((e: QuiverError) => e);
    expect(err).toMatchObject({ code: 'NOT_FOUND', details: { collection: 'nowhere' } });
  });

  it('an HTTP write run again reads its body once: the second run gets the same body', async () => {
    // As a cluster node hearing of the collection only when asked: heardOf makes it, then the upsert runs again.
    const db = h.db as Database;
    db.heardOf = async (name: string) => {
      if (name !== 'late') return false;
      await db.createCollection({ name: 'late', dim: 4, index: { type: 'flat' } });
      return true;
    };
    try {
      const a = await httpJson(h.httpBase, 'POST', '/v1/collections/late/upsert', { points: [{ id: 'p', vector: [1, 2, 3, 4], payload: { n: 1 } }] }, { 'x-quiver-timeout-ms': '10000' });
      expect(a.status, JSON.stringify(a.body)).toBe(200);
      expect(await h.db.get('late', ['p'])).toMatchObject([{ id: 'p', payload: { n: 1 } }]);
    } finally {
      delete db.heardOf;
      await h.db.dropCollection('late').catch(() => undefined);
    }
  });
});

describe('a cluster node looking up names it has not heard of', () => {
  it('asks etcd once for a name that calls name at once, and not for a name it knows', async () => {
    const asked: string[] = [];
    const coordinator = Object.assign(new EventEmitter(), {
      hearName(name: string): Promise<boolean> {
        asked.push(name);
        return new Promise((resolve) =>
          setTimeout(() => {
            // As etcd's watch would: the collection is heard before the look-up answers.
            if (name === 'fresh') coordinator.emit('collection', 'fresh', { name: 'fresh', dim: 4, metric: 'l2', index: { type: 'flat' }, shards: 1, replicationFactor: 1, createdAt: new Date(0).toISOString() });
            resolve(name === 'fresh');
          }, 5),
        );
      },
    });
    const db = new ClusterDatabase({
      nodeId: 'n1',
      dataDir: os.tmpdir(),
      coordinator: coordinator as unknown as CoordinatorPort,
      peers: {} as PeerShards,
      openReplica: () => Promise.reject(new Error('no replica opens here')),
      sendToPeer: () => undefined,
    });
    expect(await Promise.all([1, 2, 3, 4, 5].map(() => db.heardOf('fresh')))).toEqual([true, true, true, true, true]);
    expect(await db.heardOf('fresh')).toBe(false); // known now: a NOT_FOUND naming it came from elsewhere
    expect(await Promise.all([db.heardOf('nope'), db.heardOf('nope')])).toEqual([false, false]);
    expect(asked).toEqual(['fresh', 'nope']);
  });
});

describe('a quiet server', () => {
  it('runs the whenQuiet callbacks once QUIET_MS passed with no request in flight, not while one runs or after drain', async () => {
    vi.useFakeTimers();
    try {
      const svc = new Service(h.db, new Metrics());
      let calls = 0;
      svc.whenQuiet(() => calls++);
      let finish!: () => void;
      const far = Date.now() + 60_000;
      const running = svc.run('Upsert', 'grpc', far, () => new Promise<void>((r) => (finish = r)));
      await vi.advanceTimersByTimeAsync(2 * QUIET_MS);
      expect(calls).toBe(0); // in flight
      finish();
      await running;
      await vi.advanceTimersByTimeAsync(QUIET_MS - 1);
      expect(calls).toBe(0);
      // A request within QUIET_MS starts the wait again from its end.
      await svc.run('Count', 'grpc', far, () => 0);
      await vi.advanceTimersByTimeAsync(QUIET_MS - 1);
      expect(calls).toBe(0);
      expect(svc.isQuiet).toBe(false);
      await vi.advanceTimersByTimeAsync(1);
      expect(calls).toBe(1);
      expect(svc.isQuiet).toBe(true);
      await vi.advanceTimersByTimeAsync(10 * QUIET_MS);
      expect(calls).toBe(1); // once per quiet spell
      await svc.run('Count', 'grpc', far, () => 0);
      expect(svc.isQuiet).toBe(false);
      await svc.drain();
      await vi.advanceTimersByTimeAsync(10 * QUIET_MS);
      expect(calls).toBe(1); // shutting down
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('HTTP: every operation', () => {
  it('follows the /v1 contract', async () => {
    const b = h.httpBase;
    let a = await httpJson(b, 'POST', '/v1/collections', { name: 'h1', dim: DIM, metric: 'l2', index: { type: 'flat' }, shards: 2 });
    expect(a.status).toBe(200);
    expect(a.body).toMatchObject({ name: 'h1', dim: DIM, shards: 2, count: 0 });
    expectHttpError(await httpJson(b, 'POST', '/v1/collections', { name: 'h1', dim: DIM, index: { type: 'flat' } }), 409, 'ALREADY_EXISTS');

    a = await httpJson(b, 'GET', '/v1/collections');
    expect(a.body.collections.map((c: any) => c.name)).toContain('h1');
    a = await httpJson(b, 'GET', '/v1/collections/h1');
    expect(a.body).toMatchObject({ name: 'h1', dim: DIM });

    const points = Array.from({ length: 10 }, (_, i) => ({ id: `q${i}`, vector: Array.from(vec(i, DIM)), payload: { i } }));
    a = await httpJson(b, 'POST', '/v1/collections/h1/upsert', { points, idempotencyKey: 'k-1' });
    expect(a.status).toBe(200);
    expect(a.body.upserted).toBe(10);
    expect(typeof a.body.token).toBe('object');

    a = await httpJson(b, 'GET', '/v1/collections/h1/count');
    expect(a.body).toEqual({ count: 10 });

    a = await httpJson(b, 'POST', '/v1/collections/h1/get', { ids: ['q2', 'zz'], withVectors: true, withPayload: true });
    expect(a.body.points).toEqual([{ id: 'q2', vector: Array.from(vec(2, DIM)), payload: { i: 2 } }]);
    a = await httpJson(b, 'POST', '/v1/collections/h1/get', { ids: ['q2'] });
    expect(a.body.points).toEqual([{ id: 'q2' }]);

    a = await httpJson(b, 'POST', '/v1/collections/h1/search', { vector: Array.from(vec(4, DIM)), k: 2, withPayload: true });
    expect(a.status).toBe(200);
    expect(a.body.results.length).toBe(2);
    expect(a.body.results[0]).toMatchObject({ id: 'q4', payload: { i: 4 } });
    expect(a.body.results[0].distance).toBeCloseTo(0, 5);

    a = await httpJson(b, 'POST', '/v1/collections/h1/search', {
      vectors: [Array.from(vec(1, DIM)), Array.from(vec(6, DIM))],
      k: 1,
      filter: { field: 'i', in: [1, 6] },
    });
    expect(a.body.batches.map((x: any[]) => x[0].id)).toEqual(['q1', 'q6']);

    a = await httpJson(b, 'POST', '/v1/collections/h1/delete', { ids: ['q0', 'q1'] });
    expect(a.body.deleted).toBe(2);
    expect((await httpJson(b, 'GET', '/v1/collections/h1/count')).body.count).toBe(8);

    a = await httpJson(b, 'GET', '/v1/cluster');
    expect(a.body.mode).toBe('standalone');
    const self = a.body.nodes.find((n: any) => n.id === a.body.nodeId);
    expect(self).toMatchObject({ grpc: h.server.grpcAddress, http: h.server.httpAddress, alive: true });
    const shards = a.body.shards.filter((s: any) => s.collection === 'h1');
    expect(shards.length).toBe(2);
    for (const s of shards) {
      expect(typeof s.leader).toBe('string');
      expect(typeof s.epoch).toBe('number');
      expect(s.lag).toBe(s.lastLsn - s.appliedLsn);
      // The node is each shard's one replica, its leader.
      expect(s).toMatchObject({ leader: a.body.nodeId, phase: 'active' });
      expect(s.replicas).toEqual([{ node: a.body.nodeId, role: 'leader', durableLsn: s.lastLsn, commitLsn: s.lastLsn, appliedLsn: s.appliedLsn, lagEntries: 0, lagMs: 0 }]);
    }

    a = await httpJson(b, 'DELETE', '/v1/collections/h1');
    expect(a).toEqual({ status: 200, body: {} });
    expectHttpError(await httpJson(b, 'GET', '/v1/collections/h1'), 404, 'NOT_FOUND');
  });

  it('serves /healthz, /readyz, /metrics and the status page', async () => {
    await client.createCollection({ name: 'm1', dim: DIM, index: { type: 'flat' } });
    await client.upsert('m1', [{ id: 'x', vector: vec(1, DIM) }]);
    await client.search('m1', vec(1, DIM), { k: 1 });
    expect((await fetch(`${h.httpBase}/healthz`)).status).toBe(200);
    expect((await fetch(`${h.httpBase}/readyz`)).status).toBe(200);
    const m = await (await fetch(`${h.httpBase}/metrics`)).text();
    expect(m).toMatch(/quiver_requests_total\{op="Upsert",transport="grpc",code="OK"\} \d+/);
    expect(m).toMatch(/quiver_request_duration_seconds_bucket\{[^}]*op="Upsert"[^}]*transport="grpc"/);
    expect(m).toMatch(/quiver_shard_points\{collection="m1",shard="0",leader="[^"]+"\} 1/);
    expect(m).toMatch(/quiver_shard_applied_lsn\{collection="m1"/);
    expect(m).toMatch(/quiver_wal_bytes_written_total\{collection="m1",shard="0"\} [1-9]/);
    expect(m).toMatch(/quiver_wal_fsync_duration_seconds_count\{collection="m1",shard="0"\} [1-9]/);
    // the search lane (process-wide): the search above ran there, and its run time is counted
    expect(m).toMatch(/quiver_search_tasks_total\{runner="lane"\} [1-9]/);
    expect(m).toMatch(/quiver_search_tasks_total\{runner="pool"\} \d+/);
    for (const phase of ['wait', 'run', 'deliver']) expect(m).toMatch(new RegExp(`quiver_search_lane_seconds_total\\{phase="${phase}"\\} \\d`));
    expect(Number(/quiver_search_lane_seconds_total\{phase="run"\} (\S+)/.exec(m)![1])).toBeGreaterThan(0);
    // its settings: the standalone defaults (spin up to 1 ms; polling where the process has 2 CPUs)
    expect(m).toMatch(/quiver_search_lane_spin_max_seconds 0\.001\n/);
    expect(m).toMatch(new RegExp(`quiver_search_lane_poll ${searchLaneStats().poll ? 1 : 0}\n`));
    const page = await fetch(`${h.httpBase}/`);
    expect(page.headers.get('content-type')).toMatch(/text\/html/);
    const html = await page.text();
    expect(html).toContain('<table id="nodes">');
    expect(html).toContain('<td>m1</td>');
    // This node's process: up, the package's version, a resident size and the disk free under its data directory.
    const self = new RegExp(`<tr><td>${h.db.status().nodeId}</td>.*?</tr>`).exec(html)?.[0] ?? '';
    expect(self).toMatch(new RegExp(`<td>up</td><td>${VERSION.replace(/\./g, '\\.')}</td><td>\\d+ s</td><td>[\\d.]+ MiB</td><td>[\\d.]+ [KMGT]iB</td><td>[\\d.]+/s</td><td>[\\d.]+/s</td>`));
    expect(html).toContain('<table id="failovers">');
    expect(html).toContain(`<td>${h.server.grpcAddress}</td>`);
    // Units a person reads: the replica's lag in entries, the WAL in bytes.
    expect(html).toMatch(/<td>0 entries<\/td>/);
    expect(html).toMatch(/<td>\d+(\.\d)? (B|KiB|MiB)<\/td>/);
    await client.dropCollection('m1');
  });

  it('answers unknown routes, wrong methods, bad JSON and oversized bodies with the error shape', async () => {
    const b = h.httpBase;
    expectHttpError(await httpJson(b, 'GET', '/v1/nothing'), 404, 'NOT_FOUND');
    expectHttpError(await httpJson(b, 'GET', '/v2/collections'), 404, 'NOT_FOUND');
    const wrong = await httpJson(b, 'PUT', '/v1/collections');
    expectHttpError(wrong, 405, 'INVALID_ARGUMENT');
    expectHttpError(await httpJson(b, 'GET', '/v1/collections/x/upsert'), 405, 'INVALID_ARGUMENT');
    expectHttpError(await httpJson(b, 'POST', '/v1/collections', '{"name": "x", '), 400, 'INVALID_ARGUMENT');
    expectHttpError(await httpJson(b, 'POST', '/v1/collections', '[1,2]'), 400, 'INVALID_ARGUMENT');
    expectHttpError(await httpJson(b, 'POST', '/v1/collections', { name: 'x' }), 400, 'INVALID_ARGUMENT');
    expectHttpError(await httpJson(b, 'GET', '/v1/collections/x/count', undefined, { 'x-quiver-timeout-ms': 'soon' }), 400, 'INVALID_ARGUMENT');

    // A body declared larger than requestBytesMax is refused before it is read.
    const answer = await new Promise<{ status: number; body: any }>((resolve, reject) => {
      const req = http.request(`${b}/v1/collections`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': String(requestBytesMax + 1) },
      });
      req.on('response', (res) => {
        let text = '';
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      });
      req.on('error', reject);
      req.write('{"name": "big", "dim": 4, "pad": "');
    });
    expectHttpError(answer, 413, 'RESOURCE_EXHAUSTED');
    expect((await httpJson(b, 'GET', '/v1/collections')).body.collections.map((c: any) => c.name)).not.toContain('big');
  });
});

describe('bad input through both transports: typed errors, state unchanged', () => {
  const C = 'bad';
  let lsnBefore: number;

  beforeAll(async () => {
    await client.createCollection({ name: C, dim: DIM, index: { type: 'flat' } });
    await client.upsert(C, [0, 1, 2].map((i) => ({ id: `p${i}`, vector: vec(i, DIM), payload: { i } })));
    lsnBefore = lastLsn();
  });

  function lastLsn(): number {
    return h.db.status().shards.filter((s) => s.collection === C).reduce((a, s) => a + s.lastLsn, 0);
  }

  async function expectUnchanged(): Promise<void> {
    expect(await client.count(C)).toBe(3);
    const got = await client.get(C, ['p0', 'p1', 'p2', 'n0', 'n1', '', 'x'.repeat(10)].filter(Boolean), { withVectors: true, withPayload: true });
    expect(got.map((p) => p.id).sort()).toEqual(['p0', 'p1', 'p2']);
    for (const p of got) {
      const i = Number(p.id.slice(1));
      expect(Array.from(p.vector!)).toEqual(Array.from(vec(i, DIM)));
      expect(p.payload).toEqual({ i });
    }
    expect(lastLsn()).toBe(lsnBefore);
  }

  const up = (points: { id: string; vector: Float32Array; payload?: Record<string, unknown> }[]) => client.upsert(C, points);
  const httpUp = (points: unknown[]) => httpJson(h.httpBase, 'POST', `/v1/collections/${C}/upsert`, { points });
  const good = { id: 'n0', vector: vec(9, DIM) };
  const goodJson = { id: 'n0', vector: Array.from(vec(9, DIM)) };

  it('wrong dimension', async () => {
    await expectCode(up([good, { id: 'n1', vector: new Float32Array(DIM + 1) }]), 'INVALID_ARGUMENT');
    expectHttpError(await httpUp([goodJson, { id: 'n1', vector: [1, 2, 3] }]), 400, 'INVALID_ARGUMENT');
    await expectCode(client.search(C, new Float32Array(DIM - 1), { k: 1 }), 'INVALID_ARGUMENT');
    expectHttpError(await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/search`, { vector: [1, 2], k: 1 }), 400, 'INVALID_ARGUMENT');
    // A vector twice as long must not be taken as two queries.
    expectHttpError(await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/search`, { vector: new Array(2 * DIM).fill(0), k: 1 }), 400, 'INVALID_ARGUMENT');
    await expectUnchanged();
  });

  it('upsert in columns (ids, vectors, payload_jsons): malformed batches are refused whole', async () => {
    const f32 = (xs: number[]) => Buffer.from(new Float32Array(xs).buffer);
    const cases: RequestInit<'upsert'>[] = [
      { ids: ['c1', 'c2'], vectors: f32([1, 2, 3, 4, 5, 6, 7]) }, // 7 floats for 2 x 4
      { ids: ['c1'], vectors: f32([1, 2, 3, 4, 5, 6, 7, 8]) }, // two rows for one id
      { ids: ['c1', 'c2'], vectors: f32([1, 2, 3, 4, 5, 6, 7, 8]), payloadJsons: ['{}'] }, // payloads for 1 of 2
      { ids: ['c1', 'c2'], vectors: f32([1, 2, 3, 4, 5, 6, 7, NaN]) },
      { ids: ['c1', 'c1'], vectors: f32([1, 2, 3, 4, 5, 6, 7, 8]) }, // duplicate id
      { ids: ['c1', 'c2'], vectors: f32([1, 2, 3, 4, 5, 6, 7, 8]), payloadJsons: ['{}', '{"a":'] },
      { ids: ['c1', 'c2'], vectors: f32([1, 2, 3, 4, 5, 6, 7, 8]), payloadJsons: ['{}', '[1]'] }, // not an object
      { ids: ['c1'], vectors: f32([1, 2, 3, 4]), points: [{ id: 'c2', vector: { values: [1, 2, 3, 4] } }] }, // both forms
      { vectors: f32([1, 2, 3, 4]) }, // no ids
    ];
    for (const c of cases) {
      const raw = await rawCall(h.server.grpcAddress, 'upsert', { collection: C, ...c });
      expect(raw.code, JSON.stringify(Object.keys(c))).toBe(grpc.status.INVALID_ARGUMENT);
      expect(raw.quiverCode).toBe('INVALID_ARGUMENT');
    }
    await expectUnchanged();
  });

  it('NaN and non-numbers in a vector', async () => {
    await expectCode(up([good, { id: 'n1', vector: new Float32Array([1, NaN, 0, 0]) }]), 'INVALID_ARGUMENT');
    await expectCode(up([{ id: 'n1', vector: new Float32Array([1, Infinity, 0, 0]) }]), 'INVALID_ARGUMENT');
    const raw = await rawCall(h.server.grpcAddress, 'upsert', { collection: C, points: [{ id: 'n1', vector: { values: [NaN, 1, 2, 3] } }] });
    expect(raw.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(raw.quiverCode).toBe('INVALID_ARGUMENT');
    expectHttpError(await httpUp([goodJson, { id: 'n1', vector: [1, null, 2, 3] }]), 400, 'INVALID_ARGUMENT');
    expectHttpError(await httpUp([{ id: 'n1', vector: [1, '2', 2, 3] }]), 400, 'INVALID_ARGUMENT');
    expectHttpError(await httpUp([{ id: 'n1', vector: 'abcd' }]), 400, 'INVALID_ARGUMENT');
    await expectCode(client.search(C, new Float32Array([NaN, 0, 0, 0]), { k: 1 }), 'INVALID_ARGUMENT');
    expectHttpError(await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/search`, { vector: [0, null, 0, 0], k: 1 }), 400, 'INVALID_ARGUMENT');
    await expectUnchanged();
  });

  it('empty or too-long id', async () => {
    const long = 'x'.repeat(idBytesMax + 1);
    const longUtf8 = 'é'.repeat(idBytesMax / 2 + 1); // 2 bytes each: over the byte limit, under it in characters
    for (const id of ['', long, longUtf8]) {
      await expectCode(up([good, { id, vector: vec(1, DIM) }]), 'INVALID_ARGUMENT');
      expectHttpError(await httpUp([goodJson, { id, vector: [0, 0, 0, 0] }]), 400, 'INVALID_ARGUMENT');
      await expectCode(client.delete(C, ['p0', id]), 'INVALID_ARGUMENT');
      expectHttpError(await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/delete`, { ids: ['p0', id] }), 400, 'INVALID_ARGUMENT');
      await expectCode(client.get(C, [id]), 'INVALID_ARGUMENT');
    }
    expectHttpError(await httpUp([{ id: 7, vector: [0, 0, 0, 0] }]), 400, 'INVALID_ARGUMENT');
    await expectUnchanged();
  });

  it('oversized batch and payload', async () => {
    const many = Array.from({ length: batchPointsMax + 1 }, (_, i) => ({ id: `b${i}`, vector: vec(i, DIM) }));
    await expectCode(up(many), 'INVALID_ARGUMENT');
    expectHttpError(await httpUp(many.map((p) => ({ id: p.id, vector: Array.from(p.vector) }))), 400, 'INVALID_ARGUMENT');
    const manyIds = many.map((p) => p.id);
    await expectCode(client.delete(C, manyIds), 'INVALID_ARGUMENT');
    expectHttpError(await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/delete`, { ids: manyIds }), 400, 'INVALID_ARGUMENT');

    const big = { blob: 'x'.repeat(payloadBytesMax) };
    await expectCode(up([good, { id: 'n1', vector: vec(1, DIM), payload: big }]), 'INVALID_ARGUMENT');
    expectHttpError(await httpUp([goodJson, { id: 'n1', vector: [0, 0, 0, 0], payload: big }]), 400, 'INVALID_ARGUMENT');
    // A payload must be an object.
    expectHttpError(await httpUp([{ id: 'n1', vector: [0, 0, 0, 0], payload: [1, 2] }]), 400, 'INVALID_ARGUMENT');
    const raw = await rawCall(h.server.grpcAddress, 'upsert', { collection: C, points: [{ id: 'n1', vector: { values: [0, 0, 0, 0] }, payloadJson: '{"a":' }] });
    expect(raw.quiverCode).toBe('INVALID_ARGUMENT');
    // A gRPC message over requestBytesMax is refused by the transport.
    const huge = await rawCall(h.server.grpcAddress, 'upsert', {
      collection: C,
      points: [{ id: 'n1', vector: { values: [0, 0, 0, 0] }, payloadJson: JSON.stringify({ blob: 'x'.repeat(requestBytesMax) }) }],
    });
    expect(huge.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    await expectUnchanged();
  });

  it('unknown collection', async () => {
    await expectCode(client.upsert('nope', [good]), 'NOT_FOUND');
    expectHttpError(await httpJson(h.httpBase, 'POST', '/v1/collections/nope/upsert', { points: [goodJson] }), 404, 'NOT_FOUND');
    await expectCode(client.search('nope', vec(0, DIM), { k: 1 }), 'NOT_FOUND');
    expectHttpError(await httpJson(h.httpBase, 'POST', '/v1/collections/nope/search', { vector: goodJson.vector, k: 1 }), 404, 'NOT_FOUND');
    await expectCode(client.delete('nope', ['p0']), 'NOT_FOUND');
    await expectCode(client.count('nope'), 'NOT_FOUND');
    expectHttpError(await httpJson(h.httpBase, 'GET', '/v1/collections/nope/count'), 404, 'NOT_FOUND');
    await expectCode(client.get('nope', ['p0']), 'NOT_FOUND');
    await expectUnchanged();
  });

  it('malformed filter', async () => {
    const bad: unknown[] = [
      { field: 'i', foo: 1 },
      { field: 'i', eq: { nested: true } },
      { and: [] },
      { and: [{ field: 'i', eq: 1 }], or: [] },
      { field: 'i', range: { gt: 'a' } },
      { field: 'i', in: 'red' },
      'i = 1',
      { not: { not: { not: { not: { not: { not: { not: { not: { not: { not: { not: { not: { not: { not: { not: { not: { not: { field: 'i', eq: 1 } } } } } } } } } } } } } } } } } },
    ];
    for (const filter of bad) {
      await expectCode(client.search(C, vec(0, DIM), { k: 1, filter: filter as any }), 'INVALID_ARGUMENT');
      expectHttpError(await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/search`, { vector: goodJson.vector, k: 1, filter }), 400, 'INVALID_ARGUMENT');
    }
    const raw = await rawCall(h.server.grpcAddress, 'search', { collection: C, vector: { values: [0, 0, 0, 0] }, options: { k: 1, filterJson: '{"field": ' } });
    expect(raw.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(raw.quiverCode).toBe('INVALID_ARGUMENT');
    await expectUnchanged();
  });

  it('k out of range', async () => {
    for (const k of [0, -1, topKMax + 1, 1.5]) {
      await expectCode(client.search(C, vec(0, DIM), { k }), 'INVALID_ARGUMENT');
      await expectCode(client.searchBatch(C, [vec(0, DIM)], { k }), 'INVALID_ARGUMENT');
      expectHttpError(await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/search`, { vector: goodJson.vector, k }), 400, 'INVALID_ARGUMENT');
    }
    expectHttpError(await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/search`, { vector: goodJson.vector }), 400, 'INVALID_ARGUMENT');
    expectHttpError(await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/search`, { vector: goodJson.vector, k: 1, ef: 0 }), 400, 'INVALID_ARGUMENT');
    // a read token whose LSN or epoch is not a whole number >= 0 is the caller's error, not an encoding failure
    for (const lsn of [-1, 1.5, Number.MAX_SAFE_INTEGER + 2]) {
      await expectCode(client.search(C, vec(0, DIM), { k: 1, token: { '0': { epoch: 1, lsn } } }), 'INVALID_ARGUMENT');
      await expectCode(client.searchBatch(C, [vec(0, DIM)], { k: 1, token: { '0': { epoch: lsn, lsn: 1 } } }), 'INVALID_ARGUMENT');
      expectHttpError(await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/search`, { vector: goodJson.vector, k: 1, token: { '0': { epoch: 1, lsn } } }), 400, 'INVALID_ARGUMENT');
    }
    for (const bad of [{ consistency: 'strong' }, { consistency: 'bounded', maxLagMs: -5 }, { token: { '0': { lsn: 1, term: 2 } } }, { token: { '9': { lsn: 1 } } }, { token: [1] }]) {
      expectHttpError(await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/search`, { vector: goodJson.vector, k: 1, ...bad }), 400, 'INVALID_ARGUMENT');
      expectHttpError(await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/get`, { ids: ['a'], ...bad }), 400, 'INVALID_ARGUMENT');
    }
    expectHttpError(await httpJson(h.httpBase, 'GET', `/v1/collections/${C}/count?consistency=sometimes`), 400, 'INVALID_ARGUMENT');
    expectHttpError(await httpJson(h.httpBase, 'GET', `/v1/collections/${C}/count?token=%7B`), 400, 'INVALID_ARGUMENT');
    await expectCode(client.count(C, { consistency: 'strong' as never }), 'INVALID_ARGUMENT');
    await expectCode(client.get(C, ['a'], { maxLagMs: -1 }), 'INVALID_ARGUMENT');
    await expectUnchanged();
  });
});

describe('a vector without direction (zeros, or shorter than 1/FLT_MAX) under cosine is refused, as a point and as a query, over both transports', () => {
  const zero = new Float32Array(DIM);
  const kinds = [
    { type: 'flat' },
    { type: 'hnsw' },
    { type: 'ivfpq', nlist: 2, m: 2 },
  ] as const;

  for (const index of kinds) {
    it(`${index.type}: INVALID_ARGUMENT, nothing written; the same vectors under l2 are taken`, async () => {
      const C = `zero-${index.type}`;
      await client.createCollection({ name: C, dim: DIM, metric: 'cosine', index });
      await client.upsert(C, [{ id: 'p0', vector: vec(0, DIM) }]);
      const lsn = () => h.db.status().shards.filter((s) => s.collection === C).reduce((a, s) => a + s.lastLsn, 0);
      const before = lsn();
      const search = (body: unknown) => httpJson(h.httpBase, 'POST', `/v1/collections/${C}/search`, body);

      // Points: the client's columns, gRPC points, HTTP; a zero row after a good one refuses the batch.
      await expectCode(client.upsert(C, [{ id: 'n0', vector: vec(1, DIM) }, { id: 'n1', vector: zero }]), 'INVALID_ARGUMENT');
      await expectCode(client.upsert(C, [{ id: 'n1', vector: new Float32Array([0, 1e-40, 0, 1e-45]) }]), 'INVALID_ARGUMENT'); // |x| < 1/FLT_MAX
      const raw = await rawCall(h.server.grpcAddress, 'upsert', { collection: C, points: [{ id: 'n1', vector: { values: [0, 0, -0, 0] } }] });
      expect(raw.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(raw.quiverCode).toBe('INVALID_ARGUMENT');
      expectHttpError(
        await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/upsert`, { points: [{ id: 'n0', vector: Array.from(vec(1, DIM)) }, { id: 'n1', vector: [0, 0, 0, 0] }] }),
        400,
        'INVALID_ARGUMENT',
      );
      // Queries: gRPC Search and SearchBatch, HTTP one query and a batch.
      await expectCode(client.search(C, zero, { k: 1 }), 'INVALID_ARGUMENT');
      await expectCode(client.searchBatch(C, [vec(1, DIM), zero], { k: 1 }), 'INVALID_ARGUMENT');
      expectHttpError(await search({ vector: [0, 0, 0, 0], k: 1 }), 400, 'INVALID_ARGUMENT');
      expectHttpError(await search({ vector: [1e-40, 0, 0, 0], k: 1 }), 400, 'INVALID_ARGUMENT');
      expectHttpError(await search({ vectors: [Array.from(vec(1, DIM)), [0, 0, 0, 0]], k: 1 }), 400, 'INVALID_ARGUMENT');

      expect(lsn()).toBe(before);
      expect((await client.get(C, ['p0', 'n0', 'n1'])).map((p) => p.id)).toEqual(['p0']);
      // A vector with some zeros has a direction; under l2 a zero vector is an ordinary point.
      expect((await client.search(C, new Float32Array([0, 0, 0, 1e-30]), { k: 1 })).length).toBe(1);
      const L = `zero-l2-${index.type}`;
      await client.createCollection({ name: L, dim: DIM, metric: 'l2', index });
      await client.upsert(L, [{ id: 'z', vector: zero }]);
      expect((await client.search(L, zero, { k: 1 }))[0]).toMatchObject({ id: 'z', distance: 0 });
    });
  }
});
