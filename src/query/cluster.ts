/**
 * The database of a node in a cluster: the same API as the standalone node (Database), over shards
 * whose replicas live on several nodes.
 *
 *   collections   from etcd (collections/<name>, written by createCollection, changed by
 *                 updateCollection, deleted with its maps by dropCollection); the controller
 *                 places each shard's replicas and writes its map (a new replication factor:
 *                 a learner added, or a follower removed)
 *   backups       written on this node from each shard leader's snapshot (ShardSnapshotPiece);
 *                 a restore writes the backed-up points through the write path below
 *   aliases       from etcd (aliases/<alias>, changed all together in one Txn by updateAliases);
 *                 a call's name is resolved once, at its entry (coll), and the real name goes on
 *   replicas      this node opens a ReplicaHost for every shard whose map names it (a replica or
 *                 the learner), feeds it the maps, the lease deadline and the peer messages, and
 *                 closes it with the node; once a map no longer names it (the controller moved the
 *                 replica elsewhere), it closes the replica and removes its files
 *   writes        split by shard (as standalone); each part goes to its shard's leader: this node's
 *                 replica when it leads, else the leader node over the node service (PeerShards);
 *                 an upsert or delete across shards is one transaction (./transaction.ts) driven
 *                 here over the same routes, each shard's leader logging its entries
 *   reads         each shard's part from its leader (local or remote), merged as standalone
 *
 * A write whose leader is unknown, moving or unreachable waits for the next map of its shard and
 * tries again until the caller's deadline (a retried upsert or delete is the same change). A
 * write the leader took but could not commit before the deadline is UNAVAILABLE: its outcome is
 * unknown, and a retry with the same idempotency key applies it at most once.
 */
import * as fs from 'fs';
import { promises as fsp } from 'fs';
import * as path from 'path';
import { moveAside, removeDirGradually, trashName } from '../common/fs';
import { performance } from 'perf_hooks';
import { QuiverError } from '../errors';
import { ReadLevel, checkReadLevel, readOptionsOf } from '../common/read-options';
import { ReplicaReadState, linearizableTarget, readVerdict } from '../cluster/read-level';
import { decodePrepare, encodePrepared, requestHash, txnIdBytes, txnTimeoutMsDefault } from '../shard';
import type { OwnPart, PreparedPart, Shard, ShardOptions, ShardWrite, StoredPoint, TxnOutcome, TxnPart, UpsertOp, WriteResult } from '../shard';
import type { NodeId, Progress, ShardKey, ShardMap, WriteConcern } from '../cluster/types';
import { members, shardKey } from '../cluster/types';
import { idsByShard, splitBatch, writeByShard } from '../common/placement';
import { mergeScroll, prepareCount, prepareScroll, recommend } from './reads';
import { aliasList, applyAliasActions, checkNotAliased, collectionNamed, resolveName } from './aliases';
import {
  OpenInternals,
  PointWrites,
  ShardChange,
  byFilter,
  changeHash,
  changeParts,
  checkPayloadUpdate,
  checkWrite,
  checkedBatch,
  copyPayloadIndexes,
  mergeHits,
  prepareSearch,
  resolveChange,
  shardOptionsOf,
  withPayloadIndex,
  withoutPayloadIndex,
} from './database';
import { compileFilter } from './filter';
import { KeyedTxns, TxnAnswer, TxnShard, resolveInDoubt, runKeyed, runTransaction } from './transaction';
import { SnapshotPiece, checkBackupPath, readBackup, receiveSnapshot, writeBackup } from './backup';
import { readRange, snapshotFiles } from '../cluster/replica-host';
import { loadSnapshotPoints, snapshotDirName } from '../shard/snapshot';
import type {
  AliasAction,
  AliasInfo,
  ChangeOptions,
  ClusterStatus,
  CountOptions,
  CollectionBackup,
  CollectionInfo,
  CollectionSpec,
  CollectionSpecInput,
  CollectionUpdate,
  Database,
  OpenOptions,
  PayloadIndexSpec,
  Point,
  PointInput,
  ReplicaInfo,
  ReplicaStatus,
  RecommendRequest,
  ScrollPage,
  ScrollRequest,
  SearchHit,
  SearchRequest,
  ShardReplicas,
  ShardStatus,
  DrainOptions,
  UpsertColumns,
  WriteOptions,
  WriteToken,
  ReadOptions,
  Failover,
} from './types';
import { failoversKept } from './types';
import { checkAnswerBytes, checkColumns, checkFieldName, checkIds, checkOptBool, checkPayloadIndex, checkSpec, checkUpdate, isPlainObject } from './validate';
import { defaultDeadlineMs } from '../common/limits';
import { Log, log as rootLog } from '../common/log';
import type { Payload } from '../cluster/sidecar-link';

/** What collections/<name> holds: the spec and when it was made. */
export interface CollectionRecord extends CollectionSpec {
  createdAt: string;
}

/** A live node as etcd lists it. */
export interface ClusterNodeRecord {
  zone: string | null;
  draining: boolean;
  grpc: string;
  http: string;
  replication: string;
  version: string;
}

/** One shard's replica on this node (src/cluster/replica-host.ts); its transaction calls answer while it leads. */
export interface ReplicaPort extends TxnShard {
  onMap(map: ShardMap): void;
  onLease(deadline: number): void;
  onPeerMessage(from: NodeId, payload: Buffer): void;
  upsert(op: UpsertOp, key?: string, hash?: Buffer): Promise<WriteResult>;
  delete(ids: string[], key?: string, hash?: Buffer): Promise<WriteResult>;
  /** Any client write, as one entry. */
  write(w: ShardWrite): Promise<WriteResult>;
  readonly shard: Shard;
  status(): { role: string; epoch: number; leader: NodeId | null; durableLsn: number; commitLsn: number; appliedLsn: number; epochStartLsn: number; peers: Record<NodeId, { match: number; sinceAckMs: number }> };
  /** What a read's level is judged by; `leaseDeadline` on performance.now()'s clock. */
  readState(leaseDeadline: number): ReplicaReadState;
  /** The collection's write concern changed (updateCollection): writes from now on are answered by it. */
  setWriteConcern(w: WriteConcern): void;
  digest(): Promise<string>;
  close(): Promise<void>;
}

export type OpenReplica = (a: {
  shard: ShardKey;
  /** The replica's directory: dataDir/shards/<collection>/<shard> (its WAL, snapshots and state file). */
  dir: string;
  /** The shard's settings (its files are the replica's to place under dir). */
  shardOptions: Omit<ShardOptions, 'walDir' | 'snapshotDir'>;
  /** The collection's write concern when the replica opens. */
  writeConcern: WriteConcern;
  send: (to: NodeId, payload: Payload) => void;
  publish: (p: Progress) => void;
}) => Promise<ReplicaPort>;

/** etcd as the cluster database sees it (src/cluster/etcd.ts). */
export interface CoordinatorPort {
  on(event: 'map', fn: (shard: ShardKey, map: ShardMap) => void): unknown;
  on(event: 'nodes', fn: (nodes: Record<NodeId, ClusterNodeRecord>) => void): unknown;
  on(event: 'collection', fn: (name: string, record: CollectionRecord) => void): unknown;
  /** The collection's record was deleted (dropped), with its shard maps. */
  on(event: 'collectionDropped', fn: (name: string) => void): unknown;
  /** Every collection, after each whole read of etcd (its 'collection' events first). */
  on(event: 'collections', fn: (names: ReadonlySet<string>) => void): unknown;
  on(event: 'lease', fn: (deadline: number) => void): unknown;
  /** Every alias (alias -> collection), after the first read and on every change. */
  on(event: 'aliases', fn: (aliases: ReadonlyMap<string, string>) => void): unknown;
  createCollection(name: string, record: CollectionRecord, signal?: AbortSignal): Promise<void>;
  /**
   * Deletes a collection's record and shard maps in one guarded Txn (NOT_FOUND when absent; an
   * error thrown by `check`, given every alias, changes nothing). Resolves once this node has heard
   * it (a 'collectionDropped' event).
   */
  dropCollection(name: string, check: (aliases: ReadonlyMap<string, string>) => void | Promise<void>): Promise<void>;
  /** Whether etcd holds a collection or an alias named `name`; true once this node's view has heard it. */
  hearName(name: string): Promise<boolean>;
  /** Changes a collection's record (a guarded read-modify-write); every node hears it as a 'collection' event. */
  updateCollection(name: string, change: (record: CollectionRecord) => CollectionRecord): Promise<CollectionRecord>;
  /**
   * Changes the aliases as `change` makes them from the aliases and collections read, in one Txn
   * guarded on what was read (read again when another writer came first); an error thrown by
   * `change` changes nothing. Resolves once this node has heard the change (an 'aliases' event).
   */
  updateAliases(change: (aliases: ReadonlyMap<string, string>, collections: ReadonlySet<string>) => Map<string, string>): Promise<void>;
  publishProgress(shard: ShardKey, p: Progress): void;
  /** Sets the `draining` flag of this node's key (the controller moves its leaderships away). */
  setDraining(on: boolean): void;
}

/** A follower of a shard its node leads, as the leader sees it. */
export interface FollowerLag {
  node: NodeId;
  /** Entries of the leader's durable log it has not acknowledged. */
  lagEntries: number;
  /** How long it has not advanced while behind, in ms (0 when caught up). */
  lagMs: number;
}

/** A replica as the node holding it reports it (the node service's ReplicaStatus). */
export interface ReplicaReport extends Omit<ReplicaInfo, 'lagEntries'> {
  collection: string;
  shard: number;
  /** On a leader: its followers. */
  followers: FollowerLag[];
}

