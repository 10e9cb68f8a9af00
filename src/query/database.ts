/**
 * The database of one standalone node: collections (catalog), shard placement by ranges of
 * FNV-1a 64 of the id, validation of every request, writes split by shard, searches fanned out to
 * every shard in parallel and merged (nearest first, ties by id).
 *
 * Files under dataDir:
 *   catalog.json                               collections and aliases (catalog.ts)
 *   LOCK                                       pid of the process that has the directory open
 *   wal/<collection>/<shard>/<first-lsn>.seg   WAL segments (src/wal/format.ts)
 *   snapshots/<collection>/<shard>/<lsn>/      snapshots (src/shard/snapshot.ts)
 */
import { promises as fsp } from 'fs';
import * as path from 'path';
import { QuiverError } from '../errors';
import { efMax } from '../native/limits';
import { Shard, requestHash, requestHashOf, txnTimeoutMsDefault } from '../shard';
import type { IndexQuery, PayloadChange, ShardHit, ShardOptions, ShardWrite, TxnPart, UpsertOp, WriteResult } from '../shard';
import { deleteKeysMax } from '../common/limits';
import { moveAside, removeDirGradually, trashName } from '../common/fs';
import { checkPayload } from '../common/points';
import { CatalogEntry, readCatalog, writeCatalog } from './catalog';
import { checkBackupPath, copyOwnSnapshot, placeBackupShard, readBackup, writeBackup } from './backup';
import { aliasList, applyAliasActions, checkNotAliased, collectionNamed } from './aliases';
import { compileFilter, compileOptionalFilter } from './filter';
import { checkMaxDistance, checkPage, mergeScroll, prepareCount, prepareScroll, recommend } from './reads';
import { idsByShard, splitBatch, writeByShard } from '../common/placement';
import { payloadIndexesMax } from '../common/limits';
import { KeyedTxns, TxnAnswer, resolveInDoubt, runKeyed, runTransaction } from './transaction';
import { log } from '../common/log';
import { ReadLevel, checkReadLevel } from '../common/read-options';
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
  Filter,
  PayloadUpdate,
  VectorInput,
  OpenOptions,
  Payload,
  PayloadIndexSpec,
  Point,
  PointInput,
  RecommendRequest,
  ScrollPage,
  ScrollRequest,
  SearchHit,
  SearchRequest,
  ShardReplicas,
  ShardStatus,
  UpsertColumns,
  WriteOptions,
  WriteToken,
  ReadOptions,
} from './types';
import {
  checkAnswerBytes,
  checkColumns,
  checkFields,
  checkIdempotencyKey,
  checkIds,
  checkK,
  checkFieldName,
  checkName,
  checkOptBool,
  checkPayloadIndex,
  checkOptInt,
  checkPoints,
  checkRequestHash,
  checkSearchShape,
  checkSpec,
  checkUpdate,
  isPlainObject,
} from './validate';

interface Collection {
  spec: CollectionSpec;
  createdAt: string;
  shards: Shard[];
  /** Batches across shards being written, by idempotency key (a retry joins its first run). */
  txns: KeyedTxns;
}

/**
 * A write's options, checked: its idempotency key ('' = none), the hash the key stands for (the
 * caller's when a client split the request by shard, else `own()`, this request's) and whether the
 * caller expects this node to lead every shard of the write.
 */
export function checkWrite(opts: WriteOptions, own: () => Buffer): { key: string; hash: Buffer | undefined; expectLeader: boolean } {
  const o: WriteOptions = isPlainObject(opts) ? opts : {};
  const key = checkIdempotencyKey(o.idempotencyKey);
  const given = checkRequestHash(o.requestHash, key);
  const expectLeader = checkOptBool(o.expectLeader, 'expectLeader') ?? false;
  return { key, hash: key === '' ? undefined : given ?? own(), expectLeader };
}

/** Points checked against a collection's spec, as one batch with one row-major array (as upsertColumns takes: a one-shard batch then needs no other copy). */
export function checkedBatch(points: PointInput[], spec: CollectionSpec): UpsertOp {
  const checked = checkPoints(points, spec.dim, spec.metric);
  const vectors = new Float32Array(checked.ids.length * spec.dim);
  checked.vectors.forEach((v, i) => vectors.set(v, i * spec.dim));
  return { ids: checked.ids, vectors, payloadJson: checked.payloadJson };
}

/**
 * A write of the point API as it goes to a shard's leader, which turns it into one ShardWrite
 * (resolveChange): a filter is resolved to ids there, against what that shard has applied, so
 * the log holds ids and every replica applies the same change.
 */
export type ShardChange =
  | { type: 'deleteWhere'; filter: unknown }
  | { type: 'payload'; ids?: string[]; filter?: unknown; change: PayloadChange }
  | { type: 'vectors'; op: UpsertOp };

const PAYLOAD_UPDATE_FIELDS = ['ids', 'filter', 'set', 'overwrite', 'deleteKeys'];

/** The one of `fields` that `o` sets (INVALID_ARGUMENT when it sets none or several). */
function oneOf(o: Record<string, unknown>, fields: string[]): string {
  const given = fields.filter((f) => o[f] !== undefined && o[f] !== null);
  if (given.length !== 1) throw new QuiverError('INVALID_ARGUMENT', `give exactly one of ${fields.join(', ')} (got ${given.length === 0 ? 'none' : given.join(' and ')})`);
  return given[0];
}

