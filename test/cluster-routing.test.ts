/**
 * Seeing a cluster and routing writes to it, on one cluster of real processes shared by the tests
 * (etcd, three `quiver serve --etcd` nodes with their sidecars): ClusterStatus and GET /v1/cluster
 * from every node, the client's shard-aware writes (a one-shard write to its leader with no forward
 * hop, a batch across shards whole to its coordinator's leader), a client whose routes are stale,
 * NOT_LEADER's details over HTTP and gRPC. NOT_LEADER's encoding by both gRPC servers is
 * also checked on a standalone node whose database refuses writes with it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClusterStatus, QuiverClient, QuiverError } from '../src/client';
import { shardOf } from '../src/common/placement';
import { requestBytesMax } from '../src/common/limits';
import { GRPC_STATUS, quiverMethods } from '../src/rpc/proto';
import { GrpcChannel } from '../src/rpc/grpc-client';
import { openDatabase } from '../src/query';
import { startServer } from '../src/server';
import { EtcdServer } from './etcd-harness';
import type { ServeChild } from './serve-child';
import { metricSum, startClusterNode, waitFor } from './cluster-harness';
import { httpJson, rawCall, tempDir } from './server-harness';
import { expectCode } from './helpers';

const DIM = 8;
const SHARDS = 3;
const C = 'rt';

interface Node {
  id: string;
  child: ServeChild;
}

function vectorOf(i: number): Float32Array {
  return Float32Array.from({ length: DIM }, (_, d) => Math.cos(i * 0.53 + d));
}

/** Points i in [from, to). */
function batchOf(from: number, to: number): { id: string; vector: Float32Array; payload: { i: number } }[] {
  return Array.from({ length: to - from }, (_, j) => ({ id: `q${from + j}`, vector: vectorOf(from + j), payload: { i: from + j } }));
}

/** Points from `from` on whose ids fall in shard s, n of them. */
function inShard(s: number, n: number, from = 0): ReturnType<typeof batchOf> {
  const out: ReturnType<typeof batchOf> = [];
  for (let i = from; out.length < n; i++) if (shardOf(`q${i}`, SHARDS) === s) out.push(...batchOf(i, i + 1));
  return out;
}

const metric = (n: Node, name: string, labels: Record<string, string> = {}): Promise<number> => metricSum(n.child.http, name, labels);

type ClusterJson = Omit<ClusterStatus, 'shards'> & { shards: (ClusterStatus['shards'][number] & { lag: number })[] };