/** The node service of other nodes (src/server/node-service.ts): each call serves shards that node holds. */
export interface PeerShards {
  upsert(node: NodeId, collection: string, shard: number, op: UpsertOp, key: string, hash: Buffer | undefined): Promise<WriteResult>;
  delete(node: NodeId, collection: string, shard: number, ids: string[], key: string, hash: Buffer | undefined): Promise<WriteResult>;
  /** A shard's part of a write of the point API (ShardChange), which that node resolves and logs as the shard's leader. */
  change(node: NodeId, collection: string, shard: number, part: ShardChange, key: string, hash: Buffer | undefined): Promise<WriteResult>;
  /** Reads: `deadlineMs` (default the node service's) bounds a part asked of a replica that may not be the leader. */
  search(node: NodeId, collection: string, shards: number[], req: SearchRequest & { vectors: Float32Array }, deadlineMs?: number): Promise<SearchHit[][]>;
  get(node: NodeId, collection: string, shards: number[], ids: string[], withVectors: boolean, withPayload: boolean, read: ReadOptions, deadlineMs?: number): Promise<Point[]>;
  count(node: NodeId, collection: string, shards: number[], opts: CountOptions, deadlineMs?: number): Promise<number>;
  /** The first limit + 1 points of the shards asked after the cursor, in id order. */
  scroll(node: NodeId, collection: string, shards: number[], req: ScrollRequest, deadlineMs?: number): Promise<Point[]>;
  /** The replicas `node` holds of a collection's shards ('' = of every collection). */
  replicaStatus(node: NodeId, collection: string, withDigest: boolean): Promise<ReplicaReport[]>;
  /** A batch across shards (./transaction.ts), each call to the shard's leader: see ClusterDatabase.txnPrepare and the next ones. */
  /** `body`: the prepare entry's body (encodePrepared). */
  txnPrepare(node: NodeId, collection: string, shard: number, body: Buffer, key: string): Promise<void>;
  txnDecide(node: NodeId, collection: string, shard: number, txn: string, outcome: TxnOutcome): Promise<{ outcome: TxnOutcome; part: WriteResult | undefined }>;
  /** `body`: the coordinator's own part as a prepare entry's body (encodePrepared), which its commit entry carries. */
  txnCommit(node: NodeId, collection: string, shard: number, body: Buffer, key: string): Promise<{ outcome: TxnOutcome; part: WriteResult | undefined }>;
  txnDecisionOf(node: NodeId, collection: string, shard: number, txn: string): Promise<TxnOutcome | undefined>;
  txnResolve(node: NodeId, collection: string, shard: number, txn: string, outcome: TxnOutcome): Promise<WriteResult | undefined>;
  /** A piece of a shard's snapshot on `node` (lsn 0: its leader snapshots it now), checksum checked. */
  snapshotPiece(node: NodeId, collection: string, shard: number, lsn: number, offset: number): Promise<SnapshotPiece>;
}

/** Coordinator: logs the outcome (a commit carrying `own`) and answers it with its own part settled at that entry (undefined: none here). */
async function decideSettled(t: TxnShard, txn: string, outcome: TxnOutcome, own: OwnPart | undefined): Promise<{ outcome: TxnOutcome; part: WriteResult | undefined }> {
  const decided = await t.decide(txn, outcome, own);
  return { outcome: decided.outcome, part: await decided.part };
}

/** Participant: logs its resolution and answers once its part is settled (undefined: none here). */
function resolveSettled(t: TxnShard, txn: string, outcome: TxnOutcome): Promise<WriteResult | undefined> {
  const part = t.settled(txn);
  t.resolve(txn, outcome);
  return part ?? Promise.resolve(undefined);
}

export interface ClusterOptions extends OpenOptions, OpenInternals {
  nodeId: NodeId;
  coordinator: CoordinatorPort;
  peers: PeerShards;
  openReplica: OpenReplica;
  /** Sends a replica's message to its peer on another node (the sidecar link). */
  sendToPeer: (to: NodeId, shard: ShardKey, payload: Payload) => void;
  /** Where replicas opened and removed are logged. Default the process's log. */
  log?: Log;
}

interface ClusterCollection {
  spec: CollectionSpec;
  createdAt: string;
  maps: (ShardMap | null)[];
  replicas: Map<number, ReplicaSlot>;
  /** Batches across shards this node drives, by idempotency key (a retry joins the one running). */
  txns: KeyedTxns;
  /** Its directory is this collection's (claimDir), once resolved. */
  claimed?: Promise<void>;
}

/** A replica being opened, and once open, the replica. */
interface ReplicaSlot {
  opening: Promise<ReplicaPort>;
  port?: ReplicaPort;
}

/** Bytes of a shard's snapshot in one piece sent to a node writing a backup. */
const snapshotPieceBytes = 1024 * 1024;
/** A restore writes the backed-up points in upserts of at most this many points and bytes of vectors. */
const restoreBatchPoints = 1000;
const restoreBatchBytes = 8 * 1024 * 1024;

/** How long a write waits for its shard to have a leader when the caller gave no deadline. */
const leaderWaitMs = defaultDeadlineMs;
/** How long a follower waits to apply a session token's entry before the read goes to the leader. */
const sessionWaitMs = 200;
/**
 * The deadline of a read's part asked of a replica that may not lead its shards, past which the
 * leader is asked: a paused or cut-off node stays registered for up to a lease TTL. A search that
 * takes longer than this on a follower is asked again of the leader.
 */
const replicaPartDeadlineMs = 2000;

function isRouting(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return code === 'NOT_LEADER' || code === 'UNAVAILABLE';
}

export class ClusterDatabase extends PointWrites implements Database {
  private readonly self: NodeId;
  private readonly dataDir: string;
  private readonly collections = new Map<string, ClusterCollection>();
  /** Names not known here being looked up in etcd (heardOf), each once at a time. */
  private readonly namesAsked = new Map<string, Promise<boolean>>();
  /** alias -> collection, as etcd's last 'aliases' event has it. */
  private aliases: ReadonlyMap<string, string> = new Map();
  private nodes: Record<NodeId, ClusterNodeRecord> = {};
  private lease = 0;
  /** Woken at every map change of a shard (and at close). */
  private readonly mapWaiters = new Map<ShardKey, Array<() => void>>();
  private readonly collectionWaiters = new Map<string, Array<() => void>>();
  /** When this node last had a message from each shard's leader (performance.now), for the failover metric. */
  private readonly heardFromLeader = new Map<ShardKey, number>();
  /** Writes in flight to another node's leader, told of each map change of their shard. */
  private readonly movedWatchers = new Map<ShardKey, Set<() => void>>();
  /** The last leader each shard had (maps while electing name none). */
  private readonly lastLeader = new Map<ShardKey, NodeId>();
  /** When the maps first named no leader of a shard since its last one (performance.now). */
  private readonly leaderlessSince = new Map<ShardKey, number>();
  /** The last failoversKept leader changes seen in the maps, newest first. */
  private readonly failoverLog: Failover[] = [];
  /** Replicas being closed and removed (a replica of the same shard opens only after). */
  private readonly removing = new Map<ShardKey, Promise<void>>();
  /** Dropped collections being closed and removed (a replica of a collection of the same name opens only after). */
  private readonly removingCollection = new Map<string, Promise<void>>();
  /** Names under shards/ of the directories being freed now (discard). */
  private readonly discarding = new Set<string>();
  private closed = false;
  private readonly log: Log;
  /** Resolves the prepares in doubt on the shards this node leads (every txnTimeoutMs). */
  private readonly resolveTimer: NodeJS.Timeout;

  constructor(private readonly opts: ClusterOptions) {
    super();
    this.self = opts.nodeId;
    this.log = opts.log ?? rootLog.child({ node: opts.nodeId });
    this.dataDir = path.resolve(opts.dataDir);
    this.resolveTimer = setInterval(() => this.resolveDue(), opts.txnTimeoutMs ?? txnTimeoutMsDefault);
    this.resolveTimer.unref();
    const c = opts.coordinator;
    c.on('nodes', (nodes) => (this.nodes = nodes));
    c.on('collection', (name, record) => this.onCollection(name, record));
    c.on('collectionDropped', (name) => this.onDropped(name));
    c.on('collections', (names) => this.removeOrphans(names));
    c.on('map', (shard, map) => this.onMap(shard, map));
    c.on('aliases', (aliases) => (this.aliases = aliases));
    c.on('lease', (deadline) => {
      this.lease = deadline;
      for (const col of this.collections.values()) for (const r of col.replicas.values()) r.port?.onLease(deadline);
    });
  }

  /** A message from a peer's replica (through the sidecar). Dropped when the shard is not open here: the sender retransmits. */
  onPeerMessage(from: NodeId, shard: ShardKey, payload: Buffer): void {
    const { col, s } = this.parseShardKey(shard);
    const port = col?.replicas.get(s)?.port;
    if (!port) return;
    if (from === col!.maps[s]?.leader) this.heardFromLeader.set(shard, performance.now());
    port.onPeerMessage(from, payload);
  }

  liveNodes(): Record<NodeId, ClusterNodeRecord> {
    return this.nodes;
  }

  // ---------------------------------------------------------------- etcd events

  private parseShardKey(key: ShardKey): { col: ClusterCollection | undefined; s: number } {
    const i = key.lastIndexOf('/');
    return { col: this.collections.get(key.slice(0, i)), s: Number(key.slice(i + 1)) };
  }

  private onCollection(name: string, record: CollectionRecord): void {
    const known = this.collections.get(name);
    const { createdAt, ...spec } = record;
    if (known) {
      // Settings (updateCollection) at once; payload indexes once the replicas build them.
      if (spec.writeConcern !== known.spec.writeConcern) {
        for (const slot of known.replicas.values()) void slot.opening.then((r) => r.setWriteConcern(spec.writeConcern), () => undefined);
      }
      known.spec = { ...spec, payloadIndexes: known.spec.payloadIndexes };
      return this.payloadIndexesChanged(known, record.payloadIndexes ?? []);
    }
    this.collections.set(name, { spec, createdAt, maps: new Array<ShardMap | null>(spec.shards).fill(null), replicas: new Map(), txns: new Map() });
    for (const wake of this.collectionWaiters.get(name) ?? []) wake();
    this.collectionWaiters.delete(name);
  }

  /** The collection's payload indexes are now `list` (its record changed): every replica here builds them. */
  private payloadIndexesChanged(c: ClusterCollection, list: PayloadIndexSpec[]): void {
    if (JSON.stringify(list) === JSON.stringify(c.spec.payloadIndexes ?? [])) return;
    c.spec = { ...c.spec, payloadIndexes: list };
    for (const [s, slot] of c.replicas) {
      slot.opening
        .then((r) => r.shard.setPayloadIndexes(list))
        .catch((e: Error) => this.log.error('payload indexes not built', { collection: c.spec.name, shard: s, err: e.message }));
    }
  }

