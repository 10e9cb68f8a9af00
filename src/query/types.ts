/**
 * The contract between the database engine (src/query + src/shard + src/wal) and its users
 * (src/server, src/cli, tests, benchmarks). Standalone mode is one node that leads every shard;
 * the cluster issues will put replication behind the same interface.
 */
import type { Metric } from '../native';
import type { ShardStatusInfo } from '../shard/shard';
import type { FilterPlan, PayloadIndexSpec, PayloadIndexType } from '../shard/payload-index';

export type { FilterPlan, PayloadIndexSpec, PayloadIndexType };

export type IndexSpec =
  | { type: 'flat' }
  | { type: 'hnsw'; m?: number; efConstruction?: number; efSearch?: number }
  | { type: 'ivfpq'; nlist: number; m: number; refine?: number; nprobe?: number };

export type WriteConcern = 'leader' | 'majority' | 'all';
export type Consistency = 'linearizable' | 'session' | 'bounded' | 'eventual';

/** What a user sends to create a collection; missing fields take defaults. */
export interface CollectionSpecInput {
  name: string;
  dim: number;
  metric?: Metric; // default 'l2'
  index?: IndexSpec; // default { type: 'hnsw' }
  shards?: number; // default 1
  replicationFactor?: number; // default 1 (standalone accepts only 1)
  writeConcern?: WriteConcern; // default 'majority'
}

export interface CollectionSpec {
  name: string;
  dim: number;
  metric: Metric;
  index: IndexSpec;
  shards: number;
  replicationFactor: number;
  writeConcern: WriteConcern;
  /** Payload indexes (createPayloadIndex); absent: none. */
  payloadIndexes?: PayloadIndexSpec[];
}

/**
 * What can change in an existing collection: search defaults (`efSearch` of HNSW, `nprobe` of
 * IVF-PQ: what a search that gives none uses) and the write concern. `replicationFactor` only as
 * it is (another is FAILED_PRECONDITION).
 */
export interface CollectionUpdate {
  efSearch?: number;
  nprobe?: number;
  writeConcern?: WriteConcern;
  replicationFactor?: number;
}

export interface CollectionInfo extends CollectionSpec {
  payloadIndexes: PayloadIndexSpec[];
  count: number;
  createdAt: string; // ISO-8601
  /** A cluster's replicas are being added or removed (a new replication factor, or a replica moving); false standalone. */
  replicationChanging: boolean;
}

/** A JSON object; filters see its fields, nested ones by dotted paths. */
export type Payload = { [field: string]: unknown };

export interface PointInput {
  id: string;
  vector: Float32Array;
  payload?: Payload;
}

/** A point's new vector (updateVectors): its payload stays. */
export interface VectorInput {
  id: string;
  vector: Float32Array;
}

/**
 * A payload update: the points, by `ids` or those whose payload passes `filter` (one of the two),
 * and one change: `set` merges its keys into each payload (others kept), `overwrite` replaces the
 * payload, `deleteKeys` removes those keys.
 */
export interface PayloadUpdate {
  ids?: string[];
  filter?: Filter;
  set?: Payload;
  overwrite?: Payload;
  deleteKeys?: string[];
}

export interface Point {
  id: string;
  vector?: Float32Array;
  payload?: Payload;
}

/**
 * Where a write left a shard's log: the LSN of its entry and the epoch (leader term) that wrote it.
 * Epoch 0: not known (standalone, or a replay of a write older than the log's epoch history).
 */
export interface ShardPosition {
  epoch: number;
  lsn: number;
}

/**
 * Per-shard position a write reached: `{ "0": {epoch: 3, lsn: 17} }`. A `session` read carrying it
 * sees that write, on any replica (I5); an entry its epoch no longer holds (lost in a failover)
 * is FAILED_PRECONDITION.
 */
export type WriteToken = Record<string, ShardPosition>;

/**
 * How fresh a read must be (search, get, count):
 *   linearizable  the shard's leader, within its lease, after applying what was committed when the
 *                 read arrived: sees every write acknowledged before the read began
 *   session       any replica that has applied the `token`'s positions (waits, bounded, or goes to
 *                 the leader); shards the token does not name read as `eventual`
 *   bounded       a replica that heard from its leader within `maxLagMs` and had applied what that
 *                 leader had committed; else the leader
 *   eventual      any replica
 * The default is linearizable (the SDK sends `session` with its own writes' token).
 */
export interface ReadOptions {
  consistency?: Consistency;
  token?: WriteToken;
  /** For `bounded`: the staleness allowed, in ms (default 1000). */
  maxLagMs?: number;
}

