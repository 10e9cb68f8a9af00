/**
 * `quiver bench atomic`: what all-or-nothing batches across shards cost (src/query/transaction.ts).
 *
 * One collection of --shards shards; --writers writers upsert batches of --batch points
 * (synthetic, spread over every shard) back to back, in rounds that alternate two ways of writing
 * the same batches:
 *   atomic     the batch as one request: a transaction (a prepare on each other shard, the
 *              coordinator's commit carrying its own part, each other shard's resolution; answered
 *              once every part is applied);
 *   per-shard  the batch split by shard, each part its own request, in parallel (one entry per
 *              shard, no transaction: what a batch across shards was before);
 *   phased     (with --phased) plain per-shard requests in the transaction's order and entries: the
 *              other shards' parts in parallel, then the first id's shard's part, then a one-entry
 *              write on each other shard (a delete of an id it does not hold). No transaction: what
 *              the three commit rounds in sequence cost by themselves.
 * By default against an in-process standalone Database. With --nodes N, through the SDK
 * (src/client) instead, against a standalone `quiver serve` and then against N nodes on loopback
 * with etcd (RF 3, majority), in the same run: the SDK sends an atomic batch whole to its
 * coordinator shard's leader, and each per-shard part to its shard's leader. The processes it
 * starts are stopped by pid.
 * Printed per target and way: points/s, ack latency p50/p99 over every round, CPU per batch (every
 * process of the target, etcd and this one; through the SDK also split into nodes, sidecars, and
 * etcd with this client) and the cores that kept busy, and atomic / per-shard: over every round, and
 * the throughput ratio of each pair of rounds with their median (rule 5: the machine drifts).
 * Writes JSON to bench/results/atomic.json (with --nodes, atomic-cluster.json).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { openDatabase } from '../src/query';
import { QuiverClient } from '../src/client';
import { byShard, shardOf } from '../src/common/placement';
import type { IndexSpec, UpsertColumns } from '../src/query/types';
import { CommandSpec, UsageError, intFlag, parseCommandLine, stringFlag } from '../src/common/args';
import { Node, cpuOf, cpuSeconds, httpJson, serve, sidecarCpuOf, startNodes, stop } from './cluster';
import { median, pct, synthetic } from './datasets';
import { EtcdServer } from './etcd-process';
import { machine, progress, table, writeJson } from './report';

const USAGE = `usage: quiver bench atomic [options]

Upsert throughput and ack latency of batches across shards written as one transaction (atomic)
against the same batches written as one request per shard (per-shard), in alternating rounds.

options:
  --index TYPE       flat or hnsw (default flat)
  --shards N         shards of the collection (default 3)
  --dim N            dimension (default 128)
  --batch N          points per batch (default 1000)
  --writers N        concurrent writers (default 4)
  --batches N        batches per writer per round (default 10)
  --rounds N         rounds of each way, alternating (default 4)
  --nodes N          through the SDK: a standalone quiver serve, then N >= 3 nodes started on
                     loopback with etcd (/usr/bin/etcd), RF 3, majority (default 0: an in-process
                     standalone database only)
  --phased           a third way in the rounds: plain per-shard requests in the transaction's three
                     phases (the other shards' parts, then the first id's shard's part, then a
                     one-entry write on each other shard), with no transaction; prints phased /
                     per-shard too
  --help             this text
`;

export const SPEC: CommandSpec = {
  usage: USAGE,
  flags: { ...Object.fromEntries(['index', 'shards', 'dim', 'batch', 'writers', 'batches', 'rounds', 'nodes'].map((k) => [k, { type: 'string' as const }])), phased: { type: 'boolean' } },
};

const now = (): number => Number(process.hrtime.bigint()) / 1e6;
type Way = 'atomic' | 'per-shard' | 'phased';

interface Options {
  index: 'flat' | 'hnsw';
  shards: number;
  dim: number;
  batch: number;
  writers: number;
  batches: number;
  rounds: number;
  /** The ways the rounds alternate (atomic and per-shard first). */
  ways: Way[];
}

