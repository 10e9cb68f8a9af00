/**
 * Cluster status as people and programs see it: the HTML page at `/` (nodes with their process
 * figures, collections, every shard with its leader, epoch, phase and replicas' log positions and
 * lag, this node's replicas, the last leader changes this node saw), the JSON of GET /v1/cluster
 * and ClusterStatus, and one node's process figures (GET /v1/node).
 */
import * as fs from 'fs';
import * as https from 'https';
import type * as tls from 'tls';
import { TlsMaterial, clientTlsOptions } from '../common/tls';
import { failoversKept } from '../query/types';
import type { ClusterStatus, CollectionInfo, Failover, IndexSpec, ReplicaStatus, ShardStatus } from '../query/types';
import { VERSION } from '../common/version';
import type { Metrics } from './metrics';

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

/** What GET /v1/node answers: the process of one node as it sees itself. */
export interface NodeVitals {
  id: string;
  version: string;
  uptimeSeconds: number;
  rssBytes: number;
  /** Bytes free to the server on the data directory's file system; null where the server has no data directory. */
  diskFreeBytes: number | null;
  /** API requests (and those that failed) per second, over the time since the previous answer (at least RATE_WINDOW_MS). */
  requestsPerSecond: number;
  errorsPerSecond: number;
  /** The last leader changes this node saw in the shard maps, newest first. */
  failovers: Failover[];
}

const RATE_WINDOW_MS = 1000;
/** How long the page waits for another node's GET /v1/node: a node slower than this shows as down. */
const PEER_TIMEOUT_MS = 1000;

/** A node's figures over https with these TLS options; null for an answer other than 200. */
function getOverTls(url: string, options: tls.ConnectionOptions, key: string | undefined): Promise<NodeVitals | null> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ...options, headers: key ? { authorization: `Bearer ${key}` } : {}, agent: false, signal: AbortSignal.timeout(PEER_TIMEOUT_MS) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        try {
          resolve(res.statusCode === 200 ? (JSON.parse(Buffer.concat(chunks).toString()) as NodeVitals) : null);
        } catch (e) {
          reject(e);
        }
      });
    });
    req.on('error', reject);
  });
}

/**
 * What the status page knows beyond db.clusterStatus(): this node's process figures and the leader
 * changes it saw (db.failovers), and the other nodes' figures (asked over HTTP while the page renders).
 */
export class StatusSource {
  private sample: { atMs: number; requests: number; errors: number } | undefined;
  private rates = { requests: 0, errors: 0 };

  /**
   * `tls`: the node's certificate and CA when its servers use TLS; the other nodes are asked over
   * https then (fetch takes no CA), each checked to be the node it should be.
   */
  constructor(
    private readonly nodeId: () => string,
    private readonly metrics: Metrics,
    readonly failovers: () => Failover[],
    private readonly dataDir?: string,
    /** The API key this node calls the others with, when they need one. */
    private readonly peerKey: () => string | undefined = () => undefined,
    public tls?: TlsMaterial,
  ) {}

  async vitals(): Promise<NodeVitals> {
    const requests = (await this.metrics.registry.getSingleMetric('quiver_requests_total')?.get())?.values ?? [];
    const now = { atMs: performance.now(), requests: 0, errors: 0 };
    for (const v of requests) {
      now.requests += v.value;
      if (v.labels.code !== 'OK') now.errors += v.value;
    }
    const prev = this.sample;
    const seconds = prev ? (now.atMs - prev.atMs) / 1000 : process.uptime();
    if (!prev || seconds * 1000 >= RATE_WINDOW_MS) {
      this.rates = { requests: (now.requests - (prev?.requests ?? 0)) / seconds, errors: (now.errors - (prev?.errors ?? 0)) / seconds };
      this.sample = now;
    }
    const disk = this.dataDir === undefined ? null : await fs.promises.statfs(this.dataDir);
    return {
      id: this.nodeId(),
      version: VERSION,
      uptimeSeconds: process.uptime(),
      rssBytes: process.memoryUsage.rss(),
      diskFreeBytes: disk && disk.bavail * disk.bsize,
      requestsPerSecond: this.rates.requests,
      errorsPerSecond: this.rates.errors,
      failovers: this.failovers(),
    };
  }