/**
 * Payload filter (src/query/filter.ts has the rules). `field` is a top-level key or a dotted path
 * into nested objects ("meta.brand"); arrays stand for their elements. Values are JSON scalars.
 *   { and: Filter[] } | { or: Filter[] } | { not: Filter }
 *   { field: "color", eq: "red" }
 *   { field: "color", in: ["red", "blue"] }
 *   { field: "price", range: { gt?, gte?, lt?, lte? } }      (numbers, or ISO-8601 date strings)
 *   { field: "title", contains: "blue" }                      (text within a string)
 *   { field: "color", exists: true } | { field: "color", isNull: true } | { field: "tags", isEmpty: true }
 */
export type Filter =
  | { and: Filter[] }
  | { or: Filter[] }
  | { not: Filter }
  | { field: string; eq: string | number | boolean }
  | { field: string; in: (string | number | boolean)[] }
  | { field: string; range: { gt?: number | string; gte?: number | string; lt?: number | string; lte?: number | string } }
  | { field: string; contains: string }
  | { field: string; exists: boolean }
  | { field: string; isNull: boolean }
  | { field: string; isEmpty: boolean };

export interface SearchRequest {
  /** nq query vectors, row-major: Float32Array(nq * dim). */
  vectors: Float32Array;
  k: number;
  filter?: Filter;
  ef?: number;
  nprobe?: number;
  withPayload?: boolean;
  withVectors?: boolean;
  consistency?: Consistency;
  token?: WriteToken;
  maxLagMs?: number;
  /** Hits to skip before the k returned (pages of results: offset 0, k, 2k, ...). */
  offset?: number;
  /** Only hits at this distance or nearer (distances as search answers them: smaller is nearer). */
  maxDistance?: number;
}

/**
 * Search by example points (ids) instead of a vector: the query is the mean of the positive
 * examples' vectors moved away from the mean of the negative ones (2 x mean(positive) -
 * mean(negative); under cosine the examples are normalized first). The examples are never hits.
 */
export interface RecommendRequest extends Omit<SearchRequest, 'vectors'> {
  positive: string[];
  negative?: string[];
}

/** Count, all points or those passing `filter`. Counts are exact whether or not `exact` is set. */
export interface CountOptions extends ReadOptions {
  filter?: Filter;
  exact?: boolean;
}

/**
 * A page of points in id order: the first `limit` ids after `cursor` (from the start when absent)
 * whose payload passes `filter`.
 */
export interface ScrollRequest extends ReadOptions {
  limit: number;
  cursor?: string | null;
  filter?: Filter;
  withPayload?: boolean;
  withVectors?: boolean;
}

/** `nextCursor`: the cursor of the next page (the last id of this one), null when no point follows. */
export interface ScrollPage {
  points: Point[];
  nextCursor: string | null;
}

export interface SearchHit {
  id: string;
  distance: number;
  payload?: Payload;
  vector?: Float32Array;
}

/**
 * One replica of a shard in a ClusterStatus: its log positions as its node reports them, its lag
 * as the shard's leader sees it; a value the answering node could not learn is absent.
 */
export interface ReplicaStatus {
  node: string;
  /** leader | follower | fenced | draining; "unreachable" when its node sent no report. */
  role: string;
  durableLsn?: number;
  commitLsn?: number;
  appliedLsn?: number;
  /** Entries of the leader's durable log the replica has not acknowledged (0 on the leader). */
  lagEntries?: number;
  /** How long a lagging replica has not advanced, in ms (0 when caught up). */
  lagMs?: number;
}

/**
 * A shard: where it lives (leader, epoch, phase, replicas) and, in the fields of ShardStatusInfo,
 * this node's replica of it (0 when it holds none).
 */
export interface ShardStatus extends ShardStatusInfo {
  collection: string;
  shard: number;
  leader: string; // node id ('local' standalone; '' while it has none)
  /** active | electing | draining ('' while the node has no map of the shard). */
  phase: string;
  replicas: ReplicaStatus[];
}

export interface NodeStatus {
  id: string;
  grpc?: string;
  http?: string;
  zone?: string;
  /** Registered in etcd now (a node the shard maps name may not be). */
  alive: boolean;
}

export interface ClusterStatus {
  mode: 'standalone' | 'cluster';
  nodeId: string;
  /** By id. */
  nodes: NodeStatus[];
  /** By collection, then shard. */
  shards: ShardStatus[];
}

/** Hooks the server's metrics registry implements (prom-client); all optional. */
export interface DatabaseObserver {
  walAppend?(collection: string, shard: number, bytes: number): void;
  fsync?(collection: string, shard: number, seconds: number): void;
  snapshot?(collection: string, shard: number, seconds: number): void;
  /**
   * This node became the leader of a shard another node led before (an election or a hand-over).
   * `withoutLeaderSeconds`: from the last message this node had from the previous leader until it
   * could take writes itself (null when it never heard from that leader since it started).
   */
  leadership?(collection: string, shard: number, withoutLeaderSeconds: number | null): void;
  /** A shard's part of a write sent on to its leader on another node (cluster). */
  forwardedWrite?(collection: string, shard: number): void;
  /** A replica here answered a shard's part of a read (cluster): the level asked, the replica's role. */
  shardRead?(collection: string, shard: number, consistency: Consistency, role: string): void;
  /** A shard searched with a filter: how it found the points the filter allows (src/shard/payload-index.ts). */
  filterPlan?(collection: string, shard: number, plan: FilterPlan): void;
  /** A collection was dropped: its series go. */
  collectionDropped?(collection: string): void;
}

