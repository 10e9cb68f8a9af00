/**
 * `quiver bench cluster --fault kill-leader|pause-leader|partition-leader`: failover under a
 * majority write load. Three nodes (RF 3, one shard) and etcd on loopback; writers on every node
 * upsert one point at a time. Each round picks the shard's leader and
 *   kill-leader       SIGKILLs it (then restarts it on the same ports),
 *   pause-leader      SIGSTOPs it (SIGCONT once the shard took a write again),
 *   partition-leader  drops every connection it has, to etcd and to its peers (iptables; the
 *                     nodes run as uids of their own), and heals once the shard took a write again;
 * then measures the time from the fault to the first write acknowledged that was sent after it,
 * waits until the old leader has caught up, and goes on. At the end: every acknowledged write is
 * read back (lost writes must be 0); quiver_failover_seconds is read from every node after each
 * round (a restarted node's counts begin again).
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { performance } from 'perf_hooks';
import { QuiverClient } from '../src/client';
import { QuiverError } from '../src/errors';
import { Node, httpJson, quantile, serve, stop } from './cluster';
import { EtcdServer } from './etcd-process';
import { Iptables, partitionsUnavailable, portOf } from './faults';
import { machine, progress, writeJson } from './report';

export const FAULTS = ['kill-leader', 'pause-leader', 'partition-leader'] as const;
export type Fault = (typeof FAULTS)[number];

const log = (m: string): void => void process.stdout.write(`${m}\n`);
const UID0 = 4301;
type ChildProcessLike = Node['proc'];
const DIM = 8;

/** One writer per node: one point per call, deadline 2 s, no client retries. */
class Writers {
  readonly acked: string[] = [];
  /** performance.now() of each acknowledgement, and when its call was sent. */
  readonly acks: { sent: number; at: number }[] = [];
  failed = 0;
  private stopped = false;
  private readonly loops: Promise<void>[];