describe('a cluster of three nodes: status and routing', () => {
  let etcd: EtcdServer;
  const nodes: Node[] = [];
  const clients: QuiverClient[] = [];
  /** What the last wait saw (printed when it times out). */
  let seen = '';

  const clusterJson = async (n: Node): Promise<ClusterJson> => {
    const r = await httpJson(n.child.http, 'GET', '/v1/cluster');
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    seen = JSON.stringify(r.body);
    return r.body;
  };
  const byId = (id: string): Node => nodes.find((n) => n.id === id)!;
  const connect = async (n: Node, opts: Parameters<typeof QuiverClient.connect>[1] = {}): Promise<QuiverClient> => {
    const c = await QuiverClient.connect(n.child.grpc, { consistency: 'linearizable', ...opts });
    clients.push(c);
    return c;
  };
  const forwarded = async (): Promise<number> => (await Promise.all(nodes.map((n) => metric(n, 'quiver_forwarded_writes_total')))).reduce((a, b) => a + b, 0);
  const upserts = async (code: string): Promise<number[]> => Promise.all(nodes.map((n) => metric(n, 'quiver_requests_total', { op: 'Upsert', transport: 'grpc', code })));
  /** Each shard of the collection's leader, as node n's status says. */
  const leaders = async (n: Node): Promise<string[]> => (await clusterJson(n)).shards.filter((s) => s.collection === C).map((s) => s.leader);

  beforeAll(async () => {
    etcd = await EtcdServer.start();
    for (const id of ['n1', 'n2', 'n3']) nodes.push({ id, child: await startClusterNode(etcd, id, tempDir(`quiver-${id}-`), 'routing') });
    await waitFor(async () => (await clusterJson(nodes[0])).nodes.filter((n) => n.alive).length === 3, 'three live nodes', 60_000, () => seen);
    const created = await httpJson(nodes[0].child.http, 'POST', '/v1/collections', { name: C, dim: DIM, shards: SHARDS, replicationFactor: 3, index: { type: 'flat' } });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    // Every node has every shard's map, with a leader.
    for (const n of nodes) {
      await waitFor(
        async () => {
          const shards = (await clusterJson(n)).shards.filter((s) => s.collection === C);
          return shards.length === SHARDS && shards.every((s) => s.phase === 'active' && s.leader !== '' && s.replicas.length === 3);
        },
        `${n.id} to know every shard's leader`,
        60_000,
        () => seen,
      );
    }
  }, 180_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    for (const n of nodes) if (n.child.child.exitCode === null) process.kill(n.child.child.pid!, 'SIGKILL');
    await Promise.all(nodes.map((n) => n.child.exited));
    await etcd?.stop();
  });

  it("GET /v1/cluster and ClusterStatus on every node show every node and shard, with each shard's leader, epoch, phase and each replica's positions and lag", async () => {
    const client = await connect(nodes[0]);
    await client.upsert(C, batchOf(0, 60));
    // A follower of shard 0 whose sidecar stops: the leader sees it fall behind, in entries and time.
    const shard0 = (await clusterJson(nodes[0])).shards.find((s) => s.collection === C && s.shard === 0)!;
    const follower = byId(shard0.replicas.find((r) => r.node !== shard0.leader)!.node);
    const sidecar = Number(/sidecar pid (\d+)/.exec(follower.child.output())![1]);
    process.kill(sidecar, 'SIGSTOP');
    try {
      await client.upsert(C, inShard(0, 5, 1000));
      for (const n of nodes) {
        await waitFor(
          async () => {
            const r = (await clusterJson(n)).shards.find((s) => s.collection === C && s.shard === 0)!.replicas.find((x) => x.node === follower.id)!;
            return (r.lagEntries ?? 0) >= 1 && (r.lagMs ?? 0) > 0;
          },
          `${n.id} to show ${follower.id} behind on shard 0`,
          30_000,
          () => seen,
        );
      }
      const page = await (await fetch(`${nodes[1].child.http}/`)).text();
      expect(page).toMatch(/\d+ entr(y|ies), \d+(\.\d)? m?s/);
    } finally {
      process.kill(sidecar, 'SIGCONT');
    }

    // Caught up: every replica of every shard at lag 0, on every node's view.
    for (const n of nodes) {
      await waitFor(
        async () =>
          (await clusterJson(n)).shards
            .filter((s) => s.collection === C)
            .every((s) => s.replicas.every((r) => r.lagEntries === 0 && r.lagMs === 0 && r.appliedLsn === s.replicas.find((x) => x.node === s.leader)!.commitLsn)),
        `${n.id} to show every replica caught up`,
        60_000,
        () => seen,
      );
    }
    const expected = await leaders(nodes[0]);
    for (const n of nodes) {
      const st = await clusterJson(n);
      expect(st.mode).toBe('cluster');
      expect(st.nodeId).toBe(n.id);
      expect(st.nodes).toEqual(nodes.map((x) => ({ id: x.id, grpc: x.child.grpc, http: x.child.http.replace('http://', ''), alive: true })));
      const shards = st.shards.filter((s) => s.collection === C);
      expect(shards.map((s) => s.shard)).toEqual([0, 1, 2]);
      expect(shards.map((s) => s.leader)).toEqual(expected);
      for (const s of shards) {
        expect(s.epoch).toBeGreaterThanOrEqual(1);
        expect(s.phase).toBe('active');
        expect(s.replicas.map((r) => r.node).sort()).toEqual(['n1', 'n2', 'n3']);
        for (const r of s.replicas) {
          expect(r.role).toBe(r.node === s.leader ? 'leader' : 'follower');
          expect(r.durableLsn).toBeGreaterThanOrEqual(2); // the epoch start, then a write
          expect(r.commitLsn).toBe(r.durableLsn);
        }
        // This node's own replica in the flat fields.
        const own = s.replicas.find((r) => r.node === n.id)!;
        expect(s.lastLsn).toBe(own.durableLsn);
        expect(s.lag).toBe(0);
      }
      // The same over gRPC.
      const viaGrpc = await (await connect(n)).status();
      expect(viaGrpc.nodes).toEqual(st.nodes);
      const placed = (list: ClusterStatus['shards']): unknown => list.map(({ collection, shard, leader, epoch, phase, replicas }) => ({ collection, shard, leader, epoch, phase, replicas }));
      expect(placed(viaGrpc.shards)).toEqual(placed(st.shards));
    }
    // leadersOnly: the maps as the node asked knows them, no positions gathered from the others.
    const brief = await client.status({ leadersOnly: true });
    const s1 = brief.shards.find((s) => s.collection === C && s.shard === 1)!;
    expect(s1.leader).toBe(expected[1]);
    expect(s1.replicas.every((r) => r.role === (r.node === s1.leader ? 'leader' : 'follower'))).toBe(true);
    expect(s1.replicas.filter((r) => r.node !== nodes[0].id).every((r) => r.durableLsn === undefined)).toBe(true);
  }, 180_000);

  it("the client sends a write within one shard to its leader with no forward hop, and a batch across shards whole to its first id's shard's leader; writes the client does not route are forwarded", async () => {
    const routed = await connect(nodes[0]);
    const lead = await leaders(nodes[0]);
    const fwdBefore = await forwarded();
    let before = await upserts('OK');
    const deltas = async (): Promise<number[]> => {
      const after = await upserts('OK');
      const d = after.map((x, i) => x - before[i]);
      before = after;
      return d;
    };
    // One shard's batch: one Upsert, on that shard's leader; nothing forwarded.
    for (let s = 0; s < SHARDS; s++) {
      expect((await routed.upsert(C, inShard(s, 20, 2000))).upserted).toBe(20);
      expect(await deltas()).toEqual(nodes.map((n) => (n.id === lead[s] ? 1 : 0)));
    }
    expect((await routed.delete(C, inShard(1, 5, 2000).map((p) => p.id))).deleted).toBe(5);
    expect(await forwarded()).toBe(fwdBefore);
    // A batch across shards: one Upsert, whole, on the leader of its first id's shard (the coordinator).
    const pts = batchOf(2500, 2800);
    expect(new Set(pts.map((p) => shardOf(p.id, SHARDS))).size).toBe(SHARDS);
    const first = shardOf(pts[0].id, SHARDS);
    const wrote = await routed.upsert(C, pts);
    expect(wrote.upserted).toBe(300);
    expect(Object.keys(wrote.token).sort()).toEqual(['0', '1', '2']);
    expect(await deltas()).toEqual(nodes.map((n) => (n.id === lead[first] ? 1 : 0)));
    const got = await routed.get(C, pts.map((p) => p.id), { withPayload: true });
    expect(got.map((p) => p.payload)).toEqual(pts.map((p) => p.payload));

    // Without routing, the node the client talks to forwards the writes to shards it does not lead.
    const plain = await connect(nodes[0], { routing: false });
    const notLed = lead.filter((l) => l !== nodes[0].id).length;
    const fwd0 = await metric(nodes[0], 'quiver_forwarded_writes_total', { collection: C });
    for (let s = 0; s < SHARDS; s++) expect((await plain.upsert(C, inShard(s, 20, 3000))).upserted).toBe(20);
    expect((await metric(nodes[0], 'quiver_forwarded_writes_total', { collection: C })) - fwd0).toBe(notLed);
    expect(await routed.count(C)).toBe(60 + 5 + 3 * 20 - 5 + 300 + 3 * 20);
  }, 120_000);

  it('a client whose routes name the wrong leaders gets NOT_LEADER with the leader for a write within one shard, follows it, and its write succeeds; a batch across shards is taken where it lands', async () => {
    const st = await (await connect(nodes[0])).status({ leadersOnly: true });
    // Every shard's leader swapped for one of its followers.
    const stale: ClusterStatus = {
      ...st,
      shards: st.shards.map((s) => (s.collection === C ? { ...s, leader: s.replicas.find((r) => r.node !== s.leader)!.node } : s)),
    };
    const client = await connect(nodes[1], { routes: stale });
    const refusedBefore = (await upserts('NOT_LEADER')).reduce((a, b) => a + b, 0);
    const fwdBefore = await forwarded();
    const pts = [0, 1, 2].flatMap((s) => inShard(s, 30, 4000));
    for (let s = 0; s < SHARDS; s++) expect((await client.upsert(C, pts.slice(30 * s, 30 * (s + 1)))).upserted).toBe(30);
    // Each write was refused once by the node the stale routes named, then went to its leader.
    expect((await upserts('NOT_LEADER')).reduce((a, b) => a + b, 0) - refusedBefore).toBe(SHARDS);
    expect(await forwarded()).toBe(fwdBefore);
    const got = await client.get(C, pts.map((p) => p.id), { withPayload: true });
    expect(got.map((p) => p.payload)).toEqual(pts.map((p) => p.payload));
    // A batch across shards goes without expect_leader: the node the stale routes name takes it.
    const across = batchOf(4500, 4590);
    expect((await (await connect(nodes[1], { routes: stale })).upsert(C, across)).upserted).toBe(90);
    expect((await upserts('NOT_LEADER')).reduce((a, b) => a + b, 0) - refusedBefore).toBe(SHARDS);
    expect((await client.get(C, across.map((p) => p.id))).length).toBe(90);
  }, 60_000);

  it('a batch across shards keeps the semantics of its idempotency key and of bad input (the node it goes to checks it whole)', async () => {
    const client = await connect(nodes[2]);
    const b1 = batchOf(5000, 5060);
    const first = await client.upsert(C, b1, { idempotencyKey: 'split-key' });
    expect(Object.keys(first.token).sort()).toEqual(['0', '1', '2']);
    // The same batch again under the key: the first answer, nothing written again.
    expect(await client.upsert(C, b1, { idempotencyKey: 'split-key' })).toEqual(first);
    // Another batch under it, equal to the first but for one point: refused on every shard, also on those whose part is unchanged.
    const b2 = b1.map((p, i) => (i === 7 ? { ...p, payload: { i: -1 } } : p));
    await expectCode(client.upsert(C, b2, { idempotencyKey: 'split-key' }), 'FAILED_PRECONDITION');
    expect((await client.get(C, [b1[7].id], { withPayload: true }))[0].payload).toEqual({ i: 5007 });
    // The same key sent without routing (to a node that splits it) is the same request.
    expect(await (await connect(nodes[0], { routing: false })).upsert(C, b1, { idempotencyKey: 'split-key' })).toEqual(first);
    // A bad point refuses the whole batch: nothing is written on any shard.
    const countBefore = await client.count(C);
    const sentBefore = await upserts('OK');
    const bad = batchOf(6000, 6060);
    bad[37].vector[3] = NaN;
    const err = (await client.upsert(C, bad).catch((e: unknown) => e)) as QuiverError;
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toMatch(/points\[37\]\.vector\[3\] is NaN/);
    expect(await client.count(C)).toBe(countBefore);
    expect(await upserts('OK')).toEqual(sentBefore);
  }, 60_000);

  it("NOT_LEADER names the leader and its addresses over HTTP and gRPC (a write that expects the node to lead it)", async () => {
    const st = await clusterJson(nodes[0]);
    const shard = st.shards.find((s) => s.collection === C && s.shard === 2)!;
    const leader = byId(shard.leader);
    const other = nodes.find((n) => n.id !== shard.leader)!;
    const details = { leader: leader.id, leaderGrpc: leader.child.grpc, leaderHttp: leader.child.http.replace('http://', '') };
    const pts = inShard(2, 3, 7000);

    const viaHttp = await httpJson(other.child.http, 'POST', `/v1/collections/${C}/upsert`, { points: pts.map((p) => ({ id: p.id, vector: Array.from(p.vector) })), expectLeader: true });
    expect(viaHttp.status).toBe(421);
    expect(viaHttp.body.error).toMatchObject({ code: 'NOT_LEADER', details });

    const raw = await rawCall(other.child.grpc, 'delete', { collection: C, ids: pts.map((p) => p.id), expectLeader: true });
    expect(raw.code).toBe(GRPC_STATUS.FAILED_PRECONDITION);
    expect(raw.quiverCode).toBe('NOT_LEADER');
    expect(raw.trailers).toMatchObject({ 'quiver-leader': details.leader, 'quiver-leader-grpc': details.leaderGrpc, 'quiver-leader-http': details.leaderHttp });

    const ch = new GrpcChannel(other.child.grpc, requestBytesMax);
    try {
      const e = (await ch.unary(quiverMethods.delete, { collection: C, ids: pts.map((p) => p.id), expectLeader: true }, Date.now() + 10_000).catch((x: unknown) => x)) as QuiverError;
      expect(e.code).toBe('NOT_LEADER');
      expect(e.details).toEqual(details);
    } finally {
      ch.close();
    }
    // Sent to the leader, the same write is taken.
    expect((await httpJson(leader.child.http, 'POST', `/v1/collections/${C}/delete`, { ids: pts.map((p) => p.id), expectLeader: true })).status).toBe(200);
  }, 60_000);
});

