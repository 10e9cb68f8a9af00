/**
 * Prometheus metrics (prom-client), one registry per server so several servers can live in one
 * process (tests). Request counts per operation and transport, latency also per read level; WAL bytes, fsync and
 * snapshot latency through the DatabaseObserver hooks; points, LSNs and WAL size per shard read
 * from db.status() when /metrics is scraped. prom-client's process and Node.js metrics carry the
 * prefix `quiver_` (quiver_process_cpu_seconds_total, quiver_nodejs_eventloop_lag_seconds, ...).
 */
import * as client from 'prom-client';
import { VERSION } from '../common/version';
import type { ClusterDatabase } from '../query/cluster';
import type { Database, DatabaseObserver } from '../query/types';
import { gpuInfo, searchLaneStats, simdLevel, snapshotBufferBytes } from '../native';

export type Transport = 'grpc' | 'http';

/** How often the event-loop delay histogram (quiver_nodejs_eventloop_lag_*) takes a sample, in ms. */
export const EVENT_LOOP_SAMPLE_MS = 100;

/** Why a request was refused for its API key (src/server/access.ts). */
export type Refusal = 'unauthenticated' | 'permission_denied' | 'rate_limited';

export class Metrics {
  readonly registry = new client.Registry();
  readonly observer: DatabaseObserver;
  private db: Database | undefined;

  private readonly requests = new client.Counter({
    name: 'quiver_requests_total',
    help: 'API requests by operation, transport and result code (OK or a Quiver error code)',
    labelNames: ['op', 'transport', 'code'] as const,
    registers: [this.registry],
  });

  private readonly latency = new client.Histogram({
    name: 'quiver_request_duration_seconds',
    help: 'API request latency by operation, transport and read level (consistency: linearizable, session, bounded or eventual on reads; - on other operations)',
    labelNames: ['op', 'transport', 'consistency'] as const,
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });

  private readonly transportEvents = new client.Counter({
    name: 'quiver_transport_events_total',
    help: 'What a server did on its own to a connection or a call (connection refused or displaced at the cap, timeouts, requests refused for the buffer limit, connections closed for unread answers, protocol errors, floods, internal errors)',
    labelNames: ['transport', 'event'] as const,
    registers: [this.registry],
  });

  private readonly refused = new client.Counter({
    name: 'quiver_access_refused_total',
    help: 'Requests refused for their API key: unauthenticated (no key or an unknown one), permission_denied (a read key asking to write or administer), rate_limited (the key is over its rate)',
    labelNames: ['transport', 'reason'] as const,
    registers: [this.registry],
  });

  private readonly walBytes = new client.Counter({
    name: 'quiver_wal_bytes_written_total',
    help: 'Bytes appended to the WAL',
    labelNames: ['collection', 'shard'] as const,
    registers: [this.registry],
  });

  private readonly fsyncSeconds = new client.Histogram({
    name: 'quiver_wal_fsync_duration_seconds',
    help: 'WAL fsync latency',
    labelNames: ['collection', 'shard'] as const,
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [this.registry],
  });

  private readonly snapshotSeconds = new client.Histogram({
    name: 'quiver_snapshot_duration_seconds',
    help: 'Time to write a shard snapshot',
    labelNames: ['collection', 'shard'] as const,
    buckets: [0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });

  private readonly leaderChanges = new client.Counter({
    name: 'quiver_leader_changes_total',
    help: 'Leaderships this node took over from another node (elections and hand-overs; first placements not counted)',
    labelNames: ['collection', 'shard'] as const,
    registers: [this.registry],
  });

  private readonly forwardedWrites = new client.Counter({
    name: 'quiver_forwarded_writes_total',
    help: "Shard parts of writes this node sent on to their shard's leader on another node (a write that reached a node not leading its shards)",
    labelNames: ['collection', 'shard'] as const,
    registers: [this.registry],
  });

  private readonly shardReads = new client.Counter({
    name: 'quiver_shard_reads_total',
    help: "Shard parts of searches, gets and counts this node's replicas answered, by read level and the replica's role then (cluster)",
    labelNames: ['collection', 'shard', 'consistency', 'role'] as const,
    registers: [this.registry],
  });

  private readonly filterPlans = new client.Counter({
    name: 'quiver_filter_plans_total',
    help: 'Filtered shard searches by how the allowed points were found: index (payload indexes answered the whole filter), index_checked (their candidates, the filter checked on each), scan (every payload)',
    labelNames: ['collection', 'shard', 'plan'] as const,
    registers: [this.registry],
  });

  private readonly failoverSeconds = new client.Histogram({
    name: 'quiver_failover_seconds',
    help: 'On the new leader: from the last message it had from the previous leader until it could take writes',
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 30],
    registers: [this.registry],
  });

