/**
 * The shard engine: one shard's WAL, point store and index, and the order in which they change.
 *
 *   write(batch)                                   (leader; followers receive WAL bytes instead)
 *     |  encode body, assign LSN = last + 1 (call order = LSN order)
 *     v
 *   Wal.append ---> group commit: writev + fdatasync shared by concurrent appends
 *     |                    (an fsync error stops the process; it is never retried)
 *     v  durable
 *   apply chain (one at a time, LSN order; holds the shard lock exclusively)
 *     |  idempotency key seen?  -> yes: change nothing, reuse the first answer
 *     |  (a key stands for one request, by its hash: checkKey refuses the key with another request
 *     |   before anything is written, so a key's second entry is always a retry of its first)
 *     |  index.add / index.remove (native, async)  -> then point store (ids, payloads; vectors
 *     |  only where the index does not keep them: indexKeepsVectors, one copy either way)
 *     |  appliedLsn = LSN        (visibility = applied)
 *     v
 *   ack {answer, lsn}  ---> token {shard: lsn}
 *
 *   snapshot: shared lock (searches go on, applies wait) -> capture at appliedLsn: the index's
 *             bytes (serialize: a copy at memory speed), the store's tables (vector chunks copy
 *             on write), the keys (views of their records, encoded once when remembered:
 *             key-memory.ts) -> unlock -> encode the store in slices, tmp dir, fsync, rename -> drop
 *             older snapshots and WAL segments wholly below it (renamed, then freed gradually).
 *             Applies and searches wait only for the capture (a few ms for 20,000 x 128 HNSW
 *             points; `quiver bench snapshot`).
 *   recovery: newest valid snapshot (older ones if it is damaged) -> WAL replay from its LSN + 1
 *             through the same apply code -> epoch-start entry (leader)
 *
 * A batch is one entry: it is durable whole or not at all (CRC over the entry), and applied under
 * the lock, so readers never see part of it.
 */
import { promises as fsp } from 'fs';
import { QuiverError } from '../errors';
import { FlatIndex, HnswIndex, IndexKind, IvfPqIndex, LABEL_NONE, Metric, VectorIndex, deserializeIndex } from '../native';
import { EntryType, Wal } from '../wal';
import type { WalOptions } from '../wal';
import { cloneJson, stringifyJson } from '../common/json';
import { log } from '../common/log';
import { payloadBytesMax } from '../common/limits';
import {
  PayloadOp,
  PreparedPart,
  TxnOutcome,
  UpsertOp,
  changedPayload,
  decodeDelete,
  decodeOutcome,
  decodePayload,
  decodePrepare,
  decodeUpsert,
  encodeDelete,
  encodeOutcome,
  encodePayload,
  encodePrepared,
  encodeUpsert,
  hashInBody,
  requestHash,
} from './codec';
import { RwLock } from './lock';
import { KeyMemory } from './key-memory';
import { TxnSnapshot, listSnapshots, readSnapshot, removeSnapshot, removeSnapshotLeftovers, writeSnapshot } from './snapshot';
import { Payload, PointStore } from './store';
import { FilterPlan, IndexQuery, PayloadFilter, PayloadIndexSpec, PayloadIndexes } from './payload-index';
import { TxnAction, TxnEvent, TxnState, inDoubtOf, initTxn, stepTxn } from './txn';

export type ShardIndexSpec =
  | { type: 'flat' }
  | { type: 'hnsw'; m?: number; efConstruction?: number; efSearch?: number }
  | { type: 'ivfpq'; nlist: number; m: number; refine?: number; nprobe?: number };

export interface ShardObserver {
  walAppend?(bytes: number): void;
  fsync?(seconds: number): void;
  snapshot?(seconds: number): void;
  filterPlan?(plan: FilterPlan): void;
}

export interface ShardOptions {
  walDir: string;
  snapshotDir: string;
  dim: number;
  metric: Metric;
  index: ShardIndexSpec;
  segmentBytes?: number;
  /** Bytes of the newest WAL entries kept in memory for reads (Wal's tailBytes). Default 0: none. */
  walTailBytes?: number;
  /** Snapshot after this many ms if anything was applied since the last one (0 = never on a timer). */
  snapshotIntervalMs?: number;
  /** Snapshot once the WAL grew by this many bytes since the last snapshot (0 = never for size). */
  snapshotWalBytes?: number;
  /** Idempotency keys remembered (oldest forgotten first), and transaction decisions. Default 100,000. */
  keysMax?: number;
  /** The shard's number in its collection (transactions name their coordinator by it). Default 0. */
  shard?: number;
  /** How long a prepare stays in doubt before its coordinator is asked (txn.ts). Default txnTimeoutMsDefault. */
  txnTimeoutMs?: number;
  /**
   * The lowest LSN the WAL must keep besides what the newest snapshot covers (replication: the
   * lowest LSN a follower still needs). Segments wholly below min(snapshot LSN + 1, this) go.
   */
  walRetainFromLsn?: () => number;
  /**
   * A replica (src/cluster/replica-host.ts), leading or following: appends only what receive() and
   * appendEntry() are given, applies only up to applyCommitted()'s LSN, and appends no epoch-start
   * entry at open. Default false (standalone: each write is applied once durable).
   */
  follower?: boolean;
  /**
   * The payload indexes to build, read at open (the collection's list as it is then: a replica
   * reopened after a snapshot install gets the current one); setPayloadIndexes changes them.
   */
  payloadIndexes?: () => readonly PayloadIndexSpec[];
  /** The shard existed before (its collection is in the catalog): a missing WAL is DATA_LOSS. */
  existing?: boolean;
  observer?: ShardObserver;
  /** Passed to the WAL (fatal errors, fsync injection). */
  onFatal?: WalOptions['onFatal'];
  syncFn?: WalOptions['syncFn'];
  /** Test hook: awaited by a snapshot once it has captured the shard and given back the lock, before it writes anything. */
  snapshotHold?: () => Promise<void>;
}

export interface StoredPoint {
  id: string;
  vector?: Float32Array;
  payload?: Payload;
}

export interface ShardHit extends StoredPoint {
  distance: number;
}

export interface ShardStatusInfo {
  epoch: number;
  lastLsn: number;
  appliedLsn: number;
  snapshotLsn: number;
  points: number;
  walBytes: number;
  /** Transactions prepared here and not yet resolved, and the age of the oldest (ms; 0 when none). */
  inDoubt: number;
  inDoubtOldestMs: number;
}

/** How long a prepare may stay in doubt before its shard asks the coordinator (which then aborts it if it has not decided). */
export const txnTimeoutMsDefault = 2000;

/** A prepare refused because one of its ids is held by transaction `heldBy` (the driver retries the batch as a new one). */
export function lockRefusal(a: { id: string; heldBy: string }): QuiverError {
  return new QuiverError('UNAVAILABLE', `id "${a.id}" is held by another batch across shards being committed; retry`, { heldBy: a.heldBy });
}

/** A participant's part of a transaction, as the shard holds it until the outcome. */
export type TxnPart = PreparedPart['part'];

/** The coordinator's own part of a batch across shards, carried by its commit entry (txn.ts). */
export interface OwnPart {
  part: TxnPart;
  key: string;
  hash: Buffer | undefined;
}

/** A decision, with the coordinator's own part settled at it (undefined: no part of it here). */
export interface TxnDecided {
  outcome: TxnOutcome;
  part: Promise<WriteResult | undefined> | undefined;
}

