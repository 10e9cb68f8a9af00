/**
 * `quiver bench exact`: FlatIndex on Fashion-MNIST (60,000 x 784 base, 10,000 queries, L2).
 *   - single-query QPS: one query per call, awaited in sequence, on 1 and 2 threads
 *   - batch QPS: all queries in one call, on 1 and 2 threads
 *   - recall@10 of the batch (blocked) path against brute force: the single-query scan (direct
 *     sum of squared differences, a different code path) over every query, and a float64
 *     JavaScript brute force over a sample of queries.
 * Figures are medians of --runs runs.
 */
import { FlatIndex } from '../src/native';
import { CommandSpec, intFlag, parseCommandLine } from '../src/common/args';
import { fashionMnist, median, recallAtK, sequence } from './datasets';
import { machine, progress, table, writeJson } from './report';

const HELP = `usage: quiver bench exact [--queries N] [--single N] [--runs N] [--check N]

  --queries N  queries in the batch runs (default 10000)
  --single N   queries in the single-query runs (default 300)
  --runs N     runs of each measure; medians are reported (default 3)
  --check N    queries checked against a float64 JavaScript brute force (default 20)
`;

async function timeIt(fn: () => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

export const SPEC: CommandSpec = {
  usage: HELP,
  flags: { queries: { type: 'string' }, single: { type: 'string' }, runs: { type: 'string' }, check: { type: 'string' } },
};

export async function run(argv: string[]): Promise<number> {
  const args = parseCommandLine(argv, SPEC);
  if (!args) return 0;
  const nq = intFlag(args, 'queries', 10000, 1);
  const nSingle = intFlag(args, 'single', 300, 1);
  const runs = intFlag(args, 'runs', 3, 1);
  const nCheck = intFlag(args, 'check', 20, 0);
  const k = 10;
  const ds = fashionMnist(undefined, nq);
  const dim = ds.dim;
  progress(`${ds.name}: ${ds.nBase} base, ${ds.nQueries} queries, dim ${dim}`);
  const index = new FlatIndex({ dim, metric: 'l2' });
  const buildS = await timeIt(() => index.add(sequence(ds.nBase), ds.base));
  progress(`added in ${buildS.toFixed(2)} s`);

  const rows: Record<string, string | number>[] = [];
  const out: Record<string, number> = {};
  for (const threads of [1, 2]) {
    const times: number[] = [];
    for (let r = 0; r < runs; r++) {
      times.push(
        await timeIt(async () => {
          for (let i = 0; i < nSingle; i++) await index.search(ds.queries.subarray(i * dim, (i + 1) * dim), k, { threads });
        }),
      );
    }
    const qps = nSingle / median(times);
    out[`singleQps${threads}t`] = qps;
    rows.push({ mode: 'single query', threads, QPS: qps, goal: threads === 1 ? '>= 110' : '' });
    progress(`single-query, ${threads} thread(s): ${qps.toFixed(1)} QPS`);
  }
  let batch: { labels: Uint32Array; distances: Float32Array } | undefined;
  for (const threads of [1, 2]) {
    const times: number[] = [];
    for (let r = 0; r < runs; r++) {
      times.push(
        await timeIt(async () => {
          batch = await index.search(ds.queries, k, { threads });
        }),
      );
    }
    const qps = ds.nQueries / median(times);
    out[`batchQps${threads}t`] = qps;
    rows.push({ mode: 'batch', threads, QPS: qps, goal: threads === 1 ? '>= 700' : '>= 1200' });
    progress(`batch, ${threads} thread(s): ${qps.toFixed(1)} QPS`);
  }

  progress('ground truth: single-query scans (direct L2) over every query');
  const truthL = new Uint32Array(ds.nQueries * k);
  const truthD = new Float32Array(ds.nQueries * k);
  for (let i = 0; i < ds.nQueries; i += 1) {
    const r = await index.search(ds.queries.subarray(i * dim, (i + 1) * dim), k, { threads: 2 });
    truthL.set(r.labels, i * k);
    truthD.set(r.distances, i * k);
  }
  const recall = recallAtK(batch!.labels, batch!.distances, truthL, truthD, ds.nQueries, k);

  progress(`float64 brute force over ${nCheck} queries`);
  let f64hits = 0;
  for (let q = 0; q < nCheck; q++) {
    const d = new Float64Array(ds.nBase);
    for (let i = 0; i < ds.nBase; i++) {
      let s = 0;
      for (let j = 0; j < dim; j++) {
        const t = ds.queries[q * dim + j] - ds.base[i * dim + j];
        s += t * t;
      }
      d[i] = s;
    }
    const order = Array.from(sequence(ds.nBase)).sort((a, b) => d[a] - d[b] || a - b);
    const kth = d[order[k - 1]];
    for (let j = 0; j < k; j++) {
      const l = batch!.labels[q * k + j];
      if (d[l] <= kth) f64hits++;
    }
  }
  const recallF64 = f64hits / (nCheck * k);

  console.log(table(rows));
  console.log(`\nrecall@10 of the batch path: ${recall.toFixed(4)} vs single-query scans (${ds.nQueries} queries), ${recallF64.toFixed(4)} vs float64 brute force (${nCheck} queries)`);
  const file = writeJson('exact', { machine: machine(), dataset: ds.name, k, runs, buildS, ...out, recall, recallF64, nCheck });
  console.log(`written ${file}`);
  return 0;
}
