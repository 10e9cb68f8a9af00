/**
 * `quiver bench snapshot`: what a snapshot costs the writes and searches that run beside it.
 *
 * For each index type: an in-process Database holds one collection of --n points (synthetic,
 * clustered, with small payloads). Then, concurrently,
 *   a writer   upserts --batch points at a time, back to back, each with an idempotency key (as
 *              the client SDK sends them): new vectors for the loaded ids in turn, so the
 *              collection keeps its --n points (with --grow: new ids, so it grows);
 *   a searcher runs one k=10 query at a time, --search-gap-ms apart;
 *   the main   loop waits --gap-ms, snapshots the collection (Database.snapshot, awaited), and
 *              again, --snapshots times.
 * A write or a search counts as "during" when its interval overlaps a snapshot's, else "outside".
 * The measured phase runs --rounds times on the same collection. Printed: each round's p50/p99/max
 * latency of each side and the ratios during/outside, then the median of the rounds' ratios; the
 * goal is a write p99 ratio of at most 2. Beside it, slow/snap: how many requests per snapshot took
 * over twice the outside p99 (a count does not fall when a snapshot lasts longer and so holds more
 * requests, as a percentile of them does). Writes JSON to bench/results/snapshot-<index>.json.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { openDatabase } from '../src/query';
import type { IndexSpec } from '../src/query/types';
import { CommandSpec, intFlag, parseCommandLine, stringFlag } from '../src/common/args';
import { median, pct, synthetic } from './datasets';
import { machine, progress, table, writeJson } from './report';

const USAGE = `usage: quiver bench snapshot [options]

Write and search latency while a collection is snapshotted, against the same without a snapshot.
The writer replaces the loaded points in turn with new vectors (the collection keeps --n points),
or with --grow adds new points (the collection grows by what is written between snapshots).

options:
  --index LIST           index types, comma-separated: hnsw, flat (default hnsw,flat)
  --n N                  points loaded before the measured phase (default 20000)
  --dim N                dimension (default 128)
  --batch N              points per measured upsert (default 100)
  --grow                 the writer adds new points instead of replacing the loaded ones
  --snapshots N          snapshots taken in the measured phase (default 6)
  --rounds N             measured phases, one after another (default 3); the medians of their ratios are the figures
  --gap-ms N             time between snapshots, and before the first (default 1500)
  --search-gap-ms N      pause between searches (default 5)
  --m N                  hnsw links per node (default 16)
  --ef-construction N    hnsw build candidate list (default 200)
  --help                 this text
`;

export const SPEC: CommandSpec = {
  usage: USAGE,
  flags: { ...Object.fromEntries(['index', 'n', 'dim', 'batch', 'snapshots', 'rounds', 'gap-ms', 'search-gap-ms', 'm', 'ef-construction'].map((k) => [k, { type: 'string' }])), grow: { type: 'boolean' } },
};

interface Span {
  start: number;
  end: number;
}

interface Latency {
  n: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

const now = (): number => Number(process.hrtime.bigint()) / 1e6;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function latency(spans: Span[]): Latency {
  const ms = spans.map((s) => s.end - s.start).sort((a, b) => a - b);
  if (ms.length === 0) return { n: 0, p50Ms: NaN, p99Ms: NaN, maxMs: NaN };
  return { n: ms.length, p50Ms: pct(ms, 0.5), p99Ms: pct(ms, 0.99), maxMs: ms[ms.length - 1] };
}

/** Spans split by whether they overlap one of `snaps`. */
function split(spans: Span[], snaps: Span[]): { during: Span[]; outside: Span[] } {
  const during: Span[] = [];
  const outside: Span[] = [];
  for (const s of spans) (snaps.some((x) => s.start < x.end && x.start < s.end) ? during : outside).push(s);
  return { during, outside };
}

/** One kind of request's latency outside and during snapshots, and how many per snapshot took over twice the outside p99. */
interface Side {
  outside: Latency;
  during: Latency;
  slowPerSnapshot: number;
}

interface Options {
  n: number;
  dim: number;
  batch: number;
  snapshots: number;
  rounds: number;
  gapMs: number;
  searchGapMs: number;
  grow: boolean;
}