/** The ids a part of a batch across shards writes. */
export const idsOfPart = (part: TxnPart): readonly string[] => (part.type === 'upsert' ? part.op.ids : part.ids);

/** `hash`: of the request an idempotency key stands for (absent without a key, or in entries written before hashes were kept). */
type Op =
  | { type: EntryType.Upsert; upsert: UpsertOp; payloads: (Payload | undefined)[]; hash?: Buffer }
  | { type: EntryType.Delete; ids: string[]; hash?: Buffer }
  | { type: EntryType.Payload; payload: PayloadOp; hash?: Buffer }
  | { type: EntryType.Vectors; upsert: UpsertOp; hash?: Buffer }
  | { type: EntryType.EpochStart }
  | { type: EntryType.Config; config: string }
  | { type: EntryType.Prepare; prepared: PreparedPart }
  | { type: EntryType.Outcome; txn: string; outcome: TxnOutcome; role: 'decision' | 'resolution' }
  | { type: EntryType.Commit; prepared: PreparedPart };

function hashOf(op: Op): Buffer | undefined {
  switch (op.type) {
    case EntryType.Upsert:
    case EntryType.Delete:
    case EntryType.Payload:
    case EntryType.Vectors:
      return op.hash;
    default:
      // A prepared part's key is remembered when its transaction commits (the outcome's apply).
      return undefined;
  }
}

export interface WriteResult {
  lsn: number;
  answer: number;
  /** The epoch of the entry at `lsn` where the shard is a cluster replica (unset: standalone, 0). */
  epoch?: number;
}

/**
 * A client write as a shard's leader logs it: one WAL entry. `payload` and `vectors` name their
 * points by id (a filter is resolved to ids before the write is made); ids the shard does not
 * hold when the entry is applied are skipped.
 */
export type ShardWrite =
  | { type: 'upsert'; op: UpsertOp; key: string; hash?: Buffer }
  | { type: 'delete'; ids: string[]; key: string; hash?: Buffer }
  | { type: 'payload'; op: PayloadOp; key: string; hash?: Buffer }
  | { type: 'vectors'; op: UpsertOp; key: string; hash?: Buffer }
  /** A cluster leader's entries of a transaction (txn.ts), logged through its replica. */
  | { type: 'prepare'; prepared: PreparedPart; key: string; hash?: Buffer }
  | { type: 'outcome'; txn: string; outcome: TxnOutcome; role: 'decision' | 'resolution'; key: string; hash?: undefined }
  /** The coordinator's commit carrying its own part (`prepared.coordinator` is this shard). */
  | { type: 'commit'; prepared: PreparedPart; key: string; hash?: Buffer };

/**
 * IVF-PQ training rule: a shard of an ivfpq collection searches exactly (a flat index over its
 * points) until it holds max(39 * nlist, 256) points; the apply of the entry that reaches that count
 * trains k-means (seed 1) and the PQ codebooks on the live points (at most ivfTrainSampleMax, the
 * lowest labels), adds every point to the trained index and searches it from then on. If training
 * fails (the same way on every replica, as it sees the same points), the shard stays exact and
 * tries again once it holds twice as many points.
 */
export function ivfTrainThreshold(nlist: number): number {
  return Math.max(39 * nlist, 256);
}
export const ivfTrainSampleMax = 50_000;

function parsePayload(json: string): Payload | undefined {
  return json === '' ? undefined : (JSON.parse(json) as Payload);
}

function ivfIndex(spec: ShardIndexSpec & { type: 'ivfpq' }, dim: number, metric: Metric): IvfPqIndex {
  return new IvfPqIndex({ dim, metric, nlist: spec.nlist, m: spec.m, refine: spec.refine, nprobe: spec.nprobe, seed: 1 });
}

/**
 * Who keeps a shard's vectors as written (bit for bit), the one copy that get, the state digest and
 * snapshots read: the index where it returns them so (flat and HNSW under every metric; IVF-PQ
 * with refine under l2 and ip), else the point store (IVF-PQ without refine keeps only codes;
 * with refine under cosine it keeps the vectors normalized).
 */
export function indexKeepsVectors(kind: IndexKind, metric: Metric, spec: ShardIndexSpec): boolean {
  if (kind !== 'ivfpq') return true;
  return spec.type === 'ivfpq' && (spec.refine ?? 0) > 0 && metric !== 'cosine';
}

function emptyIndex(spec: ShardIndexSpec, dim: number, metric: Metric): VectorIndex {
  switch (spec.type) {
    case 'flat':
      return new FlatIndex({ dim, metric });
    case 'ivfpq':
      ivfIndex(spec, dim, metric); // the parameters are checked now, not at training
      return new FlatIndex({ dim, metric }); // exact until trained
    case 'hnsw':
      return new HnswIndex({ dim, metric, m: spec.m, efConstruction: spec.efConstruction, efSearch: spec.efSearch, seed: 1 });
  }
}

export class Shard {
  private readonly opts: ShardOptions;
  private readonly store: PointStore;
  private readonly payloadIndexes = new PayloadIndexes();
  private index!: VectorIndex;
  private wal!: Wal;
  private keys: KeyMemory;
  private readonly inflightKeys = new Map<string, { hash: Buffer; done: Promise<WriteResult> }>();
  private readonly lock = new RwLock();
  private applyChain: Promise<unknown> = Promise.resolve();
  private applied = 0;
  private appliedEpoch = 0;
  private epoch = 0;
  private snapshotLsnValue = 0;
  private walBytesAtSnapshot = 0;
  /** Bytes of the index in the newest snapshot (written or recovered): the next one reserves a little more. */
  private indexBytesAtSnapshot = 0;
  private snapshotting: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private broken: Error | null = null;
  private trainFailedAt = 0;
  private closing = false;
  private readonly txn: TxnState;
  /** Parts in doubt (or being prepared), by transaction, with their idempotency key. */
  private readonly prepared = new Map<string, { prepared: PreparedPart; key: string }>();
  /** Callers waiting for a transaction's outcome here (decide, decisionOf) and for its part to settle (resolve). */
  private readonly outcomeWaiters = new Map<string, ((o: TxnOutcome) => void)[]>();
  private readonly settleWaiters = new Map<string, ((r: WriteResult) => void)[]>();
  /** What the entry being applied tells its waiters once applied. */
  private afterApply: (() => void)[] = [];

  private constructor(opts: ShardOptions) {
    this.opts = opts;
    // A cluster replica (follower: true) keeps locks only while it leads (leadTxns).
    this.txn = initTxn(opts.shard ?? 0, opts.txnTimeoutMs ?? txnTimeoutMsDefault, opts.keysMax ?? 100_000, !opts.follower);
    this.keys = new KeyMemory(opts.keysMax ?? 100_000);
    this.store = new PointStore(opts.dim, false); // an empty index (flat or HNSW) keeps the vectors
  }

  static async open(opts: ShardOptions): Promise<Shard> {
    const s = new Shard(opts);
    await s.recover();
    s.payloadIndexes.set(opts.payloadIndexes?.() ?? [], () => s.livePayloads());
    if (!opts.follower) {
      s.epoch = Math.max(s.wal.lastEpoch, s.appliedEpoch) + 1;
      await s.write({ type: EntryType.EpochStart }, Buffer.alloc(0), '');
    } else {
      s.epoch = Math.max(s.wal.lastEpoch, s.appliedEpoch);
    }
    const interval = opts.snapshotIntervalMs ?? 60_000;
    if (interval > 0) {
      s.timer = setInterval(() => {
        if (s.applied > s.snapshotLsnValue && !s.closing) s.snapshotInBackground();
        // A whole interval without a write: the serialize buffer kept for the next snapshot goes back (G11).
        else if (!s.snapshotting) s.index.releaseSpare();
      }, interval);
      s.timer.unref();
    }
    return s;
  }

