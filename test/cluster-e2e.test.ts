/**
 * A cluster of real processes on loopback: etcd (Debian etcd-server), three `quiver serve --etcd`
 * nodes, each with its replication sidecar. Every process is killed by pid at the end.
 *
 * The replicas' convergence is a condition no single event announces (the followers apply the
 * commit point the leader ships with its next send), so those waits poll GET .../shards, bounded.
 */
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { QuiverError } from '../src/errors';
import { shardOf } from '../src/common/placement';
import { Wal } from '../src/wal';
import { EtcdServer } from './etcd-harness';
import type { ServeChild } from './serve-child';
import { startClusterNode, waitFor as waitUntil } from './cluster-harness';
import { httpJson, tempDir } from './server-harness';

const DIM = 16;
const POINTS = 20_000;
const BATCH = 500;

interface Node {
  id: string;
  dir: string;
  child: ServeChild;
}


function vectorOf(i: number): number[] {
  return Array.from({ length: DIM }, (_, d) => Math.sin(i * 0.37 + d));
}

type Shards = { shard: number; leader: string; replicas: { node: string; appliedLsn: number; commitLsn: number; durableLsn: number; digest: string; role: string }[] }[];

async function shardsOf(node: Node, collection: string): Promise<Shards> {
  const r = await httpJson(node.child.http, 'GET', `/v1/collections/${collection}/shards`);
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return r.body.shards;
}

/** The last shard report seen while waiting (printed when a wait times out). */
let lastSeen = '';

/** Every replica of every shard at the leader's commit point with the leader's digest (false while the node does not know the collection yet). */
async function converged(node: Node, collection: string): Promise<boolean> {
  const r = await httpJson(node.child.http, 'GET', `/v1/collections/${collection}/shards`).catch((e: Error) => ({ status: 0, body: e.message }));
  lastSeen = JSON.stringify(r.body);
  if (r.status !== 200) return false;
  const shards: Shards = r.body.shards;
  return shards.every((s) => {
    const leader = s.replicas.find((r) => r.node === s.leader);
    return !!leader && leader.digest !== '' && s.replicas.every((r) => r.appliedLsn === leader.commitLsn && r.digest === leader.digest);
  });
}

function waitFor(cond: () => Promise<boolean>, what: string, ms = 60_000): Promise<void> {
  return waitUntil(cond, what, ms, () => lastSeen);
}

/** Points i in [from, to) as an upsert batch. */
function batchOf(from: number, to: number): { id: string; vector: Float32Array; payload: { i: number } }[] {
  return Array.from({ length: to - from }, (_, j) => ({ id: `p${from + j}`, vector: Float32Array.from(vectorOf(from + j)), payload: { i: from + j } }));
}

