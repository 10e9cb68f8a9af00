/**
 * Payload indexes in a cluster (real etcd, three nodes and their sidecars): an index created
 * through one node is listed by every node and built in every replica (their filtered searches use
 * it: quiver_filter_plans_total), new writes are indexed on every replica, and a node restarted
 * from its disk builds it again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import type { Filter } from '../src/client';
import { TestCluster, TestNode, metricSum, waitFor } from './cluster-harness';
import { httpJson } from './server-harness';

const DIM = 8;
const C = 'pidx';
const COLORS = ['red', 'green', 'blue', 'black'];

function point(i: number): { id: string; vector: Float32Array; payload: { color: string; meta: { n: number } } } {
  return { id: `p${i}`, vector: Float32Array.from({ length: DIM }, (_, d) => Math.sin(i * 0.37 + d)), payload: { color: COLORS[i % 4], meta: { n: i } } };
}

const plans = (n: TestNode, plan: string): Promise<number> => metricSum(n.child.http, 'quiver_filter_plans_total', { collection: C, plan });

describe('payload indexes in a cluster', () => {
  let cluster: TestCluster;
  let reader: QuiverClient;
  const filter: Filter = { and: [{ field: 'color', in: ['red', 'blue'] }, { field: 'meta.n', range: { gte: 100 } }] };
  const want = (count: number): string[] =>
    Array.from({ length: count }, (_, i) => point(i))
      .filter((p) => (p.payload.color === 'red' || p.payload.color === 'blue') && p.payload.meta.n >= 100)
      .map((p) => p.id)
      .sort();
  const search = async (via: QuiverClient): Promise<string[]> => (await via.search(C, point(0).vector, { k: 500, filter, consistency: 'eventual' })).map((h) => h.id).sort();

  beforeAll(async () => {
    cluster = await TestCluster.start({ cluster: 'pidx', args: ['--lease-ttl-ms', '2000'] });
  });

  afterAll(async () => {
    reader?.close();
    await cluster?.close();
  });

  it('created through one node, built in every replica; new writes indexed everywhere', async () => {
    const [n1, n2] = cluster.nodes;
    const made = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: C, dim: DIM, shards: 2, replicationFactor: 3, index: { type: 'flat' } });
    expect(made.status, JSON.stringify(made.body)).toBe(200);
    const writer = await cluster.client(n1);
    await writer.upsert(C, Array.from({ length: 300 }, (_, i) => point(i)));
    const put = await httpJson(n2.child.http, 'PUT', `/v1/collections/${C}/index`, { field: 'color', type: 'keyword' });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    const sdk = await cluster.client(cluster.nodes[2]);
    expect((await sdk.createPayloadIndex(C, { field: 'meta.n', type: 'integer' })).payloadIndexes).toEqual([
      { field: 'color', type: 'keyword' },
      { field: 'meta.n', type: 'integer' },
    ]);
    for (const n of cluster.nodes) {
      await waitFor(async () => (await httpJson(n.child.http, 'GET', `/v1/collections/${C}`)).body.payloadIndexes?.length === 2, `${n.id} to list both indexes`);
    }
    await writer.upsert(C, Array.from({ length: 100 }, (_, i) => point(300 + i)));
    await cluster.waitConverged(n1, C, 'every replica to apply the points', 3);

    reader = await QuiverClient.connect(n1.child.grpc, { consistency: 'eventual' });
    // Eventual reads spread over the replicas: every node serves parts, from its indexes.
    await waitFor(async () => {
      expect(await search(reader)).toEqual(want(400));
      return (await Promise.all(cluster.nodes.map((n) => plans(n, 'index')))).every((x) => x > 0);
    }, 'every node to answer filtered parts from its indexes');
    const scans = await Promise.all(cluster.nodes.map((n) => plans(n, 'scan')));
    const before = await Promise.all(cluster.nodes.map((n) => plans(n, 'index')));
    for (let i = 0; i < 30; i++) expect(await search(reader)).toEqual(want(400));
    expect(await Promise.all(cluster.nodes.map((n) => plans(n, 'scan')))).toEqual(scans);
    const after = await Promise.all(cluster.nodes.map((n) => plans(n, 'index')));
    expect(after.reduce((a, b) => a + b, 0) - before.reduce((a, b) => a + b, 0)).toBe(30 * 2);
  });

  it('a node restarted from its disk builds the indexes again', async () => {
    const n3 = cluster.nodes[2];
    cluster.dropClients();
    await cluster.kill(n3);
    await cluster.restart(n3);
    await cluster.waitCaughtUp(n3, C, 'the restarted node to catch up');
    expect((await httpJson(n3.child.http, 'GET', `/v1/collections/${C}`)).body.payloadIndexes).toEqual([
      { field: 'color', type: 'keyword' },
      { field: 'meta.n', type: 'integer' },
    ]);
    let seen = '';
    await waitFor(
      async () => {
        expect(await search(reader)).toEqual(want(400));
        seen = JSON.stringify(await Promise.all(['index', 'index_checked', 'scan'].map((p) => plans(n3, p))));
        return (await plans(n3, 'index')) > 0;
      },
      'the restarted node to answer filtered parts from its indexes',
      60_000,
      () => seen,
    );
    expect(await plans(n3, 'scan')).toBe(0);
  }, 180_000);
});