  // ------------------------------------------------------------------ recovery

  private async recover(): Promise<void> {
    const { dim, metric } = this.opts;
    let snapLsn = 0;
    await removeSnapshotLeftovers(this.opts.snapshotDir);
    for (const meta of await listSnapshots(this.opts.snapshotDir)) {
      try {
        const r = await readSnapshot(meta.dir, this.store);
        let index = await deserializeIndex(r.indexBytes);
        const okKind = index.kind === this.opts.index.type || (this.opts.index.type === 'ivfpq' && index.kind === 'flat');
        if (!okKind || index.dim !== dim || index.metric !== metric || index.size !== this.store.count) {
          throw new QuiverError('DATA_LOSS', `snapshot ${meta.dir}: index does not match the collection or the id table`);
        }
        const keeps = indexKeepsVectors(index.kind, metric, this.opts.index);
        if (r.vectorsInIndex && !keeps) throw new QuiverError('DATA_LOSS', `snapshot ${meta.dir}: the vectors are neither in state.bin nor in the index`);
        if (!r.vectorsInIndex && keeps) {
          // Written while the store kept these vectors: before flat and HNSW kept cosine vectors as
          // given (their index holds them normalized, so it is built again from state.bin's), or
          // before IVF-PQ with refine was their keeper (it holds them as given).
          if (index.kind !== 'ivfpq') {
            index = emptyIndex(this.opts.index, dim, metric);
            const live = this.store.liveLabels();
            await index.add(live, this.store.gather(live));
          }
          this.store.dropVectors();
        }
        this.index = index;
        this.indexBytesAtSnapshot = r.indexBytes.length;
        this.keys = KeyMemory.of(r.keys, this.keys.max);
        this.restoreTxns(r.txns);
        snapLsn = r.lsn;
        this.appliedEpoch = r.epoch;
        break;
      } catch (e) {
        if (!(e instanceof QuiverError && e.code === 'DATA_LOSS')) throw e;
        log.warn('skipping a damaged snapshot', { dir: this.opts.snapshotDir, err: e.message });
        this.keys = new KeyMemory(this.keys.max);
        this.forgetTxns();
      }
    }
    if (!this.index) {
      this.index = emptyIndex(this.opts.index, dim, metric);
      this.store.decode(Buffer.alloc(12), 0, false); // reset after a damaged snapshot was half read
    }
    this.applied = snapLsn;
    this.snapshotLsnValue = snapLsn;
    this.wal = await Wal.open({
      dir: this.opts.walDir,
      segmentBytes: this.opts.segmentBytes,
      tailBytes: this.opts.walTailBytes,
      commitLsn: snapLsn,
      startLsn: snapLsn + 1,
      commitOnDurable: !this.opts.follower,
      mustExist: this.opts.existing ?? false,
      onFatal: this.opts.onFatal,
      syncFn: this.opts.syncFn,
      onFsync: (sec) => this.opts.observer?.fsync?.(sec),
    });
    if (this.wal.firstLsn > snapLsn + 1 || this.wal.lastLsn < snapLsn) {
      await this.wal.close();
      throw new QuiverError(
        'DATA_LOSS',
        `shard ${this.opts.walDir}: the WAL holds ${this.wal.firstLsn}..${this.wal.lastLsn}, the newest usable snapshot is at ${snapLsn}`,
      );
    }
    try {
      // A follower applies only what it knows to be committed; the rest waits for applyCommitted().
      const to = this.opts.follower ? Math.max(snapLsn, this.wal.commitLsn) : this.wal.lastLsn;
      for await (const e of this.wal.entries(snapLsn + 1, to)) {
        await this.applyOp(e.lsn, e.epoch, e.key, this.decodeOp(e.type, e.body));
      }
    } catch (e) {
      await this.wal.close().catch(() => undefined);
      throw e;
    }
    this.walBytesAtSnapshot = this.wal.bytes;
  }

  private decodeOp(type: EntryType, body: Uint8Array): Op {
    switch (type) {
      case EntryType.Upsert: {
        const upsert = decodeUpsert(body, this.opts.dim);
        return { type, upsert, payloads: upsert.payloadJson.map(parsePayload), hash: hashInBody(body) };
      }
      case EntryType.Delete:
        return { type, ids: decodeDelete(body), hash: hashInBody(body) };
      case EntryType.Payload:
        return { type, payload: decodePayload(body), hash: hashInBody(body) };
      case EntryType.Vectors:
        return { type, upsert: decodeUpsert(body, this.opts.dim), hash: hashInBody(body) };
      case EntryType.EpochStart:
        return { type };
      case EntryType.Config:
        return { type, config: Buffer.from(body).toString('utf8') };
      case EntryType.Prepare:
        return { type, prepared: decodePrepare(body, this.opts.dim) };
      case EntryType.Outcome:
        return { type, ...decodeOutcome(body) };
      case EntryType.Commit:
        return { type, prepared: decodePrepare(body, this.opts.dim) };
    }
  }

  // ------------------------------------------------------------------ writes

  private usable(): void {
    if (this.broken || this.closing) throw this.unusable();
  }

  private unusable(): QuiverError {
    return this.broken ? new QuiverError('INTERNAL', `shard failed earlier: ${this.broken.message}`) : new QuiverError('UNAVAILABLE', 'shard is closing');
  }

  /**
   * Upserts a validated batch (unique ids, n*dim finite floats, payload JSON texts of objects).
   * Resolves once durable and applied with the number upserted and the entry's LSN. With an
   * idempotency key, `hash` names the request it stands for (default: this batch, requestHash).
   */
  upsert(op: UpsertOp, key = '', hash = key === '' ? undefined : requestHash('upsert', '', op.ids, op.payloadJson, op.vectors)): Promise<WriteResult> {
    const payloads = op.payloadJson.map(parsePayload);
    return this.write({ type: EntryType.Upsert, upsert: op, payloads, hash }, encodeUpsert(op, this.opts.dim, hash), key);
  }

  /** Deletes ids (absent ones are no-ops). Answer: how many existed. `key` and `hash` as for upsert. */
  delete(ids: string[], key = '', hash = key === '' ? undefined : requestHash('delete', '', ids)): Promise<WriteResult> {
    return this.write({ type: EntryType.Delete, ids, hash }, encodeDelete(ids, hash), key);
  }

  /** Any client write (ShardWrite) as one entry; resolves once durable and applied, as upsert. */
  change(w: ShardWrite): Promise<WriteResult> {
    const { op, body } = this.entryOf(w);
    return this.write(op, body, w.key);
  }