describe('a cluster of three nodes (real etcd, nodes and sidecars)', () => {
  let etcd: EtcdServer;
  const nodes: Node[] = [];
  const clients = new Map<string, QuiverClient>();
  /** Ids whose write was acknowledged. */
  const acked = new Set<string>();

  const start = async (id: string, dir: string): Promise<Node> => {
    // Small WAL segments and frequent snapshots, so that a leader drops the segments its followers have.
    const child = await startClusterNode(etcd, id, dir, 'e2e', ['--wal-segment-bytes', String(64 * 1024), '--snapshot-interval-ms', '300']);
    return { id, dir, child };
  };

  const running = (n: Node): boolean => n.child.child.exitCode === null && n.child.child.signalCode === null;

  const client = async (n: Node): Promise<QuiverClient> => {
    const key = n.child.grpc;
    let c = clients.get(key);
    if (!c) {
      c = await QuiverClient.connect(key, { retries: 0, consistency: 'linearizable' });
      clients.set(key, c);
    }
    return c;
  };

  /** Upserts points [from, to) in batches, round robin over `via`; records what was acknowledged. */
  const load = async (from: number, to: number, via: Node[], afterBatch?: (b: number) => Promise<void> | void): Promise<void> => {
    for (let b = 0, i = from; i < to; b++, i += BATCH) {
      const pts = batchOf(i, Math.min(to, i + BATCH));
      const r = await (await client(via[b % via.length])).upsert('r3', pts);
      expect(r.upserted).toBe(pts.length);
      for (const p of pts) acked.add(p.id);
      await afterBatch?.(b);
    }
  };

  const killNode = async (n: Node): Promise<void> => {
    process.kill(n.child.child.pid!, 'SIGKILL');
    await n.child.exited;
  };

  const restart = async (n: Node): Promise<void> => {
    n.child = (await start(n.id, n.dir)).child;
  };

  /** The node that leads no shard of r3 (2 shards, leaders on distinct nodes). */
  const followerOnly = async (): Promise<Node> => {
    const shards = await shardsOf(nodes[0], 'r3');
    return nodes.find((n) => !shards.some((s) => s.leader === n.id))!;
  };

  /** Every acknowledged write is there, read through a node. */
  const allAckedPresent = async (via: Node): Promise<void> => {
    const ids = [...acked];
    const c = await client(via);
    for (let i = 0; i < ids.length; i += 1000) {
      const got = await c.get('r3', ids.slice(i, i + 1000));
      expect(got.length).toBe(Math.min(1000, ids.length - i));
    }
  };

  beforeAll(async () => {
    etcd = await EtcdServer.start();
    for (const id of ['n1', 'n2', 'n3']) nodes.push(await start(id, tempDir(`quiver-${id}-`)));
    await waitFor(async () => (await httpJson(nodes[0].child.http, 'GET', '/v1/cluster')).body.nodes.length === 3, 'three live nodes');
  }, 120_000);

  afterAll(async () => {
    for (const c of clients.values()) c.close();
    for (const n of nodes) if (running(n)) process.kill(n.child.child.pid!, 'SIGKILL');
    await Promise.all(nodes.map((n) => n.child.exited));
    await etcd?.stop();
  });

  it('RF 3, majority: 20,000 points upserted through all three nodes end on every replica with the same digest', async () => {
    const created = await httpJson(nodes[0].child.http, 'POST', '/v1/collections', { name: 'r3', dim: DIM, shards: 2, replicationFactor: 3, index: { type: 'hnsw' } });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    expect(created.body.replicationFactor).toBe(3);
    await load(0, POINTS, nodes);
    for (const n of nodes) expect(await (await client(n)).count('r3')).toBe(POINTS);
    await waitFor(() => converged(nodes[1], 'r3'), 'every replica to apply the commit point');
    const shards = await shardsOf(nodes[2], 'r3');
    for (const s of shards) {
      expect(new Set(s.replicas.map((r) => r.node)).size).toBe(3);
      expect(new Set(s.replicas.map((r) => r.digest)).size).toBe(1);
    }
    expect(new Set(shards.map((s) => s.leader)).size).toBe(2);
    const hits = await (await client(nodes[2])).search('r3', Float32Array.from(vectorOf(1234)), { k: 1 });
    expect(hits[0].id).toBe('p1234');
    // The leaders' metrics: bytes shipped, each follower's lag (0 once caught up).
    const leader = nodes.find((n) => n.id === shards[0].leader)!;
    const metrics = await (await fetch(`${leader.child.http}/metrics`)).text();
    expect(metrics).toMatch(/quiver_replication_sent_bytes_total\{collection="r3",shard="0"\} [1-9]/);
    expect(metrics).toMatch(/quiver_replication_lag_entries\{collection="r3",shard="0",follower="n\d"\} 0/);
    expect(metrics).toMatch(/quiver_replica_commit_lsn\{collection="r3",shard="0",role="leader"\} [1-9]/);
    // A cluster node's search lane neither spins nor has the event loop poll (it shares the cores).
    expect(metrics).toMatch(/quiver_search_lane_poll 0\n/);
    expect(metrics).toMatch(/quiver_search_lane_spin_max_seconds 0\n/);
  }, 300_000);

  it('a follower SIGKILLed during the load (majority writes go on) and restarted afterwards catches up', async () => {
    const victim = await followerOnly();
    const others = nodes.filter((n) => n !== victim);
    await load(POINTS, POINTS + 5000, others, async (b) => {
      if (b === 3) await killNode(victim);
    });
    expect(running(victim)).toBe(false);
    await restart(victim);
    await waitFor(() => converged(victim, 'r3'), 'the restarted follower to catch up');
    await allAckedPresent(victim);
  }, 300_000);

  it('a follower whose data directory is wiped catches up by snapshot transfer', async () => {
    const victim = await followerOnly();
    await killNode(victim);
    fs.rmSync(victim.dir, { recursive: true, force: true });
    // More writes meanwhile: the leaders snapshot and drop the segments below (--snapshot-interval-ms).
    await load(POINTS + 5000, POINTS + 8000, nodes.filter((n) => n !== victim));
    await restart(victim);
    await waitFor(() => converged(victim, 'r3'), 'the wiped follower to catch up');
    // It started from a snapshot: its WAL begins past LSN 1 on every shard.
    for (const s of [0, 1]) {
      const segs = fs.readdirSync(path.join(victim.dir, 'shards', 'r3', String(s), 'wal')).map((f) => parseInt(f, 10)).filter(Number.isFinite);
      expect(Math.min(...segs), `shard ${s}`).toBeGreaterThan(1);
    }
    await allAckedPresent(victim);
  }, 300_000);

  it('a sidecar SIGKILLed mid-stream is restarted and nothing is lost', async () => {
    const shards = await shardsOf(nodes[0], 'r3');
    const leader = nodes.find((n) => n.id === shards[0].leader)!;
    const pid = Number(/sidecar pid (\d+)/.exec(leader.child.output())![1]);
    await load(POINTS + 8000, POINTS + 11_000, nodes, (b) => {
      if (b === 2) process.kill(pid, 'SIGKILL');
    });
    await waitFor(() => converged(nodes[0], 'r3'), 'every replica to catch up after the sidecar restarted');
    await allAckedPresent(nodes[2]);
  }, 300_000);

  it('two of three down: a write fails with UNAVAILABLE within its deadline; once they return nothing half-applied is visible', async () => {
    const shards = await shardsOf(nodes[0], 'r3');
    const leader0 = nodes.find((n) => n.id === shards[0].leader)!;
    const down = nodes.filter((n) => n !== leader0);
    for (const n of down) await killNode(n);
    // A batch whose ids all fall in shard 0, sent to its leader.
    const all = batchOf(40_000, 40_400);
    const inShard0 = all.filter((p) => shardOf(p.id, 2) === 0).slice(0, 50);
    const t0 = Date.now();
    const err = await (await client(leader0)).upsert('r3', inShard0, { deadlineMs: 2000 }).then(
      () => null,
      (e: QuiverError) => e,
    );
    expect(err?.code).toBe('UNAVAILABLE');
    expect(Date.now() - t0).toBeLessThan(2000 + 1000);
    for (const n of down) await restart(n);
    await waitFor(() => converged(nodes[0], 'r3'), 'the returned nodes to catch up');
    // The batch is one entry: all of it or none of it, the same on every replica (equal digests).
    const got = await (await client(nodes[1])).get('r3', inShard0.map((p) => p.id));
    expect([0, inShard0.length]).toContain(got.length);
    await allAckedPresent(nodes[2]);
  }, 300_000);

  it('after a restart of every node, each replica of a new collection holds the same WAL bytes up to the commit point', async () => {
    await waitFor(() => converged(nodes[0], 'r3'), 'convergence');
    for (const n of nodes) {
      process.kill(n.child.child.pid!, 'SIGTERM');
      expect(await n.child.exited).toBe(0);
    }
    for (const c of clients.values()) c.close();
    clients.clear();
    // Default segments and snapshot interval now, so that no segment of the new collection is dropped.
    for (const n of nodes) n.child = await startClusterNode(etcd, n.id, n.dir, 'e2e');
    await waitFor(() => converged(nodes[0], 'r3'), 'the restarted cluster to serve r3 again');
    await allAckedPresent(nodes[1]);
    const created = await httpJson(nodes[1].child.http, 'POST', '/v1/collections', { name: 'w', dim: DIM, shards: 2, replicationFactor: 3, index: { type: 'flat' } });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    for (let i = 0; i < 5000; i += BATCH) await (await client(nodes[(i / BATCH) % 3])).upsert('w', batchOf(i, i + BATCH));
    await waitFor(() => converged(nodes[2], 'w'), 'every replica of w to apply the commit point');
    const shards = await shardsOf(nodes[0], 'w');
    const commits = shards.map((sh) => sh.replicas.find((r) => r.node === sh.leader)!.commitLsn);
    for (const n of nodes) {
      process.kill(n.child.child.pid!, 'SIGTERM');
      expect(await n.child.exited).toBe(0);
    }
    for (const [s, commit] of commits.entries()) {
      const bytes: Buffer[] = [];
      for (const n of nodes) {
        const wal = await Wal.open({ dir: path.join(n.dir, 'shards', 'w', String(s), 'wal'), mustExist: true, commitOnDurable: false });
        expect(wal.firstLsn).toBe(1);
        bytes.push(await wal.readBytes(1, commit));
        await wal.close();
      }
      expect(commit).toBeGreaterThan(5);
      expect(bytes[1].equals(bytes[0])).toBe(true);
      expect(bytes[2].equals(bytes[0])).toBe(true);
    }
  }, 300_000);
});
