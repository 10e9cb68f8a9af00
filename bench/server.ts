/**
 * `quiver bench server`: the standalone server against the raw index, in the same run.
 *
 *  (a) upsert throughput (vectors/s) of Fashion-MNIST in 1,000-vector batches through the client to
 *      a `quiver serve` child process (WAL with fsync on), next to the in-process build rate of the
 *      same index (same type and parameters, same batches) and to an in-process Database (the same
 *      engine with its WAL, without the API);
 *  (b) serial search latency (p50/p99) and QPS over gRPC from this process (the server is a separate
 *      process), next to in-process search of the same index and of the in-process Database;
 *      recall@k against exact ground truth; plus concurrent QPS over gRPC;
 *  (c) restart time: SIGTERM (snapshot at shutdown), then the time until a restarted node answers,
 *      and the time to open the same data directory in-process.
 *
 * Upsert rounds rotate their order and search passes alternate (index, Database, gRPC, ...); the
 * figures are medians over rounds and passes.
 * Writes JSON to bench/results/server-<dataset>-<index>.json.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { QuiverClient } from '../src/client';
import { FlatIndex, HnswIndex, VectorIndex } from '../src/native';
import { openDatabase } from '../src/query';
import type { IndexSpec } from '../src/query/types';
import { CommandSpec, choiceFlag, intFlag, parseCommandLine, stringFlag } from '../src/common/args';
import { Dataset, fashionMnist, groundTruth, median, pct, recallAtK, sequence } from './datasets';

const USAGE = `usage: quiver bench server [options]

Standalone server vs the raw index on Fashion-MNIST (60,000 x 784, L2), in one run:
upsert throughput, gRPC search latency/QPS/recall, restart time from a snapshot.

options:
  --n N                  base vectors (default 60000)
  --queries N            query vectors, searched once per pass and side (default 2000)
  --index flat|hnsw      index type of the collection and the in-process index (default flat)
  --m N                  hnsw links per node (default 16)
  --ef-construction N    hnsw build candidate list (default 200)
  --ef N                 hnsw search candidate list (default 64)
  --k N                  neighbours per query (default 10)
  --batch N              vectors per upsert batch (default 1000)
  --inflight N           upsert batches in flight at once, for the Database and the server (default 2:
                         a client that waits for each ack before sending the next leaves the WAL
                         write and fsync of one batch unoverlapped with the apply of the last)
  --concurrency N        outstanding searches for the concurrent QPS figure (default 8)
  --passes N             search passes per side (default 3)
  --warmup N             unmeasured searches per side before the passes (default: --queries), and
  --warmup-ms N          for at least N ms per side (default 4000), so
                         the figures are steady state, not the first calls' JIT and cold caches
  --runs N               upsert rounds (index build, Database, server; order rotated) (default 3)
  --upsert-warmup N      vectors each side upserts once, unmeasured, before the rounds (default 10000;
                         0: none), so that no side's figure carries first-call costs (JIT, the
                         server's first allocations) that the others paid elsewhere
  --shards N             shards of the collection (default 1)
  --grpc-impl quiver|grpc-js  the server's gRPC implementation (quiver serve --grpc-impl; default quiver)
  --out DIR              where the JSON goes (default bench/results)
  --help                 this text
`;

export const SPEC: CommandSpec = {
  usage: USAGE,
  flags: Object.fromEntries(
    ['n', 'queries', 'index', 'm', 'ef-construction', 'ef', 'k', 'batch', 'inflight', 'concurrency', 'passes', 'warmup', 'warmup-ms', 'runs', 'upsert-warmup', 'shards', 'grpc-impl', 'out'].map(
      (k) => [k, { type: 'string' }],
    ),
  ),
};

interface LatencyStats {
  p50Us: number;
  p99Us: number;
  qps: number;
  recall: number;
}

function stats(latNs: number[], totalNs: number, recall: number): LatencyStats {
  const s = [...latNs].sort((a, b) => a - b);
  return { p50Us: pct(s, 0.5) / 1e3, p99Us: pct(s, 0.99) / 1e3, qps: latNs.length / (totalNs / 1e9), recall };
}

function medianStats(runs: LatencyStats[]): LatencyStats {
  return {
    p50Us: median(runs.map((r) => r.p50Us)),
    p99Us: median(runs.map((r) => r.p99Us)),
    qps: median(runs.map((r) => r.qps)),
    recall: median(runs.map((r) => r.recall)),
  };
}

const now = (): number => Number(process.hrtime.bigint());
const log = (m: string): void => void process.stdout.write(`${m}\n`);
const f1 = (x: number): string => x.toFixed(1);

interface Node {
  child: ChildProcess;
  grpc: string;
  exited: Promise<number | null>;
  openMs: number;
}

function startNode(dataDir: string, grpcImpl: string): Promise<Node> {
  const bin = path.resolve(__dirname, '..', '..', 'bin', 'quiver.js');
  const child = spawn(process.execPath, [bin, 'serve', '--data', dataDir, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--snapshot-interval-ms', '0', '--grpc-impl', grpcImpl], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      const g = /grpc listening on (\S+)/.exec(out);
      const o = /opened .* in (\d+) ms/.exec(out);
      if (g && o && /quiver: ready/.test(out)) resolve({ child, grpc: g[1], exited, openMs: Number(o[1]) });
    });
    child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    exited.then((code) => reject(new Error(`quiver serve exited with ${code}:\n${out}`)));
  });
}

function rawIndex(spec: IndexSpec, ds: Dataset): VectorIndex {
  switch (spec.type) {
    case 'flat':
      return new FlatIndex({ dim: ds.dim, metric: ds.metric });
    case 'hnsw':
      return new HnswIndex({ dim: ds.dim, metric: ds.metric, m: spec.m, efConstruction: spec.efConstruction, efSearch: spec.efSearch });
    default:
      throw new Error(`--index ${spec.type} is not supported by this benchmark (flat | hnsw)`);
  }
}

export async function run(argv: string[]): Promise<number> {
  const p = parseCommandLine(argv, SPEC);
  if (!p) return 0;
  const n = intFlag(p, 'n', 60_000, 1);
  const nq = intFlag(p, 'queries', 2000, 1);
  const indexType = choiceFlag(p, 'index', ['flat', 'hnsw'], 'flat');
  const grpcImpl = choiceFlag(p, 'grpc-impl', ['quiver', 'grpc-js'], 'quiver');
  const k = intFlag(p, 'k', 10, 1);
  const ef = intFlag(p, 'ef', 64, 1);
  const batch = intFlag(p, 'batch', 1000, 1);
  const inflight = intFlag(p, 'inflight', 2, 1);
  const concurrency = intFlag(p, 'concurrency', 8, 1);
  const passes = intFlag(p, 'passes', 3, 1);
  const warmup = intFlag(p, 'warmup', nq, 0);
  const warmupMs = intFlag(p, 'warmup-ms', 4000, 0);
  const runs = intFlag(p, 'runs', 3, 1);
  const upsertWarmup = Math.min(intFlag(p, 'upsert-warmup', 10_000, 0), n);
  const shards = intFlag(p, 'shards', 1, 1);
  const outDir = path.resolve(stringFlag(p, 'out', path.resolve(__dirname, '..', '..', 'bench', 'results')));
  const spec: IndexSpec =
    indexType === 'hnsw'
      ? { type: 'hnsw', m: intFlag(p, 'm', 16, 1), efConstruction: intFlag(p, 'ef-construction', 200, 1), efSearch: ef }
      : { type: 'flat' };
  const searchEf = indexType === 'hnsw' ? ef : undefined;

  log(`loading Fashion-MNIST (${n} base, ${nq} queries) ...`);
  const ds = fashionMnist(n, nq);
  const gt = await groundTruth(ds, k);
  const dim = ds.dim;
  const ids = Array.from({ length: ds.nBase }, (_, i) => String(i));
  const queryVec = (q: number): Float32Array => ds.queries.subarray(q * dim, (q + 1) * dim);

  const batchOf = (off: number, end: number) => {
    const points = [];
    for (let i = off; i < end; i++) points.push({ id: ids[i], vector: ds.base.subarray(i * dim, (i + 1) * dim) });
    return points;
  };

  const localDir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-bench-local-'));
  const local = await openDatabase({ dataDir: localDir, snapshotIntervalMs: 0 });
  let localClosed = false;
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-bench-server-'));
  let node = await startNode(dataDir, grpcImpl);
  const children = [node.child];
  const cleanup = () => {
    for (const c of children) if (c.exitCode === null && c.pid) process.kill(c.pid, 'SIGKILL');
  };
  process.once('exit', cleanup);
  try {
    const client = await QuiverClient.connect(node.grpc);
    let t: number;

    // ---- (a) upsert: the raw index, an in-process Database, the server; `runs` rounds, order rotated ----
    let raw: VectorIndex | undefined;
    const rates: Record<'index' | 'database' | 'server', number[]> = { index: [], database: [], server: [] };
    // The Database and the server are loaded the same way: `inflight` batches outstanding.
    // Each step loads the first `count` vectors (all of them in a measured round).
    const inFlight = async (count: number, send: (b: ReturnType<typeof batchOf>) => Promise<unknown>): Promise<void> => {
      let next = 0;
      const worker = async () => {
        while (next < count) {
          const off = next;
          next = Math.min(count, off + batch);
          await send(batchOf(off, next));
        }
      };
      await Promise.all(Array.from({ length: inflight }, worker));
    };
    const rawBuild = async (count = ds.nBase): Promise<number> => {
      const idx = rawIndex(spec, ds);
      const t0 = now();
      for (let off = 0; off < count; off += batch) {
        const end = Math.min(count, off + batch);
        await idx.add(sequence(end - off, off), ds.base.subarray(off * dim, end * dim));
      }
      const rate = count / ((now() - t0) / 1e9);
      if (count === ds.nBase) raw = idx;
      return rate;
    };
    const localUpsert = async (count = ds.nBase): Promise<number> => {
      if (local.listCollections().some((c) => c.name === 'bench')) await local.dropCollection('bench');
      await local.createCollection({ name: 'bench', dim, metric: ds.metric, index: spec, shards });
      const t0 = now();
      await inFlight(count, (b) => local.upsert('bench', b));
      return count / ((now() - t0) / 1e9);
    };
    const serverUpsert = async (count = ds.nBase): Promise<number> => {
      if ((await client.listCollections()).some((c) => c.name === 'bench')) await client.dropCollection('bench');
      await client.createCollection({ name: 'bench', dim, metric: ds.metric, index: spec, shards });
      const t0 = now();
      await inFlight(count, (b) => client.upsert('bench', b));
      return count / ((now() - t0) / 1e9);
    };
    const steps = [
      { key: 'index' as const, what: `in-process ${indexType} index build`, fn: rawBuild },
      { key: 'database' as const, what: `in-process Database upsert (WAL, fsync on, ${inflight} batch(es) in flight)`, fn: localUpsert },
      { key: 'server' as const, what: `upsert through gRPC to the server process (fsync on, ${inflight} batch(es) in flight)`, fn: serverUpsert },
    ];
    if (upsertWarmup > 0) {
      const warm: string[] = [];
      for (const st of steps) warm.push(`${st.key} ${Math.round(await st.fn(upsertWarmup))}`);
      log(`(a) warm-up (unmeasured), ${upsertWarmup} vectors each: ${warm.join(', ')} vectors/s`);
    }
    for (let r = 0; r < runs; r++) {
      for (let i = 0; i < steps.length; i++) {
        const step = steps[(i + r) % steps.length];
        const rate = await step.fn();
        rates[step.key].push(rate);
        log(`(a) run ${r + 1}/${runs}: ${step.what}, ${batch}-vector batches: ${Math.round(rate)} vectors/s`);
      }
    }
    if (!raw) throw new Error('no run');
    const rawRate = median(rates.index);
    const localRate = median(rates.database);
    const serverRate = median(rates.server);
    // Ratios within each round (same load) are steadier than ratios of medians on a busy machine.
    const pairedToIndex = median(rates.server.map((x, i) => x / rates.index[i]));
    const pairedToDatabase = median(rates.server.map((x, i) => x / rates.database[i]));
    log(`    medians: index ${Math.round(rawRate)}, Database ${Math.round(localRate)}, server ${Math.round(serverRate)} vectors/s; server = ${(100 * serverRate / rawRate).toFixed(1)}% of the index build rate, ${(100 * serverRate / localRate).toFixed(1)}% of the in-process Database`);
    log(`    per-round ratios (median): server / index ${(100 * pairedToIndex).toFixed(1)}%, server / Database ${(100 * pairedToDatabase).toFixed(1)}%`);
    const count = await client.count('bench');
    if (count !== ds.nBase) throw new Error(`server holds ${count} points, expected ${ds.nBase}`);
    const rawIdx: VectorIndex = raw;

    // ---- (b) search: in-process vs gRPC, alternating passes ----
    log(`(b) serial search, k=${k}${searchEf ? `, ef=${searchEf}` : ''}, ${passes} passes per side ...`);
    const inproc: LatencyStats[] = [];
    const inDb: LatencyStats[] = [];
    const overGrpc: LatencyStats[] = [];
    const collect = (hits: { id: string; distance: number }[], q: number) =>
      hits.forEach((h, j) => {
        found[q * k + j] = Number(h.id);
        foundDist[q * k + j] = h.distance;
      });
    const found = new Uint32Array(nq * k);
    const foundDist = new Float32Array(nq * k);
    // Each side warms up on its own for a while: the JIT of both processes' call paths settles
    // after a few thousand calls (seconds), and what is measured is the steady state.
    const sides: Array<(i: number) => Promise<unknown>> = [
      (i) => rawIdx.search(queryVec(i % nq), k, { ef: searchEf }),
      (i) => local.search('bench', { vectors: queryVec(i % nq), k, ef: searchEf }),
      (i) => client.search('bench', queryVec(i % nq), { k, ef: searchEf }),
      () => client.count('bench'),
    ];
    for (const side of sides) {
      const until = now() + warmupMs * 1e6;
      for (let i = 0; i < warmup || now() < until; i++) await side(i);
    }
    for (let pass = 0; pass < passes; pass++) {
      let lat: number[] = [];
      let t0 = now();
      for (let q = 0; q < nq; q++) {
        const s = now();
        const r = await rawIdx.search(queryVec(q), k, { ef: searchEf });
        lat.push(now() - s);
        found.set(r.labels, q * k);
        foundDist.set(r.distances, q * k);
      }
      inproc.push(stats(lat, now() - t0, recallAtK(found, foundDist, gt.labels, gt.distances, nq, k)));
      lat = [];
      found.fill(0xffffffff);
      t0 = now();
      for (let q = 0; q < nq; q++) {
        const s = now();
        const hits = await local.search('bench', { vectors: queryVec(q), k, ef: searchEf });
        lat.push(now() - s);
        collect(hits[0], q);
      }
      inDb.push(stats(lat, now() - t0, recallAtK(found, foundDist, gt.labels, gt.distances, nq, k)));
      lat = [];
      found.fill(0xffffffff);
      t0 = now();
      for (let q = 0; q < nq; q++) {
        const s = now();
        const hits = await client.search('bench', queryVec(q), { k, ef: searchEf });
        lat.push(now() - s);
        collect(hits, q);
      }
      overGrpc.push(stats(lat, now() - t0, recallAtK(found, foundDist, gt.labels, gt.distances, nq, k)));
      log(`    pass ${pass + 1}: p50 index ${f1(inproc[pass].p50Us)} us, Database ${f1(inDb[pass].p50Us)} us, gRPC ${f1(overGrpc[pass].p50Us)} us`);
    }
    await local.close();
    localClosed = true;
    const a = medianStats(inproc);
    const d = medianStats(inDb);
    const b = medianStats(overGrpc);

    // The floor of any call: a Count round trip (no vectors, no search) over the same connection.
    const floor: number[] = [];
    for (let pass = 0; pass < passes; pass++) {
      const lat: number[] = [];
      for (let i = 0; i < nq; i++) {
        const s = now();
        await client.count('bench');
        lat.push(now() - s);
      }
      floor.push(stats(lat, 1, 0).p50Us);
    }
    const roundTripP50Us = median(floor);
    log(`(b) gRPC round trip (Count) p50 ${f1(roundTripP50Us)} us`);

    log(`(b) concurrent gRPC search, ${concurrency} outstanding ...`);
    let q = 0;
    t = now();
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (q < nq) {
          const mine = q++;
          await client.search('bench', queryVec(mine), { k, ef: searchEf });
        }
      }),
    );
    const concurrentQps = nq / ((now() - t) / 1e9);
    client.close();

    // ---- (c) restart ----
    log('(c) SIGTERM (snapshot at shutdown), then restart ...');
    t = now();
    process.kill(node.child.pid!, 'SIGTERM');
    const code = await node.exited;
    const shutdownS = (now() - t) / 1e9;
    if (code !== 0) throw new Error(`quiver serve exited with ${code} on SIGTERM`);
    t = now();
    node = await startNode(dataDir, grpcImpl);
    children.push(node.child);
    const c2 = await QuiverClient.connect(node.grpc);
    const after = await c2.count('bench');
    const restartS = (now() - t) / 1e9;
    c2.close();
    if (after !== ds.nBase) throw new Error(`after restart the server holds ${after} points, expected ${ds.nBase}`);
    process.kill(node.child.pid!, 'SIGTERM');
    await node.exited;
    t = now();
    const db = await openDatabase({ dataDir, snapshotIntervalMs: 0 });
    const openInProcS = (now() - t) / 1e9;
    await db.close();

    const overheadUs = b.p50Us - a.p50Us;
    // The same per pass (gRPC pass minus the index pass just before it), median over passes: less
    // moved by the machine's drift from one pass to the next.
    const pairedOverheadUs = median(overGrpc.map((g, i) => g.p50Us - inproc[i].p50Us));
    const result = {
      bench: 'server',
      date: new Date().toISOString(),
      host: { cpus: os.cpus().length, model: os.cpus()[0]?.model },
      dataset: ds.name,
      n: ds.nBase,
      queries: nq,
      dim,
      k,
      index: spec,
      shards,
      grpcImpl,
      upsert: {
        batch,
        inflight,
        runs,
        upsertWarmup,
        rates,
        inProcessVectorsPerS: rawRate,
        inProcessDatabaseVectorsPerS: localRate,
        serverVectorsPerS: serverRate,
        ratio: serverRate / rawRate,
        ratioToDatabase: serverRate / localRate,
        pairedRatio: pairedToIndex,
        pairedRatioToDatabase: pairedToDatabase,
      },
      search: {
        inProcess: a,
        inProcessDatabase: d,
        grpc: b,
        p50OverheadUs: overheadUs,
        p50OverheadPairedUs: pairedOverheadUs,
        p50OverheadOverDatabaseUs: b.p50Us - d.p50Us,
        grpcRoundTripP50Us: roundTripP50Us,
        grpcConcurrentQps: concurrentQps,
        concurrency,
        passes,
        warmup,
        warmupMs,
      },
      restart: { shutdownS, restartToAnswerS: restartS, nodeOpenMs: node.openMs, openInProcessS: openInProcS, points: after },
    };
    fs.mkdirSync(outDir, { recursive: true });
    const file = path.join(outDir, `server-${ds.name}-${indexType}.json`);
    fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');

    log('');
    log(`upsert      in-process index ${Math.round(rawRate)} vec/s | in-process Database ${Math.round(localRate)} vec/s | server ${Math.round(serverRate)} vec/s`);
    log(`            server / index ${(100 * result.upsert.ratio).toFixed(1)}% (goal >= 80%); server / Database ${(100 * result.upsert.ratioToDatabase).toFixed(1)}%; per round ${(100 * pairedToIndex).toFixed(1)}% and ${(100 * pairedToDatabase).toFixed(1)}%`);
    const row = (name: string, x: LatencyStats) =>
      log(`            ${name.padEnd(19)} p50 ${f1(x.p50Us)} us p99 ${f1(x.p99Us)} us ${Math.round(x.qps)} QPS recall@${k} ${x.recall.toFixed(4)}`);
    log('search');
    row('in-process index', a);
    row('in-process Database', d);
    row('gRPC', b);
    log(`            p50 overhead of gRPC: ${f1(overheadUs)} us over the index, ${f1(b.p50Us - d.p50Us)} us over the Database (goal < 150 us); per pass ${f1(pairedOverheadUs)} us over the index`);
    log(`            a bare gRPC round trip (Count) p50 ${f1(roundTripP50Us)} us; gRPC with ${concurrency} outstanding: ${Math.round(concurrentQps)} QPS`);
    log(`restart     shutdown (snapshot) ${shutdownS.toFixed(2)} s; restart until answering ${restartS.toFixed(2)} s (open ${node.openMs} ms); in-process open ${openInProcS.toFixed(2)} s`);
    log(`wrote ${file}`);
    return 0;
  } finally {
    if (!localClosed) await local.close().catch(() => undefined);
    fs.rmSync(localDir, { recursive: true, force: true });
    cleanup();
    process.off('exit', cleanup);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}
