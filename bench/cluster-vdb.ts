/**
 * `quiver bench cluster`, part `vdb` (the default): VectorDBBench's measures of a cluster, on nodes
 * the caller started (or a running cluster it names), through one client per node:
 *
 *   load       the dataset's first points upserted in batches (4 in flight, each to the next node;
 *              the client sends every shard's part to its leader); load duration = from the first
 *              upsert until every replica of every shard applied the last (the index is ready);
 *              then, not counted, until every replica is snapshotted (at rest, at most --rest-seconds)
 *   serial     each query once, one at a time, k 10 then k 100: p50/p99 latency, recall@10 and
 *              recall@100 against the exact top-100 (FlatIndex over the loaded points)
 *   qps        k 10 at each concurrency (searches in flight, spread over the nodes) for a set time:
 *              QPS of the searches answered, p50/p99, failed searches counted (not fatal)
 *   streaming  the dataset's last points inserted at a set rate (one writer) while searches run, for
 *              a set time:
 *              search QPS, p99 and recall@10, each search's truth being the exact top-10 over the
 *              loaded points and the inserts acknowledged before it was sent (it reads at `session`
 *              with the writer's token, so those are visible to it); the insert rate reached
 *
 * A point's id is `v<row>`, its row in the dataset, so an answer maps back to ground-truth labels.
 * The collection gets a name of its own (vdbbench_<time>); on a cluster given with --target it is
 * dropped at the end (where the cluster refuses, it is named on stderr and left).
 */
import { performance } from 'perf_hooks';
import { ClientOptions, QuiverClient } from '../src/client';
import { UsageError } from '../src/common/args';
import { mergeToken } from '../src/common/read-options';
import { QuiverError } from '../src/errors';
import { FlatIndex } from '../src/native';
import type { WriteToken } from '../src/query/types';
import { quantile } from './cluster';
import { Dataset, fashionMnist, groundTruth, recallAtK, sequence, synthetic } from './datasets';
import { machine, progress, progressBar, table, writeHtml, writeJson } from './report';
import { lineChart } from './svg';

export interface VdbOptions {
  /** From vdbDataset. */
  dataset: Dataset;
  shards: number;
  replicationFactor: number;
  batch: number;
  qpsSeconds: number;
  concurrency: number[];
  /** Points per second inserted while searching, for streamSeconds, by one writer. */
  insertRate: number;
  streamSeconds: number;
  streamConcurrency: number;
  /** The most seconds the searches wait after the load for every replica to be snapshotted (0: not at all). */
  restSeconds: number;
  /** How the clients reach a cluster given with --target: its API key and the CA of its TLS certificates. */
  client?: Pick<ClientOptions, 'apiKey' | 'tls'>;
}

const log = (m: string): void => void process.stdout.write(`${m}\n`);
/** Searches of the truth: the top-100 (recall@10 reads its first 10). */
const TRUTH_K = 100;
/** Upsert batches in flight while loading. */
const LOAD_IN_FLIGHT = 4;
/** The most rows one FlatIndex search returns (the index's k limit). */
const FLAT_K_MAX = 4096;

/**
 * `fashion-mnist`, or `synthetic:N:dim` (seeded, clustered, L2), with `queries` queries; at least
 * twice the points inserted while searching (insertRate x streamSeconds, held back from the load).
 */
export function vdbDataset(spec: string, queries: number, insertRate: number, streamSeconds: number): Dataset {
  const m = /^synthetic:(\d+):(\d+)$/.exec(spec);
  if (spec !== 'fashion-mnist' && (!m || Number(m[1]) < TRUTH_K || Number(m[2]) < 1)) throw new UsageError(`--dataset must be fashion-mnist or synthetic:N:dim with N >= ${TRUTH_K} (got '${spec}')`);
  const ds = m ? synthetic({ nBase: Number(m[1]), nQueries: queries, dim: Number(m[2]), metric: 'l2', seed: 42 }) : fashionMnist(undefined, queries);
  const insertN = Math.round(insertRate * streamSeconds);
  if (insertN * 2 > ds.nBase) throw new UsageError(`--insert-rate x --stream-seconds (${insertN} points) must be at most half the dataset (${ds.nBase})`);
  return ds;
}

