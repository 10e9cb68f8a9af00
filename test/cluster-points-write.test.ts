/**
 * The point API's writing calls in a cluster of real processes (etcd, three nodes and their
 * sidecars): delete by filter, payload and vector updates, sent to any node over gRPC (SDK) and
 * HTTP, are logged by each shard's leader and applied by every replica (their state digests, which
 * cover ids, vectors and payloads, equal the leader's), and survive a kill -9 of a shard's leader.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { QuiverError } from '../src/errors';
import { payloadBytesMax } from '../src/common/limits';
import { TestCluster, TestNode, waitFor } from './cluster-harness';
import { httpJson } from './server-harness';

const DIM = 8;
const TTL = 2000;
const FAR = Float32Array.from({ length: DIM }, () => 40);
const NEAR_ZERO = Float32Array.from({ length: DIM }, () => -40);

function vectorOf(i: number): Float32Array {
  return Float32Array.from({ length: DIM }, (_, d) => Math.sin(i * 0.37 + d));
}

describe('point writes in a cluster (real etcd, nodes and sidecars)', () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({ cluster: 'points-write', args: ['--lease-ttl-ms', String(TTL)] });
  }, 120_000);

  afterAll(async () => {
    await cluster?.close();
  });

  /** What every write below leaves, read through `c` (at the level it reads). */
  const checkState = async (c: QuiverClient, what: string): Promise<void> => {
    expect(await c.count('pw'), what).toBe(30);
    const pts = await c.get('pw', ['p0', 'p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p35'], { withPayload: true, withVectors: true });
    expect(
      pts.map((p) => [p.id, p.payload]),
      what,
    ).toEqual([
      ['p0', { n: 0, tag: 'r' }],
      ['p1', { only: true }],
      ['p2', { color: 'red', n: 2, tag: 'r' }],
      ['p3', { only: true }],
      ['p4', { color: 'red', n: 4, tag: 'r' }],
      ['p5', { color: 'blue', n: 5 }],
      ['p6', { color: 'red', n: 6, tag: 'r' }],
    ]);
    expect(Array.from(pts[5].vector!), what).toEqual(Array.from(FAR));
    expect(Array.from(pts[6].vector!), what).toEqual(Array.from(NEAR_ZERO));
  };

  it('each write reaches every replica through any node and both transports, and survives a leader kill', async () => {
    const [n1, n2, n3] = cluster.nodes;
    const created = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: 'pw', dim: DIM, shards: 2, replicationFactor: 3, index: { type: 'hnsw' } });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const c1 = await cluster.client(n1);
    const c2 = await cluster.client(n2);
    await waitFor(async () => (await cluster.shards(n1, 'pw')).every((s) => !!s.leader), 'a leader for every shard', 30_000);
    await c1.upsert('pw', Array.from({ length: 40 }, (_, i) => ({ id: `p${i}`, vector: vectorOf(i), payload: { color: i % 2 === 0 ? 'red' : 'blue', n: i } })));

    // gRPC (SDK) through n2: a filter goes to both shards' leaders, local or forwarded.
    expect((await c2.deleteWhere('pw', { field: 'n', range: { gte: 30 } })).deleted).toBe(10);
    expect((await c2.updatePayload('pw', { filter: { field: 'color', eq: 'red' }, set: { tag: 'r' } })).updated).toBe(15);
    await cluster.waitConverged(n1, 'pw', 'every replica to apply the delete by filter and the payload set', 3);

    // HTTP through n3.
    const post = async (path: string, body: unknown): Promise<Record<string, unknown>> => {
      const r = await httpJson(n3.child.http, 'POST', `/v1/collections/pw/${path}`, body);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      return r.body;
    };
    expect((await post('payload', { ids: ['p1', 'p3', 'ghost'], overwrite: { only: true } })).updated).toBe(2);
    expect((await post('payload', { ids: ['p0'], deleteKeys: ['color'] })).updated).toBe(1);
    expect((await post('vectors', { points: [{ id: 'p5', vector: Array.from(FAR) }] })).updated).toBe(1);
    expect((await c1.updateVectors('pw', [{ id: 'p6', vector: NEAR_ZERO }])).updated).toBe(1);
    await cluster.waitConverged(n1, 'pw', 'every replica to apply the payload and vector updates', 3);
    await checkState(c1, 'through n1');
    expect((await c1.search('pw', FAR, { k: 1 }))[0]).toMatchObject({ id: 'p5', distance: 0 });
    // Every node's replicas, read at `eventual` (whichever replica each node picks).
    for (const n of cluster.nodes) {
      const eventual = await QuiverClient.connect(n.child.grpc, { retries: 0, consistency: 'eventual' });
      try {
        await checkState(eventual, `eventual through ${n.id}`);
      } finally {
        eventual.close();
      }
    }

    // Refused on the leader that holds p0 (its payload would pass the limit): nothing changes.
    const before = JSON.stringify((await cluster.shards(n1, 'pw')).map((s) => s.replicas.map((r) => r.digest)));
    const err = await c2.updatePayload('pw', { ids: ['p0'], set: { blob: 'x'.repeat(payloadBytesMax) } }).catch((e: unknown) => e);
    expect((err as QuiverError).code).toBe('INVALID_ARGUMENT');
    const bigger = await c2.updatePayload('pw', { ids: ['p0'], set: { blob: 'x'.repeat(payloadBytesMax - 20) } }).catch((e: unknown) => e);
    expect((bigger as QuiverError).code).toBe('INVALID_ARGUMENT');
    expect(JSON.stringify((await cluster.shards(n1, 'pw')).map((s) => s.replicas.map((r) => r.digest)))).toBe(before);

    // kill -9 of shard 0's leader: the new leader has every update, and takes filtered writes.
    const s0 = (await cluster.shards(n1, 'pw'))[0];
    const leader = cluster.node(s0.leader);
    const survivors = cluster.nodes.filter((n) => n !== leader);
    const ports = ['--grpc', leader.child.grpc, '--http', leader.child.http.replace('http://', '')];
    await cluster.kill(leader);
    await waitFor(
      async () => {
        const s = (await cluster.shards(survivors[0], 'pw'))[0];
        return !!s.leader && s.leader !== leader.id && s.epoch > s0.epoch;
      },
      'a new leader of shard 0',
      30_000,
    );
    const sdk = await QuiverClient.connect(survivors.map((n: TestNode) => n.child.grpc), { consistency: 'linearizable' });
    try {
      await checkState(sdk, 'after the leader kill');
      expect((await sdk.updatePayload('pw', { filter: { field: 'tag', eq: 'r' }, set: { after: 1 } })).updated).toBe(15);
      expect((await sdk.deleteWhere('pw', { field: 'only', eq: true })).deleted).toBe(2);
      expect(await sdk.count('pw')).toBe(28);
      expect((await sdk.get('pw', ['p2'], { withPayload: true }))[0].payload).toEqual({ color: 'red', n: 2, tag: 'r', after: 1 });
    } finally {
      sdk.close();
    }
    // The old leader comes back as a follower and applies what it missed.
    await cluster.restart(leader, ports);
    await cluster.waitConverged(survivors[0], 'pw', 'every replica, the restarted one too, to converge', 3);
  }, 300_000);
});
