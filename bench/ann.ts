/**
 * `quiver bench ann`: our HnswIndex against hnswlib-node and usearch (f32, with f16 as a reference
 * line) on Fashion-MNIST or a seeded synthetic set, same M and efConstruction, the same ef sweep.
 *
 * For each system: build seconds (and threads), memory, then per ef: recall@10 against the exact
 * ground truth (FlatIndex, cached), single-thread QPS (one query per call, awaited in sequence,
 * median of --runs passes) and batch QPS on --threads cores (where the system has a batch call).
 * Ratios of our single-thread QPS to each peer's at equal or better recall are printed and
 * written, with the whole table, to <out>/ann-<dataset>.json and an SVG plot of recall vs QPS.
 *
 * `--index ivfpq` hands over to bench/ann-ivfpq.ts (runIvfPq), when that module is present.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { HnswIndex, simdLevel } from '../src/native';
import { flagBool, flagInt, flagList, flagString, parseArgs } from '../src/cli/args';
import { Dataset, fashionMnist, groundTruth, median, recallAtK, sequence, synthetic } from './datasets';
import { lineChart, Series } from './svg';

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
  --index ivfpq                 run the IVF-PQ benchmark instead (bench/ann-ivfpq.ts)
`;

const K = 10;

export interface Point {
  ef: number;
  recall: number;
  qps1: number;
  qpsBatch: number | null;
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

/** Runs the single-query loop `runs` times; returns the median QPS and the labels of the last pass. */
async function singleThread(
  ctx: Ctx,
  searchOne: (i: number, out: Uint32Array, dist: Float32Array) => Promise<void> | void,
): Promise<{ qps: number; labels: Uint32Array; distances: Float32Array }> {
  const nq = ctx.ds.nQueries;
  const labels = new Uint32Array(nq * K).fill(0xffffffff);
  const distances = new Float32Array(nq * K).fill(Infinity);
  const qpss: number[] = [];
  for (let r = 0; r < ctx.runs; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < nq; i++) {
      await searchOne(i, labels.subarray(i * K, i * K + K), distances.subarray(i * K, i * K + K));
    }
    qpss.push(nq / seconds(t0));
  }
  return { qps: median(qpss), labels, distances };
}

function recallOf(ctx: Ctx, labels: Uint32Array, distances: Float32Array | undefined): number {
  return recallAtK(labels, distances, ctx.truth.labels, ctx.truth.distances, ctx.ds.nQueries, K);
}

function query(ctx: Ctx, i: number): Float32Array {
  return ctx.ds.queries.subarray(i * ctx.ds.dim, (i + 1) * ctx.ds.dim);
}

