/**
 * A collection's write concern holds in a cluster: under `all` a write is not answered (UNAVAILABLE at its deadline) while a
 * follower is paused (SIGSTOP), and is once it runs again; switched to `majority` by
 * updateCollection, the same write is answered with the follower paused.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { TestCluster } from './cluster-harness';
import { etcdInstalled } from './etcd-harness';
import { codeOf } from './helpers';
import { vec } from './server-harness';

const DIM = 4;
const point = (i: number): { id: string; vector: Float32Array } => ({ id: `p${i}`, vector: vec(i, DIM) });

describe.skipIf(!etcdInstalled)(`write concern in a cluster${etcdInstalled ? '' : ' (skipped: no /usr/bin/etcd)'}`, () => {
  let cluster: TestCluster;
  let client: QuiverClient;

  beforeAll(async () => {
    // A long lease: the paused follower stays a live voting replica while the test holds it.
    cluster = await TestCluster.start({ cluster: 'wc', args: ['--lease-ttl-ms', '20000'] });
    client = await QuiverClient.connect(cluster.nodes.map((n) => n.child.grpc), { retries: 0, consistency: 'linearizable' });
  });

  afterAll(async () => {
    client?.close();
    await cluster?.close();
  });

  it('all waits for every replica; majority, set by updateCollection, does not', async () => {
    const [n1] = cluster.nodes;
    await client.createCollection({ name: 'wc', dim: DIM, shards: 1, replicationFactor: 3, writeConcern: 'all' });
    await client.upsert('wc', [point(0)]);
    await cluster.waitConverged(n1, 'wc', 'every replica of wc', 3);
    const leaderId = (await cluster.shards(n1, 'wc'))[0].leader;
    const follower = cluster.nodes.find((n) => n.id !== leaderId)!;
    const pid = follower.child.child.pid!;
    // Straight to the leader (a client of every node could try the paused one first).
    const atLeader = await QuiverClient.connect(cluster.node(leaderId).child.grpc, { retries: 0, routing: false, consistency: 'linearizable' });

    process.kill(pid, 'SIGSTOP');
    try {
      // Not answered in time: UNAVAILABLE, its outcome unknown (it is in the leader's log).
      expect(await codeOf(atLeader.upsert('wc', [point(1)], { deadlineMs: 1500 }))).toBe('UNAVAILABLE');
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await atLeader.upsert('wc', [point(2)], { deadlineMs: 20_000 });

    expect((await client.updateCollection('wc', { writeConcern: 'majority' })).writeConcern).toBe('majority');
    await cluster.waitConverged(n1, 'wc', 'every replica of wc after the update', 3);
    process.kill(pid, 'SIGSTOP');
    try {
      await atLeader.upsert('wc', [point(3)], { deadlineMs: 10_000 });
    } finally {
      process.kill(pid, 'SIGCONT');
      atLeader.close();
    }
    // p1's answer was given up on: it may or may not be there.
    expect((await client.get('wc', ['p0', 'p2', 'p3'])).map((p) => p.id).sort()).toEqual(['p0', 'p2', 'p3']);
  }, 120_000);
});
