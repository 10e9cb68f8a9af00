/**
 * Collection operations that move a collection's replicas in a cluster (real etcd, three nodes and
 * their sidecars): its replication factor raised and lowered under writes (the controller adds a
 * learner that joins the replicas, or removes a follower), every replica's digest equal after and
 * no acknowledged write lost.
 */
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { Load, ShardsReport, TestCluster, waitFor } from './cluster-harness';
import { httpJson } from './server-harness';
import { expectCode } from './helpers';

const DIM = 8;

describe('collection operations in a cluster (real etcd, nodes and sidecars)', () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({ cluster: 'colops' });
  }, 120_000);

  afterAll(async () => {
    await cluster?.close();
  });

  it('replication factor 2 -> 3 -> 2 under writes: the replicas follow, digests equal, every acknowledged write kept; a factor above the live nodes is refused', async () => {
    const [n1, n2] = cluster.nodes;
    const made = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: 'rf', dim: DIM, shards: 2, replicationFactor: 2, index: { type: 'hnsw' } });
    expect(made.status, JSON.stringify(made.body)).toBe(200);
    expect(made.body.replicationChanging).toBe(false);
    const sdk = await QuiverClient.connect(cluster.nodes.map((n) => n.child.grpc));
    /** Every shard with `replicas` voters and no learner, all at one digest. */
    const settled = (replicas: number, what: string): Promise<void> =>
      waitFor(
        async () => (await cluster.converged(n2, 'rf', replicas)) && (await cluster.shards(n2, 'rf')).every((s) => s.replicas.every((r) => r.role !== 'learner')),
        what,
        90_000,
        () => cluster.lastSeen,
      );
    let load = new Load(sdk, 'rf', DIM, 'a');
    const acked: string[] = [];
    try {
      await load.more(5);
      await expectCode(sdk.updateCollection('rf', { replicationFactor: 4 }), 'FAILED_PRECONDITION');
      const zero = await httpJson(n1.child.http, 'PATCH', '/v1/collections/rf', { replicationFactor: 0 });
      expect([zero.status, zero.body.error?.code]).toEqual([400, 'INVALID_ARGUMENT']);

      // Up, over HTTP: the answer comes once the record holds it, saying the change is under way.
      const up = await httpJson(n1.child.http, 'PATCH', '/v1/collections/rf', { replicationFactor: 3 });
      expect(up.status, JSON.stringify(up.body)).toBe(200);
      expect([up.body.replicationFactor, up.body.replicationChanging]).toEqual([3, true]);
      await settled(3, 'every shard on 3 replicas');
      await load.more(3);
      acked.push(...(await load.stop()));
      await cluster.waitConverged(n2, 'rf', 'converged at 3 replicas', 3);
      expect(await cluster.present(n2, 'rf', acked)).toBe(acked.length);
      expect((await sdk.describeCollection('rf')).replicationChanging).toBe(false);

      // Down, through the SDK (gRPC): a follower goes from each shard; its node removes its files.
      load = new Load(sdk, 'rf', DIM, 'b');
      await load.more(3);
      const down = await sdk.updateCollection('rf', { replicationFactor: 2 });
      expect(down.replicationFactor).toBe(2);
      await settled(2, 'every shard on 2 replicas');
      await load.more(3);
      acked.push(...(await load.stop()));
      await cluster.waitConverged(n2, 'rf', 'converged at 2 replicas', 2);
      expect(await cluster.present(n2, 'rf', acked)).toBe(acked.length);
      const shards: ShardsReport = await cluster.shards(n2, 'rf');
      for (const s of shards) {
        for (const n of cluster.nodes.filter((x) => !s.replicas.some((r) => r.node === x.id))) {
          const dir = path.join(n.dir, 'shards', 'rf', String(s.shard));
          await waitFor(async () => !fs.existsSync(dir), `${n.id} to remove its replica of rf/${s.shard}`);
        }
      }
    } finally {
      await load.stop();
      sdk.close();
    }
  }, 400_000);
});