const rowOf = (id: string): number => Number(id.slice(1));
const rows = (ds: Dataset, from: number, to: number) => Array.from({ length: to - from }, (_, j) => ({ id: `v${from + j}`, vector: ds.base.subarray((from + j) * ds.dim, (from + j + 1) * ds.dim) }));
const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Every replica of every shard of `name` applied what `token` names. */
async function ready(client: QuiverClient, name: string, token: WriteToken): Promise<void> {
  for (;;) {
    const shards = (await client.status()).shards.filter((s) => s.collection === name);
    if (shards.length > 0 && shards.every((s) => s.replicas.every((r) => (r.appliedLsn ?? 0) >= (token[String(s.shard)]?.lsn ?? 0)))) return;
    await pause(50);
  }
}

/**
 * Resolves true once every replica of `name` has a snapshot at its applied LSN (the snapshot timer
 * of the shards just loaded would otherwise fire during some measures and not others), false if
 * that takes longer than waitMs. Each node reports its own replicas (0 and 0 for shards it does not hold).
 */
async function atRest(clients: QuiverClient[], name: string, waitMs: number): Promise<boolean> {
  const end = performance.now() + waitMs;
  for (;;) {
    const all = await Promise.all(clients.map((c) => c.status()));
    if (all.every((st) => st.shards.every((s) => s.collection !== name || s.snapshotLsn >= s.appliedLsn))) return true;
    if (performance.now() > end) return false;
    await pause(250);
  }
}

/** A bar for a phase of `seconds`, ticked each second. */
function timedBar(label: string, seconds: number): () => void {
  const bar = progressBar(label, seconds);
  const timer = setInterval(() => bar.tick(), 1000);
  return () => {
    clearInterval(timer);
    bar.done();
  };
}

interface Searched {
  labels: Uint32Array;
  distances: Float32Array;
}

/** One search's hits as labels (dataset rows) and distances, 0xFFFFFFFF / Infinity past the hits. */
function asLabels(hits: { id: string; distance: number }[], k: number): Searched {
  const labels = new Uint32Array(k).fill(0xffffffff);
  const distances = new Float32Array(k).fill(Infinity);
  hits.slice(0, k).forEach((h, j) => {
    labels[j] = rowOf(h.id);
    distances[j] = h.distance;
  });
  return { labels, distances };
}

/** A QuiverError is a failed request (the caller counts it); anything else is a bug here and is thrown on. */
function failure(e: unknown): void {
  if (!(e instanceof QuiverError)) throw e;
}