  /** Every node's figures by id: this node's own, a live node's from its GET /v1/node, null for one that did not answer. */
  async nodes(status: ClusterStatus): Promise<Map<string, NodeVitals | null>> {
    const ask = async (node: string, http: string | undefined): Promise<NodeVitals | null> => {
      if (!http) return null;
      try {
        if (this.tls) return await getOverTls(`https://${http}/v1/node`, clientTlsOptions(this.tls, node), this.peerKey());
        const key = this.peerKey();
        const res = await fetch(`http://${http}/v1/node`, { headers: key ? { authorization: `Bearer ${key}` } : {}, signal: AbortSignal.timeout(PEER_TIMEOUT_MS) });
        return res.ok ? ((await res.json()) as NodeVitals) : null;
      } catch {
        return null; // refused, reset or too slow: the node is shown as down
      }
    };
    const all = await Promise.all(status.nodes.map(async (n) => [n.id, n.id === status.nodeId ? await this.vitals() : n.alive ? await ask(n.id, n.http) : null] as const));
    return new Map(all);
  }
}

function esc(v: unknown): string {
  return String(v).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function table(id: string, headers: string[], rows: unknown[][]): string {
  const head = headers.map((h) => `<th>${esc(h)}</th>`).join('');
  const cell = (c: unknown): string => (typeof c === 'number' ? `<td class="n">${esc(c)}</td>` : `<td>${esc(c)}</td>`);
  const body = rows.length
    ? rows.map((r) => `<tr>${r.map(cell).join('')}</tr>`).join('\n')
    : `<tr><td colspan="${headers.length}">none</td></tr>`;
  return `<table id="${id}"><thead><tr>${head}</tr></thead><tbody>\n${body}\n</tbody></table>`;
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

/** An uptime: seconds, minutes, hours or days with a tenth (42 s, 3.5 min, 2.0 h, 1.2 d). */
function formatSeconds(s: number): string {
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${(s / 60).toFixed(1)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

/** An index and its parameters as given (hnsw m=16 efConstruction=200). */
function indexText(spec: IndexSpec): string {
  const { type, ...params } = spec;
  return [type, ...Object.entries(params).map(([k, v]) => `${k}=${v}`)].join(' ');
}

/** A replica's lag: entries, and how long it has been behind; "?" where the leader's view is unknown. */
function lagText(r: ReplicaStatus): string {
  if (r.lagEntries === undefined) return '?';
  if (r.lagEntries === 0) return '0 entries';
  return `${r.lagEntries} ${r.lagEntries === 1 ? 'entry' : 'entries'}${r.lagMs !== undefined ? `, ${formatMs(r.lagMs)}` : ''}`;
}

export function renderStatusPage(
  raw: ClusterStatus,
  collections: CollectionInfo[],
  self: ListenAddresses,
  seen: { nodes: Map<string, NodeVitals | null>; failovers: Failover[] },
): string {
  const status = clusterJson(raw, self);
  const known = (n: number | undefined): number | string => n ?? '?';
  const rate = (n: number): string => `${n.toFixed(1)}/s`;
  const nodes = table(
    'nodes',
    ['node', 'zone', 'gRPC', 'HTTP', 'state', 'version', 'uptime', 'memory (RSS)', 'disk free', 'requests', 'errors'],
    status.nodes.map((n) => {
      const v = seen.nodes.get(n.id);
      const state = !n.alive ? 'DOWN (no lease)' : v ? 'up' : 'DOWN (not answering)';
      const figures = v
        ? [v.version, formatSeconds(v.uptimeSeconds), formatBytes(v.rssBytes), v.diskFreeBytes === null ? '?' : formatBytes(v.diskFreeBytes), rate(v.requestsPerSecond), rate(v.errorsPerSecond)]
        : ['', '', '', '', '', ''];
      return [n.id, n.zone ?? '', n.grpc ?? '', n.http ?? '', state, ...figures];
    }),
  );
  const colls = table(
    'collections',
    ['collection', 'dim', 'metric', 'index', 'shards', 'replicas', 'points', 'created'],
    collections.map((c) => [c.name, c.dim, c.metric, indexText(c.index), c.shards, c.replicationFactor, c.count, c.createdAt]),
  );
  const shards = [...status.shards].sort((a, b) => (a.collection < b.collection ? -1 : a.collection > b.collection ? 1 : a.shard - b.shard));
  // One row per replica, the shard's columns on its first.
  const replicas = table(
    'shards',
    ['collection', 'shard', 'epoch', 'phase', 'leader', 'replica', 'role', 'durable LSN', 'commit LSN', 'applied LSN', 'lag'],
    shards.flatMap((s) =>
      (s.replicas.length > 0 ? s.replicas : [undefined]).map((r, i) => [
        ...(i === 0 ? [s.collection, s.shard, s.epoch, s.phase || '?', s.leader || 'none'] : ['', '', '', '', '']),
        ...(r ? [r.node, r.role, known(r.durableLsn), known(r.commitLsn), known(r.appliedLsn), lagText(r)] : ['', '', '', '', '', '']),
      ]),
    ),
  );
  const failovers = table(
    'failovers',
    ['time', 'collection', 'shard', 'old leader', 'new leader', 'epoch', 'without leader'],
    seen.failovers.map((f) => [f.at, f.collection, f.shard, f.from, f.to, f.epoch, f.withoutLeaderSeconds === null ? '?' : formatMs(f.withoutLeaderSeconds * 1000)]),
  );
  const here = table(
    'here',
    ['collection', 'shard', 'last LSN', 'applied LSN', 'not applied', 'snapshot LSN', 'points', 'WAL', 'batches in doubt'],
    shards
      .filter((s) => s.replicas.some((r) => r.node === status.nodeId))
      .map((s) => [
        s.collection,
        s.shard,
        s.lastLsn,
        s.appliedLsn,
        `${s.lag} ${s.lag === 1 ? 'entry' : 'entries'}`,
        s.snapshotLsn,
        s.points,
        formatBytes(s.walBytes),
        s.inDoubt === 0 ? '0' : `${s.inDoubt}, oldest ${(s.inDoubtOldestMs / 1000).toFixed(1)} s`,
      ]),
  );
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><noscript><meta http-equiv="refresh" content="5"></noscript>
<title>Quiver: ${esc(status.nodeId)}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}
th{background:#f3f3f3}
td.n{text-align:right;font-variant-numeric:tabular-nums}
small{color:#666}
</style>
<script>
// Every 2 s, the page's body from a fresh copy of the page; a failed fetch keeps the last one (its time shows its age).
setInterval(async () => {
  try {
    const res = await fetch(location.pathname, { cache: 'no-store' });
    if (res.ok) document.body.innerHTML = new DOMParser().parseFromString(await res.text(), 'text/html').body.innerHTML;
  } catch {}
}, 2000);
</script></head><body>
<h1>Quiver</h1>
<p>mode <b>${esc(status.mode)}</b>, node <b>${esc(status.nodeId)}</b> <small>(as of ${esc(new Date().toISOString())}, refreshes every 2 s;
JSON at <a href="/v1/cluster">/v1/cluster</a>, metrics at <a href="/metrics">/metrics</a>)</small></p>
<h2>Nodes</h2>
<p><small>state: up (registered and answering GET /v1/node within ${PEER_TIMEOUT_MS} ms), DOWN (no lease, or not answering); request and error rates over the last second or more</small></p>
${nodes}
<h2>Collections</h2>
${colls}
<h2>Shards</h2>
<p><small>every shard of every collection; log positions as each replica's node reports them, lag as its leader sees it (entries not yet acknowledged, and for how long)</small></p>
${replicas}
<h2>Replicas on this node</h2>
${here}
<h2>Recent failovers</h2>
<p><small>the last ${failoversKept} leader changes this node saw in the shard maps since it started; without leader: from the last message this node had from the old leader (else from the first map naming no leader) until the map named the new one</small></p>
${failovers}
</body></html>
`;
}