/** A payload update checked: its points (ids, or a filter) and its change. */
export function checkPayloadUpdate(u: unknown): Extract<ShardChange, { type: 'payload' }> {
  if (!isPlainObject(u)) throw new QuiverError('INVALID_ARGUMENT', 'a payload update must be an object {ids | filter, set | overwrite | deleteKeys}');
  checkFields(u, PAYLOAD_UPDATE_FIELDS, 'the payload update');
  const by = oneOf(u, ['ids', 'filter']);
  const how = oneOf(u, ['set', 'overwrite', 'deleteKeys']);
  let change: PayloadChange;
  if (how === 'deleteKeys') {
    const keys = u.deleteKeys;
    if (!Array.isArray(keys) || keys.length === 0 || keys.length > deleteKeysMax) {
      throw new QuiverError('INVALID_ARGUMENT', `deleteKeys must be an array of 1..${deleteKeysMax} field names (deleteKeysMax)`);
    }
    keys.forEach((k, i) => {
      if (typeof k !== 'string' || k.length === 0 || k.length > 256) throw new QuiverError('INVALID_ARGUMENT', `deleteKeys[${i}] must be a string of 1..256 characters`);
    });
    change = { deleteKeys: [...(keys as string[])] };
  } else {
    // A copy of the caller's object, checked as an upsert's payload is.
    const json = checkPayload(u[how], how);
    change = (how === 'set' ? { set: JSON.parse(json) } : { overwrite: JSON.parse(json) }) as PayloadChange;
  }
  if (by === 'ids') return { type: 'payload', ids: checkIds(u.ids, false), change };
  compileFilter(u.filter);
  return { type: 'payload', filter: u.filter, change };
}

/** New vectors checked as an upsert's points without payloads. */
export function checkVectorUpdate(points: unknown, spec: CollectionSpec): UpsertOp {
  if (Array.isArray(points)) {
    points.forEach((p: unknown, i) => {
      if (isPlainObject(p)) checkFields(p, ['id', 'vector'], `points[${i}]`);
    });
  }
  return checkedBatch(points as PointInput[], spec);
}

/** The request hash of a checked change (what its idempotency key stands for). */
export function changeHash(ch: ShardChange, scope: string): Buffer {
  switch (ch.type) {
    case 'deleteWhere':
      return requestHashOf('deleteWhere', scope, [], ch.filter);
    case 'payload':
      return requestHashOf('payload', scope, ch.ids ?? [], { filter: ch.filter, change: ch.change });
    case 'vectors':
      return requestHash('vectors', scope, ch.op.ids, undefined, ch.op.vectors);
  }
}

/** A checked change by shard: one by ids split by the shard of each id, one by filter to every shard. */
export function changeParts(ch: ShardChange, spec: CollectionSpec): Map<number, ShardChange> {
  if (ch.type === 'vectors') return new Map([...splitBatch(ch.op, spec.dim, spec.shards)].map(([s, op]) => [s, { type: 'vectors', op }]));
  if (ch.type === 'payload' && ch.ids) return new Map([...idsByShard(ch.ids, spec.shards)].map(([s, ids]) => [s, { ...ch, ids }]));
  return new Map(Array.from({ length: spec.shards }, (_, s) => [s, ch]));
}

/** Whether a part must be resolved against everything its shard committed (it names points by filter). */
export function byFilter(ch: ShardChange): boolean {
  return ch.type === 'deleteWhere' || (ch.type === 'payload' && ch.ids === undefined);
}

/**
 * On a shard's leader: a part as the one entry it logs, in the turn it is appended. A filter is
 * resolved to the ids of the points that pass it now; a payload update is refused
 * (INVALID_ARGUMENT) if it would leave a payload here over payloadBytesMax.
 */
export function resolveChange(shard: Shard, ch: ShardChange, key: string, hash: Buffer | undefined): ShardWrite {
  switch (ch.type) {
    case 'deleteWhere':
      return { type: 'delete', ids: shard.idsWhere(compileFilter(ch.filter)), key, hash };
    case 'payload': {
      const op = { ids: ch.ids ?? shard.idsWhere(compileFilter(ch.filter)), change: ch.change };
      shard.checkPayloadChange(op);
      return { type: 'payload', op, key, hash };
    }
    case 'vectors':
      return { type: 'vectors', op: ch.op, key, hash };
  }
}

/**
 * What a shard's search takes, checked from a request: the queries as one array, k and the
 * options. Each shard returns its `fetch` nearest (k + offset, within maxDistance); the page
 * (`offset`, `k`) is cut from the merged hits.
 */
export interface PreparedSearch {
  vectors: Float32Array;
  k: number;
  offset: number;
  fetch: number;
  nq: number;
  opts: { ef?: number; nprobe?: number; predicate?: (p: Payload | undefined) => boolean; indexQuery?: IndexQuery | null; withPayload: boolean; withVectors: boolean; maxDistance?: number };
  read: ReadLevel;
}

