/**
 * The Grafana dashboard (deploy/grafana/quiver-dashboard.json) uses only metrics Quiver exports:
 * every metric name in its PromQL is on a standalone server's /metrics, or is one of the cluster
 * node's replication metrics (registered by Metrics.attachReplication).
 */
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Metrics } from '../src/server';
import { Harness, startHarness } from './server-harness';

const DASHBOARD = path.join(__dirname, '..', 'deploy', 'grafana', 'quiver-dashboard.json');

interface Panel {
  title: string;
  targets?: { expr: string }[];
}

/** The names of the series a histogram or any other metric exposes. */
function seriesNames(name: string, type: string): string[] {
  return type === 'histogram' ? [`${name}_bucket`, `${name}_sum`, `${name}_count`] : [name];
}

/** Metric names in a PromQL expression: identifiers outside strings and label matchers that start with quiver_. */
function metricNames(expr: string): string[] {
  const bare = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""').replace(/\{[^}]*\}/g, '');
  return [...new Set([...bare.matchAll(/\b(quiver_[a-zA-Z0-9_]+)\b/g)].map((m) => m[1]))];
}

describe('the Grafana dashboard', () => {
  let h: Harness;
  const dashboard = JSON.parse(fs.readFileSync(DASHBOARD, 'utf8')) as { panels: Panel[] };
  const exprs = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));

  beforeAll(async () => {
    h = await startHarness();
  });

  afterAll(async () => {
    await h?.stop();
  });

  it('finds the names in an expression, not its labels, strings or functions', () => {
    expect(metricNames('histogram_quantile(0.99, sum by (le, op) (rate(quiver_a_bucket{op="quiver_b",x=~"$x"}[5m]))) / quiver_c')).toEqual(['quiver_a_bucket', 'quiver_c']);
  });

  it('has the panels for traffic, latency, replication, leaders, failovers and fsync', () => {
    const titles = dashboard.panels.map((p) => p.title);
    for (const t of ['Requests per second', 'Request latency', 'Replication lag (entries)', 'Leaders per node', 'Leader changes', 'Failover time', 'WAL fsync latency']) expect(titles).toContain(t);
    for (const p of dashboard.panels) expect(p.targets?.length, p.title).toBeGreaterThan(0);
  });

  it('shows request latency by operation and read level (the labels of quiver_request_duration_seconds)', async () => {
    const panel = dashboard.panels.find((p) => p.title === 'Request latency')!;
    for (const t of panel.targets!) expect(t.expr).toContain('sum by (le, op, consistency) (rate(quiver_request_duration_seconds_bucket');
    expect((await fetch(`${h.httpBase}/v1/collections`)).status).toBe(200);
    const text = await (await fetch(`${h.httpBase}/metrics`)).text();
    expect(text).toMatch(/^quiver_request_duration_seconds_bucket\{[^}]*op="ListCollections",transport="http",consistency="-"\}/m);
  });

  it('uses only metric names a server exports', async () => {
    const text = await (await fetch(`${h.httpBase}/metrics`)).text();
    const exported = new Set([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].flatMap(([, name, type]) => seriesNames(name, type)));
    const cluster = new Metrics();
    cluster.attachReplication(() => []);
    const clusterOnly = new Set(cluster.registry.getMetricsAsArray().flatMap((m) => seriesNames(m.name, String(m.type))));
    const used = [...new Set(exprs.flatMap(metricNames))];
    expect(used.length).toBeGreaterThan(8);
    const unknown = used.filter((n) => !exported.has(n) && !clusterOnly.has(n));
    expect(unknown).toEqual([]);
  });
});