  private entryOf(w: ShardWrite): { op: Op; body: Buffer[] } {
    switch (w.type) {
      case 'upsert':
        return { op: { type: EntryType.Upsert, upsert: w.op, payloads: w.op.payloadJson.map(parsePayload), hash: w.hash }, body: encodeUpsert(w.op, this.opts.dim, w.hash) };
      case 'delete':
        return { op: { type: EntryType.Delete, ids: w.ids, hash: w.hash }, body: encodeDelete(w.ids, w.hash) };
      case 'payload':
        return { op: { type: EntryType.Payload, payload: w.op, hash: w.hash }, body: encodePayload(w.op, w.hash) };
      case 'vectors':
        return { op: { type: EntryType.Vectors, upsert: w.op, hash: w.hash }, body: encodeUpsert(w.op, this.opts.dim, w.hash) };
      case 'prepare':
        return { op: { type: EntryType.Prepare, prepared: w.prepared }, body: this.prepareBody(w.prepared) };
      case 'outcome':
        return { op: { type: EntryType.Outcome, txn: w.txn, outcome: w.outcome, role: w.role }, body: [encodeOutcome(w.txn, w.outcome, w.role)] };
      case 'commit':
        return { op: { type: EntryType.Commit, prepared: w.prepared }, body: this.prepareBody(w.prepared) };
    }
  }

  /** Ids of the points whose payload passes `filter` now (what a filtered write is resolved to), in label order. */
  idsWhere(filter: PayloadFilter): string[] {
    return Array.from(this.allowed(filter.predicate, filter.query).sort(), (l) => this.store.idOf(l)!);
  }

  /**
   * Refuses (INVALID_ARGUMENT) a payload update that would leave a point here with a payload over
   * payloadBytesMax, judged on the payloads applied now.
   */
  checkPayloadChange(op: PayloadOp): void {
    for (const id of op.ids) {
      const label = this.store.labelOf(id);
      if (label === undefined) continue;
      const p = changedPayload(this.store.payloadOf(label), op.change);
      const bytes = p === undefined ? 0 : Buffer.byteLength(stringifyJson(p));
      if (bytes > payloadBytesMax) throw new QuiverError('INVALID_ARGUMENT', `the payload of "${id}" would be ${bytes} bytes after the update, over ${payloadBytesMax} (payloadBytesMax)`);
    }
  }

  /**
   * Refuses (FAILED_PRECONDITION) an idempotency key that stands for another request than `hash`
   * here, remembered or being written. A key remembered without a hash (written before hashes were
   * kept) stands for whatever request reuses it, as it did then.
   */
  checkKey(key: string, hash: Buffer): void {
    const known = this.keys.get(key)?.hash ?? this.inflightKeys.get(key)?.hash;
    if (known !== undefined && known.length > 0 && !known.equals(hash)) {
      throw new QuiverError('FAILED_PRECONDITION', `idempotency key "${key}" was already used for a different request; a new request needs a new key`);
    }
  }

  private write(op: Op, body: Buffer | Buffer[], key: string): Promise<WriteResult> {
    const hash = hashOf(op);
    try {
      this.usable();
      if (hash) this.checkKey(key, hash);
    } catch (e) {
      return Promise.reject(e);
    }
    if (hash) {
      const rec = this.keys.get(key);
      if (rec) return Promise.resolve({ lsn: rec.lsn, answer: rec.answer });
      const inflight = this.inflightKeys.get(key);
      if (inflight) return inflight.done;
    }
    const done = this.logAndApply(op, body, key).applied;
    if (hash) {
      this.inflightKeys.set(key, { hash, done });
      const clear = (): void => {
        this.inflightKeys.delete(key);
      };
      done.then(clear, clear);
    }
    return done;
  }

  /** Appends one entry and applies it once durable (standalone and transactions): when it is durable, and when applied. */
  private logAndApply(op: Op, body: Buffer | Buffer[], key: string): { durable: Promise<void>; applied: Promise<WriteResult> } {
    let appended: { lsn: number; durable: Promise<void> };
    try {
      appended = this.wal.append({ epoch: this.epoch, type: op.type, key, body });
    } catch (e) {
      const failed = Promise.reject(e);
      failed.catch(() => undefined); // the caller awaits the one it needs
      return { durable: failed, applied: failed };
    }
    this.opts.observer?.walAppend?.(Array.isArray(body) ? body.reduce((n, b) => n + b.length, 0) : body.length);
    const epoch = this.epoch;
    const applied = this.enqueue(async () => {
      await appended.durable;
      return this.applyOp(appended.lsn, epoch, key, op);
    });
    return { durable: appended.durable, applied };
  }

  // ------------------------------------------------------------------ transactions (txn.ts)

  /**
   * Participant: logs this shard's part of transaction `txn` (coordinator shard `coordinator`) as a
   * prepare entry; resolves once it is durable (committed: standalone, the log is the shard's only
   * copy), to be applied in log order (in doubt: held, not visible). Refused with UNAVAILABLE and
   * `details.heldBy` when one of its ids is held by another transaction's prepare.
   */
  prepare(txn: string, coordinator: number, part: TxnPart, key: string, hash: Buffer | undefined): Promise<void> {
    try {
      this.usable();
    } catch (e) {
      return Promise.reject(e);
    }
    const ids = idsOfPart(part);
    for (const a of this.stepTxn({ type: 'prepareAsked', txn, ids, now: Date.now() })) {
      if (a.type === 'refuse') return Promise.reject(lockRefusal(a));
    }
    const prepared: PreparedPart = { txn, coordinator, part, hash };
    this.prepared.set(txn, { prepared, key });
    const { durable, applied } = this.logAndApply({ type: EntryType.Prepare, prepared }, this.prepareBody(prepared), key);
    applied.catch(() => {
      if (this.txn.pending.has(txn)) {
        this.prepared.delete(txn);
        this.stepTxn({ type: 'prepareFailed', txn });
      }
    });
    return durable;
  }

  private prepareBody(p: PreparedPart): Buffer[] {
    return encodePrepared(p, this.opts.dim);
  }

  /**
   * Coordinator: logs the outcome of `txn` unless one is logged or being logged (a commit carries
   * `own`, this shard's part; ids another transaction holds make it an abort); resolves with the
   * outcome logged, once durable, and this shard's own part settled at that entry (`part`).
   */
  decide(txn: string, outcome: TxnOutcome, own?: OwnPart): Promise<TxnDecided> {
    if (this.broken || this.closing) return Promise.reject(this.unusable()); // what is in doubt is resolved at the next open
    const actions = this.stepTxn({ type: 'decideAsked', txn, outcome, ids: own && idsOfPart(own.part) });
    const part = this.partOfDecision(txn, actions, own);
    return (this.outcomeFrom(actions, txn, 'durable') as Promise<TxnOutcome>).then((o) => ({ outcome: o, part }));
  }

  /**
   * This shard's own part of `txn`, settled at the decision `actions` ask to log (held from now when
   * the decision carries it; a part this shard prepared, in a log written before commits carried
   * parts); undefined when none of it is here. Called before the entry can apply.
   */
  partOfDecision(txn: string, actions: TxnAction[], own: OwnPart | undefined): Promise<WriteResult> | undefined {
    if (own && actions.some((a) => a.type === 'logDecision' && a.withPart)) {
      this.prepared.set(txn, { prepared: { txn, coordinator: this.txn.shard, part: own.part, hash: own.hash }, key: own.key });
    }
    return this.settled(txn);
  }

  /** The decision entry to log for `txn`: with `withPart`, the commit carrying the part held since partOfDecision (never a commit without it). */
  decisionWrite(txn: string, outcome: TxnOutcome, withPart: boolean): ShardWrite {
    if (!withPart) return { type: 'outcome', txn, outcome, role: 'decision', key: '' };
    const held = this.prepared.get(txn);
    if (!held) throw new QuiverError('UNAVAILABLE', `the coordinator's part of batch ${txn} is no longer held here; retry`);
    return { type: 'commit', prepared: held.prepared, key: held.key, hash: held.prepared.hash };
  }