/** `where`: the nodes, in words; `own`: they were started for this run (and go with their data), so the collection is not dropped. */
export async function runVdb(addresses: string[], o: VdbOptions, where: string, own: boolean): Promise<Record<string, unknown>> {
  const full = o.dataset;
  const insertN = Math.round(o.insertRate * o.streamSeconds);
  const loadN = full.nBase - insertN;
  const ds: Dataset = { ...full, name: `${full.name}-first${loadN}`, base: full.base.subarray(0, loadN * full.dim), nBase: loadN };
  const nq = ds.nQueries;
  const query = (i: number): Float32Array => ds.queries.subarray((i % nq) * ds.dim, ((i % nq) + 1) * ds.dim);
  progress(`${full.name}: ${loadN} points loaded, up to ${insertN} inserted while searching, ${nq} queries, dim ${ds.dim}; exact top-${TRUTH_K}`);
  const truth = await groundTruth(ds, TRUTH_K);

  const clients = await Promise.all(addresses.map((a) => QuiverClient.connect(a, o.client)));
  const name = `vdbbench_${Date.now().toString(36)}`;
  const pick = (i: number): QuiverClient => clients[i % clients.length];
  try {
    await clients[0].createCollection({ name, dim: ds.dim, metric: ds.metric, index: { type: 'hnsw' }, shards: o.shards, replicationFactor: o.replicationFactor });

    // Load, until the index is ready on every replica.
    const token: WriteToken = {};
    const batches = Math.ceil(loadN / o.batch);
    const bar = progressBar('load', batches);
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: LOAD_IN_FLIGHT }, async () => {
        for (let b = next++; b < batches; b = next++) {
          mergeToken(token, (await pick(b).upsert(name, rows(ds, b * o.batch, Math.min(loadN, (b + 1) * o.batch)))).token);
          bar.tick();
        }
      }),
    );
    bar.done();
    const insertSeconds = (performance.now() - t0) / 1000;
    await ready(clients[0], name, token);
    const loadSeconds = (performance.now() - t0) / 1000;
    progress(`load: ${loadN} points in ${insertSeconds.toFixed(1)} s, ready on every replica after ${loadSeconds.toFixed(1)} s; waiting for every replica to be at rest (snapshotted)`);
    const r0 = performance.now();
    const rested = o.restSeconds > 0 && (await atRest(clients, name, o.restSeconds * 1000));
    const restSeconds = (performance.now() - r0) / 1000;

    // Serial latency and recall, k 10 and k 100.
    for (let i = 0; i < Math.min(nq, 100); i++) await pick(i).search(name, query(i), { k: 10 }).catch(failure);
    const serial = [];
    for (const k of [10, 100]) {
      const found = new Uint32Array(nq * k).fill(0xffffffff);
      const dist = new Float32Array(nq * k).fill(Infinity);
      const lat: number[] = [];
      let failed = 0;
      const sbar = progressBar(`serial k ${k}`, nq);
      for (let i = 0; i < nq; i++) {
        const s = performance.now();
        try {
          const r = asLabels(await pick(i).search(name, query(i), { k }), k);
          lat.push(performance.now() - s);
          found.set(r.labels, i * k);
          dist.set(r.distances, i * k);
        } catch (e) {
          failure(e);
          failed++;
        }
        sbar.tick();
      }
      sbar.done();
      serial.push({ k, p50Ms: quantile(lat, 0.5), p99Ms: quantile(lat, 0.99), recall: recallAtK(found, dist, truth.labels, truth.distances, nq, k, TRUTH_K), failed });
    }

    // QPS at each concurrency.
    const qps = [];
    for (const c of o.concurrency) {
      const lat: number[] = [];
      let failed = 0;
      let q = 0;
      const end = performance.now() + o.qpsSeconds * 1000;
      const doneBar = timedBar(`qps at ${c} in flight`, o.qpsSeconds);
      const s0 = performance.now();
      await Promise.all(
        Array.from({ length: c }, async (_, w) => {
          while (performance.now() < end) {
            const s = performance.now();
            try {
              await pick(w).search(name, query(q++), { k: 10 });
              lat.push(performance.now() - s);
            } catch (e) {
              failure(e);
              failed++;
            }
          }
        }),
      );
      doneBar();
      const secs = (performance.now() - s0) / 1000;
      qps.push({ concurrency: c, qps: lat.length / secs, p50Ms: quantile(lat, 0.5), p99Ms: quantile(lat, 0.99), answered: lat.length, failed });
      progress(`qps at ${c} in flight: ${(lat.length / secs).toFixed(0)}, p99 ${quantile(lat, 0.99).toFixed(2)} ms, ${failed} failed`);
    }

    const streaming = await stream(full, loadN, insertN, name, clients, o, truth);
    const results = {
      machine: machine(),
      where,
      dataset: full.name,
      dim: ds.dim,
      loaded: loadN,
      queries: nq,
      shards: o.shards,
      replicationFactor: o.replicationFactor,
      nodes: addresses.length,
      batch: o.batch,
      load: { points: loadN, insertSeconds, loadSeconds, pointsPerSec: loadN / loadSeconds, restSeconds, atRest: rested },
      serial,
      qps,
      streaming,
    };
    report(results);
    return results;
  } finally {
    if (!own) {
      await clients[0].dropCollection(name).catch((e: unknown) => {
        failure(e);
        progress(`could not drop ${name}, left on the cluster: ${(e as Error).message}`);
      });
    }
    for (const c of clients) c.close();
  }
}