export function prepareSearch(spec: CollectionSpec, req: SearchRequest): PreparedSearch {
  if (!isPlainObject(req)) throw new QuiverError('INVALID_ARGUMENT', 'search request must be an object');
  const vectors = checkSearchShape(req.vectors, spec.dim, spec.metric);
  const { k, offset } = checkPage(req.k, req.offset);
  // The collection's search defaults (updateCollection may have changed them since its index was built).
  const ef = checkOptInt(req.ef, 'ef', 1, efMax) ?? (spec.index.type === 'hnsw' ? spec.index.efSearch : undefined);
  const nprobe = checkOptInt(req.nprobe, 'nprobe', 1, 1 << 20) ?? (spec.index.type === 'ivfpq' ? spec.index.nprobe : undefined);
  const maxDistance = checkMaxDistance(req.maxDistance);
  const filter = compileOptionalFilter(req.filter);
  const read = checkReadLevel(req, spec.shards);
  const withPayload = checkOptBool(req.withPayload, 'withPayload') ?? false;
  const withVectors = checkOptBool(req.withVectors, 'withVectors') ?? false;
  return { vectors, k, offset, fetch: k + offset, nq: vectors.length / spec.dim, opts: { ef, nprobe, predicate: filter?.predicate, indexQuery: filter?.query, withPayload, withVectors, maxDistance }, read };
}

/** A collection's payload indexes, copied (none: []). */
export function copyPayloadIndexes(spec: CollectionSpec): PayloadIndexSpec[] {
  return (spec.payloadIndexes ?? []).map((p) => ({ ...p }));
}

/** `list` with `index` in it (in place of an index of the same field); at most payloadIndexesMax. */
export function withPayloadIndex(list: readonly PayloadIndexSpec[], index: PayloadIndexSpec): PayloadIndexSpec[] {
  const out = list.filter((p) => p.field !== index.field);
  if (out.length >= payloadIndexesMax) throw new QuiverError('RESOURCE_EXHAUSTED', `a collection holds at most ${payloadIndexesMax} payload indexes (payloadIndexesMax)`);
  return [...out, index];
}

/** `list` without the index of `field` (NOT_FOUND when it has none). */
export function withoutPayloadIndex(name: string, list: readonly PayloadIndexSpec[], field: string): PayloadIndexSpec[] {
  const out = list.filter((p) => p.field !== field);
  if (out.length === list.length) throw new QuiverError('NOT_FOUND', `collection "${name}" has no payload index on "${field}"`);
  return out;
}

/**
 * The hits offset .. offset + k - 1 of each query over every shard's hits (nearest first, ties by
 * id), those past maxDistance left out.
 */
