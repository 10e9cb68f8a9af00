/**
 * `quiver bench cluster` end to end in a tiny configuration (a small seeded synthetic set, short
 * phases): on nodes it starts itself, and on a running cluster (--target). Each run must write
 * bench/results' cluster-vdb.json and cluster-vdb.html with every measure: load duration, serial
 * p50/p99 with recall@10 and recall@100, QPS at each concurrency with failed searches counted,
 * and insert-while-search; and no progress bar on a stderr that is not a terminal.
 */
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runQuiver } from './cli-helpers';
import { TestCluster } from './cluster-harness';
import { etcdInstalled } from './etcd-harness';
import { tempDir } from './server-harness';

// --rest-seconds 0: the nodes' snapshot timer (60 s) is not waited for.
const TINY = ['--rest-seconds', '0', '--dataset', 'synthetic:2000:16', '--queries', '40', '--qps-seconds', '1', '--concurrency', '1,3', '--insert-rate', '50', '--stream-seconds', '2'];

/** Runs the benchmark into a directory of its own; its JSON and HTML. */
async function bench(args: string[]): Promise<{ json: any; html: string; stdout: string; stderr: string }> {
  const out = tempDir('quiver-bench-cluster-');
  const r = await runQuiver(['bench', 'cluster', ...TINY, ...args], { env: { QUIVER_BENCH_OUT: out, QUIVER_BENCH_CACHE: out } });
  expect(r.code, r.stderr).toBe(0);
  return { json: JSON.parse(fs.readFileSync(path.join(out, 'cluster-vdb.json'), 'utf8')), html: fs.readFileSync(path.join(out, 'cluster-vdb.html'), 'utf8'), stdout: r.stdout, stderr: r.stderr };
}

function expectEveryMeasure(r: { json: any; html: string; stdout: string; stderr: string }): void {
  const { json, html } = r;
  expect(json.dataset).toBe('synthetic-2000x16-l2-s42');
  expect(json.loaded).toBe(2000 - 100);
  expect(json.load.loadSeconds).toBeGreaterThan(0);
  expect(json.load.loadSeconds).toBeGreaterThanOrEqual(json.load.insertSeconds);
  expect(json.serial.map((s: { k: number }) => s.k)).toEqual([10, 100]);
  for (const s of json.serial) {
    expect(s.p99Ms).toBeGreaterThanOrEqual(s.p50Ms);
    expect(s.p50Ms).toBeGreaterThan(0);
    // HNSW over 1,900 points: nearly exact.
    expect(s.recall).toBeGreaterThan(0.9);
    expect(s.recall).toBeLessThanOrEqual(1);
    expect(s.failed).toBe(0);
  }
  expect(json.qps.map((q: { concurrency: number }) => q.concurrency)).toEqual([1, 3]);
  for (const q of json.qps) {
    expect(q.qps).toBeGreaterThan(0);
    expect(q.p99Ms).toBeGreaterThanOrEqual(q.p50Ms);
    expect(q.failed).toBe(0);
  }
  const st = json.streaming;
  expect(st.inserted).toBeGreaterThan(0);
  expect(st.insertedPerSec).toBeGreaterThan(0);
  expect(st.qps).toBeGreaterThan(0);
  expect(st.p99Ms).toBeGreaterThan(0);
  expect(st.recall).toBeGreaterThan(0.9);
  expect(st.failed).toBe(0);
  expect(st.insertFailed).toBe(0);
  // One self-contained file: no scripts, nothing fetched; the two plots inline.
  expect(html).not.toMatch(/<script|<link|src=/);
  expect(html.match(/<svg /g)?.length).toBe(2);
  for (const words of ['Load', 'Serial search', 'QPS by concurrency', 'Insert while searching', 'load duration s', 'recall@k', 'failed', 'recall@10', 'p99 ms']) expect(html).toContain(words);
  for (const words of ['load duration s', 'recall@k', 'in flight', 'insert rate /s']) expect(r.stdout).toContain(words);
  // stderr is a pipe here: progress lines, no bars.
  expect(r.stderr).not.toContain('\r');
  expect(r.stderr).toMatch(/load: 1900 points/);
}

