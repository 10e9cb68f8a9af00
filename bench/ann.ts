/**
 * `quiver bench ann`: our HnswIndex against hnswlib-node and usearch (f32, with f16 as a reference
 * line) on Fashion-MNIST or a seeded synthetic set, same M and efConstruction, the same ef sweep.
 *
 * For each system: build seconds (and threads), memory, then per ef: recall@10 against the exact
 * ground truth (FlatIndex, cached), single-thread QPS (one query per call, awaited in sequence,
 * median of --runs passes, the passes of all systems interleaved so that load changes on a shared
 * machine hit every system alike) and batch QPS on --threads cores (where there is a batch call).
 * For quiver also sync QPS: one query per searchSync call, on the event loop's thread, as the
 * peers' Node APIs answer. Ratios of our single-thread QPS to each peer's at equal or better
 * recall, and of our sync QPS to each peer's at every ef, are printed and written, with the whole
 * table, to <out>/ann-<dataset>.json and an SVG plot of recall vs QPS.
 *
 * `--index ivfpq` hands over to bench/ann-ivfpq.ts (runIvfPq); `--filtered` to bench/ann-filtered.ts
 * (filtered search with and without payload indexes).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { HnswIndex, searchLaneStats, simdLevel } from '../src/native';
import { parseArgs } from 'node:util';
import { CommandSpec, choiceFlag, intFlag, listFlag, parseCommandLine, stringFlag } from '../src/common/args';
import { Dataset, fashionMnist, groundTruth, median, recallAtK, sequence, synthetic } from './datasets';
import { lineChart, Series } from './svg';
import { runIvfPq } from './ann-ivfpq';
import { runFiltered } from './ann-filtered';

const USAGE = `usage: quiver bench ann [options]

  --dataset fashion|synthetic   (default fashion: 60,000 x 784, L2; synthetic: 200,000 x 96 clustered, cosine)
  --n N                         base vectors (default: all of fashion, 200,000 synthetic)
  --queries Q                   queries (default: all 10,000)
  --ef 10,20,...                ef sweep (default 10,20,40,80,120,200,400)
  --peers hnswlib,usearch,usearch-f16 | none   (default: all three)
  --threads T                   threads for our build and the batch searches (default: all cores)
  --runs R                      passes of the single-thread loop per point, median taken (default 3)
  --m M --efc E                 graph parameters for every system (default 16, 200)
  --out DIR                     results directory (default bench/results)
  --index hnsw|ivfpq            ivfpq: run the IVF-PQ benchmark instead, with its own flags
                                (quiver bench ann --index ivfpq --help)
  --filtered                    filtered search with and without payload indexes instead, with
                                its own flags (quiver bench ann --filtered --help)
`;

export const SPEC: CommandSpec = {
  usage: USAGE,
  flags: {
    filtered: { type: 'boolean' },
    ...Object.fromEntries(['dataset', 'n', 'queries', 'ef', 'peers', 'threads', 'runs', 'm', 'efc', 'out', 'index'].map((k) => [k, { type: 'string' as const }])),
  },
};

const K = 10;

export interface Point {
  ef: number;
  recall: number;
  qps1: number;
  qpsBatch: number | null;
  /** One query per searchSync call (quiver only). */
  qpsSync?: number;
}

export interface SystemResult {
  name: string;
  buildSeconds: number;
  buildThreads: number;
  memoryBytes: number | null;
  rssDeltaBytes: number;
  points: Point[];
  note?: string;
}

interface Ctx {
  ds: Dataset;
  truth: { labels: Uint32Array; distances: Float32Array };
  efs: number[];
  runs: number;
  threads: number;
  m: number;
  efc: number;
}

function log(msg: string): void {
  process.stdout.write(`${msg}\n`);
}

function seconds(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function rss(): number {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g) g();
  return process.memoryUsage().rss;
}

/** One system under test: built once, then asked for passes at each ef. */
interface Runner {
  result: SystemResult;
  /** Makes ef the search width for the calls that follow. */
  prepare(ef: number): Promise<void> | void;
  searchOne(i: number, out: Uint32Array, dist: Float32Array): Promise<void> | void;
  /** One query answered synchronously (searchSync), where searchOne is the awaited call. */
  searchSync?: (i: number, out: Uint32Array, dist: Float32Array) => void;
  /** All queries in one call on ctx.threads threads, or null where the API has no batch call. */
  batch: ((ef: number) => Promise<void> | void) | null;
  /** Whether searchOne fills distances comparable with the ground truth's (for tie handling). */
  distances: boolean;
  close(): void;
}

