/**
 * `quiver bench memory`: resident memory of `quiver serve` holding Fashion-MNIST (60,000 x 784) in
 * one HNSW collection, next to a plain Node process holding the same index built with hnswlib-node,
 * side by side in one run.
 *
 *   server   `quiver serve` on loopback over a temp data directory (snapshots only at shutdown);
 *            the points arrive through the client in batches; once it is quiet (no request for
 *            QUIET_MS, src/server/service.ts) the server collects garbage (SIGUSR2, see SERVE) and
 *            its VmRSS is read from /proc/<pid>/status.
 *   peer     a child Node process builds hnswlib-node's HierarchicalNSW (same M, efConstruction,
 *            space) from the same vectors, drops the dataset, collects garbage, and its VmRSS is
 *            read the same way.
 * Both are also read idle (after start-up and a GC, before any data), so the figures show what the
 * data costs beyond each process's own floor. The two loads run at once (memory is the measure).
 * Writes JSON to bench/results/memory-<dataset>-<metric>.json.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { QuiverClient } from '../src/client';
import { QUIET_MS } from '../src/server/service';
import { CommandSpec, choiceFlag, intFlag, parseCommandLine } from '../src/common/args';
import { fashionMnist } from './datasets';
import { machine, writeJson } from './report';

const USAGE = `usage: quiver bench memory [options]

RSS of quiver serve holding Fashion-MNIST in one HNSW collection against a plain Node process
holding the same index built with hnswlib-node (devDependency), both after a GC, in one run.

options:
  --n N                  base vectors (default 60000)
  --metric l2|cosine     distance of the collection and of the hnswlib-node space (default l2)
  --m N                  links per node (default 16)
  --ef-construction N    build candidate list (default 200)
  --batch N              vectors per upsert (default 1000)
  --help                 this text
`;

const BIN = path.resolve(__dirname, '..', '..', 'bin', 'quiver.js');
const DATASETS = path.join(__dirname, 'datasets.js');

/**
 * Collects garbage, then again one turn later: V8 frees the memory of dead ArrayBuffers after the
 * collection that finds them, so the first gc() alone leaves it resident.
 */
const GC = `function collect(then) { globalThis.gc(); setImmediate(() => { globalThis.gc(); then(); }); }`;

/**
 * Runs bin/quiver.js with argv as `quiver serve` would, in a Node that exposes gc(): on SIGUSR2
 * the process collects garbage and prints "gc done".
 */
const SERVE = `${GC}
process.on('SIGUSR2', () => collect(() => process.stdout.write('gc done\\n')));
process.argv = [process.argv[0], ${JSON.stringify(BIN)}, ...process.argv.slice(1)];
require(${JSON.stringify(BIN)});
`;

/**
 * The peer: argv vectors file (n x dim f32), n, dim, space, M, efConstruction. Prints "idle" after
 * a GC and waits for SIGUSR2; then builds from the file (read row by row, so that no copy of the
 * data set stays in the process), collects garbage, prints "built <count>" and waits to be killed.
 */
const PEER = `${GC}
const fs = require('fs');
const [file, n, dim, space, m, efc] = process.argv.slice(1);
collect(() => process.stdout.write('idle\\n'));
process.once('SIGUSR2', () => {
  const { HierarchicalNSW } = require('hnswlib-node');
  const index = new HierarchicalNSW(space, Number(dim));
  index.initIndex(Number(n), Number(m), Number(efc), 100);
  const row = new Float32Array(Number(dim));
  const fd = fs.openSync(file, 'r');
  for (let i = 0; i < Number(n); i++) {
    fs.readSync(fd, row, 0, row.byteLength, i * row.byteLength);
    index.addPoint(Array.from(row), i);
  }
  fs.closeSync(fd);
  globalThis.index = index;
  collect(() => process.stdout.write('built ' + index.getCurrentCount() + '\\n'));
});
setInterval(() => undefined, 1 << 30);
`;

const log = (m: string): void => void process.stdout.write(`${m}\n`);
const mb = (bytes: number): string => (bytes / 2 ** 20).toFixed(1);

interface Child {
  proc: ChildProcess;
  /** Resolves with the first match of `re` in stdout printed from now on (rejects if the process exits first). */
  line(re: RegExp): Promise<RegExpExecArray>;
}

function start(args: string[]): Child {
  const proc = spawn(process.execPath, ['--expose-gc', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16' },
  });
  let out = '';
  // A waiter matches what the process printed after the waiter was registered.
  const waiters: { re: RegExp; from: number; resolve: (m: RegExpExecArray) => void; reject: (e: Error) => void }[] = [];
  const check = (): void => {
    for (let i = 0; i < waiters.length; i++) {
      const w = waiters[i];
      const m = w.re.exec(out.slice(w.from));
      if (m) {
        waiters.splice(i--, 1);
        w.resolve(m);
      }
    }
  };
  proc.stdout!.on('data', (b: Buffer) => {
    out += b.toString();
    check();
  });
  let err = '';
  proc.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  proc.on('exit', (code, signal) => {
    for (const w of waiters.splice(0)) w.reject(new Error(`child exited (${code ?? signal}) before printing ${w.re}:\n${out}${err}`));
  });
  return {
    proc,
    line: (re) =>
      new Promise((resolve, reject) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return reject(new Error(`child exited:\n${out}${err}`));
        waiters.push({ re, from: out.length, resolve, reject });
      }),
  };
}

/** VmRSS and RssAnon of a process, in bytes. */
function rssOf(pid: number): { rss: number; anon: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string): number => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status);
    if (!m) throw new Error(`/proc/${pid}/status has no ${key}`);
    return Number(m[1]) * 1024;
  };
  return { rss: kb('VmRSS'), anon: kb('RssAnon') };
}

