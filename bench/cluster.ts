/**
 * `quiver bench cluster`: by default VectorDBBench's measures (part `vdb`, bench/cluster-vdb.ts) on
 * N nodes it starts on loopback with etcd, or on a running cluster (--target). The other parts
 * (--parts) compare a 3-node cluster with a standalone node, in one run. It starts etcd and the
 * nodes itself (each node spawns its sidecar) and stops every process by pid.
 *
 *   vdb       load duration, serial p50/p99 with recall@10 and recall@100, QPS at each
 *             concurrency with failed searches counted, and insert-while-search (see cluster-vdb.ts);
 *             a table, JSON and an HTML report with the plots under bench/results/
 *   upsert    batches of --batch points by --writers writers into flat and HNSW collections (each
 *             after --warmup points into it, not measured), each batch sent whole to the next node
 *             (a node forwards the parts it does not lead; a batch across shards is a transaction),
 *             then each shard's part sent to its leader: a standalone node, then 3 nodes (a new
 *             cluster for each load) with RF 3 and majority (fsync on every node); points/s, ack
 *             latency p50/p99, and the CPU seconds of every process of the cluster (nodes and
 *             sidecars; etcd apart) from the first write until every replica applied the last, per
 *             acknowledged vector, per replica (and the sidecars' part of it); --upsert-rounds
 *             rounds of every load, each round's cluster figures against that round's standalone
 *             figures sent the same way, medians
 *   lag       then, in a pass of --points / 5 more (its poller's requests are not in the CPU
 *             figure): for sampled writes, the time from the ack until each follower applied it
 *             (sampled every 10 ms, so +-10 ms)
 *   reads     search throughput on a 3-node cluster, one shard with RF 3 (Fashion-MNIST, HNSW):
 *             three clients (one per node, 4 searches in flight each) at
 *             `linearizable` (every shard part on the leader) against `eventual` (spread over the
 *             three replicas), in alternating rounds; QPS medians, their ratio, and the shard
 *             parts each node answered
 *   search    Fashion-MNIST in HNSW (RF 1, 2 shards, both on other nodes than the one asked, so
 *             every shard's part crosses the network) against the standalone node: p50/p99, the
 *             medians over --search-rounds rounds that alternate the two, timed once every node
 *             is at rest (each shard it holds snapshotted at its applied LSN: the snapshot timer
 *             of the shards just loaded would otherwise fire during some rounds and not others)
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ClientOptions, QuiverClient, WriteToken } from '../src/client';
import { shardOf } from '../src/query';
import { CommandSpec, Flags, UsageError, intFlag, listFlag, parseCommandLine, stringFlag } from '../src/common/args';
import type { VdbOptions } from './cluster-vdb';
import { fashionMnist, median } from './datasets';
import { EtcdServer } from './etcd-process';
import { machine, progress, table, writeJson } from './report';

const USAGE = `usage: quiver bench cluster [options]

By default (part vdb), VectorDBBench's measures on --nodes nodes it starts on loopback with etcd
(/usr/bin/etcd), or on a running cluster (--target): load duration (upserts until every replica
applied them), serial search p50/p99 with recall@10 and recall@100, QPS at each --concurrency
with failed searches counted, and search QPS, p99 and recall@10 while inserting at --insert-rate.
A table on stdout; bench/results/cluster-vdb.json and cluster-vdb.html (the latency and QPS
plots). Progress bars on stderr when it is a terminal.

The other parts: a 3-node cluster (RF 3, majority, fsync on every node) on loopback next to a
standalone node, in one run: upsert throughput, CPU per vector per replica (nodes and sidecars;
etcd apart), ack latency and replication lag for flat and HNSW collections, with batches sent to
any node and with each shard's part sent to its leader; search latency when every shard's part
crosses the network (Fashion-MNIST, HNSW); reads at linearizable against eventual.
The processes it starts are stopped by pid.

options of part vdb:
  --target LIST     gRPC addresses (host:port,...) of a running cluster's nodes: start nothing
  --api-key KEY     with --target: the API key the clients send (an admin key: the run creates
                    a collection); default the environment variable QUIVER_API_KEY
  --tls-ca FILE     with --target: the nodes serve TLS; FILE is the CA of their certificates
  --nodes N         nodes started (default 3)
  --dataset D       fashion-mnist (60,000 x 784) or synthetic:N:dim (seeded, clustered, L2)
                    (default fashion-mnist)
  --shards N        shards of the collection (default 2)
  --replication-factor N  replicas of each shard (default 2, at most --nodes)
  --batch N         points per upsert (default 100)
  --rest-seconds N  after the load, wait at most N s for every replica to be snapshotted before
                    searching, so that the snapshot timer does not fire during a measure
                    (default 120; 0: do not wait)
  --queries N       queries of the dataset used; the serial pass asks each once (default 1000)
  --qps-seconds N   seconds of searches at each concurrency (default 10)
  --concurrency L   searches in flight, a list (default 1,2,4,8,16,32)
  --insert-rate N   points per second inserted while searching (default 200); the dataset's last
                    rate x --stream-seconds points are held back from the load for it
  --stream-seconds N  seconds of insert-while-search (default 15)
  --stream-concurrency N  searches in flight while inserting (default 4)

options of the other parts:
  --points N        points upserted per collection and mode (default 20000)
  --batch N         points per upsert (default 100)
  --writers N       upsert: batches in flight, each writer sending its next as its last is
                    acknowledged (default 1: serial, the ack latency of one writer alone)
  --dim N           dimension of the upsert vectors (default 128)
  --warmup N        points written (in batches of 100) into each load's collection before the
                    measured ones, so that the processes' code is compiled (default 30000; 0:
                    measure fresh processes, whose figures then include compiling their code)
  --search-n N      Fashion-MNIST points for the search part (default 60000)
  --queries N       search: searches timed per mode and round (default 2000)
  --search-rounds N rounds of those, alternating standalone and cluster; medians (default 3)
  --upsert-rounds N upsert: rounds of every load (standalone, then the cluster, each sending
                    batches whole, then by shard); the CPU ratios are each round's cluster against
                    that round's standalone sent the same way; medians (default 3)
  --parts LIST      which parts to run, of vdb, upsert, search, reads (default vdb)
  --read-seconds N  reads: seconds of searches per level and round (default 5)
  --read-rounds N   reads: rounds, each linearizable then eventual; medians (default 3)
  --read-n N        reads: Fashion-MNIST points in the collection (default 20000)
  --fault F         instead: failover under a write load, F one of kill-leader, pause-leader,
                    partition-leader (iptables, as root); time from each fault to the first
                    acknowledged write, p50/p99, and acknowledged writes lost (must be 0)
  --faults N        faults injected with --fault (default 20)
  --lease-ttl-ms N  the nodes' lease TTL with --fault (default 2000)
  --help            this text
`;

export const SPEC: CommandSpec = {
  usage: USAGE,
  flags: Object.fromEntries(
    [
      ...['target', 'api-key', 'tls-ca', 'nodes', 'dataset', 'shards', 'replication-factor', 'rest-seconds', 'qps-seconds', 'concurrency', 'insert-rate', 'stream-seconds', 'stream-concurrency'],
      ...['points', 'batch', 'writers', 'dim', 'warmup', 'search-n', 'queries', 'search-rounds', 'upsert-rounds', 'parts', 'read-seconds', 'read-rounds', 'read-n', 'fault', 'faults', 'lease-ttl-ms'],
    ].map((k) => [k, { type: 'string' }]),
  ),
};

const CLUSTER_ANY = 'cluster RF 3, any node';
const CLUSTER_LEADERS = 'cluster RF 3, to leaders';
/** Standalone, sent as each cluster mode sends: a batch whole (across shards, a transaction), or each shard's part apart. */
const STANDALONE_ANY = 'standalone, whole';
const STANDALONE_LEADERS = 'standalone, by shard';
const BASELINE: Record<string, string> = { [CLUSTER_ANY]: STANDALONE_ANY, [CLUSTER_LEADERS]: STANDALONE_LEADERS };
const BIN = path.resolve(__dirname, '..', '..', 'bin', 'quiver.js');
const log = (m: string): void => void process.stdout.write(`${m}\n`);