  constructor(clients: QuiverClient[], collection: string) {
    this.loops = clients.map(async (c, w) => {
      for (let i = 0; !this.stopped; i++) {
        const id = `w${w}-${i}`;
        const sent = performance.now();
        try {
          await c.upsert(collection, [{ id, vector: Float32Array.from({ length: DIM }, (_, d) => Math.sin(i + d + w)) }], { deadlineMs: 2000 });
          this.acked.push(id);
          this.acks.push({ sent, at: performance.now() });
        } catch (e) {
          if (!(e instanceof QuiverError)) throw e;
          this.failed++;
          // A node that is down answers at once: do not spin on it.
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    });
  }

  /** Resolves with the ack time of the first write sent at or after t0. */
  async firstAckAfter(t0: number, limitMs: number): Promise<number> {
    const end = performance.now() + limitMs;
    for (;;) {
      const a = this.acks.find((x) => x.sent >= t0);
      if (a) return a.at;
      if (performance.now() > end) throw new Error(`no write acknowledged within ${limitMs} ms of the fault`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.loops);
  }
}

async function leaderOf(via: Node, collection: string): Promise<{ leader: string | null; epoch: number; replicas: { node: string; appliedLsn: number; commitLsn: number }[] }> {
  const r = await httpJson(via.http, 'GET', `/v1/collections/${collection}/shards?digest=false`);
  if (r.status !== 200) throw new Error(`shards of ${collection}: ${JSON.stringify(r.body)}`);
  return r.body.shards[0];
}

async function until(cond: () => Promise<boolean>, what: string, ms = 60_000): Promise<void> {
  const end = performance.now() + ms;
  while (!(await cond().catch(() => false))) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function runFaults(fault: Fault, rounds: number, ttlMs: number): Promise<number> {
  const partition = fault === 'partition-leader';
  if (partition) {
    const why = partitionsUnavailable();
    if (why) {
      process.stderr.write(`quiver bench cluster: --fault partition-leader cannot run here: ${why}\n`);
      return 2;
    }
  }
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-bench-faults-'));
  fs.chmodSync(tmp, 0o755);
  const ipt = partition ? new Iptables() : null;
  const nodes: Node[] = [];
  let etcd: EtcdServer | undefined;
  const uidOf = (i: number): number | undefined => (partition ? UID0 + i : undefined);
  const start = async (i: number, ports: string[] = []): Promise<Node> => {
    const dir = path.join(tmp, `n${i + 1}`);
    fs.mkdirSync(dir, { recursive: true });
    const uid = uidOf(i);
    if (uid !== undefined) execFileSync('chown', ['-R', `${uid}:${uid}`, dir]);
    return serve(`n${i + 1}`, ['--etcd', `http://${etcd!.endpoint}`, '--data', dir, '--replication', '127.0.0.1:0', '--cluster', 'faults', '--lease-ttl-ms', String(ttlMs), ...ports], uid);
  };
  let writers: Writers | undefined;
  const clients: QuiverClient[] = [];
  try {
    progress('starting etcd and three nodes');
    etcd = await EtcdServer.start();
    for (let i = 0; i < 3; i++) {
      const uid = uidOf(i);
      if (uid !== undefined) ipt!.markUid(uid);
      nodes.push(await start(i));
    }
    await until(async () => (await httpJson(nodes[0].http, 'GET', '/v1/cluster')).body.nodes.length === 3, 'three live nodes');
    const created = await httpJson(nodes[0].http, 'POST', '/v1/collections', { name: 'fo', dim: DIM, shards: 1, replicationFactor: 3, index: { type: 'flat' } });
    if (created.status !== 200) throw new Error(`create: ${JSON.stringify(created.body)}`);
    for (const n of nodes) clients.push(await QuiverClient.connect(n.grpc, { retries: 0, consistency: 'linearizable' }));
    writers = new Writers(clients, 'fo');
    progress('writers running; injecting faults');
    const times: number[] = [];
    // quiver_failover_seconds, summed over every node process of the run (a restarted node's start at 0).
    const failover = { count: 0, sum: 0 };
    const lastSeen = new Map<ChildProcessLike, { count: number; sum: number }>();
    const readFailover = async (): Promise<void> => {
      for (const n of nodes) {
        const text = await fetch(`http://${n.http}/metrics`).then((r) => r.text()).catch(() => '');
        const count = Number(/^quiver_failover_seconds_count (\S+)/m.exec(text)?.[1] ?? NaN);
        const sum = Number(/^quiver_failover_seconds_sum (\S+)/m.exec(text)?.[1] ?? NaN);
        if (!Number.isFinite(count) || !Number.isFinite(sum)) continue;
        const last = lastSeen.get(n.proc) ?? { count: 0, sum: 0 };
        failover.count += count - last.count;
        failover.sum += sum - last.sum;
        lastSeen.set(n.proc, { count, sum });
      }
    };
    for (let round = 0; round < rounds; round++) {
      const before = await leaderOf(nodes[(round + 1) % 3], 'fo');
      const i = nodes.findIndex((n) => n.id === before.leader);
      const victim = nodes[i];
      const other = nodes[(i + 1) % 3];
      // Steady writes before the fault.
      const n0 = writers.acked.length;
      await until(async () => writers!.acked.length >= n0 + 20, 'writes before the fault');
      const t0 = performance.now();
      let heal = (): void => undefined;
      if (fault === 'kill-leader') victim.proc.kill('SIGKILL');
      else if (fault === 'pause-leader') {
        victim.proc.kill('SIGSTOP');
        heal = () => void victim.proc.kill('SIGCONT');
      } else {
        const peers = nodes.filter((n) => n !== victim).flatMap((n) => [portOf(n.replication), portOf(n.grpc)]);
        heal = ipt!.cut(uidOf(i)!, [portOf(etcd.endpoint), ...peers], [portOf(victim.replication), portOf(victim.grpc), portOf(victim.http)]);
      }
      const at = await writers.firstAckAfter(t0, 60_000);
      times.push((at - t0) / 1000);
      heal();
      if (fault === 'kill-leader') {
        if (victim.proc.exitCode === null && victim.proc.signalCode === null) await new Promise((r) => victim.proc.once('exit', r));
        nodes[i] = await start(i, ['--grpc', victim.grpc, '--http', victim.http]);
      }
      // The old leader back and caught up before the next round.
      const target = (await leaderOf(other, 'fo')).replicas.find((r) => r.node !== victim.id)!.commitLsn;
      await until(async () => ((await leaderOf(nodes[i], 'fo')).replicas.find((r) => r.node === victim.id)?.appliedLsn ?? 0) >= target, `${victim.id} to catch up`);
      await readFailover();
      progress(`${fault}: round ${round + 1}/${rounds}: first write acknowledged ${(times[round] * 1000).toFixed(0)} ms after the fault`);
    }
    await writers.stop();
    // Every acknowledged write, read back.
    let present = 0;
    for (let j = 0; j < writers.acked.length; j += 1000) present += (await clients[0].get('fo', writers.acked.slice(j, j + 1000))).length;
    const lost = writers.acked.length - present;
    await readFailover();
    const p50 = quantile(times, 0.5);
    const p99 = quantile(times, 0.99);
    log(`${fault}, ${rounds} faults, lease TTL ${ttlMs} ms, 3 nodes RF 3 majority, writers on every node:`);
    log(`  fault -> first acknowledged write: p50 ${p50.toFixed(2)} s, p99 ${p99.toFixed(2)} s, max ${Math.max(...times).toFixed(2)} s (goal p99 <= 3 s)`);
    log(`  acknowledged writes ${writers.acked.length}, lost ${lost} (must be 0); failed calls ${writers.failed} (during faults)`);
    log(`  quiver_failover_seconds (every node, read after each round): ${failover.count} observations, mean ${failover.count ? (failover.sum / failover.count).toFixed(2) : '-'} s`);
    log(`wrote ${writeJson(`cluster-${fault}`, { machine: machine(), fault, rounds, ttlMs, seconds: times, p50, p99, acked: writers.acked.length, lost, failed: writers.failed })}`);
    return lost === 0 ? 0 : 1;
  } finally {
    await writers?.stop();
    for (const c of clients) c.close();
    for (const n of nodes) n.proc.kill('SIGCONT');
    ipt?.close();
    await stop(nodes);
    await etcd?.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
