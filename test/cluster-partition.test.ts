/**
 * A shard leader cut off by the network (iptables on loopback; each node runs as a uid of its own
 * so that its connections can be picked): from etcd only, then from its followers only. In each
 * case at most one leader commits, and no acknowledged write is lost.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { QuiverError } from '../src/errors';
import { Iptables, partitionsUnavailable, portOf } from '../bench/faults';
import { TestCluster, TestNode, waitFor } from './cluster-harness';
import { httpJson } from './server-harness';

const DIM = 8;
const UIDS = [4201, 4202, 4203];
const why = partitionsUnavailable();

function point(i: number): { id: string; vector: Float32Array } {
  return { id: `p${i}`, vector: Float32Array.from({ length: DIM }, (_, d) => Math.sin(i * 0.37 + d)) };
}

/** An SDK client upserting one point at a time until stopped: what was acknowledged. */
class Writer {
  readonly acked: string[] = [];
  failures = 0;
  private stopped = false;
  private readonly done: Promise<void>;

  constructor(client: QuiverClient, collection: string, base: number) {
    this.done = (async () => {
      for (let i = base; !this.stopped; i++) {
        try {
          await client.upsert(collection, [point(i)], { deadlineMs: 1500 });
          this.acked.push(`p${i}`);
        } catch (e) {
          if (!(e instanceof QuiverError)) throw e;
          this.failures++;
        }
      }
    })();
  }

  async more(n: number): Promise<void> {
    const want = this.acked.length + n;
    await waitFor(async () => this.acked.length >= want, `${n} more acknowledged writes`, 30_000);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
}

const replicationPort = (n: TestNode): number => portOf(/replicating on (\S+)/.exec(n.child.output())![1]);

describe.skipIf(why !== null)(`a leader cut off by the network${why ? ` (skipped: ${why})` : ''}`, () => {
  let cluster: TestCluster;
  let ipt: Iptables;

  beforeAll(async () => {
    ipt = new Iptables();
    for (const uid of UIDS) ipt.markUid(uid);
    cluster = await TestCluster.start({ cluster: 'partition', uids: UIDS, args: ['--lease-ttl-ms', '2000'] });
  }, 120_000);

  afterAll(async () => {
    ipt?.close();
    await cluster?.close();
  });

  const setup = async (name: string): Promise<{ leader: TestNode; others: TestNode[]; epoch: number }> => {
    // A node cut off from etcd by an earlier test may have caught up (converged) before it registered again.
    await cluster.createCollection(cluster.nodes[0], { name, dim: DIM, shards: 1, replicationFactor: 3, index: { type: 'flat' } });
    const s = (await cluster.shards(cluster.nodes[0], name))[0];
    const leader = cluster.node(s.leader);
    return { leader, others: cluster.nodes.filter((n) => n !== leader), epoch: s.epoch };
  };

  /**
   * An SDK writer (through the nodes other than the leader) runs across a cut: 20 batches before
   * it, `during` while `cut()`'s rules hold, 20 more after the heal. What was acknowledged.
   */
  const acrossCut = async (collection: string, others: TestNode[], cut: () => () => void, during: (w: Writer) => Promise<void>): Promise<string[]> => {
    const sdk = await QuiverClient.connect(others.map((n) => n.child.grpc), { retries: 0 });
    const w = new Writer(sdk, collection, 0);
    try {
      await w.more(20);
      const heal = cut();
      try {
        await during(w);
      } finally {
        heal();
      }
      await w.more(20);
    } finally {
      await w.stop();
      sdk.close();
    }
    return w.acked;
  };

  it('from etcd only: it stops leading by its own deadline, a follower is elected; when it returns it follows, and no acknowledged write is lost', async () => {
    const { leader, others, epoch } = await setup('x');
    const acked = await acrossCut(
      'x',
      others,
      () => ipt.cut(leader.uid!, [portOf(cluster.etcd.endpoint)], []),
      async (w) => {
        await waitFor(
          async () => {
            const s = (await cluster.shards(others[0], 'x'))[0];
            return s.leader !== null && s.leader !== leader.id && s.epoch > epoch;
          },
          'a new leader while the old one is cut off from etcd',
          30_000,
        );
        await w.more(20);
        // The old leader still reaches its followers, but past its deadline it commits nothing:
        // a write sent to it is not acknowledged in its old epoch.
        const direct = await httpJson(leader.child.http, 'POST', '/v1/collections/x/upsert', { points: [{ id: 'direct', vector: Array.from(point(0).vector) }] }, { 'x-quiver-timeout-ms': '2000' });
        if (direct.status === 200) w.acked.push('direct');
        else expect(['UNAVAILABLE', 'DEADLINE_EXCEEDED', 'NOT_LEADER'], JSON.stringify(direct.body)).toContain(direct.body.error.code);
      },
    );
    await cluster.waitConverged(others[0], 'x', 'the old leader to rejoin as a follower', 3);
    const s = (await cluster.shards(others[0], 'x'))[0];
    expect(s.leader).not.toBe(leader.id);
    expect(await cluster.present(others[0], 'x', acked)).toBe(acked.length);
  }, 120_000);

  it('from its followers only: nothing commits while the cut lasts (the leader cannot reach a majority); afterwards the shard takes writes again, and no acknowledged write is lost', async () => {
    const { leader, others } = await setup('y');
    const followerPorts = others.flatMap((n) => [replicationPort(n), portOf(n.child.grpc)]);
    const acked = await acrossCut(
      'y',
      others,
      () => ipt.cut(leader.uid!, followerPorts, [replicationPort(leader), portOf(leader.child.grpc)]),
      async () => {
        // Sent to the leader itself (its HTTP port is not cut): it cannot commit without a follower.
        const during = await httpJson(leader.child.http, 'POST', '/v1/collections/y/upsert', { points: [{ id: 'during', vector: Array.from(point(0).vector) }] }, { 'x-quiver-timeout-ms': '2000' });
        expect(during.status, JSON.stringify(during.body)).not.toBe(200);
        expect(['UNAVAILABLE', 'DEADLINE_EXCEEDED']).toContain(during.body.error.code);
      },
    );
    await cluster.waitConverged(others[0], 'y', 'every replica to converge after the cut', 3);
    expect(await cluster.present(others[0], 'y', acked)).toBe(acked.length);
    // The write the leader could not commit: on every replica or on none (equal digests above).
    expect([0, 1]).toContain(await cluster.present(others[0], 'y', ['during']));
  }, 120_000);
});