type Row = { way: Way; batches: number; 'points/s': number; 'ack p50 ms': number; 'ack p99 ms': number; 'CPU ms/batch': number; 'cores busy': number } & Record<string, number | string>;
/** CPU seconds used so far, by part of the target (e.g. nodes, sidecars, the rest). */
type CpuParts = () => Record<string, number>;
/** A way / per-shard over every round; `perRound` the throughput ratio of each pair of rounds, `median` theirs. */
type Ratio = { throughput: number; p50: number; p99: number; cpu: number; perRound: number[]; median: number };

/** CPU seconds this process has used. */
const ownCpu = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

/**
 * The alternating rounds against one target: `write(way, batch)` writes a batch one way; `cpu()`
 * the CPU seconds every process of the target (and this one) has used so far, by part (each part
 * gets a column of its CPU ms per batch when there are several). Batch ids cycle through 50,000
 * (so the collection stops growing), rows through a synthetic dataset. `ratio` is atomic /
 * per-shard, `phased` phased / per-shard (with --phased).
 */
async function measure(o: Options, target: string, cpu: CpuParts, write: (way: Way, cols: UpsertColumns & { ids: string[]; vectors: Float32Array }) => Promise<unknown>): Promise<Measured> {
  const ds = synthetic({ nBase: 20_000, nQueries: 1, dim: o.dim, metric: 'l2' });
  const ack = new Map<Way, number[]>(o.ways.map((w) => [w, []]));
  const cpuS = new Map<Way, Record<string, number>>(o.ways.map((w) => [w, {}]));
  const roundMs = new Map<Way, number[]>(o.ways.map((w) => [w, []]));
  let next = 0;
  const batch = () => {
    const ids: string[] = [];
    const vectors = new Float32Array(o.batch * o.dim);
    for (let j = 0; j < o.batch; j++, next++) {
      ids.push(`p${next % 50_000}`);
      const row = next % ds.nBase;
      vectors.set(ds.base.subarray(row * o.dim, (row + 1) * o.dim), j * o.dim);
    }
    return { ids, vectors, payloads: ids.map((id) => ({ id })) };
  };
  for (let r = 0; r < o.ways.length * o.rounds; r++) {
    const way = o.ways[r % o.ways.length];
    progress(`${target}, round ${Math.floor(r / o.ways.length) + 1}/${o.rounds}: ${way}, ${o.writers} writers x ${o.batches} batches of ${o.batch}`);
    const start = now();
    const cpu0 = cpu();
    await Promise.all(
      Array.from({ length: o.writers }, async () => {
        for (let b = 0; b < o.batches; b++) {
          const cols = batch();
          const t0 = now();
          await write(way, cols);
          ack.get(way)!.push(now() - t0);
        }
      }),
    );
    roundMs.get(way)!.push(now() - start);
    const spent = cpuS.get(way)!;
    for (const [k, v] of Object.entries(cpu())) spent[k] = (spent[k] ?? 0) + v - cpu0[k];
  }
  const rows = o.ways.map((way) => {
    const ms = [...ack.get(way)!].sort((a, b) => a - b);
    const busyMs = roundMs.get(way)!.reduce((a, t) => a + t, 0);
    const parts = Object.entries(cpuS.get(way)!);
    const total = parts.reduce((a, [, v]) => a + v, 0);
    const row: Row = { way, batches: ms.length, 'points/s': (ms.length * o.batch) / (busyMs / 1000), 'ack p50 ms': pct(ms, 0.5), 'ack p99 ms': pct(ms, 0.99), 'CPU ms/batch': (total * 1000) / ms.length, 'cores busy': total / (busyMs / 1000) };
    if (parts.length > 1) for (const [k, v] of parts) row[`${k} ms`] = (v * 1000) / ms.length;
    return row;
  });
  const base = rows[o.ways.indexOf('per-shard')];
  const against = (way: Way): Ratio => {
    const row = rows[o.ways.indexOf(way)];
    // Each round writes as many batches either way, so a pair's throughput ratio is the inverse of its times'.
    const perRound = roundMs.get(way)!.map((t, i) => roundMs.get('per-shard')![i] / t);
    return {
      throughput: row['points/s'] / base['points/s'],
      p50: row['ack p50 ms'] / base['ack p50 ms'],
      p99: row['ack p99 ms'] / base['ack p99 ms'],
      cpu: row['CPU ms/batch'] / base['CPU ms/batch'],
      perRound,
      median: median(perRound),
    };
  };
  return { rows, ratio: against('atomic'), phased: o.ways.includes('phased') ? against('phased') : undefined };
}

