/**
 * Replica sets that change, with real processes on loopback (etcd, nodes and their sidecars): a
 * node killed and kept down past the grace period has its replicas rebuilt on the others; a node
 * that joins gets replicas and a leadership; the replaced node, back, removes its old files.
 * Writes go on throughout; none acknowledged may be lost.
 */
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { Load, ShardsReport, TestCluster, TestNode, waitFor } from './cluster-harness';
import { httpJson, tempDir } from './server-harness';

const DIM = 8;
const SHARDS = 4;
const GRACE_MS = 3000;

function holders(shards: ShardsReport): Map<string, { replicas: number; leads: number }> {
  const out = new Map<string, { replicas: number; leads: number }>();
  for (const s of shards) {
    for (const r of s.replicas) {
      const h = out.get(r.node) ?? { replicas: 0, leads: 0 };
      h.replicas++;
      if (r.node === s.leader) h.leads++;
      out.set(r.node, h);
    }
  }
  return out;
}

describe('replica sets that change (real etcd, nodes and sidecars)', () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({ nodes: 4, cluster: 'moves', args: ['--rereplicate-after-ms', String(GRACE_MS)] });
  }, 120_000);

  afterAll(async () => {
    await cluster?.close();
  });

  it('kill -9 of a node kept down past the grace period: replication factor 3 restored on the other nodes, digests equal, every acknowledged write there; a fifth node joins and gets replicas and a leadership; the replaced node, back, removes its old files', async () => {
    const [n1] = cluster.nodes;
    const created = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: 'm', dim: DIM, shards: SHARDS, replicationFactor: 3, index: { type: 'flat' } });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const sdk = await QuiverClient.connect(cluster.nodes.map((n) => n.child.grpc));
    let load = new Load(sdk, 'm', DIM, 'a');
    const acked: string[] = [];
    try {
      await load.more(5);
      // The victim leads a shard (its loss takes an election first) and holds three replicas.
      const before = await cluster.shards(n1, 'm');
      const victim = cluster.node(before.find((s) => s.leader !== n1.id)!.leader);
      const held = before.filter((s) => s.replicas.some((r) => r.node === victim.id)).map((s) => s.shard);
      const via = cluster.nodes.find((n) => n !== victim)!;
      await cluster.kill(victim);

      /** Every shard with 3 replicas at one digest, and `cond` of the shards' report holds. */
      const settled = (cond: (shards: ShardsReport) => boolean, what: string): Promise<void> =>
        waitFor(async () => (await cluster.converged(via, 'm', 3)) && cond(await cluster.shards(via, 'm')), what, 90_000, () => cluster.lastSeen);

      // Replication factor 3 again, on the three live nodes, converged, under the write load.
      await settled((shards) => shards.every((s) => s.replicas.every((r) => r.node !== victim.id)), `every shard rebuilt without ${victim.id}`);
      await load.more(3);
      acked.push(...(await load.stop()));
      await cluster.waitConverged(via, 'm', 'converged after re-replication', 3);
      expect(await cluster.present(via, 'm', acked)).toBe(acked.length);

      // A fifth node joins: replicas move to it (3 of the 12 each), then a leadership.
      load = new Load(sdk, 'm', DIM, 'b');
      const n5 = await cluster.startNode('n5', tempDir('quiver-n5-'));
      cluster.nodes.push(n5);
      await settled((shards) => {
        const n = holders(shards).get('n5');
        return n?.replicas === 3 && n.leads === 1;
      }, 'n5 to hold 3 replicas and lead a shard');
      await load.more(3);
      acked.push(...(await load.stop()));
      await cluster.waitConverged(via, 'm', 'converged after the moves to n5', 3);
      expect(await cluster.present(via, 'm', acked)).toBe(acked.length);
      const counts = [...holders(await cluster.shards(via, 'm')).values()];
      expect(counts.map((c) => c.replicas)).toEqual([3, 3, 3, 3]);
      expect(counts.map((c) => c.leads)).toEqual([1, 1, 1, 1]);

      // The replaced node comes back: no map names its old replicas, so it removes their files.
      const marks = held.map((s) => path.join(victim.dir, 'shards', 'm', String(s), 'replaced.mark'));
      for (const f of marks) fs.writeFileSync(f, '');
      await cluster.restart(victim);
      await waitFor(async () => marks.every((f) => !fs.existsSync(f)), `${victim.id} to remove its old replicas`, 60_000);
      await cluster.waitConverged(via, 'm', 'converged with the replaced node back', 3);
      expect(await cluster.present(via, 'm', acked)).toBe(acked.length);
    } finally {
      await load.stop();
      sdk.close();
    }
  }, 400_000);
});
