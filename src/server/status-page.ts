/**
 * Cluster status as people and programs see it: the HTML page at `/` (nodes, collections, every
 * shard with its leader, epoch, phase and replicas' log positions and lag, this node's replicas)
 * and the JSON of GET /v1/cluster and ClusterStatus.
 */
import type { ClusterStatus, CollectionInfo, ReplicaStatus, ShardStatus } from '../query/types';

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

/** Bytes in the largest binary unit that keeps the number at 1 or more (512 B, 1.5 KiB, 3.2 MiB). */
function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** A duration: ms under a second, else seconds with a tenth (850 ms, 2.5 s). */
function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** A replica's lag: entries, and how long it has been behind; "?" where the leader's view is unknown. */
function lagText(r: ReplicaStatus): string {
  if (r.lagEntries === undefined) return '?';
  if (r.lagEntries === 0) return '0 entries';
  return `${r.lagEntries} ${r.lagEntries === 1 ? 'entry' : 'entries'}${r.lagMs !== undefined ? `, ${formatMs(r.lagMs)}` : ''}`;
}

export function renderStatusPage(raw: ClusterStatus, collections: CollectionInfo[], self: ListenAddresses = {}): string {
  const status = clusterJson(raw, self);
  const known = (n: number | undefined): number | string => n ?? '?';
  const nodes = table(
    ['node', 'zone', 'gRPC', 'HTTP', 'alive'],
    status.nodes.map((n) => [n.id, n.zone ?? '', n.grpc ?? '', n.http ?? '', n.alive ? 'yes' : 'NO']),
  );
  const colls = table(
    ['collection', 'dim', 'metric', 'index', 'shards', 'replicas', 'points', 'created'],
    collections.map((c) => [c.name, c.dim, c.metric, c.index.type, c.shards, c.replicationFactor, c.count, c.createdAt]),
  );
  // One row per replica, the shard's columns on its first.
  const replicas = table(
    ['collection', 'shard', 'epoch', 'phase', 'leader', 'replica', 'role', 'durable LSN', 'commit LSN', 'applied LSN', 'lag'],
    status.shards.flatMap((s) =>
      (s.replicas.length > 0 ? s.replicas : [undefined]).map((r, i) => [
        ...(i === 0 ? [s.collection, s.shard, s.epoch, s.phase || '?', s.leader || 'none'] : ['', '', '', '', '']),
        ...(r ? [r.node, r.role, known(r.durableLsn), known(r.commitLsn), known(r.appliedLsn), lagText(r)] : ['', '', '', '', '', '']),
      ]),
    ),
  );
  const here = table(
    ['collection', 'shard', 'last LSN', 'applied LSN', 'not applied', 'snapshot LSN', 'points', 'WAL'],
    status.shards
      .filter((s) => s.replicas.some((r) => r.node === status.nodeId))
      .map((s) => [s.collection, s.shard, s.lastLsn, s.appliedLsn, `${s.lag} ${s.lag === 1 ? 'entry' : 'entries'}`, s.snapshotLsn, s.points, formatBytes(s.walBytes)]),
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
<p><small>every shard of every collection; log positions as each replica's node reports them, lag as its leader sees it (entries not yet acknowledged, and for how long)</small></p>
${replicas}
<h2>Replicas on this node</h2>
${here}
</body></html>
`;
}