  private onMap(key: ShardKey, map: ShardMap): void {
    const { col, s } = this.parseShardKey(key);
    if (!col || !(s >= 0 && s < col.spec.shards)) return;
    col.maps[s] = map;
    if (map.leader === null && this.lastLeader.has(key) && !this.leaderlessSince.has(key)) this.leaderlessSince.set(key, performance.now());
    if (map.leader !== null && map.phase === 'active') {
      const before = this.lastLeader.get(key);
      if (before !== undefined && before !== map.leader) {
        const since = this.heardFromLeader.get(key) ?? this.leaderlessSince.get(key);
        const withoutLeaderSeconds = since === undefined ? null : (performance.now() - since) / 1000;
        if (map.leader === this.self) this.opts.observer?.leadership?.(col.spec.name, s, this.heardFromLeader.has(key) ? withoutLeaderSeconds : null);
        this.failoverLog.unshift({ at: new Date().toISOString(), collection: col.spec.name, shard: s, epoch: map.epoch, from: before, to: map.leader, withoutLeaderSeconds });
        this.failoverLog.length = Math.min(this.failoverLog.length, failoversKept);
      }
      this.lastLeader.set(key, map.leader);
      this.leaderlessSince.delete(key);
    }
    const slot = col.replicas.get(s);
    const dir = path.join(this.collectionDir(col.spec.name), String(s));
    if (!members(map).includes(this.self)) {
      if (!this.closed && (slot || fs.existsSync(dir))) this.remove(key, dir, slot);
      if (slot) col.replicas.delete(s);
    } else if (slot?.port) slot.port.onMap(map);
    else if (!slot && !this.closed) {
      const removed = Promise.all([this.removing.get(key), this.removingCollection.get(col.spec.name)]);
      const opening: ReplicaSlot = {
        opening: removed.then(async () => {
          await this.claimDir(col);
          return this.opts.openReplica({
            shard: key,
            dir,
            shardOptions: { ...this.shardOptions(col.spec, s), payloadIndexes: () => col.spec.payloadIndexes ?? [] },
            writeConcern: col.spec.writeConcern,
            send: (to, payload) => this.opts.sendToPeer(to, key, payload),
            // Not once the collection is dropped (its replica may publish while it closes).
            publish: (p) => {
              if (this.collections.get(col.spec.name) === col) this.opts.coordinator.publishProgress(key, p);
            },
          });
        }),
      };
      col.replicas.set(s, opening);
      // Once open it gets the newest map and lease (a map that came while it opened included).
      opening.opening.then(
        (r) => {
          opening.port = r;
          if (this.lease > 0) r.onLease(this.lease);
          r.onMap(col.maps[s]!);
          if (this.closed) void r.close();
        },
        (e: unknown) => {
          if (col.replicas.get(s) === opening) col.replicas.delete(s);
          this.log.error('cannot open the replica', { shard: key, epoch: col.maps[s]?.epoch, err: (e as Error).message });
        },
      );
    }
    for (const wake of this.mapWaiters.get(key) ?? []) wake();
    this.mapWaiters.delete(key);
    for (const check of this.movedWatchers.get(key) ?? []) check();
  }

  /**
   * Closes this node's replica of `key` (once open) and removes its directory: the shard's map no
   * longer names this node, so every entry it holds is held where the map says. Also for files
   * left from before a restart.
   */
  private remove(key: ShardKey, dir: string, slot: ReplicaSlot | undefined): void {
    const before = this.removing.get(key) ?? Promise.resolve();
    const done = before
      .then(async () => {
        await (await slot?.opening.catch(() => null))?.close();
        await this.discard(dir, `${path.basename(path.dirname(dir))}-${path.basename(dir)}`);
        this.log.info('removed the replica: its map no longer names this node', { shard: key });
      })
      .catch((e: Error) => this.log.error('cannot remove the replica', { shard: key, err: e.message }))
      .finally(() => {
        if (this.removing.get(key) === done) this.removing.delete(key);
      });
    this.removing.set(key, done);
  }

  private collectionDir(name: string): string {
    return path.join(this.dataDir, 'shards', name);
  }

  /**
   * Removes `dir` under shards/: renamed to shards/.gone-<what>-<random> (a name no collection has:
   * removeOrphans deletes one a crash left), resolving then, and freed gradually after (G10), so a
   * replica opening in its place does not wait for the freeing.
   */
  private async discard(dir: string, what: string): Promise<void> {
    const trash = trashName(what);
    const to = path.join(this.dataDir, 'shards', trash);
    this.discarding.add(trash);
    let moved = false;
    try {
      moved = await moveAside(dir, to);
    } finally {
      if (!moved) this.discarding.delete(trash);
    }
    if (!moved) return;
    removeDirGradually(to)
      .catch((e: Error) => this.log.error('cannot free a removed directory', { dir: to, err: e.message }))
      .finally(() => this.discarding.delete(trash));
  }

  /**
   * Makes the collection's directory this collection's before a replica of it opens: files of an
   * earlier collection of the same name (dropped and made again while this node was away) are
   * removed first. `collection.json` there names the collection's createdAt; a directory without
   * one is taken as this collection's (files from before it was written).
   */
  private claimDir(c: ClusterCollection): Promise<void> {
    c.claimed ??= (async () => {
      const dir = this.collectionDir(c.spec.name);
      const file = path.join(dir, 'collection.json');
      const held = await fsp.readFile(file, 'utf8').then(
        (t) => (JSON.parse(t) as { createdAt?: string }).createdAt ?? null,
        () => null,
      );
      if (held === c.createdAt) return;
      if (held !== null) {
        await this.discard(dir, c.spec.name);
        this.log.info('removed the replicas of an earlier collection of the same name', { collection: c.spec.name, createdAt: held });
      }
      await fsp.mkdir(dir, { recursive: true });
      await fsp.writeFile(file, JSON.stringify({ createdAt: c.createdAt }));
    })();
    return c.claimed;
  }

  /**
   * Removes the directories of collections etcd does not hold (dropped while this node was away),
   * skipping those being removed already.
   */
  private removeOrphans(names: ReadonlySet<string>): void {
    const root = path.join(this.dataDir, 'shards');
    fsp
      .readdir(root)
      .catch(() => [] as string[])
      .then(async (dirs) => {
        for (const name of dirs) {
          if (names.has(name) || this.collections.has(name) || this.removingCollection.has(name) || this.discarding.has(name)) continue;
          await fsp.rm(path.join(root, name), { recursive: true, force: true });
          this.log.info('removed the files of a collection that no longer exists', { collection: name });
        }
      })
      .catch((e: Error) => this.log.error('cannot remove the files of dropped collections', { err: e.message }));
  }

  /**
   * A collection dropped (its record gone from etcd): it is forgotten at once (calls naming it are
   * NOT_FOUND), its replicas here are closed and its directory removed.
   */
  private onDropped(name: string): void {
    const c = this.collections.get(name);
    if (!c) return;
    this.collections.delete(name);
    const slots = [...c.replicas.values()];
    c.replicas.clear();
    const keys = this.allShards(c).map((s) => shardKey(name, s));
    const done = (this.removingCollection.get(name) ?? Promise.resolve())
      .then(async () => {
        await Promise.all([...slots.map(async (slot) => (await slot.opening.catch(() => null))?.close()), ...keys.map((k) => this.removing.get(k))]);
        await this.discard(this.collectionDir(name), name);
        this.log.info('removed the collection: it was dropped', { collection: name });
      })
      .catch((e: Error) => this.log.error('cannot remove the dropped collection', { collection: name, err: e.message }))
      .finally(() => {
        if (this.removingCollection.get(name) === done) this.removingCollection.delete(name);
      });
    this.removingCollection.set(name, done);
    this.opts.observer?.collectionDropped?.(name);
    // Writes and reads waiting for one of its maps look again (and find it gone).
    for (const key of keys) {
      for (const wake of this.mapWaiters.get(key) ?? []) wake();
      this.mapWaiters.delete(key);
      for (const check of this.movedWatchers.get(key) ?? []) check();
    }
  }

  /** A replica's shard settings; `existing` once its WAL is there (a restart: a missing WAL is then DATA_LOSS). */
  private shardOptions(spec: CollectionSpec, s: number): Omit<ShardOptions, 'walDir' | 'snapshotDir'> {
    const { walDir: _w, snapshotDir: _s, ...rest } = shardOptionsOf(this.dataDir, this.opts, spec, s);
    return { ...rest, existing: fs.existsSync(path.join(this.collectionDir(spec.name), String(s), 'wal')) };
  }

  /** Resolves (with null) once the map of `key` has an epoch above `epoch`; cancel() forgets it. */
  private mapMoved(key: ShardKey, epoch: number): { promise: Promise<null>; cancel(): void } {
    let check = (): void => undefined;
    const promise = new Promise<null>((resolve) => {
      check = () => {
        const { col, s } = this.parseShardKey(key);
        if (this.closed || (col?.maps[s]?.epoch ?? 0) > epoch) resolve(null);
      };
    });
    let set = this.movedWatchers.get(key);
    if (!set) this.movedWatchers.set(key, (set = new Set()));
    set.add(check);
    return {
      promise,
      cancel: () => {
        set!.delete(check);
        if (set!.size === 0 && this.movedWatchers.get(key) === set) this.movedWatchers.delete(key);
      },
    };
  }