describe.skipIf(!etcdInstalled)(`quiver bench cluster${etcdInstalled ? '' : ' (skipped: no /usr/bin/etcd)'}`, () => {
  it('on two nodes it starts: every measure in the JSON, the HTML report and the table', async () => {
    const r = await bench(['--nodes', '2']);
    expectEveryMeasure(r);
    expect(r.json.nodes).toBe(2);
    expect(r.json.replicationFactor).toBe(2);
  });

  describe('on a running cluster (--target) that asks for API keys', () => {
    const KEY = 'bench-admin-key-0123456789';
    let cluster: TestCluster;
    beforeAll(async () => {
      const file = path.join(tempDir('quiver-bench-keys-'), 'keys.json');
      fs.writeFileSync(file, JSON.stringify({ keys: [{ name: 'bench', role: 'admin', key: KEY }] }));
      cluster = await TestCluster.start({ nodes: 2, cluster: 'bench', args: ['--api-keys', file], apiKey: KEY });
    });
    afterAll(async () => {
      await cluster?.close();
    });

    it('every measure; the collection it made is dropped or named as left', async () => {
      const r = await bench(['--target', cluster.nodes.map((n) => n.child.grpc).join(','), '--replication-factor', '1', '--api-key', KEY]);
      expectEveryMeasure(r);
      expect(r.json.nodes).toBe(2);
      const left = (await (await cluster.client(cluster.nodes[0])).listCollections()).map((c) => c.name);
      expect(left.filter((name) => !r.stderr.includes(`could not drop ${name}, left on the cluster`))).toEqual([]);
    });
  });

  it('part upsert: every cluster mode beside a standalone node sent the same way, from --writers writers at once', async () => {
    const out = tempDir('quiver-bench-cluster-');
    const r = await runQuiver(['bench', 'cluster', '--parts', 'upsert', '--points', '300', '--warmup', '0', '--upsert-rounds', '1', '--writers', '3', '--dim', '8'], { env: { QUIVER_BENCH_OUT: out } });
    expect(r.code, r.stderr).toBe(0);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'cluster.json'), 'utf8'));
    expect(json.writers).toBe(3);
    const rows = json.upsert as { mode: string; index: string; pointsPerSec: number }[];
    const modes = ['standalone, whole', 'standalone, by shard', 'cluster RF 3, any node', 'cluster RF 3, to leaders'];
    expect(rows.map((x) => `${x.mode}/${x.index}`).sort()).toEqual(modes.flatMap((m) => [`${m}/flat`, `${m}/hnsw`]).sort());
    for (const x of rows) expect(x.pointsPerSec).toBeGreaterThan(0);
    expect(r.stdout).toContain('in batches of 100 by 3 writer(s)');
    // A batch across shards is a transaction, standalone too: each cluster mode is set against the standalone sent as it is.
    for (const index of ['flat', 'hnsw']) {
      expect(r.stdout).toMatch(new RegExp(`${index}, cluster RF 3, any node: CPU per vector per replica, cluster / standalone, whole = \\d`));
      expect(r.stdout).toMatch(new RegExp(`${index}, cluster RF 3, to leaders: CPU per vector per replica, cluster / standalone, by shard = \\d`));
    }
  });

  it('refuses bad flags with exit code 2', async () => {
    for (const args of [['--writers', '0'], ['--dataset', 'synthetic:50:4'], ['--dataset', 'mnist'], ['--concurrency', '0'], ['--parts', 'vdb,upsert', '--target', '127.0.0.1:1'], ['--api-key', 'k'.repeat(20)], ['--target', '127.0.0.1:1', '--tls-ca', '/nonexistent/ca.pem'], ['--dataset', 'synthetic:2000:16', '--insert-rate', '1000', '--stream-seconds', '10']]) {
      const r = await runQuiver(['bench', 'cluster', ...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/quiver bench cluster: --/);
    }
  });
});