  /** A commit carrying this shard's part was not logged (the log refused it): the part is let go. */
  dropOwnPart(txn: string): void {
    if (this.txn.inDoubt.has(txn)) return;
    this.prepared.delete(txn);
    this.settleWaiters.delete(txn);
  }

  /**
   * Coordinator, asked by a participant: the outcome of `txn`, or undefined while its driver may
   * still decide (its own prepare is in doubt for less than the timeout); past that, aborts it.
   * `now` Infinity: nobody is left to decide (recovery), abort at once what is undecided. An
   * outcome logged here is answered once applied (recovery ends with every entry applied).
   */
  decisionOf(txn: string, now: number): Promise<TxnOutcome | undefined> {
    if (this.broken || this.closing) return Promise.reject(this.unusable());
    return this.outcomeFrom(this.stepTxn({ type: 'decisionAsked', txn, now }), txn, 'applied');
  }

  private outcomeFrom(actions: TxnAction[], txn: string, answerWhen: 'durable' | 'applied'): Promise<TxnOutcome | undefined> {
    for (const a of actions) {
      if (a.type === 'answer') return Promise.resolve(a.outcome);
      if (a.type === 'logDecision') {
        let w: ShardWrite;
        try {
          w = this.decisionWrite(txn, a.outcome, a.withPart);
        } catch (e) {
          this.stepTxn({ type: 'logFailed', txn, role: 'decision' });
          return Promise.reject(e);
        }
        const { op, body } = this.entryOf(w);
        const logged = this.logAndApply(op, body, w.key);
        logged.applied.catch(() => undefined);
        return logged[answerWhen].then(() => a.outcome);
      }
    }
    if (!this.txn.deciding.has(txn)) return Promise.resolve(undefined);
    return this.waitFor(this.outcomeWaiters, txn);
  }

  /**
   * Participant: logs its resolution of `txn` with the coordinator's outcome (nothing when it is not
   * in doubt here or already being resolved); settled() tells when the part is applied.
   */
  resolve(txn: string, outcome: TxnOutcome): void {
    for (const a of this.stepTxn({ type: 'decisionHeard', txn, outcome })) {
      if (a.type === 'logResolution') {
        const { durable, applied } = this.logAndApply({ type: EntryType.Outcome, txn, outcome, role: 'resolution' }, encodeOutcome(txn, outcome, 'resolution'), '');
        durable.catch(() => undefined); // a failed log stops the process; its waiters go with it
        applied.catch(() => undefined);
      }
    }
  }

  /**
   * The part of `txn` prepared here, settled: applied at its outcome's entry (that entry's LSN and
   * the part's answer) or dropped (answer 0). Undefined when it is not in doubt here.
   */
  settled(txn: string): Promise<WriteResult> | undefined {
    return this.prepared.has(txn) ? this.waitFor(this.settleWaiters, txn) : undefined;
  }

  /** The waiters' promise for `txn`; a failure of the log shows as the shard's own failure at the next call. */
  private waitFor<T>(waiters: Map<string, ((v: T) => void)[]>, txn: string): Promise<T> {
    return new Promise((resolve) => {
      const list = waiters.get(txn);
      if (list) list.push(resolve);
      else waiters.set(txn, [resolve]);
    });
  }

  private wake<T>(waiters: Map<string, ((v: T) => void)[]>, txn: string, v: T): void {
    const list = waiters.get(txn);
    waiters.delete(txn);
    for (const w of list ?? []) w(v);
  }

  /** Prepares in doubt past the timeout, each to be asked of its coordinator (decisionOf, then resolve here). */
  due(now: number): { txn: string; coordinator: number }[] {
    return this.stepTxn({ type: 'tick', now }).flatMap((a) => (a.type === 'askCoordinator' ? [{ txn: a.txn, coordinator: a.coordinator }] : []));
  }

  /** The answer this shard remembers for an idempotency key (undefined: none). */
  remembered(key: string): WriteResult | undefined {
    const rec = this.keys.get(key);
    return rec && { lsn: rec.lsn, answer: rec.answer };
  }

  private stepTxn(e: TxnEvent): TxnAction[] {
    return stepTxn(this.txn, e).actions;
  }

  // ------------------------------------------------------------------ transactions, cluster leader
  // A cluster replica's host steps the machine itself and logs what it says through its replica
  // (src/cluster/replica-host.ts); applies go through applyTxn on every replica alike.

  /** The transaction machine, stepped by a leading replica's host (it logs the entries the actions ask for). */
  txnStep(e: TxnEvent): TxnAction[] {
    return this.stepTxn(e);
  }

  /** Whether the outcome of `txn` is being logged here (a decision asked of the log, not yet applied). */
  deciding(txn: string): boolean {
    return this.txn.deciding.has(txn);
  }

  /** Resolves with the outcome of `txn` once its decision entry is applied here. */
  outcomeApplied(txn: string): Promise<TxnOutcome> {
    return this.waitFor(this.outcomeWaiters, txn);
  }

  /**
   * A replica starting to lead: its parts in doubt hold their ids, and the transaction entries of
   * its log up to `toLsn` not yet applied are being logged (prepares hold their ids, a decision is
   * known). In the apply order, so that an entry applied meanwhile is counted once; `leading()`
   * false (it stopped leading since) ends it.
   */
  leadTxns(toLsn: number, leading: () => boolean): Promise<void> {
    return this.enqueue(async () => {
      if (!leading()) return;
      this.stepTxn({ type: 'leadershipGained' });
      await this.wal.flush();
      const to = Math.min(toLsn, this.wal.durableLsn);
      if (to <= this.applied) return;
      const now = Date.now();
      for await (const e of this.wal.entries(this.applied + 1, to)) {
        if (!leading()) return;
        if (e.type === EntryType.Prepare) {
          const { txn, part } = decodePrepare(e.body, this.opts.dim);
          this.stepTxn({ type: 'logFound', txn, entry: { kind: 'prepare', ids: idsOfPart(part) }, now });
        } else if (e.type === EntryType.Commit) {
          this.stepTxn({ type: 'logFound', txn: decodePrepare(e.body, this.opts.dim).txn, entry: { kind: 'decision', outcome: 'commit' }, now });
        } else if (e.type === EntryType.Outcome) {
          const o = decodeOutcome(e.body);
          this.stepTxn({ type: 'logFound', txn: o.txn, entry: o.role === 'decision' ? { kind: 'decision', outcome: o.outcome } : { kind: 'resolution' }, now });
        }
      }
    });
  }