async function benchOurs(ctx: Ctx): Promise<SystemResult> {
  const { ds } = ctx;
  const rss0 = rss();
  const index = new HnswIndex({ dim: ds.dim, metric: ds.metric, m: ctx.m, efConstruction: ctx.efc, seed: 1 });
  log(`quiver hnsw: building ${ds.nBase} x ${ds.dim} on ${ctx.threads} threads ...`);
  const t0 = process.hrtime.bigint();
  await index.add(sequence(ds.nBase), ds.base, { threads: ctx.threads });
  const buildSeconds = seconds(t0);
  log(`quiver hnsw: built in ${buildSeconds.toFixed(2)} s, ${(index.memoryBytes / 1e6).toFixed(1)} MB`);
  const rssDeltaBytes = rss() - rss0;
  const points: Point[] = [];
  for (const ef of ctx.efs) {
    const one = await singleThread(ctx, async (i, out, dist) => {
      const r = await index.search(query(ctx, i), K, { ef, threads: 1 });
      out.set(r.labels);
      dist.set(r.distances);
    });
    const t1 = process.hrtime.bigint();
    await index.search(ds.queries, K, { ef, threads: ctx.threads });
    const qpsBatch = ds.nQueries / seconds(t1);
    const recall = recallOf(ctx, one.labels, one.distances);
    points.push({ ef, recall, qps1: one.qps, qpsBatch });
    log(`  quiver hnsw ef=${ef}: recall@10 ${recall.toFixed(4)}, ${one.qps.toFixed(0)} QPS (1 thread), ${qpsBatch.toFixed(0)} QPS (batch, ${ctx.threads} threads)`);
  }
  return { name: 'quiver-hnsw', buildSeconds, buildThreads: ctx.threads, memoryBytes: index.memoryBytes, rssDeltaBytes, points };
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

async function benchHnswlib(ctx: Ctx): Promise<SystemResult | null> {
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
  const rssDeltaBytes = rss() - rss0;
  log(`hnswlib-node: built in ${buildSeconds.toFixed(2)} s, RSS +${(rssDeltaBytes / 1e6).toFixed(1)} MB`);
  const points: Point[] = [];
  for (const ef of ctx.efs) {
    index.setEf(ef);
    const one = await singleThread(ctx, (i, out) => {
      const r = index.searchKnn(Array.from(query(ctx, i)), K);
      for (let j = 0; j < r.neighbors.length; j++) out[j] = r.neighbors[j];
    });
    const recall = recallOf(ctx, one.labels, undefined);
    points.push({ ef, recall, qps1: one.qps, qpsBatch: null });
    log(`  hnswlib-node ef=${ef}: recall@10 ${recall.toFixed(4)}, ${one.qps.toFixed(0)} QPS (1 thread)`);
  }
  return {
    name: 'hnswlib-node',
    buildSeconds,
    buildThreads: 1,
    memoryBytes: null,
    rssDeltaBytes,
    points,
    note: 'addPoint/searchKnn take number[]; no batch search in the Node API',
  };
}

async function benchUsearch(ctx: Ctx, quantization: 'f32' | 'f16', outDir: string): Promise<SystemResult | null> {
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
  const rssDeltaBytes = rss() - rss0;
  log(`${name}: built in ${buildSeconds.toFixed(2)} s, RSS +${(rssDeltaBytes / 1e6).toFixed(1)} MB`);
  // The Node API fixes expansion_search at construction: save once, load into one index per ef.
  const file = path.join(outDir, `.usearch-${process.pid}.bin`);
  built.save(file);
  const points: Point[] = [];
  try {
    for (const ef of ctx.efs) {
      const index = new lib.Index(config(ef));
      index.load(file);
      const one = await singleThread(ctx, (i, out, dist) => {
        const r = index.search(query(ctx, i), K, 1);
        for (let j = 0; j < r.keys.length; j++) {
          out[j] = Number(r.keys[j]);
          dist[j] = r.distances[j];
        }
      });
      const t1 = process.hrtime.bigint();
      index.search(ds.queries, K, ctx.threads);
      const qpsBatch = ds.nQueries / seconds(t1);
      const recall = recallOf(ctx, one.labels, undefined);
      points.push({ ef, recall, qps1: one.qps, qpsBatch });
      log(`  ${name} ef=${ef}: recall@10 ${recall.toFixed(4)}, ${one.qps.toFixed(0)} QPS (1 thread), ${qpsBatch.toFixed(0)} QPS (batch, ${ctx.threads} threads)`);
    }
  } finally {
    fs.rmSync(file, { force: true });
  }
  return { name, buildSeconds, buildThreads: ctx.threads, memoryBytes: null, rssDeltaBytes, points };
}
/* eslint-enable @typescript-eslint/no-explicit-any, @typescript-eslint/no-var-requires */

/** Best single-thread QPS among a system's points with recall >= r (null if none reaches r). */
export function qpsAtRecall(points: Point[], r: number): number | null {
  const ok = points.filter((p) => p.recall >= r);
  return ok.length ? Math.max(...ok.map((p) => p.qps1)) : null;
}

export async function run(argv: string[]): Promise<number> {
  const args = parseArgs(argv, ['help']);
  if (flagBool(args, 'help')) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (flagString(args, 'index', 'hnsw') === 'ivfpq') {
    const modName = './ann-ivfpq';
    let mod: { runIvfPq?: (argv: string[]) => Promise<number> };
    try {
      mod = await import(modName);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      // Only the module itself being absent is reported here; an error inside it propagates.
      if (err.code !== 'MODULE_NOT_FOUND' || !String(err.message).includes('ann-ivfpq')) throw e;
      process.stderr.write('--index ivfpq needs bench/ann-ivfpq.ts (exporting runIvfPq), which is not in this build\n');
      return 2;
    }
    if (typeof mod.runIvfPq !== 'function') {
      process.stderr.write('bench/ann-ivfpq does not export runIvfPq(argv)\n');
      return 2;
    }
    return mod.runIvfPq(argv);
  }
  if (flagString(args, 'index', 'hnsw') !== 'hnsw') {
    process.stderr.write(`--index must be hnsw or ivfpq\n${USAGE}`);
    return 2;
  }

  const dataset = flagString(args, 'dataset', 'fashion')!;
  const nArg = flagInt(args, 'n', 0);
  const qArg = flagInt(args, 'queries', 0);
  let ds: Dataset;
  if (dataset === 'fashion') {
    ds = fashionMnist(nArg || undefined, qArg || undefined);
  } else if (dataset === 'synthetic') {
    ds = synthetic({ nBase: nArg || 200_000, nQueries: qArg || 10_000, dim: 96, metric: 'cosine', clusters: 256, seed: 42 });
  } else {
    process.stderr.write(`--dataset must be fashion or synthetic\n${USAGE}`);
    return 2;
  }
  const cores = os.cpus().length;
  const ctx: Ctx = {
    ds,
    truth: { labels: new Uint32Array(0), distances: new Float32Array(0) },
    efs: flagList(args, 'ef', [10, 20, 40, 80, 120, 200, 400]),
    runs: Math.max(1, flagInt(args, 'runs', 3)),
    threads: Math.max(1, flagInt(args, 'threads', cores)),
    m: flagInt(args, 'm', 16),
    efc: flagInt(args, 'efc', 200),
  };
  const peersArg = flagString(args, 'peers', 'hnswlib,usearch,usearch-f16')!;
  const peers = peersArg === 'none' ? [] : peersArg.split(',');
  for (const p of peers) {
    if (!['hnswlib', 'usearch', 'usearch-f16'].includes(p)) {
      process.stderr.write(`unknown peer '${p}' (hnswlib, usearch, usearch-f16, none)\n`);
      return 2;
    }
  }
  const outDir = path.resolve(flagString(args, 'out', path.join(__dirname, '..', '..', 'bench', 'results'))!);
  fs.mkdirSync(outDir, { recursive: true });

  const load0 = os.loadavg();
  log(`dataset ${ds.name}: ${ds.nBase} x ${ds.dim} (${ds.metric}), ${ds.nQueries} queries; simd ${simdLevel()}; ${cores} cores; load ${load0.map((x) => x.toFixed(2)).join(' ')}`);
  log('ground truth (FlatIndex, cached) ...');
  ctx.truth = await groundTruth(ds, K);

  const systems: SystemResult[] = [];
  systems.push(await benchOurs(ctx));
  if (peers.includes('hnswlib')) {
    const r = await benchHnswlib(ctx);
    if (r) systems.push(r);
  }
  if (peers.includes('usearch')) {
    const r = await benchUsearch(ctx, 'f32', outDir);
    if (r) systems.push(r);
  }
  if (peers.includes('usearch-f16')) {
    const r = await benchUsearch(ctx, 'f16', outDir);
    if (r) systems.push(r);
  }

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
  const best1 = Math.max(...ours.points.map((p) => p.qps1));
  const batchGain = ours.points.map((p) => (p.qpsBatch ?? 0) / p.qps1);
  log(`\nbuild: ${systems.map((s) => `${s.name} ${s.buildSeconds.toFixed(1)} s (${s.buildThreads} thr)`).join(', ')}`);
  log(`memory: quiver ${(ours.memoryBytes! / 1e6).toFixed(1)} MB (index accounting); RSS deltas ${systems.map((s) => `${s.name} ${(s.rssDeltaBytes / 1e6).toFixed(0)} MB`).join(', ')}`);
  log(`quiver batch/single QPS ratio per ef: ${batchGain.map((g) => g.toFixed(2)).join(' ')} (best single ${best1.toFixed(0)})`);

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
    date: new Date().toISOString(),
    command: `quiver bench ann ${argv.join(' ')}`.trim(),
    systems,
    ratios,
  };
  const base = path.join(outDir, `ann-${ds.name}`);
  fs.writeFileSync(`${base}.json`, JSON.stringify(result, null, 2) + '\n');
  const series: Series[] = systems.map((s) => ({
    name: s.name,
    points: s.points.map((p) => [p.recall, p.qps1] as [number, number]),
    dashed: s.name === 'usearch-f16',
  }));
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
