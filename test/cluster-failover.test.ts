/**
 * Failover with real processes on loopback: etcd, three nodes and their sidecars.
 */
import { execFile } from 'child_process';
import * as path from 'path';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { QuiverError } from '../src/errors';
import { shardOf } from '../src/common/placement';
import { Load, TestCluster, TestNode, waitFor } from './cluster-harness';
import { httpJson, tempDir } from './server-harness';

const DIM = 8;
const TTL = 2000;

function point(i: number): { id: string; vector: Float32Array; payload: { i: number } } {
  return { id: `p${i}`, vector: Float32Array.from({ length: DIM }, (_, d) => Math.sin(i * 0.37 + d)), payload: { i } };
}

const BIN = path.resolve(__dirname, '..', 'bin', 'quiver.js');

/** `quiver admin ...` as a child process: its exit code and output. */
function admin(args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, 'admin', ...args], (e, stdout, stderr) => {
      resolve({ code: e ? ((e as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

describe('failover (real etcd, nodes and sidecars)', () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({ cluster: 'failover', args: ['--lease-ttl-ms', String(TTL)] });
  }, 120_000);

  afterAll(async () => {
    await cluster?.close();
  });

  it('kill -9 of the shard leader under a majority write load, 10 times: no acknowledged write is lost, the old leader rejoins, replicas converge', async () => {
    const [n1] = cluster.nodes;
    const created = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: 'f', dim: DIM, shards: 1, replicationFactor: 3, index: { type: 'flat' } });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const sdk = await QuiverClient.connect(cluster.nodes.map((n) => n.child.grpc));
    const w = new Load(sdk, 'f', DIM, 'f');
    try {
      for (let round = 0; round < 10; round++) {
        const before = (await cluster.shards(cluster.nodes[round % 3], 'f'))[0];
        const leader = cluster.node(before.leader);
        const [a, b] = cluster.nodes.filter((n) => n !== leader);
        await w.more(3);
        const ports = ['--grpc', leader.child.grpc, '--http', leader.child.http.replace('http://', '')];
        await cluster.kill(leader);
        await waitFor(
          async () => {
            const s = (await cluster.shards(a, 'f'))[0];
            return s.leader !== null && s.leader !== leader.id && s.epoch > before.epoch;
          },
          `round ${round}: a new leader`,
          30_000,
        );
        await w.more(3);
        if (round === 0) {
          const unhealthy = await admin(['health', '--server', b.child.http]);
          expect(unhealthy.code, unhealthy.out).toBe(1);
          expect(unhealthy.out).toContain(`f/0: 2 of 3 replicas reachable (down: ${leader.id})`);
        }
        await cluster.restart(leader, ports);
        await cluster.waitCaughtUp(leader, 'f', `round ${round}: ${leader.id} to rejoin`);
      }
    } finally {
      await w.stop();
      sdk.close();
    }
    await cluster.waitConverged(n1, 'f', 'every replica of f to apply the commit point', 3);
    expect(await cluster.present(n1, 'f', w.acked)).toBe(w.acked.length);
    // The leader now took the shard over from a killed one: its metrics say so.
    const leader = cluster.node((await cluster.shards(n1, 'f'))[0].leader);
    const metrics = await (await fetch(`${leader.child.http}/metrics`)).text();
    expect(metrics).toMatch(/quiver_leader_changes_total\{collection="f",shard="0"\} [1-9]/);
    expect(metrics).toMatch(/quiver_failover_seconds_count [1-9]/);
    const healthy = await admin(['health', '--server', n1.child.http]);
    expect(healthy.code, healthy.out).toBe(0);
  }, 300_000);

  it('quiver admin drain moves a node\'s leaderships with no lease wait while an SDK client writes: no request fails', async () => {
    const [n1, n2] = cluster.nodes;
    const created = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: 'd', dim: DIM, shards: 3, replicationFactor: 3, index: { type: 'flat' } });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const before = await cluster.shards(n1, 'd');
    const victim = cluster.node(before[0].leader);
    const sdk = await QuiverClient.connect(cluster.nodes.map((n) => n.child.grpc));
    const w = new Load(sdk, 'd', DIM, 'd');
    try {
      await w.more(5);
      const healthy = await admin(['health', '--server', n2.child.http]);
      expect(healthy.code, healthy.out).toBe(0);
      const t0 = Date.now();
      const r = await admin(['drain', victim.id, '--server', n1.child.http, '--timeout-ms', '20000']);
      expect(r.code, r.out).toBe(0);
      console.log(`drain: ${victim.id} handed over in ${Date.now() - t0} ms (the admin process's start included): ${r.out.trim()}`);
      const after = await cluster.shards(n1, 'd');
      for (const [s, b] of before.entries()) {
        expect(after[s].leader, `shard ${s}`).not.toBe(victim.id);
        if (b.leader === victim.id) expect(after[s].epoch).toBeGreaterThan(b.epoch);
      }
      await w.more(5);
    } finally {
      await w.stop();
      sdk.close();
    }
    expect(w.refused).toEqual([]);
    const undrained = await admin(['undrain', victim.id, '--server', n2.child.http]);
    expect(undrained.code, undrained.out).toBe(0);
    await cluster.waitConverged(n2, 'd', 'every replica of d to apply the commit point', 3);
    expect(await cluster.present(n2, 'd', w.acked)).toBe(w.acked.length);
  }, 120_000);

  it('a rolling restart (SIGTERM, then the same ports again, one node at a time) under SDK writes fails no request', async () => {
    const sdk = await QuiverClient.connect(cluster.nodes.map((n) => n.child.grpc));
    const w = new Load(sdk, 'd', DIM, 'r');
    try {
      await w.more(3);
      for (const n of cluster.nodes) {
        const ports = ['--grpc', n.child.grpc, '--http', n.child.http.replace('http://', '')];
        expect(await cluster.kill(n, 'SIGTERM')).toBe(0);
        expect(n.child.output()).toMatch(/drained in \d+ ms/);
        await cluster.restart(n, ports);
        await cluster.waitCaughtUp(n, 'd', `${n.id} to catch up after its restart`);
        await w.more(3);
      }
    } finally {
      await w.stop();
      sdk.close();
    }
    expect(w.refused).toEqual([]);
    cluster.dropClients();
    await cluster.waitConverged(cluster.nodes[0], 'd', 'every replica of d to apply the commit point', 3);
    expect(await cluster.present(cluster.nodes[0], 'd', w.acked)).toBe(w.acked.length);
  }, 180_000);

  it('a leader paused (SIGSTOP) for twice the lease TTL stops leading: a successor takes writes, the old leader rejoins as its follower', async () => {
    const [n1] = cluster.nodes;
    const created = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: 'p', dim: DIM, shards: 1, replicationFactor: 3, index: { type: 'flat' } });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const before = (await cluster.shards(n1, 'p'))[0];
    const leader = cluster.node(before.leader);
    const [other] = cluster.nodes.filter((n) => n !== leader);
    const acked: string[] = [];
    const write = async (via: TestNode, i: number): Promise<boolean> => {
      try {
        await (await cluster.client(via)).upsert('p', [point(i)], { deadlineMs: 1000 });
        acked.push(`p${i}`);
        return true;
      } catch (e) {
        if (!(e instanceof QuiverError)) throw e;
        return false;
      }
    };
    for (let i = 0; i < 20; i++) expect(await write(other, i)).toBe(true);
    const client = await cluster.client(leader);
    process.kill(leader.child.child.pid!, 'SIGSTOP');
    const stoppedAt = Date.now();
    // Sent to the paused leader itself: it waits in the socket until the process runs again.
    const stuck = client.upsert('p', [point(500)], { deadlineMs: 20_000 }).then(
      () => 'acknowledged',
      (e: QuiverError) => e.code,
    );
    let i = 1000;
    await waitFor(async () => write(other, i++), 'a write to succeed while the leader is paused', 30_000);
    const during = (await cluster.shards(other, 'p'))[0];
    expect(during.leader).not.toBe(leader.id);
    expect(during.epoch).toBeGreaterThan(before.epoch);
    // The fault lasts twice the TTL.
    await new Promise((r) => setTimeout(r, Math.max(0, stoppedAt + 2 * TTL - Date.now())));
    process.kill(leader.child.child.pid!, 'SIGCONT');
    const outcome = await stuck;
    if (outcome === 'acknowledged') acked.push('p500');
    else expect(['UNAVAILABLE', 'DEADLINE_EXCEEDED', 'NOT_LEADER']).toContain(outcome);
    // Through the old leader, writes reach the new one.
    expect(await write(leader, 2000)).toBe(true);
    await cluster.waitConverged(other, 'p', 'the paused leader to rejoin and converge', 3);
    const after = (await cluster.shards(other, 'p'))[0];
    expect(after.leader).toBe(during.leader);
    expect(after.epoch).toBe(during.epoch);
    expect((await (await cluster.client(other)).get('p', acked)).length).toBe(acked.length);
  }, 120_000);

  it('the controller\'s node killed in the middle of an election: the next controller completes it', async () => {
    const n4 = await cluster.startNode('n4', tempDir('quiver-n4-'));
    cluster.nodes.push(n4);
    const [n1] = cluster.nodes;
    await waitFor(async () => (await httpJson(n1.child.http, 'GET', '/v1/cluster')).body.nodes.length === 4, 'four live nodes');
    const etcd = new Etcd3({ hosts: `http://${cluster.etcd.endpoint}` });
    try {
      const ns = etcd.namespace('/quiver/failover/');
      const controller = cluster.node((await ns.election('controller').leader())!);
      const created = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: 'e', dim: DIM, shards: 8, replicationFactor: 3, index: { type: 'flat' } });
      expect(created.status, JSON.stringify(created.body)).toBe(200);
      const shards = await cluster.shards(n1, 'e');
      const target = shards.find((s) => !s.replicas.some((r) => r.node === controller.id));
      expect(target, `a shard of e without a replica on the controller ${controller.id}`).toBeDefined();
      const leader = cluster.node(target!.leader);
      const [follower, survivor] = target!.replicas.map((r) => cluster.node(r.node)).filter((n) => n !== leader);
      // Points of that shard only: the other shards may lose their majority below.
      const ofTarget = Array.from({ length: 2000 }, (_, i) => point(3_000_000 + i)).filter((p) => shardOf(p.id, 8) === target!.shard);
      const pts = ofTarget.slice(0, 100);
      await (await cluster.client(survivor)).upsert('e', pts);
      // Two of the shard's three replicas down: the controller can begin an election, not finish it.
      await cluster.kill(leader);
      await cluster.kill(follower);
      const key = `shards/e/${target!.shard}`;
      await waitFor(async () => (await ns.get(key).json() as { phase: string } | null)?.phase === 'electing', `${key} to be electing`, 30_000);
      await cluster.kill(controller);
      await cluster.restart(follower);
      await waitFor(
        async () => {
          const m = (await ns.get(key).json()) as { phase: string; epoch: number; leader: string } | null;
          return m?.phase === 'active' && m.epoch > target!.epoch && [follower.id, survivor.id].includes(m.leader);
        },
        `${key} to have a new leader`,
        30_000,
      );
      expect((await (await cluster.client(survivor)).get('e', pts.map((p) => p.id))).length).toBe(pts.length);
      expect(await (await cluster.client(follower)).upsert('e', [ofTarget[100]], { deadlineMs: 5000 })).toMatchObject({ upserted: 1 });
    } finally {
      etcd.close();
    }
  }, 180_000);
});