  /** Applies a prepare or outcome entry through the transaction machine (caller holds the lock). */
  private async applyTxn(lsn: number, key: string, op: Op & { type: EntryType.Prepare | EntryType.Outcome | EntryType.Commit }): Promise<WriteResult> {
    let actions: TxnAction[];
    if (op.type === EntryType.Prepare) {
      const { txn, coordinator, part } = op.prepared;
      this.prepared.set(txn, { prepared: op.prepared, key });
      actions = this.stepTxn({ type: 'prepareApplied', txn, lsn, coordinator, ids: idsOfPart(part), now: Date.now() });
    } else if (op.type === EntryType.Commit) {
      // The coordinator's own part, applied at its commit (held here by the leader since decide, or now on a follower).
      this.prepared.set(op.prepared.txn, { prepared: op.prepared, key });
      actions = this.stepTxn({ type: 'decisionApplied', txn: op.prepared.txn, outcome: 'commit', lsn });
    } else {
      actions = this.stepTxn(
        op.role === 'decision' ? { type: 'decisionApplied', txn: op.txn, outcome: op.outcome } : { type: 'resolutionApplied', txn: op.txn, outcome: op.outcome },
      );
    }
    let result: WriteResult = { lsn, answer: 0 };
    const after: (() => void)[] = [];
    for (const a of actions) {
      if (a.type === 'applyPart' || a.type === 'dropPart') {
        const held = this.prepared.get(a.txn);
        this.prepared.delete(a.txn);
        if (held && a.type === 'applyPart') {
          const { part, hash } = held.prepared;
          const change: Op =
            part.type === 'upsert' ? { type: EntryType.Upsert, upsert: part.op, payloads: part.op.payloadJson.map(parsePayload), hash } : { type: EntryType.Delete, ids: part.ids, hash };
          result = { lsn, answer: await this.applyChange(change) };
          if (held.key !== '') this.keys.remember(held.key, { lsn, answer: result.answer, hash: hash ?? Buffer.alloc(0) });
        }
        const settled = result;
        after.push(() => this.wake(this.settleWaiters, a.txn, settled));
      } else if (a.type === 'answer') {
        after.push(() => this.wake(this.outcomeWaiters, a.txn, a.outcome));
      }
    }
    // Waiters hear of it once the entry counts as applied (applyOp sets the applied LSN, then runs these).
    this.afterApply.push(...after);
    return result;
  }

  /** The transactions a snapshot keeps: every part in doubt (as its prepare entry) and the decisions remembered. */
  private captureTxns(): TxnSnapshot {
    const inDoubt: TxnSnapshot['inDoubt'] = [];
    for (const [txn, d] of this.txn.inDoubt) {
      const held = this.prepared.get(txn)!;
      inDoubt.push({ lsn: d.lsn, key: held.key, body: Buffer.concat(this.prepareBody(held.prepared)) });
    }
    return { inDoubt, decisions: [...this.txn.decisions] };
  }

  private restoreTxns(t: TxnSnapshot): void {
    this.forgetTxns();
    for (const [txn, outcome] of t.decisions) this.txn.decisions.set(txn, outcome);
    for (const d of t.inDoubt) {
      const prepared = decodePrepare(d.body, this.opts.dim);
      this.prepared.set(prepared.txn, { prepared, key: d.key });
      const ids = idsOfPart(prepared.part);
      this.stepTxn({ type: 'prepareApplied', txn: prepared.txn, lsn: d.lsn, coordinator: prepared.coordinator, ids, now: Date.now() });
    }
  }

  private forgetTxns(): void {
    this.prepared.clear();
    this.txn.locks.clear();
    this.txn.inDoubt.clear();
    this.txn.decisions.clear();
  }

  /** Follower: appends entries shipped by the leader (byte-identical); resolves with the last LSN once durable. */
  async receive(bytes: Buffer): Promise<number> {
    this.usable();
    if (!this.opts.follower) throw new QuiverError('FAILED_PRECONDITION', 'a leader shard takes writes, not WAL bytes');
    const r = this.wal.appendRaw(bytes);
    await r.durable;
    return r.lastLsn;
  }

  /**
   * Follower mode, leading: appends `write` (null: the epoch start) as one entry of `epoch`, not
   * applied until applyCommitted reaches it. Returns its LSN; flush the log to make it durable.
   */
  appendEntry(epoch: number, write: ShardWrite | null): number {
    this.usable();
    if (!this.opts.follower) throw new QuiverError('FAILED_PRECONDITION', 'a standalone shard appends through upsert and delete');
    let entry: { epoch: number; type: EntryType; key: string; body: Buffer | Buffer[] } = { epoch, type: EntryType.EpochStart, key: '', body: Buffer.alloc(0) };
    if (write !== null) {
      const { op, body } = this.entryOf(write);
      entry = { epoch, type: op.type, key: write.key, body };
    }
    const { lsn, durable } = this.wal.append(entry);
    durable.catch(() => undefined); // the log's failure reaches the replica through flush
    this.epoch = epoch;
    return lsn;
  }

  /**
   * Follower mode: applies durable entries up to commitLsn, in LSN order, telling `onApplied` each
   * entry's LSN and answer; resolves with the applied LSN.
   */
  applyCommitted(commitLsn: number, onApplied?: (lsn: number, r: WriteResult) => void): Promise<number> {
    return this.enqueue(async () => {
      const to = Math.min(commitLsn, this.wal.durableLsn);
      this.wal.setCommitLsn(to);
      if (to <= this.applied) return this.applied;
      for await (const e of this.wal.entries(this.applied + 1, to)) {
        const r = await this.applyOp(e.lsn, e.epoch, e.key, this.decodeOp(e.type, e.body));
        onApplied?.(e.lsn, r);
      }
      return this.applied;
    });
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.applyChain.then(fn);
    this.applyChain = run.catch(() => undefined);
    return run;
  }

  /** Applies one committed entry (live or replayed). Any failure here breaks the shard. */
  private applyOp(lsn: number, epoch: number, key: string, op: Op): Promise<WriteResult> {
    return this.lock.write(async () => {
      if (this.broken) throw new QuiverError('INTERNAL', `shard failed earlier: ${this.broken.message}`);
      if (lsn !== this.applied + 1) {
        throw this.breakWith(new Error(`apply of LSN ${lsn} after ${this.applied}`));
      }
      let result: WriteResult;
      const seen = key !== '' ? this.keys.get(key) : undefined;
      try {
        if (op.type === EntryType.Prepare || op.type === EntryType.Outcome || op.type === EntryType.Commit) {
          result = await this.applyTxn(lsn, key, op);
        } else if (seen) {
          result = { lsn: seen.lsn, answer: seen.answer };
        } else {
          const answer = await this.applyChange(op);
          result = { lsn, answer };
          if (key !== '') this.keys.remember(key, { lsn, answer, hash: hashOf(op) ?? Buffer.alloc(0) });
        }
      } catch (e) {
        throw this.breakWith(e as Error);
      }
      this.applied = lsn;
      this.appliedEpoch = epoch;
      for (const f of this.afterApply.splice(0)) f();
      return result;
    }).then((r) => {
      this.maybeSnapshotForSize();
      return r;
    });
  }

  private breakWith(e: Error): QuiverError {
    this.broken = e;
    log.error('shard stopped applying', { dir: this.opts.walDir, err: e });
    return new QuiverError('INTERNAL', `shard failed: ${e.message}`);
  }