/**
 * For o.streamSeconds, inserts rows loadN.. at o.insertRate (one writer, one batch in flight of
 * the points due, at least a tenth of a second's, never ahead of the schedule) while
 * o.streamConcurrency searchers ask at `session` with the writer's token; then each answer's
 * recall@10 against the exact top-10 of what was acknowledged before it was sent.
 */
async function stream(ds: Dataset, loadN: number, insertN: number, name: string, clients: QuiverClient[], o: VdbOptions, truth: { labels: Uint32Array; distances: Float32Array }) {
  const k = 10;
  const step = Math.max(1, Math.round(o.insertRate / 10));
  const token: WriteToken = {};
  let acked = 0;
  let insertFailed = 0;
  let writing = true;
  const doneBar = timedBar('insert while searching', o.streamSeconds);
  const t0 = performance.now();
  const end = t0 + o.streamSeconds * 1000;
  const writer = (async () => {
    try {
      while (acked < insertN && performance.now() < end) {
        // The points due by now (at least a step's), at most o.batch of them: a slow answer makes the next batch bigger.
        const due = Math.min(insertN, Math.floor(((performance.now() - t0) / 1000) * o.insertRate));
        if (due - acked < step && due < insertN) {
          await pause(((acked + step) / o.insertRate) * 1000 - (performance.now() - t0));
          continue;
        }
        const n = Math.min(due - acked, o.batch);
        try {
          mergeToken(token, (await clients[0].upsert(name, rows(ds, loadN + acked, loadN + acked + n))).token);
          acked += n;
        } catch (e) {
          failure(e);
          insertFailed++;
          await pause(50);
        }
      }
    } finally {
      writing = false;
    }
  })();
  const answers: { q: number; seen: number; r: Searched }[] = [];
  const lat: number[] = [];
  let failed = 0;
  let q = 0;
  const s0 = performance.now();
  await Promise.all(
    Array.from({ length: o.streamConcurrency }, async (_, w) => {
      while (writing) {
        const i = q++ % ds.nQueries;
        const seen = acked;
        const s = performance.now();
        try {
          const hits = await clients[w % clients.length].search(name, ds.queries.subarray(i * ds.dim, (i + 1) * ds.dim), { k, consistency: 'session', token: { ...token } });
          lat.push(performance.now() - s);
          answers.push({ q: i, seen, r: asLabels(hits, k) });
        } catch (e) {
          failure(e);
          failed++;
        }
      }
    }),
  );
  await writer;
  doneBar();
  const secs = (performance.now() - s0) / 1000;
  const insertSeconds = (performance.now() - t0) / 1000;

  // The inserted rows closer to a query than its 10th neighbour among the loaded ones, by query.
  progress('insert while searching: exact truth of every answer');
  const near = new Map<number, { row: number; d: number }[]>();
  for (let from = 0; from < acked; from += FLAT_K_MAX) {
    const n = Math.min(FLAT_K_MAX, acked - from);
    const index = new FlatIndex({ dim: ds.dim, metric: ds.metric });
    await index.add(sequence(n, from), ds.base.subarray((loadN + from) * ds.dim, (loadN + from + n) * ds.dim));
    const used = Math.min(ds.nQueries, q);
    const r = await index.search(ds.queries.subarray(0, used * ds.dim), n);
    for (let i = 0; i < used; i++) {
      const kth = truth.distances[i * TRUTH_K + k - 1];
      const list = near.get(i) ?? [];
      for (let j = 0; j < n && r.distances[i * n + j] <= kth; j++) list.push({ row: r.labels[i * n + j], d: r.distances[i * n + j] });
      near.set(i, list);
    }
  }
  let recall = 0;
  for (const a of answers) {
    const best = [
      ...Array.from({ length: k }, (_, j) => ({ row: truth.labels[a.q * TRUTH_K + j], d: truth.distances[a.q * TRUTH_K + j] })),
      ...(near.get(a.q) ?? []).filter((x) => x.row < a.seen).map((x) => ({ row: loadN + x.row, d: x.d })),
    ]
      .sort((x, y) => x.d - y.d)
      .slice(0, k);
    recall += recallAtK(a.r.labels, a.r.distances, Uint32Array.from(best, (x) => x.row), Float32Array.from(best, (x) => x.d), 1, k);
  }
  return {
    insertRate: o.insertRate,
    insertedPerSec: acked / insertSeconds,
    inserted: acked,
    insertFailed,
    concurrency: o.streamConcurrency,
    qps: lat.length / secs,
    p50Ms: quantile(lat, 0.5),
    p99Ms: quantile(lat, 0.99),
    recall: answers.length > 0 ? recall / answers.length : NaN,
    answered: lat.length,
    failed,
  };
}