/** An upsert batch in columns: the vectors of all points as one row-major array of n x dim. */
export interface UpsertColumns {
  ids: unknown[];
  vectors: Float32Array;
  /** One per id; undefined = no payload. */
  payloads: unknown[];
}

/**
 * Options of a change. `signal`: once aborted (the caller's deadline passed), the change is refused
 * with the signal's reason if it has not reached the log yet; a change that has goes on and its
 * promise settles with its outcome, so a caller never reports as failed a change that is applied.
 */
export interface ChangeOptions {
  signal?: AbortSignal;
}

/** `idempotencyKey`: names the request; the same request again applies once and gets the first answer. */
export interface WriteOptions extends ChangeOptions {
  idempotencyKey?: string;
  /**
   * What idempotencyKey stands for when a client split the request by shard (requestHashBytes
   * bytes hashed from the whole request, the same in every part); by default the node hashes the
   * request it got.
   */
  requestHash?: Uint8Array;
  /**
   * The caller routed the write to this node expecting it to lead every shard of it: a node that
   * does not refuses it with NOT_LEADER naming the leader, instead of forwarding it.
   */
  expectLeader?: boolean;
}

/** One replica of a shard as its node reports it (GET /v1/collections/{name}/shards). */
export interface ReplicaInfo {
  node: string;
  role: string;
  epoch: number;
  durableLsn: number;
  commitLsn: number;
  appliedLsn: number;
  /** The leader's durable LSN minus this replica's (0 for the leader). */
  lagEntries: number;
  /** Hash of the applied state: ids, vectors, payloads and the index bytes. */
  digest: string;
}

export interface ShardReplicas {
  shard: number;
  epoch: number;
  leader: string | null;
  replicas: ReplicaInfo[];
}

export interface DrainOptions {
  signal?: AbortSignal;
  /** Called with the shards still to hand over, at the start and at every change. */
  onProgress?: (left: string[]) => void;
  /** Take leaderships again (clears the drain). */
  undo?: boolean;
}

/**
 * A shard's leader changed (an election or a hand-over), as one node saw it in the shard maps.
 * withoutLeaderSeconds: from the last message this node had from the old leader (a node holding a
 * replica of the shard), else from the first map that named no leader, until the map named the new
 * one; null when this node saw neither.
 */
export interface Failover {
  at: string; // ISO-8601, when this node saw the new leader
  collection: string;
  shard: number;
  epoch: number;
  from: string;
  to: string;
  withoutLeaderSeconds: number | null;
}

/** How many failovers a node keeps (Database.failovers). */
export const failoversKept = 20;

/** A backup of a collection (snapshotCollection): where it is and each shard's LSN in it. */
export interface CollectionBackup {
  collection: string;
  path: string;
  shards: { shard: number; lsn: number }[];
}

/** An alias and the collection it stands for. */
export interface AliasInfo {
  alias: string;
  collection: string;
}

/** One change of an alias: create or switch it to a collection, or delete it. */
export type AliasAction = { action: 'create' | 'switch'; alias: string; collection: string } | { action: 'delete'; alias: string };