  private async applyChange(op: Op): Promise<number> {
    switch (op.type) {
      case EntryType.Upsert: {
        const { ids, vectors, payloadJson } = op.upsert;
        const plan = this.store.planLabels(ids);
        if (ids.length > 0) await this.index.add(plan.labels, vectors);
        this.store.assign(plan, ids, vectors, op.payloads);
        this.indexPayloads(plan.labels, op.payloads);
        this.store.noteSizes(ids, payloadJson);
        await this.maybeTrain();
        return ids.length;
      }
      case EntryType.Delete: {
        const labels: number[] = [];
        const seen = new Set<string>();
        for (const id of op.ids) {
          const l = this.store.labelOf(id);
          if (l !== undefined && !seen.has(id)) labels.push(l);
          seen.add(id);
        }
        if (labels.length > 0) await this.index.remove(Uint32Array.from(labels));
        this.indexPayloads(labels, []);
        return this.store.remove(op.ids);
      }
      case EntryType.Payload: {
        let n = 0;
        for (const id of new Set(op.payload.ids)) {
          const label = this.store.labelOf(id);
          if (label === undefined) continue;
          const p = changedPayload(this.store.payloadOf(label), op.payload.change);
          this.store.setPayload(label, p);
          this.indexPayloads([label], [p]);
          this.store.noteSizes([id], [p === undefined ? '' : stringifyJson(p)]);
          n++;
        }
        return n;
      }
      case EntryType.Vectors: {
        // As an upsert of the points held here (the index replaces a present label's vector),
        // each keeping its payload.
        const { ids, vectors } = op.upsert;
        const dim = this.opts.dim;
        const rows = ids.flatMap((id, i) => (this.store.has(id) ? [i] : []));
        if (rows.length === 0) return 0;
        const kept = rows.map((i) => ids[i]);
        const part = rows.length === ids.length ? vectors : new Float32Array(rows.length * dim);
        if (part !== vectors) rows.forEach((i, j) => part.set(vectors.subarray(i * dim, (i + 1) * dim), j * dim));
        const plan = this.store.planLabels(kept);
        await this.index.add(plan.labels, part);
        this.store.assign(plan, kept, part, Array.from(plan.labels, (l) => this.store.payloadOf(l)));
        return kept.length;
      }
      case EntryType.EpochStart:
      case EntryType.Config:
      case EntryType.Prepare:
      case EntryType.Outcome:
      case EntryType.Commit:
        return 0;
    }
  }

  /**
   * The payloads of `labels` are now `payloads` (missing: the points are gone). Every change of a
   * payload in an apply comes through here, so the payload indexes follow the store.
   */
  private indexPayloads(labels: ArrayLike<number>, payloads: readonly (Payload | undefined)[]): void {
    if (this.payloadIndexes.size === 0) return;
    for (let i = 0; i < labels.length; i++) this.payloadIndexes.update(labels[i], payloads[i]);
  }

  private *livePayloads(): Iterable<[number, Payload | undefined]> {
    for (const l of this.store.liveLabels()) yield [l, this.store.payloadOf(l)];
  }

  /** Makes the shard's payload indexes those of `specs`, building new ones from the payloads (between applies). */
  setPayloadIndexes(specs: readonly PayloadIndexSpec[]): Promise<void> {
    return this.lock.write(async () => this.payloadIndexes.set(specs, () => this.livePayloads()));
  }

  private async maybeTrain(): Promise<void> {
    const spec = this.opts.index;
    if (spec.type !== 'ivfpq' || this.index.kind === 'ivfpq') return;
    if (this.store.count < Math.max(ivfTrainThreshold(spec.nlist), 2 * this.trainFailedAt)) return;
    const live = this.store.liveLabels();
    const vectors = await this.vectorsOf(live);
    const ivf = ivfIndex(spec, this.opts.dim, this.opts.metric);
    try {
      await ivf.train(vectors.subarray(0, Math.min(live.length, ivfTrainSampleMax) * this.opts.dim));
      await ivf.add(live, vectors);
    } catch (e) {
      // The same data fails the same way on every replica: stay exact, try again at twice the count.
      this.trainFailedAt = this.store.count;
      log.warn('IVF-PQ training failed, searching exactly', { dir: this.opts.walDir, points: this.store.count, err: (e as Error).message });
      return;
    }
    const flat = this.index;
    this.index = ivf;
    flat.releaseSpare(); // its snapshot buffer (G11) is no use to the new index
    if (!indexKeepsVectors(ivf.kind, this.opts.metric, spec)) this.store.keepVectors(live, vectors);
  }

  // ------------------------------------------------------------------ reads

  /** Memory kept for the next snapshot's index bytes (G11): the last snapshot's buffer, until an idle interval or close. */
  get snapshotBufferBytes(): number {
    return this.index.spareBytes;
  }

  get count(): number {
    return this.store.count;
  }

  /** The longest id and payload JSON (UTF-8 bytes) the shard has held: bounds of what an answer carries per point. */
  get largestIdBytes(): number {
    return this.store.largestIdBytes;
  }

  get largestPayloadBytes(): number {
    return this.store.largestPayloadBytes;
  }


  /**
   * Points of `ids` present in the shard (absent ones skipped), copies, all at one applied LSN. The
   * store's ids and payloads change in one turn at the end of an apply, so they are read at once;
   * vectors in the index change while an apply runs, so a get with vectors waits for the lock.
   */
  get(ids: string[], withVectors: boolean, withPayload: boolean): Promise<StoredPoint[]> {
    const read = async (): Promise<StoredPoint[]> => {
      const labels: number[] = [];
      for (const id of ids) {
        const label = this.store.labelOf(id);
        if (label !== undefined) labels.push(label);
      }
      const out = labels.map((l) => this.pointOf(l, withPayload));
      if (withVectors) await this.attachVectors(out, labels);
      return out;
    };
    return withVectors ? this.lock.read(read) : read();
  }

  /**
   * The first `limit` points after id `after` whose payload passes `predicate`, in id order, at
   * one applied LSN (as get: with vectors under the lock, else read at once).
   */
  scroll(after: string | undefined, limit: number, predicate: ((p: Payload | undefined) => boolean) | undefined, withVectors: boolean, withPayload: boolean): Promise<StoredPoint[]> {
    const read = async (): Promise<StoredPoint[]> => {
      const labels = this.store.labelsAfter(after, limit, predicate);
      const out = labels.map((l) => this.pointOf(l, withPayload));
      if (withVectors) await this.attachVectors(out, labels);
      return out;
    };
    return withVectors ? this.lock.read(read) : read();
  }

  /** Points whose payload passes `filter` (through the payload indexes where they answer it). */
  countWhere(filter: PayloadFilter): number {
    return this.allowed(filter.predicate, filter.query).length;
  }

  private pointOf(label: number, withPayload: boolean): StoredPoint {
    const p: StoredPoint = { id: this.store.idOf(label)! };
    if (withPayload) {
      const pl = this.store.payloadOf(label);
      p.payload = pl === undefined ? {} : cloneJson(pl);
    }
    return p;
  }

  /** Sets points[i].vector to the vector of labels[i], from their keeper in one call. Caller holds the lock. */
  private async attachVectors(points: StoredPoint[], labels: number[]): Promise<void> {
    if (points.length === 0) return;
    const all = await this.vectorsOf(Uint32Array.from(labels));
    const dim = this.opts.dim;
    points.forEach((p, i) => (p.vector = all.slice(i * dim, (i + 1) * dim)));
  }

  /** The vectors of live `labels` (row-major, a copy) from whichever keeps them. Caller holds the lock. */
  private vectorsOf(labels: Uint32Array): Promise<Float32Array> | Float32Array {
    return this.store.keepsVectors ? this.store.gather(labels) : this.index.getVectors(labels);
  }