type Measured = { rows: Row[]; ratio: Ratio; phased?: Ratio };

/** A batch's rows by shard, each part as its own columns, with its shard (the first id's shard first). */
function parts(o: Options, cols: { ids: string[]; vectors: Float32Array; payloads: unknown[] }): ({ ids: string[]; vectors: Float32Array; payloads: unknown[] } & { shard: number })[] {
  return [...byShard(cols.ids.map((_, i) => i), o.shards, (i) => cols.ids[i])].map(([shard, rows]) => {
    const vectors = new Float32Array(rows.length * o.dim);
    rows.forEach((i, j) => vectors.set(cols.vectors.subarray(i * o.dim, (i + 1) * o.dim), j * o.dim));
    return { shard, ids: rows.map((i) => cols.ids[i]), vectors, payloads: rows.map((i) => cols.payloads[i]) };
  });
}

/** An id of each shard that no batch writes (`absent[s]` falls in shard s). */
function absentIds(shards: number): string[] {
  const out: string[] = [];
  for (let i = 0; out.filter((x) => x !== undefined).length < shards; i++) out[shardOf(`absent${i}`, shards)] ??= `absent${i}`;
  return out;
}

/**
 * The phased way: plain writes in the transaction's phases and entries (no transaction): the
 * other shards' parts in parallel, then the first id's shard's part, then a one-entry write on
 * each other shard.
 */
async function phased<P>(o: Options, cols: { ids: string[]; vectors: Float32Array; payloads: unknown[] }, absent: string[], upsert: (part: P) => Promise<unknown>, asPart: (c: { ids: string[]; vectors: Float32Array; payloads: unknown[] }) => P, del: (ids: string[]) => Promise<unknown>): Promise<void> {
  const [first, ...others] = parts(o, cols);
  await Promise.all(others.map((p) => upsert(asPart(p))));
  await upsert(asPart(first));
  await Promise.all(others.map((p) => del([absent[p.shard]])));
}

function print(title: string, m: Measured): void {
  console.log(`\n${title}\n`);
  console.log(table(m.rows));
  const line = (name: string, r: Ratio, goal: string): void => {
    console.log(`\n${name} / per-shard: throughput ${r.throughput.toFixed(3)}, ack p50 ${r.p50.toFixed(3)}, p99 ${r.p99.toFixed(3)}, CPU per batch ${r.cpu.toFixed(3)}`);
    console.log(`throughput per pair of rounds: ${r.perRound.map((x) => x.toFixed(3)).join(' ')}; median ${r.median.toFixed(3)}${goal}`);
  };
  line('atomic', m.ratio, ' (goal: at least 0.85)');
  if (m.phased) line('phased', m.phased, '');
}

/** Columns of a part without its shard. */
const columnsOf = (p: { ids: string[]; vectors: Float32Array; payloads: unknown[] }): UpsertColumns => ({ ids: p.ids, vectors: p.vectors, payloads: p.payloads as UpsertColumns['payloads'] });