function emptyResult(name: string, buildSeconds: number, buildThreads: number, rssDeltaBytes: number): SystemResult {
  return { name, buildSeconds, buildThreads, memoryBytes: null, rssDeltaBytes, points: [] };
}

function recallOf(ctx: Ctx, labels: Uint32Array, distances: Float32Array | undefined): number {
  return recallAtK(labels, distances, ctx.truth.labels, ctx.truth.distances, ctx.ds.nQueries, K);
}

function query(ctx: Ctx, i: number): Float32Array {
  return ctx.ds.queries.subarray(i * ctx.ds.dim, (i + 1) * ctx.ds.dim);
}

async function buildOurs(ctx: Ctx): Promise<Runner> {
  const { ds } = ctx;
  const rss0 = rss();
  const index = new HnswIndex({ dim: ds.dim, metric: ds.metric, m: ctx.m, efConstruction: ctx.efc, seed: 1 });
  log(`quiver hnsw: building ${ds.nBase} x ${ds.dim} on ${ctx.threads} threads ...`);
  const t0 = process.hrtime.bigint();
  await index.add(sequence(ds.nBase), ds.base, { threads: ctx.threads });
  const buildSeconds = seconds(t0);
  const result = emptyResult('quiver-hnsw', buildSeconds, ctx.threads, rss() - rss0);
  result.memoryBytes = index.memoryBytes;
  log(`quiver hnsw: built in ${buildSeconds.toFixed(2)} s, ${(index.memoryBytes / 1e6).toFixed(1)} MB`);
  let ef = 0;
  return {
    result,
    distances: true,
    prepare: (e) => {
      ef = e;
    },
    searchOne: async (i, out, dist) => {
      const r = await index.search(query(ctx, i), K, { ef, threads: 1 });
      out.set(r.labels);
      dist.set(r.distances);
    },
    searchSync: (i, out, dist) => {
      const r = index.searchSync(query(ctx, i), K, { ef });
      out.set(r.labels);
      dist.set(r.distances);
    },
    batch: async (e) => {
      await index.search(ds.queries, K, { ef: e, threads: ctx.threads });
    },
    close: () => undefined,
  };
}

/* eslint-disable @typescript-eslint/no-explicit-any, @typescript-eslint/no-var-requires */
function optional(name: string): any {
  try {
    return require(name);
  } catch (e) {
    log(`${name} is not installed (npm install --save-dev ${name}); skipped: ${(e as Error).message.split('\n')[0]}`);
    return null;
  }
}

async function buildHnswlib(ctx: Ctx): Promise<Runner | null> {
  const lib = optional('hnswlib-node');
  if (!lib) return null;
  const { ds } = ctx;
  const space = ds.metric === 'l2' ? 'l2' : ds.metric === 'ip' ? 'ip' : 'cosine';
  const rss0 = rss();
  const index = new lib.HierarchicalNSW(space, ds.dim);
  index.initIndex(ds.nBase, ctx.m, ctx.efc, 100);
  log(`hnswlib-node: building ${ds.nBase} x ${ds.dim} (addPoint, single-threaded) ...`);
  const t0 = process.hrtime.bigint();
  const step = Math.max(1, Math.floor(ds.nBase / 10));
  for (let i = 0; i < ds.nBase; i++) {
    index.addPoint(Array.from(ds.base.subarray(i * ds.dim, (i + 1) * ds.dim)), i);
    if ((i + 1) % step === 0) log(`  hnswlib-node: ${i + 1} / ${ds.nBase} (${seconds(t0).toFixed(1)} s)`);
  }
  const buildSeconds = seconds(t0);
  const result = emptyResult('hnswlib-node', buildSeconds, 1, rss() - rss0);
  result.note = 'addPoint/searchKnn take number[]; no batch search in the Node API';
  log(`hnswlib-node: built in ${buildSeconds.toFixed(2)} s, RSS +${(result.rssDeltaBytes / 1e6).toFixed(1)} MB`);
  return {
    result,
    distances: false,
    prepare: (ef) => index.setEf(ef),
    searchOne: (i, out) => {
      const r = index.searchKnn(Array.from(query(ctx, i)), K);
      for (let j = 0; j < r.neighbors.length; j++) out[j] = r.neighbors[j];
    },
    batch: null,
    close: () => undefined,
  };
}

