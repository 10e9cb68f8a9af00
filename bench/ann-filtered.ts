/**
 * `quiver bench ann --filtered`: filtered search through a shard (the engine a node runs, in
 * process: payload filter -> allowed points -> HNSW within them) on Fashion-MNIST with a synthetic
 * payload. Each point i gets r = a seeded random integer 0..99 and tags holding "p1", "p10", "p50"
 * where r < 1, 10, 50, so the filters
 *   keyword  {field: "tags", eq: "pS"}           and
 *   range    {field: "r", range: {lt: S}}
 * allow about S% of the points for S = 1, 10, 50. Each is timed without payload indexes (every
 * payload read per search) and then, in the same run on the same graph, with a keyword index on
 * tags and an integer index on r: single-query QPS (awaited in sequence, median of --runs passes)
 * and recall@10 against an exact search within the same allowed points (FlatIndex). JSON goes to
 * <out>/ann-filtered-<dataset>.json.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FlatIndex, simdLevel } from '../src/native';
import { openDatabase } from '../src/query';
import type { Database, Filter, FilterPlan } from '../src/query';
import { CommandSpec, intFlag, listFlag, parseCommandLine, stringFlag } from '../src/common/args';
import { fashionMnist, median, rng } from './datasets';

const USAGE = `usage: quiver bench ann --filtered [options]

  --n N              base vectors of Fashion-MNIST (default all 60,000)
  --queries Q        queries (default 1,000)
  --ef E             HNSW ef (default 64)
  --m M --efc E      graph parameters (default 16, 200)
  --selectivity a,b  percent of points a filter allows (default 1,10,50)
  --runs R           timed passes per point, median taken (default 3)
  --out DIR          results directory (default bench/results)
`;

export const FILTERED_SPEC: CommandSpec = {
  usage: USAGE,
  flags: {
    filtered: { type: 'boolean' },
    ...Object.fromEntries(['n', 'queries', 'ef', 'm', 'efc', 'selectivity', 'runs', 'out'].map((k) => [k, { type: 'string' as const }])),
  },
};

const K = 10;

function log(msg: string): void {
  process.stdout.write(`${msg}\n`);
}

interface Row {
  filter: 'keyword' | 'range';
  selectivity: number;
  allowed: number;
  indexed: boolean;
  plan: string;
  qps: number;
  recall: number;
}

export async function runFiltered(argv: string[]): Promise<number> {
  const args = parseCommandLine(argv, FILTERED_SPEC);
  if (!args) return 0;
  const nArg = intFlag(args, 'n', 0, 0);
  const ds = fashionMnist(nArg || undefined, intFlag(args, 'queries', 1000, 1));
  const ef = intFlag(args, 'ef', 64, 1);
  const runs = Math.max(1, intFlag(args, 'runs', 3));
  const sels = listFlag(args, 'selectivity', [1, 10, 50]);
  const outDir = path.resolve(stringFlag(args, 'out', path.join(__dirname, '..', '..', 'bench', 'results')));
  fs.mkdirSync(outDir, { recursive: true });
  const load0 = os.loadavg();
  log(`dataset ${ds.name}: ${ds.nBase} x ${ds.dim}, ${ds.nQueries} queries, k ${K}, ef ${ef}; simd ${simdLevel()}; load ${load0.map((x) => x.toFixed(2)).join(' ')}`);

  const r = rng(17);
  const tagsOf = (v: number): string[] => sels.filter((s) => v < s).map((s) => `p${s}`);
  const rs = Int32Array.from({ length: ds.nBase }, () => Math.floor(r() * 100));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-bench-filtered-'));
  const plans: FilterPlan[] = [];
  let db: Database | null = null;
  try {
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0, observer: { filterPlan: (_c, _s, p) => plans.push(p) } });
    const name = 'fashion';
    await db.createCollection({ name, dim: ds.dim, index: { type: 'hnsw', m: intFlag(args, 'm', 16), efConstruction: intFlag(args, 'efc', 200) } });
    const t0 = process.hrtime.bigint();
    for (let from = 0; from < ds.nBase; from += 5000) {
      const to = Math.min(ds.nBase, from + 5000);
      const points = [];
      for (let i = from; i < to; i++) points.push({ id: String(i), vector: ds.base.subarray(i * ds.dim, (i + 1) * ds.dim), payload: { r: rs[i], tags: tagsOf(rs[i]) } });
      await db.upsert(name, points);
    }
    log(`loaded in ${(Number(process.hrtime.bigint() - t0) / 1e9).toFixed(1)} s`);

    const flat = new FlatIndex({ dim: ds.dim, metric: ds.metric });
    await flat.add(Uint32Array.from({ length: ds.nBase }, (_, i) => i), ds.base);
    const cases = sels.flatMap((s) => [
      { filter: 'keyword' as const, selectivity: s, f: { field: 'tags', eq: `p${s}` } as Filter, allow: (v: number): boolean => v < s },
      { filter: 'range' as const, selectivity: s, f: { field: 'r', range: { lt: s } } as Filter, allow: (v: number): boolean => v < s },
    ]);
    const truths = new Map<string, Uint32Array>();
    for (const c of cases) {
      const allowed = Uint32Array.from(rs.keys()).filter((i) => c.allow(rs[i]));
      truths.set(`${c.filter}${c.selectivity}`, (await flat.search(ds.queries, K, { filter: allowed })).labels.slice());
    }

    const rows: Row[] = [];
    const measure = async (indexed: boolean): Promise<void> => {
      for (const c of cases) {
        const truth = truths.get(`${c.filter}${c.selectivity}`)!;
        let found = 0;
        const qps: number[] = [];
        plans.length = 0;
        for (let run = 0; run < runs; run++) {
          const t = process.hrtime.bigint();
          for (let q = 0; q < ds.nQueries; q++) {
            const [hits] = await db!.search(name, { vectors: ds.queries.subarray(q * ds.dim, (q + 1) * ds.dim), k: K, ef, filter: c.f });
            if (run === 0) {
              const want = new Set(truth.subarray(q * K, (q + 1) * K));
              for (const h of hits) if (want.has(Number(h.id))) found++;
            }
          }
          qps.push(ds.nQueries / (Number(process.hrtime.bigint() - t) / 1e9));
        }
        const row: Row = {
          filter: c.filter,
          selectivity: c.selectivity,
          allowed: rs.filter((v) => c.allow(v)).length,
          indexed,
          plan: [...new Set(plans)].join(','),
          qps: median(qps),
          recall: found / (ds.nQueries * K),
        };
        rows.push(row);
        log(`  ${indexed ? 'index  ' : 'no index'} ${row.filter.padEnd(7)} ${String(row.selectivity).padStart(3)}% (${row.allowed} points, ${row.plan}): QPS ${row.qps.toFixed(0)}, recall@10 ${row.recall.toFixed(4)}`);
      }
    };
    log('without payload indexes:');
    await measure(false);
    await db.createPayloadIndex(name, { field: 'tags', type: 'keyword' });
    await db.createPayloadIndex(name, { field: 'r', type: 'integer' });
    log('with payload indexes (tags keyword, r integer):');
    await measure(true);
    log('\nQPS with index / without, per filter and selectivity:');
    for (const row of rows.filter((x) => x.indexed)) {
      const base = rows.find((x) => !x.indexed && x.filter === row.filter && x.selectivity === row.selectivity)!;
      log(`  ${row.filter.padEnd(7)} ${String(row.selectivity).padStart(3)}%: ${(row.qps / base.qps).toFixed(2)}x (${base.qps.toFixed(0)} -> ${row.qps.toFixed(0)})`);
    }
    const file = path.join(outDir, `ann-filtered-${ds.name}.json`);
    const result = {
      dataset: ds.name,
      nBase: ds.nBase,
      nQueries: ds.nQueries,
      k: K,
      ef,
      runs,
      machine: { cores: os.cpus().length, cpu: os.cpus()[0]?.model, simd: simdLevel(), loadBefore: load0, loadAfter: os.loadavg(), node: process.version },
      date: new Date().toISOString(),
      command: `quiver bench ann ${argv.join(' ')}`.trim(),
      rows,
    };
    fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
    log(`\nwrote ${file}`);
  } finally {
    await db?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return 0;
}