  /**
   * The labels whose payload passes `predicate`: from the payload indexes where they answer part of
   * `indexQuery` (the predicate checked on their candidates unless they answer all of it), else by
   * a scan of every payload.
   */
  private allowed(predicate: (p: Payload | undefined) => boolean, indexQuery: IndexQuery | null | undefined): Uint32Array {
    const c = this.payloadIndexes.answer(indexQuery ?? null);
    this.opts.observer?.filterPlan?.(!c ? 'scan' : c.exact ? 'index' : 'index_checked');
    if (!c) return this.store.select(predicate);
    const out: number[] = [];
    for (const l of c.labels) if (c.exact || predicate(this.store.payloadOf(l))) out.push(l);
    return Uint32Array.from(out);
  }

  /**
   * k nearest for each of nq queries (row-major), nearest first, restricted to points whose payload
   * passes `predicate` when given (`indexQuery`: what of it the payload indexes may answer).
   */
  async search(
    queries: Float32Array,
    k: number,
    opts: {
      ef?: number;
      nprobe?: number;
      predicate?: (p: Payload | undefined) => boolean;
      indexQuery?: IndexQuery | null;
      withPayload?: boolean;
      withVectors?: boolean;
    },
  ): Promise<ShardHit[][]> {
    if (this.broken) throw new QuiverError('INTERNAL', `shard failed earlier: ${this.broken.message}`);
    const nq = queries.length / this.opts.dim;
    return this.lock.read(async () => {
      const empty = (): ShardHit[][] => Array.from({ length: nq }, () => []);
      if (this.store.count === 0) return empty();
      let filter: Uint32Array | undefined;
      if (opts.predicate) {
        filter = this.allowed(opts.predicate, opts.indexQuery);
        if (filter.length === 0) return empty();
      }
      const kind = this.index.kind;
      const res = await this.index.search(queries, k, {
        filter,
        ef: kind === 'hnsw' ? opts.ef : undefined,
        nprobe: kind === 'ivfpq' ? opts.nprobe : undefined,
      });
      const withPayload = opts.withPayload ?? false;
      const out: ShardHit[][] = [];
      const all: ShardHit[] = [];
      const labels: number[] = [];
      for (let q = 0; q < nq; q++) {
        const hits: ShardHit[] = [];
        for (let j = 0; j < k; j++) {
          const label = res.labels[q * k + j];
          if (label === LABEL_NONE || this.store.idOf(label) === undefined) continue;
          const hit = this.pointOf(label, withPayload) as ShardHit;
          hit.distance = res.distances[q * k + j];
          hits.push(hit);
          all.push(hit);
          labels.push(label);
        }
        out.push(hits);
      }
      if (opts.withVectors) await this.attachVectors(all, labels);
      return out;
    });
  }

  /** sha256 of the points (see PointStore.digest), at one applied LSN. */
  digest(): Promise<string> {
    return this.lock.read(() => this.store.digest((labels) => this.vectorsOf(labels)));
  }

  status(): ShardStatusInfo {
    return {
      epoch: this.epoch,
      lastLsn: this.wal.lastLsn,
      appliedLsn: this.applied,
      snapshotLsn: this.snapshotLsnValue,
      points: this.store.count,
      walBytes: this.wal.bytes,
      ...(({ count, oldestMs }) => ({ inDoubt: count, inDoubtOldestMs: oldestMs }))(inDoubtOf(this.txn, Date.now())),
    };
  }

  /** The shard's log (the replication sidecar reads raw bytes from it). */
  get log(): Wal {
    return this.wal;
  }

  /** 'flat' until an ivfpq shard trains, then 'ivfpq'. */
  get indexKind(): string {
    return this.index.kind;
  }

  // ------------------------------------------------------------------ snapshots

  private maybeSnapshotForSize(): void {
    const limit = this.opts.snapshotWalBytes ?? 256 * 1024 * 1024;
    if (limit > 0 && !this.snapshotting && !this.closing && this.wal.bytes - this.walBytesAtSnapshot > limit) {
      this.snapshotInBackground();
    }
  }

  private snapshotInBackground(): void {
    this.snapshot().catch((e: Error) => {
      log.error('snapshot failed (the WAL still holds everything)', { dir: this.opts.snapshotDir, err: e.message });
    });
  }

  /** Writes a snapshot at the applied LSN (nothing if there is one already), then drops what it covers. */
  snapshot(): Promise<void> {
    if (!this.snapshotting) {
      this.snapshotting = this.doSnapshot().finally(() => {
        this.snapshotting = null;
      });
    }
    return this.snapshotting;
  }

  private async doSnapshot(): Promise<void> {
    const t0 = process.hrtime.bigint();
    // The index is serialized under the lock into memory mapped and touched before it (G10).
    if (this.indexBytesAtSnapshot > 0 && this.applied !== this.snapshotLsnValue) {
      await this.index.reserveSerialize(Math.ceil(this.indexBytesAtSnapshot * 1.1) + 1024 * 1024);
    }
    // Shared with searches, exclusive of applies: the capture is the state at exactly `applied`.
    const cap = await this.lock.read(async () => {
      if (this.applied === this.snapshotLsnValue || this.broken) return null;
      const index = this.index;
      return {
        lsn: this.applied,
        epoch: this.appliedEpoch,
        index,
        indexLength: await index.serializeHeld(),
        vectorsInIndex: !this.store.keepsVectors,
        store: this.store.capture(),
        keys: this.keys.capture(),
        txns: this.captureTxns(),
      };
    });
    if (!cap) return;
    const bytesBefore = this.wal.bytes;
    try {
      await this.opts.snapshotHold?.();
      await writeSnapshot(
        this.opts.snapshotDir,
        { lsn: cap.lsn, epoch: cap.epoch, dim: this.opts.dim, vectorsInIndex: cap.vectorsInIndex },
        { length: cap.indexLength, read: (offset, into) => cap.index.readHeld(offset, into) },
        // Paced beside traffic (the store's encoding is most of what a snapshot asks of the event loop), not at close.
        await this.store.encode(cap.store, 48, !this.closing),
        cap.keys,
        cap.txns,
      );
    } finally {
      this.store.release();
      // Kept for the next snapshot (G11), unless this is the last or the shard's index was replaced meanwhile.
      cap.index.releaseHeld(!this.closing && cap.index === this.index);
    }
    this.snapshotLsnValue = cap.lsn;
    this.indexBytesAtSnapshot = cap.indexLength;
    for (const old of await listSnapshots(this.opts.snapshotDir)) {
      if (old.lsn < cap.lsn) await removeSnapshot(this.opts.snapshotDir, old);
    }
    // A fresh segment, so the one holding the snapshot's entries can go once it is wholly below.
    await this.wal.roll();
    const retain = this.opts.walRetainFromLsn ? this.opts.walRetainFromLsn() : Infinity;
    await this.wal.truncateBelow(Math.min(cap.lsn + 1, retain));
    this.walBytesAtSnapshot = Math.min(this.wal.bytes, bytesBefore);
    this.opts.observer?.snapshot?.(Number(process.hrtime.bigint() - t0) / 1e9);
  }

  /** Finishes in-flight writes, snapshots (unless told not to), closes the WAL. */
  async close(opts: { snapshot?: boolean } = {}): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.closing = true;
    await this.applyChain;
    if (this.snapshotting) await this.snapshotting.catch(() => undefined);
    if ((opts.snapshot ?? true) && !this.broken && !this.wal.failed) await this.doSnapshot();
    this.index.releaseSpare(); // kept by an earlier snapshot when this one had nothing new (G11)
    await this.wal.close();
  }
}