export async function run(argv: string[]): Promise<number> {
  const p = parseCommandLine(argv, SPEC);
  if (!p) return 0;
  const t = stringFlag(p, 'index', 'flat');
  if (t !== 'hnsw' && t !== 'flat') throw new Error(`--index: unknown index type '${t}' (hnsw, flat)`);
  const o: Options = {
    index: t,
    shards: intFlag(p, 'shards', 3, 2),
    dim: intFlag(p, 'dim', 128, 1),
    batch: intFlag(p, 'batch', 1000, 1),
    writers: intFlag(p, 'writers', 4, 1),
    batches: intFlag(p, 'batches', 10, 1),
    rounds: intFlag(p, 'rounds', 4, 1),
    ways: p.values.phased ? ['atomic', 'per-shard', 'phased'] : ['atomic', 'per-shard'],
  };
  const nodes = intFlag(p, 'nodes', 0, 0);
  if (nodes > 0 && nodes < 3) throw new UsageError('--nodes takes 3 or more (the collection has RF 3)');
  const spec: IndexSpec = t === 'hnsw' ? { type: 'hnsw', m: 16, efConstruction: 100 } : { type: 'flat' };
  const shape = `${o.shards} shards, ${o.index} ${o.dim}-d, batches of ${o.batch}, ${o.writers} writers`;
  if (nodes > 0) return throughSdk(o, spec, nodes, shape);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-bench-atomic-'));
  const db = await openDatabase({ dataDir, snapshotIntervalMs: 0 });
  const name = 'atomic';
  try {
    await db.createCollection({ name, dim: o.dim, metric: 'l2', index: spec, shards: o.shards });
    const absent = absentIds(o.shards);
    const m = await measure(o, 'standalone', () => ({ process: ownCpu() }), async (way, cols) => {
      if (way === 'atomic') await db.upsertColumns(name, cols);
      else if (way === 'phased') await phased(o, cols, absent, (part) => db.upsertColumns(name, part), columnsOf, (ids) => db.delete(name, ids));
      else await Promise.all(parts(o, cols).map((part) => db.upsertColumns(name, columnsOf(part))));
    });
    const file = writeJson('atomic', { machine: machine(), options: o, standalone: m.rows, atomicOverPerShard: m.ratio, phasedOverPerShard: m.phased });
    print(`standalone, ${shape}`, m);
    console.log(`written ${file}`);
  } finally {
    await db.close({ snapshot: false });
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
  return 0;
}

/** The two ways through the SDK, against a standalone node and then a cluster of `count` nodes (RF 3, majority). */
async function throughSdk(o: Options, spec: IndexSpec, count: number, shape: string): Promise<number> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-bench-atomic-'));
  const all: Node[] = [];
  let etcd: EtcdServer | undefined;
  const name = 'atomic';
  /** The rounds through an SDK client of `targets`, once the collection made through it has a leader for every shard. */
  const sdkRounds = async (target: string, targets: Node[], replicationFactor: number) => {
    const setup = await QuiverClient.connect(targets[0].grpc);
    await setup.createCollection({ name, dim: o.dim, metric: 'l2', index: spec, shards: o.shards, replicationFactor, writeConcern: 'majority' });
    setup.close();
    while (!(await httpJson(targets[0].http, 'GET', `/v1/collections/${name}/shards?digest=false`)).body.shards.every((s: { leader: string | null }) => s.leader)) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const client = await QuiverClient.connect(targets.map((n) => n.grpc));
    const points = (c: { ids: string[]; vectors: Float32Array; payloads: unknown[] }) =>
      c.ids.map((id, i) => ({ id, vector: c.vectors.subarray(i * o.dim, (i + 1) * o.dim), payload: c.payloads[i] as Record<string, unknown> }));
    try {
      const cpu = () => {
        const sidecars = sidecarCpuOf(targets);
        return { nodes: cpuOf(targets) - sidecars, sidecars, 'etcd+client': ownCpu() + (etcd?.pid === undefined ? 0 : cpuSeconds(etcd.pid)) };
      };
      const absent = absentIds(o.shards);
      return await measure(o, target, cpu, async (way, cols) => {
        if (way === 'atomic') await client.upsert(name, points(cols));
        else if (way === 'phased') await phased(o, cols, absent, (part) => client.upsert(name, part), points, (ids) => client.delete(name, ids));
        else await Promise.all(parts(o, cols).map((part) => client.upsert(name, points(part))));
      });
    } finally {
      client.close();
    }
  };
  try {
    const alone = await serve('alone', ['--data', path.join(tmp, 'alone')]);
    all.push(alone);
    const standalone = await sdkRounds('standalone (SDK)', [alone], 1);
    await stop([alone]);
    etcd = await EtcdServer.start();
    const cluster = await sdkRounds(`cluster of ${count} (SDK)`, await startNodes(all, etcd, tmp, 'bench-atomic', count), 3);
    const file = writeJson('atomic-cluster', {
      machine: machine(),
      options: { ...o, nodes: count, replicationFactor: 3, writeConcern: 'majority' },
      standalone: standalone.rows,
      cluster: cluster.rows,
      atomicOverPerShard: { standalone: standalone.ratio, cluster: cluster.ratio },
      phasedOverPerShard: o.ways.includes('phased') ? { standalone: standalone.phased, cluster: cluster.phased } : undefined,
    });
    print(`standalone through the SDK, ${shape}`, standalone);
    print(`${count} nodes, RF 3, majority, through the SDK, ${shape}`, cluster);
    console.log(`written ${file}`);
  } finally {
    await stop(all);
    await etcd?.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return 0;
}