/** Signals a process that answers a GC request with a line, and reads its RSS once it did. */
async function rssAfterGc(c: Child, done: RegExp): Promise<{ rss: number; anon: number }> {
  const answered = c.line(done);
  process.kill(c.proc.pid!, 'SIGUSR2');
  await answered;
  return rssOf(c.proc.pid!);
}

export const SPEC: CommandSpec = {
  usage: USAGE,
  flags: Object.fromEntries(['n', 'metric', 'm', 'ef-construction', 'batch'].map((k) => [k, { type: 'string' }])),
};

export async function run(argv: string[]): Promise<number> {
  const p = parseCommandLine(argv, SPEC);
  if (!p) return 0;
  const n = intFlag(p, 'n', 60_000, 1);
  const metric = choiceFlag(p, 'metric', ['l2', 'cosine'] as const, 'l2');
  const m = intFlag(p, 'm', 16, 2);
  const efConstruction = intFlag(p, 'ef-construction', 200, 1);
  const batch = intFlag(p, 'batch', 1000, 1);
  const ds = fashionMnist(n, 0);
  const dim = ds.dim;
  log(`${ds.name}: ${ds.nBase} x ${dim}, ${metric}, HNSW M ${m}, efConstruction ${efConstruction}`);

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-bench-memory-'));
  const dataDir = path.join(tmp, 'data');
  const children: Child[] = [];
  const cleanup = (): void => {
    for (const c of children) if (c.proc.exitCode === null && c.proc.signalCode === null) process.kill(c.proc.pid!, 'SIGKILL');
  };
  process.once('exit', cleanup);
  try {
    const server = start(['-e', SERVE, 'serve', '--data', dataDir, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--snapshot-interval-ms', '0']);
    children.push(server);
    const vectorsFile = path.join(tmp, 'vectors.f32');
    fs.writeFileSync(vectorsFile, ds.base);
    const peer = start(['-e', PEER, vectorsFile, String(ds.nBase), String(dim), metric, String(m), String(efConstruction)]);
    children.push(peer);
    const [grpc] = await Promise.all([server.line(/grpc listening on (\S+)/), server.line(/quiver: ready/), peer.line(/idle/)]);
    const serverIdle = await rssAfterGc(server, /gc done/);
    const peerIdle = rssOf(peer.proc.pid!);
    log(`idle: quiver serve ${mb(serverIdle.rss)} MiB, plain node ${mb(peerIdle.rss)} MiB`);

    const t0 = Date.now();
    const peerBuilt = peer.line(/built (\d+)/);
    process.kill(peer.proc.pid!, 'SIGUSR2');
    const client = await QuiverClient.connect(grpc[1]);
    await client.createCollection({ name: 'bench', dim, metric, index: { type: 'hnsw', m, efConstruction }, shards: 1 });
    for (let off = 0; off < ds.nBase; off += batch) {
      const points = [];
      for (let i = off; i < Math.min(ds.nBase, off + batch); i++) points.push({ id: String(i), vector: ds.base.subarray(i * dim, (i + 1) * dim) });
      await client.upsert('bench', points);
    }
    const count = await client.count('bench');
    client.close();
    const lastRequest = Date.now();
    if (count !== ds.nBase) throw new Error(`the server holds ${count} points, expected ${ds.nBase}`);
    log(`quiver serve loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s; waiting for hnswlib-node ...`);
    const built = Number((await peerBuilt)[1]);
    if (built !== ds.nBase) throw new Error(`hnswlib-node holds ${built} points, expected ${ds.nBase}`);
    log(`both loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    // Measured quiet: once the server has released what it keeps for the next request (QUIET_MS).
    const quietAt = lastRequest + 2 * QUIET_MS;
    if (Date.now() < quietAt) await new Promise((resolve) => setTimeout(resolve, quietAt - Date.now()));
    const serverFull = await rssAfterGc(server, /gc done/);
    const peerFull = rssOf(peer.proc.pid!);
    const ratio = serverFull.rss / peerFull.rss;

    const result = {
      bench: 'memory',
      machine: machine(),
      dataset: ds.name,
      n: ds.nBase,
      dim,
      metric,
      m,
      efConstruction,
      batch,
      server: { idleRssBytes: serverIdle.rss, rssBytes: serverFull.rss, rssAnonBytes: serverFull.anon },
      hnswlib: { idleRssBytes: peerIdle.rss, rssBytes: peerFull.rss, rssAnonBytes: peerFull.anon },
      ratio,
      ratioAboveIdle: (serverFull.rss - serverIdle.rss) / (peerFull.rss - peerIdle.rss),
      rawVectorsBytes: ds.nBase * dim * 4,
    };
    const file = writeJson(`memory-${ds.name}-${metric}`, result);
    log('');
    log(`raw vectors            ${mb(result.rawVectorsBytes)} MiB`);
    log(`quiver serve   RSS     ${mb(serverFull.rss)} MiB (anonymous ${mb(serverFull.anon)}; idle ${mb(serverIdle.rss)})`);
    log(`hnswlib-node   RSS     ${mb(peerFull.rss)} MiB (anonymous ${mb(peerFull.anon)}; idle ${mb(peerIdle.rss)})`);
    log(`ratio                  ${ratio.toFixed(2)} (goal <= 1.3); above idle ${result.ratioAboveIdle.toFixed(2)}`);
    log(`wrote ${file}`);
    return 0;
  } finally {
    cleanup();
    process.off('exit', cleanup);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