type Results = Record<string, any>;

function report(r: Results): void {
  const title = `quiver bench cluster: ${r.dataset}, ${r.nodes} node(s), ${r.shards} shard(s), RF ${r.replicationFactor} (${r.where})`;
  const loadRows = [{ points: r.load.points, 'insert s': r.load.insertSeconds, 'load duration s': r.load.loadSeconds, 'points/s': Math.round(r.load.pointsPerSec), 'then at rest after s': r.load.atRest ? r.load.restSeconds : `no (${r.load.restSeconds.toFixed(0)} s)` }];
  const serialRows = r.serial.map((s: Results) => ({ k: s.k, 'p50 ms': s.p50Ms, 'p99 ms': s.p99Ms, [`recall@k`]: s.recall, failed: s.failed }));
  const qpsRows = r.qps.map((s: Results) => ({ 'in flight': s.concurrency, QPS: Math.round(s.qps), 'p50 ms': s.p50Ms, 'p99 ms': s.p99Ms, answered: s.answered, failed: s.failed }));
  const st = r.streaming;
  const streamRows = [{ 'insert rate /s': st.insertRate, 'inserted /s': Math.round(st.insertedPerSec), 'insert failed': st.insertFailed, 'searches in flight': st.concurrency, QPS: Math.round(st.qps), 'p99 ms': st.p99Ms, 'recall@10': st.recall, failed: st.failed }];
  log(title);
  for (const [head, rows] of [['load', loadRows], ['serial search', serialRows], ['QPS by concurrency (k 10)', qpsRows], ['insert while searching (k 10)', streamRows]] as const) log(`\n${head}:\n${table(rows as Record<string, string | number>[])}`);
  const c = r.qps.map((s: Results) => s.concurrency as number);
  const qpsSvg = lineChart([{ name: 'QPS', points: r.qps.map((s: Results, i: number) => [c[i], s.qps]) }], { title: 'QPS by searches in flight (k 10)', xLabel: 'searches in flight', yLabel: 'QPS' });
  const latSvg = lineChart(
    [
      { name: 'p50', points: r.qps.map((s: Results, i: number) => [c[i], s.p50Ms]) },
      { name: 'p99', points: r.qps.map((s: Results, i: number) => [c[i], s.p99Ms]), dashed: true },
    ],
    { title: 'Search latency by searches in flight (k 10)', xLabel: 'searches in flight', yLabel: 'latency ms', logY: true },
  );
  log(`\nwrote ${writeJson('cluster-vdb', r)}`);
  log(
    `wrote ${writeHtml('cluster-vdb', title, [
      { title: 'Load', note: 'From the first upsert until every replica of every shard applied the last (the index ready); the searches begin once every replica is snapshotted (at rest).', rows: loadRows },
      { title: 'Serial search', note: `${r.queries} queries, one at a time; recall against the exact top-${TRUTH_K}.`, rows: serialRows },
      { title: 'QPS by concurrency', note: 'Failed searches are counted, not in QPS.', rows: qpsRows, svgs: [qpsSvg, latSvg] },
      { title: 'Insert while searching', note: 'Searches at session level with the writer\u2019s token; recall against the exact top-10 of the points acknowledged before each search.', rows: streamRows },
      { title: 'Machine', rows: [Object.fromEntries(Object.entries(r.machine).map(([key, v]) => [key, String(v)]))] },
    ])}`,
  );
}