  /** Resolves at the next map change of `key`, after ms, or when `signal` aborts, whichever is first. */
  private nextMap(key: ShardKey, ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(1, ms));
      signal?.addEventListener('abort', done, { once: true });
      const list = this.mapWaiters.get(key) ?? [];
      list.push(done);
      this.mapWaiters.set(key, list);
    });
  }

  // ---------------------------------------------------------------- collections

  private usable(): void {
    if (this.closed) throw new QuiverError('UNAVAILABLE', 'the node is shutting down');
  }

  /** The collection a call names (by its name or an alias): the one place a name is resolved. */
  private coll(name: unknown): ClusterCollection {
    this.usable();
    return collectionNamed(this.collections, this.aliases, name);
  }

  async heardOf(name: string): Promise<boolean> {
    const known = (): boolean => this.collections.has(resolveName(this.aliases, name));
    if (this.closed || known()) return false;
    // Calls naming the same unknown name at once share one look-up (etcd is read once, not per call).
    let asked = this.namesAsked.get(name);
    if (!asked) {
      asked = this.opts.coordinator.hearName(name).finally(() => this.namesAsked.delete(name));
      this.namesAsked.set(name, asked);
    }
    return (await asked) && known();
  }

  /**
   * This node's view of the count: the shards it holds a replica of (count() asks every leader).
   * `replicationChanging` while a shard's map (as this node has it) holds a learner or another
   * number of voting replicas than the replication factor.
   */
  private info(c: ClusterCollection): CollectionInfo {
    let count = 0;
    for (const [, r] of this.open(c)) count += r.shard.count;
    const replicationChanging = c.maps.some((m) => !m || m.learner !== undefined || m.replicas.length !== c.spec.replicationFactor);
    return { ...c.spec, index: { ...c.spec.index }, payloadIndexes: copyPayloadIndexes(c.spec), count, createdAt: c.createdAt, replicationChanging };
  }

  /** Live nodes that take replicas (not draining): the most a replication factor may be. */
  private replicaNodes(): { liveNodes: number } {
    return { liveNodes: Object.values(this.nodes).filter((n) => !n.draining).length };
  }

  /** The replicas of c open on this node, by shard. */
  private open(c: ClusterCollection): [number, ReplicaPort][] {
    const out: [number, ReplicaPort][] = [];
    for (const [s, slot] of c.replicas) if (slot.port) out.push([s, slot.port]);
    return out;
  }

  async createCollection(input: CollectionSpecInput, opts: ChangeOptions = {}): Promise<CollectionInfo> {
    this.usable();
    return this.create(checkSpec(input, this.replicaNodes()), opts);
  }

  /** Writes the collection's record (the controller places its shards) and answers once this node has heard of it. */
  private async create(spec: CollectionSpec, opts: ChangeOptions): Promise<CollectionInfo> {
    if (this.aliases.has(spec.name)) throw new QuiverError('ALREADY_EXISTS', `"${spec.name}" is an alias`);
    opts.signal?.throwIfAborted();
    const createdAt = new Date().toISOString();
    await this.opts.coordinator.createCollection(spec.name, { ...spec, createdAt }, opts.signal);
    if (!this.collections.has(spec.name)) {
      // Its maps exist: the collection's own event is on its way (etcd's watch delivers in revision order).
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => reject(new QuiverError('UNAVAILABLE', `collection "${spec.name}" is created; this node has not heard of it yet`));
        if (opts.signal?.aborted) return onAbort();
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        const list = this.collectionWaiters.get(spec.name) ?? [];
        list.push(() => {
          opts.signal?.removeEventListener('abort', onAbort);
          resolve();
        });
        this.collectionWaiters.set(spec.name, list);
      });
    }
    return this.info(this.coll(spec.name));
  }

  async createPayloadIndex(name: string, index: PayloadIndexSpec, opts: ChangeOptions = {}): Promise<CollectionInfo> {
    const c = this.coll(name);
    const spec = checkPayloadIndex(index);
    return this.changePayloadIndexes(c, (list) => withPayloadIndex(list, spec), opts);
  }

  async dropPayloadIndex(name: string, field: string, opts: ChangeOptions = {}): Promise<CollectionInfo> {
    const c = this.coll(name);
    checkFieldName(field, 'field');
    return this.changePayloadIndexes(c, (list) => withoutPayloadIndex(c.spec.name, list, field), opts);
  }

  /**
   * A collection-level setting: the record in etcd changes, and every node builds the indexes in
   * its replicas when it hears of it (this one at once).
   */
  private async changePayloadIndexes(c: ClusterCollection, change: (list: PayloadIndexSpec[]) => PayloadIndexSpec[], opts: ChangeOptions): Promise<CollectionInfo> {
    opts.signal?.throwIfAborted();
    const record = await this.opts.coordinator.updateCollection(c.spec.name, (r) => ({ ...r, payloadIndexes: change(r.payloadIndexes ?? []) }));
    this.payloadIndexesChanged(c, record.payloadIndexes ?? []);
    return this.info(c);
  }

  /**
   * Deletes the record and shard maps in etcd (one guarded Txn, refused while aliases point to
   * it); every node, this one first, then closes its replicas of it and removes their files.
   */
  async dropCollection(name: string, opts: ChangeOptions = {}): Promise<void> {
    const c = this.coll(name);
    checkNotAliased(this.aliases, c.spec.name);
    opts.signal?.throwIfAborted();
    await this.opts.coordinator.dropCollection(c.spec.name, (aliases) => checkNotAliased(aliases, c.spec.name));
  }

  /**
   * The record in etcd changes (guarded on its revision); every node takes the new settings when it
   * hears of it (this one at once). A new replication factor is the controller's to reach: the
   * answer comes once the record holds it, with `replicationChanging` until every shard has it.
   */
  async updateCollection(name: string, update: CollectionUpdate, opts: ChangeOptions = {}): Promise<CollectionInfo> {
    const c = this.coll(name);
    const nodes = this.replicaNodes();
    checkUpdate(c.spec, update, nodes);
    opts.signal?.throwIfAborted();
    const record = await this.opts.coordinator.updateCollection(c.spec.name, (r) => ({ ...r, ...checkUpdate(r, update, nodes) }));
    this.onCollection(c.spec.name, record);
    return this.info(c);
  }

  /**
   * A backup in `dest` on this node, in the standalone format (src/query/backup.ts): each shard's
   * leader takes a snapshot at its applied LSN, and this node copies it piece by piece (the node
   * service's ShardSnapshotPiece, each piece checksummed) from that node.
   */
  async snapshotCollection(name: string, dest: string, opts: ChangeOptions = {}): Promise<CollectionBackup> {
    const c = this.coll(name);
    const to = checkBackupPath(dest, this.dataDir);
    opts.signal?.throwIfAborted();
    return writeBackup(to, c.spec, (s, dir) => {
      let from = this.self;
      const piece = (node: NodeId, lsn: number, offset: number): Promise<SnapshotPiece> =>
        node === this.self ? this.shardSnapshotPiece(c.spec.name, s, lsn, offset) : this.opts.peers.snapshotPiece(node, c.spec.name, s, lsn, offset);
      return receiveSnapshot(dir, async (lsn, offset) => {
        if (lsn > 0) return piece(from, lsn, offset);
        // The first piece from the shard's leader (it takes the snapshot); the rest from the same node.
        for (let attempt = 0; ; attempt++) {
          from = [...(await this.byLeader(c, [s])).keys()][0];
          try {
            return await piece(from, 0, 0);
          } catch (e) {
            if (!isRouting(e) || attempt >= 3) throw e;
            await this.nextMap(shardKey(c.spec.name, s), 250, opts.signal);
          }
        }
      });
    });
  }

  /**
   * A piece of this node's snapshot of shard s (the node service's ShardSnapshotPiece): with lsn 0
   * the replica, which must lead, takes a snapshot now and the first piece of it answers; then the
   * piece of the snapshot at `lsn` from `offset` (NOT_FOUND once a newer snapshot replaced it).
   */
  async shardSnapshotPiece(name: string, s: number, lsn: number, offset: number): Promise<SnapshotPiece> {
    const c = this.coll(name);
    const r = await this.ledReplica(name, s);
    if (lsn === 0) {
      const leader = c.maps[s]?.leader;
      if (leader !== this.self) throw leader ? this.notLeader(c.spec.name, s, leader) : new QuiverError('UNAVAILABLE', `shard ${c.spec.name}/${s} has no leader`);
      await r.shard.snapshot();
      lsn = r.shard.status().snapshotLsn;
      if (lsn === 0) return { lsn, files: [], data: Buffer.alloc(0) };
    }
    const replaced = (): QuiverError => new QuiverError('NOT_FOUND', `shard ${c.spec.name}/${s}: its snapshot at LSN ${lsn} is gone (a newer one replaced it)`);
    try {
      const src = await snapshotFiles(path.join(this.collectionDir(c.spec.name), String(s), 'snapshots', snapshotDirName(lsn)));
      if (!Number.isSafeInteger(offset) || offset < 0 || offset > src.total) throw new QuiverError('INVALID_ARGUMENT', `offset ${offset} is outside the snapshot (${src.total} bytes)`);
      return { lsn, files: src.files, data: await readRange(src, offset, Math.min(snapshotPieceBytes, src.total - offset)) };
    } catch (e) {
      throw (e as NodeJS.ErrnoException).code === 'ENOENT' ? replaced() : e;
    }
  }

  /**
   * Makes collection `name` from the backup in `src` on this node (a standalone node's or a
   * cluster's): the backup's spec, with its replication factor (a standalone backup's 1 becomes the
   * cluster default, 3), at most the live nodes; then each backed-up shard's points, read from its
   * snapshot here, go through the replicated write path in upserts. A snapshot that cannot be read
   * (DATA_LOSS) or a write that fails drops the collection again: nothing is left made.
   */
  async restoreCollection(name: string, src: string, opts: ChangeOptions = {}): Promise<CollectionInfo> {
    this.usable();
    const from = checkBackupPath(src, this.dataDir);
    const m = await readBackup(from);
    const b = m.spec;
    const nodes = this.replicaNodes();
    const replicationFactor = Math.max(1, Math.min(b.replicationFactor > 1 ? b.replicationFactor : 3, nodes.liveNodes));
    const spec: CollectionSpec = {
      ...checkSpec({ name, dim: b.dim, metric: b.metric, index: b.index, shards: b.shards, replicationFactor, writeConcern: b.writeConcern }, nodes),
      payloadIndexes: b.payloadIndexes ?? [],
    };
    await this.create(spec, opts);
    try {
      const perBatch = Math.max(1, Math.min(restoreBatchPoints, Math.floor(restoreBatchBytes / (spec.dim * 4))));
      for (const { shard: s, lsn } of m.shards) {
        if (lsn === 0) continue;
        const { store } = await loadSnapshotPoints(path.join(from, String(s), snapshotDirName(lsn)), spec.dim);
        const labels = store.liveLabels();
        for (let i = 0; i < labels.length; i += perBatch) {
          const part = labels.subarray(i, i + perBatch);
          const ids = Array.from(part, (l) => store.idOf(l)!);
          await this.upsertColumns(spec.name, { ids, vectors: store.gather(part), payloads: Array.from(part, (l) => store.payloadOf(l)) }, { signal: opts.signal });
        }
        this.log.info('restored a shard of a backup', { collection: spec.name, shard: s, of: m.shards.length, points: labels.length, from });
      }
    } catch (e) {
      await this.dropCollection(spec.name).catch((d: Error) => this.log.error('cannot drop a collection whose restore failed', { collection: spec.name, err: d.message }));
      throw e;
    }
    // The count as the leaders have it (info() counts this node's replicas, followers may lag).
    return { ...this.info(this.coll(spec.name)), count: await this.count(spec.name) };
  }

  listCollections(): CollectionInfo[] {
    this.usable();
    return [...this.collections.values()].sort((a, b) => (a.spec.name < b.spec.name ? -1 : 1)).map((c) => this.info(c));
  }

  describeCollection(name: string): CollectionInfo {
    return this.info(this.coll(name));
  }

  listAliases(): AliasInfo[] {
    this.usable();
    return aliasList(this.aliases);
  }

  async updateAliases(actions: AliasAction[], opts: ChangeOptions = {}): Promise<AliasInfo[]> {
    this.usable();
    applyAliasActions(this.aliases, (n) => this.collections.has(n), actions);
    opts.signal?.throwIfAborted();
    await this.opts.coordinator.updateAliases((now, collections) => applyAliasActions(now, (n) => collections.has(n), actions));
    return aliasList(this.aliases);
  }

  dimOf(name: string): number {
    return this.coll(name).spec.dim;
  }

  // ---------------------------------------------------------------- routing

  /**
   * Runs `local` on this node's replica when it leads shard s, else `remote` on the leader node;
   * while the shard has no reachable leader, waits for its next map and tries again until the
   * deadline (the caller's signal, else leaderWaitMs). Without `remote` (the caller routed the
   * write here, expecting this node to lead), a shard led by another node is NOT_LEADER naming it.
   * `forward`: a call to another node counts as a forwarded write (a batch's prepare does; its
   * decision and resolutions do not).
   */
  private async onLeader<T>(
    c: ClusterCollection,
    s: number,
    signal: AbortSignal | undefined,
    local: (r: ReplicaPort) => Promise<T>,
    remote: ((node: NodeId) => Promise<T>) | null,
    forward = true,
  ): Promise<T> {
    const key = shardKey(c.spec.name, s);
    const deadline = Date.now() + leaderWaitMs;
    let last = 'no leader is known';
    for (;;) {
      if (this.collections.get(c.spec.name) !== c) throw new QuiverError('NOT_FOUND', `collection "${c.spec.name}" was dropped`);
      // Past the caller's deadline with no leader that took the write: nothing was written.
      if (signal?.aborted || Date.now() >= deadline) throw new QuiverError('UNAVAILABLE', `shard ${key} has no leader that answers (${last}); nothing was written`);
      const map = c.maps[s];
      const leader = map && map.phase === 'active' ? map.leader : null;
      if (leader && leader !== this.self && !remote) throw this.notLeader(c.spec.name, s, leader);
      try {
        if (leader === this.self) {
          const r = await c.replicas.get(s)?.opening;
          if (r) return await local(r);
          last = 'its replica here is not open';
        } else if (leader && remote) {
          if (forward) this.opts.observer?.forwardedWrite?.(c.spec.name, s);
          // A leader that stops leading while the write is in flight (paused, cut off, handing
          // over) may never answer: on a newer map the write goes to the new leader, which holds
          // every entry the old one committed (the idempotency key then answers a repeat once;
          // without one, an upsert or delete by id applied twice leaves the same state).
          const answer = remote(leader);
          const moved = this.mapMoved(key, map!.epoch);
          try {
            const r = await Promise.race([answer.then((v) => ({ v })), moved.promise]);
            if (r) return r.v;
            answer.catch(() => undefined);
            last = `${leader} stopped leading while the write was in flight`;
            continue;
          } finally {
            moved.cancel();
          }
        }
      } catch (e) {
        // The replica knows another leader before this node's map does.
        const named = (e as QuiverError).code === 'NOT_LEADER' ? (e as QuiverError).details?.leader : undefined;
        if (!remote && named) throw this.notLeader(c.spec.name, s, named);
        if (!isRouting(e) || (e as { outcomeUnknown?: boolean }).outcomeUnknown) throw e;
        last = `${leader}: ${(e as Error).message}`;
      }
      await this.nextMap(key, Math.min(Math.max(1, deadline - Date.now()), 250), signal);
    }
  }

  /** NOT_LEADER for shard s, naming its leader and, when it is live, the leader's addresses (what a client routes by). */
  private notLeader(name: string, s: number, leader: NodeId): QuiverError {
    const n = this.nodes[leader];
    const details: Record<string, string> = n ? { leader, leaderGrpc: n.grpc, leaderHttp: n.http } : { leader };
    return new QuiverError('NOT_LEADER', `shard ${shardKey(name, s)} is led by node ${leader}`, details);
  }

  /** A write routed here expecting this node to lead: NOT_LEADER before any part is written when a map names another leader of one of its shards. */
  private checkLeads(c: ClusterCollection, shards: Iterable<number>): void {
    for (const s of shards) {
      const m = c.maps[s];
      if (m?.phase === 'active' && m.leader !== null && m.leader !== this.self) throw this.notLeader(c.spec.name, s, m.leader);
    }
  }

  /** A leader's write that cannot wait past the caller's deadline: after it, the outcome is unknown. */
  private static bounded<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    if (!signal) return p;
    return new Promise<T>((resolve, reject) => {
      const onAbort = (): void =>
        reject(
          Object.assign(new QuiverError('UNAVAILABLE', 'the write was not committed before the deadline; its outcome is unknown: retry it with the same idempotency key'), {
            outcomeUnknown: true,
          }),
        );
      if (signal.aborted) {
        p.catch(() => undefined); // not awaited by anyone now: its failure must not end the process
        return onAbort();
      }
      signal.addEventListener('abort', onAbort, { once: true });
      p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  // ---------------------------------------------------------------- writes

  async upsert(name: string, points: PointInput[], opts: WriteOptions = {}): Promise<{ upserted: number; token: WriteToken }> {
    const c = this.coll(name);
    return this.upsertChecked(c, checkedBatch(points, c.spec), opts);
  }

  async upsertColumns(name: string, batch: UpsertColumns, opts: WriteOptions = {}): Promise<{ upserted: number; token: WriteToken }> {
    const c = this.coll(name);
    return this.upsertChecked(c, checkColumns(batch, c.spec.dim, c.spec.metric), opts);
  }

  private async upsertChecked(c: ClusterCollection, batch: UpsertOp, opts: WriteOptions): Promise<{ upserted: number; token: WriteToken }> {
    const { key, hash, expectLeader } = checkWrite(opts, () => requestHash('upsert', c.spec.name, batch.ids, batch.payloadJson, batch.vectors));
    const parts = splitBatch(batch, c.spec.dim, c.spec.shards);
    if (expectLeader) this.checkLeads(c, parts.keys());
    if (parts.size > 1) {
      const { count, token } = await this.transact(c, new Map([...parts].map(([s, op]) => [s, { type: 'upsert', op }])), key, hash, opts.signal);
      return { upserted: count, token };
    }
    const { count, token } = await writeByShard(parts, (s, part) =>
      this.onLeader(
        c,
        s,
        opts.signal,
        (rep) => ClusterDatabase.bounded(rep.upsert(part, key, hash), opts.signal),
        expectLeader ? null : (node) => ClusterDatabase.bounded(this.opts.peers.upsert(node, c.spec.name, s, part, key, hash), opts.signal),
      ),
    );
    return { upserted: count, token };
  }

  async delete(name: string, ids: string[], opts: WriteOptions = {}): Promise<{ deleted: number; token: WriteToken }> {
    const c = this.coll(name);
    checkIds(ids, true);
    const { key, hash, expectLeader } = checkWrite(opts, () => requestHash('delete', c.spec.name, ids));
    const parts = idsByShard(ids, c.spec.shards);
    if (expectLeader) this.checkLeads(c, parts.keys());
    if (parts.size > 1) {
      const { count, token } = await this.transact(c, new Map([...parts].map(([s, g]) => [s, { type: 'delete', ids: g }])), key, hash, opts.signal);
      return { deleted: count, token };
    }
    const { count, token } = await writeByShard(parts, (s, g) =>
      this.onLeader(
        c,
        s,
        opts.signal,
        (rep) => ClusterDatabase.bounded(rep.delete(g, key, hash), opts.signal),
        expectLeader ? null : (node) => ClusterDatabase.bounded(this.opts.peers.delete(node, c.spec.name, s, g, key, hash), opts.signal),
      ),
    );
    return { deleted: count, token };
  }

  protected specOf(name: string): CollectionSpec {
    return this.coll(name).spec;
  }

  /**
   * A batch across shards, all or nothing (./transaction.ts), driven here: each call goes to its
   * shard's leader as a write does (this node's replica, else the node service, following leader
   * changes). With an idempotency key a retry of a batch running here joins it; one committed
   * before is answered by each participant from the key it remembers (its prepare logs nothing),
   * and one in doubt holds its ids, so a new attempt waits for its outcome: applied once.
   */
  private transact(c: ClusterCollection, parts: Map<number, TxnPart>, key: string, hash: Buffer | undefined, signal: AbortSignal | undefined): Promise<TxnAnswer> {
    const ports = new Map([...parts.keys()].map((s) => [s, this.txnPort(c, s, signal)]));
    return runKeyed(c.txns, key, hash, () => runTransaction(parts, (s) => ports.get(s)!, key, hash, signal, this.opts.txnTimeoutMs ?? txnTimeoutMsDefault));
  }

  /**
   * Shard s of c as the transaction driver sees it: each call on the shard's leader (onLeader),
   * bounded by the caller's deadline; the part's settled answer comes with the decision (the
   * coordinator) or the resolution (the others). `due`: this node's replica's, when it leads.
   */
  private txnPort(c: ClusterCollection, s: number, signal: AbortSignal | undefined): TxnShard {
    const name = c.spec.name;
    const peers = this.opts.peers;
    const on = <T>(local: (r: ReplicaPort) => Promise<T>, remote: (node: NodeId) => Promise<T>, forward = false): Promise<T> =>
      ClusterDatabase.bounded(this.onLeader(c, s, signal, local, remote, forward), signal);
    // A committed part's answer is missing when the call was asked again of a new leader after the part settled.
    const answer = (outcome: TxnOutcome, r: WriteResult | undefined): WriteResult | undefined => {
      if (r === undefined && outcome === 'commit') {
        throw new QuiverError('UNAVAILABLE', `the batch committed; shard ${shardKey(name, s)}'s answer was lost to a change of leader: retry it with the same idempotency key`);
      }
      return r;
    };
    /** A part as a prepare entry's body, as TxnPrepare and TxnCommit carry it. */
    const bodyOf = (p: PreparedPart): Buffer => Buffer.concat(encodePrepared(p, c.spec.dim));
    const parts = new Map<string, { promise: Promise<WriteResult | undefined>; settle: (p: Promise<WriteResult | undefined>) => void }>();
    const partOf = (txn: string): { promise: Promise<WriteResult | undefined>; settle: (p: Promise<WriteResult | undefined>) => void } => {
      let p = parts.get(txn);
      if (!p) {
        let settle!: (v: Promise<WriteResult | undefined>) => void;
        const promise = new Promise<WriteResult | undefined>((resolve) => (settle = resolve));
        parts.set(txn, (p = { promise, settle }));
      }
      return p;
    };
    return {
      prepare: (txn, coordinator, part, key, hash) =>
        on(
          (r) => r.prepare(txn, coordinator, part, key, hash),
          (node) => peers.txnPrepare(node, name, s, bodyOf({ txn, coordinator, part, hash }), key),
          true,
        ),
      decide: async (txn, outcome, own) => {
        const r = await on(
          (rep) => decideSettled(rep, txn, outcome, own),
          (node) => (own ? peers.txnCommit(node, name, s, bodyOf({ txn, coordinator: s, part: own.part, hash: own.hash }), own.key) : peers.txnDecide(node, name, s, txn, outcome)),
        );
        const part = Promise.resolve(r.part).then((p) => answer(r.outcome, p));
        part.catch(() => undefined); // the driver awaits it
        return { outcome: r.outcome, part };
      },
      decisionOf: (txn, now) =>
        on(
          (r) => r.decisionOf(txn, now),
          (node) => peers.txnDecisionOf(node, name, s, txn),
        ),
      resolve: (txn, outcome) => {
        const settled = on(
          (r) => resolveSettled(r, txn, outcome),
          (node) => peers.txnResolve(node, name, s, txn, outcome),
        );
        const part = settled.then((p) => answer(outcome, p));
        part.catch(() => undefined); // the driver awaits it through settled()
        partOf(txn).settle(part);
      },
      settled: (txn) => partOf(txn).promise as Promise<WriteResult>,
      due: (now) => {
        const r = c.replicas.get(s)?.port;
        return r ? r.due(now) : [];
      },
    };
  }

  /** The prepares in doubt past the timeout on the shards this node leads, resolved by asking their coordinators (a timer). */
  private resolveDue(): void {
    if (this.closed) return;
    const now = Date.now();
    for (const c of this.collections.values()) {
      if (!this.open(c).some(([, r]) => r.shard.status().inDoubt > 0)) continue;
      const ports = c.maps.map((_, s) => this.txnPort(c, s, AbortSignal.timeout(leaderWaitMs)));
      resolveInDoubt(ports, now).catch((e: Error) => this.log.warn('resolving batches in doubt failed', { collection: c.spec.name, err: e.message }));
    }
  }

  /**
   * Each shard's part goes to its leader, which resolves and checks it (resolveChange) as it logs
   * it. Parts on different leaders are checked each by its own: one can be refused (a payload
   * over payloadBytesMax after the merge) while another is applied, as any part of a write split
   * across shards can fail alone.
   */
  protected async changeChecked(name: string, ch: ShardChange, opts: WriteOptions): Promise<{ count: number; token: WriteToken }> {
    const c = this.coll(name);
    const { key, hash, expectLeader } = checkWrite(opts, () => changeHash(ch, c.spec.name));
    const parts = changeParts(ch, c.spec);
    if (expectLeader) this.checkLeads(c, parts.keys());
    return writeByShard(parts, (s, part) =>
      this.onLeader(
        c,
        s,
        opts.signal,
        (rep) => ClusterDatabase.bounded(this.leaderChange(c.spec.name, s, rep, part, key, hash), opts.signal),
        expectLeader ? null : (node) => ClusterDatabase.bounded(this.opts.peers.change(node, c.spec.name, s, part, key, hash), opts.signal),
      ),
    );
  }

  /**
   * On the shard's leader: a part by filter waits until the replica has applied everything
   * committed when it arrived (as a linearizable read: it sees every write acknowledged before),
   * then is resolved to ids and appended in one turn.
   */
  private async leaderChange(name: string, s: number, rep: ReplicaPort, part: ShardChange, key: string, hash: Buffer | undefined): Promise<WriteResult> {
    if (byFilter(part)) await this.readReplica(name, s, checkReadLevel({ consistency: 'linearizable' }, s + 1), false);
    return rep.write(resolveChange(rep.shard, part, key, hash));
  }

  // ---------------------------------------------------------------- the node service (a peer asks for shards held here)

  private ledReplica(name: string, s: number): Promise<ReplicaPort> {
    const c = this.coll(name);
    if (!Number.isInteger(s) || s < 0 || s >= c.spec.shards) throw new QuiverError('INVALID_ARGUMENT', `collection "${name}" has shards 0..${c.spec.shards - 1}`);
    const r = c.replicas.get(s);
    if (!r) throw new QuiverError('UNAVAILABLE', `this node holds no replica of shard ${name}/${s}`);
    return r.opening;
  }

  /**
   * This node's replica of shard s, once it may answer a read at the level asked
   * (src/cluster/read-level.ts). A linearizable read waits for this replica to lead and be ready
   * (leaderWaitMs); a session read waits for the token's entry (sessionWaitMs on a follower,
   * leaderWaitMs on a leader); a read this replica cannot serve at its level (a follower too stale
   * for `bounded`, or still behind the token) is UNAVAILABLE, and the asking node goes to the
   * leader. A token whose entry was lost is FAILED_PRECONDITION. `asRead`: counted as a read in
   * the metrics (a filtered write waits here too, and is no read).
   */
  private async readReplica(name: string, s: number, read: ReadLevel, asRead = true): Promise<ReplicaPort> {
    const r = await this.ledReplica(name, s);
    const position = read.consistency === 'session' ? read.token.get(s) : undefined;
    const arrived = Date.now();
    let target = -1;
    for (;;) {
      const st = r.readState(this.lease);
      if (target < 0) target = linearizableTarget(st);
      const v = readVerdict(read.consistency, st, { position, maxLagMs: read.maxLagMs, target });
      if (v.kind === 'serve') {
        if (asRead) this.opts.observer?.shardRead?.(name, s, read.consistency, st.role);
        return r;
      }
      if (v.kind === 'lost') throw new QuiverError('FAILED_PRECONDITION', `shard ${name}/${s}: ${v.why}`);
      const waitMs = v.kind === 'elsewhere' ? 0 : read.consistency === 'linearizable' || st.leading ? leaderWaitMs : sessionWaitMs;
      if (Date.now() - arrived >= waitMs) {
        throw new QuiverError('UNAVAILABLE', `shard ${name}/${s}: the replica on ${this.self} cannot answer a ${read.consistency} read: ${v.why}`);
      }
      // Rare (just after an election, or a follower a few ms behind a token): a short wait.
      await new Promise((res) => setTimeout(res, 2));
    }
  }

  /** A forwarded write: the replica here takes it if it leads (it refuses with NOT_LEADER if not). */
  /** An upsert part another node sent here, checked as the node it was sent to checked it. */
  private static forwardedColumns(c: ClusterCollection, op: UpsertOp): UpsertOp {
    return checkColumns({ ids: op.ids, vectors: op.vectors, payloads: op.payloadJson.map((p) => (p === '' ? undefined : JSON.parse(p))) }, c.spec.dim, c.spec.metric);
  }

  async shardUpsert(name: string, s: number, op: UpsertOp, key: string, hash: Buffer | undefined, signal?: AbortSignal): Promise<WriteResult> {
    const c = this.coll(name);
    return ClusterDatabase.bounded((await this.ledReplica(name, s)).upsert(ClusterDatabase.forwardedColumns(c, op), key, hash), signal);
  }

  async shardDelete(name: string, s: number, ids: string[], key: string, hash: Buffer | undefined, signal?: AbortSignal): Promise<WriteResult> {
    checkIds(ids, true);
    return ClusterDatabase.bounded((await this.ledReplica(name, s)).delete(ids, key, hash), signal);
  }

  /** A participant's part of a batch across shards, from the node driving it: checked as a forwarded write, logged by the replica here as a prepare (it must lead). */
  async txnPrepare(name: string, s: number, body: Uint8Array, key: string, signal?: AbortSignal): Promise<void> {
    const { prepared: p, part } = this.preparedPart(name, body);
    await ClusterDatabase.bounded((await this.ledReplica(name, s)).prepare(p.txn, p.coordinator, part, key, p.hash), signal);
  }

  /** A part of a batch across shards sent by the node driving it (a prepare entry's body), checked as a forwarded write. */
  private preparedPart(name: string, body: Uint8Array): { prepared: PreparedPart; part: TxnPart } {
    const c = this.coll(name);
    let p: PreparedPart;
    try {
      p = decodePrepare(body, c.spec.dim);
    } catch (e) {
      throw new QuiverError('INVALID_ARGUMENT', `prepare body: ${(e as Error).message}`);
    }
    if (p.coordinator >= c.spec.shards) throw new QuiverError('INVALID_ARGUMENT', `prepare body: coordinator shard ${p.coordinator} of ${c.spec.shards}`);
    const part: TxnPart =
      p.part.type === 'upsert'
        ? { type: 'upsert', op: ClusterDatabase.forwardedColumns(c, p.part.op) }
        : (checkIds(p.part.ids, true), p.part);
    return { prepared: p, part };
  }

  /** Coordinator (the replica here must lead): logs the outcome of `txn` unless one is; answers it with this shard's part settled (a part it prepared, in a log written before TxnCommit). */
  async txnDecide(name: string, s: number, txn: string, outcome: TxnOutcome, signal?: AbortSignal): Promise<{ outcome: TxnOutcome; part: WriteResult | undefined }> {
    ClusterDatabase.checkTxn(txn);
    return ClusterDatabase.bounded(decideSettled(await this.ledReplica(name, s), txn, outcome, undefined), signal);
  }

  /**
   * Coordinator (the replica here must lead): logs the commit carrying `body`, this shard's part as a
   * prepare entry's body (checked as a forwarded write), unless an outcome is logged; answers the
   * outcome logged with this shard's part settled.
   */
  async txnCommit(name: string, s: number, body: Uint8Array, key: string, signal?: AbortSignal): Promise<{ outcome: TxnOutcome; part: WriteResult | undefined }> {
    const { prepared: p, part } = this.preparedPart(name, body);
    if (p.coordinator !== s) throw new QuiverError('INVALID_ARGUMENT', `the coordinator's part names coordinator shard ${p.coordinator}, not ${s}`);
    return ClusterDatabase.bounded(decideSettled(await this.ledReplica(name, s), p.txn, 'commit', { part, key, hash: p.hash }), signal);
  }

  /** Coordinator, asked by a participant's leader: the outcome of `txn` (undefined while its driver may still decide). */
  async txnDecisionOf(name: string, s: number, txn: string, signal?: AbortSignal): Promise<TxnOutcome | undefined> {
    ClusterDatabase.checkTxn(txn);
    return ClusterDatabase.bounded((await this.ledReplica(name, s)).decisionOf(txn, Date.now()), signal);
  }

  /** Participant: logs its resolution of `txn` and answers once its part is settled (undefined: no part of it here). */
  async txnResolve(name: string, s: number, txn: string, outcome: TxnOutcome, signal?: AbortSignal): Promise<WriteResult | undefined> {
    ClusterDatabase.checkTxn(txn);
    return ClusterDatabase.bounded(resolveSettled(await this.ledReplica(name, s), txn, outcome), signal);
  }

  private static checkTxn(txn: string): void {
    if (!new RegExp(`^[0-9a-f]{${2 * txnIdBytes}}$`).test(txn)) throw new QuiverError('INVALID_ARGUMENT', `a transaction id is ${2 * txnIdBytes} lowercase hex digits`);
  }

  /** A forwarded part of a write of the point API, checked as it was where the client sent it. */
  async shardChange(name: string, s: number, part: ShardChange, key: string, hash: Buffer | undefined, signal?: AbortSignal): Promise<WriteResult> {
    const c = this.coll(name);
    const checked: ShardChange =
      part.type === 'deleteWhere'
        ? (compileFilter(part.filter), part)
        : part.type === 'payload'
          ? checkPayloadUpdate({ ids: part.ids, filter: part.filter, ...part.change })
          : { type: 'vectors', op: checkColumns({ ids: part.op.ids, vectors: part.op.vectors, payloads: part.op.ids.map(() => undefined) }, c.spec.dim, c.spec.metric) };
    return ClusterDatabase.bounded(this.leaderChange(name, s, await this.ledReplica(name, s), checked, key, hash), signal);
  }

  /** A part of a search: the shards asked, from their replicas here. */
  async shardSearch(name: string, shards: number[], req: SearchRequest): Promise<SearchHit[][]> {
    const c = this.coll(name);
    const { vectors, fetch, nq, opts, read } = prepareSearch(c.spec, req);
    const held = await Promise.all(shards.map((s) => this.readReplica(name, s, read)));
    let points = 0;
    let idBytes = 0;
    let payloadBytes = 0;
    for (const r of held) {
      points += r.shard.count;
      idBytes = Math.max(idBytes, r.shard.largestIdBytes);
      payloadBytes = Math.max(payloadBytes, r.shard.largestPayloadBytes);
    }
    checkAnswerBytes(nq * Math.min(fetch, points), idBytes + (opts.withVectors ? c.spec.dim * 4 : 0) + (opts.withPayload ? payloadBytes : 0), 'the answer');
    // The asking node cuts the page (offset, k) from every part's `fetch` nearest.
    return mergeHits(await Promise.all(held.map((r) => r.shard.search(vectors, fetch, opts))), nq, fetch, 0, opts.maxDistance);
  }

  async shardGet(name: string, shards: number[], ids: string[], withVectors: boolean, withPayload: boolean, readOpts: ReadOptions): Promise<StoredPoint[]> {
    const c = this.coll(name);
    const read = checkReadLevel(readOpts, c.spec.shards);
    const held = new Map<number, ReplicaPort>();
    for (const s of shards) held.set(s, await this.readReplica(name, s, read));
    const out: StoredPoint[] = [];
    for (const [s, g] of idsByShard(ids, c.spec.shards)) {
      const r = held.get(s);
      if (r) out.push(...(await r.shard.get(g, withVectors, withPayload)));
    }
    return out;
  }

  async shardCount(name: string, shards: number[], opts: CountOptions): Promise<number> {
    const { compiled, read } = prepareCount(this.coll(name).spec, opts);
    let n = 0;
    for (const s of shards) {
      const shard = (await this.readReplica(name, s, read)).shard;
      n += compiled ? shard.countWhere(compiled) : shard.count;
    }
    return n;
  }

  /** A part of a scroll: the first limit + 1 points of the shards asked, from their replicas here. */
  async shardScroll(name: string, shards: number[], req: ScrollRequest): Promise<StoredPoint[]> {
    const c = this.coll(name);
    const p = prepareScroll(c.spec, req);
    const held = await Promise.all(shards.map((s) => this.readReplica(name, s, p.read)));
    let idBytes = 0;
    let payloadBytes = 0;
    for (const r of held) {
      idBytes = Math.max(idBytes, r.shard.largestIdBytes);
      payloadBytes = Math.max(payloadBytes, r.shard.largestPayloadBytes);
    }
    checkAnswerBytes(p.limit, idBytes + (p.withVectors ? c.spec.dim * 4 : 0) + (p.withPayload ? payloadBytes : 0), 'the page');
    const parts = await Promise.all(held.map((r) => r.shard.scroll(p.after, p.limit + 1, p.predicate, p.withVectors, p.withPayload)));
    return mergeScroll(parts, p.limit + 1).points;
  }

  // ---------------------------------------------------------------- reads

  /** Shards grouped by the node that leads them (waits for a leader, up to leaderWaitMs). */
  private async byLeader(c: ClusterCollection, shards: Iterable<number>): Promise<Map<NodeId, number[]>> {
    const out = new Map<NodeId, number[]>();
    for (const s of shards) {
      let leader = c.maps[s]?.phase === 'active' ? c.maps[s]!.leader : null;
      const deadline = Date.now() + leaderWaitMs;
      while (!leader) {
        const left = deadline - Date.now();
        if (left <= 0) throw new QuiverError('UNAVAILABLE', `shard ${c.spec.name}/${s} has no leader`);
        await this.nextMap(shardKey(c.spec.name, s), Math.min(left, 250));
        leader = c.maps[s]?.phase === 'active' ? c.maps[s]!.leader : null;
      }
      const g = out.get(leader);
      if (g) g.push(s);
      else out.set(leader, [s]);
    }
    return out;
  }

  /**
   * Shards grouped by the node to read each from: its leader for a linearizable read; otherwise
   * one of its replicas (voters on live nodes) drawn at random, so that reads spread over the
   * replicas; its leader when the map names none live.
   */
  private async readPlan(c: ClusterCollection, shards: Iterable<number>, read: ReadLevel): Promise<Map<NodeId, number[]>> {
    if (read.consistency === 'linearizable') return this.byLeader(c, shards);
    const out = new Map<NodeId, number[]>();
    const toLeader: number[] = [];
    for (const s of shards) {
      const live = (c.maps[s]?.replicas ?? []).filter((n) => this.nodes[n] !== undefined);
      if (live.length === 0) {
        toLeader.push(s);
        continue;
      }
      const node = live[Math.floor(Math.random() * live.length)];
      const g = out.get(node);
      if (g) g.push(s);
      else out.set(node, [s]);
    }
    for (const [node, ss] of await this.byLeader(c, toLeader)) out.set(node, [...(out.get(node) ?? []), ...ss]);
    return out;
  }

  /**
   * A read's parts, one per node of the plan. A part a replica could not answer at the level asked
   * (UNAVAILABLE: too stale, behind the token, or its node did not answer within
   * replicaPartDeadlineMs: paused, or cut off, and still registered) is asked again of the shards'
   * leaders, unless it was asked of a leader already.
   */
  private async readParts<T>(c: ClusterCollection, shards: number[], read: ReadLevel, ask: (node: NodeId, shards: number[], deadlineMs?: number) => Promise<T>): Promise<T[]> {
    const parts = await Promise.all(
      [...(await this.readPlan(c, shards, read))].map(async ([node, ss]): Promise<T[]> => {
        try {
          const leads = ss.every((s) => c.maps[s]?.leader === node);
          return [await ask(node, ss, read.consistency === 'linearizable' || leads ? undefined : replicaPartDeadlineMs)];
        } catch (e) {
          const code = (e as { code?: unknown } | null)?.code;
          if (read.consistency === 'linearizable' || (e instanceof QuiverError && code !== 'UNAVAILABLE' && code !== 'DEADLINE_EXCEEDED')) throw e;
          const again = await this.byLeader(c, ss);
          if (again.has(node)) throw e;
          return Promise.all([...again].map(([n, s2]) => ask(n, s2)));
        }
      }),
    );
    return parts.flat();
  }

  async get(name: string, ids: string[], opts: { withVectors?: boolean; withPayload?: boolean } & ReadOptions = {}): Promise<Point[]> {
    const c = this.coll(name);
    checkIds(ids, false);
    const o = isPlainObject(opts) ? opts : {};
    const withVectors = checkOptBool(o.withVectors, 'withVectors') ?? false;
    const withPayload = checkOptBool(o.withPayload, 'withPayload') ?? true;
    const read = checkReadLevel(o, c.spec.shards);
    const wireRead = readOptionsOf(read);
    const groups = idsByShard(ids, c.spec.shards);
    const found = new Map<string, Point>();
    const parts = await this.readParts(c, [...groups.keys()], read, (node, shards, deadlineMs) => {
      const asked = shards.flatMap((s) => groups.get(s)!);
      return node === this.self
        ? this.shardGet(c.spec.name, shards, asked, withVectors, withPayload, wireRead)
        : this.opts.peers.get(node, c.spec.name, shards, asked, withVectors, withPayload, wireRead, deadlineMs);
    });
    for (const got of parts) for (const p of got) found.set(p.id, p);
    const out: Point[] = [];
    for (const id of ids) {
      const p = found.get(id);
      if (p) out.push(p);
    }
    return out;
  }

  async count(name: string, opts: CountOptions = {}): Promise<number> {
    const c = this.coll(name);
    const { filter, read } = prepareCount(c.spec, opts);
    const part: CountOptions = { ...readOptionsOf(read), filter };
    const parts = await this.readParts(c, this.allShards(c), read, (node, shards, deadlineMs) =>
      node === this.self ? this.shardCount(c.spec.name, shards, part) : this.opts.peers.count(node, c.spec.name, shards, part, deadlineMs),
    );
    return parts.reduce((a, b) => a + b, 0);
  }

  /** A page in id order: every shard's part (its first limit + 1 after the cursor) merged. */
  async scroll(name: string, req: ScrollRequest): Promise<ScrollPage> {
    const c = this.coll(name);
    const p = prepareScroll(c.spec, req);
    const part: ScrollRequest = { ...req, ...readOptionsOf(p.read) };
    const parts = await this.readParts(c, this.allShards(c), p.read, (node, shards, deadlineMs) =>
      node === this.self ? this.shardScroll(c.spec.name, shards, part) : this.opts.peers.scroll(node, c.spec.name, shards, part, deadlineMs),
    );
    return mergeScroll(parts, p.limit);
  }

  recommend(name: string, req: RecommendRequest): Promise<SearchHit[]> {
    return recommend(this, this.coll(name).spec, req);
  }

  private allShards(c: ClusterCollection): number[] {
    return Array.from({ length: c.spec.shards }, (_, s) => s);
  }

  async search(name: string, req: SearchRequest): Promise<SearchHit[][]> {
    const c = this.coll(name);
    const { vectors, k, offset, nq, opts, read } = prepareSearch(c.spec, req);
    const parts = await this.readParts(c, this.allShards(c), read, (node, shards, deadlineMs) =>
      node === this.self ? this.shardSearch(c.spec.name, shards, req) : this.opts.peers.search(node, c.spec.name, shards, { ...req, vectors, ...readOptionsOf(read) }, deadlineMs),
    );
    return mergeHits(parts, nq, k, offset, opts.maxDistance);
  }

  // ---------------------------------------------------------------- status

  /** Each follower of a replica that leads, as it sees them. */
  private static followers(st: ReturnType<ReplicaPort['status']>): FollowerLag[] {
    return Object.entries(st.peers).map(([node, p]) => {
      const lagEntries = Math.max(0, st.durableLsn - p.match);
      return { node, lagEntries, lagMs: lagEntries > 0 ? Math.round(p.sinceAckMs) : 0 };
    });
  }

  /** This node's replica of shard s of c, as it reports it to the others (without a digest). */
  private report(c: ClusterCollection, s: number, r: ReplicaPort): ReplicaReport {
    const st = r.status();
    const { role, epoch, durableLsn, commitLsn, appliedLsn } = st;
    return { collection: c.spec.name, shard: s, node: this.self, role, epoch, durableLsn, commitLsn, appliedLsn, digest: '', followers: ClusterDatabase.followers(st) };
  }

  /**
   * The nodes, and the shards `include` picks (by collection, then shard) with their replicas from
   * the maps: each replica's role and log positions from its node's report, its lag from the
   * leader's. `asked`: the replicas' nodes were asked, so one without a report is "unreachable";
   * else a replica without one has the role its map gives it.
   */
  private view(reports: ReplicaReport[], asked: boolean, include: (c: ClusterCollection, s: number) => boolean): ClusterStatus {
    const reported = new Map<ShardKey, Map<NodeId, ReplicaReport>>();
    for (const r of reports) {
      const key = shardKey(r.collection, r.shard);
      reported.set(key, (reported.get(key) ?? new Map<NodeId, ReplicaReport>()).set(r.node, r));
    }
    const shards: ShardStatus[] = [];
    const named = new Set<NodeId>();
    for (const c of [...this.collections.values()].sort((a, b) => (a.spec.name < b.spec.name ? -1 : 1))) {
      c.maps.forEach((map, s) => {
        if (!include(c, s)) return;
        const here = reported.get(shardKey(c.spec.name, s));
        const leader = map?.leader ?? null;
        const lags = new Map((leader !== null ? here?.get(leader)?.followers ?? [] : []).map((f) => [f.node, f]));
        // The learner (a replica being built, not yet voting) after the voters, as in shards().
        const replicas = (map ? members(map) : []).map((node): ReplicaStatus => {
          named.add(node);
          const r = here?.get(node);
          const lag = node === leader && r ? { lagEntries: 0, lagMs: 0 } : lags.get(node);
          const role = node === map?.learner?.node ? 'learner' : r?.role ?? (asked ? 'unreachable' : node === leader ? 'leader' : 'follower');
          return { node, role, durableLsn: r?.durableLsn, commitLsn: r?.commitLsn, appliedLsn: r?.appliedLsn, lagEntries: lag?.lagEntries, lagMs: lag?.lagMs };
        });
        const own = c.replicas.get(s)?.port?.shard.status() ?? { epoch: 0, lastLsn: 0, appliedLsn: 0, snapshotLsn: 0, points: 0, walBytes: 0, inDoubt: 0, inDoubtOldestMs: 0 };
        shards.push({ collection: c.spec.name, shard: s, ...own, leader: leader ?? '', epoch: map?.epoch ?? own.epoch, phase: map?.phase ?? '', replicas });
      });
    }
    // Live nodes, and the nodes the maps name that are not live now.
    const nodes = [...new Set([...Object.keys(this.nodes), ...named])].sort().map((id) => {
      const n = this.nodes[id];
      return n ? { id, grpc: n.grpc, http: n.http, zone: n.zone ?? undefined, alive: true } : { id, alive: false };
    });
    return { mode: 'cluster', nodeId: this.self, nodes, shards };
  }

  failovers(): Failover[] {
    return [...this.failoverLog];
  }

  /** This node and the shards it holds a replica of, as it knows them without asking the others. */
  status(): ClusterStatus {
    const local = [...this.collections.values()].flatMap((c) => this.open(c).map(([s, r]) => this.report(c, s, r)));
    return this.view(local, false, (c, s) => c.replicas.get(s)?.port !== undefined);
  }

  /** Every node and every shard of every collection; unless leadersOnly, each replica's log positions and lag from the nodes holding them. */
  async clusterStatus(opts: { leadersOnly?: boolean } = {}): Promise<ClusterStatus> {
    this.usable();
    const leadersOnly = checkOptBool(isPlainObject(opts) ? opts.leadersOnly : undefined, 'leadersOnly') ?? false;
    return this.view(leadersOnly ? [] : await this.gather(undefined, false), !leadersOnly, () => true);
  }

  /** The replicas of a collection's shards ('' or undefined: of every collection) held by this node. */
  async localReplicas(name: string | undefined, withDigest: boolean): Promise<ReplicaReport[]> {
    this.usable();
    const cols = name ? [this.coll(name)] : [...this.collections.values()];
    return Promise.all(cols.flatMap((c) => this.open(c).map(async ([s, r]) => ({ ...this.report(c, s, r), digest: withDigest ? await r.digest() : '' }))));
  }

  /** The reports of the replicas of a collection's shards (undefined: of every collection), from every node holding one; a node that does not answer sends none. */
  private async gather(name: string | undefined, withDigest: boolean): Promise<ReplicaReport[]> {
    const holders = new Set<NodeId>();
    for (const c of name === undefined ? this.collections.values() : [this.coll(name)]) for (const m of c.maps) for (const n of m ? members(m) : []) holders.add(n);
    const reports = await Promise.all(
      [...holders].map((node) => (node === this.self ? this.localReplicas(name, withDigest) : this.opts.peers.replicaStatus(node, name ?? '', withDigest)).catch(() => [])),
    );
    return reports.flat();
  }

  async shards(name: string, opts: { withDigest?: boolean } = {}): Promise<ShardReplicas[]> {
    const c = this.coll(name);
    const all = await this.gather(c.spec.name, opts.withDigest !== false);
    return c.maps.map((map, s) => {
      const here = all.filter((r) => r.shard === s);
      const leaderDurable = here.find((r) => r.node === map?.leader)?.durableLsn ?? 0;
      return {
        shard: s,
        epoch: map?.epoch ?? 0,
        leader: map?.leader ?? null,
        // The learner (a replica being built, not yet voting) after the voters.
        replicas: (map ? members(map) : []).map((node) => {
          const r = here.find((x) => x.node === node);
          if (!r) return { node, role: 'unreachable', epoch: 0, durableLsn: 0, commitLsn: 0, appliedLsn: 0, lagEntries: leaderDurable, digest: '' };
          return { node, role: node === map?.learner?.node ? 'learner' : r.role, epoch: r.epoch, durableLsn: r.durableLsn, commitLsn: r.commitLsn, appliedLsn: r.appliedLsn, lagEntries: Math.max(0, leaderDurable - r.durableLsn), digest: r.digest };
        }),
      };
    });
  }

  /** Each replica held here, for the metrics: its log positions and, on a leader, each follower's lag. */
  replication(): { collection: string; shard: number; role: string; commitLsn: number; appliedLsn: number; followers: { node: NodeId; lagEntries: number; lagSeconds: number }[] }[] {
    const out = [];
    for (const c of this.collections.values()) {
      for (const [s, r] of this.open(c)) {
        const st = r.status();
        const followers = ClusterDatabase.followers(st).map((f) => ({ node: f.node, lagEntries: f.lagEntries, lagSeconds: f.lagMs / 1000 }));
        out.push({ collection: c.spec.name, shard: s, role: st.role, commitLsn: st.commitLsn, appliedLsn: st.appliedLsn, followers });
      }
    }
    return out;
  }

  /** State digest of this node's replica of a shard. */
  async digest(name: string, s: number): Promise<string> {
    return (await this.ledReplica(name, s)).digest();
  }

  async snapshot(): Promise<void> {
    this.usable();
    await Promise.all([...this.collections.values()].flatMap((c) => this.open(c).map(([, r]) => r.shard.snapshot())));
  }

  /**
   * The shards this node leads that another live replica could take over: what a drain waits for.
   * A shard whose other replicas are all down has no one to hand over to.
   */
  leadershipsToHandOver(): ShardKey[] {
    const out: ShardKey[] = [];
    for (const c of this.collections.values()) {
      c.maps.forEach((m, s) => {
        if (m && m.leader === this.self && m.phase !== 'electing' && m.replicas.some((n) => n !== this.self && n in this.nodes)) out.push(shardKey(c.spec.name, s));
      });
    }
    return out;
  }

  async drain(opts: DrainOptions = {}): Promise<ShardKey[]> {
    this.usable();
    if (opts.undo) {
      this.opts.coordinator.setDraining(false);
      return [];
    }
    this.opts.coordinator.setDraining(true);
    for (;;) {
      const left = this.leadershipsToHandOver();
      opts.onProgress?.(left);
      if (left.length === 0 || opts.signal?.aborted) return left;
      // A map change of any of them; a live-node change shows at the next look (bounded wait).
      await Promise.race(left.map((k) => this.nextMap(k, 250, opts.signal)));
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.resolveTimer);
    for (const list of this.mapWaiters.values()) for (const wake of list) wake();
    this.mapWaiters.clear();
    const all = [...this.collections.values()].flatMap((c) => [...c.replicas.values()]);
    await Promise.all([...all.map(async (slot) => (await slot.opening.catch(() => null))?.close()), ...this.removing.values()]);
  }
}
