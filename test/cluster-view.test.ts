/**
 * What a cluster node reports of shards it does not hold (GET /v1/cluster, GET .../shards, the
 * status page), from its maps and the replica reports of the other nodes: a learner (a replica
 * being built, not yet voting) listed after the voters with the role `learner`, a node that does
 * not answer `unreachable`. The cluster database runs with a fake coordinator and fake peers: no
 * etcd and no replica here (the real-process tests cover those).
 */
import { EventEmitter } from 'events';
import { describe, expect, it } from 'vitest';
import { ClusterDatabase } from '../src/query/cluster';
import type { CoordinatorPort, PeerShards, ReplicaReport } from '../src/query/cluster';
import type { ShardMap } from '../src/cluster/types';
import { tempDir } from './server-harness';

const NODES = ['n2', 'n3', 'n4', 'n5'];
const MAP: ShardMap = { epoch: 3, leader: 'n2', replicas: ['n2', 'n3', 'n4'], phase: 'active', learner: { node: 'n5', replaces: 'n4' } };

function report(node: string, role: string, durableLsn: number): ReplicaReport {
  return { collection: 'docs', shard: 0, node, role, epoch: 3, durableLsn, commitLsn: 90, appliedLsn: 90, digest: '', followers: [] };
}

/** A node n1 holding no replica of `docs`, told of its one shard's map. */
function nodeWithMap(answers: Record<string, ReplicaReport[] | Error>): ClusterDatabase {
  const coordinator = new EventEmitter();
  const peers = {
    replicaStatus: async (node: string) => {
      const a = answers[node];
      if (a instanceof Error) throw a;
      return a ?? [];
    },
  } as unknown as PeerShards;
  const d = new ClusterDatabase({
    nodeId: 'n1',
    dataDir: tempDir('quiver-cluster-view-'),
    coordinator: coordinator as unknown as CoordinatorPort,
    peers,
    openReplica: () => Promise.reject(new Error('no replica opens on n1')),
    sendToPeer: () => undefined,
  });
  coordinator.emit('nodes', Object.fromEntries(['n1', ...NODES].map((n) => [n, { grpc: `${n}:1`, http: `${n}:2`, replication: `${n}:3`, zone: null, version: 'test' }])));
  coordinator.emit('collection', 'docs', { name: 'docs', dim: 4, metric: 'l2', index: { type: 'flat' }, shards: 1, replicationFactor: 3, createdAt: new Date(0).toISOString() });
  coordinator.emit('map', 'docs/0', MAP);
  return d;
}

describe('the cluster view of a shard with a learner', () => {
  it('lists the voters, then the learner with its role; a node that does not answer is unreachable', async () => {
    const db = nodeWithMap({ n2: [report('n2', 'leader', 100)], n3: [report('n3', 'follower', 100)], n4: new Error('paused'), n5: [report('n5', 'follower', 40)] });
    const all = await db.clusterStatus();
    const shard = all.shards.find((s) => s.collection === 'docs')!;
    expect(shard.leader).toBe('n2');
    expect(shard.replicas.map((r) => [r.node, r.role])).toEqual([
      ['n2', 'leader'],
      ['n3', 'follower'],
      ['n4', 'unreachable'],
      ['n5', 'learner'],
    ]);
    // GET .../shards: the same order and roles, with each replica's lag behind the leader.
    const [s0] = await db.shards('docs', { withDigest: false });
    expect(s0.replicas.map((r) => [r.node, r.role, r.lagEntries])).toEqual([
      ['n2', 'leader', 0],
      ['n3', 'follower', 0],
      ['n4', 'unreachable', 100],
      ['n5', 'learner', 60],
    ]);
  });

  it('from the maps alone (leadersOnly, what the client route refresh asks), the learner keeps its role', async () => {
    const db = nodeWithMap({});
    const shard = (await db.clusterStatus({ leadersOnly: true })).shards.find((s) => s.collection === 'docs')!;
    expect(shard.replicas.map((r) => [r.node, r.role])).toEqual([
      ['n2', 'leader'],
      ['n3', 'follower'],
      ['n4', 'follower'],
      ['n5', 'learner'],
    ]);
  });
});