async function measure(spec: IndexSpec, o: Options) {
  const ds = synthetic({ nBase: 2 * o.n, nQueries: 1000, dim: o.dim, metric: 'l2' });
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-bench-snapshot-'));
  const db = await openDatabase({ dataDir, snapshotIntervalMs: 0, snapshotWalBytes: 0 });
  const name = 'snap';
  // The writer's next point: each round goes on from the last (with --grow, adding points).
  let written = o.n;
  // Points first..first+count-1 (ids modulo n, unless the collection grows) with the vectors of rows first.. of the base.
  const columns = (first: number, count: number) => {
    const vectors = new Float32Array(count * o.dim);
    const ids: string[] = [];
    const payloads: { i: number; tag: string }[] = [];
    for (let j = 0; j < count; j++) {
      const i = o.grow ? first + j : (first + j) % o.n;
      const row = (first + j) % ds.nBase;
      vectors.set(ds.base.subarray(row * o.dim, (row + 1) * o.dim), j * o.dim);
      ids.push(`p${i}`);
      payloads.push({ i, tag: `t${(first + j) % 16}` });
    }
    return { ids, vectors, payloads };
  };
  try {
    await db.createCollection({ name, dim: o.dim, metric: 'l2', index: spec, shards: 1 });
    progress(`${spec.type}: loading ${o.n} x ${o.dim}`);
    for (let i = 0; i < o.n; i += 1000) await db.upsertColumns(name, columns(i, Math.min(1000, o.n - i)));
    await db.snapshot(); // the first snapshot's one-time costs stay out of the figures

    const rounds = [];
    for (let round = 0; round < o.rounds; round++) {
      progress(`${spec.type}: round ${round + 1} of ${o.rounds}: ${o.snapshots} snapshots, ${o.gapMs} ms apart, under writes of ${o.batch} and searches`);
      rounds.push(await phase(round));
    }
    return { index: spec, points: await db.count(name), rounds };
  } finally {
    await db.close({ snapshot: false });
    fs.rmSync(dataDir, { recursive: true, force: true });
  }

  async function phase(round: number) {
    let stop = false;
    const writes: Span[] = [];
    const searches: Span[] = [];
    const snaps: Span[] = [];
    const writer = (async () => {
      for (; !stop; written += o.batch) {
        const next = written;
        const cols = columns(next, o.batch);
        const start = now();
        await db.upsertColumns(name, cols, { idempotencyKey: `r${round}w${next}` });
        writes.push({ start, end: now() });
      }
    })();
    const searcher = (async () => {
      for (let q = 0; !stop; q = (q + 1) % ds.nQueries) {
        const vectors = ds.queries.subarray(q * o.dim, (q + 1) * o.dim);
        const start = now();
        await db.search(name, { vectors, k: 10 });
        searches.push({ start, end: now() });
        await sleep(o.searchGapMs);
      }
    })();
    for (let s = 0; s < o.snapshots; s++) {
      await sleep(o.gapMs);
      const start = now();
      await db.snapshot();
      snaps.push({ start, end: now() });
    }
    await sleep(o.gapMs);
    stop = true;
    await Promise.all([writer, searcher]);
    const side = (spans: Span[]): Side => {
      const { during, outside } = split(spans, snaps);
      const out = latency(outside);
      // Counted, not a percentile of the window: a snapshot made longer holds more writes, not fewer slow ones.
      const slowPerSnapshot = during.filter((x) => x.end - x.start > 2 * out.p99Ms).length / snaps.length;
      return { outside: out, during: latency(during), slowPerSnapshot };
    };
    return { snapshotMs: latency(snaps), writes: side(writes), searches: side(searches) };
  }
}

export async function run(argv: string[]): Promise<number> {
  const p = parseCommandLine(argv, SPEC);
  if (!p) return 0;
  const types = stringFlag(p, 'index', 'hnsw,flat').split(',');
  for (const t of types) if (t !== 'hnsw' && t !== 'flat') throw new Error(`--index: unknown index type '${t}' (hnsw, flat)`);
  const o = {
    n: intFlag(p, 'n', 20_000, 1),
    dim: intFlag(p, 'dim', 128, 1),
    batch: intFlag(p, 'batch', 100, 1),
    snapshots: intFlag(p, 'snapshots', 6, 1),
    rounds: intFlag(p, 'rounds', 3, 1),
    gapMs: intFlag(p, 'gap-ms', 1500, 1),
    searchGapMs: intFlag(p, 'search-gap-ms', 5, 0),
    grow: p.values.grow === true,
  };
  const rows: Record<string, string | number>[] = [];
  const medians: Record<string, string | number>[] = [];
  for (const t of types) {
    const spec: IndexSpec = t === 'hnsw' ? { type: 'hnsw', m: intFlag(p, 'm', 16, 2), efConstruction: intFlag(p, 'ef-construction', 200, 1) } : { type: 'flat' };
    const r = await measure(spec, o);
    const ratios = { write: [] as number[], search: [] as number[] };
    const slow = { write: [] as number[], search: [] as number[] };
    r.rounds.forEach((round, i) => {
      for (const [what, side] of [['write', round.writes], ['search', round.searches]] as const) {
        ratios[what].push(side.during.p99Ms / side.outside.p99Ms);
        slow[what].push(side.slowPerSnapshot);
        rows.push(row(t, i + 1, what, side));
      }
    });
    for (const what of ['write', 'search'] as const) {
      medians.push({
        index: t,
        op: what,
        'p99 x per round': ratios[what].map((x) => x.toFixed(2)).join(' '),
        'p99 x median': median(ratios[what]),
        'slow/snap median': median(slow[what]),
      });
    }
    const snapMs = r.rounds.map((x) => x.snapshotMs.p50Ms.toFixed(0)).join(', ');
    console.log(`${t}: ${r.points} points at the end; snapshot p50 per round ${snapMs} ms`);
    const file = writeJson(`snapshot-${t}`, { machine: machine(), options: o, ...r });
    console.log(`written ${file}`);
  }
  console.log(`\nlatency in ms, outside snapshots (out) and during them (in); x = in / out\n`);
  console.log(table(rows));
  console.log(`\nmedians of the rounds (goal: write p99 x <= 2; slow/snap: requests per snapshot over twice the outside p99)\n`);
  console.log(table(medians));
  return 0;
}

function row(index: string, round: number, op: string, side: Side): Record<string, string | number> {
  return {
    index,
    round,
    op,
    'n out/in': `${side.outside.n}/${side.during.n}`,
    'p50 out': side.outside.p50Ms,
    'p50 in': side.during.p50Ms,
    'p99 out': side.outside.p99Ms,
    'p99 in': side.during.p99Ms,
    'max out': side.outside.maxMs,
    'max in': side.during.maxMs,
    'p50 x': side.during.p50Ms / side.outside.p50Ms,
    'p99 x': side.during.p99Ms / side.outside.p99Ms,
    'max x': side.during.maxMs / side.outside.maxMs,
    'slow/snap': side.slowPerSnapshot,
  };
}