async function buildUsearch(ctx: Ctx, quantization: 'f32' | 'f16', outDir: string): Promise<Runner | null> {
  const lib = optional('usearch');
  if (!lib) return null;
  const { ds } = ctx;
  const name = `usearch-${quantization}`;
  const metric = ds.metric === 'l2' ? 'l2sq' : ds.metric === 'ip' ? 'ip' : 'cos';
  const config = (ef: number) => ({
    dimensions: ds.dim,
    metric,
    connectivity: ctx.m,
    expansion_add: ctx.efc,
    expansion_search: ef,
    quantization,
  });
  const rss0 = rss();
  const built = new lib.Index(config(ctx.efs[0]));
  const keys = new BigUint64Array(ds.nBase);
  for (let i = 0; i < ds.nBase; i++) keys[i] = BigInt(i);
  log(`${name}: building ${ds.nBase} x ${ds.dim} on ${ctx.threads} threads ...`);
  const t0 = process.hrtime.bigint();
  built.add(keys, ds.base, ctx.threads);
  const buildSeconds = seconds(t0);
  const result = emptyResult(name, buildSeconds, ctx.threads, rss() - rss0);
  log(`${name}: built in ${buildSeconds.toFixed(2)} s, RSS +${(result.rssDeltaBytes / 1e6).toFixed(1)} MB`);
  // The Node API fixes expansion_search at construction: save once, load one index per ef.
  const file = path.join(outDir, `.${name}-${process.pid}.bin`);
  built.save(file);
  let index: any = built;
  return {
    result,
    distances: false,
    prepare: (ef) => {
      index = new lib.Index(config(ef));
      index.load(file);
    },
    searchOne: (i, out) => {
      const r = index.search(query(ctx, i), K, 1);
      for (let j = 0; j < r.keys.length; j++) out[j] = Number(r.keys[j]);
    },
    batch: () => {
      index.search(ds.queries, K, ctx.threads);
    },
    close: () => fs.rmSync(file, { force: true }),
  };
}
/* eslint-enable @typescript-eslint/no-explicit-any, @typescript-eslint/no-var-requires */

/**
 * The sweep. For each ef, the passes of all systems are interleaved (pass r of every system, then
 * pass r+1), so a change in the machine's load lands on all of them alike. A pass is the single
 * queries, one at a time, then (where there is a sync call) the same synchronously, then (where
 * there is a batch call) all queries in one batch; each QPS reported is the median of the
 * system's passes. The sync answers must be the awaited ones, label for label.
 */
async function sweep(ctx: Ctx, runners: Runner[]): Promise<void> {
  const nq = ctx.ds.nQueries;
  for (const ef of ctx.efs) {
    const qps = runners.map(() => [] as number[]);
    const qpsBatches = runners.map(() => [] as number[]);
    const qpsSyncs = runners.map(() => [] as number[]);
    const found = runners.map(() => ({ labels: new Uint32Array(nq * K), distances: new Float32Array(nq * K) }));
    const foundSync = { labels: new Uint32Array(nq * K), distances: new Float32Array(nq * K) };
    for (const r of runners) await r.prepare(ef);
    for (let pass = 0; pass < ctx.runs; pass++) {
      for (let s = 0; s < runners.length; s++) {
        const { labels, distances } = found[s];
        labels.fill(0xffffffff);
        distances.fill(Infinity);
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < nq; i++) {
          await runners[s].searchOne(i, labels.subarray(i * K, i * K + K), distances.subarray(i * K, i * K + K));
        }
        qps[s].push(nq / seconds(t0));
      }
      for (let s = 0; s < runners.length; s++) {
        const searchSync = runners[s].searchSync;
        if (!searchSync) continue;
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < nq; i++) {
          searchSync(i, foundSync.labels.subarray(i * K, i * K + K), foundSync.distances.subarray(i * K, i * K + K));
        }
        qpsSyncs[s].push(nq / seconds(t0));
        if (!sameAnswers(foundSync, found[s])) throw new Error(`${runners[s].result.name} ef=${ef}: searchSync answered otherwise than search`);
      }
      for (let s = 0; s < runners.length; s++) {
        const batch = runners[s].batch;
        if (!batch) continue;
        const t1 = process.hrtime.bigint();
        await batch(ef);
        qpsBatches[s].push(nq / seconds(t1));
      }
    }
    for (let s = 0; s < runners.length; s++) {
      const r = runners[s];
      const qpsBatch = qpsBatches[s].length ? median(qpsBatches[s]) : null;
      const recall = recallOf(ctx, found[s].labels, r.distances ? found[s].distances : undefined);
      const point: Point = { ef, recall, qps1: median(qps[s]), qpsBatch };
      if (qpsSyncs[s].length) point.qpsSync = median(qpsSyncs[s]);
      r.result.points.push(point);
      log(
        `  ${r.result.name} ef=${ef}: recall@10 ${recall.toFixed(4)}, ${point.qps1.toFixed(0)} QPS (1 thread)` +
          (point.qpsSync === undefined ? '' : `, ${point.qpsSync.toFixed(0)} QPS (sync)`) +
          (qpsBatch === null ? '' : `, ${qpsBatch.toFixed(0)} QPS (batch, ${ctx.threads} threads)`),
      );
    }
  }
}