describe('the routing fields of a write on a standalone node', () => {
  it('are taken (it leads every shard); malformed ones are INVALID_ARGUMENT and write nothing', async () => {
    const db = await openDatabase({ dataDir: tempDir('quiver-routing-fields-'), snapshotIntervalMs: 0 });
    await db.createCollection({ name: 'c', dim: 2, shards: 2, index: { type: 'flat' } });
    const server = await startServer({ db, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: { error: () => {} } });
    try {
      const points = [{ id: 'a', vector: { values: [1, 0] } }];
      const hash = new Uint8Array(16).fill(7);
      expect((await rawCall(server.grpcAddress, 'upsert', { collection: 'c', points, idempotencyKey: 'k', expectLeader: true, requestHash: hash })).code).toBe(0);
      // The key stands for the hash given: the same request under it with another hash is another request.
      expect((await rawCall(server.grpcAddress, 'upsert', { collection: 'c', points, idempotencyKey: 'k', requestHash: new Uint8Array(16).fill(8) })).quiverCode).toBe('FAILED_PRECONDITION');
      expect((await rawCall(server.grpcAddress, 'upsert', { collection: 'c', points, idempotencyKey: 'k2', requestHash: new Uint8Array(15) })).quiverCode).toBe('INVALID_ARGUMENT');
      expect((await rawCall(server.grpcAddress, 'delete', { collection: 'c', ids: ['a'], requestHash: hash })).quiverCode).toBe('INVALID_ARGUMENT');
      const http = `http://${server.httpAddress}`;
      expect((await httpJson(http, 'POST', '/v1/collections/c/delete', { ids: ['a'], expectLeader: 'yes' })).body.error.code).toBe('INVALID_ARGUMENT');
      expect(await db.count('c')).toBe(1);
      expect((await httpJson(http, 'POST', '/v1/collections/c/delete', { ids: ['a'], expectLeader: true })).body.deleted).toBe(1);
    } finally {
      await server.close();
      await db.close();
    }
  });
});