export interface Node {
  id: string;
  proc: ChildProcess;
  grpc: string;
  http: string;
  /** The sidecar's pid, as the node printed it. */
  sidecar: number;
  /** host:port of the sidecar (cluster nodes). */
  replication: string;
}

/**
 * Starts `quiver serve` with args (as user and group `uid` when given); resolves once it printed
 * where it listens and that it is ready.
 */
export function serve(id: string, args: string[], uid?: number): Promise<Node> {
  const ids = uid === undefined ? {} : { uid, gid: uid };
  const proc = spawn(process.execPath, [BIN, 'serve', '--node-id', id, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...ids });
  let out = '';
  return new Promise((resolve, reject) => {
    proc.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      const g = /grpc listening on (\S+)/.exec(out);
      const h = /http listening on http:\/\/(\S+)/.exec(out);
      const sc = /sidecar pid (\d+)/.exec(out);
      const r = /replicating on (\S+)/.exec(out);
      if (g && h && /quiver: ready/.test(out)) resolve({ id, proc, grpc: g[1], http: h[1], sidecar: sc ? Number(sc[1]) : 0, replication: r?.[1] ?? '' });
    });
    proc.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    proc.on('exit', (code) => reject(new Error(`node ${id} exited (${code}) before ready:\n${out}`)));
  });
}

/** --api-key and --tls-ca, which only a run against --target takes (the nodes it starts have neither). */
function targetClient(p: Flags, target: string[] | undefined): Pick<ClientOptions, 'apiKey' | 'tls'> | undefined {
  const apiKey = stringFlag(p, 'api-key');
  const ca = stringFlag(p, 'tls-ca');
  if (!target) {
    if (apiKey !== undefined || ca !== undefined) throw new UsageError('--api-key and --tls-ca go with --target');
    return undefined;
  }
  if (ca !== undefined && !fs.existsSync(ca)) throw new UsageError(`--tls-ca: no file ${ca}`);
  return { apiKey, tls: ca === undefined ? undefined : { ca: fs.readFileSync(ca) } };
}

/** CPU seconds (user + system) a process has used so far; 0 once it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

/** CPU seconds of the nodes and their sidecars. */
export function cpuOf(nodes: Node[]): number {
  return nodes.reduce((s, n) => s + cpuSeconds(n.proc.pid!), 0) + sidecarCpuOf(nodes);
}