function sameAnswers(a: { labels: Uint32Array; distances: Float32Array }, b: { labels: Uint32Array; distances: Float32Array }): boolean {
  const bytes = (v: ArrayBufferView) => Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  return bytes(a.labels).equals(bytes(b.labels)) && bytes(a.distances).equals(bytes(b.distances));
}

/** Best single-thread QPS among a system's points with recall >= r (null if none reaches r). */
export function qpsAtRecall(points: Point[], r: number): number | null {
  const ok = points.filter((p) => p.recall >= r);
  return ok.length ? Math.max(...ok.map((p) => p.qps1)) : null;
}

export async function run(argv: string[]): Promise<number> {
  // IVF-PQ has its own benchmark, flags and --help: only --index is read here before handing over.
  const { index, filtered } = parseArgs({ args: argv, options: { index: { type: 'string' }, filtered: { type: 'boolean' } }, strict: false }).values;
  if (index === 'ivfpq') return runIvfPq(argv);
  if (filtered === true) return runFiltered(argv);
  const args = parseCommandLine(argv, SPEC);
  if (!args) return 0;
  choiceFlag(args, 'index', ['hnsw', 'ivfpq'], 'hnsw');

  const dataset = choiceFlag(args, 'dataset', ['fashion', 'synthetic'], 'fashion');
  const nArg = intFlag(args, 'n', 0, 0);
  const qArg = intFlag(args, 'queries', 0, 0);
  let ds: Dataset;
  if (dataset === 'fashion') {
    ds = fashionMnist(nArg || undefined, qArg || undefined);
  } else {
    ds = synthetic({ nBase: nArg || 200_000, nQueries: qArg || 10_000, dim: 96, metric: 'cosine', clusters: 256, seed: 42 });
  }
  const cores = os.cpus().length;
  const ctx: Ctx = {
    ds,
    truth: { labels: new Uint32Array(0), distances: new Float32Array(0) },
    efs: listFlag(args, 'ef', [10, 20, 40, 80, 120, 200, 400]),
    runs: Math.max(1, intFlag(args, 'runs', 3)),
    threads: Math.max(1, intFlag(args, 'threads', cores)),
    m: intFlag(args, 'm', 16),
    efc: intFlag(args, 'efc', 200),
  };
  const peersArg = stringFlag(args, 'peers', 'hnswlib,usearch,usearch-f16');
  const peers = peersArg === 'none' ? [] : peersArg.split(',');
  for (const p of peers) {
    if (!['hnswlib', 'usearch', 'usearch-f16'].includes(p)) {
      process.stderr.write(`unknown peer '${p}' (hnswlib, usearch, usearch-f16, none)\n`);
      return 2;
    }
  }
  const outDir = path.resolve(stringFlag(args, 'out', path.join(__dirname, '..', '..', 'bench', 'results')));
  fs.mkdirSync(outDir, { recursive: true });

  const load0 = os.loadavg();
  log(`dataset ${ds.name}: ${ds.nBase} x ${ds.dim} (${ds.metric}), ${ds.nQueries} queries; simd ${simdLevel()}; ${cores} cores; load ${load0.map((x) => x.toFixed(2)).join(' ')}`);
  log('ground truth (FlatIndex, cached) ...');
  ctx.truth = await groundTruth(ds, K);

  const runners: Runner[] = [await buildOurs(ctx)];
  try {
    if (peers.includes('hnswlib')) {
      const r = await buildHnswlib(ctx);
      if (r) runners.push(r);
    }
    if (peers.includes('usearch')) {
      const r = await buildUsearch(ctx, 'f32', outDir);
      if (r) runners.push(r);
    }
    if (peers.includes('usearch-f16')) {
      const r = await buildUsearch(ctx, 'f16', outDir);
      if (r) runners.push(r);
    }
    log(`sweep: ef ${ctx.efs.join(',')}, ${ctx.runs} interleaved passes of ${ds.nQueries} single queries then one batch per system ...`);
    await sweep(ctx, runners);
  } finally {
    for (const r of runners) r.close();
  }
  const systems = runners.map((r) => r.result);

  // Ratios of our single-thread QPS at equal or better recall.
  const ours = systems[0];
  const targets = [0.9, 0.95, 0.98, 0.99];
  const ratios: Record<string, Record<string, number | null>> = {};
  log('\nsingle-thread QPS at recall@10 >= r (ratio = ours / peer):');
  for (const s of systems.slice(1)) {
    ratios[s.name] = {};
    for (const r of targets) {
      const a = qpsAtRecall(ours.points, r);
      const b = qpsAtRecall(s.points, r);
      const ratio = a !== null && b !== null ? a / b : null;
      ratios[s.name][String(r)] = ratio;
      log(`  r >= ${r}: quiver ${a === null ? '-' : a.toFixed(0)} vs ${s.name} ${b === null ? '-' : b.toFixed(0)}: ${ratio === null ? 'n/a' : `${ratio.toFixed(2)}x`}`);
    }
  }
  // Our sync calls against the peers' (which answer synchronously) at the same ef.
  const syncRatios: Record<string, { ef: number; ratio: number }[]> = {};
  log('\nsingle-thread QPS per ef, quiver sync (searchSync) and awaited (search) against each peer (ratio = quiver sync / peer):');
  for (const p of ours.points) {
    const cells = systems.slice(1).map((s) => {
      const q = s.points.find((x) => x.ef === p.ef)!;
      (syncRatios[s.name] ??= []).push({ ef: p.ef, ratio: p.qpsSync! / q.qps1 });
      return `${s.name} ${q.qps1.toFixed(0)} (${(p.qpsSync! / q.qps1).toFixed(2)}x)`;
    });
    log(`  ef ${p.ef}: quiver sync ${p.qpsSync!.toFixed(0)}, awaited ${p.qps1.toFixed(0)}${cells.length ? '; ' + cells.join(', ') : ''}`);
  }
  const best1 = Math.max(...ours.points.map((p) => p.qps1));
  const batchGain = ours.points.map((p) => (p.qpsBatch ?? 0) / p.qps1);
  log(`\nbuild: ${systems.map((s) => `${s.name} ${s.buildSeconds.toFixed(1)} s (${s.buildThreads} thr)`).join(', ')}`);
  log(`memory: quiver ${(ours.memoryBytes! / 1e6).toFixed(1)} MB (index accounting); RSS deltas ${systems.map((s) => `${s.name} ${(s.rssDeltaBytes / 1e6).toFixed(0)} MB`).join(', ')}`);
  log(`quiver batch/single QPS ratio per ef: ${batchGain.map((g) => g.toFixed(2)).join(' ')} (best single ${best1.toFixed(0)})`);
  const lane = searchLaneStats();
  log(
    `quiver one-query searches: ${lane.laneTasks} on the search lane, ${lane.poolTasks} on the thread pool` +
      (lane.enabled ? ` (lane spin ${lane.spinMicros} us)` : ' (lane off: QUIVER_SEARCH_LANE=0)'),
  );

  const load1 = os.loadavg();
  const result = {
    dataset: ds.name,
    nBase: ds.nBase,
    nQueries: ds.nQueries,
    dim: ds.dim,
    metric: ds.metric,
    k: K,
    m: ctx.m,
    efConstruction: ctx.efc,
    runs: ctx.runs,
    threads: ctx.threads,
    machine: { cores, cpu: os.cpus()[0]?.model, simd: simdLevel(), loadBefore: load0, loadAfter: load1, node: process.version },
    searchLane: lane,
    date: new Date().toISOString(),
    command: `quiver bench ann ${argv.join(' ')}`.trim(),
    systems,
    ratios,
    syncRatios,
  };
  const base = path.join(outDir, `ann-${ds.name}`);
  fs.writeFileSync(`${base}.json`, JSON.stringify(result, null, 2) + '\n');
  const series: Series[] = systems.map((s) => ({
    name: s.name,
    points: s.points.map((p) => [p.recall, p.qps1] as [number, number]),
    dashed: s.name === 'usearch-f16',
  }));
  series.push({ name: `${ours.name} sync`, points: ours.points.map((p) => [p.recall, p.qpsSync!] as [number, number]) });
  const batch = systems.filter((s) => s.points.some((p) => p.qpsBatch !== null));
  for (const s of batch) {
    series.push({ name: `${s.name} batch`, points: s.points.map((p) => [p.recall, p.qpsBatch ?? NaN] as [number, number]), dashed: true });
  }
  fs.writeFileSync(
    `${base}.svg`,
    lineChart(series, {
      title: `${ds.name}: recall@10 vs QPS (M=${ctx.m}, efC=${ctx.efc})`,
      xLabel: 'recall@10',
      yLabel: 'queries per second (log)',
      logY: true,
      xMarks: [{ x: 0.98, label: 'goal 0.98' }],
    }),
  );
  log(`\nwrote ${base}.json and ${base}.svg`);
  return 0;
}
