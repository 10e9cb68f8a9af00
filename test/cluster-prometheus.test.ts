/**
 * A real Prometheus (/usr/bin/prometheus, its own temp config and storage, a free loopback port)
 * scrapes the three nodes of a cluster every 500 ms: every target is up, each exports the build
 * info, the event-loop lag and its replicas' commit LSNs, and the request counter Prometheus
 * stores grows after writes; the Grafana dashboard's expressions run against it. Checked through
 * Prometheus's HTTP API, polled until it holds.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from './etcd-harness';
import { TestCluster, waitFor } from './cluster-harness';
import { httpJson, tempDir } from './server-harness';

const PROMETHEUS = '/usr/bin/prometheus';
const why = fs.existsSync(PROMETHEUS) ? null : `${PROMETHEUS} missing (Debian package prometheus; scripts/system-deps.sh)`;
const DIM = 8;

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

describe.skipIf(why !== null)(`a cluster scraped by Prometheus${why ? ` (skipped: ${why})` : ''}`, () => {
  let cluster: TestCluster;
  let prom: ChildProcess;
  let promExited: Promise<unknown>;
  let promUrl = '';
  let lastSeen = '';

  /** The samples of an instant query (an empty list until Prometheus has them). */
  async function query(q: string): Promise<Sample[]> {
    const r = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(q)}`).catch((e: Error) => e);
    if (r instanceof Error) {
      lastSeen = r.message;
      return [];
    }
    const body = (await r.json()) as { status: string; data?: { result: Sample[] }; error?: string };
    lastSeen = `${q}: ${JSON.stringify(body)}`;
    expect(body.status, lastSeen).toBe('success');
    return body.data!.result;
  }

  /** Waits until the query answers one sample per node (each with its `node` label). */
  async function waitPerNode(q: string): Promise<Sample[]> {
    let got: Sample[] = [];
    await waitFor(async () => (got = await query(q)).length === cluster.nodes.length, `${q} for every node`, 30_000, () => lastSeen);
    expect(got.map((s) => s.metric.node).sort()).toEqual(cluster.nodes.map((n) => n.id));
    return got;
  }

  const total = async (q: string): Promise<number> => Number((await query(q))[0]?.value[1] ?? 0);

  beforeAll(async () => {
    cluster = await TestCluster.start({ cluster: 'prometheus' });
    const dir = tempDir('quiver-prometheus-');
    const port = await freePort();
    promUrl = `http://127.0.0.1:${port}`;
    const targets = cluster.nodes.map((n) => `      - targets: ['${new URL(n.child.http).host}']\n        labels: { node: ${n.id} }`).join('\n');
    fs.writeFileSync(
      path.join(dir, 'prometheus.yml'),
      `global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n  - job_name: quiver\n    static_configs:\n${targets}\n`,
    );
    const log = fs.openSync(path.join(dir, 'prometheus.log'), 'a');
    prom = spawn(PROMETHEUS, [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`], {
      stdio: ['ignore', log, log],
    });
    fs.closeSync(log);
    promExited = new Promise((resolve) => prom.once('exit', resolve));
    await waitFor(
      async () => {
        if (prom.exitCode !== null) throw new Error(`prometheus exited: ${fs.readFileSync(path.join(dir, 'prometheus.log'), 'utf8').slice(-2000)}`);
        return (await fetch(`${promUrl}/-/ready`).catch(() => null))?.status === 200;
      },
      'Prometheus to be ready',
      30_000,
    );
  });

  afterAll(async () => {
    if (prom && prom.exitCode === null && prom.signalCode === null) {
      process.kill(prom.pid!, 'SIGKILL');
      await promExited;
    }
    await cluster?.close();
  });

  it('scrapes every node: up, build info, event-loop lag, replica LSNs, and a request counter that grows with writes', async () => {
    for (const s of await waitPerNode('up{job="quiver"} == 1')) expect(s.value[1]).toBe('1');
    for (const s of await waitPerNode('quiver_build_info')) {
      expect(s.metric.version).toMatch(/^\d+\.\d+\.\d+/);
      expect(['avx512', 'avx2', 'neon', 'serial']).toContain(s.metric.simd);
    }
    await waitPerNode('quiver_nodejs_eventloop_lag_seconds');

    const [n1] = cluster.nodes;
    const r = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: 'prom', dim: DIM, shards: 1, replicationFactor: 3, index: { type: 'flat' } });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const c = await cluster.client(n1);
    const batch = (from: number) => Array.from({ length: 20 }, (_, i) => ({ id: `p${from + i}`, vector: Float32Array.from({ length: DIM }, (_, d) => Math.sin((from + i) * 0.37 + d)) }));
    await c.upsert('prom', batch(0));
    await cluster.waitConverged(n1, 'prom', 'every replica of prom to apply the first batch', 3);
    // Every replica's commit LSN reaches Prometheus, past 0.
    await waitPerNode('quiver_replica_commit_lsn{collection="prom"} > 0');

    const upserts = 'sum(quiver_requests_total{op="Upsert",code="OK"})';
    await waitFor(async () => (await total(upserts)) >= 1, 'the first upsert in Prometheus', 30_000, () => lastSeen);
    const before = await total(upserts);
    for (let i = 1; i <= 3; i++) await c.upsert('prom', batch(i * 20));
    await waitFor(async () => (await total(upserts)) >= before + 3, 'three more upserts in Prometheus', 30_000, () => lastSeen);
  });

  it("the Grafana dashboard's expressions run, and the request panels have data", async () => {
    const dashboard = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'deploy', 'grafana', 'quiver-dashboard.json'), 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[] };
    // Grafana's variables as Grafana fills them: every node, a rate window of a few scrapes.
    const fill = (expr: string): string => expr.replaceAll('$instance', '.*').replaceAll('$__rate_interval', '5s').replaceAll('$__range', '5m');
    for (const p of dashboard.panels) {
      for (const [i, t] of p.targets.entries()) {
        const q = fill(t.expr);
        // The first query of these panels (requests by operation, leaders by node) has data by now.
        if (i === 0 && (p.title === 'Requests per second' || p.title === 'Leaders per node')) {
          await waitFor(async () => (await query(q)).length > 0, `data for ${q}`, 30_000, () => lastSeen);
        } else {
          await query(q); // a parse or type error fails here
        }
      }
    }
  });
});