/** CPU seconds of the sidecars alone. */
export function sidecarCpuOf(nodes: Node[]): number {
  return nodes.reduce((s, n) => s + (n.sidecar ? cpuSeconds(n.sidecar) : 0), 0);
}

export function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

export async function httpJson(base: string, method: string, p: string, body?: unknown): Promise<{ status: number; body: any }> {
  const r = await fetch(`http://${base}${p}`, { method, headers: body ? { 'content-type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined });
  return { status: r.status, body: await r.json() };
}

export async function stop(nodes: Node[]): Promise<void> {
  await Promise.all(
    nodes.map(
      (n) =>
        new Promise<void>((resolve) => {
          if (n.proc.exitCode !== null) return resolve();
          n.proc.once('exit', () => resolve());
          n.proc.kill('SIGTERM');
        }),
    ),
  );
}

/**
 * From the nodes' /metrics: leaderships taken over from another node, and the bucket bound under
 * which 99% of etcd keepalives were answered (all nodes together).
 */
async function leaseHealthOf(nodes: Node[]): Promise<{ leaderChanges: number; keepaliveP99Ms: number }> {
  let leaderChanges = 0;
  const buckets = new Map<number, number>();
  for (const node of nodes) {
    const text = await (await fetch(`http://${node.http}/metrics`)).text();
    for (const m of text.matchAll(/^quiver_leader_changes_total\{[^}]*\} (\S+)$/gm)) leaderChanges += Number(m[1]);
    for (const m of text.matchAll(/^quiver_etcd_keepalive_seconds_bucket\{le="([^"]+)"\} (\S+)$/gm)) {
      const le = m[1] === '+Inf' ? Infinity : Number(m[1]);
      buckets.set(le, (buckets.get(le) ?? 0) + Number(m[2]));
    }
  }
  const total = buckets.get(Infinity) ?? 0;
  const p99 = [...buckets.entries()].sort((a, b) => a[0] - b[0]).find(([, c]) => c >= 0.99 * total)?.[0] ?? NaN;
  return { leaderChanges, keepaliveP99Ms: p99 * 1000 };
}

interface UpsertFigures {
  round: number;
  mode: string;
  index: string;
  pointsPerSec: number;
  ackP50Ms: number;
  ackP99Ms: number;
  cpuUsPerVector: number;
  cpuUsPerVectorPerReplica: number;
  /** The sidecars' part of cpuUsPerVectorPerReplica. */
  sidecarUsPerVectorPerReplica: number;
  /** etcd's CPU over the same load, apart (not in cpuUsPerVector). */
  etcdUsPerVector?: number;
  lagP50Ms?: number;
  lagP99Ms?: number;
}

/** How the cluster's writes are sent: each batch whole to the next node (it forwards the parts it does not lead), or each shard's part to its leader. */
type Route = 'any' | 'leaders';

interface ShardsReport {
  shards: { shard: number; leader: string | null; replicas: { node: string; appliedLsn: number }[] }[];
}

const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Resolves once every replica of every shard has applied the LSN `token` names for it. */
async function allApplied(node: Node, name: string, token: Record<string, number>): Promise<void> {
  for (;;) {
    const r = (await httpJson(node.http, 'GET', `/v1/collections/${name}/shards?digest=false`)).body as ShardsReport;
    if (r.shards.every((s) => s.replicas.every((x) => x.appliedLsn >= (token[String(s.shard)] ?? 0)))) return;
    await pause(20);
  }
}

interface LoadShape {
  points: number;
  batch: number;
  dim: number;
  /** Writers sending batches at once, each the next batch as its last is acknowledged. */
  writers: number;
}

type Points = { id: string; vector: Float32Array }[];

/** A collection made for a load, and how its batches are sent (`route`); `upsert` resolves with the write's token. */
/** A write token's LSNs by shard. */
function lsns(t: WriteToken): Record<string, number> {
  return Object.fromEntries(Object.entries(t).map(([s, p]) => [s, p.lsn]));
}

async function loadTarget(nodes: Node[], name: string, index: 'flat' | 'hnsw', dim: number, replicas: number, route: Route): Promise<{ upsert: (b: number, pts: Points) => Promise<Record<string, number>>; close: () => void }> {
  const shards = 2;
  const created = await httpJson(nodes[0].http, 'POST', '/v1/collections', { name, dim, shards, replicationFactor: replicas, index: { type: index } });
  if (created.status !== 200) throw new Error(`create ${name}: ${JSON.stringify(created.body)}`);
  // routing off: 'any' measures the node's forwarding (a batch across shards is one transaction there), 'leaders' splits by shard here.
  const clients = await Promise.all(nodes.map((n) => QuiverClient.connect(n.grpc, { routing: false })));
  // The leaders' clients by shard (leadership stays put in this benchmark).
  const leaderOf: QuiverClient[] = [];
  if (route === 'leaders') {
    for (;;) {
      const r = (await httpJson(nodes[0].http, 'GET', `/v1/collections/${name}/shards?digest=false`)).body as ShardsReport;
      if (r.shards.every((s) => s.leader !== null)) {
        for (const s of r.shards) leaderOf[s.shard] = clients[nodes.findIndex((n) => n.id === s.leader)];
        break;
      }
      await pause(50);
    }
  }
  const upsert = async (b: number, pts: Points): Promise<Record<string, number>> => {
    if (route === 'any') return lsns((await clients[b % clients.length].upsert(name, pts)).token);
    const parts = new Map<number, Points>();
    for (const p of pts) {
      const s = shardOf(p.id, shards);
      parts.set(s, [...(parts.get(s) ?? []), p]);
    }
    const tokens = await Promise.all([...parts].map(async ([s, part]) => lsns((await leaderOf[s].upsert(name, part)).token)));
    return Object.assign({}, ...tokens) as Record<string, number>;
  };
  return { upsert, close: () => clients.forEach((c) => c.close()) };
}

/** Batch b of the points first..end-1 of a load (seeded by the point's number). */
function batchOf(shape: LoadShape, b: number, first: number, end: number): Points {
  const vec = new Float32Array(shape.dim);
  return Array.from({ length: Math.min(shape.batch, end - (first + b * shape.batch)) }, (_, j) => {
    const i = first + b * shape.batch + j;
    for (let d = 0; d < shape.dim; d++) vec[d] = Math.sin(i * 0.7 + d * 1.3);
    return { id: `p${i}`, vector: vec.slice() };
  });
}

/** Points per batch of a warm-up: what compiles the code is the number of requests, not their size. */
const WARMUP_BATCH = 100;

/**
 * One load into a new collection: `warmup` points first (in batches of WARMUP_BATCH, not measured:
 * the processes' code is compiled by then), then `points` measured, then the lag pass.
 */
async function upsertLoad(round: number, mode: string, nodes: Node[], index: 'flat' | 'hnsw', shape: LoadShape, warmup: number, replicas: number, route: Route, etcdPid?: number): Promise<UpsertFigures> {
  const { points, batch } = shape;
  const name = `load_${index}_${route}_${round}`;
  const { upsert, close } = await loadTarget(nodes, name, index, shape.dim, replicas, route);
  const warm = { ...shape, batch: WARMUP_BATCH };
  for (let b = 0; b * warm.batch < warmup; b++) {
    await upsert(b, batchOf(warm, b, 0, warmup));
    if (b % 50 === 0) progress(`${mode} ${index}: warm-up, ${b * warm.batch} points`);
  }

  // The load: throughput, ack latency and CPU (from the first write until every replica applied the last).
  const acks: number[] = [];
  const last: Record<string, number> = {};
  const cpu0 = cpuOf(nodes);
  const sidecar0 = sidecarCpuOf(nodes);
  const etcd0 = etcdPid ? cpuSeconds(etcdPid) : 0;
  const t0 = performance.now();
  const batches = Math.ceil(points / batch);
  let next = 0;
  const writer = async (): Promise<void> => {
    for (let b = next++; b < batches; b = next++) {
      const pts = batchOf(shape, b, warmup, warmup + points);
      const s = performance.now();
      for (const [shard, lsn] of Object.entries(await upsert(b, pts))) last[shard] = Math.max(last[shard] ?? 0, lsn);
      acks.push(performance.now() - s);
      if (b % 50 === 0) progress(`${mode} ${index}: ${b * batch} points`);
    }
  };
  await Promise.all(Array.from({ length: shape.writers }, writer));
  const secs = (performance.now() - t0) / 1000;
  if (replicas > 1) await allApplied(nodes[0], name, last);
  const cpu = cpuOf(nodes) - cpu0;
  const sidecarCpu = sidecarCpuOf(nodes) - sidecar0;
  const etcdCpu = etcdPid ? cpuSeconds(etcdPid) - etcd0 : 0;

  // Lag, in a pass of its own (its poller's requests would count as the cluster's CPU): for a sample
  // of acknowledged writes, {shard, lsn, ackedAt}; the poller notes when each follower applied it.
  const lags: number[] = [];
  if (replicas > 1) {
    const pending: { shard: string; lsn: number; at: number; seen: Set<string> }[] = [];
    let polling = true;
    const poller = (async () => {
      while (polling) {
        const r = (await httpJson(nodes[0].http, 'GET', `/v1/collections/${name}/shards?digest=false`).catch(() => null))?.body as ShardsReport | undefined;
        const now = performance.now();
        for (const s of r?.shards ?? []) {
          for (const rep of s.replicas) {
            if (rep.node === s.leader) continue;
            for (const p of pending) {
              if (p.shard === String(s.shard) && !p.seen.has(rep.node) && rep.appliedLsn >= p.lsn) {
                p.seen.add(rep.node);
                lags.push(now - p.at);
              }
            }
          }
        }
        for (let i = pending.length - 1; i >= 0; i--) if (pending[i].seen.size >= replicas - 1) pending.splice(i, 1);
        await pause(10);
      }
    })();
    const lagPoints = Math.max(10 * batch, Math.floor(points / 5));
    for (let b = 0; b * batch < lagPoints; b++) {
      const token = await upsert(b, batchOf(shape, b, warmup + points, warmup + points + lagPoints));
      const at = performance.now();
      if (b % 5 === 0) for (const [shard, lsn] of Object.entries(token)) pending.push({ shard, lsn, at, seen: new Set() });
    }
    polling = false;
    await poller;
  }
  close();
  const perVector = (cpu / points) * 1e6;
  return {
    round,
    mode,
    index,
    pointsPerSec: Math.round(points / secs),
    ackP50Ms: quantile(acks, 0.5),
    ackP99Ms: quantile(acks, 0.99),
    cpuUsPerVector: perVector,
    cpuUsPerVectorPerReplica: perVector / replicas,
    sidecarUsPerVectorPerReplica: (sidecarCpu / points / replicas) * 1e6,
    etcdUsPerVector: etcdPid ? (etcdCpu / points) * 1e6 : undefined,
    lagP50Ms: replicas > 1 ? quantile(lags, 0.5) : undefined,
    lagP99Ms: replicas > 1 ? quantile(lags, 0.99) : undefined,
  };
}

/**
 * Resolves true once every shard that each node holds has a snapshot at its applied LSN (nothing
 * left for the snapshot timer to do), false if that takes longer than waitMs.
 */
async function atRest(nodes: Node[], waitMs: number): Promise<boolean> {
  const end = performance.now() + waitMs;
  for (;;) {
    const st = await Promise.all(nodes.map((n) => httpJson(n.http, 'GET', '/v1/cluster')));
    if (st.every((r) => (r.body.shards as { snapshotLsn: number; appliedLsn: number }[]).every((s) => s.snapshotLsn >= s.appliedLsn))) return true;
    if (performance.now() > end) return false;
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function searchLatency(client: QuiverClient, name: string, queries: Float32Array[], k: number): Promise<{ p50: number; p99: number }> {
  for (let i = 0; i < 200; i++) await client.search(name, queries[i % queries.length], { k });
  const t: number[] = [];
  for (const q of queries) {
    const s = performance.now();
    await client.search(name, q, { k });
    t.push(performance.now() - s);
  }
  return { p50: quantile(t, 0.5), p99: quantile(t, 0.99) };
}

export async function run(argv: string[]): Promise<number> {
  const p = parseCommandLine(argv, SPEC);
  if (!p) return 0;
  const fault = stringFlag(p, 'fault');
  if (fault !== undefined) {
    const { FAULTS, runFaults } = await import('./cluster-faults');
    if (!(FAULTS as readonly string[]).includes(fault)) throw new UsageError(`--fault must be one of ${FAULTS.join(', ')}`);
    return runFaults(fault as (typeof FAULTS)[number], intFlag(p, 'faults', 20, 1), intFlag(p, 'lease-ttl-ms', 2000, 1000));
  }
  const points = intFlag(p, 'points', 20_000, 1);
  const batch = intFlag(p, 'batch', 100, 1);
  const dim = intFlag(p, 'dim', 128, 1);
  const shape: LoadShape = { points, batch, dim, writers: intFlag(p, 'writers', 1, 1) };
  const warmup = intFlag(p, 'warmup', 30_000, 0);
  const searchN = intFlag(p, 'search-n', 60_000, 1);
  const searchRounds = intFlag(p, 'search-rounds', 3, 1);
  const upsertRounds = intFlag(p, 'upsert-rounds', 3, 1);
  const parts = new Set((stringFlag(p, 'parts') ?? 'vdb').split(',').map((x) => x.trim()));
  for (const part of parts) if (!['vdb', 'upsert', 'search', 'reads'].includes(part)) throw new UsageError(`--parts takes vdb, upsert, search and reads (got "${part}")`);
  const nodeCount = intFlag(p, 'nodes', 3, 1);
  const target = stringFlag(p, 'target')?.split(',').map((x) => x.trim()).filter(Boolean);
  if (target?.length === 0) throw new UsageError('--target takes host:port,... of the nodes\' gRPC servers');
  if (target && [...parts].some((x) => x !== 'vdb')) throw new UsageError('--target runs part vdb only');
  const nQueries = intFlag(p, 'queries', parts.has('vdb') ? 1000 : 2000, 1);
  const concurrency = listFlag(p, 'concurrency', [1, 2, 4, 8, 16, 32]);
  for (const c of concurrency) if (!Number.isSafeInteger(c) || c < 1) throw new UsageError(`--concurrency takes whole numbers >= 1 (got ${c})`);
  const insertRate = intFlag(p, 'insert-rate', 200, 1);
  const streamSeconds = intFlag(p, 'stream-seconds', 15, 1);
  // Loaded when run (it imports this module).
  const { runVdb, vdbDataset } = await import('./cluster-vdb');
  const vdb: VdbOptions | undefined = parts.has('vdb')
    ? {
        dataset: vdbDataset(stringFlag(p, 'dataset', 'fashion-mnist'), nQueries, insertRate, streamSeconds),
        shards: intFlag(p, 'shards', 2, 1),
        replicationFactor: intFlag(p, 'replication-factor', Math.min(2, nodeCount), 1),
        batch,
        qpsSeconds: intFlag(p, 'qps-seconds', 10, 1),
        concurrency,
        insertRate,
        streamSeconds,
        streamConcurrency: intFlag(p, 'stream-concurrency', 4, 1),
        restSeconds: intFlag(p, 'rest-seconds', 120, 0),
        client: targetClient(p, target),
      }
    : undefined;
  const readSeconds = intFlag(p, 'read-seconds', 5, 1);
  const readRounds = intFlag(p, 'read-rounds', 3, 1);
  const readN = intFlag(p, 'read-n', 20_000, 1);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-bench-cluster-'));
  const all: Node[] = [];
  let etcd: EtcdServer | undefined;
  const results: { upsert: UpsertFigures[]; search: Record<string, number>[]; reads: Record<string, unknown>[] } = { upsert: [], search: [], reads: [] };
  const lease = { leaderChanges: 0, keepaliveP99Ms: 0 };
  try {
    if (target) {
      await runVdb(target, vdb!, `target ${target.join(',')}`, false);
      return 0;
    }
    etcd = await EtcdServer.start();
    if (vdb) {
      const nodes = await startNodes(all, etcd, tmp, 'bench-vdb', nodeCount);
      await runVdb(nodes.map((n) => n.grpc), vdb, `${nodeCount} node(s) started on loopback`, true);
      await stop(nodes);
    }
    if (parts.has('upsert')) await upsertPart(all, etcd, tmp, shape, warmup, upsertRounds, lease, results.upsert);
    if (parts.has('search')) results.search.push(await searchPart(all, etcd, tmp, searchN, nQueries, searchRounds));
    if (parts.has('reads')) results.reads.push(await readsPart(all, etcd, tmp, readN, readSeconds, readRounds));
    if (parts.size > 1 || !parts.has('vdb')) log(`wrote ${writeJson('cluster', { machine: machine(), ...shape, warmup, ...lease, ...results })}`);
    return 0;
  } finally {
    await stop(all);
    await etcd?.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** `count` new nodes n1.. of cluster `name` (data under tmp/name), once the first sees them all. */
export async function startNodes(all: Node[], etcd: EtcdServer, tmp: string, name: string, count = 3): Promise<Node[]> {
  const nodes: Node[] = [];
  for (let i = 1; i <= count; i++) {
    const id = `n${i}`;
    const n = await serve(id, ['--etcd', `http://${etcd.endpoint}`, '--data', path.join(tmp, name, id), '--replication', '127.0.0.1:0', '--cluster', name]);
    nodes.push(n);
    all.push(n);
  }
  while ((await httpJson(nodes[0].http, 'GET', '/v1/cluster')).body.nodes.length < count) await new Promise((r) => setTimeout(r, 50));
  return nodes;
}

async function upsertPart(
  all: Node[],
  etcd: EtcdServer,
  tmp: string,
  shape: LoadShape,
  warmup: number,
  rounds: number,
  lease: { leaderChanges: number; keepaliveP99Ms: number },
  out: UpsertFigures[],
): Promise<void> {
  const { points, batch, dim } = shape;
  const alone = await serve('alone', ['--data', path.join(tmp, 'alone')]);
  all.push(alone);
  let nodes: Node[] = [];
  for (let round = 1; round <= rounds; round++) {
    // Standalone, then three nodes, RF 3, majority, a cluster of their own for each load (an idle
    // collection's replicas tick and heartbeat: that is no cost of the load measured).
    for (const [route, mode] of [['any', STANDALONE_ANY], ['leaders', STANDALONE_LEADERS]] as const) {
      for (const index of ['flat', 'hnsw'] as const) out.push(await upsertLoad(round, mode, [alone], index, shape, warmup, 1, route));
    }
    for (const [route, mode] of [['any', CLUSTER_ANY], ['leaders', CLUSTER_LEADERS]] as const) {
      for (const index of ['flat', 'hnsw'] as const) {
        await stop(nodes);
        nodes = await startNodes(all, etcd, tmp, `bench-${route}-${index}-${round}`);
        out.push(await upsertLoad(round, mode, nodes, index, shape, warmup, 3, route, etcd.pid));
        const l = await leaseHealthOf(nodes);
        lease.leaderChanges += l.leaderChanges;
        lease.keepaliveP99Ms = Math.max(lease.keepaliveP99Ms, l.keepaliveP99Ms);
      }
    }
  }
  await stop(nodes);
  log('');
  log(`leases under those loads, no fault injected: leader changes ${lease.leaderChanges} (goal 0); 99% of etcd keepalives answered within ${lease.keepaliveP99Ms} ms`);
  log(`upserts of ${points} points in batches of ${batch} by ${shape.writers} writer(s), dim ${dim}, each into a new collection after ${warmup} points not measured, ${rounds} round(s):`);
  log(
    table(
      out.map((r) => ({
        round: r.round,
        mode: r.mode,
        index: r.index,
        'points/s': r.pointsPerSec,
        'ack p50 ms': r.ackP50Ms.toFixed(2),
        'ack p99 ms': r.ackP99Ms.toFixed(2),
        'CPU us/vector': r.cpuUsPerVector.toFixed(1),
        'CPU us/vector/replica': r.cpuUsPerVectorPerReplica.toFixed(1),
        'of it sidecars': r.mode.startsWith('standalone') ? '-' : r.sidecarUsPerVectorPerReplica.toFixed(1),
        'etcd us/vector': r.etcdUsPerVector?.toFixed(1) ?? '-',
        'lag p50 ms': r.lagP50Ms?.toFixed(1) ?? '-',
        'lag p99 ms': r.lagP99Ms?.toFixed(1) ?? '-',
      })),
    ),
  );
  for (const mode of [CLUSTER_ANY, CLUSTER_LEADERS]) {
    for (const index of ['flat', 'hnsw']) {
      const ratios: number[] = [];
      for (let round = 1; round <= rounds; round++) {
        const a = out.find((r) => r.round === round && r.mode === BASELINE[mode] && r.index === index)!;
        const c = out.find((r) => r.round === round && r.mode === mode && r.index === index)!;
        ratios.push(c.cpuUsPerVectorPerReplica / a.cpuUsPerVector);
      }
      const each = rounds > 1 ? ` (rounds: ${ratios.map((x) => x.toFixed(2)).join(', ')})` : '';
      log(`${index}, ${mode}: CPU per vector per replica, cluster / ${BASELINE[mode]} = ${median(ratios).toFixed(2)}${rounds > 1 ? ', median' : ''}${each} (goal <= 1.25)`);
    }
  }
}

async function searchPart(all: Node[], etcd: EtcdServer, tmp: string, searchN: number, nQueries: number, searchRounds: number): Promise<Record<string, number>> {
  {
    const alone = await serve('alone-search', ['--data', path.join(tmp, 'alone-search')]);
    all.push(alone);
    const cluster = 'bench-search';
    const nodes = await startNodes(all, etcd, tmp, cluster);

    // Search across the network: RF 1, 2 shards placed on two nodes; the query goes to a node holding neither.
    const ds = fashionMnist(searchN, nQueries);
    const n4 = await serve('n4', ['--etcd', `http://${etcd.endpoint}`, '--data', path.join(tmp, cluster, 'n4'), '--replication', '127.0.0.1:0', '--cluster', cluster]);
    all.push(n4);
    const spec = { name: 'fashion', dim: ds.dim, shards: 2, replicationFactor: 1, index: { type: 'hnsw' } };
    for (const base of [alone, n4]) {
      const r = await httpJson(base.http, 'POST', '/v1/collections', spec);
      if (r.status !== 200) throw new Error(`create fashion: ${JSON.stringify(r.body)}`);
    }
    const load = async (client: QuiverClient): Promise<void> => {
      for (let i = 0; i < ds.nBase; i += 1000) {
        const pts = [];
        for (let j = i; j < Math.min(ds.nBase, i + 1000); j++) pts.push({ id: `f${j}`, vector: ds.base.subarray(j * ds.dim, (j + 1) * ds.dim) });
        await client.upsert('fashion', pts);
      }
    };
    const aloneClient = await QuiverClient.connect(alone.grpc);
    const n4Client = await QuiverClient.connect(n4.grpc);
    progress('loading Fashion-MNIST into both');
    await load(aloneClient);
    await load(n4Client);
    const shards = (await httpJson(n4.http, 'GET', '/v1/collections/fashion/shards')).body.shards as { leader: string }[];
    const asker = [n4, ...nodes].find((n) => !shards.some((s) => s.leader === n.id))!;
    const askerClient = await QuiverClient.connect(asker.grpc);
    const queries = Array.from({ length: ds.nQueries }, (_, i) => ds.queries.subarray(i * ds.dim, (i + 1) * ds.dim));
    progress('waiting for every node to be at rest (its shards snapshotted)');
    const rested = await atRest([alone, n4, ...nodes], 180_000);
    const rounds: { a: { p50: number; p99: number }; c: { p50: number; p99: number } }[] = [];
    for (let r = 0; r < searchRounds; r++) {
      rounds.push({ a: await searchLatency(aloneClient, 'fashion', queries, 10), c: await searchLatency(askerClient, 'fashion', queries, 10) });
      progress(`search round ${r + 1}: standalone p50 ${rounds[r].a.p50.toFixed(3)} p99 ${rounds[r].a.p99.toFixed(3)}; cross-node p50 ${rounds[r].c.p50.toFixed(3)} p99 ${rounds[r].c.p99.toFixed(3)} ms`);
    }
    const a = { p50: median(rounds.map((x) => x.a.p50)), p99: median(rounds.map((x) => x.a.p99)) };
    const c = { p50: median(rounds.map((x) => x.c.p50)), p99: median(rounds.map((x) => x.c.p99)) };
    const figures = { standaloneP50Ms: a.p50, standaloneP99Ms: a.p99, crossNetworkP50Ms: c.p50, crossNetworkP99Ms: c.p99, rounds: searchRounds, atRest: rested ? 1 : 0 };
    log(
      `search k 10, ${ds.nBase} x ${ds.dim} HNSW, 2 shards, medians of ${searchRounds} rounds${rested ? '' : ' (some node was still snapshotting after 180 s)'}: standalone p50 ${a.p50.toFixed(3)} ms p99 ${a.p99.toFixed(3)} ms; asked of ${asker.id} (holds neither shard) p50 ${c.p50.toFixed(3)} ms p99 ${c.p99.toFixed(3)} ms (goal p50 < 1, p99 < 5)`,
    );
    for (const cl of [aloneClient, n4Client, askerClient]) cl.close();
    await stop([alone, n4, ...nodes]);
    return figures;
  }
}

/**
 * Search throughput at `linearizable` (each search's shard part on the leader) against `eventual`
 * (spread over the replicas): a 3-node cluster, one shard with RF 3, three clients (one per node)
 * with 4 searches in flight each, in alternating rounds of `seconds` per level.
 */
async function readsPart(all: Node[], etcd: EtcdServer, tmp: string, n: number, seconds: number, rounds: number): Promise<Record<string, unknown>> {
  const ds = fashionMnist(n, 1000);
  const nodes = await startNodes(all, etcd, tmp, 'bench-reads');
  const r = await httpJson(nodes[0].http, 'POST', '/v1/collections', { name: 'reads', dim: ds.dim, shards: 1, replicationFactor: 3, index: { type: 'hnsw' } });
  if (r.status !== 200) throw new Error(`create reads: ${JSON.stringify(r.body)}`);
  const clients = await Promise.all(nodes.map((x) => QuiverClient.connect(x.grpc)));
  progress(`reads: loading ${ds.nBase} Fashion-MNIST points`);
  let token: WriteToken = {};
  for (let i = 0; i < ds.nBase; i += 1000) {
    const pts = [];
    for (let j = i; j < Math.min(ds.nBase, i + 1000); j++) pts.push({ id: `f${j}`, vector: ds.base.subarray(j * ds.dim, (j + 1) * ds.dim) });
    token = (await clients[0].upsert('reads', pts)).token;
  }
  await allApplied(nodes[0], 'reads', lsns(token));
  progress('reads: waiting for every node to be at rest (its shards snapshotted)');
  const rested = await atRest(nodes, 180_000);
  const queries = Array.from({ length: ds.nQueries }, (_, i) => ds.queries.subarray(i * ds.dim, (i + 1) * ds.dim));
  const served = async (): Promise<number[]> => Promise.all(nodes.map(async (x) => {
    const text = await (await fetch(`http://${x.http}/metrics`)).text();
    let sum = 0;
    for (const line of text.split('\n')) if (line.startsWith('quiver_shard_reads_total{') && line.includes('collection="reads"')) sum += Number(line.split(' ').pop());
    return sum;
  }));
  const qps = async (level: 'linearizable' | 'eventual'): Promise<{ qps: number; parts: number[]; cpu: number[] }> => {
    const before = await served();
    const cpu0 = nodes.map((x) => cpuOf([x]));
    const end = performance.now() + seconds * 1000;
    let done = 0;
    const t0 = performance.now();
    await Promise.all(
      clients.flatMap((c, ci) =>
        Array.from({ length: 4 }, async (_, w) => {
          for (let i = ci * 4 + w; performance.now() < end; i += 12) {
            await c.search('reads', queries[i % queries.length], { k: 10, consistency: level });
            done++;
          }
        }),
      ),
    );
    const secs = (performance.now() - t0) / 1000;
    const cpu = nodes.map((x, i) => (cpuOf([x]) - cpu0[i]) / secs);
    const after = await served();
    return { qps: done / secs, parts: after.map((x, i) => x - before[i]), cpu };
  };
  await qps('eventual'); // warm-up: every node's code compiled
  await qps('linearizable');
  const lin: { qps: number; parts: number[]; cpu: number[] }[] = [];
  const ev: { qps: number; parts: number[]; cpu: number[] }[] = [];
  for (let i = 0; i < rounds; i++) {
    lin.push(await qps('linearizable'));
    ev.push(await qps('eventual'));
    const show = (x: { parts: number[]; cpu: number[] }): string => `parts by node ${x.parts.join('/')}, cores by node ${x.cpu.map((c) => c.toFixed(2)).join('/')}`;
    progress(`reads round ${i + 1}: linearizable ${lin[i].qps.toFixed(0)} QPS (${show(lin[i])}), eventual ${ev[i].qps.toFixed(0)} QPS (${show(ev[i])})`);
  }
  const linQps = median(lin.map((x) => x.qps));
  const evQps = median(ev.map((x) => x.qps));
  const leader = ((await httpJson(nodes[0].http, 'GET', '/v1/collections/reads/shards?digest=false')).body.shards as { leader: string }[])[0].leader;
  log(
    `reads: search k 10 over ${ds.nBase} x ${ds.dim} HNSW, 1 shard, RF 3 (leader ${leader}), 3 clients x 4 in flight, medians of ${rounds} rounds of ${seconds} s${rested ? '' : ' (some node was still snapshotting)'}: ` +
      `linearizable ${linQps.toFixed(0)} QPS, eventual ${evQps.toFixed(0)} QPS, eventual / linearizable = ${(evQps / linQps).toFixed(2)}; ` +
      `shard parts answered by ${nodes.map((x) => x.id).join('/')}: linearizable ${lin[lin.length - 1].parts.join('/')}, eventual ${ev[ev.length - 1].parts.join('/')}; ` +
      `cores used by ${nodes.map((x) => x.id).join('/')} (node + sidecar, medians): linearizable ${nodes.map((_, i) => median(lin.map((x) => x.cpu[i])).toFixed(2)).join('/')}, eventual ${nodes.map((_, i) => median(ev.map((x) => x.cpu[i])).toFixed(2)).join('/')} ` +
      `(the ${os.cpus().length} cores of this machine are shared by the three nodes and the clients: spreading moves work off the leader, it adds no cores)`,
  );
  for (const c of clients) c.close();
  await stop(nodes);
  return { linearizableQps: linQps, eventualQps: evQps, ratio: evQps / linQps, rounds, seconds, points: ds.nBase, leader, linearizableRounds: lin, eventualRounds: ev };
}