describe("NOT_LEADER's details on both gRPC servers and HTTP (a standalone node whose database refuses with it)", () => {
  const details = { leader: 'n2', leaderGrpc: '127.0.0.1:7410', leaderHttp: '127.0.0.1:7411' };

  for (const grpcImpl of ['quiver', 'grpc-js'] as const) {
    it(`--grpc-impl ${grpcImpl}`, async () => {
      const db = await openDatabase({ dataDir: tempDir('quiver-notleader-'), snapshotIntervalMs: 0 });
      await db.createCollection({ name: 'c', dim: 2, index: { type: 'flat' } });
      const refuse = (): Promise<never> => Promise.reject(new QuiverError('NOT_LEADER', 'shard c/0 is led by node n2', details));
      db.upsert = refuse;
      db.upsertColumns = refuse;
      const server = await startServer({ db, grpc: '127.0.0.1:0', http: '127.0.0.1:0', grpcImpl, log: { error: () => {} } });
      const client = await QuiverClient.connect(server.grpcAddress, { routing: false });
      try {
        const e = (await client.upsert('c', [{ id: 'a', vector: new Float32Array([1, 0]) }]).catch((x: unknown) => x)) as QuiverError;
        expect(e.code).toBe('NOT_LEADER');
        expect(e.details).toEqual(details);
        const raw = await rawCall(server.grpcAddress, 'upsert', { collection: 'c', points: [{ id: 'a', vector: { values: [1, 0] } }] });
        expect(raw.quiverCode).toBe('NOT_LEADER');
        expect(raw.trailers).toMatchObject({ 'quiver-leader': 'n2', 'quiver-leader-grpc': '127.0.0.1:7410', 'quiver-leader-http': '127.0.0.1:7411' });
        const viaHttp = await httpJson(`http://${server.httpAddress}`, 'POST', '/v1/collections/c/upsert', { points: [{ id: 'a', vector: [1, 0] }] });
        expect(viaHttp.status).toBe(421);
        expect(viaHttp.body).toEqual({ error: { code: 'NOT_LEADER', message: 'shard c/0 is led by node n2', details } });
      } finally {
        client.close();
        await server.close();
        await db.close();
      }
    });
  }
});
