/**
 * `quiver bench atomic`: what all-or-nothing batches across shards cost (src/query/transaction.ts).
 *
 * An in-process standalone Database holds one collection of --shards shards. --writers writers
 * upsert batches of --batch points (synthetic, spread over every shard) back to back, in rounds
 * that alternate two ways of writing the same batches:
 *   atomic     the batch as one request: a transaction (a prepare on each shard, the coordinator's
 *              decision, each other shard's resolution; answered once every part is applied);
 *   per-shard  the batch split by shard, each part its own request, in parallel (one entry per
 *              shard, no transaction: what a batch across shards was before).
 * Printed per way: points/s and ack latency p50/p99 over every round, and atomic / per-shard.
 * Writes JSON to bench/results/atomic.json.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { openDatabase } from '../src/query';
import { byShard } from '../src/common/placement';
import type { IndexSpec } from '../src/query/types';
import { CommandSpec, intFlag, parseCommandLine, stringFlag } from '../src/common/args';
import { pct, synthetic } from './datasets';
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
  --help             this text
`;

export const SPEC: CommandSpec = {
  usage: USAGE,
  flags: Object.fromEntries(['index', 'shards', 'dim', 'batch', 'writers', 'batches', 'rounds'].map((k) => [k, { type: 'string' }])),
};

const now = (): number => Number(process.hrtime.bigint()) / 1e6;
const WAYS = ['atomic', 'per-shard'] as const;

export async function run(argv: string[]): Promise<number> {
  const p = parseCommandLine(argv, SPEC);
  if (!p) return 0;
  const t = stringFlag(p, 'index', 'flat');
  if (t !== 'hnsw' && t !== 'flat') throw new Error(`--index: unknown index type '${t}' (hnsw, flat)`);
  const o = {
    index: t,
    shards: intFlag(p, 'shards', 3, 2),
    dim: intFlag(p, 'dim', 128, 1),
    batch: intFlag(p, 'batch', 1000, 1),
    writers: intFlag(p, 'writers', 4, 1),
    batches: intFlag(p, 'batches', 10, 1),
    rounds: intFlag(p, 'rounds', 4, 1),
  };
  const spec: IndexSpec = t === 'hnsw' ? { type: 'hnsw', m: 16, efConstruction: 100 } : { type: 'flat' };
  const ds = synthetic({ nBase: 20_000, nQueries: 1, dim: o.dim, metric: 'l2' });
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-bench-atomic-'));
  const db = await openDatabase({ dataDir, snapshotIntervalMs: 0 });
  const name = 'atomic';
  const ack: Record<(typeof WAYS)[number], number[]> = { atomic: [], 'per-shard': [] };
  const busyMs: Record<(typeof WAYS)[number], number> = { atomic: 0, 'per-shard': 0 };
  let next = 0;
  /** The next batch: ids cycle through 50,000 (so the collection stops growing), rows through the dataset. */
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
  try {
    await db.createCollection({ name, dim: o.dim, metric: 'l2', index: spec, shards: o.shards });
    for (let r = 0; r < 2 * o.rounds; r++) {
      const way = WAYS[r % 2];
      progress(`round ${Math.floor(r / 2) + 1}/${o.rounds}: ${way}, ${o.writers} writers x ${o.batches} batches of ${o.batch}`);
      const start = now();
      await Promise.all(
        Array.from({ length: o.writers }, async () => {
          for (let b = 0; b < o.batches; b++) {
            const cols = batch();
            const t0 = now();
            if (way === 'atomic') {
              await db.upsertColumns(name, cols);
            } else {
              const parts = byShard(cols.ids.map((_, i) => i), o.shards, (i) => cols.ids[i]);
              await Promise.all(
                [...parts.values()].map((rows) => {
                  const vectors = new Float32Array(rows.length * o.dim);
                  rows.forEach((i, j) => vectors.set(cols.vectors.subarray(i * o.dim, (i + 1) * o.dim), j * o.dim));
                  return db.upsertColumns(name, { ids: rows.map((i) => cols.ids[i]), vectors, payloads: rows.map((i) => cols.payloads[i]) });
                }),
              );
            }
            ack[way].push(now() - t0);
          }
        }),
      );
      busyMs[way] += now() - start;
    }
    const rows = WAYS.map((way) => {
      const ms = [...ack[way]].sort((a, b) => a - b);
      return { way, batches: ms.length, 'points/s': (ms.length * o.batch) / (busyMs[way] / 1000), 'ack p50 ms': pct(ms, 0.5), 'ack p99 ms': pct(ms, 0.99) };
    });
    const ratio = {
      throughput: rows[0]['points/s'] / rows[1]['points/s'],
      p50: rows[0]['ack p50 ms'] / rows[1]['ack p50 ms'],
      p99: rows[0]['ack p99 ms'] / rows[1]['ack p99 ms'],
    };
    const file = writeJson('atomic', { machine: machine(), options: o, standalone: rows, atomicOverPerShard: ratio });
    console.log(`\nstandalone, ${o.shards} shards, ${o.index} ${o.dim}-d, batches of ${o.batch}, ${o.writers} writers\n`);
    console.log(table(rows));
    console.log(`\natomic / per-shard: throughput ${ratio.throughput.toFixed(3)}, ack p50 ${ratio.p50.toFixed(3)}, p99 ${ratio.p99.toFixed(3)}`);
    console.log(`written ${file}`);
  } finally {
    await db.close({ snapshot: false });
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
  return 0;
}
