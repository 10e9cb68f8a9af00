/**
 * Cluster status as people and programs see it: the HTML page at `/` (collections and shards with
 * leader, epoch, LSNs, lag) and the JSON of GET /v1/cluster and ClusterStatus.
 */
import type { ClusterStatus, CollectionInfo, ShardStatus } from '../query/types';

export interface ListenAddresses {
  grpc?: string;
  http?: string;
}

/**
 * db.status() with this node's listen addresses filled in where the database does not know them,
 * and each shard's lag (last LSN - applied LSN).
 */
export interface ClusterStatusView extends Omit<ClusterStatus, 'shards'> {
  shards: (ShardStatus & { lag: number })[];
}

export function clusterJson(s: ClusterStatus, self: ListenAddresses = {}): ClusterStatusView {
  return {
    mode: s.mode,
    nodeId: s.nodeId,
    nodes: s.nodes.map((n) => (n.id === s.nodeId ? { ...n, grpc: n.grpc ?? self.grpc, http: n.http ?? self.http } : n)),
    shards: s.shards.map((sh) => ({ ...sh, lag: Math.max(0, sh.lastLsn - sh.appliedLsn) })),
  };
}

function esc(v: unknown): string {
  return String(v).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function table(headers: string[], rows: unknown[][]): string {
  const head = headers.map((h) => `<th>${esc(h)}</th>`).join('');
  const cell = (c: unknown): string => (typeof c === 'number' ? `<td class="n">${esc(c)}</td>` : `<td>${esc(c)}</td>`);
  const body = rows.length
    ? rows.map((r) => `<tr>${r.map(cell).join('')}</tr>`).join('\n')
    : `<tr><td colspan="${headers.length}">none</td></tr>`;
  return `<table><thead><tr>${head}</tr></thead><tbody>\n${body}\n</tbody></table>`;
}

export function renderStatusPage(raw: ClusterStatus, collections: CollectionInfo[], self: ListenAddresses = {}): string {
  const status = clusterJson(raw, self);
  const nodes = table(
    ['node', 'gRPC', 'HTTP', 'alive'],
    status.nodes.map((n) => [n.id, n.grpc ?? '', n.http ?? '', n.alive ? 'yes' : 'NO']),
  );
  const colls = table(
    ['collection', 'dim', 'metric', 'index', 'shards', 'replicas', 'points', 'created'],
    collections.map((c) => [c.name, c.dim, c.metric, c.index.type, c.shards, c.replicationFactor, c.count, c.createdAt]),
  );
  const shards = table(
    ['collection', 'shard', 'leader', 'epoch', 'last LSN', 'applied LSN', 'lag', 'snapshot LSN', 'points', 'WAL bytes'],
    status.shards.map((s) => [
      s.collection,
      s.shard,
      s.leader,
      s.epoch,
      s.lastLsn,
      s.appliedLsn,
      s.lag,
      s.snapshotLsn,
      s.points,
      s.walBytes,
    ]),
  );
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>Quiver: ${esc(status.nodeId)}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}
th{background:#f3f3f3}
td.n{text-align:right;font-variant-numeric:tabular-nums}
small{color:#666}
</style></head><body>
<h1>Quiver</h1>
<p>mode <b>${esc(status.mode)}</b>, node <b>${esc(status.nodeId)}</b> <small>(refreshes every 5 s;
JSON at <a href="/v1/cluster">/v1/cluster</a>, metrics at <a href="/metrics">/metrics</a>)</small></p>
<h2>Nodes</h2>
${nodes}
<h2>Collections</h2>
${colls}
<h2>Shards</h2>
${shards}
</body></html>
`;
}