export interface Database {
  createCollection(spec: CollectionSpecInput, opts?: ChangeOptions): Promise<CollectionInfo>;
  dropCollection(name: string, opts?: ChangeOptions): Promise<void>;
  /**
   * Indexes a payload field (a top-level key or dotted path) for filtered search: a field indexed
   * already takes the new type. Every shard builds it from its payloads and keeps it in step with
   * every write; the collection (its description, `payloadIndexes`) lists it.
   */
  createPayloadIndex(name: string, index: PayloadIndexSpec, opts?: ChangeOptions): Promise<CollectionInfo>;
  /** Drops the payload index of `field` (NOT_FOUND when there is none). */
  dropPayloadIndex(name: string, field: string, opts?: ChangeOptions): Promise<CollectionInfo>;
  /** Changes the settings of a collection that are safe to change (CollectionUpdate); answers the collection. */
  updateCollection(name: string, update: CollectionUpdate, opts?: ChangeOptions): Promise<CollectionInfo>;
  listCollections(): CollectionInfo[];
  /** Writes a snapshot of every shard of a collection to `path`, a new directory on the node (src/query/backup.ts). */
  snapshotCollection(name: string, path: string, opts?: ChangeOptions): Promise<CollectionBackup>;
  /** Makes collection `name` from the backup in `path` (the spec and points it holds). */
  restoreCollection(name: string, path: string, opts?: ChangeOptions): Promise<CollectionInfo>;
  describeCollection(name: string): CollectionInfo;
  /** Every alias and its collection, by alias. */
  listAliases(): AliasInfo[];
  /** Creates, switches and deletes aliases, all or none (src/query/aliases.ts); answers every alias after. */
  updateAliases(actions: AliasAction[], opts?: ChangeOptions): Promise<AliasInfo[]>;
  upsert(name: string, points: PointInput[], opts?: WriteOptions): Promise<{ upserted: number; token: WriteToken }>;
  /** upsert() of a batch in columns; the database keeps `vectors`: the caller must not change it afterwards. */
  upsertColumns(name: string, batch: UpsertColumns, opts?: WriteOptions): Promise<{ upserted: number; token: WriteToken }>;
  delete(name: string, ids: string[], opts?: WriteOptions): Promise<{ deleted: number; token: WriteToken }>;
  /** Deletes the points whose payload passes `filter` (each shard's leader resolves it to ids before it logs the delete). */
  deleteWhere(name: string, filter: Filter, opts?: WriteOptions): Promise<{ deleted: number; token: WriteToken }>;
  /** Changes payloads without the vectors; ids the collection does not hold are skipped (not counted). */
  updatePayload(name: string, update: PayloadUpdate, opts?: WriteOptions): Promise<{ updated: number; token: WriteToken }>;
  /** Replaces vectors without the payloads; ids the collection does not hold are skipped (not counted). */
  updateVectors(name: string, points: VectorInput[], opts?: WriteOptions): Promise<{ updated: number; token: WriteToken }>;
  /** Missing ids are absent from the answer. */
  get(name: string, ids: string[], opts?: { withVectors?: boolean; withPayload?: boolean } & ReadOptions): Promise<Point[]>;
  count(name: string, opts?: CountOptions): Promise<number>;
  /** A page of points in id order (every point present throughout a scroll is on exactly one page). */
  scroll(name: string, req: ScrollRequest): Promise<ScrollPage>;
  /** The k nearest of the positive examples, away from the negative ones (NOT_FOUND for an example that is absent). */
  recommend(name: string, req: RecommendRequest): Promise<SearchHit[]>;
  /** The dimension of a collection (NOT_FOUND if there is none). */
  dimOf(name: string): number;
  /** One list of hits per query, nearest first. */
  search(name: string, req: SearchRequest): Promise<SearchHit[][]>;
  /** This node and the shards it holds (cheap: the metrics read it at every scrape). */
  status(): ClusterStatus;
  /**
   * Every node and every shard of every collection, as this node can learn them: in a cluster the
   * replicas' log positions and lag come from their nodes (unless leadersOnly); standalone, status().
   */
  clusterStatus(opts?: { leadersOnly?: boolean }): Promise<ClusterStatus>;
  /** Every shard of a collection with each replica's log positions and (unless withDigest is false) state digest. */
  shards(name: string, opts?: { withDigest?: boolean }): Promise<ShardReplicas[]>;
  /** The last failoversKept leader changes this node saw in the shard maps, newest first (cluster; standalone has none). */
  failovers?(): Failover[];
  /**
   * A cluster node hands the shards it leads to followers that have its whole log and takes no
   * leadership until it restarts or is asked again with `undo` (FAILED_PRECONDITION standalone).
   * Resolves with the shards still led here when `signal` aborted first (empty: all handed over).
   */
  drain(opts?: DrainOptions): Promise<string[]>;
  /** Snapshot every shard now (also runs on a schedule and at close). */
  snapshot(): Promise<void>;
  /** Finish in-flight writes, snapshot, close files. */
  close(): Promise<void>;
  /**
   * Cluster: for a collection or alias `name` this node did not know when a call named it (a
   * NOT_FOUND with `details.collection`), whether the cluster's record holds it, once this node has
   * heard it (false: there is none, or this node knew it already). A collection made through
   * another node is usable here at once: the call is run again. Standalone has no such method.
   */
  heardOf?(name: string): Promise<boolean>;
}

export interface OpenOptions {
  dataDir: string;
  /** Snapshot a shard after this many ms if it changed (0 = only at close). Default 60000. */
  snapshotIntervalMs?: number;
  /** Snapshot a shard once its WAL since the last snapshot exceeds this many bytes. Default 256 MiB. */
  snapshotWalBytes?: number;
  /** WAL segment size before rolling to a new file. Default 64 MiB. */
  segmentBytes?: number;
  /** How long a batch across shards may stay in doubt on a shard before its coordinator is asked (and aborts it if undecided). Default 2000. */
  txnTimeoutMs?: number;
  observer?: DatabaseObserver;
  nodeId?: string;
}