export function mergeHits(perShard: readonly ShardHit[][][], nq: number, k: number, offset = 0, maxDistance?: number): SearchHit[][] {
  const out: SearchHit[][] = [];
  for (let q = 0; q < nq; q++) {
    let all: ShardHit[] = [];
    for (const r of perShard) all.push(...r[q]);
    if (maxDistance !== undefined) all = all.filter((h) => h.distance <= maxDistance);
    all.sort((a, b) => a.distance - b.distance || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    out.push(all.slice(offset, offset + k));
  }
  return out;
}

/** A shard's files and settings under dataDir: wal/<collection>/<shard>, snapshots/<collection>/<shard>. */
export function shardOptionsOf(dataDir: string, opts: OpenOptions & OpenInternals, spec: CollectionSpec, shard: number): ShardOptions {
  const obs = opts.observer;
  return {
    walDir: path.join(dataDir, 'wal', spec.name, String(shard)),
    snapshotDir: path.join(dataDir, 'snapshots', spec.name, String(shard)),
    dim: spec.dim,
    metric: spec.metric,
    index: spec.index,
    payloadIndexes: () => spec.payloadIndexes ?? [],
    segmentBytes: opts.segmentBytes,
    snapshotIntervalMs: opts.snapshotIntervalMs,
    snapshotWalBytes: opts.snapshotWalBytes,
    shard,
    txnTimeoutMs: opts.txnTimeoutMs,
    onFatal: opts.onFatal,
    syncFn: opts.syncFn,
    observer: obs && {
      walAppend: (bytes) => obs.walAppend?.(spec.name, shard, bytes),
      fsync: (sec) => obs.fsync?.(spec.name, shard, sec),
      snapshot: (sec) => obs.snapshot?.(spec.name, shard, sec),
      filterPlan: (plan) => obs.filterPlan?.(spec.name, shard, plan),
    },
  };
}

export interface OpenInternals {
  /** Passed to every shard's WAL (tests inject fsync failures; default stops the process). */
  onFatal?: ShardOptions['onFatal'];
  syncFn?: ShardOptions['syncFn'];
}

/**
 * The point API's writes (delete by filter, payload and vector updates) as both databases take
 * them: checked here, then written by the database's own changeChecked (standalone: by every
 * shard here; in a cluster: by each shard's leader).
 */
export abstract class PointWrites {
  protected abstract specOf(name: string): CollectionSpec;
  protected abstract changeChecked(name: string, ch: ShardChange, opts: WriteOptions): Promise<{ count: number; token: WriteToken }>;

  async deleteWhere(name: string, filter: Filter, opts: WriteOptions = {}): Promise<{ deleted: number; token: WriteToken }> {
    const spec = this.specOf(name);
    compileFilter(filter);
    const { count, token } = await this.changeChecked(spec.name, { type: 'deleteWhere', filter }, opts);
    return { deleted: count, token };
  }

  async updatePayload(name: string, update: PayloadUpdate, opts: WriteOptions = {}): Promise<{ updated: number; token: WriteToken }> {
    const spec = this.specOf(name);
    const { count, token } = await this.changeChecked(spec.name, checkPayloadUpdate(update), opts);
    return { updated: count, token };
  }

  async updateVectors(name: string, points: VectorInput[], opts: WriteOptions = {}): Promise<{ updated: number; token: WriteToken }> {
    const spec = this.specOf(name);
    const { count, token } = await this.changeChecked(spec.name, { type: 'vectors', op: checkVectorUpdate(points, spec) }, opts);
    return { updated: count, token };
  }
}

export class LocalDatabase extends PointWrites implements Database {
  private readonly dataDir: string;
  private readonly opts: OpenOptions & OpenInternals;
  private readonly collections = new Map<string, Collection>();
  /** alias -> collection (aliases.ts). */
  private aliases = new Map<string, string>();
  private catalogChain: Promise<unknown> = Promise.resolve();
  private closed = false;
  private resolveTimer: NodeJS.Timeout | null = null;

  private constructor(opts: OpenOptions & OpenInternals) {
    super();
    this.opts = opts;
    this.dataDir = path.resolve(opts.dataDir);
  }

  static async open(opts: OpenOptions & OpenInternals): Promise<LocalDatabase> {
    if (!isPlainObject(opts) || typeof opts.dataDir !== 'string' || opts.dataDir === '') {
      throw new QuiverError('INVALID_ARGUMENT', 'dataDir must be a non-empty path');
    }
    const db = new LocalDatabase(opts);
    await fsp.mkdir(db.dataDir, { recursive: true });
    await db.takeLock();
    try {
      const { collections: entries, aliases } = await readCatalog(db.dataDir);
      db.aliases = new Map(Object.entries(aliases));
      await db.removeOrphans(new Set(entries.map((e) => e.spec.name)));
      for (const e of entries) {
        const opened = await Promise.allSettled(
          Array.from({ length: e.spec.shards }, (_, s) => Shard.open({ ...db.shardOptions(e.spec, s), existing: true })),
        );
        const shards = opened.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
        db.collections.set(e.spec.name, { spec: e.spec, createdAt: e.createdAt, shards, txns: new Map() });
        const failed = opened.find((r): r is PromiseRejectedResult => r.status === 'rejected');
        if (failed) throw failed.reason;
        // Whoever drove a batch still in doubt died with the process: each gets its outcome now.
        await resolveInDoubt(shards, Infinity);
      }
      db.resolveTimer = setInterval(() => db.resolveDue(), db.opts.txnTimeoutMs ?? txnTimeoutMsDefault);
      db.resolveTimer.unref();
    } catch (e) {
      for (const c of db.collections.values()) for (const s of c.shards) await s.close({ snapshot: false }).catch(() => undefined);
      await db.releaseLock();
      throw e;
    }
    return db;
  }

  // ---------------------------------------------------------------- files

  private walDir(name: string, shard?: number): string {
    return shard === undefined ? path.join(this.dataDir, 'wal', name) : path.join(this.dataDir, 'wal', name, String(shard));
  }

  private snapDir(name: string, shard?: number): string {
    return shard === undefined ? path.join(this.dataDir, 'snapshots', name) : path.join(this.dataDir, 'snapshots', name, String(shard));
  }

  private shardOptions(spec: CollectionSpec, shard: number): ShardOptions {
    return shardOptionsOf(this.dataDir, this.opts, spec, shard);
  }

  private async takeLock(): Promise<void> {
    const file = path.join(this.dataDir, 'LOCK');
    try {
      const pid = Number((await fsp.readFile(file, 'utf8')).trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid) {
        let alive = true;
        try {
          process.kill(pid, 0);
        } catch (e) {
          alive = (e as NodeJS.ErrnoException).code === 'EPERM';
        }
        if (alive) throw new QuiverError('FAILED_PRECONDITION', `${this.dataDir} is in use by process ${pid}`);
      }
    } catch (e) {
      if (e instanceof QuiverError) throw e;
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    await fsp.writeFile(file, `${process.pid}\n`);
  }

  private async releaseLock(): Promise<void> {
    await fsp.rm(path.join(this.dataDir, 'LOCK'), { force: true });
  }

  private async removeOrphans(keep: Set<string>): Promise<void> {
    for (const root of [path.join(this.dataDir, 'wal'), path.join(this.dataDir, 'snapshots')]) {
      let names: string[] = [];
      try {
        names = await fsp.readdir(root);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      for (const n of names) if (!keep.has(n)) await fsp.rm(path.join(root, n), { recursive: true, force: true });
    }
  }

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.catalogChain.then(fn);
    this.catalogChain = run.catch(() => undefined);
    return run;
  }

  private catalogEntries(): CatalogEntry[] {
    return [...this.collections.values()].map((c) => ({ spec: c.spec, createdAt: c.createdAt }));
  }

  private saveCatalog(collections: CatalogEntry[], aliases: ReadonlyMap<string, string> = this.aliases): Promise<void> {
    return writeCatalog(this.dataDir, { collections, aliases: Object.fromEntries(aliases) });
  }

  private usable(): void {
    if (this.closed) throw new QuiverError('UNAVAILABLE', 'the database is closed');
  }

  /** The collection a call names (by its name or an alias): the one place a name is resolved. */
  private coll(name: unknown): Collection {
    this.usable();
    return collectionNamed(this.collections, this.aliases, name);
  }

  private static pointCount(c: Collection): number {
    let count = 0;
    for (const s of c.shards) count += s.count;
    return count;
  }

  /** The most bytes one point of an answer can take: its id, vector and payload as asked (checkAnswerBytes). */
  private static pointBytes(c: Collection, withVectors: boolean, withPayload: boolean): number {
    let id = 0;
    let payload = 0;
    for (const s of c.shards) {
      id = Math.max(id, s.largestIdBytes);
      payload = Math.max(payload, s.largestPayloadBytes);
    }
    return id + (withVectors ? c.spec.dim * 4 : 0) + (withPayload ? payload : 0);
  }

  private info(c: Collection): CollectionInfo {
    // A copy, so callers cannot change the catalog; spec is flat but for the index parameters.
    return { ...c.spec, index: { ...c.spec.index }, payloadIndexes: copyPayloadIndexes(c.spec), count: LocalDatabase.pointCount(c), createdAt: c.createdAt, replicationChanging: false };
  }

  // ---------------------------------------------------------------- collections

  createCollection(input: CollectionSpecInput, opts: ChangeOptions = {}): Promise<CollectionInfo> {
    let spec: CollectionSpec;
    try {
      this.usable();
      spec = checkSpec(input);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.serialize(() => this.addCollection(spec, opts));
  }

  /**
   * Opens the shards of a new collection (each after `seed` placed files in its directories) and
   * adds it to the catalog; on failure removes what it made.
   */
  private async addCollection(spec: CollectionSpec, opts: ChangeOptions, seed?: (s: number) => Promise<void>, check?: (s: number, shard: Shard) => void): Promise<CollectionInfo> {
    this.usable();
    if (this.collections.has(spec.name)) throw new QuiverError('ALREADY_EXISTS', `collection "${spec.name}" exists`);
    if (this.aliases.has(spec.name)) throw new QuiverError('ALREADY_EXISTS', `"${spec.name}" is an alias`);
    opts.signal?.throwIfAborted();
    await fsp.rm(this.walDir(spec.name), { recursive: true, force: true });
    await fsp.rm(this.snapDir(spec.name), { recursive: true, force: true });
    const shards: Shard[] = [];
    try {
      for (let s = 0; s < spec.shards; s++) {
        await seed?.(s);
        shards.push(await Shard.open(this.shardOptions(spec, s)));
        check?.(s, shards[s]);
      }
      const c: Collection = { spec, createdAt: new Date().toISOString(), shards, txns: new Map() };
      await this.saveCatalog([...this.catalogEntries(), { spec, createdAt: c.createdAt }]);
      this.collections.set(spec.name, c);
      return this.info(c);
    } catch (e) {
      for (const s of shards) await s.close({ snapshot: false }).catch(() => undefined);
      await fsp.rm(this.walDir(spec.name), { recursive: true, force: true });
      await fsp.rm(this.snapDir(spec.name), { recursive: true, force: true });
      throw e;
    }
  }

  snapshotCollection(name: string, dest: string, opts: ChangeOptions = {}): Promise<CollectionBackup> {
    return this.serialize(async () => {
      const c = this.coll(name);
      const to = checkBackupPath(dest, this.dataDir);
      opts.signal?.throwIfAborted();
      return writeBackup(to, c.spec, (s, dir) => copyOwnSnapshot(c.shards[s], this.snapDir(c.spec.name, s), dir));
    });
  }

  restoreCollection(name: string, src: string, opts: ChangeOptions = {}): Promise<CollectionInfo> {
    return this.serialize(async () => {
      this.usable();
      const from = checkBackupPath(src, this.dataDir);
      const m = await readBackup(from);
      const b = m.spec;
      const spec: CollectionSpec = {
        ...checkSpec({ name, dim: b.dim, metric: b.metric, index: b.index, shards: b.shards, replicationFactor: 1, writeConcern: b.writeConcern }),
        payloadIndexes: b.payloadIndexes ?? [],
      };
      return this.addCollection(
        spec,
        opts,
        (s) => placeBackupShard(from, m, s, this.snapDir(spec.name, s)),
        (s, shard) => {
          const at = shard.status().snapshotLsn;
          if (at !== m.shards[s].lsn) throw new QuiverError('DATA_LOSS', `${from}: shard ${s}'s snapshot (LSN ${m.shards[s].lsn}) could not be read (the shard opened from LSN ${at})`);
        },
      );
    });
  }

  async dropCollection(name: string, opts: ChangeOptions = {}): Promise<void> {
    checkNotAliased(this.aliases, this.coll(name).spec.name);
    const trash: string[] = [];
    await this.serialize(async () => {
      const c = this.coll(name);
      name = c.spec.name;
      checkNotAliased(this.aliases, name);
      opts.signal?.throwIfAborted();
      const rest = this.catalogEntries().filter((e) => e.spec.name !== name);
      await this.saveCatalog(rest);
      this.collections.delete(name);
      await Promise.all(c.shards.map((s) => s.close({ snapshot: false })));
      // Renamed here, freed gradually after the catalog's turn (G10); what a crash leaves is an orphan the next open removes.
      for (const dir of [this.walDir(name), this.snapDir(name)]) {
        const to = path.join(path.dirname(dir), trashName(name));
        if (await moveAside(dir, to)) trash.push(to);
      }
      this.opts.observer?.collectionDropped?.(name);
    });
    for (const t of trash) await removeDirGradually(t);
  }

  createPayloadIndex(name: string, index: PayloadIndexSpec, opts: ChangeOptions = {}): Promise<CollectionInfo> {
    try {
      this.coll(name);
      const spec = checkPayloadIndex(index);
      return this.setPayloadIndexes(name, (list) => withPayloadIndex(list, spec), opts);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  dropPayloadIndex(name: string, field: string, opts: ChangeOptions = {}): Promise<CollectionInfo> {
    try {
      this.coll(name);
      checkFieldName(field, 'field');
      return this.setPayloadIndexes(name, (list) => withoutPayloadIndex(name, list, field), opts);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Writes the collection's payload indexes as `change` makes them into the catalog, then has every shard build them. */
  private setPayloadIndexes(name: string, change: (list: PayloadIndexSpec[]) => PayloadIndexSpec[], opts: ChangeOptions): Promise<CollectionInfo> {
    return this.serialize(async () => {
      const c = this.coll(name);
      const list = change(c.spec.payloadIndexes ?? []);
      opts.signal?.throwIfAborted();
      const spec = { ...c.spec, payloadIndexes: list };
      await this.saveCatalog(this.catalogEntries().map((e) => (e.spec.name === c.spec.name ? { spec, createdAt: e.createdAt } : e)));
      c.spec = spec;
      await Promise.all(c.shards.map((s) => s.setPayloadIndexes(list)));
      return this.info(c);
    });
  }

  updateCollection(name: string, update: CollectionUpdate, opts: ChangeOptions = {}): Promise<CollectionInfo> {
    return this.serialize(async () => {
      const c = this.coll(name);
      const spec = checkUpdate(c.spec, update);
      opts.signal?.throwIfAborted();
      await this.saveCatalog(this.catalogEntries().map((e) => (e.spec.name === c.spec.name ? { spec, createdAt: e.createdAt } : e)));
      c.spec = spec;
      return this.info(c);
    });
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

  updateAliases(actions: AliasAction[], opts: ChangeOptions = {}): Promise<AliasInfo[]> {
    return this.serialize(async () => {
      this.usable();
      const next = applyAliasActions(this.aliases, (n) => this.collections.has(n), actions);
      opts.signal?.throwIfAborted();
      await this.saveCatalog(this.catalogEntries(), next);
      this.aliases = next;
      return aliasList(next);
    });
  }

  // ---------------------------------------------------------------- writes

  async upsert(name: string, points: PointInput[], opts: WriteOptions = {}): Promise<{ upserted: number; token: WriteToken }> {
    const c = this.coll(name);
    return this.upsertChecked(c, checkedBatch(points, c.spec), opts);
  }

  /**
   * upsert() for a batch in columns (what the gRPC front end decodes): the same checks, and the
   * database keeps `vectors` (a one-shard batch goes to the WAL and the index without a copy), so
   * the caller must not change it afterwards.
   */
  async upsertColumns(name: string, batch: UpsertColumns, opts: WriteOptions = {}): Promise<{ upserted: number; token: WriteToken }> {
    const c = this.coll(name);
    return this.upsertChecked(c, checkColumns(batch, c.spec.dim, c.spec.metric), opts);
  }

  /**
   * The last step before a change reaches the shards' logs, run in the same turn as their appends:
   * the key must not stand for another request on any shard (so a batch split across shards is
   * refused whole), and the caller's deadline must not have passed. After it the change is written
   * and its outcome awaited, whatever the deadline.
   */
  private static admit(c: Collection, key: string, hash: Buffer | undefined, signal: AbortSignal | undefined): void {
    if (hash) for (const s of c.shards) s.checkKey(key, hash);
    signal?.throwIfAborted();
  }

  /** Splits a checked batch by shard; one shard taking every point gets `vectors` itself, without a copy. */
  private async upsertChecked(c: Collection, batch: UpsertOp, opts: WriteOptions): Promise<{ upserted: number; token: WriteToken }> {
    const { ids, vectors: whole, payloadJson } = batch;
    const { key, hash } = checkWrite(opts, () => requestHash('upsert', c.spec.name, ids, payloadJson, whole));
    LocalDatabase.admit(c, key, hash, opts.signal);
    const parts = splitBatch(batch, c.spec.dim, c.spec.shards);
    if (parts.size > 1) {
      const { count, token } = await this.transact(c, new Map([...parts].map(([s, op]) => [s, { type: 'upsert', op }])), key, hash, opts.signal);
      return { upserted: count, token };
    }
    const { count, token } = await writeByShard(parts, (s, part) => c.shards[s].upsert(part, key, hash));
    return { upserted: count, token };
  }

  async delete(name: string, ids: string[], opts: WriteOptions = {}): Promise<{ deleted: number; token: WriteToken }> {
    const c = this.coll(name);
    checkIds(ids, true);
    const { key, hash } = checkWrite(opts, () => requestHash('delete', c.spec.name, ids));
    LocalDatabase.admit(c, key, hash, opts.signal);
    const parts = idsByShard(ids, c.spec.shards);
    if (parts.size > 1) {
      const { count, token } = await this.transact(c, new Map([...parts].map(([s, g]) => [s, { type: 'delete', ids: g }])), key, hash, opts.signal);
      return { deleted: count, token };
    }
    const { count, token } = await writeByShard(parts, (s, g) => c.shards[s].delete(g, key, hash));
    return { deleted: count, token };
  }

  protected specOf(name: string): CollectionSpec {
    return this.coll(name).spec;
  }

  /** Every part is resolved and checked before any is logged (in one turn with the appends): a refused part changes nothing anywhere. */
  protected async changeChecked(name: string, ch: ShardChange, opts: WriteOptions): Promise<{ count: number; token: WriteToken }> {
    const c = this.coll(name);
    const { key, hash } = checkWrite(opts, () => changeHash(ch, c.spec.name));
    LocalDatabase.admit(c, key, hash, opts.signal);
    const writes = new Map([...changeParts(ch, c.spec)].map(([s, part]) => [s, resolveChange(c.shards[s], part, key, hash)]));
    return writeByShard(writes, (s, w): Promise<WriteResult> => c.shards[s].change(w));
  }

  /**
   * A batch across shards, all or nothing (src/query/transaction.ts). With an idempotency key, a
   * retry of a batch being written joins it, and one written before is answered from what each
   * shard remembers of the key (every participant remembers it once the batch is committed).
   */
  private transact(c: Collection, parts: Map<number, TxnPart>, key: string, hash: Buffer | undefined, signal: AbortSignal | undefined): Promise<TxnAnswer> {
    return runKeyed(c.txns, key, hash, () => {
      // Committed before (every participant remembers the key): its first answer.
      const before = [...parts.keys()].map((s) => [s, hash ? c.shards[s].remembered(key) : undefined] as const);
      if (hash && before.every(([, r]) => r !== undefined)) {
        const token: WriteToken = {};
        let count = 0;
        for (const [s, r] of before) {
          token[String(s)] = { epoch: 0, lsn: r!.lsn };
          count += r!.answer;
        }
        return Promise.resolve({ count, token });
      }
      return runTransaction(parts, (s) => c.shards[s], key, hash, signal, this.opts.txnTimeoutMs ?? txnTimeoutMsDefault);
    });
  }

  /** Every collection's prepares in doubt past the timeout, resolved by their coordinators (a timer). */
  private resolveDue(): void {
    if (this.closed) return;
    for (const c of this.collections.values()) {
      resolveInDoubt(c.shards, Date.now()).catch((e: Error) => log.warn('resolving batches in doubt failed', { collection: c.spec.name, err: e.message }));
    }
  }

  // ---------------------------------------------------------------- reads

  async get(name: string, ids: string[], opts: { withVectors?: boolean; withPayload?: boolean } & ReadOptions = {}): Promise<Point[]> {
    const c = this.coll(name);
    checkIds(ids, false);
    const o = isPlainObject(opts) ? opts : {};
    this.checkToken(c, checkReadLevel(o, c.spec.shards));
    const withVectors = checkOptBool(o.withVectors, 'withVectors') ?? false;
    const withPayload = checkOptBool(o.withPayload, 'withPayload') ?? true;
    checkAnswerBytes(ids.length, LocalDatabase.pointBytes(c, withVectors, withPayload), 'the answer');
    // One call per shard; the answer keeps the order asked.
    const found = new Map<string, Point>();
    await Promise.all(
      [...idsByShard(ids, c.spec.shards)].map(async ([s, g]) => {
        for (const p of await c.shards[s].get(g, withVectors, withPayload)) found.set(p.id, p);
      }),
    );
    const out: Point[] = [];
    for (const id of ids) {
      const p = found.get(id);
      if (p) out.push(p);
    }
    return out;
  }

  async count(name: string, opts: CountOptions = {}): Promise<number> {
    const c = this.coll(name);
    const { compiled, read } = prepareCount(c.spec, opts);
    this.checkToken(c, read);
    if (!compiled) return LocalDatabase.pointCount(c);
    return c.shards.reduce((n, s) => n + s.countWhere(compiled), 0);
  }

  /** The dimension of a collection (front ends size their decoding by it). */
  dimOf(name: string): number {
    return this.coll(name).spec.dim;
  }

  async search(name: string, req: SearchRequest): Promise<SearchHit[][]> {
    const c = this.coll(name);
    const { vectors, k, offset, fetch, nq, opts, read } = prepareSearch(c.spec, req);
    this.checkToken(c, read);
    checkAnswerBytes(nq * Math.min(fetch, LocalDatabase.pointCount(c)), LocalDatabase.pointBytes(c, opts.withVectors, opts.withPayload), 'the answer');
    // One shard (the default) needs no Promise.all: a one-query search is tens of microseconds.
    const perShard = c.shards.length === 1 ? [await c.shards[0].search(vectors, fetch, opts)] : await Promise.all(c.shards.map((s) => s.search(vectors, fetch, opts)));
    return mergeHits(perShard, nq, k, offset, opts.maxDistance);
  }

  async scroll(name: string, req: ScrollRequest): Promise<ScrollPage> {
    const c = this.coll(name);
    const p = prepareScroll(c.spec, req);
    this.checkToken(c, p.read);
    checkAnswerBytes(p.limit, LocalDatabase.pointBytes(c, p.withVectors, p.withPayload), 'the page');
    return mergeScroll(await Promise.all(c.shards.map((s) => s.scroll(p.after, p.limit + 1, p.predicate, p.withVectors, p.withPayload))), p.limit);
  }

  recommend(name: string, req: RecommendRequest): Promise<SearchHit[]> {
    return recommend(this, this.coll(name).spec, req);
  }

  /**
   * Every level reads the same here: a standalone node applies a write before it acknowledges it,
   * so a token is never ahead of it unless it comes from another node or data directory.
   */
  private checkToken(c: Collection, read: ReadLevel): void {
    for (const [shard, { lsn }] of read.token) {
      const applied = c.shards[shard].status().appliedLsn;
      if (lsn > applied) {
        throw new QuiverError(
          'FAILED_PRECONDITION',
          `token["${shard}"] is at LSN ${lsn}, past the last write this node has applied to shard ${shard} (${applied}): the token comes from another node or data directory`,
        );
      }
    }
  }

  // ---------------------------------------------------------------- status, snapshots, close

  status(): ClusterStatus {
    const shards: ShardStatus[] = [];
    const node = this.opts.nodeId ?? 'local';
    for (const c of [...this.collections.values()].sort((a, b) => (a.spec.name < b.spec.name ? -1 : 1))) {
      c.shards.forEach((s, i) => {
        const st = s.status();
        const replica = { node, role: 'leader', durableLsn: st.lastLsn, commitLsn: st.lastLsn, appliedLsn: st.appliedLsn, lagEntries: 0, lagMs: 0 };
        shards.push({ collection: c.spec.name, shard: i, leader: node, phase: 'active', ...st, replicas: [replica] });
      });
    }
    return { mode: 'standalone', nodeId: node, nodes: [{ id: node, alive: true }], shards };
  }

  /** One node: its own status is the whole cluster's. */
  async clusterStatus(): Promise<ClusterStatus> {
    return this.status();
  }

  async shards(name: string, opts: { withDigest?: boolean } = {}): Promise<ShardReplicas[]> {
    const c = this.coll(name);
    const node = this.opts.nodeId ?? 'local';
    return Promise.all(
      c.shards.map(async (sh, i) => {
        const st = sh.status();
        const replica = { node, role: 'leader', epoch: st.epoch, durableLsn: st.lastLsn, commitLsn: st.lastLsn, appliedLsn: st.appliedLsn, lagEntries: 0, digest: opts.withDigest === false ? '' : await sh.digest() };
        return { shard: i, epoch: st.epoch, leader: node, replicas: [replica] };
      }),
    );
  }

  /** State digest of one shard (tests and the chaos suite). */
  async digest(name: string, shard: number): Promise<string> {
    const c = this.coll(name);
    if (!Number.isInteger(shard) || shard < 0 || shard >= c.shards.length) throw new QuiverError('INVALID_ARGUMENT', `no shard ${shard}`);
    return c.shards[shard].digest();
  }

  /** The shard engine itself (the replication sidecar and tests). */
  shard(name: string, shard: number): Shard {
    const c = this.coll(name);
    if (!Number.isInteger(shard) || shard < 0 || shard >= c.shards.length) throw new QuiverError('INVALID_ARGUMENT', `no shard ${shard}`);
    return c.shards[shard];
  }

  drain(): Promise<string[]> {
    return Promise.reject(new QuiverError('FAILED_PRECONDITION', 'a standalone node leads every shard: there is no one to hand them to'));
  }

  async snapshot(): Promise<void> {
    this.usable();
    await Promise.all([...this.collections.values()].flatMap((c) => c.shards.map((s) => s.snapshot())));
  }

  /** Finishes in-flight writes, snapshots every shard (unless opts.snapshot is false), closes. */
  async close(opts: { snapshot?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    await this.catalogChain;
    this.closed = true;
    if (this.resolveTimer) clearInterval(this.resolveTimer);
    await Promise.all([...this.collections.values()].flatMap((c) => c.shards.map((s) => s.close(opts))));
    this.collections.clear();
    await this.releaseLock();
  }
}

/** Opens (recovering) or creates the database in opts.dataDir. */
export function openDatabase(opts: OpenOptions & OpenInternals): Promise<LocalDatabase> {
  return LocalDatabase.open(opts);
}