  private readonly keepaliveSeconds = new client.Histogram({
    name: 'quiver_etcd_keepalive_seconds',
    help: 'Time from sending a lease keepalive to etcd until its answer was handled (a busy event loop shows here before a lease is lost)',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2],
    registers: [this.registry],
  });

  observeKeepalive(seconds: number): void {
    this.keepaliveSeconds.observe(seconds);
  }

  /** Series labelled by collection, removed at the next scrape once their collection is dropped. */
  private readonly perCollection: (client.Counter<string> | client.Histogram<string>)[];
  /** Collections dropped since the last scrape (their series are removed then). */
  private readonly dropped = new Set<string>();

  constructor() {
    // The event-loop delay is sampled by a timer every eventLoopMonitoringPrecision ms: prom-client's
    // 10 woke an idle node 100 times a second, 3-5 of its 5-13 ms of CPU a second (O10).
    client.collectDefaultMetrics({ register: this.registry, prefix: 'quiver_', eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
    // prom-client also counts active handles, requests and resources as gauges named *_total; the
    // same figures by type stay (quiver_nodejs_active_handles etc.: sum() them for the total).
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
      this.registry.removeSingleMetric(`quiver_${name}`);
    }
    new client.Gauge({
      name: 'quiver_build_info',
      help: 'Always 1: the package version, the commit (QUIVER_COMMIT, else unknown), the SIMD level the kernels run at and whether a GPU is usable',
      labelNames: ['version', 'commit', 'simd', 'gpu'] as const,
      registers: [this.registry],
    }).set({ version: VERSION, commit: process.env.QUIVER_COMMIT || 'unknown', simd: simdLevel(), gpu: String(gpuInfo().available) }, 1);
    this.perCollection = [this.walBytes, this.fsyncSeconds, this.snapshotSeconds, this.leaderChanges, this.forwardedWrites, this.shardReads, this.filterPlans, this.replicationBytes];
    this.observer = {
      walAppend: (collection, shard, bytes) => this.walBytes.inc({ collection, shard: String(shard) }, bytes),
      fsync: (collection, shard, seconds) => this.fsyncSeconds.observe({ collection, shard: String(shard) }, seconds),
      snapshot: (collection, shard, seconds) => this.snapshotSeconds.observe({ collection, shard: String(shard) }, seconds),
      leadership: (collection, shard, seconds) => {
        this.leaderChanges.inc({ collection, shard: String(shard) });
        if (seconds !== null) this.failoverSeconds.observe(seconds);
      },
      forwardedWrite: (collection, shard) => this.forwardedWrites.inc({ collection, shard: String(shard) }),
      shardRead: (collection, shard, consistency, role) => this.shardReads.inc({ collection, shard: String(shard), consistency, role }),
      filterPlan: (collection, shard, plan) => this.filterPlans.inc({ collection, shard: String(shard), plan }),
      collectionDropped: (collection) => void this.dropped.add(collection),
    };
    // Per-shard gauges, read from db.status() at scrape time.
    const metrics = this;
    const shardGauge = (name: string, help: string, pick: (s: ReturnType<Database['status']>['shards'][number]) => number) =>
      new client.Gauge({
        name,
        help,
        labelNames: ['collection', 'shard', 'leader'] as const,
        registers: [this.registry],
        collect() {
          this.reset();
          if (!metrics.db) return;
          for (const s of metrics.db.status().shards) {
            this.set({ collection: s.collection, shard: String(s.shard), leader: s.leader }, pick(s));
          }
        },
      });
    shardGauge('quiver_shard_points', 'Points held by a shard', (s) => s.points);
    shardGauge('quiver_shard_applied_lsn', 'Highest LSN applied to the index and payload store', (s) => s.appliedLsn);
    shardGauge('quiver_shard_last_lsn', 'Highest LSN in the shard WAL', (s) => s.lastLsn);
    shardGauge('quiver_shard_snapshot_lsn', 'LSN of the newest snapshot', (s) => s.snapshotLsn);
    shardGauge('quiver_shard_wal_bytes', 'Bytes of WAL kept on disk for a shard', (s) => s.walBytes);
    shardGauge('quiver_shard_epoch', 'Leader epoch of a shard', (s) => s.epoch);
    shardGauge('quiver_shard_txn_in_doubt', 'Batches across shards prepared on this shard and awaiting their outcome', (s) => s.inDoubt);
    shardGauge('quiver_shard_txn_in_doubt_oldest_seconds', 'Age of the oldest batch across shards in doubt on this shard (0 when none)', (s) => s.inDoubtOldestMs / 1000);
    new client.Gauge({
      name: 'quiver_snapshot_buffer_bytes',
      help: 'Memory the indexes hold for their next snapshot: each recently written shard keeps the buffer its index was last serialized into (released lazily, so the kernel may reclaim it)',
      registers: [this.registry],
      collect() {
        this.set(snapshotBufferBytes());
      },
    });
    // The search lane (process-wide, native): where single searches ran, and where their time went.
    const laneCounter = (name: string, help: string, label: string, pick: Record<string, (s: ReturnType<typeof searchLaneStats>) => number>) =>
      new client.Counter({
        name,
        help,
        labelNames: [label],
        registers: [this.registry],
        collect() {
          const s = searchLaneStats();
          this.reset();
          for (const [value, fn] of Object.entries(pick)) this.inc({ [label]: value }, fn(s));
        },
      });
    laneCounter('quiver_search_tasks_total', 'Single searches by where they ran: the search lane, or the thread pool when the lane was busy', 'runner', {
      lane: (s) => s.laneTasks,
      pool: (s) => s.poolTasks,
    });
    laneCounter('quiver_search_lane_seconds_total', 'Time of lane searches by phase: waiting for the lane, running, waiting for the event loop to settle them', 'phase', {
      wait: (s) => s.waitNanos / 1e9,
      run: (s) => s.runNanos / 1e9,
      deliver: (s) => s.deliverNanos / 1e9,
    });
    // Its settings (a cluster node turns spinning and polling off).
    const laneGauge = (name: string, help: string, pick: (s: ReturnType<typeof searchLaneStats>) => number) =>
      new client.Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.set(pick(searchLaneStats()));
        },
      });
    laneGauge('quiver_search_lane_poll', 'Whether the event loop polls for search lane answers (1) or sleeps until woken (0)', (s) => (s.poll ? 1 : 0));
    laneGauge('quiver_search_lane_spin_max_seconds', 'The most the search lane spins for the next search before it sleeps', (s) => s.spinMicros / 1e6);
  }

  /** Gauges read this database at scrape time. */
  attach(db: Database): void {
    this.db = db;
  }

  /** Bytes of replication messages a node sent to its peers, by shard (cluster nodes count them). */
  readonly replicationBytes = new client.Counter({
    name: 'quiver_replication_sent_bytes_total',
    help: 'Bytes of replication messages (WAL entries, acknowledgements, snapshot chunks) sent to peer replicas',
    labelNames: ['collection', 'shard'] as const,
    registers: [this.registry],
  });

  /**
   * Replication gauges of a cluster node, read at scrape time: each replica's commit and applied
   * LSN, and on leaders each follower's lag in entries and in seconds (how long it has been behind
   * since it last advanced).
   */
  attachReplication(read: () => ReturnType<ClusterDatabase['replication']>): void {
    const gauge = (name: string, help: string, labels: string[], fill: (g: client.Gauge<string>, r: ReturnType<ClusterDatabase['replication']>[number]) => void) =>
      new client.Gauge({
        name,
        help,
        labelNames: labels,
        registers: [this.registry],
        collect() {
          this.reset();
          for (const r of read()) fill(this, r);
        },
      });
    gauge('quiver_replica_commit_lsn', 'Highest LSN a replica knows committed', ['collection', 'shard', 'role'], (g, r) => g.set({ collection: r.collection, shard: String(r.shard), role: r.role }, r.commitLsn));
    gauge('quiver_replica_applied_lsn', 'Highest LSN a replica applied', ['collection', 'shard', 'role'], (g, r) => g.set({ collection: r.collection, shard: String(r.shard), role: r.role }, r.appliedLsn));
    gauge('quiver_replication_lag_entries', 'Entries a follower lacks of its leader\'s durable log (on the leader)', ['collection', 'shard', 'follower'], (g, r) => {
      for (const f of r.followers) g.set({ collection: r.collection, shard: String(r.shard), follower: f.node }, f.lagEntries);
    });
    gauge('quiver_replication_lag_seconds', 'How long a lagging follower has not advanced (0 when caught up; on the leader)', ['collection', 'shard', 'follower'], (g, r) => {
      for (const f of r.followers) g.set({ collection: r.collection, shard: String(r.shard), follower: f.node }, f.lagSeconds);
    });
  }

  observeRequest(op: string, transport: Transport, code: string, seconds: number, consistency: string): void {
    this.requests.inc({ op, transport, code });
    this.latency.observe({ op, transport, consistency }, seconds);
  }

  observeTransport(transport: Transport, event: string): void {
    this.transportEvents.inc({ transport, event });
  }

  observeRefusal(transport: Transport, reason: Refusal): void {
    this.refused.inc({ transport, reason });
  }

  async text(): Promise<string> {
    await this.removeDropped();
    return this.registry.metrics();
  }

  /** Removes the series of the collections dropped since the last scrape. */
  private async removeDropped(): Promise<void> {
    if (this.dropped.size === 0) return;
    for (const m of this.perCollection) {
      for (const { labels } of (await m.get()).values) {
        // A histogram's buckets carry `le` besides the labels the series was made with.
        if (labels.le === undefined && this.dropped.has(String(labels.collection))) m.remove(labels);
      }
    }
    this.dropped.clear();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
