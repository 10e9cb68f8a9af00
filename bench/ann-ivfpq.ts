/**
 * `quiver bench ann --index ivfpq`: IvfPqIndex on Fashion-MNIST (60,000 x 784 base, 10,000 queries,
 * L2). Trains on the base set, adds it, then sweeps nprobe with and without exact re-ranking and
 * reports train and add time (with the thread count), bytes per vector, recall@10 and one-thread
 * QPS (median of --runs). `--device cuda` runs the GPU path instead: exact batch search (and IVF-PQ
 * batch search) on the GPU, QPS and recall against the CPU ground truth.
 * JSON goes to bench/results/.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FlatIndex, IvfPqIndex, gpuInfo } from '../src/native';
import { CommandSpec, UsageError, choiceFlag, intFlag, listFlag, parseCommandLine } from '../src/common/args';
import { fashionMnist, groundTruth, median, recallAtK, sequence, synthetic, Dataset } from './datasets';

const USAGE = `usage: quiver bench ann --index ivfpq [options]

  --dataset fashion-mnist|synthetic   (default fashion-mnist)
  --base N --queries N                limit the set (default: all)
  --nlist N        inverted lists (default 1024)
  --m N            sub-quantizers, 8 bits each (default 49: 49 bytes per vector, 1/64 of 784 floats)
  --refine R       re-rank R*k candidates exactly in the refined runs (default 10)
  --nprobe a,b,..  sweep (default 4,8,12,16,24,32)
  --threads N      threads for train and add (default 2)
  --runs N         timed repetitions per point, median reported (default 3)
  --device cpu|cuda                   (default cpu)
`;

interface Args {
  dataset: string;
  base?: number;
  queries?: number;
  nlist: number;
  m: number;
  refine: number;
  nprobe: number[];
  threads: number;
  runs: number;
  device: string;
}

export const IVFPQ_SPEC: CommandSpec = {
  usage: USAGE,
  flags: Object.fromEntries(['index', 'dataset', 'base', 'queries', 'nlist', 'm', 'refine', 'nprobe', 'threads', 'runs', 'device'].map((k) => [k, { type: 'string' }])),
};

function parse(argv: string[]): Args | null {
  const f = parseCommandLine(argv, IVFPQ_SPEC);
  if (!f) return null;
  choiceFlag(f, 'index', ['ivfpq'], 'ivfpq');
  const base = intFlag(f, 'base', 0, 0);
  const queries = intFlag(f, 'queries', 0, 0);
  const nprobe = listFlag(f, 'nprobe', [4, 8, 12, 16, 24, 32]);
  if (nprobe.some((v) => !Number.isInteger(v) || v < 1)) throw new UsageError('--nprobe needs a list of positive integers');
  return {
    dataset: choiceFlag(f, 'dataset', ['fashion-mnist', 'synthetic'], 'fashion-mnist'),
    base: base || undefined,
    queries: queries || undefined,
    nlist: intFlag(f, 'nlist', 1024, 0),
    m: intFlag(f, 'm', 49, 0),
    refine: intFlag(f, 'refine', 10, 0),
    nprobe,
    threads: intFlag(f, 'threads', 2, 0),
    runs: Math.max(1, intFlag(f, 'runs', 3, 0)),
    device: choiceFlag(f, 'device', ['cpu', 'cuda'], 'cpu'),
  };
}

function load(a: Args): Dataset {
  if (a.dataset === 'synthetic') return synthetic({ nBase: a.base ?? 20000, nQueries: a.queries ?? 1000, dim: 128, metric: 'l2' });
  return fashionMnist(a.base, a.queries);
}

function writeJson(name: string, body: unknown): string {
  const dir = path.resolve(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, name);
  fs.writeFileSync(file, JSON.stringify(body, null, 2) + '\n');
  return file;
}

function machine(): Record<string, unknown> {
  return { cpu: os.cpus()[0]?.model, cores: os.cpus().length, loadavg: os.loadavg(), node: process.version, note: 'shared machine: absolute timings are noisy' };
}

export async function runIvfPq(argv: string[]): Promise<number> {
  const a = parse(argv);
  if (!a) return 0;
  if (a.device === 'cuda') return runCuda(a);
  const k = 10;
  const ds = load(a);
  const truth = await groundTruth(ds, k);
  const out = (s: string) => process.stdout.write(s + '\n');
  out(`ivfpq on ${ds.name}: ${ds.nBase} x ${ds.dim}, ${ds.nQueries} queries, nlist ${a.nlist}, m ${a.m}, refine ${a.refine}`);

  const index = new IvfPqIndex({ dim: ds.dim, metric: ds.metric, nlist: a.nlist, m: a.m, refine: a.refine, seed: 1 });
  let t0 = process.hrtime.bigint();
  await index.train(ds.base, { threads: a.threads });
  const trainS = Number(process.hrtime.bigint() - t0) / 1e9;
  t0 = process.hrtime.bigint();
  await index.add(sequence(ds.nBase), ds.base, { threads: a.threads });
  const addS = Number(process.hrtime.bigint() - t0) / 1e9;
  const codeBytes = a.m;
  const rawBytes = ds.dim * 4;
  out(`train ${trainS.toFixed(1)} s, add ${addS.toFixed(1)} s (${a.threads} threads)`);
  out(`bytes/vector: code ${codeBytes} (1/${(rawBytes / codeBytes).toFixed(0)} of ${rawBytes} raw) + label 4; ` +
      `index memory ${(index.memoryBytes / 1e6).toFixed(1)} MB = ${(index.memoryBytes / ds.nBase).toFixed(0)} B/vector with raw vectors kept for refine`);

  // Reference measured beside every point (the machine is shared and its load drifts within a
  // run): exact search by FlatIndex on one thread over the first 300 queries; "x exact" divides
  // each point's QPS by the reference measured just before it.
  const flat = new FlatIndex({ dim: ds.dim, metric: ds.metric });
  await flat.add(sequence(ds.nBase), ds.base);
  const nRef = Math.min(300, ds.nQueries);
  const refQueries = ds.queries.subarray(0, nRef * ds.dim);
  const flatQpsRuns: number[] = [];
  const measureFlat = async () => {
    const s = process.hrtime.bigint();
    await flat.search(refQueries, k, { threads: 1 });
    flatQpsRuns.push(nRef / (Number(process.hrtime.bigint() - s) / 1e9));
  };
  const rows: Record<string, unknown>[] = [];
  out('nprobe  refine  recall@10  QPS(1 thread, median)  x exact  QPS per CPU-second');
  for (const nprobe of a.nprobe) {
    for (const refine of [0, a.refine]) {
      const qps: number[] = [];
      let recall = 0;
      await measureFlat();
      const ref = flatQpsRuns[flatQpsRuns.length - 1];
      const cpuQps: number[] = [];
      for (let r = 0; r < a.runs; r++) {
        const s = process.hrtime.bigint();
        const c0 = process.cpuUsage();
        const res = await index.search(ds.queries, k, { nprobe, refine, threads: 1 });
        qps.push(ds.nQueries / (Number(process.hrtime.bigint() - s) / 1e9));
        const c = process.cpuUsage(c0);
        cpuQps.push(ds.nQueries / ((c.user + c.system) / 1e6));
        recall = recallAtK(res.labels, res.distances, truth.labels, truth.distances, ds.nQueries, k);
      }
      const ratio = median(qps) / ref;
      // cpuQps: queries per CPU-second of the process (one search thread): less sensitive to other
      // processes taking the cores, still affected by the caches they share.
      const row = { nprobe, refine, recall, qps: median(qps), qpsRuns: qps, cpuQps: median(cpuQps), exactQpsBeside: ref, ratioToExact: ratio };
      rows.push(row);
      out(`${String(nprobe).padStart(6)}  ${String(refine).padStart(6)}  ${recall.toFixed(4).padStart(9)}  ${median(qps).toFixed(0).padStart(21)}  ${ratio.toFixed(1).padStart(7)}  ${median(cpuQps).toFixed(0).padStart(18)}`);
    }
  }
  const flatQps = median(flatQpsRuns);
  out(`exact search (FlatIndex, 1 thread, ${nRef} queries, beside each point): median ${flatQps.toFixed(0)} QPS, ` +
      `range ${Math.min(...flatQpsRuns).toFixed(0)}..${Math.max(...flatQpsRuns).toFixed(0)}`);
  const best = rows.filter((r) => (r.recall as number) >= 0.95).sort((x, y) => (y.qps as number) - (x.qps as number))[0];
  if (best) out(`fastest point with recall@10 >= 0.95: nprobe ${best.nprobe}, refine ${best.refine}: ${(best.qps as number).toFixed(0)} QPS`);
  else out('no point reached recall@10 >= 0.95');
  const file = writeJson(`ann-ivfpq-${ds.name}.json`, {
    bench: 'ann-ivfpq',
    dataset: ds.name,
    nBase: ds.nBase,
    nQueries: ds.nQueries,
    dim: ds.dim,
    params: { nlist: a.nlist, m: a.m, refine: a.refine },
    threads: a.threads,
    trainSeconds: trainS,
    addSeconds: addS,
    codeBytesPerVector: codeBytes,
    rawBytesPerVector: rawBytes,
    memoryBytes: index.memoryBytes,
    rows,
    exactFlatQps1Thread: flatQps,
    exactFlatQpsRuns: flatQpsRuns,
    machine: machine(),
    date: new Date().toISOString(),
  });
  out(`wrote ${file}`);
  return 0;
}

async function runCuda(a: Args): Promise<number> {
  const info = gpuInfo();
  if (!info.available) {
    process.stdout.write(`--device cuda: no GPU available (${info.reason ?? 'no reason given'}); build: ${info.build}. Nothing measured.\n`);
    return 1;
  }
  const { GpuFlatIndex, GpuIvfPqIndex } = await import('../src/native/gpu');
  const k = 10;
  const ds = load(a);
  const truth = await groundTruth(ds, k);
  const out = (s: string) => process.stdout.write(s + '\n');
  out(`GPU: ${info.name} (${((info.memoryBytes ?? 0) / 2 ** 30).toFixed(1)} GiB); ${ds.name}: ${ds.nBase} x ${ds.dim}, ${ds.nQueries} queries`);
  const flat = await GpuFlatIndex.create(ds.dim, ds.metric, ds.base);
  await flat.search(ds.queries.subarray(0, ds.dim * Math.min(100, ds.nQueries)), k); // warm-up
  const times: number[] = [];
  let recall = 0;
  for (let r = 0; r < a.runs; r++) {
    const s = process.hrtime.bigint();
    const res = await flat.search(ds.queries, k);
    times.push(Number(process.hrtime.bigint() - s) / 1e9);
    recall = recallAtK(res.labels, res.distances, truth.labels, truth.distances, ds.nQueries, k);
  }
  const exactQps = ds.nQueries / median(times);
  out(`exact batch search on the GPU: ${exactQps.toFixed(0)} QPS (median of ${a.runs}), recall@10 ${recall.toFixed(4)} vs CPU ground truth`);
  flat.dispose();

  const index = new IvfPqIndex({ dim: ds.dim, metric: ds.metric, nlist: a.nlist, m: a.m, seed: 1 });
  await index.train(ds.base, { threads: a.threads });
  await index.add(sequence(ds.nBase), ds.base, { threads: a.threads });
  const gpuIvf = await GpuIvfPqIndex.fromIndex(index);
  const rows: Record<string, unknown>[] = [];
  for (const nprobe of a.nprobe) {
    const ts: number[] = [];
    let rec = 0;
    for (let r = 0; r < a.runs; r++) {
      const s = process.hrtime.bigint();
      const res = await gpuIvf.search(ds.queries, k, { nprobe });
      ts.push(Number(process.hrtime.bigint() - s) / 1e9);
      rec = recallAtK(res.labels, res.distances, truth.labels, truth.distances, ds.nQueries, k);
    }
    const cpu = await index.search(ds.queries, k, { nprobe });
    const cpuRecall = recallAtK(cpu.labels, cpu.distances, truth.labels, truth.distances, ds.nQueries, k);
    rows.push({ nprobe, recall: rec, cpuRecall, qps: ds.nQueries / median(ts) });
    out(`ivfpq on the GPU nprobe ${nprobe}: ${(ds.nQueries / median(ts)).toFixed(0)} QPS, recall@10 ${rec.toFixed(4)} (CPU ${cpuRecall.toFixed(4)})`);
  }
  gpuIvf.dispose();
  const file = writeJson(`ann-ivfpq-cuda-${ds.name}.json`, {
    bench: 'ann-ivfpq-cuda',
    gpu: info,
    dataset: ds.name,
    exact: { qps: exactQps, recall, runs: times },
    ivfpq: { nlist: a.nlist, m: a.m, rows },
    machine: machine(),
    date: new Date().toISOString(),
  });
  out(`wrote ${file}`);
  return 0;
}
